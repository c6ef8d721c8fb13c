//! A request to the HTTP edge (sign-in, callbacks, hop, sign-out, user pages, JWKS), driven
//! through `web::router` with `oneshot`, as `0xff`-separated fields: method, Host, URI,
//! cookie, Origin, Sec-Fetch-Site, a header name and value, body. In the cookie, `{app}`,
//! `{admin}`, `{apps}`, `{cockpit}`, `{public}` and `{auth}` stand for alice's real session
//! cookie on that host.
//!
//! The IdP is the in-memory fake, ready at once, so the auth host's sign-in start and the
//! callback are reached too.
//!
//! Invariants: no answer is a 500; nothing the fuzzer can write makes the edge issue a
//! session or ID-token cookie (that takes a code from the IdP, a sealed state or a hop,
//! none of which it can forge), and the only cookies it may set with a value are the hop
//! nonce and, when a sign-in starts at the auth host, its sealed CSRF cookie; every
//! redirect goes to one of our own hosts or to the IdP's authorization or logout endpoint;
//! no body echoes a session cookie; every answer carries the anti-framing headers.

#![no_main]

use std::sync::OnceLock;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, header};
use libfuzzer_sys::fuzz_target;
use portcullis::core::authority_of;
use portcullis::testing::FAKE_IDP_AUTHORIZE;
use portcullis_fuzz::{HOSTS, fields, fixture};
use tower::ServiceExt;

fn router() -> Router {
    static ROUTER: OnceLock<Router> = OnceLock::new();
    ROUTER
        .get_or_init(|| portcullis::web::router(fixture().app.clone()))
        .clone()
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let v = fields(data, 9);
    let mut cookie = v[3].clone();
    for ((_, c), name) in f
        .cookies
        .iter()
        .zip(HOSTS.map(|h| h.split('.').next().unwrap()))
    {
        cookie = cookie.replace(&format!("{{{name}}}"), c);
    }
    let mut builder = Request::builder().method(v[0].as_str()).uri(v[2].as_str());
    for (name, value) in [
        (header::HOST.as_str(), v[1].as_str()),
        (header::COOKIE.as_str(), cookie.as_str()),
        (header::ORIGIN.as_str(), v[4].as_str()),
        ("sec-fetch-site", v[5].as_str()),
        (v[6].as_str(), v[7].as_str()),
    ] {
        if !value.is_empty() {
            builder = builder.header(name, value);
        }
    }
    let Ok(request) = builder.body(Body::from(v[8].clone())) else {
        return; // hyper refuses this before any handler runs
    };
    // A fuzzed sign-out may have ended the session; every input starts signed in.
    f.restore_session();
    let response = f
        .runtime
        .block_on(router().oneshot(request))
        .expect("the router is infallible");
    let status = response.status().as_u16();
    assert!(status < 500 || status == 503, "answered {status} to {v:?}");
    let headers = response.headers();
    assert_eq!(headers.get(header::X_FRAME_OPTIONS).unwrap(), "DENY");

    let codec = &f.app.cookies();
    for set in headers.get_all(header::SET_COOKIE) {
        let set = set.to_str().unwrap();
        let (name, rest) = set.split_once('=').unwrap();
        let value = rest.split(';').next().unwrap();
        assert!(codec.is_ours(name), "set someone else's cookie: {set:?}");
        let sign_in_start = name == codec.csrf_name() && status == 303;
        assert!(
            value.is_empty() || name == codec.hop_name() || sign_in_start,
            "issued {name} for {v:?}"
        );
        if name == codec.hop_name() && !value.is_empty() {
            assert!(value.len() == 22, "a hop nonce of {} bytes", value.len());
        }
    }
    if let Some(location) = headers.get(header::LOCATION) {
        let location = location.to_str().unwrap();
        let url = url::Url::parse(location).expect("redirects are absolute");
        let authority = authority_of(&url);
        let idp = location.starts_with(FAKE_IDP_AUTHORIZE)
            || location.starts_with("https://idp.test/logout");
        assert!(
            idp || (matches!(url.scheme(), "http" | "https")
                && HOSTS.contains(&authority.as_str())),
            "redirected off our hosts to {location:?}"
        );
    }
    let body = f
        .runtime
        .block_on(http_body_util::BodyExt::collect(response.into_body()))
        .unwrap()
        .to_bytes();
    let body = String::from_utf8_lossy(&body);
    for (_, value) in f.cookie_values() {
        assert!(!body.contains(value), "a page echoes a session cookie");
    }
});
