//! The payments domain: validation, authorizations (idempotent per order), captures, settlement,
//! and their errors.
//!
//! Domain code speaks [`PaymentError`], not gRPC. The mapping to status codes lives in one `From`
//! impl, so every call reports the same failure with the same code, and a reader can see the
//! whole contract in one place. Logs and messages name codes the way gRPC does
//! (`FAILED_PRECONDITION`), with [`code_name`], never with Rust's `Debug` (`FailedPrecondition`).
//!
//! Authorizing is idempotent per order, as creating an order is per `Idempotency-Key` in the
//! HTTP chapter: the order id is the key, and the rest of the request its fingerprint. The same
//! request again returns the first payment; a different request for the same order is refused.
//! Production keeps this in the database, written in the same transaction as the payment.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tonic::{Code, Status};
use uuid::Uuid;

use crate::proto::v2::{
    AuthorizeRequest, CaptureRequest, Payment, PaymentStatus, WatchPaymentRequest,
};

/// The only currency the shop takes.
pub const CURRENCY: &str = "EUR";
/// A customer the v2 risk check refuses. Old (v1) clients never send a customer, so never hit it.
pub const RISKY_CUSTOMER: &str = "c-risky";

// ANCHOR: PaymentError
/// Why a payment operation failed, in domain terms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    /// The request is wrong: fix it, do not retry it.
    #[error("{field} {problem}")]
    Invalid {
        /// The field at fault, as the schema names it.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// The order was paid for on other terms: a second payment, not a retry.
    #[error("order {order_id} already has payment {payment_id}, for other terms")]
    AlreadyAuthorized {
        /// The order the caller meant to pay for.
        order_id: String,
        /// The payment it already has.
        payment_id: String,
    },
    /// The same authorization is running now: retrying shortly gets its result.
    #[error("order {order_id} is being authorized by an earlier call; retry")]
    InProgress {
        /// The order being authorized.
        order_id: String,
    },
    /// The card network said no: an answer, not a failure.
    #[error("declined: {0}")]
    Declined(String),
    /// Refused before asking the card network, which could not answer in time.
    #[error(
        "the card network needs {} ms, the caller's deadline leaves {} ms; \
         no hold placed",
        needed.as_millis(), left.as_millis()
    )]
    NoTime {
        /// How long the card network takes.
        needed: Duration,
        /// What the caller's deadline leaves, less the margin for the answer.
        left: Duration,
    },
    /// No payment has this id.
    #[error("no payment {0}")]
    UnknownPayment(String),
    /// Only an authorized payment can be captured.
    #[error("payment {payment_id} is {}, not authorized", status.as_str_name())]
    NotCapturable {
        /// The payment the caller tried to capture.
        payment_id: String,
        /// Where it is instead.
        status: PaymentStatus,
    },
    /// More than was authorized: the customer agreed to less.
    #[error("capture of {requested} cents exceeds the authorized {authorized}")]
    OverCapture {
        /// What the capture asked for.
        requested: u64,
        /// What the authorization allows.
        authorized: u64,
    },
}

impl From<PaymentError> for Status {
    fn from(error: PaymentError) -> Self {
        use PaymentError::*;
        let code = match &error {
            // Wrong whatever the state: fix the request, never retry it as is.
            Invalid { .. } => Code::InvalidArgument,
            // The order has a payment already, made from a different request.
            AlreadyAuthorized { .. } => Code::AlreadyExists,
            // A concurrent call for the same order holds it: retry the same call.
            InProgress { .. } => Code::Aborted,
            // Well-formed, but the world said no: retrying unchanged will not help.
            Declined(_) | NotCapturable { .. } => Code::FailedPrecondition,
            // Past what this payment allows (it depends on the payment, so it is
            // not INVALID_ARGUMENT).
            OverCapture { .. } => Code::OutOfRange,
            UnknownPayment(_) => Code::NotFound,
            // Too little time left to finish: refused before anything started.
            NoTime { .. } => Code::DeadlineExceeded,
        };
        Status::new(code, error.to_string())
    }
}
// ANCHOR_END: PaymentError

// ANCHOR: code_name
/// A status code as gRPC names it on every platform (`FAILED_PRECONDITION`).
/// `Debug` prints the Rust variant (`FailedPrecondition`), which no other gRPC
/// tool, log search or client in another language knows.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
// ANCHOR_END: code_name

