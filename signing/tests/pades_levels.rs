//! PAdES B-T, document time-stamps and B-LTA against the SoftHSM2 dev token, with time-stamps
//! from OpenSSL's own TSA (`openssl ts -reply`, an implementation independent of ours) and every
//! result checked with external tools: pdfsig, qpdf, `openssl cms -verify`, `openssl ts -verify`.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::OnceLock;

use cms::content_info::ContentInfo;
use cms::signed_data::SignedData;
use common::{
    assert_externally_valid, embedded_signatures, hsm, hsm_dir, request, sample, Expected,
};
use common::{ca_dir, pem_file_der, run, scratch_dir, OpenSslTsa, TsaKey, EC_KEY, RSA_KEY};
use der::{Decode, Encode};
use sha2::{Digest, Sha256};
use shomei_signing::{
    fetch_crls, inspect_pdf, sign_pdf, timestamp_pdf, timestamp_pdf_hashed, validation_material,
    SignError, TimestampError, Timestamper, ValidationData,
};

/// id-aa-timeStampToken (RFC 3161 appendix A).
const ID_AA_TIME_STAMP_TOKEN: &str = "1.2.840.113549.1.9.16.2.14";

/// The TSA shared by the tests of this binary.
fn tsa() -> &'static OpenSslTsa {
    static TSA: OnceLock<OpenSslTsa> = OnceLock::new();
    TSA.get_or_init(|| OpenSslTsa::new("tsa", TsaKey::Rsa, 0))
}

/// A TSA that is down.
struct DownTsa;

impl Timestamper for DownTsa {
    fn timestamp(&self, _: &[u8; 32]) -> Result<Vec<u8>, TimestampError> {
        Err(TimestampError::Unavailable("connection refused".into()))
    }
}

/// A broken client that returns a genuine token, but for another digest.
struct WrongDigestTsa;

impl Timestamper for WrongDigestTsa {
    fn timestamp(&self, _: &[u8; 32]) -> Result<Vec<u8>, TimestampError> {
        tsa().timestamp(&[0x42; 32])
    }
}

/// What [`SpoiltTsa`] does to a genuine token.
type Spoil = fn(&mut Vec<u8>);

/// A broken client that returns a genuine token for the digest asked, spoilt.
struct SpoiltTsa(Spoil);

impl Timestamper for SpoiltTsa {
    fn timestamp(&self, digest: &[u8; 32]) -> Result<Vec<u8>, TimestampError> {
        let mut token = tsa().timestamp(digest)?;
        (self.0)(&mut token);
        Ok(token)
    }
}

/// Changes the last byte of the first DER encoding of `oid` (its last arc) in `token`.
fn respell_oid(token: &mut [u8], oid: &str) {
    let oid = der::asn1::ObjectIdentifier::new_unwrap(oid)
        .to_der()
        .unwrap();
    let at = token
        .windows(oid.len())
        .position(|w| w == oid.as_slice())
        .expect("the token holds the OID");
    token[at + oid.len() - 1] ^= 0x02;
}

fn signed_data(cms_der: &[u8]) -> SignedData {
    ContentInfo::from_der(cms_der)
        .unwrap()
        .content
        .decode_as::<SignedData>()
        .unwrap()
}

/// The signature value of the single SignerInfo and its signature time-stamp token.
fn signature_and_token(cms_der: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let signed_data = signed_data(cms_der);
    let signer_info = signed_data.signer_infos.0.get(0).unwrap();
    let unsigned = signer_info
        .unsigned_attrs
        .as_ref()
        .expect("B-T signature must carry unsigned attributes");
    let tokens: Vec<_> = unsigned
        .iter()
        .filter(|a| a.oid.to_string() == ID_AA_TIME_STAMP_TOKEN)
        .flat_map(|a| a.values.iter())
        .collect();
    assert_eq!(tokens.len(), 1, "exactly one signature time-stamp token");
    (
        signer_info.signature.as_bytes().to_vec(),
        tokens[0].to_der().unwrap(),
    )
}

