//! The payments service: the four kinds of gRPC call over one [`Ledger`] and the [`CardNetwork`].
//!
//! Every handler runs inside a span named after the service and tagged with the call's correlation
//! id, logs what it decided (status codes by their gRPC names), and echoes the correlation id in
//! its response metadata. Streams are fed by a spawned task through a bounded channel: the bound is
//! the backpressure, and a failed send means the client went away, so the task stops instead of
//! working for nobody. tonic does not time a response stream (its deadline timer stops when the
//! handler returns), so the streaming handlers end their streams, and their tasks, at the caller's
//! deadline themselves; [`PaymentsService::open_streams`] counts the tasks still running.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, Span, info, info_span, warn};

use crate::card::CardNetwork;
use crate::correlation::CorrelationId;
use crate::deadline::{self, Deadline};
use crate::ledger::{self, Begin, Ledger, PaymentError, Snapshot, code_name};
use crate::proto::v2::payments_server::Payments;
use crate::proto::v2::{
    AuthorizationResult, AuthorizeRequest, BatchSummary, CaptureRequest, Decline,
    Payment, PaymentEvent, PaymentStatus, Rejection, WatchPaymentRequest,
    authorization_result::Outcome,
};

/// How the service behaves, including the faults the examples inject.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// How long the (simulated) card network takes to answer an authorization.
    pub card_network_latency: Duration,
    /// Time from a capture to its settlement by the (simulated) acquirer.
    pub settlement_delay: Duration,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            card_network_latency: Duration::ZERO,
            settlement_delay: Duration::from_millis(50),
        }
    }
}

/// The `Payments` service: authorizations, captures and watches over one ledger, with
/// the card network it calls.
#[derive(Debug)]
pub struct PaymentsService {
    ledger: Arc<Ledger>,
    cards: Arc<CardNetwork>,
    config: ServiceConfig,
    /// How many response streams have a task feeding them right now.
    streams: watch::Sender<usize>,
}

impl Default for PaymentsService {
    fn default() -> Self {
        PaymentsService::new(ServiceConfig::default())
    }
}

impl PaymentsService {
    /// A service with an empty ledger and a card network as `config` describes it.
    pub fn new(config: ServiceConfig) -> Self {
        PaymentsService {
            ledger: Arc::default(),
            cards: Arc::new(CardNetwork::new(config.card_network_latency)),
            config,
            streams: watch::Sender::new(0),
        }
    }

    /// How many response streams the service is feeding, as a gauge: each has
    /// a task on the server until it ends, at the latest at its caller's
    /// deadline. A metrics exporter reads it, and a test waits on it.
    pub fn open_streams(&self) -> watch::Receiver<usize> {
        self.streams.subscribe()
    }

    /// Spawns the task that feeds a response stream through `tx`, in `span`:
    /// counted in [`Self::open_streams`] while it runs, and ended at the
    /// caller's deadline with the status `late` makes
    /// ([`deadline::stream_until`]).
    fn spawn_stream<T: Send + 'static>(
        &self,
        span: Span,
        deadline: Option<Deadline>,
        tx: mpsc::Sender<Result<T, Status>>,
        feed: impl Future<Output = ()> + Send + 'static,
        late: impl FnOnce() -> Status + Send + 'static,
    ) {
        let open = OpenStream::count(&self.streams);
        let task = deadline::stream_until(deadline, tx, feed, late);
        tokio::spawn(
            async move {
                task.await;
                drop(open);
            }
            .instrument(span),
        );
    }

    /// The ledger, shared with the service (for tests and the example's final check).
    pub fn ledger(&self) -> Arc<Ledger> {
        Arc::clone(&self.ledger)
    }

    /// The card network the service calls (to count its holds).
    pub fn card_network(&self) -> Arc<CardNetwork> {
        Arc::clone(&self.cards)
    }

    /// Captures a payment; the acquirer settles it `settlement_delay` later.
    pub fn capture(&self, capture: &CaptureRequest) -> Result<u64, PaymentError> {
        ledger::validate_capture(capture)?;
        let cents =
            self.ledger.capture(&capture.payment_id, capture.amount_cents)?;
        let (ledger, delay) = (self.ledger(), self.config.settlement_delay);
        let payment_id = capture.payment_id.clone();
        tokio::spawn(
            async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                if let Ok(true) = ledger.settle(&payment_id) {
                    info!("{payment_id} settled");
                }
            }
            .instrument(info_span!("settlement")),
        );
        Ok(cents)
    }
}

