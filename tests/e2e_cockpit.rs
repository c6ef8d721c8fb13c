//! Cockpit single sign-on, end to end: the real cockpit-ws (Debian's 287), the real Envoy,
//! the real IdP, portcullis, and Cockpit's own PAM stack with `portcullis pam-verify` in it.
//!
//! Tier `cockpit`; the `pam-verify` process tests need only node's jose (tier `stack`), and
//! the check of the examples runs everywhere. Chromium in the Cockpit shell is in
//! e2e_browser.rs (tier `browser`).
//!
//! The tests that start Cockpit edit `/etc/pam.d/cockpit` (and one edits
//! `/etc/cockpit/disallowed-users`): they hold a cross-process lock for their whole run and
//! undo their edits, also when they fail. They need root, cockpit-ws/-bridge/-system, the
//! local account `alice` and the demo's node modules: `scripts/test`
//! installs all of them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, SET_COOKIE};
use testkit::cockpit::{
    CockpitStack, DISALLOWED_USERS, PasswordUser, RestoreFile, TEST_ISSUER, hold_socket,
    jose_tokens, open_socket, pam_verify,
};
use testkit::{Browser, EchoRequest, list, portcullis_bin, repo, run, send, temp_dir};

/// PAM hands a module at most this many bytes of password (Linux-PAM `PAM_MAX_RESP_SIZE` - 1).
const PAM_MAX: usize = 511;

fn basic(user: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{secret}")))
}

/// Signs `user` in at `start` (a Cockpit page) and checks the browser lands back there.
async fn sign_in(browser: &Browser, start: &str, user: &str) -> reqwest::Response {
    let (response, visited) = browser.login(start, user, user).await;
    assert_eq!(
        response.url().as_str(),
        start,
        "{user} did not come back to {start}; redirects:\n{}",
        list(&visited)
    );
    response
}

/// The value of the `cockpit` cookie a response sets, if any.
fn cockpit_cookie(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("cockpit="))
        .map(|v| v.split(';').next().unwrap_or("").to_string())
}

/// `GET <url>` as Cockpit's login.js does it (XHR, JSON), optionally with a client-chosen
/// `Authorization`.
async fn cockpit_login(
    browser: &Browser,
    url: &str,
    authorization: Option<&str>,
) -> reqwest::Response {
    let mut request = browser
        .get(url)
        .header(ACCEPT, "application/json, text/plain, */*")
        .header("x-requested-with", "XMLHttpRequest");
    if let Some(a) = authorization {
        request = request.header(AUTHORIZATION, a);
    }
    send(request).await
}

/// The echo app's view of one request, from its JSON body.
async fn echoed(response: reqwest::Response) -> EchoRequest {
    let url = response.url().clone();
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{url}: {body}");
    EchoRequest::from_json(
        &serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: not JSON ({e}): {body}")),
    )
}

#[tokio::test]
#[ignore = "tier cockpit: needs root, cockpit-ws/-bridge/-system, the account alice, Envoy and the dev IdP; run scripts/test as root"]
async fn the_shells_socket_closes_within_the_bound_after_sign_out_and_reconnecting_is_refused() {
    // A 4-second bound on the Cockpit route (the default is 5 minutes).
    let cs = CockpitStack::start_with_websocket_bound(Some("4s")).await;
    let stack = &cs.stack;
    let browser = stack.browser();
    let home = stack.url("cockpit", "/");
    sign_in(&browser, &home, "alice").await;
    let login = cockpit_login(&browser, &stack.url("cockpit", "/cockpit/login"), None).await;
    assert_eq!(login.status(), StatusCode::OK, "{}", cs.cockpit.log_tail());
    let socket = stack
        .url("cockpit", "/cockpit/socket")
        .replacen("https://", "wss://", 1);
    let cookies = browser.cookie_header(&home).unwrap();

    // The shell's socket, held open as the shell holds it; alice signs out meanwhile.
    let held = {
        let (socket, cookies, origin) = (socket.clone(), cookies.clone(), stack.origin("cockpit"));
        std::thread::spawn(move || hold_socket(&socket, &cookies, &origin, 20_000))
    };
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let page = send(browser.get(&stack.url("cockpit", "/.portcullis/sign_out"))).await;
    browser.submit_form(page, &[]).await;
    let report = held.join().unwrap();
    eprintln!("held cockpit socket: {report}");
    assert_eq!(report["status"], 101, "{report}");
    assert_eq!(report["whoami"], "alice", "{report}");
    let closed_after = report["closed_after_ms"]
        .as_u64()
        .expect("the server ended it");
    assert!(
        closed_after <= 4_000 + 1_500,
        "closed {closed_after} ms after opening: beyond the 4 s bound"
    );
    // Cockpit's Reconnect is a new upgrade, which portcullis now refuses.
    let again = open_socket(&socket, &cookies, &stack.origin("cockpit"));
    assert_eq!(again["status"], 401, "{again}");
}

