//! One client, several replicas of a service: why a single channel to one address sends every
//! call to one replica, and a client that spreads calls by how fast each replica answers.
//!
//! gRPC runs over HTTP/2, which carries every call of a channel as a stream of one long-lived TCP
//! connection. A balancer that works on connections (an L4 one: a Kubernetes `ClusterIP`
//! Service, a TCP load balancer, [`L4Proxy`] here) picks a replica when the connection opens, and
//! never again: the channel's calls all go where its one connection went. Balancing gRPC means
//! choosing per call, in the client, over one connection per replica:
//!
//! - [`peak_ewma`]: power of two choices over latency. For each call, two replicas are drawn at
//!   random and the call goes to the one whose cost is lower: its peak-sensitive moving average
//!   of response times (a slow answer raises it at once, fast ones lower it gradually), times the
//!   calls it has in flight, plus one. Replicas join and leave at run time through a channel of
//!   [`Change`]s, as a discovery source (DNS, the Kubernetes API) would send them.
//! - [`Eject`]: outlier ejection. A replica that is gone fails every call at once, which to a
//!   balancer that measures latency looks like the fastest replica there is: of three, it got
//!   about two calls in three in the tests, every one failing. So after a few failures in a row a
//!   replica is left out for a while, then let back on probation: one more failure, and it is out
//!   again.
//! - [`RoundRobin`]: each replica in turn, whatever it costs: the baseline.
//!
//! tonic's own `Channel::balance_list` also draws two replicas per call, but it compares a load
//! that its connections always report as zero (`impl Load for Connection` in tonic 0.14), so the
//! pick is uniform at random: a slow replica gets its full share.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep, sleep_until};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::transport::Channel;
use tower::balance::p2c::Balance;
use tower::buffer::Buffer;
use tower::discover::Change;
use tower::load::{CompleteOnResponse, PeakEwmaDiscover};
use tower::util::BoxService;
use tower::{BoxError, Service, ServiceExt};
use tracing::{info, warn};

type Request = http::Request<Body>;
type Response = http::Response<Body>;
type Answer = Pin<Box<dyn Future<Output = Result<Response, BoxError>> + Send>>;

/// A channel over many replicas, for a generated client (`PaymentsClient::new(balanced)`):
/// cheap to clone, and every clone shares one balancer.
pub type Balanced = Buffer<Request, Answer>;

/// Replicas joining (`Change::Insert(addr, channel)`) and leaving (`Change::Remove(addr)`).
pub type Changes = mpsc::Sender<Change<SocketAddr, Channel>>;

/// How much the first answers of a new replica are assumed to cost, before it has any.
const FIRST_RTT: Duration = Duration::from_millis(5);
/// How fast a replica's cost forgets a slow answer: after about this long, mostly.
const DECAY: Duration = Duration::from_secs(5);
/// Calls waiting for the balancer before a caller waits for a place.
const QUEUE: usize = 1024;

// ANCHOR: peak_ewma
/// A balanced channel over the replicas sent on the returned [`Changes`]: power of
/// two choices over each replica's peak-EWMA cost, each replica behind an [`Eject`]
/// with `ejection`. Until the first replica arrives, calls wait.
pub fn peak_ewma(ejection: Ejection) -> (Balanced, Changes) {
    let (changes, joined) = mpsc::channel(64);
    let discovered = ReceiverStream::new(joined).map(move |change| {
        Ok::<_, std::convert::Infallible>(match change {
            Change::Insert(addr, channel) => {
                Change::Insert(addr, Eject::new(addr, channel, ejection))
            }
            Change::Remove(addr) => Change::Remove(addr),
        })
    });
    let measured = PeakEwmaDiscover::new::<Request>(
        discovered,
        FIRST_RTT,
        DECAY,
        CompleteOnResponse::default(),
    );
    let balance = Balance::new(measured);
    // One task owns the balancer; the clients share it through the buffer.
    let balanced = Buffer::new(BoxService::new(balance), QUEUE);
    (balanced, changes)
}
// ANCHOR_END: peak_ewma

