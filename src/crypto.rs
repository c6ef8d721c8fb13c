//! Symmetric crypto for everything portcullis hands to a browser: session cookies, the CSRF
//! cookie of a sign-in in flight, and the cross-domain hop token. All are AEAD-sealed
//! (AES-256-GCM, ring) with a key derived per purpose from the one cookie secret, so a value
//! minted for one purpose can never be replayed as another, and the purpose-specific
//! associated data (e.g. the host a cookie belongs to) binds it to its context.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::secret::SecretBytes;

/// Why a sealed value was refused. Callers treat every variant the same way (as "no value"),
/// the distinction exists for debug logs.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    #[error("not valid base64url")]
    Encoding,
    #[error("too short to be a sealed value")]
    Truncated,
    #[error("authentication failed (tampered, wrong key or wrong context)")]
    Authentication,
    #[error("payload is not the expected structure")]
    Payload,
}

/// What a derived key is for. Each purpose gets its own HKDF-derived key.
#[derive(Debug, Clone, Copy)]
pub enum Purpose {
    Session,
    Csrf,
    Hop,
    IdTokenHint,
    SignOut,
    /// The IdP's refresh tokens in session records (in memory or in Redis).
    RefreshToken,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::Session => b"portcullis session cookie v1",
            Purpose::Csrf => b"portcullis csrf cookie v1",
            Purpose::Hop => b"portcullis hop token v1",
            Purpose::IdTokenHint => b"portcullis id token hint cookie v1",
            Purpose::SignOut => b"portcullis sign-out continuation v1",
            Purpose::RefreshToken => b"portcullis refresh token in the session store v1",
        }
    }
}

/// A sealing key for one purpose.
pub struct Sealer {
    /// The key that seals.
    key: LessSafeKey,
    /// Keys of earlier secrets that still open (during a secret rotation), newest first.
    previous: Vec<LessSafeKey>,
    rng: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer([redacted])")
    }
}

struct KeyLen;
impl hkdf::KeyType for KeyLen {
    fn len(&self) -> usize {
        32
    }
}

fn derive_key(master: &SecretBytes, purpose: Purpose) -> LessSafeKey {
    let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"portcullis");
    let prk = salt.extract(master.expose());
    let info = [purpose.label()];
    let okm = prk
        .expand(&info, KeyLen)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    let mut bytes = [0u8; 32];
    okm.fill(&mut bytes)
        .expect("buffer length matches the requested key length");
    let key = UnboundKey::new(&AES_256_GCM, &bytes).expect("32-byte key fits AES-256-GCM");
    LessSafeKey::new(key)
}

impl Sealer {
    pub fn derive(master: &SecretBytes, purpose: Purpose) -> Self {
        Self::rotating(master, &[], purpose)
    }

    /// Seals with `current`; opens what `current` or any of `previous` sealed, so that a
    /// secret can be rotated without signing anyone out: add the new one in front, keep the
    /// old ones until what they sealed has expired.
    pub fn rotating(current: &SecretBytes, previous: &[SecretBytes], purpose: Purpose) -> Self {
        Self {
            key: derive_key(current, purpose),
            previous: previous.iter().map(|p| derive_key(p, purpose)).collect(),
            rng: SystemRandom::new(),
        }
    }

    /// Seals `value` as JSON and returns `base64url(nonce || ciphertext || tag)`.
    pub fn seal<T: Serialize>(&self, value: &T, context: &[u8]) -> String {
        let buf = serde_json::to_vec(value).expect("sealed payloads are plain data");
        URL_SAFE_NO_PAD.encode(self.seal_bytes(buf, context))
    }

    /// Seals raw bytes: `nonce || ciphertext || tag`, for records that keep bytes rather
    /// than text (a session's refresh token).
    pub fn seal_bytes(&self, mut buf: Vec<u8>, context: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .expect("the system random source is available");
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context),
                &mut buf,
            )
            .expect("AES-GCM sealing cannot fail for in-memory buffers this small");
        let mut out = Vec::with_capacity(NONCE_LEN + buf.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        out
    }

    /// Opens bytes sealed by [`Sealer::seal_bytes`] with the same context.
    pub fn open_bytes(&self, sealed: &[u8], context: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(OpenError::Truncated);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[..NONCE_LEN]);
        let mut buf = sealed[NONCE_LEN..].to_vec();
        let n = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context),
                &mut buf,
            )
            .map_err(|_| OpenError::Authentication)?
            .len();
        buf.truncate(n);
        Ok(buf)
    }

    /// Opens a value sealed by [`Sealer::seal`] with the same context.
    pub fn open<T: DeserializeOwned>(&self, sealed: &str, context: &[u8]) -> Result<T, OpenError> {
        // Bound the work an attacker can make us do with a huge cookie.
        if sealed.len() > 8192 {
            return Err(OpenError::Payload);
        }
        let mut raw = URL_SAFE_NO_PAD
            .decode(sealed.trim())
            .map_err(|_| OpenError::Encoding)?;
        if raw.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(OpenError::Truncated);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&raw[..NONCE_LEN]);
        let sealed = raw.split_off(NONCE_LEN);
        for key in std::iter::once(&self.key).chain(&self.previous) {
            // AES-GCM opens in place; a key that fails must not leave the buffer changed
            // for the next one (it does not, but keep each try on its own copy anyway).
            let mut buf = sealed.clone();
            if let Ok(plain) = key.open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context),
                &mut buf,
            ) {
                return serde_json::from_slice(plain).map_err(|_| OpenError::Payload);
            }
        }
        Err(OpenError::Authentication)
    }
}

