//! Detached CMS `SignedData` for PAdES B-B (ETSI EN 319 142-1 §5.1, 5.2),
//! signed by the HSM through an external signer; the signature time-stamp of
//! B-T; reading certificates back out of embedded CMS for the DSS.
//!
//! Never embeds a time-stamp token without checking that its message imprint
//! is the digest that was asked for.

use std::cell::RefCell;

use cms::builder::{create_content_type_attribute, SignedDataBuilder, SignerInfoBuilder};
use cms::cert::{CertificateChoices, IssuerAndSerialNumber};
use cms::content_info::ContentInfo;
use cms::signed_data::{EncapsulatedContentInfo, SignedData, SignerIdentifier, SignerInfo};
use const_oid::db::{rfc3161, rfc5911, rfc5912};
use const_oid::ObjectIdentifier;
use der::asn1::{BitString, Null, OctetString, SetOfVec};
use der::{Any, Decode, Encode, Header, Reader, Sequence, SliceReader, Tag, TagNumber};
use sha2::{Digest, Sha256};
use spki::{
    AlgorithmIdentifierOwned, DynSignatureAlgorithmIdentifier, EncodePublicKey,
    SignatureBitStringEncoding,
};
use x509_cert::attr::Attribute;
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
use x509_cert::ext::pkix::CrlDistributionPoints;
use x509_cert::serial_number::SerialNumber;
use x509_cert::Certificate;

use crate::error::{HsmError, SignError};
use crate::hsm::{Hsm, KeyAlgorithm, SigningIdentity};
use crate::tsp::Timestamper;

