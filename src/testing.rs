//! Fakes and fixtures for in-process tests: a config directory with real secret files, a
//! fake identity provider that behaves like one (state, nonce, PKCE, single-use codes), a
//! fake token source, and a cookie-keeping client that drives the HTTP edge with `oneshot`.
//! Compiled for this crate's tests and, with the `testing` feature, for the fuzz targets.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{HeaderMap, Method, StatusCode};
use tower::ServiceExt;
use url::Url;

use crate::app::{App, Parts};
use crate::authorizer::TokenSource;
use crate::cockpit::TokenTooLong;
use crate::config::{Config, ConfigErrors};
use crate::core::clock::ManualClock;
use crate::core::{Clock, Route, Session, User};
use crate::crypto::{random_token, sha256_b64};
use crate::identity::generate_pkcs8_pem;
use crate::oidc::{
    AuthStart, IdentityProvider, IdpTokens, LogoutToken, OidcError, Refreshed, SignedIn,
};
use crate::secret::SecretString;
use crate::session::{CookieJar, MemoryStore, SessionStore};

/// A config with every kind of route: any user, a group, a path prefix with email and
/// domain rules. Secret files are those of [`ConfigDir`].
pub const CONFIG: &str = r#"
authenticate_url: https://auth.localhost:8443
idp:
  issuer: http://127.0.0.1:9000
  client_id: portcullis
  client_secret_file: client
  scopes: [openid, email, profile, groups]
cookie:
  secret_file: cookie
  lifetime: 1h
signing_key_file: key.pem
routes:
  - name: app
    from: https://app.localhost:8443
    to: http://127.0.0.1:9200
    policy: { any_authenticated_user: true }
  - name: admin
    from: https://admin.localhost:8443
    to: http://127.0.0.1:9200
    policy: { groups: [admins] }
  - name: sub
    from: https://apps.localhost:8443/admin/
    to: http://127.0.0.1:9300
    policy: { emails: [alice@example.com], domains: [corp.example] }
"#;

/// [`CONFIG`] with a Cockpit route on `cockpit.localhost:8443` and a public one on
/// `public.localhost:8443`.
pub fn config_with_cockpit() -> String {
    format!(
        "{CONFIG}  - name: cockpit
    from: https://cockpit.localhost:8443
    to: http://127.0.0.1:9090
    policy: {{ any_authenticated_user: true }}
    cockpit: {{}}
  - name: public
    from: https://public.localhost:8443
    to: http://127.0.0.1:9200
    policy: {{ public: true }}
"
    )
}

/// A temporary directory with the secret files a config names (`key.pem`, `cookie`,
/// `client`), removed on drop.
pub struct ConfigDir {
    pub dir: PathBuf,
}

impl ConfigDir {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "portcullis-test-{}-{}",
            std::process::id(),
            random_token(6)
        ));
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        std::fs::write(dir.join("key.pem"), generate_pkcs8_pem()).expect("write key.pem");
        std::fs::write(dir.join("cookie"), "0123456789abcdef0123456789abcdef\n")
            .expect("write cookie");
        std::fs::write(dir.join("client"), "s3cret\n").expect("write client");
        Self { dir }
    }

    pub fn parse(&self, yaml: &str) -> Result<Config, ConfigErrors> {
        crate::config::parse(yaml, &self.dir)
    }
}

impl Default for ConfigDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for ConfigDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A user with a verified email and the given groups; the subject is the email's local part.
pub fn user(email: &str, groups: &[&str]) -> User {
    User {
        subject: email.split('@').next().unwrap_or(email).into(),
        email: Some(email.into()),
        email_verified: true,
        name: None,
        preferred_username: None,
        groups: groups.iter().map(|g| g.to_string()).collect(),
        claims: Vec::new(),
    }
}

/// A sign-in the fake IdP has started and not yet answered.
struct Pending {
    nonce: String,
    challenge: String,
}

/// An authorization code the fake IdP has issued.
struct Code {
    user: User,
    nonce: String,
    challenge: String,
}

