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
//!
//! The client, the gateway and the services share one thread. In production each is a process
//! of its own; here, on a multi-threaded runtime, a request would wait for wakeups between the
//! runtime's worker threads that come from putting three programs in one process, and on a
//! 2-core machine those waits were most of what the gateway seemed to add. A proxy that does
//! nothing but pass the request on is measured beside the gateway: the difference between the
//! two is what the gateway's own work (token, limit, routing) costs.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use compare::stats::Sample;
use gateway::auth::Issuer;
use gateway::limit::Rate;
use gateway::{Config, Secret};
use serde_json::{Value, json};

const ROUNDS: usize = 2_000;

#[tokio::main(flavor = "current_thread")]
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
    let passed =
        format!("{}/v2/orders/{id}", pass_through(orders.base_url()).await?);
    let routed = format!("{gw}/orders/{id}");
    let [direct, passed, routed] = measure([
        Box::new(|| http.get(&direct)) as Request<'_>,
        Box::new(|| http.get(&passed)),
        Box::new(|| http.get(&routed).bearer_auth(&token)),
    ])
    .await?;
    report("GET order, direct to orders", &direct);
    report("GET order, through a proxy that does nothing", &passed);
    report("GET order, through the gateway", &routed);
    let p50 = |s: &Sample| s.percentile(50.0).as_micros() as i128;
    println!(
        "added at p50: {} us by the hop, {} us by the gateway's own work",
        p50(&passed) - p50(&direct),
        p50(&routed) - p50(&passed)
    );

    let calls = || {
        let g = &running.gateway;
        g.orders.backend.calls() + g.payments.backend.calls()
    };
    let before = calls();
    let view = format!("{gw}/checkout/{id}");
    let rest = Box::new(|| http.get(&view).bearer_auth(&token)) as Request<'_>;
    let [rest] = measure([rest]).await?;
    let rest_calls = (calls() - before) as f64 / (ROUNDS * 2) as f64;
    let query = json!({ "query": format!(
        r#"{{ checkout(orderId: "{id}") {{ order {{ total {{ amount }} }} payment {{ status }} missing }} }}"#
    )});
    let before = calls();
    let graphql = format!("{gw}/graphql");
    let graphql = Box::new(|| http.post(&graphql).bearer_auth(&token).json(&query))
        as Request<'_>;
    let [graphql] = measure([graphql]).await?;
    let graphql_calls = (calls() - before) as f64 / (ROUNDS * 2) as f64;
    report(&format!("checkout view, REST ({rest_calls} backend calls)"), &rest);
    report(
        &format!("checkout view, GraphQL ({graphql_calls} backend calls)"),
        &graphql,
    );

    // The gateway's own work, each part alone, many times over: what one request pays for it.
    let verifier = running.gateway.verifier();
    let limiter = &running.gateway.limiter;
    let verify =
        per_call(|| verifier.verify(&token).map_err(|r| anyhow::anyhow!("{r:?}")))?;
    let limit =
        per_call(|| limiter.check("bench").map_err(|w| anyhow::anyhow!("{w:?}")))?;
    let request_id = per_call(|| anyhow::Ok(uuid::Uuid::new_v4()))?;
    println!(
        "each part alone: token {verify} ns, rate limit {limit} ns, request id {request_id} ns"
    );
    running.shutdown().await?;
    println!("done: {ROUNDS} measured requests per line, after as many to warm up");
    Ok(())
}

/// How long one call of `work` takes, averaged over many.
fn per_call<T>(mut work: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<u128> {
    const CALLS: u32 = 20_000;
    let began = Instant::now();
    for _ in 0..CALLS {
        std::hint::black_box(work()?);
    }
    Ok(began.elapsed().as_nanos() / u128::from(CALLS))
}

/// A proxy that does nothing but pass each request to `backend` and its answer back (method,
/// path and body; status and body): the floor under any gateway's added time.
async fn pass_through(backend: String) -> anyhow::Result<String> {
    let http = reqwest::Client::new();
    let pass = move |request: axum::extract::Request| {
        let (http, backend) = (http.clone(), backend.clone());
        async move {
            let (parts, body) = request.into_parts();
            let body = axum::body::to_bytes(body, 1 << 20).await?;
            let url = format!("{backend}{}", parts.uri);
            let answer = http.request(parts.method, url).body(body).send().await?;
            let status = answer.status();
            anyhow::Ok((status, answer.bytes().await?))
        }
    };
    let app = axum::Router::new().fallback(move |request| {
        let pass = pass.clone();
        async move {
            pass(request).await.map_err(|e| {
                (axum::http::StatusCode::BAD_GATEWAY, format!("pass-through: {e:#}"))
            })
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            eprintln!("the pass-through proxy stopped: {error}");
        }
    });
    Ok(format!("http://{addr}"))
}

/// Builds one request, boxed so that several kinds fit in one list.
type Request<'a> = Box<dyn Fn() -> reqwest::RequestBuilder + 'a>;

/// Sends each kind of request ROUNDS times to warm up, then ROUNDS times
/// measured, one of each kind per round, so that whatever else the machine
/// does at a moment falls on every kind alike; every answer must be 200.
async fn measure<const N: usize>(
    requests: [Request<'_>; N],
) -> anyhow::Result<[Sample; N]> {
    let mut took: [Vec<Duration>; N] =
        std::array::from_fn(|_| Vec::with_capacity(ROUNDS));
    for round in 0..ROUNDS * 2 {
        for (request, took) in requests.iter().zip(&mut took) {
            let began = Instant::now();
            let response = request().send().await?;
            let status = response.status();
            response.bytes().await?;
            ensure!(status == 200, "answered {status}");
            if round >= ROUNDS {
                took.push(began.elapsed());
            }
        }
    }
    let samples: Vec<Sample> = took
        .into_iter()
        .map(|t| Sample::new(t).context("no measurements"))
        .collect::<anyhow::Result<_>>()?;
    samples.try_into().map_err(|_| anyhow::anyhow!("a sample went missing"))
}

fn report(what: &str, sample: &Sample) {
    let us = |d: Duration| d.as_micros();
    println!(
        "{what}: p50 {} us, p99 {} us",
        us(sample.percentile(50.0)),
        us(sample.percentile(99.0))
    );
}
