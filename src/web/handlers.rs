//! Request handlers of the HTTP service.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::{Deserialize, Serialize};
use url::Url;

use super::WebError;
use crate::app::{App, now};
use crate::crypto::{constant_time_eq, random_token};
use crate::pages;
use crate::session::{CookieJar, Session, SessionId, set_cookie};

/// How long a sign-in may take at the IdP.
const CSRF_TTL_SECS: u64 = 600;
/// How long the hop from the auth host to a route host may take.
const HOP_TTL_SECS: u64 = 60;

/// A sign-in in flight, sealed into the CSRF cookie on the auth host.
#[derive(Serialize, Deserialize)]
struct Csrf {
    state: String,
    nonce: String,
    pkce: String,
    rd: Option<String>,
    exp: u64,
}

/// The hop from the auth host to a route host, sealed and bound to that host.
#[derive(Serialize, Deserialize)]
struct Hop {
    sid: SessionId,
    rd: String,
    exp: u64,
    jti: String,
}

/// Which of our hosts a request is for.
enum Host {
    Auth,
    Route,
}

fn host_of(app: &App, headers: &HeaderMap) -> Result<(Host, String), WebError> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_ascii_lowercase)
        .ok_or(WebError::NotFound)?;
    if host == app.auth_authority {
        return Ok((Host::Auth, host));
    }
    match app.routes.by_authority(&host) {
        Some(_) => Ok((Host::Route, host)),
        None => Err(WebError::NotFound),
    }
}

fn cookie_header(headers: &HeaderMap) -> String {
    // HTTP/2 clients may send several cookie headers; they are one list.
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join("; ")
}

fn csrf_cookie_name(app: &App) -> String {
    format!("{}_csrf", app.cookies.name())
}

fn redirect_with_cookies(location: &str, cookies: &[String]) -> Response {
    let mut response = Redirect::to(location).into_response();
    for c in cookies {
        if let Ok(v) = c.parse() {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    response
}

pub async fn healthz() -> &'static str {
    "ok"
}

pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    if let Some(n) = app.store.count() {
        app.metrics.sessions.set(n as i64);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.encode(),
    )
        .into_response()
}

pub async fn not_found() -> WebError {
    WebError::NotFound
}

/// The JWKS. Verifiers cache it for a minute (Grafana caps its cache at this max-age) and
/// revalidate cheaply with the ETag.
pub async fn jwks(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let cache = [
        (header::CACHE_CONTROL, "max-age=60"),
        (header::ETAG, app.jwks_etag.as_str()),
    ];
    let unchanged = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| tag.trim() == app.jwks_etag || tag.trim() == "*");
    if unchanged {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    (
        cache,
        [(header::CONTENT_TYPE, "application/json")],
        app.jwks_json.clone(),
    )
        .into_response()
}

#[derive(Deserialize)]
pub struct SignInQuery {
    rd: Option<String>,
}

/// Starts a sign-in on the auth host, or, if the auth host already has a session, hops
/// straight to the route host.
pub async fn sign_in(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<SignInQuery>,
) -> Result<Response, WebError> {
    let (Host::Auth, _) = host_of(&app, &headers)? else {
        return Err(WebError::NotFound);
    };
    let now = now();
    let rd = match q.rd.as_deref() {
        Some(rd) => Some(
            app.routes
                .return_url(rd)
                .ok_or(WebError::BadRequest(
                    "The return address is not an application served here.",
                ))?
                .0
                .to_string(),
        ),
        None => None,
    };
    if let Some(session) = app
        .session_from_cookie(&cookie_header(&headers), &app.auth_authority, now)
        .await?
    {
        return Ok(Redirect::to(&landing(&app, &session, rd.as_deref(), now)).into_response());
    }
    if !app.oidc.is_ready() {
        return Err(WebError::IdpNotReady);
    }
    let start = app.oidc.start()?;
    let csrf = Csrf {
        state: start.state,
        nonce: start.nonce,
        pkce: start.pkce_verifier,
        rd,
        exp: now + CSRF_TTL_SECS,
    };
    let sealed = app.csrf.seal(&csrf, b"csrf");
    let cookie = set_cookie(
        &csrf_cookie_name(&app),
        &sealed,
        "/.portcullis/",
        CSRF_TTL_SECS,
        app.cookies.secure(),
    );
    Ok(redirect_with_cookies(start.url.as_str(), &[cookie]))
}

