//! The signed identity JWT that tells upstreams who the user is, and the keys it is
//! signed with.

mod client_key;
mod keys;
mod token;

pub use client_key::ClientKey;
pub use keys::{Jwk, Jwks, KeyError, SigningKeys, generate_pkcs8_pem, public_jwk_from_pem};
pub use token::{IdentityClaims, TokenCache, TokenMinter};
