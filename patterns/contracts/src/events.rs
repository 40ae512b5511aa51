//! The schemas of the events on the orders topic, one per version, committed under `schemas/`.
//!
//! Each version's schema is generated from the Rust type that reads or writes it (the `utoipa`
//! derive the orders API's document uses: an OpenAPI 3.1 schema object is JSON Schema 2020-12).
//! A committed version is a promise to the consumers already deployed: `tests/events.rs` fails
//! when a type no longer generates its file, and when a pair of versions breaks the topic's
//! [`PROMISE`].

use std::path::PathBuf;

use kafka_events::envelope::{OrderPlaced, OrderPlacedV1};
use serde_json::Value;
use utoipa::PartialSchema;

use crate::compat::Compatibility;

/// Either side may upgrade first: every reader reads every version.
pub const PROMISE: Compatibility = Compatibility::Full;

/// Every released version of `OrderPlaced`, oldest first, as its type generates it today.
pub fn order_placed_versions() -> serde_json::Result<Vec<(u32, Value)>> {
    Ok(vec![(1, generated::<OrderPlacedV1>()?), (2, generated::<OrderPlaced>()?)])
}

/// The JSON Schema `T` derives, as JSON.
pub fn generated<T: PartialSchema>() -> serde_json::Result<Value> {
    serde_json::to_value(T::schema())
}

/// Where version `version` of `OrderPlaced` is committed.
pub fn order_placed_file(version: u32) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("schemas")
        .join(format!("order_placed.v{version}.json"))
}

/// A schema as it is committed: pretty JSON and a final newline.
pub fn committed_form(schema: &Value) -> serde_json::Result<String> {
    let mut text = serde_json::to_string_pretty(schema)?;
    text.push('\n');
    Ok(text)
}
