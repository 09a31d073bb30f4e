//! Map keys and values of the service datapath, shared by the eBPF programs (kernel side) and
//! the agent (user space, feature `user`). Every type is `#[repr(C)]` with explicit padding so
//! both sides agree on the layout byte for byte. Addresses and ports are kept in network byte
//! order, exactly as they appear in packets, so the datapath never swaps bytes.
#![no_std]

/// Protocol numbers as in the IPv4 header.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Traffic from this node's pods and its own sockets.
pub const SCOPE_INTERNAL: u8 = 0;
/// Traffic arriving from outside on the node's uplink (NodePort, external IPs).
pub const SCOPE_EXTERNAL: u8 = 1;

/// A service frontend: an address (ClusterIP, external IP, node address for a NodePort) with a
/// port and protocol, as seen from one scope.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// IPv4 address, network byte order.
    pub addr: u32,
    /// Port, network byte order.
    pub port: u16,
    pub proto: u8,
    /// SCOPE_INTERNAL or SCOPE_EXTERNAL: the two see different backends and SNAT under
    /// externalTrafficPolicy.
    pub scope: u8,
}

/// Masquerade the client to the node's address (NodePort and external IPs under
/// externalTrafficPolicy Cluster).
pub const SVC_SNAT: u16 = 1;
/// sessionAffinity ClientIP.
pub const SVC_AFFINITY: u16 = 2;
/// Pick backends by the set's Maglev table (a hash of the 5-tuple) instead of at random: every
/// node picks the same backend for the same connection, and a backend change moves few others.
pub const SVC_MAGLEV: u16 = 4;

/// Entries of a Maglev table (a prime well above the backend count of a service).
pub const MAGLEV_M: usize = 1021;

/// A backend set's Maglev lookup table: entry `hash % MAGLEV_M` is the backend slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevTable {
    pub slots: [u16; MAGLEV_M],
    /// MAGLEV_M, read by the datapath rather than taken as a constant: a constant modulus
    /// compiles to a multiply-shift the verifier cannot bound.
    pub len: u16,
}

/// The 5-tuple hash both the datapath and tests use (a 32-bit finaliser over the fields, so it
/// is the same on every node).
pub fn tuple_hash(saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8) -> u32 {
    fn mix(mut x: u32) -> u32 {
        x ^= x >> 16;
        x = x.wrapping_mul(0x7feb_352d);
        x ^= x >> 15;
        x = x.wrapping_mul(0x846c_a68b);
        x ^ (x >> 16)
    }
    let mut h = mix(saddr ^ 0x9e37_79b9);
    h = mix(h ^ daddr);
    h = mix(h ^ ((u32::from(sport) << 16) | u32::from(dport)));
    mix(h ^ u32::from(proto))
}

/// What a frontend leads to: `count` backends in slots `0..count` of service `id`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceValue {
    pub id: u32,
    /// Backends that take new connections. 0: internal traffic passes untranslated (the node's
    /// unreachable route for the service range rejects it), external traffic is dropped.
    pub count: u16,
    pub flags: u16,
    /// ClientIP affinity timeout in seconds (with SVC_AFFINITY).
    pub affinity_timeout: u32,
    pub _pad: u32,
}

/// One backend slot of a service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackendKey {
    pub id: u32,
    pub slot: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend {
    /// IPv4 address, network byte order.
    pub addr: u32,
    /// Port, network byte order.
    pub port: u16,
    pub _pad: u16,
}

/// A packet's 5-tuple (source first), as it arrives at a hook.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Rewrite the source to `saddr:sport`.
pub const CT_NAT_SRC: u8 = 1;
/// Rewrite the destination to `daddr:dport`.
pub const CT_NAT_DST: u8 = 2;
/// Send the rewritten packet on by a FIB lookup and redirect, bypassing the stack (its source
/// may be one of the node's own addresses, which the stack would drop as martian).
pub const CT_FIB: u8 = 4;
/// Send it back out of the interface it came in on (hairpin: a pod reaching itself).
pub const CT_BOUNCE: u8 = 8;
/// The entry is a reply direction (a backend's packets).
pub const CT_REPLY: u8 = 16;
/// A pod's connection to a backend in the pod network: routed by a FIB lookup and redirect
/// straight to the bridge or the overlay, as the node's forwarding would, minus its cost.
pub const CT_ROUTE: u8 = 32;

