//! The OpenID Connect relying party: discovery, the authorization-code flow with PKCE
//! (S256), `state` and `nonce`, full ID token validation (signature with an allow-listed
//! algorithm, `iss`, `aud`, `azp`, `exp`, `nonce`) by the openidconnect crate, claims from
//! UserInfo when the ID token is thin, refresh, and Back-Channel Logout tokens.
//!
//! Every way a sign-in can fail is its own [`OidcError`], so the log names the cause (an
//! algorithm the config refuses, an unreachable token endpoint, `invalid_client`, a UserInfo
//! `sub` that is not the ID token's) while the user sees a page with a request id.

mod claims;
mod logout;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreClientAuthMethod, CoreErrorResponseType, CoreIdToken,
    CoreJwsSigningAlgorithm, CoreTokenResponse,
};
use openidconnect::{
    AuthType, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndSessionUrl, IssuerUrl,
    LogoutRequest, Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier,
    PostLogoutRedirectUrl, ProviderMetadataWithLogout, RedirectUrl, RefreshToken,
    RequestTokenError, Scope, TokenResponse, reqwest,
};
use url::Url;

use crate::config::{ClientAuthMethod, IdpConfig, UserInfoMode};
use crate::core::User;
use crate::secret::SecretString;

pub use claims::{ClaimRules, Claims, jwt_payload, merge, user_from_claims};
pub use logout::LogoutToken;

/// Why talking to the identity provider failed. The `Display` is for the log; the user
/// sees only a page that says whom to ask, with a request id.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("the identity provider has not been reached yet")]
    NotReady,
    #[error("the IdP's {endpoint} endpoint cannot be reached: {detail}")]
    Unreachable {
        endpoint: &'static str,
        detail: String,
    },
    #[error(
        "the IdP refused portcullis's client credentials (invalid_client): {0}; check idp.client_id, the client secret or key, and idp.token_endpoint_auth"
    )]
    InvalidClient(String),
    #[error("the IdP refused the grant (invalid_grant): {0}")]
    InvalidGrant(String),
    #[error("the IdP's token endpoint answered an error: {0}")]
    TokenEndpoint(String),
    #[error("the token response has no ID token")]
    NoIdToken,
    #[error(
        "ID token signed with {alg:?}, which is not accepted (accepted: {accepted}); set idp.id_token_algs if the IdP must sign with it"
    )]
    AlgorithmRefused { alg: String, accepted: String },
    #[error("ID token rejected: {0}")]
    IdToken(String),
    #[error(
        "UserInfo describes subject {userinfo:?}, not the ID token's {id_token:?}; refusing its claims"
    )]
    SubjectMismatch { id_token: String, userinfo: String },
    #[error("UserInfo failed: {0}")]
    UserInfo(String),
    #[error("logout token rejected: {0}")]
    LogoutToken(String),
    #[error("bearer token rejected: {0}")]
    Bearer(String),
}

impl OidcError {
    /// Every [`OidcError::kind`]; the first [`OidcError::CALL_KINDS`] are those a call to
    /// the IdP (code exchange with UserInfo, refresh) can fail with.
    pub const KINDS: [&'static str; 12] = [
        "not_ready",
        "unreachable",
        "invalid_client",
        "invalid_grant",
        "token_endpoint",
        "no_id_token",
        "algorithm_refused",
        "id_token",
        "subject_mismatch",
        "userinfo",
        "logout_token",
        "bearer",
    ];

    /// The kinds `portcullis_idp_errors_total` counts, listed from the start at 0. (A
    /// refused logout token or bearer token is not a failed call to the IdP: those have
    /// counters of their own.)
    pub const CALL_KINDS: usize = 10;

    /// A short label of the cause, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            OidcError::NotReady => "not_ready",
            OidcError::Unreachable { .. } => "unreachable",
            OidcError::InvalidClient(_) => "invalid_client",
            OidcError::InvalidGrant(_) => "invalid_grant",
            OidcError::TokenEndpoint(_) => "token_endpoint",
            OidcError::NoIdToken => "no_id_token",
            OidcError::AlgorithmRefused { .. } => "algorithm_refused",
            OidcError::IdToken(_) => "id_token",
            OidcError::SubjectMismatch { .. } => "subject_mismatch",
            OidcError::UserInfo(_) => "userinfo",
            OidcError::LogoutToken(_) => "logout_token",
            OidcError::Bearer(_) => "bearer",
        }
    }
}

/// A sign-in in flight: where to send the browser, and what to remember until it comes back.
pub struct AuthStart {
    pub url: Url,
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
}

/// The IdP's tokens from a token response.
#[derive(Debug, Default)]
pub struct IdpTokens {
    pub access_token: Option<SecretString>,
    pub refresh_token: Option<SecretString>,
    /// The access token's lifetime, when the IdP says.
    pub expires_in: Option<Duration>,
}

