//! The pages walked in a real browser: headless Debian Chromium, driven by npm
//! playwright-core (`testkit/js/browser_walk.mjs`, through [`testkit::chromium`]), against
//! the real Envoy, the dev IdP (npm oidc-provider) and portcullis. The browser trusts the
//! test CA (an NSS database in a temporary HOME) rather than ignoring certificate errors.
//! Every step leaves a screenshot in `tests/artifacts/`.
//!
//! Tier `browser`: Debian's chromium and certutil, npm playwright-core, and for the Cockpit
//! shell the `cockpit` tier's parts (root, cockpit-ws, the account alice). `scripts/test`
//! installs all of them.
//!
//! The walk (steps 1–5) runs on a plain stack; step 6, the Cockpit shell, needs the Cockpit
//! stack (cockpit-ws, the PAM block under its cross-process lock) and an IdP that is up, so
//! it is its own test below, driven by the same script.
//!
//! Step 5 stops the IdP under a running portcullis, which notices at its next probe of the
//! IdP's discovery document (`idp.probe_interval`, 1 s here) and answers sign-ins with its
//! 503 page rather than sending browsers to an address that answers nothing; then it
//! restarts portcullis with the IdP still down (a restart, a new replica), which has never
//! discovered it and answers the same page.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use testkit::chromium::{Step, StepReport, walk, walk_untrusted};
use testkit::cockpit::CockpitStack;
use testkit::{EchoRequest, Stack};

const IDENTITY_HEADER: &str = "x-portcullis-jwt-assertion";
/// The dev IdP's login page (examples/demo/idp.mjs).
const IDP_SIGN_IN_TITLE: &str = "Sign in to the demo IdP";

/// The echo app's view of the request, from the document's body.
fn echoed(r: &StepReport) -> EchoRequest {
    let body = r.body.as_deref().unwrap_or_default();
    let json = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("step {}: not the echo's JSON ({e}): {body}", r.name));
    EchoRequest::from_json(&json)
}

/// The step ended on the dev IdP's login form.
fn assert_idp_sign_in_form(stack: &Stack, r: &StepReport) {
    assert!(
        r.url
            .starts_with(&format!("{}/interaction/", stack.idp_origin())),
        "step {}: not at the IdP's login form but at {}; navigations:\n{}",
        r.name,
        r.url,
        r.trail()
    );
    assert_eq!(r.title, IDP_SIGN_IN_TITLE, "step {}: {}", r.name, r.text);
    assert!(
        r.text.contains("Username") && r.text.contains("Password"),
        "step {}: {}",
        r.name,
        r.text
    );
}

/// One of portcullis's pages, answered with `status`, titled `title` and saying each of
/// `says`: its policy lets nothing but its own style load, and no one keeps a copy.
fn assert_portcullis_page(r: &StepReport, status: u16, title: &str, says: &[&str]) {
    assert_eq!(
        (r.status, r.title.as_str()),
        (Some(status), title),
        "step {} at {}:\n{}\n{}",
        r.name,
        r.url,
        r.trail(),
        r.text
    );
    for text in says {
        assert!(
            r.text.contains(text),
            "step {}: no {text:?} in:\n{}",
            r.name,
            r.text
        );
    }
    let header = |name: &str| r.headers.get(name).map(String::as_str).unwrap_or_default();
    assert!(
        header("content-security-policy").starts_with("default-src 'none';"),
        "step {}: {:?}",
        r.name,
        r.headers
    );
    assert_eq!(header("cache-control"), "no-store", "step {}", r.name);
    assert!(
        header("content-security-policy").contains("style-src 'sha256-"),
        "step {}: {:?}",
        r.name,
        r.headers
    );
    assert!(
        header("content-type").starts_with("text/html"),
        "step {}: {:?}",
        r.name,
        r.headers
    );
    // The policy is not only sent but holds the page as it is: its style is the one the
    // hash names, and nothing on it is refused.
    assert!(
        !r.console
            .iter()
            .any(|m| m.contains("Content Security Policy")),
        "step {}: {:?}",
        r.name,
        r.console
    );
}

