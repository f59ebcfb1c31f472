//! The transport: apalis over Redis. Redis carries only job ids; the job itself (payload,
//! status, attempts) is a row in PostgreSQL written before the id is pushed here.
//!
//! Each job kind has its own apalis queue, `{namespace}_{kind}` (no `:` in it: apalis-redis
//! splits channel names on `:`), so kinds can be scaled and watched separately. The apalis task
//! id is our job id, which makes a second push of the same job a no-op (apalis-redis writes task
//! data with HSETNX) and lets the reconciler ask Redis whether it still holds a job.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use apalis::prelude::{
    BackendExt, PollSnapshot, PollStrategy, PollWith, TaskBuilder, TaskId, TaskSink,
};
use apalis_redis::{Client, Config as QueueConfig, ConnectionManager, RedisStorage};
use redis::aio::ConnectionManagerConfig;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use shomei_config::Config;
use shomei_schema::JobKind;

/// What travels through Redis: a reference to the job row, nothing else.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobMessage {
    pub job_id: Uuid,
}

pub type JobStorage = RedisStorage<JobMessage>;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("pushing job {job_id} to the queue: {reason}")]
    Push { job_id: Uuid, reason: String },
}

#[derive(Clone)]
pub struct Queue {
    conn: ConnectionManager,
    namespace: String,
    concurrency: usize,
    heartbeat: Duration,
}

impl Queue {
    pub async fn connect(config: &Config) -> Result<Self, QueueError> {
        let client = Client::open(config.redis_url.as_str())?;
        // The default 500 ms response timeout fails heartbeats under load, and a failed
        // heartbeat stops an apalis worker: give Redis room before calling it gone.
        let settings = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(10)));
        let conn = client.get_connection_manager_with_config(settings).await?;
        Ok(Self {
            conn,
            namespace: config.queue_namespace.clone(),
            concurrency: config.worker.concurrency.max(1),
            heartbeat: config.worker.heartbeat,
        })
    }

    fn queue_name(&self, kind: JobKind) -> String {
        format!("{}_{}", self.namespace, kind.as_str())
    }

    fn config(&self, kind: JobKind) -> QueueConfig {
        QueueConfig::default()
            .queue(self.queue_name(kind))
            // One fetch claims at most as many jobs as the worker can start at once; more would
            // sit in this worker's in-flight set while other workers idle.
            .batch_size(self.concurrency)
            .heartbeat_interval(self.heartbeat)
            // A worker silent for 3 beats is dead and its jobs go to the others (the apalis
            // default waits 10 beats of 30 s: five minutes).
            .missed_heartbeats(3)
        // `persist_results(false)` looks tempting (results live in PostgreSQL) but in
        // apalis-redis 1.0 it also turns off acknowledgement: tasks would never leave the
        // worker's in-flight set, and failed ones would never be rescheduled.
    }

    /// The apalis storage of one kind, configured for both producers and workers.
    pub fn storage(&self, kind: JobKind) -> JobStorage {
        RedisStorage::new(self.conn.clone()).with_config(self.config(kind))
    }

    /// The backend a worker takes `kind`'s jobs from: the kind's storage, asked for work every
    /// `every` while the worker is idle (see [`PollEvery`]).
    pub fn worker_storage(
        &self,
        kind: JobKind,
        every: Duration,
    ) -> PollWith<JobStorage, PollEvery> {
        self.storage(kind).poll_with_strategy(PollEvery::new(every))
    }

    /// Pushes a job id. Pushing an id Redis already holds does nothing.
    pub async fn push(&self, kind: JobKind, job_id: Uuid) -> Result<(), QueueError> {
        let task = TaskBuilder::new(JobMessage { job_id })
            .task_id(TaskId::from_string(job_id.to_string()))
            .build();
        self.storage(kind)
            .push_task(task)
            .await
            .map_err(|e| QueueError::Push {
                job_id,
                reason: e.to_string(),
            })
    }

    /// Whether Redis still knows each job, in any state (queued, in flight, finished): one
    /// answer per job, in order, in one round trip (a pipeline of `HEXISTS`), however many the
    /// reconciler looks at.
    pub async fn contains_all(&self, jobs: &[(JobKind, Uuid)]) -> Result<Vec<bool>, QueueError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (kind, job_id) in jobs {
            pipe.cmd("HEXISTS")
                .arg(format!("{}:data", self.queue_name(*kind)))
                .arg(job_id.to_string());
        }
        let mut conn = self.conn.clone();
        Ok(pipe.query_async(&mut conn).await?)
    }

    /// Forgets up to `limit` tasks apalis has finished (done or dead). apalis-redis keeps every
    /// task's data and metadata until told otherwise, so without this Redis grows with every
    /// job ever run. Finished jobs' outcomes are in PostgreSQL; Redis needs none of it.
    pub async fn prune_finished(&self, kind: JobKind, limit: usize) -> Result<usize, QueueError> {
        // SPOP takes each id once even with several workers pruning at the same time.
        const PRUNE: &str = r"
            local pruned = 0
            for _, set in ipairs({KEYS[2], KEYS[3]}) do
                for _, id in ipairs(redis.call('SPOP', set, ARGV[2])) do
                    redis.call('HDEL', KEYS[1], id)
                    redis.call('DEL', ARGV[1] .. ':' .. id)
                    pruned = pruned + 1
                end
            end
            return pruned";
        let config = self.config(kind);
        let mut conn = self.conn.clone();
        Ok(redis::Script::new(PRUNE)
            .key(config.job_data_hash())
            .key(config.done_jobs_set())
            .key(config.dead_jobs_set())
            .arg(config.job_meta_hash())
            .arg(limit)
            .invoke_async(&mut conn)
            .await?)
    }

    /// Pushes a job that runs again after apalis finished its task (a failed job retried by
    /// hand, a run the sweeper took back). apalis keeps a finished task's data until it is
    /// pruned, and a push of an id it still holds does nothing, so a finished task is forgotten
    /// first. A task still waiting or in flight is left alone: it runs anyway.
    pub async fn requeue(&self, kind: JobKind, job_id: Uuid) -> Result<(), QueueError> {
        const FORGET: &str = r"
            if redis.call('SREM', KEYS[2], ARGV[2]) + redis.call('SREM', KEYS[3], ARGV[2]) > 0 then
                redis.call('HDEL', KEYS[1], ARGV[2])
                redis.call('DEL', ARGV[1] .. ':' .. ARGV[2])
            end
            return 0";
        let config = self.config(kind);
        let mut conn = self.conn.clone();
        redis::Script::new(FORGET)
            .key(config.job_data_hash())
            .key(config.done_jobs_set())
            .key(config.dead_jobs_set())
            .arg(config.job_meta_hash())
            .arg(job_id.to_string())
            .invoke_async::<i64>(&mut conn)
            .await?;
        self.push(kind, job_id).await
    }

    pub async fn ping(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        redis::cmd("PING").query_async::<String>(&mut conn).await?;
        Ok(())
    }
}

