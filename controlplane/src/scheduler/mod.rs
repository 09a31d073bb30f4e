//! The default scheduler: places pods whose `spec.schedulerName` is `default-scheduler` and
//! that have no node yet.
//!
//! One task owns the scheduling state (nodes, what each node holds, the queues) and is fed by
//! kube-runtime watchers of nodes and pods. A pod goes through the filters on a rotating
//! sample of nodes (kube-scheduler's percentageOfNodesToScore), the feasible nodes are scored,
//! the pod is *assumed* on the winner (its requests count there at once) and bound through
//! the `pods/binding` subresource by a concurrent task, so binding latency never stalls the
//! loop. A failed bind forgets the assumption and retries with backoff.
//!
//! A pod no node can take gets `PodScheduled=False` (reason Unschedulable) and a
//! FailedScheduling event with kube-scheduler's message, and waits until the cluster changes
//! (a node added or changed, a pod gone) or a minute passes; then it is retried after its
//! backoff (1 s doubling to 10 s).

pub mod filter;
pub mod score;

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt, stream::BoxStream};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio::sync::{Semaphore, mpsc};

use crate::controllers::events::{ObjectRef, Recorder};
use crate::controllers::runtime::Context;
use filter::{NodeInfo, NodeSpec, PodInfo, Reason, filter_node, fit_error};

pub const SCHEDULER_NAME: &str = "default-scheduler";
/// Bindings in flight at once.
const CONCURRENT_BINDS: usize = 64;
/// Pods scheduled between two looks at the watch streams.
const BATCH: usize = 256;
const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// An unschedulable pod is retried at least this often even if nothing seems to change.
const UNSCHEDULABLE_RETRY: Duration = Duration::from_secs(60);

/// How many feasible nodes are enough before scoring (kube-scheduler's adaptive
/// percentageOfNodesToScore: 50% minus 1% per 125 nodes, at least 5%, at least 100 nodes).
pub fn nodes_to_find(total: usize) -> usize {
    if total < 100 {
        return total;
    }
    let pct = 50usize.saturating_sub(total / 125).max(5);
    (total * pct / 100).max(100)
}

enum Input {
    Pod(Box<Result<watcher::Event<Pod>, watcher::Error>>),
    Node(Box<Result<watcher::Event<Node>, watcher::Error>>),
    BindFailed {
        key: String,
        uid: String,
        node: String,
    },
}

/// Runs the scheduler until the process ends.
pub async fn run(ctx: Context) {
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let (tx, rx) = mpsc::unbounded_channel();
    let streams: Vec<BoxStream<'static, Input>> = vec![
        watcher(pods, watcher::Config::default())
            .default_backoff()
            .map(|e| Input::Pod(Box::new(e)))
            .boxed(),
        watcher(nodes, watcher::Config::default())
            .default_backoff()
            .map(|e| Input::Node(Box::new(e)))
            .boxed(),
        tokio_stream::wrappers::UnboundedReceiverStream::new(rx).boxed(),
    ];
    let mut inputs = futures::stream::select_all(streams);
    let recorder = ctx.events.named(SCHEDULER_NAME);
    let mut s = Scheduler::default();
    let binds = Arc::new(Semaphore::new(CONCURRENT_BINDS));
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        if s.active.is_empty() {
            tokio::select! {
                Some(ev) = inputs.next() => s.handle(ev),
                _ = tick.tick() => {}
            }
        }
        for _ in 0..4096 {
            match inputs.next().now_or_never() {
                Some(Some(ev)) => s.handle(ev),
                _ => break,
            }
        }
        s.requeue_due(Instant::now());
        for _ in 0..BATCH {
            let Some(key) = s.pop_active() else { break };
            let Ok(permit) = Arc::clone(&binds).acquire_owned().await else {
                return;
            };
            match s.schedule(&key) {
                Outcome::Assumed(pod, node) => {
                    let was_unschedulable = s.last_failure.remove(&key).is_some();
                    let client = ctx.client.clone();
                    let tx = tx.clone();
                    let recorder = recorder.clone();
                    tokio::spawn(async move {
                        let _permit = permit;
                        bind(client, *pod, node, was_unschedulable, tx, recorder).await;
                    });
                }
                Outcome::Nothing => {}
                Outcome::Unschedulable(pod, message) => {
                    drop(permit);
                    let changed = s.last_failure.get(&key) != Some(&message);
                    s.last_failure.insert(key.clone(), message.clone());
                    recorder.emit(pod_ref(&pod), "Warning", "FailedScheduling", &message);
                    if changed {
                        tokio::spawn(mark_unschedulable(ctx.client.clone(), *pod, message));
                    }
                }
            }
        }
    }
}

