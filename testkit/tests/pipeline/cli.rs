//! The `shomei` command-line client, run as a process against a real app: every subcommand over
//! HTTPS with the dev CA, its files checked with pdfsig, qpdf, openssl and `unzip` (not with the
//! client's code), and the failures (problem details, exit codes, Retry-After) as a user sees
//! them. The API key must never appear in anything the client prints.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use serde_json::Value;

use shomei_testkit::validate::{assert_externally_valid, embedded_signatures, Expected};
use shomei_testkit::{bin, hsm_dir, sample, workspace_root, TestApp, TestAppOptions};

use crate::JOB_TIMEOUT;

/// What one run of `shomei` left.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Asserts exit 0 and returns stdout without its line end.
    fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "{self:#?}");
        self.stdout.trim_end()
    }
}

/// Runs `shomei` in a scratch directory of its own, as a user would: the API's URL and the key
/// in the environment, nothing else from the test's environment.
struct Shomei {
    api: String,
    key: String,
    ca_cert: Option<PathBuf>,
    dir: PathBuf,
    /// Everything printed so far, to look for the key in.
    printed: Mutex<Vec<String>>,
}

impl Shomei {
    fn new(app: &TestApp, key: &str, ca_cert: Option<PathBuf>) -> Self {
        let dir = workspace_root()
            .join("target/tmp/cli")
            .join(uuid::Uuid::new_v4().simple().to_string());
        std::fs::create_dir_all(&dir).unwrap();
        Self {
            api: app.base_url.clone(),
            key: key.to_owned(),
            ca_cert,
            dir,
            printed: Mutex::new(Vec::new()),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn run(&self, args: &[&str]) -> Run {
        self.run_with(args, |_| {})
    }

    fn run_with(&self, args: &[&str], adjust: impl FnOnce(&mut Command)) -> Run {
        let mut command = Command::new(bin("shomei"));
        for (name, _) in std::env::vars().filter(|(k, _)| k.starts_with("SHOMEI_")) {
            command.env_remove(name);
        }
        command
            .current_dir(&self.dir)
            .env("SHOMEI_API_URL", &self.api)
            .env("SHOMEI_API_KEY", &self.key);
        if let Some(ca) = &self.ca_cert {
            command.env("SHOMEI_CA_CERT", ca);
        }
        command.args(args);
        adjust(&mut command);
        let output = command.output().unwrap();
        let run = Run {
            code: output.status.code().expect("exited, not killed"),
            stdout: String::from_utf8(output.stdout).unwrap(),
            stderr: String::from_utf8(output.stderr).unwrap(),
        };
        let mut printed = self.printed.lock().unwrap();
        printed.push(run.stdout.clone());
        printed.push(run.stderr.clone());
        run
    }

    /// No run printed the key, or its secret part.
    fn assert_key_never_printed(&self) {
        let secret = self.key.trim_start_matches("shk_");
        assert!(secret.len() >= 32, "a real key: {}", secret.len());
        for text in self.printed.lock().unwrap().iter() {
            assert!(!text.contains(secret), "the key was printed:\n{text}");
        }
    }
}

fn uuid_line(text: &str) -> String {
    let id = text.trim();
    uuid::Uuid::parse_str(id).unwrap_or_else(|_| panic!("not an id: {text:?}"));
    id.to_owned()
}

/// `unzip -q archive -d dir`; returns the folder.
fn unzip(archive: &Path) -> PathBuf {
    let out = archive.with_extension("unpacked");
    let output = Command::new("unzip")
        .arg("-q")
        .arg(archive)
        .arg("-d")
        .arg(&out)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn the_client_uploads_signs_follows_downloads_verifies_and_exports_over_https() {
    let app = TestApp::spawn_with(TestAppOptions {
        tls: true,
        ..TestAppOptions::default()
    })
    .await;
    let shomei = Shomei::new(&app, &app.api_key, Some(hsm_dir().join("ca/ca.pem")));
    std::fs::write(shomei.path("contract.pdf"), sample("contract.pdf")).unwrap();

    // Without the dev CA the API's certificate is not trusted: the client says so.
    let untrusted = shomei.run_with(&["status", &uuid::Uuid::new_v4().to_string()], |c| {
        c.env_remove("SHOMEI_CA_CERT");
    });
    assert_eq!(untrusted.code, 1, "{untrusted:#?}");
    assert!(
        untrusted.stderr.contains("cannot reach the API")
            && untrusted.stderr.to_lowercase().contains("certificate"),
        "{untrusted:#?}"
    );

    let document = uuid_line(
        shomei
            .run(&[
                "upload",
                "contract.pdf",
                "--title",
                "NDA 2026",
                "--folder",
                "/sales/2026",
            ])
            .ok(),
    );
    let stored: Value = app
        .get(&app.api_key, &format!("/v1/documents/{document}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (&stored["title"], &stored["folder"], &stored["revision"]),
        (&"NDA 2026".into(), &"/sales/2026".into(), &0.into()),
        "{stored}"
    );

    let timeout = JOB_TIMEOUT.as_secs().to_string();
    let signed = shomei.run(&[
        "sign",
        &document,
        "--name",
        "山田 花子",
        "--email",
        "hanako@example.jp",
        "--reason",
        "契約に同意します",
        "--wait",
        "--timeout",
        &timeout,
    ]);
    let job = uuid_line(signed.ok());
    assert!(
        signed
            .stderr
            .contains(&format!("signed: document {document}, revision 1")),
        "{signed:#?}"
    );
    let state = app.wait_for_job(&job, JOB_TIMEOUT).await;
    assert_eq!(state["status"], "succeeded", "{state}");

    let job_status = shomei.run(&["status", &job]);
    let text = job_status.ok();
    assert!(
        text.contains("kind      sign") && text.contains("status    succeeded"),
        "{text}"
    );
    assert!(text.contains(&format!("document  {document}")), "{text}");
    let document_status = shomei.run(&["status", &document]);
    let text = document_status.ok();
    assert!(text.contains("revision  1 ("), "{text}");
    assert!(text.contains("folder    /sales/2026"), "{text}");
    let as_json: Value = serde_json::from_str(shomei.run(&["--json", "status", &document]).ok())
        .expect("--json prints JSON");
    assert_eq!(as_json["id"], document.as_str());
    assert_eq!(as_json["revision"], 1);

    // The download is the API's signed revision, byte for byte, and other tools validate it.
    let single = app.download(&document).await;
    assert_eq!(
        shomei
            .run(&["download", &document, "--out", "signed.pdf"])
            .ok(),
        "signed.pdf"
    );
    let downloaded = std::fs::read(shomei.path("signed.pdf")).unwrap();
    assert_eq!(
        downloaded, single,
        "the download is the API's signed revision"
    );
    assert_ne!(downloaded, sample("contract.pdf"));
    let pdfsig = assert_externally_valid("cli-download", &downloaded, Expected::timestamped(1));
    assert!(pdfsig.contains("Signature is Valid."), "{pdfsig}");

    // An existing file stays unless --force.
    std::fs::write(shomei.path("signed.pdf"), b"mine").unwrap();
    let refused = shomei.run(&["download", &document, "--out", "signed.pdf"]);
    assert_eq!(refused.code, 1, "{refused:#?}");
    assert!(refused.stderr.contains("--force"), "{refused:#?}");
    assert_eq!(std::fs::read(shomei.path("signed.pdf")).unwrap(), b"mine");
    shomei
        .run(&["download", &document, "--out", "signed.pdf", "--force"])
        .ok();
    assert_eq!(std::fs::read(shomei.path("signed.pdf")).unwrap(), single);
    // Without --out: the name the API gives, in the current directory.
    let default_name = format!("{document}-r1.pdf");
    assert_eq!(shomei.run(&["download", &document]).ok(), default_name);
    assert_eq!(std::fs::read(shomei.path(&default_name)).unwrap(), single);

    // Verification on the server, of the stored document and of a local file.
    let stored_report = shomei.run(&["verify", &document]);
    let text = stored_report.ok();
    assert!(
        text.contains("integrity ok") && text.contains("chain trusted"),
        "{text}"
    );
    assert!(text.contains("PAdES level B-T"), "{text}");
    assert!(text.ends_with("VALID"), "{text}");
    assert!(shomei
        .run(&["verify", "signed.pdf"])
        .ok()
        .ends_with("VALID"));
    let mut tampered = single.clone();
    let inside = embedded_signatures(&tampered)[0].signed_bytes.len() / 3;
    tampered[inside] ^= 0x01;
    std::fs::write(shomei.path("tampered.pdf"), &tampered).unwrap();
    let broken = shomei.run(&["verify", "tampered.pdf"]);
    assert_eq!(broken.code, 10, "{broken:#?}");
    assert!(
        broken.stdout.contains("INTEGRITY BROKEN") && broken.stdout.contains("NOT VALID"),
        "{broken:#?}"
    );
    // A file never signed is not valid either (no signature at all).
    let unsigned = shomei.run(&["verify", "contract.pdf"]);
    assert_eq!(unsigned.code, 10, "{unsigned:#?}");

    // A second document, B-B, then both exported: each archived file is byte-identical to its
    // single download through the client.
    let second = uuid_line(shomei.run(&["upload", "contract.pdf"]).ok());
    shomei
        .run(&[
            "sign",
            &second,
            "--name",
            "Taro Suzuki",
            "--level",
            "B-B",
            "--wait",
            "--timeout",
            &timeout,
        ])
        .ok();
    shomei
        .run(&["download", &second, "--out", "second.pdf"])
        .ok();
    assert_externally_valid(
        "cli-download-b-b",
        &std::fs::read(shomei.path("second.pdf")).unwrap(),
        Expected::basic(1),
    );

    let exported = shomei.run(&[
        "export",
        &document,
        &second,
        "--out",
        "archive.zip",
        "--wait",
        "--timeout",
        &timeout,
    ]);
    assert_eq!(exported.ok(), "archive.zip");
    assert!(
        exported.stderr.contains("2 document(s) in 1 part(s)"),
        "{exported:#?}"
    );
    let unpacked = unzip(&shomei.path("archive.zip"));
    for (id, file) in [(&document, "signed.pdf"), (&second, "second.pdf")] {
        assert_eq!(
            std::fs::read(unpacked.join(format!("documents/{id}.pdf"))).unwrap(),
            std::fs::read(shomei.path(file)).unwrap(),
            "{id} in the archive is its single download"
        );
    }
    let sums = Command::new("sha256sum")
        .args(["--strict", "-c", "SHA256SUMS"])
        .current_dir(&unpacked)
        .output()
        .unwrap();
    assert!(sums.status.success(), "{sums:?}");
    // The archive is not overwritten either.
    let again = shomei.run(&["export", &document, "--out", "archive.zip"]);
    assert_eq!(again.code, 1, "{again:#?}");

    // Without --wait: the export id, and the export is the API's.
    let export_id = uuid_line(shomei.run(&["export", &document]).ok());
    assert_eq!(
        app.get(&app.api_key, &format!("/v1/exports/{export_id}"))
            .await
            .status(),
        200
    );

    shomei.assert_key_never_printed();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_client_prints_the_problem_and_exits_with_its_code() {
    let app = TestApp::spawn_with(TestAppOptions {
        // Every signature fails for good: the key label does not exist.
        worker_env: vec![("SHOMEI_HSM_KEY_LABEL".into(), "no-such-key".into())],
        env: vec![
            ("SHOMEI_RATE_LIMIT_KEY_PER_SEC".into(), "1".into()),
            ("SHOMEI_RATE_LIMIT_KEY_BURST".into(), "30".into()),
        ],
        ..TestAppOptions::default()
    })
    .await;
    let shomei = Shomei::new(&app, &app.api_key, None);
    std::fs::write(shomei.path("notes.txt"), b"meeting notes, not a PDF").unwrap();
    std::fs::write(shomei.path("contract.pdf"), sample("contract.pdf")).unwrap();

    // Not a PDF: the problem's title, status and detail; exit 3 (input refused).
    let not_pdf = shomei.run(&["upload", "notes.txt"]);
    assert_eq!(not_pdf.code, 3, "{not_pdf:#?}");
    assert!(not_pdf.stdout.is_empty(), "{not_pdf:#?}");
    assert!(
        not_pdf.stderr.contains("(422)")
            && not_pdf
                .stderr
                .contains("the body is not a readable PDF: not a PDF (no %PDF- header)"),
        "{not_pdf:#?}"
    );

    // A wrong key: the API's 401 message and a hint; exit 4; the wrong key is not printed.
    let wrong_key = format!("shk_{}", "0123456789abcdef".repeat(4));
    let wrong = Shomei::new(&app, &wrong_key, None);
    std::fs::write(wrong.path("contract.pdf"), sample("contract.pdf")).unwrap();
    let unauthorized = wrong.run(&["upload", "contract.pdf"]);
    assert_eq!(unauthorized.code, 4, "{unauthorized:#?}");
    assert!(
        unauthorized.stderr.contains(
            "Unauthorized (401): a valid API key is required (Authorization: Bearer <key>)"
        ) && unauthorized.stderr.contains("SHOMEI_API_KEY"),
        "{unauthorized:#?}"
    );
    wrong.assert_key_never_printed();

    // No key at all: a usage error before any request.
    let no_key = shomei.run_with(&["status", &uuid::Uuid::new_v4().to_string()], |c| {
        c.env_remove("SHOMEI_API_KEY");
    });
    assert_eq!(no_key.code, 2, "{no_key:#?}");
    assert!(no_key.stderr.contains("SHOMEI_API_KEY"), "{no_key:#?}");
    // The key from a file works as well (and is the way to keep it out of the environment).
    std::fs::write(shomei.path("key"), format!("{}\n", app.api_key)).unwrap();
    let unknown = uuid::Uuid::new_v4().to_string();
    let from_file = shomei.run_with(&["--key-file", "key", "status", &unknown], |c| {
        c.env_remove("SHOMEI_API_KEY");
    });
    // An unknown id: not found, exit 5 (so the key was accepted).
    assert_eq!(from_file.code, 5, "{from_file:#?}");
    assert!(
        from_file
            .stderr
            .contains(&format!("no job or document {unknown}")),
        "{from_file:#?}"
    );

    // A signature that fails: --wait exits 9 with the job's reason.
    let document = uuid_line(shomei.run(&["upload", "contract.pdf"]).ok());
    let failed = shomei.run(&[
        "sign",
        &document,
        "--name",
        "Taro Suzuki",
        "--wait",
        "--timeout",
        &JOB_TIMEOUT.as_secs().to_string(),
    ]);
    assert_eq!(failed.code, 9, "{failed:#?}");
    let job = uuid_line(&failed.stdout);
    assert!(
        failed.stderr.contains(&format!("sign job {job} failed"))
            && failed.stderr.contains("no-such-key"),
        "{failed:#?}"
    );
    let status = shomei.run(&["status", &job]);
    assert_eq!(status.code, 9, "{status:#?}");
    assert!(status.stdout.contains("status    failed"), "{status:#?}");

    // Past the key's rate: 429 with the API's detail and Retry-After; exit 7. A key of its own,
    // so that nothing above has spent its allowance.
    let viewer = Shomei::new(&app, &app.create_key("viewer").await, None);
    let limited = (0..40)
        .map(|_| viewer.run(&["status", &document]))
        .find(|run| run.code != 0)
        .expect("a burst of 40 is past 30");
    assert_eq!(limited.code, 7, "{limited:#?}");
    assert!(
        limited.stderr.contains("(429)") && limited.stderr.contains("Retry-After: "),
        "{limited:#?}"
    );

    shomei.assert_key_never_printed();
    viewer.assert_key_never_printed();
}
