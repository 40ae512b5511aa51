//! Broker outages under load: the shop's services reach RabbitMQ and PostgreSQL through a proxy
//! the test cuts for a few seconds while checkouts are in flight. Every service must notice
//! (its `/readyz` goes false), reconnect by itself when the broker is back (its `/readyz` true
//! again), and every checkout must end with every promise kept, nothing applied twice.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

mod support;

use std::time::Duration;

use shop::config::{Role, Style};
use shop::scenario;
use shop_domain::Service;
use support::proxy::{Proxy, through, upstream};
use support::start_with;

/// How long a broker stays away: longer than a participant's first reconnect attempts, shorter
/// than the saga's 5-second timeout, so in-flight checkouts mostly ride it out.
const OUTAGE: Duration = Duration::from_secs(3);

/// Waits until `role`'s `/readyz` stops answering `200`: the process saw the outage.
async fn until_unready(shop: &support::Shop, role: Role) {
    let url = format!("{}/readyz", shop.env().url(role));
    let http =
        reqwest::Client::builder().timeout(Duration::from_secs(3)).build().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match http.get(&url).send().await {
            Ok(answer) if answer.status().is_success() => {}
            _ => return,
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{role} stayed ready in the outage"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn outage(broker: &str) {
    let (db, amqp) = (infra::database_url(), infra::amqp_addr());
    let pg = Proxy::start(upstream(&db)).await;
    let mq = Proxy::start(upstream(&amqp)).await;
    let test = format!("out_{broker}");
    let Some(mut shop) = start_with(
        &test,
        Style::Orchestration,
        through(&db, pg.addr),
        through(&amqp, mq.addr),
    )
    .await
    else {
        return;
    };
    let proxy = if broker == "rabbitmq" { &mq } else { &pg };
    let from = shop.applied().await;
    let watched = Role::Participant(Service::Inventory);
    let env = shop.env().clone();
    let supervisor = &shop.supervisor;
    let fault = async {
        scenario::when_applied(&env, from + 5).await?;
        proxy.cut();
        until_unready(&shop, watched).await;
        // The outage itself lasts a fixed time: it is the fault, not a wait for something.
        tokio::time::sleep(OUTAGE).await;
        proxy.restore();
        for role in Role::ALL {
            supervisor.wait_ready(role, Duration::from_secs(60)).await?;
        }
        anyhow::Ok(())
    };
    let placed = shop.run_batch(scenario::batch("o"), fault).await;
    shop.placed.extend(placed);
    for role in Role::ALL {
        assert_eq!(
            shop.supervisor.life(role).generation,
            1,
            "{role} had to be restarted: it should have reconnected by itself"
        );
    }
    shop.assert_promises_kept().await;
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_away_for_three_seconds_mid_checkout_and_every_checkout_converges()
{
    outage("rabbitmq").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_away_for_three_seconds_mid_checkout_and_every_checkout_converges()
 {
    outage("postgres").await;
}
