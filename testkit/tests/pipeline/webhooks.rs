//! Webhooks end to end: the worker delivers events to real HTTP receivers that check every
//! signature with the Standard Webhooks authors' own library (not our code).

use std::time::Duration;

use serde_json::{json, Value};

use shomei_testkit::webhook_receiver::WebhookReceiver;
use shomei_testkit::{sample, TestApp, TestAppOptions};

const HOOK_TIMEOUT: Duration = Duration::from_secs(60);
/// A secret the receiver starts with; replaced by the one Shomei issues.
const PLACEHOLDER: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// Starts a receiver and registers it for `kinds`; returns it with the endpoint's id.
async fn register(app: &TestApp, kinds: Value) -> (WebhookReceiver, String) {
    let receiver = WebhookReceiver::start(PLACEHOLDER).await;
    let response = app
        .post_json(
            Some(&app.api_key),
            "/v1/webhooks",
            &json!({"url": receiver.url(), "event_kinds": kinds}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let endpoint: Value = response.json().await.unwrap();
    let secret = endpoint["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_"));
    receiver.set_secret(secret);
    (receiver, endpoint["id"].as_str().unwrap().to_owned())
}

async fn get_json(app: &TestApp, path: &str) -> Value {
    let response = app.get(&app.api_key, path).await;
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.unwrap()
}

#[tokio::test]
async fn a_failing_receiver_gets_the_event_on_the_third_attempt_with_the_same_id() {
    let app = TestApp::spawn().await;
    let (receiver, endpoint) = register(&app, json!(["document.uploaded"])).await;
    receiver.script(vec![(500, vec![]), (500, vec![])]);

    let document = app.upload_ok(sample("contract.pdf")).await;
    let hooks = receiver.wait_for(3, HOOK_TIMEOUT).await;
    assert_eq!(
        hooks.iter().map(|h| h.answered).collect::<Vec<_>>(),
        [500, 500, 204]
    );
    for hook in &hooks {
        assert!(hook.verified, "{:?}", hook.verify_error);
        assert_eq!(hook.id, hooks[0].id, "one webhook-id for every attempt");
        assert_eq!(hook.raw, hooks[0].raw, "the same body every time");
    }
    assert_eq!(hooks[0].body["type"], "document.uploaded");
    assert_eq!(hooks[0].body["data"]["document_id"], document.as_str());
    // Retries are spaced out (the test schedule waits 1 s), not fired at once.
    assert!(hooks[1].received_at - hooks[0].received_at >= Duration::from_millis(900));

    // The delivery log has every attempt (the last one recorded once the receiver's answer is
    // back in the worker, a moment after the receiver saw it); a delivery can be sent again
    // by hand.
    let deadline = std::time::Instant::now() + HOOK_TIMEOUT;
    let log = loop {
        let log = get_json(&app, &format!("/v1/webhooks/{endpoint}/deliveries")).await;
        if log["deliveries"].as_array().unwrap().len() >= 3 || std::time::Instant::now() > deadline
        {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let attempts = log["deliveries"].as_array().unwrap();
    let mut outcomes: Vec<&str> = attempts
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    outcomes.sort();
    assert_eq!(outcomes, ["delivered", "failed", "failed"], "{log}");
    assert!(attempts
        .iter()
        .all(|a| a["webhook_id"] == hooks[0].id.as_str()));
    let resend = app
        .post_json(
            Some(&app.api_key),
            &format!(
                "/v1/webhooks/{endpoint}/deliveries/{}/resend",
                attempts[0]["id"].as_str().unwrap()
            ),
            &json!({}),
        )
        .await;
    assert_eq!(resend.status(), 202);
    let hooks = receiver.wait_for(4, HOOK_TIMEOUT).await;
    assert_eq!(hooks[3].id, hooks[0].id);
    assert!(hooks[3].verified);
}

#[tokio::test]
async fn a_receiver_answering_410_is_disabled() {
    let app = TestApp::spawn().await;
    let (gone, gone_id) = register(&app, json!(["document.uploaded"])).await;
    let (live, _) = register(&app, json!(["document.uploaded"])).await;
    gone.script(vec![(410, vec![])]);

    app.upload_ok(sample("contract.pdf")).await;
    gone.wait_for(1, HOOK_TIMEOUT).await;
    live.wait_for(1, HOOK_TIMEOUT).await;
    let deadline = std::time::Instant::now() + HOOK_TIMEOUT;
    loop {
        let endpoint = get_json(&app, &format!("/v1/webhooks/{gone_id}")).await;
        if endpoint["enabled"] == false {
            assert!(endpoint["disabled_reason"]
                .as_str()
                .unwrap()
                .contains("410"));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{endpoint}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The next event reaches the live endpoint only.
    app.upload_ok(sample("contract.pdf")).await;
    live.wait_for(2, HOOK_TIMEOUT).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(gone.received().len(), 1, "a disabled endpoint gets nothing");
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let app = TestApp::spawn().await;
    let (receiver, _) = register(&app, json!(["document.uploaded"])).await;
    receiver.script(vec![(429, vec![("Retry-After".into(), "3".into())])]);
    app.upload_ok(sample("contract.pdf")).await;
    let hooks = receiver.wait_for(2, HOOK_TIMEOUT).await;
    assert!(
        hooks[1].received_at - hooks[0].received_at >= Duration::from_millis(2900),
        "waited {:?}",
        hooks[1].received_at - hooks[0].received_at
    );
    assert_eq!(hooks[1].answered, 204);
}

#[tokio::test]
async fn a_failing_mail_server_does_not_hold_back_webhooks() {
    // No SMTP server listens on port 9 ("discard"): every e-mail fails and is retried.
    let app = TestApp::spawn_with(TestAppOptions {
        worker_env: vec![("SHOMEI_SMTP_URL".into(), "smtp://127.0.0.1:9".into())],
        ..TestAppOptions::default()
    })
    .await;
    let (receiver, _) = register(&app, json!(["request.sent"])).await;
    let document = app.upload_ok(sample("contract.pdf")).await;
    let response = app
        .post_json(
            Some(&app.api_key),
            &format!("/v1/documents/{document}/requests"),
            &json!({"owner": {"name": "O", "email": "owner@example.com"},
                    "signers": [{"name": "S", "email": "s@example.com", "method": "witness"}]}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let hooks = receiver.wait_for(1, HOOK_TIMEOUT).await;
    assert_eq!(hooks[0].body["type"], "request.sent");
    // Signers are named by id; names and addresses stay out of events and their deliveries.
    let data = &hooks[0].body["data"];
    assert!(data["signer_id"].is_string(), "{data}");
    assert!(!data.to_string().contains("s@example.com"), "{data}");
    // Meanwhile the invitation e-mail is failing and waiting for its next attempt.
    let deadline = std::time::Instant::now() + HOOK_TIMEOUT;
    while app.sql_count(
        "SELECT count(*) AS n FROM jobs WHERE kind = 'notify_email' AND error IS NOT NULL",
    ) == 0
    {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn private_targets_are_refused_unless_allowed() {
    let app = TestApp::spawn_with(TestAppOptions {
        workers: 0,
        env: vec![("SHOMEI_WEBHOOK_ALLOW_PRIVATE".into(), "false".into())],
        ..TestAppOptions::default()
    })
    .await;
    for url in [
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "ftp://example.com/hook",
    ] {
        let response = app
            .post_json(Some(&app.api_key), "/v1/webhooks", &json!({"url": url}))
            .await;
        assert_eq!(response.status(), 422, "{url}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }
    let list = get_json(&app, "/v1/webhooks").await;
    assert_eq!(list["webhooks"], json!([]));
    // Secrets are shown once, at creation, never listed.
    assert!(!list.to_string().contains("whsec_"));
}
