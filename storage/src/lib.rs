#![doc = include_str!("../README.md")]

use std::path::Path;

use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use shomei_config::{S3Config, StorageConfig};
use std::sync::Arc;
use uuid::Uuid;

use shomei_vault::{EncryptingWriter, Keyring, Purpose, VaultError};

mod appended;

pub use appended::open_revision_file;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage backend: {0}")]
    Backend(#[from] object_store::Error),
    #[error("stored object {key} does not match its recorded SHA-256")]
    Corrupt { key: String },
    #[error("stored object {key}: {source}")]
    Sealed {
        key: String,
        #[source]
        source: VaultError,
    },
    #[error("storage task failed: {0}")]
    Task(String),
    #[error("cannot open storage at {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl StorageError {
    /// Whether retrying can never help (the object is corrupt, or its key destroyed).
    pub fn is_permanent(&self) -> bool {
        match self {
            StorageError::Corrupt { .. } => true,
            StorageError::Sealed { source, .. } => source.is_permanent(),
            StorageError::Backend(_) | StorageError::Open { .. } | StorageError::Task(_) => false,
        }
    }
}

/// A stored object's address and the digest and size of its plaintext, as recorded in
/// `document_revisions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub key: String,
    pub sha256: [u8; 32],
    pub size: u64,
}

/// What an object is, as the deletion log records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectFingerprint {
    pub key: String,
    /// SHA-256 of the bytes that were stored (ciphertext).
    pub sha256: [u8; 32],
    pub size: u64,
}

/// Bytes an object writer buffers before it sends a part.
const WRITE_BUFFER: usize = 5 * 1024 * 1024;

/// The one way to the object store. Everything written is sealed with the tenant's content key
/// (`shomei-vault`); nothing readable reaches the store.
#[derive(Clone, Debug)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    /// The same store when it is a local directory: revisions are read and written without
    /// `object_store` (see [`BlockingStorage`]).
    local: Option<Arc<LocalFileSystem>>,
    keys: Keyring,
}

impl Storage {
    /// The store the configuration names (`SHOMEI_STORAGE_URL` or `SHOMEI_STORAGE_DIR`).
    pub fn from_config(config: &StorageConfig, keys: Keyring) -> Result<Self, StorageError> {
        match config {
            StorageConfig::Local { dir } => Self::local(dir, keys),
            StorageConfig::S3(s3) => Self::s3(s3, keys),
        }
    }

    /// A store in an S3-compatible bucket, under the configured key prefix. The same layout
    /// and sealing as [`local`](Self::local): only the backend differs. Nothing is sent until
    /// the first operation (a wrong bucket or key shows there, not here).
    pub fn s3(config: &S3Config, keys: Keyring) -> Result<Self, StorageError> {
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_virtual_hosted_style_request(config.virtual_hosted)
            .with_allow_http(config.allow_http);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(credentials) = &config.credentials {
            builder = builder
                .with_access_key_id(&credentials.access_key_id)
                .with_secret_access_key(credentials.secret_access_key.expose_secret());
        }
        let bucket = builder.build()?;
        let store: Arc<dyn ObjectStore> = if config.prefix.is_empty() {
            Arc::new(bucket)
        } else {
            Arc::new(PrefixStore::new(bucket, config.prefix.as_str()))
        };
        Ok(Self {
            store,
            local: None,
            keys,
        })
    }

    /// A store in a local directory (created if absent).
    pub fn local(dir: &Path, keys: Keyring) -> Result<Self, StorageError> {
        std::fs::create_dir_all(dir).map_err(|source| StorageError::Open {
            path: dir.display().to_string(),
            source,
        })?;
        let store = Arc::new(LocalFileSystem::new_with_prefix(dir)?.with_automatic_cleanup(true));
        Ok(Self {
            store: store.clone(),
            local: Some(store),
            keys,
        })
    }

