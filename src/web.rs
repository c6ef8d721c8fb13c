//! The HTTP edge (axum): the auth host's sign-in, OIDC callback and sign-out, the route
//! hosts' session hop, user info, the JWKS and health. Every failure becomes a response in
//! one place, [`WebError::into_response`]; internals are logged, never returned.

mod handlers;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::app::App;
use crate::pages;

/// The axum application for the HTTP service.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(handlers::healthz))
        .route("/.well-known/portcullis/jwks.json", get(handlers::jwks))
        .route("/.portcullis/sign_in", get(handlers::sign_in))
        .route(
            "/.portcullis/oauth2/callback",
            get(handlers::oauth2_callback),
        )
        .route("/.portcullis/callback", get(handlers::hop_callback))
        .route(
            "/.portcullis/sign_out",
            get(handlers::sign_out_page).post(handlers::sign_out),
        )
        .route("/.portcullis/signed_out", get(handlers::signed_out))
        .route("/.portcullis/", get(handlers::user_page))
        .route("/.portcullis/user", get(handlers::user_json))
        .fallback(handlers::not_found)
        .layer(axum::middleware::map_response(security_headers))
        .with_state(app)
}

/// The standalone JWKS listener: only the key set and health, no sessions, no sign-in, so it
/// can be exposed to verifiers (Grafana) on an internal network without going through Envoy.
pub fn jwks_router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(handlers::healthz))
        .route("/.well-known/portcullis/jwks.json", get(handlers::jwks))
        .fallback(handlers::not_found)
        .with_state(app)
}

/// The metrics listener.
pub fn metrics_router(app: Arc<App>) -> Router {
    Router::new()
        .route("/metrics", get(handlers::metrics))
        .route("/healthz", get(handlers::healthz))
        .fallback(handlers::not_found)
        .with_state(app)
}

/// Pages about sign-in must not be framed, cached or leak their URLs (which can carry
/// one-time tokens) in a Referer.
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    let set = |h: &mut HeaderMap, k: HeaderName, v: &'static str| {
        h.entry(k).or_insert(HeaderValue::from_static(v));
    };
    set(h, header::CACHE_CONTROL, "no-store");
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
    );
    response
}

/// Everything that can go wrong in the HTTP service.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// The client's fault; the message is shown to them.
    #[error("{0}")]
    BadRequest(&'static str),
    /// Refused on purpose; the message is shown to them.
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("not found")]
    NotFound,
    #[error("the identity provider is not reachable yet")]
    IdpNotReady,
    #[error("sign-in failed: {0}")]
    SignIn(#[from] crate::oidc::OidcError),
    #[error("the identity provider returned an error: {0}")]
    IdpRefused(String),
    #[error(transparent)]
    Store(#[from] crate::session::StoreError),
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let (status, title, message): (StatusCode, &str, String) = match &self {
            WebError::BadRequest(m) => (StatusCode::BAD_REQUEST, "Bad request", (*m).to_string()),
            WebError::Forbidden(m) => (StatusCode::FORBIDDEN, "Refused", (*m).to_string()),
            WebError::NotFound => (
                StatusCode::NOT_FOUND,
                "Not found",
                "Nothing is served here.".into(),
            ),
            WebError::IdpNotReady | WebError::SignIn(crate::oidc::OidcError::NotReady) => {
                tracing::warn!("sign-in attempted before the identity provider was discovered");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Sign-in unavailable",
                    "The identity provider cannot be reached right now. Please try again in a moment.".into(),
                )
            }
            WebError::SignIn(e) => {
                tracing::warn!(error = %e, "sign-in failed");
                (
                    StatusCode::BAD_GATEWAY,
                    "Sign-in failed",
                    "The sign-in could not be completed with the identity provider. Please try again.".into(),
                )
            }
            WebError::IdpRefused(e) => {
                tracing::info!(error = %e, "identity provider refused the sign-in");
                (
                    StatusCode::FORBIDDEN,
                    "Sign-in refused",
                    format!("The identity provider did not sign you in ({e})."),
                )
            }
            WebError::Store(e) => {
                tracing::error!(error = %e, "session store failed");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Temporarily unavailable",
                    "Sessions cannot be reached right now. Please try again in a moment.".into(),
                )
            }
        };
        (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            pages::error(title, &message),
        )
            .into_response()
    }
}
