//! Bulk exports (R-DATA-5).

use std::sync::Arc;

use warp::reply::Response;
use warp::{Filter, Rejection};

use crate::AppState;

pub fn routes(
    _state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("v1" / "exports-not-yet").and(warp::get()).map(|| {
        use warp::Reply;
        warp::http::StatusCode::NOT_FOUND.into_response()
    })
}
