//! The HTTP edge in process: the axum router driven with `oneshot` through sign-in,
//! callback, hop and sign-out, with a fake IdP and a clock that moves when told. What only
//! Envoy, the real IdP and a real browser can show stays in `tests/`.

use std::collections::HashMap;

use axum::http::StatusCode;

use crate::authorizer::Action;
use crate::core::{Clock, OutcomeKind, Request};
use crate::testing::{Answer, CONFIG, FAKE_IDP_AUTHORIZE, TestApp, TestBrowser, user};

const AUTH: &str = "https://auth.localhost:8443";
const APP: &str = "https://app.localhost:8443";
const ADMIN: &str = "https://admin.localhost:8443";
const APP_HOST: &str = "app.localhost:8443";
const ADMIN_HOST: &str = "admin.localhost:8443";
const AUTH_HOST: &str = "auth.localhost:8443";

/// What the authorizer says of a GET to `host` with this browser's cookies.
async fn check(t: &TestApp, b: &TestBrowser<'_>, host: &str) -> OutcomeKind {
    let headers: HashMap<String, String> = [("cookie".to_string(), b.cookie_header(host))].into();
    let req = Request {
        method: "GET",
        scheme: "https",
        authority: host,
        path: "/",
        headers: &headers,
        route_hint: None,
        source_ip: None,
    };
    let d = t.app.authorizer.check(&req).await;
    if d.kind == OutcomeKind::Allow {
        assert!(matches!(d.action, Action::Forward(_)));
    }
    d.kind
}

#[tokio::test]
async fn a_sign_in_gives_each_host_its_own_cookie_and_sso_skips_the_idp() {
    let t = TestApp::new(CONFIG);
    let mut b = t.browser();
    let last = b
        .sign_in(
            &format!("{APP}/a?b=1"),
            user("alice@example.com", &["admins"]),
        )
        .await;
    assert_eq!(last.status, StatusCode::SEE_OTHER);
    assert_eq!(last.location(), Some(&*format!("{APP}/a?b=1")));
    assert!(b.has_session(APP_HOST).await && b.has_session(AUTH_HOST).await);
    assert!(!b.has_session(ADMIN_HOST).await);
    // The nonce that bound the hop is spent.
    assert_eq!(b.cookie(APP_HOST, "__Host-_portcullis_hop"), None);
    assert_eq!(check(&t, &b, APP_HOST).await, OutcomeKind::Allow);
    assert_eq!(check(&t, &b, ADMIN_HOST).await, OutcomeKind::SignInRequired);

    // Single sign-on: the auth host's session hops straight to admin, no IdP round trip.
    let to_auth = b
        .get(&format!("{ADMIN}/.portcullis/sign_in?rd={ADMIN}/"))
        .await;
    let hop = b.get(to_auth.location().unwrap()).await;
    let hop_url = hop.location().unwrap().to_string();
    assert!(
        hop_url.starts_with(&format!("{ADMIN}/.portcullis/callback?hop=")),
        "{hop_url}"
    );
    let landed = b.get(&hop_url).await;
    assert_eq!(landed.location(), Some(&*format!("{ADMIN}/")));
    assert_eq!(check(&t, &b, ADMIN_HOST).await, OutcomeKind::Allow);
    assert_eq!(t.idp.finishes(), 1, "one code exchange for two hosts");

    // The session ends when its lifetime does: the clock moves, nobody sleeps.
    t.clock.advance(3600);
    assert_eq!(check(&t, &b, APP_HOST).await, OutcomeKind::SignInRequired);
}

