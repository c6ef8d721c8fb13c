//! The command line: `serve`, `check-config`, `keygen`, `jwks`, `client-jwk`,
//! `pam-verify`, `pam-admin`, `cockpit-admin`, `sessions`, `policy`, `envoy-config`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{self, EXIT_CONFIG};

mod sessions;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "OpenID Connect single sign-on behind Envoy ext_authz"
)]
pub struct Cli {
    /// Log lines as `json` (one object a line) or `text`; default: `log.format` in the
    /// config, else text.
    #[arg(long, global = true, env = "PORTCULLIS_LOG_FORMAT", value_enum)]
    log_format: Option<crate::config::LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the ext_authz gRPC server and the HTTP service.
    Serve {
        #[arg(short, long, env = "PORTCULLIS_CONFIG")]
        config: PathBuf,
        /// Once every listener is bound and serving, write their addresses here as JSON
        /// (`{"grpc": "127.0.0.1:9100", "http": ...}`); with port 0 in the config, this is
        /// how a supervisor or a test learns the ports.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Validate a config file; report every problem and exit 64 if there are any.
    CheckConfig {
        #[arg(short, long, env = "PORTCULLIS_CONFIG")]
        config: PathBuf,
    },
    /// Generate a new ES256 (P-256) signing key as PKCS#8 PEM.
    Keygen {
        /// Write to this file (mode 0600) instead of stdout; refuses to overwrite.
        #[arg(short, long)]
        out: Option<PathBuf>,
    },
    /// Print the JWKS (public keys) for the config's signing key, e.g. for Grafana's jwk_set_file.
    Jwks {
        #[arg(short, long, env = "PORTCULLIS_CONFIG")]
        config: PathBuf,
    },
    /// Print the public key of `idp.client_key_file` as a JWKS, to register at the IdP for
    /// `private_key_jwt`.
    ClientJwk {
        #[arg(short, long, env = "PORTCULLIS_CONFIG")]
        config: PathBuf,
    },
    /// PAM helper for Cockpit single sign-on, run by `pam_exec expose_authtok`: reads the
    /// login token on stdin and the account from PAM_USER; exits 0 only for a valid token.
    PamVerify {
        /// JWKS file with portcullis's public keys (`portcullis jwks -c FILE > jwks.json`).
        #[arg(long)]
        jwks: PathBuf,
        /// portcullis's issuer, the `authenticate_url` origin (e.g. https://auth.example.com).
        #[arg(long)]
        issuer: String,
        /// The Cockpit route host (host:port when the port is not 443); the token's `aud` is
        /// `cockpit:HOST`. Repeat for several Cockpit routes.
        #[arg(long = "audience", required = true)]
        audiences: Vec<String>,
        /// Accounts with a lower uid (system accounts) never log in by SSO; root never does.
        #[arg(long, default_value_t = crate::cockpit::DEFAULT_MIN_UID)]
        min_uid: u32,
        /// Remember used tokens here (root-only directory, e.g. /run/portcullis-pam) and
        /// refuse a second use of the same token.
        #[arg(long)]
        replay_dir: Option<PathBuf>,
        /// Record here (root-only directory, e.g. /run/portcullis-pam/admin) that a token
        /// granting administrative access opened this Cockpit session, for `pam-admin`.
        #[arg(long)]
        admin_grants: Option<PathBuf>,
    },
    /// PAM helper for Cockpit's administrative access, run by `pam_exec seteuid` from sudo
    /// (see `cockpit-admin pam`): exits 0 only inside a Cockpit session that `pam-verify
    /// --admin-grants` recorded for PAM_USER.
    PamAdmin {
        /// The directory `pam-verify --admin-grants` writes.
        #[arg(long, default_value = crate::cockpit::admin::DEFAULT_GRANTS_DIR)]
        grants: PathBuf,
    },
    /// Print the files that give Cockpit's administrative access to single sign-on users
    /// in a route's `cockpit.admin_groups`.
    CockpitAdmin {
        #[command(subcommand)]
        command: CockpitAdminCommand,
    },
    /// List or end sessions through the admin API (the config's `admin` section).
    Sessions {
        #[arg(short, long, env = "PORTCULLIS_CONFIG")]
        config: Option<PathBuf>,
        /// The admin API, e.g. http://127.0.0.1:9102 (default: `admin.address`).
        #[arg(long)]
        address: Option<String>,
        /// The file holding the admin token (default: `admin.token_file`).
        #[arg(long)]
        token_file: Option<PathBuf>,
        #[command(subcommand)]
        action: sessions::Action,
    },
    /// Check route policies from the config alone (no IdP, no secrets needed).
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Print an Envoy bootstrap config matching the portcullis config.
    EnvoyConfig {
        #[arg(short, long, env = "PORTCULLIS_CONFIG")]
        config: PathBuf,
        /// Address Envoy's HTTPS listener binds.
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        /// Address of Envoy's admin interface.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
        #[arg(long)]
        tls_cert: PathBuf,
        #[arg(long)]
        tls_key: PathBuf,
        /// Reach portcullis at this host name (e.g. a compose service) instead of the
        /// configured listen addresses; the ports stay those of the config. Repeat for
        /// several replicas.
        #[arg(long)]
        portcullis_host: Vec<String>,
        /// A replica as `GRPC_HOST:PORT,HTTP_HOST:PORT` (e.g. two on one machine:
        /// `--replica 127.0.0.1:9100,127.0.0.1:9101 --replica 127.0.0.1:9110,127.0.0.1:9111`).
        /// Repeat for several.
        #[arg(long, value_parser = crate::envoy::Replica::parse)]
        replica: Vec<crate::envoy::Replica>,
        /// CA bundle that verifies HTTPS upstreams without a `tls.ca_file` of their own.
        #[arg(long, default_value = crate::envoy::DEFAULT_UPSTREAM_CA_FILE)]
        upstream_ca_file: PathBuf,
        /// Proxies in front of Envoy trusted to name the client in X-Forwarded-For (a load
        /// balancer: 1); the client address of policies and sign-in limits comes from them.
        #[arg(long, default_value_t = 0)]
        trusted_hops: u32,
    },
}

#[derive(Subcommand)]
enum CockpitAdminCommand {
    /// The sudoers drop-in (/etc/sudoers.d/portcullis-cockpit, mode 0440).
    Sudoers {
        /// The PAM service the privileged bridge authenticates with.
        #[arg(long, default_value = crate::cockpit::admin::DEFAULT_PAM_SERVICE)]
        pam_service: String,
        /// Cockpit's bridge, as Cockpit's shell manifest has sudo run it.
        #[arg(long, default_value = crate::cockpit::admin::DEFAULT_BRIDGE)]
        bridge: PathBuf,
    },
    /// The PAM service (/etc/pam.d/portcullis-cockpit-admin).
    Pam {
        /// The root-owned portcullis binary PAM runs.
        #[arg(long, default_value = "/usr/local/bin/portcullis")]
        bin: PathBuf,
        #[arg(long, default_value = crate::cockpit::admin::DEFAULT_GRANTS_DIR)]
        grants: PathBuf,
        /// Everyone without a grant: members of this group with their own password (Debian's
        /// sudo group; wheel on Fedora).
        #[arg(long, default_value = "sudo")]
        fallback_group: String,
        /// Everyone without a grant is refused.
        #[arg(long, conflicts_with = "fallback_group")]
        no_fallback: bool,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Print the decision for a request, and the rule that made it.
    Explain {
        #[arg(short, long, env = "PORTCULLIS_CONFIG")]
        config: PathBuf,
        #[arg(long)]
        url: String,
        #[arg(long, default_value = "GET")]
        method: String,
        /// The user's (verified) email; without any of --email, --user, --groups or --claim
        /// the request is anonymous.
        #[arg(long)]
        email: Option<String>,
        /// The IdP's subject (default: the email's local part).
        #[arg(long)]
        user: Option<String>,
        /// Comma-separated groups.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// A claim, `name=value`; repeat for more (or more values).
        #[arg(long = "claim")]
        claims: Vec<String>,
        /// The client address.
        #[arg(long)]
        ip: Option<std::net::IpAddr>,
        /// The email is not verified.
        #[arg(long)]
        unverified: bool,
    },
    /// Check a table of expected decisions (YAML: a list of {url, method, email, user,
    /// groups, claims, ip, expect: allow|deny|sign_in|no_route, rule}); exit 1 on a mismatch.
    Test {
        #[arg(short, long, env = "PORTCULLIS_CONFIG")]
        config: PathBuf,
        cases: PathBuf,
    },
}

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let format = cli.log_format;
    // `serve` sets up logging once its config (which may name the format) is read.
    let _log = (!matches!(cli.command, Command::Serve { .. }))
        .then(|| init_tracing(format.unwrap_or_default()));
    match cli.command {
        Command::Serve { config, ready_file } => serve(config, ready_file, format),
        Command::CheckConfig { config } => match config::load(&config) {
            Ok(c) => {
                println!("config OK: {} routes", c.routes.len());
                ExitCode::SUCCESS
            }
            Err(errors) => config_failed(&errors),
        },
        Command::Keygen { out } => keygen(out),
        Command::Sessions {
            config,
            address,
            token_file,
            action,
        } => sessions::run(
            sessions::AdminTarget {
                config,
                address,
                token_file,
            },
            action,
        ),
        Command::PamVerify {
            jwks,
            issuer,
            audiences,
            replay_dir,
            min_uid,
            admin_grants,
        } => match crate::cockpit::pam_verify_main(
            &jwks,
            issuer.trim_end_matches('/'),
            &audiences,
            replay_dir.as_deref(),
            min_uid,
            admin_grants.as_deref(),
        ) {
            Ok((user, admin)) => {
                let admin = if admin {
                    ", with administrative access"
                } else {
                    ""
                };
                eprintln!("portcullis pam-verify: accepted token for {user}{admin}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("portcullis pam-verify: {e}");
                ExitCode::FAILURE
            }
        },
        Command::PamAdmin { grants } => match crate::cockpit::admin::pam_admin_main(&grants) {
            Ok((user, session)) => {
                eprintln!(
                    "portcullis pam-admin: administrative access for {user} (Cockpit session {session})"
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("portcullis pam-admin: {e}");
                ExitCode::FAILURE
            }
        },
        Command::CockpitAdmin { command } => {
            use crate::cockpit::admin;
            let text = match command {
                CockpitAdminCommand::Sudoers {
                    pam_service,
                    bridge,
                } => admin::sudoers(&pam_service, &bridge),
                CockpitAdminCommand::Pam {
                    bin,
                    grants,
                    fallback_group,
                    no_fallback,
                } => admin::pam_service(
                    &bin,
                    &grants,
                    (!no_fallback).then_some(fallback_group.as_str()),
                ),
            };
            print!("{text}");
            ExitCode::SUCCESS
        }
        Command::Jwks { config } => match config::load(&config) {
            Ok(c) => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(c.signing_keys.jwks()).expect("JWKS serializes")
                );
                ExitCode::SUCCESS
            }
            Err(errors) => config_failed(&errors),
        },
        Command::Policy { command } => policy(command),
        Command::ClientJwk { config } => match config::load(&config) {
            Ok(c) => match &c.idp.client_key {
                Some(key) => {
                    let jwks = serde_json::json!({ "keys": [key.public_jwk()] });
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&jwks).expect("JWKS serializes")
                    );
                    ExitCode::SUCCESS
                }
                None => {
                    eprintln!("error: the config has no idp.client_key_file");
                    ExitCode::from(EXIT_CONFIG as u8)
                }
            },
            Err(errors) => config_failed(&errors),
        },
        Command::EnvoyConfig {
            config,
            listen,
            admin,
            tls_cert,
            tls_key,
            portcullis_host,
            replica,
            upstream_ca_file,
            trusted_hops,
        } => match config::load(&config) {
            Ok(c) => {
                let mut replicas: Vec<_> = portcullis_host
                    .iter()
                    .map(|h| crate::envoy::Replica::named(h, &c))
                    .collect();
                replicas.extend(replica);
                let opts = crate::envoy::EnvoyOptions {
                    listen,
                    admin,
                    tls_cert: &tls_cert,
                    tls_key: &tls_key,
                    replicas,
                    upstream_ca_file: &upstream_ca_file,
                    trusted_hops,
                };
                print!("{}", crate::envoy::bootstrap_yaml(&c, &opts));
                ExitCode::SUCCESS
            }
            Err(errors) => config_failed(&errors),
        },
    }
}