/// An identity provider in memory that checks what a real one checks: the code is single
/// use and bound to the PKCE challenge and nonce of the sign-in that asked for it.
pub struct FakeIdp {
    ready: AtomicBool,
    pending: Mutex<HashMap<String, Pending>>,
    codes: Mutex<HashMap<String, Code>>,
    finishes: AtomicUsize,
    /// Live refresh tokens and whom they are for; each is spent by use (rotation).
    refresh_tokens: Mutex<HashMap<String, User>>,
    refreshes: AtomicUsize,
    /// How long a refresh takes.
    pub refresh_delay: Mutex<std::time::Duration>,
    /// The next refresh fails with this.
    pub fail_next_refresh: Mutex<Option<OidcError>>,
    /// The access tokens' lifetime, in seconds.
    pub expires_in: std::sync::atomic::AtomicU64,
    /// The next code exchange fails with this, whatever the code.
    pub fail_next_finish: Mutex<Option<OidcError>>,
    end_session: Option<Url>,
    /// The `id_token_hint` of every logout URL made.
    pub hints: Mutex<Vec<Option<String>>>,
}

/// The fake IdP's authorization endpoint.
pub const FAKE_IDP_AUTHORIZE: &str = "https://idp.test/authorize";

impl Default for FakeIdp {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeIdp {
    /// A ready IdP with an end-session endpoint.
    pub fn new() -> Self {
        Self {
            ready: AtomicBool::new(true),
            pending: Mutex::default(),
            codes: Mutex::default(),
            finishes: AtomicUsize::new(0),
            refresh_tokens: Mutex::default(),
            refreshes: AtomicUsize::new(0),
            refresh_delay: Mutex::default(),
            fail_next_refresh: Mutex::default(),
            expires_in: std::sync::atomic::AtomicU64::new(300),
            fail_next_finish: Mutex::default(),
            end_session: Url::parse("https://idp.test/logout").ok(),
            hints: Mutex::default(),
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// How many code exchanges were attempted.
    pub fn finishes(&self) -> usize {
        self.finishes.load(Ordering::SeqCst)
    }

    /// How many refresh grants were attempted.
    pub fn refreshes(&self) -> usize {
        self.refreshes.load(Ordering::SeqCst)
    }

    /// Revokes every refresh token (the IdP ended the user's session).
    pub fn revoke_refresh_tokens(&self) {
        self.refresh_tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// The IdP session id the fake gives `subject`'s sign-ins (one IdP session per user).
    pub fn sid_of(subject: &str) -> String {
        format!("idp-session-{subject}")
    }

    fn expires_in(&self) -> Option<std::time::Duration> {
        Some(std::time::Duration::from_secs(
            self.expires_in.load(Ordering::SeqCst),
        ))
    }

    /// A logout token the fake accepts, for `sub` and/or `sid`.
    pub fn logout_token(sub: Option<&str>, sid: Option<&str>) -> String {
        format!(
            "fake-logout.{}",
            serde_json::json!({"sub": sub, "sid": sid, "jti": random_token(8)})
        )
    }

    /// A live refresh token for `user`, as the fake's token endpoint issues them.
    pub fn issue_refresh_token(&self, user: User) -> SecretString {
        let token = format!("rt-{}", random_token(16));
        self.refresh_tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.clone(), user);
        SecretString::new(token)
    }

    /// What the IdP does when `user` signs in at `authorize_url` (as [`IdentityProvider::start`]
    /// made it): the URL it sends the browser back to, with a fresh code and the state.
    pub fn sign_in(&self, authorize_url: &str, callback: &str, user: User) -> String {
        let url = Url::parse(authorize_url).expect("an authorization URL");
        let state = query_value(&url, "state").expect("the authorization URL has a state");
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&state)
            .expect("the IdP started this sign-in");
        let code = random_token(16);
        self.codes.lock().unwrap_or_else(|e| e.into_inner()).insert(
            code.clone(),
            Code {
                user,
                nonce: pending.nonce,
                challenge: pending.challenge,
            },
        );
        let mut back = Url::parse(callback).expect("a callback URL");
        back.query_pairs_mut()
            .append_pair("code", &code)
            .append_pair("state", &state);
        back.into()
    }
}

#[async_trait]
impl IdentityProvider for FakeIdp {
    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    fn start(&self) -> Result<AuthStart, OidcError> {
        if !self.is_ready() {
            return Err(OidcError::NotReady);
        }
        let (state, nonce, verifier) = (random_token(16), random_token(16), random_token(32));
        let challenge = sha256_b64(verifier.as_bytes());
        let mut url = Url::parse(FAKE_IDP_AUTHORIZE).expect("a static URL");
        url.query_pairs_mut()
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                state.clone(),
                Pending {
                    nonce: nonce.clone(),
                    challenge,
                },
            );
        Ok(AuthStart {
            url,
            state,
            nonce,
            pkce_verifier: verifier,
        })
    }

