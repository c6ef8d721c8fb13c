//! Acceptance tests for the foundation: real IdP, echo upstream, portcullis and Envoy.
//!
//! Each test starts its own [`Stack`] on ports of its own, so the tests run in parallel and
//! never see each other's sessions. Tier `stack`: they need Envoy (`PORTCULLIS_ENVOY_BIN` or
//! `.deps/envoy/envoy/_bin/envoy`) and the demo's node modules; `scripts/test` sets both up
//! and runs them (`cargo test -- --include-ignored`).

use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, CONNECTION, UPGRADE};
use reqwest::{Response, StatusCode, Url};
use serde_json::json;
use testkit::{Browser, EchoRequest, Stack, list, location, send};

const IDENTITY_HEADER: &str = "x-portcullis-jwt-assertion";
/// With `cookie.secure` (the default) every cookie of ours carries the `__Host-` prefix.
const SESSION_COOKIE: &str = "__Host-_portcullis";

/// Parses the echo upstream's answer: the request as the app received it.
async fn echoed(response: Response) -> EchoRequest {
    let url = response.url().clone();
    let body = response.text().await.expect("echo body is readable");
    let json = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{url} did not answer the echo's JSON ({e}): {body}"));
    EchoRequest::from_json(&json)
}

/// Signs `user` in through the app and checks they land on the app with 200.
async fn sign_in(stack: &Stack, browser: &Browser, user: &str) -> EchoRequest {
    let app = stack.url("app", "/");
    let (response, visited) = browser.login(&app, user, user).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "{user} did not reach the app; redirects:\n{}",
        list(&visited)
    );
    assert_eq!(
        response.url().as_str(),
        app,
        "{user} ended on the wrong page"
    );
    echoed(response).await
}

/// Asserts `response` is the redirect of a request without a session: 302 to the auth
/// host's sign-in, carrying the original URL as `rd`.
fn assert_sends_to_sign_in(stack: &Stack, response: &Response, original: &str) {
    assert_eq!(
        response.status(),
        StatusCode::FOUND,
        "GET {original} without a valid session: expected 302 to sign-in"
    );
    let to = location(response).expect("302 has a Location");
    assert_eq!(
        to.origin().ascii_serialization(),
        stack.origin("auth"),
        "sign-in is on the auth host: {to}"
    );
    assert_eq!(to.path(), "/.portcullis/sign_in", "Location {to}");
    let rd = to
        .query_pairs()
        .find(|(k, _)| k == "rd")
        .map(|(_, v)| v.into_owned());
    assert_eq!(
        rd.as_deref(),
        Some(original),
        "the sign-in link returns to the page asked for: {to}"
    );
}

/// Whether a URL is one of this stack's own hosts (auth, app, admin) or its IdP.
fn is_ours(stack: &Stack, url: &Url) -> bool {
    let origin = url.origin().ascii_serialization();
    ["auth", "app", "admin"]
        .iter()
        .any(|label| origin == stack.origin(label))
        || origin == stack.idp_origin()
}

/// Changes one base64url character at about `at` (a fraction of the length) to another.
fn flip_char(value: &str, at: f64) -> String {
    let mut chars: Vec<char> = value.chars().collect();
    let start = ((chars.len() as f64) * at) as usize;
    let i = (start..chars.len())
        .chain(0..start)
        .find(|&i| chars[i].is_ascii_alphanumeric())
        .expect("the cookie has alphanumeric characters");
    chars[i] = if chars[i] == 'x' { 'y' } else { 'x' };
    chars.into_iter().collect()
}

