//! Webhook deliveries per the Standard Webhooks specification (<https://www.standardwebhooks.com/>).
//!
//! This module owns one delivery attempt: signing (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature: v1,<HMAC-SHA256>`), the HTTP POST, the mapping of the answer to an
//! [`Outcome`], and the retry schedule. Persisting attempts and scheduling retries belong to the
//! caller (a job).
//!
//! It must never reach internal hosts on a tenant's behalf (SSRF): targets are checked when
//! registered ([`check_target`]) and again at every connection, by the client's own DNS resolver,
//! so a name that re-resolves to a private address later (DNS rebinding) is refused too. It must
//! never print a secret: [`WebhookSecret`]'s `Debug` is redacted and no error string carries it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, KeyInit as _, Mac as _};
use rand::{Rng as _, RngCore as _};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use secrecy::{ExposeSecret as _, SecretSlice, SecretString};
use sha2::Sha256;

const SECRET_PREFIX: &str = "whsec_";
const SECRET_MIN_BYTES: usize = 24;
const SECRET_MAX_BYTES: usize = 64;
const GENERATED_SECRET_BYTES: usize = 32;
/// How much of a response body is kept for the delivery log.
const EXCERPT_BYTES: usize = 1024;
/// No wait, however long a receiver's Retry-After asks for, goes beyond this.
const MAX_DELAY: Duration = Duration::from_secs(24 * 60 * 60);
const USER_AGENT: &str = concat!("Shomei-Webhooks/", env!("CARGO_PKG_VERSION"));

pub struct WebhookSettings {
    /// Whole-request timeout (connect, send, answer, first KiB of the body). 15 s in production.
    pub timeout: Duration,
    /// Allow targets on loopback/private/link-local addresses (tests and on-prem only).
    pub allow_private: bool,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(15),
            allow_private: false,
        }
    }
}

/// A `whsec_`-prefixed secret: "whsec_" + base64 of 24..64 random bytes.
#[derive(Clone)]
pub struct WebhookSecret {
    text: SecretString,
    key: SecretSlice<u8>,
}

impl WebhookSecret {
    /// A fresh secret of 32 bytes from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut key = vec![0u8; GENERATED_SECRET_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut key);
        let text = format!("{SECRET_PREFIX}{}", BASE64.encode(&key));
        Self {
            text: text.into(),
            key: key.into(),
        }
    }

    /// Parses a `whsec_…` secret. The error never contains the secret.
    pub fn parse(s: &str) -> Result<Self, String> {
        let encoded = s
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or_else(|| format!("webhook secret must start with {SECRET_PREFIX}"))?;
        let key = BASE64
            .decode(encoded)
            .map_err(|_| "webhook secret is not valid base64 after whsec_".to_owned())?;
        if !(SECRET_MIN_BYTES..=SECRET_MAX_BYTES).contains(&key.len()) {
            return Err(format!(
                "webhook secret must decode to {SECRET_MIN_BYTES}..={SECRET_MAX_BYTES} bytes, not {}",
                key.len()
            ));
        }
        Ok(Self {
            text: format!("{SECRET_PREFIX}{encoded}").into(),
            key: key.into(),
        })
    }

    /// The `whsec_…` text, to store or to show the tenant once.
    pub fn expose(&self) -> &str {
        self.text.expose_secret()
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(whsec_[REDACTED])")
    }
}