fn pod_ref(p: &PodInfo) -> ObjectRef {
    ObjectRef {
        kind: "Pod",
        api_version: "v1",
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        uid: p.uid.clone(),
    }
}

async fn bind(
    client: kube::Client,
    pod: PodInfo,
    node: String,
    was_unschedulable: bool,
    tx: mpsc::UnboundedSender<Input>,
    recorder: Recorder,
) {
    let api: Api<Pod> = Api::namespaced(client, &pod.namespace);
    let binding = json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": pod.name, "namespace": pod.namespace, "uid": pod.uid},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    });
    let result: Result<serde_json::Value, kube::Error> = api
        .create_subresource("binding", &pod.name, &PostParams::default(), &binding)
        .await;
    match result {
        Ok(_) => {
            recorder.emit(
                pod_ref(&pod),
                "Normal",
                "Scheduled",
                &format!(
                    "Successfully assigned {}/{} to {node}",
                    pod.namespace, pod.name
                ),
            );
            if was_unschedulable {
                let now = crate::resources::now_rfc3339();
                let patch = json!({"status": {"conditions": [
                    {"type": "PodScheduled", "status": "True", "reason": null, "message": null,
                     "lastTransitionTime": now, "lastProbeTime": null}]}});
                if let Err(e) = api
                    .patch_status(&pod.name, &PatchParams::default(), &Patch::Strategic(patch))
                    .await
                {
                    tracing::debug!(pod = pod.key(), "setting PodScheduled=True failed: {e}");
                }
            }
        }
        Err(e) => {
            tracing::debug!(pod = pod.key(), node, "binding failed: {e}");
            let _ = tx.send(Input::BindFailed {
                key: pod.key(),
                uid: pod.uid,
                node,
            });
        }
    }
}

/// Writes PodScheduled=False with kube-scheduler's reason and message.
async fn mark_unschedulable(client: kube::Client, pod: PodInfo, message: String) {
    let api: Api<Pod> = Api::namespaced(client, &pod.namespace);
    let now = crate::resources::now_rfc3339();
    let patch = json!({"status": {"conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": message, "lastTransitionTime": now, "lastProbeTime": null}]}});
    if let Err(e) = api
        .patch_status(&pod.name, &PatchParams::default(), &Patch::Strategic(patch))
        .await
    {
        tracing::debug!(pod = pod.key(), "setting PodScheduled=False failed: {e}");
    }
}

/// (topology key, value) pairs a candidate node must not have.
type Blocks = BTreeSet<(String, String)>;

/// What became of one scheduling attempt.
enum Outcome {
    /// The pod is gone or no longer ours.
    Nothing,
    /// Assumed on the node; to be bound.
    Assumed(Box<PodInfo>, String),
    /// No node fits; the FitError message.
    Unschedulable(Box<PodInfo>, String),
}

#[derive(Default)]
struct Scheduler {
    nodes: Vec<NodeInfo>,
    node_index: HashMap<String, usize>,
    /// Unbound pods this scheduler is responsible for.
    pending: HashMap<String, PodInfo>,
    /// Pods counted on a node (bound, or assumed while their binding is in flight).
    placed: HashMap<String, PodInfo>,
    assumed: HashSet<String>,
    /// Keys of placed pods that carry anti-affinity terms (checked against incoming pods).
    with_anti_affinity: HashSet<String>,
    active: VecDeque<String>,
    queued: HashSet<String>,
    backoff: BinaryHeap<Reverse<(Instant, String)>>,
    unschedulable: HashMap<String, Instant>,
    attempts: HashMap<String, u32>,
    /// The last FailedScheduling message per pod (written to its status once per change).
    last_failure: HashMap<String, String>,
    next_start: usize,
    pod_init: Option<HashSet<String>>,
    node_init: Option<HashSet<String>>,
}

