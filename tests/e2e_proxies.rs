//! nginx and Caddy in front instead of Envoy, end to end: Debian's nginx 1.22
//! (`auth_request`) and Caddy 2.6 (`forward_auth`) run `examples/nginx/` and
//! `examples/caddy/` as written (addresses, ports and certificate paths aside), ask
//! portcullis's forward-auth listener, and proxy to the echo app and to the real cockpit-ws.
//!
//! Tier `proxies` (nginx, caddy, Envoy's tier's IdP and node parts); the Cockpit cases are
//! tier `cockpit` (root, cockpit-ws) and edit `/etc/pam.d/cockpit` under the Cockpit lock,
//! undoing it on the way out.

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, COOKIE};
use testkit::cockpit::{OneCockpit, open_socket};
use testkit::{EchoRequest, Front, Stack, list, send};

const SESSION_COOKIE: &str = "__Host-_portcullis";
const IDENTITY_HEADER: &str = "x-portcullis-jwt-assertion";

async fn stack(front: Front) -> Stack {
    Stack::builder().front(front).start().await
}

/// The echo app's view of the last request it got.
fn last_echo(stack: &Stack) -> EchoRequest {
    stack
        .echo_requests()
        .pop()
        .expect("the echo app was called")
}

/// alice signs in through the proxy and the app gets an identity JWT that jose verifies;
/// bob is refused on the admin host and the app is never called; a signed-out browser is
/// sent to the route host's sign-in; our cookie, a client's identity header and forged
/// forwarding headers never get through.
async fn sign_in_and_refusals(front: Front) {
    let stack = stack(front).await;
    let name = front.name();

    // A browser with no session: the proxy sends it to the route host's own sign-in.
    let anonymous = stack.browser();
    let first = send(anonymous.get(&stack.url("app", "/x?y=1"))).await;
    assert_eq!(first.status(), StatusCode::FOUND, "{name}");
    let location = testkit::location(&first).expect("a redirect");
    assert_eq!(
        location.as_str(),
        stack.url(
            "app",
            &format!(
                "/.portcullis/sign_in?rd={}",
                url::form_urlencoded::byte_serialize(stack.url("app", "/x?y=1").as_bytes())
                    .collect::<String>()
            )
        ),
        "{name}"
    );
    // An API client gets a 401 instead.
    let api = send(
        anonymous
            .get(&stack.url("app", "/api"))
            .header(ACCEPT, "application/json"),
    )
    .await;
    assert_eq!(api.status(), StatusCode::UNAUTHORIZED, "{name}");
    assert!(
        stack.echo_requests().is_empty(),
        "{name}: the app was called"
    );

    // alice signs in; the app sees her, through a JWT an independent library verifies.
    let alice = stack.browser();
    let (response, visited) = alice
        .login(&stack.url("app", "/hello"), "alice", "alice")
        .await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "{name}: alice did not reach the app:\n{}",
        list(&visited)
    );
    assert!(
        visited
            .iter()
            .any(|u| u.path() == "/.portcullis/sign_in" && u.host_str() == Some("app.localhost")),
        "{name}: the sign-in went through the route host:\n{}",
        list(&visited)
    );
    let seen = last_echo(&stack);
    assert_eq!(seen.path, "/hello", "{name}");
    let jwt = seen.header(IDENTITY_HEADER).expect("the identity JWT");
    let verified = stack.verify_jwt(jwt, &stack.authority("app")).await;
    assert_eq!(verified["payload"]["email"], "alice@example.com", "{name}");
    assert_eq!(verified["payload"]["iss"], stack.origin("auth"), "{name}");

    // Her cookie, in both forms a client can send it, never reaches the app; the app's own
    // does. A client's identity header is replaced by ours.
    let session = alice
        .cookie(&stack.url("app", "/"), SESSION_COOKIE)
        .expect("a session cookie on the app host");
    let forged = "eyJhbGciOiJub25lIn0.eyJlbWFpbCI6ImJvYkBleGFtcGxlLmNvbSJ9.";
    for cookies in [
        vec![format!("theme=dark; {SESSION_COOKIE}={session}")],
        vec![
            "theme=dark".to_string(),
            format!("{SESSION_COOKIE}={session}"),
        ],
    ] {
        let client = stack.browser();
        let mut request = client
            .get(&stack.url("app", "/cookies"))
            .header(IDENTITY_HEADER, forged);
        for c in &cookies {
            request = request.header(COOKIE, c);
        }
        let response = send(request).await;
        assert_eq!(response.status(), StatusCode::OK, "{name} {cookies:?}");
        let seen = last_echo(&stack);
        let cookie = seen.header("cookie").unwrap_or_default();
        assert!(
            !cookie.contains("_portcullis") && !cookie.contains(&session),
            "{name}: our cookie reached the app: {cookie:?}"
        );
        assert!(cookie.contains("theme=dark"), "{name}: {cookie:?}");
        let jwt = seen.header(IDENTITY_HEADER).unwrap();
        assert_ne!(jwt, forged, "{name}");
        assert!(stack.jwt_verifies(jwt, &stack.authority("app")).await);
    }
    // Anonymous on a host whose policy needs a session: a forged identity header does not
    // help either.
    let before = stack.echo_requests().len();
    let forged_only = send(
        stack
            .browser()
            .get(&stack.url("app", "/"))
            .header(IDENTITY_HEADER, forged),
    )
    .await;
    assert_eq!(forged_only.status(), StatusCode::FOUND, "{name}");
    assert_eq!(stack.echo_requests().len(), before, "{name}");

    // bob is refused on the admin host, and the app is never called, whatever forwarding
    // headers he adds to describe another request.
    let bob = stack.browser();
    let (response, visited) = bob.login(&stack.url("app", "/"), "bob", "bob").await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "{name}:\n{}",
        list(&visited)
    );
    let before = stack.echo_requests().len();
    // The admin host has no session of bob's yet: the hop brings it, then the refusal.
    let (refused, visited) = bob.follow(&stack.url("admin", "/")).await;
    assert_eq!(
        refused.status(),
        StatusCode::FORBIDDEN,
        "{name}:\n{}",
        list(&visited)
    );
    for (header, value) in [
        ("x-forwarded-host", stack.authority("app")),
        ("x-forwarded-uri", "/".to_string()),
        ("x-original-uri", "/".to_string()),
        ("x-original-method", "OPTIONS".to_string()),
        ("x-forwarded-method", "OPTIONS".to_string()),
        ("x-forwarded-proto", "http".to_string()),
    ] {
        let response = send(
            bob.get(&stack.url("admin", "/secret"))
                .header(header, &value),
        )
        .await;
        assert!(
            !response.status().is_success(),
            "{name}: bob got in with {header}: {value}"
        );
    }
    // A path that an upstream could read as another is not decided at all.
    let client = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&stack.certs.ca).unwrap()).unwrap(),
        )
        .resolve(
            "app.localhost",
            std::net::SocketAddr::from(([127, 0, 0, 1], stack.ports.envoy)),
        )
        .build()
        .unwrap();
    let dotted = format!("{}/a/%2e%2e/b", stack.origin("app"));
    let response = send(client.get(&dotted)).await;
    assert!(
        !response.status().is_success(),
        "{name}: {dotted}: {}",
        response.status()
    );
    assert_eq!(
        stack.echo_requests().len(),
        before,
        "{name}: the app was called for bob"
    );

    // An Authorization the app uses itself passes as it came.
    let response = send(
        alice
            .get(&stack.url("app", "/basic"))
            .header(AUTHORIZATION, "Basic YXBwOmFwcA=="),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        last_echo(&stack).header("authorization"),
        Some("Basic YXBwOmFwcA=="),
        "{name}"
    );

    // What a removal looks like upstream: no header (nginx), or an empty one (Caddy 2.6
    // sets what it copies; an answer without the header would have it send the
    // placeholder's own text).
    for request in stack.echo_requests() {
        for (header, value) in &request.headers {
            assert!(
                !value.contains("{http."),
                "{name}: {header}: {value} reached the app"
            );
        }
        if request.path != "/basic" {
            let removed = match front {
                Front::Nginx => None,
                _ => Some(""),
            };
            assert_eq!(
                request.header("authorization"),
                removed,
                "{name}: {}",
                request.path
            );
        }
        assert!(
            !request.header(IDENTITY_HEADER).unwrap_or("").is_empty(),
            "{name}: every request the app got was signed in"
        );
    }
}

