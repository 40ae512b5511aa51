//! Fallbacks: an older or default answer when the real one cannot be had, marked as degraded.
//!
//! A fallback trades correctness for availability, so it must never pass for the real thing: the
//! type says which one the caller got, and a degraded answer carries why, and how old it is.

use std::fmt::Display;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

// ANCHOR: Answer
/// An answer, and whether it is the real one.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer<T> {
    /// The real answer, just obtained.
    Fresh(T),
    /// A stand-in, which the caller must not mistake for the real answer.
    Degraded {
        /// The last good answer, or the default.
        value: T,
        /// Why the real answer could not be had.
        why: String,
        /// How old the value is; `None` for a default that was never real.
        age: Option<Duration>,
    },
}
// ANCHOR_END: Answer

impl<T> Answer<T> {
    /// The value, fresh or not, for callers that show it either way (and mark it).
    pub fn value(&self) -> &T {
        match self {
            Answer::Fresh(value) | Answer::Degraded { value, .. } => value,
        }
    }

    /// Whether to say so: to the user where it matters, in metrics always.
    pub fn is_degraded(&self) -> bool {
        matches!(self, Answer::Degraded { .. })
    }
}

/// The last answer that was real, and when it was. An answer older than the
/// maximum age is not served: past some age a stale value misleads more than
/// "unknown" does (yesterday's stock level, last week's price).
#[derive(Debug, Default)]
pub struct LastKnownGood<T> {
    slot: Mutex<Option<(T, Instant)>>,
    max_age: Option<Duration>,
}

impl<T: Clone> LastKnownGood<T> {
    /// Serves the last good answer however old it is: only for values that cannot
    /// go wrong with age. Prefer [`with_max_age`](Self::with_max_age).
    pub fn new() -> Self {
        LastKnownGood { slot: Mutex::new(None), max_age: None }
    }

    /// Serves the last good answer only while it is at most `max_age` old; after
    /// that, the default, or the call's error.
    pub fn with_max_age(max_age: Duration) -> Self {
        LastKnownGood { slot: Mutex::new(None), max_age: Some(max_age) }
    }

    fn remember(&self, value: T) {
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((value, Instant::now()));
    }

    /// The last good answer and its age, unless it is too old to serve.
    fn recall(&self) -> Option<(T, Duration)> {
        self.slot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(v, at)| (v.clone(), at.elapsed()))
            .filter(|(_, age)| self.max_age.is_none_or(|max| *age <= max))
    }

    // ANCHOR: or_fallback
    /// The call's answer if it succeeds (remembered for next time); else the last
    /// good answer if it is not too old, else `default`, both marked degraded; else
    /// the call's error.
    pub async fn or_fallback<E: Display>(
        &self,
        call: impl Future<Output = Result<T, E>>,
        default: Option<T>,
    ) -> Result<Answer<T>, E> {
        match call.await {
            Ok(value) => {
                self.remember(value.clone());
                Ok(Answer::Fresh(value))
            }
            Err(error) => match (self.recall(), default) {
                (Some((value, age)), _) => Ok(Answer::Degraded {
                    value,
                    why: error.to_string(),
                    age: Some(age),
                }),
                (None, Some(value)) => {
                    Ok(Answer::Degraded { value, why: error.to_string(), age: None })
                }
                (None, None) => Err(error),
            },
        }
    }
    // ANCHOR_END: or_fallback
}
