//! `cargo xtask build-ebpf`: builds the service datapath (ebpf/programs, nightly + build-std +
//! bpf-linker) and commits-ready copies it to ebpf/prebuilt/ with the hash of the sources it was
//! built from, so the agent builds on stable alone. `check` (part of `cargo xtask ci`) fails
//! when the prebuilt object no longer matches its sources.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::root;

pub const OBJECT: &str = "ebpf/prebuilt/skiff.bpf.o";
pub const HASH: &str = "ebpf/prebuilt/skiff.bpf.o.sources-sha256";
const TARGET: &str = "bpfel-unknown-none";

/// Every file the object is built from, in a fixed order.
fn sources(root: &Path) -> Result<Vec<PathBuf>> {
    let mut files = vec![
        root.join("ebpf/common/Cargo.toml"),
        root.join("ebpf/programs/Cargo.toml"),
        root.join("ebpf/programs/Cargo.lock"),
    ];
    for dir in ["ebpf/common/src", "ebpf/programs/src"] {
        let mut in_dir: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
            .with_context(|| format!("reading {dir}"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "rs"))
            .collect();
        in_dir.sort();
        files.extend(in_dir);
    }
    Ok(files)
}

/// SHA-256 over the sources' relative paths and contents.
pub fn sources_hash(root: &Path) -> Result<String> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for f in sources(root)? {
        let rel = f.strip_prefix(root).unwrap_or(&f);
        ctx.update(rel.to_string_lossy().as_bytes());
        ctx.update(&[0]);
        ctx.update(&std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?);
        ctx.update(&[0]);
    }
    Ok(ctx
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Whether the eBPF toolchain (nightly with rust-src, bpf-linker) is installed here.
pub fn toolchain_present() -> bool {
    let ok = |cmd: &mut Command| cmd.output().is_ok_and(|o| o.status.success());
    ok(Command::new("bpf-linker").arg("--version"))
        && ok(Command::new("rustup").args(["run", "nightly", "rustc", "--version"]))
        && Command::new("rustup")
            .args(["component", "list", "--toolchain", "nightly", "--installed"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("rust-src"))
}

/// `cargo +nightly <verb>` for the eBPF crate, in its directory, with build-std for the target.
fn nightly(root: &Path, verb: &str) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.args([
        "+nightly",
        verb,
        "--release",
        "-Z",
        "build-std=core",
        "--target",
        TARGET,
    ])
    .current_dir(root.join("ebpf/programs"))
    // xtask runs under the stable toolchain: none of its settings may leak into this build.
    .env_remove("RUSTUP_TOOLCHAIN")
    .env_remove("RUSTC")
    .env_remove("RUSTC_WRAPPER")
    .env_remove("RUSTFLAGS")
    .env_remove("CARGO");
    cmd
}

/// Lints the eBPF crate (its own pass: it builds for another target).
pub fn clippy() -> Result<()> {
    let mut cmd = nightly(&root(), "clippy");
    cmd.args(["--", "-D", "warnings"]);
    eprintln!("+ (in ebpf/programs) {cmd:?}");
    let status = cmd.status().context("running cargo +nightly clippy")?;
    if !status.success() {
        bail!("clippy found problems in ebpf/programs ({status})");
    }
    Ok(())
}

/// Builds the object and returns its bytes.
fn build(root: &Path) -> Result<Vec<u8>> {
    if !toolchain_present() {
        bail!(
            "the eBPF toolchain is missing (nightly with rust-src and bpf-linker); `cargo xtask setup` installs it"
        );
    }
    let mut cmd = nightly(root, "build");
    eprintln!("+ (in ebpf/programs) {cmd:?}");
    let status = cmd.status().context("running cargo +nightly")?;
    if !status.success() {
        bail!("building the eBPF programs failed with {status}");
    }
    let out = root.join(format!("ebpf/programs/target/{TARGET}/release/skiff"));
    std::fs::read(&out).with_context(|| format!("reading {}", out.display()))
}

pub fn run() -> Result<()> {
    let root = root();
    let object = build(&root)?;
    std::fs::write(root.join(OBJECT), &object)?;
    std::fs::write(root.join(HASH), format!("{}\n", sources_hash(&root)?))?;
    eprintln!(
        "build-ebpf: wrote {OBJECT} ({} bytes) and {HASH}",
        object.len()
    );
    Ok(())
}

/// CI: the committed object must come from the committed sources; where the toolchain exists
/// the object is rebuilt and must be identical.
pub fn check() -> Result<()> {
    let root = root();
    let recorded = std::fs::read_to_string(root.join(HASH))
        .with_context(|| format!("reading {HASH}; run cargo xtask build-ebpf"))?;
    let now = sources_hash(&root)?;
    if recorded.trim() != now {
        bail!(
            "{OBJECT} is stale: the eBPF sources changed since it was built; run cargo xtask build-ebpf and commit ebpf/prebuilt/"
        );
    }
    if !toolchain_present() {
        bail!("the eBPF toolchain is missing; `cargo xtask setup` installs it");
    }
    let rebuilt = build(&root)?;
    let committed = std::fs::read(root.join(OBJECT))?;
    if rebuilt != committed {
        bail!(
            "rebuilding the eBPF programs gave a different object than {OBJECT}; run cargo xtask build-ebpf and commit ebpf/prebuilt/"
        );
    }
    eprintln!("build-ebpf: {OBJECT} matches its sources");
    Ok(())
}
