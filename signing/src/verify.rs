//! Verification of the signatures and document time-stamps in a PDF (R-VERIFY-1): byte ranges,
//! CMS integrity, certificate chains to the caller's trust anchors, signature and document
//! time-stamps, what changed after each signature, and the PAdES level reached.
//!
//! Never panics and never fails on a broken signature: only an unreadable PDF is an error,
//! everything else is a finding in the report.

use std::collections::{BTreeMap, HashSet};
use std::sync::{LazyLock, Mutex};

use chrono::SecondsFormat;
use cms::cert::CertificateChoices;
use cms::content_info::ContentInfo;
use cms::signed_data::{SignedData, SignerInfo};
use der::asn1::{ObjectIdentifier, OctetString};
use der::{Decode, Encode, Reader, SliceReader, Tag, Tagged};
use lopdf::{Dictionary, Document, Object, ObjectId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha384, Sha512};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::crl::CertificateList;
use x509_cert::Certificate;

use crate::error::PdfError;
use crate::pdf;
use crate::tsp::{
    self, TokenExpectations, TstInfo, ID_CONTENT_TYPE, ID_CT_TST_INFO, ID_MESSAGE_DIGEST,
    ID_SHA256, ID_SHA384, ID_SHA512, ID_SIGNED_DATA, RSA_ENCRYPTION,
};

/// The outcome of [`verify_pdf`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerificationReport {
    /// Every signature and time-stamp is valid, at least one is present, and nothing but
    /// DSS / document time-stamp revisions was appended after the last signature.
    pub valid: bool,
    /// Incremental revisions (end-of-file markers) in the file.
    pub revisions: usize,
    /// Signatures and document time-stamps, in the order they were added.
    pub signatures: Vec<SignatureReport>,
    /// Highest PAdES baseline level reached by all signatures: "B-B", "B-T", "B-LT", "B-LTA".
    pub level: Option<String>,
    /// Something other than a DSS was appended after the newest signature or time-stamp.
    pub unsigned_changes_after_last_signature: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignatureKind {
    /// A CMS signature (`/Type /Sig`).
    Signature,
    /// An RFC 3161 document time-stamp (`/Type /DocTimeStamp`).
    DocumentTimestamp,
}

/// One signature or document time-stamp.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureReport {
    /// The field name (/T).
    pub field: String,
    pub kind: SignatureKind,
    pub sub_filter: String,
    /// The message digest (the TSTInfo imprint for a document time-stamp) equals the digest
    /// of the byte ranges, and the signature over the signed attributes verifies with the
    /// signer certificate's key.
    pub integrity: bool,
    pub covers_whole_file: bool,
    /// The revision (1-based) whose end the byte ranges reach.
    pub revision: usize,
    /// Coarse classification of what later revisions added or changed; `None` when the
    /// signature covers the whole file.
    pub later_revisions_change: Option<String>,
    /// Subject DN of the signer (or TSA) certificate.
    pub signer: Option<String>,
    /// The signature dictionary's /M, as written.
    pub signing_time: Option<String>,
    /// The signer certificate chains to one of the trust anchors, every link's signature
    /// checked.
    pub certificate_chain_trusted: bool,
    /// The signature time-stamp of a signature, or the token itself for a document
    /// time-stamp.
    pub timestamp: Option<TimestampReport>,
    /// Every problem found; empty for a valid signature.
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimestampReport {
    /// genTime, RFC 3339 (empty if the token could not be read at all).
    pub time: String,
    /// The token passed [`verify_token`](crate::verify_token) against the trust anchors.
    pub valid: bool,
    /// Subject DN of the TSA certificate.
    pub tsa: Option<String>,
}

/// id-aa-timeStampToken (RFC 3161 appendix A).
const ID_AA_TIME_STAMP_TOKEN: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.2.14");
const SHA384_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
const SHA512_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13");
const SHA256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const ECDSA_WITH_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");

/// Most links allowed between a signer certificate and an anchor.
const MAX_CHAIN_DEPTH: usize = 8;
/// Largest DSS entry read (a big CA's CRL is a few MiB).
const MAX_DSS_ITEM: usize = 32 << 20;
/// Bounds recursion through hostile DSS / VRI structures.
const MAX_WALK_DEPTH: usize = 8;

/// Verifies every signature and document time-stamp of `pdf` against `trust_anchors`.
///
/// An unreadable PDF is an `Err`; a broken signature is a finding in the report. Never
/// panics. Blocking (parsing, hashing); run it on a blocking thread.
pub fn verify_pdf(
    pdf: &[u8],
    trust_anchors: &[Certificate],
) -> Result<VerificationReport, PdfError> {
    let doc = pdf::load(pdf)?;
    pdf::guarded(|| Ok(verify_document(pdf, &doc, trust_anchors)))
}

/// What the level computation needs besides the public report.
struct Checked {
    report: SignatureReport,
    /// End of the byte ranges, if they are well-formed.
    end: Option<usize>,
    /// Byte ranges, integrity, chain and later changes all fine.
    core_ok: bool,
    /// Path from the signer certificate up to (excluding) the trust anchor.
    path: Vec<Certificate>,
}

