//! Cockpit for the end-to-end tests: real cockpit-ws instances on free ports, the PAM block
//! that points Cockpit's PAM stack (`/etc/pam.d/cockpit`) at a stack's JWKS, guards that
//! undo every change to the machine, and the node helpers (`cockpit_*.mjs`).
//!
//! `/etc/pam.d/cockpit` and `/etc/cockpit/disallowed-users` are global state. Every test that
//! touches them holds [`PamLock`] for its whole run, so Cockpit tests in any number of test
//! processes run one at a time. The PAM block is written with `scripts/lib/cockpit.sh`, the
//! same code `scripts/demo` uses, which replaces only its own marked lines.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{FileLock, Proc, Stack, StackBuilder, certs, free_port, portcullis_bin, repo, run};

pub const COCKPIT_WS: &str = "/usr/lib/cockpit/cockpit-ws";
pub const PAM_FILE: &str = "/etc/pam.d/cockpit";
pub const DISALLOWED_USERS: &str = "/etc/cockpit/disallowed-users";
/// The name of the tests' block in the PAM file (the demo's is `demo`).
const PAM_BLOCK: &str = "e2e-test";
/// A local account with a password, to show that a client's own `Authorization` never
/// reaches Cockpit. Created on first use; its password is random per test and locked again
/// afterwards.
pub const PASSWORD_USER: &str = "portcullis-probe";

/// Panics with what to do when this machine cannot run the Cockpit tests.
pub fn require_cockpit() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let missing: Vec<&str> = [COCKPIT_WS, "/usr/lib/cockpit/cockpit-session", PAM_FILE]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    assert!(
        root && missing.is_empty(),
        "the Cockpit tests need root and cockpit-ws, cockpit-bridge and cockpit-system \
         (missing: {missing:?}; root: {root}): run scripts/test as root on Debian, which installs them"
    );
    let alice = run(Command::new("id").arg("-u").arg("alice"));
    assert!(
        alice.status.success(),
        "the Cockpit tests need the local account alice: `useradd -m alice` (scripts/test does it)"
    );
}

// ---------------------------------------------------------------------------------------
// Global state: the lock, the PAM block, /etc/cockpit/disallowed-users
// ---------------------------------------------------------------------------------------

/// Exclusive use of Cockpit's PAM configuration, across test processes: an flock on
/// `target/cockpit-pam.lock`, held until dropped.
pub struct PamLock {
    _lock: FileLock<'static>,
}

impl PamLock {
    pub fn acquire() -> Self {
        let path = repo().join("target/cockpit-pam.lock");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        // Leaked on purpose: one small File per test, and the lock borrows it for 'static.
        let file: &'static File = Box::leak(Box::new(
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap_or_else(|e| panic!("open {}: {e}", path.display())),
        ));
        Self {
            _lock: FileLock::exclusive(file),
        }
    }
}

/// portcullis's block in `/etc/pam.d/cockpit` for one test; removed again on drop (also when
/// the test panics), leaving every other line as it was.
pub struct PamBlock {
    _private: (),
}

impl PamBlock {
    /// Writes the block: `pam_listfile` (disallowed users) and then
    /// `pam_exec ... BIN pam-verify --jwks JWKS --issuer ISS --audience AUD...`.
    pub fn write(
        _lock: &PamLock,
        bin: &Path,
        jwks: &Path,
        issuer: &str,
        audiences: &[String],
    ) -> Self {
        let mut args = vec![
            PAM_BLOCK.to_string(),
            bin.display().to_string(),
            jwks.display().to_string(),
            issuer.to_string(),
        ];
        args.extend(audiences.iter().cloned());
        pam_script("cockpit_pam_write", &args);
        Self { _private: () }
    }
}

impl Drop for PamBlock {
    fn drop(&mut self) {
        pam_script("cockpit_pam_remove", &[PAM_BLOCK.to_string()]);
    }
}

/// Runs a function of `scripts/lib/cockpit.sh`.
fn pam_script(function: &str, args: &[String]) {
    let script = repo().join("scripts/lib/cockpit.sh");
    let out = run(Command::new("bash")
        .arg("-c")
        .arg(format!("source \"$0\" && {function} \"$@\""))
        .arg(&script)
        .args(args));
    let msg = format!(
        "{function} {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    if std::thread::panicking() {
        // Called from a Drop during a panic: report, do not abort the process.
        if !out.status.success() {
            eprintln!("{msg}");
        }
    } else {
        assert!(out.status.success(), "{msg}");
    }
}