#[tokio::test]
#[ignore = "tier cockpit: needs root, cockpit-ws/-bridge/-system, the account alice, Envoy and the dev IdP; run scripts/test as root"]
async fn alice_signs_in_to_cockpit_and_the_bridge_runs_as_alice() {
    let cs = CockpitStack::start().await;
    let stack = &cs.stack;
    let browser = stack.browser();
    let home = stack.url("cockpit", "/");

    // Cockpit's login page, after the IdP: nothing reached cockpit-session yet.
    let page = sign_in(&browser, &home, "alice").await;
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(cs.cockpit.sessions_spawned(), 0);

    // login.js's first request: portcullis adds the credentials, PAM accepts them.
    let login = cockpit_login(&browser, &stack.url("cockpit", "/cockpit/login"), None).await;
    let status = login.status();
    let cookie = cockpit_cookie(&login);
    let body = login.text().await.unwrap();
    assert_eq!(
        status,
        StatusCode::OK,
        "GET /cockpit/login: {body}\n{}",
        cs.cockpit.log_tail()
    );
    assert!(
        cookie.as_deref().is_some_and(|c| !c.is_empty()),
        "no cockpit cookie"
    );
    assert!(body.contains("csrf-token"), "{body}");

    // The WebSocket, through Envoy, with both cookies: the bridge runs as alice.
    let socket = stack
        .url("cockpit", "/cockpit/socket")
        .replacen("https://", "wss://", 1);
    let cookies = browser.cookie_header(&home).unwrap();
    assert!(
        cookies.contains("_portcullis=") && cookies.contains("cockpit="),
        "{cookies}"
    );
    let report = open_socket(&socket, &cookies, &stack.origin("cockpit"));
    eprintln!("cockpit socket: {report}");
    assert_eq!(report["status"], 101, "{report}");
    assert_eq!(report["init"]["command"], "init", "{report}");
    assert_eq!(report["init"]["version"], 1, "{report}");
    assert_eq!(report["whoami"], "alice", "{report}");
    assert_eq!(report["user"]["Name"], "alice", "{report}");
    assert!(
        report["messages"][0]
            .as_str()
            .is_some_and(|m| m.starts_with("\n{\"command\":\"init\"")),
        "the first frame is the control channel's init: {report}"
    );

    // The socket needs the portcullis session too: the cockpit cookie alone is refused by
    // portcullis (401 for a WebSocket), before Cockpit.
    let only_cockpit = format!("cockpit={}", cookie.unwrap());
    let report = open_socket(&socket, &only_cockpit, &stack.origin("cockpit"));
    assert_eq!(report["status"], 401, "{report}");
    // And Cockpit still checks the Origin.
    let report = open_socket(&socket, &cookies, "https://evil.localhost");
    assert_eq!(report["status"], 403, "{report}");
}