fn verify_document(pdf: &[u8], doc: &Document, anchors: &[Certificate]) -> VerificationReport {
    let eofs = eof_markers(pdf);
    let dss = Dss::read(doc);
    let mut checked: Vec<Checked> = signature_values(doc)
        .into_iter()
        .map(|(field, value)| check_signature(pdf, field, &value, anchors, &dss, &eofs))
        .collect();
    checked.sort_by_key(|c| c.end.unwrap_or(usize::MAX));

    // What was added after each signature, one diff per distinct prefix.
    let mut prefixes: BTreeMap<usize, Option<Document>> = BTreeMap::new();
    let mut prefix = |end: usize| -> Option<Document> {
        prefixes
            .entry(end)
            .or_insert_with(|| load_prefix(&pdf[..end]))
            .clone()
    };
    for c in &mut checked {
        let Some(end) = c.end.filter(|&end| end < pdf.len()) else {
            continue;
        };
        if only_whitespace(&pdf[end..]) {
            continue;
        }
        match prefix(end) {
            Some(old) => {
                let changes = classify(&old, doc);
                let text = changes.describe();
                if !changes.allowed() {
                    c.core_ok = false;
                    c.report
                        .errors
                        .push(format!("document changed after signing: {text}"));
                }
                c.report.later_revisions_change = Some(text);
            }
            None => {
                c.core_ok = false;
                c.report
                    .errors
                    .push("the signed revision cannot be read on its own".into());
                c.report.later_revisions_change = Some("unknown".into());
            }
        }
    }

    let last_end = checked.iter().filter_map(|c| c.end).max();
    let unsigned_changes_after_last_signature = match last_end {
        Some(end) if end < pdf.len() && !only_whitespace(&pdf[end..]) => match prefix(end) {
            Some(old) => !classify(&old, doc).only_dss(),
            None => true,
        },
        _ => false,
    };

    let level = level(&checked, &dss, &mut prefix);
    let valid = !checked.is_empty()
        && !unsigned_changes_after_last_signature
        && checked.iter().all(|c| c.report.errors.is_empty());
    VerificationReport {
        valid,
        revisions: eofs.len().max(1),
        signatures: checked.into_iter().map(|c| c.report).collect(),
        level,
        unsigned_changes_after_last_signature,
    }
}

fn level(
    checked: &[Checked],
    dss: &Dss,
    prefix: &mut impl FnMut(usize) -> Option<Document>,
) -> Option<String> {
    let signatures: Vec<&Checked> = checked
        .iter()
        .filter(|c| c.report.kind == SignatureKind::Signature)
        .collect();
    if signatures.is_empty() || !signatures.iter().all(|c| c.core_ok) {
        return None;
    }
    let timestamped = signatures
        .iter()
        .all(|c| c.report.timestamp.as_ref().is_some_and(|t| t.valid));
    if !timestamped {
        return Some("B-B".into());
    }
    let paths: Vec<&[Certificate]> = signatures.iter().map(|c| &c.path[..]).collect();
    if !dss.holds(&paths) {
        // A DSS that lacks the material now cannot have held it under an earlier time-stamp
        // either (DSS entries are only ever added).
        return Some("B-T".into());
    }
    let archived = checked.iter().any(|c| {
        c.report.kind == SignatureKind::DocumentTimestamp
            && c.core_ok
            && c.report.timestamp.as_ref().is_some_and(|t| t.valid)
            && c.end
                .and_then(&mut *prefix)
                .is_some_and(|covered| Dss::read(&covered).holds(&paths))
    });
    Some(if archived { "B-LTA" } else { "B-LT" }.into())
}

// ---------------------------------------------------------------------------------------------
// One signature
// ---------------------------------------------------------------------------------------------

fn check_signature(
    pdf: &[u8],
    field: String,
    value: &Dictionary,
    anchors: &[Certificate],
    dss: &Dss,
    eofs: &[usize],
) -> Checked {
    let name = |key: &[u8]| {
        value
            .get(key)
            .ok()
            .and_then(|o| o.as_name().ok())
            .map(|n| String::from_utf8_lossy(n).into_owned())
    };
    let sub_filter = name(b"SubFilter").unwrap_or_default();
    let kind = if name(b"Type").as_deref() == Some("DocTimeStamp") || sub_filter == "ETSI.RFC3161" {
        SignatureKind::DocumentTimestamp
    } else {
        SignatureKind::Signature
    };
    let mut report = SignatureReport {
        field,
        kind,
        sub_filter: sub_filter.clone(),
        integrity: false,
        covers_whole_file: false,
        revision: 0,
        later_revisions_change: None,
        signer: None,
        signing_time: value.get(b"M").ok().and_then(|m| match m {
            Object::String(bytes, _) => Some(text(bytes)),
            _ => None,
        }),
        certificate_chain_trusted: false,
        timestamp: None,
        errors: Vec::new(),
    };

    let contents = match value.get(b"Contents") {
        Ok(Object::String(bytes, _)) => bytes.clone(),
        _ => {
            report.errors.push("no /Contents string".into());
            Vec::new()
        }
    };
    let ranges = match byte_ranges(pdf, value, &contents) {
        Ok(ranges) => Some(ranges),
        Err(e) => {
            report.errors.push(format!("/ByteRange: {e}"));
            None
        }
    };
    let end = ranges.map(|[_, _, c, d]| c + d);
    if let Some(end) = end {
        report.covers_whole_file = end == pdf.len();
        report.revision = eofs.iter().filter(|&&eof| eof <= end).count();
        let at_revision_end = eofs
            .iter()
            .rev()
            .find(|&&eof| eof <= end)
            .is_some_and(|&eof| only_whitespace(&pdf[eof..end]));
        if !at_revision_end {
            report
                .errors
                .push("byte ranges do not end at the end of a revision".into());
        }
    }
    let signed_parts: Option<[&[u8]; 2]> =
        ranges.map(|[a, b, c, d]| [&pdf[a..a + b], &pdf[c..c + d]]);

    let mut path = Vec::new();
    let verified = match kind {
        SignatureKind::Signature => {
            if !matches!(
                sub_filter.as_str(),
                "ETSI.CAdES.detached" | "adbe.pkcs7.detached"
            ) {
                report
                    .errors
                    .push(format!("unsupported /SubFilter {sub_filter:?}"));
            }
            check_cms_signature(&contents, signed_parts, anchors, dss, &mut report)
        }
        SignatureKind::DocumentTimestamp => {
            check_document_timestamp(&contents, signed_parts, anchors, dss, &mut report)
        }
    };
    if let Some(found) = verified {
        path = found;
    }
    let core_ok = report.errors.is_empty() && report.integrity && report.certificate_chain_trusted;
    Checked {
        report,
        end,
        core_ok,
        path,
    }
}

