//! The iptables dataplane: kube-proxy's semantics in chains of our own, written with one
//! `iptables-restore --noflush` per sync.
//!
//! Two choices keep programming fast at 10,000+ services:
//! - Endpoints are DNAT rules in the service chain itself (no chain per endpoint): chains cost far
//!   more than rules in both iptables backends. Hairpin traffic (a pod reaching itself through
//!   its Service) is masqueraded by one rule per local endpoint in SKIFF-HAIRPIN instead.
//! - SKIFF-SERVICES dispatches on the low six bits of the destination address to 64 bucket
//!   chains, so a change rewrites one small bucket, never a 10,000-rule chain (and a packet walks
//!   about 1/64 of the services instead of all of them).
//!
//! A sync rewrites exactly the chains whose content changed (a full sync rewrites all of them) and
//! deletes the chains of removed services in the same transaction.

#[cfg(test)]
mod fake;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use skiff_common::hash::fnv64a;

use super::model::{Changes, Endpoint, ServiceKey, ServicePort};
use crate::iptables::{Iptables, IptablesError};

pub const SERVICES: &str = "SKIFF-SERVICES";
pub const NODEPORTS: &str = "SKIFF-NODEPORTS";
pub const MARK_MASQ: &str = "SKIFF-MARK-MASQ";
pub const POSTROUTING: &str = "SKIFF-POSTROUTING";
pub const HAIRPIN: &str = "SKIFF-HAIRPIN";
pub const EXTERNAL: &str = "SKIFF-EXTERNAL-SERVICES";
/// The packet mark bit that asks SKIFF-POSTROUTING to masquerade (kube-proxy's default).
pub const MASQ_MARK: u32 = 0x4000;
const BUCKETS: u8 = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Nat,
    Filter,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Self::Nat => "nat",
            Self::Filter => "filter",
        }
    }
}

/// Jumps from the built-in chains, inserted first so no other rule sees a packet before it.
const JUMPS: &[(Table, &str, &str)] = &[
    (Table::Nat, "PREROUTING", "-j SKIFF-SERVICES"),
    (Table::Nat, "OUTPUT", "-j SKIFF-SERVICES"),
    (Table::Nat, "POSTROUTING", "-j SKIFF-POSTROUTING"),
    (
        Table::Filter,
        "OUTPUT",
        "-m conntrack --ctstate NEW -j SKIFF-SERVICES",
    ),
    (
        Table::Filter,
        "FORWARD",
        "-m conntrack --ctstate NEW -j SKIFF-SERVICES",
    ),
    (
        Table::Filter,
        "INPUT",
        "-m conntrack --ctstate NEW -j SKIFF-EXTERNAL-SERVICES",
    ),
    (
        Table::Filter,
        "FORWARD",
        "-m conntrack --ctstate NEW -j SKIFF-EXTERNAL-SERVICES",
    ),
];

pub fn bucket_chain(b: u8) -> String {
    format!("SKIFF-SVCS-{b:02X}")
}

pub fn bucket_of(ip: Ipv4Addr) -> u8 {
    ip.octets()[3] % BUCKETS
}

/// Chains of our own with fixed content.
fn static_chains() -> Vec<((Table, String), Vec<String>)> {
    let mut services: Vec<String> = (0..BUCKETS)
        .map(|b| format!("-d 0.0.0.{b}/0.0.0.{} -j {}", BUCKETS - 1, bucket_chain(b)))
        .collect();
    // NodePorts on every node address but loopback (which would need route_localnet).
    services.push(format!(
        "! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j {NODEPORTS}"
    ));
    vec![
        ((Table::Nat, SERVICES.into()), services),
        (
            (Table::Nat, MARK_MASQ.into()),
            vec![format!("-j MARK --or-mark {MASQ_MARK:#x}")],
        ),
        (
            (Table::Nat, POSTROUTING.into()),
            vec![
                format!("-j {HAIRPIN}"),
                format!("-m mark ! --mark {MASQ_MARK:#x}/{MASQ_MARK:#x} -j RETURN"),
                format!("-j MARK --xor-mark {MASQ_MARK:#x}"),
                "-m comment --comment \"service traffic requiring SNAT\" -j MASQUERADE --random-fully"
                    .into(),
            ],
        ),
    ]
}

/// A chain holding rules of many services.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Shared {
    /// `SKIFF-SVCS-XX`: ClusterIPs and external IPs whose low six bits are XX.
    Bucket(u8),
    NodePorts,
    Hairpin,
    /// filter `SKIFF-SERVICES`.
    Reject,
    /// filter `SKIFF-EXTERNAL-SERVICES`.
    ExternalReject,
}

impl Shared {
    fn all() -> impl Iterator<Item = Self> {
        (0..BUCKETS).map(Self::Bucket).chain([
            Self::NodePorts,
            Self::Hairpin,
            Self::Reject,
            Self::ExternalReject,
        ])
    }

    fn chain(self) -> (Table, String) {
        match self {
            Self::Bucket(b) => (Table::Nat, bucket_chain(b)),
            Self::NodePorts => (Table::Nat, NODEPORTS.to_owned()),
            Self::Hairpin => (Table::Nat, HAIRPIN.to_owned()),
            Self::Reject => (Table::Filter, SERVICES.to_owned()),
            Self::ExternalReject => (Table::Filter, EXTERNAL.to_owned()),
        }
    }
}

