#![doc = include_str!("../README.md")]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use secrecy::SecretString;

mod storage;
pub use storage::{S3Config, S3Credentials, StorageConfig};

/// The policy of the development TSA: under IANA's enterprise number 32473, reserved for
/// documentation and examples (RFC 5612). A production TSA states an OID of its own.
pub const DEV_TSA_POLICY: &str = "1.3.6.1.4.1.32473.1.1";

/// Everything a Shomei process needs to know about its surroundings.
#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: String,
    pub db_pool_size: u32,
    pub redis_url: String,
    pub queue_namespace: String,
    /// Where document bytes are kept: a local directory or an S3-compatible bucket.
    pub storage: StorageConfig,
    pub api_addr: SocketAddr,
    /// How `shomei-api serve` talks to clients: HTTPS (`SHOMEI_TLS_CERT` and `SHOMEI_TLS_KEY`)
    /// or plain HTTP (`SHOMEI_API_PLAIN_HTTP=true`, local use). `None` when neither is
    /// configured: the API refuses to start ([`Config::api_transport_required`]), the other
    /// processes do not care.
    pub api_transport: Option<ApiTransport>,
    pub max_upload_bytes: u64,
    /// What a PDF may hold before intake refuses it (`422`), whoever reads it.
    pub pdf: PdfConfig,
    /// PEM file of the CA certificates signatures are verified against (none: no chain is trusted).
    pub trust_anchors: Option<PathBuf>,
    pub hsm: HsmConfig,
    pub worker: WorkerConfig,
    pub tsa: TsaConfig,
    /// The address signers reach the API at; e-mailed links start with it.
    pub public_url: String,
    pub requests: RequestConfig,
    pub mail: MailConfig,
    pub webhooks: WebhookConfig,
    pub exports: ExportConfig,
    pub logs: LogConfig,
    pub access: AccessConfig,
    /// Who runs an admin command (`shomei-api tenant create`, ...), as operator actions record
    /// it: `SHOMEI_OPERATOR`, else the login name (`USER`).
    pub operator: String,
}

/// Where callers come from and how fast they may call.
#[derive(Debug, Clone)]
pub struct AccessConfig {
    /// Proxies whose client-address header is believed (`SHOMEI_TRUSTED_PROXIES`, CIDRs, comma
    /// separated; none by default: the peer address is the client).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The header those proxies put the client address in (`SHOMEI_CLIENT_IP_HEADER`).
    pub client_ip_header: String,
    /// Requests per second an API key may make, sustained (`SHOMEI_RATE_LIMIT_KEY_PER_SEC`).
    pub key_rate: u32,
    /// Requests an API key may make at once above the rate (`SHOMEI_RATE_LIMIT_KEY_BURST`).
    pub key_burst: u32,
    /// Requests per second from one client address (`SHOMEI_RATE_LIMIT_IP_PER_SEC`).
    pub ip_rate: u32,
    /// Requests from one client address at once (`SHOMEI_RATE_LIMIT_IP_BURST`).
    pub ip_burst: u32,
}

/// How the API serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiTransport {
    /// HTTPS only (TLS 1.2 and 1.3), with this certificate chain and private key (PEM files).
    Https { cert: PathBuf, key: PathBuf },
    /// Plain HTTP, for local use: asked for explicitly, never a fallback.
    PlainHttp,
}

/// The tamper-evident logs (operation log, deletion log, operator actions): how often their
/// chains are time-stamped and how long their entries are kept.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// How often each chain's newest entry is time-stamped (when it has moved).
    pub anchor_every: Duration,
    /// The operation log (`events`) is kept at least this long (at least 366 days).
    pub events_retention: Duration,
    /// The deletion log and operator actions are kept at least this long (at least 1096 days).
    pub system_retention: Duration,
}

/// Least retention of the customer operation log: one year, leap day included.
pub const MIN_EVENTS_RETENTION_DAYS: u64 = 366;
/// Least retention of system and application logs: three years, a leap day included.
pub const MIN_SYSTEM_RETENTION_DAYS: u64 = 1096;

/// Bulk downloads.
#[derive(Debug, Clone)]
pub struct ExportConfig {
    /// An archive larger than this is split into parts (each a complete ZIP).
    pub part_bytes: u64,
    /// How long download links stay good.
    pub link_ttl: Duration,
    /// Signs download links (HMAC-SHA256); every API process must share it. `None`: each
    /// process makes a random one at start, and links work only on the process that made them.
    pub link_key: Option<SecretString>,
}