impl Scheduler {
    fn handle(&mut self, input: Input) {
        match input {
            Input::Pod(ev) => match *ev {
                Ok(ev) => self.pod_event(ev),
                Err(e) => tracing::warn!("scheduler pod watch failed (retrying): {e}"),
            },
            Input::Node(ev) => match *ev {
                Err(e) => tracing::warn!("scheduler node watch failed (retrying): {e}"),
                Ok(ev) => match ev {
                    watcher::Event::Apply(n) => self.node_applied(&n),
                    watcher::Event::Delete(n) => {
                        self.node_deleted(n.metadata.name.as_deref().unwrap_or(""))
                    }
                    watcher::Event::Init => self.node_init = Some(HashSet::new()),
                    watcher::Event::InitApply(n) => {
                        if let Some(seen) = &mut self.node_init {
                            seen.insert(n.metadata.name.clone().unwrap_or_default());
                        }
                        self.node_applied(&n);
                    }
                    watcher::Event::InitDone => {
                        if let Some(seen) = self.node_init.take() {
                            let gone: Vec<String> = self
                                .node_index
                                .keys()
                                .filter(|k| !seen.contains(*k))
                                .cloned()
                                .collect();
                            for n in gone {
                                self.node_deleted(&n);
                            }
                        }
                    }
                },
            },
            Input::BindFailed { key, uid, node } => {
                if self.assumed.remove(&key)
                    && self
                        .placed
                        .get(&key)
                        .is_some_and(|p| p.uid == uid && p.node_name == node)
                {
                    self.unplace(&key);
                }
                if self.pending.get(&key).is_some_and(|p| p.uid == uid) {
                    self.bump_backoff(&key, Instant::now());
                }
            }
        }
    }

    fn pod_event(&mut self, ev: watcher::Event<Pod>) {
        match ev {
            watcher::Event::Apply(p) => self.pod_applied(&p),
            watcher::Event::Delete(p) => {
                let info = PodInfo::from_pod(&p);
                self.pod_deleted(&info.key(), &info.uid);
            }
            watcher::Event::Init => self.pod_init = Some(HashSet::new()),
            watcher::Event::InitApply(p) => {
                let info = PodInfo::from_pod(&p);
                if let Some(seen) = &mut self.pod_init {
                    seen.insert(info.key());
                }
                self.pod_applied(&p);
            }
            watcher::Event::InitDone => {
                if let Some(seen) = self.pod_init.take() {
                    let gone: Vec<String> = self
                        .pending
                        .keys()
                        .chain(self.placed.keys())
                        .filter(|k| !seen.contains(*k))
                        .cloned()
                        .collect();
                    for k in gone {
                        self.pod_deleted(&k, "");
                    }
                }
            }
        }
    }

    fn pod_applied(&mut self, pod: &Pod) {
        let info = PodInfo::from_pod(pod);
        let key = info.key();
        if !info.node_name.is_empty() {
            self.pending.remove(&key);
            self.assumed.remove(&key);
            self.unschedulable.remove(&key);
            self.attempts.remove(&key);
            if info.finished {
                if self.placed.contains_key(&key) {
                    self.unplace(&key);
                    self.cluster_changed();
                }
            } else {
                self.place(key, info);
            }
            return;
        }
        if self.placed.contains_key(&key) && !self.assumed.contains(&key) {
            // Recreated under the same name without a node.
            self.unplace(&key);
        }
        if info.scheduler_name != SCHEDULER_NAME || info.deleting || info.finished {
            self.pending.remove(&key);
            return;
        }
        let changed = self.pending.get(&key) != Some(&info);
        self.pending.insert(key.clone(), info);
        if self.assumed.contains(&key) {
            return;
        }
        if self.unschedulable.contains_key(&key) {
            if changed {
                self.unschedulable.remove(&key);
                self.push_active(key);
            }
            return;
        }
        if !self.attempts.contains_key(&key) {
            self.push_active(key);
        }
    }

    fn pod_deleted(&mut self, key: &str, uid: &str) {
        let matches = |p: &PodInfo| uid.is_empty() || p.uid == uid;
        if self.pending.get(key).is_some_and(matches) {
            self.pending.remove(key);
            self.unschedulable.remove(key);
            self.attempts.remove(key);
            self.last_failure.remove(key);
        }
        if self.placed.get(key).is_some_and(matches) {
            self.assumed.remove(key);
            self.unplace(key);
            self.cluster_changed();
        }
    }

