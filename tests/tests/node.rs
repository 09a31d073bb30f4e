//! One node, its agent and its pods: registration and heartbeat, pods on Docker with their
//! own address, crash-loop restarts, the downward API, an agent restart that adopts what runs,
//! a clean shutdown report, and deletion that stops containers and frees the address.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{eventually, in_pod, prerequisites};

fn containers(node: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=skiff.io/node={node}"),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_node_runs_pods_and_survives_its_agent_restarting() {
    if !prerequisites() {
        return;
    }
    let c = common::cluster(1, &[]);
    let node = c.node_name(1);
    let get = |what: &str, path: &str| {
        c.kubectl(&["get", what, "-o", &format!("jsonpath={path}")])
            .unwrap_or_default()
    };
    let node_obj = format!("node/{node}");
    assert_eq!(
        get(
            &node_obj,
            "{.status.addresses[?(@.type==\"InternalIP\")].address}"
        ),
        c.node_ip(1).to_string()
    );
    assert_eq!(
        get(
            &node_obj,
            "{.status.conditions[?(@.type==\"Ready\")].status}"
        ),
        "True"
    );
    assert!(get(&node_obj, "{.spec.podCIDR}").starts_with("10.244."));
    assert!(!get(&node_obj, "{.metadata.annotations.skiff\\.io/vtep-mac}").is_empty());
    let uid = get(&node_obj, "{.metadata.uid}");

    let manifest = "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  terminationGracePeriodSeconds: 5\n  containers:\n  - name: web\n    image: skiff.local/netexec:latest\n    imagePullPolicy: Never\n    env:\n    - {name: MY_NODE, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}\n    - {name: MY_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}\n  - name: crash\n    image: skiff.local/netexec:latest\n    imagePullPolicy: Never\n    command: [/bin/sh, -c, 'exit 3']\n";
    c.kubectl_in(&["apply", "-f", "-"], Some(manifest)).unwrap();
    let pod = |path: &str| get("pod/web", path);
    eventually(&c, "the web container to run", 60, || {
        pod("{.status.containerStatuses[?(@.name==\"web\")].state.running}").contains("startedAt")
    });
    eventually(&c, "the crashing container to be restarted", 60, || {
        pod("{.status.containerStatuses[?(@.name==\"crash\")].restartCount}")
            .parse::<u32>()
            .unwrap_or(0)
            >= 1
    });
    assert_eq!(pod("{.status.phase}"), "Running");
    assert_eq!(pod("{.status.hostIP}"), c.node_ip(1).to_string());
    let ip = pod("{.status.podIP}");
    assert!(ip.starts_with("10.244."), "{ip}");
    let web = pod("{.status.containerStatuses[?(@.name==\"web\")].containerID}")
        .trim_start_matches("docker://")
        .to_owned();
    // The downward API, the pod's own interface and its resolv.conf.
    assert_eq!(
        in_pod(&web, "echo $MY_NODE:$POD_NAME:$MY_IP").unwrap(),
        format!("{node}:web:{ip}")
    );
    let addr = in_pod(&web, "ip -4 -o addr show eth0").unwrap();
    assert!(addr.contains(&format!("{ip}/24")), "{addr}");
    let resolv = in_pod(&web, "cat /etc/resolv.conf").unwrap();
    assert!(resolv.contains("nameserver 10.96.0.10"), "{resolv}");
    assert!(
        resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local"),
        "{resolv}"
    );
    assert!(
        in_pod(&web, "cat /etc/hosts")
            .unwrap()
            .contains(&format!("{ip}\tweb"))
    );

    // The lease is renewed every 10 s.
    let first = c
        .kubectl(&[
            "get",
            "lease",
            &node,
            "-n",
            "kube-node-lease",
            "-o",
            "jsonpath={.spec.renewTime}",
        ])
        .unwrap();
    eventually(&c, "a lease renewal", 25, || {
        c.kubectl(&[
            "get",
            "lease",
            &node,
            "-n",
            "kube-node-lease",
            "-o",
            "jsonpath={.spec.renewTime}",
        ])
        .is_ok_and(|r| r != first)
    });

    // SIGTERM: the node says it is going away; its pods keep running.
    c.stop_agent(1).unwrap();
    assert_eq!(
        get(
            &node_obj,
            "{.status.conditions[?(@.type==\"Ready\")].status}:{.status.conditions[?(@.type==\"Ready\")].message}"
        ),
        "False:skiff-agent is shutting down"
    );
    // A restarted agent adopts its Node, the running containers and the pod's address.
    c.start_agent(1).unwrap();
    c.wait_agent_ready(1).unwrap();
    assert_eq!(get(&node_obj, "{.metadata.uid}"), uid);
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(
        get(
            &node_obj,
            "{.status.conditions[?(@.type==\"Ready\")].status}"
        ),
        "True"
    );
    assert_eq!(pod("{.status.podIP}"), ip);
    assert_eq!(
        in_pod(&web, "echo up").unwrap(),
        "up",
        "the web container kept running across the agent restart"
    );

    // Deletion stops the containers, releases the pod and frees its address.
    c.kubectl(&["delete", "pod", "web", "--wait=false"])
        .unwrap();
    eventually(&c, "the pod to be released", 60, || {
        c.kubectl(&["get", "pods", "-o", "name"])
            .is_ok_and(|s| s.trim().is_empty())
    });
    eventually(&c, "the containers to be removed", 30, || {
        containers(&node).is_empty()
    });
    let ipam = c.spec.state_dir.join("node1/ipam");
    eventually(&c, "the address to be freed", 10, || {
        walk(&ipam).iter().all(|f| f.ends_with("last"))
    });
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path().display().to_string());
        }
    }
    out
}
