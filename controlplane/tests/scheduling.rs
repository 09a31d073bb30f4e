//! Scheduling and node management with the real kubectl: the scheduler places pods by
//! resources, selectors and taints; nodes get pod CIDRs; a node that stops renewing its Lease
//! is marked unreachable and its pods are evicted; DaemonSets follow the nodes.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Server, need};

/// Polls `f` for up to `secs` seconds.
fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out after {secs}s waiting for {what}");
}

fn node_of(s: &Server, ns: &str, pod: &str) -> String {
    s.ok(&[
        "get",
        "pod",
        pod,
        "-n",
        ns,
        "-o",
        "jsonpath={.spec.nodeName}",
    ])
}

fn pod_yaml(name: &str, cpu: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n  labels: {{app: {name}}}\nspec:\n  containers:\n  - name: c\n    image: skiff.local/pause\n    resources: {{requests: {{cpu: '{cpu}', memory: 64Mi}}}}\n{extra}"
    )
}

#[test]
fn pods_are_bound_by_resources_selectors_and_taints_and_unfit_pods_stay_pending_with_a_reason() {
    if !need("kubectl", &["version", "--client"]) {
        return;
    }
    let s = Server::start();
    s.register_node("small", "2", "4Gi");
    s.register_node("large", "8", "16Gi");
    s.register_node("gpu", "8", "16Gi");
    s.ok(&["label", "node", "small", "disk=ssd"]);
    s.ok(&["taint", "node", "gpu", "dedicated=gpu:NoSchedule"]);

    // Only `large` has room: `small` is too small and `gpu` is tainted.
    s.apply(&pod_yaml("big", "6", ""));
    // nodeSelector picks `small`.
    s.apply(&pod_yaml("ssd", "500m", "  nodeSelector: {disk: ssd}\n"));
    // Tolerating the taint and selecting the node by name.
    s.apply(&pod_yaml(
        "trainer",
        "1",
        "  nodeSelector: {kubernetes.io/hostname: gpu}\n  tolerations: [{key: dedicated, operator: Equal, value: gpu, effect: NoSchedule}]\n",
    ));
    // No node has 100 cpus.
    s.apply(&pod_yaml("huge", "100", ""));

    wait_for("pods bound", 20, || {
        ["big", "ssd", "trainer"]
            .iter()
            .all(|p| !node_of(&s, "default", p).is_empty())
    });
    assert_eq!(node_of(&s, "default", "big"), "large");
    assert_eq!(node_of(&s, "default", "ssd"), "small");
    assert_eq!(node_of(&s, "default", "trainer"), "gpu");

    wait_for("PodScheduled=False on the unfit pod", 20, || {
        s.ok(&[
            "get",
            "pod",
            "huge",
            "-o",
            "jsonpath={.status.conditions[?(@.type=='PodScheduled')].reason}",
        ]) == "Unschedulable"
    });
    assert_eq!(node_of(&s, "default", "huge"), "");
    let describe = s.ok(&["describe", "pod", "huge"]);
    assert!(describe.contains("FailedScheduling"), "{describe}");
    assert!(
        describe.contains("0/3 nodes are available:")
            && describe.contains("2 Insufficient cpu")
            && describe.contains("1 node(s) had untolerated taint {dedicated: gpu}"),
        "{describe}"
    );
    let events = s.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=big,reason=Scheduled",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(
        events.contains("Successfully assigned default/big to large"),
        "{events}"
    );

    // A bigger node joins: the pending pod is retried and bound there.
    s.register_node("huge-node", "128", "256Gi");
    wait_for("the pending pod to be bound to the new node", 30, || {
        node_of(&s, "default", "huge") == "huge-node"
    });
    wait_for("PodScheduled=True after binding", 10, || {
        s.ok(&[
            "get",
            "pod",
            "huge",
            "-o",
            "jsonpath={.status.conditions[?(@.type=='PodScheduled')].status}",
        ]) == "True"
    });
}

#[test]
fn cordoned_nodes_and_host_port_conflicts_are_respected() {
    if !need("kubectl", &["version", "--client"]) {
        return;
    }
    let s = Server::start();
    s.register_node("a", "4", "8Gi");
    s.register_node("b", "4", "8Gi");
    s.ok(&["cordon", "b"]);
    let port = "    ports: [{containerPort: 80, hostPort: 8080}]\n";
    let with_port = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  containers:\n  - name: c\n    image: skiff.local/pause\n{port}"
        )
    };
    s.apply(&with_port("web-1"));
    wait_for("first pod bound", 20, || {
        !node_of(&s, "default", "web-1").is_empty()
    });
    assert_eq!(node_of(&s, "default", "web-1"), "a");
    s.apply(&with_port("web-2"));
    wait_for("second pod unschedulable", 20, || {
        s.ok(&[
            "get",
            "pod",
            "web-2",
            "-o",
            "jsonpath={.status.conditions[?(@.type=='PodScheduled')].message}",
        ])
        .contains("node(s) didn't have free ports for the requested pod ports")
    });
    // Uncordoning `b` is a node change: the pod is retried and lands there.
    s.ok(&["uncordon", "b"]);
    wait_for("second pod bound after uncordon", 30, || {
        node_of(&s, "default", "web-2") == "b"
    });
}

fn pod_cidr(s: &Server, node: &str) -> String {
    s.ok(&["get", "node", node, "-o", "jsonpath={.spec.podCIDR}"])
}

#[test]
fn nodes_get_unique_pod_cidrs_that_survive_a_restart_and_are_freed_on_delete() {
    if !need("kubectl", &["version", "--client"]) {
        return;
    }
    // Four /24 blocks in all.
    let flags = [
        "--cluster-cidr",
        "10.200.0.0/22",
        "--node-cidr-mask-size",
        "24",
    ];
    let mut s = Server::start_with(&flags);
    for n in ["n1", "n2", "n3"] {
        s.register_node(n, "2", "4Gi");
    }
    wait_for("pod CIDRs on every node", 20, || {
        ["n1", "n2", "n3"]
            .iter()
            .all(|n| !pod_cidr(&s, n).is_empty())
    });
    let before: Vec<String> = ["n1", "n2", "n3"].iter().map(|n| pod_cidr(&s, n)).collect();
    for c in &before {
        assert!(c.starts_with("10.200.") && c.ends_with(".0/24"), "{c}");
    }
    let cidrs = s.ok(&["get", "node", "n1", "-o", "jsonpath={.spec.podCIDRs[*]}"]);
    assert_eq!(cidrs, before[0]);
    let mut unique = before.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 3, "{before:?}");

    // After a restart the existing blocks stay, and a new node gets the fourth one.
    s.stop();
    let s2 = Server::start_in(&s.dir, &flags);
    s2.register_node("n4", "2", "4Gi");
    wait_for("a pod CIDR on the node added after the restart", 20, || {
        !pod_cidr(&s2, "n4").is_empty()
    });
    let after: Vec<String> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| pod_cidr(&s2, n))
        .collect();
    assert_eq!(after, before);
    let n4 = pod_cidr(&s2, "n4");
    assert!(!before.contains(&n4), "{n4} was already taken: {before:?}");

    // The range is full now; deleting a node frees its block for the next one.
    s2.register_node("n5", "2", "4Gi");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(pod_cidr(&s2, "n5"), "");
    s2.ok(&["delete", "node", "n1"]);
    wait_for("the freed block to go to the waiting node", 30, || {
        !pod_cidr(&s2, "n5").is_empty()
    });
    assert_eq!(pod_cidr(&s2, "n5"), after[0]);
}
