//! Two real OpenID Connect providers, each with its own opinions: the npm `oidc-provider`
//! (claims in the ID token, RS256) and LemonLDAP::NG 2.16 from Debian (claims only from
//! UserInfo by default, HS512 for a new relying party, HTTP Basic without URL-decoding,
//! consent and logout confirmation pages). The same scenarios run against both; what only
//! LemonLDAP does (the pitfalls of issue 14) runs against it alone. The in-process tests
//! (`src/oidc/provider_tests.rs`) cover every branch against a mock IdP; these check that
//! the real ones agree.
//!
//! Tier `idps`: LemonLDAP::NG and nginx (`scripts/lib/lemonldap.sh`) and the `stack` parts;
//! `scripts/test` installs them. One LemonLDAP serves every test of this binary
//! ([`testkit::shared_lemonldap`]): each test's stack is a relying party of it.

use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::time::Duration;

use reqwest::header::ACCEPT;
use reqwest::{Response, StatusCode};
use serde_json::Value;
use testkit::grafana::decode_jwt;
use testkit::lemonldap::{Options, RpSettings, Shared};
use testkit::{Browser, EchoRequest, Stack, StackBuilder, list, send};

const IDENTITY_HEADER: &str = "x-portcullis-jwt-assertion";

// LemonLDAP's relying parties (client ids), one per way of setting it up.
/// What the README recommends: RS256, PKCE required, and otherwise LemonLDAP's defaults:
/// claims only from UserInfo, a consent page, a logout confirmation. `email_verified` is
/// exported (a boolean from a macro): LemonLDAP has no such claim by default.
const MAIN: &str = "portcullis";
/// [`MAIN`] with `BypassConsent`: after a consent page, LemonLDAP 2.16 loses the
/// `post_logout_redirect_uri` (examples/lemonldap/README.md); this is the workaround.
const NO_CONSENT: &str = "portcullis-no-consent";
/// LemonLDAP's default for a new relying party: ID tokens signed HS512 with the secret.
const HS512: &str = "portcullis-hs512";
/// A client secret with `+`, `/` and `=`, which LemonLDAP's Basic parsing gets wrong.
const PLUS_SECRET: &str = "portcullis-plus-secret";
/// LemonLDAP's default claims: no `email_verified` at all.
const NO_EMAIL_VERIFIED: &str = "portcullis-no-email-verified";
/// `email_verified` exported as the string `"true"`, not a boolean.
const EMAIL_VERIFIED_TEXT: &str = "portcullis-email-verified-text";

/// The relying parties, made once per test binary (the secrets are random).
fn relying_parties() -> &'static [RpSettings] {
    static RPS: OnceLock<Vec<RpSettings>> = OnceLock::new();
    RPS.get_or_init(|| {
        let secret = || testkit::hex(&testkit::random_bytes(24));
        // Redirect URIs are filled in by the test kit, for its pool of Envoy ports.
        let default = |id: &str, secret: String| RpSettings::default_claims(id, &secret, "");
        let with_verified = |mut rp: RpSettings, kind: &str| {
            rp.claims
                .push(("email_verified".into(), format!("emailVerified;{kind}")));
            rp
        };
        let recommended = |id: &str| RpSettings {
            id_token_alg: "RS256".into(),
            require_pkce: true,
            ..with_verified(default(id, secret()), "bool")
        };
        vec![
            recommended(MAIN),
            RpSettings {
                bypass_consent: true,
                ..recommended(NO_CONSENT)
            },
            with_verified(default(HS512, secret()), "bool"),
            RpSettings {
                // Random, yet with all three characters that RFC 6749's encoding changes.
                client_secret: Some(format!("{}+/={}", secret(), secret())),
                ..recommended(PLUS_SECRET)
            },
            RpSettings {
                id_token_alg: "RS256".into(),
                ..default(NO_EMAIL_VERIFIED, secret())
            },
            RpSettings {
                id_token_alg: "RS256".into(),
                ..with_verified(default(EMAIL_VERIFIED_TEXT, secret()), "string")
            },
        ]
    })
}