/// Rules of one service port: in shared chains, and in chains of its own (SKIFF-SVC-,
/// SKIFF-SVL-, SKIFF-EXT-).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortRules {
    pub shared: Vec<(Shared, String)>,
    pub chains: Vec<(String, Vec<String>)>,
}

/// `base` is the port's `id/protocol`, which every name derived from the port hashes.
fn chain_name(prefix: &str, base: &str) -> String {
    format!("SKIFF-{prefix}-{:016X}", fnv64a(base.as_bytes()))
}

/// The `-m recent` list remembering which clients stick to endpoint `e`.
fn recent_name(base: &str, e: &Endpoint) -> String {
    let h = fnv64a(format!("{base}/{}:{}", e.ip, e.port).as_bytes());
    format!("SKIFF-{h:016X}")
}

/// Load-balancing rules: sticky entries first when affinity is on, then an even random choice.
fn balance(p: &ServicePort, base: &str, eps: &[&Endpoint]) -> Vec<String> {
    let proto = p.protocol.as_str();
    let mut rules = Vec::new();
    let dnat = |e: &Endpoint| format!("-j DNAT --to-destination {}:{}", e.ip, e.port);
    let recent: Vec<String> = match p.affinity_timeout {
        Some(_) => eps.iter().map(|e| recent_name(base, e)).collect(),
        None => Vec::new(),
    };
    if let Some(t) = p.affinity_timeout {
        for (e, name) in eps.iter().zip(&recent) {
            rules.push(format!(
                "-p {proto} -m recent --name {name} --update --seconds {t} --reap {}",
                dnat(e)
            ));
        }
    }
    let n = eps.len();
    for (i, e) in eps.iter().enumerate() {
        let stat = if i + 1 < n {
            format!(
                "-m statistic --mode random --probability {:.10} ",
                1.0 / (n - i) as f64
            )
        } else {
            String::new()
        };
        let set = recent
            .get(i)
            .map(|name| format!("-m recent --name {name} --set "))
            .unwrap_or_default();
        rules.push(format!("-p {proto} {stat}{set}{}", dnat(e)));
    }
    rules
}

/// kube-proxy's rendering of one service port (minus per-endpoint chains, see the module doc).
pub fn render_port(p: &ServicePort, cluster_cidr: Ipv4Net) -> PortRules {
    let mut out = PortRules::default();
    let Some(vip) = p.cluster_ip else {
        return out;
    };
    let proto = p.protocol.as_str();
    let m = |port: u16| format!("-p {proto} -m {proto} --dport {port}");
    let id = p.id();
    let base = format!("{id}/{proto}");
    let comment = format!("-m comment --comment \"{id}\"");
    let cluster = p.cluster_endpoints();
    let local = p.local_endpoints();
    let svc = chain_name("SVC", &base);
    let svl = chain_name("SVL", &base);
    let ext = chain_name("EXT", &base);
    out.shared.extend(local.iter().map(|e| {
        (
            Shared::Hairpin,
            format!("-s {0}/32 -d {0}/32 -j MASQUERADE", e.ip),
        )
    }));
    if !cluster.is_empty() {
        let mut rules = vec![format!(
            "! -s {cluster_cidr} -d {vip}/32 {} {comment} -j {MARK_MASQ}",
            m(p.port)
        )];
        rules.extend(balance(p, &base, &cluster));
        out.chains.push((svc.clone(), rules));
    }
    let needs_local = p.internal_local || p.external_local;
    if needs_local && !local.is_empty() {
        out.chains.push((svl.clone(), balance(p, &base, &local)));
    }
    // Traffic to the ClusterIP.
    let internal = if p.internal_local {
        (!local.is_empty()).then(|| svl.clone())
    } else {
        (!cluster.is_empty()).then(|| svc.clone())
    };
    match internal {
        Some(target) => out.shared.push((
            Shared::Bucket(bucket_of(vip)),
            format!("-d {vip}/32 {} {comment} -j {target}", m(p.port)),
        )),
        None => {
            let verdict = if cluster.is_empty() {
                "REJECT --reject-with icmp-port-unreachable"
            } else {
                "DROP"
            };
            out.shared.push((
                Shared::Reject,
                format!("-d {vip}/32 {} {comment} -j {verdict}", m(p.port)),
            ));
        }
    }
    if !p.has_external() {
        return out;
    }
    // Traffic to a NodePort or an external IP.
    if !cluster.is_empty() {
        let mut rules = Vec::new();
        if p.external_local {
            // Pods and the node itself may use any endpoint; others only local ones, unmasqueraded.
            rules.push(format!(
                "-s {cluster_cidr} -m comment --comment \"pod traffic for {id} external destinations\" -j {svc}"
            ));
            rules.push(format!("-m addrtype --src-type LOCAL -j {MARK_MASQ}"));
            rules.push(format!("-m addrtype --src-type LOCAL -j {svc}"));
            if !local.is_empty() {
                rules.push(format!("-j {svl}"));
            }
        } else {
            rules.push(format!("-j {MARK_MASQ}"));
            rules.push(format!("-j {svc}"));
        }
        out.chains.push((ext.clone(), rules));
        if let Some(np) = p.node_port {
            out.shared
                .push((Shared::NodePorts, format!("{} {comment} -j {ext}", m(np))));
        }
        for eip in &p.external_ips {
            out.shared.push((
                Shared::Bucket(bucket_of(*eip)),
                format!("-d {eip}/32 {} {comment} -j {ext}", m(p.port)),
            ));
        }
    }
    let verdict = if cluster.is_empty() {
        Some("REJECT --reject-with icmp-port-unreachable")
    } else if p.external_local && local.is_empty() {
        Some("DROP")
    } else {
        None
    };
    if let Some(verdict) = verdict {
        if let Some(np) = p.node_port {
            out.shared.push((
                Shared::ExternalReject,
                format!(
                    "-m addrtype --dst-type LOCAL {} {comment} -j {verdict}",
                    m(np)
                ),
            ));
        }
        for eip in &p.external_ips {
            out.shared.push((
                Shared::ExternalReject,
                format!("-d {eip}/32 {} {comment} -j {verdict}", m(p.port)),
            ));
        }
    }
    out
}

