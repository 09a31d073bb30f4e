//! DaemonSet controller: one pod per eligible node.
//!
//! A node is eligible when it matches the template's nodeSelector and required node affinity
//! and its NoSchedule/NoExecute taints are tolerated, counting the tolerations every daemon
//! pod gets (not-ready, unreachable, unschedulable, pressure conditions). As in Kubernetes,
//! pods are created with a required node affinity on `metadata.name` of their node and the
//! scheduler binds them. Rolling updates replace pods whose `controller-revision-hash` label
//! differs from the template's hash, never making more than `maxUnavailable` nodes lack an
//! available daemon pod; `OnDelete` leaves replacing to the user.
//!
//! Reconciles run on DaemonSet changes, on changes of their pods, and on any node change;
//! pods are read with a consistent list so a reconcile never misses the pods the previous one
//! created.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodSpec, Toleration,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

use super::runtime::Context;
use crate::controllers::events::{ObjectRef as EventRef, Recorder};
use crate::scheduler::filter::{node_selector_matches, untolerated_taint};

pub const REVISION_LABEL: &str = "controller-revision-hash";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("daemonset {0} has no namespace or name")]
    Unnamed(String),
    #[error("listing the pods of daemonset {ds} failed: {source}")]
    List { ds: String, source: kube::Error },
    #[error("{action} pod for daemonset {ds} failed: {source}")]
    Write {
        ds: String,
        action: &'static str,
        source: kube::Error,
    },
}

struct State {
    ctx: Context,
    nodes: Store<Node>,
    recorder: Recorder,
}

pub async fn run(ctx: Context) {
    let (nodes, writer) = reflector::store();
    let node_changes = reflector::reflector(
        writer,
        watcher(
            Api::<Node>::all(ctx.client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .touched_objects()
    .filter_map(|r| async move { r.ok().map(|_| ()) });
    let state = Arc::new(State {
        recorder: ctx.events.named("daemonset-controller"),
        ctx: ctx.clone(),
        nodes,
    });
    Controller::new(
        Api::<DaemonSet>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    // Owner references are all the mapping reads: skip decoding pod specs and statuses.
    .owns(
        Api::<PartialObjectMeta<Pod>>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .reconcile_all_on(node_changes)
    .run(reconcile, error_policy, state)
    .for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!("daemonset controller: {e}");
        }
    })
    .await;
}

fn error_policy(_ds: Arc<DaemonSet>, err: &Error, _s: Arc<State>) -> Action {
    tracing::warn!("{err}");
    Action::requeue(Duration::from_secs(5))
}

/// FNV-1a of the template: stable across builds, so an upgrade does not roll every daemon.
pub fn template_hash(ds: &DaemonSet) -> String {
    let bytes = ds
        .spec
        .as_ref()
        .and_then(|s| serde_json::to_vec(&s.template).ok())
        .unwrap_or_default();
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    // Kubernetes' SafeEncodeString alphabet: no vowels, no look-alikes.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut out = String::new();
    let mut v = u64::from(h);
    while v > 0 || out.is_empty() {
        out.push(ALPHABET[(v % ALPHABET.len() as u64) as usize] as char);
        v /= ALPHABET.len() as u64;
    }
    out
}

/// The tolerations Kubernetes adds to every daemon pod.
pub fn daemon_tolerations(spec: &PodSpec) -> Vec<Toleration> {
    let mut out = spec.tolerations.clone().unwrap_or_default();
    let mut add = |key: &str, effect: &str| {
        let present = out.iter().any(|t| {
            t.key.as_deref() == Some(key) && t.effect.as_deref().is_none_or(|e| e == effect)
        });
        if !present {
            out.push(Toleration {
                key: Some(key.into()),
                operator: Some("Exists".into()),
                effect: Some(effect.into()),
                ..Default::default()
            });
        }
    };
    add("node.kubernetes.io/not-ready", "NoExecute");
    add("node.kubernetes.io/unreachable", "NoExecute");
    add("node.kubernetes.io/disk-pressure", "NoSchedule");
    add("node.kubernetes.io/memory-pressure", "NoSchedule");
    add("node.kubernetes.io/pid-pressure", "NoSchedule");
    add("node.kubernetes.io/unschedulable", "NoSchedule");
    if spec.host_network == Some(true) {
        add("node.kubernetes.io/network-unavailable", "NoSchedule");
    }
    out
}

/// Whether the daemon should run on `node` (nodeShouldRunDaemonPod).
pub fn should_run(spec: &PodSpec, node: &Node) -> bool {
    let name = node.metadata.name.as_deref().unwrap_or("");
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|s| s.node_selector_terms.as_slice());
    if !node_selector_matches(
        spec.node_selector.as_ref().unwrap_or(&empty),
        required,
        name,
        labels,
    ) {
        return false;
    }
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    untolerated_taint(&taints, &daemon_tolerations(spec)).is_none()
}

/// The node a daemon pod is for: its nodeName, or the node its required affinity names.
pub fn target_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(n.clone());
    }
    spec.affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|r| r.key == "metadata.name" && r.operator == "In")
        .and_then(|r| r.values.as_ref()?.first().cloned())
}

