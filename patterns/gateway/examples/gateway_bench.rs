//! What the gateway costs, measured on this machine: one request through the gateway
//! (authentication, rate limit, routing) against the same request sent straight to the service,
//! and the composed checkout view over REST against GraphQL.
//!
//! Run it: `cargo run --release --example gateway_bench`
//!
//! Sequential requests over keep-alive connections on loopback, one client, after a warm-up. No
//! log subscriber is installed, so the services' per-request logs cost nothing here.
//! Figures are for this machine and this run only; compare them with each other, not with
//! numbers from elsewhere.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use compare::stats::Sample;
use gateway::auth::Issuer;
use gateway::limit::Rate;
use gateway::{Config, Secret};
use serde_json::{Value, json};

const ROUNDS: usize = 2_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let orders = http_json::server::spawn(Default::default()).await?;
    let payments = grpc::server::spawn(Default::default()).await?;
    let payments_url = format!("http://{}", payments.addr);
    let mut config = Config::new(orders.base_url(), payments_url, Secret::random());
    // The limit is not what is measured: high enough never to refuse.
    config.rate = Rate::new(1_000_000, 1_000_000.0)?;
    let issuer = Issuer::hs256(
        config.token_secret.expose(),
        &config.issuer,
        &config.audience,
    );
    let token = issuer.mint(
        "bench",
        "orders:read orders:write payments:write checkout:read",
        600,
    )?;
    let running = gateway::spawn(config).await?;
    let gw = running.base_url();
    let http = reqwest::Client::new();

    let order = json!({"customer_id": "c-42",
        "lines": [{"sku": "mug-espresso", "quantity": 2, "unit_price_cents": 1250}]});
    let created: Value = http
        .post(format!("{gw}/orders"))
        .bearer_auth(&token)
        .header("idempotency-key", "bench-1")
        .json(&order)
        .send()
        .await?
        .json()
        .await?;
    let id = created["id"].as_str().context("no id")?.to_owned();
    let pay = json!({"order_id": id, "amount_cents": 2500, "currency": "EUR",
        "card_token": "tok_visa", "customer_id": "c-42"});
    let paid =
        http.post(format!("{gw}/payments")).bearer_auth(&token).json(&pay).send();
    ensure!(paid.await?.status() == 201);

    let direct = format!("{}/v2/orders/{id}", orders.base_url());
    let routed = format!("{gw}/orders/{id}");
    let direct = measure(|| http.get(&direct).send()).await?;
    let routed = measure(|| http.get(&routed).bearer_auth(&token).send()).await?;
    report("GET order, direct to orders", &direct);
    report("GET order, through the gateway", &routed);

    let calls = || {
        let g = &running.gateway;
        g.orders.backend.calls() + g.payments.backend.calls()
    };
    let before = calls();
    let rest = format!("{gw}/checkout/{id}");
    let rest = measure(|| http.get(&rest).bearer_auth(&token).send()).await?;
    let rest_calls = (calls() - before) as f64 / (ROUNDS * 2) as f64;
    let query = json!({ "query": format!(
        r#"{{ checkout(orderId: "{id}") {{ order {{ total {{ amount }} }} payment {{ status }} missing }} }}"#
    )});
    let before = calls();
    let graphql = format!("{gw}/graphql");
    let graphql =
        measure(|| http.post(&graphql).bearer_auth(&token).json(&query).send())
            .await?;
    let graphql_calls = (calls() - before) as f64 / (ROUNDS * 2) as f64;
    report(&format!("checkout view, REST ({rest_calls} backend calls)"), &rest);
    report(
        &format!("checkout view, GraphQL ({graphql_calls} backend calls)"),
        &graphql,
    );

    running.shutdown().await?;
    println!("done: {ROUNDS} measured requests per line, after as many to warm up");
    Ok(())
}

/// Runs `send` ROUNDS times to warm up, then ROUNDS times measured; every
/// answer must be 200.
async fn measure<F, R>(send: F) -> anyhow::Result<Sample>
where
    F: Fn() -> R,
    R: std::future::Future<Output = reqwest::Result<reqwest::Response>>,
{
    let mut took = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS * 2 {
        let began = Instant::now();
        let response = send().await?;
        let status = response.status();
        response.bytes().await?;
        ensure!(status == 200, "answered {status}");
        if round >= ROUNDS {
            took.push(began.elapsed());
        }
    }
    Sample::new(took).context("no measurements")
}

fn report(what: &str, sample: &Sample) {
    let us = |d: Duration| d.as_micros();
    println!(
        "{what}: p50 {} us, p99 {} us",
        us(sample.percentile(50.0)),
        us(sample.percentile(99.0))
    );
}
