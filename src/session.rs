//! Sessions: the server-side record of a sign-in, and the encrypted cookies that point at it.
//!
//! A cookie holds only `{sid, exp}`, AEAD-sealed and bound to the host it was issued for, so a
//! cookie is useless on another host, and tampering or expiry makes it "no session". The
//! record itself lives in a [`SessionStore`]; signing out removes it, which voids every
//! route-host cookie of that sign-in at once.

mod cookie;
mod store;

pub use cookie::{CookieCodec, CookieJar, set_cookie};
pub use store::{MemoryStore, SessionStore, StoreError};

use serde::{Deserialize, Serialize};

use crate::identity::User;
use crate::secret::SecretString;

/// One sign-in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    /// The store key. Secret: it only ever leaves the process inside sealed cookies.
    pub id: String,
    pub user: User,
    /// The IdP's ID token, kept for `id_token_hint` at sign-out.
    #[serde(with = "secret_opt")]
    pub id_token: Option<SecretString>,
    pub created_at: u64,
    pub expires_at: u64,
}

impl Session {
    pub fn new(user: User, id_token: Option<SecretString>, now: u64, lifetime_secs: u64) -> Self {
        Self {
            id: crate::crypto::random_token(32),
            user,
            id_token,
            created_at: now,
            expires_at: now + lifetime_secs,
        }
    }

    /// A stable, non-secret identifier for logs and the JWT `sid` claim.
    pub fn public_id(&self) -> String {
        public_id(&self.id)
    }
}

/// Derives the public session identifier from the secret store key.
pub fn public_id(sid: &str) -> String {
    let mut h = crate::crypto::sha256_b64(sid.as_bytes());
    h.truncate(22);
    h
}

mod secret_opt {
    use crate::secret::SecretString;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
        v.as_ref().map(|x| x.expose()).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
        Ok(Option::<String>::deserialize(d)?.map(SecretString::new))
    }
}
