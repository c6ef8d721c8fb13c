//! Integration-test harness: starts the real processes (the demo IdP, the echo upstream,
//! portcullis and Envoy) on free ports, waits until each is ready, and always cleans up.
//!
//! Each test builds its own [`Stack`], so tests run in parallel and stay isolated. On a
//! failing test the stack prints the tail of every process's log and keeps its files.
#![allow(dead_code)]

mod browser;
pub mod cockpit;
pub mod grafana;
mod html;

#[allow(unused_imports)] // each test binary uses a different part
pub use browser::{BROWSER_ACCEPT, Browser, is_test_host, list, location, send};

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::StatusCode;

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The portcullis binary under test.
pub fn portcullis_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_portcullis"))
}

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const POLL_EVERY: Duration = Duration::from_millis(50);
const LOG_TAIL_LINES: usize = 80;

// ---------------------------------------------------------------------------------------
// Ports, temp dirs, secrets
// ---------------------------------------------------------------------------------------

/// A currently free TCP port on 127.0.0.1, never handed out twice in this process.
pub fn free_port() -> u16 {
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(Default::default);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("can bind an ephemeral port")
            .port();
        if given.lock().unwrap().insert(port) {
            return port;
        }
    }
}

/// A fresh, empty directory under the system temp dir.
pub fn temp_dir(label: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let dir = std::env::temp_dir().join(format!(
        "portcullis-{label}-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// `n` bytes from the kernel's random source.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    buf
}

/// Writes the secrets a config needs into `dir/secrets/`: `cookie_secret` (32 random bytes,
/// base64), `client_secret` and `signing_key.pem` (made by `portcullis keygen`).
pub fn write_secrets(dir: &Path) -> Secrets {
    let secrets = dir.join("secrets");
    fs::create_dir_all(&secrets).unwrap();
    let cookie_secret = secrets.join("cookie_secret");
    let b64 = base64::engine::general_purpose::STANDARD.encode(random_bytes(32));
    fs::write(&cookie_secret, format!("{b64}\n")).unwrap();
    let client_secret = secrets.join("client_secret");
    let hex: String = random_bytes(24)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    fs::write(&client_secret, format!("{hex}\n")).unwrap();
    let signing_key = secrets.join("signing_key.pem");
    let out = run(Command::new(portcullis_bin())
        .arg("keygen")
        .arg("-o")
        .arg(&signing_key));
    assert!(
        out.status.success() && signing_key.exists(),
        "portcullis keygen failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Secrets {
        cookie_secret,
        client_secret,
        signing_key,
    }
}

/// Paths of the secret files of one config.
#[derive(Debug, Clone)]
pub struct Secrets {
    pub cookie_secret: PathBuf,
    pub client_secret: PathBuf,
    pub signing_key: PathBuf,
}

/// Runs a command to completion, capturing its output.
pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

// ---------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------

/// The test CA and the server certificate Envoy presents.
#[derive(Debug)]
pub struct Certs {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Makes the certificates once per test binary (and safely across concurrent binaries)
/// with `scripts/lib/certs.sh target/test-certs`, which is idempotent.
pub fn certs() -> &'static Certs {
    static CERTS: OnceLock<Certs> = OnceLock::new();
    CERTS.get_or_init(|| {
        let target = repo().join("target");
        fs::create_dir_all(&target).unwrap();
        let dir = target.join("test-certs");
        let script = repo().join("scripts/lib/certs.sh");
        assert!(
            script.exists(),
            "{} is missing (it comes with the repo's scripts/)",
            script.display()
        );
        let lock = File::create(target.join("test-certs.lock")).unwrap();
        let _guard = FileLock::exclusive(&lock);
        let out = run(Command::new("bash").arg(&script).arg(&dir));
        assert!(
            out.status.success(),
            "{} {} failed ({}):\n{}{}",
            script.display(),
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let certs = Certs {
            ca: dir.join("ca.pem"),
            cert: dir.join("tls.pem"),
            key: dir.join("tls-key.pem"),
        };
        for f in [&certs.ca, &certs.cert, &certs.key] {
            assert!(f.exists(), "certs.sh did not produce {}", f.display());
        }
        certs
    })
}

/// An exclusive `flock` held until dropped (closing the file also releases it).
struct FileLock<'a>(&'a File);

impl<'a> FileLock<'a> {
    fn exclusive(file: &'a File) -> Self {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a valid open descriptor has no memory-safety requirements.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());
        Self(file)
    }
}

impl Drop for FileLock<'_> {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: as above.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

// ---------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------

/// A child process whose stdout and stderr go to a log file.
struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Self {
        let file = File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .current_dir(repo());
        // SAFETY: the closure only makes one async-signal-safe syscall between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // Die with the test (thread) that started us, even if it never gets to Drop.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({:?}): {e}", cmd.get_program()));
        Self {
            name: name.to_string(),
            child: Some(child),
            log,
        }
    }

    /// Kills the process (SIGKILL by pid) and reaps it.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `Some(status)` if the process has exited.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    fn log_tail(&self) -> String {
        tail(&self.log, LOG_TAIL_LINES)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| format!("({}: {e})", path.display()));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------------------
// The stack
// ---------------------------------------------------------------------------------------

/// An extra route for [`StackBuilder::route`].
#[derive(Debug, Clone)]
struct RouteSpec {
    name: String,
    host: String,
    policy: String,
    /// More keys of the route, one YAML line each (see [`StackBuilder::route_option`]).
    extra: Vec<String>,
    /// Path prefix of `from` (see [`StackBuilder::route_path`]); empty for `/`.
    path: String,
    /// Upstream instead of the echo app (see [`StackBuilder::route_upstream`]).
    to: Option<String>,
}

/// Options for a [`Stack`]. The stack always has the routes `app` (any authenticated
/// user) on `app.localhost` and `admin` (group `admins`) on `admin.localhost`, both
/// served by the echo upstream.
#[derive(Debug, Default)]
pub struct StackBuilder {
    cookie_lifetime: Option<String>,
    routes: Vec<RouteSpec>,
    /// Serve `server.jwks_address` on [`Ports::jwks`].
    jwks_listener: bool,
    /// Also start the echo upstream over HTTPS (test CA certificate) on [`Ports::echo_tls`].
    tls_echo: bool,
    /// Top-level YAML lines appended to the config.
    config_extra: Vec<String>,
}

impl StackBuilder {
    /// Sets `cookie.lifetime` (e.g. `"3s"`); the default is the contract's `8h`.
    pub fn cookie_lifetime(mut self, lifetime: &str) -> Self {
        self.cookie_lifetime = Some(lifetime.to_string());
        self
    }

    /// Adds a route to the echo upstream on `https://<label>.localhost:<port>`, with a
    /// policy written as a YAML flow mapping, e.g. `{ emails: [bob@example.com] }`.
    pub fn route(mut self, name: &str, label: &str, policy: &str) -> Self {
        let host = format!("{label}.localhost");
        assert!(
            browser::HOSTS.contains(&host.as_str()),
            "{host} is not one of the test hosts {:?}",
            browser::HOSTS
        );
        self.routes.push(RouteSpec {
            name: name.to_string(),
            host,
            policy: policy.to_string(),
            extra: Vec::new(),
            path: String::new(),
            to: None,
        });
        self
    }

    fn route_spec(&mut self, name: &str) -> &mut RouteSpec {
        self.routes
            .iter_mut()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no route {name:?} was added"))
    }

    /// Serves the route `name` under a path prefix, e.g. `/admin` for
    /// `https://apps.localhost:<port>/admin`.
    pub fn route_path(mut self, name: &str, prefix: &str) -> Self {
        assert!(prefix.starts_with('/'), "{prefix:?} must start with /");
        self.route_spec(name).path = prefix.to_string();
        self
    }

    /// Sends the route `name` to `to` (e.g. `http://127.0.0.1:9090`) instead of the echo app.
    pub fn route_upstream(mut self, name: &str, to: &str) -> Self {
        self.route_spec(name).to = Some(to.to_string());
        self
    }

    /// Adds one more key to the route `name` (added with [`Self::route`] before), as one
    /// YAML line, e.g. `role: { from_groups: { admins: Admin }, default: Viewer }`.
    pub fn route_option(mut self, name: &str, yaml_line: &str) -> Self {
        self.routes
            .iter_mut()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no route {name:?} was added"))
            .extra
            .push(yaml_line.to_string());
        self
    }

    /// Also starts the echo upstream over HTTPS, with the test CA's certificate, on
    /// [`Ports::echo_tls`]; a route's `to` may then say `https://127.0.0.1:{echo_tls}`, and a
    /// route option `{ca}` for the test CA's file.
    pub fn tls_echo(mut self) -> Self {
        self.tls_echo = true;
        self
    }

    /// Sets `server.jwks_address` to 127.0.0.1:[`Ports::jwks`] (the standalone JWKS listener).
    pub fn jwks_listener(mut self) -> Self {
        self.jwks_listener = true;
        self
    }

    /// Appends a top-level key to the config, as YAML, e.g.
    /// `published_key_files: [secrets/next.pub.pem]` (paths relative to the stack's dir).
    pub fn config_extra(mut self, yaml: &str) -> Self {
        self.config_extra.push(yaml.to_string());
        self
    }

    /// Starts the IdP, the echo upstream, portcullis and Envoy, and waits until all are ready.
    pub async fn start(self) -> Stack {
        let certs = certs();
        let envoy_bin = envoy_bin();
        let node_modules = repo().join("examples/demo/node_modules");
        assert!(
            node_modules.is_dir(),
            "{} is missing: run scripts/test (or `npm ci --prefix examples/demo`) first",
            node_modules.display()
        );

        let dir = temp_dir("stack");
        fs::create_dir_all(dir.join("logs")).unwrap();
        let ports = Ports {
            envoy: free_port(),
            envoy_admin: free_port(),
            idp: free_port(),
            echo: free_port(),
            grpc: free_port(),
            http: free_port(),
            jwks: free_port(),
            echo_tls: free_port(),
        };
        let secrets = write_secrets(&dir);
        let config = dir.join("portcullis.yaml");
        fs::write(&config, self.config_yaml(&ports)).unwrap();

        let mut stack = Stack {
            dir,
            ports,
            config,
            secrets: secrets.clone(),
            browsers: Mutex::new(Vec::new()),
            ca_pem: fs::read(&certs.ca).unwrap(),
            echo_log: PathBuf::new(),
            procs: Vec::new(),
        };
        stack.echo_log = stack.dir.join("logs/echo-requests.jsonl");

        // The IdP first: portcullis discovers it at startup.
        let auth = stack.origin("auth");
        let mut idp = Command::new("node");
        idp.arg("examples/demo/idp.mjs")
            .args(["--port", &ports.idp.to_string()])
            .args(["--issuer", &stack.idp_origin()])
            .args(["--client-id", "portcullis"])
            .arg("--client-secret-file")
            .arg(&secrets.client_secret)
            .args([
                "--redirect-uri",
                &format!("{auth}/.portcullis/oauth2/callback"),
            ])
            .args([
                "--post-logout-redirect-uri",
                &format!("{auth}/.portcullis/signed_out"),
            ]);
        stack.spawn("idp", idp);

        let mut echo = Command::new("node");
        echo.arg("examples/demo/echo.mjs")
            .args(["--port", &ports.echo.to_string()])
            .arg("--log")
            .arg(&stack.echo_log);
        stack.spawn("echo", echo);
        if self.tls_echo {
            let mut echo = Command::new("node");
            echo.arg("examples/demo/echo.mjs")
                .args(["--port", &ports.echo_tls.to_string()])
                .arg("--log")
                .arg(&stack.echo_log)
                .arg("--tls-cert")
                .arg(&certs.cert)
                .arg("--tls-key")
                .arg(&certs.key);
            stack.spawn("echo-tls", echo);
        }

        let probe = probe_client();
        let discovery = format!("{}/.well-known/openid-configuration", stack.idp_origin());
        stack
            .wait_ready("idp", || probe.get(&discovery), |s| s == StatusCode::OK)
            .await;
        let echo_url = format!("http://127.0.0.1:{}/ready-probe", ports.echo);
        stack
            .wait_ready("echo", || probe.get(&echo_url), |s| s == StatusCode::OK)
            .await;

        let mut portcullis = Command::new(portcullis_bin());
        portcullis
            .arg("serve")
            .arg("-c")
            .arg(&stack.config)
            // Every level, so that the log scan at the end sees every line there is.
            .env("RUST_LOG", "trace");
        stack.spawn("portcullis", portcullis);
        let healthz = format!("http://127.0.0.1:{}/healthz", ports.http);
        stack
            .wait_ready(
                "portcullis",
                || probe.get(&healthz),
                |s| s == StatusCode::OK,
            )
            .await;
        // /healthz answers before IdP discovery has finished; sign-in answers 503 until it has.
        let sign_in = format!("http://127.0.0.1:{}/.portcullis/sign_in", ports.http);
        let auth_authority = stack.authority("auth");
        stack
            .wait_ready(
                "portcullis (IdP discovery)",
                || probe.get(&sign_in).header("host", &auth_authority),
                |s| s != StatusCode::SERVICE_UNAVAILABLE,
            )
            .await;

        let envoy_yaml = stack.render_envoy_config(certs);
        let mut envoy = Command::new(&envoy_bin);
        envoy
            .arg("-c")
            .arg(&envoy_yaml)
            .args(["--concurrency", "1", "--log-level", "warn"])
            .arg("--use-dynamic-base-id");
        stack.spawn("envoy", envoy);
        let ready = format!("http://127.0.0.1:{}/ready", ports.envoy_admin);
        stack
            .wait_ready("envoy", || probe.get(&ready), |s| s == StatusCode::OK)
            .await;
        stack
    }

    /// The portcullis config, per the contract, on this stack's ports.
    fn config_yaml(&self, p: &Ports) -> String {
        let lifetime = self.cookie_lifetime.as_deref().unwrap_or("8h");
        let mut yaml = format!(
            "\
server:
  grpc_address: 127.0.0.1:{grpc}
  http_address: 127.0.0.1:{http}
authenticate_url: https://auth.localhost:{envoy}
idp:
  issuer: http://127.0.0.1:{idp}
  client_id: portcullis
  client_secret_file: secrets/client_secret
  scopes: [openid, email, profile, groups]
  groups_claim: groups
cookie:
  name: _portcullis
  secret_file: secrets/cookie_secret
  lifetime: {lifetime}
signing_key_file: secrets/signing_key.pem
identity_header: X-Portcullis-Jwt-Assertion
routes:
  - name: app
    from: https://app.localhost:{envoy}
    to: http://127.0.0.1:{echo}
    policy: {{ any_authenticated_user: true }}
  - name: admin
    from: https://admin.localhost:{envoy}
    to: http://127.0.0.1:{echo}
    policy: {{ groups: [admins] }}
",
            grpc = p.grpc,
            http = p.http,
            envoy = p.envoy,
            idp = p.idp,
            echo = p.echo,
        );
        for r in &self.routes {
            let echo = format!("http://127.0.0.1:{}", p.echo);
            yaml.push_str(&format!(
                "  - name: {}\n    from: https://{}:{}{}\n    to: {}\n    policy: {}\n",
                r.name,
                r.host,
                p.envoy,
                r.path,
                r.to.as_deref()
                    .unwrap_or(&echo)
                    .replace("{echo_tls}", &p.echo_tls.to_string()),
                r.policy
            ));
            for line in &r.extra {
                let line = line.replace("{ca}", &certs().ca.display().to_string());
                yaml.push_str(&format!("    {line}\n"));
            }
        }
        if self.jwks_listener {
            yaml = yaml.replacen(
                "authenticate_url:",
                &format!("  jwks_address: 127.0.0.1:{}\nauthenticate_url:", p.jwks),
                1,
            );
        }
        for extra in &self.config_extra {
            yaml.push_str(extra.trim_end());
            yaml.push('\n');
        }
        yaml
    }
}

/// The ports of one stack.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub envoy: u16,
    pub envoy_admin: u16,
    pub idp: u16,
    pub echo: u16,
    pub grpc: u16,
    pub http: u16,
    /// The standalone JWKS listener's port (configured only with [`StackBuilder::jwks_listener`]).
    pub jwks: u16,
    /// The HTTPS echo's port (started only with [`StackBuilder::tls_echo`]).
    pub echo_tls: u16,
}

