//! The attack suite: one test per attack on the front door, each against the real stack
//! (Envoy 1.40, the npm `oidc-provider` IdP, portcullis, the echo upstream), asserting the
//! refusal and that the upstream was not called. The in-process attack cases live beside
//! the code they attack (`cargo test attack` runs both): cookie forms in
//! src/session/cookie.rs, paths in src/routes.rs, Cockpit tokens in src/cockpit/tests.rs,
//! `email_verified` and ID tokens in src/oidc.rs; Cockpit's PAM helper in tests/e2e_cockpit.rs.
//!
//! Every stack also scans portcullis's log (at `RUST_LOG=trace`) for every secret the test
//! saw when it ends (testkit/src/stack.rs), so each case here is a log-leak case too.

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, COOKIE, ORIGIN};
use testkit::{Browser, EchoRequest, Stack, list, location, send};

const SESSION_COOKIE: &str = "__Host-_portcullis";
const IDENTITY_HEADER: &str = "x-portcullis-jwt-assertion";

/// Signs `user` in on the app and checks it worked.
async fn sign_in(stack: &Stack, browser: &Browser, user: &str) {
    let app = stack.url("app", "/");
    let (response, visited) = browser.login(&app, user, user).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "{user} did not reach the app:\n{}",
        list(&visited)
    );
}

/// Who the app sees `browser` as (the echo's verified identity JWT `email`), if anyone.
async fn seen_as(stack: &Stack, browser: &Browser) -> Option<String> {
    let response = send(browser.get(&stack.url("app", "/whoami"))).await;
    if response.status() != StatusCode::OK {
        return None;
    }
    let body = response.text().await.unwrap();
    let echo = EchoRequest::from_json(&serde_json::from_str(&body).unwrap());
    let token = echo.header(IDENTITY_HEADER)?;
    let verified = stack.verify_jwt(token, &stack.authority("app")).await;
    verified["payload"]["email"].as_str().map(str::to_string)
}

/// Asks the auth host, as `browser` (signed in there), for a hop into the app, the way
/// the route host would send it, and returns the hop link without following it.
async fn hop_link(stack: &Stack, browser: &Browser) -> String {
    let app = stack.url("app", "/");
    let start = stack.url(
        "app",
        &format!(
            "/.portcullis/sign_in?rd={}",
            url::form_urlencoded::byte_serialize(app.as_bytes()).collect::<String>()
        ),
    );
    let to_auth = location(&send(browser.get(&start)).await).expect("route host sends to auth");
    let hop = location(&send(browser.get(to_auth.as_str())).await).expect("auth hops back");
    assert_eq!(hop.path(), "/.portcullis/callback", "{hop}");
    assert_eq!(hop.host_str(), Some("app.localhost"), "{hop}");
    hop.into()
}

fn calls(stack: &Stack) -> usize {
    stack.echo_requests().len()
}

#[tokio::test]
#[ignore = "tier stack: needs Envoy and the dev IdP (node, examples/demo/node_modules); run scripts/test"]
async fn attack_hop_link_from_another_browser_does_not_swap_the_session() {
    let stack = Stack::start().await;
    let victim = stack.browser();
    sign_in(&stack, &victim, "alice").await;
    assert_eq!(
        seen_as(&stack, &victim).await.as_deref(),
        Some("alice@example.com")
    );

    // The attacker, with an account of their own, asks for a hop and keeps the link.
    let attacker = stack.browser();
    sign_in(&stack, &attacker, "bob").await;
    let link = hop_link(&stack, &attacker).await;

    let before = calls(&stack);
    for (who, browser) in [
        ("the signed-in victim", &victim),
        ("a fresh browser", &stack.browser()),
    ] {
        let response = send(browser.get(&link)).await;
        let status = response.status();
        let body = response.text().await.unwrap();
        assert_eq!(status, StatusCode::FORBIDDEN, "{who}: {body}");
        assert!(
            body.contains("another browser"),
            "{who}: a clear page: {body}"
        );
    }
    assert_eq!(
        calls(&stack),
        before,
        "the app was called through a foreign hop"
    );
    // The victim's own session is untouched.
    assert_eq!(
        seen_as(&stack, &victim).await.as_deref(),
        Some("alice@example.com")
    );

    // Control: in the browser that asked for it the same link works, once.
    let response = send(attacker.get(&link)).await;
    assert!(
        response.status().is_redirection(),
        "the hop was valid: {}",
        response.status()
    );
    assert_eq!(
        seen_as(&stack, &attacker).await.as_deref(),
        Some("bob@example.com")
    );
    // Used once: the nonce is spent with it, and the hop's id is claimed.
    let replay = send(attacker.get(&link)).await;
    assert!(
        matches!(
            replay.status(),
            StatusCode::BAD_REQUEST | StatusCode::FORBIDDEN
        ),
        "a hop is used once: {}",
        replay.status()
    );
}

