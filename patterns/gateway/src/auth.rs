//! Bearer-token authentication: who is calling, checked once at the edge.
//!
//! The gateway verifies a JWT's signature, issuer, audience and expiry before any backend hears
//! of the request, and passes the verified identity downstream in [`CALLER_HEADER`]. The services
//! behind it trust that header only because nothing but the gateway can reach them (a network
//! policy, or mutual TLS in a service mesh); the gateway therefore removes any copy a client sends,
//! so a client cannot name itself.
//!
//! Tokens here are HS256 with a shared secret, so the example can mint its own. Production uses
//! asymmetric keys (RS256, ES256, EdDSA) published by the identity provider as a JWKS, so the
//! gateway holds no secret that could mint tokens; the checks are the same.

use std::collections::BTreeSet;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_json::problem::Problem;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::problem::respond;

/// The header that carries the verified caller to the services behind the gateway.
pub const CALLER_HEADER: &str = "x-shop-caller";

/// What the gateway reads from a token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The client: the rate limit and the downstream identity are keyed on it.
    pub sub: String,
    /// Who issued the token: must be the identity provider the gateway trusts.
    pub iss: String,
    /// Whom the token is for: must be this gateway, so a token minted for another
    /// API is refused here.
    pub aud: String,
    /// Expiry, in seconds since the Unix epoch.
    pub exp: u64,
    /// Space-separated permissions, as OAuth 2 writes them (`orders:read orders:write`).
    #[serde(default)]
    pub scope: String,
}

impl Claims {
    /// The permissions in `scope`, one each; an absent `scope` grants none.
    pub fn scopes(&self) -> BTreeSet<&str> {
        self.scope.split_whitespace().collect()
    }
}

/// The authenticated caller, put into the request's extensions for the handlers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The token's `sub`: what the rate limit counts by and the backends hear.
    pub client: String,
    /// What the token grants; routes check theirs with [`Caller::require`].
    pub scopes: BTreeSet<String>,
}

impl Caller {
    /// Refuses with 403 unless the token grants `scope`.
    pub fn require(&self, scope: &'static str) -> Result<(), Forbidden> {
        if self.scopes.contains(scope) { Ok(()) } else { Err(Forbidden(scope)) }
    }
}

/// A verified caller without the scope a route needs: 403, not 401, because a
/// new token for the same client would not help.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forbidden(pub &'static str);

impl IntoResponse for Forbidden {
    fn into_response(self) -> Response {
        let detail = format!("this route needs the scope {:?}", self.0);
        let p =
            Problem::new(StatusCode::FORBIDDEN, "forbidden", "Not allowed", detail);
        let mut response = respond(p);
        let challenge =
            format!("Bearer error=\"insufficient_scope\", scope=\"{}\"", self.0);
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}

// ANCHOR: Verifier
/// Checks tokens: one accepted algorithm, issuer, audience, expiry, signature.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl Verifier {
    /// A verifier that accepts HS256 tokens only, from `issuer`, for `audience`.
    pub fn hs256(secret: &[u8], issuer: &str, audience: &str) -> Self {
        // Only HS256: the token's own `alg` header never chooses the check
        // (`none` does not even parse as an algorithm here).
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 5; // seconds of clock skew tolerated
        Verifier { key: DecodingKey::from_secret(secret), validation }
    }

    /// The caller a token proves, or why it proves nothing.
    pub fn verify(&self, token: &str) -> Result<Caller, Rejection> {
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
                .map_err(|e| Rejection::from_kind(e.kind()))?;
        let claims = data.claims;
        let scopes = claims.scopes().into_iter().map(str::to_owned).collect();
        Ok(Caller { client: claims.sub, scopes })
    }
}
// ANCHOR_END: Verifier

/// Why a request is not authenticated: each becomes a 401 with its own detail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// No `Authorization` header at all: the challenge then names no error
    /// (RFC 6750).
    Missing,
    /// The header is not `Bearer <token>`, or the token is not a JWT we can read.
    Malformed,
    /// Past its `exp`, beyond the few seconds of clock skew tolerated.
    Expired,
    /// Signed with our key but not issued by the issuer we trust.
    WrongIssuer,
    /// Issued for another API.
    WrongAudience,
    /// The signature does not match: not signed with our key, or altered.
    BadSignature,
    /// The token's `alg` is not HS256 (`none` included).
    WrongAlgorithm,
    /// One of `exp`, `iss`, `aud`, `sub` is absent.
    MissingClaim,
}

