//! What the scheduler knows about pods and nodes, reduced to the few fields the filters read,
//! and the filters themselves (kube-scheduler's NodeUnschedulable, TaintToleration,
//! NodeAffinity, NodePorts, NodeResourcesFit and InterPodAffinity plugins).
//!
//! Everything is parsed once when an object arrives so that a filter pass over thousands of
//! nodes is a handful of integer and map comparisons per node.

use std::collections::BTreeMap;
use std::collections::HashMap;

use k8s_openapi::api::core::v1::{
    Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, Taint, Toleration,
};
use serde_json::Value;

use crate::api::selector::LabelSelector;

pub use skiff_common::quantity::{int_quantity, milli_cpu, parse_quantity};

/// Requests (of a pod) or capacity (of a node).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub pods: i64,
}

impl Resources {
    pub fn add(&mut self, o: &Resources) {
        self.milli_cpu += o.milli_cpu;
        self.memory += o.memory;
        self.pods += o.pods;
    }
    pub fn sub(&mut self, o: &Resources) {
        self.milli_cpu -= o.milli_cpu;
        self.memory -= o.memory;
        self.pods -= o.pods;
    }
}

/// Requests used for scoring when a pod states none (kube-scheduler's non-zero defaults), so
/// that request-less pods still spread instead of piling onto one node.
const DEFAULT_MILLI_CPU: i64 = 100;
const DEFAULT_MEMORY: i64 = 200 * 1024 * 1024;

/// A host port a pod asks for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub protocol: String,
    pub ip: String,
    pub port: i32,
}

impl HostPort {
    fn conflicts(&self, o: &HostPort) -> bool {
        let any = |ip: &str| ip.is_empty() || ip == "0.0.0.0";
        self.port == o.port
            && self.protocol == o.protocol
            && (any(&self.ip) || any(&o.ip) || self.ip == o.ip)
    }
}

/// A required pod (anti-)affinity term.
#[derive(Clone, Debug, PartialEq)]
pub struct PodTerm {
    pub selector: LabelSelector,
    /// Namespaces the term looks at (empty: the pod's own).
    pub namespaces: Vec<String>,
    pub topology_key: String,
}

impl PodTerm {
    fn from(t: &k8s_openapi::api::core::v1::PodAffinityTerm, own_ns: &str) -> Self {
        let selector = match &t.label_selector {
            Some(s) => serde_json::to_value(s)
                .ok()
                .and_then(|v| LabelSelector::from_label_selector_json(&v).ok())
                .unwrap_or_else(LabelSelector::nothing),
            None => LabelSelector::nothing(),
        };
        let mut namespaces = t.namespaces.clone().unwrap_or_default();
        if namespaces.is_empty() {
            namespaces.push(own_ns.to_owned());
        }
        Self {
            selector,
            namespaces,
            topology_key: t.topology_key.clone(),
        }
    }

    /// Whether a pod in `ns` with `labels` is selected by this term.
    pub fn selects(&self, ns: &str, labels: &BTreeMap<String, String>) -> bool {
        self.namespaces.iter().any(|n| n == ns) && self.selector.matches(labels)
    }
}

/// The scheduling-relevant part of a pod.
#[derive(Clone, Debug, PartialEq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub requests: Resources,
    /// Requests with kube-scheduler's defaults for cpu/memory left unset (scoring only).
    pub nonzero: Resources,
    pub node_selector: BTreeMap<String, String>,
    pub required_terms: Option<Vec<NodeSelectorTerm>>,
    pub preferred_terms: Vec<(i32, NodeSelectorTerm)>,
    pub tolerations: Vec<Toleration>,
    pub host_ports: Vec<HostPort>,
    pub anti_affinity: Vec<PodTerm>,
    /// uid of the controller owner (for spreading replicas).
    pub owner: Option<String>,
    pub scheduler_name: String,
    pub node_name: String,
    pub deleting: bool,
    /// Succeeded or Failed: holds no resources any more.
    pub finished: bool,
}

