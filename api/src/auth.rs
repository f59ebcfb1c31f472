//! API keys: how they are made, stored (SHA-256 only) and checked on every request.
//!
//! A key is 32 random bytes, so a fast hash is enough to make a stolen database useless for
//! calling the API; the key itself is shown once, when it is created, and never stored or logged.

use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;
use warp::Filter;

use std::net::IpAddr;
use std::sync::Arc;

use shomei_schema::{interact, ApiKey, DbError};
use shomei_telemetry::metrics::KEY_LOOKUPS;

use crate::client::{admitted, client_addr};
use crate::AppState;

use crate::problem::ApiError;

const KEY_PREFIX: &str = "shk_";
/// Session tokens of people who logged in (`POST /v1/auth/challenges/{id}/verify`).
pub const SESSION_PREFIX: &str = "shs_";

/// Who is calling: every handler receives this and scopes every query by `tenant_id`.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub tenant_id: Uuid,
    /// The API key's id, or the logged-in user's.
    pub principal_id: Uuid,
    pub kind: CallerKind,
    pub role: Role,
}

/// What authenticated the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerKind {
    ApiKey,
    /// A person, through a session from `POST /v1/auth/challenges/{id}/verify`.
    User,
}

/// A caller's role: what it may do ([`Role::allows`]). The matrix is the one in `README.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[clap(rename_all = "snake_case")]
pub enum Role {
    /// Everything, cancelling the contract included.
    Owner,
    /// Everything but cancelling the contract.
    Admin,
    /// Documents: upload, sign, send, delete and hold, export, bulk verification.
    DocumentManager,
    /// Uploads documents and sends them round signers.
    Sender,
    /// Uploads, signs and sends.
    Member,
    /// Reads documents and their state.
    Viewer,
    /// Reads documents and every log: the operation log, the deletion log, statements, keys.
    Auditor,
}

/// Something a route does; every route names the one it needs (`authorized`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Documents, requests, jobs, batches, verification reports, contract details.
    ReadDocuments,
    Upload,
    /// Signatures with the service's key, conclusions, batches.
    Sign,
    /// Signature requests: send and cancel.
    SendRequests,
    /// Delete documents, put holds on them, verify all of them.
    ManageDocuments,
    /// Bulk downloads.
    Export,
    /// The operation log, the deletion log, statements, the accounts list.
    ReadAuditLog,
    /// Webhook endpoints and certified signers.
    ManageIntegrations,
    /// User groups, IP allow-lists, people who log in.
    ManageAccess,
    /// The dead letters (jobs failed for good): list them, retry one.
    ManageJobs,
    CancelContract,
}

impl Permission {
    pub const ALL: [Permission; 11] = [
        Permission::ReadDocuments,
        Permission::Upload,
        Permission::Sign,
        Permission::SendRequests,
        Permission::ManageDocuments,
        Permission::Export,
        Permission::ReadAuditLog,
        Permission::ManageIntegrations,
        Permission::ManageAccess,
        Permission::ManageJobs,
        Permission::CancelContract,
    ];

    /// What it is, for a `403`'s detail.
    pub const fn describe(self) -> &'static str {
        match self {
            Permission::ReadDocuments => "read documents",
            Permission::Upload => "upload documents",
            Permission::Sign => "sign documents",
            Permission::SendRequests => "send signature requests",
            Permission::ManageDocuments => "delete, hold or bulk-verify documents",
            Permission::Export => "export documents",
            Permission::ReadAuditLog => "read the logs, statements and accounts",
            Permission::ManageIntegrations => "manage webhooks and certified signers",
            Permission::ManageAccess => "manage groups, IP allow-lists and users",
            Permission::ManageJobs => "list or retry failed jobs",
            Permission::CancelContract => "cancel the contract",
        }
    }
}

impl Role {
    pub const ALL: [Role; 7] = [
        Role::Owner,
        Role::Admin,
        Role::DocumentManager,
        Role::Sender,
        Role::Member,
        Role::Viewer,
        Role::Auditor,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::DocumentManager => "document_manager",
            Role::Sender => "sender",
            Role::Member => "member",
            Role::Viewer => "viewer",
            Role::Auditor => "auditor",
        }
    }

    pub fn parse(s: &str) -> Role {
        // An unknown role (written by a newer release) gets the least.
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .unwrap_or(Role::Viewer)
    }

    /// The permission matrix: the one place that says who may do what.
    pub const fn allows(self, permission: Permission) -> bool {
        use Permission as P;
        use Role as R;
        match permission {
            P::ReadDocuments => true,
            P::Upload | P::SendRequests => {
                matches!(
                    self,
                    R::Owner | R::Admin | R::DocumentManager | R::Sender | R::Member
                )
            }
            P::Sign => matches!(self, R::Owner | R::Admin | R::DocumentManager | R::Member),
            P::ManageDocuments | P::Export => {
                matches!(self, R::Owner | R::Admin | R::DocumentManager)
            }
            P::ReadAuditLog => matches!(self, R::Owner | R::Admin | R::Auditor),
            P::ManageIntegrations | P::ManageAccess | P::ManageJobs => {
                matches!(self, R::Owner | R::Admin)
            }
            P::CancelContract => matches!(self, R::Owner),
        }
    }
}

