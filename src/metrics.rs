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
pub struct DecisionLabel {
    /// The route's name; empty when no route matched.
    pub route: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabel {
    pub version: &'static str,
}

/// The decision counters of one route table, resolved once (a `Check` increments one
/// without building a label or hashing).
pub struct DecisionCounters {
    per_route: Vec<Vec<Counter>>,
    no_route: Vec<Counter>,
}

impl DecisionCounters {
    /// Counts one decision on `route` (by its position in the table).
    pub fn count(&self, route: Option<crate::core::RouteId>, kind: OutcomeKind) {
        let row = route
            .and_then(|r| self.per_route.get(r.0 as usize))
            .unwrap_or(&self.no_route);
        if let Some(c) = row.get(kind.index()) {
            c.inc();
        }
    }
}

/// Calls to the identity provider: their time, and their failures by cause. Shared by the
/// sign-in callback and the refresher.
#[derive(Clone)]
pub struct IdpCalls {
    duration: Histogram,
    errors: Family<KindLabel, Counter>,
}

impl Default for IdpCalls {
    fn default() -> Self {
        // 1 ms … ~16 s: a round trip to the IdP.
        let calls = Self {
            duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            errors: Family::default(),
        };
        // Every cause exists from the start at 0: a series that appears only with the first
        // failure is "no data" to a rate() or an alert until then.
        for kind in &crate::oidc::OidcError::KINDS[..crate::oidc::OidcError::CALL_KINDS] {
            let _ = calls.errors.get_or_create(&KindLabel { kind });
        }
        calls
    }
}

impl IdpCalls {
    /// Times one call to the IdP, and counts its failure by cause.
    pub fn observe(&self, elapsed: Duration, error: Option<&'static str>) {
        self.duration.observe(elapsed.as_secs_f64());
        if let Some(kind) = error {
            self.errors.get_or_create(&KindLabel { kind }).inc();
        }
    }
}

/// Counters of refresh outcomes, and the IdP call metrics each refresh is timed in (here,
/// not in `refresh`, so that the dependency goes one way: refresh counts with metrics).
#[derive(Clone, Default)]
pub struct RefreshCounters {
    pub refreshed: Counter,
    pub refused: Counter,
    pub failed: Counter,
    pub idp: IdpCalls,
}

/// Everything portcullis counts.
pub struct Metrics {
    registry: Registry,
    check_duration: Histogram,
    decisions: Family<DecisionLabel, Counter>,
    idp: IdpCalls,
    /// Sign-outs (a session ended by its user).
    pub sign_outs: Counter,
    pub sign_ins: Counter,
    pub sign_in_failures: Counter,
    pub sessions: Gauge<i64, std::sync::atomic::AtomicI64>,
    /// 1 while the IdP is discovered and answers its probes, set when scraped.
    pub idp_up: Gauge<i64, std::sync::atomic::AtomicI64>,
    tokens_signed: Counter<u64, AtomicU64>,
    pub refresh: RefreshCounters,
    /// Back-channel logouts accepted, and refused (bad, replayed or unverifiable tokens).
    pub backchannel_logouts: Counter,
    pub backchannel_logout_rejections: Counter,
    /// Sessions ended by sign-out, revocation, back-channel logout or a refused refresh.
    pub sessions_revoked: Counter,
    /// Requests answered 503 because the session store could not be reached.
    pub store_errors: Counter,
    /// Config reloads that were swapped in, and refused.
    pub reloads_ok: Counter,
    pub reloads_refused: Counter,
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
        let decisions = Family::<DecisionLabel, Counter>::default();
        registry.register(
            "check_decisions",
            "ext_authz decisions by route and outcome",
            decisions.clone(),
        );
        let idp = IdpCalls::default();
        registry.register(
            "idp_request_duration_seconds",
            "Time of calls to the identity provider (code exchange with UserInfo, refresh)",
            idp.duration.clone(),
        );
        registry.register(
            "idp_errors",
            "Calls to the identity provider that failed, by cause",
            idp.errors.clone(),
        );
        let build = Family::<BuildLabel, Gauge>::default();
        build
            .get_or_create(&BuildLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "The running portcullis version", build);
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
        let idp_up = Gauge::default();
        registry.register(
            "idp_up",
            "1 while the identity provider is discovered and answers its probes, else 0",
            idp_up.clone(),
        );
        let tokens_signed = Counter::default();
        registry.register(
            "identity_tokens_signed",
            "Identity JWTs signed (cache misses)",
            tokens_signed.clone(),
        );
        let refresh = RefreshCounters {
            idp: idp.clone(),
            ..Default::default()
        };
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
        let sign_outs = counter(&mut registry, "sign_outs", "Sign-outs by users");
        let reloads = Family::<KindLabel, Counter>::default();
        registry.register(
            "config_reloads",
            "Config reloads, by result (ok: swapped in; refused: invalid, the old one serves)",
            reloads.clone(),
        );
        let reloads_ok = reloads.get_or_create(&KindLabel { kind: "ok" }).clone();
        let reloads_refused = reloads
            .get_or_create(&KindLabel { kind: "refused" })
            .clone();
        Self {
            registry,
            check_duration,
            decisions,
            sign_ins,
            sign_in_failures,
            sessions,
            idp_up,
            tokens_signed,
            refresh,
            backchannel_logouts,
            backchannel_logout_rejections,
            sessions_revoked,
            store_errors,
            idp,
            sign_outs,
            reloads_ok,
            reloads_refused,
        }
    }
}

