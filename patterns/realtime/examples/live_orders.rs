//! The shop pushes order statuses to a browser page over a WebSocket, live.
//!
//! Run it:   `cargo run --example live_orders`                 serves the page, prints its URL,
//!                                                              and moves three orders through
//!                                                              their statuses while a watcher
//!                                                              (a WebSocket client) narrates
//!           `cargo run --example live_orders -- --serve`       then keeps serving (Ctrl-C ends)
//! Break it: `cargo run --example live_orders -- --slow-client` a client stops reading during a
//!                                                              rush of orders: it is cut off
//!                                                              with a reason, the watcher is
//!                                                              not held up, and the slow one
//!                                                              resumes without a gap
//!
//! Everything binds 127.0.0.1:0 and the example checks its own outcome.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use futures::StreamExt;
use realtime::{AppState, ChannelConfig, Hub, HubConfig, Push, Shop, app};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tracing::{info, warn};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    infra::example::init_logging();
    let flags = infra::example::Flags::parse(&["--serve", "--slow-client"])
        .map_err(anyhow::Error::msg)?;

    // 256 events of slack per client: a client that falls that far behind is cut off.
    let hub = Hub::new(HubConfig { history: 4096, buffer: 256 });
    let step =
        Duration::from_millis(if flags.has("--slow-client") { 20 } else { 300 });
    let shop = Shop::new(hub.clone(), step);
    // The slow client here reads again once the rush is over, to show the close frame
    // and its reason; a close timeout of 10 s lets the frame wait that long for it. (A
    // client that never reads again is dropped after the close timeout, frame unsent.)
    let config = ChannelConfig {
        close_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let state = AppState::new(hub.clone(), shop.clone(), config);
    // Small socket buffers in --slow-client mode, so a client that stops reading fills the
    // pipe after kilobytes rather than the megabytes a loopback socket holds by default.
    let listener = listen(flags.has("--slow-client"))?;
    let addr = listener.local_addr()?;
    let server =
        tokio::spawn(async move { axum::serve(listener, app(state)).await });
    info!("page: http://{addr}/ (open it in a browser; --serve keeps it up)");

    if flags.has("--slow-client") {
        slow_client(addr, &hub, &shop).await?;
    } else {
        three_orders(addr, &hub, &shop, flags.has("--serve")).await?;
    }

    if flags.has("--serve") {
        info!("serving http://{addr}/ until Ctrl-C");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            result = server => result??,
        }
    }
    Ok(())
}

fn listen(small_buffers: bool) -> anyhow::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    if small_buffers {
        // Accepted sockets inherit the listening socket's buffer size on Linux.
        socket.set_send_buffer_size(4096)?;
    }
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    Ok(socket.listen(1024)?)
}

async fn connect(addr: SocketAddr, after: Option<u64>) -> anyhow::Result<Socket> {
    let query = after.map(|seq| format!("?after={seq}")).unwrap_or_default();
    let (socket, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws{query}"))
            .await
            .context("connecting to the channel")?;
    Ok(socket)
}

/// The next pushed message; pings are answered by tungstenite as it reads.
async fn next(socket: &mut Socket) -> anyhow::Result<Result<Push, String>> {
    loop {
        match socket.next().await.context("the channel ended")?? {
            Message::Text(text) => return Ok(Ok(serde_json::from_str(&text)?)),
            Message::Close(Some(frame)) => {
                return Ok(Err(format!(
                    "{} {}",
                    u16::from(frame.code),
                    frame.reason
                )));
            }
            Message::Close(None) => {
                return Ok(Err("closed without a reason".into()));
            }
            _ => {}
        }
    }
}

/// The happy path: a watcher connects, three orders go from placed to delivered, and the
/// watcher sees each change as it happens.
async fn three_orders(
    addr: SocketAddr,
    hub: &Hub,
    shop: &Shop,
    serving: bool,
) -> anyhow::Result<()> {
    let mut watcher = connect(addr, None).await?;
    if let Ok(Push::Snapshot(s)) = next(&mut watcher).await? {
        info!("watcher: snapshot at seq {}, {} orders", s.seq, s.orders.len());
    }
    for _ in 0..3 {
        shop.place_order();
    }
    let mut last = 0;
    while last < 15 {
        match next(&mut watcher).await? {
            Ok(Push::Event(e)) => {
                ensure!(e.seq == last + 1, "gap: {last} then {}", e.seq);
                last = e.seq;
                info!(
                    "watcher: order {} {} (seq {})",
                    e.order,
                    e.status.as_str(),
                    e.seq
                );
            }
            other => bail!("unexpected {other:?}"),
        }
    }
    // The watcher is still attached: nothing dropped it. With --serve, a reader's
    // browser may have connected meanwhile, so the watcher is one of several.
    let attached = hub.subscribers();
    ensure!(attached == 1 || serving && attached > 1, "{attached} subscribers");
    info!("done: 3 orders, 15 status changes pushed in order, none missed");
    Ok(())
}

/// The break-it path: a rush of orders while one client has stopped reading.
async fn slow_client(
    addr: SocketAddr,
    hub: &Hub,
    shop: &Shop,
) -> anyhow::Result<()> {
    const ORDERS: u64 = 200;
    let total = ORDERS * 5;
    let mut watcher = connect(addr, None).await?;
    // The slow client's own receive buffer is small too; it reads nothing during the rush.
    let stream = TcpSocket::new_v4()?;
    stream.set_recv_buffer_size(4096)?;
    let stream = stream.connect(addr).await?;
    let stream = MaybeTlsStream::Plain(stream);
    let (mut slow, _) =
        tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream).await?;
    hub.wait_for_subscribers(2).await;
    info!("slow client connected and stops reading; {ORDERS} orders arrive");

    let rush = tokio::spawn({
        let shop = shop.clone();
        async move {
            for _ in 0..ORDERS {
                shop.place_order();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let mut last = 0;
    while last < total {
        match next(&mut watcher).await? {
            Ok(Push::Event(e)) => {
                ensure!(e.seq == last + 1, "watcher gap: {last} then {}", e.seq);
                last = e.seq;
            }
            Ok(Push::Snapshot(_)) => {}
            other => bail!("watcher: unexpected {other:?}"),
        }
    }
    rush.await?;
    info!("watcher: all {total} events, in order, while the slow client read none");

    // Now the slow client reads what reached it, and the reason it was cut off.
    let mut seen = 0;
    let reason = loop {
        match next(&mut slow).await? {
            Ok(Push::Event(e)) => {
                ensure!(e.seq == seen + 1, "slow gap: {seen} then {}", e.seq);
                seen = e.seq;
            }
            Ok(_) => {}
            Err(reason) => break reason,
        }
    };
    warn!("slow client: {seen} events, then closed: {reason}");
    ensure!(seen < total, "the slow client was not cut off");

    // It reconnects as the reason says and gets the rest from the history.
    let mut back = connect(addr, Some(seen)).await?;
    let first = seen + 1;
    while seen < total {
        match next(&mut back).await? {
            Ok(Push::Event(e)) => {
                ensure!(e.seq == seen + 1, "resume gap: {seen} then {}", e.seq);
                seen = e.seq;
            }
            other => bail!("resumed client: unexpected {other:?}"),
        }
    }
    info!("slow client resumed with after={}: got {first}..={total}", first - 1);
    info!("done: the watcher never waited, and the slow client missed nothing");
    Ok(())
}
