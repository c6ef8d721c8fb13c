//! A route's `policy:` as written: the short forms, or `allow` and `deny` rules built from
//! `and`, `or`, `not` and criteria, each problem reported with its key path.
//!
//! ```yaml
//! policy:
//!   allow:
//!     or:
//!       - groups: { in: [admins, ops] }
//!       - and:
//!           - domain: { is: corp.example }
//!           - http_method: { in: [GET, HEAD] }
//!   deny:
//!     http_path: { starts_with: /admin/debug }
//! ```

use std::collections::HashSet;

use ipnet::IpNet;
use serde_yaml_ng::Value;

use super::Errors;
use super::raw::RawPolicy;
use crate::core::policy::{Criterion, Matcher, PathMatcher, Rule};
use crate::core::{Policy, route::canonical_path};

const CRITERIA: &str = "authenticated_user, user, email, domain, groups, claim/NAME, http_method, http_path, source_ip";
const RULE_HELP: &str = "a rule is one of and: [...], or: [...], not: {...}, or one criterion";

pub(super) fn validate_policy(raw: RawPolicy, path: &str, errors: &mut Errors) -> Option<Policy> {
    let RawPolicy {
        public,
        any_authenticated_user,
        emails,
        domains,
        groups,
        allow,
        deny,
    } = raw;
    let public = public.unwrap_or(false);
    let any = any_authenticated_user.unwrap_or(false);
    let emails = emails.unwrap_or_default();
    let domains = domains.unwrap_or_default();
    let groups = groups.unwrap_or_default();
    let lists = !(emails.is_empty() && domains.is_empty() && groups.is_empty());
    let deny = deny.and_then(|v| rule(&v, &format!("{path}.deny"), errors).ok());
    let short = match (public, any, lists) {
        (true, false, false) => Some(Policy::public()),
        (false, true, false) => Some(Policy::any_authenticated_user()),
        (false, false, true) => {
            for (j, d) in domains.iter().enumerate() {
                if d.contains('@') || d.trim().is_empty() {
                    errors.push(
                        format!("{path}.domains[{j}]"),
                        format!("{d:?} is not a domain"),
                    );
                }
            }
            for (j, e) in emails.iter().enumerate() {
                if !e.contains('@') {
                    errors.push(
                        format!("{path}.emails[{j}]"),
                        format!("{e:?} is not an email address"),
                    );
                }
            }
            Some(Policy::allow_list(emails, domains, groups))
        }
        (false, false, false) => None,
        _ => {
            errors.push(
                path,
                "choose exactly one of public, any_authenticated_user, or emails/domains/groups",
            );
            return None;
        }
    };
    let allow = match (short, allow) {
        (Some(_), Some(_)) => {
            errors.push(
                format!("{path}.allow"),
                "write allow, or one of the short forms (public, any_authenticated_user, emails/domains/groups), not both",
            );
            return None;
        }
        (Some(p), None) => {
            return Some(Policy::new(p.placed_at(path).allow().cloned(), deny));
        }
        (None, Some(v)) => rule(&v, &format!("{path}.allow"), errors).ok()?,
        (None, None) => {
            errors.push(
                path,
                "empty: set one of public, any_authenticated_user, emails/domains/groups, or allow (with deny if needed)",
            );
            return None;
        }
    };
    Some(Policy::new(Some(allow), deny))
}

