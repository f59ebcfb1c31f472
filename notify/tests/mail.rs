//! `Mailer` against a real SMTP server (aiosmtpd, `shomei_testkit::smtp`): plain, STARTTLS +
//! AUTH and implicit TLS with the dev CA, the ways delivery fails and how they are classified,
//! and what arrives, read back with a MIME parser.

use std::error::Error as _;
use std::path::PathBuf;
use std::time::Duration;

use chrono::TimeZone;
use secrecy::SecretString;
use shomei_notify::mail::{Email, MailError, MailSettings, Mailer};
use shomei_notify::templates::{render, Locale, Message};
use shomei_testkit::smtp::{ReceivedMail, SmtpOptions, SmtpServer, SmtpTls};

const WAIT: Duration = Duration::from_secs(10);
const PASSWORD: &str = "Tr0ub4dor&3-horse";

fn settings(url: Option<String>, ca: Option<PathBuf>) -> MailSettings {
    MailSettings {
        smtp_url: url.map(SecretString::from),
        smtp_ca: ca,
        mail_dir: scratch_dir(),
        from: "Shomei <no-reply@shomei.localhost>".into(),
        timeout: Duration::from_secs(10),
    }
}

fn scratch_dir() -> PathBuf {
    shomei_testkit::workspace_root()
        .join("target/tmp/mail")
        .join(format!("{:032x}", rand::random::<u128>()))
}

fn email(to: &str, subject: &str) -> Email {
    Email {
        to_name: "Taro Yamada".into(),
        to_address: to.into(),
        subject: subject.into(),
        text: format!("text of {subject}\n"),
        html: format!("<p>html of {subject}</p>\n"),
        id: None,
    }
}

fn auth_options(tls: SmtpTls) -> SmtpOptions {
    SmtpOptions {
        tls,
        credentials: Some(("shomei".into(), PASSWORD.into())),
        ..SmtpOptions::default()
    }
}

/// Display of the whole cause chain plus Debug: everything a log line could show.
fn everything_printed(err: &MailError) -> String {
    let mut out = format!("{err:?}\n{err}");
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(&format!("\n{s}"));
        source = s.source();
    }
    out
}

fn crlf_to_lf(s: &str) -> String {
    s.replace("\r\n", "\n")
}

#[tokio::test]
async fn plain_smtp_delivers_a_multipart_message() {
    let server = SmtpServer::start(SmtpOptions::default());
    let mailer = Mailer::new(&settings(Some(server.url()), None)).unwrap();
    assert!(
        mailer.describe().ends_with("(plain)"),
        "{}",
        mailer.describe()
    );

    mailer
        .send(&email("taro@example.test", "plain one"))
        .await
        .unwrap();

    let mail = server
        .wait_for("taro@example.test", "plain one", WAIT)
        .await;
    assert_eq!(mail.from, "no-reply@shomei.localhost");
    assert_eq!(mail.from_header, "Shomei <no-reply@shomei.localhost>");
    assert_eq!(mail.to_header, "\"Taro Yamada\" <taro@example.test>");
    assert_eq!(
        mail.content_types,
        ["multipart/alternative", "text/plain", "text/html"]
    );
    assert_eq!(crlf_to_lf(&mail.text), "text of plain one\n");
    assert_eq!(crlf_to_lf(&mail.html), "<p>html of plain one</p>\n");
    let raw = String::from_utf8_lossy(&mail.raw);
    assert!(raw.contains("Message-ID: <"), "{raw}");
    assert!(raw.contains("@shomei.localhost>"), "{raw}");
    assert!(raw.contains("Auto-Submitted: auto-generated"), "{raw}");
    assert!(!mail.tls && !mail.authenticated);
}

fn message_id(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw)
        .lines()
        .find_map(|l| l.strip_prefix("Message-ID: "))
        .expect("a Message-ID header")
        .to_owned()
}

#[tokio::test]
async fn a_message_sent_again_keeps_its_message_id_and_others_get_their_own() {
    let server = SmtpServer::start(SmtpOptions::default());
    let mailer = Mailer::new(&settings(Some(server.url()), None)).unwrap();
    let job = uuid::Uuid::new_v4();
    let mut ids = Vec::new();
    for (subject, id) in [
        ("again 1", Some(job)),
        ("again 2", Some(job)),
        ("fresh 1", None),
        ("fresh 2", None),
    ] {
        let mut message = email("hanako@example.test", subject);
        message.id = id;
        mailer.send(&message).await.unwrap();
        let mail = server.wait_for("hanako@example.test", subject, WAIT).await;
        ids.push(message_id(&mail.raw));
    }
    assert_eq!(ids[0], format!("<{:032x}@shomei.localhost>", job.as_u128()));
    assert_eq!(ids[0], ids[1], "one message, sent twice");
    assert_ne!(ids[2], ids[3], "two messages");
    assert!(ids[2] != ids[0] && ids[3] != ids[0]);
}

