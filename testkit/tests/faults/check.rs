//! After the run: what was lost, duplicated or stuck, and how long recovery took. Each section
//! adds its lines to the report, its figures to the JSON and what it found wrong to the
//! problems that fail the test.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde_json::{json, Map, Value};
use tokio::task::block_in_place;

use shomei_testkit::smtp::ReceivedMail;
use shomei_testkit::validate::{assert_externally_valid, embedded_signatures, Expected};
use shomei_testkit::TestApp;

use crate::{db, Deployment, Request, Settings, Timeline, BROKEN_KEY, NOTIFY_SCHEDULE, WORKERS};

pub struct Run<'a> {
    pub started: DateTime<Utc>,
    pub documents: &'a [String],
    /// Of those, added while faults were left (`work::top_up`).
    pub topped_up: usize,
    pub batches: &'a [String],
    pub requests: &'a [Request],
    pub request_jobs: &'a [String],
    pub broken_document: &'a str,
    pub broken_job: Option<&'a str>,
    pub timeline: &'a Timeline,
    pub accepted_secs: f64,
    pub faults_secs: f64,
    pub finished_secs: f64,
}

pub struct Report {
    pub text: String,
    pub json: Value,
    pub problems: Vec<String>,
}

/// Collects the sections.
struct Findings {
    lines: Vec<String>,
    json: Map<String, Value>,
    problems: Vec<String>,
}

impl Findings {
    fn line(&mut self, line: String) {
        self.lines.push(line);
    }

    fn figures(&mut self, name: &str, value: Value) {
        self.json.insert(name.to_owned(), value);
    }

    fn problem_if(&mut self, wrong: bool, problem: impl FnOnce() -> String) {
        if wrong {
            self.problems.push(problem());
        }
    }
}

pub async fn check(d: &Deployment, settings: &Settings, run: &Run<'_>) -> Report {
    let db = d.app.database_url();
    let mut f = Findings {
        lines: Vec::new(),
        json: Map::new(),
        problems: Vec::new(),
    };
    f.line(format!(
        "== Fault-injection suite: {} documents ({} of them added to outlast the faults), \
         {} signature requests + 1 failing for good ==",
        run.documents.len(),
        run.topped_up,
        run.requests.len()
    ));
    f.line(format!(
        "settings: {WORKERS} workers × concurrency 4, outages {} s, a worker SIGKILLed every {} s, \
         heartbeat 3 s, reconciler 10 s, 8 attempts, notification retries {NOTIFY_SCHEDULE}",
        settings.outage.as_secs(),
        settings.kill_every.as_secs()
    ));
    f.line(format!(
        "timeline: accepted in {:.1} s, faults over at {:.1} s, everything finished at {:.1} s",
        run.accepted_secs, run.faults_secs, run.finished_secs
    ));
    f.figures(
        "settings",
        json!({
            "workers": WORKERS, "concurrency": 4, "outage_s": settings.outage.as_secs(),
            "kill_every_s": settings.kill_every.as_secs(), "heartbeat_s": 3, "reconcile_s": 10,
            "max_attempts": 8, "notify_schedule": NOTIFY_SCHEDULE,
        }),
    );
    f.figures(
        "timeline_s",
        json!({"accepted": run.accepted_secs, "faults_over": run.faults_secs,
               "finished": run.finished_secs}),
    );
    f.figures("documents", json!(run.documents.len()));
    f.figures("documents_topped_up", json!(run.topped_up));
    f.figures("signature_requests", json!(run.requests.len()));

    recovery(&mut f, &db, run);
    jobs(&mut f, &db, run);
    signatures(&mut f, &d.app, &db, run).await;
    webhooks(&mut f, &db, d);
    emails(&mut f, &db, d, run);
    permanent_failure(&mut f, &d.app, &db, run).await;

    let verdict = if f.problems.is_empty() {
        "all checks passed".to_owned()
    } else {
        format!("{} problem(s)", f.problems.len())
    };
    f.line(format!("verdict: {verdict}"));
    f.figures("problems", json!(f.problems));
    Report {
        text: format!("\n{}\n", f.lines.join("\n")),
        json: Value::Object(f.json),
        problems: f.problems,
    }
}

fn sql_time(t: &DateTime<Utc>) -> String {
    format!("'{}'::timestamptz", t.to_rfc3339())
}

