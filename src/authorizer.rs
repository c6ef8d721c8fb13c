//! The work around the decision, shared by every edge that asks "may this request pass?"
//! (Envoy's ext_authz, and the forward-auth endpoint of nginx, Caddy and Traefik): find the route and the
//! session, ask [`decide`], then turn the outcome into header edits for the upstream or a
//! response for the client. The session lookup, the token source and the clock are traits,
//! so tests drive it with fakes, the way linkerd's policy server is generic over its index.

use std::sync::Arc;

use url::Url;

use crate::cockpit::TokenTooLong;
use crate::core::decision::{CockpitStep, wants_html};
use crate::core::{
    Clock, Grant, Outcome, OutcomeKind, Refusal, Request, Route, RouteTable, Session, decide,
};
use crate::crypto::{random_token, sha256_b64};
use crate::pages;
use crate::session::{CookieCodec, CookieJar, SessionLookup, StoreError};

/// How long a hop nonce cookie lives: as long as a sign-in may take.
pub const HOP_NONCE_TTL_SECS: u64 = 600;
/// A hop nonce is 16 random bytes in base64url.
const HOP_NONCE_LEN: usize = 22;

/// The tokens an allowed request carries upstream.
pub trait TokenSource: Send + Sync + 'static {
    /// The identity JWT for `session` on `route`.
    fn identity_token(&self, session: &Session, route: &Route, now: u64) -> Arc<str>;
    /// The `Authorization` value that logs `account` in to Cockpit on `route`, granting
    /// administrative access to that Cockpit session when `admin`.
    fn cockpit_credential(
        &self,
        account: &str,
        admin: bool,
        route: &Route,
        now: u64,
    ) -> Result<String, TokenTooLong>;
}

/// Finds the route and session of a request, decides, and renders the result.
pub struct Authorizer<L, T, C> {
    routes: RouteTable,
    cookies: Arc<CookieCodec>,
    /// Lowercase, as Envoy presents header names.
    identity_header: String,
    /// The auth host's `/.portcullis/sign_in`.
    sign_in: Url,
    lookup: L,
    tokens: T,
    clock: C,
    /// Verifies `Authorization: Bearer` tokens, when programmatic access is on.
    bearer: Option<Arc<dyn BearerVerifier>>,
}

/// Verifies a bearer token (an ID token or a JWT access token from the IdP) and says whom it
/// names, and until when.
#[async_trait::async_trait]
pub trait BearerVerifier: Send + Sync + 'static {
    async fn verify(&self, token: &str, now: u64) -> Result<(crate::core::User, u64), String>;
}

/// How an edge sends a browser that must sign in somewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignInAnswer {
    /// Envoy: `302` straight to the auth host, binding the hop to this browser with a nonce
    /// cookie that the denied response itself sets on the route host.
    AuthHost,
    /// Forward-auth proxies: to the route host's own `/.portcullis/sign_in`, which sets the
    /// nonce cookie and continues to the auth host, so no `Set-Cookie` has to cross the
    /// proxy (nginx's `auth_request` passes none). With `redirect`, a browser gets that as a
    /// `302` (Caddy and Traefik hand a denial to the client as it is); without, as a `401`
    /// with `Location` (nginx's `auth_request` passes only `401` and `403` on, and its
    /// `error_page` turns that into the redirect).
    RouteHost { redirect: bool },
}

/// What to do with one request, and the kind of outcome (for metrics and logs).
#[derive(Debug, PartialEq, Eq)]
pub struct Decision {
    pub kind: OutcomeKind,
    /// The route it was decided on, when one matched.
    pub route: Option<crate::core::RouteId>,
    pub action: Action,
}

/// What the proxy should do with the request. Its `Debug` shows header names and statuses
/// only: the values are identity JWTs, credentials and cookies, which no log may contain.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Forward upstream after applying these header edits.
    Forward(HeaderEdits),
    /// Answer the client directly.
    Respond(Response),
}

/// Header edits on an allowed request.
#[derive(Default, PartialEq, Eq)]
pub struct HeaderEdits {
    /// Set, replacing any value the client sent.
    pub set: Vec<(String, String)>,
    pub remove: Vec<String>,
}

