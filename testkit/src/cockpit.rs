//! Cockpit for the end-to-end tests and the demo: real cockpit-ws instances (handed a
//! listening socket, systemd style), the PAM block that points Cockpit's PAM stack
//! (`/etc/pam.d/cockpit`) at a JWKS, guards that undo every change to the machine, and the
//! node helpers (`testkit/js/cockpit_*.mjs`).
//!
//! `/etc/pam.d/cockpit` and `/etc/cockpit/disallowed-users` are global state. Every test that
//! touches them holds [`PamLock`] for its whole run, so Cockpit tests in any number of test
//! processes run one at a time. The PAM block is written by [`pam_write`], the same code the
//! demo uses: it replaces only its own marked lines, under an `flock` on the file's
//! directory, and renames the new file over the old one so PAM never reads half a file.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::proc::{Proc, run};
use crate::proxies::Front;
use crate::{FileLock, Stack, StackBuilder, portcullis_bin, repo, test_certs};

pub const COCKPIT_WS: &str = "/usr/lib/cockpit/cockpit-ws";
pub const PAM_FILE: &str = "/etc/pam.d/cockpit";
pub const DISALLOWED_USERS: &str = "/etc/cockpit/disallowed-users";
/// The name of the tests' block in the PAM file (the demo's is `demo`).
const PAM_BLOCK: &str = "e2e-test";
/// A local account with a password, to show that a client's own `Authorization` never
/// reaches Cockpit. Created on first use; its password is random per test and locked again
/// afterwards.
pub const PASSWORD_USER: &str = "portcullis-probe";

// ---------------------------------------------------------------------------------------
// Global state: the lock, the PAM block, /etc/cockpit/disallowed-users
// ---------------------------------------------------------------------------------------

/// Exclusive use of Cockpit's PAM configuration, across test processes: an flock on
/// `target/cockpit-pam.lock`, held until dropped.
pub struct PamLock {
    _lock: FileLock,
}

impl PamLock {
    pub fn acquire() -> Self {
        let path = repo().join("target/cockpit-pam.lock");
        let lock =
            FileLock::exclusive(&path).unwrap_or_else(|e| panic!("lock {}: {e}", path.display()));
        Self { _lock: lock }
    }
}

/// portcullis's block in `/etc/pam.d/cockpit` for one test; removed again on drop (also when
/// the test panics), leaving every other line as it was.
pub struct PamBlock {
    file: PathBuf,
    name: String,
}

impl PamBlock {
    /// Writes the block `name` into `file`: `pam_listfile` (disallowed users) and then
    /// `pam_exec ... BIN pam-verify --jwks JWKS --issuer ISS --audience AUD...`.
    pub fn write(
        lock: &PamLock,
        file: &Path,
        name: &str,
        bin: &Path,
        jwks: &Path,
        issuer: &str,
        audiences: &[String],
    ) -> Result<Self> {
        Self::write_with(lock, file, name, bin, jwks, issuer, audiences, &[])
    }

    /// [`PamBlock::write`] with more `pam-verify` arguments (`--admin-grants DIR`).
    #[allow(clippy::too_many_arguments)]
    pub fn write_with(
        _lock: &PamLock,
        file: &Path,
        name: &str,
        bin: &Path,
        jwks: &Path,
        issuer: &str,
        audiences: &[String],
        extra: &[String],
    ) -> Result<Self> {
        pam_write_with(file, name, bin, jwks, issuer, audiences, extra)?;
        Ok(Self {
            file: file.to_path_buf(),
            name: name.to_string(),
        })
    }
}

impl Drop for PamBlock {
    fn drop(&mut self) {
        if let Err(e) = pam_remove(&self.file, &self.name) {
            eprintln!(
                "CANNOT REMOVE the portcullis-cockpit {} block from {}: {e:#}",
                self.name,
                self.file.display()
            );
        }
    }
}

