//! The state both edges share, built once from a validated [`Config`]: the authorizer
//! (routes, cookies, sessions, tokens), the identity provider, the sealers of the sign-in
//! flow, the fixed URLs and the metrics.

use std::sync::Arc;
use std::time::Duration;

use url::Url;

use crate::authorizer::Authorizer;
use crate::config::{Config, StoreConfig};
use crate::core::{Clock, RouteTable, SystemClock, authority_of};
use crate::crypto::{Purpose, Sealer};
use crate::identity::TokenMinter;
use crate::metrics::Metrics;
use crate::oidc::{IdentityProvider, OpenIdConnect};
use crate::refresh::Sessions;
use crate::secret::SecretString;
use crate::session::{CookieCodec, GrantSealer, MemoryStore, RedisStore, SessionStore, StoreError};
use crate::tokens::Tokens;

/// The authorizer as the server runs it.
pub type AppAuthorizer = Authorizer<Sessions, Tokens, Arc<dyn Clock>>;

pub struct App {
    pub authorizer: AppAuthorizer,
    pub store: Arc<dyn SessionStore>,
    /// The store's sessions with refresh: what the authorizer and the HTTP edge look up.
    pub sessions: Sessions,
    pub idp: Arc<dyn IdentityProvider>,
    pub clock: Arc<dyn Clock>,
    pub urls: Urls,
    /// `host[:port]` of the auth host.
    pub auth_authority: String,
    pub csrf: Sealer,
    pub hop: Sealer,
    /// Seals the continuation of a sign-out from a route host to the auth host.
    pub sign_out: Sealer,
    pub session_lifetime: Duration,
    pub jwks: JwksDocument,
    pub metrics: Arc<Metrics>,
    /// The decision counters of this route table.
    pub decisions: crate::metrics::DecisionCounters,
    /// The bearer token of the session administration API, when it is configured.
    pub admin_token: Option<SecretString>,
    /// Set when shutdown begins: `/healthz` answers 503 so that Envoy sends the HTTP
    /// service's requests to the other replicas while this one drains. Shared by every
    /// config this process has served.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// What the identity provider was built from, to keep it (and its discovery) across a
    /// reload that does not change it.
    pub idp_fingerprint: String,
    /// What only a restart can change (listeners, the store), to say so on a reload.
    pub restart_fingerprint: String,
    /// The files the config was read from, for the reloader to watch.
    pub files: Vec<std::path::PathBuf>,
    pub limits: crate::limits::SignInLimits,
}

/// The auth host's fixed URLs, parsed once.
#[derive(Debug, Clone)]
pub struct Urls {
    /// The auth host's origin, e.g. `https://auth.example.com/`.
    pub auth: Url,
    pub sign_in: Url,
    /// The OIDC redirect URI.
    pub oauth2_callback: Url,
    pub sign_out: Url,
    /// Where the IdP sends the browser after logout.
    pub signed_out: Url,
    /// The user page.
    pub user_page: Url,
}

impl Urls {
    pub fn new(auth: &Url) -> Self {
        let at = |path: &str| {
            let mut url = auth.clone();
            url.set_path(path);
            url
        };
        Self {
            auth: auth.clone(),
            sign_in: at("/.portcullis/sign_in"),
            oauth2_callback: at("/.portcullis/oauth2/callback"),
            sign_out: at("/.portcullis/sign_out"),
            signed_out: at("/.portcullis/signed_out"),
            user_page: at("/.portcullis/"),
        }
    }
}

/// The JWKS, serialized once, and its ETag.
#[derive(Debug, Clone)]
pub struct JwksDocument {
    pub json: String,
    pub etag: String,
}

/// Bearer tokens verified by the identity provider.
struct IdpBearer(Arc<dyn IdentityProvider>);

