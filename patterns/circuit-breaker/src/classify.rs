//! Which results count as failures. A breaker that counts the caller's own mistakes
//! (a 404, a validation error) as the dependency's failures opens on a healthy
//! dependency.

use crate::breaker::Outcome;

/// Turns a call's result into an [`Outcome`]. Any `Fn(&Result<T, E>) -> Outcome` is
/// one.
pub trait Classify<T, E> {
    /// How the breaker should count `result`.
    fn classify(&self, result: &Result<T, E>) -> Outcome;
}

impl<T, E, F> Classify<T, E> for F
where
    F: Fn(&Result<T, E>) -> Outcome,
{
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        self(result)
    }
}

/// The default: `Ok` is a success, any `Err` a failure.
#[derive(Clone, Copy, Debug, Default)]
pub struct AnyError;

impl<T, E> Classify<T, E> for AnyError {
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        if result.is_ok() { Outcome::Success } else { Outcome::Failure }
    }
}

// ANCHOR: http_status
/// HTTP: a 5xx is the dependency failing. Every other status, 4xx included, is a
/// prompt answer by the contract, so the dependency works: a 404 is the caller's
/// problem, and a 429 tells *this caller* to slow down (by its `Retry-After`),
/// which is the retry loop's business, not a reason to cut off every caller. An
/// overloaded dependency that sheds load for everyone answers 503, a failure.
pub fn http_status(status: u16) -> Outcome {
    match status {
        500..=599 => Outcome::Failure,
        _ => Outcome::Success,
    }
}
// ANCHOR_END: http_status

/// For tower HTTP stacks: an `Err` (timeout, connection refused) is a failure, a
/// response is judged by [`http_status`].
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpResponse;

impl<B, E> Classify<http::Response<B>, E> for HttpResponse {
    fn classify(&self, result: &Result<http::Response<B>, E>) -> Outcome {
        match result {
            Ok(response) => http_status(response.status().as_u16()),
            Err(_) => Outcome::Failure,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_fail_client_errors_and_throttling_do_not() {
        assert_eq!(http_status(200), Outcome::Success);
        assert_eq!(http_status(404), Outcome::Success);
        assert_eq!(http_status(422), Outcome::Success);
        // The gateway's rule too: a 429 (or gRPC RESOURCE_EXHAUSTED) is a refusal.
        assert_eq!(http_status(429), Outcome::Success);
        assert_eq!(http_status(500), Outcome::Failure);
        assert_eq!(http_status(503), Outcome::Failure);
        let response = |code: u16| {
            Ok::<_, ()>(http::Response::builder().status(code).body(()).unwrap())
        };
        assert_eq!(HttpResponse.classify(&response(502)), Outcome::Failure);
        assert_eq!(HttpResponse.classify(&response(400)), Outcome::Success);
        assert_eq!(
            HttpResponse.classify(&Err::<http::Response<()>, _>("timeout")),
            Outcome::Failure
        );
    }
}
