//! The REST surface, one module per resource. Every route that touches tenant data takes a
//! [`Caller`](crate::auth::Caller) and scopes its queries by the caller's tenant, so another
//! tenant's ids answer 404 exactly like ids that do not exist.

mod access;
mod batches;
mod documents;
mod exports;
mod health;
mod jobs;
mod login;
mod openapi;
mod reports;
mod requests;
mod signer_identities;
mod signing;
mod tenant;
mod verification;
mod webhooks;

use std::sync::Arc;

use serde::Serialize;
use warp::http::{header, StatusCode};
use warp::reply::{Reply, Response};
use warp::{Filter, Rejection};

use crate::problem::{self, ApiError};
use crate::AppState;

pub fn all(
    state: Arc<AppState>,
) -> impl Filter<Extract = (impl warp::Reply,), Error = Rejection> + Clone {
    let gate = state.gate.clone();
    // Each resource's routes are boxed: one long chain of `or`s makes a type too deep for
    // the compiler's default recursion limit in release builds.
    let resources = [
        health::routes(state.clone()).boxed(),
        documents::routes(state.clone()).boxed(),
        jobs::routes(state.clone()).boxed(),
        verification::routes(state.clone()).boxed(),
        requests::routes(state.clone()).boxed(),
        signing::routes(state.clone()).boxed(),
        signer_identities::routes(state.clone()).boxed(),
        webhooks::routes(state.clone()).boxed(),
        reports::routes(state.clone()).boxed(),
        exports::routes(state.clone()).boxed(),
        batches::routes(state.clone()).boxed(),
        tenant::routes(state.clone()).boxed(),
        access::routes(state.clone()).boxed(),
        login::routes(state).boxed(),
        openapi::routes().boxed(),
        shomei_telemetry::metrics::route().boxed(),
    ];
    let [first, rest @ ..] = resources;
    let routes = rest
        .into_iter()
        .fold(first, |all, next| all.or(next).unify().boxed());
    per_address_limit(gate)
        .and(routes)
        .recover(problem::recover)
        .unify()
        .with(warp::trace(shomei_telemetry::access::request_span))
        .with(warp::log::custom(record_request))
}

/// Every request counts against its client address's rate (`429` past it), signing links
/// (no API key) included.
fn per_address_limit(
    gate: Arc<crate::client::Gate>,
) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    crate::client::client_addr(gate.clone())
        .and_then(move |ip: Option<std::net::IpAddr>| {
            let gate = gate.clone();
            async move {
                match ip {
                    Some(ip) => gate.check_ip(ip).map_err(warp::reject::custom),
                    None => Ok(()),
                }
            }
        })
        .untuple_one()
}

/// Counts a request and its latency by route template, method and status, and logs it
/// (`shomei_telemetry::access`).
fn record_request(info: warp::log::Info<'_>) {
    use shomei_telemetry::metrics;
    shomei_telemetry::access::line(&info);
    let route = metrics::route_template(info.path());
    let method = info.method().as_str();
    metrics::HTTP_REQUESTS
        .with_label_values(&[route.as_str(), method, info.status().as_str()])
        .inc();
    metrics::HTTP_DURATION
        .with_label_values(&[route.as_str(), method])
        .observe(info.elapsed().as_secs_f64());
}

/// A JSON body of at most `limit` bytes, read into `T`. It must be a JSON object: serde would
/// otherwise take an array for a struct's fields in order (`[null, null]` as a filter), which
/// no client means. Errors are `400` problems naming what is wrong.
fn json_body<T>(limit: u64) -> impl Filter<Extract = (T,), Error = Rejection> + Clone
where
    T: serde::de::DeserializeOwned + Send + 'static,
{
    warp::body::content_length_limit(limit)
        .and(warp::body::json::<serde_json::Value>())
        .and_then(|value: serde_json::Value| async move {
            if !value.is_object() {
                return Err(warp::reject::custom(ApiError::BadRequest(
                    "the body must be a JSON object".into(),
                )));
            }
            serde_json::from_value(value).map_err(|e| {
                warp::reject::custom(ApiError::BadRequest(format!("invalid JSON body: {e}")))
            })
        })
}

/// Hands `state` to a filter chain.
fn with_state(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Arc<AppState>,), Error = std::convert::Infallible> + Clone {
    warp::any().map(move || state.clone())
}

/// Handlers return `Result<Response, ApiError>`; errors become problem+json right here instead
/// of travelling as rejections through the other routes.
fn respond(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(|e| e.to_response())
}

/// A JSON body with a `Location` header: `201` for a created resource, `202` for a queued job.
fn created(body: &impl Serialize, location: &str, status: StatusCode) -> Response {
    warp::reply::with_header(
        warp::reply::with_status(warp::reply::json(body), status),
        header::LOCATION,
        location,
    )
    .into_response()
}

/// The caller's address as the audit trail records it ([`crate::client::Gate::client_addr`]:
/// the peer, or what trusted proxies report).
fn client_ip(client: Option<std::net::IpAddr>) -> Option<String> {
    client.map(|ip| ip.to_string())
}

/// A response body from any stream of chunks. warp needs a `Sync` body stream, which most
/// streams (object-store downloads, database pages) are not; a task forwards `source` through a
/// small channel instead, so at most a few chunks are in memory and a slow client slows the
/// source down.
fn body_stream<S, E>(
    source: S,
) -> impl futures::Stream<Item = Result<bytes::Bytes, E>> + Send + Sync + 'static
where
    S: futures::Stream<Item = Result<bytes::Bytes, E>> + Send + 'static,
    E: Send + 'static,
{
    use futures::StreamExt;

    struct Chunks<T>(tokio::sync::mpsc::Receiver<T>);
    impl<T> futures::Stream for Chunks<T> {
        type Item = T;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<T>> {
            self.0.poll_recv(cx)
        }
    }

    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let mut source = std::pin::pin!(source);
        while let Some(chunk) = source.next().await {
            if tx.send(chunk).await.is_err() {
                break; // the client went away
            }
        }
    });
    Chunks(rx)
}
