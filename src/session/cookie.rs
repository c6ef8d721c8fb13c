//! Reading and writing portcullis's cookies.

use serde::{Deserialize, Serialize};

use crate::config::CookieConfig;
use crate::crypto::{Purpose, Sealer};
use crate::secret::SecretString;

use crate::core::SessionId;

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
///
/// With `secure` (the default), the cookies carry the `__Host-` prefix, which browsers only
/// accept from a secure origin, host-only and on `Path=/`: a sibling subdomain cannot plant
/// one (a sealed cookie is bound to its host anyway, but a planted one of the attacker's own
/// would swap sessions). The ID-token cookie lives on the sign-out path, so it can only take
/// `__Secure-`. Over plain HTTP (development only) browsers refuse both prefixes, so none.
#[derive(Debug)]
pub struct CookieCodec {
    /// The configured name, which every one of our cookies' names contains.
    base: String,
    name: String,
    csrf_name: String,
    hop_name: String,
    id_token_name: String,
    secure: bool,
    sealer: Sealer,
    id_token_sealer: Sealer,
}

impl CookieCodec {
    pub fn new(config: &CookieConfig) -> Self {
        let (host, secure) = if config.secure {
            ("__Host-", "__Secure-")
        } else {
            ("", "")
        };
        let base = &config.name;
        Self {
            base: base.clone(),
            name: format!("{host}{base}"),
            csrf_name: format!("{host}{base}_csrf"),
            hop_name: format!("{host}{base}_hop"),
            id_token_name: format!("{secure}{base}_idt"),
            secure: config.secure,
            sealer: Sealer::rotating(&config.secret, &config.previous_secrets, Purpose::Session),
            id_token_sealer: Sealer::rotating(
                &config.secret,
                &config.previous_secrets,
                Purpose::IdTokenHint,
            ),
        }
    }

    /// The session cookie's name (with its prefix).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cookie of a sign-in in flight, on the auth host.
    pub fn csrf_name(&self) -> &str {
        &self.csrf_name
    }

    /// The cookie that binds a hop to the browser that started the sign-in, on a route host.
    pub fn hop_name(&self) -> &str {
        &self.hop_name
    }

    pub fn id_token_name(&self) -> &str {
        &self.id_token_name
    }

    /// Whether a cookie of this name is one of ours, in any spelling a client could send:
    /// the configured name or one of its `NAME_*` helpers, with or without a prefix in any
    /// letter case. None of them may ever reach an upstream.
    pub fn is_ours(&self, cookie_name: &str) -> bool {
        let mut n = cookie_name;
        for prefix in ["__host-", "__secure-"] {
            if n.len() >= prefix.len()
                && n.is_char_boundary(prefix.len())
                && n[..prefix.len()].eq_ignore_ascii_case(prefix)
            {
                n = &n[prefix.len()..];
                break;
            }
        }
        n.strip_prefix(self.base.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('_'))
    }

    /// A cheap test that can only be false when no cookie of ours is in the header.
    pub fn may_contain_ours(&self, cookie_header: &str) -> bool {
        cookie_header.contains(self.base.as_str())
    }

    /// The header without any of our cookies; `None` if nothing is left.
    pub fn strip(&self, cookie_header: &str) -> Option<String> {
        CookieJar::new(cookie_header).without(|name| self.is_ours(name))
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

    /// The session id in a cookie value issued for `authority`, if it is authentic and unexpired.
    pub fn open(&self, value: &str, authority: &str, now: u64) -> Option<SessionId> {
        let c: SessionCookie = self.sealer.open(value, authority.as_bytes()).ok()?;
        (c.exp > now).then_some(c.sid)
    }

    /// Every session id that the session cookies in `cookie_header` carry for `authority`.
    pub fn session_ids<'a>(
        &'a self,
        cookie_header: &'a str,
        authority: &'a str,
        now: u64,
    ) -> impl Iterator<Item = SessionId> + 'a {
        CookieJar::new(cookie_header)
            .get_all(&self.name)
            .filter_map(move |v| self.open(v, authority, now))
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

    /// A host-only helper cookie (`Path=/`, so that it can carry the `__Host-` prefix).
    pub fn helper(&self, name: &str, value: &str, max_age: u64) -> String {
        set_cookie(name, value, "/", max_age, self.secure)
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

/// The cookies of one `Cookie` header, or of several joined into one: HTTP/2 clients send
/// one header per cookie and Envoy joins them with `; `, while two `Cookie` headers over
/// HTTP/1.1 reach us joined with `, `. Both are read as separators, so that no form of the
/// header can hide one of our cookies from [`CookieJar::without`].
pub struct CookieJar<'a> {
    header: &'a str,
}

/// The name of one `name=value` piece (the whole piece when it has no `=`).
fn key_of(piece: &str) -> &str {
    piece.split_once('=').map_or(piece, |(k, _)| k).trim()
}

impl<'a> CookieJar<'a> {
    pub fn new(header: &'a str) -> Self {
        Self { header }
    }

    fn pairs(&self) -> impl Iterator<Item = (&'a str, &'a str)> + use<'a> {
        let header = self.header;
        header.split([';', ',']).filter_map(|part| {
            let (k, v) = part.split_once('=')?;
            Some((k.trim(), v.trim()))
        })
    }

