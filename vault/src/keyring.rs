//! Data keys: made on first use per tenant and purpose, stored only wrapped by their own KEK in
//! the HSM, unwrapped into memory and cached for a few minutes.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aes_gcm::{Aes256Gcm, KeyInit};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;
use zeroize::Zeroizing;

use shomei_schema::{interact, DataKeyRow, DbPool};
use shomei_signing::Hsm;

use crate::sealed;
use crate::VaultError;

/// How long an unwrapped key is used before its row is read again (a destroyed key stops
/// working in every process within this time).
const CACHE_TTL: Duration = Duration::from_secs(300);

/// What a data key encrypts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// Document revisions and export archives: destroyed when the tenant is deleted.
    Content,
    /// Personal fields of transaction records (names, e-mail addresses), which stay after a
    /// deletion (R-DEL-2).
    Records,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Content => "content",
            Purpose::Records => "records",
        }
    }
}

/// An unwrapped data key. Its bytes live only inside the ciphers (zeroized on drop; ring's key
/// schedule holds only the expanded round keys).
pub struct DataKey {
    id: Uuid,
    cipher: Aes256Gcm,
    /// The same key, for whole objects in memory ([`sealed::seal_object`]).
    objects: ring::aead::LessSafeKey,
    /// Derived from the key: the MAC key of blind indexes.
    index_key: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl DataKey {
    pub(crate) fn from_bytes(id: Uuid, bytes: &[u8]) -> Self {
        let mut derive = Sha256::new();
        derive.update(b"shomei-vault blind index v1");
        derive.update(bytes);
        Self {
            id,
            cipher: Aes256Gcm::new_from_slice(bytes).expect("a data key is 32 bytes"),
            objects: ring::aead::LessSafeKey::new(
                ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, bytes)
                    .expect("a data key is 32 bytes"),
            ),
            index_key: Zeroizing::new(derive.finalize().into()),
        }
    }

    /// HMAC-SHA256 of `text` under a key derived from this one: equal texts give equal indexes,
    /// so a sealed column can be looked up without storing the text.
    pub fn blind_index(&self, text: &str) -> Vec<u8> {
        let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(self.index_key.as_slice())
            .expect("HMAC takes any key length");
        mac.update(text.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    pub fn id(&self) -> Uuid {
        self.id
    }

    pub(crate) fn cipher(&self) -> &Aes256Gcm {
        &self.cipher
    }

    pub(crate) fn objects(&self) -> &ring::aead::LessSafeKey {
        &self.objects
    }

    /// Seals a whole object (see `crate::sealed` for the format).
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        sealed::seal_object(self, plaintext)
    }

    /// Seals a personal field.
    pub fn seal_field(&self, text: &str) -> Vec<u8> {
        sealed::seal_field(self, text)
    }

    /// Opens an object sealed with this key.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, VaultError> {
        sealed::open_object(self, sealed)
    }

    /// A key of fixed bytes, for benchmarks only (it protects nothing).
    #[doc(hidden)]
    pub fn for_benchmark() -> Self {
        Self::from_bytes(Uuid::nil(), &[0x5a; 32])
    }

    /// Opens a field sealed with this key.
    pub fn open_field(&self, sealed: &[u8]) -> Result<String, VaultError> {
        sealed::open_field(self, sealed)
    }
}

/// Binds a wrapped key to its row: a wrapped key copied onto another tenant's row does not
/// unwrap.
fn wrapping_aad(id: Uuid, tenant_id: Uuid, purpose: &str) -> Vec<u8> {
    [
        id.as_bytes().as_slice(),
        tenant_id.as_bytes(),
        purpose.as_bytes(),
    ]
    .concat()
}

fn kek_label(id: Uuid, version: i32) -> String {
    format!("shomei-kek-{id}-v{version}")
}

/// Every process's access to data keys. Cheap to clone.
#[derive(Clone)]
pub struct Keyring {
    inner: Arc<Inner>,
}

struct Inner {
    db: DbPool,
    hsm: Hsm,
    keys: Mutex<HashMap<Uuid, (Arc<DataKey>, Instant)>>,
    live: Mutex<HashMap<(Uuid, Purpose), Uuid>>,
    /// Held while a process looks up or makes a tenant's first key, so concurrent first
    /// requests make one key (other processes are settled by the unique index).
    creating: tokio::sync::Mutex<()>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring").finish_non_exhaustive()
    }
}

/// A data key's KEK after a rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    pub data_key_id: Uuid,
    pub kek_label: String,
}

