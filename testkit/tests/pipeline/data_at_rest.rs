//! Encryption at rest (R-DATA-1): what reaches the disk and the database is ciphertext, data
//! keys are wrapped by KEKs in the HSM, and rotating the KEKs leaves documents untouched.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use shomei_testkit::{sample, TestApp};

use crate::JOB_TIMEOUT;

/// Every file under `dir` with its contents.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Distinctive 32-byte pieces of `pdf`, the first one in each 4 KiB block that has one: any of
/// them in a file means plaintext leaked. (Runs like an xref table's `0000000000` or a
/// signature's zero padding would match unrelated bytes, so they are passed over.)
fn pieces(pdf: &[u8]) -> Vec<&[u8]> {
    let distinct = |w: &[u8]| w.iter().collect::<std::collections::HashSet<_>>().len();
    let pieces: Vec<&[u8]> = pdf
        .chunks(4096)
        .filter_map(|block| block.chunks_exact(32).find(|w| distinct(w) >= 12))
        .collect();
    assert!(!pieces.is_empty(), "no distinctive piece in the PDF");
    pieces
}

fn pg_dump(app: &TestApp) -> Vec<u8> {
    let output = std::process::Command::new("pg_dump")
        .arg("--data-only")
        .arg(app.database_url())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

#[tokio::test(flavor = "multi_thread")]
async fn storage_and_a_database_dump_hold_no_plaintext_pdf_name_or_address() {
    let app = TestApp::spawn().await;
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..10];
    let signer_address = format!("kaori.{tag}@example.jp");
    let owner_address = format!("owner.{tag}@example.jp");
    let identity_address = format!("hanako.{tag}@example.jp");
    let signer_name = format!("Kaori Takeda {tag}");

    // A signature by API, a signature request and a certified signer: every place personal
    // data is written.
    let pdf = sample("contract.pdf");
    let signed_doc = app.upload_ok(pdf.clone()).await;
    let body = json!({
        "signer": {"name": signer_name, "email": signer_address},
        "reason": format!("approved by {signer_name}"),
    });
    let job_id = TestApp::accepted_job(app.sign(&app.api_key, &signed_doc, &body).await).await;
    let job = app.wait_for_job(&job_id, JOB_TIMEOUT).await;
    assert_eq!(job["status"], "succeeded", "{job}");

    let request_doc = app.upload_ok(pdf.clone()).await;
    let response = app
        .post_json(
            Some(&app.api_key),
            &format!("/v1/documents/{request_doc}/requests"),
            &json!({
                "owner": {"name": "Sato Legal", "email": owner_address},
                "signers": [{"name": signer_name, "email": signer_address, "method": "witness"}],
            }),
        )
        .await;
    assert_eq!(response.status(), 201);
    let request: Value = response.json().await.unwrap();
    let response = app
        .post_json(
            Some(&app.api_key),
            "/v1/signer-identities",
            &json!({"name": "Hanako Yamada", "email": identity_address,
                    "key_label": "shomei-dev-signer-1", "pin": "246810"}),
        )
        .await;
    assert_eq!(response.status(), 201);

    // The API still shows what it was given (opened with the tenant's records key) …
    assert_eq!(request["owner"]["email"], owner_address.as_str());
    assert_eq!(request["signers"][0]["email"], signer_address.as_str());
    let shown: Value = app
        .get(
            &app.api_key,
            &format!("/v1/requests/{}", request["id"].as_str().unwrap()),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shown["signers"][0]["name"], signer_name.as_str(), "{shown}");
    let csv = app
        .get(&app.api_key, "/v1/documents.csv")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        csv.contains(&signer_name),
        "parties opened for the report: {csv}"
    );
    let signed = app.download(&signed_doc).await;

    // … but none of it, and none of either PDF, is in a stored file or in the database.
    let stored = files(&app.storage_dir());
    assert!(
        stored.len() >= 3,
        "two uploads and a signed revision: {stored:?}"
    );
    let dump = pg_dump(&app);
    let secrets: Vec<&[u8]> = [
        &signer_address,
        &owner_address,
        &identity_address,
        &signer_name,
    ]
    .into_iter()
    .map(|s| s.as_bytes())
    .chain(pieces(&pdf))
    .chain(pieces(&signed))
    .collect();
    for (path, bytes) in stored.iter().chain([(&PathBuf::from("pg_dump"), &dump)]) {
        assert!(
            !contains(bytes, b"%PDF"),
            "a PDF header in {}",
            path.display()
        );
        for secret in &secrets {
            assert!(
                !contains(bytes, secret),
                "{:?} in {}",
                String::from_utf8_lossy(secret),
                path.display()
            );
        }
    }
    // The dump did take the rows (the check above would pass on an empty dump).
    assert!(contains(&dump, signed_doc.as_bytes()));
    assert!(contains(&dump, b"shomei-kek-"), "data keys name their KEKs");
}