/// The test binary's LemonLDAP::NG.
fn lemonldap() -> &'static Shared {
    // The relying parties that export `email_verified` get a macro for it ("true"; the
    // claim's type, bool or string, is the relying party's), as the manager's per-RP
    // "Macros" would.
    let macros: Vec<String> = relying_parties()
        .iter()
        .filter(|rp| rp.claims.iter().any(|(claim, _)| claim == "email_verified"))
        .map(|rp| format!(r#""{}": {{"emailVerified": "'true'"}}"#, rp.name))
        .collect();
    let opts = Options {
        extra_conf: vec![(
            "oidcRPMetaDataMacros".into(),
            format!("{{{}}}", macros.join(", ")),
        )],
        ..Options::default()
    };
    testkit::shared_lemonldap(relying_parties(), &opts)
}

/// A user of one IdP.
#[derive(Debug, Clone, Copy)]
struct User {
    login: &'static str,
    email: &'static str,
}

/// One IdP as the scenarios see it.
#[derive(Debug, Clone, Copy)]
struct Idp {
    /// LemonLDAP's relying party; `None`: the stack's own dev IdP.
    lemonldap: Option<&'static str>,
    /// In [`Idp::group`], with an email in [`Idp::domain`].
    member: User,
    /// Not in [`Idp::group`]; an email in [`Idp::domain`] too.
    outsider: User,
    group: &'static str,
    domain: &'static str,
    /// Whether the ID token itself has the email and groups (LemonLDAP's: only `sub`).
    claims_in_id_token: bool,
}

const OIDC_PROVIDER: Idp = Idp {
    lemonldap: None,
    member: User {
        login: "alice",
        email: "alice@example.com",
    },
    outsider: User {
        login: "bob",
        email: "bob@example.com",
    },
    group: "admins",
    domain: "example.com",
    claims_in_id_token: true,
};

fn lemonldap_as(client_id: &'static str) -> Idp {
    Idp {
        lemonldap: Some(client_id),
        member: User {
            login: "dwho",
            email: "dwho@badwolf.org",
        },
        outsider: User {
            login: "rtyler",
            email: "rtyler@badwolf.org",
        },
        group: "timelords",
        domain: "badwolf.org",
        claims_in_id_token: false,
    }
}

impl Idp {
    /// A stack on this IdP, with the routes `group` (`apps.localhost/group`: the group
    /// only) and `domain` (`apps.localhost/domain`: the domain only) besides `app` (anyone
    /// signed in).
    fn stack(&self) -> StackBuilder {
        let builder = match self.lemonldap {
            Some(client_id) => Stack::builder().lemonldap(lemonldap(), client_id),
            None => Stack::builder(),
        };
        builder
            .route("group", "apps", &format!("{{ groups: [{}] }}", self.group))
            .route_path("group", "/group")
            .route(
                "domain",
                "apps",
                &format!("{{ domains: [{}] }}", self.domain),
            )
            .route_path("domain", "/domain")
    }
}

/// Parses the echo upstream's answer: the request as the app received it.
async fn echoed(response: Response) -> EchoRequest {
    let url = response.url().clone();
    let body = response.text().await.expect("echo body is readable");
    let json = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{url} did not answer the echo's JSON ({e}): {body}"));
    EchoRequest::from_json(&json)
}

/// Signs `user` in through the app (the password is the login at both IdPs) and returns
/// the identity JWT's verified claims.
async fn sign_in(stack: &Stack, browser: &Browser, user: User) -> Value {
    let app = stack.url("app", "/");
    let (response, visited) = stack.login(browser, &app, user.login, user.login).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "{} did not reach the app; redirects:\n{}",
        user.login,
        list(&visited)
    );
    assert_eq!(
        response.url().as_str(),
        app,
        "{} ended elsewhere",
        user.login
    );
    let auth_at = visited
        .iter()
        .position(|u| u.origin().ascii_serialization() == stack.origin("auth"));
    let idp_at = visited.iter().position(|u| stack.is_idp(u));
    assert!(
        matches!((auth_at, idp_at), (Some(a), Some(i)) if a < i),
        "expected the auth host, then the IdP; redirects:\n{}",
        list(&visited)
    );
    identity(stack, response, &stack.authority("app")).await
}

/// The verified claims of the identity JWT for `audience` (the route's host and port, and
/// its path prefix if it has one) the app got in `response`.
async fn identity(stack: &Stack, response: Response, audience: &str) -> Value {
    let seen = echoed(response).await;
    let token = seen
        .header(IDENTITY_HEADER)
        .unwrap_or_else(|| panic!("{audience} got no identity header: {seen:?}"));
    stack.verify_jwt(token, audience).await["payload"].clone()
}

/// The JSON `/.portcullis/user` answers for this browser on the auth host.
async fn whoami(stack: &Stack, browser: &Browser) -> Value {
    let url = stack.url("auth", "/.portcullis/user");
    let response = send(browser.get(&url).header(ACCEPT, "application/json")).await;
    assert_eq!(response.status(), StatusCode::OK, "GET {url}");
    response.json().await.expect("/.portcullis/user is JSON")
}