/// The first line of a block names it; the block goes right after the `pam_sepermit` line
/// when there is one (Debian and Fedora both start the auth stack with it), else before the
/// first auth line.
fn begin_marker(name: &str) -> String {
    format!("# BEGIN portcullis-cockpit {name}")
}

fn end_marker(name: &str) -> String {
    format!("# END portcullis-cockpit {name}")
}

/// portcullis's PAM block. ISSUER is portcullis's authenticate_url origin, the `iss` of every
/// token it signs.
///
/// The pam_listfile line repeats Cockpit's own disallowed-users check *before* our
/// `sufficient` line: a success there ends the auth stack at once, so Cockpit's check
/// further down (which normally denies root) would never run.
pub fn pam_block(
    name: &str,
    bin: &Path,
    jwks: &Path,
    issuer: &str,
    audiences: &[String],
) -> String {
    pam_block_with(name, bin, jwks, issuer, audiences, &[])
}

/// [`pam_block`] with more `pam-verify` arguments after the audiences.
pub fn pam_block_with(
    name: &str,
    bin: &Path,
    jwks: &Path,
    issuer: &str,
    audiences: &[String],
    extra: &[String],
) -> String {
    let mut audiences: String = audiences
        .iter()
        .map(|a| format!(" --audience {a}"))
        .collect();
    for arg in extra {
        audiences.push(' ');
        audiences.push_str(arg);
    }
    format!(
        "{} (written by portcullis; replaced as a whole)\n\
         auth       required     pam_listfile.so item=user sense=deny file=/etc/cockpit/disallowed-users onerr=succeed\n\
         auth       sufficient   pam_exec.so expose_authtok quiet {} pam-verify --jwks {} --issuer {issuer} --replay-dir /run/portcullis-pam{audiences}\n\
         {}\n",
        begin_marker(name),
        bin.display(),
        jwks.display(),
        end_marker(name),
    )
}

/// Installs (or replaces, in place) block `name` in the PAM file.
pub fn pam_write(
    file: &Path,
    name: &str,
    bin: &Path,
    jwks: &Path,
    issuer: &str,
    audiences: &[String],
) -> Result<()> {
    pam_write_with(file, name, bin, jwks, issuer, audiences, &[])
}

/// [`pam_write`] with more `pam-verify` arguments.
pub fn pam_write_with(
    file: &Path,
    name: &str,
    bin: &Path,
    jwks: &Path,
    issuer: &str,
    audiences: &[String],
    extra: &[String],
) -> Result<()> {
    let args = [
        bin.display().to_string(),
        jwks.display().to_string(),
        issuer.to_string(),
    ];
    // PAM splits its arguments on white space: paths with spaces cannot work.
    for arg in args.iter().chain(audiences).chain(extra) {
        if arg.is_empty() || arg.contains(char::is_whitespace) {
            bail!("empty argument or white space in {arg:?}");
        }
    }
    pam_edit(
        file,
        name,
        Some(&pam_block_with(name, bin, jwks, issuer, audiences, extra)),
    )
}

/// Removes block `name` from the PAM file, if it is there.
pub fn pam_remove(file: &Path, name: &str) -> Result<()> {
    pam_edit(file, name, None)
}

/// Under the lock, drops block `name` and, with a block, puts it where the old block was
/// (else right after the anchor line, else before the first auth line, else at the end).
/// Every other line is kept byte for byte.
fn pam_edit(file: &Path, name: &str, block: Option<&str>) -> Result<()> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        bail!("bad PAM block name {name:?}");
    }
    let dir = file.parent().context("the PAM file has a directory")?;
    let _lock = FileLock::on(File::open(dir).with_context(|| format!("open {}", dir.display()))?)?;
    let text = fs::read_to_string(file)
        .with_context(|| format!("{} (is cockpit-ws installed?)", file.display()))?;
    let new = edited(&text, name, block)?;
    if new == text {
        return Ok(());
    }
    let meta = fs::metadata(file)?;
    let tmp = file.with_extension(format!("portcullis-tmp.{}", std::process::id()));
    let written = (|| {
        fs::write(&tmp, &new)?;
        fs::set_permissions(&tmp, meta.permissions())?;
        std::os::unix::fs::chown(&tmp, Some(meta.uid()), Some(meta.gid()))?;
        fs::rename(&tmp, file)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("write {}", file.display()));
    }
    Ok(())
}