impl PodInfo {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn from_pod(pod: &Pod) -> Self {
        let meta = &pod.metadata;
        let spec = pod.spec.clone().unwrap_or_default();
        let namespace = meta.namespace.clone().unwrap_or_default();
        let (mut cpu, mut mem) = (0i64, 0i64);
        let (mut nz_cpu, mut nz_mem) = (0i64, 0i64);
        let mut host_ports = Vec::new();
        for c in &spec.containers {
            let req = c.resources.as_ref().and_then(|r| r.requests.as_ref());
            // A limit without a request means the request equals the limit.
            let lim = c.resources.as_ref().and_then(|r| r.limits.as_ref());
            let get = |k: &str| {
                req.and_then(|r| r.get(k))
                    .or_else(|| lim.and_then(|l| l.get(k)))
                    .map(|q| q.0.clone())
            };
            let c_cpu = get("cpu").map(|q| milli_cpu(&q));
            let c_mem = get("memory").map(|q| int_quantity(&q));
            cpu += c_cpu.unwrap_or(0);
            mem += c_mem.unwrap_or(0);
            nz_cpu += c_cpu.filter(|v| *v > 0).unwrap_or(DEFAULT_MILLI_CPU);
            nz_mem += c_mem.filter(|v| *v > 0).unwrap_or(DEFAULT_MEMORY);
            for p in c.ports.iter().flatten() {
                if let Some(hp) = p.host_port.filter(|p| *p > 0) {
                    host_ports.push(HostPort {
                        protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                        ip: p.host_ip.clone().unwrap_or_default(),
                        port: hp,
                    });
                }
            }
        }
        // Init containers run one at a time before the others: the pod needs the largest.
        for c in spec.init_containers.iter().flatten() {
            let req = c.resources.as_ref().and_then(|r| r.requests.as_ref());
            let ic = req
                .and_then(|r| r.get("cpu"))
                .map_or(0, |q| milli_cpu(&q.0));
            let im = req
                .and_then(|r| r.get("memory"))
                .map_or(0, |q| int_quantity(&q.0));
            cpu = cpu.max(ic);
            mem = mem.max(im);
        }
        let affinity = spec.affinity.clone().unwrap_or_default();
        let node_aff = affinity.node_affinity.unwrap_or_default();
        let required_terms = node_aff
            .required_during_scheduling_ignored_during_execution
            .map(|s| s.node_selector_terms);
        let preferred_terms = node_aff
            .preferred_during_scheduling_ignored_during_execution
            .unwrap_or_default()
            .into_iter()
            .map(|p| (p.weight, p.preference))
            .collect();
        let anti_affinity = affinity
            .pod_anti_affinity
            .and_then(|a| a.required_during_scheduling_ignored_during_execution)
            .unwrap_or_default()
            .iter()
            .map(|t| PodTerm::from(t, &namespace))
            .collect();
        let owner = meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| o.uid.clone());
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .unwrap_or("");
        Self {
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone().unwrap_or_default(),
            labels: meta.labels.clone().unwrap_or_default(),
            requests: Resources {
                milli_cpu: cpu,
                memory: mem,
                pods: 1,
            },
            nonzero: Resources {
                milli_cpu: nz_cpu.max(cpu),
                memory: nz_mem.max(mem),
                pods: 1,
            },
            node_selector: spec.node_selector.unwrap_or_default(),
            required_terms,
            preferred_terms,
            tolerations: spec.tolerations.unwrap_or_default(),
            host_ports,
            anti_affinity,
            owner,
            scheduler_name: spec
                .scheduler_name
                .unwrap_or_else(|| "default-scheduler".into()),
            node_name: spec.node_name.unwrap_or_default(),
            deleting: meta.deletion_timestamp.is_some(),
            finished: matches!(phase, "Succeeded" | "Failed"),
            namespace,
        }
    }
}

/// The scheduling-relevant part of a node plus what is placed on it.
#[derive(Clone, Debug, Default)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    pub ready: bool,
    pub allocatable: Resources,
    /// Sum of the requests of the pods on the node (assumed ones included).
    pub requested: Resources,
    pub nonzero_requested: Resources,
    pub host_ports: Vec<HostPort>,
    /// Pods on the node per controller owner uid.
    pub owners: HashMap<String, u32>,
}

/// The parts of a node whose change can make a pending pod schedulable.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeSpec {
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    pub ready: bool,
    pub allocatable: Resources,
}

impl NodeSpec {
    pub fn from_node(node: &Node) -> Self {
        let spec = node.spec.clone().unwrap_or_default();
        let status = node.status.clone().unwrap_or_default();
        let alloc = status.allocatable.or(status.capacity).unwrap_or_default();
        let ready = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        Self {
            labels: node.metadata.labels.clone().unwrap_or_default(),
            taints: spec.taints.unwrap_or_default(),
            unschedulable: spec.unschedulable.unwrap_or(false),
            ready,
            allocatable: Resources {
                milli_cpu: alloc.get("cpu").map_or(0, |q| milli_cpu(&q.0)),
                memory: alloc.get("memory").map_or(0, |q| int_quantity(&q.0)),
                pods: alloc.get("pods").map_or(0, |q| int_quantity(&q.0)),
            },
        }
    }
}