    fn node_applied(&mut self, node: &Node) {
        let name = node.metadata.name.clone().unwrap_or_default();
        let spec = NodeSpec::from_node(node);
        match self.node_index.get(&name) {
            Some(&i) => {
                if self.nodes[i].spec() != spec {
                    self.nodes[i].set_spec(spec);
                    self.cluster_changed();
                }
            }
            None => {
                let mut info = NodeInfo {
                    name: name.clone(),
                    ..Default::default()
                };
                info.set_spec(spec);
                for p in self.placed.values().filter(|p| p.node_name == name) {
                    info.add_pod(p);
                }
                self.node_index.insert(name, self.nodes.len());
                self.nodes.push(info);
                self.cluster_changed();
            }
        }
    }

    fn node_deleted(&mut self, name: &str) {
        let Some(i) = self.node_index.remove(name) else {
            return;
        };
        self.nodes.swap_remove(i);
        if let Some(moved) = self.nodes.get(i) {
            self.node_index.insert(moved.name.clone(), i);
        }
    }

    fn place(&mut self, key: String, info: PodInfo) {
        if let Some(old) = self.placed.get(&key) {
            if *old == info {
                return;
            }
            self.unplace(&key);
        }
        if let Some(&i) = self.node_index.get(&info.node_name) {
            self.nodes[i].add_pod(&info);
        }
        if !info.anti_affinity.is_empty() {
            self.with_anti_affinity.insert(key.clone());
        }
        self.placed.insert(key, info);
    }

    fn unplace(&mut self, key: &str) {
        if let Some(old) = self.placed.remove(key) {
            if let Some(&i) = self.node_index.get(&old.node_name) {
                self.nodes[i].remove_pod(&old);
            }
            self.with_anti_affinity.remove(key);
        }
    }

    fn push_active(&mut self, key: String) {
        if self.queued.insert(key.clone()) {
            self.active.push_back(key);
        }
    }

    fn pop_active(&mut self) -> Option<String> {
        while let Some(k) = self.active.pop_front() {
            self.queued.remove(&k);
            if self.pending.contains_key(&k) && !self.assumed.contains(&k) {
                return Some(k);
            }
        }
        None
    }

    fn backoff_for(&self, key: &str) -> Duration {
        let n = self.attempts.get(key).copied().unwrap_or(1).max(1);
        INITIAL_BACKOFF
            .saturating_mul(1u32 << (n - 1).min(8))
            .min(MAX_BACKOFF)
    }

    fn bump_backoff(&mut self, key: &str, now: Instant) {
        *self.attempts.entry(key.to_owned()).or_default() += 1;
        let at = now + self.backoff_for(key);
        self.backoff.push(Reverse((at, key.to_owned())));
    }

    /// Something that may make an unschedulable pod fit happened: retry them after backoff.
    fn cluster_changed(&mut self) {
        if self.unschedulable.is_empty() {
            return;
        }
        let waiting: Vec<(String, Instant)> = self.unschedulable.drain().collect();
        for (k, failed_at) in waiting {
            let at = failed_at + self.backoff_for(&k);
            self.backoff.push(Reverse((at, k)));
        }
    }

