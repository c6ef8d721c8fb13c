//! One test's whole stack: the IdP (the dev IdP of its own, or the test binary's shared
//! LemonLDAP::NG), the echo upstream (in process), portcullis and Envoy, in a temp dir, on
//! ports of their own.
//!
//! Every port is bound by the process that uses it and reported back (port 0), except
//! Envoy's HTTPS listener: the IdP's redirect URIs and portcullis's routes name it, so it is
//! picked first. Envoy binding it is the check: if something took it meanwhile, Envoy says
//! so, and the IdP and portcullis are started again for another port.
//!
//! Each test builds its own [`Stack`], so tests run in parallel and stay isolated. When the
//! stack is dropped it stops everything by pid and fails the test if portcullis (run at
//! `RUST_LOG=trace`) logged any secret the test saw; on a failing test it prints the tail
//! of every log and keeps its files.

use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use base64::Engine;
use reqwest::{Response, StatusCode, Url};

use crate::browser::{self, Browser, send};
use crate::certs::{Certs, test_certs};
use crate::echo::{Echo, EchoRequest};
use crate::envoy::{self, StartError};
use crate::idp::{self, IdpOptions};
use crate::lemonldap::{self, Outcome, RpSettings, Shared};
use crate::portcullis::{self, Secrets, portcullis_bin, write_secrets};
use crate::proc::{LOG_TAIL_LINES, Proc, run};
use crate::proxies::{self, Front, Upstreams};
use crate::{free_port, temp_dir};

/// `RUST_LOG` of [`StackBuilder::quiet_libraries`].
const QUIET_LIBRARIES: &str =
    "trace,h2=info,hyper=info,hyper_util=info,tonic=info,tower=info,fred=info,redis_protocol=info";

/// How often the start is redone when Envoy's port was taken meanwhile.
const START_ATTEMPTS: usize = 5;

/// An extra route for [`StackBuilder::route`].
#[derive(Debug, Clone)]
struct RouteSpec {
    name: String,
    host: String,
    policy: String,
    /// More keys of the route, one YAML line each (see [`StackBuilder::route_option`]).
    extra: Vec<String>,
    /// Path prefix of `from` (see [`StackBuilder::route_path`]); empty for `/`.
    path: String,
    /// Upstream instead of the echo app (see [`StackBuilder::route_upstream`]).
    to: Option<String>,
}

/// The OpenID Connect provider a [`Stack`] signs in with.
#[derive(Debug, Clone, Copy, Default)]
pub enum IdpChoice {
    /// The npm `oidc-provider` (`examples/demo/idp.mjs`), started for the stack.
    #[default]
    Dev,
    /// The test binary's LemonLDAP::NG ([`shared_lemonldap`]), as one of its relying parties.
    LemonLdap {
        llng: &'static Shared,
        rp: &'static RpSettings,
    },
}

/// The redirect URIs the IdP must know for a stack whose Envoy listens on `envoy_port`:
/// the callback and the post-logout redirect URI on the auth host.
pub fn redirect_uris(envoy_port: u16) -> (String, String) {
    idp::redirect_uris(&format!("https://auth.localhost:{envoy_port}"))
}

/// The test binary's LemonLDAP::NG with the relying parties `rps` (every test of a binary
/// passes the same ones), registered for the Envoy ports that stacks on it will use. See
/// [`lemonldap::shared`]; [`StackBuilder::lemonldap`] makes a stack use it.
pub fn shared_lemonldap(rps: &[RpSettings], opts: &lemonldap::Options) -> &'static Shared {
    crate::tier::require_lemonldap();
    lemonldap::shared(rps, opts, redirect_uris)
}

/// Options for a [`Stack`]. The stack always has the routes `app` (any authenticated
/// user) on `app.localhost` and `admin` (group `admins`) on `admin.localhost`, both
/// served by the echo upstream.
#[derive(Debug, Default)]
pub struct StackBuilder {
    cookie_lifetime: Option<String>,
    routes: Vec<RouteSpec>,
    /// Serve `server.jwks_address` (see [`Ports::jwks`]).
    jwks_listener: bool,
    /// Also serve the echo upstream over HTTPS (see [`Ports::echo_tls`]).
    tls_echo: bool,
    /// Top-level YAML lines appended to the config.
    config_extra: Vec<String>,
    /// How many portcullis processes serve behind Envoy (1 unless [`Self::replicas`]).
    replicas: usize,
    /// More keys of the `server` section, one YAML line each.
    server_extra: Vec<String>,
    /// Write `secrets/admin_token` (see [`Self::admin_token`]).
    admin_token: bool,
    /// More arguments for the dev IdP (see [`Self::idp_args`]).
    idp_args: Vec<String>,
    /// Register the auth host's back-channel logout URI at the IdP.
    backchannel_logout: bool,
    /// portcullis's `RUST_LOG` (see [`Self::quiet_libraries`]); `trace` by default.
    log_filter: Option<String>,
    idp: IdpChoice,
    /// More keys of `idp:`, one YAML line each.
    idp_options: Vec<String>,
    /// The proxy in front (see [`StackBuilder::front`]).
    front: Front,
    /// Have the IdP write its signing key (see [`Stack::idp_key_file`]).
    export_idp_key: bool,
}

impl StackBuilder {
    /// Sets `cookie.lifetime` (e.g. `"3s"`); the default is the contract's `8h`.
    pub fn cookie_lifetime(mut self, lifetime: &str) -> Self {
        self.cookie_lifetime = Some(lifetime.to_string());
        self
    }

