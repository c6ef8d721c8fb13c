//! The key portcullis authenticates to the IdP's token endpoint with, for
//! `private_key_jwt` (RFC 7523): an EC P-256 key (ES256) or an RSA key (RS256), whose public
//! half the admin registers at the IdP (`portcullis client-jwk` prints it).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::rsa::PublicKeyComponents;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair,
};
use serde::Serialize;

use super::keys::{KeyError, pem_body};

/// A private key for client assertions.
pub struct ClientKey {
    pair: Pair,
    kid: String,
    jwk: serde_json::Value,
    rng: SystemRandom,
    /// Thumbprints of the key's certificate (`x5t`, `x5t#S256`), which some IdPs (Entra ID)
    /// look keys up by instead of `kid`.
    thumbprints: Option<(String, String)>,
}

enum Pair {
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientKey")
            .field("alg", &self.alg())
            .field("kid", &self.kid)
            .field("private", &"[redacted]")
            .finish()
    }
}

impl ClientKey {
    /// Reads a PKCS#8 PEM key (`BEGIN PRIVATE KEY`, EC P-256 or RSA) or a PKCS#1 RSA key
    /// (`BEGIN RSA PRIVATE KEY`).
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let rng = SystemRandom::new();
        let pair = if let Some(der) = pem_body(pem, "RSA PRIVATE KEY") {
            Pair::Rsa(RsaKeyPair::from_der(&der).map_err(|e| KeyError::NotP256(e.to_string()))?)
        } else {
            let der = pem_body(pem, "PRIVATE KEY").ok_or(KeyError::NotPkcs8Pem)?;
            match EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng) {
                Ok(ec) => Pair::Ec(ec),
                Err(_) => Pair::Rsa(RsaKeyPair::from_pkcs8(&der).map_err(|e| {
                    KeyError::NotP256(format!("neither a P-256 nor an RSA key ({e})"))
                })?),
            }
        };
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        // RFC 7638 thumbprints: the required members, in lexicographic order.
        let (canonical, mut jwk) = match &pair {
            Pair::Ec(ec) => {
                let point = ec.public_key().as_ref();
                let (x, y) = (b64(&point[1..33]), b64(&point[33..65]));
                (
                    format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#),
                    serde_json::json!({"kty": "EC", "crv": "P-256", "x": x, "y": y, "alg": "ES256"}),
                )
            }
            Pair::Rsa(rsa) => {
                let parts = PublicKeyComponents::<Vec<u8>>::from(rsa.public());
                let (n, e) = (b64(&parts.n), b64(&parts.e));
                (
                    format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#),
                    serde_json::json!({"kty": "RSA", "n": n, "e": e, "alg": "RS256"}),
                )
            }
        };
        let kid = crate::crypto::sha256_b64(canonical.as_bytes());
        jwk["kid"] = kid.clone().into();
        jwk["use"] = "sig".into();
        Ok(Self {
            pair,
            kid,
            jwk,
            rng,
            thumbprints: None,
        })
    }

    /// Adds the thumbprints of `cert_pem`, the key's X.509 certificate, to every assertion.
    /// The certificate must hold this key's public half.
    pub fn with_certificate(mut self, cert_pem: &str) -> Result<Self, String> {
        let der = pem_body(cert_pem, "CERTIFICATE").ok_or("not a PEM certificate")?;
        let public: Vec<u8> = match &self.pair {
            Pair::Ec(ec) => ec.public_key().as_ref().to_vec(),
            Pair::Rsa(rsa) => PublicKeyComponents::<Vec<u8>>::from(rsa.public()).n,
        };
        // The public key's bytes stand in the certificate's SubjectPublicKeyInfo as they are.
        if !der.windows(public.len()).any(|w| w == public.as_slice()) {
            return Err("the certificate is not for this key".into());
        }
        let b64 = |d: ring::digest::Digest| URL_SAFE_NO_PAD.encode(d.as_ref());
        self.thumbprints = Some((
            b64(ring::digest::digest(
                &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
                &der,
            )),
            b64(ring::digest::digest(&ring::digest::SHA256, &der)),
        ));
        Ok(self)
    }

    pub fn alg(&self) -> &'static str {
        match self.pair {
            Pair::Ec(_) => "ES256",
            Pair::Rsa(_) => "RS256",
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// What identifies this key and certificate to the IdP: a reload that changes either
    /// needs a new client.
    pub fn fingerprint(&self) -> String {
        match &self.thumbprints {
            Some((sha1, sha256)) => format!("{}|{sha1}|{sha256}", self.kid),
            None => self.kid.clone(),
        }
    }

    /// The public key as a JWK, for the IdP's client registration.
    pub fn public_jwk(&self) -> &serde_json::Value {
        &self.jwk
    }

    /// A compact JWS of `claims`, with `kid` in the header.
    pub fn sign(&self, claims: &impl Serialize) -> String {
        let mut header = serde_json::json!({"alg": self.alg(), "typ": "JWT", "kid": self.kid});
        if let Some((sha1, sha256)) = &self.thumbprints {
            header["x5t"] = sha1.as_str().into();
            header["x5t#S256"] = sha256.as_str().into();
        }
        let mut token = URL_SAFE_NO_PAD.encode(header.to_string());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(
            serde_json::to_vec(claims).expect("claims are plain data"),
            &mut token,
        );
        let signature = match &self.pair {
            Pair::Ec(ec) => ec
                .sign(&self.rng, token.as_bytes())
                .expect("the system random source is available")
                .as_ref()
                .to_vec(),
            Pair::Rsa(rsa) => {
                let mut sig = vec![0; rsa.public().modulus_len()];
                rsa.sign(&RSA_PKCS1_SHA256, &self.rng, token.as_bytes(), &mut sig)
                    .expect("RSA signing with a parsed key and a sized buffer");
                sig
            }
        };
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut token);
        token
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::generate_pkcs8_pem;

    #[test]
    fn an_ec_key_signs_assertions_its_jwk_verifies() {
        let key = ClientKey::from_pem(&generate_pkcs8_pem()).unwrap();
        assert_eq!(key.alg(), "ES256");
        let token = key.sign(&serde_json::json!({"iss": "portcullis", "exp": 4_000_000_000u64}));
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.public_jwk().clone()).unwrap();
        let decoding = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        v.set_required_spec_claims(&["exp"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &v).unwrap();
        assert_eq!(data.claims["iss"], "portcullis");
        assert_eq!(data.header.kid.as_deref(), Some(key.kid()));
        assert!(!format!("{key:?}").contains(&key.jwk["x"].to_string()[2..10]));
    }

    /// A 2048-bit RSA key made for this test (`openssl genpkey -algorithm RSA`).
    const RSA_PEM: &str = include_str!("testdata/rsa2048.pem");

    #[test]
    fn an_rsa_key_signs_rs256_assertions_its_jwk_verifies() {
        let key = ClientKey::from_pem(RSA_PEM).unwrap();
        assert_eq!(key.alg(), "RS256");
        let token = key.sign(&serde_json::json!({"sub": "portcullis", "exp": 4_000_000_000u64}));
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.public_jwk().clone()).unwrap();
        let decoding = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
        let v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        let data = jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &v).unwrap();
        assert_eq!(data.claims["sub"], "portcullis");
        assert_eq!(key.kid().len(), 43);
    }

    #[test]
    fn a_certificate_adds_its_thumbprints_to_assertions() {
        // Made for this test: `openssl req -x509 -key testdata/rsa2048.pem`; the thumbprints
        // are openssl's own fingerprints of it, in base64url.
        let cert = include_str!("testdata/rsa2048.crt");
        let key = ClientKey::from_pem(RSA_PEM)
            .unwrap()
            .with_certificate(cert)
            .unwrap();
        let token = key.sign(&serde_json::json!({"sub": "x"}));
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.x5t.as_deref(), Some("EGxVU39oUHxhtXp-dF0-yl8ZjL8"));
        assert_eq!(
            header.x5t_s256.as_deref(),
            Some("KW0x8h0avZ1yYlLMgsVS74EjsQAerP0AkwjJ8Ff4Cg4")
        );
        // A certificate of another key is refused.
        let ec = ClientKey::from_pem(&generate_pkcs8_pem()).unwrap();
        assert!(ec.with_certificate(cert).is_err());
        assert!(
            ClientKey::from_pem(RSA_PEM)
                .unwrap()
                .with_certificate("x")
                .is_err()
        );
    }

    #[test]
    fn what_is_not_a_key_is_refused() {
        for bad in [
            "",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ] {
            assert!(ClientKey::from_pem(bad).is_err(), "{bad:?}");
        }
    }
}
