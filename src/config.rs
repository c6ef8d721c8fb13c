//! Configuration: one YAML file, read and validated whole before any port is bound.
//!
//! Loading happens in two steps. The file is parsed into [`raw::RawConfig`] (all fields
//! optional, unknown keys collected rather than fatal), then [`validate`] turns it into a
//! [`Config`], collecting every problem with the path of the offending key. `check-config`
//! prints that list; `serve` refuses to start on a non-empty one.

mod policy;
mod raw;
mod store;

pub use store::{RedisConfig, StoreConfig};
mod source;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use url::Url;

use crate::core::cockpit::{AccountMapping, CockpitSettings, is_unix_account_name};
use crate::core::{RoleMapping, Route, authority_of};
use crate::identity::{ClientKey, SigningKeys, public_jwk_from_pem};
use crate::secret::{SecretBytes, SecretString};
use raw::{RawConfig, RawRoute};

/// Exit code for an unusable config (sysexits EX_USAGE), shared by `check-config` and `serve`.
pub const EXIT_CONFIG: i32 = 64;

const DEFAULT_IDENTITY_HEADER: &str = "X-Portcullis-Jwt-Assertion";
const MIN_COOKIE_SECRET_BYTES: usize = 32;

/// The validated configuration.
#[derive(Debug)]
pub struct Config {
    pub server: ServerConfig,
    /// Public origin of the auth host, e.g. `https://auth.localhost:8443`.
    pub authenticate_url: Url,
    pub idp: IdpConfig,
    pub cookie: CookieConfig,
    pub signing_keys: SigningKeys,
    /// Header that carries the identity JWT upstream (as configured, e.g. `X-Portcullis-Jwt-Assertion`).
    pub identity_header: String,
    pub log: LogConfig,
    pub sign_in_limits: SignInLimits,
    pub routes: Vec<RouteConfig>,
    pub session_store: StoreConfig,
    /// The session administration API, when configured.
    pub admin: Option<AdminConfig>,
    /// Every file the config named and was read (the config file itself included when
    /// loaded from one): a change to any of them is a reason to reload.
    pub files: Vec<PathBuf>,
}

thread_local! {
    /// The files read while a config is being validated, on this thread.
    static FILES_READ: std::cell::RefCell<Vec<PathBuf>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The session administration API (`portcullis.admin.v1.Sessions`).
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Loopback unless configured otherwise.
    pub address: SocketAddr,
    /// Every call must carry `authorization: Bearer TOKEN`.
    pub token: SecretString,
}

/// The shortest admin token accepted.
const MIN_ADMIN_TOKEN_BYTES: usize = 16;
/// How long an open WebSocket may stay open by default (see README: Open WebSockets).
pub const DEFAULT_WEBSOCKET_MAX_DURATION: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub grpc_address: SocketAddr,
    pub http_address: SocketAddr,
    /// Optional listener serving only the JWKS, for verifiers on an internal network.
    pub jwks_address: Option<SocketAddr>,
    /// Optional listener serving Prometheus metrics at `/metrics`.
    pub metrics_address: Option<SocketAddr>,
    /// The session administration API's listener (`admin.address`, when `admin` is set).
    pub admin_address: Option<SocketAddr>,
    /// Optional listener for forward-auth proxies (nginx `auth_request`, Caddy
    /// `forward_auth`, Traefik `forwardAuth`): it believes the `X-Forwarded-*` headers it
    /// is sent, so only the proxy may reach it.
    pub forward_auth_address: Option<SocketAddr>,
    pub shutdown_grace: Duration,
    /// After SIGTERM, how long to keep serving while reporting NOT_SERVING on gRPC health,
    /// so that Envoy's health checks move traffic to the other replicas first.
    pub drain_delay: Duration,
}

#[derive(Debug, Clone)]
pub struct IdpConfig {
    pub issuer: String,
    pub client_id: String,
    /// `None` only with `private_key_jwt`.
    pub client_secret: Option<SecretString>,
    pub scopes: Vec<String>,
    /// A claim name, or a dotted path (`realm_access.roles`).
    pub groups_claim: String,
    /// Treat a missing `email_verified` claim as verified (for IdPs that omit it).
    pub assume_email_verified: bool,
    pub userinfo: UserInfoMode,
    /// `None`: chosen from what the IdP advertises.
    pub token_endpoint_auth: Option<ClientAuthMethod>,
    /// The key of `private_key_jwt`.
    pub client_key: Option<Arc<ClientKey>>,
    /// Accepted ID token algorithms; `None`: the asymmetric ones the IdP advertises.
    pub id_token_algs: Option<Vec<String>>,
    /// The claims route policies test (`claim/NAME`), kept on the user at sign-in.
    pub policy_claims: Vec<String>,
    /// Programmatic access: `Authorization: Bearer` tokens are accepted (ID tokens for our
    /// client id, and access tokens for these audiences too); `None`: off.
    pub bearer_audiences: Option<Vec<String>>,
}

