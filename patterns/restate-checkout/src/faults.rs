//! Crashing the service process on purpose, from outside the workflow: a [`Participants`] wrapper
//! that stops at a planned step boundary, says so in one line, and waits there to be killed.
//!
//! The example's `--kill-worker` and the crash-matrix tests start the service process with a
//! plan, wait for that line, and send the process SIGKILL, as an operator or the kernel's OOM
//! killer would. The workflow the chapter includes has no crash branch: the plan lives here.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use futures::future::BoxFuture;
use orchestration::checkout::Command;
use orchestration::saga::{Kind, Reply};
use shop_domain::Service;
use tracing::warn;

use crate::participants::{Participants, StepError};

/// What the service process logs when it reached its planned crash point;
/// whoever started it kills it when this appears.
pub const PAUSED: &str = "crash point reached, waiting for SIGKILL";

// ANCHOR: Crash
/// Where the service process stops and waits to be killed, at a step's
/// action (steps count from 0): before its effect is applied, or after the
/// effect committed and before the engine has journaled its reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crash {
    /// The participant has not applied the command yet.
    BeforeEffect(usize),
    /// The participant committed; the reply has not reached the journal.
    AfterEffect(usize),
}
// ANCHOR_END: Crash

impl Crash {
    /// The plan as a command-line argument: `before:2`, `after:0`.
    pub fn to_arg(self) -> String {
        match self {
            Crash::BeforeEffect(step) => format!("before:{step}"),
            Crash::AfterEffect(step) => format!("after:{step}"),
        }
    }

    /// Reads [`Crash::to_arg`]'s form back.
    pub fn parse(arg: &str) -> Option<Crash> {
        let (when, step) = arg.split_once(':')?;
        let step = step.parse().ok()?;
        match when {
            "before" => Some(Crash::BeforeEffect(step)),
            "after" => Some(Crash::AfterEffect(step)),
            _ => None,
        }
    }
}

/// Participants with one crash planned: at the planned boundary of the
/// planned step's action, the call logs [`PAUSED`] and never returns. The
/// plan fires once; every other call passes straight to `inner`.
pub struct Pausing<P> {
    inner: P,
    crash: Crash,
    armed: AtomicBool,
}

impl<P> Pausing<P> {
    /// Wraps `inner` with `crash` still to come.
    pub fn new(inner: P, crash: Crash) -> Self {
        Pausing { inner, crash, armed: AtomicBool::new(true) }
    }

    /// Stops here for good if this is the planned point, the first time.
    async fn maybe_pause(&self, here: Crash, command: &Command) {
        if command.kind == Kind::Action
            && here == self.crash
            && self.armed.swap(false, Relaxed)
        {
            warn!("{PAUSED} ({:?} of {})", here, command.command_id);
            std::future::pending::<()>().await;
        }
    }
}

impl<P: Participants> Participants for Pausing<P> {
    fn apply(
        &self,
        participant: Service,
        command: Command,
    ) -> BoxFuture<'_, Result<Reply, StepError>> {
        Box::pin(async move {
            let step = command.step;
            self.maybe_pause(Crash::BeforeEffect(step), &command).await;
            let reply = self.inner.apply(participant, command.clone()).await?;
            self.maybe_pause(Crash::AfterEffect(step), &command).await;
            Ok(reply)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_round_trip_as_arguments() {
        for crash in [Crash::BeforeEffect(0), Crash::AfterEffect(3)] {
            assert_eq!(Crash::parse(&crash.to_arg()), Some(crash));
        }
        assert_eq!(Crash::parse("during:1"), None);
        assert_eq!(Crash::parse("after:x"), None);
    }
}
