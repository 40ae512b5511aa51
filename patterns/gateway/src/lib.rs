//! An API gateway: the one public entry point in front of the shop's services.
//!
//! What it does, one module each, and only what belongs at the edge:
//!
//! - [`routes`]: routing. HTTP clients reach the orders service (HTTP/JSON) and the payments
//!   service (gRPC, exposed here as JSON, its status codes mapped to HTTP statuses and problem
//!   bodies by [`problem`]).
//! - [`auth`]: authentication. A bearer JWT is verified once, here (signature, issuer, audience,
//!   expiry); the verified caller travels downstream in a header only the gateway can set.
//! - [`limit`]: a rate limit per authenticated client, with `429` and `Retry-After`.
//! - [`compose`]: composition. `GET /checkout/{order_id}` asks orders and payments at once within
//!   one deadline and answers with what it has, naming what is missing.
//! - [`graphql`]: the same composition as GraphQL, where the client picks the fields, with a data
//!   loader against the N+1 problem.
//! - [`openapi`]: the gateway's own OpenAPI 3.1 document, served at `/openapi.json`; it reuses
//!   the orders service's schemas, since the gateway relays v2 orders as they are.
//! - [`backends`]: each backend behind its own circuit breaker (the resilience chapter's).
//!
//! Request ids, timeouts and body limits come from tower-http, not from code written here.
//!
//! What does *not* belong here: business rules (an order's validity is the orders service's
//! business), data of its own, and per-service retries that the service's own clients know
//! better. A gateway that grows those becomes a distributed monolith every team must change.

#![warn(missing_docs)]

pub mod auth;
pub mod backends;
pub mod compose;
pub mod graphql;
pub mod limit;
pub mod openapi;
pub mod problem;
pub mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use circuit_breaker::CircuitBreaker;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::info;

