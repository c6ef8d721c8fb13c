//! A signed-in user, as the identity provider described them.

use serde::{Deserialize, Serialize};

/// A signed-in user, as the identity provider described them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub subject: String,
    pub email: Option<String>,
    /// True only when the IdP said `email_verified: true` (a JSON boolean), or said nothing
    /// and the config has `idp.assume_email_verified: true`.
    pub email_verified: bool,
    pub name: Option<String>,
    pub preferred_username: Option<String>,
    pub groups: Vec<String>,
    /// The claims route policies test (`claim/NAME`), kept from the sign-in: name → values
    /// (a string claim has one; a list, each of its strings).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claims: Vec<(String, Vec<String>)>,
}

impl User {
    /// The email, if verified. Email and domain policies, the Cockpit account mapping and
    /// the identity JWT's `email` use only this.
    pub fn verified_email(&self) -> Option<&str> {
        self.email.as_deref().filter(|_| self.email_verified)
    }

    /// The values of claim `name` (empty when the IdP did not send it or no policy asked).
    pub fn claim(&self, name: &str) -> &[String] {
        self.claims
            .iter()
            .find(|(n, _)| n == name)
            .map_or(&[], |(_, v)| v.as_slice())
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