/// Sign-ins per minute (0: no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignInLimits {
    /// Sign-in starts and callbacks from one client address.
    pub per_address: u32,
    /// Completed sign-ins of one account.
    pub per_account: u32,
}

impl Default for SignInLimits {
    fn default() -> Self {
        Self {
            per_address: 30,
            per_account: 10,
        }
    }
}

/// How `serve` logs.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogConfig {
    pub format: LogFormat,
}

/// The shape of log lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    /// One JSON object a line, for log collectors.
    Json,
}

/// When to read claims from the IdP's UserInfo endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserInfoMode {
    /// When the ID token lacks email, name, preferred username or groups.
    Auto,
    Always,
    Never,
}

/// How portcullis authenticates to the IdP's token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthMethod {
    ClientSecretBasic,
    ClientSecretPost,
    PrivateKeyJwt,
}

impl ClientAuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuthMethod::ClientSecretBasic => "client_secret_basic",
            ClientAuthMethod::ClientSecretPost => "client_secret_post",
            ClientAuthMethod::PrivateKeyJwt => "private_key_jwt",
        }
    }
}

/// The ID token algorithms `idp.id_token_algs` may name.
const KNOWN_ALGS: [&str; 13] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
    "HS256", "HS384", "HS512",
];

#[derive(Debug, Clone)]
pub struct CookieConfig {
    pub name: String,
    /// Seals every cookie, hop and sealed token.
    pub secret: SecretBytes,
    /// Earlier secrets: what they sealed still opens (a rotation without signing anyone out).
    pub previous_secrets: Vec<SecretBytes>,
    pub lifetime: Duration,
    pub secure: bool,
}

/// One route as configured: the domain's [`Route`], and where Envoy sends its requests.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub route: Route,
    pub to: Url,
    /// How Envoy verifies an HTTPS upstream (`to`).
    pub tls: UpstreamTls,
    /// The longest an upgraded stream (a WebSocket) may stay open before Envoy ends it:
    /// how long a revoked session's open socket can outlive the revocation. `None` only
    /// until validation fills in the top-level `websocket_max_duration`.
    pub websocket_max_duration: Option<Duration>,
}

impl std::ops::Deref for RouteConfig {
    type Target = Route;

    fn deref(&self) -> &Route {
        &self.route
    }
}

/// Certificate verification of an HTTPS upstream. The default verifies against the system
/// CAs; skipping verification is an explicit, per-route opt-in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamTls {
    /// CA bundle that replaces the system CAs for this upstream.
    pub ca_file: Option<PathBuf>,
    pub insecure_skip_verify: bool,
}

/// One problem found in the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The key path, e.g. `routes[1].policy.emails[0]`; empty for the document.
    pub path: String,
    pub message: String,
    /// The file, when read from one.
    pub file: Option<String>,
    /// Line and column (both 1-based) of the key, or of its nearest ancestor.
    pub at: Option<(usize, usize)>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{file}:")?;
        }
        if let Some((line, column)) = self.at {
            write!(f, "{line}:{column}:")?;
        }
        if self.file.is_some() || self.at.is_some() {
            f.write_str(" ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem in one config file.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "error: {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let (text, base, file) = read_file(path)?;
    match parse(&text, &base) {
        Ok(mut config) => {
            config.files.insert(0, path.to_path_buf());
            Ok(config)
        }
        Err(mut errors) => {
            for e in &mut errors.0 {
                e.file = Some(file.clone());
            }
            Err(errors)
        }
    }
}

/// The config file's text, the directory its relative paths start from, and its name.
fn read_file(path: &Path) -> Result<(String, PathBuf, String), ConfigErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            path: String::new(),
            message: format!("cannot read config file: {e}"),
            file: Some(file.clone()),
            at: None,
        }])
    })?;
    let base = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    Ok((text, base, file))
}

