//! The watch cache: one store watch feeds an in-memory copy of every object plus a bounded
//! window of recent events. Lists, watches and the controllers inside the process read from
//! here, so N watchers cost one store watch and a list never touches the disk.
//!
//! Objects are kept as the exact JSON bytes served to clients (with `resourceVersion` filled
//! in), plus the few parsed fields that selectors and the garbage collector need.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{broadcast, watch};

use crate::resources::{self, Resource};
use crate::store::{Event, KeyValue, Store, StoreError};

/// Events kept for watches that resume from an older resourceVersion.
const HISTORY: usize = 10_000;
/// Events buffered per live watcher before it is cut off (and must re-list).
const FANOUT_BUFFER: usize = 16_384;

#[derive(Debug)]
pub struct CachedObject {
    pub key: String,
    pub resource: &'static Resource,
    pub raw: Bytes,
    pub rev: i64,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub owners: Vec<String>,
    pub fields: Vec<(&'static str, String)>,
    pub deleting: bool,
    pub finalizers: Vec<String>,
    /// The PartialObjectMetadata view, rendered once for every metadata watcher and list.
    partial: OnceLock<Bytes>,
}

impl CachedObject {
    /// From stored bytes (without resourceVersion) at revision `rev`.
    pub fn parse_stored(
        resource: &'static Resource,
        key: String,
        value: &[u8],
        rev: i64,
    ) -> Option<Self> {
        Self::build(resource, key, value, rev)
    }

    /// From bytes that already carry their resourceVersion.
    pub fn parse(resource: &'static Resource, key: String, raw: Bytes, rev: i64) -> Option<Self> {
        let obj: Value = serde_json::from_slice(&raw).ok()?;
        Some(Self::from_value(resource, key, &obj, raw, rev))
    }

