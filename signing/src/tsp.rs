//! RFC 3161 time-stamps (with RFC 5816's ESSCertIDv2): the ASN.1 types, the check every token
//! goes through before use, and the HTTP client that fetches tokens from time-stamping
//! authorities.
//!
//! Never hands out a token that failed a check: PKI status, content type, nonce, message
//! imprint, policy, signer certificate (critical timeStamping-only EKU, valid at genTime,
//! chaining to a trust anchor), ESS certificate binding, message-digest and signature.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Timelike, Utc};
use cms::cert::CertificateChoices;
use cms::content_info::ContentInfo;
use cms::signed_data::{SignedData, SignerIdentifier, SignerInfo};
use der::asn1::{BitString, Int, ObjectIdentifier, OctetString, Uint};
use der::{
    Any, Decode, DecodeValue, Encode, EncodeValue, FixedTag, Header, Length, Reader, Sequence, Tag,
    Tagged, Writer,
};
use sha2::{Digest, Sha256, Sha384, Sha512};
use spki::AlgorithmIdentifierOwned;

use crate::verify::{verify_certificate_signature, verify_signature};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, SubjectKeyIdentifier};
use x509_cert::ext::Extensions;
use x509_cert::serial_number::SerialNumber;
use x509_cert::Certificate;

/// A source of RFC 3161 time-stamp tokens, already checked (status, nonce, message imprint,
/// certificate, policy) before they are returned.
pub trait Timestamper: Send + Sync {
    /// A `TimeStampToken` (DER of the CMS `ContentInfo`) whose message imprint is
    /// SHA-256 = `sha256_digest`. Blocking (network); call from a blocking thread.
    fn timestamp(&self, sha256_digest: &[u8; 32]) -> Result<Vec<u8>, TimestampError>;
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TimestampError {
    /// Every configured TSA was tried (with retries) and none gave a usable token.
    #[error("no time-stamping authority gave a usable time-stamp: {0}")]
    Unavailable(String),

    /// A token (or reply) failed a check; it must not be used.
    #[error("time-stamp token rejected: {0}")]
    InvalidToken(String),

    /// The client settings cannot work (no URL, no trust anchor, HTTP client set-up).
    #[error("time-stamp client misconfigured: {0}")]
    Config(String),
}

// ---------------------------------------------------------------------------------------------
// Object identifiers
// ---------------------------------------------------------------------------------------------

/// `id-ct-TSTInfo` (RFC 3161 §2.4.2): the eContentType of every time-stamp token.
pub const ID_CT_TST_INFO: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.1.4");
/// `id-aa-signingCertificateV2` (RFC 5035, required for tokens by RFC 5816).
pub const ID_AA_SIGNING_CERTIFICATE_V2: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.2.47");
/// `id-kp-timeStamping` (RFC 3161 §2.3).
pub const ID_KP_TIME_STAMPING: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.8");

pub(crate) const ID_SIGNED_DATA: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
pub(crate) const ID_CONTENT_TYPE: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.3");
pub(crate) const ID_MESSAGE_DIGEST: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
pub(crate) const ID_SHA256: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
pub(crate) const ID_SHA384: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
pub(crate) const ID_SHA512: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.3");
pub(crate) const RSA_ENCRYPTION: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
pub(crate) const SHA256_WITH_RSA: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
pub(crate) const ECDSA_WITH_SHA256: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");

// ---------------------------------------------------------------------------------------------
// ASN.1 (RFC 3161 §2.4, RFC 5816)
// ---------------------------------------------------------------------------------------------

/// `MessageImprint ::= SEQUENCE { hashAlgorithm AlgorithmIdentifier, hashedMessage OCTET STRING }`
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct MessageImprint {
    pub hash_algorithm: AlgorithmIdentifierOwned,
    pub hashed_message: OctetString,
}

impl MessageImprint {
    pub fn sha256(digest: &[u8; 32]) -> Self {
        Self {
            // RFC 5754 §2: the parameters of SHA-2 are absent.
            hash_algorithm: AlgorithmIdentifierOwned {
                oid: ID_SHA256,
                parameters: None,
            },
            hashed_message: OctetString::new(digest.to_vec()).expect("32 bytes always fit"),
        }
    }

    /// The digest length of the hash algorithm if it is one of SHA-256/384/512 (parameters
    /// absent or NULL), `None` for anything else.
    pub fn supported_digest_len(&self) -> Option<usize> {
        digest_len(&self.hash_algorithm)
    }
}

pub(crate) fn digest_len(algorithm: &AlgorithmIdentifierOwned) -> Option<usize> {
    let len = match algorithm.oid {
        ID_SHA256 => 32,
        ID_SHA384 => 48,
        ID_SHA512 => 64,
        _ => return None,
    };
    let params_ok = match &algorithm.parameters {
        None => true,
        Some(any) => any.tag() == Tag::Null && any.value().is_empty(),
    };
    params_ok.then_some(len)
}

/// `TimeStampReq` (RFC 3161 §2.4.1).
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct TimeStampReq {
    /// Always 1.
    pub version: u8,
    pub message_imprint: MessageImprint,
    #[asn1(optional = "true")]
    pub req_policy: Option<ObjectIdentifier>,
    #[asn1(optional = "true")]
    pub nonce: Option<Int>,
    #[asn1(default = "Default::default")]
    pub cert_req: bool,
    #[asn1(
        context_specific = "0",
        tag_mode = "IMPLICIT",
        constructed = "true",
        optional = "true"
    )]
    pub extensions: Option<Extensions>,
}

