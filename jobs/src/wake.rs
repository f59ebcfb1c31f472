//! How an idle worker learns that there is work: at once, from an announcement of the push, or
//! at the latest at its next poll.
//!
//! Whoever pushes a job (the API, a worker fanning out notifications, the reconciler)
//! announces it on Redis: `PUBLISH {namespace}_pushed <kind>` ([`Queue::push`]). Every worker
//! process subscribes to that channel ([`Queue::listen_for_pushes`]) and wakes its apalis
//! worker of that kind, which then fetches. The announcements are paced
//! (`Announcer`): at most one per kind and process every [`ANNOUNCE_EVERY`], and always one
//! after the last push, so a burst of submissions costs Redis a few hundred messages a second,
//! not one per job.
//!
//! An announcement can be lost (the subscription is down while Redis restarts), and apalis's
//! own retries fall due without a push, so each worker also polls ([`PollEvery`],
//! `SHOMEI_WORKER_POLL_MS`): the announcements make an idle worker quick, the poll makes it
//! certain.
//!
//! [`Queue::push`]: crate::queue::Queue::push
//! [`Queue::listen_for_pushes`]: crate::queue::Queue::listen_for_pushes

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use apalis::prelude::{PollSnapshot, PollStrategy};
use futures::task::AtomicWaker;
use futures::{Stream, StreamExt};
use tokio::time::Instant;

use shomei_schema::JobKind;

/// The shortest time between two announcements of one kind by one process.
pub const ANNOUNCE_EVERY: Duration = Duration::from_millis(5);

/// When to announce a push that just completed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Announcement {
    /// Now: nothing was announced for this kind in the last [`ANNOUNCE_EVERY`].
    Now,
    /// After this wait, then [`Announcer::trailing_sent`]: one was announced just now.
    After(Duration),
    /// Not at all: an announcement is already due after this push.
    Covered,
}

/// The pacing of one process's announcements, per kind.
#[derive(Default)]
pub(crate) struct Announcer {
    kinds: Mutex<[Paced; JobKind::ALL.len()]>,
}

#[derive(Default)]
struct Paced {
    last: Option<Instant>,
    trailing: bool,
}

impl Announcer {
    /// Decides for a push of `kind` that has just completed.
    pub(crate) fn after_push(&self, kind: JobKind) -> Announcement {
        let mut kinds = self.kinds.lock().expect("announcer lock");
        let paced = &mut kinds[kind as usize];
        let now = Instant::now();
        // A trailing announcement not sent yet is sent after this push.
        if paced.trailing {
            return Announcement::Covered;
        }
        match paced.last {
            Some(last) if now.duration_since(last) < ANNOUNCE_EVERY => {
                paced.trailing = true;
                Announcement::After(ANNOUNCE_EVERY - now.duration_since(last))
            }
            _ => {
                paced.last = Some(now);
                Announcement::Now
            }
        }
    }

    /// Called when an [`Announcement::After`] is about to be sent: a push completing from now
    /// on needs an announcement of its own.
    pub(crate) fn trailing_sent(&self, kind: JobKind) {
        let mut kinds = self.kinds.lock().expect("announcer lock");
        let paced = &mut kinds[kind as usize];
        paced.trailing = false;
        paced.last = Some(Instant::now());
    }
}

/// One process's wake-ups, one per kind, set by the announcements it hears.
pub struct PushNotices {
    kinds: [Arc<PushNotice>; JobKind::ALL.len()],
}

impl Default for PushNotices {
    fn default() -> Self {
        Self {
            kinds: std::array::from_fn(|_| Arc::default()),
        }
    }
}

impl PushNotices {
    /// The wake-up of `kind`'s worker (one consumer: the worker's [`PollEvery`]).
    pub fn of(&self, kind: JobKind) -> Arc<PushNotice> {
        self.kinds[kind as usize].clone()
    }

    /// Wakes each kind announced on `messages`, until they end (the subscription was lost).
    /// First wakes every kind: what was announced before they began is unknown.
    pub(crate) async fn hear(&self, mut messages: impl Stream<Item = redis::Msg> + Unpin) {
        self.wake_all();
        while let Some(message) = messages.next().await {
            let kind = message.get_payload::<String>().ok();
            if let Some(kind) = kind.as_deref().and_then(JobKind::parse) {
                self.wake(kind);
            }
        }
    }

    fn wake(&self, kind: JobKind) {
        self.kinds[kind as usize].wake();
    }

    fn wake_all(&self) {
        for notice in &self.kinds {
            notice.wake();
        }
    }
}

/// A worker's wake-up: set by an announcement, taken by the worker's next poll. Announcements
/// that come while one is pending wake nobody: the poll that takes it fetches for all of them.
#[derive(Default)]
pub struct PushNotice {
    pushed: AtomicBool,
    waker: AtomicWaker,
}

impl PushNotice {
    fn wake(&self) {
        if !self.pushed.swap(true, Ordering::AcqRel) {
            self.waker.wake();
        }
    }

