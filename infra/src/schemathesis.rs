//! Runs schemathesis (PyPI) against a service's OpenAPI document: what the orders service's and
//! the gateway's contract tests share.
//!
//! `cargo xtask test` installs a pinned schemathesis into a virtualenv under `target/tools/` and
//! names it in `SCHEMATHESIS_VENV`. Without it a test prints why and skips, unless
//! `REQUIRE_BROKERS` is set (as under `cargo xtask test`), when it fails: the same rule as for a
//! broker.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The variable that names the virtualenv.
pub const VENV: &str = "SCHEMATHESIS_VENV";

/// The seed of every run, so that a failure reproduces.
pub const SEED: &str = "20261204";

/// The virtualenv to run schemathesis from, or `None` (after printing why) when the test should
/// skip. Panics when it is missing and brokers (and tools) are required.
#[track_caller]
pub fn venv() -> Option<PathBuf> {
    match std::env::var_os(VENV).map(PathBuf::from) {
        Some(dir) if dir.join("bin").join("python").exists() => Some(dir),
        _ if crate::brokers_required() => panic!(
            "{VENV} must name a virtualenv with schemathesis (cargo xtask test installs one \
             into target/tools); REQUIRE_BROKERS is set, so this test may not skip"
        ),
        _ => {
            println!(
                "skipped: {VENV} is not set; `cargo xtask schemathesis` installs the tool \
                 and prints the line to export"
            );
            None
        }
    }
}

/// What a run reported.
#[derive(Debug)]
pub struct Report {
    /// How many test cases schemathesis generated and sent.
    pub cases: u64,
    /// Its whole output, failures included.
    pub output: String,
}

/// The files a run reads beside the document: `schemathesis.toml` (which refusals are allowed
/// where) and, if any, a Python file of hooks.
pub struct Setup<'a> {
    /// The path of the `schemathesis.toml` to use.
    pub config: &'a str,
    /// The path of a hooks file (`SCHEMATHESIS_HOOKS`), or none.
    pub hooks: Option<&'a str>,
}

/// Runs `schemathesis --config-file <config> run <schema_url> <args>` with the fixed seed and
/// `env` added to its environment (values its config names as `${VAR}`), and
/// returns its report if it found nothing; `Err` holds its output (or why it could not run).
/// Blocking: call it from `spawn_blocking` when the service runs on the same runtime.
pub fn run(
    venv: &std::path::Path,
    setup: Setup<'_>,
    env: &[(&str, &str)],
    schema_url: &str,
    args: &[&str],
    limit: Duration,
) -> Result<Report, String> {
    let launcher = "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())";
    let mut command = Command::new(venv.join("bin").join("python"));
    if let Some(hooks) = setup.hooks {
        command.env("SCHEMATHESIS_HOOKS", hooks);
    }
    command.envs(env.iter().copied());
    // -I: nothing from PYTHONPATH or the working directory is imported by accident.
    let child = command
        .args([
            "-I",
            "-c",
            launcher,
            "--config-file",
            setup.config,
            "run",
            schema_url,
        ])
        .args(["--seed", SEED, "--workers", "1", "--request-timeout", "10"])
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start schemathesis: {e}"))?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    let output = match rx.recv_timeout(limit) {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => return Err(format!("schemathesis: {e}")),
        Err(_) => {
            // Killed by its id, which is ours alone.
            let killed =
                Command::new("kill").args(["-9", &pid.to_string()]).status();
            return Err(format!(
                "schemathesis did not finish within {}s (kill: {killed:?})",
                limit.as_secs()
            ));
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        return Err(text);
    }
    let cases = generated(&text)
        .ok_or_else(|| format!("no `Test cases:` line in the summary:\n{text}"))?;
    Ok(Report { cases, output: text })
}

/// Reads the summary's `Test cases:` line: `  9358 generated, 9358 passed`.
fn generated(summary: &str) -> Option<u64> {
    let mut lines = summary.lines().skip_while(|l| l.trim() != "Test cases:");
    let counts = lines.nth(1)?;
    counts.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_number_of_cases_from_the_summary() {
        let summary =
            "Failures:\n\nTest cases:\n  2720 generated, 2720 passed\n\nSeed: 1\n";
        assert_eq!(super::generated(summary), Some(2720));
        assert_eq!(super::generated("Test cases:\n"), None);
    }
}
