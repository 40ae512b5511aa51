//! What a service tells others about its own records: the orders service answers for its orders
//! over HTTP/JSON, the payments service for its payments over gRPC (the gRPC chapter's
//! `PaymentQueries`, with the standard health and reflection services beside it).
//!
//! Both read the service's own tables, in either style: the participant's `records` (key and
//! JSON value) when orchestrated, the per-order record tables when choreographed. Neither reads
//! another service's schema: the gateway asks each service and puts the answers together.
//!
//! gRPC is served on the service's one port, next to `/healthz`, `/readyz` and `/metrics`: the
//! server speaks HTTP/1.1 and HTTP/2 on the same socket, and a request for a gRPC method is routed
//! to tonic like any other path.

use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use deadpool_postgres::Pool;
use grpc::proto::v2::payment_queries_server::{
    PaymentQueries, PaymentQueriesServer,
};
use grpc::proto::v2::{
    Payment as PaymentMessage, PaymentStatus as Wire, PaymentsForOrdersRequest,
    PaymentsForOrdersResponse,
};
use grpc::queries::MAX_ORDERS_PER_CALL;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use shop_domain::orders::{Order, OrderStatus};
use shop_domain::payments::{Payment, PaymentStatus};
use shop_domain::{Line, Service};
use tokio::task::JoinHandle;
use tonic::{Request, Response as GrpcResponse, Status};
use tonic_health::ServingStatus;
use tracing::{info, warn};

use scaling::identity::Allow;

use crate::probe::Check;
use crate::roles::intake::{CALLER, called_by, invalid_id, problem, try_again};

/// The gRPC service a payments process offers, as gRPC health names it.
pub const PAYMENT_QUERIES: &str = "shop.payments.PaymentQueries";
/// How often the gRPC health status follows `/readyz`.
const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// A kind of record a service answers for.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// The orders service's order.
    Order,
    /// The payments service's payment.
    Payment,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Order => "order",
            Kind::Payment => "payment",
        }
    }
}

/// Why a read gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// No connection could be had.
    #[error("no PostgreSQL connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// The query failed.
    #[error("postgres: {0}")]
    Db(#[from] tokio_postgres::Error),
    /// A stored record does not parse: a bug or a hand-edited row.
    #[error("the stored {0} of order {1} is unreadable: {2}")]
    Corrupt(&'static str, String, serde_json::Error),
}

/// Reads of one service's records, by order id.
#[derive(Clone)]
pub struct Reads {
    pool: Pool,
    schema: String,
    /// Orchestrated participants keep `records (key, value)`; choreographed services a table
    /// per kind, `orders (order_id, status, record)` and so on.
    orchestrated: bool,
}

impl Reads {
    /// An orchestrated participant's records, in `schema`.
    pub fn orchestrated(pool: Pool, schema: String) -> Reads {
        Reads { pool, schema, orchestrated: true }
    }

    /// A choreographed service's records, in `schema`.
    pub fn choreographed(pool: Pool, schema: String) -> Reads {
        Reads { pool, schema, orchestrated: false }
    }

    /// The records of `kind` for these orders, by order id; orders without one are absent.
    pub async fn of<T: DeserializeOwned>(
        &self,
        kind: Kind,
        order_ids: &[String],
    ) -> Result<Vec<(String, T)>, ReadError> {
        let (s, what) = (&self.schema, kind.name());
        let (sql, keys): (String, Vec<String>) = if self.orchestrated {
            let keys = order_ids.iter().map(|id| format!("{what}:{id}")).collect();
            (format!("SELECT key, value FROM {s}.records WHERE key = ANY($1)"), keys)
        } else {
            let sql = format!(
                "SELECT order_id, record FROM {s}.{what}s WHERE order_id = ANY($1)"
            );
            (sql, order_ids.to_vec())
        };
        let db = self.pool.get().await?;
        let rows = db.query(&sql, &[&keys]).await?;
        rows.iter()
            .map(|row| {
                let key: &str = row.try_get(0)?;
                let order_id = key.strip_prefix(&format!("{what}:")).unwrap_or(key);
                let value: &str = row.try_get(1)?;
                match serde_json::from_str(value) {
                    Ok(record) => Ok((order_id.to_owned(), record)),
                    Err(e) => Err(ReadError::Corrupt(what, order_id.to_owned(), e)),
                }
            })
            .collect()
    }
}

/// An order as the orders service answers `GET /orders/{order_id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderView {
    /// The order (the idempotency key it was placed with).
    pub order_id: String,
    /// Who pays.
    pub customer_id: String,
    /// What was bought.
    pub lines: Vec<Line>,
    /// The price, in cents, fixed when the order was placed.
    pub total_cents: u64,
    /// `placed`, `confirmed` or `cancelled`.
    pub status: String,
    /// The parcel's reference, once confirmed.
    pub tracking: Option<String>,
    /// Why it was cancelled.
    pub reason: Option<String>,
}