/// `v1,<base64 HMAC-SHA256(key = base64-decoded part after whsec_, "{msg_id}.{timestamp}.{body}")>`
pub fn signature(secret: &WebhookSecret, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256>>::new_from_slice(secret.key.expose_secret())
        .expect("HMAC accepts keys of any length");
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

/// Why a webhook target URL is not acceptable. The URL's user info is never echoed.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("webhook URL is not a valid absolute URL: {0}")]
    InvalidUrl(String),
    #[error("webhook URL must use http or https, not {0:?}")]
    Scheme(String),
    #[error("webhook URL must not contain a user name or password")]
    UserInfo,
    #[error("webhook URL has no host")]
    NoHost,
    #[error("webhook host {host} does not resolve: {reason}")]
    Unresolvable { host: String, reason: String },
    #[error("webhook host {host} resolves to {addr} ({kind}), which webhooks may not reach")]
    Forbidden {
        host: String,
        addr: IpAddr,
        kind: &'static str,
    },
    #[error("webhooks may not reach {addr} ({kind})")]
    ForbiddenAddress { addr: IpAddr, kind: &'static str },
}

/// Checks a URL a tenant registers: http/https only, no userinfo, host resolves, and (unless
/// allowed) no address that is loopback, private (RFC 1918), link-local, unique-local
/// (fc00::/7), CGNAT 100.64/10, unspecified, multicast, broadcast, documentation, IPv4-mapped
/// forms of those, etc.
pub async fn check_target(url: &str, allow_private: bool) -> Result<(), TargetError> {
    let url = Url::parse(url).map_err(|e| TargetError::InvalidUrl(e.to_string()))?;
    let host = checked_host(&url, allow_private)?;
    let HostKind::Name(name) = host else {
        return Ok(());
    };
    let port = url.port_or_known_default().unwrap_or(80);
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), port))
        .await
        .map_err(|e| TargetError::Unresolvable {
            host: name.clone(),
            reason: e.to_string(),
        })?
        .collect();
    if addrs.is_empty() {
        return Err(TargetError::Unresolvable {
            host: name,
            reason: "no addresses".into(),
        });
    }
    // At registration every address must be acceptable: a name that mixes public and internal
    // addresses is a rebinding setup, not a mistake.
    for addr in addrs {
        if let Some(kind) = forbidden_kind(addr.ip(), allow_private) {
            return Err(TargetError::Forbidden {
                host: name,
                addr: addr.ip(),
                kind,
            });
        }
    }
    Ok(())
}

enum HostKind {
    /// An IP literal, already checked.
    Ip,
    /// A name still to resolve.
    Name(String),
}

/// Scheme, user info and IP-literal checks that need no DNS.
fn checked_host(url: &Url, allow_private: bool) -> Result<HostKind, TargetError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(TargetError::Scheme(url.scheme().to_owned()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(TargetError::UserInfo);
    }
    let ip: IpAddr = match url.host_str() {
        None => return Err(TargetError::NoHost),
        // The URL parser has already normalised IP literals (`0x7f.1` is `127.0.0.1`, IPv6 is
        // bracketed), so a host that parses as an address is one, and no domain does.
        Some(host) => match host.trim_start_matches('[').trim_end_matches(']').parse() {
            Ok(ip) => ip,
            Err(_) => return Ok(HostKind::Name(host.to_owned())),
        },
    };
    match forbidden_kind(ip, allow_private) {
        Some(kind) => Err(TargetError::ForbiddenAddress { addr: ip, kind }),
        None => Ok(HostKind::Ip),
    }
}

/// What kind of non-public address `ip` is, if webhooks may not reach it.
///
/// `allow_private` lets loopback, private, CGNAT, link-local and unique-local through; addresses
/// that are never a host (unspecified, multicast, broadcast, reserved, documentation) stay refused.
fn forbidden_kind(ip: IpAddr, allow_private: bool) -> Option<&'static str> {
    let (kind, private) = match ip {
        IpAddr::V4(v4) => v4_kind(v4)?,
        IpAddr::V6(v6) => v6_kind(v6)?,
    };
    if private && allow_private {
        None
    } else {
        Some(kind)
    }
}

/// `(kind, is_private)`: `is_private` marks what `allow_private` admits.
fn v4_kind(ip: Ipv4Addr) -> Option<(&'static str, bool)> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if ip.is_unspecified() => ("unspecified", false),
        _ if ip.is_broadcast() => ("broadcast", false),
        (0, _, _) => ("\"this network\" (0.0.0.0/8)", false),
        (127, _, _) => ("loopback", true),
        (10, _, _) => ("private (RFC 1918)", true),
        (172, 16..=31, _) => ("private (RFC 1918)", true),
        (192, 168, _) => ("private (RFC 1918)", true),
        (100, 64..=127, _) => ("shared/CGNAT (100.64.0.0/10)", true),
        (169, 254, _) => ("link-local", true),
        (192, 0, 0) => ("IETF protocol assignment (192.0.0.0/24)", false),
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => ("documentation", false),
        (192, 88, 99) => ("6to4 relay anycast", false),
        (198, 18..=19, _) => ("benchmarking (198.18.0.0/15)", false),
        (224..=239, _, _) => ("multicast", false),
        (240..=255, _, _) => ("reserved (240.0.0.0/4)", false),
        _ => return None,
    })
}

