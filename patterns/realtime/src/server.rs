//! The WebSocket endpoint and the page, served by one axum router.
//!
//! `GET /` is the page, `GET /ws?after=N` the channel, `POST /orders` places an
//! order (which the [`Shop`] then moves through its statuses). The channel alone is
//! [`Channel::routes`], for any hub: the capstone's notifications service serves it
//! over the shop's own order ids and statuses. Each WebSocket
//! connection is one task that reads its hub [`Subscription`] and the socket in one
//! `select!` loop: it pushes events, sends a ping every `ping_interval`, and ends
//! the connection with a close frame that says why.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{
    CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade,
};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::SinkExt as _;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior, interval_at, timeout};
use tokio_tungstenite::tungstenite;
use tracing::{Instrument, info, info_span, warn};

use crate::hub::{Event, Hub, Next, OrderId, Snapshot, Start, Status, Subscription};
use crate::shop::Shop;

/// The page, plain HTML and JavaScript compiled into the binary: no front-end build.
const PAGE: &str = include_str!("page.html");

/// The page, with its "Place an order" button when `placing`: the chapter's server
/// takes orders itself, while a page that only watches (the capstone's, whose
/// checkouts come through the gateway with a token) has no button to press.
pub fn page(placing: bool) -> String {
    let button = match placing {
        true => r#"<button id="place">Place an order</button>"#,
        false => "",
    };
    PAGE.replace("<!-- place -->", button)
}

// ANCHOR: close_codes
/// Close codes this server sends. RFC 6455 registers 1000-1015; 4000-4999 are for
/// applications, and the heartbeat uses one because no registered code means "timed
/// out".
pub mod close {
    /// The endpoint is going away (here: the hub shut down).
    pub const GOING_AWAY: u16 = 1001;
    /// A frame broke the protocol (for example an unmasked frame from a client).
    pub const PROTOCOL: u16 = 1002;
    /// The client sent a data message, and this channel accepts none.
    pub const UNSUPPORTED: u16 = 1003;
    /// A text message that is not UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// A message or frame over `max_message_size`.
    pub const TOO_BIG: u16 = 1009;
    /// The client fell too far behind: come back later with `after=`.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// Nothing heard from the client, not even a pong, for `idle_timeout`.
    pub const HEARTBEAT_TIMEOUT: u16 = 4000;
    /// Never sent in a frame (RFC 6455 reserves it for that): what
    /// [`Channel::closes`](super::Channel::closes) counts a client under that
    /// closed with a frame carrying no code.
    pub const NO_STATUS: u16 = 1005;
    /// Never sent in a frame either: what
    /// [`Channel::closes`](super::Channel::closes) counts a client under that left
    /// with no close frame at all, or stalled.
    pub const ABNORMAL: u16 = 1006;
}
// ANCHOR_END: close_codes

/// How a connection behaves. The defaults suit a browser on a real network.
#[derive(Clone, Copy, Debug)]
pub struct ChannelConfig {
    /// How often the server pings a client.
    pub ping_interval: Duration,
    /// A client not heard from (no pong, no frame at all) for this long is dead.
    pub idle_timeout: Duration,
    /// The longest one send may take before the connection counts as stalled and is
    /// dropped.
    pub send_timeout: Duration,
    /// How long the server tries to say goodbye: to write its close frame, then
    /// to hear the client's. Short, because a connection being closed for being
    /// slow is the one least likely to take the frame.
    pub close_timeout: Duration,
    /// The largest message (and frame) a client may send.
    pub max_message_size: usize,
    /// How much the codec reads at a time. It zeroes that much before every
    /// read (tungstenite 0.29), and a connection reads after each push, so a
    /// channel whose clients only answer pings keeps this small; a larger frame
    /// still fits, as the codec makes room for a frame once its header is read.
    pub read_buffer_size: usize,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        ChannelConfig {
            ping_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(2),
            max_message_size: 4096,
            read_buffer_size: 4096,
        }
    }
}

/// What the server sends, as JSON text messages tagged by `type`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Push<K = OrderId, S = Status> {
    /// First message to a new client: the state now.
    Snapshot(Snapshot<K, S>),
    /// First message to a client whose resume point is no longer in the history.
    Resync(Snapshot<K, S>),
    /// One status change.
    Event(Event<K, S>),
}

/// Which side decided that a connection ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Closer {
    /// This server: a slow, silent or misbehaving client, or the server stopping.
    Server,
    /// The client: it closed, or it left without a word.
    Client,
}

