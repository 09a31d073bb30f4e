//! The service datapath:
//! - `skiff_from_pod` (tc ingress of a pod's host veth: what the pod sends) and
//!   `skiff_from_world` (tc ingress of the node's uplink: NodePort and external-IP traffic)
//!   translate a new connection to a service frontend into one of its backends, and record
//!   both directions in `CT`, so later packets keep their backend whatever happens to the
//!   service and replies are turned back into the frontend the client asked for;
//! - `skiff_to_pod` (tc egress of a pod's host veth) translates replies that reach a client pod
//!   from a backend on another node;
//! - `skiff_sock_connect4` and `skiff_sock_sendmsg4` (cgroup) point the node's own sockets
//!   straight at a backend, so node traffic needs no per-packet translation at all, and
//!   `skiff_sock_recvmsg4` and `skiff_sock_getpeername4` show the frontend where the socket
//!   would see the backend (UDP replies, a connected socket's peer).
//!
//! A pod's packets to a backend in the pod network are routed by the datapath itself (FIB lookup,
//! TTL, redirect to the bridge or the overlay), so the service path costs no more than the
//! direct one: the node's routing and netfilter are skipped as the bridge skips them. Plain pod
//! traffic between nodes is routed so too: `skiff_from_pod` sends it to the overlay device and
//! `skiff_from_overlay` (tc ingress of that device) straight into the receiving pod.
//!
//! Every direction of a connection is tracked on the node that translated it: a pod's packets
//! cross its veth wherever the backend runs, and SNATed external traffic comes back to the node
//! address it was masqueraded to.
#![no_std]
#![no_main]

use core::ffi::c_void;

use aya_ebpf::EbpfContext;
use aya_ebpf::bindings::{
    BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
    TC_ACT_OK, TC_ACT_SHOT, bpf_fib_lookup as FibParams,
};
use aya_ebpf::helpers::{
    bpf_fib_lookup, bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie,
    bpf_ktime_get_ns, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer,
};
use aya_ebpf::macros::{cgroup_sock_addr, classifier, map};
use aya_ebpf::maps::{Array, HashMap, LruHashMap, PerCpuArray};
use aya_ebpf::programs::{SockAddrContext, TcContext};
use skiff_ebpf_common::{
    AffinityKey, AffinityValue, Backend, BackendKey, CT_BOUNCE, CT_FIB, CT_NAT_DST, CT_NAT_SRC,
    CT_REPLY, CT_ROUTE, CtKey, CtValue, HAIRPIN_ADDR, LocalPod, MaglevTable, NodeConfig, PROTO_TCP,
    PROTO_UDP, SCOPE_EXTERNAL, SCOPE_INTERNAL, STAT_DROP_ERROR, STAT_DROP_NO_BACKEND,
    STAT_FIB_MISS, STAT_INTO_POD, STAT_NO_ENDPOINTS, STAT_REPLIES, STAT_SLOTS,
    STAT_SOCK_TRANSLATED, STAT_STALE, STAT_TRANSLATED, SVC_AFFINITY, SVC_MAGLEV, SVC_SNAT,
    ServiceKey, ServiceValue, SockKey, SockValue, tuple_hash,
};