impl NodeInfo {
    pub fn set_spec(&mut self, s: NodeSpec) {
        self.labels = s.labels;
        self.taints = s.taints;
        self.unschedulable = s.unschedulable;
        self.ready = s.ready;
        self.allocatable = s.allocatable;
    }

    pub fn spec(&self) -> NodeSpec {
        NodeSpec {
            labels: self.labels.clone(),
            taints: self.taints.clone(),
            unschedulable: self.unschedulable,
            ready: self.ready,
            allocatable: self.allocatable,
        }
    }

    pub fn add_pod(&mut self, p: &PodInfo) {
        self.requested.add(&p.requests);
        self.nonzero_requested.add(&p.nonzero);
        self.host_ports.extend(p.host_ports.iter().cloned());
        if let Some(o) = &p.owner {
            *self.owners.entry(o.clone()).or_default() += 1;
        }
    }

    pub fn remove_pod(&mut self, p: &PodInfo) {
        self.requested.sub(&p.requests);
        self.nonzero_requested.sub(&p.nonzero);
        for hp in &p.host_ports {
            if let Some(i) = self.host_ports.iter().position(|x| x == hp) {
                self.host_ports.swap_remove(i);
            }
        }
        if let Some(o) = &p.owner
            && let Some(n) = self.owners.get_mut(o)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.owners.remove(o);
            }
        }
    }
}

/// Kubernetes' ToleratesTaint.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    let effect = t.effect.as_deref().unwrap_or("");
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    let key = t.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        _ => false,
    }
}

/// The first NoSchedule/NoExecute taint none of `tolerations` tolerates.
pub fn untolerated_taint<'a>(taints: &'a [Taint], tolerations: &[Toleration]) -> Option<&'a Taint> {
    taints.iter().find(|taint| {
        matches!(taint.effect.as_str(), "NoSchedule" | "NoExecute")
            && !tolerations.iter().any(|t| tolerates(t, taint))
    })
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or(&[]);
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), [bound]) = (value.and_then(|v| v.parse::<i64>().ok()), values) else {
                return false;
            };
            let Ok(bound) = bound.parse::<i64>() else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// Whether a node selector term matches (expressions on labels and fields, all of them).
pub fn term_matches(
    term: &NodeSelectorTerm,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or(&[]);
    let fields = term.match_fields.as_deref().unwrap_or(&[]);
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs
        .iter()
        .all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| {
            let v = (r.key == "metadata.name").then_some(name);
            requirement_matches(r, v)
        })
}

/// nodeSelector and required node affinity.
pub fn node_selector_matches(
    node_selector: &BTreeMap<String, String>,
    required: Option<&[NodeSelectorTerm]>,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    node_selector
        .iter()
        .all(|(k, v)| labels.get(k).is_some_and(|l| l == v))
        && required.is_none_or(|terms| terms.iter().any(|t| term_matches(t, name, labels)))
}

/// Why a node cannot take a pod, worded as kube-scheduler words it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    NotReady,
    Unschedulable,
    Taint(String),
    Affinity,
    Ports,
    Insufficient(&'static str),
    TooManyPods,
    AntiAffinity,
    ExistingAntiAffinity,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::NotReady => f.write_str("node(s) were not ready"),
            Reason::Unschedulable => f.write_str("node(s) were unschedulable"),
            Reason::Taint(t) => write!(f, "node(s) had untolerated taint {{{t}}}"),
            Reason::Affinity => f.write_str("node(s) didn't match Pod's node affinity/selector"),
            Reason::Ports => {
                f.write_str("node(s) didn't have free ports for the requested pod ports")
            }
            Reason::Insufficient(r) => write!(f, "Insufficient {r}"),
            Reason::TooManyPods => f.write_str("Too many pods"),
            Reason::AntiAffinity => f.write_str("node(s) didn't match pod anti-affinity rules"),
            Reason::ExistingAntiAffinity => {
                f.write_str("node(s) didn't satisfy existing pods anti-affinity rules")
            }
        }
    }
}

const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";

