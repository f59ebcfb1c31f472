//! RFC 3161 against OpenSSL as the independent peer: our types read what `openssl ts`
//! writes, `openssl ts -verify` accepts the tokens we issue with the HSM key, and the
//! client takes tokens from an `openssl ts -reply` responder only when every check passes.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use chrono::Utc;
use der::asn1::ObjectIdentifier;
use der::{Decode, Encode};
use sha2::{Digest, Sha256};
use x509_cert::Certificate;

use common::{hsm, hsm_dir};
use shomei_signing::{
    issue_token, reply_to_query, verify_response, verify_token, FailureInfo, TimeStampReq,
    TimeStampResp, TimestampError, Timestamper, TokenExpectations, TokenIssue, TsaClient,
    TsaClientSettings, TstInfo,
};

const TSA_KEY: &str = "shomei-dev-tsa";
const OUR_POLICY: &str = "1.3.6.1.4.1.32473.1.1";
const OPENSSL_POLICY: &str = "1.2.3.4.1";
const OPENSSL_OTHER_POLICY: &str = "1.2.3.4.5";

fn oid(s: &str) -> ObjectIdentifier {
    ObjectIdentifier::new(s).unwrap()
}

/// A fresh directory per call, under the system temp dir.
fn scratch(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "shomei-tsp-{}-{}-{name}",
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

fn dev_ca() -> Certificate {
    let pem = std::fs::read(hsm_dir().join("ca/ca.pem")).unwrap();
    Certificate::load_pem_chain(&pem).unwrap().remove(0)
}

/// `openssl ts -query` for `data`, with extra flags (`-cert`, `-no_nonce`, `-tspolicy X`, `-sha1`).
fn openssl_query(dir: &Path, data: &[u8], flags: &[&str]) -> (PathBuf, Vec<u8>) {
    let data_file = dir.join("data");
    std::fs::write(&data_file, data).unwrap();
    let query = dir.join("q.tsq");
    let mut cmd = Command::new("openssl");
    cmd.args(["ts", "-query", "-data"]).arg(&data_file);
    if !flags.contains(&"-sha1") {
        cmd.arg("-sha256");
    }
    cmd.args(flags).arg("-out").arg(&query);
    run(&mut cmd);
    let der = std::fs::read(&query).unwrap();
    (query, der)
}

/// OpenSSL's own TSA: a throwaway key and certificate issued by the dev CA (critical
/// timeStamping EKU) and an `openssl ts` configuration.
struct OpensslTsa {
    dir: PathBuf,
    /// `openssl ts -reply` keeps its serial in a file, without locking.
    lock: Mutex<()>,
}

fn openssl_tsa() -> &'static OpensslTsa {
    static TSA: OnceLock<OpensslTsa> = OnceLock::new();
    TSA.get_or_init(|| {
        let dir = scratch("openssl-tsa");
        let ca = hsm_dir().join("ca");
        std::fs::write(
            dir.join("ext.cnf"),
            "[v3_tsa]\nbasicConstraints = critical, CA:FALSE\n\
             keyUsage = critical, digitalSignature, nonRepudiation\n\
             extendedKeyUsage = critical, timeStamping\n",
        )
        .unwrap();
        run(Command::new("openssl")
            .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
            .arg(dir.join("tsa.key")));
        run(Command::new("openssl")
            .args(["req", "-new", "-subj", "/CN=OpenSSL Test TSA/O=Shomei Dev", "-key"])
            .arg(dir.join("tsa.key"))
            .arg("-out")
            .arg(dir.join("tsa.csr")));
        run(Command::new("openssl")
            .args(["x509", "-req", "-sha256", "-days", "30", "-set_serial", "0x5a5a01", "-in"])
            .arg(dir.join("tsa.csr"))
            .arg("-CA")
            .arg(ca.join("ca.pem"))
            .arg("-CAkey")
            .arg(ca.join("ca.key"))
            .arg("-extfile")
            .arg(dir.join("ext.cnf"))
            .args(["-extensions", "v3_tsa", "-out"])
            .arg(dir.join("tsa.pem")));
        std::fs::write(dir.join("serial"), "01\n").unwrap();
        std::fs::write(
            dir.join("ts.cnf"),
            format!(
                "[tsa]\ndefault_tsa = tsa_config\n[tsa_config]\n\
                 serial = {d}/serial\ncrypto_device = builtin\n\
                 signer_cert = {d}/tsa.pem\ncerts = {ca}/ca.pem\nsigner_key = {d}/tsa.key\n\
                 signer_digest = sha256\ndefault_policy = {OPENSSL_POLICY}\n\
                 other_policies = {OPENSSL_OTHER_POLICY}\ndigests = sha256, sha384, sha512\n\
                 accuracy = secs:1, millisecs:500, microsecs:100\nclock_precision_digits = 3\n\
                 ordering = yes\ntsa_name = yes\ness_cert_id_chain = no\ness_cert_id_alg = sha256\n",
                d = dir.display(),
                ca = ca.display()
            ),
        )
        .unwrap();
        OpensslTsa {
            dir,
            lock: Mutex::new(()),
        }
    })
}

