//! Services end to end with kubectl: ClusterIP and NodePort allocation in the API write path,
//! the built-in `kubernetes` and `kube-dns` Services, and EndpointSlices / Endpoints following
//! pods (the test plays the node agent by writing pod status).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;

use common::{Server, need};
use serde_json::Value;

fn json(s: &Server, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&s.ok(&a)).unwrap()
}

fn field(s: &Server, what: &[&str], path: &str) -> String {
    let mut a = vec!["get"];
    a.extend(what);
    let jp = format!("jsonpath={path}");
    a.extend(["-o", jp.as_str()]);
    s.ok(&a)
}

fn in_range(ip: &str, net: &str) -> bool {
    let net: ipnet::Ipv4Net = net.parse().unwrap();
    ip.parse::<Ipv4Addr>().is_ok_and(|ip| net.contains(&ip))
}

/// `(cluster IP, node ports)` of every Service in the cluster.
fn allocations(s: &Server) -> Vec<(String, String, Vec<u64>)> {
    let list = json(s, &["get", "svc", "-A"]);
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|svc| {
            let mut ports: Vec<u64> = svc["spec"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["nodePort"].as_u64())
                .collect();
            ports.extend(svc["spec"]["healthCheckNodePort"].as_u64());
            ports.dedup();
            (
                format!(
                    "{}/{}",
                    svc["metadata"]["namespace"].as_str().unwrap(),
                    svc["metadata"]["name"].as_str().unwrap()
                ),
                svc["spec"]["clusterIP"].as_str().unwrap_or("").to_owned(),
                ports,
            )
        })
        .collect()
}

/// Asserts that no two Services share a cluster IP or a node port.
fn assert_unique(all: &[(String, String, Vec<u64>)]) {
    let mut ips = HashSet::new();
    let mut ports = HashSet::new();
    for (name, ip, nps) in all {
        if !ip.is_empty() && ip != "None" {
            assert!(ips.insert(ip.clone()), "{name} shares cluster IP {ip}");
        }
        for p in nps {
            assert!(ports.insert(*p), "{name} shares node port {p}");
            assert!((30000..=32767).contains(p), "{name}: node port {p}");
        }
    }
}

fn many_services(ns: &str, n: usize) -> String {
    let mut y = format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n");
    for i in 0..n {
        let ty = if i % 2 == 0 { "NodePort" } else { "ClusterIP" };
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: {ns}}}\nspec:\n  type: {ty}\n  selector: {{app: s{i}}}\n  ports: [{{port: 80, targetPort: 8080}}]\n"
        ));
    }
    y
}

/// `kubectl create -f -` of a Service in `default` (kubectl's `create service` sends protobuf,
/// which this server does not speak yet).
fn create_svc(s: &Server, name: &str, spec: &str) -> std::process::Output {
    let yaml = format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {spec}\n");
    s.kubectl_stdin(&["create", "-f", "-"], Some(&yaml))
}

