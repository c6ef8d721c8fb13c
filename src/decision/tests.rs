use std::collections::HashMap;
use std::sync::Arc;

use super::*;
use crate::config::tests::{Fixture, VALID};
use crate::session::{MemoryStore, Session, SessionStore};

const BROWSER: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8";

struct Harness {
    app: App,
    _fixture: Fixture,
}

fn harness() -> Harness {
    let fixture = Fixture::new();
    let config = fixture.parse(VALID).unwrap();
    let app = App::new(
        config,
        Arc::new(MemoryStore::default()) as Arc<dyn SessionStore>,
    );
    Harness {
        app,
        _fixture: fixture,
    }
}

fn user(email: &str, groups: &[&str]) -> User {
    User {
        subject: email.split('@').next().unwrap().into(),
        email: Some(email.into()),
        email_verified: true,
        name: None,
        preferred_username: None,
        groups: groups.iter().map(|g| g.to_string()).collect(),
    }
}

impl Harness {
    /// Stores a session for `u` and returns the cookie header for `authority`.
    async fn sign_in(&self, u: User, authority: &str, now: u64) -> String {
        let s = Session::new(u, now, 3600);
        let set = self.app.cookies.issue(s.id, authority, s.expires_at, now);
        self.app.store.put(s).await.unwrap();
        set.split(';').next().unwrap().to_string()
    }

    async fn decide(
        &self,
        authority: &str,
        path: &str,
        headers: &[(&str, &str)],
        now: u64,
    ) -> Decision {
        let headers: HashMap<String, String> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let req = Request {
            method: "GET",
            scheme: "https",
            authority,
            path,
            headers: &headers,
            route_hint: None,
        };
        self.app.decide(&req, now).await
    }
}

const NOW: u64 = 1_800_000_000;

#[tokio::test]
async fn unauthenticated_browser_is_redirected_with_return_url() {
    let h = harness();
    let d = h
        .decide("app.localhost:8443", "/a?b=1", &[("accept", BROWSER)], NOW)
        .await;
    let Decision::Respond(r) = d else {
        panic!("{d:?}")
    };
    assert_eq!(r.status, 302);
    let loc = &r.headers.iter().find(|(k, _)| *k == "location").unwrap().1;
    // The hop will be bound to this browser: the nonce goes into a host-only cookie on the
    // route host, its hash along to the auth host.
    let cookie = &r
        .headers
        .iter()
        .find(|(k, _)| *k == "set-cookie")
        .unwrap()
        .1;
    let nonce = cookie
        .strip_prefix("__Host-_portcullis_hop=")
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("{cookie}"));
    assert!(
        cookie.contains("; Path=/;") && cookie.contains("Secure") && cookie.contains("HttpOnly")
    );
    assert_eq!(
        loc,
        &format!(
            "https://auth.localhost:8443/.portcullis/sign_in?rd=https%3A%2F%2Fapp.localhost%3A8443%2Fa%3Fb%3D1&hb={}",
            hop_binding(nonce)
        )
    );
    // A browser that already holds a nonce keeps it (two tabs signing in at once).
    let again = h
        .decide(
            "app.localhost:8443",
            "/",
            &[
                ("accept", BROWSER),
                ("cookie", &format!("__Host-_portcullis_hop={nonce}")),
            ],
            NOW,
        )
        .await;
    let Decision::Respond(r) = again else {
        panic!("{again:?}")
    };
    let cookie = &r
        .headers
        .iter()
        .find(|(k, _)| *k == "set-cookie")
        .unwrap()
        .1;
    assert!(
        cookie.starts_with(&format!("__Host-_portcullis_hop={nonce};")),
        "{cookie}"
    );
}

#[tokio::test]
async fn unauthenticated_non_browsers_get_401() {
    let h = harness();
    for headers in [
        vec![("accept", "application/json")],
        vec![("accept", "*/*")],
        vec![],
        vec![("accept", BROWSER), ("x-requested-with", "XMLHttpRequest")],
        vec![
            ("accept", BROWSER),
            ("upgrade", "websocket"),
            ("connection", "upgrade"),
        ],
        vec![("accept", BROWSER), ("content-type", "application/grpc")],
        vec![("accept", "text/html;q=0.5, application/json")],
    ] {
        let d = h.decide("app.localhost:8443", "/", &headers, NOW).await;
        let Decision::Respond(r) = d else {
            panic!("{d:?}")
        };
        assert_eq!(r.status, 401, "{headers:?}");
    }
}

#[tokio::test]
async fn allowed_user_gets_jwt_and_loses_our_cookie_and_forged_header() {
    let h = harness();
    let cookie = h
        .sign_in(
            user("alice@example.com", &["admins"]),
            "app.localhost:8443",
            NOW,
        )
        .await;
    let header = format!("theme=dark; {cookie}; _portcullis_csrf=zzz; lang=en");
    let d = h
        .decide(
            "app.localhost:8443",
            "/",
            &[
                ("cookie", &header),
                ("x-portcullis-jwt-assertion", "forged"),
            ],
            NOW,
        )
        .await;
    let Decision::Allow(edits) = d else {
        panic!("{d:?}")
    };
    let set: HashMap<_, _> = edits.set.iter().cloned().collect();
    assert_eq!(set["cookie"], "theme=dark; lang=en");
    let jwt = &set["x-portcullis-jwt-assertion"];
    assert_ne!(jwt, "forged");
    assert_eq!(jwt.split('.').count(), 3);
    assert!(edits.remove.is_empty());

    // The same (session, route) reuses the signed token; another route gets its own.
    let again = h
        .decide("app.localhost:8443", "/x", &[("cookie", &header)], NOW + 10)
        .await;
    let Decision::Allow(e2) = again else { panic!() };
    assert_eq!(
        e2.set
            .iter()
            .find(|(k, _)| k == "x-portcullis-jwt-assertion")
            .unwrap()
            .1,
        *jwt
    );
}