fn policy(command: PolicyCommand) -> ExitCode {
    use crate::explain::{Case, ClaimValue, explain, run_cases};
    let load = |path: &PathBuf| {
        config::load_routes(path)
            .map(|r| crate::core::RouteTable::new(r.into_iter().map(|r| r.route).collect()))
    };
    match command {
        PolicyCommand::Explain {
            config,
            url,
            method,
            email,
            user,
            groups,
            claims,
            ip,
            unverified,
        } => {
            let routes = match load(&config) {
                Ok(r) => r,
                Err(errors) => return config_failed(&errors),
            };
            let mut by_name: std::collections::HashMap<String, ClaimValue> = Default::default();
            for c in claims {
                let Some((k, v)) = c.split_once('=') else {
                    eprintln!("error: --claim {c:?}: write name=value");
                    return ExitCode::from(EXIT_CONFIG as u8);
                };
                let values = match by_name.remove(k) {
                    Some(ClaimValue::One(one)) => vec![one, v.to_string()],
                    Some(ClaimValue::Many(mut many)) => {
                        many.push(v.to_string());
                        many
                    }
                    None => vec![v.to_string()],
                };
                by_name.insert(k.to_string(), ClaimValue::Many(values));
            }
            let case = Case {
                url,
                method: Some(method),
                user,
                email,
                email_verified: Some(!unverified),
                groups,
                claims: by_name,
                ip,
                ..Default::default()
            };
            match explain(&routes, &case) {
                Ok(x) => {
                    println!("route:    {}", x.route.as_deref().unwrap_or("(none)"));
                    println!("decision: {:?}", x.result);
                    println!("because:  {}", x.because);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(EXIT_CONFIG as u8)
                }
            }
        }
        PolicyCommand::Test { config, cases } => {
            let routes = match load(&config) {
                Ok(r) => r,
                Err(errors) => return config_failed(&errors),
            };
            let cases: Vec<Case> = match std::fs::read_to_string(&cases)
                .map_err(|e| e.to_string())
                .and_then(|t| serde_yaml_ng::from_str(&t).map_err(|e| e.to_string()))
            {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {}: {e}", cases.display());
                    return ExitCode::from(EXIT_CONFIG as u8);
                }
            };
            let (n, failures) = run_cases(&routes, &cases);
            for f in &failures {
                println!("FAIL {f}");
            }
            println!("{} of {n} cases as expected", n - failures.len());
            if failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn config_failed(errors: &config::ConfigErrors) -> ExitCode {
    eprintln!("{errors}");
    eprintln!("{} problem(s) in the config", errors.0.len());
    ExitCode::from(EXIT_CONFIG as u8)
}

fn serve(
    path: PathBuf,
    ready_file: Option<PathBuf>,
    format: Option<crate::config::LogFormat>,
) -> ExitCode {
    // Validate everything before any port is bound.
    let config = match config::load(&path) {
        Ok(c) => c,
        Err(errors) => return config_failed(&errors),
    };
    // The files as they were read: a change from now on is reloaded, even one made before
    // the reloader runs.
    let watcher = crate::reload::Watcher::new(path.clone(), config.files.clone());
    // Before any thread exists (the log writer's included): taking the sockets clears
    // their environment variables.
    let inherited = match crate::server::activation::Inherited::take() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: socket activation: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _log = init_tracing(format.unwrap_or(config.log.format));
    let runtime = match runtime(tokio::runtime::Builder::new_multi_thread()) {
        Ok(r) => r,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        let watcher = watcher.catch_hangup();
        let listeners = match crate::server::bind_with(&config.server, inherited).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot bind {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Some(file) = &ready_file
            && let Err(e) = listeners.write_ready_file(file)
        {
            eprintln!("error: cannot write the ready file {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
        let stopping = crate::server::Stopping {
            drain_delay: config.server.drain_delay,
            grace: config.server.shutdown_grace,
        };
        let app = match crate::app::App::new(config) {
            Ok(app) => std::sync::Arc::new(app),
            Err(e) => {
                eprintln!("error: session_store: {e}");
                return ExitCode::FAILURE;
            }
        };
        let live = crate::app::Live::new(app);
        let reloader = tokio::spawn(watcher.run(live.clone()));
        let served =
            crate::server::serve(live, listeners, stopping, crate::server::shutdown_signal()).await;
        reloader.abort();
        match served {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        }
    })
}

/// A tokio runtime from `builder`, or the exit code that says why there is none.
fn runtime(mut builder: tokio::runtime::Builder) -> Result<tokio::runtime::Runtime, ExitCode> {
    builder.enable_all().build().map_err(|e| {
        eprintln!("error: cannot start the runtime: {e}");
        ExitCode::FAILURE
    })
}

fn keygen(out: Option<PathBuf>) -> ExitCode {
    let pem = crate::identity::generate_pkcs8_pem();
    let Some(path) = out else {
        print!("{pem}");
        return ExitCode::SUCCESS;
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options
        .open(&path)
        .and_then(|mut f| f.write_all(pem.as_bytes()))
    {
        Ok(()) => {
            eprintln!("wrote {}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr through a background writer that writes in batches
/// ([`crate::logwriter`]: a slow reader of stderr must not hold up `Check`s, and a line per
/// decision must not cost a write each), at `RUST_LOG` (default info), as text or JSON lines.
/// Keep the guard: dropping it writes what is buffered.
fn init_tracing(format: crate::config::LogFormat) -> crate::logwriter::Guard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Lossless: writers wait rather than drop lines when stderr is blocked.
    let (writer, guard) = crate::logwriter::batch_writer(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _ = match format {
        crate::config::LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        crate::config::LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
    guard
}
