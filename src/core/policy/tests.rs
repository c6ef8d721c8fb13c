use std::net::IpAddr;

use proptest::prelude::*;

use super::*;

fn user(email: &str, verified: Option<bool>, groups: &[&str]) -> User {
    User {
        subject: "s".into(),
        email: Some(email.into()),
        email_verified: verified == Some(true),
        name: None,
        preferred_username: None,
        groups: groups.iter().map(|g| g.to_string()).collect(),
        claims: vec![("dept".into(), vec!["eng".into(), "ops".into()])],
    }
}

fn get() -> Facts<'static> {
    Facts {
        method: "GET",
        path: "/",
        source_ip: None,
    }
}

fn is_allow(v: Verdict<'_>) -> bool {
    matches!(v, Verdict::Allow(_))
}

#[test]
fn public_and_any() {
    let u = user("a@x.com", None, &[]);
    assert!(is_allow(Policy::public().evaluate(None, &get())));
    assert_eq!(
        Policy::any_authenticated_user().evaluate(None, &get()),
        Verdict::SignInRequired
    );
    assert!(is_allow(
        Policy::any_authenticated_user().evaluate(Some(&u), &get())
    ));
}

#[test]
fn allow_lists() {
    let p = Policy::allow_list(
        vec!["Alice@Example.com".into()],
        vec!["corp.example".into()],
        vec!["admins".into()],
    );
    fn eval<'a>(p: &'a Policy, u: &'a User) -> Verdict<'a> {
        p.evaluate(Some(u), &get())
    }
    let eval = |u: &User| format!("{:?}", eval(&p, u));
    let show = |v: Verdict<'_>| format!("{v:?}");
    assert_eq!(p.evaluate(None, &get()), Verdict::SignInRequired);
    assert_eq!(
        eval(&user("alice@example.COM", Some(true), &[])),
        show(Verdict::Allow(Reason {
            rule: "emails",
            value: Some("alice@example.COM")
        }))
    );
    assert_eq!(
        eval(&user("x@Corp.Example", Some(true), &[])),
        show(Verdict::Allow(Reason {
            rule: "domains",
            value: Some("Corp.Example")
        }))
    );
    // An email the IdP did not say is verified proves nothing.
    for u in [
        user("x@corp.example", None, &[]),
        user("x@evilcorp.example", None, &[]),
        user("x@corp.example.evil", Some(true), &[]),
        user("alice@example.com", Some(false), &[]),
        user("bob@example.com", None, &["Admins"]),
    ] {
        assert_eq!(eval(&u), show(Verdict::Forbidden(None)), "{u:?}");
    }
    assert_eq!(
        eval(&user("bob@example.com", None, &["admins"])),
        show(Verdict::Allow(Reason {
            rule: "groups",
            value: Some("admins")
        }))
    );
}

fn t(path: &str, c: Criterion) -> Rule {
    Rule::test(path, c)
}

#[test]
fn deny_wins_and_no_match_refuses() {
    let p = Policy::new(
        Some(t("allow", Criterion::AuthenticatedUser(true))),
        Some(t(
            "deny",
            Criterion::HttpMethod(Matcher::In(["DELETE".to_string()].into())),
        )),
    );
    let u = user("a@x", Some(true), &[]);
    let delete = Facts {
        method: "delete",
        ..get()
    };
    assert_eq!(
        p.evaluate(Some(&u), &delete),
        Verdict::Forbidden(Some(Reason {
            rule: "deny",
            value: None
        }))
    );
    assert!(is_allow(p.evaluate(Some(&u), &get())));
    // A deny about the request refuses the anonymous too, with a 403, not a sign-in.
    assert_eq!(
        p.evaluate(None, &delete),
        Verdict::Forbidden(Some(Reason {
            rule: "deny",
            value: None
        }))
    );
    let nothing = Policy::new(None, None);
    assert_eq!(nothing.evaluate(Some(&u), &get()), Verdict::Forbidden(None));
}

#[test]
fn attack_not_of_a_user_test_never_lets_the_anonymous_in() {
    let banned = Rule::Not(Box::new(t(
        "not",
        Criterion::Groups(Matcher::Is("banned".into())),
    )));
    let p = Policy::new(Some(banned), None);
    assert_eq!(p.evaluate(None, &get()), Verdict::SignInRequired);
    assert!(is_allow(
        p.evaluate(Some(&user("a@x", Some(true), &["staff"])), &get())
    ));
    assert_eq!(
        p.evaluate(Some(&user("a@x", Some(true), &["banned"])), &get()),
        Verdict::Forbidden(None)
    );
    // A public path with a user-based deny: the anonymous get the path, the banned do not.
    let p = Policy::new(
        Some(t("public", Criterion::Everyone)),
        Some(t("deny", Criterion::Groups(Matcher::Is("banned".into())))),
    );
    assert!(is_allow(p.evaluate(None, &get())));
    assert!(!is_allow(
        p.evaluate(Some(&user("a@x", Some(true), &["banned"])), &get())
    ));
}

