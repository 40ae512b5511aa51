//! The shop with two replicas each of the saga, orders and payments: real processes, one log and
//! one schema per service in PostgreSQL that every replica of it shares, and the gateway taking
//! the replicas in turns.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

mod support;

use std::time::Duration;

use shop::config::{Role, Style};
use shop::roles::intake::{CALLER, IDEMPOTENCY_KEY};
use shop::scenario;
use shop::supervisor::Instance;
use shop_domain::Service;
use support::{sample, scrape, start_replicated};

const ORDERS: Role = Role::Participant(Service::Orders);
const PAYMENTS: Role = Role::Participant(Service::Payments);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_their_service_s_records_so_nothing_happens_twice() {
    let Some(mut shop) = start_replicated(
        "replicas",
        Style::Orchestration,
        &[Role::Saga, ORDERS, PAYMENTS],
    )
    .await
    else {
        return;
    };
    let env = shop.env().clone();
    let sagas = env.urls(Role::Saga);
    assert_eq!(sagas.len(), 2, "{sagas:?}");

    // The same checkout sent to both saga replicas at once, as a client's retry that crossed
    // its first attempt would be: both accept it, and it is one checkout.
    let http = reqwest::Client::new();
    let batch = scenario::batch("twice");
    for planned in &batch {
        let body = serde_json::json!({ "lines": planned.lines, "ship_to": planned.ship_to });
        let send = |saga: &String| {
            http.post(format!("{saga}/checkouts"))
                .header(CALLER, &planned.customer)
                .header(IDEMPOTENCY_KEY, &planned.key)
                .json(&body)
                .send()
        };
        let (first, second) = tokio::join!(send(&sagas[0]), send(&sagas[1]));
        for answer in [first.unwrap(), second.unwrap()] {
            assert_eq!(
                answer.status(),
                reqwest::StatusCode::ACCEPTED,
                "{}",
                planned.key
            );
        }
    }
    for planned in &batch {
        let view =
            shop.client.follow(planned, Duration::from_secs(120)).await.unwrap();
        shop.placed.push((planned.clone(), view));
    }
    let pool = orchestration::pool(&env.database_url, 1).unwrap();
    let db = pool.get().await.unwrap();
    let sql = format!(
        "SELECT owner, count(*) FROM {}.sagas GROUP BY owner ORDER BY owner",
        env.names.log_schema()
    );
    let owners: Vec<(String, i64)> = db
        .query(&sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let sagas_logged: i64 = owners.iter().map(|(_, n)| n).sum();
    assert_eq!(sagas_logged, batch.len() as i64, "one saga per key: {owners:?}");
    eprintln!("sagas by the replica that started them: {owners:?}");
    // One order, one payment per checkout, from the services' own records; and both replicas
    // of orders and of payments took their share of the commands.
    shop.assert_promises_kept().await;
    for role in [ORDERS, PAYMENTS] {
        for url in env.urls(role) {
            let applied: u64 = sample(
                &scrape(&url).await,
                r#"shop_commands_total{outcome="applied"}"#,
            )
            .unwrap_or(0);
            eprintln!("{url} ({role}) applied {applied} commands");
            assert!(
                applied > 0,
                "{role} at {url} applied none: no share of the work"
            );
        }
    }

    // The first saga replica hangs (SIGSTOP: its port still takes connections, nothing
    // answers). Every checkout through the gateway is still accepted: a call that timed out
    // on it goes on to the other replica with the same key, and that is safe because the
    // log they share dedupes it.
    let hung = Instance::of(Role::Saga, 1);
    shop.supervisor.pause(hung).unwrap();
    let placed = shop.run_batch(scenario::batch("hung"), async { Ok(()) }).await;
    shop.supervisor.resume(hung).unwrap();
    shop.placed.extend(placed);
    let gateway = scrape(&env.url(Role::Gateway)).await;
    let moved: u64 =
        sample(&gateway, r#"shop_intake_moved_total{reason="timeout"}"#)
            .unwrap_or(0);
    assert!(moved > 0, "no call went on to the other replica:\n{gateway}");
    eprintln!(
        "calls the gateway moved to the other saga replica after a timeout: {moved}"
    );

    // A payments replica killed mid-batch: the commands it took and had not acknowledged are
    // delivered again, to whichever replica is there, and none is applied twice.
    let before = shop.applied().await;
    let killed = Instance::of(PAYMENTS, 1);
    let supervisor = &shop.supervisor;
    let placed = shop
        .run_batch(scenario::batch("kill"), async {
            scenario::when_applied(&env, before + 6).await?;
            supervisor.kill(killed).await?;
            supervisor.wait_ready(killed, Duration::from_secs(60)).await
        })
        .await;
    assert_eq!(shop.supervisor.life(killed).generation, 2);
    shop.placed.extend(placed);
    shop.assert_promises_kept().await;
    shop.stop().await;
}
