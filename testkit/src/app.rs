//! [`TestApp`]: a whole Shomei deployment on loopback, for one test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use diesel::{Connection, PgConnection, RunQueryDsl};
use serde_json::Value;

use crate::hsm_fault::HsmFault;
use crate::s3::S3Server;
use crate::{hsm_dir, workspace_root};

/// The machine's shared PostgreSQL, where each app makes a database of its own.
const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";

#[derive(Debug, Clone)]
pub struct TestAppOptions {
    /// Worker processes started with the app (more can be started later).
    pub workers: usize,
    /// Redis database number; a test that flushes Redis takes one of its own.
    pub redis_db: u8,
    /// Another PostgreSQL server than the machine's shared one
    /// (`postgres://postgres@HOST:PORT`, no database), e.g. a [`crate::services::Postgres`]
    /// that the test restarts.
    pub postgres: Option<String>,
    /// Another Redis than the machine's shared one (a full URL; `redis_db` is then ignored).
    pub redis_url: Option<String>,
    pub concurrency: usize,
    pub max_upload_bytes: Option<u64>,
    /// Extra environment for every process (after the defaults, so it overrides them).
    pub env: Vec<(String, String)>,
    /// Extra environment for the worker processes only (e.g. a missing key label).
    pub worker_env: Vec<(String, String)>,
    /// Extra environment for the TSA process only (e.g. its HSM behind p11-kit).
    pub tsa_env: Vec<(String, String)>,
    /// TSA URLs tried before the app's own `shomei-tsa` (e.g. one that is down).
    pub tsa_urls_before: Vec<String>,
    /// Serve the API over HTTPS with the dev certificate for localhost and 127.0.0.1
    /// (`tls/localhost.pem` of the dev HSM directory); [`TestApp::client`] then trusts the dev
    /// CA. Default: plain HTTP (`SHOMEI_API_PLAIN_HTTP=true`).
    pub tls: bool,
    /// Where documents are stored: the app's own directory ([`TestApp::storage_dir`]), or a
    /// bucket of an S3 server the app starts for itself ([`TestApp::s3`]).
    pub storage: TestStorage,
    /// Start the workers on the fault-injection PKCS#11 module (`shomei-hsm-fault`) over the
    /// app's token, so that the test can take their HSM away and give it back
    /// ([`TestApp::worker_hsm`]). The API and the TSA keep SoftHSM2 itself.
    pub worker_hsm_fault: bool,
}

/// The object store of a [`TestApp`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TestStorage {
    /// `SHOMEI_STORAGE_DIR` under the app's directory.
    #[default]
    Local,
    /// A local S3-compatible server ([`S3Server`]), the objects under the key prefix
    /// [`S3_PREFIX`].
    S3,
}

/// The key prefix a [`TestStorage::S3`] app stores under, inside its bucket.
pub const S3_PREFIX: &str = "shomei";

impl Default for TestAppOptions {
    fn default() -> Self {
        Self {
            workers: 1,
            redis_db: 0,
            postgres: None,
            redis_url: None,
            concurrency: 4,
            max_upload_bytes: None,
            env: vec![],
            worker_env: vec![],
            tsa_env: vec![],
            tsa_urls_before: vec![],
            tls: false,
            storage: TestStorage::Local,
            worker_hsm_fault: false,
        }
    }
}

pub struct TestApp {
    pub base_url: String,
    pub client: reqwest::Client,
    /// The API key (role `owner`) of a tenant created at start.
    pub api_key: String,
    /// That tenant's id.
    pub tenant_id: String,
    options: TestAppOptions,
    env: Vec<(String, String)>,
    /// The PostgreSQL server (no database) the app's database lives on.
    postgres: String,
    db_name: String,
    redis_url: String,
    namespace: String,
    dir: PathBuf,
    api: Child,
    tsa: Option<Child>,
    /// How often the TSA was started again (names its log files).
    tsa_starts: usize,
    workers: Vec<Option<Child>>,
    /// Each worker's `/metrics` address, by index.
    worker_metrics: Vec<String>,
    /// The S3 server of a [`TestStorage::S3`] app (stopped after the processes, on drop).
    s3: Option<S3Server>,
    /// The workers' HSM switch, with [`TestAppOptions::worker_hsm_fault`].
    worker_hsm: Option<HsmFault>,
}

