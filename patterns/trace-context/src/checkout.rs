//! One checkout across four transports, every hop traced: the scenario the example runs and the
//! test checks.
//!
//! ```text
//! storefront --HTTP--> checkout-api --gRPC--> payments --Kafka--> fulfilment --AMQP--> shipping
//! ```
//!
//! The storefront posts the order to the checkout API (axum), which authorizes the payment with
//! the payments service (tonic, the gRPC chapter's service wrapped in a traced one). Once the
//! payment is authorized, payments publishes `OrderPlaced` to Kafka and answers. Fulfilment
//! consumes the event and sends a shipment task to a RabbitMQ queue; shipping takes it and acks.
//! The shop's correlation id travels along too, in each transport's own header, so the logs of
//! all five services can be searched for it; the trace context travels beside it.
//!
//! Every topic and queue is new for each run (a random suffix), so runs never see each other's
//! messages. A production system would run each service in its own process, with its own
//! `service.name`; here they share one process and say who they are in `shop.service`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use futures::StreamExt;
use grpc::correlation::{self, AttachCorrelationId, CorrelationId};
use grpc::proto::v2::payments_client::PaymentsClient;
use grpc::proto::v2::payments_server::{Payments, PaymentsServer};
use grpc::proto::v2::{
    AuthorizeRequest, BatchSummary, CaptureRequest, Payment, WatchPaymentRequest,
};
use grpc::service::PaymentsService;
use kafka_events::envelope::{Metadata, OrderPlaced, decode};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use opentelemetry::trace::SpanKind;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use serde::{Deserialize, Serialize};
use shop_domain::Service;
use shop_domain::time::{Precision, rfc3339};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tonic::transport::{Channel as GrpcChannel, Endpoint, Server};
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, info, warn};

use crate::hops::{self, Both};

/// The five services, as `shop.service` names them. The storefront: it sends the
/// HTTP request, so its client span is the root of the trace.
pub const STOREFRONT: &str = "storefront";
/// The checkout API: HTTP server, then gRPC client of payments.
pub const CHECKOUT_API: &str = "checkout-api";
/// Payments: gRPC server, then Kafka producer of `OrderPlaced`.
pub const PAYMENTS: &str = Service::Payments.name();
/// Fulfilment: Kafka consumer, then AMQP publisher of the shipment task.
pub const FULFILMENT: &str = "fulfilment";
/// Shipping: AMQP consumer, the last hop of the trace.
pub const SHIPPING: &str = Service::Shipping.name();

/// The gRPC method, named as OpenTelemetry's conventions name it.
pub const AUTHORIZE: &str = "shop.payments.Payments/Authorize";

/// Why the shop could not start or a checkout failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Creating the run's topic, or building or subscribing a client, failed.
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// Connecting to RabbitMQ or declaring the run's queue failed.
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    /// A service could not bind its loopback port.
    #[error("cannot listen: {0}")]
    Io(#[from] std::io::Error),
    /// The storefront's `POST /checkout` failed or answered with an error status.
    #[error("checkout call failed: {0}")]
    Http(#[from] reqwest::Error),
    /// The checkout API could not set up its gRPC channel to payments.
    #[error("bad gRPC address: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// What was awaited (named first) did not come within the limit (second).
    #[error("{0} did not happen within {1:?}")]
    Timeout(&'static str, Duration),
    /// Shipping's consumer has ended, so waiting longer cannot bring a shipment.
    #[error("shipping has stopped: no more shipments will be reported")]
    Stopped,
}

/// What the storefront posts to `POST /checkout`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckoutRequest {
    /// The shop's order id: it rides in `OrderPlaced` and comes back in [`Shipped`].
    pub order_id: String,
    /// Who pays: passed to payments and on into the event.
    pub customer_id: String,
    /// The amount to authorize, in cents so that no rounding happens on the way.
    pub total_cents: u64,
    /// The card to charge, as the payment provider's token, never a card number.
    pub card_token: String,
}

/// The checkout API's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckoutReply {
    /// The order the reply is about, echoed from the request.
    pub order_id: String,
    /// The authorization payments granted: the id to capture or refund it by.
    pub payment_id: String,
}

/// What shipping reports when it has taken a shipment task.
#[derive(Clone, Debug, PartialEq)]
pub struct Shipped {
    /// The order shipping took, as it arrived over AMQP.
    pub order_id: String,
    /// The correlation id that arrived with it: a test compares it with the one
    /// the storefront sent, to show it survived all four hops.
    pub correlation_id: String,
}

