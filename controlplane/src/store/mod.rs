//! Storage in etcd's model: a flat, ordered keyspace where every write gets the next cluster-wide
//! revision, reads can be made at a past revision, updates are compare-and-swap on a key's
//! modification revision, and watches replay history from a revision before going live.
//!
//! The API server only ever talks to `dyn Store`, so the embedded SQLite backend and an etcd
//! backend are interchangeable.

pub mod sqlite;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

/// One stored value with its revisions (etcd's `mvccpb.KeyValue`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Bytes,
    /// Revision of the write that created this key (since its last deletion).
    pub create_revision: i64,
    /// Revision of the write that produced this value.
    pub mod_revision: i64,
}

/// A change seen by a watcher, in revision order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A key was created or updated; `kv.mod_revision` is the event's revision.
    Put {
        kv: KeyValue,
        prev: Option<KeyValue>,
    },
    /// A key was deleted at `revision`; `prev` is the last value it had.
    Delete { prev: KeyValue, revision: i64 },
}

impl Event {
    pub fn revision(&self) -> i64 {
        match self {
            Event::Put { kv, .. } => kv.mod_revision,
            Event::Delete { revision, .. } => *revision,
        }
    }

    pub fn key(&self) -> &str {
        match self {
            Event::Put { kv, .. } => &kv.key,
            Event::Delete { prev, .. } => &prev.key,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key {0} already exists")]
    AlreadyExists(String),
    #[error("key {0} not found")]
    NotFound(String),
    /// The compare-and-swap lost: somebody else wrote the key since `expected` was read.
    #[error("key {key} was modified (expected revision {expected}, found {actual})")]
    Conflict {
        key: String,
        expected: i64,
        actual: i64,
    },
    /// The requested revision was compacted away; the caller must re-list.
    #[error("revision {requested} has been compacted (oldest available is {compacted})")]
    Compacted { requested: i64, compacted: i64 },
    #[error("revision {0} is in the future")]
    FutureRevision(i64),
    #[error("storage backend failed: {0}; check the data directory's disk and permissions")]
    Backend(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A stream of watch events. Ends (yields `None`) when the backend drops the watch (etcd
/// cancelling it, a reconnect); the consumer then re-lists. Unbounded because its one consumer,
/// the API server's watch cache, drains it without awaiting anything else.
pub type WatchStream = mpsc::UnboundedReceiver<Event>;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The revision of the newest write (0 for an empty store).
    async fn current_revision(&self) -> Result<i64>;
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;
    /// Keys in `[start, end)` (end `None` = to the end of `prefix`), at `revision` (`None` =
    /// newest), at most `limit` of them (0 = all). Returns the items and the revision read at.
    async fn range(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        revision: Option<i64>,
        limit: usize,
    ) -> Result<(Vec<KeyValue>, i64)>;
    /// Creates `key`; fails with `AlreadyExists` if it is present. Returns the new revision.
    async fn create(&self, key: &str, value: Bytes) -> Result<i64>;
    /// Replaces `key` if its mod revision is still `expected`. Returns the new revision.
    async fn update(&self, key: &str, value: Bytes, expected: i64) -> Result<i64>;
    /// Deletes `key`, if `expected` is given only when its mod revision matches.
    /// Returns the deletion revision and the last value.
    async fn delete(&self, key: &str, expected: Option<i64>) -> Result<(i64, KeyValue)>;
    /// Events for keys under `prefix` with revision > `after`, then live ones.
    async fn watch(&self, prefix: &str, after: i64) -> Result<WatchStream>;
    /// Forgets history older than `revision`; reads and watches before it fail with `Compacted`.
    async fn compact(&self, revision: i64) -> Result<()>;
}

/// The end of the key range that holds every key starting with `prefix`.
pub fn prefix_end(prefix: &str) -> String {
    // Keys are ASCII paths; U+10FFFF sorts after any character a key may contain.
    format!("{prefix}\u{10FFFF}")
}