impl TimeStampReq {
    /// A v1 request for a SHA-256 digest, asking for the TSA certificate.
    pub fn sha256(digest: &[u8; 32], nonce: Option<Int>, policy: Option<ObjectIdentifier>) -> Self {
        Self {
            version: 1,
            message_imprint: MessageImprint::sha256(digest),
            req_policy: policy,
            nonce,
            cert_req: true,
            extensions: None,
        }
    }
}

/// `PKIFreeText ::= SEQUENCE SIZE (1..MAX) OF UTF8String`
pub type PkiFreeText = Vec<String>;

/// `PKIStatusInfo` (RFC 3161 §2.4.2).
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct PkiStatusInfo {
    /// One of the `PkiStatusInfo::*` status constants.
    pub status: u32,
    #[asn1(optional = "true")]
    pub status_string: Option<PkiFreeText>,
    /// `PKIFailureInfo`, a named BIT STRING; see [`FailureInfo`].
    #[asn1(optional = "true")]
    pub fail_info: Option<BitString>,
}

impl PkiStatusInfo {
    pub const GRANTED: u32 = 0;
    pub const GRANTED_WITH_MODS: u32 = 1;
    pub const REJECTION: u32 = 2;
    pub const WAITING: u32 = 3;
    pub const REVOCATION_WARNING: u32 = 4;
    pub const REVOCATION_NOTIFICATION: u32 = 5;

    pub fn granted() -> Self {
        Self {
            status: Self::GRANTED,
            status_string: None,
            fail_info: None,
        }
    }

    /// A `rejection` with one failure reason and a human-readable text.
    pub fn rejection(failure: FailureInfo, text: impl Into<String>) -> Self {
        Self {
            status: Self::REJECTION,
            status_string: Some(vec![text.into()]),
            fail_info: Some(failure.to_bit_string()),
        }
    }

    /// Whether a token comes with this status (granted or grantedWithMods).
    pub fn is_granted(&self) -> bool {
        matches!(self.status, Self::GRANTED | Self::GRANTED_WITH_MODS)
    }

    /// The failure reasons set in `fail_info` (unknown bits are left out).
    pub fn failures(&self) -> Vec<FailureInfo> {
        let Some(bits) = &self.fail_info else {
            return Vec::new();
        };
        FailureInfo::ALL
            .into_iter()
            .filter(|f| {
                let bit = *f as usize;
                bits.raw_bytes()
                    .get(bit / 8)
                    .is_some_and(|byte| byte & (0x80 >> (bit % 8)) != 0)
            })
            .collect()
    }
}

impl fmt::Display for PkiStatusInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.status {
            Self::GRANTED => "granted",
            Self::GRANTED_WITH_MODS => "grantedWithMods",
            Self::REJECTION => "rejection",
            Self::WAITING => "waiting",
            Self::REVOCATION_WARNING => "revocationWarning",
            Self::REVOCATION_NOTIFICATION => "revocationNotification",
            _ => "unknown status",
        };
        write!(f, "{name} ({})", self.status)?;
        let failures = self.failures();
        if !failures.is_empty() {
            write!(f, " failInfo {failures:?}")?;
        }
        if let Some(text) = &self.status_string {
            write!(f, ": {}", text.join("; "))?;
        }
        Ok(())
    }
}

/// Bits of `PKIFailureInfo` (RFC 3161 §2.4.2); the value is the bit number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureInfo {
    BadAlg = 0,
    BadRequest = 2,
    BadDataFormat = 5,
    TimeNotAvailable = 14,
    UnacceptedPolicy = 15,
    UnacceptedExtension = 16,
    AddInfoNotAvailable = 17,
    SystemFailure = 25,
}

impl FailureInfo {
    const ALL: [FailureInfo; 8] = [
        Self::BadAlg,
        Self::BadRequest,
        Self::BadDataFormat,
        Self::TimeNotAvailable,
        Self::UnacceptedPolicy,
        Self::UnacceptedExtension,
        Self::AddInfoNotAvailable,
        Self::SystemFailure,
    ];

    /// DER of a named bit string: only up to the highest set bit (X.690 §11.2.2).
    pub fn to_bit_string(self) -> BitString {
        let bit = self as usize;
        let mut bytes = vec![0u8; bit / 8 + 1];
        bytes[bit / 8] = 0x80 >> (bit % 8);
        let unused = u8::try_from(7 - bit % 8).expect("< 8");
        BitString::new(unused, bytes).expect("valid bit string")
    }
}

