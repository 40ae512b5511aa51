//! Queues and exchanges, declared by the code that uses them (declarations are idempotent).

use lapin::options::{
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

// ANCHOR: work_queue
/// A durable queue (it survives a broker restart, as do the persistent messages in
/// it) whose rejected and expired messages go to `dead_letter_exchange`.
pub async fn work_queue(
    channel: &Channel,
    name: &str,
    dead_letter_exchange: &str,
) -> lapin::Result<()> {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(dead_letter_exchange.into()),
    );
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions { durable: true, ..Default::default() },
            arguments,
        )
        .await?;
    Ok(())
}
// ANCHOR_END: work_queue

/// A fanout exchange and a durable queue bound to it, where dead letters are kept for inspection.
pub async fn dead_letters(
    channel: &Channel,
    exchange: &str,
    queue: &str,
) -> lapin::Result<()> {
    exchange_with_queues(channel, exchange, ExchangeKind::Fanout, &[(queue, "")])
        .await
}

// ANCHOR: exchange_with_queues
/// An exchange of `kind`, with each `(queue, binding key)` declared durable and
/// bound to it. A fanout exchange ignores binding keys; a topic exchange matches
/// them against routing keys, where `*` stands for one word and `#` for zero or
/// more.
pub async fn exchange_with_queues(
    channel: &Channel,
    exchange: &str,
    kind: ExchangeKind,
    queues: &[(&str, &str)],
) -> lapin::Result<()> {
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    channel
        .exchange_declare(exchange.into(), kind, durable, FieldTable::default())
        .await?;
    for (queue, binding) in queues {
        channel
            .queue_declare(
                (*queue).into(),
                QueueDeclareOptions { durable: true, ..Default::default() },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                (*queue).into(),
                exchange.into(),
                (*binding).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}
// ANCHOR_END: exchange_with_queues
