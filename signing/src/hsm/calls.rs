//! [`Calls`]: the guard between calls into a PKCS#11 module and its re-initialisation.
//!
//! `C_Finalize` while other threads are inside calls is undefined (PKCS#11 §5.4); p11-kit's
//! client was seen to abort the process on it. So every call holds an [`InFlight`] and a
//! re-initialisation first closes the guard ([`Calls::exclusive`]): new calls wait, and it waits
//! for those in flight to return.
//!
//! A call may never return. p11-kit 0.24's client leaves a thread waiting for a reply forever
//! when the connection breaks while another thread reads (`rpc_socket_read` waits on a condition
//! that the failing reader never signals): seen here, a signature's session check stuck in it,
//! holding the guard, so the module was never initialised again and the process never reached
//! the HSM again. The wait is therefore bounded: calls still in flight after the patience given
//! are abandoned (counted, and their threads left where they are) and the module is initialised
//! again without them. Their guards, if they ever return, no longer count.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[derive(Clone, Default)]
pub(super) struct Calls(Arc<Inner>);

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// A re-initialisation holds the guard: new calls wait.
    closed: bool,
    /// Counts the re-initialisations; a call belongs to the one it started after.
    cohort: u64,
    /// Calls of the current cohort not yet returned.
    in_flight: usize,
}

/// Held for the whole of one call (or a few calls on one session) into the module.
pub(super) struct InFlight<'a> {
    calls: &'a Inner,
    cohort: u64,
}

/// Held by a re-initialisation: no call is in flight but those abandoned; none starts until it
/// is dropped.
pub(super) struct Exclusive<'a> {
    calls: &'a Inner,
    /// Calls that did not return within the patience given.
    pub abandoned: usize,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Calls {
    /// Waits while a re-initialisation holds the guard. Never taken by a thread that holds
    /// one already (it would wait for itself).
    pub(super) fn enter(&self) -> InFlight<'_> {
        let mut state = self.0.lock();
        while state.closed {
            state = self
                .0
                .changed
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        state.in_flight += 1;
        InFlight {
            calls: &self.0,
            cohort: state.cohort,
        }
    }

    /// Stops new calls and waits up to `patience` for those in flight; any still running then
    /// are abandoned.
    pub(super) fn exclusive(&self, patience: Duration) -> Exclusive<'_> {
        let deadline = Instant::now() + patience;
        let mut state = self.0.lock();
        state.closed = true;
        while state.in_flight > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = self
                .0
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        let abandoned = std::mem::take(&mut state.in_flight);
        state.cohort += 1;
        Exclusive {
            calls: &self.0,
            abandoned,
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut state = self.calls.lock();
        if state.cohort == self.cohort {
            state.in_flight -= 1;
            if state.in_flight == 0 {
                self.calls.changed.notify_all();
            }
        }
    }
}

impl Drop for Exclusive<'_> {
    fn drop(&mut self) {
        self.calls.lock().closed = false;
        self.calls.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    const LONG: Duration = Duration::from_secs(30);

    #[test]
    fn exclusive_waits_for_calls_in_flight_and_holds_new_ones_back() {
        let calls = Calls::default();
        let call = calls.enter();
        let (entered, seen) = mpsc::channel();
        std::thread::scope(|s| {
            let (calls_1, calls_2) = (calls.clone(), calls.clone());
            let reinit = s.spawn(move || {
                let exclusive = calls_1.exclusive(LONG);
                let abandoned = exclusive.abandoned;
                // A call that started now would have been seen by now.
                std::thread::sleep(Duration::from_millis(50));
                drop(exclusive);
                abandoned
            });
            std::thread::sleep(Duration::from_millis(50));
            let later = s.spawn(move || {
                let _call = calls_2.enter();
                entered.send(()).unwrap();
            });
            std::thread::sleep(Duration::from_millis(50));
            assert!(
                seen.try_recv().is_err(),
                "a call started while the guard was being closed"
            );
            drop(call);
            assert_eq!(reinit.join().unwrap(), 0, "nothing was left running");
            later.join().unwrap();
            seen.try_recv()
                .expect("the held-back call ran once reopened");
        });
    }

    #[test]
    fn a_call_that_does_not_return_is_abandoned_after_the_patience_and_no_longer_counts() {
        let calls = Calls::default();
        let stuck = calls.enter();
        let started = Instant::now();
        let exclusive = calls.exclusive(Duration::from_millis(100));
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert_eq!(exclusive.abandoned, 1);
        drop(exclusive);

        // The next re-initialisation does not wait for it, and its late return changes nothing.
        let fresh = calls.enter();
        drop(stuck);
        drop(fresh);
        let started = Instant::now();
        let exclusive = calls.exclusive(LONG);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(exclusive.abandoned, 0);
    }
}