/// Where the brokers are, and whether fulfilment passes the trace on.
#[derive(Clone, Debug)]
pub struct Brokers {
    /// Kafka bootstrap servers, as `infra::kafka_brokers()` gives them.
    pub kafka: String,
    /// RabbitMQ's AMQP URL, as `infra::amqp_addr()` gives it.
    pub amqp: String,
    /// False leaves the trace context out of the AMQP messages (break it).
    pub amqp_context: bool,
}

/// The five services, running.
pub struct Shop {
    /// Where the checkout API listens (a loopback port picked by the OS).
    pub http_addr: SocketAddr,
    /// This run's Kafka topic for `OrderPlaced`, unique to the run.
    pub topic: String,
    /// This run's shipment queue: exclusive, so it goes away with the shop.
    pub queue: String,
    http: reqwest::Client,
    shipped: mpsc::Receiver<Shipped>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    amqp: Connection,
    channels: Vec<Channel>,
}

impl Shop {
    /// Starts every service on loopback ports and the consumers on fresh
    /// destinations.
    pub async fn start(brokers: &Brokers) -> Result<Shop, Error> {
        let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        let topic = format!("orders-placed-{run}");
        let queue = format!("shipments-{run}");
        kafka_events::client::create_topics(&brokers.kafka, &[(&topic, 1)]).await?;
        let (stop, stopped) = watch::channel(false);
        let (amqp, channel) = rabbitmq_queues::connect(&brokers.amqp).await?;
        rabbitmq_queues::publish::enable_confirms(&channel).await?;
        // Exclusive and auto-deleted: the queue goes away with this connection.
        let options = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        channel
            .queue_declare(queue.as_str().into(), options, FieldTable::default())
            .await?;
        let (shipped_tx, shipped) = mpsc::channel(16);
        let consuming = amqp.create_channel().await?;
        let channels = vec![channel.clone(), consuming.clone()];
        let shipping =
            shipping(consuming, &queue, shipped_tx, stopped.clone()).await?;
        let group = format!("fulfilment-{run}");
        let consumer = kafka_events::client::consumer(&brokers.kafka, &group)?;
        consumer.subscribe(&[&topic])?;
        let fulfilment = tokio::spawn(fulfilment(
            consumer,
            channel,
            (queue.clone(), brokers.amqp_context),
            stopped.clone(),
        ));
        let producer = kafka_events::client::producer(&brokers.kafka)?;
        let payments = TracedPayments {
            inner: PaymentsService::default(),
            producer,
            topic: topic.clone(),
        };
        let (grpc_addr, grpc) = serve_payments(payments, stopped.clone()).await?;
        let (http_addr, http) = serve_checkout(grpc_addr, stopped).await?;
        info!(
            "five services up: HTTP {http_addr}, gRPC {grpc_addr}, {topic}, {queue}"
        );
        Ok(Shop {
            http_addr,
            topic,
            queue,
            http: reqwest::Client::new(),
            shipped,
            stop,
            tasks: vec![shipping, fulfilment, grpc, http],
            amqp,
            channels,
        })
    }

    /// The storefront's side: one `POST /checkout` in a `client` span, the root
    /// of the trace.
    pub async fn place_order(
        &self,
        order: &CheckoutRequest,
        correlation_id: &str,
    ) -> Result<CheckoutReply, Error> {
        let url = format!("http://{}/checkout", self.http_addr);
        let request = self
            .http
            .post(url)
            .header(correlation::CORRELATION_ID, correlation_id)
            .json(order);
        let (request, span) =
            hops::http_client(STOREFRONT, "POST", "/checkout", request);
        async {
            let reply = request.send().await?.error_for_status()?;
            Ok(reply.json().await?)
        }
        .instrument(span)
        .await
    }

    /// Waits at most `limit` for shipping to take the next shipment task.
    pub async fn shipped(&mut self, limit: Duration) -> Result<Shipped, Error> {
        match tokio::time::timeout(limit, self.shipped.recv()).await {
            Ok(Some(shipped)) => Ok(shipped),
            Ok(None) => Err(Error::Stopped),
            Err(_elapsed) => Err(Error::Timeout("a shipment", limit)),
        }
    }

    /// Stops every service and consumer and waits for them to finish.
    pub async fn shutdown(self) {
        drop(self.http); // idle keep-alive connections would hold the server open
        // `send_replace` cannot fail: it stores the value with or without readers.
        self.stop.send_replace(true);
        for task in self.tasks {
            if let Err(error) = task.await {
                warn!("a service of the shop panicked: {error}");
            }
        }
        // Channels first, then the connection: closing a connection while one of
        // its channels is still closing fails. The exclusive queue goes with it.
        for channel in self.channels {
            if let Err(error) = channel.close(200, "done".into()).await {
                tracing::debug!("closing an AMQP channel: {error}");
            }
        }
        if let Err(error) = self.amqp.close(200, "done".into()).await {
            tracing::debug!("closing the AMQP connection: {error}");
        }
    }
}