/// Reads only the routes of the config at `path`, for `policy explain` and `policy test`:
/// the secrets and keys the rest names need not be there (an admin's CI rarely has them).
pub fn load_routes(path: &Path) -> Result<Vec<RouteConfig>, ConfigErrors> {
    let (text, base, file) = read_file(path)?;
    let mut errors = Errors::default();
    let (raw, read_errors) = source::read(&text);
    for e in read_errors
        .into_iter()
        .filter(|e| e.path.starts_with("routes") || e.path.is_empty())
    {
        errors.push(e.path, e.message);
    }
    let routes = raw.map(|raw| {
        let auth = raw
            .authenticate_url
            .as_deref()
            .and_then(|u| parse_origin(u, "authenticate_url", &mut errors));
        match raw.routes {
            Some(r) if !r.is_empty() => validate_routes(r, auth.as_ref(), &base, &mut errors),
            _ => {
                errors.push("routes", "missing (at least one route is required)");
                Vec::new()
            }
        }
    });
    match routes {
        Some(routes) if errors.0.is_empty() => Ok(routes),
        _ => {
            let positions = source::Positions::of(&text);
            let mut all = errors.0;
            for e in &mut all {
                e.at = positions.find(&e.path);
                e.file = Some(file.clone());
            }
            Err(ConfigErrors(all))
        }
    }
}

/// Parses and validates config text; relative file paths resolve against `base`. Every
/// problem is reported, each with its key path and position.
pub fn parse(text: &str, base: &Path) -> Result<Config, ConfigErrors> {
    FILES_READ.with(|f| f.borrow_mut().clear());
    let mut errors = Errors::default();
    let (raw, read_errors) = source::read(text);
    let positions = source::Positions::of(text);
    let mut syntax_at = Vec::new();
    let mut unreadable = std::collections::HashSet::new();
    for e in read_errors {
        syntax_at.push(e.at);
        unreadable.insert(e.path.clone());
        errors.push(e.path, e.message);
    }
    let read = errors.0.len();
    let config = raw.and_then(|raw| validate(raw, base, &mut errors));
    // A value of the wrong type was dropped to read the rest; it is not also "missing".
    let mut i = 0;
    errors.0.retain(|e| {
        i += 1;
        i <= read || !(unreadable.contains(&e.path) && e.message.starts_with("missing"))
    });
    if errors.0.is_empty()
        && let Some(mut c) = config
    {
        c.files = FILES_READ.with(|f| std::mem::take(&mut *f.borrow_mut()));
        c.files.dedup();
        return Ok(c);
    }
    let mut all = errors.0;
    for (i, e) in all.iter_mut().enumerate() {
        e.at = syntax_at
            .get(i)
            .copied()
            .flatten()
            .or_else(|| positions.find(&e.path));
    }
    // In file order, so the list reads top to bottom.
    all.sort_by_key(|e| e.at.unwrap_or((usize::MAX, 0)));
    Err(ConfigErrors(all))
}

#[derive(Default)]
struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.into(),
            file: None,
            at: None,
        });
    }

    /// Records `path` as missing and returns None, for use with `?`-less chains.
    fn missing<T>(&mut self, path: &str) -> Option<T> {
        self.push(path, "missing (required)");
        None
    }
}

