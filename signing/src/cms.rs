//! Detached CMS `SignedData` for PAdES B-B (ETSI EN 319 142-1 §5.1, 5.2),
//! signed by the HSM through an external signer.

use std::cell::RefCell;

use cms::builder::{create_content_type_attribute, SignedDataBuilder, SignerInfoBuilder};
use cms::cert::{CertificateChoices, IssuerAndSerialNumber};
use cms::signed_data::{EncapsulatedContentInfo, SignerIdentifier};
use const_oid::db::{rfc5911, rfc5912};
use der::asn1::{BitString, Null, OctetString, SetOfVec};
use der::{Any, Encode, Sequence};
use sha2::{Digest, Sha256};
use spki::{
    AlgorithmIdentifierOwned, DynSignatureAlgorithmIdentifier, EncodePublicKey,
    SignatureBitStringEncoding,
};
use x509_cert::attr::Attribute;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::serial_number::SerialNumber;
use x509_cert::Certificate;

use crate::error::{HsmError, SignError};
use crate::hsm::{Hsm, KeyAlgorithm, SigningIdentity};

/// Builds a DER `ContentInfo(SignedData)` over content whose SHA-256 is
/// `content_digest`, with the signer certificate and chain embedded.
///
/// Signed attributes: content-type, message-digest and
/// signing-certificate-v2. No signing-time: PAdES puts the time in the
/// signature dictionary's /M and forbids the attribute.
pub(crate) fn signed_data(
    hsm: &Hsm,
    identity: &SigningIdentity,
    content_digest: &[u8; 32],
) -> Result<Vec<u8>, SignError> {
    let certificate = identity.certificate();
    let encapsulated = EncapsulatedContentInfo {
        econtent_type: rfc5911::ID_DATA,
        econtent: None,
    };
    let sid = SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
        issuer: certificate.tbs_certificate().issuer().clone(),
        serial_number: certificate.tbs_certificate().serial_number().clone(),
    });

    let mut signer_info =
        SignerInfoBuilder::new(sid, sha256_algorithm(), &encapsulated, Some(content_digest))
            .map_err(cms_error)?;
    // The builder adds message-digest itself (and content-type only if absent).
    signer_info
        .add_signed_attribute(create_content_type_attribute(rfc5911::ID_DATA).map_err(cms_error)?)
        .map_err(cms_error)?;
    signer_info
        .add_signed_attribute(signing_certificate_v2(certificate)?)
        .map_err(cms_error)?;

    let signer = HsmSigner::new(hsm, identity);
    let mut builder = SignedDataBuilder::new(&encapsulated);
    builder
        .add_digest_algorithm(sha256_algorithm())
        .map_err(cms_error)?;
    for cert in std::iter::once(certificate).chain(identity.chain()) {
        builder
            .add_certificate(CertificateChoices::Certificate(cert.clone()))
            .map_err(cms_error)?;
    }
    let added = builder.add_signer_info::<HsmSigner<'_>, HsmSignature>(signer_info, &signer);
    // The builder flattens every signer failure into an opaque error; the
    // HSM's own error decides between retry and abort, so surface it first.
    if let Some(hsm_error) = signer.take_failure() {
        return Err(hsm_error.into());
    }
    added.map_err(cms_error)?;
    builder
        .build()
        .map_err(cms_error)?
        .to_der()
        .map_err(cms_error)
}

/// Worst-case DER size of what [`signed_data`] produces for `identity`, so the
/// PDF placeholder can be sized before the signature exists.
pub(crate) fn estimated_size(identity: &SigningIdentity) -> usize {
    let certificates: usize = std::iter::once(identity.certificate())
        .chain(identity.chain())
        .map(|c| der_len(c, 4096))
        .sum();
    let issuer_and_serial = der_len(identity.certificate().tbs_certificate().issuer(), 1024) + 32;
    let signature = match identity.algorithm() {
        // Modulus size is bounded by the certificate's key; 512 bytes covers RSA-4096.
        KeyAlgorithm::Rsa => 512,
        KeyAlgorithm::EcdsaP256 => 72,
    };
    // sid and ESS issuerSerial each repeat the issuer name; the fixed part
    // (OIDs, attributes, hashes, headers) stays well under 1 KiB.
    certificates + 2 * issuer_and_serial + signature + 1024
}

/// Encoded size, or `fallback` for a value that cannot be encoded (which then
/// fails loudly later, when the CMS is built).
fn der_len(value: &impl Encode, fallback: usize) -> usize {
    value
        .encoded_len()
        .ok()
        .and_then(|len| usize::try_from(u32::from(len)).ok())
        .unwrap_or(fallback)
}

fn cms_error(e: impl std::fmt::Display) -> SignError {
    SignError::Cms(e.to_string())
}

fn sha256_algorithm() -> AlgorithmIdentifierOwned {
    // RFC 5754 §2: implementations SHOULD omit the NULL parameters for SHA-2.
    AlgorithmIdentifierOwned {
        oid: rfc5912::ID_SHA_256,
        parameters: None,
    }
}

