use super::*;
use crate::identity::generate_pkcs8_pem;

/// A directory with valid secret files, removed on drop.
pub(crate) struct Fixture {
    pub dir: PathBuf,
}

impl Fixture {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "portcullis-config-test-{}-{}",
            std::process::id(),
            crate::crypto::random_token(6)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("key.pem"), generate_pkcs8_pem()).unwrap();
        std::fs::write(dir.join("cookie"), "0123456789abcdef0123456789abcdef\n").unwrap();
        std::fs::write(dir.join("client"), "s3cret\n").unwrap();
        Self { dir }
    }

    pub fn parse(&self, yaml: &str) -> Result<Config, ConfigErrors> {
        parse(yaml, &self.dir)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(crate) const VALID: &str = r#"
authenticate_url: https://auth.localhost:8443
idp:
  issuer: http://127.0.0.1:9000
  client_id: portcullis
  client_secret_file: client
  scopes: [openid, email, profile, groups]
cookie:
  secret_file: cookie
  lifetime: 1h
signing_key_file: key.pem
routes:
  - name: app
    from: https://app.localhost:8443
    to: http://127.0.0.1:9200
    policy: { any_authenticated_user: true }
  - name: admin
    from: https://admin.localhost:8443
    to: http://127.0.0.1:9200
    policy: { groups: [admins] }
  - name: sub
    from: https://apps.localhost:8443/admin/
    to: http://127.0.0.1:9300
    policy: { emails: [alice@example.com], domains: [corp.example] }
"#;

fn paths(result: Result<Config, ConfigErrors>) -> Vec<String> {
    result
        .expect_err("config must be refused")
        .0
        .into_iter()
        .map(|e| e.path)
        .collect()
}

#[test]
fn valid_config_loads_with_defaults() {
    let f = Fixture::new();
    let c = f.parse(VALID).unwrap();
    assert_eq!(c.routes.len(), 3);
    assert_eq!(c.routes[0].name, "sub", "longest prefix sorts first");
    assert_eq!(c.routes[0].path_prefix, "/admin");
    assert_eq!(c.routes[1].authority, "app.localhost:8443");
    assert_eq!(c.identity_header, "X-Portcullis-Jwt-Assertion");
    assert_eq!(c.cookie.name, "_portcullis");
    assert_eq!(c.cookie.lifetime, Duration::from_secs(3600));
    assert_eq!(c.idp.client_secret.expose(), "s3cret");
    assert_eq!(c.server.grpc_address.port(), 9100);
    assert!(
        !format!("{c:?}").contains("s3cret"),
        "secrets must not appear in Debug"
    );
}

#[test]
fn every_problem_is_reported_with_its_path() {
    let f = Fixture::new();
    let broken = VALID
        .replace(
            "  client_id: portcullis\n",
            "  client_id: portcullis\n  bogus: 1\n",
        )
        .replace("  issuer: http://127.0.0.1:9000\n", "")
        .replace("from: https://app.localhost:8443", "from: not a url")
        .replace("signing_key_file: key.pem", "signing_key_file: missing.pem")
        .replace("    policy: { groups: [admins] }\n", "");
    let p = paths(f.parse(&broken));
    for want in [
        "idp.bogus",
        "idp.issuer",
        "routes[0].from",
        "signing_key_file",
        "routes[1].policy",
    ] {
        assert!(p.iter().any(|x| x == want), "{want} missing from {p:?}");
    }
}

#[test]
fn bad_values() {
    let f = Fixture::new();
    let cases = [
        (
            VALID.replace("lifetime: 1h", "lifetime: forever"),
            "cookie.lifetime",
        ),
        (
            VALID.replace("secret_file: cookie", "secret_file: client"),
            "cookie.secret_file",
        ),
        (
            VALID.replace(
                "{ any_authenticated_user: true }",
                "{ public: true, groups: [x] }",
            ),
            "routes[0].policy",
        ),
        (
            VALID.replace("{ any_authenticated_user: true }", "{}"),
            "routes[0].policy",
        ),
        (
            VALID.replace("https://admin.localhost:8443", "https://app.localhost:8443"),
            "routes[1].from",
        ),
        (VALID.replace("name: admin", "name: app"), "routes[1].name"),
        (
            VALID.replace("https://app.localhost:8443", "https://auth.localhost:8443"),
            "routes[0].from",
        ),
        (
            VALID.replace("https://app.localhost:8443", "https://u@app.localhost:8443"),
            "routes[0].from",
        ),
        (
            VALID.replace("to: http://127.0.0.1:9300", "to: ftp://x"),
            "routes[2].to",
        ),
        (
            VALID.replace(
                "authenticate_url: https://auth.localhost:8443",
                "authenticate_url: https://auth.localhost:8443/x",
            ),
            "authenticate_url",
        ),
        (
            format!("{VALID}identity_header: Cookie\n"),
            "identity_header",
        ),
        (
            VALID.replace("[openid, email, profile, groups]", "[email]"),
            "idp.scopes",
        ),
        (
            VALID.replace("domains: [corp.example]", "domains: [a@corp.example]"),
            "routes[2].policy.domains[0]",
        ),
    ];
    for (yaml, want) in cases {
        let p = paths(f.parse(&yaml));
        assert!(p.iter().any(|x| x == want), "{want} missing from {p:?}");
    }
}

#[test]
fn structural_errors_do_not_panic() {
    let f = Fixture::new();
    for text in [
        "",
        "[]",
        "routes: 5",
        ": :",
        "idp: [1, 2]",
        "\u{0}",
        "a: &a [*a]",
    ] {
        let _ = f.parse(text).expect_err("must be refused");
    }
}

#[test]
fn durations() {
    assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
    assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
    assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172800)));
    for bad in ["", "0s", "5x", "h", "1h5", "99999999999999999999d"] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
}

