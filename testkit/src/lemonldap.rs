//! LemonLDAP::NG 2.16 (Debian bookworm) as a real OpenID Connect provider for tests.
//!
//! [`start`] runs the portal on a loopback port chosen at run time, from a state directory
//! of the caller's: nginx (one process, foreground) in front of `llng-fastcgi-server` (one
//! process, no FCGI::ProcManager) on a unix socket. Both are [`Proc`]s of the calling
//! thread (they die with it), logs go to files in the state directory, and
//! [`LemonLdap::stop`] (or drop) kills them by pid. The configuration is written directly as
//! the file backend's `conf/lmConf-1.json` (no `lemonldap-ng-cli`), from
//! `examples/lemonldap/lmConf.template.json`, with one relying party per [`RpSettings`].
//!
//! [`shared`] is the test binary's one instance, started at first use and kept until the
//! process exits, with the redirect URIs of a pool of Envoy ports registered for every
//! relying party (a [`crate::Stack`] takes its port from the pool).
//!
//! [`Portal`] drives the portal's HTML the way a browser would (cookie jar, login form with
//! its hidden `token`/`url` fields, consent and logout confirmation pages) and hands back
//! the redirect to the relying party.
//!
//! Install the Debian packages first: `scripts/lib/lemonldap.sh` (`ensure_lemonldap`;
//! `scripts/test` does). See `examples/lemonldap/README.md`.
//!
//! Runs as root (the portal then runs as `www-data`: `llng-fastcgi-server` refuses root;
//! the state directory's parents must be searchable by it) or as any other user.
//! Call [`start`] from the thread that should own the processes (not from
//! `spawn_blocking`: the processes die with the thread that started them).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::proc::{Proc, tail};

const INI_TEMPLATE: &str = include_str!("../../examples/lemonldap/lemonldap-ng.ini.template");
const NGINX_TEMPLATE: &str = include_str!("../../examples/lemonldap/nginx.conf.template");
const CONF_TEMPLATE: &str = include_str!("../../examples/lemonldap/lmConf.template.json");

const LLNG_FASTCGI_SERVER: &str = "/usr/sbin/llng-fastcgi-server";
const NGINX: &str = "/usr/sbin/nginx";
/// The user the portal runs as when we are root (`llng-fastcgi-server` refuses root).
const PORTAL_USER: &str = "www-data";
const PACKAGES: &str = "lemonldap-ng lemonldap-ng-fastcgi-server nginx libgd-securityimage-perl libimage-magick-perl libstring-random-perl libio-string-perl";

// ---------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------

/// One relying party (`oidcRPMetaDataOptions.<name>` and friends).
///
/// What LemonLDAP 2.16 cannot vary per RP, so there is no field for it:
/// - the token endpoint client authentication: `client_secret_basic` and
///   `client_secret_post` are both always accepted (and advertised);
/// - back-channel logout: not implemented in 2.16 (`backchannel_logout_supported: false`,
///   the `back` logout type is commented out, "TODO #1194"); only front-channel logout
///   ([`RpSettings::front_channel_logout_url`]), which the portal renders as an `<iframe>`
///   on its own logout page.
#[derive(Clone, Debug)]
pub struct RpSettings {
    /// The RP's key in LemonLDAP's configuration: letters, digits, `-`, `_`.
    pub name: String,
    pub client_id: String,
    /// `None`: a public client (`oidcRPMetaDataOptionsPublic`), no secret checked.
    pub client_secret: Option<String>,
    /// Exact-match allow-list (`oidcRPMetaDataOptionsRedirectUris`).
    pub redirect_uris: Vec<String>,
    /// Allowed `post_logout_redirect_uri`s (`oidcRPMetaDataOptionsPostLogoutRedirectUris`).
    pub post_logout_redirect_uris: Vec<String>,
    /// `oidcRPMetaDataOptionsIDTokenSignAlg`: `none`, `HS256/384/512` (with the client
    /// secret) or `RS256/384/512`. A new RP gets `HS512`.
    pub id_token_alg: String,
    /// `oidcRPMetaDataOptionsIDTokenForceClaims`: put the user claims (email, name, groups,
    /// …) in the ID token too. Off by default: they are only in the UserInfo response.
    pub id_token_force_claims: bool,
    /// `oidcRPMetaDataOptionsAccessTokenJWT`: access tokens as RS256 JWTs.
    pub access_token_jwt: bool,
    /// `oidcRPMetaDataOptionsRequirePKCE`.
    pub require_pkce: bool,
    /// `oidcRPMetaDataOptionsBypassConsent`. Off by default: the portal asks once per
    /// session and RP (the [`Portal`] helper accepts).
    pub bypass_consent: bool,
    /// `oidcRPMetaDataOptionsLogoutBypassConfirm`. Off by default: RP-initiated logout
    /// shows "Do you want to logout?" (the [`Portal`] helper accepts).
    pub logout_bypass_confirm: bool,
    /// `oidcRPMetaDataOptionsRefreshToken`: a refresh token with every code exchange
    /// ("online": it dies with the SSO session).
    pub refresh_tokens: bool,
    /// `oidcRPMetaDataOptionsAllowOffline`: honour `scope=offline_access` (needs
    /// `prompt=consent` or [`RpSettings::bypass_consent`]); the refresh token then outlives
    /// the SSO session.
    pub allow_offline: bool,
    /// `oidcRPMetaDataOptionsLogoutUrl` (front-channel logout, `<iframe>`).
    pub front_channel_logout_url: Option<String>,
    /// `oidcRPMetaDataOptionsLogoutSessionRequired`: add `iss` and `sid` to that URL.
    pub front_channel_logout_session_required: bool,
    /// `oidcRPMetaDataExportedVars.<name>`: claim name to `"session attribute[;type[;array]]"`
    /// (type `string|int|bool`, array `auto|always|never`).
    pub claims: Vec<(String, String)>,
    /// `oidcRPMetaDataOptionsExtraClaims.<name>`: scope name to space-separated claims.
    /// Not needed while `oidcServiceIgnoreScopeForClaims` is 1 (as in Debian's default
    /// configuration and here).
    pub extra_claims: Vec<(String, String)>,
    /// `oidcRPMetaDataOptionsIDTokenExpiration` (seconds; default 3600).
    pub id_token_expiration: Option<u64>,
    /// `oidcRPMetaDataOptionsAccessTokenExpiration` (seconds; default 3600).
    pub access_token_expiration: Option<u64>,
    /// Any other `oidcRPMetaDataOptions*` key, with its value as JSON text.
    pub extra_options: Vec<(String, String)>,
}

