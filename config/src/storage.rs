//! Where document bytes are kept: `SHOMEI_STORAGE_URL` (`s3://bucket/prefix`) selects an
//! S3-compatible bucket, configured by the `SHOMEI_S3_*` variables; without it, the local
//! directory `SHOMEI_STORAGE_DIR`. Credentials are secret and never print; plain HTTP to the
//! bucket is allowed only when asked for and only to a loopback endpoint (a local S3 server).

use std::path::PathBuf;

use secrecy::SecretString;

use crate::{ConfigError, Vars};

/// The object store behind `shomei-storage`.
#[derive(Debug, Clone)]
pub enum StorageConfig {
    /// A local directory (`SHOMEI_STORAGE_DIR`), shared by every process through a volume.
    Local { dir: PathBuf },
    /// An S3-compatible bucket (`SHOMEI_STORAGE_URL=s3://bucket/prefix`).
    S3(S3Config),
}

/// An S3-compatible bucket and how to reach it.
#[derive(Debug, Clone)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix inside the bucket, without leading or trailing `/` (empty: the whole bucket).
    pub prefix: String,
    /// `SHOMEI_S3_ENDPOINT`, e.g. `https://s3.example.net` (none: AWS's own endpoint for the
    /// region).
    pub endpoint: Option<String>,
    /// `SHOMEI_S3_REGION` (default `us-east-1`, which most S3-compatible servers accept).
    pub region: String,
    /// Static keys (`SHOMEI_S3_ACCESS_KEY_ID` with `SHOMEI_S3_SECRET_ACCESS_KEY[_FILE]`). None:
    /// the instance's role credentials (EC2 instance metadata).
    pub credentials: Option<S3Credentials>,
    /// `SHOMEI_S3_VIRTUAL_HOSTED=true`: `https://bucket.host/key` requests (the endpoint then
    /// names the bucket's host). Default: path style, `https://host/bucket/key`.
    pub virtual_hosted: bool,
    /// `SHOMEI_S3_ALLOW_HTTP=true`: plain HTTP to a loopback endpoint (a local test server).
    pub allow_http: bool,
}

/// An access key pair; the secret half never prints.
#[derive(Debug, Clone)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: SecretString,
}

const URL: &str = "SHOMEI_STORAGE_URL";
const ENDPOINT: &str = "SHOMEI_S3_ENDPOINT";
const KEY_ID: &str = "SHOMEI_S3_ACCESS_KEY_ID";
const SECRET: &str = "SHOMEI_S3_SECRET_ACCESS_KEY";
const SECRET_FILE: &str = "SHOMEI_S3_SECRET_ACCESS_KEY_FILE";
const ALLOW_HTTP: &str = "SHOMEI_S3_ALLOW_HTTP";
/// Every S3 setting: one of them without `SHOMEI_STORAGE_URL` is a mistake, not a default.
const S3_VARS: [&str; 7] = [
    ENDPOINT,
    "SHOMEI_S3_REGION",
    KEY_ID,
    SECRET,
    SECRET_FILE,
    "SHOMEI_S3_VIRTUAL_HOSTED",
    ALLOW_HTTP,
];

