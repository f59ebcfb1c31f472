//! CSV reports (R-DATA-3, R-DATA-4): contract details, operation log, send-count statement,
//! accounts. See `shomei_jobs::reports` for the CSV conventions.

use std::sync::Arc;

use warp::reply::Response;
use warp::{Filter, Rejection};

use crate::AppState;

pub fn routes(
    _state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("v1" / "reports-not-yet").and(warp::get()).map(|| {
        use warp::Reply;
        warp::http::StatusCode::NOT_FOUND.into_response()
    })
}