fn created(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn refused(out: std::process::Output) -> String {
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn cluster_ips_and_node_ports_are_allocated_unique_and_checked() {
    if !need("kubectl", &["version", "--client"]) {
        return;
    }
    let s = Server::start_with(&["--service-cidr", "10.100.0.0/16"]);

    // The built-in Services.
    let table = s.ok(&["get", "svc", "-A"]);
    assert!(
        table.contains("kubernetes") && table.contains("10.100.0.1"),
        "{table}"
    );
    assert!(table.contains("443/TCP"), "{table}");
    assert_eq!(
        field(
            &s,
            &["svc", "kube-dns", "-n", "kube-system"],
            "{.spec.clusterIP} {.spec.ports[*].protocol} {.metadata.labels.k8s-app}"
        ),
        "10.100.0.10 UDP TCP kube-dns"
    );
    // No pods back it: every node agent answers on that address itself.
    assert_eq!(
        field(
            &s,
            &["svc", "kube-dns", "-n", "kube-system"],
            "{.spec.selector}"
        ),
        ""
    );

    // Fifty at once: all get an address of the range, all unique.
    s.apply(&many_services("many", 50));
    let all = allocations(&s);
    let many: Vec<_> = all
        .iter()
        .filter(|(n, _, _)| n.starts_with("many/"))
        .collect();
    assert_eq!(many.len(), 50);
    for (name, ip, ports) in &many {
        assert!(in_range(ip, "10.100.0.0/16"), "{name}: {ip}");
        let idx: usize = name.trim_start_matches("many/s").parse().unwrap();
        assert_eq!(
            ports.len(),
            usize::from(idx.is_multiple_of(2)),
            "{name}: {ports:?}"
        );
    }
    assert_unique(&all);
    let get_ip = |name: &str| field(&s, &["svc", name], "{.spec.clusterIP}");

    // A requested address is honoured; taken, reserved and foreign ones are refused with 422.
    let out = created(create_svc(
        &s,
        "asked",
        "{clusterIP: 10.100.0.50, ports: [{port: 80}]}",
    ));
    assert!(out.contains("service/asked created"), "{out}");
    assert_eq!(get_ip("asked"), "10.100.0.50");
    let ipfields = field(
        &s,
        &["svc", "asked"],
        "{.spec.clusterIPs} {.spec.ipFamilies} {.spec.ipFamilyPolicy}",
    );
    assert_eq!(ipfields, r#"["10.100.0.50"] ["IPv4"] SingleStack"#);
    let err = refused(create_svc(
        &s,
        "dup",
        "{clusterIP: 10.100.0.50, ports: [{port: 80}]}",
    ));
    assert!(
        err.contains(r#"The Service "dup" is invalid: spec.clusterIPs: Invalid value: []string{"10.100.0.50"}: failed to allocate IP 10.100.0.50: provided IP is already allocated"#),
        "{err}"
    );
    let err = refused(create_svc(
        &s,
        "far",
        "{clusterIP: 10.200.0.5, ports: [{port: 80}]}",
    ));
    assert!(
        err.contains("the provided IP (10.200.0.5) is not in the valid range. The range of valid IPs is 10.100.0.0/16"),
        "{err}"
    );
    let err = refused(create_svc(
        &s,
        "dns",
        "{clusterIP: 10.100.0.10, ports: [{port: 53}]}",
    ));
    assert!(err.contains("provided IP is already allocated"), "{err}");
    // The server answered 422 Invalid, not a client-side check.
    let out = s.kubectl_stdin(
        &["create", "-f", "-", "-v=6"],
        Some("apiVersion: v1\nkind: Service\nmetadata: {name: dup}\nspec: {clusterIP: 10.100.0.50, ports: [{port: 80}]}\n"),
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("422"), "{log}");

    // Headless: no address.
    created(create_svc(
        &s,
        "hl",
        "{clusterIP: None, selector: {app: hl}}",
    ));
    assert_eq!(get_ip("hl"), "None");
    let table = s.ok(&["get", "svc", "hl"]);
    assert!(table.contains("None"), "{table}");

    // Node ports: requested, taken, out of range.
    created(create_svc(
        &s,
        "np",
        "{type: NodePort, ports: [{port: 80, targetPort: 8080, nodePort: 30080}]}",
    ));
    assert_eq!(
        field(&s, &["svc", "np"], "{.spec.ports[0].nodePort}"),
        "30080"
    );
    assert!(s.ok(&["get", "svc", "np"]).contains("80:30080/TCP"));
    let err = refused(create_svc(
        &s,
        "np2",
        "{type: NodePort, ports: [{port: 80, nodePort: 30080}]}",
    ));
    assert!(
        err.contains(
            "spec.ports[0].nodePort: Invalid value: 30080: provided port is already allocated"
        ),
        "{err}"
    );
    let err = refused(create_svc(
        &s,
        "np3",
        "{type: NodePort, ports: [{port: 80, nodePort: 8080}]}",
    ));
    assert!(
        err.contains("Invalid value: 8080: provided port is not in the valid range. The range of valid ports is 30000-32767"),
        "{err}"
    );

    // `kubectl expose` gets its Service back with the address in place.
    s.apply("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: c, image: skiff.local/netexec:latest, ports: [{containerPort: 8080}]}]}\n");
    let out = s.ok(&[
        "expose",
        "deployment",
        "web",
        "--port=80",
        "--target-port=8080",
        "--type=NodePort",
        "-o",
        "jsonpath={.spec.clusterIP} {.spec.ports[0].nodePort}",
    ]);
    let (ip, np) = out.split_once(' ').unwrap();
    assert!(in_range(ip, "10.100.0.0/16"), "{out}");
    assert!(
        (30000..=32767).contains(&np.parse::<u32>().unwrap()),
        "{out}"
    );

    // LoadBalancer with externalTrafficPolicy Local gets a health check port too.
    created(create_svc(
        &s,
        "lb",
        "{type: LoadBalancer, externalTrafficPolicy: Local, selector: {app: lb}, ports: [{port: 80}]}",
    ));
    let hc = field(&s, &["svc", "lb"], "{.spec.healthCheckNodePort}");
    assert!(
        (30000..=32767).contains(&hc.parse::<u32>().unwrap()),
        "{hc}"
    );
    assert_unique(&allocations(&s));

    // Back to ClusterIP: the node port goes, the address stays; another Service can take the port.
    let ip_np = get_ip("np");
    s.ok(&[
        "patch",
        "svc",
        "np",
        "-p",
        r#"{"spec":{"type":"ClusterIP"}}"#,
    ]);
    assert_eq!(field(&s, &["svc", "np"], "{.spec.ports[0].nodePort}"), "");
    assert_eq!(get_ip("np"), ip_np);
    created(create_svc(
        &s,
        "np2",
        "{type: NodePort, ports: [{port: 80, nodePort: 30080}]}",
    ));

    // Deleting a Service frees its address at once.
    s.ok(&["delete", "svc", "asked"]);
    created(create_svc(
        &s,
        "again",
        "{clusterIP: 10.100.0.50, ports: [{port: 80}]}",
    ));
    assert_eq!(get_ip("again"), "10.100.0.50");
    assert_unique(&allocations(&s));
}

#[test]
fn allocations_survive_a_controlplane_restart() {
    if !need("kubectl", &["version", "--client"]) {
        return;
    }
    // A /26 has 62 addresses: 2 reserved, 50 used below, and 10 left; after a restart that
    // forgot what it had handed out, collisions would be near certain.
    let mut s = Server::start_with(&["--service-cidr", "10.99.0.0/26"]);
    s.apply(&many_services("before", 50));
    let before = allocations(&s);
    assert_unique(&before);
    let old_port = field(&s, &["svc", "kubernetes"], "{.spec.ports[0].targetPort}");
    s.stop();

    let s = Server::start_in(&s.dir, &["--service-cidr", "10.99.0.0/26"]);
    // Same allocations as before the restart.
    let ours = |v: Vec<(String, String, Vec<u64>)>| -> Vec<_> {
        v.into_iter()
            .filter(|(n, _, _)| n.starts_with("before/"))
            .collect()
    };
    assert_eq!(ours(before), ours(allocations(&s)));
    s.apply(&many_services("after", 10));
    assert_unique(&allocations(&s));
    // The range is now full.
    let err = refused(create_svc(&s, "one-more", "{ports: [{port: 80}]}"));
    assert!(err.contains("range is full"), "{err}");
    // A taken address is still refused.
    let taken = field(&s, &["svc", "s0", "-n", "before"], "{.spec.clusterIP}");
    let err = refused(create_svc(
        &s,
        "dup",
        &format!("{{clusterIP: {taken}, ports: [{{port: 80}}]}}"),
    ));
    assert!(err.contains("provided IP is already allocated"), "{err}");

    // The kubernetes Service follows the API to its new port.
    let port = s.url.rsplit(':').next().unwrap().to_owned();
    assert_ne!(old_port, port, "the test restarts on a fresh port");
    assert_eq!(
        field(&s, &["svc", "kubernetes"], "{.spec.ports[0].targetPort}"),
        port
    );
    assert_eq!(
        field(&s, &["svc", "kubernetes"], "{.spec.clusterIP}"),
        "10.99.0.1"
    );
    let eps = s.ok(&["get", "endpoints", "kubernetes"]);
    assert!(eps.contains(&format!("127.0.0.1:{port}")), "{eps}");
}

const PODS: &str = "apiVersion: v1
kind: Namespace
metadata: {name: eps}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: eps, labels: {tier: front}}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-a, namespace: eps, labels: {app: web}}
spec:
  nodeName: n1
  containers: [{name: c, image: skiff.local/netexec:latest, ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-b, namespace: eps, labels: {app: web}}
spec:
  nodeName: n1
  containers: [{name: c, image: skiff.local/netexec:latest, ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-c, namespace: eps, labels: {app: web}}
spec:
  nodeName: n2
  containers: [{name: c, image: skiff.local/netexec:latest, ports: [{name: http, containerPort: 9090}]}]
";

/// What the slices of Service `web` say, per pod: (IP, port, ready, serving, terminating, node).
type Seen = BTreeMap<String, (String, i64, bool, bool, bool, String)>;

fn slices(s: &Server) -> (usize, Seen) {
    let list = json(
        s,
        &[
            "get",
            "endpointslices",
            "-n",
            "eps",
            "-l",
            "kubernetes.io/service-name=web",
        ],
    );
    let items = list["items"].as_array().unwrap().clone();
    let mut seen = Seen::new();
    for sl in &items {
        assert_eq!(sl["addressType"], "IPv4");
        assert_eq!(
            sl["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
            "endpointslice-controller.k8s.io"
        );
        assert_eq!(
            sl["metadata"]["labels"]["tier"], "front",
            "Service labels are copied"
        );
        assert_eq!(sl["metadata"]["ownerReferences"][0]["kind"], "Service");
        assert_eq!(sl["metadata"]["ownerReferences"][0]["controller"], true);
        let port = sl["ports"][0]["port"].as_i64().unwrap_or(0);
        for e in sl["endpoints"].as_array().into_iter().flatten() {
            assert_eq!(e["targetRef"]["kind"], "Pod");
            let c = &e["conditions"];
            seen.insert(
                e["targetRef"]["name"].as_str().unwrap().to_owned(),
                (
                    e["addresses"][0].as_str().unwrap().to_owned(),
                    port,
                    c["ready"] == true,
                    c["serving"] == true,
                    c["terminating"] == true,
                    e["nodeName"].as_str().unwrap_or("").to_owned(),
                ),
            );
        }
    }
    (items.len(), seen)
}

fn set_ready(s: &Server, pod: &str, ready: bool) {
    let status = format!(
        r#"{{"status":{{"conditions":[{{"type":"Ready","status":"{}"}}]}}}}"#,
        if ready { "True" } else { "False" }
    );
    s.ok(&[
        "patch",
        "pod",
        pod,
        "-n",
        "eps",
        "--subresource=status",
        "--type=merge",
        "-p",
        &status,
    ]);
}

#[test]
fn endpoint_slices_follow_pod_readiness() {
    if !need("kubectl", &["version", "--client"]) {
        return;
    }
    let s = Server::start();
    s.apply(PODS);
    // No pod has an IP yet: one empty placeholder slice, Endpoints without addresses.
    s.eventually("a placeholder slice", || slices(&s) == (1, Seen::new()));
    s.eventually("an Endpoints object", || {
        s.kubectl(&["get", "endpoints", "web", "-n", "eps"])
            .status
            .success()
    });

    // The "agent" starts the pods: all ready, the named port resolved per pod.
    assert_eq!(s.mark_pods_ready("eps", "app=web"), 3);
    let ip = |p: &str| field(&s, &["pod", p, "-n", "eps"], "{.status.podIP}");
    let (a, b, c) = (ip("web-a"), ip("web-b"), ip("web-c"));
    let want = |ready_b: bool, term_b: bool| -> Seen {
        let mut m = Seen::new();
        m.insert(
            "web-a".into(),
            (a.clone(), 8080, true, true, false, "n1".into()),
        );
        m.insert(
            "web-b".into(),
            (
                b.clone(),
                8080,
                ready_b,
                ready_b || term_b,
                term_b,
                "n1".into(),
            ),
        );
        m.insert(
            "web-c".into(),
            (c.clone(), 9090, true, true, false, "n2".into()),
        );
        m
    };
    // Two port mappings (8080 and 9090): two slices; the placeholder is reused.
    s.eventually("ready endpoints", || slices(&s) == (2, want(true, false)));
    let table = s.ok(&["get", "endpointslices", "-n", "eps"]);
    assert!(
        table.contains("IPv4") && table.contains("8080") && table.contains("9090"),
        "{table}"
    );
    let eps = s.ok(&["get", "endpoints", "web", "-n", "eps"]);
    for addr in [
        format!("{a}:8080"),
        format!("{b}:8080"),
        format!("{c}:9090"),
    ] {
        assert!(eps.contains(&addr), "{eps}");
    }

    let describe = s.ok(&["describe", "svc", "web", "-n", "eps"]);
    assert!(
        describe.contains(&format!("{a}:8080")) && describe.contains("http/TCP"),
        "{describe}"
    );

    // web-b turns unready: ready false in its slice, notReadyAddresses in Endpoints.
    set_ready(&s, "web-b", false);
    s.eventually("web-b not ready", || slices(&s).1 == want(false, false));
    s.eventually("web-b in notReadyAddresses", || {
        field(
            &s,
            &["endpoints", "web", "-n", "eps"],
            "{.subsets[*].notReadyAddresses[*].ip}",
        ) == b
    });
    set_ready(&s, "web-b", true);
    s.eventually("web-b ready again", || slices(&s).1 == want(true, false));

    // Deleting a bound pod starts graceful termination: serving, terminating, not ready.
    s.ok(&["delete", "pod", "web-b", "-n", "eps", "--wait=false"]);
    s.eventually("web-b terminating", || slices(&s).1 == want(false, true));
    s.eventually("web-b gone from Endpoints", || {
        !s.ok(&["get", "endpoints", "web", "-n", "eps"])
            .contains(&format!("{b}:"))
    });
    // The agent confirms: the pod is gone, and so is its endpoint.
    s.ok(&[
        "delete",
        "pod",
        "web-b",
        "-n",
        "eps",
        "--grace-period=0",
        "--force",
    ]);
    s.eventually("web-b removed", || {
        let mut m = want(true, false);
        m.remove("web-b");
        slices(&s).1 == m
    });

    // A pod relabelled out of the selector leaves.
    s.ok(&[
        "label",
        "pod",
        "web-c",
        "-n",
        "eps",
        "app=other",
        "--overwrite",
    ]);
    s.eventually("web-c removed", || {
        let mut m = want(true, false);
        m.remove("web-b");
        m.remove("web-c");
        slices(&s) == (1, m)
    });

    // Deleting the Service removes its slices and Endpoints (owner references).
    s.ok(&["delete", "svc", "web", "-n", "eps"]);
    s.eventually("slices deleted with the Service", || slices(&s).0 == 0);
    s.eventually("Endpoints deleted with the Service", || {
        !s.kubectl(&["get", "endpoints", "web", "-n", "eps"])
            .status
            .success()
    });
}

#[test]
fn services_without_selector_keep_their_own_endpoints() {
    if !need("kubectl", &["version", "--client"]) {
        return;
    }
    let s = Server::start();
    s.apply("apiVersion: v1\nkind: Service\nmetadata: {name: ext}\nspec:\n  ports: [{port: 80}]\n---\napiVersion: v1\nkind: Endpoints\nmetadata: {name: ext}\nsubsets: [{addresses: [{ip: 192.0.2.7}], ports: [{port: 80}]}]\n");
    // Give the controller a moment to (wrongly) act, then check it did not.
    s.apply("apiVersion: v1\nkind: Service\nmetadata: {name: sel}\nspec:\n  selector: {app: x}\n  ports: [{port: 80}]\n");
    s.eventually("the selector Service's slice", || {
        !field(
            &s,
            &["endpointslices", "-l", "kubernetes.io/service-name=sel"],
            "{.items[*].metadata.name}",
        )
        .is_empty()
    });
    assert_eq!(
        field(&s, &["endpoints", "ext"], "{.subsets[0].addresses[0].ip}"),
        "192.0.2.7"
    );
    assert_eq!(
        field(
            &s,
            &["endpointslices", "-l", "kubernetes.io/service-name=ext"],
            "{.items[*].metadata.name}"
        ),
        ""
    );
}