/// `Accuracy` (RFC 3161 §2.4.2).
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct Accuracy {
    #[asn1(optional = "true")]
    pub seconds: Option<u32>,
    #[asn1(context_specific = "0", tag_mode = "IMPLICIT", optional = "true")]
    pub millis: Option<u16>,
    #[asn1(context_specific = "1", tag_mode = "IMPLICIT", optional = "true")]
    pub micros: Option<u16>,
}

/// `TSTInfo` (RFC 3161 §2.4.2).
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct TstInfo {
    /// Always 1.
    pub version: u8,
    pub policy: ObjectIdentifier,
    pub message_imprint: MessageImprint,
    pub serial_number: Int,
    pub gen_time: GenTime,
    #[asn1(optional = "true")]
    pub accuracy: Option<Accuracy>,
    #[asn1(default = "Default::default")]
    pub ordering: bool,
    #[asn1(optional = "true")]
    pub nonce: Option<Int>,
    /// A CHOICE, so the tag is explicit whatever the module default says.
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    pub tsa: Option<GeneralName>,
    #[asn1(
        context_specific = "1",
        tag_mode = "IMPLICIT",
        constructed = "true",
        optional = "true"
    )]
    pub extensions: Option<Extensions>,
}

/// `TimeStampResp` (RFC 3161 §2.4.2); the token is a CMS `ContentInfo` holding `SignedData`.
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct TimeStampResp {
    pub status: PkiStatusInfo,
    #[asn1(optional = "true")]
    pub time_stamp_token: Option<ContentInfo>,
}

/// `genTime`: a GeneralizedTime that, unlike `der::asn1::GeneralizedTime`, may carry
/// fractional seconds (RFC 3161 §2.4.2: `YYYYMMDDhhmmss[.s...]Z`, no trailing zeros).
/// Kept at millisecond precision when created here; any precision is read.
#[derive(Clone, Copy, Debug, Eq, PartialEq, PartialOrd, Ord)]
pub struct GenTime(DateTime<Utc>);

impl GenTime {
    /// `time` truncated to whole milliseconds.
    pub fn new(time: DateTime<Utc>) -> Self {
        let millis = time.nanosecond() / 1_000_000 * 1_000_000;
        Self(time.with_nanosecond(millis).unwrap_or(time))
    }

    pub fn to_date_time(self) -> DateTime<Utc> {
        self.0
    }

    fn to_text(self) -> String {
        let mut text = self.0.format("%Y%m%d%H%M%S").to_string();
        let nanos = self.0.nanosecond() % 1_000_000_000;
        if nanos != 0 {
            let fraction = format!("{nanos:09}");
            text.push('.');
            text.push_str(fraction.trim_end_matches('0'));
        }
        text.push('Z');
        text
    }

    fn parse(text: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(text).ok()?.strip_suffix('Z')?;
        let (whole, fraction) = match text.split_once('.') {
            Some((whole, fraction)) => (whole, Some(fraction)),
            None => (text, None),
        };
        if whole.len() != 14 || !whole.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let time = NaiveDateTime::parse_from_str(whole, "%Y%m%d%H%M%S").ok()?;
        let nanos = match fraction {
            None => 0,
            Some(f) if (1..=9).contains(&f.len()) && f.bytes().all(|b| b.is_ascii_digit()) => {
                format!("{f:0<9}").parse::<u32>().ok()?
            }
            Some(_) => return None,
        };
        Some(Self(time.with_nanosecond(nanos)?.and_utc()))
    }
}

impl FixedTag for GenTime {
    const TAG: Tag = Tag::GeneralizedTime;
}

impl<'a> DecodeValue<'a> for GenTime {
    type Error = der::Error;

    fn decode_value<R: Reader<'a>>(reader: &mut R, header: Header) -> der::Result<Self> {
        let bytes = reader.read_slice(header.length())?;
        Self::parse(bytes).ok_or_else(|| der::Error::from(Tag::GeneralizedTime.value_error()))
    }
}

impl EncodeValue for GenTime {
    fn value_len(&self) -> der::Result<Length> {
        Length::try_from(self.to_text().len())
    }

    fn encode_value(&self, writer: &mut impl Writer) -> der::Result<()> {
        writer.write(self.to_text().as_bytes())
    }
}

/// RFC 5035 `ESSCertIDv2`; `hash_algorithm` is DEFAULT sha256, so it is left out when it is
/// SHA-256 (DER forbids encoding a default value). (cms.rs keeps a private copy of these.)
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub(crate) struct EssCertIdV2 {
    #[asn1(optional = "true")]
    pub hash_algorithm: Option<AlgorithmIdentifierOwned>,
    pub cert_hash: OctetString,
    #[asn1(optional = "true")]
    pub issuer_serial: Option<IssuerSerial>,
}

#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub(crate) struct IssuerSerial {
    pub issuer: Vec<GeneralName>,
    pub serial_number: SerialNumber,
}

#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub(crate) struct SigningCertificateV2 {
    pub certs: Vec<EssCertIdV2>,
    #[asn1(optional = "true")]
    pub policies: Option<Vec<Any>>,
}

