//! Placing an order over HTTP/1.1 and JSON: an axum service and a reqwest client.
//!
//! gzip, both ways, when the client asks for it: tower-http's `CompressionLayer`
//! compresses an answer when the request says `Accept-Encoding: gzip` (which
//! reqwest's `gzip` feature sends, inflating the answer on arrival), and its
//! `RequestDecompressionLayer` inflates a request body sent with `Content-Encoding:
//! gzip`. reqwest never compresses a request body itself, so the client does that
//! with flate2, at gzip's default level (6), the level tonic uses.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use flate2::Compression;
use flate2::write::GzEncoder;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tower_http::compression::CompressionLayer;
use tower_http::decompression::RequestDecompressionLayer;

use crate::Gzip;
use crate::order::{Invalid, OrderDesk};
use crate::proto::{PlaceOrderRequest, PlacedOrder};
use crate::serve::{BoxError, Running};
use crate::wire::{Meter, Metered};

/// Where orders are placed.
pub const PLACE_ORDER: &str = "/v1/orders";

// ANCHOR: app
/// The orders service: `POST /v1/orders` with a JSON order, `201 Created` with the
/// placed order, gzip both ways for clients that use it.
pub fn app(desk: Arc<OrderDesk>) -> Router {
    Router::new()
        .route(PLACE_ORDER, post(place_order))
        .with_state(desk)
        // Answers: gzip when the request's Accept-Encoding allows it.
        .layer(CompressionLayer::new())
        // Requests: inflate a body sent with Content-Encoding: gzip.
        .layer(RequestDecompressionLayer::new())
}
// ANCHOR_END: app

async fn place_order(
    State(desk): State<Arc<OrderDesk>>,
    Json(order): Json<PlaceOrderRequest>,
) -> Response {
    match desk.place(order) {
        Ok(placed) => (StatusCode::CREATED, Json(placed)).into_response(),
        Err(invalid) => problem(&invalid),
    }
}

/// An RFC 9457 problem body for an order that cannot be placed.
fn problem(invalid: &Invalid) -> Response {
    let status = StatusCode::UNPROCESSABLE_ENTITY;
    let body = serde_json::json!({
        "title": "the order cannot be placed",
        "status": status.as_u16(),
        "detail": invalid.to_string(),
    });
    let content_type = [(header::CONTENT_TYPE, "application/problem+json")];
    (status, content_type, Json(body)).into_response()
}

/// Serves [`app`] on `127.0.0.1:0`, counting its bytes on the wire.
pub async fn spawn() -> io::Result<Running> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let meter = Meter::default();
    let metered = MeteredListener { listener, meter: meter.clone() };
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(metered, app(Arc::default()))
            // Told to stop, or the handle that could tell it was dropped: stop
            // either way.
            .with_graceful_shutdown(async {
                let _stop_or_handle_dropped = stopped.await;
            })
            .await
            .map_err(BoxError::from)
    });
    Ok(Running::new(addr, meter, stop, task))
}

/// A TCP listener whose connections are [`Metered`].
struct MeteredListener {
    listener: TcpListener,
    meter: Meter,
}

impl axum::serve::Listener for MeteredListener {
    type Io = Metered<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.listener.accept().await {
                Ok((socket, peer)) => match self.meter.accepted(socket) {
                    Ok(io) => return (io, peer),
                    // The connection died before it could be set up: take the next.
                    Err(error) => {
                        tracing::debug!(%error, "connection lost at setup")
                    }
                },
                // Out of file descriptors, say: back off briefly rather than spin,
                // as axum's own listener does.
                Err(error) => {
                    tracing::error!(%error, "accept failed; retrying in 50 ms");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Why a call to [`HttpClient::place`] failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The request did not complete: connection, timeout, or an undecodable answer.
    #[error(transparent)]
    Request(#[from] reqwest::Error),
    /// The order could not be written as JSON (a bug, not a network error).
    #[error("encoding the order: {0}")]
    Encode(#[from] serde_json::Error),
    /// gzip failed while compressing the request body.
    #[error("compressing the order: {0}")]
    Compress(#[from] io::Error),
    /// The service answered, but not `201 Created`: its status and problem body.
    #[error("the service answered {status}: {body}")]
    Refused {
        /// The HTTP status, 422 for an invalid order.
        status: u16,
        /// The problem body, which names what was wrong.
        body: String,
    },
}

/// A client of the orders service over one kept-alive HTTP/1.1 connection.
pub struct HttpClient {
    http: reqwest::Client,
    url: String,
    gzip: Gzip,
}

impl HttpClient {
    /// A client for the service at `addr`, with its own connection and gzip setting;
    /// it never goes through a proxy, so the bytes counted are this call's alone.
    pub fn new(addr: SocketAddr, gzip: Gzip) -> Result<Self, HttpError> {
        let http = reqwest::Client::builder()
            // Loopback: never through a proxy the environment may name.
            .no_proxy()
            // On: send `Accept-Encoding: gzip` and inflate gzip answers. Off: ask
            // for none.
            .gzip(gzip == Gzip::On)
            .timeout(Duration::from_secs(30))
            .build()?;
        let url = format!("http://{addr}{PLACE_ORDER}");
        Ok(HttpClient { http, url, gzip })
    }

    // ANCHOR: place
    /// Places an order: `POST /v1/orders` with the order as JSON, gzipped if asked
    /// for.
    pub async fn place(
        &self,
        order: &PlaceOrderRequest,
    ) -> Result<PlacedOrder, HttpError> {
        let json = serde_json::to_vec(order)?;
        let request = self
            .http
            .post(&self.url)
            .header(header::CONTENT_TYPE, "application/json");
        let request = match self.gzip {
            Gzip::Off => request.body(json),
            // reqwest inflates answers, but compressing the request is ours to do.
            Gzip::On => {
                request.header(header::CONTENT_ENCODING, "gzip").body(gzip(&json)?)
            }
        };
        let response = request.send().await?;
        let status = response.status();
        if status != StatusCode::CREATED {
            let body = response.text().await?;
            return Err(HttpError::Refused { status: status.as_u16(), body });
        }
        Ok(response.json().await?)
    }
    // ANCHOR_END: place
}

fn gzip(bytes: &[u8]) -> io::Result<Vec<u8>> {
    let mut encoder =
        GzEncoder::new(Vec::with_capacity(bytes.len() / 4), Compression::new(6));
    encoder.write_all(bytes)?;
    encoder.finish()
}