#[tokio::test]
async fn the_idp_gets_state_nonce_and_pkce_and_the_callback_checks_them() {
    let t = TestApp::new(CONFIG);
    let mut b = t.browser();
    let to_auth = b.get(&format!("{APP}/.portcullis/sign_in?rd={APP}/")).await;
    let to_idp = b.get(to_auth.location().unwrap()).await;
    let authorize = to_idp.location().unwrap().to_string();
    assert!(authorize.starts_with(FAKE_IDP_AUTHORIZE), "{authorize}");
    for p in [
        "state=",
        "nonce=",
        "code_challenge=",
        "code_challenge_method=S256",
    ] {
        assert!(authorize.contains(p), "{p} in {authorize}");
    }
    let csrf = b
        .cookie(AUTH_HOST, "__Host-_portcullis_csrf")
        .unwrap()
        .to_string();
    let callback = t.app.urls.oauth2_callback.to_string();
    let back = t
        .idp
        .sign_in(&authorize, &callback, user("alice@example.com", &[]));
    let (code, state) = {
        let u = url::Url::parse(&back).unwrap();
        let q: HashMap<_, _> = u.query_pairs().into_owned().collect();
        (q["code"].clone(), q["state"].clone())
    };
    let cb = |code: &str, state: &str| {
        format!("{AUTH}/.portcullis/oauth2/callback?code={code}&state={state}")
    };

    // Another browser (no CSRF cookie) cannot use this answer.
    let mut other = t.browser();
    let a = other.get(&back).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.body.contains("another browser"), "{}", a.body);
    // A missing or wrong state is refused before the IdP is asked.
    for url in [
        format!("{AUTH}/.portcullis/oauth2/callback?code={code}"),
        cb(&code, "wrong"),
        cb(&code, &format!("{state}x")),
    ] {
        let a = b.get(&url).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{url}");
    }
    assert_eq!(t.idp.finishes(), 0);

    // The right answer signs in, once.
    let a = b.get(&back).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    assert_eq!(t.idp.finishes(), 1);
    assert!(b.has_session(AUTH_HOST).await);
    // Replayed with the CSRF cookie copied back: refused without reaching the IdP.
    b.set_cookie(AUTH_HOST, "__Host-_portcullis_csrf", &csrf);
    let a = b.get(&back).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.body.contains("already used"), "{}", a.body);
    assert_eq!(t.idp.finishes(), 1);
}

#[tokio::test]
async fn a_sign_in_attempt_expires_and_idp_errors_are_shown_without_markup() {
    let t = TestApp::new(CONFIG);
    let mut b = t.browser();
    let to_auth = b.get(&format!("{APP}/.portcullis/sign_in?rd={APP}/")).await;
    let to_idp = b.get(to_auth.location().unwrap()).await;
    let authorize = to_idp.location().unwrap().to_string();
    let back = t.idp.sign_in(
        &authorize,
        t.app.urls.oauth2_callback.as_str(),
        user("alice@example.com", &[]),
    );
    // Eleven minutes at the IdP is too long.
    t.clock.advance(601);
    let a = b.get(&back).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(t.idp.finishes(), 0);

    t.clock.advance(1);
    let to_auth = b.get(&format!("{APP}/.portcullis/sign_in?rd={APP}/")).await;
    b.get(to_auth.location().unwrap()).await;
    let a = b
        .get(&format!(
            "{AUTH}/.portcullis/oauth2/callback?error=access_denied%3Cscript%3E&state=x"
        ))
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(a.body.contains("access_denied"), "{}", a.body);
    assert!(!a.body.contains("<script>"), "{}", a.body);
}

#[tokio::test]
async fn a_hop_link_from_another_browser_leaves_the_victims_session_alone() {
    let t = TestApp::new(CONFIG);
    // The victim is signed in to app as alice.
    let mut victim = t.browser();
    victim
        .sign_in(&format!("{APP}/"), user("alice@example.com", &[]))
        .await;
    let before = victim.cookie_header(APP_HOST);
    // The attacker, signed in as mallory, asks for a hop into app and keeps the link.
    let mut attacker = t.browser();
    attacker
        .sign_in(
            &format!("{ADMIN}/"),
            user("mallory@example.com", &["admins"]),
        )
        .await;
    let to_auth = attacker
        .get(&format!("{APP}/.portcullis/sign_in?rd={APP}/"))
        .await;
    let hop = attacker.get(to_auth.location().unwrap()).await;
    let link = hop.location().unwrap().to_string();
    assert!(link.contains("/.portcullis/callback?hop="), "{link}");
    // The victim follows it.
    let a = victim.get(&link).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(a.body.contains("another browser"), "{}", a.body);
    assert!(a.set_cookies().is_empty());
    assert_eq!(victim.cookie_header(APP_HOST), before);
    // Still alice's session, not mallory's.
    let sid = t
        .app
        .cookies()
        .session_ids(&before, APP_HOST, t.clock.now())
        .next()
        .unwrap();
    let s = t.app.store.get(&sid, t.clock.now()).await.unwrap().unwrap();
    assert_eq!(s.user.subject, "alice");
}

