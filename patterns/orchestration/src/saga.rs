//! The saga engine, with no I/O: what the orchestrator decides, as a pure function of the
//! saga's log so far and the one thing that just happened (a reply or a timeout).
//!
//! The log is a list of [`Record`]s. Replaying it gives the saga's [`State`]; [`decide`] takes
//! that state and an [`Input`] and returns the records to append. The runtime appends them in one
//! transaction and only then sends the command of each new [`Record::Intent`]: an intent is
//! durable before its command leaves, so a crash between the two is repaired by sending it again
//! (the participant applies each command id at most once). Because an intent for an action is
//! written before the action runs, the orchestrator always knows which compensations it owes,
//! even when the reply is lost.
//!
//! What the engine promises, whatever arrives twice, late or never:
//! - a step whose reply does not come is *unknown*, not failed: at or before the pivot it is
//!   compensated (its compensation is safe if it never happened), after the pivot it is retried
//!   with the same command id until it answers;
//! - compensations run one at a time, in strict reverse order of the steps that ran (or may
//!   have run), and an unanswered one is retried until it answers;
//! - a compensation must not refuse (the participants here never do); if one does anyway, the
//!   step is *not* counted as undone: the saga ends [`Terminal::Stuck`], for a person to settle,
//!   rather than claiming a compensation that did not happen;
//! - a reply that is not for the pending command (a duplicate, a reply to an attempt given up
//!   on up to the pivot, one for a step already compensated) changes nothing. After the pivot
//!   a retry keeps the same command, so the reply of any attempt of it is accepted.

use serde::{Deserialize, Serialize};

/// The shape of a saga: its steps in order, and the pivot, the last step that
/// may still be undone. Steps after the pivot must eventually succeed, so an
/// unanswered one is retried rather than compensated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Definition {
    /// What the saga is called (`checkout`), for people reading it.
    pub name: &'static str,
    /// Run in this order, undone in the reverse.
    pub steps: Vec<Step>,
    /// Index of the pivot step in `steps`.
    pub pivot: usize,
}

/// One step: which participant does it, what it is asked to do, and what undoes
/// it. Both names travel in the command; the participant knows what they mean.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The service whose command queue the step's commands go to.
    pub participant: &'static str,
    /// What the participant is asked to do.
    pub action: &'static str,
    /// What undoes the action.
    pub compensation: &'static str,
}

/// Whether a command does a step or undoes it.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
pub enum Kind {
    /// Do the step.
    Action,
    /// Undo the step.
    Compensation,
}

// ANCHOR: Record
/// One line of a saga's durable log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// About to send this command (attempt 1, or a retry of the same command).
    Intent {
        /// Index into the definition's steps.
        step: usize,
        /// Do or undo.
        kind: Kind,
        /// From 1; a timer names its attempt, so an old one is ignored.
        attempt: u32,
    },
    /// What came of it.
    Outcome {
        /// The step of the intent it answers.
        step: usize,
        /// The kind of the intent it answers.
        kind: Kind,
        /// Done, refused, or no answer in time.
        outcome: Outcome,
    },
    /// The saga is over; nothing is appended after this.
    Finished(Terminal),
}

/// What came of a command, as the log keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The participant did it.
    Done {
        /// What the participant reports (a tracking number, ...).
        detail: String,
    },
    /// The participant refused, with nothing done (stock short, card declined).
    Refused {
        /// The participant's words.
        reason: String,
    },
    /// No reply in time: it may or may not have happened.
    TimedOut,
}

/// How a saga ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Terminal {
    /// Every step's action is done.
    Completed,
    /// Every step that ran (or may have) was undone.
    Compensated {
        /// Why the saga turned back: the refusal or timeout that started it.
        reason: String,
    },
    /// The compensation of `step` was refused: that step is not undone, and
    /// no machine can decide what to do about it. A person must.
    Stuck {
        /// The step left done.
        step: usize,
        /// Why its compensation was refused.
        reason: String,
    },
}
// ANCHOR_END: Record

/// What just happened to a saga.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// The saga was created: begin.
    Start,
    /// A participant answered the command for `(step, kind)`.
    Reply {
        /// The step the command was for.
        step: usize,
        /// Whether the command did or undid it.
        kind: Kind,
        /// What the participant said.
        reply: Reply,
    },
    /// The wait for attempt `attempt` of `(step, kind)` ran out.
    Timeout {
        /// The step of the command waited for.
        step: usize,
        /// Its kind.
        kind: Kind,
        /// Which attempt the timer was for: a later attempt makes it stale.
        attempt: u32,
    },
}