impl OpensslTsa {
    fn reply(&self, query: &[u8]) -> Vec<u8> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let q = self.dir.join("q.tsq");
        let r = self.dir.join("r.tsr");
        std::fs::write(&q, query).unwrap();
        run(Command::new("openssl")
            .args(["ts", "-reply", "-queryfile"])
            .arg(&q)
            .arg("-config")
            .arg(self.dir.join("ts.cnf"))
            .arg("-out")
            .arg(&r));
        std::fs::read(&r).unwrap()
    }
}

fn token_of(reply: &[u8]) -> Vec<u8> {
    TimeStampResp::from_der(reply)
        .unwrap()
        .time_stamp_token
        .expect("a token")
        .to_der()
        .unwrap()
}

fn tst_info_of(token: &[u8]) -> TstInfo {
    let ci = cms::content_info::ContentInfo::from_der(token).unwrap();
    let sd = ci
        .content
        .decode_as::<cms::signed_data::SignedData>()
        .unwrap();
    TstInfo::from_der(sd.encap_content_info.econtent.unwrap().value()).unwrap()
}

#[test]
fn an_openssl_reply_decodes_and_passes_every_check() {
    let dir = scratch("openssl-reply");
    let data = b"contract bytes";
    let digest: [u8; 32] = Sha256::digest(data).into();
    let (_, query_der) = openssl_query(&dir, data, &["-cert"]);
    let query = TimeStampReq::from_der(&query_der).unwrap();
    assert_eq!(query.version, 1);
    assert!(query.cert_req);
    assert_eq!(query.message_imprint.hashed_message.as_bytes(), digest);
    assert_eq!(
        query.to_der().unwrap(),
        query_der,
        "re-encodes to the same bytes"
    );

    let reply = openssl_tsa().reply(&query_der);
    let response = TimeStampResp::from_der(&reply).unwrap();
    assert!(response.status.is_granted(), "{}", response.status);
    assert_eq!(
        response.to_der().unwrap(),
        reply,
        "re-encodes to the same bytes"
    );
    let token = token_of(&reply);
    let info = tst_info_of(&token);
    assert_eq!(info.policy, oid(OPENSSL_POLICY));
    assert_eq!(info.nonce, query.nonce);
    assert!(info.ordering);
    assert!(info.tsa.is_some());
    let accuracy = info.accuracy.clone().unwrap();
    assert_eq!(
        (accuracy.seconds, accuracy.millis, accuracy.micros),
        (Some(1), Some(500), Some(100))
    );
    let age = Utc::now() - info.gen_time.to_date_time();
    assert!(age.num_seconds().abs() < 60, "genTime {:?}", info.gen_time);

    let anchors = [dev_ca()];
    let expected = TokenExpectations {
        sha256_digest: &digest,
        nonce: query.nonce.as_ref(),
        policy: Some(&oid(OPENSSL_POLICY)),
        trust_anchors: &anchors,
    };
    let (checked_token, verified) = verify_response(&reply, &expected).unwrap();
    assert_eq!(checked_token, token);
    assert_eq!(verified.tst_info, info);
    assert!(verified
        .signer
        .tbs_certificate()
        .subject()
        .to_string()
        .contains("OpenSSL Test TSA"));
}

#[test]
fn an_openssl_rejection_decodes_with_its_failure_info() {
    let dir = scratch("openssl-reject");
    let (_, query) = openssl_query(&dir, b"x", &["-tspolicy", "1.9.9.9"]);
    let response = TimeStampResp::from_der(&openssl_tsa().reply(&query)).unwrap();
    assert!(!response.status.is_granted());
    assert_eq!(
        response.status.failures(),
        vec![FailureInfo::UnacceptedPolicy]
    );
    assert!(response.time_stamp_token.is_none());
}

fn our_issue(serial: u128) -> TokenIssue<'static> {
    static POLICY: OnceLock<ObjectIdentifier> = OnceLock::new();
    TokenIssue {
        key_label: TSA_KEY,
        policy: POLICY.get_or_init(|| oid(OUR_POLICY)),
        serial_number: serial,
        gen_time: Utc::now(),
        accuracy_millis: 1000,
    }
}

