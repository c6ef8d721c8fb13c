//! In-process microbenchmarks of the ext_authz hot path (divan).
//!
//! ```sh
//! cargo bench --bench decision            # all
//! cargo bench --bench decision -- decide  # a filter
//! ```
//!
//! * `decide_*`: the authorizer's `check` for one request: route selection, cookie decrypt,
//!   session lookup, the decision, cached identity JWT, cookie stripping (target: <= 5 µs
//!   median with a cached JWT).
//! * `decide_pure`: the decision alone (`core::decide`), route and session in hand.
//! * `check_handler_*`: the whole gRPC handler without the transport: `CheckRequest` →
//!   decision → `CheckResponse`.
//! * `jwt_mint`: one ES256 identity JWT (what a cache miss costs).
//! * `policy_100_routes_1000_emails`: route selection among 100 routes plus an allow list of
//!   1000 emails; `long_form_*` the same with 1000 allow rules and three deny rules (method,
//!   path, address) per route (target: p50 <= 1 µs).
//!
//! Timings are for humans reading BENCHMARKS.md; nothing here asserts on them.

#[path = "support/check_request.rs"]
mod check_request;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use divan::{Bencher, black_box};
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization;
use portcullis::app::{App, Parts};
use portcullis::authorizer::Action;
use portcullis::core::clock::ManualClock;
use portcullis::core::policy::Facts;
use portcullis::core::{Outcome, OutcomeKind, Request, Session, User, Verdict, decide};
use portcullis::ext_authz::AuthzService;
use portcullis::identity::generate_pkcs8_pem;

fn main() {
    divan::main();
}

/// Far from any real clock, so cached tokens and sessions stay valid for the whole run.
const NOW: u64 = 1_800_000_000;
const AUTHORITY: &str = "app.localhost:8443";
const BROWSER_ACCEPT: &str =
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8";
const USER_AGENT: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";

/// Polls a future that never waits (the memory store answers at once) to completion.
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
}

/// Secret files in a temp dir, removed on drop.
struct Files(PathBuf);

