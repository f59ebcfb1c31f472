//! Webhook deliveries over real HTTP to the testkit receiver, which verifies signatures with
//! the spec authors' own `standardwebhooks` crate rather than with our code.

use std::time::{Duration, SystemTime};

use shomei_notify::webhook::{
    check_target, Outcome, WebhookSecret, WebhookSender, WebhookSettings,
};
use shomei_testkit::webhook_receiver::WebhookReceiver;

const BODY: &[u8] =
    br#"{"type":"contract.signed","timestamp":"2025-01-02T03:04:05Z","data":{"id":"doc_1"}}"#;

fn sender(allow_private: bool, timeout: Duration) -> WebhookSender {
    WebhookSender::new(&WebhookSettings {
        timeout,
        allow_private,
    })
    .unwrap()
}

async fn setup() -> (WebhookReceiver, WebhookSecret, WebhookSender) {
    let secret = WebhookSecret::generate();
    let receiver = WebhookReceiver::start(secret.expose()).await;
    (receiver, secret, sender(true, Duration::from_secs(5)))
}

fn header(name: &str, value: &str) -> (String, String) {
    (name.to_owned(), value.to_owned())
}

#[tokio::test]
async fn a_delivery_is_verified_by_the_independent_implementation() {
    let (receiver, secret, sender) = setup().await;

    let attempt = sender
        .deliver(
            &receiver.url(),
            &secret,
            "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
            BODY,
        )
        .await;

    assert_eq!(attempt.outcome, Outcome::Delivered, "{attempt:?}");
    assert_eq!(attempt.status, Some(204));
    assert_eq!(attempt.error, None);
    let hooks = receiver.wait_for(1, Duration::from_secs(5)).await;
    let hook = &hooks[0];
    assert!(hook.verified, "{:?}", hook.verify_error);
    assert_eq!(hook.id, "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W");
    assert_eq!(hook.raw, BODY);
    assert_eq!(hook.body["data"]["id"], "doc_1");
    assert!(hook.signature.starts_with("v1,"), "{}", hook.signature);
    assert_eq!(hook.header("content-type"), Some("application/json"));
    assert!(hook.header("user-agent").unwrap().contains("Shomei"));
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let sent: i64 = hook.timestamp.parse().unwrap();
    assert!((now - sent).abs() <= 5, "timestamp {sent}, now {now}");
}

#[tokio::test]
async fn a_signature_made_with_another_secret_is_not_verified() {
    let receiver = WebhookReceiver::start(WebhookSecret::generate().expose()).await;
    let sender = sender(true, Duration::from_secs(5));

    sender
        .deliver(&receiver.url(), &WebhookSecret::generate(), "msg_1", BODY)
        .await;

    let hooks = receiver.wait_for(1, Duration::from_secs(5)).await;
    assert!(!hooks[0].verified);
}

#[tokio::test]
async fn the_webhook_id_stays_what_was_given_across_retries() {
    let (receiver, secret, sender) = setup().await;
    receiver.script(vec![(500, vec![])]);

    let first = sender
        .deliver(&receiver.url(), &secret, "msg_retry", BODY)
        .await;
    let second = sender
        .deliver(&receiver.url(), &secret, "msg_retry", BODY)
        .await;

    assert_eq!(first.outcome, Outcome::Failed);
    assert_eq!(second.outcome, Outcome::Delivered);
    let hooks = receiver.wait_for(2, Duration::from_secs(5)).await;
    assert!(hooks.iter().all(|h| h.id == "msg_retry" && h.verified));
    assert_eq!(hooks[0].answered, 500);
    assert_eq!(hooks[1].answered, 204);
}

#[tokio::test]
async fn a_500_is_a_failure() {
    let (receiver, secret, sender) = setup().await;
    receiver.script(vec![(500, vec![])]);

    let attempt = sender
        .deliver(&receiver.url(), &secret, "msg_500", BODY)
        .await;

    assert_eq!(attempt.outcome, Outcome::Failed);
    assert_eq!(attempt.status, Some(500));
    assert!(attempt.error.unwrap().contains("500"));
    assert_eq!(attempt.response_excerpt.as_deref(), Some(""));
}

#[tokio::test]
async fn a_410_means_the_endpoint_is_gone() {
    let (receiver, secret, sender) = setup().await;
    receiver.script(vec![(410, vec![])]);

    let attempt = sender
        .deliver(&receiver.url(), &secret, "msg_410", BODY)
        .await;

    assert_eq!(attempt.outcome, Outcome::Gone);
    assert_eq!(attempt.status, Some(410));
}

#[tokio::test]
async fn a_429_with_retry_after_seconds_is_honoured() {
    let (receiver, secret, sender) = setup().await;
    receiver.script(vec![(429, vec![header("retry-after", "7")]), (429, vec![])]);

    let with_header = sender
        .deliver(&receiver.url(), &secret, "msg_429", BODY)
        .await;
    let without = sender
        .deliver(&receiver.url(), &secret, "msg_429", BODY)
        .await;

    assert_eq!(
        with_header.outcome,
        Outcome::RetryAfter(Duration::from_secs(7))
    );
    assert_eq!(with_header.status, Some(429));
    assert_eq!(without.outcome, Outcome::Failed);
}

