use serde_json::{json, Value};
use shomei_testkit::hostile;
use shomei_testkit::{sample, TestApp, TestAppOptions};

use crate::assert_problem;

async fn detail_of_upload(app: &TestApp, body: Vec<u8>, status: u16) -> String {
    let problem = assert_problem(app.upload(&app.api_key, body, None).await, status).await;
    problem["detail"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn unreadable_uploads_are_refused_with_the_reason() {
    let app = TestApp::spawn_with(TestAppOptions {
        workers: 0,
        max_upload_bytes: Some(64 * 1024),
        ..Default::default()
    })
    .await;

    let detail = detail_of_upload(&app, b"Dear customer, this is a Word file".to_vec(), 422).await;
    assert!(detail.contains("not a PDF"), "{detail}");

    let pdf = sample("contract.pdf");
    let detail = detail_of_upload(&app, pdf[..pdf.len() / 2].to_vec(), 422).await;
    assert!(detail.contains("truncated"), "{detail}");

    let detail = detail_of_upload(&app, sample("contract-encrypted.pdf"), 422).await;
    assert!(detail.contains("encrypted"), "{detail}");

    let mut garbage = b"%PDF-1.7\n".to_vec();
    garbage.extend((0..4000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    assert_problem(app.upload(&app.api_key, garbage, None).await, 422).await;

    let mut oversized = pdf.clone();
    oversized.resize(64 * 1024 + 1, b' ');
    let detail = detail_of_upload(&app, oversized, 413).await;
    assert!(detail.contains("65536"), "{detail}");

    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM documents"),
        0,
        "nothing refused is stored"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_pdfs_are_refused_with_the_limit_they_break_and_the_api_stays_healthy() {
    let app = TestApp::spawn_with(TestAppOptions {
        workers: 0,
        env: [
            ("SHOMEI_PDF_MAX_PAGES", "10"),
            ("SHOMEI_PDF_MAX_OBJECTS", "200"),
            ("SHOMEI_PDF_MAX_STREAM_BYTES", "1048576"),
            ("SHOMEI_PDF_MAX_TOTAL_STREAM_BYTES", "3145728"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .to_vec(),
        ..Default::default()
    })
    .await;
    const GIB: u64 = 1 << 30;
    let cases: [(&str, Vec<u8>, &str); 6] = [
        (
            "11 pages",
            hostile::many_pages(11),
            "PDF has 11 pages, more than the limit of 10 pages",
        ),
        (
            "300 objects",
            hostile::many_objects(300),
            "more than the limit of 200 objects",
        ),
        (
            "1 MB of deflate inflating to 1 GiB in a content stream",
            hostile::content_bomb(GIB),
            "decompresses to more than the per-stream limit of 1048576 bytes",
        ),
        (
            "the same bomb in an object stream",
            hostile::object_stream_bomb(GIB),
            "decompresses to more than the per-stream limit of 1048576 bytes",
        ),
        (
            "four streams of 1 MiB",
            hostile::many_streams(4, 1024 * 1024 - 100),
            "decompress to more than the total limit of 3145728 bytes",
        ),
        (
            "an object stream naming one array of 100,000 numbers 150 times",
            hostile::aliased_object_stream(150, 100_000),
            "two objects at offset",
        ),
    ];
    for (what, body, named) in cases {
        let started = std::time::Instant::now();
        let detail = detail_of_upload(&app, body, 422).await;
        assert!(detail.contains(named), "{what}: {detail}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{what} took {:?}",
            started.elapsed()
        );
    }

    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200, "the API survived every upload");
    app.upload_ok(sample("contract.pdf")).await;
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM documents"),
        1,
        "only the good document is stored"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn callers_without_a_valid_key_are_refused() {
    let app = TestApp::spawn_with(TestAppOptions {
        workers: 0,
        ..Default::default()
    })
    .await;
    let no_key = app
        .client
        .post(app.url("/v1/documents"))
        .body(sample("contract.pdf"))
        .send()
        .await
        .unwrap();
    assert_eq!(no_key.headers()["www-authenticate"], "Bearer");
    assert_problem(no_key, 401).await;

    let wrong = format!("shk_{}", "0".repeat(64));
    assert_problem(app.upload(&wrong, sample("contract.pdf"), None).await, 401).await;
    assert_problem(
        app.get(
            "not-even-a-key",
            "/v1/jobs/00000000-0000-0000-0000-000000000000",
        )
        .await,
        401,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_ids_and_other_tenants_resources_are_not_found() {
    let app = TestApp::spawn_with(TestAppOptions {
        workers: 0,
        ..Default::default()
    })
    .await;
    let document = app.upload_ok(sample("contract.pdf")).await;
    let job = app.sign_ok(&document, "Taro Suzuki").await;
    let intruder = app.create_tenant("Another company").await;
    let unknown = uuid::Uuid::new_v4().to_string();

    for key in [intruder.as_str(), app.api_key.as_str()] {
        let ids = if key == app.api_key {
            [&unknown, &unknown]
        } else {
            [&document, &job]
        };
        let [doc, job] = ids;
        for path in [
            format!("/v1/documents/{doc}"),
            format!("/v1/documents/{doc}/pdf"),
            format!("/v1/jobs/{job}"),
        ] {
            assert_problem(app.get(key, &path).await, 404).await;
        }
        let sign = app.sign(key, doc, &json!({"signer": {"name": "X"}})).await;
        assert_problem(sign, 404).await;
    }
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM jobs"),
        1,
        "the refused requests queued nothing"
    );

    // Many at once: the ones another route would answer 404 for are left out, and each job is
    // listed once, whatever the query repeats.
    let list = |key: &str, ids: String| {
        let app = &app;
        let key = key.to_string();
        async move {
            let response = app.get(&key, &format!("/v1/jobs?ids={ids}")).await;
            assert_eq!(response.status(), 200);
            let body: serde_json::Value = response.json().await.unwrap();
            let ids: Vec<String> = body["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|job| job["id"].as_str().unwrap().to_string())
                .collect();
            ids
        }
    };
    assert_eq!(
        list(&app.api_key, format!("{unknown},{job},{job}")).await,
        std::slice::from_ref(&job)
    );
    assert!(list(&intruder, job.clone()).await.is_empty());
    let too_many = (0..100)
        .map(|_| uuid::Uuid::new_v4().to_string())
        .chain([job.clone()])
        .collect::<Vec<_>>()
        .join(",");
    for (query, names) in [
        ("ids=not-a-job".to_string(), "not-a-job"),
        (format!("ids={job},"), "ids"),
        (format!("ids={too_many}"), "at most 100"),
        ("id=1".to_string(), "\"id\""),
        (String::new(), "ids"),
    ] {
        let response = app.get(&app.api_key, &format!("/v1/jobs?{query}")).await;
        let problem = assert_problem(response, 400).await;
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(names), "{query}: {detail}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_sign_requests_name_what_is_wrong() {
    let app = TestApp::spawn_with(TestAppOptions {
        workers: 0,
        ..Default::default()
    })
    .await;
    let id = app.upload_ok(sample("contract.pdf")).await;
    let cases: [(Value, &str); 4] = [
        (json!({"reason": "no signer"}), "signer"),
        (json!({"signer": {"name": ""}}), "signer.name"),
        (
            json!({"signer": {"name": "A", "email": "not-an-address"}}),
            "signer.email",
        ),
        (json!({"signer": {"name": "A"}, "colour": "blue"}), "colour"),
    ];
    for (body, named) in cases {
        let problem = assert_problem(app.sign(&app.api_key, &id, &body).await, 400).await;
        assert!(
            problem["detail"].as_str().unwrap().contains(named),
            "{body} -> {problem}"
        );
    }
    let bad_id = app
        .sign(
            &app.api_key,
            "not-a-uuid",
            &json!({"signer": {"name": "A"}}),
        )
        .await;
    assert_problem(bad_id, 404).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn json_bodies_must_be_objects_not_arrays_taken_for_fields_in_order() {
    let app = TestApp::spawn_with(TestAppOptions {
        workers: 0,
        ..TestAppOptions::default()
    })
    .await;
    // serde would read `[null, null]` as a filter's first two fields; the API refuses it.
    for (path, body) in [
        ("/v1/exports", json!([null, null])),
        ("/v1/webhooks", json!(["http://127.0.0.1:9/hook"])),
        ("/v1/groups", json!("sales")),
    ] {
        let response = app.post_json(Some(&app.api_key), path, &body).await;
        let problem = assert_problem(response, 400).await;
        assert!(
            problem["detail"].as_str().unwrap().contains("JSON object"),
            "{path}: {problem}"
        );
    }
    // An object still works.
    let response = app
        .post_json(Some(&app.api_key), "/v1/exports", &json!({}))
        .await;
    assert_eq!(response.status(), 202);
}
