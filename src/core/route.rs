//! Routes and the route table: which configured application a request or a return URL
//! belongs to, decided on the path as upstreams will read it.

use url::Url;

use super::cockpit::CockpitSettings;
use super::policy::Policy;

/// A route's position in its [`RouteTable`]: a small key for per-route caches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteId(pub u32);

/// One protected (or public) application, as the decision sees it. Where its requests go
/// upstream is the Envoy config's business (`config::RouteConfig`).
#[derive(Debug, Clone)]
pub struct Route {
    /// Set by [`RouteTable::new`].
    pub id: RouteId,
    pub name: String,
    /// The public URL as configured.
    pub from: Url,
    /// `host[:port]` as browsers send it in `Host` (port omitted when it is the scheme's default).
    pub authority: String,
    /// Path prefix without a trailing slash; empty for the whole host.
    pub path_prefix: String,
    pub policy: Policy,
    /// Set on Cockpit routes: single sign-on into Cockpit's PAM login.
    pub cockpit: Option<CockpitSettings>,
    /// Adds a `role` claim derived from groups to the identity JWT.
    pub role: Option<RoleMapping>,
    origin: String,
    audience: String,
}

/// Derives a `role` claim from groups: first matching group wins, else the default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleMapping {
    pub from_groups: Vec<(String, String)>,
    pub default: Option<String>,
}

impl RoleMapping {
    pub fn role_for(&self, groups: &[String]) -> Option<&str> {
        self.from_groups
            .iter()
            .find(|(g, _)| groups.iter().any(|ug| ug == g))
            .map(|(_, r)| r.as_str())
            .or(self.default.as_deref())
    }
}

impl Route {
    /// A route for the public URL `from` (`scheme://host[:port][/prefix]`).
    pub fn new(name: String, from: Url, policy: Policy) -> Self {
        let authority = authority_of(&from);
        let path_prefix = from.path().trim_end_matches('/').to_string();
        let origin = format!("{}://{}", from.scheme(), authority);
        let audience = format!("{authority}{path_prefix}");
        Self {
            id: RouteId::default(),
            name,
            from,
            authority,
            path_prefix,
            policy,
            cockpit: None,
            role: None,
            origin,
            audience,
        }
    }

    /// The origin (`scheme://authority`) of the route.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The scheme browsers use for this route.
    pub fn scheme(&self) -> &str {
        self.from.scheme()
    }

    /// The `aud` of this route's identity JWTs: the authority, and the path prefix when
    /// there is one, so that a token minted for `host/a` does not verify at `host/b`.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Whether `path` (which may carry a query) is under this route's prefix. Letter case
    /// does not count: upstreams on case-insensitive file systems or frameworks would serve
    /// `/ADMIN` as `/admin`, so it must be decided as `/admin`.
    pub fn matches_path(&self, path: &str) -> bool {
        let prefix = self.path_prefix.as_bytes();
        if prefix.is_empty() {
            return true;
        }
        let path = path.as_bytes();
        path.len() >= prefix.len()
            && path[..prefix.len()].eq_ignore_ascii_case(prefix)
            && matches!(path.get(prefix.len()), None | Some(b'/' | b'?'))
    }
}

/// `host[:port]` of a URL, port omitted when it is the scheme's default.
pub fn authority_of(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host,
    }
}

