//! `verify_pdf` on files signed with the SoftHSM2 dev token, time-stamped by OpenSSL's own TSA
//! (`openssl ts -reply`, certificate issued by the dev CA), and then tampered with.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use common::{hsm, hsm_dir, request, sample, EC_KEY, RSA_KEY};
use lopdf::{dictionary, IncrementalDocument, Object, Stream};
use shomei_signing::{
    certificates_from_pem, fetch_crls, sign_pdf, timestamp_pdf, validation_material, verify_pdf,
    SignatureKind, TimestampError, Timestamper, ValidationData, VerificationReport,
};
use x509_cert::Certificate;

fn scratch_dir(name: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let dir = common::workspace_root()
        .join("target/tmp/verify")
        .join(format!(
            "{name}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(command: &mut Command) {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn ca_dir() -> PathBuf {
    std::fs::canonicalize(hsm_dir()).unwrap().join("ca")
}

fn dev_ca() -> Vec<Certificate> {
    certificates_from_pem(&std::fs::read(ca_dir().join("ca.pem")).unwrap()).unwrap()
}

/// `openssl ts -reply` with a throw-away key certified by the dev CA (as in pades_levels.rs).
struct OpenSslTsa {
    dir: PathBuf,
    serial_lock: Mutex<()>,
    calls: AtomicUsize,
}

fn tsa() -> &'static OpenSslTsa {
    static TSA: OnceLock<OpenSslTsa> = OnceLock::new();
    TSA.get_or_init(|| {
        let dir = scratch_dir("tsa");
        let ca = ca_dir();
        std::fs::write(
            dir.join("ext.cnf"),
            format!(
                "[v3_tsa]\n\
                 basicConstraints = critical, CA:FALSE\n\
                 keyUsage = critical, digitalSignature, nonRepudiation\n\
                 extendedKeyUsage = critical, timeStamping\n\
                 subjectKeyIdentifier = hash\n\
                 authorityKeyIdentifier = keyid\n\
                 crlDistributionPoints = URI:file://{}\n",
                ca.join("dev-ca.crl").display()
            ),
        )
        .unwrap();
        run(Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
            ])
            .arg(dir.join("tsa.key")));
        run(Command::new("openssl")
            .args([
                "req",
                "-new",
                "-subj",
                "/CN=Shomei Test TSA (verify)/O=Shomei Dev",
                "-key",
            ])
            .arg(dir.join("tsa.key"))
            .arg("-out")
            .arg(dir.join("tsa.csr")));
        let serial = format!(
            "0x{:x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        run(Command::new("openssl")
            .args([
                "x509",
                "-req",
                "-sha256",
                "-days",
                "30",
                "-set_serial",
                &serial,
                "-in",
            ])
            .arg(dir.join("tsa.csr"))
            .arg("-CA")
            .arg(ca.join("ca.pem"))
            .arg("-CAkey")
            .arg(ca.join("ca.key"))
            .arg("-extfile")
            .arg(dir.join("ext.cnf"))
            .args(["-extensions", "v3_tsa", "-out"])
            .arg(dir.join("tsa.pem")));
        std::fs::write(dir.join("serial"), "01\n").unwrap();
        std::fs::write(
            dir.join("ts.cnf"),
            format!(
                "[tsa]\ndefault_tsa = test_tsa\n[test_tsa]\ndir = {dir}\nserial = $dir/serial\n\
                 crypto_device = builtin\nsigner_cert = $dir/tsa.pem\ncerts = {ca}\n\
                 signer_key = $dir/tsa.key\nsigner_digest = sha256\n\
                 default_policy = 1.3.6.1.4.1.55555.1.1\ndigests = sha256\naccuracy = secs:1\n\
                 clock_precision_digits = 0\nordering = no\ntsa_name = yes\n\
                 ess_cert_id_chain = no\ness_cert_id_alg = sha256\n",
                dir = dir.display(),
                ca = ca.join("ca.pem").display()
            ),
        )
        .unwrap();
        OpenSslTsa {
            dir,
            serial_lock: Mutex::new(()),
            calls: AtomicUsize::new(0),
        }
    })
}

