//! Reading and writing portcullis's cookies.

use serde::{Deserialize, Serialize};

use crate::config::CookieConfig;
use crate::crypto::{Purpose, Sealer};

/// What a session cookie carries.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct SessionCookie {
    sid: String,
    exp: u64,
}

/// Seals and opens session cookies, and renders `Set-Cookie` values.
#[derive(Debug)]
pub struct CookieCodec {
    name: String,
    secure: bool,
    sealer: Sealer,
}

impl CookieCodec {
    pub fn new(config: &CookieConfig) -> Self {
        Self {
            name: config.name.clone(),
            secure: config.secure,
            sealer: Sealer::derive(&config.secret, Purpose::Session),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The session id in a cookie value issued for `authority`, if it is authentic and unexpired.
    pub fn open(&self, value: &str, authority: &str, now: u64) -> Option<String> {
        let c: SessionCookie = self.sealer.open(value, authority.as_bytes()).ok()?;
        (c.exp > now).then_some(c.sid)
    }

    /// A `Set-Cookie` value for a session cookie on `authority`.
    pub fn issue(&self, sid: &str, authority: &str, exp: u64, now: u64) -> String {
        let value = self.sealer.seal(
            &SessionCookie {
                sid: sid.to_string(),
                exp,
            },
            authority.as_bytes(),
        );
        set_cookie(
            &self.name,
            &value,
            "/",
            exp.saturating_sub(now),
            self.secure,
        )
    }

    /// A `Set-Cookie` value that deletes the session cookie.
    pub fn clear(&self) -> String {
        set_cookie(&self.name, "", "/", 0, self.secure)
    }

    pub fn secure(&self) -> bool {
        self.secure
    }
}

/// Renders a host-only, HttpOnly, SameSite=Lax cookie.
pub fn set_cookie(name: &str, value: &str, path: &str, max_age: u64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly{secure}; SameSite=Lax")
}

/// The cookies of one `Cookie` header (or several, joined by Envoy).
pub struct CookieJar<'a> {
    header: &'a str,
}

impl<'a> CookieJar<'a> {
    pub fn new(header: &'a str) -> Self {
        Self { header }
    }

    fn pairs(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.header.split(';').filter_map(|part| {
            let (k, v) = part.split_once('=')?;
            Some((k.trim(), v.trim()))
        })
    }

    /// Every value of cookie `name` (a browser can send several with different paths).
    pub fn get_all(&self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs()
            .filter(move |(k, _)| *k == name)
            .map(|(_, v)| v)
    }

    /// Whether cookie `name` is present at all.
    pub fn contains(&self, name: &str) -> bool {
        self.pairs().any(|(k, _)| k == name)
    }

    /// The header without cookie `name` (and without any cookie whose name starts with
    /// `name` followed by `_`, i.e. portcullis's helper cookies); `None` if nothing is left.
    pub fn without(&self, name: &str) -> Option<String> {
        let kept: Vec<&str> = self
            .header
            .split(';')
            .map(str::trim)
            .filter(|part| {
                let key = part.split_once('=').map(|(k, _)| k.trim()).unwrap_or(part);
                !(part.is_empty()
                    || key == name
                    || key.strip_prefix(name).is_some_and(|r| r.starts_with('_')))
            })
            .collect();
        (!kept.is_empty()).then(|| kept.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretBytes;
    use std::time::Duration;

    fn codec() -> CookieCodec {
        CookieCodec::new(&CookieConfig {
            name: "_portcullis".into(),
            secret: SecretBytes::new(vec![1; 32]),
            lifetime: Duration::from_secs(60),
            secure: true,
        })
    }

    fn value_of(set_cookie: &str) -> &str {
        set_cookie
            .split(';')
            .next()
            .unwrap()
            .split_once('=')
            .unwrap()
            .1
    }

    #[test]
    fn issue_open_expire_and_host_binding() {
        let c = codec();
        let sc = c.issue("sid-1", "app.localhost", 200, 100);
        assert!(sc.contains("HttpOnly") && sc.contains("Secure") && sc.contains("SameSite=Lax"));
        assert!(sc.contains("Max-Age=100"));
        let v = value_of(&sc);
        assert_eq!(c.open(v, "app.localhost", 150).as_deref(), Some("sid-1"));
        assert_eq!(c.open(v, "app.localhost", 200), None, "expired");
        assert_eq!(c.open(v, "admin.localhost", 150), None, "other host");
        assert_eq!(c.open("garbage", "app.localhost", 150), None);
        assert_eq!(c.open("", "app.localhost", 150), None);
    }

    #[test]
    fn jar_strips_only_our_cookies() {
        let jar = CookieJar::new(
            "theme=dark; _portcullis=abc; _portcullis_csrf=x; _portcullisx=keep; b=2",
        );
        assert_eq!(jar.get_all("_portcullis").collect::<Vec<_>>(), vec!["abc"]);
        assert_eq!(
            jar.without("_portcullis").as_deref(),
            Some("theme=dark; _portcullisx=keep; b=2")
        );
        assert_eq!(
            CookieJar::new("_portcullis=abc").without("_portcullis"),
            None
        );
        assert!(!CookieJar::new("a=1").contains("_portcullis"));
    }
}