/// The request id the page shows, which must be the one portcullis logged for it (what an
/// admin greps for): a log line with that id says each of `expect` too.
fn assert_request_id_logged(stack: &mut Stack, r: &StepReport, expect: &[&str]) {
    let id = r
        .request_id()
        .unwrap_or_else(|| panic!("step {}: no request id on the page:\n{}", r.name, r.text));
    assert!(id.len() >= 8, "step {}: request id {id:?}", r.name);
    let log = stack.proc_mut("portcullis").log_text();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(id)).collect();
    assert!(
        lines.iter().any(|l| expect.iter().all(|e| l.contains(e))),
        "step {}: no portcullis log line has request id {id} and {expect:?}; with the id:\n{}",
        r.name,
        lines.join("\n")
    );
}

/// The identity JWT the app received in `r`, verified against portcullis's JWKS for the
/// app's host: its claims.
async fn identity(stack: &Stack, r: &StepReport, label: &str) -> serde_json::Value {
    let seen = echoed(r);
    let token = seen
        .header(IDENTITY_HEADER)
        .unwrap_or_else(|| panic!("step {}: the app got no {IDENTITY_HEADER}", r.name));
    // The page shows it: the echo app's JSON is what the user sees.
    assert!(
        r.text.contains(IDENTITY_HEADER) && r.text.contains(token),
        "step {}: the page does not show the identity header:\n{}",
        r.name,
        r.text
    );
    stack.verify_jwt(token, &stack.authority(label)).await["payload"].clone()
}