/// One response stream being fed, counted in its service's gauge until dropped.
struct OpenStream(watch::Sender<usize>);

impl OpenStream {
    fn count(gauge: &watch::Sender<usize>) -> OpenStream {
        gauge.send_modify(|open| *open += 1);
        OpenStream(gauge.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.send_modify(|open| *open = open.saturating_sub(1));
    }
}

/// How an authorization ended, for the log.
#[derive(Debug)]
pub enum Authorized {
    /// A new payment: the card network placed a hold.
    New(Payment),
    /// The same request was authorized before: its payment, and no new hold.
    Replayed(Payment),
}

// ANCHOR: authorize_order
/// Authorizes one order: cheap checks first, then the slow card network,
/// given what is left of the caller's deadline.
pub async fn authorize_order(
    ledger: &Ledger,
    cards: &CardNetwork,
    request: &AuthorizeRequest,
    deadline: Option<Deadline>,
) -> Result<Authorized, PaymentError> {
    ledger::validate_authorize(request)?;
    let reservation = match ledger.begin(request)? {
        Begin::Replay(payment) => return Ok(Authorized::Replayed(payment)),
        Begin::Fresh(reservation) => reservation,
    };
    ledger::risk_check(request)?;
    // At the deadline tonic drops this future, but a hold the network has
    // placed stays placed: tell the network how long it may take.
    let budget = deadline.map(Deadline::for_downstream);
    let code = cards.hold(&request.card_token, request.amount_cents, budget);
    Ok(Authorized::New(reservation.complete(code.await?)))
}
// ANCHOR_END: authorize_order

fn with_id<T>(message: T, id: &CorrelationId) -> Response<T> {
    let mut response = Response::new(message);
    id.echo(response.metadata_mut());
    response
}

/// Logs a refusal with the code's gRPC name, and turns it into the answer.
fn refuse(status: Status) -> Status {
    warn!("refused: {}: {}", code_name(status.code()), status.message());
    status
}

#[tonic::async_trait]
impl Payments for PaymentsService {
    // ANCHOR: authorize
    async fn authorize(
        &self,
        request: Request<AuthorizeRequest>,
    ) -> Result<Response<Payment>, Status> {
        let id = CorrelationId::of(&request);
        let deadline = Deadline::of(&request);
        let span = info_span!("payments-service", correlation_id = %id);
        async move {
            let req = request.into_inner();
            let ms = deadline.map(|d| d.budget().as_millis());
            info!(order_id = %req.order_id, deadline_ms = ms, "Authorize");
            if req.customer_id.is_empty() {
                info!("no customer_id (a v1 client): risk check skipped");
            }
            match authorize_order(&self.ledger, &self.cards, &req, deadline).await {
                Ok(Authorized::New(payment)) => {
                    info!(payment_id = %payment.payment_id, "authorized");
                    Ok(with_id(payment, &id))
                }
                Ok(Authorized::Replayed(payment)) => {
                    let payment_id = &payment.payment_id;
                    info!(%payment_id, "same request again: no new hold");
                    Ok(with_id(payment, &id))
                }
                Err(error) => Err(refuse(error.into())),
            }
        }
        .instrument(span)
        .await
    }
    // ANCHOR_END: authorize

    type WatchPaymentStream = ReceiverStream<Result<PaymentEvent, Status>>;

    async fn watch_payment(
        &self,
        request: Request<WatchPaymentRequest>,
    ) -> Result<Response<Self::WatchPaymentStream>, Status> {
        let id = CorrelationId::of(&request);
        let deadline = Deadline::of(&request);
        let span = info_span!("payments-service", correlation_id = %id);
        let payment_id = request.into_inner().payment_id;
        let changes = ledger::validate_watch(&WatchPaymentRequest {
            payment_id: payment_id.clone(),
        })
        .and_then(|()| self.ledger.watch(&payment_id))
        .map_err(|error| span.in_scope(|| refuse(error.into())))?;
        // Room for every state a payment has, and the slot kept for the end.
        let (tx, rx) = mpsc::channel(4);
        let late = format!("deadline passed before {payment_id} settled");
        let late = move || refuse(Status::deadline_exceeded(late));
        let feed = follow(payment_id, changes, tx.clone());
        self.spawn_stream(span, deadline, tx, feed, late);
        Ok(with_id(ReceiverStream::new(rx), &id))
    }