    async fn finish(
        &self,
        code: &str,
        pkce_verifier: &str,
        nonce: &str,
    ) -> Result<SignedIn, OidcError> {
        self.finishes.fetch_add(1, Ordering::SeqCst);
        if let Some(e) = self
            .fail_next_finish
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            return Err(e);
        }
        let issued = self
            .codes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(code)
            .ok_or_else(|| OidcError::InvalidGrant("unknown or used code".into()))?;
        if sha256_b64(pkce_verifier.as_bytes()) != issued.challenge {
            return Err(OidcError::InvalidGrant("PKCE verification failed".into()));
        }
        if issued.nonce != nonce {
            return Err(OidcError::IdToken("nonce mismatch".into()));
        }
        Ok(SignedIn {
            id_token: SecretString::new(format!("e30.{}.sig", random_token(24))),
            tokens: IdpTokens {
                access_token: Some(SecretString::new(random_token(16))),
                refresh_token: Some(self.issue_refresh_token(issued.user.clone())),
                expires_in: self.expires_in(),
            },
            idp_sid: Some(Self::sid_of(&issued.user.subject)),
            user: issued.user,
            used_userinfo: false,
        })
    }

    async fn refresh(
        &self,
        refresh_token: &SecretString,
        subject: &str,
        _userinfo: bool,
    ) -> Result<Refreshed, OidcError> {
        self.refreshes.fetch_add(1, Ordering::SeqCst);
        let delay = *self.refresh_delay.lock().unwrap_or_else(|e| e.into_inner());
        tokio::time::sleep(delay).await;
        if let Some(e) = self
            .fail_next_refresh
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            return Err(e);
        }
        let user = self
            .refresh_tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(refresh_token.expose())
            .ok_or_else(|| OidcError::InvalidGrant("unknown or spent refresh token".into()))?;
        if user.subject != subject {
            return Err(OidcError::IdToken("another subject".into()));
        }
        Ok(Refreshed {
            id_token: None,
            tokens: IdpTokens {
                access_token: Some(SecretString::new(random_token(16))),
                refresh_token: Some(self.issue_refresh_token(user.clone())),
                expires_in: self.expires_in(),
            },
            user: Some(user),
        })
    }

    async fn verify_bearer(&self, token: &str, now: u64) -> Result<(User, u64), OidcError> {
        match token.strip_prefix("fake-bearer.") {
            Some(email) => Ok((user(email, &[]), now + 300)),
            None => Err(OidcError::Bearer("not a fake bearer token".into())),
        }
    }

    fn verify_logout_token(&self, token: &str, now: u64) -> Result<LogoutToken, OidcError> {
        let json = token
            .strip_prefix("fake-logout.")
            .ok_or_else(|| OidcError::LogoutToken("not a fake logout token".into()))?;
        let v: serde_json::Value =
            serde_json::from_str(json).map_err(|e| OidcError::LogoutToken(e.to_string()))?;
        let text = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        Ok(LogoutToken {
            sub: text("sub"),
            sid: text("sid"),
            jti: text("jti").unwrap_or_default(),
            iat: now,
        })
    }

    fn end_session_url(&self, id_token_hint: Option<&SecretString>) -> Option<Url> {
        self.hints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(id_token_hint.map(|h| h.expose().to_string()));
        self.end_session.clone()
    }
}