/// `openssl ts -verify` of `reply` against `query`, trusting only the dev CA.
fn openssl_verify(dir: &Path, query: &Path, reply: &[u8], untrusted: bool) -> String {
    let reply_file = dir.join("ours.tsr");
    std::fs::write(&reply_file, reply).unwrap();
    let mut cmd = Command::new("openssl");
    cmd.args(["ts", "-verify", "-queryfile"])
        .arg(query)
        .arg("-in")
        .arg(&reply_file)
        .arg("-CAfile")
        .arg(hsm_dir().join("ca/ca.pem"));
    if untrusted {
        cmd.arg("-untrusted")
            .arg(hsm_dir().join("ca/shomei-dev-tsa.pem"));
    }
    run(&mut cmd)
}

#[test]
fn tokens_issued_with_the_hsm_key_pass_openssl_ts_verify() {
    let dir = scratch("ours-verify");
    let (query_file, query) = openssl_query(
        &dir,
        b"signed contract",
        &["-cert", "-tspolicy", OUR_POLICY],
    );
    let reply = reply_to_query(
        hsm(),
        &our_issue(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
        &query,
    )
    .unwrap();
    let out = openssl_verify(&dir, &query_file, &reply, false);
    assert!(out.contains("Verification: OK"), "{out}");

    let parsed = TimeStampReq::from_der(&query).unwrap();
    let info = tst_info_of(&token_of(&reply));
    assert_eq!(info.nonce, parsed.nonce, "nonce echoed");
    assert_eq!(info.policy, oid(OUR_POLICY));
    assert_eq!(
        info.serial_number.as_bytes(),
        0x0123_4567_89ab_cdef_0123_4567_89ab_cdef_u128.to_be_bytes()
    );

    // Our own checker agrees.
    let digest: [u8; 32] = Sha256::digest(b"signed contract").into();
    verify_token(
        &token_of(&reply),
        &TokenExpectations {
            sha256_digest: &digest,
            nonce: parsed.nonce.as_ref(),
            policy: Some(&oid(OUR_POLICY)),
            trust_anchors: &[dev_ca()],
        },
    )
    .unwrap();
}

#[test]
fn without_cert_req_the_token_carries_no_certificate() {
    let dir = scratch("ours-nocert");
    let (query_file, query) = openssl_query(&dir, b"no certs please", &["-no_nonce"]);
    let reply = reply_to_query(hsm(), &our_issue(7), &query).unwrap();
    let ci = cms::content_info::ContentInfo::from_der(&token_of(&reply)).unwrap();
    let sd = ci
        .content
        .decode_as::<cms::signed_data::SignedData>()
        .unwrap();
    assert!(sd.certificates.is_none());
    assert!(tst_info_of(&token_of(&reply)).nonce.is_none());
    // OpenSSL then needs the TSA certificate from elsewhere, and still accepts the token.
    let out = openssl_verify(&dir, &query_file, &reply, true);
    assert!(out.contains("Verification: OK"), "{out}");
}

#[test]
fn sha384_and_sha512_imprints_are_accepted_and_sha1_is_rejected() {
    for (hash, ok) in [("-sha384", true), ("-sha512", true), ("-sha1", false)] {
        let dir = scratch("ours-hash");
        let data_file = dir.join("data");
        std::fs::write(&data_file, b"hash me").unwrap();
        let query_file = dir.join("q.tsq");
        run(Command::new("openssl")
            .args(["ts", "-query", "-cert", hash, "-data"])
            .arg(&data_file)
            .arg("-out")
            .arg(&query_file));
        let query = std::fs::read(&query_file).unwrap();
        let reply = reply_to_query(hsm(), &our_issue(9), &query).unwrap();
        let response = TimeStampResp::from_der(&reply).unwrap();
        if ok {
            let out = openssl_verify(&dir, &query_file, &reply, false);
            assert!(out.contains("Verification: OK"), "{hash}: {out}");
        } else {
            assert_eq!(
                response.status.failures(),
                vec![FailureInfo::BadAlg],
                "{hash}"
            );
            assert!(response.time_stamp_token.is_none());
        }
    }
}

#[test]
fn bad_requests_get_rejections_not_errors() {
    let digest = [3u8; 32];
    // Another policy.
    let request = TimeStampReq::sha256(&digest, None, Some(oid("1.2.3")));
    let response = issue_token(hsm(), &our_issue(1), &request).unwrap();
    assert_eq!(
        response.status.failures(),
        vec![FailureInfo::UnacceptedPolicy]
    );
    // Another version.
    let mut request = TimeStampReq::sha256(&digest, None, None);
    request.version = 2;
    let response = issue_token(hsm(), &our_issue(1), &request).unwrap();
    assert_eq!(response.status.failures(), vec![FailureInfo::BadRequest]);
    // A digest of the wrong length for its algorithm.
    let mut request = TimeStampReq::sha256(&digest, None, None);
    request.message_imprint.hashed_message = der::asn1::OctetString::new(vec![1; 20]).unwrap();
    let response = issue_token(hsm(), &our_issue(1), &request).unwrap();
    assert_eq!(response.status.failures(), vec![FailureInfo::BadAlg]);
    // Not DER at all, truncated, empty.
    let good = TimeStampReq::sha256(&digest, None, None).to_der().unwrap();
    for bad in [&b"hello"[..], &good[..good.len() - 3], b""] {
        let reply = reply_to_query(hsm(), &our_issue(1), bad).unwrap();
        let response = TimeStampResp::from_der(&reply).unwrap();
        assert_eq!(response.status.failures(), vec![FailureInfo::BadDataFormat]);
    }
}

/// A one-connection-at-a-time HTTP/1.1 responder on 127.0.0.1: each POST body goes to
/// `answer`, which returns the HTTP status and the body to send back.
fn responder(answer: impl Fn(Vec<u8>) -> (u16, Vec<u8>) + Send + 'static) -> String {
    responder_seeing_headers(move |_, body| answer(body))
}

/// [`responder`], with each request's header lines (`name: value`) given to `answer` too.
fn responder_seeing_headers(
    answer: impl Fn(&[String], Vec<u8>) -> (u16, Vec<u8>) + Send + 'static,
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0usize;
            let mut headers = Vec::new();
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
                headers.push(line.trim_end().to_owned());
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let (status, reply) = answer(&headers, body);
            let head = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: application/timestamp-reply\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                reply.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&reply);
        }
    });
    url
}