impl<F: Fn(&str) -> Option<String>> Vars<'_, F> {
    pub(crate) fn storage(&self) -> Result<StorageConfig, ConfigError> {
        let Some(url) = self.get(URL) else {
            if let Some(name) = S3_VARS.into_iter().find(|name| self.get(name).is_some()) {
                return Err(ConfigError::Unpaired {
                    set: name,
                    missing: URL,
                });
            }
            return Ok(StorageConfig::Local {
                dir: self.string("SHOMEI_STORAGE_DIR", "var/storage").into(),
            });
        };
        let invalid = |name: &'static str, value: &str, reason: &str| ConfigError::Invalid {
            name,
            value: value.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = url.trim().strip_prefix("s3://").ok_or_else(|| {
            invalid(
                URL,
                &url,
                "only s3://BUCKET[/PREFIX] is supported; leave it unset to use SHOMEI_STORAGE_DIR",
            )
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(invalid(URL, &url, "no bucket name after s3://"));
        }
        let endpoint = self
            .get(ENDPOINT)
            .map(|e| e.trim().trim_end_matches('/').to_owned());
        let allow_http: bool = self.parsed(ALLOW_HTTP, false)?;
        match (&endpoint, allow_http) {
            (Some(e), _) if !e.starts_with("https://") && !e.starts_with("http://") => {
                return Err(invalid(
                    ENDPOINT,
                    e,
                    "must start with https:// (or http://)",
                ));
            }
            (Some(e), false) if e.starts_with("http://") => {
                return Err(invalid(
                    ENDPOINT,
                    e,
                    "plain HTTP needs SHOMEI_S3_ALLOW_HTTP=true, which only a loopback \
                     endpoint may use",
                ));
            }
            (Some(e), true) if !is_loopback_http(e) => {
                return Err(invalid(
                    ALLOW_HTTP,
                    "true",
                    &format!("plain HTTP is for a loopback endpoint only, not {e}"),
                ));
            }
            (None, true) => {
                return Err(invalid(
                    ALLOW_HTTP,
                    "true",
                    "plain HTTP is for a loopback endpoint only, and SHOMEI_S3_ENDPOINT is not set",
                ));
            }
            _ => {}
        }
        let secret = self.optional_secret(SECRET, SECRET_FILE)?;
        let credentials = match (self.get(KEY_ID), secret) {
            (Some(access_key_id), Some(secret_access_key)) => Some(S3Credentials {
                access_key_id,
                secret_access_key,
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::Unpaired {
                    set: KEY_ID,
                    missing: SECRET,
                })
            }
            (None, Some(_)) => {
                return Err(ConfigError::Unpaired {
                    set: SECRET,
                    missing: KEY_ID,
                })
            }
        };
        Ok(StorageConfig::S3(S3Config {
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
            endpoint,
            region: self.string("SHOMEI_S3_REGION", "us-east-1"),
            credentials,
            virtual_hosted: self.parsed("SHOMEI_S3_VIRTUAL_HOSTED", false)?,
            allow_http,
        }))
    }
}