#[tokio::test]
#[ignore = "tier stack: needs Envoy and the dev IdP (node, examples/demo/node_modules); run scripts/test"]
async fn attack_hop_for_one_host_is_refused_on_another() {
    let stack = Stack::start().await;
    let browser = stack.browser();
    sign_in(&stack, &browser, "alice").await;
    let link = hop_link(&stack, &browser).await;
    let moved = link.replacen("app.localhost", "admin.localhost", 1);
    let response = send(browser.get(&moved)).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{moved}");
    // Nor a tampered one (its last character changed: to `x`, unless it was one already,
    // which left the link intact 1 run in 64).
    let other = if link.ends_with('x') { 'y' } else { 'x' };
    let tampered = format!("{}{other}", &link[..link.len() - 1]);
    assert_ne!(tampered, link);
    assert_eq!(
        send(browser.get(&tampered)).await.status(),
        StatusCode::BAD_REQUEST
    );
    let huge = stack.url(
        "app",
        &format!("/.portcullis/callback?hop={}", "A".repeat(10_000)),
    );
    assert_eq!(
        send(browser.get(&huge)).await.status(),
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
#[ignore = "tier stack: needs Envoy and the dev IdP (node, examples/demo/node_modules); run scripts/test"]
async fn attack_cross_site_requests_do_not_sign_out() {
    let stack = Stack::start().await;
    let alice = stack.browser();
    sign_in(&stack, &alice, "alice").await;
    let app_sign_out = stack.url("app", "/.portcullis/sign_out");
    let auth_sign_out = stack.url("auth", "/.portcullis/sign_out");

    // A link or an image on any page: GET changes nothing, at either host.
    for url in [&app_sign_out, &auth_sign_out] {
        let response = send(alice.get(url).header("sec-fetch-site", "cross-site")).await;
        assert_eq!(response.status(), StatusCode::OK, "GET {url}");
        let body = response.text().await.unwrap();
        assert!(
            body.contains("method=\"post\""),
            "a confirmation form: {body}"
        );
    }
    // A form on another site posting here.
    for (url, headers) in [
        (&app_sign_out, vec![("sec-fetch-site", "cross-site")]),
        (&app_sign_out, vec![("sec-fetch-site", "same-site")]),
        (&app_sign_out, vec![("origin", "https://evil.example")]),
        (&app_sign_out, vec![("origin", "null")]),
        (&auth_sign_out, vec![("sec-fetch-site", "cross-site")]),
        (
            &auth_sign_out,
            vec![("origin", "https://app.localhost.evil.example")],
        ),
    ] {
        let mut request = alice.request(reqwest::Method::POST, url);
        for (k, v) in &headers {
            request = request.header(*k, *v);
        }
        let response = send(request).await;
        assert_eq!(
            response.status(),
            StatusCode::FORBIDDEN,
            "POST {url} {headers:?}"
        );
    }
    assert_eq!(
        seen_as(&stack, &alice).await.as_deref(),
        Some("alice@example.com"),
        "alice is still signed in"
    );

    // The auth host's continuation of someone else's sign-out does not end alice's session.
    let bob = stack.browser();
    sign_in(&stack, &bob, "bob").await;
    let response = send(
        bob.request(reqwest::Method::POST, &app_sign_out)
            .header("sec-fetch-site", "same-origin"),
    )
    .await;
    let continuation = location(&response).expect("bob's sign-out continues on the auth host");
    assert!(
        continuation.query().is_some_and(|q| q.starts_with("t=")),
        "{continuation}"
    );
    let response = send(alice.get(continuation.as_str())).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "a confirmation page, not a sign-out"
    );
    assert_eq!(
        seen_as(&stack, &alice).await.as_deref(),
        Some("alice@example.com")
    );
    // Control: from our own page, sign-out works (the foundation test walks the whole way).
    let response = send(
        alice
            .request(reqwest::Method::POST, &app_sign_out)
            .header("sec-fetch-site", "same-origin")
            .header(ORIGIN, stack.origin("app")),
    )
    .await;
    assert!(response.status().is_redirection(), "{}", response.status());
    assert_eq!(seen_as(&stack, &alice).await, None);
}

/// Every cookie form Envoy can present, on a protected and on a public route: our cookies
/// never reach the upstream.
#[tokio::test]
#[ignore = "tier stack: needs Envoy and the dev IdP (node, examples/demo/node_modules); run scripts/test"]
async fn attack_no_cookie_header_form_carries_our_cookies_upstream() {
    let stack = Stack::builder()
        .route("public", "apps", "{ public: true }")
        .start()
        .await;
    let alice = stack.browser();
    sign_in(&stack, &alice, "alice").await;
    let session = alice
        .cookie(&stack.url("app", "/"), SESSION_COOKIE)
        .expect("a session cookie on the app host");
    let forms: Vec<Vec<String>> = vec![
        // Two Cookie headers over HTTP/1.1 (Envoy joins them with ", ").
        vec!["theme=dark".into(), format!("{SESSION_COOKIE}={session}")],
        vec![format!("{SESSION_COOKIE}={session}"), "theme=dark".into()],
        vec![format!("theme=dark, {SESSION_COOKIE}={session}")],
        vec![format!("theme=dark;{SESSION_COOKIE}={session};;b=2")],
        vec![format!("theme=dark; __host-_portcullis={session}")],
        vec![format!("theme=dark; _portcullis={session}")],
        vec![format!("theme=dark; __Host-_portcullis_csrf={session}")],
        vec![format!("theme=dark; __Secure-_portcullis_idt={session}")],
    ];
    let client = stack.browser();
    for form in &forms {
        for url in [stack.url("app", "/c"), stack.url("apps", "/c")] {
            let mut request = client.get(&url).header(ACCEPT, "application/json");
            for value in form {
                request = request.header(COOKIE, value);
            }
            let status = send(request).await.status();
            assert!(
                status == StatusCode::OK || status == StatusCode::UNAUTHORIZED,
                "{url} {form:?}: {status}"
            );
        }
    }
    for request in stack.echo_requests() {
        let cookie = request.header("cookie").unwrap_or_default();
        assert!(
            !cookie.contains("_portcullis") && !cookie.contains(&session),
            "{} {} reached the upstream with cookie {cookie:?}",
            request.host(),
            request.path
        );
        for (name, value) in &request.headers {
            assert!(
                !value.contains(&session),
                "{name} carried the session upstream"
            );
        }
    }
    // And the two-header form still signs alice in on the protected route.
    let response = send(
        client
            .get(&stack.url("app", "/c"))
            .header(COOKIE, "theme=dark")
            .header(COOKIE, format!("{SESSION_COOKIE}={session}")),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
#[ignore = "tier stack: needs Envoy and the dev IdP (node, examples/demo/node_modules); run scripts/test"]
async fn attack_client_identity_and_forwarding_headers_never_reach_the_upstream() {
    let stack = Stack::builder()
        .route("public", "apps", "{ public: true }")
        .start()
        .await;
    let alice = stack.browser();
    sign_in(&stack, &alice, "alice").await;
    let anonymous = stack.browser();
    let spellings = [
        "X-Portcullis-Jwt-Assertion",
        "x-portcullis-jwt-assertion",
        "X-PORTCULLIS-JWT-ASSERTION",
        // CGI, WSGI, Rack and PHP map underscores onto dashes.
        "X_Portcullis_Jwt_Assertion",
        "x-portcullis_jwt-assertion",
    ];
    for (who, browser) in [("alice", &alice), ("anonymous", &anonymous)] {
        for name in spellings {
            for url in [stack.url("app", "/h"), stack.url("apps", "/h")] {
                let request = browser
                    .get(&url)
                    .header(name, "forged.identity.token")
                    .header("x-forwarded-host", "evil.example")
                    .header("x-real-ip", "203.0.113.66")
                    .header(ACCEPT, "application/json");
                let status = send(request).await.status();
                assert!(
                    status == StatusCode::OK
                        || status == StatusCode::UNAUTHORIZED
                        || status == StatusCode::BAD_REQUEST,
                    "{who} {url} {name}: {status}"
                );
            }
        }
    }
    let upstream = stack.echo_requests();
    assert!(!upstream.is_empty(), "the public route was reached");
    for request in upstream {
        for (name, value) in &request.headers {
            assert!(
                !value.contains("forged.identity.token"),
                "{name}: {value} reached {} {}",
                request.host(),
                request.path
            );
            assert!(
                !value.contains("evil.example") && !value.contains("203.0.113.66"),
                "client-sent {name}: {value} reached {} {}",
                request.host(),
                request.path
            );
        }
    }
}

/// A protected prefix on a host with a lenient route: every spelling of the prefix that
/// some upstream framework serves as the prefix is decided by the protected route or
/// refused, never forwarded under the lenient one.
#[tokio::test]
#[ignore = "tier stack: needs Envoy and the dev IdP (node, examples/demo/node_modules); run scripts/test"]
async fn attack_paths_that_upstreams_read_as_the_protected_prefix() {
    let stack = Stack::builder()
        .route("apps-admin", "apps", "{ groups: [admins] }")
        .route_path("apps-admin", "/admin")
        .route("apps", "apps", "{ any_authenticated_user: true }")
        .start()
        .await;
    let bob = stack.browser();
    sign_in(&stack, &bob, "bob").await;
    // Control: bob reaches the lenient route (through the hop to this host) and is refused
    // on the strict one.
    let (response, visited) = bob.follow(&stack.url("apps", "/x")).await;
    assert_eq!(response.status(), StatusCode::OK, "{}", list(&visited));
    let (response, _) = bob.follow(&stack.url("apps", "/admin/x")).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let before = calls(&stack);
    for path in [
        "/ADMIN/x",
        "/Admin",
        "/admin;jsessionid=1/x",
        "/admin;/x",
        "/admin./x",
        "/admin%20/x",
        "/admin%2e/x",
        "/%61dmin/x",
        "/%41DMIN/x",
    ] {
        let (response, _) = bob.follow(&stack.url("apps", path)).await;
        let status = response.status();
        assert!(
            status == StatusCode::FORBIDDEN || status == StatusCode::BAD_REQUEST,
            "bob on {path}: {status}"
        );
    }
    let leaked: Vec<String> = stack.echo_requests()[before..]
        .iter()
        .map(|r| r.path.clone())
        .collect();
    assert!(leaked.is_empty(), "forwarded for bob: {leaked:?}");
}

#[tokio::test]
#[ignore = "tier stack: needs Envoy and the dev IdP (node, examples/demo/node_modules); run scripts/test"]
async fn attack_a_token_for_one_prefix_route_does_not_verify_at_another() {
    let stack = Stack::builder()
        .route("apps-admin", "apps", "{ any_authenticated_user: true }")
        .route_path("apps-admin", "/admin")
        .route("apps", "apps", "{ any_authenticated_user: true }")
        .start()
        .await;
    let alice = stack.browser();
    sign_in(&stack, &alice, "alice").await;
    let token_at = |path: &'static str| {
        let alice = &alice;
        let stack = &stack;
        async move {
            let (response, _) = alice.follow(&stack.url("apps", path)).await;
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            let echo = EchoRequest::from_json(&response.json().await.unwrap());
            echo.header(IDENTITY_HEADER).unwrap().to_string()
        }
    };
    let admin = token_at("/admin/").await;
    let root = token_at("/").await;
    let host = stack.authority("apps");
    let admin_aud = format!("{host}/admin");
    // Each verifies for its own audience (and Grafana-style bare-host routes keep theirs)...
    stack.verify_jwt(&admin, &admin_aud).await;
    stack.verify_jwt(&root, &host).await;
    // ...and not for the other route's.
    assert!(
        !stack.jwt_verifies(&admin, &host).await,
        "host/admin token at host/"
    );
    assert!(
        !stack.jwt_verifies(&root, &admin_aud).await,
        "host/ token at host/admin"
    );
}

#[tokio::test]
#[ignore = "tier stack: needs Envoy and the dev IdP (node, examples/demo/node_modules); run scripts/test"]
async fn attack_oidc_callback_replays_and_foreign_state() {
    let stack = Stack::start().await;
    let auth = stack.url("auth", "/");
    let csrf_name = "__Host-_portcullis_csrf";
    let alice = stack.browser();
    let (login_page, _) = alice.follow(&stack.url("app", "/")).await;
    let csrf = alice.cookie(&auth, csrf_name).expect("a sign-in in flight");
    let (response, visited) = alice
        .submit_form(login_page, &[("login", "alice"), ("password", "alice")])
        .await;
    assert_eq!(response.status(), StatusCode::OK, "{}", list(&visited));
    let callback = visited
        .iter()
        .find(|u| u.path() == "/.portcullis/oauth2/callback")
        .expect("the IdP called back")
        .clone();

    // The same answer again, with a copy of the CSRF cookie: refused before the IdP.
    let replay = stack.browser();
    replay.set_cookie(&auth, csrf_name, &csrf);
    let response = send(replay.get(callback.as_str())).await;
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("already used"), "{body}");

    // The answer in a browser whose own sign-in is another one (CSRF cookie of its own).
    let other = stack.browser();
    let _ = other.follow(&stack.url("app", "/")).await;
    assert!(other.cookie(&auth, csrf_name).is_some());
    assert_eq!(
        send(other.get(callback.as_str())).await.status(),
        StatusCode::BAD_REQUEST
    );
    // No CSRF cookie at all, a wrong state, no state.
    let without_state: String = {
        let mut u = callback.clone();
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .filter(|(k, _)| k != "state")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
        u.into()
    };
    let wrong_state = callback.as_str().replace("state=", "state=x");
    for (what, browser, url) in [
        ("no CSRF cookie", stack.browser(), callback.to_string()),
        (
            "wrong state",
            {
                let b = stack.browser();
                b.set_cookie(&auth, csrf_name, &csrf);
                b
            },
            wrong_state,
        ),
        (
            "no state",
            {
                let b = stack.browser();
                b.set_cookie(&auth, csrf_name, &csrf);
                b
            },
            without_state,
        ),
    ] {
        let status = send(browser.get(&url)).await.status();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}");
    }
}

