//! Every process serves Prometheus metrics that move with the work done, and each exposition
//! passes `promtool check metrics` (Prometheus's own linter).

use std::io::Write;
use std::process::{Command, Stdio};

use shomei_testkit::{sample, TestApp};

use crate::JOB_TIMEOUT;

pub(crate) async fn scrape(url: &str) -> String {
    let response = reqwest::get(url).await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    response.text().await.unwrap()
}

/// The value of the one sample whose line starts with `series` (name and labels).
pub(crate) fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
}

fn promtool_check(name: &str, text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus, installed by scripts/prepare-machine.sh)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics ({name}): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn every_process_serves_metrics_that_follow_the_work() {
    let app = TestApp::spawn().await;
    let document = app.upload_ok(sample("contract.pdf")).await;
    let job = app.sign_ok(&document, "Metrics").await;
    assert_eq!(
        app.wait_for_job(&job, JOB_TIMEOUT).await["status"],
        "succeeded"
    );
    // The queue-depth gauges are refreshed by the reconciler (every second in tests).
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;

    let worker = scrape(app.worker_metrics_url(0)).await;
    assert_eq!(
        value(&worker, "shomei_documents_signed_total{level=\"B-T\"}"),
        1.0
    );
    assert_eq!(
        value(
            &worker,
            "shomei_jobs_finished_total{kind=\"sign\",outcome=\"succeeded\"}"
        ),
        1.0
    );
    assert_eq!(
        value(&worker, "shomei_job_duration_seconds_count{kind=\"sign\"}"),
        1.0
    );
    assert!(
        value(
            &worker,
            "shomei_hsm_sign_duration_seconds_count{key=\"rsa\"}"
        ) >= 1.0
    );
    assert!(value(&worker, "shomei_tsa_client_request_duration_seconds_count") >= 1.0);
    assert_eq!(
        value(
            &worker,
            "shomei_queue_depth{kind=\"sign\",status=\"queued\"}"
        ),
        0.0
    );
    assert!(value(&worker, "shomei_hsm_pool_max_sessions") >= 1.0);
    assert!(worker.contains("shomei_build_info{process=\"worker\""));
    assert!(worker.contains("process_resident_memory_bytes"));

    let api = scrape(&app.url("/metrics")).await;
    assert_eq!(
        value(
            &api,
            "shomei_http_requests_total{method=\"POST\",route=\"/v1/documents/{id}/sign\",status=\"202\"}"
        ),
        1.0
    );
    assert_eq!(
        value(&api, "shomei_jobs_submitted_total{kind=\"sign\"}"),
        1.0
    );

    let tsa = scrape(&app.tsa_url("/metrics")).await;
    assert!(value(&tsa, "shomei_tsa_tokens_issued_total") >= 1.0);
    assert!(value(&tsa, "shomei_tsa_requests_total{status=\"granted\"}") >= 1.0);

    for (name, text) in [("worker", &worker), ("api", &api), ("tsa", &tsa)] {
        promtool_check(name, text);
    }
}
