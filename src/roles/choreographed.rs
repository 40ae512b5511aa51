//! A service of the choreographed checkout as a process: the choreography chapter's service, its
//! consumer and its relay (`Shop::start_only` with this one service), with its probes. Nobody
//! orchestrates: the orders service takes checkouts over HTTP and puts `OrderPlaced` in its
//! outbox; every other step is a service reacting to an event on Kafka.
//!
//! The choreography crate restarts a service's consumer and relay inside the process when they
//! fail (its broker went away, say), after a pause: this process only adds the probes, the intake,
//! and a clean stop on SIGTERM.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use choreography::shop::{Config, Faults, Outcome, Shop};
use http_json::problem::JsonBody;
use shop_domain::Service;
use shop_domain::orders::OrderStatus;
use tracing::{info, warn};

use crate::config::{Env, Role};
use crate::metrics::{self, Exporter, KafkaWatch, OutcomeLabels, Refresh, catch_up};
use crate::probe::{self, Check};
use crate::roles::intake::{
    CheckoutRequest, CheckoutView, accepted, checkout_of, invalid_id, key_reused,
    not_found, shown_to, try_again,
};
use crate::roles::reads::{self, Reads};
use crate::telemetry;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// How long the Kafka broker may take to answer a readiness probe's metadata request: under
/// the supervisor's 2-second patience with `/readyz`, as PostgreSQL's check runs alongside.
const KAFKA_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// What a request or a probe hears once the service has begun to stop.
const STOPPING: &str = "the service is stopping; retry in a moment";

/// The choreographed shop every process of this style joins: names from the shared prefix.
pub fn shop_config(env: &Env) -> Config {
    Config {
        brokers: env.kafka.clone(),
        database_url: env.database_url.clone(),
        prefix: env.names.prefix.clone(),
        seed: crate::shop::seed(),
        faults: Faults::default(),
        relay_poll: Duration::from_millis(200),
        tracing: Some(crate::telemetry::KAFKA_TRACING),
    }
}