/// A response to send to the client instead of forwarding.
#[derive(PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl std::fmt::Debug for HeaderEdits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set: Vec<&str> = self.set.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("HeaderEdits")
            .field("set", &set)
            .field("remove", &self.remove)
            .finish()
    }
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<&str> = self.headers.iter().map(|(k, _)| *k).collect();
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("headers", &headers)
            .field("body_bytes", &self.body.len())
            .finish()
    }
}

/// Why a request is answered instead of forwarded: a refusal of the decision, or a failure
/// of the work around it. Each becomes a response in exactly one place, [`Authorizer::respond`].
#[derive(Debug)]
enum Denial<'a> {
    Refused(Refusal<'a>),
    Store(StoreError),
    CockpitToken(TokenTooLong),
    /// A bearer token that does not verify (why, for the log).
    InvalidBearer(String),
}

impl Denial<'_> {
    fn kind(&self) -> OutcomeKind {
        match self {
            Denial::Refused(r) => r.kind(),
            Denial::Store(_) => OutcomeKind::StoreUnavailable,
            Denial::CockpitToken(_) => OutcomeKind::CockpitTokenTooLong,
            Denial::InvalidBearer(_) => OutcomeKind::InvalidBearerToken,
        }
    }
}

impl<L, T, C> Authorizer<L, T, C> {
    /// An authorizer over `routes`. `sign_in` is the auth host's sign-in URL.
    pub fn new(
        routes: RouteTable,
        cookies: Arc<CookieCodec>,
        identity_header: &str,
        sign_in: Url,
        lookup: L,
        tokens: T,
        clock: C,
    ) -> Self {
        Self {
            routes,
            cookies,
            identity_header: identity_header.to_ascii_lowercase(),
            sign_in,
            lookup,
            tokens,
            clock,
            bearer: None,
        }
    }

    /// Also accepts `Authorization: Bearer` tokens that `verifier` accepts, for scripts and
    /// CLIs: the same policy applies, and the bearer header never reaches the upstream.
    pub fn with_bearer(mut self, verifier: Arc<dyn BearerVerifier>) -> Self {
        self.bearer = Some(verifier);
        self
    }

    pub fn routes(&self) -> &RouteTable {
        &self.routes
    }

    pub fn cookies(&self) -> &CookieCodec {
        &self.cookies
    }

    pub fn tokens(&self) -> &T {
        &self.tokens
    }

    /// The header that carries the identity JWT upstream, lower case.
    pub fn identity_header(&self) -> &str {
        &self.identity_header
    }

    /// A route host's own sign-in link for `return_url` (see [`SignInAnswer::RouteHost`]).
    pub fn route_sign_in_url(&self, route: &Route, return_url: &str) -> String {
        let mut url = format!("{}/.portcullis/sign_in?", route.origin());
        url.push_str(
            &url::form_urlencoded::Serializer::new(String::new())
                .append_pair("rd", return_url)
                .finish(),
        );
        url
    }

