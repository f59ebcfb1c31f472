//! The TSA server, run in-process on port 0 against the dev token: OpenSSL accepts what it
//! issues, the HTTP edge answers bad requests properly, and the client in shomei-signing
//! takes its tokens but refuses doctored replies and falls back between URLs.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use der::asn1::{ObjectIdentifier, OctetString};
use der::{Decode, Encode};
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use x509_cert::Certificate;

use shomei_signing::{
    positive_int, FailureInfo, Hsm, HsmSettings, TimeStampReq, TimeStampResp, TimestampError,
    Timestamper, TsaClient, TsaClientSettings, TstInfo,
};
use shomei_testkit::hsm_dir;
use shomei_tsa::TsaState;

const TSA_KEY: &str = "shomei-dev-tsa";
const POLICY: &str = "1.3.6.1.4.1.32473.1.1";

fn policy() -> ObjectIdentifier {
    ObjectIdentifier::new(POLICY).unwrap()
}

fn hsm() -> &'static Hsm {
    static HSM: OnceLock<Hsm> = OnceLock::new();
    HSM.get_or_init(|| {
        let dir = hsm_dir();
        // SoftHSM reads its configuration when the module is initialised (once per process).
        std::env::set_var("SOFTHSM2_CONF", dir.join("softhsm2.conf"));
        let pin = std::fs::read_to_string(dir.join("user-pin")).unwrap();
        Hsm::connect(&HsmSettings {
            module_path: "/usr/lib/softhsm/libsofthsm2.so".into(),
            token_label: "shomei-dev".into(),
            user_pin: SecretString::from(pin.trim().to_owned()),
            pool_size: 4,
        })
        .expect("connect to dev HSM")
    })
}

/// The real server on an ephemeral port, on its own runtime thread; its base URL.
fn server() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let state = Arc::new(TsaState::new(hsm().clone(), TSA_KEY, policy()).unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async move {
                let (listener, addr) = shomei_tsa::bind("127.0.0.1:0".parse().unwrap())
                    .await
                    .unwrap();
                tx.send(format!("http://{addr}/")).unwrap();
                shomei_tsa::serve(listener, state, std::future::pending()).await;
            });
        });
        rx.recv().unwrap()
    })
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn post(url: &str, content_type: &str, body: Vec<u8>) -> (u16, Option<String>, Vec<u8>) {
    let response = http()
        .post(url)
        .header("content-type", content_type)
        .body(body)
        .send()
        .unwrap();
    let status = response.status().as_u16();
    let ct = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, ct, response.bytes().unwrap().to_vec())
}

fn query_reply(query: Vec<u8>) -> Vec<u8> {
    let (status, ct, body) = post(server(), "application/timestamp-query", query);
    assert_eq!(status, 200);
    assert_eq!(ct.as_deref(), Some("application/timestamp-reply"));
    body
}

fn scratch(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "shomei-tsa-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run openssl");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn openssl_query(dir: &Path, data: &[u8], flags: &[&str]) -> (PathBuf, Vec<u8>) {
    let data_file = dir.join("data");
    std::fs::write(&data_file, data).unwrap();
    let query = dir.join("q.tsq");
    run(Command::new("openssl")
        .args(["ts", "-query", "-sha256", "-data"])
        .arg(&data_file)
        .args(flags)
        .arg("-out")
        .arg(&query));
    let der = std::fs::read(&query).unwrap();
    (query, der)
}

fn dev_ca() -> Certificate {
    let pem = std::fs::read(hsm_dir().join("ca/ca.pem")).unwrap();
    Certificate::load_pem_chain(&pem).unwrap().remove(0)
}

fn token_parts(reply: &[u8]) -> (cms::signed_data::SignedData, TstInfo) {
    let response = TimeStampResp::from_der(reply).unwrap();
    assert!(response.status.is_granted(), "{}", response.status);
    let sd = response
        .time_stamp_token
        .unwrap()
        .content
        .decode_as::<cms::signed_data::SignedData>()
        .unwrap();
    let info = TstInfo::from_der(sd.encap_content_info.econtent.as_ref().unwrap().value()).unwrap();
    (sd, info)
}

