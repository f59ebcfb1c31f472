//! Deletion (R-DEL-1 … R-DEL-4): a cancelled tenant's files go at the end of the second month
//! after the month of cancellation (and not before), with evidence per object; the content key
//! is destroyed so a backup taken before is unreadable; records stay, marked deleted.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Datelike, FixedOffset, Months, NaiveTime, Utc};
use serde_json::{json, Value};
use shomei_testkit::{sample, TestApp, TestAppOptions};

use crate::{assert_problem, sha256_hex, JOB_TIMEOUT};

/// Every file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The first instant of the third month after `t`'s month, in Tokyo (+09:00), worked out here
/// with chrono alone.
fn end_of_second_month_after(t: DateTime<Utc>) -> DateTime<Utc> {
    let tokyo = FixedOffset::east_opt(9 * 3600).unwrap();
    let first = t.with_timezone(&tokyo).date_naive().with_day(1).unwrap();
    (first + Months::new(3))
        .and_time(NaiveTime::MIN)
        .and_local_timezone(tokyo)
        .unwrap()
        .with_timezone(&Utc)
}

async fn signed_document(app: &TestApp) -> String {
    let document = app.upload_ok(sample("contract.pdf")).await;
    let job = app
        .wait_for_job(&app.sign_ok(&document, "Taro Suzuki").await, JOB_TIMEOUT)
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    document
}

async fn cancel(app: &TestApp) -> Value {
    let response = app
        .post_json(Some(&app.api_key), "/v1/tenant/cancel", &json!({}))
        .await;
    assert_eq!(response.status(), 202);
    response.json().await.unwrap()
}

fn job_state(app: &TestApp, job_id: &str) -> (String, String, i64) {
    let row = app.sql_texts(&format!(
        "SELECT status || '|' || coalesce(to_char(run_after AT TIME ZONE 'UTC', \
         'YYYY-MM-DD\"T\"HH24:MI:SS'), '') || '|' || attempts AS t FROM jobs WHERE id = '{job_id}'"
    ));
    let mut parts = row[0].split('|');
    (
        parts.next().unwrap().to_owned(),
        parts.next().unwrap().to_owned(),
        parts.next().unwrap().parse().unwrap(),
    )
}