/// Runs `service` until SIGTERM.
pub async fn run(service: Service, env: Env) -> anyhow::Result<()> {
    let listener =
        probe::listen(env.listen_addr(Role::Participant(service))?).await?;
    let tls_listener = crate::identity::listen_for(&env, service).await?;
    let starting =
        probe::Starting::serve(listener, "waiting for Kafka and PostgreSQL")?;
    let what = format!("Kafka and PostgreSQL for {service}");
    let services = [service];
    let start =
        || async { Ok(Shop::start_only(shop_config(&env), &services).await?) };
    let Some(shop) = probe::until_connected(&what, start).await else {
        info!("{service} stopped before it could start");
        return Ok(());
    };
    let shop = Arc::new(shop);
    let listener = starting.done().await?;
    let pool = orchestration::pool(&env.database_url, 1)?;
    // Reads get a pool of their own: a slow read must not make a readiness probe wait.
    let pool_for_reads = orchestration::pool(&env.database_url, 2)?;
    // The probes and the intake hold the service weakly: a connection task can outlive the
    // server's graceful stop by a moment, and a strong hold there would keep SIGTERM from
    // stopping the service's consumer and relay cleanly.
    let watched = Arc::downgrade(&shop);
    let ready: Check = Arc::new(move || {
        let (pool, shop) = (pool.clone(), watched.upgrade());
        Box::pin(async move {
            let Some(shop) = shop else { return Err(STOPPING.to_owned()) };
            if service == Service::Orders {
                // The intake: it takes checkouts as long as its database answers, since its
                // outbox keeps what it owes Kafka. Asking Kafka here would take it out of
                // traffic on a broker blip although it can work. Its consumer is left out on
                // purpose too (it stops with Kafka): a consumer that fails shows in its lag and
                // in shop_consumer_restarts_total, which alerts watch, not in its readiness.
                return probe::pg_answers(&pool).await;
            }
            // Both asked again on every probe, side by side, so the answer follows
            // an outage of either within a second or two.
            let kafka = async {
                let asked = shop.broker_answers(service, KAFKA_PROBE_TIMEOUT);
                asked.await.map_err(|e| format!("Kafka broker: {e}"))
            };
            let (database, broker) = tokio::join!(probe::pg_answers(&pool), kafka);
            database?;
            broker?;
            let counters = shop.stats().of(service);
            // Each life of the consumer counts once when it has joined its group; a
            // crash counts once too. More joins than crashes: a life is in.
            match counters.ready.load(Relaxed) > counters.crashes.load(Relaxed) {
                true => Ok(()),
                false => Err("the consumer has not joined its group".to_owned()),
            }
        })
    });
    let schema = shop.schemas().of(service).to_owned();
    let reads = Reads::choreographed(pool_for_reads, schema);
    let mutual_tls = tls_listener.is_some();
    let read_routes = reads::routes(service, reads, Arc::clone(&ready), mutual_tls)?;
    let mut app = probe::routes(ready).merge(read_routes.plain);
    if service == Service::Orders {
        let intake = Router::new()
            .route("/checkouts", post(place))
            .route("/checkouts/{order_id}", get(view))
            .with_state(Arc::downgrade(&shop));
        app = app.merge(intake);
    }
    let exporter = exporter(service, &env, &shop)?;
    let app = telemetry::traced(exporter.measured(app), service.name());
    let tls_app = read_routes
        .tls
        .map(|app| telemetry::traced(exporter.counted(app), service.name()));
    let tls = crate::identity::spawn_payments(tls_listener, tls_app);
    let addr = listener.local_addr()?;
    info!("{service} (choreography) on http://{addr}/readyz");
    let served = probe::serve(listener, app, probe::terminated()).await;
    reads::stop_health(read_routes.health).await;
    served?;
    if let Some(tls) = tls {
        tls.await??;
    }
    match Arc::try_unwrap(shop) {
        Ok(shop) => shop.stop().await,
        Err(_) => {
            warn!("a request still holds the service; stopping without waiting")
        }
    }
    info!("{service} stopped");
    Ok(())
}

/// What the service exports besides its requests: its outbox's backlog, its consumer group's lag
/// and its dead letters.
fn exporter(
    service: Service,
    env: &Env,
    shop: &Arc<Shop>,
) -> anyhow::Result<Exporter> {
    let pool = orchestration::pool(&env.database_url, 1)?;
    let schema = shop.schemas().of(service).to_owned();
    let topics = shop.topics();
    let watch = KafkaWatch {
        group: topics.group(service),
        topics: shop.sources_of(service),
        dead_letters: topics.dead_letters(service),
    };
    let mut refused = None;
    let exporter = Exporter::new(|registry| {
        let outbox = metrics::outbox(registry, pool, schema);
        let work = work_done(registry, service, Arc::downgrade(shop));
        match metrics::kafka(registry, &env.kafka, watch) {
            Ok(kafka) => Some(metrics::all(vec![outbox, kafka, work])),
            Err(why) => {
                refused = Some(why);
                None
            }
        }
    });
    match refused {
        Some(why) => Err(anyhow::anyhow!("metrics: {why}")),
        None => Ok(exporter),
    }
}