/// A participant's answer, as it travels back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Reply {
    /// The participant did it. A resent command is answered with the same reply
    /// again, from the participant's inbox.
    Done {
        /// What it reports, kept in the log's [`Outcome::Done`].
        detail: String,
    },
    /// The participant would not, and changed nothing.
    Refused {
        /// Why, kept in the log and in the saga's end.
        reason: String,
    },
}

/// Where a saga stands: the fold of its log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// The command sent and not yet answered: `(step, kind, attempt)`.
    pub pending: Option<(usize, Kind, u32)>,
    /// For each step, what its action came to, if anything yet.
    pub actions: Vec<Option<Outcome>>,
    /// Steps whose compensation is done, in the order they were done.
    pub compensated: Vec<usize>,
    /// A compensation that was refused: `(step, reason)`. Not undone.
    pub refused_compensation: Option<(usize, String)>,
    /// Set once compensation began, with why.
    pub compensating: Option<String>,
    /// How it ended, once it has: no input changes a finished saga.
    pub finished: Option<Terminal>,
}

impl State {
    /// Replays a log.
    pub fn replay(records: &[Record]) -> State {
        let mut state = State::default();
        for record in records {
            state.apply(record);
        }
        state
    }

    fn apply(&mut self, record: &Record) {
        match record {
            Record::Intent { step, kind, attempt } => {
                self.pending = Some((*step, *kind, *attempt));
            }
            Record::Outcome { step, kind, outcome } => {
                self.pending = None;
                match kind {
                    Kind::Action => {
                        if self.actions.len() <= *step {
                            self.actions.resize(step + 1, None);
                        }
                        self.actions[*step] = Some(outcome.clone());
                        if let Some(reason) = failure(outcome) {
                            self.compensating.get_or_insert(reason);
                        }
                    }
                    Kind::Compensation => match outcome {
                        Outcome::Done { .. } => self.compensated.push(*step),
                        Outcome::Refused { reason } => {
                            let refused = (*step, reason.clone());
                            self.refused_compensation = Some(refused);
                        }
                        // Never logged: an unanswered compensation is resent.
                        Outcome::TimedOut => {}
                    },
                }
            }
            Record::Finished(terminal) => {
                self.pending = None;
                self.finished = Some(terminal.clone());
            }
        }
    }

    /// The outcome of step `step`'s action, if it has one.
    pub fn action(&self, step: usize) -> Option<&Outcome> {
        self.actions.get(step).and_then(Option::as_ref)
    }

    /// The steps that must be undone: every step whose action is done or
    /// unknown, newest first. A refused step did nothing and is skipped.
    pub fn owed(&self) -> Vec<usize> {
        let mut owed: Vec<usize> = (0..self.actions.len())
            .filter(|&step| {
                matches!(
                    self.action(step),
                    Some(Outcome::Done { .. } | Outcome::TimedOut)
                )
            })
            .collect();
        owed.reverse();
        owed
    }
}

/// Why an action's outcome sends the saga backwards, if it does. (A timeout
/// after the pivot never reaches the log as an outcome: it is retried.)
fn failure(outcome: &Outcome) -> Option<String> {
    match outcome {
        Outcome::Done { .. } => None,
        Outcome::Refused { reason } => Some(reason.clone()),
        Outcome::TimedOut => Some("no answer in time".to_owned()),
    }
}

// ANCHOR: decide
/// The orchestrator's whole decision logic: given the saga's state and what
/// just happened, the records to append. Empty means "nothing to do": the input
/// was a duplicate, late, or for a saga already finished.
pub fn decide(saga: &Definition, state: &State, input: &Input) -> Vec<Record> {
    if state.finished.is_some() {
        return vec![];
    }
    match *input {
        Input::Start if state == &State::default() => intent(0, Kind::Action, 1),
        Input::Start => vec![],
        Input::Reply { step, kind, ref reply } => {
            // Any attempt of the pending command counts (a retry resends the
            // same command); anything else is a duplicate or given up on.
            if state.pending.map(|(s, k, _)| (s, k)) != Some((step, kind)) {
                return vec![];
            }
            let outcome = match reply {
                Reply::Done { detail } => Outcome::Done { detail: detail.clone() },
                Reply::Refused { reason } => {
                    Outcome::Refused { reason: reason.clone() }
                }
            };
            advance(saga, state, Record::Outcome { step, kind, outcome })
        }
        Input::Timeout { step, kind, attempt } => {
            if state.pending != Some((step, kind, attempt)) {
                return vec![]; // an old timer: that attempt was answered
            }
            match kind {
                // Unknown before the pivot: undo it (and what came before).
                Kind::Action if step <= saga.pivot => {
                    let outcome = Outcome::TimedOut;
                    advance(saga, state, Record::Outcome { step, kind, outcome })
                }
                // After the pivot, or a compensation: the same command again.
                _ => intent(step, kind, attempt + 1),
            }
        }
    }
}

