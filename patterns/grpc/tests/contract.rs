//! The contract guards itself: today's schema (v2) compared with the last released one (v1), by
//! their descriptors, for every change that would break a client or a server built on the old
//! one. Then each rule is shown catching a change made on purpose to a copy of today's schema.
//!
//! The comparison works on the encoded `FileDescriptorSet`s that `build.rs` has `protoc` write,
//! decoded with `prost-types`: no schema registry and no tool beyond the build this crate has.
//! It errs on the strict side. Fields are matched by number, so a field renamed under the same
//! number (names never travel) is not reported; but messages, enums and methods are matched by
//! name, so renaming one reads as removing it, and a few changes the protobuf specification calls
//! wire-compatible are reported anyway (an enum for an `int32`, a message for `bytes`, a string
//! made repeated): each is a trap for code built on the old schema even where the bytes parse.
//! It does not look at oneofs: moving existing fields into one would pass unnoticed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

use std::collections::BTreeMap;

use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{
    DescriptorProto, EnumDescriptorProto, FieldDescriptorProto, FileDescriptorSet,
    ServiceDescriptorProto,
};

// ANCHOR: Breaking
/// A change that breaks code built on the old schema.
#[derive(Debug, PartialEq, Eq)]
enum Breaking {
    /// Old clients call a method that no longer exists: UNIMPLEMENTED.
    MethodRemoved(String),
    /// A method takes or returns another message, or streams where it did not.
    MethodChanged(String, String),
    /// A message or an enum the old schema had is gone.
    TypeRemoved(String),
    /// A field is gone and its number is not reserved: a later field may take it,
    /// and old senders' values would be read as the new field's.
    FieldRemovedUnreserved(String, i32),
    /// A field's number now carries a type that does not read the old bytes.
    FieldRetyped(String, i32, String),
    /// A field that was optional must now be sent: old senders' messages fail.
    FieldMadeRequired(String, i32),
    /// A field went from one value to many, or back.
    CardinalityChanged(String, i32),
    /// An enum value is gone and its number is not reserved.
    EnumValueRemoved(String, i32),
}
// ANCHOR_END: Breaking

/// Every message, enum and method of a schema, by full name (`shop.payments.Payment`).
#[derive(Default)]
struct Index {
    messages: BTreeMap<String, DescriptorProto>,
    enums: BTreeMap<String, EnumDescriptorProto>,
    methods: BTreeMap<String, (String, String, bool, bool)>,
}

fn index(set: &FileDescriptorSet) -> Index {
    fn messages(index: &mut Index, scope: &str, all: &[DescriptorProto]) {
        for message in all {
            let name = format!("{scope}.{}", message.name());
            messages(index, &name, &message.nested_type);
            for e in &message.enum_type {
                index.enums.insert(format!("{name}.{}", e.name()), e.clone());
            }
            index.messages.insert(name, message.clone());
        }
    }
    let mut index = Index::default();
    for file in &set.file {
        let scope = file.package().to_owned();
        messages(&mut index, &scope, &file.message_type);
        for e in &file.enum_type {
            index.enums.insert(format!("{scope}.{}", e.name()), e.clone());
        }
        let services: &[ServiceDescriptorProto] = &file.service;
        for service in services {
            for m in &service.method {
                let name = format!("{scope}.{}/{}", service.name(), m.name());
                let shape = (
                    m.input_type().to_owned(),
                    m.output_type().to_owned(),
                    m.client_streaming(),
                    m.server_streaming(),
                );
                index.methods.insert(name, shape);
            }
        }
    }
    index
}

