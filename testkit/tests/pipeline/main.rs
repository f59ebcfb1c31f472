//! End-to-end tests of the running pipeline: real `shomei-api` and `shomei-worker` processes,
//! PostgreSQL, Redis and SoftHSM2. One test binary, one module per concern.

mod access;
mod backlog;
mod bad_input;
mod batches;
mod cli;
mod data_at_rest;
mod deletion;
mod exports;
mod faults;
mod group_commit;
mod ledger;
mod login;
mod metrics;
mod openapi;
mod prepared;
mod prometheus;
mod reliability;
mod reports;
mod requests;
mod s3;
mod signing_flow;
mod timestamps;
mod tls;
mod verification;
mod webhooks;

use std::time::Duration;

/// Long enough for a debug build on a loaded two-core machine; a hang still fails the test.
pub const JOB_TIMEOUT: Duration = Duration::from_secs(60);

/// SHA-256 through `openssl dgst`, so the check shares no code with the API.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-r"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// Asserts an RFC 9457 problem response and returns its body.
pub async fn assert_problem(response: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], status, "{body}");
    assert!(
        body["type"].is_string() && body["title"].is_string() && body["detail"].is_string(),
        "{body}"
    );
    body
}
