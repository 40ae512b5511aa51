//! The committed contract is the one the code generates: a change to the API changes
//! `openapi.json` in the same commit, where a reviewer sees it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

use std::path::PathBuf;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use http_json::openapi::{OPENAPI_PATH, document};
use http_json::server::{AppState, app};
use tower::ServiceExt;

/// Set to rewrite the committed file from the code (never in CI).
const BLESS: &str = "OPENAPI_BLESS";

fn committed() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("openapi.json")
}

fn generated() -> String {
    let mut json = document().to_pretty_json().expect("the document serializes");
    json.push('\n');
    json
}

#[test]
fn the_committed_document_is_the_generated_one() {
    let advice = format!(
        "If the API change is meant, rewrite it and commit it with the change: \
         {BLESS}=1 cargo test -p http-json --test openapi"
    );
    infra::committed::matches(&committed(), &generated(), BLESS, &advice)
        .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn the_service_serves_its_document() {
    let response = app(AppState::default())
        .oneshot(Request::get(OPENAPI_PATH).body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.expect("body").to_bytes();
    let served: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    let expected = serde_json::to_value(document()).expect("serializes");
    assert_eq!(served, expected);
    assert_eq!(served["openapi"], "3.1.0");
    let v1 = &served["paths"]["/v1/orders"]["post"];
    assert_eq!(v1["deprecated"], true, "v1 is marked deprecated");
    assert!(v1["responses"]["201"]["headers"]["sunset"].is_object());
    let v2 = &served["paths"]["/v2/orders"]["post"];
    assert!(v2.get("deprecated").is_none(), "v2 is current: {v2}");
}