impl From<Order> for OrderView {
    fn from(order: Order) -> OrderView {
        let status = order.status.name().to_owned();
        let (tracking, reason) = match order.status {
            OrderStatus::Placed => (None, None),
            OrderStatus::Confirmed { tracking } => (Some(tracking), None),
            OrderStatus::Cancelled { reason } => (None, Some(reason)),
        };
        let placed = order.placed;
        OrderView {
            order_id: placed.order_id,
            customer_id: placed.customer_id,
            lines: placed.lines,
            total_cents: placed.total_cents,
            status,
            tracking,
            reason,
        }
    }
}

/// `GET /orders/{order_id}`: the orders service's HTTP/JSON read, for the gateway.
pub fn order_routes(reads: Reads) -> Router {
    Router::new().route("/orders/{order_id}", get(order)).with_state(reads)
}

async fn order(
    State(reads): State<Reads>,
    Path(order_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refusal) = invalid_id(&order_id) {
        return refusal;
    }
    let found =
        reads.of::<Order>(Kind::Order, std::slice::from_ref(&order_id)).await;
    let order = match found {
        Ok(mut found) => found.pop().map(|(_, order)| OrderView::from(order)),
        Err(error) => {
            warn!(%error, order_id, "reading an order failed");
            return try_again("orders cannot read its records now; retry");
        }
    };
    match order {
        Some(order) if called_by(&headers, &order.customer_id) => {
            info!(order = %order_id, status = %order.status, "order read");
            axum::Json(order).into_response()
        }
        _ => {
            let detail = format!("no order {order_id}");
            problem(
                axum::http::StatusCode::NOT_FOUND,
                "not-found",
                "No such order",
                detail,
            )
        }
    }
}

/// The payments service's `PaymentQueries` over its own records.
#[derive(Clone)]
pub struct PaymentsApi {
    reads: Reads,
}

/// A payment as the gRPC contract has it. The shop keeps one payment per order, so its id is the
/// order's with a prefix; the shop's payments take no card network's approval code.
pub fn message_of(order_id: &str, payment: &Payment) -> PaymentMessage {
    let due = payment.due.as_ref().map_or(0, |d| d.amount_cents);
    let (status, amount_cents) = match &payment.status {
        PaymentStatus::Pending => (Wire::Pending, due),
        PaymentStatus::Authorized { amount_cents } => {
            (Wire::Authorized, *amount_cents)
        }
        PaymentStatus::Declined { .. } => (Wire::Declined, due),
        PaymentStatus::Refunded { amount_cents, .. } => {
            (Wire::Refunded, *amount_cents)
        }
        PaymentStatus::Voided { .. } => (Wire::Voided, due),
    };
    PaymentMessage {
        payment_id: format!("pay-{order_id}"),
        order_id: order_id.to_owned(),
        status: status as i32,
        amount_cents,
        authorization_code: String::new(),
    }
}

#[tonic::async_trait]
impl PaymentQueries for PaymentsApi {
    async fn payments_for_orders(
        &self,
        request: Request<PaymentsForOrdersRequest>,
    ) -> Result<GrpcResponse<PaymentsForOrdersResponse>, Status> {
        // The gateway names the customer it verified; payments answers for that customer's
        // payments only.
        let caller = match request.metadata().get(CALLER).map(|v| v.to_str()) {
            Some(Ok(caller)) => caller.to_owned(),
            _ => {
                let message =
                    format!("metadata {CALLER} (the verified customer) is required");
                return Err(Status::unauthenticated(message));
            }
        };
        let order_ids = request.into_inner().order_ids;
        if order_ids.len() > MAX_ORDERS_PER_CALL {
            let message =
                format!("order_ids: at most {MAX_ORDERS_PER_CALL} per call");
            return Err(Status::invalid_argument(message));
        }
        let found = self
            .reads
            .of::<Payment>(Kind::Payment, &order_ids)
            .await
            .map_err(|e| {
                warn!(error = %e, "reading payments failed");
                // The cause stays in this log: a database's words are not the caller's.
                Status::unavailable("payments cannot read its records now; retry")
            })?;
        let payments: Vec<PaymentMessage> = found
            .iter()
            .filter(|(_, p)| p.due.as_ref().is_some_and(|d| d.customer_id == caller))
            .map(|(id, payment)| message_of(id, payment))
            .collect();
        info!(
            "PaymentsForOrders: {} order(s), {} payment(s)",
            order_ids.len(),
            payments.len()
        );
        Ok(GrpcResponse::new(PaymentsForOrdersResponse { payments }))
    }
}