/// Checks /ByteRange = [0 b c d]: inside the file, the gap exactly the /Contents hex string.
fn byte_ranges(pdf: &[u8], value: &Dictionary, contents: &[u8]) -> Result<[usize; 4], String> {
    let items = value
        .get(b"ByteRange")
        .ok()
        .and_then(|r| r.as_array().ok())
        .ok_or("missing or not an array")?;
    let numbers: Vec<usize> = items
        .iter()
        .map(|n| n.as_i64().ok().and_then(|n| usize::try_from(n).ok()))
        .collect::<Option<_>>()
        .ok_or("not four non-negative integers")?;
    let [a, b, c, d] = numbers[..] else {
        return Err("not four non-negative integers".into());
    };
    if a != 0 {
        return Err("does not start at 0".into());
    }
    let end = c.checked_add(d).ok_or("out of range")?;
    if b >= c || end > pdf.len() || c < 2 {
        return Err("outside the file".into());
    }
    if pdf[b] != b'<' || pdf[c - 1] != b'>' {
        return Err("the gap is not a hex string".into());
    }
    let digits: Vec<u8> = pdf[b + 1..c - 1]
        .iter()
        .copied()
        .filter(|x| !x.is_ascii_whitespace())
        .collect();
    if !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err("the gap is not a hex string".into());
    }
    let mut decoded: Vec<u8> = digits
        .chunks(2)
        .map(|pair| {
            let hi = hex_value(pair[0]);
            let lo = pair.get(1).map_or(0, |&x| hex_value(x));
            hi << 4 | lo
        })
        .collect();
    // A trailing odd digit is a zero nibble (ISO 32000-1 §7.3.4.3), as lopdf reads it.
    if decoded.len() != contents.len() {
        decoded.truncate(contents.len());
    }
    if decoded != contents {
        return Err("the gap is not this signature's /Contents".into());
    }
    Ok([a, b, c, d])
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        b'A'..=b'F' => digit - b'A' + 10,
        _ => 0,
    }
}

/// A CAdES / PKCS#7 detached signature. Returns the certificate path to the anchor.
fn check_cms_signature(
    contents: &[u8],
    signed_parts: Option<[&[u8]; 2]>,
    anchors: &[Certificate],
    dss: &Dss,
    report: &mut SignatureReport,
) -> Option<Vec<Certificate>> {
    let signed_data = match signed_data(contents) {
        Ok(sd) => sd,
        Err(e) => {
            report.errors.push(format!("CMS: {e}"));
            return None;
        }
    };
    let (signer_info, signer, certificates) = signer_of(&signed_data, report)?;
    report.signer = Some(signer.tbs_certificate().subject().to_string());

    if let Some(parts) = signed_parts {
        report.integrity = check_signer_info(signer_info, &signer, &parts, report);
    }

    let path = trust_path(&signer, &certificates, dss, anchors, report);

    let tokens: Vec<Vec<u8>> = signer_info
        .unsigned_attrs
        .iter()
        .flat_map(|attrs| attrs.iter())
        .filter(|a| a.oid == ID_AA_TIME_STAMP_TOKEN)
        .flat_map(|a| a.values.iter())
        .filter_map(|v| v.to_der().ok())
        .collect();
    if let Some(token) = tokens.first() {
        let digest: [u8; 32] = Sha256::digest(signer_info.signature.as_bytes()).into();
        report.timestamp = Some(timestamp_report(
            token,
            &digest,
            anchors,
            "signature time-stamp",
            report,
        ));
        if tokens.len() > 1 {
            report
                .errors
                .push("more than one signature time-stamp".into());
        }
    }
    path
}

/// An RFC 3161 document time-stamp: /Contents is the token over the byte ranges.
fn check_document_timestamp(
    contents: &[u8],
    signed_parts: Option<[&[u8]; 2]>,
    anchors: &[Certificate],
    dss: &Dss,
    report: &mut SignatureReport,
) -> Option<Vec<Certificate>> {
    let token = match der_prefix(contents) {
        Ok(token) => token.to_vec(),
        Err(e) => {
            report.errors.push(format!("time-stamp token: {e}"));
            return None;
        }
    };
    let signed_data = match signed_data(&token) {
        Ok(sd) => sd,
        Err(e) => {
            report.errors.push(format!("time-stamp token: {e}"));
            return None;
        }
    };
    let (signer_info, signer, certificates) = signer_of(&signed_data, report)?;
    report.signer = Some(signer.tbs_certificate().subject().to_string());
    let tst_der = signed_data
        .encap_content_info
        .econtent
        .as_ref()
        .filter(|e| {
            signed_data.encap_content_info.econtent_type == ID_CT_TST_INFO
                && e.tag() == Tag::OctetString
        })
        .map(|e| e.value().to_vec());
    let Some(tst_der) = tst_der else {
        report.errors.push("token does not hold a TSTInfo".into());
        return None;
    };

    if let Some(parts) = signed_parts {
        let imprint_ok = match TstInfo::from_der(&tst_der) {
            Ok(info) => {
                let hashed = hash(info.message_imprint.hash_algorithm.oid, &parts);
                let ok = tsp::digest_len(&info.message_imprint.hash_algorithm).is_some()
                    && hashed.as_deref() == Some(info.message_imprint.hashed_message.as_bytes());
                if !ok {
                    report
                        .errors
                        .push("TSTInfo message imprint differs from the byte ranges".into());
                }
                ok
            }
            Err(e) => {
                report.errors.push(format!("TSTInfo: {e}"));
                false
            }
        };
        let signature_ok = check_signer_info(signer_info, &signer, &[&tst_der], report);
        report.integrity = imprint_ok && signature_ok;

        let digest: [u8; 32] = Sha256::digest(parts.concat()).into();
        report.timestamp = Some(timestamp_report(
            &token,
            &digest,
            anchors,
            "document time-stamp",
            report,
        ));
    }
    trust_path(&signer, &certificates, dss, anchors, report)
}