fn v6_kind(ip: Ipv6Addr) -> Option<(&'static str, bool)> {
    let seg = ip.segments();
    // Forms that carry an IPv4 address are judged by it.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_kind(v4);
    }
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        // NAT64 well-known prefix 64:ff9b::/96.
        return v4_kind(Ipv4Addr::from(
            (u32::from(seg[6]) << 16) | u32::from(seg[7]),
        ));
    }
    if seg[0] == 0x2002 {
        // 6to4 (deprecated, RFC 7526): refused; an embedded internal IPv4 gets its own name.
        return v4_kind(Ipv4Addr::from(
            (u32::from(seg[1]) << 16) | u32::from(seg[2]),
        ))
        .or(Some(("6to4 (deprecated)", false)));
    }
    Some(match seg {
        _ if ip.is_unspecified() => ("unspecified", false),
        _ if ip.is_loopback() => ("loopback", true),
        // IPv4-compatible ::a.b.c.d (deprecated) and the rest of ::/96.
        [0, 0, 0, 0, 0, 0, _, _] => ("IPv4-compatible (deprecated)", false),
        [0x64, 0xff9b, 1, ..] => ("local-use NAT64 (64:ff9b:1::/48)", true),
        [0x100, 0, 0, 0, ..] => ("discard-only (100::/64)", false),
        [0x2001, 0xdb8, ..] => ("documentation", false),
        [0x2001, 0x0000..=0x01ff, ..] => ("IETF protocol assignment (2001::/23)", false),
        [s, ..] if s & 0xfff0 == 0x3ff0 => ("documentation (3fff::/20)", false),
        [s, ..] if s & 0xfe00 == 0xfc00 => ("unique-local (fc00::/7)", true),
        [s, ..] if s & 0xffc0 == 0xfe80 => ("link-local", true),
        [s, ..] if s & 0xffc0 == 0xfec0 => ("site-local (deprecated)", true),
        [s, ..] if s & 0xff00 == 0xff00 => ("multicast", false),
        _ => return None,
    })
}

/// The client's DNS resolver: drops addresses webhooks may not reach, and fails the connection
/// with [`RefusedAddress`] when none is left.
struct GuardedResolver {
    allow_private: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("webhook host {host} resolves only to addresses webhooks may not reach ({addr}: {kind})")]
struct RefusedAddress {
    host: String,
    addr: IpAddr,
    kind: &'static str,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|addr| match forbidden_kind(addr.ip(), allow_private) {
                    Some(kind) => {
                        refused.get_or_insert((addr.ip(), kind));
                        false
                    }
                    None => true,
                })
                .collect();
            match (allowed.is_empty(), refused) {
                (true, Some((addr, kind))) => {
                    Err(Box::new(RefusedAddress { host, addr, kind }) as _)
                }
                _ => Ok(Box::new(allowed.into_iter()) as Addrs),
            }
        })
    }
}

/// The HTTP client could not be built (TLS back end failed to initialise).
#[derive(Debug, thiserror::Error)]
#[error("building the webhook HTTP client")]
pub struct ClientBuildError(#[source] reqwest::Error);

#[derive(Clone)]
pub struct WebhookSender {
    client: reqwest::Client,
    allow_private: bool,
    timeout: Duration,
}

/// One delivery attempt, as stored in the delivery log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub outcome: Outcome,
    pub status: Option<u16>,
    pub duration: Duration,
    /// The first KiB of the response body (lossy UTF-8).
    pub response_excerpt: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Any 2xx.
    Delivered,
    /// 410: the endpoint must be disabled.
    Gone,
    /// 429 or 503 with a Retry-After header (seconds or HTTP-date).
    RetryAfter(Duration),
    /// Any other status, timeout, connection error.
    Failed,
    /// Target not allowed (private address, bad URL): permanent.
    Refused,
}

