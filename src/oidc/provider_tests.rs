//! [`OpenIdConnect`] against a mock provider served in process on port 0: discovery, each
//! client authentication method, UserInfo, algorithm allow-lists, refresh, logout tokens,
//! and each failure named. The real providers (oidc-provider, LemonLDAP::NG) are in
//! `tests/`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::*;
use crate::config::{ClientAuthMethod, UserInfoMode};
use crate::crypto::{random_token, sha256_b64};
use crate::identity::{ClientKey, SigningKeys, generate_pkcs8_pem};

const CLIENT_ID: &str = "portcullis";
/// Characters that change under form-urlencoding, as in real generated secrets.
const SECRET: &str = "s3cr+t/with=odd&chars";

/// What the mock provider does, and what it saw.
struct Mock {
    issuer: String,
    keys: SigningKeys,
    /// Token endpoint auth methods advertised (`None`: the field is left out).
    advertised_auth: Option<Vec<&'static str>>,
    /// ID token algorithms advertised.
    advertised_algs: Vec<&'static str>,
    /// How ID tokens are signed.
    sign_alg: &'static str,
    /// Claims of ID tokens besides iss/aud/iat/exp/nonce.
    id_claims: Value,
    /// UserInfo's answer (`None`: no userinfo endpoint).
    userinfo: Option<Value>,
    /// Answer the token endpoint with this error instead.
    token_error: Option<(StatusCode, &'static str)>,
    /// Advertise this token endpoint instead of the mock's own.
    token_endpoint: Option<String>,
    /// The key a `private_key_jwt` assertion must verify with.
    client_jwk: Option<Value>,
    /// Codes issued: code → (nonce, PKCE challenge).
    codes: HashMap<String, (String, String)>,
    refresh_tokens: HashMap<String, ()>,
    /// How each token request authenticated: "basic", "post" or "private_key_jwt".
    auth_seen: Vec<String>,
    userinfo_calls: usize,
    /// Answer discovery with 503 (an IdP that is down behind its proxy).
    discovery_down: bool,
}

type Shared = Arc<Mutex<Mock>>;

impl Mock {
    fn new() -> Self {
        Self {
            issuer: String::new(),
            keys: SigningKeys::from_pem(&generate_pkcs8_pem()).unwrap(),
            advertised_auth: Some(vec!["client_secret_basic", "client_secret_post"]),
            advertised_algs: vec!["ES256", "HS512"],
            sign_alg: "ES256",
            id_claims: json!({"sub": "u-alice", "email": "alice@corp.example",
                "email_verified": true, "name": "Alice", "preferred_username": "alice",
                "groups": ["admins"]}),
            userinfo: Some(json!({"sub": "u-alice", "email": "alice@corp.example",
                "email_verified": true, "groups": ["admins", "from-userinfo"]})),
            token_error: None,
            token_endpoint: None,
            client_jwk: None,
            codes: HashMap::new(),
            refresh_tokens: HashMap::new(),
            auth_seen: Vec::new(),
            userinfo_calls: 0,
            discovery_down: false,
        }
    }

