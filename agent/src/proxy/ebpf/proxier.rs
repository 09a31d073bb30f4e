//! The eBPF backend of the service model: the same `Changes` the iptables backend renders
//! become map writes. Each service port gets a stable id whose backend slots hold its
//! endpoints; each of its frontends (ClusterIP, external IPs) points at that id. A change is a
//! handful of map updates for the services that changed; a full sync also removes frontends
//! nobody wants any more (what an earlier agent left).

use std::collections::{BTreeMap, HashMap, HashSet};

use skiff_ebpf_common::{PROTO_TCP, PROTO_UDP, ServiceKey as Frontend};

use super::{Datapath, EbpfError, wire_addr, wire_port};
use crate::proxy::model::{Changes, Protocol, ServiceKey, ServicePort};

/// One service port as programmed.
#[derive(Clone, Debug, PartialEq)]
struct Programmed {
    id: u32,
    slots: u32,
    frontends: Vec<Frontend>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    pub full: bool,
    pub services: usize,
    pub frontends_written: usize,
    pub frontends_removed: usize,
}

pub struct Proxier {
    dp: Datapath,
    programmed: BTreeMap<ServiceKey, BTreeMap<String, Programmed>>,
    ids: HashMap<String, u32>,
    free: Vec<u32>,
    next: u32,
}

fn proto(p: Protocol) -> Option<u8> {
    match p {
        Protocol::Tcp => Some(PROTO_TCP),
        Protocol::Udp => Some(PROTO_UDP),
        // Not translated by the datapath yet.
        Protocol::Sctp => None,
    }
}

/// Backends as (address, port).
type Backends = Vec<(std::net::Ipv4Addr, u16)>;

/// The frontends of one service port and the backends new connections may go to.
fn desired(sp: &ServicePort) -> Option<(Vec<Frontend>, Backends)> {
    let proto = proto(sp.protocol)?;
    let vip = sp.cluster_ip?;
    let frontends = std::iter::once(vip)
        .chain(sp.external_ips.iter().copied())
        .map(|ip| Frontend {
            addr: wire_addr(ip),
            port: wire_port(sp.port),
            proto,
            _pad: 0,
        })
        .collect();
    let eps = if sp.internal_local {
        sp.local_endpoints()
    } else {
        sp.cluster_endpoints()
    };
    Some((frontends, eps.iter().map(|e| (e.ip, e.port)).collect()))
}

impl Proxier {
    pub fn new(dp: Datapath) -> Self {
        Self {
            dp,
            programmed: BTreeMap::new(),
            ids: HashMap::new(),
            free: Vec::new(),
            next: 1,
        }
    }

    pub fn datapath_mut(&mut self) -> &mut Datapath {
        &mut self.dp
    }

    fn id_for(&mut self, port_id: &str) -> u32 {
        if let Some(id) = self.ids.get(port_id) {
            return *id;
        }
        let id = self.free.pop().unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        });
        self.ids.insert(port_id.to_owned(), id);
        id
    }

    fn release(&mut self, port_id: &str) {
        if let Some(id) = self.ids.remove(port_id) {
            self.free.push(id);
        }
    }

    pub fn sync(&mut self, changes: Changes) -> Result<SyncStats, EbpfError> {
        let mut stats = SyncStats {
            full: changes.full,
            services: changes.services.len(),
            ..SyncStats::default()
        };
        for (svc, ports) in changes.services {
            let old = self.programmed.remove(&svc).unwrap_or_default();
            let mut now: BTreeMap<String, Programmed> = BTreeMap::new();
            for sp in &ports {
                let Some((frontends, backends)) = desired(sp) else {
                    continue;
                };
                let port_id = sp.id();
                let id = self.id_for(&port_id);
                for f in &frontends {
                    self.dp.set_service(*f, id, &backends)?;
                    stats.frontends_written += 1;
                }
                let slots = backends.len() as u32;
                if let Some(before) = old.get(&port_id)
                    && before.slots > slots
                {
                    self.dp.trim_backends(id, slots, before.slots)?;
                }
                now.insert(
                    port_id,
                    Programmed {
                        id,
                        slots,
                        frontends,
                    },
                );
            }
            for (port_id, before) in &old {
                let kept = now.get(port_id);
                for f in &before.frontends {
                    if !kept.is_some_and(|k| k.frontends.contains(f)) {
                        let slots = if kept.is_some() { 0 } else { before.slots };
                        self.dp.remove_service(*f, before.id, slots)?;
                        stats.frontends_removed += 1;
                    }
                }
                if kept.is_none() {
                    self.dp.trim_backends(before.id, 0, before.slots)?;
                    self.release(port_id);
                }
            }
            if !now.is_empty() {
                self.programmed.insert(svc, now);
            }
        }
        if stats.full {
            let wanted: HashSet<Frontend> = self
                .programmed
                .values()
                .flat_map(|ports| ports.values().flat_map(|p| p.frontends.iter().copied()))
                .collect();
            for (f, v) in self.dp.frontends()? {
                if !wanted.contains(&f) {
                    self.dp.remove_service(f, v.id, u32::from(v.count))?;
                    stats.frontends_removed += 1;
                }
            }
        }
        Ok(stats)
    }
}