fn query_value(url: &Url, key: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// Tokens that say what they are for instead of being signed, and count how often they
/// were made.
#[derive(Default)]
pub struct FakeTokens {
    pub identity: AtomicUsize,
    pub cockpit: AtomicUsize,
}

impl TokenSource for FakeTokens {
    fn identity_token(&self, session: &Session, route: &Route, _now: u64) -> Arc<str> {
        self.identity.fetch_add(1, Ordering::SeqCst);
        format!("jwt:{}:{}", session.user.subject, route.audience()).into()
    }

    fn cockpit_credential(
        &self,
        account: &str,
        admin: bool,
        route: &Route,
        _now: u64,
    ) -> Result<String, TokenTooLong> {
        self.cockpit.fetch_add(1, Ordering::SeqCst);
        // The real limit is on the token's length; the fake's on the host name, which is
        // what makes real tokens long.
        if route.authority.len() > 200 {
            return Err(TokenTooLong {
                len: route.authority.len(),
            });
        }
        let admin = if admin { "+admin" } else { "" };
        Ok(format!(
            "Basic cockpit:{account}{admin}@{}",
            route.authority
        ))
    }
}

/// An [`App`] on a config, with a fake IdP, a manual clock and sessions in memory.
pub struct TestApp {
    pub app: Arc<App>,
    pub idp: Arc<FakeIdp>,
    pub clock: Arc<ManualClock>,
    pub store: Arc<MemoryStore>,
    yaml: String,
    dir: ConfigDir,
}

/// A fixed start time for tests: 2027-01-15.
pub const T0: u64 = 1_800_000_000;

impl TestApp {
    pub fn new(yaml: &str) -> Self {
        Self::over(yaml, |memory| memory)
    }

    /// An app whose store is the memory store behind a switch that can cut it off, as a
    /// Redis that stops answering.
    pub fn with_flaky_store(yaml: &str) -> (Self, Arc<FlakyStore>) {
        let mut flaky = None;
        let t = Self::over(yaml, |memory| {
            let f = Arc::new(FlakyStore {
                inner: memory,
                down: AtomicBool::new(false),
            });
            flaky = Some(f.clone());
            f
        });
        (t, flaky.expect("built"))
    }

    fn over(yaml: &str, store: impl FnOnce(Arc<MemoryStore>) -> Arc<dyn SessionStore>) -> Self {
        let dir = ConfigDir::new();
        let config = dir.parse(yaml).expect("the test config is valid");
        let idp = Arc::new(FakeIdp::new());
        let clock = Arc::new(ManualClock::at(T0));
        let memory = Arc::new(MemoryStore::default());
        let store_ = memory.clone();
        let store = store(memory);
        let app = Arc::new(App::with_parts(
            config,
            Parts {
                store,
                clock: clock.clone(),
                idp: idp.clone(),
                metrics: Default::default(),
                draining: Default::default(),
            },
        ));
        Self {
            app,
            idp,
            clock,
            store: store_,
            yaml: yaml.to_string(),
            dir,
        }
    }

    /// A second replica: the same config (and secrets), store, IdP and clock, with its own
    /// state otherwise (refreshes in flight, token cache, metrics).
    pub fn replica(&self) -> Arc<App> {
        self.replica_with_store(self.store.clone())
    }

    /// A replica of this app over another store (a fake that fails, a Redis store).
    pub fn replica_with_store(&self, store: Arc<dyn SessionStore>) -> Arc<App> {
        let config = self
            .dir
            .parse(&self.yaml)
            .expect("the test config is valid");
        Arc::new(App::with_parts(
            config,
            Parts {
                store,
                clock: self.clock.clone(),
                idp: self.idp.clone(),
                metrics: Default::default(),
                draining: Default::default(),
            },
        ))
    }

    /// Stores a session for `user` as a sign-in at the fake IdP leaves it: with a refresh
    /// token that expires with the fake's `expires_in`, and the IdP's session id.
    pub async fn signed_in_session(&self, user: User) -> Session {
        let now = self.clock.now();
        let mut s = Session::new(user.clone(), now, 3600);
        let tokens = IdpTokens {
            access_token: Some(SecretString::new(random_token(16))),
            refresh_token: Some(self.idp.issue_refresh_token(user.clone())),
            expires_in: self.idp.expires_in(),
        };
        let sid = FakeIdp::sid_of(&user.subject);
        s.idp = self
            .app
            .sessions
            .grant(&s.id, &tokens, Some(&sid), false, None, now);
        self.app
            .store
            .put(s.clone())
            .await
            .expect("the memory store takes it");
        s
    }

    /// Stores a session for `user` and returns it.
    pub async fn session(&self, user: User) -> Session {
        let s = Session::new(user, self.clock.now(), 3600);
        self.app
            .store
            .put(s.clone())
            .await
            .expect("the memory store takes it");
        s
    }

    /// The `name=value` of a session cookie for `session` on `authority`.
    pub fn cookie(&self, session: &Session, authority: &str) -> String {
        let set =
            self.app
                .cookies()
                .issue(session.id, authority, session.expires_at, self.clock.now());
        set.split(';').next().unwrap_or_default().to_string()
    }

    /// Sends one request to the HTTP service's router.
    pub async fn send(&self, request: axum::http::Request<Body>) -> Answer {
        let response = crate::web::router(self.app.clone())
            .oneshot(request)
            .await
            .expect("the router is infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap_or_default();
        Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    /// A browser with an empty cookie jar.
    pub fn browser(&self) -> TestBrowser<'_> {
        TestBrowser {
            app: self,
            jar: HashMap::new(),
            headers: Vec::new(),
        }
    }
}

/// A memory store that can be cut off: every call fails while `down` (as a Redis that is
/// stopped or unreachable).
pub struct FlakyStore {
    inner: Arc<MemoryStore>,
    pub down: AtomicBool,
}

impl FlakyStore {
    fn up(&self) -> Result<&MemoryStore, crate::session::StoreError> {
        if self.down.load(Ordering::SeqCst) {
            Err(crate::session::StoreError("connection refused".into()))
        } else {
            Ok(&self.inner)
        }
    }
}

#[async_trait]
impl SessionStore for FlakyStore {
    async fn get(
        &self,
        id: &crate::core::SessionId,
        now: u64,
    ) -> Result<Option<Arc<Session>>, crate::session::StoreError> {
        self.up()?.get(id, now).await
    }
    async fn put(&self, session: Session) -> Result<(), crate::session::StoreError> {
        self.up()?.put(session).await
    }
    async fn replace(&self, session: Session) -> Result<bool, crate::session::StoreError> {
        self.up()?.replace(session).await
    }
    async fn remove(&self, id: &crate::core::SessionId) -> Result<(), crate::session::StoreError> {
        self.up()?.remove(id).await
    }
    async fn revoke(
        &self,
        selector: crate::session::Selector<'_>,
        now: u64,
    ) -> Result<Vec<Arc<Session>>, crate::session::StoreError> {
        self.up()?.revoke(selector, now).await
    }
    async fn list(
        &self,
        user: Option<&str>,
        now: u64,
    ) -> Result<Vec<Arc<Session>>, crate::session::StoreError> {
        self.up()?.list(user, now).await
    }
    async fn claim_once(
        &self,
        token_id: &str,
        expires_at: u64,
    ) -> Result<bool, crate::session::StoreError> {
        self.up()?.claim_once(token_id, expires_at).await
    }
    async fn lock(
        &self,
        name: &str,
        owner: &str,
        lease: std::time::Duration,
    ) -> Result<bool, crate::session::StoreError> {
        self.up()?.lock(name, owner, lease).await
    }
    async fn unlock(&self, name: &str, owner: &str) -> Result<(), crate::session::StoreError> {
        self.up()?.unlock(name, owner).await
    }
    async fn sweep(&self, now: u64) {
        self.inner.sweep(now).await
    }
}

/// One answer of the HTTP service.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn location(&self) -> Option<&str> {
        self.headers.get("location").and_then(|v| v.to_str().ok())
    }

    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect()
    }
}

