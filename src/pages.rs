//! The few HTML pages portcullis shows people: one look, no external assets, no script.
//! Every dynamic value goes through [`escape`]. Each page is served with [`CSP`]-style
//! headers ([`security_headers`]): nothing loads but the page's own style, whose hash the
//! policy names, and nothing may frame it or cache it.

use std::sync::OnceLock;

use base64::Engine;

/// The one style sheet, inline (its hash is in the Content-Security-Policy).
const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem;color:#222;line-height:1.4}\
code,pre{background:#f4f4f4;padding:.1rem .3rem}table{border-collapse:collapse}th,td{padding:.2rem .8rem .2rem 0;vertical-align:top}\
button,a.button{display:inline-block;padding:.5rem 1rem;border:1px solid #888;border-radius:4px;background:#fff;color:#222;text-decoration:none;font:inherit;cursor:pointer}\
.id{color:#666;font-size:.9rem;margin-top:2rem}";

/// The Content-Security-Policy of every page: the style above by its hash, no frames, no
/// base URL games.
///
/// No `form-action`: browsers apply it to every redirect a form submission follows, and
/// the Sign out button's POST goes on, by redirects, from the route host to the auth host
/// and then to the IdP's end-session endpoint (another origin, known only from the
/// config), so `form-action 'self'` made Chromium block sign-out (found by
/// tests/e2e_browser.rs). The pages run no script and escape every value, so the only
/// forms on them are our own.
pub fn csp() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        let hash = ring::digest::digest(&ring::digest::SHA256, STYLE.as_bytes());
        format!(
            "default-src 'none'; style-src 'sha256-{}'; frame-ancestors 'none'; base-uri 'none'",
            base64::engine::general_purpose::STANDARD.encode(hash.as_ref())
        )
    })
}

