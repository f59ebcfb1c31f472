//! The tenant's documents as lists and reports show them: each with its latest revision, its
//! status, its parties and its dates, selected by a [`DocumentFilter`]. Used by the contract
//! details CSV and by bulk exports, page by page (keyset on the id, a UUIDv7, so in upload
//! order), so neither ever holds the whole list.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{
    Array, BigInt, Bool, Int4, Int8, Nullable, Text, Timestamptz, Uuid as SqlUuid,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Which documents; every field narrows the selection, none selects all.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DocumentFilter {
    /// Exactly these documents (every one must belong to the tenant; callers check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<Uuid>>,
    /// `uploaded`, `signed`, `in_progress`, `completed`, `declined` or `cancelled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Last signed at or after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_from: Option<DateTime<Utc>>,
    /// Last signed before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_to: Option<DateTime<Utc>>,
    /// Case-insensitive part of the title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title_contains: Option<String>,
    /// This folder and its subfolders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder: Option<String>,
}

pub const STATUSES: [&str; 6] = [
    "uploaded",
    "signed",
    "in_progress",
    "completed",
    "declined",
    "cancelled",
];

/// One document as reports show it.
#[derive(Debug, Clone, QueryableByName)]
pub struct DocumentRow {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = Nullable<Text>)]
    pub title: Option<String>,
    #[diesel(sql_type = Text)]
    pub folder: String,
    #[diesel(sql_type = Int4)]
    pub pages: i32,
    #[diesel(sql_type = Text)]
    pub status: String,
    /// Everyone who signed it, in signing order: the sealed personal parts of the sign jobs'
    /// payloads (`shomei_jobs::reports::parties` opens them).
    #[diesel(sql_type = Nullable<diesel::sql_types::Array<Text>>)]
    pub parties: Option<Vec<String>>,
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub signed_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Int4)]
    pub revision: i32,
    #[diesel(sql_type = diesel::sql_types::Bytea)]
    pub sha256: Vec<u8>,
    #[diesel(sql_type = Int8)]
    pub size_bytes: i64,
    #[diesel(sql_type = Text)]
    pub storage_key: String,
}

