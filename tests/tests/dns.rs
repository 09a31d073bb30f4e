//! Cluster DNS on a two-node cluster: pods resolve Services by short, namespaced and full names
//! through their resolv.conf (glibc getent, busybox nslookup and wget), nodes with dig; headless
//! Services follow their ready endpoints; SRV, PTR and pod hostname records; NXDOMAIN for unknown
//! names; names outside the cluster forwarded to the node's upstream resolver (dnsmasq on the
//! external test host); a new Service resolves within a second.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{eventually, in_pod, pods, prerequisites};
use skiff_e2e::cluster::{Cluster, Reaped};

const MANIFESTS: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: netexec
        image: skiff.local/netexec:latest
        imagePullPolicy: Never
        ports: [{name: http, containerPort: 8080}]
        # Ready unless /tmp/unready exists: the test flips one pod's readiness.
        readinessProbe:
          exec: {command: [sh, -c, "! test -f /tmp/unready"]}
          periodSeconds: 1
          failureThreshold: 1
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: web-headless}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: client}
spec:
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client}}
    spec:
      containers:
      - name: netexec
        image: skiff.local/netexec:latest
        imagePullPolicy: Never
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, labels: {app: db}}
spec:
  hostname: db-0
  subdomain: db
  containers:
  - name: netexec
    image: skiff.local/netexec:latest
    imagePullPolicy: Never
---
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: sql, port: 5432, targetPort: 8080}]
---
apiVersion: v1
kind: Namespace
metadata: {name: prod}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: prod}
spec:
  ports: [{name: https, port: 443}]
"#;