/// Whether `endpoint` is `http://` to `localhost` or a loopback address (any port).
fn is_loopback_http(endpoint: &str) -> bool {
    let Some(rest) = endpoint.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') {
        return false;
    }
    let host = match authority.strip_prefix('[') {
        // [::1]:9000
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;
    use secrecy::ExposeSecret;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<&str, &str> = vars.iter().copied().collect();
        Config::from_lookup(|k| map.get(k).map(|v| v.to_string()))
    }

    const PIN: (&str, &str) = ("SHOMEI_HSM_PIN", "1");

    fn s3(vars: &[(&str, &str)]) -> Result<S3Config, ConfigError> {
        let mut all = vec![PIN];
        all.extend_from_slice(vars);
        match config(&all)?.storage {
            StorageConfig::S3(s3) => Ok(s3),
            other => panic!("not S3: {other:?}"),
        }
    }

    #[test]
    fn without_a_storage_url_documents_stay_in_the_local_directory() {
        let c = config(&[PIN, ("SHOMEI_STORAGE_DIR", "/srv/shomei")]).unwrap();
        assert!(
            matches!(&c.storage, StorageConfig::Local { dir } if dir == &PathBuf::from("/srv/shomei"))
        );
        let c = config(&[PIN]).unwrap();
        assert!(
            matches!(&c.storage, StorageConfig::Local { dir } if dir == &PathBuf::from("var/storage"))
        );
    }

    #[test]
    fn an_s3_url_selects_the_bucket_and_prefix_with_path_style_over_https() {
        let c = s3(&[
            ("SHOMEI_STORAGE_URL", "s3://contracts/shomei/prod/"),
            ("SHOMEI_S3_ENDPOINT", "https://s3.example.net/"),
            ("SHOMEI_S3_REGION", "ap-northeast-1"),
            ("SHOMEI_S3_ACCESS_KEY_ID", "AKIAEXAMPLE"),
            ("SHOMEI_S3_SECRET_ACCESS_KEY", "wJalr-s3cr3t-4711"),
        ])
        .unwrap();
        assert_eq!(c.bucket, "contracts");
        assert_eq!(c.prefix, "shomei/prod");
        assert_eq!(c.endpoint.as_deref(), Some("https://s3.example.net"));
        assert_eq!(c.region, "ap-northeast-1");
        assert!(!c.virtual_hosted && !c.allow_http);
        let keys = c.credentials.as_ref().unwrap();
        assert_eq!(keys.access_key_id, "AKIAEXAMPLE");
        assert_eq!(keys.secret_access_key.expose_secret(), "wJalr-s3cr3t-4711");
        assert!(!format!("{c:?}").contains("wJalr-s3cr3t-4711"));

        let c = s3(&[("SHOMEI_STORAGE_URL", "s3://contracts")]).unwrap();
        assert_eq!(
            (c.prefix.as_str(), c.endpoint, c.region.as_str()),
            ("", None, "us-east-1")
        );
        assert!(c.credentials.is_none());
    }

    #[test]
    fn the_secret_key_can_come_from_a_file_and_never_prints() {
        let path = std::env::temp_dir().join(format!("shomei-s3-{}", std::process::id()));
        std::fs::write(&path, "from-a-file-s3cr3t\n").unwrap();
        let c = config(&[
            PIN,
            ("SHOMEI_STORAGE_URL", "s3://b"),
            ("SHOMEI_S3_ACCESS_KEY_ID", "id"),
            ("SHOMEI_S3_SECRET_ACCESS_KEY_FILE", path.to_str().unwrap()),
        ])
        .unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(!format!("{c:?}").contains("from-a-file-s3cr3t"));
        let StorageConfig::S3(s3) = c.storage else {
            panic!("not S3")
        };
        let secret = &s3.credentials.unwrap().secret_access_key;
        assert_eq!(secret.expose_secret(), "from-a-file-s3cr3t");
    }

    #[test]
    fn plain_http_is_allowed_only_when_asked_for_and_only_to_loopback() {
        for endpoint in [
            "http://127.0.0.1:9000",
            "http://localhost:9000/",
            "http://[::1]:9000",
        ] {
            let c = s3(&[
                ("SHOMEI_STORAGE_URL", "s3://b"),
                ("SHOMEI_S3_ENDPOINT", endpoint),
                ("SHOMEI_S3_ALLOW_HTTP", "true"),
            ])
            .unwrap();
            assert!(c.allow_http, "{endpoint}");
        }
        let refused = |vars: &[(&str, &str)], name: &str| {
            let mut all = vec![("SHOMEI_STORAGE_URL", "s3://b")];
            all.extend_from_slice(vars);
            let msg = s3(&all).unwrap_err().to_string();
            assert!(msg.starts_with(name), "{vars:?}: {msg}");
        };
        // Not asked for.
        refused(
            &[("SHOMEI_S3_ENDPOINT", "http://127.0.0.1:9000")],
            "SHOMEI_S3_ENDPOINT",
        );
        // Asked for, but not loopback (nor a loopback name with credentials in front).
        for endpoint in [
            "http://10.0.0.5:9000",
            "http://s3.example.net",
            "http://localhost@evil.example",
            "http://127.0.0.1.evil.example",
        ] {
            refused(
                &[
                    ("SHOMEI_S3_ENDPOINT", endpoint),
                    ("SHOMEI_S3_ALLOW_HTTP", "true"),
                ],
                "SHOMEI_S3_ALLOW_HTTP",
            );
        }
        refused(&[("SHOMEI_S3_ALLOW_HTTP", "true")], "SHOMEI_S3_ALLOW_HTTP");
        refused(
            &[("SHOMEI_S3_ENDPOINT", "s3.example.net")],
            "SHOMEI_S3_ENDPOINT",
        );
    }

    #[test]
    fn half_a_key_pair_or_s3_settings_without_a_storage_url_are_refused() {
        for (set, missing) in [
            ("SHOMEI_S3_ACCESS_KEY_ID", "SHOMEI_S3_SECRET_ACCESS_KEY"),
            ("SHOMEI_S3_SECRET_ACCESS_KEY", "SHOMEI_S3_ACCESS_KEY_ID"),
        ] {
            let msg = s3(&[("SHOMEI_STORAGE_URL", "s3://b"), (set, "x")])
                .unwrap_err()
                .to_string();
            assert!(msg.starts_with(set) && msg.contains(missing), "{msg}");
        }
        let msg = config(&[PIN, ("SHOMEI_S3_ENDPOINT", "https://s3.example.net")])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("SHOMEI_STORAGE_URL"), "{msg}");
        for url in ["file:///srv", "s3://", "s3:///prefix", "/srv/shomei"] {
            let msg = s3(&[("SHOMEI_STORAGE_URL", url)]).unwrap_err().to_string();
            assert!(msg.starts_with("SHOMEI_STORAGE_URL"), "{url}: {msg}");
        }
    }
}
