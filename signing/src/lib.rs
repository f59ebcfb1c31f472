#![doc = include_str!("../README.md")]

mod cms;
mod error;
mod hsm;
mod intake;
mod kek;
mod pdf;
mod tsa;
mod tsp;
mod verify;

use chrono::{DateTime, Utc};

pub use error::{HsmError, PdfError, SignError};
pub use hsm::{Hsm, HsmSettings, KeyAlgorithm, SigningIdentity};
pub use intake::PdfLimits;
pub use pdf::{inspect_pdf, inspect_pdf_with, PdfInfo};
pub use tsa::{issue_token, reply_to_query, TokenIssue};
pub use tsp::{
    certificates_from_pem, positive_int, verify_response, verify_token, Accuracy, FailureInfo,
    GenTime, MessageImprint, PkiFreeText, PkiStatusInfo, TimeStampReq, TimeStampResp,
    TimestampError, Timestamper, TokenExpectations, TsaClient, TsaClientSettings, TstInfo,
    VerifiedToken, ID_AA_SIGNING_CERTIFICATE_V2, ID_CT_TST_INFO, ID_KP_TIME_STAMPING,
};
pub use verify::{verify_pdf, SignatureKind, SignatureReport, TimestampReport, VerificationReport};
pub use x509_cert::Certificate;

/// Who signs, with which key, and what the signature dictionary shows.
#[derive(Debug, Clone)]
pub struct SignatureRequest {
    pub key_label: String,
    pub signer_name: String,
    pub signer_email: Option<String>,
    pub reason: Option<String>,
    pub location: Option<String>,
    pub signing_time: DateTime<Utc>,
}

/// Validation data for the document security store (DSS) written by
/// [`timestamp_pdf`]: what a verifier needs to check the signatures later
/// without asking the CA (PAdES B-LT / B-LTA).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ValidationData {
    /// DER X.509 certificates.
    pub certificates: Vec<Vec<u8>>,
    /// DER CRLs.
    pub crls: Vec<Vec<u8>>,
}

/// What [`validation_material`] found in a document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ValidationMaterial {
    /// Every certificate of every signature and document time-stamp,
    /// including those inside signature time-stamp tokens, each once (DER).
    pub certificates: Vec<Vec<u8>>,
    /// The CRL distribution point URIs of those certificates, each once,
    /// in the order first seen.
    pub crl_urls: Vec<String>,
}

/// Extra room for the CMS beyond the estimate when the first attempt did not
/// fit; generous because every retry costs an HSM signature (and a time-stamp).
const PLACEHOLDER_RETRY_MARGIN: usize = 1024;

/// Signs `pdf` as a new incremental revision: every byte of `pdf` is kept
/// unchanged at the start of the output, so earlier signatures stay valid.
///
/// Without a `timestamper` the signature is PAdES B-B (`ETSI.CAdES.detached`).
/// With one it is B-T: the token over SHA-256 of the signature value is added
/// as the unsigned attribute id-aa-timeStampToken; if no token comes, nothing
/// is produced ([`SignError::Timestamp`], transient).
///
/// Blocking (PDF parsing, PKCS#11 and TSA calls); run it on a blocking thread.
pub fn sign_pdf(
    hsm: &Hsm,
    pdf: &[u8],
    request: &SignatureRequest,
    timestamper: Option<&dyn Timestamper>,
) -> Result<Vec<u8>, SignError> {
    let appended = sign(hsm, pdf, pdf::Original::Bytes(pdf), request, timestamper)?;
    Ok([pdf, &appended].concat())
}

/// A revision from [`sign_pdf_hashed`] or [`timestamp_pdf_hashed`]: the bytes it appends to
/// the file, and the SHA-256 of the new file (the file followed by them).
#[derive(Debug)]
pub struct SignedRevision {
    pub appended: Vec<u8>,
    pub sha256: [u8; 32],
}

impl SignedRevision {
    /// `appended` after the file whose SHA-256 state is `hashed`.
    fn after(hashed: &sha2::Sha256, appended: Vec<u8>) -> Self {
        use sha2::Digest;
        let sha256 = hashed.clone().chain_update(&appended).finalize().into();
        SignedRevision { appended, sha256 }
    }
}

