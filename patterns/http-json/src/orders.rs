//! The orders domain: what a client sends, what the service stores, how it is validated.
//!
//! Request types reject unknown fields (`#[serde(deny_unknown_fields)]`). serde's derive otherwise
//! skips every key the type does not declare, so a client that adds `"currency": "USD"` (a field
//! this API does not have) would get a 201 for an order in euros, and never hear that its field
//! was dropped. A misspelled *required* field (`quantty`) fails either way, as a missing
//! `quantity`: no field here has a default. The attribute also keeps the idempotency fingerprint
//! honest, because the fingerprint is taken from the decoded request: a key dropped while
//! decoding could not tell two requests apart.
//!
//! Business rules (a non-empty order, positive quantities) are checked after decoding, and every
//! violation is reported at once, so a client fixes its request in one round trip rather than one
//! error at a time.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::problem::{FieldError, objects, whole};

// ANCHOR: NewOrder
/// The body of `POST /v1/orders` and `POST /v2/orders`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOrder {
    /// Who is ordering, and the key orders are listed by: an `ID`.
    #[schema(pattern = "^[!-~]{1,64}$")]
    pub customer_id: String,
    /// What is ordered: 1 to `MAX_LINES` lines.
    #[schema(min_items = 1, max_items = 100)]
    #[serde(deserialize_with = "objects")]
    pub lines: Vec<OrderLine>,
}

/// One line of an order: a product, how many, and at what price.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderLine {
    /// The product's stock-keeping unit: an `ID`.
    #[schema(pattern = "^[!-~]{1,64}$")]
    pub sku: String,
    /// How many, 1 to `MAX_QUANTITY`.
    #[schema(minimum = 1, maximum = 1000)]
    #[serde(deserialize_with = "whole")]
    pub quantity: u32,
    /// Minor units (cents), at most `MAX_UNIT_PRICE_CENTS`. Integers, never floats.
    #[schema(maximum = 1_000_000_000)]
    #[serde(deserialize_with = "whole")]
    pub unit_price_cents: u64,
}
// ANCHOR_END: NewOrder

/// At most this many lines in one order: upper bounds keep one request from doing
/// unbounded work.
pub const MAX_LINES: usize = 100;
/// The most of one product in one line: beyond it, a typo more likely than an order.
pub const MAX_QUANTITY: u32 = 1_000;
/// The longest id (`customer_id`, `sku`): 1 to 64 visible ASCII characters, a rule
/// every regex engine reads the same way, so the document can state it exactly (a
/// rule like "not blank" depends on what an engine calls a space).
pub const MAX_ID_LEN: usize = 64;
/// The highest price of one product, ten million euros. With the two bounds above, every total
/// stays below 2^53, the largest integer a JavaScript client reads exactly. Without it, a price
/// of 2^63 was accepted and answered with a total that a browser would round: schemathesis found
/// it by sending a value past the document's `int64`, which the service should have refused.
pub const MAX_UNIT_PRICE_CENTS: u64 = 1_000_000_000;

const ID_RULE: &str = "1 to 64 visible ASCII characters";

fn is_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

impl NewOrder {
    // ANCHOR: validate
    /// Checks the rules a well-formed request can still break: every violation.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        if !is_id(&self.customer_id) {
            errors.push(FieldError::new("/customer_id", ID_RULE));
        }
        if self.lines.is_empty() {
            errors
                .push(FieldError::new("/lines", "an order needs at least one line"));
        }
        if self.lines.len() > MAX_LINES {
            errors.push(FieldError::new(
                "/lines",
                format!("at most {MAX_LINES} lines per order"),
            ));
        }
        for (i, line) in self.lines.iter().enumerate() {
            if !is_id(&line.sku) {
                errors.push(FieldError::new(format!("/lines/{i}/sku"), ID_RULE));
            }
            if !(1..=MAX_QUANTITY).contains(&line.quantity) {
                errors.push(FieldError::new(
                    format!("/lines/{i}/quantity"),
                    format!("must be between 1 and {MAX_QUANTITY}"),
                ));
            }
            if line.unit_price_cents > MAX_UNIT_PRICE_CENTS {
                errors.push(FieldError::new(
                    format!("/lines/{i}/unit_price_cents"),
                    format!("at most {MAX_UNIT_PRICE_CENTS}"),
                ));
            }
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }
    // ANCHOR_END: validate

    /// The order total in cents, or `None` if it would overflow (a request crafted to wrap around).
    pub fn total_cents(&self) -> Option<u64> {
        self.lines.iter().try_fold(0u64, |sum, line| {
            line.unit_price_cents
                .checked_mul(u64::from(line.quantity))?
                .checked_add(sum)
        })
    }
}