impl WebhookSender {
    pub fn new(settings: &WebhookSettings) -> Result<Self, ClientBuildError> {
        let client = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would resolve names itself, past our resolver's checks.
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver {
                allow_private: settings.allow_private,
            }))
            .build()
            .map_err(ClientBuildError)?;
        Ok(Self {
            client,
            allow_private: settings.allow_private,
            timeout: settings.timeout,
        })
    }

    /// One POST: headers `content-type: application/json`, `webhook-id`, `webhook-timestamp`
    /// (unix seconds, now), `webhook-signature`, a `user-agent` naming Shomei. No redirects
    /// followed. The client's DNS resolver refuses disallowed addresses (so DNS rebinding after
    /// registration cannot reach internal hosts); IP-literal URLs are checked before sending.
    pub async fn deliver(
        &self,
        url: &str,
        secret: &WebhookSecret,
        msg_id: &str,
        body: &[u8],
    ) -> Attempt {
        let started = Instant::now();
        let refused = |error: String| Attempt {
            outcome: Outcome::Refused,
            status: None,
            duration: started.elapsed(),
            response_excerpt: None,
            error: Some(error),
        };
        // IP literals never reach the resolver, so they are checked here.
        let url = match Url::parse(url) {
            Ok(url) => url,
            Err(e) => return refused(TargetError::InvalidUrl(e.to_string()).to_string()),
        };
        if let Err(e) = checked_host(&url, self.allow_private) {
            return refused(e.to_string());
        }

        let timestamp = unix_now();
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        match (
            HeaderValue::from_str(msg_id),
            HeaderValue::from_str(&signature(secret, msg_id, timestamp, body)),
        ) {
            (Ok(id), Ok(sig)) => {
                headers.insert("webhook-id", id);
                headers.insert("webhook-signature", sig);
            }
            _ => {
                return Attempt {
                    outcome: Outcome::Failed,
                    status: None,
                    duration: started.elapsed(),
                    response_excerpt: None,
                    error: Some("message id is not a valid header value".into()),
                }
            }
        }
        headers.insert("webhook-timestamp", HeaderValue::from(timestamp));

        let result = self
            .client
            .post(url)
            .headers(headers)
            .body(body.to_vec())
            .send()
            .await;
        let mut response = match result {
            Ok(response) => response,
            Err(e) => return self.transport_failure(e, started),
        };

        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let (excerpt, body_error) = read_excerpt(&mut response).await;
        let outcome = classify(status, retry_after);
        let error = match outcome {
            Outcome::Delivered => None,
            _ if status.is_redirection() => Some(format!(
                "HTTP {status}: redirects are not followed; register the final URL"
            )),
            _ => Some(format!("HTTP {status}")),
        };
        Attempt {
            outcome,
            status: Some(status.as_u16()),
            duration: started.elapsed(),
            response_excerpt: Some(excerpt),
            error: error.or(body_error),
        }
    }

    fn transport_failure(&self, e: reqwest::Error, started: Instant) -> Attempt {
        let refused = find_source::<RefusedAddress>(&e).map(ToString::to_string);
        let (outcome, error) = match refused {
            Some(reason) => (Outcome::Refused, reason),
            None if e.is_timeout() => (
                Outcome::Failed,
                format!("timed out after {:?}: {}", self.timeout, error_chain(&e)),
            ),
            None => (Outcome::Failed, error_chain(&e)),
        };
        Attempt {
            outcome,
            status: None,
            duration: started.elapsed(),
            response_excerpt: None,
            error: Some(error),
        }
    }
}

fn classify(status: StatusCode, retry_after: Option<Duration>) -> Outcome {
    match status.as_u16() {
        200..=299 => Outcome::Delivered,
        410 => Outcome::Gone,
        429 | 503 => retry_after.map_or(Outcome::Failed, Outcome::RetryAfter),
        _ => Outcome::Failed,
    }
}

/// Reads at most [`EXCERPT_BYTES`] of the body; a receiver's long answer is not our problem.
async fn read_excerpt(response: &mut reqwest::Response) -> (String, Option<String>) {
    let mut buf = Vec::new();
    let mut error = None;
    while buf.len() < EXCERPT_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(e) => {
                error = Some(format!("reading the response body: {}", error_chain(&e)));
                break;
            }
        }
    }
    buf.truncate(EXCERPT_BYTES);
    let mut text = String::from_utf8_lossy(&buf).into_owned();
    // Truncation may have split a character; drop the replacement it left at the end.
    if buf.len() == EXCERPT_BYTES && text.ends_with('\u{FFFD}') {
        text.pop();
    }
    (text, error)
}

/// `Retry-After` as delay-seconds or an HTTP-date (RFC 9110 §10.2.3); a date in the past is 0.
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn find_source<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(found) = err.downcast_ref::<T>() {
            return Some(found);
        }
        current = err.source();
    }
    None
}

