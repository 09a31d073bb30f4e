//! Container probes on a real node: a startup probe (tcpSocket) gates a readiness probe (exec)
//! that drives the pod's Ready condition both ways while an httpGet liveness probe on a named
//! port keeps passing; a liveness probe (exec) that starts failing restarts its container; a
//! startup probe that never passes (tcpSocket on a closed port) restarts its container too; an
//! httpGet liveness probe answered 404 restarts its container; a probe naming a port the
//! container does not have keeps it unready without harming the agent; a restarted agent
//! probes the containers it adopts; the API rejects a liveness successThreshold other than 1.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{eventually, in_pod, json, prerequisites};
use serde_json::Value;

const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: gated}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: web
    image: skiff.local/netexec:latest
    imagePullPolicy: Never
    ports: [{name: http, containerPort: 8080}]
    startupProbe: {tcpSocket: {port: http}, periodSeconds: 1, failureThreshold: 30}
    readinessProbe: {exec: {command: [sh, -c, 'test -f /tmp/ready']}, periodSeconds: 1, failureThreshold: 1}
    livenessProbe:
      httpGet: {path: /healthz, port: http, httpHeaders: [{name: X-Probe, value: e2e}]}
      periodSeconds: 1
      failureThreshold: 2
---
apiVersion: v1
kind: Pod
metadata: {name: sickens}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: web
    image: skiff.local/netexec:latest
    imagePullPolicy: Never
    livenessProbe: {exec: {command: [sh, -c, 'test ! -f /tmp/sick']}, periodSeconds: 1, failureThreshold: 2}
---
apiVersion: v1
kind: Pod
metadata: {name: never-starts}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: web
    image: skiff.local/netexec:latest
    imagePullPolicy: Never
    startupProbe: {tcpSocket: {port: 9999}, periodSeconds: 1, failureThreshold: 2}
    readinessProbe: {exec: {command: ['true']}, periodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: not-found}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: web
    image: skiff.local/netexec:latest
    imagePullPolicy: Never
    livenessProbe: {httpGet: {path: /no-such-page, port: 8080}, periodSeconds: 1, failureThreshold: 2}
---
apiVersion: v1
kind: Pod
metadata: {name: bad-port}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: web
    image: skiff.local/netexec:latest
    imagePullPolicy: Never
    readinessProbe: {httpGet: {path: /healthz, port: metrics}, periodSeconds: 1}
"#;

/// The pod's status as kubectl shows it.
fn status(c: &skiff_e2e::cluster::Cluster, pod: &str) -> Value {
    json(c, &["get", "pod", pod])["status"].clone()
}