    /// Adds a route to the echo upstream on `https://<label>.localhost:<port>`, with a
    /// policy written as a YAML flow mapping, e.g. `{ emails: [bob@example.com] }`.
    pub fn route(mut self, name: &str, label: &str, policy: &str) -> Self {
        let host = format!("{label}.localhost");
        assert!(
            browser::HOSTS.contains(&host.as_str()),
            "{host} is not one of the test hosts {:?}",
            browser::HOSTS
        );
        self.routes.push(RouteSpec {
            name: name.to_string(),
            host,
            policy: policy.to_string(),
            extra: Vec::new(),
            path: String::new(),
            to: None,
        });
        self
    }

    fn route_spec(&mut self, name: &str) -> &mut RouteSpec {
        self.routes
            .iter_mut()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no route {name:?} was added"))
    }

    /// Serves the route `name` under a path prefix, e.g. `/admin` for
    /// `https://apps.localhost:<port>/admin`.
    pub fn route_path(mut self, name: &str, prefix: &str) -> Self {
        assert!(prefix.starts_with('/'), "{prefix:?} must start with /");
        self.route_spec(name).path = prefix.to_string();
        self
    }

    /// Sends the route `name` to `to` (e.g. `http://127.0.0.1:9090`) instead of the echo app;
    /// `{echo_tls}` in it stands for the HTTPS echo's port.
    pub fn route_upstream(mut self, name: &str, to: &str) -> Self {
        self.route_spec(name).to = Some(to.to_string());
        self
    }

    /// Adds one more key to the route `name` (added with [`Self::route`] before), as one
    /// YAML line, e.g. `role: { from_groups: { admins: Admin }, default: Viewer }`; `{ca}`
    /// in it stands for the test CA's file.
    pub fn route_option(mut self, name: &str, yaml_line: &str) -> Self {
        self.route_spec(name).extra.push(yaml_line.to_string());
        self
    }

    /// Also serves the echo upstream over HTTPS, with the test CA's certificate, on
    /// [`Ports::echo_tls`].
    pub fn tls_echo(mut self) -> Self {
        self.tls_echo = true;
        self
    }

    /// Sets `server.jwks_address` (the standalone JWKS listener), on [`Ports::jwks`].
    pub fn jwks_listener(mut self) -> Self {
        self.jwks_listener = true;
        self
    }

    /// Runs `n` portcullis replicas behind Envoy (`envoy-config --replica` for each), on one
    /// config (each on ports of its own); give them a shared store with
    /// [`Self::redis_store`].
    pub fn replicas(mut self, n: usize) -> Self {
        assert!(n >= 1);
        self.replicas = n;
        self
    }

    /// Writes a random admin token to `secrets/admin_token` in the stack's dir when it
    /// starts (for an `admin: { token_file: secrets/admin_token }` in the config).
    pub fn admin_token(mut self) -> Self {
        self.admin_token = true;
        self
    }

