use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

use crate::schema::{request_signers, signature_requests, signer_identities};

/// A signature request: a document going round its signers in order.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = signature_requests)]
pub struct SignatureRequest {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub document_id: Uuid,
    /// `in_progress`, `completed`, `declined` or `cancelled`.
    pub status: String,
    /// Sealed (`shomei-vault`, the tenant's records key), like every personal field.
    pub owner_name: Vec<u8>,
    pub owner_email: Vec<u8>,
    pub locale: String,
    pub message: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// One signer of a request.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = request_signers)]
pub struct RequestSigner {
    pub id: Uuid,
    pub request_id: Uuid,
    pub position: i32,
    /// Sealed.
    pub name: Vec<u8>,
    /// Sealed.
    pub email: Vec<u8>,
    pub locale: String,
    /// `witness` or `certified`.
    pub method: String,
    pub identity_id: Option<Uuid>,
    pub access_code_hash: Option<String>,
    /// `waiting`, `invited`, `signing`, `signed`, `declined` or `cancelled`.
    pub status: String,
    pub link_sha256: Option<Vec<u8>>,
    pub link_expires_at: Option<DateTime<Utc>>,
    pub otp_sha256: Option<Vec<u8>>,
    pub otp_expires_at: Option<DateTime<Utc>>,
    pub otp_failures: i32,
    pub codes_sent: i32,
    pub sign_job_id: Option<Uuid>,
    pub signed_ip: Option<String>,
    pub signed_at: Option<DateTime<Utc>>,
    pub decline_reason: Option<String>,
}

/// A certified signer: a person with an own key and certificate in the HSM.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = signer_identities)]
pub struct SignerIdentity {
    pub id: Uuid,
    pub tenant_id: Uuid,
    /// Sealed.
    pub name: Vec<u8>,
    /// Sealed.
    pub email: Vec<u8>,
    /// Blind index of the address (`DataKey::blind_index`), for look-ups.
    pub email_index: Vec<u8>,
    pub key_label: String,
    /// Argon2id, PHC string format.
    pub pin_hash: String,
    pub pin_failures: i32,
    pub locked_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl SignatureRequest {
    pub fn find(
        conn: &mut PgConnection,
        tenant_id: Uuid,
        id: Uuid,
    ) -> QueryResult<Option<SignatureRequest>> {
        signature_requests::table
            .filter(signature_requests::id.eq(id))
            .filter(signature_requests::tenant_id.eq(tenant_id))
            .select(SignatureRequest::as_select())
            .first(conn)
            .optional()
    }

    /// The request, locked for the rest of the transaction (state changes go one at a time).
    pub fn lock(conn: &mut PgConnection, id: Uuid) -> QueryResult<SignatureRequest> {
        signature_requests::table
            .find(id)
            .for_update()
            .select(SignatureRequest::as_select())
            .first(conn)
    }

    pub fn signers(&self, conn: &mut PgConnection) -> QueryResult<Vec<RequestSigner>> {
        request_signers::table
            .filter(request_signers::request_id.eq(self.id))
            .order(request_signers::position.asc())
            .select(RequestSigner::as_select())
            .load(conn)
    }

    pub fn finish(&mut self, conn: &mut PgConnection, status: &str) -> QueryResult<()> {
        diesel::update(signature_requests::table.find(self.id))
            .set((
                signature_requests::status.eq(status),
                signature_requests::finished_at.eq(diesel::dsl::now),
            ))
            .execute(conn)?;
        status.clone_into(&mut self.status);
        Ok(())
    }
}

impl RequestSigner {
    pub fn get(conn: &mut PgConnection, id: Uuid) -> QueryResult<RequestSigner> {
        request_signers::table
            .find(id)
            .select(RequestSigner::as_select())
            .first(conn)
    }

    /// The signer whose link token hashes to `sha256`.
    pub fn by_link(conn: &mut PgConnection, sha256: &[u8]) -> QueryResult<Option<RequestSigner>> {
        request_signers::table
            .filter(request_signers::link_sha256.eq(sha256))
            .select(RequestSigner::as_select())
            .first(conn)
            .optional()
    }

    /// Writes every mutable field back (the row is locked through its request).
    pub fn save(&self, conn: &mut PgConnection) -> QueryResult<()> {
        diesel::update(request_signers::table.find(self.id))
            .set((
                request_signers::status.eq(&self.status),
                request_signers::link_sha256.eq(&self.link_sha256),
                request_signers::link_expires_at.eq(self.link_expires_at),
                request_signers::otp_sha256.eq(&self.otp_sha256),
                request_signers::otp_expires_at.eq(self.otp_expires_at),
                request_signers::otp_failures.eq(self.otp_failures),
                request_signers::codes_sent.eq(self.codes_sent),
                request_signers::sign_job_id.eq(self.sign_job_id),
                request_signers::signed_ip.eq(&self.signed_ip),
                request_signers::signed_at.eq(self.signed_at),
                request_signers::decline_reason.eq(&self.decline_reason),
            ))
            .execute(conn)
            .map(|_| ())
    }
}

impl SignerIdentity {
    /// The identity whose address has this blind index.
    pub fn find_by_email_index(
        conn: &mut PgConnection,
        tenant_id: Uuid,
        email_index: &[u8],
    ) -> QueryResult<Option<SignerIdentity>> {
        signer_identities::table
            .filter(signer_identities::tenant_id.eq(tenant_id))
            .filter(signer_identities::email_index.eq(email_index))
            .select(SignerIdentity::as_select())
            .first(conn)
            .optional()
    }

    pub fn get(conn: &mut PgConnection, id: Uuid) -> QueryResult<SignerIdentity> {
        signer_identities::table
            .find(id)
            .select(SignerIdentity::as_select())
            .first(conn)
    }

    /// Counts a wrong PIN (or access code) and locks the identity at `lock_after` failures.
    /// Returns the identity as it is now.
    pub fn record_failure(
        conn: &mut PgConnection,
        id: Uuid,
        lock_after: i32,
    ) -> QueryResult<SignerIdentity> {
        let identity: SignerIdentity = diesel::update(signer_identities::table.find(id))
            .set(signer_identities::pin_failures.eq(signer_identities::pin_failures + 1))
            .returning(SignerIdentity::as_returning())
            .get_result(conn)?;
        if identity.pin_failures >= lock_after && identity.locked_at.is_none() {
            return diesel::update(signer_identities::table.find(id))
                .set(signer_identities::locked_at.eq(diesel::dsl::now))
                .returning(SignerIdentity::as_returning())
                .get_result(conn);
        }
        Ok(identity)
    }

    pub fn reset_failures(conn: &mut PgConnection, id: Uuid) -> QueryResult<()> {
        diesel::update(signer_identities::table.find(id))
            .set(signer_identities::pin_failures.eq(0))
            .execute(conn)
            .map(|_| ())
    }
}
