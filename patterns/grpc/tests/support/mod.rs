//! What the gRPC test files share: a valid authorization request for an order.

use grpc::proto::v2::AuthorizeRequest;

/// A request that passes validation: 28.99 EUR on a card that authorizes.
pub fn order(order_id: &str) -> AuthorizeRequest {
    AuthorizeRequest {
        order_id: order_id.into(),
        amount_cents: 2899,
        currency: "EUR".into(),
        card_token: "tok_visa".into(),
        customer_id: "c-42".into(),
    }
}
