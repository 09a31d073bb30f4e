//! `cargo xtask cluster up|down|status`: local clusters whose state lives under
//! target/cluster/<name>.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Subcommand, ValueEnum};
use skiff_e2e::cluster::{Cluster, Spec};

use crate::{cargo, root, sh};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ProxyMode {
    Iptables,
    Ebpf,
}

impl ProxyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Iptables => "iptables",
            Self::Ebpf => "ebpf",
        }
    }
}

#[derive(Subcommand)]
pub enum Action {
    /// Builds (release), then starts a controlplane and one agent per node; prints KUBECONFIG=<path>.
    Up {
        #[arg(long, default_value = "skiff")]
        name: String,
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        #[arg(long, value_enum, default_value = "iptables")]
        proxy_mode: ProxyMode,
    },
    /// Stops every process and removes every namespace, link and container of the cluster.
    Down {
        #[arg(long, default_value = "skiff")]
        name: String,
        /// The cluster's state directory, for clusters kept by a failed test (SKIFF_E2E_KEEP=1).
        #[arg(long, value_name = "DIR")]
        state: Option<PathBuf>,
    },
    /// Processes of the cluster and whether they run.
    Status {
        #[arg(long, default_value = "skiff")]
        name: String,
    },
}

pub fn state_dir(name: &str) -> PathBuf {
    root().join("target/cluster").join(name)
}

pub fn run(action: Action) -> Result<()> {
    match action {
        Action::Up {
            name,
            nodes,
            proxy_mode,
        } => {
            let c = up(&name, nodes, proxy_mode)?;
            println!("KUBECONFIG={}", c.kubeconfig.display());
            c.detach();
            Ok(())
        }
        Action::Down { name, state } => {
            skiff_e2e::cluster::down(&state.unwrap_or_else(|| state_dir(&name)))
        }
        Action::Status { name } => {
            print!("{}", skiff_e2e::cluster::status(&state_dir(&name))?);
            Ok(())
        }
    }
}

/// Installs what is missing, builds release binaries and images, and brings the cluster up.
pub fn up(name: &str, nodes: usize, mode: ProxyMode) -> Result<Cluster> {
    up_with(name, &vec![mode; nodes], &[])
}

/// A cluster for the demo and the benchmarks: one left by an earlier run under the same name
/// is removed first.
pub fn fresh(name: &str, nodes: usize, mode: ProxyMode, agent_flags: &[&str]) -> Result<Cluster> {
    fresh_modes(name, &vec![mode; nodes], agent_flags)
}

/// As `fresh`, one node per entry of `modes`, each running its proxy mode.
pub fn fresh_modes(name: &str, modes: &[ProxyMode], agent_flags: &[&str]) -> Result<Cluster> {
    if state_dir(name).join("cluster.json").exists() {
        eprintln!("removing the previous cluster {name}");
        skiff_e2e::cluster::down(&state_dir(name))?;
    }
    up_with(name, modes, agent_flags)
}

fn up_with(name: &str, modes: &[ProxyMode], agent_flags: &[&str]) -> Result<Cluster> {
    crate::setup::run()?;
    sh(cargo().args([
        "build",
        "--release",
        "-p",
        "skiff-controlplane",
        "-p",
        "skiff-agent",
    ]))?;
    crate::image::run(true)?;
    let mode: Vec<&str> = modes.iter().map(|m| m.as_str()).collect();
    Cluster::up(Spec {
        name: name.to_owned(),
        nodes: modes.len(),
        proxy_mode: mode.join(","),
        bin_dir: root().join("target/release"),
        state_dir: state_dir(name),
        controlplane_flags: Vec::new(),
        agent_flags: agent_flags.iter().map(|s| (*s).to_owned()).collect(),
    })
}
