//! Crashing the orchestrator on purpose, from outside its code: a [`SagaLog`] that wraps the real
//! one and follows a [`Crash`] plan. The crash-matrix tests and the example's `--crash-after-step`
//! use it; the orchestrator itself has no crash branch.
//!
//! The orchestrator ends at the first error its log returns, in any worker, as a process ends
//! when it dies: its connection closes, RabbitMQ requeues the reply it had not acknowledged, and a
//! restart resumes from what the log holds. So an `apply` that fails on the planned input, before
//! its records are committed or just after, is a crash at exactly that boundary.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use shop_domain::OrderPlaced;
use tracing::warn;

use crate::log::{Applied, LogError, SagaLog};
use crate::saga::{Definition, Input, Kind, Record};

// ANCHOR: Crash
/// Where an orchestrator dies on purpose (a fault plan): at a step's action,
/// after its intent is logged but before the command is sent, or after its
/// reply arrived but before the reply is logged. Steps count from 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crash {
    /// Intent logged, command not sent.
    AfterIntent(usize),
    /// Reply received, not logged.
    BeforeOutcome(usize),
}
// ANCHOR_END: Crash

/// A saga log with one crash planned, which otherwise passes every call on to
/// `inner`. At [`Crash::BeforeOutcome`], `apply` of the step's reply returns
/// [`LogError::Crashed`] and appends nothing; at [`Crash::AfterIntent`], the
/// `apply` that appends the step's first intent commits it, then returns the
/// error, so the command is never sent. The crash happens once: a restarted
/// orchestrator gets the plain log.
pub struct CrashingLog<L> {
    inner: Arc<L>,
    crash: Crash,
    /// Whether the crash is still to come.
    armed: AtomicBool,
}

impl<L> CrashingLog<L> {
    /// Wraps `inner` with `crash` still to come.
    pub fn new(inner: Arc<L>, crash: Crash) -> Self {
        CrashingLog { inner, crash, armed: AtomicBool::new(true) }
    }

    /// Whether this is the planned crash (and the first time it comes).
    fn dies(&self, planned: bool) -> bool {
        planned && self.armed.swap(false, Relaxed)
    }
}

impl<L: SagaLog> SagaLog for CrashingLog<L> {
    async fn create(
        &self,
        saga_id: &str,
        order: &OrderPlaced,
        owner: &str,
    ) -> Result<bool, LogError> {
        self.inner.create(saga_id, order, owner).await
    }

    async fn apply(
        &self,
        saga_id: &str,
        owner: &str,
        saga: &Definition,
        input: &Input,
    ) -> Result<Applied, LogError> {
        if let Input::Reply { step, kind: Kind::Action, .. } = *input
            && self.dies(self.crash == Crash::BeforeOutcome(step))
        {
            let what = action(saga, step);
            warn!(
                saga = %saga_id,
                "crash! {what} replied; the orchestrator dies before logging it"
            );
            return Err(LogError::Crashed(self.crash));
        }
        let applied = self.inner.apply(saga_id, owner, saga, input).await?;
        if let Crash::AfterIntent(step) = self.crash {
            let intent = Record::Intent { step, kind: Kind::Action, attempt: 1 };
            if self.dies(applied.appended.contains(&intent)) {
                let what = action(saga, step);
                warn!(
                    saga = %saga_id,
                    "crash! {what}: intent logged; the orchestrator dies before \
                     sending the command"
                );
                return Err(LogError::Crashed(self.crash));
            }
        }
        Ok(applied)
    }

    async fn claim(
        &self,
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<String>, LogError> {
        self.inner.claim(owner, lease).await
    }

    async fn load(
        &self,
        saga_id: &str,
    ) -> Result<Option<(OrderPlaced, Vec<Record>)>, LogError> {
        self.inner.load(saga_id).await
    }
}

/// A step's action as the narration names it: `payments.authorize`. A step the
/// saga does not have (the orchestrator dead-letters replies for those before
/// they reach the log) is named by its number.
fn action(saga: &Definition, step: usize) -> String {
    match saga.steps.get(step) {
        Some(s) => format!("{}.{}", s.participant, s.action),
        None => format!("step {step}"),
    }
}

#[cfg(test)]
mod tests {
    use shop_domain::Line;

    use super::*;
    use crate::checkout::checkout;
    use crate::log::MemLog;
    use crate::saga::Reply;

    async fn saga_in(log: &MemLog) {
        let order = OrderPlaced {
            order_id: "o-1".into(),
            customer_id: "c-1".into(),
            lines: vec![Line { sku: "kettle".into(), quantity: 1 }],
            total_cents: 1450,
            ship_to: "NL".into(),
        };
        assert!(log.create("s", &order, "o").await.unwrap());
    }

    async fn records(log: &MemLog) -> Vec<Record> {
        log.load("s").await.unwrap().unwrap().1
    }

    #[tokio::test]
    async fn after_intent_commits_the_intent_then_fails_once() {
        let (saga, mem) = (checkout(), Arc::new(MemLog::default()));
        saga_in(&mem).await;
        let log = CrashingLog::new(Arc::clone(&mem), Crash::AfterIntent(0));
        let died = log.apply("s", "o", &saga, &Input::Start).await;
        assert!(matches!(died, Err(LogError::Crashed(Crash::AfterIntent(0)))));
        let intent = Record::Intent { step: 0, kind: Kind::Action, attempt: 1 };
        assert_eq!(records(&mem).await, [intent]);
        let reply = Reply::Done { detail: "reserved".into() };
        let next = Input::Reply { step: 0, kind: Kind::Action, reply };
        assert!(log.apply("s", "o", &saga, &next).await.is_ok(), "crashed once");
    }

    #[tokio::test]
    async fn before_outcome_appends_nothing_and_fails_once() {
        let (saga, mem) = (checkout(), Arc::new(MemLog::default()));
        saga_in(&mem).await;
        let log = CrashingLog::new(Arc::clone(&mem), Crash::BeforeOutcome(0));
        log.apply("s", "o", &saga, &Input::Start).await.unwrap();
        let reply = Reply::Done { detail: "reserved".into() };
        let input = Input::Reply { step: 0, kind: Kind::Action, reply };
        let died = log.apply("s", "o", &saga, &input).await;
        assert!(matches!(died, Err(LogError::Crashed(Crash::BeforeOutcome(0)))));
        assert_eq!(records(&mem).await.len(), 1, "only the intent");
        let again = log.apply("s", "o", &saga, &input).await.unwrap();
        assert!(!again.appended.is_empty(), "a restart logs the reply");
    }
}
