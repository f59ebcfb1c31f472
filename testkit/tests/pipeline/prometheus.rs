//! A real Prometheus (Debian's package) scrapes a running pipeline while it works, and every
//! query of the operators' dashboard (`dashboards/grafana/shomei.json`) returns data. The work
//! includes what some panels exist for: a job that fails for good, a webhook endpoint that
//! answers 410, e-mails, time-stamps.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use shomei_testkit::webhook_receiver::WebhookReceiver;
use shomei_testkit::{sample, workspace_root, TestApp, TestAppOptions};

use crate::JOB_TIMEOUT;

/// Queries that only return data during an incident this test does not cause (server
/// errors of the API): they must still be valid PromQL, which Prometheus checks.
const NEED_AN_INCIDENT: [&str; 2] = [
    "sum(rate(shomei_http_requests_total{status=~\"5..\"}[5m])) / sum(rate(shomei_http_requests_total[5m]))",
    "sum by (route, method, status) (rate(shomei_http_requests_total{status=~\"5..\"}[5m]))",
];

fn dashboard_queries() -> Vec<String> {
    let path = workspace_root().join("dashboards/grafana/shomei.json");
    let dashboard: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let mut queries = Vec::new();
    fn walk(panels: &Value, out: &mut Vec<String>) {
        for panel in panels.as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                out.push(target["expr"].as_str().unwrap().to_owned());
            }
            walk(&panel["panels"], out);
        }
    }
    walk(&dashboard["panels"], &mut queries);
    queries
}

struct Prometheus {
    child: Child,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts Prometheus scraping `targets` (job name → host:port list) every second.
fn start_prometheus(targets: &[(&str, Vec<String>)]) -> Prometheus {
    let dir = workspace_root()
        .join("target/tmp/prometheus")
        .join(uuid::Uuid::new_v4().to_string());
    std::fs::create_dir_all(&dir).unwrap();
    let mut config = String::from(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
    );
    for (job, hosts) in targets {
        let list: Vec<String> = hosts.iter().map(|h| format!("'{h}'")).collect();
        config.push_str(&format!(
            "  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n",
            list.join(", ")
        ));
    }
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .expect("prometheus (Debian package, installed by scripts/prepare-machine.sh)");
    Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

async fn query(prometheus: &Prometheus, expr: &str) -> Value {
    let response = reqwest::Client::new()
        .get(format!("{}/api/v1/query", prometheus.url))
        .query(&[("query", expr)])
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "success", "{expr}: {body}");
    body["data"]["result"].clone()
}

fn host(url: &str) -> String {
    url.trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn every_dashboard_query_returns_data_from_a_working_pipeline() {
    let app = TestApp::spawn_with(TestAppOptions {
        workers: 2,
        ..TestAppOptions::default()
    })
    .await;
    let prometheus = start_prometheus(&[
        ("shomei-api", vec![host(&app.base_url)]),
        (
            "shomei-worker",
            vec![
                host(app.worker_metrics_url(0)),
                host(app.worker_metrics_url(1)),
            ],
        ),
        ("shomei-tsa", vec![host(&app.tsa_url(""))]),
    ]);

    // A webhook endpoint that is gone (410), so the disabled-endpoint panel has its event.
    let receiver = WebhookReceiver::start("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").await;
    receiver.script(vec![(410, vec![])]);
    let response = app
        .post_json(
            Some(&app.api_key),
            "/v1/webhooks",
            &json!({"url": receiver.url(), "event_kinds": ["document.uploaded"]}),
        )
        .await;
    assert_eq!(response.status(), 201);

    // A certified signer whose key is not in the HSM: the sign job fails for good.
    let response = app
        .post_json(
            Some(&app.api_key),
            "/v1/signer-identities",
            &json!({"name": "No Key", "email": "nokey@example.com",
                    "key_label": "no-such-key", "pin": "135790"}),
        )
        .await;
    assert_eq!(response.status(), 201);

    // Work for a while: signatures with time-stamps, a request with its e-mail, the failure.
    let deadline = Instant::now() + Duration::from_secs(12);
    let mut round = 0;
    while Instant::now() < deadline {
        let document = app.upload_ok(sample("contract.pdf")).await;
        let job = app.sign_ok(&document, "Prometheus").await;
        assert_eq!(
            app.wait_for_job(&job, JOB_TIMEOUT).await["status"],
            "succeeded"
        );
        if round == 0 {
            let document = app.upload_ok(sample("contract.pdf")).await;
            let response = app
                .post_json(
                    Some(&app.api_key),
                    &format!("/v1/documents/{document}/requests"),
                    &json!({"owner": {"name": "O", "email": "owner@example.com"}, "locale": "en",
                            "signers": [{"name": "No Key", "email": "nokey@example.com",
                                         "method": "certified"}]}),
                )
                .await;
            assert_eq!(response.status(), 201);
        }
        round += 1;
    }
    let mail = loop {
        if let Some(mail) = app
            .mail_files()
            .into_iter()
            .find(|m| m.to_header.contains("nokey@example.com"))
        {
            break mail;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let start = mail.text.find("/v1/signing/").unwrap() + 12;
    let token: String = mail.text[start..].chars().take(64).collect();
    let response = app
        .post_json(
            None,
            &format!("/v1/signing/{token}/sign"),
            &json!({"pin": "135790"}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let failed: Value = response.json().await.unwrap();
    assert_eq!(
        app.wait_for_job(failed["job_id"].as_str().unwrap(), JOB_TIMEOUT)
            .await["status"],
        "failed"
    );
    // Let Prometheus scrape the last of it and every rate window see two samples.
    tokio::time::sleep(Duration::from_secs(4)).await;

    let queries = dashboard_queries();
    assert!(queries.len() > 40, "{} queries", queries.len());
    let mut empty = Vec::new();
    for expr in &queries {
        let result = query(&prometheus, expr).await;
        if result.as_array().is_none_or(Vec::is_empty) && !NEED_AN_INCIDENT.contains(&expr.as_str())
        {
            empty.push(expr.clone());
        }
    }
    assert!(
        empty.is_empty(),
        "dashboard queries without data:\n{}",
        empty.join("\n")
    );
    // Every target was scraped. A single scrape may time out (1 s at this interval) on a
    // machine busy with the rest of the test suite, so the check covers the whole run.
    let up = query(&prometheus, "max_over_time(up[30s])").await;
    assert_eq!(up.as_array().unwrap().len(), 4, "{up}");
    assert!(
        up.as_array().unwrap().iter().all(|s| s["value"][1] == "1"),
        "{up}"
    );
}
