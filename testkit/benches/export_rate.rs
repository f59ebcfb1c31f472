//! Export throughput and the worker's memory: N signed documents (B-B, to build the backlog
//! quickly) are exported by a fresh worker process; reports documents/s, MB/s and that
//! worker's peak resident set (VmHWM), which must stay flat (below 150 MB) however large N is.
//!
//! ```sh
//! cargo build --release --bins -p shomei-api -p shomei-workers -p shomei-tsa
//! SHOMEI_BIN_DIR=target/release cargo bench -p shomei-testkit --bench export_rate -- 10000
//! ```

#![allow(clippy::print_stdout)] // reporting the figures is the point of a benchmark

use std::time::{Duration, Instant};

use futures::{stream, StreamExt};
use serde_json::{json, Value};

use shomei_testkit::{sample, TestApp, TestAppOptions};

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1000);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run(n));
}

/// Peak resident set of a process, in MiB (Linux `VmHWM`).
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024.0
}

async fn run(n: usize) {
    let mut app = TestApp::spawn_with(TestAppOptions {
        workers: 1,
        concurrency: 8,
        env: vec![("RUST_LOG".into(), "warn".into())],
        ..TestAppOptions::default()
    })
    .await;
    let started = Instant::now();
    let pdf = sample("contract.pdf");
    stream::iter(0..n)
        .for_each_concurrent(8, |i| {
            let pdf = pdf.clone();
            let app = &app;
            async move {
                let title = format!("契約書 {i}, \"bench\"");
                let doc: Value = app
                    .upload(&app.api_key, pdf, Some(&title))
                    .await
                    .json()
                    .await
                    .unwrap();
                let body = json!({"signer": {"name": format!("Signer {i}")}, "level": "B-B"});
                let r = app
                    .sign(&app.api_key, doc["id"].as_str().unwrap(), &body)
                    .await;
                assert_eq!(r.status(), 202);
            }
        })
        .await;
    while app
        .sql_count("SELECT count(*) AS n FROM jobs WHERE kind = 'sign' AND status = 'succeeded'")
        < n as i64
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "backlog: {n} signed documents in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // A fresh worker, so its peak memory is the export's alone.
    app.kill_worker(0);
    let worker = app.start_worker();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let baseline = peak_rss_mib(app.worker_pid(worker).unwrap());

    let started = Instant::now();
    let response = app
        .post_json(Some(&app.api_key), "/v1/exports", &json!({}))
        .await;
    assert_eq!(response.status(), 202);
    let queued: Value = response.json().await.unwrap();
    let path = format!("/v1/exports/{}", queued["export_id"].as_str().unwrap());
    let view = loop {
        let view: Value = app.get(&app.api_key, &path).await.json().await.unwrap();
        if view["status"] == "ready" {
            break view;
        }
        assert_ne!(view["status"], "failed", "{view}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let seconds = started.elapsed().as_secs_f64();
    let bytes: u64 = view["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["size_bytes"].as_u64().unwrap())
        .sum();
    let peak = peak_rss_mib(app.worker_pid(worker).unwrap());
    println!(
        "export: {} documents, {} part(s), {:.1} MB in {seconds:.1} s: {:.0} documents/s, \
         {:.1} MB/s; worker peak RSS {peak:.1} MiB (idle {baseline:.1} MiB)",
        view["done"],
        view["parts"].as_array().unwrap().len(),
        bytes as f64 / 1e6,
        n as f64 / seconds,
        bytes as f64 / 1e6 / seconds,
    );
}
