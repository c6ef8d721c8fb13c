//! The OpenID Connect relying party: discovery, the authorization-code flow with PKCE
//! (S256), `state` and `nonce`, and full ID token validation (signature, `iss`, `aud`,
//! `exp`, `nonce`) by the openidconnect crate.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreIdToken};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndSessionUrl, IssuerUrl, LogoutRequest,
    Nonce, PkceCodeChallenge, PkceCodeVerifier, PostLogoutRedirectUrl, ProviderMetadataWithLogout,
    RedirectUrl, Scope, TokenResponse, reqwest,
};
use url::Url;

use crate::config::IdpConfig;
use crate::core::User;
use crate::secret::SecretString;

/// Why a sign-in could not proceed.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("the identity provider has not been reached yet")]
    NotReady,
    #[error("code exchange failed: {0}")]
    Exchange(String),
    #[error("the token response has no ID token")]
    NoIdToken,
    #[error("ID token rejected: {0}")]
    IdToken(String),
}

/// A sign-in in flight: where to send the browser, and what to remember until it comes back.
pub struct AuthStart {
    pub url: Url,
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
}

/// A finished sign-in: who it was, and the ID token (for `id_token_hint` at sign-out).
pub struct SignedIn {
    pub user: User,
    pub id_token: SecretString,
}

/// The identity provider, as the HTTP edge uses it. [`OpenIdConnect`] is the real one;
/// tests use a fake (`crate::testing::FakeIdp`).
#[async_trait]
pub trait IdentityProvider: Send + Sync + 'static {
    /// Whether sign-ins can start (discovery has succeeded).
    fn is_ready(&self) -> bool;

    /// Runs until the provider is ready; the server spawns it at startup.
    async fn discover_until_ready(&self) {}

    /// Starts a sign-in: the authorization URL with fresh `state`, `nonce` and PKCE.
    fn start(&self) -> Result<AuthStart, OidcError>;

    /// Finishes a sign-in: exchanges the code and validates the ID token.
    async fn finish(
        &self,
        code: &str,
        pkce_verifier: &str,
        nonce: &str,
    ) -> Result<SignedIn, OidcError>;

    /// The RP-initiated logout URL at the provider, if it has one.
    fn end_session_url(&self, id_token_hint: Option<&SecretString>) -> Option<Url>;
}

/// What discovery found, and the client configured from it (built once, not per sign-in).
struct Provider {
    end_session: Option<EndSessionUrl>,
    client: CoreClientSet,
}

/// The OpenID Connect relying party against a real provider.
pub struct OpenIdConnect {
    config: IdpConfig,
    redirect_uri: RedirectUrl,
    post_logout_redirect_uri: PostLogoutRedirectUrl,
    http: reqwest::Client,
    provider: RwLock<Option<Arc<Provider>>>,
}

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
        }
    }

    fn provider(&self) -> Option<Arc<Provider>> {
        self.provider
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Fetches the discovery document (with its RP-initiated logout metadata) and the JWKS.
    pub async fn discover(&self) -> Result<(), String> {
        let issuer = IssuerUrl::new(self.config.issuer.clone()).map_err(|e| e.to_string())?;
        let metadata = ProviderMetadataWithLogout::discover_async(issuer, &self.http)
            .await
            .map_err(|e| error_chain(&e))?;
        let provider = Provider {
            end_session: metadata.additional_metadata().end_session_endpoint.clone(),
            client: self.client_from(metadata),
        };
        *self.provider.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(provider));
        Ok(())
    }

    fn client_from(&self, metadata: ProviderMetadataWithLogout) -> CoreClientSet {
        CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(self.config.client_id.clone()),
            Some(ClientSecret::new(
                self.config.client_secret.expose().to_string(),
            )),
        )
        .set_redirect_uri(self.redirect_uri.clone())
    }
}

