//! Signature requests end to end: the signer e-mails arrive at a real SMTP server (aiosmtpd,
//! STARTTLS and AUTH), the test reads the link and the one-time code from them and acts as
//! each signer through the API; the final PDF is checked with pdfsig, qpdf and openssl.

use std::time::Duration;

use serde_json::{json, Value};

use shomei_testkit::smtp::{ReceivedMail, SmtpOptions, SmtpServer, SmtpTls};
use shomei_testkit::validate::{assert_externally_valid, Expected};
use shomei_testkit::{sample, TestApp, TestAppOptions};

use crate::JOB_TIMEOUT;

const MAIL_TIMEOUT: Duration = Duration::from_secs(60);

/// An app whose workers send e-mail through `smtp`.
async fn app_with_mail(smtp: &SmtpServer) -> TestApp {
    TestApp::spawn_with(TestAppOptions {
        worker_env: vec![
            ("SHOMEI_SMTP_URL".into(), smtp.url()),
            (
                "SHOMEI_SMTP_CA".into(),
                smtp.ca_path().display().to_string(),
            ),
        ],
        ..TestAppOptions::default()
    })
    .await
}

fn mail_server() -> SmtpServer {
    SmtpServer::start(SmtpOptions {
        tls: SmtpTls::StartTls,
        credentials: Some(("shomei".into(), "smtp-test-password".into())),
        reject_recipients_containing: None,
    })
}

/// The link token in an invitation.
fn link_token(mail: &ReceivedMail) -> String {
    let text = &mail.text;
    let start = text
        .find("/v1/signing/")
        .expect("a signing link in the e-mail")
        + 12;
    let token: String = text[start..]
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect();
    assert_eq!(token.len(), 64, "{text}");
    assert!(mail.html.contains(&token), "the HTML part has the link too");
    token
}

/// The 6-digit code in a verification-code e-mail (a line of its own in the text part).
fn one_time_code(mail: &ReceivedMail) -> String {
    mail.text
        .lines()
        .map(str::trim)
        .find(|l| l.len() == 6 && l.bytes().all(|b| b.is_ascii_digit()))
        .unwrap_or_else(|| panic!("no code in {:?}", mail.text))
        .to_owned()
}