fn required(field: &'static str, value: &str) -> Result<(), PaymentError> {
    if value.trim().is_empty() {
        return Err(PaymentError::Invalid { field, problem: "is required".into() });
    }
    Ok(())
}

fn positive(field: &'static str, value: u64) -> Result<(), PaymentError> {
    if value == 0 {
        let problem = "must be greater than 0".into();
        return Err(PaymentError::Invalid { field, problem });
    }
    Ok(())
}

// ANCHOR: validate
/// The checks that need nothing but the request: run them first, before any
/// slow or costly work. `customer_id` is optional: v1 clients never send it.
pub fn validate_authorize(request: &AuthorizeRequest) -> Result<(), PaymentError> {
    required("order_id", &request.order_id)?;
    positive("amount_cents", request.amount_cents)?;
    required("currency", &request.currency)?;
    if request.currency != CURRENCY {
        return Err(PaymentError::Invalid {
            field: "currency",
            problem: format!("must be {CURRENCY}, got {:?}", request.currency),
        });
    }
    required("card_token", &request.card_token)
}

/// A watch needs the payment to follow.
pub fn validate_watch(request: &WatchPaymentRequest) -> Result<(), PaymentError> {
    required("payment_id", &request.payment_id)
}

/// A capture needs the payment and a positive amount.
pub fn validate_capture(request: &CaptureRequest) -> Result<(), PaymentError> {
    required("payment_id", &request.payment_id)?;
    positive("amount_cents", request.amount_cents)
}
// ANCHOR_END: validate

/// The v2 risk check. An empty `customer_id` means an old client: skipped, not failed.
pub fn risk_check(request: &AuthorizeRequest) -> Result<(), PaymentError> {
    if request.customer_id == RISKY_CUSTOMER {
        return Err(PaymentError::Declined("risk check failed".into()));
    }
    Ok(())
}

/// A payment's state as watchers see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Position in the payment's history: 1 authorized, 2 captured, 3 settled.
    pub sequence: u32,
    /// Where the payment is now.
    pub status: PaymentStatus,
}

/// Everything in an authorization request but the order id: two requests for
/// one order are "the same request" when these are equal.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Terms {
    amount_cents: u64,
    currency: String,
    card_token: String,
    customer_id: String,
}

impl Terms {
    fn of(request: &AuthorizeRequest) -> Terms {
        Terms {
            amount_cents: request.amount_cents,
            currency: request.currency.clone(),
            card_token: request.card_token.clone(),
            customer_id: request.customer_id.clone(),
        }
    }
}

#[derive(Debug)]
enum OrderSlot {
    /// A call is authorizing this order right now.
    InFlight,
    Authorized {
        terms: Terms,
        payment_id: String,
    },
}

#[derive(Debug)]
struct Entry {
    payment: Payment,
    /// Every change of the payment is published here; watchers only subscribe.
    changes: watch::Sender<Snapshot>,
}

impl Entry {
    fn set(&mut self, status: PaymentStatus) {
        self.payment.set_status(status);
        self.changes.send_modify(|now| {
            now.sequence += 1;
            now.status = status;
        });
    }
}

/// Every payment, in memory. A real service keeps this in a database.
#[derive(Debug, Default)]
pub struct Ledger {
    inner: Mutex<LedgerInner>,
}

#[derive(Debug, Default)]
struct LedgerInner {
    payments: HashMap<String, Entry>,
    orders: HashMap<String, OrderSlot>,
}

/// What the ledger says about an authorization request for an order.
#[derive(Debug)]
pub enum Begin<'a> {
    /// A new order: authorize it, then [`Reservation::complete`].
    Fresh(Reservation<'a>),
    /// The same request was authorized before: this is its payment.
    Replay(Payment),
}

