//! A participant of the checkout as a process: the orchestration chapter's
//! [`participant::serve`], kept running across broker outages, with its probes.
//!
//! The consume loop ends when its connection to RabbitMQ or PostgreSQL breaks. This process then
//! says so in its log and starts a new loop after a backoff (0.1 s, doubling up to 5 s), as long as
//! it takes. Nothing is lost meanwhile: a command it had not acknowledged goes back to its queue, and
//! its inbox turns the second delivery into the stored reply.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use orchestration::participant::{self, Deliveries, Quirks};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use shop_domain::Service;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::config::{Env, Role};
use crate::metrics::{self, AmqpCounts, Exporter, OutcomeLabels, Refresh, catch_up};
use crate::probe::{self, AmqpProbe, Check};
use crate::roles::reads::{self, Reads};

/// The first wait before reconnecting; each failure in a row doubles it, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A loop that ran this long before it failed was healthy: the next wait starts small again.
const HEALTHY: Duration = Duration::from_secs(10);

/// Runs `service` until SIGTERM.
pub async fn run(service: Service, env: Env) -> anyhow::Result<()> {
    let listener =
        probe::listen(env.listen_addr(Role::Participant(service))?).await?;
    let tls_listener = crate::identity::listen_for(&env, service).await?;
    let pool = orchestration::pool(&env.database_url, 1)?;
    let amqp = Arc::new(AmqpProbe::new(env.amqp.clone()));
    let queue = env.names.queue(service);
    let lives = Lives::default();
    let exporter = Exporter::new(|registry| {
        let help = "Commands waiting in this participant's queue";
        let queues = vec![queue.clone()];
        // A connection of its own: a scrape must not make a readiness probe wait.
        let amqp = Arc::new(AmqpProbe::new(env.amqp.clone()));
        let depth = metrics::queue_depths(
            registry,
            "shop_queue_messages",
            help,
            amqp,
            queues,
        );
        Some(metrics::all(vec![depth, commands_done(registry, lives.clone())]))
    });
    // Reads get a pool of their own: a slow read must not make a readiness probe wait.
    let reads_pool = orchestration::pool(&env.database_url, 2)?;
    let reads = Reads::orchestrated(reads_pool, env.names.schema(service));
    let ready: Check = Arc::new(move || {
        let (pool, amqp, queue) = (pool.clone(), Arc::clone(&amqp), queue.clone());
        Box::pin(async move {
            // Side by side: a probe waits for the slower of the two, 2 s at most.
            let (database, consumers) =
                tokio::join!(probe::pg_answers(&pool), amqp.consumers(&queue));
            database?;
            match consumers? {
                0 => Err(format!("no consumer on {queue} yet")),
                _ => Ok(()),
            }
        })
    });
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let addr = listener.local_addr()?;
    let mutual_tls = tls_listener.is_some();
    let read_routes = reads::routes(service, reads, Arc::clone(&ready), mutual_tls)?;
    // Its reads in a server span that continues the caller's trace (the gateway's composed
    // `GET /orders/{id}`); the probes and the scrape in none.
    let app = crate::telemetry::traced(
        exporter.measured(probe::routes(ready).merge(read_routes.plain)),
        service.name(),
    );
    let tls_app = read_routes
        .tls
        .map(|app| crate::telemetry::traced(exporter.counted(app), service.name()));
    let tls = crate::identity::spawn_payments(tls_listener, tls_app);
    let http = tokio::spawn(probe::serve(listener, app, async {
        if http_stopped.await.is_err() {
            tracing::debug!("probe server's stop handle dropped");
        }
    }));
    info!(
        "{service} probes on http://{addr}/readyz; consuming {}",
        env.names.queue(service)
    );
    consume_until_terminated(service, &env, &lives).await;
    if stop_http.send(()).is_err() {
        warn!("the probe server had already stopped");
    }
    let served = http.await;
    reads::stop_health(read_routes.health).await;
    served??;
    if let Some(tls) = tls {
        tls.await??;
    }
    info!("{service} stopped");
    Ok(())
}

/// The delivery counts of every consume loop this process has run: a loop that reconnects
/// starts counting from zero, and the process's totals are the loops that ended, folded into one,
/// plus the one running.
#[derive(Clone, Default)]
struct Lives(Arc<Mutex<Totals>>);