/// Builds a DER `ContentInfo(SignedData)` over content whose SHA-256 is
/// `content_digest`, with the signer certificate and chain embedded.
///
/// Signed attributes: content-type, message-digest and
/// signing-certificate-v2. No signing-time: PAdES puts the time in the
/// signature dictionary's /M and forbids the attribute.
///
/// With a `timestamper` the signature is B-T: once the HSM has signed, the
/// token over the signature value is added to the SignerInfo as the unsigned
/// attribute id-aa-timeStampToken ([`add_signature_timestamp`]) before the
/// SignedData is encoded, so it is encoded once. Any failure to get a checked
/// token is an error: a B-T request never yields a B-B signature.
pub(crate) fn signed_data(
    hsm: &Hsm,
    identity: &SigningIdentity,
    content_digest: &[u8; 32],
    timestamper: Option<&dyn Timestamper>,
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
    // The builder flattens every failure of the signer and of the callback into
    // an opaque error; the HSM's or the time-stamp's own error decides between
    // retry and abort, so it is parked here and surfaced first.
    let mut timestamp_failure = None;
    let added = builder.add_signer_info_cb::<HsmSigner<'_>, HsmSignature, _>(
        signer_info,
        &signer,
        |signer_info| {
            let Some(timestamper) = timestamper else {
                return Ok(());
            };
            add_signature_timestamp(signer_info, timestamper).map_err(|e| {
                timestamp_failure = Some(e);
                cms::builder::Error::Asn1(der::ErrorKind::Failed.into())
            })
        },
    );
    if let Some(hsm_error) = signer.take_failure() {
        return Err(hsm_error.into());
    }
    if let Some(timestamp_error) = timestamp_failure {
        return Err(timestamp_error);
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

// ---------------------------------------------------------------------------
// Time-stamps (PAdES B-T, B-LTA) and reading embedded CMS back.

/// Adds a signature time-stamp (ETSI EN 319 122-1 §5.3: unsigned attribute
/// id-aa-timeStampToken over the SignerInfo's signature value) to
/// `signer_info`, just signed, asking `timestamper` for the token.
fn add_signature_timestamp(
    signer_info: &mut SignerInfo,
    timestamper: &dyn Timestamper,
) -> Result<(), SignError> {
    let digest: [u8; 32] = Sha256::digest(signer_info.signature.as_bytes()).into();
    let token = timestamper.timestamp(&digest)?;
    check_token(&token, &digest)?;

    let mut values = SetOfVec::new();
    values
        .insert(Any::from_der(&token).map_err(cms_error)?)
        .map_err(cms_error)?;
    let mut unsigned = signer_info.unsigned_attrs.take().unwrap_or_default();
    unsigned
        .insert(Attribute {
            oid: rfc3161::ID_AA_TIME_STAMP_TOKEN,
            values,
        })
        .map_err(cms_error)?;
    signer_info.unsigned_attrs = Some(unsigned);
    Ok(())
}

/// Room for one time-stamp token in a /Contents placeholder: a token holding the
/// TSA certificate and its chain is typically 3–6 KiB; bigger ones are handled by
/// the retry with the real size.
pub(crate) const TIMESTAMP_TOKEN_ESTIMATE: usize = 8 * 1024;

/// The timestamper promises a checked token; this is the cheap second look
/// that keeps a wrong one out of a document whatever the TSA client does:
/// a DER `ContentInfo(SignedData)` of `TSTInfo` whose message imprint is
/// SHA-256 = `digest`. Only the way to the `TSTInfo` is decoded: the
/// certificates and signer infos after it are skipped as they are (the TSA
/// client decoded and checked them; decoding them again cost more than the rest
/// of the look).
pub(crate) fn check_token(token: &[u8], digest: &[u8; 32]) -> Result<(), SignError> {
    let bad = |what: &str| SignError::BadTimestamp(what.to_owned());
    let (content_type, econtent_type, tst_info) =
        encapsulated_content(token).map_err(|_| bad("not a DER ContentInfo(SignedData)"))?;
    if content_type != rfc5911::ID_SIGNED_DATA {
        return Err(bad("not a SignedData"));
    }
    if econtent_type != rfc3161::ID_CT_TST_INFO {
        return Err(bad("content is not a TSTInfo"));
    }
    let tst_info = tst_info.ok_or_else(|| bad("TSTInfo missing"))?;
    let (algorithm, hashed) =
        message_imprint(tst_info).map_err(|_| bad("TSTInfo cannot be decoded"))?;
    if algorithm.oid != rfc5912::ID_SHA_256 || hashed.as_bytes() != digest {
        return Err(bad("message imprint is not the SHA-256 asked for"));
    }
    Ok(())
}

/// A `ContentInfo`'s content type and, read as a SignedData (RFC 5652 §5.1), its
/// `encapContentInfo`: the content type and the content's bytes, if any. The
/// SignedData's version and digest algorithms are read as TLVs, the fields after
/// `encapContentInfo` skipped.
fn encapsulated_content(
    content_info: &[u8],
) -> der::Result<(ObjectIdentifier, ObjectIdentifier, Option<&[u8]>)> {
    let mut whole = SliceReader::new(content_info)?;
    let mut content_info = within(&mut whole, Tag::Sequence)?;
    whole.finish()?;
    let content_type: ObjectIdentifier = content_info.decode()?;
    let mut content = within(&mut content_info, EXPLICIT_0)?;
    content_info.finish()?;
    let mut signed_data = within(&mut content, Tag::Sequence)?;
    content.finish()?;
    let _version = tagged(&mut signed_data, Tag::Integer)?;
    let _digest_algorithms = tagged(&mut signed_data, Tag::Set)?;
    // What follows `encapContentInfo` in `signed_data` is left unread.
    let mut encapsulated = within(&mut signed_data, Tag::Sequence)?;
    let econtent_type: ObjectIdentifier = encapsulated.decode()?;
    let econtent = if encapsulated.is_finished() {
        None
    } else {
        let mut explicit = within(&mut encapsulated, EXPLICIT_0)?;
        let octets = tagged(&mut explicit, Tag::OctetString)?;
        explicit.finish()?;
        Some(octets)
    };
    encapsulated.finish()?;
    Ok((content_type, econtent_type, econtent))
}

/// `[0] EXPLICIT`, as CMS wraps a `ContentInfo`'s and an `EncapsulatedContentInfo`'s content.
const EXPLICIT_0: Tag = Tag::ContextSpecific {
    constructed: true,
    number: TagNumber(0),
};

/// The value of the next field of `reader`, which must be tagged `tag`.
fn tagged<'a>(reader: &mut SliceReader<'a>, tag: Tag) -> der::Result<&'a [u8]> {
    let header = Header::decode(reader)?;
    header.tag().assert_eq(tag)?;
    reader.read_slice(header.length())
}