fn validate(raw: RawConfig, base: &Path, errors: &mut Errors) -> Option<Config> {
    // Destructure so that a new raw field cannot go unvalidated silently.
    let RawConfig {
        server,
        authenticate_url,
        idp,
        cookie,
        signing_key_file,
        published_key_files,
        identity_header,
        routes,
        session_store,
        admin,
        websocket_max_duration,
        log,
        sign_in_limits,
    } = raw;
    let sign_in_limits = sign_in_limits.map_or_else(SignInLimits::default, |l| {
        let d = SignInLimits::default();
        SignInLimits {
            per_address: l.per_address.unwrap_or(d.per_address),
            per_account: l.per_account.unwrap_or(d.per_account),
        }
    });

    let server = validate_server(server.unwrap_or_default(), errors);
    let authenticate_url = match authenticate_url {
        Some(u) => parse_origin(&u, "authenticate_url", errors),
        None => errors.missing("authenticate_url"),
    };
    let idp = match idp {
        Some(idp) => validate_idp(idp, base, errors),
        None => errors.missing("idp"),
    };
    let cookie = match cookie {
        Some(c) => validate_cookie(c, base, errors),
        None => errors.missing("cookie"),
    };
    let signing_keys = match signing_key_file {
        Some(f) => match SigningKeys::load(&resolve(base, &f)) {
            Ok(mut k) => {
                for (i, file) in published_key_files.unwrap_or_default().iter().enumerate() {
                    match std::fs::read_to_string(resolve(base, file))
                        .map_err(|e| e.to_string())
                        .and_then(|pem| public_jwk_from_pem(&pem).map_err(|e| e.to_string()))
                    {
                        Ok(jwk) => k.publish(jwk),
                        Err(e) => {
                            errors.push(format!("published_key_files[{i}]"), format!("{file}: {e}"))
                        }
                    }
                }
                Some(k)
            }
            Err(e) => {
                errors.push("signing_key_file", format!("{f}: {e}"));
                None
            }
        },
        None => errors.missing("signing_key_file"),
    };
    let log = match log.and_then(|l| l.format).as_deref() {
        None | Some("text") => Some(LogConfig {
            format: LogFormat::Text,
        }),
        Some("json") => Some(LogConfig {
            format: LogFormat::Json,
        }),
        Some(other) => {
            errors.push("log.format", format!("{other:?}: use text or json"));
            None
        }
    };
    let identity_header = identity_header.unwrap_or_else(|| DEFAULT_IDENTITY_HEADER.into());
    if !is_safe_header_name(&identity_header) {
        errors.push(
            "identity_header",
            format!("{identity_header:?} is not a usable header name"),
        );
    }
    let routes = match routes {
        Some(r) if !r.is_empty() => validate_routes(r, authenticate_url.as_ref(), base, errors),
        _ => {
            errors.push("routes", "missing (at least one route is required)");
            Vec::new()
        }
    };

    let session_store = store::validate(session_store, base, errors);
    let admin = admin.and_then(|a| validate_admin(a, base, errors));
    let websocket_max_duration = match websocket_max_duration {
        Some(d) => parse_duration(&d)
            .map_err(|m| errors.push("websocket_max_duration", m))
            .ok(),
        None => Some(DEFAULT_WEBSOCKET_MAX_DURATION),
    };

    let websocket_max_duration = websocket_max_duration?;
    let mut routes = routes;
    for r in &mut routes {
        r.websocket_max_duration
            .get_or_insert(websocket_max_duration);
    }
    let mut server = server?;
    server.admin_address = admin.as_ref().map(|a| a.address);
    let mut idp = idp?;
    for route in &routes {
        for claim in route.policy.claims() {
            if !idp.policy_claims.contains(&claim) {
                idp.policy_claims.push(claim);
            }
        }
    }
    Some(Config {
        session_store: session_store?,
        admin,
        sign_in_limits,
        log: log?,
        server,
        authenticate_url: authenticate_url?,
        idp,
        cookie: cookie?,
        signing_keys: signing_keys?,
        identity_header,
        routes,
        files: Vec::new(),
    })
}

fn validate_server(raw: raw::RawServer, errors: &mut Errors) -> Option<ServerConfig> {
    let raw::RawServer {
        grpc_address,
        http_address,
        jwks_address,
        metrics_address,
        forward_auth_address,
        shutdown_grace,
        drain_delay,
    } = raw;
    let mut addr = |value: Option<String>, default: &str, path: &str| {
        let v = value.unwrap_or_else(|| default.to_string());
        v.parse::<SocketAddr>()
            .map_err(|_| errors.push(path, format!("{v:?} is not an IP:port address")))
            .ok()
    };
    let grpc_address = addr(grpc_address, "127.0.0.1:9100", "server.grpc_address");
    let http_address = addr(http_address, "127.0.0.1:9101", "server.http_address");
    let jwks_address = jwks_address.map(|a| addr(Some(a), "", "server.jwks_address"));
    let metrics_address = metrics_address.map(|a| addr(Some(a), "", "server.metrics_address"));
    let forward_auth_address =
        forward_auth_address.map(|a| addr(Some(a), "", "server.forward_auth_address"));
    let shutdown_grace = match shutdown_grace {
        Some(s) => parse_duration(&s)
            .map_err(|m| errors.push("server.shutdown_grace", m))
            .ok(),
        None => Some(Duration::from_secs(10)),
    };
    let drain_delay = match drain_delay {
        Some(s) if s.trim() == "0" || s.trim() == "0s" => Some(Duration::ZERO),
        Some(s) => parse_duration(&s)
            .map_err(|m| errors.push("server.drain_delay", m))
            .ok(),
        None => Some(Duration::ZERO),
    };
    Some(ServerConfig {
        admin_address: None,
        drain_delay: drain_delay?,
        grpc_address: grpc_address?,
        http_address: http_address?,
        jwks_address: match jwks_address {
            Some(a) => Some(a?),
            None => None,
        },
        metrics_address: match metrics_address {
            Some(a) => Some(a?),
            None => None,
        },
        forward_auth_address: match forward_auth_address {
            Some(a) => Some(a?),
            None => None,
        },
        shutdown_grace: shutdown_grace?,
    })
}

