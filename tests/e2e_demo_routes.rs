//! The demo's paths on `app.localhost`, on the real stack: the public path (`/public/`, for
//! anyone) and the prefix route with a stricter policy (`/ops/`, group `admins`) next to the
//! app's own route (any signed-in user). The routes are read from
//! `examples/demo/portcullis.yaml`, so the demo and this test cannot drift apart.
//!
//! Tier `stack`.

use reqwest::StatusCode;
use testkit::{EchoRequest, Stack, list, send};

const IDENTITY_HEADER: &str = "x-portcullis-jwt-assertion";

/// The demo's routes on `app.localhost` that have a path: (name, path, policy as JSON,
/// which is YAML too).
fn demo_path_routes() -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(testkit::repo().join("examples/demo/portcullis.yaml"))
        .expect("the demo config");
    let config: serde_json::Value =
        serde_yaml_ng::from_str(&text).expect("the demo config is YAML");
    config["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .filter_map(|r| {
            let from = r["from"].as_str()?;
            let path = from.strip_prefix("https://app.localhost:8443")?;
            (!path.is_empty() && path != "/").then(|| {
                (
                    r["name"].as_str().expect("a name").to_string(),
                    path.to_string(),
                    r["policy"].to_string(),
                )
            })
        })
        .collect()
}

async fn echoed(response: reqwest::Response) -> EchoRequest {
    let body = response.text().await.unwrap();
    EchoRequest::from_json(&serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}")))
}

#[test]
fn the_demo_has_the_public_path_and_the_ops_route() {
    let routes = demo_path_routes();
    let find = |name: &str| {
        routes
            .iter()
            .find(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("no route {name} on app.localhost in the demo: {routes:?}"))
    };
    assert_eq!(find("public").1, "/public");
    assert_eq!(find("public").2, r#"{"public":true}"#);
    assert_eq!(find("ops").1, "/ops");
    assert_eq!(find("ops").2, r#"{"groups":["admins"]}"#);
}

#[tokio::test]
#[ignore = "tier stack: needs Envoy and the dev IdP (node, examples/demo/node_modules); run scripts/test"]
async fn alice_reaches_ops_bob_does_not_and_anyone_reaches_public() {
    let mut builder = Stack::builder();
    for (name, path, policy) in demo_path_routes() {
        builder = builder
            .route(&name, "app", &policy)
            .route_path(&name, &path);
    }
    let stack = builder.start().await;
    let app = stack.authority("app");

    // Anyone reaches /public/, and the app sees no identity.
    let anonymous = stack.browser();
    let response = send(anonymous.get(&stack.url("app", "/public/page"))).await;
    assert_eq!(response.status(), StatusCode::OK);
    let seen = echoed(response).await;
    assert_eq!(seen.path, "/public/page");
    assert_eq!(seen.header(IDENTITY_HEADER), None);
    // /ops/ and the rest of the app want a sign-in first; the app is not called.
    let calls = stack.echo_requests().len();
    for path in ["/ops/", "/", "/publicity"] {
        let response = send(anonymous.get(&stack.url("app", path))).await;
        assert_eq!(response.status(), StatusCode::FOUND, "{path}");
    }
    assert_eq!(stack.echo_requests().len(), calls);

    // alice (admins) reaches /ops/, with a JWT for that route (its audience has the prefix).
    let alice = stack.browser();
    let (response, visited) = alice
        .login(&stack.url("app", "/ops/deploy"), "alice", "alice")
        .await;
    assert_eq!(response.status(), StatusCode::OK, "{}", list(&visited));
    let seen = echoed(response).await;
    assert_eq!(seen.path, "/ops/deploy");
    let jwt = seen.header(IDENTITY_HEADER).expect("the identity JWT");
    let verified = stack.verify_jwt(jwt, &format!("{app}/ops")).await;
    assert_eq!(verified["payload"]["email"], "alice@example.com");
    assert!(
        !stack.jwt_verifies(jwt, &app).await,
        "the /ops token is not the app's"
    );

    // bob (no groups) is signed in on the app, and refused on /ops/ in every spelling an
    // upstream reads as /ops/; the app is never called for those.
    let bob = stack.browser();
    let (response, visited) = bob.login(&stack.url("app", "/"), "bob", "bob").await;
    assert_eq!(response.status(), StatusCode::OK, "{}", list(&visited));
    let calls = stack.echo_requests().len();
    for path in ["/ops/", "/ops/deploy", "/OPS/deploy", "/%6Fps/deploy"] {
        let status = send(bob.get(&stack.url("app", path))).await.status();
        assert_eq!(status, StatusCode::FORBIDDEN, "bob on {path}");
    }
    for path in ["/ops;x/deploy", "/ops./deploy"] {
        let status = send(bob.get(&stack.url("app", path))).await.status();
        assert!(
            status == StatusCode::FORBIDDEN || status == StatusCode::BAD_REQUEST,
            "bob on {path}: {status}"
        );
    }
    assert_eq!(
        stack.echo_requests().len(),
        calls,
        "the app was called for bob"
    );
    // bob still reaches /public/ (with his identity) and the rest of the app.
    let seen = echoed(send(bob.get(&stack.url("app", "/public/"))).await).await;
    let jwt = seen
        .header(IDENTITY_HEADER)
        .expect("a signed-in user's JWT");
    let verified = stack.verify_jwt(jwt, &format!("{app}/public")).await;
    assert_eq!(verified["payload"]["email"], "bob@example.com");
    let response = send(bob.get(&stack.url("app", "/other"))).await;
    assert_eq!(response.status(), StatusCode::OK);
}
