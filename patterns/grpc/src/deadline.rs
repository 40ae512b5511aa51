//! Deadlines: how long the caller is willing to wait, carried with the call.
//!
//! A gRPC client sends its remaining time in the `grpc-timeout` header (`200m` is 200 ms). The
//! server can read it and should use it: work for a caller who has already given up is wasted, and
//! under load that waste is what turns a slow service into a dead one. [`within`] bounds a piece of
//! work by the caller's budget, minus a small margin for the answer's trip back, and fails it with
//! `DEADLINE_EXCEEDED` when the budget runs out. A service that calls further services passes the
//! remaining budget on, so the whole chain gives up together.

use std::time::Duration;

use tonic::Status;
use tonic::metadata::MetadataMap;

/// The part of a budget kept back for the answer to travel to the caller: a tenth, at least 5 ms.
pub fn return_margin(budget: Duration) -> Duration {
    (budget / 10).max(Duration::from_millis(5))
}

// ANCHOR: parse
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
// ANCHOR_END: parse

/// The caller's budget for this call, if it sent one.
pub fn from_metadata(metadata: &MetadataMap) -> Option<Duration> {
    metadata
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
}

// ANCHOR: within
/// Runs `work` within the caller's budget (less [`return_margin`]); no budget means no limit.
pub async fn within<T>(
    budget: Option<Duration>,
    work: impl Future<Output = T>,
) -> Result<T, Status> {
    let Some(budget) = budget else { return Ok(work.await) };
    let usable = budget.saturating_sub(return_margin(budget));
    tokio::time::timeout(usable, work).await.map_err(|_| {
        Status::deadline_exceeded(format!(
            "the caller's deadline of {budget:?} passed; work abandoned"
        ))
    })
}
// ANCHOR_END: within

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

    #[tokio::test(start_paused = true)]
    async fn work_that_fits_the_budget_completes() {
        let out = within(Some(Duration::from_millis(100)), async {
            tokio::time::sleep(Duration::from_millis(80)).await;
            7
        })
        .await;
        assert_eq!(out.unwrap(), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn work_past_the_budget_is_abandoned_with_deadline_exceeded() {
        let began = tokio::time::Instant::now();
        let out = within(
            Some(Duration::from_millis(100)),
            tokio::time::sleep(Duration::from_secs(10)),
        )
        .await;
        assert_eq!(out.unwrap_err().code(), tonic::Code::DeadlineExceeded);
        assert_eq!(
            began.elapsed(),
            Duration::from_millis(90),
            "budget minus a tenth kept for the way back"
        );
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
    async fn no_budget_means_no_limit() {
        assert!(
            within(None, tokio::time::sleep(Duration::from_secs(3600)))
                .await
                .is_ok()
        );
    }
}
