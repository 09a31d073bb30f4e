//! Shared harness of the end-to-end tests: a real `skiff-controlplane` process on a fresh data
//! directory, driven by real clients (kubectl, the kube crate, the Python client).
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Whether a missing client must fail the test rather than skip it (CI sets this).
pub fn required() -> bool {
    std::env::var_os("SKIFF_E2E_REQUIRED").is_some()
        || std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Skips (loudly) or fails when `cmd` is not installed.
pub fn need(cmd: &str, check: &[&str]) -> bool {
    let ok = Command::new(cmd)
        .args(check)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            !required(),
            "{cmd} is required for this test; run `cargo xtask setup`"
        );
        eprintln!("SKIPPED: {cmd} is not available (run `cargo xtask setup`)");
    }
    ok
}

pub struct Server {
    child: Child,
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub url: String,
    _tmp: Option<tempfile::TempDir>,
}

impl Server {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts with extra controlplane flags.
    pub fn start_with(flags: &[&str]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let mut s = Self::start_in(&dir, flags);
        s._tmp = Some(tmp);
        s
    }

    /// Starts on an existing data dir (restarts), on a fresh port.
    pub fn start_in(dir: &Path, flags: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_skiff-controlplane"))
            .arg("--data-dir")
            .arg(dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start skiff-controlplane");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("controlplane prints a ready line");
        assert!(line.contains("ready"), "unexpected first line: {line}");
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("https://"))
            .unwrap()
            .to_owned();
        Self {
            child,
            dir: dir.to_owned(),
            kubeconfig: dir.join("admin.kubeconfig"),
            url,
            _tmp: None,
        }
    }

    /// Stops the process (by its own pid) and waits for it.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_stdin(args, None)
    }

    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        self.kubectl_bin("kubectl", args, stdin)
    }

    /// Runs a given kubectl binary (bounded to 60 s) against this server.
    pub fn kubectl_bin(&self, bin: &str, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new("timeout")
            .arg("60")
            .arg(bin)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        if let Some(input) = stdin {
            use std::io::Write;
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(input.as_bytes()).unwrap();
        }
        child.wait_with_output().unwrap()
    }

    /// Runs kubectl, asserting success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn apply(&self, yaml: &str) -> String {
        let out = self.kubectl_stdin(&["apply", "-f", "-"], Some(yaml));
        assert!(
            out.status.success(),
            "kubectl apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs kubectl expecting failure; returns stderr.
    pub fn fails(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl_stdin(args, stdin);
        assert!(
            !out.status.success(),
            "kubectl {args:?} unexpectedly succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    /// Plays the node agent's registration: a Ready node with the given capacity.
    pub fn register_node(&self, name: &str, cpu: &str, memory: &str) {
        self.apply(&format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels: {{kubernetes.io/hostname: {name}}}\nstatus:\n  capacity: {{cpu: '{cpu}', memory: {memory}, pods: '110'}}\n  allocatable: {{cpu: '{cpu}', memory: {memory}, pods: '110'}}\n  conditions: [{{type: Ready, status: 'True', reason: KubeletReady}}]\n  addresses: [{{type: InternalIP, address: 192.0.2.10}}]\n"
        ));
        // Node status is written through its subresource, as the agent does.
        let status = format!(
            r#"{{"status":{{"capacity":{{"cpu":"{cpu}","memory":"{memory}","pods":"110"}},"allocatable":{{"cpu":"{cpu}","memory":"{memory}","pods":"110"}},"conditions":[{{"type":"Ready","status":"True","reason":"KubeletReady"}}]}}}}"#
        );
        self.ok(&[
            "patch",
            "node",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status,
        ]);
    }

    /// Plays the node agent for pods: every pod matching `selector` in `ns` that has a node
    /// becomes Running and Ready with a pod IP.
    pub fn mark_pods_ready(&self, ns: &str, selector: &str) -> usize {
        let names = self.ok(&[
            "get",
            "pods",
            "-n",
            ns,
            "-l",
            selector,
            "-o",
            "jsonpath={range .items[?(@.spec.nodeName)]}{.metadata.name}{\"\\n\"}{end}",
        ]);
        let mut n = 0;
        for (i, name) in names.lines().filter(|l| !l.is_empty()).enumerate() {
            let status = format!(
                r#"{{"status":{{"phase":"Running","podIP":"10.244.0.{}","conditions":[{{"type":"Ready","status":"True"}},{{"type":"ContainersReady","status":"True"}}],"containerStatuses":[{{"name":"c","ready":true,"restartCount":0,"image":"i","imageID":"","started":true,"state":{{"running":{{}}}}}}]}}}}"#,
                i + 2
            );
            self.ok(&[
                "patch",
                "pod",
                name,
                "-n",
                ns,
                "--subresource=status",
                "--type=merge",
                "-p",
                &status,
            ]);
            n += 1;
        }
        n
    }

    /// Polls `f` until it returns true (bounded).
    pub fn eventually(&self, what: &str, mut f: impl FnMut() -> bool) {
        for _ in 0..100 {
            if f() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("timed out waiting for {what}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}