/// [`sign_pdf`] for a stored revision whose bytes have been hashed already (`hashed`: SHA-256
/// updated with exactly `pdf`, not finalised, as a verified read from storage leaves it),
/// giving only what the signature appends: the signature's digest and the signed file's SHA-256
/// hash only the appended revision, and the file is never copied.
///
/// `pdf` must be a file that passed intake ([`inspect_pdf`]) when it was stored, or one this
/// library appended a revision to after it did, read back and checked against its recorded
/// digest: intake's pass over its raw bytes, the most of intake's cost, is not run again (the
/// checks on the parsed document are).
pub fn sign_pdf_hashed(
    hsm: &Hsm,
    pdf: &[u8],
    hashed: &sha2::Sha256,
    request: &SignatureRequest,
    timestamper: Option<&dyn Timestamper>,
) -> Result<SignedRevision, SignError> {
    let appended = sign(
        hsm,
        pdf,
        pdf::Original::Hashed(hashed),
        request,
        timestamper,
    )?;
    Ok(SignedRevision::after(hashed, appended))
}

/// The revision a signature appends to `pdf`.
fn sign(
    hsm: &Hsm,
    pdf: &[u8],
    original: pdf::Original<'_>,
    request: &SignatureRequest,
    timestamper: Option<&dyn Timestamper>,
) -> Result<Vec<u8>, SignError> {
    let doc = original.load(pdf)?;
    let identity = hsm.identity(&request.key_label)?;
    let fields = pdf::SignatureFields {
        name: &request.signer_name,
        email: request.signer_email.as_deref(),
        reason: request.reason.as_deref(),
        location: request.location.as_deref(),
        signing_time: request.signing_time,
    };

    let capacity =
        cms::estimated_size(&identity) + timestamper.map_or(0, |_| cms::TIMESTAMP_TOKEN_ESTIMATE);
    sign_with_capacity(
        hsm,
        pdf,
        original,
        doc,
        &identity,
        &fields,
        timestamper,
        capacity,
    )
}

#[allow(clippy::too_many_arguments)] // the steps of `sign`, each needed
fn sign_with_capacity(
    hsm: &Hsm,
    pdf: &[u8],
    original: pdf::Original<'_>,
    doc: lopdf::Document,
    identity: &SigningIdentity,
    fields: &pdf::SignatureFields<'_>,
    timestamper: Option<&dyn Timestamper>,
    mut capacity: usize,
) -> Result<Vec<u8>, SignError> {
    // The estimate is conservative, so the second round is for certificates
    // with unusual extensions or big time-stamp tokens only; it always fits
    // because it uses the real size.
    // The parsed document is used up by the first attempt (no copy of its objects and streams);
    // the rare second attempt parses the file again.
    let mut doc = Some(doc);
    for _ in 0..2 {
        let kind = pdf::FieldKind::Signature(fields);
        let parsed = doc.take().map_or_else(|| original.load(pdf), Ok)?;
        let revision = pdf::PreparedRevision::new(pdf, parsed, &kind, None, capacity)?;
        let signed_data = cms::signed_data(hsm, identity, &revision.digest(original), timestamper)?;
        match revision.embed(&signed_data) {
            Ok(signed) => {
                tracing::debug!(
                    key = identity.label(),
                    cms_len = signed_data.len(),
                    capacity,
                    "signed PDF"
                );
                return Ok(signed);
            }
            Err(needed) => {
                tracing::warn!(
                    needed,
                    capacity,
                    "CMS larger than estimated; re-signing with a larger placeholder"
                );
                capacity = needed + PLACEHOLDER_RETRY_MARGIN;
            }
        }
    }
    Err(SignError::Cms(
        "CMS size kept growing between attempts".into(),
    ))
}

/// Adds a document time-stamp (PAdES B-LTA, ETSI EN 319 142-1 §5.4.3) as a
/// new incremental revision: a field whose value is `/Type /DocTimeStamp`,
/// `/SubFilter /ETSI.RFC3161`, with the time-stamp token over SHA-256 of the
/// byte ranges as /Contents.
///
/// With `validation`, the same revision first merges it into the document
/// security store (/DSS in the catalog), so the time-stamp covers it (B-LT
/// data, then the archive time-stamp). Earlier DSS entries are kept.
///
/// Blocking (PDF parsing and TSA calls); run it on a blocking thread.
pub fn timestamp_pdf(
    pdf: &[u8],
    timestamper: &dyn Timestamper,
    validation: Option<&ValidationData>,
) -> Result<Vec<u8>, SignError> {
    let appended = timestamp(pdf, pdf::Original::Bytes(pdf), timestamper, validation)?;
    Ok([pdf, &appended].concat())
}