fn openssl_ts_verify(dir: &Path, name: &str, token: &[u8], tsa: &OpenSslTsa, what: &[&str]) {
    let path = dir.join(format!("{name}.tsr.der"));
    std::fs::write(&path, token).unwrap();
    let out = run(Command::new("openssl")
        .args(["ts", "-verify", "-token_in", "-in"])
        .arg(&path)
        .args(what)
        .arg("-CAfile")
        .arg(ca_dir().join("ca.pem"))
        .arg("-untrusted")
        .arg(tsa.certificate_pem()));
    assert!(out.contains("Verification: OK"), "{name}: {out}");
}

/// `openssl ts -verify` of the signature time-stamp against SHA-256 of the signature value.
fn assert_signature_timestamp_valid(name: &str, cms_der: &[u8], tsa: &OpenSslTsa) {
    let (signature, token) = signature_and_token(cms_der);
    let digest = hex::encode(Sha256::digest(&signature));
    openssl_ts_verify(&scratch_dir(name), name, &token, tsa, &["-digest", &digest]);
}

fn pdfsig(name: &str, pdf: &[u8]) -> String {
    let dir = scratch_dir(name);
    let path = dir.join("file.pdf");
    std::fs::write(&path, pdf).unwrap();
    run(Command::new("pdfsig")
        .arg("-nssdir")
        .arg(format!("sql:{}", hsm_dir().join("nssdb").display()))
        .arg(&path))
}

fn is_timestamp_token(cms_der: &[u8]) -> bool {
    signed_data(cms_der)
        .encap_content_info
        .econtent_type
        .to_string()
        == "1.2.840.113549.1.9.16.1.4"
}

fn qpdf_check(name: &str, path: &Path) {
    let out = run(Command::new("qpdf").arg("--check").arg(path));
    assert!(
        out.contains("No syntax or stream encoding errors found"),
        "{name}: {out}"
    );
}

/// Checks a file holding signatures (B-B or B-T) and document time-stamps, in any order, with
/// external tools:
/// - qpdf --check;
/// - pdfsig: every CAdES signature "Signature is Valid." with a trusted certificate, every
///   document time-stamp listed with the TSA as signer, only the newest covering the file.
///   poppler 22.12 does not verify `ETSI.RFC3161` ("Signature Type: unknown", "Signature has
///   not yet been verified."), so those are verified by openssl below;
/// - `openssl cms -verify` of every signature over its byte ranges, and `openssl ts -verify` of
///   every signature time-stamp (over the signature value) and document time-stamp (over the
///   byte ranges), chains to the dev CA.
///
/// Returns pdfsig's report.
fn assert_levels_valid(
    name: &str,
    pdf: &[u8],
    tsa: &OpenSslTsa,
    signatures: usize,
    signature_timestamps: usize,
    document_timestamps: usize,
) -> String {
    let dir = scratch_dir(name);
    let path = dir.join("file.pdf");
    std::fs::write(&path, pdf).unwrap();
    qpdf_check(name, &path);

    let report = pdfsig(name, pdf);
    let blocks: Vec<&str> = report.split("Signature #").skip(1).collect();
    assert_eq!(
        blocks.len(),
        signatures + document_timestamps,
        "{name}:\n{report}"
    );
    let mut seen_signers = Vec::new();
    for block in &blocks {
        if block.contains("Signature Type: ETSI.CAdES.detached") {
            assert!(block.contains("Signature is Valid."), "{name}:\n{report}");
            // poppler reports a certificate it already verified in this run as "Unknown issue"
            // (see shomei_testkit::validate); openssl checks every chain below anyway.
            let signer = block
                .lines()
                .find(|l| l.contains("Signer full Distinguished Name"))
                .unwrap();
            assert!(
                block.contains("Certificate is Trusted")
                    || seen_signers.contains(&signer)
                        && block.contains("Unknown issue with Certificate"),
                "{name}:\n{report}"
            );
            seen_signers.push(signer);
        } else {
            assert!(
                block.contains("Signature Field Name: Timestamp")
                    && block.contains("Signer Certificate Common Name: Shomei Test TSA"),
                "{name}: unexpected signature:\n{report}"
            );
        }
    }
    assert_eq!(
        report.matches("Signature is Valid.").count(),
        signatures,
        "{name}:\n{report}"
    );
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
    assert_eq!(embedded.len(), signatures + document_timestamps, "{name}");
    assert!(embedded.last().unwrap().covers_whole_file, "{name}");
    let (mut cades, mut signature_ts, mut document_ts) = (0, 0, 0);
    for (i, signature) in embedded.iter().enumerate() {
        let content = dir.join(format!("signed-bytes{i}.bin"));
        std::fs::write(&content, &signature.signed_bytes).unwrap();
        if is_timestamp_token(&signature.cms_der) {
            openssl_ts_verify(
                &dir,
                &format!("doc-ts{i}"),
                &signature.cms_der,
                tsa,
                &["-data", content.to_str().unwrap()],
            );
            document_ts += 1;
            continue;
        }
        let cms = dir.join(format!("sig{i}.der"));
        std::fs::write(&cms, &signature.cms_der).unwrap();
        run(Command::new("openssl")
            .args([
                "cms", "-verify", "-binary", "-inform", "DER", "-purpose", "any",
            ])
            .args(["-out", "/dev/null", "-in"])
            .arg(&cms)
            .arg("-content")
            .arg(&content)
            .arg("-CAfile")
            .arg(ca_dir().join("ca.pem")));
        cades += 1;
        let unsigned = signed_data(&signature.cms_der)
            .signer_infos
            .0
            .get(0)
            .unwrap()
            .unsigned_attrs
            .is_some();
        if unsigned {
            assert_signature_timestamp_valid(&format!("{name}-sig{i}-ts"), &signature.cms_der, tsa);
            signature_ts += 1;
        }
    }
    assert_eq!(
        (cades, signature_ts, document_ts),
        (signatures, signature_timestamps, document_timestamps),
        "{name}"
    );
    pyhanko_validate(name, &path, tsa);
    report
}

