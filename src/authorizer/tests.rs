//! The authorizer with fakes: routes built in code, sessions in memory (or a store that
//! fails), tokens that say what they are for, and a clock that moves when told.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use url::Url;

use super::*;
use crate::config::CookieConfig;
use crate::core::clock::ManualClock;
use crate::core::cockpit::{AccountMapping, CockpitSettings};
use crate::core::{Policy, SessionId, User};
use crate::secret::SecretBytes;
use crate::session::{MemoryStore, SessionStore};
use crate::testing::{FakeTokens, T0, user};

const BROWSER: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8";
const APP: &str = "app.localhost:8443";
const ADMIN: &str = "admin.localhost:8443";
const COCKPIT: &str = "cockpit.localhost:8443";
const PUBLIC: &str = "public.localhost:8443";

type TestAuthorizer = Authorizer<Arc<MemoryStore>, FakeTokens, Arc<ManualClock>>;

struct Harness {
    authorizer: TestAuthorizer,
    store: Arc<MemoryStore>,
    clock: Arc<ManualClock>,
}

fn route(name: &str, from: &str, policy: Policy) -> Route {
    Route::new(name.into(), Url::parse(from).unwrap(), policy)
}

fn routes() -> RouteTable {
    let mut cockpit = route(
        "cockpit",
        &format!("https://{COCKPIT}"),
        Policy::any_authenticated_user(),
    );
    cockpit.cockpit = Some(CockpitSettings {
        url_root: String::new(),
        account: AccountMapping::Table(
            [("alice@example.com".to_string(), "alice".to_string())].into(),
        ),
        admin_groups: vec!["admins".into()],
    });
    RouteTable::new(vec![
        route(
            "app",
            &format!("https://{APP}"),
            Policy::any_authenticated_user(),
        ),
        route(
            "admin",
            &format!("https://{ADMIN}"),
            Policy::allow_list(vec![], vec![], vec!["admins".into()]),
        ),
        route("public", &format!("https://{PUBLIC}"), Policy::public()),
        route(
            "app-admin",
            &format!("https://{APP}/admin"),
            Policy::allow_list(vec![], vec![], vec!["admins".into()]),
        ),
        cockpit,
    ])
}

fn cookie_codec() -> Arc<CookieCodec> {
    Arc::new(CookieCodec::new(&CookieConfig {
        name: "_portcullis".into(),
        previous_secrets: Vec::new(),
        secret: SecretBytes::new(vec![9; 32]),
        lifetime: std::time::Duration::from_secs(3600),
        secure: true,
    }))
}

/// An authorizer over `routes` with sessions from `lookup`, fake tokens and a clock at
/// [`T0`].
fn authorizer<L>(
    routes: RouteTable,
    lookup: L,
    clock: Arc<ManualClock>,
) -> Authorizer<L, FakeTokens, Arc<ManualClock>> {
    Authorizer::new(
        routes,
        cookie_codec(),
        "X-Portcullis-Jwt-Assertion",
        Url::parse("https://auth.localhost:8443/.portcullis/sign_in").unwrap(),
        lookup,
        FakeTokens::default(),
        clock,
    )
}

fn harness() -> Harness {
    let store = Arc::new(MemoryStore::default());
    let clock = Arc::new(ManualClock::at(T0));
    Harness {
        authorizer: authorizer(routes(), store.clone(), clock.clone()),
        store,
        clock,
    }
}

/// A GET of `path` on `authority` carrying a fresh cookie for `session`.
async fn get_with_session<L: SessionLookup>(
    a: &Authorizer<L, FakeTokens, Arc<ManualClock>>,
    authority: &str,
    path: &str,
    session: &Session,
) -> Decision {
    let cookie = a
        .cookies()
        .issue(session.id, authority, session.expires_at, T0);
    let headers: HashMap<String, String> = [(
        "cookie".to_string(),
        cookie.split(';').next().unwrap().to_string(),
    )]
    .into();
    let req = Request {
        method: "GET",
        scheme: "https",
        authority,
        path,
        headers: &headers,
        route_hint: None,
        source_ip: None,
    };
    a.check(&req).await
}

