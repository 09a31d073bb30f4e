//! The cluster zone: the records the Kubernetes DNS specification defines, computed at query
//! time from the Services and EndpointSlices the agent already watches. Watch events replace
//! one compact entry each, so a change is visible to the very next query.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::RwLock;

use hickory_proto::rr::rdata::{A, CNAME, NS, PTR, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What the zone says about one question.
#[derive(Debug, PartialEq)]
pub enum Lookup {
    /// The name has records of the asked type.
    Answer {
        answers: Vec<Record>,
        additionals: Vec<Record>,
    },
    /// The name exists, but has no record of the asked type (NOERROR, empty answer).
    NoData,
    /// No such name in the cluster zone.
    NxDomain,
    /// Not a cluster name: the upstream resolvers answer it.
    External,
}

#[derive(Clone, Debug, PartialEq)]
struct Port {
    /// Lowercased, as DNS compares names.
    name: String,
    /// `tcp`, `udp` or `sctp`, as in `_http._tcp`.
    protocol: String,
    port: u16,
}

#[derive(Clone, Debug, PartialEq)]
struct Svc {
    /// Empty for headless Services (and ExternalName ones).
    cluster_ips: Vec<Ipv4Addr>,
    external_name: Option<String>,
    ports: Vec<Port>,
}

#[derive(Clone, Debug, PartialEq)]
struct Endpoint {
    ip: Ipv4Addr,
    /// Lowercased `hostname` of the endpoint (a pod's hostname within the Service's subdomain).
    hostname: Option<String>,
    ready: bool,
}

#[derive(Clone, Debug, PartialEq)]
struct Slice {
    namespace: String,
    service: String,
    endpoints: Vec<Endpoint>,
    ports: Vec<Port>,
}

#[derive(Default)]
struct Records {
    /// Services by namespace, then name.
    services: HashMap<String, HashMap<String, Svc>>,
    /// Slices by namespace, Service, slice name.
    slices: HashMap<String, HashMap<String, HashMap<String, Slice>>>,
    /// Where each slice (namespace, slice name) is filed, so a relabelled one moves.
    slice_owner: HashMap<(String, String), String>,
    /// ClusterIP -> (namespace, Service), for PTR queries.
    by_ip: HashMap<Ipv4Addr, (String, String)>,
}

/// The zone settings, fixed for the agent's lifetime.
#[derive(Clone, Debug)]
pub struct ZoneConfig {
    /// e.g. `cluster.local`.
    pub domain: String,
    /// TTL of every cluster answer, in seconds.
    pub ttl: u32,
    /// Reverse lookups inside these ranges are the cluster's to answer (NXDOMAIN when unknown).
    pub service_cidr: Ipv4Net,
    pub cluster_cidr: Ipv4Net,
}

pub struct Zone {
    cfg: ZoneConfig,
    /// The domain's labels, lowercased, in query order (`["cluster", "local"]`).
    domain_labels: Vec<String>,
    domain: Name,
    records: RwLock<Records>,
}

fn lower(s: &str) -> String {
    s.to_ascii_lowercase()
}

fn ports_of_service(svc: &Service) -> Vec<Port> {
    svc.spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .filter_map(|p| {
            Some(Port {
                name: lower(p.name.as_deref().filter(|n| !n.is_empty())?),
                protocol: lower(p.protocol.as_deref().unwrap_or("TCP")),
                port: u16::try_from(p.port).ok()?,
            })
        })
        .collect()
}

fn compact_service(svc: &Service) -> Svc {
    let spec = svc.spec.as_ref();
    let kind = spec.and_then(|s| s.type_.as_deref()).unwrap_or("ClusterIP");
    let external_name = (kind == "ExternalName")
        .then(|| spec.and_then(|s| s.external_name.clone()))
        .flatten();
    let mut cluster_ips: Vec<Ipv4Addr> = spec
        .into_iter()
        .flat_map(|s| {
            s.cluster_ips
                .iter()
                .flatten()
                .chain(s.cluster_ip.iter())
                .filter_map(|ip| ip.parse().ok())
        })
        .collect();
    cluster_ips.sort_unstable();
    cluster_ips.dedup();
    if external_name.is_some() {
        cluster_ips.clear();
    }
    Svc {
        cluster_ips,
        external_name,
        ports: ports_of_service(svc),
    }
}

fn compact_slice(slice: &EndpointSlice) -> Option<Slice> {
    if slice.address_type != "IPv4" {
        return None;
    }
    let service = slice
        .metadata
        .labels
        .as_ref()?
        .get(SERVICE_NAME_LABEL)?
        .clone();
    let endpoints = slice
        .endpoints
        .iter()
        .flat_map(|e| {
            // Kubernetes: a missing ready condition means ready.
            let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            let hostname = e.hostname.as_deref().map(lower);
            e.addresses.iter().filter_map(move |a| {
                Some(Endpoint {
                    ip: a.parse().ok()?,
                    hostname: hostname.clone(),
                    ready,
                })
            })
        })
        .collect();
    let ports = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some(Port {
                name: lower(p.name.as_deref().filter(|n| !n.is_empty())?),
                protocol: lower(p.protocol.as_deref().unwrap_or("TCP")),
                port: u16::try_from(p.port?).ok()?,
            })
        })
        .collect();
    Some(Slice {
        namespace: slice.metadata.namespace.clone().unwrap_or_default(),
        service,
        endpoints,
        ports,
    })
}

