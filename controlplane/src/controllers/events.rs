//! Core/v1 Events, written in the background for every control loop of the process. Like
//! client-go's broadcaster, emitting never blocks the caller: one writer drains a bounded
//! queue, one write at a time (events never crowd out bindings or other writes), and a full
//! queue drops the event (events are best effort).

use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Event as CoreEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use serde_json::json;
use tokio::sync::mpsc;

/// What an event is about.
#[derive(Clone, Debug)]
pub struct ObjectRef {
    pub kind: &'static str,
    pub api_version: &'static str,
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl ObjectRef {
    pub fn of(meta: &ObjectMeta, api_version: &'static str, kind: &'static str) -> Self {
        Self {
            kind,
            api_version,
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone().unwrap_or_default(),
        }
    }
}

/// A handle on the process's event queue, reporting as one component.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<CoreEvent>,
    component: &'static str,
}

static EVENT_SEQ: AtomicU64 = AtomicU64::new(0);

impl Recorder {
    /// Starts the writer; `named` gives each control loop a handle with its own component.
    pub fn start(client: kube::Client, component: &'static str) -> Self {
        let (tx, rx) = mpsc::channel::<CoreEvent>(1000);
        tokio::spawn(async move {
            tokio_stream::wrappers::ReceiverStream::new(rx)
                // One write at a time: events never crowd out bindings or other writes.
                .for_each_concurrent(1, |ev| {
                    let client = client.clone();
                    async move {
                        let ns = ev.metadata.namespace.clone().unwrap_or_default();
                        let api: Api<CoreEvent> = Api::namespaced(client, &ns);
                        if let Err(e) = api.create(&PostParams::default(), &ev).await {
                            tracing::debug!("writing an event failed: {e}");
                        }
                    }
                })
                .await;
        });
        Self { tx, component }
    }

    pub fn named(&self, component: &'static str) -> Self {
        Self {
            tx: self.tx.clone(),
            component,
        }
    }

    pub fn emit(&self, about: ObjectRef, type_: &str, reason: &str, message: &str) {
        let now = jiff::Timestamp::now();
        let seq = EVENT_SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "{}.{:x}",
            about.name,
            now.as_nanosecond().unsigned_abs() as u64 + seq
        );
        let ts = crate::resources::now_rfc3339();
        let ev = json!({
            "metadata": {"name": name, "namespace": about.namespace},
            "involvedObject": {"kind": about.kind, "apiVersion": about.api_version,
                "namespace": about.namespace, "name": about.name, "uid": about.uid},
            "reason": reason,
            "message": message,
            "type": type_,
            "source": {"component": self.component},
            "reportingComponent": self.component,
            "firstTimestamp": ts,
            "lastTimestamp": ts,
            "count": 1,
        });
        match serde_json::from_value::<CoreEvent>(ev) {
            Ok(ev) => {
                // A full queue drops the event, as client-go does.
                let _ = self.tx.try_send(ev);
            }
            Err(e) => tracing::debug!("building an event failed: {e}"),
        }
    }
}