#[test]
fn openssl_verifies_tokens_from_the_server_for_openssl_queries() {
    for (flags, cert_req) in [
        (&["-cert", "-tspolicy", POLICY][..], true),
        (&["-cert"][..], true),
        (&[][..], false),
    ] {
        let dir = scratch("verify");
        let data = format!("contract {flags:?}");
        let (query_file, query) = openssl_query(&dir, data.as_bytes(), flags);
        let reply = query_reply(query.clone());
        let reply_file = dir.join("r.tsr");
        std::fs::write(&reply_file, &reply).unwrap();

        let mut verify = Command::new("openssl");
        verify
            .args(["ts", "-verify", "-queryfile"])
            .arg(&query_file)
            .arg("-in")
            .arg(&reply_file)
            .arg("-CAfile")
            .arg(hsm_dir().join("ca/ca.pem"))
            .arg("-untrusted")
            .arg(hsm_dir().join("ca/shomei-dev-tsa.pem"));
        assert!(run(&mut verify).contains("Verification: OK"), "{flags:?}");
        // Also against the bare digest, the way a PDF validator checks a document time-stamp.
        let mut by_digest = Command::new("openssl");
        by_digest
            .args(["ts", "-verify", "-digest"])
            .arg(hex::encode(Sha256::digest(data.as_bytes())))
            .args(["-sha256", "-in"])
            .arg(&reply_file)
            .arg("-CAfile")
            .arg(hsm_dir().join("ca/ca.pem"))
            .arg("-untrusted")
            .arg(hsm_dir().join("ca/shomei-dev-tsa.pem"));
        assert!(
            run(&mut by_digest).contains("Verification: OK"),
            "{flags:?}"
        );

        let request = TimeStampReq::from_der(&query).unwrap();
        let (sd, info) = token_parts(&reply);
        assert_eq!(info.nonce, request.nonce, "nonce echoed");
        assert!(info.nonce.is_some());
        assert_eq!(info.policy, policy(), "policy in the reply");
        assert_eq!(
            sd.certificates.is_some(),
            cert_req,
            "certReq honoured for {flags:?}"
        );
    }
}

#[test]
fn serial_numbers_differ_between_tokens() {
    let mut serials = std::collections::HashSet::new();
    for _ in 0..20 {
        let request = TimeStampReq::sha256(&[5; 32], None, None).to_der().unwrap();
        let (_, info) = token_parts(&query_reply(request));
        assert!(serials.insert(info.serial_number.as_bytes().to_vec()));
    }
}

#[test]
fn the_http_edge_refuses_what_is_not_a_time_stamp_query() {
    let query = TimeStampReq::sha256(&[1; 32], None, None).to_der().unwrap();
    let (status, _, _) = post(server(), "application/json", query.clone());
    assert_eq!(status, 415);
    let (status, _, _) = post(
        &format!("{}tsa", server()),
        "application/timestamp-query",
        query,
    );
    assert_eq!(status, 200, "POST /tsa is served too");
    let (status, _, _) = post(
        server(),
        "application/timestamp-query",
        vec![0x30; 64 * 1024 + 1],
    );
    assert_eq!(status, 413);
    let health = http().get(format!("{}healthz", server())).send().unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let ready = http().get(format!("{}readyz", server())).send().unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    let get = http().get(server()).send().unwrap();
    assert!(get.status().is_client_error());
}