/// When a replica is left out: after `after` failed calls in a row, for `for_how_long`.
#[derive(Clone, Copy, Debug)]
pub struct Ejection {
    /// Failures in a row that eject a replica.
    pub after: u32,
    /// How long it stays out before it is back, on probation (one failure puts it out again).
    pub for_how_long: Duration,
}

impl Default for Ejection {
    /// Three failures in a row, for a second: a replica that died costs its callers a few calls,
    /// and one that is back gets traffic within about a second.
    fn default() -> Self {
        Ejection { after: 3, for_how_long: Duration::from_secs(1) }
    }
}

// ANCHOR: eject
/// A replica's calls, watched: a failure is a call the channel could not complete
/// (the replica refused the connection or dropped it); an answer, even a gRPC error
/// status, is a success, as the replica did answer. After [`Ejection::after`]
/// failures in a row the replica says it is not ready, so the balancer picks others,
/// until [`Ejection::for_how_long`] has passed.
pub struct Eject<S> {
    replica: SocketAddr,
    inner: S,
    policy: Ejection,
    health: Arc<Mutex<Health>>,
    back_at: Option<Pin<Box<Sleep>>>,
}

#[derive(Debug, Default)]
struct Health {
    failures_in_a_row: u32,
    out_until: Option<Instant>,
}

impl<S> Eject<S> {
    /// `inner`, the channel to `replica`, watched with `policy`.
    pub fn new(replica: SocketAddr, inner: S, policy: Ejection) -> Self {
        let health = Arc::default();
        Eject { replica, inner, policy, health, back_at: None }
    }
}

fn record(health: &Mutex<Health>, policy: Ejection, replica: SocketAddr, ok: bool) {
    let mut health = health.lock().unwrap_or_else(PoisonError::into_inner);
    if ok {
        health.failures_in_a_row = 0;
        return;
    }
    health.failures_in_a_row += 1;
    if health.failures_in_a_row >= policy.after && health.out_until.is_none() {
        health.out_until = Some(Instant::now() + policy.for_how_long);
        warn!(
            %replica,
            "{} calls in a row failed: left out for {:?}",
            health.failures_in_a_row, policy.for_how_long
        );
    }
}

impl<S> Service<Request> for Eject<S>
where
    S: Service<Request, Response = Response>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = BoxError;
    type Future = Answer;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        let out_until = {
            let health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
            health.out_until
        };
        if let Some(until) = out_until {
            let back =
                self.back_at.get_or_insert_with(|| Box::pin(sleep_until(until)));
            if back.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.back_at = None;
            let mut health =
                self.health.lock().unwrap_or_else(PoisonError::into_inner);
            // On probation: one more failure and it is out again.
            health.out_until = None;
            health.failures_in_a_row = self.policy.after.saturating_sub(1);
            info!(replica = %self.replica, "back in, on probation");
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request) -> Answer {
        let (health, policy) = (Arc::clone(&self.health), self.policy);
        let replica = self.replica;
        let answer = self.inner.call(request);
        Box::pin(async move {
            let answer = answer.await.map_err(Into::into);
            record(&health, policy, replica, answer.is_ok());
            answer
        })
    }
}
// ANCHOR_END: eject

/// Each replica in turn, over a fixed list: the baseline [`peak_ewma`] is compared with.
#[derive(Clone, Debug)]
pub struct RoundRobin {
    replicas: Arc<[Channel]>,
    next: Arc<AtomicUsize>,
}

impl RoundRobin {
    /// Over `replicas`, which must not be empty.
    pub fn new(replicas: Vec<Channel>) -> Self {
        assert!(!replicas.is_empty(), "round robin over no replica");
        RoundRobin { replicas: replicas.into(), next: Arc::default() }
    }
}

