//! Exit codes: one per kind of outcome, so that a script can tell "fix the input" from "try
//! again later" from "the job failed" without reading messages. The table is in README.md.

use std::fmt;

use reqwest::StatusCode;

use crate::api::api_error;

pub const OK: u8 = 0;
/// Anything not listed below: the API unreachable, TLS, a local file, an unexpected answer.
pub const OTHER: u8 = 1;
/// Bad arguments or configuration (clap uses 2 for its own usage errors too).
pub const USAGE: u8 = 2;
/// The API refused the input: `400`, `411`, `413`, `422` (not a PDF, a bad field).
pub const REFUSED: u8 = 3;
/// `401` (no or wrong key) or `403` (role, IP allow-list, folder).
pub const AUTH: u8 = 4;
/// `404` or `410`: no such id for this key, or its files were deleted.
pub const NOT_FOUND: u8 = 5;
/// `409` or `423`: not in a state that allows it.
pub const CONFLICT: u8 = 6;
/// `429` or `503`: try again later (the message gives `Retry-After`).
pub const RETRY_LATER: u8 = 7;
/// Another `5xx`.
pub const SERVER: u8 = 8;
/// The job (a signature, an export) failed; the message gives its reason.
pub const JOB_FAILED: u8 = 9;
/// Verification: the document or file is not valid.
pub const NOT_VALID: u8 = 10;
/// `--wait` gave up after `--timeout`; the job goes on.
pub const TIMED_OUT: u8 = 11;

/// A failure that is not an HTTP error but has its own exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// The exit code of an error.
pub fn code_of(error: &anyhow::Error) -> u8 {
    if let Some(failure) = error.chain().find_map(|e| e.downcast_ref::<Failure>()) {
        return failure.code;
    }
    match api_error(error) {
        Some(api) => code_of_status(api.status),
        None => OTHER,
    }
}

fn code_of_status(status: StatusCode) -> u8 {
    match status.as_u16() {
        400 | 411 | 413 | 422 => REFUSED,
        401 | 403 => AUTH,
        404 | 410 => NOT_FOUND,
        409 | 423 => CONFLICT,
        429 | 503 => RETRY_LATER,
        500..=599 => SERVER,
        _ => OTHER,
    }
}