/// The PAM file's text with block `name` dropped and `block` put in its place.
fn edited(text: &str, name: &str, block: Option<&str>) -> Result<String> {
    let (begin, end) = (begin_marker(name), end_marker(name));
    let is_marker = |line: &str, marker: &str| {
        line.strip_prefix(marker)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(' '))
    };
    let mut kept: Vec<&str> = Vec::new();
    let mut old_at = None;
    let mut skipping = false;
    for line in text.lines() {
        if skipping {
            skipping = !is_marker(line, &end);
        } else if is_marker(line, &begin) {
            skipping = true;
            old_at.get_or_insert(kept.len());
        } else {
            kept.push(line);
        }
    }
    if skipping {
        bail!("unterminated portcullis-cockpit block {name}");
    }
    let words = |l: &str| l.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    let anchor = kept.iter().position(|l| {
        let w = words(l);
        w.len() >= 3 && w[0] == "auth" && w[1] == "required" && w[2] == "pam_sepermit.so"
    });
    let first_auth = kept.iter().position(|l| {
        let t = l.trim_start();
        t.starts_with("auth") && t[4..].starts_with(char::is_whitespace)
            || t.starts_with("-auth") && t[5..].starts_with(char::is_whitespace)
    });
    let at = old_at
        .or(anchor.map(|a| a + 1))
        .or(first_auth)
        .unwrap_or(kept.len());
    let mut out = String::new();
    for (i, line) in kept.iter().enumerate() {
        if i == at
            && let Some(b) = block
        {
            out.push_str(b);
        }
        out.push_str(line);
        out.push('\n');
    }
    if at >= kept.len()
        && let Some(b) = block
    {
        out.push_str(b);
    }
    Ok(out)
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
        let password: String = crate::random_bytes(12)
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

/// A cockpit-ws on 127.0.0.1 without TLS, behind Envoy, running as the unprivileged
/// `cockpit-wsinstance` user with its own `XDG_CONFIG_DIRS/cockpit/cockpit.conf`, as under
/// systemd (cockpit-wsinstance-http.service): only the setuid cockpit-session (PAM, logind)
/// runs as root. Its debug log names every request's path.
pub struct CockpitWs {
    pub port: u16,
    pub url_root: String,
    pub proc: Proc,
}

/// A listening socket on 127.0.0.1, port 0: bind first, then hand it to cockpit-ws.
pub fn cockpit_listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind a port for cockpit-ws")
}

