//! The real parts each test tier needs, checked up front: a test run without them panics
//! with what to install or run, not with an unwrap deep in the harness.
//!
//! | tier | parts | tests |
//! | --- | --- | --- |
//! | `stack` | Envoy (`.deps/envoy` or `PORTCULLIS_ENVOY_BIN`), node and the dev IdP's modules (`examples/demo/node_modules`), openssl | e2e_foundation, e2e_grafana, e2e_operations, attacks, envoy `--mode validate` |
//! | `redis` | Debian's `redis-server` and `redis-cli` (`redis::require_redis`) | redis_store.rs; with the `stack` parts, e2e_sessions.rs |
//! | `compose` | Debian's `docker-compose` (or Docker's compose plugin), openssl | compose.rs |
//! | `proxies` | Debian's nginx and caddy, and the `stack` parts | e2e_proxies.rs |
//! | `cockpit` | root, cockpit-ws/-bridge/-system, the account alice, and the `stack` parts | e2e_cockpit.rs, the Cockpit cases of e2e_proxies.rs |
//! | `browser` | Debian's chromium, certutil (libnss3-tools) and npm playwright-core, and the `cockpit` parts | e2e_browser.rs |
//! | `idps` | LemonLDAP::NG and nginx (Debian), and the `stack` parts | e2e_idps.rs |
//!
//! `cargo test` runs none of them (they are `#[ignore = "tier …"]`); `scripts/test` installs
//! every part and runs `cargo test -- --include-ignored`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{is_root, repo};

const RUN_SCRIPTS_TEST: &str = "run scripts/test (as root on Debian), which installs it";

/// The Envoy binary: `$PORTCULLIS_ENVOY_BIN`, else the project-local install.
pub fn envoy_bin() -> PathBuf {
    let candidate = match std::env::var_os("PORTCULLIS_ENVOY_BIN") {
        Some(p) => PathBuf::from(p),
        None => repo().join(".deps/envoy/envoy/_bin/envoy"),
    };
    assert!(
        candidate.is_file(),
        "tier stack: Envoy not found at {}: {RUN_SCRIPTS_TEST} into .deps/ \
         (or set PORTCULLIS_ENVOY_BIN)",
        candidate.display()
    );
    candidate
}

/// node on PATH and the dev IdP's npm packages (oidc-provider, jose, ws, playwright-core).
pub fn require_node_modules() {
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "tier stack: node is not on PATH: {RUN_SCRIPTS_TEST} (apt-get install nodejs npm)"
    );
    let modules = repo().join("examples/demo/node_modules");
    assert!(
        modules.join("oidc-provider").is_dir() && modules.join("jose").is_dir(),
        "tier stack: {} is missing or incomplete: {RUN_SCRIPTS_TEST} (or `npm ci --prefix examples/demo`)",
        modules.display()
    );
}

/// Envoy, node and the IdP's modules: what every [`crate::Stack`] starts.
pub fn require_stack() {
    envoy_bin();
    require_node_modules();
}

/// `openssl` on PATH (the README's key steps, and the compose demo's init.sh use it).
pub fn require_openssl() {
    let ok = Command::new("openssl").arg("version").output();
    assert!(
        ok.is_ok_and(|o| o.status.success()),
        "openssl is not on PATH: {RUN_SCRIPTS_TEST} (apt-get install openssl)"
    );
}

/// Debian's nginx and caddy, and the `stack` parts.
pub fn require_proxies() {
    let missing: Vec<&str> = [crate::proxies::NGINX, crate::proxies::CADDY]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    assert!(
        missing.is_empty(),
        "tier proxies: Debian's nginx and caddy are needed (missing: {missing:?}): {RUN_SCRIPTS_TEST} (apt-get install nginx caddy)"
    );
    require_stack();
}

/// Root, cockpit-ws and friends, and the local account alice.
pub fn require_cockpit() {
    let missing: Vec<&str> = [
        crate::cockpit::COCKPIT_WS,
        "/usr/lib/cockpit/cockpit-session",
        crate::cockpit::PAM_FILE,
    ]
    .into_iter()
    .filter(|p| !Path::new(p).exists())
    .collect();
    assert!(
        is_root() && missing.is_empty(),
        "tier cockpit: needs root and cockpit-ws, cockpit-bridge and cockpit-system \
         (missing: {missing:?}; root: {}): {RUN_SCRIPTS_TEST}",
        is_root()
    );
    let alice = Command::new("id").args(["-u", "alice"]).output();
    assert!(
        alice.is_ok_and(|o| o.status.success()),
        "tier cockpit: needs the local account alice: `useradd -m alice`, or {RUN_SCRIPTS_TEST}"
    );
    require_stack();
}

/// LemonLDAP::NG's portal and nginx (Debian's packages; `scripts/lib/lemonldap.sh`).
pub fn require_lemonldap() {
    let missing: Vec<&str> = ["/usr/sbin/llng-fastcgi-server", "/usr/sbin/nginx"]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    assert!(
        missing.is_empty(),
        "tier idps: LemonLDAP::NG is not installed (missing {missing:?}): {RUN_SCRIPTS_TEST} \
         (scripts/lib/lemonldap.sh: ensure_lemonldap)"
    );
}

/// sudo and visudo, for Cockpit's administrative access.
pub fn require_sudo() {
    let missing: Vec<&str> = ["/usr/bin/sudo", "/usr/sbin/visudo"]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    assert!(
        missing.is_empty(),
        "tier cockpit: Cockpit's administrative access needs sudo (missing: {missing:?}): {RUN_SCRIPTS_TEST} (apt-get install sudo)"
    );
}

/// Debian's chromium (driven by npm playwright-core from the IdP's modules), and certutil,
/// which puts the test CA into the NSS database Chromium trusts.
pub fn require_chromium() {
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "tier browser: Debian's chromium is missing: {RUN_SCRIPTS_TEST} (apt-get install chromium)"
    );
    let certutil = Command::new("certutil").arg("-H").output();
    assert!(
        certutil.is_ok(),
        "tier browser: certutil is not on PATH: {RUN_SCRIPTS_TEST} (apt-get install libnss3-tools)"
    );
    assert!(
        repo()
            .join("examples/demo/node_modules/playwright-core")
            .is_dir(),
        "tier browser: npm playwright-core is missing: {RUN_SCRIPTS_TEST} (npm ci --prefix examples/demo)"
    );
}