    fn id_token(&self, nonce: Option<&str>) -> String {
        let now = crate::core::unix_now();
        let mut claims = self.id_claims.clone();
        claims["iss"] = self.issuer.clone().into();
        claims["aud"] = CLIENT_ID.into();
        claims["iat"] = now.into();
        claims["exp"] = (now + 300).into();
        if let Some(n) = nonce {
            claims["nonce"] = n.into();
        }
        match self.sign_alg {
            "HS512" => jsonwebtoken::encode(
                &Header::new(Algorithm::HS512),
                &claims,
                &EncodingKey::from_secret(SECRET.as_bytes()),
            )
            .unwrap(),
            _ => {
                let mut h = Header::new(Algorithm::ES256);
                h.kid = Some(self.keys.kid().to_string());
                jsonwebtoken::encode(&h, &claims, self.keys.encoding_key()).unwrap()
            }
        }
    }
}

async fn discovery(State(m): State<Shared>) -> Response {
    let m = m.lock().unwrap();
    if m.discovery_down {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let i = &m.issuer;
    let mut doc = json!({
        "issuer": i,
        "authorization_endpoint": format!("{i}/authorize"),
        "token_endpoint": m.token_endpoint.clone().unwrap_or(format!("{i}/token")),
        "jwks_uri": format!("{i}/jwks"),
        "end_session_endpoint": format!("{i}/logout"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": m.advertised_algs,
    });
    if let Some(auth) = &m.advertised_auth {
        doc["token_endpoint_auth_methods_supported"] = json!(auth);
    }
    if m.userinfo.is_some() {
        doc["userinfo_endpoint"] = format!("{i}/userinfo").into();
    }
    Json(doc).into_response()
}

async fn jwks(State(m): State<Shared>) -> Json<Value> {
    Json(serde_json::to_value(m.lock().unwrap().keys.jwks()).unwrap())
}

/// The token endpoint: authenticates the client by whichever method it used, as RFC 6749
/// says (Basic credentials form-urlencoded first), then spends the code or refresh token.
async fn token(
    State(m): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let mut m = m.lock().unwrap();
    if let Some((status, error)) = m.token_error {
        return (
            status,
            Json(json!({"error": error, "error_description": "mock says no"})),
        )
            .into_response();
    }
    let invalid_client = || {
        (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client"})),
        )
            .into_response()
    };
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let decode = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    let method = if let Some(pair) = basic {
        let (id, secret) = pair.split_once(':').unwrap_or_default();
        if decode(id) != CLIENT_ID || decode(secret) != SECRET {
            return invalid_client();
        }
        "basic"
    } else if let Some(assertion) = form.get("client_assertion") {
        let Some(jwk) = m.client_jwk.clone() else {
            return invalid_client();
        };
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk).unwrap();
        let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
        let mut v = jsonwebtoken::Validation::new(Algorithm::ES256);
        v.set_audience(&[format!("{}/token", m.issuer)]);
        v.set_issuer(&[CLIENT_ID]);
        let ok = form.get("client_assertion_type").map(String::as_str)
            == Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
            && jsonwebtoken::decode::<Value>(assertion, &key, &v)
                .is_ok_and(|d| d.claims["sub"] == CLIENT_ID);
        if !ok {
            return invalid_client();
        }
        "private_key_jwt"
    } else if form.get("client_id").map(String::as_str) == Some(CLIENT_ID)
        && form.get("client_secret").map(String::as_str) == Some(SECRET)
    {
        "post"
    } else {
        return invalid_client();
    };
    m.auth_seen.push(method.into());
    let grant =
        |error: &str| (StatusCode::BAD_REQUEST, Json(json!({"error": error}))).into_response();
    let nonce = match form.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            let code = form.get("code").cloned().unwrap_or_default();
            let Some((nonce, challenge)) = m.codes.remove(&code) else {
                return grant("invalid_grant");
            };
            let verifier = form.get("code_verifier").cloned().unwrap_or_default();
            if sha256_b64(verifier.as_bytes()) != challenge {
                return grant("invalid_grant");
            }
            Some(nonce)
        }
        Some("refresh_token") => {
            let rt = form.get("refresh_token").cloned().unwrap_or_default();
            if m.refresh_tokens.remove(&rt).is_none() {
                return grant("invalid_grant");
            }
            None
        }
        _ => return grant("unsupported_grant_type"),
    };
    let refresh = random_token(12);
    m.refresh_tokens.insert(refresh.clone(), ());
    Json(json!({
        "access_token": format!("at-{}", random_token(8)),
        "token_type": "Bearer",
        "expires_in": 300,
        "refresh_token": refresh,
        "id_token": m.id_token(nonce.as_deref()),
    }))
    .into_response()
}

async fn userinfo(State(m): State<Shared>, headers: HeaderMap) -> Response {
    let mut m = m.lock().unwrap();
    m.userinfo_calls += 1;
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Bearer at-"));
    match (&m.userinfo, bearer) {
        (Some(claims), true) => Json(claims.clone()).into_response(),
        _ => StatusCode::UNAUTHORIZED.into_response(),
    }
}