/// One request as the echo upstream saw it.
#[derive(Debug, Clone)]
pub struct EchoRequest {
    pub method: String,
    pub path: String,
    /// Lowercase header names; repeated headers joined with ", ".
    pub headers: BTreeMap<String, String>,
}

impl EchoRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    pub fn host(&self) -> &str {
        self.header("host").unwrap_or("")
    }

    /// Parses the echo's JSON (`{"method","path","headers"}`), as logged or as its body.
    pub fn from_json(v: &serde_json::Value) -> Self {
        let text = |key: &str| {
            v[key]
                .as_str()
                .unwrap_or_else(|| panic!("echo record without {key}: {v}"))
                .to_string()
        };
        let headers = v["headers"]
            .as_object()
            .unwrap_or_else(|| panic!("echo record without headers: {v}"))
            .iter()
            .map(|(k, val)| {
                let val = match val {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Array(a) => a
                        .iter()
                        .map(|x| x.as_str().unwrap_or_default())
                        .collect::<Vec<_>>()
                        .join(", "),
                    other => other.to_string(),
                };
                (k.to_ascii_lowercase(), val)
            })
            .collect();
        Self {
            method: text("method"),
            path: text("path"),
            headers,
        }
    }
}

/// The running processes of one test, and everything they need, in a temp dir.
pub struct Stack {
    pub dir: PathBuf,
    pub ports: Ports,
    pub config: PathBuf,
    secrets: Secrets,
    /// Every browser handed out, for the log scan at the end (their cookies are secrets).
    browsers: Mutex<Vec<Browser>>,
    ca_pem: Vec<u8>,
    echo_log: PathBuf,
    procs: Vec<Proc>,
}

