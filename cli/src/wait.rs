//! Following a job or an export until it finishes: polling with a growing interval, waiting out
//! `429`/`503` for as long as `Retry-After` says, and giving up after `--timeout`.

use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::api::{api_error, Api};
use crate::exit::{self, Failure};
use crate::model::{Export, Job};
use crate::progress::Progress;

/// Polling starts quick (a B-B signature takes a fraction of a second) and slows down.
const FIRST_POLL: Duration = Duration::from_millis(200);
const LONGEST_POLL: Duration = Duration::from_secs(2);
/// The longest `Retry-After` honoured in one go while waiting.
const LONGEST_RETRY_AFTER: Duration = Duration::from_secs(60);

struct Poller {
    deadline: Instant,
    timeout: Duration,
    interval: Duration,
}

impl Poller {
    fn new(timeout: Duration) -> Self {
        Self {
            deadline: Instant::now() + timeout,
            timeout,
            interval: FIRST_POLL,
        }
    }

    /// GET `path` as JSON, waiting out `429`/`503`; returns the raw value and its typed view.
    async fn get<T: DeserializeOwned>(&self, api: &Api, path: &str) -> anyhow::Result<(Value, T)> {
        loop {
            match api.json::<Value>(api.get(path)).await {
                Ok(value) => {
                    let typed = serde_json::from_value(value.clone())
                        .map_err(|e| anyhow::anyhow!("unexpected answer from {path}: {e}"))?;
                    return Ok((value, typed));
                }
                Err(e) => {
                    let wait = match api_error(&e) {
                        Some(api) if api.is_retryable() => api
                            .retry_after
                            .map_or(LONGEST_POLL, Duration::from_secs)
                            .min(LONGEST_RETRY_AFTER),
                        _ => return Err(e),
                    };
                    if Instant::now() + wait > self.deadline {
                        return Err(e);
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Sleeps before the next poll, or fails with [`exit::TIMED_OUT`] past the deadline.
    async fn next(&mut self, what: &str) -> anyhow::Result<()> {
        if Instant::now() >= self.deadline {
            return Err(Failure::new(
                exit::TIMED_OUT,
                format!(
                    "{what} after {} s; it goes on (follow it with `shomei status`)",
                    self.timeout.as_secs()
                ),
            )
            .into());
        }
        tokio::time::sleep(self.interval).await;
        self.interval = (self.interval * 3 / 2).min(LONGEST_POLL);
        Ok(())
    }
}

/// Follows a job until it succeeds or fails; returns its last state (raw and typed). A failed
/// job is returned too: the caller decides what it means.
pub async fn job(
    api: &Api,
    id: &str,
    timeout: Duration,
    progress: Progress,
) -> anyhow::Result<(Value, Job)> {
    let mut poller = Poller::new(timeout);
    let spinner = progress.spinner(format!("job {id}: submitted"));
    let path = format!("/v1/jobs/{id}");
    loop {
        let (raw, job): (Value, Job) = poller.get(api, &path).await?;
        if job.is_finished() {
            spinner.finish_and_clear();
            return Ok((raw, job));
        }
        spinner.set_message(format!(
            "{} job {id}: {} (attempt {})",
            job.kind, job.status, job.attempts
        ));
        if let Err(e) = poller
            .next(&format!("job {id} is still {}", job.status))
            .await
        {
            spinner.finish_and_clear();
            return Err(e);
        }
    }
}

/// Follows an export until it is ready or failed; returns its last state.
pub async fn export(
    api: &Api,
    id: &str,
    timeout: Duration,
    progress: Progress,
) -> anyhow::Result<(Value, Export)> {
    let mut poller = Poller::new(timeout);
    let bar = progress.items(format!("export {id}: queued"));
    let path = format!("/v1/exports/{id}");
    loop {
        let (raw, export): (Value, Export) = poller.get(api, &path).await?;
        bar.set_length(export.total);
        bar.set_position(export.done);
        if matches!(export.status.as_str(), "ready" | "failed") {
            bar.finish_and_clear();
            return Ok((raw, export));
        }
        bar.set_message(format!("export {id}: {}", export.status));
        if let Err(e) = poller
            .next(&format!(
                "export {id} is still {} ({} of {} documents)",
                export.status, export.done, export.total
            ))
            .await
        {
            bar.finish_and_clear();
            return Err(e);
        }
    }
}