impl Metrics {
    /// Times one `Check` (its decision is counted by [`DecisionCounters::count`]).
    pub fn observe_check(&self, elapsed: Duration) {
        self.check_duration.observe(elapsed.as_secs_f64());
    }

    /// The decision counters of a route table (the names in table order).
    pub fn decision_counters<'a>(&self, routes: impl Iterator<Item = &'a str>) -> DecisionCounters {
        let row = |route: &str| -> Vec<Counter> {
            OutcomeKind::ALL
                .iter()
                .map(|k| {
                    self.decisions
                        .get_or_create(&DecisionLabel {
                            route: route.to_string(),
                            outcome: k.as_str(),
                        })
                        .clone()
                })
                .collect()
        };
        DecisionCounters {
            per_route: routes.map(row).collect(),
            no_route: row(""),
        }
    }

    /// Times one call to the IdP, and counts its failure by cause.
    pub fn observe_idp(&self, elapsed: Duration, error: Option<&'static str>) {
        self.idp.observe(elapsed, error);
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
    fn idp_calls_are_timed_and_failures_counted_from_zero_including_refreshes() {
        let m = Metrics::default();
        let text = m.encode();
        for kind in &crate::oidc::OidcError::KINDS[..crate::oidc::OidcError::CALL_KINDS] {
            let line = format!("portcullis_idp_errors_total{{kind=\"{kind}\"}} 0\n");
            assert!(text.contains(&line), "{line} in:\n{text}");
        }
        for kind in ["logout_token", "bearer"] {
            assert!(
                !text.contains(&format!("kind=\"{kind}\"")),
                "{kind} in:\n{text}"
            );
        }
        m.observe_idp(Duration::from_millis(3), None);
        m.refresh
            .idp
            .observe(Duration::from_millis(3), Some("invalid_grant"));
        let text = m.encode();
        for line in [
            "portcullis_idp_request_duration_seconds_count 2\n",
            "portcullis_idp_errors_total{kind=\"invalid_grant\"} 1\n",
            "portcullis_idp_errors_total{kind=\"unreachable\"} 0\n",
        ] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
    }

    #[test]
    fn decisions_are_counted_by_outcome_and_timed() {
        let m = Metrics::default();
        let counters = m.decision_counters(["app", "admin"].into_iter());
        let app = Some(crate::core::RouteId(0));
        counters.count(app, OutcomeKind::Allow);
        counters.count(Some(crate::core::RouteId(1)), OutcomeKind::SignInRequired);
        counters.count(Some(crate::core::RouteId(1)), OutcomeKind::SignInRequired);
        counters.count(None, OutcomeKind::NoRoute);
        for _ in 0..3 {
            m.observe_check(Duration::from_micros(20));
        }
        let text = m.encode();
        for line in [
            r#"portcullis_check_decisions_total{route="app",outcome="allow"} 1"#,
            r#"portcullis_check_decisions_total{route="admin",outcome="sign_in_required"} 2"#,
            r#"portcullis_check_decisions_total{route="",outcome="no_route"} 1"#,
            r#"portcullis_check_decisions_total{route="app",outcome="forbidden"} 0"#,
            r#"portcullis_build_info{version=""#,
        ] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
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
