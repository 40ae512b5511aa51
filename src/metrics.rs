//! What every process of the shop exports on `/metrics`, for Prometheus to scrape.
//!
//! Two kinds of numbers. Those the process counts as work goes by (requests, their status and
//! duration, breaker transitions) live in counters and histograms updated on the request path.
//! Those that describe state kept elsewhere (sagas by status, rows waiting in an outbox, messages
//! waiting in a queue, consumer lag) are read fresh from PostgreSQL and the brokers when Prometheus
//! scrapes, by the role's [`Refresh`]: counting them as they change would mean every writer of
//! a table or a queue had to count too, and a restarted process would start from zero.
//!
//! Built on `prometheus-client`, the Prometheus project's own Rust client: typed metric families
//! with label sets as structs, no global registry (each process, and each test, owns its own), and
//! the OpenMetrics text format Prometheus reads.
//!
//! Label sets are bounded on purpose: a route is its template (`/checkouts/{order_id}`), never the
//! path a client sent, so an attacker cannot mint a new series per request. gRPC calls (payments
//! serves them on the same port) are counted apart, by method and gRPC status code, and a method
//! the service does not have is counted as `unknown`.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use deadpool_postgres::Pool;
use http_body_util::BodyExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tracing::warn;

use crate::probe::AmqpProbe;

/// A gauge that holds a fraction: an age in seconds, say.
pub type FloatGauge = Gauge<f64, AtomicU64>;

/// Reads the state a role's gauges describe, just before a scrape is encoded. An error names
/// what could not be read; the gauges it would have set keep their last values, and
/// `shop_metrics_refresh_failures_total` counts the failure.
pub type Refresh = Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>>
        + Send
        + Sync,
>;

/// How long a scrape waits for the state behind the gauges: a broker that does not answer must
/// not make the scrape itself time out (Prometheus gives up after 10 s by default), which would
/// hide every other number of the process, and its `up` with them.
const REFRESH_PATIENCE: std::time::Duration = std::time::Duration::from_secs(3);

/// The labels of a counted request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route's template, or `unmatched`.
    pub route: String,
    /// The HTTP method.
    pub method: String,
    /// The status code answered.
    pub status: u16,
}

/// The labels of a timed request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route's template, or `unmatched`.
    pub route: String,
    /// The HTTP method.
    pub method: String,
}

/// The labels of a counted gRPC call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    /// The method's path (`/shop.payments.PaymentQueries/PaymentsForOrders`), or `unknown`.
    pub method: String,
    /// The status code, as gRPC names it (`OK`, `UNAVAILABLE`).
    pub code: String,
}

/// The labels of a timed gRPC call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcMethodLabels {
    /// The method's path, or `unknown`.
    pub method: String,
}

/// Upper bounds of the duration buckets, in seconds: round numbers, so a query can name one.
const BUCKETS: [f64; 13] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

fn duration_histogram() -> Histogram {
    // 1 ms to 10 s: a probe answers in about a millisecond, the gateway gives up at 5 s.
    Histogram::new(BUCKETS)
}

/// The process's metrics: its registry, the HTTP metrics every role has, and its refresh.
#[derive(Clone)]
pub struct Exporter {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<RouteLabels, Histogram, fn() -> Histogram>,
    calls: Family<GrpcLabels, Counter>,
    call_durations: Family<GrpcMethodLabels, Histogram, fn() -> Histogram>,
    refresh_failures: Counter,
    refresh: Option<Refresh>,
}

