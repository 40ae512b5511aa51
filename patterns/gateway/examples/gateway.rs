//! The shop behind its API gateway: orders (HTTP) and payments (gRPC) in this process, the
//! gateway in front, two clients with their own tokens.
//!
//! Run it:   `cargo run --example gateway`
//! Break it: `cargo run --example gateway -- --slow-payments`  payments answers lookups 2 s late:
//!                                                             the composed views come back
//!                                                             partial, within their deadline
//!
//! It narrates routed calls, a rejected token, one client rate-limited while the other is not,
//! a composed checkout view over REST and over GraphQL (with the backend calls each cost), and
//! checks its own outcome: it exits non-zero if the gateway did not do what it should.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use gateway::auth::{Caller, Issuer};
use gateway::graphql::{self, PaymentFetch};
use gateway::limit::Rate;
use gateway::{Config, RunningGateway, Secret};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tracing::{info, warn};

const WEB: &str = "orders:read orders:write payments:write checkout:read";
const MOBILE: &str = "orders:read checkout:read";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    infra::example::init_logging();
    let flags = infra::example::Flags::parse(&["--slow-payments"])
        .map_err(anyhow::Error::msg)?;
    let slow = flags.has("--slow-payments");

    let orders = http_json::server::spawn(Default::default()).await?;
    let lookup_latency = if slow { Duration::from_secs(2) } else { Duration::ZERO };
    let payments =
        grpc::server::spawn_with(Default::default(), lookup_latency).await?;
    // The example signs its own tokens, so it makes a fresh key for this run.
    let payments_url = format!("http://{}", payments.addr);
    let mut config = Config::new(orders.base_url(), payments_url, Secret::random());
    // One token a minute: within the example, only the burst counts, however slow
    // the machine, so the request that is limited is the same on every run.
    config.rate = Rate::new(10, 1.0 / 60.0)?;
    config.compose_deadline = Duration::from_millis(500);
    let issuer = Issuer::hs256(
        config.token_secret.expose(),
        &config.issuer,
        &config.audience,
    );
    let running = gateway::spawn(config).await?;
    let shop = Client::new(&running, &issuer)?;

    let order_id = routed_calls(&shop).await?;
    rejected_tokens(&shop).await?;
    rate_limited(&shop, &order_id).await?;
    composed_view(&shop, &order_id, slow).await?;
    graphql_view(&shop, &order_id, slow).await?;
    if !slow {
        n_plus_one(&shop, &running).await?;
    }

    running.shutdown().await?;
    payments.shutdown().await.map_err(|e| anyhow::anyhow!(e))?;
    orders.shutdown().await?;
    info!("done: routed, authenticated, limited per client, composed");
    Ok(())
}

/// Two clients with their tokens, and the gateway's address.
struct Client {
    http: reqwest::Client,
    base: String,
    web: String,
    mobile: String,
    /// Sets up data for the N+1 demonstration, with its own allowance.
    seeder: String,
    issuer: Issuer,
    running_calls: Box<dyn Fn() -> (u64, u64) + Send + Sync>,
}

impl Client {
    fn new(running: &RunningGateway, issuer: &Issuer) -> anyhow::Result<Self> {
        let gateway = running.gateway.clone();
        Ok(Client {
            http: reqwest::Client::new(),
            base: running.base_url(),
            web: issuer.mint("web-shop", WEB, 300)?,
            mobile: issuer.mint("mobile-app", MOBILE, 300)?,
            seeder: issuer.mint("seeder", WEB, 300)?,
            issuer: issuer.clone(),
            running_calls: Box::new(move || {
                (gateway.orders.backend.calls(), gateway.payments.backend.calls())
            }),
        })
    }

    fn get(&self, path: &str, token: &str) -> reqwest::RequestBuilder {
        self.http.get(format!("{}{path}", self.base)).bearer_auth(token)
    }

    fn post(&self, path: &str, token: &str) -> reqwest::RequestBuilder {
        self.http.post(format!("{}{path}", self.base)).bearer_auth(token)
    }
}

/// Logs a problem body's status and detail.
async fn problem(
    response: reqwest::Response,
) -> anyhow::Result<(StatusCode, String)> {
    let status = response.status();
    let body: Value = response.json().await?;
    Ok((status, body["detail"].as_str().unwrap_or_default().to_owned()))
}

