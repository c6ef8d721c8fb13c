//! Route policies: who may reach a route, and which rule says so. Plain data and pure
//! functions, no I/O.
//!
//! A policy has an `allow` rule and a `deny` rule, built from `and`, `or` and `not` over
//! criteria (who the user is, and what the request is). `deny` wins over `allow`, and what
//! no rule allows is refused. The three short forms of the config (`public`,
//! `any_authenticated_user`, and the `emails`/`domains`/`groups` lists) are rules of this kind.
//!
//! Without a user, a criterion about the user is neither true nor false but *unknown*, and
//! `and`/`or`/`not` follow Kleene's three-valued logic: `not` of an unknown is unknown, so
//! `not: {groups: {is: banned}}` never lets an anonymous request in; signing in decides it.

use std::collections::HashSet;
use std::net::IpAddr;

use ipnet::IpNet;

use super::user::User;

/// Who may use a route.
#[derive(Debug, Clone)]
pub struct Policy {
    allow: Option<Rule>,
    deny: Option<Rule>,
    /// Whether a rule tests the path, which is then made canonical for it (a copy).
    uses_path: bool,
}

/// One rule: a combination of rules, or a criterion. `path` names it in the config, for the
/// audit line and `policy explain` (e.g. `routes[2].policy.allow.or[1]`).
#[derive(Debug, Clone)]
pub enum Rule {
    And(Vec<Rule>),
    Or(Vec<Rule>),
    Not(Box<Rule>),
    Test { path: String, test: Criterion },
}

/// A test of the user or the request.
#[derive(Debug, Clone)]
pub enum Criterion {
    /// Anyone, signed in or not.
    Everyone,
    /// Signed in (true) or not (false).
    AuthenticatedUser(bool),
    /// The IdP's subject.
    User(Matcher),
    /// The verified email, without regard to case.
    Email(Matcher),
    /// The verified email's domain, without regard to case.
    Domain(Matcher),
    /// Any of the user's groups.
    Groups(Matcher),
    /// Any value of a claim kept from the sign-in.
    Claim { name: String, matcher: Matcher },
    /// The request method, upper case.
    HttpMethod(Matcher),
    /// The path (no query) as upstreams read it (`crate::core::route::canonical_path`).
    HttpPath(PathMatcher),
    /// The client address Envoy saw (with its trusted hops).
    SourceIp(Vec<IpNet>),
}

/// How a text value is compared.
#[derive(Debug, Clone)]
pub enum Matcher {
    Is(String),
    StartsWith(String),
    EndsWith(String),
    Contains(String),
    In(HashSet<String>),
}

/// How a path is compared.
#[derive(Debug, Clone)]
pub enum PathMatcher {
    Is(String),
    StartsWith(String),
    Regex(regex::Regex),
}

/// What a policy looks at besides the user.
#[derive(Debug, Clone, Copy, Default)]
pub struct Facts<'a> {
    pub method: &'a str,
    /// The canonical path (see [`Criterion::HttpPath`]).
    pub path: &'a str,
    pub source_ip: Option<IpAddr>,
}

/// The outcome of a policy for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// Allowed, and by which rule.
    Allow(Reason<'a>),
    /// Not allowed, and signing in may change that (no user, and a rule about users is
    /// undecided).
    SignInRequired,
    /// Refused: by a deny rule, or because no allow rule matched.
    Forbidden(Option<Reason<'a>>),
}

/// The rule that decided, and the value it matched when it compared one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reason<'a> {
    pub rule: &'a str,
    pub value: Option<&'a str>,
}

impl std::fmt::Display for Reason<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.value {
            Some(v) => write!(f, "{} ({v})", self.rule),
            None => f.write_str(self.rule),
        }
    }
}

/// A three-valued truth, carrying the criterion that made it true.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Truth<'a> {
    True(Reason<'a>),
    False,
    Unknown,
}

impl Policy {
    /// A policy of `allow` and `deny` rules (either may be absent: no allow refuses all).
    pub fn new(allow: Option<Rule>, deny: Option<Rule>) -> Self {
        let uses_path = allow.iter().chain(deny.iter()).any(Rule::uses_path);
        Self {
            allow,
            deny,
            uses_path,
        }
    }

    /// Whether a rule tests [`Facts::path`]; when none does, it may be left empty.
    pub fn uses_path(&self) -> bool {
        self.uses_path
    }

    /// Anyone, signed in or not (`public: true`).
    pub fn public() -> Self {
        Self::new(Some(Rule::test("public", Criterion::Everyone)), None)
    }

    /// Anyone the IdP signs in (`any_authenticated_user: true`).
    pub fn any_authenticated_user() -> Self {
        Self::new(
            Some(Rule::test(
                "any_authenticated_user",
                Criterion::AuthenticatedUser(true),
            )),
            None,
        )
    }

    /// The short form of allow lists: a user with any of the groups, or whose verified email
    /// is listed or in a listed domain. `at` prefixes the rule paths (`routes[1].policy`).
    pub fn allow_list(emails: Vec<String>, domains: Vec<String>, groups: Vec<String>) -> Self {
        Self::allow_list_at("", emails, domains, groups)
    }