/// The wire types a value of `field` is written as, where a change within the group reads the
/// old bytes (the protobuf specification's list; the integers truncate, `bytes` for valid UTF-8).
fn wire_group(field: &FieldDescriptorProto) -> String {
    match field.r#type() {
        Type::Int32 | Type::Uint32 | Type::Int64 | Type::Uint64 | Type::Bool => {
            "varint".into()
        }
        Type::Sint32 | Type::Sint64 => "zigzag".into(),
        Type::Fixed32 | Type::Sfixed32 => "fixed32".into(),
        Type::Fixed64 | Type::Sfixed64 => "fixed64".into(),
        Type::String | Type::Bytes => "length-delimited".into(),
        Type::Message | Type::Enum | Type::Group => field.type_name().to_owned(),
        other => format!("{other:?}"),
    }
}

fn reserved(message: &DescriptorProto, number: i32) -> bool {
    // A reserved range's end is exclusive in a descriptor.
    message.reserved_range.iter().any(|r| (r.start()..r.end()).contains(&number))
}

// ANCHOR: breaking_changes
/// What in `new` breaks code built on `old`; additions never do.
fn breaking_changes(
    old: &FileDescriptorSet,
    new: &FileDescriptorSet,
) -> Vec<Breaking> {
    let (old, new) = (index(old), index(new));
    let mut found = Vec::new();
    for (name, shape) in &old.methods {
        match new.methods.get(name) {
            None => found.push(Breaking::MethodRemoved(name.clone())),
            Some(now) if now != shape => found.push(Breaking::MethodChanged(
                name.clone(),
                format!("{shape:?} -> {now:?}"),
            )),
            Some(_) => {}
        }
    }
    for (name, was) in &old.messages {
        let Some(now) = new.messages.get(name) else {
            found.push(Breaking::TypeRemoved(name.clone()));
            continue;
        };
        for field in &was.field {
            let number = field.number();
            let Some(same) = now.field.iter().find(|f| f.number() == number) else {
                if !reserved(now, number) {
                    found.push(Breaking::FieldRemovedUnreserved(
                        name.clone(),
                        number,
                    ));
                }
                continue;
            };
            if wire_group(same) != wire_group(field) {
                let change =
                    format!("{} -> {}", wire_group(field), wire_group(same));
                found.push(Breaking::FieldRetyped(name.clone(), number, change));
            }
            let repeated = |f: &FieldDescriptorProto| f.label() == Label::Repeated;
            if repeated(same) != repeated(field) {
                found.push(Breaking::CardinalityChanged(name.clone(), number));
            }
            if same.label() == Label::Required && field.label() != Label::Required {
                found.push(Breaking::FieldMadeRequired(name.clone(), number));
            }
        }
    }
    for (name, was) in &old.enums {
        let Some(now) = new.enums.get(name) else {
            found.push(Breaking::TypeRemoved(name.clone()));
            continue;
        };
        for value in &was.value {
            let number = value.number();
            let kept = now.value.iter().any(|v| v.number() == number);
            let held = now
                .reserved_range
                .iter()
                .any(|r| (r.start()..=r.end()).contains(&number));
            if !kept && !held {
                found.push(Breaking::EnumValueRemoved(name.clone(), number));
            }
        }
    }
    found
}
// ANCHOR_END: breaking_changes

fn released() -> FileDescriptorSet {
    FileDescriptorSet::decode(grpc::proto::v1::FILE_DESCRIPTOR_SET).unwrap()
}

fn today() -> FileDescriptorSet {
    FileDescriptorSet::decode(grpc::proto::v2::FILE_DESCRIPTOR_SET).unwrap()
}

/// `edit` applied to today's schema, then compared with today's.
fn changed(edit: impl FnOnce(&mut FileDescriptorSet)) -> Vec<Breaking> {
    let mut new = today();
    edit(&mut new);
    breaking_changes(&today(), &new)
}

fn payments_file(
    set: &mut FileDescriptorSet,
) -> &mut prost_types::FileDescriptorProto {
    set.file.iter_mut().find(|f| f.name() == "v2/payments.proto").unwrap()
}

fn message<'s>(
    set: &'s mut FileDescriptorSet,
    name: &str,
) -> &'s mut DescriptorProto {
    let file = payments_file(set);
    file.message_type.iter_mut().find(|m| m.name() == name).unwrap()
}