/// How the packets of a tracked connection are translated in the direction of the key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtValue {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub flags: u8,
    pub _pad: [u8; 3],
    /// When the connection's last SYN went through (bpf_ktime_get_ns): a reused tuple is told
    /// from a retransmitted SYN, and a reply entry from a stale one.
    pub created: u64,
}

/// Client of a service with ClientIP affinity.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub id: u32,
    /// IPv4 address, network byte order.
    pub client: u32,
}

/// The backend a client is held to, and when it last opened a connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AffinityValue {
    pub backend: Backend,
    pub slot: u32,
    pub _pad: u32,
    pub last: u64,
}

/// The node as the datapath needs it (slot 0 of the `CONFIG` array).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeConfig {
    /// The node's network namespace: socket programs are attached to a cgroup shared with
    /// other namespaces and act only on sockets of this one.
    pub netns_cookie: u64,
    /// The node's uplink address (network byte order), the source of masqueraded traffic.
    pub node_addr: u32,
    /// The cluster's pod network (network byte order); a mask of 0 until it is known.
    pub cluster_net: u32,
    pub cluster_mask: u32,
    /// This node's podCIDR (network byte order); a mask of 0 until the overlay is up.
    pub local_net: u32,
    pub local_mask: u32,
    /// The overlay device: pod traffic to other nodes' pods is sent to it directly (0: through
    /// the node's stack).
    pub overlay_ifindex: u32,
}

impl NodeConfig {
    /// An address in the pod network.
    pub fn in_cluster(&self, addr: u32) -> bool {
        self.cluster_mask != 0 && addr & self.cluster_mask == self.cluster_net
    }

    /// An address of this node's pods.
    pub fn is_local_pod(&self, addr: u32) -> bool {
        self.local_mask != 0 && addr & self.local_mask == self.local_net
    }

    /// An address of another node's pods, reached through the overlay.
    pub fn is_remote_pod(&self, addr: u32) -> bool {
        self.overlay_ifindex != 0 && self.in_cluster(addr) && !self.is_local_pod(addr)
    }
}

/// One of this node's pods as traffic from other nodes is delivered to it (the value of
/// `LOCAL_PODS`, keyed by the pod's address in network byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalPod {
    /// The host end of the pod's veth; the pod's own end is its peer.
    pub ifindex: u32,
    /// The frame's addresses as the bridge would deliver it: the pod's and its gateway's.
    pub mac: [u8; 6],
    pub gateway_mac: [u8; 6],
}

/// A backend a node socket's UDP datagrams were sent to: the socket (its cookie) and the
/// backend's address and port. Replies from it are shown to the socket as the frontend's.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockKey {
    pub cookie: u64,
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}

/// The frontend a socket addressed (network byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockValue {
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}

/// Source address of hairpin traffic (a pod reaching itself through a service): link-local
/// and owned by nobody, so the pod answers it through its gateway, where the datapath sits.
pub const HAIRPIN_ADDR: [u8; 4] = [169, 254, 42, 1];

/// Datapath counters, one slot each in the per-CPU `STATS` array.
pub const STAT_TRANSLATED: u32 = 0;
pub const STAT_REPLIES: u32 = 1;
/// External traffic to a frontend without (local) backends.
pub const STAT_DROP_NO_BACKEND: u32 = 2;
/// Internal traffic to a frontend without backends, left to the node's reject route.
pub const STAT_NO_ENDPOINTS: u32 = 3;
/// Packets the FIB could not forward (left to the stack).
pub const STAT_FIB_MISS: u32 = 4;
/// Socket connects translated for the node's own processes.
pub const STAT_SOCK_TRANSLATED: u32 = 5;
/// Packets the datapath could not rewrite (dropped).
pub const STAT_DROP_ERROR: u32 = 6;
/// Stale reply entries dropped (a direct connection on a tuple a service connection used).
pub const STAT_STALE: u32 = 7;
/// Packets from other nodes delivered straight into a local pod's namespace.
pub const STAT_INTO_POD: u32 = 8;
pub const STAT_SLOTS: u32 = 9;

#[cfg(feature = "user")]
mod user {
    // SAFETY: each type is #[repr(C)], Copy, made only of integers with explicit padding
    // fields, so every bit pattern is a valid value and there are no implicit padding bytes.
    unsafe impl aya::Pod for super::ServiceKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ServiceValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::BackendKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Backend {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CtKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CtValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AffinityKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SockKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SockValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AffinityValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NodeConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::MaglevTable {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::LocalPod {}
}
