//! API keys this process has already checked, so that a request does not cost a query to find
//! its key (it was a sixth of all statements under load: every upload, submission and status
//! poll looked its key up).
//!
//! An entry holds what the lookup found: the live key (tenant, role) and its tenant's IP
//! allow-list. What changes that is announced by PostgreSQL: triggers on `api_keys` and
//! `tenants` (migration `auth_notify`) send the tenant's id on channel `shomei_auth` when the
//! change commits, from whichever process made it (a worker deleting a tenant, another API
//! process, an operator's psql). A listener thread drops that tenant's entries; the route that
//! changed the allow-list drops them itself too, so its own next request sees the change.
//!
//! The cache is used only while the listener is connected and listening: when its connection
//! fails, every entry is dropped and each request queries again until it is back. Entries are
//! also re-read after [`MAX_AGE`] whatever happens. A lookup that raced a notification (it read
//! the row before the change and finished after the notice) is not kept: an epoch counter,
//! bumped by every notice, tells it so. A key that is not found is never cached.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diesel::{Connection, PgConnection, RunQueryDsl};
use uuid::Uuid;

use shomei_schema::ApiKey;

/// The channel the triggers notify on.
const CHANNEL: &str = "shomei_auth";
/// An entry is read again from the database after this long, notices or not.
pub const MAX_AGE: Duration = Duration::from_secs(30);
/// How often the listener looks for notices (libpq gives no blocking wait through diesel): the
/// longest another process's change goes unseen here.
const POLL: Duration = Duration::from_millis(5);
/// How often the listener checks that its connection is still alive.
const PING: Duration = Duration::from_secs(5);
/// More keys than this in use at once is not expected; past it the cache starts again.
const MAX_ENTRIES: usize = 10_000;

/// What a key lookup found: the live key and its tenant's IP allow-list.
pub type Found = (ApiKey, Option<Vec<String>>);

#[derive(Default)]
pub struct KeyCache {
    entries: Mutex<HashMap<[u8; 32], (Found, Instant)>>,
    /// Bumped by every notice and every loss of the listener.
    epoch: AtomicU64,
    /// The listener is listening: only then are entries kept and used.
    live: AtomicBool,
}

impl KeyCache {
    /// The key with this SHA-256, if checked less than [`MAX_AGE`] ago and unchanged since.
    pub fn get(&self, digest: &[u8; 32]) -> Option<Found> {
        if !self.live.load(Ordering::Acquire) {
            return None;
        }
        let entries = self.entries.lock().expect("key cache lock");
        let (found, at) = entries.get(digest)?;
        (at.elapsed() < MAX_AGE).then(|| found.clone())
    }

    /// Read before a lookup; pass to [`KeyCache::put`] with its result.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Keeps what a lookup that started at `epoch` found, unless a notice came meanwhile.
    pub fn put(&self, digest: [u8; 32], found: Found, epoch: u64) {
        if !self.live.load(Ordering::Acquire) {
            return;
        }
        let mut entries = self.entries.lock().expect("key cache lock");
        // Under the lock: a notice bumps the epoch before it takes the lock to drop entries.
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(digest, (found, Instant::now()));
    }

    /// Drops the tenant's keys: something about them or their tenant changed.
    pub fn forget_tenant(&self, tenant_id: Uuid) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.entries
            .lock()
            .expect("key cache lock")
            .retain(|_, ((key, _), _)| key.tenant_id != tenant_id);
    }

    fn forget_all(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.entries.lock().expect("key cache lock").clear();
    }

    /// Starts the listener thread: it connects to `database_url`, listens on `shomei_auth`
    /// and drops entries as notices come, reconnecting (with the cache off) after a failure.
    pub fn listen(self: &Arc<Self>, database_url: String) {
        let cache = self.clone();
        std::thread::Builder::new()
            .name("key-cache-listener".into())
            .spawn(move || loop {
                let Err(e) = cache.listen_once(&database_url);
                if cache.live.swap(false, Ordering::AcqRel) {
                    tracing::warn!(error = %e, "API key cache off: its listener lost the database");
                }
                cache.forget_all();
                std::thread::sleep(Duration::from_secs(1));
            })
            .expect("spawning the key cache listener");
    }

    /// Listens until the connection fails.
    fn listen_once(&self, database_url: &str) -> diesel::QueryResult<Infallible> {
        let mut conn = PgConnection::establish(database_url)
            .map_err(|e| diesel::result::Error::QueryBuilderError(e.into()))?;
        diesel::sql_query(format!("LISTEN {CHANNEL}")).execute(&mut conn)?;
        // Whatever changed while nobody listened is unknown: start empty.
        self.forget_all();
        self.live.store(true, Ordering::Release);
        tracing::info!("API key cache on");
        let mut pinged = Instant::now();
        loop {
            std::thread::sleep(POLL);
            for notice in conn.notifications_iter() {
                let notice = notice?;
                match notice.payload.parse::<Uuid>() {
                    Ok(tenant_id) => self.forget_tenant(tenant_id),
                    Err(_) => self.forget_all(),
                }
            }
            if pinged.elapsed() >= PING {
                diesel::sql_query("SELECT 1").execute(&mut conn)?;
                pinged = Instant::now();
            }
        }
    }
}
