//! Namespace deletion: once a namespace is marked for deletion, delete everything in it, then
//! release its `kubernetes` finalizer so the namespace itself goes away.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;

use crate::api::Api;
use crate::api::handler::DeleteOptions;
use crate::resources::{self, RESOURCES};

const RESCAN: Duration = Duration::from_secs(5);

pub async fn run(api: Arc<Api>) {
    let mut events = api.cache.subscribe();
    let mut tick = tokio::time::interval(RESCAN);
    loop {
        let mut todo: Vec<String> = Vec::new();
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(ev) => {
                    let o = &ev.obj;
                    if o.resource.plural == "namespaces" && o.deleting {
                        todo.push(o.name.clone());
                    } else if !o.namespace.is_empty()
                        && api.cache.get(&format!("/registry/core/namespaces/{}", o.namespace)).is_some_and(|n| n.deleting)
                    {
                        todo.push(o.namespace.clone());
                    }
                }
                Err(RecvError::Lagged(_)) => todo.extend(terminating(&api)),
                Err(RecvError::Closed) => return,
            },
            _ = tick.tick() => todo.extend(terminating(&api)),
        }
        for ns in todo {
            if let Err(e) = finish(&api, &ns).await {
                tracing::warn!(namespace = ns, "namespace cleanup failed: {e}");
            }
        }
    }
}

fn terminating(api: &Api) -> Vec<String> {
    let (all, _) = api.cache.list("/registry/core/namespaces/", None);
    all.into_iter()
        .filter(|n| n.deleting)
        .map(|n| n.name.clone())
        .collect()
}

async fn finish(api: &Api, ns: &str) -> Result<(), crate::api::errors::ApiError> {
    let mut remaining = 0;
    for res in RESOURCES.iter().filter(|r| r.namespaced) {
        let (items, _) = api.cache.list(&res.key_prefix(Some(ns)), None);
        remaining += items.len();
        for o in items.iter().filter(|o| !o.deleting) {
            match api
                .delete_object(res, Some(ns), &o.name, &DeleteOptions::default())
                .await
            {
                Ok(_) => {}
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
    }
    if remaining > 0 {
        return Ok(());
    }
    let Some(nsres) = resources::find("", "v1", "namespaces") else {
        return Ok(());
    };
    match api
        .update_object(nsres, None, ns, None, false, |mut cur| {
            if let Some(Value::Array(f)) = cur.pointer_mut("/spec/finalizers") {
                f.retain(|x| x.as_str() != Some("kubernetes"));
            }
            Ok(cur)
        })
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}