fn groups_of(claims: &Value) -> BTreeSet<String> {
    claims["groups"]
        .as_array()
        .unwrap_or_else(|| panic!("no groups list: {claims}"))
        .iter()
        .filter_map(|g| g.as_str().map(str::to_string))
        .collect()
}

/// How many requests for `path_prefix` the upstream has had.
fn upstream_calls(stack: &Stack, path_prefix: &str) -> usize {
    stack
        .echo_requests()
        .iter()
        .filter(|r| r.path.starts_with(path_prefix))
        .count()
}

/// Sign-in, SSO across hosts (no IdP on the way), a `groups` and a `domains` policy, the
/// user page, and a user the `groups` policy refuses: the 403 page names them and the
/// upstream is never called.
async fn sign_in_sso_and_policies(idp: Idp) {
    let stack = idp.stack().start().await;
    let member = stack.browser();
    let claims = sign_in(&stack, &member, idp.member).await;
    assert_eq!(claims["email"], idp.member.email, "{claims}");
    assert!(
        groups_of(&claims).contains(idp.group),
        "the identity JWT has the IdP's groups: {claims}"
    );

    for prefix in ["/group", "/domain"] {
        let path = format!("{prefix}/page");
        let (response, visited) = member.follow(&stack.url("apps", &path)).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "{} on {path}; redirects:\n{}",
            idp.member.login,
            list(&visited)
        );
        assert!(
            !visited.iter().any(|u| stack.is_idp(u)),
            "SSO across hosts goes through the auth host only; redirects:\n{}",
            list(&visited)
        );
        let audience = format!("{}{prefix}", stack.authority("apps"));
        let claims = identity(&stack, response, &audience).await;
        assert_eq!(claims["email"], idp.member.email, "{claims}");
    }

    // The user page on the auth host, with what the IdP said (LemonLDAP: only in UserInfo).
    let (page, _) = member.follow(&stack.url("auth", "/.portcullis/")).await;
    assert_eq!(page.status(), StatusCode::OK);
    let body = page.text().await.unwrap();
    assert!(
        body.contains(idp.member.email) && body.contains(idp.group),
        "the user page shows the email and the groups: {body}"
    );

    let outsider = stack.browser();
    let claims = sign_in(&stack, &outsider, idp.outsider).await;
    assert!(
        !groups_of(&claims).contains(idp.group),
        "{} is not in {}: {claims}",
        idp.outsider.login,
        idp.group
    );
    let before = upstream_calls(&stack, "/group");
    let (response, visited) = outsider.follow(&stack.url("apps", "/group/page")).await;
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "{} on the group route; redirects:\n{}\n{body}",
        idp.outsider.login,
        list(&visited)
    );
    assert!(
        body.contains(idp.outsider.email) && body.contains("/.portcullis/sign_out"),
        "the 403 page names who is signed in and offers sign-out: {body}"
    );
    assert_eq!(
        upstream_calls(&stack, "/group"),
        before,
        "the upstream was called for {}",
        idp.outsider.login
    );
    // The domain policy is about the domain, not the group.
    let (response, _) = outsider.follow(&stack.url("apps", "/domain/page")).await;
    assert_eq!(response.status(), StatusCode::OK);
}

/// RP-initiated logout: portcullis sends the ID token as `id_token_hint`, the IdP ends its
/// session (confirming as a user would) and sends the browser back to portcullis's
/// signed-out page; going back to the app asks for a password again.
async fn rp_initiated_logout(idp: Idp) {
    let stack = idp.stack().start().await;
    let browser = stack.browser();
    sign_in(&stack, &browser, idp.member).await;
    let me = whoami(&stack, &browser).await;
    assert_eq!(me["email"], idp.member.email, "{me}");
    assert!(groups_of(&me).contains(idp.group), "{me}");

    let (response, visited) = stack.sign_out(&browser, "app").await;
    assert_eq!(
        (response.status(), response.url().as_str()),
        (
            StatusCode::OK,
            stack.url("auth", "/.portcullis/signed_out").as_str()
        ),
        "redirects:\n{}",
        list(&visited)
    );
    let hint = visited
        .iter()
        .filter(|u| stack.is_idp(u))
        .find_map(|u| {
            u.query_pairs()
                .find(|(k, _)| k == "id_token_hint")
                .map(|(_, v)| v.into_owned())
        })
        .unwrap_or_else(|| panic!("no id_token_hint went to the IdP:\n{}", list(&visited)));
    let (header, id_token) = decode_jwt(&hint);
    assert_eq!(header["alg"], "RS256", "{header}");
    assert_eq!(id_token["sub"], me["sub"], "{id_token}");
    // The user page had the email and groups either way; at LemonLDAP they came from
    // UserInfo alone.
    for claim in ["email", "groups"] {
        assert_eq!(
            id_token.get(claim).is_some(),
            idp.claims_in_id_token,
            "{claim} in the ID token: {id_token}"
        );
    }

    let app = stack.url("app", "/");
    let (response, visited) = browser.follow(&app).await;
    assert!(
        stack.is_idp(response.url()) && response.status() == StatusCode::OK,
        "after sign-out the app sends the browser to the IdP; redirects:\n{}",
        list(&visited)
    );
    let body = response.text().await.unwrap();
    assert!(
        body.contains("type=\"password\""),
        "the IdP's session is over: it asks for a password: {body}"
    );
}