/// The certificate path, with `certificate_chain_trusted` and an error set accordingly.
fn trust_path(
    signer: &Certificate,
    certificates: &[Certificate],
    dss: &Dss,
    anchors: &[Certificate],
    report: &mut SignatureReport,
) -> Option<Vec<Certificate>> {
    let pool: Vec<Certificate> = certificates
        .iter()
        .chain(&dss.certificates)
        .cloned()
        .collect();
    match chain_to_anchor(signer, &pool, anchors) {
        Ok(path) => {
            report.certificate_chain_trusted = true;
            Some(path)
        }
        Err(e) => {
            report.errors.push(format!("certificate chain: {e}"));
            None
        }
    }
}

/// `verify_token` against the anchors; on failure the genTime is still read for the report.
fn timestamp_report(
    token: &[u8],
    digest: &[u8; 32],
    anchors: &[Certificate],
    what: &str,
    report: &mut SignatureReport,
) -> TimestampReport {
    let expected = TokenExpectations {
        sha256_digest: digest,
        nonce: None,
        policy: None,
        trust_anchors: anchors,
    };
    match tsp::verify_token(token, &expected) {
        Ok(verified) => TimestampReport {
            time: rfc3339(&verified.tst_info),
            valid: true,
            tsa: Some(verified.signer.tbs_certificate().subject().to_string()),
        },
        Err(e) => {
            report.errors.push(format!("{what}: {e}"));
            let info = signed_data(token).ok().and_then(|sd| {
                let econtent = sd.encap_content_info.econtent?;
                TstInfo::from_der(econtent.value()).ok()
            });
            TimestampReport {
                time: info.as_ref().map(rfc3339).unwrap_or_default(),
                valid: false,
                tsa: None,
            }
        }
    }
}

fn rfc3339(info: &TstInfo) -> String {
    info.gen_time
        .to_date_time()
        .to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// The single SignerInfo, its certificate (found in the CMS) and all CMS certificates.
fn signer_of<'a>(
    signed_data: &'a SignedData,
    report: &mut SignatureReport,
) -> Option<(&'a SignerInfo, Certificate, Vec<Certificate>)> {
    let signer_info = match signed_data.signer_infos.0.as_slice() {
        [one] => one,
        other => {
            report.errors.push(format!(
                "{} signer infos, expected exactly one",
                other.len()
            ));
            other.first()?
        }
    };
    let certificates: Vec<Certificate> = signed_data
        .certificates
        .iter()
        .flat_map(|set| set.0.iter())
        .filter_map(|choice| match choice {
            CertificateChoices::Certificate(c) => Some(c.clone()),
            CertificateChoices::Other(_) => None,
        })
        .collect();
    let Some(signer) = certificates
        .iter()
        .find(|c| tsp::identifies(&signer_info.sid, c))
        .cloned()
    else {
        report
            .errors
            .push("the signer certificate is not in the CMS".into());
        return None;
    };
    Some((signer_info, signer, certificates))
}

/// message-digest = digest of `content`, content-type present, and the signature over the
/// signed attributes verifies with the signer's key. Adds an error for each failure.
fn check_signer_info(
    signer_info: &SignerInfo,
    signer: &Certificate,
    content: &[&[u8]],
    report: &mut SignatureReport,
) -> bool {
    let Some(attrs) = signer_info.signed_attrs.as_ref() else {
        report.errors.push("no signed attributes".into());
        return false;
    };
    let digest_alg = &signer_info.digest_alg;
    let Some(computed) = tsp::digest_len(digest_alg).and_then(|_| hash(digest_alg.oid, content))
    else {
        report.errors.push(format!(
            "digest algorithm {} is not supported",
            digest_alg.oid
        ));
        return false;
    };
    let mut ok = true;
    let values = |oid: ObjectIdentifier| {
        attrs
            .iter()
            .filter(move |a| a.oid == oid)
            .flat_map(|a| a.values.iter())
            .collect::<Vec<_>>()
    };
    match values(ID_MESSAGE_DIGEST).as_slice() {
        [one] => {
            if one
                .decode_as::<OctetString>()
                .ok()
                .map(|d| d.as_bytes().to_vec())
                != Some(computed)
            {
                report
                    .errors
                    .push("message-digest does not match the signed bytes".into());
                ok = false;
            }
        }
        _ => {
            report
                .errors
                .push("not exactly one message-digest attribute".into());
            ok = false;
        }
    }
    if values(ID_CONTENT_TYPE).len() != 1 {
        report
            .errors
            .push("not exactly one content-type attribute".into());
        ok = false;
    }
    let verified = attrs.to_der().map_err(|e| e.to_string()).and_then(|der| {
        verify_signature(
            signer.tbs_certificate().subject_public_key_info(),
            &signer_info.signature_algorithm,
            Some(digest_alg.oid),
            &der,
            signer_info.signature.as_bytes(),
        )
    });
    if let Err(e) = verified {
        report.errors.push(format!("signature: {e}"));
        ok = false;
    }
    ok
}

/// `ContentInfo(SignedData)` from DER that may be followed by padding.
fn signed_data(bytes: &[u8]) -> Result<SignedData, String> {
    let der = der_prefix(bytes)?;
    let content_info = ContentInfo::from_der(der).map_err(|e| e.to_string())?;
    if content_info.content_type != ID_SIGNED_DATA {
        return Err(format!(
            "content type {} is not signed-data",
            content_info.content_type
        ));
    }
    content_info
        .content
        .decode_as::<SignedData>()
        .map_err(|e| e.to_string())
}

/// The first DER element of `bytes` (a /Contents string is zero-padded).
fn der_prefix(bytes: &[u8]) -> Result<&[u8], String> {
    SliceReader::new(bytes)
        .and_then(|mut r| r.tlv_bytes())
        .map_err(|e| e.to_string())
}

