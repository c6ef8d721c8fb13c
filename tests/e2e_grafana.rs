//! Grafana JWT login, the standalone JWKS listener and key rotation, against real parts: the
//! IdP, the echo upstream, portcullis and Envoy of a [`Stack`], plus verifiers that are not
//! ours: Envoy's own `jwt_authn` filter, and `jose` configured the way Grafana checks tokens.
//!
//! Tier `stack`: they need Envoy, node and the demo's node modules (`scripts/test` sets them
//! up) and `openssl` (for the public halves of keys, as the README's rotation steps make them).

use std::fs;
use std::path::Path;
use std::process::Command;

use reqwest::StatusCode;
use reqwest::header::{CONNECTION, ORIGIN, UPGRADE};
use serde_json::{Value, json};
use testkit::grafana::{
    decode_jwt, grafana_verify, http_get, jose_verify, keygen, kid_of, kids, listener_jwks, now,
    public_key_file, public_key_file_in_process, sign_jwt, with_header_kid, with_payload,
};
use testkit::portcullis::with_keys;
use testkit::{Browser, EchoRequest, Stack, list, portcullis_bin, run, send};

const IDENTITY_HEADER: &str = "x-portcullis-jwt-assertion";
const GRAFANA_ROLE: &str = "role: { from_groups: { admins: Admin }, default: Viewer }";

/// A stack with the standalone JWKS listener and a `grafana` route mapping groups to roles.
async fn grafana_stack() -> Stack {
    Stack::builder()
        .jwks_listener()
        .route("grafana", "grafana", "{ any_authenticated_user: true }")
        .route_option("grafana", GRAFANA_ROLE)
        .start()
        .await
}

/// Parses the echo upstream's answer: the request as the app received it.
async fn echoed(response: reqwest::Response) -> EchoRequest {
    let url = response.url().clone();
    let body = response.text().await.expect("echo body is readable");
    let json = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{url} did not answer the echo's JSON ({e}): {body}"));
    EchoRequest::from_json(&json)
}

/// Signs `user` in through the route host `label` and returns the identity JWT the app got.
async fn sign_in(stack: &Stack, browser: &Browser, label: &str, user: &str) -> String {
    let start = stack.url(label, "/");
    let (response, visited) = browser.login(&start, user, user).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "{user} did not reach {start}; redirects:\n{}",
        list(&visited)
    );
    assert_eq!(response.url().as_str(), start, "{user} ended elsewhere");
    let seen = echoed(response).await;
    seen.header(IDENTITY_HEADER)
        .unwrap_or_else(|| panic!("{label} got no identity header: {seen:?}"))
        .to_string()
}

/// The identity JWT the app on route host `label` gets for a browser that is signed in already.
async fn token_on(stack: &Stack, browser: &Browser, label: &str) -> String {
    let start = stack.url(label, "/");
    let (response, visited) = browser.follow(&start).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "{start} with a session; redirects:\n{}",
        list(&visited)
    );
    let seen = echoed(response).await;
    seen.header(IDENTITY_HEADER)
        .unwrap_or_else(|| panic!("{label} got no identity header: {seen:?}"))
        .to_string()
}

/// Grafana's `expect_claims` for the grafana route, as the README recommends.
fn grafana_expect_claims(stack: &Stack) -> Value {
    json!({"iss": stack.origin("auth"), "aud": stack.authority("grafana")})
}

