//! People who log in (R-ACC-4): tenant administrators and staff with a password and a second
//! factor, who then call the API with a session token instead of an API key.
//!
//! 1. `POST /v1/auth/login {tenant_id, email, password}`: the password (Argon2id) opens a login
//!    challenge, never a session. Five wrong passwords lock the user for 15 minutes (`423`).
//! 2. The second factor: a TOTP code (RFC 6238, once enrolled), or a 6-digit code e-mailed for
//!    this login (`POST /v1/auth/challenges/{id}/email`; SHA-256 stored, 10 minutes).
//! 3. `POST /v1/auth/challenges/{id}/verify {method, code}`: five wrong codes end the login;
//!    a right one answers a session token (`shs_…`, 12 hours, stored as SHA-256).
//!
//! Users are made by owner and admin callers (`POST /v1/users`); a user enrols TOTP with its
//! own session (`POST /v1/auth/totp`, then `/confirm` with a code from the new secret).

use std::sync::Arc;

use chrono::{Duration, Utc};
use diesel::Connection;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};
use warp::{Filter, Rejection};

use shomei_jobs::notify_email::LoginCodeJob;
use shomei_jobs::personal;
use shomei_jobs::requests::{code_hash, hash_secret, verify_secret};
use shomei_jobs::Pending;
use shomei_schema::models::user::{start_session, LoginChallenge, User};
use shomei_schema::{interact, Job, JobKind, NewJob, Tenant};

use super::{created, json_body, respond, with_state};
use crate::auth::{authorized, Caller, CallerKind, Permission, Role, SESSION_PREFIX};
use crate::problem::ApiError;
use crate::AppState;

/// Wrong passwords before a user is locked, and for how long.
const PASSWORD_ATTEMPTS: i32 = 5;
const LOCKED_FOR_MINUTES: i64 = 15;
/// How long a login waits for its second factor, and wrong codes it takes.
const CHALLENGE_MINUTES: i64 = 10;
const CODE_ATTEMPTS: i32 = 5;
const SESSION_HOURS: i64 = 12;

pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let login = warp::path!("v1" / "auth" / "login")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(json_body(16 * 1024))
        .then(login)
        .map(respond);
    let email = warp::path!("v1" / "auth" / "challenges" / Uuid / "email")
        .and(warp::post())
        .and(with_state(state.clone()))
        .then(email_code)
        .map(respond);
    let verify = warp::path!("v1" / "auth" / "challenges" / Uuid / "verify")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(json_body(16 * 1024))
        .then(verify)
        .map(respond);
    let enrol = warp::path!("v1" / "auth" / "totp")
        .and(warp::post())
        .and(authorized(state.clone(), Permission::ReadDocuments))
        .and(with_state(state.clone()))
        .then(enrol_totp)
        .map(respond);
    let confirm = warp::path!("v1" / "auth" / "totp" / "confirm")
        .and(warp::post())
        .and(authorized(state.clone(), Permission::ReadDocuments))
        .and(with_state(state.clone()))
        .and(json_body(16 * 1024))
        .then(confirm_totp)
        .map(respond);
    let logout = warp::path!("v1" / "auth" / "logout")
        .and(warp::post())
        .and(authorized(state.clone(), Permission::ReadDocuments))
        .and(with_state(state.clone()))
        .and(warp::header::<String>("authorization"))
        .then(logout)
        .map(respond);
    let create_user = warp::path!("v1" / "users")
        .and(warp::post())
        .and(authorized(state.clone(), Permission::ManageAccess))
        .and(with_state(state))
        .and(json_body(16 * 1024))
        .then(create_user)
        .map(respond);
    login
        .or(email)
        .unify()
        .or(verify)
        .unify()
        .or(enrol)
        .unify()
        .or(confirm)
        .unify()
        .or(logout)
        .unify()
        .or(create_user)
        .unify()
}

