//! The **bulk_download** job (R-DATA-5): the tenant's signed PDFs that match a filter, as ZIP
//! archives streamed to storage while they are built. Each part is a complete archive:
//!
//! ```text
//! documents/<id>.pdf   the latest revision, byte for byte what GET /v1/documents/{id}/pdf gives
//! documents.csv        manifest: the contract-details columns plus `file`
//! SHA256SUMS           `sha256sum -c` format, one line per PDF
//! ```
//!
//! One PDF is in memory at a time and the archive goes out in multipart chunks, so memory
//! stays flat whatever the number of documents. A part is closed once it exceeds
//! `SHOMEI_EXPORT_PART_BYTES`. A run that is cut off starts over (the same keys are
//! overwritten); progress (`done` of `total`) is written every few documents. When the last
//! part is stored the export becomes `ready` with `export.ready`, in one transaction.
//!
//! Download links are signed, not stored: [`link_signature`] is an HMAC-SHA256 over the
//! export, the part and the expiry time, checked by the API without a database secret.

use async_zip::tokio::write::ZipFileWriter;
use async_zip::{Compression, ZipEntryBuilder};
use base64::Engine;
use chrono::{DateTime, Utc};
use diesel::Connection;
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use shomei_schema::{interact, DocumentFilter, DocumentRow, Export, Job};
use shomei_storage::Storage;

use crate::context::JobContext;
use crate::error::JobError;
use crate::events::{self, kind, NewEvent};
use crate::reports::{self, Encoding, DOCUMENT_COLUMNS};

/// The payload of a bulk_download job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportJob {
    pub export_id: Uuid,
}

/// One stored archive part, as `exports.parts` lists them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Part {
    pub part: u32,
    pub key: String,
    pub documents: u32,
    pub size_bytes: u64,
}

/// Documents read per database round trip.
const PAGE: i64 = 200;
/// Progress is written after this many documents.
const PROGRESS_EVERY: i32 = 25;
/// What a stored entry adds to the archive besides its bytes (local header, central
/// directory record, name): a generous estimate for the part-size check.
const ENTRY_OVERHEAD: u64 = 200;

pub async fn run(ctx: &JobContext, job: &Job) -> Result<serde_json::Value, JobError> {
    let payload: ExportJob = serde_json::from_value(job.payload.clone())
        .map_err(|e| JobError::permanent(format!("unreadable bulk_download payload: {e}")))?;
    let export_id = payload.export_id;
    let export = interact(&ctx.db, move |conn| Ok(Export::get(conn, export_id)?)).await?;
    if export.status == "ready" {
        return Ok(json!({"export_id": export.id, "parts": export.parts}));
    }
    let filter: DocumentFilter = serde_json::from_value(export.filter.clone())
        .map_err(|e| JobError::permanent(format!("unreadable export filter: {e}")))?;
    let tenant_id = export.tenant_id;
    let principal = export.principal_id;

    let counted = filter.clone();
    let total = interact(&ctx.db, move |conn| {
        let total = counted.count(conn, tenant_id, principal, true)?;
        Export::start(conn, export_id, total as i32)?;
        Ok(total)
    })
    .await?;
    tracing::info!(export.id = %export_id, documents = total, "export started");

    let mut parts: Vec<Part> = Vec::new();
    let mut archive = PartWriter::open(&ctx.storage, tenant_id, export_id, 1).await?;
    let mut done = 0i32;
    let mut after = None;
    loop {
        let page_filter = filter.clone();
        let page = interact(&ctx.db, move |conn| {
            Ok(page_filter.page(conn, tenant_id, principal, true, after, PAGE)?)
        })
        .await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        for document in page {
            let bytes = ctx
                .storage
                .get_verified(&document.storage_key, &document.sha256)
                .await?;
            if archive.documents > 0
                && archive.size + bytes.len() as u64 + ENTRY_OVERHEAD > ctx.export_part_bytes
            {
                let next = archive.number + 1;
                parts.push(archive.close().await?);
                archive = PartWriter::open(&ctx.storage, tenant_id, export_id, next).await?;
            }
            let parties = reports::parties(&ctx.keys, &document).await?;
            archive.add(&document, parties, &bytes).await?;
            done += 1;
            if done % PROGRESS_EVERY == 0 {
                interact(&ctx.db, move |conn| {
                    Ok(Export::progress(conn, export_id, done)?)
                })
                .await?;
            }
        }
    }
    parts.push(archive.close().await?);

    let expires_at = Utc::now() + ctx.export_link_ttl;
    let listed = serde_json::to_value(&parts).expect("parts serialise");
    let recorded = listed.clone();
    let actor = format!("job:{}", job.id);
    let pending = interact(&ctx.db, move |conn| {
        Ok(conn.transaction(|conn| {
            Export::finish(conn, export_id, done, &recorded, expires_at)?;
            events::emit(
                conn,
                NewEvent {
                    tenant_id,
                    kind: kind::EXPORT_READY,
                    document_id: None,
                    request_id: None,
                    actor,
                    ip: None,
                    data: json!({"export_id": export_id, "documents": done,
                                 "parts": recorded.as_array().map_or(0, Vec::len),
                                 "expires_at": expires_at}),
                },
            )
        })?)
    })
    .await?;
    pending.push(&ctx.queue).await;
    tracing::info!(export.id = %export_id, documents = done, parts = parts.len(), "export ready");
    Ok(json!({"export_id": export_id, "documents": done, "parts": listed}))
}