#[test]
fn a_malformed_query_gets_a_rejection_reply_and_the_server_keeps_serving() {
    for body in [
        b"not DER at all".to_vec(),
        vec![0x30, 0x82, 0xff, 0xff, 0x02],
        vec![],
    ] {
        let response = TimeStampResp::from_der(&query_reply(body)).unwrap();
        assert_eq!(response.status.failures(), vec![FailureInfo::BadDataFormat]);
        assert!(response.time_stamp_token.is_none());
    }
    let mut sha1 = TimeStampReq::sha256(&[1; 32], None, None);
    sha1.message_imprint.hash_algorithm.oid = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
    sha1.message_imprint.hashed_message = OctetString::new(vec![1; 20]).unwrap();
    let response = TimeStampResp::from_der(&query_reply(sha1.to_der().unwrap())).unwrap();
    assert_eq!(response.status.failures(), vec![FailureInfo::BadAlg]);
    // Still alive.
    token_parts(&query_reply(
        TimeStampReq::sha256(&[1; 32], None, None).to_der().unwrap(),
    ));
}

// --- the client ---------------------------------------------------------------------------

fn client(
    urls: Vec<String>,
    anchors: Vec<Certificate>,
    required_policy: Option<&str>,
) -> TsaClient {
    let mut settings = TsaClientSettings::new(urls, anchors);
    settings.policy = required_policy.map(|p| ObjectIdentifier::new(p).unwrap());
    settings.backoff = Duration::from_millis(20);
    settings.timeout = Duration::from_secs(5);
    TsaClient::new(settings).unwrap()
}

fn unavailable_reason(result: Result<Vec<u8>, TimestampError>) -> String {
    match result {
        Err(TimestampError::Unavailable(reason)) => reason,
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

/// A port nothing listens on.
fn closed_port_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/")
}

/// A one-connection-at-a-time HTTP/1.1 responder: each POST body goes to `answer`.
fn responder(answer: impl Fn(Vec<u8>) -> Vec<u8> + Send + 'static) -> String {
    responder_with("200 OK", answer)
}

/// [`responder`] answering with `status` (e.g. `503 Service Unavailable`).
fn responder_with(
    status: &'static str,
    answer: impl Fn(Vec<u8>) -> Vec<u8> + Send + 'static,
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((name, value)) = line.split_once(':') {
                    if name.eq_ignore_ascii_case("content-length") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let reply = answer(body);
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/timestamp-reply\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                reply.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&reply);
        }
    });
    url
}

/// A responder that rewrites each query with `doctor` before the real TSA answers it, so
/// the token is genuine but does not match what the client asked.
fn doctoring_proxy(doctor: fn(&mut TimeStampReq)) -> String {
    let upstream = server().to_owned();
    responder(move |query| {
        let mut request = TimeStampReq::from_der(&query).unwrap();
        doctor(&mut request);
        let response = http()
            .post(&upstream)
            .header("content-type", "application/timestamp-query")
            .body(request.to_der().unwrap())
            .send()
            .unwrap();
        response.bytes().unwrap().to_vec()
    })
}

#[test]
fn the_client_gets_a_checked_token_from_the_server() {
    let digest: [u8; 32] = Sha256::digest(b"signature value").into();
    let token = client(vec![server().to_owned()], vec![dev_ca()], Some(POLICY))
        .timestamp(&digest)
        .unwrap();
    let ci = cms::content_info::ContentInfo::from_der(&token).unwrap();
    let sd = ci
        .content
        .decode_as::<cms::signed_data::SignedData>()
        .unwrap();
    let info = TstInfo::from_der(sd.encap_content_info.econtent.unwrap().value()).unwrap();
    assert_eq!(info.message_imprint.hashed_message.as_bytes(), digest);
    assert_eq!(info.policy, policy());
}

#[test]
fn the_client_refuses_a_reply_for_another_nonce() {
    let url = doctoring_proxy(|r| r.nonce = Some(positive_int(&[0x12, 0x34])));
    let reason = unavailable_reason(client(vec![url], vec![dev_ca()], None).timestamp(&[2; 32]));
    assert!(reason.contains("nonce"), "{reason}");
}

#[test]
fn the_client_refuses_a_reply_for_another_imprint() {
    let url = doctoring_proxy(|r| {
        r.message_imprint.hashed_message = OctetString::new(vec![0xee; 32]).unwrap()
    });
    let reason = unavailable_reason(client(vec![url], vec![dev_ca()], None).timestamp(&[2; 32]));
    assert!(reason.contains("message imprint"), "{reason}");
}