impl RpSettings {
    /// LemonLDAP's own behaviour for a new RP, as the manager creates it: ID tokens signed
    /// HS512 with the client secret and carrying no user claims (`sub` only; email, name,
    /// groups come from UserInfo), consent asked, logout confirmation asked, PKCE optional,
    /// no refresh tokens. Claims: LemonLDAP's default `name`, `family_name`, `email`, plus
    /// `groups` (always a list) and `preferred_username`, which a new RP does not have but
    /// every policy test needs.
    pub fn default_claims(client_id: &str, client_secret: &str, redirect_uri: &str) -> Self {
        Self {
            name: conf_key(client_id),
            client_id: client_id.to_string(),
            client_secret: Some(client_secret.to_string()),
            redirect_uris: vec![redirect_uri.to_string()],
            post_logout_redirect_uris: Vec::new(),
            id_token_alg: "HS512".to_string(),
            id_token_force_claims: false,
            access_token_jwt: false,
            require_pkce: false,
            bypass_consent: false,
            logout_bypass_confirm: false,
            refresh_tokens: false,
            allow_offline: false,
            front_channel_logout_url: None,
            front_channel_logout_session_required: false,
            claims: vec![
                ("name".into(), "cn".into()),
                ("family_name".into(), "sn".into()),
                ("email".into(), "mail".into()),
                ("preferred_username".into(), "uid".into()),
                ("groups".into(), "groups;string;always".into()),
            ],
            extra_claims: Vec::new(),
            id_token_expiration: None,
            access_token_expiration: None,
            extra_options: Vec::new(),
        }
    }

    /// The settings an admin would pick for portcullis: RS256, claims in the ID token too,
    /// PKCE required, no consent page, no logout confirmation.
    pub fn id_token_claims(client_id: &str, client_secret: &str, redirect_uri: &str) -> Self {
        Self {
            id_token_alg: "RS256".to_string(),
            id_token_force_claims: true,
            require_pkce: true,
            bypass_consent: true,
            logout_bypass_confirm: true,
            ..Self::default_claims(client_id, client_secret, redirect_uri)
        }
    }

    fn options_json(&self) -> String {
        let mut o: Vec<(String, String)> = Vec::new();
        let mut put = |k: &str, v: String| o.push((format!("oidcRPMetaDataOptions{k}"), v));
        put("ClientID", json_str(&self.client_id));
        match &self.client_secret {
            Some(secret) => put("ClientSecret", json_str(secret)),
            None => put("Public", "1".into()),
        }
        put("RedirectUris", json_str(&self.redirect_uris.join(" ")));
        if !self.post_logout_redirect_uris.is_empty() {
            put(
                "PostLogoutRedirectUris",
                json_str(&self.post_logout_redirect_uris.join(" ")),
            );
        }
        put("IDTokenSignAlg", json_str(&self.id_token_alg));
        put("IDTokenForceClaims", bit(self.id_token_force_claims));
        put("AccessTokenJWT", bit(self.access_token_jwt));
        put("RequirePKCE", bit(self.require_pkce));
        put("BypassConsent", bit(self.bypass_consent));
        put("LogoutBypassConfirm", bit(self.logout_bypass_confirm));
        put("RefreshToken", bit(self.refresh_tokens));
        put("AllowOffline", bit(self.allow_offline));
        if let Some(url) = &self.front_channel_logout_url {
            put("LogoutUrl", json_str(url));
            put("LogoutType", json_str("front"));
            put(
                "LogoutSessionRequired",
                bit(self.front_channel_logout_session_required),
            );
        }
        if let Some(s) = self.id_token_expiration {
            put("IDTokenExpiration", s.to_string());
        }
        if let Some(s) = self.access_token_expiration {
            put("AccessTokenExpiration", s.to_string());
        }
        for (k, v) in &self.extra_options {
            o.push((k.clone(), v.clone()));
        }
        json_object(&o)
    }
}

/// Instance-wide settings for [`start_with`].
#[derive(Clone, Debug)]
pub struct Options {
    /// LemonLDAP's `logLevel`: `error`, `warn`, `notice`, `info` or `debug`.
    pub log_level: String,
    /// How long to wait for the discovery document.
    pub ready_timeout: Duration,
    /// More top-level configuration keys, each with its value as JSON text (e.g.
    /// `("oidcServiceAllowHybridFlow", "1")`). A key of the template is replaced.
    pub extra_conf: Vec<(String, String)>,
    /// Port to listen on; 0 picks a free one (and retries if it was taken meanwhile).
    pub port: u16,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            log_level: "info".into(),
            ready_timeout: Duration::from_secs(30),
            extra_conf: Vec::new(),
            port: 0,
        }
    }
}

/// A user of LemonLDAP's Demo backend (password = login), as LemonLDAP reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DemoUser {
    pub login: &'static str,
    pub password: &'static str,
    /// `sub` (the default `whatToTrace`: the login, lower-cased) and `preferred_username`.
    pub sub: &'static str,
    pub name: &'static str,
    pub email: &'static str,
    /// In the order LemonLDAP's `groups` claim lists them: Perl hash order, which the
    /// launcher fixes with `PERL_HASH_SEED=0` (compare as a set all the same).
    pub groups: &'static [&'static str],
}

/// The Demo backend's accounts (`Lemonldap::NG::Portal::UserDB::Demo`).
pub const DEMO_USERS: [DemoUser; 3] = [
    DemoUser {
        login: "dwho",
        password: "dwho",
        sub: "dwho",
        name: "Doctor Who",
        email: "dwho@badwolf.org",
        groups: &["users", "timelords"],
    },
    DemoUser {
        login: "rtyler",
        password: "rtyler",
        sub: "rtyler",
        name: "Rose Tyler",
        email: "rtyler@badwolf.org",
        groups: &["users", "earthlings"],
    },
    DemoUser {
        login: "msmith",
        password: "msmith",
        sub: "msmith",
        name: "Mickey Smith",
        email: "msmith@badwolf.org",
        groups: &["users", "earthlings"],
    },
];

// ---------------------------------------------------------------------------------------
// The running instance
// ---------------------------------------------------------------------------------------

/// A running LemonLDAP::NG portal. Dropping it kills its processes.
pub struct LemonLdap {
    /// `http://127.0.0.1:<port>` (no trailing slash): the `iss` of its tokens.
    pub issuer: String,
    pub port: u16,
    pub state_dir: PathBuf,
    pub users: &'static [DemoUser],
    pub rps: Vec<RpSettings>,
    /// Time from [`start`] to the first good discovery document.
    pub startup: Duration,
    /// Where that time went: `(step, time since start)` for "files written" (signing key
    /// included), "nginx bound", "portal listening", "discovery ok".
    pub startup_steps: Vec<(&'static str, Duration)>,
    procs: Vec<Proc>,
}

impl LemonLdap {
    /// `<issuer>/.well-known/openid-configuration`.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer)
    }

    /// A Demo user by login (`dwho`, `rtyler`, `msmith`).
    pub fn user(&self, login: &str) -> Option<&'static DemoUser> {
        self.users.iter().find(|u| u.login == login)
    }

    /// The pids of nginx and the portal, for measurements.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.procs
            .iter()
            .filter_map(|p| Some((p.name.clone(), p.pid()?)))
            .collect()
    }

    /// The last `n` lines of each log, for a failing test's output.
    pub fn log_tail(&self, n: usize) -> String {
        log_tails(&self.state_dir, n)
    }

    /// Kills both processes (SIGKILL by pid) and reaps them. Idempotent.
    pub fn stop(&mut self) {
        // The portal first: nginx then answers 502 instead of hanging on the socket.
        for p in self.procs.iter_mut().rev() {
            p.stop();
        }
    }
}

/// The last `n` lines of the portal's and nginx's logs in `state`.
fn log_tails(state: &Path, n: usize) -> String {
    let mut out = String::new();
    for name in ["llng.log", "nginx-error.log"] {
        let _ = writeln!(out, "--- {name}");
        out.push_str(&tail(&state.join(name), n));
        out.push('\n');
    }
    out
}

