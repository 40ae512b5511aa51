//! One checkout through four services that nobody coordinates: orders, inventory, payments and
//! shipping each react to the others' events on Kafka, write their own PostgreSQL schema, and
//! publish through their own outbox relay. Every line carries the checkout's correlation id and
//! the id of the event that caused it.
//!
//! Run it:   `cargo run --example checkout_choreography`
//! Break it: `cargo run --example checkout_choreography -- --decline`  payment declined:
//!                                    the reservation is released, the order cancelled
//!           `cargo run --example checkout_choreography -- --out-of-stock`  cancelled at once
//!           `cargo run --example checkout_choreography -- --undeliverable`  no carrier: refund,
//!                                    release, cancel
//!           `cargo run --example checkout_choreography -- --crash-relay`  inventory's relay dies
//!                                    between publishing and marking; the copy is absorbed
//!           `cargo run --example checkout_choreography -- --no-outbox`  inventory commits, then
//!                                    dies before publishing: the event is lost for good
//!
//! Needs Kafka at `KAFKA_BROKERS` and PostgreSQL at `DATABASE_URL`; without them it says how to
//! start them, in one line.

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use choreography::shop::{Config, Outcome, Shop, correlation_id};
use shop_domain::inventory::Hold;
use shop_domain::orders::OrderStatus;
use shop_domain::shipping::ShipmentStatus;
use shop_domain::{Line, OrderPlaced, Seed, Service, euros};
use tracing::{Span, info, info_span, warn};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    infra::example::init_logging();
    let known = [
        "--decline",
        "--out-of-stock",
        "--undeliverable",
        "--crash-relay",
        "--no-outbox",
    ];
    let flags = infra::example::Flags::parse(&known).map_err(anyhow::Error::msg)?;
    let (brokers, url) = (infra::kafka_brokers(), infra::database_url());
    require(&infra::first_kafka_broker(), "Kafka", &brokers).await?;
    require(&postgres_address(&url), "PostgreSQL", &url).await?;

    let stock = if flags.has("--out-of-stock") { 1 } else { 5 };
    let balance = if flags.has("--decline") { 2000 } else { 10_000 };
    let seed = Seed {
        stock: vec![("kettle".into(), stock)],
        balances: vec![("c-42".into(), balance)],
        destinations: vec!["NL".into(), "DE".into(), "BE".into()],
    };
    let mut config = Config::new(&brokers, &url, "checkout", seed);
    if flags.has("--crash-relay") {
        config.faults.relay_dies_before_mark = [Service::Inventory].into();
    }
    if flags.has("--no-outbox") {
        config.faults.dual_write = [Service::Inventory].into();
    }
    let order = OrderPlaced {
        order_id: "o-1001".into(),
        customer_id: "c-42".into(),
        lines: vec![Line { sku: "kettle".into(), quantity: 2 }],
        total_cents: 5798,
        ship_to: if flags.has("--undeliverable") { "AQ" } else { "NL" }.into(),
    };
    let faults = config.faults.clone();
    let shop = Shop::start(config).await.context("cannot start the shop")?;
    let correlation = correlation_id();
    let span = info_span!("checkout", correlation_id = %correlation);
    let topics = shop.topics().of(Service::Orders).replace("-orders", "-*");
    let who = "orders, inventory, payments, shipping: a schema and a group each";
    info!(parent: &span, "{who}; topics {topics}");
    shop.place(order, &correlation).await?;

    if flags.has("--no-outbox") {
        lost_event(&shop, &span).await?;
    } else {
        let outcome = shop.settle(&["o-1001"], WAIT).await?.remove(0);
        shop.drained(WAIT).await?;
        if faults.relay_dies_before_mark.contains(&Service::Inventory) {
            let absorbed = |s: &choreography::shop::Stats| {
                s.of(Service::Payments).duplicates.load(Relaxed) >= 1
            };
            shop.wait_until("the duplicate", WAIT, absorbed).await?;
            info!(parent: &span, "the relay sent StockReserved twice; payments applied it once");
        }
        report(&span, &outcome, stock, balance);
        check(&flags, &outcome, stock, balance)?;
    }
    shop.shut_down().await?;
    Ok(())
}

use std::sync::atomic::Ordering::Relaxed;

