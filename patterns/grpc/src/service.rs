//! The payments service: the four kinds of gRPC call over one [`Ledger`].
//!
//! Every handler runs inside a span named after the service and tagged with the call's correlation
//! id, logs what it decided, and echoes the correlation id in its response metadata. Streams are fed
//! by a spawned task through a bounded channel: the bound is the backpressure, and a failed send
//! means the client went away, so the task stops instead of working for nobody.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, info, info_span, warn};

use crate::correlation::CorrelationId;
use crate::deadline;
use crate::ledger::{self, Ledger};
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
    /// Time between settlement steps of a watched payment.
    pub settlement_step: Duration,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            card_network_latency: Duration::ZERO,
            settlement_step: Duration::from_millis(50),
        }
    }
}

#[derive(Debug, Default)]
pub struct PaymentsService {
    ledger: Arc<Ledger>,
    config: ServiceConfig,
}

impl PaymentsService {
    pub fn new(config: ServiceConfig) -> Self {
        PaymentsService { ledger: Arc::default(), config }
    }

    /// The simulated card network: answers after the configured latency.
    async fn card_network(&self) {
        // No timer for no latency: a zero sleep still waits for the timer's next tick (about 1 ms).
        if !self.config.card_network_latency.is_zero() {
            tokio::time::sleep(self.config.card_network_latency).await;
        }
    }

    /// The ledger, shared with the service (for tests and the example's final check).
    pub fn ledger(&self) -> Arc<Ledger> {
        Arc::clone(&self.ledger)
    }
}

fn with_id<T>(message: T, id: &CorrelationId) -> Response<T> {
    let mut response = Response::new(message);
    id.echo(response.metadata_mut());
    response
}

#[tonic::async_trait]
impl Payments for PaymentsService {
    // ANCHOR: authorize
    async fn authorize(
        &self,
        request: Request<AuthorizeRequest>,
    ) -> Result<Response<Payment>, Status> {
        let id = CorrelationId::of(&request);
        let budget = deadline::from_metadata(request.metadata());
        let span = info_span!("payments-service", correlation_id = %id);
        async move {
            let req = request.into_inner();
            let deadline = budget.map_or("none".to_owned(), |b| format!("{b:?}"));
            info!(order_id = %req.order_id, amount_cents = req.amount_cents, "Authorize; caller's deadline: {deadline}");
            if req.customer_id.is_empty() {
                info!("no customer_id (a v1 client): risk check skipped");
            }
            // Cheap checks first: a bad request should not wait for the card network.
            // The slow part, the card network, is bounded by the caller's deadline.
            let checked = match ledger::validate(&req) {
                Ok(()) => deadline::within(budget, self.card_network()).await,
                Err(error) => Err(Status::from(error)),
            };
            let authorized = checked.and_then(|()| self.ledger.authorize(&req).map_err(Status::from));
            match authorized {
                Ok(payment) => {
                    info!(payment_id = %payment.payment_id, "authorized");
                    Ok(with_id(payment, &id))
                }
                Err(status) => {
                    warn!(code = ?status.code(), "refused: {}", status.message());
                    Err(status)
                }
            }
        }
        .instrument(span)
        .await
    }
    // ANCHOR_END: authorize

    type WatchPaymentStream = ReceiverStream<Result<PaymentEvent, Status>>;

    // ANCHOR: watch_payment
    async fn watch_payment(
        &self,
        request: Request<WatchPaymentRequest>,
    ) -> Result<Response<Self::WatchPaymentStream>, Status> {
        let id = CorrelationId::of(&request);
        let span = info_span!("payments-service", correlation_id = %id);
        let payment_id = request.into_inner().payment_id;
        let current = self.ledger.get(&payment_id).map_err(Status::from)?;
        let (tx, rx) = mpsc::channel(4);
        let ledger = self.ledger();
        let step = self.config.settlement_step;
        tokio::spawn(
            async move {
                info!(%payment_id, "WatchPayment: streaming until settled");
                let mut status = current.status();
                for sequence in 1.. {
                    let event = PaymentEvent {
                        payment_id: payment_id.clone(),
                        status: status as i32,
                        sequence,
                    };
                    if tx.send(Ok(event)).await.is_err() {
                        info!("the watcher went away; stop streaming");
                        return;
                    }
                    if status == PaymentStatus::Settled {
                        info!("settled; stream complete");
                        return;
                    }
                    tokio::time::sleep(step).await;
                    status = match ledger.advance(&payment_id) {
                        Ok(next) => next,
                        Err(e) => {
                            let _ = tx.send(Err(Status::from(e))).await;
                            return;
                        }
                    };
                }
            }
            .instrument(span),
        );
        Ok(with_id(ReceiverStream::new(rx), &id))
    }
    // ANCHOR_END: watch_payment

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
            // A refused item is recorded and the batch goes on: one bad line loses nothing else.
            while let Some(capture) = captures.message().await? {
                match self.ledger.capture(&capture.payment_id, capture.amount_cents)
                {
                    Ok(cents) => {
                        summary.captured += 1;
                        summary.captured_cents += cents;
                    }
                    Err(error) => summary.rejections.push(Rejection {
                        payment_id: capture.payment_id,
                        reason: error.to_string(),
                    }),
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
        let span = info_span!("payments-service", correlation_id = %id);
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let ledger = self.ledger();
        tokio::spawn(
            async move {
                loop {
                    let req = match inbound.message().await {
                        Ok(Some(req)) => req,
                        Ok(None) => break,
                        Err(status) => {
                            warn!("inbound stream failed: {status}");
                            break;
                        }
                    };
                    // Each request gets its own answer as soon as it is decided; a decline is an
                    // answer, not the end of the stream.
                    let outcome = match ledger.authorize(&req) {
                        Ok(payment) => Outcome::Payment(payment),
                        Err(error) => {
                            let status = Status::from(error);
                            Outcome::Decline(Decline {
                                code: format!("{:?}", status.code()),
                                reason: status.message().to_owned(),
                            })
                        }
                    };
                    let result = AuthorizationResult {
                        order_id: req.order_id,
                        outcome: Some(outcome),
                    };
                    if tx.send(Ok(result)).await.is_err() {
                        info!("the caller went away; stop answering");
                        return;
                    }
                }
                info!("AuthorizeStream: caller finished sending");
            }
            .instrument(span),
        );
        Ok(with_id(ReceiverStream::new(rx), &id))
    }
    // ANCHOR_END: authorize_stream
}
