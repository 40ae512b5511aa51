//! What scaling out buys and costs, measured on this machine, on loopback, in one run.
//!
//! Run it: `cargo run --release --example scaling_bench`
//!
//! 1. Replicas: each replica of payments takes at most 4 calls at a time on a connection and
//!    spends 2 ms on each (its card network), so one replica does at most 2,000 calls/s (fewer:
//!    a 2 ms sleep on tokio's millisecond timer takes longer). 16 calls
//!    in flight go to one replica, to three through an L4 proxy (one channel), and to three
//!    balanced per call.
//! 2. One slow replica of three (20 ms where the others take 2): round robin, tonic's
//!    `balance_list` and power of two choices over peak-EWMA, 12 calls in flight.
//! 3. What a hop and mutual TLS cost: one call at a time with no work in the service, straight,
//!    through a TCP proxy (the floor of what one proxy adds), over mutual TLS in the services
//!    themselves, and through two sidecars with mutual TLS between them (what a mesh adds, less
//!    its parsing of each request); and what a new connection costs, plain and with the TLS
//!    handshake.
//!
//! Figures are for this machine and this run; compare them with each other.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use grpc::proto::v2::payments_client::PaymentsClient;
use grpc::proto::v2::payments_server::PaymentsServer;
use grpc::service::{PaymentsService, ServiceConfig};
use scaling::balance::{Ejection, L4Proxy, RoundRobin, peak_ewma};
use scaling::identity::{Allow, Authority, connect};
use scaling::sidecar::{Pems, Sidecar};
use tokio::net::TcpListener;
use tonic::transport::{Channel, Endpoint, Server};
use tower::discover::Change;

/// A replica on `127.0.0.1:0` taking `per_connection` calls at a time, each `work` long.
async fn replica(
    work: Duration,
    per_connection: usize,
) -> anyhow::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let config =
        ServiceConfig { card_network_latency: work, ..ServiceConfig::default() };
    let router = Server::builder()
        .concurrency_limit_per_connection(per_connection)
        .add_service(PaymentsServer::new(PaymentsService::new(config)));
    tokio::spawn(grpc::server::serve(listener, router, std::future::pending()));
    Ok(addr)
}

async fn channel(addr: std::net::SocketAddr) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?.connect().await?)
}

/// `calls/s  p50  p99` of one phase.
fn line(name: &str, took: &mut [Duration], wall: Duration) -> String {
    took.sort_unstable();
    let at = |q: f64| took[((took.len() - 1) as f64 * q).round() as usize];
    format!(
        "{name:<44} {:>7.0} calls/s  p50 {:>7.2} ms  p99 {:>7.2} ms",
        took.len() as f64 / wall.as_secs_f64(),
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
    )
}