/// Prints what each service ended with.
fn report(span: &Span, outcome: &Outcome, stock: u32, balance: u64) {
    let order = outcome.order.as_ref().map(|o| match &o.status {
        OrderStatus::Placed => o.status.name().to_owned(),
        OrderStatus::Confirmed { tracking } => format!("confirmed ({tracking})"),
        OrderStatus::Cancelled { reason } => format!("cancelled: {reason}"),
    });
    info!(parent: span, "orders:    o-1001 {}", order.as_deref().unwrap_or("no record"));
    let hold = outcome.hold.as_ref().map_or("none", Hold::name);
    let left = outcome.stock.get("kettle").copied().unwrap_or(0);
    info!(parent: span, "inventory: {hold}; kettles {stock} -> {left}");
    let payment = outcome.payment.as_ref().map(|p| p.status.name());
    let now = outcome.balances.get("c-42").copied().unwrap_or(0);
    let (before, now) = (euros(balance), euros(now));
    let payment = payment.unwrap_or("none");
    info!(parent: span, "payments:  {payment}; c-42 balance {before} -> {now} EUR");
    let shipment = outcome.shipment.as_ref().map(|s| match &s.status {
        ShipmentStatus::Pending => s.status.name().to_owned(),
        ShipmentStatus::Scheduled { tracking } => format!("scheduled ({tracking})"),
        ShipmentStatus::Failed { reason } => format!("failed: {reason}"),
        ShipmentStatus::Cancelled { .. } => s.status.name().to_owned(),
    });
    info!(parent: span, "shipping:  {}", shipment.as_deref().unwrap_or("no record"));
    let effects: Vec<String> =
        outcome.emitted.iter().map(|(kind, n)| format!("{kind} x{n}")).collect();
    info!(parent: span, "events: {}", effects.join(", "));
}

/// Checks the outcome the flags promise; the example fails if it differs.
fn check(
    flags: &infra::example::Flags,
    outcome: &Outcome,
    stock: u32,
    balance: u64,
) -> anyhow::Result<()> {
    let order = outcome.order.as_ref().context("no order")?;
    let left = outcome.stock.get("kettle").copied().unwrap_or(0);
    let now = outcome.balances.get("c-42").copied().unwrap_or(0);
    ensure!(outcome.emitted.values().all(|n| *n == 1), "an effect happened twice");
    let (confirmed, verdict) = if flags.has("--decline") {
        (false, "payment declined: the reservation released, the order cancelled")
    } else if flags.has("--out-of-stock") {
        (false, "out of stock: nothing to undo, the order cancelled")
    } else if flags.has("--undeliverable") {
        (false, "no carrier: refunded, released, the order cancelled")
    } else {
        (true, "the order is confirmed")
    };
    if confirmed {
        ensure!(
            matches!(order.status, OrderStatus::Confirmed { .. }),
            "not confirmed"
        );
        ensure!(
            left == stock - 2 && now == balance - 5798,
            "reserved and charged once"
        );
    } else {
        let cancelled = matches!(order.status, OrderStatus::Cancelled { .. });
        ensure!(cancelled, "not cancelled");
        ensure!(left == stock && now == balance, "everything given back once");
    }
    info!("done: {verdict}; every service agrees, each effect once");
    Ok(())
}

/// `--no-outbox`: inventory committed its reservation and died before it
/// published `StockReserved`. After its restart, the redelivered `OrderPlaced`
/// is a duplicate, so nothing is emitted: the event is gone.
async fn lost_event(shop: &Shop, span: &Span) -> anyhow::Result<()> {
    let redelivered = |s: &choreography::shop::Stats| {
        let inventory = s.of(Service::Inventory);
        inventory.crashes.load(Relaxed) == 1
            && inventory.duplicates.load(Relaxed) == 1
    };
    shop.wait_until("the redelivery", WAIT, redelivered).await?;
    let sent = shop.messages_in(Service::Inventory).await?;
    let outcome = shop.outcome("o-1001").await?;
    let waiting = outcome.payment.as_ref().is_some_and(|p| !p.stock_reserved);
    let held = matches!(outcome.hold, Some(Hold::Reserved { .. }));
    let placed =
        outcome.order.as_ref().map(|o| &o.status) == Some(&OrderStatus::Placed);
    ensure!(sent == 0 && waiting && held && placed, "the event was not lost");
    let lost = "StockReserved is lost: inventory's topic holds";
    warn!(parent: span, "{lost} {sent} events");
    let stuck = "payments waits for StockReserved";
    warn!(parent: span, "inventory holds 2 kettles for o-1001; {stuck}");
    let order = "neither confirmed nor cancelled";
    warn!(parent: span, "orders: o-1001 stays placed, {order}");
    let why = "one crash between commit and publish stalled this checkout";
    info!("done: without an outbox, {why} for good");
    Ok(())
}

/// `host:port` of a PostgreSQL URL (`postgres://user:pw@host:port/db`).
fn postgres_address(url: &str) -> String {
    let rest = url.split_once("@").map_or(url, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest).to_owned()
}

/// Fails with one actionable line when nothing listens at `address`.
async fn require(address: &str, what: &str, shown: &str) -> anyhow::Result<()> {
    let connect = tokio::net::TcpStream::connect(address);
    match tokio::time::timeout(Duration::from_secs(2), connect).await {
        Ok(Ok(_)) => Ok(()),
        _ => bail!(
            "{what} does not answer at {shown}: start the brokers with `cargo xtask brokers up` \
             (or `docker compose up -d --wait`)"
        ),
    }
}