/// A file put back exactly as it was (bytes and mode) on drop, also when the test panics.
pub struct RestoreFile {
    path: PathBuf,
    original: Vec<u8>,
    mode: u32,
}

impl RestoreFile {
    pub fn new(_lock: &PamLock, path: &str) -> Self {
        let original = fs::read(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        let mode = fs::metadata(path).unwrap().permissions().mode();
        Self {
            path: PathBuf::from(path),
            original,
            mode,
        }
    }

    /// Appends a line (adding a newline first if the file does not end with one).
    pub fn append_line(&self, line: &str) {
        let mut text = self.original.clone();
        if !text.is_empty() && !text.ends_with(b"\n") {
            text.push(b'\n');
        }
        text.extend_from_slice(line.as_bytes());
        text.push(b'\n');
        fs::write(&self.path, text).unwrap();
    }
}

impl Drop for RestoreFile {
    fn drop(&mut self) {
        let restored = fs::write(&self.path, &self.original)
            .and_then(|()| fs::set_permissions(&self.path, fs::Permissions::from_mode(self.mode)));
        if let Err(e) = restored {
            eprintln!(
                "CANNOT RESTORE {}: {e}; put this back by hand:\n{}",
                self.path.display(),
                String::from_utf8_lossy(&self.original)
            );
        }
    }
}

/// [`PASSWORD_USER`] with a fresh random password; the password is locked again on drop.
pub struct PasswordUser {
    pub name: &'static str,
    pub password: String,
}

impl PasswordUser {
    pub fn create(_lock: &PamLock) -> Self {
        let name = PASSWORD_USER;
        if !run(Command::new("id").arg("-u").arg(name)).status.success() {
            let out = run(Command::new("useradd")
                .args(["-m", "-s", "/bin/bash", "-c", "portcullis Cockpit tests"])
                .arg(name));
            assert!(
                out.status.success(),
                "useradd {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let password: String = super::random_bytes(12)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut child = Command::new("chpasswd")
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chpasswd runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{name}:{password}\n").as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "chpasswd: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { name, password }
    }
}

impl Drop for PasswordUser {
    fn drop(&mut self) {
        // "!*": no password can match; the account itself stays for the next run.
        let out = run(Command::new("usermod").args(["-p", "!*", self.name]));
        if !out.status.success() {
            eprintln!(
                "usermod -p '!*' {} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// cockpit-ws
// ---------------------------------------------------------------------------------------

/// A cockpit-ws on 127.0.0.1 without TLS, behind the stack's Envoy, running as the
/// unprivileged `cockpit-wsinstance` user with its own `XDG_CONFIG_DIRS/cockpit/cockpit.conf`.
/// Its debug log names every request's path.
pub struct CockpitWs {
    pub port: u16,
    pub url_root: String,
    log: PathBuf,
    proc: Proc,
}

impl CockpitWs {
    /// Starts cockpit-ws on `port` for the public `origin` (`https://host:port`), serving
    /// under `url_root` (`""` or e.g. `/admin`), and waits until it answers.
    pub async fn start(dir: &Path, name: &str, port: u16, origin: &str, url_root: &str) -> Self {
        let xdg = dir.join(format!("{name}-xdg"));
        fs::create_dir_all(xdg.join("cockpit")).unwrap();
        let wss = origin.replacen("https://", "wss://", 1);
        let mut conf =
            format!("[WebService]\nOrigins = {origin} {wss}\nProtocolHeader = X-Forwarded-Proto\n");
        if !url_root.is_empty() {
            conf.push_str(&format!("UrlRoot = {url_root}\n"));
        }
        fs::write(xdg.join("cockpit/cockpit.conf"), conf).unwrap();
        let log = dir.join("logs").join(format!("{name}.log"));
        fs::create_dir_all(log.parent().unwrap()).unwrap();
        // As in production (cockpit-wsinstance-http.service): cockpit-ws itself unprivileged,
        // only the setuid cockpit-session (PAM, logind) runs as root. setpriv drops the
        // parent-death signal with the credentials unless told to keep it.
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid=cockpit-wsinstance",
            "--regid=cockpit-wsinstance",
            "--clear-groups",
            "--pdeathsig=keep",
            COCKPIT_WS,
        ])
        .args(["--no-tls", "--address", "127.0.0.1", "--port"])
        .arg(port.to_string())
        .env("XDG_CONFIG_DIRS", &xdg)
        .env("G_MESSAGES_DEBUG", "cockpit-ws cockpit-protocol");
        let mut ws = Self {
            port,
            url_root: url_root.to_string(),
            proc: Proc::spawn(name, cmd, log.clone()),
            log,
        };
        ws.wait_ready().await;
        ws
    }

    /// `http://127.0.0.1:<port>`, the route's upstream.
    pub fn upstream(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn wait_ready(&mut self) {
        let started = Instant::now();
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(status) = self.proc.exited() {
                panic!(
                    "cockpit-ws exited ({status}) before it was ready:\n{}",
                    self.proc.log_tail()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "cockpit-ws not listening on {} after 20 s:\n{}",
                self.port,
                self.proc.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// How many requests for exactly `path` cockpit-ws has answered so far (from its debug
    /// log: one "PATH: queueing complete" line per response).
    pub fn requests_for(&self, path: &str) -> usize {
        let needle = format!(": {path}: queueing complete");
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.ends_with(&needle))
            .count()
    }

    /// How many times cockpit-ws has started cockpit-session (each login attempt).
    pub fn sessions_spawned(&self) -> usize {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .matches("spawning /usr/lib/cockpit/cockpit-session")
            .count()
    }

    pub fn log_tail(&self) -> String {
        self.proc.log_tail()
    }
}

// ---------------------------------------------------------------------------------------
// A stack with Cockpit routes
// ---------------------------------------------------------------------------------------

/// The Cockpit routes of a [`CockpitStack`]:
/// * `cockpit`: `https://cockpit.localhost:P/` → cockpit-ws, `accounts: {alice@example.com: alice}`;
/// * `cockpit-sub`: `https://apps.localhost:P/admin` → a second cockpit-ws with `UrlRoot=/admin`,
///   `account: email_local_part`;
/// * `cockpit-echo`: `https://apps.localhost:P/echo` → the echo app, marked as Cockpit
///   (`UrlRoot` `/echo`), so a test can see exactly which headers a Cockpit route forwards.
pub struct CockpitStack {
    // Dropped in this order: the PAM block goes first, then Cockpit, then the stack; the
    // lock is released last.
    pub pam: PamBlock,
    pub cockpit: CockpitWs,
    pub sub: CockpitWs,
    pub stack: Stack,
    /// The root-owned copy of portcullis that PAM runs.
    pub bin: PathBuf,
    pub jwks: PathBuf,
    pub lock: PamLock,
}

impl CockpitStack {
    pub async fn start() -> Self {
        require_cockpit();
        let lock = PamLock::acquire();
        let (main_port, sub_port) = (free_port(), free_port());
        let stack = StackBuilder::default()
            .route("cockpit", "cockpit", "{ any_authenticated_user: true }")
            .route_upstream("cockpit", &format!("http://127.0.0.1:{main_port}"))
            .route_option(
                "cockpit",
                "cockpit: { accounts: { alice@example.com: alice } }",
            )
            .route("cockpit-sub", "apps", "{ any_authenticated_user: true }")
            .route_path("cockpit-sub", "/admin")
            .route_upstream("cockpit-sub", &format!("http://127.0.0.1:{sub_port}"))
            .route_option("cockpit-sub", "cockpit: { account: email_local_part }")
            .route("cockpit-echo", "apps", "{ any_authenticated_user: true }")
            .route_path("cockpit-echo", "/echo")
            .route_option(
                "cockpit-echo",
                "cockpit: { accounts: { alice@example.com: alice } }",
            )
            .start()
            .await;
        let cockpit = CockpitWs::start(
            &stack.dir,
            "cockpit-ws",
            main_port,
            &stack.origin("cockpit"),
            "",
        )
        .await;
        let sub = CockpitWs::start(
            &stack.dir,
            "cockpit-ws-sub",
            sub_port,
            &stack.origin("apps"),
            "/admin",
        )
        .await;
        let bin = install_portcullis(&stack.dir);
        let jwks = write_jwks(&stack);
        let pam = PamBlock::write(
            &lock,
            &bin,
            &jwks,
            &stack.origin("auth"),
            &[stack.authority("cockpit"), stack.authority("apps")],
        );
        Self {
            pam,
            cockpit,
            sub,
            stack,
            bin,
            jwks,
            lock,
        }
    }

    /// Prints the Cockpit logs (the stack prints its own when it is dropped in a panic).
    pub fn dump_cockpit_logs(&self) {
        eprintln!(
            "==== cockpit-ws ====\n{}\n==== cockpit-ws-sub ====\n{}",
            self.cockpit.log_tail(),
            self.sub.log_tail()
        );
    }
}

impl Drop for CockpitStack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_cockpit_logs();
            eprintln!(
                "==== {PAM_FILE} ====\n{}",
                fs::read_to_string(PAM_FILE).unwrap_or_default()
            );
        }
    }
}

/// Copies the portcullis under test to `dir/bin/portcullis` (root-owned, 0755): PAM runs it
/// as root, so it must not be a file another user could replace.
pub fn install_portcullis(dir: &Path) -> PathBuf {
    let bin_dir = dir.join("bin");
    fs::create_dir_all(&bin_dir).unwrap();
    fs::set_permissions(&bin_dir, fs::Permissions::from_mode(0o755)).unwrap();
    let bin = bin_dir.join("portcullis");
    fs::copy(portcullis_bin(), &bin).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// `portcullis jwks -c CONFIG > DIR/jwks.json`, as the install steps do.
pub fn write_jwks(stack: &Stack) -> PathBuf {
    let out = run(Command::new(portcullis_bin())
        .arg("jwks")
        .arg("-c")
        .arg(&stack.config));
    assert!(
        out.status.success(),
        "portcullis jwks: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = stack.dir.join("jwks.json");
    fs::write(&path, &out.stdout).unwrap();
    path
}

// ---------------------------------------------------------------------------------------
// Node helpers and the PAM helper
// ---------------------------------------------------------------------------------------

/// Runs `node tests/support/SCRIPT ARGS` and parses its stdout as JSON; panics with its
/// output when it fails.
pub fn node_json(script: &str, args: &[String]) -> serde_json::Value {
    let out = run(Command::new("node")
        .current_dir(repo())
        .arg(format!("tests/support/{script}"))
        .args(args));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{script} printed no JSON ({e}):\n{stdout}"))
}

/// Opens `wss://…/cockpit/socket` through Envoy with `cookie` and `origin`, with
/// tests/support/cockpit_ws.mjs; returns its report (`status`, `init`, `whoami`, `user`).
pub fn open_socket(url: &str, cookie: &str, origin: &str) -> serde_json::Value {
    node_json(
        "cockpit_ws.mjs",
        &[
            "--url".into(),
            url.into(),
            "--cookie".into(),
            cookie.into(),
            "--origin".into(),
            origin.into(),
            "--ca".into(),
            certs().ca.display().to_string(),
            "--connect-to".into(),
            "127.0.0.1".into(),
        ],
    )
}

/// The issuer of the Cockpit tokens in the process tests (the pam fixture's authenticate_url).
pub const TEST_ISSUER: &str = "https://auth.localhost:8443";

/// Tokens made with jose by tests/support/cockpit_tokens.mjs, case name → token, issued by
/// [`TEST_ISSUER`].
pub fn jose_tokens(key: &Path, audience: &str, account: &str) -> BTreeMap<String, String> {
    let v = node_json(
        "cockpit_tokens.mjs",
        &[
            "--key".into(),
            key.display().to_string(),
            "--issuer".into(),
            TEST_ISSUER.into(),
            "--audience".into(),
            audience.into(),
            "--account".into(),
            account.into(),
        ],
    );
    serde_json::from_value(v).expect("cockpit_tokens.mjs prints an object of strings")
}

/// Runs `BIN pam-verify --jwks JWKS --issuer ISS --audience AUD...` the way pam_exec does:
/// `PAM_USER` in the environment (when given) and the token on stdin.
pub fn pam_verify(
    bin: &Path,
    jwks: &Path,
    issuer: &str,
    audiences: &[&str],
    pam_user: Option<&str>,
    stdin: &[u8],
) -> Output {
    let mut cmd = Command::new(bin);
    cmd.arg("pam-verify")
        .arg("--jwks")
        .arg(jwks)
        .args(["--issuer", issuer]);
    for aud in audiences {
        cmd.args(["--audience", aud]);
    }
    cmd.env_remove("PAM_USER")
        .env("PAM_TYPE", "auth")
        .env("PAM_SERVICE", "cockpit")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(user) = pam_user {
        cmd.env("PAM_USER", user);
    }
    let mut child = cmd.spawn().expect("portcullis pam-verify starts");
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    // The helper may stop reading early (it reads a bounded amount): ignore EPIPE.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}