/// Signature requests: how long a signer's link and one-time code stay good.
#[derive(Debug, Clone)]
pub struct RequestConfig {
    pub link_ttl: Duration,
    pub code_ttl: Duration,
}

/// Outgoing e-mail. Without an SMTP URL, messages are written to `mail_dir` as `.eml` files.
#[derive(Debug, Clone)]
pub struct MailConfig {
    /// `smtp://host:25`, `smtp://user:pass@host:587?tls=required` (STARTTLS) or
    /// `smtps://user:pass@host:465` (implicit TLS). Holds credentials, hence secret.
    pub smtp_url: Option<SecretString>,
    /// PEM of an extra CA the SMTP server's certificate may chain to.
    pub smtp_ca: Option<PathBuf>,
    pub mail_dir: PathBuf,
    pub from: String,
    pub timeout: Duration,
    /// Delays between attempts, e.g. `10s,1m,5m` (parsed by the worker at start).
    pub retry_schedule: String,
}

/// Outgoing webhooks (Standard Webhooks).
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Allow endpoints on loopback and private addresses (tests, on-premises receivers).
    pub allow_private: bool,
    pub timeout: Duration,
    /// Delays between attempts, e.g. `5s,5m,30m` (parsed by the worker at start).
    pub retry_schedule: String,
}

/// Limits of PDF intake, against hostile files: each bounds the memory or time one document
/// can cost a process. The defaults are far above any contract and far below what hurts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PdfConfig {
    /// Pages (`SHOMEI_PDF_MAX_PAGES`).
    pub max_pages: u32,
    /// Indirect objects, counted in the file, its cross-reference data and its object streams
    /// (`SHOMEI_PDF_MAX_OBJECTS`).
    pub max_objects: u64,
    /// Bytes one stream may decompress to (`SHOMEI_PDF_MAX_STREAM_BYTES`).
    pub max_stream_bytes: u64,
    /// Bytes all streams together may decompress to (`SHOMEI_PDF_MAX_TOTAL_STREAM_BYTES`).
    pub max_total_stream_bytes: u64,
}

