//! The gateway's contract: the public API as an OpenAPI 3.1 document, served at `/openapi.json`
//! (no token needed) and committed as `patterns/gateway/openapi.json`.
//!
//! The order schemas are the orders service's own (the gateway relays `/v2` orders unchanged);
//! the payment, the checkout view and the body of `POST /payments` derive theirs from the gateway's
//! types. Each operation names the scope its token must carry, and every operation can answer
//! what the edge adds: 401, 403, 429, and 502, 503 or 504 when a backend fails.

use http_json::openapi::{
    idempotency_key, problem_answer, text_header, text_parameter, with_parts,
};
use http_json::orders::NewOrder;
use http_json::versions::v2::OrderV2;
use utoipa::ToSchema;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterIn, PathItem};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, SchemaType, Type};
use utoipa::openapi::security::{
    HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder,
    PathsBuilder, Ref, RefOr, Required, Schema,
};

use crate::backends::PaymentView;
use crate::compose::CheckoutView;
use crate::routes::AuthorizeJson;

/// Where the gateway serves its document.
pub const OPENAPI_PATH: &str = "/openapi.json";

const BEARER: &str = "bearer";

/// The gateway's public API as an OpenAPI 3.1 document.
pub fn document() -> OpenApi {
    let order = || Ref::from_schema_name(OrderV2::name());
    let json =
        |schema: RefOr<Schema>| ContentBuilder::new().schema(Some(schema)).build();
    let create = operation("create_order", "Place an order", "orders:write")
        .parameter(idempotency_key())
        .request_body(Some(body(Ref::from_schema_name(NewOrder::name()).into())))
        .response(
            "201",
            ResponseBuilder::new()
                .description(
                    "the order, placed now or by the first request with this key",
                )
                .content("application/json", json(order().into()))
                .header("location", text_header("where the order can be read"))
                .build(),
        );
    let create = refusals(create, &["400", "409", "413", "415", "422"]);
    let list = operation("list_orders", "List orders", "orders:read")
        .parameter(text_parameter(
            "customer_id",
            ParameterIn::Query,
            Required::False,
        ))
        .response(
            "200",
            ResponseBuilder::new()
                .description("the orders, oldest first")
                .content(
                    "application/json",
                    json(ArrayBuilder::new().items(order()).into()),
                )
                .build(),
        );
    let list = refusals(list, &["400"]);
    let get = operation("get_order", "Read one order", "orders:read")
        .parameter(text_parameter("id", ParameterIn::Path, Required::True))
        .response("200", ok("the order", order().into()));
    let get = refusals(get, &["404"]);
    let pay = operation(
        "authorize",
        "Authorize a payment (gRPC Authorize)",
        "payments:write",
    )
    .request_body(Some(body(Ref::from_schema_name(AuthorizeJson::name()).into())))
    .response("201", ok("the authorized payment", payment()));
    let pay = refusals(pay, &["400", "409", "413", "415", "422"]);
    let view = operation(
        "checkout",
        "The order and its payment, composed",
        "checkout:read",
    )
    .parameter(text_parameter("order_id", ParameterIn::Path, Required::True))
    .response("200", ok("what could be fetched, and what is missing", checkout()));
    let view = refusals(view, &["404"]);
    let graphql =
        operation("graphql", "The checkout view as GraphQL", "checkout:read")
            .request_body(Some(body(graphql_request())))
            .response("200", ok("data and errors, as GraphQL answers", object()));
    let graphql = refusals(graphql, &["400", "413", "415", "422"]);

    let paths = PathsBuilder::new()
        .path(
            "/orders",
            PathItem::builder()
                .operation(HttpMethod::Post, create)
                .operation(HttpMethod::Get, list)
                .build(),
        )
        .path("/orders/{id}", PathItem::new(HttpMethod::Get, get))
        .path("/payments", PathItem::new(HttpMethod::Post, pay))
        .path("/checkout/{order_id}", PathItem::new(HttpMethod::Get, view))
        .path("/graphql", PathItem::new(HttpMethod::Post, graphql));

    let mut schemas = Vec::new();
    with_parts::<NewOrder>(&mut schemas);
    with_parts::<OrderV2>(&mut schemas);
    with_parts::<AuthorizeJson>(&mut schemas);
    with_parts::<PaymentView>(&mut schemas);
    with_parts::<CheckoutView>(&mut schemas);
    with_parts::<http_json::problem::Problem>(&mut schemas);
    let bearer =
        HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT");
    let components = ComponentsBuilder::new()
        .schemas_from_iter(schemas)
        .security_scheme(BEARER, SecurityScheme::Http(bearer.build()))
        .build();
    OpenApiBuilder::new()
        .info(InfoBuilder::new().title("shop gateway").version("1").description(Some(
            "The shop's one public entry point. Every operation needs a bearer JWT \
             carrying the scope the operation names.",
        )))
        .paths(paths)
        .components(Some(components))
        .build()
}

/// An operation that needs a token with `scope`.
fn operation(id: &str, summary: &str, scope: &str) -> OperationBuilder {
    OperationBuilder::new()
        .operation_id(Some(id))
        .summary(Some(summary))
        .security(SecurityRequirement::new(BEARER, [scope]))
}

/// The operation's own refusals (`own`), then the ones every operation can meet at the edge.
fn refusals(mut operation: OperationBuilder, own: &[&str]) -> OperationBuilder {
    let own =
        own.iter().map(|status| (*status, "refused: the problem body says why"));
    let edge = [
        ("401", "no token, or one that does not verify (see WWW-Authenticate)"),
        ("403", "the token lacks this operation's scope"),
        ("429", "this client's rate is spent (see Retry-After)"),
        ("502", "a backend failed"),
        ("503", "a backend's circuit breaker is open"),
        ("504", "a backend did not answer in time"),
    ];
    for (status, description) in own.chain(edge) {
        let mut answer = problem_answer(description);
        match status {
            "401" => {
                answer =
                    answer.header("www-authenticate", text_header("the challenge"))
            }
            "429" => {
                answer = answer.header("retry-after", text_header("seconds to wait"))
            }
            _ => {}
        }
        operation = operation.response(status, answer.build());
    }
    operation
}

fn ok(description: &str, schema: RefOr<Schema>) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new().schema(Some(schema)).build(),
        )
        .build()
}

fn body(schema: RefOr<Schema>) -> utoipa::openapi::request_body::RequestBody {
    RequestBodyBuilder::new()
        .required(Some(Required::True))
        .content(
            "application/json",
            ContentBuilder::new().schema(Some(schema)).build(),
        )
        .build()
}

fn payment() -> RefOr<Schema> {
    Ref::from_schema_name(PaymentView::name()).into()
}

fn checkout() -> RefOr<Schema> {
    Ref::from_schema_name(CheckoutView::<OrderV2>::name()).into()
}

fn object() -> RefOr<Schema> {
    ObjectBuilder::new().schema_type(Type::Object).into()
}

/// A GraphQL request: the query text, its variables and operation name.
fn graphql_request() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        // Not `required`: async-graphql reads a missing query as an empty one, and answers
        // 200 with the parse error in `errors`, as GraphQL over HTTP does.
        .property("query", ObjectBuilder::new().schema_type(Type::String))
        .property(
            "variables",
            ObjectBuilder::new()
                .schema_type(SchemaType::from_iter([Type::Object, Type::Null])),
        )
        .property(
            "operationName",
            ObjectBuilder::new()
                .schema_type(SchemaType::from_iter([Type::String, Type::Null])),
        )
        .into()
}