/// Where a signed-in user goes next: through the hop to the route host, or to the user page.
fn landing(app: &App, session: &Session, rd: Option<&str>, now: u64) -> String {
    let Some((url, index)) = rd.and_then(|rd| app.routes.return_url(rd)) else {
        return app
            .auth_url
            .join("/.portcullis/")
            .expect("static path")
            .into();
    };
    let route = app.routes.get(index);
    let hop = Hop {
        sid: session.id,
        rd: url.into(),
        exp: now + HOP_TTL_SECS,
        jti: random_token(16),
    };
    let token = app.hop.seal(&hop, route.authority.as_bytes());
    let mut target = Url::parse(&format!("{}/.portcullis/callback", route.origin()))
        .expect("route origins are valid URLs");
    target.query_pairs_mut().append_pair("hop", &token);
    target.into()
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// The OIDC redirect URI: validates state, exchanges the code, creates the session.
pub async fn oauth2_callback(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Result<Response, WebError> {
    let (Host::Auth, _) = host_of(&app, &headers)? else {
        return Err(WebError::NotFound);
    };
    let now = now();
    let cookies = cookie_header(&headers);
    let jar = crate::session::CookieJar::new(&cookies);
    let name = csrf_cookie_name(&app);
    let csrf: Csrf = jar
        .get_all(&name)
        .find_map(|v| app.csrf.open::<Csrf>(v, b"csrf").ok())
        .filter(|c| c.exp > now)
        .ok_or(WebError::BadRequest(
            "This sign-in attempt has expired or was started in another browser. Please open the application again.",
        ))?;
    if let Some(error) = q.error {
        // Only a short, printable error code is echoed back to the user.
        let error: String = error
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(64)
            .collect();
        return Err(WebError::IdpRefused(error));
    }
    let (Some(code), Some(state)) = (q.code, q.state) else {
        return Err(WebError::BadRequest(
            "The identity provider's answer is incomplete.",
        ));
    };
    if !constant_time_eq(state.as_bytes(), csrf.state.as_bytes()) {
        return Err(WebError::BadRequest(
            "This sign-in answer does not belong to this browser's sign-in attempt.",
        ));
    }
    let (user, id_token) = app
        .oidc
        .finish(&code, &csrf.pkce, &csrf.nonce)
        .await
        .inspect_err(|_| {
            app.metrics.sign_in_failures.inc();
        })?;
    app.metrics.sign_ins.inc();
    tracing::info!(user = user.display(), "signed in");
    let session = Session::new(user, now, app.session_lifetime.as_secs());
    let mut cookies = vec![
        app.cookies
            .issue(session.id, &app.auth_authority, session.expires_at, now),
        set_cookie(&name, "", "/.portcullis/", 0, app.cookies.secure()),
    ];
    // The ID token is needed only for `id_token_hint` at sign-out, which starts on the auth
    // host: keep it in the browser rather than in every session record.
    cookies.extend(app.cookies.issue_id_token(
        &id_token,
        &app.auth_authority,
        session.expires_at,
        now,
    ));
    let location = landing(&app, &session, csrf.rd.as_deref(), now);
    app.store.put(session).await?;
    Ok(redirect_with_cookies(&location, &cookies))
}

#[derive(Deserialize)]
pub struct HopQuery {
    hop: Option<String>,
}

/// On a route host: turns a one-time hop token into that host's own session cookie.
pub async fn hop_callback(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<HopQuery>,
) -> Result<Response, WebError> {
    let (Host::Route, authority) = host_of(&app, &headers)? else {
        return Err(WebError::NotFound);
    };
    let now = now();
    const EXPIRED: WebError = WebError::BadRequest(
        "This sign-in link has expired or was already used. Please open the application again.",
    );
    let hop: Hop = q
        .hop
        .as_deref()
        .and_then(|h| app.hop.open::<Hop>(h, authority.as_bytes()).ok())
        .filter(|h| h.exp > now)
        .ok_or(EXPIRED)?;
    if !app.store.claim_once(&hop.jti, hop.exp).await? {
        return Err(EXPIRED);
    }
    let (rd, _) = app
        .routes
        .return_url(&hop.rd)
        .filter(|(u, _)| crate::config::authority_of(u) == authority)
        .ok_or(WebError::BadRequest(
            "The return address is not an application served here.",
        ))?;
    let session = app.store.get(&hop.sid, now).await?.ok_or(EXPIRED)?;
    let cookie = app
        .cookies
        .issue(session.id, &authority, session.expires_at, now);
    Ok(redirect_with_cookies(rd.as_str(), &[cookie]))
}

/// Signs out: on a route host, revokes the session and continues on the auth host; on the
/// auth host, revokes, clears the cookie and ends the IdP session (RP-initiated logout).
pub async fn sign_out(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    let (host, authority) = host_of(&app, &headers)?;
    let now = now();
    let sent_cookies = cookie_header(&headers);
    let session = app
        .session_from_cookie(&sent_cookies, &authority, now)
        .await?;
    if let Some(s) = &session {
        app.store.remove(&s.id).await?;
        app.tokens.forget_session(s.id);
        tracing::info!(user = s.user.display(), "signed out");
    }
    let mut clear = vec![app.cookies.clear()];
    let location = match host {
        Host::Route => app
            .auth_url
            .join("/.portcullis/sign_out")
            .expect("static path")
            .to_string(),
        Host::Auth => {
            // Sent even when the session is already gone (a route host revoked it on its way
            // here), so that the IdP's session still ends with the hint.
            let hint = CookieJar::new(&sent_cookies)
                .get_all(app.cookies.id_token_name())
                .find_map(|v| app.cookies.open_id_token(v, &authority, now));
            clear.push(app.cookies.clear_id_token());
            match app.oidc.end_session_url(hint.as_ref().map(|t| t.expose())) {
                Some(url) => url.into(),
                None => app
                    .auth_url
                    .join("/.portcullis/signed_out")
                    .expect("static path")
                    .into(),
            }
        }
    };
    Ok(redirect_with_cookies(&location, &clear))
}

pub async fn signed_out() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        pages::signed_out(),
    )
        .into_response()
}