/// A finished sign-in.
pub struct SignedIn {
    pub user: User,
    /// For `id_token_hint` at sign-out.
    pub id_token: SecretString,
    pub tokens: IdpTokens,
    /// Whether UserInfo completed the ID token's claims (a refresh then re-reads it).
    pub used_userinfo: bool,
    /// The IdP's session id (the ID token's `sid`), which back-channel logout names.
    pub idp_sid: Option<String>,
}

/// The result of a refresh.
pub struct Refreshed {
    /// The user as the IdP now describes them, when it said anything (a new ID token, or
    /// UserInfo); `None` keeps the session's.
    pub user: Option<User>,
    pub id_token: Option<SecretString>,
    /// `refresh_token` is `None` when the IdP did not rotate it: keep the old one.
    pub tokens: IdpTokens,
}

/// The identity provider, as the HTTP edge uses it. [`OpenIdConnect`] is the real one;
/// tests use a fake (`crate::testing::FakeIdp`).
#[async_trait]
pub trait IdentityProvider: Send + Sync + 'static {
    /// Whether sign-ins can start (discovery has succeeded).
    fn is_ready(&self) -> bool;

    /// Whether the IdP answered its last reachability probe (see [`spawn_probe`]); true
    /// until a probe says otherwise.
    fn is_reachable(&self) -> bool {
        true
    }

    /// Checks once whether the IdP answers, and says when to check again (`None`: this
    /// provider is not probed).
    async fn probe(&self) -> Option<Duration> {
        None
    }

    /// Runs until the provider is ready; the server spawns it at startup.
    async fn discover_until_ready(&self) {}

    /// Starts a sign-in: the authorization URL with fresh `state`, `nonce` and PKCE.
    fn start(&self) -> Result<AuthStart, OidcError>;

    /// Finishes a sign-in: exchanges the code, validates the ID token, completes the claims.
    async fn finish(
        &self,
        code: &str,
        pkce_verifier: &str,
        nonce: &str,
    ) -> Result<SignedIn, OidcError>;

    /// Spends a refresh token for new tokens. `subject` is the session's user; a new ID token
    /// or UserInfo about anyone else is refused. `userinfo` re-reads UserInfo (when the
    /// sign-in used it).
    async fn refresh(
        &self,
        refresh_token: &SecretString,
        subject: &str,
        userinfo: bool,
    ) -> Result<Refreshed, OidcError>;

    /// Validates a Back-Channel Logout token (OpenID Connect Back-Channel Logout 1.0, 2.6).
    fn verify_logout_token(&self, token: &str, now: u64) -> Result<LogoutToken, OidcError>;

    /// The RP-initiated logout URL at the provider, if it has one.
    fn end_session_url(&self, id_token_hint: Option<&SecretString>) -> Option<Url>;

    /// Verifies a bearer token for programmatic access: who it names, and its `exp`.
    async fn verify_bearer(&self, token: &str, now: u64) -> Result<(User, u64), OidcError> {
        let _ = (token, now);
        Err(OidcError::Bearer("bearer tokens are not accepted".into()))
    }
}

/// The client as configured from discovery metadata with a redirect URI.
type CoreClientSet = openidconnect::core::CoreClient<
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
>;

/// What discovery found, and the client configured from it (built once, not per sign-in).
struct Provider {
    client: CoreClientSet,
    issuer: String,
    end_session: Option<EndSessionUrl>,
    userinfo: Option<Url>,
    token_endpoint: Option<Url>,
    auth: ClientAuthMethod,
    /// Accepted signing algorithms for ID tokens (and logout tokens, signed UserInfo).
    algs: Vec<CoreJwsSigningAlgorithm>,
    /// The IdP's keys, for the tokens openidconnect does not verify itself.
    keys: Vec<jsonwebtoken::jwk::Jwk>,
}

/// The OpenID Connect relying party against a real provider.
pub struct OpenIdConnect {
    config: IdpConfig,
    redirect_uri: RedirectUrl,
    post_logout_redirect_uri: PostLogoutRedirectUrl,
    http: reqwest::Client,
    provider: RwLock<Option<Arc<Provider>>>,
    /// When an unknown bearer `kid` last made portcullis fetch the IdP's keys (Unix s).
    last_rediscovery: AtomicU64,
    /// Whether the IdP answered the last probe of its discovery document.
    reachable: AtomicBool,
}

/// How long a reachability probe waits for the IdP's answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often an IdP that did not answer is probed (at most), so that sign-ins resume
/// soon after it is back.
const PROBE_WHILE_DOWN: Duration = Duration::from_secs(2);

/// Probes `idp` (see [`IdentityProvider::probe`]) for as long as an app holds it: the task
/// keeps only a weak reference, so a reload that replaces the IdP ends its probe.
pub fn spawn_probe(idp: &Arc<dyn IdentityProvider>) {
    let idp = Arc::downgrade(idp);
    tokio::spawn(async move {
        loop {
            let next = {
                let Some(idp) = idp.upgrade() else { return };
                match idp.probe().await {
                    Some(next) => next,
                    None => return,
                }
            };
            tokio::time::sleep(next).await;
        }
    });
}

