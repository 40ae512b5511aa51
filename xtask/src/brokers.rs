//! `cargo xtask brokers up|down|status`: real brokers on any machine.
//!
//! `up` uses a broker that already answers as it is. For the others it prefers a container engine
//! (`docker compose up -d --wait` with the repository's `docker-compose.yml`) and falls back to native
//! processes: PostgreSQL and RabbitMQ from the distribution's packages, Nisshi (formerly Tansu)
//! for the Kafka API. The Restate server (the durable-execution engine of the "Orchestration on an
//! engine" chapter) always runs natively, from its pinned npm package (see `restate.rs`). It returns only when each broker completes a real handshake (see `probe.rs`), and records what it
//! started in `target/brokers/started`, so that `down` stops exactly that and nothing else.
//! It also installs Debian's `prometheus` package when `prometheus` or `promtool` is missing,
//! for the alert rules' checks and the monitoring tests; it starts no Prometheus.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::probe::{self, AmqpUri, PgUrl, ProbeError};
use crate::restate;
use crate::{Fail, cmd, command_exists, run, run_quiet, workspace_root};

/// Nisshi (formerly Tansu), pinned: the Kafka-API broker used when no container engine is
/// available. 0.6.0 because 0.7 and 0.8 need rustc 1.96 (their `rama` dependency) and these
/// machines have 1.95; move up when the toolchain does.
const NISSHI: &str = "nisshi@0.6.0";
const READY_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broker {
    Kafka,
    RabbitMq,
    Postgres,
    Restate,
}

pub const ALL: [Broker; 4] =
    [Broker::Kafka, Broker::RabbitMq, Broker::Postgres, Broker::Restate];

impl Broker {
    fn name(self) -> &'static str {
        match self {
            Broker::Kafka => "kafka",
            Broker::RabbitMq => "rabbitmq",
            Broker::Postgres => "postgres",
            Broker::Restate => "restate",
        }
    }

    /// The service name in docker-compose.yml.
    fn compose_service(self) -> &'static str {
        self.name()
    }

    /// Whether docker-compose.yml has it. Restate is not there: its npm package runs it anywhere
    /// Node.js does, with or without a container engine.
    fn in_compose(self) -> bool {
        self != Broker::Restate
    }

    fn env_var(self) -> &'static str {
        match self {
            Broker::Kafka => "KAFKA_BROKERS",
            Broker::RabbitMq => "AMQP_ADDR",
            Broker::Postgres => "DATABASE_URL",
            Broker::Restate => restate::ADMIN_VAR,
        }
    }

    fn address(self) -> String {
        match self {
            Broker::Kafka => infra::kafka_brokers(),
            Broker::RabbitMq => infra::amqp_addr(),
            Broker::Postgres => infra::database_url(),
            Broker::Restate => restate::admin_url(),
        }
    }

    /// `host:port` the broker listens on, parsed from its address.
    fn host_port(self) -> Result<String, Fail> {
        let addr = self.address();
        match self {
            Broker::Kafka => Ok(infra::first_kafka_broker()),
            Broker::RabbitMq => {
                Ok(AmqpUri::parse(&addr).map_err(Fail::msg)?.host_port)
            }
            Broker::Postgres => {
                Ok(PgUrl::parse(&addr).map_err(Fail::msg)?.host_port)
            }
            Broker::Restate => restate::host_port(&addr).map_err(Fail::msg),
        }
    }

    fn probe(self) -> Result<String, ProbeError> {
        let addr = self.address();
        let bad_config =
            |e: String| ProbeError::Protocol(format!("{}: {e}", self.env_var()));
        match self {
            Broker::Kafka => {
                probe::kafka(&infra::first_kafka_broker()).map(|brokers| {
                    format!("Kafka API, advertises {}", brokers.join(", "))
                })
            }
            Broker::RabbitMq => {
                probe::amqp(&AmqpUri::parse(&addr).map_err(bad_config)?)
            }
            Broker::Postgres => {
                probe::postgres(&PgUrl::parse(&addr).map_err(bad_config)?)
            }
            Broker::Restate => restate::probe(),
        }
    }
}

/// How a broker was started by `up`, one line each in `target/brokers/started`.
#[derive(Debug, PartialEq)]
enum Started {
    Compose(Broker),
    Native(Broker),
}

