//! Bulkheads reject instead of queueing; fallbacks answer with the last good value, marked.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

use std::time::Duration;

use resilience::bulkhead::{Bulkhead, BulkheadFull};
use resilience::fallback::{Answer, LastKnownGood};
use tokio::sync::oneshot;

#[tokio::test]
async fn a_full_bulkhead_rejects_at_once_and_a_finished_call_frees_its_place() {
    let bulkhead = Bulkhead::new("recommendations", 2);
    let (release_a, hold_a) = oneshot::channel::<()>();
    let (_release_b, hold_b) = oneshot::channel::<()>();
    let a = tokio::spawn({
        let bulkhead = bulkhead.clone();
        async move { bulkhead.call(hold_a).await }
    });
    let b = tokio::spawn({
        let bulkhead = bulkhead.clone();
        async move { bulkhead.call(hold_b).await }
    });
    while bulkhead.in_flight() < 2 {
        tokio::task::yield_now().await; // let both calls take their places
    }
    assert_eq!(
        bulkhead.call(async { "third" }).await,
        Err(BulkheadFull { name: "recommendations", max_in_flight: 2 })
    );
    release_a.send(()).unwrap();
    assert!(a.await.unwrap().is_ok());
    assert_eq!(
        bulkhead.call(async { "fourth" }).await,
        Ok("fourth"),
        "a place was freed"
    );
    b.abort(); // a cancelled call frees its place too
    assert!(b.await.unwrap_err().is_cancelled());
    assert_eq!(bulkhead.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_fallback_is_the_last_good_answer_marked_with_its_age() {
    let cache = LastKnownGood::new();
    let fresh =
        cache.or_fallback(async { Ok::<_, String>(12) }, None).await.unwrap();
    assert_eq!(fresh, Answer::Fresh(12));
    tokio::time::advance(Duration::from_secs(5)).await;
    let degraded = cache
        .or_fallback(async { Err::<u32, _>("breaker open".to_owned()) }, Some(0))
        .await
        .unwrap();
    assert_eq!(
        degraded,
        Answer::Degraded {
            value: 12,
            why: "breaker open".into(),
            age: Some(Duration::from_secs(5))
        }
    );
    assert!(degraded.is_degraded());
}

/// Past its maximum age the last good answer is not served: the default is, or,
/// without one, the error.
#[tokio::test(start_paused = true)]
async fn a_last_good_answer_older_than_its_maximum_age_is_not_served() {
    let cache = LastKnownGood::with_max_age(Duration::from_secs(60));
    cache.or_fallback(async { Ok::<_, &str>(12) }, None).await.unwrap();
    tokio::time::advance(Duration::from_secs(60)).await;
    let at_the_limit = cache.or_fallback(async { Err("503") }, None).await;
    assert_eq!(at_the_limit.unwrap().value(), &12, "60 s old is still served");
    tokio::time::advance(Duration::from_millis(1)).await;
    let too_old = cache.or_fallback(async { Err("503") }, Some(0)).await;
    assert_eq!(
        too_old,
        Ok(Answer::Degraded { value: 0, why: "503".into(), age: None })
    );
    assert_eq!(cache.or_fallback(async { Err("503") }, None).await, Err("503"));
}

#[tokio::test]
async fn without_a_last_good_answer_the_default_is_used_and_without_a_default_the_error()
 {
    let cache: LastKnownGood<u32> = LastKnownGood::new();
    let answer =
        cache.or_fallback(async { Err::<u32, _>("503") }, Some(0)).await.unwrap();
    assert_eq!(answer, Answer::Degraded { value: 0, why: "503".into(), age: None });
    assert_eq!(
        cache.or_fallback(async { Err::<u32, _>("503") }, None).await,
        Err("503")
    );
}