impl Harness {
    /// Stores a session for `u` and returns the `Cookie` header for `authority`.
    async fn sign_in(&self, u: User, authority: &str) -> String {
        let now = self.clock.now();
        let s = Session::new(u, now, 3600);
        let set = self
            .authorizer
            .cookies()
            .issue(s.id, authority, s.expires_at, now);
        self.store.put(s).await.unwrap();
        set.split(';').next().unwrap().to_string()
    }

    async fn check(&self, authority: &str, path: &str, headers: &[(&str, &str)]) -> Decision {
        self.check_as("GET", authority, path, headers, None).await
    }

    async fn check_as(
        &self,
        method: &str,
        authority: &str,
        path: &str,
        headers: &[(&str, &str)],
        hint: Option<&str>,
    ) -> Decision {
        let headers: HashMap<String, String> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let req = Request {
            method,
            scheme: "https",
            authority,
            path,
            headers: &headers,
            route_hint: hint,
            source_ip: None,
        };
        self.authorizer.check(&req).await
    }
}

fn response(d: Decision) -> Response {
    match d.action {
        Action::Respond(r) => r,
        Action::Forward(e) => panic!("forwarded with {e:?}"),
    }
}

fn edits(d: Decision) -> HeaderEdits {
    match d.action {
        Action::Forward(e) => e,
        Action::Respond(r) => panic!("answered {r:?}"),
    }
}

fn header<'a>(r: &'a Response, name: &str) -> &'a str {
    &r.headers
        .iter()
        .find(|(k, _)| *k == name)
        .unwrap_or_else(|| panic!("no {name} in {r:?}"))
        .1
}

#[tokio::test]
async fn unauthenticated_browser_is_redirected_with_return_url() {
    let h = harness();
    let d = h.check(APP, "/a?b=1", &[("accept", BROWSER)]).await;
    assert_eq!(d.kind, OutcomeKind::SignInRequired);
    let r = response(d);
    assert_eq!(r.status, 302);
    // The hop will be bound to this browser: the nonce goes into a host-only cookie on the
    // route host, its hash along to the auth host.
    let cookie = header(&r, "set-cookie");
    let nonce = cookie
        .strip_prefix("__Host-_portcullis_hop=")
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("{cookie}"));
    assert!(
        cookie.contains("; Path=/;") && cookie.contains("Secure") && cookie.contains("HttpOnly")
    );
    assert_eq!(
        header(&r, "location"),
        format!(
            "https://auth.localhost:8443/.portcullis/sign_in?rd=https%3A%2F%2Fapp.localhost%3A8443%2Fa%3Fb%3D1&hb={}",
            hop_binding(nonce)
        )
    );
    // A browser that already holds a nonce keeps it (two tabs signing in at once).
    let held = format!("__Host-_portcullis_hop={nonce}");
    let r = response(
        h.check(APP, "/", &[("accept", BROWSER), ("cookie", &held)])
            .await,
    );
    assert!(
        header(&r, "set-cookie").starts_with(&format!("__Host-_portcullis_hop={nonce};")),
        "{r:?}"
    );
    // A malformed held nonce is replaced, not reused.
    let bad = "__Host-_portcullis_hop=short";
    let r = response(
        h.check(APP, "/", &[("accept", BROWSER), ("cookie", bad)])
            .await,
    );
    assert!(!header(&r, "set-cookie").starts_with("__Host-_portcullis_hop=short;"));
}