/// The headers every page carries, as (name, value): no caching (pages can carry one-time
/// links and who is signed in), no framing, no Referer with those links, no sniffing.
pub fn security_headers() -> [(&'static str, &'static str); 5] {
    [
        ("content-security-policy", csp()),
        ("cache-control", "no-store"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
    ]
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// A page; `request_id`, when given, is shown for the user to quote to the admin.
fn page(title: &str, body: &str, request_id: Option<&str>) -> String {
    let id = request_id.map_or(String::new(), |id| {
        format!(
            "<p class=\"id\">Request id: <code>{}</code></p>",
            escape(id)
        )
    });
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<title>{title}</title><style>{STYLE}</style></head><body>{body}{id}</body></html>\n",
        title = escape(title),
    )
}

/// 403: the route's policy does not allow this request (for this user, when signed in).
pub fn forbidden(
    user: Option<&str>,
    app: &str,
    sign_out_url: &str,
    request_id: Option<&str>,
) -> String {
    let body = match user {
        Some(user) => format!(
            "<h1>Access denied</h1><p>You are signed in as <strong>{}</strong>, and this account \
is not allowed to use <strong>{}</strong>.</p><p>If you should have access, ask your \
administrator, quoting the request id below. To use another account, sign out first.</p>{}",
            escape(user),
            escape(app),
            sign_out_form(sign_out_url)
        ),
        None => format!(
            "<h1>Access denied</h1><p>This request to <strong>{}</strong> is not allowed.</p>\
<p>If it should be, ask your administrator, quoting the request id below.</p>",
            escape(app)
        ),
    };
    page("Access denied", &body, request_id)
}

/// Sign-out is a POST from our own page (a GET from anywhere must not end a session), as
/// a plain form so that it works without JavaScript.
fn sign_out_form(action: &str) -> String {
    format!(
        "<form method=\"post\" action=\"{}\"><p><button type=\"submit\">Sign out</button></p></form>",
        escape(action)
    )
}

/// Asks before signing out: what a sign-out link (Grafana's, a bookmark) lands on.
pub fn sign_out_confirm(action: &str) -> String {
    page(
        "Sign out",
        &format!(
            "<h1>Sign out?</h1><p>This ends your single sign-on session for every application here.</p>{}",
            sign_out_form(action)
        ),
        None,
    )
}

/// An error, with the request id the user can quote to the admin (it is in the log line).
pub fn error(status_text: &str, message: &str, request_id: &str) -> String {
    page(
        status_text,
        &format!("<h1>{}</h1><p>{}</p>", escape(status_text), escape(message)),
        Some(request_id),
    )
}

/// What the 429 page and its JSON say.
pub fn too_many_text(retry_after_secs: u64) -> String {
    let unit = if retry_after_secs == 1 {
        "second"
    } else {
        "seconds"
    };
    format!(
        "There have been too many sign-in attempts. Please wait {retry_after_secs} {unit}, then try again."
    )
}

/// 429: too many sign-in attempts from here, or for this account.
pub fn too_many(retry_after_secs: u64, request_id: &str) -> String {
    page(
        "Too many attempts",
        &format!(
            "<h1>Too many attempts</h1><p>{}</p>",
            too_many_text(retry_after_secs)
        ),
        Some(request_id),
    )
}

/// The signed-in user's own details.
pub fn user_info(rows: &[(&str, String)], sign_out_url: &str) -> String {
    let mut table = String::from("<table>");
    for (k, v) in rows {
        table.push_str(&format!(
            "<tr><th align=\"left\">{}</th><td>{}</td></tr>",
            escape(k),
            escape(v)
        ));
    }
    table.push_str("</table>");
    page(
        "Signed in",
        &format!("<h1>Signed in</h1>{table}{}", sign_out_form(sign_out_url)),
        None,
    )
}

/// After sign-out (where the IdP sends the browser back to), with a way back in.
pub fn signed_out(sign_in_url: &str) -> String {
    page(
        "Signed out",
        &format!(
            "<h1>Signed out</h1><p>You have been signed out of every application here.</p>\
<p><a class=\"button\" href=\"{}\">Sign in again</a></p>",
            escape(sign_in_url)
        ),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_everything_dynamic() {
        let p = forbidden(
            Some("<script>\"x\""),
            "<app>",
            "https://a/?x=1&y='2'",
            Some("<id>"),
        );
        assert!(!p.contains("<script>") && !p.contains("<app>") && !p.contains("<id>"));
        assert!(p.contains("&lt;script&gt;&quot;x&quot;"));
        assert!(p.contains("x=1&amp;y=&#39;2&#39;"));
        assert!(p.contains("Request id: <code>&lt;id&gt;</code>"));
    }

    #[test]
    fn the_policy_names_the_one_style_by_its_hash_and_nothing_else_loads() {
        let p = signed_out("https://auth.example/.portcullis/sign_in");
        let style = p
            .split("<style>")
            .nth(1)
            .and_then(|s| s.split("</style>").next())
            .unwrap();
        let hash = base64::engine::general_purpose::STANDARD
            .encode(ring::digest::digest(&ring::digest::SHA256, style.as_bytes()).as_ref());
        assert!(
            csp().contains(&format!("style-src 'sha256-{hash}'")),
            "{}",
            csp()
        );
        assert!(csp().starts_with("default-src 'none';"));
        // It would stop the sign-out's redirects to the IdP (see csp()).
        assert!(!csp().contains("form-action"), "{}", csp());
        for page in [
            p,
            forbidden(None, "app", "x", Some("r")),
            too_many(30, "r"),
            error("t", "m", "r"),
            user_info(&[("Email", "a@x".into())], "/s"),
            sign_out_confirm("/s"),
        ] {
            assert!(
                !page.contains("<script") && !page.contains(" src="),
                "{page}"
            );
            assert_eq!(page.matches("<style>").count(), 1);
        }
        assert!(too_many(1, "r").contains("wait 1 second,"));
        assert!(too_many(30, "r").contains("wait 30 seconds,"));
    }
}