/// One archive part being written straight to storage.
struct PartWriter {
    number: u32,
    key: String,
    zip: ZipFileWriter<shomei_vault::EncryptingWriter<object_store::buffered::BufWriter>>,
    documents: u32,
    size: u64,
    manifest: Vec<u8>,
    sums: String,
}

impl PartWriter {
    async fn open(
        storage: &Storage,
        tenant_id: Uuid,
        export_id: Uuid,
        number: u32,
    ) -> Result<Self, JobError> {
        let key = Storage::export_key(tenant_id, export_id, number);
        let mut columns = DOCUMENT_COLUMNS.to_vec();
        columns.push("file");
        Ok(Self {
            number,
            zip: ZipFileWriter::with_tokio(storage.writer(tenant_id, &key).await?),
            key,
            documents: 0,
            size: 0,
            manifest: reports::start(&columns, Encoding::Utf8Bom),
            sums: String::new(),
        })
    }

    async fn add(
        &mut self,
        document: &DocumentRow,
        parties: String,
        bytes: &[u8],
    ) -> Result<(), JobError> {
        let file = format!("documents/{}.pdf", document.id);
        self.entry(&file, bytes).await?;
        let mut record = reports::document_record(document, parties);
        record.push(file.clone());
        self.manifest.extend(reports::rows([record]));
        self.sums
            .push_str(&format!("{}  {file}\n", hex::encode(&document.sha256)));
        self.documents += 1;
        Ok(())
    }

    async fn entry(&mut self, name: &str, bytes: &[u8]) -> Result<(), JobError> {
        // PDFs are compressed already; stored entries keep the bytes as they are.
        // Without Unix permissions unzip would unpack the files unreadable (mode 000).
        let entry = ZipEntryBuilder::new(name.to_owned().into(), Compression::Stored)
            .last_modification_date(async_zip::ZipDateTime::from_chrono(&Utc::now()))
            .unix_permissions(0o644);
        self.zip
            .write_entry_whole(entry, bytes)
            .await
            .map_err(|e| JobError::transient(format!("writing the archive: {e}")))?;
        self.size += bytes.len() as u64 + ENTRY_OVERHEAD;
        Ok(())
    }

    /// Adds the manifest and checksums, finishes the archive and completes the upload.
    async fn close(mut self) -> Result<Part, JobError> {
        let manifest = std::mem::take(&mut self.manifest);
        let sums = std::mem::take(&mut self.sums);
        self.entry("documents.csv", &manifest).await?;
        self.entry("SHA256SUMS", sums.as_bytes()).await?;
        let mut upload = self
            .zip
            .close()
            .await
            .map_err(|e| JobError::transient(format!("finishing the archive: {e}")))?
            .into_inner();
        upload
            .shutdown()
            .await
            .map_err(|e| JobError::transient(format!("storing the archive: {e}")))?;
        Ok(Part {
            part: self.number,
            key: self.key,
            documents: self.documents,
            size_bytes: self.size,
        })
    }
}

/// The signature of a download link for `part` of `export_id`, good until `expires`:
/// base64url (no padding) of HMAC-SHA256 over `export:{id}:{part}:{unix seconds}`.
pub fn link_signature(key: &[u8], export_id: Uuid, part: u32, expires: DateTime<Utc>) -> String {
    let mac = link_mac(key, export_id, part, expires);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

fn link_mac(
    key: &[u8],
    export_id: Uuid,
    part: u32,
    expires: DateTime<Utc>,
) -> hmac::Hmac<sha2::Sha256> {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(format!("export:{export_id}:{part}:{}", expires.timestamp()).as_bytes());
    mac
}

/// Whether `signature` is the link signature for these values (compared in constant time).
pub fn link_signature_ok(
    key: &[u8],
    export_id: Uuid,
    part: u32,
    expires: DateTime<Utc>,
    signature: &str,
) -> bool {
    let Ok(given) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(signature) else {
        return false;
    };
    link_mac(key, export_id, part, expires)
        .verify_slice(&given)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_signature_holds_only_for_its_export_part_and_expiry() {
        let key = b"0123456789abcdef0123456789abcdef";
        let id = Uuid::now_v7();
        let expires = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let sig = link_signature(key, id, 1, expires);
        assert!(link_signature_ok(key, id, 1, expires, &sig));
        assert!(!link_signature_ok(key, id, 2, expires, &sig));
        assert!(!link_signature_ok(key, Uuid::now_v7(), 1, expires, &sig));
        let later = DateTime::from_timestamp(1_800_000_001, 0).unwrap();
        assert!(!link_signature_ok(key, id, 1, later, &sig));
        assert!(!link_signature_ok(
            b"another key, also thirty-two by",
            id,
            1,
            expires,
            &sig
        ));
        assert!(!link_signature_ok(key, id, 1, expires, "not base64!"));
    }
}