    // ANCHOR: capture_batch
    async fn capture_batch(
        &self,
        request: Request<Streaming<CaptureRequest>>,
    ) -> Result<Response<BatchSummary>, Status> {
        let id = CorrelationId::of(&request);
        let span = info_span!("payments-service", correlation_id = %id);
        async move {
            let mut captures = request.into_inner();
            let mut summary = BatchSummary::default();
            // A refused item is recorded and the batch goes on: one bad line
            // loses nothing else.
            while let Some(capture) = captures.message().await? {
                // The total must hold what it counts: a capture that would
                // carry it past u64::MAX is refused before it is made, and can
                // go in another batch (tests/fuzz.rs found the overflow).
                let total = summary.captured_cents.checked_add(capture.amount_cents);
                let captured = match total {
                    Some(_) => self.capture(&capture).map_err(Status::from),
                    None => Err(Status::out_of_range(
                        "the batch's total would overflow: use another batch",
                    )),
                };
                match captured {
                    Ok(cents) => {
                        summary.captured += 1;
                        summary.captured_cents += cents;
                    }
                    Err(status) => {
                        summary.rejections.push(Rejection {
                            payment_id: capture.payment_id,
                            reason: status.message().to_owned(),
                            code: code_name(status.code()).to_owned(),
                        });
                    }
                }
            }
            info!(
                captured = summary.captured,
                rejected = summary.rejections.len(),
                "CaptureBatch done, {} cents",
                summary.captured_cents
            );
            Ok(with_id(summary, &id))
        }
        .instrument(span)
        .await
    }
    // ANCHOR_END: capture_batch

    type AuthorizeStreamStream = ReceiverStream<Result<AuthorizationResult, Status>>;

    // ANCHOR: authorize_stream
    async fn authorize_stream(
        &self,
        request: Request<Streaming<AuthorizeRequest>>,
    ) -> Result<Response<Self::AuthorizeStreamStream>, Status> {
        let id = CorrelationId::of(&request);
        let deadline = Deadline::of(&request);
        let span = info_span!("payments-service", correlation_id = %id);
        let mut inbound = request.into_inner();
        // One slot of the 16 is kept for the status that ends the stream.
        let (tx, rx) = mpsc::channel(16);
        let (ledger, cards, answers) =
            (self.ledger(), self.card_network(), tx.clone());
        let feed = async move {
            loop {
                let req = match inbound.message().await {
                    Ok(Some(req)) => req,
                    Ok(None) => {
                        return info!("AuthorizeStream: caller finished sending");
                    }
                    Err(status) => return warn!("inbound stream failed: {status}"),
                };
                // Each request is answered as soon as it is decided; a decline
                // is an answer, not the end of the stream.
                let outcome =
                    match authorize_order(&ledger, &cards, &req, deadline).await {
                        Ok(Authorized::New(p) | Authorized::Replayed(p)) => {
                            Outcome::Payment(p)
                        }
                        Err(error) => {
                            let status = Status::from(error);
                            Outcome::Decline(Decline {
                                code: code_name(status.code()).to_owned(),
                                reason: status.message().to_owned(),
                            })
                        }
                    };
                let result = AuthorizationResult {
                    order_id: req.order_id,
                    outcome: Some(outcome),
                };
                if answers.send(Ok(result)).await.is_err() {
                    return info!("the caller went away; stop answering");
                }
            }
        };
        // Every wait above (the next request, the card network, room in the
        // channel) ends at the caller's deadline: tonic no longer times it.
        let late = "the caller's deadline passed mid-stream";
        let late = move || refuse(Status::deadline_exceeded(late));
        self.spawn_stream(span, deadline, tx, feed, late);
        Ok(with_id(ReceiverStream::new(rx), &id))
    }
    // ANCHOR_END: authorize_stream
}

// ANCHOR: follow
/// Streams a payment's states until it settles or the watcher leaves (the
/// handler ends it at the watcher's deadline). It only reads: any number of
/// watchers can follow one payment, and none of them moves it.
async fn follow(
    payment_id: String,
    mut changes: watch::Receiver<Snapshot>,
    tx: mpsc::Sender<Result<PaymentEvent, Status>>,
) {
    info!(%payment_id, "WatchPayment: following until settled");
    loop {
        let now = *changes.borrow_and_update();
        let event = PaymentEvent {
            payment_id: payment_id.clone(),
            status: now.status as i32,
            sequence: now.sequence,
        };
        if tx.send(Ok(event)).await.is_err() {
            return info!("the watcher went away");
        }
        if now.status == PaymentStatus::Settled {
            return info!("settled; stream complete");
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            () = tx.closed() => return info!("the watcher went away"),
        }
    }
}
// ANCHOR_END: follow