    /// Every value of cookie `name` (a browser can send several with different paths).
    pub fn get_all(&self, name: &'a str) -> impl Iterator<Item = &'a str> + use<'a> {
        self.pairs()
            .filter(move |(k, _)| *k == name)
            .map(|(_, v)| v)
    }

    /// Whether cookie `name` is present at all.
    pub fn contains(&self, name: &str) -> bool {
        self.pairs().any(|(k, _)| k == name)
    }

    /// The header without the cookies whose name `drop` selects; `None` if nothing is left.
    /// A `;`-separated piece is kept as it was unless a `,`-separated part of it is dropped,
    /// so an app's own cookie whose value contains a comma passes unchanged.
    pub fn without(&self, drop: impl Fn(&str) -> bool) -> Option<String> {
        let mut kept: Vec<String> = Vec::new();
        for part in self.header.split(';') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            if !part.split(',').any(|p| drop(key_of(p))) {
                kept.push(part.to_string());
                continue;
            }
            let rest: Vec<&str> = part
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty() && !drop(key_of(p)))
                .collect();
            if !rest.is_empty() {
                kept.push(rest.join(", "));
            }
        }
        (!kept.is_empty()).then(|| kept.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretBytes;
    use std::time::Duration;

    fn config() -> CookieConfig {
        CookieConfig {
            name: "_portcullis".into(),
            previous_secrets: Vec::new(),
            secret: SecretBytes::new(vec![1; 32]),
            lifetime: Duration::from_secs(60),
            secure: true,
        }
    }

    fn codec() -> CookieCodec {
        CookieCodec::new(&config())
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
        assert!(sc.starts_with("__Secure-_portcullis_idt="), "{sc}");
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
    fn secure_cookies_carry_the_host_prefix() {
        let c = codec();
        let sc = c.issue(SessionId::random(), "app.localhost", 200, 100);
        assert!(sc.starts_with("__Host-_portcullis="), "{sc}");
        assert!(sc.contains("; Path=/;") && sc.contains("Secure") && !sc.contains("Domain"));
        assert_eq!(c.csrf_name(), "__Host-_portcullis_csrf");
        assert_eq!(c.hop_name(), "__Host-_portcullis_hop");
        let helper = c.helper(c.hop_name(), "n", 600);
        assert!(
            helper.contains("; Path=/;") && helper.contains("Secure"),
            "{helper}"
        );
        // Browsers refuse prefixed cookies without Secure, so plain-HTTP development has none.
        let plain = CookieCodec::new(&CookieConfig {
            secure: false,
            ..config()
        });
        assert_eq!(plain.name(), "_portcullis");
        assert!(
            !plain
                .issue(SessionId::random(), "a", 2, 1)
                .contains("Secure")
        );
    }

    #[test]
    fn jar_strips_only_our_cookies() {
        let c = codec();
        let jar = CookieJar::new(
            "theme=dark; __Host-_portcullis=abc; __Host-_portcullis_csrf=x; _portcullisx=keep; b=2",
        );
        assert_eq!(
            jar.get_all("__Host-_portcullis").collect::<Vec<_>>(),
            vec!["abc"]
        );
        assert_eq!(
            c.strip(jar.header).as_deref(),
            Some("theme=dark; _portcullisx=keep; b=2")
        );
        assert_eq!(c.strip("__Host-_portcullis=abc"), None);
        assert!(!CookieJar::new("a=1").contains("_portcullis"));
    }

    #[test]
    fn attack_no_cookie_header_form_hides_our_cookies() {
        let c = codec();
        // Every form a client or Envoy can present: HTTP/2 crumbs joined with "; ", two
        // HTTP/1.1 headers joined with ", ", odd spacing, empty pieces, prefix spellings.
        for header in [
            "__Host-_portcullis=S",
            "a=1, __Host-_portcullis=S",
            "__Host-_portcullis=S, a=1",
            "a=1,__Host-_portcullis=S;b=2",
            "a=1;  __Host-_portcullis=S  ;;b=2",
            "a=1; _portcullis=S; b=2",
            "a=1; __host-_portcullis=S; b=2",
            "a=1; __Secure-_portcullis=S; b=2",
            "a=1; __Host-_portcullis_hop=S; b=2",
            "a=1; __Secure-_portcullis_idt=S; b=2",
            "a=1, b=2, _portcullis_csrf=S",
            "\t__Host-_portcullis =S; a=1",
            "__Host-_portcullis",
        ] {
            let rest = c.strip(header).unwrap_or_default();
            assert!(
                !rest.contains("_portcullis") && !rest.contains('S'),
                "{header:?} left {rest:?}"
            );
        }
        // An app's own cookie with a comma in its value passes unchanged.
        assert_eq!(
            c.strip("list=a,b; __Host-_portcullis=S").as_deref(),
            Some("list=a,b")
        );
        // The session is read from a comma-joined header too.
        let sid = SessionId::random();
        let set = c.issue(sid, "app.localhost", 200, 100);
        let v = value_of(&set);
        let header = format!("a=1, __Host-_portcullis={v}");
        assert_eq!(
            c.session_ids(&header, "app.localhost", 150)
                .collect::<Vec<_>>(),
            vec![sid]
        );
    }
}