/// "a: b: c" from an error and its sources, without the URL (it may carry a tenant's token).
fn error_chain(e: &reqwest::Error) -> String {
    let mut out = String::new();
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        let text = match err.downcast_ref::<reqwest::Error>() {
            Some(re) if re.url().is_some() => {
                // reqwest's Display appends " for url (...)"; keep only the kind.
                let full = re.to_string();
                full.split(" for url (")
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            }
            _ => err.to_string(),
        };
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
        current = err.source();
    }
    out
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The standard schedule: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h.
pub const DEFAULT_SCHEDULE: [Duration; 9] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(14 * 3600),
    Duration::from_secs(20 * 3600),
    Duration::from_secs(24 * 3600),
];

/// The delay before the next attempt after `attempts_done` attempts (1 = the first attempt
/// failed), with ±10 % jitter; `None` when the schedule is exhausted. A Retry-After wait is
/// honoured: the delay is at least it (capped at 24 h).
pub fn next_delay(
    schedule: &[Duration],
    attempts_done: u32,
    retry_after: Option<Duration>,
) -> Option<Duration> {
    if attempts_done == 0 {
        // Nothing tried yet: the first attempt goes out at once.
        return Some(Duration::ZERO);
    }
    let base = *schedule.get(usize::try_from(attempts_done - 1).ok()?)?;
    let jittered = base.mul_f64(rand::thread_rng().gen_range(0.9..=1.1));
    let floor = retry_after.map_or(Duration::ZERO, |wait| wait.min(MAX_DELAY));
    Some(jittered.max(floor))
}