/// Serves `mock` on port 0; returns the shared state (with its issuer set).
async fn serve(mock: Mock) -> Shared {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let shared = Arc::new(Mutex::new(Mock { issuer, ..mock }));
    let app = Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks", get(jwks))
        .route("/token", post(token))
        .route("/userinfo", get(userinfo))
        .with_state(shared.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    shared
}

fn config(issuer: &str) -> IdpConfig {
    IdpConfig {
        issuer: issuer.into(),
        client_id: CLIENT_ID.into(),
        client_secret: Some(SecretString::new(SECRET)),
        scopes: vec!["openid".into(), "email".into()],
        groups_claim: "groups".into(),
        assume_email_verified: false,
        userinfo: UserInfoMode::Auto,
        token_endpoint_auth: None,
        client_key: None,
        id_token_algs: None,
        policy_claims: Vec::new(),
        bearer_audiences: None,
        probe_interval: crate::config::DEFAULT_IDP_PROBE_INTERVAL,
    }
}

async fn rp(m: &Shared, tweak: impl FnOnce(&mut IdpConfig)) -> OpenIdConnect {
    let issuer = m.lock().unwrap().issuer.clone();
    let mut c = config(&issuer);
    tweak(&mut c);
    let rp = OpenIdConnect::new(
        c,
        &Url::parse("https://auth.example/.portcullis/oauth2/callback").unwrap(),
        &Url::parse("https://auth.example/.portcullis/signed_out").unwrap(),
    );
    rp.discover().await.unwrap();
    rp
}

/// Starts a sign-in, lets the mock IdP issue a code for it, and finishes it.
async fn sign_in(m: &Shared, rp: &OpenIdConnect) -> Result<SignedIn, OidcError> {
    let start = rp.start().unwrap();
    let q: HashMap<String, String> = start.url.query_pairs().into_owned().collect();
    assert_eq!(q["code_challenge_method"], "S256");
    let code = random_token(8);
    m.lock().unwrap().codes.insert(
        code.clone(),
        (q["nonce"].clone(), q["code_challenge"].clone()),
    );
    rp.finish(&code, &start.pkce_verifier, &start.nonce).await
}

#[tokio::test]
async fn basic_auth_encodes_the_secret_as_rfc_6749_says_and_post_is_a_choice() {
    let m = serve(Mock::new()).await;
    let basic = rp(&m, |_| {}).await;
    let u = sign_in(&m, &basic).await.unwrap().user;
    assert_eq!(u.subject, "u-alice");
    let post = rp(&m, |c| {
        c.token_endpoint_auth = Some(ClientAuthMethod::ClientSecretPost)
    })
    .await;
    sign_in(&m, &post).await.unwrap();
    assert_eq!(m.lock().unwrap().auth_seen, ["basic", "post"]);
    // An IdP that offers only post gets post without being told.
    let m = serve(Mock {
        advertised_auth: Some(vec!["client_secret_post"]),
        ..Mock::new()
    })
    .await;
    sign_in(&m, &rp(&m, |_| {}).await).await.unwrap();
    assert_eq!(m.lock().unwrap().auth_seen, ["post"]);
}

#[tokio::test]
async fn private_key_jwt_authenticates_with_a_signed_assertion_and_no_secret() {
    let key = ClientKey::from_pem(&generate_pkcs8_pem()).unwrap();
    let m = serve(Mock {
        advertised_auth: Some(vec!["private_key_jwt"]),
        client_jwk: Some(key.public_jwk().clone()),
        ..Mock::new()
    })
    .await;
    let key = Arc::new(key);
    let rp = rp(&m, |c| {
        c.client_secret = None;
        c.client_key = Some(key.clone());
        c.token_endpoint_auth = Some(ClientAuthMethod::PrivateKeyJwt);
    })
    .await;
    sign_in(&m, &rp).await.unwrap();
    assert_eq!(m.lock().unwrap().auth_seen, ["private_key_jwt"]);
    // Another key is refused by the IdP, and the log line says what to check.
    let other = Arc::new(ClientKey::from_pem(&generate_pkcs8_pem()).unwrap());
    let wrong = self::rp(&m, |c| {
        c.client_secret = None;
        c.client_key = Some(other);
        c.token_endpoint_auth = Some(ClientAuthMethod::PrivateKeyJwt);
    })
    .await;
    let e = sign_in(&m, &wrong).await.err().unwrap();
    assert!(matches!(e, OidcError::InvalidClient(_)), "{e}");
    assert!(e.to_string().contains("idp.token_endpoint_auth"), "{e}");
}

#[tokio::test]
async fn a_thin_id_token_is_completed_from_userinfo_in_auto_mode_only() {
    let thin = json!({"sub": "u-alice"});
    let m = serve(Mock {
        id_claims: thin.clone(),
        ..Mock::new()
    })
    .await;
    let auto = rp(&m, |_| {}).await;
    let s = sign_in(&m, &auto).await.unwrap();
    assert!(s.used_userinfo);
    assert_eq!(s.user.verified_email(), Some("alice@corp.example"));
    assert_eq!(s.user.groups, ["admins", "from-userinfo"]);
    let never = rp(&m, |c| c.userinfo = UserInfoMode::Never).await;
    let s = sign_in(&m, &never).await.unwrap();
    assert!(!s.used_userinfo && s.user.email.is_none() && s.user.groups.is_empty());
    assert_eq!(m.lock().unwrap().userinfo_calls, 1);

    // A complete ID token needs no UserInfo in auto mode; `always` reads it anyway, and the
    // ID token still wins.
    let m = serve(Mock::new()).await;
    let s = sign_in(&m, &rp(&m, |_| {}).await).await.unwrap();
    assert!(!s.used_userinfo);
    assert_eq!(s.user.groups, ["admins"]);
    let s = sign_in(&m, &rp(&m, |c| c.userinfo = UserInfoMode::Always).await)
        .await
        .unwrap();
    assert!(s.used_userinfo);
    assert_eq!(s.user.groups, ["admins"], "the ID token wins");
    assert_eq!(m.lock().unwrap().userinfo_calls, 1);
}

#[tokio::test]
async fn attack_userinfo_about_another_subject_fails_the_sign_in() {
    let m = serve(Mock {
        id_claims: json!({"sub": "u-alice"}),
        userinfo: Some(json!({"sub": "u-mallory", "email": "mallory@corp.example",
            "email_verified": true, "groups": ["admins"]})),
        ..Mock::new()
    })
    .await;
    for mode in [UserInfoMode::Auto, UserInfoMode::Always] {
        let e = sign_in(&m, &rp(&m, |c| c.userinfo = mode).await)
            .await
            .err()
            .unwrap();
        assert!(
            matches!(e, OidcError::SubjectMismatch { .. }),
            "{mode:?}: {e}"
        );
    }
}

#[tokio::test]
async fn userinfo_that_fails_is_fatal_only_when_required() {
    let m = serve(Mock {
        id_claims: json!({"sub": "u-alice"}),
        ..Mock::new()
    })
    .await;
    m.lock().unwrap().userinfo = Some(json!("not an object"));
    let s = sign_in(&m, &rp(&m, |_| {}).await).await.unwrap();
    assert!(
        !s.used_userinfo && s.user.groups.is_empty(),
        "auto: ID token alone"
    );
    let e = sign_in(&m, &rp(&m, |c| c.userinfo = UserInfoMode::Always).await)
        .await
        .err()
        .unwrap();
    assert!(matches!(e, OidcError::UserInfo(_)), "{e}");
}

#[tokio::test]
async fn an_hs512_id_token_is_refused_by_name_unless_configured() {
    let m = serve(Mock {
        sign_alg: "HS512",
        ..Mock::new()
    })
    .await;
    let e = sign_in(&m, &rp(&m, |_| {}).await).await.err().unwrap();
    assert_eq!(
        e.to_string(),
        "ID token signed with \"HS512\", which is not accepted (accepted: ES256); set idp.id_token_algs if the IdP must sign with it"
    );
    let rp = rp(&m, |c| c.id_token_algs = Some(vec!["HS512".into()])).await;
    assert_eq!(sign_in(&m, &rp).await.unwrap().user.subject, "u-alice");
}

#[tokio::test]
async fn token_endpoint_failures_are_named() {
    let m = serve(Mock {
        token_error: Some((StatusCode::UNAUTHORIZED, "invalid_client")),
        ..Mock::new()
    })
    .await;
    let e = sign_in(&m, &rp(&m, |_| {}).await).await.err().unwrap();
    assert!(matches!(e, OidcError::InvalidClient(_)), "{e}");
    m.lock().unwrap().token_error = Some((StatusCode::BAD_REQUEST, "invalid_grant"));
    let e = sign_in(&m, &rp(&m, |_| {}).await).await.err().unwrap();
    assert!(matches!(e, OidcError::InvalidGrant(_)), "{e}");
    m.lock().unwrap().token_error = Some((StatusCode::INTERNAL_SERVER_ERROR, "server_error"));
    let e = sign_in(&m, &rp(&m, |_| {}).await).await.err().unwrap();
    assert!(matches!(e, OidcError::TokenEndpoint(_)), "{e}");

    // The token endpoint unreachable (a port nothing listens on).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let m = serve(Mock {
        token_endpoint: Some(format!("http://{addr}/token")),
        ..Mock::new()
    })
    .await;
    let e = sign_in(&m, &rp(&m, |_| {}).await).await.err().unwrap();
    assert!(
        matches!(
            e,
            OidcError::Unreachable {
                endpoint: "token",
                ..
            }
        ),
        "{e}"
    );
}