impl Closer {
    /// `server` or `client`, for a metric's label.
    pub fn as_str(self) -> &'static str {
        match self {
            Closer::Server => "server",
            Closer::Client => "client",
        }
    }
}

/// The WebSocket channel over one hub: what `GET /ws` serves, and what it has done.
pub struct Channel<K = OrderId, S = Status> {
    hub: Hub<K, S>,
    config: ChannelConfig,
    next_client: Arc<AtomicU64>,
    closes: Arc<Mutex<BTreeMap<(Closer, u16), u64>>>,
    /// Connections being served now. axum serves each upgraded connection in a task
    /// of its own, which a server's graceful stop does not wait for.
    live: Arc<watch::Sender<usize>>,
}

// Written out: a derive would ask `K` and `S` to be `Clone`.
impl<K, S> Clone for Channel<K, S> {
    fn clone(&self) -> Self {
        Channel {
            hub: self.hub.clone(),
            config: self.config,
            next_client: Arc::clone(&self.next_client),
            closes: Arc::clone(&self.closes),
            live: Arc::clone(&self.live),
        }
    }
}

impl<K, S> Channel<K, S>
where
    K: Ord + Clone + Serialize + Send + Sync + 'static,
    S: Clone + Serialize + Send + Sync + 'static,
{
    /// A channel pushing `hub`'s events, every connection under `config`.
    /// Connection ids, used in logs, start at 1.
    pub fn new(hub: Hub<K, S>, config: ChannelConfig) -> Self {
        let next_client = Arc::new(AtomicU64::new(1));
        let live = Arc::new(watch::Sender::new(0));
        Channel { hub, config, next_client, closes: Arc::default(), live }
    }

    /// The hub the connections subscribe to.
    pub fn hub(&self) -> &Hub<K, S> {
        &self.hub
    }

    /// How many connections ended, by who ended them and with which code: the code
    /// this server sent ([`close`]), or the client's ([`close::NO_STATUS`] for a
    /// close frame without one, [`close::ABNORMAL`] for a client that left with no
    /// close frame). What an operator graphs next to the connected count.
    pub fn closes(&self) -> BTreeMap<(Closer, u16), u64> {
        self.closes.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Waits, up to `within`, until no connection is being served; `false` if some
    /// still are. A server that stops calls [`Hub::close`] first (each connection
    /// then says goodbye with [`close::GOING_AWAY`]), and this after its HTTP server
    /// has stopped, so that the goodbyes are sent before the process exits.
    pub async fn drained(&self, within: Duration) -> bool {
        let mut live = self.live.subscribe();
        timeout(within, live.wait_for(|n| *n == 0))
            .await
            .is_ok_and(|seen| seen.is_ok())
    }

    /// `GET /ws?after=N`, the channel.
    pub fn routes(self) -> Router {
        Router::new().route("/ws", get(channel::<K, S>)).with_state(self)
    }

    fn closed(&self, by: (Closer, u16)) {
        let mut closes =
            self.closes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *closes.entry(by).or_default() += 1;
    }
}

/// What the chapter's server shares: its channel and the shop that feeds it.
#[derive(Clone)]
pub struct AppState {
    /// The channel every browser connects to.
    pub channel: Channel,
    /// Where `POST /orders` places orders; their events reach the hub.
    pub shop: Shop,
}

impl AppState {
    /// The state for [`app`].
    pub fn new(hub: Hub, shop: Shop, config: ChannelConfig) -> AppState {
        AppState { channel: Channel::new(hub, config), shop }
    }
}

/// The router: the page, the channel and the order form's endpoint.
pub fn app(state: AppState) -> Router {
    let page = page(true);
    Router::new()
        .route("/", get(move || async move { Html(page) }))
        .route("/orders", post(place_order))
        .with_state(state.shop)
        .merge(state.channel.routes())
}

#[derive(Deserialize)]
struct Resume {
    /// The last sequence number the client saw. Browsers cannot set headers on a
    /// WebSocket request, so it travels in the query string.
    after: Option<u64>,
}

#[derive(Serialize)]
struct Placed {
    order: u64,
}

async fn place_order(State(shop): State<Shop>) -> impl IntoResponse {
    let order = shop.place_order();
    (StatusCode::CREATED, Json(Placed { order }))
}

// ANCHOR: channel
async fn channel<K, S>(
    upgrade: WebSocketUpgrade,
    Query(resume): Query<Resume>,
    State(state): State<Channel<K, S>>,
) -> Response
where
    K: Ord + Clone + Serialize + Send + Sync + 'static,
    S: Clone + Serialize + Send + Sync + 'static,
{
    let client = state.next_client.fetch_add(1, Ordering::Relaxed);
    // Counted before the upgrade, which axum completes in a task of its own: a
    // server that stops in between waits for this connection too. The count goes
    // when the connection ends, or with the callback if the upgrade fails.
    let served = Served::count(&state.live);
    let span = info_span!("ws", client);
    // Limits are enforced by the WebSocket codec while it reads, before a byte of an
    // oversized message is buffered past them.
    upgrade
        .max_message_size(state.config.max_message_size)
        .max_frame_size(state.config.max_message_size)
        .read_buffer_size(state.config.read_buffer_size)
        .on_upgrade(move |socket| {
            let (start, sub) = state.hub.subscribe(resume.after);
            async move {
                let end = connection(socket, start, sub, state.config).await;
                state.closed(end);
                drop(served);
            }
            .instrument(span)
        })
}
// ANCHOR_END: channel

/// One connection being served, counted in [`Channel::drained`]'s number while it lives.
struct Served(Arc<watch::Sender<usize>>);

impl Served {
    fn count(live: &Arc<watch::Sender<usize>>) -> Served {
        live.send_modify(|n| *n += 1);
        Served(Arc::clone(live))
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// Why a connection ends.
enum End {
    /// Send this close frame, then stop.
    Close(u16, String),
    /// The client closed with this code: send the codec's answer, then stop.
    ClosedByClient(u16),
    /// The peer is gone or stalled; there is no one to tell.
    Gone(String),
}

// ANCHOR: connection
/// Serves one client until the connection ends; returns who ended it and the
/// code it ended with.
async fn connection<K, S>(
    mut socket: WebSocket,
    start: Start<K, S>,
    mut sub: Subscription<K, S>,
    config: ChannelConfig,
) -> (Closer, u16)
where
    K: Ord + Clone + Serialize,
    S: Clone + Serialize,
{
    let first = match start {
        Start::Snapshot(s) => {
            info!("connected: snapshot at seq {}", s.seq);
            Some(Push::Snapshot(s))
        }
        Start::Resync(s) => {
            info!("connected: history too short, resync at seq {}", s.seq);
            Some(Push::Resync(s))
        }
        Start::Resume => {
            info!("connected: resuming after seq {}", sub.last_seq());
            None
        }
    };
    let mut end = match first {
        Some(push) => send(&mut socket, &push, &config).await.err(),
        None => None,
    };
    let mut heartbeat =
        interval_at(Instant::now() + config.ping_interval, config.ping_interval);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    while end.is_none() {
        // Every branch's future is cancel-safe; sends happen in the arms, not in the
        // race.
        tokio::select! {
            next = sub.next() => end = match next {
                // The hub may cut this client off while the send waits for it
                // to read: then the send is abandoned at once.
                Next::Event(e) => {
                    let push = Push::Event(e);
                    tokio::select! {
                        sent = send(&mut socket, &push, &config) => sent.err(),
                        () = sub.cut_off() => Some(too_slow(&sub)),
                    }
                }
                Next::Lagged => Some(too_slow(&sub)),
                Next::Closed => {
                    Some(End::Close(close::GOING_AWAY, "shutting down".into()))
                }
            },
            incoming = socket.recv() => {
                last_heard = Instant::now();
                end = received(incoming);
            }
            _ = heartbeat.tick() => {
                end = if last_heard.elapsed() >= config.idle_timeout {
                    Some(End::Close(close::HEARTBEAT_TIMEOUT, format!(
                        "no pong for {}s", config.idle_timeout.as_secs()
                    )))
                } else {
                    let ping = Message::Ping(Default::default());
                    send_message(&mut socket, ping, config.send_timeout).await.err()
                };
            }
        }
    }
    // Detach from the hub first: a closing connection holds no buffer while it says
    // goodbye.
    drop(sub);
    finish(socket, end, &config).await
}
// ANCHOR_END: connection

/// The close for a client the hub cut off. The resume point is the last event
/// handed to the socket: if that event's send was abandoned half-way, its bytes
/// still sit ahead of the close frame in the same stream, so a client that
/// reads this reason has read that event too.
fn too_slow<K: Ord + Clone, S: Clone>(sub: &Subscription<K, S>) -> End {
    let reason = format!("too slow: reconnect with after={}", sub.last_seq());
    End::Close(close::TRY_AGAIN_LATER, reason)
}

// ANCHOR: received
/// What a frame from the client means for the connection: `None` to carry on.
fn received(incoming: Option<Result<Message, axum::Error>>) -> Option<End> {
    let error = match incoming {
        // Pongs (and pings, which the codec answers itself) only prove the client is
        // alive.
        Some(Ok(Message::Pong(_) | Message::Ping(_))) => return None,
        Some(Ok(Message::Text(_) | Message::Binary(_))) => {
            return Some(End::Close(
                close::UNSUPPORTED,
                "this channel only pushes: send no messages".into(),
            ));
        }
        // The codec has queued its answer to the client's close frame; `finish`
        // sends it.
        Some(Ok(Message::Close(frame))) => {
            let code = frame.map_or(close::NO_STATUS, |f| f.code);
            return Some(End::ClosedByClient(code));
        }
        None => return Some(End::Gone("the connection ended".into())),
        Some(Err(error)) => error,
    };
    let inner = error.into_inner();
    Some(match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(e)) => {
            End::Close(close::TOO_BIG, format!("too big: {e}"))
        }
        Some(tungstenite::Error::Utf8(_)) => {
            End::Close(close::INVALID_DATA, "text message is not UTF-8".into())
        }
        // A client that vanished (a closed tab, a dropped network) without a close
        // frame.
        Some(tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        )) => End::Gone("client left without a close frame".into()),
        Some(tungstenite::Error::Protocol(e)) => {
            End::Close(close::PROTOCOL, format!("protocol error: {e}"))
        }
        _ => End::Gone(format!("connection lost: {inner}")),
    })
}
// ANCHOR_END: received

