//! A real SMTP server for tests: `fixtures/smtp_server.py` (Debian's python3-aiosmtpd) run as
//! a child process on a loopback port, with optional STARTTLS or implicit TLS (the dev CA's
//! `localhost` certificate), AUTH, and `550` for chosen recipients.
//!
//! What it receives is read back from its spool directory (`target/tmp/smtp/<id>/`, kept for
//! inspection) and parsed with `mailparse`, a MIME parser we did not write, so a test sees what a
//! mail client would: decoded subjects and bodies, not lettre's own view of its output.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use mailparse::{MailAddr, MailHeaderMap};

use crate::{hsm_dir, workspace_root};

/// The interpreter with aiosmtpd installed (scripts/prepare-machine.sh); the `python3` on PATH
/// may be another one.
const PYTHON: &str = "/usr/bin/python3";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SmtpTls {
    /// Plain SMTP, like a local relay.
    #[default]
    None,
    /// STARTTLS required before MAIL (and before AUTH), like a submission server on 587.
    StartTls,
    /// TLS from the first byte, like port 465.
    Implicit,
}

#[derive(Debug, Clone, Default)]
pub struct SmtpOptions {
    pub tls: SmtpTls,
    /// When set, AUTH (PLAIN or LOGIN) with exactly these is required before MAIL.
    pub credentials: Option<(String, String)>,
    /// Recipients whose address contains this are refused with `550 5.1.1`.
    pub reject_recipients_containing: Option<String>,
}

/// The server process; killed on drop.
pub struct SmtpServer {
    /// `None` while stopped ([`SmtpServer::stop`]).
    child: Option<Child>,
    /// Held open: the server exits when it closes, so it dies with the test process too.
    _stdin: Option<ChildStdin>,
    port: u16,
    dir: PathBuf,
    options: SmtpOptions,
    stall_recipients_containing: Option<String>,
}

/// One message as the server received it.
#[derive(Debug, Clone)]
pub struct ReceivedMail {
    /// Envelope recipients (`RCPT TO`); for [`ReceivedMail::parse`], the `To:` addresses.
    pub to: Vec<String>,
    /// Envelope sender (`MAIL FROM`); for [`ReceivedMail::parse`], the `From:` address.
    pub from: String,
    /// The decoded `Subject:` header.
    pub subject: String,
    /// The decoded `From:` and `To:` headers, display names included.
    pub from_header: String,
    pub to_header: String,
    /// The first `text/plain` and `text/html` parts, transfer encoding and charset decoded;
    /// empty when there is none.
    pub text: String,
    pub html: String,
    /// The MIME type of every part, depth first, the message itself first.
    pub content_types: Vec<String>,
    /// Whether the message came over TLS and after AUTH (server side; false for `parse`).
    pub tls: bool,
    pub authenticated: bool,
    /// The message exactly as received.
    pub raw: Vec<u8>,
}

impl SmtpServer {
    /// Starts a server and returns once its port accepts connections.
    pub fn start(options: SmtpOptions) -> SmtpServer {
        Self::start_inner(options, None)
    }

    /// [`SmtpServer::start`], but recipients whose address contains `containing` get no answer
    /// to `RCPT TO` for two minutes: a server that hangs mid-transaction, for time-out tests.
    pub fn start_stalling_recipients(options: SmtpOptions, containing: &str) -> SmtpServer {
        Self::start_inner(options, Some(containing))
    }

    fn start_inner(options: SmtpOptions, stall_recipients_containing: Option<&str>) -> SmtpServer {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let dir = workspace_root().join("target/tmp/smtp").join(&id);
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = SmtpServer {
            child: None,
            _stdin: None,
            port: 0,
            dir,
            options,
            stall_recipients_containing: stall_recipients_containing.map(str::to_owned),
        };
        server.spawn();
        server
    }

