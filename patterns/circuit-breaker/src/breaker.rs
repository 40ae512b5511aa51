//! The breaker: one state machine, shared by every clone, guarding calls to one
//! dependency.
//!
//! ```text
//!            failure or slow-call rate >= threshold (after minimum_calls)
//!   Closed ─────────────────────────────────────────────────────────────▶ Open
//!     ▲                                                                   │ open_wait elapsed
//!     │ probes below thresholds                                           ▼ (on the next call)
//!     └──────────────────────────────────── HalfOpen ◀────────────────────┘
//!                                             │ probes at/above thresholds, or no verdict
//!                                             └────────▶ Open      within max_half_open_wait
//! ```
//!
//! The closed path is the hot path: a call reads one atomic word (state and
//! generation packed together) to get its permit, and takes the lock once, to record
//! its outcome. Open and half-open take the lock to decide, because they hand out
//! scarce permits. Every transition bumps the generation, so an outcome that arrives
//! after the state moved on (a call started before the breaker opened) is discarded
//! instead of polluting the new state's numbers.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use std::time::Duration;

use tokio::time::Instant;

use crate::config::{Config, WindowKind};
use crate::window::{CountWindow, Sample, TimeWindow, Totals};

// ANCHOR: State
/// Where the breaker is. `ForcedOpen` and `Disabled` are set by an operator and stay
/// until reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum State {
    /// Calls pass and are counted.
    Closed = 0,
    /// Calls are rejected at once, without touching the dependency.
    Open = 1,
    /// A few probe calls pass; their outcome decides between Closed and Open.
    HalfOpen = 2,
    /// Rejects everything until `reset`.
    ForcedOpen = 3,
    /// Lets everything through and judges nothing until `reset`.
    Disabled = 4,
}
// ANCHOR_END: State

impl State {
    fn from_bits(bits: u64) -> State {
        match bits & 0xff {
            0 => State::Closed,
            1 => State::Open,
            2 => State::HalfOpen,
            3 => State::ForcedOpen,
            _ => State::Disabled,
        }
    }
}

/// How a call went, as the breaker should count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The dependency did its job (a 404 counts: it answered by its contract).
    Success,
    /// The dependency failed: an error, a timeout, a 5xx.
    Failure,
    /// Neither: not the dependency's fault nor proof of its health (a cancelled
    /// call, a caller error the classifier chose to ignore). An ignored probe gives
    /// its permit back.
    Ignored,
}

/// Why the breaker changed state.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reason {
    /// Too many failures in the window: open.
    FailureRate {
        /// The failure rate reached.
        percent: f64,
    },
    /// Too many slow calls in the window: open.
    SlowCallRate {
        /// The slow-call rate reached.
        percent: f64,
    },
    /// Open long enough: let probes through.
    OpenWaitElapsed,
    /// The probes were below both thresholds: close.
    ProbesSucceeded,
    /// The probes reached a threshold: open again.
    ProbesFailed {
        /// Failed probes, in percent.
        failure_percent: f64,
        /// Slow probes, in percent.
        slow_percent: f64,
    },
    /// Half-open had no verdict within `max_half_open_wait`: open again.
    HalfOpenTimedOut,
    /// An operator called `force_open`.
    Forced,
    /// An operator called `disable`.
    Disabled,
    /// An operator called `reset`.
    Reset,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::FailureRate { percent } => {
                write!(f, "{percent:.0}% of recent calls failed")
            }
            Reason::SlowCallRate { percent } => {
                write!(f, "{percent:.0}% of recent calls were slow")
            }
            Reason::OpenWaitElapsed => f.write_str("the open wait is over: probing"),
            Reason::ProbesSucceeded => f.write_str("the probes succeeded"),
            Reason::ProbesFailed { failure_percent, slow_percent } => {
                write!(
                    f,
                    "the probes failed ({failure_percent:.0}% failed, {slow_percent:.0}% slow)"
                )
            }
            Reason::HalfOpenTimedOut => f.write_str("the probes never answered"),
            Reason::Forced => f.write_str("forced open by an operator"),
            Reason::Disabled => f.write_str("disabled by an operator"),
            Reason::Reset => f.write_str("reset by an operator"),
        }
    }
}

/// A state change, delivered once to every listener.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Transition {
    /// The state left.
    pub from: State,
    /// The state entered.
    pub to: State,
    /// Why, in words fit for a log line (its `Display`).
    pub reason: Reason,
}