impl CockpitWs {
    /// Starts cockpit-ws on `listener` (systemd socket activation: fd 3, `LISTEN_FDS=1`)
    /// for the public `origin` (`https://host:port`), serving under `url_root` (`""` or e.g.
    /// `/admin`), with its config in `conf_dir` (which cockpit-wsinstance must be able to
    /// read). The socket listens already, so it is ready at once.
    pub fn start(
        conf_dir: &Path,
        log: &Path,
        name: &str,
        listener: TcpListener,
        origin: &str,
        url_root: &str,
    ) -> Self {
        let port = listener.local_addr().unwrap().port();
        fs::create_dir_all(conf_dir.join("cockpit")).unwrap();
        for dir in [conf_dir, &conf_dir.join("cockpit")] {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let wss = origin.replacen("https://", "wss://", 1);
        let mut conf = format!(
            "# Written by testkit (examples/cockpit/cockpit.conf explains each line).\n\
             [WebService]\nOrigins = {origin} {wss}\nProtocolHeader = X-Forwarded-Proto\n"
        );
        if !url_root.is_empty() {
            conf.push_str(&format!("UrlRoot = {url_root}\n"));
        }
        let conf_file = conf_dir.join("cockpit/cockpit.conf");
        fs::write(&conf_file, conf).unwrap();
        fs::set_permissions(&conf_file, fs::Permissions::from_mode(0o644)).unwrap();
        // setpriv keeps the pid, so the shell's $$ is cockpit-ws's LISTEN_PID; it drops the
        // parent-death signal with the credentials unless told to keep it.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "LISTEN_PID=$$ exec \"$@\"", "sh", "setpriv"])
            .args([
                "--reuid=cockpit-wsinstance",
                "--regid=cockpit-wsinstance",
                "--clear-groups",
                "--pdeathsig=keep",
                COCKPIT_WS,
                "--no-tls",
                "--port",
                "0",
            ])
            .env("LISTEN_FDS", "1")
            .env("XDG_CONFIG_DIRS", conf_dir)
            .env("G_MESSAGES_DEBUG", "cockpit-ws cockpit-protocol");
        let fd: OwnedFd = listener.into();
        let raw = fd.as_raw_fd();
        // SAFETY: dup2 and fcntl are async-signal-safe; `fd` outlives the spawn below.
        unsafe {
            cmd.pre_exec(move || {
                if raw == 3 {
                    if libc::fcntl(3, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(raw, 3) != 3 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let proc = Proc::spawn(name, cmd, log).with_grace(Duration::from_secs(5));
        drop(fd);
        Self {
            port,
            url_root: url_root.to_string(),
            proc,
        }
    }

    /// [`CockpitWs::start`] as process `name` of `stack`, for the public origin of the
    /// host `label` (config in the stack's `NAME-xdg`, log in `logs/NAME.log`).
    pub fn in_stack(
        stack: &Stack,
        name: &str,
        listener: TcpListener,
        label: &str,
        url_root: &str,
    ) -> Self {
        Self::start(
            &stack.dir.join(format!("{name}-xdg")),
            &stack.log_path(name),
            name,
            listener,
            &stack.origin(label),
            url_root,
        )
    }

    /// `http://127.0.0.1:<port>`, the route's upstream.
    pub fn upstream(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// How many requests for exactly `path` cockpit-ws has answered so far (from its debug
    /// log: one "PATH: queueing complete" line per response).
    pub fn requests_for(&self, path: &str) -> usize {
        let needle = format!(": {path}: queueing complete");
        self.proc
            .log_text()
            .lines()
            .filter(|l| l.ends_with(&needle))
            .count()
    }

    /// How many times cockpit-ws has started cockpit-session (each login attempt).
    pub fn sessions_spawned(&self) -> usize {
        self.proc
            .log_text()
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
        Self::start_with_websocket_bound(None).await
    }

    /// The Cockpit stack with `websocket_max_duration` (e.g. `"4s"`) on the `cockpit`
    /// route, when given.
    pub async fn start_with_websocket_bound(bound: Option<&str>) -> Self {
        crate::tier::require_cockpit();
        let lock = PamLock::acquire();
        let (main, sub) = (cockpit_listener(), cockpit_listener());
        let upstream = |l: &TcpListener| format!("http://{}", l.local_addr().unwrap());
        let mut builder = StackBuilder::default()
            .route("cockpit", "cockpit", "{ any_authenticated_user: true }")
            .route_upstream("cockpit", &upstream(&main))
            .route_option(
                "cockpit",
                "cockpit: { accounts: { alice@example.com: alice } }",
            );
        if let Some(bound) = bound {
            builder = builder.route_option("cockpit", &format!("websocket_max_duration: {bound}"));
        }
        let stack = builder
            .route("cockpit-sub", "apps", "{ any_authenticated_user: true }")
            .route_path("cockpit-sub", "/admin")
            .route_upstream("cockpit-sub", &upstream(&sub))
            .route_option("cockpit-sub", "cockpit: { account: email_local_part }")
            .route("cockpit-echo", "apps", "{ any_authenticated_user: true }")
            .route_path("cockpit-echo", "/echo")
            .route_option(
                "cockpit-echo",
                "cockpit: { accounts: { alice@example.com: alice } }",
            )
            .start()
            .await;
        let cockpit = CockpitWs::in_stack(&stack, "cockpit-ws", main, "cockpit", "");
        let sub = CockpitWs::in_stack(&stack, "cockpit-ws-sub", sub, "apps", "/admin");
        let (bin, jwks, pam) = install_pam(
            &lock,
            &stack,
            &[stack.authority("cockpit"), stack.authority("apps")],
            &[],
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

/// One Cockpit route, `cockpit` on `cockpit.localhost` (any signed-in user, with the
/// route's `cockpit:` line as given), in front of one cockpit-ws, behind Envoy or a proxy
/// ([`Front`]), with the PAM block in place; for tests of one Cockpit feature.
pub struct OneCockpit {
    // Dropped in this order: PAM block, Cockpit, the stack; the lock last.
    pub pam: PamBlock,
    pub cockpit: CockpitWs,
    pub stack: Stack,
    pub bin: PathBuf,
    pub lock: PamLock,
}

impl OneCockpit {
    /// `cockpit_yaml` is the route's `cockpit:` line, e.g.
    /// `cockpit: { accounts: { alice@example.com: alice } }`. With `admin`, pam-verify
    /// records administrative access in [`OneCockpit::admin_grants`].
    pub async fn start(front: Front, cockpit_yaml: &str, admin: bool) -> Self {
        crate::tier::require_cockpit();
        let lock = PamLock::acquire();
        let listener = cockpit_listener();
        let upstream = format!("http://{}", listener.local_addr().unwrap());
        let stack = StackBuilder::default()
            .front(front)
            .route("cockpit", "cockpit", "{ any_authenticated_user: true }")
            .route_upstream("cockpit", &upstream)
            .route_option("cockpit", cockpit_yaml)
            .start()
            .await;
        let cockpit = CockpitWs::in_stack(&stack, "cockpit-ws", listener, "cockpit", "");
        let extra = if admin {
            vec![
                "--admin-grants".to_string(),
                stack.dir.join("admin-grants").display().to_string(),
            ]
        } else {
            Vec::new()
        };
        let (bin, _, pam) = install_pam(&lock, &stack, &[stack.authority("cockpit")], &extra);
        Self {
            pam,
            cockpit,
            stack,
            bin,
            lock,
        }
    }

    /// Where `pam-verify --admin-grants` records administrative access.
    pub fn admin_grants(&self) -> PathBuf {
        self.stack.dir.join("admin-grants")
    }

    /// Signs `user` in at Cockpit's page and does Cockpit's login request; returns the
    /// browser's cookies for the socket (ours and Cockpit's), or panics with why not.
    pub async fn log_in(&self, user: &str) -> String {
        use reqwest::StatusCode;
        let browser = self.stack.browser();
        let home = self.stack.url("cockpit", "/");
        let (page, visited) = browser.login(&home, user, user).await;
        assert_eq!(
            page.status(),
            StatusCode::OK,
            "{user}: {}\n{}",
            crate::list(&visited),
            self.cockpit.log_tail()
        );
        let login = crate::send(
            browser
                .get(&self.stack.url("cockpit", "/cockpit/login"))
                .header("accept", "application/json, text/plain, */*")
                .header("x-requested-with", "XMLHttpRequest"),
        )
        .await;
        let status = login.status();
        let body = login.text().await.unwrap();
        assert_eq!(
            status,
            StatusCode::OK,
            "{user}: GET /cockpit/login: {body}\n{}",
            self.cockpit.log_tail()
        );
        let cookies = browser.cookie_header(&home).unwrap();
        assert!(cookies.contains("cockpit="), "{user}: {cookies}");
        cookies
    }

    /// `wss://cockpit.localhost:PORT/cockpit/socket`.
    pub fn socket_url(&self) -> String {
        self.stack
            .url("cockpit", "/cockpit/socket")
            .replacen("https://", "wss://", 1)
    }
}

impl Drop for OneCockpit {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("==== cockpit-ws ====\n{}", self.cockpit.log_tail());
        }
    }
}

/// Cockpit's administrative access for single sign-on users, as `portcullis cockpit-admin`
/// writes it: a sudoers drop-in (checked with `visudo -cf` before it is put in place) and
/// its PAM service, both named after the test, removed on drop (also when the test panics).
pub struct AdminAccess {
    sudoers: PathBuf,
    pam: PathBuf,
}

impl AdminAccess {
    pub fn install(_lock: &PamLock, name: &str, bin: &Path, grants: &Path) -> Result<Self> {
        let service = format!("portcullis-cockpit-admin-{name}");
        let sudoers = PathBuf::from(format!("/etc/sudoers.d/portcullis-cockpit-{name}"));
        let pam = PathBuf::from(format!("/etc/pam.d/{service}"));
        let generate = |args: &[&str]| -> Result<String> {
            let out = run(Command::new(bin).arg("cockpit-admin").args(args));
            if !out.status.success() {
                bail!(
                    "portcullis cockpit-admin {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok(String::from_utf8(out.stdout)?)
        };
        let sudoers_text = generate(&["sudoers", "--pam-service", &service])?;
        let pam_text = generate(&[
            "pam",
            "--bin",
            &bin.display().to_string(),
            "--grants",
            &grants.display().to_string(),
        ])?;
        // The guard exists before anything is written, so a failure halfway cleans up.
        let guard = Self {
            sudoers: sudoers.clone(),
            pam: pam.clone(),
        };
        fs::write(&pam, pam_text).with_context(|| format!("write {}", pam.display()))?;
        // A broken sudoers file breaks sudo for the whole machine: check it first, and
        // put it in place by rename (sudo skips names with a dot).
        let tmp = PathBuf::from(format!("/etc/sudoers.d/.portcullis-{name}.tmp"));
        fs::write(&tmp, sudoers_text)?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o440))?;
        let check = run(Command::new("visudo").arg("-cf").arg(&tmp));
        if !check.status.success() {
            let _ = fs::remove_file(&tmp);
            bail!(
                "visudo rejects the generated sudoers file: {}{}",
                String::from_utf8_lossy(&check.stdout),
                String::from_utf8_lossy(&check.stderr)
            );
        }
        fs::rename(&tmp, &sudoers)?;
        Ok(guard)
    }
}

impl Drop for AdminAccess {
    fn drop(&mut self) {
        for file in [&self.sudoers, &self.pam] {
            if let Err(e) = fs::remove_file(file)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                eprintln!("CANNOT REMOVE {}: {e}; remove it by hand", file.display());
            }
        }
    }
}

/// What PAM needs for `stack`: the portcullis under test where PAM may run it, the JWKS
/// file, and the tests' block in `/etc/pam.d/cockpit` for `audiences` (with `extra`
/// arguments for pam-verify).
fn install_pam(
    lock: &PamLock,
    stack: &Stack,
    audiences: &[String],
    extra: &[String],
) -> (PathBuf, PathBuf, PamBlock) {
    let bin = install_portcullis(&stack.dir);
    let jwks = write_jwks(stack);
    let pam = PamBlock::write_with(
        lock,
        Path::new(PAM_FILE),
        PAM_BLOCK,
        &bin,
        &jwks,
        &stack.origin("auth"),
        audiences,
        extra,
    )
    .unwrap_or_else(|e| panic!("write the PAM block: {e:#}"));
    (bin, jwks, pam)
}

/// Copies the portcullis under test to `dir/bin/portcullis` (root-owned, 0755): PAM runs it
/// as root, so it must not be a file another user could replace.
pub fn install_portcullis(dir: &Path) -> PathBuf {
    let bin_dir = dir.join("bin");
    fs::create_dir_all(&bin_dir).unwrap();
    // The stack's own directory too: cockpit-wsinstance reads its config below it.
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&bin_dir, fs::Permissions::from_mode(0o755)).unwrap();
    let bin = bin_dir.join("portcullis");
    fs::copy(portcullis_bin(), &bin).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// `portcullis jwks -c CONFIG > DIR/jwks.json`, as the install steps do.
pub fn write_jwks(stack: &Stack) -> PathBuf {
    let path = stack.dir.join("jwks.json");
    fs::write(&path, crate::portcullis::jwks(&stack.config)).unwrap();
    path
}

// ---------------------------------------------------------------------------------------
// Node helpers and the PAM helper
// ---------------------------------------------------------------------------------------

/// Runs `node testkit/js/SCRIPT ARGS` and parses its stdout as JSON; panics with its
/// output when it fails.
pub fn node_json(script: &str, args: &[String]) -> serde_json::Value {
    let out = run(crate::node_script(script).args(args));
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
/// testkit/js/cockpit_ws.mjs; returns its report (`status`, `init`, `whoami`, `user`).
pub fn open_socket(url: &str, cookie: &str, origin: &str) -> serde_json::Value {
    socket(url, cookie, origin, &[])
}

/// Opens the socket like [`open_socket`] and keeps it open until the server ends it (at
/// most `timeout_ms`); the report has `closed_after_ms`.
pub fn hold_socket(url: &str, cookie: &str, origin: &str, timeout_ms: u64) -> serde_json::Value {
    socket(
        url,
        cookie,
        origin,
        &[
            "--timeout-ms".into(),
            timeout_ms.to_string(),
            "--hold".into(),
        ],
    )
}

/// [`open_socket`], then "Turn on administrative access" with the superuser bridge `id`
/// (`sudo`) and `id -u` in a `"superuser": "require"` channel: the report's `superuser`
/// has `start` (what `cockpit.Superuser.Start` answered), `uid` and `close`.
pub fn open_socket_as_superuser(
    url: &str,
    cookie: &str,
    origin: &str,
    id: &str,
) -> serde_json::Value {
    socket(url, cookie, origin, &["--superuser".into(), id.into()])
}

fn socket(url: &str, cookie: &str, origin: &str, extra: &[String]) -> serde_json::Value {
    let mut args: Vec<String> = vec![
        "--url".into(),
        url.into(),
        "--cookie".into(),
        cookie.into(),
        "--origin".into(),
        origin.into(),
        "--ca".into(),
        test_certs().ca.display().to_string(),
        "--connect-to".into(),
        "127.0.0.1".into(),
    ];
    args.extend_from_slice(extra);
    node_json("cockpit_ws.mjs", &args)
}

/// The issuer of the Cockpit tokens in the process tests (the pam fixture's authenticate_url).
pub const TEST_ISSUER: &str = "https://auth.localhost:8443";

/// Tokens made with jose by testkit/js/cockpit_tokens.mjs, case name → token, issued by
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian 12's /etc/pam.d/cockpit (cockpit-ws 287), auth part.
    const DEBIAN_PAM: &str = "#%PAM-1.0
auth       required     pam_sepermit.so
auth       substack     common-auth
auth       optional     pam_ssh_add.so
# List of users to deny access to Cockpit, by default root is included.
auth       required     pam_listfile.so item=user sense=deny file=/etc/cockpit/disallowed-users onerr=succeed
account    required     pam_nologin.so
account    include      common-account
";

    fn write(file: &Path, name: &str, bin: &str, jwks: &str, auds: &[&str]) -> Result<String> {
        let auds: Vec<String> = auds.iter().map(|a| a.to_string()).collect();
        pam_write(
            file,
            name,
            Path::new(bin),
            Path::new(jwks),
            "https://auth.example",
            &auds,
        )?;
        Ok(fs::read_to_string(file)?)
    }

    #[test]
    fn the_pam_block_is_written_idempotently_and_keeps_every_other_line() {
        let dir = crate::temp_dir("pam-edit");
        let file = dir.join("cockpit");
        fs::write(&file, DEBIAN_PAM).unwrap();
        let (bin, jwks) = ("/usr/local/bin/portcullis", "/etc/portcullis/jwks.json");

        let once = write(&file, "t", bin, jwks, &["a.example", "b.example:8443"]).unwrap();
        let lines: Vec<&str> = once.lines().collect();
        assert_eq!(lines[1], "auth       required     pam_sepermit.so");
        assert!(
            lines[2].starts_with("# BEGIN portcullis-cockpit t "),
            "{once}"
        );
        assert!(lines[3].contains("pam_listfile.so") && lines[3].contains("sense=deny"));
        assert_eq!(
            lines[4],
            "auth       sufficient   pam_exec.so expose_authtok quiet /usr/local/bin/portcullis pam-verify --jwks /etc/portcullis/jwks.json --issuer https://auth.example --replay-dir /run/portcullis-pam --audience a.example --audience b.example:8443"
        );
        assert_eq!(lines[5], "# END portcullis-cockpit t");
        assert_eq!(lines[6], "auth       substack     common-auth");
        // Writing the same block again changes nothing; new values replace the block in place.
        assert_eq!(
            write(&file, "t", bin, jwks, &["a.example", "b.example:8443"]).unwrap(),
            once
        );
        let other = write(&file, "t", "/opt/p", "/etc/j.json", &["c.example"]).unwrap();
        assert_eq!(
            other.matches("# BEGIN portcullis-cockpit").count(),
            1,
            "{other}"
        );
        assert!(other.contains(
            "/opt/p pam-verify --jwks /etc/j.json --issuer https://auth.example --replay-dir /run/portcullis-pam --audience c.example"
        ));
        assert_eq!(other.lines().nth(2), Some(lines[2]), "replaced in place");
        // Another block is kept apart, and removing one leaves the other.
        let both = write(&file, "demo", "/d/p", "/d/j.json", &["d.example"]).unwrap();
        assert_eq!(
            both.matches("# BEGIN portcullis-cockpit").count(),
            2,
            "{both}"
        );
        pam_remove(&file, "t").unwrap();
        let demo_only = fs::read_to_string(&file).unwrap();
        assert!(demo_only.contains("/d/p pam-verify") && !demo_only.contains("/opt/p"));
        // Removing everything gives back the file byte for byte.
        pam_remove(&file, "demo").unwrap();
        assert_eq!(fs::read_to_string(&file).unwrap(), DEBIAN_PAM);
        pam_remove(&file, "absent").unwrap();
        assert_eq!(fs::read_to_string(&file).unwrap(), DEBIAN_PAM);

        // PAM splits on white space: such paths are refused, and the file is left alone.
        assert!(write(&file, "t", "/a b/portcullis", "/j.json", &["a.example"]).is_err());
        assert!(write(&file, "bad name", bin, jwks, &["a.example"]).is_err());
        assert_eq!(fs::read_to_string(&file).unwrap(), DEBIAN_PAM);
        // The file keeps its mode.
        fs::set_permissions(&file, fs::Permissions::from_mode(0o640)).unwrap();
        write(&file, "t", bin, jwks, &["a.example"]).unwrap();
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o640
        );
        fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn without_an_anchor_the_block_goes_before_the_first_auth_line_or_at_the_end() {
        let block = "# BEGIN portcullis-cockpit x\nB\n# END portcullis-cockpit x\n";
        let text = "#%PAM-1.0\n-auth optional pam_x.so\nauth include common-auth\n";
        assert_eq!(
            edited(text, "x", Some(block)).unwrap(),
            format!("#%PAM-1.0\n{block}-auth optional pam_x.so\nauth include common-auth\n")
        );
        assert_eq!(
            edited("account include a\n", "x", Some(block)).unwrap(),
            format!("account include a\n{block}")
        );
        assert!(edited("# BEGIN portcullis-cockpit x\nauth x\n", "x", None).is_err());
        // A block named as a prefix of another is not the other.
        let two = edited(
            &edited(text, "x", Some(block)).unwrap(),
            "xy",
            Some(&block.replace(" x", " xy")),
        )
        .unwrap();
        assert_eq!(edited(&two, "x", None).unwrap().matches("BEGIN").count(), 1);
    }
}