/// [`timestamp_pdf`] for a stored revision whose SHA-256 state is at hand (as for
/// [`sign_pdf_hashed`], whose requirements on `pdf` hold here too), giving only the revision it
/// appends and the new file's SHA-256.
pub fn timestamp_pdf_hashed(
    pdf: &[u8],
    hashed: &sha2::Sha256,
    timestamper: &dyn Timestamper,
    validation: Option<&ValidationData>,
) -> Result<SignedRevision, SignError> {
    let appended = timestamp(pdf, pdf::Original::Hashed(hashed), timestamper, validation)?;
    Ok(SignedRevision::after(hashed, appended))
}

/// The revision a document time-stamp appends to `pdf`.
fn timestamp(
    pdf: &[u8],
    original: pdf::Original<'_>,
    timestamper: &dyn Timestamper,
    validation: Option<&ValidationData>,
) -> Result<Vec<u8>, SignError> {
    let mut doc = Some(original.load(pdf)?);
    let mut capacity = cms::TIMESTAMP_TOKEN_ESTIMATE;
    for _ in 0..2 {
        let revision = pdf::PreparedRevision::new(
            pdf,
            doc.take().map_or_else(|| original.load(pdf), Ok)?,
            &pdf::FieldKind::DocTimeStamp,
            validation,
            capacity,
        )?;
        let digest = revision.digest(original);
        let token = timestamper.timestamp(&digest)?;
        cms::check_token(&token, &digest)?;
        match revision.embed(&token) {
            Ok(appended) => {
                tracing::debug!(token_len = token.len(), capacity, "time-stamped PDF");
                return Ok(appended);
            }
            Err(needed) => {
                tracing::warn!(
                    needed,
                    capacity,
                    "time-stamp token larger than estimated; asking again with a larger placeholder"
                );
                capacity = needed + PLACEHOLDER_RETRY_MARGIN;
            }
        }
    }
    Err(SignError::BadTimestamp(
        "token size kept growing between attempts".into(),
    ))
}

/// The PDF work of signing and time-stamping without the HSM or a TSA, for the fuzz targets
/// (`fuzz/`): what `sign_pdf` and `timestamp_pdf` do to a document that passed intake, with a
/// dummy CMS or token in place of the real one. Not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// Intake, the signature revision with its placeholders, the digest, and a dummy CMS
    /// embedded; returns the revision (the bytes appended to `pdf`).
    pub fn prepare_signature(pdf: &[u8]) -> Result<Vec<u8>, SignError> {
        let doc = pdf::load(pdf)?;
        let fields = pdf::SignatureFields {
            name: "Fuzz 署名",
            email: Some("fuzz@example.com"),
            reason: Some("fuzzing"),
            location: None,
            signing_time: DateTime::<Utc>::UNIX_EPOCH,
        };
        let revision =
            pdf::PreparedRevision::new(pdf, doc, &pdf::FieldKind::Signature(&fields), None, 256)?;
        let digest = revision.digest(pdf::Original::Bytes(pdf));
        revision
            .embed(&[&[0x30, 0x22, 0x04, 0x20][..], &digest[..]].concat())
            .map_err(|needed| SignError::Cms(format!("dummy CMS of {needed} bytes did not fit")))
    }

    /// Intake, the document time-stamp revision with a DSS merged in, and a dummy token;
    /// returns the revision (the bytes appended to `pdf`).
    pub fn prepare_timestamp(pdf: &[u8]) -> Result<Vec<u8>, SignError> {
        let doc = pdf::load(pdf)?;
        let validation = ValidationData {
            certificates: vec![b"certificate".to_vec()],
            crls: vec![b"crl".to_vec()],
        };
        let revision = pdf::PreparedRevision::new(
            pdf,
            doc,
            &pdf::FieldKind::DocTimeStamp,
            Some(&validation),
            128,
        )?;
        let digest = revision.digest(pdf::Original::Bytes(pdf));
        revision
            .embed(&digest)
            .map_err(|needed| SignError::Cms(format!("dummy token of {needed} bytes did not fit")))
    }
}