/// A call the breaker refused, without calling the dependency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "circuit breaker is {state:?}: call rejected without calling the dependency"
)]
pub struct Rejected {
    /// The state that refused: open, forced open, or half-open with no probe permit left.
    pub state: State,
}

/// A snapshot of what the breaker knows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Metrics {
    /// The state now.
    pub state: State,
    /// The calls in the current window (or the probes so far, when half-open).
    pub window: Totals,
    /// Failed calls in the window, in percent.
    pub failure_rate: f64,
    /// Slow calls in the window, in percent.
    pub slow_call_rate: f64,
    /// Calls that succeeded, since the breaker was built (stale ones too).
    pub successful: u64,
    /// Calls that failed, since the breaker was built (stale ones too).
    pub failed: u64,
    /// Calls that took at least the slow-call duration, whatever their outcome.
    pub slow: u64,
    /// Calls the classifier chose not to count.
    pub ignored: u64,
    /// Calls refused without calling the dependency: the load the breaker spared it.
    pub rejected: u64,
    /// State changes: each is an event worth an alert.
    pub transitions: u64,
}

type Listener = Arc<dyn Fn(&Transition) + Send + Sync>;

enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Window {
    fn clear(&mut self) {
        match self {
            Window::Count(w) => w.clear(),
            Window::Time(w) => w.clear(),
        }
    }
}

#[derive(Default)]
struct HalfOpenState {
    started: Option<Instant>,
    /// Permits handed out and not given back (completed probes keep theirs).
    issued: u32,
    /// Outcomes of the completed probes.
    probes: Totals,
}

struct Machine {
    outcomes: Outcomes,
    state: State,
    generation: u64,
    window: Window,
    opened_at: Option<Instant>,
    half_open: HalfOpenState,
}

/// Counted without the lock: rejections (forced-open rejects without locking),
/// transitions, and the successes recorded on the all-clear fast path.
#[derive(Default)]
struct Counters {
    rejected: AtomicU64,
    transitions: AtomicU64,
    fast_successes: AtomicU64,
}

/// Counted under the lock that recording takes anyway, which is cheaper than an
/// atomic each.
#[derive(Clone, Copy, Default)]
struct Outcomes {
    successful: u64,
    failed: u64,
    slow: u64,
    ignored: u64,
}

struct Shared {
    config: Config,
    /// State in the low 8 bits, generation above: one load answers "closed, in which
    /// generation?".
    word: AtomicU64,
    /// Set (under the lock) while a closed count window holds nothing but plain
    /// successes, so another plain success would change nothing in it; cleared by
    /// anything else.
    all_clear: AtomicBool,
    machine: Mutex<Machine>,
    start: Instant,
    counters: Counters,
    listeners: Vec<Listener>,
}

/// What a granted call carries until it reports back.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ticket {
    kind: TicketKind,
    generation: u64,
    started: Option<Instant>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TicketKind {
    Closed,
    Probe,
    Disabled,
}

// ANCHOR: CircuitBreaker
/// A circuit breaker. Clones share one state: give every caller of a dependency a
/// clone.
#[derive(Clone)]
pub struct CircuitBreaker {
    shared: Arc<Shared>,
}
// ANCHOR_END: CircuitBreaker

/// Builds a breaker with listeners for its transitions.
pub struct Builder {
    config: Config,
    listeners: Vec<Listener>,
}

impl Builder {
    /// Calls `listener` once for every state change, after the change is made and
    /// outside the breaker's lock (so a listener may call the breaker).
    pub fn on_transition(
        mut self,
        listener: impl Fn(&Transition) + Send + Sync + 'static,
    ) -> Self {
        self.listeners.push(Arc::new(listener));
        self
    }

    /// The breaker, closed, with its listeners; it cannot fail, the config being valid.
    pub fn build(self) -> CircuitBreaker {
        // A `Config` is validated when built, so both counts are at least 1 here.
        let at_least_one = |n| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        let window = match self.config.window {
            WindowKind::CountBased { size } => {
                Window::Count(CountWindow::new(at_least_one(size)))
            }
            WindowKind::TimeBased { buckets, bucket_width } => {
                Window::Time(TimeWindow::new(at_least_one(buckets), bucket_width))
            }
        };
        let machine = Machine {
            outcomes: Outcomes::default(),
            state: State::Closed,
            generation: 0,
            window,
            opened_at: None,
            half_open: HalfOpenState::default(),
        };
        CircuitBreaker {
            shared: Arc::new(Shared {
                config: self.config,
                word: AtomicU64::new(State::Closed as u64),
                all_clear: AtomicBool::new(false),
                machine: Mutex::new(machine),
                start: Instant::now(),
                counters: Counters::default(),
                listeners: self.listeners,
            }),
        }
    }
}

