//! Harness of the agent's end-to-end tests: the real controlplane and agent binaries of this
//! workspace, driven with kubectl.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Binaries of the workspace sit next to the test's own deps directory.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().and_then(|d| d.parent()).unwrap().join(name);
    assert!(
        path.exists(),
        "{} is missing; build the workspace first (cargo build --workspace)",
        path.display()
    );
    path
}

/// A child process killed (by its own pid) when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` and waits for a stdout line containing `ready`; returns that line.
pub fn start(cmd: &mut Command) -> (Proc, String) {
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

/// A controlplane on a fresh data directory, and agents joining it.
pub struct Cluster {
    _cp: Proc,
    pub dir: tempfile::TempDir,
    pub url: String,
    pub kubeconfig: PathBuf,
}

impl Cluster {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (cp, line) = start(
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
        let kubeconfig = dir.path().join("admin.kubeconfig");
        Self {
            _cp: cp,
            dir,
            url,
            kubeconfig,
        }
    }

    /// The command line of an agent for `node` on the loopback interface.
    pub fn agent(&self, node: &str) -> Command {
        let mut cmd = Command::new(bin("skiff-agent"));
        cmd.args(["--server", &self.url, "--node-name", node, "--iface", "lo"])
            .arg("--token-file")
            .arg(self.dir.path().join("node-token"))
            .arg("--ca-file")
            .arg(self.dir.path().join("pki/ca.crt"))
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("agent-{node}")));
        cmd
    }

    pub fn kubectl(&self, args: &[&str]) -> String {
        kubectl(&self.kubeconfig, args, None)
    }
}

pub fn kubectl(kc: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", kc)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn eventually(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("timed out after {secs} s waiting for {what}");
}

/// Skips loudly, or fails when the environment requires it (CI), when `ok` is false.
pub fn require(ok: bool, what: &str) -> bool {
    if !ok {
        assert!(
            std::env::var_os("SKIFF_E2E_REQUIRED").is_none(),
            "{what} is required: run cargo xtask setup && cargo xtask image"
        );
        eprintln!("SKIPPED: {what} is missing (cargo xtask setup && cargo xtask image)");
    }
    ok
}
