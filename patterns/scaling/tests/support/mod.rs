//! What the scaling tests share: an authorization for an order, which every replica accepts.

use grpc::proto::v2::AuthorizeRequest;

/// 28.99 EUR for `order_id` on a card that authorizes.
pub fn order(order_id: &str) -> AuthorizeRequest {
    AuthorizeRequest {
        order_id: order_id.into(),
        amount_cents: 2899,
        currency: "EUR".into(),
        card_token: "tok_visa".into(),
        customer_id: "c-42".into(),
    }
}
