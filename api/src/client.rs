//! Who is at the other end of a request: its address (the peer, or behind trusted proxies the
//! address they report, R-ACC-3), whether the tenant's IP allow-list admits it, and whether it
//! is within its rate limits (per API key and per address).

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use ipnet::IpNet;
use uuid::Uuid;
use warp::http::HeaderMap;
use warp::Filter;

use shomei_config::AccessConfig;

use crate::problem::ApiError;

/// How client addresses are found and how fast clients may call. Built once at start-up.
pub struct Gate {
    trusted_proxies: Vec<IpNet>,
    header: String,
    per_key: DefaultKeyedRateLimiter<Uuid>,
    key_burst: u32,
    per_ip: DefaultKeyedRateLimiter<IpAddr>,
    ip_burst: u32,
}

impl Gate {
    pub fn new(config: &AccessConfig) -> Self {
        let quota = |rate: u32, burst: u32| {
            Quota::per_second(NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN))
                .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN))
        };
        Self {
            trusted_proxies: config.trusted_proxies.clone(),
            header: config.client_ip_header.clone(),
            per_key: DefaultKeyedRateLimiter::keyed(quota(config.key_rate, config.key_burst)),
            key_burst: config.key_burst,
            per_ip: DefaultKeyedRateLimiter::keyed(quota(config.ip_rate, config.ip_burst)),
            ip_burst: config.ip_burst,
        }
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// The client's address: the peer's, unless the peer is a trusted proxy; then the
    /// right-most address in the configured header that is not itself a trusted proxy (what
    /// the first trusted hop saw), so a client cannot choose its address by sending the header.
    pub fn client_addr(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer?.ip();
        if !self.trusted(peer) {
            return Some(peer);
        }
        let reported = headers
            .get_all(self.header.as_str())
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        for hop in reported.iter().rev() {
            match hop.parse::<IpAddr>() {
                Ok(ip) if self.trusted(ip) => continue,
                Ok(ip) => return Some(ip),
                // Garbage from beyond the trusted hops: the last trusted hop is all we know.
                Err(_) => break,
            }
        }
        Some(peer)
    }

    /// `Err(429)` when this API key is over its rate.
    pub fn check_key(&self, key: Uuid) -> Result<(), ApiError> {
        self.per_key
            .check_key(&key)
            .map_err(|not_until| ApiError::RateLimited {
                what: "this API key",
                limit: self.key_burst,
                retry_after_secs: wait_secs(&not_until),
            })
    }

    /// `Err(429)` when this address is over its rate.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), ApiError> {
        self.per_ip
            .check_key(&ip)
            .map_err(|not_until| ApiError::RateLimited {
                what: "this address",
                limit: self.ip_burst,
                retry_after_secs: wait_secs(&not_until),
            })
    }
}

fn wait_secs(not_until: &governor::NotUntil<governor::clock::QuantaInstant>) -> u64 {
    let wait = not_until.wait_time_from(DefaultClock::default().now());
    // Whole seconds, rounded up, at least one: Retry-After counts seconds.
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0).max(u64::from(wait.as_secs() == 0))
}

/// The client's address (see [`Gate::client_addr`]).
pub fn client_addr(
    gate: Arc<Gate>,
) -> impl Filter<Extract = (Option<IpAddr>,), Error = std::convert::Infallible> + Clone {
    crate::server::remote()
        .and(warp::header::headers_cloned())
        .map(move |peer: Option<SocketAddr>, headers: HeaderMap| gate.client_addr(peer, &headers))
}

/// Whether `allowlist` (CIDRs; `None`: no list) admits `ip`. An address that cannot be told
/// (no peer) is not admitted by a list.
pub fn admitted(allowlist: Option<&[String]>, ip: Option<IpAddr>) -> bool {
    let Some(list) = allowlist else {
        return true;
    };
    let Some(ip) = ip else {
        return false;
    };
    // An IPv4 client over an IPv6 socket arrives as ::ffff:a.b.c.d.
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    list.iter()
        .filter_map(|c| shomei_config::parse_cidr(c).ok())
        .any(|net| net.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(trusted: &[&str]) -> Gate {
        let mut config = shomei_config::Config::from_lookup(|name| {
            (name == "SHOMEI_HSM_PIN").then(|| "1".to_owned())
        })
        .unwrap()
        .access;
        config.trusted_proxies = trusted.iter().map(|c| c.parse().unwrap()).collect();
        Gate::new(&config)
    }

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", xff.parse().unwrap());
        h
    }

    #[test]
    fn the_header_counts_only_from_a_trusted_proxy() {
        let peer: SocketAddr = "203.0.113.9:5000".parse().unwrap();
        let untrusted = gate(&[]);
        assert_eq!(
            untrusted.client_addr(Some(peer), &headers("198.51.100.7")),
            Some("203.0.113.9".parse().unwrap())
        );
        let proxy: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        let behind = gate(&["10.0.0.0/8"]);
        // A client that sends its own header gets it put on the left; the proxy appends the
        // address it saw.
        assert_eq!(
            behind.client_addr(Some(proxy), &headers("1.2.3.4, 198.51.100.7, 10.0.0.3")),
            Some("198.51.100.7".parse().unwrap())
        );
        assert_eq!(
            behind.client_addr(Some(proxy), &HeaderMap::new()),
            Some("10.0.0.2".parse().unwrap())
        );
    }

    #[test]
    fn allow_lists_take_ipv4_and_ipv6_cidrs() {
        let list = vec!["192.0.2.0/24".to_owned(), "2001:db8::/32".to_owned()];
        assert!(admitted(None, None));
        assert!(admitted(Some(&list), Some("192.0.2.77".parse().unwrap())));
        assert!(admitted(
            Some(&list),
            Some("::ffff:192.0.2.77".parse().unwrap())
        ));
        assert!(admitted(
            Some(&list),
            Some("2001:db8:1::5".parse().unwrap())
        ));
        assert!(!admitted(
            Some(&list),
            Some("198.51.100.1".parse().unwrap())
        ));
        assert!(!admitted(Some(&list), None));
    }
}
