//! `envoy/envoy.yaml` is what `portcullis envoy-config` makes of the demo config; it must
//! not go stale, and the real Envoy must accept it.

use std::fs;
use std::path::Path;
use std::process::Command;

use testkit::{portcullis_bin, repo, run, temp_dir, write_secrets};

/// Lays out the demo config in a temp tree with its secrets where its relative paths point.
fn demo_tree() -> std::path::PathBuf {
    let root = temp_dir("envoy-config");
    let config_dir = root.join("examples/demo");
    fs::create_dir_all(&config_dir).unwrap();
    fs::copy(
        repo().join("examples/demo/portcullis.yaml"),
        config_dir.join("portcullis.yaml"),
    )
    .unwrap();
    // The demo config points at ../../.demo/secrets/{cookie_secret,client_secret,signing_key.pem}.
    write_secrets(&root.join(".demo"));
    root
}

fn generate(root: &Path, cert: &str, key: &str) -> String {
    generate_with(root, cert, key, &[])
}

fn generate_with(root: &Path, cert: &str, key: &str, extra: &[&str]) -> String {
    let out = run(Command::new(portcullis_bin())
        .current_dir(root)
        .args(["envoy-config", "-c", "examples/demo/portcullis.yaml"])
        .args(["--listen", "127.0.0.1:8443", "--admin", "127.0.0.1:9901"])
        .args(["--tls-cert", cert, "--tls-key", key])
        .args(extra));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn committed_envoy_config_matches_the_demo_config() {
    let root = demo_tree();
    let generated = generate(&root, ".demo/certs/tls.pem", ".demo/certs/tls-key.pem");
    let committed = fs::read_to_string(repo().join("envoy/envoy.yaml")).unwrap();
    assert!(
        generated == committed,
        "envoy/envoy.yaml is stale: regenerate it with\n  portcullis envoy-config -c examples/demo/portcullis.yaml \
         --tls-cert .demo/certs/tls.pem --tls-key .demo/certs/tls-key.pem > envoy/envoy.yaml"
    );
    fs::remove_dir_all(root).ok();
}

#[test]
#[ignore = "tier stack: needs Envoy (.deps/envoy or PORTCULLIS_ENVOY_BIN); run scripts/test"]
fn envoy_accepts_the_generated_config() {
    validate(&[]);
}

/// Several replicas, by address and by name: balanced, health-checked, retried.
#[test]
#[ignore = "tier stack: needs Envoy (.deps/envoy or PORTCULLIS_ENVOY_BIN); run scripts/test"]
fn envoy_accepts_the_generated_config_for_replicas() {
    validate(&[
        "--replica",
        "127.0.0.1:9100,127.0.0.1:9101",
        "--replica",
        "127.0.0.1:9110,127.0.0.1:9111",
    ]);
    validate(&[
        "--portcullis-host",
        "localhost",
        "--portcullis-host",
        "ip6-localhost",
    ]);
}

fn validate(extra: &[&str]) {
    let root = demo_tree();
    let certs = testkit::test_certs();
    let yaml = generate_with(
        &root,
        certs.cert.to_str().unwrap(),
        certs.key.to_str().unwrap(),
        extra,
    );
    let file = root.join("envoy.yaml");
    fs::write(&file, yaml).unwrap();
    if let Err(text) = testkit::envoy::validate(&file) {
        panic!("envoy --mode validate rejects the generated config:\n{text}");
    }
    fs::remove_dir_all(root).ok();
}
