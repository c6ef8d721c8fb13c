//! Programmatic access against the real IdP (npm oidc-provider) through Envoy: an ID token
//! the IdP issued at a sign-in (a code flow with PKCE as portcullis's client, done here like a
//! script would) reaches a route with `Authorization: Bearer`; tokens signed with the IdP's
//! real key but expired, for another audience or from another issuer, and tokens from
//! another key, get `401 invalid_token`; the upstream never sees the bearer header.
//!
//! Tier `stack`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, LOCATION, WWW_AUTHENTICATE};
use testkit::{Secrets, Stack, run, send};

const IDENTITY_HEADER: &str = "x-portcullis-jwt-assertion";

/// The IdP's ID token for `user` (password = user name), from the authorization code flow
/// with PKCE as the stack's client `portcullis`, stopped where the IdP sends the browser back
/// to portcullis: the code is exchanged here, as a CLI would.
async fn id_token(stack: &Stack, user: &str) -> String {
    let idp = stack.idp_origin();
    let http = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap();
    let discovery: serde_json::Value = http
        .get(format!("{idp}/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let endpoint = |k: &str| discovery[k].as_str().unwrap().to_string();
    let redirect_uri = stack.url("auth", "/.portcullis/oauth2/callback");
    let verifier = URL_SAFE_NO_PAD.encode(testkit::random_bytes(32));
    let challenge = URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ));
    let mut url = url::Url::parse(&endpoint("authorization_endpoint")).unwrap();
    url.query_pairs_mut()
        .append_pair("client_id", "portcullis")
        .append_pair("response_type", "code")
        .append_pair("scope", "openid email profile groups")
        .append_pair("redirect_uri", &redirect_uri)
        .append_pair("state", "cli-state")
        .append_pair("nonce", "cli-nonce")
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");

    let mut response = send(http.get(url.as_str())).await;
    let code = loop {
        let at = response.url().clone();
        if response.status().is_redirection() {
            let next = at
                .join(response.headers()[LOCATION].to_str().unwrap())
                .unwrap();
            if next.as_str().starts_with(&redirect_uri) {
                break next
                    .query_pairs()
                    .find(|(k, _)| k == "code")
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_else(|| panic!("no code in {next}"));
            }
            response = send(http.get(next.as_str())).await;
            continue;
        }
        let status = response.status();
        let body = response.text().await.unwrap();
        let mut form = testkit::html::forms(&body)
            .into_iter()
            .find(|f| f.method == "post" && f.has_field("login"))
            .unwrap_or_else(|| panic!("no login form at {at} ({status}):\n{body}"));
        form.set("login", user);
        form.set("password", user);
        let action = at.join(form.action.as_deref().unwrap_or("")).unwrap();
        response = send(http.post(action).form(&form.fields)).await;
    };

    let secret = std::fs::read_to_string(Secrets::in_dir(&stack.dir).client_secret).unwrap();
    let tokens: serde_json::Value = http
        .post(endpoint("token_endpoint"))
        .basic_auth("portcullis", Some(secret.trim()))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", &redirect_uri),
            ("code_verifier", &verifier),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = tokens["id_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no id_token: {tokens}"))
        .to_string();
    stack.note_secret(&token);
    token
}

