//! Connecting to the payments service, and a unary call with a deadline.
//!
//! [`authorize`] sends its deadline to the server (`grpc-timeout`, set by `Request::set_timeout`);
//! tonic's channel also arms a timer from that header, so the caller stops waiting when it passes.
//! tonic reports that local timer as `CANCELLED` ("Timeout expired"), the code gRPC keeps for a call
//! someone cancelled. [`name_the_deadline`] gives it the code the gRPC specification gives a caller
//! whose deadline passed, `DEADLINE_EXCEEDED`, so retry policies and dashboards can tell the two
//! apart.

use std::error::Error;
use std::net::SocketAddr;
use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status, TimeoutExpired};

use crate::correlation::AttachCorrelationId;
use crate::proto::v2::payments_client::PaymentsClient;
use crate::proto::v2::{AuthorizeRequest, Payment};

/// A payments client that tags every call with one correlation id.
pub type Client = PaymentsClient<InterceptedService<Channel, AttachCorrelationId>>;

/// Connects to `addr` (plain HTTP/2 on loopback; production adds TLS) within two seconds.
pub async fn connect(
    addr: SocketAddr,
    correlation_id: &str,
) -> Result<Client, Status> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| Status::invalid_argument(e.to_string()))?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|e| {
            Status::unavailable(format!(
                "cannot reach the payments service at {addr}: {e}"
            ))
        })?;
    Ok(PaymentsClient::with_interceptor(
        channel,
        AttachCorrelationId::new(correlation_id)?,
    ))
}

// ANCHOR: authorize
/// `Authorize` with a deadline: sent to the server, and kept by tonic here.
pub async fn authorize(
    client: &mut Client,
    message: AuthorizeRequest,
    deadline: Duration,
) -> Result<Payment, Status> {
    let mut request = Request::new(message);
    request.set_timeout(deadline); // the grpc-timeout header
    let answer = client.authorize(request).await;
    answer.map(tonic::Response::into_inner).map_err(name_the_deadline)
}

/// tonic's own timer fired (its error is in the status's source chain):
/// `DEADLINE_EXCEEDED`, not `CANCELLED`. Any other status passes unchanged.
pub fn name_the_deadline(status: Status) -> Status {
    let mut cause = status.source();
    while let Some(error) = cause {
        if error.is::<TimeoutExpired>() {
            let message = format!("no answer in time: {}", status.message());
            return Status::deadline_exceeded(message);
        }
        cause = error.source();
    }
    status
}
// ANCHOR_END: authorize