impl Keyring {
    pub fn new(db: DbPool, hsm: Hsm) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                hsm,
                keys: Mutex::new(HashMap::new()),
                live: Mutex::new(HashMap::new()),
                creating: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The tenant's key for `purpose`, made (KEK in the HSM, wrapped key in PostgreSQL) if it
    /// has none yet.
    pub async fn current(
        &self,
        tenant_id: Uuid,
        purpose: Purpose,
    ) -> Result<Arc<DataKey>, VaultError> {
        let known = self
            .inner
            .live
            .lock()
            .expect("keyring lock")
            .get(&(tenant_id, purpose))
            .copied();
        if let Some(id) = known {
            if let Some(key) = self.cached(id) {
                return Ok(key);
            }
        }
        let p = purpose.as_str();
        let live = || {
            interact(&self.inner.db, move |conn| {
                Ok(DataKeyRow::live(conn, tenant_id, p)?)
            })
        };
        let row = match live().await? {
            Some(row) => row,
            None => {
                let _creating = self.inner.creating.lock().await;
                // Another request of this process may have made it while this one waited.
                match live().await? {
                    Some(row) => row,
                    None => self.create(tenant_id, purpose).await?,
                }
            }
        };
        self.inner
            .live
            .lock()
            .expect("keyring lock")
            .insert((tenant_id, purpose), row.id);
        self.unwrap_row(row).await
    }

    /// The key with this id (the one a sealed object or field names).
    pub async fn by_id(&self, id: Uuid) -> Result<Arc<DataKey>, VaultError> {
        if let Some(key) = self.cached(id) {
            return Ok(key);
        }
        let row = interact(&self.inner.db, move |conn| Ok(DataKeyRow::get(conn, id)?))
            .await?
            .ok_or(VaultError::UnknownKey(id))?;
        self.unwrap_row(row).await
    }

    /// Opens a sealed object with the key its header names, in the buffer that holds it: the
    /// plaintext takes its place.
    pub async fn open_owned(&self, sealed: Vec<u8>) -> Result<Vec<u8>, VaultError> {
        let key = self.by_id(sealed::key_id_of(&sealed)?).await?;
        sealed::open_object_owned(&key, sealed)
    }

    /// Opens a sealed field with the key it names.
    pub async fn open_field(&self, sealed: &[u8]) -> Result<String, VaultError> {
        let key = self.by_id(sealed::key_id_of(sealed)?).await?;
        key.open_field(sealed)
    }

    /// Re-wraps live data keys (one tenant's, or all) under a new version of their KEK and
    /// destroys the old version. Nothing they encrypted changes.
    pub async fn rotate(&self, tenant_id: Option<Uuid>) -> Result<Vec<Rotated>, VaultError> {
        let rows = interact(&self.inner.db, move |conn| {
            Ok(DataKeyRow::all_live(conn, tenant_id)?)
        })
        .await?;
        let mut rotated = Vec::with_capacity(rows.len());
        for row in rows {
            let db = self.inner.db.clone();
            let hsm = self.inner.hsm.clone();
            let done = blocking(move || {
                let wrapped = row
                    .wrapped
                    .as_deref()
                    .ok_or(VaultError::Destroyed(row.id))?;
                let aad = wrapping_aad(row.id, row.tenant_id, &row.purpose);
                let key = hsm.unwrap_with_kek(&row.kek_label, wrapped, &aad)?;
                let label = kek_label(row.id, row.kek_version + 1);
                hsm.create_kek(row.id.as_bytes(), &label)?;
                let rewrapped = hsm.wrap_with_kek(&label, &key, &aad)?;
                let mut conn = db.get().map_err(shomei_schema::DbError::from)?;
                let won =
                    DataKeyRow::rewrap(&mut conn, row.id, row.kek_version, &label, &rewrapped)
                        .map_err(shomei_schema::DbError::from)?;
                // Keep whichever version the row names now (ours, or a concurrent rotation's).
                let current = DataKeyRow::get(&mut conn, row.id)
                    .map_err(shomei_schema::DbError::from)?
                    .map(|r| r.kek_label)
                    .unwrap_or(label.clone());
                hsm.destroy_keks(row.id.as_bytes(), Some(&current))?;
                Ok(won.then_some(Rotated {
                    data_key_id: row.id,
                    kek_label: label,
                }))
            })
            .await?;
            rotated.extend(done);
        }
        Ok(rotated)
    }

