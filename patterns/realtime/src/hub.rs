//! The hub: one numbered stream of order status changes, fanned out to every
//! subscriber.
//!
//! It knows nothing about WebSockets. A publisher (the shop's event consumer) calls
//! [`Hub::publish`]; each subscriber (one per browser connection) reads its own
//! [`Subscription`]. Three promises live here, so the transport cannot break them:
//!
//! - **A slow subscriber never stalls the others.** `publish` never waits: it puts
//!   the event into each subscriber's bounded buffer with `try_send`. A subscriber
//!   whose buffer is full is cut off and told so ([`Next::Lagged`]); it does not
//!   silently stop receiving.
//! - **Resume without gaps or duplicates.** Every event has a sequence number, and
//!   the hub keeps the last `history` events. A subscriber that says "I saw up to
//!   41" gets 42, 43, ... from the history, then live events, with no event missed
//!   or repeated between the two, because the backlog is copied and the subscriber
//!   registered under one lock.
//! - **A resume the history cannot serve gets a resync**: the current status of
//!   every order and the sequence number it is current at, instead of a stream with
//!   a hole in it.
//!
//! The hub is generic over what it numbers: the key of the thing that changes (`K`,
//! an order id) and its new state (`S`). The chapter uses its own numbered orders
//! and five-step [`Status`] (the defaults); the capstone's notifications service
//! uses the shop's order ids and its statuses as text, through the same code.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

/// An order's id, as the shop's orders service numbers them.
pub type OrderId = u64;

/// Where an order is in its life. The shop's events move an order forward one step
/// at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The customer placed it; every order starts here.
    Placed,
    /// Payment was taken.
    Paid,
    /// The warehouse packed it.
    Packed,
    /// It left the warehouse.
    Shipped,
    /// It reached the customer: the last status, after which no event follows.
    Delivered,
}

impl Status {
    /// Every status in the order an order goes through them.
    pub const ALL: [Status; 5] = [
        Status::Placed,
        Status::Paid,
        Status::Packed,
        Status::Shipped,
        Status::Delivered,
    ];

    /// The status as it is spelt on the wire (the serde name), for log fields.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Placed => "placed",
            Status::Paid => "paid",
            Status::Packed => "packed",
            Status::Shipped => "shipped",
            Status::Delivered => "delivered",
        }
    }
}

// ANCHOR: Event
/// One status change, numbered by the hub. `seq` starts at 1 and grows by one per
/// event, so a client that saw 41 and then sees 43 knows it missed one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event<K = OrderId, S = Status> {
    /// This event's number in the hub's one stream.
    pub seq: u64,
    /// The order that changed.
    pub order: K,
    /// Its status from this event on.
    pub status: S,
}
// ANCHOR_END: Event

/// The current status of every order, current as of event `seq`: what a subscriber
/// gets when there is no history to resume from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot<K = OrderId, S = Status> {
    /// The last event the snapshot includes: live events continue from `seq + 1`.
    pub seq: u64,
    /// Every order the hub has seen, each with its latest status, by order id.
    pub orders: Vec<OrderState<K, S>>,
}

/// One line of a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderState<K = OrderId, S = Status> {
    /// The order.
    pub order: K,
    /// Its latest status as of the snapshot's `seq`.
    pub status: S,
}

/// How a subscription begins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start<K = OrderId, S = Status> {
    /// A new subscriber (no `after`): here is the state now; events follow from `seq
    /// + 1`.
    Snapshot(Snapshot<K, S>),
    /// The resume point is older than the history (or ahead of it): the events in
    /// between are gone, so here is the state now instead; events follow from `seq +
    /// 1`.
    Resync(Snapshot<K, S>),
    /// The history covers the resume point: the events after it come first, then
    /// live ones.
    Resume,
}

/// What a subscriber reads next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next<K = OrderId, S = Status> {
    /// The next event, in `seq` order with no gap since the start or the last one.
    Event(Event<K, S>),
    /// The subscriber fell `buffer` events behind and was cut off.
    /// `Subscription::last_seq` says where it got to, so it can come back with
    /// `after = last_seq`.
    Lagged,
    /// The hub is gone (the process is shutting down).
    Closed,
}

/// Sizes of the hub's two bounded memories.
#[derive(Clone, Copy, Debug)]
pub struct HubConfig {
    /// Events kept for resuming subscribers.
    pub history: usize,
    /// Events buffered per subscriber before it counts as too slow.
    pub buffer: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig { history: 1024, buffer: 64 }
    }
}

struct Subscriber<K, S> {
    tx: mpsc::Sender<Event<K, S>>,
    /// Set (once) when the hub cuts this subscriber off.
    lagged: watch::Sender<bool>,
}

