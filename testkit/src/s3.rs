//! [`S3Server`]: a real S3-compatible server on loopback, one per test, with a bucket of its
//! own. It is moto's standalone server (`scripts/s3-server.sh`, pinned, from PyPI), a separate
//! process speaking the S3 REST protocol over HTTP; the store under test reaches it through
//! object_store's S3 client like it would reach AWS. The helpers here read and write the
//! bucket with another S3 client, boto3 (the AWS SDK for Python, `s3_client.py`), sharing no
//! code with that one, to see what is really stored and to tamper with it.

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
    venv_bin: PathBuf,
    http: reqwest::Client,
}

/// The tests' S3 client, run by the virtualenv's Python.
const CLIENT: &str = include_str!("s3_client.py");

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
        let install = Command::new(&script)
            .arg("install")
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/s3-server.sh");
        assert!(
            install.status.success(),
            "scripts/s3-server.sh install failed"
        );
        let venv_bin = PathBuf::from(String::from_utf8(install.stdout).unwrap().trim());
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
            venv_bin,
            http: reqwest::Client::new(),
        };
        server.wait_until_up().await;
        server.client("create-bucket", None, &[]).await;
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

    /// Runs the tests' own S3 client (boto3, `s3_client.py`) with `input` on its stdin;
    /// returns its stdout.
    async fn client(&self, command: &str, arg: Option<&str>, input: &[u8]) -> Vec<u8> {
        use tokio::io::AsyncWriteExt;
        let mut child = tokio::process::Command::new(self.venv_bin.join("python"))
            .args([
                "-c",
                CLIENT,
                &self.endpoint,
                &self.bucket,
                ACCESS_KEY_ID,
                &self.secret,
            ])
            .arg(command)
            .args(arg)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the S3 client (boto3)");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input).await.unwrap();
        drop(stdin);
        let output = child.wait_with_output().await.unwrap();
        assert!(
            output.status.success(),
            "S3 {command} {arg:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    }

    /// The client's answer, strings (one, or a list).
    async fn client_strings(&self, command: &str, arg: Option<&str>) -> Vec<String> {
        let answer: serde_json::Value =
            serde_json::from_slice(&self.client(command, arg, &[]).await).unwrap();
        match answer {
            serde_json::Value::String(s) => vec![s],
            serde_json::Value::Array(items) => items
                .into_iter()
                .map(|i| i.as_str().unwrap().to_owned())
                .collect(),
            other => panic!("S3 {command}: {other}"),
        }
    }

    /// The key of every object in the bucket under `prefix` (ListObjectsV2, every page).
    pub async fn list(&self, prefix: &str) -> Vec<String> {
        self.client_strings("list", Some(prefix)).await
    }

    /// An object's bytes as stored.
    pub async fn get(&self, key: &str) -> Vec<u8> {
        self.client("get", Some(key), &[]).await
    }

    /// Overwrites (or creates) an object, as anyone with write access to the bucket could.
    pub async fn put(&self, key: &str, bytes: Vec<u8>) {
        self.client("put", Some(key), &bytes).await;
    }

    /// An object's ETag (HEAD). S3 gives an object assembled by a multipart upload the ETag
    /// `<md5 of the parts' md5s>-<number of parts>`.
    pub async fn etag(&self, key: &str) -> String {
        self.client_strings("etag", Some(key)).await.remove(0)
    }

    /// Multipart uploads started and neither completed nor aborted (ListMultipartUploads).
    pub async fn open_multipart_uploads(&self) -> Vec<String> {
        self.client_strings("uploads", None).await
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
