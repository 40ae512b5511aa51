//! The rate limit is per authenticated client, answers 429 with `Retry-After`, refills with
//! time, and cannot be escaped with `X-Forwarded-For`. Paused time: no sleeps, no flakes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

mod support;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use gateway::Gateway;
use gateway::limit::{Rate, RateLimiter};
use tower::ServiceExt;

// ANCHOR: limiter_test
#[tokio::test(start_paused = true)]
async fn a_bucket_allows_its_burst_then_one_request_per_refill() {
    let limiter = RateLimiter::new(Rate::new(3, 2.0).unwrap());
    for _ in 0..3 {
        assert_eq!(limiter.check("mobile-app"), Ok(()));
    }
    // Empty: the next token is due in half a second (2 per second).
    assert_eq!(limiter.check("mobile-app"), Err(Duration::from_millis(500)));
    // Another client has its own bucket.
    assert_eq!(limiter.check("web-shop"), Ok(()));

    tokio::time::advance(Duration::from_millis(499)).await;
    assert!(limiter.check("mobile-app").is_err());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(limiter.check("mobile-app"), Ok(()));
    assert!(limiter.check("mobile-app").is_err());

    // A long pause refills up to the burst, never beyond it.
    tokio::time::advance(Duration::from_secs(60)).await;
    let allowed = (0..10).filter(|_| limiter.check("mobile-app").is_ok()).count();
    assert_eq!(allowed, 3);
}
// ANCHOR_END: limiter_test

fn app() -> (Router, gateway::Config) {
    let mut config =
        support::config("http://127.0.0.1:9".into(), "http://127.0.0.1:9".into());
    config.rate = Rate::new(5, 1.0).unwrap();
    (gateway::routes::app(Gateway::new(config.clone()).unwrap()), config)
}

/// A request that passes authentication and the limit, then stops at the
/// handler (404: not an order id), so no backend is involved.
async fn send(
    app: &Router,
    token: &str,
    forwarded_for: &str,
) -> (StatusCode, Option<String>) {
    let request = Request::get("/orders/not-a-uuid")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header("x-forwarded-for", forwarded_for)
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().to_owned());
    (response.status(), retry_after)
}

#[tokio::test(start_paused = true)]
async fn the_sixth_request_is_429_whatever_x_forwarded_for_says() {
    let (app, config) = app();
    let mobile = support::token(&config, "mobile-app");
    let web = support::token(&config, "web-shop");
    for i in 0..5 {
        let (status, _) = send(&app, &mobile, &format!("10.0.0.{i}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    // A new address per request changes nothing: the key is the token's subject.
    for i in 5..10 {
        let (status, retry_after) =
            send(&app, &mobile, &format!("10.0.0.{i}")).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(retry_after.as_deref(), Some("1"));
    }
    // The other client is not affected.
    assert_eq!(send(&app, &web, "10.0.0.1").await.0, StatusCode::NOT_FOUND);

    // After the Retry-After, one more request is allowed.
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(send(&app, &mobile, "10.0.0.1").await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        send(&app, &mobile, "10.0.0.1").await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test(start_paused = true)]
async fn a_rejected_token_does_not_spend_anyones_allowance() {
    let (app, config) = app();
    let mobile = support::token(&config, "mobile-app");
    for _ in 0..20 {
        assert_eq!(
            send(&app, "garbage", "10.0.0.1").await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    for _ in 0..5 {
        assert_eq!(send(&app, &mobile, "10.0.0.1").await.0, StatusCode::NOT_FOUND);
    }
}

// ANCHOR: governor_test
/// The book's bucket and `governor` (GCRA, the crate to use in production),
/// fed the same requests at the same instants, allow and refuse the same ones
/// and name the same wait.
#[tokio::test(start_paused = true)]
async fn the_bucket_decides_as_governor_does() {
    use governor::Quota;
    use governor::clock::{Clock, FakeRelativeClock};
    use std::num::NonZeroU32;

    for (burst, per_second) in [(3, 2.0), (10, 1.0 / 60.0), (1, 5.0), (5, 1.0)] {
        let ours = RateLimiter::new(Rate::new(burst, per_second).unwrap());
        let period = Duration::from_secs_f64(1.0 / per_second);
        let quota = Quota::with_period(period)
            .unwrap()
            .allow_burst(NonZeroU32::new(burst).unwrap());
        let clock = FakeRelativeClock::default();
        let theirs = governor::RateLimiter::direct_with_clock(quota, clock.clone());
        let (mut allowed, mut refused) = (0, 0);
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for i in 0..2_000 {
            // Gaps of 0 to 1.5 periods, in whole milliseconds, the same for both:
            // on average more requests than tokens, so both answers occur.
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let most = 3 * period.as_millis() as u64 / 2;
            let gap = Duration::from_millis((seed >> 33) % (most + 1));
            tokio::time::advance(gap).await;
            clock.advance(gap);
            match (ours.check("client"), theirs.check()) {
                (Ok(()), Ok(())) => allowed += 1,
                (Err(wait), Err(not_until)) => {
                    let theirs = not_until.wait_time_from(clock.now());
                    let apart = wait.abs_diff(theirs);
                    assert!(
                        apart < Duration::from_micros(1),
                        "{i}: {wait:?} {theirs:?}"
                    );
                    refused += 1;
                }
                (a, b) => {
                    panic!("request {i} ({burst}, {per_second}/s): {a:?} / {b:?}")
                }
            }
        }
        assert!(allowed > 100 && refused > 100, "{allowed} / {refused}");
    }
}
// ANCHOR_END: governor_test
