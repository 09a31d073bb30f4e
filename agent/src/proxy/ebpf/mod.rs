//! The eBPF service datapath's user-space half: loads the prebuilt programs
//! (ebpf/prebuilt/skiff.bpf.o, built by `cargo xtask build-ebpf`), keeps their maps pinned under
//! `/sys/fs/bpf/skiff/<node>` and attaches them with tcx to the host end of pod veths, each
//! link pinned too. A restarted agent reopens the pinned maps (connections keep their tracked
//! backends) and replaces the programs in the pinned links atomically: the datapath never stops.

pub mod proxier;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use skiff_ebpf_common::{Backend, BackendKey, ServiceKey, ServiceValue};

/// The datapath object; the agent builds on stable because it is committed.
static OBJECT: &[u8] = aya::include_bytes_aligned!("../../../../ebpf/prebuilt/skiff.bpf.o");

const FROM_POD: &str = "skiff_from_pod";
const TO_POD: &str = "skiff_to_pod";
const BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error("mounting bpffs on {BPFFS}: {0}; mount it by hand (mount -t bpf bpf {BPFFS})")]
    Mount(nix::Error),
    #[error("loading the eBPF datapath: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program {0}: {1}")]
    Program(&'static str, aya::programs::ProgramError),
    #[error("eBPF map {0}: {1}")]
    Map(&'static str, aya::maps::MapError),
    #[error("pinning the link of {0}: {1}")]
    Pin(String, String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Map sizes (Cilium's defaults: 64k services, 512k tracked connections).
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    pub services: u32,
    pub backends: u32,
    pub conntrack: u32,
}

impl Default for Sizes {
    fn default() -> Self {
        Self {
            services: 65_536,
            backends: 262_144,
            conntrack: 524_288,
        }
    }
}

/// Datapath counters (summed over CPUs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub translated: u64,
    pub replies: u64,
    pub dropped_no_backend: u64,
}

pub struct Datapath {
    bpf: aya::Ebpf,
    links: PathBuf,
}

/// Mounts bpffs where the kernel expects it, when nothing is mounted there yet.
fn ensure_bpffs() -> Result<(), EbpfError> {
    if nix::sys::statfs::statfs(BPFFS).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC) {
        return Ok(());
    }
    std::fs::create_dir_all(BPFFS)?;
    nix::mount::mount(
        Some("bpf"),
        BPFFS,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(EbpfError::Mount)
}

/// `a.b.c.d` as it sits in a packet.
pub fn wire_addr(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

pub fn wire_port(port: u16) -> u16 {
    port.to_be()
}

/// One of the object's tc programs.
fn classifier<'a>(
    bpf: &'a mut aya::Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, EbpfError> {
    bpf.program_mut(name)
        .ok_or(EbpfError::Program(
            name,
            aya::programs::ProgramError::NotLoaded,
        ))?
        .try_into()
        .map_err(|e| EbpfError::Program(name, e))
}

impl Datapath {
    /// Loads the programs with their maps pinned under `pins` (reused when already there).
    pub fn load(pins: &Path, sizes: Sizes) -> Result<Self, EbpfError> {
        ensure_bpffs()?;
        std::fs::create_dir_all(pins.join("links"))?;
        let mut bpf = aya::EbpfLoader::new()
            .default_map_pin_directory(pins)
            .map_max_entries("SERVICES", sizes.services)
            .map_max_entries("BACKENDS", sizes.backends)
            .map_max_entries("CT", sizes.conntrack)
            .load(OBJECT)?;
        for name in [FROM_POD, TO_POD] {
            classifier(&mut bpf, name)?
                .load()
                .map_err(|e| EbpfError::Program(name, e))?;
        }
        Ok(Self {
            bpf,
            links: pins.join("links"),
        })
    }

    /// Attaches both programs to a pod's host-side interface (in this thread's network
    /// namespace); idempotent, and a link left by an earlier agent gets the new programs.
    pub fn attach(&mut self, ifname: &str) -> Result<(), EbpfError> {
        let index = nix::net::if_::if_nametoindex(ifname)
            .map_err(|e| EbpfError::Io(std::io::Error::from(e)))?;
        for (name, hook, dir) in [
            (FROM_POD, TcAttachType::Ingress, "ingress"),
            (TO_POD, TcAttachType::Egress, "egress"),
        ] {
            // The interface index is in the name: a re-created interface of the same name is a
            // new attachment, never the dead link of the old one.
            let pin = self.links.join(format!("{ifname}-{index}-{dir}"));
            let prog = classifier(&mut self.bpf, name)?;
            let id = match PinnedLink::from_pin(&pin) {
                Ok(old) => {
                    let link: SchedClassifierLink = FdLink::from(old).try_into().map_err(
                        |e: aya::programs::links::LinkError| {
                            EbpfError::Pin(ifname.into(), e.to_string())
                        },
                    )?;
                    prog.attach_to_link(link)
                        .map_err(|e| EbpfError::Program(name, e))?
                }
                Err(_) => prog
                    .attach_with_options(
                        ifname,
                        hook,
                        TcAttachOptions::TcxOrder(LinkOrder::default()),
                    )
                    .map_err(|e| EbpfError::Program(name, e))?,
            };
            let link = prog
                .take_link(id)
                .map_err(|e| EbpfError::Program(name, e))?;
            let fd: FdLink = link
                .try_into()
                .map_err(|e: aya::programs::links::LinkError| {
                    EbpfError::Pin(ifname.into(), e.to_string())
                })?;
            if !pin.exists() {
                fd.pin(&pin)
                    .map_err(|e| EbpfError::Pin(ifname.into(), e.to_string()))?;
            }
            // Dropping `fd` closes our handle only: the pin keeps the program attached.
        }
        Ok(())
    }

    /// One of the object's hash maps, typed.
    fn hash_map<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<BpfHashMap<&mut MapData, K, V>, EbpfError> {
        let map = self.bpf.map_mut(name).ok_or(EbpfError::Map(
            name,
            aya::maps::MapError::InvalidName { name: name.into() },
        ))?;
        BpfHashMap::try_from(map).map_err(|e| EbpfError::Map(name, e))
    }

    fn services(
        &mut self,
    ) -> Result<BpfHashMap<&mut MapData, ServiceKey, ServiceValue>, EbpfError> {
        self.hash_map("SERVICES")
    }

    fn backends(&mut self) -> Result<BpfHashMap<&mut MapData, BackendKey, Backend>, EbpfError> {
        self.hash_map("BACKENDS")
    }

    /// Programs one frontend: backends first (slots `0..n` of `id`), then the frontend, so a
    /// packet never sees a count larger than the slots written.
    pub fn set_service(
        &mut self,
        frontend: ServiceKey,
        id: u32,
        backends: &[(Ipv4Addr, u16)],
    ) -> Result<(), EbpfError> {
        let mut map = self.backends()?;
        for (slot, (ip, port)) in backends.iter().enumerate() {
            let key = BackendKey {
                id,
                slot: slot as u32,
            };
            let value = Backend {
                addr: wire_addr(*ip),
                port: wire_port(*port),
                _pad: 0,
            };
            map.insert(key, value, 0)
                .map_err(|e| EbpfError::Map("BACKENDS", e))?;
        }
        let count = u16::try_from(backends.len()).unwrap_or(u16::MAX);
        let value = ServiceValue {
            id,
            count,
            flags: 0,
        };
        self.services()?
            .insert(frontend, value, 0)
            .map_err(|e| EbpfError::Map("SERVICES", e))
    }

    /// Removes a frontend, then the backend slots `0..slots` of its id.
    pub fn remove_service(
        &mut self,
        frontend: ServiceKey,
        id: u32,
        slots: u32,
    ) -> Result<(), EbpfError> {
        // Missing entries are fine: the goal is their absence.
        let _ = self.services()?.remove(&frontend);
        self.trim_backends(id, 0, slots)
    }

    /// Removes backend slots `from..to` of `id` (after a service shrank).
    pub fn trim_backends(&mut self, id: u32, from: u32, to: u32) -> Result<(), EbpfError> {
        let mut map = self.backends()?;
        for slot in from..to {
            let _ = map.remove(&BackendKey { id, slot });
        }
        Ok(())
    }

    /// Every frontend in the map (what an earlier agent may have left).
    pub fn frontends(&mut self) -> Result<Vec<(ServiceKey, ServiceValue)>, EbpfError> {
        Ok(self.services()?.iter().filter_map(Result::ok).collect())
    }

    pub fn stats(&self) -> Result<Stats, EbpfError> {
        let map = self.bpf.map("STATS").ok_or(EbpfError::Map(
            "STATS",
            aya::maps::MapError::InvalidName {
                name: "STATS".into(),
            },
        ))?;
        let arr: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(|e| EbpfError::Map("STATS", e))?;
        let sum = |slot: u32| -> Result<u64, EbpfError> {
            Ok(arr
                .get(&slot, 0)
                .map_err(|e| EbpfError::Map("STATS", e))?
                .iter()
                .sum())
        };
        Ok(Stats {
            translated: sum(skiff_ebpf_common::STAT_TRANSLATED)?,
            replies: sum(skiff_ebpf_common::STAT_REPLIES)?,
            dropped_no_backend: sum(skiff_ebpf_common::STAT_DROP_NO_BACKEND)?,
        })
    }
}
