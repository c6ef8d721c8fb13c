//! `testkit demo`: the whole stack on the demo's fixed ports, until SIGINT or SIGTERM.
//! `scripts/demo` installs what it needs and builds, then runs this.
//!
//! ```text
//!   Envoy       https://*.localhost:8443  (admin http://127.0.0.1:9901)
//!   IdP         http://127.0.0.1:9000     (examples/demo/idp.mjs, npm oidc-provider)
//!   portcullis  gRPC 127.0.0.1:9100, HTTP 127.0.0.1:9101 (examples/demo/portcullis.yaml)
//!   echo app    http://127.0.0.1:9200     (in this process)
//!   Cockpit     http://127.0.0.1:9190     (cockpit-ws, as https://cockpit.localhost:8443/)
//! ```
//!
//! State goes to `.demo/` (certs/, secrets/, logs/, envoy.yaml, pids); the CA, the
//! certificate and the secrets are kept between runs. With `--cockpit` (root on Debian, the
//! packages and the account alice installed by scripts/demo) it also installs a root-owned
//! copy of portcullis and the demo's JWKS in /usr/local/lib/portcullis/, adds its block to
//! /etc/pam.d/cockpit and removes it again when it stops.

use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::signal::unix::{SignalKind, signal};

use crate::cockpit::{self, CockpitWs};
use crate::echo::Echo;
use crate::portcullis::{self, Secrets, portcullis_bin};
use crate::proc::{Proc, run};
use crate::{certs, envoy, idp, repo};

/// How long each process may take to stop on SIGTERM before it gets SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
const LISTEN: &str = "127.0.0.1:8443";
const ADMIN: &str = "127.0.0.1:9901";
const IDP_PORT: u16 = 9000;
const ECHO: &str = "127.0.0.1:9200";
/// Not Cockpit's usual 9090: installing cockpit-ws on a systemd host starts cockpit.socket
/// there, and the demo must not clash with (or be mistaken for) the system's Cockpit.
const COCKPIT: &str = "127.0.0.1:9190";
const COCKPIT_URL: &str = "https://cockpit.localhost:8443";
const AUTH_URL: &str = "https://auth.localhost:8443";
/// What PAM runs as root must not be replaceable by any user, so the demo never points PAM
/// at the build tree or at .demo/ (whoever owns the checkout could swap the binary, or add
/// a key to the JWKS and log in as anyone): it installs root-owned copies here instead.
const PAM_HELPER_DIR: &str = "/usr/local/lib/portcullis";

/// The demo's options (see `testkit demo --help`).
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// State directory (certificates, secrets, logs); a directory other than `.demo` gets
    /// its own copy of the config, pointed at its secrets.
    #[arg(long, env = "PORTCULLIS_DEMO_DIR")]
    pub dir: Option<PathBuf>,
    /// Also run Cockpit with single sign-on for alice (root on Debian, with cockpit-ws,
    /// cockpit-bridge, cockpit-system and the account alice installed).
    #[arg(long)]
    pub cockpit: bool,
    /// Why Cockpit is not run (shown in the banner).
    #[arg(long, conflicts_with = "cockpit")]
    pub no_cockpit: Option<String>,
    /// Run this many portcullis replicas behind Envoy, sharing sessions in a Redis the demo
    /// starts (Debian's redis-server) on 127.0.0.1:9379; 1 keeps sessions in memory.
    #[arg(long, env = "PORTCULLIS_DEMO_REPLICAS", default_value_t = 1)]
    pub replicas: u16,
}

/// The demo's Redis, with several replicas.
const REDIS_PORT: u16 = 9379;

/// Replica `i`'s (0-based) gRPC and HTTP ports: 9100/9101, 9110/9111, …
fn replica_ports(i: u16) -> (u16, u16) {
    (9100 + 10 * i, 9101 + 10 * i)
}

/// Everything the demo started, stopped in reverse order on drop.
#[derive(Default)]
struct Running {
    procs: Vec<Proc>,
    echo: Option<Echo>,
    pam: Option<cockpit::PamBlock>,
    pids: PathBuf,
}

