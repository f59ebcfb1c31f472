#![doc = include_str!("../README.md")]

mod cms;
mod error;
mod hsm;
mod pdf;
mod tsp;

use chrono::{DateTime, Utc};

pub use error::{HsmError, PdfError, SignError};
pub use hsm::{Hsm, HsmSettings, KeyAlgorithm, SigningIdentity};
pub use pdf::{inspect_pdf, PdfInfo};
pub use tsp::{TimestampError, Timestamper};

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

/// Extra room for the CMS beyond the estimate when the first attempt did not
/// fit; generous because every retry costs an HSM signature.
const PLACEHOLDER_RETRY_MARGIN: usize = 1024;

/// Signs `pdf` (PAdES B-B, `ETSI.CAdES.detached`) as a new incremental
/// revision: every byte of `pdf` is kept unchanged at the start of the output,
/// so earlier signatures stay valid.
///
/// Blocking (PDF parsing and PKCS#11 calls); run it on a blocking thread.
pub fn sign_pdf(hsm: &Hsm, pdf: &[u8], request: &SignatureRequest) -> Result<Vec<u8>, SignError> {
    let doc = pdf::load(pdf)?;
    let identity = hsm.identity(&request.key_label)?;
    let fields = pdf::SignatureFields {
        name: &request.signer_name,
        email: request.signer_email.as_deref(),
        reason: request.reason.as_deref(),
        location: request.location.as_deref(),
        signing_time: request.signing_time,
    };

    sign_with_capacity(
        hsm,
        pdf,
        doc,
        &identity,
        &fields,
        cms::estimated_size(&identity),
    )
}

fn sign_with_capacity(
    hsm: &Hsm,
    pdf: &[u8],
    doc: lopdf::Document,
    identity: &SigningIdentity,
    fields: &pdf::SignatureFields<'_>,
    mut capacity: usize,
) -> Result<Vec<u8>, SignError> {
    // The estimate is conservative, so the second round is for certificates
    // with unusual extensions only; it always fits because it uses the real size.
    for _ in 0..2 {
        let revision = pdf::PreparedRevision::new(pdf, doc.clone(), fields, capacity)?;
        let signed_data = cms::signed_data(hsm, identity, &revision.digest())?;
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
        let signed = sign_with_capacity(&hsm, &original, doc, &identity, &fields, 16).unwrap();
        assert!(signed.starts_with(&original));
        assert_eq!(inspect_pdf(&signed).unwrap().signatures, 1);
    }
}
