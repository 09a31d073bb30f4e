//! Developer, CI and benchmark tasks: `cargo xtask <command>`.

mod bench;
mod gen_protobuf;
mod setup;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "skiff development tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install system packages and tools the project needs (idempotent).
    Setup,
    /// Everything CI runs: format, lints, unit and end-to-end tests.
    Ci,
    /// Regenerates the protobuf schema table (controlplane/src/api/protobuf/schema.rs) from k8s-pb.
    GenProtobuf,
    /// Benchmarks; results go to target/bench/ as JSON and SVG.
    Bench {
        #[command(subcommand)]
        which: bench::Which,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Setup => setup::run(),
        Cmd::Ci => ci(),
        Cmd::GenProtobuf => gen_protobuf::run(&root()),
        Cmd::Bench { which } => bench::run(which),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs a command in the workspace root, echoing it, failing on a non-zero exit.
pub fn sh(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {cmd:?}");
    let status = cmd
        .current_dir(root())
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn ci() -> Result<()> {
    let started = std::time::Instant::now();
    setup::run()?;
    sh(cargo().args(["fmt", "--all", "--check"]))?;
    gen_protobuf::check(&root())?;
    sh(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The end-to-end tests drive the real binaries, kubectl and the Python client.
    sh(cargo()
        .args(["test", "--workspace", "--no-fail-fast"])
        .env("SKIFF_E2E_REQUIRED", "1"))?;
    eprintln!("ci: all steps passed in {:.0?}", started.elapsed());
    Ok(())
}