#[tokio::test]
#[ignore = "tier cockpit: needs root, cockpit-ws/-bridge/-system, the account alice, Envoy and the dev IdP; run scripts/test as root"]
async fn the_url_root_sub_path_variant_logs_in_the_same_way() {
    let cs = CockpitStack::start().await;
    let stack = &cs.stack;
    let browser = stack.browser();
    let home = stack.url("apps", "/admin/");

    let page = sign_in(&browser, &home, "alice").await;
    assert_eq!(page.status(), StatusCode::OK);
    let login = cockpit_login(&browser, &stack.url("apps", "/admin/cockpit/login"), None).await;
    let status = login.status();
    let cookie = cockpit_cookie(&login);
    assert_eq!(
        status,
        StatusCode::OK,
        "GET /admin/cockpit/login: {}\n{}",
        login.text().await.unwrap(),
        cs.sub.log_tail()
    );
    assert!(cookie.is_some(), "no cockpit cookie");

    let socket = stack
        .url("apps", "/admin/cockpit/socket")
        .replacen("https://", "wss://", 1);
    let cookies = browser
        .cookie_header(&stack.url("apps", "/admin/cockpit/socket"))
        .unwrap();
    let report = open_socket(&socket, &cookies, &stack.origin("apps"));
    eprintln!("sub-path cockpit socket: {report}");
    assert_eq!(report["status"], 101, "{report}");
    assert_eq!(report["whoami"], "alice", "{report}");
    assert_eq!(report["user"]["Name"], "alice", "{report}");
    // It was the sub-path instance, not the one on cockpit.localhost.
    assert_eq!(cs.sub.sessions_spawned(), 1);
    assert_eq!(cs.cockpit.sessions_spawned(), 0);
}