#[tokio::test]
#[ignore = "tier stack: needs Envoy and the dev IdP (node, examples/demo/node_modules); run scripts/test"]
async fn alice_signs_in_and_the_app_gets_a_verifiable_identity_jwt() {
    let stack = Stack::start().await;
    let browser = stack.browser();
    let app = stack.url("app", "/");

    let first = send(browser.get(&app)).await;
    assert_sends_to_sign_in(&stack, &first, &app);

    let (response, visited) = browser.login(&app, "alice", "alice").await;
    let auth_at = visited
        .iter()
        .position(|u| u.origin().ascii_serialization() == stack.origin("auth"));
    let idp_at = visited
        .iter()
        .position(|u| u.origin().ascii_serialization() == stack.idp_origin());
    assert!(
        matches!((auth_at, idp_at), (Some(a), Some(i)) if a < i),
        "expected the auth host, then the IdP; redirects:\n{}",
        list(&visited)
    );
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "redirects:\n{}",
        list(&visited)
    );
    assert_eq!(response.url().as_str(), app);
    let seen = echoed(response).await;
    assert_eq!(seen.host(), stack.authority("app"));
    let token = seen
        .header(IDENTITY_HEADER)
        .unwrap_or_else(|| panic!("the app got no identity header: {seen:?}"));

    let jwks = stack.jwks().await;
    let keys = jwks["keys"].as_array().expect("JWKS has keys");
    assert_eq!(keys.len(), 1, "one signing key is published: {jwks}");
    let verified = stack.verify_jwt(token, &stack.authority("app")).await;
    let (header, claims) = (&verified["header"], &verified["payload"]);
    assert_eq!(header["alg"], "ES256", "{verified}");
    assert!(
        header["kid"].is_string(),
        "the JWT names its key: {verified}"
    );
    assert_eq!(header["kid"], keys[0]["kid"], "{verified}\n{jwks}");
    assert_eq!(claims["aud"], json!(stack.authority("app")), "{verified}");
    assert_eq!(claims["email"], "alice@example.com", "{verified}");
    assert_eq!(claims["groups"], json!(["admins"]), "{verified}");
    let lifetime = claims["exp"].as_i64().zip(claims["iat"].as_i64());
    assert_eq!(lifetime.map(|(e, i)| e - i), Some(300), "{verified}");

    // The request the echo logged is the same one.
    let logged = stack.echo_requests();
    let last = logged.last().expect("the echo logged the request");
    assert_eq!(last.header(IDENTITY_HEADER), Some(token));

    // Alice is in `admins`, so the admin app lets her in with a token for its own host.
    let (response, visited) = browser.follow(&stack.url("admin", "/")).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "alice on admin; redirects:\n{}",
        list(&visited)
    );
    let seen = echoed(response).await;
    let token = seen.header(IDENTITY_HEADER).expect("identity header");
    let verified = stack.verify_jwt(token, &stack.authority("admin")).await;
    assert_eq!(
        verified["payload"]["aud"],
        json!(stack.authority("admin")),
        "{verified}"
    );
}

#[tokio::test]
#[ignore = "tier stack: needs Envoy and the dev IdP (node, examples/demo/node_modules); run scripts/test"]
async fn the_app_never_sees_the_session_cookie_or_a_forged_identity() {
    let stack = Stack::start().await;
    let browser = stack.browser();
    let app = stack.url("app", "/");

    // Without a session a forged identity header gets nowhere near the app.
    let forged = browser.get(&app).header(IDENTITY_HEADER, "forged");
    assert_sends_to_sign_in(&stack, &send(forged).await, &app);
    let forged = browser
        .get(&app)
        .header(IDENTITY_HEADER, "forged")
        .header(ACCEPT, "application/json");
    assert_eq!(send(forged).await.status(), StatusCode::UNAUTHORIZED);
    assert!(
        stack.echo_requests().is_empty(),
        "the app was called without a session: {:?}",
        stack.echo_requests()
    );

    sign_in(&stack, &browser, "alice").await;
    let session = browser
        .cookie(&app, SESSION_COOKIE)
        .expect("the app host has a session cookie");
    browser.set_cookie(&app, "theme", "dark");
    let sent = browser.cookie_header(&app).unwrap_or_default();
    assert!(
        sent.contains(&format!("{SESSION_COOKIE}=")) && sent.contains("theme=dark"),
        "the client sends both cookies: {sent}"
    );

    let page = stack.url("app", "/settings?tab=1");
    let response = send(browser.get(&page).header(IDENTITY_HEADER, "forged")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let seen = echoed(response).await;
    let cookie = seen.header("cookie").unwrap_or_default();
    assert!(
        cookie.contains("theme=dark"),
        "the app's own cookie is passed on: {cookie:?}"
    );
    assert!(
        !cookie.contains(SESSION_COOKIE) && !cookie.contains(&session),
        "the session cookie reached the app: {cookie:?}"
    );
    let identity = seen.header(IDENTITY_HEADER).expect("identity header");
    assert!(
        !identity.contains("forged"),
        "the client's identity header reached the app: {identity:?}"
    );
    let verified = stack.verify_jwt(identity, &stack.authority("app")).await;
    assert_eq!(verified["payload"]["email"], "alice@example.com");

    // Nothing the app ever received carries the session or the forgery.
    for request in stack.echo_requests() {
        for (name, value) in &request.headers {
            assert!(
                !value.contains(&session) && !value.contains("forged"),
                "{name}: {value} reached the app ({} {})",
                request.method,
                request.path
            );
        }
        let cookie = request.header("cookie").unwrap_or_default();
        assert!(!cookie.contains(SESSION_COOKIE), "cookie: {cookie}");
    }
}

#[tokio::test]
#[ignore = "tier stack: needs Envoy and the dev IdP (node, examples/demo/node_modules); run scripts/test"]
async fn bob_may_use_the_app_but_not_the_admin_app() {
    let stack = Stack::start().await;
    let browser = stack.browser();
    let seen = sign_in(&stack, &browser, "bob").await;
    let token = seen.header(IDENTITY_HEADER).expect("identity header");
    let verified = stack.verify_jwt(token, &stack.authority("app")).await;
    assert_eq!(verified["payload"]["email"], "bob@example.com");
    assert_eq!(verified["payload"]["groups"], json!([]), "{verified}");

    let (response, visited) = browser.follow(&stack.url("admin", "/")).await;
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "bob on admin; redirects:\n{}\n{body}",
        list(&visited)
    );
    assert!(
        body.contains("bob@example.com"),
        "the page says who is signed in: {body}"
    );
    assert!(
        body.contains("/.portcullis/sign_out"),
        "the page offers a sign-out link: {body}"
    );

    let admin = stack.authority("admin");
    let to_admin: Vec<_> = stack
        .echo_requests()
        .into_iter()
        .filter(|r| r.host() == admin)
        .collect();
    assert!(
        to_admin.is_empty(),
        "the admin app was called for bob: {to_admin:?}"
    );
}

