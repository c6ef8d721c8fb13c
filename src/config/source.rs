//! From YAML text to the raw config, collecting every problem at once, each with the line
//! and column it is at.
//!
//! serde stops at the first value of the wrong type, so the text is parsed into a YAML
//! value first; each type error is recorded with its key path and its key removed, and the
//! rest is read again, until it reads. Positions come from a second, span-keeping parse
//! (marked-yaml) of the same text, looked up by key path; a path with no position of its
//! own (a missing key) gets its nearest ancestor's.

use std::collections::HashMap;

use serde_path_to_error::Segment;
use serde_yaml_ng::Value;

use super::raw::RawConfig;

/// More type errors than this in one file, and the rest are left unread.
const MAX_TYPE_ERRORS: usize = 64;

/// Where each key path of the text is: `routes[1].policy` → (line, column), both 1-based.
#[derive(Debug, Default)]
pub struct Positions(HashMap<String, (usize, usize)>);

impl Positions {
    /// The positions of `text`'s keys and sequence items; empty when the span-keeping parser
    /// cannot read the text (it refuses anchors and aliases, which serde_yaml_ng accepts).
    pub fn of(text: &str) -> Self {
        let mut map = HashMap::new();
        if let Ok(node) = marked_yaml::parse_yaml(0, text) {
            walk(&node, String::new(), &mut map);
        }
        Self(map)
    }

