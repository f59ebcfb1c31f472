//! How fast objects are sealed and opened in memory (release build, one core):
//! `cargo bench -p shomei-vault --bench seal`. What it costs a sign job to read its revision and
//! write the signed one, next to the HSM's few milliseconds per signature.

use std::time::Instant;

use shomei_vault::DataKey;

fn main() {
    let key = DataKey::for_benchmark();
    for size in [160 * 1024, 2 * 1024 * 1024] {
        let plain: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let rounds = (256 * 1024 * 1024 / size).max(8);
        let started = Instant::now();
        let mut sealed = Vec::new();
        for _ in 0..rounds {
            sealed = key.seal(&plain);
        }
        let seal = started.elapsed();
        let started = Instant::now();
        for _ in 0..rounds {
            assert_eq!(key.open(&sealed).unwrap().len(), size);
        }
        let open = started.elapsed();
        let mb = (size * rounds) as f64 / 1e6;
        #[allow(clippy::print_stdout)]
        {
            println!(
                "{:>8} KiB objects: seal {:>7.0} MB/s ({:.3} ms each), open {:>7.0} MB/s ({:.3} ms each)",
                size / 1024,
                mb / seal.as_secs_f64(),
                seal.as_secs_f64() * 1e3 / rounds as f64,
                mb / open.as_secs_f64(),
                open.as_secs_f64() * 1e3 / rounds as f64,
            );
        }
    }
}
