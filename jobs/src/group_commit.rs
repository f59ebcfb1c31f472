//! Group commit: the database steps every job takes, claiming its row when a run starts
//! (with the revision a document job starts from: [`GroupCommit::start`]) and recording what
//! the run did when it ends ([`GroupCommit::record`]), coalesced across the jobs a worker runs
//! at once. The API coalesces the rows of single submissions, and the look-ups of the
//! documents sign requests name, the same way ([`crate::Intake`]).
//!
//! Each step waits in a channel. One task per step takes whatever has gathered there (up to
//! [`MAX_GROUP`]) and runs it as one statement (the claims, then one read of the claimed
//! document jobs' starting revisions) or one transaction (the records: the members'
//! revisions in one statement, their events in one more with their notify jobs in a third,
//! each member's own work, the members' jobs marked succeeded in one statement; see
//! [`Record`]). Under load, the jobs stepping together share the round
//! trips, one hand-off to a blocking thread and one WAL flush; a lone step runs at once, so an
//! idle worker waits for nothing.
//!
//! A group's transaction that fails (one member's revision colliding with a racing job's, a
//! deadlock with another worker's group) is rolled back and its members run again, one
//! transaction each: one member's error stays its own. A member may therefore run twice, and
//! only touches the database (whatever else it causes goes in the [`Pending`] it returns, acted
//! on after the commit). A caller whose run is cancelled while its step waits does not stop the
//! step: it commits, unseen, as a transaction already handed to a blocking thread always did
//! (handlers are idempotent; the next run finds it). A member that panics (a bug) fails alone
//! and for good, as a panicking handler does, and the group's other members commit.

use std::collections::HashMap;

use diesel::{Connection, PgConnection, QueryResult};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use shomei_schema::{interact, DbError, DbPool, Job, JobKind, Revision};
use shomei_telemetry::metrics;

use crate::error::JobError;
use crate::events::{self, NewEvent, Pending};

/// The most steps one group takes; more wait for the next group.
pub const MAX_GROUP: usize = 64;

/// A record's own database work, run inside a transaction, perhaps twice (see the module's
/// comment).
pub type RecordFn = Box<dyn FnMut(&mut PgConnection) -> QueryResult<Pending> + Send>;

/// What one run records ([`GroupCommit::record`]). In the group's transaction come first the
/// members' revisions, inserted in one statement, then their events with their notify jobs, in
/// two more ([`events::emit_all`]), then each member's `work`, then the members' jobs marked
/// succeeded, in one statement: a job that adds a revision has no statement of its own.
pub struct Record {
    /// The revision the run made ([`Revision::insert_all`]).
    pub revision: Option<Revision>,
    /// The event it records.
    pub event: Option<NewEvent>,
    /// Whatever else it records (the state changes the revision brings).
    pub work: RecordFn,
    /// Its job, succeeded with this result ([`Job::succeed_all`]).
    pub succeeded: Option<(Uuid, serde_json::Value)>,
}

impl Record {
    /// A record of `work` alone.
    pub fn work(work: RecordFn) -> Self {
        Record {
            revision: None,
            event: None,
            work,
            succeeded: None,
        }
    }
}

/// The worker's coalescing queues, in [`crate::JobContext`].
pub struct GroupCommit {
    starts: Coalescer<Uuid, Option<Claimed>>,
    records: Coalescer<Record, Pending>,
}

/// A job claimed for a run ([`GroupCommit::start`]).
#[derive(Debug, Clone)]
pub struct Claimed {
    pub job: Job,
    /// For a job that adds a document revision (sign, timestamp): the revision it made in an
    /// earlier run, or else the document's latest ([`Revision::start_for_jobs`]), read right
    /// after the claim in the same hand-off; `None` for other kinds, and for a document with
    /// no revision.
    pub starting_revision: Option<Revision>,
}

impl GroupCommit {
    /// Spawns the tasks on the current runtime; they end when this is dropped.
    pub fn spawn(db: DbPool) -> Self {
        // Exposed from the start, at zero: the dashboard's panel has a series to show.
        metrics::GROUP_COMMIT_SPLITS
            .with_label_values(&["record"])
            .inc_by(0);
        Self {
            starts: Coalescer::spawn(db.clone(), "start", start_group),
            records: Coalescer::spawn(db, "record", record_group),
        }
    }

