//! A typed client for the orders service, with a total-request timeout.
//!
//! The timeout is the caller's protection against a slow service: without one, a stuck upstream
//! holds the caller's task, connection and memory for as long as it likes. Hitting it yields
//! [`ClientError::Timeout`], which deliberately says nothing about the order: the request may have
//! been processed after the caller stopped waiting. That is why [`OrdersClient::create`] takes the
//! idempotency key from the caller: the caller keeps it, and a retry with the same key is safe.

use std::time::Duration;

use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::idempotency::{IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED};
use crate::orders::NewOrder;
use crate::problem::{PROBLEM_JSON, Problem};
use crate::server::CORRELATION_ID;
use crate::versions::{v1::OrderV1, v2::OrderV2};

// ANCHOR: ClientError
/// Why a call failed, in the terms a caller decides on.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No answer in time. The outcome is unknown: retry only with the same key.
    #[error(
        "no answer within {0:?}; the request may or may not have been processed"
    )]
    Timeout(Duration),
    /// The service answered with a problem (4xx: fix the request; 5xx: maybe retry).
    #[error("{} {}: {}", .0.status, .0.title, .0.detail)]
    Rejected(Problem),
    /// The service answered with something that is not the documented contract.
    #[error("unexpected {status} response ({reason}): {body}")]
    Unexpected {
        /// The status the service answered.
        status: StatusCode,
        /// What did not match: the status, or why the body did not decode.
        reason: String,
        /// The body as received, for the log: what the service actually said.
        body: String,
    },
    /// Connecting or talking to the service failed.
    #[error("transport error: {0}")]
    Transport(#[source] reqwest::Error),
}
// ANCHOR_END: ClientError

impl ClientError {
    /// Whether retrying (with the same idempotency key) can help.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Timeout(_) | ClientError::Transport(_) => true,
            ClientError::Rejected(p) => {
                p.status >= 500 || p.status == 409 || p.status == 429
            }
            ClientError::Unexpected { status, .. } => status.is_server_error(),
        }
    }

    /// The problem body, when the service sent one.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            ClientError::Rejected(p) => Some(p),
            _ => None,
        }
    }
}

/// A created order, and whether the service replayed it for a repeated idempotency key.
#[derive(Debug, Clone, PartialEq)]
pub struct Created {
    /// The order as the service stored it.
    pub order: OrderV1,
    /// `true` when this answer is a replay: nothing new was created.
    pub replayed: bool,
}

/// The orders API, version 1 by default (`get_v2` reads the version 2 representation).
#[derive(Clone, Debug)]
pub struct OrdersClient {
    http: reqwest::Client,
    base_url: String,
    timeout: Duration,
    correlation_id: Option<String>,
}

