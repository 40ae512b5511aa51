//! Payment captures as a work queue for two workers, notifications through a fanout exchange, and
//! a stock check as request-reply, all through the RabbitMQ broker at `AMQP_ADDR`.
//!
//! Run it:   `cargo run --example rabbitmq_orders`
//! Break it: `cargo run --example rabbitmq_orders -- --crash-before-ack`  a worker dies holding a task
//!           `cargo run --example rabbitmq_orders -- --drop-connection`   the broker drops every
//!                                                  connection while captures are being published
//!
//! Needs a broker: `cargo xtask brokers up` (or `docker compose up -d --wait`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer, ExchangeKind};
use rabbitmq_queues::publish::{enable_confirms, persistent};
use rabbitmq_queues::reconnect::{connect_recovering, publish_until_confirmed};
use rabbitmq_queues::rpc::{RpcClient, RpcError, declare_request_queue, serve};
use rabbitmq_queues::{admin, topology};
use tokio::sync::{Notify, watch};
use tokio::time::timeout;
use tracing::{Instrument, info, info_span, warn};

/// The longest the example waits for any one thing before it gives up with an error.
const STEP: Duration = Duration::from_secs(30);

const PAYMENTS: [&str; 6] =
    ["pay_1001", "pay_1002", "pay_unknown", "pay_1003", "pay_1004", "pay_1005"];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    infra::example::init_logging();
    let flags =
        infra::example::Flags::parse(&["--crash-before-ack", "--drop-connection"])
            .map_err(anyhow::Error::msg)?;
    let uri = infra::amqp_addr();
    let Ok(Ok((connection, channel))) =
        timeout(Duration::from_secs(5), connect_recovering(&uri, "checkout")).await
    else {
        bail!(
            "no RabbitMQ broker answers at {uri}: start one with `cargo xtask brokers up` (or `docker compose up -d --wait`)"
        );
    };
    info!("connected to RabbitMQ at {uri}");
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let names = Names::new(&run);
    topology::dead_letters(&channel, &names.dlx, &names.dead).await?;
    topology::work_queue(&channel, &names.captures, &names.dlx).await?;
    topology::exchange_with_queues(
        &channel,
        &names.notifications,
        ExchangeKind::Fanout,
        &[(&names.email, ""), (&names.sms, "")],
    )
    .await?;

    publish_captures(&connection, &channel, &names, flags.has("--drop-connection"))
        .instrument(info_span!("checkout"))
        .await?;
    let done =
        run_workers(&connection, &names, flags.has("--crash-before-ack")).await?;

    // Dead-lettering happens inside the broker: consume the dead letters to see them.
    let mut dead_letters = channel
        .basic_consume(
            names.dead.as_str().into(),
            "inspector".into(),
            BasicConsumeOptions { no_ack: true, ..Default::default() },
            FieldTable::default(),
        )
        .await?;
    let dead = timeout(STEP, dead_letters.next())
        .await
        .context("the rejected capture never reached the dead-letter queue")?
        .context("the dead-letter consumer was cancelled")??;
    info!(
        "dead-letter queue holds {:?}: inspect, fix, replay",
        String::from_utf8_lossy(&dead.data)
    );
    let email = count(&channel, &names.email).await?;
    let sms = count(&channel, &names.sms).await?;
    info!(
        "notifications: {email} in the email queue, {sms} in the sms queue (fanout: each gets every one)"
    );

    stock_check(&connection, &names.stock).await?;

    ensure!(
        done == BTreeSet::from(
            ["pay_1001", "pay_1002", "pay_1003", "pay_1004", "pay_1005"]
                .map(String::from)
        ),
        "every valid capture done: {done:?}"
    );
    ensure!(email == 5 && sms == 5, "one notification per capture in each queue");
    let queues =
        [&names.captures, &names.dead, &names.email, &names.sms, &names.stock];
    for queue in queues {
        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    connection.close(200, "done".into()).await?;
    info!(
        "done: every capture done once, the bad one dead-lettered, every notification fanned out"
    );
    Ok(())
}

struct Names {
    captures: String,
    dlx: String,
    dead: String,
    notifications: String,
    email: String,
    sms: String,
    stock: String,
}

impl Names {
    fn new(run: &str) -> Self {
        let n = |s: &str| format!("{s}.{run}");
        Names {
            captures: n("captures"),
            dlx: n("captures.dlx"),
            dead: n("captures.dead"),
            notifications: n("notifications"),
            email: n("email"),
            sms: n("sms"),
            stock: n("stock-check"),
        }
    }
}

/// The checkout publishes capture tasks, each confirmed by the broker. With
/// `drop_connection`, the broker drops every connection before the fourth.
async fn publish_captures(
    connection: &Connection,
    channel: &Channel,
    names: &Names,
    drop_connection: bool,
) -> anyhow::Result<()> {
    for (i, payment) in PAYMENTS.iter().enumerate() {
        if i == 3 && drop_connection {
            warn!("the broker drops every connection now");
            tokio::task::spawn_blocking(|| {
                admin::close_all_connections(
                    "example: the broker drops every connection",
                )
            })
            .await?
            .map_err(anyhow::Error::msg)?;
            // The close reaches lapin a moment after rabbitmqctl returns; wait for it,
            // so the next publish meets a connection that is down, every time.
            wait_until("lapin to see the connection drop", || {
                !connection.status().connected()
            })
            .await?;
            warn!("connection lost; lapin reconnects in the background");
        }
        let confirmed = publish_until_confirmed(
            channel,
            "",
            &names.captures,
            payment.as_bytes(),
            persistent(),
        )
        .await?;
        info!(
            attempts = confirmed.attempts,
            unconfirmed = confirmed.unconfirmed,
            "capture {payment} published and confirmed"
        );
    }
    Ok(())
}