impl Default for PdfConfig {
    fn default() -> Self {
        Self {
            max_pages: 2_000,
            max_objects: 250_000,
            max_stream_bytes: 64 * 1024 * 1024,
            max_total_stream_bytes: 512 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone)]
pub struct HsmConfig {
    pub module_path: PathBuf,
    pub token_label: String,
    pub user_pin: SecretString,
    pub key_label: String,
    pub pool_size: u32,
}

/// Time-stamping: the authorities workers ask (client side) and our own TSA (server side).
#[derive(Clone)]
pub struct TsaConfig {
    /// Tried in order; a deployment may point at any RFC 3161 TSA. A URL may hold a login
    /// (`https://user:password@tsa.example/`), so `Debug` shows how many there are, not them.
    pub urls: Vec<String>,
    /// PEM file of the certificates a TSA's certificate must chain to.
    pub trust_anchors: Option<PathBuf>,
    pub attempts_per_url: u32,
    pub timeout: Duration,
    /// Where `shomei-tsa` listens.
    pub listen_addr: SocketAddr,
    /// The HSM key (and certificate, critical EKU timeStamping) `shomei-tsa` signs with.
    pub key_label: String,
    /// The policy `shomei-tsa` issues tokens under.
    pub policy_oid: String,
    /// A policy every TSA reply must carry (none: any policy of a trusted TSA).
    pub required_policy: Option<String>,
}

impl std::fmt::Debug for TsaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TsaConfig")
            .field("urls", &format_args!("[{} URL(s)]", self.urls.len()))
            .field("trust_anchors", &self.trust_anchors)
            .field("attempts_per_url", &self.attempts_per_url)
            .field("timeout", &self.timeout)
            .field("listen_addr", &self.listen_addr)
            .field("key_label", &self.key_label)
            .field("policy_oid", &self.policy_oid)
            .field("required_policy", &self.required_policy)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Jobs of each kind one worker runs at once (`SHOMEI_WORKER_CONCURRENCY`).
    pub concurrency: usize,
    /// Bytes of PDF revisions one worker's running jobs hold at once (`SHOMEI_WORKER_PDF_BYTES`).
    pub pdf_bytes: u64,
    pub max_attempts: i32,
    pub reconcile_every: Duration,
    pub heartbeat: Duration,
    /// How often an idle worker asks Redis for work when no push is announced
    /// (`SHOMEI_WORKER_POLL_MS`; see `shomei_jobs::wake`).
    pub poll_every: Duration,
    /// Per-kind run timeouts overriding the built-in ones, e.g. `sign=2m,bulk_download=6h`
    /// (`SHOMEI_JOB_TIMEOUTS`; parsed by the worker at start, like the retry schedules).
    pub job_timeouts: String,
    /// How long past its timeout a job may stay `running` before the sweeper takes it back
    /// (`SHOMEI_JOB_SWEEP_GRACE_SECS`).
    pub sweep_grace: Duration,
    /// Where the worker serves `/metrics` (port 0: a free port, logged at start).
    pub metrics_addr: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name} is not set")]
    Missing { name: &'static str },
    #[error("{name} has an invalid value {value:?}: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: String,
    },
    #[error("{set} is set but {missing} is not: set both or neither")]
    Unpaired {
        set: &'static str,
        missing: &'static str,
    },
    #[error(
        "the API has neither HTTPS nor plain HTTP configured: set SHOMEI_TLS_CERT and \
         SHOMEI_TLS_KEY (PEM certificate chain and private key) to serve HTTPS, or \
         SHOMEI_API_PLAIN_HTTP=true to serve plain HTTP (local use only)"
    )]
    NoApiTransport,
    #[error("could not read {name} from {path}: {source}")]
    File {
        name: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl Config {
    /// Reads the process environment. Call once, at start-up.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads configuration through `lookup` (the environment in production, a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let vars = Vars(&lookup);
        let api_addr = vars.parsed("SHOMEI_API_ADDR", SocketAddr::from(([127, 0, 0, 1], 8080)))?;
        let api_transport = vars.api_transport()?;
        let scheme = match api_transport {
            Some(ApiTransport::Https { .. }) => "https",
            _ => "http",
        };
        Ok(Self {
            database_url: vars.string(
                "SHOMEI_DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/shomei",
            ),
            db_pool_size: vars.parsed("SHOMEI_DB_POOL_SIZE", 16)?,
            redis_url: vars.string("SHOMEI_REDIS_URL", "redis://127.0.0.1:6379/0"),
            queue_namespace: vars.string("SHOMEI_QUEUE_NAMESPACE", "shomei"),
            storage: vars.storage()?,
            api_addr,
            api_transport,
            max_upload_bytes: vars.parsed("SHOMEI_MAX_UPLOAD_BYTES", 50 * 1024 * 1024)?,
            pdf: {
                let d = PdfConfig::default();
                PdfConfig {
                    max_pages: vars.parsed("SHOMEI_PDF_MAX_PAGES", d.max_pages)?,
                    max_objects: vars.parsed("SHOMEI_PDF_MAX_OBJECTS", d.max_objects)?,
                    max_stream_bytes: vars
                        .parsed("SHOMEI_PDF_MAX_STREAM_BYTES", d.max_stream_bytes)?,
                    max_total_stream_bytes: vars.parsed(
                        "SHOMEI_PDF_MAX_TOTAL_STREAM_BYTES",
                        d.max_total_stream_bytes,
                    )?,
                }
            },
            trust_anchors: vars.get("SHOMEI_TRUST_ANCHORS").map(PathBuf::from),
            hsm: HsmConfig {
                module_path: vars
                    .string("SHOMEI_HSM_MODULE", "/usr/lib/softhsm/libsofthsm2.so")
                    .into(),
                token_label: vars.string("SHOMEI_HSM_TOKEN_LABEL", "shomei-dev"),
                user_pin: vars.secret("SHOMEI_HSM_PIN", "SHOMEI_HSM_PIN_FILE")?,
                key_label: vars.string("SHOMEI_HSM_KEY_LABEL", "shomei-dev-rsa"),
                // One session per core: a software token signs on the calling thread, and a
                // network HSM's own limit is set explicitly.
                pool_size: vars.parsed(
                    "SHOMEI_HSM_POOL_SIZE",
                    std::thread::available_parallelism().map_or(4, |n| n.get() as u32),
                )?,
            },
            worker: WorkerConfig {
                concurrency: vars.parsed("SHOMEI_WORKER_CONCURRENCY", 32)?,
                pdf_bytes: vars.parsed("SHOMEI_WORKER_PDF_BYTES", 64 * 1024 * 1024)?,
                max_attempts: vars.parsed("SHOMEI_JOB_MAX_ATTEMPTS", 8)?,
                reconcile_every: Duration::from_secs(vars.parsed("SHOMEI_RECONCILE_SECS", 10)?),
                heartbeat: Duration::from_secs(vars.parsed("SHOMEI_HEARTBEAT_SECS", 3)?),
                poll_every: Duration::from_millis(vars.parsed("SHOMEI_WORKER_POLL_MS", 1000)?),
                job_timeouts: vars.string("SHOMEI_JOB_TIMEOUTS", ""),
                sweep_grace: Duration::from_secs(vars.parsed("SHOMEI_JOB_SWEEP_GRACE_SECS", 60)?),
                metrics_addr: vars
                    .parsed("SHOMEI_METRICS_ADDR", SocketAddr::from(([127, 0, 0, 1], 0)))?,
            },
            tsa: TsaConfig {
                urls: vars
                    .string("SHOMEI_TSA_URLS", "http://127.0.0.1:8318/")
                    .split(',')
                    .map(|u| u.trim().to_owned())
                    .filter(|u| !u.is_empty())
                    .collect(),
                trust_anchors: vars.get("SHOMEI_TSA_TRUST_ANCHORS").map(PathBuf::from),
                attempts_per_url: vars.parsed("SHOMEI_TSA_ATTEMPTS", 3)?,
                timeout: Duration::from_secs(vars.parsed("SHOMEI_TSA_TIMEOUT_SECS", 10)?),
                listen_addr: vars
                    .parsed("SHOMEI_TSA_ADDR", SocketAddr::from(([127, 0, 0, 1], 8318)))?,
                key_label: vars.string("SHOMEI_TSA_KEY_LABEL", "shomei-dev-tsa"),
                policy_oid: vars.string("SHOMEI_TSA_POLICY_OID", DEV_TSA_POLICY),
                required_policy: vars.get("SHOMEI_TSA_REQUIRED_POLICY"),
            },
            public_url: vars
                .string("SHOMEI_PUBLIC_URL", &format!("{scheme}://{api_addr}"))
                .trim_end_matches('/')
                .to_owned(),
            requests: RequestConfig {
                link_ttl: Duration::from_secs(
                    3600 * vars.parsed("SHOMEI_LINK_TTL_HOURS", 14 * 24)?,
                ),
                code_ttl: Duration::from_secs(vars.parsed("SHOMEI_CODE_TTL_SECS", 600)?),
            },
            mail: MailConfig {
                smtp_url: vars.optional_secret("SHOMEI_SMTP_URL", "SHOMEI_SMTP_URL_FILE")?,
                smtp_ca: vars.get("SHOMEI_SMTP_CA").map(PathBuf::from),
                mail_dir: vars.string("SHOMEI_MAIL_DIR", "var/mail").into(),
                from: vars.string("SHOMEI_MAIL_FROM", "Shomei <no-reply@shomei.localhost>"),
                timeout: Duration::from_secs(vars.parsed("SHOMEI_SMTP_TIMEOUT_SECS", 30)?),
                retry_schedule: vars.string("SHOMEI_MAIL_RETRY_SCHEDULE", "10s,1m,5m,30m,2h,6h"),
            },
            exports: ExportConfig {
                part_bytes: vars.parsed("SHOMEI_EXPORT_PART_BYTES", 2 * 1024 * 1024 * 1024)?,
                link_ttl: Duration::from_secs(
                    24 * 3600 * vars.parsed::<u64>("SHOMEI_EXPORT_LINK_DAYS", 7)?,
                ),
                link_key: vars.optional_secret("SHOMEI_LINK_KEY", "SHOMEI_LINK_KEY_FILE")?,
            },
            webhooks: WebhookConfig {
                allow_private: vars.parsed("SHOMEI_WEBHOOK_ALLOW_PRIVATE", false)?,
                timeout: Duration::from_secs(vars.parsed("SHOMEI_WEBHOOK_TIMEOUT_SECS", 15)?),
                retry_schedule: vars.string(
                    "SHOMEI_WEBHOOK_RETRY_SCHEDULE",
                    "5s,5m,30m,2h,5h,10h,14h,20h,24h",
                ),
            },
            logs: LogConfig {
                anchor_every: Duration::from_secs(
                    vars.parsed("SHOMEI_LOG_ANCHOR_SECS", 300)?.max(1),
                ),
                events_retention: vars.days_at_least(
                    "SHOMEI_RETENTION_EVENTS_DAYS",
                    400,
                    MIN_EVENTS_RETENTION_DAYS,
                )?,
                system_retention: vars.days_at_least(
                    "SHOMEI_RETENTION_SYSTEM_DAYS",
                    1100,
                    MIN_SYSTEM_RETENTION_DAYS,
                )?,
            },
            access: AccessConfig {
                trusted_proxies: vars.cidrs("SHOMEI_TRUSTED_PROXIES")?,
                client_ip_header: vars
                    .string("SHOMEI_CLIENT_IP_HEADER", "x-forwarded-for")
                    .to_ascii_lowercase(),
                key_rate: vars.parsed("SHOMEI_RATE_LIMIT_KEY_PER_SEC", 5000)?.max(1),
                key_burst: vars.parsed("SHOMEI_RATE_LIMIT_KEY_BURST", 10000)?.max(1),
                ip_rate: vars.parsed("SHOMEI_RATE_LIMIT_IP_PER_SEC", 10000)?.max(1),
                ip_burst: vars.parsed("SHOMEI_RATE_LIMIT_IP_BURST", 20000)?.max(1),
            },
            operator: vars
                .get("SHOMEI_OPERATOR")
                .or_else(|| vars.get("USER"))
                .unwrap_or_else(|| "unknown".to_owned()),
        })
    }
}