#[async_trait::async_trait]
impl crate::authorizer::BearerVerifier for IdpBearer {
    async fn verify(&self, token: &str, now: u64) -> Result<(crate::core::User, u64), String> {
        self.0
            .verify_bearer(token, now)
            .await
            .map_err(|e| e.to_string())
    }
}

/// What an [`App`] is built with besides its config: tests swap each for a fake.
pub struct Parts {
    pub store: Arc<dyn SessionStore>,
    pub clock: Arc<dyn Clock>,
    pub idp: Arc<dyn IdentityProvider>,
    /// Counters outlive a reload.
    pub metrics: Arc<Metrics>,
    pub draining: Arc<std::sync::atomic::AtomicBool>,
}

impl Parts {
    /// The parts `portcullis serve` runs with: the configured session store (in memory, or
    /// Redis, connecting in the background), the system clock, and the configured OpenID
    /// Connect provider.
    pub fn new(config: &Config) -> Result<Self, StoreError> {
        let urls = Urls::new(&config.authenticate_url);
        let store: Arc<dyn SessionStore> = match &config.session_store {
            StoreConfig::Memory => Arc::new(MemoryStore::default()),
            StoreConfig::Redis(redis) => RedisStore::start(redis)?,
        };
        Ok(Self {
            store,
            clock: Arc::new(SystemClock),
            idp: Arc::new(OpenIdConnect::new(
                config.idp.clone(),
                &urls.oauth2_callback,
                &urls.signed_out,
            )),
            metrics: Arc::new(Metrics::default()),
            draining: Arc::default(),
        })
    }

    /// The parts of a reload: what `old` runs with (its sessions, clock, counters, and its
    /// identity provider unless the new config changes it), so that nobody is signed out.
    pub fn carried_over(old: &App, config: &Config) -> Self {
        let idp: Arc<dyn IdentityProvider> = if old.idp_fingerprint == idp_fingerprint(config) {
            old.idp.clone()
        } else {
            let urls = Urls::new(&config.authenticate_url);
            Arc::new(OpenIdConnect::new(
                config.idp.clone(),
                &urls.oauth2_callback,
                &urls.signed_out,
            ))
        };
        Self {
            store: old.store.clone(),
            clock: old.clock.clone(),
            idp,
            metrics: old.metrics.clone(),
            draining: old.draining.clone(),
        }
    }
}

/// What the identity provider is built from: its settings, with secrets by their hash.
pub fn idp_fingerprint(config: &Config) -> String {
    let i = &config.idp;
    let secret = i
        .client_secret
        .as_ref()
        .map(|s| crate::crypto::sha256_b64(s.expose().as_bytes()))
        .unwrap_or_default();
    let key = i
        .client_key
        .as_ref()
        .map(|k| k.fingerprint())
        .unwrap_or_default();
    format!(
        "{}|{}|{secret}|{:?}|{}|{}|{:?}|{:?}|{key}|{:?}|{:?}|{:?}|{:?}|{}",
        i.issuer,
        i.client_id,
        i.scopes,
        i.groups_claim,
        i.assume_email_verified,
        i.userinfo,
        i.token_endpoint_auth,
        i.id_token_algs,
        i.policy_claims,
        i.bearer_audiences,
        i.probe_interval,
        config.authenticate_url,
    )
}

/// What a reload cannot change: the listeners and the session store.
pub fn restart_fingerprint(config: &Config) -> String {
    format!("{:?}|{:?}", config.server, config.session_store)
}

impl App {
    /// The app with the [`Parts::new`] defaults.
    pub fn new(config: Config) -> Result<Self, StoreError> {
        let parts = Parts::new(&config)?;
        Ok(Self::with_parts(config, parts))
    }

