//! Child processes: started with their output in a log file, stopped by pid (SIGTERM, then
//! SIGKILL after a grace period), and waited on with a deadline, never a fixed sleep.

use std::fs::{self, File};
use std::future::Future;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// How many log lines a failure message shows.
pub const LOG_TAIL_LINES: usize = 80;
/// How often a condition is polled.
const POLL_EVERY: Duration = Duration::from_millis(25);

/// A child process whose stdout and stderr go to a log file. Dropping it stops it.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
    /// How long SIGTERM may take before SIGKILL; zero sends SIGKILL at once.
    grace: Duration,
}

impl Proc {
    /// Starts `cmd` (stdin from /dev/null, output appended to `log`). The child gets
    /// SIGKILL if the thread that started it dies, so a crashed test leaves nothing behind.
    pub fn spawn(name: &str, cmd: Command, log: &Path) -> Self {
        Self::try_spawn(name, cmd, log, None).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Proc::spawn`] that reports failure, and as root may run the child as another
    /// user: `run_as` (uid, gid) is set before the parent-death signal (a uid change would
    /// clear it).
    pub fn try_spawn(
        name: &str,
        mut cmd: Command,
        log: &Path,
        run_as: Option<(u32, u32)>,
    ) -> Result<Self, String> {
        if let Some(dir) = log.parent() {
            fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        }
        let file = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("create {}: {e}", log.display()))?;
        let err = file
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        cmd.stdin(Stdio::null()).stdout(file).stderr(err);
        // SAFETY: only async-signal-safe syscalls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if let Some((uid, gid)) = run_as
                    && (libc::setgroups(1, &gid) != 0
                        || libc::setgid(gid) != 0
                        || libc::setuid(uid) != 0)
                {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name} ({:?}): {e}", cmd.get_program()))?;
        Ok(Self {
            name: name.to_string(),
            child: Some(child),
            log: log.to_path_buf(),
            grace: Duration::ZERO,
        })
    }

    /// Stops this process with SIGTERM and up to `grace` to exit (then SIGKILL).
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Sets how long SIGTERM may take before SIGKILL, for a process already started.
    pub fn set_grace(&mut self, grace: Duration) {
        self.grace = grace;
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the process by pid (SIGTERM and the grace period, or SIGKILL) and reaps it.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if !self.grace.is_zero() {
            let pid = child.id() as libc::pid_t;
            // SAFETY: kill has no memory-safety requirements; the pid is our unreaped child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + self.grace;
            while Instant::now() < deadline {
                if let Ok(Some(status)) = child.try_wait() {
                    return Some(status);
                }
                std::thread::sleep(POLL_EVERY);
            }
            eprintln!(
                "{} did not stop within {:?}: SIGKILL",
                self.name, self.grace
            );
        }
        let _ = child.kill();
        child.wait().ok()
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// The last lines of the log.
    pub fn log_tail(&self) -> String {
        tail(&self.log, LOG_TAIL_LINES)
    }

    /// The whole log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `check` until it gives a value; fails with the log if the process exits first
    /// or `timeout` passes. `what` names the condition in the message.
    pub async fn wait_for<T, F, Fut>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut check: F,
    ) -> Result<T, String>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, String>>,
    {
        let started = Instant::now();
        loop {
            let last = match check().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if let Some(status) = self.exited() {
                return Err(format!(
                    "{} exited ({status}) before {what}; log {}:\n{}",
                    self.name,
                    self.log.display(),
                    self.log_tail()
                ));
            }
            if started.elapsed() > timeout {
                return Err(format!(
                    "{}: no {what} after {timeout:?} (last: {last}); log {}:\n{}",
                    self.name,
                    self.log.display(),
                    self.log_tail()
                ));
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `check` until it gives `Some`, or `timeout` passes (`None`).
pub async fn poll_until<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if started.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| format!("({}: {e})", path.display()));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs a command to completion, capturing its output.
pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}
