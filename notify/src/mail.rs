//! Sending e-mail: one [`Mailer`], built once from [`MailSettings`], shared by every job.
//!
//! With an SMTP URL it delivers through lettre's pooled async SMTP client over rustls (plain
//! for a local relay, STARTTLS, or implicit TLS), trusting the webpki roots plus an optional
//! private CA. Without one it writes each message as an `.eml` file into a directory, for
//! development and for tests that only need to see what would have been sent.
//!
//! Errors say whether trying again can help ([`MailError::is_permanent`]) so the job runner can
//! retry a refused connection but not a refused address. Nothing here — messages, `Debug`,
//! [`Mailer::describe`] — ever shows the SMTP password.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lettre::address::AddressError;
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::AsyncSmtpTransportBuilder;
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};

/// How to send e-mail; read once from the environment by the binaries.
#[derive(Debug, Clone)]
pub struct MailSettings {
    /// smtp://host:port (plain, local relays), smtp://user:pass@host:587?tls=required (STARTTLS),
    /// smtps://user:pass@host:465 (implicit TLS). None: write messages to `mail_dir` instead.
    pub smtp_url: Option<SecretString>,
    /// Extra PEM root certificate(s) to trust for the SMTP server's TLS (a private CA).
    pub smtp_ca: Option<PathBuf>,
    pub mail_dir: PathBuf,
    /// "Shomei <no-reply@shomei.localhost>"
    pub from: String,
    /// Bound on one [`Mailer::send`], connecting and the TLS handshake included, and on each
    /// SMTP command.
    pub timeout: Duration,
}

/// One message to one person; the texts usually come from [`crate::templates::render`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    pub to_name: String,
    pub to_address: String,
    pub subject: String,
    pub text: String,
    pub html: String,
    /// The left-hand side of the Message-ID, to be the same on every send of one message (a
    /// notify job's id): a copy sent again after a crash between the server's acceptance and
    /// the job's record is then recognisable, by a mail client or a receiving system, as the
    /// message it already has. `None`: a random one.
    pub id: Option<uuid::Uuid>,
}

/// Sends [`Email`]s. Cheap to clone: clones share one SMTP connection pool.
#[derive(Clone)]
pub struct Mailer {
    transport: Transport,
    from: Mailbox,
    /// Right-hand side of our Message-IDs: the sender's domain.
    domain: String,
    description: String,
    timeout: Duration,
}

#[derive(Clone)]
enum Transport {
    Smtp(Arc<SmtpPool>),
    File(AsyncFileTransport<Tokio1Executor>, PathBuf),
}

/// lettre's async client bounds only the TCP connect by its timeout, so `send` puts its own
/// around the whole conversation. A send cut off that way hands its connection back to the pool
/// in the middle of a transaction (lettre does not mark it broken), where the next send would
/// read the stale reply; so after a time-out the pool is replaced, and the old one closes its
/// connections once the sends still using it are done.
struct SmtpPool {
    builder: AsyncSmtpTransportBuilder,
    current: Mutex<AsyncSmtpTransport<Tokio1Executor>>,
}

