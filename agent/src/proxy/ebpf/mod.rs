//! The eBPF service datapath's user-space half: loads the prebuilt programs
//! (ebpf/prebuilt/skiff.bpf.o, built by `cargo xtask build-ebpf`), keeps their maps pinned under
//! `/sys/fs/bpf/skiff/<node>` and attaches them with tcx to the host end of pod veths and to the
//! uplink, and to the root cgroup for the node's own sockets, each link pinned too. A restarted
//! agent reopens the pinned maps (connections keep their tracked backends) and replaces the
//! programs in the pinned links atomically: the datapath never stops.

pub mod maglev;
pub mod proxier;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{CgroupAttachMode, CgroupSockAddr, LinkOrder, SchedClassifier, TcAttachType};
use skiff_ebpf_common::{
    Backend, BackendKey, CT_NAT_DST, CT_REPLY, CtKey, CtValue, LocalPod, MAGLEV_M, MaglevTable,
    NodeConfig, ServiceKey, ServiceValue,
};

/// The datapath object; the agent builds on stable because it is committed.
static OBJECT: &[u8] = aya::include_bytes_aligned!("../../../../ebpf/prebuilt/skiff.bpf.o");

const FROM_POD: &str = "skiff_from_pod";
const TO_POD: &str = "skiff_to_pod";
const FROM_WORLD: &str = "skiff_from_world";
const FROM_OVERLAY: &str = "skiff_from_overlay";
/// The socket programs, each with the name of its link's pin.
const SOCKET_PROGRAMS: [(&str, &str); 4] = [
    ("skiff_sock_connect4", "cgroup-connect4"),
    ("skiff_sock_sendmsg4", "cgroup-sendmsg4"),
    ("skiff_sock_recvmsg4", "cgroup-recvmsg4"),
    ("skiff_sock_getpeername4", "cgroup-getpeername4"),
];
const BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error("mounting bpffs on {BPFFS}: {0}; mount it by hand (mount -t bpf bpf {BPFFS})")]
    Mount(nix::Error),
    #[error("{} is not on a bpf filesystem; mount one (mount -t bpf bpf DIR) or pick a --bpf-dir on one", .0.display())]
    NotBpffs(PathBuf),
    #[error("loading the eBPF datapath: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program {0}: {1}{cause}", cause = cause(.1))]
    Program(&'static str, aya::programs::ProgramError),
    #[error("eBPF map {0}: {1}")]
    Map(&'static str, aya::maps::MapError),
    #[error("pinning the link of {0}: {1}")]
    Pin(String, String),
    #[error(
        "no cgroup v2 hierarchy to attach the node's socket program to ({0}); mount one (mount -t cgroup2 none /sys/fs/cgroup/unified)"
    )]
    Cgroup(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The underlying error (the kernel's answer to a failed call), when there is one.
fn cause(e: &dyn std::error::Error) -> String {
    e.source().map(|s| format!(": {s}")).unwrap_or_default()
}

/// Map sizes (Cilium's defaults: 64k services, 512k tracked connections).
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    pub services: u32,
    pub backends: u32,
    pub conntrack: u32,
    pub affinity: u32,
}

impl Sizes {
    /// The entries of the maps these sizes are for, by name, and of the counters' array,
    /// which grows with new counters.
    fn per_map(self) -> [(&'static str, u32); 6] {
        [
            ("SERVICES", self.services),
            ("BACKENDS", self.backends),
            ("CT", self.conntrack),
            ("AFFINITY", self.affinity),
            ("MAGLEV", self.services),
            ("STATS", skiff_ebpf_common::STAT_SLOTS),
        ]
    }
}

impl Default for Sizes {
    fn default() -> Self {
        Self {
            services: 65_536,
            backends: 262_144,
            conntrack: 524_288,
            affinity: 65_536,
        }
    }
}

/// Datapath counters (summed over CPUs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub translated: u64,
    pub replies: u64,
    pub dropped_no_backend: u64,
    pub no_endpoints: u64,
    pub fib_miss: u64,
    pub sock_translated: u64,
    pub dropped_error: u64,
    pub stale: u64,
    pub into_pod: u64,
}

pub struct Datapath {
    bpf: aya::Ebpf,
    links: PathBuf,
    /// What `CONFIG` holds.
    config: NodeConfig,
}

fn is_bpffs(dir: &Path) -> bool {
    nix::sys::statfs::statfs(dir).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}

/// Makes sure `pins` can live on a bpf filesystem: under /sys/fs/bpf one is mounted when
/// missing; anywhere else one must be there already.
fn ensure_bpffs(pins: &Path) -> Result<(), EbpfError> {
    let existing = pins
        .ancestors()
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"));
    if is_bpffs(existing) {
        return Ok(());
    }
    if !pins.starts_with(BPFFS) {
        return Err(EbpfError::NotBpffs(pins.to_owned()));
    }
    std::fs::create_dir_all(BPFFS)?;
    mount("bpf", Path::new(BPFFS)).map_err(EbpfError::Mount)
}

/// Mounts a fresh instance of the filesystem `kind` on `dir`.
fn mount(kind: &str, dir: &Path) -> Result<(), nix::Error> {
    nix::mount::mount(
        Some(kind),
        dir,
        Some(kind),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
}

/// `a.b.c.d` as it sits in a packet.
pub fn wire_addr(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

pub fn wire_port(port: u16) -> u16 {
    port.to_be()
}

/// Where the cgroup v2 hierarchy is mounted (mounting it privately when nothing is: `ip netns
/// exec` hides the host's /sys mounts, and any mount of it is the same hierarchy).
fn cgroup2_root() -> Result<PathBuf, EbpfError> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    if let Some(dir) = mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, dir, kind) = (f.next()?, f.next()?, f.next()?);
        (kind == "cgroup2").then(|| PathBuf::from(dir))
    }) {
        return Ok(dir);
    }
    let dir = PathBuf::from("/run/skiff/cgroup2");
    std::fs::create_dir_all(&dir)?;
    mount("cgroup2", &dir).map_err(|e| EbpfError::Cgroup(e.to_string()))?;
    Ok(dir)
}

