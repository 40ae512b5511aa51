//! One service of the choreography: how it applies an event (once, in one transaction, with the
//! events it emits), how it handles a message from Kafka, and the dual write it must not do.

use std::marker::PhantomData;
use std::time::Duration;

use deadpool_postgres::{Object, Pool};
use kafka_events::envelope::header;
use outbox::{OutboxEvent, inbox};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use shop_domain::orders::Orders;
use shop_domain::{Event, OrderPlaced, Service as ServiceName, euros};
use tracing::{Instrument, Span, info, info_span, warn};
use uuid::Uuid;

use crate::Error;
use crate::store::Store;
use crate::wire::{self, Incoming, Topics, outbox_event, short};

/// A service's connection pool to its own schema, and where its events go.
/// The pool is the service's: made when it connects, closed when it is dropped,
/// so a service that dies takes its connections with it.
pub struct Service<S> {
    pool: Pool,
    schema: String,
    topics: Topics,
    tracing: Option<Tracing>,
    rules: PhantomData<fn() -> S>,
}

// ANCHOR: tracing
/// How a checkout's trace crosses Kafka, for a process that exports traces
/// (the capstone does): each emitted event carries the context of the span it
/// was emitted in, and the service that consumes it works in a span that
/// continues that trace. This crate carries the headers; the process's tracing
/// setup writes and reads them, so the chapter's examples compile no tracer.
#[derive(Clone, Copy, Debug)]
pub struct Tracing {
    /// The trace context of `span`, as headers ([`wire::TRACE_HEADERS`]).
    pub inject: fn(span: &Span) -> Vec<(String, String)>,
    /// Makes `span` continue the trace an incoming event's headers carry.
    pub join: fn(span: &Span, headers: &[(String, String)]),
}
// ANCHOR_END: tracing

/// What applying a message did.
#[derive(Debug)]
pub enum Delivery {
    /// Applied for the first time: the state is saved and `emitted` is in the
    /// outbox (possibly nothing, when the event only added to what is known).
    Applied {
        /// The message as decoded, for narration and the caller's checks.
        incoming: Incoming,
        /// The outbox rows written in the same transaction.
        emitted: Vec<OutboxEvent>,
    },
    /// Applied before (the inbox has its id): nothing happened.
    Duplicate {
        /// The message that was already applied.
        incoming: Incoming,
    },
    /// An event of a type this service does not react to.
    Ignored,
    /// Unreadable: copied to the dead-letter topic with this reason.
    DeadLettered {
        /// Why it could not be decoded, as written on the dead-letter copy.
        reason: String,
    },
}

impl Delivery {
    /// Whether this delivery put events in the outbox.
    pub fn emitted_any(&self) -> bool {
        matches!(self, Delivery::Applied { emitted, .. } if !emitted.is_empty())
    }
}

impl<S: Store> Service<S> {
    /// Connects to PostgreSQL at `url`, to work in `schema`, with a pool of
    /// its own: one connection, as the service applies one message at a time.
    /// Fails now, not at the first message, when PostgreSQL does not answer.
    pub async fn connect(
        url: &str,
        schema: &str,
        topics: Topics,
    ) -> Result<Self, Error> {
        let pool = outbox::pool(url, 1)?;
        drop(pool.get().await?);
        let rules = PhantomData;
        let schema = schema.to_owned();
        Ok(Service { pool, schema, topics, tracing: None, rules })
    }

    /// The service with its events' trace context handled by `tracing`.
    pub fn with_tracing(mut self, tracing: Option<Tracing>) -> Self {
        self.tracing = tracing;
        self
    }

    /// `row` with the trace context of `span` in its headers, when this
    /// process traces.
    fn traced(&self, mut row: OutboxEvent, span: &Span) -> OutboxEvent {
        for (name, value) in
            self.tracing.map(|t| (t.inject)(span)).unwrap_or_default()
        {
            row = row.header(name, value);
        }
        row
    }

