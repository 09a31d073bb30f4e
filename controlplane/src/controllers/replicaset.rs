//! The ReplicaSet controller: keeps `spec.replicas` pods from the template running.
//!
//! Each pass lists the namespace's pods with a consistent read (the API server's list waits
//! for its watch cache to catch up with the store), so the pods this controller created in an
//! earlier pass are always seen: no expectations bookkeeping is needed to avoid over-creating.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use serde_json::json;

use super::events::ObjectRef as EventRef;
use super::podutil::{self, controller_of, is_active, is_ready, parse_selector};
use super::runtime::Context;

const COMPONENT: &str = "replicaset-controller";
/// At most this many pods are created or deleted in one pass (Kubernetes' burstReplicas).
const BURST: usize = 500;
/// A periodic pass repairs anything a missed event left behind.
const RESYNC: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} failed: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("replica set has no namespace")]
    NoNamespace,
}

fn api_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Api { what, source }
}

pub async fn run(ctx: Context) {
    let client = ctx.client.clone();
    let sets: kube::Api<ReplicaSet> = kube::Api::all(client.clone());
    // The mapping reads only metadata: skip decoding every pod's spec and status.
    let pods: kube::Api<PartialObjectMeta<Pod>> = kube::Api::all(client);
    let controller = Controller::new(sets, watcher::Config::default());
    let store = controller.store();
    // A pod wakes its controller, or, when it has none, every replica set that could adopt it.
    let mapper = move |pod: PartialObjectMeta<Pod>| -> Vec<ObjectRef<ReplicaSet>> {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        if let Some(owner) = controller_of(&pod.metadata) {
            if owner.kind == "ReplicaSet" {
                return vec![ObjectRef::new(&owner.name).within(&ns)];
            }
            return Vec::new();
        }
        let labels = podutil::labels_of(&pod.metadata);
        store
            .state()
            .iter()
            .filter(|rs| rs.metadata.namespace.as_deref() == Some(ns.as_str()))
            .filter(|rs| {
                parse_selector(rs.spec.as_ref().map(|s| &s.selector))
                    .is_some_and(|s| s.matches(&labels))
            })
            .map(|rs| ObjectRef::from_obj(rs.as_ref()))
            .collect()
    };
    controller
        .watches(pods, watcher::Config::default(), mapper)
        .run(reconcile, error_policy, Arc::new(ctx))
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!("replicaset reconcile: {e}");
            }
        })
        .await;
}

fn error_policy(_rs: Arc<ReplicaSet>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!("replicaset controller: {err}");
    Action::requeue(Duration::from_secs(2))
}

async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = rs.metadata.namespace.clone().ok_or(Error::NoNamespace)?;
    let name = rs.metadata.name.clone().unwrap_or_default();
    let uid = rs.metadata.uid.clone().unwrap_or_default();
    let pods_api: kube::Api<Pod> = kube::Api::namespaced(ctx.client.clone(), &ns);
    let sets: kube::Api<ReplicaSet> = kube::Api::namespaced(ctx.client.clone(), &ns);
    // The watch event may be stale: act on the current object.
    let Some(rs) = sets
        .get_opt(&name)
        .await
        .map_err(api_err(format!("reading replica set {ns}/{name}")))?
    else {
        return Ok(Action::await_change());
    };
    if rs.metadata.uid.as_deref() != Some(uid.as_str()) {
        return Ok(Action::await_change());
    }
    let spec = rs.spec.clone().unwrap_or_default();
    let selector = parse_selector(Some(&spec.selector));
    let all = pods_api
        .list(&ListParams::default())
        .await
        .map_err(api_err(format!("listing pods in {ns}")))?
        .items;

    let deleting = rs.metadata.deletion_timestamp.is_some();
    let mut owned: Vec<Pod> = Vec::new();
    for pod in all {
        let labels = podutil::labels_of(&pod.metadata);
        let matches = selector.as_ref().is_some_and(|s| s.matches(&labels));
        match controller_of(&pod.metadata) {
            Some(r) if r.uid == uid => {
                if matches || deleting {
                    owned.push(pod);
                } else {
                    release(&pods_api, &pod, &uid).await?;
                }
            }
            Some(_) => {}
            None => {
                if matches
                    && !deleting
                    && pod.metadata.deletion_timestamp.is_none()
                    && adopt(&pods_api, &rs, &pod).await?
                {
                    owned.push(pod);
                }
            }
        }
    }
    let active: Vec<Pod> = owned.into_iter().filter(is_active).collect();

    let mut failure = None;
    let mut more = false;
    if !deleting {
        let want = usize::try_from(spec.replicas.unwrap_or(1).max(0)).unwrap_or(0);
        more = active.len().abs_diff(want) > BURST;
        if active.len() < want {
            let n = (want - active.len()).min(BURST);
            if let Err(e) = create_pods(&ctx, &pods_api, &rs, n).await {
                failure = Some(e.to_string());
            }
        } else if active.len() > want {
            let n = (active.len() - want).min(BURST);
            delete_pods(&ctx, &pods_api, &rs, &active, n).await?;
        }
    }

    let now = podutil::now();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let (status, wait) = compute_status(&rs, &active, min_ready, now, failure.as_deref());
    if status_json(&rs.status.clone().unwrap_or_default()) != status_json(&status) {
        let patch = json!({"status": status_json(&status)});
        sets.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(api_err(format!(
                "updating status of replica set {ns}/{name}"
            )))?;
    }
    if let Some(msg) = failure {
        tracing::warn!(replicaset = name, "creating pods failed: {msg}");
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    if more {
        // Past the burst limit: carry on right away rather than wait for pod events.
        return Ok(Action::requeue(Duration::from_millis(100)));
    }
    // Wake up when a ready pod becomes available.
    Ok(match wait {
        Some(secs) => Action::requeue(Duration::from_secs(secs.max(1).unsigned_abs())),
        None => Action::requeue(RESYNC),
    })
}

