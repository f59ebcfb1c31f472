//! Signature requests, the sender's side: `POST /v1/documents/{id}/requests` sends a document
//! round an ordered list of signers, `GET /v1/requests/{id}` shows where it is, and
//! `POST /v1/requests/{id}/cancel` stops it. The state machine is `shomei_jobs::requests`.

use std::net::IpAddr;
use std::sync::Arc;

use diesel::Connection;
use rand::Rng;
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};
use warp::{Filter, Rejection};

use shomei_jobs::personal;
use shomei_jobs::requests::{self, Method, NewRequest, NewSigner, SignerState};
use shomei_jobs::sign::check_email;
use shomei_schema::{interact, Document, RequestSigner, SignatureRequest, SignerIdentity, Tenant};

use super::documents::find_document;
use super::{client_ip, created, json_body, respond, with_state};
use crate::auth::{authorized, Caller, Permission};
use crate::client::client_addr;
use crate::problem::ApiError;
use crate::AppState;

pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let create = warp::path!("v1" / "documents" / Uuid / "requests")
        .and(warp::post())
        .and(authorized(state.clone(), Permission::SendRequests))
        .and(with_state(state.clone()))
        .and(client_addr(state.gate.clone()))
        .and(json_body(64 * 1024))
        .then(create)
        .map(respond);
    let show = warp::path!("v1" / "requests" / Uuid)
        .and(warp::get())
        .and(authorized(state.clone(), Permission::ReadDocuments))
        .and(with_state(state.clone()))
        .then(show)
        .map(respond);
    let cancel = warp::path!("v1" / "requests" / Uuid / "cancel")
        .and(warp::post())
        .and(authorized(state.clone(), Permission::SendRequests))
        .and(with_state(state.clone()))
        .and(client_addr(state.gate.clone()))
        .then(cancel)
        .map(respond);
    create.or(show).unify().or(cancel).unify()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    /// Who sends the request and is told when it completes or is declined.
    owner: Person,
    #[serde(default)]
    locale: Option<String>,
    #[serde(default)]
    message: Option<String>,
    signers: Vec<SignerBody>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Person {
    name: String,
    email: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignerBody {
    name: String,
    email: String,
    method: Method,
    #[serde(default)]
    locale: Option<String>,
    /// Shared with the signer by other means; required of every signer when the tenant has
    /// access codes on (one is made when none is given).
    #[serde(default)]
    access_code: Option<String>,
}

#[derive(Debug, Serialize)]
struct RequestView {
    id: Uuid,
    document_id: Uuid,
    status: String,
    owner: PersonView,
    locale: String,
    message: Option<String>,
    signers: Vec<SignerView>,
    created_at: chrono::DateTime<chrono::Utc>,
    finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Serialize)]
struct PersonView {
    name: String,
    email: String,
}

#[derive(Debug, Serialize)]
struct SignerView {
    id: Uuid,
    position: i32,
    name: String,
    email: String,
    method: String,
    status: String,
    signed_at: Option<chrono::DateTime<chrono::Utc>>,
    decline_reason: Option<String>,
    /// Only in the response that created the request, and only when the service made it.
    #[serde(skip_serializing_if = "Option::is_none")]
    access_code: Option<String>,
}

impl RequestView {
    /// The view, with the personal fields opened.
    async fn new(
        state: &AppState,
        request: SignatureRequest,
        signers: Vec<RequestSigner>,
        codes: &[Option<String>],
    ) -> Result<Self, ApiError> {
        let key = personal::records_key(&state.keys, request.tenant_id).await?;
        let open = |sealed: &[u8]| key.open_field(sealed);
        Ok(Self {
            id: request.id,
            document_id: request.document_id,
            status: request.status,
            owner: PersonView {
                name: open(&request.owner_name)?,
                email: open(&request.owner_email)?,
            },
            locale: request.locale,
            message: request.message,
            created_at: request.created_at,
            finished_at: request.finished_at,
            signers: signers
                .into_iter()
                .enumerate()
                .map(|(i, s)| {
                    Ok(SignerView {
                        id: s.id,
                        position: s.position,
                        name: open(&s.name)?,
                        email: open(&s.email)?,
                        method: s.method,
                        status: s.status,
                        signed_at: s.signed_at,
                        decline_reason: s.decline_reason,
                        access_code: codes.get(i).cloned().flatten(),
                    })
                })
                .collect::<Result<_, shomei_vault::VaultError>>()?,
        })
    }
}

fn locale(value: Option<String>, field: &str) -> Result<String, ApiError> {
    let value = value.unwrap_or_else(|| "ja".into());
    match value.as_str() {
        "ja" | "en" => Ok(value),
        other => Err(ApiError::BadRequest(format!(
            "{field} {other:?} is not supported (ja or en)"
        ))),
    }
}

fn check_name(field: &str, name: &str) -> Result<(), ApiError> {
    shomei_jobs::sign::check_name(field, name).map_err(ApiError::BadRequest)
}

