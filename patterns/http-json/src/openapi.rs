//! The orders API's contract: an OpenAPI 3.1 document built from the code, served at
//! `/openapi.json` and committed as `patterns/http-json/openapi.json`.
//!
//! The schemas come from the Rust types themselves (`#[derive(ToSchema)]` on the request, the two
//! representations and the problem body), so a field renamed or retyped changes the document
//! with it. The operations are listed here, once per API version, by the same generic
//! [`Representation`] that the router uses: `/v1` and `/v2` cannot be described differently from
//! how they are served. Two checks keep the document honest: `tests/openapi.rs` fails when the
//! committed file and the generated one differ (a change to the API shows in review), and
//! schemathesis (`tests/schemathesis.rs`) sends generated requests to a running service and checks
//! every answer against this document.

use utoipa::ToSchema;
use utoipa::openapi::path::{
    HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, Type};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, Deprecated, Header, InfoBuilder, OpenApi,
    OpenApiBuilder, PathsBuilder, Ref, RefOr, Required,
};

use crate::deprecation::{V1_DEPRECATED_AT, V1_SUCCESSOR, V1_SUNSET};
use crate::idempotency::{IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED};
use crate::orders::NewOrder;
use crate::problem::{PROBLEM_JSON, Problem};
use crate::server::Representation;
use crate::versions::{v1::OrderV1, v2::OrderV2};

/// Where the service serves its own document.
pub const OPENAPI_PATH: &str = "/openapi.json";

// ANCHOR: document
/// The whole API as an OpenAPI 3.1 document.
pub fn document() -> OpenApi {
    let paths = PathsBuilder::new();
    let paths = version::<OrderV1>(paths, Some(Retired));
    let paths = version::<OrderV2>(paths, None);
    let mut schemas = Vec::new();
    with_parts::<NewOrder>(&mut schemas);
    with_parts::<OrderV1>(&mut schemas);
    with_parts::<OrderV2>(&mut schemas);
    with_parts::<Problem>(&mut schemas);
    let components = ComponentsBuilder::new().schemas_from_iter(schemas).build();
    OpenApiBuilder::new()
        .info(InfoBuilder::new().title("orders").version("2").description(Some(
            "The shop's orders service. /v1 is deprecated (see its \
                     Deprecation and Sunset headers); /v2 is current.",
        )))
        .paths(paths)
        .components(Some(components))
        .build()
}

/// `T`'s schema and the schemas it refers to (`OrderLine` from `NewOrder`, ...).
pub fn with_parts<T: ToSchema>(schemas: &mut Vec<(String, RefOr<Schema>)>) {
    schemas.push((T::name().into_owned(), T::schema()));
    T::schemas(schemas);
}

/// A version's three operations, described from the representation it answers with.
fn version<R: Representation + ToSchema>(
    paths: PathsBuilder,
    retired: Option<Retired>,
) -> PathsBuilder {
    let prefix = R::PREFIX;
    let tag = prefix.trim_start_matches('/');
    let one = || Ref::from_schema_name(R::name());
    let operation = |id: &str, summary: &str| {
        OperationBuilder::new()
            .operation_id(Some(format!("{id}_{tag}")))
            .summary(Some(summary))
            .tag(tag)
            .deprecated(retired.map(|_| Deprecated::True))
    };
    let ok = |description: &str, body: ContentBuilder| {
        let response = ResponseBuilder::new()
            .description(description)
            .content("application/json", body.build());
        announced(response, retired)
    };

    let create = operation("create_order", "Place an order")
        .parameter(idempotency_key())
        .request_body(Some(
            RequestBodyBuilder::new()
                .required(Some(Required::True))
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name(NewOrder::name())))
                        .build(),
                )
                .build(),
        ))
        .response(
            "201",
            ok("the order, placed now or by the first request with this key", {
                ContentBuilder::new().schema(Some(one()))
            })
            .header("location", text_header("where the order can be read"))
            .header(
                IDEMPOTENT_REPLAYED,
                text_header("`true` when this is the stored answer to a retry"),
            )
            .build(),
        )
        .response(
            "400",
            problem("malformed JSON, or no usable Idempotency-Key", retired),
        )
        .response(
            "409",
            problem("a request with this key is still running", retired),
        )
        .response("413", problem("the body is over the limit", retired))
        .response("415", problem("the body is not application/json", retired))
        .response(
            "422",
            problem(
                "a field breaks the order rules, or the key was reused",
                retired,
            ),
        );
    let list = operation("list_orders", "List orders, oldest first")
        .parameter(
            text_parameter("customer_id", ParameterIn::Query, Required::False)
                .description(Some("only this customer's orders")),
        )
        .response(
            "200",
            ok("the orders", {
                ContentBuilder::new().schema(Some(ArrayBuilder::new().items(one())))
            })
            .build(),
        )
        .response("400", problem("the query string cannot be read", retired));
    let get = operation("get_order", "Read one order")
        .parameter(text_parameter("id", ParameterIn::Path, Required::True))
        .response(
            "200",
            ok("the order", ContentBuilder::new().schema(Some(one()))).build(),
        )
        .response("404", problem("there is no order with this id", retired));

    let collection = PathItem::builder()
        .operation(HttpMethod::Post, create)
        .operation(HttpMethod::Get, list)
        .build();
    paths
        .path(format!("{prefix}/orders"), collection)
        .path(format!("{prefix}/orders/{{id}}"), PathItem::new(HttpMethod::Get, get))
}
// ANCHOR_END: document

