//! What the gateway tests share: the real services behind a real gateway, and tokens.
#![allow(dead_code, reason = "each test file uses a different part")]

use std::time::Duration;

use gateway::auth::Issuer;
use gateway::{Config, RunningGateway};
use grpc::server::RunningPayments;
use http_json::server::RunningService;
use serde_json::{Value, json};

pub const ALL_SCOPES: &str = "orders:read orders:write payments:write checkout:read";

pub struct Shop {
    pub orders: RunningService,
    pub payments: RunningPayments,
    pub gateway: RunningGateway,
    pub http: reqwest::Client,
}

/// A config for services at these addresses, with a fast breaker for tests.
pub fn config(orders_url: String, payments_url: String) -> Config {
    let mut config =
        Config::new(orders_url, payments_url, gateway::Secret::random());
    config.rate = gateway::limit::Rate::new(100, 100.0).unwrap();
    config
}

pub fn issuer(config: &Config) -> Issuer {
    Issuer::hs256(config.token_secret.expose(), &config.issuer, &config.audience)
}

pub fn token(config: &Config, client: &str) -> String {
    issuer(config).mint(client, ALL_SCOPES, 300).unwrap()
}

/// Orders, payments (its lookups `lookup_latency` late) and the gateway.
pub async fn shop_with(
    lookup_latency: Duration,
    tweak: impl FnOnce(&mut Config),
) -> Shop {
    let orders = http_json::server::spawn(Default::default()).await.unwrap();
    let payments =
        grpc::server::spawn_with(Default::default(), lookup_latency).await.unwrap();
    let mut config = config(orders.base_url(), format!("http://{}", payments.addr));
    tweak(&mut config);
    let gateway = gateway::spawn(config).await.unwrap();
    Shop { orders, payments, gateway, http: reqwest::Client::new() }
}

pub async fn shop() -> Shop {
    shop_with(Duration::ZERO, |_| {}).await
}

impl Shop {
    pub fn token(&self, client: &str) -> String {
        token(&self.gateway.gateway.config, client)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.gateway.base_url())
    }

    /// Places an order through the gateway and returns its id.
    pub async fn place_order(&self, customer: &str, key: &str) -> String {
        let body = json!({
            "customer_id": customer,
            "lines": [{"sku": "mug-espresso", "quantity": 2, "unit_price_cents": 1250}]
        });
        let response = self
            .http
            .post(self.url("/orders"))
            .bearer_auth(self.token("web-shop"))
            .header("idempotency-key", key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let order: Value = response.json().await.unwrap();
        order["id"].as_str().unwrap().to_owned()
    }

    /// Authorizes the order's payment through the gateway.
    pub async fn pay(&self, order_id: &str) -> reqwest::Response {
        self.http
            .post(self.url("/payments"))
            .bearer_auth(self.token("web-shop"))
            .json(&json!({
                "order_id": order_id, "amount_cents": 2500,
                "currency": "EUR", "card_token": "tok_visa"
            }))
            .send()
            .await
            .unwrap()
    }
}