impl Exporter {
    /// The HTTP metrics, and whatever `role` registers in `registry` with the refresh that fills
    /// it (`None` when the role has no state to read).
    pub fn new(role: impl FnOnce(&mut Registry) -> Option<Refresh>) -> Exporter {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "shop_http_requests",
            "HTTP requests answered, by route template, method and status",
            requests.clone(),
        );
        let durations = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram,
        );
        registry.register(
            "shop_http_request_duration_seconds",
            "How long HTTP requests took to answer, by route template and method",
            durations.clone(),
        );
        let calls = Family::<GrpcLabels, Counter>::default();
        registry.register(
            "shop_grpc_requests",
            "gRPC calls answered, by method and status code",
            calls.clone(),
        );
        let call_durations =
            Family::<GrpcMethodLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                duration_histogram,
            );
        registry.register(
            "shop_grpc_request_duration_seconds",
            "How long gRPC calls took, to the end of the answer, by method",
            call_durations.clone(),
        );
        let refresh_failures = Counter::default();
        registry.register(
            "shop_metrics_refresh_failures",
            "Scrapes whose state could not be read fresh (the gauges kept their last values)",
            refresh_failures.clone(),
        );
        let refresh = role(&mut registry);
        Exporter {
            inner: Arc::new(Inner {
                registry,
                requests,
                durations,
                calls,
                call_durations,
                refresh_failures,
                refresh,
            }),
        }
    }

    /// `app` with every request counted and timed, and `GET /metrics`.
    pub fn measured(&self, app: Router) -> Router {
        let scrape =
            Router::new().route("/metrics", get(scrape)).with_state(self.clone());
        self.counted(app.merge(scrape))
    }

    /// `app` with every request counted and timed, in the same families: for a second
    /// listener of the same process (payments' gRPC over mutual TLS).
    pub fn counted(&self, app: Router) -> Router {
        app.layer(from_fn_with_state(self.clone(), count))
    }

    /// The metrics as Prometheus reads them, after a refresh.
    pub async fn render(&self) -> Result<String, std::fmt::Error> {
        let read = async {
            match &self.inner.refresh {
                Some(refresh) => tokio::time::timeout(REFRESH_PATIENCE, refresh())
                    .await
                    .unwrap_or_else(|_| {
                        Err(format!("no answer in {REFRESH_PATIENCE:?}"))
                    }),
                None => Ok(()),
            }
        };
        if let Err(why) = read.await {
            warn!(%why, "metrics: the state behind the gauges could not be read");
            self.inner.refresh_failures.inc();
        }
        let mut text = String::new();
        encode(&mut text, &self.inner.registry)?;
        Ok(text)
    }
}

async fn scrape(State(exporter): State<Exporter>) -> Response {
    match exporter.render().await {
        Ok(text) => {
            let kind = "application/openmetrics-text; version=1.0.0; charset=utf-8";
            let mut response = text.into_response();
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
            response
        }
        Err(error) => {
            warn!(%error, "metrics: encoding failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("encoding the metrics failed: {error}\n"),
            )
                .into_response()
        }
    }
}

/// A method as a label: the standard ones by name, any other as `other`. hyper accepts any
/// token as a method, and a label taken from the request as it came would let a client mint
/// series.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Counts and times one request under its route template, or as a gRPC call.
async fn count(
    State(exporter): State<Exporter>,
    request: Request,
    next: Next,
) -> Response {
    // A gRPC call: a gRPC content type, to a gRPC service's route
    // (`/{package.Service}/{*rest}`), where the path is a method's name. The
    // same content type sent to an HTTP route, or to none, is counted as HTTP,
    // so no client can hide a request from the HTTP counts by its header.
    let grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|kind| kind.as_bytes().starts_with(b"application/grpc"))
        && request
            .extensions()
            .get::<MatchedPath>()
            .is_some_and(|route| route.as_str().ends_with("/{*rest}"));
    if grpc {
        let path = request.uri().path().to_owned();
        let call = GrpcCall { exporter, path, began: Instant::now(), done: false };
        return call.watch(next.run(request).await);
    }
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = method_label(request.method()).to_owned();
    let began = Instant::now();
    let response = next.run(request).await;
    let inner = &exporter.inner;
    let timed = RouteLabels { route, method };
    inner.durations.get_or_create(&timed).observe(began.elapsed().as_secs_f64());
    let counted = RequestLabels {
        route: timed.route,
        method: timed.method,
        status: response.status().as_u16(),
    };
    inner.requests.get_or_create(&counted).inc();
    response
}