impl SigningCertificateV2 {
    pub(crate) fn for_certificate(certificate: &Certificate) -> der::Result<Self> {
        let cert_der = certificate.to_der()?;
        Ok(Self {
            certs: vec![EssCertIdV2 {
                hash_algorithm: None,
                cert_hash: OctetString::new(Sha256::digest(&cert_der).to_vec())?,
                issuer_serial: Some(IssuerSerial {
                    issuer: vec![GeneralName::DirectoryName(
                        certificate.tbs_certificate().issuer().clone(),
                    )],
                    serial_number: certificate.tbs_certificate().serial_number().clone(),
                }),
            }],
            policies: None,
        })
    }
}

/// A positive INTEGER from big-endian bytes (leading zeros are dropped, a sign byte added).
pub fn positive_int(be_bytes: &[u8]) -> Int {
    let first = be_bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(be_bytes.len().saturating_sub(1));
    let bytes = if be_bytes.is_empty() {
        &[0u8][..]
    } else {
        &be_bytes[first..]
    };
    Int::from(Uint::new(bytes).expect("short unsigned integer"))
}

// ---------------------------------------------------------------------------------------------
// Checking a token
// ---------------------------------------------------------------------------------------------

/// What a token must show to be accepted by [`verify_token`].
#[derive(Debug, Clone, Copy)]
pub struct TokenExpectations<'a> {
    /// The message imprint must be SHA-256 of exactly this.
    pub sha256_digest: &'a [u8; 32],
    /// The nonce sent in the request, if one was sent.
    pub nonce: Option<&'a Int>,
    /// The TSA policy the token must carry, if one is required.
    pub policy: Option<&'a ObjectIdentifier>,
    /// Certificates the TSA certificate must chain to (self-signed roots or pinned
    /// intermediates); the token's own certificates may provide the path to them.
    pub trust_anchors: &'a [Certificate],
}

/// A token that passed [`verify_token`].
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    pub tst_info: TstInfo,
    /// The TSA certificate that signed the token.
    pub signer: Certificate,
}

/// Checks a `TimeStampToken` (DER `ContentInfo`) completely; see the module doc.
pub fn verify_token(
    token: &[u8],
    expected: &TokenExpectations<'_>,
) -> Result<VerifiedToken, TimestampError> {
    check_token(token, expected).map_err(TimestampError::InvalidToken)
}

/// Checks a whole `TimeStampResp` (status granted, then the token) and returns the token DER.
pub fn verify_response(
    response: &[u8],
    expected: &TokenExpectations<'_>,
) -> Result<(Vec<u8>, VerifiedToken), TimestampError> {
    let invalid = TimestampError::InvalidToken;
    let response = TimeStampResp::from_der(response)
        .map_err(|e| invalid(format!("reply is not a TimeStampResp: {e}")))?;
    if !response.status.is_granted() {
        return Err(invalid(format!("TSA refused: {}", response.status)));
    }
    let token = response
        .time_stamp_token
        .ok_or_else(|| invalid("granted reply without a token".into()))?
        .to_der()
        .map_err(|e| invalid(format!("token cannot be re-encoded: {e}")))?;
    let verified = verify_token(&token, expected)?;
    Ok((token, verified))
}

fn check_token(token: &[u8], expected: &TokenExpectations<'_>) -> Result<VerifiedToken, String> {
    let content_info =
        ContentInfo::from_der(token).map_err(|e| format!("not a CMS ContentInfo: {e}"))?;
    if content_info.content_type != ID_SIGNED_DATA {
        return Err(format!(
            "content type {} is not signed-data",
            content_info.content_type
        ));
    }
    let signed_data = content_info
        .content
        .decode_as::<SignedData>()
        .map_err(|e| format!("not a SignedData: {e}"))?;
    let encap = &signed_data.encap_content_info;
    if encap.econtent_type != ID_CT_TST_INFO {
        return Err(format!(
            "eContentType {} is not id-ct-TSTInfo",
            encap.econtent_type
        ));
    }
    let econtent = encap.econtent.as_ref().ok_or("no encapsulated TSTInfo")?;
    if econtent.tag() != Tag::OctetString {
        return Err("eContent is not an OCTET STRING".into());
    }
    let tst_der = econtent.value();
    let tst_info = TstInfo::from_der(tst_der).map_err(|e| format!("TSTInfo: {e}"))?;

    if tst_info.version != 1 {
        return Err(format!("TSTInfo version {} is not 1", tst_info.version));
    }
    if tst_info.message_imprint != MessageImprint::sha256(expected.sha256_digest)
        && !(tst_info.message_imprint.hash_algorithm.oid == ID_SHA256
            && digest_len(&tst_info.message_imprint.hash_algorithm) == Some(32)
            && tst_info.message_imprint.hashed_message.as_bytes() == expected.sha256_digest)
    {
        return Err("message imprint differs from the digest sent".into());
    }
    if let Some(nonce) = expected.nonce {
        if tst_info.nonce.as_ref() != Some(nonce) {
            return Err("nonce differs from the one sent".into());
        }
    }
    if let Some(policy) = expected.policy {
        if &tst_info.policy != policy {
            return Err(format!(
                "policy {} is not the required {policy}",
                tst_info.policy
            ));
        }
    }

    let signer_info = match signed_data.signer_infos.0.as_slice() {
        [one] => one,
        other => {
            return Err(format!(
                "{} signer infos, expected exactly one",
                other.len()
            ))
        }
    };
    let certificates: Vec<Certificate> = signed_data
        .certificates
        .iter()
        .flat_map(|set| set.0.iter())
        .filter_map(|choice| match choice {
            CertificateChoices::Certificate(c) => Some(c.clone()),
            _ => None,
        })
        .collect();
    let signer = certificates
        .iter()
        .find(|c| identifies(&signer_info.sid, c))
        .ok_or("the TSA certificate is not in the token")?
        .clone();

    check_signed_attributes(signer_info, tst_der, &signer)?;
    check_tsa_certificate(&signer, &tst_info)?;
    check_chain(&signer, &certificates, expected.trust_anchors)?;

    let signed_attrs = signer_info
        .signed_attrs
        .as_ref()
        .ok_or("no signed attributes")?
        .to_der()
        .map_err(|e| e.to_string())?;
    verify_signature(
        signer.tbs_certificate().subject_public_key_info(),
        &signer_info.signature_algorithm,
        Some(signer_info.digest_alg.oid),
        &signed_attrs,
        signer_info.signature.as_bytes(),
    )
    .map_err(|e| format!("token signature: {e}"))?;

    Ok(VerifiedToken { tst_info, signer })
}