    /// Registers `cx`'s waker and takes a pending wake-up.
    fn take(&self, cx: &Context<'_>) -> bool {
        self.waker.register(cx.waker());
        self.pushed.swap(false, Ordering::AcqRel)
    }
}

/// Wakes a worker when a push of its kind is announced and every `every` in any case, so that
/// it asks Redis for work; without a wake-up apalis only asks on its heartbeat.
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
    notice: Option<Arc<PushNotice>>,
}

impl PollEvery {
    pub fn new(every: Duration) -> Self {
        Self {
            // A zero period would fire at every poll and spin.
            every: every.max(Duration::from_millis(1)),
            timer: None,
            notice: None,
        }
    }

    /// Also wakes the worker when `notice` is set.
    pub fn or_when(mut self, notice: Arc<PushNotice>) -> Self {
        self.notice = Some(notice);
        self
    }
}

impl Clone for PollEvery {
    fn clone(&self) -> Self {
        Self {
            timer: None,
            notice: self.notice.clone(),
            ..*self
        }
    }
}

impl PollStrategy for PollEvery {
    fn poll_drive(&mut self, cx: &mut Context<'_>, _: &PollSnapshot) -> Poll<Option<()>> {
        let mut fired = self.notice.as_ref().is_some_and(|notice| notice.take(cx));
        let every = self.every;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(every)));
        // Re-arm and poll again until the timer is pending: that poll registers `cx`'s waker
        // for the next tick.
        while timer.as_mut().poll(cx).is_ready() {
            fired = true;
            timer.as_mut().reset(Instant::now() + every);
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
    use std::sync::atomic::AtomicUsize;
    use std::task::{Wake, Waker};

    use super::*;

    /// A waker that counts its wake-ups: the worker's task, as apalis's poll sees it.
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting_waker() -> (Waker, impl Fn() -> usize) {
        let wakes = Arc::new(Wakes(AtomicUsize::new(0)));
        (Waker::from(wakes.clone()), move || {
            wakes.0.load(Ordering::SeqCst)
        })
    }

    fn drive<S: PollStrategy>(strategy: &mut S, waker: &Waker) -> Poll<Option<()>> {
        strategy.poll_drive(&mut Context::from_waker(waker), &PollSnapshot::default())
    }

    #[tokio::test(start_paused = true)]
    async fn every_tick_wakes_the_worker_even_when_it_is_not_polled_in_between() {
        let (waker, count) = counting_waker();
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

    #[tokio::test(start_paused = true)]
    async fn an_announced_push_wakes_the_worker_at_once_and_a_burst_of_them_once() {
        let (waker, count) = counting_waker();
        let notices = PushNotices::default();
        let mut strategy =
            PollEvery::new(Duration::from_secs(60)).or_when(notices.of(JobKind::Sign));
        assert_eq!(drive(&mut strategy, &waker), Poll::Pending);

        // Another kind's announcement is not this worker's.
        notices.wake(JobKind::Timestamp);
        assert_eq!(count(), 0);

        // No time passes: only the announcement can have woken it.
        notices.wake(JobKind::Sign);
        notices.wake(JobKind::Sign);
        notices.wake(JobKind::Sign);
        assert_eq!(count(), 1, "a burst before the worker's poll wakes it once");
        assert_eq!(drive(&mut strategy, &waker), Poll::Ready(Some(())));
        assert_eq!(
            drive(&mut strategy, &waker),
            Poll::Pending,
            "the wake-up was taken"
        );

        notices.wake_all();
        assert_eq!(count(), 2);
        assert_eq!(drive(&mut strategy, &waker), Poll::Ready(Some(())));
    }

    #[tokio::test(start_paused = true)]
    async fn announcements_are_paced_and_one_always_follows_the_last_push() {
        let announcer = Announcer::default();
        assert_eq!(announcer.after_push(JobKind::Sign), Announcement::Now);
        // Kinds are paced apart.
        assert_eq!(
            announcer.after_push(JobKind::NotifyWebhook),
            Announcement::Now
        );

        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(
            announcer.after_push(JobKind::Sign),
            Announcement::After(ANNOUNCE_EVERY - Duration::from_millis(2))
        );
        // Pushes before the trailing announcement is sent are covered by it.
        assert_eq!(announcer.after_push(JobKind::Sign), Announcement::Covered);
        tokio::time::sleep(Duration::from_millis(3)).await;
        assert_eq!(announcer.after_push(JobKind::Sign), Announcement::Covered);

        // Once it is being sent, a push needs another: trailing again, the period counted
        // from the one being sent.
        announcer.trailing_sent(JobKind::Sign);
        assert_eq!(
            announcer.after_push(JobKind::Sign),
            Announcement::After(ANNOUNCE_EVERY)
        );
        announcer.trailing_sent(JobKind::Sign);
        tokio::time::sleep(ANNOUNCE_EVERY).await;
        assert_eq!(announcer.after_push(JobKind::Sign), Announcement::Now);
    }
}
