//! One function per subcommand: a request or two against the routes of `api/openapi.yaml`,
//! then the result on stdout (an id, a path, a report; or the API's JSON with `--json`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use reqwest::header::{CONTENT_DISPOSITION, CONTENT_TYPE, ETAG};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::api::{api_error, Api};
use crate::exit::{self, Failure};
use crate::model::{Accepted, Document, Export, ExportQueued, Job, Report, StoredVerification};
use crate::progress::Progress;
use crate::save::{check_destination, save};
use crate::wait;

pub struct Output {
    pub json: bool,
    pub progress: Progress,
}

impl Output {
    fn json(&self, value: &Value) {
        println!(
            "{}",
            serde_json::to_string_pretty(value).expect("JSON values serialize")
        );
    }
}

pub async fn upload(
    api: &Api,
    out: &Output,
    file: &Path,
    title: Option<String>,
    folder: Option<String>,
) -> anyhow::Result<()> {
    let pdf = tokio::fs::read(file)
        .await
        .with_context(|| format!("cannot read {}", file.display()))?;
    let mut query = Vec::new();
    if let Some(title) = &title {
        query.push(("title", title.as_str()));
    }
    if let Some(folder) = &folder {
        query.push(("folder", folder.as_str()));
    }
    let spinner = out.progress.spinner(format!(
        "uploading {} ({} bytes)",
        file.display(),
        pdf.len()
    ));
    let answer: anyhow::Result<Value> = api
        .json(
            api.post("/v1/documents")
                .query(&query)
                .header(CONTENT_TYPE, "application/pdf")
                .body(pdf),
        )
        .await;
    spinner.finish_and_clear();
    let raw = answer?;
    let document: Document = typed(&raw)?;
    if out.json {
        out.json(&raw);
    } else {
        println!("{}", document.id);
    }
    Ok(())
}

pub struct SignRequest {
    pub name: String,
    pub email: Option<String>,
    pub level: Option<&'static str>,
    pub reason: Option<String>,
    pub location: Option<String>,
    pub conclude: bool,
    pub idempotency_key: Option<String>,
}

pub async fn sign(
    api: &Api,
    out: &Output,
    document: Uuid,
    request: SignRequest,
    wait: Option<Duration>,
) -> anyhow::Result<()> {
    let body = json!({
        "signer": {"name": request.name, "email": request.email},
        "level": request.level,
        "reason": request.reason,
        "location": request.location,
        "conclude": request.conclude,
    });
    let mut post = api
        .post(&format!("/v1/documents/{document}/sign"))
        .json(&body);
    if let Some(key) = &request.idempotency_key {
        post = post.header("Idempotency-Key", key);
    }
    let raw: Value = api.json(post).await?;
    let accepted: Accepted = typed(&raw)?;
    let Some(timeout) = wait else {
        if out.json {
            out.json(&raw);
        } else {
            println!("{}", accepted.job_id);
        }
        return Ok(());
    };
    let (raw, job) = wait::job(api, &accepted.job_id, timeout, out.progress).await?;
    if out.json {
        out.json(&raw);
    } else {
        println!("{}", job.id);
        if !job.failed() {
            let revision = job
                .result
                .as_ref()
                .and_then(|r| r.get("revision"))
                .map_or_else(|| "?".to_owned(), Value::to_string);
            eprintln!("signed: document {document}, revision {revision}");
        }
    }
    job_outcome(&job)
}

/// A failed job as an error with its reason ([`exit::JOB_FAILED`]).
fn job_outcome(job: &Job) -> anyhow::Result<()> {
    if job.failed() {
        return Err(Failure::new(
            exit::JOB_FAILED,
            format!(
                "{} job {} failed after {} attempt(s): {}",
                job.kind,
                job.id,
                job.attempts,
                job.error.as_deref().unwrap_or("no reason given")
            ),
        )
        .into());
    }
    Ok(())
}

