//! CSV reports end to end (see api/src/routes/reports.rs). Every CSV is read back with Python's
//! `csv` module, a reader that shares no code with the API.

use std::collections::HashMap;
use std::process::Command;

use serde_json::{json, Value};

use shomei_testkit::{sample, TestApp, TestAppOptions};

use crate::{assert_problem, sha256_hex, JOB_TIMEOUT};

const BOM: &[u8] = b"\xEF\xBB\xBF";

const DOCUMENT_COLUMNS: [&str; 11] = [
    "id",
    "title",
    "folder",
    "parties",
    "status",
    "pages",
    "created_at",
    "signed_at",
    "revision",
    "sha256",
    "size_bytes",
];

/// A CSV as the independent reader saw it: the header row and each row by column name.
#[derive(Debug)]
struct Csv {
    header: Vec<String>,
    rows: Vec<HashMap<String, String>>,
}

impl Csv {
    fn row(&self, column: &str, value: &str) -> &HashMap<String, String> {
        self.rows
            .iter()
            .find(|r| r[column] == value)
            .unwrap_or_else(|| panic!("no row with {column}={value:?} in {self:#?}"))
    }

    fn column(&self, column: &str) -> Vec<&str> {
        self.rows.iter().map(|r| r[column].as_str()).collect()
    }
}

/// Parses with `/usr/bin/python3`'s `csv` module (`utf-8-sig` drops a byte-order mark).
fn parse_csv(bytes: &[u8]) -> Csv {
    let path = std::env::temp_dir().join(format!("shomei-report-{}.csv", uuid::Uuid::new_v4()));
    std::fs::write(&path, bytes).unwrap();
    let output = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import csv, json, sys\n\
             with open(sys.argv[1], encoding='utf-8-sig', newline='') as f:\n    \
                 print(json.dumps(list(csv.reader(f))))",
        ])
        .arg(&path)
        .output()
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(
        output.status.success(),
        "python csv: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut records: Vec<Vec<String>> = serde_json::from_slice(&output.stdout).unwrap();
    assert!(!records.is_empty(), "a CSV always has its header row");
    let header = records.remove(0);
    let rows = records
        .into_iter()
        .map(|record| {
            assert_eq!(record.len(), header.len(), "{record:?}");
            header.iter().cloned().zip(record).collect()
        })
        .collect();
    Csv { header, rows }
}