async fn routed_calls(shop: &Client) -> anyhow::Result<String> {
    info!(
        "-- routing: one entry point, an HTTP service and a gRPC service behind it"
    );
    let order = json!({
        "customer_id": "c-42",
        "lines": [{"sku": "mug-espresso", "quantity": 2, "unit_price_cents": 1250}]
    });
    let response = shop
        .post("/orders", &shop.web)
        .header("idempotency-key", "order-c42-0001")
        .json(&order)
        .send()
        .await?;
    ensure!(
        response.status() == StatusCode::CREATED,
        "create: {}",
        response.status()
    );
    let location = response.headers()["location"].to_str()?.to_owned();
    let created: Value = response.json().await?;
    let order_id = created["id"].as_str().context("no order id")?.to_owned();
    info!("web-shop POST /orders -> 201, Location: {location} (orders, HTTP)");

    let payment = json!({
        "order_id": order_id, "amount_cents": 2500,
        "currency": "EUR", "card_token": "tok_visa", "customer_id": "c-42"
    });
    let response = shop.post("/payments", &shop.web).json(&payment).send().await?;
    ensure!(response.status() == StatusCode::CREATED, "pay: {}", response.status());
    let paid: Value = response.json().await?;
    info!(
        "web-shop POST /payments -> 201, payment {} (payments, gRPC)",
        paid["status"]
    );

    let declined = json!({
        "order_id": "o-declined", "amount_cents": 100,
        "currency": "EUR", "card_token": "tok_declined", "customer_id": "c-42"
    });
    let response = shop.post("/payments", &shop.web).json(&declined).send().await?;
    let (status, detail) = problem(response).await?;
    ensure!(status == StatusCode::BAD_REQUEST);
    info!("web-shop POST /payments (declined card) -> {status}: {detail}");
    Ok(order_id)
}

async fn rejected_tokens(shop: &Client) -> anyhow::Result<()> {
    info!("-- authentication: the gateway checks every token before any backend");
    let other = shop.issuer.for_audience("billing-api");
    let wrong_audience = other.mint("web-shop", WEB, 300)?;
    let response = shop.get("/orders", &wrong_audience).send().await?;
    let (status, detail) = problem(response).await?;
    ensure!(status == StatusCode::UNAUTHORIZED);
    info!("token for another audience -> {status}: {detail}");
    let response =
        shop.post("/payments", &shop.mobile).json(&json!({})).send().await?;
    let (status, detail) = problem(response).await?;
    ensure!(status == StatusCode::FORBIDDEN);
    info!("mobile-app POST /payments -> {status}: {detail}");
    Ok(())
}

async fn rate_limited(shop: &Client, order_id: &str) -> anyhow::Result<()> {
    info!("-- rate limit: 10 requests at once per client, then 1 a minute");
    let path = format!("/orders/{order_id}");
    let mut limited = None;
    for attempt in 1..=15 {
        // A new X-Forwarded-For each time: it does not reset the limit.
        let response = shop
            .get(&path, &shop.mobile)
            .header("x-forwarded-for", format!("203.0.113.{attempt}"))
            .send()
            .await?;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            let retry_after = response.headers()["retry-after"].to_str()?.to_owned();
            limited = Some((attempt, retry_after));
            break;
        }
    }
    let (attempt, retry_after) = limited.context("mobile-app was never limited")?;
    warn!(
        "mobile-app request {attempt} -> 429 Too Many Requests, Retry-After: {retry_after} s"
    );
    let response = shop.get(&path, &shop.web).send().await?;
    ensure!(response.status() == StatusCode::OK, "web-shop: {}", response.status());
    info!("web-shop, same moment -> {}: its own bucket is full", response.status());
    Ok(())
}