fn count(db: &str, sql: &str) -> i64 {
    block_in_place(|| db::count(db, sql)).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn texts(db: &str, sql: &str) -> Vec<String> {
    block_in_place(|| db::texts(db, sql)).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn seconds(db: &str, sql: &str) -> Option<f64> {
    block_in_place(|| db::float(db, sql)).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn secs(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_owned(), |v| format!("{v:.1} s"))
}

/// Min, median and max.
fn spread(mut values: Vec<f64>) -> [Option<f64>; 3] {
    values.sort_by(f64::total_cmp);
    let pick = |p: f64| {
        (!values.is_empty()).then(|| values[((values.len() - 1) as f64 * p).round() as usize])
    };
    [pick(0.0), pick(0.5), pick(1.0)]
}

/// Per fault, from the jobs' own finish times: the work of the kind it held up done while it
/// lasted; when a job of that kind finished again after the service was back ("resumed"); and
/// when it was back to normal ("recovered"): signing at 80 % of its pace in the 10 s before the
/// fault (over 5 s), notifications with every delivery due by then done. Per worker kill: when
/// the jobs it cut off were taken up again (three missed heartbeats, then another worker's
/// heartbeat puts them back at the end of the queue) and when every job running at the kill
/// had finished.
fn recovery(f: &mut Findings, db: &str, run: &Run<'_>) {
    let timeline = run.timeline;
    f.line(format!(
        "faults injected: {} outages, {} worker kills, {} worker exits restarted by the supervisor",
        timeline.injected.len(),
        timeline.kills.len(),
        timeline.exits
    ));
    let sign_times = block_in_place(|| {
        db::floats(
            db,
            "SELECT extract(epoch FROM finished_at)::float8 AS v FROM jobs \
             WHERE kind = 'sign' AND status = 'succeeded' ORDER BY finished_at",
        )
    })
    .unwrap();
    let signed_between = |from: f64, to: f64| {
        sign_times.partition_point(|t| *t < to) - sign_times.partition_point(|t| *t < from)
    };
    let epoch = |t: &DateTime<Utc>| t.timestamp_micros() as f64 / 1e6;
    let mut faults = Vec::new();
    for (n, injected) in timeline.injected.iter().enumerate() {
        let next_start = timeline.injected.get(n + 1).map(|next| epoch(&next.start));
        let kind = injected.fault.kind();
        let (start, end) = (sql_time(&injected.start), sql_time(&injected.end));
        let during = count(
            db,
            &format!(
                "SELECT count(*) AS n FROM jobs WHERE kind = '{kind}' AND status = 'succeeded' \
                 AND finished_at > {start} AND finished_at <= {end}"
            ),
        );
        let resumed = seconds(
            db,
            &format!(
                "SELECT extract(epoch FROM min(finished_at) - {end})::float8 AS v FROM jobs \
                 WHERE kind = '{kind}' AND status = 'succeeded' AND finished_at > {end}"
            ),
        );
        // Signatures per second in the 10 s before and after (until the next fault or the last
        // signature, 30 s at most).
        let paces = (kind == "sign").then(|| {
            let (start, end) = (epoch(&injected.start), epoch(&injected.end));
            let last = sign_times
                .last()
                .copied()
                .unwrap_or(end)
                .min(end + 30.0)
                .min(next_start.unwrap_or(f64::MAX));
            let after = if last > end {
                signed_between(end, last) as f64 / (last - end)
            } else {
                0.0
            };
            (signed_between(start - 10.0, start) as f64 / 10.0, after)
        });
        let recovered = if kind == "sign" {
            let (start, end) = (epoch(&injected.start), epoch(&injected.end));
            let pace = signed_between(start - 10.0, start) as f64 / 10.0;
            // Looked for before the next fault only.
            (0..240)
                .map(|i| i as f64 * 0.5)
                .take_while(|after| end + after + 5.0 <= next_start.unwrap_or(f64::MAX))
                .find(|after| {
                    signed_between(end + after, end + after + 5.0) as f64 >= 0.8 * pace * 5.0
                })
                .filter(|_| pace > 0.0)
        } else {
            seconds(
                db,
                &format!(
                    "SELECT greatest(0, extract(epoch FROM max(finished_at) - {end}))::float8 \
                     AS v FROM jobs WHERE kind = '{kind}' AND created_at < {end}"
                ),
            )
        };
        let down = (injected.end - injected.start).num_milliseconds() as f64 / 1000.0;
        let at = (injected.start - run.started).num_milliseconds() as f64 / 1000.0;
        f.line(format!(
            "  {:<46} at {at:>6.1} s  down {down:>4.1} s  {kind:<14} done while down {during:>4}  \
             resumed after {:>7}  recovered after {:>7}{}",
            injected.fault.describe(),
            secs(resumed),
            secs(recovered),
            paces.map_or_else(String::new, |(before, after)| format!(
                "  signatures/s {before:.1} before, {after:.1} after"
            )),
        ));
        faults.push(json!({
            "fault": injected.fault.describe(), "at_s": at, "down_s": down, "kind": kind,
            "completed_while_down": during, "resumed_after_s": resumed,
            "recovered_after_s": recovered,
            "signatures_per_s_before": paces.map(|p| p.0),
            "signatures_per_s_after": paces.map(|p| p.1),
        }));
    }
    f.line(
        "  (resumed: the first job of that kind finished after the service was back; recovered: \
         signing back to 80 % of its pace before the fault, or every notification due by then \
         delivered)"
            .to_owned(),
    );
    f.figures("faults", json!(faults));

    let mut taken_up = Vec::new();
    let mut all_finished = Vec::new();
    for kill in &timeline.kills {
        let Some(running) = kill.running.as_ref().filter(|r| !r.is_empty()) else {
            continue;
        };
        let ids = running
            .iter()
            .map(|id| format!("'{id}'"))
            .collect::<Vec<_>>()
            .join(",");
        let at = sql_time(&kill.at);
        taken_up.extend(seconds(
            db,
            &format!(
                "SELECT extract(epoch FROM max(started_at) - {at})::float8 AS v \
                 FROM jobs WHERE id IN ({ids}) AND started_at > {at}"
            ),
        ));
        all_finished.extend(seconds(
            db,
            &format!(
                "SELECT greatest(0, extract(epoch FROM max(finished_at) - {at}))::float8 AS v \
                 FROM jobs WHERE id IN ({ids})"
            ),
        ));
    }
    let [up_min, up_median, up_max] = spread(taken_up);
    let [done_min, done_median, done_max] = spread(all_finished);
    f.line(format!(
        "worker kills: the jobs a kill cut off were taken up again after min {} / median {} / \
         max {}; every job running at a kill had finished after min {} / median {} / max {}",
        secs(up_min),
        secs(up_median),
        secs(up_max),
        secs(done_min),
        secs(done_median),
        secs(done_max)
    ));
    f.figures("worker_kills", json!(timeline.kills.len()));
    f.figures("worker_exits_restarted", json!(timeline.exits));
    f.figures(
        "kill_taken_up_again_s",
        json!({"min": up_min, "median": up_median, "max": up_max}),
    );
    f.figures(
        "kill_all_running_finished_s",
        json!({"min": done_min, "median": done_median, "max": done_max}),
    );
}

/// None stuck, none lost, none failed but the one meant to.
fn jobs(f: &mut Findings, db: &str, run: &Run<'_>) {
    let batch_list = run
        .batches
        .iter()
        .map(|b| format!("'{b}'"))
        .collect::<Vec<_>>()
        .join(",");
    let batch_jobs = count(
        db,
        &format!(
            "SELECT count(*) AS n FROM jobs WHERE kind = 'sign' AND batch_id IN ({batch_list})"
        ),
    );
    let batch_signed = count(
        db,
        &format!(
            "SELECT count(*) AS n FROM jobs WHERE kind = 'sign' AND batch_id IN ({batch_list}) \
             AND status = 'succeeded'"
        ),
    );
    let accepted = count(db, "SELECT count(*) AS n FROM jobs");
    let retried = count(db, "SELECT count(*) AS n FROM jobs WHERE attempts > 1");
    let stuck = texts(
        db,
        "SELECT kind || ' ' || status || ' ' || id || coalesce(' ' || error, '') AS t \
         FROM jobs WHERE status NOT IN ('succeeded', 'failed') ORDER BY created_at",
    );
    let failed = texts(
        db,
        "SELECT kind || ' ' || id || ' after ' || attempts || ' attempt(s): ' \
         || coalesce(error, '') AS t FROM jobs WHERE status = 'failed' ORDER BY created_at",
    );
    let broken = run.broken_job.unwrap_or("the broken job was never queued");
    let unexpected: Vec<&String> = failed.iter().filter(|r| !r.contains(broken)).collect();
    let items = run.documents.len() as i64;
    let lost = (items - batch_signed).max(0);
    f.problem_if(batch_jobs != items, || {
        format!("{items} batch items accepted, {batch_jobs} sign jobs recorded")
    });
    f.problem_if(!stuck.is_empty(), || {
        format!(
            "{} job(s) never finished: {:?}",
            stuck.len(),
            &stuck[..stuck.len().min(10)]
        )
    });
    f.problem_if(!unexpected.is_empty(), || {
        format!(
            "{} job(s) failed: {:?}",
            unexpected.len(),
            &unexpected[..unexpected.len().min(10)]
        )
    });
    f.problem_if(run.request_jobs.len() != run.requests.len(), || {
        format!(
            "{} of {} signature requests got as far as their sign job",
            run.request_jobs.len(),
            run.requests.len()
        )
    });
    f.line(format!(
        "jobs: {accepted} accepted, {} stuck, {} failed (1 meant to), {retried} run more than \
         once (a transient error or a kill); batch items {items}, signed {batch_signed}, lost {lost}",
        stuck.len(),
        failed.len()
    ));
    f.figures(
        "jobs",
        json!({"accepted": accepted, "stuck": stuck.len(), "failed": failed.len(),
               "run_more_than_once": retried, "batch_items": items, "batch_signed": batch_signed,
               "lost": lost}),
    );
}

/// Every file downloaded and its `/ByteRange`s counted (a signature or a document time-stamp
/// each): 1 for a batch item, 2 for a concluded request, none for the broken one; no job made
/// two revisions; a few files validated with pdfsig, qpdf and openssl.
async fn signatures(f: &mut Findings, app: &TestApp, db: &str, run: &Run<'_>) {
    let expected = run
        .documents
        .iter()
        .map(|doc| (doc.clone(), 1usize))
        .chain(run.requests.iter().map(|r| (r.document.clone(), 2)))
        .chain(std::iter::once((run.broken_document.to_owned(), 0)));
    // (document, expected, found; None: not downloadable)
    let counted: Vec<(String, usize, Option<usize>)> = futures::stream::iter(expected)
        .map(|(doc, expected)| async move {
            let response = app
                .get(&app.api_key, &format!("/v1/documents/{doc}/pdf"))
                .await;
            let found = if response.status().is_success() {
                Some(embedded_signatures(&response.bytes().await.unwrap()).len())
            } else {
                None
            };
            (doc, expected, found)
        })
        .buffered(8)
        .collect()
        .await;
    let duplicated: Vec<_> = counted
        .iter()
        .filter(|(_, e, found)| found.is_some_and(|n| n > *e))
        .collect();
    let short: Vec<_> = counted
        .iter()
        .filter(|(_, e, found)| found.is_some_and(|n| n < *e))
        .collect();
    let unreadable = counted
        .iter()
        .filter(|(_, _, found)| found.is_none())
        .count();
    let total: usize = counted.iter().filter_map(|(_, _, found)| *found).sum();
    f.problem_if(!duplicated.is_empty(), || {
        format!(
            "{} document(s) signed more than once: {:?}",
            duplicated.len(),
            &duplicated[..duplicated.len().min(10)]
        )
    });
    f.problem_if(!short.is_empty() || unreadable > 0, || {
        format!(
            "{} document(s) short of their signatures, {unreadable} not downloadable: {:?}",
            short.len(),
            &short[..short.len().min(10)]
        )
    });
    let twice = count(
        db,
        "SELECT count(*) AS n FROM (SELECT job_id FROM document_revisions \
         WHERE job_id IS NOT NULL GROUP BY job_id HAVING count(*) > 1) AS twice",
    );
    f.problem_if(twice > 0, || format!("{twice} job(s) made two revisions"));

    let middle = &run.documents[run.documents.len() / 2];
    for doc in [&run.documents[0], middle, run.documents.last().unwrap()] {
        assert_externally_valid(
            "faults-batch",
            &app.download(doc).await,
            Expected::timestamped(1),
        );
    }
    if let Some(request) = run.requests.first() {
        assert_externally_valid(
            "faults-request",
            &app.download(&request.document).await,
            Expected::timestamped(1).and_document_timestamps(1),
        );
    }
    f.line(format!(
        "signatures: {} files counted, {total} /ByteRange signatures and time-stamps, duplicated \
         {}, short {}, not downloadable {unreadable}; 4 validated with pdfsig, qpdf and openssl",
        counted.len(),
        duplicated.len(),
        short.len()
    ));
    f.figures(
        "signatures",
        json!({"files": counted.len(), "byte_ranges": total, "duplicated": duplicated.len(),
               "short": short.len(), "not_downloadable": unreadable}),
    );
}

/// Every event with a delivery job arrived at least once, verified, repeats under one
/// `webhook-id`.
fn webhooks(f: &mut Findings, db: &str, d: &Deployment) {
    let expected: HashSet<String> = texts(
        db,
        "SELECT payload->>'event_id' AS t FROM jobs WHERE kind = 'notify_webhook'",
    )
    .into_iter()
    .map(|id| id.replace('-', ""))
    .collect();
    let received = d.receiver.received();
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for hook in &received {
        let id = hook.id.trim_start_matches("msg_").replace('-', "");
        *per_id.entry(id).or_default() += 1;
    }
    let unverified = received.iter().filter(|h| !h.verified).count();
    let missing = expected
        .iter()
        .filter(|id| !per_id.contains_key(*id))
        .count();
    let unknown = per_id.keys().filter(|id| !expected.contains(*id)).count();
    let repeated = received.len() - per_id.len();
    f.problem_if(missing > 0, || {
        format!(
            "{missing} of {} webhook events never delivered",
            expected.len()
        )
    });
    f.problem_if(unverified > 0 || unknown > 0, || {
        format!("{unverified} webhook deliveries failed verification, {unknown} ids match no event")
    });
    f.line(format!(
        "webhooks: {} events, {} deliveries received, missing {missing}, {repeated} repeated \
         deliveries (same webhook-id), {unverified} unverified",
        expected.len(),
        received.len()
    ));
    f.figures(
        "webhooks",
        json!({"events": expected.len(), "deliveries": received.len(), "missing": missing,
               "repeated": repeated, "unverified": unverified}),
    );
}

/// Each e-mail once: 4 per witness request (invitation, code, and "signed by everyone" to the
/// signer and the owner). An e-mail job cannot send and record in one transaction: a worker
/// SIGKILLed between the SMTP server's `250` and the job's commit leaves the job to run again,
/// and it sends again. Such a repeat is counted and reported; one with no kill in the second
/// before the first copy arrived up to five seconds after it is a problem, as is a missing
/// e-mail or more messages than e-mail jobs and their explained repeats. A repeated message
/// that carries no fresh token ("signed by everyone") must repeat its Message-ID, so that the
/// recipient's client shows it once; an invitation or code sent again is a new message (its
/// earlier token no longer works).
fn emails(f: &mut Findings, db: &str, d: &Deployment, run: &Run<'_>) {
    let mails = spooled(d.smtp.dir());
    let mut per_mail: BTreeMap<(String, String), Vec<DateTime<Utc>>> = BTreeMap::new();
    let mut message_ids: BTreeMap<(String, String), std::collections::BTreeSet<String>> =
        BTreeMap::new();
    for (to, subject, at, message_id) in &mails {
        let key = (to.clone(), subject.clone());
        per_mail.entry(key.clone()).or_default().push(*at);
        message_ids
            .entry(key)
            .or_default()
            .insert(message_id.clone());
    }
    let kills: Vec<DateTime<Utc>> = run.timeline.kills.iter().map(|k| k.at).collect();
    let mut repeated = Vec::new();
    let mut unexplained = Vec::new();
    let mut recognisable = 0;
    let mut unrecognisable = Vec::new();
    for ((to, subject), times) in &per_mail {
        if times.len() < 2 {
            continue;
        }
        let key = (to.clone(), subject.clone());
        if message_ids[&key].len() == 1 {
            recognisable += 1;
        } else if subject.contains("Signed by everyone") {
            unrecognisable.push(format!("{subject:?} to {to}"));
        }
        let first = times.iter().min().unwrap();
        let killed = kills.iter().any(|k| {
            *k >= *first - chrono::Duration::seconds(1)
                && *k <= *first + chrono::Duration::seconds(5)
        });
        let line = format!("{}× {subject:?} to {to}", times.len());
        if killed {
            repeated.push(line);
        } else {
            unexplained.push(line);
        }
    }
    let mut missing = Vec::new();
    for request in run.requests {
        for (to, subject) in [
            (&request.signer, "Please sign"),
            (&request.signer, "verification code"),
            (&request.signer, "Signed by everyone"),
            (&request.owner, "Signed by everyone"),
        ] {
            if !per_mail.keys().any(|(t, s)| t == to && s.contains(subject)) {
                missing.push(format!("{subject:?} to {to}"));
            }
        }
    }
    let jobs = count(
        db,
        "SELECT count(*) AS n FROM jobs WHERE kind = 'notify_email' AND status = 'succeeded'",
    );
    let extra: usize = per_mail.values().map(|t| t.len() - 1).sum();
    f.problem_if(!unexplained.is_empty(), || {
        format!("e-mails sent more than once with no worker killed then: {unexplained:?}")
    });
    f.problem_if(mails.len() as i64 != jobs + extra as i64, || {
        format!(
            "{} e-mails received for {jobs} e-mail jobs and {extra} repeats",
            mails.len()
        )
    });
    f.problem_if(!missing.is_empty(), || {
        format!("e-mails never received: {missing:?}")
    });
    f.problem_if(!unrecognisable.is_empty(), || {
        format!("repeated e-mails under new Message-IDs: {unrecognisable:?}")
    });
    f.line(format!(
        "e-mails: {} received for {jobs} e-mail jobs, missing {}, sent twice {} (each by a job \
         run again after its worker was SIGKILLed between the send and its record{}), \
         {recognisable} of them under one Message-ID{}",
        mails.len(),
        missing.len(),
        repeated.len(),
        if repeated.is_empty() {
            String::new()
        } else {
            format!(": {}", repeated.join("; "))
        },
        if unexplained.is_empty() {
            String::new()
        } else {
            format!(", unexplained repeats {}", unexplained.len())
        }
    ));
    f.figures(
        "emails",
        json!({"received": mails.len(), "jobs": jobs, "missing": missing.len(),
               "sent_twice_after_a_kill": repeated.len(), "sent_twice_unexplained": unexplained.len(),
               "sent_twice_under_one_message_id": recognisable}),
    );
}

/// (recipient, subject, when the server wrote it, Message-ID) of every message the SMTP server
/// spooled.
fn spooled(dir: &std::path::Path) -> Vec<(String, String, DateTime<Utc>, String)> {
    let mut mails = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "eml") {
            continue;
        }
        let at: DateTime<Utc> = entry.metadata().unwrap().modified().unwrap().into();
        let raw = std::fs::read(&path).unwrap();
        let mail = ReceivedMail::parse(&raw);
        let message_id = String::from_utf8_lossy(&raw)
            .lines()
            .find_map(|l| l.strip_prefix("Message-ID: "))
            .unwrap_or_default()
            .to_owned();
        let envelope: Value =
            serde_json::from_slice(&std::fs::read(path.with_extension("json")).unwrap()).unwrap();
        for to in envelope["rcpt_tos"].as_array().into_iter().flatten() {
            mails.push((
                to.as_str().unwrap_or_default().to_owned(),
                mail.subject.clone(),
                at,
                message_id.clone(),
            ));
        }
    }
    mails
}