#[tokio::test]
async fn a_refresh_rotates_tokens_rereads_userinfo_and_a_spent_token_is_refused() {
    let m = serve(Mock {
        id_claims: json!({"sub": "u-alice"}),
        ..Mock::new()
    })
    .await;
    let rp = rp(&m, |_| {}).await;
    let s = sign_in(&m, &rp).await.unwrap();
    let first = s.tokens.refresh_token.unwrap();
    let r = rp
        .refresh(&first, "u-alice", s.used_userinfo)
        .await
        .unwrap();
    let second = r.tokens.refresh_token.unwrap();
    assert_ne!(first.expose(), second.expose());
    assert_eq!(r.user.unwrap().groups, ["admins", "from-userinfo"]);
    assert_eq!(m.lock().unwrap().userinfo_calls, 2);
    let e = rp.refresh(&first, "u-alice", true).await.err().unwrap();
    assert!(matches!(e, OidcError::InvalidGrant(_)), "spent: {e}");
    // A refreshed ID token about someone else is refused.
    let e = rp.refresh(&second, "u-bob", false).await.err().unwrap();
    assert!(e.to_string().contains("not \"u-bob\""), "{e}");
}

#[tokio::test]
async fn logout_tokens_verify_with_the_idps_keys_and_logout_urls_carry_the_hint() {
    let m = serve(Mock::new()).await;
    let rp = rp(&m, |_| {}).await;
    let now = crate::core::unix_now();
    let (issuer, token) = {
        let m = m.lock().unwrap();
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(m.keys.kid().to_string());
        let claims = json!({"iss": m.issuer, "aud": CLIENT_ID, "iat": now, "jti": "j",
            "sub": "u-alice",
            "events": {"http://schemas.openid.net/event/backchannel-logout": {}}});
        (
            m.issuer.clone(),
            jsonwebtoken::encode(&h, &claims, m.keys.encoding_key()).unwrap(),
        )
    };
    let t = rp.verify_logout_token(&token, now).unwrap();
    assert_eq!(t.sub.as_deref(), Some("u-alice"));
    // An ID token is not a logout token.
    let s = sign_in(&m, &rp).await.unwrap();
    assert!(rp.verify_logout_token(s.id_token.expose(), now).is_err());

    let url = rp.end_session_url(Some(&s.id_token)).unwrap();
    assert!(
        url.as_str().starts_with(&format!("{issuer}/logout?")),
        "{url}"
    );
    let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
    assert_eq!(q["id_token_hint"], s.id_token.expose());
    assert_eq!(q["client_id"], CLIENT_ID);
    assert_eq!(
        q["post_logout_redirect_uri"],
        "https://auth.example/.portcullis/signed_out"
    );
}