fn validate_admin(raw: raw::RawAdmin, base: &Path, errors: &mut Errors) -> Option<AdminConfig> {
    let raw::RawAdmin {
        address,
        token_file,
    } = raw;
    let address = address.unwrap_or_else(|| "127.0.0.1:9102".into());
    let address = address
        .parse::<SocketAddr>()
        .map_err(|_| {
            errors.push(
                "admin.address",
                format!("{address:?} is not an IP:port address"),
            )
        })
        .ok();
    let token = match token_file {
        Some(f) => read_secret_file(base, &f, "admin.token_file", MIN_ADMIN_TOKEN_BYTES, errors)
            .and_then(|b| match String::from_utf8(b) {
                Ok(t) => Some(SecretString::new(t)),
                Err(_) => {
                    errors.push("admin.token_file", format!("{f}: not UTF-8 text"));
                    None
                }
            }),
        None => errors.missing("admin.token_file"),
    };
    Some(AdminConfig {
        address: address?,
        token: token?,
    })
}

fn validate_idp(raw: raw::RawIdp, base: &Path, errors: &mut Errors) -> Option<IdpConfig> {
    let raw::RawIdp {
        issuer,
        client_id,
        client_secret_file,
        scopes,
        groups_claim,
        assume_email_verified,
        userinfo,
        token_endpoint_auth,
        client_key_file,
        client_cert_file,
        id_token_algs,
        bearer,
    } = raw;
    let issuer = match issuer {
        Some(i) => match Url::parse(&i) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(i),
            _ => {
                errors.push("idp.issuer", format!("{i:?} is not an http(s) URL"));
                None
            }
        },
        None => errors.missing("idp.issuer"),
    };
    let client_id = match client_id {
        Some(c) if !c.trim().is_empty() => Some(c),
        _ => errors.missing("idp.client_id"),
    };
    let token_endpoint_auth = match token_endpoint_auth.as_deref() {
        None => Ok(None),
        Some("client_secret_basic") => Ok(Some(ClientAuthMethod::ClientSecretBasic)),
        Some("client_secret_post") => Ok(Some(ClientAuthMethod::ClientSecretPost)),
        Some("private_key_jwt") => Ok(Some(ClientAuthMethod::PrivateKeyJwt)),
        Some(other) => {
            errors.push(
                "idp.token_endpoint_auth",
                format!(
                    "{other:?}: use client_secret_basic, client_secret_post or private_key_jwt"
                ),
            );
            Err(())
        }
    };
    let client_key =
        client_key_file.and_then(|f| match std::fs::read_to_string(resolve(base, &f)) {
            Ok(pem) => match ClientKey::from_pem(&pem) {
                Ok(k) => match &client_cert_file {
                    None => Some(Arc::new(k)),
                    Some(c) => match std::fs::read_to_string(resolve(base, c))
                        .map_err(|e| format!("cannot read: {e}"))
                        .and_then(|cert| k.with_certificate(&cert))
                    {
                        Ok(k) => Some(Arc::new(k)),
                        Err(e) => {
                            errors.push("idp.client_cert_file", format!("{c}: {e}"));
                            None
                        }
                    },
                },
                Err(e) => {
                    errors.push("idp.client_key_file", format!("{f}: {e}"));
                    None
                }
            },
            Err(e) => {
                errors.push("idp.client_key_file", format!("{f}: cannot read: {e}"));
                None
            }
        });
    let key_auth = matches!(
        token_endpoint_auth,
        Ok(Some(ClientAuthMethod::PrivateKeyJwt))
    );
    if key_auth && client_key.is_none() {
        errors.push(
            "idp.client_key_file",
            "missing: private_key_jwt signs with this key",
        );
    }
    let client_secret = match client_secret_file {
        Some(f) => read_secret_file(base, &f, "idp.client_secret_file", 1, errors).and_then(|b| {
            match String::from_utf8(b) {
                Ok(s) => Some(Some(SecretString::new(s.trim()))),
                Err(_) => {
                    errors.push("idp.client_secret_file", format!("{f}: not UTF-8 text"));
                    None
                }
            }
        }),
        // A client that authenticates with a key needs no secret.
        None if key_auth || (client_key.is_some() && token_endpoint_auth == Ok(None)) => Some(None),
        None => errors.missing("idp.client_secret_file"),
    };
    let scopes =
        scopes.unwrap_or_else(|| ["openid", "email", "profile"].map(String::from).to_vec());
    if !scopes.iter().any(|s| s == "openid") {
        errors.push("idp.scopes", "must include \"openid\"");
    }
    let userinfo = match userinfo.as_deref() {
        None | Some("auto") => Some(UserInfoMode::Auto),
        Some("always") => Some(UserInfoMode::Always),
        Some("never") => Some(UserInfoMode::Never),
        Some(other) => {
            errors.push(
                "idp.userinfo",
                format!("{other:?}: use auto, always or never"),
            );
            None
        }
    };
    let groups_claim = groups_claim.unwrap_or_else(|| "groups".into());
    if groups_claim.trim().is_empty() {
        errors.push(
            "idp.groups_claim",
            "empty: name the claim that holds groups",
        );
    }
    if let Some(algs) = &id_token_algs {
        if algs.is_empty() {
            errors.push(
                "idp.id_token_algs",
                "empty: leave it out to accept the asymmetric algorithms the IdP advertises",
            );
        }
        for (i, alg) in algs.iter().enumerate() {
            let at = format!("idp.id_token_algs[{i}]");
            if alg.eq_ignore_ascii_case("none") {
                errors.push(at, "unsigned ID tokens are never accepted");
            } else if !KNOWN_ALGS.contains(&alg.as_str()) {
                errors.push(
                    at,
                    format!("{alg:?} is not a JWS algorithm (use e.g. RS256, ES256, HS256)"),
                );
            } else if alg.starts_with("HS") && client_secret.as_ref().is_some_and(|s| s.is_none()) {
                errors.push(
                    at,
                    "HS* algorithms are keyed by the client secret, and there is none",
                );
            }
        }
    }
    Some(IdpConfig {
        issuer: issuer?,
        client_id: client_id?,
        client_secret: client_secret?,
        scopes,
        groups_claim,
        assume_email_verified: assume_email_verified.unwrap_or(false),
        userinfo: userinfo?,
        token_endpoint_auth: token_endpoint_auth.ok()?,
        client_key,
        id_token_algs,
        policy_claims: Vec::new(),
        bearer_audiences: bearer.map(|b| b.audiences.unwrap_or_default()),
    })
}

