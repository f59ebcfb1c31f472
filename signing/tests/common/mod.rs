//! Shared fixtures: one dev HSM per checkout, one `Hsm` per test binary
//! (PKCS#11 may be initialised only once per process), and the external
//! validators every signed PDF must pass.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use secrecy::SecretString;
use shomei_signing::{Hsm, HsmSettings, SignatureRequest};

pub const RSA_KEY: &str = "shomei-dev-rsa";
pub const EC_KEY: &str = "shomei-dev-ec";

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn sample(name: &str) -> Vec<u8> {
    std::fs::read(workspace_root().join("samples").join(name)).unwrap()
}

/// Directory of the dev token and CA, created on first use. The script takes
/// a file lock, so concurrently running test binaries do not race.
pub fn hsm_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::var_os("SHOMEI_TEST_HSM_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target/dev-hsm"));
        let status = Command::new(workspace_root().join("scripts/dev-hsm.sh"))
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run scripts/dev-hsm.sh");
        assert!(status.success(), "scripts/dev-hsm.sh failed");
        dir
    })
}

pub fn hsm() -> &'static Hsm {
    static HSM: OnceLock<Hsm> = OnceLock::new();
    HSM.get_or_init(|| {
        let dir = hsm_dir();
        // SoftHSM reads its configuration when the module is initialised,
        // which happens inside this OnceLock, before any other PKCS#11 use.
        std::env::set_var("SOFTHSM2_CONF", dir.join("softhsm2.conf"));
        let pin = std::fs::read_to_string(dir.join("user-pin")).unwrap();
        Hsm::connect(&HsmSettings {
            module_path: "/usr/lib/softhsm/libsofthsm2.so".into(),
            token_label: "shomei-dev".into(),
            user_pin: SecretString::from(pin.trim().to_owned()),
            pool_size: 4,
        })
        .expect("connect to dev HSM")
    })
}

pub fn request(key_label: &str) -> SignatureRequest {
    SignatureRequest {
        key_label: key_label.into(),
        signer_name: "Hanako Yamada".into(),
        signer_email: Some("hanako@example.com".into()),
        reason: Some("契約締結 / Contract approval".into()),
        location: Some("Tokyo".into()),
        signing_time: chrono::Utc::now(),
    }
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("shomei-signing")
        .join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One embedded signature: its CMS and the bytes its /ByteRange covers.
pub struct EmbeddedSignature {
    pub cms_der: Vec<u8>,
    pub signed_bytes: Vec<u8>,
    pub covers_whole_file: bool,
}

/// Finds every /ByteRange in the file, like a validator would.
pub fn embedded_signatures(pdf: &[u8]) -> Vec<EmbeddedSignature> {
    let marker = b"/ByteRange";
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(pos) = pdf[at..].windows(marker.len()).position(|w| w == marker) {
        let start = at + pos + marker.len();
        let open = start + pdf[start..].iter().position(|&b| b == b'[').unwrap();
        let close = open + pdf[open..].iter().position(|&b| b == b']').unwrap();
        let numbers: Vec<usize> = std::str::from_utf8(&pdf[open + 1..close])
            .unwrap()
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect();
        let [a, b, c, d] = numbers[..] else {
            panic!("bad ByteRange {numbers:?}")
        };
        assert_eq!(a, 0);
        assert_eq!(pdf[b], b'<', "gap must start at the /Contents hex string");
        assert_eq!(pdf[c - 1], b'>', "gap must end at the /Contents hex string");
        let hex_digits: Vec<u8> = pdf[b + 1..c - 1]
            .iter()
            .copied()
            .filter(|x| !x.is_ascii_whitespace())
            .collect();
        let padded = hex::decode(hex_digits).unwrap();
        let cms_der = padded[..der_len(&padded)].to_vec();
        let mut signed_bytes = pdf[a..a + b].to_vec();
        signed_bytes.extend_from_slice(&pdf[c..c + d]);
        found.push(EmbeddedSignature {
            cms_der,
            signed_bytes,
            covers_whole_file: c + d == pdf.len(),
        });
        at = close;
    }
    found
}

/// Length of the outermost DER element, so the zero padding can be cut off.
fn der_len(der: &[u8]) -> usize {
    assert_eq!(der[0], 0x30, "CMS must start with a SEQUENCE");
    match der[1] {
        short @ 0..=0x7f => 2 + usize::from(short),
        long => {
            let n = usize::from(long & 0x7f);
            let len = der[2..2 + n]
                .iter()
                .fold(0usize, |acc, &b| acc << 8 | usize::from(b));
            2 + n + len
        }
    }
}

/// Runs pdfsig, qpdf and `openssl cms -verify` on a signed file; panics with
/// the tool output on any failure. Returns pdfsig's report.
pub fn assert_externally_valid(name: &str, pdf: &[u8], expected_signatures: usize) -> String {
    let dir = scratch_dir(name);
    let path = dir.join("signed.pdf");
    std::fs::write(&path, pdf).unwrap();

    let qpdf = Command::new("qpdf")
        .arg("--check")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        qpdf.status.success(),
        "qpdf --check failed for {name}:\n{}{}",
        String::from_utf8_lossy(&qpdf.stdout),
        String::from_utf8_lossy(&qpdf.stderr)
    );

    let pdfsig = Command::new("pdfsig").arg(&path).output().unwrap();
    let report = String::from_utf8_lossy(&pdfsig.stdout).into_owned();
    assert!(
        pdfsig.status.success(),
        "pdfsig failed for {name}: {report}"
    );
    assert_eq!(
        report.matches("Signature is Valid").count(),
        expected_signatures,
        "{name}:\n{report}"
    );
    // Only the newest signature covers the whole file; earlier ones end
    // where the next revision begins.
    assert_eq!(
        report.matches("- Total document signed").count(),
        1,
        "{name}:\n{report}"
    );
    assert_eq!(
        report.matches("- Not total document signed").count(),
        expected_signatures - 1,
        "{name}:\n{report}"
    );

    let signatures = embedded_signatures(pdf);
    assert_eq!(signatures.len(), expected_signatures, "{name}");
    let ca = hsm_dir().join("ca/ca.pem");
    for (i, signature) in signatures.iter().enumerate() {
        let cms = dir.join(format!("sig{i}.der"));
        let content = dir.join(format!("signed-bytes{i}.bin"));
        std::fs::write(&cms, &signature.cms_der).unwrap();
        std::fs::write(&content, &signature.signed_bytes).unwrap();
        let verify = Command::new("openssl")
            .args([
                "cms",
                "-verify",
                "-binary",
                "-inform",
                "DER",
                "-purpose",
                "any",
                "-out",
                "/dev/null",
            ])
            .arg("-in")
            .arg(&cms)
            .arg("-content")
            .arg(&content)
            .arg("-CAfile")
            .arg(&ca)
            .output()
            .unwrap();
        assert!(
            verify.status.success(),
            "openssl cms -verify failed for {name} signature {i}:\n{}",
            String::from_utf8_lossy(&verify.stderr)
        );
    }
    assert!(signatures.last().unwrap().covers_whole_file);
    report
}
