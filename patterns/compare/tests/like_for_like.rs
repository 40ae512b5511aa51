//! The benchmark's promises, checked: both protocols do the same thing with the same
//! order, gzip is really negotiated on both (the bytes counted on the wire shrink
//! for a large order and grow for a one-line one), and the library behaviour the
//! chapter describes is what the libraries do.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

use compare::Gzip;
use compare::http::{HttpClient, HttpError};
use compare::order::{expected_total, sample_order};
use compare::proto::orders_client::OrdersClient;
use compare::proto::{PlaceOrderRequest, PlacedOrder};
use compare::rpc::RpcClient;
use compare::serve::Running;
use compare::wire::Traffic;
use tonic::codec::CompressionEncoding;

/// The placed order without its id, which differs between any two placements.
fn content(placed: &PlacedOrder) -> PlacedOrder {
    PlacedOrder { order_id: String::new(), ..placed.clone() }
}

/// The bytes one call put on the wire, after a first call has set up the connection
/// (HTTP/2's preface and settings, HPACK's table) so that only the call itself is
/// counted.
async fn bytes_of_one_call<T, E: std::fmt::Debug>(
    server: &Running,
    mut call: impl AsyncFnMut() -> Result<T, E>,
) -> Traffic {
    call().await.unwrap();
    let before = server.meter.traffic();
    call().await.unwrap();
    server.meter.traffic().since(before)
}

#[tokio::test]
async fn both_protocols_place_the_same_order_the_same_way() {
    let (http, rpc) = (
        compare::http::spawn().await.unwrap(),
        compare::rpc::spawn().await.unwrap(),
    );
    let order = sample_order(25);
    let mut answers = Vec::new();
    for gzip in [Gzip::Off, Gzip::On] {
        let client = HttpClient::new(http.addr, gzip).unwrap();
        answers.push(client.place(&order).await.unwrap());
        let mut client = RpcClient::connect(rpc.addr, gzip).await.unwrap();
        answers.push(client.place(order.clone()).await.unwrap());
    }
    assert_eq!(answers[0].total_cents, expected_total(&order));
    assert_eq!(answers[0].lines, order.lines);
    for answer in &answers[1..] {
        assert_eq!(content(answer), content(&answers[0]));
    }
    http.shutdown().await.unwrap();
    rpc.shutdown().await.unwrap();
}

#[tokio::test]
async fn both_protocols_refuse_an_invalid_order_with_the_same_reason() {
    let (http, rpc) = (
        compare::http::spawn().await.unwrap(),
        compare::rpc::spawn().await.unwrap(),
    );
    let order = PlaceOrderRequest { currency: "euro".into(), ..sample_order(1) };

    let refused = HttpClient::new(http.addr, Gzip::Off)
        .unwrap()
        .place(&order)
        .await
        .unwrap_err();
    let HttpError::Refused { status, body } = refused else {
        panic!("expected a refusal, got {refused:?}");
    };
    assert_eq!(status, 422);

    let mut client = RpcClient::connect(rpc.addr, Gzip::Off).await.unwrap();
    let status = client.place(order).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("three-letter"), "{status:?}");
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["detail"], status.message());
    http.shutdown().await.unwrap();
    rpc.shutdown().await.unwrap();
}

#[tokio::test]
async fn gzip_shrinks_a_large_order_on_the_wire_both_ways_on_both_protocols() {
    let (http, rpc) = (
        compare::http::spawn().await.unwrap(),
        compare::rpc::spawn().await.unwrap(),
    );
    let order = sample_order(640);
    let json_len = serde_json::to_vec(&order).unwrap().len() as u64;
    let mut by_gzip = Vec::new();
    for gzip in [Gzip::Off, Gzip::On] {
        let client = HttpClient::new(http.addr, gzip).unwrap();
        let over_http =
            bytes_of_one_call(&http, async || client.place(&order).await).await;
        let mut client = RpcClient::connect(rpc.addr, gzip).await.unwrap();
        let over_grpc =
            bytes_of_one_call(&rpc, async || client.place(order.clone()).await)
                .await;
        by_gzip.push((over_http, over_grpc));
    }
    let [(http_off, grpc_off), (http_on, grpc_on)] = by_gzip[..] else {
        unreachable!()
    };
    // Uncompressed, HTTP carries the JSON and gRPC the smaller protobuf, each way.
    assert!(http_off.received > json_len && http_off.sent > json_len);
    assert!(grpc_off.received < json_len && grpc_off.sent < json_len);
    for (off, on) in [(http_off, http_on), (grpc_off, grpc_on)] {
        assert!(on.received * 4 < off.received, "request: {on:?} vs {off:?}");
        assert!(on.sent * 4 < off.sent, "answer: {on:?} vs {off:?}");
    }
    http.shutdown().await.unwrap();
    rpc.shutdown().await.unwrap();
}

