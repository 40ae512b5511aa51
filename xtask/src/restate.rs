//! The Restate server for the "Orchestration on an engine" chapter, run natively beside the brokers.
//!
//! The server ships as a static binary inside npm packages (`@restatedev/restate-server` and one
//! optional package per platform). `xtask/restate/package-lock.json` pins it; the first `brokers
//! up` installs it with `npm ci --ignore-scripts` into `target/tools/restate-<hash of the lock>/`
//! (as `cargo xtask lint` installs its tools) and later runs reuse it. It needs no container
//! engine and no network after the install.
//!
//! `up` writes its configuration to `target/brokers/restate/restate.toml`: every listener on
//! 127.0.0.1, the admin API on 9070 (the server's default), the ingress on 9180 (the default 8080
//! is the shop's gateway; 9080 is where Restate's SDKs serve services by default), telemetry off,
//! and the start-up check for a newer release (a request to GitHub that cannot succeed offline and
//! has no switch) kept out of the log. Its data stays in `target/brokers/restate/data/` across
//! restarts, as a server's should.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::probe::ProbeError;
use crate::{Fail, lint, report_failed, run_quiet};

/// The admin API: `RESTATE_ADMIN_URL`, the same variable the chapter's crate reads.
pub const ADMIN_VAR: &str = "RESTATE_ADMIN_URL";
/// The ingress: `RESTATE_INGRESS_URL`, likewise.
pub const INGRESS_VAR: &str = "RESTATE_INGRESS_URL";
const ADMIN_DEFAULT: &str = "http://127.0.0.1:9070";
const INGRESS_DEFAULT: &str = "http://127.0.0.1:9180";
/// Node-to-node traffic (one node here, but the server listens anyway).
const FABRIC: &str = "127.0.0.1:5122";
const IO_TIMEOUT: Duration = Duration::from_secs(3);

fn env_or(key: &str, default: &str) -> String {
    match std::env::var(key) {
        Ok(value) if !value.trim().is_empty() => value.trim().to_owned(),
        _ => default.to_owned(),
    }
}

pub fn admin_url() -> String {
    env_or(ADMIN_VAR, ADMIN_DEFAULT)
}

pub fn ingress_url() -> String {
    env_or(INGRESS_VAR, INGRESS_DEFAULT)
}

/// `http://host:port[/...]` -> `host:port`.
pub fn host_port(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only plain http:// URLs are supported"))?;
    let host_port = rest.split('/').next().unwrap_or_default();
    match host_port.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            Ok(host_port.to_owned())
        }
        _ => Err(format!("{url}: no host:port")),
    }
}

fn dir() -> PathBuf {
    crate::brokers::state_dir().join("restate")
}

pub fn log_file() -> PathBuf {
    dir().join("restate.log")
}

/// One HTTP/1.1 GET, spoken by hand: the status code and the body.
fn get(host_port: &str, path: &str) -> Result<(u16, String), ProbeError> {
    let addrs = host_port.to_socket_addrs().map_err(|e| {
        ProbeError::Refused(format!("cannot resolve {host_port}: {e}"))
    })?;
    let mut last = format!("no address for {host_port}");
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    let mut stream = stream.ok_or(ProbeError::Refused(last))?;
    let io = |e: std::io::Error| ProbeError::Protocol(format!("GET {path}: {e}"));
    stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host_port}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(io)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| {
        ProbeError::Protocol(format!("GET {path}: not an HTTP answer: {head:?}"))
    })?;
    Ok((status, body.to_owned()))
}

