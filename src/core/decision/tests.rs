//! The decision alone: routes and sessions built in code, no files, no store, no keys.

use std::collections::HashMap;

use url::Url;

use super::*;
use crate::core::cockpit::AccountMapping;
use crate::core::policy::Policy;

const NOW: u64 = 1_800_000_000;
const BROWSER: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8";

fn route(from: &str, policy: Policy) -> Route {
    Route::new("r".into(), Url::parse(from).unwrap(), policy)
}

fn cockpit_route(account: AccountMapping) -> Route {
    let mut r = route(
        "https://cockpit.example",
        Policy::allow_list(vec![], vec!["example.com".into()], vec![]),
    );
    r.cockpit = Some(CockpitSettings {
        url_root: String::new(),
        account,
        admin_groups: vec!["admins".into()],
    });
    r
}

fn user(email: &str, groups: &[&str]) -> User {
    User {
        subject: email.split('@').next().unwrap().into(),
        email: Some(email.into()),
        email_verified: true,
        name: None,
        preferred_username: None,
        groups: groups.iter().map(|g| g.to_string()).collect(),
        claims: Vec::new(),
    }
}

fn session(u: User) -> Session {
    Session::new(u, NOW, 3600)
}

fn get<'a>(path: &'a str, headers: &'a HashMap<String, String>) -> Request<'a> {
    Request {
        method: "GET",
        scheme: "https",
        authority: "app.example",
        path,
        headers,
        route_hint: None,
        source_ip: None,
    }
}

#[test]
fn anyone_on_a_public_route_and_only_the_signed_in_elsewhere() {
    let h = HashMap::new();
    let public = route("https://app.example", Policy::public());
    let Outcome::Allow(g) = decide(&public, None, &get("/", &h), NOW) else {
        panic!("a public route lets anyone in")
    };
    assert_eq!(g.reason.rule, "public");
    assert!(g.session.is_none());

    let any = route("https://app.example", Policy::any_authenticated_user());
    assert!(matches!(
        decide(&any, None, &get("/", &h), NOW),
        Outcome::Refuse(Refusal::SignInRequired { .. })
    ));
    let s = session(user("bob@example.com", &[]));
    let Outcome::Allow(g) = decide(&any, Some(&s), &get("/", &h), NOW) else {
        panic!("any signed-in user")
    };
    assert_eq!(g.reason.rule, "any_authenticated_user");
    assert_eq!(g.session.map(|s| s.id), Some(s.id));
    assert_eq!(g.cockpit, CockpitStep::None);
}

#[test]
fn a_refusal_names_the_user_and_keeps_its_kind() {
    let h = HashMap::new();
    let admins = route(
        "https://admin.example",
        Policy::allow_list(vec![], vec![], vec!["admins".into()]),
    );
    let bob = session(user("bob@example.com", &["users"]));
    let outcome = decide(&admins, Some(&bob), &get("/", &h), NOW);
    assert_eq!(outcome.kind(), OutcomeKind::Forbidden);
    let Outcome::Refuse(Refusal::Forbidden {
        user: Some(who),
        route,
        reason: None,
    }) = outcome
    else {
        panic!("bob is not an admin, and no deny rule is involved")
    };
    assert_eq!(who.email.as_deref(), Some("bob@example.com"));
    assert_eq!(route.authority, "admin.example");

    let alice = session(user("alice@example.com", &["admins"]));
    let Outcome::Allow(g) = decide(&admins, Some(&alice), &get("/", &h), NOW) else {
        panic!("alice is an admin")
    };
    assert_eq!(
        g.reason,
        Reason {
            rule: "groups",
            value: Some("admins")
        }
    );
}

#[test]
fn an_expired_session_is_no_session() {
    let h = HashMap::new();
    let any = route("https://app.example", Policy::any_authenticated_user());
    let s = session(user("alice@example.com", &[]));
    assert!(matches!(
        decide(&any, Some(&s), &get("/", &h), NOW + 3599),
        Outcome::Allow(_)
    ));
    for later in [NOW + 3600, NOW + 100_000] {
        let outcome = decide(&any, Some(&s), &get("/", &h), later);
        assert_eq!(outcome.kind(), OutcomeKind::SignInRequired, "at {later}");
    }
    // On a public route, an expired session's identity does not go upstream either.
    let public = route("https://app.example", Policy::public());
    let Outcome::Allow(g) = decide(&public, Some(&s), &get("/", &h), NOW + 3600) else {
        panic!()
    };
    assert!(g.session.is_none());
}