/// The broken signer's sign job failed after one attempt, with its reason, announced once.
async fn permanent_failure(f: &mut Findings, app: &TestApp, db: &str, run: &Run<'_>) {
    let (status, attempts, events, error) = match run.broken_job {
        Some(job) => {
            let state = app.wait_for_job(job, Duration::from_secs(1)).await;
            let events = count(
                db,
                &format!(
                    "SELECT count(*) AS n FROM events WHERE kind = 'job.failed' \
                     AND data->>'job_id' = '{job}'"
                ),
            );
            (
                state["status"].as_str().unwrap_or_default().to_owned(),
                state["attempts"].as_i64().unwrap_or(-1),
                events,
                state["error"].as_str().unwrap_or_default().to_owned(),
            )
        }
        None => ("never queued".to_owned(), -1, 0, String::new()),
    };
    f.problem_if(
        status != "failed" || attempts != 1 || events != 1 || !error.contains(BROKEN_KEY),
        || {
            format!(
                "the permanently failing sign job: {status}, {attempts} attempt(s), {events} \
                 job.failed event(s), error {error:?}"
            )
        },
    );
    f.line(format!(
        "permanent failure: {status} after {attempts} attempt(s), {events} job.failed event(s): \
         {error}"
    ));
    f.figures(
        "permanent_failure",
        json!({"status": status, "attempts": attempts, "job_failed_events": events,
               "error": error}),
    );
}
