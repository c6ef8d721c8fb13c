//! The identity JWT: ES256, `kid` in the header, short-lived, cached per (session, route).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::SigningKeys;
use crate::core::{RouteId, SessionId, User};

/// Lifetime of an identity JWT.
pub const TOKEN_TTL_SECS: u64 = 300;
/// A cached token is re-signed once it has less than this left, so an upstream never
/// receives a token about to expire (verifiers allow ~60 s of skew).
const REMINT_BEFORE_EXP_SECS: u64 = 60;

/// The claims of the identity JWT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityClaims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preferred_username: Option<String>,
    /// Always a list, never null: verifiers that map groups to roles choke on null.
    pub groups: Vec<String>,
    /// Only on routes with a role mapping (Grafana's `role_attribute_path: role`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    pub sid: String,
    pub iat: u64,
    pub exp: u64,
    pub jti: String,
}

/// Signs identity JWTs with the configured key.
pub struct TokenMinter {
    issuer: String,
    keys: Arc<SigningKeys>,
    /// The encoded JOSE header, the same for every token.
    header: String,
}

impl TokenMinter {
    pub fn new(issuer: String, keys: Arc<SigningKeys>) -> Self {
        let header = keys.jose_header("JWT");
        Self {
            issuer,
            keys,
            header,
        }
    }

    /// The `iss` of every token portcullis signs: the auth host's origin.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn keys(&self) -> &SigningKeys {
        &self.keys
    }

    /// Mints a token for `user` on the route whose authority is `audience`.
    pub fn mint(
        &self,
        user: &User,
        public_sid: &str,
        audience: &str,
        role: Option<&str>,
        now: u64,
    ) -> (String, u64) {
        let exp = now + TOKEN_TTL_SECS;
        let claims = IdentityClaims {
            iss: self.issuer.clone(),
            aud: audience.to_string(),
            sub: user.subject.clone(),
            email: user.verified_email().map(str::to_string),
            name: user.name.clone(),
            preferred_username: user.preferred_username.clone(),
            groups: user.groups.clone(),
            role: role.map(str::to_string),
            sid: public_sid.to_string(),
            iat: now,
            exp,
            jti: crate::crypto::random_token(12),
        };
        (self.keys.sign(&self.header, &claims), exp)
    }
}

/// Signed tokens by (session, route), so the hot path signs at most once per ~4 minutes.
#[derive(Default)]
pub struct TokenCache {
    inner: Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    entries: HashMap<CacheKey, (Arc<str>, u64)>,
    /// An insert that finds the map this large first drops expired tokens. It doubles after
    /// each such prune, so pruning costs O(1) amortized per insert instead of a full scan
    /// under the lock on every miss once the cache is big (BENCHMARKS.md, proposal 3).
    prune_at: usize,
}

/// (session id, route): plain bytes, so a lookup allocates nothing.
type CacheKey = (SessionId, RouteId);

/// The smallest size at which an insert prunes.
const PRUNE_FLOOR: usize = 4096;

impl TokenCache {
    /// The cached token for (`sid`, `route`) if it has more than a minute left, else `mint()`'s.
    pub fn get_or_mint(
        &self,
        sid: SessionId,
        route: RouteId,
        now: u64,
        mint: impl FnOnce() -> (String, u64),
    ) -> Arc<str> {
        let key = (sid, route);
        {
            let inner = self.lock();
            if let Some((token, exp)) = inner.entries.get(&key)
                && *exp > now + REMINT_BEFORE_EXP_SECS
            {
                return token.clone();
            }
        }
        // Sign outside the lock: two racing requests may both sign, which is harmless.
        let (token, exp) = mint();
        let token: Arc<str> = token.into();
        let mut inner = self.lock();
        if inner.entries.len() >= inner.prune_at.max(PRUNE_FLOOR) {
            inner.entries.retain(|_, (_, exp)| *exp > now);
            inner.prune_at = inner.entries.len().saturating_mul(2);
        }
        inner.entries.insert(key, (token.clone(), exp));
        token
    }

    /// Drops expired tokens; called by the periodic sweeper.
    pub fn prune(&self, now: u64) {
        self.lock().entries.retain(|_, (_, exp)| *exp > now);
    }

    /// Drops every token of a session (sign-out).
    pub fn forget_session(&self, sid: SessionId) {
        self.lock().entries.retain(|(s, _), _| *s != sid);
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::generate_pkcs8_pem;
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};

    fn alice() -> User {
        User {
            subject: "alice".into(),
            email: Some("alice@example.com".into()),
            email_verified: true,
            name: Some("Alice".into()),
            preferred_username: Some("alice".into()),
            groups: vec![],
            claims: Vec::new(),
        }
    }

    #[test]
    fn token_verifies_with_the_published_key() {
        let keys = Arc::new(SigningKeys::from_pem(&generate_pkcs8_pem()).unwrap());
        let minter = TokenMinter::new("https://auth.example".into(), keys.clone());
        let now = jsonwebtoken::get_current_timestamp();
        let (token, exp) = minter.mint(&alice(), "sid1", "app.example", None, now);
        assert_eq!(exp - now, TOKEN_TTL_SECS);
        let jwk = &keys.jwks().keys[0];
        let key = DecodingKey::from_ec_components(&jwk.x, &jwk.y).unwrap();
        let mut v = Validation::new(Algorithm::ES256);
        v.set_audience(&["app.example"]);
        v.set_issuer(&["https://auth.example"]);
        let data = jsonwebtoken::decode::<IdentityClaims>(&token, &key, &v).unwrap();
        assert_eq!(data.header.kid.as_deref(), Some(keys.kid()));
        assert_eq!(data.claims.groups, Vec::<String>::new());
        assert_eq!(data.claims.email.as_deref(), Some("alice@example.com"));
        assert!(token.contains('.'));
        let payload = token.split('.').nth(1).unwrap();
        let raw = String::from_utf8(
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
                .unwrap(),
        )
        .unwrap();
        assert!(
            raw.contains(r#""groups":[]"#),
            "groups must be a list, got {raw}"
        );
    }

    #[test]
    fn cache_reuses_until_a_minute_before_expiry() {
        let cache = TokenCache::default();
        let sid = SessionId::random();
        let mut mints = 0;
        let mut get = |now: u64| {
            cache.get_or_mint(sid, RouteId(0), now, || {
                mints += 1;
                (format!("t{mints}"), now + TOKEN_TTL_SECS)
            })
        };
        assert_eq!(&*get(1000), "t1");
        assert_eq!(&*get(1000 + 239), "t1");
        assert_eq!(&*get(1000 + 241), "t2");
        assert_eq!(&*get(1000 + 300), "t2");
        assert_eq!(mints, 2);
        cache.forget_session(sid);
        assert!(cache.is_empty());
    }

    #[test]
    fn cache_prunes_expired_tokens_without_scanning_on_every_miss() {
        let cache = TokenCache::default();
        let insert = |now: u64| {
            cache.get_or_mint(SessionId::random(), RouteId(0), now, || {
                ("t".into(), now + 10)
            });
        };
        // Fill to the floor with tokens that will have expired by `later`.
        for _ in 0..PRUNE_FLOOR {
            insert(1000);
        }
        let later = 2000;
        insert(later);
        assert_eq!(
            cache.len(),
            1,
            "the insert at the floor dropped the expired"
        );
        // Below the (doubled, floored) threshold, expired tokens stay until the sweeper.
        for _ in 0..10 {
            insert(later);
        }
        assert_eq!(cache.len(), 11);
        cache.prune(later + 11);
        assert!(cache.is_empty());
    }
}
