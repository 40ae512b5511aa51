//! Idempotency keys: a retried `POST` replays the first answer instead of acting twice.
//!
//! A client that times out does not know whether its order was created: the request may have died on
//! the way in, or the response on the way out. Retrying blindly risks two orders; not retrying risks
//! none. The client therefore sends a unique `Idempotency-Key` with the request and the same key with
//! every retry. The service remembers, per key, a fingerprint of the request and the response it gave:
//!
//! - a new key: the request runs, and its response is stored under the key;
//! - a known key with the same request: the stored response is replayed, nothing runs again;
//! - a known key with a different request: 422, because the client has a bug;
//! - a key whose first request is still running: 409, retry shortly.
//!
//! Production differences: keys expire (24 hours is common), and the record is written in the same
//! database transaction as the order, so a crash cannot leave one without the other. Here both live in
//! memory, and the [`Reservation`] guard releases an unfinished key if the handler is dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode};

use crate::problem::Problem;

/// The request header that carries the key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Set on a replayed response, so clients and logs can tell a replay from a first answer.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// Reads and checks the `Idempotency-Key` header: 1 to 255 visible ASCII characters.
pub fn key_from(headers: &HeaderMap) -> Result<String, Problem> {
    let value =
        headers.get(IDEMPOTENCY_KEY).ok_or_else(Problem::idempotency_key_missing)?;
    let key = value.to_str().map_err(|_| Problem::idempotency_key_missing())?;
    if key.is_empty()
        || key.len() > 255
        || !key.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(Problem::idempotency_key_missing());
    }
    Ok(key.to_owned())
}

/// A response kept for replay.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredResponse {
    /// The status to answer again, 201 for a created order.
    pub status: StatusCode,
    /// Where the created resource lives, if the first answer said so.
    pub location: Option<String>,
    /// The body as first sent, byte for byte, so a replay is the same answer.
    pub body: Vec<u8>,
}

#[derive(Debug)]
enum Slot {
    InFlight { fingerprint: Vec<u8> },
    Done { fingerprint: Vec<u8>, response: StoredResponse },
}

// ANCHOR: Begin
/// What the store says about a request and its key.
#[derive(Debug)]
pub enum Begin {
    /// A new key: run the request, then [`Reservation::complete`] it.
    Fresh(Reservation),
    /// Same key, same request, already answered: send this again.
    Replay(StoredResponse),
    /// Same key, different request: a client bug.
    Mismatch,
    /// Same key, first request still running.
    InFlight,
}
// ANCHOR_END: Begin

/// Keys and their outcomes. Cloning shares the same store.
#[derive(Clone, Debug, Default)]
pub struct IdempotencyStore {
    slots: Arc<Mutex<HashMap<String, Slot>>>,
}

impl IdempotencyStore {
    // ANCHOR: begin
    /// Looks the key up and, if it is new, reserves it for this request in the same
    /// critical section, so two concurrent requests with one key cannot both run.
    pub fn begin(&self, key: String, fingerprint: Vec<u8>) -> Begin {
        let mut slots =
            self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match slots.get(&key) {
            Some(Slot::Done { fingerprint: seen, response })
                if *seen == fingerprint =>
            {
                Begin::Replay(response.clone())
            }
            Some(Slot::InFlight { fingerprint: seen }) if *seen == fingerprint => {
                Begin::InFlight
            }
            Some(_) => Begin::Mismatch,
            None => {
                slots.insert(
                    key.clone(),
                    Slot::InFlight { fingerprint: fingerprint.clone() },
                );
                Begin::Fresh(Reservation {
                    store: self.clone(),
                    key,
                    fingerprint: Some(fingerprint),
                })
            }
        }
    }
    // ANCHOR_END: begin

    /// How many keys have a stored response.
    pub fn completed(&self) -> usize {
        let slots =
            self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        slots.values().filter(|s| matches!(s, Slot::Done { .. })).count()
    }
}

/// The right to answer a key first. Dropping it without [`complete`](Self::complete) (the handler
/// failed or was cancelled) frees the key, so the client's retry runs the request again.
#[derive(Debug)]
pub struct Reservation {
    store: IdempotencyStore,
    key: String,
    /// `None` once completed.
    fingerprint: Option<Vec<u8>>,
}

impl Reservation {
    /// Records the answer under the key, for every retry to replay. Call it with no
    /// `.await` since the work was done, so cancellation cannot separate the two.
    pub fn complete(mut self, response: StoredResponse) {
        if let Some(fingerprint) = self.fingerprint.take() {
            let mut slots = self
                .store
                .slots
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            slots.insert(
                std::mem::take(&mut self.key),
                Slot::Done { fingerprint, response },
            );
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.fingerprint.is_some() {
            let mut slots = self
                .store
                .slots
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            slots.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn created(body: &str) -> StoredResponse {
        StoredResponse {
            status: StatusCode::CREATED,
            location: None,
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn replays_the_first_response_for_the_same_request() {
        let store = IdempotencyStore::default();
        let Begin::Fresh(reservation) = store.begin("k".into(), b"order".to_vec())
        else {
            panic!("new key")
        };
        assert!(matches!(
            store.begin("k".into(), b"order".to_vec()),
            Begin::InFlight
        ));
        reservation.complete(created("first"));
        match store.begin("k".into(), b"order".to_vec()) {
            Begin::Replay(response) => assert_eq!(response, created("first")),
            other => panic!("expected a replay, got {other:?}"),
        }
        assert_eq!(store.completed(), 1);
    }

    #[test]
    fn a_different_request_under_a_used_key_is_a_mismatch() {
        let store = IdempotencyStore::default();
        let Begin::Fresh(reservation) = store.begin("k".into(), b"a".to_vec())
        else {
            panic!("new key")
        };
        assert!(
            matches!(store.begin("k".into(), b"b".to_vec()), Begin::Mismatch),
            "while in flight"
        );
        reservation.complete(created("a"));
        assert!(
            matches!(store.begin("k".into(), b"b".to_vec()), Begin::Mismatch),
            "once done"
        );
    }

    #[test]
    fn an_abandoned_reservation_frees_its_key() {
        let store = IdempotencyStore::default();
        let Begin::Fresh(reservation) = store.begin("k".into(), b"a".to_vec())
        else {
            panic!("new key")
        };
        drop(reservation);
        assert!(matches!(store.begin("k".into(), b"a".to_vec()), Begin::Fresh(_)));
        assert_eq!(store.completed(), 0);
    }

    #[test]
    fn keys_must_be_visible_ascii_of_sane_length() {
        let header = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(IDEMPOTENCY_KEY, v.parse().unwrap());
            h
        };
        assert_eq!(key_from(&header("checkout-7")).unwrap(), "checkout-7");
        assert!(key_from(&HeaderMap::new()).is_err());
        assert!(key_from(&header("")).is_err());
        assert!(key_from(&header("has space")).is_err());
        assert!(key_from(&header(&"k".repeat(256))).is_err());
    }
}