#[test]
fn the_client_refuses_a_token_with_a_broken_signature() {
    let upstream = server().to_owned();
    let url = responder(move |query| {
        let mut reply = http()
            .post(&upstream)
            .header("content-type", "application/timestamp-query")
            .body(query)
            .send()
            .unwrap()
            .bytes()
            .unwrap()
            .to_vec();
        // The RSA signature is the last thing in the reply when no unsigned attributes follow.
        let last = reply.len() - 10;
        reply[last] ^= 0x01;
        reply
    });
    let reason = unavailable_reason(client(vec![url], vec![dev_ca()], None).timestamp(&[4; 32]));
    assert!(reason.contains("signature does not verify"), "{reason}");
}

#[test]
fn the_client_refuses_a_certificate_outside_its_trust_anchors() {
    let dir = scratch("foreign-ca");
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=Foreign CA",
        ])
        .arg("-keyout")
        .arg(dir.join("k.pem"))
        .arg("-out")
        .arg(dir.join("c.pem")));
    let foreign = Certificate::load_pem_chain(&std::fs::read(dir.join("c.pem")).unwrap()).unwrap();
    let reason =
        unavailable_reason(client(vec![server().to_owned()], foreign, None).timestamp(&[5; 32]));
    assert!(
        reason.contains("does not chain to a trust anchor"),
        "{reason}"
    );
}

#[test]
fn the_client_refuses_a_policy_it_did_not_ask_for() {
    let reason = unavailable_reason(
        client(vec![server().to_owned()], vec![dev_ca()], Some("1.2.3.4")).timestamp(&[6; 32]),
    );
    // The server rejects the requested policy; the client reports the TSA's answer.
    assert!(reason.contains("rejection"), "{reason}");
}

#[test]
fn a_down_tsa_is_skipped_for_the_next_url() {
    let down = closed_port_url();
    let digest = [7u8; 32];
    let token = client(vec![down, server().to_owned()], vec![dev_ca()], None)
        .timestamp(&digest)
        .unwrap();
    assert!(!token.is_empty());
}

#[test]
fn when_every_tsa_fails_the_reasons_of_each_are_reported() {
    let down = closed_port_url();
    let garbage = responder(|_| b"not a reply".to_vec());
    let reason = unavailable_reason(
        client(vec![down.clone(), garbage.clone()], vec![dev_ca()], None).timestamp(&[8; 32]),
    );
    assert!(reason.contains(&format!("{down} (attempt 1)")), "{reason}");
    assert!(
        reason.contains(&format!("{down} (attempt 2)")),
        "retried: {reason}"
    );
    assert!(
        reason.contains(&format!("{garbage} (attempt 1)")),
        "{reason}"
    );
    assert!(reason.contains("not a TimeStampResp"), "{reason}");
}

#[test]
fn the_client_tries_again_after_a_server_error_but_not_after_a_refusal_or_an_oversized_reply() {
    let failing = responder_with("503 Service Unavailable", |_| Vec::new());
    let refusing = responder_with("404 Not Found", |_| Vec::new());
    let oversized = responder(|_| vec![0; 300 * 1024]);
    let reason = unavailable_reason(
        client(
            vec![failing.clone(), refusing.clone(), oversized.clone()],
            vec![dev_ca()],
            None,
        )
        .timestamp(&[9; 32]),
    );
    assert!(
        reason.contains(&format!("{failing} (attempt 2): HTTP 503")),
        "a 503 is tried again: {reason}"
    );
    assert!(
        reason.contains(&format!("{refusing} (attempt 1): HTTP 404"))
            && !reason.contains(&format!("{refusing} (attempt 2)")),
        "a 404 is not: {reason}"
    );
    assert!(
        reason.contains(&format!("{oversized} (attempt 1): reply too large"))
            && !reason.contains(&format!("{oversized} (attempt 2)")),
        "nor a reply larger than a time-stamp reply can be: {reason}"
    );
}
