//! The event source: an in-process stand-in for the shop's order events.
//!
//! In the shop, orders, payments and shipping publish their changes to Kafka, and
//! the service that owns this channel consumes them and calls [`Hub::publish`]. Here
//! one task per order walks it through its statuses, so the example and the page
//! need no broker. The hub does not care which it is: that is the point of keeping
//! it free of any transport.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tracing::debug;

use crate::hub::{Hub, OrderId, Status};

/// Places orders and moves each one through [`Status::ALL`], one step every `step`.
#[derive(Clone)]
pub struct Shop {
    hub: Hub,
    step: Duration,
    next_order: Arc<AtomicU64>,
}

impl Shop {
    /// A shop publishing to `hub`. Order ids start at 1; a short `step` lets a test
    /// or a demo watch a whole order's life in moments.
    pub fn new(hub: Hub, step: Duration) -> Shop {
        Shop { hub, step, next_order: Arc::new(AtomicU64::new(1)) }
    }

    /// Places an order (publishing `placed` at once) and returns its id; the later
    /// statuses follow on a task of their own.
    pub fn place_order(&self) -> OrderId {
        let order = self.next_order.fetch_add(1, Ordering::Relaxed);
        let (first, rest) = Status::ALL.split_at(1);
        let event = self.hub.publish(order, first[0]);
        debug!(order, seq = event.seq, status = first[0].as_str(), "order event");
        let (hub, step) = (self.hub.clone(), self.step);
        tokio::spawn(async move {
            for &status in rest {
                tokio::time::sleep(step).await;
                let event = hub.publish(order, status);
                debug!(
                    order,
                    seq = event.seq,
                    status = status.as_str(),
                    "order event"
                );
            }
        });
        order
    }
}
