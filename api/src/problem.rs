//! The API's one error type and its one mapping to HTTP: RFC 9457 `application/problem+json`.
//! 4xx problems describe what the caller got wrong; 5xx problems are logged here, once, with
//! their cause chain, and the caller sees only a generic detail.

use serde::Serialize;
use warp::http::{header, StatusCode};
use warp::reply::Response;
use warp::{Rejection, Reply};

use shomei_jobs::group_commit::GroupFailure;
use shomei_jobs::SubmitError;
use shomei_schema::DbError;
use shomei_signing::PdfError;
use shomei_vault::VaultError;

const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("a valid API key is required (Authorization: Bearer <key>)")]
    Unauthorized,
    #[error("no {0} with this id")]
    NotFound(&'static str),
    #[error("the body is not a readable PDF: {0}")]
    InvalidPdf(#[from] PdfError),
    #[error("the body is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the request needs a Content-Length header")]
    LengthRequired,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    Locked(String),
    #[error("{0}")]
    TooManyAttempts(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("this Idempotency-Key was already used with a different request body")]
    IdempotencyKeyReused,
    #[error("{what}: more than {limit} requests in a burst; retry after {retry_after_secs} s")]
    RateLimited {
        /// `this API key` or `this address`.
        what: &'static str,
        limit: u32,
        retry_after_secs: u64,
    },
    #[error("{0} is unavailable; try again shortly")]
    Unavailable(&'static str),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl warp::reject::Reject for ApiError {}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        match e {
            // The pool cannot connect, or the connection died under the query (PostgreSQL
            // restarting or cut off): an outage, not a bug of ours.
            e if e.is_unavailable() => ApiError::Unavailable("the database"),
            DbError::Query(diesel::result::Error::DatabaseError(_, ref info))
                if refuses_nul(info.message()) =>
            {
                ApiError::BadRequest(
                    "a text value contains the NUL character (U+0000), which cannot be stored"
                        .into(),
                )
            }
            other => ApiError::Internal(other.into()),
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Db(db) => db.into(),
            SubmitError::Group(GroupFailure::Unavailable(_)) => {
                ApiError::Unavailable("the database")
            }
            other => ApiError::Internal(other.into()),
        }
    }
}

/// PostgreSQL refuses U+0000 in `text` (SQLSTATE 22021) and in `jsonb` (22P05), whichever
/// field of a request carried it there: the caller's mistake, not ours.
fn refuses_nul(message: &str) -> bool {
    message.contains("invalid byte sequence for encoding \"UTF8\": 0x00")
        || message.contains("unsupported Unicode escape sequence")
}

impl From<VaultError> for ApiError {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::Db(db) => db.into(),
            VaultError::Hsm(hsm) if !hsm.is_permanent() => ApiError::Unavailable("the HSM"),
            VaultError::Destroyed(_) => {
                ApiError::Gone("this data was deleted with its encryption key".into())
            }
            other => ApiError::Internal(other.into()),
        }
    }
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: String,
}

impl ApiError {
    fn status_and_slug(&self) -> (StatusCode, &'static str, &'static str) {
        use ApiError::*;
        match self {
            Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            InvalidPdf(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-pdf",
                "Invalid PDF",
            ),
            TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too-large", "Body too large"),
            LengthRequired => (
                StatusCode::LENGTH_REQUIRED,
                "length-required",
                "Length required",
            ),
            BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request", "Bad request"),
            Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            Conflict(_) => (StatusCode::CONFLICT, "conflict", "Conflict"),
            Gone(_) => (StatusCode::GONE, "gone", "Gone"),
            Locked(_) => (StatusCode::LOCKED, "locked", "Locked"),
            TooManyAttempts(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-attempts",
                "Too many attempts",
            ),
            Unprocessable(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "unprocessable",
                "Unprocessable request",
            ),
            IdempotencyKeyReused => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency key reused",
            ),
            RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
            ),
            Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            ),
            Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
        }
    }

    pub fn to_response(&self) -> Response {
        let (status, slug, title) = self.status_and_slug();
        let detail = match self {
            ApiError::Internal(e) => {
                tracing::error!(error = ?e, "request failed");
                "an internal error occurred; it has been logged".to_owned()
            }
            other => other.to_string(),
        };
        problem(status, slug, title, detail, self)
    }
}

fn problem(
    status: StatusCode,
    slug: &str,
    title: &str,
    detail: String,
    error: &ApiError,
) -> Response {
    let body = Problem {
        kind: format!("https://shomei.dev/problems/{slug}"),
        title,
        status: status.as_u16(),
        detail,
    };
    let mut response = warp::reply::with_status(warp::reply::json(&body), status).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(PROBLEM_JSON),
    );
    match error {
        ApiError::Unauthorized => {
            headers.insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        ApiError::Unavailable(_) => {
            headers.insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        }
        ApiError::RateLimited {
            limit,
            retry_after_secs,
            ..
        } => {
            // RFC 9110 Retry-After, and the RateLimit fields of the IETF httpapi draft
            // (limit, what remains, seconds until it resets).
            for (name, value) in [
                ("retry-after", retry_after_secs.to_string()),
                ("ratelimit-limit", limit.to_string()),
                ("ratelimit-remaining", "0".to_owned()),
                ("ratelimit-reset", retry_after_secs.to_string()),
            ] {
                if let Ok(value) = header::HeaderValue::from_str(&value) {
                    headers.insert(name, value);
                }
            }
        }
        _ => {}
    }
    response
}

/// Turns every rejection, ours and warp's own, into problem+json.
pub async fn recover(rejection: Rejection) -> Result<Response, Rejection> {
    use warp::reject::*;
    if let Some(e) = rejection.find::<ApiError>() {
        return Ok(e.to_response());
    }
    let error = if rejection.is_not_found() {
        ApiError::NotFound("resource")
    } else if rejection.find::<LengthRequired>().is_some() {
        ApiError::LengthRequired
    } else if let Some(e) = rejection.find::<warp::filters::body::BodyDeserializeError>() {
        ApiError::BadRequest(format!("invalid JSON body: {e}"))
    } else if let Some(e) = rejection.find::<InvalidQuery>() {
        ApiError::BadRequest(format!("invalid query string: {e}"))
    } else if let Some(e) = rejection.find::<InvalidHeader>() {
        ApiError::BadRequest(e.to_string())
    } else if rejection.find::<PayloadTooLarge>().is_some() {
        // A JSON route's `content_length_limit`; uploads answer `TooLarge` with their limit.
        return Ok(problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            "Body too large",
            "the body is larger than this route accepts".into(),
            &ApiError::LengthRequired,
        ));
    } else if rejection.find::<UnsupportedMediaType>().is_some() {
        ApiError::BadRequest("the body must be JSON (Content-Type: application/json)".into())
    } else if rejection.find::<MethodNotAllowed>().is_some() {
        return Ok(problem(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            "this method is not allowed on this path".into(),
            &ApiError::NotFound("method"),
        ));
    } else {
        ApiError::Internal(anyhow::anyhow!("unhandled rejection: {rejection:?}"))
    };
    Ok(error.to_response())
}