#[tokio::test]
async fn cookie_only_ours_is_removed_entirely() {
    let h = harness();
    let cookie = h
        .sign_in(user("alice@example.com", &[]), "app.localhost:8443", NOW)
        .await;
    let Decision::Allow(edits) = h
        .decide("app.localhost:8443", "/", &[("cookie", &cookie)], NOW)
        .await
    else {
        panic!()
    };
    assert_eq!(edits.remove, vec!["cookie".to_string()]);
}

#[tokio::test]
async fn policy_refusal_is_403_naming_the_user() {
    let h = harness();
    let cookie = h
        .sign_in(user("bob@example.com", &[]), "admin.localhost:8443", NOW)
        .await;
    let d = h
        .decide(
            "admin.localhost:8443",
            "/",
            &[("cookie", &cookie), ("accept", BROWSER)],
            NOW,
        )
        .await;
    let Decision::Respond(r) = d else {
        panic!("{d:?}")
    };
    assert_eq!(r.status, 403);
    assert!(r.body.contains("bob@example.com"));
    assert!(
        r.body
            .contains("https://admin.localhost:8443/.portcullis/sign_out")
    );
}

#[tokio::test]
async fn cookies_from_other_hosts_tampered_expired_or_revoked_are_no_session() {
    let h = harness();
    let app_cookie = h
        .sign_in(
            user("alice@example.com", &["admins"]),
            "app.localhost:8443",
            NOW,
        )
        .await;
    // A cookie minted for app is worthless on admin.
    let d = h
        .decide("admin.localhost:8443", "/", &[("cookie", &app_cookie)], NOW)
        .await;
    assert!(
        matches!(d, Decision::Respond(Response { status: 401, .. })),
        "{d:?}"
    );
    // Tampered.
    let mut t = app_cookie.clone().into_bytes();
    let i = t.len() - 5;
    t[i] = if t[i] == b'A' { b'B' } else { b'A' };
    let t = String::from_utf8(t).unwrap();
    let d = h
        .decide("app.localhost:8443", "/", &[("cookie", &t)], NOW)
        .await;
    assert!(
        matches!(d, Decision::Respond(Response { status: 401, .. })),
        "{d:?}"
    );
    // Expired (after the cookie's own expiry).
    let d = h
        .decide(
            "app.localhost:8443",
            "/",
            &[("cookie", &app_cookie)],
            NOW + 3601,
        )
        .await;
    assert!(
        matches!(d, Decision::Respond(Response { status: 401, .. })),
        "{d:?}"
    );
    // Revoked server-side.
    let sid = h
        .app
        .cookies
        .open(
            app_cookie.split_once('=').unwrap().1,
            "app.localhost:8443",
            NOW,
        )
        .unwrap();
    h.app.store.remove(&sid).await.unwrap();
    let d = h
        .decide("app.localhost:8443", "/", &[("cookie", &app_cookie)], NOW)
        .await;
    assert!(
        matches!(d, Decision::Respond(Response { status: 401, .. })),
        "{d:?}"
    );
}

#[tokio::test]
async fn unknown_routes_and_mismatched_hints_fail_closed() {
    let h = harness();
    let d = h.decide("evil.localhost:8443", "/", &[], NOW).await;
    assert!(
        matches!(d, Decision::Respond(Response { status: 404, .. })),
        "{d:?}"
    );
    let headers = HashMap::new();
    let req = Request {
        method: "GET",
        scheme: "https",
        authority: "app.localhost:8443",
        path: "/",
        headers: &headers,
        route_hint: Some("admin"),
    };
    let d = h.app.decide(&req, NOW).await;
    assert!(
        matches!(d, Decision::Respond(Response { status: 404, .. })),
        "{d:?}"
    );
}

#[tokio::test]
async fn unauthenticated_forged_identity_header_is_removed_on_public_routes() {
    let fixture = Fixture::new();
    let yaml = VALID.replace("{ any_authenticated_user: true }", "{ public: true }");
    let app = App::new(
        fixture.parse(&yaml).unwrap(),
        Arc::new(MemoryStore::default()),
    );
    let headers: HashMap<String, String> = [(
        "x-portcullis-jwt-assertion".to_string(),
        "forged".to_string(),
    )]
    .into();
    let req = Request {
        method: "GET",
        scheme: "https",
        authority: "app.localhost:8443",
        path: "/",
        headers: &headers,
        route_hint: Some("app"),
    };
    let Decision::Allow(edits) = app.decide(&req, NOW).await else {
        panic!()
    };
    assert_eq!(edits.remove, vec!["x-portcullis-jwt-assertion".to_string()]);
    assert!(edits.set.is_empty());
}

#[test]
fn accept_negotiation() {
    assert!(accept_prefers_html(BROWSER));
    assert!(accept_prefers_html("text/html"));
    assert!(accept_prefers_html("text/*"));
    assert!(!accept_prefers_html("*/*"));
    assert!(!accept_prefers_html("application/json, text/plain, */*"));
    assert!(!accept_prefers_html("text/html;q=0"));
    assert!(!accept_prefers_html(
        "text/html;q=0.4,application/json;q=0.9"
    ));
    assert!(!accept_prefers_html(""));
    assert!(!accept_prefers_html(";;;,,,q=x"));
}