    fn sealed(key: &str) -> impl FnOnce(VaultError) -> StorageError + '_ {
        move |source| StorageError::Sealed {
            key: key.to_owned(),
            source,
        }
    }

    /// Seals and stores one revision of a document (see [`BlockingStorage::put_pdf`]), on a
    /// blocking thread: sealing and hashing an upload of many megabytes is CPU work that does
    /// not belong on the async executor.
    pub async fn put_pdf(
        &self,
        tenant_id: Uuid,
        document_id: Uuid,
        bytes: Bytes,
    ) -> Result<StoredObject, StorageError> {
        self.on_blocking_thread(move |store| store.put_pdf(tenant_id, document_id, &bytes))
            .await
    }

    /// This store's operations on the calling thread, for code already on a blocking thread
    /// (a job reads a revision, signs it and stores the next in one hand-off). `runtime` drives
    /// what has to be awaited: a remote store's requests, a data key not yet cached.
    pub fn blocking<'a>(&'a self, runtime: &'a tokio::runtime::Handle) -> BlockingStorage<'a> {
        BlockingStorage {
            storage: self,
            runtime,
        }
    }

    /// Runs `work` with [`blocking`](Self::blocking) on one of the runtime's blocking threads.
    async fn on_blocking_thread<T, F>(&self, work: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(BlockingStorage<'_>) -> Result<T, StorageError> + Send + 'static,
    {
        let (this, runtime) = (self.clone(), tokio::runtime::Handle::current());
        tokio::task::spawn_blocking(move || work(this.blocking(&runtime)))
            .await
            .map_err(|e| StorageError::Task(e.to_string()))?
    }

    /// A writer that seals and streams a new object to `key` as it is written (multipart, a few
    /// MiB buffered at a time): for archives too large to hold in memory. The object appears
    /// only once the writer is shut down (`AsyncWriteExt::shutdown`).
    pub async fn writer(
        &self,
        tenant_id: Uuid,
        key: &str,
    ) -> Result<EncryptingWriter<object_store::buffered::BufWriter>, StorageError> {
        let data_key = self
            .keys
            .current(tenant_id, Purpose::Content)
            .await
            .map_err(Self::sealed(key))?;
        let inner = object_store::buffered::BufWriter::with_capacity(
            self.store.clone(),
            ObjectPath::from(key),
            WRITE_BUFFER,
        )
        .with_max_concurrency(2);
        Ok(EncryptingWriter::new(&data_key, inner))
    }

    /// An object's plaintext length and its plaintext as a stream of chunks (for downloads of
    /// any size): an object stored whole, as export archives are; an appended revision is read
    /// with [`get_verified`](Self::get_verified).
    pub async fn stream(
        &self,
        key: &str,
    ) -> Result<
        (
            u64,
            impl Stream<Item = Result<Bytes, StorageError>> + Send + 'static,
        ),
        StorageError,
    > {
        if appended::depth_of(key).is_some_and(|depth| depth > 0) {
            let source = format!("{key} is an appended revision, not a whole object").into();
            return Err(object_store::Error::NotSupported { source }.into());
        }
        let found = self.store.get(&ObjectPath::from(key)).await?;
        let size = shomei_vault::plaintext_len(found.meta.size).ok_or(StorageError::Corrupt {
            key: key.to_owned(),
        })?;
        let owned = key.to_owned();
        let plain = self
            .keys
            .open_stream(found.into_stream())
            .await
            .map_err(Self::sealed(key))?
            .map_err(move |source| StorageError::Sealed {
                key: owned.clone(),
                source,
            });
        Ok((size, plain))
    }

    /// Where a document's revisions are stored.
    pub fn document_prefix(tenant_id: Uuid, document_id: Uuid) -> String {
        format!("tenants/{tenant_id}/documents/{document_id}")
    }

    /// Where everything of a tenant is stored.
    pub fn tenant_prefix(tenant_id: Uuid) -> String {
        format!("tenants/{tenant_id}")
    }

    /// Where an export's archive parts are stored.
    pub fn export_prefix(tenant_id: Uuid, export_id: Uuid) -> String {
        format!("tenants/{tenant_id}/exports/{export_id}")
    }

    /// Where an export's archive part is stored.
    pub fn export_key(tenant_id: Uuid, export_id: Uuid, part: u32) -> String {
        format!(
            "{}/part-{part}.zip.sealed",
            Self::export_prefix(tenant_id, export_id)
        )
    }

    /// Reads an object back, opens it and checks it against the plaintext digest recorded when
    /// it was written.
    pub async fn get_verified(&self, key: &str, sha256: &[u8]) -> Result<Bytes, StorageError> {
        Ok(self.get_verified_hashing(key, sha256).await?.0)
    }

    /// [`get_verified`](Self::get_verified), with the SHA-256 state after the whole plaintext
    /// (see [`BlockingStorage::get_verified_hashing`]), on one blocking thread: opening
    /// (AES-GCM) and hashing a revision of a few hundred kilobytes is CPU work that does not
    /// belong on the async executor.
    pub async fn get_verified_hashing(
        &self,
        key: &str,
        sha256: &[u8],
    ) -> Result<(Bytes, Sha256), StorageError> {
        let (key, sha256) = (key.to_owned(), sha256.to_vec());
        self.on_blocking_thread(move |store| store.get_verified_hashing(&key, &sha256))
            .await
    }

    /// The keys of every object under `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let prefix = ObjectPath::from(prefix);
        let listed: Vec<_> = self.store.list(Some(&prefix)).try_collect().await?;
        Ok(listed.into_iter().map(|m| m.location.to_string()).collect())
    }

    /// What is stored under `key` (digest and size of the stored bytes), read in full, or
    /// `None` if there is no such object: the evidence to record before [`remove`](Self::remove).
    pub async fn fingerprint(&self, key: &str) -> Result<Option<ObjectFingerprint>, StorageError> {
        let found = match self.store.get(&ObjectPath::from(key)).await {
            Ok(found) => found,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut chunks = found.into_stream();
        while let Some(chunk) = chunks.try_next().await? {
            size += chunk.len() as u64;
            hasher.update(&chunk);
        }
        Ok(Some(ObjectFingerprint {
            key: key.to_owned(),
            sha256: hasher.finalize().into(),
            size,
        }))
    }

    /// Deletes an object for good (no error if it is gone already).
    pub async fn remove(&self, key: &str) -> Result<(), StorageError> {
        match self.store.delete(&ObjectPath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// [`Storage`]'s revision operations on the calling thread, which must be one where blocking
/// is allowed (not an async task's); from [`Storage::blocking`]. A local store's files are read
/// and written here directly, with `std::fs` at the paths `LocalFileSystem` maps the keys to:
/// `object_store`'s `LocalFileSystem` would hand each file operation to another blocking thread
/// (two per read, one per write).
pub struct BlockingStorage<'a> {
    storage: &'a Storage,
    runtime: &'a tokio::runtime::Handle,
}

impl BlockingStorage<'_> {
    /// Seals and stores one revision of a document. The object's name is the SHA-256 of what
    /// is stored, so it says nothing about the plaintext.
    pub fn put_pdf(
        &self,
        tenant_id: Uuid,
        document_id: Uuid,
        bytes: &[u8],
    ) -> Result<StoredObject, StorageError> {
        let sha256 = Sha256::digest(bytes).into();
        self.put_sealed(tenant_id, document_id, bytes, sha256, 0)
    }

    /// Seals and stores the revision that extends the revision stored as `base` (whose
    /// plaintext is `base_bytes`) by `appended`, as a PDF incremental update does. Only
    /// `appended` is stored, with a reference to the base (module `appended`), unless the base is at
    /// the end of a chain of `MAX_DEPTH` (15) appended objects already, or
    /// nothing is appended; then the revision is stored whole. `sha256`: the digest of the whole
    /// revision (hashed on from the base's, see
    /// [`get_verified_hashing`](Self::get_verified_hashing)), recorded as given.
    pub fn put_pdf_revision(
        &self,
        tenant_id: Uuid,
        document_id: Uuid,
        base: &StoredObject,
        base_bytes: &[u8],
        appended: &[u8],
        sha256: [u8; 32],
    ) -> Result<StoredObject, StorageError> {
        debug_assert_eq!(base_bytes.len() as u64, base.size);
        let size = base.size + appended.len() as u64;
        let depth = appended::depth_of(&base.key).map_or(0, |d| d + 1);
        if depth == 0 || depth > appended::MAX_DEPTH || appended.is_empty() {
            let whole = [base_bytes, appended].concat();
            return self.put_sealed(tenant_id, document_id, &whole, sha256, 0);
        }
        let header = appended::Header {
            base_key: &base.key,
            base_size: base.size,
            base_sha256: base.sha256,
        };
        let plain = header.with(appended);
        let stored = self.put_sealed(tenant_id, document_id, &plain, sha256, depth)?;
        Ok(StoredObject { size, ..stored })
    }

    /// Seals `plain` and stores it in the document's folder at `depth` (0: a whole revision),
    /// named by the SHA-256 of the ciphertext; `sha256` and the size of `plain` are what the
    /// result says of it.
    fn put_sealed(
        &self,
        tenant_id: Uuid,
        document_id: Uuid,
        plain: &[u8],
        sha256: [u8; 32],
        depth: u32,
    ) -> Result<StoredObject, StorageError> {
        let data_key = self
            .runtime
            .block_on(self.storage.keys.current(tenant_id, Purpose::Content))
            .map_err(Storage::sealed(""))?;
        let sealed = data_key.seal(plain);
        let key = appended::key(
            &Storage::document_prefix(tenant_id, document_id),
            &hex::encode(Sha256::digest(&sealed)),
            depth,
        );
        match &self.storage.local {
            Some(local) => write_file(local, &key, &sealed)?,
            None => self
                .runtime
                .block_on(
                    self.storage
                        .store
                        .put(&ObjectPath::from(key.as_str()), PutPayload::from(sealed)),
                )
                .map(drop)?,
        }
        Ok(StoredObject {
            key,
            sha256,
            size: plain.len() as u64,
        })
    }

    /// Reads an object back, opens it and checks it against the plaintext digest recorded when
    /// it was written; with the SHA-256 state after the whole plaintext, not finalised: a
    /// revision appended to it is hashed on from there ([`put_pdf_revision`](Self::put_pdf_revision))
    /// instead of from its first byte. An appended revision is put together from its chain
    /// (`appended::Chain`).
    pub fn get_verified_hashing(
        &self,
        key: &str,
        sha256: &[u8],
    ) -> Result<(Bytes, Sha256), StorageError> {
        let mut chain = appended::Chain::new(key);
        while let Some(at) = chain.wanted() {
            let sealed = match &self.storage.local {
                Some(local) => read_file(local, at)?,
                None => Vec::from(self.runtime.block_on(async {
                    self.storage
                        .store
                        .get(&ObjectPath::from(at))
                        .await?
                        .bytes()
                        .await
                })?),
            };
            let plain = self
                .runtime
                .block_on(self.storage.keys.open_owned(sealed))
                .map_err(Storage::sealed(at))?;
            chain.add(plain)?;
        }
        let (plain, state) = chain.finish()?;
        if state.clone().finalize().as_slice() != sha256 {
            return Err(StorageError::Corrupt {
                key: key.to_owned(),
            });
        }
        Ok((Bytes::from(plain), state))
    }
}

/// The stored bytes of `key` in the local store.
fn read_file(local: &LocalFileSystem, key: &str) -> Result<Vec<u8>, StorageError> {
    let path = local.path_to_filesystem(&ObjectPath::from(key))?;
    std::fs::read(&path).map_err(|source| file_error(&path, source))
}

/// Stores `bytes` as `key` in the local store, as `LocalFileSystem`'s `put` does: written to a
/// staging file beside it (`{name}#{n}`, which its listings skip), creating the folders on the
/// way, then renamed into place, so that a reader never sees part of an object. Not synced to
/// disk, as `LocalFileSystem` does not by default.
fn write_file(local: &LocalFileSystem, key: &str, bytes: &[u8]) -> Result<(), StorageError> {
    use std::io::{ErrorKind, Write};
    let path = local.path_to_filesystem(&ObjectPath::from(key))?;
    let mut n = 1u32;
    let (mut file, staging) = loop {
        let mut staging = path.clone().into_os_string();
        staging.push(format!("#{n}"));
        let staging = std::path::PathBuf::from(staging);
        match std::fs::File::create_new(&staging) {
            Ok(file) => break (file, staging),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => n += 1,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let folder = path.parent().unwrap_or(&path);
                std::fs::create_dir_all(folder).map_err(|source| file_error(folder, source))?;
            }
            Err(source) => return Err(file_error(&staging, source)),
        }
    };
    let written = file
        .write_all(bytes)
        .and_then(|()| std::fs::rename(&staging, &path));
    written.map_err(|source| {
        let _ = std::fs::remove_file(&staging);
        file_error(&path, source)
    })
}

/// An I/O error on a local store's file, as `object_store` would give it.
fn file_error(path: &Path, source: std::io::Error) -> StorageError {
    let error = match source.kind() {
        std::io::ErrorKind::NotFound => object_store::Error::NotFound {
            path: path.display().to_string(),
            source: source.into(),
        },
        _ => object_store::Error::Generic {
            store: "LocalFileSystem",
            source: source.into(),
        },
    };
    error.into()
}