fn validate_cookie(raw: raw::RawCookie, base: &Path, errors: &mut Errors) -> Option<CookieConfig> {
    let raw::RawCookie {
        name,
        secret_file,
        previous_secret_files,
        lifetime,
        secure,
    } = raw;
    let name = name.unwrap_or_else(|| "_portcullis".into());
    let name_ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if !name_ok {
        errors.push(
            "cookie.name",
            format!("{name:?} is not a valid cookie name"),
        );
    }
    let secret = match secret_file {
        Some(f) => read_secret_file(
            base,
            &f,
            "cookie.secret_file",
            MIN_COOKIE_SECRET_BYTES,
            errors,
        )
        .map(SecretBytes::new),
        None => errors.missing("cookie.secret_file"),
    };
    let previous_secrets: Vec<SecretBytes> = previous_secret_files
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, f)| {
            read_secret_file(
                base,
                f,
                &format!("cookie.previous_secret_files[{i}]"),
                MIN_COOKIE_SECRET_BYTES,
                errors,
            )
            .map(SecretBytes::new)
        })
        .collect();
    let lifetime = match lifetime {
        Some(l) => parse_duration(&l)
            .map_err(|m| errors.push("cookie.lifetime", m))
            .ok(),
        None => Some(Duration::from_secs(8 * 3600)),
    };
    Some(CookieConfig {
        name,
        previous_secrets,
        secret: secret?,
        lifetime: lifetime?,
        secure: secure.unwrap_or(true),
    })
}