impl Running {
    fn add(&mut self, proc: Proc) {
        let proc = proc.with_grace(STOP_GRACE);
        if let Some(pid) = proc.pid() {
            let line = format!("{} {pid}\n", proc.name);
            let _ = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.pids)
                .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
        }
        self.procs.push(proc);
    }

    /// The first process that has exited, with its status.
    fn exited(&mut self) -> Option<(String, String, String)> {
        self.procs.iter_mut().find_map(|p| {
            p.exited()
                .map(|s| (p.name.clone(), s.to_string(), p.log_tail()))
        })
    }

    fn stop(&mut self) {
        if !self.procs.is_empty() {
            let names: Vec<&str> = self.procs.iter().map(|p| p.name.as_str()).collect();
            eprintln!("==> stopping {}", names.join(" "));
        }
        // Last started, first stopped; SIGTERM to each, SIGKILL after the grace period.
        while let Some(mut p) = self.procs.pop() {
            p.stop();
        }
        self.echo.take();
        // The PAM lines trust the demo's signing key: they must not outlive the demo.
        self.pam.take();
        let _ = fs::remove_file(&self.pids);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs the demo; returns the process's exit code.
pub async fn run_demo(args: DemoArgs) -> Result<i32> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut running = Running::default();
    // SIGINT/SIGTERM once the stack is up is the normal way to stop it: exit 0. During
    // start-up it is an interruption: exit 130. Either way everything started is stopped.
    let started = tokio::select! {
        r = start(&args, &mut running) => r,
        _ = interrupt.recv() => { eprintln!("==> interrupted"); running.stop(); return Ok(130) }
        _ = terminate.recv() => { eprintln!("==> interrupted"); running.stop(); return Ok(130) }
    };
    if let Err(e) = started {
        running.stop();
        return Err(e);
    }
    let mut watch = tokio::time::interval(Duration::from_secs(1));
    let code = loop {
        tokio::select! {
            _ = interrupt.recv() => break 0,
            _ = terminate.recv() => break 0,
            _ = watch.tick() => {
                if let Some((name, status, log)) = running.exited() {
                    eprintln!("error: {name} exited unexpectedly ({status})\n--- last lines of its log ---\n{log}\n---");
                    break 1;
                }
            }
        }
    };
    if code == 0 {
        eprintln!("==> stopping the demo");
    }
    running.stop();
    if code == 0 {
        eprintln!("==> stopped");
    }
    Ok(code)
}