/// Chains a previous run may have left behind that belong to single service ports.
fn is_per_service(chain: &str) -> bool {
    ["SKIFF-SVC-", "SKIFF-SVL-", "SKIFF-EXT-"]
        .iter()
        .any(|p| chain.starts_with(p))
}

/// What the kernel holds, as read with iptables-save: our chains and the built-in jumps.
#[derive(Default)]
struct Listing {
    chains: BTreeSet<(Table, String)>,
    rules: BTreeSet<(Table, String)>,
}

fn parse_save(table: Table, text: &str, into: &mut Listing) {
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(':') {
            if let Some(name) = rest.split_whitespace().next()
                && name.starts_with("SKIFF-")
            {
                into.chains.insert((table, name.to_owned()));
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            into.rules.insert((table, rule.to_owned()));
        }
    }
}

/// A chain's content as written by a restore (None: deleted).
type Written = ((Table, String), Option<Vec<String>>);

/// The ports changed services had before a sync.
pub type Previous = Vec<(ServiceKey, Vec<ServicePort>)>;

/// One restore's worth of writes, in the order a restore applies them.
#[derive(Default)]
struct Batch {
    writes: Vec<((Table, String), Vec<String>)>,
    deletes: Vec<String>,
    jumps: Vec<(Table, &'static str, &'static str)>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.deletes.is_empty() && self.jumps.is_empty()
    }

    /// The restore input, and what it leaves written.
    fn render(self) -> (String, Vec<Written>) {
        let mut text = String::new();
        let mut done: Vec<Written> = Vec::new();
        for table in [Table::Nat, Table::Filter] {
            let (mut decl, mut body, mut tail) = (String::new(), String::new(), String::new());
            for ((t, c), rules) in &self.writes {
                if *t != table {
                    continue;
                }
                let _ = writeln!(decl, ":{c} - [0:0]");
                for r in rules {
                    let _ = writeln!(body, "-A {c} {r}");
                }
            }
            if table == Table::Nat {
                for c in &self.deletes {
                    // Declared first, so the chain is empty when it is deleted.
                    let _ = writeln!(decl, ":{c} - [0:0]");
                    let _ = writeln!(tail, "-X {c}");
                }
            }
            for (t, hook, rule) in &self.jumps {
                if *t == table {
                    let _ = writeln!(tail, "-I {hook} 1 {rule}");
                }
            }
            if decl.is_empty() && tail.is_empty() {
                continue;
            }
            let _ = writeln!(text, "*{}", table.name());
            text.push_str(&decl);
            text.push_str(&body);
            text.push_str(&tail);
            text.push_str("COMMIT\n");
        }
        done.extend(self.writes.into_iter().map(|(tc, r)| (tc, Some(r))));
        done.extend(self.deletes.into_iter().map(|c| ((Table::Nat, c), None)));
        (text, done)
    }
}

struct Plan {
    /// Applied in order, each in one transaction.
    restores: Vec<Batch>,
    stats: SyncStats,
    previous: Previous,
}

/// What one sync did.
#[derive(Debug, Default)]
pub struct SyncStats {
    pub full: bool,
    pub services: usize,
    pub chains_written: usize,
    pub chains_deleted: usize,
    pub bytes: usize,
    pub restores: usize,
}

/// Shared chains per restore when a full sync's end is split: nf_tables' iptables-restore
/// (1.8.9) keeps the chain names a restore mentions in a sorted list, so its cost grows with
/// commands times names (one restore of all 64 buckets, a jump to each of 10,000 services,
/// took 3.6 s; groups of 8, 0.4 s in all), while each restore's commit validates the whole
/// table, so groups are no smaller than they need to be.
const SHARED_PER_RESTORE: usize = 16;

pub struct Proxier {
    ipt: Iptables,
    cluster_cidr: Ipv4Net,
    services: BTreeMap<ServiceKey, (Vec<ServicePort>, Vec<PortRules>)>,
    /// Services with rules in each shared chain.
    members: BTreeMap<Shared, BTreeSet<ServiceKey>>,
    /// Content of our non-static chains as last written.
    written: BTreeMap<(Table, String), Vec<String>>,
    /// Read the kernel's state before the next write (first sync, after a failure).
    relist: bool,
    /// The shared chains hold every service's rules as `written` says: true from the end of a
    /// full sync to the next failure. Until then a sync writes only its own services' chains
    /// (a shared chain rendered from the services given so far would drop the others' rules),
    /// and the full sync's end writes the rest.
    trusted: bool,
    /// What the last listing found: per-service chains (those nobody wants go at the end of
    /// the full sync) and built-in jumps that are missing (inserted then).
    listed: BTreeSet<String>,
    missing_jumps: Vec<(Table, &'static str, &'static str)>,
    /// Services given since the last full sync ended: at its end, the others are gone.
    seen: BTreeSet<ServiceKey>,
    /// Ports as last applied of services changed by failed syncs: the next successful sync
    /// reports them as the previous state, so that no stale conntrack entry is missed.
    unapplied: BTreeMap<ServiceKey, Vec<ServicePort>>,
}

