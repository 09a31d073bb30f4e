//! The embedded store: SQLite as an append-only revision log (one row per write, deletions as
//! tombstones) plus an index of each live key's newest row. Reads at a past revision pick, per
//! key, the newest row at or below it; compaction drops rows nobody can read any more.
//!
//! One connection behind a mutex. Writes go through one committer thread that does group
//! commit: it takes every write queued while the previous transaction was committing and
//! applies them, in arrival order, in one transaction. Each write still gets its own revision
//! and its own compare-and-swap check (against the writes before it in the batch), so a batch
//! means exactly what the same writes one at a time would. A write is acknowledged only once
//! its transaction has committed; watchers are told in revision order, under the lock, before
//! the writers are answered.
//!
//! Durability: WAL with `synchronous = NORMAL`. A committed transaction is in the WAL file, so
//! acknowledged writes survive the process being killed; an operating-system crash or power
//! loss can lose the last commits before a checkpoint (never corrupt the database).

use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

use super::{Event, KeyValue, Result, Store, StoreError, WatchStream, prefix_end};

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
-- One process owns the database: skip the per-transaction file locking.
PRAGMA locking_mode = EXCLUSIVE;
PRAGMA temp_store = MEMORY;
PRAGMA cache_size = -16384;
PRAGMA wal_autocheckpoint = 10000;
CREATE TABLE IF NOT EXISTS log (
    rev        INTEGER PRIMARY KEY,
    key        TEXT    NOT NULL,
    create_rev INTEGER NOT NULL,
    deleted    INTEGER NOT NULL,
    value      BLOB    NOT NULL
);
CREATE INDEX IF NOT EXISTS log_key_rev ON log (key, rev);
CREATE TABLE IF NOT EXISTS live (
    key TEXT PRIMARY KEY,
    rev INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Most writes one transaction takes, so that one batch never holds the lock for long.
const MAX_BATCH: usize = 512;

struct Watcher {
    prefix: String,
    tx: mpsc::UnboundedSender<Event>,
}

struct Inner {
    conn: Connection,
    revision: i64,
    compacted: i64,
    watchers: Vec<Watcher>,
}

/// A write waiting for the committer.
enum Op {
    Create {
        key: String,
        value: Bytes,
    },
    Update {
        key: String,
        value: Bytes,
        expected: i64,
    },
    Delete {
        key: String,
        expected: Option<i64>,
    },
}

struct Write {
    op: Op,
    /// The new revision and, for a delete, the value it removed.
    reply: oneshot::Sender<Result<(i64, Option<KeyValue>)>>,
}

pub struct SqliteStore {
    inner: Arc<Mutex<Inner>>,
    /// `None` only while dropping.
    writes: Option<std_mpsc::Sender<Write>>,
    committer: Option<JoinHandle<()>>,
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn lock(inner: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    // A panic while holding the lock cannot leave SQLite inconsistent (statements are
    // transactional), so a poisoned lock is still usable.
    inner.lock().unwrap_or_else(|p| p.into_inner())
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path).map_err(backend)?;
        Self::with_connection(conn)
    }

    /// A throwaway in-memory store, for tests.
    pub fn in_memory() -> Result<Self> {
        Self::with_connection(Connection::open_in_memory().map_err(backend)?)
    }

    fn with_connection(conn: Connection) -> Result<Self> {
        conn.execute_batch(SCHEMA).map_err(backend)?;
        // Plans stay fixed: without this the bundled build (STAT4) re-prepares the cached
        // key lookups on every new binding, which cost as much as running them.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
            true,
        )
        .map_err(backend)?;
        let revision: i64 = conn
            .query_row("SELECT COALESCE(MAX(rev), 0) FROM log", [], |r| r.get(0))
            .map_err(backend)?;
        let stored_revision: i64 = conn
            .query_row("SELECT value FROM meta WHERE name = 'revision'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(backend)?
            .unwrap_or(0);
        let compacted: i64 = conn
            .query_row("SELECT value FROM meta WHERE name = 'compacted'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(backend)?
            .unwrap_or(0);
        let inner = Arc::new(Mutex::new(Inner {
            conn,
            // Compaction may have removed the newest rows of deleted keys, so the log alone
            // can under-report; revisions must never go backwards.
            revision: revision.max(stored_revision),
            compacted,
            watchers: Vec::new(),
        }));
        let (tx, rx) = std_mpsc::channel();
        let for_committer = Arc::clone(&inner);
        let committer = std::thread::Builder::new()
            .name("sqlite-commit".into())
            .spawn(move || commit_loop(&for_committer, &rx))
            .map_err(|e| StoreError::Backend(format!("cannot start the committer thread: {e}")))?;
        Ok(Self {
            inner,
            writes: Some(tx),
            committer: Some(committer),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    async fn write(&self, op: Op) -> Result<(i64, Option<KeyValue>)> {
        let (reply, done) = oneshot::channel();
        let gone = || StoreError::Backend("the store's committer has stopped".into());
        self.writes
            .as_ref()
            .ok_or_else(gone)?
            .send(Write { op, reply })
            .map_err(|_| gone())?;
        done.await.map_err(|_| gone())?
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Closing the queue ends the committer once it has written what was queued; joining
        // it closes the connection, so the database can be opened again at once.
        self.writes = None;
        if let Some(t) = self.committer.take() {
            let _ = t.join();
        }
    }
}

/// The committer: one transaction per batch of queued writes.
fn commit_loop(inner: &Mutex<Inner>, rx: &std_mpsc::Receiver<Write>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        lock(inner).commit(batch);
    }
}

fn row_to_kv(r: &rusqlite::Row<'_>) -> rusqlite::Result<KeyValue> {
    Ok(KeyValue {
        key: r.get(0)?,
        value: Bytes::from(r.get::<_, Vec<u8>>(1)?),
        create_revision: r.get(2)?,
        mod_revision: r.get(3)?,
    })
}

fn live(conn: &Connection, key: &str) -> Result<Option<KeyValue>> {
    conn.prepare_cached(
        "SELECT l.key, l.value, l.create_rev, l.rev FROM live v JOIN log l ON l.rev = v.rev \
         WHERE v.key = ?1",
    )
    .and_then(|mut s| s.query_row([key], row_to_kv).optional())
    .map_err(backend)
}

/// Inserts one log row and updates the live index. `value = None` is a deletion.
fn append(
    conn: &Connection,
    rev: i64,
    key: &str,
    value: Option<&Bytes>,
    create_rev: i64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO log (rev, key, create_rev, deleted, value) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        rev,
        key,
        create_rev,
        value.is_none(),
        value.map(|v| v.as_ref()).unwrap_or(&[])
    ])?;
    if value.is_some() {
        conn.prepare_cached("INSERT OR REPLACE INTO live (key, rev) VALUES (?1, ?2)")?
            .execute(params![key, rev])?;
    } else {
        conn.prepare_cached("DELETE FROM live WHERE key = ?1")?
            .execute([key])?;
    }
    Ok(())
}

/// What one write of a batch came to: its event, or why it was refused.
type Applied = Result<Event>;

/// Applies one write at revision `rev` inside the batch's transaction. `Ok(Err(_))` is a
/// refused write (nothing written); `Err(_)` a backend failure that fails the whole batch.
fn apply(conn: &Connection, rev: i64, op: Op) -> Result<Applied> {
    let cas = |key: &str, expected: i64, prev: &KeyValue| -> Result<()> {
        if prev.mod_revision == expected {
            Ok(())
        } else {
            Err(StoreError::Conflict {
                key: key.to_owned(),
                expected,
                actual: prev.mod_revision,
            })
        }
    };
    let (key, value, prev) = match op {
        Op::Create { key, value } => {
            if live(conn, &key)?.is_some() {
                return Ok(Err(StoreError::AlreadyExists(key)));
            }
            (key, Some(value), None)
        }
        Op::Update {
            key,
            value,
            expected,
        } => {
            let Some(prev) = live(conn, &key)? else {
                return Ok(Err(StoreError::NotFound(key)));
            };
            if let Err(e) = cas(&key, expected, &prev) {
                return Ok(Err(e));
            }
            (key, Some(value), Some(prev))
        }
        Op::Delete { key, expected } => {
            let Some(prev) = live(conn, &key)? else {
                return Ok(Err(StoreError::NotFound(key)));
            };
            if let Some(expected) = expected
                && let Err(e) = cas(&key, expected, &prev)
            {
                return Ok(Err(e));
            }
            (key, None, Some(prev))
        }
    };
    let create_rev = prev.as_ref().map_or(rev, |p| p.create_revision);
    append(conn, rev, &key, value.as_ref(), create_rev).map_err(backend)?;
    Ok(Ok(match (value, prev) {
        (Some(value), prev) => Event::Put {
            kv: KeyValue {
                key,
                value,
                create_revision: create_rev,
                mod_revision: rev,
            },
            prev,
        },
        (None, Some(prev)) => Event::Delete {
            prev,
            revision: rev,
        },
        (None, None) => return Ok(Err(StoreError::NotFound(key))),
    }))
}

impl Inner {
    /// Commits a batch of writes in one transaction, tells the watchers, answers the writers.
    fn commit(&mut self, batch: Vec<Write>) {
        let (ops, replies): (Vec<Op>, Vec<_>) = batch.into_iter().map(|w| (w.op, w.reply)).unzip();
        let mut outcomes = Vec::with_capacity(ops.len());
        let result = self.write_batch(ops, &mut outcomes);
        let rev = match result {
            Ok(rev) => rev,
            Err(e) => {
                // Rolled back: nothing of this batch was written, so every writer gets the error.
                let msg = match e {
                    StoreError::Backend(m) => m,
                    other => other.to_string(),
                };
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Backend(msg.clone())));
                }
                return;
            }
        };
        self.revision = rev;
        for (outcome, reply) in outcomes.into_iter().zip(replies) {
            let answer = outcome.map(|event| {
                let key = event.key();
                // Watchers whose receiver is gone are dropped here.
                self.watchers
                    .retain(|w| !key.starts_with(&w.prefix) || w.tx.send(event.clone()).is_ok());
                match event {
                    Event::Put { kv, .. } => (kv.mod_revision, None),
                    Event::Delete { prev, revision } => (revision, Some(prev)),
                }
            });
            // A writer that stopped waiting (its request was cancelled) still had its write done.
            let _ = reply.send(answer);
        }
    }

    /// Runs a batch in one transaction; the newest revision it wrote, or the backend failure
    /// that rolled it all back.
    fn write_batch(&self, ops: Vec<Op>, outcomes: &mut Vec<Applied>) -> Result<i64> {
        let tx = self.conn.unchecked_transaction().map_err(backend)?;
        let mut rev = self.revision;
        for op in ops {
            let applied = apply(&tx, rev + 1, op)?;
            if applied.is_ok() {
                rev += 1;
            }
            outcomes.push(applied);
        }
        tx.commit().map_err(backend)?;
        Ok(rev)
    }

    fn check_revision(&self, revision: i64) -> Result<()> {
        if revision < self.compacted {
            return Err(StoreError::Compacted {
                requested: revision,
                compacted: self.compacted,
            });
        }
        if revision > self.revision {
            return Err(StoreError::FutureRevision(revision));
        }
        Ok(())
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn current_revision(&self) -> Result<i64> {
        Ok(self.lock().revision)
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        live(&self.lock().conn, key)
    }

    async fn range(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        revision: Option<i64>,
        limit: usize,
    ) -> Result<(Vec<KeyValue>, i64)> {
        let inner = self.lock();
        let end = prefix_end(prefix);
        // Start strictly after `start_after`; otherwise at the prefix itself (inclusive).
        let (start, inclusive) = match start_after {
            Some(s) => (s, false),
            None => (prefix, true),
        };
        let limit = if limit == 0 { -1 } else { limit as i64 };
        let cmp = if inclusive { ">=" } else { ">" };
        let items = match revision {
            None => {
                let sql = format!(
                    "SELECT l.key, l.value, l.create_rev, l.rev FROM live v JOIN log l ON l.rev = v.rev \
                     WHERE v.key {cmp} ?1 AND v.key < ?2 ORDER BY v.key LIMIT ?3"
                );
                let mut stmt = inner.conn.prepare_cached(&sql).map_err(backend)?;
                stmt.query_map(params![start, end, limit], row_to_kv)
                    .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                    .map_err(backend)?
            }
            Some(rev) => {
                inner.check_revision(rev)?;
                let sql = format!(
                    "SELECT l.key, l.value, l.create_rev, l.rev FROM log l JOIN \
                     (SELECT key, MAX(rev) AS r FROM log WHERE key {cmp} ?1 AND key < ?2 AND rev <= ?3 \
                      GROUP BY key) m ON l.rev = m.r \
                     WHERE l.deleted = 0 ORDER BY l.key LIMIT ?4"
                );
                let mut stmt = inner.conn.prepare_cached(&sql).map_err(backend)?;
                stmt.query_map(params![start, end, rev, limit], row_to_kv)
                    .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                    .map_err(backend)?
            }
        };
        Ok((items, revision.unwrap_or(inner.revision)))
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<i64> {
        let op = Op::Create {
            key: key.to_owned(),
            value,
        };
        self.write(op).await.map(|(rev, _)| rev)
    }

    async fn update(&self, key: &str, value: Bytes, expected: i64) -> Result<i64> {
        let op = Op::Update {
            key: key.to_owned(),
            value,
            expected,
        };
        self.write(op).await.map(|(rev, _)| rev)
    }

    async fn delete(&self, key: &str, expected: Option<i64>) -> Result<(i64, KeyValue)> {
        let op = Op::Delete {
            key: key.to_owned(),
            expected,
        };
        match self.write(op).await? {
            (rev, Some(prev)) => Ok((rev, prev)),
            (_, None) => Err(StoreError::NotFound(key.to_owned())),
        }
    }

    async fn watch(&self, prefix: &str, after: i64) -> Result<WatchStream> {
        let mut inner = self.lock();
        if after < inner.compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted: inner.compacted,
            });
        }
        let (tx, rx) = mpsc::unbounded_channel();
        // Replay history under the lock so no write slips between replay and registration.
        if after < inner.revision {
            let mut stmt = inner
                .conn
                .prepare_cached(
                    "SELECT rev, key, create_rev, deleted, value, \
                     (SELECT MAX(p.rev) FROM log p WHERE p.key = l.key AND p.rev < l.rev) \
                     FROM log l WHERE rev > ?1 AND key >= ?2 AND key < ?3 ORDER BY rev",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![after, prefix, prefix_end(prefix)], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, bool>(3)?,
                        Bytes::from(r.get::<_, Vec<u8>>(4)?),
                        r.get::<_, Option<i64>>(5)?,
                    ))
                })
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(backend)?;
            drop(stmt);
            for (rev, key, create_rev, deleted, value, prev_rev) in rows {
                let prev = match prev_rev {
                    Some(p) => inner
                        .conn
                        .prepare_cached(
                            "SELECT key, value, create_rev, rev, deleted FROM log WHERE rev = ?1",
                        )
                        .and_then(|mut s| {
                            s.query_row([p], |r| Ok((row_to_kv(r)?, r.get::<_, bool>(4)?)))
                        })
                        .map_err(backend)?,
                    None => (KeyValue::default_for(&key), true),
                };
                let prev = (!prev.1).then_some(prev.0);
                let event = if deleted {
                    Event::Delete {
                        prev: prev.unwrap_or_else(|| KeyValue::default_for(&key)),
                        revision: rev,
                    }
                } else {
                    Event::Put {
                        kv: KeyValue {
                            key,
                            value,
                            create_revision: create_rev,
                            mod_revision: rev,
                        },
                        prev,
                    }
                };
                if tx.send(event).is_err() {
                    break;
                }
            }
        }
        inner.watchers.push(Watcher {
            prefix: prefix.to_owned(),
            tx,
        });
        Ok(rx)
    }

    async fn compact(&self, revision: i64) -> Result<()> {
        let mut inner = self.lock();
        if revision <= inner.compacted {
            return Ok(());
        }
        inner.check_revision(revision)?;
        let current = inner.revision;
        let tx = inner.conn.transaction().map_err(backend)?;
        // Keep, per key, the newest row at or below `revision` (unless it is a tombstone):
        // reads at `revision` or later still need it.
        tx.execute(
            "DELETE FROM log WHERE rev < ?1 AND (deleted = 1 OR rev < \
             (SELECT MAX(p.rev) FROM log p WHERE p.key = log.key AND p.rev <= ?1))",
            [revision],
        )
        .map_err(backend)?;
        tx.execute(
            "INSERT OR REPLACE INTO meta (name, value) VALUES ('compacted', ?1), ('revision', ?2)",
            [revision, current],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)?;
        inner.compacted = revision;
        Ok(())
    }
}