fn hash(algorithm: ObjectIdentifier, parts: &[&[u8]]) -> Option<Vec<u8>> {
    fn run<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
        let mut hasher = D::new();
        for part in parts {
            hasher.update(part);
        }
        hasher.finalize().to_vec()
    }
    match algorithm {
        ID_SHA256 => Some(run::<Sha256>(parts)),
        ID_SHA384 => Some(run::<Sha384>(parts)),
        ID_SHA512 => Some(run::<Sha512>(parts)),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Signatures and certificate chains
// ---------------------------------------------------------------------------------------------

/// RSA PKCS#1 v1.5 with SHA-256/384/512, ECDSA P-256/P-384 with SHA-256/384. `digest_hint` is
/// the SignerInfo's digest algorithm, for signers that name only the key algorithm.
pub(crate) fn verify_signature(
    key: &SubjectPublicKeyInfoOwned,
    algorithm: &AlgorithmIdentifierOwned,
    digest_hint: Option<ObjectIdentifier>,
    message: &[u8],
    signature: &[u8],
) -> Result<(), String> {
    use signature::hazmat::PrehashVerifier;

    let unsupported = || {
        format!(
            "signature algorithm {} with key algorithm {} is not supported",
            algorithm.oid, key.algorithm.oid
        )
    };
    let digest_oid = match algorithm.oid {
        SHA256_WITH_RSA | ECDSA_WITH_SHA256 => ID_SHA256,
        SHA384_WITH_RSA | ECDSA_WITH_SHA384 => ID_SHA384,
        SHA512_WITH_RSA => ID_SHA512,
        RSA_ENCRYPTION | ID_EC_PUBLIC_KEY => digest_hint.ok_or_else(unsupported)?,
        _ => return Err(unsupported()),
    };
    let raw = key
        .subject_public_key
        .as_bytes()
        .ok_or("public key bit string has unused bits")?;
    match key.algorithm.oid {
        RSA_ENCRYPTION if !matches!(algorithm.oid, ECDSA_WITH_SHA256 | ECDSA_WITH_SHA384) => {
            // ring's, for its speed (a time-stamp token's signature is checked per document).
            // The `LEGACY` parameters take moduli from 1,024 bits, as any RSA key was taken
            // before; ring has no such variant for SHA-384, whose keys start at 2,048 bits.
            use ring::signature as ring_rsa;
            let parameters = match digest_oid {
                ID_SHA256 => &ring_rsa::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY,
                ID_SHA384 => &ring_rsa::RSA_PKCS1_2048_8192_SHA384,
                ID_SHA512 => &ring_rsa::RSA_PKCS1_1024_8192_SHA512_FOR_LEGACY_USE_ONLY,
                _ => return Err(unsupported()),
            };
            // The key as ring takes it: the DER RSAPublicKey of the SubjectPublicKeyInfo.
            ring_rsa::UnparsedPublicKey::new(parameters, raw)
                .verify(message, signature)
                .map_err(|_| "RSA signature does not verify".to_string())
        }
        ID_EC_PUBLIC_KEY if digest_oid != ID_SHA512 && algorithm.oid != RSA_ENCRYPTION => {
            let curve = key
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
            let digest = hash(digest_oid, &[message]).ok_or_else(unsupported)?;
            let bad = |_| "ECDSA signature does not verify".to_string();
            match curve {
                Some(SECP256R1) => {
                    let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(raw)
                        .map_err(|_| "invalid P-256 public key".to_string())?;
                    let sig = p256::ecdsa::Signature::from_der(signature)
                        .map_err(|_| "malformed ECDSA signature".to_string())?;
                    key.verify_prehash(&digest, &sig).map_err(bad)
                }
                Some(SECP384R1) => {
                    let key = p384::ecdsa::VerifyingKey::from_sec1_bytes(raw)
                        .map_err(|_| "invalid P-384 public key".to_string())?;
                    let sig = p384::ecdsa::Signature::from_der(signature)
                        .map_err(|_| "malformed ECDSA signature".to_string())?;
                    key.verify_prehash(&digest, &sig).map_err(bad)
                }
                _ => Err("only P-256 and P-384 EC keys are supported".into()),
            }
        }
        _ => Err(unsupported()),
    }
}

pub(crate) fn verify_certificate_signature(
    certificate: &Certificate,
    issuer: &Certificate,
) -> Result<(), String> {
    let tbs = certificate
        .tbs_certificate()
        .to_der()
        .map_err(|e| e.to_string())?;
    let signature = certificate
        .signature()
        .as_bytes()
        .ok_or("certificate signature has unused bits")?;
    let issuer_key = issuer.tbs_certificate().subject_public_key_info();
    let algorithm = certificate.signature_algorithm();
    // Every time-stamp token a worker receives carries the same TSA certificate: its
    // signature is checked once, not once per document.
    let memo_key = (|| {
        let mut hash = Sha256::new();
        for part in [
            tbs.as_slice(),
            signature,
            &algorithm.to_der().ok()?,
            &issuer_key.to_der().ok()?,
        ] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part);
        }
        Some(<[u8; 32]>::from(hash.finalize()))
    })();
    let verified = || {
        VERIFIED_CERTIFICATES
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    };
    if memo_key.is_some_and(|key| verified().contains(&key)) {
        return Ok(());
    }
    verify_signature(issuer_key, algorithm, None, &tbs, signature)?;
    if let Some(key) = memo_key {
        let mut verified = verified();
        if verified.len() >= VERIFIED_CERTIFICATES_KEPT {
            verified.clear();
        }
        verified.insert(key);
    }
    Ok(())
}

/// Certificate signatures found valid, by SHA-256 of everything the check depends on (the
/// signed part, the signature, its algorithm and the issuer's public key): a memo of a pure
/// function, so a hit means exactly what checking again would. Only successes are kept, at
/// most [`VERIFIED_CERTIFICATES_KEPT`].
static VERIFIED_CERTIFICATES: LazyLock<Mutex<HashSet<[u8; 32]>>> = LazyLock::new(Mutex::default);
const VERIFIED_CERTIFICATES_KEPT: usize = 1024;