fn field<'s>(
    set: &'s mut FileDescriptorSet,
    message_name: &str,
    field_name: &str,
) -> &'s mut FieldDescriptorProto {
    let message = message(set, message_name);
    message.field.iter_mut().find(|f| f.name() == field_name).unwrap()
}

#[test]
fn todays_schema_breaks_nothing_the_released_one_promised() {
    assert_eq!(breaking_changes(&released(), &today()), vec![]);
    // It did change: the comparison is not comparing a schema with itself.
    assert_ne!(released(), today());
}

#[test]
fn a_removed_method_is_caught() {
    let found = changed(|s| {
        let service = &mut payments_file(s).service[0];
        service.method.retain(|m| m.name() != "WatchPayment");
    });
    let method = "shop.payments.Payments/WatchPayment".to_owned();
    assert_eq!(found, vec![Breaking::MethodRemoved(method)]);
}

#[test]
fn a_method_that_starts_streaming_is_caught() {
    let found = changed(|s| {
        let service = &mut payments_file(s).service[0];
        let authorize = service.method.iter_mut().find(|m| m.name() == "Authorize");
        authorize.unwrap().client_streaming = Some(true);
    });
    assert!(
        matches!(&found[..], [Breaking::MethodChanged(m, _)] if m.ends_with("/Authorize"))
    );
}

#[test]
fn a_field_retyped_is_caught_unless_the_wire_reads_it_the_same() {
    let found =
        changed(|s| field(s, "Payment", "amount_cents").set_type(Type::String));
    let change = "varint -> length-delimited".to_owned();
    let payment = "shop.payments.Payment".to_owned();
    assert_eq!(found, vec![Breaking::FieldRetyped(payment, 4, change)]);
    // uint64 to int64 writes the same varint: compatible (large values wrap).
    assert_eq!(
        changed(|s| field(s, "Payment", "amount_cents").set_type(Type::Int64)),
        vec![]
    );
}

#[test]
fn a_field_removed_is_caught_unless_its_number_is_reserved() {
    let payment = "shop.payments.Payment".to_owned();
    let removed = changed(|s| {
        message(s, "Payment").field.retain(|f| f.name() != "authorization_code")
    });
    assert_eq!(removed, vec![Breaking::FieldRemovedUnreserved(payment, 5)]);
    let reserved = changed(|s| {
        let payment = message(s, "Payment");
        payment.field.retain(|f| f.name() != "authorization_code");
        let five = prost_types::descriptor_proto::ReservedRange {
            start: Some(5),
            end: Some(6),
        };
        payment.reserved_range.push(five);
        payment.reserved_name.push("authorization_code".into());
    });
    assert_eq!(reserved, vec![]);
}

#[test]
fn a_field_made_required_or_repeated_is_caught() {
    let payment = "shop.payments.Payment".to_owned();
    let required =
        changed(|s| field(s, "Payment", "order_id").set_label(Label::Required));
    assert_eq!(required, vec![Breaking::FieldMadeRequired(payment.clone(), 2)]);
    let repeated =
        changed(|s| field(s, "Payment", "order_id").set_label(Label::Repeated));
    assert_eq!(repeated, vec![Breaking::CardinalityChanged(payment, 2)]);
}

#[test]
fn an_enum_value_removed_is_caught() {
    let found = changed(|s| {
        let status = payments_file(s)
            .enum_type
            .iter_mut()
            .find(|e| e.name() == "PaymentStatus");
        status.unwrap().value.retain(|v| v.name() != "PAYMENT_STATUS_CAPTURED");
    });
    let status = "shop.payments.PaymentStatus".to_owned();
    assert_eq!(found, vec![Breaking::EnumValueRemoved(status, 2)]);
}

#[test]
fn a_message_removed_is_caught() {
    let found =
        changed(|s| payments_file(s).message_type.retain(|m| m.name() != "Decline"));
    assert!(found.contains(&Breaking::TypeRemoved("shop.payments.Decline".into())));
}
