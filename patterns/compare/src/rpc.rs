//! Placing an order over gRPC: a tonic service and client, protobuf on HTTP/2.
//!
//! gzip, both ways, when the client asks for it: the server accepts gzip requests
//! and may send gzip answers (`accept_compressed`, `send_compressed`); a client with
//! `send_compressed` compresses its requests, and with `accept_compressed` it says
//! `grpc-accept-encoding: gzip`, which is what makes the server compress the answer.
//! tonic compresses at gzip's level 6.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::codec::CompressionEncoding;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Request, Response, Status};

use crate::Gzip;
use crate::order::OrderDesk;
use crate::proto::orders_client::OrdersClient;
use crate::proto::orders_server::{Orders, OrdersServer};
use crate::proto::{PlaceOrderRequest, PlacedOrder};
use crate::serve::{BoxError, Running};
use crate::wire::{Meter, Metered};

/// The orders service: the same [`OrderDesk`] as the HTTP side.
#[derive(Debug, Default)]
pub struct OrdersService {
    desk: OrderDesk,
}

#[tonic::async_trait]
impl Orders for OrdersService {
    async fn place_order(
        &self,
        request: Request<PlaceOrderRequest>,
    ) -> Result<Response<PlacedOrder>, Status> {
        self.desk
            .place(request.into_inner())
            .map(Response::new)
            .map_err(|invalid| Status::invalid_argument(invalid.to_string()))
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for Metered<S>
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> S::ConnectInfo {
        self.get_ref().connect_info()
    }
}

// ANCHOR: spawn
/// Serves [`OrdersService`] on `127.0.0.1:0`, counting its bytes on the wire.
pub async fn spawn() -> io::Result<Running> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let meter = Meter::default();
    let service = OrdersServer::new(OrdersService::default())
        .accept_compressed(CompressionEncoding::Gzip)
        // Only to clients whose grpc-accept-encoding lists gzip.
        .send_compressed(CompressionEncoding::Gzip);
    let connections = meter.clone();
    let incoming = TcpListenerStream::new(listener)
        .map(move |accepted| connections.accepted(accepted?));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        Server::builder()
            .add_service(service)
            // Told to stop, or the handle that could tell it was dropped: stop
            // either way.
            .serve_with_incoming_shutdown(incoming, async {
                let _stop_or_handle_dropped = stopped.await;
            })
            .await
            .map_err(BoxError::from)
    });
    Ok(Running::new(addr, meter, stop, task))
}
// ANCHOR_END: spawn

/// A client of the orders service over one HTTP/2 connection.
pub struct RpcClient {
    inner: OrdersClient<Channel>,
}

impl RpcClient {
    /// Connects one HTTP/2 channel to the service at `addr`, gzipping both ways if
    /// asked, with a client-side timeout that sends no deadline.
    pub async fn connect(
        addr: SocketAddr,
        gzip: Gzip,
    ) -> Result<Self, tonic::transport::Error> {
        // A client-side timeout like reqwest's: it puts nothing on the wire (a
        // deadline, `Request::set_timeout`, would add a grpc-timeout header to every
        // call).
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .timeout(Duration::from_secs(30))
            .connect()
            .await?;
        let inner = match gzip {
            Gzip::Off => OrdersClient::new(channel),
            Gzip::On => OrdersClient::new(channel)
                .send_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Gzip),
        };
        Ok(RpcClient { inner })
    }

    /// Places an order: the unary call `PlaceOrder`, gzipped if asked for.
    pub async fn place(
        &mut self,
        order: PlaceOrderRequest,
    ) -> Result<PlacedOrder, Status> {
        let placed = self.inner.place_order(order).await?;
        Ok(placed.into_inner())
    }
}