impl Ledger {
    fn lock(&self) -> std::sync::MutexGuard<'_, LedgerInner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    // ANCHOR: begin
    /// Looks the order up and, if it is new, reserves it for this request in
    /// the same critical section, so two calls for one order cannot both run.
    pub fn begin(
        &self,
        request: &AuthorizeRequest,
    ) -> Result<Begin<'_>, PaymentError> {
        let terms = Terms::of(request);
        let order_id = request.order_id.clone();
        let mut inner = self.lock();
        match inner.orders.get(&order_id) {
            None => {
                inner.orders.insert(order_id.clone(), OrderSlot::InFlight);
                Ok(Begin::Fresh(Reservation { ledger: self, order_id, terms }))
            }
            Some(OrderSlot::Authorized { terms: seen, payment_id })
                if *seen == terms =>
            {
                let entry = inner.payments.get(payment_id);
                let payment = entry.map(|e| e.payment.clone());
                payment
                    .map(Begin::Replay)
                    .ok_or_else(|| PaymentError::UnknownPayment(payment_id.clone()))
            }
            Some(OrderSlot::Authorized { payment_id, .. }) => {
                let payment_id = payment_id.clone();
                Err(PaymentError::AlreadyAuthorized { order_id, payment_id })
            }
            Some(OrderSlot::InFlight) => Err(PaymentError::InProgress { order_id }),
        }
    }
    // ANCHOR_END: begin

    /// The payment as it is now.
    pub fn get(&self, payment_id: &str) -> Result<Payment, PaymentError> {
        self.lock()
            .payments
            .get(payment_id)
            .map(|e| e.payment.clone())
            .ok_or_else(|| PaymentError::UnknownPayment(payment_id.to_owned()))
    }

    /// The payment of an order, if one was authorized (an order still in flight has none yet).
    pub fn for_order(&self, order_id: &str) -> Option<Payment> {
        let inner = self.lock();
        match inner.orders.get(order_id)? {
            OrderSlot::Authorized { payment_id, .. } => {
                inner.payments.get(payment_id).map(|e| e.payment.clone())
            }
            OrderSlot::InFlight => None,
        }
    }

    /// Subscribes to a payment's changes. Watching reads; it never changes the payment.
    pub fn watch(
        &self,
        payment_id: &str,
    ) -> Result<watch::Receiver<Snapshot>, PaymentError> {
        self.lock()
            .payments
            .get(payment_id)
            .map(|e| e.changes.subscribe())
            .ok_or_else(|| PaymentError::UnknownPayment(payment_id.to_owned()))
    }

    /// Captures (part of) an authorized payment.
    pub fn capture(
        &self,
        payment_id: &str,
        amount_cents: u64,
    ) -> Result<u64, PaymentError> {
        let mut inner = self.lock();
        let entry = inner
            .payments
            .get_mut(payment_id)
            .ok_or_else(|| PaymentError::UnknownPayment(payment_id.to_owned()))?;
        let status = entry.payment.status();
        if status != PaymentStatus::Authorized {
            return Err(PaymentError::NotCapturable {
                payment_id: payment_id.to_owned(),
                status,
            });
        }
        if amount_cents > entry.payment.amount_cents {
            return Err(PaymentError::OverCapture {
                requested: amount_cents,
                authorized: entry.payment.amount_cents,
            });
        }
        entry.set(PaymentStatus::Captured);
        Ok(amount_cents)
    }

    /// Settles a captured payment (the acquirer paid it out). Returns whether it changed:
    /// settling twice, or a payment not captured, changes nothing.
    pub fn settle(&self, payment_id: &str) -> Result<bool, PaymentError> {
        let mut inner = self.lock();
        let entry = inner
            .payments
            .get_mut(payment_id)
            .ok_or_else(|| PaymentError::UnknownPayment(payment_id.to_owned()))?;
        if entry.payment.status() != PaymentStatus::Captured {
            return Ok(false);
        }
        entry.set(PaymentStatus::Settled);
        Ok(true)
    }

    /// How many payments exist: what the examples check against the holds placed.
    pub fn len(&self) -> usize {
        self.lock().payments.len()
    }

    /// Whether no payment exists yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The right to authorize an order first. Dropping it without
/// [`complete`](Self::complete) (the card was declined, or tonic dropped the handler at the
/// caller's deadline) frees the order, so the caller's retry runs again.
#[derive(Debug)]
pub struct Reservation<'a> {
    ledger: &'a Ledger,
    order_id: String,
    terms: Terms,
}