impl Proxier {
    pub fn new(ipt: Iptables, cluster_cidr: Ipv4Net) -> Self {
        Self {
            ipt,
            cluster_cidr,
            services: BTreeMap::new(),
            members: BTreeMap::new(),
            written: BTreeMap::new(),
            relist: true,
            trusted: false,
            listed: BTreeSet::new(),
            missing_jumps: Vec::new(),
            seen: BTreeSet::new(),
            unapplied: BTreeMap::new(),
        }
    }

    /// A full sync may come in slices (the sync loop gives some services at a time, with
    /// changes in between): one nf_tables restore of 10,000 services takes 7.5 s, so slices
    /// keep a change from waiting behind it. A legacy restore replaces the whole table
    /// whatever it writes, so there a full sync is one restore.
    pub fn sliced(&self) -> bool {
        self.ipt.is_nft()
    }

    /// The ports of a service as last synced.
    pub fn ports(&self, key: &ServiceKey) -> &[ServicePort] {
        self.services.get(key).map_or(&[], |(p, _)| p.as_slice())
    }

    /// Applies the changes; returns what it did and the ports each changed service had before.
    /// On error the caller must make the next sync a full one.
    pub fn sync(&mut self, changes: Changes) -> Result<(SyncStats, Previous), IptablesError> {
        let ipt = self.ipt;
        self.apply(
            changes,
            || {
                let mut l = Listing::default();
                for t in [Table::Nat, Table::Filter] {
                    parse_save(t, &ipt.save(t.name())?, &mut l);
                }
                Ok(l)
            },
            |input| ipt.restore(input),
        )
    }

    /// `sync` with the kernel's two operations given: reading our chains, and a restore.
    fn apply<E>(
        &mut self,
        changes: Changes,
        list: impl FnOnce() -> Result<Listing, E>,
        mut restore: impl FnMut(&str) -> Result<(), E>,
    ) -> Result<(SyncStats, Previous), E> {
        if self.relist {
            let l = list()?;
            self.adopt(&l);
        }
        let mut plan = self.plan(changes);
        // The oldest applied state of each service wins.
        for (k, ports) in plan.previous {
            self.unapplied.entry(k).or_insert(ports);
        }
        for batch in plan.restores {
            let (input, written) = batch.render();
            plan.stats.bytes += input.len();
            plan.stats.restores += 1;
            if let Err(e) = restore(&input) {
                self.relist = true;
                self.trusted = false;
                self.seen.clear();
                return Err(e);
            }
            self.commit(written);
        }
        if plan.stats.full {
            self.trusted = true;
            self.seen.clear();
            self.listed.clear();
            self.missing_jumps.clear();
        }
        let previous = std::mem::take(&mut self.unapplied).into_iter().collect();
        Ok((plan.stats, previous))
    }

    /// Takes in what the kernel holds.
    fn adopt(&mut self, l: &Listing) {
        self.listed = l
            .chains
            .iter()
            .filter(|(t, c)| *t == Table::Nat && is_per_service(c))
            .map(|(_, c)| c.clone())
            .collect();
        self.missing_jumps = JUMPS
            .iter()
            .filter(|(t, hook, rule)| !l.rules.contains(&(*t, format!("{hook} {rule}"))))
            .copied()
            .collect();
    }

