//! Orchestration on an engine: the orchestration chapter's checkout (reserve, authorize, schedule,
//! confirm; compensations in reverse) written as a [Restate](https://restate.dev) workflow with its
//! Rust SDK, over the same participants' rules and databases.
//!
//! The book's own orchestrator keeps a log of intents and outcomes, leases, timers and a pure
//! `decide` function, and recovers from a crash by replaying that log. Here the engine does all
//! of that: the workflow is ordinary sequential code, each step a side effect in `ctx.run` whose
//! result the Restate server journals; when the service process dies, the server calls it again
//! and the SDK replays the journal, handing back every result it holds without running its
//! closure again, until the code reaches the first step the journal does not know.
//!
//! - [`workflow`]: the checkout as a workflow, the part a reader writes.
//! - [`participants`]: what a step's side effect does (the orchestration crate's `apply_once`,
//!   each participant's own schema and inbox), behind a trait so a crash can be planned.
//! - [`faults`]: the crash plan: a wrapper that stops at a step boundary and waits to be killed.
//! - [`service`]: the service process (an HTTP/2 endpoint the server calls) and the handle that
//!   starts it, SIGKILLs it and starts it again.
//! - [`engine`]: the few calls to the server's admin and ingress APIs the examples and tests make.
//!
//! Use an engine when workflows are many and long-lived, when a team would otherwise maintain a
//! saga log, timers and a recovery loop of its own, and when running one more stateful server is
//! a cost the team accepts. Write your own (the orchestration chapter) when the workflow is small,
//! when the log must live in your own database beside your data, or when the engine's licence or
//! operations do not fit. Either way the participants must apply each command once: the engine
//! runs a side effect at least once, not exactly once.

#![warn(missing_docs)]

pub mod engine;
pub mod faults;
pub mod participants;
pub mod service;
pub mod workflow;
