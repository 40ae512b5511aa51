//! Breaking a relay on purpose, from outside its code: a [`Publisher`] that wraps the real one
//! and follows a [`FaultPlan`]. The tests and the examples' "break it" flags use it; the relay
//! itself never knows.
//!
//! A publish the plan fails returns an error, as a broker's refusal would. A relay the plan kills
//! publishes its allowed rows, waits for their acknowledgements, and then never returns from the
//! publish in progress: the pass can no longer mark anything. [`FaultyPublisher::died`] tells the
//! supervisor, which drops the relay, as a process dies; the relay's transaction rolls back with
//! it, and its rows are pending again.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tracing::warn;

use crate::relay::{ClaimedRow, PublishError, Publisher};

/// What to break.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultPlan {
    /// The first this-many publish attempts fail as if the broker refused them.
    pub fail_first: u32,
    /// Die once this many rows are published and acknowledged, before any of
    /// them is marked sent.
    pub die_after: Option<usize>,
}

/// A publisher that follows a [`FaultPlan`], and otherwise passes every row on to
/// `inner`. Clones share the plan's progress, so a supervisor can keep one to
/// wait for the death of the relay that owns the other.
#[derive(Clone)]
pub struct FaultyPublisher<P> {
    inner: P,
    plan: FaultPlan,
    progress: Arc<Progress>,
}

struct Progress {
    failed: AtomicU32,
    /// Sends let through to `inner` (at most `die_after`).
    started: AtomicUsize,
    /// The keys of the rows acknowledged so far.
    acknowledged: Mutex<Vec<String>>,
    /// How many rows were published when the relay died.
    died: watch::Sender<Option<usize>>,
}

impl<P> FaultyPublisher<P> {
    /// Wraps `inner` with a fresh count: `plan` counts the publishes of this
    /// publisher and its clones from here on.
    pub fn new(inner: P, plan: FaultPlan) -> Self {
        let progress = Progress {
            failed: AtomicU32::new(0),
            started: AtomicUsize::new(0),
            acknowledged: Mutex::new(Vec::new()),
            died: watch::Sender::new(None),
        };
        FaultyPublisher { inner, plan, progress: Arc::new(progress) }
    }

    /// Completes when the plan has killed the relay, with how many rows it had
    /// published; never, for a plan that does not kill it. The caller then drops
    /// the relay, as the process it stands for would die.
    pub async fn died(&self) -> usize {
        let mut died = self.progress.died.subscribe();
        // `wait_for` fails only once the sender is gone, and `self` holds it.
        if let Ok(published) = died.wait_for(Option::is_some).await
            && let Some(published) = *published
        {
            return published;
        }
        std::future::pending().await
    }

    /// Whether this attempt is one of the failures the plan injects.
    fn inject_failure(&self) -> bool {
        let limit = self.plan.fail_first;
        let next = |k: u32| (k < limit).then_some(k + 1);
        self.progress.failed.fetch_update(Relaxed, Relaxed, next).is_ok()
    }

    /// Records an acknowledged row; once the plan's last allowed row is in, the
    /// relay dies. Returns whether it died with this row.
    fn acknowledged(&self, row: &ClaimedRow, limit: usize) -> bool {
        let mut keys =
            self.progress.acknowledged.lock().unwrap_or_else(|p| p.into_inner());
        keys.push(row.aggregate_id().to_owned());
        if keys.len() < limit {
            return false;
        }
        let (published, list) = (keys.len(), keys.join(", "));
        let events = if published == 1 { "event" } else { "events" };
        warn!(
            "crash! published {published} {events} (keys {list}), marked none sent"
        );
        self.progress.died.send_replace(Some(published));
        true
    }
}

impl<P: Publisher> Publisher for FaultyPublisher<P> {
    async fn publish(&self, row: &ClaimedRow) -> Result<(i32, i64), PublishError> {
        if self.inject_failure() {
            let why = "the broker refused the event (injected by the fault plan)";
            return Err(PublishError::Refused(why.to_owned()));
        }
        let Some(limit) = self.plan.die_after else {
            return self.inner.publish(row).await;
        };
        if self.progress.started.fetch_add(1, Relaxed) >= limit {
            // The process is dying: nothing more goes out.
            return std::future::pending().await;
        }
        let published = self.inner.publish(row).await;
        if published.is_ok() && self.acknowledged(row, limit) {
            // Dead between the broker's acknowledgement and the marking.
            return std::future::pending().await;
        }
        published
    }
}
