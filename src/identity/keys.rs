//! The ES256 signing key and the JWKS that publishes its public half.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::EncodingKey;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde::{Deserialize, Serialize};

/// The key portcullis signs with, plus every public key it publishes.
///
/// The private key is parsed once, at load: signing cannot fail on a bad key at request
/// time (jsonwebtoken would parse the PKCS#8 document again for every signature).
pub struct SigningKeys {
    kid: String,
    pair: EcdsaKeyPair,
    rng: SystemRandom,
    /// For callers (tests) that sign tokens of their own shape with jsonwebtoken.
    encoding: EncodingKey,
    jwks: Jwks,
}

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeys")
            .field("kid", &self.kid)
            .field("private", &"[redacted]")
            .finish()
    }
}

/// A public key in JWK form (RFC 7517), P-256 only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    pub kty: String,
    pub crv: String,
    pub x: String,
    pub y: String,
    pub kid: String,
    pub alg: String,
    #[serde(rename = "use")]
    pub use_: String,
}

/// A JSON Web Key Set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "not a PKCS#8 PEM private key (expected -----BEGIN PRIVATE KEY-----; convert SEC1 keys with `openssl pkcs8 -topk8 -nocrypt`)"
    )]
    NotPkcs8Pem,
    #[error("not a P-256 (ES256) private key: {0}")]
    NotP256(String),
}