/// A reader of the value of the next field of `reader`, which must be tagged `tag`.
fn within<'a>(reader: &mut SliceReader<'a>, tag: Tag) -> der::Result<SliceReader<'a>> {
    SliceReader::new(tagged(reader, tag)?)
}

/// `TSTInfo.messageImprint`, reading only the fields before it (version,
/// policy) and skipping the rest (RFC 3161 §2.4.2).
fn message_imprint(tst_info: &[u8]) -> der::Result<(AlgorithmIdentifierOwned, OctetString)> {
    let mut reader = SliceReader::new(tst_info)?;
    let imprint = reader.sequence(|r| {
        let _version: der::asn1::Int = r.decode()?;
        let _policy: ObjectIdentifier = r.decode()?;
        let imprint = r.sequence(|r| Ok::<_, der::Error>((r.decode()?, r.decode()?)))?;
        let rest = r.remaining_len();
        r.drain(rest)?;
        Ok::<_, der::Error>(imprint)
    })?;
    reader.finish()?;
    Ok(imprint)
}

/// Every certificate carried by a CMS `ContentInfo(SignedData)` (a signature or
/// a time-stamp token), including those of signature time-stamp tokens in its
/// unsigned attributes. `cms_der` may carry trailing padding (a /Contents string).
pub(crate) fn embedded_certificates(cms_der: &[u8]) -> Result<Vec<Certificate>, SignError> {
    let bad = |e: der::Error| SignError::EmbeddedSignature(e.to_string());
    let tlv = SliceReader::new(cms_der)
        .and_then(|mut r| r.tlv_bytes())
        .map_err(bad)?;
    let content_info = ContentInfo::from_der(tlv).map_err(bad)?;
    if content_info.content_type != rfc5911::ID_SIGNED_DATA {
        return Err(SignError::EmbeddedSignature(
            "CMS content is not SignedData".into(),
        ));
    }
    let signed_data = content_info
        .content
        .decode_as::<SignedData>()
        .map_err(bad)?;
    let mut found: Vec<Certificate> = signed_data
        .certificates
        .iter()
        .flat_map(|set| set.0.iter())
        .filter_map(|choice| match choice {
            CertificateChoices::Certificate(cert) => Some(cert.clone()),
            CertificateChoices::Other(_) => None,
        })
        .collect();
    for signer_info in signed_data.signer_infos.0.iter() {
        for attribute in signer_info.unsigned_attrs.iter().flat_map(|a| a.iter()) {
            if attribute.oid == rfc3161::ID_AA_TIME_STAMP_TOKEN {
                for token in attribute.values.iter() {
                    let token = token.to_der().map_err(bad)?;
                    found.extend(embedded_certificates(&token)?);
                }
            }
        }
    }
    Ok(found)
}

/// The URIs of a certificate's CRL distribution points (RFC 5280 §4.2.1.13).
pub(crate) fn crl_urls(certificate: &Certificate) -> Vec<String> {
    let Ok(Some((_, points))) = certificate
        .tbs_certificate()
        .get_extension::<CrlDistributionPoints>()
    else {
        return Vec::new();
    };
    points
        .0
        .iter()
        .filter_map(|point| match &point.distribution_point {
            Some(DistributionPointName::FullName(names)) => Some(names),
            _ => None,
        })
        .flatten()
        .filter_map(|name| match name {
            GeneralName::UniformResourceIdentifier(uri) => Some(uri.as_str().to_owned()),
            _ => None,
        })
        .collect()
}