impl Rejection {
    fn from_kind(kind: &ErrorKind) -> Self {
        match kind {
            ErrorKind::ExpiredSignature => Rejection::Expired,
            ErrorKind::InvalidIssuer => Rejection::WrongIssuer,
            ErrorKind::InvalidAudience => Rejection::WrongAudience,
            ErrorKind::InvalidSignature => Rejection::BadSignature,
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                Rejection::WrongAlgorithm
            }
            ErrorKind::MissingRequiredClaim(_) => Rejection::MissingClaim,
            _ => Rejection::Malformed,
        }
    }

    /// The problem body's detail and the challenge's `error_description`: tells
    /// the client what to fix, never anything about the key.
    pub fn detail(self) -> &'static str {
        match self {
            Rejection::Missing => "send Authorization: Bearer <token>",
            Rejection::Malformed => "the bearer token is not a well-formed JWT",
            Rejection::Expired => "the token has expired",
            Rejection::WrongIssuer => {
                "the token was not issued by our identity provider"
            }
            Rejection::WrongAudience => "the token was issued for another audience",
            Rejection::BadSignature => "the token's signature does not verify",
            Rejection::WrongAlgorithm => "the token's algorithm is not accepted",
            Rejection::MissingClaim => "the token lacks a required claim",
        }
    }

    fn reject(self) -> Response {
        let unauthorized = StatusCode::UNAUTHORIZED;
        let p = Problem::new(
            unauthorized,
            "unauthorized",
            "Not authenticated",
            self.detail(),
        );
        let mut response = respond(p);
        // RFC 6750: no error code when no token was sent at all.
        let challenge = match self {
            Rejection::Missing => "Bearer realm=\"shop\"".to_owned(),
            other => format!(
                "Bearer realm=\"shop\", error=\"invalid_token\", error_description=\"{}\"",
                other.detail()
            ),
        };
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}

// ANCHOR: authenticate
/// Middleware: verifies the bearer token, drops any client-sent caller header,
/// and hands the verified [`Caller`] to what follows.
pub async fn authenticate(
    State(verifier): State<Verifier>,
    mut request: Request,
    next: Next,
) -> Response {
    // Whatever happens next, a client never chooses the identity we forward.
    request.headers_mut().remove(CALLER_HEADER);
    let token = match request.headers().get(header::AUTHORIZATION) {
        None => return Rejection::Missing.reject(),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim),
    };
    let Some(token) = token else {
        return Rejection::Malformed.reject();
    };
    match verifier.verify(token) {
        Ok(caller) => {
            // A subject that cannot travel as a header would reach the backend as
            // no caller at all: refuse the token rather than forward it unnamed.
            let Ok(value) = HeaderValue::from_str(&caller.client) else {
                tracing::warn!(sub = %caller.client, "subject is no header value");
                return Rejection::Malformed.reject();
            };
            request.headers_mut().insert(CALLER_HEADER, value);
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(rejection) => rejection.reject(),
    }
}
// ANCHOR_END: authenticate

/// Mints tokens, as an identity provider would: for the example and the tests.
#[derive(Clone)]
pub struct Issuer {
    key: EncodingKey,
    /// The `iss` of every token minted: the verifier's issuer, to be accepted.
    pub issuer: String,
    /// The `aud` of every token minted; see [`Issuer::for_audience`].
    pub audience: String,
}

impl Issuer {
    /// An issuer signing with `secret`: the gateway's key mints tokens it accepts,
    /// any other key a forger's tokens.
    pub fn hs256(secret: &[u8], issuer: &str, audience: &str) -> Self {
        Issuer {
            key: EncodingKey::from_secret(secret),
            issuer: issuer.into(),
            audience: audience.into(),
        }
    }

    /// A token for `client` with `scope`, valid for `ttl_secs` from now.
    pub fn mint(
        &self,
        client: &str,
        scope: &str,
        ttl_secs: i64,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = jsonwebtoken::get_current_timestamp() as i64;
        let claims = Claims {
            sub: client.into(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            exp: (now + ttl_secs).max(0) as u64,
            scope: scope.into(),
        };
        self.mint_claims(&claims)
    }

    /// The same signing key, for another audience (a token meant for another API).
    pub fn for_audience(&self, audience: &str) -> Issuer {
        Issuer { audience: audience.into(), ..self.clone() }
    }

    /// A token with exactly these claims, signed: how tests build the tokens that
    /// must be refused (another issuer or audience, an expiry long past).
    pub fn mint_claims(
        &self,
        claims: &Claims,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.key)
    }
}
