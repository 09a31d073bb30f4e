//! The agent against a real controlplane: registration, lease heartbeat, shutdown, re-adoption.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{Cluster, bin, eventually, require, start};

#[test]
fn the_agent_registers_heartbeats_and_reports_its_shutdown() {
    let kubectl_ok = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !require(kubectl_ok, "kubectl") {
        return;
    }
    let c = Cluster::start();
    let agent = |name: &str| c.agent(name);

    let (mut a, _) = start(&mut agent("node-a"));
    let nodes = c.kubectl(&["get", "nodes"]);
    assert!(
        nodes.contains("node-a") && nodes.contains("Ready"),
        "{nodes}"
    );
    let ip = c.kubectl(&[
        "get",
        "node",
        "node-a",
        "-o",
        "jsonpath={.status.addresses[?(@.type==\"InternalIP\")].address}",
    ]);
    assert_eq!(ip, "127.0.0.1");
    let uid = c.kubectl(&["get", "node", "node-a", "-o", "jsonpath={.metadata.uid}"]);

    // The lease is renewed every 10 s.
    let renew = || {
        c.kubectl(&[
            "get",
            "lease",
            "node-a",
            "-n",
            "kube-node-lease",
            "-o",
            "jsonpath={.spec.renewTime}",
        ])
    };
    let first = renew();
    assert!(!first.is_empty());
    eventually("a lease renewal", 20, || renew() != first);

    // SIGTERM: the node says it is going away.
    let pid = a.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let _ = a.0.wait();
    let reason = c.kubectl(&[
            "get",
            "node",
            "node-a",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}:{.status.conditions[?(@.type==\"Ready\")].message}",
        ],
    );
    assert_eq!(reason, "False:skiff-agent is shutting down");

    // A restarted agent adopts its Node instead of creating another one.
    let (_a2, _) = start(&mut agent("node-a"));
    assert_eq!(
        c.kubectl(&["get", "node", "node-a", "-o", "jsonpath={.metadata.uid}"]),
        uid
    );
    let status = c.kubectl(&[
        "get",
        "node",
        "node-a",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
    ]);
    assert_eq!(status, "True");
}

#[test]
fn bad_flags_and_missing_files_are_one_line_errors() {
    let out = Command::new(bin("skiff-agent"))
        .args([
            "--server",
            "https://127.0.0.1:1",
            "--token-file",
            "/nonexistent/token",
            "--ca-file",
            "/nonexistent/ca",
            "--node-name",
            "x",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("/nonexistent/token"), "{err}");
}