/// The table rows of portcullis's user page (`Email`, `Groups`, …), from its text.
fn user_rows(r: &StepReport) -> BTreeMap<String, String> {
    r.text
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// A Sign out button pressed: its POST to `posted_to`, redirects that end the IdP's session
/// (RP-initiated logout) and the signed-out page.
fn assert_signed_out(r: &StepReport, posted_to: &str, idp: &str) {
    assert!(
        r.requests
            .iter()
            .any(|n| n.method == "POST" && n.url == posted_to),
        "step {}: the Sign out button POSTs to {posted_to}:\n{}",
        r.name,
        r.trail()
    );
    assert!(
        r.visited(&format!("{idp}/session/end")),
        "step {}: RP-initiated logout at the IdP:\n{}",
        r.name,
        r.trail()
    );
    assert_portcullis_page(
        r,
        200,
        "Signed out",
        &["You have been signed out", "Sign in again"],
    );
}

#[tokio::test]
#[ignore = "tier browser: needs Debian's chromium and certutil, npm playwright-core, Envoy and the dev IdP; run scripts/test as root"]
async fn the_pages_walked_in_chromium_sign_in_deny_show_sign_out_and_survive_the_idp_stopping() {
    let mut stack = Stack::builder()
        .idp_option("probe_interval: 1s")
        .start()
        .await;
    let ca = stack.certs.ca.clone();
    let app = stack.url("app", "/");
    let admin = stack.url("admin", "/");
    let auth = stack.origin("auth");
    let idp = stack.idp_origin();

    let steps = [
        // 1. The app sends a stranger to the IdP's form; alice signs in and is back on it.
        Step::goto("walk-1-app-asks-to-sign-in", "alice", &app),
        Step::sign_in("walk-1-alice-signed-in", "alice", "alice", &app),
        // 2. Another app, no second sign-in; bob, in a browser of his own, is refused.
        Step::goto("walk-2-admin-without-signing-in-again", "alice", &admin),
        Step::goto("walk-2-bob-asked-to-sign-in", "bob", &admin),
        Step::sign_in("walk-2-bob-forbidden", "bob", "bob", &admin),
        // 3. Who alice is, on the auth host.
        Step::goto("walk-3-user-page", "alice", &format!("{auth}/.portcullis/")),
        // 4. Sign out there: the IdP's logout, back to portcullis, and the app asks again.
        Step::sign_out(
            "walk-4-signed-out",
            "alice",
            &format!("{auth}/.portcullis/signed_out"),
        ),
        Step::goto("walk-4-app-asks-to-sign-in-again", "alice", &app),
        // And from the 403 page, on the route host: through the auth host to the IdP.
        Step::sign_out(
            "walk-4-bob-signed-out-from-the-403-page",
            "bob",
            &format!("{auth}/.portcullis/signed_out"),
        ),
    ];
    let r = walk(&ca, &steps);

    // 0. The walk passes because the browser trusts the test CA, not because certificate
    // errors are ignored: a browser without it refuses the very first page.
    let untrusted = walk_untrusted(&[Step::goto("walk-0-untrusted-browser", "mallory", &app)]);
    assert!(
        untrusted.len() == 1
            && !untrusted[0].ok
            && untrusted[0]
                .error
                .as_deref()
                .is_some_and(|e| e.contains("ERR_CERT_AUTHORITY_INVALID")),
        "a browser without the test CA: {untrusted:?}"
    );

    // 1.
    assert_idp_sign_in_form(&stack, &r[0]);
    assert!(
        r[0].visited(&format!("{auth}/.portcullis/sign_in")),
        "through the auth host:\n{}",
        r[0].trail()
    );
    assert_eq!((r[1].url.as_str(), r[1].status), (app.as_str(), Some(200)));
    let claims = identity(&stack, &r[1], "app").await;
    assert_eq!(
        (&claims["sub"], &claims["email"], &claims["groups"]),
        (
            &serde_json::json!("alice"),
            &serde_json::json!("alice@example.com"),
            &serde_json::json!(["admins"])
        ),
        "{claims}"
    );

    // 2.
    assert_eq!(
        (r[2].url.as_str(), r[2].status),
        (admin.as_str(), Some(200))
    );
    assert!(
        !r[2].visited(&idp),
        "alice was sent to the IdP again:\n{}",
        r[2].trail()
    );
    let claims = identity(&stack, &r[2], "admin").await;
    assert_eq!(claims["email"], "alice@example.com", "{claims}");
    assert_idp_sign_in_form(&stack, &r[3]);
    let bob = &r[4];
    assert_eq!((bob.url.as_str(), bob.status), (admin.as_str(), Some(403)));
    assert_portcullis_page(
        bob,
        403,
        "Access denied",
        &[
            "You are signed in as bob@example.com, and this account is not allowed to use admin.",
            "Sign out",
        ],
    );
    // The decision's audit line: Envoy's request id, who, and what was decided.
    assert_request_id_logged(
        &mut stack,
        bob,
        &[
            "decision",
            "email=\"bob@example.com\"",
            "outcome=\"forbidden\"",
        ],
    );
    assert!(
        !stack
            .echo_requests()
            .iter()
            .filter(|e| e.host().starts_with("admin."))
            .any(|e| echoed_email(e).as_deref() != Some("alice@example.com")),
        "someone but alice reached the admin app"
    );

    // 3.
    let me = &r[5];
    assert_portcullis_page(me, 200, "Signed in", &[]);
    let rows = user_rows(me);
    assert_eq!(
        rows.get("Email").map(String::as_str),
        Some("alice@example.com"),
        "{rows:?}"
    );
    assert_eq!(
        rows.get("Groups").map(String::as_str),
        Some("admins"),
        "{rows:?}"
    );

    // 4.
    assert_signed_out(&r[6], &format!("{auth}/.portcullis/sign_out"), &idp);
    // Both sessions ended: portcullis's (the app asks) and the IdP's (it shows its form
    // rather than signing alice straight back in).
    assert_idp_sign_in_form(&stack, &r[7]);
    let bob_out = &r[8];
    assert_signed_out(bob_out, &format!("{admin}.portcullis/sign_out"), &idp);
    assert!(
        bob_out.visited(&format!("{auth}/.portcullis/sign_out?t=")),
        "the route host hands the sign-out on to the auth host:\n{}",
        bob_out.trail()
    );

    // 5. The IdP stops: once a probe has found it down, a new visitor gets portcullis's
    // 503 page rather than a redirect to an address that answers nothing (the browser's own
    // error page) or a stack trace.
    stack.proc_mut("idp").stop();
    // Waiting on the log, not by asking: sign-ins are limited per address.
    let portcullis = stack.proc_mut("portcullis");
    let noticed = testkit::poll_until(std::time::Duration::from_secs(10), || {
        let seen = portcullis
            .log_text()
            .contains("identity provider unreachable");
        async move { seen.then_some(()) }
    })
    .await;
    assert!(
        noticed.is_some(),
        "portcullis still sends browsers to the stopped IdP after 10 s (probe every 1 s)"
    );
    let r = walk(&ca, &[Step::goto("walk-5-idp-stopped", "carol", &app)]);
    assert_idp_unavailable(
        &mut stack,
        &r[0],
        &auth,
        "while the identity provider is unreachable",
    );

    // And a portcullis that starts while the IdP is down has not discovered it: the same.
    stack.restart_portcullis_without_the_idp().await;
    let r = walk(&ca, &[Step::goto("walk-5-idp-down-at-start", "dave", &app)]);
    assert_idp_unavailable(
        &mut stack,
        &r[0],
        &auth,
        "before the identity provider was discovered",
    );
}

/// The step ended on portcullis's 503 page at the auth host's sign-in, its request id in a
/// log line that says `why`.
fn assert_idp_unavailable(stack: &mut Stack, down: &StepReport, auth: &str, why: &str) {
    assert!(
        down.url.starts_with(&format!("{auth}/.portcullis/sign_in")),
        "{}\n{}",
        down.url,
        down.trail()
    );
    assert_portcullis_page(
        down,
        503,
        "Sign-in unavailable",
        &["The identity provider cannot be reached right now. Please try again in a moment."],
    );
    assert!(!down.text.contains("panicked"), "{}", down.text);
    assert_request_id_logged(stack, down, &[why]);
}

/// The email in the identity JWT the echo app received (not verified: only to tell who
/// got through).
fn echoed_email(e: &EchoRequest) -> Option<String> {
    let payload = e.header(IDENTITY_HEADER)?.split('.').nth(1)?;
    let json = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&json).ok()?;
    claims["email"].as_str().map(str::to_string)
}

