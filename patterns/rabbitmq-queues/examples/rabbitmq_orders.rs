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
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicQosOptions,
    BasicRejectOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ExchangeKind};
use rabbitmq_queues::publish::persistent;
use rabbitmq_queues::reconnect::{connect_recovering, publish_until_confirmed};
use rabbitmq_queues::rpc::{RpcClient, RpcError, serve};
use rabbitmq_queues::topology;
use tokio::time::timeout;
use tracing::{Instrument, info, info_span, warn};

const STEP: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    infra::example::init_logging();
    let flags =
        infra::example::Flags::parse(&["--crash-before-ack", "--drop-connection"])
            .map_err(anyhow::Error::msg)?;
    let uri = infra::amqp_addr();
    let Ok(Ok((connection, channel))) =
        timeout(Duration::from_secs(5), connect_recovering(&uri)).await
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

    // The checkout publishes capture tasks, each confirmed by the broker.
    let payments =
        ["pay_1001", "pay_1002", "pay_unknown", "pay_1003", "pay_1004", "pay_1005"];
    let checkout = info_span!("checkout");
    for (i, payment) in payments.iter().enumerate() {
        if i == 3 && flags.has("--drop-connection") {
            checkout.in_scope(|| warn!("the broker drops every connection now"));
            rabbitmq_queues::admin::close_all_connections(
                "example: the broker drops every connection",
            )
            .map_err(anyhow::Error::msg)?;
        }
        let attempts = publish_until_confirmed(
            &channel,
            "",
            &names.captures,
            payment.as_bytes(),
            persistent(),
        )
        .await?;
        checkout.in_scope(|| {
            info!(attempts, "capture {payment} published and confirmed")
        });
    }

    // Two workers with a prefetch of 1 share the queue.
    let crash = flags.has("--crash-before-ack");
    let mut workers = Vec::new();
    for n in 1..=2 {
        let ch = connection.create_channel().await?;
        let (captures, notifications) =
            (names.captures.clone(), names.notifications.clone());
        let span = info_span!("worker", n);
        workers.push(tokio::spawn(
            worker(ch, captures, notifications, crash && n == 1).instrument(span),
        ));
    }
    let mut done = BTreeSet::new();
    for worker in workers {
        done.extend(worker.await??);
    }
    let dead = timeout(STEP, async {
        loop {
            if let Some(m) = channel
                .basic_get(
                    names.dead.as_str().into(),
                    BasicGetOptions { no_ack: true },
                )
                .await?
            {
                return anyhow::Ok(m);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .context("the rejected capture never reached the dead-letter queue")??;
    info!(
        "dead-letter queue holds {:?}: inspect, fix, replay",
        String::from_utf8_lossy(&dead.delivery.data)
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
    for queue in [&names.captures, &names.dead, &names.email, &names.sms] {
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

// ANCHOR: worker
/// Takes capture tasks one at a time (prefetch 1): acks what it did, rejects what it never can do
/// (to the dead-letter exchange), and stops when the queue stays empty.
async fn worker(
    channel: Channel,
    queue: String,
    notifications: String,
    crash_on_first: bool,
) -> anyhow::Result<Vec<String>> {
    channel.basic_qos(1, BasicQosOptions::default()).await?;
    let mut tasks = channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut done = Vec::new();
    while let Ok(Some(task)) =
        timeout(Duration::from_millis(500), tasks.next()).await
    {
        let task = task?;
        let payment = String::from_utf8_lossy(&task.data).into_owned();
        if crash_on_first {
            warn!(
                "took {payment} and crashed before acking: the broker will redeliver it"
            );
            channel.close(200, "worker crashed".into()).await?;
            return Ok(done);
        }
        if payment == "pay_unknown" {
            warn!(
                "{payment} can never be captured: rejected without requeue (dead-lettered)"
            );
            task.reject(BasicRejectOptions { requeue: false }).await?;
            continue;
        }
        tokio::time::sleep(Duration::from_millis(50)).await; // the capture itself
        publish_until_confirmed(
            &channel,
            &notifications,
            "",
            format!("captured {payment}").as_bytes(),
            persistent(),
        )
        .await?;
        task.ack(BasicAckOptions::default()).await?;
        info!(redelivered = task.redelivered, "captured {payment}, acked");
        done.push(payment);
    }
    Ok(done)
}
// ANCHOR_END: worker

async fn count(channel: &Channel, queue: &str) -> anyhow::Result<u32> {
    Ok(channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?
        .message_count())
}

/// The checkout asks the stock service, over queues, and gives up on a slow answer.
async fn stock_check(connection: &Connection, queue: &str) -> anyhow::Result<()> {
    let server_channel = connection.create_channel().await?;
    server_channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let server_queue = queue.to_owned();
    let server = tokio::spawn(
        async move {
            serve(&server_channel, &server_queue, |sku| async move {
                if sku == b"sencha" {
                    tokio::time::sleep(Duration::from_millis(400)).await; // a slow lookup
                }
                format!("{} in stock: 12", String::from_utf8_lossy(&sku))
                    .into_bytes()
            })
            .await
        }
        .instrument(info_span!("stock-service")),
    );
    let client = RpcClient::new(connection).await?;
    let span = info_span!("checkout");
    let reply = client.call(queue, b"mug", STEP).await?;
    span.in_scope(|| {
        info!("stock check mug -> {}", String::from_utf8_lossy(&reply))
    });
    match client.call(queue, b"sencha", Duration::from_millis(100)).await {
        Err(RpcError::Timeout(wait)) => span.in_scope(|| warn!("stock check sencha: no reply within {wait:?}; the page shows stock as unknown")),
        other => bail!("expected a timeout, got {other:?}"),
    }
    timeout(STEP, async {
        while client.late_replies() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .context("the slow reply never came")?;
    span.in_scope(|| info!("the late sencha reply arrived and was discarded: no caller was waiting for it"));
    server.abort();
    Ok(())
}
