//! The composed view: complete when both backends answer; partial, naming the missing part,
//! when one is slow or down; a 404 problem when the order does not exist.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

mod support;

use std::time::Duration;

use gateway::compose::CheckoutView;

async fn view(shop: &support::Shop, order_id: &str) -> (u16, serde_json::Value) {
    let response = shop
        .http
        .get(shop.url(&format!("/checkout/{order_id}")))
        .bearer_auth(shop.token("web-shop"))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn both_parts_when_both_backends_answer() {
    let shop = support::shop().await;
    let id = shop.place_order("c-42", "k-1").await;
    let (status, body) = view(&shop, &id).await;
    assert_eq!(status, 200);
    // Not paid yet: no payment, and nothing missing either.
    let unpaid: CheckoutView = serde_json::from_value(body).unwrap();
    assert!(
        unpaid.order.is_some()
            && unpaid.payment.is_none()
            && unpaid.missing.is_empty()
    );

    assert_eq!(shop.pay(&id).await.status(), 201);
    let (_, body) = view(&shop, &id).await;
    let paid: CheckoutView = serde_json::from_value(body).unwrap();
    assert_eq!(paid.payment.unwrap().status, "authorized");
    assert!(paid.missing.is_empty());
}

#[tokio::test]
async fn a_slow_payments_service_leaves_the_payment_missing_not_the_view() {
    // Payments answers its lookups 30 s late; the view's deadline is 200 ms.
    let shop = support::shop_with(Duration::from_secs(30), |config| {
        config.compose_deadline = Duration::from_millis(200);
    })
    .await;
    let id = shop.place_order("c-42", "k-1").await;
    let (status, body) = view(&shop, &id).await;
    assert_eq!(status, 200);
    let partial: CheckoutView = serde_json::from_value(body).unwrap();
    assert_eq!(partial.order.unwrap().id.to_string(), id);
    assert_eq!(partial.missing.len(), 1);
    assert_eq!(partial.missing[0].part, "payment");
    assert_eq!(
        partial.missing[0].reason,
        "payments did not answer before the deadline"
    );
}

#[tokio::test]
async fn a_payments_service_that_is_down_leaves_the_payment_missing() {
    let shop = support::shop_with(Duration::ZERO, |config| {
        config.payments_url = "http://127.0.0.1:9".into();
    })
    .await;
    let id = shop.place_order("c-42", "k-1").await;
    let (_, body) = view(&shop, &id).await;
    let partial: CheckoutView = serde_json::from_value(body).unwrap();
    assert!(partial.order.is_some());
    assert_eq!(partial.missing[0].part, "payment");
    assert!(
        partial.missing[0].reason.starts_with("payments is unreachable"),
        "{:?}",
        partial.missing
    );
}

#[tokio::test]
async fn an_unknown_order_is_a_404_problem() {
    let shop = support::shop().await;
    let (status, body) = view(&shop, "0b9f5c8e-2f8e-4a57-9d52-3f3c1e0d2a11").await;
    assert_eq!(status, 404);
    assert_eq!(body["type"], "/problems/not-found");
}
