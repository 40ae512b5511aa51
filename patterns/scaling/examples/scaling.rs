//! Three replicas of the payments service and one caller, in this process: where the calls go
//! through an L4 balancer and when balanced per call, replicas leaving and joining, and the
//! callee telling callers apart by their certificates.
//!
//! Run it:   `cargo run --example scaling`
//! Break it: `cargo run --example scaling -- --slow-replica`  one replica answers in 50 ms: round
//!                                                            robin gives it its third, peak-EWMA
//!                                                            few calls
//!           `cargo run --example scaling -- --gone-replica`  discovery lists a replica nothing
//!                                                            answers at: the calls it takes
//!                                                            fail, until it is ejected
//!
//! Every server binds 127.0.0.1:0. The example checks its own outcome and exits non-zero if the
//! pattern failed.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, ensure};
use grpc::proto::v2::AuthorizeRequest;
use grpc::proto::v2::payments_client::PaymentsClient;
use grpc::server::RunningPayments;
use grpc::service::ServiceConfig;
use scaling::balance::{Balanced, Ejection, L4Proxy, RoundRobin, peak_ewma};
use scaling::identity::{Allow, Authority, connect, serve};
use tokio::net::TcpListener;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tower::discover::Change;
use tracing::{info, warn};

fn order(order_id: String) -> AuthorizeRequest {
    AuthorizeRequest {
        order_id,
        amount_cents: 2899,
        currency: "EUR".into(),
        card_token: "tok_visa".into(),
        customer_id: "c-42".into(),
    }
}

async fn replica(latency: Duration) -> anyhow::Result<RunningPayments> {
    let config =
        ServiceConfig { card_network_latency: latency, ..ServiceConfig::default() };
    Ok(grpc::server::spawn(config).await?)
}

async fn channel(addr: SocketAddr) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?.connect().await?)
}

/// How many payments each replica holds: the calls it served.
fn served(replicas: &[&RunningPayments]) -> Vec<usize> {
    replicas.iter().map(|r| r.ledger.len()).collect()
}

/// `calls` authorizations, `in_flight` at a time, through `client`; returns how many failed.
async fn send<T>(
    client: &PaymentsClient<T>,
    tag: &str,
    calls: usize,
    in_flight: usize,
) -> anyhow::Result<usize>
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Future: Send,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody:
        tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error:
        Into<tonic::codegen::StdError> + Send,
{
    let mut callers = tokio::task::JoinSet::new();
    for caller in 0..in_flight {
        let mut client = client.clone();
        let tag = tag.to_owned();
        callers.spawn(async move {
            let mut failed = 0;
            for call in (caller..calls).step_by(in_flight) {
                if let Err(status) = client.authorize(order(format!("{tag}-{call}"))).await {
                    warn!(code = ?status.code(), "call {tag}-{call} failed: {}", status.message());
                    failed += 1;
                }
            }
            failed
        });
    }
    let mut failed = 0;
    while let Some(caller) = callers.join_next().await {
        failed += caller?;
    }
    Ok(failed)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Each replica logs every call it serves, hundreds here: only their warnings, unless
    // RUST_LOG says otherwise (RUST_LOG=info shows them all).
    infra::example::init_logging_with("info,grpc=warn");
    let flags = infra::example::Flags::parse(&["--slow-replica", "--gone-replica"])
        .map_err(anyhow::Error::msg)?;
    if flags.has("--slow-replica") {
        return slow_replica().await;
    }
    if flags.has("--gone-replica") {
        return gone_replica().await;
    }
    pinned_then_balanced().await?;
    identity().await?;
    info!("done");
    Ok(())
}

