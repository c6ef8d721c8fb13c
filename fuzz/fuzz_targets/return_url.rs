//! The `rd` return URL of sign-in (and of a hop, which carries it sealed and checks it
//! again), and the request path that selects a route.
//!
//! Invariants:
//! - an accepted return URL is http(s), has a host and no userinfo, serializes without
//!   control characters, whitespace or backslashes (it goes into a `Location` header), lies
//!   on the host and under the prefix of the route it was accepted for, is selected for
//!   that route as written and as upstreams read it, and is accepted again, for the same
//!   route, in its serialized form (as the hop callback re-checks it);
//! - `canonical_path` never panics; its result has no query, no `;` parameters, no
//!   uppercase letters and no segment ending in a dot, a space or `%20`;
//! - a path `select`s a route only when that route's prefix matches the path both as
//!   written and in canonical form.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::core::authority_of;
use portcullis::core::route::canonical_path;
use portcullis_fuzz::{AUTH, ROUTE_HOSTS, fixture};

fuzz_target!(|data: &[u8]| {
    let raw = String::from_utf8_lossy(data);
    let routes = fixture().app.routes();
    if let Some((url, route)) = routes.return_url(&raw) {
        assert!(matches!(url.scheme(), "http" | "https"));
        assert_eq!(url.scheme(), route.from.scheme());
        assert!(url.host().is_some());
        assert!(url.username().is_empty() && url.password().is_none());
        let text = url.as_str();
        assert!(
            !text
                .chars()
                .any(|c| c.is_control() || c.is_whitespace() || c == '\\'),
            "{raw:?} serializes as {text:?}"
        );
        assert_eq!(
            authority_of(&url),
            route.authority,
            "{raw:?} left its route's host"
        );
        assert!(
            route.matches_path(url.path()),
            "{raw:?} is outside {}",
            route.name
        );
        assert!(route.matches_path(&canonical_path(url.path())));
        assert_eq!(
            routes
                .select(
                    Some(&route.name),
                    url.scheme(),
                    &route.authority,
                    url.path()
                )
                .map(|r| r.id),
            Ok(route.id)
        );
        // The sign-in flow keeps the serialized form and checks it again (the hop): it must
        // be accepted again, for the same route (the length limit holds for it too).
        let again = routes.return_url(text).map(|(u, r)| (u.to_string(), r.id));
        assert!(
            again == Some((text.to_string(), route.id)),
            "{raw:?} is not accepted again as {text:?}"
        );
    }

    let canonical = canonical_path(&raw);
    assert!(
        !canonical.contains(['?', '#', ';']),
        "{raw:?} → {canonical:?}"
    );
    assert!(!canonical.chars().any(|c| c.is_ascii_uppercase()));
    for segment in canonical.split('/') {
        assert!(
            !segment.ends_with(['.', ' ']) && !segment.ends_with("%20"),
            "{raw:?} → {canonical:?}"
        );
    }

    for host in ROUTE_HOSTS.into_iter().chain([AUTH, "APPS.localhost:8443"]) {
        if let Ok(route) = routes.select(None, "https", host, &raw) {
            assert!(route.matches_path(&raw) && route.matches_path(&canonical));
            assert_eq!(route.authority, host.to_ascii_lowercase());
        }
    }
});