/// Sizes are defaults; the agent sets them at load time.
#[map]
static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::pinned(65_536, 0);
#[map]
static BACKENDS: HashMap<BackendKey, Backend> = HashMap::pinned(262_144, 0);
#[map]
static CT: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(524_288, 0);
#[map]
static AFFINITY: LruHashMap<AffinityKey, AffinityValue> = LruHashMap::pinned(65_536, 0);
/// Allocated as sets get tables (BPF_F_NO_PREALLOC): a table is 2 KiB.
#[map]
static MAGLEV: HashMap<u32, MaglevTable> = HashMap::pinned(65_536, 1);
/// The backends node sockets were pointed at: replies and peer names show the frontend.
#[map]
static SOCK_NAT: LruHashMap<SockKey, SockValue> = LruHashMap::pinned(65_536, 0);
/// The network namespaces of this node's pods (by cookie) with each pod's address: their TCP
/// connects to a frontend go straight to a backend, as the node's own do. LRU: an entry
/// lost to a crowd of newer pods only sends its pod back to the veth programs.
#[map]
static POD_NETNS: LruHashMap<u64, u32> = LruHashMap::pinned(16_384, 0);
/// This node's pods by address, as the agent wires them: traffic from other nodes' pods is
/// delivered into their namespaces directly.
#[map]
static LOCAL_PODS: HashMap<u32, LocalPod> = HashMap::pinned(16_384, 0);
#[map]
static CONFIG: Array<NodeConfig> = Array::pinned(1, 0);
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::pinned(STAT_SLOTS, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IP_TTL_OFF: usize = ETH_HLEN + 8;
const IP_PROTO_OFF: usize = ETH_HLEN + 9;
const IP_CSUM_OFF: usize = ETH_HLEN + 10;
const IP_SRC_OFF: usize = ETH_HLEN + 12;
const IP_DST_OFF: usize = ETH_HLEN + 16;
const AF_INET: u8 = 2;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
/// A SYN for a tuple tracked longer than this opens a new connection (the old one is long
/// gone); a younger one is a retransmission and keeps its backend.
const SYN_REUSE_NS: u64 = 3_000_000_000;
/// Source ports tried when a masqueraded tuple is taken.
const SNAT_TRIES: u32 = 4;

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
    fn key(&self) -> CtKey {
        CtKey {
            saddr: self.saddr,
            daddr: self.daddr,
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            _pad: [0; 3],
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

#[inline(always)]
fn now() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn random() -> u32 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_get_prandom_u32() }
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
    if old == new {
        return Ok(());
    }
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

/// Applies a tracked translation to the packet and sends it on.
#[inline(always)]
fn apply(ctx: &TcContext, p: &Packet, v: &CtValue) -> Result<i32, i64> {
    if v.flags & CT_NAT_DST != 0 {
        rewrite(
            ctx,
            p,
            IP_DST_OFF,
            p.l4 + 2,
            (p.daddr, p.dport),
            (v.daddr, v.dport),
        )?;
    }
    if v.flags & CT_NAT_SRC != 0 {
        rewrite(
            ctx,
            p,
            IP_SRC_OFF,
            p.l4,
            (p.saddr, p.sport),
            (v.saddr, v.sport),
        )?;
    }
    if v.flags & CT_BOUNCE != 0 {
        return bounce(ctx);
    }
    if v.flags & (CT_FIB | CT_ROUTE) != 0 {
        let (saddr, daddr) = (
            if v.flags & CT_NAT_SRC != 0 {
                v.saddr
            } else {
                p.saddr
            },
            if v.flags & CT_NAT_DST != 0 {
                v.daddr
            } else {
                p.daddr
            },
        );
        return Ok(fib_forward(ctx, p.proto, saddr, daddr, None));
    }
    Ok(TC_ACT_OK)
}

/// Answers a SYN with a RST from the frontend, as a closed port does: the client is refused at
/// once however many connect at a time (the ICMP errors of the unreachable route are
/// rate-limited, and a SYN they leave unanswered waits for its retransmission).
#[inline(always)]
fn refuse(ctx: &TcContext, p: &Packet) -> Result<i32, i64> {
    let total = usize::from(u16::from_be(ctx.load::<u16>(ETH_HLEN + 2)?));
    // Data offset and flags, as in the packet.
    let word: u16 = ctx.load(p.l4 + 12)?;
    let [offset, _] = word.to_ne_bytes();
    let header = (p.l4 - ETH_HLEN) + usize::from(offset >> 4) * 4;
    // The SYN counts for one, and so does each byte of data it carries.
    let taken = total.saturating_sub(header) as u32 + 1;
    let seq: u32 = ctx.load(p.l4 + 4)?;
    let old_ack: u32 = ctx.load(p.l4 + 8)?;
    let ack = u32::from_be(seq).wrapping_add(taken).to_be();
    let flags = u16::from_ne_bytes([offset, TCP_RST | TCP_ACK]);
    let csum = p.csum_off();
    ctx.l4_csum_replace(csum, u64::from(seq), 0, 4)?;
    ctx.l4_csum_replace(csum, u64::from(old_ack), u64::from(ack), 4)?;
    ctx.l4_csum_replace(csum, u64::from(word), u64::from(flags), 2)?;
    ctx.store(p.l4 + 4, &0u32, 0)?;
    ctx.store(p.l4 + 8, &ack, 0)?;
    ctx.store(p.l4 + 12, &flags, 0)?;
    // Swapping addresses and ports leaves both checksums as they are.
    ctx.store(IP_SRC_OFF, &p.daddr, 0)?;
    ctx.store(IP_DST_OFF, &p.saddr, 0)?;
    ctx.store(p.l4, &p.dport, 0)?;
    ctx.store(p.l4 + 2, &p.sport, 0)?;
    bounce(ctx)
}

/// Sends the packet back out of the interface it came in on, as a reply from the gateway.
#[inline(always)]
fn bounce(ctx: &TcContext) -> Result<i32, i64> {
    let dst: [u8; 6] = ctx.load(0)?;
    let src: [u8; 6] = ctx.load(6)?;
    ctx.store(0, &src, 0)?;
    ctx.store(6, &dst, 0)?;
    // SAFETY: a plain helper call on this program's own packet.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: as above.
    Ok(unsafe { bpf_redirect(ifindex, 0) } as i32)
}

/// Forwards the packet by the FIB, past the stack: its source may be one of the node's own
/// addresses (masqueraded, or a NodePort reply), which the input path would drop as martian.
/// With `only`, a packet the FIB sends elsewhere than that interface is left to the stack.
#[inline(always)]
fn fib_forward(ctx: &TcContext, proto: u8, saddr: u32, daddr: u32, only: Option<u32>) -> i32 {
    // SAFETY: an all-zero bpf_fib_lookup is a valid (empty) request.
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = proto;
    fib.__bindgen_anon_3.ipv4_src = saddr;
    fib.__bindgen_anon_4.ipv4_dst = daddr;
    // SAFETY: reading the context's own field.
    fib.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: `fib` lives on this stack frame for the call and its size is passed.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            &mut fib,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    let found = rc == BPF_FIB_LKUP_RET_SUCCESS as i64;
    if !found && rc != BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        count(STAT_FIB_MISS);
        return TC_ACT_OK;
    }
    if only.is_some_and(|i| i != fib.ifindex) {
        return TC_ACT_OK;
    }
    if let Some(verdict) = hop(ctx) {
        return verdict;
    }
    if found {
        if ctx.store(0, &fib.dmac, 0).is_err() || ctx.store(6, &fib.smac, 0).is_err() {
            count(STAT_DROP_ERROR);
            return TC_ACT_SHOT;
        }
        // SAFETY: a plain helper call.
        return unsafe { bpf_redirect(fib.ifindex, 0) } as i32;
    }
    // SAFETY: no parameters: the helper resolves the next hop itself.
    unsafe { bpf_redirect_neigh(fib.ifindex, core::ptr::null_mut(), 0, 0) as i32 }
}

/// Counts the hop as a router does. A verdict when the packet is not to be forwarded here:
/// its TTL runs out (the stack drops it and answers with ICMP time exceeded), or it cannot be
/// rewritten.
#[inline(always)]
fn hop(ctx: &TcContext) -> Option<i32> {
    match decrement_ttl(ctx) {
        Ok(true) => None,
        Ok(false) => Some(TC_ACT_OK),
        Err(_) => {
            count(STAT_DROP_ERROR);
            Some(TC_ACT_SHOT)
        }
    }
}

/// False when the TTL runs out here.
#[inline(always)]
fn decrement_ttl(ctx: &TcContext) -> Result<bool, i64> {
    // TTL and protocol, as they are in the packet.
    let word: u16 = ctx.load(IP_TTL_OFF)?;
    let [ttl, proto] = word.to_ne_bytes();
    if ttl <= 1 {
        return Ok(false);
    }
    let new = u16::from_ne_bytes([ttl - 1, proto]);
    ctx.l3_csum_replace(IP_CSUM_OFF, u64::from(word), u64::from(new), 2)?;
    ctx.store(IP_TTL_OFF, &(ttl - 1), 0)?;
    Ok(true)
}

/// Picks the backend of a new connection from `client`: the one its affinity holds while that
/// is still a backend, else by the set's Maglev table for the connection's hash (when the
/// service uses Maglev and there is a hash: sockets have no source port yet), else at random.
#[inline(always)]
fn select(svc: &ServiceValue, client: u32, hash: Option<u32>, t: u64) -> Option<Backend> {
    let count = u32::from(svc.count);
    let akey = AffinityKey { id: svc.id, client };
    let affinity = svc.flags & SVC_AFFINITY != 0;
    if affinity {
        // SAFETY: the value is copied out at once; a concurrent update at worst gives a stale
        // copy.
        if let Some(a) = unsafe { AFFINITY.get(akey) }.copied()
            && t.saturating_sub(a.last) < u64::from(svc.affinity_timeout) * 1_000_000_000
            && a.slot < count
            // SAFETY: as above.
            && unsafe { BACKENDS.get(BackendKey { id: svc.id, slot: a.slot }) }
                .is_some_and(|b| *b == a.backend)
        {
            let _ = AFFINITY.insert(akey, AffinityValue { last: t, ..a }, 0);
            return Some(a.backend);
        }
    }
    let mut slot = random() % count;
    if svc.flags & SVC_MAGLEV != 0
        && let Some(h) = hash
        // SAFETY: as above.
        && let Some(t) = unsafe { MAGLEV.get(svc.id) }
        && t.len != 0
        && let Some(s) = t.slots.get((h % u32::from(t.len)) as usize)
        && u32::from(*s) < count
    {
        slot = u32::from(*s);
    }
    // SAFETY: as above.
    let b = unsafe { BACKENDS.get(BackendKey { id: svc.id, slot }) }.copied()?;
    if affinity {
        let v = AffinityValue {
            backend: b,
            slot,
            _pad: 0,
            last: t,
        };
        let _ = AFFINITY.insert(akey, v, 0);
    }
    Some(b)
}

/// A TCP SYN without ACK: the first packet of a connection.
#[inline(always)]
fn is_syn(ctx: &TcContext, p: &Packet) -> bool {
    tcp_flags(ctx, p) & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// The TCP flags (none for UDP).
#[inline(always)]
fn tcp_flags(ctx: &TcContext, p: &Packet) -> u8 {
    if p.proto == PROTO_TCP {
        ctx.load::<u8>(p.l4 + 13).unwrap_or(0)
    } else {
        0
    }
}

#[inline(always)]
fn config() -> Option<NodeConfig> {
    CONFIG.get(0).copied()
}

/// A reply entry answers the connection whose SYN last went through it; a SYN-ACK long after
/// that SYN answers another connection on the same tuple, one that never went through the
/// service (a client reaching the backend directly from a port an earlier service connection
/// used). The stale entry goes, and the packet passes untranslated.
#[inline(always)]
fn stale_reply(ctx: &TcContext, p: &Packet, key: &CtKey, v: &CtValue) -> bool {
    let syn_ack = tcp_flags(ctx, p) & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK;
    if syn_ack && now().saturating_sub(v.created) > SYN_REUSE_NS {
        let _ = CT.remove(key);
        count(STAT_STALE);
        return true;
    }
    false
}

/// Marks both directions of a tracked connection as having seen a SYN at `t`.
#[inline(always)]
fn refresh(key: &CtKey, v: &CtValue, t: u64) {
    let back = CtKey {
        saddr: v.daddr,
        daddr: v.saddr,
        sport: v.dport,
        dport: v.sport,
        proto: key.proto,
        _pad: [0; 3],
    };
    for k in [key, &back] {
        if let Some(e) = CT.get_ptr_mut(k) {
            // SAFETY: a value of the map, written in place; a racing writer at worst leaves
            // the other timestamp, which only moves the 3 s window.
            unsafe { (*e).created = t };
        }
    }
}

/// The translation both ingress hooks share; `scope` says where the packet came from.
#[inline(always)]
fn translate(ctx: &TcContext, scope: u8) -> Result<i32, i64> {
    let Some(p) = parse(ctx) else {
        return Ok(TC_ACT_OK);
    };
    let key = p.key();
    // SAFETY: copied out at once.
    if let Some(v) = unsafe { CT.get(key) }.copied() {
        if v.flags & CT_REPLY != 0 {
            if !stale_reply(ctx, &p, &key, &v) {
                count(STAT_REPLIES);
                return apply(ctx, &p, &v);
            }
        } else {
            let syn = is_syn(ctx, &p);
            let t = if syn { now() } else { 0 };
            // A SYN long after the last one opens a new connection on a reused port.
            if !(syn && t.saturating_sub(v.created) > SYN_REUSE_NS) {
                if syn {
                    // A retransmission: both directions stay fresh for its answer.
                    refresh(&key, &v, t);
                }
                count(STAT_TRANSLATED);
                return apply(ctx, &p, &v);
            }
        }
    }
    let skey = ServiceKey {
        addr: p.daddr,
        port: p.dport,
        proto: p.proto,
        scope,
    };
    // SAFETY: copied out at once.
    let Some(svc) = unsafe { SERVICES.get(skey) }.copied() else {
        return Ok(if scope == SCOPE_INTERNAL {
            to_overlay(ctx, &p)
        } else {
            TC_ACT_OK
        });
    };
    if svc.count == 0 {
        if scope == SCOPE_EXTERNAL {
            count(STAT_DROP_NO_BACKEND);
            return Ok(TC_ACT_SHOT);
        }
        count(STAT_NO_ENDPOINTS);
        if is_syn(ctx, &p) {
            return refuse(ctx, &p);
        }
        // Left untranslated: the node's route for the service range rejects it at once.
        return Ok(TC_ACT_OK);
    }
    let hash = tuple_hash(p.saddr, p.daddr, p.sport, p.dport, p.proto);
    let created = now();
    let Some(b) = select(&svc, p.saddr, Some(hash), created) else {
        count(STAT_DROP_NO_BACKEND);
        return Ok(TC_ACT_SHOT);
    };
    let hairpin = scope == SCOPE_INTERNAL && b.addr == p.saddr;
    let cfg = config().unwrap_or_default();
    let snat = if hairpin {
        Some(u32::from_ne_bytes(HAIRPIN_ADDR))
    } else if svc.flags & SVC_SNAT != 0 {
        Some(cfg.node_addr)
    } else {
        None
    };
    let mut reply = CtKey {
        saddr: b.addr,
        daddr: snat.unwrap_or(p.saddr),
        sport: b.port,
        dport: p.sport,
        proto: p.proto,
        _pad: [0; 3],
    };
    if snat.is_some() && !hairpin {
        // Two clients on one source port would share the masqueraded tuple: move on to a
        // free port.
        let mut tries = 0;
        // SAFETY: only tests presence.
        while tries < SNAT_TRIES && unsafe { CT.get(reply) }.is_some() {
            reply.dport = ((32_768 + random() % 28_000) as u16).to_be();
            tries += 1;
        }
    }
    let route = if hairpin {
        CT_BOUNCE
    } else if scope == SCOPE_EXTERNAL {
        CT_FIB
    } else if cfg.in_cluster(b.addr) {
        CT_ROUTE
    } else {
        // Elsewhere (a node, outside the cluster): the stack routes and masquerades it.
        0
    };
    // A pod backend's replies reach a local client by the bridge, a remote one by the overlay.
    let route_back = if route == CT_ROUTE { 0 } else { route };
    let forward = CtValue {
        saddr: reply.daddr,
        daddr: b.addr,
        sport: reply.dport,
        dport: b.port,
        flags: CT_NAT_DST | if snat.is_some() { CT_NAT_SRC } else { 0 } | route,
        _pad: [0; 3],
        created,
    };
    let back = CtValue {
        saddr: p.daddr,
        daddr: p.saddr,
        sport: p.dport,
        dport: p.sport,
        flags: CT_REPLY | CT_NAT_SRC | if snat.is_some() { CT_NAT_DST } else { 0 } | route_back,
        _pad: [0; 3],
        created,
    };
    CT.insert(reply, back, 0)?;
    CT.insert(key, forward, 0)?;
    count(STAT_TRANSLATED);
    apply(ctx, &p, &forward)
}

/// Host routing: a pod's packet to another node's pod goes from the pod's veth straight to the
/// overlay device, past the bridge, the node's routing and netfilter (pod-to-pod traffic is
/// never masqueraded, so they have nothing to do to it).
#[inline(always)]
fn to_overlay(ctx: &TcContext, p: &Packet) -> i32 {
    match config() {
        Some(cfg) if cfg.is_remote_pod(p.daddr) => {
            fib_forward(ctx, p.proto, p.saddr, p.daddr, Some(cfg.overlay_ifindex))
        }
        _ => TC_ACT_OK,
    }
}

/// Tc ingress of the overlay device: what another node's pods send to this node's pods goes
/// straight into the receiving pod (`into_pod`), or else to the bridge. Only pod-to-pod
/// traffic: its replies take `to_overlay`, so neither direction meets this node's conntrack.
/// Traffic from a node's address (a NodePort masqueraded by the node that took it) goes
/// through the stack, whose conntrack must see it for the reply to keep its addresses.
#[classifier]
pub fn skiff_from_overlay(ctx: TcContext) -> i32 {
    let Some(p) = parse(&ctx) else {
        return TC_ACT_OK;
    };
    match config() {
        Some(cfg)
            if cfg.overlay_ifindex != 0 && cfg.in_cluster(p.saddr) && cfg.is_local_pod(p.daddr) =>
        {
            into_pod(&ctx, &p).unwrap_or_else(|| fib_forward(&ctx, p.proto, p.saddr, p.daddr, None))
        }
        _ => TC_ACT_OK,
    }
}

/// Delivers a packet to a local pod as the bridge would, minus the bridge and the veth's
/// queue: the pod's end of its veth receives it (bpf_redirect_peer), in the same softirq.
/// None leaves it to the bridge: a pod not registered yet, or a tracked service connection.
#[inline(always)]
fn into_pod(ctx: &TcContext, p: &Packet) -> Option<i32> {
    // SAFETY: copied out at once.
    let pod = unsafe { LOCAL_PODS.get(p.daddr) }.copied()?;
    // SAFETY: only tested for presence.
    if unsafe { CT.get(p.key()) }.is_some() {
        return None;
    }
    if let Some(verdict) = hop(ctx) {
        return Some(verdict);
    }
    if ctx.store(0, &pod.mac, 0).is_err() || ctx.store(6, &pod.gateway_mac, 0).is_err() {
        count(STAT_DROP_ERROR);
        return Some(TC_ACT_SHOT);
    }
    count(STAT_INTO_POD);
    // SAFETY: a plain helper call.
    Some(unsafe { bpf_redirect_peer(pod.ifindex, 0) } as i32)
}

#[classifier]
pub fn skiff_from_pod(ctx: TcContext) -> i32 {
    verdict(translate(&ctx, SCOPE_INTERNAL))
}

#[classifier]
pub fn skiff_from_world(ctx: TcContext) -> i32 {
    verdict(translate(&ctx, SCOPE_EXTERNAL))
}

/// A packet the datapath cannot rewrite is dropped rather than sent untranslated.
#[inline(always)]
fn verdict(r: Result<i32, i64>) -> i32 {
    match r {
        Ok(action) => action,
        Err(_) => {
            count(STAT_DROP_ERROR);
            TC_ACT_SHOT
        }
    }
}

#[classifier]
pub fn skiff_to_pod(ctx: TcContext) -> i32 {
    verdict(try_to_pod(&ctx))
}

fn try_to_pod(ctx: &TcContext) -> Result<i32, i64> {
    let Some(p) = parse(ctx) else {
        return Ok(TC_ACT_OK);
    };
    let key = p.key();
    // SAFETY: copied out at once.
    let Some(v) = unsafe { CT.get(key) }.copied() else {
        return Ok(TC_ACT_OK);
    };
    if v.flags & CT_REPLY == 0 || stale_reply(ctx, &p, &key, &v) {
        return Ok(TC_ACT_OK);
    }
    count(STAT_REPLIES);
    // Already on its way into the pod: only the addresses change.
    apply(
        ctx,
        &p,
        &CtValue {
            flags: v.flags & (CT_NAT_SRC | CT_NAT_DST),
            ..v
        },
    )
}

#[cgroup_sock_addr(connect4)]
pub fn skiff_sock_connect4(ctx: SockAddrContext) -> i32 {
    to_backend(&ctx);
    // Never refuse a connect: what is not a frontend goes on as asked.
    1
}

/// Unconnected UDP: each datagram to a frontend goes to a backend.
#[cgroup_sock_addr(sendmsg4)]
pub fn skiff_sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    to_backend(&ctx);
    1
}

/// UDP replies from a backend are shown to the socket as coming from the frontend it
/// addressed, as a client comparing the reply's source expects.
#[cgroup_sock_addr(recvmsg4)]
pub fn skiff_sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    from_backend(&ctx);
    1
}

