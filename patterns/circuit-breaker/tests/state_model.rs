//! The whole state machine against a reference model: random sequences of calls,
//! outcomes, time advances, permits held, finished late or dropped, and operator
//! actions, in both window kinds. After every step the breaker's state, and for
//! every request its decision (let through, or rejected in which state), equal the
//! model's; at random points so do its metrics.
//!
//! The model is written for obviousness, not speed: it keeps every call of the
//! current window in a list and recounts it on each question, compares rates in
//! integers, judges after every record, and has no fast path, no atomics and no
//! lock. The breaker's shortcuts (the lock-free closed path, the all-clear path that
//! skips the lock for a success, the count window judging a plain success only when
//! it completes the minimum) must all be invisible against it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

use std::time::Duration;

use circuit_breaker::{CircuitBreaker, Config, Outcome, Permit, State};
use proptest::prelude::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The settings the model understands: thresholds are whole percentages so that the
/// model can compare rates exactly, in integers.
#[derive(Clone, Copy, Debug)]
struct Spec {
    window: Window,
    failure_percent: u64,
    slow: Option<(u64, Duration)>,
    minimum_calls: usize,
    open_wait: Duration,
    permits: u32,
    max_half_open_wait: Duration,
}

#[derive(Clone, Copy, Debug)]
enum Window {
    Count(usize),
    Time { buckets: u64, width: Duration },
}

impl Spec {
    fn config(&self) -> Config {
        let builder = match self.window {
            Window::Count(size) => Config::builder().count_window(size as u32),
            Window::Time { buckets, width } => {
                Config::builder().time_window(buckets as u32, width)
            }
        };
        let builder = match self.slow {
            Some((percent, duration)) => {
                builder.slow_calls(percent as f64, duration)
            }
            None => builder,
        };
        builder
            .failure_rate_threshold(self.failure_percent as f64)
            .minimum_calls(self.minimum_calls as u32)
            .open_wait(self.open_wait)
            .half_open_permits(self.permits)
            .max_half_open_wait(self.max_half_open_wait)
            .build()
            .expect("the strategy makes valid configs")
    }
}

/// One call as the model records it.
#[derive(Clone, Copy, Debug)]
struct Call {
    at: Duration,
    failed: bool,
    slow: bool,
}

#[derive(Clone, Debug, Default, PartialEq)]
struct Tally {
    calls: usize,
    failures: usize,
    slow: usize,
}

fn tally<'a>(calls: impl Iterator<Item = &'a Call>) -> Tally {
    let mut t = Tally::default();
    for c in calls {
        t.calls += 1;
        t.failures += usize::from(c.failed);
        t.slow += usize::from(c.slow);
    }
    t
}

/// `part` of `tally.calls` is at least `percent`%, exactly.
fn reaches(part: usize, calls: usize, percent: u64) -> bool {
    calls > 0 && part as u64 * 100 >= percent * calls as u64
}

#[derive(Clone, Debug)]
enum ModelState {
    Closed,
    Open { since: Duration },
    HalfOpen { since: Duration, issued: u32, probes: Vec<Call> },
    ForcedOpen,
    Disabled,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Closed,
    Probe,
    Disabled,
}

#[derive(Clone, Copy, Debug)]
struct Ticket {
    kind: Kind,
    generation: u64,
    started: Duration,
}

#[derive(Clone, Debug, Default, PartialEq)]
struct Counters {
    successful: u64,
    failed: u64,
    slow: u64,
    ignored: u64,
    rejected: u64,
    transitions: u64,
}

struct Model {
    spec: Spec,
    now: Duration,
    state: ModelState,
    generation: u64,
    /// Every call recorded since the window was last emptied, oldest first.
    window: Vec<Call>,
    counters: Counters,
}

impl Model {
    fn new(spec: Spec) -> Self {
        Model {
            spec,
            now: Duration::ZERO,
            state: ModelState::Closed,
            generation: 0,
            window: Vec::new(),
            counters: Counters::default(),
        }
    }

