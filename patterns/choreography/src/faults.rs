//! Breaking a service on purpose, from outside its code. The tests and the example's "break it"
//! flags use these; the service's own code has no test branch.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use outbox::OutboxEvent;
use tracing::{Span, warn};

use crate::Error;
use crate::service::PublishNow;

/// The dual write's publisher with one death planned: the first time it is asked
/// to publish, the process dies instead, after its commit and before the event
/// left. Later calls (a restarted process) publish through `inner`.
pub struct DiesBeforePublishing<P> {
    inner: P,
    armed: AtomicBool,
}

impl<P> DiesBeforePublishing<P> {
    /// `armed`: whether the death is still to come (a process's first life).
    pub fn new(inner: P, armed: bool) -> Self {
        DiesBeforePublishing { inner, armed: AtomicBool::new(armed) }
    }
}

impl<P: PublishNow> PublishNow for DiesBeforePublishing<P> {
    async fn publish_now(&self, row: &OutboxEvent) -> Result<(), Error> {
        if self.armed.swap(false, Relaxed) {
            warn!(
                "crash! committed, then died before publishing: no outbox holds the event"
            );
            return Err(Error::Died(Span::current()));
        }
        self.inner.publish_now(row).await
    }
}
