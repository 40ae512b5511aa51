//! The same composition as GraphQL: the client names the fields it wants, and the gateway calls
//! only the backends those fields need.
//!
//! `{ order(id: "...") { total { amount } } }` costs one call to orders and none to payments;
//! asking for `payment` too adds the payments call. Listing orders with their payments is where
//! GraphQL's classic trap lies: resolved field by field, each order's `payment` is its own call,
//! so a page of N orders costs 1 + N backend calls (the N+1 problem). A data loader collects the
//! keys the resolvers ask for during one tick and sends them as one batched call: 1 + 1.
//! [`PaymentFetch`] chooses between the two, so a test can count both.

use std::collections::HashMap;

use async_graphql::dataloader::{DataLoader, Loader};
use async_graphql::{
    Context, EmptyMutation, EmptySubscription, ErrorExtensions, Object, Schema,
    SimpleObject,
};
use http_json::versions::v2::OrderV2;
use tokio::time::Instant;

use crate::Gateway;
use crate::auth::Caller;
use crate::backends::{BackendError, PaymentView};
use crate::compose;

/// The gateway's GraphQL schema: queries only.
pub type ShopSchema = Schema<Query, EmptyMutation, EmptySubscription>;

/// How `Order.payment` is fetched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PaymentFetch {
    /// One payments call per order: the N+1 problem.
    PerOrder,
    /// Batched through a [`DataLoader`]: one payments call per query level.
    Batched,
}

/// Builds the schema once, at start-up, with its depth and complexity limits: a
/// client writes the query, so the gateway bounds what one query may cost.
pub fn schema() -> ShopSchema {
    Schema::build(Query, EmptyMutation, EmptySubscription)
        // Bounds on what one query may cost: how deep, how many fields.
        .limit_depth(6)
        .limit_complexity(200)
        .finish()
}

/// Runs one GraphQL request for `caller`, with its own data loader (a loader
/// lives for one request: its batches and cache are never shared across callers).
pub async fn execute(
    gateway: &Gateway,
    schema: &ShopSchema,
    caller: &Caller,
    request: async_graphql::Request,
    fetch: PaymentFetch,
) -> async_graphql::Response {
    let deadline = Instant::now() + gateway.config.compose_deadline;
    let loader = PaymentLoader {
        gateway: gateway.clone(),
        caller: caller.client.clone(),
        deadline,
    };
    let request = request
        .data(gateway.clone())
        .data(caller.clone())
        .data(Deadline(deadline))
        .data(fetch)
        .data(DataLoader::new(loader, tokio::spawn));
    schema.execute(request).await
}

#[derive(Clone, Copy)]
struct Deadline(Instant);

fn to_graphql(error: BackendError) -> async_graphql::Error {
    let problem = error.problem();
    async_graphql::Error::new(error.to_string())
        .extend_with(|_, e| e.set("status", problem.status))
}

/// The root of every query: an order, a customer's orders, or the checkout view.
pub struct Query;

#[Object]
impl Query {
    /// One order, by id.
    async fn order(
        &self,
        ctx: &Context<'_>,
        id: String,
    ) -> async_graphql::Result<Option<OrderNode>> {
        let (gateway, caller, deadline) = parts(ctx)?;
        match gateway.orders.get(&id, &caller.client, deadline).await {
            Ok(order) => Ok(Some(OrderNode(order))),
            Err(error) if error.is_not_found() => Ok(None),
            Err(error) => Err(to_graphql(error)),
        }
    }

    /// A customer's orders, oldest first.
    async fn orders(
        &self,
        ctx: &Context<'_>,
        customer_id: String,
    ) -> async_graphql::Result<Vec<OrderNode>> {
        let (gateway, caller, deadline) = parts(ctx)?;
        let orders =
            gateway.orders.list(&customer_id, &caller.client, deadline).await;
        Ok(orders.map_err(to_graphql)?.into_iter().map(OrderNode).collect())
    }

