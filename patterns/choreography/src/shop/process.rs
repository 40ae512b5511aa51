//! One service as a process: its consumer loop (the Kafka chapter's consume step), the relay that
//! lives and dies with it, the supervisor that restarts it, and where a fault plan kills it.

use super::relaying::relay_loop;
use super::*;

/// How a process ended.
enum Exit {
    Stopped,
    /// Died by the fault plan, in the span of the work it died on.
    Crashed(Span),
}

/// Restarts a service's process whenever it dies, until the shop stops.
pub(super) async fn supervise<S: Store + 'static>(
    shared: Arc<Shared>,
    wake: Arc<Notify>,
    kill: Arc<Notify>,
) {
    let me = S::SERVICE;
    let mut stop = shared.stop.clone();
    let mut first_life = true;
    loop {
        let exit = run_process::<S>(&shared, first_life, &wake, &kill).await;
        first_life = false;
        match exit {
            Ok(Exit::Stopped) => return,
            Ok(Exit::Crashed(span)) => {
                shared.stats.of(me).crashes.fetch_add(1, Relaxed);
                let what =
                    "restarted by its supervisor: a new consumer rejoins the group";
                let relay = if shared.config.faults.dual_write.contains(&me) {
                    ""
                } else {
                    ", a new relay starts"
                };
                info!(parent: &span, "{what}{relay}");
            }
            Err(e) => {
                warn!("{}: failed ({e}); restarting in 1 s", me.name());
                if !super::pause_before_restart(&mut stop).await {
                    return;
                }
            }
        }
        shared.progress.send_modify(|n| *n += 1);
    }
}

/// Aborts a task when dropped: a process's relay dies with it.
struct AbortOnDrop(Option<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// The topics of the services whose events `S` reacts to.
pub(super) fn sources<S: Reaction>(topics: &Topics) -> Vec<String> {
    let services: BTreeSet<ServiceName> = Kind::ALL
        .into_iter()
        .filter(|k| S::listens_to(*k))
        .map(Kind::source)
        .collect();
    services.into_iter().map(|s| topics.of(s)).collect()
}

/// One life of a service: its consumer loop and its relay, until the shop
/// stops or the fault plan kills it.
async fn run_process<S: Store + 'static>(
    shared: &Arc<Shared>,
    first_life: bool,
    wake: &Arc<Notify>,
    kill: &Notify,
) -> Result<Exit, Error> {
    let me = S::SERVICE;
    let faults = &shared.config.faults;
    let fault = |set: &BTreeSet<ServiceName>| first_life && set.contains(&me);
    // Where this life's fault plan kills the process, if anywhere.
    let deaths = Deaths {
        after_effect: fault(&faults.die_after_effect),
        before_relay: fault(&faults.die_before_relay),
    };
    // Without an outbox in every life; it dies between commit and publish once.
    let dual_write = faults.dual_write.contains(&me);
    let fail_once = std::sync::atomic::AtomicBool::new(fault(&faults.fail_once));
    let publisher = DiesBeforePublishing::new(
        shared.producer.clone(),
        fault(&faults.dual_write),
    );
    let (config, schema) = (&shared.config, shared.schemas.of(me));
    let mut service =
        Service::<S>::connect(&config.database_url, schema, shared.topics.clone())
            .await?
            .with_tracing(config.tracing);
    let group = shared.topics.group(me);
    let consumer = consumer(&config.brokers, &group)?;
    let sources = sources::<S>(&shared.topics);
    let sources: Vec<&str> = sources.iter().map(String::as_str).collect();
    consumer.subscribe(&sources)?;
    let dead_letters = DeadLetters {
        producer: shared.producer.clone(),
        topic: shared.topics.dead_letters(me),
    };
    // The relay lives and dies with the process; in the first life of a
    // service that dies before its relay runs, there is none.
    let relay = (!deaths.before_relay && !dual_write).then(|| {
        let relay_faults = FaultPlan {
            die_after: fault(&faults.relay_dies_before_mark).then_some(1),
            ..FaultPlan::default()
        };
        tokio::spawn(relay_loop(shared.clone(), me, relay_faults, wake.clone()))
    });
    let _relay = AbortOnDrop(relay);
    let mut stop = shared.stop.clone();
    let mut failures = 0u32;
    // Readiness: the consumer has joined its group and holds its partitions.
    let mut ready = false;
    let mut check = tokio::time::interval(Duration::from_millis(20));
    let decode = |message: &BorrowedMessage<'_>| wire::decode(message);
    loop {
        // ANCHOR: consume
        // The Kafka chapter's step: decode (or dead-letter), apply once, and
        // only then store the offset; rewind when anything fails.
        let step = handle_with(&consumer, &dead_letters, decode, |incoming| async {
            if fail_once.swap(false, Relaxed) {
                return Err(Error::Shop(
                    "the fault plan fails this step once".into(),
                ));
            }
            let delivery = match dual_write {
                false => service.handle(incoming).await?,
                true => service.handle_without_outbox(incoming, &publisher).await?,
            };
            if record(shared, me, &delivery) {
                wake.notify_one(); // the relay has work
            }
            deaths.after_commit(shared, &service, &delivery).await?;
            Ok::<_, Error>(delivery)
        });
        // ANCHOR_END: consume
        let mut step = std::pin::pin!(step);
        let handled = loop {
            tokio::select! {
                _ = stop.wait_for(|stopped| *stopped) => return Ok(Exit::Stopped),
                () = kill.notified() => {
                    return Ok(Exit::Crashed(span(me, "-", "-")));
                }
                _ = check.tick(), if !ready => {
                    if consumer.assignment()?.count() > 0 {
                        ready = true;
                        shared.stats.of(me).ready.fetch_add(1, Relaxed);
                        shared.progress.send_modify(|n| *n += 1);
                    }
                }
                handled = &mut step => break handled,
            }
        };
        let error = match handled {
            Ok(Handled::Processed(_)) => {
                failures = 0;
                continue;
            }
            Ok(Handled::DeadLettered(reason)) => {
                failures = 0;
                let reason = reason.to_string();
                record(shared, me, &Delivery::DeadLettered { reason });
                continue;
            }
            Err(StepError::Handler { error: Error::Died(span), .. }) => {
                return Ok(Exit::Crashed(span));
            }
            Err(StepError::Handler { error, .. }) => {
                // The handler failed on a message: it comes again, from the same offset.
                shared.stats.of(me).rewound.fetch_add(1, Relaxed);
                error
            }
            Err(StepError::Kafka(error)) => Error::Kafka(error),
        };
        // The step rewound (or the receive failed): after a pause, the consumer goes on from
        // the offset it last stored.
        failures += 1;
        if failures >= 5 {
            return Err(error);
        }
        let pause = Duration::from_millis(100 << failures);
        warn!("{}: {error}; the message comes again in {pause:?}", me.name());
        tokio::time::sleep(pause).await;
    }
}

