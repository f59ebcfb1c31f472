//! The parts of the API's answers (`api/openapi.yaml`, components/schemas) that the client reads.
//! `--json` prints the answers as they came, not these.

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
pub struct Document {
    pub id: String,
    pub title: Option<String>,
    pub folder: String,
    pub pages: u64,
    pub sha256: String,
    pub revision: u64,
    pub created_at: String,
    pub deleted_at: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Job {
    pub id: String,
    pub kind: String,
    pub status: String,
    pub attempts: u64,
    pub error: Option<String>,
    pub document_id: Option<String>,
    pub created_at: String,
    pub finished_at: Option<String>,
    pub result: Option<Value>,
}

impl Job {
    pub fn is_finished(&self) -> bool {
        matches!(self.status.as_str(), "succeeded" | "failed")
    }

    pub fn failed(&self) -> bool {
        self.status == "failed"
    }
}

#[derive(Debug, Deserialize)]
pub struct Accepted {
    pub job_id: String,
}

#[derive(Debug, Deserialize)]
pub struct ExportQueued {
    pub export_id: String,
}

#[derive(Debug, Deserialize)]
pub struct Export {
    pub job_id: String,
    pub status: String,
    pub total: u64,
    pub done: u64,
    pub parts: Vec<Part>,
    pub expired: bool,
}

#[derive(Debug, Deserialize)]
pub struct Part {
    pub part: u64,
    pub documents: u64,
    pub size_bytes: u64,
    pub url: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct StoredVerification {
    pub document_id: String,
    pub revision: u64,
    pub sha256: String,
    pub report: Report,
}

#[derive(Debug, Deserialize)]
pub struct Report {
    pub valid: bool,
    pub revisions: u64,
    pub signatures: Vec<SignatureReport>,
    pub level: Option<String>,
    pub unsigned_changes_after_last_signature: bool,
}

#[derive(Debug, Deserialize)]
pub struct SignatureReport {
    pub field: String,
    pub kind: String,
    pub integrity: bool,
    pub covers_whole_file: bool,
    pub revision: u64,
    pub later_revisions_change: Option<String>,
    pub signer: Option<String>,
    pub signing_time: Option<String>,
    pub certificate_chain_trusted: bool,
    pub timestamp: Option<TimestampReport>,
    pub errors: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub struct TimestampReport {
    pub time: String,
    pub valid: bool,
    pub tsa: Option<String>,
}
