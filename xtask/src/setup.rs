//! `cargo xtask setup`: makes a fresh machine ready to build, test and run skiff.

use std::process::Command;

use anyhow::{Result, bail};

use crate::sh;

/// Debian packages and the command each provides (checked before installing anything).
const PACKAGES: &[(&str, &str)] = &[("python3-pip", "pip3")];

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

fn python_has(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .status()
        .is_ok_and(|s| s.success())
}

pub fn run() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, cmd)| !have(cmd))
        .map(|(pkg, _)| *pkg)
        .collect();
    if !missing.is_empty() {
        sh(Command::new("apt-get").arg("update"))?;
        sh(Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
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
    eprintln!("setup: ready");
    Ok(())
}