/// Where the fault plan kills one life of a process: after a commit, before the
/// message's offset is stored (tests and the example's flags only).
struct Deaths {
    /// After its first effect.
    after_effect: bool,
    /// After its first commit that put events in the outbox, before a relay ran.
    before_relay: bool,
}

impl Deaths {
    /// `Err(Error::Died)` where the plan says this process dies.
    async fn after_commit<S: Store>(
        &self,
        shared: &Shared,
        service: &Service<S>,
        delivery: &Delivery,
    ) -> Result<(), Error> {
        let me = S::SERVICE;
        let effect = matches!(delivery, Delivery::Applied { .. });
        let relayed = delivery.emitted_any();
        if (effect && self.after_effect) || (relayed && self.before_relay) {
            shared_pending(shared, service, delivery, self.before_relay).await;
            return Err(Error::Died(delivery_span(me, delivery)));
        }
        Ok(())
    }
}

fn delivery_span(me: ServiceName, delivery: &Delivery) -> Span {
    match delivery {
        Delivery::Applied { incoming, .. } | Delivery::Duplicate { incoming } => {
            incoming_span(me, incoming)
        }
        _ => span(me, "-", "-"),
    }
}

/// Counts what a delivery did and tells waiters; whether it was a first-time effect.
fn record(shared: &Shared, me: ServiceName, delivery: &Delivery) -> bool {
    let counters = shared.stats.of(me);
    match delivery {
        Delivery::Applied { incoming, emitted } => {
            counters.applied.fetch_add(1, Relaxed);
            let kinds =
                emitted.iter().filter_map(|r| Kind::parse(&r.event_type)).collect();
            shared.committed(me, incoming.event.order_id(), kinds);
            return true;
        }
        Delivery::Duplicate { .. } => {
            counters.duplicates.fetch_add(1, Relaxed);
        }
        Delivery::DeadLettered { .. } => {
            counters.dead_lettered.fetch_add(1, Relaxed);
        }
        Delivery::Ignored => return false,
    }
    shared.progress.send_modify(|n| *n += 1);
    false
}

/// Narrates a crash after an effect (and, when the relay never ran, counts the
/// rows it left in the outbox).
async fn shared_pending<S: Store>(
    shared: &Shared,
    service: &Service<S>,
    delivery: &Delivery,
    before_relay: bool,
) {
    let Delivery::Applied { incoming, .. } = delivery else { return };
    let me = S::SERVICE;
    let span = incoming_span(me, incoming);
    if before_relay {
        // The dying service counts its own outbox, on its own pool.
        let counted = service.outbox_counts().await.map(|c| c.pending);
        match counted {
            Ok(pending) => {
                let counter = &shared.stats.of(me).pending_at_crash;
                counter.fetch_add(pending.unsigned_abs(), Relaxed);
                warn!(
                    parent: &span,
                    "crash! died after its commit, before its relay ran: {pending} event(s) wait in its outbox"
                );
            }
            Err(e) => warn!(
                parent: &span,
                "crash! died after its commit, before its relay ran; its outbox cannot be counted: {e}"
            ),
        }
    } else {
        warn!(parent: &span, "crash! died after its commit, before storing the offset");
    }
}