/// The largest UserInfo answer read.
const MAX_USERINFO_BYTES: usize = 1 << 20;

impl OpenIdConnect {
    /// A relying party that signs in through `redirect_uri` and asks the provider to send
    /// the browser to `post_logout_redirect_uri` after logout.
    pub fn new(config: IdpConfig, redirect_uri: &Url, post_logout_redirect_uri: &Url) -> Self {
        let http = reqwest::Client::builder()
            // Following redirects from the IdP's endpoints would open an SSRF path.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .expect("the HTTP client configuration is static");
        Self {
            config,
            redirect_uri: RedirectUrl::from_url(redirect_uri.clone()),
            post_logout_redirect_uri: PostLogoutRedirectUrl::from_url(
                post_logout_redirect_uri.clone(),
            ),
            http,
            provider: RwLock::new(None),
            last_rediscovery: AtomicU64::new(0),
            reachable: AtomicBool::new(true),
        }
    }

    fn provider(&self) -> Result<Arc<Provider>, OidcError> {
        self.provider
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(OidcError::NotReady)
    }

    /// Whether an unknown `kid` may send portcullis to the IdP for its keys now.
    fn may_rediscover(&self) -> bool {
        let now = crate::core::unix_now();
        let last = self.last_rediscovery.load(Ordering::Relaxed);
        now >= last + 60
            && self
                .last_rediscovery
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    fn rules(&self) -> ClaimRules<'_> {
        ClaimRules {
            groups_claim: &self.config.groups_claim,
            assume_email_verified: self.config.assume_email_verified,
            keep: &self.config.policy_claims,
        }
    }

    /// Fetches the discovery document (with its RP-initiated logout metadata) and the JWKS.
    pub async fn discover(&self) -> Result<(), String> {
        let issuer = IssuerUrl::new(self.config.issuer.clone()).map_err(|e| e.to_string())?;
        let metadata = ProviderMetadataWithLogout::discover_async(issuer, &self.http)
            .await
            .map_err(|e| error_chain(&e))?;
        let provider = self.provider_from(metadata);
        if provider.algs.is_empty() {
            tracing::error!(
                issuer = %self.config.issuer,
                "the IdP advertises no asymmetric ID token algorithm; sign-ins will fail until idp.id_token_algs names the one it uses"
            );
        }
        *self.provider.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(provider));
        self.reachable.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// The discovery document's URL (OpenID Connect Discovery 1.0, 4).
    fn discovery_url(&self) -> String {
        format!(
            "{}/.well-known/openid-configuration",
            self.config.issuer.trim_end_matches('/')
        )
    }

    fn provider_from(&self, metadata: ProviderMetadataWithLogout) -> Provider {
        let auth = choose_auth(
            &self.config,
            metadata.token_endpoint_auth_methods_supported(),
        );
        let algs = accepted_algs(
            self.config.id_token_algs.as_deref(),
            metadata.id_token_signing_alg_values_supported(),
        );
        let keys = metadata
            .jwks()
            .keys()
            .iter()
            .filter_map(|k| serde_json::to_value(k).ok())
            .filter_map(|v| serde_json::from_value(v).ok())
            .collect();
        let provider = Provider {
            issuer: metadata.issuer().to_string(),
            end_session: metadata.additional_metadata().end_session_endpoint.clone(),
            userinfo: metadata.userinfo_endpoint().map(|u| u.url().clone()),
            token_endpoint: metadata.token_endpoint().map(|u| u.url().clone()),
            auth,
            algs,
            keys,
            client: CoreClient::from_provider_metadata(
                metadata,
                ClientId::new(self.config.client_id.clone()),
                // With a client key there is no secret to send (and HS* is not allowed).
                match auth {
                    ClientAuthMethod::PrivateKeyJwt => None,
                    _ => self
                        .config
                        .client_secret
                        .as_ref()
                        .map(|s| ClientSecret::new(s.expose().to_string())),
                },
            )
            .set_redirect_uri(self.redirect_uri.clone())
            .set_auth_type(match auth {
                ClientAuthMethod::ClientSecretBasic => AuthType::BasicAuth,
                _ => AuthType::RequestBody,
            }),
        };
        tracing::info!(
            token_endpoint_auth = auth.as_str(),
            id_token_algs = %alg_names(&provider.algs),
            userinfo = provider.userinfo.is_some(),
            "identity provider settings"
        );
        provider
    }

