//! The one context every job handler receives: the pools and clients of outside systems,
//! opened once per worker process.

use shomei_config::{Config, HsmConfig};
use shomei_schema::DbPool;
use shomei_signing::{Hsm, HsmSettings};
use shomei_storage::Storage;

use crate::queue::Queue;

pub struct JobContext {
    pub db: DbPool,
    pub storage: Storage,
    pub queue: Queue,
    pub hsm: Hsm,
    /// The service's own signing key (witness signatures).
    pub key_label: String,
    pub max_attempts: i32,
}

impl JobContext {
    /// Opens PostgreSQL, storage, Redis and the HSM session pool.
    pub async fn open(config: &Config) -> anyhow::Result<Self> {
        use anyhow::Context;
        let db = shomei_schema::connect(&config.database_url, config.db_pool_size);
        let storage = Storage::local(&config.storage_dir)?;
        let queue = Queue::connect(config)
            .await
            .context("connecting to Redis")?;
        let settings = hsm_settings(&config.hsm, config.hsm.pool_size);
        let hsm = tokio::task::spawn_blocking(move || Hsm::connect(&settings))
            .await?
            .context("opening the HSM session pool")?;
        Ok(Self {
            db,
            storage,
            queue,
            hsm,
            key_label: config.hsm.key_label.clone(),
            max_attempts: config.worker.max_attempts,
        })
    }
}

pub fn hsm_settings(config: &HsmConfig, pool_size: u32) -> HsmSettings {
    HsmSettings {
        module_path: config.module_path.clone(),
        token_label: config.token_label.clone(),
        user_pin: config.user_pin.clone(),
        pool_size,
    }
}