impl CircuitBreaker {
    /// A breaker with no listeners. It cannot fail: a [`Config`] is checked when it
    /// is built ([`Config::builder`]), and only a valid one exists.
    pub fn new(config: Config) -> Self {
        Self::builder(config).build()
    }

    /// A builder, to add transition listeners before the breaker exists.
    pub fn builder(config: Config) -> Builder {
        Builder { config, listeners: Vec::new() }
    }

    /// The settings it judges by.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The state now; open turns half-open lazily, on the next request for a permit.
    pub fn state(&self) -> State {
        State::from_bits(self.shared.word.load(Ordering::Acquire))
    }

    /// Asks to make a call. The permit must be given an [`Outcome`] with
    /// [`Permit::record`]; dropping it instead (a cancelled call) counts nothing and
    /// gives a probe's permit back.
    #[inline]
    pub fn try_acquire(&self) -> Result<Permit<'_>, Rejected> {
        self.shared
            .acquire()
            .map(|ticket| Permit { shared: &self.shared, ticket: Some(ticket) })
    }

    #[inline]
    pub(crate) fn acquire_ticket(&self) -> Result<Ticket, Rejected> {
        self.shared.acquire()
    }

    #[inline]
    pub(crate) fn complete(&self, ticket: Ticket, outcome: Outcome) {
        self.shared.complete(ticket, outcome);
    }

    #[inline]
    pub(crate) fn abandon(&self, ticket: Ticket) {
        self.shared.abandon(ticket);
    }

    /// Rejects every call until [`reset`](Self::reset) (for maintenance, or a known
    /// outage).
    pub fn force_open(&self) {
        self.shared.set(State::ForcedOpen, Reason::Forced);
    }

    /// Lets every call through and judges none until [`reset`](Self::reset).
    pub fn disable(&self) {
        self.shared.set(State::Disabled, Reason::Disabled);
    }

    /// Back to closed with an empty window, from any state.
    pub fn reset(&self) {
        self.shared.set(State::Closed, Reason::Reset);
    }

    /// A snapshot for metrics export: the state, the window's rates and the counters.
    pub fn metrics(&self) -> Metrics {
        let shared = &self.shared;
        let mut m = shared.lock();
        let window = match m.state {
            State::HalfOpen => m.half_open.probes,
            _ => shared.window_totals(&mut m),
        };
        let (c, o) = (&shared.counters, m.outcomes);
        Metrics {
            state: m.state,
            window,
            failure_rate: window.percent(window.failures),
            slow_call_rate: window.percent(window.slow),
            successful: o.successful + c.fast_successes.load(Ordering::Relaxed),
            failed: o.failed,
            slow: o.slow,
            ignored: o.ignored,
            rejected: c.rejected.load(Ordering::Relaxed),
            transitions: c.transitions.load(Ordering::Relaxed),
        }
    }
}

// ANCHOR: Permit
/// The right to make one call. Record its outcome, or drop it if the call never
/// finished.
#[must_use = "record the call's outcome, or the breaker learns nothing from it"]
pub struct Permit<'a> {
    shared: &'a Shared,
    ticket: Option<Ticket>,
}

impl Permit<'_> {
    /// Reports how the call went. Consumes the permit, so a call is counted once.
    #[inline]
    pub fn record(mut self, outcome: Outcome) {
        if let Some(ticket) = self.ticket.take() {
            self.shared.complete(ticket, outcome);
        }
    }
}

