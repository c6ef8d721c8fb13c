//! The config file as written: every field optional, so that one pass can report every
//! missing or malformed value instead of stopping at the first.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
pub struct RawConfig {
    pub server: Option<RawServer>,
    pub authenticate_url: Option<String>,
    pub idp: Option<RawIdp>,
    pub cookie: Option<RawCookie>,
    pub signing_key_file: Option<String>,
    pub published_key_files: Option<Vec<String>>,
    pub identity_header: Option<String>,
    pub routes: Option<Vec<RawRoute>>,
    pub session_store: Option<RawSessionStore>,
    pub admin: Option<RawAdmin>,
    pub websocket_max_duration: Option<String>,
    pub log: Option<RawLog>,
    pub sign_in_limits: Option<RawSignInLimits>,
}

/// The session administration API's listener.
#[derive(Debug, Default, Deserialize)]
pub struct RawAdmin {
    pub address: Option<String>,
    pub token_file: Option<String>,
}

/// `session_store: { memory: {} }` or `{ redis: { … } }`.
#[derive(Debug, Default, Deserialize)]
pub struct RawSessionStore {
    pub memory: Option<RawMemoryStore>,
    pub redis: Option<RawRedis>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawMemoryStore {}

#[derive(Debug, Default, Deserialize)]
pub struct RawRedis {
    pub url: Option<String>,
    pub password_file: Option<String>,
    pub tls: Option<RawRedisTls>,
    pub key_prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawRedisTls {
    pub ca_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawSignInLimits {
    pub per_address: Option<u32>,
    pub per_account: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawLog {
    /// `text` (default) or `json`.
    pub format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawServer {
    pub grpc_address: Option<String>,
    pub http_address: Option<String>,
    pub jwks_address: Option<String>,
    pub metrics_address: Option<String>,
    pub forward_auth_address: Option<String>,
    pub shutdown_grace: Option<String>,
    pub drain_delay: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawIdp {
    pub issuer: Option<String>,
    pub client_id: Option<String>,
    pub client_secret_file: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub groups_claim: Option<String>,
    pub assume_email_verified: Option<bool>,
    /// `auto` (default), `always` or `never`.
    pub userinfo: Option<String>,
    /// `client_secret_basic`, `client_secret_post` or `private_key_jwt`.
    pub token_endpoint_auth: Option<String>,
    pub client_key_file: Option<String>,
    /// The key's certificate, for IdPs that want its thumbprint (`x5t`) in assertions.
    pub client_cert_file: Option<String>,
    pub id_token_algs: Option<Vec<String>>,
    /// Present: `Authorization: Bearer` tokens are accepted.
    pub bearer: Option<RawBearer>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawBearer {
    /// Audiences of access tokens accepted besides our client id.
    pub audiences: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawCookie {
    pub name: Option<String>,
    pub secret_file: Option<String>,
    /// Earlier secrets that still open what they sealed.
    pub previous_secret_files: Option<Vec<String>>,
    pub lifetime: Option<String>,
    pub secure: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawRoute {
    pub name: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub policy: Option<RawPolicy>,
    pub cockpit: Option<RawCockpit>,
    pub role: Option<RawRole>,
    pub tls: Option<RawUpstreamTls>,
    pub websocket_max_duration: Option<String>,
}

/// How Envoy verifies an HTTPS upstream.
#[derive(Debug, Default, Deserialize)]
pub struct RawUpstreamTls {
    pub ca_file: Option<String>,
    pub insecure_skip_verify: Option<bool>,
}

/// A `role` claim derived from groups (for Grafana's `role_attribute_path`).
#[derive(Debug, Default, Deserialize)]
pub struct RawRole {
    /// group → role; the first entry (in file order) whose group the user has wins.
    pub from_groups: Option<serde_yaml_ng::Mapping>,
    pub default: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawCockpit {
    /// `subject` (default), `email_local_part` or `preferred_username`.
    pub account: Option<String>,
    /// Explicit email → account table; when given, only these users have an account.
    pub accounts: Option<std::collections::BTreeMap<String, String>>,
    /// IdP groups whose members get administrative access without a password.
    pub admin_groups: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawPolicy {
    pub public: Option<bool>,
    pub any_authenticated_user: Option<bool>,
    pub emails: Option<Vec<String>>,
    pub domains: Option<Vec<String>>,
    pub groups: Option<Vec<String>>,
    /// Rules (`and`/`or`/`not` over criteria), read by `config::policy`.
    pub allow: Option<serde_yaml_ng::Value>,
    pub deny: Option<serde_yaml_ng::Value>,
}