/// Parses "5s,5m,30m,2h" (for config: tests use "1s,1s,1s"). Units: ms, s, m, h, d.
pub fn parse_schedule(s: &str) -> Result<Vec<Duration>, String> {
    let mut schedule = Vec::new();
    for item in s.split(',').map(str::trim) {
        if item.is_empty() {
            return Err(format!("empty entry in webhook retry schedule {s:?}"));
        }
        let split = item
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("{item:?} needs a unit (ms, s, m, h or d)"))?;
        let (number, unit) = item.split_at(split);
        let n: u64 = number
            .parse()
            .map_err(|_| format!("{item:?} must start with a whole number"))?;
        let unit_ms: u64 = match unit {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => {
                return Err(format!(
                    "{item:?} has unknown unit {unit:?} (ms, s, m, h or d)"
                ))
            }
        };
        let ms = n
            .checked_mul(unit_ms)
            .ok_or_else(|| format!("{item:?} is too long"))?;
        schedule.push(Duration::from_millis(ms));
    }
    Ok(schedule)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector of the spec authors' Rust library: standard-webhooks/standard-webhooks
    /// `libraries/rust/src/lib.rs`, `test_sign` (the same vector is in its Python and Go tests).
    #[test]
    fn signature_matches_the_standard_webhooks_reference_vector() {
        let secret = WebhookSecret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        assert_eq!(
            signature(
                &secret,
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1649367553,
                br#"{"email":"test@example.com","username":"test_user"}"#,
            ),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn generated_secrets_parse_back_and_never_print() {
        let secret = WebhookSecret::generate();
        assert!(secret.expose().starts_with("whsec_"));
        let again = WebhookSecret::parse(secret.expose()).unwrap();
        assert_eq!(again.expose(), secret.expose());
        assert_eq!(
            signature(&again, "m", 1, b"x"),
            signature(&secret, "m", 1, b"x")
        );
        let debug = format!("{secret:?}");
        assert!(
            !debug.contains(&secret.expose()["whsec_".len()..]),
            "{debug}"
        );
        assert_ne!(WebhookSecret::generate().expose(), secret.expose());
    }

    #[test]
    fn bad_secrets_are_rejected_without_echoing_them() {
        let short = format!("whsec_{}", BASE64.encode([7u8; 16]));
        let long = format!("whsec_{}", BASE64.encode([7u8; 65]));
        let no_prefix = BASE64.encode([7u8; 32]);
        for bad in [
            short.as_str(),
            long.as_str(),
            &no_prefix,
            "whsec_not*base64!",
        ] {
            let err = WebhookSecret::parse(bad).unwrap_err();
            let payload = bad.trim_start_matches("whsec_");
            assert!(!err.contains(payload), "{err}");
        }
        assert!(WebhookSecret::parse(&format!("whsec_{}", BASE64.encode([1u8; 64]))).is_ok());
    }

    #[test]
    fn next_delay_follows_the_schedule_with_ten_percent_jitter() {
        for (i, base) in DEFAULT_SCHEDULE.iter().enumerate() {
            for _ in 0..200 {
                let d = next_delay(&DEFAULT_SCHEDULE, i as u32 + 1, None).unwrap();
                assert!(
                    d >= base.mul_f64(0.9) && d <= base.mul_f64(1.1),
                    "{i}: {d:?}"
                );
            }
        }
        let spread: std::collections::HashSet<_> = (0..50)
            .map(|_| next_delay(&DEFAULT_SCHEDULE, 2, None).unwrap())
            .collect();
        assert!(spread.len() > 1, "no jitter");
    }

    #[test]
    fn next_delay_is_none_once_the_schedule_is_exhausted() {
        assert_eq!(next_delay(&DEFAULT_SCHEDULE, 10, None), None);
        assert_eq!(
            next_delay(&DEFAULT_SCHEDULE, 10, Some(Duration::from_secs(1))),
            None
        );
        assert_eq!(next_delay(&[], 1, None), None);
        assert_eq!(next_delay(&DEFAULT_SCHEDULE, u32::MAX, None), None);
        assert_eq!(next_delay(&DEFAULT_SCHEDULE, 0, None), Some(Duration::ZERO));
    }

    #[test]
    fn next_delay_waits_at_least_retry_after_capped_at_a_day() {
        let d = next_delay(&DEFAULT_SCHEDULE, 1, Some(Duration::from_secs(600))).unwrap();
        assert!(d >= Duration::from_secs(600));
        let d = next_delay(&DEFAULT_SCHEDULE, 1, Some(Duration::from_secs(7 * 86400))).unwrap();
        assert_eq!(d, MAX_DELAY);
        // A short Retry-After does not shorten the schedule.
        let d = next_delay(&DEFAULT_SCHEDULE, 3, Some(Duration::from_secs(1))).unwrap();
        assert!(d >= Duration::from_secs(27 * 60));
    }

    #[test]
    fn parse_schedule_reads_units() {
        assert_eq!(
            parse_schedule("5s,5m,30m,2h").unwrap(),
            vec![
                Duration::from_secs(5),
                Duration::from_secs(300),
                Duration::from_secs(1800),
                Duration::from_secs(7200)
            ]
        );
        assert_eq!(
            parse_schedule(" 1s, 1s ,1s").unwrap(),
            vec![Duration::from_secs(1); 3]
        );
        assert_eq!(
            parse_schedule("250ms,1d").unwrap(),
            vec![Duration::from_millis(250), Duration::from_secs(86400)]
        );
        for bad in [
            "",
            "5",
            "5x",
            "s",
            "1s,,2s",
            "-1s",
            "1.5s",
            "99999999999999999999d",
        ] {
            assert!(parse_schedule(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:37 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[test]
    fn statuses_map_to_outcomes() {
        let s = |c| StatusCode::from_u16(c).unwrap();
        let wait = Some(Duration::from_secs(3));
        assert_eq!(classify(s(200), None), Outcome::Delivered);
        assert_eq!(classify(s(299), None), Outcome::Delivered);
        assert_eq!(classify(s(302), None), Outcome::Failed);
        assert_eq!(classify(s(410), None), Outcome::Gone);
        assert_eq!(
            classify(s(429), wait),
            Outcome::RetryAfter(Duration::from_secs(3))
        );
        assert_eq!(classify(s(429), None), Outcome::Failed);
        assert_eq!(
            classify(s(503), wait),
            Outcome::RetryAfter(Duration::from_secs(3))
        );
        assert_eq!(classify(s(500), wait), Outcome::Failed);
    }

    #[test]
    fn internal_addresses_are_classified() {
        let refused = [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "240.0.0.1",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "198.18.0.1",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "2002:808:808::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "3fff::1",
            "2001::1",
            "100::1",
        ];
        for ip in refused {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(forbidden_kind(ip, false).is_some(), "{ip} allowed");
        }
        let public = [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ];
        for ip in public {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(forbidden_kind(ip, false), None, "{ip}");
        }
        // allow_private admits hosts, not addresses that are never a host.
        for ip in [
            "127.0.0.1",
            "10.0.0.1",
            "::1",
            "fd00::1",
            "169.254.1.1",
            "::ffff:127.0.0.1",
        ] {
            assert_eq!(forbidden_kind(ip.parse().unwrap(), true), None, "{ip}");
        }
        for ip in ["0.0.0.0", "::", "224.0.0.1", "255.255.255.255", "192.0.2.1"] {
            assert!(forbidden_kind(ip.parse().unwrap(), true).is_some(), "{ip}");
        }
    }
}