/// One rule at `path`. `Err(())` after recording the problems.
fn rule(value: &Value, path: &str, errors: &mut Errors) -> Result<Rule, ()> {
    let fail = |errors: &mut Errors, at: &str, m: String| {
        errors.push(at, m);
        Err(())
    };
    let Some(map) = value.as_mapping() else {
        return fail(errors, path, format!("{RULE_HELP}, as a mapping"));
    };
    let mut entries = map.iter();
    let (Some((key, body)), None) = (entries.next(), entries.next()) else {
        return fail(
            errors,
            path,
            format!("{RULE_HELP}: exactly one key (combine several with and/or)"),
        );
    };
    let Some(key) = key.as_str() else {
        return fail(errors, path, format!("{RULE_HELP}; keys are names"));
    };
    let at = format!("{path}.{key}");
    match key {
        "and" | "or" => {
            let Some(items) = body.as_sequence().filter(|s| !s.is_empty()) else {
                return fail(errors, &at, "a non-empty list of rules".into());
            };
            let mut rules = Vec::new();
            let mut bad = false;
            for (i, item) in items.iter().enumerate() {
                match rule(item, &format!("{at}[{i}]"), errors) {
                    Ok(r) => rules.push(r),
                    Err(()) => bad = true,
                }
            }
            if bad {
                return Err(());
            }
            Ok(if key == "and" {
                Rule::And(rules)
            } else {
                Rule::Or(merge_sets(rules, &at))
            })
        }
        "not" => Ok(Rule::Not(Box::new(rule(body, &at, errors)?))),
        _ => criterion(key, body, &at, errors).map(|test| Rule::test(&at, test)),
    }
}

fn criterion(key: &str, body: &Value, at: &str, errors: &mut Errors) -> Result<Criterion, ()> {
    let mut matcher = |fold: Fold| match matcher(body, fold) {
        Ok(m) => Ok(m),
        Err(message) => {
            errors.push(at, message);
            Err(())
        }
    };
    Ok(match key {
        "authenticated_user" => match body.as_bool() {
            Some(b) => Criterion::AuthenticatedUser(b),
            None => {
                errors.push(at, "true or false");
                return Err(());
            }
        },
        "user" => Criterion::User(matcher(Fold::None)?),
        "email" => Criterion::Email(matcher(Fold::Lower)?),
        "domain" => Criterion::Domain(matcher(Fold::Lower)?),
        "groups" => Criterion::Groups(matcher(Fold::None)?),
        "http_method" => Criterion::HttpMethod(matcher(Fold::Upper)?),
        "http_path" => match path_matcher(body) {
            Ok(m) => Criterion::HttpPath(m),
            Err(message) => {
                errors.push(at, message);
                return Err(());
            }
        },
        "source_ip" => match networks(body) {
            Ok(nets) => Criterion::SourceIp(nets),
            Err(message) => {
                errors.push(at, message);
                return Err(());
            }
        },
        claim if claim.starts_with("claim/") && claim.len() > "claim/".len() => Criterion::Claim {
            name: claim["claim/".len()..].to_string(),
            matcher: matcher(Fold::None)?,
        },
        other => {
            errors.push(
                at,
                format!("{other:?} is not a criterion (use one of {CRITERIA}; {RULE_HELP})"),
            );
            return Err(());
        }
    })
}

#[derive(Clone, Copy)]
enum Fold {
    None,
    Lower,
    Upper,
}

const MATCHERS: &str = "is, starts_with, ends_with, contains or in";

/// `{is: v}`, `{starts_with: v}`, `{ends_with: v}`, `{contains: v}`, `{in: [v, ...]}`; a
/// plain string is `is`, a list `in`.
fn matcher(body: &Value, fold: Fold) -> Result<Matcher, String> {
    let text = |v: &Value| -> Result<String, String> {
        match v {
            Value::String(s) if !s.is_empty() => Ok(s.clone()),
            Value::Bool(_) | Value::Number(_) => Ok(serde_yaml_ng::to_string(v)
                .unwrap_or_default()
                .trim()
                .to_string()),
            _ => Err("a non-empty text value".into()),
        }
    };
    let list = |v: &Value| -> Result<HashSet<String>, String> {
        let items = v
            .as_sequence()
            .filter(|s| !s.is_empty())
            .ok_or("in: a non-empty list")?;
        items.iter().map(text).collect()
    };
    let m = match body {
        Value::Sequence(_) => Matcher::In(list(body)?),
        Value::Mapping(map) if map.len() == 1 => {
            let (k, v) = map.iter().next().ok_or("a matcher")?;
            match k.as_str() {
                Some("is") => Matcher::Is(text(v)?),
                Some("starts_with") => Matcher::StartsWith(text(v)?),
                Some("ends_with") => Matcher::EndsWith(text(v)?),
                Some("contains") => Matcher::Contains(text(v)?),
                Some("in") => Matcher::In(list(v)?),
                _ => return Err(format!("a matcher is one of {MATCHERS}")),
            }
        }
        Value::Mapping(_) => return Err(format!("exactly one matcher: {MATCHERS}")),
        other => Matcher::Is(text(other)?),
    };
    Ok(match fold {
        Fold::None => m,
        Fold::Lower => m.folded(false),
        Fold::Upper => m.folded(true),
    })
}

