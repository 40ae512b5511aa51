//! Request-reply over queues: the caller names a reply queue and tags each request with a
//! correlation id; the server answers to that queue with the same id.
//!
//! Both are standard AMQP message properties (`reply_to`, `correlation_id`), so a server or a caller
//! written with any AMQP client can take part.
//!
//! A reply can arrive after its caller stopped waiting (the server was slow). It then matches no
//! pending call and is dropped, counted, and never delivered to the wrong caller. The request
//! itself carries an `expiration` equal to the caller's timeout: RabbitMQ does not deliver a
//! message whose time to live has run out, so a request still queued when its caller gives up is
//! dropped instead of processed. That holds only while the request is in the queue: the server
//! takes one request at a time (a prefetch of 1), so the others wait in the queue, where they
//! can expire, and not in the server's own buffer, where they cannot. One already taken by the
//! server is answered, and that answer is the late reply.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::warn;
use uuid::Uuid;

/// Why a call returned without a reply.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The request could not be published (its channel or connection failed), so
    /// no reply is awaited for it.
    #[error("amqp: {0}")]
    Amqp(#[from] lapin::Error),
    /// No reply within the wait (held here). A request still queued expires; one
    /// a server already took is answered, and that late reply is discarded.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The task that routes replies to callers has stopped (its channel closed).
    #[error("the reply queue's consumer stopped; no reply can arrive")]
    RepliesStopped,
}

/// Declares the queue a server takes requests from: durable, so that it is neither
/// a transient non-exclusive queue (deprecated in RabbitMQ 4.0, refused by later
/// releases) nor lost when the broker restarts. Callers and servers may both
/// declare it; the declarations must agree.
pub async fn declare_request_queue(
    channel: &Channel,
    queue: &str,
) -> lapin::Result<()> {
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    channel.queue_declare(queue.into(), durable, FieldTable::default()).await?;
    Ok(())
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>>;

/// The calling side: one exclusive reply queue, shared by all calls made through this client.
pub struct RpcClient {
    channel: Channel,
    reply_queue: String,
    pending: Pending,
    late_replies: Arc<AtomicU64>,
    replies: JoinHandle<()>,
}

impl RpcClient {
    /// Declares a private, server-named reply queue and starts routing replies to their callers.
    pub async fn new(connection: &Connection) -> lapin::Result<Self> {
        let channel = connection.create_channel().await?;
        let private = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        let queue =
            channel.queue_declare("".into(), private, FieldTable::default()).await?;
        let reply_queue = queue.name().to_string();
        let no_ack = BasicConsumeOptions { no_ack: true, ..Default::default() };
        let mut consumer = channel
            .basic_consume(
                reply_queue.as_str().into(),
                "rpc-replies".into(),
                no_ack,
                FieldTable::default(),
            )
            .await?;
        let (pending, late_replies): (Pending, _) =
            (Arc::default(), Arc::new(AtomicU64::new(0)));
        let (routes, late) = (Arc::clone(&pending), Arc::clone(&late_replies));
        // ANCHOR: route_replies
        let replies = tokio::spawn(async move {
            while let Some(reply) = consumer.next().await {
                let reply = match reply {
                    Ok(reply) => reply,
                    Err(e) => {
                        warn!("the reply queue's consumer failed: {e}");
                        break;
                    }
                };
                let Some(id) = reply.properties.correlation_id().as_ref() else {
                    warn!("a reply without a correlation id: discarded");
                    continue;
                };
                let id = id.to_string();
                let waiting =
                    routes.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                // The caller may give up between our lookup and this send.
                let undelivered = match waiting {
                    Some(caller) => caller.send(reply.data).is_err(),
                    None => true,
                };
                if undelivered {
                    warn!(
                        correlation_id = %id,
                        "a reply came after its caller gave up: discarded"
                    );
                    late.fetch_add(1, Ordering::Release);
                }
            }
        });
        // ANCHOR_END: route_replies
        Ok(RpcClient { channel, reply_queue, pending, late_replies, replies })
    }

    // ANCHOR: call
    /// Sends `request` to `queue` and waits at most `wait` for the reply.
    pub async fn call(
        &self,
        queue: &str,
        request: &[u8],
        wait: Duration,
    ) -> Result<Vec<u8>, RpcError> {
        let id = Uuid::new_v4().to_string();
        let (reply_tx, reply_rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), reply_tx);
        let properties = BasicProperties::default()
            .with_reply_to(self.reply_queue.as_str().into())
            .with_correlation_id(id.as_str().into())
            .with_expiration(wait.as_millis().to_string().as_str().into());
        let answer = async {
            self.channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    request,
                    properties,
                )
                .await?;
            match tokio::time::timeout(wait, reply_rx).await {
                Ok(Ok(reply)) => Ok(reply),
                Ok(Err(_)) => Err(RpcError::RepliesStopped),
                Err(_) => Err(RpcError::Timeout(wait)),
            }
        };
        let answer = answer.await;
        if answer.is_err() {
            // Forget the call: a reply that comes later finds no one: discarded.
            self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        }
        answer
    }
    // ANCHOR_END: call

    /// Replies that arrived after their caller had given up.
    pub fn late_replies(&self) -> u64 {
        self.late_replies.load(Ordering::Acquire)
    }
}

impl Drop for RpcClient {
    fn drop(&mut self) {
        self.replies.abort();
    }
}

/// The serving side: answers each request on `queue` with `handler`'s reply, sent
/// to the request's `reply_to` with its `correlation_id`, then acknowledges the
/// request. One request at a time (a prefetch of 1): the rest wait in the queue,
/// where a request whose caller gave up expires unprocessed. Runs until the channel
/// closes.
pub async fn serve<F, Fut>(
    channel: &Channel,
    queue: &str,
    mut handler: F,
) -> lapin::Result<()>
where
    F: FnMut(Vec<u8>) -> Fut,
    Fut: Future<Output = Vec<u8>>,
{
    declare_request_queue(channel, queue).await?;
    channel.basic_qos(1, BasicQosOptions::default()).await?;
    let mut requests = channel
        .basic_consume(
            queue.into(),
            "rpc-server".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    while let Some(request) = requests.next().await {
        let request = request?;
        let (reply_to, id) = (
            request.properties.reply_to().clone(),
            request.properties.correlation_id().clone(),
        );
        let reply = handler(request.data.clone()).await;
        let (Some(reply_to), Some(id)) = (reply_to, id) else {
            warn!("a request without reply_to or correlation_id: nobody to answer");
            request.ack(BasicAckOptions::default()).await?;
            continue;
        };
        let properties = BasicProperties::default().with_correlation_id(id);
        channel
            .basic_publish(
                "".into(),
                reply_to,
                BasicPublishOptions::default(),
                &reply,
                properties,
            )
            .await?;
        request.ack(BasicAckOptions::default()).await?;
    }
    Ok(())
}
