//! The validated-token cache (`PGRPC_JWT_CACHE_MAX_ENTRIES`), as
//! PostgREST's `jwt-cache-max-entries`: a token seen again skips signature
//! verification and claim parsing, which for RSA costs more than the rest
//! of a small request.
//!
//! Only tokens that passed every check are stored, and an entry is dropped
//! once its `exp` (plus leeway) is past, so the cache never answers for a
//! token that verification would now refuse: `nbf` and `iat` only become
//! more valid with time, and the audience is fixed at startup. The role is
//! not judged here, since which roles may be assumed changes on reload.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;

/// What a token was verified to say.
#[derive(Debug)]
pub struct Verified {
    /// The role it asks for (the anon role when it names none).
    pub role: String,
    /// The claims as JSON text, for `request.jwt.claims`.
    pub claims: String,
}

struct Entry {
    verified: Arc<Verified>,
    /// The last Unix second the token is valid; `None` without `exp`.
    valid_until: Option<i64>,
}

/// Bounded, least recently used first out; `None` when disabled.
pub struct TokenCache(Option<Mutex<LruCache<String, Entry>>>);

impl TokenCache {
    pub fn new(max_entries: usize) -> TokenCache {
        TokenCache(NonZeroUsize::new(max_entries).map(|n| Mutex::new(LruCache::new(n))))
    }

    /// The token's verification, if remembered and still valid at `now`.
    pub fn get(&self, token: &str, now: i64) -> Option<Arc<Verified>> {
        let mut entries = self.0.as_ref()?.lock().unwrap_or_else(|p| p.into_inner());
        let entry = entries.get(token)?;
        if entry.valid_until.is_some_and(|until| now > until) {
            entries.pop(token);
            return None;
        }
        Some(entry.verified.clone())
    }

    /// Remembers a token that passed every check.
    pub fn insert(&self, token: &str, verified: Arc<Verified>, valid_until: Option<i64>) {
        if let Some(entries) = &self.0 {
            let mut entries = entries.lock().unwrap_or_else(|p| p.into_inner());
            entries.put(
                token.to_string(),
                Entry {
                    verified,
                    valid_until,
                },
            );
        }
    }

    /// Forgets every token: the keys that verified them changed.
    pub fn clear(&self) {
        if let Some(entries) = &self.0 {
            entries.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }

    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |entries| {
            entries.lock().unwrap_or_else(|p| p.into_inner()).len()
        })
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verified(role: &str) -> Arc<Verified> {
        Arc::new(Verified {
            role: role.into(),
            claims: "{}".into(),
        })
    }

    // An entry is served up to its deadline and dropped after it.
    #[test]
    fn entries_do_not_outlive_their_deadline() {
        let cache = TokenCache::new(10);
        cache.insert("t", verified("a"), Some(100));
        assert!(cache.get("t", 100).is_some());
        assert!(cache.get("t", 101).is_none());
        assert!(cache.is_empty(), "the expired entry is removed");
        cache.insert("forever", verified("a"), None);
        assert!(cache.get("forever", i64::MAX).is_some());
    }

    // The cache holds at most its bound, evicting the least recently used.
    #[test]
    fn the_bound_holds_and_evicts_the_least_recently_used() {
        let cache = TokenCache::new(2);
        cache.insert("a", verified("a"), None);
        cache.insert("b", verified("b"), None);
        assert!(cache.get("a", 0).is_some());
        cache.insert("c", verified("c"), None);
        assert_eq!(cache.len(), 2);
        assert!(cache.get("b", 0).is_none(), "b was least recently used");
        assert!(cache.get("a", 0).is_some());
        assert!(cache.get("c", 0).is_some());
    }

    // A bound of 0 disables caching altogether.
    #[test]
    fn zero_disables_the_cache() {
        let cache = TokenCache::new(0);
        cache.insert("a", verified("a"), None);
        assert!(cache.get("a", 0).is_none());
        assert_eq!(cache.len(), 0);
    }
}
