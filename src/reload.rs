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

/// Watches for SIGHUP and for changes to `files` (the config and everything it names), and
/// reloads on either; runs until dropped.
pub async fn watch(live: Arc<Live>, path: PathBuf, files: Vec<PathBuf>) {
    watch_every(live, path, files, POLL_EVERY).await
}

/// [`watch`], looking at the files every `poll`.
pub async fn watch_every(live: Arc<Live>, path: PathBuf, mut files: Vec<PathBuf>, poll: Duration) {
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut seen = stamps(&files);
    loop {
        let by_signal = tokio::select! {
            _ = tokio::time::sleep(poll) => false,
            _ = async {
                #[cfg(unix)]
                match hangup.as_mut() {
                    Some(h) => { h.recv().await; }
                    None => std::future::pending::<()>().await,
                }
                #[cfg(not(unix))]
                std::future::pending::<()>().await
            } => true,
        };
        let now = stamps(&files);
        if !by_signal && now == seen {
            continue;
        }
        seen = now;
        let why = if by_signal {
            "SIGHUP"
        } else {
            "a file changed"
        };
        let metrics = live.app().metrics.clone();
        match reload(&live, &path).await {
            Ok(_) => {
                metrics.reloads_ok.inc();
                files = live_files(&path, &live);
                seen = stamps(&files);
                tracing::info!(reason = why, files = files.len(), "config reloaded");
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
