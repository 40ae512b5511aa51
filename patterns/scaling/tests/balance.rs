//! One client, three replicas of the payments service, on loopback. Each replica keeps its own
//! ledger, so the share of calls each one served is the count of payments in it.
//!
//! - Through an L4 balancer, one channel is one connection, and every call lands on one replica;
//!   three channels are three connections, one per replica.
//! - Balanced per call (power of two choices over peak-EWMA), the calls spread over the three;
//!   a replica removed from discovery gets no more, none fails, and one added takes its share.
//! - With one replica ten times slower, round robin (and tonic's own `balance_list`, which
//!   compares loads its connections report as zero) still gives it a third of the calls;
//!   peak-EWMA gives it few.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

mod support;

use std::time::Duration;

use grpc::proto::v2::payments_client::PaymentsClient;
use grpc::server::{RunningPayments, spawn};
use grpc::service::ServiceConfig;
use scaling::balance::{Ejection, L4Proxy, RoundRobin, peak_ewma};
use tonic::transport::{Channel, Endpoint};
use tower::discover::Change;

/// A replica whose every authorization takes `latency` (its card network's answer).
async fn replica(latency: Duration) -> RunningPayments {
    let config =
        ServiceConfig { card_network_latency: latency, ..ServiceConfig::default() };
    spawn(config).await.unwrap()
}

async fn channel(replica: &RunningPayments) -> Channel {
    let endpoint =
        Endpoint::from_shared(format!("http://{}", replica.addr)).unwrap();
    endpoint.connect().await.unwrap()
}