#[tokio::test]
#[ignore = "tier idps: needs LemonLDAP::NG, nginx, Envoy and the dev IdP; run scripts/test"]
async fn oidc_provider_sign_in_sso_and_policies() {
    sign_in_sso_and_policies(OIDC_PROVIDER).await;
}

#[tokio::test]
#[ignore = "tier idps: needs LemonLDAP::NG, nginx, Envoy and the dev IdP; run scripts/test"]
async fn lemonldap_sign_in_sso_and_policies_with_claims_from_userinfo() {
    sign_in_sso_and_policies(lemonldap_as(MAIN)).await;
}

#[tokio::test]
#[ignore = "tier idps: needs LemonLDAP::NG, nginx, Envoy and the dev IdP; run scripts/test"]
async fn oidc_provider_rp_initiated_logout_ends_the_idp_session() {
    rp_initiated_logout(OIDC_PROVIDER).await;
}

#[tokio::test]
#[ignore = "tier idps: needs LemonLDAP::NG, nginx, Envoy and the dev IdP; run scripts/test"]
async fn lemonldap_rp_initiated_logout_ends_the_idp_session() {
    rp_initiated_logout(lemonldap_as(NO_CONSENT)).await;
}

/// The sign-in error page: 502, the request id (also in `x-request-id`), nothing internal.
/// Returns the request id.
async fn sign_in_error_page(response: Response, hidden: &[&str]) -> String {
    let status = response.status();
    let header_id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = response.text().await.unwrap();
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(
        body.contains("Sign-in failed") && body.contains("contact your administrator"),
        "{body}"
    );
    let id = body
        .split("Request id: <code>")
        .nth(1)
        .and_then(|rest| rest.split("</code>").next())
        .unwrap_or_else(|| panic!("the page shows no request id: {body}"))
        .to_string();
    assert_eq!(header_id.as_deref(), Some(id.as_str()), "{body}");
    for word in hidden {
        assert!(!body.contains(word), "the page shows {word:?}: {body}");
    }
    id
}

/// The log line of request `id` that contains all of `words` (portcullis writes its log
/// in the background: it may take a moment).
async fn log_line(stack: &mut Stack, id: &str, words: &[&str]) -> String {
    let portcullis = stack.proc_mut("portcullis");
    let find = || {
        portcullis
            .log_text()
            .lines()
            .find(|l| l.contains(id) && words.iter().all(|w| l.contains(w)))
            .map(str::to_string)
    };
    let found = testkit::poll_until(Duration::from_secs(10), || async { find() }).await;
    found.unwrap_or_else(|| {
        panic!(
            "no log line of request {id} with {words:?}:\n{}",
            portcullis.log_tail()
        )
    })
}

/// Adds `line` to the config's `idp:` and restarts portcullis with it.
async fn reconfigure_idp(stack: &mut Stack, line: &str) {
    let config = std::fs::read_to_string(&stack.config).unwrap();
    assert!(config.contains("\nidp:\n"), "{config}");
    let config = config.replacen("\nidp:\n", &format!("\nidp:\n  {line}\n"), 1);
    std::fs::write(&stack.config, config).unwrap();
    stack.restart_portcullis().await;
}

/// Signs in at the app and returns the last response (no assertion on it).
async fn try_sign_in(stack: &Stack, browser: &Browser, user: User) -> Response {
    stack
        .login(browser, &stack.url("app", "/"), user.login, user.login)
        .await
        .0
}

