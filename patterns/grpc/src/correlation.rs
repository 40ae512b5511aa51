//! Correlation ids across a gRPC call, carried by interceptors.
//!
//! The client's interceptor ([`AttachCorrelationId`]) puts the caller's id in the
//! `x-correlation-id` metadata of every request. The server's interceptor ([`accept`]) reads it,
//! makes a new one when the caller sent none (or one that is not sane), and stores it in the
//! request's extensions, where every handler finds it ([`CorrelationId::of`]) to tag its logs and
//! echo it in the response. One id then threads through both sides' logs.

use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::service::Interceptor;
use tonic::{Request, Status};
use uuid::Uuid;

/// The metadata key that carries the correlation id from call to call.
pub const CORRELATION_ID: &str = "x-correlation-id";

/// The correlation id of the call being handled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorrelationId(pub String);

impl CorrelationId {
    /// The id the server interceptor stored; `"unknown"` if the service runs without it.
    pub fn of<T>(request: &Request<T>) -> CorrelationId {
        request
            .extensions()
            .get::<CorrelationId>()
            .cloned()
            .unwrap_or_else(|| CorrelationId("unknown".into()))
    }

    /// Echoes the id in response metadata, so the caller can match answers to requests.
    pub fn echo(&self, metadata: &mut MetadataMap) {
        if let Ok(value) = self.0.parse::<AsciiMetadataValue>() {
            metadata.insert(CORRELATION_ID, value);
        }
    }
}

impl std::fmt::Display for CorrelationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The rule for ids on both sides: 1 to 128 visible ASCII characters.
pub fn is_sane(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

// ANCHOR: accept
/// Server interceptor: adopts the caller's correlation id or makes one.
/// Never rejects a call.
pub fn accept(mut request: Request<()>) -> Result<Request<()>, Status> {
    let id = request
        .metadata()
        .get(CORRELATION_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_sane(v))
        .map(str::to_owned)
        .unwrap_or_else(|| Uuid::new_v4().to_string());
    request.extensions_mut().insert(CorrelationId(id));
    Ok(request)
}
// ANCHOR_END: accept

// ANCHOR: AttachCorrelationId
/// Client interceptor: sends one correlation id with every call it makes.
#[derive(Clone, Debug)]
pub struct AttachCorrelationId(AsciiMetadataValue);

impl AttachCorrelationId {
    /// Fails on ids the server would replace (see [`is_sane`]).
    pub fn new(id: &str) -> Result<Self, Status> {
        let invalid = || {
            Status::invalid_argument(format!(
                "correlation id {id:?} must be 1 to 128 visible ASCII characters"
            ))
        };
        if !is_sane(id) {
            return Err(invalid());
        }
        id.parse().map(AttachCorrelationId).map_err(|_| invalid())
    }
}

impl Interceptor for AttachCorrelationId {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request.metadata_mut().insert(CORRELATION_ID, self.0.clone());
        Ok(request)
    }
}
// ANCHOR_END: AttachCorrelationId

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adopts_a_sane_id_and_replaces_a_missing_or_odd_one() {
        let mut request = Request::new(());
        request
            .metadata_mut()
            .insert(CORRELATION_ID, "checkout-7f3a".parse().unwrap());
        assert_eq!(CorrelationId::of(&accept(request).unwrap()).0, "checkout-7f3a");

        let generated = CorrelationId::of(&accept(Request::new(())).unwrap()).0;
        assert!(Uuid::parse_str(&generated).is_ok());

        let mut request = Request::new(());
        request.metadata_mut().insert(CORRELATION_ID, "has space".parse().unwrap());
        assert_ne!(CorrelationId::of(&accept(request).unwrap()).0, "has space");
    }

    #[test]
    fn the_client_interceptor_sets_the_header() {
        let mut attach = AttachCorrelationId::new("checkout-1").unwrap();
        let request = attach.call(Request::new(())).unwrap();
        assert_eq!(request.metadata().get(CORRELATION_ID).unwrap(), "checkout-1");
        assert!(AttachCorrelationId::new("naïve").is_err());
    }
}
