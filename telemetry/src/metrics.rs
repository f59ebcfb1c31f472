//! Every Prometheus metric of every Shomei process, in one place (names per Prometheus
//! conventions: `_total` counters, `_seconds` durations, base units). A process exposes the
//! ones it touches at `/metrics` ([`render`]); the dashboard and alert rules in `dashboards/`
//! use exactly these names.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{
    register_gauge_vec, register_histogram, register_histogram_vec, register_int_counter,
    register_int_counter_vec, register_int_gauge, register_int_gauge_vec, GaugeVec, Histogram,
    HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};

/// Latency buckets from 1 ms to 2 min: HSM signatures, HTTP, jobs and queue waits all fit.
const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

macro_rules! metric {
    ($name:ident: $ty:ty = $make:expr) => {
        pub static $name: LazyLock<$ty> =
            LazyLock::new(|| $make.expect(concat!("registering ", stringify!($name))));
    };
}

metric!(BUILD_INFO: IntGaugeVec = register_int_gauge_vec!(
    "shomei_build_info", "Build of this process (always 1)", &["version", "process"]));

metric!(JOBS_SUBMITTED: IntCounterVec = register_int_counter_vec!(
    "shomei_jobs_submitted_total", "Jobs recorded and queued", &["kind"]));
metric!(JOBS_FINISHED: IntCounterVec = register_int_counter_vec!(
    "shomei_jobs_finished_total",
    "Job runs by outcome: succeeded, failed (for good) or retried (will run again)",
    &["kind", "outcome"]));
metric!(JOB_FAILURES: IntCounterVec = register_int_counter_vec!(
    "shomei_job_failures_total",
    "Failed job runs by reason: permanent, transient, timeout (cancelled past the kind's \
     timeout, retried) or gave_up (attempts spent)",
    &["kind", "reason"]));
metric!(JOBS_SWEPT: IntCounterVec = register_int_counter_vec!(
    "shomei_jobs_swept_total",
    "Jobs found running long past their timeout (worker died or hung), by outcome: requeued, \
     or failed (attempts spent)",
    &["kind", "outcome"]));
metric!(JOB_DURATION: HistogramVec = register_histogram_vec!(
    "shomei_job_duration_seconds", "One run of a job handler", &["kind"], SECONDS.to_vec()));
/// Group sizes from 1 to the most a group takes (`MAX_GROUP` in `shomei_jobs::group_commit`, 64).
const GROUP_SIZES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];
metric!(GROUP_COMMIT_SIZE: HistogramVec = register_histogram_vec!(
    "shomei_group_commit_size",
    "Job steps run as one statement or transaction, by step: in a worker start (claiming the \
     rows and reading the revisions document jobs start from) or record \
     (recording the runs' results); in the API submit (writing submitted jobs' rows)",
    &["step"], GROUP_SIZES.to_vec()));
metric!(GROUP_COMMIT_DURATION: HistogramVec = register_histogram_vec!(
    "shomei_group_commit_duration_seconds",
    "One group's statement or transaction, from its hand-off to a blocking thread to its \
     result, by step (as shomei_group_commit_size)",
    &["step"], SECONDS.to_vec()));
metric!(GROUP_COMMIT_SPLITS: IntCounterVec = register_int_counter_vec!(
    "shomei_group_commit_splits_total",
    "Groups whose statement or transaction failed, their members then run one by one, by step \
     (record, submit)",
    &["step"]));
metric!(JOB_QUEUE_WAIT: HistogramVec = register_histogram_vec!(
    "shomei_job_queue_wait_seconds",
    "From a job's creation to the start of its first run", &["kind"], SECONDS.to_vec()));
metric!(QUEUE_DEPTH: IntGaugeVec = register_int_gauge_vec!(
    "shomei_queue_depth", "Unfinished jobs in PostgreSQL by kind and status", &["kind", "status"]));
metric!(QUEUE_OLDEST_AGE: GaugeVec = register_gauge_vec!(
    "shomei_queue_oldest_age_seconds", "Age of the oldest queued job (0 when none)", &["kind"]));

metric!(DOCUMENTS_SIGNED: IntCounterVec = register_int_counter_vec!(
    "shomei_documents_signed_total", "Signatures added to documents, by PAdES level", &["level"]));

metric!(HSM_POOL_SESSIONS: IntGaugeVec = register_int_gauge_vec!(
    "shomei_hsm_pool_sessions", "Logged-in PKCS#11 sessions by state", &["state"]));
metric!(HSM_POOL_MAX: IntGauge = register_int_gauge!(
    "shomei_hsm_pool_max_sessions", "Most sessions the pool opens"));
metric!(HSM_SESSION_WAIT: Histogram = register_histogram!(
    "shomei_hsm_session_wait_seconds", "Waiting for a free HSM session", SECONDS.to_vec()));
metric!(HSM_SIGN_DURATION: HistogramVec = register_histogram_vec!(
    "shomei_hsm_sign_duration_seconds", "One C_Sign in the HSM", &["key"], SECONDS.to_vec()));
metric!(HSM_ERRORS: IntCounter = register_int_counter!(
    "shomei_hsm_errors_total", "PKCS#11 calls that failed (sessions discarded)"));
metric!(HSM_CALLS_ABANDONED: IntCounter = register_int_counter!(
    "shomei_hsm_calls_abandoned_total",
    "PKCS#11 calls still running when the module had to be initialised again (threads left blocked)"));

metric!(TSA_CLIENT_DURATION: Histogram = register_histogram!(
    "shomei_tsa_client_request_duration_seconds",
    "Obtaining one time-stamp token (all TSAs and attempts)", SECONDS.to_vec()));
