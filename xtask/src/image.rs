//! `cargo xtask image`: the local container images, built from the project's own static
//! binaries plus busybox (no registry is needed or reachable).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use crate::{cargo, root, sh};

const TARGET: &str = "x86_64-unknown-linux-gnu";
/// Applets linked into the images. Debian's static busybox crashes on `wget -T`: bound a fetch
/// with `timeout N wget ...` instead.
const BUSYBOX_TOOLS: &[&str] = &[
    "sh", "wget", "timeout", "nslookup", "cat", "ls", "sleep", "ip", "ping", "nc", "hostname",
    "echo", "env", "ps", "kill", "grep",
];

/// The machine's own glibc `getent`, with the libraries it loads: busybox has none, and tests
/// resolve names in pods the way glibc programs do (resolv.conf search list, ndots).
const HOST_GETENT: &str = "/usr/bin/getent";

/// `getent` and its shared libraries (paths as `ldd` reports them), each at the same path.
fn getent_files() -> Result<Vec<std::path::PathBuf>> {
    let out = Command::new("ldd")
        .arg(HOST_GETENT)
        .output()
        .context("running ldd on /usr/bin/getent (libc-bin)")?;
    let mut files = vec![std::path::PathBuf::from(HOST_GETENT)];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = line
            .split("=>")
            .last()
            .unwrap_or_default()
            .split_whitespace()
            .next();
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            files.push(p.into());
        }
    }
    Ok(files)
}

/// Writes a rootfs with `/bin/busybox` (+ applet links) and the given binaries, and imports it.
fn import(tag: &str, cmd: &str, binaries: &[(&Path, &str)]) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let rootfs = dir.path().join("rootfs");
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev"] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
        .context("copying /bin/busybox (install busybox-static: cargo xtask setup)")?;
    for tool in BUSYBOX_TOOLS {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(tool))?;
    }
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
    )?;
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\nnobody:x:65534:\n")?;
    for f in getent_files()? {
        let dest = rootfs.join(f.strip_prefix("/").unwrap_or(&f));
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(&f, &dest).with_context(|| format!("copying {}", f.display()))?;
    }
    std::os::unix::fs::symlink(HOST_GETENT, rootfs.join("bin/getent"))?;
    std::fs::write(rootfs.join("etc/nsswitch.conf"), "hosts: files dns\n")?;
    for (src, name) in binaries {
        std::fs::copy(src, rootfs.join(name))
            .with_context(|| format!("copying {}", src.display()))?;
    }

    let tar = dir.path().join("rootfs.tar");
    sh(Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg("."))?;
    sh(Command::new("docker")
        .args([
            "import",
            "--change",
            &format!("CMD [\"{cmd}\"]"),
            "--change",
            "ENV PATH=/bin",
        ])
        .arg(&tar)
        .arg(tag))
}

/// Builds the images; `release` false is the faster unoptimised build CI uses.
pub fn run(release: bool) -> Result<()> {
    // Static glibc binaries: the images carry no libc.
    let mut build = cargo();
    build.args(["build", "-p", "skiff-images", "--target", TARGET]);
    if release {
        build.arg("--release");
    }
    sh(build.env("RUSTFLAGS", "-C target-feature=+crt-static"))?;
    let profile = if release { "release" } else { "debug" };
    let out = root().join("target").join(TARGET).join(profile);
    let (pause, netexec) = (out.join("pause"), out.join("netexec"));
    import("skiff.local/pause:latest", "/pause", &[(&pause, "pause")])?;
    import(
        "skiff.local/netexec:latest",
        "/netexec",
        &[(&netexec, "netexec"), (&pause, "pause")],
    )?;
    eprintln!("image: built skiff.local/pause:latest and skiff.local/netexec:latest");
    Ok(())
}
