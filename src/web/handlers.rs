//! Request handlers of the HTTP service.

use std::sync::Arc;

use axum::extract::{Extension, Query};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::{Deserialize, Serialize};

use super::{ClientAddress, CurrentApp, WebError};
use crate::app::App;
use crate::authorizer::hop_binding;
use crate::core::{Route, Session, SessionId, authority_of};
use crate::crypto::{constant_time_eq, random_token};
use crate::pages;
use crate::session::{CookieJar, Selector};

/// How long a sign-in may take at the IdP.
const CSRF_TTL_SECS: u64 = 600;
/// How long the hop from the auth host to a route host may take.
const HOP_TTL_SECS: u64 = 60;
/// How long the auth host accepts the continuation of a route host's sign-out.
const SIGN_OUT_TTL_SECS: u64 = 60;

/// A sign-in in flight, sealed into the CSRF cookie on the auth host.
#[derive(Serialize, Deserialize)]
struct Csrf {
    state: String,
    nonce: String,
    pkce: String,
    rd: Option<String>,
    /// The hop binding (hash of the route host's nonce) that came with `rd`.
    hb: Option<String>,
    exp: u64,
}

/// The hop from the auth host to a route host, sealed and bound to that host and to the
/// browser that started the sign-in (`hb`, the hash of its nonce cookie on that host).
#[derive(Serialize, Deserialize)]
struct Hop {
    sid: SessionId,
    rd: String,
    hb: String,
    exp: u64,
    jti: String,
}

/// A route host's sign-out, continued on the auth host: only by the browser whose auth-host
/// session it names, so a link from someone else's sign-out signs nobody out.
#[derive(Serialize, Deserialize)]
struct SignOutContinuation {
    sid: SessionId,
    exp: u64,
}

/// Which of our hosts a request is for.
enum Host<'a> {
    Auth,
    /// A route host, by (the first of) its routes.
    Route(&'a Route),
}

