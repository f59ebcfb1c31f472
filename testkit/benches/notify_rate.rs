//! How many notifications one worker process sends per second, end to end: webhook
//! deliveries to a local receiver (which checks every signature with the `standardwebhooks`
//! crate) and invitation e-mails to a local SMTP server (aiosmtpd, STARTTLS + AUTH).
//!
//! A backlog is queued first with no worker running (uploads for `document.uploaded` webhooks,
//! signature requests for invitations); then one worker starts and the clock runs from the
//! first arrival to the last. Use release binaries:
//!
//! ```sh
//! cargo build --release --bins -p shomei-api -p shomei-workers -p shomei-tsa
//! SHOMEI_BIN_DIR=target/release cargo bench -p shomei-testkit --bench notify_rate -- 2000 16
//! ```
//! Arguments: backlog size (default 1000), worker concurrency (default 16).

#![allow(clippy::print_stdout)] // reporting the figures is the point of a benchmark

use std::time::{Duration, Instant};

use futures::{stream, StreamExt};
use serde_json::json;

use shomei_testkit::smtp::{SmtpOptions, SmtpServer, SmtpTls};
use shomei_testkit::webhook_receiver::WebhookReceiver;
use shomei_testkit::{sample, TestApp, TestAppOptions};

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(1000);
    let concurrency = args.get(1).copied().unwrap_or(16);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            webhooks(n, concurrency).await;
            emails(n, concurrency).await;
        });
}

fn options(concurrency: usize, worker_env: Vec<(String, String)>) -> TestAppOptions {
    TestAppOptions {
        workers: 0,
        concurrency,
        worker_env,
        env: vec![("RUST_LOG".into(), "warn".into())],
        ..TestAppOptions::default()
    }
}

async fn webhooks(n: usize, concurrency: usize) {
    let mut app = TestApp::spawn_with(options(concurrency, vec![])).await;
    let receiver = WebhookReceiver::start("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").await;
    let response = app
        .post_json(
            Some(&app.api_key),
            "/v1/webhooks",
            &json!({"url": receiver.url(), "event_kinds": ["document.uploaded"]}),
        )
        .await;
    let endpoint: serde_json::Value = response.json().await.unwrap();
    receiver.set_secret(endpoint["secret"].as_str().unwrap());

    let pdf = sample("contract.pdf");
    stream::iter(0..n)
        .for_each_concurrent(8, |_| {
            let pdf = pdf.clone();
            let app = &app;
            async move {
                let r = app.upload(&app.api_key, pdf, Some("bench")).await;
                assert_eq!(r.status(), 201);
            }
        })
        .await;

    let started = Instant::now();
    app.start_worker();
    let hooks = receiver.wait_for(n, Duration::from_secs(600)).await;
    let total = started.elapsed();
    let first = hooks.iter().map(|h| h.received_at).min().unwrap();
    let last = hooks.iter().map(|h| h.received_at).max().unwrap();
    let verified = hooks.iter().filter(|h| h.verified).count();
    let unique: std::collections::HashSet<&str> = hooks.iter().map(|h| h.id.as_str()).collect();
    println!(
        "webhooks: {n} deliveries, concurrency {concurrency}: {:.0}/s first to last ({:.2} s), \
         {:.0}/s including worker start ({:.2} s); {verified} verified, {} distinct ids",
        (n - 1) as f64 / (last - first).as_secs_f64(),
        (last - first).as_secs_f64(),
        n as f64 / total.as_secs_f64(),
        total.as_secs_f64(),
        unique.len()
    );
}

async fn emails(n: usize, concurrency: usize) {
    let smtp = SmtpServer::start(SmtpOptions {
        tls: SmtpTls::StartTls,
        credentials: Some(("bench".into(), "bench-password".into())),
        reject_recipients_containing: None,
    });
    let mut app = TestApp::spawn_with(options(
        concurrency,
        vec![
            ("SHOMEI_SMTP_URL".into(), smtp.url()),
            (
                "SHOMEI_SMTP_CA".into(),
                smtp.ca_path().display().to_string(),
            ),
        ],
    ))
    .await;
    let pdf = sample("contract.pdf");
    stream::iter(0..n)
        .for_each_concurrent(8, |i| {
            let pdf = pdf.clone();
            let app = &app;
            async move {
                let doc = app.upload(&app.api_key, pdf, Some("bench")).await;
                let doc: serde_json::Value = doc.json().await.unwrap();
                let r = app
                    .post_json(
                        Some(&app.api_key),
                        &format!("/v1/documents/{}/requests", doc["id"].as_str().unwrap()),
                        &json!({"owner": {"name": "O", "email": "owner@example.com"},
                                "signers": [{"name": "S", "email": format!("s{i}@example.com"),
                                             "method": "witness"}]}),
                    )
                    .await;
                assert_eq!(r.status(), 201);
            }
        })
        .await;

    let started = Instant::now();
    app.start_worker();
    let mut first = None;
    loop {
        let count = std::fs::read_dir(smtp.dir())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "eml"))
            })
            .count();
        if count > 0 && first.is_none() {
            first = Some(Instant::now());
        }
        if count >= n {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "only {count} of {n} e-mails"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let total = started.elapsed();
    let span = first.unwrap().elapsed();
    println!(
        "e-mails: {n} invitations over SMTP (STARTTLS, AUTH), concurrency {concurrency}: \
         {:.0}/s first to last ({:.2} s), {:.0}/s including worker start ({:.2} s)",
        n as f64 / span.as_secs_f64(),
        span.as_secs_f64(),
        n as f64 / total.as_secs_f64(),
        total.as_secs_f64()
    );
}
