//! The few HTML pages portcullis shows people. Every dynamic value goes through [`escape`].

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

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<title>{title}</title><style>body{{font-family:system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem;color:#222}}\
code,pre{{background:#f4f4f4;padding:.1rem .3rem}}a.button{{display:inline-block;padding:.5rem 1rem;border:1px solid #888;border-radius:4px;text-decoration:none}}</style>\
</head><body>{body}</body></html>\n",
        title = escape(title),
    )
}

/// 403: the route's policy does not allow this request (for this user, when signed in).
pub fn forbidden(user: Option<&str>, sign_out_url: &str) -> String {
    let body = match user {
        Some(user) => format!(
            "<h1>Access denied</h1><p>You are signed in as <strong>{}</strong>, and this account \
is not allowed to use this application.</p><p>If you should have access, ask your administrator. \
To use another account, sign out first.</p>{}",
            escape(user),
            sign_out_form(sign_out_url)
        ),
        None => "<h1>Access denied</h1><p>This request is not allowed here.</p>\
<p>If it should be, ask your administrator.</p>"
            .to_string(),
    };
    page("Access denied", &body)
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
    )
}

/// An error, with the request id the user can quote to the admin (it is in the log line).
pub fn error(status_text: &str, message: &str, request_id: &str) -> String {
    page(
        status_text,
        &format!(
            "<h1>{}</h1><p>{}</p><p>Request id: <code>{}</code></p>",
            escape(status_text),
            escape(message),
            escape(request_id)
        ),
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
    )
}

pub fn signed_out() -> String {
    page(
        "Signed out",
        "<h1>Signed out</h1><p>You have been signed out.</p>",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_everything_dynamic() {
        let p = forbidden(Some("<script>\"x\""), "https://a/?x=1&y='2'");
        assert!(!p.contains("<script>"));
        assert!(p.contains("&lt;script&gt;&quot;x&quot;"));
        assert!(p.contains("x=1&amp;y=&#39;2&#39;"));
    }
}
