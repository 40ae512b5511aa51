//! What the capstone does with a running shop: place a batch of checkouts through the gateway
//! with real tokens, follow each one to its end, and check the shop's promises from every
//! service's own database (not from logs, and not from what the saga believes).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use gateway::auth::Issuer;
use orchestration::participant;
use shop_domain::inventory::Hold;
use shop_domain::orders::Order;
use shop_domain::payments::Payment;
use shop_domain::shipping::Shipment;
use shop_domain::{Line, Seed, Service};
use tracing::{info, warn};

use crate::config::{Env, Style};
use crate::probe::AmqpProbe;
use crate::roles::edge::{AUDIENCE, ISSUER, READ, WRITE};
use crate::roles::intake::CheckoutView;

/// One checkout to place: who, what, and what the shop should make of it without faults.
#[derive(Clone, Debug)]
pub struct Planned {
    /// The idempotency key, which becomes the order id.
    pub key: String,
    /// The customer: the token's subject.
    pub customer: String,
    /// What to buy.
    pub lines: Vec<Line>,
    /// Where to.
    pub ship_to: String,
    /// The W3C trace id of this checkout (32 hex digits): every request the client sends for it
    /// carries it in `traceparent`, so the services' spans and log lines for it share it.
    pub trace_id: String,
}

impl Planned {
    /// A checkout shipped to NL, with a trace of its own.
    pub fn new(key: String, customer: &str, lines: Vec<Line>) -> Planned {
        let trace_id = uuid::Uuid::new_v4().simple().to_string();
        Planned {
            key,
            customer: customer.into(),
            lines,
            ship_to: "NL".into(),
            trace_id,
        }
    }

    /// A `traceparent` header for one more request of this checkout: its trace, a fresh span id,
    /// sampled.
    pub fn traceparent(&self) -> String {
        let span = fastrand::u64(1..);
        format!("00-{}-{span:016x}-01", self.trace_id)
    }
}

/// The batch every run places: most succeed, Bob's card is declined, and three customers' worth of
/// mugs meet a stock of three (two of each at a time: one confirmed, two out of stock).
pub fn batch(run: &str) -> Vec<Planned> {
    let line = |sku: &str, quantity| Line { sku: sku.into(), quantity };
    let mut planned = vec![];
    let mut add = |customer: &str, lines: Vec<Line>| {
        let key = format!("{run}-{}", planned.len() + 1);
        planned.push(Planned::new(key, customer, lines));
    };
    for _ in 0..3 {
        add("c-ada", vec![line("kettle", 1), line("teapot", 1)]);
        add("c-cyd", vec![line("kettle", 2)]);
    }
    add("c-bob", vec![line("kettle", 1)]);
    add("c-bob", vec![line("teapot", 1)]);
    for customer in ["c-ada", "c-cyd", "c-ada"] {
        add(customer, vec![line("mug", 2)]);
    }
    planned
}

/// What the gateway answers to `GET /orders/{id}`: the order, its payment, and the parts it
/// could not fetch.
pub type OrderAnswer =
    gateway::compose::CheckoutView<crate::roles::reads::OrderView>;

/// A client of the gateway, as a customer's app would be: a token per customer, and retries with
/// the same idempotency key when the answer is lost or the shop is restarting.
pub struct Client {
    base: String,
    issuer: Issuer,
    http: reqwest::Client,
}

impl Client {
    /// A client of the gateway at `base`, whose tokens are signed with `key`.
    pub fn new(base: String, key: &[u8]) -> anyhow::Result<Client> {
        let http =
            reqwest::Client::builder().timeout(Duration::from_secs(6)).build()?;
        Ok(Client { base, issuer: Issuer::hs256(key, ISSUER, AUDIENCE), http })
    }

    /// A token for `customer`, valid for an hour.
    pub fn token(&self, customer: &str) -> anyhow::Result<String> {
        Ok(self.issuer.mint(customer, &format!("{READ} {WRITE}"), 3600)?)
    }

