//! From claims to a [`User`]: the ID token's, merged with UserInfo's when the ID token is
//! thin (OIDC Core 5.4 lets an IdP return email, name and groups only from UserInfo, as
//! LemonLDAP::NG and Okta do by default), groups read wherever the IdP puts them.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use crate::core::User;

/// Claims as a JSON object.
pub type Claims = Map<String, Value>;

/// How claims become a user.
#[derive(Debug, Clone, Copy)]
pub struct ClaimRules<'a> {
    /// The claim that holds groups: a name, or a dotted path into nested objects
    /// (`realm_access.roles`, `resource_access.CLIENT.roles`).
    pub groups_claim: &'a str,
    /// A missing `email_verified` counts as verified (`idp.assume_email_verified`).
    pub assume_email_verified: bool,
    /// Further claims to keep on the user, for policies (`claim/NAME`).
    pub keep: &'a [String],
}

/// The payload of a JWT whose signature was already verified, as a JSON object.
pub fn jwt_payload(token: &str) -> Option<Claims> {
    let payload = token.split('.').nth(1)?;
    match serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// Whether the claims lack something portcullis passes on or decides by: email, name,
/// preferred username or groups. In `idp.userinfo: auto`, such an ID token sends
/// portcullis to UserInfo.
pub fn is_thin(claims: &Claims, rules: &ClaimRules<'_>) -> bool {
    let missing = |k: &str| !claims.get(k).is_some_and(Value::is_string);
    missing("email")
        || missing("name")
        || missing("preferred_username")
        || claim_at(claims, rules.groups_claim).is_none()
}

/// The ID token's claims completed with UserInfo's. The ID token wins on every conflict,
/// and `email` travels with its own `email_verified`: a UserInfo `email_verified: true`
/// never vouches for an email that came from the ID token.
pub fn merge(id_token: &Claims, userinfo: &Claims) -> Claims {
    let mut merged = id_token.clone();
    let email_from_token = id_token.contains_key("email");
    for (k, v) in userinfo {
        if k == "email_verified" && email_from_token {
            continue;
        }
        merged.entry(k.clone()).or_insert_with(|| v.clone());
    }
    merged
}

/// The user the claims describe; `None` without a string `sub`.
///
/// Only a JSON `true` verifies an email: `"true"`, `1` or `"yes"` do not. A missing claim
/// verifies only with `assume_email_verified`, for IdPs that verify every address and omit
/// the claim.
pub fn user_from_claims(claims: &Claims, rules: &ClaimRules<'_>) -> Option<User> {
    let text = |k: &str| claims.get(k).and_then(Value::as_str).map(str::to_string);
    let groups = match claim_at(claims, rules.groups_claim) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|g| g.as_str().map(str::to_string))
            .collect(),
        Some(Value::String(one)) => vec![one.clone()],
        _ => Vec::new(),
    };
    Some(User {
        subject: text("sub")?,
        email: text("email"),
        email_verified: match claims.get("email_verified") {
            Some(v) => v.as_bool() == Some(true),
            None => rules.assume_email_verified,
        },
        name: text("name"),
        preferred_username: text("preferred_username"),
        groups,
        claims: rules
            .keep
            .iter()
            .filter_map(|name| {
                let values: Vec<String> = match claim_at(claims, name)? {
                    Value::String(s) => vec![s.clone()],
                    Value::Array(items) => items
                        .iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect(),
                    Value::Bool(b) => vec![b.to_string()],
                    Value::Number(n) => vec![n.to_string()],
                    _ => return None,
                };
                Some((name.clone(), values))
            })
            .collect(),
    })
}