/// The pod to create for `node`.
pub fn daemon_pod(ds: &DaemonSet, node: &str, hash: &str) -> Pod {
    let template = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let mut spec = template.spec.clone().unwrap_or_default();
    spec.tolerations = Some(daemon_tolerations(&spec));
    let mut affinity = spec.affinity.take().unwrap_or_default();
    let mut node_affinity = affinity.node_affinity.take().unwrap_or_default();
    node_affinity.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![NodeSelectorTerm {
            match_fields: Some(vec![NodeSelectorRequirement {
                key: "metadata.name".into(),
                operator: "In".into(),
                values: Some(vec![node.to_owned()]),
            }]),
            match_expressions: None,
        }],
    });
    spec.affinity = Some(Affinity {
        node_affinity: Some(NodeAffinity { ..node_affinity }),
        ..affinity
    });
    let mut meta = template.metadata.unwrap_or_default();
    let name = ds.metadata.name.clone().unwrap_or_default();
    meta.name = None;
    meta.generate_name = Some(format!("{name}-"));
    meta.namespace = ds.metadata.namespace.clone();
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .insert(REVISION_LABEL.into(), hash.to_owned());
    meta.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "apps/v1".into(),
            kind: "DaemonSet".into(),
            name,
            uid: ds.metadata.uid.clone().unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        },
    ]);
    Pod {
        metadata: meta,
        spec: Some(spec),
        status: None,
    }
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

/// Ready for at least `min_ready` seconds.
fn is_available(pod: &Pod, min_ready: i64, now: jiff::Timestamp) -> bool {
    if !is_ready(pod) {
        return false;
    }
    if min_ready <= 0 {
        return true;
    }
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| c.last_transition_time.as_ref())
        .is_none_or(|t| {
            t.0.checked_add(jiff::SignedDuration::from_secs(min_ready))
                .is_ok_and(|at| at <= now)
        })
}

/// maxUnavailable as a count (percentages of the desired number, rounded up; at least 1).
pub fn max_unavailable(ds: &DaemonSet, desired: i32) -> i32 {
    let v = ds
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.rolling_update.as_ref())
        .and_then(|r| r.max_unavailable.clone());
    let n = match v {
        None => 1,
        Some(IntOrString::Int(i)) => i,
        Some(IntOrString::String(s)) => {
            let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            ((i64::from(desired) * pct + 99) / 100) as i32
        }
    };
    n.max(1)
}

/// What one reconcile decides.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub create_on: Vec<String>,
    pub delete: Vec<String>,
    pub status: DaemonStatus,
}

#[derive(Debug, Default, PartialEq, Clone)]
pub struct DaemonStatus {
    pub desired: i32,
    pub current: i32,
    pub misscheduled: i32,
    pub ready: i32,
    pub available: i32,
    pub updated: i32,
}

