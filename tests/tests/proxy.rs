//! The dataplane conformance suite: what every Service proxy mode must do, checked with real
//! packets on a two-node cluster plus a host outside it on the underlay. Each case names the
//! Kubernetes behaviour it checks; a failure says which case and shows the cluster's logs.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{PodInfo, eventually, eventually_ok, in_pod, ip_of, json, pods, prerequisites};
use skiff_e2e::cluster::Cluster;

fn manifests(node1: &str, external_ip: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 4
  strategy: {{type: RollingUpdate, rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}}}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 10
      containers:
      - name: netexec
        image: skiff.local/netexec:latest
        imagePullPolicy: Never
        # Serve on while the endpoint is withdrawn (what a preStop sleep does in production).
        command: ["/netexec", "--delay-shutdown", "3"]
        ports: [{{name: http, containerPort: 8080}}, {{name: udp, containerPort: 8081, protocol: UDP}}]
---
# Clients on every node that back no Service.
apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: client}}
spec:
  selector: {{matchLabels: {{app: client}}}}
  template:
    metadata: {{labels: {{app: client}}}}
    spec:
      containers:
      - name: netexec
        image: skiff.local/netexec:latest
        imagePullPolicy: Never
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: solo}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: solo}}}}
  template:
    metadata: {{labels: {{app: solo}}}}
    spec:
      nodeSelector: {{kubernetes.io/hostname: {node1}}}
      containers:
      - name: netexec
        image: skiff.local/netexec:latest
        imagePullPolicy: Never
        ports: [{{name: http, containerPort: 8080}}, {{name: udp, containerPort: 8081, protocol: UDP}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  externalIPs: ["{external_ip}"]
  ports:
  - {{name: http, port: 80, targetPort: http}}
  - {{name: udp, port: 81, targetPort: udp, protocol: UDP}}
---
apiVersion: v1
kind: Service
metadata: {{name: web-np}}
spec:
  type: NodePort
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web-aff}}
spec:
  selector: {{app: web}}
  sessionAffinity: ClientIP
  sessionAffinityConfig: {{clientIP: {{timeoutSeconds: 2}}}}
  ports: [{{name: http, port: 80, targetPort: http}}]
---
apiVersion: v1
kind: Service
metadata: {{name: solo}}
spec:
  # LoadBalancer (no load balancer here): its node ports, plus a health check node port.
  type: LoadBalancer
  externalTrafficPolicy: Local
  selector: {{app: solo}}
  ports:
  - {{name: http, port: 80, targetPort: http}}
  - {{name: udp, port: 81, targetPort: udp, protocol: UDP}}
---
apiVersion: v1
kind: Service
metadata: {{name: web-headless}}
spec:
  clusterIP: None
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http}}]
"#
    )
}

/// Where a request starts.
enum From<'a> {
    Pod(&'a PodInfo),
    Node(usize),
    External,
}

fn output(mut cmd: Command) -> Result<String, String> {
    skiff_e2e::cluster::run(&mut cmd)
        .map(|o| o.trim().to_owned())
        .map_err(|e| e.to_string())
}

/// A shell command in node `n`'s namespace.
fn node_sh(c: &Cluster, n: usize, script: &str) -> Result<String, String> {
    let mut cmd = c.in_node(n, "sh");
    cmd.args(["-c", script]);
    output(cmd)
}

/// An HTTP GET bounded to `secs`.
fn get(c: &Cluster, from: &From, url: &str, secs: u32) -> Result<String, String> {
    let secs = secs.to_string();
    let mut cmd = match from {
        From::Pod(p) => return in_pod(&p.container, &format!("timeout {secs} wget -qO- {url}")),
        From::Node(i) => c.in_node(*i, "timeout"),
        From::External => c.in_external("timeout"),
    };
    cmd.args([&secs, "busybox", "wget", "-qO-", url]);
    output(cmd)
}

struct Suite {
    c: Cluster,
    web: Vec<PodInfo>,
    clients: Vec<PodInfo>,
    solo: PodInfo,
}