/// The claims of a JWT (not verified: the IdP's own token, to copy and change).
fn claims(jwt: &str) -> serde_json::Value {
    serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(jwt.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap()
}

/// `claims` signed RS256 with the RSA key in `key` (kid: its thumbprint), by jose.
fn sign(stack: &Stack, key: &std::path::Path, claims: &serde_json::Value) -> String {
    let out = run(testkit::node_script("sign_jwt.mjs")
        .arg("--key-file")
        .arg(key)
        .args(["--alg", "RS256", "--claims", &claims.to_string()]));
    assert!(
        out.status.success(),
        "sign_jwt.mjs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let token = v["token"].as_str().unwrap().to_string();
    stack.note_secret(&token);
    token
}

/// Another RSA key, as an unrelated IdP would have.
fn foreign_key(stack: &Stack) -> std::path::PathBuf {
    let path = stack.dir.join("foreign-idp.pem");
    let out = run(std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&path));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

#[tokio::test]
#[ignore = "tier stack: needs Envoy and the dev IdP (node, examples/demo/node_modules); run scripts/test"]
async fn a_real_id_token_gets_in_through_envoy_and_bad_ones_get_invalid_token() {
    let stack = Stack::builder()
        .idp_option("bearer: {}")
        .export_idp_key()
        .start()
        .await;
    let client = stack.browser();
    let get = |path: &str, token: &str| {
        client
            .get(&stack.url("app", path))
            .header(ACCEPT, "application/json")
            .header(AUTHORIZATION, format!("Bearer {token}"))
    };

    // A real ID token from a sign-in at the IdP: the app gets the identity JWT, never the
    // bearer header.
    let alice = id_token(&stack, "alice").await;
    let response = send(get("/api/items", &alice)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let seen = stack.echo_requests().pop().unwrap();
    assert_eq!(seen.path, "/api/items");
    assert_eq!(
        seen.header("authorization"),
        None,
        "the bearer token reached the app"
    );
    let jwt = seen.header(IDENTITY_HEADER).expect("the identity JWT");
    let verified = stack.verify_jwt(jwt, &stack.authority("app")).await;
    assert_eq!(verified["payload"]["email"], "alice@example.com");
    assert_eq!(verified["payload"]["groups"][0], "admins");
    // The route's policy applies: bob's token opens the app, not the admins' host.
    let bob = id_token(&stack, "bob").await;
    let admin = send(
        client
            .get(&stack.url("admin", "/"))
            .header(ACCEPT, "application/json")
            .header(AUTHORIZATION, format!("Bearer {bob}")),
    )
    .await;
    assert_eq!(admin.status(), StatusCode::FORBIDDEN);
    assert_eq!(send(get("/", &bob)).await.status(), StatusCode::OK);

    // Tokens signed with the IdP's real key: the control is accepted, so each refusal below
    // is for its one changed claim.
    let key = stack.idp_key_file();
    let real = claims(&alice);
    let now = real["iat"].as_u64().unwrap();
    let control = sign(&stack, &key, &real);
    assert_eq!(
        send(get("/", &control)).await.status(),
        StatusCode::OK,
        "a token signed with the IdP's key as exported"
    );
    let with = |changes: serde_json::Value| {
        let mut c = real.clone();
        for (k, v) in changes.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let foreign = foreign_key(&stack);
    let calls = stack.echo_requests().len();
    let cases = [
        (
            "expired an hour ago",
            sign(
                &stack,
                &key,
                &with(serde_json::json!({"iat": now - 7200, "exp": now - 3600})),
            ),
        ),
        (
            "for another audience",
            sign(
                &stack,
                &key,
                &with(serde_json::json!({"aud": "another-client"})),
            ),
        ),
        (
            "from another issuer",
            sign(
                &stack,
                &key,
                &with(serde_json::json!({"iss": "https://idp.evil.example"})),
            ),
        ),
        (
            "from another IdP's key",
            sign(
                &stack,
                &foreign,
                &with(serde_json::json!({"iss": "https://idp.evil.example"})),
            ),
        ),
        ("with the real token's signature cut", {
            let mut t = alice.clone();
            t.truncate(t.len() - 4);
            t
        }),
    ];
    for (what, token) in &cases {
        let response = send(get("/", token)).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
        assert_eq!(
            response.headers()[WWW_AUTHENTICATE],
            "Bearer error=\"invalid_token\"",
            "{what}"
        );
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "invalid_token", "{what}");
    }
    assert_eq!(
        stack.echo_requests().len(),
        calls,
        "the app was called with a bad token"
    );
    for request in stack.echo_requests() {
        assert_eq!(request.header("authorization"), None);
    }
}
