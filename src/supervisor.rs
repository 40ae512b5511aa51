//! A small supervisor: it starts every role of the shop as a child process of one executable
//! (one per replica where a role's address lists several), restarts a child that dies, kills one
//! on request (SIGKILL, as `kill -9` does), and stops them all with SIGTERM and a grace period.
//!
//! Each child gets its whole configuration in its environment ([`Env::vars`] and the token key),
//! the same surface a container gets. Its output is prefixed with its role, like `docker compose`
//! does, or written to a file per role. Children are signalled by their process id, never by name,
//! and a supervisor that is dropped (a test that failed) kills whatever it still runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::config::{Env, JWT_KEY_VAR, LISTEN_VAR, REPLICA_VAR, Role};

/// How long a child has, after SIGTERM, before it is killed.
pub const GRACE: Duration = Duration::from_secs(10);
/// How long a restarted child waits before it starts again: a child that dies at once must not
/// spin the machine.
const RESTART_DELAY: Duration = Duration::from_millis(200);

/// Where children's output goes.
#[derive(Clone, Debug)]
pub enum Output {
    /// To this process's stdout, each line prefixed with the role.
    Prefixed,
    /// To `<dir>/<role>.log`, appended across restarts: for tests, whose output would drown.
    Files(PathBuf),
}

/// One process of the shop: a role, and which of its replicas (from 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instance {
    /// What it does.
    pub role: Role,
    /// Which of the role's replicas it is, from 1, in the order the role's address lists them.
    pub replica: usize,
}

impl Instance {
    /// The `replica`th of `role`.
    pub fn of(role: Role, replica: usize) -> Instance {
        Instance { role, replica }
    }
}

impl From<Role> for Instance {
    /// A role's first replica: the only one of a role that runs once.
    fn from(role: Role) -> Instance {
        Instance { role, replica: 1 }
    }
}

impl std::fmt::Display for Instance {
    /// `saga` for a first replica (every role's only one, unless it is replicated), `saga-2` for
    /// the second: in log prefixes, log files and the supervisor's own lines.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.replica {
            1 => write!(f, "{}", self.role),
            n => write!(f, "{}-{n}", self.role),
        }
    }
}

/// What the supervisor knows about one role's current process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Life {
    /// How many times the role has been started.
    pub generation: u64,
    /// The id of the process running now; `None` between two lives and after the end.
    pub pid: Option<u32>,
    /// How the life before this one ended.
    pub last_exit: Option<ExitStatus>,
}

/// How a role's last process ended, once the supervisor has stopped.
#[derive(Debug)]
pub struct Ended {
    /// The role and replica.
    pub role: Instance,
    /// Its exit status; a process that needed SIGKILL after the grace period says so.
    pub status: ExitStatus,
    /// Whether it overran its grace period and was killed.
    pub killed_after_grace: bool,
}

struct Child1 {
    life: watch::Receiver<Life>,
    stop: watch::Sender<bool>,
    task: JoinHandle<anyhow::Result<(ExitStatus, bool)>>,
}

/// Every role of one shop, as child processes.
pub struct Supervisor {
    children: BTreeMap<Instance, Child1>,
    env: Env,
    http: reqwest::Client,
}

impl Supervisor {
    /// Starts every role of the shop's style, in order, each replica its address lists; returns
    /// once each one is spawned (not ready: see [`Supervisor::wait_ready`]).
    pub fn start(
        exe: &Path,
        env: &Env,
        jwt_key_hex: &str,
        output: &Output,
    ) -> anyhow::Result<Supervisor> {
        if let Output::Files(dir) = output {
            std::fs::create_dir_all(dir)?;
        }
        let vars = env.vars();
        let mut children = BTreeMap::new();
        for instance in instances(env) {
            let (life_tx, life) = watch::channel(Life::default());
            let (stop, stopped) = watch::channel(false);
            let mut vars = vars.clone();
            let role = instance.role;
            if role == Role::Gateway {
                // Only the process that verifies tokens holds the key.
                vars.push((JWT_KEY_VAR.to_owned(), jwt_key_hex.to_owned()));
            }
            let replicas = env.replicas(role);
            if replicas.len() > 1 {
                // Its own address among those its role lists, and its number.
                let own = replicas[instance.replica - 1].clone();
                vars.push((LISTEN_VAR.to_owned(), own));
                vars.push((REPLICA_VAR.to_owned(), instance.replica.to_string()));
            }
            let spec =
                Spec { exe: exe.to_owned(), instance, vars, output: output.clone() };
            let task = tokio::spawn(keep_running(spec, life_tx, stopped));
            children.insert(instance, Child1 { life, stop, task });
        }
        let http =
            reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
        Ok(Supervisor { children, env: env.clone(), http })
    }

    /// The configuration the children run with.
    pub fn env(&self) -> &Env {
        &self.env
    }

    /// Every process the supervisor runs, in the order they started.
    pub fn instances(&self) -> Vec<Instance> {
        instances(&self.env)
    }

