//! The one service/endpoint model both dataplane backends program from. Watch events only
//! record objects here and mark their Service changed; a sync drains the changed set and asks
//! for the resolved ports of just those Services (or of all of them for a full sync).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// Kubernetes' default sessionAffinity ClientIP timeout (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// `namespace/name` of a Service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    fn parse(p: Option<&str>) -> Option<Self> {
        match p.unwrap_or("TCP") {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }
    /// The name iptables and conntrack use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }
}

/// One backend of a service port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// The endpoint's pod runs on this node.
    pub local: bool,
}

/// One port of a Service, with everything a dataplane needs to program it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub service: ServiceKey,
    /// The port's name ("" when the Service has a single unnamed port).
    pub name: String,
    pub protocol: Protocol,
    /// None for headless Services, which are not proxied (DNS serves them).
    pub cluster_ip: Option<Ipv4Addr>,
    pub port: u16,
    pub node_port: Option<u16>,
    pub external_ips: Vec<Ipv4Addr>,
    /// sessionAffinity ClientIP: its timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// externalTrafficPolicy Local (only meaningful with a NodePort or external IPs).
    pub external_local: bool,
    /// internalTrafficPolicy Local.
    pub internal_local: bool,
    pub health_check_node_port: Option<u16>,
    pub endpoints: Vec<Endpoint>,
}

impl ServicePort {
    /// `ns/name:port`, the name kube-proxy gives a service port.
    pub fn id(&self) -> String {
        if self.name.is_empty() {
            format!("{}:{}", self.service, self.protocol.as_str())
        } else {
            format!("{}:{}", self.service, self.name)
        }
    }

    /// Endpoints for traffic that may go anywhere in the cluster: the ready ones, or, when none
    /// is ready, those still serving while terminating (so a draining rollout keeps answering).
    pub fn cluster_endpoints(&self) -> Vec<&Endpoint> {
        pick(self.endpoints.iter())
    }

    /// The same choice among the endpoints on this node.
    pub fn local_endpoints(&self) -> Vec<&Endpoint> {
        pick(self.endpoints.iter().filter(|e| e.local))
    }

    pub fn has_external(&self) -> bool {
        self.node_port.is_some() || !self.external_ips.is_empty()
    }
}

fn pick<'a>(eps: impl Iterator<Item = &'a Endpoint> + Clone) -> Vec<&'a Endpoint> {
    let ready: Vec<&Endpoint> = eps.clone().filter(|e| e.ready).collect();
    if !ready.is_empty() {
        return ready;
    }
    eps.filter(|e| e.serving && e.terminating).collect()
}

/// The watched objects and what changed since the last sync.
#[derive(Default)]
pub struct Model {
    node: String,
    /// Service IPs this node answers itself (the cluster DNS address): never proxied, or the
    /// Service's missing endpoints would reject what the node's own server should receive.
    node_local: Vec<Ipv4Addr>,
    services: BTreeMap<ServiceKey, Arc<Service>>,
    /// The Service each slice (`namespace`, `name`) belongs to.
    slice_owner: BTreeMap<(String, String), ServiceKey>,
    /// Slices by Service, then by slice name.
    slices: BTreeMap<ServiceKey, BTreeMap<String, Arc<EndpointSlice>>>,
    changed: BTreeSet<ServiceKey>,
    full: bool,
}

/// What one sync must apply: every Service (full) or the changed ones; an empty port list means
/// the Service is gone (or has nothing to proxy).
pub struct Changes {
    pub full: bool,
    pub services: BTreeMap<ServiceKey, Vec<ServicePort>>,
}

fn key_of_service(svc: &Service) -> Option<ServiceKey> {
    Some(ServiceKey {
        namespace: svc.metadata.namespace.clone()?,
        name: svc.metadata.name.clone()?,
    })
}

fn key_of_slice(slice: &EndpointSlice) -> Option<((String, String), ServiceKey)> {
    let ns = slice.metadata.namespace.clone()?;
    let name = slice.metadata.name.clone()?;
    let svc = slice
        .metadata
        .labels
        .as_ref()?
        .get(SERVICE_NAME_LABEL)?
        .clone();
    Some((
        (ns.clone(), name),
        ServiceKey {
            namespace: ns,
            name: svc,
        },
    ))
}

impl Model {
    pub fn new(node: &str) -> Self {
        Self {
            node: node.to_owned(),
            full: true,
            ..Self::default()
        }
    }

