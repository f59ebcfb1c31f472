//! The API as a contract (`api/openapi.yaml`, served at `/v1/openapi.json`): the served document
//! is valid OpenAPI 3.1 by an independent validator (openapi-spec-validator), the webhook bodies
//! a real receiver gets match its `webhooks` section, and schemathesis, fuzzing every operation
//! of the running API with a real key, finds no server error and no answer (status, content
//! type, headers, body) that the document does not describe, and no operation that ignores its
//! key. Both tools come from PyPI at pinned versions through `scripts/schemathesis.sh`.
//!
//! Left out of the fuzzing, because their side effects would end the run's own data:
//! `POST /v1/tenant/cancel` (schedules the deletion of everything) and
//! `DELETE /v1/documents/{id}` (deletes the seeded documents' files).

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use shomei_testkit::webhook_receiver::WebhookReceiver;
use shomei_testkit::{sample, workspace_root, TestApp};

use crate::JOB_TIMEOUT;

/// Test cases per operation in the fuzzing phase: enough to reach every answer of every route,
/// few enough to keep the run to a couple of minutes on a loaded two-core machine. A deeper
/// run: `SHOMEI_SCHEMATHESIS_EXAMPLES=500 SHOMEI_SCHEMATHESIS_SEED=… cargo test … openapi`.
const EXAMPLES_PER_OPERATION: u32 = 50;
/// The same cases on every CI run, so that a failure is the code's and can be replayed.
const SEED: u64 = 7;

fn setting(name: &str, default: u64) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn contract_script() -> std::path::PathBuf {
    workspace_root().join("scripts/schemathesis.sh")
}

