//! The config file. Whatever it holds, `parse` (with the fixture's config directory, so that
//! the secret files it names exist) answers with a config or a non-empty list of errors,
//! and a config it accepts builds the app and the Envoy bootstrap without a panic.
//!
//! Invariants of an accepted config: every route's authority is its `from` as browsers
//! send it (lowercase), its prefix has no trailing slash and is already canonical, and the
//! route is reachable: a request to its own prefix selects it (a route that another one
//! shadows would silently serve the wrong policy).

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use portcullis::app::App;
use portcullis::core::RouteTable;
use portcullis::core::authority_of;
use portcullis::core::route::canonical_path;
use portcullis::envoy::{DEFAULT_UPSTREAM_CA_FILE, EnvoyOptions, bootstrap_yaml};
use portcullis_fuzz::config_dir;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let config = match portcullis::config::parse(text, config_dir()) {
        Ok(config) => config,
        Err(errors) => {
            assert!(!errors.0.is_empty(), "refused without a reason");
            return;
        }
    };
    for r in &config.routes {
        assert_eq!(r.authority, authority_of(&r.from));
        assert_eq!(r.authority, r.authority.to_ascii_lowercase());
        assert!(!r.path_prefix.ends_with('/'), "{:?}", r.path_prefix);
        assert_eq!(
            canonical_path(&r.path_prefix),
            r.path_prefix.to_ascii_lowercase()
        );
    }
    let table = RouteTable::new(config.routes.iter().map(|r| r.route.clone()).collect());
    for r in &config.routes {
        let path = format!("{}/", r.path_prefix);
        assert_eq!(
            table
                .select(Some(&r.name), r.from.scheme(), &r.authority, &path)
                .map(|x| x.name.as_str()),
            Ok(r.name.as_str()),
            "route {:?} ({}) is unreachable",
            r.name,
            r.from
        );
    }
    let opts = EnvoyOptions {
        listen: "127.0.0.1:8443".parse().unwrap(),
        admin: "127.0.0.1:9901".parse().unwrap(),
        tls_cert: Path::new("cert.pem"),
        tls_key: Path::new("key.pem"),
        replicas: Vec::new(),
        upstream_ca_file: Path::new(DEFAULT_UPSTREAM_CA_FILE),
        trusted_hops: 0,
    };
    let yaml = bootstrap_yaml(&config, &opts);
    assert!(yaml.contains("ext_authz"));
    let _ = App::new(config);
});
