//! Cockpit's rules in the domain: which local account a signed-in user becomes, and which
//! request is Cockpit's login (the only one that carries credentials).

use std::collections::HashMap;

use super::user::User;

/// How a Cockpit route maps a signed-in user to a local account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CockpitSettings {
    /// Path Cockpit is served under (`UrlRoot`), without a trailing slash; empty for `/`.
    pub url_root: String,
    pub account: AccountMapping,
    /// Members of these IdP groups get Cockpit's administrative access without a password
    /// (see `portcullis pam-admin`); empty: nobody does.
    pub admin_groups: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountMapping {
    /// The IdP's `sub`, which OpenID Connect makes unique and stable (the default).
    Subject,
    /// The `preferred_username` claim: an explicit opt-in, since OpenID Connect says it is
    /// neither unique nor stable (a user who can rename themselves picks their account).
    PreferredUsername,
    /// The part of the (verified) email before `@`.
    EmailLocalPart,
    /// An explicit table, email (lowercase) → account. Users not in it have no account.
    Table(HashMap<String, String>),
}

impl CockpitSettings {
    /// The local account for `user`, if the mapping gives one that is a plausible Unix name.
    /// Never `root`, whatever the mapping says (pam-verify also refuses system accounts).
    pub fn account_for(&self, user: &User) -> Option<String> {
        let account = match &self.account {
            AccountMapping::Subject => user.subject.clone(),
            AccountMapping::PreferredUsername => user.preferred_username.clone()?,
            AccountMapping::EmailLocalPart => user.verified_email()?.split('@').next()?.to_string(),
            AccountMapping::Table(table) => table
                .get(&user.verified_email()?.to_ascii_lowercase())?
                .clone(),
        };
        (is_unix_account_name(&account) && account != "root").then_some(account)
    }

    /// Whether `user` may turn on administrative access: a member of an admin group.
    pub fn is_admin(&self, user: &User) -> bool {
        self.admin_groups
            .iter()
            .any(|g| user.groups.iter().any(|ug| ug == g))
    }

    /// Whether this request is Cockpit's login request, the only one that gets credentials.
    pub fn is_login(&self, method: &str, path: &str) -> bool {
        let path = path.split('?').next().unwrap_or(path);
        method == "GET" && path.strip_prefix(self.url_root.as_str()) == Some("/cockpit/login")
    }
}

/// Conservative Unix account names: what `useradd` accepts by default, nothing that could
/// confuse PAM, a shell or a log line.
pub fn is_unix_account_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_lowercase()
                || b == b'_'
                || (i > 0 && (b.is_ascii_digit() || b == b'-' || b == b'.'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_mapping() {
        let user = |email: &str, verified: Option<bool>, username: Option<&str>| User {
            subject: "s".into(),
            email: Some(email.into()),
            email_verified: verified == Some(true),
            name: None,
            preferred_username: username.map(str::to_string),
            groups: vec![],
            claims: Vec::new(),
        };
        let by = |account| CockpitSettings {
            url_root: String::new(),
            account,
            admin_groups: Vec::new(),
        };
        assert_eq!(
            by(AccountMapping::PreferredUsername)
                .account_for(&user("a@x", None, Some("alice")))
                .as_deref(),
            Some("alice")
        );
        assert_eq!(
            by(AccountMapping::PreferredUsername).account_for(&user("a@x", None, None)),
            None
        );
        assert_eq!(
            by(AccountMapping::PreferredUsername).account_for(&user("a@x", None, Some("root;rm"))),
            None
        );
        assert_eq!(
            by(AccountMapping::EmailLocalPart)
                .account_for(&user("alice@x", Some(true), None))
                .as_deref(),
            Some("alice")
        );
        assert_eq!(
            by(AccountMapping::EmailLocalPart).account_for(&user("alice@x", Some(false), None)),
            None
        );
        let table =
            AccountMapping::Table([("alice@example.com".to_string(), "alice".to_string())].into());
        assert_eq!(
            by(table.clone())
                .account_for(&user("Alice@Example.com", Some(true), None))
                .as_deref(),
            Some("alice")
        );
        // Only a verified email maps (finding 5 of the review).
        assert_eq!(
            by(table.clone()).account_for(&user("alice@example.com", None, None)),
            None
        );
        // The default maps the IdP's stable subject, and never to root.
        let subject = |sub: &str| User {
            subject: sub.into(),
            ..user("x@y", Some(true), Some("alice"))
        };
        assert_eq!(
            by(AccountMapping::Subject)
                .account_for(&subject("carol"))
                .as_deref(),
            Some("carol")
        );
        assert_eq!(
            by(AccountMapping::Subject).account_for(&subject("root")),
            None
        );
        assert_eq!(
            by(AccountMapping::PreferredUsername).account_for(&user(
                "x@y",
                Some(true),
                Some("root")
            )),
            None
        );
        assert_eq!(
            by(AccountMapping::Subject).account_for(&subject("8c1f0a2e-uuid")),
            None,
            "a sub that is not an account name maps to nothing"
        );
        assert_eq!(
            by(table).account_for(&user("bob@example.com", None, Some("bob"))),
            None
        );
    }

    #[test]
    fn only_the_login_request_is_the_login() {
        let root = CockpitSettings {
            url_root: String::new(),
            account: AccountMapping::PreferredUsername,
            admin_groups: Vec::new(),
        };
        let sub = CockpitSettings {
            url_root: "/admin".into(),
            account: AccountMapping::PreferredUsername,
            admin_groups: Vec::new(),
        };
        assert!(root.is_login("GET", "/cockpit/login"));
        assert!(root.is_login("GET", "/cockpit/login?x=1"));
        assert!(!root.is_login("POST", "/cockpit/login"));
        assert!(!root.is_login("GET", "/cockpit/socket"));
        assert!(!root.is_login("GET", "/cockpit/login/x"));
        assert!(!root.is_login("GET", "/admin/cockpit/login"));
        assert!(sub.is_login("GET", "/admin/cockpit/login"));
        assert!(!sub.is_login("GET", "/cockpit/login"));
    }

    #[test]
    fn account_names() {
        for ok in ["alice", "a", "_svc", "bob-2", "x.y"] {
            assert!(is_unix_account_name(ok), "{ok}");
        }
        for bad in [
            "",
            "Alice",
            "1abc",
            "-x",
            "a b",
            "a:b",
            "root\n",
            &"a".repeat(33),
        ] {
            assert!(!is_unix_account_name(bad), "{bad}");
        }
    }
}
