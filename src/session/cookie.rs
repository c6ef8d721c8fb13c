//! Reading and writing portcullis's cookies.

use serde::{Deserialize, Serialize};

use crate::config::CookieConfig;
use crate::crypto::{Purpose, Sealer};
use crate::secret::SecretString;

use super::SessionId;

/// What a session cookie carries.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct SessionCookie {
    sid: SessionId,
    exp: u64,
}

/// What the auth host's ID-token cookie carries.
#[derive(Serialize, Deserialize)]
struct IdTokenCookie {
    idt: String,
    exp: u64,
}

/// Where the ID-token cookie is sent: only to sign-out, the one place that reads it, so it
/// does not ride along on every other request to the auth host.
const ID_TOKEN_PATH: &str = "/.portcullis/sign_out";

/// Browsers drop a cookie whose name and value exceed 4096 bytes; stay clear of that.
const MAX_COOKIE_BYTES: usize = 4000;

/// Seals and opens session cookies, and renders `Set-Cookie` values.
#[derive(Debug)]
pub struct CookieCodec {
    name: String,
    id_token_name: String,
    secure: bool,
    sealer: Sealer,
    id_token_sealer: Sealer,
}

impl CookieCodec {
    pub fn new(config: &CookieConfig) -> Self {
        Self {
            name: config.name.clone(),
            // The `_` suffix makes it one of the helper cookies stripped before upstreams.
            id_token_name: format!("{}_idt", config.name),
            secure: config.secure,
            sealer: Sealer::derive(&config.secret, Purpose::Session),
            id_token_sealer: Sealer::derive(&config.secret, Purpose::IdTokenHint),
        }
    }

    pub fn id_token_name(&self) -> &str {
        &self.id_token_name
    }

    /// A `Set-Cookie` value carrying the IdP's ID token, sealed, for `id_token_hint` at
    /// RP-initiated logout. `None` when it would be too large for a browser to keep (an ID
    /// token with a very long group list); sign-out then names the client instead.
    pub fn issue_id_token(
        &self,
        id_token: &SecretString,
        authority: &str,
        exp: u64,
        now: u64,
    ) -> Option<String> {
        let value = self.id_token_sealer.seal(
            &IdTokenCookie {
                idt: id_token.expose().to_string(),
                exp,
            },
            authority.as_bytes(),
        );
        (self.id_token_name.len() + 1 + value.len() <= MAX_COOKIE_BYTES).then(|| {
            set_cookie(
                &self.id_token_name,
                &value,
                ID_TOKEN_PATH,
                exp.saturating_sub(now),
                self.secure,
            )
        })
    }

    /// The ID token in a cookie value issued for `authority`, if authentic and unexpired.
    pub fn open_id_token(&self, value: &str, authority: &str, now: u64) -> Option<SecretString> {
        let c: IdTokenCookie = self
            .id_token_sealer
            .open(value, authority.as_bytes())
            .ok()?;
        (c.exp > now).then(|| SecretString::new(c.idt))
    }

    /// A `Set-Cookie` value that deletes the ID-token cookie.
    pub fn clear_id_token(&self) -> String {
        set_cookie(&self.id_token_name, "", ID_TOKEN_PATH, 0, self.secure)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The session id in a cookie value issued for `authority`, if it is authentic and unexpired.
    pub fn open(&self, value: &str, authority: &str, now: u64) -> Option<SessionId> {
        let c: SessionCookie = self.sealer.open(value, authority.as_bytes()).ok()?;
        (c.exp > now).then_some(c.sid)
    }

    /// A `Set-Cookie` value for a session cookie on `authority`.
    pub fn issue(&self, sid: SessionId, authority: &str, exp: u64, now: u64) -> String {
        let value = self
            .sealer
            .seal(&SessionCookie { sid, exp }, authority.as_bytes());
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
        let sid = SessionId::random();
        let sc = c.issue(sid, "app.localhost", 200, 100);
        assert!(sc.contains("HttpOnly") && sc.contains("Secure") && sc.contains("SameSite=Lax"));
        assert!(sc.contains("Max-Age=100"));
        let v = value_of(&sc);
        assert_eq!(c.open(v, "app.localhost", 150), Some(sid));
        assert_eq!(c.open(v, "app.localhost", 200), None, "expired");
        assert_eq!(c.open(v, "admin.localhost", 150), None, "other host");
        assert_eq!(c.open("garbage", "app.localhost", 150), None);
        assert_eq!(c.open("", "app.localhost", 150), None);
    }

    #[test]
    fn id_token_cookie_round_trips_only_on_its_host_and_path() {
        let c = codec();
        let idt = SecretString::new("header.payload.signature".to_string());
        let sc = c.issue_id_token(&idt, "auth.localhost", 200, 100).unwrap();
        assert!(sc.starts_with("_portcullis_idt="), "{sc}");
        assert!(sc.contains("Path=/.portcullis/sign_out") && sc.contains("HttpOnly"));
        let v = value_of(&sc);
        let opened = c.open_id_token(v, "auth.localhost", 150).unwrap();
        assert_eq!(opened.expose(), idt.expose());
        assert!(
            c.open_id_token(v, "app.localhost", 150).is_none(),
            "other host"
        );
        assert!(
            c.open_id_token(v, "auth.localhost", 200).is_none(),
            "expired"
        );
        // A session cookie is not an ID-token cookie, nor the other way round.
        let session = c.issue(SessionId::random(), "auth.localhost", 200, 100);
        assert!(
            c.open_id_token(value_of(&session), "auth.localhost", 150)
                .is_none()
        );
        assert!(c.open(v, "auth.localhost", 150).is_none());
        // Too big for a browser to keep: not issued at all.
        let huge = SecretString::new("x".repeat(3500));
        assert!(
            c.issue_id_token(&huge, "auth.localhost", 200, 100)
                .is_none()
        );
        assert!(c.clear_id_token().contains("Max-Age=0"));
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