use crate::auth::Verifier;
use crate::backends::{OrdersBackend, PaymentsBackend};
use crate::limit::{Rate, RateLimiter};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// reqwest could not build the HTTP client for orders.
    #[error("orders client: {0}")]
    Orders(#[from] reqwest::Error),
    /// The payments URL is not one tonic can connect to.
    #[error("payments address: {0}")]
    Payments(#[from] tonic::transport::Error),
    /// The listening socket could not be bound.
    #[error("listening: {0}")]
    Io(#[from] std::io::Error),
}

// ANCHOR: Secret
/// The key tokens are signed with (HS256). There is no default: a key in the
/// source is a key every reader of the source has. RFC 7518 (section 3.2)
/// requires at least as many bits as the hash, 256 for HS256.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

/// A key too short to sign with; the field is its length in bytes.
#[derive(Debug, PartialEq, thiserror::Error)]
#[error("an HS256 key needs at least 32 bytes, this one has {0}")]
pub struct WeakSecret(pub usize);

impl Secret {
    /// The key, if it has the 32 bytes HS256 needs.
    pub fn new(key: Vec<u8>) -> Result<Secret, WeakSecret> {
        if key.len() < 32 {
            return Err(WeakSecret(key.len()));
        }
        Ok(Secret(key))
    }
}
// ANCHOR_END: Secret

impl Secret {
    /// A fresh key from the operating system's random source (through two
    /// version-4 UUIDs, 244 random bits): for examples and tests, which sign
    /// their own tokens. A real gateway loads its key from a secret store.
    pub fn random() -> Secret {
        let mut key = uuid::Uuid::new_v4().as_bytes().to_vec();
        key.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        Secret(key)
    }

    /// The key's bytes, to sign or verify with: the one way to read them, since
    /// `Debug` redacts them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes, redacted)", self.0.len())
    }
}

/// Where the backends are, whom to trust, and the limits.
#[derive(Clone, Debug)]
pub struct Config {
    /// Base URL of the orders service, e.g. `http://127.0.0.1:8081`.
    pub orders_url: String,
    /// URL of the payments service, e.g. `http://127.0.0.1:50051`.
    pub payments_url: String,
    /// The HS256 key tokens are signed with, their issuer and audience.
    pub token_secret: Secret,
    /// The `iss` a token must carry.
    pub issuer: String,
    /// The `aud` a token must carry: this gateway's name for itself.
    pub audience: String,
    /// Every authenticated client's allowance.
    pub rate: Rate,
    /// How long a routed call may take.
    pub backend_timeout: Duration,
    /// How long a composed view may take, all its calls together.
    pub compose_deadline: Duration,
    /// The gateway's last word on any request (tower-http's timeout).
    pub request_timeout: Duration,
    /// Largest request body accepted.
    pub body_limit: usize,
    /// The breaker in front of each backend.
    pub breaker: circuit_breaker::Config,
}

impl Config {
    /// Defaults for a gateway in front of these two services; the key has none.
    pub fn new(
        orders_url: String,
        payments_url: String,
        token_secret: Secret,
    ) -> Self {
        Config {
            orders_url,
            payments_url,
            token_secret,
            issuer: "https://id.shop.example".into(),
            audience: "shop-gateway".into(),
            rate: Rate::default(),
            backend_timeout: Duration::from_secs(2),
            compose_deadline: Duration::from_millis(500),
            request_timeout: Duration::from_secs(5),
            body_limit: 16 * 1024,
            breaker: circuit_breaker::Config::default(),
        }
    }
}

/// Everything a request handler needs; cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    /// The orders service and its breaker, shared by every request.
    pub orders: Arc<OrdersBackend>,
    /// The payments service and its breaker, shared by every request.
    pub payments: Arc<PaymentsBackend>,
    /// The configuration it was built from.
    pub config: Arc<Config>,
    /// The buckets of every client, shared so a client's requests all count.
    pub limiter: RateLimiter,
    /// Built once: building a schema per request would cost every query.
    pub schema: graphql::ShopSchema,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// The backends and their breakers. Connects to nothing yet: a backend that
    /// is down shows up as failed calls, not as a gateway that will not start.
    pub fn new(config: Config) -> Result<Self, StartError> {
        let breaker = || CircuitBreaker::new(config.breaker.clone());
        let orders = OrdersBackend::new(config.orders_url.clone(), breaker())?;
        let payments = PaymentsBackend::new(config.payments_url.clone(), breaker())?;
        Ok(Gateway {
            orders: Arc::new(orders),
            payments: Arc::new(payments),
            limiter: RateLimiter::new(config.rate),
            schema: graphql::schema(),
            config: Arc::new(config),
        })
    }

    /// A verifier for the configured key, issuer and audience.
    pub fn verifier(&self) -> Verifier {
        let c = &self.config;
        Verifier::hs256(c.token_secret.expose(), &c.issuer, &c.audience)
    }
}

/// A gateway serving on a loopback port; stop it with [`RunningGateway::shutdown`].
pub struct RunningGateway {
    /// The port the OS picked on 127.0.0.1.
    pub addr: SocketAddr,
    /// The state the server runs with: tests read its counters and breakers.
    pub gateway: Gateway,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl RunningGateway {
    /// `http://` and [`RunningGateway::addr`], for clients to build URLs on.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, lets requests in flight finish, waits for the server.
    pub async fn shutdown(self) -> std::io::Result<()> {
        // An error means the server has ended already: its task says why.
        if self.stop.send(()).is_err() {
            tracing::debug!("the gateway had stopped before it was told to");
        }
        self.task.await.map_err(std::io::Error::other)?
    }
}

/// Serves [`routes::app`] on `127.0.0.1:0` in a background task.
pub async fn spawn(config: Config) -> Result<RunningGateway, StartError> {
    let gateway = Gateway::new(config)?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = routes::app(gateway.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                // Told to stop, or the handle was dropped: stop either way.
                if stopped.await.is_err() {
                    tracing::debug!("gateway handle dropped: shutting down");
                }
            })
            .await
    });
    info!("gateway listening on http://{addr}");
    Ok(RunningGateway { addr, gateway, stop, task })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_key_is_refused_and_a_key_never_prints() {
        assert_eq!(Secret::new(b"change-me".to_vec()).err(), Some(WeakSecret(9)));
        let key = Secret::new(vec![7; 32]).unwrap();
        assert_eq!(format!("{key:?}"), "Secret(32 bytes, redacted)");
        assert_ne!(Secret::random().expose(), Secret::random().expose());
        assert_eq!(Secret::random().expose().len(), 32);
    }
}