#[tokio::test]
async fn attack_the_backchannel_logout_endpoint_refuses_what_the_idp_did_not_sign_for_us() {
    use crate::session::SessionStore;
    use tower::ServiceExt;
    let m = serve(Mock::new()).await;
    let rp = Arc::new(rp(&m, |_| {}).await);
    let dir = crate::testing::ConfigDir::new();
    let yaml = crate::testing::CONFIG.replace("http://127.0.0.1:9000", &m.lock().unwrap().issuer);
    let config = dir.parse(&yaml).unwrap();
    let store = Arc::new(crate::session::MemoryStore::default());
    let app = Arc::new(crate::app::App::with_parts(
        config,
        crate::app::Parts {
            store: store.clone(),
            clock: Arc::new(crate::core::SystemClock),
            idp: rp.clone(),
            metrics: Default::default(),
            draining: Default::default(),
        },
    ));
    let now = crate::core::unix_now();
    let mut session = crate::session::conformance::session("u-alice", None, now, 3600);
    session.idp = Some(Box::new(crate::core::IdpGrant {
        sid: Some("idp-sid-1".into()),
        ..Default::default()
    }));
    store.put(session.clone()).await.unwrap();
    let (issuer, keys_kid) = {
        let m = m.lock().unwrap();
        (m.issuer.clone(), m.keys.kid().to_string())
    };
    let sign = |claims: Value| {
        let m = m.lock().unwrap();
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(keys_kid.clone());
        h.typ = Some("logout+jwt".into());
        jsonwebtoken::encode(&h, &claims, m.keys.encoding_key()).unwrap()
    };
    let claims = |f: &dyn Fn(&mut Value)| {
        let mut c = json!({"iss": issuer, "aud": CLIENT_ID, "iat": now, "jti": random_token(8),
            "sid": "idp-sid-1",
            "events": {"http://schemas.openid.net/event/backchannel-logout": {}}});
        f(&mut c);
        c
    };
    let post = |token: String| {
        let app = app.clone();
        async move {
            let body = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("logout_token", &token)
                .finish();
            let req = axum::http::Request::post("/.portcullis/backchannel_logout")
                .header("host", "auth.localhost:8443")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(axum::body::Body::from(body))
                .unwrap();
            crate::web::router(app).oneshot(req).await.unwrap().status()
        }
    };
    let id_token = sign_in(&m, &rp)
        .await
        .unwrap()
        .id_token
        .expose()
        .to_string();
    let stranger = SigningKeys::from_pem(&generate_pkcs8_pem()).unwrap();
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some(keys_kid.clone());
    let forged = jsonwebtoken::encode(&h, &claims(&|_| {}), stranger.encoding_key()).unwrap();
    for (what, token) in [
        (
            "wrong aud",
            sign(claims(&|c| c["aud"] = "other-client".into())),
        ),
        (
            "wrong iss",
            sign(claims(&|c| c["iss"] = "https://evil.example".into())),
        ),
        ("an ID token", id_token),
        ("signed by another key", forged),
        (
            "without the event",
            sign(claims(&|c| c["events"] = json!({}))),
        ),
    ] {
        assert_eq!(post(token).await, StatusCode::BAD_REQUEST, "{what}");
        assert!(
            store.get(&session.id, now).await.unwrap().is_some(),
            "{what}"
        );
    }
    let valid = sign(claims(&|_| {}));
    assert_eq!(post(valid.clone()).await, StatusCode::OK);
    assert!(
        store.get(&session.id, now).await.unwrap().is_none(),
        "ended"
    );
    assert_eq!(post(valid).await, StatusCode::BAD_REQUEST, "replayed");
}

