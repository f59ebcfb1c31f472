#![doc = include_str!("../README.md")]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use chrono::Utc;
use der::asn1::ObjectIdentifier;
use der::Encode;
use tokio::net::TcpListener;
use warp::http::{header, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use shomei_signing::{
    reply_to_query, FailureInfo, Hsm, HsmError, PkiStatusInfo, TimeStampResp, TokenIssue,
    ID_KP_TIME_STAMPING,
};

/// Largest query accepted; a SHA-512 request with a policy and a nonce is under 200 bytes.
pub const MAX_QUERY_BYTES: u64 = 64 * 1024;
/// Accuracy declared in every token: the host clock is assumed NTP-disciplined to well
/// within a second.
pub const ACCURACY_MILLIS: u32 = 1000;

const QUERY_TYPE: &str = "application/timestamp-query";
const REPLY_TYPE: &str = "application/timestamp-reply";

/// What the request handlers share: the HSM, the TSA key and the policy.
pub struct TsaState {
    hsm: Hsm,
    key_label: String,
    policy: ObjectIdentifier,
}

impl TsaState {
    /// Checks that `key_label` names a key whose certificate may sign time-stamps (critical
    /// extendedKeyUsage timeStamping only, RFC 3161 §2.3), so a misconfigured TSA fails at
    /// start-up instead of issuing tokens nobody accepts. Blocking (PKCS#11).
    pub fn new(hsm: Hsm, key_label: &str, policy: ObjectIdentifier) -> anyhow::Result<Self> {
        let identity = hsm
            .identity(key_label)
            .with_context(|| format!("loading TSA key {key_label:?}"))?;
        let eku = identity
            .certificate()
            .tbs_certificate()
            .get_extension::<x509_cert::ext::pkix::ExtendedKeyUsage>()
            .context("reading the TSA certificate's extendedKeyUsage")?;
        match eku {
            Some((true, eku)) if eku.0 == [ID_KP_TIME_STAMPING] => {}
            _ => anyhow::bail!(
                "certificate of {key_label:?} lacks a critical extendedKeyUsage of timeStamping only"
            ),
        }
        Ok(Self {
            hsm,
            key_label: key_label.to_owned(),
            policy,
        })
    }

    pub fn policy(&self) -> &ObjectIdentifier {
        &self.policy
    }

    /// Answers one DER query with a DER reply (blocking: one HSM signature).
    pub fn reply(&self, query: &[u8]) -> Result<Vec<u8>, HsmError> {
        let issue = TokenIssue {
            key_label: &self.key_label,
            policy: &self.policy,
            serial_number: new_serial_number(),
            // Taken right before signing, on the blocking thread, so queueing for the
            // HSM does not skew it.
            gen_time: Utc::now(),
            accuracy_millis: ACCURACY_MILLIS,
        };
        reply_to_query(&self.hsm, &issue, query)
    }
}

/// A serial number unique across restarts and across TSA instances without coordination:
/// a UUIDv7 read as an integer (48-bit millisecond time, then 74 random bits; within one
/// process the uuid crate also keeps them increasing).
pub fn new_serial_number() -> u128 {
    uuid::Uuid::now_v7().as_u128()
}

/// Binds `addr`; returns the listener and the address actually bound (port 0 picks a free
/// port, which the tests use).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Serves the TSA on `listener` until `shutdown` resolves, then finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: Arc<TsaState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    warp::serve(routes(state))
        .incoming(listener)
        .graceful(shutdown)
        .run()
        .await;
}