    /// Updates the rendered services and returns the restores that write them.
    fn plan(&mut self, changes: Changes) -> Plan {
        let full = changes.full;
        let mut stats = SyncStats {
            full,
            services: changes.services.len(),
            ..SyncStats::default()
        };
        let mut updates: Vec<(ServiceKey, Vec<ServicePort>)> =
            changes.services.into_iter().collect();
        self.seen.extend(updates.iter().map(|(k, _)| k.clone()));
        if full {
            let gone: Vec<ServiceKey> = self
                .services
                .keys()
                .filter(|k| !self.seen.contains(*k))
                .cloned()
                .collect();
            updates.extend(gone.into_iter().map(|k| (k, Vec::new())));
        }
        // Shared chains may be written now (else the full sync's end writes them).
        let shared_ok = self.trusted || full;
        let mut dirty: BTreeSet<Shared> = BTreeSet::new();
        let mut dropped: BTreeSet<String> = BTreeSet::new();
        let mut own: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut previous = Vec::with_capacity(updates.len());
        for (key, ports) in updates {
            if self.services.get(&key).is_some_and(|(p, _)| *p == ports) {
                // As it was (most of a full sync): its own chains are written again as they are.
                for (c, body) in self.owned_rules(&key) {
                    own.insert(c.clone(), body.clone());
                }
                previous.push((key, ports));
                continue;
            }
            let before = self.shared_rules(&key);
            dropped.extend(self.owned_rules(&key).map(|(c, _)| c.clone()));
            previous.push((key.clone(), self.replace(&key, ports)));
            let after = self.shared_rules(&key);
            // A slice of a full sync mostly gives services as they were: their shared chains
            // need no look.
            if before != after {
                dirty.extend(before.iter().chain(&after).map(|(sh, _)| *sh));
            }
            for (c, body) in self.owned_rules(&key) {
                dropped.remove(c);
                own.insert(c.clone(), body.clone());
            }
        }
        if !shared_ok {
            // Still referenced from shared chains: they go as stale at the full sync's end.
            dropped.clear();
        }
        if full {
            dirty.extend(Shared::all());
            let wanted: BTreeSet<&String> = self
                .services
                .values()
                .flat_map(|(_, r)| r)
                .flat_map(|r| r.chains.iter().map(|(c, _)| c))
                .collect();
            // Chains of removed services, including those that vanished while no agent ran.
            let stale: Vec<String> = self
                .listed
                .iter()
                .chain(
                    self.written
                        .keys()
                        .filter(|(t, c)| *t == Table::Nat && is_per_service(c))
                        .map(|(_, c)| c),
                )
                .filter(|c| !wanted.contains(c))
                .cloned()
                .collect();
            dropped.extend(stale);
        }
        // Service chains jump to the mark chain, so until a full sync has ended it goes first;
        // its content never changes. The other static chains jump to shared chains.
        let (mark, statics): (Vec<_>, Vec<_>) = static_chains()
            .into_iter()
            .partition(|((_, c), _)| c == MARK_MASQ);
        let mut first = Batch::default();
        let mut last = Batch::default();
        if !self.trusted {
            first.writes.extend(mark);
        } else if full {
            last.writes.extend(mark);
        }
        first
            .writes
            .extend(own.into_iter().map(|(c, body)| ((Table::Nat, c), body)));
        let mut shared: Vec<((Table, String), Vec<String>)> = Vec::new();
        if shared_ok {
            for sh in dirty {
                let tc = sh.chain();
                let body = self.shared_content(sh);
                if full || self.written.get(&tc) != Some(&body) {
                    shared.push((tc, body));
                }
            }
        }
        if full {
            last.writes.extend(statics);
            last.jumps = self.missing_jumps.clone();
        }
        last.deletes = dropped.into_iter().collect();
        stats.chains_written = first.writes.len() + shared.len() + last.writes.len();
        stats.chains_deleted = last.deletes.len();
        let mut restores = vec![first];
        if full && self.sliced() {
            let mut rest = shared.into_iter().peekable();
            while rest.peek().is_some() {
                restores.push(Batch {
                    writes: rest.by_ref().take(SHARED_PER_RESTORE).collect(),
                    ..Batch::default()
                });
            }
            restores.push(last);
        } else {
            // One transaction: what a change writes is live all at once.
            let one = &mut restores[0];
            one.writes.extend(shared);
            one.writes.append(&mut last.writes);
            one.deletes = last.deletes;
            one.jumps = last.jumps;
        }
        restores.retain(|b| !b.is_empty());
        Plan {
            restores,
            stats,
            previous,
        }
    }

    /// Records what a successful restore wrote.
    fn commit(&mut self, written: Vec<Written>) {
        for (tc, rules) in written {
            match rules {
                Some(r) => self.written.insert(tc, r),
                None => self.written.remove(&tc),
            };
        }
        self.relist = false;
    }

    /// Renders the service's new ports in place of the old ones, which it returns.
    fn replace(&mut self, key: &ServiceKey, ports: Vec<ServicePort>) -> Vec<ServicePort> {
        for sh in self.touches(key) {
            if let Some(m) = self.members.get_mut(&sh) {
                m.remove(key);
                if m.is_empty() {
                    self.members.remove(&sh);
                }
            }
        }
        let before = self
            .services
            .remove(key)
            .map(|(p, _)| p)
            .unwrap_or_default();
        if ports.is_empty() {
            return before;
        }
        let rules: Vec<PortRules> = ports
            .iter()
            .map(|p| render_port(p, self.cluster_cidr))
            .collect();
        self.services.insert(key.clone(), (ports, rules));
        for sh in self.touches(key) {
            self.members.entry(sh).or_default().insert(key.clone());
        }
        before
    }

    /// Shared chains the service has rules in.
    fn touches(&self, key: &ServiceKey) -> BTreeSet<Shared> {
        self.services
            .get(key)
            .into_iter()
            .flat_map(|(_, r)| r)
            .flat_map(|r| r.shared.iter().map(|(sh, _)| *sh))
            .collect()
    }

    /// The service's rules in shared chains.
    fn shared_rules(&self, key: &ServiceKey) -> Vec<(Shared, String)> {
        self.services
            .get(key)
            .into_iter()
            .flat_map(|(_, r)| r)
            .flat_map(|r| r.shared.iter().cloned())
            .collect()
    }

    /// The service's own chains with their rules.
    fn owned_rules(&self, key: &ServiceKey) -> impl Iterator<Item = &(String, Vec<String>)> {
        self.services
            .get(key)
            .into_iter()
            .flat_map(|(_, r)| r)
            .flat_map(|r| r.chains.iter())
    }

    /// A shared chain's rules: those of its member services, sorted, each once (two services
    /// may share a local endpoint, hence a hairpin rule).
    fn shared_content(&self, sh: Shared) -> Vec<String> {
        let rules: BTreeSet<&String> = self
            .members
            .get(&sh)
            .into_iter()
            .flatten()
            .filter_map(|k| self.services.get(k))
            .flat_map(|(_, rules)| rules)
            .flat_map(|r| r.shared.iter())
            .filter(|(rsh, _)| *rsh == sh)
            .map(|(_, rule)| rule)
            .collect();
        rules.into_iter().cloned().collect()
    }
}