/// `GET path?query` as `key`; checks the headers every report answers with; the raw body.
async fn csv_bytes(app: &TestApp, key: &str, path: &str, query: &[(&str, &str)]) -> Vec<u8> {
    let response = app
        .client
        .get(app.url(path))
        .query(query)
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.bytes().await.unwrap().to_vec();
    assert_eq!(
        status,
        200,
        "{path} {query:?}: {}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(headers["content-type"], "text/csv; charset=utf-8");
    let disposition = headers["content-disposition"].to_str().unwrap();
    assert!(
        disposition.starts_with("attachment; filename=\"") && disposition.ends_with(".csv\""),
        "{disposition}"
    );
    assert!(body.ends_with(b"\r\n"), "CSV lines end in CRLF");
    body
}

async fn csv(app: &TestApp, key: &str, path: &str, query: &[(&str, &str)]) -> Csv {
    parse_csv(&csv_bytes(app, key, path, query).await)
}

async fn problem(
    app: &TestApp,
    key: &str,
    path: &str,
    query: &[(&str, &str)],
    status: u16,
) -> Value {
    let response = app
        .client
        .get(app.url(path))
        .query(query)
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_problem(response, status).await
}

async fn upload_titled(app: &TestApp, key: &str, title: &str) -> String {
    let response = app.upload(key, sample("contract.pdf"), Some(title)).await;
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
    let body: Value = response.json().await.unwrap();
    body["id"].as_str().unwrap().to_owned()
}

async fn sign_and_wait(app: &TestApp, document: &str, signer: &str) {
    let job = app.sign_ok(document, signer).await;
    let job = app.wait_for_job(&job, JOB_TIMEOUT).await;
    assert_eq!(job["status"], "succeeded", "{job}");
}

/// A UTC time `offset_secs` from now as RFC 3339, from GNU `date` (no date code shared).
fn utc_time(offset_secs: i64) -> String {
    let output = Command::new("date")
        .args([
            "-u",
            "-d",
            &format!("{offset_secs} seconds"),
            "+%Y-%m-%dT%H:%M:%SZ",
        ])
        .output()
        .unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn contract_details_round_trip_awkward_titles_and_filter_by_status_and_title() {
    let app = TestApp::spawn().await;
    let awkward = "業務委託契約書, \"第2版\"\n別紙あり";
    let signed = upload_titled(&app, &app.api_key, awkward).await;
    let plain = upload_titled(&app, &app.api_key, "Plain NDA").await;
    sign_and_wait(&app, &signed, "山田 太郎").await;

    let bytes = csv_bytes(&app, &app.api_key, "/v1/documents.csv", &[]).await;
    assert!(
        bytes.starts_with(BOM),
        "UTF-8 with a byte-order mark by default"
    );
    let all = parse_csv(&bytes);
    assert_eq!(all.header, DOCUMENT_COLUMNS);
    assert_eq!(
        all.column("id"),
        [signed.as_str(), plain.as_str()],
        "in upload order"
    );

    let row = all.row("id", &signed);
    assert_eq!(row["title"], awkward);
    assert_eq!(row["status"], "signed");
    assert!(row["parties"].contains("山田 太郎"), "{row:?}");
    assert_eq!(row["revision"], "1");
    assert!(!row["signed_at"].is_empty());
    assert_eq!(row["sha256"], sha256_hex(&app.download(&signed).await));
    let unsigned = all.row("id", &plain);
    assert_eq!(unsigned["status"], "uploaded");
    assert_eq!(unsigned["signed_at"], "");
    assert_eq!(unsigned["parties"], "");
    assert_eq!(unsigned["sha256"], sha256_hex(&app.download(&plain).await));

    let bytes = csv_bytes(
        &app,
        &app.api_key,
        "/v1/documents.csv",
        &[("encoding", "utf-8")],
    )
    .await;
    assert!(!bytes.starts_with(BOM), "no mark with ?encoding=utf-8");
    assert_eq!(parse_csv(&bytes).rows, all.rows);

    let only_signed = csv(
        &app,
        &app.api_key,
        "/v1/documents.csv",
        &[("status", "signed")],
    )
    .await;
    assert_eq!(only_signed.column("id"), [signed.as_str()]);
    let by_title = csv(
        &app,
        &app.api_key,
        "/v1/documents.csv",
        &[("title_contains", "第2版")],
    )
    .await;
    assert_eq!(by_title.column("id"), [signed.as_str()]);
    let case_blind = csv(
        &app,
        &app.api_key,
        "/v1/documents.csv",
        &[("title_contains", "nda")],
    )
    .await;
    assert_eq!(case_blind.column("id"), [plain.as_str()]);
    let by_ids = csv(&app, &app.api_key, "/v1/documents.csv", &[("ids", &plain)]).await;
    assert_eq!(by_ids.column("id"), [plain.as_str()]);

    let problem_detail = problem(
        &app,
        &app.api_key,
        "/v1/documents.csv",
        &[("encoding", "shift_jis")],
        400,
    )
    .await;
    assert!(problem_detail["detail"]
        .as_str()
        .unwrap()
        .contains("shift_jis"));
    for bad in [
        ("stauts", "signed"),
        ("status", "lost"),
        ("signed_from", "yesterday"),
    ] {
        problem(&app, &app.api_key, "/v1/documents.csv", &[bad], 400).await;
    }
}

#[tokio::test]
async fn a_filter_matching_nothing_gives_only_the_header_row() {
    let app = TestApp::spawn_with(TestAppOptions {
        workers: 0,
        ..TestAppOptions::default()
    })
    .await;
    upload_titled(&app, &app.api_key, "Contract").await;
    for query in [
        [("status", "declined")],
        [("title_contains", "no such title")],
        [("signed_from", "2020-01-01")],
    ] {
        let bytes = csv_bytes(&app, &app.api_key, "/v1/documents.csv", &query).await;
        let header = format!("{}\r\n", DOCUMENT_COLUMNS.join(","));
        assert_eq!(bytes, [BOM, header.as_bytes()].concat(), "{query:?}");
        let parsed = parse_csv(&bytes);
        assert_eq!(parsed.header, DOCUMENT_COLUMNS);
        assert!(parsed.rows.is_empty());
    }
}

#[tokio::test]
async fn another_tenants_ids_are_refused_and_a_viewer_reads_only_contract_details() {
    let app = TestApp::spawn_with(TestAppOptions {
        workers: 0,
        ..TestAppOptions::default()
    })
    .await;
    let own = upload_titled(&app, &app.api_key, "Ours").await;
    let other_key = app.create_tenant("Other tenant").await;
    let foreign = upload_titled(&app, &other_key, "Their secret deal").await;

    let both = format!("{own},{foreign}");
    let refused = problem(
        &app,
        &app.api_key,
        "/v1/documents.csv",
        &[("ids", &both)],
        404,
    )
    .await;
    let unknown = format!("{own},{}", uuid::Uuid::now_v7());
    let missing = problem(
        &app,
        &app.api_key,
        "/v1/documents.csv",
        &[("ids", &unknown)],
        404,
    )
    .await;
    assert_eq!(
        refused["detail"], missing["detail"],
        "another tenant's id answers like an id that does not exist"
    );
    assert!(!refused.to_string().contains(&foreign));

    let bytes = csv_bytes(&app, &app.api_key, "/v1/documents.csv", &[]).await;
    let text = String::from_utf8(bytes.clone()).unwrap();
    assert!(!text.contains(&foreign) && !text.contains("Their secret deal"));
    assert_eq!(parse_csv(&bytes).column("id"), [own.as_str()]);

    let viewer = app.create_key("viewer").await;
    let seen = csv(&app, &viewer, "/v1/documents.csv", &[]).await;
    assert_eq!(seen.column("id"), [own.as_str()]);
    let span: &[(&str, &str)] = &[("from", "2026-01-01"), ("to", "2026-02-01")];
    for (path, query) in [
        ("/v1/audit-log.csv", span),
        ("/v1/usage.csv", &[]),
        ("/v1/accounts.csv", &[]),
    ] {
        let body = problem(&app, &viewer, path, query, 403).await;
        assert!(
            body["detail"].as_str().unwrap().contains("viewer"),
            "{body}"
        );
    }
}

#[tokio::test]
async fn the_audit_log_shows_the_upload_and_the_signature_and_refuses_long_spans() {
    let app = TestApp::spawn().await;
    let from = utc_time(-60);
    let document = app.upload_ok(sample("contract.pdf")).await;
    sign_and_wait(&app, &document, "Hanako Sato").await;
    let to = utc_time(60);

    let keys = csv(&app, &app.api_key, "/v1/accounts.csv", &[]).await;
    let owner_key_id = keys.row("role", "owner")["key_id"].clone();

    let log = csv(
        &app,
        &app.api_key,
        "/v1/audit-log.csv",
        &[("from", &from), ("to", &to)],
    )
    .await;
    assert_eq!(
        log.header,
        [
            "time",
            "actor",
            "ip",
            "action",
            "document_id",
            "request_id",
            "details"
        ]
    );
    let uploaded = log.row("action", "document.uploaded");
    assert_eq!(uploaded["document_id"], document);
    assert_eq!(uploaded["actor"], format!("api_key:{owner_key_id}"));
    assert_eq!(uploaded["ip"], "127.0.0.1");
    let details: Value = serde_json::from_str(&uploaded["details"]).unwrap();
    assert_eq!(details["title"], "Contract", "{details}");
    let signed = log.row("action", "document.signed");
    assert_eq!(signed["document_id"], document);
    assert!(!signed["actor"].is_empty());
    let times = log.column("time");
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "in time order: {times:?}"
    );
    assert!(times
        .iter()
        .all(|t| *t >= from.as_str() && *t <= to.as_str()));

    // Exactly three calendar months (dates mean midnight UTC) is allowed; a second more is not.
    let quiet = csv(
        &app,
        &app.api_key,
        "/v1/audit-log.csv",
        &[("from", "2020-01-31"), ("to", "2020-04-30")],
    )
    .await;
    assert!(quiet.rows.is_empty());
    let too_long = problem(
        &app,
        &app.api_key,
        "/v1/audit-log.csv",
        &[("from", "2020-01-31"), ("to", "2020-04-30T00:00:01Z")],
        400,
    )
    .await;
    assert!(
        too_long["detail"].as_str().unwrap().contains("3 months"),
        "{too_long}"
    );
    let missing = problem(&app, &app.api_key, "/v1/audit-log.csv", &[("to", &to)], 400).await;
    assert!(
        missing["detail"].as_str().unwrap().contains("from"),
        "{missing}"
    );
    problem(
        &app,
        &app.api_key,
        "/v1/audit-log.csv",
        &[("from", &to), ("to", &from)],
        400,
    )
    .await;
}

#[tokio::test]
async fn the_usage_statement_counts_this_months_requests_and_keeps_two_years() {
    let app = TestApp::spawn().await;
    let requested = app.upload_ok(sample("contract.pdf")).await;
    let response = app
        .post_json(
            Some(&app.api_key),
            &format!("/v1/documents/{requested}/requests"),
            &json!({
                "owner": {"name": "O", "email": "owner@example.com"},
                "signers": [{"name": "S", "email": "s@example.com", "method": "witness"}],
            }),
        )
        .await;
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
    let signed = app.upload_ok(sample("contract.pdf")).await;
    sign_and_wait(&app, &signed, "Direct Signer").await;

    let all = csv(&app, &app.api_key, "/v1/usage.csv", &[]).await;
    assert_eq!(
        all.header,
        ["month", "requests_sent", "invitations_sent", "signatures"]
    );
    assert_eq!(all.rows.len(), 24);
    let months = all.column("month");
    assert!(
        months.windows(2).all(|w| w[0] > w[1]),
        "newest first: {months:?}"
    );
    let current = months[0].to_owned();
    let expected: HashMap<String, String> = [
        ("month", current.as_str()),
        ("requests_sent", "1"),
        ("invitations_sent", "1"),
        ("signatures", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(all.rows[0], expected);
    assert!(all.rows[1..]
        .iter()
        .all(|r| r["requests_sent"] == "0" && r["signatures"] == "0"));

    let one = csv(&app, &app.api_key, "/v1/usage.csv", &[("month", &current)]).await;
    assert_eq!(one.rows, [expected]);

    let year: i32 = current[..4].parse().unwrap();
    let three_years_ago = format!("{}{}", year - 3, &current[4..]);
    let old = problem(
        &app,
        &app.api_key,
        "/v1/usage.csv",
        &[("month", &three_years_ago)],
        422,
    )
    .await;
    assert!(old["detail"].as_str().unwrap().contains("2 years"), "{old}");
    for month in ["2026-4", "April"] {
        problem(
            &app,
            &app.api_key,
            "/v1/usage.csv",
            &[("month", month)],
            400,
        )
        .await;
    }
}

#[tokio::test]
async fn the_accounts_list_shows_each_key_and_role_and_never_a_secret() {
    let app = TestApp::spawn_with(TestAppOptions {
        workers: 0,
        ..TestAppOptions::default()
    })
    .await;
    let viewer = app.create_key("viewer").await;
    let admin = app.create_key("admin").await;

    let bytes = csv_bytes(&app, &app.api_key, "/v1/accounts.csv", &[]).await;
    let text = String::from_utf8(bytes.clone()).unwrap();
    for secret in [&app.api_key, &viewer, &admin] {
        assert!(!text.contains(secret.as_str()), "a key appears in the CSV");
    }
    let accounts = parse_csv(&bytes);
    assert_eq!(
        accounts.header,
        [
            "key_id",
            "prefix",
            "name",
            "role",
            "status",
            "created_at",
            "revoked_at"
        ]
    );
    assert_eq!(
        accounts.column("role"),
        ["owner", "viewer", "admin"],
        "oldest first"
    );
    for (row, key) in accounts.rows.iter().zip([&app.api_key, &viewer, &admin]) {
        assert!(key.starts_with(&row["prefix"]), "{row:?}");
        assert!(
            row["prefix"].len() < key.len() / 2,
            "only a short prefix: {row:?}"
        );
        assert_eq!(row["status"], "active");
        assert_eq!(row["revoked_at"], "");
        uuid::Uuid::parse_str(&row["key_id"]).unwrap();
    }

    // An admin key may read it too.
    let seen_by_admin = csv(&app, &admin, "/v1/accounts.csv", &[("encoding", "utf-8")]).await;
    assert_eq!(seen_by_admin.rows, accounts.rows);
}

#[tokio::test]
async fn reports_longer_than_a_page_arrive_whole_in_order_and_streamed() {
    let app = TestApp::spawn_with(TestAppOptions {
        workers: 0,
        ..TestAppOptions::default()
    })
    .await;
    const N: usize = 1234;
    let tenant = &app.tenant_id;
    app.sql_execute(&format!(
        "INSERT INTO documents (id, tenant_id, title, pages) \
         SELECT gen_random_uuid(), '{tenant}', 'Bulk ' || n, 1 FROM generate_series(1, {N}) n"
    ));
    app.sql_execute(
        "INSERT INTO document_revisions (document_id, revision, sha256, size_bytes, storage_key) \
         SELECT id, 0, sha256(id::text::bytea), 100, 'bulk/' || id FROM documents",
    );
    // All at one instant: pages must still split between rows of the same time.
    app.sql_execute(&format!(
        "INSERT INTO events (id, tenant_id, kind, actor, data, created_at) \
         SELECT gen_random_uuid(), '{tenant}', 'document.uploaded', 'test', \
                jsonb_build_object('n', n), '2020-02-01T00:00:00Z' \
           FROM generate_series(1, {N}) n"
    ));

    let response = app.get(&app.api_key, "/v1/documents.csv").await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers().get("content-length").is_none(),
        "the body is streamed, not sized in advance"
    );
    let documents = parse_csv(&response.bytes().await.unwrap());
    let ids = documents.column("id");
    assert_eq!(ids.len(), N);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "each once, by id");
    let mut titles: Vec<&str> = documents.column("title");
    titles.sort_unstable();
    titles.dedup();
    assert_eq!(titles.len(), N);

    let log = csv(
        &app,
        &app.api_key,
        "/v1/audit-log.csv",
        &[("from", "2020-01-01"), ("to", "2020-03-01")],
    )
    .await;
    let mut seen: Vec<u64> = log
        .column("details")
        .iter()
        .map(|d| {
            serde_json::from_str::<Value>(d).unwrap()["n"]
                .as_u64()
                .unwrap()
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (1..=N as u64).collect::<Vec<_>>(), "every event once");
}
