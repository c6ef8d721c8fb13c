//! The IdP's refresh token in a session record: sealed (AES-256-GCM) under a key derived
//! from the cookie secret for this purpose alone, with the session's id as associated
//! data, so the store (Redis) never holds it in clear and a sealed token copied into
//! another session's record does not open.

use crate::config::CookieConfig;
use crate::core::{SealedToken, SessionId};
use crate::crypto::{Purpose, Sealer};
use crate::secret::SecretString;

/// Seals and opens refresh tokens for session records.
#[derive(Debug)]
pub struct GrantSealer(Sealer);

impl GrantSealer {
    pub fn new(cookie: &CookieConfig) -> Self {
        Self(Sealer::rotating(
            &cookie.secret,
            &cookie.previous_secrets,
            Purpose::RefreshToken,
        ))
    }

    pub fn seal(&self, session: &SessionId, token: &SecretString) -> SealedToken {
        let sealed = self.0.seal_bytes(
            token.expose().as_bytes().to_vec(),
            session.encode().as_bytes(),
        );
        SealedToken(sealed.into_boxed_slice())
    }

    /// The token, if `sealed` was sealed for `session` with this key.
    pub fn open(&self, session: &SessionId, sealed: &SealedToken) -> Option<SecretString> {
        let plain = self
            .0
            .open_bytes(&sealed.0, session.encode().as_bytes())
            .ok()?;
        String::from_utf8(plain).ok().map(SecretString::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretBytes;
    use std::time::Duration;

    fn sealer(secret: u8) -> GrantSealer {
        GrantSealer::new(&CookieConfig {
            name: "_p".into(),
            previous_secrets: Vec::new(),
            secret: SecretBytes::new(vec![secret; 32]),
            lifetime: Duration::from_secs(60),
            secure: true,
        })
    }

    #[test]
    fn a_sealed_refresh_token_opens_only_for_its_session_and_key() {
        let (a, b) = (SessionId::random(), SessionId::random());
        let token = SecretString::new("rt-very-secret");
        let sealed = sealer(1).seal(&a, &token);
        assert!(
            !String::from_utf8_lossy(&sealed.0).contains("rt-very-secret"),
            "not in clear"
        );
        assert!(
            !serde_json::to_string(&sealed)
                .unwrap()
                .contains("rt-very-secret")
        );
        assert_eq!(sealer(1).open(&a, &sealed), Some(token));
        assert_eq!(sealer(1).open(&b, &sealed), None, "another session");
        assert_eq!(sealer(2).open(&a, &sealed), None, "another secret");
    }
}
