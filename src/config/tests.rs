use super::*;
use crate::config::{ClientAuthMethod, UserInfoMode};
pub(crate) use crate::testing::{CONFIG as VALID, ConfigDir as Fixture};

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
    assert_eq!(
        c.idp.client_secret.as_ref().map(|s| s.expose()),
        Some("s3cret")
    );
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
    assert_eq!(
        cockpit.account,
        crate::core::cockpit::AccountMapping::Subject
    );
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
fn idp_settings_for_the_idps_people_run() {
    let f = Fixture::new();
    let with = |lines: &str| {
        VALID.replace(
            "  client_id: portcullis\n",
            &format!("  client_id: portcullis\n{lines}"),
        )
    };
    let c = f.parse(VALID).unwrap().idp;
    assert_eq!(c.userinfo, UserInfoMode::Auto);
    assert_eq!(c.token_endpoint_auth, None);
    assert_eq!(c.id_token_algs, None);
    assert_eq!(c.probe_interval, Duration::from_secs(10));
    let c = f.parse(&with("  probe_interval: 1m\n")).unwrap().idp;
    assert_eq!(c.probe_interval, Duration::from_secs(60));

    let c = f
        .parse(&with("  userinfo: never\n  token_endpoint_auth: client_secret_post\n  groups_claim: realm_access.roles\n  id_token_algs: [RS256, HS512]\n"))
        .unwrap()
        .idp;
    assert_eq!(c.userinfo, UserInfoMode::Never);
    assert_eq!(
        c.token_endpoint_auth,
        Some(ClientAuthMethod::ClientSecretPost)
    );
    assert_eq!(c.groups_claim, "realm_access.roles");
    assert_eq!(c.id_token_algs, Some(vec!["RS256".into(), "HS512".into()]));

    // private_key_jwt: a key instead of a secret.
    std::fs::write(
        f.dir.join("client.pem"),
        crate::identity::generate_pkcs8_pem(),
    )
    .unwrap();
    let keyed = VALID.replace(
        "  client_secret_file: client\n",
        "  client_key_file: client.pem\n  token_endpoint_auth: private_key_jwt\n",
    );
    let c = f.parse(&keyed).unwrap().idp;
    assert!(c.client_secret.is_none() && c.client_key.is_some());

    for (yaml, path) in [
        (with("  userinfo: sometimes\n"), "idp.userinfo"),
        (with("  probe_interval: 0s\n"), "idp.probe_interval"),
        (with("  probe_interval: 2h\n"), "idp.probe_interval"),
        (with("  probe_interval: soon\n"), "idp.probe_interval"),
        (
            with("  token_endpoint_auth: client_secret_jwt\n"),
            "idp.token_endpoint_auth",
        ),
        (with("  id_token_algs: [none]\n"), "idp.id_token_algs[0]"),
        (
            with("  id_token_algs: [RS256, NONE]\n"),
            "idp.id_token_algs[1]",
        ),
        (with("  id_token_algs: [XS256]\n"), "idp.id_token_algs[0]"),
        (with("  id_token_algs: []\n"), "idp.id_token_algs"),
        (with("  groups_claim: \"\"\n"), "idp.groups_claim"),
        (
            with("  token_endpoint_auth: private_key_jwt\n"),
            "idp.client_key_file",
        ),
        (
            keyed.replace(
                "  token_endpoint_auth: private_key_jwt\n",
                "  token_endpoint_auth: private_key_jwt\n  id_token_algs: [HS256]\n",
            ),
            "idp.id_token_algs[0]",
        ),
        (with("  client_key_file: nope.pem\n"), "idp.client_key_file"),
        (
            VALID.replace("  client_secret_file: client\n", ""),
            "idp.client_secret_file",
        ),
    ] {
        assert!(
            paths(f.parse(&yaml)).contains(&path.to_string()),
            "{path} in:\n{yaml}"
        );
    }
}

