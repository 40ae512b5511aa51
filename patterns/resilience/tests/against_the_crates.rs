//! The book writes its own retry budget, bulkhead and backoff, to show how they work;
//! in production a reader would use a well-kept crate. These tests feed ours and the
//! crate the same sequence and show where they decide the same, and where and why
//! they differ:
//!
//! - the retry budget against `tower::retry::budget::TpsBudget`,
//! - the bulkhead against tower's `ConcurrencyLimit` under `LoadShed`,
//! - the backoff against `backon`'s `ExponentialBuilder`.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// tests may panic with a message
// `play` is given async closures that return the running call: starting it may
// await (tower's `ready`), running it is what the caller then polls.
#![allow(clippy::async_yields_async)]

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use backon::BackoffBuilder;
use resilience::backoff::Backoff;
use resilience::budget::RetryBudget;
use resilience::bulkhead::Bulkhead;
use tokio::sync::oneshot;
use tower::retry::budget::{Budget, TpsBudget};
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};

/// One budget operation, and what each budget answered.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Step {
    Deposit,
    Withdraw,
}

fn decisions(
    steps: &[Step],
    deposit: impl Fn(),
    withdraw: impl Fn() -> bool,
) -> Vec<bool> {
    let mut answers = Vec::new();
    for step in steps {
        match step {
            Step::Deposit => deposit(),
            Step::Withdraw => answers.push(withdraw()),
        }
    }
    answers
}

/// Every call deposits, and (the dependency being down) retries up to three times.
fn outage(calls: usize) -> Vec<Step> {
    let one_call = [Step::Deposit, Step::Withdraw, Step::Withdraw, Step::Withdraw];
    one_call.iter().copied().cycle().take(4 * calls).collect()
}

/// 10% of calls, and a reserve of 5 retries: ours with `RetryBudget::new(0.1, 5)`,
/// tower's as 5 retries a second over a one-second window. tower's clock is tokio's,
/// paused here, so nothing expires unless the test moves time.
fn both_budgets() -> (RetryBudget, TpsBudget) {
    (RetryBudget::new(0.1, 5), TpsBudget::new(Duration::from_secs(1), 5, 0.1))
}

/// Once the reserve is spent, both count deposits and withdrawals the same way: a
/// tenth of a retry per call, a whole one per retry.
#[tokio::test(start_paused = true)]
async fn budgets_decide_the_same_once_the_reserve_is_spent() {
    let (ours, towers) = both_budgets();
    let spend = vec![Step::Withdraw; 6];
    let steps: Vec<Step> = spend.into_iter().chain(outage(300)).collect();
    let ours = decisions(&steps, || ours.deposit(), || ours.try_withdraw());
    let towers = decisions(&steps, || towers.deposit(), || towers.withdraw());
    assert_eq!(&ours[..6], [true, true, true, true, true, false], "the reserve");
    assert_eq!(ours, towers);
    assert_eq!(ours.iter().filter(|allowed| **allowed).count(), 5 + 30);
}

/// Two differences. Ours caps its savings at the reserve, so a deposit into a full
/// budget is lost: the retry_budget example's 24 retries where tower allows 25.
/// And tower forgets: deposits and withdrawals leave its window after its ttl, so
/// the reserve comes back by itself, where ours refills only from new calls.
#[tokio::test(start_paused = true)]
async fn budgets_differ_in_the_cap_and_in_forgetting() {
    let (ours, towers) = both_budgets();
    let steps = outage(200);
    let ours_said = decisions(&steps, || ours.deposit(), || ours.try_withdraw());
    let towers_said = decisions(&steps, || towers.deposit(), || towers.withdraw());
    let allowed = |said: &[bool]| said.iter().filter(|a| **a).count();
    assert_eq!((allowed(&ours_said), allowed(&towers_said)), (24, 25));

    // A quiet spell longer than tower's one-second window.
    tokio::time::advance(Duration::from_secs(2)).await;
    let again = vec![Step::Withdraw; 10];
    let ours_said = decisions(&again, || ours.deposit(), || ours.try_withdraw());
    let towers_said = decisions(&again, || towers.deposit(), || towers.withdraw());
    assert_eq!(allowed(&ours_said), 0, "ours: nothing saved, nothing earned");
    assert_eq!(allowed(&towers_said), 5, "tower: the reserve is back");
}

/// What a bulkhead is asked to do, call by call.
#[derive(Clone, Copy, Debug)]
enum Event {
    Start(usize),
    Finish(usize),
    Cancel(usize),
}

type Running<'a> = Pin<Box<dyn Future<Output = bool> + 'a>>;

/// Polls `call` once: `Some(accepted)` if it already ended (a rejection), `None` if
/// it is running.
async fn first_poll(call: &mut Running<'_>) -> Option<bool> {
    tokio::select! {
        biased;
        done = call => Some(done),
        () = std::future::ready(()) => None,
    }
}

