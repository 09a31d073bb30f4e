//! Scoring of the nodes that passed the filters (kube-scheduler's NodeResourcesFit with the
//! LeastAllocated strategy, default spreading of an owner's pods, and NodeAffinity's
//! preferred terms). Every plugin gives 0..=100 per node; the weighted sum decides.

use super::filter::{NodeInfo, PodInfo, term_matches};

/// kube-scheduler's default plugin weights.
const W_RESOURCES: i64 = 1;
const W_SPREAD: i64 = 2;
const W_AFFINITY: i64 = 2;
const MAX: i64 = 100;

/// LeastAllocated: the share of cpu and memory left free after placing the pod.
pub fn least_allocated(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let free = |alloc: i64, used: i64| {
        if alloc <= 0 {
            0
        } else {
            ((alloc - used).max(0) * MAX) / alloc
        }
    };
    let a = &node.allocatable;
    let r = &node.nonzero_requested;
    let cpu = free(a.milli_cpu, r.milli_cpu + pod.nonzero.milli_cpu);
    let mem = free(a.memory, r.memory + pod.nonzero.memory);
    (cpu + mem) / 2
}

/// Sum of the weights of the preferred node affinity terms a node matches.
pub fn preferred_affinity(pod: &PodInfo, node: &NodeInfo) -> i64 {
    pod.preferred_terms
        .iter()
        .filter(|(_, t)| term_matches(t, &node.name, &node.labels))
        .map(|(w, _)| i64::from(*w))
        .sum()
}

/// Index (into `feasible`) of the best node for `pod`. Ties go to the earliest node, and the
/// caller rotates where the node list starts, so equal nodes take turns.
pub fn pick(pod: &PodInfo, nodes: &[NodeInfo], feasible: &[usize]) -> Option<usize> {
    if feasible.is_empty() {
        return None;
    }
    let owner_counts: Vec<i64> = match &pod.owner {
        Some(o) => feasible
            .iter()
            .map(|&i| i64::from(nodes[i].owners.get(o).copied().unwrap_or(0)))
            .collect(),
        None => Vec::new(),
    };
    let max_owned = owner_counts.iter().copied().max().unwrap_or(0);
    let affinity: Vec<i64> = if pod.preferred_terms.is_empty() {
        Vec::new()
    } else {
        feasible
            .iter()
            .map(|&i| preferred_affinity(pod, &nodes[i]))
            .collect()
    };
    let max_aff = affinity.iter().copied().max().unwrap_or(0);
    let mut best: Option<(i64, usize)> = None;
    for (k, &i) in feasible.iter().enumerate() {
        let mut score = W_RESOURCES * least_allocated(pod, &nodes[i]);
        if max_owned > 0 {
            score += W_SPREAD * (max_owned - owner_counts[k]) * MAX / max_owned;
        } else {
            score += W_SPREAD * MAX;
        }
        if max_aff > 0 {
            score += W_AFFINITY * affinity[k] * MAX / max_aff;
        }
        if best.is_none_or(|(s, _)| score > s) {
            best = Some((score, i));
        }
    }
    best.map(|(_, i)| i)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::scheduler::filter::{NodeSpec, Resources};
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::{Value, json};

    fn pod(extra: Value) -> PodInfo {
        let mut v = json!({
            "metadata": {"name": "p", "namespace": "d", "uid": "u"},
            "spec": {"containers": [{"name": "a", "image": "i",
                "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}}}]},
        });
        if let (Value::Object(m), Value::Object(e)) = (&mut v, extra) {
            for (k, val) in e {
                if k == "affinity" {
                    m["spec"]["affinity"] = val;
                } else {
                    m["metadata"][k] = val;
                }
            }
        }
        PodInfo::from_pod(&serde_json::from_value::<Pod>(v).unwrap())
    }

    fn node(name: &str, zone: &str) -> NodeInfo {
        let mut n = NodeInfo {
            name: name.into(),
            ..Default::default()
        };
        n.set_spec(NodeSpec {
            labels: [("zone".to_owned(), zone.to_owned())].into(),
            taints: vec![],
            unschedulable: false,
            ready: true,
            allocatable: Resources {
                milli_cpu: 4000,
                memory: 8 << 30,
                pods: 110,
            },
        });
        n
    }

    #[test]
    fn the_emptier_node_wins() {
        let p = pod(json!({}));
        let mut nodes = vec![node("a", "x"), node("b", "x")];
        nodes[0].add_pod(&pod(json!({})));
        assert_eq!(pick(&p, &nodes, &[0, 1]), Some(1));
        assert!(least_allocated(&p, &nodes[1]) > least_allocated(&p, &nodes[0]));
    }

    #[test]
    fn replicas_of_one_owner_spread_over_nodes() {
        let owned = json!({"ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "name": "rs", "uid": "rs-1", "controller": true}]});
        let p = pod(owned.clone());
        let mut nodes = vec![node("a", "x"), node("b", "x")];
        // Node b holds more requests but none of the owner's pods.
        let big = PodInfo {
            requests: Resources {
                milli_cpu: 1000,
                memory: 1 << 30,
                pods: 1,
            },
            nonzero: Resources {
                milli_cpu: 1000,
                memory: 1 << 30,
                pods: 1,
            },
            ..pod(json!({}))
        };
        nodes[1].add_pod(&big);
        nodes[0].add_pod(&pod(owned));
        assert_eq!(pick(&p, &nodes, &[0, 1]), Some(1));
    }

    #[test]
    fn preferred_affinity_weights_pull_pods_toward_matching_nodes() {
        let p = pod(json!({"affinity": {"nodeAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 50, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["y"]}]}}
        ]}}}));
        let nodes = vec![node("a", "x"), node("b", "y")];
        assert_eq!(pick(&p, &nodes, &[0, 1]), Some(1));
    }
}