// ANCHOR: GrpcCall
/// One gRPC call, counted once its status is known. HTTP's status says
/// little here (gRPC answers 200 to almost everything): the code is in
/// `grpc-status`, sent in the headers when the call failed before any
/// message, else in the trailers after the last one. An answer whose body is
/// dropped before its trailers (the client went away) counts as `CANCELLED`.
struct GrpcCall {
    exporter: Exporter,
    /// The method called.
    path: String,
    began: Instant,
    done: bool,
}

impl GrpcCall {
    fn watch(mut self, response: Response) -> Response {
        if let Some(code) = response.headers().get("grpc-status") {
            self.finish(code.as_bytes());
            return response;
        }
        let (parts, body) = response.into_parts();
        let body = body.map_frame(move |frame| {
            if let Some(code) =
                frame.trailers_ref().and_then(|t| t.get("grpc-status"))
            {
                self.finish(code.as_bytes());
            }
            frame
        });
        Response::from_parts(parts, axum::body::Body::new(body))
    }

    fn finish(&mut self, code: &[u8]) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let code = tonic::Code::from_bytes(code);
        // A method the service lacks is answered UNIMPLEMENTED: its path is
        // whatever a client sent, so it is no label. Every other answer of a
        // service names a real method.
        let method = match code {
            tonic::Code::Unimplemented => "unknown".to_owned(),
            _ => std::mem::take(&mut self.path),
        };
        let inner = &self.exporter.inner;
        let timed = GrpcMethodLabels { method };
        inner
            .call_durations
            .get_or_create(&timed)
            .observe(self.began.elapsed().as_secs_f64());
        let code = grpc::ledger::code_name(code).to_owned();
        inner.calls.get_or_create(&GrpcLabels { method: timed.method, code }).inc();
    }
}

impl Drop for GrpcCall {
    fn drop(&mut self) {
        self.finish(b"1");
    }
}
// ANCHOR_END: GrpcCall

/// Brings `counter` up to `now`, a count kept elsewhere that only goes up: each scrape adds
/// what is new since the last one.
pub fn catch_up(counter: &Counter, now: u64) {
    counter.inc_by(now.saturating_sub(counter.get()));
}

/// A process's side of RabbitMQ: what was delivered to it, how much of that was redelivered, and
/// the broker's answers to what it published with publisher confirms. The participants count
/// commands in and replies out, the saga replies in and commands out: `delivered` and
/// `published` name which, for the help texts.
pub struct AmqpCounts {
    deliveries: Counter,
    redeliveries: Counter,
    confirms: Family<OutcomeLabels, Counter>,
}

impl AmqpCounts {
    /// Registers `shop_amqp_deliveries`, `shop_amqp_redeliveries` and `shop_amqp_confirms`.
    pub fn register(
        registry: &mut Registry,
        delivered: &str,
        published: &str,
    ) -> Self {
        let deliveries = Counter::default();
        registry.register(
            "shop_amqp_deliveries",
            format!("{delivered} RabbitMQ delivered"),
            deliveries.clone(),
        );
        let redeliveries = Counter::default();
        registry.register(
            "shop_amqp_redeliveries",
            format!(
                "{delivered} RabbitMQ marked redelivered: sent before to a consumer that did \
                 not acknowledge them"
            ),
            redeliveries.clone(),
        );
        let confirms = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "shop_amqp_confirms",
            format!(
                "{published} published with publisher confirms, by the broker's answer: \
                 confirmed, or unconfirmed (refused, returned, or no answer before the \
                 connection went)"
            ),
            confirms.clone(),
        );
        AmqpCounts { deliveries, redeliveries, confirms }
    }

    /// Brings each count up to the totals kept elsewhere (see [`catch_up`]); the caller makes
    /// sure two scrapes do not run this at once.
    pub fn catch_up(
        &self,
        delivered: u64,
        redelivered: u64,
        confirmed: u64,
        unconfirmed: u64,
    ) {
        catch_up(&self.deliveries, delivered);
        catch_up(&self.redeliveries, redelivered);
        for (outcome, now) in
            [("confirmed", confirmed), ("unconfirmed", unconfirmed)]
        {
            catch_up(&self.confirms.get_or_create(&OutcomeLabels { outcome }), now);
        }
    }
}

/// The labels of a count by outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// What came of it.
    pub outcome: &'static str,
}

