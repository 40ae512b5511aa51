//! What the shop's metrics cost on one HTTP round trip on loopback: the same axum route and
//! reqwest call, without metrics and with them (the request counted under its route template and
//! its duration observed in a histogram, as every role of the shop does), and how big a scrape is.
//!
//! Run it: `cargo bench -p shop --bench metrics_overhead`
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use shop::metrics::Exporter;

fn round_trip(c: &mut Criterion) {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client = reqwest::Client::new();
    let exporter = Exporter::new(|_| None);
    let mut group = c.benchmark_group("http_round_trip");
    group.measurement_time(Duration::from_secs(5));
    for measured in [false, true] {
        let app = Router::new().route("/orders/{id}", get(|| async { "{}" }));
        let app = if measured { exporter.measured(app) } else { app };
        let listener =
            runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let url =
            format!("http://{}/orders/ord-7001", listener.local_addr().unwrap());
        runtime.spawn(async move { axum::serve(listener, app).await });
        let name = if measured { "measured" } else { "plain" };
        group.bench_function(name, |b| {
            b.iter(|| {
                runtime.block_on(async {
                    client.get(&url).send().await.unwrap().bytes().await.unwrap()
                })
            })
        });
    }
    group.finish();
    let scrape = runtime.block_on(exporter.render()).unwrap();
    // The measured runs were counted, or the comparison measured nothing.
    let counted = scrape
        .lines()
        .find(|l| l.starts_with("shop_http_requests_total{route=\"/orders/{id}\""))
        .expect("the measured requests were not counted");
    println!("{counted}");
    println!("one scrape of this exporter: {} bytes", scrape.len());
}

criterion_group!(benches, round_trip);
criterion_main!(benches);
