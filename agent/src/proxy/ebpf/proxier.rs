//! The eBPF backend of the service model: the same `Changes` the iptables backend renders
//! become map writes. Each service port has one backend set (its cluster endpoints, or the
//! local ones under internalTrafficPolicy Local) and, under externalTrafficPolicy Local, a
//! second one of its local endpoints for traffic from outside. Frontends point at a set:
//! - internal scope (pods, the node's sockets): ClusterIP, external IPs, node address:NodePort;
//! - external scope (arriving on the uplink): external IPs and node address:NodePort, masqueraded
//!   to the node's address under externalTrafficPolicy Cluster.
//!
//! A change is a handful of map updates for the services that changed; a full sync also
//! removes frontends nobody wants any more (what an earlier agent left).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;

use skiff_ebpf_common::{
    PROTO_TCP, PROTO_UDP, SCOPE_EXTERNAL, SCOPE_INTERNAL, SVC_AFFINITY, SVC_MAGLEV, SVC_SNAT,
    ServiceKey as Frontend,
};

use super::{Datapath, EbpfError, wire_addr, wire_port};
use crate::proxy::iptables::Previous;
use crate::proxy::model::{Changes, Endpoint, Protocol, ServiceKey, ServicePort};

/// Backends as (address, port).
type Backends = Vec<(Ipv4Addr, u16)>;

/// One backend set as programmed: its id and how many slots it fills.
#[derive(Clone, Debug, PartialEq)]
struct Set {
    id: u32,
    backends: Backends,
}

/// One service port as programmed.
#[derive(Clone, Debug, PartialEq, Default)]
struct Programmed {
    /// By set name (the port id, plus "#external" for the local set).
    sets: BTreeMap<String, Set>,
    frontends: Vec<Frontend>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// The sync ended a full sync (frontends nobody wants were swept).
    pub full: bool,
    pub services: usize,
    pub frontends_written: usize,
    pub frontends_removed: usize,
    pub connections_forgotten: usize,
}

/// The datapath, shared with whoever attaches it to new pod interfaces.
pub type Shared = std::sync::Arc<std::sync::Mutex<Datapath>>;

/// How a new connection picks its backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Algorithm {
    #[default]
    Random,
    /// Consistent hashing of the 5-tuple over a Maglev table per backend set.
    Maglev,
}

pub struct Proxier {
    dp: Shared,
    algorithm: Algorithm,
    /// The node's addresses, where NodePorts are served.
    node_addrs: Vec<Ipv4Addr>,
    programmed: BTreeMap<ServiceKey, BTreeMap<String, Programmed>>,
    ports: BTreeMap<ServiceKey, Vec<ServicePort>>,
    ids: HashMap<String, u32>,
    /// Ids in use (values of `ids`).
    claimed: HashSet<u32>,
    free: Vec<u32>,
    next: u32,
    /// What an earlier agent left in the map: its frontends keep their ids (so no backend
    /// slot is ever rewritten under a frontend of another service) until the first full sync.
    adopted: HashMap<Frontend, (u32, u16)>,
    /// Every frontend the map may hold (what an earlier agent left and what this one wrote
    /// and did not remove), with the generation it was last written in. A full sync rewrites
    /// every wanted frontend, so what it leaves at an older generation nobody wants: the sweep
    /// removes it without reading the map or gathering what is wanted.
    in_map: HashMap<Frontend, u64>,
    /// The generation of writes: it moves on with the first sync after a sweep or a failure,
    /// so that it is never older than the full sync under way.
    generation: u64,
    /// A generation is open: no sweep or failure since it began.
    open: bool,
}

/// What one sync gathers besides its statistics.
#[derive(Default)]
struct Work {
    previous: Previous,
    /// UDP backends that left a service: their tracked flows are forgotten.
    gone: BTreeSet<(Ipv4Addr, u16, u8)>,
}