    /// The composed checkout view, as REST's `GET /checkout/{order_id}` builds it.
    async fn checkout(
        &self,
        ctx: &Context<'_>,
        order_id: String,
    ) -> async_graphql::Result<Option<Checkout>> {
        let (gateway, caller, _) = parts(ctx)?;
        match compose::checkout(gateway, &order_id, &caller.client).await {
            Ok(view) => Ok(Some(Checkout {
                order_id: view.order_id,
                order: view.order.map(OrderNode),
                payment: view.payment.map(Payment),
                missing: view.missing.into_iter().map(|m| m.part).collect(),
            })),
            Err(error) if error.is_not_found() => Ok(None),
            Err(error) => Err(to_graphql(error)),
        }
    }
}

fn parts<'c>(
    ctx: &Context<'c>,
) -> async_graphql::Result<(&'c Gateway, &'c Caller, Instant)> {
    Ok((ctx.data::<Gateway>()?, ctx.data::<Caller>()?, ctx.data::<Deadline>()?.0))
}

/// The checkout view; `missing` names the parts the gateway could not fetch.
#[derive(SimpleObject)]
pub struct Checkout {
    order_id: String,
    order: Option<OrderNode>,
    payment: Option<Payment>,
    missing: Vec<String>,
}

/// An amount of money as a decimal string and its currency.
#[derive(SimpleObject)]
pub struct Money {
    amount: String,
    currency: String,
}

/// One line of an order.
#[derive(SimpleObject)]
pub struct Item {
    sku: String,
    quantity: u32,
    unit_price: Money,
}

/// An order from the orders service, as the GraphQL type `Order`.
pub struct OrderNode(OrderV2);

// ANCHOR: OrderNode
#[Object(name = "Order")]
impl OrderNode {
    async fn id(&self) -> String {
        self.0.id.to_string()
    }
    async fn customer_id(&self) -> &str {
        &self.0.customer.id
    }
    async fn total(&self) -> Money {
        let total = &self.0.total;
        Money { amount: total.amount.clone(), currency: total.currency.clone() }
    }
    async fn items(&self) -> Vec<Item> {
        let item = |i: &http_json::versions::v2::Item| Item {
            sku: i.sku.clone(),
            quantity: i.quantity,
            unit_price: Money {
                amount: i.unit_price.amount.clone(),
                currency: i.unit_price.currency.clone(),
            },
        };
        self.0.items.iter().map(item).collect()
    }
    /// Resolved only when asked for: a query without it never calls payments.
    async fn payment(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Option<Payment>> {
        let id = self.0.id.to_string();
        let found = match ctx.data::<PaymentFetch>()? {
            PaymentFetch::PerOrder => {
                let (gateway, caller, deadline) = parts(ctx)?;
                let one = vec![id];
                let payments =
                    gateway.payments.for_orders(one, &caller.client, deadline);
                payments.await.map_err(to_graphql)?.into_iter().next()
            }
            PaymentFetch::Batched => {
                let loader = ctx.data::<DataLoader<PaymentLoader>>()?;
                loader.load_one(id).await.map_err(to_graphql)?
            }
        };
        Ok(found.map(Payment))
    }
}
// ANCHOR_END: OrderNode

/// A payment, fetched only when a query asks for `Order.payment`.
pub struct Payment(PaymentView);

#[Object]
impl Payment {
    async fn payment_id(&self) -> &str {
        &self.0.payment_id
    }
    async fn status(&self) -> &str {
        &self.0.status
    }
    async fn amount_cents(&self) -> u64 {
        self.0.amount_cents
    }
    async fn authorization_code(&self) -> &str {
        &self.0.authorization_code
    }
}

// ANCHOR: PaymentLoader
/// Batches every `Order.payment` of one query into one `PaymentsForOrders` call.
pub struct PaymentLoader {
    gateway: Gateway,
    caller: String,
    deadline: Instant,
}

impl Loader<String> for PaymentLoader {
    type Value = PaymentView;
    type Error = BackendError;

    async fn load(
        &self,
        order_ids: &[String],
    ) -> Result<HashMap<String, PaymentView>, BackendError> {
        let ids = order_ids.to_vec();
        let payments =
            self.gateway.payments.for_orders(ids, &self.caller, self.deadline);
        let found = payments.await?.into_iter();
        Ok(found.map(|p| (p.order_id.clone(), p)).collect())
    }
}
// ANCHOR_END: PaymentLoader
