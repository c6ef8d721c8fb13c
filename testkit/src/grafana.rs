//! Helpers for the Grafana, JWKS and key-rotation tests: verifiers that are not ours (`jose`
//! configured like Grafana, Envoy's own `jwt_authn` filter), a signer that uses the stack's
//! real key, and key files made the way the README tells operators to make them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use crate::portcullis::probe_client;
use crate::{Stack, envoy, run};

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

/// The decoded header and payload of a compact JWT, without verifying anything.
pub fn decode_jwt(token: &str) -> (Value, Value) {
    let part = |i: usize| -> Value {
        let b64 = token
            .split('.')
            .nth(i)
            .unwrap_or_else(|| panic!("not a compact JWT: {token}"));
        let bytes = URL_SAFE_NO_PAD
            .decode(b64)
            .unwrap_or_else(|e| panic!("JWT part {i} is not base64url ({e}): {token}"));
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("JWT part {i} is not JSON ({e}): {token}"))
    };
    (part(0), part(1))
}

/// The kid in a token's header.
pub fn kid_of(token: &str) -> String {
    decode_jwt(token).0["kid"]
        .as_str()
        .expect("the token names its key")
        .to_string()
}

/// Replaces the payload of `token` by `payload`, keeping header and signature: a forgery.
pub fn with_payload(token: &str, payload: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "not a compact JWS: {token}");
    let body = URL_SAFE_NO_PAD.encode(payload.to_string());
    format!("{}.{body}.{}", parts[0], parts[2])
}

/// Replaces the `kid` in the header of `token`, keeping payload and signature.
pub fn with_header_kid(token: &str, kid: &str) -> String {
    let (mut header, _) = decode_jwt(token);
    header["kid"] = json!(kid);
    let parts: Vec<&str> = token.split('.').collect();
    let head = URL_SAFE_NO_PAD.encode(header.to_string());
    format!("{head}.{}.{}", parts[1], parts[2])
}

/// A token signed by `sign_jwt.mjs`, and the kid (RFC 7638 thumbprint) jose computed.
#[derive(Debug, Clone)]
pub struct Signed {
    pub token: String,
    pub kid: String,
}