/// `{is: /p}`, `{starts_with: /p}` or `{regex: ...}`, on the canonical path (lower case,
/// `;` parameters and trailing dots dropped), so a rule on `/admin` also catches `/ADMIN`
/// and `/admin;x`.
fn path_matcher(body: &Value) -> Result<PathMatcher, String> {
    let Some((k, v)) = body
        .as_mapping()
        .filter(|m| m.len() == 1)
        .and_then(|m| m.iter().next())
    else {
        return Err("exactly one of is, starts_with or regex".into());
    };
    let Some(v) = v.as_str() else {
        return Err("a text value".into());
    };
    match k.as_str() {
        Some("is" | "starts_with") if !v.starts_with('/') => {
            Err(format!("{v:?} must start with /"))
        }
        Some("is") => Ok(PathMatcher::Is(canonical_path(v))),
        Some("starts_with") => Ok(PathMatcher::StartsWith(canonical_path(v))),
        Some("regex") => regex::RegexBuilder::new(v)
            .case_insensitive(true)
            .size_limit(1 << 20)
            .build()
            .map(PathMatcher::Regex)
            .map_err(|e| format!("not a regular expression: {e}")),
        _ => Err("exactly one of is, starts_with or regex".into()),
    }
}

/// `{is: CIDR}`, `{in: [CIDR, ...]}` or a list; an address alone is a /32 (or /128).
fn networks(body: &Value) -> Result<Vec<IpNet>, String> {
    let one = |v: &Value| -> Result<IpNet, String> {
        let s = v.as_str().ok_or("an address or CIDR as text")?;
        s.parse::<IpNet>()
            .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
            .map_err(|_| format!("{s:?} is not an IP address or CIDR (e.g. 10.0.0.0/8)"))
    };
    let list = |v: &Value| -> Result<Vec<IpNet>, String> {
        let items = v
            .as_sequence()
            .filter(|s| !s.is_empty())
            .ok_or("a non-empty list")?;
        items.iter().map(one).collect()
    };
    match body {
        Value::Sequence(_) => list(body),
        Value::Mapping(m) if m.len() == 1 => match m.iter().next() {
            Some((k, v)) if k.as_str() == Some("is") => Ok(vec![one(v)?]),
            Some((k, v)) if k.as_str() == Some("in") => list(v),
            _ => Err("is or in".into()),
        },
        _ => Ok(vec![one(body)?]),
    }
}

/// An `or` of many `is` tests of one criterion (a long list of `email: {is: ...}`) becomes
/// one set lookup, so that a thousand rules cost one hash, not a thousand comparisons. The
/// merged test is named by the `or` itself (`or_path`); the value it matched says which.
fn merge_sets(rules: Vec<Rule>, or_path: &str) -> Vec<Rule> {
    let mut out: Vec<Rule> = Vec::with_capacity(rules.len());
    for rule in rules {
        if let (Rule::Test { test: new, .. }, Some(Rule::Test { test: last, path })) =
            (&rule, out.last_mut())
            && merge_into(last, new)
        {
            *path = or_path.to_string();
            continue;
        }
        out.push(rule);
    }
    out
}

