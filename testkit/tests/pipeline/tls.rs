//! The API's own HTTPS: TLS 1.2 and 1.3 only (checked with `openssl s_client`, not our code),
//! real requests over it with the client's IP in the audit trail, and no start-up without
//! either a certificate or the explicit plain-HTTP flag.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use shomei_testkit::{bin, hsm_dir, sample, TestApp, TestAppOptions};

async fn spawn_tls() -> TestApp {
    TestApp::spawn_with(TestAppOptions {
        tls: true,
        workers: 0,
        // The handshake failures are logged at debug.
        env: vec![("RUST_LOG".into(), "info,shomei_api::server=debug".into())],
        ..Default::default()
    })
    .await
}

/// `openssl s_client` against `addr` with `args`, verifying the chain against the dev CA and
/// the certificate against 127.0.0.1; stdout and stderr together.
fn s_client(addr: &str, args: &[&str]) -> (bool, String) {
    let ca = hsm_dir().join("ca/ca.pem");
    let output = Command::new("openssl")
        .args(["s_client", "-connect", addr])
        .args(["-CAfile", ca.to_str().unwrap()])
        .args(["-verify_return_error", "-verify_ip", "127.0.0.1"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// TLS 1.1 only. SECLEVEL=0: Debian's OpenSSL would otherwise not offer TLS 1.1 at all, and a
/// refusal would be the client's own.
const TLS_1_1: [&str; 3] = ["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"];
/// `-brief`: the output names the protocol negotiated (`Protocol version: TLSv1.2`).
const TLS_1_1_BRIEF: [&str; 4] = ["-brief", TLS_1_1[0], TLS_1_1[1], TLS_1_1[2]];

/// Proves the client side of the TLS 1.1 check: the same `s_client` options do negotiate
/// TLS 1.1 with `openssl s_server` configured to allow it (one connection, same certificate).
fn assert_the_client_can_speak_tls_1_1() {
    use std::io::BufRead;
    let tls = hsm_dir().join("tls");
    let mut server = Command::new("openssl")
        .args(["s_server", "-accept", "127.0.0.1:0", "-naccept", "1"])
        .args(["-cert", tls.join("localhost.pem").to_str().unwrap()])
        .args(["-key", tls.join("localhost.key").to_str().unwrap()])
        .args(TLS_1_1)
        // Both kept open until the end: s_server ends a connection at the end of its stdin,
        // and dies of SIGPIPE writing to a closed stdout.
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdin = server.stdin.take();
    let mut stdout = std::io::BufReader::new(server.stdout.take().unwrap()).lines();
    let addr = stdout
        .by_ref()
        .map_while(Result::ok)
        .find_map(|line| line.strip_prefix("ACCEPT ").map(str::to_owned))
        .expect("openssl s_server did not start");
    let (ok, out) = s_client(&addr, &TLS_1_1_BRIEF);
    drop((stdin, stdout));
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        ok && out.contains("Protocol version: TLSv1.1"),
        "control: openssl cannot speak TLS 1.1 here:\n{out}"
    );
}

fn api_log(app: &TestApp) -> String {
    std::fs::read_to_string(app.log_dir().join("api.log")).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_1_1_is_refused_by_the_server_and_tls_1_2_and_1_3_are_accepted() {
    assert_the_client_can_speak_tls_1_1();
    let app = spawn_tls().await;

    let (ok, out) = s_client(app.api_addr(), &TLS_1_1_BRIEF);
    assert!(!ok, "TLS 1.1 handshake succeeded:\n{out}");
    // The refusal came from the server, as an alert (rustls answers this TLS 1.1 ClientHello,
    // which has no signature_algorithms extension, with handshake_failure) ...
    assert!(out.contains("SSL alert number"), "{out}");
    assert!(!out.contains("Protocol version: TLSv1.1"), "{out}");
    // ... and the server says so itself: the client offered nothing it serves.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = api_log(&app);
        let refused = log.lines().find(|l| l.contains("TLS handshake failed"));
        if let Some(line) = refused {
            assert!(line.contains("127.0.0.1"), "{line}");
            assert!(line.contains("peer is incompatible"), "{line}");
            break;
        }
        assert!(Instant::now() < deadline, "no refusal logged:\n{log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (ok, out) = s_client(app.api_addr(), &["-brief", "-tls1_2"]);
    assert!(ok, "TLS 1.2 refused:\n{out}");
    assert!(out.contains("Protocol version: TLSv1.2"), "{out}");
    assert!(out.contains("Verification: OK"), "{out}");

    let (ok, out) = s_client(app.api_addr(), &["-brief", "-tls1_3"]);
    assert!(ok, "TLS 1.3 refused:\n{out}");
    assert!(out.contains("Protocol version: TLSv1.3"), "{out}");
    assert!(out.contains("Verification: OK"), "{out}");

    // HTTP/2 is offered (hyper serves both); `-brief` does not print ALPN.
    let (ok, out) = s_client(app.api_addr(), &["-alpn", "h2,http/1.1"]);
    assert!(ok && out.contains("ALPN protocol: h2"), "{out}");

    // The API is still up after the refused handshake.
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_over_https_work_and_the_audit_trail_records_the_clients_address() {
    let app = spawn_tls().await;
    assert!(app.base_url.starts_with("https://"), "{}", app.base_url);

    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.url().scheme(), "https");

    let document = app.upload_ok(sample("contract.pdf")).await;
    let ip = app.sql_text(&format!(
        "SELECT ip AS t FROM events WHERE kind = 'document.uploaded' AND document_id = '{document}'"
    ));
    assert_eq!(ip.as_deref(), Some("127.0.0.1"));

    // HTTPS only: plain HTTP on the same port gets no answer.
    let plain = reqwest::get(format!("http://{}/healthz", app.api_addr())).await;
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");
}

/// `shomei-api serve` with `env` on top of a minimal environment (none of the developer's
/// `SHOMEI_*`); it must exit on its own.
fn serve_exits(env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(bin("shomei-api"));
    for (name, _) in std::env::vars().filter(|(k, _)| k.starts_with("SHOMEI_")) {
        command.env_remove(name);
    }
    // Were the check missing, serving would stop at this database (nothing listens on port 1)
    // rather than start.
    let child = command
        .arg("serve")
        .env("SHOMEI_HSM_PIN", "unused")
        .env(
            "SHOMEI_DATABASE_URL",
            "postgres://postgres@127.0.0.1:1/none",
        )
        .env("SHOMEI_API_ADDR", "127.0.0.1:0")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(child.wait_with_output().unwrap()));
    result
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            panic!("shomei-api serve {env:?} did not exit")
        })
}

#[tokio::test]
async fn the_api_does_not_start_without_a_certificate_or_the_plain_http_flag() {
    for env in [vec![], vec![("SHOMEI_API_PLAIN_HTTP", "false")]] {
        let output = serve_exits(&env);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{env:?}: {stderr}");
        for name in [
            "SHOMEI_TLS_CERT",
            "SHOMEI_TLS_KEY",
            "SHOMEI_API_PLAIN_HTTP=true",
        ] {
            assert!(stderr.contains(name), "{env:?}: {stderr}");
        }
    }

    let cert = hsm_dir().join("tls/localhost.pem");
    let output = serve_exits(&[
        ("SHOMEI_TLS_CERT", cert.to_str().unwrap()),
        ("SHOMEI_API_PLAIN_HTTP", "true"),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("SHOMEI_TLS_CERT is set but SHOMEI_TLS_KEY is not"),
        "{stderr}"
    );
}
