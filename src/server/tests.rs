//! The `bind`/`serve` seam: real sockets on port 0, an app with a fake IdP, and a shutdown
//! future the test resolves.

use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};

use super::*;
use crate::testing::{CONFIG, TestApp};

fn port_zero() -> ServerConfig {
    let any = "127.0.0.1:0".parse().unwrap();
    ServerConfig {
        grpc_address: any,
        http_address: any,
        jwks_address: Some(any),
        metrics_address: Some(any),
        admin_address: Some(any),
        forward_auth_address: Some(any),
        shutdown_grace: Duration::from_secs(5),
        drain_delay: Duration::ZERO,
    }
}

fn check_request(host: &str) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    scheme: "https".into(),
                    host: host.into(),
                    path: "/".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

#[tokio::test]
async fn every_listener_serves_until_shutdown_and_the_ready_file_names_them() {
    let t = TestApp::new(CONFIG);
    let listeners = bind(&port_zero()).await.unwrap();
    let dir = std::env::temp_dir().join(format!(
        "portcullis-ready-{}",
        crate::crypto::random_token(6)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let ready = dir.join("ready.json");
    listeners.write_ready_file(&ready).unwrap();
    let addrs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ready).unwrap()).unwrap();
    let addr = |k: &str| addrs[k].as_str().unwrap().to_string();
    assert!(!dir.join("ready.tmp").exists(), "written by rename");
    let _ = std::fs::remove_dir_all(&dir);

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        crate::app::Live::new(t.app.clone()),
        listeners,
        Stopping {
            drain_delay: Duration::ZERO,
            grace: Duration::from_secs(5),
        },
        async move {
            let _ = stopped.await;
        },
    ));

    let http = reqwest::Client::new();
    let get = |url: String| {
        let http = http.clone();
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    };
    assert_eq!(get(format!("http://{}/healthz", addr("http"))).await, "ok");
    let jwks = get(format!(
        "http://{}/.well-known/portcullis/jwks.json",
        addr("jwks")
    ))
    .await;
    assert!(jwks.contains("\"ES256\""), "{jwks}");
    let mut grpc = AuthorizationClient::connect(format!("http://{}", addr("grpc")))
        .await
        .unwrap();
    let answer = grpc
        .check(check_request("admin.localhost:8443"))
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        answer.http_response,
        Some(HttpResponse::DeniedResponse(ref d)) if d.status.as_ref().map(|s| s.code) == Some(401)
    ));
    let metrics = get(format!("http://{}/metrics", addr("metrics"))).await;
    assert!(
        metrics.contains(
            r#"portcullis_check_decisions_total{route="admin",outcome="sign_in_required"} 1"#
        ),
        "{metrics}"
    );
    // The metrics listener serves metrics only, not the sign-in pages.
    let page = http
        .get(format!("http://{}/.portcullis/sign_in", addr("metrics")))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), reqwest::StatusCode::NOT_FOUND);
    // The forward-auth listener decides like Check, and serves nothing else.
    let fwd = http
        .get(format!("http://{}/forward_auth", addr("forward_auth")))
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "admin.localhost:8443")
        .header("x-forwarded-uri", "/")
        .send()
        .await
        .unwrap();
    assert_eq!(fwd.status(), reqwest::StatusCode::UNAUTHORIZED);
    let page = http
        .get(format!(
            "http://{}/.portcullis/sign_in",
            addr("forward_auth")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), reqwest::StatusCode::NOT_FOUND);

    drop(grpc);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve returns once shut down")
        .unwrap()
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr("http")).await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test]
async fn a_taken_address_is_named_in_the_bind_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = port_zero();
    config.http_address = taken.local_addr().unwrap();
    let e = bind(&config).await.err().unwrap();
    assert!(
        e.to_string().starts_with("server.http_address 127.0.0.1:"),
        "{e}"
    );
}

#[tokio::test]
async fn on_shutdown_health_says_not_serving_while_checks_are_still_answered() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let t = TestApp::new(CONFIG);
    let mut config = port_zero();
    config.jwks_address = None;
    config.metrics_address = None;
    config.admin_address = None;
    let listeners = bind(&config).await.unwrap();
    let grpc = format!("http://{}", listeners.grpc.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        crate::app::Live::new(t.app.clone()),
        listeners,
        Stopping {
            drain_delay: Duration::from_millis(600),
            grace: Duration::from_secs(2),
        },
        async move {
            let _ = stopped.await;
        },
    ));
    let channel = tonic::transport::Channel::from_shared(grpc)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    let mut authz = AuthorizationClient::new(channel);
    let status = |h: &mut HealthClient<_>| {
        let mut h = h.clone();
        async move {
            h.check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .status
        }
    };
    assert_eq!(status(&mut health).await, 1, "SERVING");
    stop.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(status(&mut health).await, 2, "NOT_SERVING while draining");
    assert!(
        t.app.draining.load(std::sync::atomic::Ordering::SeqCst),
        "and /healthz answers 503"
    );
    let answer = authz
        .check(check_request("admin.localhost:8443"))
        .await
        .expect("still answering while draining");
    assert!(answer.into_inner().http_response.is_some());
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("stops after the drain")
        .unwrap()
        .unwrap();
}
