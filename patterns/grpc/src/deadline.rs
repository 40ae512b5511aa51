//! Deadlines: how long the caller is willing to wait, carried with the call.
//!
//! A gRPC client sends its remaining time in the `grpc-timeout` header (`300m` is 300 ms). tonic
//! already acts on it, on both sides of a unary or client-streaming call: the client stops waiting
//! when it passes, and the server drops the handler's future (so the handler stops at its next
//! `.await`). Both report it as `CANCELLED` with the message "Timeout expired".
//!
//! What tonic leaves to the handler, and this module serves:
//!
//! - **Calls the handler makes.** tonic does not give an outgoing call the caller's deadline. A
//!   handler that calls another service passes what is left of the budget, less a margin for its
//!   own answer's way back ([`Deadline::for_downstream`]), so the next service can refuse work it
//!   cannot finish in time instead of starting it for nobody.
//! - **Response streams.** tonic's timer stops when the handler returns its response, which for a
//!   streaming call is before the first message. A stream that should end at the caller's
//!   deadline must be ended by the handler ([`stream_until`], built on [`passed`]).

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};
use tracing::info;

/// The part of a budget kept back for the answer to travel to the caller: a tenth, at least 5 ms.
pub fn return_margin(budget: Duration) -> Duration {
    (budget / 10).max(Duration::from_millis(5))
}

/// Parses a `grpc-timeout` value: at most 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty()
        || digits.len() > 8
        || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The caller's budget for this call, if it sent one.
pub fn from_metadata(metadata: &MetadataMap) -> Option<Duration> {
    metadata
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
}

// ANCHOR: Deadline
/// The moment the caller stops waiting, fixed when the call is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline {
    at: Instant,
    budget: Duration,
}

impl Deadline {
    /// The deadline the caller sent in `grpc-timeout`; `None` if it sent none.
    pub fn of<T>(request: &Request<T>) -> Option<Deadline> {
        let budget = from_metadata(request.metadata())?;
        Some(Deadline { at: Instant::now() + budget, budget })
    }

    /// What to give a call this handler makes: the time left, less the margin
    /// the answer needs to travel back to our caller.
    pub fn for_downstream(self) -> Duration {
        let left = self.at.saturating_duration_since(Instant::now());
        left.saturating_sub(return_margin(self.budget))
    }
}

/// Completes when the deadline passes; never, when there is none.
pub async fn passed(deadline: Option<Deadline>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.at).await,
        None => std::future::pending().await,
    }
}
// ANCHOR_END: Deadline

// ANCHOR: stream_until
/// Feeds a response stream through `tx` with `feed` until `feed` is done or
/// the deadline passes. At the deadline `feed` is dropped wherever it waits
/// (for the caller's next message, for a downstream, for room in the
/// channel) and the stream ends with the status `late` makes. A slot is kept
/// for that status from the start, so it goes out even when the caller has
/// stopped reading and `feed` has filled every other slot. Call it before
/// anything is sent on the channel.
pub async fn stream_until<T>(
    deadline: Option<Deadline>,
    tx: mpsc::Sender<Result<T, Status>>,
    feed: impl Future<Output = ()>,
    late: impl FnOnce() -> Status,
) {
    // Nothing was sent yet, so the channel has room and this does not wait:
    // it fails only when the caller has already gone.
    let Ok(last) = tx.reserve_owned().await else {
        return info!("the caller went away before the stream began");
    };
    tokio::select! {
        () = feed => {}
        () = passed(deadline) => {
            last.send(Err(late()));
        }
    }
}
// ANCHOR_END: stream_until

impl Deadline {
    /// The whole budget the caller sent.
    pub fn budget(self) -> Duration {
        self.budget
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_rejects_garbage() {
        assert_eq!(parse_grpc_timeout("200m"), Some(Duration::from_millis(200)));
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("5u"), Some(Duration::from_micros(5)));
        assert_eq!(parse_grpc_timeout("7n"), Some(Duration::from_nanos(7)));
        for bad in ["", "m", "10", "10x", "123456789m", "-1m", "1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn reads_what_tonic_writes() {
        let mut request = Request::new(());
        request.set_timeout(Duration::from_millis(300));
        let sent = request.metadata().get("grpc-timeout").unwrap().clone();
        assert_eq!(
            from_metadata(request.metadata()),
            Some(Duration::from_millis(300)),
            "tonic sent {sent:?}"
        );
        assert_eq!(from_metadata(Request::new(()).metadata()), None);
    }

    #[test]
    fn the_margin_is_a_tenth_but_never_below_five_ms() {
        assert_eq!(
            return_margin(Duration::from_secs(1)),
            Duration::from_millis(100)
        );
        assert_eq!(
            return_margin(Duration::from_millis(20)),
            Duration::from_millis(5)
        );
        assert_eq!(return_margin(Duration::ZERO), Duration::from_millis(5));
    }

    #[tokio::test(start_paused = true)]
    async fn the_downstream_budget_shrinks_with_time_and_keeps_the_margin() {
        let mut request = Request::new(());
        request.set_timeout(Duration::from_millis(300));
        let deadline = Deadline::of(&request).unwrap();
        assert_eq!(deadline.budget(), Duration::from_millis(300));
        assert_eq!(deadline.for_downstream(), Duration::from_millis(270));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(deadline.for_downstream(), Duration::from_millis(170));
        tokio::time::advance(Duration::from_millis(250)).await;
        assert_eq!(deadline.for_downstream(), Duration::ZERO, "past: nothing left");
    }

    #[tokio::test(start_paused = true)]
    async fn passed_completes_at_the_deadline_and_never_without_one() {
        let mut request = Request::new(());
        request.set_timeout(Duration::from_millis(300));
        let deadline = Deadline::of(&request);
        let began = Instant::now();
        passed(deadline).await;
        assert_eq!(began.elapsed(), Duration::from_millis(300));
        let never =
            tokio::time::timeout(Duration::from_secs(3600), passed(None)).await;
        assert!(never.is_err(), "no deadline never passes");
    }
}