impl SmtpPool {
    fn get(&self) -> AsyncSmtpTransport<Tokio1Executor> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn replace(&self) {
        let fresh = self.builder.clone().build();
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// The SMTP URL cannot be used; the reason never quotes the URL (it holds the password).
    #[error("invalid SMTP URL: {0}")]
    InvalidUrl(String),
    #[error("cannot read the SMTP CA certificate {}", path.display())]
    ReadCa {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot use the SMTP CA certificate {}", path.display())]
    Tls {
        path: PathBuf,
        #[source]
        source: lettre::transport::smtp::Error,
    },
    #[error("invalid sender address {address:?}")]
    InvalidFrom {
        address: String,
        #[source]
        source: AddressError,
    },
    #[error("cannot create the mail directory {}", path.display())]
    MailDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid recipient address {address:?}")]
    InvalidRecipient {
        address: String,
        #[source]
        source: AddressError,
    },
    #[error("cannot build the message")]
    Message(#[source] lettre::error::Error),
    /// The server refused (5xx: permanent, 4xx: transient), or connecting, TLS or the
    /// conversation failed (transient).
    #[error("SMTP delivery via {server} failed")]
    Smtp {
        server: String,
        #[source]
        source: lettre::transport::smtp::Error,
    },
    #[error("SMTP delivery via {server} took longer than {timeout:?}")]
    Timeout { server: String, timeout: Duration },
    #[error("cannot write the message into {}", dir.display())]
    File {
        dir: PathBuf,
        #[source]
        source: lettre::transport::file::Error,
    },
}

impl MailError {
    /// Whether sending the same message again cannot succeed: a bad address, a message that
    /// cannot be built, a `5xx` reply (unknown mailbox, bad credentials, refused relay), or a
    /// configuration error. Everything else — connection, TLS handshake, `4xx`, time-out, a
    /// full disk — may pass on a later try.
    pub fn is_permanent(&self) -> bool {
        match self {
            MailError::Smtp { source, .. } => source.is_permanent(),
            MailError::Timeout { .. } | MailError::File { .. } => false,
            MailError::InvalidUrl(_)
            | MailError::ReadCa { .. }
            | MailError::Tls { .. }
            | MailError::InvalidFrom { .. }
            | MailError::MailDir { .. }
            | MailError::InvalidRecipient { .. }
            | MailError::Message(_) => true,
        }
    }
}

impl Mailer {
    /// Checks the settings and sets up the transport; `mail_dir` is created if missing. With
    /// SMTP this must run inside a Tokio runtime (the pool starts its idle-connection reaper);
    /// no connection is opened until the first send.
    pub fn new(settings: &MailSettings) -> Result<Mailer, MailError> {
        let from: Mailbox = settings
            .from
            .parse()
            .map_err(|source| MailError::InvalidFrom {
                address: settings.from.clone(),
                source,
            })?;
        let domain = from.email.domain().to_owned();
        let (transport, description) = match &settings.smtp_url {
            Some(url) => {
                let smtp = SmtpUrl::parse(url.expose_secret())?;
                let builder = smtp.builder(settings.smtp_ca.as_deref(), settings.timeout)?;
                let pool = SmtpPool {
                    current: Mutex::new(builder.clone().build()),
                    builder,
                };
                (Transport::Smtp(Arc::new(pool)), smtp.describe())
            }
            None => {
                let dir = &settings.mail_dir;
                std::fs::create_dir_all(dir).map_err(|source| MailError::MailDir {
                    path: dir.clone(),
                    source,
                })?;
                (
                    Transport::File(AsyncFileTransport::new(dir), dir.clone()),
                    format!("directory {}", dir.display()),
                )
            }
        };
        Ok(Mailer {
            transport,
            from,
            domain,
            description,
            timeout: settings.timeout,
        })
    }

    /// Sends one message as `multipart/alternative` (text, then HTML).
    pub async fn send(&self, email: &Email) -> Result<(), MailError> {
        let address =
            email
                .to_address
                .trim()
                .parse()
                .map_err(|source| MailError::InvalidRecipient {
                    address: email.to_address.clone(),
                    source,
                })?;
        let name = email.to_name.trim();
        let to = Mailbox::new((!name.is_empty()).then(|| name.to_owned()), address);
        let message = lettre::Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(&email.subject)
            .message_id(Some(format!(
                "<{:032x}@{}>",
                email
                    .id
                    .map_or_else(rand::random::<u128>, |id| id.as_u128()),
                self.domain
            )))
            // RFC 3834: tells vacation responders and the like not to answer.
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("Auto-Submitted"),
                "auto-generated".to_owned(),
            ))
            .multipart(MultiPart::alternative_plain_html(
                email.text.clone(),
                email.html.clone(),
            ))
            .map_err(MailError::Message)?;

        match &self.transport {
            Transport::Smtp(pool) => {
                match tokio::time::timeout(self.timeout, pool.get().send(message)).await {
                    Ok(Ok(_response)) => Ok(()),
                    Ok(Err(source)) => Err(MailError::Smtp {
                        server: self.description.clone(),
                        source,
                    }),
                    Err(_elapsed) => {
                        pool.replace();
                        Err(MailError::Timeout {
                            server: self.description.clone(),
                            timeout: self.timeout,
                        })
                    }
                }
            }
            Transport::File(file, dir) => match file.send(message).await {
                Ok(id) => {
                    tracing::debug!(mail.file = %dir.join(format!("{id}.eml")).display(), "mail written");
                    Ok(())
                }
                Err(source) => Err(MailError::File {
                    dir: dir.clone(),
                    source,
                }),
            },
        }
    }

    /// Where mail goes, for logs: `smtp://mail.example:587 (STARTTLS, AUTH)` or
    /// `directory var/mail`. Never the credentials.
    pub fn describe(&self) -> String {
        self.description.clone()
    }
}

impl fmt::Debug for Mailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailer")
            .field("transport", &self.description)
            .field("from", &self.from.to_string())
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Security {
    Plain,
    StartTls,
    Opportunistic,
    Implicit,
}

/// A parsed `SHOMEI_SMTP_URL`. The same syntax as lettre's `from_url`, parsed here so that a
/// private CA can be added and so that errors and descriptions never echo the URL.
struct SmtpUrl {
    host: String,
    port: u16,
    security: Security,
    credentials: Option<(String, SecretString)>,
}

impl SmtpUrl {
    fn parse(raw: &str) -> Result<SmtpUrl, MailError> {
        // url::ParseError's message does not include the input.
        let url = url::Url::parse(raw).map_err(|e| MailError::InvalidUrl(e.to_string()))?;
        let tls = url
            .query_pairs()
            .find(|(k, _)| k == "tls")
            .map(|(_, v)| v.into_owned());
        let security = match (url.scheme(), tls.as_deref()) {
            ("smtp", None) => Security::Plain,
            ("smtp", Some("required")) => Security::StartTls,
            ("smtp", Some("opportunistic")) => Security::Opportunistic,
            ("smtps", None | Some("wrapper")) => Security::Implicit,
            ("smtp" | "smtps", Some(other)) => {
                return Err(MailError::InvalidUrl(format!(
                    "unknown tls={other:?} (expected required or opportunistic)"
                )))
            }
            (scheme, _) => {
                return Err(MailError::InvalidUrl(format!(
                    "unknown scheme {scheme:?} (expected smtp or smtps)"
                )))
            }
        };
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| MailError::InvalidUrl("no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = url.port().unwrap_or(match security {
            Security::Plain => 25,
            Security::StartTls | Security::Opportunistic => 587,
            Security::Implicit => 465,
        });
        let decode = |s: &str, what: &str| {
            percent_decode(s).ok_or_else(|| MailError::InvalidUrl(format!("{what} is not UTF-8")))
        };
        let credentials = match (url.username(), url.password()) {
            ("", None) => None,
            ("", Some(_)) => return Err(MailError::InvalidUrl("password without user".into())),
            (_, None) => return Err(MailError::InvalidUrl("user without password".into())),
            (user, Some(password)) => Some((
                decode(user, "user")?,
                SecretString::from(decode(password, "password")?),
            )),
        };
        Ok(SmtpUrl {
            host,
            port,
            security,
            credentials,
        })
    }

