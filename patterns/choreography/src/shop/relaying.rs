//! A service's outbox relay: woken by the service after each commit, restarted when it dies.

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
            result = relay_life(&shared, me, publisher.clone(), &wake) => result,
            _ = publisher.died() => {
                shared.stats.of(me).relay_crashes.fetch_add(1, Relaxed);
                shared.progress.send_modify(|n| *n += 1);
                let next = "a new relay starts and sends the unmarked rows again";
                info!("{}-relay: died; {next}", me.as_str());
                continue;
            }
        };
        match result {
            Ok(()) => return,
            Err(e) => {
                warn!("{}-relay: {e}; restarting in 1 s", me.as_str());
                let pause = tokio::time::sleep(Duration::from_secs(1));
                tokio::select! {
                    _ = stop.wait_for(|stopped| *stopped) => return,
                    () = pause => {}
                }
            }
        }
    }
}

// ANCHOR: relay_life
/// One relay life: claim pending rows, publish, mark, commit; when there is
/// nothing to do, wait for the service's wake-up call (or the poll interval).
async fn relay_life(
    shared: &Shared,
    me: ServiceName,
    publisher: impl Publisher,
    wake: &Notify,
) -> Result<(), Error> {
    let (url, schema) = (&shared.config.database_url, shared.schemas.of(me));
    let poll_interval = shared.config.relay_poll;
    let config = RelayConfig { poll_interval, ..RelayConfig::default() };
    let mut relay =
        Relay::connect(url, schema, publisher).await?.with_config(config);
    let lookup = connect(url).await?;
    let mut stop = shared.stop.clone();
    loop {
        let batch = relay.claim().await?;
        let ids = batch.ids();
        if ids.is_empty() {
            drop(batch);
            tokio::select! {
                _ = stop.wait_for(|stopped| *stopped) => return Ok(()),
                () = wake.notified() => {}
                () = tokio::time::sleep(poll_interval) => {}
            }
            continue;
        }
        let span = relay_span(&lookup, me, schema, &ids).await?;
        let report = batch.finish().instrument(span).await?;
        let published = report.published.len() as u64;
        shared.stats.of(me).published.fetch_add(published, Relaxed);
        shared.progress.send_modify(|n| *n += 1);
    }
}
// ANCHOR_END: relay_life

/// A relay pass's span: the correlation and causation ids of the rows it
/// publishes, read from the service's own outbox.
async fn relay_span(
    lookup: &Client,
    me: ServiceName,
    schema: &str,
    ids: &[Uuid],
) -> Result<Span, Error> {
    let sql = format!(
        "SELECT header_names, header_values FROM {schema}.outbox WHERE id = ANY($1)"
    );
    let (mut correlations, mut causes) = (BTreeSet::new(), BTreeSet::new());
    for row in lookup.query(&sql, &[&ids]).await? {
        let names: Vec<String> = row.get(0);
        let values: Vec<String> = row.get(1);
        for (name, value) in names.iter().zip(values) {
            if name == header::CORRELATION_ID {
                correlations.insert(value);
            } else if name == crate::wire::CAUSATION_ID {
                let short = Uuid::parse_str(&value).map(short).unwrap_or(value);
                causes.insert(short);
            }
        }
    }
    let join = |set: BTreeSet<String>| set.into_iter().collect::<Vec<_>>().join(",");
    let (correlation_id, causation_id) = (join(correlations), join(causes));
    Ok(match me {
        ServiceName::Orders => {
            info_span!("orders-relay", correlation_id = %correlation_id, causation_id = %causation_id)
        }
        ServiceName::Inventory => {
            info_span!("inventory-relay", correlation_id = %correlation_id, causation_id = %causation_id)
        }
        ServiceName::Payments => {
            info_span!("payments-relay", correlation_id = %correlation_id, causation_id = %causation_id)
        }
        ServiceName::Shipping => {
            info_span!("shipping-relay", correlation_id = %correlation_id, causation_id = %causation_id)
        }
    })
}
