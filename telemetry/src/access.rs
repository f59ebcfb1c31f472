//! The HTTP access log of the API and the TSA: one line per request once it is answered
//! ([`line()`], through `warp::log::custom`), and the span that the handler's own lines carry
//! ([`request_span`], through `warp::trace`). Both show the path with any signing link's
//! token masked ([`loggable_path`]): the token is the signer's credential.
//!
//! warp's own request tracing (`warp::trace::request`) is not used: it logs two lines per
//! request, and its span holds the raw path and the `Referer` header, where a signing link's
//! token would be. [`crate::init`] turns its lines off.

use std::borrow::Cow;

/// The target of the access log's lines (`RUST_LOG=info,access=off` silences them).
pub const TARGET: &str = "access";

/// `path` as a log may show it: a segment of 64 hex digits (a signing link's token) becomes
/// `{token}`; ids stay, they are what an operator looks for.
pub fn loggable_path(path: &str) -> Cow<'_, str> {
    if !path.split('/').any(is_token) {
        return Cow::Borrowed(path);
    }
    let masked: Vec<&str> = path
        .split('/')
        .map(|segment| {
            if is_token(segment) {
                "{token}"
            } else {
                segment
            }
        })
        .collect();
    Cow::Owned(masked.join("/"))
}

/// Whether a path segment is a signing link's token (64 hex digits).
pub(crate) fn is_token(segment: &str) -> bool {
    segment.len() == 64 && segment.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The span of one request: its method and [`loggable_path`].
pub fn request_span(info: warp::trace::Info<'_>) -> tracing::Span {
    tracing::info_span!(
        "request",
        method = %info.method(),
        path = %loggable_path(info.path()),
    )
}

/// The access log's line for an answered request: method, [`loggable_path`], status and
/// milliseconds taken; at `warn` for a server error, else at `info`.
pub fn line(info: &warp::log::Info<'_>) {
    let method = info.method();
    let path = loggable_path(info.path());
    let status = info.status().as_u16();
    let ms = format_args!("{:.1}", info.elapsed().as_secs_f64() * 1e3);
    if info.status().is_server_error() {
        tracing::warn!(target: TARGET, %method, %path, status, %ms, "request failed");
    } else {
        tracing::info!(target: TARGET, %method, %path, status, %ms, "request");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signing_links_token_is_masked_and_ids_are_kept() {
        let token = "0123456789abcdef".repeat(4);
        assert_eq!(
            loggable_path(&format!("/v1/signing/{token}/pdf")),
            "/v1/signing/{token}/pdf"
        );
        assert_eq!(
            loggable_path(&format!("/v1/signing/{token}")),
            "/v1/signing/{token}"
        );
        let id = "/v1/documents/01a22093-be87-7174-9375-dd339f2e0132/sign";
        assert!(matches!(loggable_path(id), Cow::Borrowed(p) if p == id));
        // 63 or 65 hex digits are not a token.
        let near = format!("/v1/x/{}", &token[1..]);
        assert_eq!(loggable_path(&near), near);
        let long = format!("/v1/x/{token}0");
        assert_eq!(loggable_path(&long), long);
    }
}