/// Opens a sealed file with `shomei-api storage open` (a fresh process: no cached key).
fn open_sealed(app: &TestApp, file: &Path) -> std::process::Output {
    let out = app.log_dir().join("opened.bin");
    app.cli_output(&[
        "storage",
        "open",
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_tenant_is_deleted_only_when_due_and_its_backups_become_unreadable() {
    // Three workers run the reconciler that pushes due jobs: the deletion still runs once.
    let app = TestApp::spawn_with(TestAppOptions {
        workers: 3,
        ..TestAppOptions::default()
    })
    .await;
    let documents = [signed_document(&app).await, signed_document(&app).await];
    let tenant_dir = app.storage_dir().join(format!("tenants/{}", app.tenant_id));

    let cancelled = cancel(&app).await;
    let cancelled_at: DateTime<Utc> = cancelled["cancelled_at"].as_str().unwrap().parse().unwrap();
    let due: DateTime<Utc> = cancelled["deletion_due_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(due, end_of_second_month_after(cancelled_at), "{cancelled}");
    assert!(due - cancelled_at > chrono::Duration::days(59));
    let job_id = cancelled["deletion_job_id"].as_str().unwrap().to_owned();
    let again = cancel(&app).await;
    assert_eq!(
        again["deletion_job_id"],
        job_id.as_str(),
        "asking twice schedules once"
    );
    assert_eq!(again["cancelled_at"], cancelled["cancelled_at"]);
    let member = app.create_key("member").await;
    let refused = app
        .post_json(Some(&member), "/v1/tenant/cancel", &json!({}))
        .await;
    assert_problem(refused, 403).await;

    // A backup: the stored files and the data key rows as they are now. It opens.
    let backup_dir = app.log_dir().join("backup");
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(&tenant_dir)
        .arg(&backup_dir)
        .status()
        .unwrap();
    assert!(copied.success());
    let backup = files(&backup_dir);
    assert!(
        backup.len() >= 4,
        "two uploads and two signed revisions: {backup:?}"
    );
    let backed_up_keys = app.sql_texts(
        "SELECT id || '|' || encode(wrapped, 'hex') AS t FROM data_keys WHERE purpose = 'content'",
    );
    assert_eq!(backed_up_keys.len(), 1);
    let opened = open_sealed(&app, &backup[0]);
    assert!(
        opened.status.success(),
        "{}",
        String::from_utf8_lossy(&opened.stderr)
    );

    // Not before its date: the job waits in PostgreSQL …
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, run_after, attempts) = job_state(&app, &job_id);
    assert_eq!((status.as_str(), attempts), ("queued", 0));
    assert_eq!(run_after, due.format("%Y-%m-%dT%H:%M:%S").to_string());
    // … and pushed early by hand, it refuses to delete and waits again.
    app.sql_execute(&format!(
        "UPDATE jobs SET run_after = now() - interval '1 second' WHERE id = '{job_id}'"
    ));
    let deadline = std::time::Instant::now() + JOB_TIMEOUT;
    loop {
        let (status, run_after, attempts) = job_state(&app, &job_id);
        if attempts >= 1 && status == "queued" {
            assert_eq!(run_after, due.format("%Y-%m-%dT%H:%M:%S").to_string());
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the early run never came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        files(&tenant_dir).len(),
        backup.len(),
        "nothing deleted early"
    );

    // The date comes.
    app.sql_execute(&format!(
        "UPDATE tenants SET deletion_due_at = now() - interval '1 second' WHERE id = '{}'",
        app.tenant_id
    ));
    app.sql_execute(&format!(
        "UPDATE jobs SET run_after = now() WHERE id = '{job_id}'"
    ));
    // Read from PostgreSQL: once the tenant is deleted its API keys no longer work.
    let deadline = std::time::Instant::now() + JOB_TIMEOUT;
    while job_state(&app, &job_id).0 != "succeeded" {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            job_state(&app, &job_id)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let result = &app.sql_texts(&format!(
        "SELECT result::text AS t FROM jobs WHERE id = '{job_id}'"
    ))[0];
    let result: Value = serde_json::from_str(result).unwrap();
    assert_eq!(result["documents_deleted"], 2, "{result}");

    // The files are gone, with one evidence row each, naming the bytes that were stored.
    assert!(files(&tenant_dir).is_empty(), "{:?}", files(&tenant_dir));
    let evidence = app.sql_texts(&format!(
        "SELECT object_kind || '|' || object_id || '|' || coalesce(encode(ciphertext_sha256, 'hex'), '') \
         || '|' || coalesce(size_bytes::text, '') AS t FROM deletion_log WHERE tenant_id = '{}'",
        app.tenant_id
    ));
    assert_eq!(evidence.len(), backup.len() + 1, "{evidence:?}");
    for file in &backup {
        let bytes = std::fs::read(file).unwrap();
        let name = file
            .strip_prefix(&backup_dir)
            .unwrap()
            .display()
            .to_string();
        let row = evidence
            .iter()
            .find(|e| e.contains(&name))
            .unwrap_or_else(|| panic!("no evidence for {name}: {evidence:?}"));
        assert!(row.starts_with("document_revision|"), "{row}");
        assert!(row.contains(&sha256_hex(&bytes)), "{row}");
        assert!(row.ends_with(&format!("|{}", bytes.len())), "{row}");
    }
    let (key_id, wrapped) = backed_up_keys[0].split_once('|').unwrap();
    assert!(
        evidence
            .iter()
            .any(|e| e.starts_with(&format!("data_key|{key_id}|"))),
        "{evidence:?}"
    );

    // The key is destroyed in the HSM and in the database.
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM data_keys WHERE id = '{key_id}' AND wrapped IS NULL"
        )),
        1
    );
    assert!(
        !app.hsm_secret_key_labels()
            .iter()
            .any(|l| l.contains(key_id)),
        "{:?}",
        app.hsm_secret_key_labels()
    );

    // Restoring the backup (files and the wrapped key row) gives nothing readable.
    app.sql_execute(&format!(
        "UPDATE data_keys SET wrapped = decode('{wrapped}', 'hex'), destroyed_at = NULL \
         WHERE id = '{key_id}'"
    ));
    for file in &backup {
        let opened = open_sealed(&app, file);
        assert!(!opened.status.success(), "{} still opens", file.display());
        let stderr = String::from_utf8_lossy(&opened.stderr);
        assert!(stderr.contains("destroyed"), "{stderr}");
    }

    // The records stay, marked deleted; the keys are revoked.
    for document in &documents {
        assert_eq!(
            app.sql_count(&format!(
                "SELECT count(*) AS n FROM documents WHERE id = '{document}' \
                 AND deleted_at IS NOT NULL AND title = 'Contract'"
            )),
            1
        );
    }
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM events WHERE tenant_id = '{}' AND kind = 'document.signed'",
            app.tenant_id
        )),
        2
    );
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM tenants WHERE id = '{}' AND deleted_at IS NOT NULL",
            app.tenant_id
        )),
        1
    );
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM events WHERE tenant_id = '{}' AND kind = 'tenant.deleted'",
            app.tenant_id
        )),
        1,
        "deleted once"
    );
    assert_eq!(
        job_state(&app, &job_id).2,
        2,
        "one early run that waited, one that deleted"
    );
    let response = app.get(&app.api_key, "/v1/tenant").await;
    assert_problem(response, 401).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_document_deleted_on_request_leaves_evidence_and_a_held_one_is_kept() {
    let app = TestApp::spawn().await;
    let deleted = signed_document(&app).await;
    let held = signed_document(&app).await;

    let response = app
        .post_json(
            Some(&app.api_key),
            &format!("/v1/documents/{held}/holds"),
            &json!({"holder": "counterparty tenant 42", "reason": "their signed copy"}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let response = app
        .client()
        .delete(app.url(&format!("/v1/documents/{held}")))
        .bearer_auth(&app.api_key)
        .send()
        .await
        .unwrap();
    let problem = assert_problem(response, 409).await;
    assert!(
        problem["detail"].as_str().unwrap().contains("counterparty"),
        "{problem}"
    );

    let doc_dir = app
        .storage_dir()
        .join(format!("tenants/{}/documents/{deleted}", app.tenant_id));
    let stored: Vec<(String, usize)> = files(&doc_dir)
        .iter()
        .map(|f| {
            let bytes = std::fs::read(f).unwrap();
            (sha256_hex(&bytes), bytes.len())
        })
        .collect();
    assert_eq!(stored.len(), 2, "upload and signed revision");
    let response = app
        .client()
        .delete(app.url(&format!("/v1/documents/{deleted}")))
        .bearer_auth(&app.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let job_id = response.json::<Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let job = app.wait_for_job(&job_id, JOB_TIMEOUT).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert!(files(&doc_dir).is_empty());

    let shown: Value = app
        .get(&app.api_key, &format!("/v1/documents/{deleted}"))
        .await
        .json()
        .await
        .unwrap();
    assert!(shown["deleted_at"].is_string(), "the record stays: {shown}");
    let response = app
        .get(&app.api_key, &format!("/v1/documents/{deleted}/pdf"))
        .await;
    assert_problem(response, 410).await;
    let log: Value = app
        .get(&app.api_key, "/v1/tenant/deletion-log")
        .await
        .json()
        .await
        .unwrap();
    let rows = log["deletions"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{log}");
    for (sha, size) in &stored {
        assert!(
            rows.iter().any(|r| r["ciphertext_sha256"] == sha.as_str()
                && r["size_bytes"] == *size as u64
                && r["document_id"] == deleted.as_str()
                && r["actor"] == format!("job:{job_id}").as_str()),
            "{log}"
        );
    }
    // The held document is still there and still opens.
    assert_eq!(sha256_hex(&app.download(&held).await).len(), 64);

    // A tenant deletion skips it too, keeps the content key, and looks again later.
    let cancelled = cancel(&app).await;
    let tenant_job = cancelled["deletion_job_id"].as_str().unwrap().to_owned();
    app.sql_execute(&format!(
        "UPDATE tenants SET deletion_due_at = now() WHERE id = '{}'",
        app.tenant_id
    ));
    app.sql_execute(&format!(
        "UPDATE jobs SET run_after = now() WHERE id = '{tenant_job}'"
    ));
    let job = app.wait_for_job(&tenant_job, JOB_TIMEOUT).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(
        job["result"]["held"][0]["document_id"],
        held.as_str(),
        "{job}"
    );
    assert_eq!(job["result"]["data_key_destroyed"], false, "{job}");
    assert_eq!(sha256_hex(&app.download(&held).await).len(), 64);
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM jobs WHERE tenant_id = '{}' AND kind = 'deletion' \
             AND status = 'queued' AND run_after > now() + interval '23 hours'",
            app.tenant_id
        )),
        1,
        "the next look is scheduled"
    );
}