/// Where an order is in its life; the service only places orders so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Accepted and stored.
    Placed,
}

/// An order as the service stores it. Each API version renders it its own way (see `server`).
#[derive(Clone, Debug, PartialEq)]
pub struct Order {
    /// Chosen by the service, never by the client.
    pub id: Uuid,
    /// As given in the request.
    pub customer_id: String,
    /// As given in the request, validated.
    pub lines: Vec<OrderLine>,
    /// Computed once, with overflow checked, and stored: never recomputed on read.
    pub total_cents: u64,
    /// Where the order is in its life.
    pub status: OrderStatus,
    /// Creation order, for stable listings.
    pub seq: u64,
}

/// An in-memory order store. Production keeps orders in a database, and writes the idempotency
/// record in the same transaction as the order, so that neither can exist without the other.
#[derive(Debug, Default)]
pub struct OrderStore {
    inner: Mutex<StoreInner>,
}

#[derive(Debug, Default)]
struct StoreInner {
    orders: HashMap<Uuid, Order>,
    next_seq: u64,
}

impl OrderStore {
    /// Stores a validated order and returns it. `total_cents` must come from [`NewOrder::total_cents`].
    pub fn insert(&self, new: NewOrder, total_cents: u64) -> Order {
        let stored: Result<_, std::convert::Infallible> =
            self.insert_with(new, total_cents, |_| Ok(()));
        match stored {
            Ok((order, ())) => order,
        }
    }

    /// Builds the order, derives `answer` from it (the response body, say), and
    /// stores the order only if that succeeds. A caller that must never hold an
    /// order without its answer (the idempotency record) gets that by construction:
    /// when `answer` fails, nothing was stored and a retry places the order afresh.
    pub fn insert_with<T, E>(
        &self,
        new: NewOrder,
        total_cents: u64,
        answer: impl FnOnce(&Order) -> Result<T, E>,
    ) -> Result<(Order, T), E> {
        let mut inner =
            self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let order = Order {
            id: Uuid::new_v4(),
            customer_id: new.customer_id,
            lines: new.lines,
            total_cents,
            status: OrderStatus::Placed,
            seq: inner.next_seq + 1,
        };
        let answer = answer(&order)?;
        inner.next_seq = order.seq;
        inner.orders.insert(order.id, order.clone());
        Ok((order, answer))
    }