async fn current_session(
    app: &App,
    headers: &HeaderMap,
) -> Result<(Option<Arc<Session>>, String), WebError> {
    let (_, authority) = host_of(app, headers)?;
    let s = app
        .session_from_cookie(&cookie_header(headers), &authority, now())
        .await?;
    Ok((s, authority))
}

/// HTML page: who am I signed in as.
pub async fn user_page(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    let (session, authority) = current_session(&app, &headers).await?;
    let Some(s) = session else {
        let rd = app
            .routes
            .by_authority(&authority)
            .map(|i| format!("{}/", app.routes.get(i).origin()));
        let url = match rd {
            Some(rd) => app.sign_in_url(&rd),
            None => app
                .auth_url
                .join("/.portcullis/sign_in")
                .expect("static path")
                .into(),
        };
        return Ok(Redirect::to(&url).into_response());
    };
    let u = &s.user;
    let rows = [
        ("Email", u.email.clone().unwrap_or_default()),
        ("Name", u.name.clone().unwrap_or_default()),
        ("Username", u.preferred_username.clone().unwrap_or_default()),
        ("Subject", u.subject.clone()),
        ("Groups", u.groups.join(", ")),
        ("Session", s.public_id()),
    ];
    let scheme = match app.routes.by_authority(&authority) {
        Some(i) => app.routes.get(i).from.scheme(),
        None => app.auth_url.scheme(),
    };
    let sign_out = format!("{scheme}://{authority}/.portcullis/sign_out");
    Ok((
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        pages::user_info(&rows, &sign_out),
    )
        .into_response())
}

/// JSON: who am I signed in as (401 when not).
pub async fn user_json(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    let (session, _) = current_session(&app, &headers).await?;
    Ok(match session {
        Some(s) => axum::Json(serde_json::json!({
            "sub": s.user.subject,
            "email": s.user.email,
            "email_verified": s.user.email_verified,
            "name": s.user.name,
            "preferred_username": s.user.preferred_username,
            "groups": s.user.groups,
            "sid": s.public_id(),
            "expires_at": s.expires_at,
        }))
        .into_response(),
        None => (
            StatusCode::UNAUTHORIZED,
            axum::Json(serde_json::json!({"error": "unauthenticated"})),
        )
            .into_response(),
    })
}
