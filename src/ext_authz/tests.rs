//! The gRPC adaptor: both conversions as plain functions, and the service in process.

use std::collections::HashMap;

use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request as Attr};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use tonic::Code;

use super::*;
use crate::authorizer::{HeaderEdits, Response as Answer};
use crate::testing::{TestApp, user};

fn check_request(
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    route: Option<&str>,
) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Attr {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    scheme: "https".into(),
                    host: host.into(),
                    path: path.into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: route
                .map(|r| HashMap::from([("route".to_string(), r.to_string())]))
                .unwrap_or_default(),
            ..Default::default()
        }),
    }
}

#[test]
fn a_check_request_becomes_a_request() {
    let r = check_request(
        "app.localhost:8443",
        "/a?b",
        &[("cookie", "x=1")],
        Some("app"),
    );
    let req = to_request(&r).unwrap();
    assert_eq!(req.method, "GET");
    assert_eq!(req.scheme, "https");
    assert_eq!(req.authority, "app.localhost:8443");
    assert_eq!(req.path, "/a?b");
    assert_eq!(req.header("cookie"), Some("x=1"));
    assert_eq!(req.route_hint, Some("app"));

    // Envoy leaves the scheme empty for some listeners: https is assumed, never http.
    let mut r = check_request("app.localhost:8443", "/", &[], None);
    if let Some(http) = r
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
    {
        http.scheme.clear();
    }
    assert_eq!(to_request(&r).unwrap().scheme, "https");
    assert_eq!(to_request(&r).unwrap().route_hint, None);
}

#[test]
fn an_incomplete_check_request_is_invalid_argument() {
    let empty = CheckRequest::default();
    let no_http = CheckRequest {
        attributes: Some(AttributeContext::default()),
    };
    for (what, r) in [
        ("no attributes", empty),
        ("no http", no_http),
        ("no host", check_request("", "/", &[], None)),
        ("no path", check_request("app.localhost", "", &[], None)),
    ] {
        let e = to_request(&r).err().unwrap_or_else(|| panic!("{what}"));
        assert_eq!(e.code(), Code::InvalidArgument, "{what}");
    }
}

#[test]
fn a_forward_becomes_an_ok_response_that_overwrites_and_removes() {
    let response = to_check_response(Action::Forward(HeaderEdits {
        set: vec![
            ("x-id".into(), "jwt".into()),
            ("cookie".into(), "a=1".into()),
        ],
        remove: vec!["authorization".into()],
    }));
    assert_eq!(response.status.as_ref().map(|s| s.code), Some(0));
    let Some(HttpResponse::OkResponse(ok)) = response.http_response else {
        panic!("{response:?}")
    };
    let set: Vec<(String, String, i32)> = ok
        .headers
        .iter()
        .map(|h| {
            let hv = h.header.as_ref().unwrap();
            (hv.key.clone(), hv.value.clone(), h.append_action)
        })
        .collect();
    let overwrite = HeaderAppendAction::OverwriteIfExistsOrAdd as i32;
    assert_eq!(
        set,
        vec![
            ("x-id".into(), "jwt".into(), overwrite),
            ("cookie".into(), "a=1".into(), overwrite)
        ]
    );
    assert_eq!(ok.headers_to_remove, vec!["authorization".to_string()]);
}

#[test]
fn a_response_becomes_a_denied_response_with_its_status_headers_and_body() {
    for (status, want) in [(302, 302), (401, 401), (403, 403), (503, 503), (299, 403)] {
        let response = to_check_response(Action::Respond(Answer {
            status,
            headers: vec![("location", "https://x/".into())],
            body: "b".into(),
        }));
        assert_eq!(
            response.status.as_ref().map(|s| s.code),
            Some(Code::PermissionDenied as i32)
        );
        let Some(HttpResponse::DeniedResponse(denied)) = response.http_response else {
            panic!("{response:?}")
        };
        // A status Envoy does not know fails closed as 403.
        assert_eq!(denied.status.map(|s| s.code), Some(want), "{status}");
        assert_eq!(denied.body, "b");
        let h = denied.headers[0].header.as_ref().unwrap();
        assert_eq!(
            (h.key.as_str(), h.value.as_str()),
            ("location", "https://x/")
        );
    }
}

#[tokio::test]
async fn the_service_decides_and_counts_by_outcome() {
    let t = TestApp::new(crate::testing::CONFIG);
    let svc = AuthzService::new(t.app.clone());
    let s = t.session(user("alice@example.com", &[])).await;
    let cookie = t.cookie(&s, "app.localhost:8443");
    let allowed = svc
        .check(tonic::Request::new(check_request(
            "app.localhost:8443",
            "/",
            &[("cookie", &cookie)],
            Some("app"),
        )))
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        allowed.http_response,
        Some(HttpResponse::OkResponse(_))
    ));
    let refused = svc
        .check(tonic::Request::new(check_request(
            "admin.localhost:8443",
            "/",
            &[],
            Some("admin"),
        )))
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        refused.http_response,
        Some(HttpResponse::DeniedResponse(_))
    ));
    let err = svc
        .check(tonic::Request::new(CheckRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let metrics = t.app.metrics.encode();
    for line in [
        r#"portcullis_check_decisions_total{route="app",outcome="allow"} 1"#,
        r#"portcullis_check_decisions_total{route="admin",outcome="sign_in_required"} 1"#,
        "portcullis_check_duration_seconds_count 2",
        "portcullis_identity_tokens_signed_total 1",
    ] {
        assert!(metrics.contains(line), "{line} in:\n{metrics}");
    }
}
