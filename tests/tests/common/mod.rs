//! What every end-to-end test needs: prerequisites, a fresh local cluster, bounded waits.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use skiff_e2e::cluster::{Cluster, Spec};

/// Binaries of the workspace sit next to the test's own deps directory.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(|d| d.parent()).unwrap().to_path_buf()
}

fn works(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Root, Docker with the local images, kubectl, iproute2 and the workspace binaries. Missing
/// ones skip the test loudly, or fail it where the environment requires them (CI).
pub fn prerequisites() -> bool {
    let checks = [
        (
            "root",
            works(Command::new("sh").args(["-c", "test $(id -u) = 0"])),
        ),
        (
            "docker with skiff.local/netexec",
            works(Command::new("docker").args(["image", "inspect", "skiff.local/netexec:latest"])),
        ),
        (
            "kubectl",
            works(Command::new("kubectl").args(["version", "--client"])),
        ),
        ("iproute2", works(Command::new("ip").args(["-V"]))),
        ("skiff-agent binary", bin_dir().join("skiff-agent").exists()),
        (
            "skiff-controlplane binary",
            bin_dir().join("skiff-controlplane").exists(),
        ),
    ];
    for (what, ok) in checks {
        if !ok {
            assert!(
                std::env::var_os("SKIFF_E2E_REQUIRED").is_none(),
                "{what} is required: run cargo xtask setup && cargo xtask image && cargo build --workspace"
            );
            eprintln!("SKIPPED: {what} is missing (cargo xtask setup && cargo xtask image)");
            return false;
        }
    }
    true
}

/// A fresh cluster with a name no other test uses.
pub fn cluster(nodes: usize, controlplane_flags: &[&str]) -> Cluster {
    cluster_with_mode(nodes, "iptables", controlplane_flags)
}

/// A fresh cluster whose agents run the given service proxy mode.
pub fn cluster_with_mode(nodes: usize, proxy_mode: &str, controlplane_flags: &[&str]) -> Cluster {
    cluster_with(nodes, proxy_mode, controlplane_flags, &[])
}

/// As `cluster_with_mode`, with extra agent flags.
pub fn cluster_with(
    nodes: usize,
    proxy_mode: &str,
    controlplane_flags: &[&str],
    agent_flags: &[&str],
) -> Cluster {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "e{:05x}{}",
        std::process::id() & 0xfffff,
        N.fetch_add(1, Ordering::SeqCst)
    );
    let state = std::env::temp_dir().join(format!("skiff-e2e-{name}"));
    Cluster::up(Spec {
        name,
        nodes,
        proxy_mode: proxy_mode.into(),
        bin_dir: bin_dir(),
        state_dir: state,
        controlplane_flags: controlplane_flags.iter().map(|s| s.to_string()).collect(),
        agent_flags: agent_flags.iter().map(|s| s.to_string()).collect(),
    })
    .unwrap()
}

/// Polls `f` every 250 ms for up to `secs`; on timeout fails with the cluster's logs.
pub fn eventually(c: &Cluster, what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("timed out after {secs} s waiting for {what}\n{}", c.logs());
}

/// As `eventually`, for a check that says why it is not there yet; the last reason is reported.
#[allow(dead_code)]
pub fn eventually_ok(
    c: &Cluster,
    what: &str,
    secs: u64,
    mut f: impl FnMut() -> Result<(), String>,
) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut last = String::new();
    while Instant::now() < deadline {
        match f() {
            Ok(()) => return,
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!(
        "timed out after {secs} s waiting for {what} (last: {last})\n{}",
        c.logs()
    );
}

pub fn json(c: &Cluster, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&c.kubectl(&a).unwrap()).unwrap()
}

/// A pod as the tests need it.
#[derive(Clone, Debug)]
pub struct PodInfo {
    pub name: String,
    pub node: String,
    pub ip: String,
    pub container: String,
    pub ready: bool,
}

pub fn pods(c: &Cluster, selector: &str) -> Vec<PodInfo> {
    let list = json(c, &["get", "pods", "-l", selector]);
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| PodInfo {
            name: p["metadata"]["name"].as_str().unwrap_or_default().into(),
            node: p["spec"]["nodeName"].as_str().unwrap_or_default().into(),
            ip: p["status"]["podIP"].as_str().unwrap_or_default().into(),
            container: p["status"]["containerStatuses"][0]["containerID"]
                .as_str()
                .unwrap_or_default()
                .trim_start_matches("docker://")
                .into(),
            ready: p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True"),
        })
        .collect()
}

/// Runs `sh -c script` inside a pod's container (through Docker, not through skiff).
pub fn in_pod(container: &str, script: &str) -> Result<String, String> {
    let out = Command::new("timeout")
        .args(["20", "docker", "exec", container, "sh", "-c", script])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "{script}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The address of an `ip:port` that netexec reports as the client.
pub fn ip_of(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(ip, _)| ip)
}
