//! Delivery throughput against a local receiver.
//!
//! `cargo run --release -p shomei-notify --example webhook_rate -- [N] [C,C,...]`
//! (defaults: 5000 deliveries, concurrency 1,8,32). The receiver is the testkit fixture in the
//! same process and runtime, and it verifies every signature with the `standardwebhooks` crate,
//! so the figures include the receiving side's work: a floor for the sender, not a ceiling.
#![allow(clippy::print_stdout)] // printing the figures is the point

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shomei_notify::webhook::{Outcome, WebhookSecret, WebhookSender, WebhookSettings};
use shomei_testkit::webhook_receiver::WebhookReceiver;

const BODY: &[u8] =
    br#"{"type":"contract.signed","timestamp":"2025-01-02T03:04:05Z","data":{"id":"doc_1"}}"#;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let total: usize = args
        .next()
        .map_or(5000, |n| n.parse().expect("N: a number of deliveries"));
    let concurrencies: Vec<usize> = args.next().map_or(vec![1, 8, 32], |c| {
        c.split(',')
            .map(|c| c.trim().parse().expect("C: comma-separated task counts"))
            .collect()
    });

    let secret = WebhookSecret::generate();
    let sender = WebhookSender::new(&WebhookSettings {
        timeout: Duration::from_secs(15),
        allow_private: true,
    })
    .expect("webhook client");

    for tasks in concurrencies {
        let receiver = WebhookReceiver::start(secret.expose()).await;
        let url = Arc::new(receiver.url());
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let workers: Vec<_> = (0..tasks)
            .map(|_| {
                let (sender, secret, url, next) =
                    (sender.clone(), secret.clone(), url.clone(), next.clone());
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    let mut failed = 0usize;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= total {
                            return (latencies, failed);
                        }
                        let attempt = sender
                            .deliver(&url, &secret, &format!("msg_{i}"), BODY)
                            .await;
                        if attempt.outcome != Outcome::Delivered {
                            failed += 1;
                        }
                        latencies.push(attempt.duration);
                    }
                })
            })
            .collect();
        let mut latencies = Vec::with_capacity(total);
        let mut failed = 0;
        for worker in workers {
            let (l, f) = worker.await.expect("worker");
            latencies.extend(l);
            failed += f;
        }
        let elapsed = started.elapsed();

        let received = receiver.received();
        let unverified = received.iter().filter(|h| !h.verified).count();
        latencies.sort();
        let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
        println!(
            "N={total} C={tasks}: {:.0} deliveries/s in {elapsed:.2?}; latency p50 {:.2?}, p99 {:.2?}; \
             failed {failed}, received {}, unverified {unverified}",
            total as f64 / elapsed.as_secs_f64(),
            pct(0.50),
            pct(0.99),
            received.len(),
        );
    }
}