/// Routes, most specific prefix first.
#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// The table of `routes`, sorted longest prefix first so that the first match is the
    /// most specific, each given its [`RouteId`].
    pub fn new(mut routes: Vec<Route>) -> Self {
        routes.sort_by_key(|r| std::cmp::Reverse(r.path_prefix.len()));
        for (i, r) in routes.iter_mut().enumerate() {
            r.id = RouteId(u32::try_from(i).unwrap_or(u32::MAX));
        }
        Self { routes }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
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
    ) -> Result<&Route, NoRoute> {
        let authority = authority.to_ascii_lowercase();
        let on_host = |r: &Route| r.authority == authority && r.scheme() == scheme;
        let route = match hint {
            Some(name) => self
                .routes
                .iter()
                .find(|r| r.name == name && on_host(r) && r.matches_path(path)),
            None => self
                .routes
                .iter()
                .find(|r| on_host(r) && r.matches_path(path)),
        }
        .ok_or(NoRoute::Unknown)?;
        let canonical = canonical_path(path);
        let read_as = self
            .routes
            .iter()
            .find(|r| on_host(r) && r.matches_path(&canonical));
        if read_as.map(|r| r.id) != Some(route.id) {
            return Err(NoRoute::Ambiguous);
        }
        Ok(route)
    }

    /// The first route served on `authority` (for host-level pages like sign-out).
    pub fn by_authority(&self, authority: &str) -> Option<&Route> {
        let authority = authority.to_ascii_lowercase();
        self.routes.iter().find(|r| r.authority == authority)
    }

    /// Validates a return URL: it must be an absolute http(s) URL without credentials
    /// that falls under a configured route. Returns the parsed URL and its route.
    /// Anything else (relative, scheme-relative, other hosts, look-alike hosts) is refused.
    pub fn return_url(&self, raw: &str) -> Option<(Url, &Route)> {
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
        let route = self
            .select(None, url.scheme(), &authority, url.path())
            .ok()?;
        Some((url, route))
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

    fn route(name: &str, from: &str) -> Route {
        Route::new(
            name.into(),
            Url::parse(from).unwrap(),
            Policy::any_authenticated_user(),
        )
    }

    /// The selected route's position in the table (`sub`, `app`, `apps`).
    fn sel(
        t: &RouteTable,
        hint: Option<&str>,
        scheme: &str,
        authority: &str,
        path: &str,
    ) -> Result<u32, NoRoute> {
        t.select(hint, scheme, authority, path).map(|r| r.id.0)
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
        assert_eq!(sel(&t, None, "https", "app.localhost:8443", "/x"), Ok(1));
        assert_eq!(sel(&t, None, "https", "APP.localhost:8443", "/x"), Ok(1));
        assert_eq!(
            sel(&t, None, "https", "apps.localhost:8443", "/admin/x"),
            Ok(0)
        );
        assert_eq!(
            sel(&t, None, "https", "apps.localhost:8443", "/admin"),
            Ok(0)
        );
        assert_eq!(
            sel(&t, None, "https", "apps.localhost:8443", "/administrator"),
            Ok(2)
        );
        assert_eq!(
            sel(&t, None, "http", "app.localhost:8443", "/"),
            Err(NoRoute::Unknown)
        );
        assert_eq!(
            sel(&t, None, "https", "app.localhost", "/"),
            Err(NoRoute::Unknown)
        );
        assert_eq!(
            sel(&t, Some("app"), "https", "app.localhost:8443", "/"),
            Ok(1)
        );
        // A hint naming a route on another host is a misconfiguration: fail closed.
        assert_eq!(
            sel(&t, Some("app"), "https", "apps.localhost:8443", "/"),
            Err(NoRoute::Unknown)
        );
        assert_eq!(
            sel(&t, Some("nope"), "https", "app.localhost:8443", "/"),
            Err(NoRoute::Unknown)
        );
    }

    #[test]
    fn return_urls() {
        let t = table();
        assert_eq!(
            t.return_url("https://app.localhost:8443/a?b=c")
                .map(|x| x.1.id.0),
            Some(1)
        );
        assert_eq!(
            t.return_url("https://apps.localhost:8443/admin/")
                .map(|x| x.1.id.0),
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
                sel(&t, Some("apps"), "https", host, path),
                Err(NoRoute::Ambiguous),
                "{path}"
            );
            assert_eq!(
                sel(&t, None, "https", host, path),
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
            assert_eq!(sel(&t, None, "https", host, path), Ok(0), "{path}");
            assert_eq!(sel(&t, Some("sub"), "https", host, path), Ok(0), "{path}");
            // Envoy named the lenient route for a path the strict one serves: fail closed.
            assert_eq!(
                sel(&t, Some("apps"), "https", host, path),
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
            assert_eq!(sel(&t, None, "https", host, path), want, "{path}");
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
            sel(&t, None, "https", "apps.localhost:8443", "/adm\u{20ac}x"),
            Ok(2)
        );
    }
}
