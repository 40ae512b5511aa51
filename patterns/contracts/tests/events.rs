//! The event schemas: the committed files are what the types generate, every pair of released
//! versions keeps the topic's promise (full compatibility), and each kind of breaking change is
//! caught, shown with a real derived type rather than an edited file.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

use contracts::compat::{Compatibility, breaks};
use contracts::events::{
    PROMISE, committed_form, generated, order_placed_file, order_placed_versions,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// Set to rewrite the committed files from the types (never in CI).
const BLESS: &str = "SCHEMAS_BLESS";
/// What to do when a committed schema and its type differ.
const ADVICE: &str = "A released version's fields must not change: a changed field is a new \
                      version (a new type and file). If only descriptions changed, write the \
                      files from the types: SCHEMAS_BLESS=1 cargo test -p contracts --test events";

#[test]
fn each_committed_schema_is_what_its_type_generates() {
    for (version, schema) in order_placed_versions().unwrap() {
        let fresh = committed_form(&schema).unwrap();
        let advice = format!("(OrderPlaced v{version}) {ADVICE}");
        infra::committed::matches(
            &order_placed_file(version),
            &fresh,
            BLESS,
            &advice,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn every_released_pair_keeps_the_topics_promise() {
    let versions = order_placed_versions().unwrap();
    assert!(versions.len() >= 2, "two versions at least");
    for pair in versions.windows(2) {
        let ((a, old), (b, new)) = (&pair[0], &pair[1]);
        let found = breaks(old, new, PROMISE);
        assert!(found.is_empty(), "v{a} -> v{b}: {found:?}");
    }
}

fn today() -> Value {
    order_placed_versions().unwrap().pop().unwrap().1
}

/// v3 requires the currency that v2 made optional: a v3 reader cannot read v1 payloads.
#[derive(Serialize, Deserialize, ToSchema)]
struct CurrencyRequired {
    order_id: String,
    customer_id: String,
    total_cents: u64,
    currency: String,
}

#[test]
fn a_field_made_required_breaks_backward() {
    let v1 = order_placed_versions().unwrap().remove(0).1;
    let found = breaks(
        &v1,
        &generated::<CurrencyRequired>().unwrap(),
        Compatibility::Backward,
    );
    assert_eq!(
        found,
        ["new reader, old data: `currency` is required, and a payload may lack it"]
    );
    // The reverse direction is fine: an old reader skips the field.
    assert!(
        breaks(
            &v1,
            &generated::<CurrencyRequired>().unwrap(),
            Compatibility::Forward
        )
        .is_empty()
    );
}

/// v3 stops writing `customer_id`, which v2 readers require.
#[derive(Serialize, Deserialize, ToSchema)]
struct CustomerDropped {
    order_id: String,
    total_cents: u64,
    #[serde(default)]
    currency: String,
}

#[test]
fn a_required_field_removed_breaks_forward() {
    let found = breaks(
        &today(),
        &generated::<CustomerDropped>().unwrap(),
        Compatibility::Forward,
    );
    assert_eq!(
        found,
        [
            "old reader, new data: `customer_id` is required, and a payload may lack it"
        ]
    );
    assert!(
        breaks(
            &today(),
            &generated::<CustomerDropped>().unwrap(),
            Compatibility::Backward
        )
        .is_empty()
    );
}

/// v3 sends the total as a decimal string.
#[derive(Serialize, Deserialize, ToSchema)]
struct TotalAsText {
    order_id: String,
    customer_id: String,
    total_cents: String,
    #[serde(default)]
    currency: String,
}

#[test]
fn a_field_retyped_breaks_both_ways() {
    let found =
        breaks(&today(), &generated::<TotalAsText>().unwrap(), Compatibility::Full);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found.iter().all(|r| r.contains("`total_cents` is read as")),
        "{found:?}"
    );
}

/// A v1 reader that refuses unknown fields: then even an added optional field breaks it.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct StrictV1 {
    order_id: String,
    customer_id: String,
    total_cents: u64,
}

#[test]
fn a_strict_reader_makes_an_added_field_break_forward() {
    let strict = generated::<StrictV1>().unwrap();
    let found = breaks(&strict, &today(), Compatibility::Forward);
    assert_eq!(
        found,
        [
            "old reader, new data: `currency` is written, and unknown fields are refused"
        ]
    );
}

/// Each payload that breaks one rule of a version's schema, made from the schema itself: a
/// required field left out, a field of the wrong JSON type, a number below its minimum.
fn violations(schema: &Value, valid: &Value) -> Vec<(String, Value)> {
    let mut cases = Vec::new();
    for name in schema["required"].as_array().unwrap() {
        let name = name.as_str().unwrap();
        let mut payload = valid.clone();
        payload.as_object_mut().unwrap().remove(name);
        cases.push((format!("without {name}"), payload));
    }
    for (name, rules) in schema["properties"].as_object().unwrap() {
        let wrong = match rules["type"].as_str().unwrap() {
            "string" => serde_json::json!(42),
            _ => serde_json::json!("forty-two"),
        };
        let mut payload = valid.clone();
        payload[name] = wrong;
        cases.push((format!("{name} of the wrong type"), payload));
        if let Some(minimum) = rules["minimum"].as_i64() {
            let mut payload = valid.clone();
            payload[name] = serde_json::json!(minimum - 1);
            cases.push((format!("{name} below {minimum}"), payload));
        }
    }
    cases
}

/// Consumers check a payload by decoding it into the type its schema is generated from: every
/// payload the schema refuses, that decoder refuses too, and goes to the dead-letter topic with
/// serde's message (kafka-events' `BadPayload`).
#[test]
fn each_version_decoder_refuses_what_its_schema_refuses() {
    use kafka_events::envelope::{OrderPlaced, OrderPlacedV1};
    let valid = serde_json::json!({
        "order_id": "o-1", "customer_id": "c-42", "total_cents": 2899, "currency": "EUR"
    });
    /// Whether a version's decoder reads a payload.
    type Decodes = fn(Value) -> bool;
    let decoders: [(u32, Decodes); 2] = [
        (1, |p| serde_json::from_value::<OrderPlacedV1>(p).is_ok()),
        (2, |p| serde_json::from_value::<OrderPlaced>(p).is_ok()),
    ];
    for ((version, schema), (same, decodes)) in
        order_placed_versions().unwrap().into_iter().zip(decoders)
    {
        assert_eq!(version, same);
        assert!(decodes(valid.clone()), "v{version} reads the valid payload");
        let cases = violations(&schema, &valid);
        assert!(cases.len() >= 6, "v{version}: {} cases", cases.len());
        for (what, payload) in cases {
            assert!(!decodes(payload), "v{version} decoded a payload {what}");
        }
    }
}

/// A nested part the check cannot compare is reported, never passed in silence.
#[derive(Serialize, Deserialize, ToSchema)]
struct WithAddress {
    order_id: String,
    customer_id: String,
    total_cents: u64,
    #[serde(default)]
    ship_to: Vec<String>,
}

#[test]
fn a_nested_field_is_reported_as_not_compared() {
    let found =
        breaks(&today(), &generated::<WithAddress>().unwrap(), Compatibility::Full);
    assert!(found.iter().any(|r| r.contains("`ship_to` is nested")), "{found:?}");
}

/// Every other message's schema is committed as its type generates it, and reads alone: each
/// `$ref` points into the file's own `$defs`.
#[test]
fn every_message_schema_is_committed_and_self_contained() {
    let messages = contracts::events::messages().unwrap();
    assert_eq!(messages.len(), 3);
    for message in messages {
        let path = contracts::events::schema_file(message.file);
        let fresh = committed_form(&message.schema).unwrap();
        let advice = format!("({}) {ADVICE}", message.travels);
        infra::committed::matches(&path, &fresh, BLESS, &advice)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut refs = Vec::new();
        collect_refs(&message.schema, &mut refs);
        for target in refs {
            let name = target.strip_prefix("#/$defs/").unwrap_or_else(|| {
                panic!("{}: {target} points outside the file", message.file)
            });
            assert!(
                message.schema["$defs"].get(name).is_some(),
                "{}: {target} is not defined",
                message.file
            );
        }
    }
}

fn collect_refs(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(target)) = map.get("$ref") {
                found.push(target.clone());
            }
            map.values().for_each(|v| collect_refs(v, found));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, found)),
        _ => {}
    }
}
