//! Route policies: who may reach a route. Plain data and a pure function, no I/O.

use std::collections::HashSet;

use crate::identity::User;

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
pub enum Verdict {
    Allow,
    /// No (valid) session: the user must sign in first.
    SignInRequired,
    /// Signed in, but this user is not allowed here.
    Forbidden,
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

    pub fn evaluate(&self, user: Option<&User>) -> Verdict {
        match (self, user) {
            (Policy::Public, _) => Verdict::Allow,
            (_, None) => Verdict::SignInRequired,
            (Policy::AnyAuthenticatedUser, Some(_)) => Verdict::Allow,
            (Policy::Allow(list), Some(user)) => {
                if list.permits(user) {
                    Verdict::Allow
                } else {
                    Verdict::Forbidden
                }
            }
        }
    }
}

impl AllowList {
    fn permits(&self, user: &User) -> bool {
        if user.groups.iter().any(|g| self.groups.contains(g)) {
            return true;
        }
        let Some(email) = user.verified_email() else {
            return false;
        };
        let email = email.to_ascii_lowercase();
        if self.emails.contains(&email) {
            return true;
        }
        match email.rsplit_once('@') {
            Some((_, domain)) => self.domains.contains(domain),
            None => false,
        }
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
        assert_eq!(Policy::Public.evaluate(None), Verdict::Allow);
        assert_eq!(
            Policy::AnyAuthenticatedUser.evaluate(None),
            Verdict::SignInRequired
        );
        assert_eq!(
            Policy::AnyAuthenticatedUser.evaluate(Some(&u)),
            Verdict::Allow
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
            Verdict::Allow
        );
        assert_eq!(
            p.evaluate(Some(&user("x@corp.example", Some(true), &[]))),
            Verdict::Allow
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
            Verdict::Allow
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
