#![doc = include_str!("../README.md")]

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage backend: {0}")]
    Backend(#[from] object_store::Error),
    #[error("stored object {key} does not match its recorded SHA-256")]
    Corrupt { key: String },
    #[error("cannot open storage at {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A stored object's address and digest, as recorded in `document_revisions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub key: String,
    pub sha256: [u8; 32],
    pub size: u64,
}

/// Bytes an object writer buffers before it sends a part.
const WRITE_BUFFER: usize = 5 * 1024 * 1024;

#[derive(Clone, Debug)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
}

impl Storage {
    /// A store in a local directory (created if absent).
    pub fn local(dir: &Path) -> Result<Self, StorageError> {
        std::fs::create_dir_all(dir).map_err(|source| StorageError::Open {
            path: dir.display().to_string(),
            source,
        })?;
        let store = LocalFileSystem::new_with_prefix(dir)?.with_automatic_cleanup(true);
        Ok(Self {
            store: Arc::new(store),
        })
    }

    /// Stores one revision of a document under its content address.
    pub async fn put_pdf(
        &self,
        tenant_id: Uuid,
        document_id: Uuid,
        bytes: Bytes,
    ) -> Result<StoredObject, StorageError> {
        let sha256: [u8; 32] = Sha256::digest(&bytes).into();
        let key = format!(
            "tenants/{tenant_id}/documents/{document_id}/{}.pdf",
            hex::encode(sha256)
        );
        let size = bytes.len() as u64;
        self.store
            .put(
                &ObjectPath::from(key.as_str()),
                PutPayload::from_bytes(bytes),
            )
            .await?;
        Ok(StoredObject { key, sha256, size })
    }

    /// A writer that streams a new object to `key` as it is written (multipart, a few MiB
    /// buffered at a time): for archives too large to hold in memory. The object appears only
    /// once the writer is shut down (`AsyncWriteExt::shutdown`).
    pub fn writer(&self, key: &str) -> object_store::buffered::BufWriter {
        object_store::buffered::BufWriter::with_capacity(
            self.store.clone(),
            ObjectPath::from(key),
            WRITE_BUFFER,
        )
        .with_max_concurrency(2)
    }

    /// An object's bytes as a stream of chunks (for downloads of any size).
    pub async fn stream(
        &self,
        key: &str,
    ) -> Result<
        (
            u64,
            impl futures::Stream<Item = Result<Bytes, object_store::Error>> + Send + 'static,
        ),
        StorageError,
    > {
        let found = self.store.get(&ObjectPath::from(key)).await?;
        Ok((found.meta.size, found.into_stream()))
    }

    /// Where an export's archive part is stored.
    pub fn export_key(tenant_id: Uuid, export_id: Uuid, part: u32) -> String {
        format!("tenants/{tenant_id}/exports/{export_id}/part-{part}.zip")
    }

    /// Reads an object back and checks it against the digest recorded when it was written.
    pub async fn get_verified(&self, key: &str, sha256: &[u8]) -> Result<Bytes, StorageError> {
        let bytes = self
            .store
            .get(&ObjectPath::from(key))
            .await?
            .bytes()
            .await?;
        if Sha256::digest(&bytes).as_slice() != sha256 {
            return Err(StorageError::Corrupt {
                key: key.to_owned(),
            });
        }
        Ok(bytes)
    }
}