    /// One order by id, or `None` (a 404 for the caller).
    pub fn get(&self, id: Uuid) -> Option<Order> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .orders
            .get(&id)
            .cloned()
    }

    /// All orders (of one customer, if given), oldest first.
    pub fn list(&self, customer_id: Option<&str>) -> Vec<Order> {
        let inner =
            self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut orders: Vec<Order> = inner
            .orders
            .values()
            .filter(|o| customer_id.is_none_or(|c| o.customer_id == c))
            .cloned()
            .collect();
        orders.sort_by_key(|o| o.seq);
        orders
    }

    /// How many orders are stored: what the tests count to prove one order per key.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .orders
            .len()
    }

    /// Whether no order was stored yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(quantity: u32, unit_price_cents: u64) -> OrderLine {
        OrderLine { sku: "mug".into(), quantity, unit_price_cents }
    }

    #[test]
    fn reports_every_violation_at_once() {
        let order = NewOrder {
            customer_id: " ".into(),
            lines: vec![line(0, 100), OrderLine { sku: "".into(), ..line(1, 1) }],
        };
        let pointers: Vec<String> =
            order.validate().unwrap_err().into_iter().map(|e| e.pointer).collect();
        assert_eq!(pointers, ["/customer_id", "/lines/0/quantity", "/lines/1/sku"]);
    }

    /// What `deny_unknown_fields` adds, and what serde does without it.
    #[test]
    fn unknown_fields_are_refused_and_a_misspelled_field_is_missing_anyway() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code, reason = "only decoded")]
        struct Lenient {
            sku: String,
            quantity: u32,
        }
        // Without the attribute an extra field vanishes without a trace...
        let extra = r#"{"sku": "mug", "quantity": 2, "gift_wrap": true}"#;
        assert!(serde_json::from_str::<Lenient>(extra).is_ok());
        // ... while a misspelled required field is an error either way: it is missing.
        let typo = r#"{"sku": "mug", "quantty": 2}"#;
        let error = serde_json::from_str::<Lenient>(typo).unwrap_err();
        assert!(error.to_string().contains("missing field `quantity`"), "{error}");
        // With it, the extra field is an error that names it.
        let extra = r#"{"sku": "mug", "quantity": 2, "unit_price_cents": 1, "gift_wrap": true}"#;
        let error = serde_json::from_str::<OrderLine>(extra).unwrap_err();
        assert!(error.to_string().contains("unknown field `gift_wrap`"), "{error}");
    }

    /// The handler builds its answer inside `insert_with`: when that fails, no order
    /// exists, so the freed idempotency key cannot lead a retry to a second order.
    #[test]
    fn an_order_whose_answer_fails_is_not_stored() {
        let store = OrderStore::default();
        let new = NewOrder { customer_id: "c-1".into(), lines: vec![line(1, 1)] };
        let failed = store.insert_with(new.clone(), 1, |_| Err::<(), _>("no body"));
        assert_eq!(failed.unwrap_err(), "no body");
        assert!(store.list(None).is_empty());

        let (order, body) = store
            .insert_with(new, 1, |order| Ok::<_, ()>(order.id.to_string()))
            .unwrap();
        assert_eq!(body, order.id.to_string());
        assert_eq!(
            store.get(order.id).unwrap().seq,
            1,
            "the failed try took no seq"
        );
    }

    #[test]
    fn an_empty_order_is_invalid() {
        let order = NewOrder { customer_id: "c-1".into(), lines: vec![] };
        assert_eq!(order.validate().unwrap_err()[0].pointer, "/lines");
    }

    #[test]
    fn totals_refuse_to_overflow() {
        let ok = NewOrder {
            customer_id: "c".into(),
            lines: vec![line(2, 1250), line(1, 399)],
        };
        assert_eq!(ok.total_cents(), Some(2899));
        let huge = NewOrder {
            customer_id: "c".into(),
            lines: vec![line(1000, u64::MAX / 10)],
        };
        assert_eq!(huge.total_cents(), None);
    }

    #[test]
    fn ids_are_1_to_64_visible_ascii_characters() {
        let order = |customer: &str| NewOrder {
            customer_id: customer.into(),
            lines: vec![line(1, 1)],
        };
        assert_eq!(order(&"c".repeat(MAX_ID_LEN)).validate(), Ok(()));
        // Why not "not blank": Rust's trim keeps U+001C, which Python's `\s` calls a space.
        assert!(!'\x1c'.is_whitespace());
        for bad in ["", " ", "c 42", "kund-ü", &"c".repeat(MAX_ID_LEN + 1)] {
            let errors = order(bad).validate().unwrap_err();
            assert_eq!(errors[0].pointer, "/customer_id", "{bad:?}");
        }
    }

    #[test]
    fn a_price_beyond_the_bound_is_refused_and_no_valid_total_loses_a_cent_in_javascript()
     {
        let dear = NewOrder {
            customer_id: "c".into(),
            lines: vec![line(1, MAX_UNIT_PRICE_CENTS + 1)],
        };
        let errors = dear.validate().unwrap_err();
        assert_eq!(errors[0].pointer, "/lines/0/unit_price_cents");
        let most = NewOrder {
            customer_id: "c".into(),
            lines: vec![line(MAX_QUANTITY, MAX_UNIT_PRICE_CENTS); MAX_LINES],
        };
        assert_eq!(most.validate(), Ok(()));
        let total = most.total_cents().unwrap();
        assert!(total < 1 << 53, "{total} is beyond 2^53");
    }

    #[test]
    fn listing_keeps_creation_order_and_filters_by_customer() {
        let store = OrderStore::default();
        let a = store.insert(
            NewOrder { customer_id: "c-1".into(), lines: vec![line(1, 1)] },
            1,
        );
        let b = store.insert(
            NewOrder { customer_id: "c-2".into(), lines: vec![line(1, 1)] },
            1,
        );
        let c = store.insert(
            NewOrder { customer_id: "c-1".into(), lines: vec![line(1, 1)] },
            1,
        );
        let ids = |orders: Vec<Order>| {
            orders.into_iter().map(|o| o.id).collect::<Vec<_>>()
        };
        assert_eq!(ids(store.list(None)), [a.id, b.id, c.id]);
        assert_eq!(ids(store.list(Some("c-1"))), [a.id, c.id]);
        assert_eq!(store.get(b.id), Some(b));
    }
}
