//! The orchestrator as a service: it starts sagas, sends their commands over RabbitMQ, feeds
//! replies and timeouts to the engine through the log, and resumes every saga it owns after a
//! restart.
//!
//! Four sources of work: new sagas, replies (from its own durable reply queue), timers, and a
//! lease tick that renews its leases and takes over sagas whose owner went quiet. A router takes
//! in the sagas, the replies and the tick's findings and hands each to one of a few workers,
//! chosen by the saga's id; a timer goes back to the worker that armed it. A saga's inputs are
//! handled one at a time and in the order they came, by the same worker; different sagas' inputs
//! overlap, so one saga's round trips to the log and the broker do not hold up the others. The
//! order of things for every input is fixed: decide and append in one transaction, then
//! acknowledge the reply, then send the new commands. A crash between any two of these is repaired
//! by replaying the log: a pending intent is sent again, with the same command id.

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use rabbitmq_queues::publish::{PublishError, enable_confirms, publish_confirmed};
use rabbitmq_queues::topology::{dead_letters, work_queue};
use shop_domain::OrderPlaced;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::checkout::{Command, checkout, details};
use crate::log::{Applied, LogError, SagaLog};
use crate::participant::{Names, command_properties};
use crate::saga::{
    Definition, Input, Kind, Outcome, Record, Reply, State, Terminal, command_id,
    parse_command_id,
};

/// How to run one orchestrator.
#[derive(Clone, Debug)]
pub struct Config {
    /// Its identity: the owner its leases name. A restart under the same name
    /// takes its sagas back at once; another name waits for the lease to run out.
    pub name: String,
    /// RabbitMQ's AMQP URL.
    pub amqp: String,
    /// The shop's queue prefix: must match the participants' to reach them.
    pub names: Names,
    /// How long to wait for the first reply; each retry waits twice as long
    /// as the one before (up to 16 times this).
    pub timeout: Duration,
    /// How long a saga stays this orchestrator's without a renewal; renewed
    /// every third of it, so a live orchestrator never loses its sagas.
    pub lease: Duration,
    /// How many sagas it moves at once (at least 1): each saga belongs to one
    /// of this many workers, which takes one input at a time. A durable log
    /// needs a connection per worker.
    pub workers: usize,
}

