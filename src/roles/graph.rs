//! The gateway's GraphQL endpoint: the same reads as `GET /orders/{id}`, where the client names
//! the fields it wants and the gateway calls only the services those fields need.
//!
//! `{ order(id: "k-1") { status totalCents } }` costs one call to orders; adding
//! `payment { status }` adds the gRPC call to payments. A client writes the query, so the gateway
//! bounds what one query may cost before running it (depth and complexity), and a query refused
//! as a whole (too deep, too complex, not GraphQL) gets a `400` problem body like any other bad
//! request. A field whose backend fails is `null` with an error beside it that names the field and
//! the backend's failure: the rest of the answer stands.

use std::sync::Arc;

use async_graphql::{
    Context, EmptyMutation, EmptySubscription, ErrorExtensions, Object, Schema,
    SimpleObject,
};
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use gateway::auth::Caller;
use gateway::backends::{BackendError, OrdersBackend, PaymentView, PaymentsBackend};
use gateway::problem::respond;
use http_json::problem::{JsonBody, Problem};
use tokio::time::Instant;

use crate::roles::edge::{COMPOSE_DEADLINE, READ};
use crate::roles::intake::valid_key;
use crate::roles::reads::OrderView;
use crate::roles::replicas::Replicas;
use crate::roles::retries::ReadRetries;

/// How deep a query may nest: `order { payment { status } }` is 3.
pub const MAX_DEPTH: usize = 5;
/// How many fields a query may ask for, all levels together.
pub const MAX_COMPLEXITY: usize = 40;

/// The schema, built once.
pub type ShopSchema = Schema<Query, EmptyMutation, EmptySubscription>;

/// The services a query may need.
#[derive(Clone)]
pub struct Backends {
    /// Orders' HTTP reads, one client per replica.
    pub orders: Arc<Replicas<OrdersBackend>>,
    /// Payments' gRPC reads, one client per replica.
    pub payments: Arc<Replicas<PaymentsBackend>>,
    /// A second attempt at a read that failed, within each backend's budget.
    pub retries: Arc<ReadRetries>,
}

/// What every resolver of one request shares: the backends, the verified caller, and the
/// deadline all of the request's calls are cut off at.
struct Call {
    backends: Backends,
    caller: String,
    deadline: Instant,
}

// ANCHOR: schema
/// The schema with its limits: a query deeper or costlier than these is
/// refused before any resolver runs, so no backend is called for it.
pub fn schema() -> ShopSchema {
    Schema::build(Query, EmptyMutation, EmptySubscription)
        .limit_depth(MAX_DEPTH)
        .limit_complexity(MAX_COMPLEXITY)
        .finish()
}
// ANCHOR_END: schema

/// `POST /graphql`.
pub async fn endpoint(
    State((schema, backends)): State<(ShopSchema, Backends)>,
    Extension(caller): Extension<Caller>,
    JsonBody(request): JsonBody<async_graphql::Request>,
) -> Response {
    if let Err(forbidden) = caller.require(READ) {
        return forbidden.into_response();
    }
    let call = Call {
        backends,
        caller: caller.client.clone(),
        deadline: Instant::now() + COMPOSE_DEADLINE,
    };
    let response = schema.execute(request.data(call)).await;
    // Refused before any resolver ran: no data, and errors that belong to no
    // field (a resolver's error carries its field's path). The query is at fault.
    let refused = response.data == async_graphql::Value::Null
        && !response.errors.is_empty()
        && response.errors.iter().all(|e| e.path.is_empty());
    if refused {
        // One line each: a syntax error's message draws the query with a caret.
        let why: Vec<String> = response
            .errors
            .iter()
            .map(|e| e.message.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        let mut detail = why.join("; ");
        if detail.contains("too deep") || detail.contains("too complex") {
            let limits = format!(
                "; a query may nest {MAX_DEPTH} deep and ask for {MAX_COMPLEXITY} fields"
            );
            detail.push_str(&limits);
        }
        return respond(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-query",
            "The query was refused",
            detail,
        ));
    }
    Json(response).into_response()
}

/// A backend's failure as an error beside the field, which is then `null`. Returned as the
/// field's `Err`, async-graphql would drop the field from the answer instead, and an `order`
/// without its `payment` would read like an order that does not exist.
fn failed<T>(ctx: &Context<'_>, error: BackendError) -> Option<T> {
    let status = error.problem().status;
    let error = async_graphql::Error::new(error.to_string())
        .extend_with(|_, e| e.set("status", status));
    ctx.add_error(ctx.set_error_path(error.into_server_error(ctx.item.pos)));
    None
}

/// The root of every query.
pub struct Query;

#[Object]
impl Query {
    /// One of the caller's orders, as the orders service records it; `null` when there is
    /// none.
    async fn order(
        &self,
        ctx: &Context<'_>,
        id: String,
    ) -> async_graphql::Result<Option<Order>> {
        if !valid_key(&id) {
            return Err("an order id is 1 to 64 letters, digits, - or _".into());
        }
        let call = ctx.data::<Call>()?;
        let path = format!("/orders/{id}");
        let (orders, retries) = (&call.backends.orders, &call.backends.retries);
        let read = || async {
            let replica = orders.pick();
            replica.get_json::<OrderView>(&path, &call.caller, call.deadline).await
        };
        let closed = || orders.any_closed();
        match retries.orders.call(call.deadline, closed, read).await {
            Ok(order) => Ok(Some(Order(order))),
            Err(error) if error.is_not_found() => Ok(None),
            Err(error) => Ok(failed(ctx, error)),
        }
    }
}

/// An order: what was bought, where it stands, and (when asked) its payment.
pub struct Order(OrderView);

/// One line of an order.
#[derive(SimpleObject)]
pub struct Line {
    sku: String,
    quantity: u32,
}

#[Object]
impl Order {
    async fn id(&self) -> &str {
        &self.0.order_id
    }
    async fn customer_id(&self) -> &str {
        &self.0.customer_id
    }
    async fn status(&self) -> &str {
        &self.0.status
    }
    async fn total_cents(&self) -> u64 {
        self.0.total_cents
    }
    async fn lines(&self) -> Vec<Line> {
        let line = |l: &shop_domain::Line| Line {
            sku: l.sku.clone(),
            quantity: l.quantity,
        };
        self.0.lines.iter().map(line).collect()
    }
    async fn tracking(&self) -> Option<&str> {
        self.0.tracking.as_deref()
    }
    async fn reason(&self) -> Option<&str> {
        self.0.reason.as_deref()
    }
    /// Resolved only when asked for: a query without it never calls payments.
    async fn payment(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Option<Payment>> {
        let call = ctx.data::<Call>()?;
        let ids = vec![self.0.order_id.clone()];
        let (payments, retries) = (&call.backends.payments, &call.backends.retries);
        let read = || async {
            let replica = payments.pick();
            replica.for_orders(ids.clone(), &call.caller, call.deadline).await
        };
        let closed = || payments.any_closed();
        let found = retries.payments.call(call.deadline, closed, read).await;
        match found {
            Ok(found) => Ok(found.into_iter().next().map(Payment)),
            Err(error) => Ok(failed(ctx, error)),
        }
    }
}

/// A payment, as the payments service records it.
pub struct Payment(PaymentView);

#[Object]
impl Payment {
    async fn status(&self) -> &str {
        &self.0.status
    }
    async fn amount_cents(&self) -> u64 {
        self.0.amount_cents
    }
}