/// The checkout API's state: a lazily connected channel to payments.
#[derive(Clone)]
struct Api {
    payments: GrpcChannel,
}

async fn serve_checkout(
    payments: SocketAddr,
    mut stopped: watch::Receiver<bool>,
) -> Result<(SocketAddr, JoinHandle<()>), Error> {
    let channel =
        Endpoint::from_shared(format!("http://{payments}"))?.connect_lazy();
    let app = app(Api { payments: channel });
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        // An error means the stop sender is gone: stop then too.
        if stopped.wait_for(|stop| *stop).await.is_err() {
            tracing::debug!("checkout-api: stop signal dropped, shutting down");
        }
    });
    let task = tokio::spawn(async move {
        if let Err(error) = server.await {
            warn!("checkout-api stopped: {error}");
        }
    });
    Ok((addr, task))
}

/// The checkout API: every route runs in the `server` span of
/// [`hops::http_server_span`].
fn app(api: Api) -> Router {
    Router::new()
        .route("/checkout", post(checkout))
        .layer(axum::middleware::from_fn_with_state(
            CHECKOUT_API,
            hops::http_server_span,
        ))
        .with_state(api)
}

// ANCHOR: checkout
/// Authorizes the payment over gRPC, inside a `client` span whose context the
/// interceptor copies into the call's metadata, next to the correlation id.
async fn checkout(
    State(api): State<Api>,
    headers: HeaderMap,
    Json(order): Json<CheckoutRequest>,
) -> Result<Json<CheckoutReply>, (StatusCode, String)> {
    let id = headers
        .get(correlation::CORRELATION_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| correlation::is_sane(id))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
    info!(correlation_id = %id, order_id = %order.order_id, "checkout");
    let attach = AttachCorrelationId::new(&id).map_err(bad_gateway)?;
    let interceptors = Both(attach, hops::inject_grpc);
    let mut payments = PaymentsClient::with_interceptor(api.payments, interceptors);
    let mut request = Request::new(AuthorizeRequest {
        order_id: order.order_id.clone(),
        amount_cents: order.total_cents,
        currency: "EUR".into(),
        card_token: order.card_token,
        customer_id: order.customer_id,
    });
    request.set_timeout(Duration::from_secs(5));
    let span = hops::grpc_client_span(CHECKOUT_API, AUTHORIZE);
    let payment = payments.authorize(request).instrument(span).await;
    let payment = payment.map_err(bad_gateway)?.into_inner();
    let order_id = order.order_id;
    Ok(Json(CheckoutReply { order_id, payment_id: payment.payment_id }))
}
// ANCHOR_END: checkout

fn bad_gateway(status: Status) -> (StatusCode, String) {
    warn!("payments refused: {status}");
    (StatusCode::BAD_GATEWAY, status.message().to_owned())
}

/// The gRPC chapter's payments service, traced, and publishing `OrderPlaced` once
/// a payment is authorized.
struct TracedPayments {
    inner: PaymentsService,
    producer: FutureProducer,
    topic: String,
}

async fn serve_payments(
    payments: TracedPayments,
    mut stopped: watch::Receiver<bool>,
) -> Result<(SocketAddr, JoinHandle<()>), Error> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let interceptors = Both(correlation::accept, hops::extract_grpc);
    let server = Server::builder()
        .add_service(PaymentsServer::with_interceptor(payments, interceptors))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            async move {
                // An error means the stop sender is gone: stop then too.
                if stopped.wait_for(|stop| *stop).await.is_err() {
                    tracing::debug!("payments: stop signal dropped, shutting down");
                }
            },
        );
    let task = tokio::spawn(async move {
        if let Err(error) = server.await {
            warn!("payments stopped: {error}");
        }
    });
    Ok((addr, task))
}

#[tonic::async_trait]
impl Payments for TracedPayments {
    // ANCHOR: authorize
    async fn authorize(
        &self,
        request: Request<AuthorizeRequest>,
    ) -> Result<Response<Payment>, Status> {
        let span = hops::grpc_server_span(PAYMENTS, AUTHORIZE, &request);
        let id = CorrelationId::of(&request);
        async move {
            let order = request.get_ref().clone();
            let payment = self.inner.authorize(request).await?;
            let event = OrderPlaced {
                order_id: order.order_id,
                customer_id: order.customer_id,
                total_cents: order.amount_cents,
                currency: order.currency,
            };
            let metadata = Metadata::order_placed(&id.0, &rfc3339_now());
            let producer = &self.producer;
            hops::publish_kafka(PAYMENTS, producer, &self.topic, &metadata, &event)
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            info!(order_id = %event.order_id, "authorized; OrderPlaced published");
            Ok(payment)
        }
        .instrument(span)
        .await
    }
    // ANCHOR_END: authorize

