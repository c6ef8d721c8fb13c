//! `portcullis policy explain` and `portcullis policy test`: the decision for a described
//! request, and the rule that made it, from the config alone (no IdP, no secrets needed
//! beyond what the routes name), so admins can check a policy before deploying it and in
//! their own CI.

use std::collections::HashMap;
use std::net::IpAddr;

use serde::Deserialize;
use url::Url;

use crate::core::decision::CockpitStep;
use crate::core::{Outcome, Refusal, Request, RouteTable, Session, User, authority_of, decide};

/// A request and who makes it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub url: String,
    #[serde(default)]
    pub method: Option<String>,
    /// The IdP's subject; defaults to the email's local part when an email is given.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    /// Whether the IdP verified the email (default true).
    #[serde(default)]
    pub email_verified: Option<bool>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub claims: HashMap<String, ClaimValue>,
    #[serde(default)]
    pub ip: Option<IpAddr>,
    /// For `policy test`: `allow`, `deny`, `sign_in` or `no_route`.
    #[serde(default)]
    pub expect: Option<Expect>,
    /// For `policy test`: the rule that must decide (its config path).
    #[serde(default)]
    pub rule: Option<String>,
}

/// A claim's value in a case: one string or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ClaimValue {
    One(String),
    Many(Vec<String>),
}

/// What a case expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    Allow,
    Deny,
    SignIn,
    NoRoute,
}

/// The decision for one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub route: Option<String>,
    pub result: Expect,
    /// Why, for people: the rule, or the refusal.
    pub because: String,
    /// The deciding rule's config path, when a rule decided.
    pub rule: Option<String>,
}

impl Case {
    fn user(&self) -> Option<User> {
        let subject = self.user.clone().or_else(|| {
            self.email
                .as_deref()
                .map(|e| e.split('@').next().unwrap_or(e).to_string())
        });
        if subject.is_none() && self.groups.is_empty() && self.claims.is_empty() {
            return None;
        }
        Some(User {
            subject: subject.unwrap_or_else(|| "user".into()),
            email: self.email.clone(),
            email_verified: self.email_verified.unwrap_or(true),
            name: None,
            preferred_username: None,
            groups: self.groups.clone(),
            claims: self
                .claims
                .iter()
                .map(|(k, v)| {
                    let values = match v {
                        ClaimValue::One(s) => vec![s.clone()],
                        ClaimValue::Many(v) => v.clone(),
                    };
                    (k.clone(), values)
                })
                .collect(),
        })
    }
}

/// Decides `case` against `routes`.
pub fn explain(routes: &RouteTable, case: &Case) -> Result<Explanation, String> {
    let url = Url::parse(&case.url).map_err(|e| format!("{:?} is not a URL: {e}", case.url))?;
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    };
    let authority = authority_of(&url);
    let method = case.method.as_deref().unwrap_or("GET").to_ascii_uppercase();
    let route = match routes.select(None, url.scheme(), &authority, &path) {
        Ok(r) => r,
        Err(e) => {
            return Ok(Explanation {
                route: None,
                result: Expect::NoRoute,
                because: match Refusal::from(e) {
                    Refusal::AmbiguousPath => {
                        "the path is one route's as written and another's as upstreams read it"
                            .into()
                    }
                    _ => "no route serves this URL".into(),
                },
                rule: None,
            });
        }
    };
    let now = crate::core::unix_now();
    let session = case.user().map(|u| Session::new(u, now, 3600));
    let headers = HashMap::new();
    let req = Request {
        method: &method,
        scheme: url.scheme(),
        authority: &authority,
        path: &path,
        headers: &headers,
        route_hint: None,
        source_ip: case.ip,
    };
    let explained = match decide(route, session.as_ref(), &req, now) {
        Outcome::Allow(grant) => {
            let mut because = format!("allowed by {}", grant.reason);
            if let CockpitStep::LogIn { account, .. } = &grant.cockpit {
                because.push_str(&format!("; logs in to Cockpit as {account}"));
            }
            Explanation {
                route: Some(route.name.clone()),
                result: Expect::Allow,
                because,
                rule: Some(grant.reason.rule.to_string()),
            }
        }
        Outcome::Refuse(Refusal::SignInRequired { .. }) => Explanation {
            route: Some(route.name.clone()),
            result: Expect::SignIn,
            because: "sign-in required: the rules depend on who the user is".into(),
            rule: None,
        },
        Outcome::Refuse(Refusal::Forbidden { reason, .. }) => Explanation {
            route: Some(route.name.clone()),
            result: Expect::Deny,
            because: match reason {
                Some(r) => format!("denied by {r}"),
                None => "denied: no allow rule matches".into(),
            },
            rule: reason.map(|r| r.rule.to_string()),
        },
        Outcome::Refuse(Refusal::NoLocalAccount { .. }) => Explanation {
            route: Some(route.name.clone()),
            result: Expect::Deny,
            because: "denied: no local account on this Cockpit route".into(),
            rule: None,
        },
        Outcome::Refuse(Refusal::NoRoute | Refusal::AmbiguousPath) => Explanation {
            route: None,
            result: Expect::NoRoute,
            because: "no route".into(),
            rule: None,
        },
    };
    Ok(explained)
}

