//! Sign-in limits, in the spirit of Cockpit's `MaxStartups`: per client address, sign-in
//! starts and callbacks per minute; per account, completed sign-ins per minute. Past a
//! limit, the answer is 429 with `Retry-After`.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::config::SignInLimits as Settings;

/// The limiters (`None`: that limit is off).
pub struct SignInLimits {
    per_address: Option<DefaultKeyedRateLimiter<IpAddr>>,
    per_account: Option<DefaultKeyedRateLimiter<String>>,
    clock: DefaultClock,
}

/// A limit was reached; try again after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited(pub Duration);

impl SignInLimits {
    pub fn new(settings: &Settings) -> Self {
        // Per minute, with the whole minute's worth available at once.
        let limiter = |n: u32| NonZeroU32::new(n).map(|n| Quota::per_minute(n).allow_burst(n));
        Self {
            per_address: limiter(settings.per_address).map(DefaultKeyedRateLimiter::keyed),
            per_account: limiter(settings.per_account).map(DefaultKeyedRateLimiter::keyed),
            clock: DefaultClock::default(),
        }
    }

    /// One sign-in start or callback from `address` (unknown: one shared allowance).
    pub fn address(&self, address: Option<IpAddr>) -> Result<(), Limited> {
        let Some(l) = &self.per_address else {
            return Ok(());
        };
        let key = address.unwrap_or(IpAddr::from([0, 0, 0, 0]));
        l.check_key(&key)
            .map_err(|not_until| Limited(not_until.wait_time_from(self.clock.now())))
    }

    /// One completed sign-in of `account` (the IdP's subject).
    pub fn account(&self, account: &str) -> Result<(), Limited> {
        let Some(l) = &self.per_account else {
            return Ok(());
        };
        l.check_key(&account.to_string())
            .map_err(|not_until| Limited(not_until.wait_time_from(self.clock.now())))
    }

    /// Forgets addresses and accounts whose allowance is full again; called periodically
    /// so that the tables do not grow with every address ever seen.
    pub fn sweep(&self) {
        if let Some(l) = &self.per_address {
            l.retain_recent();
        }
        if let Some(l) = &self.per_account {
            l.retain_recent();
        }
    }
}

impl Limited {
    /// Whole seconds to wait, at least one (`Retry-After`).
    pub fn retry_after_secs(self) -> u64 {
        self.0.as_secs() + u64::from(self.0.subsec_nanos() > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_and_account_has_its_own_allowance() {
        let l = SignInLimits::new(&Settings {
            per_address: 3,
            per_account: 1,
        });
        let a = Some(IpAddr::from([192, 0, 2, 1]));
        let b = Some(IpAddr::from([192, 0, 2, 2]));
        for _ in 0..3 {
            l.address(a).unwrap();
        }
        let wait = l.address(a).unwrap_err();
        assert!((1..=60).contains(&wait.retry_after_secs()), "{wait:?}");
        l.address(b).unwrap();
        l.account("alice").unwrap();
        assert!(l.account("alice").is_err());
        l.account("bob").unwrap();
        let off = SignInLimits::new(&Settings {
            per_address: 0,
            per_account: 0,
        });
        for _ in 0..1000 {
            off.address(a).unwrap();
            off.account("alice").unwrap();
        }
        l.sweep();
    }
}
