//! Who may see what: user groups over folders (R-ACC-2) and the tenant's IP allow-list
//! (R-ACC-3). Owner and admin keys only (`ManageAccess`).

use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};
use warp::{Filter, Rejection};

use shomei_schema::models::access::{Group, GroupDetail};
use shomei_schema::models::normalise_folder;
use shomei_schema::{interact, Tenant};

use super::{created, json_body, respond, with_state};
use crate::auth::{authorized, Caller, Permission};
use crate::client::{admitted, client_addr};
use crate::problem::ApiError;
use crate::AppState;

pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let manage = || authorized(state.clone(), Permission::ManageAccess);
    let create = warp::path!("v1" / "groups")
        .and(warp::post())
        .and(manage())
        .and(with_state(state.clone()))
        .and(json_body(64 * 1024))
        .then(create_group)
        .map(respond);
    let list = warp::path!("v1" / "groups")
        .and(warp::get())
        .and(manage())
        .and(with_state(state.clone()))
        .then(list_groups)
        .map(respond);
    let add = warp::path!("v1" / "groups" / Uuid / "members" / Uuid)
        .and(warp::put())
        .and(manage())
        .and(with_state(state.clone()))
        .then(add_member)
        .map(respond);
    let remove = warp::path!("v1" / "groups" / Uuid / "members" / Uuid)
        .and(warp::delete())
        .and(manage())
        .and(with_state(state.clone()))
        .then(remove_member)
        .map(respond);
    let show_list = warp::path!("v1" / "tenant" / "ip-allowlist")
        .and(warp::get())
        .and(manage())
        .and(with_state(state.clone()))
        .then(show_allowlist)
        .map(respond);
    let set_list = warp::path!("v1" / "tenant" / "ip-allowlist")
        .and(warp::put())
        .and(manage())
        .and(with_state(state.clone()))
        .and(client_addr(state.gate.clone()))
        .and(json_body(64 * 1024))
        .then(set_allowlist)
        .map(respond);
    create
        .or(list)
        .unify()
        .or(add)
        .unify()
        .or(remove)
        .unify()
        .or(show_list)
        .unify()
        .or(set_list)
        .unify()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupBody {
    name: String,
    /// Folders the group's members see, each with its subfolders.
    folders: Vec<String>,
}

#[derive(Serialize)]
struct GroupView {
    id: Uuid,
    name: String,
    folders: Vec<String>,
    /// API keys (ids as in `accounts.csv`).
    members: Vec<Uuid>,
    created_at: chrono::DateTime<chrono::Utc>,
}

impl From<GroupDetail> for GroupView {
    fn from(d: GroupDetail) -> Self {
        Self {
            id: d.group.id,
            name: d.group.name,
            folders: d.folders,
            members: d.members,
            created_at: d.group.created_at,
        }
    }
}

async fn create_group(
    caller: Caller,
    state: Arc<AppState>,
    body: GroupBody,
) -> Result<Response, ApiError> {
    let name = body.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::BadRequest(
            "name must be 1 to 100 characters".into(),
        ));
    }
    if body.folders.is_empty() || body.folders.len() > 100 {
        return Err(ApiError::BadRequest(
            "folders must list 1 to 100 folders".into(),
        ));
    }
    let folders = body
        .folders
        .iter()
        .enumerate()
        .map(|(i, f)| {
            normalise_folder(f).map_err(|e| ApiError::BadRequest(format!("folders[{i}]: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let group = interact(&state.db, move |conn| {
        Ok(Group::create(conn, caller.tenant_id, &name, &folders)?)
    })
    .await?
    .ok_or_else(|| ApiError::Conflict("the tenant already has a group with this name".into()))?;
    let location = format!("/v1/groups/{}", group.group.id);
    Ok(created(
        &GroupView::from(group),
        &location,
        StatusCode::CREATED,
    ))
}

async fn list_groups(caller: Caller, state: Arc<AppState>) -> Result<Response, ApiError> {
    let groups = interact(&state.db, move |conn| {
        Ok(Group::list(conn, caller.tenant_id)?)
    })
    .await?;
    let views: Vec<GroupView> = groups.into_iter().map(GroupView::from).collect();
    Ok(warp::reply::json(&json!({"groups": views})).into_response())
}

async fn add_member(
    group_id: Uuid,
    principal_id: Uuid,
    caller: Caller,
    state: Arc<AppState>,
) -> Result<Response, ApiError> {
    change_member(caller, state, group_id, principal_id, true).await
}

async fn remove_member(
    group_id: Uuid,
    principal_id: Uuid,
    caller: Caller,
    state: Arc<AppState>,
) -> Result<Response, ApiError> {
    change_member(caller, state, group_id, principal_id, false).await
}

async fn change_member(
    caller: Caller,
    state: Arc<AppState>,
    group_id: Uuid,
    principal_id: Uuid,
    add: bool,
) -> Result<Response, ApiError> {
    let tenant_id = caller.tenant_id;
    let changed = interact(&state.db, move |conn| {
        Ok(if add {
            Group::add_member(conn, tenant_id, group_id, principal_id)?
        } else {
            Group::remove_member(conn, tenant_id, group_id, principal_id)?
        })
    })
    .await?;
    if !changed {
        return Err(ApiError::NotFound(if add {
            "group, API key or user"
        } else {
            "group member"
        }));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct AllowList {
    /// CIDRs (IPv4 or IPv6; a bare address is one host); `null` lifts the restriction.
    cidrs: Option<Vec<String>>,
}

async fn show_allowlist(caller: Caller, state: Arc<AppState>) -> Result<Response, ApiError> {
    let tenant = interact(&state.db, move |conn| {
        Ok(Tenant::get(conn, caller.tenant_id)?)
    })
    .await?;
    Ok(warp::reply::json(&AllowList {
        cidrs: tenant.ip_allowlist,
    })
    .into_response())
}

/// Replaces the allow-list. A list that would shut out the very address asking is refused,
/// so a tenant cannot lock itself out by mistake.
async fn set_allowlist(
    caller: Caller,
    state: Arc<AppState>,
    client: Option<IpAddr>,
    body: AllowList,
) -> Result<Response, ApiError> {
    let cidrs = match body.cidrs {
        None => None,
        Some(list) => {
            if list.is_empty() || list.len() > 200 {
                return Err(ApiError::BadRequest(
                    "cidrs must list 1 to 200 entries, or be null".into(),
                ));
            }
            let mut normalised = Vec::with_capacity(list.len());
            for (i, c) in list.iter().enumerate() {
                let net = shomei_config::parse_cidr(c.trim())
                    .map_err(|e| ApiError::BadRequest(format!("cidrs[{i}]: {e}")))?;
                normalised.push(net.trunc().to_string());
            }
            if !admitted(Some(&normalised), client) {
                return Err(ApiError::Unprocessable(format!(
                    "the list does not admit this request's own address ({}); it would lock \
                     the tenant out",
                    client.map_or("unknown".to_owned(), |ip| ip.to_string())
                )));
            }
            Some(normalised)
        }
    };
    let stored = cidrs.clone();
    interact(&state.db, move |conn| {
        Ok(Tenant::set_ip_allowlist(
            conn,
            caller.tenant_id,
            stored.as_deref(),
        )?)
    })
    .await?;
    // Other API processes hear of it from PostgreSQL; this one's next request must see it now.
    state.key_cache.forget_tenant(caller.tenant_id);
    Ok(warp::reply::json(&AllowList { cidrs }).into_response())
}
