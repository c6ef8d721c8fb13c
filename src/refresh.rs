//! Refreshing the IdP's tokens, on the request path, without ever spending a rotating
//! refresh token twice (oauth2-proxy #1006, #1992) and without a lock that lapses under a
//! slow IdP (oauth2-proxy #1580, #3456).
//!
//! [`Sessions`] is the authorizer's [`SessionLookup`]: the store's session, and when its
//! access token is close to expiry, a refresh. The hot path pays two integer comparisons
//! ([`Session::freshness`]); refreshing runs only for sessions in use, when they need it:
//!
//! * with a quarter of the token's life left (at most a minute), a request starts a
//!   refresh in a task of its own and goes on with the session as it is;
//! * once the token has expired, a request waits for the refresh (at most
//!   [`WAIT_IN_REQUEST`]), so that a refresh the IdP refuses is the end of the session for
//!   that very request.
//!
//! One refresh per session at a time: on this replica, a map of refreshes in flight; across
//! replicas, a lock in the store whose lease is renewed while the IdP answers. The holder
//! re-reads the record past any cache before it spends the token (a refresh another
//! replica just finished leaves nothing to do), and writes the result with a version
//! compare-and-set. A replica that finds the lock held re-reads the record until its
//! version moves, and never spends the token. The refresh runs in a spawned task, so an
//! Envoy timeout that drops the `Check` cannot cut it off between spending the old token
//! and storing the new one.
//!
//! A refusal by the IdP (`invalid_grant`, a refreshed identity about someone else) ends the
//! session. An IdP that cannot be reached does not: the session goes on as it is and the
//! refresh is retried after [`RETRY_AFTER_SECS`], so an IdP outage signs nobody out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::core::session::refresh_time;
use crate::core::{Freshness, IdpGrant, Session, SessionId};
use crate::oidc::{IdentityProvider, IdpTokens, OidcError};
use crate::secret::SecretString;
use crate::session::{GrantSealer, Selector, SessionLookup, SessionStore, StoreError};

/// The refresh lock's lease; renewed every third of it while the IdP answers.
pub const LEASE: Duration = Duration::from_secs(6);
/// How long a request whose access token has expired waits for the refresh: well within
/// the generated Envoy config's 1 s ext_authz timeout, which would otherwise answer 503.
pub const WAIT_IN_REQUEST: Duration = Duration::from_millis(400);
/// How long a replica waits for another replica's refresh before trying the lock again.
const WAIT_FOR_OTHER: Duration = Duration::from_secs(15);
/// How often a replica waiting for another's refresh re-reads the record.
const POLL: Duration = Duration::from_millis(50);
/// After an IdP that could not be reached, no new attempt before this many seconds.
pub const RETRY_AFTER_SECS: u64 = 10;

use crate::metrics::RefreshCounters;

/// What a finished refresh left: the session as stored now (`None`: it ended), or the
/// store's failure as text (a `watch` value must be `Clone`).
type Done = Result<Option<Arc<Session>>, String>;

/// The sessions as the authorizer sees them: the store's, refreshed when due.
#[derive(Clone)]
pub struct Sessions {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn SessionStore>,
    idp: Arc<dyn IdentityProvider>,
    sealer: Arc<GrantSealer>,
    /// This process's name on the locks it holds.
    owner: String,
    in_flight: Mutex<HashMap<SessionId, watch::Receiver<Option<Done>>>>,
    /// Sessions whose last attempt could not reach the IdP: no new attempt before then.
    retry_at: Mutex<HashMap<SessionId, u64>>,
    counters: RefreshCounters,
}