/// Plays `events` against a bulkhead-like limiter: `start` makes call `i`, which runs
/// until its sender fires. Returns, per `Start`, whether the call was let in.
async fn play<'a>(
    events: &[Event],
    mut start: impl AsyncFnMut(oneshot::Receiver<()>) -> Running<'a>,
) -> Vec<bool> {
    let mut running: Vec<Option<(oneshot::Sender<()>, Running<'a>)>> = Vec::new();
    let mut admitted = Vec::new();
    for event in events {
        match *event {
            Event::Start(i) => {
                let (finish, finished) = oneshot::channel();
                let mut call = start(finished).await;
                let rejected = first_poll(&mut call).await == Some(false);
                admitted.push(!rejected);
                running.resize_with(running.len().max(i + 1), || None);
                running[i] = (!rejected).then_some((finish, call));
            }
            Event::Finish(i) => {
                let (finish, call) = running[i].take().unwrap();
                finish.send(()).unwrap();
                assert!(call.await, "call {i} finished");
            }
            Event::Cancel(i) => drop(running[i].take().unwrap()),
        }
    }
    admitted
}

/// Our bulkhead and tower's `ConcurrencyLimit` under `LoadShed` admit and refuse the
/// same calls: a full limiter refuses at once instead of queueing, a finished call
/// frees its place, and so does a cancelled one (its future dropped).
#[tokio::test(start_paused = true)]
async fn the_bulkhead_and_towers_concurrency_limit_with_load_shed_agree() {
    use Event::{Cancel, Finish, Start};
    let events = [
        Start(0),
        Start(1),
        Start(2), // full: refused
        Finish(0),
        Start(3),
        Start(4), // full again
        Cancel(1),
        Start(5),
        Start(6), // full
        Finish(3),
        Finish(5),
        Start(7),
        Start(8),
        Start(9), // full
    ];

    let bulkhead = Bulkhead::new("inventory", 2);
    let ours = play(&events, async |finished| {
        let call = bulkhead.call(async { finished.await.is_ok() });
        let bulkhead_call = async move { call.await.unwrap_or(false) };
        Box::pin(bulkhead_call) as Running<'_>
    })
    .await;

    let inner = tower::service_fn(|finished: oneshot::Receiver<()>| async move {
        finished.await.map_err(BoxError::from)
    });
    let mut limited =
        ServiceBuilder::new().load_shed().concurrency_limit(2).service(inner);
    let towers = play(&events, async |finished| {
        // LoadShed is always ready; its call fails at once with `Overloaded`
        // when the limit beneath it was not.
        let call = limited.ready().await.unwrap().call(finished);
        Box::pin(async move { call.await.is_ok() }) as Running<'_>
    })
    .await;

    assert_eq!(
        ours,
        [true, true, false, true, false, true, false, true, true, false]
    );
    assert_eq!(ours, towers);
}

/// Without `LoadShed`, tower's `ConcurrencyLimit` queues: a caller waits for a
/// place, which is the queueing a bulkhead exists to avoid.
#[tokio::test(start_paused = true)]
async fn towers_concurrency_limit_alone_queues() {
    let inner = tower::service_fn(|finished: oneshot::Receiver<()>| async move {
        finished.await.map_err(BoxError::from)
    });
    let mut limited = ServiceBuilder::new().concurrency_limit(1).service(inner);
    let (_finish, finished) = oneshot::channel();
    let _running = limited.ready().await.unwrap().call(finished);
    let waited =
        tokio::time::timeout(Duration::from_secs(60), limited.ready()).await;
    assert!(waited.is_err(), "still waiting for a place after a minute");
}

/// Without jitter, backon's exponential delays are our ceilings: base, doubling,
/// capped (backon computes in `f32` seconds, hence the microsecond tolerance).
#[test]
fn backon_without_jitter_waits_our_ceilings() {
    let ours =
        Backoff { base: Duration::from_millis(10), max: Duration::from_millis(200) };
    let backon: Vec<Duration> = backon::ExponentialBuilder::default()
        .with_min_delay(ours.base)
        .with_max_delay(ours.max)
        .with_max_times(8)
        .build()
        .collect();
    assert_eq!(backon.len(), 8);
    for (retry, delay) in backon.iter().enumerate() {
        let ceiling = ours.ceiling(retry as u32);
        assert!(
            ceiling.abs_diff(*delay) < Duration::from_micros(1),
            "{retry}: {delay:?}"
        );
    }
}

/// With jitter they differ in kind. backon adds a random share of the delay on top
/// of it, so its waits lie in [ceiling, 2 x ceiling), past `max_delay` too; ours
/// (full jitter) lie anywhere in [0, ceiling]. backon's crowd still waits at least
/// the ceiling, all of it; ours spreads from zero.
#[test]
fn backon_jitter_adds_to_the_ceiling_where_full_jitter_draws_under_it() {
    let ours =
        Backoff { base: Duration::from_millis(100), max: Duration::from_secs(1) };
    let mut rng = fastrand::Rng::with_seed(7);
    let retry = 4; // ceiling 1 s: the cap
    let ceiling = ours.ceiling(retry);
    let mut backon_waits = Vec::new();
    let mut our_waits = Vec::new();
    for seed in 0..1_000 {
        let nth = backon::ExponentialBuilder::default()
            .with_min_delay(ours.base)
            .with_max_delay(ours.max)
            .with_max_times(10) // the default is 3
            .with_jitter()
            .with_jitter_seed(seed)
            .build()
            .nth(retry as usize);
        backon_waits.push(nth.unwrap());
        our_waits.push(ours.delay(retry, &mut rng));
    }
    let tolerance = Duration::from_micros(1);
    assert!(
        backon_waits.iter().all(|w| *w + tolerance >= ceiling && *w < ceiling * 2)
    );
    assert!(
        backon_waits.iter().filter(|w| **w > ours.max).count() > 900,
        "past the cap"
    );
    assert!(our_waits.iter().all(|w| *w <= ceiling));
    assert!(
        our_waits.iter().filter(|w| **w < ceiling / 2).count() > 400,
        "from zero"
    );
}
