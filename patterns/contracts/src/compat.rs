//! Whether a new version of a payload's schema keeps the promise the old one made.
//!
//! The check reads the parts of a JSON Schema that decide whether a reader can decode a writer's
//! payload: the properties, their JSON types, which are required, and whether unknown properties
//! are refused (`additionalProperties: false`, serde's `deny_unknown_fields`). It is what a schema
//! registry runs when a producer registers a new version, run here in a test instead. It compares
//! flat payloads: a property that is itself an object, a list or a reference to another schema
//! is reported as one it cannot judge, so such a change fails until someone compares it by hand
//! (or teaches the check to recurse).

use serde_json::Value;

/// What a topic promises about the versions of its payloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compatibility {
    /// A new reader reads every older payload: consumers upgrade first.
    Backward,
    /// An old reader reads every newer payload: producers upgrade first.
    Forward,
    /// Both: either side may upgrade first, which the orders topic promises.
    Full,
}

// ANCHOR: breaks
/// Why `new` breaks the promise `old` made, a line per reason; empty if kept.
pub fn breaks(old: &Value, new: &Value, promise: Compatibility) -> Vec<String> {
    let mut reasons = Vec::new();
    if matches!(promise, Compatibility::Backward | Compatibility::Full) {
        reasons.extend(
            unreadable(new, old)
                .into_iter()
                .map(|r| format!("new reader, old data: {r}")),
        );
    }
    if matches!(promise, Compatibility::Forward | Compatibility::Full) {
        reasons.extend(
            unreadable(old, new)
                .into_iter()
                .map(|r| format!("old reader, new data: {r}")),
        );
    }
    reasons
}

/// What stops a reader with schema `reader` from decoding a payload written
/// with `writer`.
fn unreadable(reader: &Value, writer: &Value) -> Vec<String> {
    let mut reasons = Vec::new();
    let (read, written) = (properties(reader), properties(writer));
    if read.is_empty() || written.is_empty() {
        reasons.push(
            "a schema without properties, which this check cannot compare".into(),
        );
    }
    for (name, schema) in read.iter().chain(&written) {
        if !flat(schema) {
            reasons.push(format!(
                "`{name}` is nested, which this check does not compare"
            ));
        }
    }
    for name in required(reader) {
        if !required(writer).contains(&name) {
            reasons.push(format!("`{name}` is required, and a payload may lack it"));
        }
    }
    for (name, wants) in &read {
        let Some((_, has)) = written.iter().find(|(n, _)| n == name) else {
            continue;
        };
        if json_type(wants) != json_type(has) {
            reasons.push(format!(
                "`{name}` is read as {} and written as {}",
                json_type(wants),
                json_type(has)
            ));
        }
    }
    if reader.get("additionalProperties") == Some(&Value::Bool(false)) {
        for (name, _) in &written {
            if !read.iter().any(|(n, _)| n == name) {
                reasons.push(format!(
                    "`{name}` is written, and unknown fields are refused"
                ));
            }
        }
    }
    reasons
}
// ANCHOR_END: breaks

fn properties(schema: &Value) -> Vec<(String, Value)> {
    schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|map| map.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

fn required(schema: &Value) -> Vec<String> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .map(|names| {
            names.iter().filter_map(Value::as_str).map(str::to_owned).collect()
        })
        .unwrap_or_default()
}

/// Whether a property is a plain value this check compares: a string, number, integer or
/// boolean, not an object, a list or a reference.
fn flat(property: &Value) -> bool {
    matches!(
        property.get("type").and_then(Value::as_str),
        Some("string" | "number" | "integer" | "boolean")
    )
}

/// A property's JSON type with its format (`integer/int64`), as the wire sees it.
fn json_type(property: &Value) -> String {
    let kind = match property.get("type") {
        Some(Value::String(kind)) => kind.clone(),
        Some(other) => other.to_string(),
        None => "any".to_owned(),
    };
    match property.get("format").and_then(Value::as_str) {
        Some(format) => format!("{kind}/{format}"),
        None => kind,
    }
}
