//! Workload controllers (ReplicaSet, Deployment) driven by the real kubectl, with the test
//! playing scheduler and kubelet: it binds pending pods to a registered node, marks bound pods
//! Running and Ready, and finishes graceful deletions, as a node agent would.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Server, need};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::json;

async fn client(s: &Server) -> kube::Client {
    let kc = Kubeconfig::read_from(&s.kubeconfig).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    kube::Client::try_from(cfg).unwrap()
}

/// Pods with this image never become ready (a broken release).
const BROKEN: &str = "skiff.local/netexec:broken";

fn image(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn hash(p: &Pod) -> String {
    p.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("pod-template-hash").cloned())
        .unwrap_or_default()
}

/// One pass of the fake node agent over the namespace.
async fn kubelet_pass(pods: &Api<Pod>) {
    let Ok(list) = pods.list(&Default::default()).await else {
        return;
    };
    for p in list.items {
        let name = p.metadata.name.clone().unwrap();
        let bound = p.spec.as_ref().and_then(|s| s.node_name.clone()).is_some();
        if p.metadata.deletion_timestamp.is_some() {
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            };
            let _ = pods.delete(&name, &dp).await;
        } else if !bound {
            bind(pods, &name).await;
        } else if !is_ready(&p) && image(&p) != BROKEN {
            mark_ready(pods, &name).await;
        }
    }
}

/// Plays the scheduler: binds the pod to n1 through pods/binding.
async fn bind(pods: &Api<Pod>, name: &str) {
    let binding = json!({"apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": name}, "target": {"kind": "Node", "name": "n1"}});
    let _ = pods
        .create_subresource::<_, serde_json::Value>(
            "binding",
            name,
            &PostParams::default(),
            &binding,
        )
        .await;
}

/// Plays the kubelet: the pod runs and has been Ready since now.
async fn mark_ready(pods: &Api<Pod>, name: &str) {
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let status = json!({"status": {"phase": "Running", "podIP": "10.244.0.9",
        "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": now}]}});
    let _ = pods
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await;
}

/// A background task that ends when this is dropped (before the server it talks to stops:
/// a task spinning on a dead server would hold up the runtime's shutdown).
struct Task(tokio::task::JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the fake node agent until the returned handle is dropped.
fn start_kubelet(pods: Api<Pod>) -> Task {
    Task(tokio::spawn(async move {
        loop {
            kubelet_pass(&pods).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }))
}

/// What a watcher saw of the namespace's pods, state by state.
#[derive(Default, Debug)]
struct Seen {
    /// Largest number of live (not terminating) pods.
    max_live: usize,
    /// Smallest number of live ready pods.
    min_ready: usize,
    /// Whether live pods of two templates ever coexisted.
    mixed: bool,
    states: usize,
}

/// Checks every state the pod watch passes through while `armed`.
fn observe(pods: Api<Pod>, armed: Arc<Mutex<Option<Seen>>>) -> Task {
    Task(tokio::spawn(async move {
        let (reader, writer) = reflector::store();
        let mut stream = reflector(writer, watcher(pods, watcher::Config::default()))
            .default_backoff()
            .touched_objects()
            .boxed();
        while let Some(ev) = stream.next().await {
            if ev.is_err() {
                continue;
            }
            let state = reader.state();
            let live: Vec<_> = state
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect();
            let ready = live.iter().filter(|p| is_ready(p)).count();
            let hashes: BTreeSet<String> = live.iter().map(|p| hash(p)).collect();
            if let Some(seen) = armed.lock().unwrap().as_mut() {
                seen.max_live = seen.max_live.max(live.len());
                seen.min_ready = if seen.states == 0 {
                    ready
                } else {
                    seen.min_ready.min(ready)
                };
                seen.mixed |= hashes.len() > 1;
                seen.states += 1;
            }
        }
    }))
}

/// Runs kubectl off the async runtime (it blocks), asserting success.
async fn kubectl(s: &Arc<Server>, args: &[&str]) -> String {
    let s = Arc::clone(s);
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        s.ok(&args)
    })
    .await
    .unwrap()
}

