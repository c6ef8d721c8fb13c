//! The state both edges share: routes, cookies, sessions, signing. Built once from a
//! validated [`Config`].

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use url::Url;

use crate::config::{Config, authority_of};
use crate::crypto::{Purpose, Sealer};
use crate::identity::{TokenCache, TokenMinter};
use crate::oidc::Oidc;
use crate::routes::RouteTable;
use crate::session::{CookieCodec, SessionStore};

pub struct App {
    pub routes: RouteTable,
    /// Public origin of the auth host.
    pub auth_url: Url,
    pub auth_authority: String,
    pub cookies: CookieCodec,
    pub csrf: Sealer,
    pub hop: Sealer,
    /// Seals the continuation of a sign-out from a route host to the auth host.
    pub sign_out: Sealer,
    pub store: Arc<dyn SessionStore>,
    pub minter: TokenMinter,
    pub tokens: TokenCache,
    /// Lowercase, as Envoy presents header names.
    pub identity_header: String,
    pub session_lifetime: Duration,
    pub oidc: Oidc,
    /// The JWKS document, serialized once, and its ETag.
    pub jwks_json: String,
    pub jwks_etag: String,
    pub metrics: crate::metrics::Metrics,
}

impl App {
    pub fn new(config: Config, store: Arc<dyn SessionStore>) -> Self {
        let Config {
            server: _,
            authenticate_url,
            idp,
            cookie,
            signing_keys,
            identity_header,
            routes,
        } = config;
        let auth_authority = authority_of(&authenticate_url);
        let issuer = authenticate_url.as_str().trim_end_matches('/').to_string();
        let redirect_uri = authenticate_url
            .join("/.portcullis/oauth2/callback")
            .expect("static path joins");
        let post_logout = authenticate_url
            .join("/.portcullis/signed_out")
            .expect("static path joins");
        let jwks_json = serde_json::to_string(signing_keys.jwks()).expect("JWKS serializes");
        let jwks_etag = format!(
            "\"{}\"",
            &crate::crypto::sha256_b64(jwks_json.as_bytes())[..22]
        );
        Self {
            routes: RouteTable::new(routes),
            auth_url: authenticate_url,
            auth_authority,
            csrf: Sealer::derive(&cookie.secret, Purpose::Csrf),
            hop: Sealer::derive(&cookie.secret, Purpose::Hop),
            sign_out: Sealer::derive(&cookie.secret, Purpose::SignOut),
            cookies: CookieCodec::new(&cookie),
            store,
            minter: TokenMinter::new(issuer, Arc::new(signing_keys)),
            tokens: TokenCache::default(),
            identity_header: identity_header.to_ascii_lowercase(),
            session_lifetime: cookie.lifetime,
            oidc: Oidc::new(idp, redirect_uri, post_logout),
            jwks_json,
            jwks_etag,
            metrics: crate::metrics::Metrics::default(),
        }
    }
}

/// Unix time in seconds.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