    /// Starts the dev IdP with these arguments too, e.g. `["--access-token-ttl", "6"]`.
    pub fn idp_args(mut self, args: &[&str]) -> Self {
        self.idp_args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Registers `AUTH/.portcullis/backchannel_logout` at the dev IdP, which then POSTs a
    /// logout token there (through Envoy, trusting the test CA) when a session ends there.
    pub fn backchannel_logout(mut self) -> Self {
        self.backchannel_logout = true;
        self
    }

    /// Runs portcullis at `trace` for its own code only, with h2, hyper, tonic and fred at
    /// `info`: for tests whose load would otherwise spend the two cores on frame-by-frame
    /// library traces (the log scan for secrets still reads every line portcullis writes).
    pub fn quiet_libraries(mut self) -> Self {
        self.log_filter = Some(QUIET_LIBRARIES.to_string());
        self
    }

    /// Runs portcullis at `RUST_LOG=filter` instead of `trace` (the soak: `info` without
    /// the per-request audit lines, whose volume in minutes of load the log scan would read).
    /// The start waits for `portcullis::reload`'s info line: keep it.
    pub fn log_filter(mut self, filter: &str) -> Self {
        self.log_filter = Some(filter.to_string());
        self
    }

    /// Serves `server.metrics_address` on port 0, reported in [`Ports::metrics`] (a restart
    /// of portcullis binds another port, and updates it).
    pub fn metrics_listener(self) -> Self {
        self.server_option("metrics_address: 127.0.0.1:0")
    }

    /// Adds a key to the config's `server` section, as one YAML line (`drain_delay: 2s`).
    pub fn server_option(mut self, yaml_line: &str) -> Self {
        self.server_extra.push(yaml_line.to_string());
        self
    }

    /// Keeps sessions in Redis at `url` (e.g. [`crate::redis::Redis::url`]), under a key
    /// prefix of this stack's own.
    pub fn redis_store(self, url: &str) -> Self {
        let prefix = format!("s{}:", free_port());
        self.config_extra(&format!(
            "session_store: {{ redis: {{ url: \"{url}\", key_prefix: \"{prefix}\" }} }}"
        ))
    }

    /// Signs in with the test binary's LemonLDAP::NG (see [`shared_lemonldap`]) as its
    /// relying party `client_id`, whose secret becomes the stack's client secret, instead
    /// of a dev IdP of the stack's own.
    pub fn lemonldap(mut self, llng: &'static Shared, client_id: &str) -> Self {
        self.idp = IdpChoice::LemonLdap {
            llng,
            rp: llng.rp(client_id),
        };
        self
    }

    /// Adds a key to the config's `idp:`, as one YAML line, e.g.
    /// `token_endpoint_auth: client_secret_post`.
    pub fn idp_option(mut self, yaml_line: &str) -> Self {
        self.idp_options.push(yaml_line.to_string());
        self
    }

    /// Puts nginx or Caddy in front instead of Envoy, configured by `examples/nginx/` or
    /// `examples/caddy/` (hosts `auth`, `app`, `admin` and `cockpit`, the last going to the
    /// `to` of a route named `cockpit`), asking portcullis's forward-auth listener.
    pub fn front(mut self, front: Front) -> Self {
        self.front = front;
        self
    }

    /// Has the IdP write its signing key to [`Stack::idp_key_file`], so a test can sign
    /// tokens the IdP would never issue with its real key.
    pub fn export_idp_key(mut self) -> Self {
        self.export_idp_key = true;
        self
    }

    /// Appends a top-level key to the config, as YAML, e.g.
    /// `published_key_files: [secrets/next.pub.pem]` (paths relative to the stack's dir).
    pub fn config_extra(mut self, yaml: &str) -> Self {
        self.config_extra.push(yaml.to_string());
        self
    }

    /// Starts the echo upstream, the IdP, portcullis and Envoy, and waits until all are
    /// ready. Panics with what to install when a part is missing (`scripts/test` installs
    /// them all).
    pub async fn start(self) -> Stack {
        crate::tier::require_stack();
        if self.front != Front::Envoy {
            crate::tier::require_proxies();
        }
        let certs = test_certs();
        let dir = temp_dir("stack");
        let secrets = write_secrets(&dir);
        if self.admin_token {
            let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
                ring::rand::generate::<[u8; 24]>(&ring::rand::SystemRandom::new())
                    .expect("random bytes")
                    .expose(),
            );
            fs::write(dir.join("secrets/admin_token"), token).unwrap();
        }
        if let IdpChoice::LemonLdap { rp, .. } = self.idp {
            let secret = rp.client_secret.as_deref().unwrap_or_else(|| {
                panic!(
                    "LemonLDAP's relying party {} is public: portcullis needs a secret",
                    rp.client_id
                )
            });
            fs::write(&secrets.client_secret, format!("{secret}\n")).unwrap();
        }
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let echo = Echo::start(
            any,
            self.tls_echo
                .then_some((any, certs.cert.as_path(), certs.key.as_path())),
        )
        .unwrap_or_else(|e| panic!("echo upstream: {e:#}"));
        let mut stack = Stack {
            config: dir.join("portcullis.yaml"),
            ports: Ports {
                envoy: 0,
                envoy_admin: 0,
                idp: 0,
                echo: echo.addr.port(),
                grpc: 0,
                http: 0,
                jwks: 0,
                forward_auth: 0,
                echo_tls: echo.tls_addr.map_or(0, |a| a.port()),
                metrics: 0,
            },
            replicas: Vec::new(),
            log_filter: self.log_filter.clone().unwrap_or_else(|| "trace".into()),
            front: self.front,
            dir,
            secrets,
            certs,
            browsers: Mutex::new(Vec::new()),
            noted: Mutex::new(Vec::new()),
            echo,
            procs: Vec::new(),
            idp: self.idp,
        };
        for attempt in 1..=START_ATTEMPTS {
            stack.ports.envoy = match self.idp {
                IdpChoice::Dev => free_port(),
                IdpChoice::LemonLdap { llng, .. } => llng.take_port(),
            };
            match self.start_processes(&mut stack).await {
                Ok(()) => {
                    stack.until_bound_config_reloaded().await;
                    return stack;
                }
                Err(StartError::PortTaken(e)) if attempt < START_ATTEMPTS => {
                    eprintln!(
                        "testkit: {}'s port {} was taken meanwhile; starting again on another ({e})",
                        self.front.name(),
                        stack.ports.envoy
                    );
                    stack.retire_all(&format!("attempt {attempt}"));
                }
                Err(e) => panic!("the stack did not start: {e}"),
            }
        }
        unreachable!("the loop returns or panics")
    }

