//! The payments domain: authorizations, captures, settlement, and their errors.
//!
//! Domain code speaks [`PaymentError`], not gRPC. The mapping to status codes lives in one `From`
//! impl at the bottom of this file, so every call reports the same failure with the same code, and
//! a reader can see the whole contract in one place.

use std::collections::HashMap;
use std::sync::Mutex;

use tonic::{Code, Status};
use uuid::Uuid;

use crate::proto::v2::{AuthorizeRequest, Payment, PaymentStatus};

/// The only currency the shop takes.
pub const CURRENCY: &str = "EUR";
/// A card token the simulated card network always declines (to break things on purpose).
pub const DECLINED_CARD: &str = "tok_declined";
/// A customer the v2 risk check refuses. Old (v1) clients never send a customer, so never hit it.
pub const RISKY_CUSTOMER: &str = "c-risky";

// ANCHOR: PaymentError
/// Why a payment operation failed, in domain terms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("order {order_id} already has payment {payment_id}")]
    AlreadyAuthorized { order_id: String, payment_id: String },
    #[error("declined: {0}")]
    Declined(String),
    #[error("no payment {0}")]
    UnknownPayment(String),
    #[error("payment {payment_id} is {status:?}, not authorized")]
    NotCapturable { payment_id: String, status: PaymentStatus },
    #[error("capture of {requested} cents exceeds the authorized {authorized}")]
    OverCapture { requested: u64, authorized: u64 },
}

impl From<PaymentError> for Status {
    fn from(error: PaymentError) -> Self {
        let code = match &error {
            // The caller sent something that can never succeed: fix the request, do not retry.
            PaymentError::Invalid(_) | PaymentError::OverCapture { .. } => {
                Code::InvalidArgument
            }
            // Retrying the same authorization is harmless and answered with this, not a second charge.
            PaymentError::AlreadyAuthorized { .. } => Code::AlreadyExists,
            // The request was fine, the world said no: retrying unchanged will not help.
            PaymentError::Declined(_) | PaymentError::NotCapturable { .. } => {
                Code::FailedPrecondition
            }
            PaymentError::UnknownPayment(_) => Code::NotFound,
        };
        Status::new(code, error.to_string())
    }
}
// ANCHOR_END: PaymentError

/// Every payment, in memory. A real service keeps this in a database and talks to a card network.
#[derive(Debug, Default)]
pub struct Ledger {
    inner: Mutex<LedgerInner>,
}

#[derive(Debug, Default)]
struct LedgerInner {
    payments: HashMap<String, Payment>,
    by_order: HashMap<String, String>,
}

// ANCHOR: validate
/// The checks that need nothing but the request: run them first, before any slow or costly work.
pub fn validate(request: &AuthorizeRequest) -> Result<(), PaymentError> {
    if request.order_id.trim().is_empty() {
        return Err(PaymentError::Invalid("order_id is required".into()));
    }
    if request.amount_cents == 0 {
        return Err(PaymentError::Invalid("amount_cents must be positive".into()));
    }
    if request.currency != CURRENCY {
        return Err(PaymentError::Invalid(format!(
            "currency must be {CURRENCY}, got {:?}",
            request.currency
        )));
    }
    Ok(())
}
// ANCHOR_END: validate

impl Ledger {
    fn lock(&self) -> std::sync::MutexGuard<'_, LedgerInner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    // ANCHOR: authorize
    /// Validates and authorizes a payment. One authorization per order: a second attempt for the
    /// same order is `AlreadyAuthorized`, naming the first payment.
    pub fn authorize(
        &self,
        request: &AuthorizeRequest,
    ) -> Result<Payment, PaymentError> {
        validate(request)?;
        if request.card_token == DECLINED_CARD {
            return Err(PaymentError::Declined("insufficient funds".into()));
        }
        // New in v2: empty means an old client; the check is skipped rather than failed.
        if request.customer_id == RISKY_CUSTOMER {
            return Err(PaymentError::Declined("risk check failed".into()));
        }
        let mut inner = self.lock();
        if let Some(payment_id) = inner.by_order.get(&request.order_id) {
            return Err(PaymentError::AlreadyAuthorized {
                order_id: request.order_id.clone(),
                payment_id: payment_id.clone(),
            });
        }
        let id = Uuid::new_v4().simple().to_string();
        let payment = Payment {
            payment_id: format!("pay_{}", &id[..12]),
            order_id: request.order_id.clone(),
            status: PaymentStatus::Authorized as i32,
            amount_cents: request.amount_cents,
            authorization_code: id[12..18].to_uppercase(),
        };
        inner.by_order.insert(payment.order_id.clone(), payment.payment_id.clone());
        inner.payments.insert(payment.payment_id.clone(), payment.clone());
        Ok(payment)
    }
    // ANCHOR_END: authorize

