//! RFC 9457 problem details: one error format for every failure the service reports.
//!
//! A client should never have to parse prose to learn what went wrong. Every error response here
//! has the media type `application/problem+json` and a body with a stable `type` (a URI the client
//! can match on), a short `title`, the HTTP `status`, a `detail` for humans and, for validation
//! failures, an `errors` list with a JSON Pointer to each offending field.
//!
//! [`JsonBody`] is the request-side half: a drop-in for axum's `Json` extractor that turns each of
//! its rejections (malformed JSON, wrong field types, wrong content type, a body over the limit) into
//! a problem, instead of axum's plain-text default.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::{DeserializeOwned, Deserializer, Visitor};
use serde::{Deserialize, Serialize, forward_to_deserialize_any};
use utoipa::ToSchema;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

// ANCHOR: Problem
/// An RFC 9457 problem details object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// The kind of problem; clients branch on this, never on `title` or `detail`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the kind, the same for every problem of that kind.
    pub title: String,
    /// The HTTP status, repeated in the body for clients that log only bodies.
    pub status: u16,
    /// What went wrong with this request, for a person to read.
    pub detail: String,
    /// One entry per invalid field, for validation problems.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// One invalid field: a JSON Pointer into the request body, and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FieldError {
    /// Where in the body, as a JSON Pointer (`/lines/0/quantity`).
    pub pointer: String,
    /// What is wrong there, and what is allowed.
    pub detail: String,
}
// ANCHOR_END: Problem

impl FieldError {
    /// One invalid field at `pointer`, with what is wrong.
    pub fn new(pointer: impl Into<String>, detail: impl Into<String>) -> Self {
        FieldError { pointer: pointer.into(), detail: detail.into() }
    }
}

impl Problem {
    /// A problem of kind `/problems/{slug}`: the one constructor, for this service
    /// and for the gateway that speaks the same format in front of it.
    pub fn new(
        status: StatusCode,
        slug: &str,
        title: &str,
        detail: impl Into<String>,
    ) -> Self {
        Problem {
            // Relative URIs: RFC 9457 allows them, and they never pretend to be a real site.
            kind: format!("/problems/{slug}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
        }
    }

    /// 400: the body is not JSON at all; fix the request, do not retry it.
    pub fn malformed_json(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "malformed-json",
            "The request body is not valid JSON",
            detail,
        )
    }

    /// 422: well-formed JSON that breaks the contract or the rules, each field
    /// named.
    pub fn invalid_fields(
        detail: impl Into<String>,
        errors: Vec<FieldError>,
    ) -> Self {
        let mut problem = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-fields",
            "The request has invalid fields",
            detail,
        );
        problem.errors = errors;
        problem
    }

    /// 415: the body was not declared as JSON.
    pub fn unsupported_media_type(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Send JSON with Content-Type: application/json",
            detail,
        )
    }

    /// 413: the body is over the limit; refused before it is parsed.
    pub fn body_too_large(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "The request body is too large",
            detail,
        )
    }

    /// 404: no such order, or no such route.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "No such resource", detail)
    }

    /// 405: the route exists, the method does not.
    pub fn method_not_allowed(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "This method is not allowed here",
            detail,
        )
    }

    /// 400: a create without an Idempotency-Key could not be retried safely.
    pub fn idempotency_key_missing() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "idempotency-key-missing",
            "An Idempotency-Key header is required",
            "POST /orders creates an order; send a unique Idempotency-Key (1 to 255 visible ASCII characters) \
             and reuse it when you retry, so a retry cannot create a second order",
        )
    }

    /// 422: the key was first used with another body; a new order needs a new key.
    pub fn idempotency_key_reused() -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "This Idempotency-Key was used with a different request",
            "a key identifies one request: retries must send the same body; use a new key for a new order",
        )
    }

    /// 409: the first request with this key is still running; retry shortly.
    pub fn request_in_progress() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "request-in-progress",
            "A request with this Idempotency-Key is still being processed",
            "retry after a short delay to receive its result",
        )
    }

    /// 500: the service's own failure, with its cause in `detail`.
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "The service failed to handle the request",
            detail,
        )
    }

    /// The status to answer with; 500 if `status` is not a valid code.
    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status)
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let mut response = (status, axum::Json(self)).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        response
    }
}

// ANCHOR: JsonBody
/// Like `axum::Json<T>`, but every rejection becomes a [`Problem`].
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<Object<T>>::from_request(req, state).await {
            Ok(axum::Json(Object(value))) => Ok(JsonBody(value)),
            Err(rejection) => Err(problem_from(rejection)),
        }
    }
}

fn problem_from(rejection: JsonRejection) -> Problem {
    // body_text() carries serde's message: it names the field, line and column.
    let detail = rejection.body_text();
    match rejection {
        JsonRejection::JsonSyntaxError(_) => Problem::malformed_json(detail),
        // Valid JSON of the wrong shape: a missing, unknown or mistyped field.
        JsonRejection::JsonDataError(_) => {
            Problem::invalid_fields(detail, Vec::new())
        }
        JsonRejection::MissingJsonContentType(_) => {
            Problem::unsupported_media_type(detail)
        }
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            Problem::body_too_large(detail)
        }
        other => Problem::malformed_json(other.body_text()),
    }
}
// ANCHOR_END: JsonBody

// ANCHOR: Object
/// A struct read from a JSON object only. serde's derive also reads a struct
/// from an array, by position (`["c-42", [["mug", 2, 1250]]]` was an order),
/// which no contract of ours describes; schemathesis found it. Reading the
/// struct as a map refuses the array: `invalid type: sequence, expected struct`.
pub struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(AsMap(deserializer)).map(Object)
    }
}

/// Hands a struct's visitor the map form only; any other request passes through.
struct AsMap<D>(D);

impl<'de, D: Deserializer<'de>> Deserializer<'de> for AsMap<D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(
        self,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_any(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_map(visitor)
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

/// For a list of structs (`#[serde(deserialize_with = "objects")]`): each one
/// from an object.
pub fn objects<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    let items = Vec::<Object<T>>::deserialize(deserializer)?;
    Ok(items.into_iter().map(|Object(item)| item).collect())
}
// ANCHOR_END: Object