impl Drop for LemonLdap {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts LemonLDAP::NG for one relying party with default [`Options`].
pub async fn start(state_dir: &Path, rp: &RpSettings) -> Result<LemonLdap, String> {
    start_with(state_dir, std::slice::from_ref(rp), &Options::default()).await
}

/// Starts LemonLDAP::NG for the given relying parties.
///
/// `state_dir` may be new or used before: the signing key in it is kept, everything else
/// (configuration, sessions, caches, logs) is written afresh.
pub async fn start_with(
    state_dir: &Path,
    rps: &[RpSettings],
    opts: &Options,
) -> Result<LemonLdap, String> {
    let t0 = Instant::now();
    for bin in [LLNG_FASTCGI_SERVER, NGINX] {
        if !Path::new(bin).exists() {
            return Err(format!(
                "{bin} is missing: install the Debian packages {PACKAGES} \
                 (scripts/lib/lemonldap.sh: ensure_lemonldap)"
            ));
        }
    }
    check_rps(rps)?;
    fs::create_dir_all(state_dir).map_err(|e| format!("create {}: {e}", state_dir.display()))?;
    let state = state_dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", state_dir.display()))?;
    let state_str = state
        .to_str()
        .filter(|s| {
            s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c))
        })
        .ok_or_else(|| {
            format!(
                "state directory {} must be a plain path (letters, digits, / . _ - +): \
                 it goes into nginx and Perl configuration files",
                state.display()
            )
        })?
        .to_string();

    check_not_running(&state)?;
    let run_as = if crate::is_root() {
        let ids = lookup_user(PORTAL_USER)?;
        check_reachable(&state, ids)?;
        Some(ids)
    } else {
        None
    };

    prepare_dirs(&state, run_as)?;
    let mut steps = Vec::new();
    let (private_pem, public_pem) = signing_key(&state)?;
    let key_id = format!("llng-{:016x}", fnv1a(public_pem.as_bytes()));

    let ini = fill(
        INI_TEMPLATE,
        &[("STATE", &state_str), ("LOG_LEVEL", &opts.log_level)],
    )?;
    write_file(&state.join("lemonldap-ng.ini"), &ini, 0o644, None)?;

    steps.push(("files written", t0.elapsed()));
    let mut procs = Vec::new();
    let port = start_nginx(&state, &state_str, opts.port, &mut procs)?;
    steps.push(("nginx bound", t0.elapsed()));
    let issuer = format!("http://127.0.0.1:{port}");

    let conf = render_conf(
        &state_str,
        &issuer,
        &private_pem,
        &public_pem,
        &key_id,
        rps,
        &opts.extra_conf,
    )?;
    // The portal reads it (it holds the signing key and client secrets: not world-readable).
    write_file(&state.join("conf/lmConf-1.json"), &conf, 0o600, run_as)?;

    procs.push(spawn_portal(&state, run_as)?);
    let mut llng = LemonLdap {
        issuer,
        port,
        state_dir: state,
        users: &DEMO_USERS,
        rps: rps.to_vec(),
        startup: Duration::ZERO,
        startup_steps: steps,
        procs,
    };
    wait_ready(&mut llng, opts.ready_timeout, t0).await?;
    llng.startup = t0.elapsed();
    llng.startup_steps.push(("discovery ok", llng.startup));
    Ok(llng)
}

fn check_rps(rps: &[RpSettings]) -> Result<(), String> {
    if rps.is_empty() {
        return Err("at least one relying party is needed".into());
    }
    for rp in rps {
        if rp.name.is_empty()
            || !rp
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "RP name {:?}: letters, digits, - and _ only",
                rp.name
            ));
        }
        if rp.redirect_uris.is_empty() {
            return Err(format!("RP {}: no redirect URI", rp.name));
        }
        if rp.id_token_alg.starts_with("HS") && rp.client_secret.is_none() {
            return Err(format!(
                "RP {}: {} needs a client secret",
                rp.name, rp.id_token_alg
            ));
        }
    }
    Ok(())
}

/// A configuration key from a client id.
fn conf_key(client_id: &str) -> String {
    let key: String = client_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if key.is_empty() { "rp".into() } else { key }
}

fn render_conf(
    state: &str,
    issuer: &str,
    private_pem: &str,
    public_pem: &str,
    key_id: &str,
    rps: &[RpSettings],
    extra: &[(String, String)],
) -> Result<String, String> {
    let options: Vec<(String, String)> = rps
        .iter()
        .map(|rp| (rp.name.clone(), rp.options_json()))
        .collect();
    let exported: Vec<(String, String)> = rps
        .iter()
        .map(|rp| {
            let claims: Vec<(String, String)> = rp
                .claims
                .iter()
                .map(|(k, v)| (k.clone(), json_str(v)))
                .collect();
            (rp.name.clone(), json_object(&claims))
        })
        .collect();
    let extra_claims: Vec<(String, String)> = rps
        .iter()
        .filter(|rp| !rp.extra_claims.is_empty())
        .map(|rp| {
            let c: Vec<(String, String)> = rp
                .extra_claims
                .iter()
                .map(|(k, v)| (k.clone(), json_str(v)))
                .collect();
            (rp.name.clone(), json_object(&c))
        })
        .collect();
    let date = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        .to_string();
    let mut conf = fill(
        CONF_TEMPLATE,
        &[
            ("CFG_DATE", &date),
            ("STATE", state),
            ("PORTAL", &format!("{issuer}/")),
            ("ISSUER", issuer),
            ("PRIVATE_KEY", &json_str(private_pem)),
            ("PUBLIC_KEY", &json_str(public_pem)),
            ("KEY_ID", key_id),
            ("RP_OPTIONS", &json_object(&options)),
            ("RP_EXPORTED_VARS", &json_object(&exported)),
            ("RP_EXTRA_CLAIMS", &json_object(&extra_claims)),
        ],
    )?;
    if !extra.is_empty() {
        // Later keys win in LemonLDAP's JSON parser (JSON::XS keeps the last duplicate).
        let end = conf.rfind('}').ok_or("template: no closing brace")?;
        let mut more = String::new();
        for (k, v) in extra {
            let _ = write!(more, ",\n   {}: {}", json_str(k), v);
        }
        conf.insert_str(end, &format!("{more}\n"));
    }
    Ok(conf)
}

// ---------------------------------------------------------------------------------------
// State directory
// ---------------------------------------------------------------------------------------

/// Directories the portal writes; wiped at every start.
const PORTAL_DIRS: [&str; 8] = [
    "conf",
    "sessions",
    "sessions/lock",
    "psessions",
    "psessions/lock",
    "cache",
    "notifications",
    "run",
];

