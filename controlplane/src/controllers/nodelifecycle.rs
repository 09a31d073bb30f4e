//! Node lifecycle, as kube-controller-manager's node lifecycle controller and taint manager:
//! - a node whose heartbeat (its Lease in `kube-node-lease`, or the Ready condition's
//!   lastHeartbeatTime) has not changed for `--node-monitor-grace-period` gets every condition
//!   set to Unknown ("Kubelet stopped posting node status.") and its pods marked not Ready;
//! - the Ready condition is mirrored as a NoExecute taint: `node.kubernetes.io/unreachable`
//!   for Unknown, `node.kubernetes.io/not-ready` for False, none once the node is Ready again;
//! - pods on a node with NoExecute taints are evicted (deleted) when their tolerations run out
//!   (`tolerationSeconds` counted from the taint's timeAdded), at once if not tolerated.
//!
//! Heartbeats are judged by when this process *saw* them change (as Kubernetes does), so
//! clock skew or a controlplane restart never marks a healthy node down without a full grace
//! period. Nodes that have never had a heartbeat of either kind (registered statically, with
//! no agent behind them) are left alone.
//!
//! Each pass recomputes everything from the reflector caches; nothing depends on events.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

use super::runtime::Context;
use crate::controllers::events::{ObjectRef as EventRef, Recorder};
use crate::scheduler::filter::tolerates;

pub const LEASE_NAMESPACE: &str = "kube-node-lease";
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
const UNKNOWN_MESSAGE: &str = "Kubelet stopped posting node status.";

/// Spawns a reflector and returns its cache.
fn cache<K>(api: Api<K>) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!("node lifecycle watch: {e}");
            }
        });
    tokio::spawn(stream);
    reader
}

pub async fn run(ctx: Context) {
    let nodes = cache(Api::<Node>::all(ctx.client.clone()));
    let leases = cache(Api::<Lease>::namespaced(
        ctx.client.clone(),
        LEASE_NAMESPACE,
    ));
    for s in [
        nodes.wait_until_ready().await,
        leases.wait_until_ready().await,
    ] {
        if s.is_err() {
            return;
        }
    }
    let grace = ctx.settings.node_monitor_grace;
    let period = (grace / 4).clamp(Duration::from_millis(500), Duration::from_secs(5));
    let recorder = ctx.events.named("node-controller");
    let mut monitor = Monitor {
        ctx,
        nodes,
        leases,
        grace,
        recorder,
        seen: HashMap::new(),
    };
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        monitor.pass().await;
    }
}

struct Monitor {
    ctx: Context,
    nodes: Store<Node>,
    leases: Store<Lease>,
    grace: Duration,
    recorder: Recorder,
    /// Per node: the last heartbeat seen and when it was first seen.
    seen: HashMap<String, (String, Instant)>,
}

fn ready_status(node: &Node) -> Option<String> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.clone())
}

/// The node's taints with the NoExecute condition taints set to match its Ready condition,
/// or None when they already do.
pub fn taints_for(
    ready: Option<&str>,
    taints: &[Taint],
    now: jiff::Timestamp,
) -> Option<Vec<Taint>> {
    let want = match ready {
        Some("True") => None,
        Some("False") => Some(TAINT_NOT_READY),
        // No Ready condition at all, or Unknown: nobody reports for the node.
        _ => Some(TAINT_UNREACHABLE),
    };
    let is_ours = |t: &Taint| {
        t.effect == "NoExecute" && (t.key == TAINT_UNREACHABLE || t.key == TAINT_NOT_READY)
    };
    let current: Vec<&str> = taints
        .iter()
        .filter(|t| is_ours(t))
        .map(|t| t.key.as_str())
        .collect();
    if current == want.into_iter().collect::<Vec<_>>() {
        return None;
    }
    let mut out: Vec<Taint> = taints.iter().filter(|t| !is_ours(t)).cloned().collect();
    if let Some(key) = want {
        out.push(Taint {
            key: key.into(),
            effect: "NoExecute".into(),
            time_added: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now)),
            value: None,
        });
    }
    Some(out)
}

/// When a pod on a node with `taints` must go.
#[derive(Debug, PartialEq, Eq)]
pub enum Eviction {
    Never,
    Now,
    At(jiff::Timestamp),
}

