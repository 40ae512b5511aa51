//! GraphQL at the gateway: a query gets exactly the fields it names, and calls only the backends
//! those fields need; listing orders with their payments costs 1 + N calls field by field, and
//! 1 + 1 with the data loader.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

mod support;

use gateway::auth::Caller;
use gateway::graphql::{self, PaymentFetch};
use serde_json::{Value, json};

async fn query(shop: &support::Shop, query: &str) -> Value {
    let response = shop
        .http
        .post(shop.url("/graphql"))
        .bearer_auth(shop.token("web-shop"))
        .json(&json!({ "query": query }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn calls(shop: &support::Shop) -> (u64, u64) {
    let gateway = &shop.gateway.gateway;
    (gateway.orders.backend.calls(), gateway.payments.backend.calls())
}

#[tokio::test]
async fn a_query_gets_exactly_the_fields_it_asks_for_and_no_more_calls() {
    let shop = support::shop().await;
    let id = shop.place_order("c-42", "k-1").await;
    assert_eq!(shop.pay(&id).await.status(), 201);

    let before = calls(&shop);
    let answer = query(
        &shop,
        &format!(r#"{{ order(id: "{id}") {{ total {{ amount }} }} }}"#),
    )
    .await;
    assert_eq!(answer, json!({"data": {"order": {"total": {"amount": "25.00"}}}}));
    // No payment field asked: payments was not called.
    assert_eq!(calls(&shop), (before.0 + 1, before.1));

    let answer = query(
        &shop,
        &format!(r#"{{ order(id: "{id}") {{ customerId payment {{ status }} }} }}"#),
    )
    .await;
    let expected =
        json!({"customerId": "c-42", "payment": {"status": "authorized"}});
    assert_eq!(answer["data"]["order"], expected);
    assert_eq!(calls(&shop), (before.0 + 2, before.1 + 1));
}

#[tokio::test]
async fn the_checkout_view_is_the_same_composition() {
    let shop = support::shop().await;
    let id = shop.place_order("c-42", "k-1").await;
    assert_eq!(shop.pay(&id).await.status(), 201);
    let q = format!(
        r#"{{ checkout(orderId: "{id}") {{ order {{ total {{ amount }} }} payment {{ status }} missing }} }}"#
    );
    let answer = query(&shop, &q).await;
    let expected = json!({
        "order": {"total": {"amount": "25.00"}},
        "payment": {"status": "authorized"},
        "missing": []
    });
    assert_eq!(answer["data"]["checkout"], expected);
}

// ANCHOR: n_plus_one_test
#[tokio::test]
async fn a_data_loader_turns_n_plus_one_calls_into_two() {
    let shop = support::shop().await;
    for i in 0..5 {
        let id = shop.place_order("c-7", &format!("k-{i}")).await;
        assert_eq!(shop.pay(&id).await.status(), 201);
    }
    let gateway = &shop.gateway.gateway;
    let caller = Caller { client: "web-shop".into(), scopes: Default::default() };
    let q = r#"{ orders(customerId: "c-7") { id payment { status } } }"#;
    let mut cost = Vec::new();
    for fetch in [PaymentFetch::PerOrder, PaymentFetch::Batched] {
        let before = calls(&shop);
        let request = async_graphql::Request::new(q);
        let answer =
            graphql::execute(gateway, &gateway.schema, &caller, request, fetch)
                .await;
        assert!(answer.errors.is_empty(), "{:?}", answer.errors);
        let data = answer.data.into_json().unwrap();
        let orders = data["orders"].as_array().unwrap();
        assert_eq!(orders.len(), 5);
        assert!(orders.iter().all(|o| o["payment"]["status"] == "authorized"));
        let after = calls(&shop);
        cost.push((after.0 - before.0, after.1 - before.1));
    }
    // (orders calls, payments calls): 1 + 5 field by field, 1 + 1 batched.
    assert_eq!(cost, [(1, 5), (1, 1)]);
}
// ANCHOR_END: n_plus_one_test

/// What schemathesis found about the GraphQL endpoint, kept: a body that is not an object is
/// refused before GraphQL sees it, and what async-graphql reads loosely (no query, null
/// variables and operation name) is answered 200 with the error in `errors`, as documented.
#[tokio::test]
async fn a_graphql_body_must_be_an_object_and_the_rest_is_graphql_s_to_judge() {
    let shop = support::shop().await;
    let post = |body: serde_json::Value| {
        shop.http
            .post(shop.url("/graphql"))
            .bearer_auth(shop.token("web-shop"))
            .json(&body)
            .send()
    };
    let refused = post(serde_json::json!([])).await.unwrap();
    assert_eq!(refused.status(), 422);
    let problem: serde_json::Value = refused.json().await.unwrap();
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("invalid type: sequence"), "{detail}");

    let loose = serde_json::json!({"variables": null, "operationName": null});
    let answered = post(loose).await.unwrap();
    assert_eq!(answered.status(), 200);
    let answer: serde_json::Value = answered.json().await.unwrap();
    assert!(answer["data"].is_null(), "{answer}");
    assert!(!answer["errors"].as_array().unwrap().is_empty(), "{answer}");
}