/// Status fields written explicitly (zeros included) so a merge patch resets them; also the
/// form statuses are compared in, so an unchanged status is not rewritten.
fn status_json(s: &ReplicaSetStatus) -> serde_json::Value {
    json!({
        "replicas": s.replicas,
        "fullyLabeledReplicas": s.fully_labeled_replicas.unwrap_or(0),
        "readyReplicas": s.ready_replicas.unwrap_or(0),
        "availableReplicas": s.available_replicas.unwrap_or(0),
        "observedGeneration": s.observed_generation,
        "conditions": s.conditions.clone().unwrap_or_default(),
    })
}

/// The status of a replica set with these active pods, and in how many seconds the next
/// ready pod becomes available (if any is waiting for minReadySeconds).
fn compute_status(
    rs: &ReplicaSet,
    active: &[Pod],
    min_ready: i32,
    now: Timestamp,
    failure: Option<&str>,
) -> (ReplicaSetStatus, Option<i64>) {
    let template_labels = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.metadata.as_ref())
        .map(podutil::labels_of)
        .unwrap_or_default();
    let count = |f: &dyn Fn(&Pod) -> bool| {
        i32::try_from(active.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
    };
    let fully = count(&|p| {
        let l = podutil::labels_of(&p.metadata);
        template_labels.iter().all(|(k, v)| l.get(k) == Some(v))
    });
    let ready = count(&|p| is_ready(p));
    let available = count(&|p| podutil::is_available(p, min_ready, now));
    let wait = active
        .iter()
        .filter_map(|p| podutil::until_available(p, min_ready, now))
        .filter(|s| *s > 0)
        .min();
    let old = rs.status.clone().unwrap_or_default();
    let mut conditions: Vec<_> = old
        .conditions
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.type_ != "ReplicaFailure")
        .collect();
    if let Some(msg) = failure {
        let prev = old
            .conditions
            .as_ref()
            .and_then(|cs| cs.iter().find(|c| c.type_ == "ReplicaFailure"));
        conditions.push(k8s_openapi::api::apps::v1::ReplicaSetCondition {
            type_: "ReplicaFailure".into(),
            status: "True".into(),
            reason: Some("FailedCreate".into()),
            message: Some(msg.to_owned()),
            last_transition_time: prev.and_then(|c| c.last_transition_time.clone()).or(Some(
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now),
            )),
        });
    }
    let status = ReplicaSetStatus {
        replicas: i32::try_from(active.len()).unwrap_or(i32::MAX),
        fully_labeled_replicas: Some(fully),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        observed_generation: rs.metadata.generation,
        conditions: (!conditions.is_empty()).then_some(conditions),
        ..Default::default()
    };
    (status, wait)
}

/// Takes an orphan: adds this replica set as its controller. False when someone else won.
async fn adopt(api: &kube::Api<Pod>, rs: &ReplicaSet, pod: &Pod) -> Result<bool, Error> {
    let mut refs = pod.metadata.owner_references.clone().unwrap_or_default();
    refs.push(podutil::controller_ref(
        &rs.metadata,
        "apps/v1",
        "ReplicaSet",
    ));
    set_owner_refs(api, pod, refs, "adopting").await
}

/// Drops this replica set's reference from a pod that no longer matches its selector.
async fn release(api: &kube::Api<Pod>, pod: &Pod, uid: &str) -> Result<(), Error> {
    let mut refs = pod.metadata.owner_references.clone().unwrap_or_default();
    refs.retain(|r| r.uid != uid);
    set_owner_refs(api, pod, refs, "releasing")
        .await
        .map(|_| ())
}