struct State<K, S> {
    last_seq: u64,
    history: VecDeque<Event<K, S>>,
    current: BTreeMap<K, S>,
    subscribers: Vec<Subscriber<K, S>>,
    /// Set by [`Hub::close`]: no subscriber is kept from then on.
    closed: bool,
}

/// The fan-out point. Cheap to clone; every clone is the same hub.
pub struct Hub<K = OrderId, S = Status> {
    config: HubConfig,
    state: Arc<Mutex<State<K, S>>>,
    /// How many subscribers are attached: tests and the example wait on it.
    count: watch::Sender<usize>,
}

// Written out: a derive would ask `K` and `S` to be `Clone` too, and the hub is not
// cloned through them.
impl<K, S> Clone for Hub<K, S> {
    fn clone(&self) -> Self {
        Hub {
            config: self.config,
            state: Arc::clone(&self.state),
            count: self.count.clone(),
        }
    }
}

impl<K: Ord + Clone, S: Clone> Hub<K, S> {
    /// An empty hub. A zero `history` or `buffer` is raised to 1: a hub that keeps
    /// nothing could never deliver an event to anyone.
    pub fn new(config: HubConfig) -> Self {
        Hub::starting_at(config, 1)
    }

    /// An empty hub whose first event is numbered `first` (at least 1). A server that
    /// restarts starts its numbers past any of its previous life's (from the clock,
    /// say), so a client that comes back with a point from that life is always
    /// behind the history and gets a resync, never a resume into other events that
    /// happen to carry the same numbers.
    pub fn starting_at(config: HubConfig, first: u64) -> Self {
        Hub {
            config: HubConfig {
                history: config.history.max(1),
                buffer: config.buffer.max(1),
            },
            state: Arc::new(Mutex::new(State {
                last_seq: first.max(1) - 1,
                history: VecDeque::new(),
                current: BTreeMap::new(),
                subscribers: Vec::new(),
                closed: false,
            })),
            count: watch::Sender::new(0),
        }
    }

    /// The sizes in force, after [`Hub::new`] raised any zero to 1.
    pub fn config(&self) -> HubConfig {
        self.config
    }

    fn lock(&self) -> MutexGuard<'_, State<K, S>> {
        // A panic while holding the lock leaves the state consistent (every change
        // below is one push or one retain), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    // ANCHOR: publish
    /// Numbers the change, records it, and offers it to every subscriber without
    /// waiting. A subscriber whose buffer is full is dropped from the list and
    /// flagged as lagged: the publisher (and so every other subscriber) never waits
    /// for the slowest one.
    pub fn publish(&self, order: K, status: S) -> Event<K, S> {
        let mut state = self.lock();
        state.last_seq += 1;
        let event = Event { seq: state.last_seq, order, status };
        if state.history.len() == self.config.history {
            state.history.pop_front();
        }
        state.history.push_back(event.clone());
        state.current.insert(event.order.clone(), event.status.clone());
        state.subscribers.retain(|sub| match sub.tx.try_send(event.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                sub.lagged.send_replace(true);
                false
            }
            // The subscription was dropped: forget it.
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        self.count.send_replace(state.subscribers.len());
        event
    }
    // ANCHOR_END: publish

    // ANCHOR: subscribe
    /// Attaches a subscriber. `after` is the last sequence number it saw, if it saw
    /// any.
    pub fn subscribe(
        &self,
        after: Option<u64>,
    ) -> (Start<K, S>, Subscription<K, S>) {
        let mut state = self.lock();
        let (tx, rx) = mpsc::channel(self.config.buffer);
        let (lagged_tx, lagged) = watch::channel(false);
        // The oldest event still kept; with an empty history, the next one to come.
        let oldest = state.history.front().map_or(state.last_seq + 1, |e| e.seq);
        let (start, backlog) = match after {
            // Every event after `after` is still here (none, if it is up to date).
            // `oldest` is at least 1, so this cannot wrap; and no `after`,
            // however large, overflows (as `after + 1` would).
            Some(after) if after >= oldest - 1 && after <= state.last_seq => {
                let backlog: VecDeque<Event<K, S>> = state
                    .history
                    .iter()
                    .filter(|e| e.seq > after)
                    .cloned()
                    .collect();
                (Start::Resume, backlog)
            }
            Some(_) => (Start::Resync(snapshot(&state)), VecDeque::new()),
            None => (Start::Snapshot(snapshot(&state)), VecDeque::new()),
        };
        let last_seq = match &start {
            Start::Resume => after.unwrap_or(0),
            Start::Snapshot(s) | Start::Resync(s) => s.seq,
        };
        // A closed hub keeps no one: the sender goes here, and the
        // subscription reads its start and then `Closed`.
        if !state.closed {
            state.subscribers.push(Subscriber { tx, lagged: lagged_tx });
        }
        self.count.send_replace(state.subscribers.len());
        drop(state);
        let hub = self.clone();
        (start, Subscription { hub, backlog, rx, lagged, last_seq })
    }
    // ANCHOR_END: subscribe

    /// Lets every subscriber go, now and from now on: each reads what it has
    /// buffered, then [`Next::Closed`]. A server calls it when it begins to stop,
    /// so its connections end with a close frame instead of holding the stop up.
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.subscribers.clear();
        self.count.send_replace(0);
    }