    /// Destroys the tenant's key for `purpose`: its KEK in the HSM, then the wrapped copy.
    /// Everything sealed with it, wherever a copy of it is kept, can no longer be opened.
    /// Returns the destroyed key's id (`None` if it had none, or it was destroyed already).
    pub async fn destroy(
        &self,
        tenant_id: Uuid,
        purpose: Purpose,
    ) -> Result<Option<Uuid>, VaultError> {
        let p = purpose.as_str();
        let Some(row) = interact(&self.inner.db, move |conn| {
            Ok(DataKeyRow::live(conn, tenant_id, p)?)
        })
        .await?
        else {
            return Ok(None);
        };
        let id = row.id;
        let hsm = self.inner.hsm.clone();
        let destroyed = blocking(move || Ok(hsm.destroy_keks(id.as_bytes(), None)?)).await?;
        interact(&self.inner.db, move |conn| {
            Ok(DataKeyRow::destroy(conn, id)?)
        })
        .await?;
        self.inner.keys.lock().expect("keyring lock").remove(&id);
        self.inner
            .live
            .lock()
            .expect("keyring lock")
            .remove(&(tenant_id, purpose));
        tracing::info!(%tenant_id, purpose = p, data_key = %id, keks = destroyed, "data key destroyed");
        Ok(Some(id))
    }

    fn cached(&self, id: Uuid) -> Option<Arc<DataKey>> {
        let keys = self.inner.keys.lock().expect("keyring lock");
        keys.get(&id)
            .filter(|(_, at)| at.elapsed() < CACHE_TTL)
            .map(|(key, _)| Arc::clone(key))
    }

    async fn unwrap_row(&self, row: DataKeyRow) -> Result<Arc<DataKey>, VaultError> {
        let hsm = self.inner.hsm.clone();
        let id = row.id;
        let label = row.kek_label.clone();
        let key = blocking(move || {
            let wrapped = row
                .wrapped
                .as_deref()
                .ok_or(VaultError::Destroyed(row.id))?;
            let aad = wrapping_aad(row.id, row.tenant_id, &row.purpose);
            let bytes =
                hsm.unwrap_with_kek(&row.kek_label, wrapped, &aad)
                    .map_err(|e| match e {
                        // The KEK is gone but the row was not cleared yet (a deletion cut short).
                        shomei_signing::HsmError::KeyNotFound(_) => VaultError::Destroyed(row.id),
                        other => other.into(),
                    })?;
            Ok(DataKey::from_bytes(row.id, &bytes))
        })
        .await
        .inspect_err(|e| tracing::warn!(data_key = %id, kek = %label, error = %e, "unwrapping a data key failed"))?;
        let key = Arc::new(key);
        self.inner
            .keys
            .lock()
            .expect("keyring lock")
            .insert(id, (Arc::clone(&key), Instant::now()));
        Ok(key)
    }

    /// Makes the tenant's first key for `purpose`; if another process wins the race, its key is
    /// used and ours is destroyed.
    async fn create(&self, tenant_id: Uuid, purpose: Purpose) -> Result<DataKeyRow, VaultError> {
        let db = self.inner.db.clone();
        let hsm = self.inner.hsm.clone();
        let made = blocking(move || {
            let id = Uuid::now_v7();
            let label = kek_label(id, 1);
            hsm.create_kek(id.as_bytes(), &label)?;
            let mut key = Zeroizing::new([0u8; 32]);
            rand::rngs::OsRng.fill_bytes(key.as_mut_slice());
            let wrapped = hsm.wrap_with_kek(&label, key.as_slice(), &wrapping_aad(id, tenant_id, purpose.as_str()))?;
            let row = DataKeyRow {
                id,
                tenant_id,
                purpose: purpose.as_str().to_owned(),
                kek_label: label,
                kek_version: 1,
                wrapped: Some(wrapped),
                created_at: chrono::Utc::now(),
                rotated_at: None,
                destroyed_at: None,
            };
            let mut conn = db.get().map_err(shomei_schema::DbError::from)?;
            if row.insert(&mut conn).map_err(shomei_schema::DbError::from)? {
                tracing::info!(%tenant_id, purpose = purpose.as_str(), data_key = %id, "data key created");
                return Ok(row);
            }
            hsm.destroy_keks(id.as_bytes(), None)?;
            DataKeyRow::live(&mut conn, tenant_id, purpose.as_str())
                .map_err(shomei_schema::DbError::from)?
                .ok_or(VaultError::UnknownKey(id))
        })
        .await;
        made.inspect_err(|e| {
            tracing::warn!(%tenant_id, purpose = purpose.as_str(), error = %e, "making a data key failed")
        })
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, VaultError> + Send + 'static,
) -> Result<T, VaultError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| VaultError::Task(e.to_string()))?
}
