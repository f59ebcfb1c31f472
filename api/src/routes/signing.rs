//! Signature requests, the signer's side. The signer holds no API key: the link token from
//! the invitation e-mail is the credential (only its SHA-256 is stored; it stops working when
//! the signer has signed or declined, or the request ends).
//!
//! - `GET  /v1/signing/{token}`          what is to be signed, and how
//! - `GET  /v1/signing/{token}/pdf`      the document as it stands
//! - `POST /v1/signing/{token}/code`     e-mails a one-time code (witness signature)
//! - `POST /v1/signing/{token}/sign`     `{code | pin, access_code?}`: queues the signature
//! - `POST /v1/signing/{token}/decline`  `{reason?}`
//!
//! Every wrong code, PIN or access code is counted (and committed) before the answer goes
//! out: a code is spent after 5 wrong tries, a certified signer is locked after 5 wrong PINs.

use std::net::IpAddr;
use std::sync::Arc;

use chrono::Utc;
use diesel::{Connection, PgConnection};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;
use warp::reply::{Reply, Response};
use warp::{Filter, Rejection};

use shomei_jobs::events::{self, kind, NewEvent, Pending};
use shomei_jobs::personal;
use shomei_jobs::requests::{
    self, Method, RequestStep, SignerState, SignerStatus, CODE_ATTEMPTS, MAX_CODES, PIN_ATTEMPTS,
};
use shomei_jobs::sign::{SignRequest, Signer};
use shomei_schema::{
    interact, Document, JobKind, NewJob, RequestSigner, Revision, SignatureRequest, SignerIdentity,
    Tenant,
};
use shomei_vault::DataKey;

use super::{client_ip, json_body, respond, with_state};
use crate::client::client_addr;
use crate::problem::ApiError;
use crate::AppState;

pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let show = warp::path!("v1" / "signing" / String)
        .and(warp::get())
        .and(with_state(state.clone()))
        .then(show)
        .map(respond);
    let pdf = warp::path!("v1" / "signing" / String / "pdf")
        .and(warp::get())
        .and(with_state(state.clone()))
        .then(pdf)
        .map(respond);
    let code = warp::path!("v1" / "signing" / String / "code")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(client_addr(state.gate.clone()))
        .then(send_code)
        .map(respond);
    let sign = warp::path!("v1" / "signing" / String / "sign")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(client_addr(state.gate.clone()))
        .and(json_body(4 * 1024))
        .then(sign)
        .map(respond);
    let decline = warp::path!("v1" / "signing" / String / "decline")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(client_addr(state.gate.clone()))
        .and(json_body(4 * 1024))
        .then(decline)
        .map(respond);
    show.or(pdf)
        .unify()
        .or(code)
        .unify()
        .or(sign)
        .unify()
        .or(decline)
        .unify()
}

/// The signer a link token belongs to, with its request locked, if the link may still be used.
fn open_link(
    conn: &mut PgConnection,
    token: &str,
) -> diesel::QueryResult<Result<(SignatureRequest, RequestSigner), ApiError>> {
    let not_found = || Ok(Err(ApiError::NotFound("signing link")));
    if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return not_found();
    }
    let Some(signer) = RequestSigner::by_link(conn, &requests::token_hash(token))? else {
        return not_found();
    };
    let request = SignatureRequest::lock(conn, signer.request_id)?;
    let signer = RequestSigner::get(conn, signer.id)?;
    if signer.link_expires_at.is_some_and(|t| t < Utc::now()) {
        return Ok(Err(ApiError::Gone(
            "this signing link has expired; ask the sender to send it again".into(),
        )));
    }
    if request.status != "in_progress" {
        return Ok(Err(ApiError::Gone(format!(
            "the signature request is {}",
            request.status
        ))));
    }
    match signer.status() {
        SignerStatus::Invited => Ok(Ok((request, signer))),
        SignerStatus::Signing | SignerStatus::Signed => Ok(Err(ApiError::Conflict(
            "you have already signed this document".into(),
        ))),
        other => Ok(Err(ApiError::Gone(format!(
            "this signing link no longer works (you are {})",
            other.as_str()
        )))),
    }
}