/// Decides creations, deletions and status from the nodes and the daemon's pods.
pub fn plan(ds: &DaemonSet, nodes: &[Arc<Node>], pods: &[Pod], now: jiff::Timestamp) -> Plan {
    let hash = template_hash(ds);
    let spec = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .unwrap_or_default();
    let min_ready = ds
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .map_or(0, i64::from);
    let on_delete = ds
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.type_.as_deref())
        == Some("OnDelete");
    let mut by_node: HashMap<String, Vec<&Pod>> = HashMap::new();
    let mut out = Plan::default();
    let pod_name = |p: &Pod| p.metadata.name.clone().unwrap_or_default();
    for p in pods {
        let failed = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed");
        if failed && p.metadata.deletion_timestamp.is_none() {
            // Failed daemon pods are replaced.
            out.delete.push(pod_name(p));
            continue;
        }
        match target_node(p) {
            Some(n) => by_node.entry(n).or_default().push(p),
            None => out.delete.push(pod_name(p)),
        }
    }
    let hash_of = |p: &Pod| {
        p.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(REVISION_LABEL).cloned())
            .unwrap_or_default()
    };
    let mut old_available = Vec::new();
    let mut unavailable = 0;
    let mut st = DaemonStatus::default();
    for node in nodes {
        let name = node.metadata.name.clone().unwrap_or_default();
        let mut here = by_node.remove(&name).unwrap_or_default();
        let eligible = should_run(&spec, node);
        if !eligible {
            if !here.is_empty() {
                st.misscheduled += 1;
            }
            out.delete.extend(
                here.iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .map(|p| pod_name(p)),
            );
            continue;
        }
        st.desired += 1;
        let (live, terminating): (Vec<&Pod>, Vec<&Pod>) = here
            .drain(..)
            .partition(|p| p.metadata.deletion_timestamp.is_none());
        if live.is_empty() {
            unavailable += 1;
            // Wait for a terminating pod to go before starting its successor.
            if terminating.is_empty() {
                out.create_on.push(name);
            }
            continue;
        }
        st.current += 1;
        // Keep one pod per node: the newest revision if there is one, else the oldest pod.
        let mut live = live;
        live.sort_by_key(|p| {
            (
                hash_of(p) != hash,
                p.metadata.creation_timestamp.as_ref().map(|t| t.0),
            )
        });
        out.delete.extend(live[1..].iter().map(|p| pod_name(p)));
        let pod = live[0];
        let available = is_available(pod, min_ready, now);
        if is_ready(pod) {
            st.ready += 1;
        }
        if available {
            st.available += 1;
        } else {
            unavailable += 1;
        }
        if hash_of(pod) == hash {
            st.updated += 1;
        } else if !on_delete {
            if available {
                old_available.push(pod_name(pod));
            } else {
                // Replacing a pod that is not serving costs no availability.
                out.delete.push(pod_name(pod));
            }
        }
    }
    // Pods on nodes that no longer exist.
    for pods in by_node.values() {
        out.delete.extend(
            pods.iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .map(|p| pod_name(p)),
        );
    }
    let budget = (max_unavailable(ds, st.desired) - unavailable).max(0) as usize;
    out.delete.extend(old_available.into_iter().take(budget));
    out.status = st;
    out
}

