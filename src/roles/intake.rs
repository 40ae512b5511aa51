//! What both ways of taking a checkout share: the request, the view of a checkout, and the
//! checks and answers at the intake (the saga service in one style, the orders service in the
//! other).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use http_json::problem::Problem;
use serde::{Deserialize, Serialize};
use shop_domain::{Line, OrderPlaced};

/// The header the gateway sets to the verified caller: the customer who pays.
pub const CALLER: &str = gateway::auth::CALLER_HEADER;
/// The header whose value becomes the order id (and so the saga's id).
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// What a client asks for; the customer is not in it: it is whoever the token names.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckoutRequest {
    /// What to buy: each line an object (`JsonBody` reads the request itself as one).
    #[serde(deserialize_with = "http_json::problem::objects")]
    pub lines: Vec<Line>,
    /// Where to send it: a country code the carrier knows (`NL`).
    pub ship_to: String,
}

/// Where a checkout stands, as `GET /checkouts/{id}` answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckoutView {
    /// The order (the idempotency key it was placed with).
    pub order_id: String,
    /// Who pays.
    pub customer_id: String,
    /// `running`, `compensating`, `confirmed`, `cancelled` or `stuck`.
    pub status: String,
    /// Why it was cancelled or is stuck.
    pub reason: Option<String>,
    /// Each step the saga took, as the log has it: `inventory.reserve: done (hold-...)`.
    pub steps: Vec<String>,
}

impl CheckoutView {
    /// Whether the checkout has ended, one way or the other.
    pub fn is_final(&self) -> bool {
        matches!(self.status.as_str(), "confirmed" | "cancelled" | "stuck")
    }
}

/// An `application/problem+json` answer.
pub fn problem(
    status: StatusCode,
    slug: &str,
    title: &str,
    detail: impl Into<String>,
) -> Response {
    Problem::new(status, slug, title, detail).into_response()
}

/// A valid order id: what an idempotency key may be.
pub fn valid_key(key: &str) -> bool {
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    (1..=64).contains(&key.len()) && key.chars().all(ok)
}

/// Checks a request and prices it, or says what is wrong with it.
pub fn order_of(
    order_id: &str,
    customer_id: &str,
    request: &CheckoutRequest,
) -> Result<OrderPlaced, String> {
    if request.lines.is_empty() || request.lines.len() > 20 {
        return Err("an order has 1 to 20 lines".to_owned());
    }
    let mut total: u64 = 0;
    for line in &request.lines {
        let Some(cents) = crate::shop::price(&line.sku) else {
            return Err(format!("unknown product {:?}", line.sku));
        };
        if !(1..=100).contains(&line.quantity) {
            return Err(format!("quantity of {:?} must be 1 to 100", line.sku));
        }
        total += cents * u64::from(line.quantity);
    }
    let country =
        |s: &str| s.len() == 2 && s.chars().all(|c| c.is_ascii_uppercase());
    if !country(&request.ship_to) {
        return Err("ship_to is a two-letter country code (NL)".to_owned());
    }
    Ok(OrderPlaced {
        order_id: order_id.to_owned(),
        customer_id: customer_id.to_owned(),
        lines: request.lines.clone(),
        total_cents: total,
        ship_to: request.ship_to.clone(),
    })
}

/// `202 Accepted`, with where to follow the checkout.
pub fn accepted(order_id: &str) -> Response {
    let location = format!("/checkouts/{order_id}");
    let body = serde_json::json!({ "order_id": order_id, "status_url": location });
    let headers = [(axum::http::header::LOCATION, location)];
    (StatusCode::ACCEPTED, headers, axum::Json(body)).into_response()
}

