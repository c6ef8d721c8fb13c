//! Listening sockets handed over by the parent (systemd socket activation: `LISTEN_PID`,
//! `LISTEN_FDS`, `LISTEN_FDNAMES`, descriptors from 3). A supervisor (or a test) binds
//! first, so a port is never released and re-bound, and a restart keeps the socket.
//! Each descriptor is named after the listener it replaces: `grpc`, `http`, `jwks`, `metrics`, `admin`, `forward_auth`.

use std::collections::HashMap;
use std::os::fd::{FromRawFd, RawFd};

/// Sockets by listener name.
#[derive(Debug, Default)]
pub struct Inherited(HashMap<String, std::net::TcpListener>);

/// The first descriptor passed (`SD_LISTEN_FDS_START`).
const FIRST_FD: RawFd = 3;

impl Inherited {
    /// Takes the sockets the environment describes, once, before any thread is started
    /// (it clears the variables so that no child inherits them). None: an empty set.
    pub fn take() -> Result<Self, String> {
        let Ok(pid) = std::env::var("LISTEN_PID") else {
            return Ok(Self::default());
        };
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return Ok(Self::default());
        }
        let count: RawFd = std::env::var("LISTEN_FDS")
            .map_err(|_| "LISTEN_PID without LISTEN_FDS".to_string())?
            .trim()
            .parse()
            .map_err(|_| "LISTEN_FDS is not a number".to_string())?;
        let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
        let names: Vec<&str> = names.split(':').filter(|n| !n.is_empty()).collect();
        if names.len() != count as usize {
            return Err(format!(
                "LISTEN_FDNAMES names {} sockets, LISTEN_FDS says {count}: name each (grpc, http, jwks, metrics, admin, forward_auth)",
                names.len()
            ));
        }
        let mut sockets = HashMap::new();
        for (i, name) in names.into_iter().enumerate() {
            let fd = FIRST_FD + i as RawFd;
            if !is_socket(fd) {
                return Err(format!("descriptor {fd} ({name}) is not a socket"));
            }
            // SAFETY: the descriptor is ours by the activation protocol (LISTEN_PID is this
            // process), is a socket (checked), and nothing else in the process owns it.
            let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
            set_cloexec(fd);
            listener
                .set_nonblocking(true)
                .map_err(|e| format!("descriptor {fd} ({name}): {e}"))?;
            if sockets.insert(name.to_string(), listener).is_some() {
                return Err(format!("two sockets are named {name}"));
            }
        }
        for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            // SAFETY: called from `main`'s thread before the runtime starts any other.
            unsafe { std::env::remove_var(var) };
        }
        Ok(Self(sockets))
    }

    /// The socket named `name`, if one was passed.
    pub fn remove(&mut self, name: &str) -> Option<std::net::TcpListener> {
        self.0.remove(name)
    }

    /// Names passed but not used by any listener.
    pub fn unused(&self) -> Vec<String> {
        let mut names: Vec<String> = self.0.keys().cloned().collect();
        names.sort();
        names
    }
}

fn is_socket(fd: RawFd) -> bool {
    // SAFETY: fstat writes into the zeroed struct and reads nothing else.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    (unsafe { libc::fstat(fd, &mut stat) } == 0) && (stat.st_mode & libc::S_IFMT) == libc::S_IFSOCK
}

fn set_cloexec(fd: RawFd) {
    // SAFETY: fcntl on a descriptor we own, with flag arguments only.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
        }
    }
}