    pub fn with_parts(config: Config, parts: Parts) -> Self {
        let idp_fingerprint = idp_fingerprint(&config);
        let restart_fingerprint = restart_fingerprint(&config);
        let Config {
            server: _,
            authenticate_url,
            idp: idp_config,
            cookie,
            signing_keys,
            identity_header,
            routes,
            session_store: _,
            admin,
            log: _,
            sign_in_limits,
            files,
        } = config;
        let Parts {
            store,
            clock,
            idp,
            metrics,
            draining,
        } = parts;
        let config_bearer = idp_config.bearer_audiences.is_some();
        let urls = Urls::new(&authenticate_url);
        let issuer = authenticate_url.as_str().trim_end_matches('/').to_string();
        let json = serde_json::to_string(signing_keys.jwks()).expect("JWKS serializes");
        let etag = format!("\"{}\"", &crate::crypto::sha256_b64(json.as_bytes())[..22]);
        let tokens = Tokens::new(
            TokenMinter::new(issuer, Arc::new(signing_keys)),
            metrics.tokens_signed(),
        );
        let sessions = Sessions::new(
            store.clone(),
            idp.clone(),
            Arc::new(GrantSealer::new(&cookie)),
            metrics.refresh.clone(),
        );
        let bearer = config_bearer.then(|| {
            Arc::new(IdpBearer(idp.clone())) as Arc<dyn crate::authorizer::BearerVerifier>
        });
        let authorizer = Authorizer::new(
            RouteTable::new(routes.into_iter().map(|r| r.route).collect()),
            Arc::new(CookieCodec::new(&cookie)),
            &identity_header,
            urls.sign_in.clone(),
            sessions.clone(),
            tokens,
            clock.clone(),
        );
        let authorizer = match bearer {
            Some(b) => authorizer.with_bearer(b),
            None => authorizer,
        };
        let decisions =
            metrics.decision_counters(authorizer.routes().iter().map(|r| r.name.as_str()));
        Self {
            decisions,
            authorizer,
            store,
            sessions,
            idp,
            clock,
            auth_authority: authority_of(&authenticate_url),
            urls,
            csrf: Sealer::rotating(&cookie.secret, &cookie.previous_secrets, Purpose::Csrf),
            hop: Sealer::rotating(&cookie.secret, &cookie.previous_secrets, Purpose::Hop),
            sign_out: Sealer::rotating(&cookie.secret, &cookie.previous_secrets, Purpose::SignOut),
            session_lifetime: cookie.lifetime,
            jwks: JwksDocument { json, etag },
            metrics,
            admin_token: admin.map(|a| a.token),
            draining,
            idp_fingerprint,
            restart_fingerprint,
            files,
            limits: crate::limits::SignInLimits::new(&sign_in_limits),
        }
    }

    pub fn routes(&self) -> &RouteTable {
        self.authorizer.routes()
    }

    pub fn cookies(&self) -> &CookieCodec {
        self.authorizer.cookies()
    }

    pub fn tokens(&self) -> &Tokens {
        self.authorizer.tokens()
    }

    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    /// Counts a decision by route and outcome and times it: the same for every edge that
    /// decides (Envoy's `Check`, forward auth).
    pub fn observe_decision(
        &self,
        decision: &crate::authorizer::Decision,
        started: std::time::Instant,
    ) {
        self.decisions.count(decision.route, decision.kind);
        self.metrics.observe_check(started.elapsed());
    }

    /// Whether this replica should get requests: its session store can answer, and it is
    /// not draining before shutdown (gRPC health and `/healthz` say this to Envoy).
    pub fn is_serving(&self) -> bool {
        self.store.is_ready() && !self.draining.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The app being served, swapped whole by a reload: each request works with the app it
/// started on, to its end; the next one gets the new one.
pub struct Live {
    current: arc_swap::ArcSwap<App>,
}

impl Live {
    pub fn new(app: Arc<App>) -> Arc<Self> {
        Arc::new(Self {
            current: arc_swap::ArcSwap::new(app),
        })
    }

    /// The current app.
    pub fn app(&self) -> Arc<App> {
        self.current.load_full()
    }

    /// Serves `app` from now on.
    pub fn swap(&self, app: Arc<App>) {
        self.current.store(app);
    }
}
