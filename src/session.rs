//! Where sessions are kept and how browsers point at them.
//!
//! A cookie holds only `{sid, exp}`, AEAD-sealed and bound to the host it was issued for, so a
//! cookie is useless on another host, and tampering or expiry makes it "no session". The
//! record itself ([`crate::core::Session`]) lives in a [`SessionStore`]; signing out removes
//! it, which voids every route-host cookie of that sign-in at once.

/// The store contract as a test, for every store (the Redis one in `tests/`).
#[doc(hidden)]
pub mod conformance;
mod cookie;
mod grant;
mod redis;
mod store;

pub use cookie::{CookieCodec, CookieJar, set_cookie};
pub use grant::GrantSealer;
pub use redis::RedisStore;
pub use store::{MemoryStore, Selector, SessionLookup, SessionStore, StoreError};