    fn public_state(&self) -> State {
        match self.state {
            ModelState::Closed => State::Closed,
            ModelState::Open { .. } => State::Open,
            ModelState::HalfOpen { .. } => State::HalfOpen,
            ModelState::ForcedOpen => State::ForcedOpen,
            ModelState::Disabled => State::Disabled,
        }
    }

    /// The calls the window holds now: the last `size`, or those whose slice of time
    /// is one of the last `buckets` slices.
    fn in_window(&self) -> Tally {
        match self.spec.window {
            Window::Count(size) => tally(self.window.iter().rev().take(size)),
            Window::Time { buckets, width } => {
                let slice = |t: Duration| (t.as_nanos() / width.as_nanos()) as u64;
                let current = slice(self.now);
                tally(self.window.iter().filter(|c| slice(c.at) + buckets > current))
            }
        }
    }

    fn move_to(&mut self, state: ModelState) {
        self.state = state;
        self.generation += 1;
        self.window.clear();
        self.counters.transitions += 1;
    }

    fn acquire(&mut self) -> Result<Ticket, State> {
        let now = self.now;
        if let ModelState::Open { since } = self.state
            && now >= since + self.spec.open_wait
        {
            let probing =
                ModelState::HalfOpen { since: now, issued: 0, probes: vec![] };
            self.move_to(probing);
        }
        if let ModelState::HalfOpen { since, issued, .. } = self.state
            && issued >= self.spec.permits
            && now >= since + self.spec.max_half_open_wait
        {
            self.move_to(ModelState::Open { since: now });
        }
        let generation = self.generation;
        let ticket = |kind| Ok(Ticket { kind, generation, started: now });
        let decision = match &mut self.state {
            ModelState::Closed => ticket(Kind::Closed),
            ModelState::Disabled => ticket(Kind::Disabled),
            ModelState::HalfOpen { issued, .. } if *issued < self.spec.permits => {
                *issued += 1;
                ticket(Kind::Probe)
            }
            _ => Err(self.public_state()),
        };
        if decision.is_err() {
            self.counters.rejected += 1;
        }
        decision
    }

    fn complete(&mut self, ticket: Ticket, outcome: Outcome) {
        let slow = self
            .spec
            .slow
            .is_some_and(|(_, duration)| self.now - ticket.started >= duration);
        let c = &mut self.counters;
        match outcome {
            Outcome::Success => c.successful += 1,
            Outcome::Failure => c.failed += 1,
            Outcome::Ignored => c.ignored += 1,
        }
        c.slow += u64::from(slow);
        if ticket.generation != self.generation || ticket.kind == Kind::Disabled {
            // A call of a state that is gone, or of a disabled breaker: not judged.
            return;
        }
        let call = Call { at: self.now, failed: outcome == Outcome::Failure, slow };
        match ticket.kind {
            Kind::Closed if outcome != Outcome::Ignored => {
                self.window.push(call);
                let t = self.in_window();
                if t.calls >= self.spec.minimum_calls && self.too_bad(&t) {
                    self.move_to(ModelState::Open { since: self.now });
                }
            }
            Kind::Probe => {
                let permits = self.spec.permits as usize;
                let ModelState::HalfOpen { issued, probes, .. } = &mut self.state
                else {
                    unreachable!(
                        "a probe of the current generation means half-open"
                    );
                };
                if outcome == Outcome::Ignored {
                    *issued -= 1;
                    return;
                }
                probes.push(call);
                if probes.len() >= permits {
                    let t = tally(probes.iter());
                    if self.too_bad(&t) {
                        self.move_to(ModelState::Open { since: self.now });
                    } else {
                        self.move_to(ModelState::Closed);
                    }
                }
            }
            _ => {}
        }
    }

    fn too_bad(&self, t: &Tally) -> bool {
        reaches(t.failures, t.calls, self.spec.failure_percent)
            || self
                .spec
                .slow
                .is_some_and(|(percent, _)| reaches(t.slow, t.calls, percent))
    }

