//! Repository automation, run as `cargo xtask <command>` (an alias in `.cargo/config.toml`).
//!
//! ```text
//! cargo xtask brokers up|down|status   real Kafka-API, RabbitMQ, PostgreSQL and Restate servers on this machine
//! cargo xtask test                     brokers up, every test with REQUIRE_BROKERS=1, every example, the book
//! cargo xtask book [--serve]           build (or serve) the book with pinned mdBook tools
//! cargo xtask examples                 run the README's examples, keeping their output
//! cargo xtask excerpts                 check the book's output excerpts against those runs
//! cargo xtask lint                     CI workflow, compose file, Dockerfile, k8s manifests, alert rules
//! cargo xtask browser                  headless Chromium: the live orders page, the built book
//! cargo xtask doctor                   what is installed and what answers
//! cargo quiz <chapter>                 take a chapter's quiz in the terminal
//! ```
//!
//! It depends on std, the `infra` crate and a TOML reader only, so a fresh clone runs it in seconds.

mod book;
mod brokers;
mod browser;
mod excerpts;
mod lint;
mod probe;
mod quiz;
mod quiz_schema;
mod restate;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A failure that ends the command: one message that says what went wrong and what to do.
#[derive(Debug)]
pub struct Fail(String);

impl Fail {
    pub fn msg(message: impl Into<String>) -> Self {
        Fail(message.into())
    }
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

const USAGE: &str = "usage: cargo xtask <brokers up|brokers down|brokers status|test|book [--serve]|examples|excerpts|lint [FILE...]|browser|doctor|quiz <chapter>|schemathesis>";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["brokers", "up"] => brokers::up(),
        ["brokers", "down"] => brokers::down(),
        ["brokers", "status"] => brokers::status(),
        ["test"] => test(),
        ["book"] => book::build(),
        ["book", "--serve"] => book::serve(),
        ["examples"] => run_examples().map(|n| println!("{n} examples ran")),
        ["excerpts"] => {
            excerpts::check().map(|n| println!("{n} book excerpts match real runs"))
        }
        ["doctor"] => doctor(),
        ["lint", paths @ ..] => lint::run(paths),
        ["browser"] => browser::run(),
        ["quiz"] => quiz::list(),
        ["quiz", chapter] => quiz::run(chapter),
        // Installs schemathesis (once) and prints the variable its tests read, last.
        ["schemathesis"] => lint::schemathesis_venv()
            .map(|venv| println!("SCHEMATHESIS_VENV={}", venv.display())),
        _ => Err(Fail::msg(USAGE)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

pub fn workspace_root() -> PathBuf {
    // xtask/Cargo.toml sits one level below the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

pub mod cmd {
    /// The cargo that runs us (so `cargo +toolchain xtask` stays on that toolchain).
    pub fn cargo() -> String {
        std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
    }
}

pub fn command_exists(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| dir.join(name).is_file())
    })
}