    /// The span of the work `incoming` causes, continuing its trace.
    fn span_of(&self, incoming: &Incoming) -> Span {
        let span = incoming_span(S::SERVICE, incoming);
        if let Some(tracing) = self.tracing.filter(|_| !incoming.trace.is_empty()) {
            (tracing.join)(&span, &incoming.trace);
        }
        span
    }

    /// Creates the schema, the outbox and inbox, and the service's tables.
    pub async fn migrate(&self) -> Result<(), Error> {
        let db = self.connection().await?;
        outbox::migrate(&db, &self.schema).await?;
        S::create_tables(&db, &self.schema).await
    }

    /// A connection from the service's own pool, to seed or read its tables.
    /// The pool checks it on the way out: one the server closed is replaced.
    pub async fn connection(&self) -> Result<Object, Error> {
        Ok(self.pool.get().await?)
    }

    /// How many of the service's outbox rows are pending, sent, failed.
    pub async fn outbox_counts(&self) -> Result<outbox::Counts, Error> {
        let db = self.connection().await?;
        Ok(outbox::counts(&db, &self.schema).await?)
    }

    // ANCHOR: apply
    /// Applies one event at most once. The inbox entry, the state change and
    /// the emitted events commit together or not at all: a crash anywhere in
    /// here leaves no trace, and a crash after the commit leaves everything,
    /// including the events, which the relay will publish.
    pub async fn apply(&mut self, incoming: &Incoming) -> Result<Delivery, Error> {
        let (schema, topics) = (&self.schema, &self.topics);
        let mut db = self.connection().await?;
        let tx = db.transaction().await?;
        let me = S::SERVICE.name();
        if !inbox::first_delivery(&tx, schema, me, incoming.event_id).await? {
            tx.rollback().await?;
            return Ok(Delivery::Duplicate { incoming: incoming.clone() });
        }
        let state = S::load(&tx, schema, &incoming.event).await?;
        let (state, events) = state.react(&incoming.event);
        state.save(&tx, schema).await?;
        let (correlation, cause) = (&incoming.correlation_id, incoming.event_id);
        let mut emitted = Vec::new();
        for event in &events {
            let row = outbox_event(event, topics, correlation, Some(cause))?;
            let row = self.traced(row, &Span::current());
            outbox::enqueue(&tx, schema, &row).await?;
            emitted.push(row);
        }
        tx.commit().await?;
        Ok(Delivery::Applied { incoming: incoming.clone(), emitted })
    }
    // ANCHOR_END: apply

    // ANCHOR: dual_write
    /// What `--no-outbox` does instead, and what this crate exists to avoid:
    /// commit the state, then publish. When the process dies between the two,
    /// the state says the work is done and the event never existed anywhere but
    /// in this process's memory. Redelivery does not help: the inbox (or the
    /// rules' own idempotency) sees the work done and emits nothing the second
    /// time.
    pub async fn apply_then_publish(
        &mut self,
        incoming: &Incoming,
        producer: &impl PublishNow,
    ) -> Result<Delivery, Error> {
        let schema = &self.schema;
        let mut db = self.connection().await?;
        let tx = db.transaction().await?;
        let me = S::SERVICE.name();
        if !inbox::first_delivery(&tx, schema, me, incoming.event_id).await? {
            tx.rollback().await?;
            return Ok(Delivery::Duplicate { incoming: incoming.clone() });
        }
        let state = S::load(&tx, schema, &incoming.event).await?;
        let (state, events) = state.react(&incoming.event);
        state.save(&tx, schema).await?;
        tx.commit().await?;
        let (correlation, cause) = (&incoming.correlation_id, incoming.event_id);
        let mut emitted = Vec::new();
        for event in &events {
            let row = outbox_event(event, &self.topics, correlation, Some(cause))?;
            emitted.push(self.traced(row, &Span::current()));
        }
        for row in &emitted {
            producer.publish_now(row).await?;
        }
        Ok(Delivery::Applied { incoming: incoming.clone(), emitted })
    }
    // ANCHOR_END: dual_write

