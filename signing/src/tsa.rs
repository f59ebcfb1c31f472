//! Issuing RFC 3161 time-stamp tokens with a key in the HSM (the TSA side of `tsp.rs`).
//!
//! Owns the decision on each request (granted, or a rejection with its failInfo) and the
//! token's CMS `SignedData`. Never panics or errors on a malformed request: every request
//! gets a `TimeStampResp`; only an HSM failure is an error, for the caller to answer with
//! `systemFailure` and log.

use chrono::{DateTime, Utc};
use cms::cert::{CertificateChoices, IssuerAndSerialNumber};
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{
    CertificateSet, EncapsulatedContentInfo, SignedData, SignerIdentifier, SignerInfo, SignerInfos,
};
use der::asn1::{Null, ObjectIdentifier, OctetString, SetOfVec};
use der::{Any, Decode, Encode};
use sha2::{Digest, Sha256};
use spki::AlgorithmIdentifierOwned;
use x509_cert::attr::Attribute;
use x509_cert::ext::pkix::name::GeneralName;

use crate::error::HsmError;
use crate::hsm::{Hsm, KeyAlgorithm, SigningIdentity};
use crate::tsp::{
    positive_int, Accuracy, FailureInfo, GenTime, PkiStatusInfo, SigningCertificateV2,
    TimeStampReq, TimeStampResp, TstInfo, ECDSA_WITH_SHA256, ID_AA_SIGNING_CERTIFICATE_V2,
    ID_CONTENT_TYPE, ID_CT_TST_INFO, ID_MESSAGE_DIGEST, ID_SHA256, ID_SIGNED_DATA, SHA256_WITH_RSA,
};

/// What the TSA decides for one request besides the request's own content.
#[derive(Debug, Clone)]
pub struct TokenIssue<'a> {
    /// Label of the TSA key (and certificate) in the token.
    pub key_label: &'a str,
    /// The TSA's policy; a request for any other policy is rejected.
    pub policy: &'a ObjectIdentifier,
    /// Unique per token, across restarts and TSA instances.
    pub serial_number: u128,
    pub gen_time: DateTime<Utc>,
    /// Declared accuracy of `gen_time`, in milliseconds (0 leaves the field out).
    pub accuracy_millis: u32,
}

/// Answers one DER `TimeStampReq` with a DER `TimeStampResp`: a rejection with
/// `badDataFormat` when the request cannot be read, otherwise [`issue_token`].
pub fn reply_to_query(
    hsm: &Hsm,
    issue: &TokenIssue<'_>,
    query: &[u8],
) -> Result<Vec<u8>, HsmError> {
    use shomei_telemetry::metrics;
    let response = match TimeStampReq::from_der(query) {
        Ok(request) => issue_token(hsm, issue, &request)
            .inspect_err(|_| metrics::TSA_REQUESTS.with_label_values(&["failed"]).inc())?,
        Err(e) => rejection(
            FailureInfo::BadDataFormat,
            format!("malformed TimeStampReq: {e}"),
        ),
    };
    if response.time_stamp_token.is_some() {
        metrics::TSA_TOKENS_ISSUED.inc();
        metrics::TSA_REQUESTS.with_label_values(&["granted"]).inc();
    } else {
        metrics::TSA_REQUESTS.with_label_values(&["rejected"]).inc();
    }
    Ok(response
        .to_der()
        .expect("a response built here always encodes"))
}

/// Decides on `request` and, when it is acceptable, signs a token for it.
///
/// Rejections: version other than 1 (`badRequest`), a hash other than SHA-256/384/512 or a
/// digest of the wrong length (`badAlg`), another policy (`unacceptedPolicy`), any request
/// extension (`unacceptedExtension`: none is supported).
pub fn issue_token(
    hsm: &Hsm,
    issue: &TokenIssue<'_>,
    request: &TimeStampReq,
) -> Result<TimeStampResp, HsmError> {
    if request.version != 1 {
        return Ok(rejection(
            FailureInfo::BadRequest,
            format!("version {} is not supported", request.version),
        ));
    }
    let imprint = &request.message_imprint;
    match imprint.supported_digest_len() {
        Some(len) if len == imprint.hashed_message.as_bytes().len() => {}
        Some(_) => {
            return Ok(rejection(
                FailureInfo::BadAlg,
                "digest length does not match its algorithm",
            ))
        }
        None => {
            return Ok(rejection(
                FailureInfo::BadAlg,
                format!(
                    "hash algorithm {} is not accepted (SHA-256/384/512 only)",
                    imprint.hash_algorithm.oid
                ),
            ))
        }
    }
    if let Some(requested) = &request.req_policy {
        if requested != issue.policy {
            return Ok(rejection(
                FailureInfo::UnacceptedPolicy,
                format!(
                    "policy {requested} is not offered; this TSA issues under {}",
                    issue.policy
                ),
            ));
        }
    }
    if request.extensions.as_ref().is_some_and(|e| !e.is_empty()) {
        return Ok(rejection(
            FailureInfo::UnacceptedExtension,
            "no request extension is supported",
        ));
    }

    let identity = hsm.identity(issue.key_label)?;
    let certificate = identity.certificate();
    let tst_info = TstInfo {
        version: 1,
        policy: *issue.policy,
        message_imprint: imprint.clone(),
        serial_number: positive_int(&issue.serial_number.to_be_bytes()),
        gen_time: GenTime::new(issue.gen_time),
        accuracy: accuracy(issue.accuracy_millis),
        ordering: false,
        nonce: request.nonce.clone(),
        tsa: Some(GeneralName::DirectoryName(
            certificate.tbs_certificate().subject().clone(),
        )),
        extensions: None,
    };
    let tst_der = tst_info.to_der().map_err(unsupported(&identity))?;
    let signed_data = signed_data(hsm, &identity, &tst_der, request.cert_req)?;
    Ok(TimeStampResp {
        status: PkiStatusInfo::granted(),
        time_stamp_token: Some(signed_data),
    })
}

