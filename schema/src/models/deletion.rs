//! Deletion: holds that keep a document (R-DEL-3) and the evidence of what was deleted
//! (R-DEL-1).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

use crate::schema::{deletion_log, document_holds, documents, request_signers, signature_requests};

/// One deleted object, as evidence: what it was (its stored bytes' SHA-256 and size), when,
/// why and on whose behalf. Rows are only ever inserted.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = deletion_log)]
pub struct DeletionRecord {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub document_id: Option<Uuid>,
    /// `document_revision`, `export_part`, `object` (anything else under the tenant's prefix)
    /// or `data_key`.
    pub object_kind: String,
    /// The storage key, or the data key's id.
    pub object_id: String,
    pub ciphertext_sha256: Option<Vec<u8>>,
    pub size_bytes: Option<i64>,
    pub reason: String,
    pub actor: String,
    pub job_id: Option<Uuid>,
    pub deleted_at: DateTime<Utc>,
}

impl DeletionRecord {
    /// Records the evidence; a second record of the same object (a job run again) is ignored.
    pub fn insert(&self, conn: &mut PgConnection) -> QueryResult<()> {
        diesel::insert_into(deletion_log::table)
            .values(self)
            .on_conflict_do_nothing()
            .execute(conn)
            .map(|_| ())
    }

    pub fn for_tenant(
        conn: &mut PgConnection,
        tenant_id: Uuid,
    ) -> QueryResult<Vec<DeletionRecord>> {
        deletion_log::table
            .filter(deletion_log::tenant_id.eq(tenant_id))
            .order((deletion_log::deleted_at.asc(), deletion_log::id.asc()))
            .select(DeletionRecord::as_select())
            .load(conn)
    }
}

/// Why a document may not be deleted yet, if anything holds it.
pub fn hold_on(conn: &mut PgConnection, document_id: Uuid) -> QueryResult<Option<String>> {
    let now = Utc::now();
    let holder: Option<String> = document_holds::table
        .filter(document_holds::document_id.eq(document_id))
        .filter(document_holds::released_at.is_null())
        .filter(
            document_holds::until
                .is_null()
                .or(document_holds::until.gt(now)),
        )
        .select(document_holds::holder)
        .first(conn)
        .optional()?;
    if let Some(holder) = holder {
        return Ok(Some(format!("held by {holder}")));
    }
    // A signer can still open (and download) it through a link that has not expired.
    let open_link: i64 = request_signers::table
        .inner_join(signature_requests::table)
        .filter(signature_requests::document_id.eq(document_id))
        .filter(signature_requests::status.eq("in_progress"))
        .filter(request_signers::link_expires_at.gt(now))
        .count()
        .get_result(conn)?;
    Ok((open_link > 0).then(|| "a signer's download window is still open".to_owned()))
}

/// A hold on a document (R-DEL-3): a counterparty's account still holds it, or a legal hold.
pub fn add_hold(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    document_id: Uuid,
    holder: &str,
    reason: Option<&str>,
    until: Option<DateTime<Utc>>,
) -> QueryResult<Uuid> {
    let id = Uuid::now_v7();
    diesel::insert_into(document_holds::table)
        .values((
            document_holds::id.eq(id),
            document_holds::tenant_id.eq(tenant_id),
            document_holds::document_id.eq(document_id),
            document_holds::holder.eq(holder),
            document_holds::reason.eq(reason),
            document_holds::until.eq(until),
        ))
        .execute(conn)?;
    Ok(id)
}

/// The tenant's documents whose files are not deleted yet, a page at a time (keyset on id).
pub fn undeleted_documents(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    after: Option<Uuid>,
    limit: i64,
) -> QueryResult<Vec<Uuid>> {
    let mut query = documents::table
        .filter(documents::tenant_id.eq(tenant_id))
        .filter(documents::deleted_at.is_null())
        .order(documents::id.asc())
        .select(documents::id)
        .limit(limit)
        .into_boxed();
    if let Some(after) = after {
        query = query.filter(documents::id.gt(after));
    }
    query.load(conn)
}

/// Marks a document's files deleted; its record stays.
pub fn mark_document_deleted(
    conn: &mut PgConnection,
    document_id: Uuid,
    reason: &str,
) -> QueryResult<()> {
    diesel::update(
        documents::table
            .find(document_id)
            .filter(documents::deleted_at.is_null()),
    )
    .set((
        documents::deleted_at.eq(diesel::dsl::now),
        documents::deleted_reason.eq(reason),
    ))
    .execute(conn)
    .map(|_| ())
}
