//! Route policies: who may reach a route. Plain data and a pure function, no I/O.

use std::collections::HashSet;

use super::user::User;

/// Who may use a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    /// Anyone, signed in or not.
    Public,
    /// Any user the identity provider signed in.
    AnyAuthenticatedUser,
    /// Users matching any of the lists.
    Allow(AllowList),
}

/// Allow lists; a user matching any entry is allowed. Emails and domains compare
/// case-insensitively and only against an email the IdP marked verified.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    emails: HashSet<String>,
    domains: HashSet<String>,
    groups: HashSet<String>,
}

/// The outcome of a policy for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// Allowed, and by which rule (for the audit line and `policy explain`).
    Allow(Reason<'a>),
    /// No (valid) session: the user must sign in first.
    SignInRequired,
    /// Signed in, but this user is not allowed here.
    Forbidden,
}

/// The rule of a policy that allowed a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason<'a> {
    Public,
    AnyAuthenticatedUser,
    Group(&'a str),
    Email(&'a str),
    Domain(&'a str),
}

impl std::fmt::Display for Reason<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Public => f.write_str("public"),
            Reason::AnyAuthenticatedUser => f.write_str("any_authenticated_user"),
            Reason::Group(g) => write!(f, "groups: {g}"),
            Reason::Email(e) => write!(f, "emails: {e}"),
            Reason::Domain(d) => write!(f, "domains: {d}"),
        }
    }
}

impl Policy {
    pub fn allow_list(emails: Vec<String>, domains: Vec<String>, groups: Vec<String>) -> Self {
        Policy::Allow(AllowList {
            emails: emails
                .iter()
                .map(|e| e.trim().to_ascii_lowercase())
                .collect(),
            domains: domains
                .iter()
                .map(|d| d.trim().trim_start_matches('@').to_ascii_lowercase())
                .collect(),
            groups: groups.into_iter().collect(),
        })
    }

    pub fn evaluate<'a>(&'a self, user: Option<&User>) -> Verdict<'a> {
        match (self, user) {
            (Policy::Public, _) => Verdict::Allow(Reason::Public),
            (_, None) => Verdict::SignInRequired,
            (Policy::AnyAuthenticatedUser, Some(_)) => Verdict::Allow(Reason::AnyAuthenticatedUser),
            (Policy::Allow(list), Some(user)) => match list.permits(user) {
                Some(reason) => Verdict::Allow(reason),
                None => Verdict::Forbidden,
            },
        }
    }
}

impl AllowList {
    /// The entry that lets `user` in, if any: groups first, then the verified email, then
    /// its domain.
    fn permits(&self, user: &User) -> Option<Reason<'_>> {
        if let Some(g) = user.groups.iter().find_map(|g| self.groups.get(g)) {
            return Some(Reason::Group(g));
        }
        let email = user.verified_email()?.to_ascii_lowercase();
        if let Some(e) = self.emails.get(&email) {
            return Some(Reason::Email(e));
        }
        let (_, domain) = email.rsplit_once('@')?;
        self.domains.get(domain).map(|d| Reason::Domain(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(email: &str, verified: Option<bool>, groups: &[&str]) -> User {
        User {
            subject: "s".into(),
            email: Some(email.into()),
            email_verified: verified == Some(true),
            name: None,
            preferred_username: None,
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    #[test]
    fn public_and_any() {
        let u = user("a@x.com", None, &[]);
        assert_eq!(
            Policy::Public.evaluate(None),
            Verdict::Allow(Reason::Public)
        );
        assert_eq!(
            Policy::AnyAuthenticatedUser.evaluate(None),
            Verdict::SignInRequired
        );
        assert_eq!(
            Policy::AnyAuthenticatedUser.evaluate(Some(&u)),
            Verdict::Allow(Reason::AnyAuthenticatedUser)
        );
    }

    #[test]
    fn allow_lists() {
        let p = Policy::allow_list(
            vec!["Alice@Example.com".into()],
            vec!["corp.example".into()],
            vec!["admins".into()],
        );
        assert_eq!(p.evaluate(None), Verdict::SignInRequired);
        assert_eq!(
            p.evaluate(Some(&user("alice@example.COM", Some(true), &[]))),
            Verdict::Allow(Reason::Email("alice@example.com"))
        );
        assert_eq!(
            p.evaluate(Some(&user("x@corp.example", Some(true), &[]))),
            Verdict::Allow(Reason::Domain("corp.example"))
        );
        // An email the IdP did not say is verified proves nothing either.
        assert_eq!(
            p.evaluate(Some(&user("x@corp.example", None, &[]))),
            Verdict::Forbidden
        );
        assert_eq!(
            p.evaluate(Some(&user("x@evilcorp.example", None, &[]))),
            Verdict::Forbidden
        );
        assert_eq!(
            p.evaluate(Some(&user("x@corp.example.evil", None, &[]))),
            Verdict::Forbidden
        );
        assert_eq!(
            p.evaluate(Some(&user("bob@example.com", None, &["admins"]))),
            Verdict::Allow(Reason::Group("admins"))
        );
        assert_eq!(
            p.evaluate(Some(&user("bob@example.com", None, &["Admins"]))),
            Verdict::Forbidden
        );
        // An email the IdP says is unverified proves nothing.
        assert_eq!(
            p.evaluate(Some(&user("alice@example.com", Some(false), &[]))),
            Verdict::Forbidden
        );
    }
}