#[tokio::test]
async fn return_urls_outside_our_routes_are_refused() {
    let t = TestApp::new(CONFIG);
    let mut b = t.browser();
    for rd in [
        "https://evil.example/",
        "//evil.example",
        "https://app.localhost:8443@evil.example/",
        "javascript:alert(1)",
    ] {
        let rd = url::form_urlencoded::byte_serialize(rd.as_bytes()).collect::<String>();
        for host in [AUTH, APP] {
            let a = b.get(&format!("{host}/.portcullis/sign_in?rd={rd}")).await;
            assert_eq!(a.status, StatusCode::BAD_REQUEST, "{host} {rd}");
            assert!(a.location().is_none());
        }
    }
    // A return URL on another route host is not this host's to start.
    let a = b
        .get(&format!("{APP}/.portcullis/sign_in?rd={ADMIN}/"))
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    // An API client's sign-in URL (no binding) goes to the route host first, to get one.
    let a = b
        .get(&format!("{AUTH}/.portcullis/sign_in?rd={APP}/x%3Fy"))
        .await;
    assert_eq!(
        a.location(),
        Some(
            "https://app.localhost:8443/.portcullis/sign_in?rd=https%3A%2F%2Fapp.localhost%3A8443%2Fx%3Fy"
        )
    );
}