    /// Exchanges a grant at the token endpoint, authenticating as configured.
    async fn token_request(
        &self,
        p: &Provider,
        grant: Grant<'_>,
    ) -> Result<CoreTokenResponse, OidcError> {
        let assertion = self.client_assertion(p)?;
        let assertion_params = |assertion: &Option<String>| -> Vec<(&'static str, String)> {
            match assertion {
                Some(jwt) => vec![
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
                    ),
                    ("client_assertion", jwt.clone()),
                ],
                None => Vec::new(),
            }
        };
        let result = match grant {
            Grant::Code { code, verifier } => {
                let mut req = p
                    .client
                    .exchange_code(AuthorizationCode::new(code.to_string()))
                    .map_err(|e| OidcError::TokenEndpoint(e.to_string()))?
                    .set_pkce_verifier(PkceCodeVerifier::new(verifier.to_string()));
                for (k, v) in assertion_params(&assertion) {
                    req = req.add_extra_param(k, v);
                }
                req.request_async(&self.http).await
            }
            Grant::Refresh(token) => {
                let token = RefreshToken::new(token.expose().to_string());
                let mut req = p
                    .client
                    .exchange_refresh_token(&token)
                    .map_err(|e| OidcError::TokenEndpoint(e.to_string()))?;
                for (k, v) in assertion_params(&assertion) {
                    req = req.add_extra_param(k, v);
                }
                req.request_async(&self.http).await
            }
        };
        result.map_err(|e| match e {
            RequestTokenError::ServerResponse(r) => {
                let detail = match r.error_description() {
                    Some(d) => format!("{}: {d}", r.error().as_ref()),
                    None => r.error().as_ref().to_string(),
                };
                match r.error() {
                    CoreErrorResponseType::InvalidClient => OidcError::InvalidClient(detail),
                    CoreErrorResponseType::InvalidGrant => OidcError::InvalidGrant(detail),
                    _ => OidcError::TokenEndpoint(detail),
                }
            }
            RequestTokenError::Request(e) => OidcError::Unreachable {
                endpoint: "token",
                detail: error_chain(&e),
            },
            RequestTokenError::Parse(e, _) => {
                OidcError::TokenEndpoint(format!("unreadable answer: {e}"))
            }
            RequestTokenError::Other(e) => OidcError::TokenEndpoint(e),
        })
    }

    /// The `private_key_jwt` client assertion (RFC 7523 section 3), when that is how we
    /// authenticate: short-lived, single-use, for this token endpoint only.
    fn client_assertion(&self, p: &Provider) -> Result<Option<String>, OidcError> {
        if p.auth != ClientAuthMethod::PrivateKeyJwt {
            return Ok(None);
        }
        let key = self.config.client_key.as_ref().ok_or_else(|| {
            OidcError::TokenEndpoint("private_key_jwt needs idp.client_key_file".into())
        })?;
        let aud = p
            .token_endpoint
            .as_ref()
            .ok_or_else(|| OidcError::TokenEndpoint("the IdP has no token endpoint".into()))?;
        let now = crate::core::unix_now();
        Ok(Some(key.sign(&serde_json::json!({
            "iss": self.config.client_id,
            "sub": self.config.client_id,
            "aud": aud.as_str(),
            "jti": crate::crypto::random_token(16),
            "iat": now,
            "exp": now + 60,
        }))))
    }

    /// Reads UserInfo with `access_token`; its `sub` must be `subject` (OIDC Core 5.3.2).
    async fn userinfo(
        &self,
        p: &Provider,
        access_token: &SecretString,
        subject: &str,
    ) -> Result<Claims, OidcError> {
        let url = p
            .userinfo
            .as_ref()
            .ok_or_else(|| OidcError::UserInfo("the IdP advertises no userinfo_endpoint".into()))?;
        let unreachable = |e: reqwest::Error| OidcError::Unreachable {
            endpoint: "userinfo",
            detail: error_chain(&e),
        };
        let mut response = self
            .http
            .get(url.clone())
            .bearer_auth(access_token.expose())
            .header("accept", "application/json, application/jwt")
            .send()
            .await
            .map_err(unreachable)?;
        if !response.status().is_success() {
            return Err(OidcError::UserInfo(format!(
                "HTTP {} from {url}",
                response.status()
            )));
        }
        let jwt = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.starts_with("application/jwt"));
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
            if body.len() + chunk.len() > MAX_USERINFO_BYTES {
                return Err(OidcError::UserInfo("answer over 1 MiB".into()));
            }
            body.extend_from_slice(&chunk);
        }
        let claims = if jwt {
            let token = std::str::from_utf8(&body)
                .map_err(|_| OidcError::UserInfo("signed answer is not text".into()))?;
            self.verify_jws(p, token.trim(), false)
                .map_err(|e| OidcError::UserInfo(format!("signed answer rejected: {e}")))?
        } else {
            match serde_json::from_slice(&body) {
                Ok(serde_json::Value::Object(map)) => map,
                _ => return Err(OidcError::UserInfo("answer is not a JSON object".into())),
            }
        };
        match claims.get("sub").and_then(|s| s.as_str()) {
            Some(sub) if sub == subject => Ok(claims),
            other => Err(OidcError::SubjectMismatch {
                id_token: subject.to_string(),
                userinfo: other.unwrap_or("").to_string(),
            }),
        }
    }

    /// Completes thin ID token claims from UserInfo, as `idp.userinfo` says.
    async fn with_userinfo(
        &self,
        p: &Provider,
        id_claims: Claims,
        access_token: Option<&SecretString>,
        subject: &str,
    ) -> Result<(Claims, bool), OidcError> {
        let wanted = match self.config.userinfo {
            UserInfoMode::Never => false,
            UserInfoMode::Always => true,
            UserInfoMode::Auto => {
                p.userinfo.is_some() && claims::is_thin(&id_claims, &self.rules())
            }
        };
        if !wanted {
            return Ok((id_claims, false));
        }
        let Some(token) = access_token else {
            return match self.config.userinfo {
                UserInfoMode::Always => Err(OidcError::UserInfo(
                    "the token response has no access token".into(),
                )),
                _ => Ok((id_claims, false)),
            };
        };
        match self.userinfo(p, token, subject).await {
            Ok(info) => Ok((merge(&id_claims, &info), true)),
            // `auto` only completes: without UserInfo, policies that need its claims refuse.
            Err(e @ OidcError::SubjectMismatch { .. }) => Err(e),
            Err(e) if self.config.userinfo == UserInfoMode::Auto => {
                tracing::warn!(error = %e, "UserInfo failed; using the ID token's claims alone");
                Ok((id_claims, false))
            }
            Err(e) => Err(e),
        }
    }

    /// Verifies an ID token: the algorithm against the allow-list first (so that `none`, or
    /// an HS* the config does not name, is refused by name), then everything else.
    fn verify_id_token(
        &self,
        p: &Provider,
        token: &str,
        nonce: Option<&str>,
    ) -> Result<(), OidcError> {
        verify_id_token(p, token, nonce)
    }

    /// Verifies a JWS from the IdP that openidconnect does not handle (logout tokens, signed
    /// UserInfo) with the IdP's keys (or, for an allowed HS*, the client secret).
    fn verify_jws(&self, p: &Provider, token: &str, require_exp: bool) -> Result<Claims, String> {
        logout::verify_jws(
            token,
            &p.algs,
            &p.keys,
            self.config.client_secret.as_ref(),
            &p.issuer,
            &[self.config.client_id.as_str()],
            require_exp,
        )
    }

    /// Verifies a bearer token: an ID token for us, or a JWT access token for one of the
    /// configured audiences; signed by the IdP's keys, `iss`, `exp` (required), `nbf`.
    fn verify_bearer_with(&self, p: &Provider, token: &str) -> Result<Claims, String> {
        let mut audiences = vec![self.config.client_id.as_str()];
        audiences.extend(
            self.config
                .bearer_audiences
                .iter()
                .flatten()
                .map(String::as_str),
        );
        // An access token keyed by our own client secret would be one we could forge.
        let asymmetric: Vec<CoreJwsSigningAlgorithm> = p
            .algs
            .iter()
            .filter(|a| {
                !matches!(
                    a,
                    CoreJwsSigningAlgorithm::HmacSha256
                        | CoreJwsSigningAlgorithm::HmacSha384
                        | CoreJwsSigningAlgorithm::HmacSha512
                )
            })
            .cloned()
            .collect();
        logout::verify_jws(
            token,
            &asymmetric,
            &p.keys,
            None,
            &p.issuer,
            &audiences,
            true,
        )
    }
}