    /// The IdP, then portcullis, then Envoy (or the proxy in front), for the port in
    /// `stack.ports.envoy`.
    async fn start_processes(&self, stack: &mut Stack) -> Result<(), StartError> {
        let failed = StartError::Failed;
        match self.idp {
            IdpChoice::Dev => {
                let auth = stack.origin("auth");
                let mut idp_args = self.idp_args.clone();
                if self.backchannel_logout {
                    idp_args.push("--backchannel-logout-uri".into());
                    idp_args.push(format!("{auth}/.portcullis/backchannel_logout"));
                    idp_args.push("--ca-file".into());
                    idp_args.push(stack.certs.ca.display().to_string());
                }
                if self.export_idp_key {
                    idp_args.push("--key-out".into());
                    idp_args.push(stack.idp_key_file().display().to_string());
                }
                let idp = idp::start(
                    "idp",
                    &IdpOptions {
                        port: 0,
                        client_secret_file: &stack.secrets.client_secret,
                        auth_origin: &auth,
                        extra: &idp_args,
                    },
                    &stack.log_path("idp"),
                )
                .await
                .map_err(failed)?;
                stack.ports.idp = idp.port;
                stack.procs.push(idp.proc);
            }
            IdpChoice::LemonLdap { llng, .. } => stack.ports.idp = llng.port,
        }

        // Port 0 for portcullis's listeners; then the config names the ports it bound, for
        // envoy-config and for a restart on the same ports.
        let zero = Listen::default();
        fs::write(&stack.config, self.config_yaml(stack, &zero)).unwrap();
        let bound = stack.serve_portcullis(true).await.map_err(failed)?;
        stack.ports.grpc = bound.grpc.port();
        stack.ports.http = bound.http.port();
        stack.ports.jwks = bound.jwks.map_or(0, |a| a.port());
        stack.ports.forward_auth = bound.forward_auth.map_or(0, |a| a.port());
        stack.ports.metrics = bound.metrics.map_or(0, |a| a.port());
        let listen = Listen {
            grpc: stack.ports.grpc,
            http: stack.ports.http,
            jwks: stack.ports.jwks,
            forward_auth: stack.ports.forward_auth,
        };
        fs::write(&stack.config, self.config_yaml(stack, &listen)).unwrap();
        stack.replicas = vec![Replica {
            name: "portcullis".into(),
            config: stack.config.clone(),
            grpc: stack.ports.grpc,
            http: stack.ports.http,
            admin: bound.admin.map_or(0, |a| a.port()),
        }];
        for i in 2..=self.replicas.max(1) {
            let name = format!("portcullis-{i}");
            let config = stack.dir.join(format!("{name}.yaml"));
            fs::write(&config, self.config_yaml(stack, &zero)).unwrap();
            let (proc, bound) = portcullis::serve(
                &name,
                &config,
                &stack.log_path(&name),
                &stack.log_filter,
                &stack.authority("auth"),
            )
            .await
            .map_err(failed)?;
            stack.procs.push(proc);
            let listen = Listen {
                grpc: bound.grpc.port(),
                http: bound.http.port(),
                jwks: bound.jwks.map_or(0, |a| a.port()),
                forward_auth: bound.forward_auth.map_or(0, |a| a.port()),
            };
            fs::write(&config, self.config_yaml(stack, &listen)).unwrap();
            stack.replicas.push(Replica {
                name,
                config,
                grpc: listen.grpc,
                http: listen.http,
                admin: bound.admin.map_or(0, |a| a.port()),
            });
        }

        if self.front != Front::Envoy {
            let loopback = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
            let cockpit = self
                .routes
                .iter()
                .find(|r| r.name == "cockpit")
                .and_then(|r| r.to.as_deref())
                .and_then(|to| to.strip_prefix("http://"))
                .and_then(|a| a.parse().ok())
                // Nothing listens on the discard port: the host is there, its upstream not.
                .unwrap_or(loopback(9));
            let upstreams = Upstreams {
                listen: stack.ports.envoy,
                http: bound.http,
                forward_auth: bound
                    .forward_auth
                    .expect("portcullis reports its forward-auth listener"),
                echo: loopback(stack.ports.echo),
                cockpit,
                cert: stack.certs.cert.clone(),
                key: stack.certs.key.clone(),
                ca: stack.certs.ca.clone(),
            };
            let name = self.front.name();
            let proc =
                proxies::start(self.front, &stack.dir, &upstreams, &stack.log_path(name)).await?;
            stack.procs.push(proc);
            return Ok(());
        }
        let envoy_yaml = stack.render_envoy_config();
        let envoy = envoy::start("envoy", &envoy_yaml, 1, "warn", &stack.log_path("envoy")).await?;
        stack.ports.envoy_admin = envoy.admin.port();
        stack.procs.push(envoy.proc);
        Ok(())
    }

    /// The portcullis config, per the contract, on this stack's ports.
    fn config_yaml(&self, stack: &Stack, listen: &Listen) -> String {
        let p = &stack.ports;
        let lifetime = self.cookie_lifetime.as_deref().unwrap_or("8h");
        let mut jwks = if self.jwks_listener {
            format!("  jwks_address: 127.0.0.1:{}\n", listen.jwks)
        } else {
            String::new()
        };
        for line in &self.server_extra {
            jwks.push_str(&format!("  {line}\n"));
        }
        let client_id = match self.idp {
            IdpChoice::Dev => "portcullis",
            IdpChoice::LemonLdap { rp, .. } => &rp.client_id,
        };
        let idp_extra: String = self
            .idp_options
            .iter()
            .map(|line| format!("  {line}\n"))
            .collect();
        if self.front != Front::Envoy {
            jwks.push_str(&format!(
                "  forward_auth_address: 127.0.0.1:{}\n",
                listen.forward_auth
            ));
        }
        let mut yaml = format!(
            "\
server:
  grpc_address: 127.0.0.1:{grpc}
  http_address: 127.0.0.1:{http}
{jwks}authenticate_url: https://auth.localhost:{envoy}
idp:
  issuer: http://127.0.0.1:{idp}
  client_id: {client_id}
  client_secret_file: secrets/client_secret
  scopes: [openid, email, profile, groups]
  groups_claim: groups
{idp_extra}cookie:
  name: _portcullis
  secret_file: secrets/cookie_secret
  lifetime: {lifetime}
signing_key_file: secrets/signing_key.pem
identity_header: X-Portcullis-Jwt-Assertion
routes:
  - name: app
    from: https://app.localhost:{envoy}
    to: http://127.0.0.1:{echo}
    policy: {{ any_authenticated_user: true }}
  - name: admin
    from: https://admin.localhost:{envoy}
    to: http://127.0.0.1:{echo}
    policy: {{ groups: [admins] }}
",
            grpc = listen.grpc,
            http = listen.http,
            envoy = p.envoy,
            idp = p.idp,
            echo = p.echo,
        );
        let echo = format!("http://127.0.0.1:{}", p.echo);
        for r in &self.routes {
            yaml.push_str(&format!(
                "  - name: {}\n    from: https://{}:{}{}\n    to: {}\n    policy: {}\n",
                r.name,
                r.host,
                p.envoy,
                r.path,
                r.to.as_deref()
                    .unwrap_or(&echo)
                    .replace("{echo_tls}", &p.echo_tls.to_string()),
                r.policy
            ));
            for line in &r.extra {
                let line = line.replace("{ca}", &stack.certs.ca.display().to_string());
                yaml.push_str(&format!("    {line}\n"));
            }
        }
        for extra in &self.config_extra {
            yaml.push_str(extra.trim_end());
            yaml.push('\n');
        }
        yaml
    }
}

/// The ports portcullis listens on (0 before it has bound them).
#[derive(Default)]
struct Listen {
    grpc: u16,
    http: u16,
    jwks: u16,
    forward_auth: u16,
}