    /// Places `planned`; on a lost answer or a `502`/`503`/`504` it tries again with the same
    /// key, for up to `patience`. Returns the order id.
    pub async fn place(
        &self,
        planned: &Planned,
        patience: Duration,
    ) -> anyhow::Result<String> {
        let token = self.token(&planned.customer)?;
        let body = serde_json::json!({ "lines": planned.lines, "ship_to": planned.ship_to });
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let sent = self
                .http
                .post(format!("{}/checkouts", self.base))
                .bearer_auth(&token)
                .header("idempotency-key", &planned.key)
                .header("traceparent", planned.traceparent())
                .json(&body)
                .send()
                .await;
            let why = match sent {
                Ok(answer) if answer.status() == reqwest::StatusCode::ACCEPTED => {
                    return Ok(planned.key.clone());
                }
                Ok(answer) if answer.status().is_server_error() => {
                    format!(
                        "{}: {}",
                        answer.status(),
                        answer.text().await.unwrap_or_default()
                    )
                }
                Ok(answer) => {
                    let status = answer.status();
                    bail!(
                        "{} refused with {status}: {}",
                        planned.key,
                        answer.text().await?
                    );
                }
                Err(error) => error.to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                bail!("{} was not accepted within {patience:?}: {why}", planned.key);
            }
            info!(key = %planned.key, "not accepted yet ({why}); trying again with the same key");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Asks where a checkout stands, in a trace of its own.
    pub async fn view(
        &self,
        customer: &str,
        order_id: &str,
    ) -> anyhow::Result<CheckoutView> {
        self.ask(customer, order_id, None).await
    }

    async fn ask(
        &self,
        customer: &str,
        order_id: &str,
        traceparent: Option<String>,
    ) -> anyhow::Result<CheckoutView> {
        let mut request = self
            .http
            .get(format!("{}/checkouts/{order_id}", self.base))
            .bearer_auth(self.token(customer)?);
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        let answer = request.send().await?;
        let status = answer.status();
        if !status.is_success() {
            bail!("{order_id}: {status}: {}", answer.text().await?);
        }
        Ok(answer.json().await?)
    }

    /// The order as the orders service records it and its payment as the payments service does,
    /// put together by the gateway (`GET /orders/{id}`); `None` when the gateway answers `404`:
    /// orders has no such order of this customer's.
    pub async fn order(
        &self,
        customer: &str,
        order_id: &str,
    ) -> anyhow::Result<Option<OrderAnswer>> {
        self.order_with(customer, order_id, None).await
    }

    /// [`Client::order`] for a planned checkout, asked in the checkout's trace: the gateway
    /// carries it on to orders and payments.
    pub async fn order_in(
        &self,
        planned: &Planned,
    ) -> anyhow::Result<Option<OrderAnswer>> {
        let traceparent = Some(planned.traceparent());
        self.order_with(&planned.customer, &planned.key, traceparent).await
    }

    async fn order_with(
        &self,
        customer: &str,
        order_id: &str,
        traceparent: Option<String>,
    ) -> anyhow::Result<Option<OrderAnswer>> {
        let mut request = self
            .http
            .get(format!("{}/orders/{order_id}", self.base))
            .bearer_auth(self.token(customer)?);
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        let answer = request.send().await?;
        let status = answer.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            bail!("{order_id}: {status}: {}", answer.text().await?);
        }
        Ok(Some(answer.json().await?))
    }