/// Appends `outcome`, then decides the next command from the new state.
fn advance(saga: &Definition, state: &State, outcome: Record) -> Vec<Record> {
    let mut after = state.clone();
    after.apply(&outcome);
    if let Some((step, reason)) = after.refused_compensation.clone() {
        let stuck = Record::Finished(Terminal::Stuck { step, reason });
        return vec![outcome, stuck];
    }
    let next = match after.compensating.clone() {
        None => {
            let done = after.actions.len();
            if done < saga.steps.len() {
                intent(done, Kind::Action, 1)
            } else {
                vec![Record::Finished(Terminal::Completed)]
            }
        }
        Some(reason) => {
            // Strict reverse order: the newest owed step not yet undone.
            let next = after
                .owed()
                .into_iter()
                .find(|step| !after.compensated.contains(step));
            match next {
                Some(step) => intent(step, Kind::Compensation, 1),
                None => vec![Record::Finished(Terminal::Compensated { reason })],
            }
        }
    };
    [vec![outcome], next].concat()
}
// ANCHOR_END: decide

fn intent(step: usize, kind: Kind, attempt: u32) -> Vec<Record> {
    vec![Record::Intent { step, kind, attempt }]
}

/// A command's id: the same for every attempt of one step's action (or its
/// compensation) in one saga, so that a participant recognises a resend.
pub fn command_id(saga_id: &str, step: usize, kind: Kind) -> String {
    let kind = match kind {
        Kind::Action => "do",
        Kind::Compensation => "undo",
    };
    format!("{saga_id}/{step}/{kind}")
}