    type WatchPaymentStream = <PaymentsService as Payments>::WatchPaymentStream;

    async fn watch_payment(
        &self,
        request: Request<WatchPaymentRequest>,
    ) -> Result<Response<Self::WatchPaymentStream>, Status> {
        self.inner.watch_payment(request).await
    }

    async fn capture_batch(
        &self,
        request: Request<Streaming<CaptureRequest>>,
    ) -> Result<Response<BatchSummary>, Status> {
        self.inner.capture_batch(request).await
    }

    type AuthorizeStreamStream =
        <PaymentsService as Payments>::AuthorizeStreamStream;

    async fn authorize_stream(
        &self,
        request: Request<Streaming<AuthorizeRequest>>,
    ) -> Result<Response<Self::AuthorizeStreamStream>, Status> {
        self.inner.authorize_stream(request).await
    }
}

// ANCHOR: fulfilment
/// Fulfilment: each `OrderPlaced` becomes a shipment task on the AMQP queue, in
/// a `consumer` span that continues the producer's trace.
async fn fulfilment(
    consumer: StreamConsumer,
    channel: Channel,
    (queue, propagate): (String, bool),
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let message = tokio::select! {
            message = consumer.recv() => message,
            _ = stopped.wait_for(|stop| *stop) => return,
        };
        let message = match message {
            Ok(message) => message,
            Err(error) => {
                warn!("fulfilment: {error}");
                continue;
            }
        };
        let span = hops::kafka_consumer_span(FULFILMENT, &message);
        async {
            let event = match decode(&message) {
                Ok(event) => event,
                Err(error) => return warn!("undecodable event skipped: {error}"),
            };
            let id = &event.metadata.correlation_id;
            let task = (queue.as_str(), event.order.order_id.as_bytes());
            match hops::publish_amqp(FULFILMENT, &channel, task, id, propagate).await
            {
                Ok(()) => info!("shipment task sent for {}", event.order.order_id),
                Err(error) => warn!("shipment task not sent: {error}"),
            }
            if let Err(error) = consumer.store_offset_from_message(&message) {
                warn!("offset not stored (the event may come again): {error}");
            }
        }
        .instrument(span)
        .await;
    }
}
// ANCHOR_END: fulfilment

/// Shipping: takes shipment tasks, acks them, and reports each one.
async fn shipping(
    channel: Channel,
    queue: &str,
    report: mpsc::Sender<Shipped>,
    mut stopped: watch::Receiver<bool>,
) -> Result<JoinHandle<()>, Error> {
    let mut deliveries = channel
        .basic_consume(
            queue.into(),
            SHIPPING.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let queue: Arc<str> = queue.into();
    Ok(tokio::spawn(async move {
        loop {
            let delivery = tokio::select! {
                delivery = deliveries.next() => delivery,
                _ = stopped.wait_for(|stop| *stop) => return,
            };
            let delivery = match delivery {
                Some(Ok(delivery)) => delivery,
                Some(Err(error)) => return warn!("shipping stopped: {error}"),
                None => return,
            };
            let span =
                hops::amqp_consumer_span(SHIPPING, &queue, &delivery.properties);
            async {
                let order_id = String::from_utf8_lossy(&delivery.data).into_owned();
                let correlation_id = hops::amqp_correlation_id(&delivery.properties)
                    .unwrap_or_default();
                info!(%correlation_id, "shipping {order_id}");
                if let Err(error) = delivery.ack(BasicAckOptions::default()).await {
                    return warn!("ack failed: {error}");
                }
                let shipped = Shipped { order_id, correlation_id };
                if report.send(shipped).await.is_err() {
                    tracing::debug!("shipped, and nobody is waiting for the report");
                }
            }
            .instrument(span)
            .await;
        }
    }))
}

/// The current time in RFC 3339 (UTC, whole seconds), for the event envelope.
fn rfc3339_now() -> String {
    rfc3339(SystemTime::now(), Precision::Seconds)
}

/// Every hop of a checkout, as (service, span kind): a complete trace has them all.
pub const HOPS: [(&str, SpanKind); 8] = [
    (STOREFRONT, SpanKind::Client),
    (CHECKOUT_API, SpanKind::Server),
    (CHECKOUT_API, SpanKind::Client),
    (PAYMENTS, SpanKind::Server),
    (PAYMENTS, SpanKind::Producer),
    (FULFILMENT, SpanKind::Consumer),
    (FULFILMENT, SpanKind::Producer),
    (SHIPPING, SpanKind::Consumer),
];
