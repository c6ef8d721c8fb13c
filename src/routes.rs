//! The route table: which configured route a request or a return URL belongs to.

use url::Url;

use crate::config::{Route, authority_of};

/// Routes, most specific prefix first.
#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    pub fn new(routes: Vec<Route>) -> Self {
        Self { routes }
    }

    pub fn get(&self, index: usize) -> &Route {
        &self.routes[index]
    }

    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }

    /// The route for a request. Envoy names the route in `context_extensions` (`hint`);
    /// the named route must still match the request's scheme, host and path, so a
    /// mismatched Envoy config fails closed instead of applying another route's policy.
    pub fn select(
        &self,
        hint: Option<&str>,
        scheme: &str,
        authority: &str,
        path: &str,
    ) -> Option<usize> {
        let authority = authority.to_ascii_lowercase();
        let fits = |r: &Route| {
            r.authority == authority && r.from.scheme() == scheme && r.matches_path(path)
        };
        match hint {
            Some(name) => self.routes.iter().position(|r| r.name == name && fits(r)),
            None => self.routes.iter().position(fits),
        }
    }

    /// The first route served on `authority` (for host-level pages like sign-out).
    pub fn by_authority(&self, authority: &str) -> Option<usize> {
        let authority = authority.to_ascii_lowercase();
        self.routes.iter().position(|r| r.authority == authority)
    }

    /// Validates a return URL: it must be an absolute http(s) URL without credentials
    /// that falls under a configured route. Returns the parsed URL and the route index.
    /// Anything else (relative, scheme-relative, other hosts, look-alike hosts) is refused.
    pub fn return_url(&self, raw: &str) -> Option<(Url, usize)> {
        if raw.len() > 4096 || raw.chars().any(|c| c.is_control() || c == '\\') {
            return None;
        }
        let url = Url::parse(raw).ok()?;
        if !matches!(url.scheme(), "http" | "https")
            || !url.username().is_empty()
            || url.password().is_some()
            || url.host().is_none()
        {
            return None;
        }
        let authority = authority_of(&url);
        let index = self.routes.iter().position(|r| {
            r.authority == authority
                && r.from.scheme() == url.scheme()
                && r.matches_path(url.path())
        })?;
        Some((url, index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Route;
    use crate::policy::Policy;

    fn route(name: &str, from: &str) -> Route {
        let from = Url::parse(from).unwrap();
        Route {
            name: name.into(),
            authority: authority_of(&from),
            path_prefix: from.path().trim_end_matches('/').to_string(),
            from,
            to: Url::parse("http://127.0.0.1:1").unwrap(),
            policy: Policy::AnyAuthenticatedUser,
            cockpit: None,
            role: None,
        }
    }

    fn table() -> RouteTable {
        RouteTable::new(vec![
            route("sub", "https://apps.localhost:8443/admin"),
            route("app", "https://app.localhost:8443"),
            route("apps", "https://apps.localhost:8443"),
        ])
    }

    #[test]
    fn select_by_host_prefix_and_hint() {
        let t = table();
        assert_eq!(t.select(None, "https", "app.localhost:8443", "/x"), Some(1));
        assert_eq!(t.select(None, "https", "APP.localhost:8443", "/x"), Some(1));
        assert_eq!(
            t.select(None, "https", "apps.localhost:8443", "/admin/x"),
            Some(0)
        );
        assert_eq!(
            t.select(None, "https", "apps.localhost:8443", "/admin"),
            Some(0)
        );
        assert_eq!(
            t.select(None, "https", "apps.localhost:8443", "/administrator"),
            Some(2)
        );
        assert_eq!(t.select(None, "http", "app.localhost:8443", "/"), None);
        assert_eq!(t.select(None, "https", "app.localhost", "/"), None);
        assert_eq!(
            t.select(Some("app"), "https", "app.localhost:8443", "/"),
            Some(1)
        );
        // A hint naming a route on another host is a misconfiguration: fail closed.
        assert_eq!(
            t.select(Some("app"), "https", "apps.localhost:8443", "/"),
            None
        );
        assert_eq!(
            t.select(Some("nope"), "https", "app.localhost:8443", "/"),
            None
        );
    }

    #[test]
    fn return_urls() {
        let t = table();
        assert_eq!(
            t.return_url("https://app.localhost:8443/a?b=c")
                .map(|x| x.1),
            Some(1)
        );
        assert_eq!(
            t.return_url("https://apps.localhost:8443/admin/")
                .map(|x| x.1),
            Some(0)
        );
        for bad in [
            "https://evil.example/",
            "//evil.example",
            "/relative",
            "https://app.localhost.evil.example/",
            "https://app.localhost:8443.evil.example/",
            "https://app.localhost@evil.example/",
            "https://app.localhost:8443@evil.example/",
            "https://user@app.localhost:8443/",
            "https://evil.example:8443/",
            "http://app.localhost:8443/",
            "https:\\\\evil.example",
            "https://app.localhost:8443\\@evil.example",
            "javascript:alert(1)",
            "https://app.localhost/",
            "",
        ] {
            assert!(t.return_url(bad).is_none(), "{bad} must be refused");
        }
    }
}
