//! The forward-auth edge in process: the parsing of what a proxy forwards, and the endpoint
//! driven with `oneshot` over a real [`App`] (fake IdP, sessions in memory, real tokens),
//! with the attack cases: spoofed forwarding headers, our cookie in every form of `Cookie`,
//! a client's own identity header, and `Authorization` that must not pass.

use axum::body::Body;
use axum::http::{HeaderMap, Request as HttpRequest, StatusCode};
use base64::Engine;
use tower::ServiceExt;

use super::*;
use crate::testing::{Answer, TestApp, config_with_cockpit, user};

const APP: &str = "app.localhost:8443";
const ADMIN: &str = "admin.localhost:8443";
const PUBLIC: &str = "public.localhost:8443";
const COCKPIT: &str = "cockpit.localhost:8443";
const BROWSER: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
const IDENTITY: &str = "x-portcullis-jwt-assertion";

/// The test config with programmatic access on (the fake IdP takes `fake-bearer.EMAIL`).
fn config() -> String {
    config_with_cockpit().replace(
        "  scopes: [openid, email, profile, groups]\n",
        "  scopes: [openid, email, profile, groups]\n  bearer: {}\n",
    )
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

/// What Caddy's `forward_auth` sends for `GET https://HOST/URI` (plus `extra`).
fn caddy(host: &str, uri: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut h: Vec<(String, String)> = [
        ("x-forwarded-method", "GET"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", host),
        ("x-forwarded-uri", uri),
        ("x-forwarded-for", "192.0.2.7"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    h.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    h
}

/// Caddy's forward-auth request for `GET https://HOST/URI` (plus `extra`), answered.
async fn fwd(t: &TestApp, host: &str, uri: &str, extra: &[(&str, &str)]) -> Answer {
    ask(t, "/forward_auth", &caddy(host, uri, extra)).await
}

async fn ask(t: &TestApp, path: &str, h: &[(String, String)]) -> Answer {
    let mut builder = HttpRequest::builder()
        .uri(path)
        .header("host", "127.0.0.1:9102");
    for (k, v) in h {
        builder = builder.header(k, v);
    }
    let response = router(t.app.clone())
        .oneshot(builder.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// A header of the answer; an empty one (what the proxy copies to remove it) is none.
fn header<'a>(a: &'a Answer, name: &str) -> Option<&'a str> {
    a.headers
        .get(name)
        .map(|v| v.to_str().unwrap())
        .filter(|v| !v.is_empty())
}

/// The three headers a proxy copies are in every 200, once each.
fn copies_all(a: &Answer) {
    for name in [IDENTITY, "cookie", "authorization"] {
        assert_eq!(a.headers.get_all(name).iter().count(), 1, "{name}: {a:?}");
    }
}

/// The claims of a JWT, unverified (the tokens module's tests verify them).
fn claims(jwt: &str) -> serde_json::Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

#[test]
fn caddy_and_nginx_spellings_are_read_alike() {
    let caddy = parse_forwarded(&headers(&[
        ("x-forwarded-method", "POST"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "App.localhost:8443"),
        ("x-forwarded-uri", "/a/b?c=d,e"),
        ("x-forwarded-for", "203.0.113.9, 192.0.2.7"),
        ("cookie", "a=1"),
        ("cookie", "b=2"),
        ("accept", "text/html"),
    ]))
    .unwrap();
    assert_eq!(caddy.method, "POST");
    assert_eq!(caddy.scheme, "https");
    assert_eq!(caddy.authority, "app.localhost:8443");
    assert_eq!(caddy.path, "/a/b?c=d,e");
    // The last entry is the one the proxy in front of us added.
    assert_eq!(caddy.source_ip, Some("192.0.2.7".parse().unwrap()));
    // HTTP/2 crumbs are one list of cookies.
    assert_eq!(caddy.headers["cookie"], "a=1; b=2");
    let req = caddy.request();
    assert_eq!(req.route_hint, None);
    assert_eq!(req.header("accept"), Some("text/html"));

    let nginx = parse_forwarded(&headers(&[
        ("x-original-method", "GET"),
        ("x-forwarded-proto", "HTTPS"),
        ("x-forwarded-host", "app.localhost:8443"),
        ("x-original-uri", "/"),
        ("x-real-ip", "192.0.2.8"),
    ]))
    .unwrap();
    assert_eq!(
        (
            nginx.method.as_str(),
            nginx.scheme.as_str(),
            nginx.path.as_str()
        ),
        ("GET", "https", "/")
    );
    assert_eq!(nginx.source_ip, Some("192.0.2.8".parse().unwrap()));
    // Both spellings, agreeing, are fine.
    let both = parse_forwarded(&headers(&[
        ("x-forwarded-method", "GET"),
        ("x-original-method", "GET"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "app.localhost:8443"),
        ("x-forwarded-uri", "/x"),
        ("x-original-uri", "/x"),
    ]));
    assert!(both.is_ok(), "{both:?}");
}

#[test]
fn attack_forwarding_headers_that_are_missing_repeated_or_contradict_are_refused() {
    let base = [
        ("x-forwarded-method", "GET"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "app.localhost:8443"),
        ("x-forwarded-uri", "/"),
    ];
    for (i, (name, _)) in base.iter().enumerate() {
        let mut h = base.to_vec();
        h.remove(i);
        assert!(
            matches!(parse_forwarded(&headers(&h)), Err(BadForward::Missing(_))),
            "without {name}"
        );
    }
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut h = base.to_vec();
        h.extend_from_slice(extra);
        parse_forwarded(&headers(&h))
    };
    // A client's own spelling next to the proxy's (Caddy sets X-Forwarded-Uri and passes a
    // client's X-Original-URI on): the request would be decided as the public path.
    assert_eq!(
        with(&[("x-original-uri", "/public/")]),
        Err(BadForward::Conflict("x-forwarded-uri", "x-original-uri"))
    );
    assert!(matches!(
        with(&[("x-original-method", "HEAD")]),
        Err(BadForward::Conflict(..))
    ));
    // A second header, or a list: something in front appended instead of setting.
    assert!(matches!(
        with(&[("x-forwarded-host", "public.localhost:8443")]),
        Err(BadForward::Repeated(_))
    ));
    assert!(matches!(
        with(&[("x-forwarded-uri", "/public/")]),
        Err(BadForward::Repeated(_))
    ));
    let listed = parse_forwarded(&headers(&[
        ("x-forwarded-method", "GET"),
        ("x-forwarded-proto", "https"),
        (
            "x-forwarded-host",
            "public.localhost:8443, app.localhost:8443",
        ),
        ("x-forwarded-uri", "/"),
    ]));
    assert!(matches!(listed, Err(BadForward::Repeated(_))), "{listed:?}");
    let proto_list = parse_forwarded(&headers(&[
        ("x-forwarded-method", "GET"),
        ("x-forwarded-proto", "http,https"),
        ("x-forwarded-host", "app.localhost:8443"),
        ("x-forwarded-uri", "/"),
    ]));
    assert!(proto_list.is_err());
    // Malformed values.
    for (name, value) in [
        ("x-forwarded-proto", "ftp"),
        ("x-forwarded-host", "app.localhost:8443/evil"),
        ("x-forwarded-host", "app.localhost@evil"),
        ("x-forwarded-method", "GE T"),
        ("x-forwarded-method", "GET\"x"),
        ("x-forwarded-uri", "relative"),
        ("x-forwarded-uri", "/a b"),
        ("x-forwarded-uri", "/a#frag"),
    ] {
        let mut h: Vec<(&str, &str)> = base.iter().filter(|(k, _)| *k != name).copied().collect();
        h.push((name, value));
        assert!(
            matches!(parse_forwarded(&headers(&h)), Err(BadForward::Malformed(_))),
            "{name}: {value}"
        );
    }
    let long = format!("/{}", "a".repeat(MAX_URI));
    let mut h = base[..3].to_vec();
    h.push(("x-forwarded-uri", &long));
    assert!(parse_forwarded(&headers(&h)).is_err());
}

#[test]
fn attack_paths_an_upstream_would_read_as_another_are_refused() {
    // nginx and Caddy forward $request_uri as the client wrote it; Envoy would have
    // normalized these before asking.
    for path in [
        "//admin/",
        "/public//../admin",
        "/public/../admin/",
        "/public/./x",
        "/public/%2e%2e/admin",
        "/public/%2E./admin",
        "/public/..",
        "/public/%2fadmin",
        "/public/%5Cadmin",
        "/public\\..\\admin",
        "/.",
    ] {
        let h = headers(&[
            ("x-forwarded-method", "GET"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "app.localhost:8443"),
            ("x-forwarded-uri", path),
        ]);
        assert_eq!(
            parse_forwarded(&h),
            Err(BadForward::NotNormalized),
            "{path}"
        );
    }
    for path in [
        "/",
        "/a",
        "/a/",
        "/a.b/c..d/",
        "/.well-known/x",
        "/a?next=/../x//y",
        "/%41",
    ] {
        let h = headers(&[
            ("x-forwarded-method", "GET"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "app.localhost:8443"),
            ("x-forwarded-uri", path),
        ]);
        assert!(parse_forwarded(&h).is_ok(), "{path}");
    }
}

#[tokio::test]
async fn no_session_answers_with_the_route_hosts_sign_in_and_no_cookie() {
    let t = TestApp::new(&config());
    let sign_in = format!(
        "https://{APP}/.portcullis/sign_in?rd=https%3A%2F%2F{}%2Fx%3Fy%3D1",
        APP.replace(':', "%3A")
    );
    // nginx: 401, with Location for the error_page redirect.
    let a = fwd(&t, APP, "/x?y=1", &[("accept", BROWSER)]).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.body);
    assert_eq!(a.location(), Some(sign_in.as_str()));
    assert!(a.set_cookies().is_empty(), "no cookie crosses the proxy");
    let body: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(body["sign_in_url"], sign_in.as_str());
    // Caddy and Traefik: the redirect itself.
    let a = ask(
        &t,
        "/forward_auth/redirect",
        &caddy(APP, "/x?y=1", &[("accept", BROWSER)]),
    )
    .await;
    assert_eq!(a.status, StatusCode::FOUND);
    assert_eq!(a.location(), Some(sign_in.as_str()));
    assert!(a.set_cookies().is_empty());
    // The route host's sign-in, reached through the HTTP service, binds this browser and
    // goes on to the auth host: the hop is bound as under Envoy.
    let mut browser = t.browser();
    let next = browser.get(&sign_in).await;
    assert_eq!(next.status, StatusCode::SEE_OTHER, "{}", next.body);
    assert!(
        next.location()
            .unwrap()
            .starts_with("https://auth.localhost:8443/.portcullis/sign_in?rd="),
        "{:?}",
        next.location()
    );
    assert!(next.location().unwrap().contains("&hb="));
    // API clients: 401 JSON, and no Location for either path.
    for path in ["/forward_auth", "/forward_auth/redirect"] {
        let a = ask(
            &t,
            path,
            &caddy(APP, "/api", &[("accept", "application/json")]),
        )
        .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(a.location(), None, "{path}");
        let body: serde_json::Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(body["error"], "unauthenticated");
        assert!(body["sign_in_url"].as_str().is_some());
    }
}

#[tokio::test]
async fn a_signed_in_user_gets_the_identity_jwt_and_a_refused_one_403() {
    let t = TestApp::new(&config());
    let alice = t.session(user("alice@example.com", &["admins"])).await;
    let bob = t.session(user("bob@example.com", &[])).await;

    let a = fwd(
        &t,
        APP,
        "/",
        &[("cookie", &t.cookie(&alice, APP)), ("accept", BROWSER)],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let jwt = header(&a, IDENTITY).expect("the identity JWT");
    let c = claims(jwt);
    assert_eq!(c["email"], "alice@example.com");
    assert_eq!(c["aud"], APP);
    assert_eq!(header(&a, "cache-control"), Some("no-store"));
    copies_all(&a);
    // Only our cookie was sent: the Cookie to copy is empty, so it is removed.
    assert_eq!(header(&a, "cookie"), None);
    assert_eq!(a.headers.get("cookie").unwrap(), "");
    assert!(a.body.is_empty());

    let request_id = "fwd-req-42";
    let a = fwd(
        &t,
        ADMIN,
        "/",
        &[
            ("cookie", &t.cookie(&bob, ADMIN)),
            ("accept", BROWSER),
            ("x-request-id", request_id),
        ],
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(a.body.contains("bob@example.com"), "{}", a.body);
    assert!(
        a.body.contains(request_id),
        "the page quotes the request id"
    );
    assert_eq!(header(&a, IDENTITY), None);
    // The same for an API client, as JSON.
    let a = fwd(
        &t,
        ADMIN,
        "/",
        &[
            ("cookie", &t.cookie(&bob, ADMIN)),
            ("accept", "application/json"),
        ],
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let body: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(body["error"], "forbidden");

    // No route: as for Envoy (nginx turns it into its 500, Caddy passes it on).
    let a = fwd(&t, "nowhere.localhost:8443", "/", &[]).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    // A request with no forwarding headers at all is not decided.
    let a = ask(&t, "/forward_auth", &[]).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.body.contains("X-Forwarded-Method"), "{}", a.body);
}

#[tokio::test]
async fn attack_our_cookie_never_survives_in_any_form_of_cookie() {
    let t = TestApp::new(&config());
    let alice = t.session(user("alice@example.com", &[])).await;
    let ours = t.cookie(&alice, APP);
    let name = ours.split('=').next().unwrap().to_string();
    // Another of our cookies (a stale one, the CSRF cookie) must go too.
    let forms: Vec<Vec<(&str, String)>> = vec![
        vec![("cookie", format!("{ours}; theme=dark"))],
        vec![("cookie", format!("theme=dark; {ours}"))],
        // HTTP/2 crumbs, each its own header.
        vec![
            ("cookie", "theme=dark".into()),
            ("cookie", ours.clone()),
            ("cookie", format!("{name}_csrf=x")),
        ],
        // Two HTTP/1.1 headers a proxy joined with a comma.
        vec![("cookie", format!("theme=dark, {ours}"))],
        vec![("cookie", format!("{ours},theme=dark"))],
        // Spacing and case a lenient upstream reads as ours.
        vec![("cookie", format!("  {ours} ;theme=dark"))],
    ];
    for form in forms {
        let mut h = caddy(APP, "/", &[]);
        h.extend(form.iter().map(|(k, v)| (k.to_string(), v.clone())));
        let a = ask(&t, "/forward_auth", &h).await;
        assert_eq!(a.status, StatusCode::OK, "{form:?}: {}", a.body);
        copies_all(&a);
        let cookie = header(&a, "cookie").unwrap_or_default();
        assert!(
            !cookie.contains(&name) && !cookie.contains(ours.split('=').nth(1).unwrap()),
            "{form:?} kept ours: {cookie}"
        );
        assert!(
            cookie.contains("theme=dark"),
            "{form:?} lost the app's: {cookie}"
        );
    }
    // On a public route without a session, too.
    let mut h = caddy(PUBLIC, "/", &[]);
    h.push(("cookie".into(), format!("{name}=forged; theme=dark")));
    let a = ask(&t, "/forward_auth", &h).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(header(&a, "cookie"), Some("theme=dark"));
    // The app's own cookies alone pass unchanged.
    let mut h = caddy(APP, "/", &[("cookie", &ours)]);
    h.push(("cookie".into(), "a=1; b=2".into()));
    let a = ask(&t, "/forward_auth", &h).await;
    assert_eq!(header(&a, "cookie"), Some("a=1; b=2"));
}

#[tokio::test]
async fn attack_a_client_sent_identity_header_is_replaced_or_removed() {
    let t = TestApp::new(&config());
    let alice = t.session(user("alice@example.com", &[])).await;
    let forged = "eyJhbGciOiJub25lIn0.eyJlbWFpbCI6ImFkbWluQGV4YW1wbGUuY29tIn0.";
    // Public route, no session: the identity header to copy is empty, so the proxy removes it.
    let a = fwd(&t, PUBLIC, "/", &[(IDENTITY, forged)]).await;
    assert_eq!(a.status, StatusCode::OK);
    copies_all(&a);
    assert_eq!(a.headers.get(IDENTITY).unwrap(), "");
    // In every spelling a proxy could pass on.
    let a = fwd(&t, PUBLIC, "/", &[("X-Portcullis-JWT-Assertion", forged)]).await;
    assert_eq!(header(&a, IDENTITY), None);
    // Signed in: ours replaces it.
    let a = fwd(
        &t,
        APP,
        "/",
        &[(IDENTITY, forged), ("cookie", &t.cookie(&alice, APP))],
    )
    .await;
    let jwt = header(&a, IDENTITY).unwrap();
    assert_ne!(jwt, forged);
    assert_eq!(claims(jwt)["email"], "alice@example.com");
    assert_eq!(a.headers.get_all(IDENTITY).iter().count(), 1);
}

#[tokio::test]
async fn attack_authorization_passes_only_where_it_should() {
    let t = TestApp::new(&config());
    let alice = t.session(user("alice@example.com", &[])).await;
    let basic = "Basic YWxpY2U6cGFzc3dvcmQ=";

    // A bearer token for us: verified, then removed; the identity JWT instead.
    let a = fwd(
        &t,
        APP,
        "/api",
        &[("authorization", "Bearer fake-bearer.carol@example.com")],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(header(&a, "authorization"), None);
    assert_eq!(
        claims(header(&a, IDENTITY).unwrap())["email"],
        "carol@example.com"
    );
    // A bearer token that does not verify: 401 invalid_token.
    let a = fwd(&t, APP, "/api", &[("authorization", "Bearer forged")]).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        header(&a, "www-authenticate"),
        Some("Bearer error=\"invalid_token\"")
    );
    // The app's own scheme on an ordinary route passes as it came (copying changes nothing).
    let a = fwd(
        &t,
        APP,
        "/",
        &[("authorization", basic), ("cookie", &t.cookie(&alice, APP))],
    )
    .await;
    assert_eq!(header(&a, "authorization"), Some(basic));

    // Cockpit: the login request carries our credential, never the client's...
    let login = fwd(
        &t,
        COCKPIT,
        "/cockpit/login",
        &[
            ("authorization", basic),
            ("cookie", &t.cookie(&alice, COCKPIT)),
        ],
    )
    .await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.body);
    let credential = header(&login, "authorization").unwrap();
    assert!(credential.starts_with("Basic "), "{credential}");
    assert_ne!(credential, basic);
    // ...and every other request none at all.
    let socket = fwd(
        &t,
        COCKPIT,
        "/cockpit/socket",
        &[
            ("authorization", basic),
            ("cookie", &t.cookie(&alice, COCKPIT)),
            ("upgrade", "websocket"),
        ],
    )
    .await;
    assert_eq!(socket.status, StatusCode::OK);
    copies_all(&socket);
    assert_eq!(socket.headers.get("authorization").unwrap(), "");
}

#[tokio::test]
async fn the_listeners_keep_to_their_own_paths() {
    let t = TestApp::new(&config());
    // The HTTP service, which clients reach through the proxy, has no forward-auth.
    for path in ["/forward_auth", "/forward_auth/redirect"] {
        let a = t
            .send(
                HttpRequest::builder()
                    .uri(path)
                    .header("host", APP)
                    .header("x-forwarded-method", "GET")
                    .header("x-forwarded-proto", "https")
                    .header("x-forwarded-host", APP)
                    .header("x-forwarded-uri", "/")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{path}");
    }
    // The forward-auth listener serves no sign-in, callback or user page.
    for path in [
        "/.portcullis/sign_in?rd=https://app.localhost:8443/",
        "/.portcullis/callback?hop=x",
        "/.portcullis/user",
        "/.well-known/portcullis/jwks.json",
    ] {
        let a = ask(&t, path, &caddy(APP, "/", &[])).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{path}");
    }
    assert_eq!(ask(&t, "/healthz", &[]).await.body, "ok");
}

#[test]
fn upstream_headers_are_the_final_values() {
    let original: HashMap<String, String> = [
        ("authorization", "Basic x"),
        ("cookie", "a=1"),
        (IDENTITY, "forged"),
        ("x-other", "kept by the proxy, not ours to say"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let edits = HeaderEdits {
        set: vec![(IDENTITY.into(), "jwt".into())],
        remove: vec!["authorization".into()],
    };
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert_eq!(
        upstream_headers(edits, &original, IDENTITY),
        pairs(&[(IDENTITY, "jwt"), ("cookie", "a=1"), ("authorization", "")])
    );
    // Nothing said about the identity header: never the client's.
    assert_eq!(
        upstream_headers(HeaderEdits::default(), &original, IDENTITY),
        pairs(&[
            (IDENTITY, ""),
            ("cookie", "a=1"),
            ("authorization", "Basic x")
        ])
    );
    // Nothing sent, nothing to keep: empty, so a proxy's copy removes it.
    assert_eq!(
        upstream_headers(HeaderEdits::default(), &HashMap::new(), IDENTITY),
        pairs(&[(IDENTITY, ""), ("cookie", ""), ("authorization", "")])
    );
}
