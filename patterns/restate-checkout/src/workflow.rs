//! The checkout as a Restate workflow: the saga is plain sequential code, and each step's effect is
//! a `ctx.run` whose result the server journals before the code goes on.
//!
//! What the engine asks of this code: that it be deterministic between side effects (every
//! branch here depends only on the order, the workflow's key and journaled replies), and that
//! every effect on the world go through `ctx.run`, because on a replay the SDK hands back the
//! journaled result and does not run the closure again. What it gives in return: the saga log,
//! the retries, the timers behind them, and the recovery after a crash, none of which appears
//! below.
//!
//! The decisions are the orchestration chapter's: a refused step turns the saga back, and the
//! steps that are done, or whose outcome is unknown, are undone in strict reverse order; up to
//! the pivot, a step whose effect keeps failing for its patience is unknown and undone; after
//! the pivot, and for every compensation, the effect is retried until it succeeds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use orchestration::checkout::{Command, checkout};
use orchestration::saga::{Definition, Kind, Reply, Step, Terminal, command_id};
use restate_sdk::prelude::*;
use shop_domain::{OrderPlaced, Service};
use tracing::{error, info, warn};

use crate::participants::Participants;

/// The checkout workflow. Restate knows it as `Checkout`; a workflow's key is
/// its id, here the saga id, and a workflow runs once per key.
pub struct Checkout {
    /// What each step's side effect applies.
    participants: Arc<dyn Participants>,
    /// How long a step up to the pivot is retried before its outcome counts as
    /// unknown and the saga turns back (the book's orchestrator's timeout).
    patience: Duration,
}

impl Checkout {
    /// A workflow whose steps apply at `participants`, giving a step up to the
    /// pivot `patience` to answer.
    pub fn new(participants: Arc<dyn Participants>, patience: Duration) -> Self {
        Checkout { participants, patience }
    }
}

/// One saga's facts, as the steps need them: its id, the order, and what the
/// steps done so far reported, by participant.
struct Saga {
    id: String,
    order: OrderPlaced,
    details: BTreeMap<String, String>,
}

impl Saga {
    fn command(&self, step: usize, kind: Kind) -> Command {
        Command {
            command_id: command_id(&self.id, step, kind),
            saga_id: self.id.clone(),
            step,
            kind,
            order: self.order.clone(),
            details: self.details.clone(),
        }
    }
}

// ANCHOR: run
#[restate_sdk::workflow(client_visibility = "pub(crate)")]
impl Checkout {
    /// Checks out one order: the steps in order, and on a refusal (or no
    /// answer up to the pivot) the compensations of what ran, in reverse.
    #[handler]
    async fn run(
        &self,
        ctx: WorkflowContext<'_>,
        order: Json<OrderPlaced>,
    ) -> Result<Json<Terminal>, HandlerError> {
        let def = checkout();
        let (id, order) = (ctx.key().to_owned(), order.into_inner());
        let mut saga = Saga { id, order, details: BTreeMap::new() };
        let mut owed = vec![]; // steps done or unknown, oldest first
        for (step, s) in def.steps.iter().enumerate() {
            let patience = (step <= def.pivot).then_some(self.patience);
            let command = saga.command(step, Kind::Action);
            let why = match self.effect(&ctx, s, command, patience).await {
                Ok(Reply::Done { detail }) => {
                    saga.details.insert(s.participant.to_owned(), detail);
                    owed.push(step);
                    continue;
                }
                Ok(Reply::Refused { reason }) => reason,
                Err(gave_up) => {
                    warn!(saga = %saga.id, "{}: {gave_up}", s.participant);
                    owed.push(step); // it may have happened: undo it too
                    "no answer in time".to_owned()
                }
            };
            return self.compensate(&ctx, &def, &saga, owed, why).await;
        }
        info!(saga = %saga.id, "saga completed");
        Ok(Json(Terminal::Completed))
    }
}
// ANCHOR_END: run

impl Checkout {
    /// Undoes `owed` newest first; each compensation is retried until it
    /// answers. One that refuses leaves its step done: the saga is stuck.
    async fn compensate(
        &self,
        ctx: &WorkflowContext<'_>,
        def: &Definition,
        saga: &Saga,
        owed: Vec<usize>,
        reason: String,
    ) -> Result<Json<Terminal>, HandlerError> {
        warn!(saga = %saga.id, "turning back ({reason}): undo {owed:?} in reverse");
        for step in owed.into_iter().rev() {
            let command = saga.command(step, Kind::Compensation);
            let s = &def.steps[step];
            if let Reply::Refused { reason } =
                self.effect(ctx, s, command, None).await?
            {
                error!(saga = %saga.id, "{} refused ({reason})", s.compensation);
                return Ok(Json(Terminal::Stuck { step, reason }));
            }
        }
        info!(saga = %saga.id, "saga compensated: every step undone ({reason})");
        Ok(Json(Terminal::Compensated { reason }))
    }

    // ANCHOR: effect
    /// Applies `command` at the step's participant as a journaled side
    /// effect. With `patience`, the retries stop after that long and the
    /// error says so; without, they go on until the participant answers.
    async fn effect(
        &self,
        ctx: &WorkflowContext<'_>,
        step: &Step,
        command: Command,
        patience: Option<Duration>,
    ) -> Result<Reply, TerminalError> {
        let what = match command.kind {
            Kind::Action => step.action,
            Kind::Compensation => step.compensation,
        };
        let name = format!("{}.{what}", step.participant);
        let Some(participant) = Service::parse(step.participant) else {
            return Err(TerminalError::new(format!("no participant for {name}")));
        };
        let mut retry = RunRetryPolicy::new()
            .initial_delay(Duration::from_millis(100))
            .exponentiation_factor(2.0)
            .max_delay(Duration::from_secs(2));
        if let Some(limit) = patience {
            retry = retry.max_duration(limit);
        }
        let participants = Arc::clone(&self.participants);
        let reply = ctx
            .run(move || async move {
                Ok(Json(participants.apply(participant, command).await?))
            })
            .name(name.clone())
            .retry_policy(retry)
            .await?
            .into_inner();
        info!(saga = %ctx.key(), "{name}: {reply:?} (journaled)");
        Ok(reply)
    }
    // ANCHOR_END: effect
}