#[tokio::test]
async fn gzip_makes_a_one_line_order_bigger_on_the_wire() {
    let (http, rpc) = (
        compare::http::spawn().await.unwrap(),
        compare::rpc::spawn().await.unwrap(),
    );
    let order = sample_order(1);
    let mut totals = Vec::new();
    for gzip in [Gzip::Off, Gzip::On] {
        let client = HttpClient::new(http.addr, gzip).unwrap();
        let over_http =
            bytes_of_one_call(&http, async || client.place(&order).await).await;
        let mut client = RpcClient::connect(rpc.addr, gzip).await.unwrap();
        let over_grpc =
            bytes_of_one_call(&rpc, async || client.place(order.clone()).await)
                .await;
        totals.push((over_http.total(), over_grpc.total()));
    }
    assert!(totals[1].0 > totals[0].0, "HTTP: {totals:?}");
    assert!(totals[1].1 > totals[0].1, "gRPC: {totals:?}");
    http.shutdown().await.unwrap();
    rpc.shutdown().await.unwrap();
}

/// reqwest's `gzip` feature only asks for gzip answers and inflates them: a request
/// body goes out as given, which is why `HttpClient` compresses it itself.
#[tokio::test]
async fn reqwest_gzip_leaves_request_bodies_uncompressed() {
    let http = compare::http::spawn().await.unwrap();
    let json = serde_json::to_vec(&sample_order(640)).unwrap();
    let client = reqwest::Client::builder().no_proxy().gzip(true).build().unwrap();
    let url = format!("http://{}{}", http.addr, compare::http::PLACE_ORDER);
    let traffic = bytes_of_one_call(&http, async || {
        let response = client
            .post(&url)
            .header("content-type", "application/json")
            .body(json.clone())
            .send()
            .await?;
        assert_eq!(response.status(), 201);
        response.bytes().await
    })
    .await;
    assert!(traffic.received > json.len() as u64, "{traffic:?}");
    assert!(
        (traffic.sent as usize) * 4 < json.len(),
        "the answer is gzipped: {traffic:?}"
    );
    http.shutdown().await.unwrap();
}

/// tonic compresses an answer only for a client whose `grpc-accept-encoding` lists
/// gzip: a client that only sends compressed gets plain answers.
#[tokio::test]
async fn tonic_compresses_answers_only_for_clients_that_accept_gzip() {
    let rpc = compare::rpc::spawn().await.unwrap();
    let order = sample_order(640);
    let mut client = OrdersClient::connect(format!("http://{}", rpc.addr))
        .await
        .unwrap()
        .send_compressed(CompressionEncoding::Gzip);
    let traffic =
        bytes_of_one_call(&rpc, async || client.place_order(order.clone()).await)
            .await;
    let protobuf_len = prost::Message::encoded_len(&order) as u64;
    assert!(
        traffic.received * 4 < protobuf_len,
        "the request is gzipped: {traffic:?}"
    );
    assert!(traffic.sent > protobuf_len, "the answer is not: {traffic:?}");
    rpc.shutdown().await.unwrap();
}

/// A tonic server answers a gzipped request with UNIMPLEMENTED unless it was built
/// with `accept_compressed`: compressing requests is the client's choice only once
/// the server accepts it.
#[tokio::test]
async fn tonic_refuses_a_gzipped_request_without_accept_compressed() {
    use compare::proto::orders_server::OrdersServer;
    use compare::rpc::OrdersService;
    use tokio_stream::wrappers::TcpListenerStream;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let plain = OrdersServer::new(OrdersService::default());
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(plain)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let order = sample_order(1);

    let mut uncompressed = OrdersClient::new(channel.clone());
    let placed = uncompressed.place_order(order.clone()).await.unwrap();
    assert_eq!(placed.into_inner().total_cents, expected_total(&order));

    let mut gzipped =
        OrdersClient::new(channel).send_compressed(CompressionEncoding::Gzip);
    let refused = gzipped.place_order(order).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unimplemented, "{refused:?}");
    assert!(refused.message().contains("gzip"), "{refused:?}");
    server.abort();
}

/// tower-http's `RequestDecompressionLayer` inflates a body by its
/// `Content-Encoding` header: the same gzipped bytes are an order with the header
/// and malformed JSON without it.
#[tokio::test]
async fn the_http_service_inflates_a_request_by_its_content_encoding() {
    use std::io::Write;

    let http = compare::http::spawn().await.unwrap();
    let order = sample_order(640);
    let json = serde_json::to_vec(&order).unwrap();
    let mut encoder =
        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(&json).unwrap();
    let gzipped = encoder.finish().unwrap();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("http://{}{}", http.addr, compare::http::PLACE_ORDER);
    let post = |encoding: Option<&'static str>| {
        let mut request = client
            .post(&url)
            .header("content-type", "application/json")
            .body(gzipped.clone());
        if let Some(encoding) = encoding {
            request = request.header("content-encoding", encoding);
        }
        request.send()
    };

    let placed = post(Some("gzip")).await.unwrap();
    assert_eq!(placed.status(), 201);
    let placed: PlacedOrder = placed.json().await.unwrap();
    assert_eq!(placed.total_cents, expected_total(&order));

    let undeclared = post(None).await.unwrap();
    assert_eq!(undeclared.status(), 400, "gzip bytes read as JSON");
    http.shutdown().await.unwrap();
}