/// pyHanko, a third independent validator that does verify document time-stamps and tells
/// LTA updates (DSS, document time-stamp) from other changes, when its library is installed
/// (`pip install pyhanko`); the other checks do not depend on it.
const PYHANKO_VALIDATE: &str = r#"
import sys
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.validation import validate_pdf_signature, validate_pdf_timestamp, DocumentSecurityStore
from pyhanko_certvalidator import ValidationContext
from pyhanko.keys import load_cert_from_pemder
path, ca_path, tsa_path = sys.argv[1:4]
ca = load_cert_from_pemder(ca_path); tsa = load_cert_from_pemder(tsa_path)
def vc():
    return ValidationContext(trust_roots=[ca], other_certs=[tsa], allow_fetching=False, revocation_mode='soft-fail')
ok = True
with open(path, 'rb') as f:
    r = PdfFileReader(f)
    for sig in r.embedded_signatures:
        if sig.sig_object_type == '/DocTimeStamp':
            st = validate_pdf_timestamp(sig, validation_context=vc())
            good = st.intact and st.valid and st.trusted
        else:
            st = validate_pdf_signature(sig, signer_validation_context=vc(), ts_validation_context=vc())
            good = st.intact and st.valid and st.trusted
            ts = st.timestamp_validity
            if ts is not None:
                good = good and ts.intact and ts.valid and ts.trusted
                print(sig.field_name, 'signature time-stamp', ts.summary())
        print(sig.field_name, sig.sig_object_type, st.summary(), st.coverage, st.modification_level)
        if not good:
            print(st.pretty_print_details()); ok = False
    try:
        dss = DocumentSecurityStore.read_dss(r)
        print('DSS certs', len(dss.certs), 'crls', len(dss.crls), 'ocsps', len(dss.ocsps))
    except Exception as e:
        print('no DSS', type(e).__name__)
sys.exit(0 if ok else 1)
"#;

