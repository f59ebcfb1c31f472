#![doc = include_str!("../README.md")]

pub mod auth;
pub mod client;
pub mod key_cache;
pub mod problem;
mod routes;
pub mod server;
pub mod tenants;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use shomei_config::Config;
use shomei_jobs::{Intake, Queue};
use shomei_schema::DbPool;
use shomei_signing::{Certificate, Hsm, HsmSettings};
use shomei_storage::Storage;
use shomei_vault::Keyring;

/// What every request handler can reach. Built once at start-up.
pub struct AppState {
    pub db: DbPool,
    pub storage: Storage,
    /// Data keys (unwrapped by the HSM): documents are sealed by `storage`, personal fields by
    /// the routes.
    pub keys: Keyring,
    pub queue: Queue,
    /// Single submissions: their rows written in groups, then queued ([`shomei_jobs::Intake`]).
    pub intake: Intake,
    /// Used by `/readyz` and to unwrap data keys: the API never signs.
    pub hsm: Hsm,
    pub max_upload_bytes: u64,
    /// What verification reports count as a trusted chain.
    pub trust_anchors: Vec<Certificate>,
    /// Webhook endpoints may be on loopback or private addresses.
    pub allow_private_webhooks: bool,
    /// Signs export download links.
    pub link_key: secrecy::SecretSlice<u8>,
    /// Where clients reach the API (download links start with it).
    pub public_url: String,
    /// Client addresses (trusted proxies) and rate limits.
    pub gate: Arc<client::Gate>,
    /// API keys already checked ([`key_cache`]).
    pub key_cache: Arc<key_cache::KeyCache>,
}

impl AppState {
    pub async fn new(config: &Config) -> anyhow::Result<Self> {
        // Every PDF this process reads (uploads, verification) is held to these.
        shomei_signing::PdfLimits::from_config(&config.pdf).install();
        let db = shomei_schema::connect(&config.database_url, config.db_pool_size);
        let queue = Queue::connect(config)
            .await
            .context("connecting to Redis")?;
        // Readiness probes and unwrapping data keys (cached) need little.
        let hsm_settings = HsmSettings {
            pool_size: 2,
            ..HsmSettings::from_config(&config.hsm)
        };
        let hsm = tokio::task::spawn_blocking(move || Hsm::connect(&hsm_settings))
            .await?
            .context("opening the HSM")?;
        let keys = Keyring::new(db.clone(), hsm.clone());
        let storage = Storage::from_config(&config.storage, keys.clone())?;
        let key_cache = Arc::new(key_cache::KeyCache::default());
        key_cache.listen(config.database_url.clone());
        let trust_anchors = match &config.trust_anchors {
            None => vec![],
            Some(path) => {
                let pem =
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                shomei_signing::certificates_from_pem(&pem)?
            }
        };
        Ok(Self {
            intake: Intake::spawn(db.clone(), queue.clone()),
            db,
            storage,
            keys,
            queue,
            hsm,
            max_upload_bytes: config.max_upload_bytes,
            trust_anchors,
            allow_private_webhooks: config.webhooks.allow_private,
            link_key: link_key(config),
            public_url: config.public_url.clone(),
            gate: Arc::new(client::Gate::new(&config.access)),
            key_cache,
        })
    }
}

/// The configured link key, or a random one for this process (with a warning: links made here
/// will not work on another API process or after a restart).
fn link_key(config: &Config) -> secrecy::SecretSlice<u8> {
    use secrecy::ExposeSecret;
    match &config.exports.link_key {
        Some(key) => key.expose_secret().as_bytes().to_vec().into(),
        None => {
            tracing::warn!(
                "SHOMEI_LINK_KEY is not set: download links are signed with a key of this \
                 process only"
            );
            let mut key = vec![0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
            key.into()
        }
    }
}

/// Serves the API on `listener`, over TLS when `tls` is given ([`server::tls_acceptor`]), until
/// `shutdown` resolves, then finishes in-flight requests.
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    use warp::{Filter, Reply};
    let routes = routes::all(Arc::new(state))
        .map(Reply::into_response)
        .boxed();
    server::serve(routes, listener, tls, shutdown).await;
}

/// Binds the configured address; returns the listener and the address actually bound (port 0
/// picks a free port, which the tests use).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}
