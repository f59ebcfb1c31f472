//! The work the suite submits, as clients and signers would: the batch (topped up while faults
//! are left), the signature requests, and the signers' side by e-mail.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};

use shomei_testkit::smtp::{messages_in, ReceivedMail};
use shomei_testkit::{sample, TestApp};

use crate::db::count;
use crate::{BATCH_ITEMS, BROKEN_PIN};

pub async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Uploads the sample as `title` and sends it round `signers`; returns the document id.
pub async fn send_request(app: &TestApp, title: &str, owner: &str, signers: Value) -> String {
    let (status, body) = json_of(
        app.upload(&app.api_key, sample("contract.pdf"), Some(title))
            .await,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let document = body["id"].as_str().unwrap().to_owned();
    let (status, body) = json_of(
        app.post_json(
            Some(&app.api_key),
            &format!("/v1/documents/{document}/requests"),
            &json!({"owner": {"name": "Faults Owner", "email": owner}, "locale": "en",
                    "signers": signers}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    document
}

#[derive(Default)]
pub struct Submitted {
    pub documents: Vec<String>,
    pub batches: Vec<String>,
}

/// Submits documents for signing through the API, as a client would.
pub struct Feed {
    pub client: reqwest::Client,
    pub base: String,
    pub key: String,
    pub submitted: std::sync::Mutex<Submitted>,
    /// Set while PostgreSQL is down: a batch whose answer is lost must not be sent twice.
    pub paused: AtomicBool,
}

impl Feed {
    pub fn count(&self) -> usize {
        self.submitted.lock().unwrap().documents.len()
    }

    /// Uploads `n` copies of the sample and submits them as one batch; false when the API
    /// refused or did not answer (nothing recorded: documents uploaded but never submitted are
    /// not part of the run).
    pub async fn submit(&self, n: usize) -> bool {
        let upload = |_| async {
            let response = self
                .client
                .post(format!("{}/v1/documents", self.base))
                .bearer_auth(&self.key)
                .header("content-type", "application/pdf")
                .body(sample("contract.pdf"))
                .timeout(Duration::from_secs(30))
                .send()
                .await
                .ok()?;
            if response.status() != 201 {
                return None;
            }
            let body: Value = response.json().await.ok()?;
            body["id"].as_str().map(str::to_owned)
        };
        let uploaded: Vec<Option<String>> = futures::stream::iter(0..n)
            .map(upload)
            .buffered(8)
            .collect()
            .await;
        let Some(documents) = uploaded.into_iter().collect::<Option<Vec<String>>>() else {
            return false;
        };
        let batch_no = self.submitted.lock().unwrap().batches.len();
        let items: Vec<Value> = documents
            .iter()
            .enumerate()
            .map(|(i, id)| {
                json!({"document_id": id, "reason": "一括署名",
                       "signer": {"name": format!("Batch {batch_no}-{i}"), "email": "batch@example.com"}})
            })
            .collect();
        let response = self
            .client
            .post(format!("{}/v1/batches", self.base))
            .bearer_auth(&self.key)
            .json(&json!({"items": items}))
            .timeout(Duration::from_secs(60))
            .send()
            .await;
        let Ok(response) = response else {
            return false;
        };
        let (status, body) = json_of(response).await;
        if status != 202 || body["total"] != documents.len() {
            println!("faults: a batch was refused: {status} {body}");
            return false;
        }
        let mut submitted = self.submitted.lock().unwrap();
        submitted
            .batches
            .push(body["batch_id"].as_str().unwrap().to_owned());
        submitted.documents.extend(documents);
        true
    }
}

pub async fn top_up(feed: Arc<Feed>, signed: Arc<AtomicI64>, faults_over: Arc<AtomicBool>) {
    while !faults_over.load(Ordering::SeqCst) {
        let waiting = feed.count() as i64 - signed.load(Ordering::SeqCst);
        if !feed.paused.load(Ordering::SeqCst) && waiting < 2 * BATCH_ITEMS as i64 {
            feed.submit(BATCH_ITEMS).await;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub async fn sample_progress(db: String, signed: Arc<AtomicI64>, stop: Arc<AtomicBool>) {
    // Failed ones count: a job that failed for good is done (and a problem the checks report).
    let query = "SELECT count(*) AS n FROM jobs WHERE kind = 'sign' AND batch_id IS NOT NULL \
                 AND status IN ('succeeded', 'failed')";
    while !stop.load(Ordering::SeqCst) {
        let db = db.clone();
        if let Ok(Ok(n)) = tokio::task::spawn_blocking(move || count(&db, query)).await {
            signed.store(n, Ordering::SeqCst);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The signers' side, by e-mail: each witness takes the link from their invitation, asks for a
/// code, reads it from the next e-mail and signs, request `i` once the batch is `i/n` done (so
/// the e-mails run through the faults). The broken signer signs first, with their PIN.
/// Returns the request sign jobs and the broken one.
pub async fn sign_requests(
    client: reqwest::Client,
    base: String,
    spool: PathBuf,
    signers: Vec<String>,
    progress: Arc<AtomicI64>,
    total: i64,
) -> (Vec<String>, Option<String>) {
    let step = Arc::new(Step {
        client,
        base,
        spool,
        deadline: Instant::now() + Duration::from_secs(600 + total as u64),
    });
    let broken = async {
        let link = step.link("broken@example.com").await?;
        step.sign(&link, json!({"pin": BROKEN_PIN})).await
    }
    .await;
    let n = signers.len() as i64;
    let jobs = futures::stream::iter(signers.into_iter().enumerate())
        .map(|(i, signer)| {
            let step = step.clone();
            let progress = progress.clone();
            async move {
                while progress.load(Ordering::SeqCst) * n < total * i as i64
                    && Instant::now() < step.deadline
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                step.witness_signs(&signer).await
            }
        })
        .buffer_unordered(3)
        .collect::<Vec<Option<String>>>()
        .await;
    (jobs.into_iter().flatten().collect(), broken)
}

struct Step {
    client: reqwest::Client,
    base: String,
    spool: PathBuf,
    deadline: Instant,
}

impl Step {
    /// A witness: link from the invitation, a code asked for and read from its e-mail, signed.
    async fn witness_signs(&self, signer: &str) -> Option<String> {
        let link = self.link(signer).await?;
        let before = self.mails_to(signer, "verification code");
        self.post(&format!("/v1/signing/{link}/code"), json!({}))
            .await?;
        let mail = self.mail(signer, "verification code", before).await?;
        let code = mail
            .text
            .lines()
            .map(str::trim)
            .find(|l| l.len() == 6 && l.bytes().all(|b| b.is_ascii_digit()))?
            .to_owned();
        self.sign(&link, json!({"code": code})).await
    }

    fn mails_to(&self, to: &str, subject: &str) -> usize {
        messages_in(&self.spool)
            .iter()
            .filter(|m| m.to.iter().any(|t| t == to) && m.subject.contains(subject))
            .count()
    }

    /// The `skip+1`-th e-mail to `to` with `subject` in its subject, once it arrived.
    async fn mail(&self, to: &str, subject: &str, skip: usize) -> Option<ReceivedMail> {
        while Instant::now() < self.deadline {
            let found = messages_in(&self.spool)
                .into_iter()
                .filter(|m| m.to.iter().any(|t| t == to) && m.subject.contains(subject))
                .nth(skip);
            if found.is_some() {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!("faults: no e-mail {subject:?} to {to}");
        None
    }

    /// The signing link's token from `to`'s invitation.
    async fn link(&self, to: &str) -> Option<String> {
        let mail = self.mail(to, "Please sign", 0).await?;
        let start = mail.text.find("/v1/signing/")? + 12;
        Some(
            mail.text[start..]
                .chars()
                .take_while(char::is_ascii_hexdigit)
                .collect(),
        )
    }

    /// POSTs until the API accepts (it answers 5xx while PostgreSQL is away); `None` on a 4xx.
    async fn post(&self, path: &str, body: Value) -> Option<Value> {
        while Instant::now() < self.deadline {
            let sent = tokio::time::timeout(
                Duration::from_secs(15),
                self.client
                    .post(format!("{}{path}", self.base))
                    .json(&body)
                    .send(),
            )
            .await;
            if let Ok(Ok(response)) = sent {
                let status = response.status();
                if status.is_success() {
                    return Some(response.json().await.unwrap_or(Value::Null));
                }
                if status.is_client_error() {
                    let body = response.text().await.unwrap_or_default();
                    println!("faults: POST {path}: {status} {body}");
                    return None;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        None
    }

    async fn sign(&self, link: &str, body: Value) -> Option<String> {
        let queued = self.post(&format!("/v1/signing/{link}/sign"), body).await?;
        queued["job_id"].as_str().map(str::to_owned)
    }
}
