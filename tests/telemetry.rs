//! Logs joined to traces across processes: with `LOG_FORMAT=json` every line a service writes is
//! one JSON object, and each checkout's lines carry the trace id its client chose. The client
//! talks to the gateway only: the id reaches the services behind it because the gateway passes
//! the W3C trace context on, and each service passes it on with what it sends: the saga with each
//! command over RabbitMQ, a choreographed service with each event over Kafka.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

mod support;

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use shop::config::Style;
use shop::scenario;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_each_checkouts_trace_id_from_the_client_to_the_saga_and_its_participants()
 {
    let Some(mut shop) =
        support::start_json("json_logs", Style::Orchestration).await
    else {
        return;
    };
    let batch = scenario::batch("json");
    let placed = shop.run_batch(batch.clone(), async { Ok(()) }).await;
    shop.placed.extend(placed);
    // A composed read in a confirmed checkout's trace: the gateway asks orders (HTTP) and
    // payments (gRPC) and carries the trace on to both.
    let read = batch.iter().find(|p| p.key == "json-1").unwrap();
    let answer = shop.client.order_in(read).await.unwrap();
    assert!(
        answer.is_some_and(|a| a.payment.is_some()),
        "json-1 has an order and a payment"
    );
    let logs = std::env::temp_dir().join(&shop.env().names.prefix);
    shop.stop().await;

    let services =
        ["gateway", "saga", "inventory", "payments", "shipping", "orders"];
    let lines_of_trace = lines_by_trace(&logs, &services);
    for planned in &batch {
        let found = lines_of_trace.get(&planned.trace_id).unwrap_or_else(|| {
            panic!("no line has {}'s trace id {}", planned.key, planned.trace_id)
        });
        let accepted = found.iter().find(|l| {
            l["service"] == "saga"
                && l["message"] == "checkout accepted"
                && l["order"] == planned.key.as_str()
        });
        assert!(
            accepted.is_some(),
            "the saga's 'checkout accepted' for {} is not in the client's trace {}: {found:#?}",
            planned.key,
            planned.trace_id
        );
        // Past the saga, over RabbitMQ: the command carried the trace context, so the
        // participant that applied the checkout's first step logged it in the same trace.
        let first_step = format!("checkout-{}/0/do", planned.key);
        let applied = found.iter().find(|l| {
            l["service"] == "inventory"
                && l["message"] == "applied"
                && l["command"] == first_step.as_str()
        });
        assert!(
            applied.is_some(),
            "inventory's 'applied {first_step}' is not in the client's trace {}: {found:#?}",
            planned.trace_id
        );
    }
    let found = &lines_of_trace[&read.trace_id];
    let said = |service: &str, message: &str| {
        found.iter().any(|l| {
            l["service"] == service
                && l["message"].as_str().is_some_and(|m| m.starts_with(message))
        })
    };
    assert!(
        said("orders", "order read"),
        "orders' read is not in the trace: {found:#?}"
    );
    assert!(
        said("payments", "PaymentsForOrders"),
        "payments' gRPC read is not in the trace: {found:#?}"
    );
}

/// Choreographed, the trace goes from the client through the gateway to orders, and then only
/// through Kafka: each event's outbox row keeps the context it was emitted in, the relay sends it
/// as headers, and the consumer continues it. Inventory and shipping take no request from anyone,
/// so a line of theirs in the client's trace got there through the events alone; shipping's line
/// about the payment, through two or three of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_choreographed_checkouts_trace_crosses_kafka_from_the_client_to_shipping()
{
    let Some(mut shop) =
        support::start_json("json_choreo", Style::Choreography).await
    else {
        return;
    };
    let batch = scenario::batch("jsonc");
    let placed = shop.run_batch(batch, async { Ok(()) }).await;
    shop.placed.extend(placed.clone());
    let logs = std::env::temp_dir().join(&shop.env().names.prefix);
    shop.stop().await;

    let services = ["gateway", "orders", "inventory", "payments", "shipping"];
    let lines_of_trace = lines_by_trace(&logs, &services);
    let mut shipped = 0;
    for (planned, view) in &placed {
        let found = lines_of_trace.get(&planned.trace_id).unwrap_or_else(|| {
            panic!("no line has {}'s trace id {}", planned.key, planned.trace_id)
        });
        // A line of `service`'s about an event of `kind` it consumed.
        let from = |service: &str, kind: &str| {
            found.iter().any(|l| {
                l["service"] == service
                    && l["message"].as_str().is_some_and(|m| m.starts_with(kind))
            })
        };
        // One hop: orders' OrderPlaced, at inventory.
        assert!(
            from("inventory", "OrderPlaced:"),
            "inventory's OrderPlaced is not in {}'s trace {}: {found:#?}",
            planned.key,
            planned.trace_id
        );
        // Two or three hops: payments authorizes in the span of the last of OrderPlaced (from
        // orders) and StockReserved (from inventory) to reach it, then shipping hears of it.
        if view.status == "confirmed" {
            shipped += 1;
            assert!(
                from("shipping", "PaymentAuthorized:"),
                "shipping's PaymentAuthorized is not in {}'s trace {}: {found:#?}",
                planned.key,
                planned.trace_id
            );
        }
    }
    assert!(shipped > 0, "no checkout of the batch was confirmed: {placed:#?}");
}

/// Every service's log lines that name a trace, by trace id, each with a `service` field added;
/// every line must be one JSON object with a timestamp, a level and a message.
fn lines_by_trace(logs: &Path, services: &[&str]) -> BTreeMap<String, Vec<Value>> {
    let mut lines_of_trace: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut lines = 0;
    for service in services {
        let text =
            std::fs::read_to_string(logs.join(format!("{service}.log"))).unwrap();
        for line in text.lines() {
            let mut parsed: Value = serde_json::from_str(line).unwrap_or_else(|e| {
                panic!("{service}: not one JSON object ({e}): {line}")
            });
            for field in ["timestamp", "level", "message"] {
                assert!(
                    parsed.get(field).is_some(),
                    "{service}: no {field}: {line}"
                );
            }
            lines += 1;
            if let Some(trace) = parsed["trace_id"].as_str().map(str::to_owned) {
                assert_eq!(
                    parsed["span_id"].as_str().map(str::len),
                    Some(16),
                    "{line}"
                );
                parsed["service"] = (*service).into();
                lines_of_trace.entry(trace).or_default().push(parsed);
            }
        }
    }
    assert!(lines > 50, "only {lines} log lines");
    lines_of_trace
}