async fn phase<T: support::Transport>(
    name: &str,
    client: PaymentsClient<T>,
    calls: usize,
    in_flight: usize,
) -> f64 {
    let began = Instant::now();
    let mut took = support::authorize_many(client, name, calls, in_flight).await;
    let wall = began.elapsed();
    println!("{}", line(name, &mut took, wall));
    calls as f64 / wall.as_secs_f64()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let work = Duration::from_millis(2);
    println!("== replicas: 4 calls at a time each, 2 ms per call, 16 in flight");
    let one = replica(work, 4).await?;
    let _warm =
        phase("warm-up", PaymentsClient::new(channel(one).await?), 200, 16).await;
    let single =
        phase("one replica", PaymentsClient::new(channel(one).await?), 1_200, 16)
            .await;
    let three =
        [replica(work, 4).await?, replica(work, 4).await?, replica(work, 4).await?];
    let proxy = L4Proxy::spawn(three.to_vec()).await?;
    let pinned = PaymentsClient::new(channel(proxy.addr).await?);
    let pinned =
        phase("three replicas, one channel via an L4 proxy", pinned, 1_200, 16)
            .await;
    let (balanced, changes) = peak_ewma(Ejection::default());
    for addr in three {
        changes.send(Change::Insert(addr, channel(addr).await?)).await?;
    }
    let spread = phase(
        "three replicas, peak-EWMA per call",
        PaymentsClient::new(balanced),
        1_200,
        16,
    )
    .await;
    println!(
        "ratios to one replica: pinned {:.2}x, balanced {:.2}x",
        pinned / single,
        spread / single
    );

    println!(
        "\n== one slow replica of three (20 ms, the others 2 ms), 12 in flight"
    );
    let slow = Duration::from_millis(20);
    for policy in ["round robin", "tonic balance_list", "peak-EWMA"] {
        let addrs = [
            replica(work, 64).await?,
            replica(work, 64).await?,
            replica(slow, 64).await?,
        ];
        let mut channels = Vec::new();
        for addr in addrs {
            channels.push(channel(addr).await?);
        }
        let began = Instant::now();
        let mut took = match policy {
            "round robin" => {
                let client = PaymentsClient::new(RoundRobin::new(channels));
                support::authorize_many(client, policy, 600, 12).await
            }
            "tonic balance_list" => {
                let endpoints = addrs
                    .iter()
                    .map(|a| Endpoint::from_shared(format!("http://{a}")))
                    .collect::<Result<Vec<_>, _>>()?;
                let client = PaymentsClient::new(Channel::balance_list(
                    endpoints.into_iter(),
                ));
                support::authorize_many(client, policy, 600, 12).await
            }
            _ => {
                let (balanced, changes) = peak_ewma(Ejection::default());
                for (addr, channel) in addrs.into_iter().zip(channels) {
                    changes.send(Change::Insert(addr, channel)).await?;
                }
                support::authorize_many(
                    PaymentsClient::new(balanced),
                    policy,
                    600,
                    12,
                )
                .await
            }
        };
        let wall = began.elapsed();
        // The slow replica's share, near enough: the calls that took its 20 ms or more.
        let on_slow = took.iter().filter(|t| **t >= slow).count();
        println!(
            "{}  calls of 20 ms or more {:>5.1}%",
            line(policy, &mut took, wall),
            100.0 * on_slow as f64 / took.len() as f64
        );
    }

    println!(
        "\n== a hop and mutual TLS: one call at a time, no work in the service"
    );
    let plain = replica(Duration::ZERO, 64).await?;
    let straight =
        phase("straight", PaymentsClient::new(channel(plain).await?), 2_000, 1)
            .await;
    let hop = L4Proxy::spawn(vec![plain]).await?;
    let proxied = phase(
        "through a TCP proxy",
        PaymentsClient::new(channel(hop.addr).await?),
        2_000,
        1,
    )
    .await;
    let ca = Authority::new("bench CA")?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let secured = listener.local_addr()?;
    let identity = ca.issue("payments", Duration::from_secs(3600))?;
    let allow = Allow::only(&["gateway"]);
    let serving = scaling::identity::serve(
        listener,
        identity,
        ca.certificate(),
        allow,
        std::future::pending(),
    );
    tokio::spawn(serving);
    let gateway = ca.issue("gateway", Duration::from_secs(3600))?;
    let mtls =
        connect(secured, "payments", gateway.clone(), ca.certificate()).await?;
    let tls = phase("over mutual TLS", PaymentsClient::new(mtls), 2_000, 1).await;
    let pems = |service: &str| -> anyhow::Result<Pems> {
        let (certificate, key) = ca.issue_pem(service, Duration::from_secs(3600))?;
        let trusted = ca.certificate_pem().to_owned();
        Ok(Pems { certificate, key, trusted })
    };
    let inbound = Sidecar::inbound(plain, &pems("payments")?).await?;
    let outbound =
        Sidecar::outbound(inbound.addr, "payments", &pems("gateway")?).await?;
    let meshed = phase(
        "through two sidecars, mutual TLS between",
        PaymentsClient::new(channel(outbound.addr).await?),
        2_000,
        1,
    )
    .await;
    println!(
        "calls/s as a ratio to straight: proxy {:.2}x, mutual TLS {:.2}x, two sidecars {:.2}x",
        proxied / straight,
        tls / straight,
        meshed / straight
    );
    let mut plain_connects = Vec::new();
    let mut tls_connects = Vec::new();
    for _ in 0..50 {
        let began = Instant::now();
        drop(channel(plain).await?);
        plain_connects.push(began.elapsed());
        let began = Instant::now();
        drop(connect(secured, "payments", gateway.clone(), ca.certificate()).await?);
        tls_connects.push(began.elapsed());
    }
    plain_connects.sort_unstable();
    tls_connects.sort_unstable();
    let (p, t) = (plain_connects[25], tls_connects[25]);
    println!(
        "a new connection, median of 50: plain {:.2} ms, mutual TLS {:.2} ms ({:.1}x)",
        p.as_secs_f64() * 1e3,
        t.as_secs_f64() * 1e3,
        t.as_secs_f64() / p.as_secs_f64()
    );
    Ok(())
}
