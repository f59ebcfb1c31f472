//! Batches end to end: many sign (and sign-and-conclude) items in one call, counted per status,
//! with `batch.completed` delivered to a webhook receiver when the last job finishes.

use std::time::Duration;

use serde_json::{json, Value};

use shomei_testkit::validate::{assert_externally_valid, Expected};
use shomei_testkit::webhook_receiver::WebhookReceiver;
use shomei_testkit::{sample, TestApp};

#[tokio::test]
async fn a_batch_signs_every_item_and_announces_its_completion() {
    let app = TestApp::spawn().await;
    let receiver = WebhookReceiver::start("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").await;
    let endpoint: Value = app
        .post_json(
            Some(&app.api_key),
            "/v1/webhooks",
            &json!({"url": receiver.url(), "event_kinds": ["batch.completed"]}),
        )
        .await
        .json()
        .await
        .unwrap();
    receiver.set_secret(endpoint["secret"].as_str().unwrap());

    let mut items = Vec::new();
    let mut documents = Vec::new();
    for i in 0..6 {
        let id = app.upload_ok(sample("contract.pdf")).await;
        items.push(json!({
            "document_id": id,
            "signer": {"name": format!("Signer {i}"), "email": "batch@example.com"},
            "reason": "一括署名",
            "conclude": i < 2,
        }));
        documents.push(id);
    }
    let response = app
        .post_json(Some(&app.api_key), "/v1/batches", &json!({"items": items}))
        .await;
    assert_eq!(response.status(), 202);
    let batch: Value = response.json().await.unwrap();
    assert_eq!(batch["total"], 6);
    let batch_id = batch["batch_id"].as_str().unwrap();

    let hooks = receiver.wait_for(1, Duration::from_secs(90)).await;
    assert!(hooks[0].verified);
    assert_eq!(hooks[0].body["type"], "batch.completed");
    assert_eq!(hooks[0].body["data"]["batch_id"], batch_id);
    assert_eq!(
        hooks[0].body["data"]["succeeded"], 8,
        "6 signatures and 2 conclusions"
    );
    assert_eq!(hooks[0].body["data"]["failed"], 0);

    let view: Value = app
        .get(&app.api_key, &format!("/v1/batches/{batch_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(view["jobs"]["succeeded"], 8, "{view}");
    assert_eq!(view["jobs"]["queued"], 0);
    assert_eq!(view["documents_signed"], 6);
    assert!(view["completed_at"].is_string());
    assert!(view["documents_per_second"].as_f64().unwrap() > 0.0);

    assert_externally_valid(
        "batch-concluded",
        &app.download(&documents[0]).await,
        Expected::timestamped(1).and_document_timestamps(1),
    );
    assert_externally_valid(
        "batch-signed",
        &app.download(&documents[5]).await,
        Expected::timestamped(1),
    );
    // Exactly one completion, however the last jobs raced.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.received().len(), 1);
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM events WHERE kind = 'batch.completed'"),
        1
    );
}

#[tokio::test]
async fn a_bad_batch_is_refused_whole_with_the_item_named() {
    let app = TestApp::spawn().await;
    let own = app.upload_ok(sample("contract.pdf")).await;
    let stranger = app.create_tenant("Another company").await;
    let foreign: Value = app
        .upload(&stranger, sample("contract.pdf"), Some("theirs"))
        .await
        .json()
        .await
        .unwrap();
    let good = json!({"document_id": own, "signer": {"name": "A"}});
    for (items, status, needle) in [
        (json!([]), 400, "1 to 10000"),
        (
            json!([good, {"document_id": own, "signer": {"name": ""}}]),
            400,
            "items[1]",
        ),
        (
            json!([good, {"document_id": own, "signer": {"name": "B"}, "colour": "red"}]),
            400,
            "items[1]",
        ),
        (
            json!([good, {"document_id": foreign["id"], "signer": {"name": "B"}}]),
            404,
            "document",
        ),
    ] {
        let response = app
            .post_json(Some(&app.api_key), "/v1/batches", &json!({"items": items}))
            .await;
        assert_eq!(response.status(), status, "{items}");
        let problem: Value = response.json().await.unwrap();
        assert!(
            problem["detail"].as_str().unwrap().contains(needle),
            "{problem}"
        );
    }
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM jobs"),
        0,
        "nothing accepted"
    );
}

#[tokio::test]
async fn a_batch_whose_last_worker_stopped_before_completing_it_is_completed_by_the_reconciler() {
    // The state a worker leaves when it stops between committing the batch's last job and
    // completing the batch: every job finished, the batch still open, no event.
    let app = TestApp::spawn().await;
    let batch_id = uuid::Uuid::new_v4();
    let tenant = &app.tenant_id;
    // One statement, as the API does it in one transaction: a reconciler pass between a batch
    // and its jobs would find a batch with no unfinished job and complete it empty.
    app.sql_execute(&format!(
        "WITH batch AS (INSERT INTO batches (id, tenant_id, total, created_by) \
         VALUES ('{batch_id}', '{tenant}', 2, 'test') RETURNING id) \
         INSERT INTO jobs (id, tenant_id, kind, payload, status, batch_id, finished_at) \
         SELECT gen_random_uuid(), '{tenant}', 'sign', '{{}}', status, batch.id, now() \
         FROM batch, (VALUES ('succeeded'), ('failed')) AS finished (status)"
    ));
    let completed = format!(
        "SELECT count(*) AS n FROM events WHERE kind = 'batch.completed' \
         AND data->>'batch_id' = '{batch_id}' AND (data->>'succeeded')::int = 1 \
         AND (data->>'failed')::int = 1"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while app.sql_count(&completed) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the reconciler did not complete the batch"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let view: Value = app
        .get(&app.api_key, &format!("/v1/batches/{batch_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert!(view["completed_at"].is_string(), "{view}");
    // Completed once, though every worker's reconciler keeps looking.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(app.sql_count(&completed), 1);
}