impl Timestamper for OpenSslTsa {
    fn timestamp(&self, sha256_digest: &[u8; 32]) -> Result<Vec<u8>, TimestampError> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        let query = self.dir.join(format!("query{n}.tsq"));
        let token = self.dir.join(format!("token{n}.der"));
        run(Command::new("openssl")
            .args(["ts", "-query", "-sha256", "-cert", "-digest"])
            .arg(hex::encode(sha256_digest))
            .arg("-out")
            .arg(&query));
        let _serial = self.serial_lock.lock().unwrap();
        let reply = Command::new("openssl")
            .args(["ts", "-reply", "-token_out", "-queryfile"])
            .arg(&query)
            .arg("-config")
            .arg(self.dir.join("ts.cnf"))
            .arg("-out")
            .arg(&token)
            .output()
            .unwrap();
        if !reply.status.success() {
            return Err(TimestampError::Unavailable(
                String::from_utf8_lossy(&reply.stderr).into_owned(),
            ));
        }
        Ok(std::fs::read(token).unwrap())
    }
}

fn b_b(key: &str) -> Vec<u8> {
    sign_pdf(hsm(), &sample("contract.pdf"), &request(key), None).unwrap()
}

fn explain(report: &VerificationReport) -> String {
    serde_json::to_string_pretty(report).unwrap()
}

#[test]
fn a_b_b_file_is_valid_and_trusted_through_the_dev_ca() {
    let signed = b_b(RSA_KEY);
    let report = verify_pdf(&signed, &dev_ca()).unwrap();
    let why = explain(&report);
    assert!(report.valid, "{why}");
    assert_eq!(report.level.as_deref(), Some("B-B"), "{why}");
    assert!(!report.unsigned_changes_after_last_signature, "{why}");
    let [sig] = &report.signatures[..] else {
        panic!("{why}")
    };
    assert_eq!(sig.kind, SignatureKind::Signature);
    assert_eq!(sig.sub_filter, "ETSI.CAdES.detached");
    assert!(
        sig.integrity && sig.certificate_chain_trusted && sig.covers_whole_file,
        "{why}"
    );
    assert_eq!(sig.revision, report.revisions, "{why}");
    assert!(report.revisions >= 2, "{why}");
    assert_eq!(sig.field, "Signature1");
    assert!(sig.signer.as_deref().unwrap().contains("CN="), "{why}");
    assert!(
        sig.signing_time.as_deref().unwrap().starts_with("D:"),
        "{why}"
    );
    assert!(sig.timestamp.is_none() && sig.later_revisions_change.is_none());
    assert!(sig.errors.is_empty(), "{why}");
    // The report is meant for JSON clients.
    let json: serde_json::Value = serde_json::to_value(&report).unwrap();
    assert_eq!(json["signatures"][0]["kind"], "signature");
    assert_eq!(json["level"], "B-B");
}

#[test]
fn an_unrelated_trust_anchor_leaves_the_chain_untrusted() {
    let dir = scratch_dir("unrelated-ca");
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args([
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=Unrelated Root",
            "-keyout",
        ])
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("ca.pem")));
    let unrelated = certificates_from_pem(&std::fs::read(dir.join("ca.pem")).unwrap()).unwrap();

    let report = verify_pdf(&b_b(EC_KEY), &unrelated).unwrap();
    let why = explain(&report);
    assert!(!report.valid, "{why}");
    assert_eq!(report.level, None, "{why}");
    let sig = &report.signatures[0];
    assert!(sig.integrity, "the signature itself is intact: {why}");
    assert!(!sig.certificate_chain_trusted, "{why}");
    assert!(sig.errors.iter().any(|e| e.contains("chain")), "{why}");
}

