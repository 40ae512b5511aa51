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
    let limiter = RateLimiter::new(Rate { burst: 3, per_second: 2.0 });
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
    config.rate = Rate { burst: 5, per_second: 1.0 };
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
