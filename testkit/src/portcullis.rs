//! portcullis as a child process: the binary, its secrets, and `serve` on port 0 with a
//! ready file that reports the bound addresses.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine;

use crate::proc::{Proc, run};

/// How long a start may take before it is a failure.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The portcullis binary: `$PORTCULLIS_BIN`, else the one cargo built beside this
/// executable (`target/<profile>/portcullis`, for a test in `target/<profile>/deps/` and
/// for the `testkit` binary alike).
pub fn portcullis_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("PORTCULLIS_BIN") {
            return PathBuf::from(p);
        }
        let exe = std::env::current_exe().expect("the current executable");
        let dir = exe.parent().expect("the executable's directory");
        [dir.join("portcullis"), dir.join("../portcullis")]
            .into_iter()
            .find(|p| p.is_file())
            .unwrap_or_else(|| {
                panic!(
                    "no portcullis binary beside {}: build it (cargo build, or cargo test \
                     --workspace, builds it first) or set PORTCULLIS_BIN",
                    exe.display()
                )
            })
    })
}

/// Paths of the secret files of one config.
#[derive(Debug, Clone)]
pub struct Secrets {
    pub cookie_secret: PathBuf,
    pub client_secret: PathBuf,
    pub signing_key: PathBuf,
}

impl Secrets {
    /// The files in `dir/secrets/`, made or not.
    pub fn in_dir(dir: &Path) -> Self {
        let secrets = dir.join("secrets");
        Self {
            cookie_secret: secrets.join("cookie_secret"),
            client_secret: secrets.join("client_secret"),
            signing_key: secrets.join("signing_key.pem"),
        }
    }

    /// Every secret value, for the log scan: both secrets and the key's base64 lines.
    pub fn values(&self) -> Vec<String> {
        let mut seen = Vec::new();
        for file in [&self.cookie_secret, &self.client_secret] {
            seen.push(
                fs::read_to_string(file)
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
            );
        }
        let key = fs::read_to_string(&self.signing_key).unwrap_or_default();
        seen.extend(
            key.lines()
                .filter(|l| !l.starts_with("-----"))
                .map(str::to_string),
        );
        seen
    }
}

/// Writes fresh secrets into `dir/secrets/`: `cookie_secret` (32 random bytes, base64),
/// `client_secret` and `signing_key.pem` (made by `portcullis keygen`).
pub fn write_secrets(dir: &Path) -> Secrets {
    let secrets = Secrets::in_dir(dir);
    ensure_secrets(&secrets, true);
    secrets
}

/// Makes each secret file of `secrets` that is missing (all of them when `fresh`), private
/// to the user; keeps the others.
pub fn ensure_secrets(secrets: &Secrets, fresh: bool) {
    use std::os::unix::fs::PermissionsExt;
    let dir = secrets.cookie_secret.parent().unwrap();
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).unwrap();
    let write = |path: &Path, value: String| {
        if fresh || !path.exists() {
            let _ = fs::remove_file(path);
            fs::write(path, value).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
        }
    };
    let b64 = base64::engine::general_purpose::STANDARD.encode(crate::random_bytes(32));
    write(&secrets.cookie_secret, format!("{b64}\n"));
    write(
        &secrets.client_secret,
        format!("{}\n", crate::hex(&crate::random_bytes(24))),
    );
    if fresh || !secrets.signing_key.exists() {
        let _ = fs::remove_file(&secrets.signing_key);
        keygen(&secrets.signing_key);
    }
}

