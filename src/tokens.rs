//! The tokens portcullis signs for allowed requests: identity JWTs, cached per (session,
//! route), and Cockpit login credentials. The real [`TokenSource`] of the authorizer.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;

use crate::authorizer::TokenSource;
use crate::cockpit::{TokenTooLong, basic_credential};
use crate::core::{Route, Session, SessionId};
use crate::identity::{TokenCache, TokenMinter};

/// Signs with the configured key, and caches identity JWTs.
pub struct Tokens {
    minter: TokenMinter,
    cache: TokenCache,
    /// Counts signatures (cache misses), for the metrics.
    signed: Counter,
}

impl Tokens {
    pub fn new(minter: TokenMinter, signed: Counter) -> Self {
        Self {
            minter,
            cache: TokenCache::default(),
            signed,
        }
    }

    pub fn minter(&self) -> &TokenMinter {
        &self.minter
    }

    /// Drops every cached token of a session (sign-out).
    pub fn forget_session(&self, id: SessionId) {
        self.cache.forget_session(id);
    }

    /// Drops expired tokens; called by the periodic sweeper.
    pub fn prune(&self, now: u64) {
        self.cache.prune(now);
    }

    pub fn cached(&self) -> usize {
        self.cache.len()
    }
}

impl TokenSource for Tokens {
    fn identity_token(&self, session: &Session, route: &Route, now: u64) -> Arc<str> {
        self.cache.get_or_mint(session.id, route.id, now, || {
            self.signed.inc();
            let role = route
                .role
                .as_ref()
                .and_then(|m| m.role_for(&session.user.groups));
            self.minter.mint(
                &session.user,
                &session.public_id(),
                route.audience(),
                role,
                now,
            )
        })
    }

    fn cockpit_credential(
        &self,
        account: &str,
        admin: bool,
        route: &Route,
        now: u64,
    ) -> Result<String, TokenTooLong> {
        basic_credential(
            self.minter.keys(),
            self.minter.issuer(),
            account,
            admin,
            &route.authority,
            now,
        )
    }
}