    fn abandon(&mut self, ticket: Ticket) {
        if let ModelState::HalfOpen { issued, .. } = &mut self.state
            && ticket.kind == Kind::Probe
            && ticket.generation == self.generation
        {
            *issued -= 1;
        }
    }

    fn operator(&mut self, to: State) {
        if self.public_state() == to {
            self.window.clear();
            return;
        }
        self.move_to(match to {
            State::Closed => ModelState::Closed,
            State::ForcedOpen => ModelState::ForcedOpen,
            State::Disabled => ModelState::Disabled,
            other => unreachable!("no operator sets {other:?}"),
        });
    }

    fn metrics_window(&self) -> Tally {
        match &self.state {
            ModelState::HalfOpen { probes, .. } => tally(probes.iter()),
            _ => self.in_window(),
        }
    }
}

#[derive(Clone, Debug)]
enum Step {
    /// Ask, and if let through, report at once.
    Call(Outcome),
    /// Ask, and hold the permit for a later step.
    Take,
    /// Report the outcome of a held permit (chosen by index, modulo how many are
    /// held).
    Finish(usize, Outcome),
    /// Drop a held permit unreported: the caller gave up.
    Drop(usize),
    Advance(Duration),
    /// Compare the metrics too (reading them evicts old buckets, so not after every
    /// step).
    Observe,
    Operator(State),
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        5 => Just(Outcome::Success),
        4 => Just(Outcome::Failure),
        1 => Just(Outcome::Ignored),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => outcome().prop_map(Step::Call),
        3 => Just(Step::Take),
        3 => (any::<usize>(), outcome()).prop_map(|(i, o)| Step::Finish(i, o)),
        1 => any::<usize>().prop_map(Step::Drop),
        // Multiples of 50 ms land exactly on the waits' ends, where `>=` matters.
        4 => (0u64..=14).prop_map(|n| Step::Advance(ms(50 * n))),
        1 => Just(Step::Observe),
        1 => prop_oneof![
            Just(State::ForcedOpen),
            Just(State::Disabled),
            Just(State::Closed),
        ]
        .prop_map(Step::Operator),
    ]
}

fn percent() -> impl Strategy<Value = u64> {
    prop_oneof![1u64..=100, Just(50), Just(100)]
}

fn spec() -> impl Strategy<Value = Spec> {
    let window = prop_oneof![
        (1usize..=6).prop_map(Window::Count),
        (1u64..=4, 1u64..=3)
            .prop_map(|(buckets, w)| Window::Time { buckets, width: ms(100 * w) }),
    ];
    let slow = prop::option::of((percent(), (1u64..=4).prop_map(|n| ms(100 * n))));
    (window, percent(), slow, 1usize..=6, 1u64..=5, 1u32..=3, 1u64..=10).prop_map(
        |(window, failure_percent, slow, minimum, open, permits, max_half)| {
            let minimum_calls = match window {
                Window::Count(size) => minimum.min(size),
                Window::Time { .. } => minimum,
            };
            Spec {
                window,
                failure_percent,
                slow,
                minimum_calls,
                open_wait: ms(100 * open),
                permits,
                max_half_open_wait: ms(100 * max_half),
            }
        },
    )
}

