//! Pod volumes on a real node: two containers share an emptyDir; configMap (items, item mode)
//! and secret (defaultMode) volumes appear as files with the right contents and modes, stay
//! read-only, and follow an update of the ConfigMap; a hostPath directory is visible and a
//! readOnly mount refuses writes; DirectoryOrCreate makes its directory; a pod whose ConfigMap
//! is missing waits with the reason and starts once it exists (an optional missing secret does
//! not hold it back); the emptyDir is gone after the pod is deleted.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{eventually, prerequisites};

#[test]
fn pods_mount_emptydir_hostpath_configmap_and_secret_volumes() {
    if !prerequisites() {
        return;
    }
    let c = common::cluster(1, &[]);
    let started = Instant::now();
    let host = c.spec.state_dir.join("hostdata");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("present"), "from-host\n").unwrap();
    let made = c.spec.state_dir.join("made/by/agent");
    c.kubectl(&[
        "create",
        "configmap",
        "cfg",
        "--from-literal=greeting=hello",
        "--from-literal=other=x",
    ])
    .unwrap();
    c.kubectl(&[
        "create",
        "secret",
        "generic",
        "sec",
        "--from-literal=password=s3cret",
    ])
    .unwrap();
    let pod = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: vol}}
spec:
  terminationGracePeriodSeconds: 1
  volumes:
  - {{name: shared, emptyDir: {{}}}}
  - name: cfg
    configMap:
      name: cfg
      defaultMode: 0440
      items: [{{key: greeting, path: sub/greeting.txt, mode: 0600}}]
  - {{name: sec, secret: {{secretName: sec, defaultMode: 0400}}}}
  - {{name: host, hostPath: {{path: {host}, type: Directory}}}}
  - {{name: made, hostPath: {{path: {made}, type: DirectoryOrCreate}}}}
  containers:
  - name: writer
    image: skiff.local/netexec:latest
    imagePullPolicy: Never
    command: [sh, -c, 'echo shared-data > /shared/f; exec sleep 3600']
    volumeMounts:
    - {{name: shared, mountPath: /shared}}
    - {{name: cfg, mountPath: /etc/cfg}}
    - {{name: sec, mountPath: /etc/sec}}
    - {{name: host, mountPath: /host, readOnly: true}}
    - {{name: made, mountPath: /made}}
  - name: reader
    image: skiff.local/netexec:latest
    imagePullPolicy: Never
    command: [sleep, '3600']
    volumeMounts:
    - {{name: shared, mountPath: /data}}
"#,
        host = host.display(),
        made = made.display()
    );
    c.kubectl_in(&["apply", "-f", "-"], Some(&pod)).unwrap();
    let exec = |container: &str, script: &str| {
        c.kubectl(&["exec", "vol", "-c", container, "--", "sh", "-c", script])
    };
    eventually(&c, "the pod to run", 60, || {
        c.kubectl(&["get", "pod", "vol", "-o", "jsonpath={.status.phase}"])
            .is_ok_and(|p| p == "Running")
    });
    eventually(&c, "the reader to see the writer's file", 15, || {
        exec("reader", "cat /data/f").is_ok_and(|o| o.trim() == "shared-data")
    });
    // configMap: only the listed item, at its path, with its mode; read-only.
    assert_eq!(
        exec("writer", "cat /etc/cfg/sub/greeting.txt")
            .unwrap()
            .trim(),
        "hello"
    );
    assert_eq!(
        exec("writer", "ls /etc/cfg")
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["sub"]
    );
    assert_eq!(
        exec("writer", "busybox stat -L -c %a /etc/cfg/sub/greeting.txt")
            .unwrap()
            .trim(),
        "600"
    );
    assert!(exec("writer", "echo x > /etc/cfg/new").is_err());
    // secret: every key, defaultMode.
    assert_eq!(exec("writer", "cat /etc/sec/password").unwrap(), "s3cret");
    assert_eq!(
        exec("writer", "busybox stat -L -c %a /etc/sec/password")
            .unwrap()
            .trim(),
        "400"
    );
    // hostPath: the host's directory, read-only here; DirectoryOrCreate made its own.
    assert_eq!(
        exec("writer", "cat /host/present").unwrap().trim(),
        "from-host"
    );
    let refused = exec("writer", "echo x > /host/new")
        .unwrap_err()
        .to_string();
    assert!(refused.contains("Read-only file system"), "{refused}");
    assert!(!host.join("new").exists());
    assert!(made.is_dir());
    exec("writer", "echo y > /made/z").unwrap();
    assert_eq!(std::fs::read_to_string(made.join("z")).unwrap(), "y\n");

    // A ConfigMap update reaches the running container.
    c.kubectl(&[
        "patch",
        "configmap",
        "cfg",
        "-p",
        r#"{"data":{"greeting":"bonjour"}}"#,
    ])
    .unwrap();
    eventually(&c, "the updated ConfigMap in the volume", 20, || {
        exec("writer", "cat /etc/cfg/sub/greeting.txt").is_ok_and(|o| o.trim() == "bonjour")
    });

    // A missing ConfigMap holds the pod back, with the reason; it starts once it exists.
    let waits = r#"
apiVersion: v1
kind: Pod
metadata: {name: waits}
spec:
  terminationGracePeriodSeconds: 1
  volumes:
  - {name: late, configMap: {name: late}}
  - {name: maybe, secret: {secretName: absent, optional: true}}
  containers:
  - name: app
    image: skiff.local/netexec:latest
    imagePullPolicy: Never
    command: [sleep, '3600']
    volumeMounts:
    - {name: late, mountPath: /late}
    - {name: maybe, mountPath: /maybe}
"#;
    c.kubectl_in(&["apply", "-f", "-"], Some(waits)).unwrap();
    let status = || {
        c.kubectl(&[
            "get",
            "pod",
            "waits",
            "-o",
            "jsonpath={.status.phase}|{.status.containerStatuses[0].state.waiting.reason}|{.status.containerStatuses[0].state.waiting.message}",
        ])
        .unwrap_or_default()
    };
    eventually(&c, "the pod to wait for its ConfigMap", 20, || {
        status().contains("configmap \"late\" not found")
    });
    let s = status();
    assert!(s.starts_with("Pending|ContainerCreating|"), "{s}");
    c.kubectl(&["create", "configmap", "late", "--from-literal=k=v"])
        .unwrap();
    eventually(&c, "the pod to start once its ConfigMap exists", 20, || {
        status().starts_with("Running")
    });
    assert_eq!(
        c.kubectl(&["exec", "waits", "--", "cat", "/late/k"])
            .unwrap(),
        "v"
    );
    assert_eq!(
        c.kubectl(&["exec", "waits", "--", "ls", "-A", "/maybe"])
            .unwrap()
            .split_whitespace()
            .filter(|n| !n.starts_with(".."))
            .count(),
        0
    );

    // Deleting the pod removes its emptyDir.
    let uid = c
        .kubectl(&["get", "pod", "vol", "-o", "jsonpath={.metadata.uid}"])
        .unwrap();
    let dir = c.spec.state_dir.join("node1/pods").join(&uid);
    assert!(dir.join("volumes/empty-dir/shared/f").exists());
    c.kubectl(&["delete", "pod", "vol", "--wait=false"])
        .unwrap();
    eventually(&c, "the pod's volumes to be removed", 30, || !dir.exists());
    assert!(
        host.join("present").exists(),
        "hostPath content is left alone"
    );
    assert!(
        started.elapsed() < Duration::from_secs(55),
        "took {:?}",
        started.elapsed()
    );
}
