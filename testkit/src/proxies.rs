//! nginx and Caddy as the proxy in front of portcullis instead of Envoy, run from the
//! examples themselves (`examples/nginx/`, `examples/caddy/`): the files are copied with
//! only their addresses, ports and certificate paths changed (each one must be there, so an
//! example that drifts fails the test), and the proxy runs as one process stopped by pid.
//!
//! Like Envoy's, the proxy's listener port is picked before it starts (the portcullis
//! routes name it); the proxy binding it is the check, and a port taken meanwhile is
//! reported as [`StartError::PortTaken`] for the stack to start again on another.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::envoy::StartError;
use crate::portcullis::READY_TIMEOUT;
use crate::proc::Proc;
use crate::repo;

pub const NGINX: &str = "/usr/sbin/nginx";
pub const CADDY: &str = "/usr/bin/caddy";

/// Which proxy fronts a [`crate::Stack`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Front {
    /// Envoy with `portcullis envoy-config` (ext_authz over gRPC).
    #[default]
    Envoy,
    /// nginx 1.22 with `auth_request` (examples/nginx/).
    Nginx,
    /// Caddy 2.6 with `forward_auth` (examples/caddy/).
    Caddy,
}

impl Front {
    pub fn name(self) -> &'static str {
        match self {
            Front::Envoy => "envoy",
            Front::Nginx => "nginx",
            Front::Caddy => "caddy",
        }
    }
}

/// Where the example's fixed addresses point in one stack.
#[derive(Debug, Clone)]
pub struct Upstreams {
    /// The proxy's HTTPS port (every host).
    pub listen: u16,
    /// portcullis's HTTP service (the example's 127.0.0.1:9101).
    pub http: SocketAddr,
    /// portcullis's forward-auth listener (127.0.0.1:9102).
    pub forward_auth: SocketAddr,
    /// The echo app (127.0.0.1:9200).
    pub echo: SocketAddr,
    /// cockpit-ws (127.0.0.1:9090), or any address when there is none.
    pub cockpit: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA of `cert`, to check that the proxy is the one answering.
    pub ca: PathBuf,
}

/// `text` with each `(from, to)` replaced; panics naming `file` when a `from` is not in it.
fn substitute(file: &str, text: &str, pairs: &[(String, String)]) -> String {
    let mut out = text.to_string();
    for (from, to) in pairs {
        assert!(
            out.contains(from.as_str()),
            "{file} no longer contains {from:?}: update testkit/src/proxies.rs with the example"
        );
        out = out.replace(from.as_str(), to);
    }
    out
}

/// The example's addresses and certificate paths, and what they become.
fn common_pairs(u: &Upstreams) -> Vec<(String, String)> {
    vec![
        ("127.0.0.1:9101".into(), u.http.to_string()),
        ("127.0.0.1:9102".into(), u.forward_auth.to_string()),
        ("127.0.0.1:9200".into(), u.echo.to_string()),
        ("127.0.0.1:9090".into(), u.cockpit.to_string()),
        (
            "/etc/portcullis/tls/cert.pem".into(),
            u.cert.display().to_string(),
        ),
        (
            "/etc/portcullis/tls/key.pem".into(),
            u.key.display().to_string(),
        ),
    ]
}

fn example(path: &str) -> String {
    let file = repo().join(path);
    fs::read_to_string(&file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()))
}

/// Writes `examples/nginx/` for `u` into `dir/nginx/`, with a main config that includes it
/// and keeps every file nginx writes in `dir`; returns the main config.
pub fn nginx_config(dir: &Path, u: &Upstreams) -> PathBuf {
    let out = dir.join("nginx");
    fs::create_dir_all(out.join("tmp")).unwrap();
    let mut pairs = common_pairs(u);
    pairs.push((
        "listen 8443 ssl http2;".into(),
        format!("listen 127.0.0.1:{} ssl http2;", u.listen),
    ));
    for snippet in ["portcullis-server.conf", "portcullis-location.conf"] {
        pairs.push((
            format!("/etc/nginx/portcullis/{snippet}"),
            out.join(snippet).display().to_string(),
        ));
        let text = example(&format!("examples/nginx/{snippet}"));
        // The snippets name only portcullis's listeners; the site file names the rest.
        let own: Vec<(String, String)> = common_pairs(u)
            .into_iter()
            .filter(|(from, _)| text.contains(from.as_str()))
            .collect();
        fs::write(out.join(snippet), substitute(snippet, &text, &own)).unwrap();
    }
    let site = substitute(
        "examples/nginx/portcullis.conf",
        &example("examples/nginx/portcullis.conf"),
        &pairs,
    );
    fs::write(out.join("portcullis.conf"), site).unwrap();
    let tmp = out.join("tmp");
    let main = format!(
        "# Written by testkit: one process in the foreground, every file under {dir}.
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 512; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {dir}/portcullis.conf;
}}
",
        dir = out.display(),
        tmp = tmp.display(),
    );
    let path = out.join("nginx.conf");
    fs::write(&path, main).unwrap();
    path
}

