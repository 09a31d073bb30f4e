//! Pods on Docker through a real agent and controlplane: containers start in a sandbox,
//! crash loops restart with back-off, an agent restart adopts running containers, deletion
//! stops them and releases the pod.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Cluster, eventually, kubectl, require, start};

/// Ids of the containers the agent made for `node`.
fn containers(node: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--no-trunc",
            "--filter",
            &format!("label=skiff.io/node={node}"),
        ])
        .output()
        .unwrap();
    let mut ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    ids.sort();
    ids
}

/// Removes, by id, whatever the test's node left behind.
struct Cleanup(String);
impl Drop for Cleanup {
    fn drop(&mut self) {
        for id in containers(&self.0) {
            let _ = Command::new("docker").args(["rm", "-f", &id]).output();
        }
    }
}

fn prerequisites() -> bool {
    let ok = Command::new("docker")
        .args(["image", "inspect", "skiff.local/netexec:latest"])
        .output()
        .is_ok_and(|o| o.status.success())
        && Command::new("kubectl")
            .args(["version", "--client"])
            .output()
            .is_ok_and(|o| o.status.success());
    require(ok, "docker with the skiff.local images, and kubectl,")
}

#[test]
fn pods_run_restart_survive_an_agent_restart_and_stop_on_delete() {
    if !prerequisites() {
        return;
    }
    let node = format!("pods-{}", std::process::id());
    let _cleanup = Cleanup(node.clone());
    let c = Cluster::start();
    let kc = c.kubeconfig.clone();
    let agent = || c.agent(&node);
    let (agent1, _) = start(&mut agent());
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: web}}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 5\n  containers:\n  - name: web\n    image: skiff.local/netexec:latest\n    env: [{{name: MY_NODE, valueFrom: {{fieldRef: {{fieldPath: spec.nodeName}}}}}}]\n  - name: crash\n    image: skiff.local/netexec:latest\n    command: [/bin/sh, -c, 'exit 3']\n"
    );
    kubectl(&kc, &["apply", "-f", "-"], Some(&manifest));
    let get = |path: &str| {
        kubectl(
            &kc,
            &["get", "pod", "web", "-o", &format!("jsonpath={path}")],
            None,
        )
    };
    eventually("the web container to run", 60, || {
        get("{.status.containerStatuses[?(@.name==\"web\")].state.running}").contains("startedAt")
    });
    eventually("the crashing container to be restarted", 60, || {
        get("{.status.containerStatuses[?(@.name==\"crash\")].restartCount}")
            .parse::<u32>()
            .unwrap_or(0)
            >= 1
    });
    assert_eq!(get("{.status.phase}"), "Running");
    assert_eq!(get("{.status.hostIP}"), "127.0.0.1");
    // Environment from the downward API reached the container.
    let web = containers(&node).into_iter().find(|id| {
        let out = Command::new("docker")
            .args([
                "inspect",
                "-f",
                "{{index .Config.Labels \"skiff.io/container\"}}",
                id,
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim() == "web"
    });
    let web = web.expect("a web container");
    let env = Command::new("docker")
        .args(["exec", &web, "sh", "-c", "echo $MY_NODE:$POD_NAME"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&env.stdout).trim(),
        format!("{node}:web")
    );

    // Restarting the agent adopts the running sandbox and app container.
    let running = |id: &str| {
        let out = Command::new("docker")
            .args(["inspect", "-f", "{{.State.Running}}", id])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim() == "true"
    };
    drop(agent1);
    let (_agent2, _) = start(&mut agent());
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        running(&web),
        "the web container kept running across the agent restart"
    );

    // Deletion stops the containers and releases the pod.
    kubectl(&kc, &["delete", "pod", "web", "--wait=false"], None);
    eventually("the pod to be released", 60, || {
        kubectl(&kc, &["get", "pods", "-o", "name"], None)
            .trim()
            .is_empty()
    });
    eventually("the containers to be removed", 30, || {
        containers(&node).is_empty()
    });
}