impl Stack {
    /// A stack with the default options.
    pub async fn start() -> Stack {
        StackBuilder::default().start().await
    }

    pub fn builder() -> StackBuilder {
        StackBuilder::default()
    }

    /// `<label>.localhost:<envoy port>`, the authority browsers send for that host.
    pub fn authority(&self, label: &str) -> String {
        format!("{label}.localhost:{}", self.ports.envoy)
    }

    /// `https://<label>.localhost:<envoy port>`.
    pub fn origin(&self, label: &str) -> String {
        format!("https://{}", self.authority(label))
    }

    /// `https://<label>.localhost:<envoy port><path>`.
    pub fn url(&self, label: &str, path: &str) -> String {
        format!("{}{path}", self.origin(label))
    }

    /// The IdP's issuer, `http://127.0.0.1:<port>`.
    pub fn idp_origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.idp)
    }

    /// A new browser with an empty cookie jar.
    pub fn browser(&self) -> Browser {
        let browser = Browser::new(self.ports.envoy, &self.ca_pem);
        self.browsers.lock().unwrap().push(browser.share());
        browser
    }

    /// Every secret value this test saw: the config's secrets, every cookie the browsers
    /// hold, and every identity JWT, credential and cookie the upstream received.
    fn secrets_seen(&self) -> Vec<String> {
        let mut seen = Vec::new();
        for file in [&self.secrets.cookie_secret, &self.secrets.client_secret] {
            seen.push(
                fs::read_to_string(file)
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
            );
        }
        let key = fs::read_to_string(&self.secrets.signing_key).unwrap_or_default();
        seen.extend(
            key.lines()
                .filter(|l| !l.starts_with("-----"))
                .map(str::to_string),
        );
        for b in self.browsers.lock().unwrap().iter() {
            seen.extend(b.all_cookie_values(self.ports.envoy));
        }
        for r in self.echo_requests() {
            for (name, value) in &r.headers {
                if name.contains("jwt") || name == "authorization" {
                    seen.push(value.clone());
                    // Basic credentials: the decoded token too.
                    if let Some(b64) = value.strip_prefix("Basic ")
                        && let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64)
                    {
                        seen.push(String::from_utf8_lossy(&raw).into_owned());
                    }
                }
                if name == "cookie" {
                    seen.extend(
                        value
                            .split([';', ','])
                            .filter_map(|p| p.split_once('='))
                            .map(|(_, v)| v.trim().to_string()),
                    );
                }
            }
        }
        // Short values ("dark", "1") are not secrets and would match by chance.
        seen.retain(|s| s.len() >= 16);
        seen.sort();
        seen.dedup();
        seen
    }

    /// Fails the test if any portcullis log line (the suite runs it at `RUST_LOG=trace`)
    /// contains a secret value the test saw.
    fn logs_hold_no_secrets(&self) -> Result<(), String> {
        let secrets = self.secrets_seen();
        let mut problems = Vec::new();
        for p in self
            .procs
            .iter()
            .filter(|p| p.name.starts_with("portcullis"))
        {
            let log = fs::read_to_string(&p.log).unwrap_or_default();
            for line in log.lines() {
                if let Some(s) = secrets.iter().find(|s| line.contains(s.as_str())) {
                    problems.push(format!(
                        "{}: a secret ({}…, {} bytes) in: {line}",
                        p.log.display(),
                        &s[..8],
                        s.len()
                    ));
                }
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        Err(format!(
            "{} log line(s) carry secrets (checked {} values):\n{}",
            problems.len(),
            secrets.len(),
            problems.join("\n")
        ))
    }

    /// Every request the echo upstream has received so far, in order.
    pub fn echo_requests(&self) -> Vec<EchoRequest> {
        let text = match fs::read_to_string(&self.echo_log) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => panic!("read {}: {e}", self.echo_log.display()),
        };
        text.lines()
            .filter(|l| !l.trim().is_empty())
            // The readiness probe went straight to the echo, not through Envoy.
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .unwrap_or_else(|e| panic!("echo log line {l:?}: {e}"))
            })
            .map(|v| EchoRequest::from_json(&v))
            .filter(|r| r.path != "/ready-probe")
            .collect()
    }

    /// Stops portcullis (SIGKILL by pid) and waits for it to exit.
    pub fn stop_portcullis(&mut self) {
        self.procs
            .iter_mut()
            .find(|p| p.name == "portcullis")
            .expect("portcullis was started")
            .stop();
    }

    /// Restarts portcullis on the same ports with the config file as it is now (edit
    /// [`Stack::config`] first) and waits until it is ready. Sessions live in memory, so
    /// browsers must sign in again. The old log is kept as `logs/portcullis.N.log`.
    pub async fn restart_portcullis(&mut self) {
        let n = self
            .procs
            .iter()
            .filter(|p| p.name.starts_with("portcullis (before restart"))
            .count()
            + 1;
        let logs = self.dir.join("logs");
        let old = self
            .procs
            .iter_mut()
            .find(|p| p.name == "portcullis")
            .expect("portcullis was started");
        old.stop();
        let kept = logs.join(format!("portcullis.{n}.log"));
        fs::rename(&old.log, &kept).unwrap_or_else(|e| panic!("rename {}: {e}", old.log.display()));
        old.log = kept;
        old.name = format!("portcullis (before restart {n})");

        let mut portcullis = Command::new(portcullis_bin());
        portcullis
            .arg("serve")
            .arg("-c")
            .arg(&self.config)
            // Every level, so that the log scan at the end sees every line there is.
            .env("RUST_LOG", "trace");
        self.spawn("portcullis", portcullis);
        let probe = probe_client();
        let healthz = format!("http://127.0.0.1:{}/healthz", self.ports.http);
        self.wait_ready(
            "portcullis",
            || probe.get(&healthz),
            |s| s == StatusCode::OK,
        )
        .await;
        let sign_in = format!("http://127.0.0.1:{}/.portcullis/sign_in", self.ports.http);
        let auth_authority = self.authority("auth");
        self.wait_ready(
            "portcullis (IdP discovery)",
            || probe.get(&sign_in).header("host", &auth_authority),
            |s| s != StatusCode::SERVICE_UNAVAILABLE,
        )
        .await;
    }

    /// The JWKS URL of the standalone listener (see [`StackBuilder::jwks_listener`]).
    pub fn jwks_listener_url(&self) -> String {
        format!(
            "http://127.0.0.1:{}/.well-known/portcullis/jwks.json",
            self.ports.jwks
        )
    }

    /// The JWKS served on the auth host, fetched through Envoy.
    pub async fn jwks(&self) -> serde_json::Value {
        let url = self.url("auth", "/.well-known/portcullis/jwks.json");
        let response = send(self.browser().get(&url)).await;
        let status = response.status();
        let body = response.text().await.unwrap();
        assert_eq!(status, StatusCode::OK, "GET {url}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("JWKS is not JSON ({e}): {body}"))
    }

    /// Fetches the JWKS through Envoy and writes it to a file in the stack's dir.
    pub async fn jwks_file(&self) -> PathBuf {
        let path = self.dir.join("jwks.json");
        fs::write(&path, self.jwks().await.to_string()).unwrap();
        path
    }

    /// Verifies `token` against the served JWKS with an independent implementation
    /// (`jose`, via tests/support/verify_jwt.mjs) for `audience`; returns
    /// `{"header": {...}, "payload": {...}}` or panics with the verifier's output.
    pub async fn verify_jwt(&self, token: &str, audience: &str) -> serde_json::Value {
        let jwks = self.jwks_file().await;
        let out = run(Command::new("node")
            .current_dir(repo())
            .arg("tests/support/verify_jwt.mjs")
            .arg("--jwks-file")
            .arg(&jwks)
            .args(["--token", token, "--audience", audience]));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "verify_jwt.mjs rejected the token ({}) for audience {audience}:\n{stdout}{}\ntoken: {token}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("verify_jwt.mjs output is not JSON ({e}): {stdout}"))
    }

    /// Whether `token` verifies against the served JWKS for `audience` (jose, like
    /// [`Stack::verify_jwt`], but a refusal is an answer, not a panic).
    pub async fn jwt_verifies(&self, token: &str, audience: &str) -> bool {
        let jwks = self.jwks_file().await;
        run(Command::new("node")
            .current_dir(repo())
            .arg("tests/support/verify_jwt.mjs")
            .arg("--jwks-file")
            .arg(&jwks)
            .args(["--token", token, "--audience", audience]))
        .status
        .success()
    }

    /// Prints the tail of every process's log to stderr.
    pub fn dump_logs(&self) {
        eprintln!("==== stack files in {} ====", self.dir.display());
        for p in &self.procs {
            eprintln!(
                "==== {} ({}), last {LOG_TAIL_LINES} lines ====\n{}",
                p.name,
                p.log.display(),
                p.log_tail()
            );
        }
        eprintln!(
            "==== echo requests ====\n{}",
            tail(&self.echo_log, LOG_TAIL_LINES)
        );
    }

    fn spawn(&mut self, name: &str, cmd: Command) {
        let log = self.dir.join("logs").join(format!("{name}.log"));
        self.procs.push(Proc::spawn(name, cmd, log));
    }

    /// Polls `probe` every 50 ms until its status satisfies `ready`; panics with the log
    /// tail if the process exits or 30 s pass.
    async fn wait_ready(
        &mut self,
        what: &str,
        probe: impl Fn() -> reqwest::RequestBuilder,
        ready: impl Fn(StatusCode) -> bool,
    ) {
        let proc_name = what.split(' ').next().unwrap();
        let started = Instant::now();
        loop {
            let last = match probe().send().await {
                Ok(r) if ready(r.status()) => return,
                Ok(r) => format!("status {}", r.status()),
                Err(e) => format!("{e}"),
            };
            let proc = self
                .procs
                .iter_mut()
                .find(|p| p.name == proc_name)
                .expect("waiting for a started process");
            if let Some(status) = proc.exited() {
                panic!(
                    "{what} exited ({status}) before it was ready; log {}:\n{}",
                    proc.log.display(),
                    proc.log_tail()
                );
            }
            if started.elapsed() > READY_TIMEOUT {
                panic!(
                    "{what} not ready after {READY_TIMEOUT:?} (last: {last}); log {}:\n{}",
                    proc.log.display(),
                    proc.log_tail()
                );
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// Renders Envoy's bootstrap with `portcullis envoy-config` into the stack's dir.
    fn render_envoy_config(&self, certs: &Certs) -> PathBuf {
        let out = run(Command::new(portcullis_bin())
            .arg("envoy-config")
            .arg("-c")
            .arg(&self.config)
            .args(["--listen", &format!("127.0.0.1:{}", self.ports.envoy)])
            .args(["--admin", &format!("127.0.0.1:{}", self.ports.envoy_admin)])
            .arg("--tls-cert")
            .arg(&certs.cert)
            .arg("--tls-key")
            .arg(&certs.key));
        assert!(
            out.status.success(),
            "portcullis envoy-config failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let path = self.dir.join("envoy.yaml");
        fs::write(&path, &out.stdout).unwrap();
        path
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Last started, first stopped: Envoy, portcullis, echo, IdP.
        for p in self.procs.iter_mut().rev() {
            p.stop();
        }
        let leaked = if std::thread::panicking() {
            Ok(())
        } else {
            self.logs_hold_no_secrets()
        };
        if let Err(problems) = leaked {
            self.dump_logs();
            panic!("{problems}\n(kept {} for inspection)", self.dir.display());
        }
        if std::thread::panicking() {
            self.dump_logs();
            eprintln!("(kept {} for inspection)", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// The Envoy binary: `$PORTCULLIS_ENVOY_BIN`, else the project-local install.
pub fn envoy_bin() -> PathBuf {
    let candidate = match std::env::var_os("PORTCULLIS_ENVOY_BIN") {
        Some(p) => PathBuf::from(p),
        None => repo().join(".deps/envoy/envoy/_bin/envoy"),
    };
    assert!(
        candidate.is_file(),
        "Envoy not found at {}: run scripts/test (it installs Envoy into .deps/) or set PORTCULLIS_ENVOY_BIN",
        candidate.display()
    );
    candidate
}

/// A plain client for readiness probes (no proxy, short timeout).
fn probe_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(2))
        .build()
        .expect("probe client builds")
}