    /// The position of `path`, or of its nearest ancestor that has one.
    pub fn find(&self, path: &str) -> Option<(usize, usize)> {
        let mut p = path;
        loop {
            if let Some(at) = self.0.get(p) {
                return Some(*at);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

fn walk(node: &marked_yaml::Node, prefix: String, map: &mut HashMap<String, (usize, usize)>) {
    use marked_yaml::Node;
    match node {
        Node::Mapping(m) => {
            for (k, v) in m.iter() {
                let path = if prefix.is_empty() {
                    k.as_str().to_string()
                } else {
                    format!("{prefix}.{}", k.as_str())
                };
                if let Some(mark) = k.span().start() {
                    map.insert(path.clone(), (mark.line(), mark.column()));
                }
                walk(v, path, map);
            }
        }
        Node::Sequence(s) => {
            for (i, v) in s.iter().enumerate() {
                let path = format!("{prefix}[{i}]");
                if let Some(mark) = v.span().start() {
                    map.insert(path.clone(), (mark.line(), mark.column()));
                }
                walk(v, path, map);
            }
        }
        Node::Scalar(_) => {}
    }
}

/// A problem found while reading the text, before validation.
pub struct ReadError {
    pub path: String,
    pub message: String,
    /// For syntax errors, the parser's own position.
    pub at: Option<(usize, usize)>,
}

/// Reads the raw config: every type error and every unknown key, with their paths.
pub fn read(text: &str) -> (Option<RawConfig>, Vec<ReadError>) {
    let mut errors = Vec::new();
    let mut value: Value = match serde_yaml_ng::from_str(text) {
        Ok(Value::Null) => Value::Mapping(Default::default()),
        Ok(v) => v,
        Err(e) => {
            errors.push(ReadError {
                path: String::new(),
                message: format!("not valid YAML: {e}"),
                at: e.location().map(|l| (l.line(), l.column())),
            });
            return (None, errors);
        }
    };
    for _ in 0..MAX_TYPE_ERRORS {
        let mut unknown = Vec::new();
        let mut note = |p: serde_ignored::Path<'_>| unknown.push(key_path(&p));
        let de = serde_ignored::Deserializer::new(value.clone(), &mut note);
        let result = serde_path_to_error::deserialize::<_, RawConfig>(de);
        match result {
            Ok(raw) => {
                errors.extend(unknown.into_iter().map(|path| ReadError {
                    path,
                    message: "unknown key".into(),
                    at: None,
                }));
                return (Some(raw), errors);
            }
            Err(e) => {
                let path = render(e.path());
                errors.push(ReadError {
                    path: path.clone(),
                    message: type_message(&e.inner().to_string()),
                    at: None,
                });
                if !remove_key(&mut value, e.path()) {
                    return (None, errors);
                }
            }
        }
    }
    errors.push(ReadError {
        path: String::new(),
        message: format!("more than {MAX_TYPE_ERRORS} values of the wrong type; fix these first"),
        at: None,
    });
    (None, errors)
}

/// serde's wording, minus the location serde_yaml_ng appends (positions are ours) and
/// our own type names (`struct RawServer` is a mapping to whoever writes the file).
fn type_message(message: &str) -> String {
    let message = match message.rfind(" at line ") {
        Some(at) => &message[..at],
        None => message,
    };
    match message.find("expected struct Raw") {
        Some(at) => format!("{}expected a mapping", &message[..at]),
        None => message.to_string(),
    }
}

/// Removes the key the path ends in (its last map segment; a bad sequence item takes its
/// whole list along). Every raw field is optional, so the rest still reads. False when
/// there is no key to remove (the document itself is of the wrong type).
fn remove_key(value: &mut Value, path: &serde_path_to_error::Path) -> bool {
    let segments: Vec<&Segment> = path.iter().collect();
    let Some(last_map) = segments
        .iter()
        .rposition(|s| matches!(s, Segment::Map { .. }))
    else {
        return false;
    };
    let mut node = value;
    for s in &segments[..last_map] {
        node = match (s, node) {
            (Segment::Map { key }, Value::Mapping(m)) => match m.get_mut(key.as_str()) {
                Some(v) => v,
                None => return false,
            },
            (Segment::Seq { index }, Value::Sequence(items)) => match items.get_mut(*index) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match (segments[last_map], node) {
        (Segment::Map { key }, Value::Mapping(m)) => m.remove(key.as_str()).is_some(),
        _ => false,
    }
}

/// `routes[1].policy.emails[0]`.
fn render(path: &serde_path_to_error::Path) -> String {
    let mut out = String::new();
    for s in path.iter() {
        match s {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Enum { variant } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(variant);
            }
            Segment::Unknown => out.push_str(".?"),
        }
    }
    out
}

/// Renders an ignored key's location the way errors name fields: `routes[1].policy.bogus`.
fn key_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", key_path(parent)),
        Path::Map { parent, key } => {
            let p = key_path(parent);
            if p.is_empty() {
                key.clone()
            } else {
                format!("{p}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => key_path(parent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_by_key_path_and_nearest_ancestor() {
        let text = "a: 1\nroutes:\n  - name: x\n    policy:\n      emails: [p, q]\n";
        let p = Positions::of(text);
        assert_eq!(p.find("a"), Some((1, 1)));
        assert_eq!(p.find("routes[0].policy"), Some((4, 5)));
        assert_eq!(p.find("routes[0].policy.emails[1]"), Some((5, 19)));
        assert_eq!(p.find("routes[0].policy.groups"), Some((4, 5)));
        assert_eq!(p.find("nothing"), None);
        // Anchors are valid YAML that the span-keeping parser refuses: no positions then.
        assert_eq!(Positions::of("a: &x 1\nb: *x\n").find("b"), None);
    }

    #[test]
    fn every_type_error_and_unknown_key_in_one_read() {
        let text = "server: 5\nidp:\n  scopes: oops\n  issuer: [1]\n  bogus: 1\ncookie: {lifetime: {}}\nroutes: [{name: [1], from: x}]\n";
        let (raw, errors) = read(text);
        assert!(raw.is_some(), "the rest still reads");
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        for want in [
            "server",
            "idp.scopes",
            "idp.issuer",
            "idp.bogus",
            "cookie.lifetime",
            "routes[0].name",
        ] {
            assert!(paths.contains(&want), "{want} in {paths:?}");
        }
        assert!(errors.iter().all(|e| !e.message.contains(" at line ")));
        let server = errors.iter().find(|e| e.path == "server").unwrap();
        assert_eq!(
            server.message,
            "invalid type: integer `5`, expected a mapping"
        );
        let (_, errors) = read("- a list\n");
        assert_eq!(errors.len(), 1);
        let (_, errors) = read("a: [\n");
        assert!(errors[0].message.starts_with("not valid YAML") && errors[0].at.is_some());
    }
}