async fn create(
    document_id: Uuid,
    caller: Caller,
    state: Arc<AppState>,
    client: Option<IpAddr>,
    body: CreateBody,
) -> Result<Response, ApiError> {
    check_name("owner.name", &body.owner.name)?;
    check_email("owner.email", &body.owner.email).map_err(ApiError::BadRequest)?;
    let request_locale = locale(body.locale, "locale")?;
    if body.signers.is_empty() || body.signers.len() > 20 {
        return Err(ApiError::BadRequest(
            "signers must list 1 to 20 signers".into(),
        ));
    }
    if body
        .message
        .as_ref()
        .is_some_and(|m| m.chars().count() > 2000)
    {
        return Err(ApiError::BadRequest(
            "message is longer than 2000 characters".into(),
        ));
    }
    for (i, s) in body.signers.iter().enumerate() {
        check_name(&format!("signers[{i}].name"), &s.name)?;
        check_email(&format!("signers[{i}].email"), &s.email).map_err(ApiError::BadRequest)?;
        if let Some(code) = &s.access_code {
            let n = code.chars().count();
            if !(4..=64).contains(&n) {
                return Err(ApiError::BadRequest(format!(
                    "signers[{i}].access_code must be 4 to 64 characters"
                )));
            }
        }
    }
    let (doc, _) = find_document(&state, caller, document_id).await?;
    let ip = client_ip(client);
    let tenant_id = caller.tenant_id;
    let signers_in = body.signers;
    let owner = body.owner;
    let message = body.message;

    let new_locale = request_locale.clone();
    let key = personal::records_key(&state.keys, tenant_id).await?;
    let result = interact(&state.db, move |conn| {
        let tenant = Tenant::get(conn, tenant_id)?;
        let mut signers = Vec::new();
        let mut made_codes = Vec::new();
        for (i, s) in signers_in.into_iter().enumerate() {
            let identity_id = match s.method {
                Method::Witness => None,
                Method::Certified => {
                    let index = personal::email_index(&key, &s.email);
                    match SignerIdentity::find_by_email_index(conn, tenant_id, &index)? {
                        Some(identity) => Some(identity.id),
                        None => {
                            return Ok(Err(ApiError::Unprocessable(format!(
                                "signers[{i}]: no certified signer is enrolled with {:?} \
                                 (POST /v1/signer-identities)",
                                s.email
                            ))))
                        }
                    }
                }
            };
            let made = (s.access_code.is_none() && tenant.access_codes).then(access_code);
            let code = s.access_code.or(made.clone());
            made_codes.push(made);
            signers.push(NewSigner {
                locale: match locale(
                    s.locale.or(Some(new_locale.clone())),
                    &format!("signers[{i}].locale"),
                ) {
                    Ok(l) => l,
                    Err(e) => return Ok(Err(e)),
                },
                name: key.seal_field(s.name.trim()),
                email: key.seal_field(&s.email),
                method: s.method,
                identity_id,
                access_code_hash: code.as_deref().map(requests::hash_secret),
            });
        }
        let new = NewRequest {
            tenant_id,
            document_id: doc.id,
            owner_name: key.seal_field(owner.name.trim()),
            owner_email: key.seal_field(&owner.email),
            locale: request_locale,
            message,
            signers,
        };
        let created = conn.transaction(|conn| requests::create(conn, new, caller.actor(), ip));
        match created {
            Ok((request, signers, pending)) => Ok(Ok((request, signers, pending, made_codes))),
            Err(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation,
                _,
            )) => Ok(Err(ApiError::Conflict(
                "the document is already in a signature request that is in progress".into(),
            ))),
            Err(e) => Err(e.into()),
        }
    })
    .await?;
    let (request, signers, pending, codes) = result?;
    pending.push(&state.queue).await;
    let location = format!("/v1/requests/{}", request.id);
    Ok(created(
        &RequestView::new(&state, request, signers, &codes).await?,
        &location,
        StatusCode::CREATED,
    ))
}

/// An access code the service makes when the tenant wants one and the sender gave none.
fn access_code() -> String {
    format!("{:08}", rand::rngs::OsRng.gen_range(0..100_000_000))
}

async fn find(
    state: &AppState,
    caller: Caller,
    id: Uuid,
) -> Result<(SignatureRequest, Vec<RequestSigner>), ApiError> {
    interact(&state.db, move |conn| {
        let Some(request) = SignatureRequest::find(conn, caller.tenant_id, id)? else {
            return Ok(None);
        };
        if Document::find(
            conn,
            caller.tenant_id,
            caller.principal(),
            request.document_id,
        )?
        .is_none()
        {
            return Ok(None);
        }
        let signers = request.signers(conn)?;
        Ok(Some((request, signers)))
    })
    .await?
    .ok_or(ApiError::NotFound("signature request"))
}

async fn show(id: Uuid, caller: Caller, state: Arc<AppState>) -> Result<Response, ApiError> {
    let (request, signers) = find(&state, caller, id).await?;
    Ok(warp::reply::json(&RequestView::new(&state, request, signers, &[]).await?).into_response())
}

async fn cancel(
    id: Uuid,
    caller: Caller,
    state: Arc<AppState>,
    client: Option<IpAddr>,
) -> Result<Response, ApiError> {
    find(&state, caller, id).await?;
    let ip = client_ip(client);
    let outcome = interact(&state.db, move |conn| {
        Ok(conn.transaction(|conn| {
            let mut request = SignatureRequest::lock(conn, id)?;
            if request.status != "in_progress" {
                return Ok(Err(ApiError::Conflict(format!(
                    "the request is already {}",
                    request.status
                ))));
            }
            if request
                .signers(conn)?
                .iter()
                .any(|s| s.status() == requests::SignerStatus::Signing)
            {
                return Ok(Err(ApiError::Conflict(
                    "a signer's signature is being made right now; try again in a moment".into(),
                )));
            }
            let pending = requests::cancel(conn, &mut request, caller.actor(), ip)?;
            let signers = request.signers(conn)?;
            Ok::<_, diesel::result::Error>(Ok((request, signers, pending)))
        })?)
    })
    .await?;
    let (request, signers, pending) = outcome?;
    pending.push(&state.queue).await;
    Ok(warp::reply::json(&RequestView::new(&state, request, signers, &[]).await?).into_response())
}
