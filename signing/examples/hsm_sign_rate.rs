//! Measures the HSM's raw signing rate through `Hsm::sign_digest`.
//!
//! ```text
//! eval "$(scripts/dev-hsm.sh target/dev-hsm)"
//! cargo run --release -p shomei-signing --example hsm_sign_rate -- [SECONDS] [THREADS...]
//! ```
//! Reads SHOMEI_HSM_MODULE, SHOMEI_HSM_TOKEN_LABEL and SHOMEI_HSM_PIN_FILE.

#![allow(clippy::print_stdout)] // reporting is the point of this binary

use std::time::{Duration, Instant};

use secrecy::SecretString;
use shomei_signing::{Hsm, HsmSettings};

fn env(name: &str) -> Result<String, Box<dyn std::error::Error>> {
    std::env::var(name).map_err(|_| format!("{name} is not set (see scripts/dev-hsm.sh)").into())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(3);
    let mut thread_counts: Vec<u32> = args.map(|s| s.parse()).collect::<Result<_, _>>()?;
    if thread_counts.is_empty() {
        thread_counts = vec![1, 2];
    }

    let pin = std::fs::read_to_string(env("SHOMEI_HSM_PIN_FILE")?)?;
    let hsm = Hsm::connect(&HsmSettings {
        module_path: env("SHOMEI_HSM_MODULE")?.into(),
        token_label: env("SHOMEI_HSM_TOKEN_LABEL")?,
        user_pin: SecretString::from(pin.trim().to_owned()),
        pool_size: thread_counts.iter().copied().max().unwrap_or(1),
    })?;

    let duration = Duration::from_secs(seconds);
    for label in ["shomei-dev-rsa", "shomei-dev-ec"] {
        let identity = hsm.identity(label)?;
        for &threads in &thread_counts {
            let start = Instant::now();
            let total: u64 = std::thread::scope(|scope| {
                let workers: Vec<_> = (0..threads)
                    .map(|t| {
                        let (hsm, identity) = (&hsm, &identity);
                        scope.spawn(move || {
                            let mut digest = [0u8; 32];
                            digest[0] = t as u8;
                            let mut count = 0u64;
                            while start.elapsed() < duration {
                                digest[1..9].copy_from_slice(&count.to_le_bytes());
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
            println!("{label:16} threads={threads} signatures={total:6} rate={rate:8.1}/s");
        }
    }
    Ok(())
}