fn host_of<'a>(app: &'a App, headers: &HeaderMap) -> Result<(Host<'a>, String), WebError> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_ascii_lowercase)
        .ok_or(WebError::NotFound)?;
    if host == app.auth_authority {
        return Ok((Host::Auth, host));
    }
    match app.routes().by_authority(&host) {
        Some(route) => Ok((Host::Route(route), host)),
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

fn redirect_with_cookies(location: &str, cookies: &[String]) -> Response {
    let mut response = Redirect::to(location).into_response();
    for c in cookies {
        if let Ok(v) = c.parse() {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    response
}

/// `ok`, or 503 while the session store cannot answer or before shutdown (Envoy's health
/// check then moves the traffic to other replicas).
pub async fn healthz(CurrentApp(app): CurrentApp) -> Response {
    if app.is_serving() {
        "ok".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not serving").into_response()
    }
}

pub async fn metrics(CurrentApp(app): CurrentApp) -> Response {
    if let Some(n) = app.store.count() {
        app.metrics.sessions.set(n as i64);
    }
    app.metrics
        .idp_up
        .set(i64::from(app.idp.is_ready() && app.idp.is_reachable()));
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
pub async fn jwks(CurrentApp(app): CurrentApp, headers: HeaderMap) -> Response {
    let cache = [
        (header::CACHE_CONTROL, "max-age=60"),
        (header::ETAG, app.jwks.etag.as_str()),
    ];
    let unchanged = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| tag.trim() == app.jwks.etag || tag.trim() == "*");
    if unchanged {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    (
        cache,
        [(header::CONTENT_TYPE, "application/json")],
        app.jwks.json.clone(),
    )
        .into_response()
}

#[derive(Deserialize)]
pub struct SignInQuery {
    rd: Option<String>,
    hb: Option<String>,
}

/// One sign-in start or callback from `address`, within its allowance.
fn limit_address(app: &App, address: ClientAddress) -> Result<(), WebError> {
    app.limits
        .address(address.0)
        .map_err(|l| WebError::TooMany(l.retry_after_secs()))
}

/// A hop binding as [`hop_binding`] makes it: a SHA-256 in base64url.
fn is_binding(hb: &str) -> bool {
    hb.len() == 43
        && hb
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

const NOT_OURS: WebError =
    WebError::BadRequest("The return address is not an application served here.");

/// Starts a sign-in on the auth host, or, if the auth host already has a session, hops
/// straight to the route host. On a route host, gives the browser its hop nonce first and
/// sends it on to the auth host: every hop is bound to the browser that asked for it.
pub async fn sign_in(
    CurrentApp(app): CurrentApp,
    Extension(address): Extension<ClientAddress>,
    headers: HeaderMap,
    Query(q): Query<SignInQuery>,
) -> Result<Response, WebError> {
    let (host, authority) = host_of(&app, &headers)?;
    limit_address(&app, address)?;
    if let Host::Route(route) = host {
        return route_sign_in(&app, &headers, route, &authority, q.rd.as_deref());
    }
    let now = app.now();
    let rd = match q.rd.as_deref() {
        Some(rd) => Some(app.routes().return_url(rd).ok_or(NOT_OURS)?.0),
        None => None,
    };
    let hb = q.hb.filter(|hb| is_binding(hb));
    if let (Some(rd), None) = (&rd, &hb) {
        // Not started on the route host (an API client's sign_in_url, a bookmark): let the
        // route host bind the browser first.
        let mut url = rd.clone();
        url.set_path("/.portcullis/sign_in");
        url.set_fragment(None);
        url.query_pairs_mut().clear().append_pair("rd", rd.as_str());
        return Ok(Redirect::to(url.as_str()).into_response());
    }
    let rd = rd.map(String::from);
    if let Some(session) = app
        .authorizer
        .session_from_cookie(&cookie_header(&headers), &app.auth_authority, now)
        .await?
    {
        let location = landing(&app, &session, rd.as_deref(), hb.as_deref(), now);
        return Ok(Redirect::to(&location).into_response());
    }
    if !app.idp.is_ready() {
        return Err(WebError::IdpNotReady);
    }
    if !app.idp.is_reachable() {
        // Sending the browser on would end on its own "cannot connect" page.
        return Err(WebError::IdpDown);
    }
    let start = app.idp.start()?;
    let csrf = Csrf {
        state: start.state,
        nonce: start.nonce,
        pkce: start.pkce_verifier,
        rd,
        hb,
        exp: now + CSRF_TTL_SECS,
    };
    let sealed = app.csrf.seal(&csrf, b"csrf");
    let cookie = app
        .cookies()
        .helper(app.cookies().csrf_name(), &sealed, CSRF_TTL_SECS);
    Ok(redirect_with_cookies(start.url.as_str(), &[cookie]))
}

/// `GET /.portcullis/sign_in?rd=URL` on a route host: sets the hop nonce cookie and
/// continues to the auth host with its hash.
fn route_sign_in(
    app: &App,
    headers: &HeaderMap,
    route: &Route,
    authority: &str,
    rd: Option<&str>,
) -> Result<Response, WebError> {
    let rd = match rd {
        Some(rd) => app
            .routes()
            .return_url(rd)
            .filter(|(u, _)| authority_of(u) == authority)
            .ok_or(NOT_OURS)?
            .0
            .to_string(),
        None => format!("{}/", route.origin()),
    };
    let (nonce, cookie) = app.authorizer.hop_nonce(&cookie_header(headers));
    Ok(redirect_with_cookies(
        &app.authorizer.sign_in_url(&rd, Some(&nonce)),
        &[cookie],
    ))
}

/// Where a signed-in user goes next: through the hop to the route host, or to the user page.
fn landing(app: &App, session: &Session, rd: Option<&str>, hb: Option<&str>, now: u64) -> String {
    let (Some((url, route)), Some(hb)) = (rd.and_then(|rd| app.routes().return_url(rd)), hb) else {
        return app.urls.user_page.to_string();
    };
    let hop = Hop {
        sid: session.id,
        rd: url.into(),
        hb: hb.to_string(),
        exp: now + HOP_TTL_SECS,
        jti: random_token(16),
    };
    let token = app.hop.seal(&hop, route.authority.as_bytes());
    let mut target = route.from.clone();
    target.set_path("/.portcullis/callback");
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
    CurrentApp(app): CurrentApp,
    Extension(address): Extension<ClientAddress>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Result<Response, WebError> {
    let (Host::Auth, _) = host_of(&app, &headers)? else {
        return Err(WebError::NotFound);
    };
    limit_address(&app, address)?;
    let now = app.now();
    let cookies = cookie_header(&headers);
    let jar = CookieJar::new(&cookies);
    let name = app.cookies().csrf_name();
    let csrf: Csrf = jar
        .get_all(name)
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
    // One answer per sign-in attempt: a replayed callback (with a copied CSRF cookie) never
    // reaches the IdP's token endpoint.
    if !app
        .store
        .claim_once(&format!("state:{}", csrf.state), csrf.exp)
        .await?
    {
        return Err(WebError::BadRequest(
            "This sign-in answer was already used. Please open the application again.",
        ));
    }
    let asked = std::time::Instant::now();
    let signed_in = app.idp.finish(&code, &csrf.pkce, &csrf.nonce).await;
    app.metrics
        .observe_idp(asked.elapsed(), signed_in.as_ref().err().map(|e| e.kind()));
    let signed_in = signed_in.inspect_err(|_| {
        app.metrics.sign_in_failures.inc();
    })?;
    app.limits
        .account(&signed_in.user.subject)
        .map_err(|l| WebError::TooMany(l.retry_after_secs()))?;
    app.metrics.sign_ins.inc();
    tracing::info!(user = signed_in.user.display(), "signed in");
    let mut session = Session::new(signed_in.user, now, app.session_lifetime.as_secs());
    session.idp = app.sessions.grant(
        &session.id,
        &signed_in.tokens,
        signed_in.idp_sid.as_deref(),
        signed_in.used_userinfo,
        None,
        now,
    );
    let mut cookies = vec![
        app.cookies()
            .issue(session.id, &app.auth_authority, session.expires_at, now),
        app.cookies().helper(name, "", 0),
    ];
    // The ID token is needed only for `id_token_hint` at sign-out, which starts on the auth
    // host: keep it in the browser rather than in every session record.
    cookies.extend(app.cookies().issue_id_token(
        &signed_in.id_token,
        &app.auth_authority,
        session.expires_at,
        now,
    ));
    let location = landing(&app, &session, csrf.rd.as_deref(), csrf.hb.as_deref(), now);
    app.store.put(session).await?;
    Ok(redirect_with_cookies(&location, &cookies))
}

#[derive(Deserialize)]
pub struct HopQuery {
    hop: Option<String>,
}

/// On a route host: turns a one-time hop token into that host's own session cookie.
pub async fn hop_callback(
    CurrentApp(app): CurrentApp,
    headers: HeaderMap,
    Query(q): Query<HopQuery>,
) -> Result<Response, WebError> {
    let (Host::Route(_), authority) = host_of(&app, &headers)? else {
        return Err(WebError::NotFound);
    };
    let now = app.now();
    const EXPIRED: WebError = WebError::BadRequest(
        "This sign-in link has expired or was already used. Please open the application again.",
    );
    let hop: Hop = q
        .hop
        .as_deref()
        .and_then(|h| app.hop.open::<Hop>(h, authority.as_bytes()).ok())
        .filter(|h| h.exp > now)
        .ok_or(EXPIRED)?;
    // The hop must come back to the browser that started the sign-in on this host: a link
    // asked for by someone else (to swap their session into this browser) is refused here,
    // before anything about this browser's own session changes.
    let jar_header = cookie_header(&headers);
    let bound = CookieJar::new(&jar_header)
        .get_all(app.cookies().hop_name())
        .any(|nonce| constant_time_eq(hop_binding(nonce).as_bytes(), hop.hb.as_bytes()));
    if !bound {
        tracing::warn!("refused a hop that another browser asked for");
        return Err(WebError::Forbidden(
            "This sign-in link was started in another browser, so it cannot sign you in here. \
             If you did not click a link someone sent you, open the application again.",
        ));
    }
    if !app.store.claim_once(&hop.jti, hop.exp).await? {
        return Err(EXPIRED);
    }
    let (rd, _) = app
        .routes()
        .return_url(&hop.rd)
        .filter(|(u, _)| authority_of(u) == authority)
        .ok_or(NOT_OURS)?;
    let session = app.store.get(&hop.sid, now).await?.ok_or(EXPIRED)?;
    let cookies = [
        app.cookies()
            .issue(session.id, &authority, session.expires_at, now),
        app.cookies().helper(app.cookies().hop_name(), "", 0),
    ];
    Ok(redirect_with_cookies(rd.as_str(), &cookies))
}

#[derive(Deserialize)]
pub struct SignOutQuery {
    t: Option<String>,
}

/// Whether a state-changing request comes from one of our own pages (the same origin), by
/// the browser's `Sec-Fetch-Site`, else its `Origin`. A client that sends neither is not a
/// browser, so not a cross-site request forgery.
fn same_origin(headers: &HeaderMap, origin: &str) -> bool {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = get("sec-fetch-site") {
        return matches!(site, "same-origin" | "none");
    }
    get("origin").is_none_or(|o| o.eq_ignore_ascii_case(origin))
}

/// The public origin of one of our hosts.
fn origin_of(app: &App, host: &Host<'_>) -> String {
    match host {
        Host::Auth => app.urls.auth.origin().ascii_serialization(),
        Host::Route(route) => route.origin().to_string(),
    }
}

/// `GET /.portcullis/sign_out` changes nothing (any page can make a browser GET it): it
/// asks, with a form that POSTs back. The one exception is the auth host continuing the
/// sign-out that this very browser's session just made on a route host.
pub async fn sign_out_page(
    CurrentApp(app): CurrentApp,
    headers: HeaderMap,
    Query(q): Query<SignOutQuery>,
) -> Result<Response, WebError> {
    let (host, authority) = host_of(&app, &headers)?;
    let now = app.now();
    if let (Host::Auth, Some(t)) = (&host, q.t.as_deref()) {
        let sent = cookie_header(&headers);
        let mine = app
            .sign_out
            .open::<SignOutContinuation>(t, authority.as_bytes())
            .ok()
            .filter(|c| c.exp > now)
            .is_some_and(|c| {
                app.cookies()
                    .session_ids(&sent, &authority, now)
                    .any(|sid| sid == c.sid)
            });
        if mine {
            return finish_sign_out(&app, &sent, &authority, now).await;
        }
    }
    let action = format!("{}/.portcullis/sign_out", origin_of(&app, &host));
    Ok((
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        pages::sign_out_confirm(&action),
    )
        .into_response())
}

/// `POST /.portcullis/sign_out`, from our own pages only: on a route host, revokes the
/// session and continues on the auth host; on the auth host, revokes, clears the cookies
/// and ends the IdP session (RP-initiated logout).
pub async fn sign_out(
    CurrentApp(app): CurrentApp,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    let (host, authority) = host_of(&app, &headers)?;
    if !same_origin(&headers, &origin_of(&app, &host)) {
        tracing::warn!(host = authority, "refused a cross-site sign-out");
        return Err(WebError::Forbidden(
            "Sign-out must be started from this site's own sign-out button.",
        ));
    }
    let now = app.now();
    let sent = cookie_header(&headers);
    match host {
        Host::Auth => finish_sign_out(&app, &sent, &authority, now).await,
        Host::Route(_) => {
            let session = app
                .authorizer
                .session_from_cookie(&sent, &authority, now)
                .await?;
            let mut next = app.urls.sign_out.clone();
            if let Some(s) = &session {
                revoke(&app, s).await?;
                let t = app.sign_out.seal(
                    &SignOutContinuation {
                        sid: s.id,
                        exp: now + SIGN_OUT_TTL_SECS,
                    },
                    app.auth_authority.as_bytes(),
                );
                next.query_pairs_mut().append_pair("t", &t);
            }
            Ok(redirect_with_cookies(
                next.as_str(),
                &[app.cookies().clear()],
            ))
        }
    }
}

async fn revoke(app: &App, s: &Session) -> Result<(), WebError> {
    let ended = app.store.revoke(Selector::Session(s.id), app.now()).await?;
    app.metrics.sessions_revoked.inc_by(ended.len() as u64);
    app.metrics.sign_outs.inc();
    app.tokens().forget_session(s.id);
    tracing::info!(user = s.user.display(), "signed out");
    Ok(())
}

/// The auth host's part of a sign-out: revoke (if a route host has not already), clear the
/// auth host's cookies and end the IdP session, with the ID token as `id_token_hint`.
async fn finish_sign_out(
    app: &App,
    sent_cookies: &str,
    authority: &str,
    now: u64,
) -> Result<Response, WebError> {
    if let Some(s) = app
        .authorizer
        .session_from_cookie(sent_cookies, authority, now)
        .await?
    {
        revoke(app, &s).await?;
    }
    // Sent even when the session is already gone (a route host revoked it on its way
    // here), so that the IdP's session still ends with the hint.
    let hint = CookieJar::new(sent_cookies)
        .get_all(app.cookies().id_token_name())
        .find_map(|v| app.cookies().open_id_token(v, authority, now));
    let clear = [app.cookies().clear(), app.cookies().clear_id_token()];
    let location = app
        .idp
        .end_session_url(hint.as_ref())
        .unwrap_or_else(|| app.urls.signed_out.clone());
    Ok(redirect_with_cookies(location.as_str(), &clear))
}

#[derive(Deserialize)]
pub struct LogoutForm {
    logout_token: Option<String>,
}

/// How long a logout token's `jti` is remembered: as long as the token is accepted (its
/// `iat` at most 10 minutes old, a minute of skew), so a replay is always caught.
const LOGOUT_JTI_TTL_SECS: u64 = 11 * 60;

/// `POST /.portcullis/backchannel_logout` on the auth host: OpenID Connect Back-Channel
/// Logout 1.0. The IdP says one of its sessions (`sid`), or all of a user's (`sub`), ended;
/// the sessions it names end on every replica (through the shared store). 200 when the
/// token is valid, 400 otherwise; a token is accepted once.
pub async fn backchannel_logout(
    CurrentApp(app): CurrentApp,
    headers: HeaderMap,
    form: Result<axum::Form<LogoutForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, WebError> {
    let (Host::Auth, _) = host_of(&app, &headers)? else {
        return Err(WebError::NotFound);
    };
    let result = end_idp_sessions(&app, form.ok().and_then(|f| f.0.logout_token)).await;
    match &result {
        Ok(_) => {
            app.metrics.backchannel_logouts.inc();
        }
        Err(WebError::LogoutRefused(_)) => {
            app.metrics.backchannel_logout_rejections.inc();
        }
        Err(_) => {}
    }
    result
}

async fn end_idp_sessions(app: &App, token: Option<String>) -> Result<Response, WebError> {
    let now = app.now();
    let token = token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| WebError::LogoutRefused("no logout_token".into()))?;
    let logout = app
        .idp
        .verify_logout_token(&token, now)
        .map_err(|e| WebError::LogoutRefused(e.to_string()))?;
    if !app
        .store
        .claim_once(
            &format!("logout:{}", logout.jti),
            logout.iat.max(now) + LOGOUT_JTI_TTL_SECS,
        )
        .await?
    {
        return Err(WebError::LogoutRefused(
            "replayed (jti already used)".into(),
        ));
    }
    let selector = match (logout.sid.as_deref(), logout.sub.as_deref()) {
        (Some(sid), sub) => Selector::IdpSession { sid, sub },
        (None, Some(sub)) => Selector::Subject(sub),
        // The verifier refuses a token with neither.
        (None, None) => return Err(WebError::LogoutRefused("neither sid nor sub".into())),
    };
    let ended = app.store.revoke(selector, now).await?;
    for s in &ended {
        app.tokens().forget_session(s.id);
        tracing::info!(
            user = s.user.display(),
            session = s.public_id(),
            "signed out by the identity provider (back-channel logout)"
        );
    }
    app.metrics.sessions_revoked.inc_by(ended.len() as u64);
    // Cache-Control: no-store is set on every answer of this service.
    Ok(StatusCode::OK.into_response())
}

pub async fn signed_out(CurrentApp(app): CurrentApp) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        pages::signed_out(app.urls.sign_in.as_str()),
    )
        .into_response()
}

async fn current_session<'a>(
    app: &'a App,
    headers: &HeaderMap,
) -> Result<(Option<Arc<Session>>, Host<'a>, String), WebError> {
    let (host, authority) = host_of(app, headers)?;
    let s = app
        .authorizer
        .session_from_cookie(&cookie_header(headers), &authority, app.now())
        .await?;
    Ok((s, host, authority))
}

/// HTML page: who am I signed in as.
pub async fn user_page(
    CurrentApp(app): CurrentApp,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    let (session, host, authority) = current_session(&app, &headers).await?;
    let Some(s) = session else {
        // On a route host, sign in through the hop bound to this browser.
        if let Host::Route(route) = host {
            return route_sign_in(&app, &headers, route, &authority, None);
        }
        return Ok(Redirect::to(app.urls.sign_in.as_str()).into_response());
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
    let sign_out = format!("{}/.portcullis/sign_out", origin_of(&app, &host));
    Ok((
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        pages::user_info(&rows, &sign_out),
    )
        .into_response())
}

/// JSON: who am I signed in as (401 when not).
pub async fn user_json(
    CurrentApp(app): CurrentApp,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    let (session, _, _) = current_session(&app, &headers).await?;
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

#[cfg(test)]
mod attack_tests {
    //! The hop and sign-out edges in process: the axum router driven with `oneshot`, with
    //! tokens sealed here so that expiry and binding can be set exactly.
    use axum::body::Body;
    use axum::http::{Request, StatusCode};

    use super::*;
    use crate::testing::{CONFIG, TestApp, user};

    const APP: &str = "app.localhost:8443";

    async fn setup() -> (TestApp, Session) {
        let t = TestApp::new(CONFIG);
        let session = t.session(user("bob@example.com", &[])).await;
        (t, session)
    }

    fn hop(app: &App, sid: SessionId, nonce: &str, exp: u64) -> String {
        let hop = Hop {
            sid,
            rd: format!("https://{APP}/"),
            hb: hop_binding(nonce),
            exp,
            jti: random_token(16),
        };
        app.hop.seal(&hop, APP.as_bytes())
    }

    async fn get(
        t: &TestApp,
        host: &str,
        uri: &str,
        cookie: Option<&str>,
    ) -> (StatusCode, HeaderMap, String) {
        let mut req = Request::get(uri).header("host", host);
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        let a = t.send(req.body(Body::empty()).unwrap()).await;
        (a.status, a.headers, a.body)
    }

    #[tokio::test]
    async fn attack_hop_expired_foreign_or_replayed_is_refused() {
        let (t, session) = setup().await;
        let app = &t.app;
        let now = || t.app.now();
        let nonce = random_token(16);
        let cookie = format!("{}={nonce}", app.cookies().hop_name());
        let uri = |token: &str| format!("/.portcullis/callback?hop={token}");

        // Expired a second ago, with the right nonce.
        let expired = hop(app, session.id, &nonce, now() - 1);
        let (status, headers, _) = get(&t, APP, &uri(&expired), Some(&cookie)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(headers.get("set-cookie").is_none(), "nothing changes");

        // Bound to another browser's nonce, or with no nonce cookie at all.
        let fresh = hop(app, session.id, &nonce, now() + 60);
        let other = format!("{}={}", app.cookies().hop_name(), random_token(16));
        for c in [Some(other.as_str()), None] {
            let (status, headers, body) = get(&t, APP, &uri(&fresh), c).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{c:?}");
            assert!(body.contains("another browser"), "{body}");
            assert!(
                headers.get("set-cookie").is_none(),
                "the victim's cookies are untouched"
            );
        }
        // On another route host.
        let (status, _, _) = get(&t, "admin.localhost:8443", &uri(&fresh), Some(&cookie)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        // Control: the right browser gets its session cookie, once.
        let (status, headers, _) = get(&t, APP, &uri(&fresh), Some(&cookie)).await;
        assert!(status.is_redirection(), "{status}");
        let set: Vec<_> = headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        assert!(
            set.iter().any(|c| c.starts_with("__Host-_portcullis=")),
            "{set:?}"
        );
        assert!(
            set.iter()
                .any(|c| c.starts_with("__Host-_portcullis_hop=;")),
            "the nonce is spent: {set:?}"
        );
        let (status, _, _) = get(&t, APP, &uri(&fresh), Some(&cookie)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "replayed");
    }

    #[tokio::test]
    async fn attack_sign_out_continuation_of_another_session_signs_nobody_out() {
        let (t, session) = setup().await;
        let app = &t.app;
        let now = || t.app.now();
        let auth = app.auth_authority.clone();
        let cookie = app
            .cookies()
            .issue(session.id, &auth, session.expires_at, now());
        let cookie = cookie.split(';').next().unwrap().to_string();
        let seal = |sid: SessionId, exp: u64| {
            app.sign_out
                .seal(&SignOutContinuation { sid, exp }, auth.as_bytes())
        };
        for (what, token) in [
            ("another session's", seal(SessionId::random(), now() + 60)),
            ("expired", seal(session.id, now() - 1)),
            ("garbage", "x".repeat(50)),
        ] {
            let (status, _, body) = get(
                &t,
                &auth,
                &format!("/.portcullis/sign_out?t={token}"),
                Some(&cookie),
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{what}: the confirmation page");
            assert!(body.contains("method=\"post\""), "{what}");
            assert!(
                app.store.get(&session.id, now()).await.unwrap().is_some(),
                "{what}: still signed in"
            );
        }
        // Control: this session's own continuation finishes the sign-out.
        let token = seal(session.id, now() + 60);
        let (status, _, _) = get(
            &t,
            &auth,
            &format!("/.portcullis/sign_out?t={token}"),
            Some(&cookie),
        )
        .await;
        assert!(status.is_redirection(), "{status}");
        assert!(app.store.get(&session.id, now()).await.unwrap().is_none());
    }
}