    /// The sign-in link on the auth host for `return_url`. With the route host's hop nonce,
    /// its hash goes along (`hb`) to be sealed into the hop; without one (API clients), the
    /// auth host first sends the browser to the route host to get one.
    pub fn sign_in_url(&self, return_url: &str, hop_nonce: Option<&str>) -> String {
        let mut url = self.sign_in.clone();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("rd", return_url);
            if let Some(nonce) = hop_nonce {
                q.append_pair("hb", &hop_binding(nonce));
            }
        }
        url.into()
    }

    /// The hop nonce this browser holds on a route host (reused, so that two tabs signing in
    /// at once do not void each other's hop), else a new one, and the `Set-Cookie` value that
    /// (re)sets it. Host-only with `__Host-`: no other host can plant or read it.
    pub fn hop_nonce(&self, cookie_header: &str) -> (String, String) {
        let nonce = CookieJar::new(cookie_header)
            .get_all(self.cookies.hop_name())
            .find(|v| {
                v.len() == HOP_NONCE_LEN
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
            .map(str::to_string)
            .unwrap_or_else(|| random_token(16));
        let cookie = self
            .cookies
            .helper(self.cookies.hop_name(), &nonce, HOP_NONCE_TTL_SECS);
        (nonce, cookie)
    }
}

impl<L: SessionLookup, T: TokenSource, C: Clock> Authorizer<L, T, C> {
    /// Decides one request, for Envoy.
    pub async fn check(&self, req: &Request<'_>) -> Decision {
        self.check_as(req, SignInAnswer::AuthHost).await
    }

    /// Decides one request; a browser that must sign in is answered as `sign_in` says.
    pub async fn check_as(&self, req: &Request<'_>, sign_in: SignInAnswer) -> Decision {
        let started = std::time::Instant::now();
        let now = self.clock.now();
        let route = match self
            .routes
            .select(req.route_hint, req.scheme, req.authority, req.path)
        {
            Ok(route) => route,
            Err(e) => {
                let d = self.deny(Denial::Refused(e.into()), req, sign_in);
                audit(req, None, None, d.kind, None, started);
                return d;
            }
        };
        let cookie_header = req.header("cookie").unwrap_or("");
        let session = match self
            .session_from_cookie(cookie_header, &route.authority, now)
            .await
        {
            Ok(session) => session,
            Err(e) => {
                let mut d = self.deny(Denial::Store(e), req, sign_in);
                d.route = Some(route.id);
                audit(req, Some(route), None, d.kind, None, started);
                return d;
            }
        };
        // No session cookie: a bearer token, when programmatic access is on.
        let (session, by_bearer) = match (session, self.bearer_token(req)) {
            (None, Some((verifier, token))) => match verifier.verify(token, now).await {
                Ok((user, exp)) => {
                    let session = Session {
                        id: crate::core::SessionId::of_bearer(token),
                        user,
                        created_at: now,
                        expires_at: exp,
                        // A bearer token's "session" lives for one request: nothing to
                        // refresh, nothing to revoke.
                        version: 1,
                        idp: None,
                    };
                    (Some(Arc::new(session)), true)
                }
                Err(why) => {
                    let mut d = self.deny(Denial::InvalidBearer(why), req, sign_in);
                    d.route = Some(route.id);
                    audit(req, Some(route), None, d.kind, None, started);
                    return d;
                }
            },
            (session, _) => (session, false),
        };
        let outcome = decide(route, session.as_deref(), req, now);
        let rule = match &outcome {
            Outcome::Allow(grant) => Some(grant.reason),
            Outcome::Refuse(Refusal::Forbidden { reason, .. }) => *reason,
            Outcome::Refuse(_) => None,
        };
        let mut decision = match outcome {
            Outcome::Allow(grant) => match self.forward_edits(&grant, cookie_header, now) {
                Ok(mut edits) => {
                    // The bearer token was for us; the upstream gets the identity JWT.
                    if by_bearer && !edits.set.iter().any(|(k, _)| k == "authorization") {
                        edits.remove.push("authorization".into());
                    }
                    Decision {
                        kind: OutcomeKind::Allow,
                        route: None,
                        action: Action::Forward(edits),
                    }
                }
                Err(e) => self.deny(Denial::CockpitToken(e), req, sign_in),
            },
            Outcome::Refuse(refusal) => self.deny(Denial::Refused(refusal), req, sign_in),
        };
        decision.route = Some(route.id);
        audit(
            req,
            Some(route),
            session.as_deref(),
            decision.kind,
            rule,
            started,
        );
        decision
    }

    /// The bearer token of the request, when programmatic access is on and it has one.
    fn bearer_token<'r>(&self, req: &Request<'r>) -> Option<(&Arc<dyn BearerVerifier>, &'r str)> {
        let verifier = self.bearer.as_ref()?;
        let value = req.headers.get("authorization")?;
        let (scheme, token) = value.split_once(' ')?;
        let token = token.trim();
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some((verifier, token))
    }

    /// The live session a `Cookie` header points at for `authority`, if any. A tampered,
    /// foreign, expired or revoked cookie is simply no session.
    pub async fn session_from_cookie(
        &self,
        cookie_header: &str,
        authority: &str,
        now: u64,
    ) -> Result<Option<Arc<Session>>, StoreError> {
        for sid in self.cookies.session_ids(cookie_header, authority, now) {
            if let Some(session) = self.lookup.session(&sid, now).await? {
                return Ok(Some(session));
            }
        }
        Ok(None)
    }

    /// What an allowed request carries upstream: the identity JWT (or, with no session, no
    /// identity at all, whatever the client sent), Cockpit's credentials on its login
    /// request only, and none of our cookies.
    fn forward_edits(
        &self,
        grant: &Grant<'_>,
        cookie_header: &str,
        now: u64,
    ) -> Result<HeaderEdits, TokenTooLong> {
        let mut edits = HeaderEdits::default();
        match grant.session {
            Some(s) => {
                let token = self.tokens.identity_token(s, grant.route, now);
                edits
                    .set
                    .push((self.identity_header.clone(), token.to_string()));
            }
            // Never let a client-supplied identity header through.
            None => edits.remove.push(self.identity_header.clone()),
        }
        match &grant.cockpit {
            CockpitStep::None => {}
            CockpitStep::LogIn { account, admin } => {
                let basic = self
                    .tokens
                    .cockpit_credential(account, *admin, grant.route, now)?;
                edits.set.push(("authorization".into(), basic));
            }
            CockpitStep::StripCredentials => edits.remove.push("authorization".into()),
        }
        // A cheap substring test first: most upstream requests carry our cookie, but the
        // exact parse only runs when the name appears at all. Our cookies never reach an
        // upstream, on any route, public ones included.
        if self.cookies.may_contain_ours(cookie_header) {
            match self.cookies.strip(cookie_header) {
                Some(rest) => edits.set.push(("cookie".into(), rest)),
                None => edits.remove.push("cookie".into()),
            }
        }
        Ok(edits)
    }

    fn deny(&self, denial: Denial<'_>, req: &Request<'_>, sign_in: SignInAnswer) -> Decision {
        Decision {
            kind: denial.kind(),
            route: None,
            action: Action::Respond(self.respond(&denial, req, sign_in)),
        }
    }

    /// The one place a denial becomes a client response.
    fn respond(&self, denial: &Denial<'_>, req: &Request<'_>, sign_in: SignInAnswer) -> Response {
        let html = wants_html(req);
        let path = crate::core::decision::path_only(req.path);
        match denial {
            Denial::Refused(Refusal::NoRoute) => {
                tracing::warn!(
                    host = req.authority,
                    path,
                    "refused: no route (check the Envoy config's context_extensions)"
                );
                Response::text(404, "no route is configured for this URL\n")
            }
            Denial::Refused(Refusal::AmbiguousPath) => {
                tracing::info!(
                    host = req.authority,
                    path,
                    "refused: a path upstreams would read as another route's"
                );
                Response::text(
                    400,
                    "this path is not accepted: remove ';' parameters and trailing dots or spaces from its segments\n",
                )
            }
            Denial::Refused(Refusal::SignInRequired { route }) => {
                let return_url = format!("{}{}", route.origin(), req.path);
                match (sign_in, html) {
                    (SignInAnswer::AuthHost, true) => {
                        // Bind the hop that will bring the session here to this browser.
                        let (nonce, cookie) = self.hop_nonce(req.header("cookie").unwrap_or(""));
                        let mut r = Response::redirect(self.sign_in_url(&return_url, Some(&nonce)));
                        r.headers.push(("set-cookie", cookie));
                        r
                    }
                    (SignInAnswer::RouteHost { redirect: true }, true) => {
                        Response::redirect(self.route_sign_in_url(route, &return_url))
                    }
                    (SignInAnswer::RouteHost { redirect: false }, true) => {
                        let location = self.route_sign_in_url(route, &return_url);
                        let mut r = Response::json(
                            401,
                            serde_json::json!({"error": "unauthenticated", "sign_in_url": location}),
                        );
                        r.headers.push(("location", location));
                        r
                    }
                    (_, false) => {
                        let sign_in = self.sign_in_url(&return_url, None);
                        Response::json(
                            401,
                            serde_json::json!({"error": "unauthenticated", "sign_in_url": sign_in}),
                        )
                    }
                }
            }
            Denial::Refused(Refusal::Forbidden {
                route,
                user,
                reason,
            }) => {
                let who = user.map_or("", |u| u.display());
                let rule = reason.map(|r| r.to_string());
                tracing::info!(
                    user = who,
                    route = route.name,
                    rule = rule.as_deref().unwrap_or("no allow rule matched"),
                    "refused by the route's policy"
                );
                self.forbidden(route, user.map(|u| u.display()), html, req)
            }
            Denial::Refused(Refusal::NoLocalAccount { route, user }) => {
                tracing::info!(
                    user = user.display(),
                    route = route.name,
                    "refused: no local account on this Cockpit route"
                );
                self.forbidden(route, Some(user.display()), html, req)
            }
            Denial::InvalidBearer(why) => {
                tracing::info!(host = req.authority, path, why, "refused a bearer token");
                let mut r = Response::json(
                    401,
                    serde_json::json!({"error": "invalid_token", "request_id": req.header("x-request-id")}),
                );
                r.headers
                    .push(("www-authenticate", "Bearer error=\"invalid_token\"".into()));
                r
            }
            Denial::CockpitToken(e) => {
                tracing::error!(error = %e, "cannot sign in to Cockpit");
                Response::text(
                    500,
                    &format!("portcullis cannot sign you in to Cockpit: {e}\n"),
                )
            }
            Denial::Store(e) => {
                // Fail closed: without the store no session can be trusted, not even one
                // this replica saw a moment ago (it may have been revoked elsewhere).
                let request_id = req.header("x-request-id").unwrap_or("");
                tracing::error!(error = %e, request_id, "session store unavailable; refusing");
                const MESSAGE: &str =
                    "Sessions cannot be checked right now. Please try again in a moment.";
                let mut r = if html {
                    Response::html(
                        503,
                        pages::error("Temporarily unavailable", MESSAGE, request_id),
                    )
                } else {
                    Response::json(
                        503,
                        serde_json::json!({"error": "store_unavailable", "message": MESSAGE, "request_id": request_id}),
                    )
                };
                r.headers.push(("retry-after", "1".into()));
                r
            }
        }
    }
}