#[test]
fn the_session_store_is_memory_by_default_or_redis_as_configured() {
    let f = Fixture::new();
    assert!(matches!(
        f.parse(VALID).unwrap().session_store,
        StoreConfig::Memory
    ));
    let memory = format!("{VALID}session_store: {{ memory: {{}} }}\n");
    assert!(matches!(
        f.parse(&memory).unwrap().session_store,
        StoreConfig::Memory
    ));
    std::fs::write(f.dir.join("redis-password"), "r3dis-pass\n").unwrap();
    let redis = format!(
        "{VALID}session_store:\n  redis:\n    url: redis-cluster://10.0.0.1:7000?node=10.0.0.2:7000\n    password_file: redis-password\n"
    );
    let c = f.parse(&redis).unwrap();
    let StoreConfig::Redis(r) = &c.session_store else {
        panic!("redis")
    };
    assert_eq!(r.key_prefix, "portcullis:");
    assert_eq!(r.password.as_ref().map(|p| p.expose()), Some("r3dis-pass"));
    assert!(!r.tls);
    assert!(!format!("{c:?}").contains("r3dis-pass"), "redacted");
    let sentinel = format!(
        "{VALID}session_store:\n  redis: {{ url: \"rediss-sentinel://10.0.0.1:26379/0?sentinelServiceName=main\", tls: {{}} }}\n"
    );
    let c = f.parse(&sentinel).unwrap();
    assert!(matches!(&c.session_store, StoreConfig::Redis(r) if r.tls));
}

#[test]
fn every_session_store_problem_is_reported_with_its_path() {
    let f = Fixture::new();
    let store = |yaml: &str| format!("{VALID}session_store:\n{yaml}");
    for (yaml, want) in [
        (
            "  memory: {}\n  redis: { url: redis://h:1 }\n",
            "session_store",
        ),
        ("  {}\n", "session_store"),
        (
            "  redis: { url: \"redis://:pw@h:6379\" }\n",
            "session_store.redis.url",
        ),
        (
            "  redis: { url: \"http://h:6379\" }\n",
            "session_store.redis.url",
        ),
        (
            "  redis: { password_file: nope }\n",
            "session_store.redis.url",
        ),
        (
            "  redis: { url: redis://h:1, password_file: nope }\n",
            "session_store.redis.password_file",
        ),
        (
            "  redis: { url: redis://h:1, tls: { ca_file: client } }\n",
            "session_store.redis.tls",
        ),
        (
            "  redis: { url: rediss://h:1, tls: { ca_file: client } }\n",
            "session_store.redis.tls.ca_file",
        ),
        (
            "  redis: { url: redis://h:1, key_prefix: \"a b\" }\n",
            "session_store.redis.key_prefix",
        ),
        (
            "  redis: { url: redis://h:1, bogus: 1 }\n",
            "session_store.redis.bogus",
        ),
    ] {
        let p = paths(f.parse(&store(yaml)));
        assert!(
            p.iter().any(|x| x == want),
            "{yaml}: {want} missing from {p:?}"
        );
    }
}

#[test]
fn type_errors_and_validation_errors_come_together_each_at_its_line() {
    let f = Fixture::new();
    let text = VALID
        .replace(
            "  scopes: [openid, email, profile, groups]\n",
            "  scopes: openid\n",
        )
        .replace("  lifetime: 1h\n", "  lifetime: [1h]\n")
        .replace(
            "    policy: { groups: [admins] }\n",
            "    policy: { groups: [admins], bogus: 1 }\n",
        )
        .replace("https://apps.localhost:8443/admin/", "not a url");
    let errors = f.parse(&text).unwrap_err().0;
    let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let at = |path: &str| {
        errors
            .iter()
            .find(|e| e.path == path)
            .unwrap_or_else(|| panic!("{path} in {errors:?}"))
            .at
            .map(|(line, _)| line)
    };
    assert_eq!(
        at("idp.scopes"),
        Some(line_of("scopes: openid")),
        "a type error"
    );
    assert_eq!(
        at("cookie.lifetime"),
        Some(line_of("lifetime: [1h]")),
        "another"
    );
    assert_eq!(
        at("routes[1].policy.bogus"),
        Some(line_of("bogus: 1")),
        "unknown key"
    );
    assert_eq!(
        at("routes[2].from"),
        Some(line_of("not a url")),
        "validation"
    );
    // Sorted in file order.
    let lines: Vec<usize> = errors.iter().filter_map(|e| e.at.map(|(l, _)| l)).collect();
    assert!(lines.windows(2).all(|w| w[0] <= w[1]), "{lines:?}");
    let shown = errors
        .iter()
        .find(|e| e.path == "routes[2].from")
        .unwrap()
        .to_string();
    assert!(
        shown.starts_with(&format!("{}:", line_of("not a url"))),
        "{shown}"
    );
}

#[test]
fn log_format() {
    let f = Fixture::new();
    assert_eq!(f.parse(VALID).unwrap().log.format, LogFormat::Text);
    let json = format!("{VALID}log: {{ format: json }}\n");
    assert_eq!(f.parse(&json).unwrap().log.format, LogFormat::Json);
    let bad = format!("{VALID}log: {{ format: xml }}\n");
    assert!(paths(f.parse(&bad)).contains(&"log.format".to_string()));
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