    /// The number of attached subscribers, now.
    pub fn subscribers(&self) -> usize {
        *self.count.borrow()
    }

    /// Waits until exactly `n` subscribers are attached (a lagged or dropped one
    /// counts as gone once the next publish notices, or once its subscription is
    /// dropped).
    pub async fn wait_for_subscribers(&self, n: usize) {
        let mut rx = self.count.subscribe();
        // `wait_for` fails only when the sender is gone, and `self` holds it.
        if let Err(error) = rx.wait_for(|count| *count == n).await {
            tracing::warn!(%error, "the subscriber count is gone");
        }
    }

    fn forget_closed(&self) {
        let mut state = self.lock();
        state.subscribers.retain(|sub| !sub.tx.is_closed());
        self.count.send_replace(state.subscribers.len());
    }
}

fn snapshot<K: Clone, S: Clone>(state: &State<K, S>) -> Snapshot<K, S> {
    Snapshot {
        seq: state.last_seq,
        orders: state
            .current
            .iter()
            .map(|(order, status)| OrderState {
                order: order.clone(),
                status: status.clone(),
            })
            .collect(),
    }
}

/// One subscriber's view of the hub: first its backlog, then live events, in `seq`
/// order.
pub struct Subscription<K: Ord + Clone = OrderId, S: Clone = Status> {
    hub: Hub<K, S>,
    backlog: VecDeque<Event<K, S>>,
    rx: mpsc::Receiver<Event<K, S>>,
    lagged: watch::Receiver<bool>,
    last_seq: u64,
}

impl<K: Ord + Clone, S: Clone> Subscription<K, S> {
    /// The next event for this subscriber. Cancel-safe: nothing is lost if the
    /// future is dropped before it completes (it is used inside `tokio::select!`).
    pub async fn next(&mut self) -> Next<K, S> {
        // A lagged subscriber stops at once: what is still buffered would only be a
        // longer road to the same resume point.
        if *self.lagged.borrow() {
            return Next::Lagged;
        }
        let event = match self.backlog.pop_front() {
            Some(event) => event,
            None => match self.rx.recv().await {
                Some(event) => event,
                None if *self.lagged.borrow() => return Next::Lagged,
                None => return Next::Closed,
            },
        };
        self.last_seq = event.seq;
        Next::Event(event)
    }

    // ANCHOR: cut_off
    /// Completes when the hub cuts this subscriber off, even while the caller
    /// is busy elsewhere (blocked in a send to a client that stopped reading).
    /// Cancel-safe; it never completes for a subscriber that is not cut off.
    pub async fn cut_off(&mut self) {
        if self.lagged.wait_for(|lagged| *lagged).await.is_err() {
            // The hub let go of this subscriber without cutting it off (it shut
            // down, and `next` says `Closed`): that is not a lag.
            std::future::pending::<()>().await;
        }
    }
    // ANCHOR_END: cut_off

    /// The last sequence number this subscription handed out (or started from).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }
}

