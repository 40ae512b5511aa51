//! Retiring `/v1`: every answer under it says that the version is deprecated and when it stops
//! being served, in the standard headers a client library or a proxy can act on, and every call
//! to it is counted, so the team knows who must still move before the date.
//!
//! - `Deprecation: @1796083200` (RFC 9745): the moment the version was deprecated, as a
//!   structured-field date, seconds since 1970: 2026-12-01 00:00:00 UTC.
//! - `Sunset: Tue, 01 Jun 2027 00:00:00 GMT` (RFC 8594): from then on `/v1` may answer
//!   `410 Gone`. Six months after the deprecation, as the chapter's policy says.
//! - `Link: </v2/orders>; rel="successor-version"`: where to go instead.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

// ANCHOR: schedule
/// When `/v1` was deprecated: 2026-12-01 00:00:00 UTC, in seconds since 1970.
pub const V1_DEPRECATED_AT: i64 = 1_796_083_200;
/// When `/v1` stops being served: six months after its deprecation, as an HTTP date.
pub const V1_SUNSET: &str = "Tue, 01 Jun 2027 00:00:00 GMT";
/// Where a `/v1` caller should go instead.
pub const V1_SUCCESSOR: &str = "</v2/orders>; rel=\"successor-version\"";
// ANCHOR_END: schedule

/// Calls still made to a deprecated version: what says whether its sunset can come.
#[derive(Clone, Debug, Default)]
pub struct StillCalled(Arc<AtomicU64>);

impl StillCalled {
    /// How many calls so far.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

// ANCHOR: announce
/// Middleware for `/v1`'s routes: counts the call and marks the answer,
/// errors included.
pub async fn announce_v1(
    State(calls): State<StillCalled>,
    request: Request,
    next: Next,
) -> Response {
    calls.0.fetch_add(1, Relaxed);
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let deprecated = format!("@{V1_DEPRECATED_AT}");
    if let Ok(value) = HeaderValue::from_str(&deprecated) {
        headers.insert("deprecation", value);
    }
    headers.insert("sunset", HeaderValue::from_static(V1_SUNSET));
    headers.append("link", HeaderValue::from_static(V1_SUCCESSOR));
    response
}
// ANCHOR_END: announce