    pub fn get(&self, payment_id: &str) -> Result<Payment, PaymentError> {
        self.lock()
            .payments
            .get(payment_id)
            .cloned()
            .ok_or_else(|| PaymentError::UnknownPayment(payment_id.to_owned()))
    }

    /// Captures (part of) an authorized payment.
    pub fn capture(
        &self,
        payment_id: &str,
        amount_cents: u64,
    ) -> Result<u64, PaymentError> {
        let mut inner = self.lock();
        let payment = inner
            .payments
            .get_mut(payment_id)
            .ok_or_else(|| PaymentError::UnknownPayment(payment_id.to_owned()))?;
        let status = payment.status();
        if status != PaymentStatus::Authorized {
            return Err(PaymentError::NotCapturable {
                payment_id: payment_id.to_owned(),
                status,
            });
        }
        if amount_cents == 0 || amount_cents > payment.amount_cents {
            return Err(PaymentError::OverCapture {
                requested: amount_cents,
                authorized: payment.amount_cents,
            });
        }
        payment.set_status(PaymentStatus::Captured);
        Ok(amount_cents)
    }

    /// Moves a payment one step towards settlement (authorized -> captured -> settled) and returns
    /// its new status; a settled payment stays settled.
    pub fn advance(&self, payment_id: &str) -> Result<PaymentStatus, PaymentError> {
        let mut inner = self.lock();
        let payment = inner
            .payments
            .get_mut(payment_id)
            .ok_or_else(|| PaymentError::UnknownPayment(payment_id.to_owned()))?;
        let next = match payment.status() {
            PaymentStatus::Authorized => PaymentStatus::Captured,
            _ => PaymentStatus::Settled,
        };
        payment.set_status(next);
        Ok(next)
    }

    pub fn len(&self) -> usize {
        self.lock().payments.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

    #[test]
    fn each_domain_error_has_its_status_code() {
        let ledger = Ledger::default();
        let code = |r: &AuthorizeRequest| {
            Status::from(ledger.authorize(r).unwrap_err()).code()
        };
        assert_eq!(
            code(&AuthorizeRequest { amount_cents: 0, ..request("o-1") }),
            Code::InvalidArgument
        );
        assert_eq!(
            code(&AuthorizeRequest { currency: "USD".into(), ..request("o-1") }),
            Code::InvalidArgument
        );
        assert_eq!(
            code(&AuthorizeRequest { order_id: " ".into(), ..request("o-1") }),
            Code::InvalidArgument
        );
        assert_eq!(
            code(&AuthorizeRequest {
                card_token: DECLINED_CARD.into(),
                ..request("o-1")
            }),
            Code::FailedPrecondition
        );
        assert_eq!(
            code(&AuthorizeRequest {
                customer_id: RISKY_CUSTOMER.into(),
                ..request("o-1")
            }),
            Code::FailedPrecondition
        );
        let first = ledger.authorize(&request("o-1")).unwrap();
        let again = ledger.authorize(&request("o-1")).unwrap_err();
        assert_eq!(
            again,
            PaymentError::AlreadyAuthorized {
                order_id: "o-1".into(),
                payment_id: first.payment_id
            }
        );
        assert_eq!(Status::from(again).code(), Code::AlreadyExists);
        assert_eq!(
            Status::from(ledger.get("pay_nope").unwrap_err()).code(),
            Code::NotFound
        );
        assert_eq!(ledger.len(), 1, "failed attempts store nothing");
    }

    #[test]
    fn captures_only_what_was_authorized_and_only_once() {
        let ledger = Ledger::default();
        let payment = ledger.authorize(&request("o-1")).unwrap();
        assert!(matches!(
            ledger.capture(&payment.payment_id, 5000),
            Err(PaymentError::OverCapture { .. })
        ));
        assert_eq!(ledger.capture(&payment.payment_id, 2899), Ok(2899));
        assert!(matches!(
            ledger.capture(&payment.payment_id, 1),
            Err(PaymentError::NotCapturable { .. })
        ));
    }

    #[test]
    fn settlement_advances_and_then_stays_settled() {
        let ledger = Ledger::default();
        let id = ledger.authorize(&request("o-1")).unwrap().payment_id;
        let steps: Vec<_> = (0..3).map(|_| ledger.advance(&id).unwrap()).collect();
        assert_eq!(
            steps,
            [
                PaymentStatus::Captured,
                PaymentStatus::Settled,
                PaymentStatus::Settled
            ]
        );
    }
}
