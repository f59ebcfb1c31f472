//! How many e-mails per second one [`Mailer`] sends with C concurrent senders.
//!
//!     cargo run --release -p shomei-notify --example mail_rate -- [N] [C,C,...] [SMTP_URL [CA]]
//!
//! N messages (default 2000) for each concurrency in the list (default 1,4,16). Without an
//! SMTP URL it starts the test SMTP server (aiosmtpd, STARTTLS + AUTH with the dev CA) on
//! loopback; with one it sends there, so point it only at a server that is yours. Each message
//! is a rendered Japanese invitation, as the workers send them.

#![allow(clippy::print_stdout)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::SecretString;
use shomei_notify::mail::{Email, MailSettings, Mailer};
use shomei_notify::templates::{render, Locale, Message};
use shomei_testkit::smtp::{SmtpOptions, SmtpServer, SmtpTls};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.first().map_or(2000, |a| a.parse().expect("N"));
    let concurrencies: Vec<usize> = args.get(1).map_or(vec![1, 4, 16], |a| {
        a.split(',').map(|c| c.parse().expect("C")).collect()
    });

    let server;
    let (url, ca) = match args.get(2) {
        Some(url) => (url.clone(), args.get(3).map(Into::into)),
        None => {
            server = SmtpServer::start(SmtpOptions {
                tls: SmtpTls::StartTls,
                credentials: Some(("shomei".into(), "rate-test-password".into())),
                ..SmtpOptions::default()
            });
            (server.url(), Some(server.ca_path()))
        }
    };
    let mailer = Mailer::new(&MailSettings {
        smtp_url: Some(SecretString::from(url)),
        smtp_ca: ca,
        mail_dir: "unused".into(),
        from: "Shomei <no-reply@shomei.localhost>".into(),
        timeout: Duration::from_secs(30),
    })
    .expect("mail settings");
    println!("sending to {}", mailer.describe());

    let rendered = render(
        &Message::Invitation {
            signer_name: "山田 太郎".into(),
            document_title: "業務委託契約書".into(),
            sender_name: "株式会社サンプル 佐藤 花子".into(),
            link: "https://shomei.localhost/sign/0123456789abcdef".into(),
            expires_at: chrono::Utc::now() + chrono::Duration::days(7),
            access_code_required: false,
        },
        Locale::Ja,
    );

    for c in concurrencies {
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..c {
            let (mailer, next, rendered) = (mailer.clone(), next.clone(), rendered.clone());
            tasks.spawn(async move {
                let mut failed = 0usize;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return failed;
                    }
                    let email = Email {
                        to_name: format!("署名者 {i}"),
                        to_address: format!("signer{i}@example.test"),
                        subject: rendered.subject.clone(),
                        text: rendered.text.clone(),
                        html: rendered.html.clone(),
                        id: None,
                    };
                    if let Err(e) = mailer.send(&email).await {
                        failed += 1;
                        eprintln!("send {i}: {e}");
                    }
                }
            });
        }
        let mut failed = 0;
        while let Some(result) = tasks.join_next().await {
            failed += result.expect("sender task");
        }
        let elapsed = started.elapsed();
        println!(
            "N={n} C={c:>3}: {:>8.1} e-mails/s ({:.2} s, {failed} failed)",
            n as f64 / elapsed.as_secs_f64(),
            elapsed.as_secs_f64()
        );
    }
}