fn pyhanko_validate(name: &str, path: &Path, tsa: &OpenSslTsa) {
    let installed = Command::new("python3")
        .args(["-c", "import pyhanko"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        eprintln!("{name}: pyhanko not installed; skipping its check");
        return;
    }
    let output = Command::new("python3")
        .args(["-c", PYHANKO_VALIDATE])
        .arg(path)
        .arg(ca_dir().join("ca.pem"))
        .arg(tsa.certificate_pem())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{name}: pyhanko:\n{text}");
    assert!(
        !text.contains("ModificationLevel.OTHER"),
        "{name}: pyhanko:\n{text}"
    );
}

/// The newest revision's /DSS, read with lopdf: (certificates, CRLs, OCSP responses).
#[allow(clippy::type_complexity)]
fn dss_with_lopdf(pdf: &[u8]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let doc = lopdf::Document::load_mem(pdf).unwrap();
    let dss = doc.catalog().unwrap().get(b"DSS").unwrap();
    let dss = doc.dereference(dss).unwrap().1.as_dict().unwrap();
    let read = |key: &[u8]| -> Vec<Vec<u8>> {
        let items = doc.dereference(dss.get(key).unwrap()).unwrap().1;
        items
            .as_array()
            .unwrap()
            .iter()
            .map(|item| {
                let stream = doc.dereference(item).unwrap().1.as_stream().unwrap();
                stream.get_plain_content().unwrap()
            })
            .collect()
    };
    (read(b"Certs"), read(b"CRLs"), read(b"OCSPs"))
}

/// The newest revision's /DSS, read with qpdf: (certificates, CRLs, number of OCSP responses).
fn dss_with_qpdf(name: &str, pdf: &[u8]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>, usize) {
    let dir = scratch_dir(name);
    let path = dir.join("file.pdf");
    std::fs::write(&path, pdf).unwrap();
    let show = |object: &str| {
        run(Command::new("qpdf")
            .arg(&path)
            .arg(format!("--show-object={object}")))
    };
    let reference = |text: &str, key: &str| -> String {
        let at = text
            .find(key)
            .unwrap_or_else(|| panic!("{name}: no {key} in {text}"))
            + key.len();
        let words: Vec<&str> = text[at..].split_whitespace().take(3).collect();
        assert_eq!(
            words[2].trim_end_matches(">>"),
            "R",
            "{name}: {key} in {text}"
        );
        format!("{},{}", words[0], words[1])
    };
    let catalog = show(&reference(&show("trailer"), "/Root"));
    let dss = show(&reference(&catalog, "/DSS"));
    let array = |key: &str| -> Vec<String> {
        let at = dss
            .find(key)
            .unwrap_or_else(|| panic!("{name}: no {key} in {dss}"))
            + key.len();
        let rest = &dss[at..];
        let inner = &rest[rest.find('[').unwrap() + 1..rest.find(']').unwrap()];
        inner
            .split(" R")
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(|r| r.replace(' ', ","))
            .collect()
    };
    let stream = |object: &String| -> Vec<u8> {
        let out = Command::new("qpdf")
            .arg(&path)
            .arg(format!("--show-object={object}"))
            .arg("--filtered-stream-data")
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: qpdf stream {object}");
        out.stdout
    };
    (
        array("/Certs").iter().map(stream).collect(),
        array("/CRLs").iter().map(stream).collect(),
        array("/OCSPs").len(),
    )
}

fn certificate_der(key: &str) -> Vec<u8> {
    hsm().identity(key).unwrap().certificate().to_der().unwrap()
}

fn b_t(key: &str) {
    let original = sample("contract.pdf");
    let signed = sign_pdf(hsm(), &original, &request(key), Some(tsa())).unwrap();
    assert!(signed.starts_with(&original));
    assert_externally_valid(&format!("b-t-{key}"), &signed, Expected::timestamped(1));
    assert_levels_valid(&format!("b-t-{key}-levels"), &signed, tsa(), 1, 1, 0);
    assert_eq!(inspect_pdf(&signed).unwrap().signatures, 1);
}

#[test]
fn rsa_b_t_signature_carries_a_valid_signature_timestamp() {
    b_t(RSA_KEY);
}

#[test]
fn ec_b_t_signature_carries_a_valid_signature_timestamp() {
    b_t(EC_KEY);
}

#[test]
fn a_document_timestamp_from_the_original_hash_is_the_revision_timestamp_pdf_appends() {
    let signed = sign_pdf(hsm(), &sample("contract.pdf"), &request(RSA_KEY), None).unwrap();
    let hashed = Sha256::new_with_prefix(&signed);
    let stamped = timestamp_pdf_hashed(&signed, &hashed, tsa(), None).unwrap();
    let whole = [&signed[..], &stamped.appended].concat();
    assert_eq!(stamped.sha256, <[u8; 32]>::from(Sha256::digest(&whole)));
    assert_levels_valid("doc-ts-hashed", &whole, tsa(), 1, 0, 1);
}

#[test]
fn document_timestamp_on_a_signed_file_is_valid_and_keeps_the_signature_valid() {
    let signed = sign_pdf(
        hsm(),
        &sample("contract-objstm.pdf"),
        &request(RSA_KEY),
        None,
    )
    .unwrap();
    let stamped = timestamp_pdf(&signed, tsa(), None).unwrap();
    assert!(stamped.starts_with(&signed));
    let report = assert_levels_valid("doc-ts", &stamped, tsa(), 1, 0, 1);
    assert!(
        report.contains("Signature Field Name: Timestamp1"),
        "{report}"
    );

    let doc = lopdf::Document::load_mem(&stamped).unwrap();
    assert!(
        doc.catalog().unwrap().get(b"DSS").is_err(),
        "no DSS without validation data"
    );
    let value = doc
        .objects
        .values()
        .filter_map(|o| o.as_dict().ok())
        .find(|d| d.get(b"Type").and_then(|t| t.as_name()).ok() == Some(b"DocTimeStamp"))
        .expect("a /DocTimeStamp dictionary");
    assert_eq!(
        value.get(b"Filter").unwrap().as_name().unwrap(),
        b"Adobe.PPKLite"
    );
    assert_eq!(
        value.get(b"SubFilter").unwrap().as_name().unwrap(),
        b"ETSI.RFC3161"
    );
}

#[test]
fn b_lta_two_b_t_signers_then_dss_and_document_timestamp() {
    let first = sign_pdf(
        hsm(),
        &sample("contract.pdf"),
        &request(RSA_KEY),
        Some(tsa()),
    )
    .unwrap();
    let second = sign_pdf(hsm(), &first, &request(EC_KEY), Some(tsa())).unwrap();
    assert_levels_valid("b-lta-before", &second, tsa(), 2, 2, 0);

    let material = validation_material(&second).unwrap();
    let ca = pem_file_der(&ca_dir().join("ca.pem"));
    let expected_certs = [
        certificate_der(RSA_KEY),
        certificate_der(EC_KEY),
        ca.clone(),
        tsa().certificate_der(),
    ];
    for cert in &expected_certs {
        assert!(
            material.certificates.contains(cert),
            "validation material misses a certificate"
        );
    }
    assert_eq!(
        material.certificates.len(),
        expected_certs.len(),
        "each certificate once"
    );
    assert_eq!(
        material.crl_urls,
        [format!("file://{}", ca_dir().join("dev-ca.crl").display())]
    );
    let crls = fetch_crls(&material.crl_urls).unwrap();
    assert_eq!(crls, [std::fs::read(ca_dir().join("dev-ca.crl")).unwrap()]);

    let validation = ValidationData {
        certificates: material.certificates,
        crls,
    };
    let lta = timestamp_pdf(&second, tsa(), Some(&validation)).unwrap();
    assert!(lta.starts_with(&second));
    assert_levels_valid("b-lta", &lta, tsa(), 2, 2, 1);
    assert_eq!(inspect_pdf(&lta).unwrap().signatures, 3);

    let (certs, crl_list, ocsps) = dss_with_lopdf(&lta);
    assert_eq!(certs.len(), expected_certs.len());
    for cert in &expected_certs {
        assert!(certs.contains(cert), "lopdf: DSS misses a certificate");
    }
    assert_eq!(crl_list, validation.crls);
    assert!(ocsps.is_empty());
    let (certs, crl_list, ocsps) = dss_with_qpdf("b-lta-qpdf", &lta);
    assert_eq!(certs.len(), expected_certs.len());
    for cert in &expected_certs {
        assert!(certs.contains(cert), "qpdf: DSS misses a certificate");
    }
    assert_eq!(crl_list, validation.crls);
    assert_eq!(ocsps, 0);
}

#[test]
fn a_second_dss_merges_with_the_first() {
    let signed = sign_pdf(
        hsm(),
        &sample("contract.pdf"),
        &request(RSA_KEY),
        Some(tsa()),
    )
    .unwrap();
    let material = validation_material(&signed).unwrap();
    let crls = fetch_crls(&material.crl_urls).unwrap();
    let first = ValidationData {
        certificates: material.certificates.clone(),
        crls: crls.clone(),
    };
    let once = timestamp_pdf(&signed, tsa(), Some(&first)).unwrap();

    // A later round: the document time-stamp's own certificates are new, the rest repeats.
    let later = validation_material(&once).unwrap();
    let extra = certificate_der(EC_KEY);
    let mut certificates = later.certificates.clone();
    certificates.push(extra.clone());
    let twice = timestamp_pdf(&once, tsa(), Some(&ValidationData { certificates, crls })).unwrap();
    assert_levels_valid("dss-merge", &twice, tsa(), 1, 1, 2);

    let (certs, crl_list, _) = dss_with_lopdf(&twice);
    for cert in material
        .certificates
        .iter()
        .chain(&later.certificates)
        .chain([&extra])
    {
        assert_eq!(
            certs.iter().filter(|c| *c == cert).count(),
            1,
            "each certificate once"
        );
    }
    assert_eq!(crl_list.len(), 1, "the same CRL is not stored twice");
}

#[test]
fn timestamper_failure_fails_signing_transiently_and_produces_nothing() {
    let original = sample("contract.pdf");
    let err = sign_pdf(hsm(), &original, &request(RSA_KEY), Some(&DownTsa)).unwrap_err();
    assert!(matches!(err, SignError::Timestamp(_)), "{err:?}");
    assert!(!err.is_permanent());

    let err = timestamp_pdf(&original, &DownTsa, None).unwrap_err();
    assert!(matches!(err, SignError::Timestamp(_)), "{err:?}");
    assert!(!err.is_permanent());
}

#[test]
fn token_for_another_digest_is_refused() {
    let original = sample("contract.pdf");
    let err = sign_pdf(hsm(), &original, &request(EC_KEY), Some(&WrongDigestTsa)).unwrap_err();
    assert!(matches!(err, SignError::BadTimestamp(_)), "{err:?}");
    assert!(!err.is_permanent());
    let err = timestamp_pdf(&original, &WrongDigestTsa, None).unwrap_err();
    assert!(matches!(err, SignError::BadTimestamp(_)), "{err:?}");
}

#[test]
fn tokens_that_are_not_a_time_stamp_token_are_refused() {
    let original = sample("contract.pdf");
    let cases: [(&str, Spoil, &str); 4] = [
        ("cut short", |t| t.truncate(t.len() - 1), "not a DER"),
        ("with a byte after it", |t| t.push(0), "not a DER"),
        (
            "of other content than SignedData",
            |t| respell_oid(t, "1.2.840.113549.1.7.2"),
            "not a SignedData",
        ),
        (
            "encapsulating other content than a TSTInfo",
            |t| respell_oid(t, "1.2.840.113549.1.9.16.1.4"),
            "not a TSTInfo",
        ),
    ];
    for (what, spoil, reason) in cases {
        let err =
            sign_pdf(hsm(), &original, &request(EC_KEY), Some(&SpoiltTsa(spoil))).expect_err(what);
        match &err {
            SignError::BadTimestamp(message) => {
                assert!(message.contains(reason), "{what}: {err:?}")
            }
            _ => panic!("{what}: {err:?}"),
        }
        assert!(!err.is_permanent(), "{what}");
    }
}

#[test]
fn token_larger_than_the_estimate_is_retried_with_the_real_size() {
    // ~600 padding names make a ~25 KB TSA certificate, far past the 8 KiB token estimate.
    let big = OpenSslTsa::new("big-tsa", TsaKey::Rsa, 600);
    let original = sample("contract.pdf");
    let signed = sign_pdf(hsm(), &original, &request(EC_KEY), Some(&big)).unwrap();
    assert_eq!(
        big.calls.load(Ordering::Relaxed),
        2,
        "first placeholder too small, then retried"
    );
    let (_, token) = signature_and_token(&embedded_signatures(&signed)[0].cms_der);
    assert!(token.len() > 16 * 1024, "token of {} bytes", token.len());
    assert_levels_valid("big-b-t", &signed, &big, 1, 1, 0);

    let stamped = timestamp_pdf(&signed, &big, None).unwrap();
    assert_eq!(big.calls.load(Ordering::Relaxed), 4);
    assert_levels_valid("big-doc-ts", &stamped, &big, 1, 1, 1);
}

#[test]
fn crl_urls_of_unknown_schemes_are_refused() {
    let err = fetch_crls(&["ldap://example.invalid/cn=crl".into()]).unwrap_err();
    assert!(matches!(err, SignError::CrlFetch { .. }), "{err:?}");
    let err = fetch_crls(&["file:///nonexistent/dev.crl".into()]).unwrap_err();
    assert!(!err.is_permanent());
}
