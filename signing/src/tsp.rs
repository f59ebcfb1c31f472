//! RFC 3161 time-stamps: where a signature's or a document's time-stamp token comes from.
//!
//! (Lead's stub: the trait below is the contract between the PAdES code and the TSA client;
//! the ASN.1 types, the client and token issuance are filled in by the TSA work.)

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
}
