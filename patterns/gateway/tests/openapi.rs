//! The gateway's committed contract is the one the code generates, it is served without a token,
//! and schemathesis finds no answer it does not allow, with the real services behind it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

mod support;

use std::path::PathBuf;
use std::time::Duration;

use gateway::openapi::{OPENAPI_PATH, document};
use http_json::openapi::dangling_refs;
use infra::schemathesis;
use serde_json::Value;

/// Set to rewrite the committed file from the code (never in CI).
const BLESS: &str = "OPENAPI_BLESS";

#[test]
fn the_committed_document_is_the_generated_one() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    let mut fresh = document().to_pretty_json().unwrap();
    fresh.push('\n');
    let advice = format!(
        "If the API change is meant, rewrite it and commit it with the change: \
         {BLESS}=1 cargo test -p gateway --test openapi"
    );
    infra::committed::matches(&path, &fresh, BLESS, &advice)
        .unwrap_or_else(|e| panic!("{e}"));
    let doc: Value = serde_json::from_str(&fresh).unwrap();
    assert_eq!(dangling_refs(&doc), Vec::<String>::new());
}

#[tokio::test]
async fn the_document_is_served_without_a_token_and_names_each_scope() {
    let shop = support::shop().await;
    let response = shop.http.get(shop.url(OPENAPI_PATH)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let served: Value = response.json().await.unwrap();
    assert_eq!(served, serde_json::to_value(document()).unwrap());
    let scopes = &served["paths"]["/payments"]["post"]["security"][0]["bearer"];
    assert_eq!(scopes, &serde_json::json!(["payments:write"]));
}

/// Cases per operation and phase; the gateway is fuzzed with a token holding every scope.
const CASES: &str = "100";
const AT_LEAST: u64 = 500;

#[tokio::test]
async fn every_generated_request_gets_an_answer_the_document_allows() {
    let Some(venv) = schemathesis::venv() else { return };
    // A rate high enough that the fuzzer does not spend its cases on 429s.
    let shop = support::shop_with(Duration::ZERO, |config| {
        config.rate = gateway::limit::Rate::new(10_000, 10_000.0).unwrap();
    })
    .await;
    let schema = shop.url(OPENAPI_PATH);
    let token = shop.token("schemathesis");
    let setup = schemathesis::Setup {
        config: concat!(env!("CARGO_MANIFEST_DIR"), "/schemathesis.toml"),
        // The orders service's hooks: the gateway forwards the same Idempotency-Key.
        hooks: Some(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../http-json/schemathesis_hooks.py"
        )),
    };
    let run = tokio::task::spawn_blocking(move || {
        let args = ["--checks", "all", "--max-examples", CASES];
        let env = [("GATEWAY_TOKEN", token.as_str())];
        schemathesis::run(
            &venv,
            setup,
            &env,
            &schema,
            &args,
            Duration::from_secs(300),
        )
    })
    .await
    .unwrap();
    let report = run
        .unwrap_or_else(|output| panic!("schemathesis found failures:\n{output}"));
    println!("{}", report.output);
    assert!(report.cases >= AT_LEAST, "only {} cases ran", report.cases);
}