    /// [`Job::start_all`]: the job's row claimed for a run (status `running`, attempt counted),
    /// committed, with the revision it starts from ([`Claimed`]); `None` when it is finished or
    /// not due.
    pub async fn start(&self, job_id: Uuid) -> Result<Option<Claimed>, JobError> {
        self.starts.call(job_id).await
    }

    /// Runs `record` in a committed transaction and returns what it left to do afterwards.
    pub async fn record(&self, record: Record) -> Result<Pending, JobError> {
        self.records.call(record).await
    }
}

fn start_group(
    conn: &mut PgConnection,
    ids: &mut [Uuid],
) -> Vec<Result<Option<Claimed>, JobError>> {
    let database_error = |e: diesel::result::Error| JobError::from(DbError::from(e));
    let started = match Job::start_all(conn, ids) {
        Ok(started) => started,
        Err(e) => return all_failed(ids.len(), database_error(e)),
    };
    // The claims are committed; the reads of the starting revisions follow on the same
    // connection, for the jobs that add one.
    let wanted: Vec<(Uuid, Uuid)> = started
        .iter()
        .filter(|job| matches!(job.kind(), Some(JobKind::Sign | JobKind::Timestamp)))
        .filter_map(|job| Some((job.document_id?, job.id)))
        .collect();
    let found = match Revision::start_for_jobs(conn, &wanted) {
        Ok(found) => found,
        Err(e) => return all_failed(ids.len(), database_error(e)),
    };
    let mut revisions: HashMap<Uuid, Revision> = wanted
        .iter()
        .zip(found)
        .filter_map(|((_, job), revision)| Some((*job, revision?)))
        .collect();
    let mut claimed: HashMap<Uuid, Claimed> = started
        .into_iter()
        .map(|job| {
            let starting_revision = revisions.remove(&job.id);
            (
                job.id,
                Claimed {
                    job,
                    starting_revision,
                },
            )
        })
        .collect();
    // A job named twice in one group (two deliveries at once) is claimed once: the second
    // caller gets `None`, as for a finished job, and acknowledges its delivery.
    ids.iter().map(|id| Ok(claimed.remove(id))).collect()
}

/// The answer of a group that failed as a whole: `e` for each of its `size` members.
fn all_failed<O, E, F: Clone + Into<E>>(size: usize, e: F) -> Vec<Result<O, E>> {
    (0..size).map(|_| Err(e.clone().into())).collect()
}

/// Counts and logs a group whose statement or transaction failed (`step` labels
/// `shomei_group_commit_splits_total`); the caller then runs its members one by one.
pub(crate) fn split(step: &'static str, members: usize, error: &diesel::result::Error) {
    tracing::info!(step, members, %error, "a group failed; its members run one by one");
    metrics::GROUP_COMMIT_SPLITS
        .with_label_values(&[step])
        .inc();
}

fn record_group(conn: &mut PgConnection, members: &mut [Record]) -> Vec<Result<Pending, JobError>> {
    if members.len() > 1 {
        let mut panicked = false;
        let together = conn.transaction(|conn| record_members(conn, members, &mut panicked));
        match together {
            Ok(pendings) => return pendings.into_iter().map(Ok).collect(),
            Err(e) => split("record", members.len(), &e),
        }
    }
    members
        .iter_mut()
        .map(|member| {
            let mut panicked = false;
            let result = conn.transaction(|conn| {
                record_members(conn, std::slice::from_mut(member), &mut panicked)
            });
            let result = result.map(|mut pending| pending.pop().unwrap_or_default());
            if panicked {
                return Err(JobError::permanent(
                    "recording the run's result panicked (a bug); nothing of it was committed",
                ));
            }
            result.map_err(|e| JobError::from(DbError::from(e)))
        })
        .collect()
}