/// Why an orchestrator stopped. Its sagas stay in the log, leased to it: a
/// restart under the same name resumes them.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Connecting to RabbitMQ, or declaring or consuming the reply queue, failed.
    #[error("amqp: {0}")]
    Amqp(#[from] lapin::Error),
    /// A command was not confirmed by the broker.
    #[error("publish: {0}")]
    Publish(#[from] PublishError),
    /// The saga log failed (or crashed on purpose: [`crate::faults`]), or a
    /// saga is no longer this orchestrator's.
    #[error("log: {0}")]
    Log(#[from] LogError),
    /// The broker closed the reply consumer: no reply can reach the workers.
    #[error("the reply queue's consumer ended")]
    RepliesEnded,
    /// A command (its id first) could not be serialized.
    #[error("command {0} could not be encoded: {1}")]
    Encode(String, serde_json::Error),
    /// The orchestrator's task, or one of its workers, panicked or was cancelled.
    #[error("the orchestrator's task panicked or was cancelled: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The orchestrator has ended: [`Orchestrator::task`] holds why.
    #[error("the orchestrator has stopped")]
    Stopped,
}

/// A checkout to start, and where to say that its saga is in the log.
type Start = (OrderPlaced, FieldTable, oneshot::Sender<()>);

/// An input the router hands to the worker its saga belongs to.
enum Work {
    Start(Start),
    Reply(Box<Delivery>),
    /// The log says this orchestrator owns the saga: resume it unless driven.
    Owned(String),
}

/// What an orchestrator did with RabbitMQ, counted as it went, for a process to export.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Replies delivered to it.
    pub replies: AtomicU64,
    /// Of those, the ones RabbitMQ marked redelivered: sent before to a consumer that did not
    /// acknowledge them (an orchestrator that stopped or lost its connection).
    pub replies_redelivered: AtomicU64,
    /// Commands the broker confirmed (publisher confirms).
    pub commands_confirmed: AtomicU64,
    /// Commands it did not confirm: the orchestrator ends with the error, and the command is sent
    /// again when the saga is resumed.
    pub commands_unconfirmed: AtomicU64,
}

/// A running orchestrator.
pub struct Orchestrator {
    starts: mpsc::Sender<Start>,
    stop: Option<oneshot::Sender<()>>,
    /// What it did with RabbitMQ so far.
    pub traffic: Arc<Traffic>,
    /// Every saga this orchestrator finishes, with how it ended.
    pub finished: mpsc::UnboundedReceiver<(String, Terminal)>,
    /// The router and its workers: ends with an error, or with `Ok` after
    /// [`Orchestrator::stop`].
    pub task: JoinHandle<Result<(), RunError>>,
}

/// The saga that checks out `order`: one per order.
pub fn saga_id(order: &OrderPlaced) -> String {
    saga_id_of(&order.order_id)
}

/// The saga that checks out the order `order_id`.
pub fn saga_id_of(order_id: &str) -> String {
    format!("checkout-{order_id}")
}

impl Orchestrator {
    /// Connects, declares its reply queue and starts its router and workers, which at
    /// once resume every running saga it owns (or may take over).
    pub async fn start<L: SagaLog>(
        config: Config,
        log: Arc<L>,
    ) -> Result<Self, RunError> {
        let connection =
            Connection::connect(&config.amqp, ConnectionProperties::default())
                .await?;
        let channel = connection.create_channel().await?;
        enable_confirms(&channel).await?;
        channel.basic_qos(64, BasicQosOptions::default()).await?;
        let names = &config.names;
        dead_letters(&channel, &names.dead_letter_exchange(), &names.dead_letters())
            .await?;
        let replies = names.replies(&config.name);
        work_queue(&channel, &replies, &names.dead_letter_exchange()).await?;
        let consumer = channel
            .basic_consume(
                replies.as_str().into(),
                config.name.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let (starts, starts_rx) = mpsc::channel(1024);
        let (stop, stop_rx) = oneshot::channel();
        let (finished_tx, finished) = mpsc::unbounded_channel();
        let span = info_span!("orchestrator", name = %config.name);
        let traffic = Arc::new(Traffic::default());
        let router = Router {
            log: Arc::clone(&log),
            config: config.clone(),
            traffic: Arc::clone(&traffic),
            lanes: vec![],
            workers: JoinSet::new(),
        };
        let counted = Arc::clone(&traffic);
        let driver = move |timers| Driver {
            traffic: Arc::clone(&counted),
            log: Arc::clone(&log),
            saga: checkout(),
            channel: channel.clone(),
            replies: replies.clone(),
            config: config.clone(),
            timers,
            finished: finished_tx.clone(),
            driving: HashSet::new(),
            headers: HashMap::new(),
        };
        let task = tokio::spawn(
            async move {
                let result = router.run(driver, starts_rx, stop_rx, consumer).await;
                // A crash drops the connection: the broker requeues what
                // this orchestrator had not acknowledged.
                if let Err(error) =
                    connection.close(320, "orchestrator stopped".into()).await
                {
                    warn!(%error, "closing the connection failed");
                }
                if let Err(error) = &result {
                    warn!(%error, "orchestrator stopped");
                }
                result
            }
            .instrument(span),
        );
        Ok(Orchestrator { starts, stop: Some(stop), traffic, finished, task })
    }

    /// Starts the checkout of `order`; see [`Starter::checkout`].
    pub async fn checkout(&self, order: OrderPlaced) -> Result<String, RunError> {
        self.starter().checkout(order).await
    }

    /// A handle that starts checkouts, for callers elsewhere (an HTTP handler).
    pub fn starter(&self) -> Starter {
        Starter { starts: self.starts.clone() }
    }

    /// Waits for the next saga this orchestrator finishes.
    pub async fn next_finished(&mut self) -> Option<(String, Terminal)> {
        self.finished.recv().await
    }

    /// Stops taking new inputs and waits for each worker to finish the ones it
    /// was already handed (up to 64 each; they may send commands). A worker
    /// that panicked is an error, not a stop.
    pub async fn stop(mut self) -> Result<(), RunError> {
        if let Some(stop) = self.stop.take()
            && stop.send(()).is_err()
        {
            debug!("the orchestrator had ended before it was told to stop");
        }
        self.task.await?
    }
}

/// Starts checkouts on a running orchestrator; cheap to clone.
#[derive(Clone, Debug)]
pub struct Starter {
    starts: mpsc::Sender<Start>,
}

impl Starter {
    /// Starts the checkout of `order` and returns its saga id once the saga is
    /// in the log, created now or found there (a retry of the same order): from
    /// then on, a crash of the orchestrator loses nothing.
    pub async fn checkout(&self, order: OrderPlaced) -> Result<String, RunError> {
        self.checkout_with(order, FieldTable::default()).await
    }

    /// [`Starter::checkout`], with `headers` on every command of the saga this orchestrator
    /// sends in this life (a trace context, say). They are not in the log: a saga resumed
    /// after a restart goes on without them.
    pub async fn checkout_with(
        &self,
        order: OrderPlaced,
        headers: FieldTable,
    ) -> Result<String, RunError> {
        let id = saga_id(&order);
        let (logged, is_logged) = oneshot::channel();
        // Either fails only when the orchestrator has ended; its task holds why.
        let start = (order, headers, logged);
        self.starts.send(start).await.map_err(|_| RunError::Stopped)?;
        is_logged.await.map_err(|_| RunError::Stopped)?;
        Ok(id)
    }
}

/// One worker: drives the sagas the router hands it.
struct Driver<L> {
    log: Arc<L>,
    saga: Definition,
    channel: Channel,
    replies: String,
    config: Config,
    timers: mpsc::UnboundedSender<(String, Input)>,
    finished: mpsc::UnboundedSender<(String, Terminal)>,
    /// Its sagas this orchestrator has resumed or started in this life.
    driving: HashSet<String>,
    /// The headers each saga started in this life sends with its commands.
    headers: HashMap<String, FieldTable>,
    traffic: Arc<Traffic>,
}

/// Takes every input in and hands it to the worker of its saga; renews the
/// leases. Ends at the first error of any worker, as a process would.
struct Router<L> {
    log: Arc<L>,
    config: Config,
    traffic: Arc<Traffic>,
    /// One inbox per worker.
    lanes: Vec<mpsc::Sender<Work>>,
    workers: JoinSet<Result<(), RunError>>,
}

impl<L: SagaLog> Router<L> {
    async fn run(
        mut self,
        driver: impl Fn(mpsc::UnboundedSender<(String, Input)>) -> Driver<L>,
        mut starts: mpsc::Receiver<Start>,
        mut stop: oneshot::Receiver<()>,
        mut replies: lapin::Consumer,
    ) -> Result<(), RunError> {
        for _ in 0..self.config.workers.max(1) {
            let (lane, inbox) = mpsc::channel(64);
            let (timers, timers_rx) = mpsc::unbounded_channel();
            self.workers
                .spawn(driver(timers).work(inbox, timers_rx).in_current_span());
            self.lanes.push(lane);
        }
        // Resume what the log says this orchestrator owns before taking any
        // reply: a requeued reply then finds its intent pending.
        self.claim().await?;
        let period = self.config.lease / 3;
        let first = tokio::time::Instant::now() + period;
        let mut lease_tick = tokio::time::interval_at(first, period);
        loop {
            tokio::select! {
                _ = &mut stop => return self.finish().await,
                start = starts.recv() => match start {
                    Some(start) => {
                        let id = saga_id(&start.0);
                        self.route(&id, Work::Start(start)).await?
                    }
                    // Only the Orchestrator holds no sender once it is dropped.
                    None => return self.finish().await,
                },
                reply = replies.next() => match reply {
                    Some(delivery) => {
                        let delivery = delivery?;
                        self.traffic.replies.fetch_add(1, Relaxed);
                        if delivery.redelivered {
                            self.traffic.replies_redelivered.fetch_add(1, Relaxed);
                        }
                        // A reply that names no saga goes to any worker, which
                        // dead-letters it.
                        let correlation = delivery.properties.correlation_id();
                        let saga = correlation
                            .as_ref()
                            .and_then(|id| parse_command_id(id.as_str()))
                            .map(|(saga, _, _)| saga)
                            .unwrap_or_default();
                        self.route(&saga, Work::Reply(Box::new(delivery))).await?
                    }
                    None => return Err(RunError::RepliesEnded),
                },
                Some(ended) = self.workers.join_next() => return Err(failed(ended)),
                _ = lease_tick.tick() => self.claim().await?,
            }
        }
    }

    // ANCHOR: route
    /// Hands `work` to the worker of saga `id`; a worker that is gone ended
    /// with an error, which this returns.
    async fn route(&mut self, id: &str, work: Work) -> Result<(), RunError> {
        let mut hasher = DefaultHasher::new();
        id.hash(&mut hasher);
        let lane = (hasher.finish() % self.lanes.len() as u64) as usize;
        if self.lanes[lane].send(work).await.is_ok() {
            return Ok(());
        }
        match self.workers.join_next().await {
            Some(ended) => Err(failed(ended)),
            None => Err(RunError::Stopped),
        }
    }
    // ANCHOR_END: route

    /// Renews leases; hands every saga it owns to its worker, which resumes
    /// the ones it does not drive yet.
    async fn claim(&mut self) -> Result<(), RunError> {
        let owned = self.log.claim(&self.config.name, self.config.lease).await?;
        for id in owned {
            self.route(&id, Work::Owned(id.clone())).await?;
        }
        Ok(())
    }

    /// Stops taking inputs; each worker ends after what it was handed.
    async fn finish(mut self) -> Result<(), RunError> {
        self.lanes.clear();
        while let Some(ended) = self.workers.join_next().await {
            ended??;
        }
        Ok(())
    }
}

/// Why a worker ended before it was told to: only an error ends one early.
fn failed(ended: Result<Result<(), RunError>, tokio::task::JoinError>) -> RunError {
    match ended {
        Ok(Err(error)) => error,
        Ok(Ok(())) => RunError::Stopped,
        Err(error) => RunError::Task(error),
    }
}

impl<L: SagaLog> Driver<L> {
    /// One worker: the inputs of its sagas, one at a time, until the router
    /// stops handing them out.
    async fn work(
        mut self,
        mut inbox: mpsc::Receiver<Work>,
        mut timers: mpsc::UnboundedReceiver<(String, Input)>,
    ) -> Result<(), RunError> {
        loop {
            tokio::select! {
                work = inbox.recv() => match work {
                    Some(Work::Start((order, headers, logged))) => {
                        self.begin(order, headers, logged).await?
                    }
                    Some(Work::Reply(delivery)) => self.on_reply(*delivery).await?,
                    Some(Work::Owned(id)) => {
                        if self.driving.insert(id.clone()) {
                            self.resume(&id).await?;
                        }
                    }
                    None => return Ok(()),
                },
                Some((saga_id, input)) = timers.recv() => {
                    self.drive(&saga_id, input).await?;
                }
            }
        }
    }

    async fn begin(
        &mut self,
        order: OrderPlaced,
        headers: FieldTable,
        logged: oneshot::Sender<()>,
    ) -> Result<(), RunError> {
        let id = saga_id(&order);
        let created = self.log.create(&id, &order, &self.config.name).await?;
        if logged.send(()).is_err() {
            debug!(saga = %id, "logged, and the caller stopped waiting");
        }
        if !created {
            warn!(saga = %id, "a saga for this order exists already: not started again");
            return Ok(());
        }
        info!(saga = %id, "saga started for order {}", order.order_id);
        self.driving.insert(id.clone());
        if !headers.inner().is_empty() {
            self.headers.insert(id.clone(), headers);
        }
        self.drive(&id, Input::Start).await
    }

    // ANCHOR: resume
    /// Picks a saga up from its log: the pending intent (if any) is sent again
    /// with the same command id; a saga with no record yet is started.
    async fn resume(&mut self, id: &str) -> Result<(), RunError> {
        let Some((order, records)) = self.log.load(id).await? else { return Ok(()) };
        let state = State::replay(&records);
        match state.pending {
            _ if state.finished.is_some() => Ok(()),
            Some((step, kind, attempt)) => {
                let what = self.name(step, kind);
                let again = "was pending, sent again";
                info!(saga = %id, "resumed from the log: {what} {again}");
                self.send(id, &order, &state, step, kind, attempt).await
            }
            None => self.drive(id, Input::Start).await,
        }
    }
    // ANCHOR_END: resume

    async fn drive(&mut self, id: &str, input: Input) -> Result<(), RunError> {
        match self.log.apply(id, &self.config.name, &self.saga, &input).await {
            Ok(applied) => self.after(id, applied).await,
            Err(LogError::NotOwner { owner, .. }) => {
                warn!(saga = %id, "now driven by {owner}: let go");
                self.driving.remove(id);
                self.headers.remove(id);
                Ok(())
            }
            Err(error) => Err(error.into()),
        }
    }

    // ANCHOR: on_reply
    async fn on_reply(&mut self, delivery: Delivery) -> Result<(), RunError> {
        let id =
            delivery.properties.correlation_id().as_ref().map(|i| i.to_string());
        let parsed = id.as_deref().and_then(parse_command_id);
        let reply = serde_json::from_slice::<Reply>(&delivery.data);
        let (Some((saga, step, kind)), Ok(reply)) = (parsed, reply) else {
            warn!(correlation_id = ?id, "malformed reply: dead-lettered");
            return reject(&delivery).await;
        };
        if step >= self.saga.steps.len() {
            warn!(correlation_id = ?id, "reply for no such step: dead-lettered");
            return reject(&delivery).await;
        }
        let input = Input::Reply { step, kind, reply };
        match self.log.apply(&saga, &self.config.name, &self.saga, &input).await {
            Ok(applied) => {
                delivery.ack(BasicAckOptions::default()).await?;
                if applied.appended.is_empty() {
                    let what = self.name(step, kind);
                    info!(saga = %saga, "{what}: duplicate or late reply, ignored");
                }
                self.after(&saga, applied).await
            }
            Err(LogError::UnknownSaga(_)) => {
                warn!(saga = %saga, "reply for an unknown saga: dead-lettered");
                reject(&delivery).await
            }
            Err(LogError::NotOwner { owner, .. }) => {
                info!(saga = %saga, "reply for a saga {owner} drives: dropped");
                delivery.ack(BasicAckOptions::default()).await?;
                Ok(())
            }
            Err(error) => Err(error.into()),
        }
    }
    // ANCHOR_END: on_reply

    /// Narrates what was appended, then sends the new commands.
    async fn after(&mut self, id: &str, applied: Applied) -> Result<(), RunError> {
        for record in &applied.appended {
            self.narrate(id, record);
        }
        for record in &applied.appended {
            match *record {
                Record::Intent { step, kind, attempt } => {
                    self.send(
                        id,
                        &applied.order,
                        &applied.state,
                        step,
                        kind,
                        attempt,
                    )
                    .await?;
                }
                Record::Finished(ref terminal) => {
                    self.driving.remove(id);
                    self.headers.remove(id);
                    let end = (id.to_owned(), terminal.clone());
                    if self.finished.send(end).is_err() {
                        // Nobody holds the receiver: the log has it anyway.
                        debug!(saga = %id, "finished, and nobody is listening");
                    }
                }
                Record::Outcome { .. } => {}
            }
        }
        Ok(())
    }

    /// Publishes one command (confirmed by the broker) and arms its timer.
    async fn send(
        &self,
        id: &str,
        order: &OrderPlaced,
        state: &State,
        step: usize,
        kind: Kind,
        attempt: u32,
    ) -> Result<(), RunError> {
        let command_id = command_id(id, step, kind);
        let command = Command {
            command_id: command_id.clone(),
            saga_id: id.to_owned(),
            step,
            kind,
            order: order.clone(),
            details: details(&self.saga, state),
        };
        let body = serde_json::to_vec(&command)
            .map_err(|e| RunError::Encode(command_id.clone(), e))?;
        let queue = self.config.names.queue(self.saga.steps[step].participant);
        let mut properties = command_properties(&command_id, &self.replies);
        if let Some(headers) = self.headers.get(id) {
            properties = properties.with_headers(headers.clone());
        }
        let published =
            publish_confirmed(&self.channel, "", &queue, &body, properties).await;
        let counted = match &published {
            Ok(()) => &self.traffic.commands_confirmed,
            Err(_) => &self.traffic.commands_unconfirmed,
        };
        counted.fetch_add(1, Relaxed);
        published?;
        let wait = self.config.timeout * 2u32.pow((attempt - 1).min(4));
        let (timers, id) = (self.timers.clone(), id.to_owned());
        // The timer lives in memory: after a restart, the resume's resend
        // arms a new one, so a timer need not be durable.
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            if timers.send((id, Input::Timeout { step, kind, attempt })).is_err() {
                debug!("timer fired after its orchestrator stopped");
            }
        });
        Ok(())
    }

    fn name(&self, step: usize, kind: Kind) -> String {
        let s = &self.saga.steps[step];
        match kind {
            Kind::Action => format!("{}.{}", s.participant, s.action),
            Kind::Compensation => format!("{}.{}", s.participant, s.compensation),
        }
    }

    fn narrate(&self, saga: &str, record: &Record) {
        let n = self.saga.steps.len();
        match record {
            Record::Intent { step, kind: Kind::Action, attempt: 1 } => {
                let what = self.name(*step, Kind::Action);
                info!(%saga, "step {}/{n} {what}: intent logged, command sent", step + 1);
            }
            Record::Intent { step, kind: Kind::Action, attempt } => {
                let what = self.name(*step, Kind::Action);
                warn!(%saga, "{what}: no reply; after the pivot, so sent again \
                              (attempt {attempt}, same command id)");
            }
            Record::Intent { step, kind: Kind::Compensation, attempt } => {
                let what = self.name(*step, Kind::Compensation);
                info!(%saga, "compensate step {}: {what} (attempt {attempt})", step + 1);
            }
            Record::Outcome { step, kind, outcome } => {
                let what = self.name(*step, *kind);
                match outcome {
                    Outcome::Done { detail } => {
                        info!(%saga, "{what}: done ({detail})")
                    }
                    Outcome::Refused { reason } => {
                        warn!(%saga, "{what}: refused ({reason})")
                    }
                    Outcome::TimedOut => warn!(
                        %saga,
                        "{what}: no reply; unknown, and not after the pivot: compensate"
                    ),
                }
            }
            Record::Finished(Terminal::Completed) => info!(%saga, "saga completed"),
            Record::Finished(Terminal::Compensated { reason }) => {
                info!(%saga, "saga compensated: every step undone ({reason})")
            }
            Record::Finished(Terminal::Stuck { step, reason }) => {
                let what = self.name(*step, Kind::Compensation);
                error!(%saga, "saga stuck: {what} refused ({reason}); needs a person")
            }
        }
    }
}

async fn reject(delivery: &Delivery) -> Result<(), RunError> {
    delivery.reject(BasicRejectOptions { requeue: false }).await?;
    Ok(())
}
