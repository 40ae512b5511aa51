//! `cargo xtask browser`: end-to-end checks in a real browser, headless Chromium.
//!
//! Two things no Rust test can see: the realtime chapter's live page working in a browser (its
//! JavaScript, its WebSocket, the statuses appearing as they happen), and the built book
//! working. Every page of `book/build/` is opened: each mermaid diagram must have rendered to
//! an SVG that is not mermaid's error picture and that names every participant, node or state
//! its source declares (mermaid draws "Syntax error in text" as an SVG too, so "an SVG is
//! there" proves nothing), and each quiz must have loaded and be answered and graded question
//! by question. A failure names the page and the diagram (with its line in `book/src/`) or the
//! quiz. The checks are one Node.js script, `xtask/browser/check.mjs`, driving Chromium
//! through playwright-core.
//!
//! - The browser is Debian's `chromium` at /usr/bin/chromium, installed with apt when we run as
//!   root (as `cargo xtask brokers up` installs RabbitMQ), never a browser that playwright
//!   downloads. It starts headless, without sandbox or GPU, with a fresh profile.
//! - playwright-core is pinned by `xtask/browser/package-lock.json` and installed with `npm ci`
//!   into `target/tools/browser-<hash>/` by the same helper `cargo xtask lint` uses.
//! - The page is the realtime crate's own example, `live_orders --serve`, built and started
//!   here; the book is `book/build/`, which `cargo xtask test` has just built.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::{Fail, brokers, cmd, command_exists, lint, run_quiet, workspace_root};

const CHROMIUM: &str = "/usr/bin/chromium";
/// Long enough for a cold start of Chromium, every page of the book with every quiz answered
/// (about a minute), and a few of check.mjs's bounded waits running out.
const CHECK_LIMIT: Duration = Duration::from_secs(420);
/// Building the example on a cold cache, then its first line.
const BUILD_LIMIT: Duration = Duration::from_secs(900);
const START_LIMIT: Duration = Duration::from_secs(60);

/// `cargo xtask browser`: expects the book built (`cargo xtask test` builds it just before).
pub fn run() -> Result<(), Fail> {
    let began = Instant::now();
    let index = workspace_root().join("book/build/index.html");
    if !index.is_file() {
        return Err(Fail::msg(format!(
            "browser: no built book at {}: run `cargo xtask book` first",
            index.display()
        )));
    }
    lint::check_node_for("browser")?;
    ensure_chromium()?;
    let tools = lint::ensure_npm_tools("browser")?;
    let example = build_example()?;
    let mut server = LiveOrders::start(&example)?;
    let result = run_quiet(
        Command::new("node")
            .arg(workspace_root().join("xtask/browser/check.mjs"))
            .arg(&tools)
            .arg(&server.url)
            .arg(&index)
            .current_dir(workspace_root()),
        CHECK_LIMIT,
    );
    server.stop();
    let report = result?;
    print!("{}", indent(&report));
    println!("  browser checks passed in {:.0}s", began.elapsed().as_secs_f64());
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines().map(|line| format!("  {line}\n")).collect()
}

/// Installs Debian's chromium when it is missing and we may (root with apt-get).
fn ensure_chromium() -> Result<(), Fail> {
    if Path::new(CHROMIUM).is_file() {
        return Ok(());
    }
    if !(brokers::is_root() && command_exists("apt-get")) {
        return Err(Fail::msg(format!(
            "browser: {CHROMIUM} is missing. Install Debian's chromium \
             (`sudo apt-get install -y chromium`) and run `cargo xtask browser` again"
        )));
    }
    brokers::apt_install(&["chromium"])
}