/// Wakes an idle worker every `every`, so that it asks Redis for work; without a wake-up apalis
/// only asks on its heartbeat.
///
/// apalis-core 1.0's own `IntervalStrategy` (`poll_with_interval`) loses its wake-up: when its
/// timer fires it arms the next one without polling it, so no waker is registered for the next
/// tick. That is harmless while the fetch that follows is still pending when the worker's poll
/// returns (the worker is polled again when it finishes, and polls the new timer then); but a
/// fetch that completes within the same poll (Redis answered at once) leaves the worker with
/// nothing to wake it but its heartbeat. Seen in `loadtest/run.sh 2 4000`: 4,000 sign jobs in
/// Redis for 1.8 s while both workers slept, with a 3 s heartbeat (apalis's default is 30 s).
/// This one polls the timer it arms, so its waker is always registered.
pub struct PollEvery {
    every: Duration,
    // Made on the first poll, which runs on the worker's runtime (a `Sleep` needs its timer).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl PollEvery {
    pub fn new(every: Duration) -> Self {
        Self {
            // A zero period would fire at every poll and spin.
            every: every.max(Duration::from_millis(1)),
            timer: None,
        }
    }
}

impl Clone for PollEvery {
    fn clone(&self) -> Self {
        Self::new(self.every)
    }
}

impl PollStrategy for PollEvery {
    fn poll_drive(&mut self, cx: &mut Context<'_>, _: &PollSnapshot) -> Poll<Option<()>> {
        let every = self.every;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(every)));
        let mut fired = false;
        // Re-arm and poll again until the timer is pending: that poll registers `cx`'s waker
        // for the next tick.
        while timer.as_mut().poll(cx).is_ready() {
            fired = true;
            timer.as_mut().reset(tokio::time::Instant::now() + every);
        }
        if fired {
            Poll::Ready(Some(()))
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    use super::*;

    /// A waker that counts its wake-ups: the worker's task, as apalis's poll sees it.
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn drive<S: PollStrategy>(strategy: &mut S, waker: &Waker) -> Poll<Option<()>> {
        strategy.poll_drive(&mut Context::from_waker(waker), &PollSnapshot::default())
    }

    #[tokio::test(start_paused = true)]
    async fn every_tick_wakes_the_worker_even_when_it_is_not_polled_in_between() {
        let wakes = Arc::new(Wakes(AtomicUsize::new(0)));
        let waker = Waker::from(wakes.clone());
        let count = || wakes.0.load(Ordering::SeqCst);
        let mut strategy = PollEvery::new(Duration::from_millis(50));

        assert_eq!(drive(&mut strategy, &waker), Poll::Pending);
        tokio::time::sleep(Duration::from_millis(49)).await;
        assert_eq!(count(), 0, "woken before its period");
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(count(), 1);

        // The worker's poll after the wake-up: the tick fired. Its fetch completes within the
        // same poll and finds nothing, so the worker is not polled again: only the strategy's
        // next tick can wake it. (apalis's IntervalStrategy left no waker here.)
        assert_eq!(drive(&mut strategy, &waker), Poll::Ready(Some(())));
        tokio::time::sleep(Duration::from_millis(51)).await;
        assert_eq!(count(), 2, "the next tick did not wake the worker");
        assert_eq!(drive(&mut strategy, &waker), Poll::Ready(Some(())));
        tokio::time::sleep(Duration::from_millis(51)).await;
        assert_eq!(count(), 3);

        // Polled again before its period is over, it has not fired.
        assert_eq!(drive(&mut strategy, &waker), Poll::Ready(Some(())));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(drive(&mut strategy, &waker), Poll::Pending);
    }
}
