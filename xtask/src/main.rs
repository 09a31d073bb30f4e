//! Developer, CI and benchmark tasks: `cargo xtask <command>`.

mod bench;
mod bench_dns;
mod bench_proxy;
mod cluster;
mod demo;
mod ebpf;
mod gen_protobuf;
mod image;
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
    /// Builds the local container images skiff.local/pause and skiff.local/netexec.
    Image {
        /// Unoptimised binaries (faster to build; what CI uses).
        #[arg(long)]
        debug: bool,
    },
    /// Builds the eBPF service datapath into ebpf/prebuilt/ (nightly, build-std, bpf-linker).
    BuildEbpf {
        /// Only check that the committed object matches its sources (what CI does).
        #[arg(long)]
        check: bool,
    },
    /// Regenerates the protobuf schema table (controlplane/src/api/protobuf/schema.rs) from k8s-pb.
    GenProtobuf,
    /// One command to see skiff run: a local two-node cluster with a sample app.
    Demo,
    /// A local multi-node cluster on this machine (nodes are network namespaces).
    Cluster {
        #[command(subcommand)]
        action: cluster::Action,
    },
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
        Cmd::Image { debug } => setup::run().and_then(|()| image::run(!debug)),
        Cmd::GenProtobuf => gen_protobuf::run(&root()),
        Cmd::BuildEbpf { check: true } => ebpf::check(),
        Cmd::BuildEbpf { check: false } => setup::run().and_then(|()| ebpf::run()),
        Cmd::Demo => demo::run(),
        Cmd::Cluster { action } => cluster::run(action),
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
    ebpf::check()?;
    ebpf::clippy()?;
    // The agent's end-to-end tests run pods from the local images.
    image::run(false)?;
    sh(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The end-to-end tests drive the real binaries, kubectl and the Python client.
    let (passed, failed) = test_counting(
        cargo()
            .args([
                "test",
                "--workspace",
                "--lib",
                "--bins",
                "--tests",
                "--no-fail-fast",
            ])
            .env("SKIFF_E2E_REQUIRED", "1"),
    )?;
    eprintln!("ci: all steps passed in {:.0?}", started.elapsed());
    println!("ci: {passed} passed, {failed} failed");
    Ok(())
}

/// Runs `cargo test`, echoing its output, and adds up the per-binary result lines.
fn test_counting(cmd: &mut Command) -> Result<(u64, u64)> {
    use std::io::{BufRead, BufReader};
    eprintln!("+ {cmd:?}");
    let mut child = cmd
        .current_dir(root())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let (mut passed, mut failed) = (0, 0);
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            println!("{line}");
            // "test result: ok. 12 passed; 0 failed; 0 ignored; ..."
            if let Some(rest) = line.strip_prefix("test result: ") {
                for part in rest.split(';') {
                    let mut words = part.split_whitespace().rev();
                    let (Some(what), Some(n)) = (words.next(), words.next()) else {
                        continue;
                    };
                    let n: u64 = n.parse().unwrap_or(0);
                    match what {
                        "passed" => passed += n,
                        "failed" => failed += n,
                        _ => {}
                    }
                }
            }
        }
    }
    let status = child.wait()?;
    if !status.success() || failed > 0 {
        println!("ci: {passed} passed, {failed} failed");
        bail!("{cmd:?} failed with {status}");
    }
    Ok((passed, failed))
}