    fn builder(
        &self,
        ca: Option<&Path>,
        timeout: Duration,
    ) -> Result<AsyncSmtpTransportBuilder, MailError> {
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&self.host)
            .port(self.port)
            .timeout(Some(timeout));
        if self.security != Security::Plain {
            let mut tls = TlsParameters::builder(self.host.clone());
            if let Some(path) = ca {
                let pem = std::fs::read(path).map_err(|source| MailError::ReadCa {
                    path: path.to_owned(),
                    source,
                })?;
                let tls_error = |source| MailError::Tls {
                    path: path.to_owned(),
                    source,
                };
                tls = tls.add_root_certificate(Certificate::from_pem(&pem).map_err(tls_error)?);
            }
            let parameters = tls.build_rustls().map_err(|source| MailError::Tls {
                path: ca.map(Path::to_owned).unwrap_or_default(),
                source,
            })?;
            builder = builder.tls(match self.security {
                Security::StartTls => Tls::Required(parameters),
                Security::Opportunistic => Tls::Opportunistic(parameters),
                _ => Tls::Wrapper(parameters),
            });
        }
        if let Some((user, password)) = &self.credentials {
            builder = builder.credentials(Credentials::new(
                user.clone(),
                password.expose_secret().to_owned(),
            ));
        }
        Ok(builder)
    }

    fn describe(&self) -> String {
        let (scheme, security) = match self.security {
            Security::Plain => ("smtp", "plain"),
            Security::StartTls => ("smtp", "STARTTLS"),
            Security::Opportunistic => ("smtp", "STARTTLS if offered"),
            Security::Implicit => ("smtps", "TLS"),
        };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let auth = if self.credentials.is_some() {
            ", AUTH"
        } else {
            ""
        };
        format!("{scheme}://{host}:{} ({security}{auth})", self.port)
    }
}

/// Decodes `%XX` escapes (URL userinfo); `None` if the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((high * 16 + low) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> MailSettings {
        MailSettings {
            smtp_url: Some(SecretString::from(url.to_owned())),
            smtp_ca: None,
            mail_dir: PathBuf::from("unused"),
            from: "Shomei <no-reply@shomei.localhost>".into(),
            timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn describes_each_kind_of_url_without_credentials() {
        for (url, expected) in [
            ("smtp://localhost:2525", "smtp://localhost:2525 (plain)"),
            (
                "smtp://user:s3cret@mail.example?tls=required",
                "smtp://mail.example:587 (STARTTLS, AUTH)",
            ),
            (
                "smtps://user:s3cret@mail.example",
                "smtps://mail.example:465 (TLS, AUTH)",
            ),
        ] {
            let mailer = Mailer::new(&settings(url)).unwrap();
            assert_eq!(mailer.describe(), expected);
            assert!(!format!("{mailer:?}").contains("s3cret"));
        }
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_them() {
        for url in [
            "http://user:s3cret@mail.example",
            "smtp://user:s3cret@mail.example?tls=sometimes",
            "smtp://user:s3cret@",
            "not a url s3cret",
            "smtp://:s3cret@mail.example",
        ] {
            let err = SmtpUrl::parse(url).err().unwrap();
            assert!(err.is_permanent());
            assert!(!err.to_string().contains("s3cret"), "{err}");
            assert!(!format!("{err:?}").contains("s3cret"), "{err:?}");
        }
    }

    #[test]
    fn credentials_are_percent_decoded() {
        let url = SmtpUrl::parse("smtp://a%40b.example:p%25ss%3Aw@h:25").unwrap();
        let (user, password) = url.credentials.unwrap();
        assert_eq!(user, "a@b.example");
        assert_eq!(password.expose_secret(), "p%ss:w");
    }

    #[test]
    fn a_bad_sender_is_a_config_error() {
        let mut s = settings("smtp://localhost");
        s.from = "not an address".into();
        assert!(matches!(
            Mailer::new(&s),
            Err(MailError::InvalidFrom { .. })
        ));
    }
}