/// Starts two workers with a prefetch of 1 on the capture queue, one after the other
/// (so worker 1 is first served), and waits until every task is settled.
async fn run_workers(
    connection: &Connection,
    names: &Names,
    crash: bool,
) -> anyhow::Result<BTreeSet<String>> {
    let settled = Arc::new(watch::Sender::new(0));
    let mut workers = Vec::new();
    for n in 1..=2 {
        let channel = connection.create_channel().await?;
        // Confirms for the notifications each worker publishes.
        enable_confirms(&channel).await?;
        channel.basic_qos(1, BasicQosOptions::default()).await?;
        let tasks = channel
            .basic_consume(
                names.captures.as_str().into(),
                format!("worker-{n}").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let worker = Worker {
            channel,
            notifications: names.notifications.clone(),
            crash_on_first: crash && n == 1,
            settled: Arc::clone(&settled),
        };
        workers.push(tokio::spawn(
            worker.run(tasks).instrument(info_span!("worker", n)),
        ));
    }
    let mut done = BTreeSet::new();
    for worker in workers {
        done.extend(worker.await??);
    }
    Ok(done)
}

struct Worker {
    channel: Channel,
    notifications: String,
    crash_on_first: bool,
    /// How many of the checkout's tasks are settled (acked or dead-lettered).
    settled: Arc<watch::Sender<usize>>,
}

impl Worker {
    // ANCHOR: worker
    /// Takes capture tasks one at a time (prefetch 1): acks what it did, rejects
    /// what it can never do (to the dead-letter exchange), and stops when every
    /// task is settled.
    async fn run(self, mut tasks: Consumer) -> anyhow::Result<Vec<String>> {
        let mut all_settled = self.settled.subscribe();
        let mut done = Vec::new();
        loop {
            let task = tokio::select! {
                task = tasks.next() => task.context("consumer cancelled")??,
                _ = all_settled.wait_for(|n| *n == PAYMENTS.len()) => break,
            };
            let payment = String::from_utf8_lossy(&task.data).into_owned();
            if self.crash_on_first {
                warn!("took {payment} and crashed before acking it");
                self.channel.close(200, "worker crashed".into()).await?;
                break;
            }
            if payment == "pay_unknown" {
                warn!("{payment} can never be captured: rejected, not requeued");
                task.reject(BasicRejectOptions { requeue: false }).await?;
                self.settled.send_modify(|n| *n += 1);
                continue;
            }
            tokio::time::sleep(Duration::from_millis(50)).await; // the capture
            let notice = format!("captured {payment}");
            publish_until_confirmed(
                &self.channel,
                &self.notifications,
                "",
                notice.as_bytes(),
                persistent(),
            )
            .await?;
            task.ack(BasicAckOptions::default()).await?;
            self.settled.send_modify(|n| *n += 1);
            info!(redelivered = task.redelivered, "captured {payment}, acked");
            done.push(payment);
        }
        Ok(done)
    }
    // ANCHOR_END: worker
}

async fn count(channel: &Channel, queue: &str) -> anyhow::Result<u32> {
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    Ok(channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await?
        .message_count())
}

/// The checkout asks the stock service, over queues, and gives up on a slow answer.
async fn stock_check(connection: &Connection, queue: &str) -> anyhow::Result<()> {
    let server_channel = connection.create_channel().await?;
    declare_request_queue(&server_channel, queue).await?;
    // The sencha lookup is slow: it answers only once the checkout has given up.
    let gave_up = Arc::new(Notify::new());
    let (server_queue, lookup_done) = (queue.to_owned(), Arc::clone(&gave_up));
    let server = tokio::spawn(
        async move {
            serve(&server_channel, &server_queue, |sku| {
                let lookup_done = Arc::clone(&lookup_done);
                async move {
                    if sku == b"sencha" {
                        lookup_done.notified().await;
                    }
                    format!("{} in stock: 12", String::from_utf8_lossy(&sku))
                        .into_bytes()
                }
            })
            .await
        }
        .instrument(info_span!("stock-service")),
    );
    let client = RpcClient::new(connection).await?;
    async {
        let reply = client.call(queue, b"mug", STEP).await?;
        info!("stock check mug -> {}", String::from_utf8_lossy(&reply));
        match client.call(queue, b"sencha", Duration::from_millis(100)).await {
            Err(RpcError::Timeout(wait)) => warn!(
                "stock check sencha: no reply within {wait:?}; the page shows stock as unknown"
            ),
            other => bail!("expected a timeout, got {other:?}"),
        }
        gave_up.notify_one();
        wait_until("the late sencha reply", || client.late_replies() == 1).await?;
        info!(
            "the late sencha reply arrived and was discarded: no caller was waiting for it"
        );
        anyhow::Ok(())
    }
    .instrument(info_span!("checkout"))
    .await?;
    server.abort();
    Ok(())
}

/// Waits until `condition` holds, looking every 10 ms; an error after [`STEP`].
async fn wait_until(
    what: &str,
    mut condition: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + STEP;
    while !condition() {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}
