//! Sessions in Redis (one node, Sentinel or Cluster), shared by every replica and kept
//! across restarts, with a local cache per replica so that a steady-state `Check` sends
//! Redis nothing.
//!
//! **Layout** (every key starts with `key_prefix`, `P` below):
//! `P s:PUBLIC_ID` holds the record as JSON (the refresh token inside it sealed), expiring
//! at the session's end (`EXAT`); `P u:SUBJECT`, `P e:EMAIL` and `P i:IDP_SID` are sets of
//! public ids for revocation by user and by IdP session, expiring with their last session;
//! `P o:…` marks spent single-use tokens, `P l:…` holds locks. Key names carry the public
//! id (a hash of the session id), never the id itself.
//!
//! **Coherence.** Every change of a record (a refresh's compare-and-set, a revocation) is a
//! Lua script that also publishes the session id on `P invalidate`, atomically, so no
//! replica can miss it while its subscription is up. Each replica subscribes, drops what
//! it is told, and publishes its own heartbeat on the same channel every
//! [`BEAT_EVERY`] with a sequence number. The cache is trusted only while this replica's
//! own latest heartbeat came back less than [`TRUST_FOR`] after it was sent, and with no
//! heartbeat missing in between: the round trip proves that every invalidation published
//! before it has arrived. A lost heartbeat, a reconnect or a gap drops the whole cache.
//!
//! **Cut off from Redis**, the cache is not trusted: every lookup fails (503), cached
//! sessions included, because a revocation made elsewhere meanwhile could not have
//! reached this replica. When Redis answers again, the cache starts empty and requests
//! succeed again, without a restart.

mod cache;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fred::prelude::{
    ClientLike, EventInterface, Expiration, KeysInterface, LuaInterface, PubsubInterface,
    ReconnectPolicy, SetOptions, SetsInterface,
};
use fred::types::config::{Config as FredConfig, Options, TlsConnector};
use tonic::codegen::tokio_stream::StreamExt;

use super::store::{Selector, SessionStore, StoreError};
use crate::config::RedisConfig;
use crate::core::{Session, SessionId};
use cache::Cache;

/// How often each replica proves its invalidation channel with a heartbeat.
pub const BEAT_EVERY: Duration = Duration::from_millis(200);
/// How old the latest heartbeat may be for the cache to be trusted: the bound on how long
/// a revocation can take to reach a replica whose connection broke silently.
pub const TRUST_FOR: Duration = Duration::from_millis(1000);
/// How long a lookup waits for the first connection after startup.
const STARTUP_WAIT: Duration = Duration::from_millis(500);
/// A command that takes longer fails the request (fail closed) rather than hold it.
const COMMAND_TIMEOUT: Duration = Duration::from_millis(800);