#[test]
fn security_relevant_values_are_refused_or_defaulted_safely() {
    let f = Fixture::new();
    // A prefix that upstreams would read differently would make every request ambiguous.
    for prefix in ["/admin;x/", "/admin./", "/%61dmin/"] {
        let yaml = VALID.replace(
            "https://apps.localhost:8443/admin/",
            &format!("https://apps.localhost:8443{prefix}"),
        );
        assert!(
            paths(f.parse(&yaml)).contains(&"routes[2].from".to_string()),
            "{prefix}"
        );
    }
    // root is never a Cockpit account, not even by an explicit table.
    let root = VALID.replace(
        "    policy: { groups: [admins] }\n",
        "    policy: { groups: [admins] }\n    cockpit: { accounts: { alice@example.com: root } }\n",
    );
    assert!(
        paths(f.parse(&root)).contains(&"routes[1].cockpit.accounts.alice@example.com".to_string())
    );
    // The Cockpit mapping defaults to the IdP's stable subject; preferred_username is opt-in.
    let default = VALID.replace(
        "    policy: { groups: [admins] }\n",
        "    policy: { groups: [admins] }\n    cockpit: {}\n",
    );
    let c = f.parse(&default).unwrap();
    let cockpit = c.routes.iter().find_map(|r| r.cockpit.as_ref()).unwrap();
    assert_eq!(cockpit.account, crate::cockpit::AccountMapping::Subject);
    // A missing email_verified is unverified unless the admin says otherwise.
    assert!(!f.parse(VALID).unwrap().idp.assume_email_verified);
    let assume = VALID.replace(
        "  client_id: portcullis\n",
        "  client_id: portcullis\n  assume_email_verified: true\n",
    );
    assert!(f.parse(&assume).unwrap().idp.assume_email_verified);
    // Prefixed routes get their own audience; whole-host routes keep the bare host.
    let c = f.parse(VALID).unwrap();
    assert_eq!(c.routes[0].audience(), "apps.localhost:8443/admin");
    assert_eq!(c.routes[1].audience(), "app.localhost:8443");
}

#[test]
fn upstream_tls_settings_are_checked() {
    let f = Fixture::new();
    let with = |tls: &str, to: &str| {
        VALID.replacen(
            "    to: http://127.0.0.1:9200\n    policy: { any_authenticated_user: true }\n",
            &format!(
                "    to: {to}\n    policy: {{ any_authenticated_user: true }}\n    tls: {tls}\n"
            ),
            1,
        )
    };
    let https = "https://10.0.0.5:8443";
    for (tls, to, path) in [
        (
            "{ insecure_skip_verify: true }",
            "http://127.0.0.1:9200",
            "routes[0].tls",
        ),
        ("{ ca_file: missing.pem }", https, "routes[0].tls.ca_file"),
        ("{ ca_file: client }", https, "routes[0].tls.ca_file"),
        (
            "{ ca_file: x, insecure_skip_verify: true }",
            https,
            "routes[0].tls",
        ),
    ] {
        let p = paths(f.parse(&with(tls, to)));
        assert!(p.iter().any(|x| x == path), "{tls} {to}: {p:?}");
    }
    // Verified by default; skipping is the explicit opt-in.
    let c = f
        .parse(&with("{ insecure_skip_verify: true }", https))
        .unwrap();
    let route = c.routes.iter().find(|r| r.name == "app").unwrap();
    assert!(route.tls.insecure_skip_verify);
    let c = f.parse(VALID).unwrap();
    assert!(
        c.routes
            .iter()
            .all(|r| r.tls == crate::config::UpstreamTls::default())
    );
}

#[test]
fn prefixes_that_differ_only_in_letter_case_are_one_route() {
    // Found with the config_parse fuzz target (fuzz/regressions/config_parse): paths match
    // without regard to case, so of `/Admin` and `/admin` the route listed first served
    // both, and the other's policy never applied (here a public route listed first would
    // have opened the protected one).
    let f = Fixture::new();
    let yaml = format!(
        "{VALID}  - name: open
    from: https://apps.localhost:8443/ADMIN
    to: http://127.0.0.1:9300
    policy: {{ public: true }}
"
    );
    let p = paths(f.parse(&yaml));
    assert!(p.iter().any(|x| x == "routes[3].from"), "{p:?}");
}
