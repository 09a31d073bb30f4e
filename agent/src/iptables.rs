//! Which iptables the agent drives, and running it. Both the pod-network rules and the service
//! proxy use the same backend so that one table holds all of skiff's rules.
//!
//! Legacy is preferred when present: at 10,000 services a legacy restore replaces the whole nat
//! table (about 0.4 s, whatever it changes) but loads all of it in about 1.5 s; an nf_tables
//! commit validates the whole table (60-100 ms at 10,000 services, so a full sync in slices
//! takes about 6 s). See docs/benchmarks.md.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error("cannot run {0}: {1}; install iptables (cargo xtask setup does)")]
    Spawn(&'static str, std::io::Error),
    #[error("{0} failed: {1}")]
    Failed(&'static str, String),
    #[error("iptables backend {0} is not installed (no {1}); pick another with --iptables-backend")]
    Missing(&'static str, &'static str),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// Legacy when installed, else nf_tables.
    Auto,
    Legacy,
    Nft,
}

/// The three programs of one iptables backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Iptables {
    pub iptables: &'static str,
    pub restore: &'static str,
    pub save: &'static str,
}

pub const LEGACY: Iptables = Iptables {
    iptables: "iptables-legacy",
    restore: "iptables-legacy-restore",
    save: "iptables-legacy-save",
};
pub const NFT: Iptables = Iptables {
    iptables: "iptables-nft",
    restore: "iptables-nft-restore",
    save: "iptables-nft-save",
};

fn installed(program: &str) -> bool {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .any(|d| Path::new(d).join(program).exists())
}

impl Iptables {
    pub fn select(backend: Backend) -> Result<Self, IptablesError> {
        match backend {
            Backend::Legacy if !installed(LEGACY.restore) => {
                Err(IptablesError::Missing("legacy", LEGACY.restore))
            }
            Backend::Legacy => Ok(LEGACY),
            Backend::Nft if !installed(NFT.restore) => {
                Err(IptablesError::Missing("nft", NFT.restore))
            }
            Backend::Nft => Ok(NFT),
            Backend::Auto if installed(LEGACY.restore) => Ok(LEGACY),
            Backend::Auto => Ok(NFT),
        }
    }

    /// The nf_tables backend, whose restores the proxy keeps small (see docs/benchmarks.md).
    pub fn is_nft(&self) -> bool {
        *self == NFT
    }

    /// `iptables -w 5 ARGS`; Ok(false) when the command ran and failed (as `-C` does for a
    /// missing rule).
    pub fn run(&self, args: &[&str]) -> Result<bool, IptablesError> {
        let out = Command::new(self.iptables)
            .args(["-w", "5"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| IptablesError::Spawn(self.iptables, e))?;
        Ok(out.success())
    }

    /// Feeds `input` to `iptables-restore --noflush`, which replaces only the chains it declares,
    /// all in one transaction.
    pub fn restore(&self, input: &str) -> Result<(), IptablesError> {
        let mut child = Command::new(self.restore)
            .args(["--noflush", "-w", "5"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| IptablesError::Spawn(self.restore, e))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A write error shows up as the program's failure below.
            let _ = stdin.write_all(input.as_bytes());
        }
        let out = child
            .wait_with_output()
            .map_err(|e| IptablesError::Spawn(self.restore, e))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(IptablesError::Failed(
                self.restore,
                String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            ))
        }
    }

    /// `iptables-save -t TABLE`.
    pub fn save(&self, table: &str) -> Result<String, IptablesError> {
        let out = Command::new(self.save)
            .args(["-t", table])
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| IptablesError::Spawn(self.save, e))?;
        if !out.status.success() {
            return Err(IptablesError::Failed(
                self.save,
                String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
