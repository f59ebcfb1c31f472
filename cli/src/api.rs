//! The HTTP side: one client, the API key attached to API requests only, and every answer that
//! is not a success turned into an [`ApiError`] carrying the RFC 9457 problem.
//!
//! The key never leaves this module except in the `Authorization` header (marked sensitive),
//! and never goes to an export part's signed link, which needs no key.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use reqwest::header::{HeaderMap, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// The API, as configured on the command line and in the environment.
pub struct Api {
    http: reqwest::Client,
    /// Without a trailing slash; may carry a path prefix (an API behind a proxy).
    base: String,
    key: SecretString,
}

impl Api {
    pub fn new(base: &str, key: SecretString, ca_cert: Option<&Path>) -> anyhow::Result<Self> {
        let parsed = reqwest::Url::parse(base)
            .with_context(|| format!("--api / SHOMEI_API_URL: {base:?} is not a URL"))?;
        anyhow::ensure!(
            matches!(parsed.scheme(), "http" | "https"),
            "--api / SHOMEI_API_URL: {base:?} is neither http:// nor https://"
        );
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("shomei-cli/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(15));
        if let Some(path) = ca_cert {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read --ca-cert {}", path.display()))?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("--ca-cert {}: not PEM certificates", path.display()))?;
            anyhow::ensure!(
                !certificates.is_empty(),
                "--ca-cert {}: no certificate in the file",
                path.display()
            );
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        Ok(Self {
            http: builder.build().context("cannot set up the HTTP client")?,
            base: base.trim_end_matches('/').to_owned(),
            key,
        })
    }

    /// A request to an API route (`path` from `/v1/…`), with the key.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(self.key.expose_secret())
    }

    pub fn get(&self, path: &str) -> RequestBuilder {
        self.request(Method::GET, path)
    }

    pub fn post(&self, path: &str) -> RequestBuilder {
        self.request(Method::POST, path)
    }

    /// A GET of a link the API handed out (an export part), without the key: the link is
    /// signed, and it may point at another host (`SHOMEI_PUBLIC_URL`).
    pub fn get_link(&self, link: &str) -> anyhow::Result<RequestBuilder> {
        let url = if link.starts_with('/') {
            format!("{}{link}", self.base)
        } else {
            link.to_owned()
        };
        let url = reqwest::Url::parse(&url).with_context(|| format!("bad link {link:?}"))?;
        Ok(self.http.get(url))
    }

    /// Sends the request; a non-2xx answer becomes an [`ApiError`].
    pub async fn send(&self, request: RequestBuilder) -> anyhow::Result<Response> {
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the API at {}", self.base))?;
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(ApiError::from_response(response).await.into())
        }
    }

    /// Sends the request and reads a JSON answer.
    pub async fn json<T: DeserializeOwned>(&self, request: RequestBuilder) -> anyhow::Result<T> {
        let response = self.send(request).await?;
        let url = response.url().path().to_owned();
        response
            .json()
            .await
            .with_context(|| format!("unexpected answer from {url}"))
    }
}

/// RFC 9457 problem details, as the API writes them.
#[derive(Debug, Clone, Deserialize)]
pub struct Problem {
    pub title: Option<String>,
    pub detail: Option<String>,
}

/// An answer that was not a success.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// The problem, when the body was one (a proxy in between may answer otherwise).
    pub problem: Option<Problem>,
    /// The start of a body that was not a problem.
    pub excerpt: String,
    /// `Retry-After` in seconds (`429`, `503`).
    pub retry_after: Option<u64>,
}

impl ApiError {
    async fn from_response(response: Response) -> Self {
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let is_problem = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/problem+json"));
        let body = response.bytes().await.unwrap_or_default();
        let problem = if is_problem {
            serde_json::from_slice::<Problem>(&body).ok()
        } else {
            None
        };
        let excerpt = if problem.is_some() {
            String::new()
        } else {
            let text = String::from_utf8_lossy(&body);
            text.trim().chars().take(300).collect()
        };
        Self {
            status,
            problem,
            excerpt,
            retry_after,
        }
    }

    /// Waiting and asking again may help (`429`, `503`).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        )
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reason = self.status.canonical_reason().unwrap_or("error");
        let title = self
            .problem
            .as_ref()
            .and_then(|p| p.title.as_deref())
            .unwrap_or(reason);
        write!(f, "{title} ({})", self.status.as_u16())?;
        match self.problem.as_ref().and_then(|p| p.detail.as_deref()) {
            Some(detail) if !detail.is_empty() => write!(f, ": {detail}")?,
            _ if !self.excerpt.is_empty() => write!(f, ": {}", self.excerpt)?,
            _ => {}
        }
        if let Some(secs) = self.retry_after {
            write!(f, "; Retry-After: {secs} s")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

/// `Retry-After` as seconds; an HTTP date is not used by the API and is ignored.
fn retry_after(headers: &HeaderMap) -> Option<u64> {
    headers.get(RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()
}

/// The API error in an error's chain, if any.
pub fn api_error(error: &anyhow::Error) -> Option<&ApiError> {
    error.chain().find_map(|e| e.downcast_ref::<ApiError>())
}