/// Kubernetes' taint manager: an untolerated NoExecute taint evicts at once; otherwise the
/// smallest tolerationSeconds among the tolerations used, counted from when the taint came.
pub fn eviction(taints: &[Taint], tolerations: &[Toleration]) -> Eviction {
    let mut min_secs: Option<i64> = None;
    let mut since: Option<jiff::Timestamp> = None;
    let mut any = false;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        any = true;
        let used: Vec<&Toleration> = tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        if used.is_empty() {
            return Eviction::Now;
        }
        for t in used {
            if let Some(s) = t.toleration_seconds {
                min_secs = Some(min_secs.map_or(s, |m| m.min(s)));
            }
        }
        if let Some(added) = &taint.time_added {
            since = Some(since.map_or(added.0, |s: jiff::Timestamp| s.min(added.0)));
        }
    }
    match (any, min_secs) {
        (false, _) | (true, None) => Eviction::Never,
        (true, Some(s)) if s <= 0 => Eviction::Now,
        (true, Some(s)) => {
            let from = since.unwrap_or_else(jiff::Timestamp::now);
            match from.checked_add(jiff::SignedDuration::from_secs(s)) {
                Ok(at) => Eviction::At(at),
                Err(_) => Eviction::Never,
            }
        }
    }
}

impl Monitor {
    async fn pass(&mut self) {
        let now = Instant::now();
        let nodes = self.nodes.state();
        self.seen.retain(|n, _| {
            nodes
                .iter()
                .any(|x| x.metadata.name.as_deref() == Some(n.as_str()))
        });
        for node in nodes {
            let name = node.metadata.name.clone().unwrap_or_default();
            if let Err(e) = self.check(&node, &name, now).await {
                tracing::warn!(node = name, "node lifecycle: {e}");
            }
        }
    }

    fn heartbeat(&self, node: &Node, name: &str) -> Option<String> {
        let lease = self
            .leases
            .get(&ObjectRef::new(name).within(LEASE_NAMESPACE))
            .and_then(|l| {
                l.spec
                    .as_ref()?
                    .renew_time
                    .as_ref()
                    .map(|t| t.0.to_string())
            });
        let hb = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .and_then(|c| c.last_heartbeat_time.as_ref().map(|t| t.0.to_string()));
        (lease.is_some() || hb.is_some()).then(|| format!("{lease:?}/{hb:?}"))
    }

    async fn check(&mut self, node: &Node, name: &str, now: Instant) -> Result<(), kube::Error> {
        let api: Api<Node> = Api::all(self.ctx.client.clone());
        let mut ready = ready_status(node);
        let mut rv = node.metadata.resource_version.clone();
        if let Some(beat) = self.heartbeat(node, name) {
            let entry = self
                .seen
                .entry(name.to_owned())
                .or_insert_with(|| (beat.clone(), now));
            if entry.0 != beat {
                *entry = (beat, now);
            }
            let silent = now.duration_since(entry.1);
            if silent > self.grace && ready.as_deref() != Some("Unknown") {
                tracing::info!(
                    node = name,
                    "node stopped posting status; marking it Unknown"
                );
                rv = self.mark_unknown(&api, node, name).await?;
                ready = Some("Unknown".into());
                self.recorder.emit(
                    node_ref(name, node),
                    "Normal",
                    "NodeNotReady",
                    &format!("Node {name} status is now: NodeNotReady"),
                );
            }
        } else if ready.is_none() {
            // Never heard of: leave statically registered nodes alone.
            return Ok(());
        }
        let has_no_execute = |t: &[Taint]| t.iter().any(|t| t.effect == "NoExecute");
        let current_taints = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_deref())
            .unwrap_or(&[]);
        // Pods are only looked at on troubled nodes (rare), so no cache of every pod is kept.
        let pods = if ready.as_deref() != Some("True") || has_no_execute(current_taints) {
            let api: Api<Pod> = Api::all(self.ctx.client.clone());
            let lp = ListParams::default().fields(&format!("spec.nodeName={name}"));
            api.list(&lp).await?.items
        } else {
            Vec::new()
        };
        if ready.as_deref() != Some("True") {
            self.mark_pods_not_ready(&pods).await;
        }
        let taints = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        let taints = match taints_for(ready.as_deref(), &taints, jiff::Timestamp::now()) {
            Some(new) => {
                let patch = json!({
                    "metadata": {"resourceVersion": rv},
                    "spec": {"taints": new},
                });
                api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
                    .await?;
                new
            }
            None => taints,
        };
        self.evict(&taints, &pods).await;
        Ok(())
    }

    async fn mark_unknown(
        &self,
        api: &Api<Node>,
        node: &Node,
        name: &str,
    ) -> Result<Option<String>, kube::Error> {
        let now = crate::resources::now_rfc3339();
        let mut conditions: Vec<serde_json::Value> = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .map(|c| {
                json!({"type": c.type_, "status": "Unknown", "reason": "NodeStatusUnknown",
                       "message": UNKNOWN_MESSAGE, "lastTransitionTime": now,
                       "lastHeartbeatTime": c.last_heartbeat_time})
            })
            .collect();
        if !conditions.iter().any(|c| c["type"] == "Ready") {
            conditions.push(
                json!({"type": "Ready", "status": "Unknown", "reason": "NodeStatusNeverUpdated",
                "message": "Kubelet never posted node status.", "lastTransitionTime": now}),
            );
        }
        api.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Strategic(json!({"status": {"conditions": conditions}})),
        )
        .await
        .map(|n| n.metadata.resource_version)
    }

    async fn mark_pods_not_ready(&self, pods: &[Pod]) {
        for pod in pods {
            let ready = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                .is_some_and(|c| c.status == "True");
            if !ready || pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let (ns, name) = (
                pod.metadata.namespace.clone().unwrap_or_default(),
                pod.metadata.name.clone().unwrap_or_default(),
            );
            let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &ns);
            let patch = json!({"status": {"conditions": [{"type": "Ready", "status": "False",
                "lastTransitionTime": crate::resources::now_rfc3339()}]}});
            if let Err(e) = api
                .patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch))
                .await
            {
                tracing::debug!(pod = name, "marking the pod not ready failed: {e}");
            }
        }
    }

    async fn evict(&self, taints: &[Taint], pods: &[Pod]) {
        if !taints.iter().any(|t| t.effect == "NoExecute") {
            return;
        }
        let now = jiff::Timestamp::now();
        for pod in pods {
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let tolerations = pod
                .spec
                .as_ref()
                .and_then(|s| s.tolerations.clone())
                .unwrap_or_default();
            let due = match eviction(taints, &tolerations) {
                Eviction::Never => false,
                Eviction::Now => true,
                Eviction::At(t) => t <= now,
            };
            if !due {
                continue;
            }
            let (ns, name) = (
                pod.metadata.namespace.clone().unwrap_or_default(),
                pod.metadata.name.clone().unwrap_or_default(),
            );
            let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &ns);
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {
                    tracing::info!(
                        pod = name,
                        namespace = ns,
                        "evicted from a NoExecute-tainted node"
                    );
                    self.recorder.emit(
                        EventRef {
                            kind: "Pod",
                            api_version: "v1",
                            namespace: ns.clone(),
                            name: name.clone(),
                            uid: pod.metadata.uid.clone().unwrap_or_default(),
                        },
                        "Normal",
                        "TaintManagerEviction",
                        &format!("Marking for deletion Pod {ns}/{name}"),
                    );
                }
                Err(e) => tracing::debug!(pod = name, "eviction failed: {e}"),
            }
        }
    }
}