/// Runs `f` in one transaction with the signer the link token belongs to and its request
/// (locked). A link that no longer works answers its problem without calling `f`; whatever
/// `f` returns inside `Ok`, a refusal included, is committed (failed tries must count).
async fn with_link<T, F>(state: &AppState, token: String, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(
            &mut PgConnection,
            &DataKey,
            SignatureRequest,
            RequestSigner,
        ) -> diesel::QueryResult<Result<T, ApiError>>
        + Send
        + 'static,
{
    // The tenant first (its records key opens and seals the personal fields), then the
    // transaction with the request locked.
    let lookup = token.clone();
    let tenant_id = interact(&state.db, move |conn| {
        Ok(open_link(conn, &lookup)?.map(|(request, _)| request.tenant_id))
    })
    .await??;
    let key = personal::records_key(&state.keys, tenant_id).await?;
    interact(&state.db, move |conn| {
        Ok(conn.transaction(|conn| match open_link(conn, &token)? {
            Ok((request, signer)) => f(conn, &key, request, signer),
            Err(e) => Ok(Err(e)),
        })?)
    })
    .await?
}

#[derive(Serialize)]
struct SigningView {
    request_id: Uuid,
    document: DocumentSummary,
    sender: String,
    message: Option<String>,
    signer: SignerSummary,
}

#[derive(Serialize)]
struct DocumentSummary {
    id: Uuid,
    title: Option<String>,
    pages: i32,
    sha256: String,
}

#[derive(Serialize)]
struct SignerSummary {
    name: String,
    email: String,
    position: i32,
    method: String,
    access_code_required: bool,
    link_expires_at: Option<chrono::DateTime<Utc>>,
}

async fn show(token: String, state: Arc<AppState>) -> Result<Response, ApiError> {
    let view = with_link(&state, token, |conn, key, request, signer| {
        let document = Document::get(conn, request.document_id)?;
        let latest = Revision::latest(conn, document.id)?;
        Ok(Ok(SigningView {
            request_id: request.id,
            document: DocumentSummary {
                id: document.id,
                title: document.title,
                pages: document.pages,
                sha256: hex::encode(&latest.sha256),
            },
            sender: personal::open(key, &request.owner_name)?,
            message: request.message,
            signer: SignerSummary {
                access_code_required: signer.access_code_hash.is_some(),
                name: personal::open(key, &signer.name)?,
                email: personal::open(key, &signer.email)?,
                position: signer.position,
                method: signer.method,
                link_expires_at: signer.link_expires_at,
            },
        }))
    })
    .await?;
    Ok(warp::reply::json(&view).into_response())
}

async fn pdf(token: String, state: Arc<AppState>) -> Result<Response, ApiError> {
    let latest = with_link(&state, token, |conn, _, request, _| {
        Ok(Ok(Revision::latest(conn, request.document_id)?))
    })
    .await?;
    super::documents::pdf_response(&state, &latest).await
}

async fn send_code(
    token: String,
    state: Arc<AppState>,
    client: Option<IpAddr>,
) -> Result<Response, ApiError> {
    let ip = client_ip(client);
    let pending = with_link(&state, token, |conn, _, request, mut signer| {
            if signer.method != Method::Witness.as_str() {
                return Ok(Err(ApiError::Conflict(
                    "a certified signature is released by your PIN, not by an e-mailed code"
                        .into(),
                )));
            }
            if signer.codes_sent >= MAX_CODES {
                return Ok(Err(ApiError::TooManyAttempts(format!(
                    "{MAX_CODES} codes have been sent already; ask the sender to send the request again"
                ))));
            }
            signer.codes_sent += 1;
            signer.save(conn)?;
            // The code itself is made by the e-mail job, which stores only its hash.
            Ok(Ok(events::emit(
                conn,
                NewEvent {
                    tenant_id: request.tenant_id,
                    kind: kind::SIGNER_CODE_SENT,
                    document_id: Some(request.document_id),
                    request_id: Some(request.id),
                    actor: format!("signer:{}", signer.id),
                    ip,
                    data: json!({"signer_id": signer.id.to_string()}),
                },
            )?))
    })
    .await?;
    pending.push(&state.queue).await;
    Ok(warp::reply::with_status(
        warp::reply::json(&json!({"sent": true})),
        warp::http::StatusCode::ACCEPTED,
    )
    .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignBody {
    /// The e-mailed one-time code (witness signature).
    #[serde(default)]
    code: Option<String>,
    /// The signer's PIN (certified signature).
    #[serde(default)]
    pin: Option<String>,
    /// The access code the sender shared, when the signer has one.
    #[serde(default)]
    access_code: Option<String>,
}

async fn sign(
    token: String,
    state: Arc<AppState>,
    client: Option<IpAddr>,
    body: SignBody,
) -> Result<Response, ApiError> {
    let ip = client_ip(client);
    let (job_id, pending) = with_link(&state, token, |conn, key, request, signer| {
        authenticate_and_queue(conn, key, request, signer, body, ip)
    })
    .await?;
    pending.push(&state.queue).await;
    Ok(warp::reply::with_status(
        warp::reply::json(&json!({"job_id": job_id, "status": "signing"})),
        warp::http::StatusCode::ACCEPTED,
    )
    .into_response())
}

/// Checks the signer's proof and, when it holds, queues the signature. Failures are counted
/// and committed: the caller's transaction commits whatever this returns inside `Ok`.
fn authenticate_and_queue(
    conn: &mut PgConnection,
    key: &DataKey,
    request: SignatureRequest,
    mut signer: RequestSigner,
    body: SignBody,
    ip: Option<String>,
) -> diesel::QueryResult<Result<(Uuid, Pending), ApiError>> {
    let method = if signer.method == Method::Certified.as_str() {
        Method::Certified
    } else {
        Method::Witness
    };
    let access_ok = match (&signer.access_code_hash, &body.access_code) {
        (None, _) => true,
        (Some(_), None) => {
            return Ok(Err(ApiError::BadRequest(
                "access_code is required: the sender shared it with you separately".into(),
            )))
        }
        (Some(hash), Some(given)) => requests::verify_secret(hash, given),
    };

    let mut key_label = None;
    match method {
        Method::Witness => {
            let Some(code) = body.code.as_deref() else {
                return Ok(Err(ApiError::BadRequest(
                    "code is required: ask for one with POST .../code".into(),
                )));
            };
            let Some(expected) = signer.otp_sha256.clone() else {
                return Ok(Err(ApiError::Conflict(
                    "no code is waiting; ask for one with POST .../code".into(),
                )));
            };
            if signer.otp_expires_at.is_none_or(|t| t < Utc::now()) {
                return Ok(Err(ApiError::Gone(
                    "the code has expired; ask for a new one".into(),
                )));
            }
            let code_ok = requests::code_hash(signer.id, code.trim()) == expected;
            if !(code_ok && access_ok) {
                signer.otp_failures += 1;
                let left = CODE_ATTEMPTS - signer.otp_failures;
                if left <= 0 {
                    signer.otp_sha256 = None;
                    signer.otp_expires_at = None;
                }
                signer.save(conn)?;
                let what = if code_ok { "access code" } else { "code" };
                return Ok(Err(if left <= 0 {
                    ApiError::TooManyAttempts(format!(
                        "wrong {what}; too many attempts, the code is spent: ask for a new one"
                    ))
                } else {
                    ApiError::Forbidden(format!("wrong {what}; {left} attempts left"))
                }));
            }
        }
        Method::Certified => {
            let Some(pin) = body.pin.as_deref() else {
                return Ok(Err(ApiError::BadRequest("pin is required".into())));
            };
            let Some(identity_id) = signer.identity_id else {
                return Ok(Err(ApiError::Conflict("the signer has no identity".into())));
            };
            let identity = SignerIdentity::get(conn, identity_id)?;
            if identity.locked_at.is_some() {
                return Ok(Err(ApiError::Locked(
                    "your signing key is locked after too many wrong PINs; contact the sender"
                        .into(),
                )));
            }
            let pin_ok = requests::verify_secret(&identity.pin_hash, pin);
            if !(pin_ok && access_ok) {
                let identity = SignerIdentity::record_failure(conn, identity_id, PIN_ATTEMPTS)?;
                let what = if pin_ok { "access code" } else { "PIN" };
                return Ok(Err(if identity.locked_at.is_some() {
                    ApiError::Locked(format!(
                        "wrong {what}; your signing key is now locked: contact the sender"
                    ))
                } else {
                    ApiError::Forbidden(format!(
                        "wrong {what}; {} attempts left",
                        PIN_ATTEMPTS - identity.pin_failures
                    ))
                }));
            }
            SignerIdentity::reset_failures(conn, identity_id)?;
            key_label = Some(identity.key_label);
        }
    }

    let tenant = Tenant::get(conn, request.tenant_id)?;
    let from = ip.as_deref().unwrap_or("an unknown address");
    let proof = match (method, signer.access_code_hash.is_some()) {
        (Method::Witness, false) => "e-mail one-time code verified",
        (Method::Witness, true) => "e-mail one-time code and access code verified",
        (Method::Certified, false) => "own certified key, PIN verified",
        (Method::Certified, true) => "own certified key, PIN and access code verified",
    };
    let label = match method {
        Method::Witness => "Witness signature for",
        Method::Certified => "Signed by",
    };
    let (name, email) = (
        personal::open(key, &signer.name)?,
        personal::open(key, &signer.email)?,
    );
    let reason = format!("{label} {name} <{email}>: {proof}, from {from}");
    let sign_request = SignRequest {
        signer: Signer {
            name,
            email: Some(email),
        },
        level: Some(
            tenant
                .signature_level
                .parse()
                .unwrap_or(shomei_jobs::sign::SignatureLevel::Timestamped),
        ),
        reason: Some(reason),
        location: None,
        conclude: false,
        step: Some(RequestStep {
            request_id: request.id,
            signer_id: signer.id,
            method,
            key_label,
            ip: ip.clone(),
        }),
    };
    let job = NewJob {
        id: Uuid::now_v7(),
        tenant_id: request.tenant_id,
        kind: JobKind::Sign.as_str(),
        document_id: Some(request.document_id),
        payload: sign_request.to_payload(key),
        idempotency_key: None,
        request_sha256: None,
        batch_id: None,
    };
    let job_id = job.id;
    let pending = requests::start_signing(conn, &request, &mut signer, job, ip)?;
    Ok(Ok((job_id, pending)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeclineBody {
    #[serde(default)]
    reason: Option<String>,
}

async fn decline(
    token: String,
    state: Arc<AppState>,
    client: Option<IpAddr>,
    body: DeclineBody,
) -> Result<Response, ApiError> {
    if body
        .reason
        .as_ref()
        .is_some_and(|r| r.chars().count() > 1000)
    {
        return Err(ApiError::BadRequest(
            "reason is longer than 1000 characters".into(),
        ));
    }
    let ip = client_ip(client);
    let pending = with_link(&state, token, |conn, _, mut request, mut signer| {
        Ok(Ok(requests::decline(
            conn,
            &mut request,
            &mut signer,
            body.reason,
            ip,
        )?))
    })
    .await?;
    pending.push(&state.queue).await;
    Ok(warp::reply::json(&json!({"declined": true})).into_response())
}