#[test]
fn cockpit_gets_credentials_on_its_login_request_only() {
    let h = HashMap::new();
    let r = cockpit_route(AccountMapping::Subject);
    let alice = session(user("alice@example.com", &[]));
    let Outcome::Allow(g) = decide(&r, Some(&alice), &get("/cockpit/login", &h), NOW) else {
        panic!()
    };
    assert_eq!(
        g.cockpit,
        CockpitStep::LogIn {
            account: "alice".into(),
            admin: false,
        }
    );
    // A member of an admin group logs in with administrative access; only then.
    let admin = session(user("alice@example.com", &["users", "admins"]));
    let Outcome::Allow(g) = decide(&r, Some(&admin), &get("/cockpit/login", &h), NOW) else {
        panic!()
    };
    assert_eq!(
        g.cockpit,
        CockpitStep::LogIn {
            account: "alice".into(),
            admin: true,
        }
    );
    let near = session(user("alice@example.com", &["Admins", "admins2"]));
    let Outcome::Allow(g) = decide(&r, Some(&near), &get("/cockpit/login", &h), NOW) else {
        panic!()
    };
    assert!(
        matches!(g.cockpit, CockpitStep::LogIn { admin: false, .. }),
        "group names match exactly"
    );
    for path in [
        "/",
        "/cockpit/socket",
        "/cockpit/login/x",
        "/x/cockpit/login",
    ] {
        let Outcome::Allow(g) = decide(&r, Some(&alice), &get(path, &h), NOW) else {
            panic!("{path}")
        };
        assert_eq!(g.cockpit, CockpitStep::StripCredentials, "{path}");
    }
    let post = Request {
        method: "POST",
        ..get("/cockpit/login", &h)
    };
    let Outcome::Allow(g) = decide(&r, Some(&alice), &post, NOW) else {
        panic!()
    };
    assert_eq!(g.cockpit, CockpitStep::StripCredentials);
}

#[test]
fn cockpit_refuses_users_without_a_local_account() {
    let h = HashMap::new();
    let table = cockpit_route(AccountMapping::Table(
        [("alice@example.com".to_string(), "alice".to_string())].into(),
    ));
    let carol = session(user("carol@example.com", &[]));
    let outcome = decide(&table, Some(&carol), &get("/cockpit/login", &h), NOW);
    assert_eq!(outcome.kind(), OutcomeKind::NoLocalAccount);
    // root is never an account, whatever the mapping.
    let root = session(user("root@example.com", &[]));
    let by_subject = cockpit_route(AccountMapping::Subject);
    assert_eq!(
        decide(&by_subject, Some(&root), &get("/", &h), NOW).kind(),
        OutcomeKind::NoLocalAccount
    );
    // The policy comes first: a user the policy refuses is refused as such.
    let mallory = session(user("mallory@evil.example", &[]));
    assert_eq!(
        decide(&by_subject, Some(&mallory), &get("/", &h), NOW).kind(),
        OutcomeKind::Forbidden
    );
}

#[test]
fn outcome_kinds_have_stable_labels() {
    let labels: Vec<&str> = [
        OutcomeKind::Allow,
        OutcomeKind::NoRoute,
        OutcomeKind::AmbiguousPath,
        OutcomeKind::SignInRequired,
        OutcomeKind::Forbidden,
        OutcomeKind::NoLocalAccount,
        OutcomeKind::CockpitTokenTooLong,
        OutcomeKind::StoreUnavailable,
    ]
    .iter()
    .map(|k| k.as_str())
    .collect();
    assert_eq!(
        labels,
        [
            "allow",
            "no_route",
            "ambiguous_path",
            "sign_in_required",
            "forbidden",
            "no_local_account",
            "cockpit_token_too_long",
            "store_unavailable"
        ]
    );
    assert_eq!(
        Refusal::from(NoRoute::Ambiguous).kind(),
        OutcomeKind::AmbiguousPath
    );
    assert_eq!(Refusal::from(NoRoute::Unknown).kind(), OutcomeKind::NoRoute);
}

#[test]
fn browsers_are_told_apart_from_api_clients() {
    for (headers, html) in [
        (vec![("accept", BROWSER)], true),
        (vec![("accept", "application/json")], false),
        (vec![("accept", "*/*")], false),
        (vec![], false),
        (
            vec![("accept", BROWSER), ("x-requested-with", "XMLHttpRequest")],
            false,
        ),
        (vec![("accept", BROWSER), ("upgrade", "websocket")], false),
        (
            vec![("accept", BROWSER), ("content-type", "application/grpc")],
            false,
        ),
        (vec![("accept", "text/html;q=0.5, application/json")], false),
    ] {
        let h: HashMap<String, String> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(wants_html(&get("/", &h)), html, "{headers:?}");
    }
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

#[test]
fn paths_lose_their_query_for_logs() {
    assert_eq!(path_only("/a?token=secret"), "/a");
    assert_eq!(path_only("/a"), "/a");
}
