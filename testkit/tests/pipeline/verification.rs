use serde_json::Value;
use shomei_testkit::validate::embedded_signatures;
use shomei_testkit::{sample, TestApp};

use crate::{assert_problem, JOB_TIMEOUT};

async fn verify_upload(app: &TestApp, pdf: Vec<u8>) -> reqwest::Response {
    app.client
        .post(app.url("/v1/verify"))
        .bearer_auth(&app.api_key)
        .header("content-type", "application/pdf")
        .body(pdf)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_concluded_contract_verifies_at_b_lta_and_a_tampered_copy_does_not() {
    let app = TestApp::spawn().await;
    let document = app.upload_ok(sample("contract.pdf")).await;
    let job = app
        .wait_for_job(&app.sign_ok(&document, "Taro Suzuki").await, JOB_TIMEOUT)
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");

    let signed: Value = app
        .get(
            &app.api_key,
            &format!("/v1/documents/{document}/verification"),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(signed["report"]["valid"], true, "{signed}");
    assert_eq!(signed["report"]["level"], "B-T", "{signed}");
    assert_eq!(signed["revision"], 1);

    let job_id = app
        .queue_job(&format!("/v1/documents/{document}/timestamp"))
        .await;
    assert_eq!(
        app.wait_for_job(&job_id, JOB_TIMEOUT).await["status"],
        "succeeded"
    );

    let concluded: Value = app
        .get(
            &app.api_key,
            &format!("/v1/documents/{document}/verification"),
        )
        .await
        .json()
        .await
        .unwrap();
    let report = &concluded["report"];
    assert_eq!(report["valid"], true, "{concluded}");
    assert_eq!(report["level"], "B-LTA", "{concluded}");
    let signatures = report["signatures"].as_array().unwrap();
    assert_eq!(signatures.len(), 2, "{concluded}");
    assert_eq!(signatures[0]["kind"], "signature");
    assert_eq!(signatures[0]["certificate_chain_trusted"], true);
    assert_eq!(signatures[0]["timestamp"]["valid"], true);
    assert_eq!(signatures[1]["kind"], "document_timestamp");

    // One byte inside the signed range of the signature, flipped.
    let mut tampered = app.download(&document).await;
    let first = &embedded_signatures(&tampered)[0];
    let inside = first.signed_bytes.len() / 3;
    assert!(inside < tampered.len());
    tampered[inside] ^= 0x01;
    let response = verify_upload(&app, tampered).await;
    assert_eq!(response.status(), 200);
    let report: Value = response.json().await.unwrap();
    assert_eq!(report["valid"], false, "{report}");
    assert_eq!(report["signatures"][0]["integrity"], false, "{report}");

    assert_problem(verify_upload(&app, b"not a pdf".to_vec()).await, 422).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bulk_verification_reports_a_document_whose_stored_bytes_changed() {
    let app = TestApp::spawn().await;
    let mut documents = Vec::new();
    for signer in ["Taro Suzuki", "Hanako Yamada"] {
        let document = app.upload_ok(sample("contract.pdf")).await;
        let job = app
            .wait_for_job(&app.sign_ok(&document, signer).await, JOB_TIMEOUT)
            .await;
        assert_eq!(job["status"], "succeeded", "{job}");
        documents.push(document);
    }
    // Someone with access to the storage alters the signed file of the second document.
    let stored = app.sql_texts(&format!(
        "SELECT storage_key AS t FROM document_revisions WHERE document_id = '{}' \
         ORDER BY revision DESC LIMIT 1",
        documents[1]
    ));
    let path = app.storage_dir().join(&stored[0]);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();

    let job_id = app.queue_job("/v1/verifications").await;
    let job = app.wait_for_job(&job_id, JOB_TIMEOUT).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["kind"], "verify");
    let result = &job["result"];
    assert_eq!(result["documents"], 2, "{job}");
    assert_eq!(result["valid"], 1, "{job}");
    assert_eq!(result["changed_since_stored"], 1, "{job}");
    assert_eq!(
        result["invalid_documents"],
        serde_json::json!([documents[1]]),
        "{job}"
    );
    let recorded = app.sql_count(&format!(
        "SELECT count(*) AS n FROM verification_reports WHERE job_id = '{job_id}' AND valid"
    ));
    assert_eq!(recorded, 1);
}