#[async_trait]
impl IdentityProvider for OpenIdConnect {
    fn is_ready(&self) -> bool {
        self.provider().is_some()
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
        let provider = self.provider().ok_or(OidcError::NotReady)?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state, nonce) = provider.client.authorize(&self.config.scopes, challenge);
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
        let provider = self.provider().ok_or(OidcError::NotReady)?;
        let id_token = provider
            .client
            .exchange(code, pkce_verifier, &self.http)
            .await?;
        if let Err(e) = provider.client.verify(&id_token, nonce) {
            // The IdP may have rotated its keys since discovery: refresh once and retry.
            tracing::info!(error = %e, "ID token did not verify; refreshing the IdP's keys");
            self.discover().await.map_err(OidcError::IdToken)?;
            let provider = self.provider().ok_or(OidcError::NotReady)?;
            provider.client.verify(&id_token, nonce)?;
        }
        let user = user_from_verified_token(
            &id_token,
            &self.config.groups_claim,
            self.config.assume_email_verified,
        )
        .ok_or_else(|| OidcError::IdToken("claims are not a JSON object".into()))?;
        Ok(SignedIn {
            user,
            id_token: SecretString::new(id_token),
        })
    }

    fn end_session_url(&self, id_token_hint: Option<&SecretString>) -> Option<Url> {
        let endpoint = self.provider()?.end_session.clone()?;
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

/// The operations we need from the typestate-heavy openidconnect client, behind a trait so
/// the concrete client type never has to be named.
trait ClientOps {
    fn authorize(&self, scopes: &[String], challenge: PkceCodeChallenge)
    -> (Url, CsrfToken, Nonce);
    async fn exchange(
        &self,
        code: &str,
        verifier: &str,
        http: &reqwest::Client,
    ) -> Result<String, OidcError>;
    fn verify(&self, id_token: &str, nonce: &str) -> Result<(), OidcError>;
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

impl ClientOps for CoreClientSet {
    fn authorize(
        &self,
        scopes: &[String],
        challenge: PkceCodeChallenge,
    ) -> (Url, CsrfToken, Nonce) {
        let mut req = self.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        );
        for scope in scopes.iter().filter(|s| *s != "openid") {
            req = req.add_scope(Scope::new(scope.clone()));
        }
        req.set_pkce_challenge(challenge).url()
    }

    async fn exchange(
        &self,
        code: &str,
        verifier: &str,
        http: &reqwest::Client,
    ) -> Result<String, OidcError> {
        let response = self
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| OidcError::Exchange(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(verifier.to_string()))
            .request_async(http)
            .await
            .map_err(|e| OidcError::Exchange(error_chain(&e)))?;
        let token = response.id_token().ok_or(OidcError::NoIdToken)?;
        Ok(token.to_string())
    }

    fn verify(&self, id_token: &str, nonce: &str) -> Result<(), OidcError> {
        let token: openidconnect::core::CoreIdToken = id_token
            .parse()
            .map_err(|e: serde_json::Error| OidcError::IdToken(e.to_string()))?;
        let claims = token
            .claims(&self.id_token_verifier(), &Nonce::new(nonce.to_string()))
            .map_err(|e| OidcError::IdToken(error_chain(&e)))?;
        // OIDC Core 3.1.3.7 step 5, which openidconnect leaves unchecked: a token whose
        // authorized party is another client was not issued to us.
        if let Some(azp) = claims.authorized_party()
            && azp != self.client_id()
        {
            return Err(OidcError::IdToken(format!(
                "authorized party `{}` is not this client",
                azp.as_str()
            )));
        }
        Ok(())
    }
}

/// Reads the user from an ID token whose signature and claims were already verified.
/// Reading the payload directly lets the groups claim name be configurable.
///
/// Only a JSON `true` verifies an email: `"true"`, `1` or `"yes"` do not. A missing claim
/// verifies only with `assume_missing_verified` (`idp.assume_email_verified`), for IdPs
/// that verify every address and omit the claim.
pub fn user_from_verified_token(
    token: &str,
    groups_claim: &str,
    assume_missing_verified: bool,
) -> Option<User> {
    let payload = token.split('.').nth(1)?;
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    let text = |k: &str| claims.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let groups = match claims.get(groups_claim) {
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .filter_map(|g| g.as_str().map(str::to_string))
            .collect(),
        Some(serde_json::Value::String(one)) => vec![one.clone()],
        _ => Vec::new(),
    };
    Some(User {
        subject: text("sub")?,
        email: text("email"),
        email_verified: match claims.get("email_verified") {
            Some(v) => v.as_bool() == Some(true),
            None => assume_missing_verified,
        },
        name: text("name"),
        preferred_username: text("preferred_username"),
        groups,
    })
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
mod tests {
    use super::*;

    fn token(payload: serde_json::Value) -> String {
        format!("e30.{}.sig", URL_SAFE_NO_PAD.encode(payload.to_string()))
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