    // ANCHOR: handle
    /// Handles one decoded event: skips a type this service does not react to,
    /// and applies the rest once, narrating under the checkout's correlation id
    /// and the causing event's id. (What cannot be decoded never gets here: the
    /// consumer step dead-letters it.)
    pub async fn handle(&mut self, incoming: Incoming) -> Result<Delivery, Error> {
        if !S::listens_to(incoming.event.kind()) {
            return Ok(Delivery::Ignored);
        }
        let span = self.span_of(&incoming);
        let delivery = self.apply(&incoming).instrument(span.clone()).await?;
        narrate(&span, &delivery);
        Ok(delivery)
    }
    // ANCHOR_END: handle

    /// [`Service::handle`] for a service without an outbox (`--no-outbox`): it
    /// publishes with `producer` right after its commit.
    pub async fn handle_without_outbox(
        &mut self,
        incoming: Incoming,
        producer: &impl PublishNow,
    ) -> Result<Delivery, Error> {
        if !S::listens_to(incoming.event.kind()) {
            return Ok(Delivery::Ignored);
        }
        let span = self.span_of(&incoming);
        let apply = self.apply_then_publish(&incoming, producer);
        let delivery = apply.instrument(span.clone()).await?;
        narrate(&span, &delivery);
        Ok(delivery)
    }
}

/// Where the dual write (`--no-outbox`) publishes, right after its commit: the
/// shop's producer, or a fault plan's wrapper around it ([`crate::faults`]).
pub trait PublishNow: Send + Sync {
    /// Publishes one event as the relay would, and waits for the broker.
    fn publish_now(
        &self,
        row: &OutboxEvent,
    ) -> impl Future<Output = Result<(), Error>> + Send;
}

impl PublishNow for FutureProducer {
    async fn publish_now(&self, row: &OutboxEvent) -> Result<(), Error> {
        publish_now(self, row).await
    }
}

impl Service<Orders> {
    /// The checkout's first step, a command from the customer: places the order
    /// and puts `OrderPlaced` in the outbox, in one transaction. `request_id`
    /// identifies the customer's request: it is the event's causation id.
    pub async fn place(
        &mut self,
        order: OrderPlaced,
        correlation_id: &str,
        request_id: Uuid,
    ) -> Result<Vec<OutboxEvent>, Error> {
        let span = span(ServiceName::Orders, correlation_id, &short(request_id));
        let placed = Event::OrderPlaced(order.clone());
        let mut db = self.connection().await?;
        let tx = db.transaction().await?;
        let mut orders = Orders::load(&tx, &self.schema, &placed).await?;
        let events =
            orders.place(order).map_err(|e| Error::Refused(format!("{e:?}")))?;
        orders.save(&tx, &self.schema).await?;
        let mut emitted = Vec::new();
        for event in &events {
            let row =
                outbox_event(event, &self.topics, correlation_id, Some(request_id))?;
            let row = self.traced(row, &span);
            outbox::enqueue(&tx, &self.schema, &row).await?;
            emitted.push(row);
        }
        tx.commit().await?;
        for (event, row) in events.iter().zip(&emitted) {
            let (what, id) = (describe(event), short(row.id));
            info!(parent: &span, "{what} -> {} {id}", row.event_type);
        }
        Ok(emitted)
    }
}

/// The span of a service's work on one event: the checkout's correlation id
/// and the id of the event that caused the work.
pub fn span(service: ServiceName, correlation_id: &str, causation_id: &str) -> Span {
    // A span's name is fixed where the span is written: one arm per service.
    macro_rules! named {
        ($service:expr) => {
            info_span!(
                $service.name(),
                correlation_id = %correlation_id,
                causation_id = %causation_id
            )
        };
    }
    match service {
        ServiceName::Orders => named!(ServiceName::Orders),
        ServiceName::Inventory => named!(ServiceName::Inventory),
        ServiceName::Payments => named!(ServiceName::Payments),
        ServiceName::Shipping => named!(ServiceName::Shipping),
    }
}