/// One channel through an L4 proxy, then per-call balancing over replicas that come and go.
async fn pinned_then_balanced() -> anyhow::Result<()> {
    let work = Duration::from_millis(2);
    let (a, b, c) =
        (replica(work).await?, replica(work).await?, replica(work).await?);
    info!("three replicas of payments: {}, {}, {}", a.addr, b.addr, c.addr);

    let proxy = L4Proxy::spawn(vec![a.addr, b.addr, c.addr]).await?;
    let pinned = PaymentsClient::new(channel(proxy.addr).await?);
    ensure!(
        send(&pinned, "pinned", 30, 6).await? == 0,
        "calls failed through the proxy"
    );
    let shares = served(&[&a, &b, &c]);
    info!(
        "one channel through an L4 proxy: 30 calls, served {shares:?}: one connection, one replica"
    );
    ensure!(
        shares.contains(&30),
        "the proxy spread one channel's calls: {shares:?}"
    );

    let (balanced, changes) = peak_ewma(Ejection::default());
    for r in [&a, &b, &c] {
        changes.send(Change::Insert(r.addr, channel(r.addr).await?)).await?;
    }
    let client = PaymentsClient::new(balanced);
    let before = served(&[&a, &b, &c]);
    ensure!(send(&client, "spread", 90, 6).await? == 0, "balanced calls failed");
    let spread = after_minus(&served(&[&a, &b, &c]), &before);
    info!("balanced per call (p2c over peak-EWMA): 90 calls, served {spread:?}");
    ensure!(spread.iter().all(|&n| n > 0), "a replica got no call: {spread:?}");

    info!("discovery: {} leaves", c.addr);
    changes.send(Change::Remove(c.addr)).await?;
    c.shutdown().await.map_err(|e| anyhow::anyhow!(e))?;
    let before = served(&[&a, &b]);
    ensure!(
        send(&client, "without-c", 60, 6).await? == 0,
        "calls failed after c left"
    );
    let without = after_minus(&served(&[&a, &b]), &before);
    info!("60 calls, served {without:?} by the two left, none failed");
    ensure!(without.iter().sum::<usize>() == 60, "not every call reached a or b");

    let d = replica(work).await?;
    info!("discovery: {} joins", d.addr);
    changes.send(Change::Insert(d.addr, channel(d.addr).await?)).await?;
    ensure!(
        send(&client, "with-d", 90, 6).await? == 0,
        "calls failed after d joined"
    );
    info!("90 calls, the new replica served {}", d.ledger.len());
    ensure!(!d.ledger.is_empty(), "the new replica got no call");
    Ok(())
}

fn after_minus(after: &[usize], before: &[usize]) -> Vec<usize> {
    after.iter().zip(before).map(|(a, b)| a - b).collect()
}

/// Payments over mutual TLS, serving the gateway only: the gateway, shipping and a caller
/// without a certificate try it.
async fn identity() -> anyhow::Result<()> {
    let ca = Authority::new("shop CA")?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let own = ca.issue("payments", Duration::from_secs(3600))?;
    let allow = Allow::only(&["gateway"]);
    tokio::spawn(serve(
        listener,
        own,
        ca.certificate(),
        allow,
        std::future::pending(),
    ));
    info!("payments over mutual TLS on {addr}, serving the gateway only");

    let gateway = ca.issue("gateway", Duration::from_secs(3600))?;
    let channel = connect(addr, "payments", gateway, ca.certificate()).await?;
    PaymentsClient::new(channel).authorize(order("o-gw".into())).await?;
    info!("the gateway's certificate: served");

    let shipping = ca.issue("shipping", Duration::from_secs(3600))?;
    let channel = connect(addr, "payments", shipping, ca.certificate()).await?;
    let refused = PaymentsClient::new(channel).authorize(order("o-sh".into())).await;
    let status = refused.err().context("shipping was served")?;
    ensure!(status.code() == Code::PermissionDenied, "shipping: {status:?}");
    info!("shipping's certificate: {:?}: {}", status.code(), status.message());

    let rogue = Authority::new("someone else's CA")?;
    let forged = rogue.issue("gateway", Duration::from_secs(3600))?;
    // With TLS 1.3 the client has finished its side of the handshake when payments reads its
    // certificate, and hyper may see the connection close before it reads the alert: a new
    // connection each time, up to ten, until an error names it. None may be served.
    let mut last = String::new();
    for attempt in 0..10 {
        let tried =
            connect(addr, "payments", forged.clone(), ca.certificate()).await;
        let answer = match tried {
            Ok(channel) => PaymentsClient::new(channel)
                .authorize(order(format!("o-forged-{attempt}")))
                .await
                .map(|_| ())
                .map_err(|status| format!("{status:?}")),
            Err(error) => Err(format!("{error:?}")),
        };
        let Err(error) = answer else {
            anyhow::bail!("a certificate from another CA was served");
        };
        if error.contains("UnknownCA") {
            info!(
                "a gateway certificate from another CA: refused in the TLS handshake (UnknownCA)"
            );
            return Ok(());
        }
        last = error;
    }
    anyhow::bail!("refused ten times, never with UnknownCA; the last: {last}")
}