    /// Asks until the checkout has ended, for up to `patience`, each time in the checkout's
    /// trace; a shop that is restarting is asked again.
    pub async fn follow(
        &self,
        planned: &Planned,
        patience: Duration,
    ) -> anyhow::Result<CheckoutView> {
        let (customer, order_id) = (&planned.customer, &planned.key);
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let asked = self.ask(customer, order_id, Some(planned.traceparent()));
            let last = match asked.await {
                Ok(view) if view.is_final() => return Ok(view),
                Ok(view) => format!("{} so far", view.status),
                Err(error) => error.to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                bail!("{order_id} did not end within {patience:?} ({last})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// What a run found, service by service.
#[derive(Debug, Default)]
pub struct Findings {
    /// Commands each participant applied (from its inbox).
    pub applied: BTreeMap<&'static str, usize>,
    /// Broken promises, one sentence each; empty when the shop kept them all.
    pub broken: Vec<String>,
}

/// Where the services keep their records: the participants' schemas (orchestration), or the
/// choreographed services' tables, read through the choreography crate's view of an order.
enum Records {
    Orchestrated(Box<deadpool_postgres::Object>),
    Choreographed(Box<choreography::shop::Shop>),
}

/// One order as the four services record it: the names of the hold, the payment, the shipment
/// and the order status (`none` where a service has no record).
struct Seen {
    hold: String,
    paid: String,
    shipped: String,
    settled: String,
}

impl Records {
    async fn open(env: &Env) -> anyhow::Result<Records> {
        Ok(match env.style {
            Style::Orchestration => {
                let pool = orchestration::pool(&env.database_url, 1)?;
                let db = pool.get().await.context("reading the records")?;
                Records::Orchestrated(Box::new(db))
            }
            Style::Choreography => {
                // A view of the shop that runs none of its services.
                let config = crate::roles::choreographed::shop_config(env);
                let shop = choreography::shop::Shop::start_only(config, &[]).await?;
                Records::Choreographed(Box::new(shop))
            }
        })
    }

    async fn order(&self, env: &Env, id: &str) -> anyhow::Result<Seen> {
        let names = &env.names;
        let name = |n: Option<&str>| n.unwrap_or("none").to_owned();
        Ok(match self {
            Records::Orchestrated(db) => {
                let key = |what: &str| format!("{what}:{id}");
                let hold: Option<Hold> =
                    participant::record(db, names, Service::Inventory, &key("hold"))
                        .await?;
                let payment: Option<Payment> = participant::record(
                    db,
                    names,
                    Service::Payments,
                    &key("payment"),
                )
                .await?;
                let shipment: Option<Shipment> = participant::record(
                    db,
                    names,
                    Service::Shipping,
                    &key("shipment"),
                )
                .await?;
                let order: Option<Order> =
                    participant::record(db, names, Service::Orders, &key("order"))
                        .await?;
                Seen {
                    hold: name(hold.as_ref().map(Hold::name)),
                    paid: name(payment.as_ref().map(|p| p.status.name())),
                    shipped: name(shipment.as_ref().map(|s| s.status.name())),
                    settled: name(order.as_ref().map(|o| o.status.name())),
                }
            }
            Records::Choreographed(shop) => {
                let o = shop.outcome(id).await?;
                Seen {
                    hold: name(o.hold.as_ref().map(Hold::name)),
                    paid: name(o.payment.as_ref().map(|p| p.status.name())),
                    shipped: name(o.shipment.as_ref().map(|s| s.status.name())),
                    settled: name(o.order.as_ref().map(|o| o.status.name())),
                }
            }
        })
    }

    /// Every SKU's stock and every customer's balance.
    async fn totals(
        &self,
        env: &Env,
        seed: &Seed,
    ) -> anyhow::Result<(BTreeMap<String, u32>, BTreeMap<String, u64>)> {
        let (mut stock, mut money) = (BTreeMap::new(), BTreeMap::new());
        match self {
            Records::Orchestrated(db) => {
                let names = &env.names;
                for (sku, _) in &seed.stock {
                    let key = format!("stock:{sku}");
                    let have: Option<u32> =
                        participant::record(db, names, Service::Inventory, &key)
                            .await?;
                    stock.insert(sku.clone(), have.context("no stock record")?);
                }
                for (customer, _) in &seed.balances {
                    let key = format!("balance:{customer}");
                    let have: Option<u64> =
                        participant::record(db, names, Service::Payments, &key)
                            .await?;
                    money.insert(
                        customer.clone(),
                        have.context("no balance record")?,
                    );
                }
            }
            Records::Choreographed(shop) => {
                // Any order id gives the whole stock and every balance.
                let o = shop.outcome("-").await?;
                stock = o.stock;
                money = o.balances;
            }
        }
        Ok((stock, money))
    }

    /// Messages no service could read: the dead-letter queue, or topics.
    async fn dead_letters(&self, env: &Env) -> Result<u64, String> {
        match self {
            Records::Orchestrated(_) => {
                let queue = env.names.dead_letters();
                AmqpProbe::new(env.amqp.clone())
                    .messages(&queue)
                    .await
                    .map(u64::from)
            }
            Records::Choreographed(shop) => {
                let mut total = 0;
                for service in Service::ALL {
                    let n = shop
                        .dead_letters_of(service)
                        .await
                        .map_err(|e| e.to_string())?;
                    total += n.unsigned_abs();
                }
                Ok(total)
            }
        }
    }

    async fn close(self) {
        if let Records::Choreographed(shop) = self {
            shop.stop().await;
        }
    }
}

/// Checks what the shop promises, from each service's own records: every checkout ended and
/// none is stuck; stock and money are conserved (each confirmed order took its stock and its
/// money once, each cancelled one took nothing in the end); each service's record of each order
/// agrees with how the checkout ended; nothing was dead-lettered.
pub async fn check(
    env: &Env,
    seed: &Seed,
    placed: &[(Planned, CheckoutView)],
) -> anyhow::Result<Findings> {
    let records = Records::open(env).await?;
    let found = check_records(&records, env, seed, placed).await;
    records.close().await;
    found
}

async fn check_records(
    records: &Records,
    env: &Env,
    seed: &Seed,
    placed: &[(Planned, CheckoutView)],
) -> anyhow::Result<Findings> {
    let mut findings = Findings::default();
    let mut broken = |text: String| {
        warn!("broken promise: {text}");
        findings.broken.push(text);
    };
    let mut stock: BTreeMap<String, i64> =
        seed.stock.iter().map(|(sku, n)| (sku.clone(), i64::from(*n))).collect();
    let mut money: BTreeMap<String, i64> = BTreeMap::new();
    for (customer, cents) in &seed.balances {
        money.insert(customer.clone(), i64::try_from(*cents)?);
    }
    for (planned, view) in placed {
        let id = view.order_id.as_str();
        let seen = records.order(env, id).await?;
        let (hold, paid, shipped, settled) = (
            seen.hold.as_str(),
            seen.paid.as_str(),
            seen.shipped.as_str(),
            seen.settled.as_str(),
        );
        let told = format!(
            "hold {hold}, payment {paid}, shipment {shipped}, order {settled}"
        );
        match view.status.as_str() {
            "confirmed" => {
                let all = ("reserved", "authorized", "scheduled", "confirmed");
                if (hold, paid, shipped, settled) != all {
                    broken(format!(
                        "{id} is confirmed, but the services say: {told}"
                    ));
                }
                for line in &planned.lines {
                    *stock.entry(line.sku.clone()).or_default() -=
                        i64::from(line.quantity);
                }
                let total: u64 = planned
                    .lines
                    .iter()
                    .map(|l| {
                        crate::shop::price(&l.sku).unwrap_or(0)
                            * u64::from(l.quantity)
                    })
                    .sum();
                *money.entry(planned.customer.clone()).or_default() -=
                    i64::try_from(total)?;
            }
            "cancelled" => {
                let kept = hold == "reserved"
                    || paid == "authorized"
                    || shipped == "scheduled";
                if kept || settled == "confirmed" {
                    broken(format!(
                        "{id} is cancelled, but the services say: {told}"
                    ));
                }
                if view.reason.as_deref().is_none_or(str::is_empty) {
                    broken(format!("{id} is cancelled without a reason"));
                }
            }
            other => broken(format!("{id} ended {other}: {:?}", view.reason)),
        }
    }
    let (have_stock, have_money) = records.totals(env, seed).await?;
    for (sku, expected) in &stock {
        let have = have_stock.get(sku).copied().map(i64::from);
        if have != Some(*expected) {
            broken(format!(
                "stock of {sku} is {have:?}, the confirmed orders leave {expected}"
            ));
        }
    }
    for (customer, expected) in &money {
        let have =
            have_money.get(customer).copied().map(i64::try_from).transpose()?;
        if have != Some(*expected) {
            broken(format!(
                "{customer}'s balance is {have:?}, the confirmed orders leave {expected}"
            ));
        }
    }
    match records.dead_letters(env).await {
        Ok(0) => {}
        Ok(n) => broken(format!("{n} message(s) were dead-lettered")),
        Err(error) => {
            broken(format!("the dead letters could not be counted: {error}"))
        }
    }
    let pool = orchestration::pool(&env.database_url, 1)?;
    let db = pool.get().await?;
    for broken_promise in untold(&db, env, placed).await? {
        broken(broken_promise);
    }
    for service in Service::ALL {
        findings
            .applied
            .insert(service.name(), applied_by(&db, env, service).await?);
    }
    Ok(findings)
}

/// The checkouts whose customer the notifications service has not told how it ended, or told
/// something else, one sentence each; read from its own table. It learns of an ending from the
/// orders service's event, after the checkout's view has it, so this waits up to 30 s for all.
async fn untold(
    db: &tokio_postgres::Client,
    env: &Env,
    placed: &[(Planned, CheckoutView)],
) -> anyhow::Result<Vec<String>> {
    let ids: Vec<String> = placed.iter().map(|(_, v)| v.order_id.clone()).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let told = loop {
        let told = crate::roles::notifications::told(db, env, &ids).await?;
        if told.len() == ids.len() || tokio::time::Instant::now() >= deadline {
            break told;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut broken = Vec::new();
    for (_, view) in placed {
        let id = &view.order_id;
        match told.get(id) {
            None => broken.push(format!("the customer of {id} was never told how it ended")),
            Some((outcome, reason)) if (outcome, reason) != (&view.status, &view.reason) => {
                broken.push(format!(
                    "the customer of {id} was told {outcome} ({reason:?}), but it ended {} ({:?})",
                    view.status, view.reason
                ))
            }
            Some(_) => {}
        }
    }
    Ok(broken)
}

/// How many messages `service` has applied: commands in its inbox (orchestration) or events
/// in its inbox (choreography).
pub async fn applied_by(
    db: &tokio_postgres::Client,
    env: &Env,
    service: Service,
) -> anyhow::Result<usize> {
    Ok(match env.style {
        Style::Orchestration => {
            participant::applied(db, &env.names, service).await?.len()
        }
        Style::Choreography => {
            let schemas = choreography::Schemas::new(&env.names.prefix);
            let sql = format!("SELECT count(*) FROM {}.inbox", schemas.of(service));
            let n: i64 = db.query_one(&sql, &[]).await?.try_get(0)?;
            usize::try_from(n)?
        }
    })
}

/// How many commands the participants have applied in all, from their inboxes: how far the
/// shop's work has gone, for a fault to be injected at a chosen point.
pub async fn applied_total(
    db: &tokio_postgres::Client,
    env: &Env,
) -> anyhow::Result<usize> {
    let mut applied = 0;
    for service in Service::ALL {
        applied += applied_by(db, env, service).await?;
    }
    Ok(applied)
}

/// Returns once the participants have applied at least `commands` commands in all;
/// fails after a minute with how far they got.
pub async fn when_applied(env: &Env, commands: usize) -> anyhow::Result<()> {
    let pool = orchestration::pool(&env.database_url, 1)?;
    let db = pool.get().await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let applied = applied_total(&db, env).await?;
        if applied >= commands {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("only {applied} commands were applied in 60 s, not {commands}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