/// The payments service's gRPC side, as routes to merge into its router: `PaymentQueries`,
/// the health service (which follows `ready`, checked every second, until the returned task is
/// aborted) and server reflection, so `grpcurl` needs no `.proto` files. With `allow`, each
/// `PaymentQueries` call is checked against the caller's certificate first.
pub fn payment_routes(
    reads: Reads,
    ready: Check,
    allow: Option<Allow>,
) -> anyhow::Result<(Router, JoinHandle<()>)> {
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(
                grpc::proto::v2::FILE_DESCRIPTOR_SET,
            )
            .register_encoded_file_descriptor_set(
                tonic_health::pb::FILE_DESCRIPTOR_SET,
            )
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    let api = PaymentsApi { reads };
    let queries = match allow {
        None => tonic::service::Routes::new(PaymentQueriesServer::new(api)),
        Some(allow) => {
            let checked = move |request| allow.check(request);
            let server = PaymentQueriesServer::with_interceptor(api, checked);
            tonic::service::Routes::new(server)
        }
    };
    let routes = queries
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?);
    let follow = tokio::spawn(async move {
        let mut last = None;
        loop {
            let (now, why) = match ready().await {
                Ok(()) => (ServingStatus::Serving, String::new()),
                Err(why) => (ServingStatus::NotServing, why),
            };
            if last != Some(now) {
                info!("gRPC health: {now:?} {why}");
                health.set_service_status("", now).await;
                health.set_service_status(PAYMENT_QUERIES, now).await;
                last = Some(now);
            }
            tokio::time::sleep(HEALTH_EVERY).await;
        }
    });
    // tonic's router answers any path it does not know as an unimplemented gRPC call, with
    // 200; a mistyped probe or URL should get 404, which gRPC clients read as UNIMPLEMENTED.
    let router = routes.into_axum_router().fallback(|| async {
        let detail = "routes: /healthz, /readyz, /metrics and gRPC";
        problem(
            axum::http::StatusCode::NOT_FOUND,
            "not-found",
            "No such route",
            detail,
        )
    });
    Ok((router, follow))
}

/// What a service serves about its records.
pub struct ReadRoutes {
    /// Routes for its one port.
    pub plain: Router,
    /// Payments' gRPC, when it is served over mutual TLS on a listener of its own.
    pub tls: Option<Router>,
    /// The task that keeps gRPC health following readiness.
    pub health: Option<JoinHandle<()>>,
}

/// What `service` answers for about its records, in either style: orders its orders over HTTP,
/// payments its payments over gRPC (and the task that keeps gRPC health following `ready`),
/// the others nothing yet. With `mutual_tls`, payments' gRPC goes to [`ReadRoutes::tls`],
/// for the gateway only, instead of its plain port.
pub fn routes(
    service: Service,
    reads: Reads,
    ready: Check,
    mutual_tls: bool,
) -> anyhow::Result<ReadRoutes> {
    let none = |plain| ReadRoutes { plain, tls: None, health: None };
    Ok(match service {
        Service::Orders => none(order_routes(reads)),
        Service::Payments if mutual_tls => {
            let allow = crate::identity::payments_callers();
            let (routes, health) = payment_routes(reads, ready, Some(allow))?;
            ReadRoutes {
                plain: Router::new(),
                tls: Some(routes),
                health: Some(health),
            }
        }
        Service::Payments => {
            let (routes, health) = payment_routes(reads, ready, None)?;
            ReadRoutes { plain: routes, tls: None, health: Some(health) }
        }
        Service::Inventory | Service::Shipping => none(Router::new()),
    })
}

/// Stops the task that keeps gRPC health following readiness, and waits until it has let go of
/// what it held (the readiness check, and through it the service).
pub async fn stop_health(health: Option<JoinHandle<()>>) {
    let Some(health) = health else { return };
    health.abort();
    match health.await {
        Err(error) if !error.is_cancelled() => {
            warn!(%error, "the gRPC health task failed");
        }
        _ => {}
    }
}
