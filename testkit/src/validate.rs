//! Independent checks of a signed PDF: poppler's `pdfsig`, `qpdf --check`, and
//! `openssl cms -verify` on every embedded CMS against the dev CA. Our own parser is used only
//! to cut the CMS out of the file, as any validator does.

use std::path::PathBuf;
use std::process::Command;

use crate::hsm_dir;

/// A fresh directory for the files the external tools read (kept for inspection after a failure).
fn scratch_dir(name: &str) -> PathBuf {
    let dir = crate::workspace_root()
        .join("target/tmp/validate")
        .join(format!("{name}-{}", uuid::Uuid::new_v4().simple()));
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

/// Every signer certificate chains to the dev CA, per pdfsig. poppler 22.12 with an NSS
/// database reports a certificate it has already verified earlier in the same run as
/// "Unknown issue with Certificate", so a repeated signer (the service key signing twice) is
/// accepted with that wording; `openssl cms -verify -CAfile` checks every chain regardless.
fn assert_certificates_trusted(name: &str, report: &str) {
    let mut seen = Vec::new();
    for block in report.split("Signature #").skip(1) {
        let signer = block
            .lines()
            .find_map(|l| l.trim().strip_prefix("- Signer full Distinguished Name: "))
            .unwrap_or_else(|| panic!("{name}: no signer in\n{report}"));
        let trusted = block.contains("Certificate is Trusted")
            || (seen.contains(&signer) && block.contains("Unknown issue with Certificate"));
        assert!(
            trusted,
            "{name}: certificate of {signer} not trusted:\n{report}"
        );
        seen.push(signer);
    }
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

    // The NSS database trusts the dev CA, so pdfsig checks the certificate chain as well.
    let pdfsig = Command::new("pdfsig")
        .arg("-nssdir")
        .arg(format!("sql:{}", hsm_dir().join("nssdb").display()))
        .arg(&path)
        .output()
        .unwrap();
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
    assert_certificates_trusted(name, &report);
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