/// Signs `claims` with the PKCS#8 key in `key_file` using node `jose`, with the header
/// portcullis uses (`ES256`, `typ JWT`, `kid` = thumbprint computed by jose).
pub fn sign_jwt(key_file: &Path, claims: &Value) -> Signed {
    let out = run(crate::node_script("sign_jwt.mjs")
        .arg("--key-file")
        .arg(key_file)
        .args(["--claims", &claims.to_string()]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "sign_jwt.mjs failed ({}):\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("sign_jwt.mjs output is not JSON ({e}): {stdout}"));
    Signed {
        token: v["token"].as_str().expect("token").to_string(),
        kid: v["kid"].as_str().expect("kid").to_string(),
    }
}

/// What Grafana would make of a token (see `grafana_verify.mjs`).
#[derive(Debug, Clone)]
pub struct GrafanaUser {
    pub sub: String,
    pub login: String,
    pub email: String,
    pub role: String,
    pub kid: String,
}

/// Checks `token` the way Grafana does with the settings the README documents
/// (`email_claim = email`, `username_claim = preferred_username`,
/// `role_attribute_path = role`, `expect_claims` as given), fetching the JWKS from
/// `jwks_url` like `jwk_set_url`. `Err` holds the reason a rejected token was rejected.
pub fn grafana_verify(
    jwks_url: &str,
    token: &str,
    expect_claims: &Value,
) -> Result<GrafanaUser, String> {
    let out = run(crate::node_script("grafana_verify.mjs")
        .args(["--jwks-url", jwks_url, "--token", token])
        .args(["--expect-claims", &expect_claims.to_string()])
        .args(["--email-claim", "email"])
        .args(["--username-claim", "preferred_username"])
        .args(["--role-attribute-path", "role"]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        assert!(
            !stderr.contains("cannot load jose") && !stderr.contains("usage:"),
            "grafana_verify.mjs could not run: {stderr}"
        );
        return Err(stderr.trim().to_string());
    }
    let v: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("grafana_verify.mjs output is not JSON ({e}): {stdout}"));
    let text = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    Ok(GrafanaUser {
        sub: text("sub"),
        login: text("login"),
        email: text("email"),
        role: text("role"),
        kid: text("kid"),
    })
}

/// Verifies `token` for `audience` against the JWKS document `jwks` with
/// `testkit/js/verify_jwt.mjs` (jose: ES256, kid required, signature, aud, exp).
/// `Ok` holds `{"header","payload"}`; `Err` the verifier's reason.
pub fn jose_verify(
    scratch: &Path,
    jwks: &Value,
    token: &str,
    audience: &str,
) -> Result<Value, String> {
    let file = scratch.join(format!("jwks-{}.json", crate::hex(&crate::random_bytes(8))));
    fs::write(&file, jwks.to_string()).unwrap();
    let out = run(crate::node_script("verify_jwt.mjs")
        .arg("--jwks-file")
        .arg(&file)
        .args(["--token", token, "--audience", audience]));
    let _ = fs::remove_file(&file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        assert!(
            !stderr.contains("cannot load jose") && !stderr.contains("usage:"),
            "verify_jwt.mjs could not run: {stderr}"
        );
        return Err(stderr.trim().to_string());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    Ok(serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("verify_jwt.mjs output is not JSON ({e}): {stdout}")))
}

pub use crate::portcullis::keygen;

/// The public half of a private key file, `openssl pkey -pubout` (SPKI `BEGIN PUBLIC KEY`),
/// written beside it as `NAME.pub.pem`, as the README's rotation steps do.
pub fn public_key_file(private: &Path) -> PathBuf {
    crate::tier::require_openssl();
    let public = private.with_extension("pub.pem");
    let out = run(Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(private)
        .arg("-out")
        .arg(&public));
    assert!(
        out.status.success(),
        "openssl pkey -pubout -in {} failed (scripts/test installs openssl): {}",
        private.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    public
}

/// The same file as [`public_key_file`], made in process (rcgen) instead of by openssl: for
/// the checks that run without any real part installed.
pub fn public_key_file_in_process(private: &Path) -> PathBuf {
    let public = private.with_extension("pub.pem");
    let pem =
        fs::read_to_string(private).unwrap_or_else(|e| panic!("read {}: {e}", private.display()));
    let key = rcgen::KeyPair::from_pem(&pem)
        .unwrap_or_else(|e| panic!("{} is no private key rcgen reads: {e}", private.display()));
    fs::write(&public, key.public_key_pem()).unwrap();
    public
}

/// A plain HTTP GET with optional extra headers; returns status, headers and body.
pub async fn http_get(url: &str, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, String) {
    let mut request = probe_client().get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.text().await.unwrap_or_default();
    (status, headers, body)
}

/// The standalone listener's JWKS (which must answer 200 with JSON).
pub async fn listener_jwks(stack: &Stack) -> Value {
    let url = stack.jwks_listener_url();
    let (status, _, body) = http_get(&url, &[]).await;
    assert_eq!(status, StatusCode::OK, "GET {url}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("JWKS is not JSON ({e}): {body}"))
}

/// The `kid`s of a JWKS document, in order.
pub fn kids(jwks: &Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .unwrap_or_else(|| panic!("JWKS without keys: {jwks}"))
        .iter()
        .map(|k| k["kid"].as_str().expect("every key has a kid").to_string())
        .collect()
}

impl Stack {
    /// Starts one more Envoy, configured here and not by portcullis: a plain-HTTP listener
    /// whose only route answers 200 `verified`, behind Envoy's own `jwt_authn` filter. It
    /// takes the token from `X-Portcullis-Jwt-Assertion`, fetches the keys from the
    /// standalone JWKS listener (`remote_jwks`) and requires `iss` = the auth origin and
    /// `aud` = `audience`. Returns the listener's base URL, e.g. `http://127.0.0.1:PORT`.
    pub async fn start_jwt_authn_envoy(&mut self, audience: &str) -> String {
        let socket =
            |port: u16| json!({"socket_address": {"address": "127.0.0.1", "port_value": port}});
        let bootstrap = json!({
            "admin": {"address": socket(0)},
            "static_resources": {
                "listeners": [{
                    "name": "verifier",
                    "address": socket(0),
                    "filter_chains": [{"filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "verifier",
                            "route_config": {"virtual_hosts": [{
                                "name": "all",
                                "domains": ["*"],
                                "routes": [{
                                    "match": {"prefix": "/"},
                                    "direct_response": {"status": 200, "body": {"inline_string": "verified\n"}},
                                }],
                            }]},
                            "http_filters": [
                                {
                                    "name": "envoy.filters.http.jwt_authn",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                                        "providers": {"portcullis": {
                                            "issuer": self.origin("auth"),
                                            "audiences": [audience],
                                            "from_headers": [{"name": "x-portcullis-jwt-assertion"}],
                                            "remote_jwks": {
                                                "http_uri": {
                                                    "uri": self.jwks_listener_url(),
                                                    "cluster": "portcullis_jwks",
                                                    "timeout": "2s",
                                                },
                                                "cache_duration": "60s",
                                            },
                                        }},
                                        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "portcullis"}}],
                                    },
                                },
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                                },
                            ],
                        },
                    }]}],
                }],
                "clusters": [{
                    "name": "portcullis_jwks",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "portcullis_jwks",
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket(self.ports.jwks)}}]}],
                    },
                }],
            },
        });
        let file = self.dir.join("verifier-envoy.json");
        fs::write(&file, serde_json::to_string_pretty(&bootstrap).unwrap()).unwrap();
        let started = envoy::start(
            "verifier-envoy",
            &file,
            1,
            "info",
            &self.log_path("verifier-envoy"),
        )
        .await
        .unwrap_or_else(|e| panic!("the verifier Envoy did not start: {e}"));
        let port = started.listener_port("verifier").await;
        self.adopt(started.proc);
        format!("http://127.0.0.1:{port}")
    }
}
