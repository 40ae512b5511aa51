//! Contracts and evolution: one contract per edge, generated from the code, and checks that a
//! change keeps every promise already made.
//!
//! The contracts themselves live with the code they describe: the orders API's OpenAPI document in
//! `http_json::openapi`, the gateway's in `gateway::openapi`, the payments service's `.proto` files
//! (and their breaking-change test) in the `grpc` crate. This crate holds what is about
//! evolution across versions:
//!
//! - [`compat`]: whether a new JSON Schema of a payload keeps the compatibility a topic promises
//!   (backward, forward or full), with the reason for each break.
//! - [`events`]: the committed schemas of `OrderPlaced`, version by version.
//!
//! Use generated contracts when more than one team, language or deploy cadence meets at an edge;
//! a contract written by hand beside the code drifts from it at the first busy week. Within one
//! process, the types are the contract and none of this is needed.

#![warn(missing_docs)]

pub mod compat;
pub mod events;
