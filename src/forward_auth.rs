//! The forward-auth edge: the same decision as Envoy's `Check`, for proxies that ask over
//! HTTP before they forward a request: nginx's `auth_request`, Caddy's `forward_auth` and
//! Traefik's `forwardAuth`. The proxy sends `GET /forward_auth` with the original request's
//! headers and describes the request itself in `X-Forwarded-Method`, `X-Forwarded-Proto`,
//! `X-Forwarded-Host` and `X-Forwarded-Uri` (nginx configs often name two of them
//! `X-Original-Method` and `X-Original-URI`; both spellings are read, and must agree when
//! both are sent). [`parse_forwarded`] turns that into a [`Request`]; the [`Authorizer`]
//! decides; [`render`] turns the answer into the proxy's:
//!
//! * **allowed**: `200`, with the final value of each header the proxy copies upstream:
//!   the identity JWT, `Cookie` without our cookies, and `Authorization` (the Cockpit login
//!   credential, or the client's own where it passes). A header the upstream must not get
//!   is there with an empty value, so that copying it removes it: nginx sends no header for
//!   a `proxy_set_header` whose value is empty; Caddy 2.6's `copy_headers` and Traefik's
//!   `authResponseHeaders` set it empty. (Left out, Caddy 2.6 would send the upstream its
//!   placeholder, `{http.reverse_proxy.header.Cookie}`, as the value.)
//! * **no session**: `401` with JSON (`sign_in_url`) and, for a browser, `Location`: the
//!   route host's `/.portcullis/sign_in?rd=…`, which binds the hop to the browser without
//!   any cookie crossing the proxy. `/forward_auth/redirect` answers a browser `302` to it
//!   instead, for proxies that pass a denial to the client as it is (Caddy, Traefik).
//! * **refused**: `403` (a page naming the user, or JSON); the other denials as for Envoy.
//!
//! Whoever reaches this listener can describe any request in those headers, so it is never
//! served to clients: it has its own listener (`server.forward_auth_address`, off by default,
//! loopback in the examples), and the HTTP service does not serve it.
//!
//! [`Authorizer`]: crate::authorizer::Authorizer

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::Extension;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};

use crate::app::{App, Live};
use crate::authorizer::{Action, HeaderEdits, SignInAnswer};
use crate::core::Request;
use crate::web::{CurrentApp, RequestId};

/// The forward-auth listener's application on one app (tests).
pub fn router(app: Arc<App>) -> Router {
    router_live(Live::new(app))
}

/// The forward-auth listener's application: the endpoint and `/healthz`, nothing else,
/// deciding with whatever app `live` holds when a request arrives.
pub fn router_live(live: Arc<Live>) -> Router {
    Router::new()
        .route("/forward_auth", any(forward_auth))
        .route("/forward_auth/redirect", any(forward_auth))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async { StatusCode::NOT_FOUND })
        .layer(axum::middleware::from_fn(crate::web::request_context))
        .with_state(live)
}

/// `/forward_auth`, or `/forward_auth/redirect` for a `302` to a browser without a session.
async fn forward_auth(
    CurrentApp(app): CurrentApp,
    Extension(id): Extension<RequestId>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let redirect = uri.path().ends_with("/redirect");
    answer(&app, &id, &headers, SignInAnswer::RouteHost { redirect }).await
}

async fn answer(app: &App, id: &RequestId, headers: &HeaderMap, sign_in: SignInAnswer) -> Response {
    let started = std::time::Instant::now();
    let mut forwarded = match parse_forwarded(headers) {
        Ok(f) => f,
        Err(e) => {
            // A proxy that does not set the headers, or a client that reached this listener
            // or smuggled its own: either way, nothing is decided on them.
            tracing::warn!(error = %e, "forward-auth: refused a request it cannot trust");
            return (
                StatusCode::BAD_REQUEST,
                [("content-type", "text/plain; charset=utf-8")],
                format!("bad forward-auth request: {e}\n"),
            )
                .into_response();
        }
    };
    // The id this request is logged under is the one the answer quotes.
    forwarded
        .headers
        .insert("x-request-id".into(), id.0.clone());
    let decision = app.authorizer.check_as(&forwarded.request(), sign_in).await;
    tracing::debug!(action = ?decision.action, "forward-auth");
    app.observe_decision(&decision, started);
    render(
        decision.action,
        &forwarded.headers,
        app.authorizer.identity_header(),
    )
}

