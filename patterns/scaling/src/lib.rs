//! Scaling out, around the payments service of the gRPC chapter: several replicas behind one
//! client, and services that know who calls them.
//!
//! - [`balance`]: why one gRPC channel to one address sends every call to one replica, and a
//!   client that balances per call (power of two choices over peak-EWMA latency) over replicas
//!   that come and go.
//! - [`identity`]: mutual TLS. A certificate authority made at start issues each service a
//!   certificate naming it; payments accepts only callers whose certificate its CA signed, and
//!   of those only the services it serves, whatever headers they send.
//! - [`sidecar`]: what a mesh does instead, reduced to its transport: a proxy beside the caller
//!   and one beside the callee, mutual TLS between them, the services themselves in plain TCP.

#![warn(missing_docs)]

pub mod balance;
pub mod identity;
pub mod sidecar;