/// A CIDR such as `10.0.0.0/8` or `2001:db8::/32`, or a bare address (one host).
pub fn parse_cidr(s: &str) -> Result<ipnet::IpNet, String> {
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is not an IP address or CIDR"))
}

impl Config {
    /// How the API must serve, or the error that names the variables to set. Only
    /// `shomei-api serve` asks: a loopback address alone does not allow plain HTTP, since a
    /// proxy or a port forward can put a loopback listener on the network unnoticed.
    pub fn api_transport_required(&self) -> Result<&ApiTransport, ConfigError> {
        self.api_transport
            .as_ref()
            .ok_or(ConfigError::NoApiTransport)
    }
}

struct Vars<'a, F>(&'a F);

impl<F: Fn(&str) -> Option<String>> Vars<'_, F> {
    fn get(&self, name: &str) -> Option<String> {
        (self.0)(name).filter(|v| !v.trim().is_empty())
    }

    fn string(&self, name: &str, default: &str) -> String {
        self.get(name).unwrap_or_else(|| default.to_owned())
    }

    fn parsed<T>(&self, name: &'static str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        match self.get(name) {
            None => Ok(default),
            Some(value) => value
                .trim()
                .parse()
                .map_err(|e: T::Err| ConfigError::Invalid {
                    name,
                    reason: e.to_string(),
                    value,
                }),
        }
    }

    /// A comma-separated list of CIDRs (a bare address is a /32 or /128).
    fn cidrs(&self, name: &'static str) -> Result<Vec<ipnet::IpNet>, ConfigError> {
        let Some(value) = self.get(name) else {
            return Ok(Vec::new());
        };
        value
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(|c| {
                parse_cidr(c).map_err(|reason| ConfigError::Invalid {
                    name,
                    value: value.clone(),
                    reason,
                })
            })
            .collect()
    }

    /// `SHOMEI_TLS_CERT` + `SHOMEI_TLS_KEY` (HTTPS, whatever the plain-HTTP flag says), else
    /// `SHOMEI_API_PLAIN_HTTP=true`, else nothing. One file of the pair alone is an error.
    fn api_transport(&self) -> Result<Option<ApiTransport>, ConfigError> {
        const CERT: &str = "SHOMEI_TLS_CERT";
        const KEY: &str = "SHOMEI_TLS_KEY";
        match (self.get(CERT), self.get(KEY)) {
            (Some(cert), Some(key)) => Ok(Some(ApiTransport::Https {
                cert: cert.into(),
                key: key.into(),
            })),
            (Some(_), None) => Err(ConfigError::Unpaired {
                set: CERT,
                missing: KEY,
            }),
            (None, Some(_)) => Err(ConfigError::Unpaired {
                set: KEY,
                missing: CERT,
            }),
            (None, None) => Ok(self
                .parsed("SHOMEI_API_PLAIN_HTTP", false)?
                .then_some(ApiTransport::PlainHttp)),
        }
    }

    /// A number of days, refused below `min` (retention the requirements demand).
    fn days_at_least(
        &self,
        name: &'static str,
        default: u64,
        min: u64,
    ) -> Result<Duration, ConfigError> {
        let days: u64 = self.parsed(name, default)?;
        if days < min {
            return Err(ConfigError::Invalid {
                name,
                value: days.to_string(),
                reason: format!("must be at least {min} days"),
            });
        }
        Ok(Duration::from_secs(days * 24 * 3600))
    }

    /// A secret given inline or, preferably, as a file whose trimmed content is the secret.
    fn secret(
        &self,
        name: &'static str,
        file_name: &'static str,
    ) -> Result<SecretString, ConfigError> {
        self.optional_secret(name, file_name)?
            .ok_or(ConfigError::Missing { name })
    }

    fn optional_secret(
        &self,
        name: &'static str,
        file_name: &'static str,
    ) -> Result<Option<SecretString>, ConfigError> {
        if let Some(value) = self.get(name) {
            return Ok(Some(SecretString::from(value)));
        }
        let Some(path) = self.get(file_name) else {
            return Ok(None);
        };
        let content = std::fs::read_to_string(&path).map_err(|source| ConfigError::File {
            name: file_name,
            path: path.clone(),
            source,
        })?;
        Ok(Some(SecretString::from(content.trim().to_owned())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_apply_when_only_the_pin_is_given() {
        let c = config(&[("SHOMEI_HSM_PIN", "1234")]).unwrap();
        assert_eq!(c.api_addr.port(), 8080);
        assert_eq!(c.worker.concurrency, 32);
        assert_eq!(c.worker.pdf_bytes, 64 * 1024 * 1024);
        assert_eq!(c.hsm.key_label, "shomei-dev-rsa");
        assert_eq!(c.pdf, PdfConfig::default());
    }

    #[test]
    fn pdf_limits_are_read_from_the_environment() {
        let c = config(&[
            ("SHOMEI_HSM_PIN", "1"),
            ("SHOMEI_PDF_MAX_PAGES", "10"),
            ("SHOMEI_PDF_MAX_STREAM_BYTES", "4096"),
        ])
        .unwrap();
        assert_eq!(c.pdf.max_pages, 10);
        assert_eq!(c.pdf.max_stream_bytes, 4096);
        assert_eq!(c.pdf.max_objects, PdfConfig::default().max_objects);
    }

    #[test]
    fn the_pin_never_shows_in_debug_output() {
        let c = config(&[("SHOMEI_HSM_PIN", "s3cr3t-pin-4711")]).unwrap();
        assert!(!format!("{c:?}").contains("s3cr3t-pin-4711"));
    }

    #[test]
    fn smtp_credentials_never_show_in_debug_output() {
        let c = config(&[
            ("SHOMEI_HSM_PIN", "1"),
            (
                "SHOMEI_SMTP_URL",
                "smtp://mailer:hunter2-smtp@mail.example:587?tls=required",
            ),
        ])
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2-smtp"));
        assert_eq!(c.public_url, "http://127.0.0.1:8080");
    }

    #[test]
    fn a_tsa_login_never_shows_in_debug_output() {
        let c = config(&[
            ("SHOMEI_HSM_PIN", "1"),
            (
                "SHOMEI_TSA_URLS",
                "https://tsa-user:hunter2-tsa@tsa.example/tsp, http://127.0.0.1:8318/",
            ),
        ])
        .unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains("hunter2-tsa"), "{debug}");
        assert!(debug.contains("[2 URL(s)]"), "{debug}");
        assert_eq!(
            c.tsa.urls[0],
            "https://tsa-user:hunter2-tsa@tsa.example/tsp"
        );
    }

    #[test]
    fn a_missing_pin_is_reported_by_name() {
        let err = config(&[]).unwrap_err();
        assert!(err.to_string().contains("SHOMEI_HSM_PIN"), "{err}");
    }

    #[test]
    fn an_unparsable_number_names_the_variable_and_value() {
        let err = config(&[
            ("SHOMEI_HSM_PIN", "1"),
            ("SHOMEI_WORKER_CONCURRENCY", "lots"),
        ])
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("SHOMEI_WORKER_CONCURRENCY") && msg.contains("lots"),
            "{msg}"
        );
    }

    #[test]
    fn retention_below_the_required_minimum_is_refused() {
        let c = config(&[("SHOMEI_HSM_PIN", "1")]).unwrap();
        assert_eq!(c.logs.events_retention, Duration::from_secs(400 * 86400));
        assert_eq!(c.logs.system_retention, Duration::from_secs(1100 * 86400));
        for (name, days) in [
            ("SHOMEI_RETENTION_EVENTS_DAYS", "365"),
            ("SHOMEI_RETENTION_SYSTEM_DAYS", "1095"),
        ] {
            let err = config(&[("SHOMEI_HSM_PIN", "1"), (name, days)]).unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
        }
        let c = config(&[
            ("SHOMEI_HSM_PIN", "1"),
            ("SHOMEI_RETENTION_EVENTS_DAYS", "366"),
            ("SHOMEI_RETENTION_SYSTEM_DAYS", "1096"),
        ])
        .unwrap();
        assert_eq!(c.logs.events_retention, Duration::from_secs(366 * 86400));
    }

    #[test]
    fn the_api_serves_https_when_given_a_certificate_and_its_key() {
        let c = config(&[
            ("SHOMEI_HSM_PIN", "1"),
            ("SHOMEI_TLS_CERT", "/etc/shomei/chain.pem"),
            ("SHOMEI_TLS_KEY", "/etc/shomei/key.pem"),
            // HTTPS wins: the flag only matters when no certificate is configured.
            ("SHOMEI_API_PLAIN_HTTP", "true"),
        ])
        .unwrap();
        assert_eq!(
            c.api_transport_required().unwrap(),
            &ApiTransport::Https {
                cert: "/etc/shomei/chain.pem".into(),
                key: "/etc/shomei/key.pem".into()
            }
        );
        assert_eq!(c.public_url, "https://127.0.0.1:8080");
    }

    #[test]
    fn plain_http_needs_the_explicit_flag_even_on_loopback() {
        let c = config(&[
            ("SHOMEI_HSM_PIN", "1"),
            ("SHOMEI_API_ADDR", "127.0.0.1:8080"),
        ])
        .unwrap();
        let msg = c.api_transport_required().unwrap_err().to_string();
        for name in [
            "SHOMEI_TLS_CERT",
            "SHOMEI_TLS_KEY",
            "SHOMEI_API_PLAIN_HTTP=true",
        ] {
            assert!(msg.contains(name), "{msg}");
        }
        let c = config(&[("SHOMEI_HSM_PIN", "1"), ("SHOMEI_API_PLAIN_HTTP", "true")]).unwrap();
        assert_eq!(
            c.api_transport_required().unwrap(),
            &ApiTransport::PlainHttp
        );
        let c = config(&[("SHOMEI_HSM_PIN", "1"), ("SHOMEI_API_PLAIN_HTTP", "false")]).unwrap();
        assert!(c.api_transport_required().is_err());
    }

    #[test]
    fn a_certificate_without_its_key_or_the_reverse_is_refused() {
        for (set, missing) in [
            ("SHOMEI_TLS_CERT", "SHOMEI_TLS_KEY"),
            ("SHOMEI_TLS_KEY", "SHOMEI_TLS_CERT"),
        ] {
            let err = config(&[
                ("SHOMEI_HSM_PIN", "1"),
                ("SHOMEI_API_PLAIN_HTTP", "true"),
                (set, "/etc/shomei/x.pem"),
            ])
            .unwrap_err();
            let msg = err.to_string();
            assert!(msg.starts_with(set) && msg.contains(missing), "{msg}");
        }
    }

    #[test]
    fn the_pin_can_come_from_a_file() {
        let path = std::env::temp_dir().join(format!("shomei-pin-{}", std::process::id()));
        std::fs::write(&path, "9876\n").unwrap();
        let c = config(&[("SHOMEI_HSM_PIN_FILE", path.to_str().unwrap())]).unwrap();
        std::fs::remove_file(&path).unwrap();
        use secrecy::ExposeSecret;
        assert_eq!(c.hsm.user_pin.expose_secret(), "9876");
    }
}