/// `POST /` and `POST /tsa` (RFC 3161 §3.4), `GET /healthz`, `GET /readyz`, `GET /metrics`.
pub fn routes(
    state: Arc<TsaState>,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let with_state = warp::any().map(move || state.clone());
    let timestamp = warp::post()
        .and(warp::path::end().or(warp::path!("tsa")).unify())
        .and(query_content_type())
        .and(warp::body::content_length_limit(MAX_QUERY_BYTES))
        .and(warp::body::bytes())
        .and(with_state.clone())
        .then(timestamp);
    let healthz = warp::get()
        .and(warp::path!("healthz"))
        .map(|| warp::reply::with_status("ok", StatusCode::OK).into_response());
    let readyz = warp::get()
        .and(warp::path!("readyz"))
        .and(with_state)
        .then(readyz);
    timestamp
        .or(healthz)
        .unify()
        .or(readyz)
        .unify()
        .or(shomei_telemetry::metrics::route())
        .unify()
        .recover(recover)
        .unify()
        .with(warp::trace(shomei_telemetry::access::request_span))
        .with(warp::log::custom(|info| {
            shomei_telemetry::access::line(&info)
        }))
}

#[derive(Debug)]
struct WrongContentType;

impl warp::reject::Reject for WrongContentType {}

/// The media type without parameters, compared case-insensitively (RFC 9110 §8.3.1).
fn query_content_type() -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::header::optional::<String>("content-type")
        .and_then(|value: Option<String>| async move {
            let media_type = value
                .as_deref()
                .and_then(|v| v.split(';').next())
                .map(str::trim);
            match media_type {
                Some(t) if t.eq_ignore_ascii_case(QUERY_TYPE) => Ok(()),
                _ => Err(warp::reject::custom(WrongContentType)),
            }
        })
        .untuple_one()
}

async fn timestamp(query: Bytes, state: Arc<TsaState>) -> Response {
    let span = tracing::Span::current();
    let result = tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        state.reply(&query)
    })
    .await;
    match result {
        Ok(Ok(der)) => der_reply(StatusCode::OK, der),
        Ok(Err(e)) => {
            tracing::error!(error = %e, permanent = e.is_permanent(), "cannot issue time-stamp");
            system_failure()
        }
        Err(e) => {
            tracing::error!(error = %e, "time-stamp task failed");
            system_failure()
        }
    }
}

/// 503 so load balancers and clients try elsewhere, with a proper RFC 3161 reply as body
/// for clients that read it.
fn system_failure() -> Response {
    let response = TimeStampResp {
        status: PkiStatusInfo::rejection(
            FailureInfo::SystemFailure,
            "time-stamping is unavailable",
        ),
        time_stamp_token: None,
    };
    match response.to_der() {
        Ok(der) => der_reply(StatusCode::SERVICE_UNAVAILABLE, der),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

fn der_reply(status: StatusCode, der: Vec<u8>) -> Response {
    let mut response = warp::reply::with_status(der, status).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(REPLY_TYPE),
    );
    response
}

async fn readyz(state: Arc<TsaState>) -> Response {
    match tokio::task::spawn_blocking(move || state.hsm.check()).await {
        Ok(Ok(())) => warp::reply::with_status("ready", StatusCode::OK).into_response(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "HSM not ready");
            warp::reply::with_status("HSM not ready", StatusCode::SERVICE_UNAVAILABLE)
                .into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "readiness task failed");
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}

async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    use warp::reject::{LengthRequired, MethodNotAllowed, PayloadTooLarge};
    let (status, text) = if rejection.find::<WrongContentType>().is_some() {
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be a DER TimeStampReq (Content-Type: application/timestamp-query)",
        )
    } else if rejection.find::<PayloadTooLarge>().is_some() {
        (StatusCode::PAYLOAD_TOO_LARGE, "time-stamp query too large")
    } else if rejection.find::<LengthRequired>().is_some() {
        (StatusCode::LENGTH_REQUIRED, "Content-Length required")
    } else if rejection.find::<MethodNotAllowed>().is_some() {
        (StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
    } else if rejection.is_not_found() {
        (StatusCode::NOT_FOUND, "not found")
    } else {
        tracing::warn!(?rejection, "unhandled rejection");
        (StatusCode::BAD_REQUEST, "bad request")
    };
    Ok(warp::reply::with_status(text, status).into_response())
}