#[derive(Default)]
struct Totals {
    ended: Deliveries,
    current: Option<Arc<Deliveries>>,
}

/// One of the counts a loop keeps.
type Count = fn(&Deliveries) -> &AtomicU64;

const RECEIVED: Count = |d| &d.received;
const REDELIVERED: Count = |d| &d.redelivered;
/// The broker's answers to the replies: confirmed, unconfirmed.
const CONFIRMS: [Count; 2] = [|d| &d.replies_confirmed, |d| &d.replies_unconfirmed];
/// The outcomes of a command, as labelled in `shop_commands_total`.
const OUTCOMES: [(&str, Count); 4] = [
    ("applied", |d| &d.applied),
    ("duplicate", |d| &d.duplicates),
    ("dead_lettered", |d| &d.dead_lettered),
    ("requeued", |d| &d.requeued),
];

impl Lives {
    /// A new loop's counts; the previous loop's are folded into the totals.
    fn add(&self, deliveries: Arc<Deliveries>) {
        let mut totals = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = totals.current.replace(deliveries) {
            let counts = OUTCOMES.iter().map(|(_, count)| *count).chain(CONFIRMS);
            for count in counts.chain([RECEIVED, REDELIVERED]) {
                count(&totals.ended).fetch_add(count(&old).load(Relaxed), Relaxed);
            }
        }
    }
}

impl Totals {
    /// One count over every loop.
    fn of(&self, count: Count) -> u64 {
        let running = self.current.as_deref().map_or(0, |d| count(d).load(Relaxed));
        count(&self.ended).load(Relaxed) + running
    }
}

/// What the participant did with the commands RabbitMQ delivered, over all its loops.
fn commands_done(registry: &mut Registry, lives: Lives) -> Refresh {
    let commands = Family::<OutcomeLabels, Counter>::default();
    registry.register(
        "shop_commands",
        "Commands handled, by outcome: applied, duplicate (answered from the inbox), \
         dead_lettered (unreadable), requeued (could not be applied now)",
        commands.clone(),
    );
    let amqp = AmqpCounts::register(registry, "Commands", "Replies");
    Arc::new(move || {
        // Under the lock, so two scrapes at once cannot both add the same increase.
        let totals = lives.0.lock().unwrap_or_else(PoisonError::into_inner);
        for (outcome, count) in OUTCOMES {
            let counter = commands.get_or_create(&OutcomeLabels { outcome });
            catch_up(&counter, totals.of(count));
        }
        let [confirmed, unconfirmed] = CONFIRMS.map(|count| totals.of(count));
        let delivered = (totals.of(RECEIVED), totals.of(REDELIVERED));
        amqp.catch_up(delivered.0, delivered.1, confirmed, unconfirmed);
        Box::pin(async { Ok(()) })
    })
}

// ANCHOR: consume_until_terminated
/// Runs the consume loop, and a new one whenever it ends, until SIGTERM.
async fn consume_until_terminated(service: Service, env: &Env, lives: &Lives) {
    let mut terminated = std::pin::pin!(probe::terminated());
    let mut backoff = FIRST_BACKOFF;
    loop {
        let started = Instant::now();
        let (url, amqp, names) =
            (env.database_url.clone(), env.amqp.clone(), env.names.clone());
        let span: participant::CommandSpan =
            Arc::new(crate::telemetry::command_span);
        let mut running = participant::serve_with(
            service,
            url,
            amqp,
            names,
            Quirks::default(),
            Some(span),
        );
        lives.add(Arc::clone(&running.deliveries));
        let ended = tokio::select! {
            ended = &mut running.task => ended,
            () = &mut terminated => {
                if let Err(error) = running.stop().await {
                    error!(%error, "{service} did not stop cleanly");
                }
                return;
            }
        };
        if started.elapsed() > HEALTHY {
            backoff = FIRST_BACKOFF;
        }
        match ended {
            Ok(Ok(())) => warn!("consumer ended; again in {backoff:?}"),
            Ok(Err(error)) => {
                warn!(%error, "lost a connection; reconnecting in {backoff:?}")
            }
            Err(error) => {
                error!(%error, "consumer task failed; again in {backoff:?}")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = &mut terminated => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
// ANCHOR_END: consume_until_terminated