#[tokio::test]
async fn bearer_tokens_from_the_idp_for_us_or_a_configured_audience_and_nothing_else() {
    let m = serve(Mock::new()).await;
    let rp = rp(&m, |c| {
        c.bearer_audiences = Some(vec!["api://portcullis".into()])
    })
    .await;
    let now = crate::core::unix_now();
    let (issuer, keys_pem) = {
        let m = m.lock().unwrap();
        (m.issuer.clone(), m.keys.encoding_key().clone())
    };
    let kid = m.lock().unwrap().keys.kid().to_string();
    let sign = |claims: Value, key: &EncodingKey, alg: Algorithm, kid: Option<&str>| {
        let mut h = Header::new(alg);
        h.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&h, &claims, key).unwrap()
    };
    let claims = |aud: &str, iss: &str, exp: u64| {
        json!({"iss": iss, "aud": aud, "sub": "svc-1", "exp": exp, "iat": now,
            "email": "ci@corp.example", "email_verified": true, "groups": ["deploy"]})
    };
    let ok = |t: String| {
        let rp = &rp;
        async move { rp.verify_bearer(&t, now).await }
    };
    let (u, exp) = ok(sign(
        claims("api://portcullis", &issuer, now + 300),
        &keys_pem,
        Algorithm::ES256,
        Some(&kid),
    ))
    .await
    .unwrap();
    assert_eq!((u.subject.as_str(), exp), ("svc-1", now + 300));
    assert_eq!(u.groups, ["deploy"]);
    // An ID token for our client id, from a sign-in.
    let s = sign_in(&m, &rp).await.unwrap();
    assert_eq!(
        ok(s.id_token.expose().to_string()).await.unwrap().0.subject,
        "u-alice"
    );

    let stranger = SigningKeys::from_pem(&generate_pkcs8_pem()).unwrap();
    let refused = [
        (
            "another audience",
            sign(
                claims("api://other", &issuer, now + 300),
                &keys_pem,
                Algorithm::ES256,
                Some(&kid),
            ),
        ),
        (
            "expired",
            sign(
                claims("api://portcullis", &issuer, now - 3600),
                &keys_pem,
                Algorithm::ES256,
                Some(&kid),
            ),
        ),
        (
            "another issuer",
            sign(
                claims("api://portcullis", "https://evil.example", now + 300),
                &keys_pem,
                Algorithm::ES256,
                Some(&kid),
            ),
        ),
        (
            "another key",
            sign(
                claims("api://portcullis", &issuer, now + 300),
                stranger.encoding_key(),
                Algorithm::ES256,
                Some(stranger.kid()),
            ),
        ),
        (
            "HS256 keyed by the client secret",
            sign(
                claims("api://portcullis", &issuer, now + 300),
                &EncodingKey::from_secret(SECRET.as_bytes()),
                Algorithm::HS256,
                None,
            ),
        ),
        (
            "no exp",
            sign(
                json!({"iss": issuer, "aud": "api://portcullis", "sub": "x"}),
                &keys_pem,
                Algorithm::ES256,
                Some(&kid),
            ),
        ),
        ("garbage", "a.b.c".into()),
    ];
    for (what, token) in refused {
        assert!(ok(token).await.is_err(), "{what} was accepted");
    }
}