fn proto(p: Protocol) -> Option<u8> {
    match p {
        Protocol::Tcp => Some(PROTO_TCP),
        Protocol::Udp => Some(PROTO_UDP),
        // Not translated by the datapath yet.
        Protocol::Sctp => None,
    }
}

fn backends(eps: &[&Endpoint]) -> Backends {
    eps.iter().map(|e| (e.ip, e.port)).collect()
}

/// A frontend with the set it leads to and its flags.
struct Wanted {
    frontend: Frontend,
    set: String,
    flags: u16,
}

/// What one service port should look like in the maps.
fn desired(
    sp: &ServicePort,
    node_addrs: &[Ipv4Addr],
) -> Option<(Vec<Wanted>, BTreeMap<String, Backends>)> {
    let proto = proto(sp.protocol)?;
    let vip = sp.cluster_ip?;
    let id = sp.id();
    let external_set = format!("{id}#external");
    let mut sets = BTreeMap::new();
    sets.insert(
        id.clone(),
        backends(&if sp.internal_local {
            sp.local_endpoints()
        } else {
            sp.cluster_endpoints()
        }),
    );
    let (ext_set, ext_flags) = if sp.external_local {
        sets.insert(external_set.clone(), backends(&sp.local_endpoints()));
        (external_set, 0)
    } else {
        (id.clone(), SVC_SNAT)
    };
    let affinity = if sp.affinity_timeout.is_some() {
        SVC_AFFINITY
    } else {
        0
    };
    let key = |ip: Ipv4Addr, port: u16, scope: u8| Frontend {
        addr: wire_addr(ip),
        port: wire_port(port),
        proto,
        scope,
    };
    let mut wanted = vec![Wanted {
        frontend: key(vip, sp.port, SCOPE_INTERNAL),
        set: id.clone(),
        flags: affinity,
    }];
    let mut external: Vec<(Ipv4Addr, u16)> =
        sp.external_ips.iter().map(|ip| (*ip, sp.port)).collect();
    if let Some(np) = sp.node_port {
        external.extend(node_addrs.iter().map(|ip| (*ip, np)));
    }
    for (ip, port) in external {
        // From inside the cluster these reach every endpoint, unmasqueraded, as kube-proxy's
        // short-circuit for in-cluster traffic does.
        wanted.push(Wanted {
            frontend: key(ip, port, SCOPE_INTERNAL),
            set: id.clone(),
            flags: affinity,
        });
        wanted.push(Wanted {
            frontend: key(ip, port, SCOPE_EXTERNAL),
            set: ext_set.clone(),
            flags: affinity | ext_flags,
        });
    }
    Some((wanted, sets))
}

impl Proxier {
    pub fn new(
        dp: Shared,
        node_addrs: Vec<Ipv4Addr>,
        cluster: ipnet::Ipv4Net,
    ) -> Result<Self, EbpfError> {
        let existing = {
            let mut dp = dp.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            dp.set_cluster(cluster)?;
            dp.frontends()?
        };
        let adopted: HashMap<Frontend, (u32, u16)> = existing
            .into_iter()
            .map(|(f, v)| (f, (v.id, v.count)))
            .collect();
        let next = adopted.values().map(|(id, _)| id + 1).max().unwrap_or(1);
        let in_map = adopted.keys().map(|f| (*f, 0)).collect();
        Ok(Self {
            dp,
            algorithm: Algorithm::Random,
            node_addrs,
            programmed: BTreeMap::new(),
            ports: BTreeMap::new(),
            ids: HashMap::new(),
            claimed: HashSet::new(),
            free: Vec::new(),
            next,
            adopted,
            in_map,
            generation: 0,
            open: false,
        })
    }