impl KeyValue {
    /// Placeholder previous value for history whose older rows were compacted away.
    fn default_for(key: &str) -> Self {
        KeyValue {
            key: key.to_owned(),
            value: Bytes::new(),
            create_revision: 0,
            mod_revision: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::HashMap;

    fn b(s: &str) -> Bytes {
        Bytes::from(s.to_owned())
    }

    #[tokio::test]
    async fn revisions_increase_and_cas_rejects_stale_writers() {
        let s = SqliteStore::in_memory().unwrap();
        let r1 = s.create("/a/x", b("1")).await.unwrap();
        assert!(matches!(
            s.create("/a/x", b("2")).await,
            Err(StoreError::AlreadyExists(_))
        ));
        let r2 = s.update("/a/x", b("2"), r1).await.unwrap();
        assert!(r2 > r1);
        assert!(matches!(
            s.update("/a/x", b("3"), r1).await,
            Err(StoreError::Conflict { .. })
        ));
        let kv = s.get("/a/x").await.unwrap().unwrap();
        assert_eq!(
            (kv.value, kv.create_revision, kv.mod_revision),
            (b("2"), r1, r2)
        );
    }

    #[tokio::test]
    async fn range_at_a_past_revision_sees_the_old_world() {
        let s = SqliteStore::in_memory().unwrap();
        let r1 = s.create("/p/a", b("a1")).await.unwrap();
        s.create("/p/b", b("b1")).await.unwrap();
        let r3 = s.update("/p/a", b("a2"), r1).await.unwrap();
        s.delete("/p/b", None).await.unwrap();
        s.create("/q/c", b("c")).await.unwrap();

        let (now, _) = s.range("/p/", None, None, 0).await.unwrap();
        assert_eq!(
            now.iter().map(|k| k.value.clone()).collect::<Vec<_>>(),
            [b("a2")]
        );
        let (then, at) = s.range("/p/", None, Some(r3 - 1), 0).await.unwrap();
        assert_eq!(at, r3 - 1);
        assert_eq!(
            then.iter().map(|k| k.value.clone()).collect::<Vec<_>>(),
            [b("a1"), b("b1")]
        );
        let (page, _) = s.range("/p/", Some("/p/a"), Some(r3 - 1), 1).await.unwrap();
        assert_eq!(page[0].key, "/p/b");
    }

    #[tokio::test]
    async fn watch_replays_history_then_streams_live_events_in_order() {
        let s = SqliteStore::in_memory().unwrap();
        let r1 = s.create("/w/a", b("1")).await.unwrap();
        s.update("/w/a", b("2"), r1).await.unwrap();
        s.create("/other", b("x")).await.unwrap();
        let mut w = s.watch("/w/", r1).await.unwrap();
        s.delete("/w/a", None).await.unwrap();
        let e1 = w.recv().await.unwrap();
        assert!(
            matches!(&e1, Event::Put { kv, prev: Some(p) } if kv.value == b("2") && p.value == b("1"))
        );
        let e2 = w.recv().await.unwrap();
        assert!(matches!(&e2, Event::Delete { prev, .. } if prev.value == b("2")));
        assert!(e2.revision() > e1.revision());
    }

    #[tokio::test]
    async fn compaction_forgets_history_but_keeps_the_present() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let s = SqliteStore::open(&path).unwrap();
        let r1 = s.create("/c/a", b("1")).await.unwrap();
        let r2 = s.update("/c/a", b("2"), r1).await.unwrap();
        s.create("/c/b", b("x")).await.unwrap();
        let r4 = s.delete("/c/b", None).await.unwrap().0;
        s.compact(r4).await.unwrap();
        assert!(matches!(
            s.range("/c/", None, Some(r1), 0).await,
            Err(StoreError::Compacted { .. })
        ));
        assert!(matches!(
            s.watch("/c/", r1).await,
            Err(StoreError::Compacted { .. })
        ));
        let (items, _) = s.range("/c/", None, Some(r4), 0).await.unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].mod_revision, r2);
        drop(s);
        // Reopening keeps the revision counter even though the newest row was compacted away.
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.current_revision().await.unwrap(), r4);
        assert!(s.create("/c/z", b("z")).await.unwrap() > r4);
    }
    /// Many writers at once, so that the committer batches them.
    fn multi_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn concurrent_cas_writes_on_one_key_have_one_winner() {
        multi_thread().block_on(async {
            let s = Arc::new(SqliteStore::in_memory().unwrap());
            let r1 = s.create("/k/x", b("0")).await.unwrap();
            let writers: Vec<_> = (0..64)
                .map(|i| {
                    let s = Arc::clone(&s);
                    tokio::spawn(async move { s.update("/k/x", b(&i.to_string()), r1).await })
                })
                .collect();
            let mut won = Vec::new();
            for w in writers {
                match w.await.unwrap() {
                    Ok(rev) => won.push(rev),
                    Err(StoreError::Conflict { expected, .. }) => assert_eq!(expected, r1),
                    Err(e) => panic!("unexpected {e}"),
                }
            }
            assert_eq!(won, [r1 + 1]);
            assert_eq!(s.current_revision().await.unwrap(), r1 + 1);
            // Two creates of one key: one wins, and the loser takes no revision.
            let (a, b2) = tokio::join!(s.create("/k/y", b("a")), s.create("/k/y", b("b")));
            assert!(a.is_ok() != b2.is_ok());
            assert_eq!(s.current_revision().await.unwrap(), r1 + 2);
        });
    }

    #[test]
    fn concurrent_writes_get_distinct_increasing_revisions_and_watch_sees_all_in_order() {
        multi_thread().block_on(async {
            let s = Arc::new(SqliteStore::in_memory().unwrap());
            let mut w = s.watch("/c/", 0).await.unwrap();
            let writers: Vec<_> = (0..200)
                .map(|i| {
                    let s = Arc::clone(&s);
                    tokio::spawn(async move {
                        let key = format!("/c/{}", i % 20);
                        let mut revs = Vec::new();
                        // Create or CAS-update the shared key until one of ours lands.
                        loop {
                            let r = match s.get(&key).await.unwrap() {
                                None => s.create(&key, b(&i.to_string())).await,
                                Some(kv) => {
                                    s.update(&key, b(&i.to_string()), kv.mod_revision).await
                                }
                            };
                            match r {
                                Ok(rev) => {
                                    revs.push(rev);
                                    break;
                                }
                                Err(StoreError::Conflict { .. } | StoreError::AlreadyExists(_)) => {
                                }
                                Err(e) => panic!("unexpected {e}"),
                            }
                        }
                        if i % 3 == 0 {
                            revs.push(s.create(&format!("/c/own-{i}"), b("x")).await.unwrap());
                        }
                        revs
                    })
                })
                .collect();
            let mut acked = Vec::new();
            for t in writers {
                acked.extend(t.await.unwrap());
            }
            acked.sort_unstable();
            let n = acked.len();
            acked.dedup();
            assert_eq!(acked.len(), n, "two writes got one revision");
            assert_eq!(acked, (1..=n as i64).collect::<Vec<_>>());

            // The watch saw every write, in revision order, each with the value it replaced.
            let mut model: HashMap<String, KeyValue> = HashMap::new();
            for rev in 1..=n as i64 {
                let ev = w.recv().await.unwrap();
                assert_eq!(ev.revision(), rev);
                let Event::Put { kv, prev } = ev else {
                    panic!("no deletes here")
                };
                assert_eq!(prev.as_ref(), model.get(&kv.key));
                model.insert(kv.key.clone(), kv);
            }
            let (items, _) = s.range("/c/", None, None, 0).await.unwrap();
            assert_eq!(items.len(), model.len());
            for kv in items {
                assert_eq!(model.get(&kv.key), Some(&kv));
            }
        });
    }

    #[test]
    fn acknowledged_writes_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let last = multi_thread().block_on(async {
            let s = Arc::new(SqliteStore::open(&path).unwrap());
            let writers: Vec<_> = (0..300)
                .map(|i| {
                    let s = Arc::clone(&s);
                    tokio::spawn(async move { s.create(&format!("/d/{i:03}"), b("v")).await })
                })
                .collect();
            let mut last = 0;
            for t in writers {
                last = last.max(t.await.unwrap().unwrap());
            }
            let r = s.delete("/d/000", None).await.unwrap().0;
            assert!(r > last);
            r
        });
        let s = SqliteStore::open(&path).unwrap();
        multi_thread().block_on(async {
            assert_eq!(s.current_revision().await.unwrap(), last);
            let (items, _) = s.range("/d/", None, None, 0).await.unwrap();
            assert_eq!(items.len(), 299);
            assert!(s.create("/d/new", b("n")).await.unwrap() > last);
        });
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        /// Random concurrent creates, CAS updates and deletes over a few keys: replaying the
        /// watch in order against a plain map gives each event's `prev` and the final state,
        /// which is what the same writes one at a time would have produced.
        #[test]
        fn batched_writes_are_equivalent_to_a_serial_history(
            ops in proptest::collection::vec((0u8..3, 0usize..4, proptest::option::of(0i64..6)), 1..80)
        ) {
            multi_thread().block_on(async {
                let s = Arc::new(SqliteStore::in_memory().unwrap());
                let mut w = s.watch("/p/", 0).await.unwrap();
                let tasks: Vec<_> = ops
                    .into_iter()
                    .enumerate()
                    .map(|(i, (kind, k, expected))| {
                        let s = Arc::clone(&s);
                        tokio::spawn(async move {
                            let key = format!("/p/{k}");
                            match kind {
                                0 => s.create(&key, b(&i.to_string())).await,
                                1 => s.update(&key, b(&i.to_string()), expected.unwrap_or(0)).await,
                                _ => s.delete(&key, expected).await.map(|(r, _)| r),
                            }
                        })
                    })
                    .collect();
                let mut ok = 0;
                for t in tasks {
                    ok += i64::from(t.await.unwrap().is_ok());
                }
                assert_eq!(s.current_revision().await.unwrap(), ok);
                let mut model: HashMap<String, KeyValue> = HashMap::new();
                for rev in 1..=ok {
                    let ev = w.recv().await.unwrap();
                    assert_eq!(ev.revision(), rev);
                    match ev {
                        Event::Put { kv, prev } => {
                            assert_eq!(prev.as_ref(), model.get(&kv.key));
                            if let Some(p) = &prev {
                                assert_eq!(kv.create_revision, p.create_revision);
                            } else {
                                assert_eq!(kv.create_revision, rev);
                            }
                            model.insert(kv.key.clone(), kv);
                        }
                        Event::Delete { prev, .. } => {
                            assert_eq!(model.remove(&prev.key), Some(prev));
                        }
                    }
                }
                let (items, _) = s.range("/p/", None, None, 0).await.unwrap();
                assert_eq!(items.len(), model.len());
                for kv in items {
                    assert_eq!(model.get(&kv.key), Some(&kv));
                }
            });
        }
    }
}