/// The status of a document: its latest signature request's, else whether it was concluded
/// (a document time-stamp) or signed at all.
const SELECT: &str = r"
SELECT * FROM (
    SELECT d.id, d.title, d.folder, d.pages, d.created_at,
           r.revision, r.sha256, r.size_bytes, r.storage_key,
           (SELECT max(s.created_at) FROM document_revisions s
             WHERE s.document_id = d.id AND s.revision > 0) AS signed_at,
           (SELECT array_agg(j.payload ->> 'personal' ORDER BY j.finished_at)
              FROM jobs j
             WHERE j.document_id = d.id AND j.kind = 'sign' AND j.status = 'succeeded') AS parties,
           CASE
             WHEN q.status = 'completed' OR EXISTS (
                  SELECT 1 FROM jobs t WHERE t.document_id = d.id
                     AND t.kind = 'timestamp' AND t.status = 'succeeded') THEN 'completed'
             WHEN q.status IS NOT NULL THEN q.status
             WHEN r.revision > 0 THEN 'signed'
             ELSE 'uploaded'
           END AS status
      FROM documents d
      JOIN LATERAL (SELECT * FROM document_revisions x WHERE x.document_id = d.id
                     ORDER BY x.revision DESC LIMIT 1) r ON true
      LEFT JOIN LATERAL (SELECT sr.status FROM signature_requests sr WHERE sr.document_id = d.id
                          ORDER BY sr.created_at DESC LIMIT 1) q ON true
     WHERE d.tenant_id = $1
       AND ($2::uuid[] IS NULL OR d.id = ANY($2))
       AND ($3::uuid IS NULL OR d.id > $3)
       AND ($4::text IS NULL OR d.title ILIKE '%' || $4 || '%' ESCAPE '\')
       AND ($10::text IS NULL OR d.folder = $10 OR d.folder LIKE $9 || '/%' ESCAPE '\')
       AND ($11::uuid IS NULL OR folder_visible($11, d.folder))
) listed
WHERE ($5::text IS NULL OR status = $5)
  AND ($6::timestamptz IS NULL OR signed_at >= $6)
  AND ($7::timestamptz IS NULL OR signed_at < $7)
  AND (NOT $8 OR signed_at IS NOT NULL)";

/// `title_contains` as an ILIKE pattern part: `%`, `_` and `\` match themselves.
fn like_escaped(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

impl DocumentFilter {
    /// `sql` (which uses the listing's parameters $1 to $11) with the filter bound. `principal`
    /// (an API key or a user) limits the selection to the folders its groups allow.
    fn bound(
        &self,
        sql: String,
        tenant_id: Uuid,
        principal: Option<Uuid>,
        signed_only: bool,
        after: Option<Uuid>,
    ) -> diesel::query_builder::BoxedSqlQuery<
        'static,
        diesel::pg::Pg,
        diesel::query_builder::SqlQuery,
    > {
        let folder = self.folder_scope();
        diesel::sql_query(sql)
            .into_boxed()
            .bind::<SqlUuid, _>(tenant_id)
            .bind::<Nullable<Array<SqlUuid>>, _>(self.ids.clone())
            .bind::<Nullable<SqlUuid>, _>(after)
            .bind::<Nullable<Text>, _>(self.title_contains.as_deref().map(like_escaped))
            .bind::<Nullable<Text>, _>(self.status.clone())
            .bind::<Nullable<Timestamptz>, _>(self.signed_from)
            .bind::<Nullable<Timestamptz>, _>(self.signed_to)
            .bind::<Bool, _>(signed_only)
            .bind::<Nullable<Text>, _>(folder.as_deref().map(like_escaped))
            .bind::<Nullable<Text>, _>(folder)
            .bind::<Nullable<SqlUuid>, _>(principal)
    }

    /// Up to `limit` matching documents after `after`, by id. `signed_only` keeps documents
    /// with at least one signature (what an export archives).
    pub fn page(
        &self,
        conn: &mut PgConnection,
        tenant_id: Uuid,
        principal: Option<Uuid>,
        signed_only: bool,
        after: Option<Uuid>,
        limit: i64,
    ) -> QueryResult<Vec<DocumentRow>> {
        self.bound(
            format!("{SELECT} ORDER BY id LIMIT $12"),
            tenant_id,
            principal,
            signed_only,
            after,
        )
        .bind::<BigInt, _>(limit)
        .load(conn)
    }

    /// How many documents match.
    pub fn count(
        &self,
        conn: &mut PgConnection,
        tenant_id: Uuid,
        principal: Option<Uuid>,
        signed_only: bool,
    ) -> QueryResult<i64> {
        #[derive(QueryableByName)]
        struct Count {
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        self.bound(
            format!("SELECT count(*) AS n FROM ({SELECT}) counted"),
            tenant_id,
            principal,
            signed_only,
            None,
        )
        .get_result::<Count>(conn)
        .map(|c| c.n)
    }

    /// Of `ids`, those that are not the tenant's documents, or not in a folder `principal` may
    /// see (to refuse a list naming them).
    pub fn foreign_ids(
        conn: &mut PgConnection,
        tenant_id: Uuid,
        principal: Uuid,
        ids: &[Uuid],
    ) -> QueryResult<Vec<Uuid>> {
        use crate::schema::documents;
        let own: std::collections::HashSet<Uuid> = documents::table
            .filter(documents::tenant_id.eq(tenant_id))
            .filter(documents::id.eq_any(ids))
            .filter(super::folder_visible(principal, documents::folder))
            .select(documents::id)
            .load::<Uuid>(conn)?
            .into_iter()
            .collect();
        Ok(ids.iter().filter(|id| !own.contains(id)).copied().collect())
    }

    /// The folder to select, normalised; `None` for the root (everything).
    fn folder_scope(&self) -> Option<String> {
        self.folder
            .as_deref()
            .and_then(|f| super::normalise_folder(f).ok())
            .filter(|f| f != "/")
    }

    /// What is wrong with the filter, for a 400 naming the field.
    pub fn check(&self) -> Result<(), String> {
        if let Some(folder) = &self.folder {
            super::normalise_folder(folder)?;
        }
        if let Some(status) = &self.status {
            if !STATUSES.contains(&status.as_str()) {
                return Err(format!(
                    "status {status:?} is not one of {}",
                    STATUSES.join(", ")
                ));
            }
        }
        if let (Some(from), Some(to)) = (self.signed_from, self.signed_to) {
            if to <= from {
                return Err("signed_to must be after signed_from".into());
            }
        }
        if self
            .ids
            .as_ref()
            .is_some_and(|ids| ids.is_empty() || ids.len() > 10_000)
        {
            return Err("ids must list 1 to 10000 document ids".into());
        }
        if self
            .title_contains
            .as_ref()
            .is_some_and(|t| t.is_empty() || t.chars().count() > 200)
        {
            return Err("title_contains must be 1 to 200 characters".into());
        }
        Ok(())
    }
}
