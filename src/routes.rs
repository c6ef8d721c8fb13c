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
    ///
    /// The path must also name the same route once it is read the way upstream frameworks
    /// read paths ([`canonical_path`]): `/admin;x/`, `/admin./` or `/%61dmin/` would be
    /// served as `/admin/` by some of them, so it must not be decided by the route of `/`.
    pub fn select(
        &self,
        hint: Option<&str>,
        scheme: &str,
        authority: &str,
        path: &str,
    ) -> Result<usize, NoRoute> {
        let authority = authority.to_ascii_lowercase();
        let on_host = |r: &Route| r.authority == authority && r.from.scheme() == scheme;
        let index = match hint {
            Some(name) => self
                .routes
                .iter()
                .position(|r| r.name == name && on_host(r) && r.matches_path(path)),
            None => self
                .routes
                .iter()
                .position(|r| on_host(r) && r.matches_path(path)),
        }
        .ok_or(NoRoute::Unknown)?;
        let canonical = canonical_path(path);
        let read_as = self
            .routes
            .iter()
            .position(|r| on_host(r) && r.matches_path(&canonical));
        if read_as != Some(index) {
            return Err(NoRoute::Ambiguous);
        }
        Ok(index)
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
        let index = self
            .select(None, url.scheme(), &authority, url.path())
            .ok()?;
        Some((url, index))
    }
}

/// Why no route applies to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRoute {
    /// No route serves this host and path.
    Unknown,
    /// The path names one route as written and another as upstreams would read it.
    Ambiguous,
}

