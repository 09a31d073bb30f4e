//! The service datapath, attached with tc to the host end of every pod's veth:
//! - `skiff_from_pod` (ingress: packets the pod sends) translates a new connection to a service
//!   frontend into one of its backends and remembers the choice in `CT`, so later packets of the
//!   connection keep their backend whatever happens to the service;
//! - `skiff_to_pod` (egress: packets about to enter the pod) turns a backend's reply back into
//!   the frontend the pod asked for.
//!
//! Both directions of every pod's traffic pass its veth, wherever the backend runs (same node:
//! bridged; other node: through the overlay), so the reply is always reverse-translated on the
//! client's own node.
#![no_std]
#![no_main]

use aya_ebpf::bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_SHOT};
use aya_ebpf::helpers::bpf_get_prandom_u32;
use aya_ebpf::macros::{classifier, map};
use aya_ebpf::maps::{HashMap, LruHashMap, PerCpuArray};
use aya_ebpf::programs::TcContext;
use skiff_ebpf_common::{
    Backend, BackendKey, CT_FORWARD, CT_REPLY, CtKey, CtValue, PROTO_TCP, PROTO_UDP,
    STAT_DROP_NO_BACKEND, STAT_REPLIES, STAT_SLOTS, STAT_TRANSLATED, ServiceKey, ServiceValue,
};

/// Sizes are defaults; the agent sets them at load time.
#[map]
static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::pinned(65_536, 0);
#[map]
static BACKENDS: HashMap<BackendKey, Backend> = HashMap::pinned(262_144, 0);
#[map]
static CT: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(524_288, 0);
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::pinned(STAT_SLOTS, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IP_PROTO_OFF: usize = ETH_HLEN + 9;
const IP_CSUM_OFF: usize = ETH_HLEN + 10;
const IP_SRC_OFF: usize = ETH_HLEN + 12;
const IP_DST_OFF: usize = ETH_HLEN + 16;

/// The parts of an IPv4 TCP/UDP packet the datapath reads.
struct Packet {
    proto: u8,
    /// Offset of the L4 header.
    l4: usize,
    saddr: u32,
    daddr: u32,
    /// Ports in network byte order, as loaded.
    sport: u16,
    dport: u16,
}

impl Packet {
    fn csum_off(&self) -> usize {
        if self.proto == PROTO_TCP {
            self.l4 + 16
        } else {
            self.l4 + 6
        }
    }
    fn csum_flags(&self) -> u64 {
        // A UDP checksum of 0 means "none" and must stay so.
        if self.proto == PROTO_UDP {
            BPF_F_MARK_MANGLED_0 as u64
        } else {
            0
        }
    }
}

#[inline(always)]
fn parse(ctx: &TcContext) -> Option<Packet> {
    let ethertype = u16::from_be(ctx.load::<u16>(12).ok()?);
    if ethertype != ETH_P_IP {
        return None;
    }
    let vihl: u8 = ctx.load(ETH_HLEN).ok()?;
    let ihl = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return None;
    }
    // Only first fragments carry ports; later ones are left to the kernel.
    let frag = u16::from_be(ctx.load::<u16>(ETH_HLEN + 6).ok()?);
    if frag & 0x1fff != 0 {
        return None;
    }
    let proto: u8 = ctx.load(IP_PROTO_OFF).ok()?;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return None;
    }
    let l4 = ETH_HLEN + ihl;
    Some(Packet {
        proto,
        l4,
        saddr: ctx.load(IP_SRC_OFF).ok()?,
        daddr: ctx.load(IP_DST_OFF).ok()?,
        sport: ctx.load(l4).ok()?,
        dport: ctx.load(l4 + 2).ok()?,
    })
}

#[inline(always)]
fn count(slot: u32) {
    if let Some(c) = STATS.get_ptr_mut(slot) {
        // SAFETY: the pointer is to this CPU's slot of a per-CPU array; nothing else writes it
        // while this program runs on this CPU.
        unsafe { *c += 1 };
    }
}