    /// The current life of a role (its first replica) or of one replica.
    pub fn life(&self, who: impl Into<Instance>) -> Life {
        let who = who.into();
        self.children.get(&who).map(|c| *c.life.borrow()).unwrap_or_default()
    }

    /// Waits until a role (its first replica) or one replica answers `200` on `/readyz`, or fails
    /// after `within` with its last answer.
    pub async fn wait_ready(
        &self,
        who: impl Into<Instance>,
        within: Duration,
    ) -> anyhow::Result<()> {
        let role = who.into();
        let url = format!("{}/readyz", self.env.urls(role.role)[role.replica - 1]);
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let last = match self.http.get(&url).send().await {
                Ok(answer) if answer.status().is_success() => return Ok(()),
                Ok(answer) => answer.text().await.unwrap_or_else(|e| e.to_string()),
                Err(error) => error.to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "{role} was not ready within {within:?}: {}",
                    last.trim()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for every process to be ready.
    pub async fn wait_all_ready(&self, within: Duration) -> anyhow::Result<()> {
        for instance in self.instances() {
            self.wait_ready(instance, within).await?;
        }
        Ok(())
    }

    /// Sends SIGKILL to a role's (first replica's) or a replica's process and returns once its
    /// next life has started: no chance to finish anything, exactly as `kill -9` or a lost
    /// machine.
    pub async fn kill(&self, who: impl Into<Instance>) -> anyhow::Result<Life> {
        self.end_life(who.into(), libc::SIGKILL).await
    }

    /// Sends SIGTERM to a role's (first replica's) or a replica's process, as a rolling restart
    /// does, and returns once its next life has started; that life's [`Life::last_exit`] says
    /// how the old one ended.
    pub async fn terminate(&self, who: impl Into<Instance>) -> anyhow::Result<Life> {
        self.end_life(who.into(), libc::SIGTERM).await
    }

    /// Sends SIGSTOP to a role's (first replica's) or a replica's process: it keeps its port and
    /// its connections and answers nothing, as a process stuck in a long pause or a deadlock
    /// does. Nothing restarts it: to the supervisor it is still alive. [`Supervisor::resume`]
    /// lets it go on.
    pub fn pause(&self, who: impl Into<Instance>) -> anyhow::Result<u32> {
        let role = who.into();
        let pid = self.pid(role)?;
        signal(pid, libc::SIGSTOP)?;
        warn!("sent SIGSTOP to {role} (pid {pid}): it hangs");
        Ok(pid)
    }

    /// Sends SIGCONT to a process paused by [`Supervisor::pause`].
    pub fn resume(&self, who: impl Into<Instance>) -> anyhow::Result<u32> {
        let role = who.into();
        let pid = self.pid(role)?;
        signal(pid, libc::SIGCONT)?;
        info!("sent SIGCONT to {role} (pid {pid}): it goes on");
        Ok(pid)
    }

    fn pid(&self, role: Instance) -> anyhow::Result<u32> {
        let child = self
            .children
            .get(&role)
            .ok_or_else(|| anyhow::anyhow!("no role {role}"))?;
        let life = *child.life.borrow();
        life.pid.ok_or_else(|| anyhow::anyhow!("{role} is not running"))
    }

    async fn end_life(
        &self,
        role: Instance,
        how: libc::c_int,
    ) -> anyhow::Result<Life> {
        let child = self
            .children
            .get(&role)
            .ok_or_else(|| anyhow::anyhow!("no role {role}"))?;
        let mut life = child.life.clone();
        let before = *life.borrow_and_update();
        let pid =
            before.pid.ok_or_else(|| anyhow::anyhow!("{role} is not running"))?;
        signal(pid, how)?;
        let name = if how == libc::SIGKILL { "SIGKILL" } else { "SIGTERM" };
        warn!("sent {name} to {role} (pid {pid})");
        let after = tokio::time::timeout(
            GRACE + Duration::from_secs(5),
            life.wait_for(|l| l.generation > before.generation && l.pid.is_some()),
        )
        .await
        .map_err(|_| anyhow::anyhow!("{role} did not start again in time"))??;
        Ok(*after)
    }

    /// Stops every role with SIGTERM, the edge first and the participants last (so work in
    /// flight can finish downstream), each within [`GRACE`] or killed.
    pub async fn stop(mut self) -> anyhow::Result<Vec<Ended>> {
        let mut ended = vec![];
        for role in self.instances().into_iter().rev() {
            let Some(child) = self.children.remove(&role) else { continue };
            if child.stop.send(true).is_err() {
                warn!("{role}'s keeper had already ended");
            }
            let (status, killed_after_grace) = child.task.await??;
            ended.push(Ended { role, status, killed_after_grace });
        }
        Ok(ended)
    }
}

impl Drop for Supervisor {
    /// A supervisor dropped without [`Supervisor::stop`] (a failed test, a panic) kills what it
    /// still runs, so no process outlives it.
    fn drop(&mut self) {
        for (role, child) in &self.children {
            if child.stop.send(true).is_err() {
                continue;
            }
            if let Some(pid) = child.life.borrow().pid
                && let Err(error) = signal(pid, libc::SIGKILL)
            {
                warn!(%error, "could not kill {role} (pid {pid})");
            }
            child.task.abort();
        }
    }
}

/// Every process a shop runs: each role of its style, as many times as its address lists
/// replicas, in the order they start.
fn instances(env: &Env) -> Vec<Instance> {
    let each = |role: Role| {
        (1..=env.replicas(role).len()).map(move |n| Instance::of(role, n))
    };
    env.style.roles().into_iter().flat_map(each).collect()
}

/// Sends `signal` to the process `pid`, one of this process's own children.
pub fn signal(pid: u32, signal: libc::c_int) -> anyhow::Result<()> {
    let pid = libc::pid_t::try_from(pid)?;
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; the pid is one of our
    // own children, which stays a zombie (not reused) until its keeper has waited for it.
    let result = unsafe { libc::kill(pid, signal) };
    if result != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

struct Spec {
    exe: PathBuf,
    instance: Instance,
    vars: Vec<(String, String)>,
    output: Output,
}

impl Spec {
    fn spawn(&self) -> anyhow::Result<Child> {
        let mut command = Command::new(&self.exe);
        command
            .args(["role", self.instance.role.name()])
            // Each child binds its own address: a SHOP_LISTEN_ADDR this process inherited
            // would make all of them bind the same one (a replica's own is in `vars`).
            .env_remove(LISTEN_VAR)
            .env_remove(REPLICA_VAR)
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            // Its end of this pipe closes when the supervisor ends, however it ends: the
            // child stops then (`probe::stop_with_supervisor`).
            .env(crate::probe::SUPERVISED_VAR, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A group of its own: Ctrl-C in a terminal signals the whole foreground group,
            // and the children would each stop at once, in no order, while the supervisor
            // took their exits for crashes. This way only the supervisor hears it, and it
            // stops them with SIGTERM, the edge first (or, if Ctrl-C ends the supervisor
            // instead, its pipe closes and they stop by themselves).
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command.spawn()?;
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(pipe(stdout, self.instance, self.output.clone()));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(pipe(stderr, self.instance, self.output.clone()));
        }
        Ok(child)
    }
}

// ANCHOR: keep_running
/// Runs one role, again and again if it dies, until told to stop; then
/// SIGTERM, the grace period, and SIGKILL if it overran.
async fn keep_running(
    spec: Spec,
    life: watch::Sender<Life>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<(ExitStatus, bool)> {
    let role = spec.instance;
    let mut generation = 0;
    loop {
        let mut child = spec.spawn()?;
        // Held for as long as the child runs: tokio's `wait` closes a stdin it still
        // holds, which the child would take for the supervisor's end.
        let _pipe = child.stdin.take();
        generation += 1;
        if let Some(pid) = child.id() {
            info!("started {role} (pid {pid})");
        }
        life.send_modify(|l| {
            *l = Life { generation, pid: child.id(), last_exit: l.last_exit }
        });
        let status = tokio::select! {
            status = child.wait() => status?,
            () = told_to_stop(&mut stop) => return terminate(role, child).await,
        };
        life.send_replace(Life { generation, pid: None, last_exit: Some(status) });
        warn!("{role} exited ({status}); starting it again");
        tokio::select! {
            () = tokio::time::sleep(RESTART_DELAY) => {}
            () = told_to_stop(&mut stop) => return Ok((status, false)),
        }
    }
}
// ANCHOR_END: keep_running

/// Resolves once the supervisor says stop, or is gone.
async fn told_to_stop(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        debug!("the supervisor is gone: stopping its child");
    }
}

async fn terminate(
    role: Instance,
    mut child: Child,
) -> anyhow::Result<(ExitStatus, bool)> {
    let Some(pid) = child.id() else {
        return Ok((child.wait().await?, false));
    };
    signal(pid, libc::SIGTERM)?;
    match tokio::time::timeout(GRACE, child.wait()).await {
        Ok(status) => {
            let status = status?;
            info!("{role} stopped ({status})");
            Ok((status, false))
        }
        Err(_) => {
            warn!("{role} overran its {GRACE:?} grace period: killed");
            child.start_kill()?;
            Ok((child.wait().await?, true))
        }
    }
}

/// Copies a child's output, line by line, to where [`Output`] says.
async fn pipe(from: impl AsyncRead + Unpin, role: Instance, output: Output) {
    let mut lines = BufReader::new(from).lines();
    let mut file = match &output {
        Output::Prefixed => None,
        Output::Files(dir) => {
            let path = dir.join(format!("{role}.log"));
            let open = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .await;
            match open {
                Ok(file) => Some(file),
                Err(error) => {
                    warn!(%error, "cannot write {}: {role}'s output goes to stdout", path.display());
                    None
                }
            }
        }
    };
    loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => return,
            Err(error) => {
                warn!(%error, "reading {role}'s output failed");
                return;
            }
        };
        match &mut file {
            Some(file) => {
                if let Err(error) =
                    file.write_all(format!("{line}\n").as_bytes()).await
                {
                    warn!(%error, "writing {role}'s log failed");
                }
            }
            None => println!("{:>9} | {line}", role.to_string()),
        }
    }
}