    pub fn with_algorithm(mut self, algorithm: Algorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    pub fn datapath(&self) -> &Shared {
        &self.dp
    }

    /// The ports of a service as last synced.
    pub fn ports(&self, key: &ServiceKey) -> &[ServicePort] {
        self.ports.get(key).map_or(&[], Vec::as_slice)
    }

    /// The set's id: the one it has, else the one an earlier agent gave it (`hint`), else a
    /// free one.
    fn id_for(&mut self, set: &str, hint: Option<u32>) -> u32 {
        if let Some(id) = self.ids.get(set) {
            return *id;
        }
        let id = match hint.filter(|h| !self.claimed.contains(h)) {
            Some(h) => h,
            None => self.free.pop().unwrap_or_else(|| {
                self.next += 1;
                self.next - 1
            }),
        };
        self.claimed.insert(id);
        self.ids.insert(set.to_owned(), id);
        id
    }

    fn release(&mut self, set: &str) {
        if let Some(id) = self.ids.remove(set) {
            self.claimed.remove(&id);
            self.free.push(id);
        }
    }

    /// Applies the changes; returns what it did and the ports each changed service had before.
    /// A full sync may come in slices (the sync loop gives a few services at a time, between
    /// changes); the one marked `full` ends it, and frontends nobody wants are swept then.
    pub fn sync(&mut self, changes: Changes) -> Result<(SyncStats, Previous), EbpfError> {
        let mut stats = SyncStats {
            full: changes.full,
            services: changes.services.len(),
            ..SyncStats::default()
        };
        let shared = std::sync::Arc::clone(&self.dp);
        // A panic elsewhere while holding it leaves the maps as consistent as any failed sync.
        let mut dp = shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let dp = &mut *dp;
        if !std::mem::replace(&mut self.open, true) {
            self.generation += 1;
        }
        let mut work = Work::default();
        if let Err(e) = self.apply_all(dp, changes, &mut stats, &mut work) {
            // Whatever this sync left half-written is older than the next generation.
            self.open = false;
            return Err(e);
        }
        if !work.gone.is_empty() {
            let gone: Vec<_> = work.gone.into_iter().collect();
            stats.connections_forgotten = dp.forget_backends(&gone)?;
        }
        Ok((stats, work.previous))
    }

    /// Applies every changed service, then, at the end of a full sync, sweeps (which closes
    /// the generation).
    fn apply_all(
        &mut self,
        dp: &mut Datapath,
        changes: Changes,
        stats: &mut SyncStats,
        work: &mut Work,
    ) -> Result<(), EbpfError> {
        for (svc, ports) in changes.services {
            self.apply(dp, svc, ports, stats, work)?;
        }
        if changes.full {
            self.open = false;
            self.sweep(dp, stats)?;
        }
        Ok(())
    }

    /// Programs one service as `ports` describe it (none: it is gone).
    fn apply(
        &mut self,
        dp: &mut Datapath,
        svc: ServiceKey,
        ports: Vec<ServicePort>,
        stats: &mut SyncStats,
        work: &mut Work,
    ) -> Result<(), EbpfError> {
        let old = self.programmed.remove(&svc).unwrap_or_default();
        let mut now: BTreeMap<String, Programmed> = BTreeMap::new();
        for sp in &ports {
            let Some((wanted, sets)) = desired(sp, &self.node_addrs) else {
                continue;
            };
            let port_id = sp.id();
            let before = old.get(&port_id);
            let mut prog = Programmed::default();
            for (name, backends) in sets {
                let hint = wanted
                    .iter()
                    .filter(|w| w.set == name)
                    .find_map(|w| self.adopted.get(&w.frontend).map(|(id, _)| *id));
                let id = self.id_for(&name, hint);
                prog.sets.insert(name, Set { id, backends });
            }
            // Slots, then the table over them, then the frontends that count them.
            let maglev = self.algorithm == Algorithm::Maglev;
            for set in prog.sets.values() {
                dp.set_backends(set.id, &set.backends)?;
                if maglev {
                    dp.set_maglev(set.id, &super::maglev::table(&set.backends))?;
                }
            }
            for w in &wanted {
                let set = &prog.sets[&w.set];
                let flags = w.flags | if maglev { SVC_MAGLEV } else { 0 };
                self.in_map.insert(w.frontend, self.generation);
                dp.put_frontend(
                    w.frontend,
                    set.id,
                    set.backends.len(),
                    flags,
                    sp.affinity_timeout.unwrap_or(0),
                )?;
                stats.frontends_written += 1;
            }
            prog.frontends = wanted.into_iter().map(|w| w.frontend).collect();
            for (name, set) in &prog.sets {
                let Some(old_set) = before.and_then(|b| b.sets.get(name)) else {
                    continue;
                };
                let (slots, had) = (set.backends.len() as u32, old_set.backends.len() as u32);
                if had > slots {
                    dp.trim_backends(set.id, slots, had)?;
                }
                if sp.protocol == Protocol::Udp {
                    let p = PROTO_UDP;
                    work.gone.extend(
                        old_set
                            .backends
                            .iter()
                            .filter(|b| !set.backends.contains(b))
                            .map(|(ip, port)| (*ip, *port, p)),
                    );
                }
            }
            if let Some(b) = before {
                self.drop_unwanted(dp, b, Some(&prog), stats, &mut work.gone, sp.protocol)?;
            }
            now.insert(port_id, prog);
        }
        for (port_id, before) in &old {
            if !now.contains_key(port_id) {
                let udp = before.frontends.iter().any(|f| f.proto == PROTO_UDP);
                let proto = if udp { Protocol::Udp } else { Protocol::Tcp };
                self.drop_unwanted(dp, before, None, stats, &mut work.gone, proto)?;
            }
        }
        if !now.is_empty() {
            self.programmed.insert(svc.clone(), now);
        }
        let before = if ports.is_empty() {
            self.ports.remove(&svc)
        } else {
            self.ports.insert(svc.clone(), ports)
        };
        work.previous.push((svc, before.unwrap_or_default()));
        Ok(())
    }

    /// The end of a full sync: frontends nobody wants leave the map, and so do the backend
    /// sets of an earlier agent that nobody took over.
    fn sweep(&mut self, dp: &mut Datapath, stats: &mut SyncStats) -> Result<(), EbpfError> {
        let current = self.generation;
        let unwanted: Vec<Frontend> = self
            .in_map
            .iter()
            .filter(|(_, g)| **g < current)
            .map(|(f, _)| *f)
            .collect();
        for f in unwanted {
            dp.remove_service(f, 0, 0)?;
            self.in_map.remove(&f);
            stats.frontends_removed += 1;
        }
        // Ids of the earlier agent nobody took over: their slots go, the ids are free.
        let mut left: BTreeMap<u32, u16> = BTreeMap::new();
        for (id, count) in std::mem::take(&mut self.adopted).into_values() {
            if !self.claimed.contains(&id) {
                let c = left.entry(id).or_default();
                *c = (*c).max(count);
            }
        }
        for (id, count) in left {
            dp.trim_backends(id, 0, u32::from(count))?;
            dp.set_maglev(id, &[])?;
            self.free.push(id);
        }
        Ok(())
    }

    /// Removes what `before` programmed and `now` (the port's new state, if any) no longer
    /// wants: frontends first, then whole backend sets.
    fn drop_unwanted(
        &mut self,
        dp: &mut Datapath,
        before: &Programmed,
        now: Option<&Programmed>,
        stats: &mut SyncStats,
        gone: &mut BTreeSet<(Ipv4Addr, u16, u8)>,
        protocol: Protocol,
    ) -> Result<(), EbpfError> {
        for f in &before.frontends {
            if !now.is_some_and(|n| n.frontends.contains(f)) {
                dp.remove_service(*f, 0, 0)?;
                self.in_map.remove(f);
                stats.frontends_removed += 1;
            }
        }
        for (name, set) in &before.sets {
            if now.is_some_and(|n| n.sets.contains_key(name)) {
                continue;
            }
            dp.trim_backends(set.id, 0, set.backends.len() as u32)?;
            dp.set_maglev(set.id, &[])?;
            if protocol == Protocol::Udp {
                gone.extend(
                    set.backends
                        .iter()
                        .map(|(ip, port)| (*ip, *port, PROTO_UDP)),
                );
            }
            self.release(name);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(external_local: bool) -> ServicePort {
        let ep = |i: u8, local: bool| Endpoint {
            ip: Ipv4Addr::new(10, 244, 1, i),
            port: 8080,
            ready: true,
            serving: true,
            terminating: false,
            local,
        };
        ServicePort {
            service: ServiceKey {
                namespace: "default".into(),
                name: "web".into(),
            },
            name: "http".into(),
            protocol: Protocol::Tcp,
            cluster_ip: Some(Ipv4Addr::new(10, 96, 0, 20)),
            port: 80,
            node_port: Some(30080),
            external_ips: vec![Ipv4Addr::new(192, 0, 2, 7)],
            affinity_timeout: Some(30),
            external_local,
            internal_local: false,
            health_check_node_port: None,
            endpoints: vec![ep(2, true), ep(3, false)],
        }
    }

    fn find(w: &[Wanted], ip: [u8; 4], port: u16, scope: u8) -> &Wanted {
        let key = Frontend {
            addr: wire_addr(Ipv4Addr::from(ip)),
            port: wire_port(port),
            proto: PROTO_TCP,
            scope,
        };
        w.iter()
            .find(|w| w.frontend == key)
            .unwrap_or_else(|| panic!("no frontend {ip:?}:{port} scope {scope}"))
    }

    #[test]
    fn cluster_policy_masquerades_external_traffic_only() {
        let node = Ipv4Addr::new(10, 213, 0, 11);
        let (w, sets) = desired(&port(false), &[node]).expect("proxied");
        assert_eq!(
            w.len(),
            5,
            "ClusterIP, then external IP and NodePort in both scopes"
        );
        assert_eq!(sets.len(), 1);
        let vip = find(&w, [10, 96, 0, 20], 80, SCOPE_INTERNAL);
        assert_eq!(vip.flags, SVC_AFFINITY);
        let np_in = find(&w, [10, 213, 0, 11], 30080, SCOPE_INTERNAL);
        assert_eq!(
            np_in.flags & SVC_SNAT,
            0,
            "in-cluster traffic keeps its source"
        );
        let np_ext = find(&w, [10, 213, 0, 11], 30080, SCOPE_EXTERNAL);
        assert_ne!(np_ext.flags & SVC_SNAT, 0);
        assert_eq!(np_ext.set, vip.set, "Cluster policy: every endpoint");
        let eip = find(&w, [192, 0, 2, 7], 80, SCOPE_EXTERNAL);
        assert_ne!(eip.flags & SVC_SNAT, 0);
    }

    #[test]
    fn local_policy_keeps_the_source_and_only_local_endpoints() {
        let (w, sets) = desired(&port(true), &[Ipv4Addr::new(10, 213, 0, 11)]).expect("proxied");
        let np_ext = find(&w, [10, 213, 0, 11], 30080, SCOPE_EXTERNAL);
        assert_eq!(np_ext.flags & SVC_SNAT, 0);
        assert_eq!(
            sets[&np_ext.set],
            vec![(Ipv4Addr::new(10, 244, 1, 2), 8080)]
        );
        let np_in = find(&w, [10, 213, 0, 11], 30080, SCOPE_INTERNAL);
        assert_eq!(
            sets[&np_in.set].len(),
            2,
            "in-cluster traffic reaches every endpoint"
        );
    }

    #[test]
    fn headless_and_sctp_ports_are_not_programmed() {
        let mut p = port(false);
        p.cluster_ip = None;
        assert!(desired(&p, &[]).is_none());
        let mut p = port(false);
        p.protocol = Protocol::Sctp;
        assert!(desired(&p, &[]).is_none());
    }
}
