//! The contracts of the shop's edges, checked the way CI checks them: the orders API's OpenAPI
//! document generated from the code and compared with the committed one, the orders topic's event
//! schemas compared version by version, and three inputs the fuzzers found sent to a running
//! orders service.
//!
//! Run it:   `cargo run --example contracts`
//! Break it: `cargo run --example contracts -- --breaking-event`  proposes an `OrderPlaced` v3
//!                                                               that requires `currency`: the
//!                                                               check names why consumers
//!                                                               reading v1 payloads would fail
//!
//! The service binds 127.0.0.1:0. The example checks its own outcome and exits non-zero if a
//! contract does not hold.

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use contracts::compat::breaks;
use contracts::events::{
    PROMISE, committed_form, generated, order_placed_file, order_placed_versions,
};
use http_json::openapi::document;
use http_json::server::{ServiceConfig, spawn};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::{info, warn};
use utoipa::ToSchema;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    infra::example::init_logging_with("info,http_json=warn");
    let flags = infra::example::Flags::parse(&["--breaking-event"])
        .map_err(anyhow::Error::msg)?;
    if flags.has("--breaking-event") {
        return breaking_event();
    }
    http_document()?;
    event_schemas()?;
    fuzzers_findings().await?;
    info!("done: every contract holds");
    Ok(())
}

/// The orders API's document: what it lists, and whether the committed copy is current.
fn http_document() -> anyhow::Result<()> {
    let doc = serde_json::to_value(document())?;
    let version = doc["openapi"].as_str().context("openapi")?;
    info!("orders API: OpenAPI {version}, generated from the code");
    for (path, item) in doc["paths"].as_object().context("paths")? {
        for (method, operation) in item.as_object().context("operations")? {
            let statuses: Vec<&String> = operation["responses"]
                .as_object()
                .context("responses")?
                .keys()
                .collect();
            let retired =
                if operation["deprecated"] == true { " (deprecated)" } else { "" };
            info!(
                "  {:<4} {path:<17} -> {}{retired}",
                method.to_uppercase(),
                statuses.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")
            );
        }
    }
    let committed =
        concat!(env!("CARGO_MANIFEST_DIR"), "/../http-json/openapi.json");
    let kept = std::fs::read_to_string(committed)
        .with_context(|| format!("reading {committed}"))?;
    let mut fresh = document().to_pretty_json()?;
    fresh.push('\n');
    ensure!(
        kept == fresh,
        "patterns/http-json/openapi.json is not what the code generates: \
         OPENAPI_BLESS=1 cargo test -p http-json --test openapi rewrites it"
    );
    info!("patterns/http-json/openapi.json is what the code generates");
    Ok(())
}

/// Each committed version of `OrderPlaced`, and the promise between neighbours.
fn event_schemas() -> anyhow::Result<()> {
    let versions = order_placed_versions()?;
    for (version, schema) in &versions {
        let path = order_placed_file(*version);
        let kept = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        ensure!(kept == committed_form(schema)?, "{} has changed", path.display());
        let fields = schema["properties"].as_object().context("properties")?;
        let required = schema["required"].as_array().context("required")?;
        info!(
            "OrderPlaced v{version}: {} fields, {} required (schemas/order_placed.v{version}.json)",
            fields.len(),
            required.len()
        );
    }
    for pair in versions.windows(2) {
        let ((a, old), (b, new)) = (&pair[0], &pair[1]);
        let found = breaks(old, new, PROMISE);
        ensure!(found.is_empty(), "v{a} -> v{b} breaks the promise: {found:?}");
        info!("OrderPlaced v{a} -> v{b}: {PROMISE:?} compatibility kept");
    }
    Ok(())
}

/// Inputs the fuzzers found, sent to a running orders service: each refused with a problem.
async fn fuzzers_findings() -> anyhow::Result<()> {
    let service = spawn(ServiceConfig::default()).await?;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    let url = format!("{}/v2/orders", service.base_url());
    let line = |price: u64| json!({"sku": "kettle", "quantity": 1, "unit_price_cents": price});
    let inputs = [
        ("an order as arrays", json!(["c-42", [["kettle", 1, 2899]]])),
        (
            "a price of 2^63",
            json!({"customer_id": "c-42", "lines": [line(1 << 63)]}),
        ),
        ("a valid order", json!({"customer_id": "c-42", "lines": [line(2899)]})),
    ];
    for (i, (what, body)) in inputs.into_iter().enumerate() {
        let response = http
            .post(&url)
            .header("idempotency-key", format!("finding-{i}"))
            .json(&body)
            .send()
            .await?;
        let status = response.status();
        let answer: Value = response.json().await?;
        if status.is_success() {
            info!("{what}: {status}, order {}", answer["id"]);
        } else {
            // A field's own complaint when there is one, else the problem's.
            let field = &answer["errors"][0];
            let detail = field["detail"].as_str().or(answer["detail"].as_str());
            let at = field["pointer"].as_str().unwrap_or("body");
            info!("{what}: {status} at {at}: {}", detail.unwrap_or_default());
        }
        ensure!(
            status.is_success() == (what == "a valid order"),
            "{what}: {status}"
        );
    }
    service.shutdown().await?;
    Ok(())
}

/// v3 as a producer might propose it: `currency` becomes required.
#[derive(Serialize, Deserialize, ToSchema)]
struct OrderPlacedV3 {
    order_id: String,
    customer_id: String,
    total_cents: u64,
    currency: String,
}

fn breaking_event() -> anyhow::Result<()> {
    let versions = order_placed_versions()?;
    let proposed = generated::<OrderPlacedV3>()?;
    info!("proposed: OrderPlaced v3, `currency` required");
    let mut refused = false;
    for (version, schema) in &versions {
        for reason in breaks(schema, &proposed, PROMISE) {
            warn!("refused against v{version}: {reason}");
            refused = true;
        }
    }
    if !refused {
        bail!("the breaking v3 was not caught");
    }
    info!(
        "done: a v3 reader would fail on payloads without a currency; keep it optional"
    );
    Ok(())
}
