//! Headless Chromium (Debian's, driven by npm playwright-core through
//! `testkit/js/browser_walk.mjs`) walking a stack's pages: the browser tier's one driver.
//! A walk is a list of [`Step`]s; each is recorded as a [`StepReport`] with a screenshot in
//! `tests/artifacts/` (kept after the test), and the test asserts on what the pages said.
//!
//! The test CA is trusted, not ignored: the script puts it into an NSS database in a
//! temporary HOME, where Chromium looks for trusted roots.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{repo, run};

/// How long one step may wait for a page, element or URL before the walk fails.
const STEP_TIMEOUT_MS: u64 = 60_000;

/// One thing the browser does, in the browser context named `context` (made fresh on first
/// use: another person's browser).
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Also the screenshot's file name (`tests/artifacts/<name>.png`).
    pub name: String,
    pub context: String,
    #[serde(flatten)]
    pub action: Action,
}

/// What a [`Step`] does; see `testkit/js/browser_walk.mjs`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Opens `url` and follows where it leads.
    Goto { url: String },
    /// Fills in the IdP's login form on the current page, submits it and waits for a URL
    /// that starts with `until`.
    SignIn {
        user: String,
        password: String,
        until: String,
    },
    /// Presses the Sign out button of the current portcullis page and waits for a URL that
    /// starts with `until`.
    SignOut { until: String },
    /// Waits until the Cockpit shell names `expect_user` (its host switcher and title).
    CockpitShell { expect_user: String },
}

impl Step {
    pub fn goto(name: &str, context: &str, url: &str) -> Self {
        Self::new(name, context, Action::Goto { url: url.into() })
    }

    /// Signs in with the dev IdP's users, whose password is their name.
    pub fn sign_in(name: &str, context: &str, user: &str, until: &str) -> Self {
        let action = Action::SignIn {
            user: user.into(),
            password: user.into(),
            until: until.into(),
        };
        Self::new(name, context, action)
    }

    pub fn sign_out(name: &str, context: &str, until: &str) -> Self {
        Self::new(
            name,
            context,
            Action::SignOut {
                until: until.into(),
            },
        )
    }

    pub fn cockpit_shell(name: &str, context: &str, expect_user: &str) -> Self {
        let action = Action::CockpitShell {
            expect_user: expect_user.into(),
        };
        Self::new(name, context, action)
    }

    fn new(name: &str, context: &str, action: Action) -> Self {
        Self {
            name: name.into(),
            context: context.into(),
            action,
        }
    }
}

/// One main-frame navigation request of a step (each redirect is one).
#[derive(Debug, Clone, Deserialize)]
pub struct Navigation {
    pub method: String,
    pub url: String,
    /// `None` when no answer came (the request failed or was replaced).
    pub status: Option<u16>,
}

/// What the browser saw at the end of a step.
#[derive(Debug, Clone, Deserialize)]
pub struct StepReport {
    pub name: String,
    pub ok: bool,
    pub error: Option<String>,
    /// The page's URL.
    #[serde(default)]
    pub url: String,
    /// The status of the document's response.
    pub status: Option<u16>,
    /// The document response's headers (lowercase names).
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub title: String,
    /// What the page shows (`document.body.innerText`).
    #[serde(default)]
    pub text: String,
    /// The document's response body.
    pub body: Option<String>,
    /// Every main-frame navigation of the step, redirects included, in order.
    #[serde(default)]
    pub requests: Vec<Navigation>,
    /// The page's console errors and warnings during the step (a Content-Security-Policy
    /// violation shows only there).
    #[serde(default)]
    pub console: Vec<String>,
    pub screenshot: PathBuf,
    /// The Cockpit shell's user (after [`Action::CockpitShell`]).
    pub current_username: Option<String>,
}

impl StepReport {
    /// Whether any navigation of this step went to a URL starting with `prefix`.
    pub fn visited(&self, prefix: &str) -> bool {
        self.requests.iter().any(|n| n.url.starts_with(prefix))
    }

    /// The navigations, one per line, for failure messages.
    pub fn trail(&self) -> String {
        self.requests
            .iter()
            .map(|n| format!("  {} {} -> {:?}", n.method, n.url, n.status))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The request id the page shows (`Request id: <code>…</code>` on portcullis's pages).
    pub fn request_id(&self) -> Option<&str> {
        let after = self.text.split("Request id:").nth(1)?;
        after.split_whitespace().next()
    }
}

/// The directory the screenshots are kept in (gitignored).
pub fn artifacts() -> PathBuf {
    repo().join("tests/artifacts")
}

/// Runs `steps` in one headless Chromium that trusts the CA in the PEM file `ca`, and
/// returns one report per step. Panics, with the report of the step that failed and where
/// its screenshot is, unless every step ran.
pub fn walk(ca: &Path, steps: &[Step]) -> Vec<StepReport> {
    let (reports, finished, stderr) = run_walk(Some(ca), steps);
    if let Some(failed) = reports.iter().find(|r| !r.ok) {
        panic!(
            "chromium step {} failed: {}\nat {} (status {:?}), navigations:\n{}\nconsole: {:?}\npage text:\n{}\nscreenshot: {}\n{stderr}",
            failed.name,
            failed.error.as_deref().unwrap_or("?"),
            failed.url,
            failed.status,
            failed.trail(),
            failed.console,
            failed.text,
            failed.screenshot.display()
        );
    }
    assert!(
        finished && reports.len() == steps.len(),
        "the walk did not finish: {reports:?}\n{stderr}"
    );
    reports
}

/// Runs `steps` in a Chromium that trusts no test CA (its NSS database is empty), up to the
/// first step that fails; returns their reports. What a browser that was never told about
/// the CA sees: proof that the walks do not pass by ignoring certificate errors.
pub fn walk_untrusted(steps: &[Step]) -> Vec<StepReport> {
    run_walk(None, steps).0
}

/// Runs browser_walk.mjs: the reports of the steps it ran (each with its screenshot),
/// whether it ran them all, and its stderr.
fn run_walk(ca: Option<&Path>, steps: &[Step]) -> (Vec<StepReport>, bool, String) {
    crate::tier::require_chromium();
    let dir = artifacts();
    for step in steps {
        // A stale screenshot must not pass for this run's.
        let _ = fs::remove_file(dir.join(format!("{}.png", step.name)));
    }
    let plan = serde_json::json!({
        "ca": ca,
        "artifacts": dir,
        "timeout_ms": STEP_TIMEOUT_MS,
        "steps": steps,
    });
    let out = run(crate::node_script("browser_walk.mjs").args(["--plan", &plan.to_string()]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "browser_walk.mjs printed no report ({e}; {}):\n{stdout}\n{stderr}",
            out.status
        )
    });
    // The script's own failure (Chromium did not start), not a step's.
    assert!(
        report["error"].is_null(),
        "browser_walk.mjs failed: {}\n{stderr}",
        report["error"]
    );
    let reports: Vec<StepReport> = serde_json::from_value(report["steps"].clone())
        .unwrap_or_else(|e| panic!("browser_walk.mjs's report does not parse ({e}): {report}"));
    for r in &reports {
        eprintln!(
            "chromium step {}: {} {:?} {:?} (screenshot {})",
            r.name,
            r.url,
            r.status,
            r.title,
            r.screenshot.display()
        );
        assert!(
            !r.ok || fs::metadata(&r.screenshot).is_ok_and(|m| m.len() > 5_000),
            "no screenshot of step {} at {}",
            r.name,
            r.screenshot.display()
        );
    }
    (reports, out.status.success(), stderr)
}