/// A job if the id is one, else a document.
pub async fn status(api: &Api, out: &Output, id: Uuid) -> anyhow::Result<()> {
    match api.json::<Value>(api.get(&format!("/v1/jobs/{id}"))).await {
        Ok(raw) => {
            let job: Job = typed(&raw)?;
            if out.json {
                out.json(&raw);
            } else {
                print_job(&job);
            }
            return job_outcome(&job);
        }
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(e),
    }
    let raw: Value = match api.json(api.get(&format!("/v1/documents/{id}"))).await {
        Ok(raw) => raw,
        Err(e) if is_not_found(&e) => {
            return Err(e.context(format!("no job or document {id} for this key")))
        }
        Err(e) => return Err(e),
    };
    let document: Document = typed(&raw)?;
    if out.json {
        out.json(&raw);
    } else {
        print_document(&document);
    }
    Ok(())
}

fn is_not_found(error: &anyhow::Error) -> bool {
    api_error(error).is_some_and(|e| e.status == StatusCode::NOT_FOUND)
}

fn print_job(job: &Job) {
    println!("job       {}", job.id);
    println!("kind      {}", job.kind);
    println!("status    {}", job.status);
    println!("attempts  {}", job.attempts);
    if let Some(document) = &job.document_id {
        println!("document  {document}");
    }
    println!("created   {}", job.created_at);
    if let Some(finished) = &job.finished_at {
        println!("finished  {finished}");
    }
    if let Some(error) = &job.error {
        println!("error     {error}");
    }
    if let Some(result) = job.result.as_ref().filter(|r| !r.is_null()) {
        println!("result    {result}");
    }
}

fn print_document(document: &Document) {
    println!("document  {}", document.id);
    if let Some(title) = &document.title {
        println!("title     {title}");
    }
    println!("folder    {}", document.folder);
    println!("pages     {}", document.pages);
    let state = match document.revision {
        0 => "uploaded, not signed yet".to_owned(),
        n => format!("{n} signature(s) or conclusion(s) added"),
    };
    println!("revision  {} ({state})", document.revision);
    println!("sha256    {}", document.sha256);
    println!("created   {}", document.created_at);
    if let Some(deleted) = &document.deleted_at {
        println!("deleted   {deleted} (files deleted; the record stays)");
    }
}

pub async fn download(
    api: &Api,
    out: &Output,
    document: Uuid,
    path: Option<PathBuf>,
    force: bool,
) -> anyhow::Result<()> {
    if let Some(path) = &path {
        // Before the request: no transfer for a file that would be refused anyway.
        check_destination(path, force)?;
    }
    let response = api
        .send(api.get(&format!("/v1/documents/{document}/pdf")))
        .await?;
    let etag = response
        .headers()
        .get(ETAG)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim_matches('"').to_owned());
    let path = match path {
        Some(path) => path,
        None => attachment_name(response.headers())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(format!("{document}.pdf"))),
    };
    let saved = save(response, &path, force, None, etag.as_deref(), out.progress).await?;
    if out.json {
        out.json(&json!({
            "document_id": document,
            "path": saved.path,
            "bytes": saved.bytes,
            "sha256": saved.sha256,
        }));
    } else {
        println!("{}", saved.path.display());
    }
    Ok(())
}

/// The file name of `Content-Disposition: attachment; filename="…"`, reduced to a plain name
/// (no directory part: a server does not choose where the file goes).
fn attachment_name(headers: &reqwest::header::HeaderMap) -> Option<String> {
    let value = headers.get(CONTENT_DISPOSITION)?.to_str().ok()?;
    let name = value
        .split(';')
        .filter_map(|p| p.trim().strip_prefix("filename="))
        .next()?
        .trim_matches('"');
    let name = Path::new(name).file_name()?.to_str()?;
    (!name.starts_with('.') && !name.is_empty()).then(|| name.to_owned())
}

