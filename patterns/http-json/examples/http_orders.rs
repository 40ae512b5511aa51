//! The checkout places an order with the orders service over HTTP/JSON, both in this process.
//!
//! Run it:   `cargo run --example http_orders`
//! Break it: `cargo run --example http_orders -- --slow`     the service answers late: the checkout
//!                                                            times out, then retries safely
//!           `cargo run --example http_orders -- --invalid`  bad requests: each gets a problem body
//!
//! The service binds 127.0.0.1:0. Every step is logged; the example checks its own outcome (exactly
//! one order, whatever happened) and exits non-zero if the pattern failed. The checkout retries the
//! create with the retry loop of the resilience chapter: a bounded number of attempts, with
//! exponential backoff and full jitter between them.

use std::fmt;
use std::time::Duration;

use anyhow::{Context, ensure};
use http_json::client::{ClientError, OrdersClient};
use http_json::orders::{NewOrder, OrderLine};
use http_json::server::{ServiceConfig, spawn};
use resilience::backoff::Backoff;
use resilience::retry::{Idempotency, RetryPolicy, Retryable};
use tracing::{Instrument, info, info_span, warn};
use uuid::Uuid;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    infra::example::init_logging();
    let flags = infra::example::Flags::parse(&["--slow", "--invalid"])
        .map_err(anyhow::Error::msg)?;
    let (slow, invalid) = (flags.has("--slow"), flags.has("--invalid"));

    // Break-it switch: the service answers 1.5 s late, the checkout waits at most 500 ms.
    let latency = if slow { Duration::from_millis(1500) } else { Duration::ZERO };
    let service =
        spawn(ServiceConfig { latency, ..ServiceConfig::default() }).await?;
    let client = OrdersClient::new(service.base_url(), Duration::from_millis(500))?
        .with_correlation_id("checkout-7f3a");

    // The checkout's lines carry the correlation id the service logs too. The span is attached
    // to the future, so it is entered only while that future runs: a guard from `span.enter()`
    // held across an `.await` would leak into whatever else runs on this thread meanwhile.
    let checkout = info_span!("checkout", correlation_id = %"checkout-7f3a");
    check_out(&client, slow, invalid).instrument(checkout).await?;

    service.shutdown().await?;
    info!("done: one order, however many attempts it took");
    Ok(())
}

async fn check_out(
    client: &OrdersClient,
    slow: bool,
    invalid: bool,
) -> anyhow::Result<()> {
    let order = NewOrder {
        customer_id: "c-42".into(),
        lines: vec![
            OrderLine {
                sku: "mug-espresso".into(),
                quantity: 2,
                unit_price_cents: 1250,
            },
            OrderLine {
                sku: "tea-sencha".into(),
                quantity: 1,
                unit_price_cents: 399,
            },
        ],
    };
    if invalid {
        send_bad_requests(client).await?;
    }
    let id = place_order(client, &order, slow).await?;
    show_both_versions(client, id).await?;

    let orders =
        client.with_timeout(Duration::from_secs(5)).list(Some("c-42")).await?;
    info!("orders for c-42: {}", orders.len());
    ensure!(orders.len() == 1, "expected exactly one order, found {}", orders.len());
    Ok(())
}

/// A client error as the retry loop sees it. A local type, so that it may implement the
/// resilience crate's trait for the http-json crate's error.
#[derive(Debug)]
struct Failed(ClientError);

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Retryable for Failed {
    fn is_retryable(&self) -> bool {
        // Timeouts, transport errors, 5xx, 409 "in progress" and 429; never a 4xx refusal.
        self.0.is_retryable()
    }
}

