//! Just enough HTML reading to submit the IdP's forms the way a browser would: find the
//! forms, their action and method, and the fields a browser sends when the first submit
//! button is clicked. Not a general HTML parser.

/// A form on a page, with the fields a browser would submit.
#[derive(Debug, Clone)]
pub struct Form {
    pub id: Option<String>,
    /// Lowercased; `get` when absent, as in browsers.
    pub method: String,
    /// The raw (entity-decoded) `action`; `None` means "the page's own URL".
    pub action: Option<String>,
    /// Successful controls in document order: hidden and text-like inputs, checked
    /// checkboxes and radios, and the first submit button if it has a name.
    pub fields: Vec<(String, String)>,
}

impl Form {
    pub fn has_field(&self, name: &str) -> bool {
        self.fields.iter().any(|(n, _)| n == name)
    }

    /// Sets a field's value, replacing an existing one or adding it.
    pub fn set(&mut self, name: &str, value: &str) {
        match self.fields.iter_mut().find(|(n, _)| n == name) {
            Some(field) => field.1 = value.to_string(),
            None => self.fields.push((name.to_string(), value.to_string())),
        }
    }
}

/// One start or end tag.
#[derive(Debug)]
struct Tag {
    name: String,
    end: bool,
    attrs: Vec<(String, String)>,
}

impl Tag {
    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// All forms in `html`, in document order.
pub fn forms(html: &str) -> Vec<Form> {
    let tags = tags(html);
    let mut forms: Vec<Form> = tags
        .iter()
        .filter(|t| t.name == "form" && !t.end)
        .map(|t| Form {
            id: t.attr("id").map(str::to_string),
            method: t.attr("method").unwrap_or("get").to_ascii_lowercase(),
            action: t.attr("action").map(str::to_string),
            fields: Vec::new(),
        })
        .collect();
    // Controls belong to the form they sit in, or to the one their `form` attribute names.
    let mut clicked = vec![false; forms.len()];
    let mut open: Option<usize> = None;
    let mut seen_forms = 0;
    for tag in &tags {
        match (tag.name.as_str(), tag.end) {
            ("form", false) => {
                open = Some(seen_forms);
                seen_forms += 1;
            }
            ("form", true) => open = None,
            ("input" | "button" | "textarea", false) => {
                let owner = match tag.attr("form") {
                    Some(id) => forms.iter().position(|f| f.id.as_deref() == Some(id)),
                    None => open,
                };
                if let Some(i) = owner {
                    add_control(tag, &mut forms[i], &mut clicked[i]);
                }
            }
            _ => {}
        }
    }
    forms
}

fn add_control(tag: &Tag, form: &mut Form, clicked: &mut bool) {
    let default_type = if tag.name == "button" {
        "submit"
    } else {
        "text"
    };
    let kind = tag
        .attr("type")
        .unwrap_or(default_type)
        .to_ascii_lowercase();
    let name = tag.attr("name");
    let value = tag.attr("value").unwrap_or("");
    match kind.as_str() {
        "submit" | "image" => {
            // Clicking the first submit button sends its name and value, if it has a name.
            if !*clicked {
                *clicked = true;
                if let Some(name) = name {
                    form.fields.push((name.to_string(), value.to_string()));
                }
            }
        }
        "button" | "reset" | "file" => {}
        "checkbox" | "radio" => {
            if let (Some(name), Some(_)) = (name, tag.attr("checked")) {
                let value = tag.attr("value").unwrap_or("on");
                form.fields.push((name.to_string(), value.to_string()));
            }
        }
        _ => {
            if let Some(name) = name {
                form.fields.push((name.to_string(), value.to_string()));
            }
        }
    }
}

/// Splits `html` into tags, skipping comments, doctypes and the bodies of scripts and styles.
fn tags(html: &str) -> Vec<Tag> {
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find('<') {
        rest = &rest[start..];
        if let Some(comment) = rest.strip_prefix("<!--") {
            rest = comment.find("-->").map_or("", |end| &comment[end + 3..]);
            continue;
        }
        let Some((tag, after)) = parse_tag(rest) else {
            rest = &rest[1..];
            continue;
        };
        rest = after;
        if !tag.end && (tag.name == "script" || tag.name == "style") {
            let close = format!("</{}", tag.name);
            rest = find_ci(rest, &close).map_or("", |i| &rest[i..]);
        }
        out.push(tag);
    }
    out
}

/// Parses one tag at the start of `s` (which begins with `<`); returns it and the rest.
fn parse_tag(s: &str) -> Option<(Tag, &str)> {
    let mut rest = &s[1..];
    let end = rest.starts_with('/');
    if end {
        rest = &rest[1..];
    }
    let name_len = rest
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(rest.len());
    if name_len == 0 {
        return None;
    }
    let name = rest[..name_len].to_ascii_lowercase();
    rest = &rest[name_len..];
    let mut attrs = Vec::new();
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix("/>").or_else(|| rest.strip_prefix('>')) {
            return Some((Tag { name, end, attrs }, after));
        }
        if rest.is_empty() {
            return None;
        }
        if let Some(after) = rest.strip_prefix('/') {
            rest = after;
            continue;
        }
        let attr_len = rest
            .find(|c: char| c.is_whitespace() || matches!(c, '=' | '>' | '/'))
            .unwrap_or(rest.len());
        let attr = rest[..attr_len].to_ascii_lowercase();
        rest = rest[attr_len..].trim_start();
        let value = match rest.strip_prefix('=') {
            Some(after) => {
                let after = after.trim_start();
                let (raw, remaining) = match after.chars().next() {
                    Some(q @ ('"' | '\'')) => {
                        let body = &after[1..];
                        let close = body.find(q)?;
                        (&body[..close], &body[close + 1..])
                    }
                    _ => {
                        let len = after
                            .find(|c: char| c.is_whitespace() || c == '>')
                            .unwrap_or(after.len());
                        (&after[..len], &after[len..])
                    }
                };
                rest = remaining;
                decode_entities(raw)
            }
            None => String::new(),
        };
        if !attr.is_empty() {
            attrs.push((attr, value));
        }
    }
}