#[tokio::test]
#[ignore = "tier stack: needs Envoy and the dev IdP (node, examples/demo/node_modules); run scripts/test"]
async fn envoy_jwt_authn_accepts_our_tokens_and_rejects_tampered_and_expired_ones() {
    let mut stack = grafana_stack().await;
    let browser = stack.browser();
    let token = sign_in(&stack, &browser, "grafana", "alice").await;
    let verifier = stack
        .start_jwt_authn_envoy(&stack.authority("grafana"))
        .await;

    let ask = |token: Option<String>| {
        let url = format!("{verifier}/api/health");
        async move {
            let mut headers = Vec::new();
            if let Some(t) = &token {
                headers.push((IDENTITY_HEADER, t.as_str()));
            }
            let (status, _, body) = http_get(&url, &headers).await;
            (status, body)
        }
    };

    let (status, body) = ask(Some(token.clone())).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "verified\n"),
        "Envoy's jwt_authn (keys from the standalone JWKS listener) refused a real token"
    );

    let (status, body) = ask(None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "no token: {body}");
    assert!(body.contains("Jwt is missing"), "no token: {body}");

    // Alice's token with a changed claim and the original signature.
    let (_, mut claims) = decode_jwt(&token);
    claims["email"] = json!("mallory@example.com");
    let (status, body) = ask(Some(with_payload(&token, &claims))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "tampered token: {body}");
    assert!(body.contains("Jwt verification fails"), "tampered: {body}");

    // Signed with the stack's real key by another library, with a kid it computed itself.
    let key = stack.dir.join("secrets/signing_key.pem");
    let (header, claims) = decode_jwt(&token);
    let mut fresh = claims.clone();
    fresh["jti"] = json!(format!("fresh-{}", now()));
    let control = sign_jwt(&key, &fresh);
    assert_eq!(
        json!(control.kid),
        header["kid"],
        "the kid is not the RFC 7638 thumbprint jose computes for the signing key"
    );
    let (status, body) = ask(Some(control.token)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a fresh token signed by the same key (control): {body}"
    );

    let mut expired = claims.clone();
    expired["iat"] = json!(now() - 900);
    expired["exp"] = json!(now() - 600);
    let expired = sign_jwt(&key, &expired);
    let (status, body) = ask(Some(expired.token)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "expired token: {body}");
    assert!(body.contains("Jwt is expired"), "expired: {body}");

    // A real token for another route is refused by the audience check.
    let app_token = token_on(&stack, &browser, "app").await;
    let (status, body) = ask(Some(app_token)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "token for app: {body}");
    assert!(body.contains("Audiences in Jwt are not allowed"), "{body}");
}

