//! Where sessions live. The in-memory store is the default; the trait keeps room for a
//! shared store (Redis) so several portcullis instances can serve one deployment.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;

use crate::core::{Session, SessionId};

#[derive(Debug, thiserror::Error)]
#[error("session store unavailable: {0}")]
pub struct StoreError(pub String);

#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// The live session `id`, if any (expired sessions are not returned).
    async fn get(&self, id: &SessionId, now: u64) -> Result<Option<Arc<Session>>, StoreError>;
    async fn put(&self, session: Session) -> Result<(), StoreError>;
    async fn remove(&self, id: &SessionId) -> Result<(), StoreError>;
    /// Marks a single-use token as spent. True the first time, false on any replay.
    async fn claim_once(&self, token_id: &str, expires_at: u64) -> Result<bool, StoreError>;
    /// Drops expired entries; called periodically.
    async fn sweep(&self, now: u64);
    /// How many sessions are stored, when the store can tell cheaply (for metrics).
    fn count(&self) -> Option<usize> {
        None
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

    async fn remove(&self, id: &SessionId) -> Result<(), StoreError> {
        let mut sessions = self.sessions.write().unwrap_or_else(|e| e.into_inner());
        sessions.remove(id);
        Ok(())
    }

    async fn claim_once(&self, token_id: &str, expires_at: u64) -> Result<bool, StoreError> {
        let mut spent = self.spent.write().unwrap_or_else(|e| e.into_inner());
        Ok(spent.insert(token_id.to_string(), expires_at).is_none())
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
    }

    fn count(&self) -> Option<usize> {
        Some(self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::User;

    fn session(now: u64, life: u64) -> Session {
        let user = User {
            subject: "s".into(),
            email: None,
            email_verified: false,
            name: None,
            preferred_username: None,
            groups: vec![],
            claims: Vec::new(),
        };
        Session::new(user, now, life)
    }

    #[tokio::test]
    async fn expiry_removal_and_single_use() {
        let store = MemoryStore::default();
        let s = session(100, 10);
        let id = s.id;
        store.put(s).await.unwrap();
        assert!(store.get(&id, 105).await.unwrap().is_some());
        assert!(store.get(&id, 110).await.unwrap().is_none());
        store.sweep(111).await;
        assert!(store.is_empty());
        let s = session(100, 10);
        let id = s.id;
        store.put(s).await.unwrap();
        store.remove(&id).await.unwrap();
        assert!(store.get(&id, 101).await.unwrap().is_none());
        assert!(store.claim_once("hop1", 200).await.unwrap());
        assert!(!store.claim_once("hop1", 200).await.unwrap());
    }
}