#[test]
fn a_b_t_file_reaches_b_t_with_the_timestamp_time() {
    let signed = sign_pdf(
        hsm(),
        &sample("contract.pdf"),
        &request(EC_KEY),
        Some(tsa()),
    )
    .unwrap();
    let report = verify_pdf(&signed, &dev_ca()).unwrap();
    let why = explain(&report);
    assert!(report.valid, "{why}");
    assert_eq!(report.level.as_deref(), Some("B-T"), "{why}");
    let timestamp = report.signatures[0].timestamp.as_ref().expect(&why);
    assert!(timestamp.valid, "{why}");
    let time = chrono::DateTime::parse_from_rfc3339(&timestamp.time).expect(&why);
    let age = chrono::Utc::now().signed_duration_since(time);
    assert!(age.num_minutes().abs() < 10, "{why}");
    assert!(
        timestamp
            .tsa
            .as_deref()
            .unwrap()
            .contains("Shomei Test TSA"),
        "{why}"
    );
}

#[test]
fn two_signers_then_dss_and_document_timestamp_reach_b_lta() {
    let first = sign_pdf(
        hsm(),
        &sample("contract.pdf"),
        &request(RSA_KEY),
        Some(tsa()),
    )
    .unwrap();
    let second = sign_pdf(hsm(), &first, &request(EC_KEY), Some(tsa())).unwrap();

    // A document time-stamp without a DSS does not make B-LT.
    let no_dss = timestamp_pdf(&second, tsa(), None).unwrap();
    let report = verify_pdf(&no_dss, &dev_ca()).unwrap();
    assert!(report.valid, "{}", explain(&report));
    assert_eq!(report.level.as_deref(), Some("B-T"), "{}", explain(&report));

    let material = validation_material(&second).unwrap();
    let crls = fetch_crls(&material.crl_urls).unwrap();
    let validation = ValidationData {
        certificates: material.certificates,
        crls,
    };
    let lta = timestamp_pdf(&second, tsa(), Some(&validation)).unwrap();
    let report = verify_pdf(&lta, &dev_ca()).unwrap();
    let why = explain(&report);
    assert!(report.valid, "{why}");
    assert_eq!(report.level.as_deref(), Some("B-LTA"), "{why}");
    assert_eq!(report.revisions, 4, "{why}");
    let [s1, s2, ts] = &report.signatures[..] else {
        panic!("{why}")
    };
    assert_eq!((s1.revision, s2.revision, ts.revision), (2, 3, 4), "{why}");
    assert_eq!(
        s1.later_revisions_change.as_deref(),
        Some("only later signatures, DSS and document time-stamps"),
        "{why}"
    );
    assert_eq!(
        s2.later_revisions_change.as_deref(),
        Some("only DSS and document time-stamps"),
        "{why}"
    );
    assert!(!s1.covers_whole_file && !s2.covers_whole_file, "{why}");
    assert_eq!(ts.kind, SignatureKind::DocumentTimestamp);
    assert_eq!(ts.sub_filter, "ETSI.RFC3161");
    assert!(
        ts.covers_whole_file && ts.integrity && ts.certificate_chain_trusted,
        "{why}"
    );
    assert!(ts.timestamp.as_ref().is_some_and(|t| t.valid), "{why}");
    assert!(
        ts.signer.as_deref().unwrap().contains("Shomei Test TSA"),
        "{why}"
    );
    assert!(!report.unsigned_changes_after_last_signature, "{why}");
}

#[test]
fn a_flipped_byte_in_a_signed_range_breaks_integrity() {
    let mut signed = b_b(RSA_KEY);
    let at = signed
        .windows(b"Hanako Yamada".len())
        .rposition(|w| w == b"Hanako Yamada")
        .unwrap();
    signed[at] = b'J';
    let report = verify_pdf(&signed, &dev_ca()).unwrap();
    let why = explain(&report);
    assert!(!report.valid, "{why}");
    assert_eq!(report.level, None, "{why}");
    let sig = &report.signatures[0];
    assert!(!sig.integrity, "{why}");
    assert!(sig.certificate_chain_trusted, "{why}");
    assert!(
        sig.errors.iter().any(|e| e.contains("message-digest")),
        "{why}"
    );
}