#[tokio::test]
#[ignore = "tier idps: needs LemonLDAP::NG, nginx, Envoy and the dev IdP; run scripts/test"]
async fn lemonldap_a_secret_with_plus_slash_equals_fails_with_basic_and_works_with_post() {
    let idp = lemonldap_as(PLUS_SECRET);
    let secret = lemonldap().rp(PLUS_SECRET).client_secret.clone().unwrap();
    assert!(
        ['+', '/', '='].iter().all(|c| secret.contains(*c)),
        "{secret}"
    );
    // The default: client_secret_basic, which LemonLDAP advertises.
    let mut stack = idp.stack().start().await;
    let response = try_sign_in(&stack, &stack.browser(), idp.member).await;
    let id = sign_in_error_page(response, &["invalid_client", "client_secret"]).await;
    let line = log_line(&mut stack, &id, &["invalid_client", "sign-in failed"]).await;
    assert!(
        line.contains("token_endpoint_auth"),
        "the log line says what to check: {line}"
    );

    reconfigure_idp(&mut stack, "token_endpoint_auth: client_secret_post").await;
    let claims = sign_in(&stack, &stack.browser(), idp.member).await;
    assert_eq!(claims["email"], idp.member.email, "{claims}");
}

#[tokio::test]
#[ignore = "tier idps: needs LemonLDAP::NG, nginx, Envoy and the dev IdP; run scripts/test"]
async fn lemonldap_hs512_id_tokens_are_refused_by_name_unless_listed() {
    let idp = lemonldap_as(HS512);
    let mut stack = idp.stack().start().await;
    let response = try_sign_in(&stack, &stack.browser(), idp.member).await;
    let id = sign_in_error_page(response, &["HS512", "algorithm"]).await;
    let line = log_line(&mut stack, &id, &["\"HS512\"", "not accepted"]).await;
    assert!(
        line.contains("RS256") && line.contains("idp.id_token_algs"),
        "the log line names what is accepted and what to set: {line}"
    );

    reconfigure_idp(&mut stack, "id_token_algs: [HS512]").await;
    let browser = stack.browser();
    let claims = sign_in(&stack, &browser, idp.member).await;
    assert_eq!(claims["email"], idp.member.email, "{claims}");
    assert!(groups_of(&claims).contains(idp.group), "{claims}");
}

#[tokio::test]
#[ignore = "tier idps: needs LemonLDAP::NG, nginx, Envoy and the dev IdP; run scripts/test"]
async fn lemonldap_email_verified_rules_hold_for_userinfo_claims() {
    // LemonLDAP's default claims: no email_verified. The email is there, but unverified:
    // the domain policy refuses and the identity JWT has no email.
    let idp = lemonldap_as(NO_EMAIL_VERIFIED);
    let mut stack = idp.stack().start().await;
    let browser = stack.browser();
    let claims = sign_in(&stack, &browser, idp.member).await;
    assert!(claims.get("email").is_none(), "{claims}");
    assert!(groups_of(&claims).contains(idp.group), "{claims}");
    let me = whoami(&stack, &browser).await;
    assert_eq!(
        (&me["email"], &me["email_verified"]),
        (&Value::from(idp.member.email), &Value::Bool(false)),
        "{me}"
    );
    let (response, _) = browser.follow(&stack.url("apps", "/domain/page")).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body = response.text().await.unwrap();
    assert!(body.contains(idp.member.email), "{body}");

    // The admin's trade-off: a missing claim counts as verified.
    reconfigure_idp(&mut stack, "assume_email_verified: true").await;
    let browser = stack.browser();
    let claims = sign_in(&stack, &browser, idp.member).await;
    assert_eq!(claims["email"], idp.member.email, "{claims}");
    let (response, _) = browser.follow(&stack.url("apps", "/domain/page")).await;
    assert_eq!(response.status(), StatusCode::OK);
    drop(stack);

    // "true" as a string is not a verification. The `verified` route shows that UserInfo
    // did say "true".
    let idp = lemonldap_as(EMAIL_VERIFIED_TEXT);
    let stack = idp
        .stack()
        .route(
            "verified",
            "apps",
            "{ allow: { claim/email_verified: \"true\" } }",
        )
        .route_path("verified", "/verified")
        .start()
        .await;
    let browser = stack.browser();
    let claims = sign_in(&stack, &browser, idp.member).await;
    assert!(claims.get("email").is_none(), "{claims}");
    let (response, _) = browser.follow(&stack.url("apps", "/verified/page")).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "UserInfo's email_verified is the string \"true\""
    );
    let (response, _) = browser.follow(&stack.url("apps", "/domain/page")).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(whoami(&stack, &browser).await["email_verified"], false);
}