#[tokio::test]
async fn starttls_with_auth_delivers_when_the_dev_ca_is_trusted() {
    let server = SmtpServer::start(auth_options(SmtpTls::StartTls));
    assert!(server.url().starts_with("smtp://") && server.url().ends_with("?tls=required"));
    let mailer = Mailer::new(&settings(Some(server.url()), Some(server.ca_path()))).unwrap();
    let description = mailer.describe();
    assert!(description.contains("(STARTTLS, AUTH)"), "{description}");
    assert!(!description.contains(PASSWORD) && !description.contains("shomei@"));
    assert!(!format!("{mailer:?}").contains(PASSWORD));

    mailer
        .send(&email("taro@example.test", "over starttls"))
        .await
        .unwrap();

    let mail = server
        .wait_for("taro@example.test", "over starttls", WAIT)
        .await;
    assert!(mail.tls, "the message came over TLS");
    assert!(mail.authenticated, "the client authenticated");
}

#[tokio::test]
async fn starttls_to_a_server_whose_ca_is_not_trusted_fails_transiently() {
    let server = SmtpServer::start(auth_options(SmtpTls::StartTls));
    // No dev CA: the webpki roots do not know it.
    let mailer = Mailer::new(&settings(Some(server.url()), None)).unwrap();

    let err = mailer
        .send(&email("taro@example.test", "untrusted"))
        .await
        .unwrap_err();

    assert!(matches!(err, MailError::Smtp { .. }), "{err:?}");
    assert!(!err.is_permanent(), "{err:?}");
    assert!(!everything_printed(&err).contains(PASSWORD));
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn implicit_tls_with_auth_delivers() {
    let server = SmtpServer::start(auth_options(SmtpTls::Implicit));
    assert!(server.url().starts_with("smtps://"));
    let mailer = Mailer::new(&settings(Some(server.url()), Some(server.ca_path()))).unwrap();
    assert!(
        mailer.describe().contains("(TLS, AUTH)"),
        "{}",
        mailer.describe()
    );

    mailer
        .send(&email("taro@example.test", "over implicit tls"))
        .await
        .unwrap();

    let mail = server
        .wait_for("taro@example.test", "over implicit tls", WAIT)
        .await;
    assert!(mail.tls && mail.authenticated);
}

#[tokio::test]
async fn a_wrong_password_is_a_permanent_error_that_never_shows_the_password() {
    let server = SmtpServer::start(auth_options(SmtpTls::StartTls));
    let wrong = "Wr0ng-Passw0rd!";
    let mailer = Mailer::new(&settings(
        Some(server.url_with_password(Some(wrong))),
        Some(server.ca_path()),
    ))
    .unwrap();

    let err = mailer
        .send(&email("taro@example.test", "wrong password"))
        .await
        .unwrap_err();

    assert!(err.is_permanent(), "535 is permanent: {err:?}");
    let printed = everything_printed(&err);
    assert!(printed.contains("535"), "{printed}");
    assert!(!printed.contains(wrong), "{printed}");
    assert!(!printed.contains(PASSWORD), "{printed}");
    assert!(!format!("{mailer:?}").contains(wrong));
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn a_rejected_recipient_is_a_permanent_error() {
    let server = SmtpServer::start(SmtpOptions {
        reject_recipients_containing: Some("nobody".into()),
        ..SmtpOptions::default()
    });
    let mailer = Mailer::new(&settings(Some(server.url()), None)).unwrap();

    let err = mailer
        .send(&email("nobody@example.test", "rejected"))
        .await
        .unwrap_err();
    assert!(err.is_permanent(), "{err:?}");
    assert!(everything_printed(&err).contains("550"), "{err:?}");

    // The same pooled mailer still delivers to others.
    mailer
        .send(&email("taro@example.test", "accepted"))
        .await
        .unwrap();
    server.wait_for("taro@example.test", "accepted", WAIT).await;
}

#[tokio::test]
async fn an_invalid_recipient_address_is_permanent_and_sends_nothing() {
    let server = SmtpServer::start(SmtpOptions::default());
    let mailer = Mailer::new(&settings(Some(server.url()), None)).unwrap();

    let err = mailer
        .send(&email("not an address", "invalid"))
        .await
        .unwrap_err();

    assert!(matches!(err, MailError::InvalidRecipient { .. }), "{err:?}");
    assert!(err.is_permanent());
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn a_server_that_is_not_running_is_a_transient_error() {
    // A port that was just free and has no listener.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("smtp://shomei:{PASSWORD}@localhost:{port}?tls=required");
    let mailer = Mailer::new(&settings(Some(url), None)).unwrap();

    let err = mailer
        .send(&email("taro@example.test", "nobody home"))
        .await
        .unwrap_err();

    assert!(!err.is_permanent(), "{err:?}");
    assert!(!everything_printed(&err).contains(PASSWORD));
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_transiently() {
    // Bound and listening, so the kernel completes the handshake, but no greeting ever comes.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut s = settings(Some(format!("smtp://localhost:{port}")), None);
    s.timeout = Duration::from_millis(500);
    let mailer = Mailer::new(&s).unwrap();

    let started = std::time::Instant::now();
    let err = mailer
        .send(&email("taro@example.test", "silence"))
        .await
        .unwrap_err();

    assert!(!err.is_permanent(), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop(listener);
}

#[tokio::test]
async fn a_server_that_hangs_mid_transaction_times_out_and_the_next_send_uses_a_fresh_connection() {
    let server = SmtpServer::start_stalling_recipients(SmtpOptions::default(), "stuck");
    let mut s = settings(Some(server.url()), None);
    s.timeout = Duration::from_secs(1);
    let mailer = Mailer::new(&s).unwrap();
    mailer
        .send(&email("taro@example.test", "before"))
        .await
        .unwrap();

    let err = mailer
        .send(&email("stuck@example.test", "hangs"))
        .await
        .unwrap_err();
    assert!(matches!(err, MailError::Timeout { .. }), "{err:?}");
    assert!(!err.is_permanent());

    // The connection cut off in the middle of RCPT must not be reused: this would then wait
    // behind the stalled command and time out too. (The pause lets the cut-off send's
    // connection get back to the pool first, as it would in production.)
    tokio::time::sleep(Duration::from_millis(200)).await;
    mailer
        .send(&email("hanako@example.test", "after"))
        .await
        .unwrap();
    server.wait_for("hanako@example.test", "after", WAIT).await;
}

#[tokio::test]
async fn an_unreadable_ca_file_is_a_config_error() {
    let err = Mailer::new(&settings(
        Some("smtps://localhost".into()),
        Some("/nonexistent/ca.pem".into()),
    ))
    .unwrap_err();
    assert!(matches!(err, MailError::ReadCa { .. }), "{err:?}");
}

#[tokio::test]
async fn without_an_smtp_url_messages_are_written_as_parseable_eml_files() {
    let s = settings(None, None);
    let dir = s.mail_dir.clone();
    let mailer = Mailer::new(&s).unwrap();
    assert!(dir.is_dir(), "mail_dir is created");
    assert_eq!(mailer.describe(), format!("directory {}", dir.display()));

    mailer
        .send(&email("taro@example.test", "to a file"))
        .await
        .unwrap();

    let files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0].extension().unwrap(), "eml");
    let mail = ReceivedMail::parse(&std::fs::read(&files[0]).unwrap());
    assert_eq!(mail.subject, "to a file");
    assert_eq!(mail.to, ["taro@example.test"]);
    assert_eq!(mail.from, "no-reply@shomei.localhost");
    assert_eq!(crlf_to_lf(&mail.text), "text of to a file\n");
    assert_eq!(crlf_to_lf(&mail.html), "<p>html of to a file</p>\n");
}

#[tokio::test]
async fn japanese_subject_names_and_bodies_survive_the_trip() {
    let server = SmtpServer::start(SmtpOptions::default());
    let mailer = Mailer::new(&settings(Some(server.url()), None)).unwrap();
    let title = "業務委託契約書（２０２６年度）＜改訂版＞ & 覚書";
    let rendered = render(
        &Message::Invitation {
            signer_name: "山田 太郎".into(),
            document_title: title.into(),
            sender_name: "株式会社サンプル 佐藤 花子".into(),
            link: "https://shomei.localhost/sign/abc?t=1&u=2".into(),
            expires_at: chrono::Utc.with_ymd_and_hms(2026, 12, 10, 9, 0, 0).unwrap(),
            access_code_required: false,
        },
        Locale::Ja,
    );
    assert_eq!(rendered.subject, format!("署名のお願い：{title}"));

    mailer
        .send(&Email {
            to_name: "山田 太郎".into(),
            to_address: "yamada@example.test".into(),
            subject: rendered.subject.clone(),
            text: rendered.text.clone(),
            html: rendered.html.clone(),
            id: None,
        })
        .await
        .unwrap();

    let mail = server
        .wait_for("yamada@example.test", "署名のお願い", WAIT)
        .await;
    assert_eq!(mail.subject, rendered.subject);
    assert_eq!(mail.to_header, "山田 太郎 <yamada@example.test>");
    assert_eq!(crlf_to_lf(&mail.text), rendered.text);
    assert_eq!(crlf_to_lf(&mail.html), rendered.html);
    assert!(mail.text.contains("2026年12月10日 18:00 (JST)"));
    // Headers went out as RFC 2047 encoded words, not raw UTF-8.
    let raw = String::from_utf8_lossy(&mail.raw);
    let headers = &raw[..raw.find("\r\n\r\n").unwrap()];
    assert!(headers.is_ascii(), "{headers}");
}

#[tokio::test]
async fn clones_of_one_mailer_deliver_concurrently() {
    let server = SmtpServer::start(auth_options(SmtpTls::StartTls));
    let mailer = Mailer::new(&settings(Some(server.url()), Some(server.ca_path()))).unwrap();

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..24 {
        let mailer = mailer.clone();
        tasks.spawn(async move {
            mailer
                .send(&email(
                    &format!("user{i}@example.test"),
                    &format!("batch {i}"),
                ))
                .await
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap().unwrap();
    }

    for i in 0..24 {
        server
            .wait_for(
                &format!("user{i}@example.test"),
                &format!("batch {i}"),
                WAIT,
            )
            .await;
    }
    assert_eq!(server.messages().len(), 24);
}