// ANCHOR: place_order
/// Places the order under one idempotency key, through the retries chapter's loop:
/// at most 4 attempts, waits drawn at random below 100 ms, 200 ms, then 400 ms.
async fn place_order(
    client: &OrdersClient,
    order: &NewOrder,
    slow: bool,
) -> anyhow::Result<Uuid> {
    let key = "order-c42-0001"; // one key per logical order, kept across retries
    let backoff =
        Backoff { base: Duration::from_millis(100), max: Duration::from_secs(1) };
    let retry = RetryPolicy::new(4, backoff);
    // A retry knows the service is slow, so it waits longer than the first try.
    let patient = client.with_timeout(Duration::from_secs(5));
    info!(%key, "POST /v1/orders ({} lines)", order.lines.len());
    // The key makes this POST idempotent: repeating it cannot place a second order.
    let first = retry
        .run(Idempotency::Idempotent, |attempt| {
            let client = if attempt == 1 { client } else { &patient };
            async move { client.create(key, order).await.map_err(Failed) }
        })
        .await
        .map_err(|Failed(error)| error)?;
    let total = first.order.total_cents;
    info!(
        order_id = %first.order.id, replayed = first.replayed,
        "201 Created, total {total} cents"
    );
    if slow {
        ensure!(
            first.replayed,
            "the timed-out try placed the order; the retry replays"
        );
        return Ok(first.order.id);
    }

    // A network can lose an answer the service did send. Pretend it did: send again.
    info!(%key, "pretend the response was lost: POST again with the same key");
    let again = client.create(key, order).await?;
    info!(
        order_id = %again.order.id, replayed = again.replayed,
        "201 Created (replayed: nothing new was created)"
    );
    ensure!(
        again.replayed && again.order.id == first.order.id,
        "a retry with the same key must replay"
    );
    Ok(first.order.id)
}
// ANCHOR_END: place_order

async fn show_both_versions(client: &OrdersClient, id: Uuid) -> anyhow::Result<()> {
    let client = client.with_timeout(Duration::from_secs(5));
    let v1 = client.get(id).await?;
    info!("GET /v1/orders/{id} -> {}", serde_json::to_string(&v1)?);
    let v2 = client.get_v2(id).await?;
    info!("GET /v2/orders/{id} -> {}", serde_json::to_string(&v2)?);
    ensure!(
        v2.total.amount
            == format!("{}.{:02}", v1.total_cents / 100, v1.total_cents % 100),
        "versions disagree on the total"
    );
    Ok(())
}

// ANCHOR: send_bad_requests
/// Each bad request gets a 4xx and a problem body that names the problem.
async fn send_bad_requests(client: &OrdersClient) -> anyhow::Result<()> {
    let (json, text) = ("application/json", "text/plain");
    let mistyped = r#"{"customer_id": "c-42", "lines": [
        {"sku": "mug", "quantity": "two", "unit_price_cents": 1250}]}"#;
    let unknown = r#"{"customer_id": "c-42", "lines": [], "currency": "USD"}"#;
    let oversized =
        format!(r#"{{"customer_id": "{}", "lines": []}}"#, "x".repeat(20_000));
    let cases = [
        ("malformed JSON", json, r#"{"customer_id": "c-42", "lines": ["#),
        ("wrong content type", text, r#"{"customer_id": "c-42", "lines": []}"#),
        ("missing field", json, r#"{"lines": []}"#),
        ("mistyped field", json, mistyped),
        ("unknown field", json, unknown),
        ("oversized body", json, oversized.as_str()),
    ];
    for (i, (what, content_type, body)) in cases.into_iter().enumerate() {
        let (body, key) = (body.as_bytes().to_vec(), format!("bad-{i}"));
        let problem = client
            .post_raw("/v1/orders", content_type, body, &key)
            .await
            .with_context(|| what.to_owned())?;
        let (status, title) = (problem.status, &problem.title);
        warn!("{what}: {status} {title} ({}) {}", problem.kind, problem.detail);
        ensure!((400..500).contains(&status), "{what} should be a client error");
    }
    let rules = NewOrder {
        customer_id: "c-42".into(),
        lines: vec![OrderLine {
            sku: "mug".into(),
            quantity: 0,
            unit_price_cents: 1250,
        }],
    };
    match client.create("bad-rules", &rules).await {
        Err(ClientError::Rejected(problem)) => {
            let fields: Vec<String> = problem
                .errors
                .iter()
                .map(|e| format!("{} {}", e.pointer, e.detail))
                .collect();
            let (status, title) = (problem.status, &problem.title);
            warn!("broken rule: {status} {title}: {}", fields.join("; "));
        }
        other => anyhow::bail!("quantity 0 should be refused, got {other:?}"),
    }
    info!("the service refused all bad input and keeps serving");
    Ok(())
}
// ANCHOR_END: send_bad_requests