impl Sessions {
    pub fn new(
        store: Arc<dyn SessionStore>,
        idp: Arc<dyn IdentityProvider>,
        sealer: Arc<GrantSealer>,
        counters: RefreshCounters,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                idp,
                sealer,
                owner: crate::crypto::random_token(12),
                in_flight: Mutex::default(),
                retry_at: Mutex::default(),
                counters,
            }),
        }
    }

    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.inner.store
    }

    /// What the IdP's answer at sign-in (or at a refresh) keeps in session `id`: the IdP's
    /// session id, the sealed refresh token (or `keep`, the one before, when the IdP did
    /// not rotate it), when to refresh. `None` when there is nothing to keep.
    pub fn grant(
        &self,
        id: &SessionId,
        tokens: &IdpTokens,
        sid: Option<&str>,
        userinfo: bool,
        keep: Option<&IdpGrant>,
        now: u64,
    ) -> Option<Box<IdpGrant>> {
        let refresh_token = match &tokens.refresh_token {
            Some(t) => Some(self.inner.sealer.seal(id, t)),
            None => keep.and_then(|g| g.refresh_token.clone()),
        };
        let expires_in = tokens.expires_in.map(|d| d.as_secs().max(1));
        let (access_expires_at, refresh_at) = match (expires_in, &refresh_token) {
            (Some(secs), Some(_)) => (now + secs, refresh_time(now, secs)),
            (Some(secs), None) => (now + secs, 0),
            (None, _) => (0, 0),
        };
        let sid = sid
            .map(Into::into)
            .or_else(|| keep.and_then(|g| g.sid.clone()));
        let grant = IdpGrant {
            sid,
            refresh_token,
            access_expires_at,
            refresh_at,
            userinfo,
        };
        (grant != IdpGrant::default()).then(|| Box::new(grant))
    }

    fn retry_pending(&self, id: &SessionId, now: u64) -> bool {
        let mut retry = self
            .inner
            .retry_at
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match retry.get(id) {
            Some(at) if *at > now => true,
            Some(_) => {
                retry.remove(id);
                false
            }
            None => false,
        }
    }

    /// Starts the refresh of `seen` unless one is in flight on this replica; either way,
    /// where its result will appear.
    fn start(&self, seen: Arc<Session>, now: u64) -> watch::Receiver<Option<Done>> {
        let mut in_flight = self
            .inner
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(rx) = in_flight.get(&seen.id) {
            return rx.clone();
        }
        let (tx, rx) = watch::channel(None);
        in_flight.insert(seen.id, rx.clone());
        let this = self.clone();
        tokio::spawn(async move {
            let id = seen.id;
            let done = this.run(seen, now).await.map_err(|e| e.0);
            this.inner
                .in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            let _ = tx.send(Some(done));
        });
        rx
    }

    /// One refresh, across replicas: take the lock, or wait for whoever has it.
    async fn run(&self, seen: Arc<Session>, now: u64) -> Result<Option<Arc<Session>>, StoreError> {
        let store = &self.inner.store;
        let lock = format!("refresh:{}", seen.id.public_id());
        let deadline = tokio::time::Instant::now() + WAIT_FOR_OTHER;
        loop {
            // Free, or free again because a holder that died let its lease lapse.
            if store.lock(&lock, &self.inner.owner, LEASE).await? {
                let result = self.refresh_locked(&seen.id, &lock, now).await;
                if let Err(e) = store.unlock(&lock, &self.inner.owner).await {
                    // The lease lapses by itself.
                    tracing::warn!(error = %e, "could not release a refresh lock");
                }
                return result;
            }
            if tokio::time::Instant::now() >= deadline {
                return store.get_fresh(&seen.id, now).await;
            }
            // Another replica is spending the token: wait for its result, never spend it.
            tokio::time::sleep(POLL).await;
            match store.get_fresh(&seen.id, now).await? {
                None => return Ok(None),
                Some(s) if s.version != seen.version => return Ok(Some(s)),
                Some(_) => {}
            }
        }
    }

    /// The refresh itself, under the lock.
    async fn refresh_locked(
        &self,
        id: &SessionId,
        lock: &str,
        now: u64,
    ) -> Result<Option<Arc<Session>>, StoreError> {
        let store = &self.inner.store;
        // Past any cache: another replica may have refreshed a moment ago.
        let Some(current) = store.get_fresh(id, now).await? else {
            return Ok(None);
        };
        if current.freshness(now) == Freshness::Fresh {
            return Ok(Some(current));
        }
        let Some(grant) = current.idp.as_deref() else {
            return Ok(Some(current));
        };
        let Some(token) = grant
            .refresh_token
            .as_ref()
            .and_then(|t| self.inner.sealer.open(id, t))
        else {
            // Sealed under another cookie secret: nothing can refresh it any more.
            tracing::warn!(
                session = current.public_id(),
                "the refresh token does not open (cookie.secret_file changed?); ending the session"
            );
            store.revoke(Selector::Session(*id), now).await?;
            return Ok(None);
        };
        let renewal = self.renew_while_refreshing(lock.to_string());
        let asked = std::time::Instant::now();
        let answer = self
            .inner
            .idp
            .refresh(&token, &current.user.subject, grant.userinfo)
            .await;
        renewal.abort();
        self.inner
            .counters
            .idp
            .observe(asked.elapsed(), answer.as_ref().err().map(OidcError::kind));
        match answer {
            Ok(refreshed) => {
                let mut next = (*current).clone();
                next.version = current.version + 1;
                if let Some(user) = refreshed.user {
                    next.user = user;
                }
                next.idp = self.grant(
                    id,
                    &refreshed.tokens,
                    None,
                    grant.userinfo,
                    Some(grant),
                    now,
                );
                self.inner.counters.refreshed.inc();
                if store.replace(next.clone()).await? {
                    tracing::debug!(session = next.public_id(), "tokens refreshed");
                    Ok(Some(Arc::new(next)))
                } else {
                    // Revoked meanwhile (or changed by a writer without the lock).
                    store.get_fresh(id, now).await
                }
            }
            Err(e) if is_refusal(&e) => {
                self.inner.counters.refused.inc();
                tracing::info!(
                    user = current.user.display(),
                    session = current.public_id(),
                    error = %e,
                    "the IdP refused the refresh; session ended"
                );
                store.revoke(Selector::Session(*id), now).await?;
                Ok(None)
            }
            Err(e) => {
                self.inner.counters.failed.inc();
                tracing::warn!(
                    session = current.public_id(),
                    error = %e,
                    retry_in_secs = RETRY_AFTER_SECS,
                    "refresh failed; the session goes on as it is"
                );
                self.inner
                    .retry_at
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(*id, now + RETRY_AFTER_SECS);
                Ok(Some(current))
            }
        }
    }

    /// Keeps the lock while the IdP takes its time: a lease that lapsed mid-refresh would
    /// let another replica spend the same token.
    fn renew_while_refreshing(&self, lock: String) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(LEASE / 3);
            tick.tick().await;
            loop {
                tick.tick().await;
                match this.inner.store.lock(&lock, &this.inner.owner, LEASE).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::error!("lost the refresh lock while refreshing");
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e, "could not renew the refresh lock"),
                }
            }
        })
    }

    /// The refresh token of a session, opened (for tests and diagnostics in process).
    pub fn refresh_token(&self, session: &Session) -> Option<SecretString> {
        let sealed = session.idp.as_ref()?.refresh_token.as_ref()?;
        self.inner.sealer.open(&session.id, sealed)
    }
}