fn prepare_dirs(state: &Path, run_as: Option<(u32, u32)>) -> Result<(), String> {
    for d in [
        "conf",
        "sessions",
        "psessions",
        "cache",
        "notifications",
        "run",
        "nginx-tmp",
    ] {
        let p = state.join(d);
        if p.exists() {
            fs::remove_dir_all(&p).map_err(|e| format!("remove {}: {e}", p.display()))?;
        }
    }
    for name in [
        "nginx.pid",
        "llng.log",
        "nginx.log",
        "nginx-error.log",
        "nginx-access.log",
    ] {
        let _ = fs::remove_file(state.join(name));
    }
    for d in PORTAL_DIRS.iter().chain(["nginx-tmp"].iter()) {
        let p = state.join(d);
        fs::create_dir_all(&p).map_err(|e| format!("create {}: {e}", p.display()))?;
        if let (Some((uid, gid)), true) = (run_as, PORTAL_DIRS.contains(d)) {
            std::os::unix::fs::chown(&p, Some(uid), Some(gid))
                .map_err(|e| format!("chown {}: {e}", p.display()))?;
            fs::set_permissions(&p, fs::Permissions::from_mode(0o700))
                .map_err(|e| format!("chmod {}: {e}", p.display()))?;
        }
    }
    Ok(())
}

