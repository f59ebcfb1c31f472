//! People who log in (R-ACC-4): password rules, Argon2id, lock-out, the second factor by
//! e-mailed code and by TOTP (codes made by `oathtool`, an independent RFC 6238
//! implementation), and sessions that act with the user's role.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shomei_testkit::{TestApp, TestAppOptions};

use crate::assert_problem;

async fn post(app: &TestApp, token: Option<&str>, path: &str, body: Value) -> (u16, Value) {
    let response = app.post_json(token, path, &body).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn login(app: &TestApp, email: &str, password: &str) -> (u16, Value) {
    post(
        app,
        None,
        "/v1/auth/login",
        json!({"tenant_id": app.tenant_id, "email": email, "password": password}),
    )
    .await
}

/// The newest e-mail to `address` whose text has a 6-digit line, waiting for it.
async fn mailed_code(app: &TestApp, address: &str, seen: usize) -> String {
    let deadline = Instant::now() + crate::JOB_TIMEOUT;
    loop {
        let mails: Vec<_> = app
            .mail_files()
            .into_iter()
            .filter(|m| m.to.iter().any(|t| t == address))
            .collect();
        if mails.len() > seen {
            let mail = mails.last().unwrap();
            // Japanese by default, like every mail to someone whose language is not known.
            assert!(mail.subject.contains("ログイン"), "{}", mail.subject);
            return mail
                .text
                .lines()
                .map(str::trim)
                .find(|l| l.len() == 6 && l.bytes().all(|b| b.is_ascii_digit()))
                .unwrap()
                .to_owned();
        }
        assert!(Instant::now() < deadline, "no login code mailed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn oathtool(secret: &str) -> String {
    let out = std::process::Command::new("oathtool")
        .args(["--totp", "-b", secret])
        .output()
        .expect("oathtool (scripts/prepare-machine.sh installs it)");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_person_logs_in_with_a_password_and_an_emailed_code_or_totp() {
    let app = TestApp::spawn_with(TestAppOptions {
        workers: 1,
        ..TestAppOptions::default()
    })
    .await;
    let address = "aiko.admin@example.jp";
    let user = |password: &str| json!({"name": "Aiko Admin", "email": address, "role": "admin", "password": password});
    for weak in ["short1", "onlyletters", "1234567890"] {
        let (status, body) = post(&app, Some(&app.api_key), "/v1/users", user(weak)).await;
        assert_eq!(status, 400, "{weak}: {body}");
    }
    let (status, created) = post(
        &app,
        Some(&app.api_key),
        "/v1/users",
        user("Correct-horse1"),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["email"], address);
    let hash = app.sql_texts("SELECT password_hash AS t FROM users");
    assert!(hash[0].starts_with("$argon2id$"), "{hash:?}");
    let viewer = app.create_key("viewer").await;
    let (status, _) = post(&app, Some(&viewer), "/v1/users", user("Correct-horse2")).await;
    assert_eq!(status, 403, "only owners and admins make users");

    // Password right: a challenge, not yet a session.
    let (status, wrong) = login(&app, address, "Wrong-horse1").await;
    assert_eq!(status, 401, "{wrong}");
    let (status, challenge) = login(&app, address, "Correct-horse1").await;
    assert_eq!(status, 200, "{challenge}");
    assert_eq!(challenge["factors"], json!(["email"]));
    assert!(challenge.get("token").is_none());
    let id = challenge["challenge_id"].as_str().unwrap().to_owned();
    let (status, _) = post(
        &app,
        None,
        &format!("/v1/auth/challenges/{id}/email"),
        json!({}),
    )
    .await;
    assert_eq!(status, 202);
    let code = mailed_code(&app, address, 0).await;
    let wrong_code = if code == "000000" { "111111" } else { "000000" };
    let verify = |method: &str, code: &str| {
        let (app, id) = (&app, id.clone());
        let body = json!({"method": method, "code": code});
        async move { post(app, None, &format!("/v1/auth/challenges/{id}/verify"), body).await }
    };
    let (status, refused) = verify("email", wrong_code).await;
    assert_eq!(status, 403, "{refused}");
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("4 attempts left"),
        "{refused}"
    );
    let (status, session) = verify("email", &code).await;
    assert_eq!(status, 200, "{session}");
    let token = session["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("shs_"));
    assert_eq!(session["role"], "admin");
    // The login is spent.
    let (status, _) = verify("email", &code).await;
    assert_eq!(status, 410);

    // The session acts as the user, with the user's role and audit name.
    assert_eq!(app.get(&token, "/v1/groups").await.status(), 200);
    let cancel = app
        .post_json(Some(&token), "/v1/tenant/cancel", &json!({}))
        .await;
    assert_problem(cancel, 403).await;

    // TOTP: enrol with the session, confirm with a code oathtool makes from the secret.
    let (status, body) = post(&app, Some(&app.api_key), "/v1/auth/totp", json!({})).await;
    assert_eq!(status, 403, "an API key has no TOTP: {body}");
    let (status, enrolled) = post(&app, Some(&token), "/v1/auth/totp", json!({})).await;
    assert_eq!(status, 200, "{enrolled}");
    let secret = enrolled["secret"].as_str().unwrap().to_owned();
    assert!(enrolled["otpauth_url"]
        .as_str()
        .unwrap()
        .starts_with("otpauth://totp/Shomei:"));
    let (status, _) = post(
        &app,
        Some(&token),
        "/v1/auth/totp/confirm",
        json!({"code": "000000"}),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = post(
        &app,
        Some(&token),
        "/v1/auth/totp/confirm",
        json!({"code": oathtool(&secret)}),
    )
    .await;
    assert_eq!(status, 200);
    let sealed = app.sql_count(&format!(
        "SELECT count(*) AS n FROM users WHERE position(convert_to('{secret}', 'UTF8') in totp_secret) > 0"
    ));
    assert_eq!(sealed, 0, "the TOTP secret is stored sealed");

    let (status, challenge) = login(&app, address, "Correct-horse1").await;
    assert_eq!(status, 200);
    assert_eq!(challenge["factors"], json!(["totp", "email"]));
    let id = challenge["challenge_id"].as_str().unwrap();
    let (status, session) = post(
        &app,
        None,
        &format!("/v1/auth/challenges/{id}/verify"),
        json!({"method": "totp", "code": oathtool(&secret)}),
    )
    .await;
    assert_eq!(status, 200, "{session}");

    // Logging out ends that session at once; the first one still works.
    let second = session["token"].as_str().unwrap().to_owned();
    assert_eq!(app.get(&second, "/v1/tenant").await.status(), 200);
    let (status, _) = post(&app, Some(&second), "/v1/auth/logout", json!({})).await;
    assert_eq!(status, 204);
    assert_problem(app.get(&second, "/v1/tenant").await, 401).await;
    assert_eq!(app.get(&token, "/v1/tenant").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn five_wrong_passwords_lock_the_user_and_wrong_codes_end_the_login() {
    let app = TestApp::spawn_with(TestAppOptions {
        workers: 0,
        ..TestAppOptions::default()
    })
    .await;
    let address = "ken@example.jp";
    let (status, _) = post(
        &app,
        Some(&app.api_key),
        "/v1/users",
        json!({"name": "Ken", "email": address, "role": "viewer", "password": "Correct-horse1"}),
    )
    .await;
    assert_eq!(status, 201);
    // Unknown addresses and tenants answer as a wrong password does.
    assert_eq!(
        login(&app, "nobody@example.jp", "Correct-horse1").await.0,
        401
    );
    let (status, _) = post(
        &app,
        None,
        "/v1/auth/login",
        json!({"tenant_id": uuid::Uuid::now_v7(), "email": address, "password": "Correct-horse1"}),
    )
    .await;
    assert_eq!(status, 401);

    for attempt in 1..=5 {
        let (status, body) = login(&app, address, "Wrong-horse1").await;
        let expected = if attempt < 5 { 401 } else { 423 };
        assert_eq!(status, expected, "attempt {attempt}: {body}");
    }
    let (status, locked) = login(&app, address, "Correct-horse1").await;
    assert_eq!(status, 423, "locked even with the right password: {locked}");
    assert!(locked["detail"].as_str().unwrap().contains("locked until"));
    // The lock ends by itself.
    app.sql_execute("UPDATE users SET locked_until = now() - interval '1 second'");
    let (status, challenge) = login(&app, address, "Correct-horse1").await;
    assert_eq!(status, 200, "{challenge}");

    let id = challenge["challenge_id"].as_str().unwrap();
    for _ in 0..5 {
        let (status, _) = post(
            &app,
            None,
            &format!("/v1/auth/challenges/{id}/verify"),
            json!({"method": "email", "code": "123456"}),
        )
        .await;
        assert_eq!(status, 403);
    }
    let (status, body) = post(
        &app,
        None,
        &format!("/v1/auth/challenges/{id}/verify"),
        json!({"method": "email", "code": "123456"}),
    )
    .await;
    assert_eq!(status, 429, "{body}");
}