/// The [`span`] of the work caused by `incoming`, so its log lines carry its ids.
pub fn incoming_span(service: ServiceName, incoming: &Incoming) -> Span {
    span(service, &incoming.correlation_id, &short(incoming.event_id))
}

/// One line per applied event: what it was, what the service did, what it emits.
fn narrate(span: &Span, delivery: &Delivery) {
    match delivery {
        Delivery::Applied { incoming, emitted } => {
            let kind = incoming.event.kind().as_str();
            if emitted.is_empty() {
                info!(parent: span, "{kind}: noted; nothing to emit");
            }
            for row in emitted {
                let what = match shop_domain::Kind::parse(&row.event_type) {
                    Some(kind) => match wire::event_from(kind, &row.payload) {
                        Ok(event) => describe(&event),
                        Err(e) => format!("(its payload does not decode: {e})"),
                    },
                    None => "(a type the shop does not know)".to_owned(),
                };
                let id = short(row.id);
                info!(parent: span, "{kind}: {what} -> {} {id}", row.event_type);
            }
        }
        Delivery::Duplicate { incoming } => {
            let kind = incoming.event.kind().as_str();
            let id = short(incoming.event_id);
            warn!(parent: span, "{kind} {id} again: a duplicate, absorbed by the inbox");
        }
        Delivery::Ignored | Delivery::DeadLettered { .. } => {}
    }
}

/// What an event means, in words.
pub fn describe(event: &Event) -> String {
    match event {
        Event::OrderPlaced(o) => {
            let lines: Vec<String> = o
                .lines
                .iter()
                .map(|l| format!("{} x {}", l.quantity, l.sku))
                .collect();
            let (lines, total) = (lines.join(", "), euros(o.total_cents));
            format!("order placed: {lines}, {total} EUR, ship to {}", o.ship_to)
        }
        Event::StockReserved { .. } => "stock reserved".into(),
        Event::StockRejected { reason, .. } => format!("out of stock: {reason}"),
        Event::StockReleased { reason, .. } => {
            format!("reservation released (compensation: {reason})")
        }
        Event::PaymentAuthorized { amount_cents, .. } => {
            format!("charged {} EUR", euros(*amount_cents))
        }
        Event::PaymentDeclined { reason, .. } => {
            format!("payment declined: {reason}")
        }
        Event::PaymentRefunded { amount_cents, reason, .. } => {
            format!("refunded {} EUR (compensation: {reason})", euros(*amount_cents))
        }
        Event::ShipmentScheduled { tracking, .. } => {
            format!("shipment scheduled, tracking {tracking}")
        }
        Event::ShipmentFailed { reason, .. } => format!("cannot ship: {reason}"),
        Event::ShipmentCancelled { reason, .. } => {
            format!("shipment cancelled: {reason}")
        }
        Event::OrderConfirmed { .. } => "order confirmed".into(),
        Event::OrderCancelled { reason, .. } => format!("order cancelled: {reason}"),
    }
}

/// Publishes an event straight to Kafka, as the relay would (same key and
/// headers), waiting for the acknowledgement. Only the dual write does this.
async fn publish_now(
    producer: &FutureProducer,
    row: &OutboxEvent,
) -> Result<(), Error> {
    let id = row.id.to_string();
    let ours =
        [(header::EVENT_ID, id.as_str()), (header::EVENT_TYPE, &row.event_type)];
    let headers = ours
        .into_iter()
        .chain(row.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .fold(OwnedHeaders::new(), |h, (key, value)| {
            h.insert(Header { key, value: Some(value) })
        });
    let record = FutureRecord::to(&row.topic)
        .key(row.aggregate_id.as_str())
        .payload(row.payload.as_slice())
        .headers(headers);
    producer
        .send(record, Duration::from_secs(30))
        .await
        .map_err(|(error, _)| Error::Kafka(error))?;
    Ok(())
}