/// The labels of a count by status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

/// The labels of a queue's gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: String,
}

/// Runs every refresh, side by side; the errors of those that failed, joined.
pub fn all(refreshes: Vec<Refresh>) -> Refresh {
    Arc::new(move || {
        let running: Vec<_> = refreshes.iter().map(|refresh| refresh()).collect();
        Box::pin(async move {
            let failed: Vec<String> = futures::future::join_all(running)
                .await
                .into_iter()
                .filter_map(Result::err)
                .collect();
            if failed.is_empty() { Ok(()) } else { Err(failed.join("; ")) }
        })
    })
}

/// The sagas in the log at `schema`, by status, and how long the oldest running one has run.
pub fn sagas(registry: &mut Registry, pool: Pool, schema: String) -> Refresh {
    let by_status = Family::<StatusLabels, Gauge>::default();
    registry.register(
        "shop_sagas",
        "Sagas in the orchestrator's log, by status: running, compensating, completed, \
         compensated, stuck",
        by_status.clone(),
    );
    let oldest = FloatGauge::default();
    registry.register(
        "shop_saga_oldest_running_age_seconds",
        "How long the oldest unfinished saga (running or compensating) has run (0 when none)",
        oldest.clone(),
    );
    let unannounced = Gauge::<i64>::default();
    registry.register(
        "shop_saga_endings_unannounced",
        "Sagas that completed or were compensated and whose ending the relay has not yet sent \
         to the notifications service",
        unannounced.clone(),
    );
    Arc::new(move || {
        let (pool, schema) = (pool.clone(), schema.clone());
        let (by_status, oldest) = (by_status.clone(), oldest.clone());
        let unannounced = unannounced.clone();
        Box::pin(async move {
            let client = pool.get().await.map_err(|e| format!("PostgreSQL: {e}"))?;
            // A running saga that has sent a compensation is compensating: turning back.
            let counted = format!(
                "SELECT CASE WHEN s.status = 'running' AND EXISTS (
                            SELECT 1 FROM {schema}.saga_log l WHERE l.saga_id = s.id
                            AND l.record::jsonb -> 'Intent' ->> 'kind' = 'Compensation')
                        THEN 'compensating' ELSE s.status END,
                        count(*)
                 FROM {schema}.sagas s GROUP BY 1"
            );
            let rows = client
                .query(&counted, &[])
                .await
                .map_err(|e| format!("PostgreSQL: {e}"))?;
            let mut counts: BTreeMap<String, i64> =
                SAGA_STATUSES.iter().map(|s| ((*s).to_owned(), 0)).collect();
            for row in rows {
                let status =
                    row.try_get(0).map_err(|e| format!("PostgreSQL: {e}"))?;
                let count =
                    row.try_get(1).map_err(|e| format!("PostgreSQL: {e}"))?;
                counts.insert(status, count);
            }
            for (status, count) in counts {
                by_status.get_or_create(&StatusLabels { status }).set(count);
            }
            let aged = format!(
                "SELECT coalesce(extract(epoch FROM clock_timestamp() - min(created_at)), 0)::float8
                 FROM {schema}.sagas WHERE status = 'running'"
            );
            let age = client
                .query_one(&aged, &[])
                .await
                .map_err(|e| format!("PostgreSQL: {e}"))?;
            oldest.set(age.try_get(0).map_err(|e| format!("PostgreSQL: {e}"))?);
            let owed = format!(
                "SELECT count(*) FROM {schema}.sagas
                 WHERE status IN ('completed', 'compensated') AND announced_at IS NULL"
            );
            let owed = client
                .query_one(&owed, &[])
                .await
                .map_err(|e| format!("PostgreSQL: {e}"))?;
            unannounced
                .set(owed.try_get(0).map_err(|e| format!("PostgreSQL: {e}"))?);
            Ok(())
        })
    })
}

/// Every status a saga row can have, so each has a series even at zero.
const SAGA_STATUSES: [&str; 5] =
    ["running", "compensating", "completed", "compensated", "stuck"];

