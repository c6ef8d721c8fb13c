//! A session: the server-side record of one sign-in, and its key.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::user::User;

/// The store key of a session: 32 random bytes. Secret: it only ever leaves the process
/// inside sealed cookies and hop tokens, so it never prints.
///
/// Kept as raw bytes rather than its base64 text so that a stored session carries no
/// separate heap string for its key (100k sessions must fit in 64 MiB, BENCHMARKS.md).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId([u8; 32]);

impl SessionId {
    pub fn random() -> Self {
        Self(crate::crypto::random_bytes())
    }

    /// The id that stands for a bearer token: its hash, so that the identity JWTs minted
    /// for one token are cached as a session's are, and the token itself is kept nowhere.
    pub fn of_bearer(token: &str) -> Self {
        Self(
            *ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
                .as_ref()
                .first_chunk::<32>()
                .unwrap_or(&[0; 32]),
        )
    }

    /// The id in its base64url text form (as sealed into cookies), if it is one.
    pub fn parse(text: &str) -> Option<Self> {
        let mut bytes = [0u8; 32];
        // 43 characters is exactly 32 bytes; anything else is not one of ours.
        if text.len() != 43 {
            return None;
        }
        let n = URL_SAFE_NO_PAD.decode_slice(text, &mut bytes).ok()?;
        (n == 32).then_some(Self(bytes))
    }

    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// A stable, non-secret identifier for logs and the JWT `sid` claim.
    pub fn public_id(&self) -> String {
        let mut h = crate::crypto::sha256_b64(&self.0);
        h.truncate(22);
        h
    }
}

impl std::fmt::Debug for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionId([redacted])")
    }
}

impl Serialize for SessionId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.encode())
    }
}

impl<'de> Deserialize<'de> for SessionId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&text).ok_or_else(|| serde::de::Error::custom("not a session id"))
    }
}

/// One sign-in. The IdP's ID token is deliberately not kept here (it would be two thirds of
/// the record); the auth host keeps it in a sealed cookie for `id_token_hint` at sign-out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub id: SessionId,
    pub user: User,
    pub created_at: u64,
    pub expires_at: u64,
}

impl Session {
    pub fn new(user: User, now: u64, lifetime_secs: u64) -> Self {
        Self {
            id: SessionId::random(),
            user,
            created_at: now,
            expires_at: now + lifetime_secs,
        }
    }

    /// A stable, non-secret identifier for logs and the JWT `sid` claim.
    pub fn public_id(&self) -> String {
        self.id.public_id()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_id_round_trips_and_never_prints() {
        let id = SessionId::random();
        assert_eq!(SessionId::parse(&id.encode()), Some(id));
        assert_eq!(format!("{id:?}"), "SessionId([redacted])");
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<SessionId>(&json).unwrap(), id);
        assert_ne!(id.public_id(), id.encode()[..22]);
    }

    #[test]
    fn session_id_rejects_what_is_not_one() {
        for bad in ["", "abc", &"A".repeat(42), &"A".repeat(44), &"*".repeat(43)] {
            assert_eq!(SessionId::parse(bad), None, "{bad:?}");
        }
        // 43 characters whose last one carries bits beyond 32 bytes ('B' sets the lowest of
        // the 2 spare bits): refused, so one id has exactly one text.
        let mut text = SessionId::random().encode();
        text.pop();
        text.push('B');
        assert_eq!(SessionId::parse(&text), None, "{text}");
    }
}