/// Walks from `leaf` to a trust anchor through CA certificates of `pool`, checking every
/// signature on the way (the same walk as the time-stamp check in tsp.rs, with the wider
/// set of algorithms a signer's CA may use). Returns the path without the anchor.
fn chain_to_anchor(
    leaf: &Certificate,
    pool: &[Certificate],
    anchors: &[Certificate],
) -> Result<Vec<Certificate>, String> {
    if anchors.is_empty() {
        return Err("no trust anchors given".into());
    }
    let mut path = Vec::new();
    let mut current = leaf.clone();
    for _ in 0..MAX_CHAIN_DEPTH {
        if anchors.contains(&current) {
            return Ok(path);
        }
        path.push(current.clone());
        let issuer_name = current.tbs_certificate().issuer().clone();
        let signed_by = |issuer: &Certificate| {
            issuer.tbs_certificate().subject() == &issuer_name
                && verify_certificate_signature(&current, issuer).is_ok()
        };
        if anchors.iter().any(signed_by) {
            return Ok(path);
        }
        let next = pool
            .iter()
            .filter(|c| *c != &current && tsp::is_ca(c) && !path.contains(c))
            .find(|c| signed_by(c))
            .ok_or_else(|| {
                format!(
                    "certificate {} does not chain to a trust anchor",
                    current.tbs_certificate().subject()
                )
            })?;
        current = next.clone();
    }
    Err("certificate chain too long".into())
}

// ---------------------------------------------------------------------------------------------
// Document security store
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Dss {
    certificates: Vec<Certificate>,
    crls: Vec<CertificateList>,
}

impl Dss {
    fn read(doc: &Document) -> Self {
        let mut dss = Self::default();
        let Some(dict) = doc
            .catalog()
            .ok()
            .and_then(|c| c.get(b"DSS").ok())
            .and_then(|d| doc.dereference(d).ok())
            .and_then(|(_, d)| d.as_dict().ok())
        else {
            return dss;
        };
        let items = |key: &[u8]| -> Vec<Vec<u8>> {
            let Some(Object::Array(items)) = dict
                .get(key)
                .ok()
                .and_then(|a| doc.dereference(a).ok())
                .map(|(_, a)| a)
            else {
                return Vec::new();
            };
            items
                .iter()
                .filter_map(|item| doc.dereference(item).ok())
                .filter_map(|(_, item)| item.as_stream().ok())
                .filter_map(|s| s.get_plain_content_with_limit(MAX_DSS_ITEM).ok())
                .collect()
        };
        dss.certificates = items(b"Certs")
            .iter()
            .filter_map(|der| Certificate::from_der(der).ok())
            .collect();
        dss.crls = items(b"CRLs")
            .iter()
            .filter_map(|der| CertificateList::from_der(der).ok())
            .collect();
        dss
    }

    /// Whether the DSS holds every certificate of every path and, for each certificate that
    /// names a CRL distribution point, a CRL signed by its issuer that does not revoke it.
    fn holds(&self, paths: &[&[Certificate]]) -> bool {
        paths.iter().all(|path| {
            path.iter().enumerate().all(|(i, cert)| {
                if !self.certificates.contains(cert) {
                    return false;
                }
                if crate::cms::crl_urls(cert).is_empty() {
                    return true;
                }
                let issuer = path
                    .get(i + 1)
                    .or_else(|| self.certificates.iter().find(|c| is_issuer_of(c, cert)));
                self.crls.iter().any(|crl| {
                    crl_covers(crl, cert, issuer)
                        && !crl
                            .tbs_cert_list
                            .revoked_certificates
                            .iter()
                            .flatten()
                            .any(|r| &r.serial_number == cert.tbs_certificate().serial_number())
                })
            })
        })
    }
}

fn is_issuer_of(issuer: &Certificate, cert: &Certificate) -> bool {
    issuer.tbs_certificate().subject() == cert.tbs_certificate().issuer()
        && verify_certificate_signature(cert, issuer).is_ok()
}

/// The CRL is issued by `cert`'s issuer and, if the issuer certificate is known (it is not,
/// when the issuer is a trust anchor that the DSS does not repeat), signed by it.
fn crl_covers(crl: &CertificateList, cert: &Certificate, issuer: Option<&Certificate>) -> bool {
    if &crl.tbs_cert_list.issuer != cert.tbs_certificate().issuer() {
        return false;
    }
    let Some(issuer) = issuer else {
        return true;
    };
    let (Ok(tbs), Some(signature)) = (crl.tbs_cert_list.to_der(), crl.signature.as_bytes()) else {
        return false;
    };
    verify_signature(
        issuer.tbs_certificate().subject_public_key_info(),
        &crl.signature_algorithm,
        None,
        &tbs,
        signature,
    )
    .is_ok()
}

// ---------------------------------------------------------------------------------------------
// Revisions and what changed
// ---------------------------------------------------------------------------------------------

/// Offsets just past each `%%EOF` marker (one per revision, linearised files aside).
fn eof_markers(pdf: &[u8]) -> Vec<usize> {
    let marker = b"%%EOF";
    pdf.windows(marker.len())
        .enumerate()
        .filter(|(_, w)| *w == marker)
        .map(|(i, _)| i + marker.len())
        .collect()
}

fn only_whitespace(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| b.is_ascii_whitespace() || *b == 0)
}

fn load_prefix(bytes: &[u8]) -> Option<Document> {
    pdf::guarded(|| Document::load_mem(bytes).map_err(|e| PdfError::Unreadable(e.to_string()))).ok()
}

/// Every signature value dictionary reachable from the AcroForm, with its field name.
fn signature_values(doc: &Document) -> Vec<(String, Dictionary)> {
    let mut found = Vec::new();
    let mut seen = HashSet::new();
    pdf::for_each_field(doc, |field| {
        let Ok(v) = field.get(b"V") else {
            return;
        };
        let Ok((id, Object::Dictionary(value))) = doc.dereference(v) else {
            return;
        };
        if !value.has(b"ByteRange") && !value.has(b"Contents") {
            return;
        }
        if let Some(id) = id {
            if !seen.insert(id) {
                return;
            }
        }
        let name = match field.get(b"T") {
            Ok(Object::String(bytes, _)) => text(bytes),
            _ => String::new(),
        };
        found.push((name, value.clone()));
    });
    found
}