/// Messages waiting in each of `queues`, as RabbitMQ counts them, under the metric `name`.
pub fn queue_depths(
    registry: &mut Registry,
    name: &str,
    help: &str,
    amqp: Arc<AmqpProbe>,
    queues: Vec<String>,
) -> Refresh {
    let depth = Family::<QueueLabels, Gauge>::default();
    registry.register(name, help, depth.clone());
    Arc::new(move || {
        let (amqp, queues, depth) =
            (Arc::clone(&amqp), queues.clone(), depth.clone());
        Box::pin(async move {
            for queue in queues {
                let messages = amqp.messages(&queue).await?;
                depth.get_or_create(&QueueLabels { queue }).set(i64::from(messages));
            }
            Ok(())
        })
    })
}

/// Rows an outbox at `schema` still owes the broker (`pending`) or gave up on (`failed`), and
/// the age of the oldest pending one: a relay that stopped shows as an age that grows.
pub fn outbox(registry: &mut Registry, pool: Pool, schema: String) -> Refresh {
    let rows = Family::<StatusLabels, Gauge>::default();
    registry.register(
        "shop_outbox_rows",
        "Outbox rows not yet sent, by status: pending (the relay owes them) or failed (given up)",
        rows.clone(),
    );
    let oldest = FloatGauge::default();
    registry.register(
        "shop_outbox_oldest_pending_age_seconds",
        "How long the oldest pending outbox row has waited for the relay (0 when none waits)",
        oldest.clone(),
    );
    Arc::new(move || {
        let (pool, schema) = (pool.clone(), schema.clone());
        let (rows, oldest) = (rows.clone(), oldest.clone());
        Box::pin(async move {
            let client = pool.get().await.map_err(|e| format!("PostgreSQL: {e}"))?;
            let sql = format!(
                "SELECT status, count(*),
                        coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8
                 FROM {schema}.outbox WHERE status <> 'sent' GROUP BY status"
            );
            let found = client
                .query(&sql, &[])
                .await
                .map_err(|e| format!("PostgreSQL: {e}"))?;
            let (mut pending, mut failed, mut age) = (0, 0, 0.0);
            for row in found {
                let read = |i| {
                    row.try_get::<_, i64>(i).map_err(|e| format!("PostgreSQL: {e}"))
                };
                let status: String =
                    row.try_get(0).map_err(|e| format!("PostgreSQL: {e}"))?;
                match status.as_str() {
                    "pending" => {
                        pending = read(1)?;
                        age = row
                            .try_get(2)
                            .map_err(|e| format!("PostgreSQL: {e}"))?;
                    }
                    _ => failed = read(1)?,
                }
            }
            rows.get_or_create(&StatusLabels { status: "pending".into() })
                .set(pending);
            rows.get_or_create(&StatusLabels { status: "failed".into() })
                .set(failed);
            oldest.set(age);
            Ok(())
        })
    })
}

/// The labels of a partition's lag.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    topic: String,
    partition: i32,
}

/// How far a consumer group is behind, and what waits in a dead-letter topic.
#[derive(Clone, Debug)]
pub struct KafkaWatch {
    /// The group whose lag is measured.
    pub group: String,
    /// The topics it consumes. On a partition where it has committed nothing yet, every record
    /// the partition holds counts as lag: the group reads from the earliest.
    pub topics: Vec<String>,
    /// The topic where the service dead-letters what it cannot read.
    pub dead_letters: String,
}

