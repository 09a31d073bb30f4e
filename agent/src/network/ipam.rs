//! Pod addresses from the node's podCIDR. One file per address, named by the address and holding
//! the pod's uid (as CNI's host-local plugin does): allocations survive agent restarts, and a
//! file created with `create_new` can never be handed to two pods.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use ipnet::Ipv4Net;
use skiff_common::cidr::nth_addr as nth;

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("no free address left in {0}; delete pods or give the node a larger podCIDR")]
    Exhausted(Ipv4Net),
    #[error("IPAM state in {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The files are the record; `held` mirrors them so the per-second pod sync never reads the
/// directory.
pub struct Ipam {
    dir: PathBuf,
    cidr: Ipv4Net,
    held: Mutex<BTreeMap<Ipv4Addr, String>>,
}

impl Ipam {
    /// State lives under `data_dir/ipam/<network>-<prefix>`, so a node that gets a new podCIDR
    /// starts clean and never hands out an address of the old one.
    pub fn open(data_dir: &Path, cidr: Ipv4Net) -> Result<Self, IpamError> {
        let dir = data_dir
            .join("ipam")
            .join(format!("{}-{}", cidr.network(), cidr.prefix_len()));
        std::fs::create_dir_all(&dir).map_err(|source| IpamError::Io {
            path: dir.clone(),
            source,
        })?;
        let held = read_dir(&dir);
        Ok(Self {
            dir,
            cidr,
            held: Mutex::new(held),
        })
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<Ipv4Addr, String>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The bridge's address: the first host of the podCIDR.
    pub fn gateway(&self) -> Ipv4Addr {
        nth(&self.cidr, 1)
    }

    pub fn cidr(&self) -> Ipv4Net {
        self.cidr
    }

    /// Every address held, with its owner.
    pub fn held(&self) -> Vec<(Ipv4Addr, String)> {
        self.lock()
            .iter()
            .map(|(ip, uid)| (*ip, uid.clone()))
            .collect()
    }

    pub fn lookup(&self, uid: &str) -> Option<Ipv4Addr> {
        self.lock()
            .iter()
            .find_map(|(ip, owner)| (owner == uid).then_some(*ip))
    }

    /// The pod's address: the one it already holds, or the next free one after the last handed
    /// out (so a just-released address is not reused at once, which would confuse peers'
    /// conntrack and caches).
    pub fn allocate(&self, uid: &str) -> Result<Ipv4Addr, IpamError> {
        let mut held = self.lock();
        if let Some(ip) = held
            .iter()
            .find_map(|(ip, owner)| (owner == uid).then_some(*ip))
        {
            return Ok(ip);
        }
        let last_file = self.dir.join("last");
        let last: Option<Ipv4Addr> = std::fs::read_to_string(&last_file)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        // Hosts are .2 ..= broadcast-1: .0 is the overlay device's, .1 the bridge's.
        let size = 1u32 << (32 - self.cidr.prefix_len());
        let first = 2u32;
        let count = size.saturating_sub(3);
        let start = last.filter(|ip| self.cidr.contains(ip)).map_or(0, |ip| {
            (u32::from(ip) - u32::from(self.cidr.network())).saturating_sub(first) + 1
        });
        for i in 0..count {
            let ip = nth(&self.cidr, first + (start + i) % count);
            let path = self.dir.join(ip.to_string());
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    use std::io::Write;
                    f.write_all(uid.as_bytes())
                        .map_err(|source| IpamError::Io { path, source })?;
                    let _ = std::fs::write(&last_file, ip.to_string());
                    held.insert(ip, uid.to_owned());
                    return Ok(ip);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(source) => return Err(IpamError::Io { path, source }),
            }
        }
        Err(IpamError::Exhausted(self.cidr))
    }

    /// Frees every address `uid` holds.
    pub fn release(&self, uid: &str) {
        self.lock().retain(|ip, owner| {
            if owner == uid {
                let _ = std::fs::remove_file(self.dir.join(ip.to_string()));
            }
            owner != uid
        });
    }
}

/// The allocations recorded in `dir`: files named by an address, holding the owner's uid.
fn read_dir(dir: &Path) -> BTreeMap<Ipv4Addr, String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let ip: Ipv4Addr = e.file_name().to_str()?.parse().ok()?;
            let owner = std::fs::read_to_string(e.path()).ok()?;
            Some((ip, owner.trim().to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ipam(dir: &Path, cidr: &str) -> Ipam {
        Ipam::open(dir, cidr.parse().unwrap()).unwrap()
    }

    #[test]
    fn addresses_are_unique_stable_per_pod_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let a = ipam(dir.path(), "10.244.1.0/24");
        assert_eq!(a.gateway(), "10.244.1.1".parse::<Ipv4Addr>().unwrap());
        let p1 = a.allocate("uid-1").unwrap();
        let p2 = a.allocate("uid-2").unwrap();
        assert_eq!(p1, "10.244.1.2".parse::<Ipv4Addr>().unwrap());
        assert_ne!(p1, p2);
        assert_eq!(a.allocate("uid-1").unwrap(), p1, "same pod, same address");
        // A new agent process reads the same state.
        let b = ipam(dir.path(), "10.244.1.0/24");
        assert_eq!(b.lookup("uid-2"), Some(p2));
        assert_eq!(b.allocate("uid-2").unwrap(), p2);
    }

    #[test]
    fn released_addresses_are_reused_only_after_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let a = ipam(dir.path(), "10.0.0.0/29"); // hosts .2 ..= .6
        let ips: Vec<_> = (0..5)
            .map(|i| a.allocate(&format!("u{i}")).unwrap())
            .collect();
        assert_eq!(ips.last().unwrap().octets()[3], 6);
        assert!(matches!(a.allocate("u5"), Err(IpamError::Exhausted(_))));
        a.release("u1");
        assert_eq!(a.lookup("u1"), None);
        assert_eq!(a.allocate("u6").unwrap(), ips[1], "the only free address");
        a.release("u2");
        a.release("u0");
        // Next after the last handed out (.3) is .4 (u2's), not .2.
        assert_eq!(a.allocate("u7").unwrap(), ips[2]);
    }

    #[test]
    fn a_new_pod_cidr_starts_from_a_clean_state() {
        let dir = tempfile::tempdir().unwrap();
        let a = ipam(dir.path(), "10.244.1.0/24");
        a.allocate("uid-1").unwrap();
        let b = ipam(dir.path(), "10.244.7.0/24");
        assert_eq!(b.lookup("uid-1"), None);
        assert_eq!(
            b.allocate("uid-1").unwrap(),
            "10.244.7.2".parse::<Ipv4Addr>().unwrap()
        );
    }
}