/// Whether the IdP said no (the session ends), as opposed to not answering (it goes on).
fn is_refusal(e: &OidcError) -> bool {
    matches!(
        e,
        OidcError::InvalidGrant(_) | OidcError::IdToken(_) | OidcError::SubjectMismatch { .. }
    )
}

#[async_trait]
impl SessionLookup for Sessions {
    async fn session(&self, id: &SessionId, now: u64) -> Result<Option<Arc<Session>>, StoreError> {
        let Some(session) = self.inner.store.get(id, now).await? else {
            return Ok(None);
        };
        match session.freshness(now) {
            Freshness::Fresh => Ok(Some(session)),
            _ if self.retry_pending(id, now) => Ok(Some(session)),
            Freshness::RefreshSoon => {
                self.start(session.clone(), now);
                Ok(Some(session))
            }
            Freshness::Expired => {
                let mut rx = self.start(session.clone(), now);
                match tokio::time::timeout(WAIT_IN_REQUEST, rx.wait_for(Option::is_some)).await {
                    Ok(Ok(done)) => match done.as_ref() {
                        Some(Ok(s)) => Ok(s.clone()),
                        Some(Err(e)) => Err(StoreError(e.clone())),
                        None => Ok(Some(session)),
                    },
                    // Still refreshing: the IdP is slow. The session was valid a moment ago
                    // and nothing has refused it; the refresh goes on without this request.
                    _ => Ok(Some(session)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
