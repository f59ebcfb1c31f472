//! People who log in, their pending logins and their sessions (R-ACC-4).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

use crate::schema::{login_challenges, sessions, users};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = users)]
pub struct User {
    pub id: Uuid,
    pub tenant_id: Uuid,
    /// Sealed.
    pub name: Vec<u8>,
    /// Sealed.
    pub email: Vec<u8>,
    /// Blind index of the address, for log-ins.
    pub email_index: Vec<u8>,
    pub role: String,
    /// Argon2id, PHC string format.
    pub password_hash: String,
    /// Sealed base32 secret.
    pub totp_secret: Option<Vec<u8>>,
    pub totp_enabled: bool,
    pub failed_logins: i32,
    pub locked_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = login_challenges)]
pub struct LoginChallenge {
    pub id: Uuid,
    pub user_id: Uuid,
    pub code_sha256: Option<Vec<u8>>,
    pub code_expires_at: Option<DateTime<Utc>>,
    pub codes_sent: i32,
    pub failures: i32,
    pub expires_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl User {
    /// `false` when the tenant has a user with this address already.
    pub fn insert(&self, conn: &mut PgConnection) -> QueryResult<bool> {
        diesel::insert_into(users::table)
            .values(self)
            .on_conflict_do_nothing()
            .execute(conn)
            .map(|n| n == 1)
    }

    pub fn get(conn: &mut PgConnection, id: Uuid) -> QueryResult<User> {
        users::table.find(id).select(User::as_select()).first(conn)
    }

    /// The tenant's user with this address (by blind index), locked for the transaction.
    pub fn lock_by_email_index(
        conn: &mut PgConnection,
        tenant_id: Uuid,
        email_index: &[u8],
    ) -> QueryResult<Option<User>> {
        users::table
            .filter(users::tenant_id.eq(tenant_id))
            .filter(users::email_index.eq(email_index))
            .for_update()
            .select(User::as_select())
            .first(conn)
            .optional()
    }

    /// A wrong password: counts it and locks the user for `lock_for` at `lock_after` failures.
    pub fn record_failure(
        conn: &mut PgConnection,
        id: Uuid,
        lock_after: i32,
        lock_for: chrono::Duration,
    ) -> QueryResult<User> {
        let user: User = diesel::update(users::table.find(id))
            .set(users::failed_logins.eq(users::failed_logins + 1))
            .returning(User::as_returning())
            .get_result(conn)?;
        if user.failed_logins >= lock_after {
            return diesel::update(users::table.find(id))
                .set((
                    users::locked_until.eq(Utc::now() + lock_for),
                    users::failed_logins.eq(0),
                ))
                .returning(User::as_returning())
                .get_result(conn);
        }
        Ok(user)
    }

    pub fn reset_failures(conn: &mut PgConnection, id: Uuid) -> QueryResult<()> {
        diesel::update(users::table.find(id))
            .set((
                users::failed_logins.eq(0),
                users::locked_until.eq(None::<DateTime<Utc>>),
            ))
            .execute(conn)
            .map(|_| ())
    }

    /// Stores a new (not yet confirmed) TOTP secret; a confirmed one stays until replaced.
    pub fn set_totp(
        conn: &mut PgConnection,
        id: Uuid,
        sealed_secret: &[u8],
        enabled: bool,
    ) -> QueryResult<()> {
        diesel::update(users::table.find(id))
            .set((
                users::totp_secret.eq(sealed_secret),
                users::totp_enabled.eq(enabled),
            ))
            .execute(conn)
            .map(|_| ())
    }
}

impl LoginChallenge {
    pub fn create(
        conn: &mut PgConnection,
        user_id: Uuid,
        expires_at: DateTime<Utc>,
    ) -> QueryResult<LoginChallenge> {
        diesel::insert_into(login_challenges::table)
            .values((
                login_challenges::id.eq(Uuid::now_v7()),
                login_challenges::user_id.eq(user_id),
                login_challenges::expires_at.eq(expires_at),
            ))
            .returning(LoginChallenge::as_returning())
            .get_result(conn)
    }

    pub fn lock(conn: &mut PgConnection, id: Uuid) -> QueryResult<Option<LoginChallenge>> {
        login_challenges::table
            .find(id)
            .for_update()
            .select(LoginChallenge::as_select())
            .first(conn)
            .optional()
    }

    /// Records a fresh e-mailed code (its hash) and counts it.
    pub fn set_code(
        conn: &mut PgConnection,
        id: Uuid,
        code_sha256: &[u8],
        expires_at: DateTime<Utc>,
    ) -> QueryResult<()> {
        diesel::update(login_challenges::table.find(id))
            .set((
                login_challenges::code_sha256.eq(code_sha256),
                login_challenges::code_expires_at.eq(expires_at),
                login_challenges::codes_sent.eq(login_challenges::codes_sent + 1),
            ))
            .execute(conn)
            .map(|_| ())
    }

    pub fn record_failure(conn: &mut PgConnection, id: Uuid) -> QueryResult<()> {
        diesel::update(login_challenges::table.find(id))
            .set(login_challenges::failures.eq(login_challenges::failures + 1))
            .execute(conn)
            .map(|_| ())
    }

    pub fn complete(conn: &mut PgConnection, id: Uuid) -> QueryResult<()> {
        diesel::update(login_challenges::table.find(id))
            .set(login_challenges::completed_at.eq(diesel::dsl::now))
            .execute(conn)
            .map(|_| ())
    }
}

/// Starts a session whose bearer token hashes to `token_sha256`.
pub fn start_session(
    conn: &mut PgConnection,
    user_id: Uuid,
    token_sha256: &[u8],
    expires_at: DateTime<Utc>,
) -> QueryResult<()> {
    diesel::insert_into(sessions::table)
        .values((
            sessions::id.eq(Uuid::now_v7()),
            sessions::user_id.eq(user_id),
            sessions::token_sha256.eq(token_sha256),
            sessions::expires_at.eq(expires_at),
        ))
        .execute(conn)
        .map(|_| ())
}

/// Ends a session (logging out); `false` if it had ended already.
pub fn end_session(conn: &mut PgConnection, token_sha256: &[u8]) -> QueryResult<bool> {
    diesel::update(
        sessions::table
            .filter(sessions::token_sha256.eq(token_sha256))
            .filter(sessions::revoked_at.is_null()),
    )
    .set(sessions::revoked_at.eq(diesel::dsl::now))
    .execute(conn)
    .map(|n| n == 1)
}

/// The user of a live session (and the tenant's IP allow-list), by token hash.
pub fn session_user(
    conn: &mut PgConnection,
    token_sha256: &[u8],
) -> QueryResult<Option<(User, Option<Vec<String>>)>> {
    use crate::schema::tenants;
    sessions::table
        .inner_join(users::table.inner_join(tenants::table))
        .filter(sessions::token_sha256.eq(token_sha256))
        .filter(sessions::revoked_at.is_null())
        .filter(sessions::expires_at.gt(diesel::dsl::now))
        .filter(tenants::deleted_at.is_null())
        .select((User::as_select(), tenants::ip_allowlist))
        .first(conn)
        .optional()
}