#[tokio::test]
#[ignore = "tier cockpit: needs root, cockpit-ws/-bridge/-system, the account alice, Envoy and the dev IdP; run scripts/test as root"]
async fn only_the_login_request_carries_credentials_and_never_the_clients() {
    let cs = CockpitStack::start().await;
    let stack = &cs.stack;
    let probe = PasswordUser::create(&cs.lock);
    let stolen = basic(probe.name, &probe.password);

    // Control: the probe user's password does log in when it reaches cockpit-ws directly.
    let direct = reqwest::Client::new()
        .get(format!("{}/cockpit/login", cs.cockpit.upstream()))
        .header(AUTHORIZATION, &stolen)
        .send()
        .await
        .unwrap();
    assert_eq!(
        direct.status(),
        StatusCode::OK,
        "the control login with {}'s password failed",
        probe.name
    );
    let spawned_by_control = cs.cockpit.sessions_spawned();

    // 1. On a Cockpit route whose upstream is the echo app, see the headers themselves.
    let browser = stack.browser();
    sign_in(&browser, &stack.url("apps", "/echo/"), "alice").await;
    let login_url = stack.url("apps", "/echo/cockpit/login");
    let seen = echoed(cockpit_login(&browser, &login_url, Some(&stolen)).await).await;
    let credential = seen
        .header("authorization")
        .expect("the login request carries credentials");
    assert_ne!(credential, stolen, "the client's credentials went through");
    let decoded = String::from_utf8(
        STANDARD
            .decode(credential.strip_prefix("Basic ").expect("Basic scheme"))
            .unwrap(),
    )
    .unwrap();
    let (account, token) = decoded.split_once(':').unwrap();
    assert_eq!(account, "alice");
    eprintln!(
        "login token for alice on {}: {} bytes (PAM limit {PAM_MAX}); Authorization header {} bytes",
        stack.authority("apps"),
        token.len(),
        credential.len()
    );
    assert!(token.len() < PAM_MAX, "{} bytes", token.len());
    // Verified independently (jose) against the served JWKS.
    let cockpit_aud = format!("cockpit:{}", stack.authority("apps"));
    let jwt = stack.verify_jwt(token, &cockpit_aud).await;
    let payload = &jwt["payload"];
    assert_eq!(payload["sub"], "alice", "{jwt}");
    // Its own audience form and type, which identity JWTs never carry (token confusion).
    assert_eq!(payload["aud"], cockpit_aud, "{jwt}");
    assert_eq!(payload["iss"], stack.origin("auth"), "{jwt}");
    assert_eq!(jwt["header"]["typ"], "cockpit+jwt", "{jwt}");
    assert_eq!(
        payload["exp"].as_u64().unwrap() - payload["iat"].as_u64().unwrap(),
        60,
        "{jwt}"
    );
    let mut claims: Vec<&String> = payload.as_object().unwrap().keys().collect();
    claims.sort();
    assert_eq!(
        claims,
        ["aud", "exp", "iat", "iss", "jti", "sub"],
        "a compact token: {jwt}"
    );
    assert_eq!(jwt["header"]["alg"], "ES256");
    // ...and the PAM helper PAM runs accepts it for alice only.
    let ok = pam_verify(
        &cs.bin,
        &cs.jwks,
        &stack.origin("auth"),
        &[&stack.authority("apps")],
        Some("alice"),
        token.as_bytes(),
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let other = pam_verify(
        &cs.bin,
        &cs.jwks,
        &stack.origin("auth"),
        &[&stack.authority("apps")],
        Some(probe.name),
        token.as_bytes(),
    );
    assert!(!other.status.success());

    // Every other request on the route has the client's Authorization removed.
    for (method, path) in [
        ("GET", "/echo/"),
        ("GET", "/echo/cockpit/socket"),
        ("POST", "/echo/cockpit/login"),
        ("GET", "/echo/cockpit/login/x"),
        ("GET", "/echo/cockpit+app/login"),
    ] {
        let request = browser
            .request(method.parse().unwrap(), &stack.url("apps", path))
            .header(AUTHORIZATION, &stolen);
        let seen = echoed(send(request).await).await;
        assert_eq!(
            seen.header("authorization"),
            None,
            "{method} {path} kept the client's Authorization"
        );
    }

    // 2. The real Cockpit. Without a portcullis session the request never reaches Cockpit.
    let stranger = stack.browser();
    let login_url = stack.url("cockpit", "/cockpit/login");
    let refused = cockpit_login(&stranger, &login_url, Some(&stolen)).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(cockpit_cookie(&refused), None);
    let body = refused.text().await.unwrap();
    assert!(body.contains("sign_in_url"), "portcullis's 401: {body}");
    assert_eq!(
        cs.cockpit.requests_for("/cockpit/login"),
        1,
        "only the control request reached cockpit-ws:\n{}",
        cs.cockpit.log_tail()
    );

    // Signed in as alice and sending the probe user's password: Cockpit logs in alice. (The
    // auth host already knows alice: the hop to this host needs no form.)
    let (page, visited) = browser.follow(&stack.url("cockpit", "/")).await;
    assert_eq!(
        page.status(),
        StatusCode::OK,
        "redirects:\n{}",
        list(&visited)
    );
    let login = cockpit_login(&browser, &login_url, Some(&stolen)).await;
    assert_eq!(login.status(), StatusCode::OK);
    assert!(cockpit_cookie(&login).is_some());
    let cookies = browser.cookie_header(&stack.url("cockpit", "/")).unwrap();
    let socket = stack
        .url("cockpit", "/cockpit/socket")
        .replacen("https://", "wss://", 1);
    let report = open_socket(&socket, &cookies, &stack.origin("cockpit"));
    assert_eq!(report["status"], 101, "{report}");
    assert_eq!(
        report["whoami"], "alice",
        "Cockpit must log in alice, not {}: {report}",
        probe.name
    );
    assert_eq!(cs.cockpit.sessions_spawned(), spawned_by_control + 1);
}

#[tokio::test]
#[ignore = "tier cockpit: needs root, cockpit-ws/-bridge/-system, the account alice, Envoy and the dev IdP; run scripts/test as root"]
async fn bob_is_refused_before_cockpit() {
    let cs = CockpitStack::start().await;
    let stack = &cs.stack;
    let browser = stack.browser();
    let home = stack.url("cockpit", "/");

    // bob has no entry in the route's account table: portcullis's 403 page, naming him.
    let (page, visited) = browser.login(&home, "bob", "bob").await;
    assert_eq!(
        page.status(),
        StatusCode::FORBIDDEN,
        "redirects:\n{}",
        list(&visited)
    );
    let body = page.text().await.unwrap();
    assert!(body.contains("bob@example.com"), "{body}");

    let login = cockpit_login(&browser, &stack.url("cockpit", "/cockpit/login"), None).await;
    assert_eq!(login.status(), StatusCode::FORBIDDEN);
    assert_eq!(cockpit_cookie(&login), None);
    let with_password = cockpit_login(
        &browser,
        &stack.url("cockpit", "/cockpit/login"),
        Some(&basic("alice", "alice")),
    )
    .await;
    assert_eq!(with_password.status(), StatusCode::FORBIDDEN);
    let socket = stack
        .url("cockpit", "/cockpit/socket")
        .replacen("https://", "wss://", 1);
    let report = open_socket(
        &socket,
        &browser.cookie_header(&home).unwrap(),
        &stack.origin("cockpit"),
    );
    assert_eq!(report["status"], 403, "{report}");

    // cockpit-ws never saw a request, and never started cockpit-session.
    let log = fs::read_to_string(stack.dir.join("logs/cockpit-ws.log")).unwrap();
    assert!(
        !log.contains("queueing complete") && cs.cockpit.sessions_spawned() == 0,
        "cockpit-ws was asked:\n{log}"
    );
}

#[tokio::test]
#[ignore = "tier cockpit: needs root, cockpit-ws/-bridge/-system, the account alice, Envoy and the dev IdP; run scripts/test as root"]
async fn a_disallowed_user_is_refused_even_with_sso() {
    let cs = CockpitStack::start().await;
    let stack = &cs.stack;
    let browser = stack.browser();
    sign_in(&browser, &stack.url("cockpit", "/"), "alice").await;
    let login_url = stack.url("cockpit", "/cockpit/login");

    let original = fs::read(DISALLOWED_USERS).unwrap();
    {
        let list = RestoreFile::new(&cs.lock, DISALLOWED_USERS);
        list.append_line("alice");
        let login = cockpit_login(&browser, &login_url, None).await;
        assert_eq!(
            login.status(),
            StatusCode::UNAUTHORIZED,
            "alice is in {DISALLOWED_USERS}"
        );
        assert_eq!(cockpit_cookie(&login), None);
    }
    assert_eq!(
        fs::read(DISALLOWED_USERS).unwrap(),
        original,
        "{DISALLOWED_USERS} restored exactly"
    );
    // The same request works again once she is off the list.
    let login = cockpit_login(&browser, &login_url, None).await;
    assert_eq!(login.status(), StatusCode::OK);
    assert!(cockpit_cookie(&login).is_some());
}

// ---------------------------------------------------------------------------------------
// `portcullis pam-verify` as a process, the way pam_exec runs it
// ---------------------------------------------------------------------------------------

/// A signing key and the JWKS `portcullis jwks` prints for it.
fn pam_fixture() -> (PathBuf, PathBuf, PathBuf) {
    let dir = temp_dir("pam-verify");
    let secrets = testkit::write_secrets(&dir);
    let config = dir.join("portcullis.yaml");
    fs::write(
        &config,
        "\
authenticate_url: https://auth.localhost:8443
idp: { issuer: http://127.0.0.1:9, client_id: portcullis, client_secret_file: secrets/client_secret }
cookie: { secret_file: secrets/cookie_secret }
signing_key_file: secrets/signing_key.pem
routes:
  - { from: https://cockpit.localhost:8443, to: http://127.0.0.1:9090, policy: { any_authenticated_user: true }, cockpit: { account: preferred_username } }
",
    )
    .unwrap();
    let out = run(Command::new(portcullis_bin())
        .arg("jwks")
        .arg("-c")
        .arg(&config));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jwks = dir.join("jwks.json");
    fs::write(&jwks, &out.stdout).unwrap();
    (dir, secrets.signing_key, jwks)
}

#[test]
#[ignore = "tier stack: needs node and examples/demo/node_modules (jose); run scripts/test"]
fn pam_verify_accepts_only_a_fresh_token_for_this_host_and_account() {
    const AUD: &str = "cockpit.localhost:8443";
    let (dir, key, jwks) = pam_fixture();
    let bin = portcullis_bin();
    let tokens = jose_tokens(&key, AUD, "alice");
    let sizes: Vec<String> = tokens
        .iter()
        .map(|(k, v)| format!("{k}={}", v.len()))
        .collect();
    eprintln!("jose tokens (bytes): {}", sizes.join(" "));
    let valid = tokens["valid"].as_bytes();

    let check = |what: &str, pam_user: Option<&str>, input: &[u8], accept: bool, reason: &str| {
        let out = pam_verify(bin, &jwks, TEST_ISSUER, &[AUD], pam_user, input);
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("{what:>28}: {} | {}", out.status, stderr.trim());
        assert_eq!(
            out.status.success(),
            accept,
            "{what}: exit {}; stderr: {stderr}",
            out.status
        );
        assert!(
            !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
            "{what}: {stderr}"
        );
        assert!(
            stderr.starts_with("portcullis pam-verify: "),
            "{what}: a reason on stderr: {stderr}"
        );
        assert!(
            stderr.to_lowercase().contains(&reason.to_lowercase()),
            "{what}: expected {reason:?} in: {stderr}"
        );
        // Nothing on stdout: pam_exec would pass it on to the user as a message.
        assert!(out.stdout.is_empty(), "{what}: stdout {:?}", out.stdout);
    };

    check(
        "valid",
        Some("alice"),
        valid,
        true,
        "accepted token for alice",
    );
    // pam_exec expose_authtok writes the token followed by a NUL byte.
    let mut nul = valid.to_vec();
    nul.push(0);
    check("valid + NUL", Some("alice"), &nul, true, "accepted");
    let mut newline = valid.to_vec();
    newline.push(b'\n');
    check("valid + newline", Some("alice"), &newline, true, "accepted");
    check(
        "second audience",
        Some("alice"),
        jose_tokens(&key, "apps.localhost:8443", "alice")["valid"].as_bytes(),
        false,
        "audience",
    );

    for (case, reason) in [
        ("wrong_signature", "signature"),
        ("wrong_aud", "audience"),
        ("expired", "expired"),
        ("iat_in_future", "future"),
        ("wrong_account", "not \"alice\""),
        ("alg_none", "none"),
        ("hs256_public_key", "HS256"),
        ("no_kid", "kid"),
        ("truncated", "token"),
        // Token confusion: an identity JWT from the same key is never a Cockpit password.
        ("identity_jwt", "not a Cockpit login token"),
        ("no_typ", "not a Cockpit login token"),
        ("bare_aud", "audience"),
        ("wrong_iss", "issuer"),
    ] {
        check(case, Some("alice"), tokens[case].as_bytes(), false, reason);
    }
    check("for another PAM_USER", Some("bob"), valid, false, "account");
    check("empty", Some("alice"), b"", false, "no token");
    check("only a NUL", Some("alice"), b"\0", false, "no token");
    let garbage: Vec<u8> = (0..1 << 20).map(|i| b"AZaz09-_."[i % 9]).collect();
    check("1 MiB of garbage", Some("alice"), &garbage, false, "longer");
    let binary: Vec<u8> = (0..4096).map(|i| (i * 7 % 256) as u8).collect();
    check("binary junk", Some("alice"), &binary, false, "token");
    check("no PAM_USER", None, valid, false, "PAM_USER");
    // root never logs in by SSO, even with a genuine token for it; nor a system account.
    let root = jose_tokens(&key, AUD, "root");
    check(
        "root",
        Some("root"),
        root["valid"].as_bytes(),
        false,
        "root and system accounts",
    );
    let daemon = jose_tokens(&key, AUD, "daemon");
    check(
        "daemon (uid 1)",
        Some("daemon"),
        daemon["valid"].as_bytes(),
        false,
        "system accounts",
    );
    // Another issuer configured on the helper refuses portcullis's own token.
    let out = pam_verify(
        bin,
        &jwks,
        "https://other.localhost",
        &[AUD],
        Some("alice"),
        valid,
    );
    assert!(!out.status.success(), "a token from another issuer");

    let missing = dir.join("no-such-jwks.json");
    let out = pam_verify(bin, &missing, TEST_ISSUER, &[AUD], Some("alice"), valid);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("JWKS"));
    fs::remove_dir_all(dir).ok();
}

#[test]
#[ignore = "tier stack: needs node and examples/demo/node_modules (jose); run scripts/test"]
fn pam_verify_with_a_replay_dir_accepts_a_token_once() {
    const AUD: &str = "cockpit.localhost:8443";
    let (dir, key, jwks) = pam_fixture();
    let tokens = jose_tokens(&key, AUD, "alice");
    let replay = dir.join("replay");
    let attempt = |token: &str| {
        let mut child = Command::new(portcullis_bin())
            .args(["pam-verify", "--jwks"])
            .arg(&jwks)
            .args(["--issuer", TEST_ISSUER, "--audience", AUD, "--replay-dir"])
            .arg(&replay)
            .env("PAM_USER", "alice")
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("portcullis pam-verify starts");
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), token.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (first, why) = attempt(&tokens["valid"]);
    assert!(first, "first use is accepted: {why}");
    let (second, why) = attempt(&tokens["valid"]);
    assert!(
        !second && why.contains("already used"),
        "a replay is refused: {why}"
    );
    // A refused token is not recorded: it cannot fill the directory or block a good one.
    let (bad, _) = attempt(&tokens["expired"]);
    assert!(!bad);
    assert_eq!(fs::read_dir(&replay).unwrap().count(), 1);
    fs::remove_dir_all(dir).ok();
}

// ---------------------------------------------------------------------------------------
// The PAM edit and the examples
// ---------------------------------------------------------------------------------------

#[test]
fn the_cockpit_examples_match_what_portcullis_and_the_scripts_expect() {
    let examples = repo().join("examples/cockpit");
    // The PAM lines in the example are the ones testkit::cockpit::pam_block writes (the demo's
    // and the tests' block).
    let example = fs::read_to_string(examples.join("pam.d-cockpit")).unwrap();
    let rules = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(str::to_string)
            .collect()
    };
    let block = testkit::cockpit::pam_block(
        "x",
        Path::new("/usr/local/bin/portcullis"),
        Path::new("/etc/portcullis/jwks.json"),
        "https://auth.example.com",
        &["cockpit.example.com".to_string()],
    );
    assert_eq!(
        rules(&example),
        rules(&block),
        "examples/cockpit/pam.d-cockpit and testkit::cockpit::pam_block disagree"
    );

    let conf = fs::read_to_string(examples.join("cockpit.conf")).unwrap();
    for line in [
        "[WebService]",
        "Origins = https://cockpit.example.com wss://cockpit.example.com",
        "ProtocolHeader = X-Forwarded-Proto",
    ] {
        assert!(
            conf.lines().any(|l| l == line),
            "cockpit.conf lacks {line:?}"
        );
    }
    assert!(
        !conf.lines().any(|l| l.trim() == "[OAuth]"),
        "no [OAuth] section: it would make Cockpit's login page redirect on its own"
    );

    // The example routes are valid portcullis config.
    let (dir, _, _) = pam_fixture();
    let config = dir.join("portcullis.yaml");
    let base = fs::read_to_string(&config).unwrap();
    let base = &base[..base.find("routes:").unwrap()];
    let routes = fs::read_to_string(examples.join("portcullis-routes.yaml")).unwrap();
    fs::write(&config, format!("{base}{routes}")).unwrap();
    let out = run(Command::new(portcullis_bin())
        .arg("check-config")
        .arg("-c")
        .arg(&config));
    assert!(
        out.status.success(),
        "examples/cockpit/portcullis-routes.yaml: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "config OK: 2 routes"
    );
    fs::remove_dir_all(dir).ok();
}
