//! The embedded store: SQLite as an append-only revision log (one row per write, deletions as
//! tombstones) plus an index of each live key's newest row. Reads at a past revision pick, per
//! key, the newest row at or below it; compaction drops rows nobody can read any more.
//!
//! One connection behind a mutex: writes are serialised anyway (each needs the next revision),
//! and holding the lock while notifying watchers keeps every watcher's stream in revision order.

use std::path::Path;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::mpsc;

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

pub struct SqliteStore {
    inner: Mutex<Inner>,
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
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
        Ok(Self {
            inner: Mutex::new(Inner {
                conn,
                // Compaction may have removed the newest rows of deleted keys, so the log alone
                // can under-report; revisions must never go backwards.
                revision: revision.max(stored_revision),
                compacted,
                watchers: Vec::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave SQLite inconsistent (statements are
        // transactional), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
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

impl Inner {
    fn live(&self, key: &str) -> Result<Option<KeyValue>> {
        self.conn
            .prepare_cached(
                "SELECT l.key, l.value, l.create_rev, l.rev FROM live v JOIN log l ON l.rev = v.rev \
                 WHERE v.key = ?1",
            )
            .and_then(|mut s| s.query_row([key], row_to_kv).optional())
            .map_err(backend)
    }

    /// Appends one write to the log and tells the watchers. `value = None` is a deletion.
    fn append(&mut self, key: &str, value: Option<&Bytes>, prev: Option<KeyValue>) -> Result<i64> {
        let rev = self.revision + 1;
        let create_rev = match (&prev, value) {
            (Some(p), Some(_)) => p.create_revision,
            (Some(p), None) => p.create_revision,
            (None, _) => rev,
        };
        let tx = self.conn.transaction().map_err(backend)?;
        tx.prepare_cached(
            "INSERT INTO log (rev, key, create_rev, deleted, value) VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .and_then(|mut s| {
            s.execute(params![
                rev,
                key,
                create_rev,
                value.is_none(),
                value.map(|v| v.as_ref()).unwrap_or(&[])
            ])
        })
        .map_err(backend)?;
        if value.is_some() {
            tx.prepare_cached("INSERT OR REPLACE INTO live (key, rev) VALUES (?1, ?2)")
                .and_then(|mut s| s.execute(params![key, rev]))
                .map_err(backend)?;
        } else {
            tx.prepare_cached("DELETE FROM live WHERE key = ?1")
                .and_then(|mut s| s.execute([key]))
                .map_err(backend)?;
        }
        tx.commit().map_err(backend)?;
        self.revision = rev;

        let event = match value {
            Some(v) => Event::Put {
                kv: KeyValue {
                    key: key.to_owned(),
                    value: v.clone(),
                    create_revision: create_rev,
                    mod_revision: rev,
                },
                prev,
            },
            None => Event::Delete {
                prev: prev.ok_or_else(|| StoreError::NotFound(key.to_owned()))?,
                revision: rev,
            },
        };
        // Watchers whose receiver is gone are dropped here.
        self.watchers
            .retain(|w| !key.starts_with(&w.prefix) || w.tx.send(event.clone()).is_ok());
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
        self.lock().live(key)
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
        let mut inner = self.lock();
        if inner.live(key)?.is_some() {
            return Err(StoreError::AlreadyExists(key.to_owned()));
        }
        inner.append(key, Some(&value), None)
    }

    async fn update(&self, key: &str, value: Bytes, expected: i64) -> Result<i64> {
        let mut inner = self.lock();
        let prev = inner
            .live(key)?
            .ok_or_else(|| StoreError::NotFound(key.to_owned()))?;
        if prev.mod_revision != expected {
            return Err(StoreError::Conflict {
                key: key.to_owned(),
                expected,
                actual: prev.mod_revision,
            });
        }
        inner.append(key, Some(&value), Some(prev))
    }

    async fn delete(&self, key: &str, expected: Option<i64>) -> Result<(i64, KeyValue)> {
        let mut inner = self.lock();
        let prev = inner
            .live(key)?
            .ok_or_else(|| StoreError::NotFound(key.to_owned()))?;
        if let Some(expected) = expected
            && prev.mod_revision != expected
        {
            return Err(StoreError::Conflict {
                key: key.to_owned(),
                expected,
                actual: prev.mod_revision,
            });
        }
        let rev = inner.append(key, None, Some(prev.clone()))?;
        Ok((rev, prev))
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
}
