//! The channel's promises, each checked with a real WebSocket client
//! (tokio-tungstenite) against the real router: slow clients, resuming, heartbeats
//! and bad frames.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

mod support;

use std::time::Duration;

use tokio::io::AsyncReadExt;

use realtime::{ChannelConfig, Closer, HubConfig, Push, Status, close};
use support::{Seen, Server, quiet, within};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

/// Reads a new client's first message, which must be a snapshot at `seq`.
async fn expect_snapshot(client: &mut support::Client, seq: u64) {
    match within("the snapshot", client.next()).await {
        Seen::Push(Push::Snapshot(snapshot)) => assert_eq!(snapshot.seq, seq),
        other => panic!("expected a snapshot, got {other:?}"),
    }
}

/// A client that stops reading fills its pipe, then its buffer in the hub, and is
/// cut off with a close frame that tells it where to resume; meanwhile a client that
/// keeps reading gets every event at once. Coming back with `after=` delivers the
/// rest, no gap, no repeat.
#[tokio::test]
async fn a_slow_client_is_closed_with_a_reason_and_never_stalls_the_others() {
    const EVENTS: u64 = 200;
    let hub = HubConfig { history: 1024, buffer: 4 };
    // 512 bytes of pipe: about six events before the server's writes to it block.
    let server = Server::memory(hub, quiet(), 512);
    let mut slow = server.connect(None).await;
    let mut fast = server.connect(None).await;
    expect_snapshot(&mut fast, 0).await;

    // The fast client reads each event before the next one is published: if the slow
    // client could hold up publishing, this loop would never finish.
    for order in 1..=EVENTS {
        let event = server.hub.publish(order, Status::Placed);
        assert_eq!(
            within("the fast client's event", fast.next_seq()).await,
            event.seq
        );
    }
    assert_eq!(server.hub.subscribers(), 1, "the slow client is detached");

    // Now the slow client reads: a run of events with no gap, then the reason it was
    // cut off.
    expect_snapshot(&mut slow, 0).await;
    let mut last = 0;
    let reason = loop {
        match within("the slow client's backlog", slow.next()).await {
            Seen::Push(Push::Event(event)) => {
                assert_eq!(event.seq, last + 1, "no gap, no repeat");
                last = event.seq;
            }
            Seen::Closed(Some((code, reason))) => {
                assert_eq!(code, close::TRY_AGAIN_LATER);
                break reason;
            }
            other => panic!("expected events then a close frame, got {other:?}"),
        }
    };
    assert!(last < EVENTS, "the slow client was cut off before the end ({last})");
    assert_eq!(reason, format!("too slow: reconnect with after={last}"));

    // It does what the reason says and gets exactly what it missed.
    let mut back = server.connect(Some(last)).await;
    for seq in last + 1..=EVENTS {
        assert_eq!(within("the resumed backlog", back.next_seq()).await, seq);
    }
    server.hub.publish(1, Status::Paid);
    assert_eq!(within("a live event", back.next_seq()).await, EVENTS + 1);
}

/// A client that stops reading for good is cut off by the hub while the server is
/// blocked writing an event to it. The server abandons that send at once, gives
/// its close frame `close_timeout` (it cannot go out: the pipe is full) and drops
/// the connection, instead of waiting out `send_timeout` behind the backlog.
#[tokio::test(start_paused = true)]
async fn a_client_that_never_reads_again_is_dropped_after_the_close_timeout() {
    let config = ChannelConfig { close_timeout: Duration::from_secs(1), ..quiet() };
    let server = Server::memory(HubConfig { history: 1024, buffer: 4 }, config, 512);
    let mut stuck = server.connect(None).await;
    let began = tokio::time::Instant::now();
    // Enough to fill the pipe (about six events) and then the hub's buffer.
    for order in 1..=50 {
        server.hub.publish(order, Status::Placed);
        tokio::task::yield_now().await;
    }
    assert_eq!(server.hub.subscribers(), 0, "cut off by the hub");
    // Past the close timeout, far short of the send timeout (an hour here).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The server has let go: the pipe holds what it could take, then ends.
    let mut bytes = Vec::new();
    let read = stuck.raw_memory().read_to_end(&mut bytes);
    within("the end of the stream", read).await.unwrap();
    assert!(bytes.len() <= 512, "only what the pipe held: {}", bytes.len());
    let elapsed = began.elapsed();
    assert!(elapsed < Duration::from_secs(2), "dropped after {elapsed:?}");
}