/// A request as a forward-auth proxy describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarded {
    pub method: String,
    /// `http` or `https`.
    pub scheme: String,
    pub authority: String,
    /// Path and query, as the client sent them.
    pub path: String,
    /// The original request's headers: lowercase names, repeated ones joined (`cookie`
    /// with `; `, as one list of cookies; the others with `, `).
    pub headers: HashMap<String, String>,
    /// The client, as the proxy in front of this listener saw it (the last
    /// `X-Forwarded-For` entry, which that proxy added), else `X-Real-IP`.
    pub source_ip: Option<IpAddr>,
}

impl Forwarded {
    pub fn request(&self) -> Request<'_> {
        Request {
            method: &self.method,
            scheme: &self.scheme,
            authority: &self.authority,
            path: &self.path,
            headers: &self.headers,
            route_hint: None,
            source_ip: self.source_ip,
        }
    }
}

/// Why a forward-auth request is not decided at all (answered `400`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadForward {
    #[error("{0} is missing: the proxy must set it (see examples/nginx and examples/caddy)")]
    Missing(&'static str),
    #[error("{0} is sent more than once or as a list")]
    Repeated(&'static str),
    #[error("{0} and {1} disagree")]
    Conflict(&'static str, &'static str),
    #[error("{0} is malformed")]
    Malformed(&'static str),
    #[error(
        "the path has empty, `.` or `..` segments or an encoded slash, which upstreams may read as another path"
    )]
    NotNormalized,
}

/// The longest `X-Forwarded-Uri` read: more than any proxy forwards by default.
const MAX_URI: usize = 16 * 1024;

/// Reads the original request out of a forward-auth request's headers. Fails closed on
/// anything that could make the decision be about another request than the one the proxy
/// forwards: a missing, repeated or list-valued forwarding header, two spellings that
/// disagree (a client's own `X-Original-URI` next to the `X-Forwarded-Uri` Caddy sets), and
/// a path the proxy will forward unnormalized that an upstream could read as another
/// (Envoy normalizes paths before it asks; these proxies forward `$request_uri` as is).
pub fn parse_forwarded(headers: &HeaderMap) -> Result<Forwarded, BadForward> {
    let method = either(headers, "x-forwarded-method", "x-original-method")?
        .ok_or(BadForward::Missing("X-Forwarded-Method"))?;
    if method.is_empty() || method.len() > 32 || !method.bytes().all(is_tchar) {
        return Err(BadForward::Malformed("X-Forwarded-Method"));
    }
    let scheme = one(headers, "x-forwarded-proto")?
        .ok_or(BadForward::Missing("X-Forwarded-Proto"))?
        .to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(BadForward::Malformed("X-Forwarded-Proto"));
    }
    let authority = one(headers, "x-forwarded-host")?
        .ok_or(BadForward::Missing("X-Forwarded-Host"))?
        .to_ascii_lowercase();
    if authority.is_empty()
        || authority.len() > 300
        || !authority
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b))
    {
        return Err(BadForward::Malformed("X-Forwarded-Host"));
    }
    let path = either(headers, "x-forwarded-uri", "x-original-uri")?
        .ok_or(BadForward::Missing("X-Forwarded-Uri"))?;
    if !path.starts_with('/')
        || path.len() > MAX_URI
        || !path.bytes().all(|b| b.is_ascii_graphic() && b != b'#')
    {
        return Err(BadForward::Malformed("X-Forwarded-Uri"));
    }
    if !is_normalized(path.split('?').next().unwrap_or_default()) {
        return Err(BadForward::NotNormalized);
    }
    let mut joined: HashMap<String, String> = HashMap::new();
    for (name, value) in headers {
        // Header values that are not visible ASCII (obs-text) are no header we read.
        let Ok(value) = value.to_str() else { continue };
        let name = name.as_str();
        match joined.get_mut(name) {
            Some(v) => {
                v.push_str(if name == "cookie" { "; " } else { ", " });
                v.push_str(value);
            }
            None => {
                joined.insert(name.to_string(), value.to_string());
            }
        }
    }
    let source_ip = joined
        .get("x-forwarded-for")
        .and_then(|v| v.rsplit(',').next())
        .or_else(|| joined.get("x-real-ip").map(String::as_str))
        .and_then(|v| v.trim().parse().ok());
    Ok(Forwarded {
        method: method.to_string(),
        scheme,
        authority,
        path: path.to_string(),
        headers: joined,
        source_ip,
    })
}

