//! `verify_pdf` on files signed with the SoftHSM2 dev token, time-stamped by OpenSSL's own TSA
//! (`openssl ts -reply`, certificate issued by the dev CA), and then tampered with.

mod common;

use std::process::Command;
use std::sync::OnceLock;

use common::{ca_dir, hsm, request, run, sample, scratch_dir, OpenSslTsa, TsaKey, EC_KEY, RSA_KEY};
use lopdf::{dictionary, IncrementalDocument, Object, Stream};
use shomei_signing::{
    certificates_from_pem, fetch_crls, sign_pdf, timestamp_pdf, validation_material, verify_pdf,
    SignatureKind, ValidationData, VerificationReport,
};
use x509_cert::Certificate;

fn dev_ca() -> Vec<Certificate> {
    certificates_from_pem(&std::fs::read(ca_dir().join("ca.pem")).unwrap()).unwrap()
}

/// `openssl ts -reply` with a throw-away EC key certified by the dev CA.
fn tsa() -> &'static OpenSslTsa {
    static TSA: OnceLock<OpenSslTsa> = OnceLock::new();
    TSA.get_or_init(|| OpenSslTsa::new("verify-tsa", TsaKey::EcP256, 0))
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
