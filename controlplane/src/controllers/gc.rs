//! Garbage collection over ownerReferences, as Kubernetes' garbage collector does it:
//! - a dependent whose owners are all gone is deleted (background cascading);
//! - an owner being deleted with `orphan` has the reference removed from its dependents;
//! - an owner being deleted with `foregroundDeletion` waits until its dependents are gone.
//!
//! Driven by cache events, with a periodic full pass to catch anything missed (a restart in
//! the middle of a cascade, a lagging subscription).

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;

use crate::api::Api;
use crate::api::cache::{CacheEvent, CachedObject, EventType};
use crate::api::handler::{DeleteOptions, Propagation};

const RESCAN: Duration = Duration::from_secs(10);

pub async fn run(api: Arc<Api>) {
    let mut events = api.cache.subscribe();
    let mut tick = tokio::time::interval(RESCAN);
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(ev) => on_event(&api, &ev).await,
                Err(RecvError::Lagged(_)) => full_pass(&api).await,
                Err(RecvError::Closed) => return,
            },
            _ = tick.tick() => full_pass(&api).await,
        }
    }
}

async fn on_event(api: &Api, ev: &CacheEvent) {
    let obj = &ev.obj;
    if ev.ty == EventType::Deleted {
        for key in api.cache.dependents(&obj.uid) {
            if let Some(dep) = api.cache.get(&key) {
                check_dependent(api, &dep).await;
            }
        }
    } else {
        if !obj.owners.is_empty() {
            check_dependent(api, obj).await;
        }
        if obj.deleting {
            check_owner(api, obj).await;
        }
    }
    // A dependent changing may unblock an owner waiting in foreground deletion.
    for owner_uid in &obj.owners {
        if let Some(owner) = api.cache.by_uid(owner_uid)
            && owner.deleting
        {
            check_owner(api, &owner).await;
        }
    }
}

async fn full_pass(api: &Api) {
    let (all, _) = api.cache.list("/registry/", None);
    for obj in all {
        if !obj.owners.is_empty() {
            check_dependent(api, &obj).await;
        }
        if obj.deleting && !obj.finalizers.is_empty() {
            check_owner(api, &obj).await;
        }
    }
}

fn ns_of(o: &CachedObject) -> Option<&str> {
    (!o.namespace.is_empty()).then_some(o.namespace.as_str())
}

/// Deletes a dependent whose owners are all gone; drops references to owners that are gone.
async fn check_dependent(api: &Api, dep: &CachedObject) {
    let missing: Vec<&String> = dep
        .owners
        .iter()
        .filter(|u| api.cache.by_uid(u).is_none())
        .collect();
    if missing.is_empty() {
        return;
    }
    let res = dep.resource;
    let result = if missing.len() == dep.owners.len() {
        if dep.deleting {
            return;
        }
        tracing::debug!(key = dep.key, "deleting dependent whose owners are gone");
        api.delete_object(res, ns_of(dep), &dep.name, &DeleteOptions::default())
            .await
            .map(|_| ())
    } else {
        let missing: Vec<String> = missing.into_iter().cloned().collect();
        remove_owner_refs(api, dep, &missing).await
    };
    if let Err(e) = result
        && e.code != 404
    {
        tracing::warn!(key = dep.key, "garbage collection failed: {e}");
    }
}

async fn remove_owner_refs(
    api: &Api,
    dep: &CachedObject,
    uids: &[String],
) -> Result<(), crate::api::errors::ApiError> {
    api.update_object(
        dep.resource,
        ns_of(dep),
        &dep.name,
        None,
        false,
        |mut cur| {
            if let Some(Value::Array(refs)) = cur.pointer_mut("/metadata/ownerReferences") {
                refs.retain(|r| {
                    !r.get("uid")
                        .and_then(Value::as_str)
                        .is_some_and(|u| uids.iter().any(|x| x == u))
                });
            }
            Ok(cur)
        },
    )
    .await
    .map(|_| ())
}

async fn remove_finalizer(
    api: &Api,
    owner: &CachedObject,
    finalizer: &str,
) -> Result<(), crate::api::errors::ApiError> {
    api.update_object(
        owner.resource,
        ns_of(owner),
        &owner.name,
        None,
        false,
        |mut cur| {
            if let Some(Value::Array(f)) = cur.pointer_mut("/metadata/finalizers") {
                f.retain(|x| x.as_str() != Some(finalizer));
            }
            Ok(cur)
        },
    )
    .await
    .map(|_| ())
}

/// Runs the orphan / foreground work of an owner that is being deleted.
async fn check_owner(api: &Api, owner: &CachedObject) {
    let has = |f: &str| owner.finalizers.iter().any(|x| x == f);
    let dependents = api.cache.dependents(&owner.uid);
    let mut result = Ok(());
    if has("orphan") {
        for key in &dependents {
            if let Some(dep) = api.cache.get(key) {
                result = result
                    .and(remove_owner_refs(api, &dep, std::slice::from_ref(&owner.uid)).await);
            }
        }
        if result.is_ok() {
            result = remove_finalizer(api, owner, "orphan").await;
        }
    } else if has("foregroundDeletion") {
        if dependents.is_empty() {
            result = remove_finalizer(api, owner, "foregroundDeletion").await;
        } else {
            let opts = DeleteOptions {
                propagation: Some(Propagation::Foreground),
                ..Default::default()
            };
            for key in &dependents {
                if let Some(dep) = api.cache.get(key)
                    && !dep.deleting
                {
                    let r = api
                        .delete_object(dep.resource, ns_of(&dep), &dep.name, &opts)
                        .await;
                    if let Err(e) = r
                        && e.code != 404
                    {
                        result = Err(e);
                    }
                }
            }
        }
    }
    if let Err(e) = result
        && e.code != 404
    {
        tracing::warn!(
            key = owner.key,
            "garbage collection of dependents failed: {e}"
        );
    }
}