/// A grant spent at the token endpoint.
enum Grant<'a> {
    Code { code: &'a str, verifier: &'a str },
    Refresh(&'a SecretString),
}

fn tokens_of(response: &CoreTokenResponse) -> IdpTokens {
    IdpTokens {
        access_token: Some(SecretString::new(response.access_token().secret().clone())),
        refresh_token: response
            .refresh_token()
            .map(|t| SecretString::new(t.secret().clone())),
        expires_in: response.expires_in(),
    }
}

#[async_trait]
impl IdentityProvider for OpenIdConnect {
    fn is_ready(&self) -> bool {
        self.provider().is_ok()
    }

    fn is_reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// Fetches the discovery document: the IdP is up when it answers 2xx. Discovery itself
    /// is not redone (the keys are refetched when a token names an unknown one); this only
    /// decides whether a browser is sent to the IdP or told it is unavailable.
    async fn probe(&self) -> Option<Duration> {
        let interval = self.config.probe_interval;
        if !self.is_ready() {
            // Until discovery succeeds, its own retries are the probe.
            return Some(interval);
        }
        let answer = self
            .http
            .get(self.discovery_url())
            .timeout(PROBE_TIMEOUT)
            .send()
            .await;
        let outcome = match answer {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("its discovery document answered {}", r.status())),
            Err(e) => Err(error_chain(&e)),
        };
        let was = self.reachable.swap(outcome.is_ok(), Ordering::Relaxed);
        match (&outcome, was) {
            (Err(e), true) => tracing::warn!(
                issuer = %self.config.issuer,
                error = %e,
                "identity provider unreachable: sign-ins answer 503 until it answers again"
            ),
            (Ok(()), false) => {
                tracing::info!(issuer = %self.config.issuer, "identity provider reachable again")
            }
            _ => {}
        }
        Some(match outcome {
            Ok(()) => interval,
            Err(_) => interval.min(PROBE_WHILE_DOWN),
        })
    }

    /// Discovers the IdP, retrying with capped exponential backoff until it answers. Runs in
    /// the background so portcullis serves (and Envoy's checks for signed-in users keep
    /// working) while the IdP is still starting.
    async fn discover_until_ready(&self) {
        let mut delay = Duration::from_millis(250);
        loop {
            match self.discover().await {
                Ok(()) => {
                    tracing::info!(issuer = %self.config.issuer, "identity provider discovered");
                    return;
                }
                Err(e) => {
                    tracing::warn!(issuer = %self.config.issuer, error = %e, retry_in = ?delay, "identity provider discovery failed");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    fn start(&self) -> Result<AuthStart, OidcError> {
        let p = self.provider()?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut req = p.client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        );
        for scope in self.config.scopes.iter().filter(|s| *s != "openid") {
            req = req.add_scope(Scope::new(scope.clone()));
        }
        let (url, state, nonce) = req.set_pkce_challenge(challenge).url();
        Ok(AuthStart {
            url,
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
        })
    }

    async fn finish(
        &self,
        code: &str,
        pkce_verifier: &str,
        nonce: &str,
    ) -> Result<SignedIn, OidcError> {
        let mut p = self.provider()?;
        let response = self
            .token_request(
                &p,
                Grant::Code {
                    code,
                    verifier: pkce_verifier,
                },
            )
            .await?;
        let id_token = response.id_token().ok_or(OidcError::NoIdToken)?.to_string();
        match self.verify_id_token(&p, &id_token, Some(nonce)) {
            Ok(()) => {}
            Err(e @ OidcError::AlgorithmRefused { .. }) => return Err(e),
            Err(e) => {
                // The IdP may have rotated its keys since discovery: refresh once and retry.
                tracing::info!(error = %e, "ID token did not verify; refreshing the IdP's keys");
                self.discover().await.map_err(OidcError::IdToken)?;
                p = self.provider()?;
                self.verify_id_token(&p, &id_token, Some(nonce))?;
            }
        }
        let id_claims = jwt_payload(&id_token)
            .ok_or_else(|| OidcError::IdToken("claims are not a JSON object".into()))?;
        let subject = id_claims
            .get("sub")
            .and_then(|s| s.as_str())
            .ok_or_else(|| OidcError::IdToken("no sub".into()))?
            .to_string();
        let idp_sid = id_claims
            .get("sid")
            .and_then(|s| s.as_str())
            .map(str::to_string);
        let tokens = tokens_of(&response);
        let (claims, used_userinfo) = self
            .with_userinfo(&p, id_claims, tokens.access_token.as_ref(), &subject)
            .await?;
        let user = user_from_claims(&claims, &self.rules())
            .ok_or_else(|| OidcError::IdToken("no string sub".into()))?;
        Ok(SignedIn {
            user,
            id_token: SecretString::new(id_token),
            tokens,
            used_userinfo,
            idp_sid,
        })
    }

    async fn refresh(
        &self,
        refresh_token: &SecretString,
        subject: &str,
        userinfo: bool,
    ) -> Result<Refreshed, OidcError> {
        let p = self.provider()?;
        let response = self
            .token_request(&p, Grant::Refresh(refresh_token))
            .await?;
        let tokens = tokens_of(&response);
        // OIDC Core 12.2: a refreshed ID token is about the same user, without a nonce.
        let id_token = response.id_token().map(|t| t.to_string());
        let id_claims = match &id_token {
            Some(t) => {
                self.verify_id_token(&p, t, None)?;
                let claims = jwt_payload(t)
                    .ok_or_else(|| OidcError::IdToken("claims are not a JSON object".into()))?;
                let sub = claims.get("sub").and_then(|s| s.as_str()).unwrap_or("");
                if sub != subject {
                    return Err(OidcError::IdToken(format!(
                        "a refreshed ID token is about {sub:?}, not {subject:?}"
                    )));
                }
                Some(claims)
            }
            None => None,
        };
        let claims = if userinfo {
            let access = tokens
                .access_token
                .as_ref()
                .ok_or_else(|| OidcError::UserInfo("no access token".into()))?;
            let info = self.userinfo(&p, access, subject).await?;
            Some(merge(&id_claims.unwrap_or_default(), &info))
        } else {
            id_claims
        };
        Ok(Refreshed {
            user: claims.and_then(|c| user_from_claims(&c, &self.rules())),
            id_token: id_token.map(SecretString::new),
            tokens,
        })
    }

    fn verify_logout_token(&self, token: &str, now: u64) -> Result<LogoutToken, OidcError> {
        let p = self.provider()?;
        let claims = self
            .verify_jws(&p, token, false)
            .map_err(OidcError::LogoutToken)?;
        LogoutToken::from_claims(&claims, now).map_err(OidcError::LogoutToken)
    }

    async fn verify_bearer(&self, token: &str, _now: u64) -> Result<(User, u64), OidcError> {
        let p = self.provider()?;
        let claims = match self.verify_bearer_with(&p, token) {
            Ok(c) => c,
            // A key the IdP rotated in since discovery: fetch its keys again, at most once a
            // minute (a stream of tokens under made-up kids must not hammer the IdP).
            Err(e) if e.starts_with("no IdP key with kid") && self.may_rediscover() => {
                self.discover().await.map_err(OidcError::Bearer)?;
                let p = self.provider()?;
                self.verify_bearer_with(&p, token)
                    .map_err(OidcError::Bearer)?
            }
            Err(e) => return Err(OidcError::Bearer(e)),
        };
        let exp = claims.get("exp").and_then(|v| v.as_u64()).unwrap_or(0);
        let user = user_from_claims(&claims, &self.rules())
            .ok_or_else(|| OidcError::Bearer("no string sub".into()))?;
        Ok((user, exp))
    }

    fn end_session_url(&self, id_token_hint: Option<&SecretString>) -> Option<Url> {
        let endpoint = self.provider().ok()?.end_session.clone()?;
        let mut request = LogoutRequest::from(endpoint);
        // A hint that no longer parses as a JWT is left out rather than sent broken.
        if let Some(hint) = id_token_hint.and_then(|h| h.expose().parse::<CoreIdToken>().ok()) {
            request = request.set_id_token_hint(&hint);
        }
        Some(
            request
                .set_client_id(ClientId::new(self.config.client_id.clone()))
                .set_post_logout_redirect_uri(self.post_logout_redirect_uri.clone())
                .http_get_url(),
        )
    }
}

/// How portcullis authenticates at the token endpoint: as configured, else `basic` when the
/// IdP advertises it (or advertises nothing: RFC 8414 makes basic the default), else `post`.
fn choose_auth(
    config: &IdpConfig,
    advertised: Option<&Vec<CoreClientAuthMethod>>,
) -> ClientAuthMethod {
    let offered = |m: &CoreClientAuthMethod| advertised.is_none_or(|list| list.contains(m));
    if let Some(method) = config.token_endpoint_auth {
        let as_core = match method {
            ClientAuthMethod::ClientSecretBasic => CoreClientAuthMethod::ClientSecretBasic,
            ClientAuthMethod::ClientSecretPost => CoreClientAuthMethod::ClientSecretPost,
            ClientAuthMethod::PrivateKeyJwt => CoreClientAuthMethod::PrivateKeyJwt,
        };
        if !offered(&as_core) {
            tracing::warn!(
                method = method.as_str(),
                "the IdP does not advertise the configured token_endpoint_auth; using it anyway"
            );
        }
        return method;
    }
    if config.client_secret.is_none() {
        ClientAuthMethod::PrivateKeyJwt
    } else if offered(&CoreClientAuthMethod::ClientSecretBasic) {
        ClientAuthMethod::ClientSecretBasic
    } else if offered(&CoreClientAuthMethod::ClientSecretPost) {
        ClientAuthMethod::ClientSecretPost
    } else {
        ClientAuthMethod::ClientSecretBasic
    }
}

/// The algorithms ID tokens may be signed with: the configured ones, else the asymmetric
/// ones the IdP advertises. HS* (keyed by the client secret) only when configured; `none`
/// never.
fn accepted_algs(
    configured: Option<&[String]>,
    advertised: &[CoreJwsSigningAlgorithm],
) -> Vec<CoreJwsSigningAlgorithm> {
    use CoreJwsSigningAlgorithm as A;
    match configured {
        Some(names) => names
            .iter()
            .filter_map(|n| serde_json::from_value(serde_json::Value::String(n.clone())).ok())
            .filter(|a| *a != A::None)
            .collect(),
        None => advertised
            .iter()
            .filter(|a| !matches!(a, A::None | A::HmacSha256 | A::HmacSha384 | A::HmacSha512))
            .cloned()
            .collect(),
    }
}

fn alg_names(algs: &[CoreJwsSigningAlgorithm]) -> String {
    let names: Vec<String> = algs
        .iter()
        .filter_map(|a| serde_json::to_value(a).ok())
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// The `alg` of a JWS's protected header, whatever its shape otherwise.
fn header_alg(token: &str) -> Option<String> {
    let header = token.split('.').next()?;
    let json: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
    json.get("alg")?.as_str().map(str::to_string)
}

fn verify_id_token(p: &Provider, token: &str, nonce: Option<&str>) -> Result<(), OidcError> {
    let accepted = alg_names(&p.algs);
    let alg = header_alg(token).unwrap_or_default();
    if !accepted.split(", ").any(|a| a == alg) {
        return Err(OidcError::AlgorithmRefused { alg, accepted });
    }
    let parsed: CoreIdToken = token
        .parse()
        .map_err(|e: serde_json::Error| OidcError::IdToken(e.to_string()))?;
    let verifier = p
        .client
        .id_token_verifier()
        .set_allowed_algs(p.algs.clone());
    let claims = match nonce {
        Some(n) => parsed.claims(&verifier, &Nonce::new(n.to_string())),
        None => parsed.claims(&verifier, |_: Option<&Nonce>| Ok(())),
    }
    .map_err(|e| OidcError::IdToken(error_chain(&e)))?;
    // OIDC Core 3.1.3.7 step 5, which openidconnect leaves unchecked: a token whose
    // authorized party is another client was not issued to us.
    if let Some(azp) = claims.authorized_party()
        && azp != p.client.client_id()
    {
        return Err(OidcError::IdToken(format!(
            "authorized party `{}` is not this client",
            azp.as_str()
        )));
    }
    Ok(())
}

/// Reads the user from an ID token whose signature and claims were already verified.
pub fn user_from_verified_token(
    token: &str,
    groups_claim: &str,
    assume_missing_verified: bool,
) -> Option<User> {
    user_from_claims(
        &jwt_payload(token)?,
        &ClaimRules {
            groups_claim,
            assume_email_verified: assume_missing_verified,
            keep: &[],
        },
    )
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod attack_tests;
#[cfg(test)]
mod provider_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn token(payload: serde_json::Value) -> String {
        format!("e30.{}.sig", URL_SAFE_NO_PAD.encode(payload.to_string()))
    }

    #[test]
    fn every_kind_is_listed_once() {
        let s = String::new;
        let errors = [
            OidcError::NotReady,
            OidcError::Unreachable {
                endpoint: "token",
                detail: s(),
            },
            OidcError::InvalidClient(s()),
            OidcError::InvalidGrant(s()),
            OidcError::TokenEndpoint(s()),
            OidcError::NoIdToken,
            OidcError::AlgorithmRefused {
                alg: s(),
                accepted: s(),
            },
            OidcError::IdToken(s()),
            OidcError::SubjectMismatch {
                id_token: s(),
                userinfo: s(),
            },
            OidcError::UserInfo(s()),
            OidcError::LogoutToken(s()),
            OidcError::Bearer(s()),
        ];
        let kinds: Vec<&str> = errors.iter().map(OidcError::kind).collect();
        assert_eq!(kinds, OidcError::KINDS);
    }

    #[test]
    fn reads_claims_and_groups() {
        let t = token(
            serde_json::json!({"sub":"alice","email":"a@x","email_verified":true,"groups":["admins"],"name":"A"}),
        );
        let u = user_from_verified_token(&t, "groups", false).unwrap();
        assert_eq!(u.groups, vec!["admins"]);
        assert!(u.email_verified);
        let t = token(serde_json::json!({"sub":"bob","roles":"ops"}));
        assert_eq!(
            user_from_verified_token(&t, "roles", false).unwrap().groups,
            vec!["ops"]
        );
        assert!(
            user_from_verified_token(&token(serde_json::json!({"email":"x"})), "groups", false)
                .is_none()
        );
        assert!(user_from_verified_token("garbage", "groups", false).is_none());
    }

    #[test]
    fn attack_only_a_boolean_true_verifies_an_email() {
        let with = |v: serde_json::Value| {
            let t = token(
                serde_json::json!({"sub": "m", "email": "m@corp.example", "email_verified": v}),
            );
            user_from_verified_token(&t, "groups", true).unwrap()
        };
        for not_verified in [
            serde_json::json!("true"),
            serde_json::json!(1),
            serde_json::json!("yes"),
            serde_json::json!(null),
            serde_json::json!([true]),
            serde_json::json!({"value": true}),
            serde_json::json!(false),
        ] {
            let u = with(not_verified.clone());
            assert!(!u.email_verified, "{not_verified}");
            assert_eq!(u.verified_email(), None, "{not_verified}");
        }
        assert_eq!(
            with(serde_json::json!(true)).verified_email(),
            Some("m@corp.example")
        );
        // A missing claim verifies only with the explicit switch.
        let t = token(serde_json::json!({"sub": "m", "email": "m@corp.example"}));
        assert!(
            !user_from_verified_token(&t, "groups", false)
                .unwrap()
                .email_verified
        );
        assert!(
            user_from_verified_token(&t, "groups", true)
                .unwrap()
                .email_verified
        );
    }
}