impl Caller {
    fn new(tenant_id: Uuid, principal_id: Uuid, kind: CallerKind, role: &str) -> Self {
        Self {
            tenant_id,
            principal_id,
            kind,
            role: Role::parse(role),
        }
    }

    /// `Ok` when the caller's role allows `permission`; a 403 problem naming the role and the
    /// roles that may otherwise.
    pub fn require(&self, permission: Permission) -> Result<(), ApiError> {
        if self.role.allows(permission) {
            return Ok(());
        }
        let allowed: Vec<&str> = Role::ALL
            .into_iter()
            .filter(|r| r.allows(permission))
            .map(Role::as_str)
            .collect();
        Err(ApiError::Forbidden(format!(
            "a {} may not {}; {} may",
            self.role.as_str(),
            permission.describe(),
            allowed.join(", ")
        )))
    }

    /// Whose group memberships limit the folders this caller sees (the key; a user's id for
    /// people who log in).
    pub fn principal(&self) -> Uuid {
        self.principal_id
    }

    /// How the audit trail names this caller.
    pub fn actor(&self) -> String {
        match self.kind {
            CallerKind::ApiKey => format!("api_key:{}", self.principal_id),
            CallerKind::User => format!("user:{}", self.principal_id),
        }
    }
}

/// A fresh API key: the secret to hand to the user once, and what is stored.
pub struct NewKey {
    pub secret: String,
    pub prefix: String,
    pub sha256: [u8; 32],
}

pub fn generate_key() -> NewKey {
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let secret = format!("{KEY_PREFIX}{}", hex::encode(raw));
    NewKey {
        prefix: secret[..KEY_PREFIX.len() + 8].to_owned(),
        sha256: Sha256::digest(secret.as_bytes()).into(),
        secret,
    }
}

/// The one gate of every route with tenant data: resolves `Authorization: Bearer <key>` to a
/// [`Caller`] (401 without a valid key), admits the client's address by the tenant's IP
/// allow-list (403), holds the key to its rate (429) and checks that its role allows
/// `permission` (403).
pub fn authorized(
    state: Arc<AppState>,
    permission: Permission,
) -> impl Filter<Extract = (Caller,), Error = warp::Rejection> + Clone {
    client_addr(state.gate.clone())
        .and(warp::header::optional::<String>("authorization"))
        .and_then(move |ip: Option<IpAddr>, header: Option<String>| {
            let state = state.clone();
            async move {
                check(&state, permission, ip, header)
                    .await
                    .map_err(warp::reject::custom)
            }
        })
}

async fn check(
    state: &AppState,
    permission: Permission,
    ip: Option<IpAddr>,
    header: Option<String>,
) -> Result<Caller, ApiError> {
    let token = header
        .as_deref()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or(ApiError::Unauthorized)?;
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let (caller, allowlist) = if token.starts_with(KEY_PREFIX) {
        let (key, allowlist) = match state.key_cache.get(&digest) {
            Some(found) => {
                KEY_LOOKUPS.with_label_values(&["cache"]).inc();
                found
            }
            None => {
                KEY_LOOKUPS.with_label_values(&["database"]).inc();
                let epoch = state.key_cache.epoch();
                let found = interact(&state.db, move |conn| {
                    ApiKey::find_by_hash(conn, &digest).map_err(DbError::from)
                })
                .await?
                .ok_or(ApiError::Unauthorized)?;
                state.key_cache.put(digest, found.clone(), epoch);
                found
            }
        };
        let caller = Caller::new(key.tenant_id, key.id, CallerKind::ApiKey, &key.role);
        (caller, allowlist)
    } else if token.starts_with(SESSION_PREFIX) {
        let (user, allowlist) = interact(&state.db, move |conn| {
            shomei_schema::models::user::session_user(conn, &digest).map_err(DbError::from)
        })
        .await?
        .ok_or(ApiError::Unauthorized)?;
        let caller = Caller::new(user.tenant_id, user.id, CallerKind::User, &user.role);
        (caller, allowlist)
    } else {
        return Err(ApiError::Unauthorized);
    };
    if !admitted(allowlist.as_deref(), ip) {
        let from = ip.map_or("an unknown address".to_owned(), |ip| ip.to_string());
        return Err(ApiError::Forbidden(format!(
            "requests from {from} are outside the tenant's IP allow-list"
        )));
    }
    state.gate.check_key(caller.principal_id)?;
    caller.require(permission)?;
    Ok(caller)
}