fn find_ci(haystack: &str, needle: &str) -> Option<usize> {
    haystack
        .to_ascii_lowercase()
        .find(&needle.to_ascii_lowercase())
}

/// Decodes the character references that show up in attribute values.
pub fn decode_entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let decoded = rest.find(';').filter(|&end| end <= 10).and_then(|end| {
            let entity = &rest[1..end];
            let c = match entity {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                _ => {
                    let code = if let Some(hex) = entity
                        .strip_prefix("#x")
                        .or_else(|| entity.strip_prefix("#X"))
                    {
                        u32::from_str_radix(hex, 16).ok()
                    } else {
                        entity.strip_prefix('#').and_then(|d| d.parse().ok())
                    };
                    code.and_then(char::from_u32)
                }
            };
            c.map(|c| (c, end))
        });
        match decoded {
            Some((c, end)) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_form_fields() {
        let html = r#"<!doctype html><html><body>
            <script>if (a<b) {}</script>
            <form method="post" action="/interaction/abc/login?x=1&amp;y=2" autocomplete=off>
              <input type="hidden" name="uid" value="abc">
              <input name="login" placeholder="user"/>
              <input type=password name=password>
              <input type="checkbox" name="remember">
              <button type="submit">Sign in</button>
            </form></body></html>"#;
        let forms = forms(html);
        assert_eq!(forms.len(), 1);
        let f = &forms[0];
        assert_eq!(f.method, "post");
        assert_eq!(f.action.as_deref(), Some("/interaction/abc/login?x=1&y=2"));
        let names: Vec<&str> = f.fields.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["uid", "login", "password"]);
    }

    #[test]
    fn buttons_outside_the_form_join_by_form_attribute() {
        // The shape of oidc-provider's default logout confirmation page.
        let html = r#"<form id="op.logoutForm" method="post" action="/session/end/confirm">
            <input type="hidden" name="xsrf" value="s3cr&#x2F;t"/></form>
            <button autofocus type="submit" form="op.logoutForm" value="yes" name="logout">Yes</button>
            <button type="submit" form="op.logoutForm">No</button>"#;
        let forms = forms(html);
        assert_eq!(
            forms[0].fields,
            [
                ("xsrf".to_string(), "s3cr/t".to_string()),
                ("logout".to_string(), "yes".to_string())
            ]
        );
    }
}