metric!(TSA_CLIENT_FAILURES: IntCounter = register_int_counter!(
    "shomei_tsa_client_failures_total", "Time-stamps no configured TSA could give"));
metric!(TSA_TOKENS_ISSUED: IntCounter = register_int_counter!(
    "shomei_tsa_tokens_issued_total", "Tokens our TSA signed"));
metric!(TSA_REQUESTS: IntCounterVec = register_int_counter_vec!(
    "shomei_tsa_requests_total", "Requests to our TSA by status", &["status"]));

metric!(WEBHOOK_DELIVERIES: IntCounterVec = register_int_counter_vec!(
    "shomei_webhook_deliveries_total", "Webhook delivery attempts by outcome", &["outcome"]));
metric!(WEBHOOK_ENDPOINTS_DISABLED: IntCounter = register_int_counter!(
    "shomei_webhook_endpoints_disabled_total", "Endpoints disabled after answering 410"));
metric!(EMAILS: IntCounterVec = register_int_counter_vec!(
    "shomei_emails_total", "E-mails by outcome: sent, failed (for good) or retry", &["outcome"]));

metric!(HTTP_REQUESTS: IntCounterVec = register_int_counter_vec!(
    "shomei_http_requests_total", "API requests by route template, method and status",
    &["route", "method", "status"]));
metric!(HTTP_DURATION: HistogramVec = register_histogram_vec!(
    "shomei_http_request_duration_seconds", "API request latency by route template and method",
    &["route", "method"], SECONDS.to_vec()));

metric!(KEY_LOOKUPS: IntCounterVec = register_int_counter_vec!(
    "shomei_api_key_lookups_total",
    "API keys checked, by where they were found: cache (checked before, unchanged since) or \
     database",
    &["source"]));

/// Records this process's build and registers the unlabelled metrics, so they are exposed
/// (at zero) before their first event and `increase()` sees that event.
pub fn init(process: &str) {
    BUILD_INFO
        .with_label_values(&[env!("CARGO_PKG_VERSION"), process])
        .set(1);
    LazyLock::force(&HSM_POOL_MAX);
    LazyLock::force(&HSM_SESSION_WAIT);
    LazyLock::force(&HSM_ERRORS);
    LazyLock::force(&HSM_CALLS_ABANDONED);
    LazyLock::force(&TSA_CLIENT_DURATION);
    LazyLock::force(&TSA_CLIENT_FAILURES);
    LazyLock::force(&TSA_TOKENS_ISSUED);
    LazyLock::force(&WEBHOOK_ENDPOINTS_DISABLED);
}

/// Seconds as Prometheus wants them.
pub fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The text exposition of every registered metric.
pub fn render() -> String {
    prometheus::TextEncoder::new()
        .encode_to_string(&prometheus::gather())
        .unwrap_or_else(|e| format!("# encoding metrics failed: {e}\n"))
}

/// `GET /metrics`, for processes that already serve HTTP (API, TSA).
pub fn route(
) -> impl warp::Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    use warp::Filter;
    warp::path!("metrics").and(warp::get()).map(|| {
        use warp::Reply;
        warp::reply::with_header(
            render(),
            "content-type",
            "text/plain; version=0.0.4; charset=utf-8",
        )
        .into_response()
    })
}

/// Serves `/metrics` on `addr` in the background (workers, which serve no other HTTP); port 0
/// picks a free port. Returns the address bound.
pub async fn serve(addr: std::net::SocketAddr) -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(warp::serve(route()).incoming(listener).run());
    Ok(bound)
}

/// The route template of a request path for the `route` label: ids (UUIDs), signing-link tokens
/// (64 hex digits) and numbers become `{id}`, `{token}` and `{n}`, so the label's values stay
/// few whatever the traffic.
pub fn route_template(path: &str) -> String {
    let parts: Vec<&str> = path
        .split('/')
        .map(|segment| {
            if segment.len() == 36 && segment.chars().filter(|c| *c == '-').count() == 4 {
                "{id}"
            } else if crate::access::is_token(segment) {
                "{token}"
            } else if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
                "{n}"
            } else {
                segment
            }
        })
        .collect();
    let template = parts.join("/");
    // Anything outside the API's own paths (scanners, typos) is one value, not many.
    if template.starts_with("/v1/")
        || ["/healthz", "/readyz", "/metrics"].contains(&template.as_str())
    {
        template
    } else {
        "other".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_become_templates() {
        assert_eq!(
            route_template("/v1/documents/01a2156e-a5c7-712a-95fc-3968358a6fb7/sign"),
            "/v1/documents/{id}/sign"
        );
        assert_eq!(
            route_template(&format!("/v1/signing/{}/code", "ab".repeat(32))),
            "/v1/signing/{token}/code"
        );
        assert_eq!(
            route_template("/v1/exports/0193/parts/2"),
            "/v1/exports/{n}/parts/{n}"
        );
        assert_eq!(route_template("/wp-admin/login.php"), "other");
    }

    #[test]
    fn the_exposition_names_every_metric_family_once() {
        init("test");
        DOCUMENTS_SIGNED.with_label_values(&["B-T"]).inc();
        let text = render();
        assert!(
            text.contains("shomei_build_info{process=\"test\""),
            "{text}"
        );
        assert!(text.contains("shomei_documents_signed_total{level=\"B-T\"} 1"));
        assert_eq!(
            text.matches("# TYPE shomei_documents_signed_total counter")
                .count(),
            1
        );
    }
}