#[tokio::test]
#[ignore = "tier stack: needs Envoy and the dev IdP (node, examples/demo/node_modules); run scripts/test"]
async fn unauthenticated_non_navigation_requests_get_401_and_browsers_a_redirect() {
    let stack = Stack::start().await;
    let browser = stack.browser();
    let app = stack.url("app", "/");

    let cases = [
        (
            "Accept: application/json",
            vec![(ACCEPT, "application/json")],
        ),
        (
            "X-Requested-With: XMLHttpRequest",
            vec![("x-requested-with".parse().unwrap(), "XMLHttpRequest")],
        ),
        (
            "a WebSocket upgrade",
            vec![
                (CONNECTION, "Upgrade"),
                (UPGRADE, "websocket"),
                ("sec-websocket-version".parse().unwrap(), "13"),
                (
                    "sec-websocket-key".parse().unwrap(),
                    "dGhlIHNhbXBsZSBub25jZQ==",
                ),
            ],
        ),
    ];
    for (what, headers) in cases {
        let mut request = browser.get(&app);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let response = send(request).await;
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "unauthenticated request with {what}"
        );
    }

    let page = stack.url("app", "/some/page?x=1&y=two");
    let response = send(browser.get(&page)).await;
    assert_sends_to_sign_in(&stack, &response, &page);

    assert!(
        stack.echo_requests().is_empty(),
        "the app was called without a session: {:?}",
        stack.echo_requests()
    );
}

#[tokio::test]
#[ignore = "tier stack: needs Envoy and the dev IdP (node, examples/demo/node_modules); run scripts/test"]
async fn a_tampered_session_cookie_is_no_session() {
    let stack = Stack::start().await;
    let browser = stack.browser();
    let app = stack.url("app", "/");
    sign_in(&stack, &browser, "alice").await;
    let real = browser
        .cookie(&app, SESSION_COOKIE)
        .expect("the app host has a session cookie");

    // Control: an exact copy in another browser is a session, so the copying works.
    let copy = stack.browser();
    copy.set_cookie(&app, SESSION_COOKIE, &real);
    assert_eq!(send(copy.get(&app)).await.status(), StatusCode::OK);

    let calls = stack.echo_requests().len();
    for at in [0.0, 0.5, 0.75] {
        let tampered = flip_char(&real, at);
        assert_ne!(tampered, real);
        let forger = stack.browser();
        forger.set_cookie(&app, SESSION_COOKIE, &tampered);
        let response = send(forger.get(&app)).await;
        assert_sends_to_sign_in(&stack, &response, &app);
        let response = send(forger.get(&app).header(ACCEPT, "application/json")).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        stack.echo_requests().len(),
        calls,
        "a tampered cookie reached the app"
    );
}

