//! The authorization decision: (request, session, route) → allow with headers, redirect to
//! sign in, or deny. Plain Rust: the gRPC edge (`authz`) converts Envoy's `CheckRequest`
//! into a [`Request`] and the [`Decision`] back, and nothing here knows about tonic.

use std::collections::HashMap;
use std::sync::Arc;

use crate::app::App;
use crate::cockpit::{CockpitSettings, TokenTooLong, basic_credential};
use crate::config::Route;
use crate::crypto::{random_token, sha256_b64};
use crate::identity::User;
use crate::pages;
use crate::policy::Verdict;
use crate::routes::NoRoute;
use crate::session::{CookieJar, Session};

/// How long a hop nonce cookie lives: as long as a sign-in may take.
pub const HOP_NONCE_TTL_SECS: u64 = 600;
/// A hop nonce is 16 random bytes in base64url.
const HOP_NONCE_LEN: usize = 22;

/// The parts of an HTTP request the decision looks at. Header names are lowercase.
#[derive(Debug)]
pub struct Request<'a> {
    pub method: &'a str,
    pub scheme: &'a str,
    pub authority: &'a str,
    /// Path with query, as received.
    pub path: &'a str,
    pub headers: &'a HashMap<String, String>,
    /// The route named by Envoy's per-route `context_extensions`, if any.
    pub route_hint: Option<&'a str>,
}

impl Request<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// What Envoy should do with the request. Its `Debug` shows header names and statuses
/// only: the values are identity JWTs, credentials and cookies, which no log may contain.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Forward upstream after applying these header edits.
    Allow(HeaderEdits),
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

