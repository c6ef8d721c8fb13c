//! portcullis's test kit: starts and stops the whole stack — the dev IdP
//! (`examples/demo/idp.mjs`) or LemonLDAP::NG ([`lemonldap`]), the echo upstream (in
//! process), Envoy, portcullis and Cockpit — waits until each part is ready, signs in, and
//! cleans up. The integration tests
//! (`tests/*.rs`), `scripts/demo` (`testkit demo`) and `scripts/bench` (`testkit bench`) all
//! use it, so process start, stop and readiness are written once, here.
//!
//! Every child is started with its output in a log file and stopped by its pid; every port
//! is bound first (port 0) and reported back, except Envoy's HTTPS listener, whose port must
//! be known before the config that names it is written: it is checked by Envoy binding it,
//! and the start is redone on another port if that fails (see [`stack`]).

pub mod bench;
pub mod browser;
pub mod certs;
pub mod chromium;
pub mod cockpit;
pub mod demo;
pub mod echo;
pub mod envoy;
pub mod grafana;
pub mod html;
pub mod idp;
pub mod lemonldap;
pub mod portcullis;
pub mod proc;
pub mod proxies;
pub mod redis;
pub mod soak;
pub mod stack;
pub mod tier;

pub use browser::{BROWSER_ACCEPT, Browser, is_test_host, list, location, send};
pub use certs::{Certs, test_certs};
pub use echo::{Echo, EchoRequest};
pub use portcullis::{Secrets, portcullis_bin, write_secrets};
pub use proc::{Proc, poll_until, run, tail};
pub use proxies::Front;
pub use stack::{IdpChoice, Ports, Stack, StackBuilder, shared_lemonldap};

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// The repository root (the workspace, one level above this crate).
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ sits in the repository")
}

/// `node testkit/js/SCRIPT`, once node and the dev IdP's modules (jose, ws, playwright-core)
/// are known to be there: the node helpers of the tests.
pub fn node_script(script: &str) -> std::process::Command {
    tier::require_node_modules();
    let mut cmd = std::process::Command::new("node");
    cmd.arg(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("js")
            .join(script),
    );
    cmd
}

/// A TCP port on 127.0.0.1 that was free a moment ago and is never handed out twice in this
/// process. Only for ports that a process must know before the one that binds it starts
/// (Envoy's listener; a config that must name a port nobody binds): whoever binds it
/// checks that the bind worked.
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

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// An exclusive `flock` on a file, held until dropped (closing the file also releases it).
pub struct FileLock {
    _file: File,
}

impl FileLock {
    /// Locks `path` (created if missing), waiting for other holders in any process.
    pub fn exclusive(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Self::on(file)
    }

    /// Locks an open file or directory.
    pub fn on(file: File) -> std::io::Result<Self> {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a valid open descriptor has no memory-safety requirements.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { _file: file })
    }
}
