//! Error types, one per concern.
//!
//! Every error answers [`is_permanent`](SignError::is_permanent): the job layer
//! aborts a job on a permanent error (retrying the same input cannot succeed)
//! and retries it later on a transient one (HSM busy, session lost, device
//! hiccup).

use std::path::PathBuf;

use crate::tsp::TimestampError;

/// Failures talking to the PKCS#11 module or finding key material in it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HsmError {
    #[error("cannot load or initialise PKCS#11 module {path}: {source}")]
    Module {
        path: PathBuf,
        #[source]
        source: cryptoki::error::Error,
    },

    #[error("no token labelled {0:?} is present")]
    TokenNotFound(String),

    /// The PIN was rejected. Deliberately not retried by the pool: repeated
    /// attempts with a wrong PIN would lock the token.
    #[error("login to the token failed: {0}")]
    Login(#[source] cryptoki::error::Error),

    #[error("no HSM session available: {0}")]
    Pool(#[from] r2d2::Error),

    /// The module was initialised again (its device had been lost) while the call waited for
    /// a session: the session it got, or the key handle it was to use, belongs to the
    /// initialisation before. Try again.
    #[error("the HSM module was initialised again during the call")]
    Reinitialised,

    #[error("PKCS#11 {operation} failed: {source}")]
    Pkcs11 {
        operation: &'static str,
        #[source]
        source: cryptoki::error::Error,
    },

    #[error("no private key labelled {0:?} in the token")]
    KeyNotFound(String),

    #[error("no certificate for key {0:?} in the token")]
    CertificateNotFound(String),

    #[error("key {label:?} cannot be used: {reason}")]
    UnsupportedKey { label: String, reason: String },

    #[error("certificate for key {label:?} is not valid DER: {source}")]
    BadCertificate {
        label: String,
        #[source]
        source: der::Error,
    },
}

impl HsmError {
    /// Whether retrying the same request can never succeed.
    ///
    /// Only problems tied to the requested key are permanent; anything about
    /// the module, the token or its sessions may heal (token re-inserted,
    /// HSM restarted, pool drained).
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Self::KeyNotFound(_)
                | Self::CertificateNotFound(_)
                | Self::UnsupportedKey { .. }
                | Self::BadCertificate { .. }
        )
    }
}

/// Why a PDF cannot be accepted for signing. All of these are properties of
/// the document, so all are permanent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PdfError {
    #[error("not a PDF (no %PDF- header)")]
    NotPdf,

    #[error("PDF is truncated or its cross-reference data is damaged")]
    Truncated,

    #[error("PDF is encrypted")]
    Encrypted,

    #[error("PDF has no pages")]
    NoPages,

    #[error("PDF cannot be read: {0}")]
    Unreadable(String),

    #[error("PDF has {pages} pages, more than the limit of {limit} pages")]
    TooManyPages { pages: u64, limit: u32 },

    #[error("PDF has {found} objects, more than the limit of {limit} objects")]
    TooManyObjects { found: u64, limit: u64 },

    /// A decompression bomb, refused without inflating more than the limit.
    #[error(
        "a stream of the PDF ({stream}) decompresses to more than the per-stream limit of {limit} bytes"
    )]
    StreamTooLarge { stream: String, limit: u64 },

    #[error("the streams of the PDF decompress to more than the total limit of {limit} bytes")]
    StreamsTooLarge { limit: u64 },
}

impl PdfError {
    pub fn is_permanent(&self) -> bool {
        true
    }
}

/// Failure of [`sign_pdf`](crate::sign_pdf), [`timestamp_pdf`](crate::timestamp_pdf) and the
/// validation-data helpers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    #[error(transparent)]
    Hsm(#[from] HsmError),

    #[error(transparent)]
    Pdf(#[from] PdfError),

    /// Building the CMS structure failed; a bug or an unusable certificate,
    /// either way not cured by retrying.
    #[error("cannot build CMS signature: {0}")]
    Cms(String),

    /// Writing the incremental revision failed.
    #[error("cannot write signed PDF: {0}")]
    Write(String),

    /// No usable time-stamp: the signature or document time-stamp was not made, because a
    /// B-T or B-LTA request must never fall back to a level without its time-stamp. The TSA
    /// may answer later, so the job is retried.
    #[error("time-stamp failed: {0}")]
    Timestamp(#[from] TimestampError),

    /// The time-stamp token came back but does not fit the request (not a token, or its
    /// message imprint is not the digest asked for). Another attempt asks again.
    #[error("unusable time-stamp token: {0}")]
    BadTimestamp(String),

    /// A signature or time-stamp already in the document cannot be read while collecting
    /// validation data; a property of the document.
    #[error("cannot read embedded signature: {0}")]
    EmbeddedSignature(String),

    /// A CRL could not be fetched (unreachable, unsupported scheme) or is not a DER CRL.
    #[error("cannot fetch CRL from {url}: {reason}")]
    CrlFetch { url: String, reason: String },
}

impl SignError {
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Hsm(e) => e.is_permanent(),
            Self::Pdf(e) => e.is_permanent(),
            Self::Cms(_) | Self::Write(_) | Self::EmbeddedSignature(_) => true,
            // A misconfigured client stays misconfigured; a TSA that is down may come back.
            Self::Timestamp(TimestampError::Config(_)) => true,
            Self::Timestamp(_) | Self::BadTimestamp(_) | Self::CrlFetch { .. } => false,
        }
    }
}