/// Writes a pod's ownerReferences. The uid and resourceVersion preconditions make this a
/// compare-and-swap: the pod must be the one we saw. False when it changed or went away.
async fn set_owner_refs(
    api: &kube::Api<Pod>,
    pod: &Pod,
    refs: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
    doing: &str,
) -> Result<bool, Error> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let patch = json!({"metadata": {
        "ownerReferences": refs,
        "uid": pod.metadata.uid,
        "resourceVersion": pod.metadata.resource_version,
    }});
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(false),
        Err(e) => Err(api_err(format!("{doing} pod {name}"))(e)),
    }
}

/// A pod from the replica set's template.
fn pod_from_template(rs: &ReplicaSet) -> Pod {
    let template = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    let tmeta = template.metadata.unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!(
                "{}-",
                rs.metadata.name.as_deref().unwrap_or_default()
            )),
            namespace: rs.metadata.namespace.clone(),
            labels: tmeta.labels,
            annotations: tmeta.annotations,
            finalizers: tmeta.finalizers,
            owner_references: Some(vec![podutil::controller_ref(
                &rs.metadata,
                "apps/v1",
                "ReplicaSet",
            )]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// Creates `n` pods in growing batches (1, 2, 4, ...), stopping at the first failure so a
/// quota or validation error costs one request, not `n`.
async fn create_pods(
    ctx: &Context,
    api: &kube::Api<Pod>,
    rs: &ReplicaSet,
    n: usize,
) -> Result<(), Error> {
    let pod = pod_from_template(rs);
    let rs_name = rs.metadata.name.clone().unwrap_or_default();
    let involved = EventRef::of(&rs.metadata, "apps/v1", "ReplicaSet");
    let events = ctx.events.named(COMPONENT);
    let pp = PostParams::default();
    let mut done = 0;
    let mut batch = 1;
    while done < n {
        let size = batch.min(n - done);
        let results = futures::future::join_all((0..size).map(|_| api.create(&pp, &pod))).await;
        let mut first_err = None;
        for r in results {
            match r {
                Ok(p) => {
                    events.emit(
                        involved.clone(),
                        "Normal",
                        "SuccessfulCreate",
                        &format!(
                            "Created pod: {}",
                            p.metadata.name.as_deref().unwrap_or_default()
                        ),
                    );
                }
                Err(e) => {
                    if first_err.is_none() {
                        events.emit(
                            involved.clone(),
                            "Warning",
                            "FailedCreate",
                            &format!("Error creating: {e}"),
                        );
                        first_err = Some(e);
                    }
                }
            }
        }
        if let Some(e) = first_err {
            return Err(api_err(format!("creating pods for replica set {rs_name}"))(
                e,
            ));
        }
        done += size;
        batch *= 2;
    }
    Ok(())
}

async fn delete_pods(
    ctx: &Context,
    api: &kube::Api<Pod>,
    rs: &ReplicaSet,
    active: &[Pod],
    n: usize,
) -> Result<(), Error> {
    let involved = EventRef::of(&rs.metadata, "apps/v1", "ReplicaSet");
    let events = ctx.events.named(COMPONENT);
    for pod in pods_to_delete(active, n, podutil::now()) {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let dp = DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&name, &dp).await {
            Ok(_) => {
                events.emit(
                    involved.clone(),
                    "Normal",
                    "SuccessfulDelete",
                    &format!("Deleted pod: {name}"),
                );
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => return Err(api_err(format!("deleting pod {name}"))(e)),
        }
    }
    Ok(())
}

/// The `n` pods to delete first, in Kubernetes' order: unscheduled before scheduled, pending
/// before unknown before running, not ready before ready, pods doubled up on a node before
/// lonely ones, ready for less time before longer, more restarts before fewer, newer before
/// older.
pub fn pods_to_delete(active: &[Pod], n: usize, now: Timestamp) -> Vec<&Pod> {
    let mut per_node: HashMap<&str, usize> = HashMap::new();
    for p in active {
        if let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            *per_node.entry(node).or_default() += 1;
        }
    }
    let key = |p: &Pod| {
        let node = p.spec.as_ref().and_then(|s| s.node_name.as_deref());
        let phase = match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
            Some("Pending") | None => 0,
            Some("Unknown") => 1,
            Some("Running") => 2,
            _ => 0,
        };
        let colocated = node.and_then(|n| per_node.get(n)).copied().unwrap_or(0);
        // Longer-ready pods sort later; a missing time counts as ready just now.
        let ready_for = podutil::ready_since(p)
            .map(|t| now.duration_since(t).as_secs())
            .unwrap_or(0);
        let restarts: i32 = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map(|cs| cs.iter().map(|c| c.restart_count).sum())
            .unwrap_or(0);
        let created = p
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second())
            .unwrap_or(0);
        (
            node.is_some(),
            phase,
            is_ready(p),
            std::cmp::Reverse(colocated),
            ready_for,
            std::cmp::Reverse(restarts),
            std::cmp::Reverse(created),
        )
    };
    let mut ranked: Vec<&Pod> = active.iter().collect();
    ranked.sort_by_cached_key(|p| key(p));
    ranked.truncate(n);
    ranked
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pod(name: &str, node: Option<&str>, ready: bool, created: &str) -> Pod {
        let mut v = json!({
            "metadata": {"name": name, "creationTimestamp": created, "labels": {"app": "a"}},
            "spec": {"containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": if node.is_some() {"Running"} else {"Pending"},
                "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"},
                    "lastTransitionTime": "2024-01-01T00:00:00Z"}]}
        });
        if let Some(n) = node {
            v["spec"]["nodeName"] = json!(n);
        }
        serde_json::from_value(v).unwrap()
    }

    fn names(pods: Vec<&Pod>) -> Vec<&str> {
        pods.iter()
            .map(|p| p.metadata.name.as_deref().unwrap())
            .collect()
    }

    #[test]
    fn scale_down_deletes_unscheduled_then_unready_then_newest_pods_first() {
        let now: Timestamp = "2024-01-01T01:00:00Z".parse().unwrap();
        let pods = vec![
            pod("old-ready", Some("n1"), true, "2024-01-01T00:00:00Z"),
            pod("new-ready", Some("n2"), true, "2024-01-01T00:10:00Z"),
            pod("unready", Some("n3"), false, "2024-01-01T00:00:00Z"),
            pod("unscheduled", None, false, "2024-01-01T00:00:00Z"),
        ];
        assert_eq!(
            names(pods_to_delete(&pods, 3, now)),
            ["unscheduled", "unready", "new-ready"]
        );
    }

    #[test]
    fn scale_down_prefers_pods_doubled_up_on_a_node() {
        let now: Timestamp = "2024-01-01T01:00:00Z".parse().unwrap();
        let pods = vec![
            pod("a", Some("n1"), true, "2024-01-01T00:00:00Z"),
            pod("b", Some("n1"), true, "2024-01-01T00:00:00Z"),
            pod("alone", Some("n2"), true, "2024-01-01T00:30:00Z"),
        ];
        let first = names(pods_to_delete(&pods, 1, now));
        assert_ne!(first, ["alone"]);
    }

    #[test]
    fn status_counts_ready_and_available_pods_and_waits_for_min_ready_seconds() {
        let now: Timestamp = "2024-01-01T00:00:05Z".parse().unwrap();
        let rs: ReplicaSet = serde_json::from_value(json!({
            "metadata": {"name": "rs", "generation": 4},
            "spec": {"replicas": 3, "minReadySeconds": 10, "selector": {"matchLabels": {"app": "a"}},
                "template": {"metadata": {"labels": {"app": "a", "tier": "x"}}}}
        }))
        .unwrap();
        let pods = vec![
            pod("a", Some("n1"), true, "2024-01-01T00:00:00Z"),
            pod("b", Some("n1"), false, "2024-01-01T00:00:00Z"),
        ];
        let (s, wait) = compute_status(&rs, &pods, 10, now, None);
        assert_eq!(s.replicas, 2);
        assert_eq!(s.ready_replicas, Some(1));
        assert_eq!(s.available_replicas, Some(0));
        assert_eq!(s.fully_labeled_replicas, Some(0));
        assert_eq!(s.observed_generation, Some(4));
        assert_eq!(wait, Some(5));
        let (s, wait) = compute_status(&rs, &pods, 0, now, None);
        assert_eq!(s.available_replicas, Some(1));
        assert_eq!(wait, None);
    }

    #[test]
    fn pods_from_the_template_are_controlled_by_the_replica_set() {
        let rs: ReplicaSet = serde_json::from_value(json!({
            "metadata": {"name": "web-abc", "namespace": "ns", "uid": "u1"},
            "spec": {"selector": {"matchLabels": {"app": "a"}},
                "template": {"metadata": {"labels": {"app": "a"}},
                    "spec": {"containers": [{"name": "c", "image": "i"}]}}}
        }))
        .unwrap();
        let p = pod_from_template(&rs);
        assert_eq!(p.metadata.generate_name.as_deref(), Some("web-abc-"));
        let r = controller_of(&p.metadata).unwrap();
        assert_eq!((r.uid.as_str(), r.block_owner_deletion), ("u1", Some(true)));
        assert_eq!(p.spec.unwrap().containers[0].image.as_deref(), Some("i"));
    }
}