/// Rewrites the address at `addr_off` and the port at `port_off`, fixing both checksums.
#[inline(always)]
fn rewrite(
    ctx: &TcContext,
    p: &Packet,
    addr_off: usize,
    port_off: usize,
    old: (u32, u16),
    new: (u32, u16),
) -> Result<(), i64> {
    let csum = p.csum_off();
    let flags = p.csum_flags();
    ctx.l4_csum_replace(
        csum,
        old.0 as u64,
        new.0 as u64,
        flags | BPF_F_PSEUDO_HDR as u64 | 4,
    )?;
    ctx.l4_csum_replace(csum, old.1 as u64, new.1 as u64, flags | 2)?;
    ctx.l3_csum_replace(IP_CSUM_OFF, old.0 as u64, new.0 as u64, 4)?;
    ctx.store(addr_off, &new.0, 0)?;
    ctx.store(port_off, &new.1, 0)?;
    Ok(())
}

#[classifier]
pub fn skiff_from_pod(ctx: TcContext) -> i32 {
    match try_from_pod(&ctx) {
        Ok(action) => action,
        // A packet the datapath cannot rewrite is dropped rather than sent untranslated.
        Err(_) => TC_ACT_SHOT,
    }
}

fn try_from_pod(ctx: &TcContext) -> Result<i32, i64> {
    let Some(p) = parse(ctx) else {
        return Ok(TC_ACT_OK);
    };
    let conn = CtKey {
        saddr: p.saddr,
        daddr: p.daddr,
        sport: p.sport,
        dport: p.dport,
        proto: p.proto,
        dir: CT_FORWARD,
        _pad: [0; 2],
    };
    // SAFETY: the value is copied out at once; a concurrent update at worst gives a stale copy.
    let backend = match unsafe { CT.get(conn) } {
        Some(b) => *b,
        None => {
            let key = ServiceKey {
                addr: p.daddr,
                port: p.dport,
                proto: p.proto,
                _pad: 0,
            };
            // SAFETY: as above.
            let Some(svc) = (unsafe { SERVICES.get(key) }).copied() else {
                return Ok(TC_ACT_OK);
            };
            if svc.count == 0 {
                count(STAT_DROP_NO_BACKEND);
                return Ok(TC_ACT_SHOT);
            }
            // SAFETY: a helper without arguments.
            let slot = unsafe { bpf_get_prandom_u32() } % u32::from(svc.count);
            // SAFETY: as above.
            let Some(b) = (unsafe { BACKENDS.get(BackendKey { id: svc.id, slot }) }).copied()
            else {
                count(STAT_DROP_NO_BACKEND);
                return Ok(TC_ACT_SHOT);
            };
            let chosen = CtValue {
                addr: b.addr,
                port: b.port,
                _pad: 0,
            };
            let reply = CtKey {
                saddr: b.addr,
                daddr: p.saddr,
                sport: b.port,
                dport: p.sport,
                proto: p.proto,
                dir: CT_REPLY,
                _pad: [0; 2],
            };
            let frontend = CtValue {
                addr: p.daddr,
                port: p.dport,
                _pad: 0,
            };
            CT.insert(reply, frontend, 0)?;
            CT.insert(conn, chosen, 0)?;
            chosen
        }
    };
    rewrite(
        ctx,
        &p,
        IP_DST_OFF,
        p.l4 + 2,
        (p.daddr, p.dport),
        (backend.addr, backend.port),
    )?;
    count(STAT_TRANSLATED);
    Ok(TC_ACT_OK)
}

#[classifier]
pub fn skiff_to_pod(ctx: TcContext) -> i32 {
    match try_to_pod(&ctx) {
        Ok(action) => action,
        Err(_) => TC_ACT_SHOT,
    }
}

fn try_to_pod(ctx: &TcContext) -> Result<i32, i64> {
    let Some(p) = parse(ctx) else {
        return Ok(TC_ACT_OK);
    };
    let key = CtKey {
        saddr: p.saddr,
        daddr: p.daddr,
        sport: p.sport,
        dport: p.dport,
        proto: p.proto,
        dir: CT_REPLY,
        _pad: [0; 2],
    };
    // SAFETY: copied out at once.
    let Some(frontend) = (unsafe { CT.get(key) }).copied() else {
        return Ok(TC_ACT_OK);
    };
    rewrite(
        ctx,
        &p,
        IP_SRC_OFF,
        p.l4,
        (p.saddr, p.sport),
        (frontend.addr, frontend.port),
    )?;
    count(STAT_REPLIES);
    Ok(TC_ACT_OK)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
