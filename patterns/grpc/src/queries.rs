//! `PaymentQueries`: the read side the API gateway composes views from.
//!
//! One call answers for many orders. A caller that needs the payments of a page of orders asks
//! once, not once per order: the gateway's GraphQL data loader collects the order ids a query
//! needs and sends them here together. Reads change nothing, so a caller may retry them freely.
//!
//! `latency` delays every answer; it exists for the gateway example's `--slow-payments`, so the
//! gateway can be shown giving a partial answer when this backend is late.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use tracing::{Instrument, info, info_span};

use crate::correlation::CorrelationId;
use crate::ledger::Ledger;
use crate::proto::v2::payment_queries_server::PaymentQueries;
use crate::proto::v2::{PaymentsForOrdersRequest, PaymentsForOrdersResponse};

/// Most order ids one call may ask about: a bound on the work one request can cause.
pub const MAX_ORDERS_PER_CALL: usize = 500;

/// The `PaymentQueries` service over the payments service's ledger.
#[derive(Debug, Clone)]
pub struct PaymentQueriesService {
    ledger: Arc<Ledger>,
    latency: Duration,
}

impl PaymentQueriesService {
    /// Read-only queries over `ledger`, answering at once.
    pub fn new(ledger: Arc<Ledger>) -> Self {
        PaymentQueriesService { ledger, latency: Duration::ZERO }
    }

    /// Fault injection: every answer leaves `latency` late.
    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }
}

#[tonic::async_trait]
impl PaymentQueries for PaymentQueriesService {
    async fn payments_for_orders(
        &self,
        request: Request<PaymentsForOrdersRequest>,
    ) -> Result<Response<PaymentsForOrdersResponse>, Status> {
        let id = CorrelationId::of(&request);
        let span = info_span!("payments-service", correlation_id = %id);
        async move {
            let order_ids = request.into_inner().order_ids;
            if order_ids.len() > MAX_ORDERS_PER_CALL {
                let limit = MAX_ORDERS_PER_CALL;
                let message = format!("order_ids: at most {limit} per call");
                return Err(Status::invalid_argument(message));
            }
            let payments: Vec<_> =
                order_ids.iter().filter_map(|o| self.ledger.for_order(o)).collect();
            info!(
                "PaymentsForOrders: {} order(s), {} payment(s)",
                order_ids.len(),
                payments.len()
            );
            if !self.latency.is_zero() {
                tokio::time::sleep(self.latency).await;
            }
            let mut response = Response::new(PaymentsForOrdersResponse { payments });
            id.echo(response.metadata_mut());
            Ok(response)
        }
        .instrument(span)
        .await
    }
}