#[tokio::test]
#[ignore = "tier stack: needs Envoy and the dev IdP (node, examples/demo/node_modules); run scripts/test"]
async fn grafana_signs_in_alice_as_admin_and_bob_as_viewer_including_the_live_websocket() {
    let stack = grafana_stack().await;
    let jwks_url = stack.jwks_listener_url();
    let expect = grafana_expect_claims(&stack);

    let alice = stack.browser();
    let token = sign_in(&stack, &alice, "grafana", "alice").await;
    let user = grafana_verify(&jwks_url, &token, &expect)
        .unwrap_or_else(|e| panic!("Grafana would refuse alice's token: {e}\n{token}"));
    assert_eq!(user.email, "alice@example.com", "{user:?}");
    assert_eq!(user.login, "alice", "username from preferred_username");
    assert_eq!(user.role, "Admin", "alice is in admins: {user:?}");
    assert!(!user.sub.is_empty());
    assert_eq!(
        json!(user.kid),
        listener_jwks(&stack).await["keys"][0]["kid"],
        "{user:?}"
    );
    // Grafana also accepts it with the header value prefixed by "Bearer ".
    grafana_verify(&jwks_url, &format!("Bearer {token}"), &expect)
        .expect("Grafana strips a Bearer prefix");

    let bob = stack.browser();
    let token = sign_in(&stack, &bob, "grafana", "bob").await;
    let user = grafana_verify(&jwks_url, &token, &expect)
        .unwrap_or_else(|e| panic!("Grafana would refuse bob's token: {e}\n{token}"));
    assert_eq!(
        (user.email.as_str(), user.login.as_str(), user.role.as_str()),
        ("bob@example.com", "bob", "Viewer"),
        "bob has no groups, so the default role: {user:?}"
    );

    // The verifier checks what Grafana checks: 60 s of leeway on exp, a required sub, and
    // keys picked by kid (tokens signed here with the stack's key, by jose).
    let key = stack.dir.join("secrets/signing_key.pem");
    let (_, claims) = decode_jwt(&token);
    let variant = |edit: &dyn Fn(&mut Value)| {
        let mut c = claims.clone();
        edit(&mut c);
        sign_jwt(&key, &c).token
    };
    let just_expired = variant(&|c| c["exp"] = json!(now() - 20));
    grafana_verify(&jwks_url, &just_expired, &expect).expect("within the 60 s leeway");
    let expired = variant(&|c| c["exp"] = json!(now() - 120));
    let refused = grafana_verify(&jwks_url, &expired, &expect).expect_err("expired");
    assert!(refused.contains("expired"), "{refused}");
    let no_sub = variant(&|c| {
        c.as_object_mut().unwrap().remove("sub");
    });
    let refused = grafana_verify(&jwks_url, &no_sub, &expect).expect_err("no sub");
    assert!(refused.contains("'sub'"), "{refused}");
    let wrong_kid = with_header_kid(&token, "not-a-published-kid");
    let refused = grafana_verify(&jwks_url, &wrong_kid, &expect).expect_err("unknown kid");
    assert!(refused.contains("no keys found"), "{refused}");

    // The other routes have no role mapping, and their tokens fail Grafana's expect_claims.
    let app_token = token_on(&stack, &alice, "app").await;
    assert_eq!(decode_jwt(&app_token).1.get("role"), None, "{app_token}");
    let refused = grafana_verify(&jwks_url, &app_token, &expect)
        .expect_err("Grafana must refuse a token issued for another route");
    assert!(refused.contains("audience"), "{refused}");

    // Grafana Live: the WebSocket upgrade carries the header too (Grafana keeps no session).
    let ws = alice
        .get(&stack.url("grafana", "/api/live/ws"))
        .header(CONNECTION, "Upgrade")
        .header(UPGRADE, "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header(ORIGIN, stack.origin("grafana"));
    let response = send(ws).await;
    assert_eq!(
        response.status(),
        StatusCode::SWITCHING_PROTOCOLS,
        "the Live WebSocket upgrade through Envoy"
    );
    drop(response);
    let upgrades: Vec<EchoRequest> = stack
        .echo_requests()
        .into_iter()
        .filter(|r| r.path == "/api/live/ws")
        .collect();
    assert_eq!(upgrades.len(), 1, "echo log: {upgrades:?}");
    let upgrade = &upgrades[0];
    assert_eq!(
        upgrade.header("upgrade").map(str::to_ascii_lowercase),
        Some("websocket".into()),
        "{upgrade:?}"
    );
    assert_eq!(upgrade.host(), stack.authority("grafana"));
    let token = upgrade
        .header(IDENTITY_HEADER)
        .unwrap_or_else(|| panic!("the WebSocket upgrade had no identity header: {upgrade:?}"));
    let user = grafana_verify(&jwks_url, token, &expect)
        .unwrap_or_else(|e| panic!("Grafana would refuse the upgrade's token: {e}"));
    assert_eq!(
        (user.login.as_str(), user.role.as_str()),
        ("alice", "Admin")
    );
}

/// Points `signing_key_file` at `signing` and `published_key_files` at `published`
/// (relative to the stack's dir), as an operator edits the config between rotation steps.
fn set_keys(config: &Path, signing: &str, published: &[&str]) {
    let text = fs::read_to_string(config).unwrap();
    fs::write(config, with_keys(&text, signing, published)).unwrap();
}

#[tokio::test]
#[ignore = "tier stack: needs Envoy, the dev IdP (node, examples/demo/node_modules) and openssl; run scripts/test"]
async fn key_rotation_in_three_steps_rejects_no_token_along_the_way() {
    let mut stack = Stack::builder().jwks_listener().start().await;
    let scratch = stack.dir.clone();
    let app = stack.authority("app");
    let verify = |jwks: &Value, token: &str| jose_verify(&scratch, jwks, token, &app);

    // Step 0: one key, the one the stack was made with.
    let jwks0 = listener_jwks(&stack).await;
    let old_kid = kids(&jwks0).pop().expect("one key");
    assert_eq!(kids(&jwks0), std::slice::from_ref(&old_kid));
    let t0 = sign_in(&stack, &stack.browser(), "app", "alice").await;
    assert_eq!(kid_of(&t0), old_kid);

    let next = stack.dir.join("secrets/next_key.pem");
    keygen(&next);
    public_key_file(&next);
    public_key_file(&stack.dir.join("secrets/signing_key.pem"));

    // Step 1: publish the new key, keep signing with the old one.
    set_keys(
        &stack.config,
        "secrets/signing_key.pem",
        &["secrets/next_key.pub.pem"],
    );
    stack.restart_portcullis().await;
    let jwks1 = listener_jwks(&stack).await;
    let new_kid = kids(&jwks1)
        .into_iter()
        .find(|k| *k != old_kid)
        .unwrap_or_else(|| panic!("step 1 publishes a second key: {jwks1}"));
    assert_eq!(kids(&jwks1), [old_kid.clone(), new_kid.clone()]);
    let t1 = sign_in(&stack, &stack.browser(), "app", "alice").await;
    assert_eq!(kid_of(&t1), old_kid, "step 1 still signs with the old key");
    for (what, token) in [("step 0", &t0), ("step 1", &t1)] {
        verify(&jwks1, token)
            .unwrap_or_else(|e| panic!("the {what} token fails against the step-1 JWKS: {e}"));
    }
    // A token signed with the new key (by jose) already verifies against the step-1 JWKS,
    // with the kid portcullis published for it.
    let mut claims = decode_jwt(&t1).1;
    claims["jti"] = json!("signed-by-next-key");
    let by_next = sign_jwt(&next, &claims);
    assert_eq!(by_next.kid, new_kid);
    verify(&jwks1, &by_next.token).expect("a new-key token against the step-1 JWKS");

    // Step 2: sign with the new key, keep publishing the old one.
    set_keys(
        &stack.config,
        "secrets/next_key.pem",
        &["secrets/signing_key.pub.pem"],
    );
    stack.restart_portcullis().await;
    let jwks2 = listener_jwks(&stack).await;
    assert_eq!(kids(&jwks2), [new_kid.clone(), old_kid.clone()]);
    let t2 = sign_in(&stack, &stack.browser(), "app", "alice").await;
    assert_eq!(kid_of(&t2), new_kid, "step 2 signs with the new key");
    verify(&jwks2, &t2).expect("a step-2 token against the step-2 JWKS");
    verify(&jwks2, &t1).expect("a token issued in step 1 against the step-2 JWKS");
    verify(&jwks1, &t2).expect("a step-2 token against a step-1 JWKS a verifier cached");
    // Why step 1 exists: a verifier still holding the step-0 JWKS could not check it.
    let err = verify(&jwks0, &t2).expect_err("the step-0 JWKS does not have the new key");
    assert!(err.contains("ERR_JWKS_NO_MATCHING_KEY"), "{err}");

    // Step 3: drop the old key.
    set_keys(&stack.config, "secrets/next_key.pem", &[]);
    stack.restart_portcullis().await;
    let jwks3 = listener_jwks(&stack).await;
    assert_eq!(
        kids(&jwks3),
        std::slice::from_ref(&new_kid),
        "only the new key is left"
    );
    let t3 = sign_in(&stack, &stack.browser(), "app", "alice").await;
    assert_eq!(kid_of(&t3), new_kid);
    verify(&jwks3, &t3).expect("a step-3 token against the step-3 JWKS");
    verify(&jwks3, &t2).expect("a step-2 token against the step-3 JWKS");
    // Old-key tokens fail now; in real life they expired (5 min) before step 3.
    let err = verify(&jwks3, &t1).expect_err("the old key is no longer published");
    assert!(err.contains("ERR_JWKS_NO_MATCHING_KEY"), "{err}");
}

#[tokio::test]
#[ignore = "tier stack: needs Envoy and the dev IdP (node, examples/demo/node_modules); run scripts/test"]
async fn the_jwks_has_an_etag_a_one_minute_max_age_and_is_one_document_everywhere() {
    let stack = grafana_stack().await;
    let url = stack.jwks_listener_url();

    let (status, headers, body) = http_get(&url, &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let header = |h: &reqwest::header::HeaderMap, name: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(header(&headers, "cache-control"), "max-age=60");
    assert!(
        header(&headers, "content-type").starts_with("application/json"),
        "{headers:?}"
    );
    let etag = header(&headers, "etag");
    assert!(
        etag.len() > 2 && etag.starts_with('"') && etag.ends_with('"'),
        "a quoted ETag: {headers:?}"
    );
    let jwks: Value = serde_json::from_str(&body).unwrap();

    let (status, again, body) = http_get(&url, &[("if-none-match", &etag)]).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED, "If-None-Match: {etag}");
    assert!(body.is_empty(), "304 has no body: {body}");
    assert_eq!(header(&again, "etag"), etag);
    assert_eq!(header(&again, "cache-control"), "max-age=60");
    let (status, _, _) = http_get(&url, &[("if-none-match", "\"something-else\"")]).await;
    assert_eq!(status, StatusCode::OK, "a different ETag gets the document");

    // One key, public members only, ES256, kid = RFC 7638 thumbprint (computed by jose).
    let keys = jwks["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 1, "{jwks}");
    let mut members: Vec<&str> = keys[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    members.sort();
    assert_eq!(
        members,
        ["alg", "crv", "kid", "kty", "use", "x", "y"],
        "{jwks}"
    );
    assert_eq!(
        (
            &keys[0]["kty"],
            &keys[0]["crv"],
            &keys[0]["alg"],
            &keys[0]["use"]
        ),
        (
            &json!("EC"),
            &json!("P-256"),
            &json!("ES256"),
            &json!("sig")
        )
    );
    let signed = sign_jwt(
        &stack.dir.join("secrets/signing_key.pem"),
        &json!({"sub": "x"}),
    );
    assert_eq!(json!(signed.kid), keys[0]["kid"]);

    // The same document (and validator) on the auth host through Envoy...
    let browser = stack.browser();
    let on_auth = stack.url("auth", "/.well-known/portcullis/jwks.json");
    let response = send(browser.get(&on_auth)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(response.headers(), "etag"), etag, "{on_auth}");
    assert_eq!(header(response.headers(), "cache-control"), "max-age=60");
    let through_envoy: Value = response.json().await.unwrap();
    assert_eq!(through_envoy, jwks, "{on_auth}");
    let response = send(browser.get(&on_auth).header("if-none-match", &etag)).await;
    assert_eq!(response.status(), StatusCode::NOT_MODIFIED, "{on_auth}");
    // ...on a route host, without signing in...
    let on_route = stack.url("grafana", "/.well-known/portcullis/jwks.json");
    let response = send(browser.get(&on_route)).await;
    assert_eq!(response.status(), StatusCode::OK, "{on_route}");
    assert_eq!(response.json::<Value>().await.unwrap(), jwks, "{on_route}");
    // ...and from `portcullis jwks -c`, for jwk_set_file.
    let out = run(Command::new(portcullis_bin())
        .arg("jwks")
        .arg("-c")
        .arg(&stack.config));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).expect("portcullis jwks prints JSON");
    assert_eq!(printed, jwks, "portcullis jwks -c");

    // The standalone listener serves the JWKS and health only: no sign-in, no user pages.
    let base = format!("http://127.0.0.1:{}", stack.ports.jwks);
    let (status, _, body) = http_get(&format!("{base}/healthz"), &[]).await;
    assert_eq!((status, body.trim()), (StatusCode::OK, "ok"));
    for path in [
        "/.portcullis/sign_in?rd=/",
        "/.portcullis/user",
        "/.portcullis/",
    ] {
        let (status, _, _) = http_get(&format!("{base}{path}"), &[]).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path} on the JWKS listener");
    }
}

/// A complete config but for the signing key, with real secrets beside it.
fn config_without_signing_key(dir: &Path) -> String {
    testkit::write_secrets(dir);
    "\
authenticate_url: https://auth.localhost:8443
idp:
  issuer: http://127.0.0.1:9000
  client_id: portcullis
  client_secret_file: secrets/client_secret
cookie:
  secret_file: secrets/cookie_secret
routes:
  - name: grafana
    from: https://grafana.localhost:8443
    to: http://127.0.0.1:3000
    policy: { any_authenticated_user: true }
"
    .to_string()
}

/// Runs `portcullis SUBCOMMAND -c config` and returns (exit code, stdout, stderr).
fn portcullis(subcommand: &str, config: &Path) -> (Option<i32>, String, String) {
    let out = run(Command::new(portcullis_bin())
        .arg(subcommand)
        .arg("-c")
        .arg(config));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_jwks_is_never_empty_a_config_without_a_usable_signing_key_is_refused() {
    let dir = testkit::temp_dir("no-signing-key");
    let base = config_without_signing_key(&dir);
    let config = dir.join("portcullis.yaml");

    fs::write(&config, &base).unwrap();
    for subcommand in ["check-config", "jwks", "serve"] {
        let (code, stdout, stderr) = portcullis(subcommand, &config);
        assert_eq!(
            code,
            Some(64),
            "{subcommand} without signing_key_file: {stderr}"
        );
        assert!(
            stderr.contains("signing_key_file: missing"),
            "{subcommand}: {stderr}"
        );
        assert!(
            !stdout.contains("keys"),
            "{subcommand} printed a JWKS: {stdout}"
        );
    }

    // Only a key portcullis can sign with will do; a public key is for published_key_files.
    public_key_file_in_process(&dir.join("secrets/signing_key.pem"));
    fs::write(
        &config,
        format!("{base}signing_key_file: secrets/signing_key.pub.pem\n"),
    )
    .unwrap();
    let (code, _, stderr) = portcullis("check-config", &config);
    assert_eq!(code, Some(64), "a public key as signing_key_file: {stderr}");
    assert!(stderr.contains("signing_key_file"), "{stderr}");

    // A published key that cannot be read is an error too, not a silently shorter JWKS.
    fs::write(
        &config,
        format!(
            "{base}signing_key_file: secrets/signing_key.pem\npublished_key_files: [secrets/missing.pub.pem]\n"
        ),
    )
    .unwrap();
    let (code, _, stderr) = portcullis("check-config", &config);
    assert_eq!(code, Some(64), "a missing published key: {stderr}");
    assert!(stderr.contains("published_key_files[0]"), "{stderr}");

    // And the control: with the signing key the same config is fine.
    fs::write(
        &config,
        format!("{base}signing_key_file: secrets/signing_key.pem\n"),
    )
    .unwrap();
    let (code, stdout, stderr) = portcullis("check-config", &config);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let _ = fs::remove_dir_all(&dir);
}