fn describe(command: &Command) -> String {
    let mut line = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Runs a command with inherited output; a non-zero exit is a failure naming the command.
pub fn run(command: &mut Command) -> Result<(), Fail> {
    let line = describe(command);
    println!("  $ {line}");
    let status = command
        .status()
        .map_err(|e| Fail::msg(format!("cannot run `{line}`: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(Fail::msg(format!("`{line}` failed ({status})")))
    }
}

/// Runs a command with captured output and a time limit; returns its stdout, or a failure with its
/// stderr.
/// Reports a step whose failure does not change the outcome (cleaning up after a failure that
/// is already being returned, a best-effort goodbye), so that it is at least seen.
pub fn report_failed<T, E: std::fmt::Display>(what: &str, result: Result<T, E>) {
    if let Err(e) = result {
        eprintln!("  note: {what} failed: {e}");
    }
}

/// Kills a child that overran its time limit. A kill that fails means it exited meanwhile.
pub fn kill_overrun(pid: u32) {
    report_failed(
        &format!("kill -9 {pid}"),
        Command::new("kill").args(["-9", &pid.to_string()]).status(),
    );
}

pub fn run_quiet(command: &mut Command, limit: Duration) -> Result<String, Fail> {
    let line = describe(command);
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Fail::msg(format!("cannot run `{line}`: {e}")))?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(limit) {
        Ok(Ok(out)) if out.status.success() => {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        }
        Ok(Ok(out)) => Err(Fail::msg(format!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
        Ok(Err(e)) => Err(Fail::msg(format!("`{line}`: {e}"))),
        Err(_) => {
            kill_overrun(pid);
            Err(Fail::msg(format!(
                "`{line}` did not finish within {}s",
                limit.as_secs()
            )))
        }
    }
}

/// `cargo xtask test`: what CI runs, and what a contributor runs before pushing.
fn test() -> Result<(), Fail> {
    let began = Instant::now();
    let mut tally = Tally::default();

    println!("\n== 1/6 brokers");
    brokers::up().map_err(|e| Fail::msg(format!("brokers: {e}")))?;

    println!("\n== 2/6 formatting and lints");
    run(Command::new(cmd::cargo())
        .args(["fmt", "--all", "--check"])
        .current_dir(workspace_root()))
    .map_err(|e| Fail::msg(format!("{e}: run `cargo fmt --all`")))?;
    run(Command::new(cmd::cargo())
        .args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])
        .current_dir(workspace_root()))?;
    tally.passed += 2;

    println!(
        "\n== 3/6 cargo test --workspace (REQUIRE_BROKERS=1: an unreachable broker fails)"
    );
    // The orders service's and the gateway's contracts are fuzzed by schemathesis, a Python tool,
    // from a pinned venv.
    let schemathesis = lint::schemathesis_venv()?;
    // --all-targets also runs each benchmark once, in criterion's test mode, so benches cannot rot;
    // it leaves out doctests, which get their own run.
    for targets in ["--all-targets", "--doc"] {
        let mut cargo_test = Command::new(cmd::cargo());
        cargo_test
            .args(["test", "--workspace", targets])
            .current_dir(workspace_root())
            .env("REQUIRE_BROKERS", "1")
            .env("SCHEMATHESIS_VENV", &schemathesis);
        tally.cargo_test(&mut cargo_test)?;
    }

    println!("\n== 4/6 every example the README lists, as a reader would type it");
    tally.passed += run_examples()?;

    println!("\n== 5/6 the book's output excerpts, against those runs");
    let checked = excerpts::check()?;
    println!("  {checked} excerpts match what the examples printed");
    tally.passed += 1;

    println!("\n== 6/6 the book (and Chromium on it), CI workflow, compose file");
    book::build()?;
    browser::run()?;
    lint::run(&[])?;
    tally.passed += 3;

    println!("\nall green in {:.0}s", began.elapsed().as_secs_f64());
    // A plain closing line that CI and humans both read.
    println!("xtask: {} passed, {} failed", tally.passed, tally.failed);
    Ok(())
}

/// Runs every example command of the README, as a reader types it; returns how many ran.
fn run_examples() -> Result<u64, Fail> {
    let dir = excerpts::output_dir();
    fs::create_dir_all(&dir)
        .map_err(|e| Fail::msg(format!("{}: {e}", dir.display())))?;
    let mut ran = 0;
    for example in book::readme_examples()? {
        let step = Instant::now();
        println!("  $ {example}");
        run_example(&example)?;
        ran += 1;
        println!("  ok: {example} ({:.1}s)", step.elapsed().as_secs_f64());
    }
    Ok(ran)
}

/// Runs one README example through bash, echoing its output (stdout and stderr, as a reader
/// sees them) and keeping it in `target/example-output/` for the excerpt check.
fn run_example(example: &str) -> Result<(), Fail> {
    let mut child = Command::new("bash")
        .args(["-c", &format!("{example} 2>&1")])
        .current_dir(workspace_root())
        .env("REQUIRE_BROKERS", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| Fail::msg(format!("cannot run bash: {e}")))?;
    let stdout =
        child.stdout.take().ok_or_else(|| Fail::msg("bash has no stdout"))?;
    let mut output = String::new();
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        println!("{line}");
        output.push_str(&line);
        output.push('\n');
    }
    let status = child.wait().map_err(|e| Fail::msg(format!("{example}: {e}")))?;
    let file = excerpts::output_file(example);
    fs::write(&file, output)
        .map_err(|e| Fail::msg(format!("{}: {e}", file.display())))?;
    if status.success() {
        Ok(())
    } else {
        Err(Fail::msg(format!(
            "example `{example}` failed ({status}); run it yourself to see why"
        )))
    }
}

/// Counts of what `cargo xtask test` ran.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
}

impl Tally {
    /// Runs `cargo test`, echoing its output and adding up its `test result:` lines.
    fn cargo_test(&mut self, command: &mut Command) -> Result<(), Fail> {
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| Fail::msg(format!("cannot run cargo test: {e}")))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| Fail::msg("cargo test has no stdout"))?;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("{line}");
            if let Some((passed, failed)) = parse_test_result(&line) {
                self.passed += passed;
                self.failed += failed;
            }
        }
        let status =
            child.wait().map_err(|e| Fail::msg(format!("cargo test: {e}")))?;
        if status.success() {
            Ok(())
        } else {
            Err(Fail::msg(
                "cargo test failed (see above). A broker test that says it is required means a broker is \
                 down: `cargo xtask brokers status`",
            ))
        }
    }
}

/// Reads `test result: ok. 12 passed; 1 failed; ...` into (12, 1).
fn parse_test_result(line: &str) -> Option<(u64, u64)> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let count = |word: &str| -> Option<u64> {
        rest.split(';').find_map(|part| {
            part.trim()
                .trim_start_matches("ok. ")
                .trim_start_matches("FAILED. ")
                .strip_suffix(word)?
                .trim()
                .parse()
                .ok()
        })
    };
    Some((count("passed")?, count("failed")?))
}

fn doctor() -> Result<(), Fail> {
    println!("toolchain:");
    for (tool, args) in [("cargo", "--version"), ("rustc", "--version")] {
        let out = run_quiet(Command::new(tool).arg(args), Duration::from_secs(10))
            .unwrap_or_else(|e| e.to_string());
        println!("  {tool:<15} {}", out.trim());
    }
    println!("book tools (installed by `cargo xtask book`):");
    book::report_tools();
    println!(
        "container engine: {}",
        if command_exists("docker") { "docker client found" } else { "none" }
    );
    println!("brokers:");
    brokers::status()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cargo_test_summaries() {
        assert_eq!(
            parse_test_result(
                "test result: ok. 12 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s"
            ),
            Some((12, 0))
        );
        assert_eq!(
            parse_test_result("test result: FAILED. 3 passed; 2 failed; 0 ignored"),
            Some((3, 2))
        );
        assert_eq!(parse_test_result("running 3 tests"), None);
    }
}
