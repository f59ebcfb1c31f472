//! CPU time of the checking TSA client per token: `THREADS` threads each fetch tokens from
//! `URL` through one shared `TsaClient` for `SECONDS`; prints tokens/s and this process's CPU
//! per token (the TSA's own work is in its process, not counted here).
//!
//! ```text
//! cargo run --release -p shomei-signing --example tsa_client_cpu -- URL ANCHORS.pem THREADS SECONDS
//! ```

#![allow(clippy::print_stdout)] // reporting is the point of this binary

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shomei_signing::{certificates_from_pem, Timestamper, TsaClient, TsaClientSettings};

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (url, anchors) = (args[1].clone(), std::fs::read(&args[2]).unwrap());
    let threads: usize = args[3].parse().unwrap();
    let seconds: u64 = args[4].parse().unwrap();
    let settings = TsaClientSettings::new(vec![url], certificates_from_pem(&anchors).unwrap());
    let client = TsaClient::new(settings).unwrap();
    let tokens = AtomicU64::new(0);
    let (start, cpu0) = (Instant::now(), cpu_seconds());
    std::thread::scope(|s| {
        for t in 0..threads {
            let (client, tokens) = (&client, &tokens);
            s.spawn(move || {
                let mut i = 0u64;
                while start.elapsed() < Duration::from_secs(seconds) {
                    let mut digest = [0u8; 32];
                    digest[..8].copy_from_slice(&(t as u64 * 1_000_000_000 + i).to_be_bytes());
                    client.timestamp(&digest).unwrap();
                    tokens.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            });
        }
    });
    let (n, wall, cpu) = (
        tokens.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64(),
        cpu_seconds() - cpu0,
    );
    println!(
        "{n} tokens in {wall:.1} s ({:.0}/s), client CPU {:.3} ms per token",
        n as f64 / wall,
        cpu * 1000.0 / n as f64
    );
}