/// A version on its way out: each of its answers carries the retirement headers.
#[derive(Clone, Copy)]
struct Retired;

/// Adds the retirement headers of [`crate::deprecation`] to a retired version's answer.
fn announced(
    response: ResponseBuilder,
    retired: Option<Retired>,
) -> ResponseBuilder {
    if retired.is_none() {
        return response;
    }
    response
        .header(
            "deprecation",
            text_header(&format!(
                "`@{V1_DEPRECATED_AT}`: deprecated since (RFC 9745)"
            )),
        )
        .header("sunset", text_header(&format!("`{V1_SUNSET}` (RFC 8594)")))
        .header("link", text_header(&format!("`{V1_SUCCESSOR}`")))
}

/// A retired version's or a current version's problem answer.
fn problem(description: &str, retired: Option<Retired>) -> Response {
    announced(problem_answer(description), retired).build()
}

/// An RFC 9457 problem answer: `application/problem+json` with a [`Problem`] body.
pub fn problem_answer(description: &str) -> ResponseBuilder {
    let body = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name(Problem::name())))
        .build();
    ResponseBuilder::new().description(description).content(PROBLEM_JSON, body)
}

/// A response header holding text, and what it says.
pub fn text_header(description: &str) -> Header {
    let mut header = Header::new(ObjectBuilder::new().schema_type(Type::String));
    header.description = Some(description.to_owned());
    header
}

/// A text parameter of the path, the query or the headers.
pub fn text_parameter(
    name: &str,
    place: ParameterIn,
    required: Required,
) -> ParameterBuilder {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(place)
        .required(required)
        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
}

/// `Idempotency-Key`: required on every create, 1 to 255 visible ASCII characters.
pub fn idempotency_key() -> ParameterBuilder {
    ParameterBuilder::new()
        .name(IDEMPOTENCY_KEY)
        .parameter_in(ParameterIn::Header)
        .required(Required::True)
        .description(Some("a retry with the same key replays the first answer"))
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[!-~]{1,255}$")),
        ))
}

/// Every `$ref` in `document` that names no schema of its own: empty for a sound document.
pub fn dangling_refs(document: &serde_json::Value) -> Vec<String> {
    fn refs<'v>(value: &'v serde_json::Value, found: &mut Vec<&'v str>) {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::String(target)) = map.get("$ref") {
                    found.push(target);
                }
                map.values().for_each(|v| refs(v, found));
            }
            serde_json::Value::Array(items) => {
                items.iter().for_each(|v| refs(v, found))
            }
            _ => {}
        }
    }
    let mut found = Vec::new();
    refs(document, &mut found);
    let schemas = &document["components"]["schemas"];
    found
        .into_iter()
        .filter(|target| {
            let name = target.strip_prefix("#/components/schemas/");
            name.is_none_or(|name| schemas.get(name).is_none())
        })
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use crate::orders::{MAX_ID_LEN, MAX_LINES, MAX_QUANTITY, MAX_UNIT_PRICE_CENTS};

    /// The bounds written in the schema attributes are the ones `validate` enforces.
    #[test]
    fn the_documented_bounds_are_the_enforced_ones() {
        let doc = serde_json::to_value(super::document()).expect("serializes");
        let schemas = &doc["components"]["schemas"];
        let lines = &schemas["NewOrder"]["properties"]["lines"];
        assert_eq!(lines["maxItems"], Value::from(MAX_LINES));
        assert_eq!(lines["minItems"], Value::from(1));
        let quantity = &schemas["OrderLine"]["properties"]["quantity"];
        assert_eq!(quantity["maximum"], Value::from(MAX_QUANTITY));
        assert_eq!(quantity["minimum"], Value::from(1));
        let id = format!("^[!-~]{{1,{MAX_ID_LEN}}}$");
        assert_eq!(schemas["NewOrder"]["properties"]["customer_id"]["pattern"], id);
        assert_eq!(schemas["OrderLine"]["properties"]["sku"]["pattern"], id);
        let price = &schemas["OrderLine"]["properties"]["unit_price_cents"];
        assert_eq!(price["maximum"], Value::from(MAX_UNIT_PRICE_CENTS));
        assert_eq!(schemas["NewOrder"]["additionalProperties"], Value::Bool(false));
    }

    /// Every `$ref` in the document names a schema the document has, and the check can tell.
    #[test]
    fn every_reference_resolves() {
        let mut doc = serde_json::to_value(super::document()).expect("serializes");
        assert_eq!(super::dangling_refs(&doc), Vec::<String>::new());
        doc["components"]["schemas"]
            .as_object_mut()
            .expect("schemas")
            .remove("OrderLine");
        assert!(
            !super::dangling_refs(&doc).is_empty(),
            "a missing schema is noticed"
        );
    }
}
