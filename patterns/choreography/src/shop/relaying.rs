//! A service's outbox relay: woken by the service after each commit, restarted when it dies.

use outbox::relay::RelayReport;

use super::*;

/// Runs a service's relay, restarting it when it dies. Its first life follows
/// `faults`; a relay the plan kills is dropped mid-pass, as a process dies.
pub(super) async fn relay_loop(
    shared: Arc<Shared>,
    me: ServiceName,
    mut faults: FaultPlan,
    wake: Arc<Notify>,
) {
    let mut stop = shared.stop.clone();
    loop {
        let plan = std::mem::take(&mut faults);
        let publisher = FaultyPublisher::new(shared.producer.clone(), plan);
        let result = tokio::select! {
            result = relay_life(&shared, me, publisher.clone(), wake.clone()) => result,
            _ = publisher.died() => {
                shared.stats.of(me).relay_crashes.fetch_add(1, Relaxed);
                shared.progress.send_modify(|n| *n += 1);
                let next = "a new relay starts and sends the unmarked rows again";
                info!("{}-relay: died; {next}", me.name());
                continue;
            }
        };
        match result {
            Ok(()) => return,
            Err(e) => {
                warn!("{}-relay: {e}; restarting in 1 s", me.name());
                if !super::pause_before_restart(&mut stop).await {
                    return;
                }
            }
        }
    }
}

// ANCHOR: relay_life
/// One relay life: the outbox chapter's relay, woken by the service after each
/// commit (the poll interval only bounds the wait), until the shop stops.
async fn relay_life(
    shared: &Shared,
    me: ServiceName,
    publisher: impl Publisher,
    wake: Arc<Notify>,
) -> Result<(), Error> {
    let (url, schema) = (&shared.config.database_url, shared.schemas.of(me));
    let poll_interval = shared.config.relay_poll;
    let config = RelayConfig { poll_interval, ..RelayConfig::default() };
    let relay = Relay::connect(url, schema, publisher).await?;
    let relay = relay.with_config(config).with_wake(wake);
    let mut stop = shared.stop.clone();
    let stopped = async move {
        // A sender that is gone can never say stop: take it as one.
        if stop.wait_for(|stopped| *stopped).await.is_err() {
            warn!("{}-relay: the stop signal is gone", me.name());
        }
    };
    let on_pass = |report: &RelayReport| {
        let published = report.published.len() as u64;
        shared.stats.of(me).published.fetch_add(published, Relaxed);
        if *report != RelayReport::default() {
            shared.progress.send_modify(|n| *n += 1); // waiters look again
        }
    };
    relay.run_with(stopped, on_pass).instrument(relay_span(me)).await?;
    Ok(())
}
// ANCHOR_END: relay_life

/// The relay's span: its service's name. Each published line carries the
/// event's id and correlation id.
fn relay_span(me: ServiceName) -> Span {
    match me {
        ServiceName::Orders => info_span!("orders-relay"),
        ServiceName::Inventory => info_span!("inventory-relay"),
        ServiceName::Payments => info_span!("payments-relay"),
        ServiceName::Shipping => info_span!("shipping-relay"),
    }
}