/// Appends a revision that gives page 1 a new content stream (`replace_object` false) or
/// rewrites its existing content stream in place (`true`).
fn change_first_page(pdf: &[u8], in_place: bool) -> Vec<u8> {
    let doc = lopdf::Document::load_mem(pdf).unwrap();
    let page_id = *doc.get_pages().get(&1).unwrap();
    let old_contents = doc
        .get_dictionary(page_id)
        .unwrap()
        .get(b"Contents")
        .unwrap()
        .clone();
    let mut revision = IncrementalDocument::create_from(pdf.to_vec(), doc);
    let new_doc = &mut revision.new_document;
    for key in [
        &b"XRefStm"[..],
        b"DecodeParms",
        b"Filter",
        b"Length",
        b"W",
        b"Index",
        b"Type",
    ] {
        new_doc.trailer.remove(key);
    }
    let forged = Stream::new(
        dictionary! {},
        b"BT /F1 24 Tf 72 72 Td (Forged) Tj ET".to_vec(),
    );
    match (in_place, old_contents) {
        (true, Object::Reference(id)) => {
            new_doc.objects.insert(id, Object::Stream(forged));
        }
        (true, other) => panic!("page 1 /Contents is not a reference: {other:?}"),
        (false, _) => {
            let id = new_doc.add_object(forged);
            revision.opt_clone_object_to_new_document(page_id).unwrap();
            revision
                .new_document
                .get_dictionary_mut(page_id)
                .unwrap()
                .set("Contents", Object::Reference(id));
        }
    }
    let mut out = Vec::new();
    revision.save_to(&mut out).unwrap();
    assert!(out.starts_with(pdf));
    out
}

#[test]
fn changing_page_content_after_signing_is_reported_and_invalid() {
    let signed = b_b(EC_KEY);
    for in_place in [false, true] {
        let changed = change_first_page(&signed, in_place);
        let report = verify_pdf(&changed, &dev_ca()).unwrap();
        let why = explain(&report);
        assert!(!report.valid, "{why}");
        assert!(report.unsigned_changes_after_last_signature, "{why}");
        let sig = &report.signatures[0];
        assert!(sig.integrity && sig.certificate_chain_trusted, "{why}");
        assert!(!sig.covers_whole_file, "{why}");
        assert_eq!(
            sig.later_revisions_change.as_deref(),
            Some("page content changed"),
            "{why}"
        );
        assert_eq!(sig.revision + 1, report.revisions, "{why}");
    }
}

#[test]
fn a_byte_range_not_starting_at_zero_is_a_finding() {
    let signed = b_b(RSA_KEY);
    let text = b"/ByteRange";
    let at = signed.windows(text.len()).rposition(|w| w == text).unwrap();
    let open = at + signed[at..].iter().position(|&b| b == b'[').unwrap();
    let zero = open + signed[open..].iter().position(|&b| b == b'0').unwrap();
    let mut bad = signed.clone();
    bad[zero] = b'1';
    let report = verify_pdf(&bad, &dev_ca()).unwrap();
    let why = explain(&report);
    assert!(!report.valid, "{why}");
    assert!(!report.signatures[0].integrity, "{why}");
    assert!(
        report.signatures[0]
            .errors
            .iter()
            .any(|e| e.contains("start at 0")),
        "{why}"
    );
}

#[test]
fn garbage_and_truncated_input_are_errors_not_panics() {
    assert!(verify_pdf(b"", &dev_ca()).is_err());
    assert!(verify_pdf(b"hello, world", &dev_ca()).is_err());
    let signed = b_b(RSA_KEY);
    assert!(verify_pdf(&signed[..signed.len() / 2], &dev_ca()).is_err());
    // Whatever the cut or the damage, an answer and never a panic.
    for cut in (0..signed.len()).step_by(signed.len() / 97 + 1) {
        let _ = verify_pdf(&signed[..cut], &dev_ca());
        let mut damaged = signed.clone();
        damaged[cut] ^= 0x5a;
        let _ = verify_pdf(&damaged, &dev_ca());
    }
}
