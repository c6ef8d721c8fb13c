//! Envoy's `CheckRequest` through the gRPC `Check` (conversion, decision, answer), as raw
//! protobuf (first byte 0) or as fields the fuzzer shapes directly (`0xff`-separated: host,
//! method, path, scheme, route hint, cookie, authorization, accept, identity header, a
//! header name and value). In the cookie, `{app}`, `{admin}`, `{apps}`, `{cockpit}`,
//! `{public}` and `{auth}` stand for alice's real session cookie on that host.
//!
//! Invariants:
//! - only a request with the host, path and method Envoy must have sent is answered at all
//!   (else `INVALID_ARGUMENT`, which keeps the door shut);
//! - an allowed request is on the route `select` names, and on a non-public route it
//!   carries the fixture's real cookie for that route's host;
//! - what goes upstream never carries a cookie of ours, always has the identity header
//!   replaced or removed, and on a Cockpit route has `authorization` replaced or removed,
//!   with credentials only on the signed-in login request; no other header is touched;
//! - a denial is never a 500 (the fixture's Cockpit host is short enough for any token),
//!   redirects only to the auth host's sign-in, sets no cookie but the hop nonce, and
//!   echoes no session cookie.

#![no_main]

use std::collections::HashMap;

use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, HeaderValue, HttpResponse,
};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, attribute_context};
use libfuzzer_sys::fuzz_target;
use portcullis::ext_authz::AuthzService;
use portcullis_fuzz::{HOSTS, fields, fixture};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let request = match data.split_first() {
        Some((0, raw)) => match CheckRequest::decode(raw) {
            Ok(r) => r,
            Err(_) => return,
        },
        _ => structured(data.get(1..).unwrap_or_default()),
    };
    let service = AuthzService::new(f.app.clone());
    let result = f
        .runtime
        .block_on(service.check(tonic::Request::new(request.clone())));
    let http = request
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref());
    match (result, http) {
        (Ok(response), Some(http)) => {
            assert!(!http.host.is_empty() && !http.path.is_empty());
            let hint = request
                .attributes
                .as_ref()
                .and_then(|a| a.context_extensions.get("route"));
            check(&response.into_inner(), http, hint.map(String::as_str));
        }
        (Ok(_), None) => panic!("answered a request without attributes.request.http"),
        (Err(status), http) => {
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
            assert!(http.is_none_or(|h| h.host.is_empty() || h.path.is_empty()));
        }
    }
});

