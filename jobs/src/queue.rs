//! The transport: apalis over Redis. Redis carries only job ids; the job itself (payload,
//! status, attempts) is a row in PostgreSQL written before the id is pushed here.
//!
//! Each job kind has its own apalis queue, `{namespace}_{kind}` (no `:` in it: apalis-redis
//! splits channel names on `:`), so kinds can be scaled and watched separately. The apalis task
//! id is our job id, which makes a second push of the same job a no-op (apalis-redis writes task
//! data with HSETNX) and lets the reconciler ask Redis whether it still holds a job.

use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::{BackendExt, PollWith, TaskBuilder, TaskId, TaskSink};
use apalis_redis::{Client, Config as QueueConfig, ConnectionManager, RedisStorage};
use redis::aio::ConnectionManagerConfig;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use shomei_config::Config;
use shomei_schema::JobKind;

use crate::wake::{Announcement, Announcer, PollEvery, PushNotices};

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
    client: Client,
    conn: ConnectionManager,
    announcer: Arc<Announcer>,
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
            client,
            conn,
            announcer: Arc::default(),
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

    /// The backend a worker takes `kind`'s jobs from: the kind's storage, asked for work when a
    /// push of the kind is announced (`notices`, from [`Queue::listen_for_pushes`]) and every
    /// `every` in any case ([`PollEvery`]).
    pub fn worker_storage(
        &self,
        kind: JobKind,
        every: Duration,
        notices: &PushNotices,
    ) -> PollWith<JobStorage, PollEvery> {
        self.storage(kind)
            .poll_with_strategy(PollEvery::new(every).or_when(notices.of(kind)))
    }

    /// The channel pushes are announced on ([`crate::wake`]).
    fn announcements(&self) -> String {
        format!("{}_pushed", self.namespace)
    }

    /// Pushes a job id, and announces it to idle workers ([`crate::wake`]). Pushing an id
    /// Redis already holds does nothing.
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
            })?;
        // Announced off the caller's path: a submission does not wait for it.
        let wait = match self.announcer.after_push(kind) {
            Announcement::Now => None,
            Announcement::After(wait) => Some(wait),
            Announcement::Covered => return Ok(()),
        };
        let queue = self.clone();
        tokio::spawn(async move {
            if let Some(wait) = wait {
                tokio::time::sleep(wait).await;
                queue.announcer.trailing_sent(kind);
            }
            queue.announce(kind).await;
        });
        Ok(())
    }

    /// Tells the workers listening that `kind` has new jobs. A lost announcement costs a
    /// worker's poll period at most; the job is queued either way.
    async fn announce(&self, kind: JobKind) {
        let mut conn = self.conn.clone();
        let sent = redis::cmd("PUBLISH")
            .arg(self.announcements())
            .arg(kind.as_str())
            .query_async::<i64>(&mut conn)
            .await;
        if let Err(e) = sent {
            tracing::debug!(error = %e, kind = kind.as_str(), "announcing a push failed");
        }
    }

    /// Subscribes to the announcements of pushes and wakes this process's workers by kind, for
    /// as long as the process runs: a lost subscription (Redis restarted) is made again every
    /// second, and each new one wakes every worker once, for what was announced meanwhile.
    pub fn listen_for_pushes(&self) -> Arc<PushNotices> {
        let notices = Arc::new(PushNotices::default());
        let (client, channel, woken) = (self.client.clone(), self.announcements(), notices.clone());
        tokio::spawn(async move {
            // Said once per outage, not once a second.
            let mut told = false;
            loop {
                match subscribe(&client, &channel).await {
                    Ok(pubsub) => {
                        if told {
                            tracing::info!("listening to announced pushes again");
                        }
                        woken.hear(pubsub.into_on_message()).await;
                        tracing::warn!(
                            "lost the subscription to announced pushes; polling meanwhile"
                        );
                        told = true;
                    }
                    Err(e) if !told => {
                        tracing::warn!(error = %e, "cannot listen to announced pushes; polling meanwhile");
                        told = true;
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        notices
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

/// A connection of its own subscribed to `channel` (a subscribed connection takes no other
/// commands).
async fn subscribe(client: &Client, channel: &str) -> redis::RedisResult<redis::aio::PubSub> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    Ok(pubsub)
}
