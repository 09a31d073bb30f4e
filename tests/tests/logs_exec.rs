//! `kubectl logs` and `kubectl exec` through the controlplane to the node's agent: logs of a
//! chosen container with --tail and --timestamps, the Kubernetes errors (pod not found, a
//! container name required, no previous container), --previous after a restart, -f streaming
//! new lines; exec printing a file, stdin with -i, stderr, the exit code, an older kubectl
//! (SPDY) told what to use, a disconnected client whose command's stdin is closed; the agent's
//! port refusing a caller without the controlplane's certificate.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{eventually, in_pod, prerequisites};

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: talk}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: fixed
    image: skiff.local/netexec:latest
    imagePullPolicy: Never
    command: [sh, -c, 'for i in 1 2 3 4 5; do echo line $i; done; echo oops >&2; exec sleep 3600']
  - name: ticker
    image: skiff.local/netexec:latest
    imagePullPolicy: Never
    command: [sh, -c, 'i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done']
  - name: crash
    image: skiff.local/netexec:latest
    imagePullPolicy: Never
    command: [sh, -c, 'echo attempt; sleep 1; exit 1']
"#;

fn kubectl_cmd(c: &skiff_e2e::cluster::Cluster, bin: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.arg("30")
        .arg(bin)
        .args(args)
        .env("KUBECONFIG", &c.kubeconfig);
    cmd
}

