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

use crate::app::{App, Live};
use crate::pages;

/// The app a request is served by: the current one when the request arrived (a reload
/// swaps it for the next request, not in the middle of this one).
pub struct CurrentApp(pub Arc<App>);

impl axum::extract::FromRequestParts<Arc<Live>> for CurrentApp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        _: &mut axum::http::request::Parts,
        live: &Arc<Live>,
    ) -> Result<Self, Self::Rejection> {
        Ok(CurrentApp(live.app()))
    }
}

/// The axum application for the HTTP service, on one app.
pub fn router(app: Arc<App>) -> Router {
    router_live(Live::new(app))
}

/// The axum application for the HTTP service, on whatever app `live` holds.
pub fn router_live(live: Arc<Live>) -> Router {
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
        .route(
            "/.portcullis/backchannel_logout",
            axum::routing::post(handlers::backchannel_logout),
        )
        .route("/.portcullis/", get(handlers::user_page))
        .route("/.portcullis/user", get(handlers::user_json))
        .fallback(handlers::not_found)
        .layer(axum::middleware::map_response(security_headers))
        .layer(axum::middleware::from_fn_with_state(
            live.clone(),
            count_store_errors,
        ))
        .layer(axum::middleware::from_fn(request_context))
        .with_state(live)
}

/// Counts the answers that failed because the session store could not be reached.
async fn count_store_errors(
    axum::extract::State(live): axum::extract::State<Arc<Live>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let response = next.run(request).await;
    if response
        .extensions()
        .get::<ErrorPage>()
        .is_some_and(|p| p.code == "store_unavailable")
    {
        live.app().metrics.store_errors.inc();
    }
    response
}

/// The standalone JWKS listener: only the key set and health, no sessions, no sign-in, so it
/// can be exposed to verifiers (Grafana) on an internal network without going through Envoy.
pub fn jwks_router(live: Arc<Live>) -> Router {
    Router::new()
        .route("/healthz", get(handlers::healthz))
        .route("/.well-known/portcullis/jwks.json", get(handlers::jwks))
        .fallback(handlers::not_found)
        .layer(axum::middleware::from_fn(request_context))
        .with_state(live)
}

/// The metrics listener.
pub fn metrics_router(live: Arc<Live>) -> Router {
    Router::new()
        .route("/metrics", get(handlers::metrics))
        .route("/healthz", get(handlers::healthz))
        .fallback(handlers::not_found)
        .layer(axum::middleware::from_fn(request_context))
        .with_state(live)
}

/// Pages about sign-in must not be framed, cached or leak their URLs (which can carry
/// one-time tokens) in a Referer; [`pages::security_headers`] says how.
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    for (name, value) in pages::security_headers() {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            h.entry(name).or_insert(value);
        }
    }
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
    /// A back-channel logout request that is not one (OpenID Connect Back-Channel Logout
    /// 1.0, 2.8: 400).
    #[error("back-channel logout refused: {0}")]
    LogoutRefused(String),
    #[error("too many sign-in attempts; retry in {0} s")]
    TooMany(u64),
}

/// What an error answer says, rendered by [`request_context`] with the request id: a page
/// for browsers, JSON for API clients.
#[derive(Debug, Clone)]
struct ErrorPage {
    /// A short machine-readable code for the JSON answer.
    code: &'static str,
    title: &'static str,
    message: String,
}

