//! A running server for the channel tests, reached either over loopback TCP or over
//! an in-memory pipe, and a real WebSocket client (tokio-tungstenite) to talk to it.
//!
//! The in-memory pipe (`tokio::io::duplex`) has a buffer of a size the test chooses,
//! so "the client stopped reading and the server's writes now block" happens after a
//! known number of bytes instead of after whatever the kernel's socket buffers hold;
//! and it keeps paused tokio time honest, since no real I/O is in flight while the
//! clock jumps.

#![allow(dead_code)]

use std::time::Duration;

use axum::serve::Listener;
use futures::{SinkExt, StreamExt};
use realtime::{AppState, Channel, ChannelConfig, Hub, HubConfig, Push, Shop, app};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

/// Accepts the server ends of in-memory pipes that `Server::connect` creates.
struct MemoryListener(mpsc::UnboundedReceiver<DuplexStream>);

impl Listener for MemoryListener {
    type Io = DuplexStream;
    type Addr = &'static str;

    async fn accept(&mut self) -> (DuplexStream, &'static str) {
        match self.0.recv().await {
            Some(io) => (io, "memory"),
            // No more clients will come: park the accept loop for good.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<&'static str> {
        Ok("memory")
    }
}

enum Transport {
    Tcp(std::net::SocketAddr),
    /// The sender of pipes, and the size of each pipe's buffer in each direction.
    Memory(mpsc::UnboundedSender<DuplexStream>, usize),
}

pub struct Server {
    pub hub: Hub,
    /// The server's channel, for what it counted.
    pub channel: Channel,
    transport: Transport,
}

/// A test config: no pings unless the test asks for them.
pub fn quiet() -> ChannelConfig {
    ChannelConfig {
        ping_interval: Duration::from_secs(3600),
        idle_timeout: Duration::from_secs(7200),
        send_timeout: Duration::from_secs(3600),
        close_timeout: Duration::from_secs(3600),
        max_message_size: 4096,
        read_buffer_size: 4096,
    }
}

fn state(hub: HubConfig, config: ChannelConfig) -> (Hub, AppState) {
    let hub = Hub::new(hub);
    let shop = Shop::new(hub.clone(), Duration::from_millis(10));
    (hub.clone(), AppState::new(hub, shop, config))
}

impl Server {
    pub async fn tcp(hub: HubConfig, config: ChannelConfig) -> Server {
        let (hub, state) = state(hub, config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let channel = state.channel.clone();
        tokio::spawn(async move { axum::serve(listener, app(state)).await });
        Server { hub, channel, transport: Transport::Tcp(addr) }
    }

    pub fn memory(hub: HubConfig, config: ChannelConfig, pipe: usize) -> Server {
        let (hub, state) = state(hub, config);
        let (tx, rx) = mpsc::unbounded_channel();
        let channel = state.channel.clone();
        tokio::spawn(axum::serve(MemoryListener(rx), app(state)).into_future());
        Server { hub, channel, transport: Transport::Memory(tx, pipe) }
    }

    /// Opens a WebSocket to `/ws` (with `?after=` when given) and waits until the
    /// hub counts it, so a test's next publish reaches it.
    pub async fn connect(&self, after: Option<u64>) -> Client {
        let before = self.hub.subscribers();
        let path = match after {
            Some(seq) => format!("/ws?after={seq}"),
            None => "/ws".to_owned(),
        };
        let client = match &self.transport {
            Transport::Tcp(addr) => {
                let io = TcpStream::connect(addr).await.unwrap();
                Client::Tcp(handshake(io, &format!("ws://{addr}{path}")).await)
            }
            Transport::Memory(tx, size) => {
                let (client, server) = tokio::io::duplex(*size);
                tx.send(server).unwrap();
                Client::Memory(
                    handshake(client, &format!("ws://shop.test{path}")).await,
                )
            }
        };
        self.hub.wait_for_subscribers(before + 1).await;
        client
    }
}

async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    url: &str,
) -> WebSocketStream<S> {
    let (ws, response) = tokio_tungstenite::client_async(url, io).await.unwrap();
    assert_eq!(response.status(), 101);
    ws
}

/// What a test reads from the channel, with pings and pongs already answered and
/// skipped.
#[derive(Debug, PartialEq)]
pub enum Seen {
    Push(Push),
    Closed(Option<(u16, String)>),
}

pub enum Client {
    Tcp(WebSocketStream<TcpStream>),
    Memory(WebSocketStream<DuplexStream>),
}

impl Client {
    /// The next data or close message. Pings are counted in `pings` and skipped.
    pub async fn next_counting(&mut self, pings: &mut usize) -> Seen {
        loop {
            let message = match self {
                Client::Tcp(ws) => ws.next().await,
                Client::Memory(ws) => ws.next().await,
            };
            match message {
                Some(Ok(Message::Text(text))) => {
                    return Seen::Push(serde_json::from_str(&text).unwrap());
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => *pings += 1,
                Some(Ok(Message::Close(frame))) => {
                    return Seen::Closed(frame.map(
                        |CloseFrame { code, reason }| {
                            (u16::from(code), reason.to_string())
                        },
                    ));
                }
                Some(Ok(other)) => panic!("unexpected message {other:?}"),
                // The server dropped the connection without a close frame.
                Some(Err(_)) | None => return Seen::Closed(None),
            }
        }
    }

    pub async fn next(&mut self) -> Seen {
        self.next_counting(&mut 0).await
    }

    /// The next message, which must be an event: returns its sequence number.
    pub async fn next_seq(&mut self) -> u64 {
        match self.next().await {
            Seen::Push(Push::Event(event)) => event.seq,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    pub async fn send(&mut self, message: Message) {
        match self {
            Client::Tcp(ws) => ws.send(message).await.unwrap(),
            Client::Memory(ws) => ws.send(message).await.unwrap(),
        }
    }

    /// Closes with 1000 and reads until the server's answer: panics if the server
    /// drops the connection instead of answering the close.
    pub async fn close_normally(&mut self) {
        let frame = CloseFrame {
            code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
            reason: "bye".into(),
        };
        self.send(Message::Close(Some(frame))).await;
        loop {
            let message = match self {
                Client::Tcp(ws) => ws.next().await,
                Client::Memory(ws) => ws.next().await,
            };
            match message {
                // The answer to our close: the handshake is complete.
                Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => continue,
                other => panic!("the server did not answer the close: {other:?}"),
            }
        }
    }

    /// The pipe under the WebSocket, to read what arrived without answering it.
    pub fn raw_memory(&mut self) -> &mut DuplexStream {
        match self {
            Client::Memory(ws) => ws.get_mut(),
            Client::Tcp(_) => panic!("not an in-memory client"),
        }
    }

    /// The TCP stream under the WebSocket, to write bytes no well-behaved client
    /// would.
    pub fn raw_tcp(&mut self) -> &mut TcpStream {
        match self {
            Client::Tcp(ws) => ws.get_mut(),
            Client::Memory(_) => panic!("not a TCP client"),
        }
    }
}

/// Bounds every wait in a test: a hang becomes a failure that names what it waited
/// for.
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(20), future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}