impl<L, T, C> Authorizer<L, T, C> {
    /// The 403 answer: a page naming who is signed in (with a sign-out button) and the
    /// request id to quote, or the same as JSON.
    fn forbidden(
        &self,
        route: &Route,
        user: Option<&str>,
        html: bool,
        req: &Request<'_>,
    ) -> Response {
        let request_id = req.header("x-request-id");
        if html {
            let sign_out = format!("{}/.portcullis/sign_out", route.origin());
            Response::html(
                403,
                pages::forbidden(user, &route.name, &sign_out, request_id),
            )
        } else {
            Response::json(
                403,
                serde_json::json!({"error": "forbidden", "user": user, "request_id": request_id}),
            )
        }
    }
}

/// The audit line of one decision, at info on the target `portcullis::audit` (filter it with
/// `RUST_LOG=portcullis::audit=off`): who, where, what was decided and by which rule. Never a
/// token, cookie or credential; the path without its query.
fn audit(
    req: &Request<'_>,
    route: Option<&Route>,
    session: Option<&Session>,
    kind: OutcomeKind,
    rule: Option<crate::core::Reason<'_>>,
    started: std::time::Instant,
) {
    let user = session.map(|s| &s.user);
    tracing::info!(
        target: "portcullis::audit",
        request_id = req.header("x-request-id").unwrap_or(""),
        method = req.method,
        host = req.authority,
        path = crate::core::decision::path_only(req.path),
        route = route.map_or("", |r| r.name.as_str()),
        sub = user.map_or("", |u| u.subject.as_str()),
        email = user.and_then(|u| u.email.as_deref()).unwrap_or(""),
        sid = session.map(|s| s.public_id()).unwrap_or_default(),
        outcome = kind.as_str(),
        rule = rule.map(|r| r.to_string()).unwrap_or_default(),
        latency_us = started.elapsed().as_micros() as u64,
        "decision"
    );
}