/// The inverse of [`command_id`]: `(saga id, step, kind)`.
pub fn parse_command_id(id: &str) -> Option<(String, usize, Kind)> {
    let (rest, kind) = id.rsplit_once('/')?;
    let (saga, step) = rest.rsplit_once('/')?;
    let kind = match kind {
        "do" => Kind::Action,
        "undo" => Kind::Compensation,
        _ => return None,
    };
    Some((saga.to_owned(), step.parse().ok()?, kind))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Kind::{Action as A, Compensation as C};

    /// Four steps, pivot at step 1, like the checkout.
    fn saga() -> Definition {
        let step =
            |participant| Step { participant, action: "do", compensation: "undo" };
        Definition {
            name: "test",
            steps: vec![step("p0"), step("p1"), step("p2"), step("p3")],
            pivot: 1,
        }
    }

    fn done(step: usize, kind: Kind) -> Input {
        Input::Reply { step, kind, reply: Reply::Done { detail: "ok".into() } }
    }

    fn refused(step: usize) -> Input {
        let reply = Reply::Refused { reason: "no".into() };
        Input::Reply { step, kind: A, reply }
    }

    fn timeout(step: usize, kind: Kind, attempt: u32) -> Input {
        Input::Timeout { step, kind, attempt }
    }

    fn i(step: usize, kind: Kind, attempt: u32) -> Record {
        Record::Intent { step, kind, attempt }
    }

    fn ok(step: usize, kind: Kind) -> Record {
        let outcome = Outcome::Done { detail: "ok".into() };
        Record::Outcome { step, kind, outcome }
    }

    /// Feeds `inputs` one by one, appending what each decides, and returns,
    /// per input, the records it produced.
    fn run(inputs: &[Input]) -> (Vec<Record>, Vec<Vec<Record>>) {
        let mut log = vec![];
        let mut each = vec![];
        for input in inputs {
            let new = decide(&saga(), &State::replay(&log), input);
            log.extend(new.clone());
            each.push(new);
        }
        (log, each)
    }

    fn compensated(reason: &str) -> Record {
        Record::Finished(Terminal::Compensated { reason: reason.into() })
    }

    // ANCHOR: decision_table
    #[test]
    fn decision_table() {
        use Input::Start;
        let no = "no";
        #[rustfmt::skip]
        let table: Vec<(&str, Vec<Input>, Vec<Record>)> = vec![
            ("start sends step 0", vec![Start], vec![i(0, A, 1)]),
            ("a second start does nothing", vec![Start, Start], vec![]),
            ("done moves on", vec![Start, done(0, A)],
                vec![ok(0, A), i(1, A, 1)]),
            ("a duplicate reply does nothing",
                vec![Start, done(0, A), done(0, A)], vec![]),
            ("the last step completes",
                vec![Start, done(0, A), done(1, A), done(2, A), done(3, A)],
                vec![ok(3, A), Record::Finished(Terminal::Completed)]),
            ("a refusal at step 0 owes nothing",
                vec![Start, refused(0)],
                vec![Record::Outcome { step: 0, kind: A,
                    outcome: Outcome::Refused { reason: no.into() } },
                    compensated(no)]),
            ("a refusal undoes the newest done step first",
                vec![Start, done(0, A), done(1, A), refused(2)],
                vec![Record::Outcome { step: 2, kind: A,
                    outcome: Outcome::Refused { reason: no.into() } },
                    i(1, C, 1)]),
            ("then the next older one",
                vec![Start, done(0, A), done(1, A), refused(2), done(1, C)],
                vec![ok(1, C), i(0, C, 1)]),
            ("and then it is over",
                vec![Start, done(0, A), done(1, A), refused(2), done(1, C),
                    done(0, C)],
                vec![ok(0, C), compensated(no)]),
            ("a timeout up to the pivot undoes that step too",
                vec![Start, done(0, A), timeout(1, A, 1)],
                vec![Record::Outcome { step: 1, kind: A,
                    outcome: Outcome::TimedOut }, i(1, C, 1)]),
            ("a late reply after that timeout does nothing",
                vec![Start, done(0, A), timeout(1, A, 1), done(1, A)],
                vec![]),
            ("a timeout after the pivot retries the same step",
                vec![Start, done(0, A), done(1, A), timeout(2, A, 1)],
                vec![i(2, A, 2)]),
            ("the late reply of attempt 1 then counts",
                vec![Start, done(0, A), done(1, A), timeout(2, A, 1),
                    done(2, A)],
                vec![ok(2, A), i(3, A, 1)]),
            ("an old timer after its reply does nothing",
                vec![Start, done(0, A), timeout(0, A, 1)], vec![]),
            ("a timed-out compensation is retried",
                vec![Start, done(0, A), refused(1), timeout(0, C, 1)],
                vec![i(0, C, 2)]),
            ("a reply for a compensated step does nothing",
                vec![Start, done(0, A), done(1, A), refused(2), done(1, C),
                    done(1, A)],
                vec![]),
            ("a refused compensation is not counted as undone: stuck",
                vec![Start, done(0, A), done(1, A), refused(2),
                    Input::Reply { step: 1, kind: C,
                        reply: Reply::Refused { reason: no.into() } }],
                vec![Record::Outcome { step: 1, kind: C,
                    outcome: Outcome::Refused { reason: no.into() } },
                    Record::Finished(Terminal::Stuck { step: 1,
                        reason: no.into() })]),
            ("a compensation reply twice does nothing",
                vec![Start, done(0, A), done(1, A), refused(2), done(1, C),
                    done(1, C)],
                vec![]),
            ("nothing moves a finished saga",
                vec![Start, refused(0), done(0, A)], vec![]),
        ];
        for (name, inputs, expected) in table {
            let (log, each) = run(&inputs);
            assert_eq!(each.last().unwrap(), &expected, "{name}; log: {log:?}");
        }
    }
    // ANCHOR_END: decision_table

    #[test]
    fn a_refused_compensation_is_neither_undone_nor_hidden() {
        let reply = Reply::Refused { reason: "no".into() };
        let refuse = Input::Reply { step: 1, kind: C, reply };
        let inputs = [Input::Start, done(0, A), done(1, A), refused(2), refuse];
        let (log, _) = run(&inputs);
        let state = State::replay(&log);
        assert!(state.compensated.is_empty(), "{:?}", state.compensated);
        let stuck = Terminal::Stuck { step: 1, reason: "no".into() };
        assert_eq!(state.finished, Some(stuck));
        // Nothing moves it afterwards: a person settles it.
        assert_eq!(decide(&saga(), &state, &done(1, C)), vec![]);
    }

    #[test]
    fn compensations_run_in_strict_reverse_of_what_ran_after_a_last_step_refusal() {
        let inputs = [Input::Start, done(0, A), done(1, A), done(2, A), refused(3)];
        let (mut log, _) = run(&inputs);
        // Answer every compensation, each after a timeout first.
        for _ in 0..10 {
            let state = State::replay(&log);
            let Some((step, kind, attempt)) = state.pending else { break };
            for input in [timeout(step, kind, attempt), done(step, kind)] {
                let new = decide(&saga(), &State::replay(&log), &input);
                log.extend(new);
            }
        }
        let state = State::replay(&log);
        assert_eq!(state.compensated, [2, 1, 0]);
        assert!(matches!(state.finished, Some(Terminal::Compensated { .. })));
    }

    #[test]
    fn command_ids_round_trip_and_are_the_same_for_every_attempt() {
        let id = command_id("s-1/x", 2, Kind::Compensation);
        assert_eq!(id, "s-1/x/2/undo");
        assert_eq!(parse_command_id(&id), Some(("s-1/x".into(), 2, C)));
        assert_eq!(parse_command_id("s/2/redo"), None);
        assert_eq!(parse_command_id("nonsense"), None);
    }
}