/// A real request to each API: the admin API's `/version` (which must name a Restate version)
/// and the ingress's `/restate/health`.
pub fn probe() -> Result<String, ProbeError> {
    let bad = |e: String| ProbeError::Protocol(e);
    let admin = host_port(&admin_url()).map_err(bad)?;
    let ingress = host_port(&ingress_url()).map_err(bad)?;
    let (status, body) = get(&admin, "/version")?;
    let version = body
        .split("\"version\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .filter(|_| status == 200)
        .ok_or_else(|| {
            ProbeError::Protocol(format!(
                "{admin}/version answered {status} without a Restate version: {body:?}"
            ))
        })?;
    match get(&ingress, "/restate/health")? {
        (200, _) => Ok(format!("Restate {version}, ingress {ingress}")),
        (status, body) => Err(ProbeError::Protocol(format!(
            "ingress {ingress}/restate/health answered {status}: {body:?}"
        ))),
    }
}

/// The server binary inside the installed npm packages, for this platform.
fn binary(tools: &std::path::Path) -> Result<PathBuf, Fail> {
    let os = match std::env::consts::OS {
        "macos" => "darwin",
        other => other,
    };
    let arch = match std::env::consts::ARCH {
        "x86_64" => "x64",
        "aarch64" => "arm64",
        other => other,
    };
    let path = tools
        .join("node_modules/@restatedev")
        .join(format!("restate-server-{os}-{arch}"))
        .join("bin/restate-server");
    if path.is_file() {
        Ok(path)
    } else {
        Err(Fail::msg(format!(
            "restate: no server binary for {os}-{arch} at {} (the npm package ships \
             linux-x64, linux-arm64, darwin-x64 and darwin-arm64)",
            path.display()
        )))
    }
}

fn config() -> Result<String, Fail> {
    let admin = host_port(&admin_url()).map_err(Fail::msg)?;
    let ingress = host_port(&ingress_url()).map_err(Fail::msg)?;
    Ok(format!(
        "# Written by `cargo xtask brokers up` (xtask/src/restate.rs); rewritten at every start.
node-name = \"shop\"
cluster-name = \"shop\"
# No daily usage report, and no error line for the release check that cannot reach GitHub.
disable-telemetry = true
log-filter = \"warn,restate=info,octocrab=off\"
log-disable-ansi-codes = true
# A neighbour of the brokers on a small machine: 512 MiB for RocksDB instead of 2 GiB.
rocksdb-total-memory-size = \"512.0 MiB\"
bind-address = \"{FABRIC}\"
advertised-address = \"http://{FABRIC}/\"

[admin]
bind-address = \"{admin}\"
advertised-admin-endpoint = \"http://{admin}/\"

[ingress]
bind-address = \"{ingress}\"
advertised-ingress-endpoint = \"http://{ingress}/\"
"
    ))
}

/// Installs the pinned server (once per lock) and starts it in the background.
pub fn start() -> Result<(), Fail> {
    lint::check_node_for("brokers up")?;
    let tools = lint::ensure_npm_tools("restate")?;
    let server = binary(&tools)?;
    let dir = dir();
    let io =
        |what: &str, e: std::io::Error| Fail::msg(format!("restate: {what}: {e}"));
    fs::create_dir_all(&dir).map_err(|e| io("creating its directory", e))?;
    let config_file = dir.join("restate.toml");
    fs::write(&config_file, config()?).map_err(|e| io("writing restate.toml", e))?;
    let log = fs::File::create(log_file()).map_err(|e| io("restate.log", e))?;
    let log2 = log.try_clone().map_err(|e| io("restate.log", e))?;
    use std::os::unix::process::CommandExt;
    let child = Command::new(&server)
        .arg("--config-file")
        .arg(&config_file)
        .arg("--base-dir")
        .arg(dir.join("data"))
        .args(["--no-logo", "--listen-mode", "tcp"])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        // Its own process group: it outlives this command and ignores the terminal's Ctrl-C.
        .process_group(0)
        .spawn()
        .map_err(|e| Fail::msg(format!("cannot start {}: {e}", server.display())))?;
    fs::write(dir.join("restate.pid"), child.id().to_string())
        .map_err(|e| io("restate.pid", e))
}

/// Stops the server `start` started (SIGTERM, then SIGKILL after 20 s).
pub fn stop() -> Result<(), Fail> {
    let pid_file = dir().join("restate.pid");
    let Ok(pid) = fs::read_to_string(&pid_file) else { return Ok(()) };
    let pid = pid.trim();
    report_failed(
        &format!("kill {pid}"),
        run_quiet(Command::new("kill").arg(pid), IO_TIMEOUT),
    );
    let began = Instant::now();
    while run_quiet(Command::new("kill").args(["-0", pid]), IO_TIMEOUT).is_ok() {
        if began.elapsed() > Duration::from_secs(20) {
            report_failed(
                &format!("kill -9 {pid}"),
                run_quiet(Command::new("kill").args(["-9", pid]), IO_TIMEOUT),
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    fs::remove_file(&pid_file)
        .map_err(|e| Fail::msg(format!("{}: {e}", pid_file.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_host_and_port_from_urls() {
        assert_eq!(host_port("http://127.0.0.1:9070").unwrap(), "127.0.0.1:9070");
        assert_eq!(host_port("http://localhost:9180/").unwrap(), "localhost:9180");
        assert!(host_port("https://127.0.0.1:9070").is_err());
        assert!(host_port("http://127.0.0.1").is_err());
    }

    #[test]
    fn the_configuration_keeps_every_listener_on_loopback() {
        let text = config().unwrap();
        let parsed: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(parsed["disable-telemetry"].as_bool(), Some(true));
        for (table, key) in [("admin", "bind-address"), ("ingress", "bind-address")]
        {
            let addr = parsed[table][key].as_str().unwrap();
            assert!(addr.starts_with("127.0.0.1:"), "{table}.{key} = {addr}");
        }
    }
}
