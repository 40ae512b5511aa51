//! Composition: one answer built from several services, within one deadline.
//!
//! `GET /checkout/{order_id}` needs the order (orders, HTTP) and its payment (payments, gRPC).
//! The two calls do not depend on each other, so they run concurrently, and both are cut off at
//! the same instant: the view costs the slower of the two, never their sum, and never more than
//! the deadline. A backend that fails or is late leaves its part empty and named in `missing`;
//! the client gets what there is, and can tell a payment that does not exist (`payment: null`,
//! nothing missing) from one the gateway could not fetch (`"payment"` in `missing`).

use serde::Serialize;
use tokio::time::Instant;
use tracing::warn;

use crate::Gateway;
use crate::backends::{BackendError, PaymentView};
use http_json::versions::v2::OrderV2;

/// A part of the view the gateway could not fetch, and why.
#[derive(
    Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct Missing {
    /// `order` or `payment`: the field of the view that is empty for this reason.
    pub part: String,
    /// The backend error, as text: for the client to show or log, not to parse.
    pub reason: String,
}

/// The composed checkout view, of an order of type `O` (the orders service's v2 order here; the
/// whole shop's services answer with their own).
#[derive(
    Clone, Debug, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct CheckoutView<O = OrderV2> {
    /// The order asked for, present even when the order itself could not be fetched.
    pub order_id: String,
    /// The order; `None` only when it is named in `missing`.
    pub order: Option<O>,
    /// The order's payment; `None` with nothing missing: the order has none.
    pub payment: Option<PaymentView>,
    /// Empty when the view is complete.
    pub missing: Vec<Missing>,
}

// ANCHOR: checkout
/// Asks orders and payments at once, both cut off at one deadline. Only "no
/// such order" fails the whole view; any other failure leaves a part missing.
pub async fn checkout(
    gateway: &Gateway,
    order_id: &str,
    caller: &str,
) -> Result<CheckoutView, BackendError> {
    let deadline = Instant::now() + gateway.config.compose_deadline;
    let ids = vec![order_id.to_owned()];
    let (order, payments) = tokio::join!(
        gateway.orders.get(order_id, caller, deadline),
        gateway.payments.for_orders(ids, caller, deadline),
    );
    assemble(order_id, order, payments)
}

/// Puts the view together from the two answers, whatever the order's type.
pub fn assemble<O>(
    order_id: &str,
    order: Result<O, BackendError>,
    payments: Result<Vec<PaymentView>, BackendError>,
) -> Result<CheckoutView<O>, BackendError> {
    let mut missing = Vec::new();
    let order = match order {
        Ok(order) => Some(order),
        Err(error) if error.is_not_found() => return Err(error),
        Err(error) => {
            missing
                .push(Missing { part: "order".into(), reason: error.to_string() });
            None
        }
    };
    let payment = match payments {
        Ok(payments) => payments.into_iter().next(),
        Err(error) => {
            missing
                .push(Missing { part: "payment".into(), reason: error.to_string() });
            None
        }
    };
    for gap in &missing {
        warn!(
            order_id,
            "partial checkout view: {} missing: {}", gap.part, gap.reason
        );
    }
    Ok(CheckoutView { order_id: order_id.to_owned(), order, payment, missing })
}
// ANCHOR_END: checkout
