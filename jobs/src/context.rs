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

use crate::document_memory::DocumentMemory;
use crate::error::JobError;
use crate::group_commit::GroupCommit;
use crate::queue::Queue;

pub struct JobContext {
    pub db: DbPool,
    /// The jobs' claims and records, coalesced ([`crate::group_commit`]).
    pub group_commit: GroupCommit,
    pub storage: Storage,
    /// Data keys: documents are sealed by `storage`, personal fields by the jobs.
    pub keys: Keyring,
    pub queue: Queue,
    pub hsm: Hsm,
    /// The service's own signing key (witness signatures).
    pub key_label: String,
    pub max_attempts: i32,
    /// The PDF bytes the running jobs hold ([`DocumentMemory`]).
    pub document_memory: DocumentMemory,
    /// Each kind's run timeout ([`JobContext::timeout`]), by position in [`JobKind::ALL`].
    timeouts: [Duration; JobKind::ALL.len()],
    /// How long past its timeout a run may stay `running` before the sweeper takes it back.
    pub sweep_grace: Duration,
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
            group_commit: GroupCommit::spawn(db.clone()),
            db,
            storage,
            keys,
            queue,
            hsm,
            key_label: config.hsm.key_label.clone(),
            max_attempts: config.worker.max_attempts,
            document_memory: DocumentMemory::new(config.worker.pdf_bytes),
            timeouts: timeouts(&config.worker.job_timeouts).map_err(|e| {
                anyhow::anyhow!("SHOMEI_JOB_TIMEOUTS {:?}: {e}", config.worker.job_timeouts)
            })?,
            sweep_grace: config.worker.sweep_grace,
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

    /// How long one run of a `kind` job may take: past it the run is cancelled, a transient
    /// failure (retried, counted toward [`JobContext::attempt_cap`]). The sweeper
    /// (`crate::reconciler`) takes back a job still `running` `timeout + sweep_grace` after its
    /// run started: its worker died or hung.
    pub fn timeout(&self, kind: JobKind) -> Duration {
        let index = JobKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.timeouts[index]
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

/// A run's timeout unless `SHOMEI_JOB_TIMEOUTS` says otherwise. Generous: a timeout is for a
/// run that hangs, not a slow one. A B-T signature waits for up to every TSA's attempts
/// (`SHOMEI_TSA_ATTEMPTS` × `SHOMEI_TSA_TIMEOUT_SECS` each, 30 s by default); a conclusion
/// also fetches CRLs; an export or a deletion walks every document of a tenant.
pub const fn default_timeout(kind: JobKind) -> Duration {
    const MINUTE: u64 = 60;
    Duration::from_secs(match kind {
        JobKind::Sign => 2 * MINUTE,
        JobKind::Timestamp => 5 * MINUTE,
        JobKind::NotifyEmail => 2 * MINUTE,
        JobKind::NotifyWebhook => MINUTE,
        JobKind::Verify => 60 * MINUTE,
        JobKind::BulkDownload | JobKind::Deletion => 6 * 60 * MINUTE,
    })
}

/// The timeouts of every kind: the defaults, overridden by `kind=duration` items of `spec`
/// (comma separated, e.g. `sign=2m,bulk_download=6h`; units ms, s, m, h, d).
fn timeouts(spec: &str) -> Result<[Duration; JobKind::ALL.len()], String> {
    let mut timeouts = JobKind::ALL.map(default_timeout);
    for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (name, value) = item
            .split_once('=')
            .ok_or_else(|| format!("{item:?} is not kind=duration"))?;
        let index = JobKind::ALL
            .iter()
            .position(|k| k.as_str() == name.trim())
            .ok_or_else(|| format!("{:?} is not a job kind", name.trim()))?;
        let duration = match shomei_notify::webhook::parse_schedule(value.trim())?[..] {
            [d] if !d.is_zero() => d,
            _ => return Err(format!("{item:?} needs one duration above zero")),
        };
        timeouts[index] = duration;
    }
    Ok(timeouts)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_the_defaults_unless_overridden_per_kind() {
        let all = timeouts("").unwrap();
        assert_eq!(all[0], default_timeout(JobKind::ALL[0]));
        let set = timeouts("sign=3s, bulk_download=2h").unwrap();
        let at = |kind: JobKind| set[JobKind::ALL.iter().position(|k| *k == kind).unwrap()];
        assert_eq!(at(JobKind::Sign), Duration::from_secs(3));
        assert_eq!(at(JobKind::BulkDownload), Duration::from_secs(7200));
        assert_eq!(at(JobKind::Verify), default_timeout(JobKind::Verify));
    }

    #[test]
    fn a_timeout_naming_no_kind_or_no_duration_is_refused() {
        for bad in ["sign", "sing=3s", "sign=0s", "sign=3", "sign=1s,2s"] {
            assert!(timeouts(bad).is_err(), "{bad:?} accepted");
        }
    }
}
