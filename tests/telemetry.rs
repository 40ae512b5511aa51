//! Logs joined to traces across processes: with `LOG_FORMAT=json` every line a service writes is
//! one JSON object, and each checkout's `checkout accepted` line in the saga's log carries the
//! trace id its client chose. The client talks to the gateway, not to the saga: the id reaches
//! the saga only because the gateway passes the W3C trace context on, and the participants'
//! lines for its commands carry it too, because the saga sends it with each command.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

mod support;

use std::collections::BTreeMap;

use serde_json::Value;
use shop::scenario;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_each_checkouts_trace_id_from_the_client_to_the_saga_and_its_participants()
 {
    let Some(mut shop) = support::start_json("json_logs").await else { return };
    let batch = scenario::batch("json");
    let placed = shop.run_batch(batch.clone(), async { Ok(()) }).await;
    shop.placed.extend(placed);
    let logs = std::env::temp_dir().join(&shop.env().names.prefix);
    shop.stop().await;

    let mut lines_of_trace: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut lines = 0;
    for service in ["gateway", "saga", "inventory", "payments", "shipping", "orders"]
    {
        let text =
            std::fs::read_to_string(logs.join(format!("{service}.log"))).unwrap();
        for line in text.lines() {
            let parsed: Value = serde_json::from_str(line).unwrap_or_else(|e| {
                panic!("{service}: not one JSON object ({e}): {line}")
            });
            for field in ["timestamp", "level", "message"] {
                assert!(
                    parsed.get(field).is_some(),
                    "{service}: no {field}: {line}"
                );
            }
            lines += 1;
            if let Some(trace) = parsed["trace_id"].as_str() {
                assert_eq!(
                    parsed["span_id"].as_str().map(str::len),
                    Some(16),
                    "{line}"
                );
                let mut parsed = parsed.clone();
                parsed["service"] = service.into();
                lines_of_trace.entry(trace.to_owned()).or_default().push(parsed);
            }
        }
    }
    assert!(lines > 50, "only {lines} log lines");
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
}