#[tokio::test]
async fn the_reachability_probe_follows_the_discovery_document() {
    use crate::config::DEFAULT_IDP_PROBE_INTERVAL as INTERVAL;
    let m = serve(Mock::new()).await;
    let rp = rp(&m, |_| {}).await;
    assert!(rp.is_reachable());
    assert_eq!(rp.probe().await, Some(INTERVAL));
    assert!(rp.is_reachable());

    m.lock().unwrap().discovery_down = true;
    // Down: probed again sooner, so that sign-ins resume soon after it is back.
    assert_eq!(rp.probe().await, Some(PROBE_WHILE_DOWN));
    assert!(!rp.is_reachable());
    assert!(rp.is_ready(), "still discovered: tokens keep verifying");

    m.lock().unwrap().discovery_down = false;
    assert_eq!(rp.probe().await, Some(INTERVAL));
    assert!(rp.is_reachable());

    // Nothing listening at all.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut c = config(&format!("http://{closed}"));
    c.probe_interval = Duration::from_secs(1);
    let gone = OpenIdConnect::new(
        c,
        &Url::parse("https://auth.example/cb").unwrap(),
        &Url::parse("https://auth.example/").unwrap(),
    );
    // Not discovered: discovery's own retries stand in for the probe.
    assert_eq!(gone.probe().await, Some(Duration::from_secs(1)));
    assert!(!gone.is_ready());
}