#[test]
fn request_criteria_paths_addresses_and_claims() {
    let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
    let office: IpNet = "10.1.0.0/16".parse().unwrap();
    let p = Policy::new(
        Some(Rule::And(vec![
            t(
                "path",
                Criterion::HttpPath(PathMatcher::StartsWith("/ops".into())),
            ),
            t("net", Criterion::SourceIp(vec![office])),
            t(
                "claim",
                Criterion::Claim {
                    name: "dept".into(),
                    matcher: Matcher::Is("ops".into()),
                },
            ),
        ])),
        None,
    );
    let u = user("a@x", Some(true), &[]);
    let at = |path, source_ip| Facts {
        method: "GET",
        path,
        source_ip,
    };
    assert!(is_allow(
        p.evaluate(Some(&u), &at("/ops/x", ip("10.1.2.3")))
    ));
    assert!(!is_allow(
        p.evaluate(Some(&u), &at("/ops/x", ip("10.2.0.1")))
    ));
    assert!(!is_allow(p.evaluate(Some(&u), &at("/ops/x", None))));
    assert!(!is_allow(
        p.evaluate(Some(&u), &at("/other", ip("10.1.2.3")))
    ));
    let mut other_dept = u.clone();
    other_dept.claims = vec![("dept".into(), vec!["eng".into()])];
    assert!(!is_allow(
        p.evaluate(Some(&other_dept), &at("/ops/x", ip("10.1.2.3")))
    ));
    assert!(p.uses_path());
    assert_eq!(p.claims(), ["dept"]);
}

// ---------------------------------------------------------------------------------------
// Properties of the evaluator.

fn matcher() -> impl Strategy<Value = Matcher> {
    let v = prop::sample::select(vec!["a", "b", "ab", "ba"]).prop_map(str::to_string);
    prop_oneof![
        v.clone().prop_map(Matcher::Is),
        v.clone().prop_map(Matcher::StartsWith),
        v.clone().prop_map(Matcher::EndsWith),
        v.clone().prop_map(Matcher::Contains),
        prop::collection::hash_set(v, 1..3).prop_map(Matcher::In),
    ]
}

fn criterion() -> impl Strategy<Value = Criterion> {
    prop_oneof![
        Just(Criterion::Everyone),
        any::<bool>().prop_map(Criterion::AuthenticatedUser),
        matcher().prop_map(Criterion::User),
        matcher().prop_map(Criterion::Groups),
        matcher().prop_map(|m| Criterion::Claim {
            name: "dept".into(),
            matcher: m
        }),
        matcher().prop_map(|m| Criterion::HttpMethod(m.folded(true))),
    ]
}

fn rule() -> impl Strategy<Value = Rule> {
    let leaf = criterion().prop_map(|c| t("r", c));
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 1..4).prop_map(Rule::And),
            prop::collection::vec(inner.clone(), 1..4).prop_map(Rule::Or),
            inner.prop_map(|r| Rule::Not(Box::new(r))),
        ]
    })
}

fn subject() -> impl Strategy<Value = Option<User>> {
    let v = prop::sample::select(vec!["a", "b", "ab", "ba", "c"]).prop_map(str::to_string);
    prop::option::of(
        (
            v.clone(),
            prop::collection::vec(v.clone(), 0..3),
            prop::collection::vec(v, 0..3),
        )
            .prop_map(|(sub, groups, dept)| User {
                subject: sub,
                email: None,
                email_verified: false,
                name: None,
                preferred_username: None,
                groups,
                claims: vec![("dept".into(), dept)],
            }),
    )
}

fn method() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["GET", "get", "A", "b", "AB"])
}

proptest! {
    #[test]
    fn deny_always_wins(allow in rule(), deny in rule(), u in subject(), m in method()) {
        let facts = Facts { method: m, ..get() };
        let deny_true = matches!(deny.eval(u.as_ref(), &facts), Truth::True(_));
        let policy = Policy::new(Some(allow), Some(deny));
        let v = policy.evaluate(u.as_ref(), &facts);
        if deny_true {
            prop_assert!(matches!(v, Verdict::Forbidden(Some(_))), "{v:?}");
        }
    }

    #[test]
    fn not_inverts(r in rule(), u in subject(), m in method()) {
        let facts = Facts { method: m, ..get() };
        let inner = r.eval(u.as_ref(), &facts);
        let not = Rule::Not(Box::new(r.clone()));
        let negated = not.eval(u.as_ref(), &facts);
        match inner {
            Truth::True(_) => prop_assert_eq!(negated, Truth::False),
            Truth::False => prop_assert!(matches!(negated, Truth::True(_))),
            Truth::Unknown => prop_assert_eq!(negated, Truth::Unknown),
        }
    }

    #[test]
    fn with_a_user_nothing_is_unknown(r in rule(), u in subject(), m in method()) {
        let facts = Facts { method: m, ..get() };
        if u.is_some() {
            prop_assert!(r.eval(u.as_ref(), &facts) != Truth::Unknown);
        }
    }

    #[test]
    fn only_an_allow_lets_in(allow in prop::option::of(rule()), deny in prop::option::of(rule()), u in subject(), m in method()) {
        let facts = Facts { method: m, ..get() };
        let allows = allow.as_ref().is_some_and(|a| matches!(a.eval(u.as_ref(), &facts), Truth::True(_)));
        let policy = Policy::new(allow, deny);
        let v = policy.evaluate(u.as_ref(), &facts);
        if matches!(v, Verdict::Allow(_)) {
            prop_assert!(allows);
        }
    }
}