/// Changes a record if its version is the expected one, and tells every replica.
const REPLACE: &str = r#"
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
if cjson.decode(cur)['version'] ~= tonumber(ARGV[2]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EXAT', ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
"#;

/// Deletes a record and tells every replica (even when it was gone already: a replica
/// may still hold it).
const DELETE: &str = r#"
local n = redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return n
"#;

/// Adds a public id to an index set that lives as long as its longest session.
const INDEX: &str = r#"
redis.call('SADD', KEYS[1], ARGV[1])
local t = redis.call('EXPIRETIME', KEYS[1])
if t < tonumber(ARGV[2]) then redis.call('EXPIREAT', KEYS[1], ARGV[2]) end
return 1
"#;

/// Takes a lock, or extends it for its holder.
const LOCK: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"#;

const UNLOCK: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// The Redis session store.
pub struct RedisStore {
    client: fred::clients::Client,
    subscriber: fred::clients::SubscriberClient,
    prefix: String,
    channel: String,
    cache: Arc<Cache>,
    health: Arc<Health>,
    /// Fail fast while disconnected: a request answers 503 now rather than wait.
    options: Options,
}

/// When this replica last heard its own heartbeat.
struct Health {
    started: Instant,
    /// This process's name in its heartbeats.
    owner: String,
    /// Milliseconds after `started` at which the latest heartbeat that came back was sent.
    trusted_from_ms: AtomicU64,
    /// The sequence number of the latest heartbeat that came back; 0 before the first.
    last_seq: AtomicU64,
    next_seq: AtomicU64,
}

impl Health {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn trusted(&self) -> bool {
        let from = self.trusted_from_ms.load(Ordering::Acquire);
        from != 0 && self.now_ms().saturating_sub(from) <= TRUST_FOR.as_millis() as u64
    }
}

impl RedisStore {
    /// Builds the clients and starts connecting (and reconnecting, forever) in the
    /// background: portcullis serves at once, answering 503 until Redis is reachable.
    pub fn start(config: &RedisConfig) -> Result<Arc<Self>, StoreError> {
        let mut fred_config =
            FredConfig::from_url(&config.url).map_err(|e| StoreError(e.to_string()))?;
        fred_config.password = config.password.as_ref().map(|p| p.expose().to_string());
        fred_config.version = fred::types::RespVersion::RESP3;
        // Reconnecting is this store's job: never give up at the first failure.
        fred_config.fail_fast = false;
        if config.tls {
            fred_config.tls = Some(tls_connector(config.ca_file.as_deref())?.into());
        }
        let mut builder = fred::types::Builder::from_config(fred_config);
        builder
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(2);
                c.internal_command_timeout = Duration::from_secs(2);
                c.max_command_attempts = 1;
                c.unresponsive = fred::types::config::UnresponsiveConfig {
                    max_timeout: Some(Duration::from_secs(2)),
                    interval: Duration::from_millis(500),
                };
            })
            .with_performance_config(|p| p.default_command_timeout = COMMAND_TIMEOUT);
        let client = builder.build().map_err(|e| StoreError(e.to_string()))?;
        let subscriber = builder
            .build_subscriber_client()
            .map_err(|e| StoreError(e.to_string()))?;
        let store = Arc::new(Self {
            client,
            subscriber,
            channel: format!("{}invalidate", config.key_prefix),
            prefix: config.key_prefix.clone(),
            cache: Arc::new(Cache::default()),
            health: Arc::new(Health {
                started: Instant::now(),
                owner: crate::crypto::random_token(9),
                trusted_from_ms: AtomicU64::new(0),
                last_seq: AtomicU64::new(0),
                next_seq: AtomicU64::new(1),
            }),
            options: Options {
                fail_fast: true,
                timeout: Some(COMMAND_TIMEOUT),
                max_attempts: Some(1),
                ..Options::default()
            },
        });
        store.client.connect();
        store.subscriber.connect();
        store.spawn_background();
        tracing::info!(url = %config.url, prefix = %config.key_prefix, "session store: Redis");
        Ok(store)
    }

    fn spawn_background(self: &Arc<Self>) {
        // Resubscribe after every reconnect, and drop the cache: what was published while
        // the connection was down is lost.
        // A detached task for the client's lifetime.
        drop(self.subscriber.manage_subscriptions());
        for rx in [self.client.reconnect_rx(), self.subscriber.reconnect_rx()] {
            let cache = self.cache.clone();
            let mut rx = rx;
            tokio::spawn(async move {
                while let Ok(server) = rx.recv().await {
                    tracing::info!(%server, "reconnected to Redis; local session cache dropped");
                    cache.clear();
                }
            });
        }
        for rx in [self.client.error_rx(), self.subscriber.error_rx()] {
            let mut rx = rx;
            tokio::spawn(async move {
                while let Ok((error, server)) = rx.recv().await {
                    tracing::warn!(%error, server = ?server, "Redis connection error");
                }
            });
        }
        let this = self.clone();
        tokio::spawn(async move { this.listen().await });
        let this = self.clone();
        tokio::spawn(async move { this.beat().await });
    }

    /// Subscribes and applies every message: invalidations and heartbeats.
    async fn listen(self: Arc<Self>) {
        let mut messages = self.subscriber.message_rx();
        loop {
            if self.subscriber.wait_for_connect().await.is_ok()
                && self
                    .subscriber
                    .subscribe(self.channel.as_str())
                    .await
                    .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let beat_prefix = format!("hb {} ", self.health.owner);
        loop {
            let message = match messages.recv().await {
                Ok(m) => m,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(
                        missed = n,
                        "invalidations lagged; local session cache dropped"
                    );
                    self.cache.clear();
                    continue;
                }
                Err(_) => return,
            };
            let Some(text) = message.value.as_str() else {
                continue;
            };
            if let Some(rest) = text.strip_prefix("i ") {
                if let Some(id) = SessionId::parse(rest) {
                    self.cache.invalidate(&id);
                }
            } else if let Some(rest) = text.strip_prefix(&beat_prefix) {
                self.heard_beat(rest);
            }
        }
    }

    /// One of this replica's own heartbeats came back: `SEQ SENT_MS`.
    fn heard_beat(&self, rest: &str) {
        let mut parts = rest.split(' ');
        let (Some(Ok(seq)), Some(Ok(sent))) = (
            parts.next().map(str::parse::<u64>),
            parts.next().map(str::parse::<u64>),
        ) else {
            return;
        };
        let h = &self.health;
        let last = h.last_seq.swap(seq, Ordering::AcqRel);
        let was_trusted = h.trusted();
        // A missing heartbeat means a message may have been lost on the way: anything
        // cached may have missed its invalidation.
        if last + 1 != seq || !was_trusted {
            self.cache.clear();
            if last != 0 {
                tracing::info!(
                    "invalidation channel back after a gap; local session cache dropped"
                );
            }
        }
        h.trusted_from_ms.store(sent.max(1), Ordering::Release);
    }

    /// Publishes this replica's heartbeat every [`BEAT_EVERY`].
    async fn beat(self: Arc<Self>) {
        let mut tick = tokio::time::interval(BEAT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_trusted = false;
        loop {
            tick.tick().await;
            let seq = self.health.next_seq.fetch_add(1, Ordering::Relaxed);
            let message = format!("hb {} {seq} {}", self.health.owner, self.health.now_ms());
            let sent: Result<i64, _> = self
                .client
                .with_options(&self.options)
                .publish(self.channel.as_str(), message)
                .await;
            if let Err(e) = sent {
                tracing::debug!(error = %e, "heartbeat not published");
            }
            let trusted = self.health.trusted();
            if trusted != was_trusted {
                if trusted {
                    tracing::info!("Redis reachable; sessions are served");
                } else {
                    tracing::error!(
                        "Redis unreachable: refusing every session (503) until it answers"
                    );
                }
                was_trusted = trusted;
            }
        }
    }

    fn key(&self, public_id: &str) -> String {
        format!("{}s:{public_id}", self.prefix)
    }

    fn index(&self, kind: &str, value: &str) -> String {
        format!("{}{kind}:{value}", self.prefix)
    }

    fn unavailable(e: impl std::fmt::Display) -> StoreError {
        StoreError(format!("Redis: {e}"))
    }

    /// Just started and not yet connected: wait a moment for the first heartbeat rather
    /// than refuse, so that a Check sent to a replica that is starting (Envoy may do so
    /// before its health check says SERVING) is answered. Once connected, a lost
    /// connection fails at once.
    async fn first_connection(&self) {
        let deadline = Instant::now() + STARTUP_WAIT;
        while self.health.trusted_from_ms.load(Ordering::Acquire) == 0 && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn check_trusted(&self) -> Result<(), StoreError> {
        if self.health.trusted() {
            Ok(())
        } else {
            Err(StoreError(
                "Redis unreachable (no heartbeat within the last second)".into(),
            ))
        }
    }

    /// The record stored under `public_id`, live or not.
    async fn read(&self, public_id: &str) -> Result<Option<Session>, StoreError> {
        let json: Option<String> = self
            .client
            .with_options(&self.options)
            .get(self.key(public_id))
            .await
            .map_err(Self::unavailable)?;
        Ok(
            json.and_then(|j| match serde_json::from_str::<Session>(&j) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable session record in Redis; ignored");
                    None
                }
            }),
        )
    }

    async fn delete(&self, session: &Session) -> Result<bool, StoreError> {
        let n: i64 = self
            .client
            .with_options(&self.options)
            .eval(
                DELETE,
                vec![self.key(&session.public_id())],
                vec![self.channel.clone(), format!("i {}", session.id.encode())],
            )
            .await
            .map_err(Self::unavailable)?;
        self.cache.invalidate(&session.id);
        let public_id = session.public_id();
        for index in self.indexes_of(session) {
            // Best effort: a stale entry only costs a lookup that finds nothing.
            let _: Result<i64, _> = self
                .client
                .with_options(&self.options)
                .srem(index, public_id.as_str())
                .await;
        }
        Ok(n > 0)
    }

    /// Adds the session to its user's and its IdP session's index sets (idempotent).
    async fn add_to_indexes(&self, session: &Session) -> Result<(), StoreError> {
        let public_id = session.public_id();
        for index in self.indexes_of(session) {
            let _: i64 = self
                .client
                .with_options(&self.options)
                .eval(
                    INDEX,
                    vec![index],
                    vec![public_id.clone(), session.expires_at.to_string()],
                )
                .await
                .map_err(Self::unavailable)?;
        }
        Ok(())
    }

    fn indexes_of(&self, s: &Session) -> Vec<String> {
        let mut keys = vec![self.index("u", &s.user.subject)];
        if let Some(email) = &s.user.email {
            keys.push(self.index("e", &email.to_lowercase()));
        }
        if let Some(sid) = s.idp_sid() {
            keys.push(self.index("i", sid));
        }
        keys
    }

    async fn members(&self, index: String) -> Result<Vec<String>, StoreError> {
        self.client
            .with_options(&self.options)
            .smembers(index)
            .await
            .map_err(Self::unavailable)
    }

    /// The public ids a selector may name (to be checked against each record).
    async fn candidates(&self, selector: Selector<'_>) -> Result<Vec<String>, StoreError> {
        let mut ids = match selector {
            Selector::Session(id) => vec![id.public_id()],
            Selector::PublicId(p) => vec![p.to_string()],
            Selector::Subject(sub) => self.members(self.index("u", sub)).await?,
            Selector::User(who) => {
                let mut ids = self.members(self.index("u", who)).await?;
                ids.extend(self.members(self.index("e", &who.to_lowercase())).await?);
                ids
            }
            Selector::IdpSession { sid, .. } => self.members(self.index("i", sid)).await?,
        };
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    /// Every record key, over every node of a cluster.
    async fn all_public_ids(&self) -> Result<Vec<String>, StoreError> {
        let pattern = format!("{}s:*", self.prefix);
        let keys: Vec<_> = if self.client.is_clustered() {
            self.client
                .scan_cluster_buffered(pattern, Some(500), None)
                .collect()
                .await
        } else {
            self.client
                .scan_buffered(pattern, Some(500), None)
                .collect()
                .await
        };
        let start = self.prefix.len() + 2;
        keys.into_iter()
            .map(|k| {
                k.map_err(Self::unavailable).map(|k| {
                    k.as_str()
                        .map(|s| s[start..].to_string())
                        .unwrap_or_default()
                })
            })
            .collect()
    }

    /// How many sessions this replica holds in its cache (for tests and metrics).
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// Whether the cache is trusted now (Redis reachable and the channel proven).
    pub fn is_connected(&self) -> bool {
        self.health.trusted()
    }
}

