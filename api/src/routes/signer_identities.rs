//! Certified signers (R-SIGN-6): people with an own key and certificate in the HSM, enrolled
//! by their tenant with the key's label and a PIN (stored as Argon2id only). A request signer
//! with `"method": "certified"` is matched to an identity by e-mail address.
//!
//! - `POST /v1/signer-identities` `{name, email, key_label, pin}`
//! - `GET  /v1/signer-identities`
//! - `POST /v1/signer-identities/{id}/unlock` after repeated wrong PINs

use shomei_jobs::personal;
use shomei_vault::{DataKey, VaultError};
use std::sync::Arc;

use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};
use warp::{Filter, Rejection};

use shomei_jobs::requests;
use shomei_jobs::sign::{check_email, check_name};
use shomei_schema::schema::signer_identities;
use shomei_schema::{interact, SignerIdentity};

use super::{created, json_body, respond, with_state};
use crate::auth::{authorized, Caller, Permission};
use crate::problem::ApiError;
use crate::AppState;

pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let enroll = warp::path!("v1" / "signer-identities")
        .and(warp::post())
        .and(authorized(state.clone(), Permission::ManageIntegrations))
        .and(with_state(state.clone()))
        .and(json_body(8 * 1024))
        .then(enroll)
        .map(respond);
    let list = warp::path!("v1" / "signer-identities")
        .and(warp::get())
        .and(authorized(state.clone(), Permission::ManageIntegrations))
        .and(with_state(state.clone()))
        .then(list)
        .map(respond);
    let unlock = warp::path!("v1" / "signer-identities" / Uuid / "unlock")
        .and(warp::post())
        .and(authorized(state.clone(), Permission::ManageIntegrations))
        .and(with_state(state))
        .then(unlock)
        .map(respond);
    enroll.or(list).unify().or(unlock).unify()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrollBody {
    name: String,
    email: String,
    /// Label of the signer's private key and certificate in the HSM.
    key_label: String,
    pin: String,
}

#[derive(Debug, Serialize)]
struct IdentityView {
    id: Uuid,
    name: String,
    email: String,
    key_label: String,
    locked: bool,
    created_at: chrono::DateTime<chrono::Utc>,
}

impl IdentityView {
    /// The view, with name and address opened.
    fn new(key: &DataKey, i: SignerIdentity) -> Result<Self, VaultError> {
        Ok(Self {
            id: i.id,
            name: key.open_field(&i.name)?,
            email: key.open_field(&i.email)?,
            key_label: i.key_label,
            locked: i.locked_at.is_some(),
            created_at: i.created_at,
        })
    }
}

async fn enroll(
    caller: Caller,
    state: Arc<AppState>,
    body: EnrollBody,
) -> Result<Response, ApiError> {
    check_email("email", &body.email).map_err(ApiError::BadRequest)?;
    check_name("name", &body.name).map_err(ApiError::BadRequest)?;
    if body.key_label.is_empty() || body.key_label.len() > 200 {
        return Err(ApiError::BadRequest(
            "key_label must be 1 to 200 characters".into(),
        ));
    }
    let pin_len = body.pin.chars().count();
    if !(6..=64).contains(&pin_len) {
        return Err(ApiError::BadRequest(
            "pin must be 6 to 64 characters".into(),
        ));
    }
    let key = personal::records_key(&state.keys, caller.tenant_id).await?;
    let sealing = key.clone();
    let identity = interact(&state.db, move |conn| {
        let identity = SignerIdentity {
            id: Uuid::now_v7(),
            tenant_id: caller.tenant_id,
            name: sealing.seal_field(body.name.trim()),
            email: sealing.seal_field(&body.email),
            email_index: personal::email_index(&sealing, &body.email),
            key_label: body.key_label,
            pin_hash: requests::hash_secret(&body.pin),
            pin_failures: 0,
            locked_at: None,
            created_at: chrono::Utc::now(),
        };
        let inserted = diesel::insert_into(signer_identities::table)
            .values(&identity)
            .on_conflict_do_nothing()
            .execute(conn)?;
        Ok((inserted == 1).then_some(identity))
    })
    .await?
    .ok_or_else(|| {
        ApiError::Conflict("a certified signer with this e-mail address is already enrolled".into())
    })?;
    let location = format!("/v1/signer-identities/{}", identity.id);
    Ok(created(
        &IdentityView::new(&key, identity)?,
        &location,
        StatusCode::CREATED,
    ))
}

async fn list(caller: Caller, state: Arc<AppState>) -> Result<Response, ApiError> {
    let identities: Vec<SignerIdentity> = interact(&state.db, move |conn| {
        Ok(signer_identities::table
            .filter(signer_identities::tenant_id.eq(caller.tenant_id))
            .order(signer_identities::created_at.asc())
            .select(SignerIdentity::as_select())
            .load(conn)?)
    })
    .await?;
    let key = personal::records_key(&state.keys, caller.tenant_id).await?;
    let views = identities
        .into_iter()
        .map(|i| IdentityView::new(&key, i))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(warp::reply::json(&json!({"signer_identities": views})).into_response())
}

async fn unlock(id: Uuid, caller: Caller, state: Arc<AppState>) -> Result<Response, ApiError> {
    let unlocked = interact(&state.db, move |conn| {
        Ok(diesel::update(
            signer_identities::table
                .filter(signer_identities::id.eq(id))
                .filter(signer_identities::tenant_id.eq(caller.tenant_id)),
        )
        .set((
            signer_identities::pin_failures.eq(0),
            signer_identities::locked_at.eq(None::<chrono::DateTime<chrono::Utc>>),
        ))
        .returning(SignerIdentity::as_returning())
        .get_result(conn)
        .optional()?)
    })
    .await?
    .ok_or(ApiError::NotFound("signer identity"))?;
    let key = personal::records_key(&state.keys, caller.tenant_id).await?;
    Ok(warp::reply::json(&IdentityView::new(&key, unlocked)?).into_response())
}