fn client(urls: Vec<String>, anchors: Vec<Certificate>, policy: Option<&str>) -> TsaClient {
    let mut settings = TsaClientSettings::new(urls, anchors);
    settings.policy = policy.map(oid);
    settings.backoff = Duration::from_millis(20);
    settings.timeout = Duration::from_secs(5);
    TsaClient::new(settings).unwrap()
}

#[test]
fn the_client_takes_a_token_from_an_openssl_responder() {
    let url = responder(|query| (200, openssl_tsa().reply(&query)));
    let digest: [u8; 32] = Sha256::digest(b"pdf byte ranges").into();
    let token = client(vec![url.clone()], vec![dev_ca()], None)
        .timestamp(&digest)
        .unwrap();
    assert_eq!(tst_info_of(&token).policy, oid(OPENSSL_POLICY));

    // Asking for the TSA's other policy gets a token under that policy.
    let token = client(vec![url], vec![dev_ca()], Some(OPENSSL_OTHER_POLICY))
        .timestamp(&digest)
        .unwrap();
    assert_eq!(tst_info_of(&token).policy, oid(OPENSSL_OTHER_POLICY));
}

#[test]
fn the_client_refuses_a_tsa_outside_its_trust_anchors() {
    // A self-signed CA that issued nothing: the OpenSSL TSA does not chain to it.
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

    let url = responder(|query| (200, openssl_tsa().reply(&query)));
    let err = client(vec![url], foreign, None)
        .timestamp(&[1; 32])
        .unwrap_err();
    let TimestampError::Unavailable(reason) = err else {
        panic!("{err}")
    };
    assert!(
        reason.contains("does not chain to a trust anchor"),
        "{reason}"
    );
}

#[test]
fn a_login_in_a_tsa_url_is_sent_as_basic_auth_and_never_shown() {
    // A TSA that wants a login: HTTP Basic, `tsa-user:s3cret-pass`.
    let url = responder_seeing_headers(|headers, query| {
        let login = headers.iter().any(|h| {
            h.split_once(':').is_some_and(|(name, value)| {
                name.eq_ignore_ascii_case("authorization")
                    && value.trim() == "Basic dHNhLXVzZXI6czNjcmV0LXBhc3M="
            })
        });
        if login {
            (200, openssl_tsa().reply(&query))
        } else {
            (401, Vec::new())
        }
    });
    let with_login = |login: &str| url.replacen("http://", &format!("http://{login}@"), 1);
    let digest: [u8; 32] = Sha256::digest(b"pdf byte ranges").into();
    let right = client(
        vec![with_login("tsa-user:s3cret-pass")],
        vec![dev_ca()],
        None,
    );
    let token = right.timestamp(&digest).unwrap();
    assert_eq!(tst_info_of(&token).policy, oid(OPENSSL_POLICY));
    assert!(!format!("{right:?}").contains("s3cret"), "{right:?}");

    // A wrong password is refused; the reason (a job's error, the worker's log) names the TSA
    // by its URL without the login.
    let wrong = client(
        vec![with_login("tsa-user:wrong-s3cret")],
        vec![dev_ca()],
        None,
    );
    let err = wrong.timestamp(&digest).unwrap_err().to_string();
    assert!(
        err.contains(&format!("{url} (attempt 1): HTTP 401")),
        "{err}"
    );
    assert!(
        !err.contains("s3cret") && !err.contains("tsa-user"),
        "{err}"
    );
}
