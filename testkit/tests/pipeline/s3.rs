//! The pipeline on S3-compatible object storage: the API and a worker configured with
//! `SHOMEI_STORAGE_URL=s3://…` against a local S3 server (moto's, a separate process speaking
//! the S3 protocol), started by the app. The bucket is inspected with the server's own S3 API.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shomei_testkit::validate::{assert_externally_valid, Expected};
use shomei_testkit::{sample, TestApp, TestAppOptions, TestStorage, S3_PREFIX};

use crate::JOB_TIMEOUT;

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_contract_signed_on_s3_storage_validates_and_the_bucket_holds_only_sealed_objects() {
    let app = TestApp::spawn_with(TestAppOptions {
        storage: TestStorage::S3,
        ..TestAppOptions::default()
    })
    .await;
    let pdf = sample("contract.pdf");
    let document = app.upload_ok(pdf.clone()).await;
    assert_eq!(app.download(&document).await, pdf);
    let job_id = app.sign_ok(&document, "Taro Suzuki").await;
    let job = app.wait_for_job(&job_id, JOB_TIMEOUT).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let signed = app.download(&document).await;
    assert_eq!(&signed[..pdf.len()], &pdf[..]);
    assert_externally_valid("s3-one-signer", &signed, Expected::timestamped(1));

    // An export archive goes through the streaming (multipart-capable) writer.
    let response = app
        .post_json(Some(&app.api_key), "/v1/exports", &json!({}))
        .await;
    assert_eq!(response.status(), 202, "{:?}", response.text().await);
    let queued: Value = response.json().await.unwrap();
    let path = format!("/v1/exports/{}", queued["export_id"].as_str().unwrap());
    let deadline = Instant::now() + JOB_TIMEOUT;
    let export = loop {
        let view: Value = app.get(&app.api_key, &path).await.json().await.unwrap();
        match view["status"].as_str().unwrap() {
            "ready" => break view,
            "failed" => panic!("export failed: {view}"),
            _ => assert!(Instant::now() < deadline, "export not ready: {view}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let url = export["parts"][0]["url"].as_str().expect("a download link");
    let zip = reqwest::get(url).await.unwrap().bytes().await.unwrap();
    assert!(zip.starts_with(b"PK\x03\x04"), "a ZIP archive");

    // The bucket, as its S3 API lists it: the upload, the signed revision and the archive part,
    // all under the configured prefix, none of them readable.
    let s3 = app.s3();
    let keys = s3.list("").await;
    let tenant = format!("{S3_PREFIX}/tenants/{}", app.tenant_id);
    let documents = keys
        .iter()
        .filter(|k| k.starts_with(&format!("{tenant}/documents/{document}/")))
        .count();
    let exports = keys
        .iter()
        .filter(|k| k.starts_with(&format!("{tenant}/exports/")))
        .count();
    assert_eq!((documents, exports, keys.len()), (2, 1, 3), "{keys:?}");
    let pieces: Vec<&[u8]> = [&pdf, &signed]
        .into_iter()
        .flat_map(|p| {
            p.chunks(4096)
                .map(|c| &c[c.len() / 2..][..32.min(c.len() / 2)])
        })
        .filter(|piece| piece.len() == 32)
        .collect();
    for key in &keys {
        assert!(key.ends_with(".sealed"), "{key}");
        let stored = s3.get(key).await;
        assert!(!contains(&stored, b"%PDF"), "a PDF header in {key}");
        assert!(!contains(&stored, b"PK\x03\x04"), "a ZIP header in {key}");
        for piece in &pieces {
            assert!(!contains(&stored, piece), "plaintext in {key}");
        }
    }

    // Nothing went to the local directory, and the secret key is in no process's log.
    assert!(!app.storage_dir().exists(), "the local store was used");
    for log in ["api.log", "worker-0.log"] {
        let text = std::fs::read_to_string(app.log_dir().join(log)).unwrap();
        assert!(!text.is_empty(), "{log} is empty");
        assert!(
            !text.contains(s3.secret_access_key()),
            "the S3 secret key in {log}"
        );
    }
}