/// Consumer lag per partition (the newest offset minus the group's committed one) and the
/// records in the dead-letter topic, asked of the broker on each scrape through one client that
/// never joins the group, so measuring does not rebalance it.
pub fn kafka(
    registry: &mut Registry,
    brokers: &str,
    watch: KafkaWatch,
) -> Result<Refresh, String> {
    let lag = Family::<PartitionLabels, Gauge>::default();
    registry.register(
        "shop_kafka_consumer_lag",
        "Records on a partition that the service's consumer group has not committed yet",
        lag.clone(),
    );
    let dead = Family::<QueueLabels, Gauge>::default();
    registry.register(
        "shop_dead_letters",
        "Records in the service's dead-letter topic, each for a person to explain",
        dead.clone(),
    );
    let client: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", &watch.group)
        .set("enable.auto.commit", "false")
        // As the services' clients: back within a second of the broker, not ten.
        .set("reconnect.backoff.max.ms", "1000")
        .create()
        .map_err(|e| format!("Kafka client: {e}"))?;
    let client = Arc::new(client);
    // One read at a time: a scrape that gives up (the broker is slow) leaves its read running on
    // a blocking thread, and the next scrapes must not pile more of them up.
    let reading = Arc::new(std::sync::atomic::AtomicBool::new(false));
    Ok(Arc::new(move || {
        let (client, watch) = (Arc::clone(&client), watch.clone());
        let (lag, dead, reading) = (lag.clone(), dead.clone(), Arc::clone(&reading));
        Box::pin(async move {
            if reading.swap(true, std::sync::atomic::Ordering::AcqRel) {
                return Err("Kafka: the previous read has not finished".to_owned());
            }
            // librdkafka's calls block their thread until the broker answers.
            let asked = tokio::task::spawn_blocking(move || {
                let read = read_kafka(&client, &watch, &lag, &dead);
                reading.store(false, std::sync::atomic::Ordering::Release);
                read
            });
            asked.await.map_err(|e| format!("Kafka: {e}"))?
        })
    }))
}

