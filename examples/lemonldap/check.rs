//! Exercises LemonLDAP::NG through the test kit's launcher (`testkit/src/lemonldap.rs`) as
//! an OpenID Connect client would, and prints what it sees (the "Observed" section of
//! README.md comes from this). Run it with `examples/lemonldap/check.sh`, which builds it in
//! a throwaway crate that depends on the test kit.
//!
//! Not part of the test suite: a record of the IdP's behaviour, and a quick way to see
//! whether a newer LemonLDAP still behaves so.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use testkit::lemonldap as launcher;
use testkit::lemonldap::{Outcome, Portal, RpSettings};
use serde_json::{Value, json};

const REDIRECT: &str = "http://127.0.0.1:9/callback";
const AFTER_LOGOUT: &str = "http://127.0.0.1:9/signed-out";

fn b64url(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

fn random(n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut buf).unwrap();
    buf
}

fn form_urlencode(s: &str) -> String {
    reqwest::Url::parse_with_params("x:", &[("k", s)])
        .unwrap()
        .query()
        .unwrap()
        .trim_start_matches("k=")
        .to_string()
}

fn jwt_parts(token: &str) -> (Value, Value) {
    let mut it = token.split('.');
    let h = URL_SAFE_NO_PAD.decode(it.next().unwrap()).unwrap();
    let p = URL_SAFE_NO_PAD.decode(it.next().unwrap()).unwrap();
    (
        serde_json::from_slice(&h).unwrap(),
        serde_json::from_slice(&p).unwrap(),
    )
}

/// Checks a JWT's signature (RS256 against the JWKS, HS* with the client secret).
fn verify(token: &str, jwks: &Value, secret: &str) -> String {
    let (h, _) = jwt_parts(token);
    let alg = h["alg"].as_str().unwrap_or("?");
    let idx = token.rfind('.').unwrap();
    let (msg, sig) = (
        &token[..idx],
        URL_SAFE_NO_PAD.decode(&token[idx + 1..]).unwrap(),
    );
    let ok = match alg {
        "RS256" => {
            let key = jwks["keys"]
                .as_array()
                .unwrap()
                .iter()
                .find(|k| k["kid"] == h["kid"])
                .unwrap();
            let n = URL_SAFE_NO_PAD.decode(key["n"].as_str().unwrap()).unwrap();
            let e = URL_SAFE_NO_PAD.decode(key["e"].as_str().unwrap()).unwrap();
            ring::signature::RsaPublicKeyComponents { n, e }
                .verify(
                    &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                    msg.as_bytes(),
                    &sig,
                )
                .is_ok()
        }
        "HS512" | "HS256" | "HS384" => {
            let a = match alg {
                "HS256" => ring::hmac::HMAC_SHA256,
                "HS384" => ring::hmac::HMAC_SHA384,
                _ => ring::hmac::HMAC_SHA512,
            };
            let key = ring::hmac::Key::new(a, secret.as_bytes());
            ring::hmac::verify(&key, msg.as_bytes(), &sig).is_ok()
        }
        _ => false,
    };
    format!(
        "{alg} signature {}",
        if ok { "verified" } else { "NOT verified" }
    )
}

struct Flow {
    verifier: String,
    state: String,
    url: String,
}

fn auth_url(disc: &Value, client_id: &str, scope: &str, extra: &[(&str, &str)]) -> Flow {
    let verifier = b64url(&random(32));
    let challenge =
        b64url(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()).as_ref());
    let state = b64url(&random(12));
    let nonce = b64url(&random(12));
    let mut params = vec![
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", REDIRECT),
        ("scope", scope),
        ("state", &state),
        ("nonce", &nonce),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
    ];
    params.extend_from_slice(extra);
    let url =
        reqwest::Url::parse_with_params(disc["authorization_endpoint"].as_str().unwrap(), &params)
            .unwrap()
            .to_string();
    Flow {
        verifier,
        state,
        url,
    }
}

fn code_of(redirect: &str, flow: &Flow) -> Result<String, String> {
    let url = reqwest::Url::parse(redirect).unwrap();
    let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
    if q.get("state") != Some(&flow.state) {
        return Err(format!("state mismatch in {redirect}"));
    }
    q.get("code")
        .cloned()
        .ok_or_else(|| format!("no code: {redirect}"))
}

