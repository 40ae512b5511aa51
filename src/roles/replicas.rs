//! The gateway's view of a service that runs as several replicas: one client per replica, each
//! behind a breaker of its own, taken in turns.
//!
//! A replica that fails opens its own breaker and drops out of the turns; the others keep
//! their callers. A call that failed on one replica is tried on the next, so a second attempt
//! never goes back to the replica that just failed. The addresses are the ones the role's
//! `SHOP_<ROLE>_ADDR` lists: the shop's discovery is its configuration.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use circuit_breaker::{CircuitBreaker, State};
use gateway::backends::{OrdersBackend, PaymentsBackend};

/// A client of one replica that calls through a breaker.
pub trait Guarded {
    /// The breaker in front of this replica.
    fn breaker(&self) -> &CircuitBreaker;
}

impl Guarded for OrdersBackend {
    fn breaker(&self) -> &CircuitBreaker {
        &self.backend.breaker
    }
}

impl Guarded for PaymentsBackend {
    fn breaker(&self) -> &CircuitBreaker {
        &self.backend.breaker
    }
}

/// One replica of the intake: where it is, and the breaker in front of it.
pub struct Endpoint {
    /// `http://host:port`.
    pub url: String,
    /// Its own breaker: one replica failing does not stop calls to the others.
    pub breaker: Arc<CircuitBreaker>,
}

impl Guarded for Endpoint {
    fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }
}

/// Every replica of one service, each with its address.
pub struct Replicas<T> {
    members: Vec<(String, Arc<T>)>,
    next: AtomicUsize,
}

impl<T: Guarded> Replicas<T> {
    /// The replicas, `(address, client)`; at least one.
    pub fn new(members: Vec<(String, Arc<T>)>) -> anyhow::Result<Self> {
        anyhow::ensure!(!members.is_empty(), "a service needs at least one replica");
        Ok(Replicas { members, next: AtomicUsize::new(0) })
    }

    // ANCHOR: replicas_turn
    /// The replicas in the order the next call tries them: starting one
    /// further than the last call did, those whose breaker is closed first,
    /// then the others (whose breakers refuse at once, or let a probe
    /// through).
    pub fn turn(&self) -> Vec<&Arc<T>> {
        let n = self.members.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let in_turn = (0..n).map(|i| &self.members[(start + i) % n].1);
        let closed = |t: &&Arc<T>| t.breaker().state() == State::Closed;
        let (mut order, open): (Vec<_>, Vec<_>) = in_turn.partition(closed);
        order.extend(open);
        order
    }
    // ANCHOR_END: replicas_turn

    /// The replica a read goes to now: the next one in turn whose breaker is closed.
    pub fn pick(&self) -> Arc<T> {
        Arc::clone(self.turn()[0])
    }

    /// Whether some replica's breaker is closed: a retry is worth making only then.
    pub fn any_closed(&self) -> bool {
        self.members.iter().any(|(_, t)| t.breaker().state() == State::Closed)
    }

    /// Each replica's address and client, in the order configured.
    pub fn members(&self) -> &[(String, Arc<T>)] {
        &self.members
    }
}

#[cfg(test)]
mod tests {
    use circuit_breaker::Outcome;

    use super::*;

    fn endpoint(port: u16) -> (String, Arc<Endpoint>) {
        let config = crate::roles::edge::breaker_config().unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let breaker = Arc::new(CircuitBreaker::builder(config).build());
        (url.clone(), Arc::new(Endpoint { url, breaker }))
    }

    fn urls(order: Vec<&Arc<Endpoint>>) -> Vec<&str> {
        order.into_iter().map(|e| e.url.as_str()).collect()
    }

    #[test]
    fn calls_take_the_replicas_in_turns_and_an_open_breaker_goes_last() {
        let replicas =
            Replicas::new(vec![endpoint(1), endpoint(2), endpoint(3)]).unwrap();
        let firsts: Vec<String> =
            (0..6).map(|_| replicas.pick().url.clone()).collect();
        let a = "http://127.0.0.1:1";
        let (b, c) = ("http://127.0.0.1:2", "http://127.0.0.1:3");
        assert_eq!(firsts, [a, b, c, a, b, c]);
        // Replica 2 fails every call until its breaker opens.
        let second = &replicas.members()[1].1;
        while second.breaker.state() == State::Closed {
            second.breaker.try_acquire().unwrap().record(Outcome::Failure);
        }
        assert!(replicas.any_closed());
        // Its turn comes, but the call starts at the next one and tries it last.
        assert_eq!(urls(replicas.turn()), [a, c, b]);
        assert_eq!(urls(replicas.turn()), [c, a, b]);
        assert_eq!(urls(replicas.turn()), [c, a, b]);
        for (_, member) in replicas.members() {
            while member.breaker.state() == State::Closed {
                member.breaker.try_acquire().unwrap().record(Outcome::Failure);
            }
        }
        assert!(!replicas.any_closed());
        assert_eq!(replicas.turn().len(), 3, "every replica still in the turn");
        assert!(Replicas::<Endpoint>::new(vec![]).is_err());
    }
}
