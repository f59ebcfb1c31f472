//! [`S3Server`]: a real S3-compatible server on loopback, one per test, with a bucket of its
//! own. It is moto's standalone server (`scripts/s3-server.sh`, pinned, from PyPI), a separate
//! process speaking the S3 REST protocol over HTTP; the store under test reaches it through
//! object_store's S3 client like it would reach AWS. The helpers here read and write the
//! bucket with plain HTTP requests of their own (ListObjectsV2, GET, PUT, HEAD), sharing no code
//! with that client, to see what is really stored and to tamper with it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::workspace_root;

/// The access key id the tests configure (moto accepts any).
pub const ACCESS_KEY_ID: &str = "shomei-test-key";

pub struct S3Server {
    child: Child,
    endpoint: String,
    bucket: String,
    secret: String,
    log: PathBuf,
    http: reqwest::Client,
}

impl S3Server {
    /// Installs the server if needed (`scripts/s3-server.sh install`), starts it on a free
    /// loopback port, waits until it answers and creates an empty bucket.
    pub async fn start() -> S3Server {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let dir = workspace_root().join("target/tmp/s3");
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join(format!("{id}.log"));
        let script = workspace_root().join("scripts/s3-server.sh");
        // Installing may take a minute the first time; done before the port is picked.
        let status = Command::new(&script)
            .arg("install")
            .stdout(Stdio::null())
            .status()
            .expect("run scripts/s3-server.sh");
        assert!(status.success(), "scripts/s3-server.sh install failed");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(&script)
            .args(["run", "127.0.0.1", &port.to_string()])
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("start scripts/s3-server.sh run");
        let mut server = S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket: format!("shomei-{}", &id[..12]),
            secret: format!("s3-secret-{id}"),
            log,
            http: reqwest::Client::new(),
        };
        server.wait_until_up().await;
        let created = server
            .http
            .put(format!("{}/{}", server.endpoint, server.bucket))
            .send()
            .await
            .unwrap();
        assert!(created.status().is_success(), "creating the bucket: {created:?}");
        server
    }

    async fn wait_until_up(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "the S3 server exited with {status}; see {}",
                    self.log.display()
                );
            }
            // The service list: any answer means it is serving.
            if self.http.get(&self.endpoint).send().await.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the S3 server did not come up; see {}",
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The secret access key the tests configure (random per server, to look for in logs).
    pub fn secret_access_key(&self) -> &str {
        &self.secret
    }

    /// `s3://BUCKET/PREFIX` (the whole bucket when `prefix` is empty).
    pub fn storage_url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// The environment that points a Shomei process at this bucket, under `prefix`.
    pub fn env(&self, prefix: &str) -> Vec<(String, String)> {
        vec![
            ("SHOMEI_STORAGE_URL".into(), self.storage_url(prefix)),
            ("SHOMEI_S3_ENDPOINT".into(), self.endpoint.clone()),
            ("SHOMEI_S3_ALLOW_HTTP".into(), "true".into()),
            ("SHOMEI_S3_ACCESS_KEY_ID".into(), ACCESS_KEY_ID.into()),
            ("SHOMEI_S3_SECRET_ACCESS_KEY".into(), self.secret.clone()),
        ]
    }

    fn object_url(&self, key: &str) -> String {
        format!("{}/{}/{key}", self.endpoint, self.bucket)
    }

    /// The key of every object in the bucket under `prefix` (ListObjectsV2, every page).
    pub async fn list(&self, prefix: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![("list-type", "2".to_owned()), ("prefix", prefix.to_owned())];
            if let Some(token) = &token {
                query.push(("continuation-token", token.clone()));
            }
            let response = self
                .http
                .get(format!("{}/{}", self.endpoint, self.bucket))
                .query(&query)
                .send()
                .await
                .unwrap();
            assert!(response.status().is_success(), "{response:?}");
            let xml = response.text().await.unwrap();
            keys.extend(elements(&xml, "Key"));
            token = elements(&xml, "NextContinuationToken").into_iter().next();
            if token.is_none() {
                return keys;
            }
        }
    }

    /// An object's bytes as stored.
    pub async fn get(&self, key: &str) -> Vec<u8> {
        let response = self.http.get(self.object_url(key)).send().await.unwrap();
        assert!(response.status().is_success(), "GET {key}: {response:?}");
        response.bytes().await.unwrap().to_vec()
    }

    /// Overwrites (or creates) an object, as anyone with write access to the bucket could.
    pub async fn put(&self, key: &str, bytes: Vec<u8>) {
        let response = self
            .http
            .put(self.object_url(key))
            .body(bytes)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "PUT {key}: {response:?}");
    }

    /// An object's ETag (HEAD). S3 gives an object assembled by a multipart upload the ETag
    /// `"<md5 of the parts' md5s>-<number of parts>"`.
    pub async fn etag(&self, key: &str) -> String {
        let response = self.http.head(self.object_url(key)).send().await.unwrap();
        assert!(response.status().is_success(), "HEAD {key}: {response:?}");
        response.headers()["etag"]
            .to_str()
            .unwrap()
            .trim_matches('"')
            .to_owned()
    }

    /// Multipart uploads started and neither completed nor aborted (ListMultipartUploads).
    pub async fn open_multipart_uploads(&self) -> Vec<String> {
        let response = self
            .http
            .get(format!("{}/{}?uploads", self.endpoint, self.bucket))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{response:?}");
        elements(&response.text().await.unwrap(), "Key")
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The text of every `<name>…</name>` element (the S3 listings are flat enough for this).
fn elements(xml: &str, name: &str) -> Vec<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    xml.split(&open)
        .skip(1)
        .filter_map(|rest| rest.split_once(&close).map(|(text, _)| unescape(text)))
        .collect()
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}
