//! The authorization decision: (route, session, request, now) → allow, and on what grounds,
//! or refuse, and why. A plain function: the route and the session were found by the
//! caller ([`crate::authorizer`]), which also turns the outcome into header edits or a
//! response.

use std::collections::HashMap;
use std::net::IpAddr;

use super::cockpit::CockpitSettings;
use super::policy::{Facts, Reason, Verdict};
use super::route::{NoRoute, Route, canonical_path};
use super::session::Session;
use super::user::User;

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
    /// The client's address, as Envoy determined it (its `xff_num_trusted_hops`).
    pub source_ip: Option<IpAddr>,
}

impl Request<'_> {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// What the decision says about one request.
#[derive(Debug)]
pub enum Outcome<'a> {
    Allow(Grant<'a>),
    Refuse(Refusal<'a>),
}

/// An allowed request: what goes upstream with it.
#[derive(Debug)]
pub struct Grant<'a> {
    pub route: &'a Route,
    /// The session whose identity goes upstream; `None` on a public route without one.
    pub session: Option<&'a Session>,
    /// The policy rule that allowed it.
    pub reason: Reason<'a>,
    pub cockpit: CockpitStep,
}

/// What an allowed request on a Cockpit route carries to Cockpit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CockpitStep {
    /// Not a Cockpit route.
    None,
    /// Cockpit's login request: log in as this local account, with administrative access
    /// when `admin` (the user is in one of the route's admin groups).
    LogIn { account: String, admin: bool },
    /// Any other request: no credentials, and never the client's own.
    StripCredentials,
}

/// Why a request is not forwarded.
#[derive(Debug, Clone)]
pub enum Refusal<'a> {
    /// No route serves this host and path.
    NoRoute,
    /// The path names one route as written and another as upstreams would read it.
    AmbiguousPath,
    /// No (valid) session on a route that needs one.
    SignInRequired { route: &'a Route },
    /// The route's policy refuses: a deny rule matched (`reason`), or no allow rule did for
    /// this user. `user` is `None` when a deny rule refused an anonymous request.
    Forbidden {
        route: &'a Route,
        user: Option<&'a User>,
        reason: Option<Reason<'a>>,
    },
    /// Allowed on a Cockpit route, but the user maps to no local account.
    NoLocalAccount { route: &'a Route, user: &'a User },
}

impl From<NoRoute> for Refusal<'_> {
    fn from(e: NoRoute) -> Self {
        match e {
            NoRoute::Unknown => Refusal::NoRoute,
            NoRoute::Ambiguous => Refusal::AmbiguousPath,
        }
    }
}

/// The kind of a decision's result, for metrics labels and logs: every refusal keeps its
/// kind, and so does each way the work around the decision can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutcomeKind {
    Allow,
    NoRoute,
    AmbiguousPath,
    SignInRequired,
    Forbidden,
    NoLocalAccount,
    /// The Cockpit login token would not fit PAM's limit.
    CockpitTokenTooLong,
    /// The session store could not be read.
    StoreUnavailable,
    /// A bearer token that does not verify.
    InvalidBearerToken,
}

impl OutcomeKind {
    /// Every kind, in the order of [`OutcomeKind::index`].
    pub const ALL: [OutcomeKind; 9] = [
        OutcomeKind::Allow,
        OutcomeKind::NoRoute,
        OutcomeKind::AmbiguousPath,
        OutcomeKind::SignInRequired,
        OutcomeKind::Forbidden,
        OutcomeKind::NoLocalAccount,
        OutcomeKind::CockpitTokenTooLong,
        OutcomeKind::StoreUnavailable,
        OutcomeKind::InvalidBearerToken,
    ];

    /// The position of this kind in [`OutcomeKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The label metrics and logs use.
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Allow => "allow",
            OutcomeKind::NoRoute => "no_route",
            OutcomeKind::AmbiguousPath => "ambiguous_path",
            OutcomeKind::SignInRequired => "sign_in_required",
            OutcomeKind::Forbidden => "forbidden",
            OutcomeKind::NoLocalAccount => "no_local_account",
            OutcomeKind::CockpitTokenTooLong => "cockpit_token_too_long",
            OutcomeKind::StoreUnavailable => "store_unavailable",
            OutcomeKind::InvalidBearerToken => "invalid_bearer_token",
        }
    }
}

impl Outcome<'_> {
    pub fn kind(&self) -> OutcomeKind {
        match self {
            Outcome::Allow(_) => OutcomeKind::Allow,
            Outcome::Refuse(r) => r.kind(),
        }
    }
}

impl Refusal<'_> {
    pub fn kind(&self) -> OutcomeKind {
        match self {
            Refusal::NoRoute => OutcomeKind::NoRoute,
            Refusal::AmbiguousPath => OutcomeKind::AmbiguousPath,
            Refusal::SignInRequired { .. } => OutcomeKind::SignInRequired,
            Refusal::Forbidden { .. } => OutcomeKind::Forbidden,
            Refusal::NoLocalAccount { .. } => OutcomeKind::NoLocalAccount,
        }
    }
}

/// Decides one request on `route` for `session` (the live session the request's cookie
/// points at, if any). `now` is Unix seconds; a session past its expiry counts as none.
pub fn decide<'a>(
    route: &'a Route,
    session: Option<&'a Session>,
    req: &Request<'_>,
    now: u64,
) -> Outcome<'a> {
    let session = session.filter(|s| s.expires_at > now);
    let user = session.map(|s| &s.user);
    // The canonical path is a copy; only policies that test the path pay for it.
    let canonical = route.policy.uses_path().then(|| canonical_path(req.path));
    let facts = Facts {
        method: req.method,
        path: canonical.as_deref().unwrap_or(""),
        source_ip: req.source_ip,
    };
    let reason = match route.policy.evaluate(user, &facts) {
        Verdict::Allow(reason) => reason,
        Verdict::SignInRequired => return Outcome::Refuse(Refusal::SignInRequired { route }),
        Verdict::Forbidden(reason) => {
            return Outcome::Refuse(Refusal::Forbidden {
                route,
                user,
                reason,
            });
        }
    };
    let cockpit = match (&route.cockpit, session) {
        (None, _) => CockpitStep::None,
        (Some(_), None) => CockpitStep::StripCredentials,
        (Some(cockpit), Some(s)) => match cockpit_step(cockpit, &s.user, req) {
            Some(step) => step,
            None => {
                return Outcome::Refuse(Refusal::NoLocalAccount {
                    route,
                    user: &s.user,
                });
            }
        },
    };
    Outcome::Allow(Grant {
        route,
        session,
        reason,
        cockpit,
    })
}

/// Credentials on Cockpit's login request only; `None` when the user has no local account.
fn cockpit_step(cockpit: &CockpitSettings, user: &User, req: &Request<'_>) -> Option<CockpitStep> {
    let account = cockpit.account_for(user)?;
    Some(if cockpit.is_login(req.method, req.path) {
        CockpitStep::LogIn {
            account,
            admin: cockpit.is_admin(user),
        }
    } else {
        CockpitStep::StripCredentials
    })
}

/// The path without its query, for logs: queries can carry an app's own tokens.
pub fn path_only(path: &str) -> &str {
    path.split_once('?').map_or(path, |(p, _)| p)
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
