//! Hot reload: on SIGHUP, or when the config file or any file it names changes (secrets,
//! keys, CA bundles), the config is read and validated whole again, and only then swapped
//! in: the next request gets the new app, requests already running finish on the old one.
//! Sessions, counters and (when its settings did not change) the identity provider carry
//! over, so nobody is signed out. An invalid config is refused with the same messages as
//! `check-config`, logged and counted, and the old one keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::app::{App, Live, Parts};
use crate::config::{self, ConfigErrors};

/// How often the named files are looked at for changes.
const POLL_EVERY: Duration = Duration::from_secs(2);

/// Why a reload was refused (the old config keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(ConfigErrors),
    #[error("session_store: {0}")]
    Store(String),
}

/// Reads `path` again and, if it is valid, serves it through `live`.
pub async fn reload(live: &Live, path: &Path) -> Result<(), ReloadError> {
    let config = config::load(path).map_err(ReloadError::Config)?;
    let old = live.app();
    if crate::app::restart_fingerprint(&config) != old.restart_fingerprint {
        tracing::warn!(
            "the new config changes the listeners or the session store; those take effect at the next restart"
        );
    }
    let parts = Parts::carried_over(&old, &config);
    let new_idp = !Arc::ptr_eq(&parts.idp, &old.idp);
    let app = Arc::new(App::with_parts(config, parts));
    if new_idp {
        crate::oidc::spawn_probe(&app.idp);
        // Discover before swapping, so that sign-ins do not answer 503 in between; if the
        // IdP is down, swap anyway and keep trying in the background.
        let idp = app.idp.clone();
        if tokio::time::timeout(Duration::from_secs(3), idp.discover_until_ready())
            .await
            .is_err()
        {
            tracing::warn!(
                "the new identity provider is not reachable yet; retrying in the background"
            );
            let idp = app.idp.clone();
            tokio::spawn(async move { idp.discover_until_ready().await });
        }
    }
    live.swap(app);
    Ok(())
}

/// Watches for SIGHUP and for changes to the config file and every file it names, and
/// reloads on either. Made right after the config was read, so that what the files look
/// like then is what is served: a change made while portcullis starts (or right after it
/// says it is ready) is a change, not the baseline.
pub struct Watcher {
    path: PathBuf,
    files: Vec<PathBuf>,
    seen: Vec<Option<(SystemTime, u64)>>,
    poll: Duration,
    #[cfg(unix)]
    hangup: Option<tokio::signal::unix::Signal>,
}

impl Watcher {
    /// The files (`files`: the ones the config at `path` was just read from) as they are
    /// now.
    pub fn new(path: PathBuf, files: Vec<PathBuf>) -> Self {
        let files = if files.is_empty() {
            vec![path.clone()]
        } else {
            files
        };
        Self {
            seen: stamps(&files),
            path,
            files,
            poll: POLL_EVERY,
            #[cfg(unix)]
            hangup: None,
        }
    }

    /// Catches SIGHUP from now on (inside the runtime). Before readiness is announced: a
    /// `systemctl reload` right after the start must not meet SIGHUP's default action,
    /// which ends the process.
    pub fn catch_hangup(mut self) -> Self {
        #[cfg(unix)]
        {
            self.hangup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        }
        self
    }

    /// Looks at the files every `poll` instead of every 2 s.
    pub fn poll_every(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// Reloads into `live` on each change or SIGHUP; runs until dropped.
    pub async fn run(mut self, live: Arc<Live>) {
        loop {
            let by_signal = tokio::select! {
                _ = tokio::time::sleep(self.poll) => false,
                _ = async {
                    #[cfg(unix)]
                    match self.hangup.as_mut() {
                        Some(h) => { h.recv().await; }
                        None => std::future::pending::<()>().await,
                    }
                    #[cfg(not(unix))]
                    std::future::pending::<()>().await
                } => true,
            };
            let now = stamps(&self.files);
            if !by_signal && now == self.seen {
                continue;
            }
            self.seen = now;
            let why = if by_signal {
                "SIGHUP"
            } else {
                "a file changed"
            };
            let metrics = live.app().metrics.clone();
            match reload(&live, &self.path).await {
                Ok(_) => {
                    metrics.reloads_ok.inc();
                    self.files = live_files(&self.path, &live);
                    self.seen = stamps(&self.files);
                    tracing::info!(reason = why, files = self.files.len(), "config reloaded");
                }
                Err(e) => {
                    metrics.reloads_refused.inc();
                    for line in e.to_string().lines() {
                        tracing::error!(
                            reason = why,
                            "config reload refused, the old config keeps serving: {line}"
                        );
                    }
                }
            }
        }
    }
}

/// The files the current config was read from.
fn live_files(path: &Path, live: &Live) -> Vec<PathBuf> {
    let files = live.app().files.clone();
    if files.is_empty() {
        vec![path.to_path_buf()]
    } else {
        files
    }
}

/// Modification time and length of each file (missing: none), to notice a change.
fn stamps(files: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    files
        .iter()
        .map(|f| {
            let m = std::fs::metadata(f).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}

#[cfg(test)]
mod tests;