impl SigningKeys {
    /// Loads a PKCS#8 PEM P-256 private key, as written by `portcullis keygen`.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let pem = std::fs::read_to_string(path)?;
        Self::from_pem(&pem)
    }

    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let der = pem_body(pem, "PRIVATE KEY").ok_or(KeyError::NotPkcs8Pem)?;
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &SystemRandom::new())
                .map_err(|e| KeyError::NotP256(e.to_string()))?;
        let jwk = jwk_from_public_point(pair.public_key().as_ref())
            .ok_or_else(|| KeyError::NotP256("unexpected public key encoding".into()))?;
        Ok(Self {
            kid: jwk.kid.clone(),
            pair,
            rng: SystemRandom::new(),
            encoding: EncodingKey::from_ec_der(&der),
            jwks: Jwks { keys: vec![jwk] },
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Also publishes `jwk` (a key being rotated in or out). A key already published is kept once.
    pub fn publish(&mut self, jwk: Jwk) {
        if !self.jwks.keys.iter().any(|k| k.kid == jwk.kid) {
            self.jwks.keys.push(jwk);
        }
    }

    pub fn encoding_key(&self) -> &EncodingKey {
        &self.encoding
    }

    /// The base64url JOSE header `{"typ":TYP,"alg":"ES256","kid":KID}` of this key's
    /// tokens, made once by callers and reused for every [`SigningKeys::sign`].
    pub fn jose_header(&self, typ: &str) -> String {
        let header = serde_json::json!({"typ": typ, "alg": "ES256", "kid": self.kid});
        URL_SAFE_NO_PAD.encode(header.to_string())
    }

    /// A compact JWS (ES256) of `claims` under `header` (from [`SigningKeys::jose_header`]).
    pub fn sign(&self, header: &str, claims: &impl Serialize) -> String {
        let payload = serde_json::to_vec(claims).expect("claims are plain data");
        let mut token = String::with_capacity(header.len() + payload.len() * 4 / 3 + 90);
        token.push_str(header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(payload, &mut token);
        let signature = self
            .pair
            .sign(&self.rng, token.as_bytes())
            .expect("the system random source is available");
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut token);
        token
    }

    /// The JWKS document: the signing key's public half first.
    pub fn jwks(&self) -> &Jwks {
        &self.jwks
    }
}

/// Builds the JWK for an uncompressed P-256 point (`0x04 || x || y`), `kid` = RFC 7638 thumbprint.
fn jwk_from_public_point(point: &[u8]) -> Option<Jwk> {
    if point.len() != 65 || point[0] != 0x04 {
        return None;
    }
    let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
    let y = URL_SAFE_NO_PAD.encode(&point[33..65]);
    // RFC 7638: the required members, lexicographic order, no whitespace.
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    let kid = crate::crypto::sha256_b64(canonical.as_bytes());
    Some(Jwk {
        kty: "EC".into(),
        crv: "P-256".into(),
        x,
        y,
        kid,
        alg: "ES256".into(),
        use_: "sig".into(),
    })
}

/// Reads the public key of a PEM file: a P-256 public key (`BEGIN PUBLIC KEY`, SPKI) or a
/// PKCS#8 private key, whose public half is taken.
pub fn public_jwk_from_pem(pem: &str) -> Result<Jwk, KeyError> {
    if let Some(der) = pem_body(pem, "PUBLIC KEY") {
        // SPKI for id-ecPublicKey on prime256v1 with an uncompressed point: a fixed 26-byte
        // prefix and the 65-byte point.
        const PREFIX: [u8; 26] = [
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
            0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
        ];
        return match der.strip_prefix(&PREFIX[..]) {
            Some(point) => jwk_from_public_point(point)
                .ok_or_else(|| KeyError::NotP256("unexpected public key encoding".into())),
            None => Err(KeyError::NotP256(
                "public key is not an uncompressed P-256 key".into(),
            )),
        };
    }
    let keys = SigningKeys::from_pem(pem)?;
    Ok(keys.jwks.keys[0].clone())
}

pub(super) fn pem_body(pem: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = start + pem[start..].find(&end)?;
    let body: String = pem[start..stop].split_whitespace().collect();
    STANDARD.decode(body).ok()
}

/// A new P-256 private key as PKCS#8 PEM.
pub fn generate_pkcs8_pem() -> String {
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
        .expect("the system random source is available");
    let b64 = STANDARD.encode(doc.as_ref());
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    pem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_loads_and_thumbprint_is_stable() {
        let pem = generate_pkcs8_pem();
        let a = SigningKeys::from_pem(&pem).unwrap();
        let b = SigningKeys::from_pem(&pem).unwrap();
        assert_eq!(a.kid(), b.kid());
        assert_eq!(a.jwks().keys.len(), 1);
        assert_eq!(a.jwks().keys[0].kid, a.kid());
        assert_eq!(URL_SAFE_NO_PAD.decode(a.kid()).unwrap().len(), 32);
        assert!(!format!("{a:?}").contains("BEGIN"));
    }

    #[test]
    fn rfc7638_example_shape() {
        // Thumbprint must depend only on crv/kty/x/y.
        let mut point = vec![4u8];
        point.extend([1u8; 64]);
        let j = jwk_from_public_point(&point).unwrap();
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            j.x, j.y
        );
        assert_eq!(j.kid, crate::crypto::sha256_b64(canonical.as_bytes()));
    }

    #[test]
    fn public_keys_from_spki_or_private_pem_match() {
        let pem = generate_pkcs8_pem();
        let keys = SigningKeys::from_pem(&pem).unwrap();
        let from_private = public_jwk_from_pem(&pem).unwrap();
        assert_eq!(from_private, keys.jwks().keys[0]);
        // SPKI built from the same point.
        let mut der = vec![
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
            0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00, 0x04,
        ];
        der.extend(URL_SAFE_NO_PAD.decode(&from_private.x).unwrap());
        der.extend(URL_SAFE_NO_PAD.decode(&from_private.y).unwrap());
        let spki = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            STANDARD.encode(&der)
        );
        assert_eq!(public_jwk_from_pem(&spki).unwrap(), from_private);
        let mut k2 = SigningKeys::from_pem(&pem).unwrap();
        k2.publish(from_private.clone());
        assert_eq!(k2.jwks().keys.len(), 1, "same key published once");
        k2.publish(public_jwk_from_pem(&generate_pkcs8_pem()).unwrap());
        assert_eq!(k2.jwks().keys.len(), 2);
        assert_eq!(k2.jwks().keys[0].kid, k2.kid(), "signing key first");
        assert!(
            public_jwk_from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----")
                .is_err()
        );
    }

    #[test]
    fn bad_keys_are_refused_not_panicked() {
        assert!(matches!(
            SigningKeys::from_pem(""),
            Err(KeyError::NotPkcs8Pem)
        ));
        assert!(matches!(
            SigningKeys::from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
            Err(KeyError::NotP256(_))
        ));
        assert!(matches!(
            SigningKeys::from_pem(
                "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n"
            ),
            Err(KeyError::NotPkcs8Pem)
        ));
    }
}
