//! The agent against a real controlplane: registration, lease heartbeat, shutdown, re-adoption.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Binaries of the workspace sit next to the test's own deps directory.
fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing; build the workspace first (cargo build --workspace)",
        path.display()
    );
    path
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` and waits for a stdout line containing `ready`.
fn start(cmd: &mut Command) -> (Proc, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(line.contains("ready"), "{line}");
    (Proc(child), line)
}

fn kubectl(kubeconfig: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn eventually(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out after {secs} s waiting for {what}");
}

#[test]
fn the_agent_registers_heartbeats_and_reports_its_shutdown() {
    let kubectl_ok = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !kubectl_ok {
        assert!(
            std::env::var_os("SKIFF_E2E_REQUIRED").is_none(),
            "kubectl is required; run cargo xtask setup"
        );
        eprintln!("SKIPPED: kubectl missing");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_cp, line) = start(
        Command::new(bin("skiff-controlplane"))
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--listen", "127.0.0.1:0"]),
    );
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("https://"))
        .unwrap()
        .to_owned();
    let kc = dir.path().join("admin.kubeconfig");
    let agent = |name: &str| {
        let mut cmd = Command::new(bin("skiff-agent"));
        cmd.args(["--server", &url, "--node-name", name, "--iface", "lo"])
            .arg("--token-file")
            .arg(dir.path().join("node-token"))
            .arg("--ca-file")
            .arg(dir.path().join("pki/ca.crt"))
            .arg("--data-dir")
            .arg(dir.path().join(format!("agent-{name}")));
        cmd
    };

    let (mut a, _) = start(&mut agent("node-a"));
    let nodes = kubectl(&kc, &["get", "nodes"]);
    assert!(
        nodes.contains("node-a") && nodes.contains("Ready"),
        "{nodes}"
    );
    let ip = kubectl(
        &kc,
        &[
            "get",
            "node",
            "node-a",
            "-o",
            "jsonpath={.status.addresses[?(@.type==\"InternalIP\")].address}",
        ],
    );
    assert_eq!(ip, "127.0.0.1");
    let uid = kubectl(
        &kc,
        &["get", "node", "node-a", "-o", "jsonpath={.metadata.uid}"],
    );

    // The lease is renewed every 10 s.
    let renew = || {
        kubectl(
            &kc,
            &[
                "get",
                "lease",
                "node-a",
                "-n",
                "kube-node-lease",
                "-o",
                "jsonpath={.spec.renewTime}",
            ],
        )
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
    let reason = kubectl(
        &kc,
        &[
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
        kubectl(
            &kc,
            &["get", "node", "node-a", "-o", "jsonpath={.metadata.uid}"]
        ),
        uid
    );
    let status = kubectl(
        &kc,
        &[
            "get",
            "node",
            "node-a",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ],
    );
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