impl Files {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "portcullis-bench-{}-{}",
            std::process::id(),
            portcullis::crypto::random_token(6)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        std::fs::write(dir.join("key.pem"), generate_pkcs8_pem()).expect("write key");
        std::fs::write(dir.join("cookie"), portcullis::crypto::random_token(32))
            .expect("write cookie secret");
        std::fs::write(dir.join("client"), "s3cret").expect("write client secret");
        Self(dir)
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn app_from(yaml: &str) -> App {
    let files = Files::new();
    let config = portcullis::config::parse(yaml, &files.0).unwrap_or_else(|e| panic!("{e}"));
    let parts = Parts {
        clock: Arc::new(ManualClock::at(NOW)),
        ..Parts::new(&config).expect("the memory store")
    };
    App::with_parts(config, parts)
}

const CONFIG: &str = r#"
authenticate_url: https://auth.localhost:8443
idp: { issuer: "http://127.0.0.1:9000", client_id: portcullis, client_secret_file: client,
       scopes: [openid, email, profile, groups] }
cookie: { secret_file: cookie, lifetime: 8h }
signing_key_file: key.pem
routes:
  - name: app
    from: https://app.localhost:8443
    to: http://127.0.0.1:9200
    policy: { emails: [bob@example.com, carol@example.com], groups: [admins] }
  - name: admin
    from: https://admin.localhost:8443
    to: http://127.0.0.1:9200
    policy: { groups: [admins] }
"#;

fn alice() -> User {
    User {
        subject: "alice".into(),
        email: Some("alice@example.com".into()),
        email_verified: true,
        name: Some("Alice Example".into()),
        preferred_username: Some("alice".into()),
        groups: vec!["admins".into()],
        claims: Vec::new(),
    }
}

/// An app with alice signed in; returns it and the `Cookie` header a browser sends to the
/// app host (portcullis's cookie plus two of the app's own).
fn signed_in() -> (App, String) {
    let app = app_from(CONFIG);
    let session = Session::new(alice(), NOW, 8 * 3600);
    let set_cookie = app
        .cookies()
        .issue(session.id, AUTHORITY, session.expires_at, NOW);
    block_on(app.store.put(session)).expect("memory store put");
    let ours = set_cookie
        .split(';')
        .next()
        .expect("name=value")
        .to_string();
    (app, format!("theme=dark; {ours}; app_session=f00ba4"))
}

/// The headers Envoy passes for a browser request, as `decision::Request` sees them.
fn headers(cookie: Option<&str>) -> HashMap<String, String> {
    let mut h: HashMap<String, String> = [
        (":authority", AUTHORITY),
        (":path", "/dashboard?tab=1"),
        (":method", "GET"),
        (":scheme", "https"),
        ("accept", BROWSER_ACCEPT),
        ("user-agent", USER_AGENT),
        ("x-forwarded-proto", "https"),
        ("x-request-id", "6a3f1c8e-2b7d-4e59-9f0a-1d2c3b4a5e6f"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    if let Some(c) = cookie {
        h.insert("cookie".into(), c.into());
    }
    h
}

fn request<'a>(headers: &'a HashMap<String, String>) -> Request<'a> {
    Request {
        method: "GET",
        scheme: "https",
        authority: AUTHORITY,
        path: "/dashboard?tab=1",
        headers,
        route_hint: Some("app"),
        source_ip: None,
    }
}

/// Signed in, allowed by the group, identity JWT from the cache.
#[divan::bench]
fn decide_allow_cached_jwt(bencher: Bencher) {
    let (app, cookie) = signed_in();
    let headers = headers(Some(&cookie));
    let req = request(&headers);
    // The first call signs and caches the JWT; every timed call reuses it.
    let first = block_on(app.authorizer.check(&req));
    assert!(matches!(first.action, Action::Forward(_)), "{first:?}");
    bencher.bench_local(|| block_on(app.authorizer.check(black_box(&req))));
}

/// The decision alone: route and session in hand, no cookie, store or token.
#[divan::bench]
fn decide_pure(bencher: Bencher) {
    let app = app_from(CONFIG);
    let route = app
        .routes()
        .select(Some("app"), "https", AUTHORITY, "/dashboard")
        .expect("route matches");
    let session = Session::new(alice(), NOW, 3600);
    let headers = headers(None);
    let req = request(&headers);
    assert!(matches!(
        decide(route, Some(&session), &req, NOW),
        Outcome::Allow(_)
    ));
    bencher.bench_local(|| {
        decide(
            black_box(route),
            Some(black_box(&session)),
            black_box(&req),
            NOW,
        )
        .kind()
    });
}

/// No cookie, browser `Accept`: the 302 to sign in.
#[divan::bench]
fn decide_redirect_to_sign_in(bencher: Bencher) {
    let app = app_from(CONFIG);
    let headers = headers(None);
    let req = request(&headers);
    let first = block_on(app.authorizer.check(&req));
    assert!(
        first.kind == OutcomeKind::SignInRequired
            && matches!(&first.action, Action::Respond(r) if r.status == 302),
        "{first:?}"
    );
    bencher.bench_local(|| block_on(app.authorizer.check(black_box(&req))));
}

/// Only the first part of the decision: cookie decrypt and session lookup.
#[divan::bench]
fn session_from_cookie(bencher: Bencher) {
    let (app, cookie) = signed_in();
    assert!(
        block_on(app.authorizer.session_from_cookie(&cookie, AUTHORITY, NOW))
            .expect("memory store")
            .is_some()
    );
    bencher.bench_local(|| {
        block_on(
            app.authorizer
                .session_from_cookie(black_box(&cookie), AUTHORITY, NOW),
        )
    });
}

fn check_request_for(cookie: Option<&str>) -> CheckRequest {
    let mut client_headers = vec![("accept", BROWSER_ACCEPT), ("user-agent", USER_AGENT)];
    if let Some(c) = cookie {
        client_headers.push(("cookie", c));
    }
    check_request::check_request(&check_request::Spec {
        method: "GET",
        scheme: "https",
        authority: AUTHORITY,
        path: "/dashboard?tab=1",
        route: Some("app"),
        headers: &client_headers,
    })
}

/// The tonic handler (`Authorization::check`) for a signed-in request, minus the
/// transport: `CheckRequest` → decision → `CheckResponse`. The clone of the request is
/// part of the measured time (tonic hands the handler an owned, freshly decoded message).
#[divan::bench]
fn check_handler_allow(bencher: Bencher) {
    let (app, cookie) = signed_in();
    let svc = AuthzService::new(Arc::new(app));
    let request = check_request_for(Some(&cookie));
    let first = block_on(svc.check(tonic::Request::new(request.clone()))).expect("check");
    assert_eq!(first.get_ref().status.as_ref().map(|s| s.code), Some(0));
    bencher.bench_local(|| block_on(svc.check(tonic::Request::new(request.clone()))));
}

/// The tonic handler for an unauthenticated browser request (302).
#[divan::bench]
fn check_handler_redirect(bencher: Bencher) {
    let svc = AuthzService::new(Arc::new(app_from(CONFIG)));
    let request = check_request_for(None);
    bencher.bench_local(|| block_on(svc.check(tonic::Request::new(request.clone()))));
}

/// Decoding the `CheckRequest` from protobuf, which tonic does before the handler runs.
#[divan::bench]
fn check_request_decode(bencher: Bencher) {
    use prost::Message;
    let cookie = signed_in().1;
    let bytes = check_request_for(Some(&cookie)).encode_to_vec();
    bencher.bench_local(|| CheckRequest::decode(black_box(bytes.as_slice())));
}

/// One ES256 identity JWT: what a token-cache miss costs (at most once per session and
/// route every ~4 minutes).
#[divan::bench]
fn jwt_mint(bencher: Bencher) {
    let app = app_from(CONFIG);
    let user = alice();
    bencher.bench_local(|| {
        app.tokens().minter().mint(
            black_box(&user),
            "pUbLiCsEsSiOnId0123456",
            AUTHORITY,
            None,
            NOW,
        )
    });
}

/// The config of the 100-route benchmarks, before its routes.
const HUNDRED_ROUTES_HEAD: &str = r#"
authenticate_url: https://auth.example.com
idp: { issuer: "https://idp.example.com", client_id: portcullis, client_secret_file: client }
cookie: { secret_file: cookie }
signing_key_file: key.pem
routes:
"#;

/// 100 routes on 100 hosts, each with an allow list of 1000 emails (plus a group).
fn hundred_routes() -> App {
    let mut yaml = String::from(HUNDRED_ROUTES_HEAD);
    for r in 0..100 {
        let emails: Vec<String> = (0..1000)
            .map(|e| format!("user{e:04}.r{r:03}@example.com"))
            .collect();
        yaml.push_str(&format!(
            "  - {{ name: r{r:03}, from: \"https://app{r:03}.example.com\", \
             to: \"http://127.0.0.1:9200\", policy: {{ emails: [{}], groups: [ops{r:03}] }} }}\n",
            emails.join(", ")
        ));
    }
    app_from(&yaml)
}

/// 100 routes, each with a long-form policy of 1000 allow rules (one per email) and deny
/// rules on the method, the path and the client address.
fn hundred_routes_long_form() -> App {
    let mut yaml = String::from(HUNDRED_ROUTES_HEAD);
    for r in 0..100 {
        let rules: Vec<String> = (0..1000)
            .map(|e| format!("{{email: {{is: user{e:04}.r{r:03}@example.com}}}}"))
            .collect();
        yaml.push_str(&format!(
            "  - name: r{r:03}
    from: https://app{r:03}.example.com
    to: http://127.0.0.1:9200
    policy:
      allow: {{or: [{}]}}
      deny: {{or: [{{http_method: DELETE}}, {{http_path: {{starts_with: /admin}}}}, {{source_ip: {{in: [192.0.2.0/24]}}}}]}}
",
            rules.join(", ")
        ));
    }
    app_from(&yaml)
}

/// What the decision does with the policy: route selection, then the policy on the user and
/// the request (the canonical path is made only for policies that test it).
fn evaluate(app: &App, hint: Option<&str>, authority: &str, user: &User) -> bool {
    let route = app
        .routes()
        .select(hint, "https", authority, "/some/page?x=1")
        .expect("route matches");
    let path = route
        .policy
        .uses_path()
        .then(|| portcullis::core::route::canonical_path("/some/page?x=1"));
    let facts = Facts {
        method: "GET",
        path: path.as_deref().unwrap_or(""),
        source_ip: "198.51.100.7".parse().ok(),
    };
    matches!(route.policy.evaluate(Some(user), &facts), Verdict::Allow(_))
}

mod policy_100_routes_1000_emails {
    use super::*;