#[tokio::test]
async fn sign_out_is_a_same_origin_post_and_ends_the_idp_session_with_the_hint() {
    let t = TestApp::new(CONFIG);
    let mut b = t.browser();
    b.sign_in(&format!("{APP}/"), user("alice@example.com", &[]))
        .await;
    // A GET only asks.
    let a = b.get(&format!("{APP}/.portcullis/sign_out")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.body.contains("method=\"post\""), "{}", a.body);
    assert!(b.has_session(APP_HOST).await);
    // A cross-site POST (another site's form) signs nobody out.
    for headers in [
        [
            ("sec-fetch-site", "cross-site"),
            ("origin", "https://evil.example"),
        ],
        [("sec-fetch-site", "same-site"), ("origin", ADMIN)],
    ] {
        let a = b
            .post(&format!("{APP}/.portcullis/sign_out"), &headers)
            .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{headers:?}");
    }
    let a = b
        .post(
            &format!("{APP}/.portcullis/sign_out"),
            &[("origin", "https://evil.example")],
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(b.has_session(APP_HOST).await);

    // Our own page's button: revoked on the route host, continued on the auth host.
    let a = b
        .post(
            &format!("{APP}/.portcullis/sign_out"),
            &[("sec-fetch-site", "same-origin"), ("origin", APP)],
        )
        .await;
    let next = a.location().unwrap().to_string();
    assert!(
        next.starts_with(&format!("{AUTH}/.portcullis/sign_out?t=")),
        "{next}"
    );
    assert!(!b.has_session(APP_HOST).await);
    assert!(
        !b.has_session(AUTH_HOST).await,
        "one session, revoked everywhere"
    );
    let a = b.get(&next).await;
    assert_eq!(a.location(), Some("https://idp.test/logout"));
    let hints = t.idp.hints.lock().unwrap().clone();
    assert!(
        matches!(hints.as_slice(), [Some(h)] if h.starts_with("e30.")),
        "the ID token went along as the hint: {hints:?}"
    );
    assert_eq!(b.cookie(AUTH_HOST, "__Host-_portcullis"), None);
    assert_eq!(b.cookie(AUTH_HOST, "__Secure-_portcullis_idt"), None);
    assert_eq!(check(&t, &b, APP_HOST).await, OutcomeKind::SignInRequired);
}

#[tokio::test]
async fn the_user_page_and_json_show_who_is_signed_in() {
    let t = TestApp::new(CONFIG);
    let mut b = t.browser();
    let a = b.get(&format!("{APP}/.portcullis/user")).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    // Not signed in: the route host binds a hop first; the auth host signs in.
    let a = b.get(&format!("{APP}/.portcullis/")).await;
    assert!(
        a.location()
            .unwrap()
            .starts_with(&format!("{AUTH}/.portcullis/sign_in?rd="))
    );
    let a = b.get(&format!("{AUTH}/.portcullis/")).await;
    assert_eq!(a.location(), Some(&*format!("{AUTH}/.portcullis/sign_in")));

    b.sign_in(
        &format!("{APP}/"),
        user("alice@example.com", &["admins", "<b>"]),
    )
    .await;
    let a = b.get(&format!("{APP}/.portcullis/")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.body.contains("alice@example.com"));
    assert!(
        a.body.contains("&lt;b&gt;") && !a.body.contains("<b>"),
        "escaped"
    );
    assert!(
        a.body
            .contains(&format!("action=\"{APP}/.portcullis/sign_out\""))
    );
    let a = b.get(&format!("{APP}/.portcullis/user")).await;
    let json: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(json["email"], "alice@example.com");
    assert_eq!(json["groups"], serde_json::json!(["admins", "<b>"]));
}

#[tokio::test]
async fn the_jwks_is_cacheable_and_pages_are_not() {
    let t = TestApp::new(CONFIG);
    let mut b = t.browser();
    let a = b
        .get(&format!("{AUTH}/.well-known/portcullis/jwks.json"))
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers["cache-control"], "max-age=60");
    let etag = a.headers["etag"].to_str().unwrap().to_string();
    let jwks: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(jwks["keys"][0]["alg"], "ES256");
    let a = b
        .request(
            axum::http::Method::GET,
            &format!("{APP}/.well-known/portcullis/jwks.json"),
            &[("if-none-match", &etag)],
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_MODIFIED);

    let a = b.get(&format!("{AUTH}/.portcullis/signed_out")).await;
    for (h, v) in [
        ("cache-control", "no-store"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("x-content-type-options", "nosniff"),
    ] {
        assert_eq!(a.headers[h], v, "{h}");
    }
    assert!(
        a.headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
}

/// The metrics listener's answer.
async fn scrape(t: &TestApp) -> String {
    use tower::ServiceExt;
    let a = crate::web::metrics_router(crate::app::Live::new(t.app.clone()))
        .oneshot(
            axum::http::Request::get("/metrics")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let body = axum::body::to_bytes(a.into_body(), 1 << 20).await.unwrap();
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test]
async fn an_idp_that_stops_answering_gets_the_unavailable_page_not_a_redirect() {
    let t = TestApp::new(CONFIG);
    let mut b = t.browser();
    let up = b.get(&format!("{AUTH}/.portcullis/sign_in")).await;
    assert_eq!(up.status, StatusCode::SEE_OTHER, "{}", up.body);
    t.idp.set_reachable(false);
    let down = b.get(&format!("{AUTH}/.portcullis/sign_in")).await;
    assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(down.location().is_none());
    assert!(down.body.contains("Sign-in unavailable"), "{}", down.body);
    assert!(down.set_cookies().is_empty(), "no sign-in was started");
    assert!(scrape(&t).await.contains("portcullis_idp_up 0\n"));
    t.idp.set_reachable(true);
    let back = b.get(&format!("{AUTH}/.portcullis/sign_in")).await;
    assert_eq!(back.status, StatusCode::SEE_OTHER);
    assert!(scrape(&t).await.contains("portcullis_idp_up 1\n"));
}

#[tokio::test]
async fn unknown_hosts_and_an_unready_idp_get_clear_answers() {
    let t = TestApp::new(CONFIG);
    let mut b = t.browser();
    let a = b
        .get("https://evil.localhost:8443/.portcullis/sign_in")
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    t.idp.set_ready(false);
    let a = b.get(&format!("{AUTH}/.portcullis/sign_in")).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(a.body.contains("cannot be reached"), "{}", a.body);
    // The route host's hop callback does not exist on the auth host, and vice versa.
    let a = b.get(&format!("{AUTH}/.portcullis/callback?hop=x")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let a = b
        .get(&format!("{APP}/.portcullis/oauth2/callback?code=x&state=y"))
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let a = b.get(&format!("{APP}/healthz")).await;
    assert_eq!(a.status, StatusCode::OK);
    t.app
        .draining
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let a = b.get(&format!("{APP}/healthz")).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "draining");
}

/// Signs in up to the IdP's answer and returns the callback URL with code and state.
async fn to_callback(t: &TestApp, b: &mut TestBrowser<'_>) -> String {
    let to_auth = b.get(&format!("{APP}/.portcullis/sign_in?rd={APP}/")).await;
    let to_idp = b.get(to_auth.location().unwrap()).await;
    t.idp.sign_in(
        to_idp.location().unwrap(),
        t.app.urls.oauth2_callback.as_str(),
        user("alice@example.com", &[]),
    )
}

#[tokio::test]
async fn a_sign_in_the_admin_must_fix_shows_a_request_id_and_no_internals() {
    use crate::oidc::OidcError;
    let t = TestApp::new(CONFIG);
    let causes = [
        OidcError::AlgorithmRefused {
            alg: "HS512".into(),
            accepted: "RS256".into(),
        },
        OidcError::Unreachable {
            endpoint: "token",
            detail: "connection refused (os error 111)".into(),
        },
        OidcError::InvalidClient("invalid_client: bad secret".into()),
        OidcError::SubjectMismatch {
            id_token: "a".into(),
            userinfo: "b".into(),
        },
    ];
    /// A fresh browser's sign-in whose code exchange fails with `cause`.
    async fn failed(t: &TestApp, cause: OidcError, headers: &[(&str, &str)]) -> (Answer, bool) {
        let mut b = t.browser();
        let back = to_callback(t, &mut b).await;
        *t.idp.fail_next_finish.lock().unwrap() = Some(cause);
        let a = b.request(axum::http::Method::GET, &back, headers).await;
        (a, b.has_session(AUTH_HOST).await)
    }
    for cause in causes {
        let html = [
            ("x-request-id", "6a3f1c8e-2b7d-4e59"),
            ("accept", "text/html"),
        ];
        let (a, signed_in) = failed(&t, cause, &html).await;
        assert_eq!(a.status, StatusCode::BAD_GATEWAY);
        assert!(a.body.contains("contact your administrator"), "{}", a.body);
        assert!(
            a.body.contains("6a3f1c8e-2b7d-4e59"),
            "the id to quote: {}",
            a.body
        );
        for internal in ["HS512", "refused", "invalid_client", "os error"] {
            assert!(!a.body.contains(internal), "{internal} in {}", a.body);
        }
        assert_eq!(a.headers["x-request-id"], "6a3f1c8e-2b7d-4e59");
        assert!(!signed_in);
    }
    // API clients get the same as JSON; an implausible request id is replaced.
    let json = [("x-request-id", "<script>"), ("accept", "application/json")];
    let (a, _) = failed(&t, OidcError::TokenEndpoint("server_error".into()), &json).await;
    let json: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(json["error"], "sign_in_failed");
    let id = json["request_id"].as_str().unwrap();
    assert!(id.len() >= 16 && !id.contains('<'), "{id}");
    assert_eq!(a.headers["x-request-id"], id);
}

/// POSTs a back-channel logout to `host` as an IdP does (a form with `logout_token`).
async fn post_logout(t: &TestApp, host: &str, body: &str) -> Answer {
    let req = axum::http::Request::post("/.portcullis/backchannel_logout")
        .header("host", host)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(axum::body::Body::from(body.to_string()))
        .unwrap();
    t.send(req).await
}

fn form(token: &str) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("logout_token", token)
        .finish()
}

#[tokio::test]
async fn a_backchannel_logout_ends_the_idp_sessions_on_every_replica() {
    use crate::testing::FakeIdp;
    let t = TestApp::new(CONFIG);
    let replica = t.replica();
    let mut alice = t.browser();
    alice
        .sign_in(&format!("{APP}/"), user("alice@example.com", &[]))
        .await;
    let mut bob = t.browser();
    bob.sign_in(&format!("{APP}/"), user("bob@example.com", &[]))
        .await;
    let replica_check = |b: &TestBrowser<'_>| {
        let headers: HashMap<String, String> =
            [("cookie".to_string(), b.cookie_header(APP_HOST))].into();
        let replica = replica.clone();
        async move {
            let req = Request {
                method: "GET",
                scheme: "https",
                authority: APP_HOST,
                path: "/",
                headers: &headers,
                route_hint: None,
                source_ip: None,
            };
            replica.authorizer.check(&req).await.kind
        }
    };
    assert_eq!(replica_check(&alice).await, OutcomeKind::Allow);

    // By the IdP's session id: alice's session ends on both replicas, bob's stays.
    let token = FakeIdp::logout_token(None, Some(&FakeIdp::sid_of("alice")));
    let a = post_logout(&t, AUTH_HOST, &form(&token)).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.headers.get("cache-control").unwrap().to_str().unwrap(),
        "no-store"
    );
    assert_eq!(
        check(&t, &alice, APP_HOST).await,
        OutcomeKind::SignInRequired
    );
    assert_eq!(replica_check(&alice).await, OutcomeKind::SignInRequired);
    assert!(!alice.has_session(AUTH_HOST).await);
    assert_eq!(check(&t, &bob, APP_HOST).await, OutcomeKind::Allow);

    // Replayed: refused, though it would change nothing.
    let a = post_logout(&t, AUTH_HOST, &form(&token)).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);

    // By subject: every session of bob's.
    let mut bob2 = t.browser();
    bob2.sign_in(&format!("{APP}/"), user("bob@example.com", &[]))
        .await;
    let a = post_logout(
        &t,
        AUTH_HOST,
        &form(&FakeIdp::logout_token(Some("bob"), None)),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    for b in [&bob, &bob2] {
        assert_eq!(check(&t, b, APP_HOST).await, OutcomeKind::SignInRequired);
    }
    assert_eq!(t.app.metrics.backchannel_logouts.get(), 2);
    assert_eq!(t.app.metrics.backchannel_logout_rejections.get(), 1);
    assert_eq!(
        t.app.metrics.sessions_revoked.get(),
        3,
        "alice's one and bob's two (one record per sign-in, whatever the hosts)"
    );
}

