//! The checkout places an order with the orders service over HTTP/JSON, both in this process.
//!
//! Run it:   `cargo run --example http_orders`
//! Break it: `cargo run --example http_orders -- --slow`     the service answers late: the checkout
//!                                                            times out, then retries safely
//!           `cargo run --example http_orders -- --invalid`  bad requests: each gets a problem body
//!
//! The service binds 127.0.0.1:0. Every step is logged; the example checks its own outcome (exactly
//! one order, whatever happened) and exits non-zero if the pattern failed.

use std::time::Duration;

use anyhow::{Context, ensure};
use http_json::client::{ClientError, OrdersClient};
use http_json::orders::{NewOrder, OrderLine};
use http_json::server::{ServiceConfig, spawn};
use tracing::{info, info_span, warn};

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
    let checkout = info_span!("checkout", correlation_id = %"checkout-7f3a");
    let _entered = checkout.enter();

    if invalid {
        send_bad_requests(&client).await?;
    }
    let id = place_order(&client, &order, slow).await?;
    show_both_versions(&client, id).await?;

    let orders =
        client.with_timeout(Duration::from_secs(5)).list(Some("c-42")).await?;
    info!("orders for c-42: {}", orders.len());
    ensure!(orders.len() == 1, "expected exactly one order, found {}", orders.len());
    drop(_entered);
    service.shutdown().await?;
    info!("done: one order, however many attempts it took");
    Ok(())
}

// ANCHOR: place_order
/// Places the order with one idempotency key, retrying on timeouts and in-progress answers.
async fn place_order(
    client: &OrdersClient,
    order: &NewOrder,
    slow: bool,
) -> anyhow::Result<uuid::Uuid> {
    let key = "order-c42-0001"; // one key per logical order, kept across retries
    info!(%key, "POST /v1/orders ({} lines)", order.lines.len());
    let first = match client.create(key, order).await {
        Ok(created) => created,
        Err(ClientError::Timeout(after)) => {
            warn!(
                "no answer within {after:?}: was the order created? unknown, so retry with the same key"
            );
            let patient = client.with_timeout(Duration::from_secs(5));
            retry_until_answered(&patient, key, order).await?
        }
        Err(other) => return Err(other.into()),
    };
    info!(order_id = %first.order.id, replayed = first.replayed, "201 Created, total {} cents", first.order.total_cents);
    if slow {
        ensure!(
            first.replayed,
            "the timed-out attempt should have created the order and the retry replayed it"
        );
        return Ok(first.order.id);
    }

    // The network can lose a response that the service did send. Simulate that: send it again.
    info!(%key, "pretend the response was lost: POST again with the same key");
    let again = client.create(key, order).await?;
    info!(order_id = %again.order.id, replayed = again.replayed, "201 Created (replayed: nothing new was created)");
    ensure!(
        again.replayed && again.order.id == first.order.id,
        "a retry with the same key must replay"
    );
    Ok(first.order.id)
}
// ANCHOR_END: place_order

async fn retry_until_answered(
    client: &OrdersClient,
    key: &str,
    order: &NewOrder,
) -> anyhow::Result<http_json::client::Created> {
    for attempt in 2..=5 {
        info!(%key, attempt, "POST /v1/orders again, same key");
        match client.create(key, order).await {
            Ok(created) => return Ok(created),
            Err(e) if e.is_retryable() => {
                warn!(attempt, "{e}; backing off");
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::bail!(
        "no answer after 5 attempts; give up and tell the customer their order status is unknown"
    )
}

async fn show_both_versions(
    client: &OrdersClient,
    id: uuid::Uuid,
) -> anyhow::Result<()> {
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
/// Each bad request gets a 4xx and a problem body that names the problem; nothing is created.
async fn send_bad_requests(client: &OrdersClient) -> anyhow::Result<()> {
    let oversized =
        format!(r#"{{"customer_id":"{}","lines":[]}}"#, "x".repeat(20_000));
    let cases: [(&str, &str, Vec<u8>); 5] = [
        ("malformed JSON", "application/json", br#"{"customer_id": "c-42", "lines": ["#.to_vec()),
        ("wrong content type", "text/plain", br#"{"customer_id": "c-42", "lines": []}"#.to_vec()),
        ("missing field", "application/json", br#"{"lines": []}"#.to_vec()),
        ("mistyped field", "application/json", br#"{"customer_id": "c-42", "lines": [{"sku": "mug", "quantity": "two", "unit_price_cents": 1}]}"#.to_vec()),
        ("oversized body", "application/json", oversized.into_bytes()),
    ];
    for (i, (what, content_type, body)) in cases.into_iter().enumerate() {
        let problem = client
            .post_raw("/v1/orders", content_type, body, &format!("bad-{i}"))
            .await
            .with_context(|| what.to_owned())?;
        warn!(
            "{what}: {} {} ({}) {}",
            problem.status, problem.title, problem.kind, problem.detail
        );
        ensure!(
            (400..500).contains(&problem.status),
            "{what} should be a client error"
        );
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
            warn!(
                "broken rule: {} {}: {}",
                problem.status,
                problem.title,
                fields.join("; ")
            );
        }
        other => anyhow::bail!("quantity 0 should be refused, got {other:?}"),
    }
    info!("the service refused all bad input and keeps serving");
    Ok(())
}
// ANCHOR_END: send_bad_requests