    fn build(resource: &'static Resource, key: String, value: &[u8], rev: i64) -> Option<Self> {
        let mut obj: Value = serde_json::from_slice(value).ok()?;
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), Value::String(rev.to_string()));
        }
        let raw = Bytes::from(serde_json::to_vec(&obj).ok()?);
        Some(Self::from_value(resource, key, &obj, raw, rev))
    }

    fn from_value(
        resource: &'static Resource,
        key: String,
        obj: &Value,
        raw: Bytes,
        rev: i64,
    ) -> Self {
        let meta = |f: &str| {
            obj.pointer(&format!("/metadata/{f}"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        let owners = obj
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|o| o.get("uid")?.as_str().map(str::to_owned))
            .collect();
        let finalizers = obj
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str().map(str::to_owned))
            .collect();
        let fields = resource
            .field_selectors
            .iter()
            .map(|f| (*f, resources::field_value(obj, f)))
            .collect();
        Self {
            namespace: meta("namespace"),
            name: meta("name"),
            uid: meta("uid"),
            labels: resources::labels(obj),
            owners,
            fields,
            deleting: obj
                .pointer("/metadata/deletionTimestamp")
                .is_some_and(|v| !v.is_null()),
            finalizers,
            key,
            resource,
            raw,
            rev,
            partial: OnceLock::new(),
        }
    }

    /// The object as PartialObjectMetadata: its metadata bytes, cut from `raw` unparsed.
    pub fn partial_json(&self) -> &Bytes {
        self.partial.get_or_init(|| {
            #[derive(serde::Deserialize)]
            struct Meta<'a> {
                #[serde(borrow)]
                metadata: Option<&'a serde_json::value::RawValue>,
            }
            let meta = serde_json::from_slice::<Meta>(&self.raw)
                .ok()
                .and_then(|m| m.metadata)
                .map_or("{}", |m| m.get());
            let mut out = Vec::with_capacity(meta.len() + 80);
            out.extend_from_slice(
                b"{\"kind\":\"PartialObjectMetadata\",\"apiVersion\":\"meta.k8s.io/v1\",\"metadata\":",
            );
            out.extend_from_slice(meta.as_bytes());
            out.push(b'}');
            Bytes::from(out)
        })
    }

    /// The object's value for a selectable field.
    pub fn field(&self, name: &str) -> String {
        match name {
            "metadata.name" => self.name.clone(),
            "metadata.namespace" => self.namespace.clone(),
            _ => self
                .fields
                .iter()
                .find(|(f, _)| *f == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default(),
        }
    }

    pub fn value(&self) -> Value {
        serde_json::from_slice(&self.raw).unwrap_or(Value::Null)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

#[derive(Debug)]
pub struct CacheEvent {
    pub ty: EventType,
    pub obj: Arc<CachedObject>,
    pub prev: Option<Arc<CachedObject>>,
    pub rev: i64,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Arc<CachedObject>>,
    revision: i64,
    history: VecDeque<Arc<CacheEvent>>,
    /// History covers revisions in (oldest, revision].
    oldest: i64,
    by_uid: HashMap<String, String>,
    dependents: HashMap<String, BTreeSet<String>>,
}

impl State {
    fn index(&mut self, obj: &CachedObject) {
        self.by_uid.insert(obj.uid.clone(), obj.key.clone());
        for o in &obj.owners {
            self.dependents
                .entry(o.clone())
                .or_default()
                .insert(obj.key.clone());
        }
    }

    fn unindex(&mut self, obj: &CachedObject) {
        if self.by_uid.get(&obj.uid) == Some(&obj.key) {
            self.by_uid.remove(&obj.uid);
        }
        for o in &obj.owners {
            if let Some(set) = self.dependents.get_mut(o) {
                set.remove(&obj.key);
                if set.is_empty() {
                    self.dependents.remove(o);
                }
            }
        }
    }
}

pub struct Cache {
    state: RwLock<State>,
    events: broadcast::Sender<Arc<CacheEvent>>,
    revision: watch::Sender<i64>,
}

/// A started watch: events to replay first, the live feed, and the revision joined at.
pub type WatchFeed = (
    Vec<Arc<CacheEvent>>,
    broadcast::Receiver<Arc<CacheEvent>>,
    i64,
);

/// Why a watch cannot start where the client asked.
#[derive(Debug)]
pub enum WatchStart {
    TooOld,
}

impl Cache {
    /// Lists the whole keyspace and starts following the store.
    pub async fn start(store: Arc<dyn Store>) -> Result<Arc<Self>, StoreError> {
        let (events, _) = broadcast::channel(FANOUT_BUFFER);
        let (revision, _) = watch::channel(0);
        let cache = Arc::new(Self {
            state: RwLock::new(State::default()),
            events,
            revision,
        });
        let rev = cache.resync(store.as_ref()).await?;
        let stream = store.watch("/registry/", rev).await?;
        tokio::spawn(Arc::clone(&cache).follow(store, stream));
        Ok(cache)
    }

    async fn follow(self: Arc<Self>, store: Arc<dyn Store>, mut stream: crate::store::WatchStream) {
        loop {
            while let Some(ev) = stream.recv().await {
                self.apply(ev);
            }
            // The store dropped us (e.g. a backend reconnect): re-list and carry on from there.
            tracing::warn!("store watch ended; re-listing");
            loop {
                match self.resync(store.as_ref()).await {
                    Ok(rev) => match store.watch("/registry/", rev).await {
                        Ok(s) => {
                            stream = s;
                            break;
                        }
                        Err(e) => tracing::error!("re-watching the store failed: {e}"),
                    },
                    Err(e) => tracing::error!("re-listing the store failed: {e}"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    /// Replaces the cache's content with the store's, emitting the differences as events.
    async fn resync(&self, store: &dyn Store) -> Result<i64, StoreError> {
        let (items, rev) = store.range("/registry/", None, None, 0).await?;
        let mut fresh = BTreeMap::new();
        for kv in items {
            if let Some(obj) = to_object(&kv) {
                fresh.insert(kv.key.clone(), Arc::new(obj));
            }
        }
        let mut st = self.write();
        let old = std::mem::take(&mut st.objects);
        st.by_uid.clear();
        st.dependents.clear();
        for obj in fresh.values() {
            st.index(obj);
        }
        let mut diffs = Vec::new();
        for (k, o) in &old {
            if !fresh.contains_key(k) {
                diffs.push((EventType::Deleted, Arc::clone(o), Some(Arc::clone(o))));
            }
        }
        for (k, o) in &fresh {
            match old.get(k) {
                None => diffs.push((EventType::Added, Arc::clone(o), None)),
                Some(p) if p.rev != o.rev => {
                    diffs.push((EventType::Modified, Arc::clone(o), Some(Arc::clone(p))))
                }
                Some(_) => {}
            }
        }
        st.objects = fresh;
        st.revision = rev;
        if old.is_empty() {
            st.oldest = rev;
        }
        for (ty, obj, prev) in diffs {
            self.publish(&mut st, CacheEvent { ty, obj, prev, rev });
        }
        drop(st);
        self.revision.send_replace(rev);
        Ok(rev)
    }

    fn publish(&self, st: &mut State, ev: CacheEvent) {
        let ev = Arc::new(ev);
        st.history.push_back(Arc::clone(&ev));
        while st.history.len() > HISTORY {
            if let Some(old) = st.history.pop_front() {
                st.oldest = old.rev;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.events.send(ev);
    }

    fn apply(&self, ev: Event) {
        let rev = ev.revision();
        let mut st = self.write();
        match ev {
            Event::Put { kv, .. } => {
                let Some(obj) = to_object(&kv) else {
                    tracing::error!(key = kv.key, "stored object is not valid JSON; skipping it");
                    return;
                };
                let obj = Arc::new(obj);
                let prev = st.objects.insert(kv.key.clone(), Arc::clone(&obj));
                if let Some(p) = &prev {
                    st.unindex(p);
                }
                st.index(&obj);
                st.revision = rev;
                let ty = if prev.is_some() {
                    EventType::Modified
                } else {
                    EventType::Added
                };
                self.publish(&mut st, CacheEvent { ty, obj, prev, rev });
            }
            Event::Delete { prev, revision } => {
                let Some(old) = st.objects.remove(&prev.key) else {
                    st.revision = rev;
                    return;
                };
                st.unindex(&old);
                // Clients see the deleted object at the deletion's revision.
                let gone = to_object(&KeyValue {
                    mod_revision: revision,
                    ..prev
                })
                .map(Arc::new)
                .unwrap_or_else(|| Arc::clone(&old));
                st.revision = rev;
                self.publish(
                    &mut st,
                    CacheEvent {
                        ty: EventType::Deleted,
                        obj: gone,
                        prev: Some(old),
                        rev,
                    },
                );
            }
        }
        drop(st);
        self.revision.send_replace(rev);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn revision(&self) -> i64 {
        *self.revision.borrow()
    }

    /// Waits (bounded) until the cache has seen revision `rev`. False on timeout.
    pub async fn wait_for(&self, rev: i64) -> bool {
        let mut rx = self.revision.subscribe();
        tokio::time::timeout(Duration::from_secs(3), rx.wait_for(|r| *r >= rev))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Every object whose key starts with `prefix`, after `start_after`, in key order.
    pub fn list(&self, prefix: &str, start_after: Option<&str>) -> (Vec<Arc<CachedObject>>, i64) {
        let st = self.read();
        let items = st
            .objects
            .range(prefix.to_owned()..)
            .skip_while(|(k, _)| start_after.is_some_and(|s| k.as_str() <= s))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| Arc::clone(v))
            .collect();
        (items, st.revision)
    }

    pub fn get(&self, key: &str) -> Option<Arc<CachedObject>> {
        self.read().objects.get(key).cloned()
    }

    pub fn by_uid(&self, uid: &str) -> Option<Arc<CachedObject>> {
        let st = self.read();
        st.by_uid.get(uid).and_then(|k| st.objects.get(k)).cloned()
    }

    /// Keys of the objects that name `uid` among their owners.
    pub fn dependents(&self, uid: &str) -> Vec<String> {
        self.read()
            .dependents
            .get(uid)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<CacheEvent>> {
        self.events.subscribe()
    }

    /// Starts a watch: the events a client must see first, and the live feed after them.
    /// `from = None` replays the current state as ADDED events (resourceVersion 0 or unset).
    pub fn watch(&self, prefix: &str, from: Option<i64>) -> Result<WatchFeed, WatchStart> {
        let st = self.read();
        // Subscribing under the lock means no event falls between the replay and the feed.
        let rx = self.events.subscribe();
        let initial = match from {
            None => st
                .objects
                .range(prefix.to_owned()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(_, o)| {
                    Arc::new(CacheEvent {
                        ty: EventType::Added,
                        obj: Arc::clone(o),
                        prev: None,
                        rev: o.rev,
                    })
                })
                .collect(),
            Some(rv) if rv < st.oldest => return Err(WatchStart::TooOld),
            Some(rv) => st
                .history
                .iter()
                .filter(|e| e.rev > rv && e.obj.key.starts_with(prefix))
                .cloned()
                .collect(),
        };
        Ok((initial, rx, st.revision))
    }
}

fn to_object(kv: &KeyValue) -> Option<CachedObject> {
    let resource = resources::for_key(&kv.key)?;
    CachedObject::build(resource, kv.key.clone(), &kv.value, kv.mod_revision)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::sqlite::SqliteStore;

    #[tokio::test]
    async fn cache_follows_the_store_and_replays_history_from_a_revision() {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
        let pod = |n: &str| {
            Bytes::from(format!(
                r#"{{"metadata":{{"name":"{n}","namespace":"d","uid":"u-{n}"}}}}"#
            ))
        };
        let r1 = store
            .create("/registry/core/pods/d/a", pod("a"))
            .await
            .unwrap();
        let cache = Cache::start(Arc::clone(&store)).await.unwrap();
        let r2 = store
            .create("/registry/core/pods/d/b", pod("b"))
            .await
            .unwrap();
        assert!(cache.wait_for(r2).await);
        let (items, rev) = cache.list("/registry/core/pods/d/", None);
        assert_eq!((items.len(), rev), (2, r2));
        let v: Value = serde_json::from_slice(&items[1].raw).unwrap();
        assert_eq!(v["metadata"]["resourceVersion"], r2.to_string());
        assert_eq!(cache.by_uid("u-a").unwrap().name, "a");

        let (replay, _, _) = cache.watch("/registry/core/pods/", Some(r1)).unwrap();
        assert_eq!(replay.len(), 1);
        assert_eq!(replay[0].obj.name, "b");
        assert!(matches!(
            cache.watch("/registry/core/pods/", Some(r1 - 1)),
            Err(WatchStart::TooOld)
        ));
    }
}