#[tokio::test]
async fn attack_backchannel_logouts_that_are_not_are_refused() {
    use crate::testing::FakeIdp;
    let t = TestApp::new(CONFIG);
    let mut alice = t.browser();
    alice
        .sign_in(&format!("{APP}/"), user("alice@example.com", &[]))
        .await;
    let sid = FakeIdp::sid_of("alice");
    let valid = FakeIdp::logout_token(None, Some(&sid));
    for (what, host, body) in [
        ("forged", AUTH_HOST, form(&format!("forged.{valid}"))),
        ("no token", AUTH_HOST, String::new()),
        ("empty token", AUTH_HOST, form("")),
        ("not a form", AUTH_HOST, "{\"logout_token\": 1}".to_string()),
    ] {
        let a = post_logout(&t, host, &body).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{what}");
        assert!(!a.body.contains(&valid), "{what}: nothing echoed");
    }
    // On a route host the endpoint does not exist, and a GET is not a logout.
    let a = post_logout(&t, APP_HOST, &form(&valid)).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let a = alice
        .get(&format!("{AUTH}/.portcullis/backchannel_logout"))
        .await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        check(&t, &alice, APP_HOST).await,
        OutcomeKind::Allow,
        "still signed in"
    );
    assert_eq!(t.app.metrics.backchannel_logout_rejections.get(), 4);
}