#[tokio::test]
#[ignore = "tier browser: needs Debian's chromium and certutil, npm playwright-core, and the cockpit tier's parts; run scripts/test as root"]
async fn alice_reaches_the_cockpit_shell_in_chromium() {
    let cs = CockpitStack::start().await;
    let stack = &cs.stack;
    let cockpit = stack.url("cockpit", "/");
    let r = walk(
        &stack.certs.ca,
        &[
            Step::goto("cockpit-sign-in", "alice", &cockpit),
            Step::sign_in(
                "cockpit-signed-in",
                "alice",
                "alice",
                &stack.origin("cockpit"),
            ),
            Step::cockpit_shell("cockpit-shell", "alice", "alice"),
        ],
    );
    assert!(
        r[0].url.starts_with(&stack.idp_origin()),
        "the browser went to the IdP: {}",
        r[0].trail()
    );
    let shell = &r[2];
    assert_eq!(shell.current_username.as_deref(), Some("alice"));
    assert!(
        shell.title.ends_with("alice@cockpit.localhost"),
        "the shell's title names alice: {}",
        shell.title
    );
    assert!(
        shell.url.starts_with(&stack.origin("cockpit")),
        "{}",
        shell.url
    );
    assert_eq!(cs.cockpit.sessions_spawned(), 1, "one login, no form");
}
