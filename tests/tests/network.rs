//! The pod network on a real two-node cluster: pods on both nodes reach each other by IP over
//! TCP and UDP through the VXLAN overlay with their own source address, traffic to a node is
//! masqueraded, an agent restart changes nothing for running pods, and a lost node's pods come
//! back on the other one.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};

use common::{PodInfo, eventually, in_pod, ip_of, pods, prerequisites};

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 4
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      # Leave a lost node within seconds rather than Kubernetes' default 300.
      tolerations:
      - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 2}
      - {key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute, tolerationSeconds: 2}
      containers:
      - name: netexec
        image: skiff.local/netexec:latest
        imagePullPolicy: Never
"#;

fn tcp_client_ip(from: &PodInfo, to: &str) -> Result<String, String> {
    in_pod(&from.container, &format!("wget -qO- http://{to}/clientip"))
}

fn udp_client_ip(from: &PodInfo, to_ip: &str) -> Result<String, String> {
    in_pod(
        &from.container,
        &format!("/netexec dial-udp {to_ip}:8081 clientip"),
    )
}

#[test]
fn pods_reach_each_other_across_nodes_keep_their_ips_and_survive_node_loss() {
    if !prerequisites() {
        return;
    }
    let c = common::cluster(2, &["--node-monitor-grace-period", "15"]);
    c.kubectl_in(&["apply", "-f", "-"], Some(DEPLOYMENT))
        .unwrap();
    eventually(&c, "4 ready web pods", 90, || {
        let p = pods(&c, "app=web");
        p.len() == 4 && p.iter().all(|p| p.ready && !p.ip.is_empty())
    });
    let web = pods(&c, "app=web");
    let nodes: std::collections::BTreeSet<_> = web.iter().map(|p| p.node.clone()).collect();
    assert_eq!(
        nodes.len(),
        2,
        "the deployment spreads over both nodes: {web:?}"
    );
    let ips: std::collections::BTreeSet<_> = web.iter().map(|p| p.ip.clone()).collect();
    assert_eq!(ips.len(), 4, "every pod has its own address: {web:?}");
    // Its MAC follows from its address, so a pod that takes over an address takes the MAC
    // the nodes' neighbour entries hold for it.
    for p in &web {
        let mac = in_pod(&p.container, "cat /sys/class/net/eth0/address").unwrap();
        let o: Vec<u8> = p.ip.split('.').map(|b| b.parse().unwrap()).collect();
        let want = format!("0a:58:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3]);
        assert_eq!(mac.trim(), want, "{}", p.name);
    }

    // What each pod sends is steered to its consuming socket's CPU (receive flow steering on
    // the veth's host end; left alone, a TCP flow runs on two CPUs at once and arrives
    // reordered). The host's flow table is sized while the cluster runs.
    if std::thread::available_parallelism().map_or(1, |n| n.get()) > 1 {
        let table = std::fs::read_to_string("/proc/sys/net/core/rps_sock_flow_entries").unwrap();
        assert!(
            table.trim().parse::<u64>().unwrap() >= 32768,
            "flow table {table}"
        );
        for n in [1, 2] {
            let out = c
                .in_node(n, "sh")
                .args(["-c", "grep -H . /sys/class/net/veth*/queues/rx-0/rps_*"])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let mut veths = 0;
            for line in text.lines() {
                let (file, value) = line.rsplit_once(':').unwrap();
                if file.ends_with("rps_cpus") {
                    veths += 1;
                    let cpus: u32 = value
                        .chars()
                        .filter_map(|h| h.to_digit(16))
                        .map(u32::count_ones)
                        .sum();
                    assert!(cpus > 1, "node{n}: {line}");
                } else if file.ends_with("rps_flow_cnt") {
                    assert_eq!(value, "4096", "node{n}: {line}");
                }
            }
            assert!(veths > 0, "node{n}: no pod veth steered: {text}");
        }
    }
    // The overlay device queues nothing for GRO of its own: what it receives is aggregated
    // already, and a second queue beside the CPU's backlog reorders flows.
    for n in [1, 2] {
        let out =
            skiff_e2e::cluster::run(c.in_node(n, "ethtool").args(["-k", "skiff.vxlan"])).unwrap();
        assert!(
            out.contains("generic-receive-offload: off"),
            "node{n}: GRO on skiff.vxlan: {out}"
        );
    }

    // Every pod reaches every other pod, same node and across nodes, over TCP and UDP, and the
    // receiver sees the sender's own pod IP.
    for a in &web {
        for b in &web {
            if a.name == b.name {
                continue;
            }
            let seen = tcp_client_ip(a, &format!("{}:8080", b.ip))
                .unwrap_or_else(|e| panic!("{} -> {} over TCP: {e}\n{}", a.name, b.name, c.logs()));
            assert_eq!(
                ip_of(&seen),
                a.ip,
                "{} -> {} (TCP) was SNATed",
                a.name,
                b.name
            );
            let seen = udp_client_ip(a, &b.ip)
                .unwrap_or_else(|e| panic!("{} -> {} over UDP: {e}", a.name, b.name));
            assert_eq!(
                ip_of(&seen),
                a.ip,
                "{} -> {} (UDP) was SNATed",
                a.name,
                b.name
            );
        }
    }

    // A pod talking to another node (not a pod) is masqueraded behind its own node's address.
    let on1: Vec<_> = web
        .iter()
        .filter(|p| p.node == c.node_name(1))
        .cloned()
        .collect();
    let mut listener = c
        .in_node(2, c.spec.bin_dir.join("netexec").to_str().unwrap())
        .args(["--http-port", "18080", "--udp-port", "18081"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let target = format!("{}:18080", c.node_ip(2));
    let mut seen = Err(String::new());
    for _ in 0..40 {
        seen = tcp_client_ip(&on1[0], &target);
        if seen.is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    let _ = listener.kill();
    let _ = listener.wait();
    assert_eq!(
        ip_of(&seen.unwrap()),
        c.node_ip(1).to_string(),
        "pod -> other node is masqueraded to the pod's node"
    );

    // Restarting node 1's agent neither restarts nor re-addresses its pods.
    c.stop_agent(1).unwrap();
    c.start_agent(1).unwrap();
    c.wait_agent_ready(1).unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));
    let after = pods(&c, "app=web");
    for p in &on1 {
        let q = after
            .iter()
            .find(|q| q.name == p.name)
            .expect("pod still there");
        assert_eq!(
            (&q.ip, &q.container),
            (&p.ip, &p.container),
            "{} changed",
            p.name
        );
    }
    let other = web.iter().find(|p| p.node == c.node_name(2)).unwrap();
    assert_eq!(
        ip_of(&tcp_client_ip(&on1[0], &format!("{}:8080", other.ip)).unwrap()),
        on1[0].ip
    );

    // Node 2 disappears: it turns NotReady and its pods come back on node 1.
    c.destroy_node(2).unwrap();
    let node2 = c.node_name(2);
    eventually(&c, "node 2 NotReady", 60, || {
        c.kubectl(&[
            "get",
            "node",
            &node2,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ])
        .is_ok_and(|s| s.trim() != "True")
    });
    eventually(&c, "4 ready web pods on node 1", 120, || {
        let p = pods(&c, "app=web");
        p.iter()
            .filter(|p| p.ready && p.node == c.node_name(1))
            .count()
            == 4
    });
    let moved = pods(&c, "app=web");
    let (a, b) = (
        moved
            .iter()
            .find(|p| p.node == c.node_name(1) && p.ready)
            .unwrap(),
        moved
            .iter()
            .filter(|p| p.node == c.node_name(1) && p.ready)
            .nth(1)
            .unwrap(),
    );
    assert_eq!(
        ip_of(&tcp_client_ip(a, &format!("{}:8080", b.ip)).unwrap()),
        a.ip
    );
    // Nothing of the cluster is left on the host afterwards (checked by name).
    let name = c.spec.name.clone();
    drop(c);
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&netns.stdout).contains(&format!("skiff-{name}-")));
}
