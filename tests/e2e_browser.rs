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

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use testkit::chromium::{Step, StepReport, walk};
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
        r.url.starts_with(&format!("{}/interaction/", stack.idp_origin())),
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

/// One of portcullis's pages: its policy lets nothing but its own style load, and no one
/// keeps a copy.
fn assert_portcullis_page(r: &StepReport) {
    let header = |name: &str| r.headers.get(name).map(String::as_str).unwrap_or_default();
    assert!(
        header("content-security-policy").starts_with("default-src 'none';"),
        "step {}: {:?}",
        r.name,
        r.headers
    );
    assert_eq!(header("cache-control"), "no-store", "step {}", r.name);
    assert!(
        header("content-type").starts_with("text/html"),
        "step {}: {:?}",
        r.name,
        r.headers
    );
}

/// The request id the page shows, which must be the one portcullis logged for it (what an
/// admin greps for).
fn assert_request_id_logged(stack: &mut Stack, r: &StepReport) -> String {
    let id = r
        .request_id()
        .unwrap_or_else(|| panic!("step {}: no request id on the page:\n{}", r.name, r.text))
        .to_string();
    assert!(id.len() >= 8, "step {}: request id {id:?}", r.name);
    let log = stack.proc_mut("portcullis").log_text();
    assert!(
        log.lines().any(|l| l.contains(&id)),
        "step {}: request id {id} is in no portcullis log line",
        r.name
    );
    id
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

#[tokio::test]
#[ignore = "tier browser: needs Debian's chromium and certutil, npm playwright-core, Envoy and the dev IdP; run scripts/test as root"]
async fn the_pages_walked_in_chromium_sign_in_deny_show_sign_out_and_survive_the_idp_stopping() {
    let mut stack = Stack::start().await;
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
    ];
    let r = walk(&ca, &steps);

    // 1.
    assert_idp_sign_in_form(&stack, &r[0]);
    assert!(
        r[0].visited(&format!("{auth}/.portcullis/sign_in")),
        "through the auth host:\n{}",
        r[0].trail()
    );
    assert_eq!((r[1].url.as_str(), r[1].status), (app.as_str(), Some(200)));
    let claims = identity(&stack, &r[1], "app").await;
    assert_eq!(claims["email"], "alice@example.com", "{claims}");

    // 2.
    assert_eq!((r[2].url.as_str(), r[2].status), (admin.as_str(), Some(200)));
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
    assert_portcullis_page(bob);
    assert_eq!(bob.title, "Access denied");
    assert!(
        bob.text
            .contains("You are signed in as bob@example.com, and this account is not allowed to use admin."),
        "{}",
        bob.text
    );
    assert!(bob.text.contains("Sign out"), "{}", bob.text);
    assert_request_id_logged(&mut stack, bob);
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
    assert_eq!(me.status, Some(200), "{}", me.text);
    assert_portcullis_page(me);
    let rows = user_rows(me);
    assert_eq!(
        rows.get("Email").map(String::as_str),
        Some("alice@example.com"),
        "{rows:?}"
    );
    assert_eq!(rows.get("Groups").map(String::as_str), Some("admins"), "{rows:?}");

    // 4.
    let out = &r[6];
    assert!(
        out.requests
            .iter()
            .any(|n| n.method == "POST" && n.url == format!("{auth}/.portcullis/sign_out")),
        "the Sign out button POSTs:\n{}",
        out.trail()
    );
    assert!(
        out.visited(&format!("{idp}/session/end")),
        "RP-initiated logout at the IdP:\n{}",
        out.trail()
    );
    assert_eq!(out.status, Some(200));
    assert_portcullis_page(out);
    assert_eq!(out.title, "Signed out");
    assert!(
        out.text.contains("You have been signed out") && out.text.contains("Sign in again"),
        "{}",
        out.text
    );
    // Both sessions ended: portcullis's (the app asks) and the IdP's (it shows its form
    // rather than signing alice straight back in).
    assert_idp_sign_in_form(&stack, &r[7]);

    // 5. The IdP stops; a new visitor gets portcullis's page, not the browser's error page.
    stack.proc_mut("idp").stop();
    let r = walk(&ca, &[Step::goto("walk-5-idp-stopped", "carol", &app)]);
    let down = &r[0];
    assert_eq!(down.status, Some(503), "{}\n{}", down.url, down.text);
    assert!(
        down.url.starts_with(&format!("{auth}/.portcullis/sign_in")),
        "{}\n{}",
        down.url,
        down.trail()
    );
    assert_portcullis_page(down);
    assert_eq!(down.title, "Sign-in unavailable");
    assert!(
        down.text
            .contains("The identity provider cannot be reached right now. Please try again in a moment."),
        "{}",
        down.text
    );
    assert!(!down.text.contains("panicked"), "{}", down.text);
    assert_request_id_logged(&mut stack, down);
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
            Step::sign_in("cockpit-signed-in", "alice", "alice", &stack.origin("cockpit")),
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
    assert!(shell.url.starts_with(&stack.origin("cockpit")), "{}", shell.url);
    assert_eq!(cs.cockpit.sessions_spawned(), 1, "one login, no form");
}