/// RFC 5035 `ESSCertIDv2`; `hash_algorithm` is DEFAULT sha256, so it is left
/// out (DER forbids encoding a default value).
#[derive(Sequence)]
struct EssCertIdV2 {
    #[asn1(optional = "true")]
    hash_algorithm: Option<AlgorithmIdentifierOwned>,
    cert_hash: OctetString,
    #[asn1(optional = "true")]
    issuer_serial: Option<IssuerSerial>,
}

#[derive(Sequence)]
struct IssuerSerial {
    issuer: Vec<GeneralName>,
    serial_number: SerialNumber,
}

#[derive(Sequence)]
struct SigningCertificateV2 {
    certs: Vec<EssCertIdV2>,
}

/// The ESS attribute binds the signer certificate into the signed data,
/// which PAdES B-B requires (ETSI EN 319 122-1 §5.2.2).
fn signing_certificate_v2(certificate: &Certificate) -> Result<Attribute, SignError> {
    let cert_der = certificate.to_der().map_err(cms_error)?;
    let value = SigningCertificateV2 {
        certs: vec![EssCertIdV2 {
            hash_algorithm: None,
            cert_hash: OctetString::new(Sha256::digest(&cert_der).to_vec()).map_err(cms_error)?,
            issuer_serial: Some(IssuerSerial {
                issuer: vec![GeneralName::DirectoryName(
                    certificate.tbs_certificate().issuer().clone(),
                )],
                serial_number: certificate.tbs_certificate().serial_number().clone(),
            }),
        }],
    };
    let mut values = SetOfVec::new();
    values
        .insert(Any::encode_from(&value).map_err(cms_error)?)
        .map_err(cms_error)?;
    Ok(Attribute {
        oid: rfc5911::ID_AA_SIGNING_CERTIFICATE_V_2,
        values,
    })
}

/// Adapter that lets the cms builder sign with a key it never sees.
///
/// The `signature` traits only carry an opaque error, so the HSM error is
/// parked here and read back by [`signed_data`].
struct HsmSigner<'a> {
    hsm: &'a Hsm,
    identity: &'a SigningIdentity,
    failure: RefCell<Option<HsmError>>,
}

impl<'a> HsmSigner<'a> {
    fn new(hsm: &'a Hsm, identity: &'a SigningIdentity) -> Self {
        Self {
            hsm,
            identity,
            failure: RefCell::new(None),
        }
    }

    fn take_failure(&self) -> Option<HsmError> {
        self.failure.borrow_mut().take()
    }
}

/// The signer certificate's public key, as the builder's `Keypair` bound wants one.
#[derive(Clone)]
struct CertificatePublicKey(spki::SubjectPublicKeyInfoOwned);

impl EncodePublicKey for CertificatePublicKey {
    fn to_public_key_der(&self) -> spki::Result<der::Document> {
        Ok(der::Document::encode_msg(&self.0)?)
    }
}

impl signature::Keypair for HsmSigner<'_> {
    type VerifyingKey = CertificatePublicKey;

    fn verifying_key(&self) -> CertificatePublicKey {
        CertificatePublicKey(
            self.identity
                .certificate()
                .tbs_certificate()
                .subject_public_key_info()
                .clone(),
        )
    }
}

impl DynSignatureAlgorithmIdentifier for HsmSigner<'_> {
    fn signature_algorithm_identifier(&self) -> spki::Result<AlgorithmIdentifierOwned> {
        Ok(match self.identity.algorithm() {
            // RFC 4055 §5: parameters MUST be NULL for sha256WithRSAEncryption.
            KeyAlgorithm::Rsa => AlgorithmIdentifierOwned {
                oid: rfc5912::SHA_256_WITH_RSA_ENCRYPTION,
                parameters: Some(Any::from(Null)),
            },
            // RFC 5758 §3.2: parameters MUST be absent for ECDSA.
            KeyAlgorithm::EcdsaP256 => AlgorithmIdentifierOwned {
                oid: rfc5912::ECDSA_WITH_SHA_256,
                parameters: None,
            },
        })
    }
}

/// Signature bytes as returned by [`Hsm::sign_digest`].
struct HsmSignature(Vec<u8>);

impl SignatureBitStringEncoding for HsmSignature {
    fn to_bitstring(&self) -> der::Result<BitString> {
        BitString::from_bytes(&self.0)
    }
}

impl signature::Signer<HsmSignature> for HsmSigner<'_> {
    fn try_sign(&self, signed_attributes: &[u8]) -> Result<HsmSignature, signature::Error> {
        let digest: [u8; 32] = Sha256::digest(signed_attributes).into();
        match self.hsm.sign_digest(self.identity, &digest) {
            Ok(signature) => Ok(HsmSignature(signature)),
            Err(e) => {
                *self.failure.borrow_mut() = Some(e);
                Err(signature::Error::new())
            }
        }
    }
}