/// The ports of one stack.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// Envoy's HTTPS listener (or the proxy's in front), on which every `*.localhost` host
    /// is served.
    pub envoy: u16,
    pub envoy_admin: u16,
    pub idp: u16,
    pub echo: u16,
    pub grpc: u16,
    pub http: u16,
    /// The standalone JWKS listener (only with [`StackBuilder::jwks_listener`]).
    pub jwks: u16,
    /// The forward-auth listener (only with nginx or Caddy in front).
    pub forward_auth: u16,
    /// The HTTPS echo (only with [`StackBuilder::tls_echo`]).
    pub echo_tls: u16,
    /// The metrics listener (only with [`StackBuilder::metrics_listener`]).
    pub metrics: u16,
}

/// One portcullis process of a stack.
#[derive(Debug, Clone)]
pub struct Replica {
    /// Its process's name (`portcullis`, `portcullis-2`, …).
    pub name: String,
    pub config: PathBuf,
    pub grpc: u16,
    pub http: u16,
    /// The admin API's port, when the config has an `admin` section.
    pub admin: u16,
}

/// The running processes of one test, and everything they need, in a temp dir.
pub struct Stack {
    /// The portcullis processes, the first being [`Stack::config`]'s.
    pub replicas: Vec<Replica>,
    /// portcullis's `RUST_LOG`.
    log_filter: String,
    pub dir: PathBuf,
    pub ports: Ports,
    pub config: PathBuf,
    pub certs: &'static Certs,
    /// The proxy in front.
    pub front: Front,
    secrets: Secrets,
    /// Every browser handed out, for the log scan at the end (their cookies are secrets).
    browsers: Mutex<Vec<Browser>>,
    /// More secrets for the log scan (see [`Stack::note_secret`]).
    noted: Mutex<Vec<String>>,
    echo: Echo,
    procs: Vec<Proc>,
    idp: IdpChoice,
}

impl Stack {
    /// A stack with the default options.
    pub async fn start() -> Stack {
        StackBuilder::default().start().await
    }

    pub fn builder() -> StackBuilder {
        StackBuilder::default()
    }

    /// `<label>.localhost:<envoy port>`, the authority browsers send for that host.
    pub fn authority(&self, label: &str) -> String {
        format!("{label}.localhost:{}", self.ports.envoy)
    }

    /// `https://<label>.localhost:<envoy port>`.
    pub fn origin(&self, label: &str) -> String {
        format!("https://{}", self.authority(label))
    }

    /// `https://<label>.localhost:<envoy port><path>`.
    pub fn url(&self, label: &str, path: &str) -> String {
        format!("{}{path}", self.origin(label))
    }

    /// Where the IdP wrote its signing key (with [`StackBuilder::export_idp_key`]): an RSA
    /// PKCS#8 PEM, whose tokens are RS256 with the key's RFC 7638 thumbprint as `kid`.
    pub fn idp_key_file(&self) -> PathBuf {
        self.dir.join("secrets/idp_signing_key.pem")
    }