async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// Uploads the sample and sends it round `signers`; returns (document id, request id).
async fn send_request(app: &TestApp, title: &str, signers: Value) -> (String, String) {
    let response = app
        .upload(&app.api_key, sample("contract.pdf"), Some(title))
        .await;
    assert_eq!(response.status(), 201);
    let doc: Value = response.json().await.unwrap();
    let doc_id = doc["id"].as_str().unwrap().to_owned();
    let (status, body) = json_of(
        app.post_json(
            Some(&app.api_key),
            &format!("/v1/documents/{doc_id}/requests"),
            &json!({
                "owner": {"name": "Sato Legal", "email": "owner@example.com"},
                "locale": "en",
                "signers": signers,
            }),
        )
        .await,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    (doc_id, body["id"].as_str().unwrap().to_owned())
}

/// Enrolls Hanako as a certified signer with the dev token's own key for her, PIN 246810.
async fn enroll_hanako(app: &TestApp) -> Value {
    let (status, identity) = json_of(
        app.post_json(
            Some(&app.api_key),
            "/v1/signer-identities",
            &json!({"name": "Hanako Yamada", "email": "hanako@example.jp",
                    "key_label": "shomei-dev-signer-1", "pin": "246810"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 201, "{identity}");
    assert!(identity.get("pin").is_none() && identity.get("pin_hash").is_none());
    identity
}

async fn request_code(app: &TestApp, smtp: &SmtpServer, token: &str, to: &str) -> String {
    let before = smtp.messages().len();
    let response = app
        .post_json(None, &format!("/v1/signing/{token}/code"), &json!({}))
        .await;
    assert_eq!(response.status(), 202);
    // Wait for a code e-mail newer than the ones already there.
    let deadline = std::time::Instant::now() + MAIL_TIMEOUT;
    loop {
        let mails = smtp.messages();
        if let Some(mail) = mails[before.min(mails.len())..]
            .iter()
            .find(|m| m.to.iter().any(|t| t == to) && m.subject.contains("verification code"))
        {
            return one_time_code(mail);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no code e-mail to {to}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn sign_as(app: &TestApp, token: &str, body: Value) -> (u16, Value) {
    json_of(
        app.post_json(None, &format!("/v1/signing/{token}/sign"), &body)
            .await,
    )
    .await
}

#[tokio::test]
async fn a_witness_and_a_certified_signer_sign_in_order_and_the_contract_concludes() {
    let smtp = mail_server();
    let app = app_with_mail(&smtp).await;
    enroll_hanako(&app).await;

    let (doc_id, request_id) = send_request(
        &app,
        "業務委託契約書, \"2026\" <v1>",
        json!([
            {"name": "Taro Suzuki", "email": "taro@example.com", "method": "witness"},
            {"name": "Hanako Yamada", "email": "hanako@example.jp", "method": "certified",
             "locale": "ja", "access_code": "4711-2026"},
        ]),
    )
    .await;

    // Signer 1, witness: the invitation, then a code, a wrong try, the right one.
    let invitation = smtp
        .wait_for("taro@example.com", "Please sign", MAIL_TIMEOUT)
        .await;
    assert!(
        invitation.tls && invitation.authenticated,
        "STARTTLS and AUTH were used"
    );
    assert!(invitation.subject.contains("業務委託契約書, \"2026\" <v1>"));
    assert!(
        (invitation.html.contains("&lt;v1&gt;") || invitation.html.contains("&#60;v1&#62;"))
            && !invitation.html.contains("<v1>"),
        "the title is escaped in HTML"
    );
    let taro = link_token(&invitation);
    let (status, view) = json_of(app.get("", &format!("/v1/signing/{taro}")).await).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["signer"]["method"], "witness");
    // Hanako's turn has not come: no e-mail for her yet.
    assert!(smtp
        .messages()
        .iter()
        .all(|m| !m.to.iter().any(|t| t == "hanako@example.jp")));

    let code = request_code(&app, &smtp, &taro, "taro@example.com").await;
    let wrong = if code == "000000" { "000001" } else { "000000" };
    let (status, problem) = sign_as(&app, &taro, json!({"code": wrong})).await;
    assert_eq!(status, 403, "{problem}");
    assert!(problem["detail"]
        .as_str()
        .unwrap()
        .contains("4 attempts left"));
    let (status, queued) = sign_as(&app, &taro, json!({"code": code})).await;
    assert_eq!(status, 202, "{queued}");
    let job = app
        .wait_for_job(queued["job_id"].as_str().unwrap(), JOB_TIMEOUT)
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    // The link is spent once the signer has signed.
    let (status, _) = sign_as(&app, &taro, json!({"code": code})).await;
    assert_eq!(status, 409);

    // Signer 2, certified: PIN and the access code the sender shared.
    let invitation = smtp
        .wait_for("hanako@example.jp", "署名のお願い", MAIL_TIMEOUT)
        .await;
    let hanako = link_token(&invitation);
    let (status, problem) = sign_as(&app, &hanako, json!({"pin": "246810"})).await;
    assert_eq!(status, 400, "the access code is required: {problem}");
    let (status, problem) = sign_as(
        &app,
        &hanako,
        json!({"pin": "111111", "access_code": "4711-2026"}),
    )
    .await;
    assert_eq!(status, 403, "{problem}");
    let (status, queued) = sign_as(
        &app,
        &hanako,
        json!({"pin": "246810", "access_code": "4711-2026"}),
    )
    .await;
    assert_eq!(status, 202, "{queued}");
    let job = app
        .wait_for_job(queued["job_id"].as_str().unwrap(), JOB_TIMEOUT)
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");

    // Concluded: a document time-stamp, then everyone is told.
    let done = smtp
        .wait_for("owner@example.com", "Signed by everyone", MAIL_TIMEOUT)
        .await;
    assert!(done.text.contains("Sato Legal"));
    smtp.wait_for("taro@example.com", "Signed by everyone", MAIL_TIMEOUT)
        .await;
    smtp.wait_for("hanako@example.jp", "署名完了", MAIL_TIMEOUT)
        .await;
    let (_, request) = json_of(
        app.get(&app.api_key, &format!("/v1/requests/{request_id}"))
            .await,
    )
    .await;
    assert_eq!(request["status"], "completed", "{request}");
    assert!(request["signers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["status"] == "signed"));

    let pdf = app.download(&doc_id).await;
    let report = assert_externally_valid(
        "request-witness-certified",
        &pdf,
        Expected {
            signatures: 2,
            signature_timestamps: 2,
            document_timestamps: 1,
        },
    );
    assert!(
        report.contains("Shomei Dev Signing (RSA)")
            && report.contains("Hanako Yamada (Dev Signer)"),
        "the witness signature is the service's, the certified one Hanako's own: {report}"
    );
    // The audit trail names the method and address of each signature.
    assert_eq!(
        app.sql_count(
            "SELECT count(*) AS n FROM events WHERE kind = 'document.signed' \
             AND ip = '127.0.0.1' AND data->>'method' IN ('witness', 'certified')"
        ),
        2
    );
}

#[tokio::test]
async fn a_wrong_expired_or_overused_code_is_refused() {
    let smtp = mail_server();
    let app = app_with_mail(&smtp).await;
    send_request(
        &app,
        "Codes",
        json!([{"name": "Jiro", "email": "jiro@example.com", "method": "witness"}]),
    )
    .await;
    let invitation = smtp
        .wait_for("jiro@example.com", "Please sign", MAIL_TIMEOUT)
        .await;
    let token = link_token(&invitation);

    // Five wrong tries spend the code: the right one no longer works.
    let code = request_code(&app, &smtp, &token, "jiro@example.com").await;
    let wrong = if code == "123456" { "654321" } else { "123456" };
    for left in (1..=4).rev() {
        let (status, problem) = sign_as(&app, &token, json!({"code": wrong})).await;
        assert_eq!(status, 403);
        assert!(problem["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("{left} attempts left")));
    }
    let (status, problem) = sign_as(&app, &token, json!({"code": wrong})).await;
    assert_eq!(status, 429, "{problem}");
    assert_eq!(
        problem["type"],
        "https://shomei.dev/problems/too-many-attempts"
    );
    let (status, _) = sign_as(&app, &token, json!({"code": code})).await;
    assert_eq!(status, 409, "the spent code is gone");

    // An expired code is refused even when right.
    let code = request_code(&app, &smtp, &token, "jiro@example.com").await;
    app.sql_execute("UPDATE request_signers SET otp_expires_at = now() - interval '1 second'");
    let (status, problem) = sign_as(&app, &token, json!({"code": code})).await;
    assert_eq!(status, 410, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("expired"));

    // A fresh code works. The row holds its SHA-256 (bound to the signer), never the code.
    let code = request_code(&app, &smtp, &token, "jiro@example.com").await;
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM request_signers WHERE otp_sha256 = \
             sha256(decode(replace(id::text, '-', ''), 'hex') || convert_to('{code}', 'UTF8'))"
        )),
        1
    );
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM request_signers r WHERE row_to_json(r)::text LIKE '%{code}%'"
        )),
        0
    );
    let (status, queued) = sign_as(&app, &token, json!({"code": code})).await;
    assert_eq!(status, 202, "{queued}");
    let job = app
        .wait_for_job(queued["job_id"].as_str().unwrap(), JOB_TIMEOUT)
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
}

#[tokio::test]
async fn a_signer_can_decline_and_the_sender_can_cancel() {
    let smtp = mail_server();
    let app = app_with_mail(&smtp).await;

    let (_, declined) = send_request(
        &app,
        "Declined deal",
        json!([{"name": "Ken", "email": "ken@example.com", "method": "witness"}]),
    )
    .await;
    let token = link_token(
        &smtp
            .wait_for("ken@example.com", "Please sign", MAIL_TIMEOUT)
            .await,
    );
    let response = app
        .post_json(
            None,
            &format!("/v1/signing/{token}/decline"),
            &json!({"reason": "The fee is wrong"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let notice = smtp
        .wait_for("owner@example.com", "Declined", MAIL_TIMEOUT)
        .await;
    assert!(notice.text.contains("The fee is wrong"), "{}", notice.text);
    let (_, request) = json_of(
        app.get(&app.api_key, &format!("/v1/requests/{declined}"))
            .await,
    )
    .await;
    assert_eq!(request["status"], "declined");
    let (status, _) = json_of(app.get("", &format!("/v1/signing/{token}")).await).await;
    assert_eq!(status, 410, "the link is dead");
    // The token is the signer's credential: the API's log shows each request once, by its
    // route, never with the token.
    let api_log = std::fs::read_to_string(app.log_dir().join("api.log")).unwrap();
    assert!(
        !api_log.contains(&token),
        "a signing link's token in the API's log"
    );
    let lines = |path: &str| api_log.lines().filter(|l| l.contains(path)).count();
    assert_eq!(lines("path=/v1/signing/{token}/decline "), 1, "{api_log}");
    assert_eq!(lines("path=/v1/signing/{token} "), 1, "{api_log}");

    let (_, cancelled) = send_request(
        &app,
        "Cancelled deal",
        json!([{"name": "Mai", "email": "mai@example.com", "method": "witness"},
               {"name": "Yui", "email": "yui@example.com", "method": "witness"}]),
    )
    .await;
    let token = link_token(
        &smtp
            .wait_for("mai@example.com", "Please sign", MAIL_TIMEOUT)
            .await,
    );
    let response = app
        .post_json(
            Some(&app.api_key),
            &format!("/v1/requests/{cancelled}/cancel"),
            &json!({}),
        )
        .await;
    assert_eq!(response.status(), 200);
    smtp.wait_for("mai@example.com", "cancelled", MAIL_TIMEOUT)
        .await;
    let (status, _) = json_of(app.get("", &format!("/v1/signing/{token}")).await).await;
    assert_eq!(status, 410);
    let response = app
        .post_json(
            Some(&app.api_key),
            &format!("/v1/requests/{cancelled}/cancel"),
            &json!({}),
        )
        .await;
    assert_eq!(response.status(), 409, "cancelled once only");
    // Yui's turn never came.
    assert!(smtp
        .messages()
        .iter()
        .all(|m| !m.to.iter().any(|t| t == "yui@example.com")));
}

#[tokio::test]
async fn bad_request_bodies_get_problems() {
    let app = TestApp::spawn_with(TestAppOptions {
        workers: 0,
        ..TestAppOptions::default()
    })
    .await;
    let doc = app.upload_ok(sample("contract.pdf")).await;
    let path = format!("/v1/documents/{doc}/requests");
    let owner = json!({"name": "O", "email": "owner@example.com"});
    for (body, expected, needle) in [
        (
            json!({"owner": owner, "signers": []}),
            400,
            "1 to 20 signers",
        ),
        (
            json!({"owner": owner, "signers": [{"name": "A", "email": "not-an-address", "method": "witness"}]}),
            400,
            "signers[0].email",
        ),
        (
            json!({"owner": owner, "signers": [{"name": "A", "email": "a@example.com", "method": "certified"}]}),
            422,
            "no certified signer is enrolled",
        ),
        (
            json!({"owner": owner, "locale": "fr", "signers": [{"name": "A", "email": "a@example.com", "method": "witness"}]}),
            400,
            "ja or en",
        ),
    ] {
        let (status, problem) =
            json_of(app.post_json(Some(&app.api_key), &path, &body).await).await;
        assert_eq!(status, expected, "{body} → {problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(needle),
            "{problem}"
        );
    }
    // One open request per document.
    let body = json!({"owner": owner, "signers": [{"name": "A", "email": "a@example.com", "method": "witness"}]});
    assert_eq!(
        app.post_json(Some(&app.api_key), &path, &body)
            .await
            .status(),
        201
    );
    assert_eq!(
        app.post_json(Some(&app.api_key), &path, &body)
            .await
            .status(),
        409
    );
    // A made-up link is simply not found.
    let (status, problem) = json_of(
        app.get("", &format!("/v1/signing/{}", "ab".repeat(32)))
            .await,
    )
    .await;
    assert_eq!(status, 404, "{problem}");
}

#[tokio::test]
async fn a_tenant_that_wants_access_codes_gets_one_per_signer_and_mail_goes_to_files() {
    // No SMTP server: the default transport writes each e-mail to the mail directory.
    let app = TestApp::spawn().await;
    let key = app
        .create_tenant_with("Careful tenant", &["--access-codes"])
        .await;
    let response = app.upload(&key, sample("contract.pdf"), Some("NDA")).await;
    let doc: Value = response.json().await.unwrap();
    let (status, request) = json_of(
        app.post_json(
            Some(&key),
            &format!("/v1/documents/{}/requests", doc["id"].as_str().unwrap()),
            &json!({"owner": {"name": "O", "email": "owner@example.com"}, "locale": "en",
                    "signers": [{"name": "Aki", "email": "aki@example.com", "method": "witness"}]}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 201, "{request}");
    let access_code = request["signers"][0]["access_code"]
        .as_str()
        .expect("a made access code, shown once")
        .to_owned();
    assert_eq!(access_code.len(), 8);
    let (_, shown) = json_of(
        app.get(
            &key,
            &format!("/v1/requests/{}", request["id"].as_str().unwrap()),
        )
        .await,
    )
    .await;
    assert!(shown["signers"][0].get("access_code").is_none(), "{shown}");

    let invitation = wait_for_file_mail(&app, "aki@example.com", "Please sign").await;
    assert!(
        invitation.text.contains("access code"),
        "{}",
        invitation.text
    );
    let token = link_token(&invitation);
    let response = app
        .post_json(None, &format!("/v1/signing/{token}/code"), &json!({}))
        .await;
    assert_eq!(response.status(), 202);
    let code =
        one_time_code(&wait_for_file_mail(&app, "aki@example.com", "verification code").await);
    let (status, problem) = sign_as(&app, &token, json!({"code": code})).await;
    assert_eq!(status, 400, "{problem}");
    let (status, problem) = sign_as(
        &app,
        &token,
        json!({"code": code, "access_code": "00000000"}),
    )
    .await;
    assert_eq!(status, 403, "{problem}");
    assert!(problem["detail"]
        .as_str()
        .unwrap()
        .contains("wrong access code"));
    let (status, queued) = sign_as(
        &app,
        &token,
        json!({"code": code, "access_code": access_code}),
    )
    .await;
    assert_eq!(status, 202, "{queued}");
}

async fn wait_for_file_mail(app: &TestApp, to: &str, subject: &str) -> ReceivedMail {
    let deadline = std::time::Instant::now() + MAIL_TIMEOUT;
    loop {
        if let Some(mail) = app
            .mail_files()
            .into_iter()
            .find(|m| m.to_header.contains(to) && m.subject.contains(subject))
        {
            return mail;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {subject:?} file for {to}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn repeated_wrong_pins_lock_a_certified_signer_until_unlocked() {
    let app = TestApp::spawn().await;
    let identity = enroll_hanako(&app).await;
    send_request(
        &app,
        "Locked out",
        json!([{"name": "Hanako Yamada", "email": "hanako@example.jp", "method": "certified"}]),
    )
    .await;
    let token = link_token(&wait_for_file_mail(&app, "hanako@example.jp", "Please sign").await);
    let response = app
        .post_json(None, &format!("/v1/signing/{token}/code"), &json!({}))
        .await;
    assert_eq!(
        response.status(),
        409,
        "no e-mailed code for a certified signature"
    );

    for left in (1..=4).rev() {
        let (status, problem) = sign_as(&app, &token, json!({"pin": "000000"})).await;
        assert_eq!(status, 403, "{problem}");
        assert!(problem["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("{left} attempts left")));
    }
    let (status, problem) = sign_as(&app, &token, json!({"pin": "000000"})).await;
    assert_eq!(status, 423, "{problem}");
    let (status, _) = sign_as(&app, &token, json!({"pin": "246810"})).await;
    assert_eq!(status, 423, "locked even for the right PIN");
    // The PIN is kept as Argon2id only.
    assert_eq!(
        app.sql_count(
            "SELECT count(*) AS n FROM signer_identities \
             WHERE pin_hash LIKE '$argon2id$%' AND position('246810' in pin_hash) = 0"
        ),
        1
    );

    let response = app
        .post_json(
            Some(&app.api_key),
            &format!(
                "/v1/signer-identities/{}/unlock",
                identity["id"].as_str().unwrap()
            ),
            &json!({}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let (status, queued) = sign_as(&app, &token, json!({"pin": "246810"})).await;
    assert_eq!(status, 202, "{queued}");
    let job = app
        .wait_for_job(queued["job_id"].as_str().unwrap(), JOB_TIMEOUT)
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
}