/// One of the object's tc programs.
fn classifier<'a>(
    bpf: &'a mut aya::Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, EbpfError> {
    program(bpf, name)
}

/// The name of the interface at `index` in this thread's network namespace; None when there is
/// none (for a free index the call may also answer with an empty name).
fn interface_name(index: u32) -> Option<String> {
    let name = nix::net::if_::if_indextoname(index).ok()?;
    let name = name.to_string_lossy();
    (!name.is_empty()).then(|| name.into_owned())
}

/// An interface name as a pin's name: bpffs refuses names with a dot (`skiff.vxlan`).
fn pin_escape(ifname: &str) -> String {
    ifname.replace('%', "%25").replace('.', "%2e")
}

/// One of the object's programs, as its kind.
fn program<'a, T>(bpf: &'a mut aya::Ebpf, name: &'static str) -> Result<&'a mut T, EbpfError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
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
        ensure_bpffs(pins)?;
        std::fs::create_dir_all(pins.join("links"))?;
        replace_incompatible_pins(pins, sizes)?;
        let mut loader = aya::EbpfLoader::new();
        loader.default_map_pin_directory(pins);
        for (name, entries) in sizes.per_map() {
            loader.map_max_entries(name, entries);
        }
        let mut bpf = loader.load(OBJECT)?;
        for name in [FROM_POD, TO_POD, FROM_WORLD, FROM_OVERLAY] {
            classifier(&mut bpf, name)?
                .load()
                .map_err(|e| EbpfError::Program(name, e))?;
        }
        for (name, _) in SOCKET_PROGRAMS {
            program::<CgroupSockAddr>(&mut bpf, name)?
                .load()
                .map_err(|e| EbpfError::Program(name, e))?;
        }
        // What an earlier agent set stays in force (host routing above all) until this one
        // has set it anew.
        let config = bpf
            .map("CONFIG")
            .and_then(|m| Array::<_, NodeConfig>::try_from(m).ok())
            .and_then(|a| a.get(&0, 0).ok())
            .unwrap_or_default();
        Ok(Self {
            bpf,
            links: pins.join("links"),
            config,
        })
    }

    /// Attaches both pod programs to a pod's host-side interface (in this thread's network
    /// namespace); idempotent, and a link left by an earlier agent gets the new programs.
    pub fn attach(&mut self, ifname: &str) -> Result<(), EbpfError> {
        self.attach_tc(
            ifname,
            &[
                (FROM_POD, TcAttachType::Ingress, "ingress"),
                (TO_POD, TcAttachType::Egress, "egress"),
            ],
        )
    }

    /// Unpins the links of interfaces that are gone (a deleted pod's veth): the kernel has
    /// detached them already, only the pin is left. Pods whose veth is gone are forgotten too.
    pub fn forget_gone_links(&mut self) -> Result<usize, EbpfError> {
        let mut pods: BpfHashMap<&mut MapData, u32, LocalPod> = self.hash_map("LOCAL_PODS")?;
        let gone: Vec<u32> = pods
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, pod)| interface_name(pod.ifindex).is_none())
            .map(|(ip, _)| ip)
            .collect();
        for ip in gone {
            let _ = pods.remove(&ip);
        }
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.links)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // `<ifname>-<ifindex>-<hook>`; interface names may hold dashes themselves.
            let mut parts = name.rsplitn(3, '-');
            let (Some(_hook), Some(index), Some(ifname)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let Ok(index) = index.parse::<u32>() else {
                continue;
            };
            // Gone unless the interface at that index still has that name.
            if interface_name(index).is_none_or(|n| pin_escape(&n) != ifname) {
                std::fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Attaches the NodePort / external-IP program to the node's uplink.
    pub fn attach_uplink(&mut self, ifname: &str) -> Result<(), EbpfError> {
        self.attach_tc(ifname, &[(FROM_WORLD, TcAttachType::Ingress, "ingress")])
    }

    /// Host routing through the overlay device `ifname` (index `index`), this node's pods
    /// being `pod_cidr`: its ingress program takes arriving pod traffic to the bridge, and the
    /// pod programs send pod traffic for other nodes to it.
    pub fn attach_overlay(
        &mut self,
        ifname: &str,
        index: u32,
        pod_cidr: ipnet::Ipv4Net,
    ) -> Result<(), EbpfError> {
        self.attach_tc(ifname, &[(FROM_OVERLAY, TcAttachType::Ingress, "ingress")])?;
        self.write_config(NodeConfig {
            local_net: wire_addr(pod_cidr.network()),
            local_mask: wire_addr(pod_cidr.netmask()),
            overlay_ifindex: index,
            ..self.config
        })
    }

    fn attach_tc(
        &mut self,
        ifname: &str,
        hooks: &[(&'static str, TcAttachType, &str)],
    ) -> Result<(), EbpfError> {
        let index = nix::net::if_::if_nametoindex(ifname)
            .map_err(|e| EbpfError::Io(std::io::Error::from(e)))?;
        for &(name, hook, dir) in hooks {
            // The interface index is in the name: a re-created interface of the same name is a
            // new attachment, never the dead link of the old one.
            let pin = self
                .links
                .join(format!("{}-{index}-{dir}", pin_escape(ifname)));
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

    /// Attaches the socket programs to the root of the cgroup v2 hierarchy, where they see
    /// every socket of the machine and act on those of this node's namespace (its cookie is in
    /// `CONFIG`). A link from an earlier agent is replaced after the new one is in place, so
    /// the node's connects are translated throughout.
    pub fn attach_sockets(&mut self) -> Result<(), EbpfError> {
        let root = cgroup2_root()?;
        let dir = std::fs::File::open(&root)?;
        for (name, pin) in SOCKET_PROGRAMS {
            let prog = program::<CgroupSockAddr>(&mut self.bpf, name)?;
            let id = prog
                // A bpf_link takes no flags: links always share their cgroup with others.
                .attach(&dir, CgroupAttachMode::Single)
                .map_err(|e| EbpfError::Program(name, e))?;
            let link: FdLink = prog
                .take_link(id)
                .map_err(|e| EbpfError::Program(name, e))?
                .try_into()
                .map_err(|e: aya::programs::links::LinkError| {
                    EbpfError::Pin("cgroup".into(), e.to_string())
                })?;
            let pin = self.links.join(pin);
            let fresh = pin.with_file_name(format!("{}-new", pin.display()));
            let _ = std::fs::remove_file(&fresh);
            link.pin(&fresh)
                .map_err(|e| EbpfError::Pin("cgroup".into(), e.to_string()))?;
            // The rename drops the old link's pin: the kernel detaches it. (bpffs names take
            // no dots.)
            std::fs::rename(&fresh, &pin)?;
        }
        Ok(())
    }

    /// Lets the socket programs translate the TCP connects of the pod whose network namespace
    /// has `cookie` (address `ip`), as they do the node's.
    pub fn add_pod(&mut self, cookie: u64, ip: Ipv4Addr) -> Result<(), EbpfError> {
        let mut pods: BpfHashMap<&mut MapData, u64, u32> = self.hash_map("POD_NETNS")?;
        pods.insert(cookie, wire_addr(ip), 0)
            .map_err(|e| EbpfError::Map("POD_NETNS", e))
    }

    /// Lets the overlay's program deliver other nodes' traffic for `ip` straight into the pod
    /// whose veth's host end is `ifname` (in this thread's network namespace), its frame
    /// addressed as the bridge would (the pod's MAC, from its gateway's).
    pub fn add_local_pod(
        &mut self,
        ifname: &str,
        ip: Ipv4Addr,
        gateway: Ipv4Addr,
    ) -> Result<(), EbpfError> {
        let ifindex = nix::net::if_::if_nametoindex(ifname)
            .map_err(|e| EbpfError::Io(std::io::Error::from(e)))?;
        let pod = LocalPod {
            ifindex,
            mac: crate::network::bridge::mac_of(ip),
            gateway_mac: crate::network::bridge::mac_of(gateway),
        };
        let mut pods: BpfHashMap<&mut MapData, u32, LocalPod> = self.hash_map("LOCAL_PODS")?;
        pods.insert(wire_addr(ip), pod, 0)
            .map_err(|e| EbpfError::Map("LOCAL_PODS", e))
    }

    /// Tells the datapath about the node (its namespace's cookie, its masquerade address).
    pub fn set_config(&mut self, node_addr: Ipv4Addr) -> Result<(), EbpfError> {
        self.write_config(NodeConfig {
            netns_cookie: crate::network::netns_cookie()?,
            node_addr: wire_addr(node_addr),
            ..self.config
        })
    }

    /// Tells the datapath the cluster's pod network, which it routes to by itself.
    pub fn set_cluster(&mut self, cluster: ipnet::Ipv4Net) -> Result<(), EbpfError> {
        self.write_config(NodeConfig {
            cluster_net: wire_addr(cluster.network()),
            cluster_mask: wire_addr(cluster.netmask()),
            ..self.config
        })
    }

    fn write_config(&mut self, cfg: NodeConfig) -> Result<(), EbpfError> {
        let map = self.bpf.map_mut("CONFIG").ok_or(EbpfError::Map(
            "CONFIG",
            aya::maps::MapError::InvalidName {
                name: "CONFIG".into(),
            },
        ))?;
        let mut arr: Array<&mut MapData, NodeConfig> =
            Array::try_from(map).map_err(|e| EbpfError::Map("CONFIG", e))?;
        arr.set(0, cfg, 0)
            .map_err(|e| EbpfError::Map("CONFIG", e))?;
        self.config = cfg;
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
        self.set_frontend(frontend, id, backends, 0, 0)
    }

    /// As `set_service`, with `SVC_*` flags and the affinity timeout.
    pub fn set_frontend(
        &mut self,
        frontend: ServiceKey,
        id: u32,
        backends: &[(Ipv4Addr, u16)],
        flags: u16,
        affinity_timeout: u32,
    ) -> Result<(), EbpfError> {
        self.set_backends(id, backends)?;
        self.put_frontend(frontend, id, backends.len(), flags, affinity_timeout)
    }

    /// Writes backend slots `0..n` of `id`.
    pub fn set_backends(&mut self, id: u32, backends: &[(Ipv4Addr, u16)]) -> Result<(), EbpfError> {
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
        Ok(())
    }

    /// Points a frontend at the first `count` slots of `id`.
    pub fn put_frontend(
        &mut self,
        frontend: ServiceKey,
        id: u32,
        count: usize,
        flags: u16,
        affinity_timeout: u32,
    ) -> Result<(), EbpfError> {
        let value = ServiceValue {
            id,
            count: u16::try_from(count).unwrap_or(u16::MAX),
            flags,
            affinity_timeout,
            _pad: 0,
        };
        self.services()?
            .insert(frontend, value, 0)
            .map_err(|e| EbpfError::Map("SERVICES", e))
    }

    /// Writes the Maglev table of set `id` (none: removes it).
    pub fn set_maglev(&mut self, id: u32, table: &[u16]) -> Result<(), EbpfError> {
        let mut map: BpfHashMap<&mut MapData, u32, MaglevTable> = self.hash_map("MAGLEV")?;
        if table.len() != MAGLEV_M {
            let _ = map.remove(&id);
            return Ok(());
        }
        let mut t = MaglevTable {
            slots: [0; MAGLEV_M],
            len: MAGLEV_M as u16,
        };
        t.slots.copy_from_slice(table);
        map.insert(id, t, 0)
            .map_err(|e| EbpfError::Map("MAGLEV", e))
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

    /// Forgets tracked connections to any of `gone` (address, port, protocol), in both
    /// directions: a UDP client of a backend that went away is balanced anew with its next
    /// packet instead of sending into the void.
    pub fn forget_backends(&mut self, gone: &[(Ipv4Addr, u16, u8)]) -> Result<usize, EbpfError> {
        let gone: std::collections::HashSet<(u32, u16, u8)> = gone
            .iter()
            .map(|(ip, port, proto)| (wire_addr(*ip), wire_port(*port), *proto))
            .collect();
        let mut map: BpfHashMap<&mut MapData, CtKey, CtValue> = self.hash_map("CT")?;
        let stale: Vec<CtKey> = map
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, v)| {
                if v.flags & CT_REPLY != 0 {
                    gone.contains(&(k.saddr, k.sport, k.proto))
                } else {
                    v.flags & CT_NAT_DST != 0 && gone.contains(&(v.daddr, v.dport, k.proto))
                }
            })
            .map(|(k, _)| k)
            .collect();
        for k in &stale {
            let _ = map.remove(k);
        }
        Ok(stale.len())
    }

    pub fn stats(&self) -> Result<Stats, EbpfError> {
        let map = self.bpf.map("STATS").ok_or(EbpfError::Map(
            "STATS",
            aya::maps::MapError::InvalidName {
                name: "STATS".into(),
            },
        ))?;
        stats_of(map)
    }
}

/// Unpins the maps an earlier agent left that this build cannot use as they are (another key
/// or value layout, or another size than the flags ask for): aya would reuse a pinned map
/// whatever its shape. They are created anew; what they held is lost.
fn replace_incompatible_pins(pins: &Path, sizes: Sizes) -> Result<(), EbpfError> {
    use std::mem::size_of;
    let maps = [
        (
            "SERVICES",
            size_of::<ServiceKey>(),
            size_of::<ServiceValue>(),
        ),
        ("BACKENDS", size_of::<BackendKey>(), size_of::<Backend>()),
        ("CT", size_of::<CtKey>(), size_of::<CtValue>()),
        (
            "AFFINITY",
            size_of::<skiff_ebpf_common::AffinityKey>(),
            size_of::<skiff_ebpf_common::AffinityValue>(),
        ),
        ("MAGLEV", size_of::<u32>(), size_of::<MaglevTable>()),
        ("CONFIG", size_of::<u32>(), size_of::<NodeConfig>()),
        ("STATS", size_of::<u32>(), size_of::<u64>()),
        ("POD_NETNS", size_of::<u64>(), size_of::<u32>()),
        ("LOCAL_PODS", size_of::<u32>(), size_of::<LocalPod>()),
        (
            "SOCK_NAT",
            size_of::<skiff_ebpf_common::SockKey>(),
            size_of::<skiff_ebpf_common::SockValue>(),
        ),
    ];
    let sized = sizes.per_map();
    for (name, key, value) in maps {
        let entries = sized.iter().find(|(n, _)| *n == name).map(|(_, e)| *e);
        let path = pins.join(name);
        let Ok(info) = aya::maps::MapInfo::from_pin(&path) else {
            continue;
        };
        if info.key_size() as usize != key
            || info.value_size() as usize != value
            || entries.is_some_and(|n| info.max_entries() != n)
        {
            tracing::warn!(
                map = name,
                "the pinned map has another layout or size than this agent's; replacing it (its entries are lost)"
            );
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// The datapath's maps read through their pins, by readers that must not hold up the proxy
/// (metrics): nothing here takes the `Datapath` lock, and nothing writes.
pub struct Pinned {
    pins: PathBuf,
}

impl Pinned {
    pub fn new(pins: &Path) -> Self {
        Self {
            pins: pins.to_path_buf(),
        }
    }

    fn open(&self, name: &'static str) -> Result<aya::maps::Map, EbpfError> {
        MapData::from_pin(self.pins.join(name))
            .and_then(aya::maps::Map::from_map_data)
            .map_err(|e| EbpfError::Map(name, e))
    }

    pub fn stats(&self) -> Result<Stats, EbpfError> {
        stats_of(&self.open("STATS")?)
    }

    /// Entries in the connection tracking map (a walk over it).
    pub fn conntrack_entries(&self) -> Result<usize, EbpfError> {
        count::<CtKey, CtValue>(&self.open("CT")?, "CT")
    }

    /// Service frontends in the map (a walk over it).
    pub fn frontends(&self) -> Result<usize, EbpfError> {
        count::<ServiceKey, ServiceValue>(&self.open("SERVICES")?, "SERVICES")
    }
}

fn count<K: aya::Pod, V: aya::Pod>(
    map: &aya::maps::Map,
    name: &'static str,
) -> Result<usize, EbpfError> {
    let map: BpfHashMap<&MapData, K, V> =
        BpfHashMap::try_from(map).map_err(|e| EbpfError::Map(name, e))?;
    Ok(map.keys().filter(Result::is_ok).count())
}

fn stats_of(map: &aya::maps::Map) -> Result<Stats, EbpfError> {
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
        no_endpoints: sum(skiff_ebpf_common::STAT_NO_ENDPOINTS)?,
        fib_miss: sum(skiff_ebpf_common::STAT_FIB_MISS)?,
        sock_translated: sum(skiff_ebpf_common::STAT_SOCK_TRANSLATED)?,
        dropped_error: sum(skiff_ebpf_common::STAT_DROP_ERROR)?,
        stale: sum(skiff_ebpf_common::STAT_STALE)?,
        into_pod: sum(skiff_ebpf_common::STAT_INTO_POD)?,
    })
}

/// Loads the datapath with its pins under `pins` and attaches what does not depend on pods: the
/// uplink's program and the socket program, with the node's address as masquerade source.
pub fn start(
    pins: &Path,
    sizes: Sizes,
    uplink: &crate::network::Uplink,
) -> Result<Datapath, EbpfError> {
    let mut dp = Datapath::load(pins, sizes)?;
    dp.set_config(uplink.address)?;
    dp.attach_uplink(&uplink.name)?;
    dp.attach_sockets()?;
    Ok(dp)
}

/// The pod network's hook: attach the pod programs to each new veth, and learn its pod.
pub fn veth_hook(dp: proxier::Shared) -> crate::network::VethHook {
    use crate::network::VethEvent;
    std::sync::Arc::new(move |ifname: &str, event: VethEvent<'_>| {
        let mut dp = dp.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let VethEvent::Wired(pod) = event {
            if let Err(e) = dp.attach(ifname) {
                tracing::error!(ifname, "attaching the service datapath: {e}");
            }
            if let Some(pod) = pod {
                register(&mut dp, ifname, pod);
            }
        }
        // Tidying as veths come and go keeps the pins and pods in step without a timer.
        if let Err(e) = dp.forget_gone_links() {
            tracing::warn!("removing pins of deleted interfaces: {e}");
        }
    })
}

/// Tells the datapath about a wired pod: its namespace (when known) for the socket programs,
/// its veth for the overlay's program.
fn register(dp: &mut Datapath, ifname: &str, pod: &crate::network::WiredPod) {
    if let Some(cookie) = pod.netns
        && let Err(e) = dp.add_pod(cookie, pod.ip)
    {
        // Its connects then go through the veth programs, as UDP does.
        tracing::warn!(
            ifname,
            "registering the pod's namespace with the datapath: {e}"
        );
    }
    if let Err(e) = dp.add_local_pod(ifname, pod.ip, pod.gateway) {
        // Traffic from other nodes then reaches it through the bridge.
        tracing::warn!(
            ifname,
            "registering the pod with the overlay's program: {e}"
        );
    }
}

/// The pod network's hook for its overlay device, run whenever the device is (re)created.
pub fn overlay_hook(dp: proxier::Shared) -> crate::network::OverlayHook {
    std::sync::Arc::new(move |ifname: &str, index: u32, pod_cidr: ipnet::Ipv4Net| {
        let mut dp = dp.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match dp.attach_overlay(ifname, index, pod_cidr) {
            Ok(()) => tracing::info!(ifname, index, "host routing through the overlay device"),
            // Pod traffic between nodes then takes the node's stack, as in iptables mode.
            Err(e) => tracing::error!(ifname, "attaching the overlay's program: {e}"),
        }
        if let Err(e) = dp.forget_gone_links() {
            tracing::warn!("removing pins of deleted interfaces: {e}");
        }
    })
}

/// Removes the datapath of an earlier run in eBPF mode: unpinning its links detaches the
/// programs, and unpinning the maps frees them.
pub fn remove_pins(pins: &Path) -> Result<(), EbpfError> {
    match std::fs::remove_dir_all(pins) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::pin_escape;

    #[test]
    fn interface_names_survive_the_pin_name() {
        let names = [
            "skiff.vxlan",
            "vethab12cd",
            "a%2eb",
            "a.b",
            "%",
            "x.%.y",
            "50%",
        ];
        let pins: std::collections::HashSet<String> = names.iter().map(|n| pin_escape(n)).collect();
        assert_eq!(
            pins.len(),
            names.len(),
            "distinct names stay distinct: {pins:?}"
        );
        assert!(pins.iter().all(|p| !p.contains('.')), "{pins:?}");
    }
}