/// PDF text string: UTF-16BE with a byte order mark, else PDFDocEncoding (read as Latin-1).
fn text(bytes: &[u8]) -> String {
    match bytes {
        [0xFE, 0xFF, rest @ ..] => {
            let units: Vec<u16> = rest
                .chunks_exact(2)
                .map(|p| u16::from_be_bytes([p[0], p[1]]))
                .collect();
            String::from_utf16_lossy(&units)
        }
        _ => bytes.iter().map(|&b| char::from(b)).collect(),
    }
}

/// What later revisions did, coarsely.
#[derive(Debug, Default)]
struct Changes {
    page_content: bool,
    annotations: bool,
    other: bool,
    signatures: bool,
    dss: bool,
    document_timestamps: bool,
}

impl Changes {
    fn allowed(&self) -> bool {
        !(self.page_content || self.annotations || self.other)
    }

    fn only_dss(&self) -> bool {
        self.allowed() && !self.signatures && !self.document_timestamps
    }

    fn describe(&self) -> String {
        if self.page_content {
            return "page content changed".into();
        }
        if self.annotations {
            return "new annotations".into();
        }
        if self.other {
            return "other changes".into();
        }
        let parts: Vec<&str> = [
            (self.signatures, "later signatures"),
            (self.dss, "DSS"),
            (self.document_timestamps, "document time-stamps"),
        ]
        .into_iter()
        .filter_map(|(present, name)| present.then_some(name))
        .collect();
        match parts.as_slice() {
            [] => "nothing".into(),
            [one] => format!("only {one}"),
            [init @ .., last] => format!("only {} and {last}", init.join(", ")),
        }
    }
}

fn type_name(object: &Object) -> Option<&[u8]> {
    let dict = match object {
        Object::Dictionary(d) => d,
        Object::Stream(s) => &s.dict,
        _ => return None,
    };
    dict.get(b"Type").ok().and_then(|t| t.as_name().ok())
}

fn dict_of(object: &Object) -> Option<&Dictionary> {
    match object {
        Object::Dictionary(d) => Some(d),
        Object::Stream(s) => Some(&s.dict),
        _ => None,
    }
}

/// Ids of every object reachable from `object`, to a bounded depth.
fn reachable(doc: &Document, object: &Object, depth: usize, into: &mut HashSet<ObjectId>) {
    if depth > MAX_WALK_DEPTH {
        return;
    }
    match object {
        Object::Reference(id) if into.insert(*id) => {
            if let Ok(target) = doc.get_object(*id) {
                reachable(doc, target, depth + 1, into);
            }
        }
        Object::Array(items) => {
            for item in items {
                reachable(doc, item, depth + 1, into);
            }
        }
        Object::Dictionary(dict) => {
            for (_, value) in dict.iter() {
                reachable(doc, value, depth + 1, into);
            }
        }
        Object::Stream(stream) => {
            for (_, value) in stream.dict.iter() {
                reachable(doc, value, depth + 1, into);
            }
        }
        _ => {}
    }
}

/// Ids of the page content streams (and indirect /Contents arrays) of `doc`.
fn content_ids(doc: &Document, into: &mut HashSet<ObjectId>) {
    for page_id in doc.get_pages().into_values() {
        let Ok(page) = doc.get_dictionary(page_id) else {
            continue;
        };
        if let Ok(contents) = page.get(b"Contents") {
            reachable(doc, contents, MAX_WALK_DEPTH - 2, into);
        }
    }
}

/// Whether a field or widget dictionary is a signature field.
fn is_signature_field(doc: &Document, object: &Object) -> Option<bool> {
    let (_, target) = doc.dereference(object).ok()?;
    let dict = dict_of(target)?;
    let ft = dict.get(b"FT").ok().and_then(|f| f.as_name().ok());
    Some(ft == Some(b"Sig"))
}

/// Classifies every object that `new` adds or changes relative to `old`.
fn classify(old: &Document, new: &Document) -> Changes {
    let mut changes = Changes::default();

    let mut dss_ids = HashSet::new();
    if let Ok(dss) = new.catalog().and_then(|c| c.get(b"DSS")) {
        reachable(new, dss, 0, &mut dss_ids);
    }
    let mut contents = HashSet::new();
    content_ids(old, &mut contents);
    content_ids(new, &mut contents);
    let pages: HashSet<ObjectId> = old
        .get_pages()
        .into_values()
        .chain(new.get_pages().into_values())
        .collect();
    let root = new.trailer.get(b"Root").and_then(Object::as_reference).ok();

    for (id, object) in &new.objects {
        let previous = old.objects.get(id);
        if previous == Some(object) {
            continue;
        }
        if matches!(type_name(object), Some(b"XRef" | b"ObjStm")) {
            continue;
        }
        if contents.contains(id) || pages.contains(id) {
            let old_dict = previous.and_then(dict_of);
            match (dict_of(object), old_dict) {
                (Some(page), Some(old_page)) if pages.contains(id) => {
                    compare_page(old, new, old_page, page, &mut changes)
                }
                _ => changes.page_content = true,
            }
            continue;
        }
        if dss_ids.contains(id) {
            changes.dss = true;
            continue;
        }
        match type_name(object) {
            Some(b"Sig") => {
                changes.signatures = true;
                continue;
            }
            Some(b"DocTimeStamp") => {
                changes.document_timestamps = true;
                continue;
            }
            Some(b"DSS") => {
                changes.dss = true;
                continue;
            }
            Some(b"Pages") => {
                changes.page_content = true;
                continue;
            }
            _ => {}
        }
        if Some(*id) == root {
            let (Some(catalog), Some(old_catalog)) = (dict_of(object), previous.and_then(dict_of))
            else {
                changes.other = true;
                continue;
            };
            if !same_except(old_catalog, catalog, &[b"DSS", b"AcroForm"]) {
                changes.other = true;
            }
            if let (Ok(Object::Dictionary(form)), Ok(Object::Dictionary(old_form))) =
                (catalog.get(b"AcroForm"), old_catalog.get(b"AcroForm"))
            {
                compare_form(old, new, old_form, form, &mut changes);
            }
            continue;
        }
        match object {
            Object::Dictionary(dict) if is_signature_field(new, object) == Some(true) => {
                classify_signature_field(new, dict, &mut changes);
            }
            Object::Dictionary(dict) if dict.has(b"Fields") => {
                let empty = Dictionary::new();
                let old_form = previous.and_then(dict_of).unwrap_or(&empty);
                compare_form(old, new, old_form, dict, &mut changes);
            }
            Object::Dictionary(dict)
                if type_name(object) == Some(b"Annot") || dict.has(b"Subtype") =>
            {
                changes.annotations = true;
            }
            Object::Array(items) => {
                let old_items = match previous {
                    Some(Object::Array(old_items)) => &old_items[..],
                    Some(_) => {
                        changes.other = true;
                        &[]
                    }
                    None => &[],
                };
                compare_items(new, old_items, items, &mut changes);
            }
            _ => changes.other = true,
        }
    }
    changes
}