#[derive(Clone, Copy, Debug)]
enum Auth {
    /// RFC 6749 §2.3.1: form-urlencode id and secret, then base64.
    BasicRfc,
    /// base64 of the raw `id:secret` (what most clients send).
    BasicRaw,
    Post,
}

async fn exchange(
    http: &reqwest::Client,
    disc: &Value,
    client_id: &str,
    secret: &str,
    auth: Auth,
    mut form: Vec<(&str, String)>,
) -> (u16, Value) {
    let mut req = http.post(disc["token_endpoint"].as_str().unwrap());
    match auth {
        Auth::BasicRfc => {
            let cred = format!("{}:{}", form_urlencode(client_id), form_urlencode(secret));
            req = req.header("Authorization", format!("Basic {}", STANDARD.encode(cred)));
        }
        Auth::BasicRaw => {
            let cred = format!("{client_id}:{secret}");
            req = req.header("Authorization", format!("Basic {}", STANDARD.encode(cred)));
        }
        Auth::Post => {
            form.push(("client_id", client_id.to_string()));
            form.push(("client_secret", secret.to_string()));
        }
    }
    let resp = req.form(&form).send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(json!({ "raw": text })),
    )
}

fn summary(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        for k in ["access_token", "id_token", "refresh_token"] {
            if let Some(t) = o.get_mut(k) {
                let s = t.as_str().unwrap_or("").to_string();
                *t = json!(format!("<{} chars>", s.len()));
            }
        }
    }
    v
}

/// A URL without its query's long values.
fn short(url: &str) -> String {
    let Ok(mut u) = reqwest::Url::parse(url) else {
        return url.to_string();
    };
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .map(|(k, v)| {
            (
                k.into_owned(),
                if v.len() > 24 {
                    format!("{}…", &v[..12])
                } else {
                    v.into_owned()
                },
            )
        })
        .collect();
    if pairs.is_empty() {
        return url.to_string();
    }
    u.query_pairs_mut().clear().extend_pairs(pairs);
    u.to_string()
}

fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let pss = smaps
        .lines()
        .find(|l| l.starts_with("Pss:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    (rss, pss)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("FAILED: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), String> {
    if let Ok(n) = std::env::var("CHECK_STARTS") {
        return starts(n.parse().unwrap()).await;
    }
    if std::env::var_os("CHECK_EDGES").is_some() {
        return edges().await;
    }
    let base = PathBuf::from(
        std::env::var("CHECK_DIR")
            .unwrap_or_else(|_| format!("/tmp/llng-check-{}", std::process::id())),
    );
    let _ = std::fs::remove_dir_all(&base);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();

    // Secrets with '+', '/' and '='. The first one's raw base64 ("id:secret") happens to
    // have no '+' or '/'; the second one's has both (found below).
    let secret = "s3cr+t/with=chars~x";
    let mut rp = RpSettings::default_claims("portcullis", secret, REDIRECT);
    rp.post_logout_redirect_uris = vec![AFTER_LOGOUT.into()];
    rp.refresh_tokens = true;
    rp.front_channel_logout_url = Some("http://127.0.0.1:9/frontchannel-logout".into());
    rp.front_channel_logout_session_required = true;
    let secret_b = "x+y/z=??>>~~".to_string();
    let mut rp_b = RpSettings::default_claims("rp-b", &secret_b, REDIRECT);
    rp_b.post_logout_redirect_uris = vec![AFTER_LOGOUT.into()];
    let rp_c = RpSettings {
        logout_bypass_confirm: true,
        post_logout_redirect_uris: vec![AFTER_LOGOUT.into()],
        ..RpSettings::default_claims("rp-c", "secret-c", REDIRECT)
    };
    let rp_d = RpSettings {
        bypass_consent: true,
        post_logout_redirect_uris: vec![AFTER_LOGOUT.into()],
        front_channel_logout_url: Some("http://127.0.0.1:9/fc-d".into()),
        ..RpSettings::default_claims("rp-d", "secret-d", REDIRECT)
    };
    // Offline access without online refresh tokens.
    let rp_off = RpSettings {
        allow_offline: true,
        ..RpSettings::default_claims("rp-offline", "plain-secret", REDIRECT)
    };
    let rp_none = RpSettings {
        id_token_alg: "none".into(),
        ..RpSettings::default_claims("rp-none", "secret-none", REDIRECT)
    };
    let rps = [rp.clone(), rp_b, rp_c, rp_d, rp_off, rp_none];
    let opts = launcher::Options::default();

    // ---- start: cold (new state dir, key made), warm (same dir)
    let dir = base.join("default");
    let t = Instant::now();
    let mut llng = launcher::start_with(&dir, &rps, &opts).await?;
    println!(
        "== start (new state dir, RSA key generated): {:?}\n   {:?}",
        t.elapsed(),
        llng.startup_steps
    );
    llng.stop();
    let t = Instant::now();
    let llng = launcher::start_with(&dir, &rps, &opts).await?;
    println!(
        "== start again (same state dir, key kept): {:?}\n   {:?}",
        t.elapsed(),
        llng.startup_steps
    );
    for (name, pid) in llng.pids() {
        let (rss, pss) = rss_kib(pid);
        println!("   memory after start: {name} (pid {pid}) RSS {rss} KiB, PSS {pss} KiB");
    }
    println!("   issuer {}", llng.issuer);

    // ---- discovery and JWKS
    let disc: Value = http
        .get(llng.discovery_url())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    println!("== discovery");
    for k in [
        "issuer",
        "authorization_endpoint",
        "token_endpoint",
        "userinfo_endpoint",
        "end_session_endpoint",
        "jwks_uri",
        "token_endpoint_auth_methods_supported",
        "id_token_signing_alg_values_supported",
        "grant_types_supported",
        "response_types_supported",
        "scopes_supported",
        "claims_supported",
        "code_challenge_methods_supported",
        "backchannel_logout_supported",
        "frontchannel_logout_supported",
        "frontchannel_logout_session_supported",
    ] {
        println!("   {k}: {}", disc[k]);
    }
    let jwks: Value = http
        .get(disc["jwks_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let k0 = &jwks["keys"][0];
    println!(
        "== jwks: {} key(s); kty {} use {} alg {} kid {} n {} bytes",
        jwks["keys"].as_array().map(|a| a.len()).unwrap_or(0),
        k0["kty"],
        k0["use"],
        k0["alg"],
        k0["kid"],
        URL_SAFE_NO_PAD
            .decode(k0["n"].as_str().unwrap_or(""))
            .map(|n| n.len())
            .unwrap_or(0)
    );

    // ---- sign-in: login form, consent, redirect
    let portal = Portal::new(&llng.issuer)?;
    let flow = auth_url(&disc, "portcullis", "openid profile email", &[]);
    let t = Instant::now();
    let redirect = portal.authorize(&flow.url, "dwho", "dwho").await?;
    println!(
        "== sign-in as dwho (login form + consent) in {:?}\n   -> {}",
        t.elapsed(),
        redirect.split("code=").next().unwrap()
    );
    let code = code_of(&redirect, &flow)?;

    // ---- code exchange, three ways, each on a fresh code (SSO: no password the next time)
    let mut tokens = Value::Null;
    let mut offline_refresh: Option<String> = None;
    println!("== token endpoint, secret {secret:?}");
    println!(
        "   base64(raw id:secret) = {} (has + or /: {})",
        STANDARD.encode(format!("portcullis:{secret}")),
        STANDARD
            .encode(format!("portcullis:{secret}"))
            .contains(['+', '/'])
    );
    let mut code = Some(code);
    let mut flow = flow;
    for auth in [Auth::BasicRfc, Auth::BasicRaw, Auth::Post] {
        let c = match code.take() {
            Some(c) => c,
            None => {
                flow = auth_url(&disc, "portcullis", "openid profile email", &[]);
                let r = portal.authorize(&flow.url, "dwho", "dwho").await?;
                code_of(&r, &flow)?
            }
        };
        let (status, body) = exchange(
            &http,
            &disc,
            "portcullis",
            secret,
            auth,
            vec![
                ("grant_type", "authorization_code".into()),
                ("code", c),
                ("redirect_uri", REDIRECT.into()),
                ("code_verifier", flow.verifier.clone()),
            ],
        )
        .await;
        println!("   {auth:?}: {status} {}", summary(&body));
        if status == 200 && tokens.is_null() {
            tokens = body;
        }
    }
    if tokens.is_null() {
        return Err("no code exchange succeeded".into());
    }
    let raw_b = STANDARD.encode(format!("rp-b:{secret_b}"));
    println!("   secret {secret_b:?}: base64(raw id:secret) = {raw_b}");
    for auth in [Auth::BasicRfc, Auth::BasicRaw, Auth::Post] {
        let f = auth_url(&disc, "rp-b", "openid", &[]);
        let c = code_of(&portal.authorize(&f.url, "dwho", "dwho").await?, &f)?;
        let (status, body) = exchange(
            &http,
            &disc,
            "rp-b",
            &secret_b,
            auth,
            vec![
                ("grant_type", "authorization_code".into()),
                ("code", c),
                ("redirect_uri", REDIRECT.into()),
                ("code_verifier", f.verifier),
            ],
        )
        .await;
        println!("   {auth:?}: {status} {}", summary(&body));
    }

    // ---- ID token vs UserInfo
    let id_token = tokens["id_token"].as_str().unwrap().to_string();
    let (h, p) = jwt_parts(&id_token);
    println!("== id_token header {h}");
    println!("   {}", verify(&id_token, &jwks, secret));
    println!("   payload {p}");
    let access = tokens["access_token"].as_str().unwrap();
    let ui = http
        .get(disc["userinfo_endpoint"].as_str().unwrap())
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    let (ui_status, ui_type) = (ui.status(), ui.headers().get("content-type").cloned());
    let ui_text = ui.text().await.unwrap();
    println!("== userinfo ({ui_status}, {ui_type:?}) {ui_text}");
    let claims: Value = serde_json::from_str(&ui_text).unwrap();
    let dwho = llng.user("dwho").unwrap();
    let agree = claims["sub"] == dwho.sub
        && claims["email"] == dwho.email
        && claims["name"] == dwho.name
        && claims["groups"] == json!(dwho.groups);
    println!("   launcher::DEMO_USERS agrees with UserInfo (groups in order): {agree}");
    let ui_post = http
        .post(disc["userinfo_endpoint"].as_str().unwrap())
        .form(&[("access_token", access)])
        .send()
        .await
        .unwrap();
    println!("   (access_token in a POST body: {})", ui_post.status());

    // ---- refresh token
    if let Some(rt) = tokens["refresh_token"].as_str() {
        let (status, body) = exchange(
            &http,
            &disc,
            "portcullis",
            secret,
            Auth::Post,
            vec![
                ("grant_type", "refresh_token".into()),
                ("refresh_token", rt.into()),
            ],
        )
        .await;
        println!(
            "== refresh (online refresh token): {status} {}",
            summary(&body)
        );
        if let Some(t) = body["id_token"].as_str() {
            println!("   refreshed id_token payload {}", jwt_parts(t).1);
        }
    } else {
        println!("== no refresh_token in the code response");
    }

    // ---- offline_access (RP "portcullis" has RefreshToken=1 and no AllowOffline; RP
    // "rp-offline" the other way round)
    for (rp_id, rp_secret, label, extra) in [
        (
            "portcullis",
            secret,
            "portcullis (RefreshToken=1, AllowOffline=0), scope openid offline_access",
            vec![],
        ),
        (
            "rp-offline",
            "plain-secret",
            "rp-offline (RefreshToken=0, AllowOffline=1), scope openid",
            vec![],
        ),
        (
            "rp-offline",
            "plain-secret",
            "rp-offline, scope openid offline_access",
            vec![],
        ),
        (
            "rp-offline",
            "plain-secret",
            "rp-offline, scope openid offline_access, prompt=consent",
            vec![("prompt", "consent")],
        ),
    ] {
        let scope = if label.ends_with("scope openid") {
            "openid"
        } else {
            "openid offline_access"
        };
        let f = auth_url(&disc, rp_id, scope, &extra);
        let r = portal.authorize(&f.url, "dwho", "dwho").await?;
        let c = code_of(&r, &f)?;
        let (status, body) = exchange(
            &http,
            &disc,
            rp_id,
            rp_secret,
            Auth::Post,
            vec![
                ("grant_type", "authorization_code".into()),
                ("code", c),
                ("redirect_uri", REDIRECT.into()),
                ("code_verifier", f.verifier),
            ],
        )
        .await;
        println!("== {label}: {status} {}", summary(&body));
        if let Some(rt) = body["refresh_token"]
            .as_str()
            .filter(|_| rp_id == "rp-offline")
        {
            offline_refresh = Some(rt.to_string());
        }
    }

    // ---- alg none
    {
        let f = auth_url(&disc, "rp-none", "openid", &[]);
        let c = code_of(&portal.authorize(&f.url, "dwho", "dwho").await?, &f)?;
        let (status, body) = exchange(
            &http,
            &disc,
            "rp-none",
            "secret-none",
            Auth::Post,
            vec![
                ("grant_type", "authorization_code".into()),
                ("code", c),
                ("redirect_uri", REDIRECT.into()),
                ("code_verifier", f.verifier),
            ],
        )
        .await;
        let t = body["id_token"].as_str().unwrap_or("");
        println!(
            "== IDTokenSignAlg none: {status}; id_token has {} dot-separated parts, ends with '.': {}; header {}",
            t.split('.').count(),
            t.ends_with('.'),
            jwt_parts(t).0
        );
    }

    // ---- PKCE: wrong verifier; no challenge
    let f = auth_url(&disc, "portcullis", "openid", &[]);
    let c = code_of(&portal.authorize(&f.url, "dwho", "dwho").await?, &f)?;
    let (status, body) = exchange(
        &http,
        &disc,
        "portcullis",
        secret,
        Auth::Post,
        vec![
            ("grant_type", "authorization_code".into()),
            ("code", c),
            ("redirect_uri", REDIRECT.into()),
            (
                "code_verifier",
                "wrong-verifier-wrong-verifier-wrong-verifier-x".into(),
            ),
        ],
    )
    .await;
    println!("== PKCE with a wrong code_verifier: {status} {body}");

    // ---- wrong password, fresh browser
    let f = auth_url(&disc, "portcullis", "openid", &[]);
    match launcher::sign_in(&f.url, "dwho", "nope").await {
        Ok(r) => println!("== wrong password: redirect {r}"),
        Err(e) => println!("== wrong password: {e}"),
    }

    // ---- RP-initiated logout
    let end = launcher::end_session_url(
        disc["end_session_endpoint"].as_str().unwrap(),
        Some(&id_token),
        Some(AFTER_LOGOUT),
        Some("logout-state-1"),
    )?;
    // What the portal shows first (no following), to record the confirmation page.
    let first = portal.client().get(&end).send().await.unwrap();
    let first_status = first.status();
    let first_body = first.text().await.unwrap();
    println!(
        "== end_session GET: {first_status}, confirmation form: {}, iframe: {}",
        first_body.contains("name=\"confirm\""),
        first_body.contains("<iframe")
    );
    let t = Instant::now();
    match portal.end_session(&end).await? {
        Outcome::Redirect(u) => println!("   after confirming: redirect {u} ({:?})", t.elapsed()),
        Outcome::FormPost { url, .. } => println!("   after confirming: form_post {url}"),
        Outcome::Page {
            url,
            status,
            messages,
            login_form,
        } => println!(
            "   after confirming: page {status} {} login_form={login_form}: {messages:?}",
            short(&url)
        ),
    }
    println!(
        "   front-channel iframes loaded on the way: {:?}",
        portal.frames()
    );
    // Refresh tokens after the SSO session ended.
    if let Some(rt) = tokens["refresh_token"].as_str() {
        let (status, body) = exchange(
            &http,
            &disc,
            "portcullis",
            secret,
            Auth::Post,
            vec![
                ("grant_type", "refresh_token".into()),
                ("refresh_token", rt.into()),
            ],
        )
        .await;
        println!(
            "   online refresh token after logout: {status} {}",
            summary(&body)
        );
    }
    if let Some(rt) = &offline_refresh {
        let (status, body) = exchange(
            &http,
            &disc,
            "rp-offline",
            "plain-secret",
            Auth::Post,
            vec![
                ("grant_type", "refresh_token".into()),
                ("refresh_token", rt.clone()),
            ],
        )
        .await;
        println!(
            "   offline refresh token after logout: {status} {}",
            summary(&body)
        );
    }
    let ui = http
        .get(disc["userinfo_endpoint"].as_str().unwrap())
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    println!(
        "   UserInfo with the old access token after logout: {}",
        ui.status()
    );
    // A sign-in the browser abandons at the login form, then a new one in the same browser.
    let abandoned = auth_url(&disc, "portcullis", "openid", &[]);
    match portal.walk(&abandoned.url, None).await {
        Ok(o) => println!("   authorize after logout: {o:?}"),
        Err(e) => println!(
            "   authorize after logout: {}",
            e.split(" at http").next().unwrap()
        ),
    }
    let f = auth_url(&disc, "portcullis", "openid", &[]);
    let r = portal.authorize(&f.url, "dwho", "dwho").await?;
    let got = reqwest::Url::parse(&r)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned());
    println!(
        "   new authorization in the same browser after an abandoned one: redirect carries the {} request's state",
        if got.as_deref() == Some(abandoned.state.as_str()) {
            "ABANDONED"
        } else if got.as_deref() == Some(f.state.as_str()) {
            "new"
        } else {
            "??"
        }
    );

    // ---- RP-initiated logout from a browser that used one RP: rp-b (consent, logout
    // confirmation), rp-c (consent, no logout confirmation), rp-d (no consent, logout
    // confirmation, front-channel URL). Each case in a new browser; a user's consent is
    // remembered (persistent session), so only a user's first sign-in to an RP shows it.
    async fn signed_in(
        issuer: &str,
        disc: &Value,
        http: &reqwest::Client,
        rp: &str,
        secret: &str,
        user: &str,
    ) -> Result<(Portal, String), String> {
        let portal = Portal::new(issuer)?;
        let f = auth_url(disc, rp, "openid", &[]);
        let c = code_of(&portal.authorize(&f.url, user, user).await?, &f)?;
        let (_, body) = exchange(
            http,
            disc,
            rp,
            secret,
            Auth::Post,
            vec![
                ("grant_type", "authorization_code".into()),
                ("code", c),
                ("redirect_uri", REDIRECT.into()),
                ("code_verifier", f.verifier),
            ],
        )
        .await;
        Ok((portal, body["id_token"].as_str().unwrap_or("").to_string()))
    }
    let endpoint = disc["end_session_endpoint"].as_str().unwrap();
    for (rp_id, rp_secret, user, label, hint, post, state) in [
        (
            "rp-b",
            secret_b.as_str(),
            "rtyler",
            "id_token_hint + registered post_logout_redirect_uri + state",
            true,
            Some(AFTER_LOGOUT),
            Some("st-b"),
        ),
        (
            "rp-b",
            secret_b.as_str(),
            "rtyler",
            "id_token_hint + registered post_logout_redirect_uri + state",
            true,
            Some(AFTER_LOGOUT),
            Some("st-b"),
        ),
        (
            "rp-b",
            secret_b.as_str(),
            "rtyler",
            "registered post_logout_redirect_uri, no id_token_hint",
            false,
            Some(AFTER_LOGOUT),
            None,
        ),
        (
            "rp-b",
            secret_b.as_str(),
            "rtyler",
            "id_token_hint, no post_logout_redirect_uri",
            true,
            None,
            None,
        ),
        (
            "rp-b",
            secret_b.as_str(),
            "rtyler",
            "id_token_hint + unregistered post_logout_redirect_uri",
            true,
            Some("http://127.0.0.1:9/elsewhere"),
            None,
        ),
        (
            "rp-c",
            "secret-c",
            "msmith",
            "id_token_hint + registered post_logout_redirect_uri + state",
            true,
            Some(AFTER_LOGOUT),
            Some("st-c"),
        ),
        (
            "rp-c",
            "secret-c",
            "msmith",
            "id_token_hint + registered post_logout_redirect_uri + state",
            true,
            Some(AFTER_LOGOUT),
            Some("st-c"),
        ),
        (
            "rp-d",
            "secret-d",
            "msmith",
            "id_token_hint + registered post_logout_redirect_uri + state",
            true,
            Some(AFTER_LOGOUT),
            Some("st-d"),
        ),
        (
            "rp-d",
            "secret-d",
            "msmith",
            "id_token_hint, no post_logout_redirect_uri",
            true,
            None,
            None,
        ),
    ] {
        let (portal, id_token) =
            signed_in(&llng.issuer, &disc, &http, rp_id, rp_secret, user).await?;
        let signin = portal.trail();
        let url =
            launcher::end_session_url(endpoint, hint.then_some(id_token.as_str()), post, state)?;
        let outcome = portal.end_session(&url).await?;
        let logout: Vec<String> = portal.trail()[signin.len()..]
            .iter()
            .map(|t| short(t.trim_start_matches("redirect ")))
            .collect();
        let f = auth_url(&disc, rp_id, "openid", &[]);
        let after = match portal.walk(&f.url, None).await? {
            Outcome::Page {
                login_form: true, ..
            } => "SSO session gone",
            _ => "SSO session STILL THERE",
        };
        let end = match outcome {
            Outcome::Redirect(u) => format!("redirect {u}"),
            Outcome::FormPost { url, .. } => format!("form_post {url}"),
            Outcome::Page {
                url,
                status,
                messages,
                login_form,
            } => {
                format!(
                    "page {status} {} login_form={login_form} {messages:?}",
                    short(&url)
                )
            }
        };
        let signin: Vec<String> = signin
            .iter()
            .map(|t| {
                if t.starts_with("redirect ") {
                    "redirect to the RP".into()
                } else {
                    t.clone()
                }
            })
            .collect();
        println!(
            "== logout {rp_id} ({user}), {label}\n   sign-in went through {signin:?}\n   logout went through {logout:?}, iframes loaded {:?}\n   -> {end}; {after}",
            portal.frames()
        );
    }
    // No session at all (e.g. it expired): a fresh browser.
    let url = launcher::end_session_url(endpoint, None, Some(AFTER_LOGOUT), Some("st-none"))?;
    match Portal::new(&llng.issuer)?.end_session(&url).await? {
        Outcome::Redirect(u) => println!("== logout with no SSO session: redirect {u}"),
        Outcome::FormPost { url, .. } => println!("== logout with no SSO session: form_post {url}"),
        Outcome::Page {
            url,
            status,
            messages,
            login_form,
        } => println!(
            "== logout with no SSO session: page {status} {} login_form={login_form} {messages:?}",
            short(&url)
        ),
    }
    for (name, pid) in llng.pids() {
        let (rss, pss) = rss_kib(pid);
        println!(
            "   memory after all of the above: {name} (pid {pid}) RSS {rss} KiB, PSS {pss} KiB"
        );
    }
    drop(llng);

    // ---- second profile: RS256, claims in the ID token, PKCE required, no consent/confirm
    let mut rp2 = RpSettings::id_token_claims("portcullis", secret, REDIRECT);
    rp2.post_logout_redirect_uris = vec![AFTER_LOGOUT.into()];
    let t = Instant::now();
    let llng2 = launcher::start(&base.join("rs256"), &rp2).await?;
    println!("\n== profile id_token_claims: started in {:?}", t.elapsed());
    let disc: Value = http
        .get(llng2.discovery_url())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwks: Value = http
        .get(disc["jwks_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let portal = Portal::new(&llng2.issuer)?;
    // No PKCE at all: refused?
    let no_pkce = reqwest::Url::parse_with_params(
        disc["authorization_endpoint"].as_str().unwrap(),
        &[
            ("response_type", "code"),
            ("client_id", "portcullis"),
            ("redirect_uri", REDIRECT),
            ("scope", "openid"),
            ("state", "s-no-pkce"),
        ],
    )
    .unwrap();
    match portal.authorize(no_pkce.as_str(), "rtyler", "rtyler").await {
        Ok(r) => println!("   authorize without code_challenge (RequirePKCE): {r}"),
        Err(e) => println!("   authorize without code_challenge (RequirePKCE): {e}"),
    }
    let f = auth_url(&disc, "portcullis", "openid profile email", &[]);
    let t = Instant::now();
    let r = portal.authorize(&f.url, "rtyler", "rtyler").await?;
    println!(
        "   sign-in (SSO session from the refused attempt, no consent) in {:?}",
        t.elapsed()
    );
    let c = code_of(&r, &f)?;
    let (status, body) = exchange(
        &http,
        &disc,
        "portcullis",
        secret,
        Auth::Post,
        vec![
            ("grant_type", "authorization_code".into()),
            ("code", c),
            ("redirect_uri", REDIRECT.into()),
            ("code_verifier", f.verifier),
        ],
    )
    .await;
    println!("   code exchange: {status}");
    let id_token = body["id_token"].as_str().unwrap_or("").to_string();
    let (h, p) = jwt_parts(&id_token);
    println!(
        "   id_token header {h}\n   {}\n   payload {p}",
        verify(&id_token, &jwks, secret)
    );
    let end = launcher::end_session_url(
        disc["end_session_endpoint"].as_str().unwrap(),
        Some(&id_token),
        Some(AFTER_LOGOUT),
        Some("st2"),
    )?;
    let resp = portal.client().get(&end).send().await.unwrap();
    println!(
        "   end_session GET with LogoutBypassConfirm: {} Location {:?}",
        resp.status(),
        resp.headers().get("location")
    );

    // ---- timings of a few more starts
    let mut times = Vec::new();
    for i in 0..3 {
        let t = Instant::now();
        let l = launcher::start(&base.join(format!("again-{i}")), &rp).await?;
        times.push(t.elapsed());
        drop(l);
    }
    println!("\n== three more starts, each on a new state dir: {times:?}");
    let t = Instant::now();
    let _a = launcher::start(&base.join("para-a"), &rp).await?;
    let _b = launcher::start(&base.join("para-b"), &rp).await?;
    println!(
        "   two instances side by side: {:?} ({} and {})",
        t.elapsed(),
        _a.issuer,
        _b.issuer
    );
    drop((_a, _b));
    if std::env::var_os("CHECK_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&base);
    }
    Ok(())
}

/// CHECK_STARTS=N: start and stop N times on a new state dir and N times on the same one.
async fn starts(n: usize) -> Result<(), String> {
    let base = PathBuf::from(format!("/tmp/llng-starts-{}", std::process::id()));
    let rp = RpSettings::default_claims("portcullis", "secret", REDIRECT);
    let stats = |v: &mut Vec<Duration>| {
        v.sort();
        format!(
            "min {:?} median {:?} max {:?}",
            v[0],
            v[v.len() / 2],
            v[v.len() - 1]
        )
    };
    let (mut fresh, mut again) = (Vec::new(), Vec::new());
    for i in 0..n {
        let t = Instant::now();
        let l = launcher::start(&base.join(format!("d{i}")), &rp).await?;
        fresh.push(t.elapsed());
        let cpu: Vec<String> = l
            .pids()
            .iter()
            .map(|(name, pid)| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let f: Vec<&str> = stat.rsplit(") ").next().unwrap_or("").split(' ').collect();
                let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
                    + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
                format!("{name} {} ms CPU", ticks * 10)
            })
            .collect();
        if i < 3 {
            println!("steps: {:?}; {cpu:?}", l.startup_steps);
        }
    }
    for _ in 0..n {
        let t = Instant::now();
        drop(launcher::start(&base.join("d0"), &rp).await?);
        again.push(t.elapsed());
    }
    println!(
        "new state dir (the first one makes the key): {}\nsame state dir: {}",
        stats(&mut fresh),
        stats(&mut again)
    );
    let _ = std::fs::remove_dir_all(&base);
    Ok(())
}

/// CHECK_EDGES=1: the launcher's refusals and corner cases.
async fn edges() -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let base = PathBuf::from(format!("/tmp/llng-edges-{}", std::process::id()));
    let rp = RpSettings::default_claims("portcullis", "secret", REDIRECT);
    // A 0700 state directory (what a temp-dir crate makes).
    let dir = base.join("private");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let first = launcher::start(&dir, &rp).await;
    println!(
        "0700 state dir: {}",
        first
            .as_ref()
            .map(|l| l.issuer.clone())
            .unwrap_or_else(|e| e.clone())
    );
    // The same state dir again while it runs.
    match launcher::start(&dir, &rp).await {
        Ok(l) => println!(
            "second start on a running state dir: started?! {}",
            l.issuer
        ),
        Err(e) => println!("second start on a running state dir: {e}"),
    }
    drop(first);
    match launcher::start(&dir, &rp).await {
        Ok(l) => println!("start after stop, same dir: {}", l.issuer),
        Err(e) => println!("start after stop, same dir: {e}"),
    }
    // A port that is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let opts = launcher::Options {
        port: taken.local_addr().unwrap().port(),
        ..Default::default()
    };
    match launcher::start_with(&base.join("taken"), std::slice::from_ref(&rp), &opts).await {
        Ok(l) => println!("taken port: started?! {}", l.issuer),
        Err(e) => println!("taken port: {}", e.lines().next().unwrap_or("")),
    }
    // Unreachable for www-data (only as root).
    let hidden = PathBuf::from("/root/llng-edges-hidden");
    match launcher::start(&hidden, &rp).await {
        Ok(l) => println!("state dir under /root: {}", l.issuer),
        Err(e) => println!("state dir under /root: {e}"),
    }
    let _ = std::fs::remove_dir_all(&hidden);
    // A broken configuration value: the portal's own error reaches the caller.
    let opts = launcher::Options {
        extra_conf: vec![("authentication".into(), "\"NoSuchBackend\"".into())],
        ..Default::default()
    };
    match launcher::start_with(&base.join("broken"), std::slice::from_ref(&rp), &opts).await {
        Ok(l) => println!("broken conf: started?! {}", l.issuer),
        Err(e) => println!(
            "broken conf: {}",
            e.lines().take(6).collect::<Vec<_>>().join(" / ")
        ),
    }
    let _ = std::fs::remove_dir_all(&base);
    Ok(())
}
