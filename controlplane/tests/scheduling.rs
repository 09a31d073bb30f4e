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

fn renew_lease(s: &Server, node: &str) {
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S.%6fZ")
        .to_string();
    s.apply(&format!(
        "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {{name: {node}, namespace: kube-node-lease}}\nspec: {{holderIdentity: {node}, leaseDurationSeconds: 40, renewTime: '{now}'}}\n"
    ));
}

fn ready_of(s: &Server, node: &str) -> String {
    s.ok(&[
        "get",
        "node",
        node,
        "-o",
        "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
    ])
}

fn taints_of(s: &Server, node: &str) -> String {
    s.ok(&[
        "get",
        "node",
        node,
        "-o",
        "jsonpath={.spec.taints[*].key}:{.spec.taints[*].effect}",
    ])
}

#[test]
fn a_node_whose_lease_stops_becomes_unknown_is_tainted_and_its_pods_are_evicted() {
    if !need("kubectl", &["version", "--client"]) {
        return;
    }
    let s = Server::start_with(&["--node-monitor-grace-period", "5"]);
    s.register_node("flaky", "4", "8Gi");
    s.register_node("steady", "4", "8Gi");
    renew_lease(&s, "flaky");
    let on_flaky = |name: &str, secs: u32| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  nodeSelector: {{kubernetes.io/hostname: flaky}}\n  tolerations: [{{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: {secs}}}]\n  containers:\n  - name: c\n    image: skiff.local/pause\n"
        )
    };
    s.apply(&on_flaky("victim", 2));
    s.apply(&on_flaky("patient", 3600));
    wait_for("pods bound to flaky", 20, || {
        node_of(&s, "default", "victim") == "flaky" && node_of(&s, "default", "patient") == "flaky"
    });
    s.mark_pods_ready("default", "");

    // Renewing keeps the node Ready well past the grace period.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(7) {
        renew_lease(&s, "flaky");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(ready_of(&s, "flaky"), "True");
    assert_eq!(taints_of(&s, "flaky"), ":");

    // Then the lease stops.
    wait_for("flaky to become Unknown", 30, || {
        ready_of(&s, "flaky") == "Unknown"
    });
    let reason = s.ok(&[
        "get", "node", "flaky", "-o",
        "jsonpath={.status.conditions[?(@.type=='Ready')].reason}/{.status.conditions[?(@.type=='Ready')].message}",
    ]);
    assert_eq!(
        reason,
        "NodeStatusUnknown/Kubelet stopped posting node status."
    );
    wait_for("the unreachable taint", 10, || {
        taints_of(&s, "flaky") == "node.kubernetes.io/unreachable:NoExecute"
    });
    // The statically registered node (no heartbeat at all) is left alone.
    assert_eq!(ready_of(&s, "steady"), "True");

    // The pod tolerating 2 s is evicted; the one tolerating an hour stays (but not Ready).
    wait_for("the victim to be evicted", 20, || {
        let out = s.kubectl(&[
            "get",
            "pod",
            "victim",
            "-o",
            "jsonpath={.metadata.deletionTimestamp}",
        ]);
        !out.status.success() || !String::from_utf8_lossy(&out.stdout).is_empty()
    });
    let patient = s.ok(&[
        "get",
        "pod",
        "patient",
        "-o",
        "jsonpath={.metadata.deletionTimestamp}/{.status.conditions[?(@.type=='Ready')].status}",
    ]);
    assert_eq!(patient, "/False");

    // New pods are not placed on the unreachable node.
    s.apply(&on_flaky("newcomer", 3600));
    wait_for("the newcomer to be unschedulable", 20, || {
        s.ok(&[
            "get",
            "pod",
            "newcomer",
            "-o",
            "jsonpath={.status.conditions[?(@.type=='PodScheduled')].message}",
        ])
        .contains("0/2 nodes are available")
    });
    assert_eq!(node_of(&s, "default", "newcomer"), "");

    // The kubelet comes back: lease renewed and Ready posted; the taint goes away.
    renew_lease(&s, "flaky");
    s.ok(&[
        "patch",
        "node",
        "flaky",
        "--subresource=status",
        "--type=strategic",
        "-p",
        r#"{"status":{"conditions":[{"type":"Ready","status":"True","reason":"KubeletReady"}]}}"#,
    ]);
    wait_for("the taint to be removed", 15, || {
        taints_of(&s, "flaky") == ":"
    });
    wait_for(
        "the newcomer to be scheduled on the recovered node",
        30,
        || node_of(&s, "default", "newcomer") == "flaky",
    );
}

