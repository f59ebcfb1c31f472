use std::process::Command;

use serde_json::{json, Value};
use shomei_testkit::validate::{assert_externally_valid, Expected};
use shomei_testkit::{sample, TestApp, TestAppOptions};

use crate::JOB_TIMEOUT;

async fn sign_with(app: &TestApp, document: &str, body: Value) -> Value {
    let response = app.sign(&app.api_key, document, &body).await;
    assert_eq!(response.status(), 202);
    let job: Value = response.json().await.unwrap();
    app.wait_for_job(job["job_id"].as_str().unwrap(), JOB_TIMEOUT)
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn signatures_are_time_stamped_unless_b_b_is_asked_for() {
    let app = TestApp::spawn().await;

    let default = app.upload_ok(sample("contract.pdf")).await;
    let job = sign_with(&app, &default, json!({"signer": {"name": "Taro Suzuki"}})).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_externally_valid(
        "e2e-default-b-t",
        &app.download(&default).await,
        Expected::timestamped(1),
    );

    let basic = app.upload_ok(sample("contract.pdf")).await;
    let job = sign_with(
        &app,
        &basic,
        json!({"signer": {"name": "Taro Suzuki"}, "level": "B-B"}),
    )
    .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_externally_valid("e2e-b-b", &app.download(&basic).await, Expected::basic(1));

    let bad = app
        .sign(
            &app.api_key,
            &basic,
            &json!({"signer": {"name": "A"}, "level": "B-X"}),
        )
        .await;
    crate::assert_problem(bad, 400).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_contract_concluded_by_a_document_time_stamp_carries_its_validation_data() {
    let app = TestApp::spawn().await;
    let document = app.upload_ok(sample("contract-objstm.pdf")).await;
    for signer in ["Taro Suzuki", "Hanako Yamada"] {
        let job = app
            .wait_for_job(&app.sign_ok(&document, signer).await, JOB_TIMEOUT)
            .await;
        assert_eq!(job["status"], "succeeded", "{job}");
    }

    let job_id = app
        .queue_job(&format!("/v1/documents/{document}/timestamp"))
        .await;
    let job = app.wait_for_job(&job_id, JOB_TIMEOUT).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["kind"], "timestamp");

    let pdf = app.download(&document).await;
    let expected = Expected::timestamped(2).and_document_timestamps(1);
    assert_externally_valid("e2e-b-lta", &pdf, expected);

    // The DSS, as qpdf reads it: certificates and the CA's CRL of every signature and token.
    let path = app.log_dir().join("b-lta.pdf");
    std::fs::write(&path, &pdf).unwrap();
    let qdf = Command::new("qpdf")
        .args(["--qdf", "--object-streams=disable"])
        .arg(&path)
        .arg("-")
        .output()
        .unwrap();
    let qdf = String::from_utf8_lossy(&qdf.stdout);
    for key in ["/DSS", "/Certs", "/CRLs", "/DocTimeStamp", "/ETSI.RFC3161"] {
        assert!(qdf.contains(key), "{key} missing from the concluded file");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_tsa_a_b_t_signature_fails_with_the_reason_and_nothing_is_signed() {
    let mut app = TestApp::spawn().await;
    app.stop_tsa();
    let document = app.upload_ok(sample("contract.pdf")).await;

    let job = app
        .wait_for_job(&app.sign_ok(&document, "Taro Suzuki").await, JOB_TIMEOUT)
        .await;
    assert_eq!(job["status"], "failed", "{job}");
    let error = job["error"].as_str().unwrap();
    assert!(
        error.contains("time-stamp") && error.contains("127.0.0.1"),
        "{error}"
    );
    assert_eq!(
        job["attempts"], 5,
        "retried up to SHOMEI_JOB_MAX_ATTEMPTS: {job}"
    );
    assert_eq!(
        app.download(&document).await,
        sample("contract.pdf"),
        "no signature without its time-stamp"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_next_tsa_in_the_list_takes_over_when_the_first_is_down() {
    // Port 9 (discard) is closed on loopback: the first TSA refuses every connection.
    let options = TestAppOptions {
        tsa_urls_before: vec!["http://127.0.0.1:9/".into()],
        ..Default::default()
    };
    let app = TestApp::spawn_with(options).await;
    let document = app.upload_ok(sample("contract.pdf")).await;

    let job = app
        .wait_for_job(&app.sign_ok(&document, "Taro Suzuki").await, JOB_TIMEOUT)
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 1, "{job}");
    assert_externally_valid(
        "e2e-second-tsa",
        &app.download(&document).await,
        Expected::timestamped(1),
    );
}
