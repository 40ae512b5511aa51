//! Problem bodies for everything the gateway refuses or cannot get, and the one table that turns
//! a gRPC status into an HTTP status.
//!
//! The gateway speaks the same error format as the orders service (RFC 9457
//! `application/problem+json`, [`http_json::problem::Problem`]), so a client handles one format
//! whichever service is behind a route. [`problem_bodies`] is the safety net: any error response
//! that is not yet a problem (a timeout from tower-http, a body-limit refusal, an extractor's
//! rejection) is rewritten into one, so no route can leak a plain-text error.

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_json::problem::{PROBLEM_JSON, Problem};
use tonic::Code;

// ANCHOR: http_status_of
/// The HTTP status a gRPC code becomes at the edge (the mapping Google's APIs
/// and grpc-gateway use). A client of the gateway sees HTTP semantics: 4xx
/// says "change the request", 5xx "not your fault", 429 and 503 "try later".
pub fn http_status_of(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        // The backend ran out of time: the gateway's upstream timed out.
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        // The call was cancelled (usually by us): the upstream gave no answer.
        Code::Cancelled => StatusCode::BAD_GATEWAY,
        Code::Unknown | Code::Internal | Code::DataLoss => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

/// A refusal from the payments service as a problem: the HTTP status from the
/// table, the gRPC code's name in the type and title, its message as detail.
pub fn from_grpc(status: &tonic::Status) -> Problem {
    let name = grpc::ledger::code_name(status.code());
    let slug = format!("payments-{}", name.to_lowercase().replace('_', "-"));
    let title = format!("The payments service answered {name}");
    Problem::new(http_status_of(status.code()), &slug, &title, status.message())
}
// ANCHOR_END: http_status_of

/// Renders a problem with its status and media type.
pub fn respond(problem: Problem) -> Response {
    problem.into_response()
}

// ANCHOR: problem_bodies
/// Rewrites any error response that is not a problem yet into one, keeping its
/// status and its headers (`Retry-After`, `WWW-Authenticate`, the request id).
pub async fn problem_bodies(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    let (slug, detail) = match status {
        StatusCode::NOT_FOUND => ("not-found", "no such route on this gateway"),
        StatusCode::PAYLOAD_TOO_LARGE => {
            ("body-too-large", "the request body is over the gateway's limit")
        }
        StatusCode::REQUEST_TIMEOUT | StatusCode::GATEWAY_TIMEOUT => {
            ("timeout", "the gateway gave up waiting for an answer in time")
        }
        StatusCode::METHOD_NOT_ALLOWED => {
            ("method-not-allowed", "this route does not take this method")
        }
        _ if status.is_client_error() => ("bad-request", "the request is malformed"),
        _ => ("gateway-error", "the gateway failed to handle the request"),
    };
    let title = status.canonical_reason().unwrap_or("Error");
    // Rendered as every problem is (through axum's `Json`, which would answer a
    // plain-text 500 rather than an empty body if encoding ever failed).
    let problem = Problem::new(status, slug, title, detail).into_response();
    let (_, body) = problem.into_parts();
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, body)
}
// ANCHOR_END: problem_bodies