/// Where the built binaries are: `SHOMEI_BIN_DIR`, else cargo's `debug` directory.
pub(crate) fn bin_dir() -> PathBuf {
    std::env::var_os("SHOMEI_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| workspace_root().join("target"))
                .join("debug")
        })
}

/// The path of a built Shomei binary (`shomei-api`, ...).
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// Distinct free ports (the listeners are held until all are picked, so no port repeats).
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: [std::net::TcpListener; N] =
        std::array::from_fn(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    listeners.map(|l| l.local_addr().unwrap().port())
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(TestAppOptions::default()).await
    }

    pub async fn spawn_with(options: TestAppOptions) -> TestApp {
        let hsm = hsm_dir();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let db_name = format!("shomei_t_{id}");
        let postgres = options
            .postgres
            .clone()
            .unwrap_or_else(|| POSTGRES.to_owned());
        admin_sql(&postgres, &format!("CREATE DATABASE {db_name}"))
            .unwrap_or_else(|e| panic!("creating the test database on {postgres}: {e}"));

        let dir = workspace_root().join("target/tmp/apps").join(&id);
        std::fs::create_dir_all(&dir).unwrap();
        let [port, tsa_port] = free_ports();
        let tsa_urls: Vec<String> = options
            .tsa_urls_before
            .iter()
            .cloned()
            .chain([format!("http://127.0.0.1:{tsa_port}/")])
            .collect();
        let scheme = if options.tls { "https" } else { "http" };
        let redis_url = options
            .redis_url
            .clone()
            .unwrap_or_else(|| format!("redis://127.0.0.1:6379/{}", options.redis_db));
        let namespace = format!("t{}", &id[..12]);
        let mut env: Vec<(String, String)> = vec![
            (
                "SHOMEI_DATABASE_URL".into(),
                format!("{postgres}/{db_name}"),
            ),
            ("SHOMEI_DB_POOL_SIZE".into(), "8".into()),
            ("SHOMEI_REDIS_URL".into(), redis_url.clone()),
            ("SHOMEI_QUEUE_NAMESPACE".into(), namespace.clone()),
            (
                "SHOMEI_STORAGE_DIR".into(),
                dir.join("storage").display().to_string(),
            ),
            ("SHOMEI_API_ADDR".into(), format!("127.0.0.1:{port}")),
            ("SOFTHSM2_CONF".into(), own_token_copy(hsm, &dir)),
            (
                "SHOMEI_HSM_PIN_FILE".into(),
                hsm.join("user-pin").display().to_string(),
            ),
            (
                "SHOMEI_LINK_KEY_FILE".into(),
                hsm.join("link-key").display().to_string(),
            ),
            ("SHOMEI_HSM_POOL_SIZE".into(), "2".into()),
            (
                "SHOMEI_WORKER_CONCURRENCY".into(),
                options.concurrency.to_string(),
            ),
            ("SHOMEI_RECONCILE_SECS".into(), "1".into()),
            ("SHOMEI_HEARTBEAT_SECS".into(), "1".into()),
            ("SHOMEI_JOB_MAX_ATTEMPTS".into(), "5".into()),
            (
                "SHOMEI_TRUST_ANCHORS".into(),
                hsm.join("ca/ca.pem").display().to_string(),
            ),
            ("SHOMEI_TSA_ADDR".into(), format!("127.0.0.1:{tsa_port}")),
            ("SHOMEI_TSA_URLS".into(), tsa_urls.join(",")),
            (
                "SHOMEI_TSA_TRUST_ANCHORS".into(),
                hsm.join("ca/ca.pem").display().to_string(),
            ),
            ("SHOMEI_TSA_ATTEMPTS".into(), "2".into()),
            ("SHOMEI_TSA_TIMEOUT_SECS".into(), "5".into()),
            ("RUST_LOG".into(), "info".into()),
            (
                "SHOMEI_PUBLIC_URL".into(),
                format!("{scheme}://127.0.0.1:{port}"),
            ),
            (
                "SHOMEI_MAIL_DIR".into(),
                dir.join("mail").display().to_string(),
            ),
            // Test receivers listen on loopback; retries come quickly.
            ("SHOMEI_WEBHOOK_ALLOW_PRIVATE".into(), "true".into()),
            ("SHOMEI_WEBHOOK_RETRY_SCHEDULE".into(), "1s,1s,1s,1s".into()),
            ("SHOMEI_MAIL_RETRY_SCHEDULE".into(), "1s,1s,1s".into()),
            ("SHOMEI_WEBHOOK_TIMEOUT_SECS".into(), "5".into()),
            ("SHOMEI_SMTP_TIMEOUT_SECS".into(), "10".into()),
        ];
        if options.tls {
            let tls = hsm.join("tls");
            env.extend([
                (
                    "SHOMEI_TLS_CERT".into(),
                    tls.join("localhost.pem").display().to_string(),
                ),
                (
                    "SHOMEI_TLS_KEY".into(),
                    tls.join("localhost.key").display().to_string(),
                ),
            ]);
        } else {
            env.push(("SHOMEI_API_PLAIN_HTTP".into(), "true".into()));
        }
        if let Some(limit) = options.max_upload_bytes {
            env.push(("SHOMEI_MAX_UPLOAD_BYTES".into(), limit.to_string()));
        }
        let s3 = match options.storage {
            TestStorage::Local => None,
            TestStorage::S3 => Some(S3Server::start().await),
        };
        env.extend(s3.iter().flat_map(|s3| s3.env(S3_PREFIX)));
        env.extend(options.env.iter().cloned());
        let worker_hsm = options
            .worker_hsm_fault
            .then(|| HsmFault::new(&dir.join("worker-hsm-fault")));

        let mut app = TestApp {
            base_url: format!("{scheme}://127.0.0.1:{port}"),
            client: client(options.tls.then(|| hsm.join("ca/ca.pem")).as_deref()),
            api_key: String::new(),
            tenant_id: String::new(),
            api: spawn_logged(
                &bin("shomei-api"),
                &["serve"],
                &env,
                &[],
                &dir.join("api.log"),
            ),
            tsa: Some(spawn_logged(
                &bin("shomei-tsa"),
                &[],
                &env,
                &options.tsa_env,
                &dir.join("tsa.log"),
            )),
            options,
            env,
            postgres,
            db_name,
            redis_url,
            namespace,
            dir,
            tsa_starts: 0,
            workers: vec![],
            worker_metrics: vec![],
            s3,
            worker_hsm,
        };
        app.wait_until_ready().await;
        (app.api_key, app.tenant_id) = app.create_tenant_with_id("Test tenant", &[]).await;
        for _ in 0..app.options.workers {
            app.start_worker();
        }
        app
    }

    async fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.api.try_wait().unwrap() {
                panic!(
                    "shomei-api exited with {status}; see {}",
                    self.dir.join("api.log").display()
                );
            }
            if let Ok(r) = self.client.get(self.url("/readyz")).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "API not ready; see {}",
                self.dir.join("api.log").display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates a tenant with `shomei-api tenant create` and returns its API key.
    pub async fn create_tenant(&self, name: &str) -> String {
        self.create_tenant_with(name, &[]).await
    }

    /// Creates a tenant with extra `tenant create` options (e.g. `--access-codes`).
    pub async fn create_tenant_with(&self, name: &str, options: &[&str]) -> String {
        self.create_tenant_with_id(name, options).await.0
    }

    /// Creates a tenant; returns its owner key and its id.
    pub async fn create_tenant_with_id(&self, name: &str, options: &[&str]) -> (String, String) {
        let mut args = vec!["tenant", "create", name];
        args.extend(options);
        let out = self.cli(&args);
        (out["api_key"].clone(), out["tenant_id"].clone())
    }

    /// Another API key of the test tenant with `role` (one of the seven, e.g. `viewer`).
    pub async fn create_key(&self, role: &str) -> String {
        let tenant = self.tenant_id.clone();
        let out = self.cli(&["key", "create", "--tenant", &tenant, "--role", role]);
        out["api_key"].clone()
    }

    /// A new `member` key of the test tenant in a new group `name` that may see `folders`
    /// only (made through the API with the owner's key): the key and its principal id.
    pub async fn create_group_member(&self, name: &str, folders: &[&str]) -> (String, String) {
        let group: serde_json::Value = self
            .post_json(
                Some(&self.api_key),
                "/v1/groups",
                &serde_json::json!({"name": name, "folders": folders}),
            )
            .await
            .json()
            .await
            .unwrap();
        let key = self.create_key("member").await;
        let principal = self.sql_texts(&format!(
            "SELECT id::text AS t FROM api_keys WHERE tenant_id = '{}' AND role = 'member' \
             ORDER BY created_at DESC LIMIT 1",
            self.tenant_id
        ))[0]
            .clone();
        let response = self
            .client()
            .put(self.url(&format!(
                "/v1/groups/{}/members/{principal}",
                group["id"].as_str().unwrap()
            )))
            .bearer_auth(&self.api_key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204);
        (key, principal)
    }

    /// Runs `shomei-api ARGS` with the app's environment, which must succeed; returns its
    /// `name=value` lines.
    pub fn cli(&self, args: &[&str]) -> std::collections::HashMap<String, String> {
        let output = self.cli_output(args);
        assert!(
            output.status.success(),
            "shomei-api {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// Runs `shomei-api ARGS` with the app's environment, whatever its exit status (for
    /// commands expected to fail, like `log verify` on a tampered log).
    pub fn cli_output(&self, args: &[&str]) -> std::process::Output {
        let mut command = Command::new(bin("shomei-api"));
        for (name, _) in std::env::vars().filter(|(k, _)| k.starts_with("SHOMEI_")) {
            command.env_remove(name);
        }
        command
            .args(args)
            .envs(self.env.iter().cloned())
            .output()
            .unwrap()
    }

    /// Starts one more worker process; returns its index.
    pub fn start_worker(&mut self) -> usize {
        self.start_worker_with(&[])
    }

    /// Starts one more worker process with extra environment (over the app's and the options'
    /// worker environment, e.g. a key label the HSM does not have); returns its index.
    pub fn start_worker_with(&mut self, extra_env: &[(&str, &str)]) -> usize {
        let index = self.workers.len();
        let log = self.dir.join(format!("worker-{index}.log"));
        let [port] = free_ports();
        let metrics = format!("127.0.0.1:{port}");
        let mut worker_env: Vec<(String, String)> =
            self.worker_hsm.iter().flat_map(HsmFault::env).collect();
        worker_env.extend(self.options.worker_env.iter().cloned());
        worker_env.extend(
            extra_env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        worker_env.push(("SHOMEI_METRICS_ADDR".into(), metrics.clone()));
        let child = spawn_logged(&bin("shomei-worker"), &[], &self.env, &worker_env, &log);
        self.workers.push(Some(child));
        self.worker_metrics
            .push(format!("http://{metrics}/metrics"));
        index
    }

    /// The switch of the workers' HSM (an app started with
    /// [`TestAppOptions::worker_hsm_fault`]): [`HsmFault::down`], [`HsmFault::up`].
    pub fn worker_hsm(&self) -> &HsmFault {
        self.worker_hsm
            .as_ref()
            .expect("the app was not started with worker_hsm_fault")
    }

    /// A worker's Prometheus endpoint.
    pub fn worker_metrics_url(&self, index: usize) -> &str {
        &self.worker_metrics[index]
    }

    /// The app's own TSA (`shomei-tsa`), e.g. `tsa_url("/metrics")`.
    pub fn tsa_url(&self, path: &str) -> String {
        let addr = self
            .env
            .iter()
            .find(|(k, _)| k == "SHOMEI_TSA_ADDR")
            .map(|(_, v)| v.clone())
            .expect("SHOMEI_TSA_ADDR");
        format!("http://{addr}{path}")
    }

    /// Takes the app's time-stamping authority down (SIGKILL).
    pub fn stop_tsa(&mut self) {
        if let Some(mut child) = self.tsa.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Starts the app's time-stamping authority again on the same address (after
    /// [`TestApp::stop_tsa`]) and waits until it answers.
    pub async fn start_tsa(&mut self) {
        if self.tsa.is_some() {
            return;
        }
        self.tsa_starts += 1;
        let log = self.dir.join(format!("tsa-{}.log", self.tsa_starts));
        self.tsa = Some(spawn_logged(
            &bin("shomei-tsa"),
            &[],
            &self.env,
            &self.options.tsa_env,
            &log,
        ));
        let url = self.tsa_url("/metrics");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self
            .client
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(
                Instant::now() < deadline,
                "shomei-tsa did not come back; see {}",
                log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The value of one of the environment variables every process of the app gets (e.g.
    /// `SOFTHSM2_CONF`, the app's own copy of the dev token).
    pub fn env_var(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Indices of the worker processes started and not killed.
    pub fn live_workers(&self) -> Vec<usize> {
        (0..self.workers.len())
            .filter(|&i| self.workers[i].is_some())
            .collect()
    }

    /// Whether a worker has exited on its own (its process is then forgotten, like a killed
    /// one); `false` while it runs or once killed.
    pub fn worker_exited(&mut self, index: usize) -> bool {
        let exited = self.workers[index]
            .as_mut()
            .is_some_and(|child| child.try_wait().ok().flatten().is_some());
        if exited {
            self.workers[index] = None;
        }
        exited
    }

    /// The process id of a running worker (for resource readings in benchmarks).
    pub fn worker_pid(&self, index: usize) -> Option<u32> {
        self.workers[index].as_ref().map(Child::id)
    }

    /// SIGKILLs a worker: no shutdown, its running jobs are cut off mid-way.
    pub fn kill_worker(&mut self, index: usize) {
        if let Some(mut child) = self.workers[index].take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Sends SIGTERM to a running worker (a graceful stop: it finishes its running jobs).
    pub fn terminate_worker(&self, index: usize) {
        let child = self.workers[index].as_ref().expect("worker running");
        send_sigterm(child.id());
    }

    /// Waits up to `timeout` for a worker to exit by itself; its exit status, or `None` if it
    /// is still running (it is then left running).
    pub async fn wait_worker_exit(
        &mut self,
        index: usize,
        timeout: Duration,
    ) -> Option<std::process::ExitStatus> {
        let status = wait_exit(self.workers[index].as_mut()?, timeout).await;
        if status.is_some() {
            self.workers[index] = None;
        }
        status
    }

    /// Sends SIGTERM to the API (it stops accepting connections and finishes open requests).
    pub fn terminate_api(&self) {
        send_sigterm(self.api.id());
    }

    /// Waits up to `timeout` for the API to exit by itself; its exit status, or `None`.
    pub async fn wait_api_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        wait_exit(&mut self.api, timeout).await
    }

    /// Makes the app's database unreachable, as a PostgreSQL outage would: its sessions are
    /// ended and new ones refused (`ALLOW_CONNECTIONS false`). The server itself, shared with
    /// the other tests, keeps running. [`TestApp::restore_database`] undoes it.
    pub fn cut_database(&self) {
        for statement in [
            format!(
                "ALTER DATABASE {} WITH ALLOW_CONNECTIONS false",
                self.db_name
            ),
            format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'",
                self.db_name
            ),
        ] {
            admin_sql(&self.postgres, &statement).unwrap();
        }
    }

    /// Lets connections to the app's database in again.
    pub fn restore_database(&self) {
        admin_sql(
            &self.postgres,
            &format!(
                "ALTER DATABASE {} WITH ALLOW_CONNECTIONS true",
                self.db_name
            ),
        )
        .unwrap();
    }

    /// The HTTP client the helpers use (for methods they do not cover).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Where the API listens, `127.0.0.1:PORT` (for tools that take an address, not a URL).
    pub fn api_addr(&self) -> &str {
        self.base_url
            .split_once("://")
            .map_or(&self.base_url, |(_, addr)| addr)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// `POST path` with a JSON body, as the test tenant (`Some(key)`) or as nobody (`None`,
    /// the signer's side).
    pub async fn post_json(
        &self,
        key: Option<&str>,
        path: &str,
        body: &Value,
    ) -> reqwest::Response {
        let mut request = self.client.post(self.url(path)).json(body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send().await.unwrap()
    }

    /// Runs a statement against the app's database (e.g. to age a code past its expiry).
    pub fn sql_execute(&self, statement: &str) -> usize {
        let mut conn = PgConnection::establish(&self.database_url()).unwrap();
        diesel::sql_query(statement).execute(&mut conn).unwrap()
    }

    pub async fn upload(&self, key: &str, pdf: Vec<u8>, title: Option<&str>) -> reqwest::Response {
        let mut request = self
            .client
            .post(self.url("/v1/documents"))
            .bearer_auth(key)
            .header("content-type", "application/pdf")
            .body(pdf);
        if let Some(title) = title {
            request = request.query(&[("title", title)]);
        }
        request.send().await.unwrap()
    }

    /// Uploads the sample contract into `folder` with `key`, whatever the answer.
    pub async fn upload_to_folder(&self, key: &str, folder: &str) -> reqwest::Response {
        self.client
            .post(self.url("/v1/documents"))
            .query(&[("folder", folder), ("title", folder)])
            .bearer_auth(key)
            .header("content-type", "application/pdf")
            .body(crate::sample("contract.pdf"))
            .send()
            .await
            .unwrap()
    }

    /// Uploads a PDF that must be accepted; returns its id.
    pub async fn upload_ok(&self, pdf: Vec<u8>) -> String {
        let response = self.upload(&self.api_key, pdf, Some("Contract")).await;
        assert_eq!(response.status(), 201, "{:?}", response.text().await);
        let body: Value = response.json().await.unwrap();
        body["id"].as_str().unwrap().to_owned()
    }

    pub async fn sign(&self, key: &str, document_id: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/v1/documents/{document_id}/sign")))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Queues a signature that must be accepted; returns the job id.
    pub async fn sign_ok(&self, document_id: &str, signer: &str) -> String {
        let body = serde_json::json!({
            "signer": {"name": signer, "email": "signer@example.com"},
            "reason": "契約に同意します",
            "location": "Tokyo",
        });
        let response = self.sign(&self.api_key, document_id, &body).await;
        assert_eq!(response.status(), 202, "{:?}", response.text().await);
        let body: Value = response.json().await.unwrap();
        body["job_id"].as_str().unwrap().to_owned()
    }

    /// Uploads the sample contract and signs it through a job that must succeed; returns the
    /// document's id.
    pub async fn signed_document(&self) -> String {
        let document = self.upload_ok(crate::sample("contract.pdf")).await;
        let job = self
            .wait_for_job(
                &self.sign_ok(&document, "Taro Suzuki").await,
                Duration::from_secs(60),
            )
            .await;
        assert_eq!(job["status"], "succeeded", "{job}");
        document
    }

    /// The job id of a response that must be `202 Accepted`.
    pub async fn accepted_job(response: reqwest::Response) -> String {
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.unwrap();
        body["job_id"].as_str().unwrap().to_owned()
    }

    pub async fn get(&self, key: &str, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
    }

    /// POSTs to a route that queues a job (no body needed), asserts `202` and returns the job id.
    pub async fn queue_job(&self, path: &str) -> String {
        let response = self
            .client
            .post(self.url(path))
            .bearer_auth(&self.api_key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "POST {path}");
        let body: Value = response.json().await.unwrap();
        body["job_id"].as_str().unwrap().to_owned()
    }

    /// Polls a job until it finishes (or `timeout` passes) and returns its last state.
    pub async fn wait_for_job(&self, job_id: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let job: Value = self
                .get(&self.api_key, &format!("/v1/jobs/{job_id}"))
                .await
                .json()
                .await
                .unwrap();
            if matches!(job["status"].as_str(), Some("succeeded" | "failed"))
                || Instant::now() > deadline
            {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn download(&self, document_id: &str) -> Vec<u8> {
        let response = self
            .get(&self.api_key, &format!("/v1/documents/{document_id}/pdf"))
            .await;
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap().to_vec()
    }

    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.redis_url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// The text column `t` of every row a query returns.
    pub fn sql_texts(&self, query: &str) -> Vec<String> {
        #[derive(diesel::QueryableByName)]
        struct Text {
            #[diesel(sql_type = diesel::sql_types::Text)]
            t: String,
        }
        let mut conn = PgConnection::establish(&self.database_url()).unwrap();
        diesel::sql_query(query)
            .load::<Text>(&mut conn)
            .unwrap()
            .into_iter()
            .map(|row| row.t)
            .collect()
    }

    /// The labels of the secret (AES) keys in the app's copy of the token, as OpenSC's
    /// `pkcs11-tool` lists them (an independent PKCS#11 client).
    pub fn hsm_secret_key_labels(&self) -> Vec<String> {
        let var = |name: &str| {
            self.env
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("{name} not set"))
        };
        let pin = std::fs::read_to_string(var("SHOMEI_HSM_PIN_FILE")).unwrap();
        let output = Command::new("pkcs11-tool")
            .args(["--module", "/usr/lib/softhsm/libsofthsm2.so"])
            .args([
                "--token-label",
                "shomei-dev",
                "--login",
                "--pin",
                pin.trim(),
            ])
            .args(["--list-objects", "--type", "secrkey"])
            .env("SOFTHSM2_CONF", var("SOFTHSM2_CONF"))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "pkcs11-tool: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|l| l.trim().strip_prefix("label:"))
            .map(|l| l.trim().to_owned())
            .collect()
    }

    /// The S3 server of an app started with [`TestStorage::S3`].
    pub fn s3(&self) -> &S3Server {
        self.s3
            .as_ref()
            .expect("the app was not started with TestStorage::S3")
    }

    /// Where the app's object store keeps its files.
    pub fn storage_dir(&self) -> PathBuf {
        self.log_dir().join("storage")
    }

    /// The app's database URL (for `pg_dump` and the like).
    pub fn database_url(&self) -> String {
        format!("{}/{}", self.postgres, self.db_name)
    }

    /// Runs SQL against this app's database (for checks the API does not expose).
    pub fn sql_count(&self, query: &str) -> i64 {
        #[derive(diesel::QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut conn = PgConnection::establish(&self.database_url()).unwrap();
        diesel::sql_query(query)
            .get_result::<Count>(&mut conn)
            .unwrap()
            .n
    }

    /// The text of column `t` of the first row a query returns (`None`: no row, or NULL).
    pub fn sql_text(&self, query: &str) -> Option<String> {
        #[derive(diesel::QueryableByName)]
        struct Text {
            #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
            t: Option<String>,
        }
        let mut conn = PgConnection::establish(&self.database_url()).unwrap();
        diesel::sql_query(query)
            .load::<Text>(&mut conn)
            .unwrap()
            .into_iter()
            .next()
            .and_then(|row| row.t)
    }

    /// A Redis key of this app's queues, e.g. `queue_key("sign:data")`.
    pub fn queue_key(&self, suffix: &str) -> String {
        format!("{}_{suffix}", self.namespace)
    }

    /// The e-mails written to the app's mail directory (no SMTP server configured), oldest
    /// first, parsed with the same MIME parser as the SMTP fixture's.
    pub fn mail_files(&self) -> Vec<crate::smtp::ReceivedMail> {
        let mut files: Vec<_> = std::fs::read_dir(self.dir.join("mail"))
            .map(|dir| dir.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        files.retain(|p| p.extension().is_some_and(|e| e == "eml"));
        files.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
        files
            .iter()
            .map(|p| crate::smtp::ReceivedMail::parse(&std::fs::read(p).unwrap()))
            .collect()
    }

    pub fn log_dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        for child in self
            .workers
            .iter_mut()
            .flatten()
            .chain(self.tsa.as_mut())
            .chain(std::iter::once(&mut self.api))
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Not a panic in a drop: a test that failed with its server down must still unwind.
        if let Err(e) = admin_sql(
            &self.postgres,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db_name),
        ) {
            eprintln!("dropping {}: {e}", self.db_name);
        }
        if let Ok(client) = redis::Client::open(self.redis_url.as_str()) {
            if let Ok(mut conn) = client.get_connection() {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{}_*", self.namespace))
                    .query(&mut conn)
                    .unwrap_or_default();
                if !keys.is_empty() {
                    let _: Result<(), _> = redis::cmd("DEL").arg(keys).query(&mut conn);
                }
            }
        }
    }
}

/// The harness's HTTP client; over HTTPS it trusts the dev CA (`ca`) as well.
fn client(ca: Option<&Path>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder();
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).unwrap();
        builder = builder.add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap());
    }
    builder.build().unwrap()
}

/// A copy of the dev token for one app, and the SoftHSM2 configuration pointing at it. SoftHSM2
/// keeps a token in plain files that every process using it reads at start-up; dozens of
/// processes of parallel tests opening one directory at once were seen to miss the token. An
/// app's own copy isolates it like its own database does. Returns the configuration's path.
pub fn own_token_copy(hsm: &Path, dir: &Path) -> String {
    let tokens = dir.join("softhsm-tokens");
    let status = Command::new("cp")
        .arg("-a")
        .arg(hsm.join("tokens"))
        .arg(&tokens)
        .status()
        .unwrap();
    assert!(status.success(), "copying the dev token");
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            tokens.display()
        ),
    )
    .unwrap();
    conf.display().to_string()
}

fn send_sigterm(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -TERM {pid}");
}

async fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn admin_sql(postgres: &str, statement: &str) -> Result<(), String> {
    let mut conn = PgConnection::establish(&format!("{postgres}/postgres"))
        .map_err(|e| format!("connecting to {postgres}: {e}"))?;
    diesel::sql_query(statement)
        .execute(&mut conn)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn spawn_logged(
    program: &Path,
    args: &[&str],
    env: &[(String, String)],
    extra_env: &[(String, String)],
    log: &Path,
) -> Child {
    let file = std::fs::File::create(log).unwrap();
    let mut command = Command::new(program);
    // The developer's own SHOMEI_* settings must not leak into a test deployment.
    for (name, _) in std::env::vars().filter(|(k, _)| k.starts_with("SHOMEI_")) {
        command.env_remove(name);
    }
    command
        .args(args)
        .envs(env.iter().chain(extra_env).cloned())
        .stdout(Stdio::from(file.try_clone().unwrap()))
        .stderr(Stdio::from(file))
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()))
}