    pub fn allow_list_at(
        at: &str,
        emails: Vec<String>,
        domains: Vec<String>,
        groups: Vec<String>,
    ) -> Self {
        let path = |k: &str| {
            if at.is_empty() {
                k.to_string()
            } else {
                format!("{at}.{k}")
            }
        };
        let set = |items: Vec<String>| Matcher::In(items.into_iter().collect());
        let mut any = Vec::new();
        if !groups.is_empty() {
            any.push(Rule::test(&path("groups"), Criterion::Groups(set(groups))));
        }
        if !emails.is_empty() {
            let emails = emails.iter().map(|e| e.trim().to_string()).collect();
            any.push(Rule::test(
                &path("emails"),
                Criterion::Email(set(emails).folded(false)),
            ));
        }
        if !domains.is_empty() {
            let domains = domains
                .into_iter()
                .map(|d| d.trim().trim_start_matches('@').to_string())
                .collect();
            any.push(Rule::test(
                &path("domains"),
                Criterion::Domain(set(domains).folded(false)),
            ));
        }
        Self::new(Some(Rule::Or(any)), None)
    }

    /// Prefixes every rule path with `at` (the config places policies after building them).
    pub fn placed_at(mut self, at: &str) -> Self {
        for rule in self.allow.iter_mut().chain(self.deny.iter_mut()) {
            rule.prefix(at);
        }
        self
    }

    pub fn allow(&self) -> Option<&Rule> {
        self.allow.as_ref()
    }

    pub fn deny(&self) -> Option<&Rule> {
        self.deny.as_ref()
    }

    /// Claim names the rules test, to keep from the sign-in.
    pub fn claims(&self) -> Vec<String> {
        let mut out = Vec::new();
        for rule in self.allow.iter().chain(self.deny.iter()) {
            rule.claims(&mut out);
        }
        out
    }

    /// Decides for `user` (none: not signed in) and the request `facts`.
    pub fn evaluate<'a>(&'a self, user: Option<&'a User>, facts: &Facts<'_>) -> Verdict<'a> {
        let deny = self.deny.as_ref().map(|r| r.eval(user, facts));
        if let Some(Truth::True(reason)) = deny {
            return Verdict::Forbidden(Some(reason));
        }
        let allow = self.allow.as_ref().map(|r| r.eval(user, facts));
        match allow {
            Some(Truth::True(reason)) => Verdict::Allow(reason),
            _ if user.is_none()
                && (matches!(allow, Some(Truth::Unknown))
                    || matches!(deny, Some(Truth::Unknown))) =>
            {
                Verdict::SignInRequired
            }
            _ => Verdict::Forbidden(None),
        }
    }
}

impl Rule {
    pub fn test(path: &str, test: Criterion) -> Self {
        Rule::Test {
            path: path.to_string(),
            test,
        }
    }

    fn prefix(&mut self, at: &str) {
        match self {
            Rule::And(rules) | Rule::Or(rules) => rules.iter_mut().for_each(|r| r.prefix(at)),
            Rule::Not(rule) => rule.prefix(at),
            Rule::Test { path, .. } => {
                *path = if path.is_empty() {
                    at.to_string()
                } else {
                    format!("{at}.{path}")
                }
            }
        }
    }

    fn uses_path(&self) -> bool {
        match self {
            Rule::And(rules) | Rule::Or(rules) => rules.iter().any(Rule::uses_path),
            Rule::Not(rule) => rule.uses_path(),
            Rule::Test { test, .. } => matches!(test, Criterion::HttpPath(_)),
        }
    }

    fn claims(&self, out: &mut Vec<String>) {
        match self {
            Rule::And(rules) | Rule::Or(rules) => rules.iter().for_each(|r| r.claims(out)),
            Rule::Not(rule) => rule.claims(out),
            Rule::Test {
                test: Criterion::Claim { name, .. },
                ..
            } => {
                if !out.contains(name) {
                    out.push(name.clone());
                }
            }
            Rule::Test { .. } => {}
        }
    }

    fn eval<'a>(&'a self, user: Option<&'a User>, facts: &Facts<'_>) -> Truth<'a> {
        match self {
            // Kleene: false wins an `and`, true wins an `or`; otherwise unknown spreads.
            Rule::And(rules) => {
                let mut unknown = false;
                let mut last = None;
                for r in rules {
                    match r.eval(user, facts) {
                        Truth::False => return Truth::False,
                        Truth::Unknown => unknown = true,
                        Truth::True(reason) => last = Some(reason),
                    }
                }
                match (unknown, last) {
                    (true, _) => Truth::Unknown,
                    (false, Some(reason)) => Truth::True(reason),
                    // An empty `and` is vacuously true, but names no rule: the config
                    // refuses it, so this cannot allow anything.
                    (false, None) => Truth::False,
                }
            }
            Rule::Or(rules) => {
                let mut unknown = false;
                for r in rules {
                    match r.eval(user, facts) {
                        Truth::True(reason) => return Truth::True(reason),
                        Truth::Unknown => unknown = true,
                        Truth::False => {}
                    }
                }
                if unknown {
                    Truth::Unknown
                } else {
                    Truth::False
                }
            }
            Rule::Not(rule) => match rule.eval(user, facts) {
                Truth::True(_) => Truth::False,
                Truth::Unknown => Truth::Unknown,
                Truth::False => Truth::True(Reason {
                    rule: rule.path(),
                    value: None,
                }),
            },
            Rule::Test { path, test } => match test.eval(user, facts) {
                None => Truth::Unknown,
                Some(None) => Truth::False,
                Some(Some(value)) => Truth::True(Reason {
                    rule: path,
                    value: value.filter(|v| !v.is_empty()),
                }),
            },
        }
    }

    /// The path of the rule (the first criterion's, for a combination).
    fn path(&self) -> &str {
        match self {
            Rule::And(rules) | Rule::Or(rules) => rules.first().map_or("", |r| r.path()),
            Rule::Not(rule) => rule.path(),
            Rule::Test { path, .. } => path,
        }
    }
}