impl Started {
    fn line(&self) -> String {
        match self {
            Started::Compose(b) => format!("{} compose", b.name()),
            Started::Native(b) => format!("{} native", b.name()),
        }
    }
    fn parse(line: &str) -> Option<Self> {
        let (name, how) = line.split_once(' ')?;
        let broker = ALL.into_iter().find(|b| b.name() == name)?;
        match how {
            "compose" => Some(Started::Compose(broker)),
            "native" => Some(Started::Native(broker)),
            _ => None,
        }
    }
    fn broker(&self) -> Broker {
        match self {
            Started::Compose(b) | Started::Native(b) => *b,
        }
    }
}

pub(crate) fn state_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("brokers")
}

fn load_started() -> Vec<Started> {
    fs::read_to_string(state_dir().join("started"))
        .unwrap_or_default()
        .lines()
        .filter_map(Started::parse)
        .collect()
}

fn save_started(started: &[Started]) -> Result<(), Fail> {
    let dir = state_dir();
    fs::create_dir_all(&dir)
        .map_err(|e| Fail::msg(format!("cannot create {}: {e}", dir.display())))?;
    let text: String = started.iter().map(|s| s.line() + "\n").collect();
    fs::write(dir.join("started"), text)
        .map_err(|e| Fail::msg(format!("cannot record started brokers: {e}")))
}

fn print_row(broker: Broker, state: &str) {
    println!("  {:<9} {:<50} {state}", broker.name(), broker.address());
}