impl Suite {
    fn cluster_ip(&self, svc: &str) -> String {
        self.c
            .kubectl(&["get", "svc", svc, "-o", "jsonpath={.spec.clusterIP}"])
            .unwrap()
    }

    fn node_port(&self, svc: &str) -> String {
        self.c
            .kubectl(&[
                "get",
                "svc",
                svc,
                "-o",
                "jsonpath={.spec.ports[0].nodePort}",
            ])
            .unwrap()
    }

    fn must(&self, case: &str, from: &From, url: &str) -> String {
        get(&self.c, from, url, 10)
            .unwrap_or_else(|e| panic!("{case}: GET {url}: {e}\n{}", self.c.logs()))
    }

    /// Hostnames answering `n` requests.
    fn spread(&self, case: &str, from: &From, url: &str, n: usize) -> BTreeSet<String> {
        (0..n).map(|_| self.must(case, from, url)).collect()
    }

    fn client_on(&self, node: usize) -> &PodInfo {
        let name = self.c.node_name(node);
        self.clients.iter().find(|p| p.node == name).unwrap()
    }

    /// Waits for the workloads of `manifests` to be ready.
    fn new(c: Cluster) -> Self {
        eventually(
            &c,
            "4 web pods, 1 solo pod and 2 clients ready",
            120,
            || {
                let w = pods(&c, "app=web");
                let s = pods(&c, "app=solo");
                let k = pods(&c, "app=client");
                w.len() == 4
                    && w.iter().all(|p| p.ready)
                    && s.len() == 1
                    && s[0].ready
                    && k.len() == 2
                    && k.iter().all(|p| p.ready)
            },
        );
        Self {
            web: pods(&c, "app=web"),
            clients: pods(&c, "app=client"),
            solo: pods(&c, "app=solo").remove(0),
            c,
        }
    }
}

/// A node agent's /metrics page.
fn metrics(c: &Cluster, node: usize) -> String {
    output({
        let mut cmd = c.in_node(node, "busybox");
        cmd.args(["wget", "-qO-", "http://127.0.0.1:10249/metrics"]);
        cmd
    })
    .unwrap()
}

/// One of a node agent's metrics.
fn metric(c: &Cluster, node: usize, name: &str) -> f64 {
    let metrics = metrics(c, node);
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in node{node}'s metrics:\n{metrics}"))
}