/// What a hop carries to prove which browser started the sign-in: the nonce's hash, so the
/// nonce itself only ever travels in the route host's cookie.
pub fn hop_binding(nonce: &str) -> String {
    sha256_b64(nonce.as_bytes())
}

impl Response {
    pub fn redirect(location: String) -> Self {
        Self {
            status: 302,
            headers: vec![("location", location), ("cache-control", "no-store".into())],
            body: String::new(),
        }
    }

    /// A page, with the headers every page carries (pages::security_headers).
    pub fn html(status: u16, body: String) -> Self {
        let mut headers = vec![("content-type", "text/html; charset=utf-8".to_string())];
        headers.extend(
            pages::security_headers()
                .into_iter()
                .map(|(k, v)| (k, v.to_string())),
        );
        Self {
            status,
            headers,
            body,
        }
    }

    pub fn json(status: u16, body: serde_json::Value) -> Self {
        Self {
            status,
            headers: vec![
                ("content-type", "application/json".into()),
                ("cache-control", "no-store".into()),
            ],
            body: body.to_string(),
        }
    }

    pub fn text(status: u16, body: &str) -> Self {
        Self {
            status,
            headers: vec![("content-type", "text/plain; charset=utf-8".into())],
            body: body.to_string(),
        }
    }
}

#[cfg(test)]
mod tests;