impl Drop for Permit<'_> {
    #[inline]
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.shared.abandon(ticket);
        }
    }
}
// ANCHOR_END: Permit

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Machine> {
        // A panicking listener never runs under the lock, so poison can only come
        // from a bug in this file; the state is still consistent field by field, so
        // keep going.
        self.machine.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    #[inline]
    fn now_if(&self, needed: bool) -> Option<Instant> {
        needed.then(Instant::now)
    }

    // ANCHOR: acquire
    #[inline]
    fn acquire(&self) -> Result<Ticket, Rejected> {
        let word = self.word.load(Ordering::Acquire);
        let generation = word >> 8;
        let started = self.now_if(self.config.slow_calls.is_some());
        match State::from_bits(word) {
            // The hot path: no lock, no allocation.
            State::Closed => {
                Ok(Ticket { kind: TicketKind::Closed, generation, started })
            }
            State::Disabled => {
                Ok(Ticket { kind: TicketKind::Disabled, generation, started })
            }
            State::ForcedOpen => Err(self.reject(State::ForcedOpen)),
            State::Open | State::HalfOpen => self.acquire_contended(started),
        }
    }

    /// Open and half-open: decide under the lock, since probe permits are scarce.
    fn acquire_contended(
        &self,
        started: Option<Instant>,
    ) -> Result<Ticket, Rejected> {
        let now = Instant::now();
        let mut m = self.lock();
        let mut transition = None;
        if m.state == State::Open
            && m.opened_at.is_some_and(|at| over(at, self.config.open_wait, now))
        {
            transition = Some(self.transition(
                &mut m,
                State::HalfOpen,
                Reason::OpenWaitElapsed,
                now,
            ));
        }
        let permits = self.config.half_open_permits;
        let stuck = m
            .half_open
            .started
            .is_some_and(|at| over(at, self.config.max_half_open_wait, now));
        if m.state == State::HalfOpen && m.half_open.issued >= permits && stuck {
            transition = Some(self.transition(
                &mut m,
                State::Open,
                Reason::HalfOpenTimedOut,
                now,
            ));
        }
        let result = match m.state {
            State::HalfOpen if m.half_open.issued < permits => {
                m.half_open.issued += 1;
                Ok(Ticket {
                    kind: TicketKind::Probe,
                    generation: m.generation,
                    started,
                })
            }
            State::Closed => Ok(Ticket {
                kind: TicketKind::Closed,
                generation: m.generation,
                started,
            }),
            State::Disabled => Ok(Ticket {
                kind: TicketKind::Disabled,
                generation: m.generation,
                started,
            }),
            state => Err(state),
        };
        drop(m);
        self.notify(transition);
        result.map_err(|state| self.reject(state))
    }
    // ANCHOR_END: acquire

    fn reject(&self, state: State) -> Rejected {
        self.counters.rejected.fetch_add(1, Ordering::Relaxed);
        Rejected { state }
    }

    // ANCHOR: complete
    #[inline]
    fn complete(&self, ticket: Ticket, outcome: Outcome) {
        let slow = match (&self.config.slow_calls, ticket.started) {
            (Some(config), Some(started)) => started.elapsed() >= config.duration,
            _ => false,
        };
        // The all-clear fast path: in a window of nothing but successes, another
        // success would evict a success and add one: nothing to change, nothing to
        // judge, no lock to take. A failure recorded concurrently can always be
        // ordered after this success, which saw the flag before that failure cleared
        // it.
        if outcome == Outcome::Success
            && !slow
            && ticket.kind == TicketKind::Closed
            && self.all_clear.load(Ordering::Acquire)
        {
            self.counters.fast_successes.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.complete_locked(ticket, outcome, slow);
    }

    /// Everything but the all-clear fast path: record under the lock, and maybe
    /// change state.
    fn complete_locked(&self, ticket: Ticket, outcome: Outcome, slow: bool) {
        let sample = Sample { failed: outcome == Outcome::Failure, slow };
        let mut m = self.lock();
        let counts = &mut m.outcomes;
        match outcome {
            Outcome::Success => counts.successful += 1,
            Outcome::Failure => counts.failed += 1,
            Outcome::Ignored => counts.ignored += 1,
        }
        counts.slow += u64::from(slow);
        // Disabled judges nothing; and if the state moved on while this call ran
        // (another generation), its outcome belongs to a window or a half-open that
        // no longer exists.
        if ticket.kind == TicketKind::Disabled || m.generation != ticket.generation {
            return;
        }
        let transition = match ticket.kind {
            TicketKind::Closed if outcome == Outcome::Ignored => None,
            TicketKind::Closed => {
                // The totals to judge, or `None` when this record cannot change the
                // verdict.
                let totals = match &mut m.window {
                    Window::Count(w) => {
                        w.record(sample);
                        let totals = w.totals();
                        let clear =
                            totals.failures == 0 && totals.slow == 0 && w.is_full();
                        self.all_clear.store(clear, Ordering::Release);
                        // In a count window a plain success cannot raise either
                        // rate, so it can only open the breaker by bringing the
                        // window up to the minimum.
                        (sample != Sample::default()
                            || totals.calls == self.config.minimum_calls)
                            .then_some(totals)
                    }
                    Window::Time(w) => {
                        // Time-based eviction can raise a rate at any record: always
                        // judge.
                        let at = Instant::now() - self.start;
                        w.record(at, sample);
                        Some(w.totals(at))
                    }
                };
                totals.and_then(|totals| self.verdict_closed(totals)).map(|reason| {
                    self.transition(&mut m, State::Open, reason, Instant::now())
                })
            }
            TicketKind::Probe if outcome == Outcome::Ignored => {
                // An ignored probe proved nothing: let someone else probe.
                m.half_open.issued -= 1;
                None
            }
            TicketKind::Probe => {
                m.half_open.probes.add(sample);
                let probes = m.half_open.probes;
                (probes.calls >= self.config.half_open_permits).then(|| {
                    let (to, reason) = self.verdict_half_open(probes);
                    self.transition(&mut m, to, reason, Instant::now())
                })
            }
            TicketKind::Disabled => None,
        };
        drop(m);
        self.notify(transition);
    }
    // ANCHOR_END: complete

    /// A call that never finished: nothing to count, but a probe gives its permit
    /// back.
    fn abandon(&self, ticket: Ticket) {
        if ticket.kind != TicketKind::Probe {
            return;
        }
        let mut m = self.lock();
        if m.generation == ticket.generation {
            m.half_open.issued -= 1;
        }
    }

    // ANCHOR: verdicts
    /// Whether a closed window's numbers open the breaker. Thresholds are inclusive:
    /// a 50% threshold opens at exactly 50%.
    fn verdict_closed(&self, totals: Totals) -> Option<Reason> {
        if totals.calls < self.config.minimum_calls {
            return None;
        }
        if totals.reaches(totals.failures, self.config.failure_rate_threshold) {
            return Some(Reason::FailureRate {
                percent: totals.percent(totals.failures),
            });
        }
        match self.config.slow_calls {
            Some(slow) if totals.reaches(totals.slow, slow.rate_threshold) => {
                Some(Reason::SlowCallRate { percent: totals.percent(totals.slow) })
            }
            _ => None,
        }
    }

    /// The probes are judged by the same thresholds, all of them together.
    fn verdict_half_open(&self, probes: Totals) -> (State, Reason) {
        let too_slow = self
            .config
            .slow_calls
            .is_some_and(|slow| probes.reaches(probes.slow, slow.rate_threshold));
        if probes.reaches(probes.failures, self.config.failure_rate_threshold)
            || too_slow
        {
            let (failure_percent, slow_percent) =
                (probes.percent(probes.failures), probes.percent(probes.slow));
            (State::Open, Reason::ProbesFailed { failure_percent, slow_percent })
        } else {
            (State::Closed, Reason::ProbesSucceeded)
        }
    }
    // ANCHOR_END: verdicts

    fn window_totals(&self, m: &mut Machine) -> Totals {
        match &mut m.window {
            Window::Count(w) => w.totals(),
            Window::Time(w) => w.totals(Instant::now() - self.start),
        }
    }

    /// Moves to `to`; the caller notifies listeners after releasing the lock.
    fn transition(
        &self,
        m: &mut Machine,
        to: State,
        reason: Reason,
        now: Instant,
    ) -> Transition {
        let from = m.state;
        m.state = to;
        m.generation += 1;
        self.all_clear.store(false, Ordering::Release);
        m.window.clear();
        m.opened_at = (to == State::Open).then_some(now);
        m.half_open = HalfOpenState {
            started: (to == State::HalfOpen).then_some(now),
            ..HalfOpenState::default()
        };
        self.word.store(m.generation << 8 | to as u64, Ordering::Release);
        self.counters.transitions.fetch_add(1, Ordering::Relaxed);
        Transition { from, to, reason }
    }

    /// An operator's change of state; a no-op (and no event) if already there,
    /// except that a reset always empties the window.
    fn set(&self, to: State, reason: Reason) {
        let mut m = self.lock();
        let transition = if m.state == to {
            m.window.clear();
            self.all_clear.store(false, Ordering::Release);
            None
        } else {
            Some(self.transition(&mut m, to, reason, Instant::now()))
        };
        drop(m);
        self.notify(transition);
    }

    fn notify(&self, transition: Option<Transition>) {
        if let Some(transition) = transition {
            for listener in &self.listeners {
                listener(&transition);
            }
        }
    }
}

/// Whether `wait` has passed since `since`. A wait whose end the clock cannot
/// represent (such as `Duration::MAX`) never passes, rather than overflowing the
/// `Instant`.
fn over(since: Instant, wait: Duration, now: Instant) -> bool {
    since.checked_add(wait).is_some_and(|end| now >= end)
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("state", &self.state())
            .field("config", &self.shared.config)
            .finish()
    }
}