/// The OIDC signing key pair (PEM), made once per state directory with Perl's
/// Crypt::OpenSSL::RSA, which LemonLDAP itself depends on (no openssl binary needed).
fn signing_key(state: &Path) -> Result<(String, String), String> {
    let private = state.join("oidc-signing-key.pem");
    let public = state.join("oidc-signing-key.pub.pem");
    if let (Ok(k), Ok(p)) = (fs::read_to_string(&private), fs::read_to_string(&public))
        && k.contains("PRIVATE KEY")
        && p.contains("PUBLIC KEY")
    {
        return Ok((k, p));
    }
    // One key per process is enough for tests, and saves ~0.15 s (more on a busy machine)
    // for every instance after the first.
    static KEY: std::sync::Mutex<Option<(String, String)>> = std::sync::Mutex::new(None);
    let mut cached = KEY.lock().unwrap();
    if let Some((k, p)) = cached.as_ref() {
        write_file(&private, k, 0o600, None)?;
        write_file(&public, p, 0o644, None)?;
        return Ok((k.clone(), p.clone()));
    }
    let out = Command::new("perl")
        .args([
            "-MCrypt::OpenSSL::RSA",
            "-e",
            "my $k = Crypt::OpenSSL::RSA->generate_key(2048); \
             print $k->get_private_key_string, $k->get_public_key_x509_string",
        ])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("perl (RSA key generation): {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let split = text.find("-----BEGIN PUBLIC KEY-----");
    let (Some(split), true) = (split, out.status.success()) else {
        return Err(format!(
            "RSA key generation with Crypt::OpenSSL::RSA failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    };
    let (k, p) = (text[..split].to_string(), text[split..].to_string());
    write_file(&private, &k, 0o600, None)?;
    write_file(&public, &p, 0o644, None)?;
    *cached = Some((k.clone(), p.clone()));
    Ok((k, p))
}

fn write_file(path: &Path, text: &str, mode: u32, owner: Option<(u32, u32)>) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).map_err(|e| format!("write {}: {e}", tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", tmp.display()))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&tmp, Some(uid), Some(gid))
            .map_err(|e| format!("chown {}: {e}", tmp.display()))?;
    }
    fs::rename(&tmp, path).map_err(|e| format!("rename to {}: {e}", path.display()))
}

/// Replaces every `{{NAME}}`; an unknown or leftover placeholder is an error.
fn fill(template: &str, vars: &[(&str, &str)]) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() + 4096);
    let mut rest = template;
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let j = after.find("}}").ok_or("template: unclosed {{")?;
        let name = &after[..j];
        let value = vars
            .iter()
            .find(|(k, _)| *k == name)
            .ok_or_else(|| format!("template: no value for {{{{{name}}}}}"))?
            .1;
        out.push_str(value);
        rest = &after[j + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Users (root only)
// ---------------------------------------------------------------------------------------

/// (uid, gid) of a user from /etc/passwd.
fn lookup_user(name: &str) -> Result<(u32, u32), String> {
    let passwd = fs::read_to_string("/etc/passwd").map_err(|e| format!("/etc/passwd: {e}"))?;
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 3 && f[0] == name)
        .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
        .ok_or_else(|| format!("no user {name} in /etc/passwd (the portal runs as it under root)"))
}

/// Refuses a state directory whose nginx (from an earlier [`start`]) still runs: starting
/// again would pull the files from under it.
fn check_not_running(state: &Path) -> Result<(), String> {
    let Ok(pid) = fs::read_to_string(state.join("nginx.pid")) else {
        return Ok(());
    };
    let pid = pid.trim();
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline);
    if cmdline.contains("nginx") && cmdline.contains(&*state.to_string_lossy()) {
        return Err(format!(
            "LemonLDAP from {} is still running (nginx pid {pid}): stop it first",
            state.display()
        ));
    }
    Ok(())
}

/// As root the portal runs as www-data, which must reach the state directory: its parents
/// must let it in (checked), and the directory itself gets o+x if it lacks it (a 0700
/// temporary directory, say; others still cannot list it).
fn check_reachable(state: &Path, (uid, gid): (u32, u32)) -> Result<(), String> {
    let m = fs::metadata(state).map_err(|e| format!("{}: {e}", state.display()))?;
    if m.uid() != uid && m.mode() & 0o001 == 0 {
        fs::set_permissions(
            state,
            fs::Permissions::from_mode((m.mode() & 0o7777) | 0o001),
        )
        .map_err(|e| format!("chmod o+x {}: {e}", state.display()))?;
    }
    for dir in state.ancestors().skip(1) {
        let m = fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mode = m.mode();
        let ok = if m.uid() == uid {
            mode & 0o100 != 0
        } else if m.gid() == gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !ok {
            return Err(format!(
                "the portal runs as {PORTAL_USER} (llng-fastcgi-server refuses root) and cannot \
                 enter {} (mode {:o}); put the state directory elsewhere, e.g. under /tmp",
                dir.display(),
                mode & 0o7777
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------

/// Starts nginx on `port` (0: a free one, retried when taken between check and bind);
/// returns the port once nginx has bound it (it writes its pid file only after that).
fn start_nginx(
    state: &Path,
    state_str: &str,
    port: u16,
    procs: &mut Vec<Proc>,
) -> Result<u16, String> {
    let attempts = if port == 0 { 8 } else { 1 };
    let mut last_err = String::new();
    for _ in 0..attempts {
        let port = if port == 0 { crate::free_port() } else { port };
        let conf = fill(
            NGINX_TEMPLATE,
            &[("STATE", state_str), ("PORT", &port.to_string())],
        )?;
        let conf_path = state.join("nginx.conf");
        write_file(&conf_path, &conf, 0o644, None)?;
        let pid_file = state.join("nginx.pid");
        let _ = fs::remove_file(&pid_file);
        let error_log = state.join("nginx-error.log");
        let mut cmd = Command::new(NGINX);
        cmd.arg("-p")
            .arg(state)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(&error_log)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        let mut proc = Proc::try_spawn("nginx", cmd, &state.join("nginx.log"), None)?;
        let pid = proc.pid().unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(text) = fs::read_to_string(&pid_file)
                && text.trim() == pid.to_string()
            {
                procs.push(proc);
                return Ok(port);
            }
            if let Some(status) = proc.exited() {
                let log = tail(&error_log, 20);
                if log.contains("Address already in use") {
                    last_err = format!("port {port} taken: {log}");
                    break;
                }
                return Err(format!(
                    "nginx exited ({status}):\n{log}\n{}",
                    tail(&state.join("nginx.log"), 20)
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "nginx did not start in 10 s:\n{}",
                    tail(&error_log, 20)
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    Err(format!("nginx could not bind a loopback port: {last_err}"))
}

fn spawn_portal(state: &Path, run_as: Option<(u32, u32)>) -> Result<Proc, String> {
    let mut cmd = Command::new(LLNG_FASTCGI_SERVER);
    cmd.arg("--foreground")
        .arg("--socket")
        .arg(state.join("run/llng-fastcgi.sock"))
        .arg("--pid")
        .arg(state.join("run/llng-fastcgi.pid"))
        .args(["--proc", "1"])
        // No FCGI::ProcManager: one process that serves requests itself, so that killing
        // its pid (or the death of our thread) leaves no orphaned workers behind.
        .arg("--plackOptions=--manager=")
        // Not inherited: llng-fastcgi-server reads USER, GROUP, ENGINE, PM_*, LISTEN, … from
        // the environment (USER=root would make it try to setuid to root).
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LANG", "C.UTF-8")
        .env("HOME", state)
        .env("LLNG_DEFAULTCONFFILE", state.join("lemonldap-ng.ini"))
        .env("LLNG_DEFAULTLOGGER", "Lemonldap::NG::Common::Logger::Std")
        // Perl's hash order is random per process; the Demo backend lists a user's groups
        // in hash order. A fixed seed makes the `groups` claim's order repeatable.
        .env("PERL_HASH_SEED", "0")
        .env("PERL_PERTURB_KEYS", "0");
    Proc::try_spawn("llng-fastcgi-server", cmd, &state.join("llng.log"), run_as)
}

/// Polls the discovery document (the portal compiles on its first request) until it names
/// our issuer.
async fn wait_ready(llng: &mut LemonLdap, timeout: Duration, t0: Instant) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let url = llng.discovery_url();
    let want = format!("\"issuer\":\"{}\"", llng.issuer);
    let deadline = Instant::now() + timeout;
    let socket = llng.state_dir.join("run/llng-fastcgi.sock");
    let mut last;
    loop {
        let exited = llng
            .procs
            .iter_mut()
            .find_map(|p| Some((p.name.clone(), p.exited()?)));
        if let Some((name, status)) = exited {
            return Err(format!(
                "{name} exited ({status}) before LemonLDAP was ready\n{}",
                llng.log_tail(40)
            ));
        }
        // Until the portal listens, nginx could only answer 502 (and log it).
        if !socket.exists() {
            last = "the portal's socket is not there yet".to_string();
            if Instant::now() > deadline {
                return Err(format!(
                    "LemonLDAP not ready after {timeout:?} ({last})\n{}",
                    llng.log_tail(40)
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        if !llng
            .startup_steps
            .iter()
            .any(|(s, _)| *s == "portal listening")
        {
            llng.startup_steps.push(("portal listening", t0.elapsed()));
        }
        match client.get(&url).send().await {
            Ok(resp) => {
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                if status.is_success() && body.replace(' ', "").contains(&want) {
                    return Ok(());
                }
                last = format!("{status}: {}", snippet(&body));
                if status.as_u16() == 500 {
                    // The portal answers, but its initialisation failed: no use waiting.
                    return Err(format!(
                        "LemonLDAP answered {url} with {last}\n{}",
                        llng.log_tail(40)
                    ));
                }
            }
            Err(e) => last = e.to_string(),
        }
        if Instant::now() > deadline {
            return Err(format!(
                "LemonLDAP not ready after {timeout:?} ({url}: {last})\n{}",
                llng.log_tail(40)
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------
// The test binary's instance
// ---------------------------------------------------------------------------------------

/// How many Envoy ports [`shared`] registers redirect URIs for: every [`crate::Stack`] on
/// LemonLDAP takes one (another after a taken port), so this bounds the stacks per binary.
pub const PORT_POOL: usize = 32;

/// The test binary's one LemonLDAP::NG (see [`shared`]).
#[derive(Debug)]
pub struct Shared {
    /// `http://127.0.0.1:<port>`.
    pub issuer: String,
    pub port: u16,
    pub state_dir: PathBuf,
    /// How long [`start_with`] took, and where the time went.
    pub startup: Duration,
    pub startup_steps: Vec<(&'static str, Duration)>,
    /// The relying parties, with the pool's redirect URIs.
    pub rps: Vec<RpSettings>,
    /// What [`shared`] was first called with, to refuse a different set later.
    asked: String,
    ports: std::sync::Mutex<Vec<u16>>,
}

/// What the portal logs at `debug` for each secret it issues.
const GENERATED: [&str; 4] = [
    "Generated code: ",
    "Generated access token: ",
    "Generated id token: ",
    "Generated refresh token: ",
];

/// The state directory and the processes of [`shared`]'s instance, for the clean-up at exit.
static AT_EXIT: std::sync::OnceLock<(PathBuf, Vec<u32>)> = std::sync::OnceLock::new();
/// Set when a test failed: the state directory (logs, sessions) stays for inspection.
static KEEP_STATE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The test binary's LemonLDAP::NG, started by the first caller (the others wait for it)
/// and kept until the process exits, with the relying parties `rps` (their redirect URIs
/// are filled in: `redirect_uris(port)` for each port of a pool of [`PORT_POOL`] Envoy
/// ports, which [`Shared::take_port`] hands out) and `opts`, except that it logs at
/// `debug` whatever `opts.log_level` says: that log names every code and token the portal
/// issues, for [`Shared::secrets`]. Every caller must pass the same `rps` and `opts`.
///
/// Its processes belong to a thread of their own (each test runs on a thread that ends
/// with it); they die with the process, and the state directory is removed at exit unless
/// a test failed ([`Shared::keep_state`]). Panics with the logs if it does not start.
pub fn shared(
    rps: &[RpSettings],
    opts: &Options,
    redirect_uris: fn(u16) -> (String, String),
) -> &'static Shared {
    static SHARED: std::sync::OnceLock<Result<Shared, String>> = std::sync::OnceLock::new();
    let asked = format!("{rps:?} {opts:?}");
    let shared = SHARED
        .get_or_init(|| start_shared(rps, opts, redirect_uris, asked.clone()))
        .as_ref()
        .unwrap_or_else(|e| panic!("LemonLDAP::NG did not start: {e}"));
    assert!(
        shared.asked == asked,
        "lemonldap::shared was called with other relying parties or options than at its \
         start: every test of a binary must pass the same ones"
    );
    shared
}

fn start_shared(
    templates: &[RpSettings],
    opts: &Options,
    redirect_uris: fn(u16) -> (String, String),
    asked: String,
) -> Result<Shared, String> {
    let ports: Vec<u16> = (0..PORT_POOL).map(|_| crate::free_port()).collect();
    let rps: Vec<RpSettings> = templates
        .iter()
        .map(|t| {
            let (redirect, post_logout): (Vec<String>, Vec<String>) =
                ports.iter().map(|&p| redirect_uris(p)).unzip();
            RpSettings {
                redirect_uris: redirect,
                post_logout_redirect_uris: post_logout,
                ..t.clone()
            }
        })
        .collect();
    let dir = crate::temp_dir("lemonldap");
    let (tx, rx) = std::sync::mpsc::channel();
    let thread_opts = Options {
        log_level: "debug".into(),
        ..opts.clone()
    };
    let (thread_rps, thread_dir) = (rps.clone(), dir.clone());
    std::thread::Builder::new()
        .name("lemonldap".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(Err(format!("a runtime: {e}")));
                    return;
                }
            };
            match runtime.block_on(start_with(&thread_dir, &thread_rps, &thread_opts)) {
                Ok(llng) => {
                    let pids = llng.pids().into_iter().map(|(_, pid)| pid).collect();
                    let _ = AT_EXIT.set((llng.state_dir.clone(), pids));
                    let _ = tx.send(Ok((
                        llng.issuer.clone(),
                        llng.port,
                        llng.startup,
                        llng.startup_steps.clone(),
                    )));
                    // The processes die with this thread: it waits for the process to end.
                    loop {
                        std::thread::park();
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        })
        .map_err(|e| format!("cannot start a thread: {e}"))?;
    let (issuer, port, startup, startup_steps) = rx
        .recv()
        .map_err(|_| "the LemonLDAP thread ended without a word".to_string())??;
    // SAFETY: registers a plain function; it runs once, at exit.
    unsafe { libc::atexit(clean_up_at_exit) };
    eprintln!(
        "testkit: LemonLDAP::NG at {issuer} ({} relying parties, state in {}) started in {startup:?}",
        rps.len(),
        dir.display()
    );
    Ok(Shared {
        issuer,
        port,
        state_dir: dir,
        startup,
        startup_steps,
        rps,
        asked,
        ports: std::sync::Mutex::new(ports),
    })
}

/// At exit: kill the shared instance's processes (by pid) and remove its state directory,
/// unless a test failed.
extern "C" fn clean_up_at_exit() {
    let Some((dir, pids)) = AT_EXIT.get() else {
        return;
    };
    for &pid in pids {
        // SAFETY: kill has no memory-safety requirements; the pids are our unreaped children.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
    if KEEP_STATE.load(std::sync::atomic::Ordering::Relaxed) {
        eprintln!(
            "(kept LemonLDAP's state in {} for inspection)",
            dir.display()
        );
    } else {
        let _ = fs::remove_dir_all(dir);
    }
}

impl Shared {
    /// The relying party with this client id.
    pub fn rp(&self, client_id: &str) -> &RpSettings {
        self.rps
            .iter()
            .find(|rp| rp.client_id == client_id)
            .unwrap_or_else(|| panic!("LemonLDAP has no relying party {client_id:?}"))
    }

    /// An Envoy port of the pool (its redirect URIs are registered with every relying
    /// party); each is handed out once.
    pub fn take_port(&self) -> u16 {
        self.ports.lock().unwrap().pop().unwrap_or_else(|| {
            panic!("all {PORT_POOL} Envoy ports of LemonLDAP's pool are taken: raise PORT_POOL")
        })
    }

    /// Keeps the state directory at exit (a test failed).
    pub fn keep_state(&self) {
        KEEP_STATE.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The last `n` lines of the portal's and nginx's logs.
    pub fn log_tail(&self, n: usize) -> String {
        log_tails(&self.state_dir, n)
    }

    /// Every secret LemonLDAP has handed out so far, for a log scan: the client secrets,
    /// every code and token its debug log says it generated, and the ids of its live
    /// sessions (SSO cookies, access tokens: each is a session file).
    pub fn secrets(&self) -> Vec<String> {
        let mut seen: Vec<String> = self
            .rps
            .iter()
            .filter_map(|rp| rp.client_secret.clone())
            .collect();
        let log = fs::read_to_string(self.state_dir.join("llng.log")).unwrap_or_default();
        for line in log.lines() {
            for what in GENERATED {
                if let Some((_, rest)) = line.split_once(what)
                    && let Some(value) = rest.split_whitespace().next()
                {
                    seen.push(value.to_string());
                }
            }
        }
        if let Ok(entries) = fs::read_dir(self.state_dir.join("sessions")) {
            seen.extend(
                entries
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|name| name != "lock"),
            );
        }
        seen
    }
}

// ---------------------------------------------------------------------------------------
// Driving the portal like a browser
// ---------------------------------------------------------------------------------------

/// A browser-like HTTP client for the portal: one cookie jar (the SSO session), no
/// automatic redirects. Reuse one for SSO (a second authorization needs no password) and
/// for logout.
pub struct Portal {
    client: reqwest::Client,
    origin: String,
    frames: std::sync::Mutex<Vec<String>>,
    trail: std::sync::Mutex<Vec<String>>,
}

/// Where a walk through the portal's pages ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A redirect off the portal (to a relying party): the full `Location` (or the URL an
    /// off-portal GET form would load).
    Redirect(String),
    /// A form that posts off the portal (`response_mode=form_post`): where, and what.
    FormPost {
        url: String,
        fields: Vec<(String, String)>,
    },
    /// A portal page with nothing more to submit: "You have been logged out", an error,
    /// or the login form when no password was given (`login_form`). Its URL, status and
    /// result messages (see `alert_messages`).
    Page {
        url: String,
        status: u16,
        messages: Vec<String>,
        login_form: bool,
    },
}

impl Portal {
    /// For the portal at `issuer` (only its origin matters), with a cookie jar of its own.
    pub fn new(issuer: &str) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .build()
            .map_err(|e| e.to_string())?;
        Self::with_client(issuer, client)
    }

    /// For the portal at `issuer`, through `client` (which must not follow redirects), so
    /// that one cookie jar holds the portal's cookies and the relying party's, as in a
    /// browser (see [`crate::Browser::portal`]).
    pub fn with_client(issuer: &str, client: reqwest::Client) -> Result<Self, String> {
        let origin = reqwest::Url::parse(issuer)
            .map_err(|e| format!("{issuer}: {e}"))?
            .origin()
            .ascii_serialization();
        Ok(Self {
            client,
            origin,
            frames: Default::default(),
            trail: Default::default(),
        })
    }

    /// The `<iframe>`s the portal's pages embedded (front-channel logout URLs), in order;
    /// each was fetched once, as a browser would.
    pub fn frames(&self) -> Vec<String> {
        self.frames.lock().unwrap().clone()
    }

    /// What the walks so far went through, one entry per page: `login form`,
    /// `confirmation form` (consent or logout), `info form`, `redirect <url>`, `page …`.
    pub fn trail(&self) -> Vec<String> {
        self.trail.lock().unwrap().clone()
    }

    fn note(&self, what: String) {
        self.trail.lock().unwrap().push(what);
    }

    /// The underlying client (it has the portal's cookies).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Follows an authorization URL (with `state`, `nonce`, PKCE…) through the login form
    /// (if there is no SSO session yet), the consent page and any confirmation, and
    /// returns the redirect back to the relying party (`redirect_uri?code=…&state=…`, or
    /// `?error=…`).
    pub async fn authorize(
        &self,
        authorization_url: &str,
        login: &str,
        password: &str,
    ) -> Result<String, String> {
        match self
            .walk(authorization_url, Some((login, password)))
            .await?
        {
            Outcome::Redirect(url) => Ok(url),
            Outcome::FormPost { url, fields } => Err(format!(
                "sign-in ended on a form_post to {url} ({} fields); use Portal::walk",
                fields.len()
            )),
            Outcome::Page {
                url,
                status,
                messages,
                login_form,
            } => Err(format!(
                "sign-in ended on a portal {} ({status} {url}): {}",
                if login_form { "login form" } else { "page" },
                messages.join(" | ")
            )),
        }
    }

    /// Follows an RP-initiated logout URL (see [`end_session_url`]), confirms if asked,
    /// and returns where it ended: the redirect to `post_logout_redirect_uri?state=…`, or
    /// LemonLDAP's own page when there is none.
    pub async fn end_session(&self, end_session_url: &str) -> Result<Outcome, String> {
        self.walk(end_session_url, None).await
    }

    /// Fetches `url` and submits what a user would submit until the portal lets go.
    pub async fn walk(
        &self,
        url: &str,
        mut login: Option<(&str, &str)>,
    ) -> Result<Outcome, String> {
        let mut current = reqwest::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
        let mut form: Option<Vec<(String, String)>> = None;
        // LLNG_PORTAL_DEBUG=1: every step and page on stderr.
        let debug = std::env::var_os("LLNG_PORTAL_DEBUG").is_some();
        for _ in 0..12 {
            let posted = form.is_some();
            let req = match form.take() {
                Some(fields) => self.client.post(current.clone()).form(&fields),
                None => self.client.get(current.clone()),
            };
            let resp = req
                .header("Accept", "text/html,application/xhtml+xml")
                .send()
                .await
                .map_err(|e| format!("{current}: {e}"))?;
            let status = resp.status();
            if debug {
                eprintln!(
                    "[portal] {} {current} -> {status} {}",
                    if posted { "POST" } else { "GET" },
                    resp.headers()
                        .get("location")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                );
            }
            if status.is_redirection() {
                let loc = resp
                    .headers()
                    .get("location")
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| format!("{status} from {current} without Location"))?;
                let next = current
                    .join(loc)
                    .map_err(|e| format!("Location {loc}: {e}"))?;
                if next.origin().ascii_serialization() != self.origin {
                    self.note(format!("redirect {next}"));
                    return Ok(Outcome::Redirect(next.to_string()));
                }
                current = next;
                continue;
            }
            let body = resp.text().await.map_err(|e| format!("{current}: {e}"))?;
            if debug {
                eprintln!("[portal] page:\n{body}");
            }
            let forms = parse_forms(&body);
            let messages = alert_messages(&body);
            // The login form: user + password (+ hidden token, url, …).
            if let Some(f) = forms.iter().find(|f| f.has_type("password")) {
                self.note(format!(
                    "login form{}",
                    if messages.is_empty() {
                        String::new()
                    } else {
                        format!(" {messages:?}")
                    }
                ));
                let Some((user, password)) = login.take() else {
                    return Ok(Outcome::Page {
                        url: current.to_string(),
                        status: status.as_u16(),
                        messages,
                        login_form: true,
                    });
                };
                let mut fields = f.fields();
                set(&mut fields, "user", user);
                set(&mut fields, "password", password);
                current = f.target(&current)?;
                form = Some(fields);
                continue;
            }
            // Front-channel logout: the page embeds each RP's logout URL in an <iframe>,
            // which a browser loads.
            for src in iframe_sources(&body) {
                if let Ok(u) = current.join(&src) {
                    let _ = self
                        .client
                        .get(u.clone())
                        .timeout(Duration::from_secs(5))
                        .send()
                        .await;
                    self.frames.lock().unwrap().push(u.to_string());
                }
            }
            // Consent ("… wants to access your identity") or logout confirmation: accept.
            if let Some(f) = forms.iter().find(|f| f.has_name("confirm")) {
                self.note("confirmation form".into());
                current = f.target(&current)?;
                form = Some(f.fields());
                continue;
            }
            // An information page (e.g. the front-channel logout page) whose form the
            // portal's JavaScript submits after a few seconds: submit it now.
            if let Some(f) = forms
                .iter()
                .find(|f| f.class.split_whitespace().any(|c| c == "info"))
            {
                self.note("info form".into());
                let mut target = f.target(&current)?;
                let off_portal = target.origin().ascii_serialization() != self.origin;
                if f.method.eq_ignore_ascii_case("get") {
                    target.query_pairs_mut().clear().extend_pairs(f.fields());
                    if off_portal {
                        self.note(format!("redirect {target}"));
                        return Ok(Outcome::Redirect(target.to_string()));
                    }
                    current = target;
                } else {
                    if off_portal {
                        return Ok(Outcome::FormPost {
                            url: target.to_string(),
                            fields: f.fields(),
                        });
                    }
                    current = target;
                    form = Some(f.fields());
                }
                continue;
            }
            // response_mode=form_post: a self-submitting form to the relying party.
            if let Some(f) = forms.iter().find(|f| {
                f.method.eq_ignore_ascii_case("post")
                    && f.target(&current)
                        .is_ok_and(|t| t.origin().ascii_serialization() != self.origin)
            }) {
                let url = f.target(&current)?.to_string();
                self.note(format!("form_post {url}"));
                return Ok(Outcome::FormPost {
                    url,
                    fields: f.fields(),
                });
            }
            self.note(format!("page {status} {messages:?}"));
            return Ok(Outcome::Page {
                url: current.to_string(),
                status: status.as_u16(),
                messages,
                login_form: false,
            });
        }
        Err(format!(
            "more than 12 steps through the portal, last at {current}"
        ))
    }
}

/// Signs in with a fresh browser session; returns the redirect back to the relying party.
pub async fn sign_in(
    authorization_url: &str,
    login: &str,
    password: &str,
) -> Result<String, String> {
    Portal::new(authorization_url)?
        .authorize(authorization_url, login, password)
        .await
}

/// `end_session_endpoint?id_token_hint=…&post_logout_redirect_uri=…&state=…`.
pub fn end_session_url(
    end_session_endpoint: &str,
    id_token_hint: Option<&str>,
    post_logout_redirect_uri: Option<&str>,
    state: Option<&str>,
) -> Result<String, String> {
    let mut url = reqwest::Url::parse(end_session_endpoint)
        .map_err(|e| format!("{end_session_endpoint}: {e}"))?;
    {
        let mut q = url.query_pairs_mut();
        if let Some(v) = id_token_hint {
            q.append_pair("id_token_hint", v);
        }
        if let Some(v) = post_logout_redirect_uri {
            q.append_pair("post_logout_redirect_uri", v);
        }
        if let Some(v) = state {
            q.append_pair("state", v);
        }
    }
    Ok(url.to_string())
}

fn set(fields: &mut Vec<(String, String)>, name: &str, value: &str) {
    fields.retain(|(k, _)| k != name);
    fields.push((name.to_string(), value.to_string()));
}

// --- a very small HTML reader: forms, inputs, alert boxes -------------------------------

#[derive(Debug)]
struct Form {
    action: Option<String>,
    method: String,
    class: String,
    inputs: Vec<BTreeMap<String, String>>,
}

impl Form {
    fn has_type(&self, t: &str) -> bool {
        self.inputs
            .iter()
            .any(|i| i.get("type").is_some_and(|v| v.eq_ignore_ascii_case(t)))
    }

    fn has_name(&self, n: &str) -> bool {
        self.inputs
            .iter()
            .any(|i| i.get("name").is_some_and(|v| v == n))
    }

    /// What a browser would submit (unchecked checkboxes and radios left out).
    fn fields(&self) -> Vec<(String, String)> {
        self.inputs
            .iter()
            .filter_map(|i| {
                let name = i.get("name")?;
                let t = i
                    .get("type")
                    .map(|s| s.to_ascii_lowercase())
                    .unwrap_or_default();
                if (t == "checkbox" || t == "radio") && !i.contains_key("checked") {
                    return None;
                }
                if t == "submit" || t == "button" || t == "image" || t == "file" {
                    return None;
                }
                Some((name.clone(), i.get("value").cloned().unwrap_or_default()))
            })
            .collect()
    }

    /// The URL the form posts to: its action resolved against the page (`#` or none: the
    /// page itself).
    fn target(&self, page: &reqwest::Url) -> Result<reqwest::Url, String> {
        let mut page = page.clone();
        page.set_fragment(None);
        match self.action.as_deref() {
            None | Some("") | Some("#") => Ok(page),
            Some(a) => page.join(a).map_err(|e| format!("form action {a}: {e}")),
        }
    }
}

fn parse_forms(html: &str) -> Vec<Form> {
    let lower = html.to_ascii_lowercase();
    let mut forms = Vec::new();
    let mut at = 0;
    while let Some(i) = find_tag(&lower, "form", at) {
        let (attrs, open_end) = parse_attrs(html, i + 5);
        let close = lower[open_end..]
            .find("</form")
            .map(|j| open_end + j)
            .unwrap_or(html.len());
        let inner = &html[open_end..close];
        let inner_lower = &lower[open_end..close];
        let mut inputs = Vec::new();
        let mut k = 0;
        while let Some(j) = find_tag(inner_lower, "input", k) {
            let (a, end) = parse_attrs(inner, j + 6);
            inputs.push(a);
            k = end;
        }
        forms.push(Form {
            action: attrs.get("action").cloned(),
            method: attrs.get("method").cloned().unwrap_or_else(|| "get".into()),
            class: attrs.get("class").cloned().unwrap_or_default(),
            inputs,
        });
        at = close;
    }
    forms
}

/// Index of the next `<tag` (followed by a space, `/` or `>`) at or after `from`.
fn find_tag(lower: &str, tag: &str, from: usize) -> Option<usize> {
    let pat = format!("<{tag}");
    let mut at = from;
    while let Some(i) = lower.get(at..)?.find(&pat) {
        let i = at + i;
        match lower.as_bytes().get(i + pat.len()) {
            Some(b) if b.is_ascii_whitespace() || *b == b'/' || *b == b'>' => return Some(i),
            _ => at = i + pat.len(),
        }
    }
    None
}

/// Attributes from `start` (just after the tag name) to the closing `>`; returns them
/// (names lower-cased, values unescaped) and the index after the `>`.
fn parse_attrs(html: &str, start: usize) -> (BTreeMap<String, String>, usize) {
    let b = html.as_bytes();
    let mut attrs = BTreeMap::new();
    let mut i = start;
    loop {
        while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b'/') {
            i += 1;
        }
        if i >= b.len() {
            return (attrs, i);
        }
        if b[i] == b'>' {
            return (attrs, i + 1);
        }
        let name_start = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && !matches!(b[i], b'=' | b'>' | b'/') {
            i += 1;
        }
        let name = html[name_start..i].to_ascii_lowercase();
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if i < b.len() && b[i] == b'=' {
            i += 1;
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            if i < b.len() && (b[i] == b'"' || b[i] == b'\'') {
                let q = b[i];
                let vs = i + 1;
                i = vs;
                while i < b.len() && b[i] != q {
                    i += 1;
                }
                value = crate::html::decode_entities(&html[vs..i.min(b.len())]);
                i += 1;
            } else {
                let vs = i;
                while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'>' {
                    i += 1;
                }
                value = crate::html::decode_entities(&html[vs..i]);
            }
        }
        if !name.is_empty() {
            attrs.entry(name).or_insert(value);
        }
    }
}

/// The portal's result messages (`<div class="message …"><span trmsg="5">`): the page
/// text is filled in by JavaScript, so this names the code (`PE_BADCREDENTIALS (5)`).
fn alert_messages(html: &str) -> Vec<String> {
    let lower = html.to_ascii_lowercase();
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(i) = find_tag(&lower, "div", at) {
        let (attrs, open_end) = parse_attrs(html, i + 4);
        at = open_end;
        let class = attrs.get("class").map(String::as_str).unwrap_or("");
        if !class.split_whitespace().any(|c| c == "message") {
            continue;
        }
        let close = lower[open_end..]
            .find("</div")
            .map(|j| open_end + j)
            .unwrap_or(html.len());
        let inner = &html[open_end..close];
        let mut msg = strip_tags(inner);
        if let Some(j) = find_tag(&inner.to_ascii_lowercase(), "span", 0)
            && let Some(code) = parse_attrs(inner, j + 5).0.get("trmsg")
        {
            let name = code.parse::<i32>().ok().and_then(pe_name).unwrap_or("PE_?");
            msg = format!(
                "{name} ({code}){}{msg}",
                if msg.is_empty() { "" } else { " " }
            );
        }
        if !msg.is_empty() {
            out.push(msg);
        }
    }
    out
}

/// Names of the portal's result codes (Lemonldap::NG::Portal::Main::Constants) that a
/// sign-in or logout can show.
fn pe_name(code: i32) -> Option<&'static str> {
    Some(match code {
        1 => "PE_SESSIONEXPIRED",
        2 => "PE_FORMEMPTY",
        4 => "PE_USERNOTFOUND",
        5 => "PE_BADCREDENTIALS",
        9 => "PE_FIRSTACCESS",
        24 => "PE_ERROR",
        37 => "PE_BADURL",
        41 => "PE_SESSIONNOTGRANTED",
        42 => "PE_CONFIRM",
        47 => "PE_LOGOUT_OK",
        81 => "PE_NOTOKEN",
        82 => "PE_TOKENEXPIRED",
        84 => "PE_UNAUTHORIZEDPARTNER",
        90 => "PE_OIDC_SERVICE_NOT_ALLOWED",
        108 => "PE_UNAUTHORIZEDURL",
        _ => return None,
    })
}

/// `src` of every `<iframe>`.
fn iframe_sources(html: &str) -> Vec<String> {
    let lower = html.to_ascii_lowercase();
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(i) = find_tag(&lower, "iframe", at) {
        let (attrs, end) = parse_attrs(html, i + 7);
        at = end;
        if let Some(src) = attrs.get("src").filter(|s| !s.is_empty()) {
            out.push(src.clone());
        }
    }
    out
}

fn strip_tags(s: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in s.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    crate::html::decode_entities(&out)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `{"k": v, …}` from keys and values that are already JSON.
fn json_object(pairs: &[(String, String)]) -> String {
    let body: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}: {v}", json_str(k)))
        .collect();
    format!("{{{}}}", body.join(", "))
}

fn bit(b: bool) -> String {
    if b { "1".into() } else { "0".into() }
}

fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

fn snippet(body: &str) -> String {
    let flat = strip_tags(body);
    flat.chars().take(300).collect()
}