fn node_ref(name: &str, node: &Node) -> EventRef {
    EventRef {
        kind: "Node",
        api_version: "v1",
        namespace: "default".into(),
        name: name.to_owned(),
        uid: node.metadata.uid.clone().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn taint(key: &str, effect: &str, added: Option<jiff::Timestamp>) -> Taint {
        Taint {
            key: key.into(),
            effect: effect.into(),
            time_added: added.map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time),
            value: None,
        }
    }

    fn toleration(key: &str, secs: Option<i64>) -> Toleration {
        Toleration {
            key: Some(key.into()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            toleration_seconds: secs,
            value: None,
        }
    }

    #[test]
    fn the_ready_condition_is_mirrored_as_a_noexecute_taint() {
        let now = jiff::Timestamp::now();
        let other = taint("dedicated", "NoSchedule", None);
        let t = taints_for(Some("Unknown"), std::slice::from_ref(&other), now).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[1].key, TAINT_UNREACHABLE);
        assert_eq!(taints_for(Some("Unknown"), &t, now), None);
        let t = taints_for(Some("False"), &t, now).unwrap();
        assert_eq!(
            t.iter().map(|t| t.key.as_str()).collect::<Vec<_>>(),
            ["dedicated", TAINT_NOT_READY]
        );
        let t = taints_for(Some("True"), &t, now).unwrap();
        assert_eq!(t, vec![other]);
        assert_eq!(taints_for(Some("True"), &t, now), None);
    }

    #[test]
    fn pods_are_evicted_when_their_toleration_runs_out() {
        let added = jiff::Timestamp::from_second(1_000_000).unwrap();
        let taints = [taint(TAINT_UNREACHABLE, "NoExecute", Some(added))];
        assert_eq!(eviction(&taints, &[]), Eviction::Now);
        assert_eq!(
            eviction(&taints, &[toleration(TAINT_UNREACHABLE, None)]),
            Eviction::Never
        );
        assert_eq!(
            eviction(
                &taints,
                &[
                    toleration(TAINT_UNREACHABLE, Some(300)),
                    toleration(TAINT_UNREACHABLE, Some(5))
                ]
            ),
            Eviction::At(jiff::Timestamp::from_second(1_000_005).unwrap())
        );
        assert_eq!(
            eviction(&taints, &[toleration(TAINT_NOT_READY, Some(300))]),
            Eviction::Now
        );
        let no_execute_free = [taint("x", "NoSchedule", None)];
        assert_eq!(eviction(&no_execute_free, &[]), Eviction::Never);
    }
}