#[tokio::test]
#[ignore = "tier stack: needs Envoy and the dev IdP (node, examples/demo/node_modules); run scripts/test"]
async fn attack_oversized_and_malformed_values_get_clear_answers() {
    let stack = Stack::start().await;
    let browser = stack.browser();
    let app = stack.url("app", "/");
    let cases: Vec<(&str, String)> = vec![
        (
            "7 KB session cookie",
            format!("{SESSION_COOKIE}={}", "A".repeat(7_000)),
        ),
        (
            "binary-looking cookie",
            format!("{SESSION_COOKIE}=%00%ff{}", "/".repeat(50)),
        ),
        (
            "many cookies",
            (0..300)
                .map(|i| format!("c{i}=v"))
                .collect::<Vec<_>>()
                .join("; "),
        ),
        ("empty pieces", ";;;, ,;=;==;".into()),
    ];
    for (what, cookie) in cases {
        let response = send(browser.get(&app).header(COOKIE, cookie)).await;
        let status = response.status();
        assert!(
            status == StatusCode::FOUND || status.is_client_error(),
            "{what}: {status}"
        );
    }
    // A header beyond Envoy's limit is refused by Envoy with a 4xx, never forwarded.
    let response = send(browser.get(&app).header("x-big", "b".repeat(100_000))).await;
    assert!(response.status().is_client_error(), "{}", response.status());
    // A long return URL, an unknown host.
    let rd = format!(
        "https://app.localhost:{}/{}",
        stack.ports.envoy,
        "a".repeat(5_000)
    );
    let url = stack.url("auth", &format!("/.portcullis/sign_in?rd={rd}"));
    assert_eq!(
        send(browser.get(&url)).await.status(),
        StatusCode::BAD_REQUEST
    );
    assert!(stack.echo_requests().is_empty());
}