async fn reconcile(ds: Arc<DaemonSet>, s: Arc<State>) -> Result<Action, Error> {
    let (Some(ns), Some(name)) = (ds.metadata.namespace.clone(), ds.metadata.name.clone()) else {
        return Err(Error::Unnamed(format!("{:?}", ds.metadata.name)));
    };
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let key = format!("{ns}/{name}");
    let uid = ds.metadata.uid.clone().unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(s.ctx.client.clone(), &ns);
    let selector = ds
        .spec
        .as_ref()
        .and_then(|sp| sp.selector.match_labels.clone())
        .unwrap_or_default()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let listed = pods_api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| Error::List {
            ds: key.clone(),
            source,
        })?;
    let pods: Vec<Pod> = listed
        .items
        .into_iter()
        .filter(|p| {
            p.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.controller == Some(true) && o.uid == uid)
        })
        .collect();
    let nodes = s.nodes.state();
    let now = jiff::Timestamp::now();
    let p = plan(&ds, &nodes, &pods, now);
    let hash = template_hash(&ds);
    let about = || EventRef {
        kind: "DaemonSet",
        api_version: "apps/v1",
        namespace: ns.clone(),
        name: name.clone(),
        uid: uid.clone(),
    };
    for node in &p.create_on {
        let pod = daemon_pod(&ds, node, &hash);
        let created = pods_api
            .create(&PostParams::default(), &pod)
            .await
            .map_err(|source| Error::Write {
                ds: key.clone(),
                action: "creating a",
                source,
            })?;
        let pod_name = created.metadata.name.unwrap_or_default();
        s.recorder.emit(
            about(),
            "Normal",
            "SuccessfulCreate",
            &format!("Created pod: {pod_name}"),
        );
    }
    for pod_name in &p.delete {
        match pods_api.delete(pod_name, &DeleteParams::default()).await {
            Ok(_) => s.recorder.emit(
                about(),
                "Normal",
                "SuccessfulDelete",
                &format!("Deleted pod: {pod_name}"),
            ),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(source) => {
                return Err(Error::Write {
                    ds: key,
                    action: "deleting a",
                    source,
                });
            }
        }
    }
    let st = &p.status;
    let status = json!({"status": {
        "desiredNumberScheduled": st.desired,
        "currentNumberScheduled": st.current,
        "numberMisscheduled": st.misscheduled,
        "numberReady": st.ready,
        "numberAvailable": st.available,
        "numberUnavailable": (st.desired - st.available).max(0),
        "updatedNumberScheduled": st.updated,
        "observedGeneration": ds.metadata.generation,
    }});
    let current = ds.status.as_ref().map(|c| {
        json!({"status": {
            "desiredNumberScheduled": c.desired_number_scheduled,
            "currentNumberScheduled": c.current_number_scheduled,
            "numberMisscheduled": c.number_misscheduled,
            "numberReady": c.number_ready,
            "numberAvailable": c.number_available.unwrap_or(0),
            "numberUnavailable": c.number_unavailable.unwrap_or(0),
            "updatedNumberScheduled": c.updated_number_scheduled.unwrap_or(0),
            "observedGeneration": c.observed_generation,
        }})
    });
    if current.as_ref() != Some(&status) {
        let ds_api: Api<DaemonSet> = Api::namespaced(s.ctx.client.clone(), &ns);
        ds_api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
            .await
            .map_err(|source| Error::Write {
                ds: key.clone(),
                action: "updating the status of the",
                source,
            })?;
    }
    // minReadySeconds passing changes availability without any event.
    let min_ready = ds
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    if min_ready > 0 && st.ready > st.available {
        return Ok(Action::requeue(Duration::from_secs(
            u64::try_from(min_ready).unwrap_or(1),
        )));
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ds(extra: serde_json::Value) -> DaemonSet {
        let mut v = json!({
            "metadata": {"name": "agent", "namespace": "kube-system", "uid": "ds-1", "generation": 1},
            "spec": {
                "selector": {"matchLabels": {"app": "agent"}},
                "template": {"metadata": {"labels": {"app": "agent"}},
                             "spec": {"containers": [{"name": "c", "image": "i"}]}},
                "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            },
        });
        if let serde_json::Value::Object(e) = extra {
            for (k, val) in e {
                v["spec"]["template"]["spec"][k] = val;
            }
        }
        serde_json::from_value(v).unwrap()
    }

    fn node(name: &str, labels: serde_json::Value, taints: serde_json::Value) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "labels": labels},
                "spec": {"taints": taints},
            }))
            .unwrap(),
        )
    }

    fn pod_for(d: &DaemonSet, node: &str, name: &str, ready: bool, hash: &str) -> Pod {
        let mut p = daemon_pod(d, node, hash);
        p.metadata.name = Some(name.into());
        p.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::from_second(1000).unwrap(),
        ));
        p.status = Some(
            serde_json::from_value(json!({"conditions": [{"type": "Ready",
                "status": if ready {"True"} else {"False"}}]}))
            .unwrap(),
        );
        p
    }

    #[test]
    fn one_pod_goes_to_every_eligible_node() {
        let d = ds(json!({"nodeSelector": {"role": "edge"}}));
        let nodes = vec![
            node("a", json!({"role": "edge"}), json!([])),
            node("b", json!({"role": "core"}), json!([])),
            node(
                "c",
                json!({"role": "edge"}),
                json!([{"key": "x", "effect": "NoSchedule"}]),
            ),
            // Unreachable and cordoned nodes still get daemons.
            node(
                "d",
                json!({"role": "edge"}),
                json!([
                {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"},
                {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]),
            ),
        ];
        let p = plan(&d, &nodes, &[], jiff::Timestamp::now());
        assert_eq!(p.create_on, vec!["a", "d"]);
        assert_eq!(p.status.desired, 2);
        assert_eq!(p.status.current, 0);
    }

    #[test]
    fn daemon_pods_are_pinned_to_their_node_and_tolerate_node_problems() {
        let d = ds(json!({}));
        let p = daemon_pod(&d, "n1", "h1");
        assert_eq!(target_node(&p).as_deref(), Some("n1"));
        assert_eq!(p.metadata.generate_name.as_deref(), Some("agent-"));
        assert_eq!(p.metadata.labels.as_ref().unwrap()[REVISION_LABEL], "h1");
        let keys: Vec<String> = p
            .spec
            .unwrap()
            .tolerations
            .unwrap()
            .into_iter()
            .filter_map(|t| t.key)
            .collect();
        for k in [
            "node.kubernetes.io/unreachable",
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unschedulable",
        ] {
            assert!(keys.iter().any(|x| x == k), "{k} in {keys:?}");
        }
    }

    #[test]
    fn pods_on_ineligible_or_vanished_nodes_and_duplicates_are_deleted() {
        let d = ds(json!({"nodeSelector": {"role": "edge"}}));
        let h = template_hash(&d);
        let nodes = vec![
            node("a", json!({"role": "edge"}), json!([])),
            node("b", json!({"role": "core"}), json!([])),
        ];
        let pods = vec![
            pod_for(&d, "a", "a-1", true, &h),
            pod_for(&d, "a", "a-2", true, &h),
            pod_for(&d, "b", "b-1", true, &h),
            pod_for(&d, "gone", "gone-1", true, &h),
        ];
        let mut p = plan(&d, &nodes, &pods, jiff::Timestamp::now());
        p.delete.sort();
        assert_eq!(p.delete, vec!["a-2", "b-1", "gone-1"]);
        assert!(p.create_on.is_empty());
        assert_eq!(p.status.misscheduled, 1);
        assert_eq!(p.status.ready, 1);
    }

    #[test]
    fn rolling_update_replaces_at_most_max_unavailable_ready_pods_at_a_time() {
        let d = ds(json!({}));
        let nodes: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|n| node(n, json!({}), json!([])))
            .collect();
        let old: Vec<Pod> = ["a", "b", "c"]
            .iter()
            .map(|n| pod_for(&d, n, &format!("{n}-old"), true, "old"))
            .collect();
        let p = plan(&d, &nodes, &old, jiff::Timestamp::now());
        assert_eq!(p.delete.len(), 1);
        assert_eq!(p.status.updated, 0);
        // One node is between pods (its new pod not ready yet): nothing more goes down.
        let h = template_hash(&d);
        let mut mid = old.clone();
        mid[0] = pod_for(&d, "a", "a-new", false, &h);
        let p = plan(&d, &nodes, &mid, jiff::Timestamp::now());
        assert!(p.delete.is_empty(), "{:?}", p.delete);
        assert_eq!(p.status.updated, 1);
        // An old pod that is not ready anyway is replaced without waiting.
        let mut broken = old.clone();
        broken[2] = pod_for(&d, "c", "c-old", false, "old");
        let p = plan(&d, &nodes, &broken, jiff::Timestamp::now());
        assert_eq!(p.delete, vec!["c-old"]);
    }

    #[test]
    fn percentages_of_max_unavailable_round_up() {
        let mut d = ds(json!({}));
        d.spec
            .as_mut()
            .unwrap()
            .update_strategy
            .as_mut()
            .unwrap()
            .rolling_update
            .as_mut()
            .unwrap()
            .max_unavailable = Some(IntOrString::String("25%".into()));
        assert_eq!(max_unavailable(&d, 10), 3);
        assert_eq!(max_unavailable(&d, 1), 1);
    }
}