/// One slow replica of three: its share under round robin and under peak-EWMA.
async fn slow_replica() -> anyhow::Result<()> {
    let (fast, slow) = (Duration::from_millis(2), Duration::from_millis(50));
    info!("replicas answer in 2 ms, 2 ms and 50 ms; 90 calls, 6 at a time");
    let replicas =
        [replica(fast).await?, replica(fast).await?, replica(slow).await?];
    let mut channels = vec![];
    for r in &replicas {
        channels.push(channel(r.addr).await?);
    }
    let round_robin = PaymentsClient::new(RoundRobin::new(channels));
    ensure!(send(&round_robin, "rr", 90, 6).await? == 0, "round robin calls failed");
    let by_turns = replicas[2].ledger.len();
    info!("round robin: the slow replica served {by_turns} of 90");

    let replicas =
        [replica(fast).await?, replica(fast).await?, replica(slow).await?];
    let client = balanced_over(&replicas, Ejection::default()).await?;
    ensure!(send(&client, "ewma", 90, 6).await? == 0, "balanced calls failed");
    let by_cost = replicas[2].ledger.len();
    info!("peak-EWMA: the slow replica served {by_cost} of 90");
    ensure!(
        by_cost < by_turns,
        "peak-EWMA gave the slow replica {by_cost}, round robin {by_turns}"
    );
    info!("done");
    Ok(())
}

async fn balanced_over(
    replicas: &[RunningPayments],
    ejection: Ejection,
) -> anyhow::Result<PaymentsClient<Balanced>> {
    let (balanced, changes) = peak_ewma(ejection);
    for r in replicas {
        changes.send(Change::Insert(r.addr, channel(r.addr).await?)).await?;
    }
    Ok(PaymentsClient::new(balanced))
}

/// Discovery lists an address nothing answers at, beside two live replicas: 60 calls one at a
/// time, without ejection and with it.
async fn gone_replica() -> anyhow::Result<()> {
    let never = Ejection { after: u32::MAX, for_how_long: Duration::from_secs(1) };
    let mut failed = vec![];
    for (name, policy) in
        [("without ejection", never), ("with ejection", Ejection::default())]
    {
        let work = Duration::from_millis(2);
        let replicas = [replica(work).await?, replica(work).await?];
        // An address that was bound and let go: nothing answers there now.
        let gone = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let (balanced, changes) = peak_ewma(policy);
        for r in &replicas {
            changes.send(Change::Insert(r.addr, channel(r.addr).await?)).await?;
        }
        // Lazy: the channel connects on each call, and a call that cannot connect fails.
        let endpoint = Endpoint::from_shared(format!("http://{gone}"))?;
        changes.send(Change::Insert(gone, endpoint.connect_lazy())).await?;
        info!("{name}: discovery lists {gone}, where nothing answers");
        let failures = send(&PaymentsClient::new(balanced), name, 60, 1).await?;
        info!("{name}: {failures} of 60 calls failed");
        failed.push(failures);
    }
    // One call at a time: the calls before the ejection are the only ones that can fail.
    let after = Ejection::default().after as usize;
    ensure!(
        failed[1] <= after,
        "with ejection, more than {after} failed: {failed:?}"
    );
    info!("done");
    Ok(())
}