async fn kubectl_fails(s: &Arc<Server>, args: &[&str]) -> String {
    let s = Arc::clone(s);
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        s.fails(&args, None)
    })
    .await
    .unwrap()
}

async fn apply(s: &Arc<Server>, yaml: String) {
    let s = Arc::clone(s);
    tokio::task::spawn_blocking(move || s.apply(&yaml))
        .await
        .unwrap();
}

/// Polls (bounded) until `f` holds.
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn live_pods(pods: &Api<Pod>) -> Vec<Pod> {
    pods.list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

async fn ready_pods(pods: &Api<Pod>, n: usize, image_is: &str) -> bool {
    let live = live_pods(pods).await;
    live.len() == n && live.iter().all(|p| is_ready(p) && image(p) == image_is)
}

fn revision(rs: &ReplicaSet) -> String {
    rs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("deployment.kubernetes.io/revision").cloned())
        .unwrap_or_default()
}

fn start() -> Option<Arc<Server>> {
    if !need("kubectl", &["version", "--client"]) {
        return None;
    }
    let s = Server::start();
    s.register_node("n1", "64", "256Gi");
    Some(Arc::new(s))
}

/// `kubectl create deployment` as YAML: kubectl sends typed creates as protobuf, which this
/// server does not decode yet, so the same object goes through `apply`.
async fn create_deployment(s: &Arc<Server>, args: &[&str]) {
    let mut all = vec!["create", "deployment"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--dry-run=client", "-o", "yaml"]);
    let yaml = kubectl(s, &all).await;
    apply(s, yaml).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_roll_out_scale_update_and_roll_back_like_kubernetes() {
    let Some(s) = start() else { return };
    let c = client(&s).await;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let sets: Api<ReplicaSet> = Api::namespaced(c.clone(), "default");
    let _kubelet = start_kubelet(pods.clone());
    let armed = Arc::new(Mutex::new(None));
    let _observer = observe(pods.clone(), Arc::clone(&armed));

    create_deployment(
        &s,
        &["web", "--image=skiff.local/netexec:v1", "--replicas=3"],
    )
    .await;
    let out = kubectl(&s, &["rollout", "status", "deploy/web", "--timeout=30s"]).await;
    assert!(out.contains("successfully rolled out"), "{out}");
    assert!(ready_pods(&pods, 3, "skiff.local/netexec:v1").await);

    // One replica set named and labelled by the template hash, revision 1, owning the pods.
    let rs = sets.list(&Default::default()).await.unwrap().items;
    assert_eq!(rs.len(), 1);
    let first = rs[0].clone();
    let first_name = first.metadata.name.clone().unwrap();
    let h = first.metadata.labels.as_ref().unwrap()["pod-template-hash"].clone();
    assert_eq!(first_name, format!("web-{h}"));
    assert_eq!(
        first
            .spec
            .as_ref()
            .unwrap()
            .selector
            .match_labels
            .as_ref()
            .unwrap()["pod-template-hash"],
        h
    );
    assert_eq!(revision(&first), "1");
    let ann = first.metadata.annotations.clone().unwrap();
    assert_eq!(ann["deployment.kubernetes.io/desired-replicas"], "3");
    assert_eq!(ann["deployment.kubernetes.io/max-replicas"], "4");
    for p in live_pods(&pods).await {
        let owner = &p.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.name, first_name);
        assert_eq!(owner.block_owner_deletion, Some(true));
        assert!(
            p.metadata
                .name
                .unwrap()
                .starts_with(&format!("{first_name}-"))
        );
    }
    let d = kubectl(
        &s,
        &["get", "deploy", "web", "-o", "jsonpath={.metadata.annotations.deployment\\.kubernetes\\.io/revision} {.status.readyReplicas}/{.status.replicas} {.status.conditions[?(@.type==\"Available\")].reason} {.status.conditions[?(@.type==\"Progressing\")].reason}"],
    )
    .await;
    assert_eq!(d, "1 3/3 MinimumReplicasAvailable NewReplicaSetAvailable");
    let events = kubectl(
        &s,
        &[
            "get",
            "events",
            "-o",
            "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}",
        ],
    )
    .await;
    assert!(
        events.contains(&format!(
            "ScalingReplicaSet: Scaled up replica set {first_name} from 0 to 3"
        )),
        "{events}"
    );
    assert!(
        events.contains("SuccessfulCreate: Created pod: "),
        "{events}"
    );

    // Scale up and down.
    kubectl(&s, &["scale", "deploy/web", "--replicas=5"]).await;
    eventually("5 ready pods", || {
        ready_pods(&pods, 5, "skiff.local/netexec:v1")
    })
    .await;
    let table = kubectl(&s, &["get", "deploy", "web"]).await;
    eventually("the table to show 5/5", || async {
        kubectl(&s, &["get", "deploy", "web"]).await.contains("5/5")
    })
    .await;
    assert!(table.contains("web"), "{table}");
    kubectl(&s, &["scale", "deploy/web", "--replicas=2"]).await;
    eventually("2 pods", || ready_pods(&pods, 2, "skiff.local/netexec:v1")).await;
    let events = kubectl(
        &s,
        &[
            "get",
            "events",
            "--field-selector",
            "reason=SuccessfulDelete",
            "-o",
            "name",
        ],
    )
    .await;
    assert_eq!(events.lines().count(), 3, "{events}");
    assert_eq!(sets.list(&Default::default()).await.unwrap().items.len(), 1);

    // A rolling update within maxSurge 1 / maxUnavailable 1 of 4 replicas.
    kubectl(
        &s,
        &["patch", "deploy", "web", "--type=merge", "-p", r#"{"spec":{"replicas":4,"strategy":{"rollingUpdate":{"maxSurge":1,"maxUnavailable":1}}}}"#],
    )
    .await;
    kubectl(&s, &["rollout", "status", "deploy/web", "--timeout=30s"]).await;
    eventually("4 ready pods", || {
        ready_pods(&pods, 4, "skiff.local/netexec:v1")
    })
    .await;
    *armed.lock().unwrap() = Some(Seen::default());
    kubectl(
        &s,
        &[
            "set",
            "image",
            "deploy/web",
            "netexec=skiff.local/netexec:v2",
        ],
    )
    .await;
    let out = kubectl(&s, &["rollout", "status", "deploy/web", "--timeout=30s"]).await;
    assert!(out.contains("successfully rolled out"), "{out}");
    eventually("4 ready v2 pods", || {
        ready_pods(&pods, 4, "skiff.local/netexec:v2")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = armed.lock().unwrap().take().unwrap();
    assert!(
        seen.states > 8 && seen.mixed,
        "the update was observed: {seen:?}"
    );
    assert!(
        seen.max_live <= 5,
        "more than replicas+maxSurge pods: {seen:?}"
    );
    assert!(
        seen.min_ready >= 3,
        "fewer than replicas-maxUnavailable ready: {seen:?}"
    );

    let rs = sets.list(&Default::default()).await.unwrap().items;
    assert_eq!(rs.len(), 2);
    let second = rs
        .iter()
        .find(|r| r.metadata.name.as_deref() != Some(&first_name))
        .unwrap();
    assert_eq!(revision(second), "2");
    let old = rs
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some(&first_name))
        .unwrap();
    assert_eq!(old.spec.as_ref().unwrap().replicas, Some(0));
    let history = kubectl(&s, &["rollout", "history", "deploy/web"]).await;
    let revisions: Vec<&str> = history
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.chars().all(|c| c.is_ascii_digit()))
        .collect();
    assert_eq!(revisions, ["1", "2"], "{history}");
    let r1 = kubectl(&s, &["rollout", "history", "deploy/web", "--revision=1"]).await;
    assert!(r1.contains("skiff.local/netexec:v1"), "{r1}");

    // Undo: the first replica set comes back as revision 3, with the old image.
    *armed.lock().unwrap() = Some(Seen::default());
    let out = kubectl(&s, &["rollout", "undo", "deploy/web"]).await;
    assert!(out.contains("rolled back"), "{out}");
    kubectl(&s, &["rollout", "status", "deploy/web", "--timeout=30s"]).await;
    eventually("4 ready v1 pods", || {
        ready_pods(&pods, 4, "skiff.local/netexec:v1")
    })
    .await;
    let seen = armed.lock().unwrap().take().unwrap();
    assert!(seen.max_live <= 5 && seen.min_ready >= 3, "{seen:?}");
    let back = sets.get(&first_name).await.unwrap();
    assert_eq!(revision(&back), "3");
    assert_eq!(back.spec.unwrap().replicas, Some(4));
    assert_eq!(sets.list(&Default::default()).await.unwrap().items.len(), 2);
    let d = kubectl(
        &s,
        &["get", "deploy", "web", "-o", "jsonpath={.metadata.annotations.deployment\\.kubernetes\\.io/revision} {.spec.template.spec.containers[0].image}"],
    )
    .await;
    assert_eq!(d, "3 skiff.local/netexec:v1");
    let history = kubectl(&s, &["rollout", "history", "deploy/web"]).await;
    assert!(
        history.contains("\n2 ") && history.contains("\n3 ") && !history.contains("\n1 "),
        "{history}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_pause_history_limit_and_progress_deadline_behave_as_on_kubernetes() {
    let Some(s) = start() else { return };
    let c = client(&s).await;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let sets: Api<ReplicaSet> = Api::namespaced(c.clone(), "default");
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), "default");
    let _kubelet = start_kubelet(pods.clone());
    let armed = Arc::new(Mutex::new(None));
    let _observer = observe(pods.clone(), Arc::clone(&armed));

    apply(
        &s,
        "apiVersion: apps/v1
kind: Deployment
metadata: {name: db}
spec:
  replicas: 2
  revisionHistoryLimit: 1
  progressDeadlineSeconds: 3
  strategy: {type: Recreate}
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec: {containers: [{name: db, image: 'skiff.local/netexec:v1'}]}
"
        .into(),
    )
    .await;
    kubectl(&s, &["rollout", "status", "deploy/db", "--timeout=30s"]).await;

    // Recreate: every old pod is gone before a new one exists.
    *armed.lock().unwrap() = Some(Seen::default());
    kubectl(
        &s,
        &["set", "image", "deploy/db", "db=skiff.local/netexec:v2"],
    )
    .await;
    kubectl(&s, &["rollout", "status", "deploy/db", "--timeout=30s"]).await;
    eventually("2 ready v2 pods", || {
        ready_pods(&pods, 2, "skiff.local/netexec:v2")
    })
    .await;
    let seen = armed.lock().unwrap().take().unwrap();
    assert!(
        seen.states > 4 && !seen.mixed && seen.min_ready == 0,
        "{seen:?}"
    );

    // History limit 1: after a third template only the current and one old set remain.
    kubectl(
        &s,
        &["set", "image", "deploy/db", "db=skiff.local/netexec:v3"],
    )
    .await;
    kubectl(&s, &["rollout", "status", "deploy/db", "--timeout=30s"]).await;
    eventually("old replica sets cleaned up", || async {
        sets.list(&Default::default()).await.unwrap().items.len() == 2
    })
    .await;
    let revs: BTreeSet<String> = sets
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(revision)
        .collect();
    assert_eq!(revs, BTreeSet::from(["2".to_owned(), "3".to_owned()]));

    // Paused: template changes wait for resume.
    kubectl(&s, &["rollout", "pause", "deploy/db"]).await;
    kubectl(
        &s,
        &["set", "image", "deploy/db", "db=skiff.local/netexec:v4"],
    )
    .await;
    eventually("the paused condition", || async {
        let d = deployments.get("db").await.unwrap();
        d.status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.reason.as_deref() == Some("DeploymentPaused"))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(ready_pods(&pods, 2, "skiff.local/netexec:v3").await);
    assert_eq!(sets.list(&Default::default()).await.unwrap().items.len(), 2);
    kubectl(&s, &["rollout", "resume", "deploy/db"]).await;
    kubectl(&s, &["rollout", "status", "deploy/db", "--timeout=30s"]).await;
    eventually("2 ready v4 pods", || {
        ready_pods(&pods, 2, "skiff.local/netexec:v4")
    })
    .await;

    // A release whose pods never become ready exceeds its progress deadline.
    kubectl(&s, &["set", "image", "deploy/db", &format!("db={BROKEN}")]).await;
    let err = kubectl_fails(&s, &["rollout", "status", "deploy/db", "--timeout=30s"]).await;
    assert!(err.contains("exceeded its progress deadline"), "{err}");
    let d = deployments.get("db").await.unwrap();
    let progressing = d
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Progressing")
        .unwrap();
    assert_eq!(
        (progressing.status.as_str(), progressing.reason.as_deref()),
        ("False", Some("ProgressDeadlineExceeded"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_sets_adopt_release_and_count_available_pods() {
    let Some(s) = start() else { return };
    let c = client(&s).await;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let sets: Api<ReplicaSet> = Api::namespaced(c.clone(), "default");

    // Three orphans matching the selector, two of them on a node and ready.
    for name in ["o1", "o2", "o3"] {
        apply(&s, format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: orphan}}}}\nspec: {{containers: [{{name: c, image: i}}]}}\n")).await;
    }
    for name in ["o1", "o2"] {
        bind(&pods, name).await;
        mark_ready(&pods, name).await;
    }
    apply(
        &s,
        "apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: keep}
spec:
  replicas: 2
  minReadySeconds: 3
  selector: {matchLabels: {app: orphan}}
  template:
    metadata: {labels: {app: orphan}}
    spec: {containers: [{name: c, image: i}]}
"
        .into(),
    )
    .await;
    // The unscheduled orphan is the one deleted; the others are adopted.
    eventually("o3 deleted and o1, o2 adopted", || async {
        let live = live_pods(&pods).await;
        let names: Vec<_> = live
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        names == ["o1", "o2"]
            && live.iter().all(|p| {
                p.metadata
                    .owner_references
                    .as_ref()
                    .is_some_and(|r| r[0].name == "keep" && r[0].controller == Some(true))
            })
    })
    .await;
    eventually("status to count 2 ready pods", || async {
        let st = sets.get("keep").await.unwrap().status.unwrap();
        st.replicas == 2 && st.ready_replicas == Some(2)
    })
    .await;
    let st = sets.get("keep").await.unwrap().status.unwrap();
    // Ready just now: not available before minReadySeconds have passed.
    assert_eq!(st.available_replicas, Some(0));
    eventually("both pods available", || async {
        let st = sets.get("keep").await.unwrap().status.unwrap();
        st.available_replicas == Some(2) && st.fully_labeled_replicas == Some(2)
    })
    .await;

    // A pod relabelled out of the selector is released and replaced.
    kubectl(&s, &["label", "pod", "o1", "app=gone", "--overwrite"]).await;
    eventually("o1 released and replaced", || async {
        let o1 = pods.get("o1").await.unwrap();
        let owned = live_pods(&pods)
            .await
            .into_iter()
            .filter(|p| {
                p.metadata
                    .owner_references
                    .as_ref()
                    .is_some_and(|r| !r.is_empty())
            })
            .count();
        o1.metadata.owner_references.unwrap_or_default().is_empty() && owned == 2
    })
    .await;
    let replacement = live_pods(&pods)
        .await
        .into_iter()
        .find(|p| p.metadata.name.as_deref().unwrap().starts_with("keep-"))
        .unwrap();
    assert_eq!(replacement.metadata.labels.unwrap()["app"], "orphan");
    let events = kubectl(
        &s,
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=keep",
            "-o",
            "jsonpath={range .items[*]}{.reason} {end}",
        ],
    )
    .await;
    assert!(
        events.contains("SuccessfulDelete") && events.contains("SuccessfulCreate"),
        "{events}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_a_stuck_rollout_spreads_the_new_replicas_over_old_and_new_sets() {
    let Some(s) = start() else { return };
    let c = client(&s).await;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let sets: Api<ReplicaSet> = Api::namespaced(c.clone(), "default");
    let _kubelet = start_kubelet(pods.clone());
    apply(
        &s,
        "apiVersion: apps/v1
kind: Deployment
metadata: {name: api}
spec:
  replicas: 4
  strategy: {rollingUpdate: {maxSurge: 1, maxUnavailable: 1}}
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec: {containers: [{name: api, image: 'skiff.local/netexec:v1'}]}
"
        .into(),
    )
    .await;
    kubectl(&s, &["rollout", "status", "deploy/api", "--timeout=30s"]).await;
    // A broken release stalls at 3 old + 2 new pods (surge 1, one unavailable).
    kubectl(
        &s,
        &["set", "image", "deploy/api", &format!("api={BROKEN}")],
    )
    .await;
    let sizes = || async {
        let mut v: Vec<(String, i32, String)> = sets
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|rs| {
                let desired = rs.metadata.annotations.as_ref().unwrap()
                    ["deployment.kubernetes.io/desired-replicas"]
                    .clone();
                (revision(&rs), rs.spec.unwrap().replicas.unwrap(), desired)
            })
            .collect();
        v.sort();
        v
    };
    eventually("the rollout to stall at 3 + 2", || async {
        let v = sizes().await;
        v.len() == 2 && v[0].1 == 3 && v[1].1 == 2
    })
    .await;
    // Scaling to 8 allows 9 pods: both sets grow by their share (3:2 of 5 -> 5:4 of 9).
    kubectl(&s, &["scale", "deploy/api", "--replicas=8"]).await;
    eventually("proportional scaling", || async {
        sizes().await
            == [
                ("1".to_owned(), 5, "8".to_owned()),
                ("2".to_owned(), 4, "8".to_owned()),
            ]
    })
    .await;
    eventually("5 ready old pods", || async {
        live_pods(&pods)
            .await
            .iter()
            .filter(|p| is_ready(p))
            .count()
            == 5
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_deployment_adopts_the_replica_set_it_orphaned() {
    let Some(s) = start() else { return };
    let c = client(&s).await;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let sets: Api<ReplicaSet> = Api::namespaced(c.clone(), "default");
    let _kubelet = start_kubelet(pods.clone());
    let manifest = "apiVersion: apps/v1
kind: Deployment
metadata: {name: keep}
spec:
  replicas: 2
  selector: {matchLabels: {app: keep}}
  template:
    metadata: {labels: {app: keep}}
    spec: {containers: [{name: keep, image: 'skiff.local/netexec:v1'}]}
";
    apply(&s, manifest.into()).await;
    kubectl(&s, &["rollout", "status", "deploy/keep", "--timeout=30s"]).await;
    let before: BTreeSet<String> = live_pods(&pods)
        .await
        .into_iter()
        .map(|p| p.metadata.name.unwrap())
        .collect();
    kubectl(&s, &["delete", "deploy", "keep", "--cascade=orphan"]).await;
    eventually("the replica set to be orphaned", || async {
        let rs = sets.list(&Default::default()).await.unwrap().items;
        rs.len() == 1
            && rs[0]
                .metadata
                .owner_references
                .as_deref()
                .unwrap_or_default()
                .is_empty()
    })
    .await;
    apply(&s, manifest.into()).await;
    let uid = kubectl(
        &s,
        &["get", "deploy", "keep", "-o", "jsonpath={.metadata.uid}"],
    )
    .await;
    eventually("the replica set to be adopted", || async {
        let rs = sets.list(&Default::default()).await.unwrap().items;
        rs.len() == 1
            && rs[0]
                .metadata
                .owner_references
                .as_deref()
                .unwrap_or_default()
                .iter()
                .any(|r| r.uid == uid && r.controller == Some(true))
    })
    .await;
    kubectl(&s, &["rollout", "status", "deploy/keep", "--timeout=30s"]).await;
    let after: BTreeSet<String> = live_pods(&pods)
        .await
        .into_iter()
        .map(|p| p.metadata.name.unwrap())
        .collect();
    assert_eq!(before, after, "the same pods keep running");
}