    /// Stops the server (SIGKILL): connections are refused until [`SmtpServer::start_again`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self._stdin = None;
    }

    /// Starts the server again on the same port and spool directory (messages number on).
    pub fn start_again(&mut self) {
        if self.child.is_none() {
            self.spawn();
        }
    }

    /// Starts the process on `self.port` (0: any) and waits for its port to accept.
    fn spawn(&mut self) {
        let dir = self.dir.clone();
        let options = &self.options;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("server.log"))
            .unwrap();

        let mut command = Command::new(PYTHON);
        command
            .arg(workspace_root().join("testkit/fixtures/smtp_server.py"))
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log);
        if options.tls != SmtpTls::None {
            let tls = hsm_dir().join("tls");
            command
                .arg(match options.tls {
                    SmtpTls::StartTls => "--starttls",
                    _ => "--implicit-tls",
                })
                .arg("--cert")
                .arg(tls.join("localhost.pem"))
                .arg("--key")
                .arg(tls.join("localhost.key"));
        }
        if let Some((user, password)) = &options.credentials {
            command.args(["--user", user, "--password", password]);
        }
        if let Some(pattern) = &options.reject_recipients_containing {
            command.args(["--reject-rcpt", pattern]);
        }
        if let Some(pattern) = &self.stall_recipients_containing {
            command.args(["--stall-rcpt", pattern]);
        }
        if self.port != 0 {
            command.args(["--port", &self.port.to_string()]);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {PYTHON} smtp_server.py (python3-aiosmtpd): {e}"));
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();

        // The first line is `PORT <n>`, printed once the socket listens. Read it on a thread so
        // a server that hangs fails the test instead of blocking it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "smtp_server.py did not start; see {}",
                    dir.join("server.log").display()
                );
            }
        };
        let port: u16 = match line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
        {
            Some(port) => port,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
                panic!("smtp_server.py failed to start (printed {line:?}):\n{log}");
            }
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "SMTP port {port} never accepted a connection"
            );
            std::thread::sleep(Duration::from_millis(20));
        }

        self.child = Some(child);
        self._stdin = Some(stdin);
        self.port = port;
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where the received messages are written (`<n>.eml` + `<n>.json`) and the server's log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The `SHOMEI_SMTP_URL` for this server: `smtp://` (plain), `smtp://…?tls=required`
    /// (STARTTLS) or `smtps://` (implicit TLS), with the credentials when AUTH is on. The host
    /// is `localhost`, the name on the dev certificate.
    pub fn url(&self) -> String {
        self.url_with_password(self.options.credentials.as_ref().map(|(_, p)| p.as_str()))
    }

    /// [`SmtpServer::url`] with another password (for wrong-password tests); `None` drops the
    /// credentials altogether.
    pub fn url_with_password(&self, password: Option<&str>) -> String {
        let scheme = match self.options.tls {
            SmtpTls::Implicit => "smtps",
            _ => "smtp",
        };
        let userinfo = match (&self.options.credentials, password) {
            (Some((user, _)), Some(password)) => {
                format!("{}:{}@", percent_encode(user), percent_encode(password))
            }
            _ => String::new(),
        };
        let query = match self.options.tls {
            SmtpTls::StartTls => "?tls=required",
            _ => "",
        };
        format!("{scheme}://{userinfo}localhost:{}{query}", self.port)
    }

    /// The PEM to trust for the server's certificate: the dev CA.
    pub fn ca_path(&self) -> PathBuf {
        hsm_dir().join("ca/ca.pem")
    }

    /// Every message received so far, in the order received.
    pub fn messages(&self) -> Vec<ReceivedMail> {
        messages_in(&self.dir)
    }

    /// Waits for a message to `to` whose subject contains `subject_contains`; panics with the
    /// subjects received so far when none comes within `timeout`.
    pub async fn wait_for(
        &self,
        to: &str,
        subject_contains: &str,
        timeout: Duration,
    ) -> ReceivedMail {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if let Some(mail) = messages.iter().find(|m| {
                m.to.iter().any(|t| t.eq_ignore_ascii_case(to))
                    && m.subject.contains(subject_contains)
            }) {
                return mail.clone();
            }
            if Instant::now() >= deadline {
                let seen: Vec<String> = messages
                    .iter()
                    .map(|m| format!("{:?} → {}", m.subject, m.to.join(", ")))
                    .collect();
                panic!(
                    "no mail to {to} with {subject_contains:?} in the subject within {timeout:?}; \
                     received: {seen:#?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every message a server spooled into `dir` ([`SmtpServer::dir`]), in the order received:
/// for a reader that cannot hold the server itself.
pub fn messages_in(dir: &Path) -> Vec<ReceivedMail> {
    let mut numbered: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            if path.extension()? != "eml" {
                return None;
            }
            Some((path.file_stem()?.to_str()?.parse().ok()?, path))
        })
        .collect();
    numbered.sort();
    numbered
        .into_iter()
        .map(|(_, path)| {
            let raw = std::fs::read(&path).unwrap();
            let envelope: serde_json::Value =
                serde_json::from_slice(&std::fs::read(path.with_extension("json")).unwrap())
                    .unwrap();
            let mut mail = ReceivedMail::parse(&raw);
            mail.from = envelope["mail_from"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            mail.to = envelope["rcpt_tos"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect();
            mail.tls = envelope["tls"].as_bool().unwrap_or(false);
            mail.authenticated = envelope["authenticated"].as_bool().unwrap_or(false);
            mail
        })
        .collect()
}

impl ReceivedMail {
    /// Parses a raw RFC 5322 message (e.g. an `.eml` file); envelope fields are taken from the
    /// `From:` and `To:` headers. Panics on a message a MIME parser cannot read.
    pub fn parse(raw: &[u8]) -> ReceivedMail {
        let mail = mailparse::parse_mail(raw).expect("a parseable RFC 5322 message");
        let header = |name: &str| mail.headers.get_first_value(name).unwrap_or_default();
        let addresses = |name: &str| -> Vec<String> {
            let Some(h) = mail.headers.get_first_header(name) else {
                return Vec::new();
            };
            mailparse::addrparse_header(h)
                .unwrap_or_else(|e| panic!("unparseable {name}: header: {e}"))
                .iter()
                .flat_map(|a| match a {
                    MailAddr::Single(s) => vec![s.addr.clone()],
                    MailAddr::Group(g) => g.addrs.iter().map(|s| s.addr.clone()).collect(),
                })
                .collect()
        };
        let mut text = None;
        let mut html = None;
        let mut content_types = Vec::new();
        for part in mail.parts() {
            let mimetype = part.ctype.mimetype.clone();
            let body = || part.get_body().expect("a decodable body");
            match mimetype.as_str() {
                "text/plain" if text.is_none() => text = Some(body()),
                "text/html" if html.is_none() => html = Some(body()),
                _ => {}
            }
            content_types.push(mimetype);
        }
        ReceivedMail {
            to: addresses("To"),
            from: addresses("From").into_iter().next().unwrap_or_default(),
            subject: header("Subject"),
            from_header: header("From"),
            to_header: header("To"),
            text: text.unwrap_or_default(),
            html: html.unwrap_or_default(),
            content_types,
            tls: false,
            authenticated: false,
            raw: raw.to_vec(),
        }
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters, for URL userinfo.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
