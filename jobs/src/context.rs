//! The one context every job handler receives: the pools and clients of outside systems,
//! opened once per worker process.

use std::sync::Arc;

use anyhow::Context;

use std::time::Duration;

use shomei_config::{Config, LogConfig, TsaConfig};
use shomei_notify::mail::{MailSettings, Mailer};
use shomei_notify::webhook::{WebhookSender, WebhookSettings};
use shomei_schema::DbPool;
use shomei_schema::JobKind;
use shomei_signing::{Certificate, Hsm, HsmSettings, Timestamper, TsaClient, TsaClientSettings};
use shomei_storage::Storage;
use shomei_vault::Keyring;

use crate::error::JobError;
use crate::queue::Queue;

pub struct JobContext {
    pub db: DbPool,
    pub storage: Storage,
    /// Data keys: documents are sealed by `storage`, personal fields by the jobs.
    pub keys: Keyring,
    pub queue: Queue,
    pub hsm: Hsm,
    /// The service's own signing key (witness signatures).
    pub key_label: String,
    pub max_attempts: i32,
    /// What verification reports count as a trusted chain (`SHOMEI_TRUST_ANCHORS`).
    pub trust_anchors: Vec<Certificate>,
    /// The configured TSAs; `None` when `SHOMEI_TSA_URLS` is empty.
    timestamper: Option<Arc<dyn Timestamper>>,
    pub mailer: Mailer,
    pub mail_schedule: Vec<Duration>,
    pub webhooks: WebhookSender,
    pub webhook_schedule: Vec<Duration>,
    /// Where signers reach the API (links in e-mails).
    pub public_url: String,
    pub link_ttl: Duration,
    pub code_ttl: Duration,
    pub export_part_bytes: u64,
    pub export_link_ttl: Duration,
    /// Anchoring and retention of the chained logs.
    pub logs: LogConfig,
}

impl JobContext {
    /// Opens PostgreSQL, storage, Redis and the HSM session pool.
    pub async fn open(config: &Config) -> anyhow::Result<Self> {
        // The same limits as the API's intake, for every PDF a job reads.
        shomei_signing::PdfLimits::from_config(&config.pdf).install();
        let db = shomei_schema::connect(&config.database_url, config.db_pool_size);
        let queue = Queue::connect(config)
            .await
            .context("connecting to Redis")?;
        let settings = HsmSettings::from_config(&config.hsm);
        let tsa = config.tsa.clone();
        // Both block: PKCS#11 log-in, and the blocking HTTP client starts its own runtime.
        let (hsm, timestamper) = tokio::task::spawn_blocking(move || {
            let hsm = Hsm::connect(&settings).context("opening the HSM session pool")?;
            let timestamper = timestamper(&tsa).context("setting up the TSA client")?;
            anyhow::Ok((hsm, timestamper))
        })
        .await??;
        let keys = Keyring::new(db.clone(), hsm.clone());
        let storage = Storage::from_config(&config.storage, keys.clone())?;
        let mailer = Mailer::new(&MailSettings {
            smtp_url: config.mail.smtp_url.clone(),
            smtp_ca: config.mail.smtp_ca.clone(),
            mail_dir: config.mail.mail_dir.clone(),
            from: config.mail.from.clone(),
            timeout: config.mail.timeout,
        })
        .context("setting up e-mail")?;
        tracing::info!(mail = %mailer.describe(), "e-mail transport");
        let webhooks = WebhookSender::new(&WebhookSettings {
            timeout: config.webhooks.timeout,
            allow_private: config.webhooks.allow_private,
        })
        .context("setting up the webhook client")?;
        let schedule = |name: &str, value: &str| {
            shomei_notify::webhook::parse_schedule(value)
                .map_err(|e| anyhow::anyhow!("{name} {value:?}: {e}"))
        };
        Ok(Self {
            mailer,
            mail_schedule: schedule("SHOMEI_MAIL_RETRY_SCHEDULE", &config.mail.retry_schedule)?,
            webhooks,
            webhook_schedule: schedule(
                "SHOMEI_WEBHOOK_RETRY_SCHEDULE",
                &config.webhooks.retry_schedule,
            )?,
            public_url: config.public_url.clone(),
            link_ttl: config.requests.link_ttl,
            code_ttl: config.requests.code_ttl,
            export_part_bytes: config.exports.part_bytes,
            export_link_ttl: config.exports.link_ttl,
            logs: config.logs.clone(),
            db,
            storage,
            keys,
            queue,
            hsm,
            key_label: config.hsm.key_label.clone(),
            max_attempts: config.worker.max_attempts,
            timestamper,
            trust_anchors: trust_anchors(config.trust_anchors.as_deref())?,
        })
    }

    /// Runs after which a job is failed without running again: the configured maximum, or
    /// for notifications their schedule's length (plus the maximum, for runs a crash cut short).
    pub fn attempt_cap(&self, kind: JobKind) -> i32 {
        let schedule = match kind {
            JobKind::NotifyEmail => self.mail_schedule.len(),
            JobKind::NotifyWebhook => self.webhook_schedule.len(),
            _ => 0,
        };
        self.max_attempts + schedule as i32
    }

    /// Whether signature requests are concluded with a document time-stamp.
    pub fn concludes_with_timestamp(&self) -> bool {
        self.timestamper.is_some()
    }

    /// The time-stamp source, for jobs that must not go on without one.
    pub fn timestamper(&self) -> Result<Arc<dyn Timestamper>, JobError> {
        self.timestamper.clone().ok_or_else(|| {
            JobError::permanent("time-stamps are needed but no TSA is configured (SHOMEI_TSA_URLS)")
        })
    }
}

/// The certificates of the PEM file at `path` (none without a path).
pub fn trust_anchors(path: Option<&std::path::Path>) -> anyhow::Result<Vec<Certificate>> {
    let Some(path) = path else { return Ok(vec![]) };
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(shomei_signing::certificates_from_pem(&pem)?)
}

fn timestamper(config: &TsaConfig) -> anyhow::Result<Option<Arc<dyn Timestamper>>> {
    if config.urls.is_empty() {
        return Ok(None);
    }
    let path = config.trust_anchors.as_ref().context(
        "SHOMEI_TSA_TRUST_ANCHORS must name the CA certificates TSA certificates chain to",
    )?;
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut settings = TsaClientSettings::new(
        config.urls.clone(),
        shomei_signing::certificates_from_pem(&pem)?,
    );
    settings.attempts_per_url = config.attempts_per_url.max(1);
    settings.timeout = config.timeout;
    if let Some(policy) = &config.required_policy {
        settings.policy = Some(
            policy
                .parse()
                .with_context(|| format!("SHOMEI_TSA_REQUIRED_POLICY {policy:?}"))?,
        );
    }
    Ok(Some(Arc::new(TsaClient::new(settings)?)))
}
