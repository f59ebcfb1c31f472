//! API keys: how they are made, stored (SHA-256 only) and checked on every request.
//!
//! A key is 32 random bytes, so a fast hash is enough to make a stolen database useless for
//! calling the API; the key itself is shown once, when it is created, and never stored or logged.

use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;
use warp::Filter;

use shomei_schema::{interact, ApiKey, DbError, DbPool};

use crate::problem::ApiError;

const KEY_PREFIX: &str = "shk_";

/// Who is calling: every handler receives this and scopes every query by `tenant_id`.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub tenant_id: Uuid,
    pub key_id: Uuid,
    pub role: Role,
}

/// What a key may do. `owner` and `admin` everything; `member` works with documents and
/// requests; `viewer` only reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    Owner,
    Admin,
    Member,
    Viewer,
}

impl Role {
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
            Role::Viewer => "viewer",
        }
    }

    fn parse(s: &str) -> Role {
        match s {
            "owner" => Role::Owner,
            "admin" => Role::Admin,
            "member" => Role::Member,
            // An unknown role (written by a newer release) gets the least.
            _ => Role::Viewer,
        }
    }

    /// Bulk exports, operation logs, statements and the accounts list.
    pub fn may_export(self) -> bool {
        matches!(self, Role::Owner | Role::Admin)
    }
}

impl Caller {
    /// `Ok` when the caller's role may export; a 403 problem naming the role otherwise.
    pub fn require_export(&self) -> Result<(), ApiError> {
        if self.role.may_export() {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "a {} key may not export; an owner or admin key may",
                self.role.as_str()
            )))
        }
    }

    /// `Ok` for an owner key; a 403 problem saying who may `what` otherwise.
    pub fn require_owner(&self, what: &str) -> Result<(), ApiError> {
        if self.role == Role::Owner {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "a {} key may not {what}; an owner key may",
                self.role.as_str()
            )))
        }
    }

    /// How the audit trail names this caller.
    pub fn actor(&self) -> String {
        format!("api_key:{}", self.key_id)
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

/// Resolves `Authorization: Bearer <key>` to a [`Caller`], or rejects with 401.
pub fn caller(db: DbPool) -> impl Filter<Extract = (Caller,), Error = warp::Rejection> + Clone {
    warp::header::optional::<String>("authorization").and_then(move |header: Option<String>| {
        let db = db.clone();
        async move {
            let key = header
                .as_deref()
                .and_then(|h| h.strip_prefix("Bearer "))
                .map(str::trim)
                .filter(|k| k.starts_with(KEY_PREFIX))
                .ok_or_else(|| warp::reject::custom(ApiError::Unauthorized))?;
            let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
            let found = interact(&db, move |conn| {
                ApiKey::find_by_hash(conn, &digest).map_err(DbError::from)
            })
            .await
            .map_err(|e| warp::reject::custom(ApiError::from(e)))?;
            found
                .map(|k| Caller {
                    tenant_id: k.tenant_id,
                    key_id: k.id,
                    role: Role::parse(&k.role),
                })
                .ok_or_else(|| warp::reject::custom(ApiError::Unauthorized))
        }
    })
}
