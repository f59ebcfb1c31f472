//! Independent checks of a signed PDF: poppler's `pdfsig`, `qpdf --check`, `openssl cms -verify`
//! on every embedded CMS and `openssl ts -verify` on every time-stamp token, against the dev CA.

use std::path::{Path, PathBuf};
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

/// What a file is expected to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Expected {
    /// CAdES signatures (`ETSI.CAdES.detached`), B-B or B-T.
    pub signatures: usize,
    /// Of those, how many carry a signature time-stamp (B-T).
    pub signature_timestamps: usize,
    /// Document time-stamps (`ETSI.RFC3161`).
    pub document_timestamps: usize,
}

impl Expected {
    /// `n` B-B signatures.
    pub fn basic(n: usize) -> Self {
        Self {
            signatures: n,
            ..Self::default()
        }
    }

    /// `n` B-T signatures.
    pub fn timestamped(n: usize) -> Self {
        Self {
            signatures: n,
            signature_timestamps: n,
            document_timestamps: 0,
        }
    }

    pub fn and_document_timestamps(self, n: usize) -> Self {
        Self {
            document_timestamps: n,
            ..self
        }
    }
}

const ID_AA_TIME_STAMP_TOKEN: &str = "1.2.840.113549.1.9.16.2.14";
const ID_CT_TST_INFO: &str = "1.2.840.113549.1.9.16.1.4";

/// Checks a signed file with tools we did not write, and panics with their output on any
/// failure; returns pdfsig's report.
/// - `qpdf --check` finds no error;
/// - `pdfsig` (with an NSS database trusting the dev CA): every CAdES signature "Signature is
///   Valid." with a trusted certificate, and only the newest signature or time-stamp covers the
///   whole file. poppler 22.12 does not verify `ETSI.RFC3161` document time-stamps, and reports
///   a certificate it already verified in the same run as "Unknown issue", so those are left to
///   openssl;
/// - `openssl cms -verify` of every signature over its byte ranges, chained to the dev CA;
/// - `openssl ts -verify` of every signature time-stamp (over the signature value) and every
///   document time-stamp (over its byte ranges), chained to the dev CA.
///
/// Our own code only cuts the CMS out of the file (as every validator does) and the token out of
/// the CMS.
pub fn assert_externally_valid(name: &str, pdf: &[u8], expected: Expected) -> String {
    let dir = scratch_dir(name);
    let path = dir.join("signed.pdf");
    std::fs::write(&path, pdf).unwrap();
    let ca = hsm_dir().join("ca/ca.pem");

    let qpdf = run(Command::new("qpdf").arg("--check").arg(&path));
    assert!(
        qpdf.contains("No syntax or stream encoding errors found"),
        "{name}: {qpdf}"
    );

    let report = run(Command::new("pdfsig")
        .arg("-nssdir")
        .arg(format!("sql:{}", hsm_dir().join("nssdb").display()))
        .arg(&path));
    let blocks: Vec<&str> = report.split("Signature #").skip(1).collect();
    assert_eq!(
        blocks.len(),
        expected.signatures + expected.document_timestamps,
        "{name}:\n{report}"
    );
    let mut seen_signers = Vec::new();
    for block in blocks
        .iter()
        .filter(|b| b.contains("Signature Type: ETSI.CAdES.detached"))
    {
        assert!(block.contains("Signature is Valid."), "{name}:\n{report}");
        let signer = block
            .lines()
            .find_map(|l| l.trim().strip_prefix("- Signer full Distinguished Name: "))
            .unwrap_or_else(|| panic!("{name}: no signer in\n{report}"));
        let trusted = block.contains("Certificate is Trusted")
            || (seen_signers.contains(&signer) && block.contains("Unknown issue with Certificate"));
        assert!(
            trusted,
            "{name}: certificate of {signer} not trusted:\n{report}"
        );
        seen_signers.push(signer);
    }
    assert_eq!(seen_signers.len(), expected.signatures, "{name}:\n{report}");
    assert_eq!(
        report.matches("- Total document signed").count(),
        1,
        "{name}:\n{report}"
    );
    assert!(
        blocks.last().unwrap().contains("- Total document signed"),
        "{name}:\n{report}"
    );

    let embedded = embedded_signatures(pdf);
    assert!(embedded.last().unwrap().covers_whole_file, "{name}");
    let mut found = Expected::default();
    for (i, signature) in embedded.iter().enumerate() {
        let content = dir.join(format!("signed-bytes{i}.bin"));
        let cms = dir.join(format!("cms{i}.der"));
        std::fs::write(&content, &signature.signed_bytes).unwrap();
        std::fs::write(&cms, &signature.cms_der).unwrap();
        let signed_data = signed_data(&signature.cms_der);
        if signed_data.encap_content_info.econtent_type.to_string() == ID_CT_TST_INFO {
            openssl_ts_verify(&cms, &ca, &["-data", content.to_str().unwrap()]);
            found.document_timestamps += 1;
            continue;
        }
        run(Command::new("openssl")
            .args([
                "cms", "-verify", "-binary", "-inform", "DER", "-purpose", "any",
            ])
            .args(["-out", "/dev/null", "-in"])
            .arg(&cms)
            .arg("-content")
            .arg(&content)
            .arg("-CAfile")
            .arg(&ca));
        found.signatures += 1;
        let signer_info = signed_data.signer_infos.0.get(0).unwrap();
        let tokens: Vec<Vec<u8>> = signer_info
            .unsigned_attrs
            .iter()
            .flat_map(|attrs| attrs.iter())
            .filter(|a| a.oid.to_string() == ID_AA_TIME_STAMP_TOKEN)
            .flat_map(|a| a.values.iter().map(|v| der::Encode::to_der(v).unwrap()))
            .collect();
        for (j, token) in tokens.iter().enumerate() {
            let path = dir.join(format!("sig{i}-ts{j}.der"));
            std::fs::write(&path, token).unwrap();
            let imprint = hex::encode(sha256(signer_info.signature.as_bytes()));
            openssl_ts_verify(&path, &ca, &["-digest", &imprint]);
            found.signature_timestamps += 1;
        }
    }
    assert_eq!(found, expected, "{name}");
    report
}

fn signed_data(cms_der: &[u8]) -> cms::signed_data::SignedData {
    use der::Decode;
    cms::content_info::ContentInfo::from_der(cms_der)
        .expect("embedded CMS is a ContentInfo")
        .content
        .decode_as()
        .expect("embedded CMS is SignedData")
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-binary"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    child.wait_with_output().unwrap().stdout
}

fn openssl_ts_verify(token: &Path, ca: &Path, what: &[&str]) {
    let out = run(Command::new("openssl")
        .args(["ts", "-verify", "-token_in", "-in"])
        .arg(token)
        .args(what)
        .arg("-CAfile")
        .arg(ca));
    assert!(
        out.contains("Verification: OK"),
        "{}: {out}",
        token.display()
    );
}

/// Runs a tool; panics with its output unless it exits 0. Returns stdout and stderr.
fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{command:?} failed:\n{text}");
    text
}
