use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

use crate::schema::{document_revisions, documents};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = documents)]
pub struct Document {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub title: Option<String>,
    pub pages: i32,
    pub created_at: DateTime<Utc>,
    /// A path such as `/sales/2026`; `/` is the tenant's root.
    pub folder: String,
    /// Its files were deleted (the record stays, R-DEL-2).
    pub deleted_at: Option<DateTime<Utc>>,
    pub deleted_reason: Option<String>,
}

// `None` sent as NULL (the column's default), not as DEFAULT: one SQL text whatever is set,
// so diesel keeps the statement prepared.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = documents, treat_none_as_default_value = false)]
pub struct NewDocument<'a> {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub title: Option<&'a str>,
    pub pages: i32,
    pub folder: &'a str,
}

/// One stored version of a document's bytes; revision 0 is the upload. Inserted with `None`
/// sent as NULL (the column's default), not as DEFAULT: one SQL text whatever is set, so diesel
/// keeps the statement prepared.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = document_revisions, treat_none_as_default_value = false)]
pub struct Revision {
    pub document_id: Uuid,
    pub revision: i32,
    pub sha256: Vec<u8>,
    pub size_bytes: i64,
    pub storage_key: String,
    pub job_id: Option<Uuid>,
    #[diesel(skip_insertion)]
    pub created_at: DateTime<Utc>,
}

impl Document {
    /// Records an uploaded document and its first revision. Call inside the transaction that
    /// records the upload (with its event): the two rows stand or fall together.
    pub fn create(
        conn: &mut PgConnection,
        document: &NewDocument<'_>,
        first: &Revision,
    ) -> QueryResult<Document> {
        let doc = diesel::insert_into(documents::table)
            .values(document)
            .returning(Document::as_returning())
            .get_result(conn)?;
        first.insert(conn)?;
        Ok(doc)
    }

    /// The tenant's document, if it is in a folder `principal` (an API key or a user) may see;
    /// another tenant's document is simply absent.
    pub fn find(
        conn: &mut PgConnection,
        tenant_id: Uuid,
        principal: Uuid,
        id: Uuid,
    ) -> QueryResult<Option<Document>> {
        // By primary key alone, the tenant and the folder rule checked on the one row (see
        // `Job::find_visible` for the plan a condition on `tenant_id` here can lead to).
        let found = documents::table
            .filter(documents::id.eq(id))
            .select((
                Document::as_select(),
                super::folder_visible(principal, documents::folder),
            ))
            .first(conn)
            .optional()?;
        Ok(found.and_then(|(doc, visible)| (doc.tenant_id == tenant_id && visible).then_some(doc)))
    }

    /// The documents `ids` that exist, each with its tenant's default signature level (a sign
    /// request that names no level takes it) and whether `principal` may see its folder, in
    /// one statement: the look-ups of sign requests arriving together (`shomei_jobs::Intake`).
    /// The caller checks the tenant, as [`Document::find`] does.
    pub fn find_all_with_level(
        conn: &mut PgConnection,
        principal: Uuid,
        ids: &[Uuid],
    ) -> QueryResult<Vec<(Document, String, bool)>> {
        documents::table
            .inner_join(crate::schema::tenants::table)
            .filter(documents::id.eq_any(ids))
            .select((
                Document::as_select(),
                crate::schema::tenants::signature_level,
                super::folder_visible(principal, documents::folder),
            ))
            .load(conn)
    }

    /// The document by id alone, for workers acting on a job or request that already names it.
    pub fn get(conn: &mut PgConnection, id: Uuid) -> QueryResult<Document> {
        documents::table
            .find(id)
            .select(Document::as_select())
            .first(conn)
    }
}

impl Document {
    /// A page of the tenant's documents with their latest revisions, by id after `after`.
    pub fn page_with_latest(
        conn: &mut PgConnection,
        tenant_id: Uuid,
        after: Option<Uuid>,
        limit: i64,
    ) -> QueryResult<Vec<(Document, Revision)>> {
        let mut query = documents::table
            .filter(documents::tenant_id.eq(tenant_id))
            .order(documents::id.asc())
            .limit(limit)
            .select(Document::as_select())
            .into_boxed();
        if let Some(after) = after {
            query = query.filter(documents::id.gt(after));
        }
        query
            .load(conn)?
            .into_iter()
            .map(|doc| Revision::latest(conn, doc.id).map(|latest| (doc, latest)))
            .collect()
    }
}

/// What a verify job found for one document.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = crate::schema::verification_reports)]
pub struct NewVerificationReport {
    pub job_id: Uuid,
    pub document_id: Uuid,
    pub revision: i32,
    pub valid: bool,
    pub level: Option<String>,
    pub report: serde_json::Value,
}

