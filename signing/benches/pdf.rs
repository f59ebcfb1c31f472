//! What the PDF side of a signature costs a worker, short of the HSM and the TSA (release
//! build, one core): `cargo bench -p shomei-signing --bench pdf`. For the load test's contract
//! (`samples/contract-160k.pdf`): lopdf's parse alone, the intake checks around it
//! (`inspect_pdf`), and a whole signature's PDF work (intake, revision, digest, embedding).

use std::time::{Duration, Instant};

use shomei_signing::fuzzing::prepare_signature;
use shomei_signing::inspect_pdf;

fn per_call(rounds: u32, mut f: impl FnMut()) -> Duration {
    f();
    let started = Instant::now();
    for _ in 0..rounds {
        f();
    }
    started.elapsed() / rounds
}

fn main() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../samples/contract-160k.pdf");
    let pdf = std::fs::read(path).expect("samples/contract-160k.pdf");
    let rounds = 2_000;
    let parse = per_call(rounds, || {
        lopdf::Document::load_mem(&pdf).expect("lopdf parses the sample");
    });
    let intake = per_call(rounds, || {
        inspect_pdf(&pdf).expect("the sample passes intake");
    });
    let sign = per_call(rounds, || {
        prepare_signature(&pdf).expect("the sample's signature revision");
    });
    #[allow(clippy::print_stdout)]
    {
        println!(
            "{} KB: lopdf parse {:.3} ms, intake {:.3} ms, signature's PDF work {:.3} ms",
            pdf.len() / 1000,
            parse.as_secs_f64() * 1e3,
            intake.as_secs_f64() * 1e3,
            sign.as_secs_f64() * 1e3,
        );
    }
}