/// HTTPS upstreams are verified: a certificate from a CA the route does not trust is never
/// used (the test CA is not a system CA); trusting it by `tls.ca_file`, or skipping the
/// check by the explicit `insecure_skip_verify`, works.
#[tokio::test]
#[ignore = "tier stack: needs Envoy and the dev IdP (node, examples/demo/node_modules); run scripts/test"]
async fn attack_an_https_upstream_with_an_untrusted_certificate_is_not_used() {
    let other_ca = testkit::temp_dir("other-ca").join("ca.pem");
    // A CA that did not sign the upstream's certificate: the system bundle's first one.
    let bundle = std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt")
        .expect("the system CA bundle (Debian's ca-certificates)");
    let first = bundle
        .split_inclusive("-----END CERTIFICATE-----")
        .next()
        .unwrap()
        .to_string();
    std::fs::write(&other_ca, first).unwrap();
    let stack = Stack::builder()
        .tls_echo()
        .route("verified", "apps", "{ any_authenticated_user: true }")
        .route_upstream("verified", "https://127.0.0.1:{echo_tls}")
        .route("own-ca", "grafana", "{ any_authenticated_user: true }")
        .route_upstream("own-ca", "https://127.0.0.1:{echo_tls}")
        .route_option("own-ca", "tls: { ca_file: \"{ca}\" }")
        .route("skip", "cockpit", "{ any_authenticated_user: true }")
        .route_upstream("skip", "https://127.0.0.1:{echo_tls}")
        .route_option("skip", "tls: { insecure_skip_verify: true }")
        .route("wrong-ca", "apps", "{ any_authenticated_user: true }")
        .route_path("wrong-ca", "/wrong")
        .route_upstream("wrong-ca", "https://127.0.0.1:{echo_tls}")
        .route_option(
            "wrong-ca",
            &format!("tls: {{ ca_file: \"{}\" }}", other_ca.display()),
        )
        .start()
        .await;
    let alice = stack.browser();
    sign_in(&stack, &alice, "alice").await;
    let before = calls(&stack);
    let (response, visited) = alice.follow(&stack.url("apps", "/v")).await;
    assert_eq!(
        response.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "system CAs do not trust the test CA: {}",
        list(&visited)
    );
    let (response, _) = alice.follow(&stack.url("apps", "/wrong/v")).await;
    assert_eq!(
        response.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "a ca_file that did not sign the upstream's certificate"
    );
    assert_eq!(
        calls(&stack),
        before,
        "the untrusted upstream was sent a request"
    );
    for label in ["grafana", "cockpit"] {
        let (response, visited) = alice.follow(&stack.url(label, "/v")).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "{label}: {}",
            list(&visited)
        );
    }
}