fn validate_routes(
    raw: Vec<RawRoute>,
    auth: Option<&Url>,
    base: &Path,
    errors: &mut Errors,
) -> Vec<RouteConfig> {
    let mut routes: Vec<RouteConfig> = Vec::new();
    for (i, r) in raw.into_iter().enumerate() {
        let at = |field: &str| format!("routes[{i}].{field}");
        let RawRoute {
            name,
            from,
            to,
            policy,
            cockpit,
            role,
            tls,
            websocket_max_duration,
        } = r;
        let websocket_max_duration = websocket_max_duration.and_then(|d| {
            parse_duration(&d)
                .map_err(|m| errors.push(at("websocket_max_duration"), m))
                .ok()
        });
        let from = match from {
            Some(f) => parse_route_from(&f, &at("from"), errors),
            None => errors.missing(&at("from")),
        };
        let to = match to {
            Some(t) => {
                match Url::parse(&t) {
                    Ok(u)
                        if matches!(u.scheme(), "http" | "https")
                            && u.host().is_some()
                            && u.path() == "/"
                            && u.query().is_none() =>
                    {
                        Some(u)
                    }
                    _ => {
                        errors.push(at("to"), format!("{t:?} must be an http(s) URL with no path, e.g. http://10.0.0.5:3000"));
                        None
                    }
                }
            }
            None => errors.missing(&at("to")),
        };
        let policy = match policy {
            Some(p) => policy::validate_policy(p, &at("policy"), errors),
            None => {
                errors.push(
                    at("policy"),
                    "missing: set one of public, any_authenticated_user, or emails/domains/groups",
                );
                None
            }
        };
        let cockpit = cockpit.and_then(|c| validate_cockpit(c, &at("cockpit"), errors));
        let tls = validate_upstream_tls(tls, to.as_ref(), base, &at("tls"), errors);
        let role = role.and_then(|r| validate_role(r, &at("role"), errors));
        let (Some(from), Some(to), Some(policy)) = (from, to, policy) else {
            continue;
        };
        let authority = authority_of(&from);
        let path_prefix = from.path().trim_end_matches('/').to_string();
        // A prefix that upstreams would read differently (`;`, trailing dots, encoded
        // letters) would make every request under it ambiguous, and so refused.
        if crate::core::route::canonical_path(&path_prefix) != path_prefix.to_ascii_lowercase() {
            errors.push(
                at("from"),
                format!("the path {path_prefix:?} must be plain: no ';', encoded letters, or segments ending in '.' or ' '"),
            );
        }
        // Cockpit's UrlRoot is the route's path prefix.
        let cockpit = cockpit.map(|(account, admin_groups)| CockpitSettings {
            url_root: path_prefix.clone(),
            account,
            admin_groups,
        });
        let name = name.unwrap_or_else(|| format!("{authority}{path_prefix}"));
        if routes.iter().any(|r| r.name == name) {
            errors.push(at("name"), format!("duplicate route name {name:?}"));
        }
        // Paths match without regard to letter case (`Route::matches_path`), so `/Admin`
        // and `/admin` are one prefix: the second route would never be chosen.
        if routes
            .iter()
            .any(|r| r.authority == authority && r.path_prefix.eq_ignore_ascii_case(&path_prefix))
        {
            errors.push(at("from"), format!("another route already serves {from}"));
        }
        if let Some(auth) = auth
            && authority_of(auth) == authority
        {
            errors.push(at("from"), "a route cannot use the authenticate_url host");
        }
        let mut route = Route::new(name, from, policy);
        route.cockpit = cockpit;
        route.role = role;
        routes.push(RouteConfig {
            route,
            to,
            tls,
            websocket_max_duration,
        });
    }
    // Longest prefix first, so the first match is the most specific.
    routes.sort_by_key(|r| std::cmp::Reverse(r.path_prefix.len()));
    routes
}

fn validate_upstream_tls(
    raw: Option<raw::RawUpstreamTls>,
    to: Option<&Url>,
    base: &Path,
    path: &str,
    errors: &mut Errors,
) -> UpstreamTls {
    let Some(raw::RawUpstreamTls {
        ca_file,
        insecure_skip_verify,
    }) = raw
    else {
        return UpstreamTls::default();
    };
    if to.is_some_and(|u| u.scheme() != "https") {
        errors.push(path, "only for an https `to`");
    }
    let insecure_skip_verify = insecure_skip_verify.unwrap_or(false);
    if insecure_skip_verify && ca_file.is_some() {
        errors.push(path, "set ca_file or insecure_skip_verify, not both");
    }
    let ca_file = ca_file.and_then(|f| {
        let p = resolve(base, &f);
        match std::fs::read_to_string(&p) {
            Ok(text) if text.contains("-----BEGIN CERTIFICATE-----") => Some(p),
            Ok(_) => {
                errors.push(
                    format!("{path}.ca_file"),
                    format!("{f}: no PEM certificate in it"),
                );
                None
            }
            Err(e) => {
                errors.push(format!("{path}.ca_file"), format!("{f}: cannot read: {e}"));
                None
            }
        }
    });
    UpstreamTls {
        ca_file,
        insecure_skip_verify,
    }
}

fn validate_role(raw: raw::RawRole, path: &str, errors: &mut Errors) -> Option<RoleMapping> {
    let raw::RawRole {
        from_groups,
        default,
    } = raw;
    let mut pairs = Vec::new();
    for (k, v) in from_groups.unwrap_or_default() {
        match (k.as_str(), v.as_str()) {
            (Some(g), Some(r)) => pairs.push((g.to_string(), r.to_string())),
            _ => errors.push(
                format!("{path}.from_groups"),
                "entries must be group: Role strings",
            ),
        }
    }
    if pairs.is_empty() && default.is_none() {
        errors.push(path, "set from_groups and/or default");
        return None;
    }
    Some(RoleMapping {
        from_groups: pairs,
        default,
    })
}