pub async fn verify(api: &Api, out: &Output, target: &str) -> anyhow::Result<()> {
    let path = Path::new(target);
    let (raw, report, about) = if path.exists() {
        let pdf = tokio::fs::read(path)
            .await
            .with_context(|| format!("cannot read {}", path.display()))?;
        let raw: Value = api
            .json(
                api.post("/v1/verify")
                    .header(CONTENT_TYPE, "application/pdf")
                    .body(pdf),
            )
            .await?;
        let report: Report = typed(&raw)?;
        (raw, report, format!("file {}", path.display()))
    } else if let Ok(document) = target.parse::<Uuid>() {
        let raw: Value = api
            .json(api.get(&format!("/v1/documents/{document}/verification")))
            .await?;
        let stored: StoredVerification = typed(&raw)?;
        let about = format!(
            "document {}, revision {}, sha256 {}",
            stored.document_id, stored.revision, stored.sha256
        );
        (raw, stored.report, about)
    } else {
        return Err(Failure::new(
            exit::USAGE,
            format!("{target}: no such file, and not a document id"),
        )
        .into());
    };
    if out.json {
        out.json(&raw);
    } else {
        print_report(&about, &report);
    }
    if !report.valid {
        return Err(Failure::new(exit::NOT_VALID, format!("{about}: not valid")).into());
    }
    Ok(())
}

fn print_report(about: &str, report: &Report) {
    let yes_no = |b: bool, yes: &'static str, no: &'static str| if b { yes } else { no };
    println!("{about}");
    println!(
        "{} signature(s) and time-stamp(s) in {} revision(s); PAdES level {}",
        report.signatures.len(),
        report.revisions,
        report.level.as_deref().unwrap_or("none")
    );
    for (i, s) in report.signatures.iter().enumerate() {
        let kind = match s.kind.as_str() {
            "document_timestamp" => "document time-stamp",
            other => other,
        };
        println!(
            "#{} {kind} {:?}: {}, {}, {}",
            i + 1,
            s.field,
            yes_no(s.integrity, "integrity ok", "INTEGRITY BROKEN"),
            yes_no(
                s.certificate_chain_trusted,
                "chain trusted",
                "CHAIN NOT TRUSTED"
            ),
            if s.covers_whole_file {
                "covers the whole file".to_owned()
            } else {
                format!("covers revision {}", s.revision)
            }
        );
        if let Some(signer) = &s.signer {
            println!("    signer:     {signer}");
        }
        if let Some(time) = &s.signing_time {
            println!("    signed at:  {time}");
        }
        if let Some(ts) = &s.timestamp {
            println!(
                "    time-stamp: {} {}{}",
                ts.time,
                yes_no(ts.valid, "valid", "NOT VALID"),
                ts.tsa
                    .as_deref()
                    .map(|t| format!(" (TSA {t})"))
                    .unwrap_or_default()
            );
        }
        if let Some(change) = &s.later_revisions_change {
            println!("    later:      {change}");
        }
        for error in &s.errors {
            println!("    error:      {error}");
        }
    }
    if report.unsigned_changes_after_last_signature {
        println!("changes after the last signature are not covered by any signature");
    }
    println!("{}", yes_no(report.valid, "VALID", "NOT VALID"));
}