fn check(spec: Spec, steps: Vec<Step>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let breaker = CircuitBreaker::new(spec.config());
        let mut model = Model::new(spec);
        let mut held: Vec<(Permit<'_>, Ticket)> = Vec::new();
        for (i, step) in steps.into_iter().enumerate() {
            let at = format!("step {i} ({step:?}) at {:?}", model.now);
            match step {
                Step::Call(outcome) => {
                    let (real, expected) = (breaker.try_acquire(), model.acquire());
                    prop_assert_eq!(decision(&real), decision(&expected), "{}", at);
                    if let (Ok(permit), Ok(ticket)) = (real, expected) {
                        permit.record(outcome);
                        model.complete(ticket, outcome);
                    }
                }
                Step::Take => {
                    let (real, expected) = (breaker.try_acquire(), model.acquire());
                    prop_assert_eq!(decision(&real), decision(&expected), "{}", at);
                    if let (Ok(permit), Ok(ticket)) = (real, expected) {
                        held.push((permit, ticket));
                    }
                }
                Step::Finish(n, outcome) if !held.is_empty() => {
                    let (permit, ticket) = held.remove(n % held.len());
                    permit.record(outcome);
                    model.complete(ticket, outcome);
                }
                Step::Drop(n) if !held.is_empty() => {
                    let (permit, ticket) = held.remove(n % held.len());
                    drop(permit);
                    model.abandon(ticket);
                }
                Step::Finish(..) | Step::Drop(_) => {}
                Step::Advance(by) => {
                    tokio::time::advance(by).await;
                    model.now += by;
                }
                Step::Observe => {
                    let m = breaker.metrics();
                    let window = Tally {
                        calls: m.window.calls as usize,
                        failures: m.window.failures as usize,
                        slow: m.window.slow as usize,
                    };
                    prop_assert_eq!(
                        window,
                        model.metrics_window(),
                        "window, {}",
                        at
                    );
                    let counters = Counters {
                        successful: m.successful,
                        failed: m.failed,
                        slow: m.slow,
                        ignored: m.ignored,
                        rejected: m.rejected,
                        transitions: m.transitions,
                    };
                    prop_assert_eq!(&counters, &model.counters, "counters, {}", at);
                }
                Step::Operator(State::ForcedOpen) => {
                    breaker.force_open();
                    model.operator(State::ForcedOpen);
                }
                Step::Operator(State::Disabled) => {
                    breaker.disable();
                    model.operator(State::Disabled);
                }
                Step::Operator(_) => {
                    breaker.reset();
                    model.operator(State::Closed);
                }
            }
            prop_assert_eq!(breaker.state(), model.public_state(), "{}", at);
        }
        Ok(())
    })
}

/// What a request was told: let through, or rejected in which state.
fn decision<T, U>(result: &Result<T, U>) -> Result<(), State>
where
    U: Rejection,
{
    result.as_ref().map(|_| ()).map_err(Rejection::state)
}

trait Rejection {
    fn state(&self) -> State;
}

impl Rejection for circuit_breaker::Rejected {
    fn state(&self) -> State {
        self.state
    }
}

impl Rejection for State {
    fn state(&self) -> State {
        *self
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn the_breaker_behaves_like_the_model(
        spec in spec(),
        steps in prop::collection::vec(step(), 1..200),
    ) {
        check(spec, steps)?;
    }
}

/// The model itself, on a case worked out by hand: a count window of 4 at 50%,
/// minimum 4.
#[test]
fn the_model_opens_where_the_arithmetic_says() {
    let mut model = Model::new(Spec {
        window: Window::Count(4),
        failure_percent: 50,
        slow: None,
        minimum_calls: 4,
        open_wait: ms(100),
        permits: 1,
        max_half_open_wait: ms(100),
    });
    for outcome in [Outcome::Failure, Outcome::Success, Outcome::Success] {
        let ticket = model.acquire().unwrap();
        model.complete(ticket, outcome);
    }
    assert_eq!(model.public_state(), State::Closed, "3 calls, minimum 4");
    let ticket = model.acquire().unwrap();
    model.complete(ticket, Outcome::Failure);
    assert_eq!(model.public_state(), State::Open, "2 of 4 failed: 50%");
    assert_eq!(model.acquire().map(|_| ()), Err(State::Open));
    model.now += ms(100);
    let probe = model.acquire().unwrap();
    assert_eq!(model.public_state(), State::HalfOpen);
    model.complete(probe, Outcome::Success);
    assert_eq!(model.public_state(), State::Closed);
}