fn read_kafka(
    client: &BaseConsumer,
    watch: &KafkaWatch,
    lag: &Family<PartitionLabels, Gauge>,
    dead: &Family<QueueLabels, Gauge>,
) -> Result<(), String> {
    // The client never joins its group, so nothing else polls it: take the events (errors while
    // the broker is away) it queued since the last read, or they pile up.
    while let Some(event) = client.poll(std::time::Duration::ZERO) {
        if let Err(error) = event {
            tracing::debug!(%error, "metrics: the Kafka client reported");
        }
    }
    // One deadline for the whole read, however many calls it takes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let within = || deadline.saturating_duration_since(std::time::Instant::now());
    let kafka = |e: rdkafka::error::KafkaError| format!("Kafka: {e}");
    let mut partitions = TopicPartitionList::new();
    for topic in &watch.topics {
        let metadata =
            client.fetch_metadata(Some(topic), within()).map_err(kafka)?;
        for found in metadata.topics() {
            for partition in found.partitions() {
                partitions.add_partition(found.name(), partition.id());
            }
        }
    }
    let committed = client.committed_offsets(partitions, within()).map_err(kafka)?;
    for element in committed.elements() {
        let (topic, partition) = (element.topic(), element.partition());
        let (oldest, newest) =
            client.fetch_watermarks(topic, partition, within()).map_err(kafka)?;
        // Nothing committed: the group has not finished a record of this partition yet, and
        // reads from the earliest one it holds.
        let done = match element.offset() {
            Offset::Offset(done) => done,
            _ => oldest,
        };
        let labels = PartitionLabels { topic: topic.to_owned(), partition };
        lag.get_or_create(&labels).set((newest - done).max(0));
    }
    let metadata =
        client.fetch_metadata(Some(&watch.dead_letters), within()).map_err(kafka)?;
    let mut records = 0;
    for found in metadata.topics() {
        for partition in found.partitions() {
            let (oldest, newest) = client
                .fetch_watermarks(found.name(), partition.id(), within())
                .map_err(kafka)?;
            records += newest - oldest;
        }
    }
    dead.get_or_create(&QueueLabels { queue: watch.dead_letters.clone() })
        .set(records);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    async fn fetch(app: &Router, path: &str) -> (StatusCode, String) {
        let request = axum::http::Request::get(path).body(Body::empty()).unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes =
            axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[test]
    fn the_compensating_query_reads_intents_as_the_log_writes_them() {
        use orchestration::saga::{Kind, Record};
        let undo = Record::Intent { step: 1, kind: Kind::Compensation, attempt: 1 };
        let written = serde_json::to_value(&undo).unwrap();
        // `record::jsonb -> 'Intent' ->> 'kind' = 'Compensation'` in `sagas`.
        assert_eq!(written["Intent"]["kind"], "Compensation", "{written}");
    }

    /// One gRPC call to the standard health service, as the wire carries it: a 5-byte frame
    /// header and an empty message.
    async fn grpc_call(app: &Router, path: &str) -> String {
        let request = axum::http::Request::post(path)
            .header(header::CONTENT_TYPE, "application/grpc")
            .header("te", "trailers")
            .body(Body::from(vec![0u8; 5]))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "gRPC answers 200 either way");
        // Read to the end: a successful call's code is in the trailers.
        let collected = response.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap_or_default();
        format!("{:?}", trailers.get("grpc-status"))
    }

    #[tokio::test]
    async fn grpc_calls_are_counted_by_method_and_code_and_unknown_methods_mint_no_series()
     {
        let (_reporter, health) = tonic_health::server::health_reporter();
        let exporter = Exporter::new(|_| None);
        let grpc = tonic::service::Routes::new(health).into_axum_router();
        let app = exporter.measured(grpc);
        let ok = grpc_call(&app, "/grpc.health.v1.Health/Check").await;
        assert_eq!(ok, "Some(\"0\")", "OK, in the trailers");
        for made_up in [
            "/grpc.health.v1.Health/Nope1",
            "/grpc.health.v1.Health/Nope2",
            "/no.Such/Service",
            "/metrics/Nope3",
        ] {
            grpc_call(&app, made_up).await;
        }
        let (_, text) = fetch(&app, "/metrics").await;
        let check = r#"shop_grpc_requests_total{method="/grpc.health.v1.Health/Check",code="OK"} 1"#;
        assert!(text.contains(check), "{text}");
        let unknown =
            r#"shop_grpc_requests_total{method="unknown",code="UNIMPLEMENTED"} 2"#;
        assert!(text.contains(unknown), "{text}");
        // No service's route took these two: HTTP requests, whatever their header said.
        let stray = r#"shop_http_requests_total{route="unmatched",method="POST",status="200"} 2"#;
        assert!(text.contains(stray), "{text}");
        assert!(!text.contains("Nope"), "{text}");
        assert!(
            !text.contains(r#"route="/grpc.health.v1.Health"#),
            "not as HTTP: {text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_scrape_answers_when_the_state_behind_it_does_not() {
        let exporter = Exporter::new(|_| {
            let refresh: Refresh = Arc::new(|| Box::pin(std::future::pending()));
            Some(refresh)
        });
        let began = tokio::time::Instant::now();
        let text = exporter.render().await.unwrap();
        assert_eq!(began.elapsed(), REFRESH_PATIENCE);
        assert!(text.contains("shop_metrics_refresh_failures_total 1"), "{text}");
    }

    #[tokio::test]
    async fn requests_count_under_their_template_and_a_failed_refresh_is_counted() {
        let exporter = Exporter::new(|_| {
            let refresh: Refresh = Arc::new(|| {
                Box::pin(async { Err("PostgreSQL: no answer".to_owned()) })
            });
            Some(refresh)
        });
        let app = exporter.measured(
            Router::new().route("/orders/{id}", get(|| async { "an order" })),
        );
        for path in ["/orders/1", "/orders/2", "/nowhere"] {
            fetch(&app, path).await;
        }
        for made_up in ["BREW", "STEEP"] {
            let request = axum::http::Request::builder()
                .method(made_up)
                .uri("/orders/3")
                .body(Body::empty())
                .unwrap();
            app.clone().oneshot(request).await.unwrap();
        }
        let (status, text) = fetch(&app, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        let ok = r#"shop_http_requests_total{route="/orders/{id}",method="GET",status="200"} 2"#;
        assert!(text.contains(ok), "{text}");
        let missing = r#"shop_http_requests_total{route="unmatched",method="GET",status="404"} 1"#;
        assert!(text.contains(missing), "{text}");
        assert!(text.contains("shop_metrics_refresh_failures_total 1"), "{text}");
        assert!(!text.contains("/orders/1\""), "a raw path became a label: {text}");
        let other = r#"shop_http_requests_total{route="/orders/{id}",method="other",status="405"} 2"#;
        assert!(text.contains(other), "{text}");
        assert!(!text.contains("BREW"), "a made-up method became a label: {text}");
    }
}