fn classify_signature_field(doc: &Document, field: &Dictionary, changes: &mut Changes) {
    let value_type = field
        .get(b"V")
        .ok()
        .and_then(|v| doc.dereference(v).ok())
        .and_then(|(_, v)| type_name(v));
    if value_type == Some(b"DocTimeStamp") {
        changes.document_timestamps = true;
    } else {
        changes.signatures = true;
    }
}

fn same_except(a: &Dictionary, b: &Dictionary, ignored: &[&[u8]]) -> bool {
    let keys: HashSet<&[u8]> = a
        .iter()
        .chain(b.iter())
        .map(|(k, _)| &k[..])
        .filter(|k| !ignored.contains(k))
        .collect();
    keys.into_iter().all(|k| a.get(k).ok() == b.get(k).ok())
}

/// Items added to an array (/Annots, /Fields): signature fields are fine, anything else is
/// an annotation or another change; removing an item is another change.
fn compare_items(doc: &Document, old: &[Object], new: &[Object], changes: &mut Changes) {
    if old.iter().any(|item| !new.contains(item)) {
        changes.other = true;
    }
    for item in new.iter().filter(|item| !old.contains(item)) {
        match is_signature_field(doc, item) {
            Some(true) => {
                if let Ok((_, Object::Dictionary(field))) = doc.dereference(item) {
                    classify_signature_field(doc, field, changes);
                }
            }
            Some(false) => changes.annotations = true,
            None => changes.other = true,
        }
    }
}

fn compare_page(
    old_doc: &Document,
    doc: &Document,
    old: &Dictionary,
    new: &Dictionary,
    changes: &mut Changes,
) {
    if !same_except(old, new, &[b"Annots"]) {
        changes.page_content = true;
    }
    let items = |d: &Document, page: &Dictionary| -> Vec<Object> {
        page.get(b"Annots")
            .ok()
            .and_then(|a| d.dereference(a).ok())
            .and_then(|(_, a)| a.as_array().ok().cloned())
            .unwrap_or_default()
    };
    compare_items(doc, &items(old_doc, old), &items(doc, new), changes);
}

fn compare_form(
    old_doc: &Document,
    doc: &Document,
    old: &Dictionary,
    new: &Dictionary,
    changes: &mut Changes,
) {
    if !same_except(old, new, &[b"Fields", b"SigFlags"]) {
        changes.other = true;
    }
    let items = |d: &Document, form: &Dictionary| -> Vec<Object> {
        form.get(b"Fields")
            .ok()
            .and_then(|a| d.dereference(a).ok())
            .and_then(|(_, a)| a.as_array().ok().cloned())
            .unwrap_or_default()
    };
    compare_items(doc, &items(old_doc, old), &items(doc, new), changes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_descriptions_name_what_was_added() {
        let mut changes = Changes {
            dss: true,
            document_timestamps: true,
            ..Changes::default()
        };
        assert_eq!(changes.describe(), "only DSS and document time-stamps");
        changes.signatures = true;
        assert_eq!(
            changes.describe(),
            "only later signatures, DSS and document time-stamps"
        );
        changes.page_content = true;
        assert!(!changes.allowed());
        assert_eq!(changes.describe(), "page content changed");
    }

    #[test]
    fn a_remembered_certificate_check_does_not_vouch_for_an_altered_certificate() {
        let dir = shomei_testkit::hsm_dir();
        let load = |name: &str| {
            let pem = std::fs::read(dir.join("ca").join(name)).unwrap();
            Certificate::load_pem_chain(&pem).unwrap().remove(0)
        };
        let (ca, leaf) = (load("ca.pem"), load("shomei-dev-rsa.pem"));
        // Twice: the second answer comes from the memo.
        for _ in 0..2 {
            verify_certificate_signature(&leaf, &ca).unwrap();
        }
        // The same signed part under another signature, and the same signature over another
        // signed part: both refused, though the genuine pair is remembered.
        let mut der = leaf.to_der().unwrap();
        let last = der.len() - 1;
        der[last] ^= 1;
        let forged_signature = Certificate::from_der(&der).unwrap();
        assert!(verify_certificate_signature(&forged_signature, &ca).is_err());
        let mut der = leaf.to_der().unwrap();
        let serial = leaf.tbs_certificate().serial_number().as_bytes();
        let at = der.windows(serial.len()).position(|w| w == serial).unwrap() + serial.len() - 1;
        der[at] ^= 1;
        let forged_content = Certificate::from_der(&der).unwrap();
        assert_eq!(forged_content.signature(), leaf.signature());
        assert!(verify_certificate_signature(&forged_content, &ca).is_err());
        // And a certificate is not its own issuer's issuer.
        assert!(verify_certificate_signature(&leaf, &leaf).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(verify_pdf(b"", &[]).is_err());
        assert!(verify_pdf(b"%PDF-1.7\n1 0 obj\n<<", &[]).is_err());
        assert!(verify_pdf(b"%PDF-1.7\n%%EOF", &[]).is_err());
    }
}
