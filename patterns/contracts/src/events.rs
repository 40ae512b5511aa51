//! The schemas of the messages the shop sends, one file per message and version, committed under
//! `schemas/`: the Kafka chapter's `OrderPlaced` (two versions), the checkout's events on Kafka
//! (choreography) and the saga's commands and replies on RabbitMQ (orchestration).
//!
//! Each version's schema is generated from the Rust type that reads or writes it (the `utoipa`
//! derive the orders API's document uses: an OpenAPI 3.1 schema object is JSON Schema 2020-12).
//! A committed version is a promise to the consumers already deployed: `tests/events.rs` fails
//! when a type no longer generates its file, and when a pair of versions breaks the topic's
//! [`PROMISE`].

use std::path::PathBuf;

use kafka_events::envelope::{OrderPlaced, OrderPlacedV1};
use orchestration::checkout::Command;
use orchestration::saga::Reply;
use serde_json::Value;
use shop_domain::Event;
use utoipa::{PartialSchema, ToSchema};

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

/// One message's schema as committed: where it travels, the file, the schema.
pub struct Message {
    /// Where it travels, for a reader of the test's failures.
    pub travels: &'static str,
    /// The file under `schemas/`.
    pub file: &'static str,
    /// Generated from its type, with the schemas it refers to under `$defs`.
    pub schema: Value,
}

/// The schemas of the choreography's and the orchestration's messages: version 1 of each, the
/// only one so far (a second version must keep [`PROMISE`] against it, as `OrderPlaced`'s does).
pub fn messages() -> serde_json::Result<Vec<Message>> {
    Ok(vec![
        Message {
            travels: "Kafka, <prefix>-<service>: the checkout's events (the payload is `data`, \
                      the name is the event-type header)",
            file: "checkout_event.v1.json",
            schema: standalone::<Event>()?,
        },
        Message {
            travels: "RabbitMQ, each participant's command queue",
            file: "saga_command.v1.json",
            schema: standalone::<Command>()?,
        },
        Message {
            travels: "RabbitMQ, the saga's reply queue",
            file: "saga_reply.v1.json",
            schema: standalone::<Reply>()?,
        },
    ])
}

/// `T`'s schema as a file of its own: the schemas it refers to go under `$defs`, and each
/// reference points there, so that any JSON Schema tool can read the file alone.
pub fn standalone<T: ToSchema>() -> serde_json::Result<Value> {
    let mut parts = Vec::new();
    T::schemas(&mut parts);
    let mut schema = serde_json::to_value(T::schema())?;
    if !parts.is_empty() {
        let mut defs = serde_json::Map::new();
        for (name, part) in parts {
            defs.insert(name, serde_json::to_value(part)?);
        }
        schema["$defs"] = Value::Object(defs);
    }
    point_refs_at_defs(&mut schema);
    Ok(schema)
}

fn point_refs_at_defs(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(target)) = map.get_mut("$ref")
                && let Some(name) = target.strip_prefix("#/components/schemas/")
            {
                *target = format!("#/$defs/{name}");
            }
            map.values_mut().for_each(point_refs_at_defs);
        }
        Value::Array(items) => items.iter_mut().for_each(point_refs_at_defs),
        _ => {}
    }
}

/// Where version `version` of `OrderPlaced` is committed.
pub fn order_placed_file(version: u32) -> PathBuf {
    schema_file(&format!("order_placed.v{version}.json"))
}

/// The path of a committed schema file.
pub fn schema_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemas").join(name)
}

/// A schema as it is committed: pretty JSON and a final newline.
pub fn committed_form(schema: &Value) -> serde_json::Result<String> {
    let mut text = serde_json::to_string_pretty(schema)?;
    text.push('\n');
    Ok(text)
}
