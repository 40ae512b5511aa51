//! Every way a request can fail authentication gets a 401 problem; a missing scope gets a 403;
//! a client cannot choose the identity the services see.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

mod support;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use gateway::auth::Claims;
use gateway::{Config, Gateway};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

/// A gateway whose backends are never reached by these requests.
fn nowhere() -> Config {
    support::config("http://127.0.0.1:9".into(), "http://127.0.0.1:9".into())
}

async fn call(
    config: &Config,
    authorization: Option<&str>,
) -> (StatusCode, String, Value) {
    let app = gateway::routes::app(Gateway::new(config.clone()).unwrap());
    let mut request = Request::get("/orders/not-a-uuid");
    if let Some(value) = authorization {
        request = request.header(header::AUTHORIZATION, value);
    }
    let response = app.oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
    let status = response.status();
    let challenge = response
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let content_type = response.headers()[header::CONTENT_TYPE].clone();
    assert_eq!(content_type, "application/problem+json");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, challenge, serde_json::from_slice(&body).unwrap())
}

fn claims(config: &Config) -> Claims {
    Claims {
        sub: "web-shop".into(),
        iss: config.issuer.clone(),
        aud: config.audience.clone(),
        exp: jsonwebtoken::get_current_timestamp() + 300,
        scope: support::ALL_SCOPES.into(),
    }
}

async fn rejected(config: &Config, authorization: &str) -> String {
    let (status, challenge, body) = call(config, Some(authorization)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    assert_eq!(body["type"], "/problems/unauthorized");
    body["detail"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn no_token_is_a_401_with_a_bare_challenge() {
    let (status, challenge, body) = call(&nowhere(), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(challenge, "Bearer realm=\"shop\"");
    assert_eq!(body["detail"], "send Authorization: Bearer <token>");
}

#[tokio::test]
async fn malformed_tokens_are_rejected() {
    let config = nowhere();
    for bad in ["Bearer not-a-jwt", "Basic d2ViOnNob3A=", "Bearer a.b.c", "Bearer "]
    {
        let detail = rejected(&config, bad).await;
        assert!(detail.contains("not a well-formed JWT"), "{bad}: {detail}");
    }
}

#[tokio::test]
async fn expired_wrong_issuer_wrong_audience_and_wrong_signature_are_rejected() {
    let config = nowhere();
    let issuer = support::issuer(&config);
    let mint =
        |claims: &Claims| format!("Bearer {}", issuer.mint_claims(claims).unwrap());

    // Expired beyond the 5 s leeway.
    let expired = Claims {
        exp: jsonwebtoken::get_current_timestamp() - 60,
        ..claims(&config)
    };
    assert_eq!(rejected(&config, &mint(&expired)).await, "the token has expired");

    let other_issuer =
        Claims { iss: "https://evil.example".into(), ..claims(&config) };
    let detail = rejected(&config, &mint(&other_issuer)).await;
    assert_eq!(detail, "the token was not issued by our identity provider");

    let other_audience = Claims { aud: "billing-api".into(), ..claims(&config) };
    let detail = rejected(&config, &mint(&other_audience)).await;
    assert_eq!(detail, "the token was issued for another audience");

    // Signed with another secret.
    let forger =
        gateway::auth::Issuer::hs256(b"guessed", &config.issuer, &config.audience);
    let forged = format!("Bearer {}", forger.mint_claims(&claims(&config)).unwrap());
    let detail = rejected(&config, &forged).await;
    assert_eq!(detail, "the token's signature does not verify");

    // The same token is accepted when nothing is wrong with it (404: not a UUID).
    let (status, _, _) = call(&config, Some(&mint(&claims(&config)))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] =
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| n << 8 | u32::from(*b))
            << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test]
async fn alg_none_and_other_algorithms_are_rejected() {
    let config = nowhere();
    let payload = base64url(&serde_json::to_vec(&claims(&config)).unwrap());
    // The classic attack: an unsigned token that says it needs no signature.
    for alg in ["none", "None", "NONE"] {
        let header =
            base64url(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#).as_bytes());
        let detail = rejected(&config, &format!("Bearer {header}.{payload}.")).await;
        assert!(detail.contains("not a well-formed JWT"), "{alg}: {detail}");
    }
    // A real algorithm we do not accept, with any signature.
    let header = base64url(br#"{"alg":"HS512","typ":"JWT"}"#);
    let detail = rejected(&config, &format!("Bearer {header}.{payload}.c2ln")).await;
    assert_eq!(detail, "the token's algorithm is not accepted");
}

#[tokio::test]
async fn a_missing_scope_is_a_403_not_a_401() {
    let config = nowhere();
    let token =
        support::issuer(&config).mint("reporting", "orders:read", 300).unwrap();
    let app = gateway::routes::app(Gateway::new(config).unwrap());
    let request = Request::post("/payments")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{}")) // the scope is checked before the body
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let challenge = response.headers()[header::WWW_AUTHENTICATE].to_str().unwrap();
    assert!(challenge.contains("insufficient_scope"), "{challenge}");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["detail"], "this route needs the scope \"payments:write\"");
}

#[tokio::test]
async fn the_caller_header_is_the_gateways_never_the_clients() {
    // A stand-in orders service that answers with the caller header it received.
    let echo = axum::Router::new().route(
        "/v2/orders",
        axum::routing::get(|headers: axum::http::HeaderMap| async move {
            let caller = headers.get_all(gateway::auth::CALLER_HEADER);
            let seen: Vec<String> =
                caller.iter().map(|v| v.to_str().unwrap().to_owned()).collect();
            axum::Json(seen)
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, echo).await });

    let config =
        support::config(format!("http://{addr}"), "http://127.0.0.1:9".into());
    let token = support::token(&config, "mobile-app");
    let running = gateway::spawn(config).await.unwrap();
    let seen: Vec<String> = reqwest::Client::new()
        .get(format!("{}/orders", running.base_url()))
        .bearer_auth(token)
        .header(gateway::auth::CALLER_HEADER, "admin")
        .header("X-Shop-Caller", "root")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen, ["mobile-app"]);
}

#[tokio::test]
async fn a_subject_that_cannot_be_forwarded_is_refused_not_dropped() {
    let config = nowhere();
    let issuer = support::issuer(&config);
    // Validly signed, but a newline cannot travel in the caller header: without
    // the refusal, the backend would see a request with no caller at all.
    let odd = Claims { sub: "web\nshop".into(), ..claims(&config) };
    let token = format!("Bearer {}", issuer.mint_claims(&odd).unwrap());
    rejected(&config, &token).await;
}