#[tokio::test]
async fn unauthenticated_non_browsers_get_401_with_the_sign_in_url() {
    let h = harness();
    for headers in [
        vec![("accept", "application/json")],
        vec![("accept", "*/*")],
        vec![],
        vec![("accept", BROWSER), ("x-requested-with", "XMLHttpRequest")],
        vec![
            ("accept", BROWSER),
            ("upgrade", "websocket"),
            ("connection", "upgrade"),
        ],
        vec![("accept", BROWSER), ("content-type", "application/grpc")],
        vec![("accept", "text/html;q=0.5, application/json")],
    ] {
        let r = response(h.check(APP, "/x", &headers).await);
        assert_eq!(r.status, 401, "{headers:?}");
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["error"], "unauthenticated");
        assert_eq!(
            body["sign_in_url"],
            "https://auth.localhost:8443/.portcullis/sign_in?rd=https%3A%2F%2Fapp.localhost%3A8443%2Fx"
        );
        assert!(
            r.headers.iter().all(|(k, _)| *k != "set-cookie"),
            "no nonce for API clients"
        );
    }
}

#[tokio::test]
async fn allowed_user_gets_the_identity_and_loses_our_cookies_and_forged_headers() {
    let h = harness();
    let cookie = h.sign_in(user("alice@example.com", &["admins"]), APP).await;
    let header = format!("theme=dark; {cookie}; _portcullis_csrf=zzz; lang=en");
    let d = h
        .check(
            APP,
            "/",
            &[
                ("cookie", &header),
                ("x-portcullis-jwt-assertion", "forged"),
            ],
        )
        .await;
    assert_eq!(d.kind, OutcomeKind::Allow);
    let e = edits(d);
    let set: HashMap<_, _> = e.set.iter().cloned().collect();
    assert_eq!(set["cookie"], "theme=dark; lang=en");
    assert_eq!(
        set["x-portcullis-jwt-assertion"],
        "jwt:alice:app.localhost:8443"
    );
    assert!(e.remove.is_empty());
    assert_eq!(h.authorizer.tokens().identity.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_cookie_header_of_only_ours_is_removed_entirely() {
    let h = harness();
    let cookie = h.sign_in(user("alice@example.com", &[]), APP).await;
    for header in [
        cookie.clone(),
        format!("{cookie}, __Host-_portcullis_hop=x"),
        format!("{cookie}; _portcullis=1; __secure-_portcullis_idt=2; __HOST-_portcullis_x=3"),
    ] {
        let e = edits(h.check(APP, "/", &[("cookie", &header)]).await);
        assert_eq!(e.remove, vec!["cookie".to_string()], "{header}");
    }
}

#[tokio::test]
async fn policy_refusal_is_403_naming_the_user() {
    let h = harness();
    let cookie = h.sign_in(user("bob@example.com", &[]), ADMIN).await;
    let d = h
        .check(ADMIN, "/", &[("cookie", &cookie), ("accept", BROWSER)])
        .await;
    assert_eq!(d.kind, OutcomeKind::Forbidden);
    let r = response(d);
    assert_eq!(r.status, 403);
    assert!(r.body.contains("bob@example.com") && r.body.contains("<strong>admin</strong>"));
    assert!(
        r.body
            .contains("https://admin.localhost:8443/.portcullis/sign_out")
    );
    assert_eq!(header(&r, "content-security-policy"), crate::pages::csp());
    assert_eq!(header(&r, "cache-control"), "no-store");
    let r = response(
        h.check(
            ADMIN,
            "/",
            &[
                ("cookie", &cookie),
                ("accept", "application/json"),
                ("x-request-id", "r-42"),
            ],
        )
        .await,
    );
    assert_eq!(r.status, 403);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&r.body).unwrap(),
        serde_json::json!({"error": "forbidden", "user": "bob@example.com", "request_id": "r-42"})
    );
    assert_eq!(h.authorizer.tokens().identity.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn cookies_from_other_hosts_tampered_expired_or_revoked_are_no_session() {
    let h = harness();
    let app_cookie = h.sign_in(user("alice@example.com", &["admins"]), APP).await;
    let refused = |d: Decision| {
        assert_eq!(d.kind, OutcomeKind::SignInRequired);
        assert_eq!(response(d).status, 401);
    };
    // A cookie minted for app is worthless on admin.
    refused(h.check(ADMIN, "/", &[("cookie", &app_cookie)]).await);
    // Tampered, anywhere in the value.
    let (name, value) = app_cookie.split_once('=').unwrap();
    for at in [0, value.len() / 2, value.len() - 1] {
        let mut t = value.as_bytes().to_vec();
        t[at] = if t[at] == b'A' { b'B' } else { b'A' };
        let t = format!("{name}={}", String::from_utf8(t).unwrap());
        refused(h.check(APP, "/", &[("cookie", &t)]).await);
    }
    // Truncated.
    let short = format!("{name}={}", &value[..value.len() - 3]);
    refused(h.check(APP, "/", &[("cookie", &short)]).await);
    // Expired: the clock moves past the session's end, no sleeping.
    h.clock.advance(3600);
    refused(h.check(APP, "/", &[("cookie", &app_cookie)]).await);
    h.clock.set(T0);
    assert_eq!(
        h.check(APP, "/", &[("cookie", &app_cookie)]).await.kind,
        OutcomeKind::Allow
    );
    // Revoked server-side.
    let sid = h
        .authorizer
        .cookies()
        .open(value, APP, h.clock.now())
        .unwrap();
    h.store.remove(&sid).await.unwrap();
    refused(h.check(APP, "/", &[("cookie", &app_cookie)]).await);
}

#[tokio::test]
async fn unknown_routes_and_mismatched_hints_fail_closed() {
    let h = harness();
    let d = h.check("evil.localhost:8443", "/", &[]).await;
    assert_eq!(d.kind, OutcomeKind::NoRoute);
    assert_eq!(response(d).status, 404);
    let d = h.check_as("GET", APP, "/", &[], Some("admin")).await;
    assert_eq!(d.kind, OutcomeKind::NoRoute);
    let d = h.check(APP, "/admin;jsessionid=1/y", &[]).await;
    assert_eq!(d.kind, OutcomeKind::AmbiguousPath);
    assert_eq!(response(d).status, 400);
}

#[tokio::test]
async fn a_forged_identity_header_is_removed_on_public_routes() {
    let h = harness();
    let e = edits(
        h.check(PUBLIC, "/", &[("x-portcullis-jwt-assertion", "forged")])
            .await,
    );
    assert_eq!(e.remove, vec!["x-portcullis-jwt-assertion".to_string()]);
    assert!(e.set.is_empty());
    // Signed in, the identity goes to a public route too, and our cookie does not.
    let cookie = h.sign_in(user("alice@example.com", &[]), PUBLIC).await;
    let e = edits(h.check(PUBLIC, "/", &[("cookie", &cookie)]).await);
    let set: HashMap<_, _> = e.set.iter().cloned().collect();
    assert_eq!(
        set["x-portcullis-jwt-assertion"],
        "jwt:alice:public.localhost:8443"
    );
    assert_eq!(e.remove, vec!["cookie".to_string()]);
}

#[tokio::test]
async fn cockpit_credentials_go_on_the_login_request_only_and_never_the_clients() {
    let h = harness();
    let cookie = h.sign_in(user("alice@example.com", &[]), COCKPIT).await;
    let forged = [
        ("cookie", cookie.as_str()),
        ("authorization", "Basic forged"),
    ];
    let e = edits(h.check(COCKPIT, "/cockpit/login", &forged).await);
    let set: HashMap<_, _> = e.set.iter().cloned().collect();
    assert_eq!(
        set["authorization"],
        "Basic cockpit:alice@cockpit.localhost:8443"
    );
    for path in ["/", "/cockpit/socket", "/cockpit/login?x"] {
        let method = if path == "/cockpit/login?x" {
            "POST"
        } else {
            "GET"
        };
        let e = edits(h.check_as(method, COCKPIT, path, &forged, None).await);
        assert!(e.set.iter().all(|(k, _)| k != "authorization"), "{path}");
        assert!(e.remove.contains(&"authorization".to_string()), "{path}");
    }
    // Not signed in: the client's credentials are stripped before Cockpit sees them... and
    // the request is refused anyway on this route.
    let d = h
        .check(COCKPIT, "/cockpit/login", &[("authorization", "Basic x")])
        .await;
    assert_eq!(d.kind, OutcomeKind::SignInRequired);
    assert_eq!(h.authorizer.tokens().cockpit.load(Ordering::SeqCst), 1);
    // In the route's admin group, the credential grants administrative access too.
    let cookie = h
        .sign_in(user("alice@example.com", &["admins"]), COCKPIT)
        .await;
    let e = edits(
        h.check(COCKPIT, "/cockpit/login", &[("cookie", &cookie)])
            .await,
    );
    let set: HashMap<_, _> = e.set.iter().cloned().collect();
    assert_eq!(
        set["authorization"],
        "Basic cockpit:alice+admin@cockpit.localhost:8443"
    );
}

#[tokio::test]
async fn a_user_without_a_local_account_is_refused_before_cockpit() {
    let h = harness();
    let cookie = h.sign_in(user("carol@example.com", &[]), COCKPIT).await;
    let d = h
        .check(
            COCKPIT,
            "/cockpit/login",
            &[("cookie", &cookie), ("accept", "application/json")],
        )
        .await;
    assert_eq!(d.kind, OutcomeKind::NoLocalAccount);
    let r = response(d);
    assert_eq!(r.status, 403);
    assert!(r.body.contains("carol@example.com"), "{}", r.body);
    assert_eq!(h.authorizer.tokens().cockpit.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_cockpit_token_that_cannot_fit_is_a_clear_error() {
    let long = format!("{}.localhost", "x".repeat(210));
    let mut cockpit = route(
        "cockpit",
        &format!("https://{long}"),
        Policy::any_authenticated_user(),
    );
    cockpit.cockpit = Some(CockpitSettings {
        url_root: String::new(),
        account: AccountMapping::Subject,
        admin_groups: Vec::new(),
    });
    let store = Arc::new(MemoryStore::default());
    let a = authorizer(
        RouteTable::new(vec![cockpit]),
        store.clone(),
        Arc::new(ManualClock::at(T0)),
    );
    let s = Session::new(user("alice@example.com", &[]), T0, 60);
    store.put(s.clone()).await.unwrap();
    let d = get_with_session(&a, &long, "/cockpit/login", &s).await;
    assert_eq!(d.kind, OutcomeKind::CockpitTokenTooLong);
    let r = response(d);
    assert_eq!(r.status, 500);
    assert!(r.body.contains("PAM's limit"), "{}", r.body);
}

/// A store that cannot be reached.
struct DownStore;

#[async_trait]
impl SessionLookup for DownStore {
    async fn session(&self, _: &SessionId, _: u64) -> Result<Option<Arc<Session>>, StoreError> {
        Err(StoreError("connection refused".into()))
    }
}

#[tokio::test]
async fn a_store_that_fails_refuses_with_503_and_never_allows() {
    let a = authorizer(routes(), DownStore, Arc::new(ManualClock::at(T0)));
    let s = Session::new(user("alice@example.com", &[]), T0, 60);
    let d = get_with_session(&a, APP, "/", &s).await;
    assert_eq!(d.kind, OutcomeKind::StoreUnavailable);
    let r = response(d);
    assert_eq!(r.status, 503);
    assert!(!r.body.contains("connection refused"), "no internals");
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("JSON for API clients");
    assert_eq!(v["error"], "store_unavailable");
    // A browser gets a page.
    let mut headers: HashMap<String, String> = [
        ("accept".to_string(), BROWSER.to_string()),
        ("x-request-id".to_string(), "req-42".to_string()),
    ]
    .into();
    headers.insert(
        "cookie".into(),
        a.cookies()
            .issue(s.id, APP, s.expires_at, T0)
            .split(';')
            .next()
            .unwrap()
            .to_string(),
    );
    let req = Request {
        method: "GET",
        scheme: "https",
        authority: APP,
        path: "/",
        headers: &headers,
        route_hint: None,
        source_ip: None,
    };
    let r = response(a.check(&req).await);
    assert_eq!(r.status, 503);
    assert!(r.body.contains("<h1>Temporarily unavailable</h1>") && r.body.contains("req-42"));
    assert!(r.headers.iter().any(|(k, _)| *k == "retry-after"));
    // Without a cookie there is nothing to look up: the usual sign-in answer.
    let none = HashMap::new();
    let req = Request {
        method: "GET",
        scheme: "https",
        authority: APP,
        path: "/",
        headers: &none,
        route_hint: None,
        source_ip: None,
    };
    assert_eq!(a.check(&req).await.kind, OutcomeKind::SignInRequired);
}

#[test]
fn debug_output_carries_no_values() {
    let e = HeaderEdits {
        set: vec![("x-id".into(), "eyJsecret".into())],
        remove: vec!["cookie".into()],
    };
    let r = Response::redirect("https://x/?secret=1".into());
    let printed = format!("{e:?} {r:?}");
    assert!(!printed.contains("secret"), "{printed}");
    assert!(
        printed.contains("x-id") && printed.contains("302"),
        "{printed}"
    );
}

/// Log lines written while the returned guard lives, as JSON objects.
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every log line of this test process, as JSON. A process-wide subscriber, set once: a
/// thread-local one races with the callsite-interest cache of tests on other threads.
fn captured_logs() -> Arc<std::sync::Mutex<Vec<u8>>> {
    static LOGS: std::sync::OnceLock<Arc<std::sync::Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(std::sync::Mutex::new(Vec::new()));
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || Captured(writer.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other test sets a global subscriber");
        buf
    })
    .clone()
}

#[tokio::test]
async fn each_decision_writes_one_audit_line_with_no_secret_in_it() {
    let h = harness();
    let cookie = h.sign_in(user("bob@example.com", &["admins"]), ADMIN).await;
    let logs = captured_logs();
    let allowed = h
        .check(
            ADMIN,
            "/x?token=s3cret",
            &[("cookie", &cookie), ("x-request-id", "req-1")],
        )
        .await;
    let refused = h
        .check(
            APP,
            "/",
            &[("x-request-id", "req-2"), ("accept", "text/html")],
        )
        .await;
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    // Other tests log here too: this test's decisions are the ones with its request ids.
    let audit: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "portcullis::audit")
        .filter(|v| v["request_id"] == "req-1" || v["request_id"] == "req-2")
        .collect();
    assert_eq!(audit.len(), 2, "{text}");
    let a = &audit[0];
    assert_eq!(a["level"], "INFO");
    assert_eq!(a["request_id"], "req-1");
    assert_eq!(a["route"], "admin");
    assert_eq!(a["sub"], "bob");
    assert_eq!(a["email"], "bob@example.com");
    assert_eq!(a["outcome"], "allow");
    assert_eq!(a["rule"], "groups (admins)");
    assert_eq!(a["path"], "/x", "no query");
    assert!(a["latency_us"].is_u64());
    assert_eq!(audit[1]["outcome"], "sign_in_required");
    assert_eq!(audit[1]["request_id"], "req-2");
    // Nothing secret anywhere in the log: not the cookie, the token, nor the hop nonce.
    let set_cookie = match &refused.action {
        Action::Respond(r) => header(r, "set-cookie").to_string(),
        Action::Forward(_) => panic!("refused"),
    };
    let nonce = set_cookie.split(['=', ';']).nth(1).unwrap();
    let jwt = match &allowed.action {
        Action::Forward(e) => e.set[0].1.clone(),
        Action::Respond(_) => panic!("allowed"),
    };
    for secret in [cookie.split_once('=').unwrap().1, "s3cret", nonce, &jwt] {
        assert!(!text.contains(secret), "{secret} in:\n{text}");
    }
}

/// Accepts `good-<sub>` bearer tokens until T0 + 300.
struct FakeBearer;

#[async_trait]
impl BearerVerifier for FakeBearer {
    async fn verify(&self, token: &str, _now: u64) -> Result<(User, u64), String> {
        match token.strip_prefix("good-") {
            Some(sub) => Ok((user(&format!("{sub}@example.com"), &[]), T0 + 300)),
            None => Err("signature does not verify".into()),
        }
    }
}

#[tokio::test]
async fn scripts_get_in_with_a_bearer_token_that_never_reaches_the_upstream() {
    let store = Arc::new(MemoryStore::default());
    let a = authorizer(routes(), store.clone(), Arc::new(ManualClock::at(T0)))
        .with_bearer(Arc::new(FakeBearer));
    let with = |headers: &[(&str, &str)]| -> HashMap<String, String> {
        headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let req = |authority: &'static str, h: &'static HashMap<String, String>| Request {
        method: "GET",
        scheme: "https",
        authority,
        path: "/",
        headers: h,
        route_hint: None,
        source_ip: None,
    };
    let good: &'static HashMap<String, String> =
        Box::leak(Box::new(with(&[("authorization", "Bearer good-carol")])));
    let d = a.check(&req(APP, good)).await;
    assert_eq!(d.kind, OutcomeKind::Allow);
    let e = edits(d);
    assert!(e.remove.contains(&"authorization".to_string()), "{e:?}");
    let set: HashMap<_, _> = e.set.iter().cloned().collect();
    assert_eq!(
        set["x-portcullis-jwt-assertion"],
        "jwt:carol:app.localhost:8443"
    );
    // The same policy applies: carol is not an admin.
    let d = a.check(&req(ADMIN, good)).await;
    assert_eq!(d.kind, OutcomeKind::Forbidden);
    // A token that does not verify: 401, saying so, whatever the Accept.
    let bad: &'static HashMap<String, String> = Box::leak(Box::new(with(&[
        ("authorization", "bearer forged"),
        ("accept", "text/html"),
    ])));
    let d = a.check(&req(APP, bad)).await;
    assert_eq!(d.kind, OutcomeKind::InvalidBearerToken);
    let r = response(d);
    assert_eq!(r.status, 401);
    assert_eq!(
        header(&r, "www-authenticate"),
        "Bearer error=\"invalid_token\""
    );
    // Not a bearer: the usual answers.
    let basic: &'static HashMap<String, String> =
        Box::leak(Box::new(with(&[("authorization", "Basic Zm9vOmJhcg==")])));
    assert_eq!(
        a.check(&req(APP, basic)).await.kind,
        OutcomeKind::SignInRequired
    );

    // Off (the default): the header is the app's own business and passes untouched.
    let off = authorizer(routes(), store, Arc::new(ManualClock::at(T0)));
    let s = Session::new(user("dave@example.com", &[]), T0, 60);
    off.lookup.put(s.clone()).await.unwrap();
    let cookie = off.cookies().issue(s.id, PUBLIC, s.expires_at, T0);
    let public: &'static HashMap<String, String> = Box::leak(Box::new(with(&[
        ("authorization", "Bearer app-token"),
        ("cookie", cookie.split(';').next().unwrap()),
    ])));
    let e = edits(off.check(&req(PUBLIC, public)).await);
    assert!(!e.remove.contains(&"authorization".to_string()), "{e:?}");
    assert_eq!(
        off.check(&req(APP, good)).await.kind,
        OutcomeKind::SignInRequired
    );
}