/// What the service's consumer and relay did since the process started, from the counters the
/// choreography crate keeps: events applied, absorbed as duplicates by the inbox, dead-lettered;
/// outbox rows published; consumer lives restarted inside the process.
fn work_done(
    registry: &mut Registry,
    service: Service,
    shop: Weak<Shop>,
) -> Refresh {
    let events = Family::<OutcomeLabels, Counter>::default();
    registry.register(
        "shop_events",
        "Events the consumer handled, by outcome: applied, duplicate (absorbed by the inbox), \
         dead_lettered, rewound (a step that failed: the event comes again)",
        events.clone(),
    );
    let published = Counter::default();
    registry.register(
        "shop_outbox_published",
        "Outbox rows the relay published to the broker",
        published.clone(),
    );
    let restarts = Counter::default();
    registry.register(
        "shop_consumer_restarts",
        "Times the consumer and relay were started again inside this process",
        restarts.clone(),
    );
    // Two scrapes at once must not both add the same increase: one catches up at a time.
    let one_at_a_time = std::sync::Mutex::new(());
    Arc::new(move || {
        let _turn =
            one_at_a_time.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let catch_up = |counter: &Counter, now: &AtomicU64| {
            catch_up(counter, now.load(Relaxed))
        };
        let read = match shop.upgrade() {
            Some(shop) => {
                let c = shop.stats().of(service);
                for (outcome, now) in [
                    ("applied", &c.applied),
                    ("duplicate", &c.duplicates),
                    ("dead_lettered", &c.dead_lettered),
                    ("rewound", &c.rewound),
                ] {
                    catch_up(&events.get_or_create(&OutcomeLabels { outcome }), now);
                }
                catch_up(&published, &c.published);
                catch_up(&restarts, &c.crashes);
                Ok(())
            }
            None => Err("the service is stopping".to_owned()),
        };
        Box::pin(async move { read })
    })
}

async fn place(
    State(shop): State<Weak<Shop>>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<CheckoutRequest>,
) -> Response {
    let Some(shop) = shop.upgrade() else { return try_again(STOPPING) };
    let order = match checkout_of(&headers, &request) {
        Ok(order) => order,
        Err(refusal) => return *refusal,
    };
    let correlation = choreography::shop::correlation_id();
    match shop.place(order.clone(), &correlation).await {
        Ok(()) => {
            info!(order = %order.order_id, customer = %order.customer_id, "checkout accepted");
            accepted(&order.order_id)
        }
        Err(choreography::Error::Refused(why)) => {
            warn!(order = %order.order_id, "refused: {why}");
            key_reused()
        }
        Err(error) => {
            warn!(%error, "placing the order failed");
            try_again(format!(
                "the order was not recorded ({error}); retry with the same key"
            ))
        }
    }
}

async fn view(
    State(shop): State<Weak<Shop>>,
    Path(order_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(shop) = shop.upgrade() else { return try_again(STOPPING) };
    if let Some(invalid) = invalid_id(&order_id) {
        return invalid;
    }
    match shop.outcome(&order_id).await {
        Ok(outcome) => match describe(&order_id, &outcome) {
            Some(view) => shown_to(&headers, view),
            None => not_found(&order_id),
        },
        Err(error) => {
            warn!(%error, "reading the services' records failed");
            try_again(format!("the records did not answer ({error})"))
        }
    }
}

/// A checkout as the four services' records tell it: it has ended when the order is final and
/// every service has settled its part; `None` when orders never took it.
pub fn describe(order_id: &str, outcome: &Outcome) -> Option<CheckoutView> {
    let order = outcome.order.as_ref()?;
    let (status, reason) = match (&order.status, outcome.settled()) {
        (OrderStatus::Confirmed { .. }, true) => ("confirmed", None),
        (OrderStatus::Cancelled { reason }, true) => {
            ("cancelled", Some(reason.clone()))
        }
        (OrderStatus::Cancelled { reason }, false) => {
            ("compensating", Some(reason.clone()))
        }
        _ => ("running", None),
    };
    let steps = vec![
        format!("orders: {}", order.status.name()),
        format!("inventory: {}", outcome.hold.as_ref().map_or("none", |h| h.name())),
        format!(
            "payments: {}",
            outcome.payment.as_ref().map_or("none", |p| p.status.name())
        ),
        format!(
            "shipping: {}",
            outcome.shipment.as_ref().map_or("none", |s| s.status.name())
        ),
    ];
    Some(CheckoutView {
        order_id: order_id.to_owned(),
        customer_id: order.placed.customer_id.clone(),
        status: status.to_owned(),
        reason,
        steps,
    })
}