pub async fn export(
    api: &Api,
    out: &Output,
    documents: &[Uuid],
    path: Option<PathBuf>,
    force: bool,
    wait: Option<Duration>,
) -> anyhow::Result<()> {
    if let Some(path) = &path {
        check_destination(path, force)?;
    }
    let raw: Value = api
        .json(api.post("/v1/exports").json(&json!({ "ids": documents })))
        .await?;
    let queued: ExportQueued = typed(&raw)?;
    let Some(timeout) = wait else {
        if out.json {
            out.json(&raw);
        } else {
            println!("{}", queued.export_id);
        }
        return Ok(());
    };
    let (raw, export) = wait::export(api, &queued.export_id, timeout, out.progress).await?;
    if export.status == "failed" {
        return Err(export_failure(api, &queued, &export).await);
    }
    if export.total < documents.len() as u64 {
        // The API archives signed documents only and leaves the others out without an error.
        eprintln!(
            "note: {} of the {} documents are signed; only those are in the archive",
            export.total,
            documents.len()
        );
    }
    if export.expired {
        return Err(Failure::new(
            exit::NOT_FOUND,
            format!("export {}: its links have expired", queued.export_id),
        )
        .into());
    }
    let base =
        path.unwrap_or_else(|| PathBuf::from(format!("shomei-export-{}.zip", queued.export_id)));
    let mut files = Vec::new();
    for part in &export.parts {
        let target = if export.parts.len() == 1 {
            base.clone()
        } else {
            part_path(&base, part.part)
        };
        let link = part.url.as_deref().with_context(|| {
            format!(
                "export {}: part {} has no link",
                queued.export_id, part.part
            )
        })?;
        let response = api.send(api.get_link(link)?).await?;
        // `size_bytes` is the job's estimate of the archive (entries plus a fixed overhead
        // each), good enough for a progress bar when the answer has no Content-Length.
        let saved = save(
            response,
            &target,
            force,
            Some(part.size_bytes),
            None,
            out.progress,
        )
        .await?;
        files.push(json!({
            "part": part.part,
            "documents": part.documents,
            "path": saved.path,
            "bytes": saved.bytes,
            "sha256": saved.sha256,
        }));
        if !out.json {
            println!("{}", saved.path.display());
        }
    }
    if out.json {
        out.json(&json!({ "export": raw, "files": files }));
    } else {
        eprintln!(
            "export {}: {} document(s) in {} part(s)",
            queued.export_id,
            export.done,
            export.parts.len()
        );
    }
    Ok(())
}

/// `name.zip` → `name-part-N.zip`.
fn part_path(base: &Path, part: u64) -> PathBuf {
    let stem = base
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match base.extension() {
        Some(ext) => format!("{stem}-part-{part}.{}", ext.to_string_lossy()),
        None => format!("{stem}-part-{part}"),
    };
    base.with_file_name(name)
}

/// The reason a failed export gives: its job's error.
async fn export_failure(api: &Api, queued: &ExportQueued, export: &Export) -> anyhow::Error {
    let reason = match api
        .json::<Job>(api.get(&format!("/v1/jobs/{}", export.job_id)))
        .await
    {
        Ok(job) => job.error.unwrap_or_else(|| "no reason given".to_owned()),
        Err(e) => format!("(its job could not be read: {e:#})"),
    };
    Failure::new(
        exit::JOB_FAILED,
        format!("export {} failed: {reason}", queued.export_id),
    )
    .into()
}

/// The typed view of an answer; a mismatch is an unexpected answer, not a crash.
fn typed<T: serde::de::DeserializeOwned>(raw: &Value) -> anyhow::Result<T> {
    serde_json::from_value(raw.clone()).context("unexpected answer from the API")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_numbered_before_the_extension() {
        assert_eq!(
            part_path(Path::new("out/a.zip"), 2),
            PathBuf::from("out/a-part-2.zip")
        );
        assert_eq!(part_path(Path::new("a"), 0), PathBuf::from("a-part-0"));
    }

    #[test]
    fn an_attachment_name_cannot_choose_the_directory() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            CONTENT_DISPOSITION,
            "attachment; filename=\"../../etc/x-r1.pdf\""
                .parse()
                .unwrap(),
        );
        assert_eq!(attachment_name(&headers).as_deref(), Some("x-r1.pdf"));
        headers.insert(
            CONTENT_DISPOSITION,
            "attachment; filename=\"..\"".parse().unwrap(),
        );
        assert_eq!(attachment_name(&headers), None);
    }
}
