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
use serde::de::{self, DeserializeOwned, Deserializer, Unexpected, Visitor};
use serde::{Deserialize, Serialize};
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

/// Hands a struct's visitor the map form only; every other request goes to the
/// same method of the wrapped deserializer.
struct AsMap<D>(D);

/// `deserialize_<kind>(self, <args>, visitor)`, forwarded unchanged.
macro_rules! forward {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {$(
        fn $method<V: Visitor<'de>>(
            self,
            $($arg: $ty,)*
            visitor: V,
        ) -> Result<V::Value, D::Error> {
            self.0.$method($($arg,)* visitor)
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for AsMap<D> {
    type Error = D::Error;

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_map(visitor)
    }

    forward! {
        deserialize_any(); deserialize_bool(); deserialize_char();
        deserialize_i8(); deserialize_i16(); deserialize_i32(); deserialize_i64();
        deserialize_i128(); deserialize_u8(); deserialize_u16(); deserialize_u32();
        deserialize_u64(); deserialize_u128(); deserialize_f32(); deserialize_f64();
        deserialize_str(); deserialize_string(); deserialize_bytes();
        deserialize_byte_buf(); deserialize_option(); deserialize_unit();
        deserialize_seq(); deserialize_map(); deserialize_identifier();
        deserialize_ignored_any();
        deserialize_unit_struct(name: &'static str);
        deserialize_newtype_struct(name: &'static str);
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
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

// ANCHOR: whole
/// A whole number as JSON Schema's `integer` reads one: `234`, and `234.0` too (a
/// number whose fraction is zero), which serde's `u32` would refuse. The document
/// says `integer`, so the service reads what the document allows: `2.5`, `-1` and
/// numbers past the target type are refused.
/// Use: `#[serde(deserialize_with = "whole")]`.
pub fn whole<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    let n = deserializer.deserialize_any(Whole)?;
    T::try_from(n).map_err(|_| {
        de::Error::invalid_value(Unexpected::Unsigned(n), &"a smaller number")
    })
}

struct Whole;

/// 2^53: past it, not every whole number has a float of its own.
const EXACT: f64 = 9_007_199_254_740_992.0;

impl Visitor<'_> for Whole {
    type Value = u64;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a whole number, 0 or more")
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<u64, E> {
        Ok(n)
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<u64, E> {
        u64::try_from(n).map_err(|_| E::invalid_value(Unexpected::Signed(n), &self))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<u64, E> {
        if n.fract() == 0.0 && (0.0..=EXACT).contains(&n) {
            // Whole, not negative and at most 2^53: the cast is exact.
            Ok(n as u64)
        } else {
            Err(E::invalid_value(Unexpected::Float(n), &self))
        }
    }
}
// ANCHOR_END: whole

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::Object;

    fn read<T: for<'de> Deserialize<'de>>(json: &str) -> Result<T, String> {
        serde_json::from_str::<Object<T>>(json)
            .map(|Object(v)| v)
            .map_err(|e| e.to_string())
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Line {
        sku: String,
        quantity: u32,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    enum Size {
        Small,
        Large,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Sku(String);

    #[test]
    fn a_struct_is_read_from_an_object_only() {
        let line = Line { sku: "mug".into(), quantity: 2 };
        assert_eq!(read::<Line>(r#"{"sku": "mug", "quantity": 2}"#), Ok(line));
        let refused = read::<Line>(r#"["mug", 2]"#).unwrap_err();
        assert!(
            refused.contains("invalid type: sequence, expected struct Line"),
            "{refused}"
        );
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Count {
        #[serde(deserialize_with = "super::whole")]
        n: u32,
    }

    #[test]
    fn a_whole_number_is_read_with_or_without_a_zero_fraction() {
        let n = |json: &str| read::<Count>(json).map(|c| c.n);
        assert_eq!(n(r#"{"n": 234}"#), Ok(234));
        assert_eq!(n(r#"{"n": 234.0}"#), Ok(234));
        assert_eq!(n(r#"{"n": 2.34e2}"#), Ok(234));
        for bad in ["2.5", "-1", "-1.0", "4294967296", "1e300"] {
            let got = n(&format!(r#"{{"n": {bad}}}"#));
            assert!(got.is_err(), "{bad} read as {got:?}");
        }
    }

    #[test]
    fn every_other_shape_reads_as_serde_reads_it() {
        assert_eq!(read::<Option<Line>>("null"), Ok(None));
        let some = read::<Option<u32>>("7");
        assert_eq!(some, Ok(Some(7)));
        assert_eq!(read::<Size>(r#""Large""#), Ok(Size::Large));
        assert_eq!(read::<Sku>(r#""mug""#), Ok(Sku("mug".into())));
        assert_eq!(read::<Vec<u8>>("[1, 2]"), Ok(vec![1, 2]));
        assert_eq!(
            read::<u128>("340282366920938463463374607431768211455"),
            Ok(u128::MAX)
        );
        assert_eq!(read::<Size>(r#""Small""#), Ok(Size::Small));
        assert!(read::<Size>(r#""Medium""#).is_err());
    }
}