/// A client with a cookie jar per host that talks to the HTTP service in process, as a
/// browser behind Envoy would: `Host` is the URL's authority, and `Set-Cookie` (with
/// `Max-Age=0` deleting) is kept per host.
pub struct TestBrowser<'a> {
    app: &'a TestApp,
    /// authority → cookie name → value.
    jar: HashMap<String, HashMap<String, String>>,
    /// Extra headers sent with every request (e.g. `sec-fetch-site`).
    headers: Vec<(String, String)>,
}

impl TestBrowser<'_> {
    /// Sends `header: value` with every request from now on.
    pub fn always_send(&mut self, name: &str, value: &str) {
        self.headers.push((name.into(), value.into()));
    }

    /// The `Cookie` header this browser sends to `authority`.
    pub fn cookie_header(&self, authority: &str) -> String {
        self.jar
            .get(authority)
            .map(|c| {
                let mut pairs: Vec<String> = c.iter().map(|(k, v)| format!("{k}={v}")).collect();
                pairs.sort();
                pairs.join("; ")
            })
            .unwrap_or_default()
    }

    /// The value of cookie `name` on `authority`.
    pub fn cookie(&self, authority: &str, name: &str) -> Option<&str> {
        self.jar.get(authority)?.get(name).map(String::as_str)
    }

    pub fn set_cookie(&mut self, authority: &str, name: &str, value: &str) {
        self.jar
            .entry(authority.into())
            .or_default()
            .insert(name.into(), value.into());
    }

    pub async fn get(&mut self, url: &str) -> Answer {
        self.request(Method::GET, url, &[]).await
    }

    pub async fn post(&mut self, url: &str, headers: &[(&str, &str)]) -> Answer {
        self.request(Method::POST, url, headers).await
    }

    /// Sends one request to the URL's host and keeps the cookies it sets.
    pub async fn request(&mut self, method: Method, url: &str, headers: &[(&str, &str)]) -> Answer {
        let parsed = Url::parse(url).expect("an absolute URL");
        let authority = crate::core::authority_of(&parsed);
        let path = match parsed.query() {
            Some(q) => format!("{}?{q}", parsed.path()),
            None => parsed.path().to_string(),
        };
        let mut builder = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &authority);
        let cookies = self.cookie_header(&authority);
        if !cookies.is_empty() {
            builder = builder.header("cookie", cookies);
        }
        for (k, v) in self
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(headers.iter().copied())
        {
            builder = builder.header(k, v);
        }
        let answer = self
            .app
            .send(builder.body(Body::empty()).expect("a valid request"))
            .await;
        for set in answer.set_cookies() {
            self.keep(&authority, &set);
        }
        answer
    }

    fn keep(&mut self, authority: &str, set_cookie: &str) {
        let mut parts = set_cookie.split(';');
        let Some((name, value)) = parts.next().and_then(|p| p.split_once('=')) else {
            return;
        };
        let deleted = parts.any(|p| p.trim().eq_ignore_ascii_case("max-age=0"));
        let jar = self.jar.entry(authority.into()).or_default();
        if deleted {
            jar.remove(name.trim());
        } else {
            jar.insert(name.trim().into(), value.trim().into());
        }
    }

    /// Whether this browser's cookies for `authority` hold one of portcullis's sessions.
    pub async fn has_session(&self, authority: &str) -> bool {
        let header = self.cookie_header(authority);
        let now = self.app.clock.now();
        let jar = CookieJar::new(&header);
        let name = self.app.app.cookies().name().to_string();
        for value in jar.get_all(&name) {
            if let Some(sid) = self.app.app.cookies().open(value, authority, now)
                && matches!(self.app.app.store.get(&sid, now).await, Ok(Some(_)))
            {
                return true;
            }
        }
        false
    }

    /// Signs `user` in from a navigation to `url` on a route host, through the whole flow
    /// (route-host sign-in, auth host, IdP, callback, hop), and returns the final answer of
    /// the hop (a redirect back to `url`).
    pub async fn sign_in(&mut self, url: &str, user: User) -> Answer {
        let parsed = Url::parse(url).expect("an absolute URL");
        let mut start = parsed.clone();
        start.set_path("/.portcullis/sign_in");
        start.set_query(None);
        start.query_pairs_mut().append_pair("rd", url);
        let to_auth = self.get(start.as_str()).await;
        let auth_sign_in = to_auth.location().expect("to the auth host").to_string();
        let to_idp = self.get(&auth_sign_in).await;
        let authorize = to_idp.location().expect("to the IdP").to_string();
        let callback = self.app.app.urls.oauth2_callback.to_string();
        let back = self.app.idp.sign_in(&authorize, &callback, user);
        let to_hop = self.get(&back).await;
        let hop = to_hop.location().expect("to the hop").to_string();
        self.get(&hop).await
    }
}