impl NewVerificationReport {
    /// Records the report; a re-run of the same job replaces what it wrote before.
    pub fn upsert(&self, conn: &mut PgConnection) -> QueryResult<()> {
        use crate::schema::verification_reports::dsl::*;
        diesel::insert_into(verification_reports)
            .values(self)
            .on_conflict((job_id, document_id))
            .do_update()
            .set((
                valid.eq(self.valid),
                level.eq(&self.level),
                report.eq(&self.report),
                revision.eq(self.revision),
            ))
            .execute(conn)
            .map(|_| ())
    }
}

impl Revision {
    pub fn latest(conn: &mut PgConnection, document_id: Uuid) -> QueryResult<Revision> {
        document_revisions::table
            .filter(document_revisions::document_id.eq(document_id))
            .order(document_revisions::revision.desc())
            .select(Revision::as_select())
            .first(conn)
    }

    /// Where each of several jobs starts, given as (document, job): the revision the job itself
    /// made, if it got that far before (a re-delivered job reports it instead of adding
    /// another), otherwise its document's latest; `None` for a document without revisions. One
    /// statement for all of them (their documents' revisions: a few rows each); tell the two
    /// cases apart by the revision's `job_id`.
    pub fn start_for_jobs(
        conn: &mut PgConnection,
        wanted: &[(Uuid, Uuid)],
    ) -> QueryResult<Vec<Option<Revision>>> {
        let documents: Vec<Uuid> = wanted.iter().map(|(document, _)| *document).collect();
        let revisions: Vec<Revision> = document_revisions::table
            .filter(document_revisions::document_id.eq_any(&documents))
            .select(Revision::as_select())
            .load(conn)?;
        Ok(wanted
            .iter()
            .map(|(document, job)| {
                let of_document = || revisions.iter().filter(|r| r.document_id == *document);
                of_document()
                    .find(|r| r.job_id == Some(*job))
                    .or_else(|| of_document().max_by_key(|r| r.revision))
                    .cloned()
            })
            .collect())
    }

    pub fn insert(&self, conn: &mut PgConnection) -> QueryResult<()> {
        diesel::insert_into(document_revisions::table)
            .values(self)
            .execute(conn)
            .map(|_| ())
    }

    /// Inserts `revisions` in one statement (the revisions a group commit records together),
    /// whatever their number: the rows go as one array per column, so the statement's text,
    /// and its plan, stay the same.
    pub fn insert_all(conn: &mut PgConnection, revisions: &[&Revision]) -> QueryResult<()> {
        use crate::prepared::{Prepare, ReturnedId};
        use diesel::sql_types::{Array, Binary, Int4, Int8, Nullable, Text, Uuid as SqlUuid};
        if revisions.is_empty() {
            return Ok(());
        }
        diesel::sql_query(
            "INSERT INTO document_revisions (document_id, revision, sha256, size_bytes, storage_key, job_id)
             SELECT * FROM unnest($1::uuid[], $2::int4[], $3::bytea[], $4::int8[], $5::text[], $6::uuid[])
             RETURNING document_id AS id",
        )
        .bind::<Array<SqlUuid>, _>(revisions.iter().map(|r| r.document_id).collect::<Vec<_>>())
        .bind::<Array<Int4>, _>(revisions.iter().map(|r| r.revision).collect::<Vec<_>>())
        .bind::<Array<Binary>, _>(revisions.iter().map(|r| r.sha256.as_slice()).collect::<Vec<_>>())
        .bind::<Array<Int8>, _>(revisions.iter().map(|r| r.size_bytes).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(revisions.iter().map(|r| r.storage_key.as_str()).collect::<Vec<_>>())
        .bind::<Array<Nullable<SqlUuid>>, _>(revisions.iter().map(|r| r.job_id).collect::<Vec<_>>())
        .prepared()
        .load::<ReturnedId>(conn)
        .map(|_| ())
    }
}

/// A folder path as callers may write it, normalised: `/` and `/`-separated names, none empty,
/// `.` or `..`, no control characters, at most 255 characters; a trailing `/` is dropped.
pub fn normalise_folder(path: &str) -> Result<String, String> {
    let trimmed = path.trim();
    if !trimmed.starts_with('/') {
        return Err(format!("folder {path:?} must start with /"));
    }
    if trimmed.chars().count() > 255 || trimmed.chars().any(char::is_control) {
        return Err("folder must be at most 255 characters, without control characters".into());
    }
    let names: Vec<&str> = trimmed.trim_end_matches('/').split('/').skip(1).collect();
    if names
        .iter()
        .any(|n| n.is_empty() || *n == "." || *n == "..")
    {
        return Err(format!("folder {path:?} has an empty, . or .. name"));
    }
    Ok(format!("/{}", names.join("/")))
}

#[cfg(test)]
mod tests {
    use super::normalise_folder;

    #[test]
    fn folders_are_normalised_or_refused() {
        assert_eq!(normalise_folder("/").unwrap(), "/");
        assert_eq!(normalise_folder("/営業/2026/").unwrap(), "/営業/2026");
        for bad in ["sales", "/a//b", "/a/../b", "/./a", "/a\nb"] {
            assert!(normalise_folder(bad).is_err(), "{bad:?}");
        }
    }
}