/// `dig +short` from node `i` against the cluster DNS address.
fn dig(c: &Cluster, i: usize, dns: &str, args: &[&str]) -> String {
    let out = c
        .in_node(i, "dig")
        .args([&format!("@{dns}"), "+short", "+time=2", "+tries=1"])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The status word (NOERROR, NXDOMAIN, ...) of a full dig answer.
fn dig_status(c: &Cluster, i: usize, dns: &str, args: &[&str]) -> String {
    let out = c
        .in_node(i, "dig")
        .args([&format!("@{dns}"), "+time=2", "+tries=1"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("no answer")
        .to_owned()
}

fn lines(s: &str) -> BTreeSet<String> {
    s.lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

/// The first address `getent hosts NAME` prints in a pod (glibc resolver, search list).
fn getent(container: &str, name: &str) -> Result<String, String> {
    in_pod(container, &format!("getent hosts {name}"))
        .map(|out| out.split_whitespace().next().unwrap_or_default().to_owned())
}

/// dnsmasq on the external test host, answering `*.upstream.test`: the nodes' upstream.
fn upstream(c: &Cluster) -> Reaped {
    c.in_external("dnsmasq")
        .args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--port=53",
            "--address=/upstream.test/198.51.100.7",
            "--log-facility=-",
        ])
        .arg(format!("--listen-address={}", c.external_ip()))
        .arg(format!(
            "--pid-file={}",
            c.spec.state_dir.join("dnsmasq.pid").display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Reaped)
        .unwrap()
}

#[test]
fn pods_and_nodes_resolve_services_by_name() {
    if !prerequisites() {
        return;
    }
    for tool in ["dig", "dnsmasq"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .status()
            .is_ok_and(|s| s.success());
        assert!(found, "{tool} is required: run cargo xtask setup");
    }
    let c = common::cluster(2, &[]);
    // Declared after the cluster: dropped (killed) before the cluster goes down.
    let dnsmasq = upstream(&c);
    c.kubectl_in(&["apply", "-f", "-"], Some(MANIFESTS))
        .unwrap();
    let get = |args: &[&str]| c.kubectl(args).unwrap_or_default();
    let dns = c
        .cluster_dns()
        .expect("the kube-dns Service has the cluster DNS address")
        .to_string();
    let web_ip = get(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    let api_ip = get(&[
        "-n",
        "prod",
        "get",
        "svc",
        "api",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    eventually(&c, "web, client and db pods ready", 90, || {
        let ready = |sel: &str, n: usize| {
            let p = pods(&c, sel);
            p.len() == n && p.iter().all(|p| p.ready)
        };
        ready("app=web", 2) && ready("app=client", 2) && ready("app=db", 1)
    });
    let clients = pods(&c, "app=client");
    let web_pods: BTreeSet<String> = pods(&c, "app=web").into_iter().map(|p| p.ip).collect();

    // Pods on both nodes, through their resolv.conf: short, namespaced and full names.
    for client in &clients {
        let ctr = &client.container;
        let resolv = in_pod(ctr, "cat /etc/resolv.conf").unwrap();
        assert!(resolv.contains(&format!("nameserver {dns}")), "{resolv}");
        assert!(
            resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local"),
            "{resolv}"
        );
        assert!(resolv.contains("ndots:5"), "{resolv}");
        eventually(
            &c,
            &format!("getent hosts web in {}", client.name),
            20,
            || getent(ctr, "web").as_deref() == Ok(web_ip.as_str()),
        );
        assert_eq!(getent(ctr, "api.prod").unwrap(), api_ip);
        assert_eq!(
            getent(ctr, "web.default.svc.cluster.local").unwrap(),
            web_ip
        );
        assert_eq!(getent(ctr, "api.prod.svc.cluster.local.").unwrap(), api_ip);
        let ns = in_pod(ctr, "nslookup web.default.svc.cluster.local").unwrap();
        assert!(ns.contains(&web_ip), "busybox nslookup: {ns}");
        // ... and connects through the name.
        let hostname = in_pod(ctr, "timeout 5 wget -qO- http://web/hostname").unwrap();
        assert!(hostname.starts_with("web-"), "{hostname}");
        // An unknown name fails (getent exits 2 on "not found").
        assert!(getent(ctr, "nope").is_err());
        // Outside the cluster: the node's upstream answers.
        assert_eq!(getent(ctr, "www.upstream.test").unwrap(), "198.51.100.7");
    }

    // Nodes ask the responder directly, over UDP and TCP.
    for i in 1..=2 {
        assert_eq!(dig(&c, i, &dns, &["web.default.svc.cluster.local"]), web_ip);
        assert_eq!(
            dig(&c, i, &dns, &["+tcp", "api.prod.svc.cluster.local"]),
            api_ip
        );
        assert_eq!(
            dig_status(&c, i, &dns, &["nope.default.svc.cluster.local"]),
            "NXDOMAIN"
        );
        // A name that exists with no record of the type: NOERROR, empty.
        assert_eq!(
            dig_status(&c, i, &dns, &["AAAA", "web.default.svc.cluster.local"]),
            "NOERROR"
        );
        assert_eq!(
            dig(&c, i, &dns, &["-x", &web_ip]),
            "web.default.svc.cluster.local."
        );
    }
    assert_eq!(
        dig(
            &c,
            1,
            &dns,
            &["SRV", "_http._tcp.web.default.svc.cluster.local"]
        ),
        "0 100 80 web.default.svc.cluster.local."
    );
    let db = pods(&c, "app=db").remove(0);
    assert_eq!(
        dig(&c, 1, &dns, &["db-0.db.default.svc.cluster.local"]),
        db.ip
    );

    // Headless: the ready pods' addresses, following the deployment as it scales.
    assert_eq!(
        lines(&dig(
            &c,
            2,
            &dns,
            &["web-headless.default.svc.cluster.local"]
        )),
        web_pods
    );
    let srv = lines(&dig(
        &c,
        2,
        &dns,
        &["SRV", "_http._tcp.web-headless.default.svc.cluster.local"],
    ));
    assert_eq!(srv.len(), 2, "{srv:?}");
    assert!(
        srv.iter().all(|l| l.contains(" 8080 ")),
        "endpoint port: {srv:?}"
    );
    // One pod turns unready, then ready again: the answer follows.
    let flip = pods(&c, "app=web").remove(0);
    in_pod(&flip.container, "touch /tmp/unready").unwrap();
    eventually(
        &c,
        "the unready pod gone from the headless answer",
        30,
        || {
            let got = lines(&dig(
                &c,
                2,
                &dns,
                &["web-headless.default.svc.cluster.local"],
            ));
            got.len() == 1 && !got.contains(&flip.ip)
        },
    );
    in_pod(&flip.container, "rm /tmp/unready").unwrap();
    eventually(&c, "the pod back in the headless answer", 30, || {
        lines(&dig(
            &c,
            2,
            &dns,
            &["web-headless.default.svc.cluster.local"],
        )) == web_pods
    });
    c.kubectl(&["scale", "deployment", "web", "--replicas", "3"])
        .unwrap();
    eventually(
        &c,
        "three ready web pods in the headless answer",
        60,
        || {
            let ready: BTreeSet<String> = pods(&c, "app=web")
                .into_iter()
                .filter(|p| p.ready)
                .map(|p| p.ip)
                .collect();
            ready.len() == 3
                && lines(&dig(
                    &c,
                    1,
                    &dns,
                    &["web-headless.default.svc.cluster.local"],
                )) == ready
        },
    );
    c.kubectl(&["scale", "deployment", "web", "--replicas", "1"])
        .unwrap();
    eventually(&c, "one web pod in the headless answer", 60, || {
        lines(&dig(
            &c,
            1,
            &dns,
            &["web-headless.default.svc.cluster.local"],
        ))
        .len()
            == 1
    });

    // A new Service resolves within a second of its creation.
    c.kubectl(&["create", "service", "clusterip", "fresh", "--tcp=80:8080"])
        .unwrap();
    let created = Instant::now();
    let fresh_ip = get(&["get", "svc", "fresh", "-o", "jsonpath={.spec.clusterIP}"]);
    let mut answered = None;
    while created.elapsed() < Duration::from_secs(5) {
        if dig(&c, 2, &dns, &["fresh.default.svc.cluster.local"]) == fresh_ip {
            answered = Some(created.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = answered.expect("the new Service never resolved");
    eprintln!("a new Service resolved {took:?} after its creation");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    // The cluster DNS address is the node's own: no proxy rule sends it anywhere else, and
    // queries to it skip conntrack.
    let rules = c
        .in_node(1, "sh")
        .args([
            "-c",
            "iptables-legacy-save 2>/dev/null; iptables-nft-save 2>/dev/null",
        ])
        .output()
        .unwrap();
    let rules = String::from_utf8_lossy(&rules.stdout);
    let on_dns: Vec<&str> = rules
        .lines()
        .filter(|l| l.contains(&format!("-d {dns}/32")))
        .collect();
    assert!(!on_dns.is_empty(), "no NOTRACK rule for {dns}");
    assert!(
        on_dns.iter().all(|l| l.ends_with("-j NOTRACK")),
        "{on_dns:?}"
    );

    drop(dnsmasq);
}