/// The order a request places: the verified caller pays, the idempotency key is the order id,
/// the lines are priced from the catalog. Otherwise the answer that says what is missing or
/// wrong (`401`, `400`, `422`).
pub fn checkout_of(
    headers: &axum::http::HeaderMap,
    request: &CheckoutRequest,
) -> Result<OrderPlaced, Box<Response>> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let Some(customer) = text(CALLER) else {
        let detail = "no verified caller: checkouts come through the gateway";
        let status = StatusCode::UNAUTHORIZED;
        return Err(Box::new(problem(
            status,
            "unauthorized",
            "Not authenticated",
            detail,
        )));
    };
    let Some(key) = text(IDEMPOTENCY_KEY).filter(|k| valid_key(k)) else {
        let detail = "send Idempotency-Key: 1 to 64 letters, digits, - or _ \
                      (it becomes the order id)";
        let (status, title) = (StatusCode::BAD_REQUEST, "Idempotency key required");
        return Err(Box::new(problem(status, "idempotency-key", title, detail)));
    };
    order_of(key, customer, request).map_err(|detail| {
        let status = StatusCode::UNPROCESSABLE_ENTITY;
        let title = "The order cannot be placed";
        Box::new(problem(status, "invalid-order", title, detail))
    })
}

/// `400` for an order id in a path that is not one; `None` for a valid one.
pub fn invalid_id(order_id: &str) -> Option<Response> {
    if valid_key(order_id) {
        return None;
    }
    let detail = "an order id is 1 to 64 letters, digits, - or _";
    Some(problem(StatusCode::BAD_REQUEST, "invalid-id", "Invalid order id", detail))
}

/// `404` for a checkout that does not exist (or is not the caller's).
pub fn not_found(order_id: &str) -> Response {
    let detail = format!("no checkout {order_id}");
    problem(StatusCode::NOT_FOUND, "not-found", "No such checkout", detail)
}

/// `409`: the idempotency key was used for another checkout.
pub fn key_reused() -> Response {
    let detail = "this idempotency key was used for another checkout";
    problem(StatusCode::CONFLICT, "key-reused", "Idempotency key reused", detail)
}

/// `503`: the service cannot answer now; `detail` says why and what to do.
pub fn try_again(detail: impl Into<String>) -> Response {
    problem(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Try again", detail)
}

/// Whether the caller the gateway verified is `customer`. A record of anyone else's is answered
/// like one that does not exist, so ids cannot be probed.
pub fn called_by(headers: &axum::http::HeaderMap, customer: &str) -> bool {
    headers.get(CALLER).and_then(|v| v.to_str().ok()) == Some(customer)
}

/// The checkout as the caller may see it: only the customer who placed it; anyone else gets the
/// same `404` as for a checkout that does not exist.
pub fn shown_to(headers: &axum::http::HeaderMap, view: CheckoutView) -> Response {
    if !called_by(headers, &view.customer_id) {
        return not_found(&view.order_id);
    }
    axum::Json(view).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(sku: &str, quantity: u32, ship_to: &str) -> CheckoutRequest {
        CheckoutRequest {
            lines: vec![Line { sku: sku.into(), quantity }],
            ship_to: ship_to.into(),
        }
    }

    #[test]
    fn an_order_is_priced_from_the_catalog_and_bad_ones_say_why() {
        let order = order_of("o-1", "c-ada", &request("mug", 2, "NL")).unwrap();
        assert_eq!(order.total_cents, 2_500);
        assert_eq!(order.customer_id, "c-ada");
        let unknown =
            order_of("o-1", "c-ada", &request("anvil", 1, "NL")).unwrap_err();
        assert!(unknown.contains("unknown product \"anvil\""), "{unknown}");
        assert!(order_of("o-1", "c-ada", &request("mug", 0, "NL")).is_err());
        assert!(order_of("o-1", "c-ada", &request("mug", 1, "nl")).is_err());
        let empty = CheckoutRequest { lines: vec![], ship_to: "NL".into() };
        assert!(order_of("o-1", "c-ada", &empty).is_err());
    }

    #[test]
    fn keys_are_order_ids_and_nothing_else() {
        assert!(valid_key("o-2026_12"));
        assert!(!valid_key(""));
        assert!(!valid_key("o/../x"));
        assert!(!valid_key(&"k".repeat(65)));
    }
}