fn validate_cockpit(
    raw: raw::RawCockpit,
    path: &str,
    errors: &mut Errors,
) -> Option<(AccountMapping, Vec<String>)> {
    let raw::RawCockpit {
        account,
        accounts,
        admin_groups,
    } = raw;
    let admin_groups = admin_groups.unwrap_or_default();
    if admin_groups.iter().any(|g| g.trim().is_empty()) {
        errors.push(format!("{path}.admin_groups"), "a group name is empty");
    }
    let mapping = match (account.as_deref(), accounts) {
        (Some(_), Some(_)) => {
            errors.push(path, "set either account or accounts, not both");
            None
        }
        (_, Some(table)) => {
            let mut map = std::collections::HashMap::new();
            for (email, account) in table {
                if !is_unix_account_name(&account) {
                    errors.push(
                        format!("{path}.accounts.{email}"),
                        format!("{account:?} is not a valid local account name"),
                    );
                } else if account == "root" {
                    errors.push(
                        format!("{path}.accounts.{email}"),
                        "root never logs in by single sign-on; map a personal account and use administrative access",
                    );
                }
                map.insert(email.trim().to_ascii_lowercase(), account);
            }
            Some(AccountMapping::Table(map))
        }
        (None | Some("subject"), None) => Some(AccountMapping::Subject),
        (Some("preferred_username"), None) => Some(AccountMapping::PreferredUsername),
        (Some("email_local_part"), None) => Some(AccountMapping::EmailLocalPart),
        (Some(other), None) => {
            errors.push(
                format!("{path}.account"),
                format!("{other:?}: use subject (the default), email_local_part, preferred_username, or an accounts table"),
            );
            None
        }
    };
    Some((mapping?, admin_groups))
}

fn parse_origin(value: &str, path: &str, errors: &mut Errors) -> Option<Url> {
    match Url::parse(value) {
        Ok(u)
            if matches!(u.scheme(), "http" | "https")
                && u.host().is_some()
                && u.path() == "/"
                && u.query().is_none()
                && u.username().is_empty() =>
        {
            Some(u)
        }
        Ok(_) => {
            errors.push(
                path,
                format!("{value:?} must be a bare origin like https://auth.example.com"),
            );
            None
        }
        Err(e) => {
            errors.push(path, format!("{value:?} is not a URL: {e}"));
            None
        }
    }
}

fn parse_route_from(value: &str, path: &str, errors: &mut Errors) -> Option<Url> {
    match Url::parse(value) {
        Ok(u)
            if matches!(u.scheme(), "http" | "https")
                && u.host().is_some()
                && u.query().is_none()
                && u.fragment().is_none()
                && u.username().is_empty()
                && u.password().is_none() =>
        {
            Some(u)
        }
        Ok(_) => {
            errors.push(
                path,
                format!(
                    "{value:?} must be scheme://host[:port][/prefix] with no query or credentials"
                ),
            );
            None
        }
        Err(e) => {
            errors.push(path, format!("{value:?} is not a URL: {e}"));
            None
        }
    }
}

/// The path of a file the config names; noted as read, for the reloader to watch.
fn resolve(base: &Path, file: &str) -> PathBuf {
    let p = Path::new(file);
    let path = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    FILES_READ.with(|f| f.borrow_mut().push(path.clone()));
    path
}

fn read_secret_file(
    base: &Path,
    file: &str,
    path: &str,
    min_len: usize,
    errors: &mut Errors,
) -> Option<Vec<u8>> {
    match std::fs::read(resolve(base, file)) {
        Ok(mut bytes) => {
            // Editors and `echo` add a trailing newline that is not part of the secret.
            while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
                bytes.pop();
            }
            if bytes.len() < min_len {
                errors.push(
                    path,
                    format!(
                        "{file}: secret is {} bytes, need at least {min_len}",
                        bytes.len()
                    ),
                );
                return None;
            }
            Some(bytes)
        }
        Err(e) => {
            errors.push(path, format!("{file}: cannot read: {e}"));
            None
        }
    }
}

fn is_safe_header_name(name: &str) -> bool {
    const RESERVED: &[&str] = &[
        "host",
        "cookie",
        "authorization",
        "connection",
        "upgrade",
        "content-length",
        "transfer-encoding",
        "te",
        "keep-alive",
    ];
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !RESERVED.contains(&name.to_ascii_lowercase().as_str())
}

/// Parses `90s`, `5m`, `8h`, `1h30m`, `2d` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total: u64 = 0;
    let mut num = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(format!("{text:?} is not a duration (use e.g. 30s, 5m, 8h)")),
        };
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{text:?} is not a duration (use e.g. 30s, 5m, 8h)"))?;
        total = total
            .checked_add(n.saturating_mul(unit))
            .ok_or_else(|| format!("{text:?} is too long"))?;
        num.clear();
    }
    if !num.is_empty() || total == 0 {
        return Err(format!(
            "{text:?} is not a positive duration (use e.g. 30s, 5m, 8h)"
        ));
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
pub(crate) mod tests;
