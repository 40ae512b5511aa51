//! Schemathesis against a running orders service: requests generated from the committed OpenAPI
//! document (examples, boundary values, random and schema-breaking inputs, and sequences that
//! follow a created order's `Location`), every answer checked against the same document.
//!
//! The tool is Python (PyPI `schemathesis`); `cargo xtask test` installs a pinned copy into
//! `target/tools/` and names its virtualenv in `SCHEMATHESIS_VENV`. Without it this test prints
//! why and skips, unless `REQUIRE_BROKERS` is set (as under `cargo xtask test`): then it fails.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use http_json::openapi::OPENAPI_PATH;
use http_json::server::{ServiceConfig, spawn};
use tokio::process::Command;

const VENV: &str = "SCHEMATHESIS_VENV";

/// Generated cases per operation and phase, and the seed that makes a run repeatable.
const CASES: &str = "200";
const SEED: &str = "20261204";
/// A bound on the whole run, far above what it takes (about 20 s).
const HARD_LIMIT: Duration = Duration::from_secs(300);
/// Fewer cases than this means the run tested far less than it should have.
const AT_LEAST: u64 = 2_000;

fn venv() -> Option<PathBuf> {
    let venv = std::env::var_os(VENV).map(PathBuf::from);
    match venv {
        Some(dir) if dir.join("bin/python").exists() => Some(dir),
        _ if infra::brokers_required() => panic!(
            "{VENV} must name a virtualenv with schemathesis (cargo xtask test installs one); \
             REQUIRE_BROKERS is set, so this test may not skip"
        ),
        _ => None,
    }
}

#[tokio::test]
async fn every_generated_request_gets_an_answer_the_document_allows() {
    let Some(venv) = venv() else {
        println!("skipped: set {VENV} to a virtualenv with schemathesis installed");
        return;
    };
    let service = spawn(ServiceConfig::default()).await.unwrap();
    let schema = format!("{}{OPENAPI_PATH}", service.base_url());
    let mut st = Command::new(venv.join("bin/python"));
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/schemathesis.toml");
    st.args(["-c", "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())"])
        .args(["--config-file", config, "run", &schema, "--checks", "all"])
        .args(["--max-examples", CASES, "--seed", SEED])
        .args(["--workers", "1", "--request-timeout", "10"])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(HARD_LIMIT, st.output())
        .await
        .expect("schemathesis finishes within its hard limit")
        .expect("schemathesis starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    service.shutdown().await.unwrap();
    assert!(output.status.success(), "schemathesis found failures (above)");
    let cases =
        generated(&stdout).expect("schemathesis reports how many cases it ran");
    assert!(cases >= AT_LEAST, "only {cases} cases ran");
}

/// Reads the summary's `Test cases:` line: `  9358 generated, 9358 passed`.
fn generated(summary: &str) -> Option<u64> {
    let mut lines = summary.lines().skip_while(|l| l.trim() != "Test cases:");
    let counts = lines.nth(1)?;
    counts.split_whitespace().next()?.parse().ok()
}
