//! Fan-out cost: one event pushed to 1,000 WebSocket clients on loopback.
//!
//! Run it: `cargo run --release --example ws_fanout_bench`
//!
//! The server is the chapter's own router; the clients are tokio-tungstenite
//! connections in the same process (so they share its cores with the server: on a
//! 2-core machine the figures include the clients' own scheduling). Each round
//! publishes one event once every client has the previous one, and every client
//! notes when the event reached it. Printed: the delivery latency over all (client,
//! event) pairs, and the time until the last client of each round had the event. One
//! run, one machine: compare runs on the same machine only.
//!
//! Two read buffers, taken in turns, twice each: tungstenite's default (128 KiB) on
//! both ends, and the channel's default (4 KiB). The codec zeroes its read buffer
//! before every read, and each connection reads after every push.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use futures::StreamExt;
use realtime::{AppState, ChannelConfig, Hub, HubConfig, Push, Shop, Status, app};
use tokio::net::TcpListener;
use tokio::sync::{Barrier, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

const CLIENTS: usize = 1000;
const ROUNDS: u64 = 30;
/// tungstenite's default read buffer, and the channel's.
const READ_BUFFERS: [(&str, usize); 2] = [
    ("128 KiB (tungstenite's default)", 128 * 1024),
    ("4 KiB (the channel's)", 4096),
];

/// Each client costs two file descriptors (its end and the server's), more than the
/// soft limit of 1024 many shells start with: raise the soft limit to the hard one.
fn raise_open_files_limit() -> anyhow::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        ensure!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0, "getrlimit");
        limit.rlim_cur = limit.rlim_max;
        ensure!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0, "setrlimit");
    }
    Ok(limit.rlim_cur)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let open_files = raise_open_files_limit()?;
    ensure!(
        open_files as usize > 2 * CLIENTS + 100,
        "{CLIENTS} clients need about {} open files; this process may have {open_files}",
        2 * CLIENTS + 100
    );
    println!(
        "{CLIENTS} clients on loopback; {ROUNDS} events, one at a time, per run"
    );
    let mut figures = [(vec![], vec![]), (vec![], vec![])];
    for _turn in 0..2 {
        for (kind, (_, size)) in READ_BUFFERS.iter().enumerate() {
            let (latencies, last_client) = fan_out(*size).await?;
            figures[kind].0.extend(latencies);
            figures[kind].1.extend(last_client);
        }
    }
    let mut p50s = vec![];
    for ((label, _), (latencies, last_client)) in
        READ_BUFFERS.iter().zip(&mut figures)
    {
        latencies.sort();
        last_client.sort();
        println!("read buffer {label}:");
        println!(
            "  delivery latency over {} deliveries: p50 {:.2?}, p99 {:.2?}, max {:.2?}",
            latencies.len(),
            percentile(latencies, 50.0),
            percentile(latencies, 99.0),
            latencies.last().copied().unwrap_or_default()
        );
        println!(
            "  until the last of {CLIENTS} clients had it: p50 {:.2?}, p99 {:.2?}",
            percentile(last_client, 50.0),
            percentile(last_client, 99.0)
        );
        p50s.push(percentile(latencies, 50.0));
    }
    println!(
        "4 KiB over 128 KiB: {:.2}x the p50 delivery latency",
        p50s[1].as_secs_f64() / p50s[0].as_secs_f64()
    );
    Ok(())
}

/// One run: a server and `CLIENTS` clients, both reading `read_buffer` bytes at a
/// time; returns every delivery's latency and each round's last delivery. Every
/// connection is closed before it returns.
async fn fan_out(
    read_buffer: usize,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let hub = Hub::new(HubConfig { history: 1024, buffer: 64 });
    let shop = Shop::new(hub.clone(), Duration::from_secs(1));
    let config =
        ChannelConfig { read_buffer_size: read_buffer, ..Default::default() };
    let state = AppState::new(hub.clone(), shop, config);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server =
        tokio::spawn(async move { axum::serve(listener, app(state)).await });

    let client_config = WebSocketConfig::default().read_buffer_size(read_buffer);
    // Every client reports (seq, when it arrived) here.
    let (tx, mut arrivals) = mpsc::unbounded_channel::<(u64, Instant)>();
    let ready = Arc::new(Barrier::new(CLIENTS + 1));
    let mut clients = JoinSet::new();
    for i in 0..CLIENTS {
        // Each client costs this process two file descriptors (its end, the
        // server's).
        let (mut ws, _) = tokio_tungstenite::connect_async_with_config(
            format!("ws://{addr}/ws"),
            Some(client_config),
            false,
        )
        .await
        .with_context(|| {
            format!("client {i} of {CLIENTS}: is `ulimit -n` above 2100?")
        })?;
        let (tx, ready) = (tx.clone(), ready.clone());
        clients.spawn(async move {
            let mut waiting = Some(ready);
            while let Some(Ok(message)) = ws.next().await {
                let Message::Text(text) = message else { continue };
                let arrived = Instant::now();
                match serde_json::from_str::<Push>(&text) {
                    Ok(Push::Snapshot(_)) => {
                        if let Some(ready) = waiting.take() {
                            ready.wait().await;
                        }
                    }
                    Ok(Push::Event(e)) => {
                        // The receiver is gone once the measurement is over.
                        if tx.send((e.seq, arrived)).is_err() {
                            break;
                        }
                    }
                    Ok(Push::Resync(_)) => {}
                    Err(error) => {
                        eprintln!("a client read a push it cannot parse: {error}");
                        break;
                    }
                }
            }
        });
    }
    ready.wait().await;
    ensure!(hub.subscribers() == CLIENTS, "all clients attached");

    let mut latencies = Vec::with_capacity(CLIENTS * ROUNDS as usize);
    let mut last_client = Vec::with_capacity(ROUNDS as usize);
    // Round 0 warms up (first sends on each connection); it is not counted.
    for round in 0..=ROUNDS {
        let sent = Instant::now();
        let event = hub.publish(round, Status::Placed);
        let mut latest = sent;
        for _ in 0..CLIENTS {
            let (seq, arrived) =
                arrivals.recv().await.context("a client vanished")?;
            ensure!(seq == event.seq, "event {seq} arrived during round {round}");
            latencies.push(arrived - sent);
            latest = latest.max(arrived);
        }
        if round > 0 {
            last_client.push(latest - sent);
        } else {
            latencies.clear();
        }
    }
    ensure!(hub.subscribers() == CLIENTS, "no client was cut off");
    // Closing the hub ends every connection with a close frame; each client's loop
    // ends with it, and the next run starts with this run's descriptors free.
    drop(arrivals);
    hub.close();
    while let Some(ended) = clients.join_next().await {
        ended.context("a client task panicked")?;
    }
    server.abort();
    Ok((latencies, last_client))
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
