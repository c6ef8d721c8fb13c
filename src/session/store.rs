//! Where sessions live: the [`SessionStore`] contract, and [`MemoryStore`], the embedded
//! default. A restart of a process with the memory store signs everyone out; the Redis
//! store (`super::redis`) keeps sessions across restarts and shares them between replicas.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::core::{Session, SessionId};

/// The store cannot answer (Redis down, unreachable or failing over). Every edge turns it
/// into a 503: without the store, no session can be trusted.
#[derive(Debug, thiserror::Error)]
#[error("session store unavailable: {0}")]
pub struct StoreError(pub String);

/// Which sessions a revocation ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selector<'a> {
    /// One session.
    Session(SessionId),
    /// One session, by its public id (what the admin API and the user page show).
    PublicId(&'a str),
    /// Every session of a user, named by the IdP's subject or by email (any letter case).
    User(&'a str),
    /// Every session of the IdP's subject (a back-channel logout's `sub` alone).
    Subject(&'a str),
    /// The sessions of one IdP session (a back-channel logout's `sid`), and when `sub` is
    /// given, only if they are that user's.
    IdpSession { sid: &'a str, sub: Option<&'a str> },
}

impl Selector<'_> {
    /// Whether `session` is one this selector names.
    pub fn matches(&self, session: &Session) -> bool {
        match *self {
            Selector::Session(id) => session.id == id,
            Selector::PublicId(p) => session.public_id() == p,
            Selector::User(who) => {
                session.user.subject == who
                    || session
                        .user
                        .email
                        .as_deref()
                        .is_some_and(|e| e.eq_ignore_ascii_case(who))
            }
            Selector::Subject(sub) => session.user.subject == sub,
            Selector::IdpSession { sid, sub } => {
                session.idp_sid() == Some(sid) && sub.is_none_or(|s| session.user.subject == s)
            }
        }
    }
}

#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// The live session `id`, if any (expired sessions are not returned). May answer from
    /// a local cache that the store keeps coherent.
    async fn get(&self, id: &SessionId, now: u64) -> Result<Option<Arc<Session>>, StoreError>;
    /// The session as the shared store holds it right now, past any local cache: what a
    /// refresh decides on under its lock.
    async fn get_fresh(
        &self,
        id: &SessionId,
        now: u64,
    ) -> Result<Option<Arc<Session>>, StoreError> {
        self.get(id, now).await
    }
    /// Stores a new session.
    async fn put(&self, session: Session) -> Result<(), StoreError>;
    /// Stores a changed session whose `version` is one more than the stored one's; false
    /// (and nothing stored) when the stored record is another version or gone.
    async fn replace(&self, session: Session) -> Result<bool, StoreError>;
    async fn remove(&self, id: &SessionId) -> Result<(), StoreError>;
    /// Ends every live session `selector` names, on every replica, and returns them.
    async fn revoke(
        &self,
        selector: Selector<'_>,
        now: u64,
    ) -> Result<Vec<Arc<Session>>, StoreError>;
    /// Live sessions, of one user (subject or email) or of everyone.
    async fn list(&self, user: Option<&str>, now: u64) -> Result<Vec<Arc<Session>>, StoreError>;
    /// Marks a single-use token as spent. True the first time, false on any replay.
    async fn claim_once(&self, token_id: &str, expires_at: u64) -> Result<bool, StoreError>;
    /// Takes the lock `name` for `owner` for `lease`, or extends it if `owner` holds it
    /// already. False when someone else holds it.
    async fn lock(&self, name: &str, owner: &str, lease: Duration) -> Result<bool, StoreError>;
    /// Releases the lock if `owner` holds it.
    async fn unlock(&self, name: &str, owner: &str) -> Result<(), StoreError>;
    /// Drops expired entries; called periodically.
    async fn sweep(&self, now: u64);
    /// How many sessions are stored, when the store can tell cheaply (for metrics).
    fn count(&self) -> Option<usize> {
        None
    }
    /// Whether the store can answer now (a remote one: connected and coherent).
    fn is_ready(&self) -> bool {
        true
    }
}

/// The one thing a decision needs from a store: the live session behind an id. Small, so
/// that the authorizer can be tested against a fake, and generic, so that the hot path is
/// statically dispatched when the store's type is known.
#[async_trait]
pub trait SessionLookup: Send + Sync + 'static {
    async fn session(&self, id: &SessionId, now: u64) -> Result<Option<Arc<Session>>, StoreError>;
}

#[async_trait]
impl<S: SessionStore + ?Sized> SessionLookup for Arc<S> {
    async fn session(&self, id: &SessionId, now: u64) -> Result<Option<Arc<Session>>, StoreError> {
        self.get(id, now).await
    }
}