/// Starts whatever does not answer yet and waits until every broker completes a handshake.
/// Installs Prometheus and promtool first if they are missing (not a broker, but what the
/// shop's monitoring tests and the alert-rule checks need; nothing of it is started).
pub fn up() -> Result<(), Fail> {
    ensure_prometheus()?;
    println!("brokers: checking what already answers");
    let mut missing = Vec::new();
    for broker in ALL {
        match broker.probe() {
            Ok(info) => print_row(broker, &format!("up ({info}), used as is")),
            Err(ProbeError::Refused(_)) => missing.push(broker),
            Err(ProbeError::Protocol(e)) => {
                return Err(Fail::msg(format!(
                    "something answers at {} for {} but the handshake failed: {e}\n\
                     stop it, or point {} at a working {}",
                    broker.host_port()?,
                    broker.name(),
                    broker.env_var(),
                    broker.name()
                )));
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }

    let mut started = load_started();
    let (mut composed, mut native): (Vec<Broker>, Vec<Broker>) =
        (vec![], missing.clone());
    if native.iter().any(|b| b.in_compose()) && container_engine() {
        (composed, native) = missing.iter().partition(|b| b.in_compose());
    }
    if !composed.is_empty() {
        let services: Vec<&str> =
            composed.iter().map(|b| b.compose_service()).collect();
        println!(
            "brokers: container engine found; docker compose up -d --wait {}",
            services.join(" ")
        );
        let mut compose = Command::new("docker");
        compose
            .args(["compose", "up", "-d", "--wait"])
            .args(&services)
            .current_dir(workspace_root());
        run(&mut compose)?;
        started.extend(composed.iter().map(|b| Started::Compose(*b)));
    }
    if !native.is_empty() {
        if native.iter().any(|b| b.in_compose()) {
            println!("brokers: no container engine; starting native brokers");
        }
        for &broker in &native {
            // Recorded before starting: a start that fails halfway may still leave a process
            // behind, and `down` must be able to stop it.
            started.push(Started::Native(broker));
            save_started(&started)?;
            let began = Instant::now();
            match broker {
                Broker::Kafka => start_nisshi()?,
                Broker::RabbitMq => start_rabbitmq()?,
                Broker::Postgres => start_postgres()?,
                Broker::Restate => restate::start()?,
            }
            println!(
                "  {:<9} started in {:.1}s",
                broker.name(),
                began.elapsed().as_secs_f64()
            );
        }
    }
    save_started(&started)?;

    for &broker in &missing {
        let info = wait_ready(broker)?;
        print_row(broker, &format!("ready ({info})"));
    }
    Ok(())
}

fn wait_ready(broker: Broker) -> Result<String, Fail> {
    let began = Instant::now();
    loop {
        match broker.probe() {
            Ok(info) => return Ok(info),
            Err(e) if began.elapsed() > READY_TIMEOUT => {
                let logs = match broker {
                    Broker::Kafka => state_dir().join("nisshi.log"),
                    Broker::RabbitMq => PathBuf::from("/var/log/rabbitmq"),
                    Broker::Postgres => pg_dir().join("postgres.log"),
                    Broker::Restate => restate::log_file(),
                }
                .display()
                .to_string();
                return Err(Fail::msg(format!(
                    "{} did not complete a handshake within {}s: {e}\nits logs are in {logs}",
                    broker.name(),
                    READY_TIMEOUT.as_secs()
                )));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// Stops only what `up` started, newest first.
pub fn down() -> Result<(), Fail> {
    let started = load_started();
    if started.is_empty() {
        println!(
            "brokers: nothing was started by `cargo xtask brokers up`; nothing to stop"
        );
        return Ok(());
    }
    let mut compose: Vec<&str> = Vec::new();
    for entry in started.iter().rev() {
        let stopped = match entry {
            Started::Compose(b) => {
                compose.push(b.compose_service());
                continue;
            }
            Started::Native(Broker::Kafka) => stop_nisshi(),
            Started::Native(Broker::RabbitMq) => stop_rabbitmq(),
            Started::Native(Broker::Postgres) => stop_postgres(),
            Started::Native(Broker::Restate) => restate::stop(),
        };
        let name = entry.broker().name();
        match (stopped, entry.broker().probe()) {
            (Ok(()), _) => println!("  {name:<9} stopped"),
            // Its stop command failed because it was not running (a start that failed halfway).
            (Err(_), Err(ProbeError::Refused(_))) => {
                println!("  {name:<9} was not running")
            }
            (Err(e), _) => return Err(e),
        }
    }
    if !compose.is_empty() {
        let mut stop = Command::new("docker");
        stop.args(["compose", "stop"]).args(&compose).current_dir(workspace_root());
        run(&mut stop)?;
    }
    save_started(&[])
}

pub fn status() -> Result<(), Fail> {
    let started = load_started();
    let mut all_up = true;
    for broker in ALL {
        let origin = match started.iter().find(|s| s.broker() == broker) {
            Some(Started::Compose(_)) => ", started by xtask with docker compose",
            Some(Started::Native(_)) => ", started by xtask natively",
            None => "",
        };
        match broker.probe() {
            Ok(info) => print_row(broker, &format!("up ({info}{origin})")),
            Err(e) => {
                all_up = false;
                print_row(broker, &format!("down: {e}"));
            }
        }
    }
    if !all_up {
        println!("start them with `cargo xtask brokers up`");
    }
    Ok(())
}

/// True when a container engine answers (not merely when a `docker` client is installed).
fn container_engine() -> bool {
    if !command_exists("docker") {
        return false;
    }
    let mut info = Command::new("docker");
    info.args(["info", "--format", "{{.ServerVersion}}"]);
    run_quiet(&mut info, Duration::from_secs(10)).is_ok()
}

pub(crate) fn is_root() -> bool {
    run_quiet(Command::new("id").arg("-u"), Duration::from_secs(5))
        .is_ok_and(|out| out.trim() == "0")
}

/// Installs Debian packages when we may (root with apt-get), else says exactly what to run.
pub(crate) fn apt_install(packages: &[&str]) -> Result<(), Fail> {
    apt_install_or(packages, "or run the brokers with `docker compose up -d --wait`")
}

/// [`apt_install`], with `otherwise` (what else the reader can do) in the message when it may not.
pub(crate) fn apt_install_or(
    packages: &[&str],
    otherwise: &str,
) -> Result<(), Fail> {
    let line = packages.join(" ");
    if !(is_root() && command_exists("apt-get")) {
        return Err(Fail::msg(format!(
            "{line} is not installed. Install it (Debian/Ubuntu: `sudo apt-get install -y {line}`), \
             {otherwise}"
        )));
    }
    println!("  installing {line} from the distribution's packages");
    let began = Instant::now();
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    println!("  installed {line} in {:.0}s", began.elapsed().as_secs_f64());
    Ok(())
}

// --- Prometheus and promtool ------------------------------------------------------------------

/// Installs Debian's `prometheus` package (Prometheus and `promtool`) unless both are on PATH:
/// `cargo xtask lint` checks and unit-tests the alert rules with promtool, and the shop's tests
/// start a Prometheus of their own. Neither wants the package's daemon, so it is stopped (and,
/// under systemd, disabled) right after the install.
pub(crate) fn ensure_prometheus() -> Result<(), Fail> {
    if command_exists("prometheus") && command_exists("promtool") {
        return Ok(());
    }
    apt_install_or(
        &["prometheus"],
        "then run this command again (the alert rules are checked with its promtool)",
    )?;
    stop_packaged_prometheus()
}

/// Stops the daemon Debian's package starts when the init system lets it (in a container,
/// policy-rc.d usually forbids it, and this finds nothing to stop). The init script matches the
/// package's own pid file, so a Prometheus a test started is left alone.
fn stop_packaged_prometheus() -> Result<(), Fail> {
    let limit = Duration::from_secs(60);
    if Path::new("/run/systemd/system").is_dir() && command_exists("systemctl") {
        run_quiet(
            Command::new("systemctl").args([
                "disable",
                "--now",
                "prometheus.service",
            ]),
            limit,
        )?;
    } else if Path::new("/etc/init.d/prometheus").exists() {
        run_quiet(Command::new("/etc/init.d/prometheus").arg("stop"), limit)?;
        // `status` exits 0 only while the daemon runs.
        let status = Command::new("/etc/init.d/prometheus")
            .arg("status")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| Fail::msg(format!("/etc/init.d/prometheus status: {e}")))?;
        if status.success() {
            return Err(Fail::msg(
                "the prometheus package's daemon still runs after `/etc/init.d/prometheus stop`",
            ));
        }
    }
    println!("  the package's own Prometheus daemon is not left running");
    Ok(())
}

// --- Kafka API: Nisshi -----------------------------------------------------------------------

fn nisshi_binary() -> Option<PathBuf> {
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo"))
        })
        .map(|home| home.join("bin").join("nisshi"));
    if command_exists("nisshi") {
        return Some(PathBuf::from("nisshi"));
    }
    cargo_bin.filter(|p| p.exists())
}

fn start_nisshi() -> Result<(), Fail> {
    let nisshi = match nisshi_binary() {
        Some(path) => path,
        None => {
            println!(
                "  installing {NISSHI} (cargo install --locked, once; about 14 minutes on 2 cores)"
            );
            let began = Instant::now();
            run(Command::new(cmd::cargo()).args([
                "install",
                NISSHI,
                "--locked",
                "--no-default-features",
                "--features",
                "dynostore",
            ]))?;
            println!(
                "  installed {NISSHI} in {:.0}s",
                began.elapsed().as_secs_f64()
            );
            nisshi_binary().ok_or_else(|| {
                Fail::msg("nisshi installed but not found; is ~/.cargo/bin on PATH?")
            })?
        }
    };
    let url = format!("tcp://{}", Broker::Kafka.host_port()?);
    let dir = state_dir();
    fs::create_dir_all(&dir)
        .map_err(|e| Fail::msg(format!("cannot create {}: {e}", dir.display())))?;
    let log = fs::File::create(dir.join("nisshi.log"))
        .map_err(|e| Fail::msg(format!("nisshi.log: {e}")))?;
    let log2 = log.try_clone().map_err(|e| Fail::msg(format!("nisshi.log: {e}")))?;
    use std::os::unix::process::CommandExt;
    let child = Command::new(&nisshi)
        .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
        .args(["--storage-engine", "memory://nisshi/"])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        // Its own process group: it outlives this command and ignores the terminal's Ctrl-C.
        .process_group(0)
        .spawn()
        .map_err(|e| Fail::msg(format!("cannot start {}: {e}", nisshi.display())))?;
    fs::write(dir.join("nisshi.pid"), child.id().to_string())
        .map_err(|e| Fail::msg(format!("nisshi.pid: {e}")))?;
    Ok(())
}

fn stop_nisshi() -> Result<(), Fail> {
    let pid_file = state_dir().join("nisshi.pid");
    let Ok(pid) = fs::read_to_string(&pid_file) else { return Ok(()) };
    let pid = pid.trim();
    // A kill that fails means the broker already exited: it is stopped either way.
    crate::report_failed(
        &format!("kill {pid}"),
        run_quiet(Command::new("kill").arg(pid), Duration::from_secs(5)),
    );
    let began = Instant::now();
    while run_quiet(Command::new("kill").args(["-0", pid]), Duration::from_secs(5))
        .is_ok()
    {
        if began.elapsed() > Duration::from_secs(10) {
            crate::report_failed(
                &format!("kill -9 {pid}"),
                run_quiet(
                    Command::new("kill").args(["-9", pid]),
                    Duration::from_secs(5),
                ),
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    fs::remove_file(&pid_file)
        .map_err(|e| Fail::msg(format!("{}: {e}", pid_file.display())))
}

// --- RabbitMQ ---------------------------------------------------------------------------------

fn start_rabbitmq() -> Result<(), Fail> {
    if !command_exists("rabbitmq-server") {
        apt_install(&["rabbitmq-server"])?;
    }
    let host_port = Broker::RabbitMq.host_port()?;
    let (host, port) = host_port.rsplit_once(':').unwrap_or((&host_port, "5672"));
    // -detached returns at once; `wait_ready` then polls with a real AMQP handshake. (Not
    // `rabbitmqctl await_startup`: it fails outright if the node has not registered yet.)
    run(Command::new("rabbitmq-server")
        .arg("-detached")
        .env("RABBITMQ_NODE_IP_ADDRESS", host)
        .env("RABBITMQ_NODE_PORT", port))
}

fn stop_rabbitmq() -> Result<(), Fail> {
    run(Command::new("rabbitmqctl").arg("stop"))
}

// --- PostgreSQL -------------------------------------------------------------------------------

/// Directory holding initdb/pg_ctl: the newest /usr/lib/postgresql/<v>/bin, or whatever is on PATH.
fn postgres_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    command_exists("initdb").then(PathBuf::new)
}

/// PostgreSQL refuses to run as root; when we are root, run its tools as the `postgres` user.
fn pg_command(bin: &Path, tool: &str, as_postgres: bool) -> Command {
    let tool = bin.join(tool);
    if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(tool);
        c
    } else {
        Command::new(tool)
    }
}

/// Where the throwaway cluster lives: under the system temp dir, not the workspace, because as root
/// it runs as the `postgres` user, who may not be allowed into the clone (under /root, say). The
/// workspace path is hashed into the name so two clones never share a cluster.
fn pg_dir() -> PathBuf {
    // FNV-1a: stable across toolchains, unlike std's DefaultHasher, so `up` and `down` agree.
    let hash = workspace_root()
        .to_string_lossy()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    std::env::temp_dir().join(format!("shop-postgres-{hash:016x}"))
}

fn start_postgres() -> Result<(), Fail> {
    let bin = match postgres_bin() {
        Some(bin) => bin,
        None => {
            apt_install(&["postgresql"])?;
            postgres_bin().ok_or_else(|| {
                Fail::msg("postgresql installed but initdb not found")
            })?
        }
    };
    let url = PgUrl::parse(&infra::database_url()).map_err(Fail::msg)?;
    let (host, port) =
        url.host_port.rsplit_once(':').unwrap_or((&url.host_port, "5432"));
    let root = is_root();
    let dir = pg_dir();
    let data = dir.join("data");
    fs::create_dir_all(&dir)
        .map_err(|e| Fail::msg(format!("cannot create {}: {e}", dir.display())))?;
    if root {
        run(Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir))?;
    }
    if !data.join("PG_VERSION").exists() {
        // Trust authentication on loopback: a throwaway development database, never a production setup.
        run(pg_command(&bin, "initdb", root)
            .args(["--auth=trust", "--encoding=UTF8", "--username", &url.user, "-D"])
            .arg(&data)
            .stdout(Stdio::null()))?;
    }
    let options =
        format!("-c listen_addresses={host} -p {port} -k {}", dir.display());
    run(pg_command(&bin, "pg_ctl", root)
        .args(["-D"])
        .arg(&data)
        .arg("-l")
        .arg(dir.join("postgres.log"))
        .args(["-o", &options, "-w", "-t", "60", "start"])
        .stdout(Stdio::null()))?;
    // The database the tests use; "already exists" on a restart is fine.
    let mut create = pg_command(&bin, "createdb", root);
    create.args(["-h", host, "-p", port, "-U", &url.user, &url.database]);
    if let Err(e) = run_quiet(&mut create, Duration::from_secs(30))
        && !e.to_string().contains("already exists")
    {
        return Err(e);
    }
    Ok(())
}

fn stop_postgres() -> Result<(), Fail> {
    let Some(bin) = postgres_bin() else { return Ok(()) };
    run(pg_command(&bin, "pg_ctl", is_root())
        .args(["-D"])
        .arg(pg_dir().join("data"))
        .args(["-m", "fast", "-w", "stop"])
        .stdout(Stdio::null()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn started_lines_round_trip() {
        for s in [
            Started::Native(Broker::Kafka),
            Started::Compose(Broker::Postgres),
            Started::Native(Broker::RabbitMq),
            Started::Native(Broker::Restate),
        ] {
            assert_eq!(Started::parse(&s.line()), Some(s));
        }
        assert_eq!(Started::parse("kafka somehow"), None);
        assert_eq!(Started::parse("redis native"), None);
    }
}