    /// The IdP's issuer, `http://127.0.0.1:<port>`.
    pub fn idp_origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.idp)
    }

    /// The IdP this stack signs in with.
    pub fn idp(&self) -> IdpChoice {
        self.idp
    }

    /// Whether `url` is on the IdP.
    pub fn is_idp(&self, url: &Url) -> bool {
        url.origin().ascii_serialization() == self.idp_origin()
    }

    /// Signs in from `start` (a page of an app, or the sign-in URL) as `user`, through the
    /// IdP's login pages (the dev IdP's form, or LemonLDAP's login and consent pages; none
    /// when the browser's IdP session is still there), and follows the redirects to the end.
    /// Returns the last response and every Location, in order.
    pub async fn login(
        &self,
        browser: &Browser,
        start: &str,
        user: &str,
        password: &str,
    ) -> (Response, Vec<Url>) {
        match self.idp {
            IdpChoice::Dev => browser.login(start, user, password).await,
            IdpChoice::LemonLdap { llng, .. } => {
                let (response, mut visited) = browser.follow_until(start, |u| self.is_idp(u)).await;
                let Some(at_idp) = visited.last().filter(|u| self.is_idp(u)).cloned() else {
                    return (response, visited);
                };
                let portal = browser.portal(&llng.issuer);
                let back = portal
                    .authorize(at_idp.as_str(), user, password)
                    .await
                    .unwrap_or_else(|e| {
                        panic!(
                            "LemonLDAP sign-in as {user}: {e}\nthrough {:?}\nredirects:\n{}",
                            portal.trail(),
                            browser::list(&visited)
                        )
                    });
                let back = Url::parse(&back).expect("the portal's redirect is a URL");
                visited.push(back.clone());
                let (response, more) = browser.follow(back.as_str()).await;
                visited.extend(more);
                (response, visited)
            }
        }
    }

    /// Signs out from route host `label`: portcullis's confirmation page, its form, the
    /// IdP's RP-initiated logout (confirmed like a user would) and back. Returns the last
    /// response (portcullis's signed-out page when all went well) and every Location.
    pub async fn sign_out(&self, browser: &Browser, label: &str) -> (Response, Vec<Url>) {
        let (confirm, mut visited) = browser
            .follow(&self.url(label, "/.portcullis/sign_out"))
            .await;
        let (response, more) = browser
            .submit_form_until(confirm, &[], |u| self.is_idp(u))
            .await;
        visited.extend(more);
        let at_idp = visited.last().filter(|u| self.is_idp(u)).cloned();
        match (self.idp, at_idp) {
            (_, None) => (response, visited),
            // The dev IdP asks for one confirmation POST (its form submits itself).
            (IdpChoice::Dev, Some(url)) => {
                let page = send(browser.get(url.as_str())).await;
                let page = browser.follow_response(page, &mut visited).await;
                if page.status() != StatusCode::OK || !self.is_idp(page.url()) {
                    return (page, visited);
                }
                let (response, more) = browser.submit_form(page, &[]).await;
                visited.extend(more);
                (response, visited)
            }
            (IdpChoice::LemonLdap { llng, .. }, Some(url)) => {
                let portal = browser.portal(&llng.issuer);
                match portal.end_session(url.as_str()).await {
                    Ok(Outcome::Redirect(back)) => {
                        let back = Url::parse(&back).expect("the portal's redirect is a URL");
                        visited.push(back.clone());
                        let (response, more) = browser.follow(back.as_str()).await;
                        visited.extend(more);
                        (response, visited)
                    }
                    other => panic!(
                        "LemonLDAP's logout did not send the browser back: {other:?}\nthrough {:?}\nredirects:\n{}",
                        portal.trail(),
                        browser::list(&visited)
                    ),
                }
            }
        }
    }

    /// A new browser with an empty cookie jar.
    pub fn browser(&self) -> Browser {
        let browser = Browser::new(self.ports.envoy, &self.certs.ca);
        self.browsers.lock().unwrap().push(browser.share());
        browser
    }

    /// Signs `user` in (the dev IdP's users have their name as password) from the app's
    /// front page, and panics unless the browser lands there with 200.
    pub async fn sign_in(&self, browser: &Browser, user: &str) {
        let app = self.url("app", "/");
        let (response, visited) = browser.login(&app, user, user).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "{user} did not reach the app; redirects:\n{}",
            crate::list(&visited)
        );
    }

    /// `logs/NAME.log` in the stack's dir.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{name}.log"))
    }

    /// Starts one more process of this test (stopped with the stack, its log dumped on
    /// failure) and returns its index for [`Self::proc_mut`].
    pub fn spawn(&mut self, name: &str, cmd: Command) -> usize {
        let log = self.log_path(name);
        self.procs.push(Proc::spawn(name, cmd, &log));
        self.procs.len() - 1
    }

    /// Adds a process started elsewhere, to be stopped with the stack.
    pub fn adopt(&mut self, proc: Proc) {
        self.procs.push(proc);
    }

    /// The process named `name`.
    pub fn proc_mut(&mut self, name: &str) -> &mut Proc {
        self.procs
            .iter_mut()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no process {name} was started"))
    }

    /// Adds `value` (a token the test made or obtained) to the secrets that no portcullis
    /// log line may contain.
    pub fn note_secret(&self, value: &str) {
        self.noted.lock().unwrap().push(value.to_string());
    }

    /// Every secret value this test saw: the config's secrets, every cookie the browsers
    /// hold, every identity JWT, credential and cookie the upstream received, and what the
    /// test noted.
    fn secrets_seen(&self) -> Vec<String> {
        let mut seen = self.secrets.values();
        seen.extend(self.noted.lock().unwrap().iter().cloned());
        for b in self.browsers.lock().unwrap().iter() {
            seen.extend(b.all_cookie_values(self.ports.envoy));
        }
        for r in self.echo_requests() {
            for (name, value) in &r.headers {
                if name.contains("jwt") || name == "authorization" {
                    seen.push(value.clone());
                    // Basic credentials: the decoded token too.
                    if let Some(b64) = value.strip_prefix("Basic ")
                        && let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64)
                    {
                        seen.push(String::from_utf8_lossy(&raw).into_owned());
                    }
                }
                if name == "cookie" {
                    seen.extend(
                        value
                            .split([';', ','])
                            .filter_map(|p| p.split_once('='))
                            .map(|(_, v)| v.trim().to_string()),
                    );
                }
            }
        }
        // LemonLDAP's client secrets, sessions (SSO cookies, codes, tokens) and ID tokens.
        if let IdpChoice::LemonLdap { llng, .. } = self.idp {
            seen.extend(llng.secrets());
        }
        // Short values ("dark", "1") are not secrets and would match by chance.
        seen.retain(|s| s.len() >= 16);
        seen.sort();
        seen.dedup();
        seen
    }

    /// Fails the test if any portcullis log line (the suite runs it at `RUST_LOG=trace`)
    /// contains a secret value the test saw.
    fn logs_hold_no_secrets(&self) -> Result<(), String> {
        let secrets = self.secrets_seen();
        let mut problems = Vec::new();
        for p in self
            .procs
            .iter()
            .filter(|p| p.name.starts_with("portcullis"))
        {
            for line in p.log_text().lines() {
                if let Some(s) = secrets.iter().find(|s| line.contains(s.as_str())) {
                    problems.push(format!(
                        "{}: a secret ({}…, {} bytes) in: {line}",
                        p.log.display(),
                        &s[..8],
                        s.len()
                    ));
                }
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        Err(format!(
            "{} log line(s) carry secrets (checked {} values):\n{}",
            problems.len(),
            secrets.len(),
            problems.join("\n")
        ))
    }

    /// How many grants of `grant_type` (`refresh_token`, `authorization_code`) the dev
    /// IdP's token endpoint has answered.
    pub fn idp_grants(&mut self, grant_type: &str) -> usize {
        let line = format!("idp: grant {grant_type}");
        self.proc_mut("idp")
            .log_text()
            .lines()
            .filter(|l| l.trim() == line)
            .count()
    }

    /// Every request the echo upstream has received so far, in order.
    pub fn echo_requests(&self) -> Vec<EchoRequest> {
        self.echo.requests()
    }

    /// Whether the echo upstream keeps the requests it gets from now on (see
    /// [`Echo::keep_requests`]); the log scan then sees only those it kept.
    pub fn keep_echo_requests(&self, keep: bool) {
        self.echo.keep_requests(keep);
    }

    /// The pid of the process `name`, while it runs.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.procs.iter().find(|p| p.name == name)?.pid()
    }

    /// Rewrites the config file as `edit` returns it, in one rename, as an editor that
    /// saves atomically does: portcullis's reloader (looking every 2 s) never reads half a
    /// file.
    pub fn edit_config(&self, edit: impl FnOnce(&str) -> String) {
        let text = fs::read_to_string(&self.config).unwrap();
        let tmp = self.config.with_extension("yaml.new");
        fs::write(&tmp, edit(&text)).unwrap();
        fs::rename(&tmp, &self.config).unwrap();
    }

    /// Sends SIGHUP to portcullis (by its pid), as `systemctl reload` does: a reload.
    pub fn reload_portcullis(&self) {
        self.hang_up("portcullis");
    }

    /// Sends SIGHUP to the process `name` (by its pid).
    fn hang_up(&self, name: &str) {
        let pid = self.pid(name).unwrap_or_else(|| panic!("{name} runs"));
        // SAFETY: kill(2) on the pid of a child this stack started and has not reaped.
        let sent = unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) };
        assert_eq!(sent, 0, "SIGHUP to {name} ({pid})");
    }

    /// Stops portcullis (SIGKILL by pid) and waits for it to exit.
    pub fn stop_portcullis(&mut self) {
        self.proc_mut("portcullis").stop();
    }

    /// Stops the process `name`, keeps its log as `logs/NAME.<label>.log` (still scanned
    /// for secrets) and renames it `NAME (<label>)`.
    fn retire(&mut self, name: &str, label: &str) {
        let logs = self.dir.join("logs");
        let proc = self.proc_mut(name);
        proc.stop();
        let kept = logs.join(format!("{name}.{}.log", label.replace(' ', "-")));
        fs::rename(&proc.log, &kept)
            .unwrap_or_else(|e| panic!("rename {}: {e}", proc.log.display()));
        proc.log = kept;
        proc.name = format!("{name} ({label})");
    }

    /// Retires every running process (a start to be redone).
    fn retire_all(&mut self, label: &str) {
        let names: Vec<String> = self
            .procs
            .iter()
            .filter(|p| !p.name.contains(" ("))
            .map(|p| p.name.clone())
            .collect();
        for name in names {
            self.retire(&name, label);
        }
    }

    /// Restarts portcullis on the same ports with the config file as it is now (edit
    /// [`Stack::config`] first) and waits until it is ready. Sessions live in memory, so
    /// browsers must sign in again. The old log is kept as `logs/portcullis.N.log`.
    pub async fn restart_portcullis(&mut self) {
        self.restart_portcullis_waiting(true).await;
    }

    /// [`Self::restart_portcullis`] while the IdP is down (stopped first): waits until
    /// portcullis serves, not for a discovery that cannot finish, so sign-in answers 503.
    pub async fn restart_portcullis_without_the_idp(&mut self) {
        self.restart_portcullis_waiting(false).await;
    }

    async fn restart_portcullis_waiting(&mut self, for_the_idp: bool) {
        let n = self
            .procs
            .iter()
            .filter(|p| p.name.starts_with("portcullis (before restart"))
            .count()
            + 1;
        self.retire("portcullis", &format!("before restart {n}"));
        let bound = self
            .serve_portcullis(for_the_idp)
            .await
            .unwrap_or_else(|e| panic!("portcullis did not restart: {e}"));
        assert_eq!(
            (bound.grpc.port(), bound.http.port()),
            (self.ports.grpc, self.ports.http),
            "portcullis restarted on other ports"
        );
        // The metrics listener is on port 0 in the config: another one each run.
        self.ports.metrics = bound.metrics.map_or(0, |a| a.port());
    }

    /// Stops replica `i` (0-based) at once (SIGKILL), as a crash would.
    pub fn kill_replica(&mut self, i: usize) {
        let name = self.replicas[i].name.clone();
        self.proc_mut(&name).stop();
    }

    /// Starts replica `i` again on its ports, after [`Self::kill_replica`] or to restart it
    /// (`graceful`: SIGTERM and its drain first), and waits until it is ready.
    pub async fn restart_replica(&mut self, i: usize, graceful: bool) {
        let r = self.replicas[i].clone();
        let n = self
            .procs
            .iter()
            .filter(|p| p.name.starts_with(&format!("{} (run ", r.name)))
            .count()
            + 1;
        if graceful {
            let proc = self.proc_mut(&r.name);
            proc.set_grace(std::time::Duration::from_secs(20));
        }
        self.retire(&r.name, &format!("run {n}"));
        let (proc, bound) = portcullis::serve(
            &r.name,
            &r.config,
            &self.log_path(&r.name),
            &self.log_filter,
            &self.authority("auth"),
        )
        .await
        .unwrap_or_else(|e| panic!("{} did not restart: {e}", r.name));
        assert_eq!((bound.grpc.port(), bound.http.port()), (r.grpc, r.http));
        // The admin listener is on port 0 in the config: another one each run.
        self.replicas[i].admin = bound.admin.map_or(0, |a| a.port());
        self.procs.push(proc);
    }

    /// Has each portcullis reload the config the stack rewrote with the ports it bound
    /// (written after it was ready) at once, by SIGHUP, and waits for that reload. A test
    /// then starts with nothing left to reload, and can count reloads. (Waiting for the
    /// file watcher instead would cost up to its 2 s poll, and it may have reloaded
    /// already: the SIGHUP reload comes after it either way.)
    async fn until_bound_config_reloaded(&mut self) {
        let names: Vec<String> = self.replicas.iter().map(|r| r.name.clone()).collect();
        for name in names {
            self.hang_up(&name);
            let proc = self.proc_mut(&name);
            let log = proc.log.clone();
            proc.wait_for(
                "reload of the config with the bound ports",
                std::time::Duration::from_secs(10),
                || {
                    let log = log.clone();
                    async move {
                        let text = fs::read_to_string(&log).unwrap_or_default();
                        if text
                            .lines()
                            .any(|l| l.contains("config reloaded") && l.contains("SIGHUP"))
                        {
                            Ok(())
                        } else {
                            Err("no \"config reloaded\" line for the SIGHUP".to_string())
                        }
                    }
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        }
    }

    /// Starts portcullis with the config file as it is and waits until it is ready (and,
    /// `for_the_idp`, until it has discovered the IdP).
    async fn serve_portcullis(&mut self, for_the_idp: bool) -> Result<portcullis::Bound, String> {
        let (name, config, log) = ("portcullis", &self.config, self.log_path("portcullis"));
        // Every level, so that the log scan at the end sees every line there is.
        let level = &self.log_filter;
        let (proc, bound) = if for_the_idp {
            portcullis::serve(name, config, &log, level, &self.authority("auth")).await?
        } else {
            portcullis::serve_undiscovered(name, config, &log, level).await?
        };
        self.procs.push(proc);
        Ok(bound)
    }

    /// The JWKS URL of the standalone listener (see [`StackBuilder::jwks_listener`]).
    pub fn jwks_listener_url(&self) -> String {
        format!(
            "http://127.0.0.1:{}/.well-known/portcullis/jwks.json",
            self.ports.jwks
        )
    }

    /// The JWKS served on the auth host, fetched through Envoy.
    pub async fn jwks(&self) -> serde_json::Value {
        let url = self.url("auth", "/.well-known/portcullis/jwks.json");
        let response = send(self.browser().get(&url)).await;
        let status = response.status();
        let body = response.text().await.unwrap();
        assert_eq!(status, StatusCode::OK, "GET {url}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("JWKS is not JSON ({e}): {body}"))
    }

    /// Fetches the JWKS through Envoy and writes it to a file in the stack's dir.
    pub async fn jwks_file(&self) -> PathBuf {
        let path = self.dir.join("jwks.json");
        fs::write(&path, self.jwks().await.to_string()).unwrap();
        path
    }

    /// Verifies `token` against the served JWKS with an independent implementation
    /// (`jose`, via testkit/js/verify_jwt.mjs) for `audience`; returns
    /// `{"header": {...}, "payload": {...}}` or panics with the verifier's output.
    pub async fn verify_jwt(&self, token: &str, audience: &str) -> serde_json::Value {
        let out = self.run_verify_jwt(token, audience).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "verify_jwt.mjs rejected the token ({}) for audience {audience}:\n{stdout}{}\ntoken: {token}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("verify_jwt.mjs output is not JSON ({e}): {stdout}"))
    }

    /// Whether `token` verifies against the served JWKS for `audience` (jose, like
    /// [`Stack::verify_jwt`], but a refusal is an answer, not a panic).
    pub async fn jwt_verifies(&self, token: &str, audience: &str) -> bool {
        self.run_verify_jwt(token, audience).await.status.success()
    }

    async fn run_verify_jwt(&self, token: &str, audience: &str) -> std::process::Output {
        let jwks = self.jwks_file().await;
        run(crate::node_script("verify_jwt.mjs")
            .arg("--jwks-file")
            .arg(&jwks)
            .args(["--token", token, "--audience", audience]))
    }

    /// Prints the tail of every process's log to stderr.
    pub fn dump_logs(&self) {
        eprintln!("==== stack files in {} ====", self.dir.display());
        if let IdpChoice::LemonLdap { llng, .. } = self.idp {
            eprintln!(
                "==== LemonLDAP::NG (shared, {}), last {LOG_TAIL_LINES} lines ====\n{}",
                llng.state_dir.display(),
                llng.log_tail(LOG_TAIL_LINES)
            );
        }
        for p in &self.procs {
            eprintln!(
                "==== {} ({}), last {LOG_TAIL_LINES} lines ====\n{}",
                p.name,
                p.log.display(),
                p.log_tail()
            );
        }
        let log = self.echo.log_lines();
        let lines: Vec<&str> = log.lines().collect();
        eprintln!(
            "==== echo requests ====\n{}",
            lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
        );
    }

    /// `--replica GRPC,HTTP` for each replica, when there are several.
    fn replica_args(&self) -> Vec<String> {
        if self.replicas.len() < 2 {
            return Vec::new();
        }
        self.replicas
            .iter()
            .flat_map(|r| {
                [
                    "--replica".to_string(),
                    format!("127.0.0.1:{},127.0.0.1:{}", r.grpc, r.http),
                ]
            })
            .collect()
    }

    /// Renders Envoy's bootstrap with `portcullis envoy-config` into the stack's dir, with
    /// the admin interface on port 0.
    fn render_envoy_config(&self) -> PathBuf {
        let out = run(Command::new(portcullis_bin())
            .arg("envoy-config")
            .arg("-c")
            .arg(&self.config)
            .args(["--listen", &format!("127.0.0.1:{}", self.ports.envoy)])
            .args(["--admin", "127.0.0.1:0"])
            .arg("--tls-cert")
            .arg(&self.certs.cert)
            .arg("--tls-key")
            .arg(&self.certs.key)
            .args(self.replica_args()));
        assert!(
            out.status.success(),
            "portcullis envoy-config failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let path = self.dir.join("envoy.yaml");
        fs::write(&path, &out.stdout).unwrap();
        path
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Last started, first stopped: Envoy, portcullis, IdP (the echo stops with it).
        for p in self.procs.iter_mut().rev() {
            p.stop();
        }
        let leaked = if std::thread::panicking() {
            Ok(())
        } else {
            self.logs_hold_no_secrets()
        };
        if let Err(problems) = leaked {
            self.dump_logs();
            panic!("{problems}\n(kept {} for inspection)", self.dir.display());
        }
        if std::thread::panicking() {
            if let IdpChoice::LemonLdap { llng, .. } = self.idp {
                llng.keep_state();
            }
            self.dump_logs();
            // The logs, config and secrets stay; the copied binary (about 190 MB in a
            // debug build) says nothing the build tree does not, and kept stacks fill /tmp.
            let _ = fs::remove_dir_all(self.dir.join("bin"));
            eprintln!("(kept {} for inspection)", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
