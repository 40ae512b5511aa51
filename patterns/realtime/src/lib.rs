//! Real-time channels: the shop pushes each order's status changes to a browser as
//! they happen, over a WebSocket served by axum, to a page served by the same
//! process.
//!
//! **Use it** when a person is watching: a page that must change the moment an order
//! ships, without polling. **Do not use it** between services: a browser channel
//! delivers to whoever is connected right now and forgets the rest, so a backend
//! that must not miss an event reads the event log (Kafka, a queue) itself, with its
//! own offsets and acknowledgements.
//!
//! The crate is split so the promises do not depend on the transport:
//!
//! - [`hub`]: numbered events, a bounded history for resuming, a bounded buffer per
//!   subscriber, and the slow-subscriber policy. No WebSocket in sight.
//! - [`server`]: the axum router, the page, and the per-connection loop: pushes,
//!   heartbeats, close frames with reasons for slow, dead, oversized and malformed.
//! - [`shop`]: an in-process source of order events standing in for the shop's Kafka
//!   topic.
//!
//! What production adds: authentication on the upgrade request (a cookie or a ticket
//! in the query string, since browsers cannot set headers on it), a limit on
//! connections per user, sticky sessions or a shared history (Redis streams, Kafka)
//! when there is more than one server, and an `Origin` check against cross-site
//! WebSocket hijacking.

#![warn(missing_docs)]

pub mod hub;
pub mod server;
pub mod shop;

pub use hub::{Event, Hub, HubConfig, OrderId, Status};
pub use server::{AppState, Channel, ChannelConfig, Closer, Push, app, close, page};
pub use shop::Shop;