/// Builds the realtime crate's `live_orders` example and returns its executable, read from
/// cargo's own report (so it is right whatever CARGO_TARGET_DIR says).
fn build_example() -> Result<PathBuf, Fail> {
    println!("  building the live_orders example");
    let out = run_quiet(
        Command::new(cmd::cargo())
            .args(["build", "-p", "realtime", "--example", "live_orders"])
            .args(["--message-format", "json-render-diagnostics"])
            .current_dir(workspace_root()),
        BUILD_LIMIT,
    )?;
    out.lines().find_map(|line| executable(line, "live_orders")).ok_or_else(|| {
        Fail::msg("browser: cargo built live_orders but reported no executable")
    })
}

/// The `"executable"` of a cargo `compiler-artifact` message for the example `name`.
fn executable(message: &str, name: &str) -> Option<PathBuf> {
    if !message.contains(r#""reason":"compiler-artifact""#)
        || !message.contains(&format!(r#""name":"{name}""#))
    {
        return None;
    }
    let (_, rest) = message.split_once(r#""executable":""#)?;
    let (path, _) = rest.split_once('"')?;
    Some(PathBuf::from(path.replace(r"\\", r"\")))
}

/// The example, started with `--serve`, and the page URL it printed.
struct LiveOrders {
    child: Child,
    url: String,
}

impl LiveOrders {
    fn start(executable: &Path) -> Result<LiveOrders, Fail> {
        let mut child = Command::new(executable)
            .arg("--serve")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                Fail::msg(format!("browser: cannot start live_orders: {e}"))
            })?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| Fail::msg("browser: live_orders has no stdout"))?;
        // A thread reads every line (so the example never blocks on a full pipe) and hands
        // over the first URL.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = page_url(&line)
                    && let Some(tx) = tx.take()
                {
                    // Fails only when the waiting side gave up (its time limit).
                    crate::report_failed("handing over the page URL", tx.send(url));
                }
            }
        });
        let mut server = LiveOrders { child, url: String::new() };
        match rx.recv_timeout(START_LIMIT) {
            Ok(url) => {
                println!("  live_orders serves {url}");
                server.url = url;
                Ok(server)
            }
            Err(_) => {
                server.stop();
                Err(Fail::msg(format!(
                    "browser: live_orders printed no page URL within {}s",
                    START_LIMIT.as_secs()
                )))
            }
        }
    }

    fn stop(&mut self) {
        // A kill that fails means it exited already; wait reaps it either way.
        crate::report_failed("stopping live_orders", self.child.kill());
        crate::report_failed("reaping live_orders", self.child.wait());
    }
}

/// The URL in the example's `page: http://127.0.0.1:PORT/ ...` line.
fn page_url(line: &str) -> Option<String> {
    let (_, rest) = line.split_once("page: ")?;
    let url = rest.split_whitespace().next()?;
    url.starts_with("http://").then(|| url.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_page_url_in_the_examples_first_line() {
        assert_eq!(
            page_url(
                "   0.000508524s  INFO page: http://127.0.0.1:57455/ (open it in a browser)"
            ),
            Some("http://127.0.0.1:57455/".to_owned())
        );
        assert_eq!(
            page_url("   1.2s  INFO serving http://127.0.0.1:1/ until Ctrl-C"),
            None
        );
        assert_eq!(page_url("INFO page: see below"), None);
    }

    #[test]
    fn reads_the_examples_executable_from_cargos_messages() {
        let artifact = r#"{"reason":"compiler-artifact","package_id":"path+file:///w/patterns/realtime#0.1.0","target":{"kind":["example"],"name":"live_orders"},"executable":"/w/target/debug/examples/live_orders","fresh":true}"#;
        assert_eq!(
            executable(artifact, "live_orders"),
            Some(PathBuf::from("/w/target/debug/examples/live_orders"))
        );
        let library = r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"realtime"},"executable":null}"#;
        assert_eq!(executable(library, "live_orders"), None);
        assert_eq!(executable(library, "realtime"), None);
        let finished = r#"{"reason":"build-finished","success":true}"#;
        assert_eq!(executable(finished, "live_orders"), None);
    }
}