    /// Leaves Services on this address to the node's own server.
    pub fn serve_locally(&mut self, ip: Ipv4Addr) {
        self.node_local.push(ip);
    }

    pub fn has_changes(&self) -> bool {
        self.full || !self.changed.is_empty()
    }

    /// A full sync is already due.
    pub fn full_pending(&self) -> bool {
        self.full
    }

    /// The next sync rewrites everything (after a failure, or periodically).
    pub fn force_full(&mut self) {
        self.full = true;
    }

    pub fn upsert_service(&mut self, svc: Service) {
        let Some(key) = key_of_service(&svc) else {
            return;
        };
        if self.services.get(&key).is_some_and(|old| **old == svc) {
            return;
        }
        self.changed.insert(key.clone());
        self.services.insert(key, Arc::new(svc));
    }

    pub fn delete_service(&mut self, svc: &Service) {
        if let Some(key) = key_of_service(svc)
            && self.services.remove(&key).is_some()
        {
            self.changed.insert(key);
        }
    }

    /// Replaces all Services after a (re)list; only what differs is marked changed.
    pub fn replace_services(&mut self, all: Vec<Service>) {
        let listed: BTreeSet<ServiceKey> = all.iter().filter_map(key_of_service).collect();
        let gone: Vec<ServiceKey> = self
            .services
            .keys()
            .filter(|k| !listed.contains(*k))
            .cloned()
            .collect();
        for k in gone {
            self.services.remove(&k);
            self.changed.insert(k);
        }
        for s in all {
            self.upsert_service(s);
        }
    }

    pub fn upsert_slice(&mut self, slice: EndpointSlice) {
        let Some((skey, svc)) = key_of_slice(&slice) else {
            return;
        };
        if let Some(old_svc) = self.slice_owner.get(&skey) {
            let same = self
                .slices
                .get(old_svc)
                .and_then(|m| m.get(&skey.1))
                .is_some_and(|old| **old == slice);
            if same && *old_svc == svc {
                return;
            }
            // A relabelled slice leaves its old Service.
            let old_svc = old_svc.clone();
            self.remove_slice(&skey, &old_svc);
        }
        self.changed.insert(svc.clone());
        self.slice_owner.insert(skey.clone(), svc.clone());
        self.slices
            .entry(svc)
            .or_default()
            .insert(skey.1, Arc::new(slice));
    }

    fn remove_slice(&mut self, skey: &(String, String), svc: &ServiceKey) {
        self.slice_owner.remove(skey);
        if let Some(m) = self.slices.get_mut(svc) {
            m.remove(&skey.1);
            if m.is_empty() {
                self.slices.remove(svc);
            }
        }
        self.changed.insert(svc.clone());
    }

    pub fn delete_slice(&mut self, slice: &EndpointSlice) {
        if let Some((skey, _)) = key_of_slice(slice)
            && let Some(svc) = self.slice_owner.get(&skey).cloned()
        {
            self.remove_slice(&skey, &svc);
        }
    }