/// Collects what a verifier needs to validate `pdf` later: every certificate
/// of every signature and document time-stamp (with the certificates inside
/// signature time-stamp tokens) and their CRL distribution points. Feed the
/// URLs to [`fetch_crls`] and both into [`timestamp_pdf`] as [`ValidationData`].
pub fn validation_material(pdf: &[u8]) -> Result<ValidationMaterial, SignError> {
    let doc = pdf::load(pdf)?;
    let mut material = ValidationMaterial::default();
    for contents in pdf::signature_contents(&doc) {
        for certificate in cms::embedded_certificates(&contents)? {
            let der = der::Encode::to_der(&certificate)
                .map_err(|e| SignError::EmbeddedSignature(e.to_string()))?;
            if material.certificates.contains(&der) {
                continue;
            }
            material.certificates.push(der);
            for url in cms::crl_urls(&certificate) {
                if !material.crl_urls.contains(&url) {
                    material.crl_urls.push(url);
                }
            }
        }
    }
    Ok(material)
}

/// Fetches each CRL (DER, checked to parse as a CRL) from `file:` (the dev CA
/// publishes there) or `http:` URLs. CRLs are signed by their CA, so plain
/// HTTP is the norm for distribution points (RFC 5280 §4.2.1.13).
///
/// Blocking (reqwest's blocking client: never call it on an async runtime
/// thread); an unreachable CRL is a transient error.
pub fn fetch_crls(urls: &[String]) -> Result<Vec<Vec<u8>>, SignError> {
    urls.iter().map(|url| fetch_crl(url)).collect()
}

fn fetch_crl(url: &str) -> Result<Vec<u8>, SignError> {
    let failed = |reason: String| SignError::CrlFetch {
        url: url.to_owned(),
        reason,
    };
    let bytes = if let Some(rest) = url.strip_prefix("file://") {
        // file:///path and file://localhost/path (RFC 8089); no other host.
        let path = rest.strip_prefix("localhost").unwrap_or(rest);
        if !path.starts_with('/') {
            return Err(failed("file: URL with a remote host".into()));
        }
        std::fs::read(path).map_err(|e| failed(e.to_string()))?
    } else if url.starts_with("http://") || url.starts_with("https://") {
        fetch_http(url).map_err(failed)?
    } else {
        return Err(failed("unsupported URL scheme".into()));
    };
    <x509_cert::crl::CertificateList as der::Decode>::from_der(&bytes)
        .map_err(|e| failed(format!("not a DER CRL: {e}")))?;
    Ok(bytes)
}

/// Largest CRL accepted; big public CAs publish a few MiB.
const MAX_CRL_SIZE: u64 = 32 << 20;
const CRL_FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

fn fetch_http(url: &str) -> Result<Vec<u8>, String> {
    use std::io::Read;

    let response = reqwest::blocking::Client::builder()
        .timeout(CRL_FETCH_TIMEOUT)
        .build()
        .and_then(|client| client.get(url).send())
        .and_then(reqwest::blocking::Response::error_for_status)
        .map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    response
        .take(MAX_CRL_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_CRL_SIZE {
        return Err(format!("larger than {MAX_CRL_SIZE} bytes"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::Command;

    use super::*;

    /// The only unit test that needs the token, so it connects directly
    /// instead of sharing the integration tests' fixture.
    fn dev_hsm() -> Hsm {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let dir = std::env::var_os("SHOMEI_TEST_HSM_DIR")
            .map(Into::into)
            .unwrap_or_else(|| root.join("target/dev-hsm"));
        let status = Command::new(root.join("scripts/dev-hsm.sh"))
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        std::env::set_var("SOFTHSM2_CONF", dir.join("softhsm2.conf"));
        let pin = std::fs::read_to_string(dir.join("user-pin")).unwrap();
        Hsm::connect(&HsmSettings {
            module_path: "/usr/lib/softhsm/libsofthsm2.so".into(),
            token_label: "shomei-dev".into(),
            user_pin: secrecy::SecretString::from(pin.trim().to_owned()),
            pool_size: 1,
        })
        .unwrap()
    }

    #[test]
    fn undersized_placeholder_is_retried_with_real_size() {
        let hsm = dev_hsm();
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let original = std::fs::read(root.join("samples/contract.pdf")).unwrap();
        let doc = pdf::load(&original).unwrap();
        let identity = hsm.identity("shomei-dev-ec").unwrap();
        let fields = pdf::SignatureFields {
            name: "Test",
            email: None,
            reason: None,
            location: None,
            signing_time: Utc::now(),
        };
        let whole = pdf::Original::Bytes(&original);
        let appended =
            sign_with_capacity(&hsm, &original, whole, doc, &identity, &fields, None, 16).unwrap();
        let signed = [&original[..], &appended].concat();
        assert_eq!(inspect_pdf(&signed).unwrap().signatures, 1);
    }
}
