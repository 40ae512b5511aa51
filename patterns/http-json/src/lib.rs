//! Request/response over HTTP/JSON: the shop's orders service (axum) and its client (reqwest).
//!
//! What this crate teaches, one module each:
//!
//! - [`server`]: a service built as `fn app(state) -> Router`, so tests drive it without a socket
//!   and the example serves it on `127.0.0.1:0`. Two API versions (`/v1`, `/v2`) served side by side.
//! - [`deprecation`]: `/v1` announces its retirement in `Deprecation` and `Sunset` headers, and
//!   its calls are counted.
//! - [`problem`]: every error is an RFC 9457 `application/problem+json` body that names what went
//!   wrong (malformed JSON, a missing field, a wrong content type, a body too large, an unknown order).
//! - [`idempotency`]: `POST /orders` requires an `Idempotency-Key`; a retry with the same key
//!   replays the first response instead of creating a second order.
//! - [`openapi`]: the API's OpenAPI 3.1 document, built from the types and the routes' versions,
//!   served at `/openapi.json`.
//! - [`client`]: a typed client with a total-request timeout, whose errors tell a timeout (the
//!   order may or may not exist: retry with the same key) from a refusal (do not retry).
//!
//! Use HTTP/JSON when callers are many and varied (browsers, other teams, scripts), when a human
//! should be able to read the traffic, and when one request maps to one answer. Prefer gRPC between
//! services you own that need streaming or a strict schema, and messaging when the caller should not
//! wait for the callee at all.

#![warn(missing_docs)]

pub mod client;
pub mod deprecation;
pub mod idempotency;
pub mod openapi;
pub mod orders;
pub mod problem;
pub mod server;
pub mod versions;
