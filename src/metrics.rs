//! Prometheus metrics, served on their own listener (`server.metrics_address`) so they are
//! never reachable through Envoy.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::core::OutcomeKind;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

/// Everything portcullis counts.
pub struct Metrics {
    registry: Registry,
    check_duration: Histogram,
    decisions: Family<OutcomeLabel, Counter>,
    pub sign_ins: Counter,
    pub sign_in_failures: Counter,
    pub sessions: Gauge<i64, std::sync::atomic::AtomicI64>,
    tokens_signed: Counter<u64, AtomicU64>,
    pub refresh: crate::refresh::RefreshCounters,
    /// Back-channel logouts accepted, and refused (bad, replayed or unverifiable tokens).
    pub backchannel_logouts: Counter,
    pub backchannel_logout_rejections: Counter,
    /// Sessions ended by sign-out, revocation, back-channel logout or a refused refresh.
    pub sessions_revoked: Counter,
    /// Requests answered 503 because the session store could not be reached.
    pub store_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("portcullis");
        // 2 µs … ~0.5 s: the interesting range is the tens of microseconds.
        let check_duration = Histogram::new(exponential_buckets(0.000_002, 2.0, 18));
        registry.register(
            "check_duration_seconds",
            "Time spent answering one ext_authz Check, in the handler",
            check_duration.clone(),
        );
        let decisions = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "check_decisions",
            "ext_authz decisions by outcome",
            decisions.clone(),
        );
        let sign_ins = Counter::default();
        registry.register("sign_ins", "Completed OIDC sign-ins", sign_ins.clone());
        let sign_in_failures = Counter::default();
        registry.register(
            "sign_in_failures",
            "OIDC sign-ins that failed at the callback",
            sign_in_failures.clone(),
        );
        let sessions = Gauge::default();
        registry.register(
            "sessions",
            "Live sessions in the in-memory store",
            sessions.clone(),
        );
        let tokens_signed = Counter::default();
        registry.register(
            "identity_tokens_signed",
            "Identity JWTs signed (cache misses)",
            tokens_signed.clone(),
        );
        let refresh = crate::refresh::RefreshCounters::default();
        registry.register(
            "token_refreshes",
            "IdP token refreshes that succeeded",
            refresh.refreshed.clone(),
        );
        registry.register(
            "token_refresh_refusals",
            "IdP token refreshes the IdP refused (the session ended)",
            refresh.refused.clone(),
        );
        registry.register(
            "token_refresh_failures",
            "IdP token refreshes that could not reach the IdP (retried later)",
            refresh.failed.clone(),
        );
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let backchannel_logouts = counter(
            &mut registry,
            "backchannel_logouts",
            "Back-channel logout requests accepted",
        );
        let backchannel_logout_rejections = counter(
            &mut registry,
            "backchannel_logout_rejections",
            "Back-channel logout requests refused (invalid, replayed or unverifiable token)",
        );
        let sessions_revoked = counter(
            &mut registry,
            "sessions_revoked",
            "Sessions ended by sign-out, revocation, back-channel logout or a refused refresh",
        );
        let store_errors = counter(
            &mut registry,
            "session_store_errors",
            "HTTP requests answered 503 because the session store could not be reached",
        );
        Self {
            registry,
            check_duration,
            decisions,
            sign_ins,
            sign_in_failures,
            sessions,
            tokens_signed,
            refresh,
            backchannel_logouts,
            backchannel_logout_rejections,
            sessions_revoked,
            store_errors,
        }
    }
}

impl Metrics {
    /// Counts one decision by its kind, and times it.
    pub fn observe_check(&self, kind: OutcomeKind, elapsed: Duration) {
        self.check_duration.observe(elapsed.as_secs_f64());
        self.decisions
            .get_or_create(&OutcomeLabel {
                outcome: kind.as_str(),
            })
            .inc();
    }

    /// The counter of identity JWTs signed, for the token source to count with.
    pub fn tokens_signed(&self) -> Counter {
        self.tokens_signed.clone()
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String does not fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_are_counted_by_outcome_and_timed() {
        let m = Metrics::default();
        m.observe_check(OutcomeKind::Allow, Duration::from_micros(20));
        m.observe_check(OutcomeKind::SignInRequired, Duration::from_micros(20));
        m.observe_check(OutcomeKind::SignInRequired, Duration::from_micros(20));
        let text = m.encode();
        assert!(
            text.contains(r#"portcullis_check_decisions_total{outcome="allow"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"portcullis_check_decisions_total{outcome="sign_in_required"} 2"#),
            "{text}"
        );
        assert!(
            text.contains("portcullis_check_duration_seconds_count 3"),
            "{text}"
        );
        assert!(
            text.contains(r#"portcullis_check_duration_seconds_bucket{le="0.000032"} 3"#),
            "{text}"
        );
    }
}
