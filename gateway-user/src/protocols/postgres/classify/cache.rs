//! A bounded cache of classifications by exact statement text, shared by all sessions.
//!
//! CI jobs repeat the same statements (ORM queries with bind parameters,
//! migrations' bookkeeping), so most lookups hit. The map is split into
//! shards, each behind its own mutex, so sessions on different worker
//! threads rarely wait for each other; each shard evicts with the CLOCK
//! (second chance) policy: an entry read since the hand last passed survives
//! one more round, which keeps hot statements without LRU's bookkeeping on
//! every hit. Simple-protocol DML that differs only in integer literals
//! shares one entry, keyed by its shape (`shape.rs`).

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};

use super::class::Classification;
use super::classify;
use super::error::ClassifyError;
use super::shape::shape;

/// Texts longer than this are classified but not cached, so that `capacity`
/// also bounds memory: bulk INSERTs are long and rarely repeat.
pub const MAX_CACHED_LEN: usize = 16 * 1024;

/// Table references and statements a cached classification may hold. A
/// 16 KiB `SELECT 1 FROM a, b, c, …` classifies into thousands of table
/// references, each larger than its name in the text: cached 10,000 times
/// over, such texts would hold gigabytes the cache shares with every job.
/// Past these they are classified each time, like longer texts.
const MAX_CACHED_TABLES: usize = 256;
const MAX_CACHED_STATEMENTS: usize = 64;

fn is_light(c: &Classification) -> bool {
    c.statements.len() <= MAX_CACHED_STATEMENTS
        && c.statements.iter().map(|s| s.tables.len()).sum::<usize>() <= MAX_CACHED_TABLES
}

/// At most this many shards, and at least this many entries per shard (a
/// tiny shard would evict hot entries by hash collision alone).
const MAX_SHARDS: usize = 16;
const MIN_PER_SHARD: usize = 64;

type Entry = Result<Arc<Classification>, ClassifyError>;

/// A `Send + Sync` cache in front of [`classify`]: at most `capacity`
/// entries, errors included (an unparsable text is as likely to repeat).
///
/// ```
/// use chokepoint::protocols::postgres::classify::ClassifierCache;
/// use std::sync::Arc;
///
/// let cache = ClassifierCache::new(10_000);
/// let a = cache.classify("SELECT * FROM t WHERE id = $1").unwrap();
/// let b = cache.classify("SELECT * FROM t WHERE id = $1").unwrap();
/// assert!(Arc::ptr_eq(&a, &b));
/// ```
pub struct ClassifierCache {
    shards: Vec<Mutex<Shard>>,
}

struct Shard {
    capacity: usize,
    map: HashMap<Box<str>, Slot>,
    /// Keys in CLOCK order; the front is the hand.
    clock: VecDeque<Box<str>>,
}

struct Slot {
    entry: Entry,
    /// Read since the hand last passed.
    referenced: bool,
}

impl ClassifierCache {
    /// A cache holding at most `capacity` classifications; 0 disables caching.
    pub fn new(capacity: usize) -> Self {
        let shards = (capacity / MIN_PER_SHARD).clamp(1, MAX_SHARDS);
        // Each shard gets an equal share, so the total never exceeds `capacity`.
        let per_shard = capacity / shards;
        ClassifierCache {
            shards: (0..shards)
                .map(|_| {
                    Mutex::new(Shard {
                        capacity: per_shard,
                        map: HashMap::with_capacity(per_shard.min(1024)),
                        clock: VecDeque::with_capacity(per_shard.min(1024)),
                    })
                })
                .collect(),
        }
    }

    /// The classification of `sql`, from the cache or computed (and cached).
    /// The same text returns the same `Arc` while it stays cached.
    pub fn classify(&self, sql: &str) -> Result<Arc<Classification>, ClassifyError> {
        if sql.len() > MAX_CACHED_LEN {
            return classify(sql).map(Arc::new);
        }
        // Statements that differ only in integer literals share their
        // shape's entry (see shape.rs); every other text has its own.
        let shape = shape(sql);
        let key = shape.as_deref().unwrap_or(sql);
        let shard = &self.shards[self.shard_of(key)];
        if let Some(entry) = lock(shard).get(key) {
            return entry;
        }
        // Classify outside the lock: parsing is the slow part, and two
        // sessions racing on the same new text just compute it twice.
        let entry = classify(sql).map(Arc::new);
        // An error message quotes its own text: only successes are shared.
        let shareable = shape.is_none() || entry.is_ok();
        if shareable && entry.as_ref().map_or(true, |c| is_light(c)) {
            lock(shard).insert(key, entry.clone());
        }
        entry
    }

    /// How many classifications are cached.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).map.len()).sum()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard_of(&self, sql: &str) -> usize {
        let mut hasher = DefaultHasher::new();
        sql.hash(&mut hasher);
        (hasher.finish() % self.shards.len() as u64) as usize
    }
}

/// A poisoned shard only means a panic elsewhere mid-update; the map itself
/// stays consistent (every update is a single insert/remove), so keep using it.
fn lock(shard: &Mutex<Shard>) -> std::sync::MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shard {
    fn get(&mut self, sql: &str) -> Option<Entry> {
        let slot = self.map.get_mut(sql)?;
        slot.referenced = true;
        Some(slot.entry.clone())
    }

    fn insert(&mut self, sql: &str, entry: Entry) {
        if self.capacity == 0 {
            return;
        }
        if let Some(slot) = self.map.get_mut(sql) {
            // Another session got here first; keep its entry so that callers share one Arc.
            slot.referenced = true;
            return;
        }
        while self.map.len() >= self.capacity {
            self.evict_one();
        }
        let key: Box<str> = sql.into();
        self.clock.push_back(key.clone());
        self.map.insert(
            key,
            Slot {
                entry,
                referenced: false,
            },
        );
    }

    /// Advances the hand: referenced entries get a second chance, the first unreferenced one goes.
    fn evict_one(&mut self) {
        while let Some(key) = self.clock.pop_front() {
            match self.map.get_mut(&key) {
                Some(slot) if slot.referenced => {
                    slot.referenced = false;
                    self.clock.push_back(key);
                }
                Some(_) => {
                    self.map.remove(&key);
                    return;
                }
                // Not expected (keys leave the map only here), but never loop on it.
                None => {}
            }
        }
    }
}