impl Criterion {
    /// `None`: unknown (a user criterion without a user); `Some(None)`: false;
    /// `Some(Some(value))`: true, by `value` when a value was compared.
    fn eval<'a>(
        &'a self,
        user: Option<&'a User>,
        facts: &Facts<'_>,
    ) -> Option<Option<Option<&'a str>>> {
        let yes = |v: Option<&'a str>| Some(Some(v));
        match self {
            Criterion::Everyone => yes(None),
            // Signing in makes `true` true: for the anonymous it is undecided, not false.
            Criterion::AuthenticatedUser(true) => {
                user?;
                yes(None)
            }
            Criterion::AuthenticatedUser(false) => Some(user.is_none().then_some(None)),
            Criterion::HttpMethod(m) => Some(m.matches(&upper(facts.method)).then_some(None)),
            Criterion::HttpPath(m) => Some(m.matches(facts.path).then_some(None)),
            Criterion::SourceIp(nets) => Some(
                facts
                    .source_ip
                    .is_some_and(|ip| nets.iter().any(|n| n.contains(&ip)))
                    .then_some(None),
            ),
            Criterion::User(m) => {
                let u = user?;
                Some(m.matches(&u.subject).then_some(Some(u.subject.as_str())))
            }
            Criterion::Email(m) => {
                let u = user?;
                Some(
                    u.verified_email()
                        .filter(|e| m.matches(&lower(e)))
                        .map(Some),
                )
            }
            Criterion::Domain(m) => {
                let u = user?;
                Some(
                    u.verified_email()
                        .and_then(|e| e.rsplit_once('@'))
                        .map(|(_, d)| d)
                        .filter(|d| m.matches(&lower(d)))
                        .map(Some),
                )
            }
            Criterion::Groups(m) => {
                let u = user?;
                Some(
                    u.groups
                        .iter()
                        .find(|g| m.matches(g))
                        .map(|g| Some(g.as_str())),
                )
            }
            Criterion::Claim { name, matcher } => {
                let u = user?;
                Some(
                    u.claim(name)
                        .iter()
                        .find(|v| matcher.matches(v))
                        .map(|v| Some(v.as_str())),
                )
            }
        }
    }
}

impl Matcher {
    fn matches(&self, value: &str) -> bool {
        match self {
            Matcher::Is(want) => value == want,
            Matcher::StartsWith(p) => value.starts_with(p.as_str()),
            Matcher::EndsWith(s) => value.ends_with(s.as_str()),
            Matcher::Contains(s) => value.contains(s.as_str()),
            Matcher::In(set) => set.contains(value),
        }
    }

    /// The same matcher with every value folded: lower case, or upper case.
    pub fn folded(self, upper: bool) -> Self {
        let f = |v: String| {
            if upper {
                v.to_ascii_uppercase()
            } else {
                v.to_ascii_lowercase()
            }
        };
        match self {
            Matcher::Is(v) => Matcher::Is(f(v)),
            Matcher::StartsWith(v) => Matcher::StartsWith(f(v)),
            Matcher::EndsWith(v) => Matcher::EndsWith(f(v)),
            Matcher::Contains(v) => Matcher::Contains(f(v)),
            Matcher::In(set) => Matcher::In(set.into_iter().map(f).collect()),
        }
    }
}

/// `text` in lower case, copied only when it is not already.
fn lower(text: &str) -> std::borrow::Cow<'_, str> {
    if text.bytes().any(|b| b.is_ascii_uppercase()) {
        text.to_ascii_lowercase().into()
    } else {
        text.into()
    }
}

/// `text` in upper case, copied only when it is not already.
fn upper(text: &str) -> std::borrow::Cow<'_, str> {
    if text.bytes().any(|b| b.is_ascii_lowercase()) {
        text.to_ascii_uppercase().into()
    } else {
        text.into()
    }
}

impl PathMatcher {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatcher::Is(p) => path == p,
            PathMatcher::StartsWith(p) => path.starts_with(p.as_str()),
            PathMatcher::Regex(re) => re.is_match(path),
        }
    }
}

#[cfg(test)]
mod tests;