/// Sessions in process memory: lost on restart, not shared between instances.
#[derive(Default)]
pub struct MemoryStore {
    sessions: RwLock<HashMap<SessionId, Arc<Session>>>,
    spent: RwLock<HashMap<String, u64>>,
    locks: std::sync::Mutex<HashMap<String, (String, Instant)>>,
}

impl MemoryStore {
    pub fn len(&self) -> usize {
        self.sessions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn get(&self, id: &SessionId, now: u64) -> Result<Option<Arc<Session>>, StoreError> {
        let sessions = self.sessions.read().unwrap_or_else(|e| e.into_inner());
        Ok(sessions.get(id).filter(|s| s.expires_at > now).cloned())
    }

    async fn put(&self, session: Session) -> Result<(), StoreError> {
        let mut sessions = self.sessions.write().unwrap_or_else(|e| e.into_inner());
        sessions.insert(session.id, Arc::new(session));
        Ok(())
    }

    async fn replace(&self, session: Session) -> Result<bool, StoreError> {
        let mut sessions = self.sessions.write().unwrap_or_else(|e| e.into_inner());
        match sessions.get_mut(&session.id) {
            Some(stored) if stored.version + 1 == session.version => {
                *stored = Arc::new(session);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn remove(&self, id: &SessionId) -> Result<(), StoreError> {
        let mut sessions = self.sessions.write().unwrap_or_else(|e| e.into_inner());
        sessions.remove(id);
        Ok(())
    }

    async fn revoke(
        &self,
        selector: Selector<'_>,
        now: u64,
    ) -> Result<Vec<Arc<Session>>, StoreError> {
        let mut sessions = self.sessions.write().unwrap_or_else(|e| e.into_inner());
        // A scan: revocations are rare, and an index would cost every session memory.
        let ended: Vec<Arc<Session>> = match selector {
            Selector::Session(id) => sessions.remove(&id).into_iter().collect(),
            _ => {
                let ids: Vec<SessionId> = sessions
                    .values()
                    .filter(|s| selector.matches(s))
                    .map(|s| s.id)
                    .collect();
                ids.iter().filter_map(|id| sessions.remove(id)).collect()
            }
        };
        Ok(ended.into_iter().filter(|s| s.expires_at > now).collect())
    }

    async fn list(&self, user: Option<&str>, now: u64) -> Result<Vec<Arc<Session>>, StoreError> {
        let sessions = self.sessions.read().unwrap_or_else(|e| e.into_inner());
        Ok(sessions
            .values()
            .filter(|s| s.expires_at > now)
            .filter(|s| user.is_none_or(|u| Selector::User(u).matches(s)))
            .cloned()
            .collect())
    }

    async fn claim_once(&self, token_id: &str, expires_at: u64) -> Result<bool, StoreError> {
        let mut spent = self.spent.write().unwrap_or_else(|e| e.into_inner());
        Ok(spent.insert(token_id.to_string(), expires_at).is_none())
    }

    async fn lock(&self, name: &str, owner: &str, lease: Duration) -> Result<bool, StoreError> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match locks.get(name) {
            Some((holder, until)) if holder != owner && *until > now => Ok(false),
            _ => {
                locks.insert(name.to_string(), (owner.to_string(), now + lease));
                Ok(true)
            }
        }
    }

    async fn unlock(&self, name: &str, owner: &str) -> Result<(), StoreError> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        if locks.get(name).is_some_and(|(holder, _)| holder == owner) {
            locks.remove(name);
        }
        Ok(())
    }

    async fn sweep(&self, now: u64) {
        self.sessions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, s| s.expires_at > now);
        self.spent
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, exp| *exp > now);
        let instant = Instant::now();
        self.locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, (_, until)| *until > instant);
    }

    fn count(&self) -> Option<usize> {
        Some(self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_memory_store_keeps_the_contract() {
        super::super::conformance::run(&MemoryStore::default()).await;
    }

    #[tokio::test]
    async fn sweep_drops_expired_sessions_spent_tokens_and_locks() {
        let store = MemoryStore::default();
        let s = super::super::conformance::session("s", Some("s@example.com"), 100, 10);
        store.put(s).await.unwrap();
        store.claim_once("hop", 105).await.unwrap();
        store
            .lock("l", "me", Duration::from_millis(1))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        store.sweep(111).await;
        assert!(store.is_empty());
        assert!(store.spent.read().unwrap().is_empty());
        assert!(store.locks.lock().unwrap().is_empty());
    }
}
