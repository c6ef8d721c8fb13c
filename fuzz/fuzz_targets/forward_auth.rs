//! The forward-auth edge (nginx `auth_request`, Caddy `forward_auth`, Traefik `forwardAuth`):
//! the headers a proxy forwards, as `0xff`-separated name and value fields (any number of
//! pairs, repeats included), parsed by `forward_auth::parse_forwarded` and then answered by
//! `forward_auth::router` with `oneshot`. In a value, `{app}`, `{admin}`, `{apps}`,
//! `{cockpit}`, `{public}` and `{auth}` stand for alice's real session cookie on that host.
//!
//! Invariants:
//! - a request is decided only when the four forwarding headers are each there once (in one
//!   spelling, or two that agree), with a method of token characters, `http` or `https`, a
//!   plain lowercase host, and a path of visible ASCII from `/` with no `//`, `.` or `..`
//!   segment (also percent-encoded) and no encoded or literal backslash or slash escape;
//!   what is decided is exactly what those headers say;
//! - a request that is not decided is answered 400, and one that is never 500;
//! - a 200 carries the identity header, `cookie` and `authorization` once each; never a
//!   cookie of ours; an identity JWT only with the real session cookie for the route's host;
//!   credentials only on a Cockpit route's signed-in login request;
//! - no answer echoes a session cookie or sets a cookie; a redirect goes only to the route
//!   host's own sign-in.

#![no_main]

use std::sync::OnceLock;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request};
use libfuzzer_sys::fuzz_target;
use portcullis::forward_auth::parse_forwarded;
use portcullis_fuzz::{HOSTS, fixture};
use tower::ServiceExt;

fn router() -> Router {
    static ROUTER: OnceLock<Router> = OnceLock::new();
    ROUTER
        .get_or_init(|| portcullis::forward_auth::router(fixture().app.clone()))
        .clone()
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let mut headers = HeaderMap::new();
    let fields: Vec<String> = data
        .split(|b| *b == 0xff)
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect();
    for pair in fields.chunks(2) {
        let [name, value] = pair else { break };
        let mut value = value.clone();
        for ((_, c), host) in f
            .cookies
            .iter()
            .zip(HOSTS.map(|h| h.split('.').next().unwrap()))
        {
            value = value.replace(&format!("{{{host}}}"), c);
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            headers.append(name, value);
        }
    }

    let parsed = parse_forwarded(&headers);
    if let Ok(fwd) = &parsed {
        check_parsed(&headers, fwd);
    }

    let mut builder = Request::builder().uri("/forward_auth");
    for (name, value) in &headers {
        builder = builder.header(name, value);
    }
    let request = builder.body(Body::empty()).expect("headers from a HeaderMap");
    let response = f
        .runtime
        .block_on(router().oneshot(request))
        .expect("the router is infallible");
    let status = response.status().as_u16();
    let Ok(fwd) = parsed else {
        assert_eq!(status, 400, "an undecided request answered {status}");
        return;
    };
    assert!(status < 500 || status == 503, "answered {status}");
    let out = response.headers();
    assert!(out.get("set-cookie").is_none(), "a cookie crossed the proxy");
    let app = &f.app;
    let req_cookie = fwd.headers.get("cookie").map(String::as_str).unwrap_or("");
    let route = app
        .routes()
        .select(None, &fwd.scheme, &fwd.authority, &fwd.path)
        .ok();
    if status == 200 {
        let route = route.expect("allowed on no route");
        let id = app.authorizer.identity_header();
        for name in [id, "cookie", "authorization"] {
            assert_eq!(out.get_all(name).iter().count(), 1, "{name} not once");
        }
        let value = |name: &str| out.get(name).unwrap().to_str().unwrap();
        for part in value("cookie").split([';', ',']) {
            let name = part.split_once('=').map_or(part, |(k, _)| k).trim();
            assert!(!app.cookies().is_ours(name), "{name:?} went upstream");
            assert!(!f.cookies.iter().any(|(_, c)| c == part.trim()));
        }
        let signed_in = f
            .cookie_values()
            .any(|(h, v)| h == route.authority && req_cookie.contains(v));
        if !value(id).is_empty() {
            assert!(signed_in, "an identity JWT without a session");
            assert_eq!(value(id).split('.').count(), 3);
        }
        let auth = value("authorization");
        match &route.cockpit {
            Some(cockpit) if !auth.is_empty() => {
                assert!(signed_in && cockpit.is_login(&fwd.method, &fwd.path));
                assert!(auth.starts_with("Basic "));
            }
            Some(_) => {}
            // Elsewhere only the client's own passes (no bearer in the fixture's config).
            None => assert_eq!(
                auth,
                fwd.headers
                    .get("authorization")
                    .map(String::as_str)
                    .unwrap_or("")
            ),
        }
    } else if let Some(location) = out.get("location") {
        let location = location.to_str().unwrap();
        let route = route.expect("a redirect for no route");
        let sign_in = format!("{}/.portcullis/sign_in?rd=", route.origin());
        assert!(location.starts_with(&sign_in), "redirect to {location:?}");
    }
    let body = f
        .runtime
        .block_on(http_body_util::BodyExt::collect(response.into_body()))
        .unwrap()
        .to_bytes();
    let body = String::from_utf8_lossy(&body);
    for (_, value) in f.cookie_values() {
        assert!(!body.contains(value), "an answer echoes a session cookie");
    }
});

fn check_parsed(headers: &HeaderMap, fwd: &portcullis::forward_auth::Forwarded) {
    let one = |a: &str, b: Option<&str>| -> String {
        let values: Vec<&str> = [Some(a), b]
            .into_iter()
            .flatten()
            .flat_map(|n| headers.get_all(n).iter())
            .map(|v| v.to_str().unwrap().trim())
            .collect();
        assert!(!values.is_empty(), "decided without {a}");
        assert!(values.iter().all(|v| *v == values[0]), "{a}: {values:?}");
        for n in [Some(a), b].into_iter().flatten() {
            assert!(headers.get_all(n).iter().count() <= 1, "{n} repeated");
        }
        values[0].to_string()
    };
    let method = one("x-forwarded-method", Some("x-original-method"));
    assert_eq!(fwd.method, method);
    assert!(!method.is_empty() && method.len() <= 32);
    assert!(
        method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    );
    assert_eq!(
        fwd.scheme,
        one("x-forwarded-proto", None).to_ascii_lowercase()
    );
    assert!(fwd.scheme == "http" || fwd.scheme == "https");
    assert_eq!(
        fwd.authority,
        one("x-forwarded-host", None).to_ascii_lowercase()
    );
    assert!(!fwd.authority.is_empty() && !fwd.authority.contains([',', '/', '@', ' ']));
    let uri = one("x-forwarded-uri", Some("x-original-uri"));
    assert_eq!(fwd.path, uri);
    assert!(uri.starts_with('/') && uri.bytes().all(|b| b.is_ascii_graphic() && b != b'#'));
    let path = uri.split('?').next().unwrap().to_ascii_lowercase();
    assert!(!path.contains("%2f") && !path.contains("%5c") && !path.contains('\\'));
    let decoded = path.replace("%2e", ".");
    let segments: Vec<&str> = decoded.split('/').collect();
    for (i, s) in segments.iter().enumerate() {
        assert!(*s != "." && *s != "..", "a dot segment in {uri:?}");
        assert!(
            !s.is_empty() || i == 0 || i == segments.len() - 1,
            "an empty segment in {uri:?}"
        );
    }
}
