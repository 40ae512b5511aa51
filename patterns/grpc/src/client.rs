//! Connecting to the payments service, and a unary call with a deadline.
//!
//! [`authorize`] sends its deadline to the server (`grpc-timeout`) and also enforces it locally:
//! if the deadline passes before any answer arrives, the caller gets `DEADLINE_EXCEEDED` from its
//! own clock. (tonic reports its own local timer as `CANCELLED`; checking our deadline first keeps
//! the status code the gRPC specification gives a caller whose deadline passed.)

use std::net::SocketAddr;
use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

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
/// `Authorize` with a deadline the server can see, enforced on both sides.
pub async fn authorize(
    client: &mut Client,
    message: AuthorizeRequest,
    deadline: Duration,
) -> Result<Payment, Status> {
    let mut request = Request::new(message);
    request.set_timeout(deadline); // sent as the grpc-timeout header
    tokio::select! {
        // Our own clock first, so a passed deadline always reads as DEADLINE_EXCEEDED.
        biased;
        () = tokio::time::sleep(deadline) => Err(Status::deadline_exceeded(format!("no answer within {deadline:?}"))),
        answer = client.authorize(request) => answer.map(tonic::Response::into_inner),
    }
}
// ANCHOR_END: authorize
