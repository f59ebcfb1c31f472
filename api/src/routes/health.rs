//! `GET /healthz`: the process is up. `GET /readyz`: PostgreSQL, Redis and the HSM answer.

use std::sync::Arc;

use serde_json::json;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};
use warp::{Filter, Rejection};

use super::with_state;
use crate::AppState;

pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| warp::reply::json(&json!({"status": "ok"})).into_response());
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(with_state(state))
        .then(readyz);
    healthz.or(readyz).unify()
}

async fn readyz(state: Arc<AppState>) -> Response {
    let hsm = state.hsm.clone();
    let (db, queue, hsm) = tokio::join!(
        shomei_schema::interact(&state.db, shomei_schema::ping),
        state.queue.ping(),
        tokio::task::spawn_blocking(move || hsm.check()),
    );
    let checks = [
        ("postgresql", db.err().map(|e| e.to_string())),
        ("redis", queue.err().map(|e| e.to_string())),
        (
            "hsm",
            match hsm {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(e.to_string()),
            },
        ),
    ];
    let ready = checks.iter().all(|(_, err)| err.is_none());
    let body = json!({
        "status": if ready { "ready" } else { "unavailable" },
        "checks": checks.iter().map(|(name, err)| (name.to_string(), match err {
            None => json!({"status": "up"}),
            Some(e) => json!({"status": "down", "error": e}),
        })).collect::<serde_json::Map<_, _>>(),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}
