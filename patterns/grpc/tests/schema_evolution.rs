//! Schema evolution: v1 (the first release) and v2 (today) of the payments schema, side by side.
//!
//! v2 added one field to `AuthorizeRequest` (customer_id = 5) and one to `Payment`
//! (authorization_code = 5). Adding fields with new numbers is backward and forward compatible:
//! each side ignores what it does not know and defaults what it does not get.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

use grpc::proto::{v1, v2};
use prost::Message;

// ANCHOR: evolution_tests
#[test]
fn a_v1_reader_decodes_a_v2_message_and_skips_the_new_field() {
    let new = v2::Payment {
        payment_id: "pay_1".into(),
        order_id: "o-1".into(),
        status: v2::PaymentStatus::Authorized as i32,
        amount_cents: 2899,
        authorization_code: "A1B2C3".into(),
    };
    let old = v1::Payment::decode(new.encode_to_vec().as_slice())
        .expect("v1 reads v2 bytes");
    assert_eq!(
        old,
        v1::Payment {
            payment_id: "pay_1".into(),
            order_id: "o-1".into(),
            status: new.status,
            amount_cents: 2899
        }
    );
}

#[test]
fn a_v2_reader_decodes_a_v1_message_and_defaults_the_new_field() {
    let old = v1::AuthorizeRequest {
        order_id: "o-1".into(),
        amount_cents: 2899,
        currency: "EUR".into(),
        card_token: "tok_visa".into(),
    };
    let new = v2::AuthorizeRequest::decode(old.encode_to_vec().as_slice())
        .expect("v2 reads v1 bytes");
    assert_eq!(new.order_id, "o-1");
    assert_eq!(
        new.customer_id, "",
        "absent means empty: the service must treat empty as 'not sent'"
    );
}

#[test]
fn a_v1_middleman_that_decodes_and_reencodes_drops_the_new_field() {
    // prost keeps no unknown fields: a v1 service forwarding v2 messages loses data.
    let new = v2::Payment {
        payment_id: "pay_1".into(),
        authorization_code: "A1B2C3".into(),
        ..Default::default()
    };
    let forwarded =
        v1::Payment::decode(new.encode_to_vec().as_slice()).unwrap().encode_to_vec();
    let arrived = v2::Payment::decode(forwarded.as_slice()).unwrap();
    assert_eq!(arrived.payment_id, "pay_1");
    assert_eq!(
        arrived.authorization_code, "",
        "lost in transit through the v1 middleman"
    );
}

#[test]
fn a_v1_reader_keeps_a_new_enum_value_as_a_number_it_cannot_name() {
    let new = v2::Payment {
        status: v2::PaymentStatus::Refunded as i32,
        ..Default::default()
    };
    let old = v1::Payment::decode(new.encode_to_vec().as_slice()).unwrap();
    assert_eq!(old.status, 6, "the number arrives");
    assert_eq!(
        old.status(),
        v1::PaymentStatus::Unspecified,
        "the getter falls back to the default: a refund reads as 'unspecified'"
    );
}
// ANCHOR_END: evolution_tests

#[tokio::test]
async fn a_v1_client_still_works_against_the_v2_service() {
    let server =
        grpc::server::spawn(grpc::service::ServiceConfig::default()).await.unwrap();
    let mut old_client = v1::payments_client::PaymentsClient::connect(format!(
        "http://{}",
        server.addr
    ))
    .await
    .unwrap();
    let request = v1::AuthorizeRequest {
        order_id: "o-1".into(),
        amount_cents: 2899,
        currency: "EUR".into(),
        card_token: "tok_visa".into(),
    };
    let payment = old_client
        .authorize(request)
        .await
        .expect("an old client is still served")
        .into_inner();
    assert_eq!((payment.order_id.as_str(), payment.amount_cents), ("o-1", 2899));
    assert_eq!(payment.status(), v1::PaymentStatus::Authorized);
    assert_eq!(server.ledger.len(), 1);
    server.shutdown().await.unwrap();
}