    fn requeue_due(&mut self, now: Instant) {
        while let Some(Reverse((at, _))) = self.backoff.peek() {
            if *at > now {
                break;
            }
            if let Some(Reverse((_, k))) = self.backoff.pop()
                && self.pending.contains_key(&k)
                && !self.assumed.contains(&k)
                && !self.unschedulable.contains_key(&k)
            {
                self.push_active(k);
            }
        }
        let stale: Vec<String> = self
            .unschedulable
            .iter()
            .filter(|(_, t)| now.duration_since(**t) >= UNSCHEDULABLE_RETRY)
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            self.unschedulable.remove(&k);
            self.push_active(k);
        }
    }

    /// Topology values (of `topology_key`) that hold a pod matched by an anti-affinity term,
    /// as (topology key, value) pairs a candidate node must not have.
    fn anti_affinity_blocks(&self, pod: &PodInfo) -> (Blocks, Blocks) {
        let mut own = BTreeSet::new();
        let mut existing = BTreeSet::new();
        let node_label = |node: &str, key: &str| {
            self.node_index
                .get(node)
                .and_then(|&i| self.nodes[i].labels.get(key).cloned())
        };
        if !pod.anti_affinity.is_empty() {
            for other in self.placed.values() {
                for t in &pod.anti_affinity {
                    if other.uid != pod.uid
                        && t.selects(&other.namespace, &other.labels)
                        && let Some(v) = node_label(&other.node_name, &t.topology_key)
                    {
                        own.insert((t.topology_key.clone(), v));
                    }
                }
            }
        }
        for k in &self.with_anti_affinity {
            let Some(other) = self.placed.get(k) else {
                continue;
            };
            for t in &other.anti_affinity {
                if other.uid != pod.uid
                    && t.selects(&pod.namespace, &pod.labels)
                    && let Some(v) = node_label(&other.node_name, &t.topology_key)
                {
                    existing.insert((t.topology_key.clone(), v));
                }
            }
        }
        (own, existing)
    }

    /// Schedules one pod.
    fn schedule(&mut self, key: &str) -> Outcome {
        let Some(pod) = self.pending.get(key).cloned() else {
            return Outcome::Nothing;
        };
        let total = self.nodes.len();
        let want = nodes_to_find(total);
        let (own_blocks, existing_blocks) = self.anti_affinity_blocks(&pod);
        let blocked = |n: &NodeInfo, set: &BTreeSet<(String, String)>| {
            set.iter()
                .any(|(k, v)| n.labels.get(k).is_some_and(|x| x == v))
        };
        let mut feasible = Vec::with_capacity(want.min(1024));
        let mut reasons: HashMap<Reason, usize> = HashMap::new();
        let mut scratch = Vec::new();
        let mut processed = 0;
        for j in 0..total {
            let i = (self.next_start + j) % total;
            let n = &self.nodes[i];
            processed += 1;
            scratch.clear();
            if !filter_node(&pod, n, &mut scratch) {
                for r in scratch.drain(..) {
                    *reasons.entry(r).or_default() += 1;
                }
                continue;
            }
            if blocked(n, &own_blocks) {
                *reasons.entry(Reason::AntiAffinity).or_default() += 1;
                continue;
            }
            if blocked(n, &existing_blocks) {
                *reasons.entry(Reason::ExistingAntiAffinity).or_default() += 1;
                continue;
            }
            feasible.push(i);
            if feasible.len() >= want {
                break;
            }
        }
        if total > 0 {
            self.next_start = (self.next_start + processed) % total;
        }
        let Some(best) = score::pick(&pod, &self.nodes, &feasible) else {
            let now = Instant::now();
            *self.attempts.entry(key.to_owned()).or_default() += 1;
            self.unschedulable.insert(key.to_owned(), now);
            return Outcome::Unschedulable(Box::new(pod), fit_error(total, &reasons));
        };
        let node = self.nodes[best].name.clone();
        let mut assumed = pod.clone();
        assumed.node_name = node.clone();
        self.assumed.insert(key.to_owned());
        self.place(key.to_owned(), assumed);
        Outcome::Assumed(Box::new(pod), node)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn node(name: &str, cpu: &str) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {"allocatable": {"cpu": cpu, "memory": "4Gi", "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True"}]},
        }))
        .unwrap()
    }

    fn pod(name: &str, cpu: &str, extra: serde_json::Value) -> Pod {
        let mut v = json!({
            "metadata": {"name": name, "namespace": "d", "uid": format!("uid-{name}"), "labels": {"app": "web"}},
            "spec": {"schedulerName": "default-scheduler", "containers": [{"name": "c", "image": "i",
                "resources": {"requests": {"cpu": cpu}}}]},
        });
        if let serde_json::Value::Object(e) = extra {
            for (k, val) in e {
                v["spec"][k] = val;
            }
        }
        serde_json::from_value(v).unwrap()
    }

    fn assumed(o: Outcome) -> String {
        match o {
            Outcome::Assumed(_, n) => n,
            _ => panic!("expected the pod to be assumed on a node"),
        }
    }

    #[test]
    fn the_sample_size_follows_kube_schedulers_adaptive_percentage() {
        assert_eq!(nodes_to_find(3), 3);
        assert_eq!(nodes_to_find(100), 100);
        assert_eq!(nodes_to_find(1000), 420);
        assert_eq!(nodes_to_find(5000), 500);
        assert_eq!(nodes_to_find(100_000), 5000);
    }

    #[test]
    fn assumed_pods_use_up_node_resources_before_their_binding_lands() {
        let mut s = Scheduler::default();
        s.node_applied(&node("n1", "1"));
        s.node_applied(&node("n2", "1"));
        s.pod_applied(&pod("a", "800m", json!({})));
        s.pod_applied(&pod("b", "800m", json!({})));
        s.pod_applied(&pod("c", "800m", json!({})));
        let a = s.pop_active().unwrap();
        let na = assumed(s.schedule(&a));
        let b = s.pop_active().unwrap();
        let nb = assumed(s.schedule(&b));
        assert_ne!(na, nb);
        let c = s.pop_active().unwrap();
        let Outcome::Unschedulable(_, msg) = s.schedule(&c) else {
            panic!("c fits nowhere")
        };
        assert_eq!(msg, "0/2 nodes are available: 2 Insufficient cpu.");
        assert!(s.unschedulable.contains_key("d/c"));
        // Deleting a bound pod frees its node and sends the waiting pod to backoff.
        s.pod_deleted("d/a", "uid-a");
        assert!(s.unschedulable.is_empty());
        s.requeue_due(Instant::now() + Duration::from_secs(2));
        let c = s.pop_active().unwrap();
        let nc = assumed(s.schedule(&c));
        assert_eq!(nc, na);
    }

    #[test]
    fn a_failed_binding_frees_the_assumed_resources_and_retries() {
        let mut s = Scheduler::default();
        s.node_applied(&node("n1", "1"));
        s.pod_applied(&pod("a", "800m", json!({})));
        let a = s.pop_active().unwrap();
        let Outcome::Assumed(p, n) = s.schedule(&a) else {
            panic!("a fits")
        };
        assert_eq!(s.nodes[0].requested.milli_cpu, 800);
        s.handle(Input::BindFailed {
            key: a.clone(),
            uid: p.uid,
            node: n,
        });
        assert_eq!(s.nodes[0].requested.milli_cpu, 0);
        assert!(s.pop_active().is_none());
        s.requeue_due(Instant::now() + Duration::from_secs(2));
        assert_eq!(s.pop_active().as_deref(), Some("d/a"));
    }

    #[test]
    fn required_anti_affinity_on_hostname_keeps_replicas_apart() {
        let anti = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}});
        let mut s = Scheduler::default();
        s.node_applied(&node("n1", "4"));
        s.node_applied(&node("n2", "4"));
        for name in ["a", "b", "c"] {
            s.pod_applied(&pod(name, "100m", json!({"affinity": anti})));
        }
        let mut placed = Vec::new();
        while let Some(k) = s.pop_active() {
            match s.schedule(&k) {
                Outcome::Assumed(_, n) => placed.push(n),
                Outcome::Nothing => {}
                Outcome::Unschedulable(_, msg) => assert_eq!(
                    msg,
                    "0/2 nodes are available: 2 node(s) didn't match pod anti-affinity rules."
                ),
            }
        }
        placed.sort();
        assert_eq!(placed, vec!["n1", "n2"]);
    }

    #[test]
    fn a_status_update_of_an_unschedulable_pod_does_not_retry_it_but_a_node_change_does() {
        let mut s = Scheduler::default();
        s.node_applied(&node("n1", "1"));
        s.pod_applied(&pod("big", "2", json!({})));
        let k = s.pop_active().unwrap();
        assert!(matches!(s.schedule(&k), Outcome::Unschedulable(..)));
        // Our own PodScheduled=False write comes back as an update with the same spec.
        s.pod_applied(&pod("big", "2", json!({})));
        s.requeue_due(Instant::now() + Duration::from_secs(5));
        assert!(s.pop_active().is_none());
        s.node_applied(&node("n1", "4"));
        s.requeue_due(Instant::now() + Duration::from_secs(5));
        assert_eq!(s.pop_active().as_deref(), Some("d/big"));
        assert!(matches!(s.schedule("d/big"), Outcome::Assumed(..)));
    }
}