impl Service<Request> for RoundRobin {
    type Response = Response;
    type Error = BoxError;
    type Future = Answer;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Readiness is the chosen replica's, awaited in the call.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Answer {
        let turn = self.next.fetch_add(1, Relaxed) % self.replicas.len();
        let replica = self.replicas[turn].clone();
        Box::pin(async move {
            let answer = replica.oneshot(request).await?;
            Ok(answer)
        })
    }
}

/// A TCP proxy that spreads connections, not calls, over its backends, in turn: what an L4 load
/// balancer does. Dropping it stops accepting; connections already open go on.
pub struct L4Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    accepting: JoinHandle<()>,
}

impl L4Proxy {
    /// Listens on `127.0.0.1:0` and forwards each connection to the next of `backends`.
    pub async fn spawn(backends: Vec<SocketAddr>) -> std::io::Result<L4Proxy> {
        assert!(!backends.is_empty(), "a proxy to no backend");
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let accepting = tokio::spawn(async move {
            for turn in 0.. {
                let client = match listener.accept().await {
                    Ok((client, _)) => client,
                    Err(error) => {
                        warn!(%error, "the L4 proxy stopped accepting");
                        return;
                    }
                };
                let backend = backends[turn % backends.len()];
                tokio::spawn(forward(client, backend));
            }
        });
        Ok(L4Proxy { addr, accepting })
    }
}

impl Drop for L4Proxy {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

async fn forward(mut client: TcpStream, backend: SocketAddr) {
    let copied = async {
        let mut server = TcpStream::connect(backend).await?;
        client.set_nodelay(true)?;
        server.set_nodelay(true)?;
        tokio::io::copy_bidirectional(&mut client, &mut server).await
    };
    if let Err(error) = copied.await {
        warn!(%error, %backend, "a proxied connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;

    /// A replica that fails while `failing` is set, and answers otherwise.
    fn replica(
        failing: Arc<AtomicBool>,
    ) -> impl Service<
        Request,
        Response = Response,
        Error = BoxError,
        Future: Send + 'static,
    > {
        tower::service_fn(move |_: Request| {
            let fails = failing.load(Relaxed);
            async move {
                match fails {
                    true => Err::<Response, BoxError>("connection refused".into()),
                    false => Ok(Response::new(Body::empty())),
                }
            }
        })
    }

    fn request() -> Request {
        http::Request::new(Body::empty())
    }

    /// Ready within the next 999 ms of (paused) time, or not.
    async fn ready_soon<S: Service<Request, Error = BoxError>>(
        service: &mut S,
    ) -> bool {
        let soon = Duration::from_millis(999);
        tokio::time::timeout(soon, service.ready()).await.is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn three_failures_in_a_row_leave_a_replica_out_and_one_more_after_the_pause()
     {
        let failing = Arc::new(AtomicBool::new(true));
        let policy = Ejection { after: 3, for_how_long: Duration::from_secs(1) };
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        let mut eject = Eject::new(addr, replica(Arc::clone(&failing)), policy);
        for _ in 0..2 {
            assert!(eject.ready().await.unwrap().call(request()).await.is_err());
        }
        assert!(ready_soon(&mut eject).await, "two failures do not eject");
        assert!(eject.ready().await.unwrap().call(request()).await.is_err());
        assert!(!ready_soon(&mut eject).await, "the third does, for a second");
        // The second passes (paused time moves on while nothing else can run).
        assert!(ready_soon(&mut eject).await, "back after the pause");
        // On probation: the first failure puts it out again.
        assert!(eject.ready().await.unwrap().call(request()).await.is_err());
        assert!(!ready_soon(&mut eject).await, "out again after one failure");
        // Recovered: a success clears the count, and two failures leave it in.
        failing.store(false, Relaxed);
        assert!(ready_soon(&mut eject).await);
        assert!(eject.ready().await.unwrap().call(request()).await.is_ok());
        failing.store(true, Relaxed);
        for _ in 0..2 {
            assert!(eject.ready().await.unwrap().call(request()).await.is_err());
        }
        assert!(ready_soon(&mut eject).await, "a success started the count again");
    }
}
