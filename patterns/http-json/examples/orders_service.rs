//! The orders service on its own, for curl: it serves until Ctrl-C and prints requests to try.
//!
//! Serve it: `cargo run --example orders_service`            on http://127.0.0.1:8081
//! Check it: `cargo run --example orders_service -- --once`  on a free port: sends the requests
//!                                                           it prints itself, checks the
//!                                                           answers, exits 0
//!
//! Ctrl-C stops it gracefully: it stops accepting, lets requests already running finish, then
//! exits. Logs go to stdout, one line per request, with its correlation id.

use std::time::Duration;

use anyhow::{Context, ensure};
use http_json::client::OrdersClient;
use http_json::orders::{NewOrder, OrderLine};
use http_json::server::{AppState, ServiceConfig, serve};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tracing::{error, info};

/// The documented port of the standalone orders service.
const ADDR: &str = "127.0.0.1:8081";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    infra::example::init_logging();
    let flags =
        infra::example::Flags::parse(&["--once"]).map_err(anyhow::Error::msg)?;
    let once = flags.has("--once");

    let bind = if once { "127.0.0.1:0" } else { ADDR };
    let listener = TcpListener::bind(bind).await.with_context(|| {
        format!("cannot listen on {bind}: is another copy running?")
    })?;
    let addr = listener.local_addr()?;
    let state = AppState::new(ServiceConfig::default());
    info!("orders-service listening on http://{addr}; Ctrl-C stops it");
    print_requests(&format!("http://{addr}"));

    if !once {
        serve(listener, state, async {
            match tokio::signal::ctrl_c().await {
                Ok(()) => {
                    info!("Ctrl-C: finishing the requests in flight, then stopping")
                }
                Err(error) => {
                    error!(%error, "cannot listen for Ctrl-C; stopping now")
                }
            }
        })
        .await?;
        info!("stopped");
        return Ok(());
    }

    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, state, async {
        let _stop_or_handle_dropped = stopped.await;
    }));
    self_check(&format!("http://{addr}")).await?;
    // Refused only if the server already ended: the next line returns why.
    let _unless_already_stopped = stop.send(());
    server.await??;
    info!(
        "done: created, replayed, read, listed and refused as the curl lines show"
    );
    Ok(())
}

fn print_requests(base: &str) {
    let body = r#"{"customer_id":"c-42","lines":[{"sku":"mug-espresso","quantity":2,"unit_price_cents":1250}]}"#;
    println!("Try (each in another terminal):");
    println!(
        "  curl -i -X POST {base}/v1/orders -H 'content-type: application/json' \
         -H 'idempotency-key: order-0001' -d '{body}'"
    );
    println!("  (the same command again replays the answer: no second order)");
    println!("  curl -s {base}/v2/orders/<id from the Location header>");
    println!("  curl -s '{base}/v1/orders?customer_id=c-42'");
    println!(
        "  curl -si {base}/v1/orders | grep -iE '^(deprecation|sunset|link)'   # v1 is retiring"
    );
    println!(
        "  curl -i -X POST {base}/v1/orders -H 'content-type: application/json' \
         -H 'idempotency-key: order-0002' -d '{{\"customer_id\": \"c-42\"}}'"
    );
}

/// Sends what the printed curl lines send, and checks each answer.
async fn self_check(base: &str) -> anyhow::Result<()> {
    let client = OrdersClient::new(base.to_owned(), Duration::from_secs(5))?;
    let order = NewOrder {
        customer_id: "c-42".into(),
        lines: vec![OrderLine {
            sku: "mug-espresso".into(),
            quantity: 2,
            unit_price_cents: 1250,
        }],
    };
    let first = client.create("order-0001", &order).await?;
    let again = client.create("order-0001", &order).await?;
    ensure!(first.order.id == again.order.id && again.replayed, "not replayed");
    info!("created {} and replayed it under the same key", first.order.id);
    let read = client.get_v2(first.order.id).await?;
    info!("read it back: total {} {}", read.total.amount, read.total.currency);
    let listed = client.list(Some("c-42")).await?;
    ensure!(listed.len() == 1, "expected one order, listed {}", listed.len());
    info!("listed c-42's orders: {}", listed.len());
    let answer =
        reqwest::get(format!("{base}/v1/orders")).await?.error_for_status()?;
    let header = |name: &str| {
        let value = answer.headers().get(name).and_then(|v| v.to_str().ok());
        value
            .map(str::to_owned)
            .with_context(|| format!("/v1 answered without {name}"))
    };
    info!(
        "/v1 is retiring: deprecation {}, sunset {}, link {}",
        header("deprecation")?,
        header("sunset")?,
        header("link")?
    );
    let problem = client
        .post_raw(
            "/v1/orders",
            "application/json",
            br#"{"customer_id": "c-42"}"#.to_vec(),
            "order-0002",
        )
        .await?;
    ensure!(problem.status == 422, "expected 422, got {}", problem.status);
    info!(
        "bad request refused: {} {}: {}",
        problem.status, problem.title, problem.detail
    );
    Ok(())
}