fn condition(s: &Value, ty: &str) -> String {
    s["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == ty)
        .and_then(|c| c["status"].as_str())
        .unwrap_or_default()
        .to_owned()
}

fn container(s: &Value) -> &Value {
    &s["containerStatuses"][0]
}

fn restarts(s: &Value) -> i64 {
    container(s)["restartCount"].as_i64().unwrap_or(0)
}

fn running(s: &Value) -> bool {
    container(s)["state"]["running"].is_object()
}

fn id(s: &Value) -> String {
    container(s)["containerID"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("docker://")
        .to_owned()
}

/// Pod Ready, ContainersReady and the container's own flag, which must agree.
fn ready(s: &Value) -> Option<bool> {
    let flags = (
        condition(s, "Ready"),
        condition(s, "ContainersReady"),
        container(s)["ready"].as_bool(),
    );
    match flags {
        (r, cr, Some(true)) if r == "True" && cr == "True" => Some(true),
        (r, cr, Some(false)) if r == "False" && cr == "False" => Some(false),
        _ => None,
    }
}

#[test]
fn probes_gate_readiness_and_restart_unhealthy_containers() {
    if !prerequisites() {
        return;
    }
    let c = common::cluster(1, &[]);
    // The API rejects what Kubernetes rejects.
    let bad = "apiVersion: v1\nkind: Pod\nmetadata: {name: bad}\nspec:\n  containers:\n  - name: web\n    image: skiff.local/netexec:latest\n    livenessProbe: {tcpSocket: {port: 8080}, successThreshold: 2}\n";
    let e = c.kubectl_in(&["apply", "-f", "-"], Some(bad)).unwrap_err();
    assert!(
        e.to_string()
            .contains("spec.containers[0].livenessProbe.successThreshold: Invalid value"),
        "{e}"
    );
    c.kubectl_in(&["apply", "-f", "-"], Some(PODS)).unwrap();

    // Startup (tcpSocket on the named port) passes; readiness (exec) fails: started, not ready.
    eventually(&c, "gated to start", 60, || {
        let s = status(&c, "gated");
        running(&s) && container(&s)["started"] == true
    });
    let s = status(&c, "gated");
    assert_eq!(ready(&s), Some(false), "{s}");
    let gated = id(&s);
    // Not a momentary state: the readiness probe keeps failing while the file is absent.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(ready(&status(&c, "gated")), Some(false));

    in_pod(&gated, "touch /tmp/ready").unwrap();
    let since = Instant::now();
    eventually(&c, "gated to become Ready", 15, || {
        ready(&status(&c, "gated")) == Some(true)
    });
    eprintln!(
        "Ready {:?} after the readiness probe passed",
        since.elapsed()
    );
    in_pod(&gated, "rm /tmp/ready").unwrap();
    eventually(&c, "gated to become unready again", 15, || {
        ready(&status(&c, "gated")) == Some(false)
    });
    let s = status(&c, "gated");
    let cond = s["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(cond["reason"], "ContainersNotReady", "{cond}");

    // A restarted agent probes the containers it adopts from scratch.
    in_pod(&gated, "touch /tmp/ready").unwrap();
    eventually(
        &c,
        "gated to be Ready before the agent restarts",
        15,
        || ready(&status(&c, "gated")) == Some(true),
    );
    c.stop_agent(1).unwrap();
    c.start_agent(1).unwrap();
    c.wait_agent_ready(1).unwrap();
    // Its readiness starts false and turns true on the first probe; a false now would come
    // from that start, not from a probe, so the check waits it out.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(ready(&status(&c, "gated")), Some(true));
    in_pod(&gated, "rm /tmp/ready").unwrap();
    eventually(&c, "the restarted agent to see gated unready", 15, || {
        ready(&status(&c, "gated")) == Some(false)
    });

    // A liveness probe that starts failing restarts the container, and only then.
    eventually(
        &c,
        "sickens to be ready (no readiness probe: ready when running)",
        30,
        || ready(&status(&c, "sickens")) == Some(true),
    );
    let s = status(&c, "sickens");
    assert_eq!(restarts(&s), 0, "healthy containers are left alone: {s}");
    let sick = id(&s);
    in_pod(&sick, "touch /tmp/sick").unwrap();
    eventually(&c, "the unhealthy container to be restarted", 30, || {
        let s = status(&c, "sickens");
        restarts(&s) == 1 && running(&s) && id(&s) != sick
    });
    let s = status(&c, "sickens");
    assert!(container(&s)["lastState"]["terminated"].is_object(), "{s}");

    // A startup probe that never passes restarts the container; it is never started or ready.
    eventually(&c, "never-starts to be restarted", 30, || {
        restarts(&status(&c, "never-starts")) >= 1
    });
    let s = status(&c, "never-starts");
    assert_eq!(container(&s)["started"], false, "{s}");
    assert_eq!(ready(&s), Some(false), "{s}");

    // An httpGet liveness probe answered 404 restarts the container.
    eventually(&c, "not-found to be restarted", 30, || {
        restarts(&status(&c, "not-found")) >= 1
    });

    // A port name the container lacks: unready, a clear line in the agent's log, no crash.
    let s = status(&c, "bad-port");
    assert!(running(&s), "{s}");
    assert_eq!(ready(&s), Some(false), "{s}");
    let log = std::fs::read_to_string(c.log("node1")).unwrap();
    assert!(
        log.contains(r#"readiness probe failed: port "metrics" is neither a number nor the name of one of the container's ports"#),
        "{}",
        c.logs()
    );

    // All along, the httpGet liveness probe on the named port kept passing.
    let s = status(&c, "gated");
    assert_eq!((restarts(&s), id(&s)), (0, gated), "{s}");

    c.kubectl(&["delete", "pods", "--all", "--wait=false"])
        .unwrap();
    eventually(&c, "the pods to be released", 60, || {
        c.kubectl(&["get", "pods", "-o", "name"])
            .is_ok_and(|s| s.trim().is_empty())
    });
}
