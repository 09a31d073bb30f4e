//! Watches: newline-delimited JSON events fed from the watch cache.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::json;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use super::Api;
use super::cache::{CacheEvent, EventType, WatchStart};
use super::errors::{ApiError, ApiResult};
use super::router::{Filter, Output, Query, table};
use crate::resources::Resource;

/// How often a watch that asked for bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(60);
/// Watches without timeoutSeconds end after this long; clients re-watch from their last RV.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

fn line(ty: &str, object: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(object.len() + 32);
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(ty.as_bytes());
    out.extend_from_slice(b"\",\"object\":");
    out.extend_from_slice(object);
    out.extend_from_slice(b"}\n");
    Bytes::from(out)
}

fn bookmark(res: &Resource, rev: i64, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rev.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    let obj = json!({"kind": res.kind, "apiVersion": res.api_version(), "metadata": meta});
    line("BOOKMARK", obj.to_string().as_bytes())
}

fn error_line(e: &ApiError) -> Bytes {
    line("ERROR", e.status_json().to_string().as_bytes())
}

struct Watcher {
    res: &'static Resource,
    prefix: String,
    filter: Filter,
    output: Output,
    query: Query,
}

impl Watcher {
    /// The event a client sees for a cache event, with selector transitions turned into
    /// ADDED/DELETED as Kubernetes does.
    fn render(&self, ev: &CacheEvent) -> Option<Bytes> {
        if !ev.obj.key.starts_with(&self.prefix) {
            return None;
        }
        let now = self.filter.matches(&ev.obj);
        let before = ev.prev.as_ref().is_some_and(|p| self.filter.matches(p));
        let ty = match ev.ty {
            EventType::Added if now => EventType::Added,
            EventType::Modified if now && before => EventType::Modified,
            EventType::Modified if now => EventType::Added,
            EventType::Modified if before => EventType::Deleted,
            EventType::Deleted if now || before => EventType::Deleted,
            _ => return None,
        };
        Some(match self.output {
            Output::Json => line(ty.as_str(), &ev.obj.raw),
            Output::Metadata => line(ty.as_str(), ev.obj.partial_json()),
            Output::Table => {
                let t = table(
                    self.res,
                    std::slice::from_ref(&ev.obj),
                    &self.query,
                    Some(ev.rev),
                    None,
                );
                line(ty.as_str(), t.to_string().as_bytes())
            }
        })
    }
}

pub async fn serve(
    api: &Arc<Api>,
    res: &'static Resource,
    ns: Option<&str>,
    q: &Query,
    output: Output,
) -> ApiResult<Response> {
    let filter = Filter::from_query(res, q)?;
    let bookmarks = q.flag("allowWatchBookmarks");
    let initial_events = q.flag("sendInitialEvents");
    let timeout = match q.get("timeoutSeconds") {
        None | Some("") => DEFAULT_TIMEOUT,
        Some(t) => Duration::from_secs(t.parse().map_err(|_| {
            ApiError::bad_request(format!("timeoutSeconds: invalid value \"{t}\""))
        })?),
    };
    let rv = match q.get("resourceVersion") {
        None | Some("") | Some("0") => None,
        Some(v) => Some(v.parse::<i64>().map_err(|_| {
            ApiError::bad_request(format!("resourceVersion: invalid value \"{v}\""))
        })?),
    };
    if let Some(rv) = rv
        && !api.cache.wait_for(rv).await
    {
        return Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "Timeout",
            format!(
                "Too large resource version: {rv}, current: {}",
                api.cache.revision()
            ),
        ));
    }
    let prefix = res.key_prefix(ns);
    let from = if initial_events { None } else { rv };
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let mut resp = Response::new(Body::from_stream(
        ReceiverStream::new(rx).map(Ok::<_, std::convert::Infallible>),
    ));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    match api.cache.watch(&prefix, from) {
        Err(WatchStart::TooOld) => {
            let e = ApiError::gone(format!(
                "too old resource version: {} ({})",
                rv.unwrap_or(0),
                api.cache.revision()
            ));
            // The error travels in the stream, as clients expect, and the stream ends.
            let _ = tx.send(error_line(&e)).await;
        }
        Ok((initial, live, start_rev)) => {
            let query = q.clone();
            let w = Watcher {
                res,
                prefix,
                filter,
                output,
                query,
            };
            tokio::spawn(run(
                w,
                initial,
                live,
                start_rev,
                tx,
                bookmarks,
                initial_events,
                timeout,
            ));
        }
    }
    Ok(resp.into_response())
}

#[allow(clippy::too_many_arguments)]
async fn run(
    w: Watcher,
    initial: Vec<Arc<CacheEvent>>,
    mut live: broadcast::Receiver<Arc<CacheEvent>>,
    start_rev: i64,
    tx: mpsc::Sender<Bytes>,
    bookmarks: bool,
    initial_events: bool,
    timeout: Duration,
) {
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut last_rev = start_rev;
    for ev in &initial {
        if let Some(b) = w.render(ev)
            && tx.send(b).await.is_err()
        {
            return;
        }
    }
    if initial_events && bookmarks && tx.send(bookmark(w.res, start_rev, true)).await.is_err() {
        return;
    }
    let mut ticker = tokio::time::interval(BOOKMARK_EVERY);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = &mut deadline => return,
            _ = tx.closed() => return,
            _ = ticker.tick(), if bookmarks => {
                if tx.send(bookmark(w.res, last_rev, false)).await.is_err() {
                    return;
                }
            }
            ev = live.recv() => match ev {
                Ok(ev) => {
                    // The feed was joined at start_rev; anything older was in the replay.
                    if ev.rev <= start_rev {
                        continue;
                    }
                    last_rev = ev.rev;
                    if let Some(b) = w.render(&ev)
                        && tx.send(b).await.is_err()
                    {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let e = ApiError::gone("the watch fell too far behind the event stream; re-list and watch again");
                    let _ = tx.send(error_line(&e)).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}