async fn send<K: Serialize, S: Serialize>(
    socket: &mut WebSocket,
    push: &Push<K, S>,
    config: &ChannelConfig,
) -> Result<(), End> {
    let text = match serde_json::to_string(push) {
        Ok(text) => text,
        Err(error) => {
            warn!(%error, "a push could not be encoded");
            return Err(End::Gone("a push could not be encoded".into()));
        }
    };
    send_message(socket, Message::Text(text.into()), config.send_timeout).await
}

/// One send, bounded by `send_timeout`: a peer that stops reading cannot hold the
/// task forever.
async fn send_message(
    socket: &mut WebSocket,
    message: Message,
    limit: Duration,
) -> Result<(), End> {
    match timeout(limit, socket.send(message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(End::Gone(format!("connection lost: {error}"))),
        Err(_) => Err(End::Gone("stalled: a send did not finish in time".into())),
    }
}

// ANCHOR: finish
/// Says goodbye as `end` says; returns who ended the connection and its code.
async fn finish(
    mut socket: WebSocket,
    end: Option<End>,
    config: &ChannelConfig,
) -> (Closer, u16) {
    match end {
        Some(End::Close(code, reason)) => {
            warn!(code, %reason, "closing");
            let frame = CloseFrame { code, reason: Utf8Bytes::from(reason) };
            let close = Message::Close(Some(frame));
            // The close frame queues behind whatever the client has not read
            // yet: a client that reads nothing never gets it, and is dropped
            // after `close_timeout` instead of `send_timeout`.
            if let Err(End::Gone(why)) =
                send_message(&mut socket, close, config.close_timeout).await
            {
                info!("disconnected without a close frame: {why}");
                return (Closer::Server, code);
            }
            // The closing handshake: wait (bounded) for the client's close frame
            // before dropping the socket. Dropping at once can make the client's
            // TCP stack discard our close frame, reason and all, as a reset
            // arrives behind it.
            let answered = timeout(config.close_timeout, async {
                while let Some(Ok(message)) = socket.recv().await {
                    if matches!(message, Message::Close(_)) {
                        return;
                    }
                }
            });
            if answered.await.is_err() {
                info!("no close frame back in time: dropped");
            }
            (Closer::Server, code)
        }
        Some(End::ClosedByClient(code)) => {
            // The codec queued its answer when it read the client's close frame;
            // closing the sink flushes it, so the client's handshake completes too
            // (a `send` of another close is refused once the peer has closed).
            let answered = timeout(config.close_timeout, socket.close()).await;
            match answered {
                Ok(Ok(())) => info!(code, "the client closed"),
                Ok(Err(error)) => {
                    info!(code, "the client closed; no answer: {error}")
                }
                Err(_) => info!(code, "the client closed; no answer in time"),
            }
            (Closer::Client, code)
        }
        Some(End::Gone(why)) => {
            info!("disconnected: {why}");
            (Closer::Client, close::ABNORMAL)
        }
        // The loop ends only with an `End`.
        None => (Closer::Client, close::ABNORMAL),
    }
}
// ANCHOR_END: finish