impl OrdersClient {
    /// A client for the service at `base_url` (`http://127.0.0.1:8080`) whose every call gives up
    /// after `timeout`.
    pub fn new(
        base_url: impl Into<String>,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            // Talk to the service directly, even with HTTP_PROXY set in the
            // environment: a proxy would add its own timeouts and errors.
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(2)))
            .build()
            .map_err(ClientError::Transport)?;
        Ok(OrdersClient {
            http,
            base_url: base_url.into(),
            timeout,
            correlation_id: None,
        })
    }

    /// The same client with a different timeout (it shares the connection pool).
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        OrdersClient { timeout, ..self.clone() }
    }

    /// Sends this correlation id with every request, so the service's logs line up with ours.
    pub fn with_correlation_id(&self, id: impl Into<String>) -> Self {
        OrdersClient { correlation_id: Some(id.into()), ..self.clone() }
    }

    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base_url))
            .timeout(self.timeout);
        if let Some(id) = &self.correlation_id {
            request = request.header(CORRELATION_ID, id);
        }
        request
    }

    // ANCHOR: create
    /// `POST /v1/orders`. Reuse `idempotency_key` for every retry of the same order.
    pub async fn create(
        &self,
        idempotency_key: &str,
        order: &NewOrder,
    ) -> Result<Created, ClientError> {
        let response = self
            .send(
                self.request(reqwest::Method::POST, "/v1/orders")
                    .header(IDEMPOTENCY_KEY, idempotency_key)
                    .json(order),
            )
            .await?;
        let replayed =
            response.headers().get(IDEMPOTENT_REPLAYED).is_some_and(|v| v == "true");
        let order = self.decode(response, StatusCode::CREATED).await?;
        Ok(Created { order, replayed })
    }
    // ANCHOR_END: create

    /// `GET /v1/orders/{id}`.
    pub async fn get(&self, id: Uuid) -> Result<OrderV1, ClientError> {
        let response = self
            .send(self.request(reqwest::Method::GET, &format!("/v1/orders/{id}")))
            .await?;
        self.decode(response, StatusCode::OK).await
    }

    /// `GET /v2/orders/{id}`: the same order in the version 2 representation.
    pub async fn get_v2(&self, id: Uuid) -> Result<OrderV2, ClientError> {
        let response = self
            .send(self.request(reqwest::Method::GET, &format!("/v2/orders/{id}")))
            .await?;
        self.decode(response, StatusCode::OK).await
    }

    /// `GET /v1/orders`, optionally for one customer.
    pub async fn list(
        &self,
        customer_id: Option<&str>,
    ) -> Result<Vec<OrderV1>, ClientError> {
        let mut request = self.request(reqwest::Method::GET, "/v1/orders");
        if let Some(customer) = customer_id {
            request = request.query(&[("customer_id", customer)]);
        }
        self.decode(self.send(request).await?, StatusCode::OK).await
    }

    /// `POST` an arbitrary body with an arbitrary content type, for showing how the service treats
    /// bad input. Returns the problem the service answered with.
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
        idempotency_key: &str,
    ) -> Result<Problem, ClientError> {
        let request = self
            .request(reqwest::Method::POST, path)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .header(IDEMPOTENCY_KEY, idempotency_key)
            .body(body);
        let response = self.send(request).await?;
        match self.decode::<serde_json::Value>(response, StatusCode::CREATED).await {
            Err(ClientError::Rejected(problem)) => Ok(problem),
            Err(other) => Err(other),
            Ok(accepted) => Err(ClientError::Unexpected {
                status: StatusCode::CREATED,
                reason: "bad input was accepted".into(),
                body: accepted.to_string(),
            }),
        }
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        request.send().await.map_err(|e| self.transport(e))
    }

    /// A reqwest error in the caller's terms: the total-request timeout can fire
    /// while waiting for the headers or while reading the body, and both are the
    /// same ambiguous [`ClientError::Timeout`].
    fn transport(&self, error: reqwest::Error) -> ClientError {
        if error.is_timeout() {
            ClientError::Timeout(self.timeout)
        } else {
            ClientError::Transport(error)
        }
    }

    /// Decodes the expected success body, or turns a problem (or anything else)
    /// into an error.
    async fn decode<T: DeserializeOwned>(
        &self,
        response: reqwest::Response,
        expected: StatusCode,
    ) -> Result<T, ClientError> {
        let status = response.status();
        let is_problem = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with(PROBLEM_JSON));
        let bytes = response.bytes().await.map_err(|e| self.transport(e))?;
        let unexpected = |reason: String| ClientError::Unexpected {
            status,
            reason,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        };
        if status == expected {
            return serde_json::from_slice(&bytes)
                .map_err(|e| unexpected(format!("undecodable body: {e}")));
        }
        if !is_problem {
            return Err(unexpected(format!("expected {expected}")));
        }
        match serde_json::from_slice::<Problem>(&bytes) {
            Ok(problem) => Err(ClientError::Rejected(problem)),
            Err(e) => Err(unexpected(format!("undecodable problem: {e}"))),
        }
    }
}
