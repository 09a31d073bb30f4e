//! `cargo xtask setup`: makes a fresh machine ready to build, test and run skiff. Idempotent:
//! installs only what is missing and starts dockerd only when no daemon answers.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::sh;

/// Debian packages and a file each provides (checked before installing anything).
const PACKAGES: &[(&str, &str)] = &[
    ("python3-pip", "/usr/bin/pip3"),
    ("docker.io", "/usr/sbin/dockerd"),
    ("busybox-static", "/bin/busybox"),
    ("iproute2", "/usr/sbin/ip"),
    ("iptables", "/usr/sbin/iptables"),
    // The service proxy clears stale UDP conntrack entries with it.
    ("conntrack", "/usr/sbin/conntrack"),
    // Cluster DNS: dig in tests, dnsmasq as the upstream resolver of test clusters, dnsperf
    // for `cargo xtask bench dns`.
    ("bind9-dnsutils", "/usr/bin/dig"),
    ("dnsmasq-base", "/usr/sbin/dnsmasq"),
    ("dnsperf", "/usr/bin/dnsperf"),
    // The eBPF toolchain: bpf-linker links against LLVM 22.
    ("llvm-22-dev", "/usr/lib/llvm-22/bin/llvm-config"),
    ("libpolly-22-dev", "/usr/lib/llvm-22/lib/libPolly.a"),
    // Benchmarks: pod network throughput.
    ("iperf3", "/usr/bin/iperf3"),
    // Tests read the overlay device's offload settings with it.
    ("ethtool", "/usr/sbin/ethtool"),
];

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

fn python_has(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn docker_answers() -> bool {
    Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts dockerd in the background (there is no service manager) and waits for it.
fn start_dockerd() -> Result<()> {
    let log =
        std::fs::File::create("/var/log/skiff-dockerd.log").context("creating the dockerd log")?;
    Command::new("setsid")
        .args(["-f", "dockerd"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .context("starting dockerd")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if docker_answers() {
            eprintln!("setup: dockerd started");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    bail!("dockerd did not come up within 60 s; see /var/log/skiff-dockerd.log")
}

const BPF_LINKER_VERSION: &str = "0.13.0";

/// Nightly's rust-src (build-std) and bpf-linker, for `cargo xtask build-ebpf`.
fn ebpf_toolchain() -> Result<()> {
    if crate::ebpf::toolchain_present() {
        return Ok(());
    }
    // The machine's nightly, not a newer one: the committed object must rebuild byte for byte.
    sh(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "clippy",
        "--toolchain",
        "nightly",
    ]))?;
    if !have("bpf-linker") {
        // The default feature wants LLVM 23, which Debian does not ship; LLVM 22 is.
        sh(Command::new("cargo")
            .args([
                "install",
                "--locked",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_SYS_221_PREFIX", "/usr/lib/llvm-22")
            .env("RUSTFLAGS", "-L /usr/lib/llvm-22/lib"))?;
    }
    Ok(())
}

pub fn run() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, file)| !Path::new(file).exists())
        .map(|(pkg, _)| *pkg)
        .collect();
    if !missing.is_empty() {
        sh(Command::new("apt-get").arg("update").arg("-q"))?;
        sh(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    if !have("kubectl") {
        bail!(
            "kubectl is not installed; install it (e.g. the kubernetes-client or google-cloud-cli kubectl package) and re-run"
        );
    }
    // The official Kubernetes Python client is one of the clients the end-to-end tests use.
    if !python_has("kubernetes") {
        sh(Command::new("python3").args(["-m", "pip", "install", "--quiet", "kubernetes"]))?;
    }
    ebpf_toolchain()?;
    if !docker_answers() {
        start_dockerd()?;
    }
    eprintln!("setup: ready");
    Ok(())
}