async fn start(args: &DemoArgs, running: &mut Running) -> Result<()> {
    let root = repo();
    let dir = match &args.dir {
        Some(d) => {
            fs::create_dir_all(d)?;
            d.canonicalize()?
        }
        None => root.join(".demo"),
    };
    let logs = dir.join("logs");
    fs::create_dir_all(&logs)?;
    running.pids = dir.join("pids");
    fs::write(&running.pids, "")?;

    // Every fixed port, checked before anything starts; the listeners the demo binds
    // itself (echo, Cockpit) are kept and handed on.
    let mut busy = Vec::new();
    for (addr, what) in [
        (LISTEN, "Envoy HTTPS listener"),
        (ADMIN, "Envoy admin"),
        ("127.0.0.1:9000", "dev OIDC provider"),
    ] {
        if TcpListener::bind(addr).is_err() {
            busy.push(format!("error: port {addr} ({what}) is already in use"));
        }
    }
    let replicas = args.replicas.max(1);
    for i in 0..replicas {
        let (grpc, http) = replica_ports(i);
        for (port, what) in [(grpc, "gRPC"), (http, "HTTP")] {
            if TcpListener::bind(("127.0.0.1", port)).is_err() {
                busy.push(format!(
                    "error: port 127.0.0.1:{port} (portcullis {} {what}) is already in use",
                    i + 1
                ));
            }
        }
    }
    if replicas > 1 && TcpListener::bind(("127.0.0.1", REDIS_PORT)).is_err() {
        busy.push(format!(
            "error: port 127.0.0.1:{REDIS_PORT} (Redis) is already in use"
        ));
    }
    let cockpit_listener = match args.cockpit {
        true => match TcpListener::bind(COCKPIT) {
            Ok(l) => Some(l),
            Err(_) => {
                busy.push(format!("error: port {COCKPIT} (Cockpit) is already in use"));
                None
            }
        },
        false => None,
    };
    let echo = match Echo::start(ECHO.parse()?, None) {
        Ok(e) => Some(e),
        Err(_) => {
            busy.push(format!("error: port {ECHO} (echo app) is already in use"));
            None
        }
    };
    if !busy.is_empty() {
        bail!(
            "{}\n       Is another demo running? Stop it (or whatever holds the port) and try again.",
            busy.join("\n")
        );
    }
    running.echo = echo;

    let certs = certs::ensure(&dir.join("certs"))?;
    let secrets = Secrets::in_dir(&dir);
    portcullis::ensure_secrets(&secrets, false);

    // The committed config points at .demo/secrets; another state directory gets its own,
    // and so do replicas (each on its ports, all on the demo's Redis).
    let source = root.join("examples/demo/portcullis.yaml");
    let config = if dir == root.join(".demo") && replicas == 1 {
        source.clone()
    } else {
        let mut text =
            fs::read_to_string(&source)?.replace("../../.demo/", &format!("{}/", dir.display()));
        if replicas > 1 {
            text.push_str(&format!(
                "session_store: {{ redis: {{ url: \"redis://127.0.0.1:{REDIS_PORT}\" }} }}\n"
            ));
            // Traffic moves off a replica before it stops (rolling restarts).
            text = text.replace(
                "  http_address: 127.0.0.1:9101",
                "  drain_delay: 3s\n  http_address: 127.0.0.1:9101",
            );
        }
        let copy = dir.join("portcullis.yaml");
        fs::write(&copy, text)?;
        copy
    };
    let mut configs = vec![config.clone()];
    for i in 1..replicas {
        let (grpc, http) = replica_ports(i);
        let text = fs::read_to_string(&config)?
            .replace("127.0.0.1:9100", &format!("127.0.0.1:{grpc}"))
            .replace("127.0.0.1:9101", &format!("127.0.0.1:{http}"));
        let copy = dir.join(format!("portcullis-{}.yaml", i + 1));
        fs::write(&copy, text)?;
        configs.push(copy);
    }
    let replica_args: Vec<String> = if replicas > 1 {
        (0..replicas)
            .flat_map(|i| {
                let (grpc, http) = replica_ports(i);
                [
                    "--replica".to_string(),
                    format!("127.0.0.1:{grpc},127.0.0.1:{http}"),
                ]
            })
            .collect()
    } else {
        Vec::new()
    };
    let out = run(Command::new(portcullis_bin())
        .arg("check-config")
        .arg("-c")
        .arg(&config));
    if !out.status.success() {
        bail!(
            "the demo config {} is invalid:\n{}",
            config.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let envoy_yaml = dir.join("envoy.yaml");
    let out = run(Command::new(portcullis_bin())
        .arg("envoy-config")
        .arg("-c")
        .arg(&config)
        .args(["--listen", LISTEN, "--admin", ADMIN])
        .arg("--tls-cert")
        .arg(&certs.cert)
        .arg("--tls-key")
        .arg(&certs.key)
        .args(&replica_args));
    if !out.status.success() {
        bail!(
            "portcullis envoy-config: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    fs::write(&envoy_yaml, &out.stdout)?;
    envoy::validate(&envoy_yaml)
        .map_err(|log| anyhow::anyhow!("Envoy rejects {}:\n{log}", envoy_yaml.display()))?;

    if let Some(listener) = cockpit_listener {
        setup_cockpit(&dir, &config, running)?;
        let conf_dir = Path::new(PAM_HELPER_DIR).join("demo-cockpit");
        let ws = CockpitWs::start(
            &conf_dir,
            &logs.join("cockpit-ws.log"),
            "cockpit-ws",
            listener,
            COCKPIT_URL,
            "",
        );
        eprintln!(
            "==> started cockpit-ws (log: {})",
            logs.join("cockpit-ws.log").display()
        );
        running.add(ws.proc);
    }

    let idp = idp::start(
        "idp",
        &idp::IdpOptions {
            port: IDP_PORT,
            client_secret_file: &secrets.client_secret,
            auth_origin: AUTH_URL,
            extra: &[],
        },
        &logs.join("idp.log"),
    )
    .await
    .map_err(anyhow::Error::msg)?;
    running.add(idp.proc);
    eprintln!(
        "==> started the IdP at {} (log: {})",
        idp.issuer,
        logs.join("idp.log").display()
    );

    if replicas > 1 {
        crate::redis::require_redis();
        let redis_dir = dir.join("redis");
        fs::create_dir_all(&redis_dir)?;
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &REDIS_PORT.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&redis_dir)
            .args(["--save", "", "--appendonly", "yes"]);
        running.add(Proc::spawn("redis", cmd, &logs.join("redis.log")));
        eprintln!(
            "==> started Redis on 127.0.0.1:{REDIS_PORT} (log: {})",
            logs.join("redis.log").display()
        );
    }
    let log_level = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    for (i, config) in configs.iter().enumerate() {
        let name = if i == 0 {
            "portcullis".to_string()
        } else {
            format!("portcullis-{}", i + 1)
        };
        let log = logs.join(format!("{name}.log"));
        let (proc, _) = portcullis::serve(&name, config, &log, &log_level, "auth.localhost:8443")
            .await
            .map_err(anyhow::Error::msg)?;
        running.add(proc);
        eprintln!("==> started {name} (log: {})", log.display());
    }

    let envoy = envoy::start("envoy", &envoy_yaml, 2, "warn", &logs.join("envoy.log"))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    running.add(envoy.proc);
    eprintln!(
        "==> started Envoy (log: {})",
        logs.join("envoy.log").display()
    );

    // End to end: TLS at Envoy with the demo CA, routed to portcullis's HTTP service.
    let browser = crate::Browser::new(8443, &certs.ca);
    let healthz = format!("{AUTH_URL}/healthz");
    let ok = crate::poll_until(Duration::from_secs(15), || async {
        match browser.get(&healthz).send().await {
            Ok(r) if r.status().is_success() => Some(()),
            _ => None,
        }
    })
    .await;
    if ok.is_none() {
        bail!("{healthz} does not answer through Envoy");
    }

    banner(&dir, args);
    Ok(())
}

/// The local account's PAM helper and lines, and cockpit.conf's directory.
fn setup_cockpit(dir: &Path, config: &Path, running: &mut Running) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let helper_dir = Path::new(PAM_HELPER_DIR);
    eprintln!("==> installing the PAM helper into {PAM_HELPER_DIR}");
    fs::create_dir_all(helper_dir)?;
    std::os::unix::fs::chown(helper_dir, Some(0), Some(0))?;
    fs::set_permissions(helper_dir, fs::Permissions::from_mode(0o755))?;
    let install = |from: &Path, to: &Path, mode: u32| -> Result<()> {
        let tmp = to.with_extension("tmp");
        fs::copy(from, &tmp)
            .with_context(|| format!("copy {} to {}", from.display(), tmp.display()))?;
        std::os::unix::fs::chown(&tmp, Some(0), Some(0))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
        fs::rename(&tmp, to)?;
        Ok(())
    };
    let bin = helper_dir.join("portcullis");
    install(portcullis_bin(), &bin, 0o755)?;
    let jwks = dir.join("jwks.json");
    fs::write(&jwks, portcullis::jwks(config))?;
    let demo_jwks = helper_dir.join("demo-jwks.json");
    install(&jwks, &demo_jwks, 0o644)?;
    eprintln!("==> adding the demo's lines to {}", cockpit::PAM_FILE);
    let lock = cockpit::PamLock::acquire();
    running.pam = Some(cockpit::PamBlock::write(
        &lock,
        Path::new(cockpit::PAM_FILE),
        "demo",
        &bin,
        &demo_jwks,
        AUTH_URL,
        &["cockpit.localhost:8443".to_string()],
    )?);
    Ok(())
}

fn banner(dir: &Path, args: &DemoArgs) {
    let rel = |p: &Path| {
        p.strip_prefix(repo())
            .map(Path::to_path_buf)
            .unwrap_or_else(|_| p.to_path_buf())
            .display()
            .to_string()
    };
    let ca = rel(&dir.join("certs/ca.pem"));
    let (cockpit_line, logs) = if args.cockpit {
        (
            format!(
                "  {COCKPIT_URL}/           Cockpit: alice gets in with no second login; bob is refused"
            ),
            "idp,cockpit-ws,portcullis,envoy",
        )
    } else {
        let why = args
            .no_cockpit
            .as_deref()
            .unwrap_or("not asked for (--cockpit)");
        (
            format!("  {COCKPIT_URL}/           (Cockpit skipped: {why})"),
            "idp,portcullis,envoy",
        )
    };
    let echo: SocketAddr = ECHO.parse().unwrap();
    let replicas_line = if args.replicas > 1 {
        format!(
            "  Sessions: {} portcullis replicas (gRPC 9100, 9110, …) sharing them in Redis at
            127.0.0.1:{REDIS_PORT}; kill one and the other serves (PORTCULLIS_DEMO_REPLICAS)
",
            args.replicas
        )
    } else {
        "  Sessions: in memory, one portcullis (PORTCULLIS_DEMO_REPLICAS=2 for two on Redis)\n"
            .to_string()
    };
    let logs = if args.replicas > 1 {
        format!("redis,{logs},portcullis-2")
    } else {
        logs.to_string()
    };
    println!(
        "
==> portcullis demo ready

  https://app.localhost:8443/               header-echo app ({echo}); any signed-in user
  https://app.localhost:8443/public/        the same app; anyone, signed in or not
  https://app.localhost:8443/ops/           the same app; group \"admins\" only
  https://admin.localhost:8443/             the same app; group \"admins\" only
  https://auth.localhost:8443/.portcullis/  who you are signed in as; sign out
{cockpit_line}
  http://127.0.0.1:9000                     the dev OIDC provider
{replicas_line}
  Users: alice / alice  (alice@example.com, group admins)
         bob / bob      (bob@example.com, no groups)

  TLS: the certificate is issued by a local CA, {ca}.
       Trust it in your browser (e.g. Chrome: Settings > Privacy and security > Security >
       Manage certificates > Authorities > Import; Firefox: Settings > Certificates >
       View Certificates > Authorities > Import), or accept the browser's warning.
       curl: curl --cacert {ca} https://app.localhost:8443/

  Logs: {}/{{{logs}}}.log
  Press Ctrl-C to stop.
",
        rel(&dir.join("logs"))
    );
}