async fn composed_view(
    shop: &Client,
    order_id: &str,
    slow: bool,
) -> anyhow::Result<()> {
    info!("-- composition: GET /checkout/{{order_id}}, orders and payments at once");
    let before = (shop.running_calls)();
    let began = Instant::now();
    let response =
        shop.get(&format!("/checkout/{order_id}"), &shop.web).send().await?;
    let view: Value = response.json().await?;
    let took = began.elapsed().as_millis();
    let after = (shop.running_calls)();
    let missing: Vec<&str> = view["missing"]
        .as_array()
        .context("no missing list")?
        .iter()
        .filter_map(|m| m["part"].as_str())
        .collect();
    info!(
        "REST view: order total {}, payment {}, missing {:?} ({} ms; calls: orders {}, payments {})",
        view["order"]["total"]["amount"],
        view["payment"]["status"],
        missing,
        took,
        after.0 - before.0,
        after.1 - before.1,
    );
    if slow {
        ensure!(
            missing == ["payment"],
            "expected the payment missing, got {missing:?}"
        );
        warn!("partial answer: {}", view["missing"][0]["reason"]);
    } else {
        ensure!(missing.is_empty() && view["payment"]["status"] == "authorized");
    }
    Ok(())
}

async fn graphql_view(
    shop: &Client,
    order_id: &str,
    slow: bool,
) -> anyhow::Result<()> {
    info!("-- the same view through GraphQL: the client names the fields");
    let query = format!(
        r#"{{ checkout(orderId: "{order_id}") {{ order {{ total {{ amount }} }} payment {{ status }} missing }} }}"#
    );
    let (answer, calls) = graphql_query(shop, &query).await?;
    info!(
        "GraphQL view: {} (calls: orders {}, payments {})",
        answer["data"]["checkout"], calls.0, calls.1
    );
    let missing = &answer["data"]["checkout"]["missing"];
    ensure!(*missing == if slow { json!(["payment"]) } else { json!([]) });

    let query = format!(r#"{{ order(id: "{order_id}") {{ total {{ amount }} }} }}"#);
    let (answer, calls) = graphql_query(shop, &query).await?;
    info!(
        "GraphQL, total only: {} (calls: orders {}, payments {})",
        answer["data"], calls.0, calls.1
    );
    ensure!(calls.1 == 0, "payments called for a field nobody asked for");
    Ok(())
}

/// Posts a GraphQL query as the web shop; returns the answer and how many calls
/// it cost each backend (orders, payments).
async fn graphql_query(
    shop: &Client,
    query: &str,
) -> anyhow::Result<(Value, (u64, u64))> {
    let before = (shop.running_calls)();
    let response = shop
        .post("/graphql", &shop.web)
        .json(&json!({ "query": query }))
        .send()
        .await?;
    let answer: Value = response.json().await?;
    let after = (shop.running_calls)();
    Ok((answer, (after.0 - before.0, after.1 - before.1)))
}

async fn n_plus_one(shop: &Client, running: &RunningGateway) -> anyhow::Result<()> {
    info!("-- N+1: a customer's orders with their payments");
    for i in 0..4 {
        let order = json!({
            "customer_id": "c-7",
            "lines": [{"sku": "tea-sencha", "quantity": 1, "unit_price_cents": 399}]
        });
        let response = shop
            .post("/orders", &shop.seeder)
            .header("idempotency-key", format!("order-c7-{i}"))
            .json(&order)
            .send()
            .await?;
        let created: Value = response.json().await?;
        let payment = json!({
            "order_id": created["id"], "amount_cents": 399,
            "currency": "EUR", "card_token": "tok_visa", "customer_id": "c-7"
        });
        shop.post("/payments", &shop.seeder).json(&payment).send().await?;
    }
    let gateway = &running.gateway;
    let caller = Caller { client: "web-shop".into(), scopes: Default::default() };
    let query = r#"{ orders(customerId: "c-7") { id payment { status } } }"#;
    let mut payments_calls = Vec::new();
    for fetch in [PaymentFetch::PerOrder, PaymentFetch::Batched] {
        let before = (shop.running_calls)();
        let request = async_graphql::Request::new(query);
        let answer =
            graphql::execute(gateway, &gateway.schema, &caller, request, fetch)
                .await;
        ensure!(answer.errors.is_empty(), "{:?}", answer.errors);
        let after = (shop.running_calls)();
        info!(
            "4 orders with payments, {fetch:?}: orders calls {}, payments calls {}",
            after.0 - before.0,
            after.1 - before.1
        );
        payments_calls.push(after.1 - before.1);
    }
    ensure!(payments_calls == [4, 1], "expected 4 then 1, got {payments_calls:?}");
    Ok(())
}
