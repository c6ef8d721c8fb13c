//! Who the user is, and the signed identity JWT that tells upstreams so.

mod keys;
mod token;

pub use keys::{Jwk, Jwks, SigningKeys, generate_pkcs8_pem, public_jwk_from_pem};
pub use token::{IdentityClaims, TokenCache, TokenMinter};

use serde::{Deserialize, Serialize};

/// A signed-in user, as the identity provider described them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub subject: String,
    pub email: Option<String>,
    /// `None` when the IdP did not say.
    pub email_verified: Option<bool>,
    pub name: Option<String>,
    pub preferred_username: Option<String>,
    pub groups: Vec<String>,
}

impl User {
    /// The email, unless the IdP explicitly marked it unverified.
    pub fn verified_email(&self) -> Option<&str> {
        match self.email_verified {
            Some(false) => None,
            _ => self.email.as_deref(),
        }
    }

    /// The best human-readable label for pages and logs.
    pub fn display(&self) -> &str {
        self.email
            .as_deref()
            .or(self.preferred_username.as_deref())
            .or(self.name.as_deref())
            .unwrap_or(&self.subject)
    }
}