/// A client that reconnects with the last sequence number it saw gets the events it
/// missed, from the history, then live ones: no snapshot, no gap, no duplicate.
#[tokio::test]
async fn a_reconnecting_client_resumes_after_its_last_sequence_number() {
    let server = Server::tcp(HubConfig { history: 64, buffer: 16 }, quiet()).await;
    let mut client = server.connect(None).await;
    expect_snapshot(&mut client, 0).await;
    for order in 1..=5 {
        server.hub.publish(order, Status::Placed);
    }
    for seq in 1..=3 {
        assert_eq!(within("an event", client.next_seq()).await, seq);
    }
    // The connection drops with 4 and 5 unread; 6 to 8 happen while it is away.
    drop(client);
    server.hub.wait_for_subscribers(0).await;
    for order in 1..=3 {
        server.hub.publish(order, Status::Paid);
    }

    let mut client = server.connect(Some(3)).await;
    server.hub.publish(4, Status::Paid);
    let seen: Vec<u64> = {
        let mut seen = Vec::new();
        for _ in 4..=9 {
            seen.push(within("the resumed stream", client.next_seq()).await);
        }
        seen
    };
    assert_eq!(seen, [4, 5, 6, 7, 8, 9]);
}

/// A resume point older than the history cannot be served event by event: the client
/// gets a resync (the state now, and the sequence number it is current at) and live
/// events after it.
#[tokio::test]
async fn a_resume_older_than_the_history_gets_a_resync() {
    let server = Server::tcp(HubConfig { history: 4, buffer: 16 }, quiet()).await;
    for order in 1..=3 {
        server.hub.publish(order, Status::Placed);
        server.hub.publish(order, Status::Paid);
    }
    // History holds 3..=6; a client that saw 1 missed 2, which is gone.
    let mut client = server.connect(Some(1)).await;
    match within("the resync", client.next()).await {
        Seen::Push(Push::Resync(snapshot)) => {
            assert_eq!(snapshot.seq, 6);
            assert_eq!(snapshot.orders.len(), 3);
            assert!(snapshot.orders.iter().all(|o| o.status == Status::Paid));
        }
        other => panic!("expected a resync, got {other:?}"),
    }
    server.hub.publish(1, Status::Packed);
    assert_eq!(within("a live event", client.next_seq()).await, 7);

    // One that saw 3 is still inside the history (4..=7), and resumes.
    let mut resumed = server.connect(Some(3)).await;
    for seq in 4..=7 {
        assert_eq!(within("the backlog", resumed.next_seq()).await, seq);
    }
}