/// The path (query dropped) as lenient upstream frameworks read it: unreserved characters
/// percent-decoded, each segment cut at `;` (Tomcat and Jetty path parameters) and stripped
/// of trailing dots and spaces (Windows and IIS), and lowercased. Used only to compare
/// which route a path belongs to, never forwarded.
pub fn canonical_path(path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let mut decoded = Vec::with_capacity(path.len());
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%'
            && let Some(v) = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            && (v.is_ascii_alphanumeric() || b"-._~".contains(&v))
        {
            decoded.push(v);
            i += 3;
            continue;
        }
        decoded.push(b);
        i += 1;
    }
    // Only ASCII was decoded, so what was UTF-8 stays UTF-8.
    String::from_utf8_lossy(&decoded)
        .split('/')
        .map(|segment| {
            let mut segment = segment.split(';').next().unwrap_or_default();
            loop {
                let trimmed = segment.trim_end_matches(['.', ' ']);
                match trimmed.len().checked_sub(3) {
                    // Bytes, not `str` slicing: `at` can fall inside a multi-byte
                    // character (`/€x`), and `%20` is ASCII, so a match is on a boundary.
                    Some(at) if trimmed.as_bytes()[at..].eq_ignore_ascii_case(b"%20") => {
                        segment = &trimmed[..at]
                    }
                    _ => break trimmed.to_ascii_lowercase(),
                }
            }
        })
        .collect::<Vec<_>>()
        .join("/")
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
            tls: Default::default(),
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
        assert_eq!(t.select(None, "https", "app.localhost:8443", "/x"), Ok(1));
        assert_eq!(t.select(None, "https", "APP.localhost:8443", "/x"), Ok(1));
        assert_eq!(
            t.select(None, "https", "apps.localhost:8443", "/admin/x"),
            Ok(0)
        );
        assert_eq!(
            t.select(None, "https", "apps.localhost:8443", "/admin"),
            Ok(0)
        );
        assert_eq!(
            t.select(None, "https", "apps.localhost:8443", "/administrator"),
            Ok(2)
        );
        assert_eq!(
            t.select(None, "http", "app.localhost:8443", "/"),
            Err(NoRoute::Unknown)
        );
        assert_eq!(
            t.select(None, "https", "app.localhost", "/"),
            Err(NoRoute::Unknown)
        );
        assert_eq!(
            t.select(Some("app"), "https", "app.localhost:8443", "/"),
            Ok(1)
        );
        // A hint naming a route on another host is a misconfiguration: fail closed.
        assert_eq!(
            t.select(Some("app"), "https", "apps.localhost:8443", "/"),
            Err(NoRoute::Unknown)
        );
        assert_eq!(
            t.select(Some("nope"), "https", "app.localhost:8443", "/"),
            Err(NoRoute::Unknown)
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
            // The return-URL corpus of the attack suite.
            "https%3A%2F%2Fevil.example%2F",
            "https%253A%252F%252Fevil.example",
            "/\\evil.example",
            "\\\\evil.example",
            "https://app.localhost:8443\\evil.example/",
            "https://app.localhost:8443@evil.example/",
            "https://:pw@app.localhost:8443/",
            "https://app.localhost:8443/\r\nSet-Cookie:x=1",
            "https://app.localhost:8443/\n",
            "https://app.localhost:8443/\t",
            "https://\u{430}pp.localhost:8443/",
            "https://xn--pp-8kc.localhost:8443/",
            "https://app.localhost.:8443/",
            "https://app.localhost:443/",
            "https://app.localhost:8444/",
            "https://app.localhost:8443:8443/",
            "JavaScript:alert(1)",
            " javascript:alert(1)",
            "data:text/html,<script>alert(1)</script>",
            "https://evil.example#https://app.localhost:8443/",
            "https://evil.example?https://app.localhost:8443/",
            "ftp://app.localhost:8443/",
            "//app.localhost:8443/",
        ] {
            assert!(t.return_url(bad).is_none(), "{bad} must be refused");
        }
    }

    #[test]
    fn attack_paths_that_upstreams_read_as_a_protected_prefix() {
        let t = table();
        let host = "apps.localhost:8443";
        // Envoy (case-sensitive, or without path parameters) would name the lenient route;
        // each of these is /admin/... to some upstream framework: refused.
        for path in [
            "/admin;jsessionid=1/x",
            "/admin;/x",
            "/admin./x",
            "/admin../x",
            "/admin%20/x",
            "/admin /x",
            "/admin.%20./x",
            "/%61dmin/x",
            "/adm%69n",
            "/admin;x",
        ] {
            assert_eq!(
                t.select(Some("apps"), "https", host, path),
                Err(NoRoute::Ambiguous),
                "{path}"
            );
            assert_eq!(
                t.select(None, "https", host, path),
                Err(NoRoute::Ambiguous),
                "{path}"
            );
            assert!(
                t.return_url(&format!("https://{host}{path}")).is_none(),
                "{path}"
            );
        }
        // Letter case: the protected route decides, whichever route Envoy named.
        for path in ["/ADMIN/x", "/Admin", "/aDmIn?x=1"] {
            assert_eq!(t.select(None, "https", host, path), Ok(0), "{path}");
            assert_eq!(t.select(Some("sub"), "https", host, path), Ok(0), "{path}");
            // Envoy named the lenient route for a path the strict one serves: fail closed.
            assert_eq!(
                t.select(Some("apps"), "https", host, path),
                Err(NoRoute::Ambiguous),
                "{path}"
            );
        }
        // Ordinary paths, with parameters and dots where they change nothing, still work.
        for (path, want) in [
            ("/x;v=1/y", Ok(2)),
            ("/file.txt", Ok(2)),
            ("/admin/file.", Ok(0)),
            ("/admin/a;b", Ok(0)),
            ("/administrator;x", Ok(2)),
        ] {
            assert_eq!(t.select(None, "https", host, path), want, "{path}");
        }
    }

    #[test]
    fn canonical_paths() {
        assert_eq!(canonical_path("/A;b/C.%20./d?q=1"), "/a/c/d");
        assert_eq!(canonical_path("/%7e%41%2F"), "/~a%2f");
        assert_eq!(canonical_path("/%zz/%"), "/%zz/%");
        assert_eq!(canonical_path("/caf\u{e9}"), "/caf\u{e9}");
    }

    #[test]
    fn canonical_path_of_multibyte_segment_ends() {
        // Found by fuzzing (fuzz/regressions/check_request, return_url): the `%20` test
        // sliced three bytes off the segment's end, inside a multi-byte character, and
        // panicked; any CheckRequest with such a path took the Check task down.
        assert_eq!(canonical_path("/\u{20ac}x"), "/\u{20ac}x");
        assert_eq!(canonical_path("/a\u{e9}/b"), "/a\u{e9}/b");
        assert_eq!(canonical_path("/x\u{20ac}%20."), "/x\u{20ac}");
        assert_eq!(canonical_path("/\u{fffd}\u{fffd}"), "/\u{fffd}\u{fffd}");
        let t = table();
        assert_eq!(
            t.select(None, "https", "apps.localhost:8443", "/adm\u{20ac}x"),
            Ok(2)
        );
    }
}
