//! `cargo xtask demo`: the first run. Brings up a local two-node cluster, deploys netexec
//! behind a Service and shows pods on both nodes talking to each other by pod IP, through the
//! Service's ClusterIP and NodePort, and by the Service's DNS name.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::cluster::{ProxyMode, state_dir};

const NAME: &str = "demo";

const APP: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: netexec}
spec:
  replicas: 4
  selector: {matchLabels: {app: netexec}}
  template:
    metadata: {labels: {app: netexec}}
    spec:
      containers:
      - name: netexec
        image: skiff.local/netexec:latest
        imagePullPolicy: Never
        ports: [{containerPort: 8080, name: http}]
---
apiVersion: v1
kind: Service
metadata: {name: netexec}
spec:
  type: NodePort
  selector: {app: netexec}
  ports: [{port: 80, targetPort: http}]
"#;

pub fn run() -> Result<()> {
    let c = crate::cluster::fresh(NAME, 2, ProxyMode::Iptables, &[])?;
    println!(
        "\n$ kubectl get nodes -o wide\n{}",
        c.kubectl(&["get", "nodes", "-o", "wide"])?
    );
    c.kubectl_in(&["apply", "-f", "-"], Some(APP))?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let pods = loop {
        let list: Value = serde_json::from_str(&c.kubectl(&[
            "get",
            "pods",
            "-l",
            "app=netexec",
            "-o",
            "json",
        ])?)?;
        let items = list["items"].as_array().cloned().unwrap_or_default();
        let ready = items
            .iter()
            .filter(|p| p["status"]["podIP"].is_string() && p["status"]["phase"] == "Running")
            .count();
        if ready == 4 {
            break items;
        }
        if Instant::now() > deadline {
            bail!(
                "the demo pods did not start within 120 s; see {}",
                state_dir(NAME).display()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    println!(
        "$ kubectl get deploy,svc,pods -o wide\n{}",
        c.kubectl(&["get", "deploy,svc,pods", "-o", "wide"])?
    );
    println!(
        "Traffic between pods, across nodes, through the VXLAN overlay (no NAT: each server sees the client's pod IP):"
    );
    let first = &pods[0];
    let client = first["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("docker://")
        .to_owned();
    for p in &pods[1..] {
        let url = format!(
            "http://{}:8080",
            p["status"]["podIP"].as_str().unwrap_or_default()
        );
        let script =
            format!("echo \"$(wget -qO- {url}/hostname) saw $(wget -qO- {url}/clientip)\"");
        let out = skiff_e2e::cluster::run(
            std::process::Command::new("docker").args(["exec", &client, "sh", "-c", &script]),
        )
        .with_context(|| format!("request to {url}"))?;
        println!(
            "  {} ({} on {}) -> {url}: {}",
            first["metadata"]["name"].as_str().unwrap_or_default(),
            first["status"]["podIP"].as_str().unwrap_or_default(),
            first["spec"]["nodeName"].as_str().unwrap_or_default(),
            out.trim()
        );
    }
    let vip = c.kubectl(&["get", "svc", "netexec", "-o", "jsonpath={.spec.clusterIP}"])?;
    let np = c.kubectl(&[
        "get",
        "svc",
        "netexec",
        "-o",
        "jsonpath={.spec.ports[0].nodePort}",
    ])?;
    println!(
        "\nThrough the Service: each request lands on one of the pods (iptables rules written by skiff-agent):"
    );
    let script = format!(
        "for i in 1 2 3 4 5 6; do echo \"  http://{vip}/hostname -> $(wget -qO- http://{vip}/hostname)\"; done"
    );
    let out = skiff_e2e::cluster::run(
        std::process::Command::new("docker").args(["exec", &client, "sh", "-c", &script]),
    )
    .context("requests through the ClusterIP")?;
    println!("{}", out.trim_end());
    println!(
        "\nBy name: the pod's resolv.conf points at cluster DNS, answered by skiff-agent on its own node:"
    );
    let script = "getent hosts netexec; for n in netexec netexec.default netexec.default.svc.cluster.local; do echo \"  http://$n/hostname -> $(wget -qO- http://$n/hostname)\"; done";
    let out = skiff_e2e::cluster::run(
        std::process::Command::new("docker").args(["exec", &client, "sh", "-c", script]),
    )
    .context("requests through the Service's DNS name")?;
    println!("  getent hosts {}", out.trim_end().trim_start());
    let node_ip = c.node_ip(2).to_string();
    let mut from_node = c.in_node(1, "busybox");
    from_node.args(["wget", "-qO-", &format!("http://{node_ip}:{np}/hostname")]);
    let out = skiff_e2e::cluster::run(&mut from_node).context("request to the NodePort")?;
    println!("  node1 -> NodePort {node_ip}:{np} -> {}", out.trim());
    println!(
        "\nThe cluster keeps running. Try:\n  export KUBECONFIG={}\n  kubectl get pods -o wide\nand remove it with: cargo xtask cluster down --name {NAME}",
        c.kubeconfig.display()
    );
    c.detach();
    Ok(())
}
