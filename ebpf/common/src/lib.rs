//! Map keys and values of the service datapath, shared by the eBPF programs (kernel side) and
//! the agent (user space, feature `user`). Every type is `#[repr(C)]` with explicit padding so
//! both sides agree on the layout byte for byte. Addresses and ports are kept in network byte
//! order, exactly as they appear in packets, so the datapath never swaps bytes.
#![no_std]

/// Protocol numbers as in the IPv4 header.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// A service frontend: a ClusterIP (or external IP) with a port and protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// IPv4 address, network byte order.
    pub addr: u32,
    /// Port, network byte order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// What a frontend leads to: `count` backends in slots `0..count` of service `id`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceValue {
    pub id: u32,
    /// Backends that take new connections; 0 means the service has none (drop).
    pub count: u16,
    pub flags: u16,
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

/// A connection as a packet names it (source first), and which way the packet goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// CT_FORWARD for a client's packets, CT_REPLY for a backend's: a reply leaving a backend
    /// pod on this node must not be taken for a new client packet.
    pub dir: u8,
    pub _pad: [u8; 2],
}

pub const CT_FORWARD: u8 = 0;
pub const CT_REPLY: u8 = 1;

/// The translation of a tracked connection: for a client's packets the backend chosen, for a
/// backend's replies the frontend the client asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtValue {
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}

/// Datapath counters, one slot each in the per-CPU `STATS` array.
pub const STAT_TRANSLATED: u32 = 0;
pub const STAT_REPLIES: u32 = 1;
pub const STAT_DROP_NO_BACKEND: u32 = 2;
pub const STAT_SLOTS: u32 = 3;

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
}