impl Reservation<'_> {
    /// Records the authorized payment under the order and returns it.
    pub fn complete(self, authorization_code: String) -> Payment {
        let id = Uuid::new_v4().simple().to_string();
        let payment = Payment {
            payment_id: format!("pay_{}", &id[..12]),
            order_id: self.order_id.clone(),
            status: PaymentStatus::Authorized as i32,
            amount_cents: self.terms.amount_cents,
            authorization_code,
        };
        let first = Snapshot { sequence: 1, status: PaymentStatus::Authorized };
        let entry =
            Entry { payment: payment.clone(), changes: watch::channel(first).0 };
        let mut inner = self.ledger.lock();
        inner.payments.insert(payment.payment_id.clone(), entry);
        inner.orders.insert(
            self.order_id.clone(),
            OrderSlot::Authorized {
                terms: self.terms.clone(),
                payment_id: payment.payment_id.clone(),
            },
        );
        drop(inner);
        payment
        // `self` drops here and finds the order authorized: nothing to free.
    }
}

impl Drop for Reservation<'_> {
    /// Frees the order unless [`Reservation::complete`] recorded a payment for it.
    fn drop(&mut self) {
        let mut inner = self.ledger.lock();
        if matches!(inner.orders.get(&self.order_id), Some(OrderSlot::InFlight)) {
            inner.orders.remove(&self.order_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(order_id: &str) -> AuthorizeRequest {
        AuthorizeRequest {
            order_id: order_id.into(),
            amount_cents: 2899,
            currency: "EUR".into(),
            card_token: "tok_visa".into(),
            customer_id: String::new(),
        }
    }

    fn authorize(ledger: &Ledger, request: &AuthorizeRequest) -> Payment {
        match ledger.begin(request).unwrap() {
            Begin::Fresh(reservation) => reservation.complete("A1B2C3".into()),
            Begin::Replay(payment) => {
                panic!("expected a new order, got {payment:?}")
            }
        }
    }

    /// The field a refusal names, with its code.
    fn refused(result: Result<(), PaymentError>) -> (Code, String) {
        let status = Status::from(result.unwrap_err());
        let field = status.message().split(' ').next().unwrap().to_owned();
        (status.code(), field)
    }

    #[test]
    fn every_required_authorize_field_is_invalid_argument_naming_it() {
        let cases = [
            ("order_id", AuthorizeRequest { order_id: " ".into(), ..request("o") }),
            ("amount_cents", AuthorizeRequest { amount_cents: 0, ..request("o") }),
            (
                "currency",
                AuthorizeRequest { currency: String::new(), ..request("o") },
            ),
            (
                "currency",
                AuthorizeRequest { currency: "USD".into(), ..request("o") },
            ),
            (
                "card_token",
                AuthorizeRequest { card_token: "".into(), ..request("o") },
            ),
        ];
        for (field, bad) in cases {
            let got = refused(validate_authorize(&bad));
            assert_eq!(got, (Code::InvalidArgument, field.to_owned()), "{bad:?}");
        }
        assert!(
            validate_authorize(&request("o")).is_ok(),
            "customer_id is optional"
        );
    }

    #[test]
    fn every_required_watch_and_capture_field_is_invalid_argument_naming_it() {
        let watch = WatchPaymentRequest { payment_id: String::new() };
        assert_eq!(
            refused(validate_watch(&watch)),
            (Code::InvalidArgument, "payment_id".into())
        );
        let capture = CaptureRequest { payment_id: "pay_1".into(), amount_cents: 1 };
        assert!(validate_capture(&capture).is_ok());
        let no_id = CaptureRequest { payment_id: " ".into(), ..capture.clone() };
        assert_eq!(
            refused(validate_capture(&no_id)),
            (Code::InvalidArgument, "payment_id".into())
        );
        let zero = CaptureRequest { amount_cents: 0, ..capture };
        assert_eq!(
            refused(validate_capture(&zero)),
            (Code::InvalidArgument, "amount_cents".into())
        );
    }

    #[test]
    fn each_domain_error_has_its_status_code() {
        let code = |e: PaymentError| Status::from(e).code();
        let declined = PaymentError::Declined("x".into());
        assert_eq!(code(declined), Code::FailedPrecondition);
        let risky =
            AuthorizeRequest { customer_id: RISKY_CUSTOMER.into(), ..request("o") };
        assert_eq!(code(risk_check(&risky).unwrap_err()), Code::FailedPrecondition);
        let no_time = PaymentError::NoTime {
            needed: Duration::from_millis(800),
            left: Duration::from_millis(270),
        };
        assert_eq!(
            Status::from(no_time.clone()).message(),
            "the card network needs 800 ms, the caller's deadline leaves 270 ms; \
             no hold placed"
        );
        assert_eq!(code(no_time), Code::DeadlineExceeded);
        let ledger = Ledger::default();
        assert_eq!(code(ledger.get("pay_nope").unwrap_err()), Code::NotFound);
        let id = authorize(&ledger, &request("o-1")).payment_id;
        assert_eq!(code(ledger.capture(&id, 5000).unwrap_err()), Code::OutOfRange);
        ledger.capture(&id, 2899).unwrap();
        let twice = ledger.capture(&id, 1).unwrap_err();
        assert_eq!(
            twice.to_string(),
            format!("payment {id} is PAYMENT_STATUS_CAPTURED, not authorized")
        );
        assert_eq!(code(twice), Code::FailedPrecondition);
    }

    #[test]
    fn the_same_request_again_returns_the_first_payment() {
        let ledger = Ledger::default();
        let first = authorize(&ledger, &request("o-1"));
        match ledger.begin(&request("o-1")).unwrap() {
            Begin::Replay(again) => assert_eq!(again, first),
            Begin::Fresh(_) => panic!("a second authorization for o-1"),
        }
        assert_eq!(ledger.len(), 1);
    }

    #[test]
    fn other_terms_for_an_authorized_order_are_already_exists() {
        let ledger = Ledger::default();
        let first = authorize(&ledger, &request("o-1"));
        let more = AuthorizeRequest { amount_cents: 5000, ..request("o-1") };
        let refused = ledger.begin(&more).unwrap_err();
        assert_eq!(
            refused,
            PaymentError::AlreadyAuthorized {
                order_id: "o-1".into(),
                payment_id: first.payment_id
            }
        );
        assert_eq!(Status::from(refused).code(), Code::AlreadyExists);
    }

    #[test]
    fn a_call_for_an_order_in_flight_is_aborted_and_a_dropped_one_frees_it() {
        let ledger = Ledger::default();
        let Begin::Fresh(first) = ledger.begin(&request("o-1")).unwrap() else {
            panic!("new order")
        };
        let busy = ledger.begin(&request("o-1")).unwrap_err();
        assert_eq!(Status::from(busy).code(), Code::Aborted);
        drop(first); // declined, or dropped by tonic at the deadline
        assert!(matches!(ledger.begin(&request("o-1")), Ok(Begin::Fresh(_))));
        assert!(ledger.is_empty());
    }

    #[test]
    fn changes_are_published_and_settlement_follows_capture_only() {
        let ledger = Ledger::default();
        let id = authorize(&ledger, &request("o-1")).payment_id;
        let watcher = ledger.watch(&id).unwrap();
        let seen = || *watcher.borrow();
        assert_eq!(
            seen(),
            Snapshot { sequence: 1, status: PaymentStatus::Authorized }
        );
        assert_eq!(ledger.settle(&id), Ok(false), "not captured yet");
        ledger.capture(&id, 100).unwrap();
        assert_eq!(
            seen(),
            Snapshot { sequence: 2, status: PaymentStatus::Captured }
        );
        assert_eq!(ledger.settle(&id), Ok(true));
        assert_eq!(ledger.settle(&id), Ok(false), "settled once");
        assert_eq!(seen(), Snapshot { sequence: 3, status: PaymentStatus::Settled });
        assert_eq!(ledger.get(&id).unwrap().status(), PaymentStatus::Settled);
    }

    #[test]
    fn code_names_are_grpcs_names() {
        // gRPC's names are the Rust variants in SCREAMING_SNAKE_CASE; checked for all 17.
        for number in 0..=16 {
            let code = Code::from_i32(number);
            let mut screaming = String::new();
            for c in format!("{code:?}").chars() {
                if c.is_uppercase() && !screaming.is_empty() {
                    screaming.push('_');
                }
                screaming.push(c.to_ascii_uppercase());
            }
            assert_eq!(code_name(code), screaming);
        }
        assert_eq!(code_name(Code::FailedPrecondition), "FAILED_PRECONDITION");
    }
}