#[tokio::test(flavor = "multi_thread")]
async fn rotating_keks_rewraps_data_keys_and_leaves_every_stored_file_as_it_was() {
    let app = TestApp::spawn().await;
    let document = app.signed_document().await;
    let signed = app.download(&document).await;
    let before_files = files(&app.storage_dir());
    let before_labels = app.sql_texts("SELECT kek_label AS t FROM data_keys ORDER BY id");
    assert_eq!(before_labels.len(), 2, "a content and a records key");
    let mut in_token = app.hsm_secret_key_labels();
    in_token.sort();
    let mut expected = before_labels.clone();
    expected.sort();
    assert_eq!(in_token, expected, "one KEK per data key in the token");

    let rotated = app.cli_output(&["data-keys", "rotate"]);
    assert!(
        rotated.status.success(),
        "{}",
        String::from_utf8_lossy(&rotated.stderr)
    );

    let after_labels = app.sql_texts("SELECT kek_label AS t FROM data_keys ORDER BY id");
    for (before, after) in before_labels.iter().zip(&after_labels) {
        assert!(
            before.ends_with("-v1") && after.ends_with("-v2"),
            "{before} → {after}"
        );
        assert_eq!(
            before.trim_end_matches("-v1"),
            after.trim_end_matches("-v2")
        );
    }
    let mut in_token = app.hsm_secret_key_labels();
    in_token.sort();
    let mut expected = after_labels.clone();
    expected.sort();
    assert_eq!(in_token, expected, "the old KEK versions are destroyed");
    assert_eq!(
        files(&app.storage_dir()),
        before_files,
        "no document re-encrypted"
    );

    // A process that has never seen the keys opens the stored revision through the new KEK.
    let key = app.sql_texts(&format!(
        "SELECT storage_key AS t FROM document_revisions WHERE document_id = '{document}' \
         ORDER BY revision DESC LIMIT 1"
    ));
    // The signed revision is stored as what it appends to the upload, so `storage open` puts
    // it together with the upload, read from the same directory.
    let sealed = app.storage_dir().join(&key[0]);
    assert!(key[0].ends_with(".a1.sealed"), "{key:?}");
    let uploaded: usize = app.sql_texts(&format!(
        "SELECT size_bytes::text AS t FROM document_revisions WHERE document_id = '{document}' \
         ORDER BY revision LIMIT 1"
    ))[0]
        .parse()
        .unwrap();
    let stored_len = std::fs::metadata(&sealed).unwrap().len() as usize;
    assert!(
        stored_len < signed.len() - uploaded + 512,
        "{stored_len} bytes stored for a signed file of {} on an upload of {uploaded}",
        signed.len()
    );
    let out = app.log_dir().join("opened.pdf");
    let opened = app.cli(&[
        "storage",
        "open",
        sealed.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(opened["sha256"], crate::sha256_hex(&signed));
    assert_eq!(std::fs::read(&out).unwrap(), signed);
}
