//! The admin API over a real socket on port 0, with the generated client: the bearer
//! token, listing, and revocation by user and by session, through `server::serve`.

use std::time::Duration;

use tonic::metadata::MetadataValue;

use super::proto::sessions_client::SessionsClient;
use super::*;
use crate::config::ServerConfig;
use crate::server::{Stopping, bind, serve};
use crate::session::SessionStore;
use crate::testing::{CONFIG, TestApp, user};

struct Running {
    t: TestApp,
    admin: String,
    grpc: String,
    stop: tokio::sync::oneshot::Sender<()>,
}

/// The app served on port 0 with the admin listener (its token: the fixture's cookie
/// secret file, 32 bytes).
async fn start() -> Running {
    let t = TestApp::new(&format!("{CONFIG}admin: {{ token_file: cookie }}\n"));
    let any = "127.0.0.1:0".parse().unwrap();
    let listeners = bind(&ServerConfig {
        grpc_address: any,
        http_address: any,
        jwks_address: None,
        metrics_address: None,
        admin_address: Some(any),
        forward_auth_address: None,
        shutdown_grace: Duration::from_secs(2),
        drain_delay: Duration::ZERO,
    })
    .await
    .unwrap();
    let admin = format!(
        "http://{}",
        listeners.admin.as_ref().unwrap().local_addr().unwrap()
    );
    let grpc = format!("http://{}", listeners.grpc.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(
        crate::app::Live::new(t.app.clone()),
        listeners,
        Stopping {
            drain_delay: Duration::ZERO,
            grace: Duration::from_secs(2),
        },
        async move {
            let _ = stopped.await;
        },
    ));
    Running {
        t,
        admin,
        grpc,
        stop,
    }
}

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {token}")).unwrap(),
    );
    r
}

#[tokio::test]
async fn sessions_are_listed_and_revoked_by_user_and_by_id_with_the_token_only() {
    let r = start().await;
    let a1 = r.t.session(user("alice@example.com", &["admins"])).await;
    let a2 = r.t.session(user("alice@example.com", &[])).await;
    let b = r.t.session(user("bob@example.com", &[])).await;
    let mut client = SessionsClient::connect(r.admin.clone()).await.unwrap();

    for (what, req) in [
        ("no token", tonic::Request::new(ListRequest::default())),
        (
            "wrong token",
            authed(ListRequest::default(), "0123456789abcdef0123456789abcdeX"),
        ),
        (
            "a prefix of it",
            authed(ListRequest::default(), &TOKEN[..16]),
        ),
    ] {
        let e = client.list(req).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{what}");
    }

    let all = client
        .list(authed(ListRequest::default(), TOKEN))
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert_eq!(all.len(), 3);
    let alice = client
        .list(authed(
            ListRequest {
                user: "ALICE@example.com".into(),
            },
            TOKEN,
        ))
        .await
        .unwrap()
        .into_inner()
        .sessions;
    let mut ids: Vec<String> = alice.iter().map(|s| s.id.clone()).collect();
    ids.sort();
    let mut want = vec![a1.public_id(), a2.public_id()];
    want.sort();
    assert_eq!(ids, want);
    assert_eq!(alice[0].email, "alice@example.com");
    // Nothing secret: the listing never carries a session id as the cookie holds it.
    let printed = format!("{all:?}");
    for s in [&a1, &a2, &b] {
        assert!(!printed.contains(&s.id.encode()));
    }

    let revoked = client
        .revoke(authed(
            RevokeRequest {
                target: Some(Target::User("alice".into())),
            },
            TOKEN,
        ))
        .await
        .unwrap()
        .into_inner()
        .revoked;
    assert_eq!(revoked.len(), 2);
    let now = r.t.app.now();
    assert!(r.t.store.get(&a1.id, now).await.unwrap().is_none());
    assert!(r.t.store.get(&b.id, now).await.unwrap().is_some());

    let revoked = client
        .revoke(authed(
            RevokeRequest {
                target: Some(Target::Session(b.public_id())),
            },
            TOKEN,
        ))
        .await
        .unwrap()
        .into_inner()
        .revoked;
    assert_eq!(revoked, vec![b.public_id()]);
    assert!(r.t.store.get(&b.id, now).await.unwrap().is_none());

    for target in [None, Some(Target::User(" ".into()))] {
        let e = client
            .revoke(authed(RevokeRequest { target }, TOKEN))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }
    assert_eq!(r.t.app.metrics.sessions_revoked.get(), 3);
    let _ = r.stop.send(());
}

#[tokio::test]
async fn the_ext_authz_listener_answers_grpc_health() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let r = start().await;
    let channel = tonic::transport::Channel::from_shared(r.grpc.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "envoy.service.auth.v3.Authorization"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, 1, "{service:?} SERVING");
    }
    let _ = r.stop.send(());
}