#[tokio::test]
async fn a_503_with_an_http_date_waits_until_that_date() {
    let (receiver, secret, sender) = setup().await;
    let at = SystemTime::now() + Duration::from_secs(120);
    receiver.script(vec![(
        503,
        vec![header("retry-after", &httpdate::fmt_http_date(at))],
    )]);

    let attempt = sender
        .deliver(&receiver.url(), &secret, "msg_503", BODY)
        .await;

    let Outcome::RetryAfter(wait) = attempt.outcome else {
        panic!("expected RetryAfter, got {attempt:?}");
    };
    assert!(
        wait >= Duration::from_secs(115) && wait <= Duration::from_secs(120),
        "{wait:?}"
    );
}

#[tokio::test]
async fn a_receiver_slower_than_the_timeout_is_a_failure() {
    let secret = WebhookSecret::generate();
    let receiver = WebhookReceiver::start(secret.expose()).await;
    receiver.set_delay(Duration::from_secs(5));
    let sender = sender(true, Duration::from_millis(500));

    let attempt = sender
        .deliver(&receiver.url(), &secret, "msg_slow", BODY)
        .await;

    assert_eq!(attempt.outcome, Outcome::Failed, "{attempt:?}");
    assert_eq!(attempt.status, None);
    let error = attempt.error.unwrap();
    assert!(error.contains("timed out"), "{error}");
    assert!(
        attempt.duration < Duration::from_secs(3),
        "{:?}",
        attempt.duration
    );
}

#[tokio::test]
async fn internal_targets_are_refused_unless_allowed() {
    let secret = WebhookSecret::generate();
    let receiver = WebhookReceiver::start(secret.expose()).await;
    let port = receiver.url().rsplit(':').next().unwrap().to_owned(); // "PORT/hooks"
    let strict = sender(false, Duration::from_secs(5));

    let targets = [
        format!("http://127.0.0.1:{port}"),
        format!("http://localhost:{port}"),
        "http://10.0.0.1/hooks".to_owned(),
        format!("http://[::1]:{port}"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        format!("http://[::ffff:127.0.0.1]:{port}"),
        // Other spellings of 127.0.0.1 that URL parsers accept.
        format!("http://2130706433:{port}"),
        format!("http://0x7f.1:{port}"),
    ];
    for url in &targets {
        let err = check_target(url, false)
            .await
            .expect_err(&format!("{url} accepted"));
        let text = err.to_string();
        assert!(text.contains("may not reach"), "{url}: {text}");

        let attempt = strict.deliver(url, &secret, "msg_ssrf", BODY).await;
        assert_eq!(attempt.outcome, Outcome::Refused, "{url}: {attempt:?}");
        assert_eq!(attempt.status, None);
        assert!(attempt.error.is_some());
    }
    assert!(
        receiver.received().is_empty(),
        "a refused target was reached"
    );

    // The same receiver is fine when private targets are allowed (tests, on-prem).
    check_target(&receiver.url(), true).await.unwrap();
    let allowed = sender(true, Duration::from_secs(5))
        .deliver(&receiver.url(), &secret, "msg_ok", BODY)
        .await;
    assert_eq!(allowed.outcome, Outcome::Delivered);
}

#[tokio::test]
async fn malformed_targets_are_refused_without_echoing_credentials() {
    for (url, expected) in [
        ("ftp://example.com/hooks", "http or https"),
        (
            "http://alice:hunter2@example.com/hooks",
            "user name or password",
        ),
        ("not a url", "not a valid absolute URL"),
        ("file:///etc/passwd", "http or https"),
    ] {
        let err = check_target(url, true).await.unwrap_err().to_string();
        assert!(err.contains(expected), "{url}: {err}");
        assert!(!err.contains("hunter2"), "{err}");

        let attempt = sender(true, Duration::from_secs(1))
            .deliver(url, &WebhookSecret::generate(), "msg_bad", BODY)
            .await;
        assert_eq!(attempt.outcome, Outcome::Refused);
        assert!(!attempt.error.unwrap().contains("hunter2"));
    }
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let (receiver, secret, sender) = setup().await;
    // If the redirect were followed, the receiver would get a second request (answered 204).
    let elsewhere = format!("{}/elsewhere", receiver.base_url());
    receiver.script(vec![(307, vec![header("location", &elsewhere)])]);

    let attempt = sender
        .deliver(&receiver.url(), &secret, "msg_redirect", BODY)
        .await;

    assert_eq!(attempt.outcome, Outcome::Failed, "{attempt:?}");
    assert_eq!(attempt.status, Some(307));
    assert!(attempt.error.unwrap().contains("redirect"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hooks = receiver.received();
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    assert_eq!(hooks[0].path, "/hooks");
}

#[tokio::test]
async fn errors_never_contain_the_secret() {
    let secret = WebhookSecret::generate();
    let key_part = &secret.expose()["whsec_".len()..];
    let sender = sender(true, Duration::from_millis(500));
    // Nothing listens on port 9 (discard) here: a connection error.
    let attempt = sender
        .deliver("http://127.0.0.1:9/hooks", &secret, "msg_x", BODY)
        .await;
    assert_eq!(attempt.outcome, Outcome::Failed, "{attempt:?}");
    let error = attempt.error.unwrap();
    assert!(!error.contains(key_part), "{error}");
    assert!(!format!("{secret:?}").contains(key_part));
}
