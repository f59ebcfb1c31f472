use serde_json::{json, Value};
use shomei_testkit::validate::{assert_externally_valid, Expected};
use shomei_testkit::{sample, TestApp, TestAppOptions};

use crate::{sha256_hex, JOB_TIMEOUT};

#[tokio::test(flavor = "multi_thread")]
async fn an_uploaded_contract_signed_through_the_queue_validates_with_independent_tools() {
    let app = TestApp::spawn().await;
    let pdf = sample("contract.pdf");

    let response = app
        .upload(&app.api_key, pdf.clone(), Some("業務委託契約書"))
        .await;
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let doc: Value = response.json().await.unwrap();
    let id = doc["id"].as_str().unwrap();
    assert_eq!(location, format!("/v1/documents/{id}"));
    assert_eq!(doc["sha256"], sha256_hex(&pdf));
    assert_eq!(doc["pages"], 2);
    assert_eq!(
        app.download(id).await,
        pdf,
        "before signing, the download is the upload"
    );

    let response = app
        .sign(&app.api_key, id, &json!({"signer": {"name": "山田 花子", "email": "hanako@example.jp"}, "reason": "契約締結", "location": "東京"}))
        .await;
    assert_eq!(response.status(), 202);
    let job_location = response.headers()["location"].to_str().unwrap().to_owned();
    let job_id = response.json::<Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(job_location, format!("/v1/jobs/{job_id}"));

    let job = app.wait_for_job(&job_id, JOB_TIMEOUT).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["kind"], "sign");
    assert_eq!(job["attempts"], 1);
    assert!(
        job["error"].is_null() && job["finished_at"].is_string() && job["created_at"].is_string()
    );

    let signed = app.download(id).await;
    assert_eq!(
        &signed[..pdf.len()],
        &pdf[..],
        "an incremental update keeps every earlier byte"
    );
    assert_eq!(job["result"]["sha256"], sha256_hex(&signed));
    let report = assert_externally_valid("e2e-one-signer", &signed, Expected::timestamped(1));
    assert!(
        report.contains("山田 花子") || report.contains("Shomei Dev Signing"),
        "{report}"
    );

    let meta: Value = app
        .get(&app.api_key, &format!("/v1/documents/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(meta["sha256"], sha256_hex(&signed));
    assert_eq!(meta["revision"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_signers_in_turn_leave_two_valid_signatures() {
    let app = TestApp::spawn().await;
    let id = app.upload_ok(sample("contract-objstm.pdf")).await;

    for signer in ["Taro Suzuki", "Hanako Yamada"] {
        let job_id = app.sign_ok(&id, signer).await;
        let job = app.wait_for_job(&job_id, JOB_TIMEOUT).await;
        assert_eq!(job["status"], "succeeded", "{job}");
    }
    assert_externally_valid(
        "e2e-two-signers",
        &app.download(&id).await,
        Expected::timestamped(2),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_signatures_requested_at_once_on_one_document_both_land() {
    let app = TestApp::spawn_with(TestAppOptions {
        workers: 2,
        ..Default::default()
    })
    .await;
    let id = app.upload_ok(sample("contract.pdf")).await;

    let (first, second) = tokio::join!(
        app.sign_ok(&id, "Taro Suzuki"),
        app.sign_ok(&id, "Hanako Yamada")
    );
    for job_id in [first, second] {
        let job = app.wait_for_job(&job_id, JOB_TIMEOUT).await;
        assert_eq!(job["status"], "succeeded", "{job}");
    }
    assert_externally_valid(
        "e2e-concurrent-signers",
        &app.download(&id).await,
        Expected::timestamped(2),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idempotency_key_returns_the_same_job_and_refuses_another_body() {
    let app = TestApp::spawn().await;
    let id = app.upload_ok(sample("contract.pdf")).await;
    let body = json!({"signer": {"name": "Taro Suzuki"}, "reason": "Approval"});
    let send = |body: Value| {
        let app = &app;
        let id = id.clone();
        async move {
            app.client
                .post(app.url(&format!("/v1/documents/{id}/sign")))
                .bearer_auth(&app.api_key)
                .header("idempotency-key", "order-4711")
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };

    let first = send(body.clone()).await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let again = send(body.clone()).await;
    assert_eq!(again.status(), 202);
    let again: Value = again.json().await.unwrap();
    assert_eq!(first["job_id"], again["job_id"]);

    let other = send(json!({"signer": {"name": "Someone Else"}})).await;
    assert_eq!(other.status(), 422);
    let problem: Value = other.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("Idempotency-Key"),
        "{problem}"
    );

    let job = app
        .wait_for_job(first["job_id"].as_str().unwrap(), JOB_TIMEOUT)
        .await;
    assert_eq!(job["status"], "succeeded");
    assert_externally_valid(
        "e2e-idempotent",
        &app.download(&id).await,
        Expected::timestamped(1),
    );
    assert_eq!(app.sql_count("SELECT count(*) AS n FROM jobs"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_readiness_report_every_dependency() {
    let app = TestApp::spawn().await;
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready: Value = app
        .client
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for part in ["postgresql", "redis", "hsm"] {
        assert_eq!(ready["checks"][part]["status"], "up", "{ready}");
    }
}