#[tokio::test]
async fn the_served_openapi_document_is_valid_openapi_3_1() {
    let app = TestApp::spawn_with(shomei_testkit::TestAppOptions {
        workers: 0,
        ..Default::default()
    })
    .await;
    let response = app
        .client()
        .get(app.url("/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let document: Value = response.json().await.unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    let file = app.log_dir().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&document).unwrap()).unwrap();

    let output = Command::new(contract_script())
        .arg("validate")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "openapi-spec-validator refused the served document:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains(": OK"));
}

/// Two server errors on odd input (the NUL one found by schemathesis), now the 4xx problems the
/// document describes.
#[tokio::test]
async fn oversized_json_bodies_and_nul_characters_are_4xx_problems_not_server_errors() {
    let app = TestApp::spawn_with(shomei_testkit::TestAppOptions {
        workers: 0,
        ..Default::default()
    })
    .await;
    let response = app
        .post_json(
            Some(&app.api_key),
            "/v1/signer-identities",
            &json!({"name": "Hanako Yamada", "email": "hanako@example.jp",
                    "key_label": "label\u{0}", "pin": "246810"}),
        )
        .await;
    let problem = crate::assert_problem(response, 400).await;
    assert!(
        problem["detail"].as_str().unwrap().contains("U+0000"),
        "{problem}"
    );

    // Last: the server answers before reading the body, and closes the connection.
    let document_id = app.upload_ok(sample("contract.pdf")).await;
    let huge = json!({"signer": {"name": "x".repeat(70 * 1024)}});
    let response = app.sign(&app.api_key, &document_id, &huge).await;
    let problem = crate::assert_problem(response, 413).await;
    assert_eq!(problem["type"], "https://shomei.dev/problems/too-large");
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_answer_outside_the_openapi_document() {
    let mut app = TestApp::spawn().await;
    let seeded = seed(&app).await;
    // The fuzzer's own jobs stay queued: no worker spends the machine's two cores on them.
    app.kill_worker(0);

    let dir = app.log_dir().to_path_buf();
    std::fs::write(dir.join("schemathesis.toml"), config(&seeded)).unwrap();
    let started = Instant::now();
    let output = Command::new(contract_script())
        .args(["run", &app.base_url, &app.api_key])
        .arg("--max-examples")
        .arg(setting(
            "SHOMEI_SCHEMATHESIS_EXAMPLES",
            EXAMPLES_PER_OPERATION.into(),
        ))
        .arg("--seed")
        .arg(setting("SHOMEI_SCHEMATHESIS_SEED", SEED))
        // One worker: hypothesis describing strategies from two threads at once trips a
        // CPython 3.11 bug ("AST constructor recursion depth mismatch").
        .args(["--workers", "1", "--generation-database", "none"])
        .arg("--report-dir")
        .arg(dir.join("schemathesis-report"))
        .args(["--report", "junit"])
        .env("SCHEMATHESIS_CONFIG", dir.join("schemathesis.toml"))
        .current_dir(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    std::fs::write(dir.join("schemathesis.log"), &*stdout).unwrap();
    // The summary (operations, test cases, failures) belongs in every run's output, passing
    // or not; the test harness captures only `print!`, so it is written to stdout directly.
    let summary = stdout
        .rfind("SUMMARY")
        .and_then(|at| stdout[..at].rfind('\n').map(|line| &stdout[line..]))
        .unwrap_or(&stdout);
    let _ = writeln!(
        std::io::stdout(),
        "\nschemathesis against {} ({:.0} s; full log {}):{summary}",
        app.base_url,
        started.elapsed().as_secs_f64(),
        dir.join("schemathesis.log").display()
    );
    assert!(
        output.status.success(),
        "schemathesis failed (exit {:?}):\n{stdout}\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Ids and secrets of real objects, so that the fuzzer reaches past `404`.
struct Seeded {
    document_id: String,
    /// A document in a signature request (its signer link is `token`).
    requested_document_id: String,
    job_id: String,
    request_id: String,
    token: String,
    /// The link of another request, for `POST /v1/signing/{token}/decline` alone.
    decline_token: String,
    webhook_id: String,
    attempt_id: String,
    export_id: String,
    /// `expires` and `signature` of the export's part 1 link.
    link: (String, String),
    batch_id: String,
    group_id: String,
    /// A viewer key's id: the fuzzer may put it in groups without hiding the run's own
    /// documents from the run's own (owner) key.
    key_id: String,
    identity_id: String,
}

async fn json_ok(response: reqwest::Response, status: u16) -> Value {
    let got = response.status().as_u16();
    let body = response.text().await.unwrap();
    assert_eq!(got, status, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// One of each resource, made through the API with a worker running; and every webhook body
/// the seeding caused is checked against the document's `webhooks` section.
async fn seed(app: &TestApp) -> Seeded {
    let key = Some(app.api_key.as_str());
    let receiver = WebhookReceiver::start("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").await;
    let endpoint = json_ok(
        app.post_json(key, "/v1/webhooks", &json!({"url": receiver.url()}))
            .await,
        201,
    )
    .await;
    receiver.set_secret(endpoint["secret"].as_str().unwrap());
    let webhook_id = endpoint["id"].as_str().unwrap().to_owned();

    let document_id = app.upload_ok(sample("contract.pdf")).await;
    let job_id = app.sign_ok(&document_id, "Taro Yamada").await;
    let job = app.wait_for_job(&job_id, JOB_TIMEOUT).await;
    assert_eq!(job["status"], "succeeded", "{job}");

    let requested_document_id = app.upload_ok(sample("contract.pdf")).await;
    let request = json_ok(
        app.post_json(
            key,
            &format!("/v1/documents/{requested_document_id}/requests"),
            &json!({
                "owner": {"name": "Sato Legal", "email": "owner@example.com"},
                "locale": "en",
                "signers": [{"name": "Hanako Yamada", "email": "hanako@example.jp",
                             "method": "witness"}],
            }),
        )
        .await,
        201,
    )
    .await;
    let request_id = request["id"].as_str().unwrap().to_owned();
    let token = signing_token(app, "hanako@example.jp").await;
    // Declining ends a request: the decline operation gets a link of its own, so that the
    // other signer operations keep a live one.
    let declined_document_id = app.upload_ok(sample("contract.pdf")).await;
    json_ok(
        app.post_json(
            key,
            &format!("/v1/documents/{declined_document_id}/requests"),
            &json!({
                "owner": {"name": "Sato Legal", "email": "owner@example.com"},
                "signers": [{"name": "Jiro Sato", "email": "jiro@example.jp",
                             "method": "witness"}],
            }),
        )
        .await,
        201,
    )
    .await;
    let decline_token = signing_token(app, "jiro@example.jp").await;

    let export = json_ok(app.post_json(key, "/v1/exports", &json!({})).await, 202).await;
    let export_id = export["export_id"].as_str().unwrap().to_owned();
    let link = export_link(app, &export_id).await;

    let batch = json_ok(
        app.post_json(
            key,
            "/v1/batches",
            &json!({"items": [{"document_id": document_id, "signer": {"name": "Jiro Sato"}}]}),
        )
        .await,
        202,
    )
    .await;
    let batch_id = batch["batch_id"].as_str().unwrap().to_owned();

    let group = json_ok(
        app.post_json(
            key,
            "/v1/groups",
            &json!({"name": "Sales", "folders": ["/sales"]}),
        )
        .await,
        201,
    )
    .await;
    let group_id = group["id"].as_str().unwrap().to_owned();
    let key_id = app.cli(&[
        "key",
        "create",
        "--tenant",
        &app.tenant_id,
        "--role",
        "viewer",
    ])["key_id"]
        .clone();
    let identity = json_ok(
        app.post_json(
            key,
            "/v1/signer-identities",
            &json!({"name": "Hanako Yamada", "email": "hanako@example.jp",
                    "key_label": "shomei-dev-signer-1", "pin": "246810"}),
        )
        .await,
        201,
    )
    .await;
    let identity_id = identity["id"].as_str().unwrap().to_owned();

    // Uploads, a signature, a request sent, an export ready: at least five deliveries.
    let hooks = receiver.wait_for(5, JOB_TIMEOUT).await;
    check_webhook_bodies(app.log_dir(), hooks.iter().map(|h| &h.body));
    let deliveries = json_ok(
        app.get(
            &app.api_key,
            &format!("/v1/webhooks/{webhook_id}/deliveries"),
        )
        .await,
        200,
    )
    .await;
    let attempt_id = deliveries["deliveries"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    Seeded {
        document_id,
        requested_document_id,
        job_id,
        request_id,
        token,
        decline_token,
        webhook_id,
        attempt_id,
        export_id,
        link,
        batch_id,
        group_id,
        key_id,
        identity_id,
    }
}

/// The signer's link token, from the invitation the e-mail job wrote to the mail directory.
async fn signing_token(app: &TestApp, to: &str) -> String {
    let deadline = Instant::now() + JOB_TIMEOUT;
    loop {
        if let Some(mail) = app
            .mail_files()
            .into_iter()
            .find(|m| m.to_header.contains(to))
        {
            let start = mail.text.find("/v1/signing/").expect("a link") + 12;
            return mail.text[start..]
                .chars()
                .take_while(char::is_ascii_hexdigit)
                .collect();
        }
        assert!(Instant::now() < deadline, "no invitation e-mail");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for the export and returns `expires` and `signature` of its first part's link.
async fn export_link(app: &TestApp, export_id: &str) -> (String, String) {
    let deadline = Instant::now() + JOB_TIMEOUT;
    loop {
        let view: Value = app
            .get(&app.api_key, &format!("/v1/exports/{export_id}"))
            .await
            .json()
            .await
            .unwrap();
        if view["status"] == "ready" {
            let url = view["parts"][0]["url"].as_str().expect("a part").to_owned();
            let query = url.split_once('?').unwrap().1;
            let param = |name: &str| {
                query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                    .unwrap()
                    .to_owned()
            };
            return (param("expires"), param("signature"));
        }
        assert!(Instant::now() < deadline, "export not ready: {view}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Validates each body against the document's schema for its event type, with the
/// `jsonschema` package schemathesis brings (an independent implementation).
fn check_webhook_bodies<'a>(dir: &Path, bodies: impl Iterator<Item = &'a Value>) {
    let bodies: Vec<&Value> = bodies.collect();
    let file = dir.join("webhook-bodies.json");
    std::fs::write(&file, serde_json::to_vec(&bodies).unwrap()).unwrap();
    let venv = Command::new(contract_script())
        .arg("install")
        .output()
        .unwrap();
    assert!(venv.status.success());
    let bin = String::from_utf8(venv.stdout).unwrap();
    let script = r#"
import json, sys, yaml, jsonschema
doc = yaml.safe_load(open(sys.argv[1]))
registry_doc = {"components": doc["components"]}
for body in json.load(open(sys.argv[2])):
    op = doc["webhooks"][body["type"]]["post"]
    schema = op["requestBody"]["content"]["application/json"]["schema"]
    schema = dict(schema, components=doc["components"])
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    jsonschema.Draft202012Validator(schema, format_checker=checker).validate(body)
    print("ok", body["type"])
"#;
    let output = Command::new(Path::new(bin.trim()).join("python"))
        .args(["-c", script])
        .arg(workspace_root().join("api/openapi.yaml"))
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "a webhook body does not match api/openapi.yaml:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// schemathesis's configuration: the seeded ids, drawn for their parameters half the time (the
/// other half the fuzzer makes its own, to reach `404`).
fn config(s: &Seeded) -> String {
    let bindings = [
        (
            "path.document_id",
            vec![&s.document_id, &s.requested_document_id],
        ),
        ("path.job_id", vec![&s.job_id]),
        ("path.request_id", vec![&s.request_id]),
        ("path.token", vec![&s.token]),
        ("path.webhook_id", vec![&s.webhook_id]),
        ("path.attempt_id", vec![&s.attempt_id]),
        ("path.export_id", vec![&s.export_id]),
        ("query.expires", vec![&s.link.0]),
        ("query.signature", vec![&s.link.1]),
        ("path.batch_id", vec![&s.batch_id]),
        ("path.group_id", vec![&s.group_id]),
        ("path.key_id", vec![&s.key_id]),
        ("path.identity_id", vec![&s.identity_id]),
    ];
    let mut parameters = String::from("[parameters]\n");
    let mut dictionaries = String::new();
    for (i, (name, values)) in bindings.iter().enumerate() {
        parameters.push_str(&format!(
            "\"{name}\" = {{ dictionary = \"d{i}\", probability = 0.5 }}\n"
        ));
        // TOML strings, but numbers bare (`expires` is an integer parameter).
        let values: Vec<String> = values
            .iter()
            .map(|v| match v.parse::<i64>() {
                Ok(n) => n.to_string(),
                Err(_) => format!("\"{v}\""),
            })
            .collect();
        dictionaries.push_str(&format!(
            "[dictionaries.d{i}]\nvalues = [{}]\n",
            values.join(", ")
        ));
    }
    // Only the decline operation uses the second link.
    let decline = format!(
        "[[operations]]\ninclude-operation-id = \"declineSigning\"\n\
         parameters = {{ \"path.token\" = {{ dictionary = \"decline\", probability = 0.5 }} }}\n\n\
         [dictionaries.decline]\nvalues = [\"{}\"]\n",
        s.decline_token
    );
    format!("{parameters}\n{dictionaries}\n{decline}")
}