    fn user(email: &str) -> User {
        User {
            email: Some(email.into()),
            groups: vec!["staff".into(), "dev".into()],
            ..alice()
        }
    }

    /// The last of the 100 routes, named by Envoy's `context_extensions`; the email is in
    /// the list.
    #[divan::bench]
    fn hinted_allowed(bencher: Bencher) {
        let app = hundred_routes();
        let u = user("User0999.r099@Example.com");
        assert!(evaluate(&app, Some("r099"), "app099.example.com", &u));
        bencher.bench_local(|| evaluate(&app, black_box(Some("r099")), "app099.example.com", &u));
    }

    /// The long form: 1000 allow rules and three deny rules per route, the user matching
    /// the last allow rule of the last route.
    #[divan::bench]
    fn long_form_hinted_allowed(bencher: Bencher) {
        let app = hundred_routes_long_form();
        let u = user("user0999.r099@example.com");
        assert!(evaluate(&app, Some("r099"), "app099.example.com", &u));
        bencher.bench_local(|| evaluate(&app, black_box(Some("r099")), "app099.example.com", &u));
    }

    /// The long form without a hint, for a user on none of the lists.
    #[divan::bench]
    fn long_form_unhinted_forbidden(bencher: Bencher) {
        let app = hundred_routes_long_form();
        let u = user("mallory@example.org");
        assert!(!evaluate(&app, None, "app099.example.com", &u));
        bencher.bench_local(|| evaluate(&app, black_box(None), "app099.example.com", &u));
    }

    /// The same without a hint (scan by host), for a user on none of the lists.
    #[divan::bench]
    fn unhinted_forbidden(bencher: Bencher) {
        let app = hundred_routes();
        let u = user("mallory@example.org");
        assert!(!evaluate(&app, None, "app099.example.com", &u));
        bencher.bench_local(|| evaluate(&app, black_box(None), "app099.example.com", &u));
    }
}
