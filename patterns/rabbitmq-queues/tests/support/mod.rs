//! What the broker tests share: a bounded wait on a condition, instead of sleeping and hoping.

use std::time::Duration;

/// How often [`wait_until`] looks at its condition.
const POLL: Duration = Duration::from_millis(10);

/// Waits until `condition` resolves to true, looking every 10 ms, and fails the test with
/// `what` if it still does not hold after `limit`. Returns as soon as it holds, so a fast
/// machine waits less. A condition that needs no `.await` is written `|| ready(...)`.
#[track_caller]
pub fn wait_until<F>(
    limit: Duration,
    what: &str,
    mut condition: impl FnMut() -> F,
) -> impl Future<Output = ()>
where
    F: Future<Output = bool>,
{
    let caller = std::panic::Location::caller();
    async move {
        let deadline = tokio::time::Instant::now() + limit;
        while !condition().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{caller}: waited {limit:?} for {what}, in vain"
            );
            tokio::time::sleep(POLL).await;
        }
    }
}