/// Exit code, stdout and stderr of a kubectl run.
fn run(mut cmd: Command, stdin: Option<&str>) -> (i32, String, String) {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn kubectl_logs_and_exec_reach_the_pods_containers() {
    if !prerequisites() {
        return;
    }
    let c = common::cluster(1, &[]);
    let kubectl = |args: &[&str]| run(kubectl_cmd(&c, "kubectl", args), None);
    c.kubectl_in(&["apply", "-f", "-"], Some(POD)).unwrap();
    let get = |path: &str| {
        c.kubectl(&["get", "pod", "talk", "-o", &format!("jsonpath={path}")])
            .unwrap_or_default()
    };
    eventually(&c, "the fixed container to run", 60, || {
        get("{.status.containerStatuses[?(@.name==\"fixed\")].state.running}").contains("startedAt")
    });

    // The Node advertises the endpoint; the agent refuses callers without the controlplane's
    // client certificate.
    assert_eq!(
        c.kubectl(&[
            "get",
            "node",
            &c.node_name(1),
            "-o",
            "jsonpath={.status.daemonEndpoints.kubeletEndpoint.Port}"
        ])
        .unwrap(),
        "10250"
    );
    let url = format!(
        "https://{}:10250/containerLogs/default/talk/x/fixed",
        c.node_ip(1)
    );
    let code = Command::new("curl")
        .args([
            "-sk",
            "-m",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &url,
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&code.stdout), "401");

    // Logs of one container, the last lines, timestamps.
    let started = Instant::now();
    eventually(&c, "the fixed container's output", 10, || {
        kubectl(&["logs", "talk", "-c", "fixed"]).1.contains("oops")
    });
    let (code, out, err) = kubectl(&["logs", "talk", "-c", "fixed"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.contains(&"oops"), "{out}");
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("line ")).count(),
        5,
        "{out}"
    );
    let (_, out, _) = kubectl(&["logs", "talk", "-c", "fixed", "--tail=1"]);
    assert_eq!(out.lines().count(), 1, "{out}");
    let (_, out, _) = kubectl(&["logs", "talk", "-c", "fixed", "--timestamps", "--tail=2"]);
    for l in out.lines() {
        let ts = l.split_whitespace().next().unwrap_or("");
        assert!(is_rfc3339(ts), "no RFC 3339 timestamp in {l:?}");
    }
    let (_, out, _) = kubectl(&["logs", "talk", "-c", "fixed", "--limit-bytes=4"]);
    assert_eq!(out.len(), 4, "{out:?}");

    // Kubernetes' errors.
    let (code, _, err) = kubectl(&["logs", "nope"]);
    assert_ne!(code, 0);
    assert!(err.contains("pods \"nope\" not found"), "{err}");
    let (code, _, err) = kubectl(&["get", "--raw", "/api/v1/namespaces/default/pods/talk/log"]);
    assert_ne!(code, 0);
    assert!(
        err.contains(
            "a container name must be specified for pod talk, choose one of: [fixed ticker crash]"
        ),
        "{err}"
    );
    let (code, _, err) = kubectl(&["logs", "talk", "-c", "fixed", "--previous"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("previous terminated container \"fixed\" in pod \"talk\" not found"),
        "{err}"
    );

    // --previous: the attempt before the restart.
    eventually(&c, "the crashing container to restart", 30, || {
        get("{.status.containerStatuses[?(@.name==\"crash\")].restartCount}")
            .parse::<u32>()
            .unwrap_or(0)
            >= 1
    });
    let (code, out, err) = kubectl(&["logs", "talk", "-c", "crash", "--previous"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "attempt");

    // -f follows new lines (bounded: a few lines, then the client is stopped by its pid).
    let mut follow = kubectl_cmd(
        &c,
        "kubectl",
        &["logs", "-f", "talk", "-c", "ticker", "--tail=1"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let mut reader = BufReader::new(follow.stdout.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut ticks = Vec::new();
    while ticks.len() < 4 && Instant::now() < deadline {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        if let Some(n) = line.trim().strip_prefix("tick ") {
            ticks.push(n.parse::<u64>().unwrap());
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(
        ticks.len(),
        4,
        "kubectl logs -f stopped streaming: {ticks:?}"
    );
    assert!(ticks.windows(2).all(|w| w[1] == w[0] + 1), "{ticks:?}");

    // exec: output, stdin, stderr, exit codes.
    let (code, out, err) = kubectl(&["exec", "talk", "-c", "fixed", "--", "cat", "/etc/hostname"]);
    assert_eq!((code, out.trim()), (0, "talk"), "{err}");
    let (code, out, err) = run(
        kubectl_cmd(
            &c,
            "kubectl",
            &[
                "exec",
                "-i",
                "talk",
                "-c",
                "fixed",
                "--",
                "sh",
                "-c",
                "read l; echo \"got $l\"",
            ],
        ),
        Some("hello from stdin\n"),
    );
    assert_eq!((code, out.as_str()), (0, "got hello from stdin\n"), "{err}");
    // The end of stdin reaches the command (cat ends).
    let (code, out, err) = run(
        kubectl_cmd(
            &c,
            "kubectl",
            &["exec", "-i", "talk", "-c", "fixed", "--", "cat"],
        ),
        Some("a\nb\n"),
    );
    assert_eq!((code, out.as_str()), (0, "a\nb\n"), "{err}");
    let (code, out, err) = kubectl(&[
        "exec",
        "talk",
        "-c",
        "fixed",
        "--",
        "sh",
        "-c",
        "echo to-err >&2; echo to-out",
    ]);
    assert_eq!((code, out.trim()), (0, "to-out"));
    assert!(err.contains("to-err"), "{err}");
    let (code, _, _) = kubectl(&["exec", "talk", "-c", "fixed", "--", "sh", "-c", "exit 3"]);
    assert_eq!(code, 3);
    let (code, _, err) = kubectl(&["exec", "talk", "-c", "nope", "--", "true"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("container nope is not valid for pod talk"),
        "{err}"
    );

    // The newest and the oldest kubectl in reach: WebSocket works, SPDY gets told what to use.
    let sdk = "/usr/lib/google-cloud-sdk/bin";
    let (code, out, err) = run(
        kubectl_cmd(
            &c,
            &format!("{sdk}/kubectl.1.33"),
            &["exec", "talk", "-c", "fixed", "--", "echo", "v5"],
        ),
        None,
    );
    assert_eq!((code, out.trim()), (0, "v5"), "{err}");
    let (code, _, err) = run(
        kubectl_cmd(
            &c,
            &format!("{sdk}/kubectl.1.29"),
            &["exec", "talk", "-c", "fixed", "--", "true"],
        ),
        None,
    );
    assert_ne!(code, 0);
    assert!(err.contains("use kubectl 1.30 or newer"), "{err}");

    // A client that goes away: the command loses its stdin and ends.
    let fixed = get("{.status.containerStatuses[?(@.name==\"fixed\")].containerID}")
        .trim_start_matches("docker://")
        .to_owned();
    let mut hold = kubectl_cmd(
        &c,
        "kubectl",
        &["exec", "-i", "talk", "-c", "fixed", "--", "cat"],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let cats = || {
        in_pod(&fixed, "ps -o comm | grep -c '^cat$' || true")
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    eventually(&c, "the exec'd cat to run", 10, || cats() == "1");
    let _ = hold.kill();
    let _ = hold.wait();
    eventually(&c, "the exec'd cat to end with its client", 10, || {
        cats() == "0"
    });
    assert!(
        started.elapsed() < Duration::from_secs(50),
        "took {:?}",
        started.elapsed()
    );
}

/// An RFC 3339 UTC timestamp, checked by shape (the test crate has no time library).
fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && s.ends_with('Z')
}