/// Writes `examples/caddy/Caddyfile` for `u` into `dir/caddy/Caddyfile`, with global
/// options that keep Caddy to loopback and to the certificates given (no admin endpoint, no
/// ACME, no port 80).
pub fn caddy_config(dir: &Path, u: &Upstreams) -> PathBuf {
    let out = dir.join("caddy");
    fs::create_dir_all(&out).unwrap();
    let mut pairs = common_pairs(u);
    for host in ["auth", "app", "admin", "cockpit"] {
        pairs.push((
            format!("{host}.localhost:8443 {{"),
            format!("{host}.localhost:{} {{", u.listen),
        ));
    }
    let site = substitute(
        "examples/caddy/Caddyfile",
        &example("examples/caddy/Caddyfile"),
        &pairs,
    );
    let text = format!(
        "# Written by testkit from examples/caddy/Caddyfile.\n{{\n\tadmin off\n\tauto_https off\n\tdefault_bind 127.0.0.1\n}}\n\n{site}"
    );
    let path = out.join("Caddyfile");
    fs::write(&path, text).unwrap();
    path
}

/// Starts the proxy `front` (not Envoy) on `u.listen` and waits until it answers there:
/// `https://auth.localhost:PORT/healthz` is portcullis's `ok` through it.
pub async fn start(
    front: Front,
    dir: &Path,
    u: &Upstreams,
    log: &Path,
) -> Result<Proc, StartError> {
    let mut cmd = match front {
        Front::Envoy => panic!("Envoy is started by testkit::envoy"),
        Front::Nginx => {
            let config = nginx_config(dir, u);
            let mut cmd = Command::new(NGINX);
            cmd.arg("-c")
                .arg(&config)
                .arg("-p")
                .arg(config.parent().unwrap())
                .args(["-e", "stderr"]);
            cmd
        }
        Front::Caddy => {
            let config = caddy_config(dir, u);
            let home = dir.join("caddy/home");
            fs::create_dir_all(&home).unwrap();
            let mut cmd = Command::new(CADDY);
            cmd.args(["run", "--adapter", "caddyfile", "--config"])
                .arg(&config)
                // Caddy keeps its state under the user's directories: here, the stack's.
                .env("HOME", &home)
                .env("XDG_DATA_HOME", home.join("data"))
                .env("XDG_CONFIG_HOME", home.join("config"));
            cmd
        }
    };
    cmd.current_dir(dir);
    let mut proc = Proc::spawn(front.name(), cmd, log).with_grace(Duration::from_secs(5));
    let ca = fs::read(&u.ca).unwrap_or_else(|e| panic!("read {}: {e}", u.ca.display()));
    let client = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("the test CA"))
        .resolve(
            "auth.localhost",
            SocketAddr::from(([127, 0, 0, 1], u.listen)),
        )
        .timeout(Duration::from_secs(2))
        .build()
        .expect("the probe client builds");
    let health = format!("https://auth.localhost:{}/healthz", u.listen);
    let result = proc
        .wait_for(
            "portcullis's /healthz through it",
            READY_TIMEOUT,
            || async {
                match client.get(&health).send().await {
                    Ok(r) if r.status() == reqwest::StatusCode::OK => Ok(()),
                    Ok(r) => Err(format!("status {}", r.status())),
                    Err(e) => Err(e.to_string()),
                }
            },
        )
        .await;
    match result {
        Ok(()) => Ok(proc),
        Err(e)
            if proc
                .log_text()
                .to_ascii_lowercase()
                .contains("address already in use") =>
        {
            Err(StartError::PortTaken(e))
        }
        Err(e) => Err(StartError::Failed(e)),
    }
}