fn conformance(mode: &str, agent_flags: &[&str]) {
    if !prerequisites() {
        return;
    }
    let c = common::cluster_with(2, mode, &[], agent_flags);
    let node1 = c.node_name(1);
    let eip = c.external_service_ip().to_string();
    c.kubectl_in(&["apply", "-f", "-"], Some(&manifests(&node1, &eip)))
        .unwrap();
    let s = Suite::new(c);
    let nodes: BTreeSet<_> = s.web.iter().map(|p| p.node.clone()).collect();
    assert_eq!(nodes.len(), 2, "web spreads over both nodes: {:?}", s.web);
    let all: BTreeSet<String> = s.web.iter().map(|p| p.name.clone()).collect();
    let vip = s.cluster_ip("web");

    // pod -> ClusterIP: every backend answers, on this node and the other, and the backend
    // sees the client pod's own address.
    for n in [1, 2] {
        let from = From::Pod(s.client_on(n));
        let case = format!("pod on node{n} -> ClusterIP");
        eventually(&s.c, &format!("{case}: all 4 backends answer"), 60, || {
            s.spread(&case, &from, &format!("http://{vip}/hostname"), 24) == all
        });
        let seen = s.must(&case, &from, &format!("http://{vip}/clientip"));
        assert_eq!(ip_of(&seen), s.client_on(n).ip, "{case}: source kept");
    }

    // pod -> pod on the other node, by its IP: the receiver sees the sender's address over
    // TCP and UDP. In eBPF mode the datapath routes it between pod veths and the overlay
    // device (host routing), so neither node's FORWARD chain sees it; in iptables mode both do.
    let (a, b) = (
        s.client_on(1),
        s.web.iter().find(|p| p.node == s.c.node_name(2)).unwrap(),
    );
    let count = format!(
        "-s {} -d {} -m comment --comment e2e-host-routing",
        a.ip, b.ip
    );
    for n in [1, 2] {
        node_sh(
            &s.c,
            n,
            &format!("iptables-legacy -I FORWARD {count} && iptables-legacy -Z FORWARD 1"),
        )
        .unwrap();
    }
    let case = "pod -> pod on the other node";
    let seen = s.must(
        case,
        &From::Pod(a),
        &format!("http://{}:8080/clientip", b.ip),
    );
    assert_eq!(ip_of(&seen), a.ip, "{case} (TCP): source kept");
    let seen = in_pod(
        &a.container,
        &format!("/netexec dial-udp {}:8081 clientip", b.ip),
    )
    .unwrap_or_else(|e| panic!("{case} (UDP): {e}"));
    assert_eq!(ip_of(&seen), a.ip, "{case} (UDP): source kept");
    for n in [1, 2] {
        let listed = node_sh(
            &s.c,
            n,
            &format!("iptables-legacy -L FORWARD 1 -v -x -n && iptables-legacy -D FORWARD {count}"),
        )
        .unwrap();
        let packets: u64 = listed
            .split_whitespace()
            .next()
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("{case}: no counter in {listed:?}"));
        if mode == "ebpf" {
            assert_eq!(
                packets, 0,
                "{case}: node{n}'s FORWARD chain saw it (no host routing)"
            );
            // ... and both directions went from the overlay device straight into the pod.
            let delivered = metric(&s.c, n, "skiff_ebpf_into_pod_total");
            assert!(
                delivered > 0.0,
                "{case}: node{n} delivered nothing straight into a pod"
            );
        } else {
            assert!(
                packets > 0,
                "{case}: node{n} routed it by its stack: {listed}"
            );
        }
    }

    // node -> ClusterIP works (the node's address is masqueraded toward remote backends).
    let got = s.spread(
        "node -> ClusterIP",
        &From::Node(1),
        &format!("http://{vip}/hostname"),
        16,
    );
    assert!(
        got.len() >= 2 && got.is_subset(&all),
        "node -> ClusterIP: {got:?}"
    );

    // node -> ClusterIP over UDP from an unconnected socket: answered by a web pod, and the
    // reply comes from the ClusterIP the node sent to.
    let script = format!(
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3); \
         s.sendto(b'hostname', ('{vip}', 81)); d, a = s.recvfrom(1024); print(d.decode(), a[0], a[1])"
    );
    let mut cmd = s.c.in_node(1, "python3");
    cmd.args(["-c", &script]);
    let out = output(cmd).unwrap_or_else(|e| panic!("node -> ClusterIP over UDP: {e}"));
    let words: Vec<&str> = out.split_whitespace().collect();
    assert!(
        matches!(words[..], [pod, from, "81"] if all.contains(pod) && from == vip),
        "node -> ClusterIP over UDP: {out}"
    );

    // Multi-port service, UDP port with a named targetPort.
    let udp = in_pod(
        &s.client_on(1).container,
        &format!("/netexec dial-udp {vip}:81 hostname"),
    )
    .unwrap_or_else(|e| panic!("pod -> ClusterIP over UDP: {e}"));
    assert!(all.contains(&udp), "UDP answered by a web pod: {udp}");

    // pod -> NodePort on each node, and external host -> NodePort (policy Cluster: SNAT).
    let np = s.node_port("web-np");
    for n in [1, 2] {
        let url = format!("http://{}:{np}/hostname", s.c.node_ip(n));
        let from = From::Pod(s.client_on(1));
        assert!(all.contains(&s.must("pod -> NodePort", &from, &url)));
        let seen = s.must(
            "external -> NodePort (Cluster)",
            &From::External,
            &format!("http://{}:{np}/clientip", s.c.node_ip(n)),
        );
        assert_ne!(
            ip_of(&seen),
            s.c.external_ip().to_string(),
            "externalTrafficPolicy Cluster masquerades the client"
        );
    }

    // externalTrafficPolicy Local: the client's address is kept, only local endpoints serve,
    // a node without one drops the traffic, and the health check node port says so.
    let np = s.node_port("solo");
    let seen = s.must(
        "external -> NodePort (Local)",
        &From::External,
        &format!("http://{}:{np}/clientip", s.c.node_ip(1)),
    );
    assert_eq!(
        ip_of(&seen),
        s.c.external_ip().to_string(),
        "Local keeps the client"
    );
    let dropped = get(
        &s.c,
        &From::External,
        &format!("http://{}:{np}/hostname", s.c.node_ip(2)),
        3,
    );
    assert!(
        dropped.is_err(),
        "node2 has no local solo endpoint: {dropped:?}"
    );
    let hc =
        s.c.kubectl(&[
            "get",
            "svc",
            "solo",
            "-o",
            "jsonpath={.spec.healthCheckNodePort}",
        ])
        .unwrap();
    let ok = s.must(
        "health check node port",
        &From::External,
        &format!("http://{}:{hc}/", s.c.node_ip(1)),
    );
    assert!(ok.contains("\"localEndpoints\":1"), "{ok}");
    let none = get(
        &s.c,
        &From::External,
        &format!("http://{}:{hc}/", s.c.node_ip(2)),
        5,
    );
    assert!(
        none.is_err(),
        "node2 answers 503 (wget fails on it): {none:?}"
    );

    // ExternalIPs: from outside (routed to node1) and from a pod.
    let got = s.must(
        "external -> externalIP",
        &From::External,
        &format!("http://{eip}/hostname"),
    );
    assert!(all.contains(&got));
    let got = s.must(
        "pod -> externalIP",
        &From::Pod(s.client_on(2)),
        &format!("http://{eip}/hostname"),
    );
    assert!(all.contains(&got));

    // Hairpin: the solo pod reaches itself through its Service, masqueraded so that the reply
    // comes back through the node.
    let solo_vip = s.cluster_ip("solo");
    let seen = s.must(
        "hairpin",
        &From::Pod(&s.solo),
        &format!("http://{solo_vip}/clientip"),
    );
    assert_ne!(ip_of(&seen), s.solo.ip, "hairpin traffic is masqueraded");
    let me = s.must(
        "hairpin",
        &From::Pod(&s.solo),
        &format!("http://{solo_vip}/hostname"),
    );
    assert_eq!(me, s.solo.name);

    // Session affinity ClientIP: sticks, expires after its timeout, and can be switched off
    // and on.
    let aff = s.cluster_ip("web-aff");
    let from = From::Pod(s.client_on(2));
    let url = format!("http://{aff}/hostname");
    let first = s.must("affinity", &from, &url);
    for _ in 0..10 {
        assert_eq!(s.must("affinity sticks", &from, &url), first);
    }
    let mut moved = false;
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(2600));
        if s.must("affinity expires", &from, &url) != first {
            moved = true;
            break;
        }
    }
    assert!(
        moved,
        "affinity expired after its 2 s timeout at least once in 8 tries"
    );
    s.c.kubectl(&[
        "patch",
        "svc",
        "web-aff",
        "-p",
        r#"{"spec":{"sessionAffinity":"None"}}"#,
    ])
    .unwrap();
    eventually(&s.c, "affinity off: several backends answer", 30, || {
        s.spread("affinity off", &from, &url, 12).len() > 1
    });
    s.c.kubectl(&[
        "patch",
        "svc",
        "web-aff",
        "-p",
        r#"{"spec":{"sessionAffinity":"ClientIP"}}"#,
    ])
    .unwrap();
    eventually(&s.c, "affinity back on: one backend answers", 30, || {
        s.spread("affinity on", &from, &url, 12).len() == 1
    });

    // Headless services are not proxied; in eBPF mode no iptables rule translates services.
    let rules = node_sh(
        &s.c,
        1,
        "iptables-legacy-save 2>/dev/null; iptables-save 2>/dev/null",
    )
    .unwrap();
    assert!(rules.contains("SKIFF-POD-MASQ"), "rules were read: {rules}");
    assert!(
        !rules.contains("web-headless"),
        "headless service has no rules"
    );
    if mode == "ebpf" {
        for chain in [
            "SKIFF-SERVICES",
            "SKIFF-SVC-",
            "SKIFF-NODEPORTS",
            "SKIFF-HAIRPIN",
        ] {
            assert!(
                !rules.contains(chain),
                "eBPF mode left {chain} rules:\n{rules}"
            );
        }
        let metrics = metrics(&s.c, 1);
        assert!(
            metrics.contains("skiff_ebpf_translated_packets_total"),
            "{metrics}"
        );
    } else {
        assert!(rules.contains("default/web:http"), "service rules present");
    }

    // UDP across a backend change: a client that keeps its source port (one conntrack entry)
    // reaches the new backend instead of a black hole.
    let client = s.client_on(2).container.clone();
    let dial = |what: &str| {
        in_pod(
            &client,
            &format!("/netexec dial-udp {solo_vip}:81 {what} 40123"),
        )
    };
    assert_eq!(dial("hostname").unwrap(), s.solo.name);
    let old = s.solo.name.clone();
    s.c.kubectl(&["delete", "pod", &old, "--wait=false"])
        .unwrap();
    eventually(
        &s.c,
        "the same UDP flow reaches the replacement pod",
        60,
        || dial("hostname").is_ok_and(|h| !h.is_empty() && h != old),
    );

    // Scale to zero: connections are refused at once rather than hanging; and back.
    s.c.kubectl(&["scale", "deployment", "solo", "--replicas", "0"])
        .unwrap();
    let url = format!("http://{solo_vip}/hostname");
    eventually_ok(&s.c, "a service without endpoints rejects", 90, || {
        let t = Instant::now();
        match get(&s.c, &From::Pod(s.client_on(1)), &url, 8) {
            Ok(body) => Err(format!("answered {body:?}")),
            Err(e) if t.elapsed() >= Duration::from_secs(3) => {
                Err(format!("failed after {:?}: {e}", t.elapsed()))
            }
            Err(_) => Ok(()),
        }
    });
    s.c.kubectl(&["scale", "deployment", "solo", "--replicas", "1"])
        .unwrap();
    eventually(
        &s.c,
        "the service answers again after scaling back",
        90,
        || get(&s.c, &From::Pod(s.client_on(1)), &url, 5).is_ok(),
    );

    // Rolling update with a client loop running: not one request fails.
    let client = s.client_on(1).container.clone();
    let script = format!(
        "fails=0; for i in $(seq 250); do timeout 3 wget -qO- http://{vip}/hostname >/dev/null || fails=$((fails+1)); sleep 0.1; done; echo $fails"
    );
    let loop_thread = std::thread::spawn(move || {
        let out = Command::new("timeout")
            .args(["120", "docker", "exec", &client, "sh", "-c", &script])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    });
    std::thread::sleep(Duration::from_secs(1));
    s.c.kubectl(&["set", "env", "deployment/web", "ROLL=1"])
        .unwrap();
    let fails = loop_thread.join().unwrap();
    let rs = json(&s.c, &["get", "deployment", "web"]);
    assert_eq!(
        fails, "0",
        "requests failed during the rolling update; deployment status: {}",
        rs["status"]
    );
}

#[test]
fn services_conform_in_iptables_mode() {
    conformance("iptables", &[]);
}

/// The other iptables backend: its full syncs come in slices, each a restore of its own.
#[test]
fn services_conform_in_iptables_mode_on_nf_tables() {
    conformance("iptables", &["--iptables-backend", "nft"]);
}

#[test]
fn services_conform_in_ebpf_mode() {
    conformance("ebpf", &[]);
}