/// TLS on ring: the system CAs, or the configured CA bundle.
fn tls_connector(ca_file: Option<&std::path::Path>) -> Result<TlsConnector, StoreError> {
    let Some(path) = ca_file else {
        return TlsConnector::default_rustls().map_err(|e| StoreError(e.to_string()));
    };
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| StoreError(e.to_string()))? {
        let cert = cert.map_err(|e| StoreError(e.to_string()))?;
        roots.add(cert).map_err(|e| StoreError(e.to_string()))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StoreError(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(TlsConnector::Rustls(Arc::new(config).into()))
}

#[async_trait]
impl SessionStore for RedisStore {
    async fn get(&self, id: &SessionId, now: u64) -> Result<Option<Arc<Session>>, StoreError> {
        if !self.health.trusted() {
            self.first_connection().await;
            self.check_trusted()?;
        }
        if let Some(hit) = self.cache.get(id, now) {
            return Ok(hit);
        }
        let generation = self.cache.generation();
        let session = self.get_fresh(id, now).await?;
        // Cached only if no invalidation arrived while Redis answered (it could have been
        // this record's) and the channel is still proven.
        if self.health.trusted() {
            self.cache.insert(id, session.clone(), generation, now);
        }
        Ok(session)
    }

    async fn get_fresh(
        &self,
        id: &SessionId,
        now: u64,
    ) -> Result<Option<Arc<Session>>, StoreError> {
        let session = self.read(&id.public_id()).await?;
        Ok(session
            .filter(|s| s.id == *id && s.expires_at > now)
            .map(Arc::new))
    }

    async fn put(&self, session: Session) -> Result<(), StoreError> {
        let json = serde_json::to_string(&session).map_err(|e| StoreError(e.to_string()))?;
        let options = &self.options;
        let _: Option<String> = self
            .client
            .with_options(options)
            .set(
                self.key(&session.public_id()),
                json,
                Some(Expiration::EXAT(session.expires_at as i64)),
                None,
                false,
            )
            .await
            .map_err(Self::unavailable)?;
        if let Err(e) = self.add_to_indexes(&session).await {
            // A session that revocation by user could not find must not exist.
            let _ = self.delete(&session).await;
            return Err(e);
        }
        Ok(())
    }

    async fn replace(&self, session: Session) -> Result<bool, StoreError> {
        let json = serde_json::to_string(&session).map_err(|e| StoreError(e.to_string()))?;
        let stored: i64 = self
            .client
            .with_options(&self.options)
            .eval(
                REPLACE,
                vec![self.key(&session.public_id())],
                vec![
                    json,
                    (session.version - 1).to_string(),
                    session.expires_at.to_string(),
                    self.channel.clone(),
                    format!("i {}", session.id.encode()),
                ],
            )
            .await
            .map_err(Self::unavailable)?;
        self.cache.invalidate(&session.id);
        if stored == 1 {
            // A refresh may have brought a new email: revocation by it must find the session.
            self.add_to_indexes(&session).await?;
        }
        Ok(stored == 1)
    }

    async fn remove(&self, id: &SessionId) -> Result<(), StoreError> {
        self.revoke(Selector::Session(*id), 0).await.map(|_| ())
    }

    async fn revoke(
        &self,
        selector: Selector<'_>,
        now: u64,
    ) -> Result<Vec<Arc<Session>>, StoreError> {
        let mut ended = Vec::new();
        for public_id in self.candidates(selector).await? {
            let Some(session) = self.read(&public_id).await? else {
                continue;
            };
            if selector.matches(&session)
                && self.delete(&session).await?
                && session.expires_at > now
            {
                ended.push(Arc::new(session));
            }
        }
        Ok(ended)
    }

    async fn list(&self, user: Option<&str>, now: u64) -> Result<Vec<Arc<Session>>, StoreError> {
        let ids = match user {
            Some(who) => self.candidates(Selector::User(who)).await?,
            None => self.all_public_ids().await?,
        };
        let mut out = Vec::new();
        for public_id in ids {
            if let Some(s) = self.read(&public_id).await?
                && s.expires_at > now
                && user.is_none_or(|u| Selector::User(u).matches(&s))
            {
                out.push(Arc::new(s));
            }
        }
        Ok(out)
    }

    async fn claim_once(&self, token_id: &str, expires_at: u64) -> Result<bool, StoreError> {
        // Hashed: the token ids of hops and logout tokens are no business of Redis's.
        let key = format!(
            "{}o:{}",
            self.prefix,
            crate::crypto::sha256_b64(token_id.as_bytes())
        );
        let set: Option<String> = self
            .client
            .with_options(&self.options)
            .set(
                key,
                "1",
                Some(Expiration::EXAT(expires_at.max(1) as i64)),
                Some(SetOptions::NX),
                false,
            )
            .await
            .map_err(Self::unavailable)?;
        Ok(set.is_some())
    }

    async fn lock(&self, name: &str, owner: &str, lease: Duration) -> Result<bool, StoreError> {
        let taken: i64 = self
            .client
            .with_options(&self.options)
            .eval(
                LOCK,
                vec![format!("{}l:{name}", self.prefix)],
                vec![owner.to_string(), lease.as_millis().max(1).to_string()],
            )
            .await
            .map_err(Self::unavailable)?;
        Ok(taken == 1)
    }

    async fn unlock(&self, name: &str, owner: &str) -> Result<(), StoreError> {
        let _: i64 = self
            .client
            .with_options(&self.options)
            .eval(
                UNLOCK,
                vec![format!("{}l:{name}", self.prefix)],
                vec![owner.to_string()],
            )
            .await
            .map_err(Self::unavailable)?;
        Ok(())
    }

    async fn sweep(&self, now: u64) {
        // Redis expires records itself; only the local cache needs sweeping.
        self.cache.sweep(now);
    }

    fn is_ready(&self) -> bool {
        self.health.trusted()
    }
}