/// The outcome of `policy test`: each failing case, described.
pub fn run_cases(routes: &RouteTable, cases: &[Case]) -> (usize, Vec<String>) {
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let label = format!(
            "case {} ({} {})",
            i + 1,
            case.method.as_deref().unwrap_or("GET"),
            case.url
        );
        let Some(expect) = case.expect else {
            failures.push(format!("{label}: no `expect`"));
            continue;
        };
        match explain(routes, case) {
            Err(e) => failures.push(format!("{label}: {e}")),
            Ok(x) if x.result != expect => failures.push(format!(
                "{label}: expected {expect:?}, got {:?}: {}",
                x.result, x.because
            )),
            Ok(x) if case.rule.is_some() && case.rule != x.rule => failures.push(format!(
                "{label}: expected rule {}, decided by {}",
                case.rule.as_deref().unwrap_or(""),
                x.rule.as_deref().unwrap_or("no rule")
            )),
            Ok(_) => {}
        }
    }
    (cases.len(), failures)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{CONFIG, ConfigDir};

    fn routes(extra: &str) -> RouteTable {
        let dir = ConfigDir::new();
        let config = dir.parse(&format!("{CONFIG}{extra}")).unwrap();
        RouteTable::new(config.routes.into_iter().map(|r| r.route).collect())
    }

    #[test]
    fn explains_who_gets_in_and_why() {
        let t = routes(
            "  - name: ops\n    from: https://app.localhost:8443/ops\n    to: http://127.0.0.1:1\n    policy:\n      allow: { groups: { is: admins } }\n      deny: { http_method: DELETE }\n",
        );
        let case = |url: &str, email: Option<&str>, groups: &[&str]| Case {
            url: url.into(),
            email: email.map(str::to_string),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..Default::default()
        };
        let x = explain(
            &t,
            &case("https://app.localhost:8443/ops/x", Some("a@x"), &["admins"]),
        )
        .unwrap();
        assert_eq!(x.result, Expect::Allow);
        assert_eq!(x.rule.as_deref(), Some("routes[3].policy.allow.groups"));
        assert_eq!(x.route.as_deref(), Some("ops"));
        let x = explain(&t, &case("https://app.localhost:8443/ops/x", None, &[])).unwrap();
        assert_eq!(x.result, Expect::SignIn);
        let x = explain(
            &t,
            &case("https://app.localhost:8443/other", Some("b@x"), &[]),
        )
        .unwrap();
        assert_eq!((x.result, x.route.as_deref()), (Expect::Allow, Some("app")));
        let x = explain(
            &t,
            &Case {
                method: Some("delete".into()),
                ..case("https://app.localhost:8443/ops/", Some("a@x"), &["admins"])
            },
        )
        .unwrap();
        assert_eq!(x.result, Expect::Deny);
        assert_eq!(x.rule.as_deref(), Some("routes[3].policy.deny.http_method"));
        let x = explain(&t, &case("https://nowhere.localhost/", None, &[])).unwrap();
        assert_eq!(x.result, Expect::NoRoute);
        assert!(explain(&t, &case("not a url", None, &[])).is_err());
    }

    #[test]
    fn a_table_of_cases_fails_on_any_mismatch() {
        let t = routes("");
        let cases: Vec<Case> = serde_yaml_ng::from_str(
            r#"
- { url: "https://admin.localhost:8443/", email: a@x, groups: [admins], expect: allow, rule: "routes[1].policy.groups" }
- { url: "https://admin.localhost:8443/", email: b@x, expect: deny }
- { url: "https://admin.localhost:8443/", expect: sign_in }
- { url: "https://apps.localhost:8443/admin/x", email: bob@corp.example, expect: allow }
- { url: "https://apps.localhost:8443/admin/x", email: bob@corp.example, email_verified: false, expect: deny }
"#,
        )
        .unwrap();
        let (n, failures) = run_cases(&t, &cases);
        assert_eq!((n, failures.len()), (5, 0), "{failures:?}");
        let wrong: Vec<Case> = serde_yaml_ng::from_str(
            r#"
- { url: "https://admin.localhost:8443/", email: b@x, expect: allow }
- { url: "https://admin.localhost:8443/", email: a@x, groups: [admins], expect: allow, rule: "routes[0].policy" }
"#,
        )
        .unwrap();
        let (_, failures) = run_cases(&t, &wrong);
        assert_eq!(failures.len(), 2, "{failures:?}");
        assert!(
            failures[0].contains("expected Allow, got Deny"),
            "{}",
            failures[0]
        );
    }
}
