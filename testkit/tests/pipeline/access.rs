//! Access control (R-ACC-1 … R-ACC-3): the role × endpoint matrix, tenant isolation on every
//! endpoint that takes an id, folders limited by user groups, the IP allow-list behind a
//! trusted proxy, and rate limits.

use std::collections::HashMap;

use reqwest::Method;
use serde_json::{json, Value};
use shomei_testkit::{sample, TestApp, TestAppOptions};

use crate::{assert_problem, JOB_TIMEOUT};

const ROLES: [&str; 7] = [
    "owner",
    "admin",
    "document_manager",
    "sender",
    "member",
    "viewer",
    "auditor",
];

/// The written permission matrix (README), restated here: which roles may do what.
fn allowed(permission: &str) -> &'static [&'static str] {
    match permission {
        "read" => &ROLES,
        "upload" | "send" => &["owner", "admin", "document_manager", "sender", "member"],
        "sign" => &["owner", "admin", "document_manager", "member"],
        "manage_documents" | "export" => &["owner", "admin", "document_manager"],
        "audit" => &["owner", "admin", "auditor"],
        "integrations" | "access" | "jobs" => &["owner", "admin"],
        "cancel" => &["owner"],
        other => panic!("no permission {other}"),
    }
}

async fn call(
    app: &TestApp,
    key: &str,
    method: Method,
    path: &str,
    body: Option<&str>,
) -> reqwest::Response {
    let mut request = app.client().request(method, app.url(path)).bearer_auth(key);
    if let Some(body) = body {
        let kind = if body.starts_with('{') {
            "application/json"
        } else {
            "application/pdf"
        };
        request = request.header("content-type", kind).body(body.to_owned());
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_role_may_do_what_the_matrix_says_and_nothing_else() {
    let app = TestApp::spawn_with(TestAppOptions {
        workers: 0,
        ..TestAppOptions::default()
    })
    .await;
    let document = app.upload_ok(sample("contract.pdf")).await;
    let missing = uuid::Uuid::now_v7();
    let mut keys = HashMap::new();
    for role in ROLES {
        keys.insert(role, app.create_key(role).await);
    }
    // Bodies that fail validation after the gate (a 4xx other than 403) keep the allowed calls
    // from changing anything; the refused ones must be 403 whatever the body.
    let cases: Vec<(Method, String, Option<&str>, &str)> = vec![
        (
            Method::GET,
            format!("/v1/documents/{document}"),
            None,
            "read",
        ),
        (
            Method::GET,
            format!("/v1/documents/{document}/pdf"),
            None,
            "read",
        ),
        (
            Method::GET,
            format!("/v1/documents/{document}/verification"),
            None,
            "read",
        ),
        (Method::GET, format!("/v1/jobs/{missing}"), None, "read"),
        (Method::GET, format!("/v1/jobs?ids={missing}"), None, "read"),
        (Method::GET, format!("/v1/requests/{missing}"), None, "read"),
        (Method::GET, format!("/v1/batches/{missing}"), None, "read"),
        (Method::GET, "/v1/documents.csv".into(), None, "read"),
        (Method::GET, "/v1/tenant".into(), None, "read"),
        (Method::POST, "/v1/verify".into(), Some("not a pdf"), "read"),
        (
            Method::POST,
            "/v1/documents".into(),
            Some("not a pdf"),
            "upload",
        ),
        (
            Method::POST,
            format!("/v1/documents/{missing}/sign"),
            Some("{}"),
            "sign",
        ),
        (
            Method::POST,
            format!("/v1/documents/{missing}/timestamp"),
            None,
            "sign",
        ),
        (Method::POST, "/v1/batches".into(), Some("{}"), "sign"),
        (
            Method::POST,
            format!("/v1/documents/{missing}/requests"),
            Some("{}"),
            "send",
        ),
        (
            Method::POST,
            format!("/v1/requests/{missing}/cancel"),
            None,
            "send",
        ),
        (
            Method::DELETE,
            format!("/v1/documents/{missing}"),
            None,
            "manage_documents",
        ),
        (
            Method::POST,
            format!("/v1/documents/{missing}/holds"),
            Some("{}"),
            "manage_documents",
        ),
        (
            Method::POST,
            "/v1/exports".into(),
            Some("{\"bogus\":1}"),
            "export",
        ),
        (
            Method::GET,
            format!("/v1/exports/{missing}"),
            None,
            "export",
        ),
        (Method::GET, "/v1/audit-log.csv".into(), None, "audit"),
        (Method::GET, "/v1/usage.csv".into(), None, "audit"),
        (Method::GET, "/v1/accounts.csv".into(), None, "audit"),
        (Method::GET, "/v1/tenant/deletion-log".into(), None, "audit"),
        (
            Method::POST,
            "/v1/webhooks".into(),
            Some("{}"),
            "integrations",
        ),
        (Method::GET, "/v1/webhooks".into(), None, "integrations"),
        (
            Method::GET,
            "/v1/signer-identities".into(),
            None,
            "integrations",
        ),
        (
            Method::POST,
            "/v1/signer-identities".into(),
            Some("{}"),
            "integrations",
        ),
        (Method::POST, "/v1/groups".into(), Some("{}"), "access"),
        (Method::GET, "/v1/groups".into(), None, "access"),
        (
            Method::GET,
            "/v1/tenant/ip-allowlist".into(),
            None,
            "access",
        ),
        (
            Method::PUT,
            "/v1/tenant/ip-allowlist".into(),
            Some("{}"),
            "access",
        ),
        (Method::GET, "/v1/jobs/dead".into(), None, "jobs"),
        (
            Method::POST,
            format!("/v1/jobs/{missing}/retry"),
            None,
            "jobs",
        ),
    ];
    let mut checked = 0;
    for (method, path, body, permission) in &cases {
        for role in ROLES {
            let response = call(&app, &keys[role], method.clone(), path, *body).await;
            let status = response.status().as_u16();
            if allowed(permission).contains(&role) {
                assert!(
                    status != 403 && status != 401 && status < 500,
                    "{role} {method} {path}: {status} {}",
                    response.text().await.unwrap_or_default()
                );
            } else {
                let problem = assert_problem(response, 403).await;
                let detail = problem["detail"].as_str().unwrap();
                assert!(detail.contains(role), "{role} {method} {path}: {detail}");
            }
            checked += 1;
        }
    }
    // Cancelling the contract, last: the owner's call does it.
    for role in ROLES {
        let response = call(&app, &keys[role], Method::POST, "/v1/tenant/cancel", None).await;
        let expected = if role == "owner" { 202 } else { 403 };
        assert_eq!(response.status(), expected, "{role} cancel");
        checked += 1;
    }
    assert_eq!(checked, (cases.len() + 1) * ROLES.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn another_tenants_ids_answer_404_on_every_endpoint() {
    let app = TestApp::spawn().await;
    // Tenant A (the app's): a document signed through a job, a request, a webhook, an export,
    // a batch, a certified signer and a group.
    let document = app.upload_ok(sample("contract.pdf")).await;
    let job = app.sign_ok(&document, "Taro Suzuki").await;
    assert_eq!(
        app.wait_for_job(&job, JOB_TIMEOUT).await["status"],
        "succeeded"
    );
    let other_doc = app.upload_ok(sample("contract.pdf")).await;
    let post = |path: &'static str, body: Value| {
        let app = &app;
        async move {
            let response = app.post_json(Some(&app.api_key), path, &body).await;
            assert!(
                response.status().is_success(),
                "{path}: {}",
                response.status()
            );
            response.json::<Value>().await.unwrap()
        }
    };
    let request = app
        .post_json(
            Some(&app.api_key),
            &format!("/v1/documents/{other_doc}/requests"),
            &json!({"owner": {"name": "O", "email": "o@example.com"},
                    "signers": [{"name": "S", "email": "s@example.com", "method": "witness"}]}),
        )
        .await
        .json::<Value>()
        .await
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let webhook = post("/v1/webhooks", json!({"url": "http://127.0.0.1:9/hook"})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let export = post("/v1/exports", json!({})).await["export_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let batch = post(
        "/v1/batches",
        json!({"items": [{"document_id": document, "signer": {"name": "B"}}]}),
    )
    .await["batch_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let identity = post(
        "/v1/signer-identities",
        json!({"name": "H", "email": "h@example.jp", "key_label": "shomei-dev-signer-1", "pin": "246810"}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let group = post(
        "/v1/groups",
        json!({"name": "sales", "folders": ["/sales"]}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let attempt = uuid::Uuid::now_v7();

    // Tenant B's owner key, every endpoint, A's ids.
    let (stranger, _) = app.create_tenant_with_id("Stranger KK", &[]).await;
    let stranger_key_id = app.sql_texts(&format!(
        "SELECT id::text AS t FROM api_keys WHERE tenant_id <> '{}' ORDER BY created_at DESC LIMIT 1",
        app.tenant_id
    ))[0]
        .clone();
    let sign_body = r#"{"signer":{"name":"X"}}"#;
    let cases: Vec<(Method, String, Option<String>)> = vec![
        (Method::GET, format!("/v1/documents/{document}"), None),
        (Method::GET, format!("/v1/documents/{document}/pdf"), None),
        (Method::GET, format!("/v1/documents/{document}/verification"), None),
        (Method::POST, format!("/v1/documents/{document}/sign"), Some(sign_body.into())),
        (Method::POST, format!("/v1/documents/{document}/timestamp"), None),
        (
            Method::POST,
            format!("/v1/documents/{document}/requests"),
            Some(r#"{"owner":{"name":"O","email":"o@example.com"},"signers":[{"name":"S","email":"s@example.com","method":"witness"}]}"#.into()),
        ),
        (Method::DELETE, format!("/v1/documents/{document}"), None),
        (Method::POST, format!("/v1/documents/{document}/holds"), Some(r#"{"holder":"x"}"#.into())),
        (Method::GET, format!("/v1/jobs/{job}"), None),
        (Method::POST, format!("/v1/jobs/{job}/retry"), None),
        (Method::GET, format!("/v1/requests/{request}"), None),
        (Method::POST, format!("/v1/requests/{request}/cancel"), None),
        (Method::GET, format!("/v1/webhooks/{webhook}"), None),
        (Method::DELETE, format!("/v1/webhooks/{webhook}"), None),
        (Method::POST, format!("/v1/webhooks/{webhook}/enable"), None),
        (Method::GET, format!("/v1/webhooks/{webhook}/deliveries"), None),
        (Method::POST, format!("/v1/webhooks/{webhook}/deliveries/{attempt}/resend"), None),
        (Method::GET, format!("/v1/exports/{export}"), None),
        (Method::GET, format!("/v1/batches/{batch}"), None),
        (Method::POST, format!("/v1/signer-identities/{identity}/unlock"), None),
        (Method::PUT, format!("/v1/groups/{group}/members/{stranger_key_id}"), None),
        (Method::DELETE, format!("/v1/groups/{group}/members/{stranger_key_id}"), None),
        (Method::GET, format!("/v1/documents.csv?ids={document}"), None),
        (Method::POST, "/v1/exports".into(), Some(format!(r#"{{"ids":["{document}"]}}"#))),
        (
            Method::POST,
            "/v1/batches".into(),
            Some(format!(r#"{{"items":[{{"document_id":"{document}","signer":{{"name":"B"}}}}]}}"#)),
        ),
    ];
    for (method, path, body) in &cases {
        let response = call(&app, &stranger, method.clone(), path, body.as_deref()).await;
        assert_problem(response, 404).await;
    }
    // And A still sees all of it.
    let response = app
        .get(&app.api_key, &format!("/v1/requests/{request}"))
        .await;
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_in_a_group_sees_and_acts_only_in_its_groups_folders() {
    let app = TestApp::spawn().await;
    let upload = |folder: &'static str| {
        let app = &app;
        async move {
            let response = app.upload_to_folder(&app.api_key, folder).await;
            assert_eq!(response.status(), 201);
            response.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let sales = upload("/sales/2026").await;
    let legal = upload("/legal").await;
    let (member, _) = app.create_group_member("sales", &["/sales"]).await;

    assert_eq!(
        app.get(&member, &format!("/v1/documents/{sales}"))
            .await
            .status(),
        200
    );
    assert_problem(
        app.get(&member, &format!("/v1/documents/{legal}")).await,
        404,
    )
    .await;
    assert_problem(
        app.get(&member, &format!("/v1/documents/{legal}/pdf"))
            .await,
        404,
    )
    .await;
    let csv = app
        .get(&member, "/v1/documents.csv")
        .await
        .text()
        .await
        .unwrap();
    assert!(csv.contains(&sales) && !csv.contains(&legal), "{csv}");
    let response = app
        .sign(&member, &legal, &json!({"signer": {"name": "M"}}))
        .await;
    assert_problem(response, 404).await;
    // A job on the other folder's document is not there for it either.
    let job = app.sign_ok(&legal, "Owner Signs").await;
    assert_problem(app.get(&member, &format!("/v1/jobs/{job}")).await, 404).await;
    let listed: serde_json::Value = app
        .get(&member, &format!("/v1/jobs?ids={job}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed, json!({"jobs": []}));
    // It may put documents only into its folders.
    for (folder, status) in [("/legal", 403), ("/sales/2027", 201)] {
        let response = app.upload_to_folder(&member, folder).await;
        assert_eq!(response.status(), status, "{folder}");
    }
    // The owner's key is in no group: it sees everything.
    let csv = app
        .get(&app.api_key, "/v1/documents.csv")
        .await
        .text()
        .await
        .unwrap();
    assert!(csv.contains(&sales) && csv.contains(&legal));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ip_allow_list_admits_only_its_cidrs_as_reported_by_a_trusted_proxy() {
    // The API sits behind a proxy on loopback that reports clients in X-Forwarded-For.
    let app = TestApp::spawn_with(TestAppOptions {
        workers: 0,
        env: vec![(
            "SHOMEI_TRUSTED_PROXIES".into(),
            "127.0.0.1/32, ::1/128".into(),
        )],
        ..TestAppOptions::default()
    })
    .await;
    let from = |ip: &'static str, method: Method, path: &'static str, body: Option<Value>| {
        let app = &app;
        async move {
            let mut request = app
                .client()
                .request(method, app.url(path))
                .bearer_auth(&app.api_key)
                .header("x-forwarded-for", format!("{ip}, 127.0.0.1"));
            if let Some(body) = body {
                request = request.json(&body);
            }
            request.send().await.unwrap()
        }
    };
    let list = json!({"cidrs": ["192.0.2.0/24", "2001:db8::/32"]});
    // A list that shuts out the address asking is refused.
    let response = from(
        "198.51.100.7",
        Method::PUT,
        "/v1/tenant/ip-allowlist",
        Some(list.clone()),
    )
    .await;
    assert_problem(response, 422).await;
    let response = from(
        "192.0.2.10",
        Method::PUT,
        "/v1/tenant/ip-allowlist",
        Some(list),
    )
    .await;
    assert_eq!(response.status(), 200);

    assert_eq!(
        from("192.0.2.99", Method::GET, "/v1/tenant", None)
            .await
            .status(),
        200
    );
    assert_eq!(
        from("2001:db8:7::1", Method::GET, "/v1/tenant", None)
            .await
            .status(),
        200
    );
    let problem = assert_problem(
        from("198.51.100.7", Method::GET, "/v1/tenant", None).await,
        403,
    )
    .await;
    assert!(
        problem["detail"].as_str().unwrap().contains("198.51.100.7"),
        "{problem}"
    );
    // Without the header the client is the proxy itself (loopback), which the list does not
    // admit.
    assert_problem(app.get(&app.api_key, "/v1/tenant").await, 403).await;
    // The audit trail records the client, not the proxy.
    let response = app
        .client()
        .post(app.url("/v1/documents"))
        .bearer_auth(&app.api_key)
        .header("x-forwarded-for", "192.0.2.55")
        .header("content-type", "application/pdf")
        .body(sample("contract.pdf"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(
        app.sql_texts("SELECT ip AS t FROM events WHERE kind = 'document.uploaded'"),
        vec!["192.0.2.55".to_owned()]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_over_the_rate_limit_gets_429_with_retry_after_and_ratelimit_fields() {
    let app = TestApp::spawn_with(TestAppOptions {
        workers: 0,
        env: vec![
            ("SHOMEI_RATE_LIMIT_KEY_PER_SEC".into(), "1".into()),
            ("SHOMEI_RATE_LIMIT_KEY_BURST".into(), "5".into()),
            ("SHOMEI_RATE_LIMIT_IP_PER_SEC".into(), "1".into()),
            ("SHOMEI_RATE_LIMIT_IP_BURST".into(), "40".into()),
        ],
        ..TestAppOptions::default()
    })
    .await;
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..10 {
        let response = app.get(&app.api_key, "/v1/tenant").await;
        statuses.push(response.status().as_u16());
        if response.status() == 429 && limited.is_none() {
            limited = Some(response);
        }
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "{statuses:?}"
    );
    let limited = limited.expect("a 429");
    let headers = limited.headers().clone();
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{headers:?}");
    assert_eq!(headers["ratelimit-limit"], "5");
    assert_eq!(headers["ratelimit-remaining"], "0");
    assert!(headers.contains_key("ratelimit-reset"));
    assert_problem(limited, 429).await;
    // Another key has its own allowance.
    let other = app.create_key("viewer").await;
    assert_eq!(app.get(&other, "/v1/tenant").await.status(), 200);
    // Requests without a key (signing links) count per address: 40 at once, then 429.
    let mut by_address = Vec::new();
    for _ in 0..40 {
        let response = app
            .client()
            .get(app.url(&format!("/v1/signing/{}", "0".repeat(64))))
            .send()
            .await
            .unwrap();
        by_address.push(response.status().as_u16());
    }
    assert!(by_address.contains(&429), "{by_address:?}");
    assert!(by_address.contains(&404), "{by_address:?}");
}

/// An API process keeps the keys it checked (api/src/key_cache.rs); a change made elsewhere
/// (here by SQL from another process, as an operator or a worker deleting a tenant would) is
/// announced by PostgreSQL and refused from then on, not after the entry's age runs out.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_revoked_or_fenced_off_elsewhere_is_refused_though_the_api_had_it_cached() {
    use crate::metrics::{scrape, value};
    let app = TestApp::spawn_with(TestAppOptions {
        workers: 0,
        ..TestAppOptions::default()
    })
    .await;
    let cached = "shomei_api_key_lookups_total{source=\"cache\"}";
    for _ in 0..3 {
        assert_eq!(app.get(&app.api_key, "/v1/tenant").await.status(), 200);
    }
    let metrics = scrape(&app.url("/metrics")).await;
    assert!(
        value(&metrics, cached) >= 2.0,
        "the key was looked up once and then served from the cache:\n{metrics}"
    );
    // Polls until `path` answers `status` (the notice takes a few milliseconds to arrive),
    // for at most a few seconds: the cache keeps an entry for 30.
    let refused_within = |status: u16| {
        let app = &app;
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            loop {
                let got = app.get(&app.api_key, "/v1/tenant").await.status().as_u16();
                if got == status || std::time::Instant::now() > deadline {
                    return got;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    };

    // The tenant's allow-list, changed behind the API's back, admits no loopback client.
    app.sql_execute(&format!(
        "UPDATE tenants SET ip_allowlist = ARRAY['192.0.2.0/24'] WHERE id = '{}'",
        app.tenant_id
    ));
    assert_eq!(refused_within(403).await, 403);
    app.sql_execute(&format!(
        "UPDATE tenants SET ip_allowlist = NULL WHERE id = '{}'",
        app.tenant_id
    ));
    assert_eq!(refused_within(200).await, 200);

    // The key revoked.
    app.sql_execute(&format!(
        "UPDATE api_keys SET revoked_at = now() WHERE tenant_id = '{}'",
        app.tenant_id
    ));
    assert_eq!(refused_within(401).await, 401);
}
