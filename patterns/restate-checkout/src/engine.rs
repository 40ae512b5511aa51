//! The calls this chapter makes to the Restate server, over its plain HTTP APIs: the admin API
//! (register a deployment, read the version) and the ingress (start a workflow, wait for its
//! result). Any HTTP client works; these are the requests a `curl` would send.
//!
//! Addresses come from `RESTATE_ADMIN_URL` (default `http://127.0.0.1:9070`, the server's own
//! default) and `RESTATE_INGRESS_URL` (default `http://127.0.0.1:9180`: the server's default,
//! 8080, is the shop's gateway, and 9080 is where Restate's SDKs serve services by default).

use std::time::Duration;

use orchestration::saga::Terminal;
use serde::Deserialize;
use shop_domain::OrderPlaced;

/// The admin API's address: `RESTATE_ADMIN_URL`, default `http://127.0.0.1:9070`.
pub fn admin_url() -> String {
    env_or("RESTATE_ADMIN_URL", "http://127.0.0.1:9070")
}

/// The ingress's address: `RESTATE_INGRESS_URL`, default `http://127.0.0.1:9180`.
pub fn ingress_url() -> String {
    env_or("RESTATE_INGRESS_URL", "http://127.0.0.1:9180")
}

fn env_or(key: &str, default: &str) -> String {
    match std::env::var(key) {
        Ok(value) if !value.trim().is_empty() => {
            value.trim().trim_end_matches('/').to_owned()
        }
        _ => default.to_owned(),
    }
}

/// Why a call to the server failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No answer (nothing listens, or it took too long), or an unreadable one.
    #[error("{url}: {why}", url = .0, why = causes(.1))]
    Http(String, reqwest::Error),
    /// The server answered with an error status; its body says why.
    #[error("{0} answered {1}: {2}")]
    Status(String, u16, String),
}

/// An error and its causes, on one line: reqwest's own message ("error
/// sending request") does not say that the connection was refused.
fn causes(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Whether a workflow was started by this call or had been before.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Started {
    /// This call started it.
    Now,
    /// A workflow with this key exists already: nothing new was started.
    Before,
}

/// A client of one Restate server.
#[derive(Clone, Debug)]
pub struct Engine {
    http: reqwest::Client,
    admin: String,
    ingress: String,
}

#[derive(Deserialize)]
struct Version {
    version: String,
}

#[derive(Deserialize)]
struct Registered {
    id: String,
}

#[derive(Deserialize)]
struct SendResponse {
    status: String,
}

impl Engine {
    /// The server at `RESTATE_ADMIN_URL` and `RESTATE_INGRESS_URL`.
    pub fn from_env() -> Result<Self, EngineError> {
        Self::new(&admin_url(), &ingress_url())
    }

    /// The server whose admin API and ingress are at these addresses.
    pub fn new(admin: &str, ingress: &str) -> Result<Self, EngineError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| EngineError::Http("building the client".into(), e))?;
        Ok(Engine { http, admin: admin.to_owned(), ingress: ingress.to_owned() })
    }

    /// Where the admin API is.
    pub fn admin(&self) -> &str {
        &self.admin
    }

    /// The server's version, read from its admin API: the check that it is up.
    pub async fn version(&self) -> Result<String, EngineError> {
        let url = format!("{}/version", self.admin);
        let request = self.http.get(&url).timeout(Duration::from_secs(3));
        let version: Version = json(&url, request).await?;
        Ok(version.version)
    }

    /// Registers the service endpoint at `uri` (it serves `Checkout`): the
    /// server asks it which services it has, and from now on sends new
    /// invocations of them there. Invocations already running stay with the
    /// deployment they started on. Returns the deployment's id.
    pub async fn register(&self, uri: &str) -> Result<String, EngineError> {
        let url = format!("{}/deployments", self.admin);
        let body = serde_json::json!({ "uri": uri, "force": true });
        let request =
            self.http.post(&url).json(&body).timeout(Duration::from_secs(10));
        let registered: Registered = json(&url, request).await?;
        Ok(registered.id)
    }

    /// Removes deployment `id` from the server, once nothing runs on it: a
    /// run that registered a service process on a port of its own leaves no
    /// stale deployment behind.
    pub async fn unregister(&self, id: &str) -> Result<(), EngineError> {
        let url = format!("{}/deployments/{id}?force=true", self.admin);
        let request = self.http.delete(&url).timeout(Duration::from_secs(10));
        let http = |e| EngineError::Http(url.clone(), e);
        let response = request.send().await.map_err(http)?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = response.text().await.map_err(http)?;
        Err(EngineError::Status(url.clone(), status.as_u16(), body))
    }

    // ANCHOR: start
    /// Starts the checkout workflow `key` for `order` and returns at once.
    /// The key is the idempotency key: a second start with the same key
    /// starts nothing and says so.
    pub async fn start(
        &self,
        key: &str,
        order: &OrderPlaced,
    ) -> Result<Started, EngineError> {
        let url = format!("{}/Checkout/{key}/run/send", self.ingress);
        let request = self.http.post(&url).json(order);
        let sent: SendResponse = json(&url, request.timeout(WAIT)).await?;
        Ok(match sent.status.as_str() {
            "PreviouslyAccepted" => Started::Before,
            _ => Started::Now,
        })
    }

    /// Waits (at most a minute) for workflow `key` to finish; returns how.
    pub async fn outcome(&self, key: &str) -> Result<Terminal, EngineError> {
        let url = format!("{}/restate/workflow/Checkout/{key}/attach", self.ingress);
        json(&url, self.http.get(&url).timeout(WAIT)).await
    }
    // ANCHOR_END: start

    /// Starts workflow `key` and waits for its end in one request.
    pub async fn checkout(
        &self,
        key: &str,
        order: &OrderPlaced,
    ) -> Result<Terminal, EngineError> {
        let url = format!("{}/Checkout/{key}/run", self.ingress);
        json(&url, self.http.post(&url).json(order).timeout(WAIT)).await
    }
}

/// How long a call that waits for a workflow waits at most.
const WAIT: Duration = Duration::from_secs(60);

async fn json<T: for<'de> Deserialize<'de>>(
    url: &str,
    request: reqwest::RequestBuilder,
) -> Result<T, EngineError> {
    let http = |e| EngineError::Http(url.to_owned(), e);
    let response = request.send().await.map_err(http)?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.map_err(http)?;
        return Err(EngineError::Status(url.to_owned(), status.as_u16(), body));
    }
    response.json().await.map_err(http)
}