/// Why a request is not forwarded. Each is turned into a response in exactly one place,
/// [`refuse`].
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("no route matches {authority}{path}")]
    NoRoute { authority: String, path: String },
    #[error("{authority}{path} names another route as upstreams read paths")]
    AmbiguousPath { authority: String, path: String },
    #[error("sign-in required")]
    SignInRequired { return_url: String },
    #[error("{} is not allowed on route {route}", user.display())]
    Forbidden {
        user: Box<User>,
        route: String,
        authority: String,
    },
    #[error("{} has no local account on the Cockpit route {authority}", user.display())]
    NoLocalAccount { user: Box<User>, authority: String },
    #[error(transparent)]
    CockpitToken(#[from] TokenTooLong),
    #[error(transparent)]
    Store(#[from] crate::session::StoreError),
}

impl App {
    /// Decides one request. `now` is Unix seconds.
    pub async fn decide(&self, req: &Request<'_>, now: u64) -> Decision {
        match self.authorize(req, now).await {
            Ok(edits) => Decision::Allow(edits),
            Err(refusal) => Decision::Respond(self.refuse(&refusal, req)),
        }
    }

    async fn authorize(&self, req: &Request<'_>, now: u64) -> Result<HeaderEdits, Refusal> {
        let index = self
            .routes
            .select(req.route_hint, req.scheme, req.authority, req.path)
            .map_err(|e| {
                let (authority, path) =
                    (req.authority.to_string(), path_only(req.path).to_string());
                match e {
                    NoRoute::Unknown => Refusal::NoRoute { authority, path },
                    NoRoute::Ambiguous => Refusal::AmbiguousPath { authority, path },
                }
            })?;
        let route = self.routes.get(index);
        let cookie_header = req.header("cookie").unwrap_or("");
        let session = self
            .session_from_cookie(cookie_header, &route.authority, now)
            .await?;
        match route.policy.evaluate(session.as_ref().map(|s| &s.user)) {
            Verdict::Allow => {
                let mut edits = self.forward_edits(session.as_deref(), index, cookie_header, now);
                if let Some(cockpit) = &route.cockpit {
                    self.cockpit_edits(cockpit, route, session.as_deref(), req, now, &mut edits)?;
                }
                Ok(edits)
            }
            Verdict::SignInRequired => Err(Refusal::SignInRequired {
                return_url: format!("{}://{}{}", req.scheme, route.authority, req.path),
            }),
            Verdict::Forbidden => Err(Refusal::Forbidden {
                user: Box::new(
                    session
                        .map(|s| s.user.clone())
                        .expect("forbidden implies a user"),
                ),
                route: route.name.clone(),
                authority: route.authority.clone(),
            }),
        }
    }

    /// On a Cockpit route: credentials on the login request only, and never the client's own.
    fn cockpit_edits(
        &self,
        cockpit: &CockpitSettings,
        route: &Route,
        session: Option<&Session>,
        req: &Request<'_>,
        now: u64,
        edits: &mut HeaderEdits,
    ) -> Result<(), Refusal> {
        let Some(session) = session else {
            edits.remove.push("authorization".into());
            return Ok(());
        };
        let account =
            cockpit
                .account_for(&session.user)
                .ok_or_else(|| Refusal::NoLocalAccount {
                    user: Box::new(session.user.clone()),
                    authority: route.authority.clone(),
                })?;
        if cockpit.is_login(req.method, req.path) {
            let basic = basic_credential(
                self.minter.keys(),
                self.minter.issuer(),
                &account,
                &route.authority,
                now,
            )?;
            edits.set.push(("authorization".into(), basic));
        } else {
            edits.remove.push("authorization".into());
        }
        Ok(())
    }

    /// The live session a `Cookie` header points at for `authority`, if any. A tampered,
    /// foreign, expired or revoked cookie is simply no session.
    pub async fn session_from_cookie(
        &self,
        cookie_header: &str,
        authority: &str,
        now: u64,
    ) -> Result<Option<Arc<Session>>, crate::session::StoreError> {
        for sid in self.cookies.session_ids(cookie_header, authority, now) {
            if let Some(session) = self.store.get(&sid, now).await? {
                return Ok(Some(session));
            }
        }
        Ok(None)
    }

    fn forward_edits(
        &self,
        session: Option<&Session>,
        route: usize,
        cookie_header: &str,
        now: u64,
    ) -> HeaderEdits {
        let mut edits = HeaderEdits::default();
        match session {
            Some(s) => {
                let r = self.routes.get(route);
                let token = self.tokens.get_or_mint(s.id, route, now, || {
                    self.metrics.tokens_signed.inc();
                    let role = r.role.as_ref().and_then(|m| m.role_for(&s.user.groups));
                    self.minter
                        .mint(&s.user, &s.public_id(), &r.audience(), role, now)
                });
                edits
                    .set
                    .push((self.identity_header.clone(), token.to_string()));
            }
            // Never let a client-supplied identity header through.
            None => edits.remove.push(self.identity_header.clone()),
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
        edits
    }

    /// The one place a refusal becomes a client response.
    fn refuse(&self, refusal: &Refusal, req: &Request<'_>) -> Response {
        let html = wants_html(req);
        match refusal {
            Refusal::NoRoute { .. } => {
                tracing::warn!(%refusal, "refused: no route (check the Envoy config's context_extensions)");
                Response::text(404, "no route is configured for this URL\n")
            }
            Refusal::AmbiguousPath { .. } => {
                tracing::info!(%refusal, "refused");
                Response::text(
                    400,
                    "this path is not accepted: remove ';' parameters and trailing dots or spaces from its segments\n",
                )
            }
            Refusal::SignInRequired { return_url } => {
                if html {
                    // Bind the hop that will bring the session here to this browser.
                    let (nonce, cookie) = self.hop_nonce(req.header("cookie").unwrap_or(""));
                    let sign_in = self.sign_in_url(return_url, Some(&nonce));
                    let mut r = Response::redirect(sign_in);
                    r.headers.push(("set-cookie", cookie));
                    r
                } else {
                    let sign_in = self.sign_in_url(return_url, None);
                    Response::json(
                        401,
                        serde_json::json!({"error": "unauthenticated", "sign_in_url": sign_in}),
                    )
                }
            }
            Refusal::Forbidden {
                user, authority, ..
            }
            | Refusal::NoLocalAccount { user, authority } => {
                tracing::info!(%refusal, "refused");
                if html {
                    let sign_out = format!("{}://{}/.portcullis/sign_out", req.scheme, authority);
                    Response::html(403, pages::forbidden(user.display(), &sign_out))
                } else {
                    Response::json(
                        403,
                        serde_json::json!({"error": "forbidden", "user": user.display()}),
                    )
                }
            }
            Refusal::CockpitToken(e) => {
                tracing::error!(error = %e, "cannot sign in to Cockpit");
                Response::text(
                    500,
                    &format!("portcullis cannot sign you in to Cockpit: {e}\n"),
                )
            }
            Refusal::Store(e) => {
                tracing::error!(error = %e, "session store failed; refusing");
                Response::text(503, "authorization temporarily unavailable\n")
            }
        }
    }

    /// The sign-in link on the auth host for `return_url`. With the route host's hop nonce,
    /// its hash goes along (`hb`) to be sealed into the hop; without one (API clients), the
    /// auth host first sends the browser to the route host to get one.
    pub fn sign_in_url(&self, return_url: &str, hop_nonce: Option<&str>) -> String {
        let mut url = self.auth_url.clone();
        url.set_path("/.portcullis/sign_in");
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

/// The path without its query, for logs: queries can carry an app's own tokens.
pub fn path_only(path: &str) -> &str {
    path.split_once('?').map_or(path, |(p, _)| p)
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

    pub fn html(status: u16, body: String) -> Self {
        Self {
            status,
            headers: vec![
                ("content-type", "text/html; charset=utf-8".into()),
                ("cache-control", "no-store".into()),
            ],
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

/// Whether the client is a browser navigating (best `Accept` match is `text/html`), as
/// opposed to XHR/fetch, an API client, gRPC or a WebSocket, which get 401 instead of a
/// redirect they could not follow.
pub fn wants_html(req: &Request<'_>) -> bool {
    if req.header("upgrade").is_some()
        || req.header("x-requested-with").is_some()
        || req
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/grpc"))
    {
        return false;
    }
    req.header("accept").is_some_and(accept_prefers_html)
}

/// True when `text/html` is explicitly acceptable and nothing else listed is preferred to it.
fn accept_prefers_html(accept: &str) -> bool {
    let mut html: Option<(u8, f32)> = None; // (specificity, q) of the best range matching text/html
    let mut best_other = 0.0f32;
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|v| v.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        let specificity = match media.as_str() {
            "text/html" => 3,
            "text/*" => 2,
            "*/*" => 1,
            _ => {
                best_other = best_other.max(q);
                continue;
            }
        };
        if specificity > 1 && html.is_none_or(|(s, _)| specificity > s) {
            html = Some((specificity, q));
        }
    }
    matches!(html, Some((_, q)) if q > 0.0 && q >= best_other)
}

#[cfg(test)]
mod tests;