    /// Replaces all slices after a (re)list; only what differs is marked changed.
    pub fn replace_slices(&mut self, all: Vec<EndpointSlice>) {
        let listed: BTreeSet<(String, String)> = all
            .iter()
            .filter_map(|s| Some(key_of_slice(s)?.0))
            .collect();
        let gone: Vec<((String, String), ServiceKey)> = self
            .slice_owner
            .iter()
            .filter(|(k, _)| !listed.contains(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (skey, svc) in gone {
            self.remove_slice(&skey, &svc);
        }
        for s in all {
            self.upsert_slice(s);
        }
    }

    /// Starts a full sync to be given in slices (`keys_after`), when one is due; the changes
    /// since are still to take.
    pub fn take_full(&mut self) -> bool {
        std::mem::take(&mut self.full)
    }

    /// Up to `n` Service keys in order after `after` (from the first when `None`): a sliced
    /// full sync walks the Services as they are at each slice, not a copy of them all.
    pub fn keys_after(&self, after: Option<&ServiceKey>, n: usize) -> Vec<ServiceKey> {
        use std::ops::Bound;
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.services
            .range((from, Bound::Unbounded))
            .take(n)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Drains the changes: the resolved ports of each changed Service (all Services when full).
    pub fn take_changes(&mut self) -> Changes {
        let full = std::mem::take(&mut self.full);
        let changed = std::mem::take(&mut self.changed);
        let keys: Vec<ServiceKey> = if full {
            self.services.keys().cloned().collect()
        } else {
            changed.into_iter().collect()
        };
        let services = keys
            .into_iter()
            .map(|k| {
                let ports = self.ports(&k);
                (k, ports)
            })
            .collect();
        Changes { full, services }
    }

    /// The proxied ports of one Service with their endpoints.
    pub fn ports(&self, key: &ServiceKey) -> Vec<ServicePort> {
        let Some(svc) = self.services.get(key) else {
            return Vec::new();
        };
        let ip = svc
            .spec
            .as_ref()
            .and_then(|s| s.cluster_ip.as_deref()?.parse::<Ipv4Addr>().ok());
        if ip.is_some_and(|ip| self.node_local.contains(&ip)) {
            return Vec::new();
        }
        let slices: Vec<&EndpointSlice> = self
            .slices
            .get(key)
            .into_iter()
            .flat_map(|m| m.values().map(|s| &**s))
            .collect();
        service_ports(key, svc, &slices, &self.node)
    }
}

/// Resolves a Service and its slices into proxied ports.
pub fn service_ports(
    key: &ServiceKey,
    svc: &Service,
    slices: &[&EndpointSlice],
    node: &str,
) -> Vec<ServicePort> {
    let Some(spec) = svc.spec.as_ref() else {
        return Vec::new();
    };
    let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
    if kind == "ExternalName" {
        return Vec::new();
    }
    let cluster_ip = spec
        .cluster_ip
        .as_deref()
        .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
    // Headless Services are answered by DNS, never proxied.
    let Some(cluster_ip) = cluster_ip else {
        return Vec::new();
    };
    let external_ips: Vec<Ipv4Addr> = spec
        .external_ips
        .iter()
        .flatten()
        .filter_map(|ip| ip.parse().ok())
        .collect();
    let node_ports = matches!(kind, "NodePort" | "LoadBalancer");
    let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref()?.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
    });
    let external_local = spec.external_traffic_policy.as_deref() == Some("Local")
        && (node_ports || !external_ips.is_empty());
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let health_check_node_port = spec
        .health_check_node_port
        .filter(|_| external_local)
        .and_then(|p| u16::try_from(p).ok());
    let mut out = Vec::new();
    for sp in spec.ports.iter().flatten() {
        let Some(protocol) = Protocol::parse(sp.protocol.as_deref()) else {
            continue;
        };
        let Ok(port) = u16::try_from(sp.port) else {
            continue;
        };
        let name = sp.name.clone().unwrap_or_default();
        let mut endpoints = Vec::new();
        for slice in slices {
            if slice.address_type != "IPv4" {
                continue;
            }
            let Some(ep_port) = slice.ports.iter().flatten().find(|p| {
                p.name.as_deref().unwrap_or("") == name
                    && Protocol::parse(p.protocol.as_deref()) == Some(protocol)
            }) else {
                continue;
            };
            let Some(ep_port) = ep_port.port.and_then(|p| u16::try_from(p).ok()) else {
                continue;
            };
            for ep in &slice.endpoints {
                let Some(ip) = ep.addresses.first().and_then(|a| a.parse().ok()) else {
                    continue;
                };
                let cond = ep.conditions.as_ref();
                // Kubernetes: an unknown ready condition means ready.
                let ready = cond.and_then(|c| c.ready).unwrap_or(true);
                let endpoint = Endpoint {
                    ip,
                    port: ep_port,
                    ready,
                    serving: cond.and_then(|c| c.serving).unwrap_or(ready),
                    terminating: cond.and_then(|c| c.terminating).unwrap_or(false),
                    local: ep.node_name.as_deref() == Some(node),
                };
                endpoints.push(endpoint);
            }
        }
        endpoints.sort();
        endpoints.dedup();
        out.push(ServicePort {
            service: key.clone(),
            name,
            protocol,
            cluster_ip: Some(cluster_ip),
            port,
            node_port: sp
                .node_port
                .filter(|_| node_ports)
                .and_then(|p| u16::try_from(p).ok()),
            external_ips: external_ips.clone(),
            affinity_timeout,
            external_local,
            internal_local,
            health_check_node_port,
            endpoints,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn svc(json: serde_json::Value) -> Service {
        serde_json::from_value(json).unwrap()
    }

    fn slice(name: &str, svc: &str, eps: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default",
                         "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": eps,
        }))
        .unwrap()
    }

    fn web_key() -> ServiceKey {
        ServiceKey {
            namespace: "default".into(),
            name: "web".into(),
        }
    }

    fn web() -> Service {
        svc(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.10", "type": "NodePort",
                     "ports": [{"name": "http", "port": 80, "nodePort": 30080}],
                     "sessionAffinity": "ClientIP"}
        }))
    }

    #[test]
    fn ports_join_service_and_slices() {
        let mut m = Model::new("n1");
        m.upsert_service(web());
        m.upsert_slice(slice(
            "web-a",
            "web",
            serde_json::json!([
                {"addresses": ["10.244.1.5"], "nodeName": "n1", "conditions": {"ready": true}},
                {"addresses": ["10.244.2.5"], "nodeName": "n2", "conditions": {"ready": false, "serving": true, "terminating": true}},
            ]),
        ));
        let c = m.take_changes();
        assert!(c.full);
        let ports = &c.services[&web_key()];
        assert_eq!(ports.len(), 1);
        let p = &ports[0];
        assert_eq!(p.node_port, Some(30080));
        assert_eq!(p.affinity_timeout, Some(DEFAULT_AFFINITY_TIMEOUT));
        assert_eq!(p.endpoints.len(), 2);
        // The terminating endpoint is a fallback only.
        assert_eq!(p.cluster_endpoints().len(), 1);
        assert!(p.cluster_endpoints()[0].local);
        assert!(!m.has_changes());
    }

    #[test]
    fn a_service_on_an_address_the_node_serves_itself_is_not_proxied() {
        let mut m = Model::new("n1");
        m.serve_locally("10.96.0.10".parse().unwrap());
        m.upsert_service(web());
        assert!(m.take_changes().services[&web_key()].is_empty());
    }

    #[test]
    fn terminating_endpoints_serve_when_nothing_is_ready() {
        let mut m = Model::new("n1");
        m.upsert_service(web());
        m.upsert_slice(slice(
            "web-a",
            "web",
            serde_json::json!([
                {"addresses": ["10.244.2.5"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["10.244.2.6"], "conditions": {"ready": false, "serving": false, "terminating": true}},
            ]),
        ));
        let ports = m.ports(&web_key());
        let eps = ports[0].cluster_endpoints();
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0].ip, Ipv4Addr::new(10, 244, 2, 5));
        assert!(ports[0].local_endpoints().is_empty());
    }

    #[test]
    fn only_touched_services_are_resynced_and_unchanged_objects_are_ignored() {
        let mut m = Model::new("n1");
        m.upsert_service(web());
        let _ = m.take_changes();
        m.upsert_service(web());
        assert!(!m.has_changes(), "an identical object is not a change");
        m.upsert_slice(slice("web-a", "web", serde_json::json!([])));
        let c = m.take_changes();
        assert!(!c.full);
        assert_eq!(c.services.len(), 1);
        m.delete_service(&web());
        let c = m.take_changes();
        assert!(
            c.services.values().all(Vec::is_empty),
            "a deleted service has no ports"
        );
    }

    #[test]
    fn a_relist_marks_only_what_differs() {
        let mut m = Model::new("n1");
        m.replace_services(vec![web()]);
        m.replace_slices(vec![slice("web-a", "web", serde_json::json!([]))]);
        let _ = m.take_changes();
        m.replace_services(vec![web()]);
        m.replace_slices(vec![slice("web-a", "web", serde_json::json!([]))]);
        assert!(!m.has_changes());
        m.replace_slices(vec![]);
        let c = m.take_changes();
        assert_eq!(c.services.keys().collect::<Vec<_>>(), vec![&web_key()]);
    }

    #[test]
    fn headless_and_external_name_services_are_not_proxied() {
        let mut m = Model::new("n1");
        m.upsert_service(svc(serde_json::json!({
            "metadata": {"name": "h", "namespace": "default"},
            "spec": {"clusterIP": "None", "ports": [{"port": 80}]}
        })));
        m.upsert_service(svc(serde_json::json!({
            "metadata": {"name": "x", "namespace": "default"},
            "spec": {"type": "ExternalName", "externalName": "example.com"}
        })));
        let c = m.take_changes();
        assert!(c.services.values().all(Vec::is_empty));
    }
}
