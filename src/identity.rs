//! The signed identity JWT that tells upstreams who the user is, and the keys it is
//! signed with.

mod keys;
mod token;

pub use keys::{Jwk, Jwks, SigningKeys, generate_pkcs8_pem, public_jwk_from_pem};
pub use token::{IdentityClaims, TokenCache, TokenMinter};
