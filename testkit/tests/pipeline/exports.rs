//! Bulk exports end to end: the archive is unpacked with `unzip`, checked with `sha256sum -c`,
//! its manifest read back with Python's csv module, and every PDF compared with its single
//! download and validated with pdfsig, qpdf and openssl.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use shomei_testkit::validate::{assert_externally_valid, Expected};
use shomei_testkit::{hsm_dir, sample, workspace_root, TestApp, TestAppOptions};

use crate::JOB_TIMEOUT;

/// Starts an export with `filter` and waits until it is ready; returns its view.
async fn export(app: &TestApp, filter: Value) -> Value {
    let response = app
        .post_json(Some(&app.api_key), "/v1/exports", &filter)
        .await;
    assert_eq!(response.status(), 202, "{:?}", response.text().await);
    let queued: Value = response.json().await.unwrap();
    let path = format!("/v1/exports/{}", queued["export_id"].as_str().unwrap());
    let deadline = Instant::now() + JOB_TIMEOUT;
    loop {
        let view: Value = app.get(&app.api_key, &path).await.json().await.unwrap();
        match view["status"].as_str().unwrap() {
            "ready" => return view,
            "failed" => panic!("export failed: {view}"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "export not ready: {view}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Downloads a part by its link (no API key) and unpacks it with `unzip`; returns the folder.
async fn unpack(part: &Value, name: &str) -> PathBuf {
    let url = part["url"].as_str().expect("a download link");
    let response = reqwest::get(url).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/zip");
    let zip = response.bytes().await.unwrap();
    let dir = workspace_root()
        .join("target/tmp/exports")
        .join(format!("{name}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("part.zip"), &zip).unwrap();
    let out = dir.join("unpacked");
    run(Command::new("unzip")
        .arg("-q")
        .arg(dir.join("part.zip"))
        .arg("-d")
        .arg(&out));
    // Unpacked files must be readable by their owner and others (not mode 000).
    use std::os::unix::fs::PermissionsExt;
    let csv = std::fs::metadata(out.join("documents.csv")).unwrap();
    assert_eq!(
        csv.permissions().mode() & 0o444,
        0o444,
        "documents.csv is readable"
    );
    out
}

fn run(command: &mut Command) -> String {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `documents.csv` as Python's csv module reads it (BOM stripped by `utf-8-sig`).
fn manifest(dir: &Path) -> Vec<Vec<String>> {
    let script = "import csv, json, sys\n\
                  print(json.dumps(list(csv.reader(open(sys.argv[1], encoding='utf-8-sig', newline='')))))";
    let out = run(Command::new("/usr/bin/python3")
        .args(["-c", script])
        .arg(dir.join("documents.csv")));
    let bytes = std::fs::read(dir.join("documents.csv")).unwrap();
    assert!(bytes.starts_with(b"\xEF\xBB\xBF"), "UTF-8 with BOM");
    serde_json::from_str(&out).unwrap()
}

/// `sha256sum -c SHA256SUMS` in the unpacked folder; returns how many files it checked.
fn checksums_hold(dir: &Path) -> usize {
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    if sums.is_empty() {
        return 0;
    }
    let out = run(Command::new("sha256sum")
        .args(["--strict", "-c", "SHA256SUMS"])
        .current_dir(dir));
    out.lines().filter(|l| l.ends_with(": OK")).count()
}

#[tokio::test]
async fn an_export_of_signed_documents_unzips_and_every_file_checks_out() {
    let app = TestApp::spawn().await;
    let titles = [
        "Alpha, \"quoted\" terms",
        "ベータ契約書\n第2版",
        "Gamma (never signed)",
    ];
    let mut ids = Vec::new();
    for title in titles {
        let response = app
            .upload(&app.api_key, sample("contract.pdf"), Some(title))
            .await;
        let body: Value = response.json().await.unwrap();
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    for id in &ids[..2] {
        let job = app.sign_ok(id, "山田 花子").await;
        assert_eq!(
            app.wait_for_job(&job, JOB_TIMEOUT).await["status"],
            "succeeded"
        );
    }

    let view = export(&app, json!({})).await;
    assert_eq!(
        (view["total"].as_i64(), view["done"].as_i64()),
        (Some(2), Some(2)),
        "{view}"
    );
    let parts = view["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 1);
    let dir = unpack(&parts[0], "signed").await;
    assert_eq!(checksums_hold(&dir), 2);

    let rows = manifest(&dir);
    assert_eq!(rows[0][0], "id");
    let col = |name: &str| rows[0].iter().position(|c| c == name).unwrap();
    let (file_col, sha_col) = (col("file"), col("sha256"));
    assert_eq!(
        rows.len(),
        3,
        "header and the two signed documents: {rows:?}"
    );
    for (row, (id, title)) in rows[1..].iter().zip(ids.iter().zip(titles)) {
        assert_eq!(&row[0], id);
        assert_eq!(row[col("title")], title, "titles survive quoting");
        assert_eq!(row[col("folder")], "/");
        assert_eq!(row[col("parties")], "山田 花子");
        assert_eq!(row[col("status")], "signed");
        let pdf = std::fs::read(dir.join(&row[file_col])).unwrap();
        assert_eq!(
            pdf,
            app.download(id).await,
            "byte-identical to the single download"
        );
        assert_eq!(row[sha_col], crate::sha256_hex(&pdf));
        assert_externally_valid(&format!("export-{id}"), &pdf, Expected::timestamped(1));
    }
    assert!(!std::fs::read_dir(dir.join("documents")).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains(&ids[2])));
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM events WHERE kind = 'export.ready'"),
        1
    );

    // The link is the credential: altered, it is refused; past its time, it is gone. The
    // expired link is signed here with openssl and the dev link key, not with our code.
    let url = parts[0]["url"].as_str().unwrap();
    let altered = format!("{}x", &url[..url.len() - 1]);
    assert_eq!(reqwest::get(&altered).await.unwrap().status(), 403);
    let base = url.split('?').next().unwrap();
    let export_id = view["id"].as_str().unwrap();
    let expired = chrono::Utc::now().timestamp() - 60;
    let key = std::fs::read_to_string(hsm_dir().join("link-key")).unwrap();
    let mac = run(Command::new("sh").arg("-c").arg(format!(
        "printf '%s' 'export:{export_id}:1:{expired}' | openssl dgst -sha256 -hmac '{}' -binary \
         | openssl base64 -A | tr '+/' '-_' | tr -d '='",
        key.trim()
    )));
    let status = reqwest::get(format!("{base}?expires={expired}&signature={}", mac.trim()))
        .await
        .unwrap()
        .status();
    assert_eq!(status, 410, "a correctly signed but expired link");
}

#[tokio::test]
async fn exports_refuse_foreign_ids_and_other_roles_and_may_be_empty() {
    let app = TestApp::spawn().await;
    let own = app.upload_ok(sample("contract.pdf")).await;
    let stranger = app.create_tenant("Another company").await;
    let response = app
        .upload(&stranger, sample("contract.pdf"), Some("theirs"))
        .await;
    let foreign: Value = response.json().await.unwrap();
    let foreign = foreign["id"].as_str().unwrap();

    for ids in [json!([foreign]), json!([own, foreign])] {
        let response = app
            .post_json(Some(&app.api_key), "/v1/exports", &json!({"ids": ids}))
            .await;
        assert_eq!(response.status(), 404, "{ids}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }
    assert_eq!(app.sql_count("SELECT count(*) AS n FROM exports"), 0);

    let member = app.create_key("member").await;
    let response = app
        .post_json(Some(&member), "/v1/exports", &json!({}))
        .await;
    assert_eq!(response.status(), 403);
    let problem: Value = response.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("member"),
        "{problem}"
    );

    let response = app
        .post_json(
            Some(&app.api_key),
            "/v1/exports",
            &json!({"status": "bogus"}),
        )
        .await;
    assert_eq!(response.status(), 400);

    // Nothing matches (the one document is unsigned): an archive with an empty manifest.
    let view = export(&app, json!({"ids": [own]})).await;
    assert_eq!(view["done"], 0);
    let dir = unpack(&view["parts"][0], "empty").await;
    assert_eq!(manifest(&dir).len(), 1, "header only");
    assert_eq!(checksums_hold(&dir), 0);
}

#[tokio::test]
async fn a_large_export_is_split_into_complete_parts() {
    let app = TestApp::spawn_with(TestAppOptions {
        // A signed sample is about 25 kB: two per part at most.
        env: vec![("SHOMEI_EXPORT_PART_BYTES".into(), "60000".into())],
        ..TestAppOptions::default()
    })
    .await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = app.upload_ok(sample("contract.pdf")).await;
        let job = app.sign_ok(&id, "Signer").await;
        assert_eq!(
            app.wait_for_job(&job, JOB_TIMEOUT).await["status"],
            "succeeded"
        );
        ids.push(id);
    }
    let view = export(&app, json!({"status": "signed"})).await;
    let parts = view["parts"].as_array().unwrap();
    assert!(parts.len() >= 2, "{view}");
    let mut seen = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let dir = unpack(part, &format!("part{i}")).await;
        let checked = checksums_hold(&dir);
        let rows = manifest(&dir);
        assert_eq!(
            checked,
            rows.len() - 1,
            "each part has its own manifest and sums"
        );
        assert_eq!(part["documents"].as_u64(), Some(checked as u64));
        seen.extend(rows[1..].iter().map(|r| r[0].clone()));
    }
    seen.sort();
    ids.sort();
    assert_eq!(seen, ids, "every document in exactly one part");
}

#[tokio::test]
async fn an_export_selects_a_folder_with_its_subfolders() {
    let app = TestApp::spawn().await;
    let mut by_folder = std::collections::BTreeMap::new();
    for folder in ["/sales", "/sales/2026", "/salesforce", "/"] {
        let response = app.upload_to_folder(&app.api_key, folder).await;
        assert_eq!(response.status(), 201);
        let doc: Value = response.json().await.unwrap();
        assert_eq!(doc["folder"], folder);
        let id = doc["id"].as_str().unwrap().to_owned();
        let job = app.sign_ok(&id, "Signer").await;
        assert_eq!(
            app.wait_for_job(&job, JOB_TIMEOUT).await["status"],
            "succeeded"
        );
        by_folder.insert(folder, id);
    }
    let response = app
        .client
        .post(app.url("/v1/documents"))
        .query(&[("folder", "/a/../b")])
        .bearer_auth(&app.api_key)
        .header("content-type", "application/pdf")
        .body(sample("contract.pdf"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400, "a folder path with .. is refused");

    let view = export(&app, json!({"folder": "/sales/"})).await;
    let dir = unpack(&view["parts"][0], "folder").await;
    let rows = manifest(&dir);
    let folder_col = rows[0].iter().position(|c| c == "folder").unwrap();
    let mut got: Vec<(String, String)> = rows[1..]
        .iter()
        .map(|r| (r[folder_col].clone(), r[0].clone()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("/sales".to_owned(), by_folder["/sales"].clone()),
            ("/sales/2026".to_owned(), by_folder["/sales/2026"].clone()),
        ],
        "/salesforce and the root are not in /sales"
    );
}