#[tokio::test]
async fn a_store_cut_off_fails_closed_with_503_everywhere_and_recovers_by_itself() {
    use std::sync::atomic::Ordering;
    let (t, flaky) = TestApp::with_flaky_store(CONFIG);
    let mut b = t.browser();
    b.sign_in(&format!("{APP}/"), user("alice@example.com", &[]))
        .await;
    assert_eq!(check(&t, &b, APP_HOST).await, OutcomeKind::Allow);

    flaky.down.store(true, Ordering::SeqCst);
    assert_eq!(check(&t, &b, APP_HOST).await, OutcomeKind::StoreUnavailable);
    let page = b
        .request(
            axum::http::Method::GET,
            &format!("{APP}/.portcullis/"),
            &[("accept", "text/html")],
        )
        .await;
    assert_eq!(page.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        page.body.contains("Temporarily unavailable"),
        "{}",
        page.body
    );
    assert!(!page.body.contains("connection refused"), "no internals");
    let json = b
        .request(
            axum::http::Method::GET,
            &format!("{APP}/.portcullis/user"),
            &[("accept", "application/json")],
        )
        .await;
    assert_eq!(json.status, StatusCode::SERVICE_UNAVAILABLE);
    let v: serde_json::Value = serde_json::from_str(&json.body).unwrap();
    assert_eq!(v["error"], "store_unavailable");
    // A sign-in cannot finish either: no session is made that could not be revoked.
    let mut other = t.browser();
    let to_auth = other
        .get(&format!("{APP}/.portcullis/sign_in?rd={APP}/"))
        .await;
    let to_idp = other.get(to_auth.location().unwrap()).await;
    let back = t.idp.sign_in(
        to_idp.location().unwrap(),
        t.app.urls.oauth2_callback.as_str(),
        user("bob@example.com", &[]),
    );
    let callback = other.get(&back).await;
    assert_eq!(callback.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(other.cookie(AUTH_HOST, "__Host-_portcullis").is_none());
    assert_eq!(
        t.app.metrics.store_errors.get(),
        3,
        "page, JSON and callback"
    );

    flaky.down.store(false, Ordering::SeqCst);
    assert_eq!(
        check(&t, &b, APP_HOST).await,
        OutcomeKind::Allow,
        "recovered"
    );
}

#[tokio::test]
async fn sign_in_starts_and_callbacks_are_limited_per_address_and_per_account() {
    let t = TestApp::new(&format!(
        "{CONFIG}sign_in_limits: {{ per_address: 3, per_account: 1 }}\n"
    ));
    let mut b = t.browser();
    b.always_send("x-real-ip", "192.0.2.10");
    let start = format!("{APP}/.portcullis/sign_in?rd={APP}/");
    for _ in 0..3 {
        assert_eq!(b.get(&start).await.status, StatusCode::SEE_OTHER);
    }
    let a = b
        .request(axum::http::Method::GET, &start, &[("accept", "text/html")])
        .await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert!(a.body.contains("Too many attempts") && a.body.contains("Request id"));
    let a = b
        .request(
            axum::http::Method::GET,
            &start,
            &[("accept", "application/json")],
        )
        .await;
    let json: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(json["error"], "too_many_attempts");
    assert!(json["request_id"].is_string());

    // Another address has its own allowance; a second sign-in of one account within the
    // minute is refused even from a fresh address.
    let mut other = t.browser();
    other.always_send("x-real-ip", "192.0.2.11");
    let last = other
        .sign_in(&format!("{APP}/"), user("alice@example.com", &[]))
        .await;
    assert_eq!(last.status, StatusCode::SEE_OTHER);
    let mut third = t.browser();
    third.always_send("x-real-ip", "192.0.2.12");
    let back = to_callback(&t, &mut third).await;
    let a = third.get(&back).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(!third.has_session(AUTH_HOST).await);
}