pub(crate) fn identifies(sid: &SignerIdentifier, certificate: &Certificate) -> bool {
    let tbs = certificate.tbs_certificate();
    match sid {
        SignerIdentifier::IssuerAndSerialNumber(isn) => {
            &isn.issuer == tbs.issuer() && &isn.serial_number == tbs.serial_number()
        }
        SignerIdentifier::SubjectKeyIdentifier(ski) => matches!(
            tbs.get_extension::<SubjectKeyIdentifier>(),
            Ok(Some((_, own))) if &own == ski
        ),
    }
}

fn check_signed_attributes(
    signer_info: &SignerInfo,
    tst_der: &[u8],
    signer: &Certificate,
) -> Result<(), String> {
    if digest_len(&signer_info.digest_alg) != Some(32) || signer_info.digest_alg.oid != ID_SHA256 {
        return Err(format!(
            "digest algorithm {} is not SHA-256",
            signer_info.digest_alg.oid
        ));
    }
    let attrs = signer_info
        .signed_attrs
        .as_ref()
        .ok_or("no signed attributes")?;
    let single = |oid: ObjectIdentifier, name: &str| -> Result<&Any, String> {
        let mut found = attrs.iter().filter(|a| a.oid == oid);
        let attr = found.next().ok_or(format!("no {name} attribute"))?;
        if found.next().is_some() || attr.values.len() != 1 {
            return Err(format!("{name} attribute must have exactly one value"));
        }
        Ok(attr.values.iter().next().expect("one value"))
    };

    let content_type = single(ID_CONTENT_TYPE, "content-type")?
        .decode_as::<ObjectIdentifier>()
        .map_err(|e| format!("content-type: {e}"))?;
    if content_type != ID_CT_TST_INFO {
        return Err(format!(
            "content-type attribute {content_type} is not id-ct-TSTInfo"
        ));
    }
    let digest = single(ID_MESSAGE_DIGEST, "message-digest")?
        .decode_as::<OctetString>()
        .map_err(|e| format!("message-digest: {e}"))?;
    if digest.as_bytes() != Sha256::digest(tst_der).as_slice() {
        return Err("message-digest does not match the TSTInfo".into());
    }

    let ess = single(ID_AA_SIGNING_CERTIFICATE_V2, "signing-certificate-v2")?
        .decode_as::<SigningCertificateV2>()
        .map_err(|e| format!("signing-certificate-v2: {e}"))?;
    let first = ess
        .certs
        .first()
        .ok_or("signing-certificate-v2 names no certificate")?;
    let cert_der = signer.to_der().map_err(|e| e.to_string())?;
    let hash: Vec<u8> = match first
        .hash_algorithm
        .as_ref()
        .map(|a| (a.oid, digest_len(a)))
    {
        None | Some((ID_SHA256, Some(_))) => Sha256::digest(&cert_der).to_vec(),
        Some((ID_SHA384, Some(_))) => Sha384::digest(&cert_der).to_vec(),
        Some((ID_SHA512, Some(_))) => Sha512::digest(&cert_der).to_vec(),
        Some((oid, _)) => return Err(format!("ESSCertIDv2 hash algorithm {oid} not supported")),
    };
    if first.cert_hash.as_bytes() != hash.as_slice() {
        return Err("signing-certificate-v2 names another certificate".into());
    }
    if let Some(issuer_serial) = &first.issuer_serial {
        let tbs = signer.tbs_certificate();
        let issuer_named = issuer_serial
            .issuer
            .iter()
            .any(|n| matches!(n, GeneralName::DirectoryName(name) if name == tbs.issuer()));
        if !issuer_named || &issuer_serial.serial_number != tbs.serial_number() {
            return Err("signing-certificate-v2 issuerSerial names another certificate".into());
        }
    }
    Ok(())
}

