//! The dev OpenID Connect provider (`examples/demo/idp.mjs`, npm oidc-provider) as a child
//! process. It binds its port itself (port 0 for any) and reports it on its ready line.

use std::path::Path;
use std::process::Command;

use crate::portcullis::READY_TIMEOUT;
use crate::proc::Proc;

/// A running IdP.
pub struct Idp {
    pub proc: Proc,
    /// `http://127.0.0.1:PORT`, its issuer.
    pub issuer: String,
    pub port: u16,
}

/// What the IdP is started with.
pub struct IdpOptions<'a> {
    /// 0 for any free port.
    pub port: u16,
    pub client_secret_file: &'a Path,
    /// portcullis's authenticate URL (the redirect URIs are on it).
    pub auth_origin: &'a str,
    /// More arguments for `idp.mjs` (`--access-token-ttl 6`, `--rotate-refresh-tokens`).
    pub extra: &'a [String],
}

/// Starts the IdP and waits for its `ready issuer=… port=…` line.
pub async fn start(name: &str, opts: &IdpOptions<'_>, log: &Path) -> Result<Idp, String> {
    let IdpOptions {
        port,
        client_secret_file,
        auth_origin,
        extra,
    } = opts;
    let (redirect_uri, post_logout_redirect_uri) = redirect_uris(auth_origin);
    let mut cmd = Command::new("node");
    cmd.current_dir(crate::repo())
        .arg("examples/demo/idp.mjs")
        .args(["--port", &port.to_string()])
        .args(["--client-id", "portcullis"])
        .arg("--client-secret-file")
        .arg(client_secret_file)
        .args(["--redirect-uri", &redirect_uri])
        .args(["--post-logout-redirect-uri", &post_logout_redirect_uri])
        .args(extra.iter());
    let mut proc = Proc::spawn(name, cmd, log);
    let port = proc
        .wait_for("ready line", READY_TIMEOUT, || async {
            let text = std::fs::read_to_string(log).map_err(|e| e.to_string())?;
            ready_port(&text).ok_or_else(|| "not yet".to_string())
        })
        .await?;
    Ok(Idp {
        proc,
        issuer: format!("http://127.0.0.1:{port}"),
        port,
    })
}

/// portcullis's redirect URI and post-logout redirect URI on the auth host `auth_origin`,
/// which an IdP must have registered.
pub fn redirect_uris(auth_origin: &str) -> (String, String) {
    (
        format!("{auth_origin}/.portcullis/oauth2/callback"),
        format!("{auth_origin}/.portcullis/signed_out"),
    )
}

/// The port of `idp: ready issuer=… port=NNNN …`.
fn ready_port(log: &str) -> Option<u16> {
    log.lines()
        .find(|l| l.starts_with("idp: ready "))?
        .split_whitespace()
        .find_map(|w| w.strip_prefix("port="))?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_ready_line_names_the_port() {
        assert_eq!(
            super::ready_port(
                "x\nidp: ready issuer=http://127.0.0.1:41234 port=41234 client_id=portcullis\n"
            ),
            Some(41234)
        );
        assert_eq!(super::ready_port("idp: GET / 200\n"), None);
    }
}
