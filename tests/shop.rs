//! The capstone end to end: the shop's services as real processes (the `shop` binary, one role
//! each) on real brokers, killed with SIGKILL and stopped with SIGTERM for real, with every
//! promise checked from each service's own records.
//!
//! Each test runs a shop of its own: its own queue and schema prefix and its own free ports, so
//! tests run side by side. Faults happen at explicit points (after the participants have applied
//! N commands in all, read from their inboxes), and every wait is bounded and on a condition. The
//! supervisor kills whatever it still runs when a test fails. Children's logs go to
//! `<temp>/<prefix>/<role>.log`; a failing test prints where.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use shop::config::{Role, Style};
use shop::roles::intake::CheckoutView;
use shop::scenario;
use support::{start, start_styled};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_through_the_gateway_ends_as_the_stock_and_balances_say() {
    batch_ends_as_the_seed_says(Style::Orchestration).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_choreographed_batch_ends_as_the_stock_and_balances_say() {
    batch_ends_as_the_seed_says(Style::Choreography).await;
}

async fn batch_ends_as_the_seed_says(style: Style) {
    let Some(mut shop) =
        start_styled(&format!("batch_{}", style.name()), style).await
    else {
        return;
    };
    let placed = shop.run_batch(scenario::batch("b"), async { Ok(()) }).await;
    shop.placed.extend(placed);
    let ended: BTreeMap<String, (String, Option<String>)> = shop
        .placed
        .iter()
        .map(|(p, v)| (p.key.clone(), (v.status.clone(), v.reason.clone())))
        .collect();
    for n in 1..=6 {
        assert_eq!(ended[&format!("b-{n}")].0, "confirmed", "{ended:#?}");
    }
    for n in [7, 8] {
        let (status, reason) = &ended[&format!("b-{n}")];
        assert_eq!(status, "cancelled");
        assert!(
            reason.as_deref().unwrap().contains("insufficient funds"),
            "{reason:?}"
        );
    }
    let mugs: Vec<&(String, Option<String>)> =
        (9..=11).map(|n| &ended[&format!("b-{n}")]).collect();
    let confirmed = mugs.iter().filter(|(s, _)| s == "confirmed").count();
    assert_eq!(confirmed, 1, "three mugs make one order of two: {mugs:?}");
    for (status, reason) in mugs.iter().filter(|(s, _)| s != "confirmed") {
        assert_eq!(status, "cancelled");
        assert!(reason.as_deref().unwrap().contains("mug: 2 wanted"), "{reason:?}");
    }
    shop.assert_promises_kept().await;
    orders_and_payments_answer_for_their_records(&shop).await;
    // `shop setup` on a shop that has worked, as a deployment runs it before every rollout: it
    // must keep the data, so the stock and balances still add up to the same orders.
    let said = shop_setup(shop.env().vars()).await;
    assert!(said.contains("is set up"), "{said}");
    shop.assert_promises_kept().await;
    shop.stop().await;
}

/// The gateway's `GET /orders/{id}`: the order from the orders service (HTTP/JSON) and its payment
/// from the payments service (gRPC), each as that service records it; a payments service that
/// does not answer leaves the payment missing, named, and the order still there.
async fn orders_and_payments_answer_for_their_records(shop: &support::Shop) {
    let client = &shop.client;
    let confirmed = client.order("c-ada", "b-1").await.unwrap().unwrap();
    let order = confirmed.order.as_ref().unwrap();
    let payment = confirmed.payment.as_ref().unwrap();
    assert!(confirmed.missing.is_empty(), "{confirmed:?}");
    assert_eq!(
        (order.status.as_str(), order.customer_id.as_str()),
        ("confirmed", "c-ada")
    );
    assert!(order.tracking.is_some(), "{order:?}");
    assert_eq!(payment.status, "authorized");
    assert_eq!(payment.amount_cents, order.total_cents);
    // A declined checkout. Orchestrated, the saga's log holds the checkout and orders hears of it
    // only at the last step, to confirm it: a checkout cancelled before that never became an
    // order. Choreographed, orders took the checkout and settled it as cancelled.
    let declined = client.order("c-bob", "b-7").await;
    match shop.env().style {
        Style::Orchestration => assert!(declined.unwrap().is_none()),
        Style::Choreography => {
            let declined = declined.unwrap().unwrap();
            let (order, payment) =
                (declined.order.unwrap(), declined.payment.unwrap());
            assert_eq!(order.status, "cancelled");
            assert!(order.reason.unwrap().contains("insufficient funds"));
            assert_eq!(payment.status, "declined");
        }
    }
    // Another customer's order is not found, not shown.
    assert!(client.order("c-bob", "b-1").await.unwrap().is_none());
    // Every reply payments sent was confirmed by the broker: one per command it answered.
    if shop.env().style == Style::Orchestration {
        let payments =
            shop.env().url(Role::Participant(shop_domain::Service::Payments));
        let text = support::scrape(&payments).await;
        let answered = count(&text, r#"shop_commands_total{outcome="applied"}"#)
            + count(&text, r#"shop_commands_total{outcome="duplicate"}"#);
        assert!(answered >= 9, "{text}");
        let confirmed =
            count(&text, r#"shop_amqp_confirms_total{outcome="confirmed"}"#);
        assert_eq!(confirmed, answered, "{text}");
        let unconfirmed = r#"shop_amqp_confirms_total{outcome="unconfirmed"}"#;
        assert_eq!(count(&text, unconfirmed), 0, "{text}");
    }
    // Payments' gRPC health follows its readiness, through the standard service.
    let payments = shop.env().url(Role::Participant(shop_domain::Service::Payments));
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        tonic::transport::Endpoint::from_shared(payments.clone())
            .unwrap()
            .connect_lazy(),
    );
    let asked = tonic_health::pb::HealthCheckRequest {
        service: shop::roles::reads::PAYMENT_QUERIES.into(),
    };
    // It follows within a second or so: asked until it says so, for 10 s at most.
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status =
            health.check(asked.clone()).await.unwrap().into_inner().status();
        if status == serving {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gRPC health says {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // gRPC shares the port with HTTP; a path that is neither is still a 404.
    let stray = reqwest::get(format!("{payments}/no-such-path")).await.unwrap();
    assert_eq!(stray.status(), reqwest::StatusCode::NOT_FOUND);
    // Payments frozen (SIGSTOP): the view comes back by its deadline without the payment.
    let role = Role::Participant(shop_domain::Service::Payments);
    shop.supervisor.pause(role).unwrap();
    let partial = client.order("c-ada", "b-1").await;
    shop.supervisor.resume(role).unwrap();
    let partial = partial.unwrap().unwrap();
    assert_eq!(partial.order.unwrap().status, "confirmed");
    assert!(partial.payment.is_none());
    let parts: Vec<&str> = partial.missing.iter().map(|m| m.part.as_str()).collect();
    assert_eq!(parts, ["payment"], "{:?}", partial.missing);
}

/// A counter's value in a scrape: 0 before its first increment, when it has no series yet.
fn count(text: &str, series: &str) -> u64 {
    support::sample(text, series).unwrap_or(0)
}

/// Each service SIGKILLed at two points of the checkout: early (after the first command of a
/// batch, before most payments) and late (after 16, past most pivots). One shop per service, one
/// batch per kill point: the promises hold over both batches together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_killed_mid_checkout_at_two_points_and_the_shop_converges() {
    for role in Style::Orchestration.roles() {
        let Some(mut shop) = start(role.name()).await else { return };
        for (round, after) in [1, 16].into_iter().enumerate() {
            let from = shop.applied().await;
            let supervisor = &shop.supervisor;
            let fault = async move {
                scenario::when_applied(supervisor.env(), from + after).await?;
                supervisor.kill(role).await?;
                supervisor.wait_ready(role, Duration::from_secs(60)).await
            };
            let batch = scenario::batch(&format!("k{round}"));
            let placed = shop.run_batch(batch, fault).await;
            shop.placed.extend(placed);
        }
        assert_eq!(
            shop.supervisor.life(role).generation,
            3,
            "{role} was killed twice"
        );
        shop.assert_promises_kept().await;
        shop.stop().await;
    }
}

/// The choreographed shop: each of its six services SIGKILLed once mid-batch, at an early point
/// (after the first event of the batch) or a late one (after 20), alternating in a seeded order so
/// both points are covered. A sample of the matrix, not all of it: a killed Kafka consumer's
/// partitions wait for its group to expire the dead member, so each kill costs seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_choreographed_service_killed_mid_checkout_and_the_shop_converges() {
    let style = Style::Choreography;
    let Some(mut shop) = start_styled("kill_chor", style).await else { return };
    let mut roles = style.roles();
    fastrand::Rng::with_seed(14).shuffle(&mut roles);
    for (round, role) in roles.into_iter().enumerate() {
        let after = if round % 2 == 0 { 1 } else { 20 };
        let from = shop.applied().await;
        let supervisor = &shop.supervisor;
        let fault = async move {
            scenario::when_applied(supervisor.env(), from + after).await?;
            supervisor.kill(role).await?;
            supervisor.wait_ready(role, Duration::from_secs(90)).await
        };
        let placed =
            shop.run_batch(scenario::batch(&format!("c{round}")), fault).await;
        shop.placed.extend(placed);
        assert_eq!(
            shop.supervisor.life(role).generation,
            2,
            "{role} was killed once"
        );
    }
    shop.assert_promises_kept().await;
    shop.stop().await;
}

/// SIGTERM to each service while checkouts are in flight: it finishes or hands back what it
/// holds, exits 0 within its grace period, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_stopped_with_sigterm_mid_checkout_exits_cleanly_and_loses_nothing()
 {
    stopped_with_sigterm(Style::Orchestration).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_choreographed_service_stopped_with_sigterm_exits_cleanly_and_loses_nothing()
 {
    stopped_with_sigterm(Style::Choreography).await;
}

async fn stopped_with_sigterm(style: Style) {
    let test = format!("term_{}", style.name());
    let Some(mut shop) = start_styled(&test, style).await else { return };
    for (round, role) in style.roles().into_iter().enumerate() {
        let from = shop.applied().await;
        let supervisor = &shop.supervisor;
        let fault = async move {
            scenario::when_applied(supervisor.env(), from + 3).await?;
            let life = supervisor.terminate(role).await?;
            let exit = life.last_exit.expect("the old life's exit is known");
            anyhow::ensure!(exit.success(), "{role} exited with {exit} on SIGTERM");
            supervisor.wait_ready(role, Duration::from_secs(60)).await
        };
        let placed =
            shop.run_batch(scenario::batch(&format!("t{round}")), fault).await;
        shop.placed.extend(placed);
    }
    shop.assert_promises_kept().await;
    shop.stop().await;
}

/// Bad input at the edge gets a clear 4xx problem body, and the shop keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_at_the_gateway_gets_a_problem_body_and_the_shop_keeps_serving() {
    let Some(mut shop) = start("edge").await else { return };
    let base = shop.env().url(Role::Gateway);
    let http = reqwest::Client::new();
    let good = shop.client.token("c-ada").unwrap();
    let issuer = gateway::auth::Issuer::hs256(
        &shop.key,
        shop::roles::edge::ISSUER,
        shop::roles::edge::AUDIENCE,
    );
    let forger = gateway::auth::Issuer::hs256(
        &[9; 32],
        shop::roles::edge::ISSUER,
        shop::roles::edge::AUDIENCE,
    );
    let expired = issuer.mint("c-ada", "orders:read orders:write", -3600).unwrap();
    let forged = forger.mint("c-ada", "orders:read orders:write", 3600).unwrap();
    let read_only = issuer.mint("c-ada", "orders:read", 3600).unwrap();
    // An unsigned token: header {"alg":"none"}, a valid payload, no signature.
    let none = {
        let signed = issuer.mint("c-ada", "orders:read orders:write", 3600).unwrap();
        let payload = signed.split('.').nth(1).unwrap();
        format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.")
    };
    let body = r#"{"lines":[{"sku":"kettle","quantity":1}],"ship_to":"NL"}"#;
    let cases: Vec<(&str, Option<String>, String, u16, &str)> = vec![
        ("no token", None, body.into(), 401, "/problems/unauthorized"),
        ("expired", Some(expired), body.into(), 401, "/problems/unauthorized"),
        ("forged", Some(forged), body.into(), 401, "/problems/unauthorized"),
        ("alg none", Some(none), body.into(), 401, "/problems/unauthorized"),
        (
            "read-only scope",
            Some(read_only),
            body.into(),
            403,
            "/problems/forbidden",
        ),
        ("malformed JSON", Some(good.clone()), "{\"lines\": [".into(), 400, ""),
        (
            "unknown product",
            Some(good.clone()),
            r#"{"lines":[{"sku":"anvil","quantity":1}],"ship_to":"NL"}"#.into(),
            422,
            "/problems/invalid-order",
        ),
        (
            "unknown field",
            Some(good.clone()),
            r#"{"lines":[],"ship_to":"NL","discount":100}"#.into(),
            422,
            "",
        ),
        (
            "oversized",
            Some(good.clone()),
            format!("{{\"pad\":\"{}\"}}", "x".repeat(20_000)),
            413,
            "",
        ),
    ];
    for (what, token, body, status, kind) in cases {
        let mut request = http
            .post(format!("{base}/checkouts"))
            .header("content-type", "application/json")
            .header("idempotency-key", format!("bad-{}", what.replace(' ', "-")))
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let answer = request.send().await.unwrap();
        assert_eq!(answer.status().as_u16(), status, "{what}");
        let content_type =
            answer.headers()["content-type"].to_str().unwrap().to_owned();
        assert_eq!(content_type, "application/problem+json", "{what}");
        let problem: serde_json::Value = answer.json().await.unwrap();
        assert_eq!(problem["status"], status, "{what}: {problem}");
        if !kind.is_empty() {
            assert_eq!(problem["type"], kind, "{what}: {problem}");
        }
        assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()), "{what}");
    }
    // Everyone else is still served: the refusals changed nothing.
    let placed = shop.run_batch(scenario::batch("after"), async { Ok(()) }).await;
    shop.placed.extend(placed);
    // A checkout is shown to the customer who placed it, and to nobody else.
    let ada = shop.client.view("c-ada", "after-1").await.unwrap();
    assert_eq!(ada.customer_id, "c-ada");
    let bob = shop.client.view("c-bob", "after-1").await.unwrap_err().to_string();
    assert!(bob.contains("404"), "{bob}");
    let payments = shop.env().url(Role::Participant(shop_domain::Service::Payments));
    graphql_asks_only_what_a_query_names_and_refuses_costly_queries(
        &base, &good, &payments,
    )
    .await;
    // Payments frozen: the order comes back, its payment `null` with the reason beside it.
    let role = Role::Participant(shop_domain::Service::Payments);
    shop.supervisor.pause(role).unwrap();
    let query = r#"{ order(id: "after-1") { status payment { status } } }"#;
    let asked = http
        .post(format!("{base}/graphql"))
        .bearer_auth(&good)
        .json(&serde_json::json!({ "query": query }))
        .send()
        .await;
    shop.supervisor.resume(role).unwrap();
    let answer: serde_json::Value = asked.unwrap().json().await.unwrap();
    assert_eq!(answer["data"]["order"]["status"], "confirmed", "{answer}");
    assert_eq!(
        answer["data"]["order"]["payment"],
        serde_json::Value::Null,
        "{answer}"
    );
    assert_eq!(answer["errors"][0]["path"], serde_json::json!(["order", "payment"]));
    assert_eq!(answer["errors"][0]["extensions"]["status"], 504, "{answer}");
    shop.assert_promises_kept().await;
    shop.stop().await;
}

/// The gateway's GraphQL endpoint: a field is fetched only when asked for, and a query too deep,
/// too costly or not GraphQL at all is refused as a whole with a `400` problem body.
async fn graphql_asks_only_what_a_query_names_and_refuses_costly_queries(
    base: &str,
    token: &str,
    payments: &str,
) {
    // Payments' own count of the gRPC calls it answered, from its /metrics.
    let answered = || async {
        let text = support::scrape(payments).await;
        let method = "/shop.payments.PaymentQueries/PaymentsForOrders";
        let series =
            format!(r#"shop_grpc_requests_total{{method="{method}",code="OK"}}"#);
        count(&text, &series)
    };
    let http = reqwest::Client::new();
    let ask = |query: String| {
        http.post(format!("{base}/graphql"))
            .bearer_auth(token)
            .json(&serde_json::json!({ "query": query }))
            .send()
    };
    let before = answered().await;
    let without: serde_json::Value =
        ask(r#"{ order(id: "after-1") { status } }"#.into())
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(without["data"]["order"]["status"], "confirmed", "{without}");
    assert_eq!(answered().await, before, "no payment asked for, none fetched");
    let answer =
        ask(r#"{ order(id: "after-1") { status totalCents payment { status } } }"#
            .into())
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["data"]["order"]["status"], "confirmed", "{body}");
    assert_eq!(body["data"]["order"]["payment"]["status"], "authorized", "{body}");
    assert_eq!(answered().await, before + 1, "one gRPC call for the payment");
    let none: serde_json::Value =
        ask(r#"{ order(id: "no-such") { status } }"#.into())
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(none["data"]["order"], serde_json::Value::Null, "{none}");
    // Introspection nests as deep as a client likes: the classic way to make a server work.
    let deep =
        "{ __schema { types { fields { type { ofType { ofType { name } } } } } } }";
    let aliases: Vec<String> = (0..25)
        .map(|n| format!(r#"o{n}: order(id: "after-1") {{ status totalCents }}"#))
        .collect();
    let costly = format!("{{ {} }}", aliases.join(" "));
    for (what, query, said) in [
        ("too deep", deep.to_owned(), "nested too deep"),
        ("too costly", costly, "too complex"),
        ("not GraphQL", "{ order(id: ".to_owned(), "expected"),
    ] {
        let answer = ask(query).await.unwrap();
        assert_eq!(answer.status(), 400, "{what}");
        let kind = answer.headers()["content-type"].to_str().unwrap().to_owned();
        assert_eq!(kind, "application/problem+json", "{what}");
        let problem: serde_json::Value = answer.json().await.unwrap();
        let detail = problem["detail"].as_str().unwrap().to_lowercase();
        assert!(detail.contains(said), "{what}: {problem}");
    }
}

/// `shop setup` on a database that has never seen this shop, as a deployment's first run does:
/// it creates and seeds what is missing; run again, it changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shop_setup_creates_a_fresh_shop_and_a_second_run_changes_nothing() {
    let prefix =
        format!("t{}_setup", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let vars = BTreeMap::from([
        ("SHOP_STYLE".to_owned(), "orchestration".to_owned()),
        ("SHOP_PREFIX".to_owned(), prefix),
        ("DATABASE_URL".to_owned(), infra::database_url()),
        ("AMQP_ADDR".to_owned(), infra::amqp_addr()),
    ]);
    let env = shop::config::Env::from_lookup(|var| vars.get(var).cloned()).unwrap();
    let pool = orchestration::pool(&env.database_url, 1).unwrap();
    let client = match pool.get().await {
        Ok(client) => client,
        Err(error) => {
            return infra::unavailable("PostgreSQL", &env.database_url, error);
        }
    };
    let schema = env.names.schema(shop_domain::Service::Inventory);
    let stock = format!("SELECT key, value FROM {schema}.records ORDER BY key");
    let mut seen = vec![];
    for _ in 0..2 {
        shop_setup(vars.clone()).await;
        let rows: Vec<(String, String)> = client
            .query(&stock, &[])
            .await
            .unwrap()
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        seen.push(rows);
    }
    let seeded = shop::shop::seed().stock.len();
    assert_eq!(seen[0].len(), seeded, "the first run seeded {:?}", seen[0]);
    assert_eq!(seen[0], seen[1], "the second run changed the stock");
    drop(client);
    shop::cli::teardown(&env).await.unwrap();
}

/// Runs `shop setup` with `vars` as its environment, for 60 s at most; fails the test unless it
/// succeeds, and returns what it printed.
async fn shop_setup(vars: impl IntoIterator<Item = (String, String)>) -> String {
    let setup = tokio::process::Command::new(env!("CARGO_BIN_EXE_shop"))
        .arg("setup")
        .envs(vars)
        .kill_on_drop(true)
        .output();
    let setup = tokio::time::timeout(Duration::from_secs(60), setup)
        .await
        .expect("shop setup did not end in 60 s")
        .unwrap();
    let said = String::from_utf8_lossy(&setup.stdout).into_owned();
    assert!(setup.status.success(), "shop setup failed: {said}");
    said
}

/// A role the supervisor started stops by itself when the supervisor is gone, however it went:
/// its end of the pipe on the role's standard input closes. The gateway needs no broker, so it
/// stands in for every role here.
#[tokio::test]
async fn a_supervised_role_stops_when_its_supervisor_is_gone() {
    let addr = format!("127.0.0.1:{}", support::free_port());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_shop"))
        .args(["role", "gateway"])
        .env(shop::probe::SUPERVISED_VAR, "1")
        .env("SHOP_GATEWAY_ADDR", &addr)
        .env(shop::config::JWT_KEY_VAR, shop::config::encode_hex(&[7; 32]))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let health = format!("http://{addr}/healthz");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !reqwest::get(&health).await.is_ok_and(|a| a.status().is_success()) {
        assert!(tokio::time::Instant::now() < deadline, "the gateway never came up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Still serving while the pipe is open: it is the pipe's end that stops it.
    assert!(child.try_wait().unwrap().is_none());
    drop(child.stdin.take());
    let ended = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    let status = ended.expect("the gateway outlived its supervisor").unwrap();
    assert!(status.success(), "{status}");
}

/// A service whose port is taken stops at its start and says which port, in either style, before
/// it reaches a broker: one that went on without its port would look ready to a probe answered
/// by whatever holds the port.
#[tokio::test]
async fn a_service_whose_port_is_taken_stops_at_its_start_and_names_the_port() {
    let held =
        std::net::TcpListener::bind(("127.0.0.1", support::free_port())).unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let roles = [
        ("orchestration", Role::Saga),
        ("orchestration", Role::Participant(shop_domain::Service::Payments)),
        ("choreography", Role::Participant(shop_domain::Service::Orders)),
        ("orchestration", Role::Gateway),
    ];
    for (style, role) in roles {
        let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_shop"))
            .args(["role", role.name()])
            .env("SHOP_STYLE", style)
            .env(role.addr_var(), &addr)
            .env(shop::config::JWT_KEY_VAR, shop::config::encode_hex(&[7; 32]))
            .kill_on_drop(true)
            .output();
        let ended = tokio::time::timeout(Duration::from_secs(20), run).await;
        let output =
            ended.unwrap_or_else(|_| panic!("{role} went on without its port"));
        let output = output.unwrap();
        let said = String::from_utf8_lossy(&output.stderr).into_owned()
            + &String::from_utf8_lossy(&output.stdout);
        assert!(!output.status.success(), "{role}: {said}");
        assert!(
            said.contains(&format!("cannot listen on {addr}")),
            "{role}: {said}"
        );
    }
}

/// A live page's WebSocket, read all the time by a task of its own, so that the heartbeat's pings
/// are answered while the test does other things; dropping it drops the connection without a
/// close frame.
struct Page {
    received: tokio::sync::mpsc::UnboundedReceiver<WsMessage>,
    reader: tokio::task::JoinHandle<()>,
}

use tokio_tungstenite::tungstenite::Message as WsMessage;

impl Page {
    async fn open(url: &str) -> Page {
        use futures::StreamExt;
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let (sent, received) = tokio::sync::mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            while let Some(Ok(message)) = ws.next().await {
                if sent.send(message).is_err() {
                    break;
                }
            }
        });
        Page { received, reader }
    }

    /// The next message that is not a ping or a pong; panics after 60 s.
    async fn next_message(&mut self) -> Option<WsMessage> {
        let read = async {
            loop {
                match self.received.recv().await {
                    Some(WsMessage::Ping(_) | WsMessage::Pong(_)) => continue,
                    other => return other,
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(60), read)
            .await
            .expect("a message from the live page's channel within 60 s")
    }

    /// The next push: a snapshot, a resync or an event.
    async fn next_push(&mut self) -> realtime::Push<String, String> {
        match self.next_message().await {
            Some(WsMessage::Text(text)) => serde_json::from_str(&text).unwrap(),
            other => panic!("the live page's channel sent {other:?}"),
        }
    }

    /// Reads pushes into `last` (each order's latest status) until every order of `expected`
    /// has its expected status; every event must be numbered one past the one before. Returns
    /// the last number seen.
    async fn read_until(
        &mut self,
        last: &mut BTreeMap<String, String>,
        mut seq: u64,
        expected: &BTreeMap<String, String>,
    ) -> u64 {
        while expected.iter().any(|(id, status)| last.get(id) != Some(status)) {
            let push =
                tokio::time::timeout(Duration::from_secs(30), self.next_push());
            let Ok(push) = push.await else {
                panic!("no push in 30 s; seen {last:#?}, expected {expected:#?}")
            };
            match push {
                realtime::Push::Event(event) => {
                    assert_eq!(
                        event.seq,
                        seq + 1,
                        "an event was skipped or repeated"
                    );
                    seq = event.seq;
                    last.insert(event.order, event.status);
                }
                other => panic!("a second start in one connection: {other:?}"),
            }
        }
        seq
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The scrape of `base` once `series` reads `value`; fails after 10 s with the last scrape.
async fn scraped_until(base: &str, series: &str, value: u64) -> String {
    let mut scrape = support::scrape(base).await;
    for _ in 0..100 {
        if support::sample::<u64>(&scrape, series) == Some(value) {
            return scrape;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        scrape = support::scrape(base).await;
    }
    panic!("{series} is not {value} after 10 s:\n{scrape}")
}

/// The live page, served by the notifications service, in each style: each checkout's end
/// reaches a connected browser over the WebSocket. With the service hung (SIGSTOP) a second batch
/// ends unseen, and then it is killed: its next life rebuilds every order's end (from the topics
/// when choreographed, from its table and the endings still queued when orchestrated), resyncs a
/// page of its last life, tells the second batch's customers once and the first's never again;
/// closes are counted by who ended them; and SIGTERM tells a connected page "going away" before
/// the process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_page_shows_every_end_and_is_rebuilt_after_a_kill() {
    live_page(Style::Orchestration).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_choreographed_live_page_shows_every_end_and_is_rebuilt_after_a_kill() {
    live_page(Style::Choreography).await;
}

/// Each checkout's end as the live page words it, by order id.
fn ends(placed: &[(scenario::Planned, CheckoutView)]) -> BTreeMap<String, String> {
    placed
        .iter()
        .map(|(_, view)| {
            let status = match (view.status.as_str(), &view.reason) {
                ("cancelled", Some(reason)) => format!("cancelled: {reason}"),
                (status, _) => status.to_owned(),
            };
            (view.order_id.clone(), status)
        })
        .collect()
}

async fn live_page(style: Style) {
    use realtime::Push;
    let test = format!("live_{}", style.name());
    let Some(mut shop) = start_styled(&test, style).await else {
        return;
    };
    let notifications = shop.env().addr(Role::Notifications);
    let page = reqwest::get(format!("http://{notifications}/")).await.unwrap();
    let page = page.error_for_status().unwrap().text().await.unwrap();
    assert!(page.contains("new WebSocket"), "not the live page: {page}");
    assert!(!page.contains("Place an order"), "the shop's page takes no orders");
    let url = format!("ws://{notifications}/ws");
    let mut live = Page::open(&url).await;
    let Push::Snapshot(start) = live.next_push().await else {
        panic!("a new client starts with a snapshot")
    };

    let placed = shop.run_batch(scenario::batch("w"), async { Ok(()) }).await;
    let mut expected = ends(&placed);
    let first = expected.len() as u64;
    let mut last = BTreeMap::new();
    let seen = live.read_until(&mut last, start.seq, &expected).await;
    drop(live);
    shop.placed.extend(placed);

    // Hung while a second batch ends: its endings wait in the topics, or in the endings queue.
    let hung = shop.supervisor.pause(Role::Notifications).unwrap();
    let unseen = shop.run_batch(scenario::batch("u"), async { Ok(()) }).await;
    let second = unseen.len() as u64;
    expected.extend(ends(&unseen));
    shop.placed.extend(unseen);
    // Then killed for real: the new life starts with an empty hub.
    let life = shop.supervisor.kill(Role::Notifications).await.unwrap();
    assert_ne!(life.pid, Some(hung), "a new process");
    let ready = Duration::from_secs(60);
    shop.supervisor.wait_ready(Role::Notifications, ready).await.unwrap();
    // A page of the old life comes back with its last number: it is not resumed into the new
    // life's events that happen to carry the same numbers.
    let mut live = Page::open(&format!("{url}?after={seen}")).await;
    let Push::Resync(rebuilt) = live.next_push().await else {
        panic!("a client of the last life starts again with a resync")
    };
    let mut last: BTreeMap<String, String> =
        rebuilt.orders.into_iter().map(|o| (o.order, o.status)).collect();
    live.read_until(&mut last, rebuilt.seq, &expected).await;
    // The second batch's customers were told now, once; the first's were told by the last life.
    // A choreographed life reads every ending again, and tells none of those twice; an
    // orchestrated one is given only the endings the last life did not acknowledge.
    let base = shop.env().url(Role::Notifications);
    let told = "shop_notices_total{outcome=\"told\"}";
    let scrape = scraped_until(&base, told, second).await;
    let replayed = "shop_notices_total{outcome=\"already_told\"}";
    let again = match style {
        Style::Choreography => first,
        Style::Orchestration => 0,
    };
    let scrape = match style {
        Style::Choreography => scraped_until(&base, replayed, again).await,
        Style::Orchestration => scrape,
    };
    assert_eq!(support::sample::<u64>(&scrape, replayed), Some(again), "{scrape}");
    assert_eq!(
        support::sample::<i64>(&scrape, "shop_ws_clients"),
        Some(1),
        "{scrape}"
    );
    // A page that leaves without a goodbye is counted as the client's, under 1006.
    drop(Page::open(&url).await);
    let vanished = "shop_ws_closes_total{by=\"client\",code=\"1006\"}";
    scraped_until(&base, vanished, 1).await;
    // The saga's side of the orchestrated endings: every checkout's end sent and confirmed,
    // none owed.
    if style == Style::Orchestration {
        let saga = shop.env().url(Role::Saga);
        let announced = "shop_saga_endings_announced_total";
        let scrape = scraped_until(&saga, announced, first + second).await;
        let owed = support::sample::<i64>(&scrape, "shop_saga_endings_unannounced");
        assert_eq!(owed, Some(0), "{scrape}");
    }

    // SIGTERM with the page connected: it is told the server is going away, and the process
    // exits cleanly.
    let life = shop.supervisor.terminate(Role::Notifications).await.unwrap();
    assert!(
        life.last_exit.unwrap().success(),
        "notifications exited badly on SIGTERM"
    );
    let frame = loop {
        match live.next_message().await {
            Some(WsMessage::Close(frame)) => break frame.expect("a close code"),
            Some(WsMessage::Text(_)) => continue,
            other => panic!("no close frame before the end: {other:?}"),
        }
    };
    assert_eq!(u16::from(frame.code), realtime::close::GOING_AWAY);
    shop.supervisor.wait_ready(Role::Notifications, ready).await.unwrap();
    shop.assert_promises_kept().await;
    shop.stop().await;
}

/// A service still waiting for its database or broker answers its probes at once: alive, and not
/// ready because it is starting, not a port that accepts and never answers. SIGTERM then stops it.
#[tokio::test]
async fn a_service_waiting_for_its_brokers_says_it_is_starting() {
    // Addresses where nothing listens: the service waits for them, with its backoff.
    let nowhere = format!("127.0.0.1:{}", support::free_port());
    let roles = [
        ("orchestration", Role::Saga),
        ("choreography", Role::Participant(shop_domain::Service::Inventory)),
        ("choreography", Role::Notifications),
    ];
    for (style, role) in roles {
        let addr = format!("127.0.0.1:{}", support::free_port());
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_shop"))
            .args(["role", role.name()])
            .env("SHOP_STYLE", style)
            .env(role.addr_var(), &addr)
            .env(
                "DATABASE_URL",
                format!("postgres://postgres:postgres@{nowhere}/shop"),
            )
            .env("KAFKA_BROKERS", &nowhere)
            .env("AMQP_ADDR", format!("amqp://guest:guest@{nowhere}/%2f"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let said = loop {
            if let Ok(answer) =
                http.get(format!("http://{addr}/readyz")).send().await
            {
                break (answer.status().as_u16(), answer.text().await.unwrap());
            }
            assert!(tokio::time::Instant::now() < deadline, "{role} never answered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(said.0, 503, "{role}: {said:?}");
        assert!(
            said.1.starts_with("not ready: starting: waiting for"),
            "{role}: {said:?}"
        );
        let alive = http.get(format!("http://{addr}/healthz")).send().await.unwrap();
        assert_eq!(alive.status(), 200, "{role}");
        // Anything else is "come back", never "no such route": a client retries a 503.
        let early =
            http.post(format!("http://{addr}/checkouts")).send().await.unwrap();
        assert_eq!(early.status(), 503, "{role}");
        assert_eq!(early.headers()["retry-after"], "1", "{role}");
        let said = early.text().await.unwrap();
        assert!(said.contains("the service is starting"), "{role}: {said}");
        let pid = child.id().unwrap();
        shop::supervisor::signal(pid, libc::SIGTERM).unwrap();
        let ended =
            tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        let status = ended
            .unwrap_or_else(|_| panic!("{role} did not stop on SIGTERM"))
            .unwrap();
        assert!(status.success(), "{role} stopped while starting: {status}");
    }
}