/// Records `members` in the open transaction, in the order [`Record`] gives.
fn record_members(
    conn: &mut PgConnection,
    members: &mut [Record],
    panicked: &mut bool,
) -> QueryResult<Vec<Pending>> {
    let revisions: Vec<&Revision> = members.iter().filter_map(|m| m.revision.as_ref()).collect();
    Revision::insert_all(conn, &revisions)?;
    // Cloned: a member recorded again (its group failed) records its event again.
    let events: Vec<NewEvent> = members.iter().filter_map(|m| m.event.clone()).collect();
    let mut emitted = events::emit_all(conn, events)?.into_iter();
    let pendings = members
        .iter_mut()
        .map(|member| {
            let mut pending = match member.event {
                Some(_) => emitted.next().unwrap_or_default(),
                None => Pending::default(),
            };
            pending.add(run_member(conn, &mut member.work, panicked)?);
            Ok(pending)
        })
        .collect::<QueryResult<Vec<Pending>>>()?;
    let succeeded: Vec<(Uuid, &serde_json::Value)> = members
        .iter()
        .filter_map(|m| m.succeeded.as_ref().map(|(id, result)| (*id, result)))
        .collect();
    Job::succeed_all(conn, &succeeded)?;
    Ok(pendings)
}

/// Runs one member's work in the open transaction. A panic (a bug in the member) becomes an error that
/// rolls the transaction back: unwinding through diesel's `transaction` would leave it open on
/// the connection, under the next members' work.
fn run_member(
    conn: &mut PgConnection,
    work: &mut RecordFn,
    panicked: &mut bool,
) -> QueryResult<Pending> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(conn))) {
        Ok(result) => result,
        Err(_) => {
            *panicked = true;
            Err(diesel::result::Error::RollbackTransaction)
        }
    }
}

/// Why a whole group got no answer from its database work: each member is told.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GroupFailure {
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("the group commit task has stopped")]
    Stopped,
    #[error("a group's database work panicked")]
    Panicked,
}

impl From<GroupFailure> for JobError {
    fn from(e: GroupFailure) -> Self {
        JobError::transient(e.to_string())
    }
}

struct Member<I, O, E> {
    input: I,
    reply: oneshot::Sender<Result<O, E>>,
}

/// One coalescing queue: steps of one kind, run a group at a time.
pub(crate) struct Coalescer<I, O, E = JobError> {
    sender: mpsc::UnboundedSender<Member<I, O, E>>,
}

/// A group's database work: one answer per member, in order.
pub(crate) type GroupFn<I, O, E> = fn(&mut PgConnection, &mut [I]) -> Vec<Result<O, E>>;

impl<I, O, E> Coalescer<I, O, E>
where
    I: Send + 'static,
    O: Send + 'static,
    E: From<GroupFailure> + Send + 'static,
{
    /// Spawns the step's task on the current runtime; it ends when this is dropped. `step`
    /// labels the group sizes in `shomei_group_commit_size`.
    pub(crate) fn spawn(db: DbPool, step: &'static str, run: GroupFn<I, O, E>) -> Self {
        let (sender, mut receiver) = mpsc::unbounded_channel::<Member<I, O, E>>();
        let sizes = metrics::GROUP_COMMIT_SIZE.with_label_values(&[step]);
        let durations = metrics::GROUP_COMMIT_DURATION.with_label_values(&[step]);
        tokio::spawn(async move {
            while let Some(first) = receiver.recv().await {
                let mut group = vec![first];
                while group.len() < MAX_GROUP {
                    match receiver.try_recv() {
                        Ok(member) => group.push(member),
                        Err(_) => break,
                    }
                }
                sizes.observe(group.len() as f64);
                let (mut inputs, replies): (Vec<I>, Vec<_>) =
                    group.into_iter().map(|m| (m.input, m.reply)).unzip();
                let size = inputs.len();
                // Whatever panics in a group must not end this task: every later step would
                // fail with it.
                let started = std::time::Instant::now();
                let outputs = interact(&db, move |conn| {
                    Ok(std::panic::catch_unwind(std::panic::AssertUnwindSafe(
                        || run(conn, &mut inputs),
                    )))
                })
                .await;
                durations.observe(started.elapsed().as_secs_f64());
                let outputs: Vec<Result<O, E>> = match outputs {
                    Ok(Ok(outputs)) => outputs,
                    Ok(Err(_panic)) => all_failed(size, GroupFailure::Panicked),
                    Err(e) => all_failed(size, GroupFailure::Unavailable(e.to_string())),
                };
                for (reply, output) in replies.into_iter().zip(outputs) {
                    let _ = reply.send(output);
                }
            }
        });
        Self { sender }
    }

    pub(crate) async fn call(&self, input: I) -> Result<O, E> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(Member { input, reply })
            .map_err(|_| GroupFailure::Stopped)?;
        answer.await.map_err(|_| GroupFailure::Stopped)?
    }
}