/// What the user can do when sign-in failed for a reason only the admin can fix.
const ASK_THE_ADMIN: &str = "Sign-in could not be completed. Please contact your administrator and quote the request id below.";

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        use crate::oidc::OidcError;
        let (status, code, title, message): (StatusCode, &str, &str, String) = match &self {
            WebError::BadRequest(m) => (
                StatusCode::BAD_REQUEST,
                "bad_request",
                "Bad request",
                (*m).to_string(),
            ),
            WebError::Forbidden(m) => (
                StatusCode::FORBIDDEN,
                "forbidden",
                "Refused",
                (*m).to_string(),
            ),
            WebError::NotFound => (
                StatusCode::NOT_FOUND,
                "not_found",
                "Not found",
                "Nothing is served here.".into(),
            ),
            WebError::IdpNotReady | WebError::SignIn(OidcError::NotReady) => {
                tracing::warn!("sign-in attempted before the identity provider was discovered");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "idp_unavailable",
                    "Sign-in unavailable",
                    "The identity provider cannot be reached right now. Please try again in a moment.".into(),
                )
            }
            WebError::SignIn(e @ OidcError::InvalidGrant(_)) => {
                tracing::warn!(error = %e, "sign-in failed");
                (
                    StatusCode::BAD_REQUEST,
                    "sign_in_expired",
                    "Sign-in expired",
                    "This sign-in could not be completed; it may have taken too long. Please open the application again.".into(),
                )
            }
            WebError::SignIn(e) => {
                // The log names the cause; the page only says whom to ask.
                tracing::error!(error = %e, "sign-in failed");
                (
                    StatusCode::BAD_GATEWAY,
                    "sign_in_failed",
                    "Sign-in failed",
                    ASK_THE_ADMIN.into(),
                )
            }
            WebError::IdpRefused(e) => {
                tracing::info!(error = %e, "identity provider refused the sign-in");
                (
                    StatusCode::FORBIDDEN,
                    "idp_refused",
                    "Sign-in refused",
                    format!("The identity provider did not sign you in ({e})."),
                )
            }
            WebError::LogoutRefused(why) => {
                tracing::warn!(why, "refused a back-channel logout");
                (
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "Bad request",
                    "This is not a valid logout token.".into(),
                )
            }
            WebError::TooMany(secs) => {
                tracing::warn!(retry_after = secs, "sign-in limit reached");
                let mut response = StatusCode::TOO_MANY_REQUESTS.into_response();
                if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                    response.headers_mut().insert(header::RETRY_AFTER, v);
                }
                response.extensions_mut().insert(ErrorPage {
                    code: "too_many_attempts",
                    title: "Too many attempts",
                    message: format!(
                        "There have been too many sign-in attempts. Please wait {secs} seconds, then try again."
                    ),
                });
                return response;
            }
            WebError::Store(e) => {
                tracing::error!(error = %e, "session store failed");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "Temporarily unavailable",
                    "Sessions cannot be reached right now. Please try again in a moment.".into(),
                )
            }
        };
        let mut response = status.into_response();
        response.extensions_mut().insert(ErrorPage {
            code,
            title,
            message,
        });
        response
    }
}

/// The client's address: Envoy's `x-real-ip` (set on every request from what it saw, with
/// its trusted hops; a client's own is removed), else the connection's peer.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddress(pub Option<std::net::IpAddr>);

fn client_address(request: &axum::extract::Request) -> ClientAddress {
    let from_envoy = request
        .headers()
        .get("x-real-ip")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    ClientAddress(from_envoy.or(peer))
}

/// The id of a request: Envoy's `x-request-id` when it is a plausible one, else a new one.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

fn request_id_of(headers: &HeaderMap) -> RequestId {
    let sent = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        });
    RequestId(sent.map_or_else(|| crate::crypto::random_token(12), str::to_string))
}

/// Gives every request its id (in a tracing span, so every log line of it carries the id)
/// and renders error answers with it: the id the user quotes is the one in the log.
pub(crate) async fn request_context(
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use tracing::Instrument;
    let id = request_id_of(request.headers());
    let json = !request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
        && request
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("json"));
    request.extensions_mut().insert(id.clone());
    let address = client_address(&request);
    request.extensions_mut().insert(address);
    let span = tracing::info_span!("request", request_id = %id.0);
    let mut response = next.run(request).instrument(span).await;
    if let Some(page) = response.extensions_mut().remove::<ErrorPage>() {
        let (content_type, body) = if json {
            (
                "application/json",
                serde_json::json!({"error": page.code, "message": page.message, "request_id": id.0})
                    .to_string(),
            )
        } else {
            (
                "text/html; charset=utf-8",
                pages::error(page.title, &page.message, &id.0),
            )
        };
        if let Ok(v) = HeaderValue::from_str(content_type) {
            response.headers_mut().insert(header::CONTENT_TYPE, v);
        }
        *response.body_mut() = axum::body::Body::from(body);
    }
    if let Ok(v) = HeaderValue::from_str(&id.0) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}