/// At least 8 characters (at most 128) of at least two kinds: lower case, upper case, letters
/// without case (kana, kanji), digits, anything else.
pub fn check_password(password: &str) -> Result<(), String> {
    let n = password.chars().count();
    if !(8..=128).contains(&n) {
        return Err("password must be 8 to 128 characters".into());
    }
    let kinds = [
        password.chars().any(|c| c.is_lowercase()),
        password.chars().any(|c| c.is_uppercase()),
        password
            .chars()
            .any(|c| c.is_alphabetic() && !c.is_lowercase() && !c.is_uppercase()),
        password.chars().any(|c| c.is_numeric()),
        password.chars().any(|c| !c.is_alphanumeric()),
    ];
    if kinds.iter().filter(|k| **k).count() < 2 {
        return Err(
            "password must mix at least two kinds of characters (lower case, upper case, \
             other letters, digits, symbols)"
                .into(),
        );
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserBody {
    name: String,
    email: String,
    role: String,
    password: String,
}

#[derive(Serialize)]
struct UserView {
    id: Uuid,
    name: String,
    email: String,
    role: String,
    totp_enabled: bool,
}

async fn create_user(
    caller: Caller,
    state: Arc<AppState>,
    body: UserBody,
) -> Result<Response, ApiError> {
    shomei_jobs::sign::check_name("name", &body.name).map_err(ApiError::BadRequest)?;
    shomei_jobs::sign::check_email("email", &body.email).map_err(ApiError::BadRequest)?;
    let role = Role::ALL
        .into_iter()
        .find(|r| r.as_str() == body.role)
        .ok_or_else(|| ApiError::BadRequest(format!("role {:?} is not a role", body.role)))?;
    if role == Role::Owner && caller.role != Role::Owner {
        return Err(ApiError::Forbidden(
            "only an owner may make an owner".into(),
        ));
    }
    check_password(&body.password).map_err(ApiError::BadRequest)?;
    let key = personal::records_key(&state.keys, caller.tenant_id).await?;
    let sealing = key.clone();
    let user = interact(&state.db, move |conn| {
        let user = User {
            id: Uuid::now_v7(),
            tenant_id: caller.tenant_id,
            name: sealing.seal_field(body.name.trim()),
            email: sealing.seal_field(body.email.trim()),
            email_index: personal::email_index(&sealing, &body.email),
            role: role.as_str().to_owned(),
            password_hash: hash_secret(&body.password),
            totp_secret: None,
            totp_enabled: false,
            failed_logins: 0,
            locked_until: None,
            created_at: Utc::now(),
        };
        Ok(user.insert(conn)?.then_some(user))
    })
    .await?
    .ok_or_else(|| ApiError::Conflict("the tenant has a user with this e-mail address".into()))?;
    let view = UserView {
        id: user.id,
        name: key.open_field(&user.name)?,
        email: key.open_field(&user.email)?,
        role: user.role,
        totp_enabled: false,
    };
    Ok(created(&view, "/v1/users", StatusCode::CREATED))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    tenant_id: Uuid,
    email: String,
    password: String,
}

fn wrong_password() -> ApiError {
    ApiError::Unauthorized
}

async fn login(state: Arc<AppState>, body: LoginBody) -> Result<Response, ApiError> {
    let tenant_id = body.tenant_id;
    let tenant = interact(&state.db, move |conn| {
        use diesel::OptionalExtension;
        Ok(Tenant::get(conn, tenant_id).optional()?)
    })
    .await?;
    if tenant.as_ref().is_none_or(|t| t.deleted_at.is_some()) {
        // The same answer, after the same work, as for a wrong password.
        tokio::task::spawn_blocking(|| hash_secret("not a password"))
            .await
            .map_err(anyhow::Error::from)?;
        return Err(wrong_password());
    }
    let key = personal::records_key(&state.keys, tenant_id).await?;
    let index = personal::email_index(&key, &body.email);
    let outcome = interact(&state.db, move |conn| {
        Ok(conn.transaction(|conn| {
            let Some(user) = User::lock_by_email_index(conn, tenant_id, &index)? else {
                hash_secret(&body.password);
                return Ok(Err(wrong_password()));
            };
            if let Some(until) = user.locked_until.filter(|u| *u > Utc::now()) {
                return Ok(Err(ApiError::Locked(format!(
                    "too many wrong passwords; locked until {}",
                    until.to_rfc3339()
                ))));
            }
            if !verify_secret(&user.password_hash, &body.password) {
                let user = User::record_failure(
                    conn,
                    user.id,
                    PASSWORD_ATTEMPTS,
                    Duration::minutes(LOCKED_FOR_MINUTES),
                )?;
                return Ok(Err(match user.locked_until {
                    Some(until) if until > Utc::now() => ApiError::Locked(format!(
                        "too many wrong passwords; locked until {}",
                        until.to_rfc3339()
                    )),
                    _ => wrong_password(),
                }));
            }
            User::reset_failures(conn, user.id)?;
            let challenge = LoginChallenge::create(
                conn,
                user.id,
                Utc::now() + Duration::minutes(CHALLENGE_MINUTES),
            )?;
            diesel::QueryResult::Ok(Ok((challenge, user.totp_enabled)))
        })?)
    })
    .await?;
    let (challenge, totp) = outcome?;
    let mut factors = vec!["email"];
    if totp {
        factors.insert(0, "totp");
    }
    Ok(warp::reply::json(&json!({
        "challenge_id": challenge.id,
        "factors": factors,
        "expires_at": challenge.expires_at,
    }))
    .into_response())
}

/// A challenge still open: not completed, not expired, not spent.
fn open_challenge(challenge: Option<LoginChallenge>) -> Result<LoginChallenge, ApiError> {
    let challenge = challenge.ok_or(ApiError::NotFound("login"))?;
    if challenge.completed_at.is_some() || challenge.expires_at <= Utc::now() {
        return Err(ApiError::Gone("this login is over; log in again".into()));
    }
    if challenge.failures >= CODE_ATTEMPTS {
        return Err(ApiError::TooManyAttempts(
            "too many wrong codes for this login; log in again".into(),
        ));
    }
    Ok(challenge)
}

async fn email_code(id: Uuid, state: Arc<AppState>) -> Result<Response, ApiError> {
    let pending = interact(&state.db, move |conn| {
        Ok(conn.transaction(|conn| {
            let challenge = match open_challenge(LoginChallenge::lock(conn, id)?) {
                Ok(c) => c,
                Err(e) => return Ok(Err(e)),
            };
            let user = User::get(conn, challenge.user_id)?;
            let job = NewJob {
                id: Uuid::now_v7(),
                tenant_id: user.tenant_id,
                kind: JobKind::NotifyEmail.as_str(),
                document_id: None,
                payload: json!(LoginCodeJob {
                    login_challenge: challenge.id
                }),
                ..NewJob::default()
            };
            diesel::QueryResult::Ok(Ok(Pending::jobs(Job::insert_all(conn, &[job])?)))
        })?)
    })
    .await??;
    pending.push(&state.queue).await;
    Ok(warp::reply::with_status(
        warp::reply::json(&json!({"sent": true})),
        StatusCode::ACCEPTED,
    )
    .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyBody {
    /// `totp` or `email`.
    method: String,
    code: String,
}

async fn verify(id: Uuid, state: Arc<AppState>, body: VerifyBody) -> Result<Response, ApiError> {
    if !matches!(body.method.as_str(), "totp" | "email") {
        return Err(ApiError::BadRequest("method must be totp or email".into()));
    }
    // The user's tenant first: its records key opens the TOTP secret.
    let tenant_id = interact(&state.db, move |conn| {
        let Some(challenge) = LoginChallenge::lock(conn, id)? else {
            return Ok(None);
        };
        Ok(Some(User::get(conn, challenge.user_id)?.tenant_id))
    })
    .await?
    .ok_or(ApiError::NotFound("login"))?;
    let key = personal::records_key(&state.keys, tenant_id).await?;
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let token = format!("{SESSION_PREFIX}{}", hex::encode(raw));
    let token_sha256: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let outcome = interact(&state.db, move |conn| {
        Ok(conn.transaction(|conn| {
            let challenge = match open_challenge(LoginChallenge::lock(conn, id)?) {
                Ok(c) => c,
                Err(e) => return Ok(Err(e)),
            };
            let user = User::get(conn, challenge.user_id)?;
            let right = match body.method.as_str() {
                "totp" => match (&user.totp_secret, user.totp_enabled) {
                    (Some(sealed), true) => {
                        totp_matches(&personal::open(&key, sealed)?, &body.code)
                    }
                    _ => {
                        return Ok(Err(ApiError::BadRequest(
                            "this user has no TOTP enrolled; use the e-mailed code".into(),
                        )))
                    }
                },
                _ => {
                    challenge.code_expires_at.is_some_and(|at| at > Utc::now())
                        && challenge.code_sha256.as_deref()
                            == Some(code_hash(challenge.id, body.code.trim()).as_slice())
                }
            };
            if !right {
                LoginChallenge::record_failure(conn, challenge.id)?;
                let left = CODE_ATTEMPTS - challenge.failures - 1;
                return Ok(Err(ApiError::Forbidden(format!(
                    "the code is wrong or expired; {left} attempts left"
                ))));
            }
            LoginChallenge::complete(conn, challenge.id)?;
            let expires_at = Utc::now() + Duration::hours(SESSION_HOURS);
            start_session(conn, user.id, &token_sha256, expires_at)?;
            diesel::QueryResult::Ok(Ok((user, expires_at)))
        })?)
    })
    .await?;
    let (user, expires_at) = outcome?;
    Ok(warp::reply::json(&json!({
        "token": token,
        "expires_at": expires_at,
        "user_id": user.id,
        "role": user.role,
    }))
    .into_response())
}

/// RFC 6238: SHA-1, 6 digits, 30-second steps, one step of clock skew either way; `account`
/// only names the key in authenticator apps.
fn totp(secret: Vec<u8>, account: String) -> Result<totp_rs::TOTP, totp_rs::TotpUrlError> {
    totp_rs::TOTP::new(
        totp_rs::Algorithm::SHA1,
        6,
        1,
        30,
        secret,
        Some("Shomei".into()),
        account,
    )
}

fn totp_matches(secret_base32: &str, code: &str) -> bool {
    totp_rs::Secret::Encoded(secret_base32.to_owned())
        .to_bytes()
        .ok()
        .and_then(|secret| totp(secret, "user".into()).ok())
        .is_some_and(|t| t.check_current(code.trim()).unwrap_or(false))
}

/// Ends the calling session: its token stops working at once.
async fn logout(
    caller: Caller,
    state: Arc<AppState>,
    authorization: String,
) -> Result<Response, ApiError> {
    require_user(&caller)?;
    let token = authorization
        .trim_start_matches("Bearer ")
        .trim()
        .to_owned();
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    interact(&state.db, move |conn| {
        Ok(shomei_schema::models::user::end_session(conn, &digest)?)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn require_user(caller: &Caller) -> Result<(), ApiError> {
    if caller.kind == CallerKind::User {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "this is for a person who logged in: call with a session token, not an API key".into(),
        ))
    }
}

/// A new TOTP secret for the calling user, active once confirmed with a code from it.
async fn enrol_totp(caller: Caller, state: Arc<AppState>) -> Result<Response, ApiError> {
    require_user(&caller)?;
    let key = personal::records_key(&state.keys, caller.tenant_id).await?;
    let mut raw = [0u8; 20];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let secret = totp_rs::Secret::Raw(raw.to_vec()).to_encoded().to_string();
    let sealed = key.seal_field(&secret);
    let user = interact(&state.db, move |conn| {
        let user = User::get(conn, caller.principal())?;
        // An enabled secret stays enabled until the new one is confirmed.
        User::set_totp(conn, user.id, &sealed, false)?;
        Ok(user)
    })
    .await?;
    let account = key.open_field(&user.email)?;
    // totp-rs writes the otpauth:// URL (issuer, account, parameters encoded).
    let url = totp(raw.to_vec(), account)
        .map_err(|e| anyhow::anyhow!("TOTP secret: {e}"))?
        .get_url();
    Ok(warp::reply::json(&json!({"secret": secret, "otpauth_url": url})).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfirmBody {
    code: String,
}

async fn confirm_totp(
    caller: Caller,
    state: Arc<AppState>,
    body: ConfirmBody,
) -> Result<Response, ApiError> {
    require_user(&caller)?;
    let key = personal::records_key(&state.keys, caller.tenant_id).await?;
    let confirmed = interact(&state.db, move |conn| {
        let user = User::get(conn, caller.principal())?;
        let Some(sealed) = user.totp_secret else {
            return Ok(false);
        };
        if !totp_matches(&personal::open(&key, &sealed)?, &body.code) {
            return Ok(false);
        }
        User::set_totp(conn, user.id, &sealed, true)?;
        Ok(true)
    })
    .await?;
    if !confirmed {
        return Err(ApiError::Forbidden(
            "the code does not match the new TOTP secret".into(),
        ));
    }
    Ok(warp::reply::json(&json!({"totp_enabled": true})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_need_eight_characters_of_two_kinds() {
        for bad in [
            "short1A",
            "allletters",
            "ALLLETTERS",
            "12345678901",
            "パスワードパスワード",
        ] {
            assert!(check_password(bad).is_err(), "{bad}");
        }
        for good in ["letters12", "Letters-and", "12345678!", "パスワード2026"] {
            assert!(check_password(good).is_ok(), "{good}");
        }
    }
}