fn daemon_pods(s: &Server) -> Vec<(String, String, String, bool)> {
    let out = s.ok(&[
        "get", "pods", "-n", "default", "-l", "app=agent", "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.spec.containers[0].image} {.metadata.deletionTimestamp}{\"\\n\"}{end}",
    ]);
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (
                f[0].to_owned(),
                f.get(1).unwrap_or(&"").to_string(),
                f.get(2).unwrap_or(&"").to_string(),
                f.get(3).is_some_and(|d| !d.is_empty()),
            )
        })
        .collect()
}

#[test]
fn a_daemonset_runs_one_pod_per_eligible_node_follows_new_nodes_and_rolls_out_updates() {
    if !need("kubectl", &["version", "--client"]) {
        return;
    }
    let s = Server::start();
    s.register_node("n1", "2", "4Gi");
    s.register_node("n2", "2", "4Gi");
    s.register_node("tainted", "2", "4Gi");
    s.ok(&["taint", "node", "tainted", "dedicated=db:NoSchedule"]);
    s.apply(
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: agent\nspec:\n  selector:\n    matchLabels: {app: agent}\n  updateStrategy: {type: RollingUpdate, rollingUpdate: {maxUnavailable: 1}}\n  template:\n    metadata:\n      labels: {app: agent}\n    spec:\n      containers:\n      - name: c\n        image: skiff.local/pause:v1\n",
    );
    let nodes_with_pods = |s: &Server| {
        let mut n: Vec<String> = daemon_pods(s)
            .into_iter()
            .filter(|p| !p.3)
            .map(|p| p.1)
            .collect();
        n.sort();
        n
    };
    wait_for("one bound daemon pod on each untainted node", 20, || {
        nodes_with_pods(&s) == ["n1", "n2"]
    });
    // A node joining gets its daemon pod.
    s.register_node("n3", "2", "4Gi");
    wait_for("a daemon pod on the new node", 20, || {
        nodes_with_pods(&s) == ["n1", "n2", "n3"]
    });
    s.mark_pods_ready("default", "app=agent");
    wait_for("the DaemonSet status", 20, || {
        s.ok(&[
            "get", "ds", "agent", "-o",
            "jsonpath={.status.desiredNumberScheduled}/{.status.currentNumberScheduled}/{.status.numberReady}/{.status.updatedNumberScheduled}/{.status.observedGeneration}",
        ]) == "3/3/3/3/1"
    });
    let events = s.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=agent,reason=SuccessfulCreate",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(events.contains("Created pod: agent-"), "{events}");

    // Rolling update: never more than one node without a ready daemon pod.
    s.ok(&["set", "image", "ds/agent", "c=skiff.local/pause:v2"]);
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let pods = daemon_pods(&s);
        let down = pods.iter().filter(|p| p.3).count();
        assert!(
            down <= 1,
            "more than maxUnavailable pods replaced at once: {pods:?}"
        );
        if pods.len() == 3
            && pods
                .iter()
                .all(|p| p.2.ends_with(":v2") && !p.1.is_empty() && !p.3)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rollout did not finish: {pods:?}"
        );
        // Play the kubelet: finish terminating pods, report new ones ready.
        for p in pods.iter().filter(|p| p.3) {
            s.ok(&["delete", "pod", &p.0, "--grace-period=0", "--force"]);
        }
        s.mark_pods_ready("default", "app=agent");
        std::thread::sleep(Duration::from_millis(300));
    }
    s.mark_pods_ready("default", "app=agent");
    wait_for("the rolled-out status", 20, || {
        s.ok(&[
            "get", "ds", "agent", "-o",
            "jsonpath={.status.updatedNumberScheduled}/{.status.numberAvailable}/{.status.observedGeneration}",
        ]) == "3/3/2"
    });
}

#[test]
fn replicas_on_a_lost_node_come_back_on_another_node() {
    if !need("kubectl", &["version", "--client"]) {
        return;
    }
    let s = Server::start_with(&["--node-monitor-grace-period", "4"]);
    s.register_node("lost", "4", "8Gi");
    renew_lease(&s, "lost");
    s.apply(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      tolerations: [{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 1}]\n      containers: [{name: c, image: skiff.local/pause}]\n",
    );
    let placement =
        || {
            s.ok(&[
            "get", "pods", "-l", "app=web", "-o",
            "jsonpath={range .items[*]}{.spec.nodeName}{.metadata.deletionTimestamp}{\"\\n\"}{end}",
        ])
        };
    wait_for("both replicas on the only node", 30, || {
        placement().lines().filter(|l| *l == "lost").count() == 2
    });
    // A second node joins; then the first one stops renewing its lease.
    s.register_node("alive", "4", "8Gi");
    wait_for("the lost node to go Unknown", 30, || {
        ready_of(&s, "lost") == "Unknown"
    });
    // Evicted replicas are replaced and the replacements land on the healthy node.
    wait_for("two live replicas on the healthy node", 60, || {
        placement().lines().filter(|l| *l == "alive").count() == 2
    });
}
