//! HTTP/JSON and gRPC placing the same order, against a raw TCP echo, for a small
//! and a large order, with and without gzip: latency and bytes on the wire per call.
//!
//! Run it: `cargo run --release --example protocol_bench`
//! (for more calls per row: `cargo run --release --example protocol_bench --
//! --iterations 5000`)
//!
//! Everything runs in this process over loopback, one connection per client, one
//! call at a time, in the same run, so the ratios compare protocols rather than
//! machines. Both services do the same work (`compare::order::OrderDesk::place`) on
//! the same message types; the echo sends the order's JSON bytes and gets them back.
//! Bytes are counted at each server's sockets.

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use compare::Gzip;
use compare::echo::{self, EchoClient};
use compare::http::HttpClient;
use compare::order::{expected_total, sample_order};
use compare::proto::PlaceOrderRequest;
use compare::rpc::RpcClient;
use compare::stats::Sample;
use compare::wire::{Meter, Traffic};
use prost::Message;

/// A basket of one line (153 bytes of JSON) and a wholesale order of about 64
/// KiB.
const ORDERS: [(&str, usize); 2] = [("small", 1), ("large", 640)];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let runs = Runs::from_args()?;
    if cfg!(debug_assertions) {
        println!(
            "note: a debug build measures the compiler's debug code; run with --release for real figures"
        );
    }
    println!(
        "{} calls per row after {} warm-up calls, one at a time, over loopback",
        runs.iterations, runs.warmup
    );
    println!(
        "operation: place an order, the same messages and work on both protocols"
    );
    println!(
        "bytes: TCP payload per call (request / answer), counted at the server"
    );

    let echo_server = echo::spawn().await?;
    let http_server = compare::http::spawn().await?;
    let rpc_server = compare::rpc::spawn().await?;

    for (name, lines) in ORDERS {
        let order = sample_order(lines);
        let json = serde_json::to_vec(&order)?;
        println!(
            "\n{name} order: {lines} line{}, {} B as JSON, {} B as protobuf",
            if lines == 1 { "" } else { "s" },
            json.len(),
            order.encoded_len()
        );
        println!(
            "  {:<10} {:<5} {:>9} {:>9} {:>10} {:>10} {:>9} {:>9}",
            "transport",
            "gzip",
            "request",
            "answer",
            "p50",
            "p99",
            "p50/echo",
            "p99/echo"
        );

        let mut echo_client = EchoClient::connect(echo_server.addr).await?;
        let baseline = runs
            .measure(&echo_server.meter, &json, async |message| {
                echo_client.round_trip(&message).await
            })
            .await
            .context("TCP echo")?;
        baseline.print("TCP echo", "-", &baseline);

        for gzip in [Gzip::Off, Gzip::On] {
            let client = HttpClient::new(http_server.addr, gzip)?;
            let row = runs
                .measure(&http_server.meter, &order, async |order| {
                    let placed = client.place(&order).await?;
                    check(&order, placed.total_cents)
                })
                .await
                .context("HTTP/JSON")?;
            row.print("HTTP/JSON", label(gzip), &baseline);
        }
        for gzip in [Gzip::Off, Gzip::On] {
            let mut client = RpcClient::connect(rpc_server.addr, gzip).await?;
            let row = runs
                .measure(&rpc_server.meter, &order, async |order| {
                    let total = expected_total(&order);
                    let placed = client.place(order).await?;
                    ensure!(placed.total_cents == total, "wrong total");
                    Ok(())
                })
                .await
                .context("gRPC")?;
            row.print("gRPC", label(gzip), &baseline);
        }
    }

    for server in [echo_server, http_server, rpc_server] {
        server.shutdown().await.map_err(|e| anyhow::anyhow!(e))?;
    }
    Ok(())
}

fn check(order: &PlaceOrderRequest, total: u64) -> anyhow::Result<()> {
    ensure!(total == expected_total(order), "wrong total");
    Ok(())
}

fn label(gzip: Gzip) -> &'static str {
    match gzip {
        Gzip::Off => "off",
        Gzip::On => "gzip",
    }
}

/// How many calls to time, after how many untimed ones.
struct Runs {
    warmup: usize,
    iterations: usize,
}

/// One row of the table: latencies, and the bytes of an average call.
struct Measured {
    sample: Sample,
    per_call: Traffic,
}

impl Runs {
    fn from_args() -> anyhow::Result<Self> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let iterations = match args.as_slice() {
            [] => 2_000,
            [flag, n] if flag == "--iterations" => match n.parse() {
                Ok(n) if n > 0 => n,
                _ => bail!("--iterations takes a positive whole number, got {n:?}"),
            },
            _ => bail!("usage: protocol_bench [--iterations N]"),
        };
        Ok(Runs { warmup: (iterations / 10).max(10), iterations })
    }

    /// Calls `call` `warmup` times untimed, then `iterations` times timed, one at a
    /// time, each with its own copy of `input` (copied outside the timed part), and
    /// reads what `meter` counted during the timed calls.
    async fn measure<I: Clone, T, E>(
        &self,
        meter: &Meter,
        input: &I,
        mut call: impl AsyncFnMut(I) -> Result<T, E>,
    ) -> anyhow::Result<Measured>
    where
        E: Into<anyhow::Error>,
    {
        for _ in 0..self.warmup {
            call(input.clone()).await.map_err(Into::into)?;
        }
        let before = meter.traffic();
        let mut latencies = Vec::with_capacity(self.iterations);
        for _ in 0..self.iterations {
            let input = input.clone();
            let began = Instant::now();
            call(input).await.map_err(Into::into)?;
            latencies.push(began.elapsed());
        }
        let traffic = meter.traffic().since(before);
        let calls = self.iterations as u64;
        Ok(Measured {
            sample: Sample::new(latencies).context("no measurements")?,
            per_call: Traffic {
                received: traffic.received.div_ceil(calls),
                sent: traffic.sent.div_ceil(calls),
            },
        })
    }
}

impl Measured {
    fn print(&self, transport: &str, gzip: &str, baseline: &Measured) {
        let (p50, p99) =
            (self.sample.percentile(50.0), self.sample.percentile(99.0));
        println!(
            "  {transport:<10} {gzip:<5} {:>7} B {:>7} B {:>10} {:>10} {:>8.1}x {:>8.1}x",
            self.per_call.received,
            self.per_call.sent,
            human(p50),
            human(p99),
            ratio(p50, baseline.sample.percentile(50.0)),
            ratio(p99, baseline.sample.percentile(99.0)),
        );
    }
}

fn human(d: Duration) -> String {
    let micros = d.as_secs_f64() * 1e6;
    if micros < 1000.0 {
        format!("{micros:.1} us")
    } else {
        format!("{:.2} ms", micros / 1000.0)
    }
}

fn ratio(value: Duration, baseline: Duration) -> f64 {
    value.as_secs_f64() / baseline.as_secs_f64().max(1e-9)
}
