//! Envoy as a child process: its admin interface on port 0 (`--admin-address-path` tells
//! where), ready when `/ready` answers 200. A listener port that something else took is
//! reported as such, so the caller can pick another one and redo what depends on it.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use crate::portcullis::{READY_TIMEOUT, probe_client};
use crate::proc::Proc;
use crate::tier::envoy_bin;

/// A running Envoy.
pub struct Envoy {
    pub proc: Proc,
    pub admin: SocketAddr,
}

/// Why Envoy did not start.
#[derive(Debug)]
pub enum StartError {
    /// A listener's port was taken (by something else, after it was picked).
    PortTaken(String),
    Failed(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PortTaken(m) | Self::Failed(m) => f.write_str(m),
        }
    }
}

/// Starts `envoy -c CONFIG --concurrency N` with hot restart off and waits for `/ready`.
/// The config's admin address should have port 0.
pub async fn start(
    name: &str,
    config: &Path,
    concurrency: u32,
    log_level: &str,
    log: &Path,
) -> Result<Envoy, StartError> {
    let admin_file = log.with_extension("admin-address");
    let _ = std::fs::remove_file(&admin_file);
    let mut cmd = Command::new(envoy_bin());
    cmd.arg("-c")
        .arg(config)
        .args(["--concurrency", &concurrency.to_string()])
        .args(["--log-level", log_level])
        // No shared memory or domain socket to clash with any other Envoy on the host.
        .arg("--disable-hot-restart")
        .arg("--admin-address-path")
        .arg(&admin_file);
    let mut proc = Proc::spawn(name, cmd, log).with_grace(std::time::Duration::from_secs(5));
    let probe = probe_client();
    let result = proc
        .wait_for("ready admin", READY_TIMEOUT, || async {
            let admin: SocketAddr = std::fs::read_to_string(&admin_file)
                .map_err(|e| e.to_string())?
                .trim()
                .parse()
                .map_err(|e| format!("admin address: {e}"))?;
            match probe.get(format!("http://{admin}/ready")).send().await {
                Ok(r) if r.status() == reqwest::StatusCode::OK => Ok(admin),
                Ok(r) => Err(format!("/ready: {}", r.status())),
                Err(e) => Err(e.to_string()),
            }
        })
        .await;
    match result {
        Ok(admin) => Ok(Envoy { proc, admin }),
        Err(e) if proc.log_text().contains("Address already in use") => {
            Err(StartError::PortTaken(e))
        }
        Err(e) => Err(StartError::Failed(e)),
    }
}

impl Envoy {
    /// The port a listener (by name) is bound to: for listeners configured with port 0.
    pub async fn listener_port(&self, listener: &str) -> u16 {
        let url = format!("http://{}/listeners?format=json", self.admin);
        let v: serde_json::Value = probe_client()
            .get(&url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        v["listener_statuses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["name"] == listener)
            .and_then(|l| l["local_address"]["socket_address"]["port_value"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or_else(|| panic!("Envoy has no listener {listener:?}: {v}"))
    }
}

/// `envoy --mode validate -c FILE`: Ok when Envoy accepts the config, else its output.
pub fn validate(config: &Path) -> Result<(), String> {
    let out = crate::run(
        Command::new(envoy_bin())
            .args(["--mode", "validate", "-c"])
            .arg(config),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && text.contains("OK") {
        Ok(())
    } else {
        Err(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The redo of a start rests on this: a listener port that something else holds is
    /// reported as taken, not as any other failure.
    #[tokio::test]
    #[ignore = "tier stack: needs Envoy (.deps/envoy or PORTCULLIS_ENVOY_BIN); run scripts/test"]
    async fn a_taken_listener_port_is_reported_as_taken() {
        let dir = crate::temp_dir("envoy-port-taken");
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let config = dir.join("envoy.yaml");
        let bootstrap = |port: u16| {
            format!(
                "admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}}}
static_resources:
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: l
          cluster: c
  clusters:
  - name: c
    type: STATIC
    load_assignment: {{cluster_name: c, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 9}}}}}}}}]}}]}}
"
            )
        };
        fs_write(&config, &bootstrap(port));
        match start("envoy", &config, 1, "warn", &dir.join("envoy.log")).await {
            Err(StartError::PortTaken(_)) => {}
            Err(StartError::Failed(e)) => panic!("a taken port reported as another failure: {e}"),
            Ok(_) => panic!("Envoy started on a port that is taken"),
        }
        // Control: on a port of its own it starts, and its admin answers.
        fs_write(&config, &bootstrap(0));
        let envoy = start("envoy", &config, 1, "warn", &dir.join("envoy-2.log"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(envoy.listener_port("l").await, 0);
        drop(held);
        drop(envoy);
        std::fs::remove_dir_all(dir).ok();
    }

    fn fs_write(path: &Path, text: &str) {
        std::fs::write(path, text).unwrap();
    }
}