/// `portcullis keygen -o FILE`: a new PKCS#8 P-256 key (mode 0600).
pub fn keygen(file: &Path) {
    let out = run(Command::new(portcullis_bin())
        .arg("keygen")
        .arg("-o")
        .arg(file));
    assert!(
        out.status.success() && file.exists(),
        "portcullis keygen -o {} failed ({}): {}",
        file.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `portcullis jwks -c CONFIG`, the JWKS document it prints.
pub fn jwks(config: &Path) -> String {
    let out = run(Command::new(portcullis_bin())
        .arg("jwks")
        .arg("-c")
        .arg(config));
    assert!(
        out.status.success(),
        "portcullis jwks -c {}: {}",
        config.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("the JWKS is UTF-8")
}

/// The config text `yaml` with `signing_key_file` set to `signing` and
/// `published_key_files` to `published` (none: the key removed), as an operator edits it
/// between the README's key rotation steps. Top-level keys only, one line each, as the test
/// kit writes them.
pub fn with_keys(yaml: &str, signing: &str, published: &[&str]) -> String {
    let mut lines: Vec<String> = yaml
        .lines()
        .filter(|l| !l.starts_with("published_key_files:"))
        .map(|l| {
            if l.starts_with("signing_key_file:") {
                format!("signing_key_file: {signing}")
            } else {
                l.to_string()
            }
        })
        .collect();
    if !published.is_empty() {
        lines.push(format!("published_key_files: [{}]", published.join(", ")));
    }
    lines.join("\n") + "\n"
}

/// The config text `yaml` with `cookie.secret_file` set to `current` and
/// `cookie.previous_secret_files` to `previous` (the README's cookie secret rotation), in
/// the `cookie:` section as the test kit writes it (two-space indent, one line a key).
pub fn with_cookie_secrets(yaml: &str, current: &str, previous: &[&str]) -> String {
    let mut out = Vec::new();
    let mut in_cookie = false;
    for line in yaml.lines() {
        if !line.starts_with(' ') {
            in_cookie = line.starts_with("cookie:");
        }
        if in_cookie && line.starts_with("  previous_secret_files:") {
            continue;
        }
        if in_cookie && line.starts_with("  secret_file:") {
            out.push(format!("  secret_file: {current}"));
            if !previous.is_empty() {
                out.push(format!(
                    "  previous_secret_files: [{}]",
                    previous.join(", ")
                ));
            }
            continue;
        }
        out.push(line.to_string());
    }
    out.join("\n") + "\n"
}

/// What `serve --ready-file` reported.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub jwks: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    /// The session administration API (with an `admin` section in the config).
    pub admin: Option<SocketAddr>,
    pub forward_auth: Option<SocketAddr>,
}

/// Starts `portcullis serve -c CONFIG --ready-file` (with `RUST_LOG=log_level`), waits for
/// the ready file and `/healthz`, then until sign-in on `auth_authority` redirects to the
/// IdP (its discovery has finished).
pub async fn serve(
    name: &str,
    config: &Path,
    log: &Path,
    log_level: &str,
    auth_authority: &str,
) -> Result<(Proc, Bound), String> {
    let (mut proc, bound) = serve_undiscovered(name, config, log, log_level).await?;
    // /healthz answers before IdP discovery has finished; sign-in answers 503 until it has.
    // Only a redirect (to the IdP) means it has: a 429 (the probes themselves count against
    // the sign-in limit per address) is no answer about the IdP.
    let probe = probe_client();
    let sign_in = format!("http://{}/.portcullis/sign_in", bound.http);
    proc.wait_for("IdP discovery", READY_TIMEOUT, || async {
        match probe
            .get(&sign_in)
            .header("host", auth_authority)
            .send()
            .await
        {
            Ok(r) if r.status().is_redirection() => Ok(()),
            Ok(r) => Err(format!("status {}", r.status())),
            Err(e) => Err(e.to_string()),
        }
    })
    .await?;
    Ok((proc, bound))
}

/// [`serve`] without waiting for the IdP's discovery: for a portcullis started while the
/// IdP is down. Waits for the ready file and for `/healthz` (a Redis session store is
/// connected).
pub async fn serve_undiscovered(
    name: &str,
    config: &Path,
    log: &Path,
    log_level: &str,
) -> Result<(Proc, Bound), String> {
    let ready = log.with_extension("ready.json");
    let _ = fs::remove_file(&ready);
    let mut cmd = Command::new(portcullis_bin());
    cmd.arg("serve")
        .arg("-c")
        .arg(config)
        .arg("--ready-file")
        .arg(&ready)
        .env("RUST_LOG", log_level);
    let mut proc = Proc::spawn(name, cmd, log);
    let bound = proc
        .wait_for("ready file", READY_TIMEOUT, || async {
            let text = fs::read_to_string(&ready).map_err(|e| e.to_string())?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
            let addr = |k: &str| v[k].as_str().and_then(|a| a.parse().ok());
            Ok(Bound {
                grpc: addr("grpc").ok_or("no grpc")?,
                http: addr("http").ok_or("no http")?,
                jwks: addr("jwks"),
                metrics: addr("metrics"),
                admin: addr("admin"),
                forward_auth: addr("forward_auth"),
            })
        })
        .await?;
    let probe = probe_client();
    let healthz = format!("http://{}/healthz", bound.http);
    proc.wait_for("healthz", READY_TIMEOUT, || async {
        match probe.get(&healthz).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("status {}", r.status())),
            Err(e) => Err(e.to_string()),
        }
    })
    .await?;
    Ok((proc, bound))
}

/// A plain client for readiness probes (no proxy, no redirects, short timeout).
pub fn probe_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(2))
        .build()
        .expect("probe client builds")
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "\
idp:
  client_secret_file: secrets/client_secret
cookie:
  name: _portcullis
  secret_file: secrets/cookie_secret
  lifetime: 8h
signing_key_file: secrets/signing_key.pem
routes: []
";

    #[test]
    fn key_rotation_edits() {
        let step1 = with_keys(CONFIG, "secrets/signing_key.pem", &["secrets/next.pem"]);
        assert!(step1.ends_with("routes: []\npublished_key_files: [secrets/next.pem]\n"));
        let step2 = with_keys(
            &step1,
            "secrets/next.pem",
            &["secrets/a.pem", "secrets/b.pem"],
        );
        assert!(
            step2.contains("\nsigning_key_file: secrets/next.pem\n"),
            "{step2}"
        );
        assert!(step2.ends_with("published_key_files: [secrets/a.pem, secrets/b.pem]\n"));
        assert_eq!(step2.matches("published_key_files").count(), 1, "{step2}");
        let step3 = with_keys(&step2, "secrets/next.pem", &[]);
        assert!(!step3.contains("published_key_files"), "{step3}");
        assert_eq!(with_keys(CONFIG, "secrets/signing_key.pem", &[]), CONFIG);
    }

    #[test]
    fn cookie_secret_rotation_edits() {
        let rotated = with_cookie_secrets(CONFIG, "secrets/c2", &["secrets/cookie_secret"]);
        assert!(
            rotated.contains(
                "cookie:\n  name: _portcullis\n  secret_file: secrets/c2\n  previous_secret_files: [secrets/cookie_secret]\n  lifetime: 8h\n"
            ),
            "{rotated}"
        );
        // The IdP's client secret is not the cookie's.
        assert!(rotated.contains("  client_secret_file: secrets/client_secret\n"));
        let again = with_cookie_secrets(&rotated, "secrets/c3", &["secrets/c2"]);
        assert_eq!(again.matches("previous_secret_files").count(), 1, "{again}");
        assert!(
            again.contains("  secret_file: secrets/c3\n  previous_secret_files: [secrets/c2]\n")
        );
        let dropped = with_cookie_secrets(&again, "secrets/c3", &[]);
        assert!(!dropped.contains("previous_secret_files"), "{dropped}");
    }
}