#[tokio::test]
#[ignore = "tier stack: needs Envoy and the dev IdP (node, examples/demo/node_modules); run scripts/test"]
async fn an_expired_session_cookie_is_no_session() {
    let stack = Stack::builder().cookie_lifetime("3s").start().await;
    let browser = stack.browser();
    let app = stack.url("app", "/");
    sign_in(&stack, &browser, "alice").await;
    let real = browser
        .cookie(&app, SESSION_COOKIE)
        .expect("the app host has a session cookie");

    // The browser itself may drop the cookie at its Max-Age; a copy re-sent without an
    // expiry checks that the server enforces the lifetime too. The copy opens the app until
    // the lifetime is over (no fixed sleep: ask until it no longer does).
    let replay = stack.browser();
    replay.set_cookie(&app, SESSION_COOKIE, &real);
    let json = || replay.get(&app).header(ACCEPT, "application/json");
    assert_eq!(
        send(json()).await.status(),
        StatusCode::OK,
        "the copied cookie is a session within its lifetime"
    );
    let started = Instant::now();
    let refused = testkit::poll_until(Duration::from_secs(15), || async {
        (send(json()).await.status() != StatusCode::OK).then_some(())
    })
    .await;
    assert!(
        refused.is_some(),
        "the session cookie still opens the app 15 s after its 3 s lifetime"
    );
    eprintln!("the cookie stopped working after {:?}", started.elapsed());
    for (who, b) in [("the browser", &browser), ("a replayed copy", &replay)] {
        let response = send(b.get(&app)).await;
        assert_eq!(
            response.status(),
            StatusCode::FOUND,
            "{who} after the cookie lifetime"
        );
        assert_sends_to_sign_in(&stack, &response, &app);
    }
}