fn rejection(failure: FailureInfo, text: impl Into<String>) -> TimeStampResp {
    TimeStampResp {
        status: PkiStatusInfo::rejection(failure, text),
        time_stamp_token: None,
    }
}

fn accuracy(millis: u32) -> Option<Accuracy> {
    if millis == 0 {
        return None;
    }
    let seconds = millis / 1000;
    let rest = u16::try_from(millis % 1000).expect("< 1000");
    Some(Accuracy {
        seconds: (seconds > 0).then_some(seconds),
        millis: (rest > 0).then_some(rest),
        micros: None,
    })
}

/// Encoding failures here can only come from the TSA certificate (a name or serial the DER
/// encoder refuses), so they are reported against the key, as permanent.
fn unsupported(identity: &SigningIdentity) -> impl Fn(der::Error) -> HsmError + '_ {
    move |e| HsmError::UnsupportedKey {
        label: identity.label().to_owned(),
        reason: format!("cannot encode time-stamp token: {e}"),
    }
}

fn attribute(oid: ObjectIdentifier, value: Any) -> der::Result<Attribute> {
    Ok(Attribute {
        oid,
        values: SetOfVec::try_from(vec![value])?,
    })
}

/// `SignedData` over the TSTInfo, signed attributes content-type, message-digest and ESS
/// signing-certificate-v2 (RFC 5816), signed by the HSM over the DER of the attribute SET.
fn signed_data(
    hsm: &Hsm,
    identity: &SigningIdentity,
    tst_der: &[u8],
    include_certificates: bool,
) -> Result<ContentInfo, HsmError> {
    let encode_error = unsupported(identity);
    let certificate = identity.certificate();
    let sha256 = AlgorithmIdentifierOwned {
        oid: ID_SHA256,
        parameters: None,
    };
    let ess = SigningCertificateV2::for_certificate(certificate).map_err(&encode_error)?;
    let build_attrs = || -> der::Result<SetOfVec<Attribute>> {
        SetOfVec::try_from(vec![
            attribute(ID_CONTENT_TYPE, Any::encode_from(&ID_CT_TST_INFO)?)?,
            attribute(
                ID_MESSAGE_DIGEST,
                Any::encode_from(&OctetString::new(Sha256::digest(tst_der).to_vec())?)?,
            )?,
            attribute(ID_AA_SIGNING_CERTIFICATE_V2, Any::encode_from(&ess)?)?,
        ])
    };
    let signed_attrs = build_attrs().map_err(&encode_error)?;
    // The signature covers the attributes as a SET (tag 0x31), not as the [0] in SignerInfo.
    let to_sign: [u8; 32] = Sha256::digest(signed_attrs.to_der().map_err(&encode_error)?).into();
    let signature = hsm.sign_digest(identity, &to_sign)?;

    let signature_algorithm = match identity.algorithm() {
        // RFC 4055 §5: parameters MUST be NULL for sha256WithRSAEncryption.
        KeyAlgorithm::Rsa => AlgorithmIdentifierOwned {
            oid: SHA256_WITH_RSA,
            parameters: Some(Any::from(Null)),
        },
        // RFC 5758 §3.2: parameters MUST be absent for ECDSA.
        KeyAlgorithm::EcdsaP256 => AlgorithmIdentifierOwned {
            oid: ECDSA_WITH_SHA256,
            parameters: None,
        },
    };
    let build = || -> der::Result<ContentInfo> {
        let signer_info = SignerInfo {
            version: CmsVersion::V1,
            sid: SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
                issuer: certificate.tbs_certificate().issuer().clone(),
                serial_number: certificate.tbs_certificate().serial_number().clone(),
            }),
            digest_alg: sha256.clone(),
            signed_attrs: Some(signed_attrs.clone()),
            signature_algorithm: signature_algorithm.clone(),
            signature: OctetString::new(signature.clone())?,
            unsigned_attrs: None,
        };
        // RFC 3161 §2.4.1: with certReq the TSA certificate MUST be there; the issuers
        // from the token come along so a verifier needs only the root.
        let certificates = include_certificates
            .then(|| {
                CertificateSet::try_from(
                    std::iter::once(certificate)
                        .chain(identity.chain())
                        .map(|c| CertificateChoices::Certificate(c.clone()))
                        .collect::<Vec<_>>(),
                )
            })
            .transpose()?;
        let signed_data = SignedData {
            // RFC 5652 §5.1: version 3 because the eContentType is not id-data.
            version: CmsVersion::V3,
            digest_algorithms: SetOfVec::try_from(vec![sha256.clone()])?,
            encap_content_info: EncapsulatedContentInfo {
                econtent_type: ID_CT_TST_INFO,
                econtent: Some(Any::encode_from(&OctetString::new(tst_der.to_vec())?)?),
            },
            certificates,
            crls: None,
            signer_infos: SignerInfos::try_from(vec![signer_info])?,
        };
        Ok(ContentInfo {
            content_type: ID_SIGNED_DATA,
            content: Any::encode_from(&signed_data)?,
        })
    };
    build().map_err(&encode_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_splits_seconds_and_millis() {
        assert_eq!(accuracy(0), None);
        let a = accuracy(1500).unwrap();
        assert_eq!((a.seconds, a.millis), (Some(1), Some(500)));
        let a = accuracy(1000).unwrap();
        assert_eq!((a.seconds, a.millis), (Some(1), None));
    }
}