fn check(response: &CheckResponse, http: &attribute_context::HttpRequest, hint: Option<&str>) {
    let f = fixture();
    let app = &f.app;
    let ok = response.status.as_ref().is_some_and(|s| s.code == 0);
    let scheme = if http.scheme.is_empty() {
        "https"
    } else {
        &http.scheme
    };
    let cookie = http.headers.get("cookie").map(String::as_str).unwrap_or("");
    let route = app
        .routes()
        .select(hint, scheme, &http.host, &http.path)
        .ok();
    let real_cookie_for = |authority: &str| {
        f.cookie_values()
            .any(|(h, v)| h == authority && cookie.contains(v))
    };
    match &response.http_response {
        Some(HttpResponse::OkResponse(edits)) => {
            assert!(ok, "an OkResponse without an OK status");
            let route = route.expect("allowed on no route");
            let signed_in = real_cookie_for(&route.authority);
            assert!(
                route.name == "public" || signed_in,
                "allowed on {} without its session cookie",
                route.name
            );
            let set: HashMap<&str, &str> = edits
                .headers
                .iter()
                .filter_map(|o| o.header.as_ref())
                .map(|HeaderValue { key, value, .. }| (key.as_str(), value.as_str()))
                .collect();
            let removed = |name: &str| edits.headers_to_remove.iter().any(|r| r == name);
            let mut touched: Vec<&str> = set.keys().copied().collect();
            touched.extend(edits.headers_to_remove.iter().map(String::as_str));
            for name in touched {
                assert!(
                    [app.authorizer.identity_header(), "cookie", "authorization"].contains(&name),
                    "touched {name:?}"
                );
            }

            // The Cookie header the upstream sees.
            let upstream = match set.get("cookie") {
                Some(v) => v,
                None if removed("cookie") => "",
                None => cookie,
            };
            // No cookie of ours by name, and no real session cookie as a browser sends it.
            // (A value glued to other text, `x{app}`, is not a cookie a browser sends: only
            // someone who already holds the value could make that header.)
            for part in upstream.split([';', ',']) {
                let name = part.split_once('=').map_or(part, |(k, _)| k).trim();
                assert!(!app.cookies().is_ours(name), "{name:?} went upstream");
                assert!(
                    !f.cookies.iter().any(|(_, c)| c == part.trim()),
                    "a session cookie went upstream"
                );
            }

            // The identity header: ours (signed in) or removed, never the client's.
            let id = app.authorizer.identity_header();
            match set.get(id) {
                Some(jwt) => {
                    assert!(signed_in, "an identity JWT without a session");
                    assert_ne!(Some(*jwt), http.headers.get(id).map(String::as_str));
                    assert_eq!(jwt.split('.').count(), 3, "not a JWT: {jwt:?}");
                }
                None => assert!(removed(id), "the client's identity header went upstream"),
            }

            // Cockpit: credentials on the signed-in login request only, never the client's.
            match set.get("authorization") {
                Some(basic) => {
                    let cockpit = route.cockpit.as_ref().expect("credentials off Cockpit");
                    assert!(signed_in && cockpit.is_login(&http.method, &http.path));
                    assert!(http.method == "GET", "credentials on {}", http.method);
                    assert!(basic.starts_with("Basic "));
                }
                None if route.cockpit.is_some() => {
                    assert!(
                        removed("authorization"),
                        "the client's authorization passed"
                    )
                }
                None => assert!(!removed("authorization")),
            }
        }
        Some(HttpResponse::DeniedResponse(denied)) => {
            assert!(!ok, "a DeniedResponse with an OK status");
            let status = denied.status.as_ref().map(|s| s.code).unwrap_or(0);
            assert!(
                [302, 400, 401, 403, 404].contains(&status),
                "answered {status}: {}",
                denied.body
            );
            for h in denied.headers.iter().filter_map(|o| o.header.as_ref()) {
                match h.key.as_str() {
                    "location" => {
                        let sign_in = format!("{}.portcullis/sign_in?", app.urls.auth);
                        assert!(h.value.starts_with(&sign_in), "redirect to {:?}", h.value);
                    }
                    "set-cookie" => {
                        let (name, value) = h.value.split_once('=').unwrap();
                        assert_eq!(name, app.cookies().hop_name(), "{}", h.value);
                        assert!(!value.starts_with(';'), "an empty hop nonce");
                    }
                    "content-type" | "cache-control" => {}
                    other => panic!("a denial sets {other:?}"),
                }
            }
            for (_, value) in f.cookie_values() {
                assert!(
                    !denied.body.contains(value),
                    "a denial echoes a session cookie"
                );
            }
        }
        other => panic!("no HTTP response: {other:?}"),
    }
}

fn structured(data: &[u8]) -> CheckRequest {
    let f = fixture();
    let v = fields(data, 11);
    let mut cookie = v[5].clone();
    for ((_, c), name) in f
        .cookies
        .iter()
        .zip(HOSTS.map(|h| h.split('.').next().unwrap()))
    {
        cookie = cookie.replace(&format!("{{{name}}}"), c);
    }
    let mut headers = HashMap::new();
    for (name, value) in [
        ("cookie", cookie),
        ("authorization", v[6].clone()),
        ("accept", v[7].clone()),
        (f.app.authorizer.identity_header(), v[8].clone()),
        (v[9].to_ascii_lowercase().as_str(), v[10].clone()),
    ] {
        if !value.is_empty() {
            headers.insert(name.to_string(), value);
        }
    }
    let http = attribute_context::HttpRequest {
        host: v[0].clone(),
        method: v[1].clone(),
        path: v[2].clone(),
        scheme: v[3].clone(),
        headers,
        ..Default::default()
    };
    let mut context_extensions = HashMap::new();
    if !v[4].is_empty() {
        context_extensions.insert("route".to_string(), v[4].clone());
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(http),
                ..Default::default()
            }),
            context_extensions,
            ..Default::default()
        }),
    }
}