/// The one value of header `name`, if sent; an error if sent twice or as a list.
fn one<'h>(headers: &'h HeaderMap, name: &'static str) -> Result<Option<&'h str>, BadForward> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(BadForward::Repeated(name));
    }
    let value = value
        .to_str()
        .map_err(|_| BadForward::Malformed(name))?
        .trim();
    if value.contains(',') && name != "x-forwarded-uri" && name != "x-original-uri" {
        return Err(BadForward::Repeated(name));
    }
    Ok(Some(value))
}

/// The value of `a` or of `b`: they must agree when both are sent.
fn either<'h>(
    headers: &'h HeaderMap,
    a: &'static str,
    b: &'static str,
) -> Result<Option<&'h str>, BadForward> {
    match (one(headers, a)?, one(headers, b)?) {
        (Some(x), Some(y)) if x != y => Err(BadForward::Conflict(a, b)),
        (x, y) => Ok(x.or(y)),
    }
}

/// RFC 9110 `tchar`, what a method is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether `path` (no query) is in the form Envoy's `normalize_path` and `merge_slashes`
/// would leave it: no empty segment, no `.` or `..` segment (also percent-encoded), no
/// encoded `/` or `\`, no `\`.
fn is_normalized(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") || lower.contains('\\') {
        return false;
    }
    let decoded = lower.replace("%2e", ".");
    // The leading `/` makes the first segment empty; a trailing `/` the last one.
    let segments: Vec<&str> = decoded.split('/').collect();
    segments.iter().enumerate().all(|(i, s)| {
        let edge = i == 0 || i == segments.len() - 1;
        (edge || !s.is_empty()) && *s != "." && *s != ".."
    })
}

/// The proxy's answer for a decision. `original` is the forwarded request's headers.
pub fn render(
    action: Action,
    original: &HashMap<String, String>,
    identity_header: &str,
) -> Response {
    match action {
        Action::Forward(edits) => {
            let mut response = StatusCode::OK.into_response();
            let headers = response.headers_mut();
            for (name, value) in upstream_headers(edits, original, identity_header) {
                if let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(&value),
                ) {
                    headers.append(name, value);
                }
            }
            headers.insert("cache-control", HeaderValue::from_static("no-store"));
            response
        }
        Action::Respond(r) => {
            let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::FORBIDDEN);
            let mut response = (status, r.body).into_response();
            let headers = response.headers_mut();
            for (name, value) in r.headers {
                if let Ok(value) = HeaderValue::from_str(&value) {
                    headers.append(name, value);
                }
            }
            response
        }
    }
}

/// The final value of every header the proxy copies upstream: the identity header,
/// `cookie`, `authorization`, and any other header the edits touch. Set by the edits:
/// their value; removed by them: empty; untouched: the client's own value, or empty (so
/// copying it changes nothing), except the identity header, which is never the client's.
pub fn upstream_headers(
    edits: HeaderEdits,
    original: &HashMap<String, String>,
    identity_header: &str,
) -> Vec<(String, String)> {
    let HeaderEdits { set, remove } = edits;
    let mut managed: Vec<String> = vec![
        identity_header.to_string(),
        "cookie".into(),
        "authorization".into(),
    ];
    for name in set.iter().map(|(k, _)| k).chain(&remove) {
        if !managed.contains(name) {
            managed.push(name.clone());
        }
    }
    managed
        .into_iter()
        .map(|name| {
            let value = match set.iter().find(|(k, _)| *k == name) {
                Some((_, v)) => v.clone(),
                None if remove.contains(&name) || name == identity_header => String::new(),
                None => original.get(&name).cloned().unwrap_or_default(),
            };
            (name, value)
        })
        .collect()
}

#[cfg(test)]
mod tests;