/// How many payments each replica holds.
fn served(replicas: &[&RunningPayments]) -> Vec<usize> {
    replicas.iter().map(|r| r.ledger.len()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_channel_through_an_l4_balancer_pins_every_call_to_one_replica() {
    let (a, b, c) = (
        replica(Duration::ZERO).await,
        replica(Duration::ZERO).await,
        replica(Duration::ZERO).await,
    );
    let proxy = L4Proxy::spawn(vec![a.addr, b.addr, c.addr]).await.unwrap();
    let endpoint = Endpoint::from_shared(format!("http://{}", proxy.addr)).unwrap();
    let one = endpoint.connect().await.unwrap();
    support::authorize_many(PaymentsClient::new(one), "pinned", 90, 8).await;
    let mut shares = served(&[&a, &b, &c]);
    shares.sort_unstable();
    assert_eq!(shares, [0, 0, 90], "one connection, one replica");

    // The proxy does balance: connections. Three channels, three connections, one each.
    for (n, _) in shares.iter().enumerate() {
        let own = endpoint.connect().await.unwrap();
        support::authorize_many(
            PaymentsClient::new(own),
            &format!("conn{n}"),
            30,
            4,
        )
        .await;
    }
    let mut shares = served(&[&a, &b, &c]);
    shares.sort_unstable();
    assert_eq!(
        shares,
        [30, 30, 120],
        "each new connection went to the next replica"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_ewma_spreads_calls_and_follows_replicas_as_they_come_and_go() {
    let work = Duration::from_millis(5);
    let (a, b, c) = (replica(work).await, replica(work).await, replica(work).await);
    let (balanced, changes) = peak_ewma(Ejection::default());
    for r in [&a, &b, &c] {
        changes.send(Change::Insert(r.addr, channel(r).await)).await.unwrap();
    }
    let client = PaymentsClient::new(balanced);
    support::authorize_many(client.clone(), "spread", 150, 12).await;
    let shares = served(&[&a, &b, &c]);
    println!("peak-EWMA over three equal replicas: {shares:?}");
    assert_eq!(shares.iter().sum::<usize>(), 150);
    assert!(
        shares.iter().all(|&n| n >= 30),
        "each replica at least a fifth: {shares:?}"
    );

    // a leaves: discovery says so first, then it stops. No call fails, none reaches it.
    changes.send(Change::Remove(a.addr)).await.unwrap();
    let a_ledger = std::sync::Arc::clone(&a.ledger);
    a.shutdown().await.unwrap();
    support::authorize_many(client.clone(), "without-a", 60, 12).await;
    let after = served(&[&b, &c]);
    assert_eq!(
        after.iter().sum::<usize>() - (shares[1] + shares[2]),
        60,
        "{after:?}"
    );
    assert_eq!(a_ledger.len(), shares[0], "a served nothing after it left");

    // d joins and takes its share.
    let d = replica(work).await;
    changes.send(Change::Insert(d.addr, channel(&d).await)).await.unwrap();
    support::authorize_many(client, "with-d", 150, 12).await;
    assert!(d.ledger.len() >= 30, "the new replica got {} of 150", d.ledger.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_replica_keeps_its_third_under_round_robin_and_few_calls_under_peak_ewma()
 {
    let (fast, slow) = (Duration::from_millis(5), Duration::from_millis(100));
    let (calls, in_flight) = (210, 6);

    let replicas = [replica(fast).await, replica(fast).await, replica(slow).await];
    let mut channels = vec![];
    for r in &replicas {
        channels.push(channel(r).await);
    }
    support::authorize_many(
        PaymentsClient::new(RoundRobin::new(channels)),
        "rr",
        calls,
        in_flight,
    )
    .await;
    assert_eq!(
        replicas[2].ledger.len(),
        calls / 3,
        "round robin: the slow one's third"
    );

    let replicas = [replica(fast).await, replica(fast).await, replica(slow).await];
    let endpoints = replicas
        .iter()
        .map(|r| Endpoint::from_shared(format!("http://{}", r.addr)).unwrap());
    let tonic_balanced = Channel::balance_list(endpoints);
    support::authorize_many(
        PaymentsClient::new(tonic_balanced),
        "tonic",
        calls,
        in_flight,
    )
    .await;
    let slow_share = replicas[2].ledger.len();
    println!(
        "tonic's balance_list: the slow replica served {slow_share} of {calls}"
    );
    assert!(
        slow_share >= calls / 5,
        "tonic's balance_list picks at random: the slow one got {slow_share} of {calls}"
    );

    let replicas = [replica(fast).await, replica(fast).await, replica(slow).await];
    let (balanced, changes) = peak_ewma(Ejection::default());
    for r in &replicas {
        changes.send(Change::Insert(r.addr, channel(r).await)).await.unwrap();
    }
    support::authorize_many(PaymentsClient::new(balanced), "ewma", calls, in_flight)
        .await;
    let slow_share = replicas[2].ledger.len();
    println!("peak-EWMA: the slow replica served {slow_share} of {calls}");
    assert!(
        slow_share <= calls / 10,
        "peak-EWMA sends the slow replica few calls: it got {slow_share} of {calls}"
    );
}

/// Discovery lists a replica that is gone (nothing listens at its address any more). Its calls
/// fail at once, which to a balancer that measures latency looks like the fastest replica there
/// is: without ejection it gets more than its share of the calls, every one of them failing; with
/// ejection, it costs a few calls and is then left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_is_gone_costs_a_few_calls_once_ejection_is_on() {
    let calls = 60;
    let never = Ejection { after: u32::MAX, for_how_long: Duration::from_secs(1) };
    let mut failed = vec![];
    for policy in [never, Ejection::default()] {
        let work = Duration::from_millis(5);
        let (a, b) = (replica(work).await, replica(work).await);
        let gone = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let (balanced, changes) = peak_ewma(policy);
        for r in [&a, &b] {
            changes.send(Change::Insert(r.addr, channel(r).await)).await.unwrap();
        }
        // Lazy: the channel connects on its first call, and each call that cannot connect fails.
        let endpoint = Endpoint::from_shared(format!("http://{gone}")).unwrap();
        changes.send(Change::Insert(gone, endpoint.connect_lazy())).await.unwrap();
        let client = PaymentsClient::new(balanced);
        let mut failures = 0;
        for call in 0..calls {
            let order = support::order(&format!("call-{call}"));
            if let Err(status) = client.clone().authorize(order).await {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                failures += 1;
            }
        }
        let served: usize = served(&[&a, &b]).iter().sum();
        assert_eq!(served + failures, calls, "every call was served or failed");
        failed.push(failures);
    }
    println!(
        "calls failed with a replica gone, without and with ejection: {failed:?}"
    );
    // A third would be its share; failing at once, it gets more.
    assert!(failed[0] > calls / 3, "without ejection: {failed:?}");
    let after = Ejection::default().after as usize;
    assert!(failed[1] <= after, "with ejection, at most {after}: {failed:?}");
}