/// A connected socket's peer is the frontend it connected to.
#[cgroup_sock_addr(getpeername4)]
pub fn skiff_sock_getpeername4(ctx: SockAddrContext) -> i32 {
    from_backend(&ctx);
    1
}

/// Whose socket this is: the node's own (its address), or a pod's of this node (the pod's
/// address, from `POD_NETNS`). Every other namespace on the machine (they share the cgroup)
/// is left alone.
#[inline(always)]
fn whose(ctx: &SockAddrContext) -> Option<Client> {
    let cfg = config()?;
    // SAFETY: the helper takes this program's context.
    let cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr().cast::<c_void>()) };
    if cookie == cfg.netns_cookie {
        return Some(Client {
            addr: cfg.node_addr,
            pod: false,
        });
    }
    // SAFETY: copied out at once.
    let addr = unsafe { POD_NETNS.get(cookie) }.copied()?;
    Some(Client { addr, pod: true })
}

struct Client {
    addr: u32,
    pod: bool,
}

#[inline(always)]
fn to_backend(ctx: &SockAddrContext) {
    let Some(client) = whose(ctx) else { return };
    let sa = ctx.sock_addr;
    // SAFETY: the kernel's context for this program, valid for its run.
    let (addr, port, protocol) = unsafe { ((*sa).user_ip4, (*sa).user_port, (*sa).protocol) };
    let key = ServiceKey {
        addr,
        port: port as u16,
        proto: protocol as u8,
        scope: SCOPE_INTERNAL,
    };
    // A pod's UDP stays with the veth programs, whose tracked flows follow a backend that goes
    // (a connected socket would keep sending to it).
    if client.pod && key.proto != PROTO_TCP {
        return;
    }
    // SAFETY: copied out at once.
    let Some(svc) = unsafe { SERVICES.get(key) }.copied() else {
        return;
    };
    if svc.count == 0 {
        count(STAT_NO_ENDPOINTS);
        return;
    }
    let Some(b) = select(&svc, client.addr, None, now()) else {
        return;
    };
    // A pod reaching itself is left to the veth programs, which masquerade it as hairpin.
    if client.pod && b.addr == client.addr {
        return;
    }
    let sock = SockKey {
        // SAFETY: the helper takes this program's context.
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr().cast::<c_void>()) },
        addr: b.addr,
        port: b.port,
        _pad: 0,
    };
    let front = SockValue {
        addr,
        port: key.port,
        _pad: 0,
    };
    if SOCK_NAT.insert(sock, front, 0).is_err() {
        // Without it the socket would see the backend: better not to translate at all.
        return;
    }
    // SAFETY: as above; both fields are writable for connect4 and sendmsg4.
    unsafe {
        (*sa).user_ip4 = b.addr;
        (*sa).user_port = u32::from(b.port);
    }
    count(STAT_SOCK_TRANSLATED);
}

#[inline(always)]
fn from_backend(ctx: &SockAddrContext) {
    if whose(ctx).is_none() {
        return;
    }
    let sa = ctx.sock_addr;
    // SAFETY: the kernel's context for this program, valid for its run.
    let (addr, port) = unsafe { ((*sa).user_ip4, (*sa).user_port) };
    let sock = SockKey {
        // SAFETY: the helper takes this program's context.
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr().cast::<c_void>()) },
        addr,
        port: port as u16,
        _pad: 0,
    };
    // SAFETY: copied out at once.
    if let Some(front) = unsafe { SOCK_NAT.get(sock) }.copied() {
        // SAFETY: as above; recvmsg4 may rewrite the source it reports.
        unsafe {
            (*sa).user_ip4 = front.addr;
            (*sa).user_port = u32::from(front.port);
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