/// Adds `new`'s value to `last`'s set when both are `is`/`in` tests of the same criterion.
fn merge_into(last: &mut Criterion, new: &Criterion) -> bool {
    use Criterion as C;
    let (a, b) = match (last, new) {
        (C::Email(a), C::Email(b))
        | (C::Domain(a), C::Domain(b))
        | (C::User(a), C::User(b))
        | (C::Groups(a), C::Groups(b))
        | (C::HttpMethod(a), C::HttpMethod(b)) => (a, b),
        _ => return false,
    };
    let add: Vec<String> = match b {
        Matcher::Is(v) => vec![v.clone()],
        Matcher::In(set) => set.iter().cloned().collect(),
        _ => return false,
    };
    match a {
        Matcher::In(set) => set.extend(add),
        Matcher::Is(v) => {
            let mut set: HashSet<String> = add.into_iter().collect();
            set.insert(std::mem::take(v));
            *a = Matcher::In(set);
        }
        _ => return false,
    }
    true
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::core::User;
    use crate::core::policy::{Facts, Verdict};
    use crate::testing::user;

    fn parse(yaml: &str) -> Result<Policy, Vec<(String, String)>> {
        let raw: RawPolicy = serde_yaml_ng::from_str(yaml).expect("a raw policy");
        let mut errors = Errors::default();
        let p = validate_policy(raw, "routes[0].policy", &mut errors);
        match (p, errors.0.is_empty()) {
            (Some(p), true) => Ok(p),
            _ => Err(errors.0.into_iter().map(|e| (e.path, e.message)).collect()),
        }
    }

    fn facts(method: &'static str, path: &'static str) -> Facts<'static> {
        Facts {
            method,
            path,
            source_ip: "10.0.0.7".parse().ok(),
        }
    }

    #[test]
    fn the_long_form_reads_and_names_its_rules() {
        let p = parse(
            r#"
allow:
  or:
    - groups: { in: [admins, ops] }
    - and:
        - domain: Corp.Example
        - http_method: [get, head]
    - email: { is: Bob@Example.com }
    - email: { is: carol@example.com }
deny:
  or:
    - http_path: { starts_with: /Admin/Debug }
    - source_ip: { in: [192.0.2.0/24, "2001:db8::1"] }
"#,
        )
        .unwrap();
        let reason = |u: &User, f: Facts<'_>| match p.evaluate(Some(u), &f) {
            Verdict::Allow(r) => r.to_string(),
            v => format!("{v:?}"),
        };
        assert_eq!(
            reason(&user("x@corp.example", &[]), facts("GET", "/")),
            "routes[0].policy.allow.or[1].and[1].http_method"
        );
        assert_eq!(
            reason(&user("x@corp.example", &["ops"]), facts("POST", "/")),
            "routes[0].policy.allow.or[0].groups (ops)"
        );
        // Two email tests became one set, named by the `or`, with the value that matched.
        assert_eq!(
            reason(&user("carol@example.com", &[]), facts("GET", "/")),
            "routes[0].policy.allow.or (carol@example.com)"
        );
        assert_eq!(
            reason(&user("x@corp.example", &[]), facts("POST", "/")),
            "Forbidden(None)"
        );
        // The deny path is canonical: it also catches /ADMIN/debug;x.
        let bob = user("bob@example.com", &["admins"]);
        let v = p.evaluate(Some(&bob), &facts("GET", "/admin/debug/x"));
        assert!(
            matches!(v, Verdict::Forbidden(Some(r)) if r.rule == "routes[0].policy.deny.or[0].http_path"),
            "{v:?}"
        );
    }

    #[test]
    fn mistakes_are_named_by_their_path() {
        for (yaml, path) in [
            ("allow: {}", "routes[0].policy.allow"),
            ("allow: {or: []}", "routes[0].policy.allow.or"),
            (
                "allow: {or: [{email: x}, {emial: x}]}",
                "routes[0].policy.allow.or[1].emial",
            ),
            (
                "allow: {email: {is: a, in: [b]}}",
                "routes[0].policy.allow.email",
            ),
            ("allow: {email: {like: a}}", "routes[0].policy.allow.email"),
            (
                "allow: {http_path: {starts_with: admin}}",
                "routes[0].policy.allow.http_path",
            ),
            (
                "allow: {http_path: {regex: \"(\"}}",
                "routes[0].policy.allow.http_path",
            ),
            (
                "allow: {source_ip: {in: [10.0.0.0/33]}}",
                "routes[0].policy.allow.source_ip",
            ),
            (
                "allow: {authenticated_user: yes please}",
                "routes[0].policy.allow.authenticated_user",
            ),
            (
                "allow: {not: {claim/: x}}",
                "routes[0].policy.allow.not.claim/",
            ),
            ("allow: {email: a, groups: b}", "routes[0].policy.allow"),
            ("groups: [a]\nallow: {email: a}", "routes[0].policy.allow"),
            ("deny: {email: a}", "routes[0].policy"),
            ("{}", "routes[0].policy"),
        ] {
            let errors = parse(yaml)
                .err()
                .unwrap_or_else(|| panic!("accepted {yaml}"));
            assert!(
                errors.iter().any(|(p, _)| p == path),
                "{path} in {errors:?} for {yaml}"
            );
        }
    }

    #[test]
    fn a_short_form_and_a_deny_go_together() {
        let p = parse("groups: [admins]\ndeny: {http_method: DELETE}").unwrap();
        let admin = user("a@x", &["admins"]);
        assert!(
            matches!(p.evaluate(Some(&admin), &facts("GET", "/")), Verdict::Allow(r) if r.rule == "routes[0].policy.groups")
        );
        assert!(
            matches!(p.evaluate(Some(&admin), &facts("DELETE", "/")), Verdict::Forbidden(Some(r)) if r.rule == "routes[0].policy.deny.http_method")
        );
    }

    fn word() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["a", "b", "c"]).prop_map(str::to_string)
    }

    proptest! {
        /// The short form is the long form: same verdict for every user.
        #[test]
        fn shorthand_is_the_long_form(
            emails in prop::collection::vec(word(), 0..3),
            domains in prop::collection::vec(word(), 0..3),
            groups in prop::collection::vec(word(), 0..3),
            local in word(), domain in word(), verified in any::<bool>(),
            user_groups in prop::collection::vec(word(), 0..3),
        ) {
            prop_assume!(!(emails.is_empty() && domains.is_empty() && groups.is_empty()));
            let emails: Vec<String> = emails.iter().map(|e| format!("{e}@{e}.example")).collect();
            let domains: Vec<String> = domains.iter().map(|d| format!("{d}.example")).collect();
            let list = |v: &[String]| format!("[{}]", v.join(", "));
            let short = parse(&format!(
                "emails: {}\ndomains: {}\ngroups: {}",
                list(&emails), list(&domains), list(&groups)
            )).unwrap();
            let mut any = Vec::new();
            for e in &emails { any.push(format!("{{email: {{is: {e}}}}}")); }
            for d in &domains { any.push(format!("{{domain: {{is: {d}}}}}")); }
            for g in &groups { any.push(format!("{{groups: {{is: {g}}}}}")); }
            let long = parse(&format!("allow: {{or: [{}]}}", any.join(", "))).unwrap();
            let u = User {
                email: Some(format!("{local}@{domain}.example")),
                email_verified: verified,
                groups: user_groups,
                ..user("x@y", &[])
            };
            let f = facts("GET", "/");
            let allowed = |p: &Policy| matches!(p.evaluate(Some(&u), &f), Verdict::Allow(_));
            prop_assert_eq!(allowed(&short), allowed(&long));
            prop_assert_eq!(short.evaluate(None, &f), long.evaluate(None, &f));
        }
    }
}