#[tokio::test]
#[ignore = "tier proxies: needs Debian's nginx, Envoy's tier's IdP and node; run scripts/test"]
async fn nginx_signs_alice_in_and_refuses_bob() {
    sign_in_and_refusals(Front::Nginx).await;
}

#[tokio::test]
#[ignore = "tier proxies: needs Debian's caddy, Envoy's tier's IdP and node; run scripts/test"]
async fn caddy_signs_alice_in_and_refuses_bob() {
    sign_in_and_refusals(Front::Caddy).await;
}

/// Cockpit behind the proxy: alice's login request carries the credential, Cockpit's PAM
/// stack accepts it, and the WebSocket upgrades through the proxy and runs as alice.
async fn cockpit_through(front: Front) {
    let one = OneCockpit::start(
        front,
        "cockpit: { accounts: { alice@example.com: alice } }",
        false,
    )
    .await;
    let name = front.name();
    let cookies = one.log_in("alice").await;
    let socket = one.socket_url();
    let origin = one.stack.origin("cockpit");
    let report = open_socket(&socket, &cookies, &origin);
    eprintln!("{name}: cockpit socket: {report}");
    assert_eq!(
        report["status"],
        101,
        "{name}: {report}\n{}",
        one.cockpit.log_tail()
    );
    assert_eq!(report["whoami"], "alice", "{name}: {report}");
    assert_eq!(report["user"]["Name"], "alice", "{name}: {report}");
    // Without the portcullis session, the socket is refused before Cockpit.
    let only_cockpit: String = cookies
        .split("; ")
        .filter(|c| c.starts_with("cockpit="))
        .collect();
    let report = open_socket(&socket, &only_cockpit, &origin);
    assert_ne!(report["status"], 101, "{name}: {report}");
}

#[tokio::test]
#[ignore = "tier cockpit: needs root, cockpit-ws, nginx, Envoy's tier's IdP and node; run scripts/test as root"]
async fn cockpit_through_nginx_upgrades_and_runs_as_alice() {
    cockpit_through(Front::Nginx).await;
}

#[tokio::test]
#[ignore = "tier cockpit: needs root, cockpit-ws, caddy, Envoy's tier's IdP and node; run scripts/test as root"]
async fn cockpit_through_caddy_upgrades_and_runs_as_alice() {
    cockpit_through(Front::Caddy).await;
}