/// Pings every 15 s; a client not heard from for 30 s is closed. A client that keeps
/// reading answers each ping (tungstenite replies with a pong as it reads) and
/// stays; one that has stopped reading, as a dead peer would, is closed while the
/// other goes on. Paused time: the minutes pass instantly and in order.
#[tokio::test(start_paused = true)]
async fn heartbeats_close_a_silent_connection_and_keep_a_live_one() {
    let config = ChannelConfig {
        ping_interval: Duration::from_secs(15),
        idle_timeout: Duration::from_secs(30),
        send_timeout: Duration::from_secs(10),
        close_timeout: Duration::from_secs(10),
        max_message_size: 4096,
        read_buffer_size: 4096,
    };
    let server = Server::memory(HubConfig::default(), config, 64 * 1024);
    let mut silent = server.connect(None).await;
    let mut live = server.connect(None).await;
    let began = tokio::time::Instant::now();

    // The live client reads (and so answers pings) on its own task until it has one
    // event.
    let reader = tokio::spawn(async move {
        let mut pings = 0;
        let mut seen = Vec::new();
        loop {
            match live.next_counting(&mut pings).await {
                Seen::Push(Push::Event(event)) => {
                    seen.push(event.seq);
                    return (pings, seen);
                }
                Seen::Push(_) => {}
                Seen::Closed(frame) => panic!("live client closed: {frame:?}"),
            }
        }
    });

    server.hub.wait_for_subscribers(1).await;
    assert!(began.elapsed() >= Duration::from_secs(30));
    // Well after that, the live one is still served.
    tokio::time::sleep(Duration::from_secs(60)).await;
    server.hub.publish(1, Status::Placed);
    let (pings, seen) = reader.await.unwrap();
    assert_eq!(seen, [1]);
    assert!(pings >= 5, "the live client answered every ping ({pings})");

    // What reached the silent one, read as raw bytes (a real client would answer the
    // ping, and this one is playing dead): a ping at 15 s, then at 30 s a close
    // frame with the heartbeat's code (4000 = 0x0fa0) and reason, then the end of
    // the stream.
    let mut bytes = Vec::new();
    silent.raw_memory().read_to_end(&mut bytes).await.unwrap();
    let mut close_frame = vec![0x88, 17, 0x0f, 0xa0];
    close_frame.extend_from_slice(b"no pong for 30s");
    assert!(bytes.ends_with(&close_frame), "{bytes:02x?}");
    let before_close = &bytes[..bytes.len() - close_frame.len()];
    assert!(before_close.ends_with(&[0x89, 0x00]), "one empty ping: {bytes:02x?}");
}

/// Each kind of bad input closes only the connection that sent it, with a code and a
/// reason, and the server goes on serving a well-behaved client throughout.
#[tokio::test]
async fn bad_frames_close_that_connection_with_a_reason_and_nothing_else() {
    let server = Server::tcp(HubConfig::default(), quiet()).await;
    let mut good = server.connect(None).await;
    expect_snapshot(&mut good, 0).await;

    let oversized = Message::Text("x".repeat(10 * 1024).into());
    let not_utf8 = Message::Frame(Frame::message(
        vec![b'o', 0xff, 0xfe],
        OpCode::Data(Data::Text),
        true,
    ));
    let unexpected = Message::Text(r#"{"after":3}"#.into());
    let cases: [(Option<Message>, u16, &str); 4] = [
        (Some(oversized), close::TOO_BIG, "too big: Message too long: 10240 > 4096"),
        (Some(not_utf8), close::INVALID_DATA, "text message is not UTF-8"),
        (
            Some(unexpected),
            close::UNSUPPORTED,
            "this channel only pushes: send no messages",
        ),
        // None: an unmasked text frame, written to the socket by hand.
        (
            None,
            close::PROTOCOL,
            "protocol error: Received an unmasked frame from client",
        ),
    ];
    for (order, (message, code, reason)) in (1..).zip(cases) {
        let mut bad = server.connect(None).await;
        expect_snapshot(&mut bad, order - 1).await;
        match message {
            Some(message) => bad.send(message).await,
            None => {
                use tokio::io::AsyncWriteExt;
                bad.raw_tcp().write_all(&[0x81, 0x02, b'h', b'i']).await.unwrap();
            }
        }
        assert_eq!(
            within("the close frame", bad.next()).await,
            Seen::Closed(Some((code, reason.to_owned())))
        );
        within("the bad client to be gone", server.hub.wait_for_subscribers(1))
            .await;
        server.hub.publish(order, Status::Placed);
        assert_eq!(within("the good client's event", good.next_seq()).await, order);
    }
    // Each close is counted under its code once its closing handshake is over (the
    // dropped bad client ends it): what the capstone exports as a metric.
    let mut expected: std::collections::BTreeMap<(Closer, u16), u64> =
        [close::TOO_BIG, close::INVALID_DATA, close::UNSUPPORTED, close::PROTOCOL]
            .into_iter()
            .map(|code| ((Closer::Server, code), 1))
            .collect();
    within("every close counted", async {
        while server.channel.closes() != expected {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    // A client that closes gets the server's answer, so its closing handshake ends
    // cleanly, and the close is counted as the client's, under its code.
    good.close_normally().await;
    expected.insert((Closer::Client, 1000), 1);
    within("the client's close counted", async {
        while server.channel.closes() != expected {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
}