/// The cheap per-node filters, in kube-scheduler's plugin order; the first failing plugin
/// gives the reasons (resources may give several). Pod (anti-)affinity is checked by the
/// caller, which knows the other pods.
pub fn filter_node(pod: &PodInfo, node: &NodeInfo, out: &mut Vec<Reason>) -> bool {
    if !node.ready {
        out.push(Reason::NotReady);
        return false;
    }
    if node.unschedulable {
        let unsched = Taint {
            key: UNSCHEDULABLE_TAINT.into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        if !pod.tolerations.iter().any(|t| tolerates(t, &unsched)) {
            out.push(Reason::Unschedulable);
            return false;
        }
    }
    if let Some(t) = untolerated_taint(&node.taints, &pod.tolerations) {
        out.push(Reason::Taint(format!(
            "{}: {}",
            t.key,
            t.value.as_deref().unwrap_or("")
        )));
        return false;
    }
    if !node_selector_matches(
        &pod.node_selector,
        pod.required_terms.as_deref(),
        &node.name,
        &node.labels,
    ) {
        out.push(Reason::Affinity);
        return false;
    }
    if pod
        .host_ports
        .iter()
        .any(|p| node.host_ports.iter().any(|q| p.conflicts(q)))
    {
        out.push(Reason::Ports);
        return false;
    }
    let before = out.len();
    let (a, r, q) = (&node.allocatable, &node.requested, &pod.requests);
    if r.pods + 1 > a.pods {
        out.push(Reason::TooManyPods);
    }
    if q.milli_cpu > 0 && r.milli_cpu + q.milli_cpu > a.milli_cpu {
        out.push(Reason::Insufficient("cpu"));
    }
    if q.memory > 0 && r.memory + q.memory > a.memory {
        out.push(Reason::Insufficient("memory"));
    }
    out.len() == before
}

/// kube-scheduler's FitError message: "0/3 nodes are available: 3 Insufficient cpu."
pub fn fit_error(total: usize, reasons: &HashMap<Reason, usize>) -> String {
    if total == 0 {
        return "no nodes available to schedule pods".into();
    }
    let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    format!("0/{total} nodes are available: {}.", parts.join(", "))
}

/// Value of a JSON string field, for callers holding untyped objects.
pub fn str_of<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn pod(spec: Value) -> PodInfo {
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "d", "uid": "u"},
            "spec": spec,
        }))
        .unwrap();
        PodInfo::from_pod(&p)
    }

    fn node(name: &str, cpu: &str, mem: &str, extra: Value) -> NodeInfo {
        let mut n = json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {"allocatable": {"cpu": cpu, "memory": mem, "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True"}]},
        });
        if let (Value::Object(m), Value::Object(e)) = (&mut n, extra) {
            for (k, v) in e {
                if k == "labels" {
                    m["metadata"]["labels"]
                        .as_object_mut()
                        .unwrap()
                        .extend(v.as_object().unwrap().clone());
                } else {
                    m.insert(k, v);
                }
            }
        }
        let node: Node = serde_json::from_value(n).unwrap();
        let mut info = NodeInfo {
            name: name.into(),
            ..Default::default()
        };
        info.set_spec(NodeSpec::from_node(&node));
        info
    }

    #[test]
    fn quantities_parse_with_decimal_and_binary_suffixes() {
        assert_eq!(milli_cpu("100m"), 100);
        assert_eq!(milli_cpu("1.5"), 1500);
        assert_eq!(milli_cpu("2"), 2000);
        assert_eq!(milli_cpu("0.0001"), 1);
        assert_eq!(int_quantity("64Mi"), 64 * 1024 * 1024);
        assert_eq!(int_quantity("1Gi"), 1 << 30);
        assert_eq!(int_quantity("1.5Gi"), 3 << 29);
        assert_eq!(int_quantity("1k"), 1000);
        assert_eq!(int_quantity("2M"), 2_000_000);
        assert_eq!(int_quantity("1G"), 1_000_000_000);
        assert_eq!(int_quantity("1e3"), 1000);
        assert_eq!(int_quantity("1E"), 1_000_000_000_000_000_000);
        assert_eq!(int_quantity("128974848"), 128_974_848);
        assert_eq!(parse_quantity("abc"), None);
        assert_eq!(parse_quantity("Mi"), None);
    }

    #[test]
    fn requests_sum_containers_and_take_the_largest_init_container() {
        let p = pod(json!({
            "containers": [
                {"name": "a", "image": "i", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}},
                {"name": "b", "image": "i", "resources": {"limits": {"cpu": "1"}}},
            ],
            "initContainers": [{"name": "i", "image": "i", "resources": {"requests": {"cpu": "2"}}}],
        }));
        assert_eq!(p.requests.milli_cpu, 2000);
        assert_eq!(p.requests.memory, 64 << 20);
    }

    #[test]
    fn a_pod_that_asks_for_more_cpu_than_the_node_has_is_filtered_with_kubernetes_wording() {
        let p = pod(json!({"containers": [{"name": "a", "image": "i",
            "resources": {"requests": {"cpu": "3", "memory": "1Gi"}}}]}));
        let n = node("n1", "2", "4Gi", json!({}));
        let mut r = Vec::new();
        assert!(!filter_node(&p, &n, &mut r));
        assert_eq!(r, vec![Reason::Insufficient("cpu")]);
        let mut hist = HashMap::new();
        hist.insert(Reason::Insufficient("cpu"), 3);
        assert_eq!(
            fit_error(3, &hist),
            "0/3 nodes are available: 3 Insufficient cpu."
        );
        hist.insert(Reason::Affinity, 1);
        assert_eq!(
            fit_error(4, &hist),
            "0/4 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 3 Insufficient cpu."
        );
    }

    #[test]
    fn taints_need_a_matching_toleration() {
        let n = node(
            "n1",
            "2",
            "4Gi",
            json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}}),
        );
        let plain = pod(json!({"containers": [{"name": "a", "image": "i"}]}));
        let mut r = Vec::new();
        assert!(!filter_node(&plain, &n, &mut r));
        assert_eq!(
            r[0].to_string(),
            "node(s) had untolerated taint {dedicated: gpu}"
        );
        let tolerant = pod(json!({"containers": [{"name": "a", "image": "i"}],
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu"}]}));
        assert!(filter_node(&tolerant, &n, &mut Vec::new()));
        let wrong = pod(json!({"containers": [{"name": "a", "image": "i"}],
            "tolerations": [{"key": "dedicated", "value": "cpu"}]}));
        assert!(!filter_node(&wrong, &n, &mut Vec::new()));
        let all = pod(json!({"containers": [{"name": "a", "image": "i"}],
            "tolerations": [{"operator": "Exists"}]}));
        assert!(filter_node(&all, &n, &mut Vec::new()));
    }

    #[test]
    fn node_affinity_operators_follow_kubernetes() {
        let n = node(
            "n1",
            "2",
            "4Gi",
            json!({"labels": {"zone": "a", "gen": "5"}}),
        );
        let with = |exprs: Value| {
            pod(json!({"containers": [{"name": "a", "image": "i"}],
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                    {"nodeSelectorTerms": [{"matchExpressions": exprs}]}}}}))
        };
        let fits = |p: &PodInfo| filter_node(p, &n, &mut Vec::new());
        assert!(fits(&with(
            json!([{"key": "zone", "operator": "In", "values": ["a", "b"]}])
        )));
        assert!(!fits(&with(
            json!([{"key": "zone", "operator": "NotIn", "values": ["a"]}])
        )));
        assert!(fits(&with(
            json!([{"key": "disk", "operator": "NotIn", "values": ["ssd"]}])
        )));
        assert!(fits(&with(json!([{"key": "zone", "operator": "Exists"}]))));
        assert!(fits(&with(
            json!([{"key": "disk", "operator": "DoesNotExist"}])
        )));
        assert!(fits(&with(
            json!([{"key": "gen", "operator": "Gt", "values": ["4"]}])
        )));
        assert!(!fits(&with(
            json!([{"key": "gen", "operator": "Lt", "values": ["5"]}])
        )));
        let by_name = pod(json!({"containers": [{"name": "a", "image": "i"}],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n2"]}]}]}}}}));
        assert!(!fits(&by_name));
        let selector = pod(
            json!({"containers": [{"name": "a", "image": "i"}], "nodeSelector": {"zone": "b"}}),
        );
        assert!(!fits(&selector));
    }

    #[test]
    fn host_ports_conflict_on_the_same_port_and_protocol() {
        let p = pod(json!({"containers": [{"name": "a", "image": "i",
            "ports": [{"containerPort": 80, "hostPort": 8080}]}]}));
        let mut n = node("n1", "2", "4Gi", json!({}));
        assert!(filter_node(&p, &n, &mut Vec::new()));
        n.add_pod(&p);
        let mut r = Vec::new();
        assert!(!filter_node(&p, &n, &mut r));
        assert_eq!(r, vec![Reason::Ports]);
        n.remove_pod(&p);
        assert!(filter_node(&p, &n, &mut Vec::new()));
    }

    #[test]
    fn not_ready_and_cordoned_nodes_take_no_pods() {
        let p = pod(json!({"containers": [{"name": "a", "image": "i"}]}));
        let mut n = node("n1", "2", "4Gi", json!({}));
        n.ready = false;
        assert!(!filter_node(&p, &n, &mut Vec::new()));
        n.ready = true;
        n.unschedulable = true;
        let mut r = Vec::new();
        assert!(!filter_node(&p, &n, &mut r));
        assert_eq!(r, vec![Reason::Unschedulable]);
    }
}
