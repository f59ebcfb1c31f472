//! Measures time-stamps per second through the TSA server (HTTP, in-process on port 0,
//! C concurrent blocking clients), next to the raw `sign_digest` rate of the TSA key.
//!
//! ```text
//! eval "$(scripts/dev-hsm.sh target/dev-hsm)"
//! cargo run --release -p shomei-tsa --example tsa_rate -- [REQUESTS] [CLIENTS...]
//! ```
//! Reads SHOMEI_HSM_MODULE, SHOMEI_HSM_TOKEN_LABEL, SHOMEI_HSM_PIN_FILE and
//! SHOMEI_HSM_POOL_SIZE (default: the number of CPUs) like the server does.

#![allow(clippy::print_stdout)] // reporting is the point of this binary

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use der::asn1::ObjectIdentifier;
use der::{Decode, Encode};
use shomei_signing::{Hsm, HsmSettings, TimeStampReq, TimeStampResp};
use shomei_tsa::TsaState;

const KEY: &str = "shomei-dev-tsa";

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let requests: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(2000);
    let mut client_counts: Vec<u64> = args.map(|s| s.parse()).collect::<Result<_, _>>()?;
    if client_counts.is_empty() {
        client_counts = vec![1, 4, 16];
    }

    let config = shomei_config::Config::from_env()?;
    let hsm = Hsm::connect(&HsmSettings {
        module_path: config.hsm.module_path.clone(),
        token_label: config.hsm.token_label.clone(),
        user_pin: config.hsm.user_pin.clone(),
        pool_size: config.hsm.pool_size,
    })?;
    println!(
        "HSM pool_size={} cpus={}",
        config.hsm.pool_size,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // Raw HSM rate for the same key, same pool, for the same thread counts.
    let identity = hsm.identity(KEY)?;
    for &threads in &client_counts {
        let start = Instant::now();
        let duration = Duration::from_secs(3);
        let total: u64 = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    let (hsm, identity) = (&hsm, &identity);
                    scope.spawn(move || {
                        let mut count = 0u64;
                        while start.elapsed() < duration {
                            let mut digest = [7u8; 32];
                            digest[..8].copy_from_slice(&count.to_le_bytes());
                            hsm.sign_digest(identity, &digest).expect("sign");
                            count += 1;
                        }
                        count
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().expect("worker")).sum()
        });
        let rate = total as f64 / start.elapsed().as_secs_f64();
        println!("raw sign_digest  threads={threads:2} signatures={total:6} rate={rate:8.1}/s");
    }

    let state = Arc::new(TsaState::new(
        hsm,
        KEY,
        ObjectIdentifier::new_unwrap("1.3.6.1.4.1.32473.1.1"),
    )?);
    let runtime = tokio::runtime::Runtime::new()?;
    let (listener, addr) = runtime.block_on(shomei_tsa::bind("127.0.0.1:0".parse()?))?;
    runtime.spawn(shomei_tsa::serve(listener, state, std::future::pending()));
    let url = format!("http://{addr}/");

    for &clients in &client_counts {
        let next = AtomicU64::new(0);
        let start = Instant::now();
        let latencies: Vec<Duration> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..clients)
                .map(|_| {
                    let (next, url) = (&next, &url);
                    scope.spawn(move || {
                        let http = reqwest::blocking::Client::new();
                        let mut latencies = Vec::new();
                        while next.fetch_add(1, Ordering::Relaxed) < requests {
                            let query = TimeStampReq::sha256(
                                &[1; 32],
                                Some(shomei_signing::positive_int(&rand_bytes())),
                                None,
                            );
                            let sent = Instant::now();
                            let reply = http
                                .post(url)
                                .header("content-type", "application/timestamp-query")
                                .body(query.to_der().expect("encode"))
                                .send()
                                .and_then(|r| r.error_for_status())
                                .and_then(|r| r.bytes())
                                .expect("reply");
                            latencies.push(sent.elapsed());
                            let response = TimeStampResp::from_der(&reply).expect("decode");
                            assert!(response.status.is_granted(), "{}", response.status);
                        }
                        latencies
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().expect("client"))
                .collect()
        });
        let elapsed = start.elapsed();
        let mut sorted = latencies;
        sorted.sort();
        let pct = |p: f64| sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)];
        println!(
            "TSA over HTTP     clients={clients:2} tokens={:6} rate={:8.1}/s p50={:?} p99={:?}",
            sorted.len(),
            sorted.len() as f64 / elapsed.as_secs_f64(),
            pct(0.50),
            pct(0.99),
        );
    }
    Ok(())
}

/// A nonce that differs per request without pulling in a RNG crate.
fn rand_bytes() -> [u8; 8] {
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(std::process::id())).to_be_bytes()
}
