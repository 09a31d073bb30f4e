//! kubectl, the client users already have, against a fresh controlplane.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, need};

const APP: &str = "apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: skiff.local/netexec:latest
        ports: [{containerPort: 8080}]
        env: [{name: A, value: one}]
        resources: {limits: {cpu: '1', memory: 64Mi}}
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: shop
  labels: {tier: front}
data: {greeting: hello}
";

fn header(table: &str) -> Vec<String> {
    table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[test]
fn apply_get_scale_patch_and_cascading_delete_work_as_on_kubernetes() {
    if !need("kubectl", &["version", "--client"]) {
        return;
    }
    let s = Server::start();
    let out = s.apply(APP);
    for line in [
        "namespace/shop created",
        "deployment.apps/web created",
        "service/web created",
        "configmap/settings created",
    ] {
        assert!(out.contains(line), "{out}");
    }
    // Re-applying the same manifest changes nothing.
    assert!(s.apply(APP).contains("deployment.apps/web unchanged"));

    let deploy = s.ok(&["get", "deploy", "-n", "shop"]);
    assert_eq!(
        header(&deploy),
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    );
    assert!(deploy.contains("web") && deploy.contains("0/2"), "{deploy}");
    let wide = s.ok(&["get", "deploy", "-n", "shop", "-o", "wide"]);
    assert!(
        header(&wide).ends_with(&["CONTAINERS".into(), "IMAGES".into(), "SELECTOR".into()]),
        "{wide}"
    );
    let svc = s.ok(&["get", "svc", "-n", "shop"]);
    assert_eq!(
        header(&svc),
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE"
        ]
    );
    assert!(svc.contains("80/TCP"), "{svc}");
    let all = s.ok(&["get", "all", "-n", "shop"]);
    assert!(
        all.contains("deployment.apps/web") && all.contains("service/web"),
        "{all}"
    );

    // Defaults as Kubernetes applies them.
    let strategy = s.ok(&["get", "deploy", "web", "-n", "shop", "-o", "jsonpath={.spec.strategy.rollingUpdate.maxSurge} {.spec.revisionHistoryLimit} {.spec.template.spec.containers[0].imagePullPolicy}"]);
    assert_eq!(strategy, "25% 10 Always");

    // Label and field selectors.
    assert!(
        s.ok(&["get", "cm", "-n", "shop", "-l", "tier=front", "-o", "name"])
            .contains("configmap/settings")
    );
    assert!(
        s.ok(&[
            "get",
            "cm",
            "-n",
            "shop",
            "-l",
            "tier notin (front)",
            "-o",
            "name"
        ])
        .trim()
        .is_empty()
    );
    assert!(
        s.ok(&[
            "get",
            "cm",
            "-A",
            "--field-selector",
            "metadata.name=settings",
            "-o",
            "name"
        ])
        .contains("settings")
    );

    // Scale goes through the /scale subresource; generation follows spec changes only.
    assert!(
        s.ok(&["scale", "deploy", "web", "-n", "shop", "--replicas=5"])
            .contains("scaled")
    );
    let replicas = s.ok(&[
        "get",
        "deploy",
        "web",
        "-n",
        "shop",
        "-o",
        "jsonpath={.spec.replicas} {.metadata.generation}",
    ]);
    assert_eq!(replicas, "5 2");
    s.ok(&["label", "deploy", "web", "-n", "shop", "extra=yes"]);
    assert_eq!(
        s.ok(&[
            "get",
            "deploy",
            "web",
            "-n",
            "shop",
            "-o",
            "jsonpath={.metadata.generation}"
        ]),
        "2"
    );

    // The three patch flavours.
    s.ok(&[
        "patch",
        "deploy",
        "web",
        "-n",
        "shop",
        "--type=merge",
        "-p",
        r#"{"spec":{"minReadySeconds":3}}"#,
    ]);
    s.ok(&["patch", "deploy", "web", "-n", "shop", "--type=json", "-p", r#"[{"op":"replace","path":"/spec/template/spec/containers/0/image","value":"skiff.local/netexec:v2"}]"#]);
    s.ok(&["patch", "deploy", "web", "-n", "shop", "-p", r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","env":[{"name":"B","value":"two"}]},{"name":"sidecar","image":"skiff.local/pause"}]}}}}"#]);
    let spec = s.ok(&["get", "deploy", "web", "-n", "shop", "-o", "jsonpath={.spec.minReadySeconds} {range .spec.template.spec.containers[*]}{.name}:{.image}:{range .env[*]}{.name}{end} {end}"]);
    assert_eq!(
        spec,
        "3 web:skiff.local/netexec:v2:BA sidecar:skiff.local/pause: "
    );

    // Cascading delete: deployment -> replica set -> pods, by ownerReferences.
    let uid = s.ok(&[
        "get",
        "deploy",
        "web",
        "-n",
        "shop",
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    s.apply(&format!(
        "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata:\n  name: web-1\n  namespace: shop\n  labels: {{app: web}}\n  ownerReferences: [{{apiVersion: apps/v1, kind: Deployment, name: web, uid: \"{uid}\", controller: true}}]\nspec:\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec: {{containers: [{{name: c, image: i}}]}}\n"
    ));
    let rs_uid = s.ok(&[
        "get",
        "rs",
        "web-1",
        "-n",
        "shop",
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    for i in 0..3 {
        s.apply(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web-1-{i}\n  namespace: shop\n  labels: {{app: web}}\n  ownerReferences: [{{apiVersion: apps/v1, kind: ReplicaSet, name: web-1, uid: \"{rs_uid}\", controller: true}}]\nspec: {{containers: [{{name: c, image: i}}]}}\n"
        ));
    }
    let pods = s.ok(&["get", "pods", "-n", "shop"]);
    assert_eq!(
        header(&pods),
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    );
    assert!(pods.contains("0/1") && pods.contains("Pending"), "{pods}");
    assert_eq!(
        header(&s.ok(&["get", "pods", "-n", "shop", "-o", "wide"]))[5..7],
        ["IP", "NODE"]
    );
    assert!(
        s.ok(&["delete", "deploy", "web", "-n", "shop"])
            .contains("deployment.apps \"web\" deleted")
    );
    s.eventually("dependents to be collected", || {
        s.ok(&["get", "rs,pods", "-n", "shop", "-o", "name"])
            .trim()
            .is_empty()
    });

    // Orphan propagation keeps the dependents and drops their owner reference.
    s.apply(APP);
    let uid = s.ok(&[
        "get",
        "deploy",
        "web",
        "-n",
        "shop",
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    s.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: kept\n  namespace: shop\n  ownerReferences: [{{apiVersion: apps/v1, kind: Deployment, name: web, uid: \"{uid}\"}}]\nspec: {{containers: [{{name: c, image: i}}]}}\n"
    ));
    s.ok(&["delete", "deploy", "web", "-n", "shop", "--cascade=orphan"]);
    assert_eq!(
        s.ok(&[
            "get",
            "pod",
            "kept",
            "-n",
            "shop",
            "-o",
            "jsonpath={.metadata.ownerReferences}"
        ]),
        ""
    );

    // Deleting the namespace removes its contents, then the namespace.
    s.ok(&["delete", "ns", "shop"]);
    assert!(s.fails(&["get", "ns", "shop"], None).contains("NotFound"));
    let ns = s.ok(&["get", "ns", "-o", "name"]);
    for n in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(ns.contains(&format!("namespace/{n}")), "{ns}");
    }
}

#[test]
fn get_watch_prints_changes_as_they_happen() {
    if !need("kubectl", &["version", "--client"]) {
        return;
    }
    let s = Server::start();
    s.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: first}\ndata: {a: '1'}\n");
    let mut watch = Command::new("timeout")
        .args([
            "20",
            "kubectl",
            "get",
            "configmaps",
            "--watch",
            "--output-watch-events",
        ])
        .env("KUBECONFIG", &s.kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    let wait_for = |needle: &str, lines: &mut Vec<String>| {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if lines.iter().any(|l| l.contains(needle)) {
                return;
            }
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
                lines.push(l);
            }
        }
        panic!("watch never printed {needle:?}; got {lines:?}");
    };
    wait_for("first", &mut lines);
    s.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: second}\ndata: {a: '1'}\n");
    wait_for("ADDED", &mut lines);
    s.ok(&["label", "configmap", "second", "x=y"]);
    wait_for("MODIFIED", &mut lines);
    s.ok(&["delete", "configmap", "second"]);
    wait_for("DELETED", &mut lines);
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(
        lines.iter().filter(|l| l.contains("second")).count() >= 3,
        "{lines:?}"
    );
}

#[test]
fn errors_read_as_kubernetes_users_know_them() {
    if !need("kubectl", &["version", "--client"]) {
        return;
    }
    let s = Server::start();
    s.ok(&["create", "namespace", "dup"]);
    let e = s.fails(&["create", "namespace", "dup"], None);
    assert!(
        e.contains("Error from server (AlreadyExists): namespaces \"dup\" already exists"),
        "{e}"
    );
    let e = s.fails(&["get", "pod", "nope"], None);
    assert!(
        e.contains("Error from server (NotFound): pods \"nope\" not found"),
        "{e}"
    );
    let e = s.fails(
        &["apply", "-f", "-"],
        Some("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: bad}\nspec:\n  selector: {matchLabels: {app: a}}\n  template:\n    metadata: {labels: {app: b}}\n    spec: {containers: [{name: c}]}\n"),
    );
    assert!(e.contains("is invalid"), "{e}");
    assert!(
        e.contains("spec.template.spec.containers[0].image: Required value"),
        "{e}"
    );
    assert!(
        e.contains("`selector` does not match template `labels`"),
        "{e}"
    );
    // Unknown fields are rejected by the server's strict field validation.
    let e = s.fails(
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: typo}\ndatta: {a: b}\n"),
    );
    assert!(
        e.contains("strict decoding error: unknown field \"datta\""),
        "{e}"
    );
    // Wrong types name the field.
    let e = s.fails(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: eighty}]}\n",
        ),
    );
    assert!(e.contains("spec.ports[0].port"), "{e}");
    // Stale writes conflict.
    s.ok(&["create", "configmap", "cas", "--from-literal=a=1"]);
    let e = s.fails(&["replace", "-f", "-"], Some("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cas, resourceVersion: \"1\"}\ndata: {a: '2'}\n"));
    assert!(
        e.contains("Conflict") && e.contains("the object has been modified"),
        "{e}"
    );
    // No credentials, no access.
    let e = s.fails(&["get", "pods", "--token=wrong"], None);
    assert!(e.contains("Unauthorized"), "{e}");
    // Bodies over 3 MiB are refused.
    let big = "x".repeat(3 * 1024 * 1024 + 10);
    let manifest =
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: big}}\ndata: {{a: {big}}}\n");
    let e = s.fails(&["create", "-f", "-"], Some(&manifest));
    assert!(e.contains("Request entity too large"), "{e}");
}

#[test]
fn objects_survive_a_controlplane_restart() {
    if !need("kubectl", &["version", "--client"]) {
        return;
    }
    let mut s = Server::start();
    s.apply(APP);
    let before = s.ok(&[
        "get",
        "deploy,svc,cm",
        "-n",
        "shop",
        "-o",
        "jsonpath={range .items[*]}{.metadata.uid} {end}",
    ]);
    s.stop();
    let s2 = Server::start_in(&s.dir, &[]);
    let after = s2.ok(&[
        "get",
        "deploy,svc,cm",
        "-n",
        "shop",
        "-o",
        "jsonpath={range .items[*]}{.metadata.uid} {end}",
    ]);
    assert_eq!(before, after);
    // New writes continue from the old revisions.
    s2.ok(&["scale", "deploy", "web", "-n", "shop", "--replicas=3"]);
    assert_eq!(
        s2.ok(&[
            "get",
            "deploy",
            "web",
            "-n",
            "shop",
            "-o",
            "jsonpath={.spec.replicas}"
        ]),
        "3"
    );
}

#[test]
fn typed_create_commands_work_with_protobuf_bodies() {
    if !need("kubectl", &["version", "--client"]) {
        return;
    }
    let s = Server::start();
    // kubectl >= 1.32 sends these as application/vnd.kubernetes.protobuf.
    assert!(
        s.ok(&["create", "namespace", "typed"])
            .contains("namespace/typed created")
    );
    s.ok(&[
        "create",
        "deployment",
        "web",
        "-n",
        "typed",
        "--image=skiff.local/netexec:latest",
        "--replicas=0",
        "--port=8080",
    ]);
    s.ok(&[
        "create",
        "configmap",
        "cfg",
        "-n",
        "typed",
        "--from-literal=k=v",
    ]);
    s.ok(&[
        "create",
        "secret",
        "generic",
        "sec",
        "-n",
        "typed",
        "--from-literal=password=s3cret",
    ]);
    s.ok(&[
        "create",
        "service",
        "clusterip",
        "web",
        "-n",
        "typed",
        "--tcp=80:8080",
    ]);
    let got = s.ok(&["get", "deploy/web", "cm/cfg", "secret/sec", "svc/web", "-n", "typed", "-o",
        "jsonpath={range .items[*]}{.kind}:{.spec.replicas}{.data.k}{.data.password}{.spec.ports[0].targetPort} {end}"]);
    assert_eq!(
        got,
        "Deployment:0 ConfigMap:v Secret:czNjcmV0 Service:8080 "
    );
}

#[test]
fn every_kubectl_release_on_the_machine_works() {
    if !need("kubectl", &["version", "--client"]) {
        return;
    }
    let s = Server::start();
    let mut tried = 0;
    for minor in 27..=33 {
        let bin = format!("/usr/lib/google-cloud-sdk/bin/kubectl.1.{minor}");
        if !std::path::Path::new(&bin).exists() {
            continue;
        }
        tried += 1;
        let run = |args: &[&str], stdin: Option<&str>| {
            let out = s.kubectl_bin(&bin, args, stdin);
            assert!(
                out.status.success(),
                "kubectl 1.{minor} {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        };
        let ns = format!("v1-{minor}");
        run(&["create", "namespace", &ns], None);
        let manifest = APP.replace("shop", &ns);
        assert!(
            run(&["apply", "-f", "-"], Some(&manifest)).contains("deployment.apps/web created")
        );
        let table = run(&["get", "deploy", "-n", &ns], None);
        assert_eq!(
            header(&table),
            ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
            "kubectl 1.{minor}"
        );
        run(&["scale", "deploy", "web", "-n", &ns, "--replicas=4"], None);
        run(&["delete", "namespace", &ns], None);
    }
    eprintln!("tried {tried} kubectl releases");
}
