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
    /// Raised by every change of the record (a refresh), so that a writer can tell whether
    /// the record it read is still the stored one (compare-and-set in the store).
    #[serde(default = "first_version")]
    pub version: u64,
    /// The IdP's side of the sign-in, when there is anything to keep (a refresh token, the
    /// IdP's session id). Boxed: a session without one costs 8 bytes for it, not 64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idp: Option<Box<IdpGrant>>,
}

fn first_version() -> u64 {
    1
}

/// What refresh and back-channel logout need from the IdP's answer at sign-in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdpGrant {
    /// The IdP's session id (the ID token's `sid`), which a back-channel logout may name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<Box<str>>,
    /// The refresh token, AEAD-sealed under a key of its own and bound to this session's
    /// id: neither the store nor a log ever holds it in clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<SealedToken>,
    /// When the IdP's access token expires (Unix seconds); 0 when the IdP did not say.
    #[serde(default)]
    pub access_expires_at: u64,
    /// From when a request refreshes the tokens (in the background until they expire).
    /// 0: never (no refresh token, or no expiry to refresh before).
    #[serde(default)]
    pub refresh_at: u64,
    /// The sign-in read UserInfo, so a refresh reads it again.
    #[serde(default)]
    pub userinfo: bool,
}

/// A sealed secret as bytes (nonce, ciphertext, tag). Opaque here: the session module
/// seals and opens it. Its `Debug` prints only its length; it serializes as base64url.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedToken(pub Box<[u8]>);

impl std::fmt::Debug for SealedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealedToken({} bytes)", self.0.len())
    }
}

impl Serialize for SealedToken {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&URL_SAFE_NO_PAD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for SealedToken {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        URL_SAFE_NO_PAD
            .decode(text.as_bytes())
            .map(|b| Self(b.into_boxed_slice()))
            .map_err(|_| serde::de::Error::custom("not base64url"))
    }
}

/// Where a session stands with the IdP's tokens at some moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Nothing to do (no refresh token, or not yet time).
    Fresh,
    /// Time to refresh, but the access token is still valid: use the session, refresh
    /// beside the request.
    RefreshSoon,
    /// The access token has expired: the session may be used only once refreshed.
    Expired,
}

impl Session {
    pub fn new(user: User, now: u64, lifetime_secs: u64) -> Self {
        Self {
            id: SessionId::random(),
            user,
            created_at: now,
            expires_at: now + lifetime_secs,
            version: 1,
            idp: None,
        }
    }

    /// A stable, non-secret identifier for logs and the JWT `sid` claim.
    pub fn public_id(&self) -> String {
        self.id.public_id()
    }

    /// Whether the IdP's tokens need a refresh at `now`. Two integer comparisons: this runs
    /// on every `Check`.
    pub fn freshness(&self, now: u64) -> Freshness {
        match &self.idp {
            Some(g) if g.refresh_at != 0 && now >= g.refresh_at => {
                if now >= g.access_expires_at {
                    Freshness::Expired
                } else {
                    Freshness::RefreshSoon
                }
            }
            _ => Freshness::Fresh,
        }
    }

    /// The IdP's session id, if the sign-in had one.
    pub fn idp_sid(&self) -> Option<&str> {
        self.idp.as_ref().and_then(|g| g.sid.as_deref())
    }
}

/// When to start refreshing tokens that expire `expires_in` seconds after `now`: with a
/// quarter of their life left, but at most a minute early (and never before `now`).
pub fn refresh_time(now: u64, expires_in: u64) -> u64 {
    now + expires_in - (expires_in / 4).min(60)
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
    fn freshness_follows_the_access_token() {
        let mut s = Session::new(
            User {
                subject: "s".into(),
                email: None,
                email_verified: false,
                name: None,
                preferred_username: None,
                groups: vec![],
                claims: Vec::new(),
            },
            100,
            3600,
        );
        assert_eq!(s.freshness(5000), Freshness::Fresh, "no grant");
        s.idp = Some(Box::new(IdpGrant {
            refresh_at: refresh_time(100, 40),
            access_expires_at: 140,
            ..IdpGrant::default()
        }));
        assert_eq!(refresh_time(100, 40), 130);
        assert_eq!(refresh_time(100, 3600), 3640, "at most a minute early");
        assert_eq!(s.freshness(129), Freshness::Fresh);
        assert_eq!(s.freshness(130), Freshness::RefreshSoon);
        assert_eq!(s.freshness(140), Freshness::Expired);
        let json = serde_json::to_string(&s).unwrap();
        let back: Session = serde_json::from_str(&json).unwrap();
        assert_eq!(back.idp, s.idp);
        assert_eq!(back.version, 1);
    }

    #[test]
    fn sealed_tokens_print_only_their_length() {
        let t = SealedToken(vec![1, 2, 3].into_boxed_slice());
        assert_eq!(format!("{t:?}"), "SealedToken(3 bytes)");
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<SealedToken>(&json).unwrap(), t);
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