/// `10-244-1-5` for 10.244.1.5: the name CoreDNS gives an endpoint without a hostname.
fn dashed(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("{a}-{b}-{c}-{d}")
}

fn undashed(label: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = label.split('-');
    for o in &mut octets {
        *o = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then_some(Ipv4Addr::from(octets))
}

impl Records {
    fn service(&self, ns: &str, name: &str) -> Option<&Svc> {
        self.services.get(ns)?.get(name)
    }

    fn slices_of(&self, ns: &str, name: &str) -> impl Iterator<Item = &Slice> {
        self.slices
            .get(ns)
            .and_then(|m| m.get(name))
            .into_iter()
            .flat_map(|m| m.values())
    }

    /// The ready endpoints of a Service, each address once.
    fn ready_endpoints(&self, ns: &str, name: &str) -> Vec<&Endpoint> {
        let mut out: Vec<&Endpoint> = Vec::new();
        for e in self.slices_of(ns, name).flat_map(|s| &s.endpoints) {
            if e.ready && !out.iter().any(|o| o.ip == e.ip) {
                out.push(e);
            }
        }
        out
    }

    fn set_service(&mut self, ns: &str, name: &str, svc: Option<Svc>) {
        let old = match &svc {
            Some(s) => self
                .services
                .entry(ns.to_owned())
                .or_default()
                .insert(name.to_owned(), s.clone()),
            None => {
                let m = self.services.get_mut(ns);
                let old = m.and_then(|m| m.remove(name));
                if self.services.get(ns).is_some_and(HashMap::is_empty) {
                    self.services.remove(ns);
                }
                old
            }
        };
        for ip in old.iter().flat_map(|s| &s.cluster_ips) {
            self.by_ip.remove(ip);
        }
        for ip in svc.iter().flat_map(|s| &s.cluster_ips) {
            self.by_ip.insert(*ip, (ns.to_owned(), name.to_owned()));
        }
    }

    fn set_slice(&mut self, ns: &str, slice_name: &str, slice: Option<Slice>) {
        let key = (ns.to_owned(), slice_name.to_owned());
        if let Some(owner) = self.slice_owner.remove(&key)
            && let Some(by_svc) = self.slices.get_mut(ns)
        {
            if let Some(m) = by_svc.get_mut(&owner) {
                m.remove(slice_name);
                if m.is_empty() {
                    by_svc.remove(&owner);
                }
            }
            if by_svc.is_empty() {
                self.slices.remove(ns);
            }
        }
        if let Some(s) = slice {
            self.slice_owner.insert(key, s.service.clone());
            self.slices
                .entry(ns.to_owned())
                .or_default()
                .entry(s.service.clone())
                .or_default()
                .insert(slice_name.to_owned(), s);
        }
    }
}

/// `(namespace, name)` of an object that has both.
fn key_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<(&str, &str)> {
    Some((meta.namespace.as_deref()?, meta.name.as_deref()?))
}

impl Zone {
    pub fn new(cfg: ZoneConfig) -> Result<Self, hickory_proto::ProtoError> {
        let domain_text = cfg.domain.trim_end_matches('.').to_ascii_lowercase();
        let domain = Name::from_ascii(format!("{domain_text}."))?;
        Ok(Self {
            domain_labels: domain_text.split('.').map(str::to_owned).collect(),
            domain,
            cfg,
            records: RwLock::default(),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Records> {
        self.records.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Records> {
        self.records.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn upsert_service(&self, svc: &Service) {
        let Some((ns, name)) = key_of(&svc.metadata) else {
            return;
        };
        self.write()
            .set_service(ns, name, Some(compact_service(svc)));
    }

    pub fn delete_service(&self, svc: &Service) {
        let Some((ns, name)) = key_of(&svc.metadata) else {
            return;
        };
        self.write().set_service(ns, name, None);
    }

    /// The complete list after a (re)list: whatever is not in it is gone.
    pub fn replace_services(&self, all: &[Service]) {
        let mut r = self.write();
        r.services.clear();
        r.by_ip.clear();
        for svc in all {
            if let Some((ns, name)) = key_of(&svc.metadata) {
                r.set_service(ns, name, Some(compact_service(svc)));
            }
        }
    }

    pub fn upsert_slice(&self, slice: &EndpointSlice) {
        let Some((ns, name)) = key_of(&slice.metadata) else {
            return;
        };
        self.write().set_slice(ns, name, compact_slice(slice));
    }

    pub fn delete_slice(&self, slice: &EndpointSlice) {
        let Some((ns, name)) = key_of(&slice.metadata) else {
            return;
        };
        self.write().set_slice(ns, name, None);
    }

    pub fn replace_slices(&self, all: &[EndpointSlice]) {
        let mut r = self.write();
        r.slices.clear();
        r.slice_owner.clear();
        for s in all {
            if let Some((ns, name)) = key_of(&s.metadata) {
                r.set_slice(ns, name, compact_slice(s));
            }
        }
    }

    fn name(&self, relative: &str) -> Option<Name> {
        Name::from_ascii(format!("{relative}.{}", self.domain)).ok()
    }

    fn record(&self, name: &Name, rdata: RData) -> Record {
        Record::from_rdata(name.clone(), self.cfg.ttl, rdata)
    }

    /// The zone's SOA record, for the authority section of negative answers.
    pub fn soa(&self) -> Record {
        let mname = self.name("ns.dns").unwrap_or_else(|| self.domain.clone());
        let rname = self
            .name("hostmaster")
            .unwrap_or_else(|| self.domain.clone());
        let ttl = self.cfg.ttl;
        self.record(
            &self.domain,
            RData::SOA(SOA::new(mname, rname, 1, 7200, 1800, 86400, ttl)),
        )
    }

    /// Answers one question (`qname` as asked, any case).
    pub fn lookup(&self, qname: &Name, qtype: RecordType) -> Lookup {
        let labels: Vec<String> = qname
            .iter()
            .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
            .collect();
        if labels.len() >= 2 && labels[labels.len() - 2..] == ["in-addr", "arpa"] {
            return self.reverse(&labels[..labels.len() - 2], qname, qtype);
        }
        let d = self.domain_labels.len();
        if labels.len() < d || labels[labels.len() - d..] != self.domain_labels[..] {
            return Lookup::External;
        }
        let rel: Vec<&str> = labels[..labels.len() - d]
            .iter()
            .map(String::as_str)
            .collect();
        let r = self.read();
        match rel.as_slice() {
            [] => match qtype {
                RecordType::SOA => self.only(self.soa()),
                RecordType::NS => match self.name("ns.dns") {
                    Some(ns) => self.only(self.record(qname, RData::NS(NS(ns)))),
                    None => Lookup::NoData,
                },
                _ => Lookup::NoData,
            },
            ["svc"] | ["pod"] | [_, "pod"] => Lookup::NoData,
            [ns, "svc"] if r.services.contains_key(*ns) => Lookup::NoData,
            [name, ns, "svc"] => self.service(&r, qname, qtype, ns, name),
            [first, name, ns, "svc"] => match r.service(ns, name) {
                // `_tcp.<svc>`: an empty non-terminal of the SRV names.
                Some(s) if first.starts_with('_') => {
                    let proto = &first[1..];
                    let has = s.ports.iter().any(|p| p.protocol == proto)
                        || r.slices_of(ns, name)
                            .any(|sl| sl.ports.iter().any(|p| p.protocol == proto));
                    if has {
                        Lookup::NoData
                    } else {
                        Lookup::NxDomain
                    }
                }
                Some(s) if s.cluster_ips.is_empty() && s.external_name.is_none() => {
                    self.endpoint_name(&r, qname, qtype, ns, name, first)
                }
                _ => Lookup::NxDomain,
            },
            [port, proto, name, ns, "svc"] if port.starts_with('_') && proto.starts_with('_') => {
                self.srv(&r, qname, qtype, ns, name, &port[1..], &proto[1..])
            }
            [ip, _ns, "pod"] => match undashed(ip) {
                Some(ip) => self.address(qname, qtype, vec![ip]),
                None => Lookup::NxDomain,
            },
            _ => Lookup::NxDomain,
        }
    }

    fn only(&self, record: Record) -> Lookup {
        Lookup::Answer {
            answers: vec![record],
            additionals: vec![],
        }
    }

    /// A records (or NODATA for any other type) at an existing name.
    fn address(&self, qname: &Name, qtype: RecordType, ips: Vec<Ipv4Addr>) -> Lookup {
        if !matches!(qtype, RecordType::A | RecordType::ANY) || ips.is_empty() {
            return Lookup::NoData;
        }
        Lookup::Answer {
            answers: ips
                .into_iter()
                .map(|ip| self.record(qname, RData::A(A(ip))))
                .collect(),
            additionals: vec![],
        }
    }

    fn service(
        &self,
        r: &Records,
        qname: &Name,
        qtype: RecordType,
        ns: &str,
        name: &str,
    ) -> Lookup {
        let Some(svc) = r.service(ns, name) else {
            return Lookup::NxDomain;
        };
        if let Some(target) = &svc.external_name {
            return match Name::from_ascii(format!("{}.", target.trim_end_matches('.'))) {
                Ok(t) => self.only(self.record(qname, RData::CNAME(CNAME(t)))),
                Err(_) => Lookup::NoData,
            };
        }
        let ips = if svc.cluster_ips.is_empty() {
            r.ready_endpoints(ns, name).iter().map(|e| e.ip).collect()
        } else {
            svc.cluster_ips.clone()
        };
        self.address(qname, qtype, ips)
    }

    /// `<hostname>.<svc>.<ns>.svc`: a ready endpoint of a headless Service, by its hostname or
    /// by its dashed address.
    fn endpoint_name(
        &self,
        r: &Records,
        qname: &Name,
        qtype: RecordType,
        ns: &str,
        name: &str,
        label: &str,
    ) -> Lookup {
        let ips: Vec<Ipv4Addr> = r
            .ready_endpoints(ns, name)
            .iter()
            .filter(|e| e.hostname.as_deref() == Some(label) || dashed(e.ip) == label)
            .map(|e| e.ip)
            .collect();
        if ips.is_empty() {
            return Lookup::NxDomain;
        }
        self.address(qname, qtype, ips)
    }

    #[allow(clippy::too_many_arguments)]
    fn srv(
        &self,
        r: &Records,
        qname: &Name,
        qtype: RecordType,
        ns: &str,
        name: &str,
        port: &str,
        proto: &str,
    ) -> Lookup {
        let Some(svc) = r.service(ns, name) else {
            return Lookup::NxDomain;
        };
        let matches = |p: &&Port| p.name == port && p.protocol == proto;
        let mut answers = Vec::new();
        let mut additionals = Vec::new();
        if !svc.cluster_ips.is_empty() {
            let Some(p) = svc.ports.iter().find(matches) else {
                return Lookup::NxDomain;
            };
            if !matches!(qtype, RecordType::SRV | RecordType::ANY) {
                return Lookup::NoData;
            }
            let Some(target) = self.name(&format!("{name}.{ns}.svc")) else {
                return Lookup::NxDomain;
            };
            answers.push(self.record(qname, RData::SRV(SRV::new(0, 100, p.port, target.clone()))));
            additionals.extend(
                svc.cluster_ips
                    .iter()
                    .map(|ip| self.record(&target, RData::A(A(*ip)))),
            );
        } else {
            // Headless: one SRV per ready endpoint, at the endpoint port of that name.
            let mut targets: Vec<(u16, Endpoint)> = Vec::new();
            for sl in r.slices_of(ns, name) {
                let Some(p) = sl.ports.iter().find(matches) else {
                    continue;
                };
                for e in sl.endpoints.iter().filter(|e| e.ready) {
                    if !targets.iter().any(|(_, t)| t.ip == e.ip) {
                        targets.push((p.port, e.clone()));
                    }
                }
            }
            if targets.is_empty() {
                let named = svc.ports.iter().any(|p| matches(&p));
                return if named {
                    Lookup::NoData
                } else {
                    Lookup::NxDomain
                };
            }
            if !matches!(qtype, RecordType::SRV | RecordType::ANY) {
                return Lookup::NoData;
            }
            let weight = (100 / targets.len()).max(1) as u16;
            for (port, e) in targets {
                let host = e.hostname.clone().unwrap_or_else(|| dashed(e.ip));
                let Some(target) = self.name(&format!("{host}.{name}.{ns}.svc")) else {
                    continue;
                };
                answers.push(
                    self.record(qname, RData::SRV(SRV::new(0, weight, port, target.clone()))),
                );
                additionals.push(self.record(&target, RData::A(A(e.ip))));
            }
        }
        Lookup::Answer {
            answers,
            additionals,
        }
    }

    /// `d.c.b.a.in-addr.arpa`: Service IPs and headless endpoints name themselves; other
    /// addresses in the cluster's ranges are unknown; the rest of the world is upstream's.
    fn reverse(&self, rev: &[String], qname: &Name, qtype: RecordType) -> Lookup {
        let ip = (rev.len() == 4)
            .then(|| {
                let mut o = [0u8; 4];
                for (i, l) in rev.iter().rev().enumerate() {
                    o[i] = l.parse().ok()?;
                }
                Some(Ipv4Addr::from(o))
            })
            .flatten();
        let Some(ip) = ip else {
            return Lookup::External;
        };
        let ours = self.cfg.service_cidr.contains(&ip) || self.cfg.cluster_cidr.contains(&ip);
        let r = self.read();
        let target = if let Some((ns, name)) = r.by_ip.get(&ip) {
            self.name(&format!("{name}.{ns}.svc"))
        } else {
            r.slices.iter().find_map(|(ns, by_svc)| {
                by_svc.iter().find_map(|(svc, slices)| {
                    let headless = r
                        .service(ns, svc)
                        .is_some_and(|s| s.cluster_ips.is_empty() && s.external_name.is_none());
                    let e = slices
                        .values()
                        .flat_map(|s| &s.endpoints)
                        .find(|e| e.ready && e.ip == ip)
                        .filter(|_| headless)?;
                    let host = e.hostname.clone().unwrap_or_else(|| dashed(ip));
                    self.name(&format!("{host}.{svc}.{ns}.svc"))
                })
            })
        };
        match target {
            Some(t) if matches!(qtype, RecordType::PTR | RecordType::ANY) => {
                self.only(self.record(qname, RData::PTR(PTR(t))))
            }
            Some(_) => Lookup::NoData,
            None if ours => Lookup::NxDomain,
            None => Lookup::External,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    pub(crate) fn zone() -> Zone {
        Zone::new(ZoneConfig {
            domain: "cluster.local".into(),
            ttl: 5,
            service_cidr: "10.96.0.0/16".parse().unwrap(),
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
        })
        .unwrap()
    }

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }

    fn slice(v: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(v).unwrap()
    }

    /// A zone with a ClusterIP Service `web`, a headless `db` (two ready endpoints, one not),
    /// an ExternalName `ext` and a Service `api` in namespace `prod`.
    pub(crate) fn populated() -> Zone {
        let z = zone();
        z.replace_services(&[
            svc(json!({"metadata": {"name": "web", "namespace": "default"},
                "spec": {"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
                         "ports": [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]}})),
            svc(json!({"metadata": {"name": "db", "namespace": "default"},
                "spec": {"clusterIP": "None", "ports": [{"name": "sql", "port": 5432}]}})),
            svc(json!({"metadata": {"name": "ext", "namespace": "default"},
                "spec": {"type": "ExternalName", "externalName": "example.org"}})),
            svc(json!({"metadata": {"name": "api", "namespace": "prod"},
                "spec": {"clusterIP": "10.96.0.30", "ports": [{"port": 443}]}})),
        ]);
        z.replace_slices(&[slice(json!({
            "metadata": {"name": "db-abc", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.244.1.5"], "hostname": "db-0", "conditions": {"ready": true}},
                {"addresses": ["10.244.2.7"], "conditions": {"ready": true}},
                {"addresses": ["10.244.2.8"], "conditions": {"ready": false}}],
            "ports": [{"name": "sql", "port": 15432, "protocol": "TCP"}]}))]);
        z
    }

    fn n(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn a_records(l: &Lookup) -> Vec<Ipv4Addr> {
        let Lookup::Answer { answers, .. } = l else {
            panic!("expected an answer, got {l:?}")
        };
        let mut ips: Vec<Ipv4Addr> = answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect();
        ips.sort();
        ips
    }

    #[test]
    fn a_cluster_ip_service_answers_its_cluster_ip_in_any_case() {
        let z = populated();
        let l = z.lookup(&n("WEB.default.svc.Cluster.Local."), RecordType::A);
        assert_eq!(
            a_records(&l),
            vec!["10.96.0.20".parse::<Ipv4Addr>().unwrap()]
        );
        let l = z.lookup(&n("api.prod.svc.cluster.local."), RecordType::A);
        assert_eq!(
            a_records(&l),
            vec!["10.96.0.30".parse::<Ipv4Addr>().unwrap()]
        );
    }

    #[test]
    fn a_headless_service_answers_its_ready_endpoints_only() {
        let z = populated();
        let l = z.lookup(&n("db.default.svc.cluster.local."), RecordType::A);
        assert_eq!(
            a_records(&l),
            vec![
                "10.244.1.5".parse::<Ipv4Addr>().unwrap(),
                "10.244.2.7".parse().unwrap()
            ]
        );
        let by_host = z.lookup(&n("db-0.db.default.svc.cluster.local."), RecordType::A);
        assert_eq!(
            a_records(&by_host),
            vec!["10.244.1.5".parse::<Ipv4Addr>().unwrap()]
        );
        let by_ip = z.lookup(
            &n("10-244-2-7.db.default.svc.cluster.local."),
            RecordType::A,
        );
        assert_eq!(
            a_records(&by_ip),
            vec!["10.244.2.7".parse::<Ipv4Addr>().unwrap()]
        );
        let not_ready = z.lookup(
            &n("10-244-2-8.db.default.svc.cluster.local."),
            RecordType::A,
        );
        assert_eq!(not_ready, Lookup::NxDomain);
    }

    #[test]
    fn readiness_changes_show_in_the_next_answer() {
        let z = populated();
        z.upsert_slice(&slice(json!({
            "metadata": {"name": "db-abc", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.2.8"], "conditions": {"ready": true}}],
            "ports": [{"name": "sql", "port": 15432}]})));
        let l = z.lookup(&n("db.default.svc.cluster.local."), RecordType::A);
        assert_eq!(
            a_records(&l),
            vec!["10.244.2.8".parse::<Ipv4Addr>().unwrap()]
        );
        z.delete_slice(&slice(
            json!({"metadata": {"name": "db-abc", "namespace": "default"},
            "addressType": "IPv4", "endpoints": []}),
        ));
        let l = z.lookup(&n("db.default.svc.cluster.local."), RecordType::A);
        assert_eq!(l, Lookup::NoData);
    }

    #[test]
    fn srv_records_name_the_service_or_each_headless_endpoint() {
        let z = populated();
        let Lookup::Answer {
            answers,
            additionals,
        } = z.lookup(
            &n("_http._tcp.web.default.svc.cluster.local."),
            RecordType::SRV,
        )
        else {
            panic!("no SRV answer")
        };
        let RData::SRV(srv) = &answers[0].data else {
            panic!()
        };
        assert_eq!(
            (srv.port, srv.target.to_ascii()),
            (80, "web.default.svc.cluster.local.".into())
        );
        assert_eq!(additionals.len(), 1);
        let l = z.lookup(
            &n("_dns._udp.web.default.svc.cluster.local."),
            RecordType::SRV,
        );
        assert!(matches!(l, Lookup::Answer { .. }));
        // The protocol is part of the name.
        let l = z.lookup(
            &n("_http._udp.web.default.svc.cluster.local."),
            RecordType::SRV,
        );
        assert_eq!(l, Lookup::NxDomain);

        let Lookup::Answer {
            answers,
            additionals,
        } = z.lookup(
            &n("_sql._tcp.db.default.svc.cluster.local."),
            RecordType::SRV,
        )
        else {
            panic!("no headless SRV answer")
        };
        let mut targets: Vec<(u16, String)> = answers
            .iter()
            .map(|r| match &r.data {
                RData::SRV(s) => (s.port, s.target.to_ascii()),
                _ => panic!(),
            })
            .collect();
        targets.sort();
        assert_eq!(
            targets,
            vec![
                (15432, "10-244-2-7.db.default.svc.cluster.local.".into()),
                (15432, "db-0.db.default.svc.cluster.local.".into())
            ]
        );
        assert_eq!(additionals.len(), 2);
    }

    #[test]
    fn nodata_for_names_that_exist_and_nxdomain_for_those_that_do_not() {
        let z = populated();
        let nodata = [
            ("web.default.svc.cluster.local.", RecordType::AAAA),
            ("web.default.svc.cluster.local.", RecordType::MX),
            ("default.svc.cluster.local.", RecordType::A),
            ("svc.cluster.local.", RecordType::A),
            ("cluster.local.", RecordType::A),
            ("_tcp.web.default.svc.cluster.local.", RecordType::SRV),
        ];
        for (name, t) in nodata {
            assert_eq!(z.lookup(&n(name), t), Lookup::NoData, "{name} {t}");
        }
        let nx = [
            "nope.default.svc.cluster.local.",
            "web.nope.svc.cluster.local.",
            "nope.svc.cluster.local.",
            "x.web.default.svc.cluster.local.",
            "a.b.c.d.e.f.cluster.local.",
            "10-244-1.default.pod.cluster.local.",
            "_sctp.web.default.svc.cluster.local.",
        ];
        for name in nx {
            assert_eq!(
                z.lookup(&n(name), RecordType::A),
                Lookup::NxDomain,
                "{name}"
            );
        }
        assert!(matches!(
            z.lookup(&n("cluster.local."), RecordType::SOA),
            Lookup::Answer { .. }
        ));
    }

    #[test]
    fn other_names_are_external() {
        let z = populated();
        for name in [
            "example.org.",
            "local.",
            "cluster.local.example.org.",
            "svc.local.",
        ] {
            assert_eq!(
                z.lookup(&n(name), RecordType::A),
                Lookup::External,
                "{name}"
            );
        }
    }

    #[test]
    fn pod_names_are_their_dashed_address() {
        let z = populated();
        let l = z.lookup(&n("10-244-3-9.default.pod.cluster.local."), RecordType::A);
        assert_eq!(
            a_records(&l),
            vec!["10.244.3.9".parse::<Ipv4Addr>().unwrap()]
        );
    }

    #[test]
    fn external_name_services_are_cnames() {
        let z = populated();
        let Lookup::Answer { answers, .. } =
            z.lookup(&n("ext.default.svc.cluster.local."), RecordType::A)
        else {
            panic!()
        };
        assert_eq!(&answers[0].data, &RData::CNAME(CNAME(n("example.org."))));
    }

    #[test]
    fn reverse_lookups_name_services_and_headless_endpoints() {
        let z = populated();
        let ptr = |q: &str| match z.lookup(&n(q), RecordType::PTR) {
            Lookup::Answer { answers, .. } => match &answers[0].data {
                RData::PTR(p) => p.0.to_ascii(),
                other => panic!("{other:?}"),
            },
            other => format!("{other:?}"),
        };
        assert_eq!(
            ptr("20.0.96.10.in-addr.arpa."),
            "web.default.svc.cluster.local."
        );
        assert_eq!(
            ptr("5.1.244.10.in-addr.arpa."),
            "db-0.db.default.svc.cluster.local."
        );
        assert_eq!(ptr("99.0.96.10.in-addr.arpa."), "NxDomain");
        assert_eq!(ptr("1.2.0.192.in-addr.arpa."), "External");
    }

    #[test]
    fn a_deleted_or_readdressed_service_leaves_no_record_behind() {
        let z = populated();
        z.upsert_service(&svc(
            json!({"metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.21", "ports": [{"name": "http", "port": 80}]}}),
        ));
        let l = z.lookup(&n("web.default.svc.cluster.local."), RecordType::A);
        assert_eq!(
            a_records(&l),
            vec!["10.96.0.21".parse::<Ipv4Addr>().unwrap()]
        );
        assert_eq!(
            z.lookup(&n("20.0.96.10.in-addr.arpa."), RecordType::PTR),
            Lookup::NxDomain
        );
        z.delete_service(&svc(
            json!({"metadata": {"name": "web", "namespace": "default"}}),
        ));
        assert_eq!(
            z.lookup(&n("web.default.svc.cluster.local."), RecordType::A),
            Lookup::NxDomain
        );
    }
}
