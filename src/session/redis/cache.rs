//! A replica's local copy of the sessions it has looked up, kept coherent by the
//! invalidations Redis publishes. Unknown ids are remembered too (session ids are random
//! and never reused, so "no such session" cannot become wrong), so that a stale cookie
//! does not cost a Redis round trip per request either.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::core::{Session, SessionId};

/// How long an unknown id is remembered, in seconds.
const NEGATIVE_TTL_SECS: u64 = 300;

#[derive(Default)]
pub struct Cache {
    entries: RwLock<HashMap<SessionId, Entry>>,
    /// Moves on every invalidation: a lookup that raced one does not cache its answer.
    generation: AtomicU64,
}

enum Entry {
    Live(Arc<Session>),
    /// No such session; remembered until then.
    Gone(u64),
}

impl Cache {
    /// `Some(answer)` on a hit (`Some(None)`: known to be no session).
    pub fn get(&self, id: &SessionId, now: u64) -> Option<Option<Arc<Session>>> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        match entries.get(id)? {
            Entry::Live(s) if s.expires_at > now => Some(Some(s.clone())),
            Entry::Live(_) => Some(None),
            Entry::Gone(until) if *until > now => Some(None),
            Entry::Gone(_) => None,
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Caches what Redis answered for `id`, unless an invalidation arrived since
    /// `generation` was read.
    pub fn insert(&self, id: &SessionId, session: Option<Arc<Session>>, generation: u64, now: u64) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        // Checked under the write lock, which every invalidation also takes.
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        let entry = match session {
            Some(s) => Entry::Live(s),
            None => Entry::Gone(now + NEGATIVE_TTL_SECS),
        };
        entries.insert(*id, entry);
    }

    pub fn invalidate(&self, id: &SessionId) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.remove(id);
    }

    pub fn clear(&self) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.clear();
    }

    pub fn sweep(&self, now: u64) {
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, e| match e {
                Entry::Live(s) => s.expires_at > now,
                Entry::Gone(until) => *until > now,
            });
    }

    pub fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::conformance::session;

    #[test]
    fn an_answer_that_raced_an_invalidation_is_not_cached() {
        let cache = Cache::default();
        let s = Arc::new(session("a", None, 100, 60));
        let g = cache.generation();
        cache.invalidate(&s.id);
        cache.insert(&s.id, Some(s.clone()), g, 100);
        assert!(cache.get(&s.id, 100).is_none(), "raced: not cached");
        cache.insert(&s.id, Some(s.clone()), cache.generation(), 100);
        assert!(matches!(cache.get(&s.id, 100), Some(Some(_))));
        assert!(matches!(cache.get(&s.id, 160), Some(None)), "expired");
        cache.invalidate(&s.id);
        assert!(cache.get(&s.id, 100).is_none());
        let unknown = SessionId::random();
        cache.insert(&unknown, None, cache.generation(), 100);
        assert!(matches!(cache.get(&unknown, 100), Some(None)));
        assert!(cache.get(&unknown, 100 + NEGATIVE_TTL_SECS).is_none());
        cache.clear();
        assert_eq!(cache.len(), 0);
    }
}