/// RFC 3161 §2.3: the TSA certificate has exactly one, critical, extended key usage:
/// timeStamping. It must also be valid when the token says it was made.
fn check_tsa_certificate(signer: &Certificate, tst_info: &TstInfo) -> Result<(), String> {
    let tbs = signer.tbs_certificate();
    match tbs.get_extension::<ExtendedKeyUsage>() {
        Ok(Some((true, eku))) if eku.0 == [ID_KP_TIME_STAMPING] => {}
        Ok(Some((false, _))) => {
            return Err("TSA certificate's extendedKeyUsage is not critical".into())
        }
        Ok(Some(_)) => {
            return Err("TSA certificate's extendedKeyUsage is not timeStamping only".into())
        }
        Ok(None) => return Err("TSA certificate has no extendedKeyUsage".into()),
        Err(e) => return Err(format!("TSA certificate's extendedKeyUsage: {e}")),
    }
    let at = tst_info.gen_time.to_date_time().timestamp();
    let validity = tbs.validity();
    let not_before = secs(validity.not_before.to_unix_duration());
    let not_after = secs(validity.not_after.to_unix_duration());
    if at < not_before || at > not_after {
        return Err("TSA certificate was not valid at genTime".into());
    }
    Ok(())
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Most links allowed between the TSA certificate and an anchor.
const MAX_CHAIN_DEPTH: usize = 8;

/// Walks from `leaf` to a trust anchor through `pool`, checking every signature on the way.
fn check_chain(
    leaf: &Certificate,
    pool: &[Certificate],
    anchors: &[Certificate],
) -> Result<(), String> {
    if anchors.is_empty() {
        return Err("no trust anchors configured".into());
    }
    let mut current = leaf.clone();
    for _ in 0..MAX_CHAIN_DEPTH {
        if anchors.contains(&current) {
            return Ok(());
        }
        let issuer_name = current.tbs_certificate().issuer().clone();
        let signed_by = |issuer: &Certificate| {
            issuer.tbs_certificate().subject() == &issuer_name
                && verify_certificate_signature(&current, issuer).is_ok()
        };
        if anchors.iter().any(signed_by) {
            return Ok(());
        }
        let next = pool
            .iter()
            .filter(|c| *c != &current && is_ca(c))
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

pub(crate) fn is_ca(certificate: &Certificate) -> bool {
    matches!(
        certificate
            .tbs_certificate()
            .get_extension::<BasicConstraints>(),
        Ok(Some((_, BasicConstraints { ca: true, .. })))
    )
}

// ---------------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------------

/// Settings of a [`TsaClient`]; [`TsaClientSettings::new`] fills in the defaults.
#[derive(Clone)]
pub struct TsaClientSettings {
    /// TSA URLs, tried in this order. A TSA that wants a login takes it in its URL
    /// (`https://user:password@tsa.example/`): reqwest sends it as HTTP Basic authentication,
    /// and the client shows the URL without it (`shown_url`) in its errors, logs and `Debug`.
    pub urls: Vec<String>,
    /// Certificates the TSA certificate must chain to.
    pub trust_anchors: Vec<Certificate>,
    /// If set, tokens with any other policy are refused (and the policy is requested).
    pub policy: Option<ObjectIdentifier>,
    /// Attempts per URL for transport failures and HTTP 5xx (at least 1).
    pub attempts_per_url: u32,
    /// Pause before the second attempt; doubled for each further one.
    pub backoff: Duration,
    /// Whole-request timeout (connect, send, read).
    pub timeout: Duration,
}

impl fmt::Debug for TsaClientSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<String> = self.urls.iter().map(|u| shown_url(u)).collect();
        f.debug_struct("TsaClientSettings")
            .field("urls", &urls)
            .field("trust_anchors", &self.trust_anchors.len())
            .field("policy", &self.policy)
            .field("attempts_per_url", &self.attempts_per_url)
            .field("backoff", &self.backoff)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A TSA URL as errors and logs show it: without a login (`user:password@`), which is a
/// secret. Anything that is not a URL with a host is shown only if it has no `@`.
pub fn shown_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.has_host() => {
            // Only URLs without a host refuse these.
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        _ if !url.contains('@') => url.to_owned(),
        _ => "(an unreadable TSA URL)".to_owned(),
    }
}

/// The certificates of a PEM file (trust anchors for TSA certificates, for instance).
pub fn certificates_from_pem(pem: &[u8]) -> Result<Vec<Certificate>, TimestampError> {
    Certificate::load_pem_chain(pem)
        .map_err(|e| TimestampError::Config(format!("reading PEM certificates: {e}")))
}

impl TsaClientSettings {
    pub fn new(urls: Vec<String>, trust_anchors: Vec<Certificate>) -> Self {
        Self {
            urls,
            trust_anchors,
            policy: None,
            attempts_per_url: 2,
            backoff: Duration::from_millis(200),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Fetches and checks RFC 3161 tokens over HTTP (`application/timestamp-query`).
pub struct TsaClient {
    settings: TsaClientSettings,
    http: reqwest::blocking::Client,
}

impl fmt::Debug for TsaClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TsaClient")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Replies are a few KiB; anything much larger is not a time-stamp reply.
const MAX_REPLY_BYTES: u64 = 256 * 1024;

/// Why one attempt failed, and whether trying the same URL again may help.
struct AttemptError {
    reason: String,
    retry: bool,
}

impl TsaClient {
    pub fn new(settings: TsaClientSettings) -> Result<Self, TimestampError> {
        if settings.urls.is_empty() {
            return Err(TimestampError::Config("no TSA URL".into()));
        }
        if settings.trust_anchors.is_empty() {
            return Err(TimestampError::Config(
                "no trust anchor for TSA certificates".into(),
            ));
        }
        let http = reqwest::blocking::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .build()
            .map_err(|e| TimestampError::Config(format!("HTTP client: {e}")))?;
        Ok(Self { settings, http })
    }

    fn attempt(&self, url: &str, digest: &[u8; 32]) -> Result<Vec<u8>, AttemptError> {
        let nonce = positive_int(&rand::random::<u64>().to_be_bytes());
        let request = TimeStampReq::sha256(digest, Some(nonce.clone()), self.settings.policy)
            .to_der()
            .map_err(|e| AttemptError {
                reason: format!("cannot encode request: {e}"),
                retry: false,
            })?;
        // The reason goes with the URL as shown (`timestamp_from_any`), not reqwest's copy.
        let transport = |e: reqwest::Error| AttemptError {
            reason: format!("request failed: {}", e.without_url()),
            retry: true,
        };
        let response = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/timestamp-query")
            .body(request)
            .send()
            .map_err(transport)?;
        let status = response.status();
        if !status.is_success() {
            return Err(AttemptError {
                reason: format!("HTTP {status}"),
                retry: status.is_server_error(),
            });
        }
        if response
            .content_length()
            .is_some_and(|len| len > MAX_REPLY_BYTES)
        {
            return Err(AttemptError {
                reason: "reply too large".into(),
                retry: false,
            });
        }
        let body = response.bytes().map_err(transport)?;
        if body.len() as u64 > MAX_REPLY_BYTES {
            return Err(AttemptError {
                reason: "reply too large".into(),
                retry: false,
            });
        }
        let expected = TokenExpectations {
            sha256_digest: digest,
            nonce: Some(&nonce),
            policy: self.settings.policy.as_ref(),
            trust_anchors: &self.settings.trust_anchors,
        };
        verify_response(&body, &expected)
            .map(|(token, _)| token)
            .map_err(|e| AttemptError {
                reason: e.to_string(),
                retry: false,
            })
    }
}

impl Timestamper for TsaClient {
    fn timestamp(&self, sha256_digest: &[u8; 32]) -> Result<Vec<u8>, TimestampError> {
        let timer = shomei_telemetry::metrics::TSA_CLIENT_DURATION.start_timer();
        let result = self.timestamp_from_any(sha256_digest);
        match &result {
            Ok(_) => timer.observe_duration(),
            Err(_) => {
                timer.stop_and_discard();
                shomei_telemetry::metrics::TSA_CLIENT_FAILURES.inc();
            }
        }
        result
    }
}

impl TsaClient {
    /// Each URL in turn, each with its attempts, until one gives a token that checks out.
    fn timestamp_from_any(&self, sha256_digest: &[u8; 32]) -> Result<Vec<u8>, TimestampError> {
        let mut reasons = Vec::new();
        for url in &self.settings.urls {
            let mut backoff = self.settings.backoff;
            for attempt in 1..=self.settings.attempts_per_url.max(1) {
                if attempt > 1 {
                    std::thread::sleep(backoff);
                    backoff = backoff.saturating_mul(2);
                }
                match self.attempt(url, sha256_digest) {
                    Ok(token) => return Ok(token),
                    Err(e) => {
                        let shown = shown_url(url);
                        tracing::warn!(tsa.url = %shown, attempt, reason = %e.reason, "time-stamp attempt failed");
                        let give_up = !e.retry;
                        reasons.push(format!("{shown} (attempt {attempt}): {}", e.reason));
                        if give_up {
                            break;
                        }
                    }
                }
            }
        }
        Err(TimestampError::Unavailable(reasons.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn round_trip<T>(value: &T) -> T
    where
        T: Encode + for<'a> Decode<'a> + PartialEq + fmt::Debug,
    {
        let der = value.to_der().unwrap();
        let back = T::from_der(&der).unwrap();
        assert_eq!(&back, value);
        assert_eq!(back.to_der().unwrap(), der);
        back
    }

    fn sample_tst_info() -> TstInfo {
        TstInfo {
            version: 1,
            policy: ObjectIdentifier::new_unwrap("1.3.6.1.4.1.57264.1.1"),
            message_imprint: MessageImprint::sha256(&[7; 32]),
            serial_number: positive_int(&u128::MAX.to_be_bytes()),
            gen_time: GenTime::new(Utc.with_ymd_and_hms(2025, 3, 4, 5, 6, 7).unwrap()),
            accuracy: Some(Accuracy {
                seconds: Some(1),
                millis: Some(500),
                micros: None,
            }),
            ordering: false,
            nonce: Some(positive_int(&[0x80, 0, 0, 0, 0, 0, 0, 1])),
            tsa: None,
            extensions: None,
        }
    }

    #[test]
    fn a_request_round_trips_and_omits_defaults() {
        let mut request = TimeStampReq::sha256(&[1; 32], Some(positive_int(&[0xff; 8])), None);
        round_trip(&request);
        request.cert_req = false;
        request.req_policy = Some(ObjectIdentifier::new_unwrap("1.2.3.4"));
        let der = round_trip(&request).to_der().unwrap();
        // certReq FALSE is the DEFAULT, so DER leaves the BOOLEAN out.
        assert!(!der.windows(3).any(|w| w == [0x01, 0x01, 0x00]));
    }

    #[test]
    fn tst_info_round_trips_with_and_without_fractional_seconds() {
        let mut info = sample_tst_info();
        round_trip(&info);
        info.gen_time = GenTime::new(
            Utc.with_ymd_and_hms(2025, 3, 4, 5, 6, 7).unwrap()
                + chrono::Duration::milliseconds(120),
        );
        info.ordering = true;
        info.tsa = Some(GeneralName::DnsName(
            "tsa.example".to_string().try_into().unwrap(),
        ));
        let der = round_trip(&info).to_der().unwrap();
        assert!(der.windows(18).any(|w| w == b"20250304050607.12Z"));
    }

    #[test]
    fn gen_time_reads_any_precision_and_refuses_garbage() {
        let t = GenTime::parse(b"20240229235959.123456Z")
            .unwrap()
            .to_date_time();
        assert_eq!(t.timestamp_subsec_micros(), 123_456);
        assert!(GenTime::parse(b"20240229235959Z").is_some());
        for bad in [
            &b"20240229235959"[..],
            b"2024022923595Z",
            b"20240229235959.Z",
            b"2024x229235959Z",
        ] {
            assert!(GenTime::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn rejection_status_round_trips_with_its_failure_bits() {
        for failure in FailureInfo::ALL {
            let status = PkiStatusInfo::rejection(failure, "no");
            let back = round_trip(&TimeStampResp {
                status,
                time_stamp_token: None,
            });
            assert_eq!(back.status.failures(), vec![failure]);
            assert!(!back.status.is_granted());
        }
        // badAlg is bit 0: one byte, seven unused bits.
        let der = FailureInfo::BadAlg.to_bit_string().to_der().unwrap();
        assert_eq!(der, [0x03, 0x02, 0x07, 0x80]);
    }

    #[test]
    fn positive_integers_get_a_sign_byte_only_when_needed() {
        assert_eq!(positive_int(&[0, 0, 0x7f]).as_bytes(), [0x7f]);
        assert_eq!(
            positive_int(&[0, 0x80]).to_der().unwrap(),
            [0x02, 0x02, 0x00, 0x80]
        );
        assert_eq!(positive_int(&[0, 0]).to_der().unwrap(), [0x02, 0x01, 0x00]);
    }

    #[test]
    fn only_sha2_imprints_are_supported() {
        let mut imprint = MessageImprint::sha256(&[0; 32]);
        assert_eq!(imprint.supported_digest_len(), Some(32));
        imprint.hash_algorithm.parameters = Some(Any::from(der::asn1::Null));
        assert_eq!(imprint.supported_digest_len(), Some(32));
        imprint.hash_algorithm.oid = ObjectIdentifier::new_unwrap("1.3.14.3.2.26"); // SHA-1
        assert_eq!(imprint.supported_digest_len(), None);
    }

    #[test]
    fn a_tsa_urls_login_is_not_shown() {
        for (url, shown) in [
            ("https://user:pw@tsa.example/tsp", "https://tsa.example/tsp"),
            ("http://user@127.0.0.1:8318/", "http://127.0.0.1:8318/"),
            ("http://127.0.0.1:8318/", "http://127.0.0.1:8318/"),
            ("not a url", "not a url"),
            ("user:pw@tsa.example", "(an unreadable TSA URL)"),
            ("mailto:user@tsa.example", "(an unreadable TSA URL)"),
        ] {
            assert_eq!(shown_url(url), shown, "{url}");
        }
    }

    #[test]
    fn a_client_needs_urls_and_anchors() {
        let err = TsaClient::new(TsaClientSettings::new(vec![], vec![])).unwrap_err();
        assert!(matches!(err, TimestampError::Config(_)), "{err}");
    }
}