/// Removes every rule and chain of the iptables service proxy (a switch to the eBPF mode): the
/// jumps from the built-in chains first, then the chains. The pod network's own chains stay.
pub fn remove_all(ipt: &Iptables) -> Result<(), IptablesError> {
    let mut input = String::new();
    for t in [Table::Nat, Table::Filter] {
        let mut l = Listing::default();
        parse_save(t, &ipt.save(t.name())?, &mut l);
        let ours: Vec<&String> = l
            .chains
            .iter()
            .filter(|(_, c)| !crate::network::masq::is_network_chain(c))
            .map(|(_, c)| c)
            .collect();
        if ours.is_empty() {
            continue;
        }
        input.push_str(&format!("*{}\n", t.name()));
        for (_, rule) in &l.rules {
            let chain = rule.split_whitespace().next().unwrap_or_default();
            let target = rule.rsplit_once("-j ").map(|(_, j)| j.trim());
            if !chain.starts_with("SKIFF-") && target.is_some_and(|j| ours.contains(&&j.to_owned()))
            {
                input.push_str(&format!("-D {rule}\n"));
            }
        }
        for c in &ours {
            input.push_str(&format!("-F {c}\n"));
        }
        for c in &ours {
            input.push_str(&format!("-X {c}\n"));
        }
        input.push_str("COMMIT\n");
    }
    if input.is_empty() {
        return Ok(());
    }
    ipt.restore(&input)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::fake::{Fake, Origin, Outcome, Packet, Verdict};
    use super::*;
    use crate::proxy::model::Protocol;

    const NODE: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 10);
    const OUTSIDE: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 200);
    const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2); // on this node
    const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2); // on another node
    const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

    fn cidr() -> Ipv4Net {
        "10.244.0.0/16".parse().unwrap()
    }

    fn ep(ip: Ipv4Addr, local: bool) -> Endpoint {
        Endpoint {
            ip,
            port: 8080,
            ready: true,
            serving: true,
            terminating: false,
            local,
        }
    }

    fn port(name: &str, vip: Ipv4Addr, eps: Vec<Endpoint>) -> ServicePort {
        ServicePort {
            service: key(name),
            name: "http".into(),
            protocol: Protocol::Tcp,
            cluster_ip: Some(vip),
            port: 80,
            node_port: None,
            external_ips: Vec::new(),
            affinity_timeout: None,
            external_local: false,
            internal_local: false,
            health_check_node_port: None,
            endpoints: eps,
        }
    }

    fn key(name: &str) -> ServiceKey {
        ServiceKey {
            namespace: "default".into(),
            name: name.into(),
        }
    }

    fn listing(f: &Fake) -> Listing {
        let mut l = Listing::default();
        for t in [Table::Nat, Table::Filter] {
            for c in f.chains(t.name()) {
                if c.starts_with("SKIFF-") {
                    l.chains.insert((t, c));
                }
            }
            for (chain, rules) in &f.dump()[t.name()] {
                for r in rules {
                    l.rules.insert((t, format!("{chain} {}", r.join(" "))));
                }
            }
        }
        l
    }

    struct Node {
        proxier: Proxier,
        kernel: Fake,
    }

    impl Node {
        fn new() -> Self {
            Self::with(crate::iptables::NFT)
        }

        fn with(ipt: Iptables) -> Self {
            Self {
                proxier: Proxier::new(ipt, cidr()),
                kernel: Fake::new(),
            }
        }

        /// A new agent on this node's kernel.
        fn restarted(&self) -> Self {
            Self {
                proxier: Proxier::new(self.proxier.ipt, cidr()),
                kernel: self.kernel.clone(),
            }
        }

        fn sync(&mut self, full: bool, services: Vec<(&str, Vec<ServicePort>)>) -> SyncStats {
            let changes = Changes {
                full,
                services: services.into_iter().map(|(n, p)| (key(n), p)).collect(),
            };
            let l = listing(&self.kernel);
            let kernel = &mut self.kernel;
            let (stats, _) = self
                .proxier
                .apply(
                    changes,
                    || Ok(l),
                    |input| kernel.restore(input).map_err(|e| format!("{e}\n{input}")),
                )
                .unwrap_or_else(|e| panic!("{e}"));
            stats
        }

        fn send(
            &mut self,
            origin: Origin,
            src: Ipv4Addr,
            dst: Ipv4Addr,
            dport: u16,
            pick: usize,
        ) -> Outcome {
            let pkt = Packet {
                src,
                dst,
                proto: "tcp",
                dport,
            };
            self.kernel
                .trace(origin, pkt, &[NODE, Ipv4Addr::LOCALHOST], pick)
        }
    }

    #[test]
    fn cluster_ip_balances_over_ready_endpoints_and_keeps_pod_sources() {
        let mut n = Node::new();
        n.sync(
            true,
            vec![(
                "web",
                vec![port("web", VIP, vec![ep(POD_A, true), ep(POD_B, false)])],
            )],
        );
        let first = n.send(Origin::Routed, Ipv4Addr::new(10, 244, 1, 9), VIP, 80, 0);
        assert_eq!(first.dnat, Some((POD_A, 8080)));
        assert!(!first.masquerade, "pod to service keeps the pod's address");
        let second = n.send(Origin::Routed, Ipv4Addr::new(10, 244, 1, 9), VIP, 80, 1);
        assert_eq!(second.dnat, Some((POD_B, 8080)));
        // The node itself has no pod address: masquerade so replies come back.
        let node = n.send(Origin::Local, NODE, VIP, 80, 1);
        assert_eq!(node.dnat, Some((POD_B, 8080)));
        assert!(node.masquerade);
        // Another port of the VIP is not a service.
        assert_eq!(n.send(Origin::Routed, POD_B, VIP, 81, 0).dnat, None);
    }

    #[test]
    fn a_service_without_endpoints_rejects() {
        let mut n = Node::new();
        n.sync(true, vec![("web", vec![port("web", VIP, vec![])])]);
        let out = n.send(Origin::Routed, POD_A, VIP, 80, 0);
        assert_eq!(out.verdict, Verdict::Reject);
        assert_eq!(
            n.send(Origin::Local, NODE, VIP, 80, 0).verdict,
            Verdict::Reject
        );
    }

    #[test]
    fn a_pod_reaching_itself_through_its_service_is_masqueraded() {
        let mut n = Node::new();
        n.sync(
            true,
            vec![("web", vec![port("web", VIP, vec![ep(POD_A, true)])])],
        );
        let out = n.send(Origin::Routed, POD_A, VIP, 80, 0);
        assert_eq!(out.dnat, Some((POD_A, 8080)));
        assert!(out.masquerade);
    }

    #[test]
    fn node_ports_masquerade_with_cluster_policy_and_keep_the_client_with_local() {
        let mut n = Node::new();
        let mut p = port("web", VIP, vec![ep(POD_A, true), ep(POD_B, false)]);
        p.node_port = Some(30080);
        n.sync(true, vec![("web", vec![p.clone()])]);
        let out = n.send(Origin::Routed, OUTSIDE, NODE, 30080, 1);
        assert_eq!(out.dnat, Some((POD_B, 8080)));
        assert!(out.masquerade);
        // Loopback is not a NodePort address.
        assert_eq!(
            n.send(
                Origin::Local,
                Ipv4Addr::LOCALHOST,
                Ipv4Addr::LOCALHOST,
                30080,
                0
            )
            .dnat,
            None
        );

        p.external_local = true;
        n.sync(false, vec![("web", vec![p.clone()])]);
        for pick in 0..2 {
            let out = n.send(Origin::Routed, OUTSIDE, NODE, 30080, pick);
            assert_eq!(out.dnat, Some((POD_A, 8080)), "only the local endpoint");
            assert!(!out.masquerade, "the backend sees the client");
        }
        // Pods may still use every endpoint.
        assert_eq!(
            n.send(Origin::Routed, POD_A, NODE, 30080, 1).dnat,
            Some((POD_B, 8080))
        );

        // No local endpoint: external traffic is dropped, not sent elsewhere.
        p.endpoints = vec![ep(POD_B, false)];
        n.sync(false, vec![("web", vec![p])]);
        let out = n.send(Origin::Routed, OUTSIDE, NODE, 30080, 0);
        assert_eq!((out.dnat, out.verdict), (None, Verdict::Drop));
    }

    #[test]
    fn external_ips_and_internal_traffic_policy() {
        let mut n = Node::new();
        let eip = Ipv4Addr::new(192, 168, 77, 7);
        let mut p = port("web", VIP, vec![ep(POD_A, true), ep(POD_B, false)]);
        p.external_ips = vec![eip];
        p.internal_local = true;
        n.sync(true, vec![("web", vec![p.clone()])]);
        let out = n.send(Origin::Routed, OUTSIDE, eip, 80, 1);
        assert_eq!(out.dnat, Some((POD_B, 8080)));
        assert!(out.masquerade);
        for pick in 0..2 {
            assert_eq!(
                n.send(Origin::Routed, POD_B, VIP, 80, pick).dnat,
                Some((POD_A, 8080))
            );
        }
        p.endpoints = vec![ep(POD_B, false)];
        n.sync(false, vec![("web", vec![p])]);
        assert_eq!(
            n.send(Origin::Routed, POD_B, VIP, 80, 0).verdict,
            Verdict::Drop
        );
    }

    #[test]
    fn client_ip_affinity_sticks_to_the_first_choice() {
        let mut n = Node::new();
        let mut p = port("web", VIP, vec![ep(POD_A, true), ep(POD_B, false)]);
        p.affinity_timeout = Some(30);
        n.sync(true, vec![("web", vec![p])]);
        let client = Ipv4Addr::new(10, 244, 3, 3);
        assert_eq!(
            n.send(Origin::Routed, client, VIP, 80, 1).dnat,
            Some((POD_B, 8080))
        );
        for pick in 0..2 {
            assert_eq!(
                n.send(Origin::Routed, client, VIP, 80, pick).dnat,
                Some((POD_B, 8080))
            );
        }
        n.kernel.forget_recent();
        assert_eq!(
            n.send(Origin::Routed, client, VIP, 80, 0).dnat,
            Some((POD_A, 8080))
        );
    }

    /// Random changes applied as partial syncs must leave the kernel exactly as a full sync of
    /// the final state would, and every sync after the first must touch only what changed.
    #[test]
    fn partial_syncs_converge_to_the_full_sync_state() {
        for ipt in [crate::iptables::NFT, crate::iptables::LEGACY] {
            partial_syncs_converge(ipt);
        }
    }

    fn partial_syncs_converge(ipt: Iptables) {
        let mut n = Node::with(ipt);
        let mut state: BTreeMap<String, Vec<ServicePort>> = BTreeMap::new();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |m: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % m
        };
        n.sync(true, vec![]);
        for round in 0..300 {
            let name = format!("s{}", next(40));
            let ports = if next(5) == 0 {
                Vec::new()
            } else {
                let vip = Ipv4Addr::new(10, 96, 0, 1 + next(120) as u8);
                let eps = (0..next(4))
                    .map(|i| {
                        ep(
                            Ipv4Addr::new(10, 244, (next(3) + 1) as u8, 10 + i as u8),
                            next(2) == 0,
                        )
                    })
                    .collect();
                let mut p = port(&name, vip, eps);
                if next(3) == 0 {
                    p.node_port = Some(30000 + next(100) as u16);
                    p.external_local = next(2) == 0;
                }
                p.affinity_timeout = (next(4) == 0).then_some(60);
                vec![p]
            };
            state.insert(name.clone(), ports.clone());
            let stats = n.sync(false, vec![(&name, ports)]);
            assert!(stats.chains_written <= 8, "round {round}: {stats:?}");
        }
        let mut fresh = Node::with(ipt);
        fresh.sync(
            true,
            state.iter().map(|(k, v)| (k.as_str(), v.clone())).collect(),
        );
        assert_same(&n.kernel, &fresh.kernel);
    }

    /// Two kernels hold the same rules (a shared chain's rules may come in another order).
    fn assert_same(x: &Fake, y: &Fake) {
        let mut a = x.dump();
        let mut b = y.dump();
        for d in [&mut a, &mut b] {
            for chains in d.values_mut() {
                for (c, rules) in chains.iter_mut() {
                    if c.starts_with("SKIFF-SVCS-")
                        || c == NODEPORTS
                        || c == SERVICES
                        || c == EXTERNAL
                    {
                        rules.sort();
                    }
                }
            }
        }
        assert_eq!(a, b);
    }

    #[test]
    fn a_restart_adopts_the_rules_and_removes_leftovers() {
        let mut n = Node::new();
        n.sync(
            true,
            vec![
                ("a", vec![port("a", VIP, vec![ep(POD_A, true)])]),
                (
                    "b",
                    vec![port(
                        "b",
                        Ipv4Addr::new(10, 96, 0, 11),
                        vec![ep(POD_B, false)],
                    )],
                ),
            ],
        );
        let jumps = n.kernel.rules("nat", "PREROUTING");
        // A new agent that only knows service a.
        let mut again = Node {
            proxier: Proxier::new(crate::iptables::NFT, cidr()),
            kernel: n.kernel.clone(),
        };
        again.sync(
            true,
            vec![("a", vec![port("a", VIP, vec![ep(POD_A, true)])])],
        );
        assert_eq!(
            again.kernel.rules("nat", "PREROUTING"),
            jumps,
            "jumps are not duplicated"
        );
        let svc_chains = again
            .kernel
            .chains("nat")
            .into_iter()
            .filter(|c| c.starts_with("SKIFF-SVC-"))
            .count();
        assert_eq!(svc_chains, 1);
        assert_eq!(
            again.send(Origin::Routed, POD_B, VIP, 80, 0).dnat,
            Some((POD_A, 8080))
        );
        assert_eq!(
            again
                .send(Origin::Routed, POD_A, Ipv4Addr::new(10, 96, 0, 11), 80, 0)
                .dnat,
            None
        );
    }

    /// A full sync in slices after a restart: services not given yet keep working from the
    /// rules the previous agent left, nothing is deleted before the last slice, and the end
    /// leaves what one full sync would. Then a change is one restore again.
    #[test]
    fn a_full_sync_in_slices_adopts_and_converges() {
        let vip = |d: u8| Ipv4Addr::new(10, 96, 0, d);
        fn svc(name: &str, d: u8, e: Ipv4Addr) -> (&str, Vec<ServicePort>) {
            let vip = Ipv4Addr::new(10, 96, 0, d);
            (name, vec![port(name, vip, vec![ep(e, false)])])
        }
        let pod = |d: u8| Ipv4Addr::new(10, 244, 2, d);
        let mut n = Node::new();
        let st = n.sync(
            true,
            vec![
                svc("a", 10, pod(10)),
                svc("b", 11, pod(11)),
                svc("c", 12, pod(12)),
            ],
        );
        assert!(st.restores > 1, "the end of a full sync is split: {st:?}");
        let mut again = n.restarted();
        again.sync(false, vec![svc("a", 10, pod(20))]);
        let to = |n: &mut Node, d: u8| n.send(Origin::Routed, POD_A, vip(d), 80, 0).dnat;
        assert_eq!(to(&mut again, 10), Some((pod(20), 8080)), "a slice is live");
        assert_eq!(to(&mut again, 11), Some((pod(11), 8080)), "adopted");
        assert_eq!(
            to(&mut again, 12),
            Some((pod(12), 8080)),
            "nothing deleted yet"
        );
        // A new service mid-way, then the last slice; c went while no agent ran.
        again.sync(false, vec![svc("d", 13, pod(13))]);
        again.sync(true, vec![svc("b", 11, pod(11)), svc("d", 13, pod(13))]);
        assert_eq!(to(&mut again, 12), None, "c is gone");
        let mut fresh = Node::new();
        fresh.sync(
            true,
            vec![
                svc("a", 10, pod(20)),
                svc("b", 11, pod(11)),
                svc("d", 13, pod(13)),
            ],
        );
        assert_same(&again.kernel, &fresh.kernel);
        let st = again.sync(false, vec![svc("b", 11, pod(21))]);
        assert_eq!(st.restores, 1);
        assert_eq!(to(&mut again, 11), Some((pod(21), 8080)));
    }
}