/// `N` random bytes from the system source.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    fill_random(&mut bytes);
    bytes
}

/// `n` random bytes from the system source, base64url encoded.
pub fn random_token(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    fill_random(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn fill_random(bytes: &mut [u8]) {
    SystemRandom::new()
        .fill(bytes)
        .expect("the system random source is available");
}

/// SHA-256 of `data`, base64url encoded.
pub fn sha256_b64(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, data))
}

/// Constant-time equality for secrets compared against client input.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct P {
        a: u32,
    }

    fn sealer(p: Purpose) -> Sealer {
        Sealer::derive(&SecretBytes::new(vec![7u8; 32]), p)
    }

    #[test]
    fn round_trip() {
        let s = sealer(Purpose::Session);
        let v = s.seal(&P { a: 5 }, b"ctx");
        assert_eq!(s.open::<P>(&v, b"ctx"), Ok(P { a: 5 }));
    }

    #[test]
    fn wrong_context_purpose_or_tamper_is_refused() {
        let s = sealer(Purpose::Session);
        let v = s.seal(&P { a: 5 }, b"app.localhost");
        assert_eq!(
            s.open::<P>(&v, b"admin.localhost"),
            Err(OpenError::Authentication)
        );
        assert_eq!(
            sealer(Purpose::Hop).open::<P>(&v, b"app.localhost"),
            Err(OpenError::Authentication)
        );
        let mut chars: Vec<char> = v.chars().collect();
        let i = chars.len() / 2;
        chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
        let tampered: String = chars.into_iter().collect();
        assert_eq!(
            s.open::<P>(&tampered, b"app.localhost"),
            Err(OpenError::Authentication)
        );
        assert_eq!(s.open::<P>("%%%", b"x"), Err(OpenError::Encoding));
        assert_eq!(s.open::<P>("AAAA", b"x"), Err(OpenError::Truncated));
        assert_eq!(
            s.open::<P>(&"A".repeat(10_000), b"x"),
            Err(OpenError::Payload)
        );
    }

    #[test]
    fn bytes_round_trip_only_in_their_context() {
        let s = sealer(Purpose::RefreshToken);
        let sealed = s.seal_bytes(b"rt-1".to_vec(), b"session-a");
        assert_eq!(s.open_bytes(&sealed, b"session-a").unwrap(), b"rt-1");
        assert_eq!(
            s.open_bytes(&sealed, b"session-b"),
            Err(OpenError::Authentication)
        );
        assert_eq!(
            sealer(Purpose::Session).open_bytes(&sealed, b"session-a"),
            Err(OpenError::Authentication)
        );
        assert_eq!(s.open_bytes(&sealed[..10], b"x"), Err(OpenError::Truncated));
    }

    #[test]
    fn a_rotated_secret_still_opens_and_no_longer_seals() {
        let (old, new) = (SecretBytes::new(vec![1; 32]), SecretBytes::new(vec![2; 32]));
        let before = Sealer::derive(&old, Purpose::Session);
        let sealed_before = before.seal(&P { a: 1 }, b"h");
        let during = Sealer::rotating(&new, std::slice::from_ref(&old), Purpose::Session);
        assert_eq!(during.open::<P>(&sealed_before, b"h"), Ok(P { a: 1 }));
        let sealed_during = during.seal(&P { a: 2 }, b"h");
        assert!(
            before.open::<P>(&sealed_during, b"h").is_err(),
            "seals with the new one"
        );
        let after = Sealer::derive(&new, Purpose::Session);
        assert_eq!(after.open::<P>(&sealed_during, b"h"), Ok(P { a: 2 }));
        assert!(
            after.open::<P>(&sealed_before, b"h").is_err(),
            "the old one retired"
        );
    }

    #[test]
    fn nonces_differ() {
        let s = sealer(Purpose::Csrf);
        assert_ne!(s.seal(&P { a: 1 }, b""), s.seal(&P { a: 1 }, b""));
    }
}