/// The claim `path` names: the claim of that exact name if there is one (namespaced claims
/// like `https://example.com/groups` contain dots), else the dotted path into objects.
fn claim_at<'a>(claims: &'a Claims, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut value = claims.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn obj(v: Value) -> Claims {
        v.as_object().unwrap().clone()
    }

    const RULES: ClaimRules<'static> = ClaimRules {
        groups_claim: "groups",
        assume_email_verified: false,
        keep: &[],
    };

    #[test]
    fn groups_are_read_as_idps_shape_them() {
        let keycloak = obj(json!({
            "sub": "a",
            "realm_access": {"roles": ["admins", "offline_access"]},
            "resource_access": {"portcullis": {"roles": ["ops"]}, "other": {"roles": ["x"]}},
            "https://example.com/groups": ["auth0-style"],
            "role": "single",
        }));
        let groups = |path: &str| {
            user_from_claims(
                &keycloak,
                &ClaimRules {
                    groups_claim: path,
                    ..RULES
                },
            )
            .unwrap()
            .groups
        };
        assert_eq!(groups("realm_access.roles"), ["admins", "offline_access"]);
        assert_eq!(groups("resource_access.portcullis.roles"), ["ops"]);
        assert_eq!(groups("https://example.com/groups"), ["auth0-style"]);
        assert_eq!(groups("role"), ["single"]);
        for absent in [
            "groups",
            "realm_access",
            "realm_access.roles.x",
            "resource_access.nope.roles",
            "",
            ".",
        ] {
            assert!(groups(absent).is_empty(), "{absent}");
        }
    }

    #[test]
    fn userinfo_completes_a_thin_id_token_and_never_overrides_it() {
        let id = obj(json!({"sub": "u1", "name": "From Token"}));
        let info = obj(
            json!({"sub": "u1", "name": "From UserInfo", "email": "a@corp.example",
            "email_verified": true, "groups": ["admins"], "preferred_username": "a"}),
        );
        assert!(is_thin(&id, &RULES));
        let merged = merge(&id, &info);
        assert!(!is_thin(&merged, &RULES));
        let u = user_from_claims(&merged, &RULES).unwrap();
        assert_eq!(u.name.as_deref(), Some("From Token"));
        assert_eq!(u.verified_email(), Some("a@corp.example"));
        assert_eq!(u.groups, ["admins"]);
    }

    #[test]
    fn claims_policies_test_are_kept_and_no_others() {
        let claims = obj(
            json!({"sub": "u", "department": "eng", "amr": ["pwd", "otp"],
            "org": {"level": 3}, "admin": true, "secret_stuff": "x"}),
        );
        let keep = [
            "department".to_string(),
            "amr".into(),
            "org.level".into(),
            "admin".into(),
            "absent".into(),
        ];
        let u = user_from_claims(
            &claims,
            &ClaimRules {
                keep: &keep,
                ..RULES
            },
        )
        .unwrap();
        assert_eq!(u.claim("department"), ["eng"]);
        assert_eq!(u.claim("amr"), ["pwd", "otp"]);
        assert_eq!(u.claim("org.level"), ["3"]);
        assert_eq!(u.claim("admin"), ["true"]);
        assert!(u.claim("absent").is_empty() && u.claim("secret_stuff").is_empty());
        assert_eq!(u.claims.len(), 4);
    }

    #[test]
    fn attack_userinfo_cannot_verify_the_id_tokens_email() {
        // The ID token says nothing of verification; UserInfo vouches for its own email.
        let id = obj(json!({"sub": "u1", "email": "victim@corp.example"}));
        let info = obj(json!({"sub": "u1", "email": "other@corp.example", "email_verified": true}));
        let u = user_from_claims(&merge(&id, &info), &RULES).unwrap();
        assert_eq!(u.email.as_deref(), Some("victim@corp.example"));
        assert!(!u.email_verified);
        // And a UserInfo email is verified only by UserInfo's own flag, which must be `true`.
        for flag in [json!("true"), json!(1), json!(null)] {
            let info = obj(json!({"sub": "u1", "email": "a@corp.example", "email_verified": flag}));
            let u = user_from_claims(&merge(&obj(json!({"sub": "u1"})), &info), &RULES).unwrap();
            assert_eq!(u.verified_email(), None, "{flag}");
        }
    }
}