/// POSTs `logout_token` to `/.portcullis/backchannel_logout` on `host`, as an IdP would.
async fn post_logout_token(stack: &Stack, host: &str, token: &str) -> StatusCode {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("logout_token", token)
        .finish();
    let browser = stack.browser();
    send(
        browser
            .request(
                reqwest::Method::POST,
                &stack.url(host, "/.portcullis/backchannel_logout"),
            )
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body),
    )
    .await
    .status()
}

#[tokio::test]
#[ignore = "tier stack: needs Envoy and the dev IdP (node, examples/demo/node_modules); run scripts/test"]
async fn attack_backchannel_logout_tokens_the_idp_did_not_sign_end_nothing() {
    use base64::Engine;
    let stack = Stack::start().await;
    let alice = stack.browser();
    sign_in(&stack, &alice, "alice").await;
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": stack.idp_origin(), "aud": "portcullis", "iat": now, "jti": "attack-1",
        "sub": "alice", "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
    });
    // An identity JWT portcullis itself signed (what every upstream sees), and a logout
    // token signed with that same key: neither is the IdP's.
    let identity = stack
        .echo_requests()
        .iter()
        .rev()
        .find_map(|r| r.header(IDENTITY_HEADER).map(str::to_string))
        .expect("the app saw alice's identity JWT");
    let signed = testkit::run(
        testkit::node_script("sign_jwt.mjs")
            .arg("--key-file")
            .arg(stack.dir.join("secrets/signing_key.pem"))
            .args(["--claims", &claims.to_string()]),
    );
    let ours: serde_json::Value = serde_json::from_slice(&signed.stdout).unwrap();
    let ours = ours["token"].as_str().unwrap().to_string();
    let unsigned = format!(
        "{}.{}.",
        b64(serde_json::json!({"alg": "none"})),
        b64(claims)
    );
    for (what, token) in [
        ("alg none", unsigned.clone()),
        ("signed with portcullis's own key", ours),
        ("an identity JWT", identity),
        ("garbage", "a.b.c".to_string()),
        ("empty", String::new()),
    ] {
        assert_eq!(
            post_logout_token(&stack, "auth", &token).await,
            StatusCode::BAD_REQUEST,
            "{what}"
        );
    }
    // Only the auth host has the endpoint.
    assert_eq!(
        post_logout_token(&stack, "app", &unsigned).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        send(alice.get(&stack.url("app", "/"))).await.status(),
        StatusCode::OK,
        "alice is still signed in"
    );
}