#[tokio::test]
#[ignore = "tier stack: needs Envoy and the dev IdP (node, examples/demo/node_modules); run scripts/test"]
async fn sign_in_only_returns_to_our_own_apps() {
    let stack = Stack::start().await;
    let signed_out = stack.browser();
    let signed_in = stack.browser();
    sign_in(&stack, &signed_in, "alice").await;
    let port = stack.ports.envoy;
    let evil = [
        "https://evil.example/".to_string(),
        "//evil.example".to_string(),
        "https://app.localhost.evil.example/".to_string(),
        "https://app.localhost@evil.example/".to_string(),
        format!("https://evil.example:{port}/"),
        "javascript:alert(1)".to_string(),
    ];
    let sign_in_url = |rd: &str| {
        let rd: String = url::form_urlencoded::byte_serialize(rd.as_bytes()).collect();
        stack.url("auth", &format!("/.portcullis/sign_in?rd={rd}"))
    };

    let mut problems = Vec::new();
    for (who, browser) in [("signed out", &signed_out), ("signed in", &signed_in)] {
        // Control: our own app is an acceptable return URL.
        let ok = send(browser.get(&sign_in_url(&stack.url("app", "/")))).await;
        assert!(
            location(&ok).is_some(),
            "{who}, rd = the app: expected a redirect, got {}",
            ok.status()
        );

        for rd in &evil {
            let first = send(browser.get(&sign_in_url(rd))).await;
            let status = first.status();
            let mut visited = Vec::new();
            let last = browser.follow_response(first, &mut visited).await;
            // Had it gone to the IdP's login form, finish the login and keep watching.
            if last.status() == StatusCode::OK
                && last.url().origin().ascii_serialization() == stack.idp_origin()
            {
                let (_, more) = browser
                    .submit_form(last, &[("login", "alice"), ("password", "alice")])
                    .await;
                visited.extend(more);
            }
            for url in visited.iter().filter(|u| !is_ours(&stack, u)) {
                problems.push(format!("{who}, rd={rd}: redirected to {url}"));
            }
            if status != StatusCode::BAD_REQUEST {
                problems.push(format!(
                    "{who}, rd={rd}: status {status}, expected 400; redirects:\n{}",
                    list(&visited)
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test]
#[ignore = "tier stack: needs Envoy and the dev IdP (node, examples/demo/node_modules); run scripts/test"]
async fn with_portcullis_down_envoy_fails_closed_with_503() {
    let mut stack = Stack::start().await;
    let browser = stack.browser();
    sign_in(&stack, &browser, "alice").await;
    let app = stack.url("app", "/");
    let calls = stack.echo_requests().len();

    stack.stop_portcullis();
    let fresh = stack.browser();
    for (who, b) in [("signed in", &browser), ("signed out", &fresh)] {
        for accept in [testkit::BROWSER_ACCEPT, "application/json"] {
            let response = send(b.get(&app).header(ACCEPT, accept)).await;
            assert_eq!(
                response.status(),
                StatusCode::SERVICE_UNAVAILABLE,
                "{who}, Accept: {accept}, portcullis stopped"
            );
        }
    }
    assert_eq!(
        stack.echo_requests().len(),
        calls,
        "the app was called while portcullis was down"
    );
}

#[tokio::test]
#[ignore = "tier stack: needs Envoy and the dev IdP (node, examples/demo/node_modules); run scripts/test"]
async fn sign_out_ends_the_session_everywhere() {
    let stack = Stack::start().await;
    let browser = stack.browser();
    let app = stack.url("app", "/");
    sign_in(&stack, &browser, "alice").await;
    let session = browser
        .cookie(&app, SESSION_COOKIE)
        .expect("the app host has a session cookie");
    // The ID token for `id_token_hint` lives in a sealed cookie that only the auth host's
    // sign-out path receives.
    let sign_out_at_auth = stack.url("auth", "/.portcullis/sign_out");
    let id_token_cookie = "__Secure-_portcullis_idt";
    assert!(
        browser.cookie(&sign_out_at_auth, id_token_cookie).is_some(),
        "the auth host keeps the ID token for sign-out"
    );
    assert_eq!(
        browser.cookie(&stack.url("auth", "/"), id_token_cookie),
        None,
        "the ID-token cookie is scoped to the sign-out path"
    );

    // A GET changes nothing (any page could make the browser send one): it shows a form
    // that POSTs, which the user submits.
    let (confirm, _) = browser
        .follow(&stack.url("app", "/.portcullis/sign_out"))
        .await;
    assert_eq!(confirm.status(), StatusCode::OK);
    assert_eq!(
        confirm.url().as_str(),
        stack.url("app", "/.portcullis/sign_out")
    );
    let (mut response, mut visited) = browser.submit_form(confirm, &[]).await;
    // The IdP may ask the user to confirm the logout.
    if response.status() == StatusCode::OK
        && response.url().origin().ascii_serialization() == stack.idp_origin()
    {
        let (r, more) = browser.submit_form(response, &[]).await;
        response = r;
        visited.extend(more);
    }
    let at = |origin: &str| {
        visited
            .iter()
            .position(|u| u.origin().ascii_serialization() == origin)
    };
    assert!(
        matches!((at(&stack.origin("auth")), at(&stack.idp_origin())), (Some(a), Some(i)) if a < i),
        "sign-out goes through the auth host to the IdP; redirects:\n{}",
        list(&visited)
    );
    // RP-initiated logout carries the ID token from the cookie as `id_token_hint`.
    let hint = visited
        .iter()
        .filter(|u| u.origin().ascii_serialization() == stack.idp_origin())
        .find_map(|u| {
            u.query_pairs()
                .find(|(k, _)| k == "id_token_hint")
                .map(|(_, v)| v.into_owned())
        })
        .unwrap_or_else(|| panic!("no id_token_hint sent to the IdP:\n{}", list(&visited)));
    assert_eq!(hint.split('.').count(), 3, "a JWS: {hint}");
    assert_eq!(
        browser.cookie(&sign_out_at_auth, id_token_cookie),
        None,
        "sign-out clears the ID-token cookie"
    );
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "redirects:\n{}",
        list(&visited)
    );
    assert_eq!(
        response.url().as_str(),
        stack.url("auth", "/.portcullis/signed_out"),
        "redirects:\n{}",
        list(&visited)
    );

    // The old cookie, replayed, no longer opens the app.
    let replay = stack.browser();
    replay.set_cookie(&app, SESSION_COOKIE, &session);
    let response = send(replay.get(&app)).await;
    assert_sends_to_sign_in(&stack, &response, &app);
    let response = send(replay.get(&app).header(ACCEPT, "application/json")).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // The browser that signed out is signed out, at the IdP too: going back to the app
    // ends at the IdP's login form rather than silently signing in again.
    let (response, visited) = browser.follow(&app).await;
    assert_eq!(
        response.url().origin().ascii_serialization(),
        stack.idp_origin(),
        "after sign-out the app asks for a login again; redirects:\n{}",
        list(&visited)
    );
    let body = response.text().await.unwrap();
    assert!(
        body.contains("name=\"login\"") || body.contains("name=login"),
        "the IdP shows its login form: {body}"
    );
}