/// Dropping a subscription detaches it at once, so the subscriber count is right
/// without waiting for the next publish to notice.
impl<K: Ord + Clone, S: Clone> Drop for Subscription<K, S> {
    fn drop(&mut self) {
        self.rx.close();
        self.hub.forget_closed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(history: usize, buffer: usize) -> Hub {
        Hub::new(HubConfig { history, buffer })
    }

    async fn take(sub: &mut Subscription, n: usize) -> Vec<u64> {
        let mut seqs = Vec::new();
        for _ in 0..n {
            match sub.next().await {
                Next::Event(e) => seqs.push(e.seq),
                other => panic!("expected an event, got {other:?}"),
            }
        }
        seqs
    }

    #[tokio::test]
    async fn a_resume_inside_the_history_gets_exactly_the_missing_events() {
        let hub = hub(8, 16);
        for order in 1..=5 {
            hub.publish(order, Status::Placed);
        }
        let (start, mut sub) = hub.subscribe(Some(2));
        assert_eq!(start, Start::Resume);
        hub.publish(6, Status::Placed);
        assert_eq!(take(&mut sub, 4).await, [3, 4, 5, 6]);
    }

    #[tokio::test]
    async fn a_resume_older_than_the_history_gets_a_resync() {
        let hub = hub(3, 16);
        for order in 1..=5 {
            hub.publish(order, Status::Placed);
        }
        hub.publish(1, Status::Paid);
        // History holds 4, 5, 6: a client that saw 2 missed 3, which is gone.
        let (start, mut sub) = hub.subscribe(Some(2));
        let Start::Resync(snapshot) = start else { panic!("expected a resync") };
        assert_eq!(snapshot.seq, 6);
        assert_eq!(
            snapshot.orders[0],
            OrderState { order: 1, status: Status::Paid }
        );
        assert_eq!(snapshot.orders.len(), 5);
        // A client that saw 3 can still resume.
        assert_eq!(hub.subscribe(Some(3)).0, Start::Resume);
        hub.publish(2, Status::Paid);
        assert_eq!(take(&mut sub, 1).await, [7]);
    }

    #[tokio::test]
    async fn a_resume_point_ahead_of_the_hub_gets_a_resync() {
        // A client from before a restart: the numbers it knows are not this run's.
        let hub = hub(8, 16);
        hub.publish(1, Status::Placed);
        let (start, _) = hub.subscribe(Some(5));
        assert!(matches!(start, Start::Resync(Snapshot { seq: 1, .. })));
        assert_eq!(hub.subscribe(Some(1)).0, Start::Resume);
    }

    #[tokio::test]
    async fn a_full_buffer_cuts_off_only_that_subscriber() {
        let hub = hub(64, 2);
        let (_, mut slow) = hub.subscribe(None);
        let (_, mut fast) = hub.subscribe(None);
        for order in 1..=3 {
            hub.publish(order, Status::Placed);
            assert_eq!(take(&mut fast, 1).await, [order]);
        }
        assert_eq!(hub.subscribers(), 1, "the slow one is detached");
        assert_eq!(slow.next().await, Next::Lagged);
        assert_eq!(slow.last_seq(), 0);
    }

    #[tokio::test]
    async fn a_hub_started_past_an_old_life_resyncs_that_lifes_clients() {
        let hub = Hub::starting_at(HubConfig { history: 8, buffer: 16 }, 1000);
        let (start, _) = hub.subscribe(None);
        assert!(matches!(start, Start::Snapshot(Snapshot { seq: 999, .. })));
        hub.publish(1, Status::Placed);
        // A client of the old life, which numbered from 1, saw 41.
        assert!(matches!(hub.subscribe(Some(41)).0, Start::Resync(_)));
        // A point no hub could have reached is a resync too, not an overflow.
        assert!(matches!(hub.subscribe(Some(u64::MAX)).0, Start::Resync(_)));
        assert_eq!(hub.subscribe(Some(999)).0, Start::Resume);
    }

    #[tokio::test]
    async fn a_closed_hub_ends_every_subscription_after_what_it_buffered() {
        let hub = hub(8, 16);
        let (_, mut early) = hub.subscribe(None);
        hub.publish(1, Status::Placed);
        hub.close();
        assert_eq!(hub.subscribers(), 0);
        assert_eq!(take(&mut early, 1).await, [1]);
        assert_eq!(early.next().await, Next::Closed);
        // One who comes after the close gets its start, then the end.
        let (start, mut late) = hub.subscribe(None);
        assert!(matches!(start, Start::Snapshot(Snapshot { seq: 1, .. })));
        assert_eq!(late.next().await, Next::Closed);
        assert_eq!(hub.subscribers(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn cut_off_completes_for_a_lagged_subscriber_and_only_for_it() {
        use std::time::Duration;
        let hub = hub(64, 1);
        let (_, mut slow) = hub.subscribe(None);
        let (_, mut fast) = hub.subscribe(None);
        let waiting = Duration::from_secs(60);
        // Nothing lagged yet: it does not complete (a paused clock makes the
        // wait free).
        let early = tokio::time::timeout(waiting, slow.cut_off()).await;
        assert!(early.is_err(), "cut off before any lag");
        for order in 1..=2 {
            hub.publish(order, Status::Placed);
            assert_eq!(take(&mut fast, 1).await, [order]);
        }
        // The slow one's buffer of one overflowed: it hears it without reading.
        tokio::time::timeout(waiting, slow.cut_off()).await.unwrap();
        let fast_cut = tokio::time::timeout(waiting, fast.cut_off()).await;
        assert!(fast_cut.is_err(), "the fast one is not cut off");
        // A hub that shuts down does not count as cutting anyone off.
        drop(hub);
        let closed = tokio::time::timeout(waiting, fast.cut_off()).await;
        assert!(closed.is_err());
    }
}
