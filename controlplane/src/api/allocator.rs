//! Service ClusterIPs and NodePorts, allocated in the write path as kube-apiserver's Service
//! REST storage does, so that `kubectl create service`, `expose` and `apply` get the Service
//! back with its addresses already filled in.
//!
//! Nothing is persisted besides the Services themselves. What is taken is derived from the
//! stored Services (the watch cache, caught up with the store first) plus the claims of writes
//! still in flight, all under one lock: concurrent creates never pick the same address, a
//! restart re-derives exactly the same set, and a deleted Service frees its addresses the
//! moment its deletion is committed.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use ipnet::Ipv4Net;
use rand::Rng;
use serde_json::{Map, Value, json};

use super::Api;
use super::errors::{ApiError, ApiResult, FieldError};
use super::handler::{FieldValidation, decode_object, target};
use crate::controllers::runtime::{Settings, nth_addr};
use crate::resources::{self, Resource};

/// Kubernetes' default `--service-node-port-range`.
pub const NODE_PORTS: (u16, u16) = (30000, 32767);

/// Writes that need cluster-wide state a stateless `Strategy` cannot see (Kubernetes does
/// these in the REST storage of the resource). Today: Service IPs and ports.
pub struct Admission {
    services: ServiceAllocator,
}

impl Admission {
    pub fn new(settings: &Settings) -> Self {
        Self {
            services: ServiceAllocator::new(settings.service_cidr, settings.cluster_dns),
        }
    }

    /// Kubernetes' PrepareForUpdate: carries server-assigned values a client left out of a
    /// full update over from the stored object, and drops the ones the new type no longer uses.
    pub fn prepare_update(&self, res: &Resource, old: &Value, mut new: Value) -> Value {
        if is_service(res) {
            patch_allocated_values(old, &mut new);
            drop_type_dependent_fields(old, &mut new);
        }
        new
    }

    /// Fills in what the server assigns, or rejects what cannot be had. The returned hold keeps
    /// the claims visible to other writers; drop it once the write is committed (or failed).
    pub async fn admit(
        &self,
        api: &Api,
        res: &Resource,
        old: Option<&Value>,
        obj: &mut Value,
    ) -> ApiResult<Option<Hold>> {
        if !is_service(res) {
            return Ok(None);
        }
        let name = str_at(obj, "/metadata/name").to_owned();
        let owner = format!("{}/{name}", str_at(obj, "/metadata/namespace"));
        let svc = &self.services;
        // Unchanged allocations need no look at the others: skip the lock and the cache wait.
        let mut turn;
        let unchanged = Taken::default();
        let taken = if svc.wants_new(old, obj) {
            turn = svc.turn.lock().await;
            // Snapshot the claims before reading the revision: a claim released after this
            // point belongs to a write committed before it, which the cache will show.
            let pending = svc.pending();
            let rev = api
                .store
                .current_revision()
                .await
                .map_err(ApiError::internal)?;
            if !api.cache.wait_for(rev).await {
                return Err(ApiError::internal(
                    "the watch cache did not catch up with the store in time to allocate Service addresses",
                ));
            }
            turn.refresh(api, res, pending);
            &*turn
        } else {
            &unchanged
        };
        let claims = svc
            .allocate(taken, &owner, old, obj, &mut rand::rng())
            .map_err(|e| match e {
                AllocError::Invalid(errs) => ApiError::invalid(target(res, &name), &errs),
                AllocError::Full(what) => ApiError::internal(what),
            })?;
        Ok(Some(svc.hold(claims)))
    }
}

fn is_service(res: &Resource) -> bool {
    res.group.is_empty() && res.plural == "services"
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// What one write claims, in the name of `owner` (`namespace/name`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Claims {
    owner: String,
    ips: Vec<Ipv4Addr>,
    ports: Vec<u16>,
}

#[derive(Default)]
struct InFlight {
    next: u64,
    claims: HashMap<u64, Claims>,
}

/// Keeps a write's claims in force until dropped.
pub struct Hold {
    id: u64,
    in_flight: Arc<Mutex<InFlight>>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut f = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        f.claims.remove(&self.id);
    }
}

/// Addresses and ports in use, with their owners (`namespace/name`): those of the stored
/// Services, kept up to date incrementally from the watch cache, plus the claims of writes
/// still in flight.
#[derive(Default, Debug)]
struct Taken {
    ips: HashMap<Ipv4Addr, String>,
    ports: HashMap<u16, String>,
    /// What each stored Service holds, by storage key, as of the revision last looked at.
    seen: HashMap<String, Held>,
    pending: Vec<Claims>,
}

#[derive(Debug)]
struct Held {
    rev: i64,
    owner: String,
    ip: Option<Ipv4Addr>,
    ports: Vec<u16>,
}

impl Taken {
    /// Catches up with the cache: only Services whose revision changed are looked at again,
    /// so a create costs a pass over the keys, not a parse of every Service.
    fn refresh(&mut self, api: &Api, res: &Resource, pending: Vec<Claims>) {
        self.pending = pending;
        let (items, _) = api.cache.list(&res.key_prefix(None), None);
        for o in &items {
            if self.seen.get(&o.key).is_some_and(|h| h.rev == o.rev) {
                continue;
            }
            // Only these types may hold node ports (validation forbids them elsewhere), so
            // the others need not be parsed.
            let ports = if matches!(o.field("spec.type").as_str(), "NodePort" | "LoadBalancer") {
                node_ports_of(&o.value()).into_iter().collect()
            } else {
                Vec::new()
            };
            let held = Held {
                rev: o.rev,
                owner: format!("{}/{}", o.namespace, o.name),
                ip: o.field("spec.clusterIP").parse().ok(),
                ports,
            };
            self.forget(&o.key);
            self.remember(o.key.clone(), held);
        }
        if self.seen.len() != items.len() {
            let live: HashSet<&str> = items.iter().map(|o| o.key.as_str()).collect();
            let gone: Vec<String> = self
                .seen
                .keys()
                .filter(|k| !live.contains(k.as_str()))
                .cloned()
                .collect();
            for k in gone {
                self.forget(&k);
            }
        }
    }

    fn remember(&mut self, key: String, held: Held) {
        if let Some(ip) = held.ip {
            self.ips.insert(ip, held.owner.clone());
        }
        for p in &held.ports {
            self.ports.insert(*p, held.owner.clone());
        }
        self.seen.insert(key, held);
    }

    fn forget(&mut self, key: &str) {
        let Some(held) = self.seen.remove(key) else {
            return;
        };
        if let Some(ip) = held.ip
            && self.ips.get(&ip) == Some(&held.owner)
        {
            self.ips.remove(&ip);
        }
        for p in held.ports {
            if self.ports.get(&p) == Some(&held.owner) {
                self.ports.remove(&p);
            }
        }
    }

    fn ip_used(&self, ip: Ipv4Addr) -> bool {
        self.ips.contains_key(&ip) || self.pending.iter().any(|c| c.ips.contains(&ip))
    }

    fn ip_taken_by_other(&self, ip: Ipv4Addr, owner: &str) -> bool {
        self.ips.get(&ip).is_some_and(|o| o != owner)
            || self
                .pending
                .iter()
                .any(|c| c.owner != owner && c.ips.contains(&ip))
    }

    fn port_used(&self, port: u16) -> bool {
        self.ports.contains_key(&port) || self.pending.iter().any(|c| c.ports.contains(&port))
    }

    fn port_taken_by_other(&self, port: u16, owner: &str) -> bool {
        self.ports.get(&port).is_some_and(|o| o != owner)
            || self
                .pending
                .iter()
                .any(|c| c.owner != owner && c.ports.contains(&port))
    }
}

/// Every node port a Service holds (ports and the health check port).
fn node_ports_of(svc: &Value) -> BTreeSet<u16> {
    let mut out: BTreeSet<u16> = ports_of(svc)
        .iter()
        .filter_map(|p| p.get("nodePort").and_then(Value::as_u64))
        .filter_map(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .collect();
    if let Some(hc) = svc
        .pointer("/spec/healthCheckNodePort")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
    {
        out.insert(hc);
    }
    out
}

fn ports_of(svc: &Value) -> &[Value] {
    svc.pointer("/spec/ports")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

#[derive(Debug)]
enum AllocError {
    Invalid(Vec<FieldError>),
    Full(String),
}

struct ServiceAllocator {
    range: Ipv4Net,
    /// Addresses only one Service may take: (address, `namespace/name`).
    reserved: Vec<(Ipv4Addr, String)>,
    /// Serialises "look at what is taken, then claim": two writers never both see a free one.
    turn: tokio::sync::Mutex<Taken>,
    in_flight: Arc<Mutex<InFlight>>,
}

fn svc_type(v: &Value) -> &str {
    match str_at(v, "/spec/type") {
        "" => "ClusterIP",
        t => t,
    }
}

fn needs_cluster_ip(v: &Value) -> bool {
    svc_type(v) != "ExternalName"
}

fn needs_node_ports(v: &Value) -> bool {
    match svc_type(v) {
        "NodePort" => true,
        "LoadBalancer" => v.pointer("/spec/allocateLoadBalancerNodePorts") != Some(&json!(false)),
        _ => false,
    }
}

/// Kubernetes allocates a health check port only for LoadBalancer Services with
/// externalTrafficPolicy Local (kube-proxy serves it on every node).
fn needs_health_check_port(v: &Value) -> bool {
    svc_type(v) == "LoadBalancer" && str_at(v, "/spec/externalTrafficPolicy") == "Local"
}

fn node_port_at(p: &Value) -> u64 {
    p.get("nodePort").and_then(Value::as_u64).unwrap_or(0)
}

/// The requested cluster IP: `clusterIP`, or else the first of `clusterIPs`.
fn requested_ip(v: &Value) -> String {
    let ip = str_at(v, "/spec/clusterIP");
    if !ip.is_empty() {
        return ip.to_owned();
    }
    str_at(v, "/spec/clusterIPs/0").to_owned()
}

/// Go's `%#v` of a `[]string`, as Kubernetes prints the value of `spec.clusterIPs` errors.
fn go_string_slice(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[]string{{{}}}", quoted.join(", "))
}

/// A field error whose value Go prints unquoted (numbers, `%#v` of slices).
fn invalid_raw(field: impl Into<String>, value: impl std::fmt::Display, why: &str) -> FieldError {
    FieldError {
        field: field.into(),
        reason: "FieldValueInvalid",
        message: format!("Invalid value: {value}: {why}"),
    }
}

/// How many low indexes of a range are kept for static (requested) allocation: dynamic
/// allocation prefers the rest, as Kubernetes does since 1.24 to avoid collisions with
/// well-known addresses such as the DNS service's.
fn static_band(size: u32) -> u32 {
    if size < 16 {
        return 0;
    }
    (size / 16).clamp(16, 256)
}

/// A free index of `0..size`: first from the dynamic band (above the static band), starting at
/// a random point, then from the static band.
fn pick(size: u32, rng: &mut impl Rng, free: impl Fn(u32) -> bool) -> Option<u32> {
    if size == 0 {
        return None;
    }
    let offset = static_band(size);
    for (lo, hi) in [(offset, size), (0, offset)] {
        if hi <= lo {
            continue;
        }
        let len = hi - lo;
        let start = rng.random_range(0..len);
        if let Some(i) = (0..len).map(|k| lo + (start + k) % len).find(|&i| free(i)) {
            return Some(i);
        }
    }
    None
}

impl ServiceAllocator {
    fn new(range: Ipv4Net, cluster_dns: Ipv4Addr) -> Self {
        Self {
            range,
            reserved: vec![
                (nth_addr(&range, 1), "default/kubernetes".to_owned()),
                (cluster_dns, "kube-system/kube-dns".to_owned()),
            ],
            turn: tokio::sync::Mutex::default(),
            in_flight: Arc::default(),
        }
    }

    fn pending(&self) -> Vec<Claims> {
        let f = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        f.claims.values().cloned().collect()
    }

    fn hold(&self, claims: Claims) -> Hold {
        let mut f = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        f.next += 1;
        let id = f.next;
        f.claims.insert(id, claims);
        Hold {
            id,
            in_flight: Arc::clone(&self.in_flight),
        }
    }

    /// The usable addresses: the range without its network and broadcast addresses.
    fn first_and_size(&self) -> (u32, u32) {
        let net = u32::from(self.range.network());
        let total = 1u64 << (32 - u32::from(self.range.prefix_len()));
        if total <= 2 {
            (net, total as u32)
        } else {
            (net + 1, (total - 2) as u32)
        }
    }

    fn in_range(&self, ip: Ipv4Addr) -> bool {
        let (first, size) = self.first_and_size();
        let n = u32::from(ip);
        n >= first && u64::from(n) < u64::from(first) + u64::from(size)
    }

    fn reserved_for_other(&self, ip: Ipv4Addr, owner: &str) -> bool {
        self.reserved.iter().any(|(r, o)| *r == ip && o != owner)
    }

    /// Whether this write asks for anything it does not hold yet (and so must look at what
    /// others hold).
    fn wants_new(&self, old: Option<&Value>, obj: &Value) -> bool {
        let null = Value::Null;
        let old_v = old.unwrap_or(&null);
        if needs_cluster_ip(obj) {
            let ip = requested_ip(obj);
            if ip.is_empty() || (ip != "None" && ip != str_at(old_v, "/spec/clusterIP")) {
                return true;
            }
        }
        let held = node_ports_of(old_v);
        let wants_ports = needs_node_ports(obj);
        for p in ports_of(obj) {
            let np = node_port_at(p);
            if (np == 0 && wants_ports)
                || (np != 0 && u16::try_from(np).map_or(true, |np| !held.contains(&np)))
            {
                return true;
            }
        }
        let hc = obj
            .pointer("/spec/healthCheckNodePort")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let old_hc = old_v
            .pointer("/spec/healthCheckNodePort")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        (needs_health_check_port(obj) && hc == 0) || (hc != 0 && hc != old_hc)
    }

    /// Assigns the cluster IP, node ports and health check port `obj` needs, honouring the
    /// ones it asks for. Pure: `taken` says what others hold.
    fn allocate(
        &self,
        taken: &Taken,
        owner: &str,
        old: Option<&Value>,
        obj: &mut Value,
        rng: &mut impl Rng,
    ) -> Result<Claims, AllocError> {
        let mut claims = Claims {
            owner: owner.to_owned(),
            ..Default::default()
        };
        let mut errs = Vec::new();
        let old_ip = old.map(|o| str_at(o, "/spec/clusterIP")).unwrap_or("");
        let wants_ip = needs_cluster_ip(obj);
        let wants_ports = needs_node_ports(obj);
        let wants_hc = needs_health_check_port(obj);
        let requested = requested_ip(obj);
        let load_balancer = svc_type(obj) == "LoadBalancer";
        let listed: Vec<String> = obj
            .pointer("/spec/clusterIPs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|v| v.as_str().unwrap_or("").to_owned())
            .collect();
        let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
            return Ok(claims);
        };

        if !wants_ip {
            if !requested.is_empty() {
                errs.push(FieldError::forbidden(
                    "spec.clusterIPs",
                    "may not be set for ExternalName services",
                ));
            }
            for f in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
                spec.remove(f);
            }
        } else {
            self.check_families(spec, &mut errs);
            if listed.len() > 1 {
                errs.push(invalid_raw(
                    "spec.clusterIPs",
                    go_string_slice(&listed),
                    "this cluster is single-stack (IPv4): at most one cluster IP may be given",
                ));
            }
            let own = spec.get("clusterIP").and_then(Value::as_str).unwrap_or("");
            if let Some(first) = listed.first()
                && !own.is_empty()
                && first != own
            {
                errs.push(invalid_raw(
                    "spec.clusterIPs[0]",
                    go_string_slice(&listed),
                    "first value must match `clusterIP`",
                ));
            }
            let ip = match requested.as_str() {
                "None" => Some("None".to_owned()),
                "" if !old_ip.is_empty() && old_ip != "None" => Some(old_ip.to_owned()),
                "" => {
                    let (first, size) = self.first_and_size();
                    let found = pick(size, rng, |i| {
                        let ip = Ipv4Addr::from(first + i);
                        !taken.ip_used(ip) && !self.reserved_for_other(ip, owner)
                    });
                    match found {
                        Some(i) => Some(Ipv4Addr::from(first + i).to_string()),
                        None => {
                            return Err(AllocError::Full(format!(
                                "failed to allocate a serviceIP: range is full ({})",
                                self.range
                            )));
                        }
                    }
                }
                asked => match asked.parse::<Ipv4Addr>() {
                    Err(_) => {
                        errs.push(FieldError::invalid(
                            "spec.clusterIPs[0]",
                            asked,
                            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                        ));
                        None
                    }
                    // A Service keeps its address even if the range has since changed.
                    Ok(_) if asked == old_ip => Some(asked.to_owned()),
                    Ok(ip) => {
                        let why = if !self.in_range(ip) {
                            Some(format!(
                                "the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}",
                                self.range
                            ))
                        } else if taken.ip_taken_by_other(ip, owner)
                            || self.reserved_for_other(ip, owner)
                        {
                            Some("provided IP is already allocated".to_owned())
                        } else {
                            None
                        };
                        if let Some(why) = why {
                            let shown = if listed.is_empty() {
                                vec![asked.to_owned()]
                            } else {
                                listed.clone()
                            };
                            errs.push(invalid_raw(
                                "spec.clusterIPs",
                                go_string_slice(&shown),
                                &format!("failed to allocate IP {ip}: {why}"),
                            ));
                            None
                        } else {
                            Some(asked.to_owned())
                        }
                    }
                },
            };
            if let Some(ip) = ip {
                if let Ok(addr) = ip.parse::<Ipv4Addr>() {
                    claims.ips.push(addr);
                }
                spec.insert("clusterIP".into(), json!(ip));
                spec.insert("clusterIPs".into(), json!([ip]));
                spec.insert("ipFamilies".into(), json!(["IPv4"]));
                if spec.get("ipFamilyPolicy").is_none_or(Value::is_null) {
                    spec.insert("ipFamilyPolicy".into(), json!("SingleStack"));
                }
            }
        }

        if load_balancer {
            spec.entry("allocateLoadBalancerNodePorts")
                .or_insert(json!(true));
        }
        let mut mine: HashSet<u16> = HashSet::new();
        self.allocate_node_ports(spec, taken, owner, wants_ports, &mut mine, rng, &mut errs)?;
        let hc = spec
            .get("healthCheckNodePort")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        if wants_hc {
            let port = if hc == 0 {
                self.pick_port(taken, &mine, rng)?
            } else {
                match self.check_port(hc, taken, owner, &mine) {
                    Ok(p) => p,
                    Err(why) => {
                        errs.push(invalid_raw("spec.healthCheckNodePort", hc, why));
                        0
                    }
                }
            };
            if port != 0 {
                mine.insert(port);
                spec.insert("healthCheckNodePort".into(), json!(port));
            }
        } else if hc != 0 {
            errs.push(invalid_raw(
                "spec.healthCheckNodePort",
                hc,
                "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'",
            ));
        }
        if !errs.is_empty() {
            return Err(AllocError::Invalid(errs));
        }
        claims.ports = mine.into_iter().collect();
        claims.ports.sort_unstable();
        Ok(claims)
    }

    fn check_families(&self, spec: &Map<String, Value>, errs: &mut Vec<FieldError>) {
        for (i, f) in spec
            .get("ipFamilies")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let f = f.as_str().unwrap_or("");
            if f != "IPv4" {
                errs.push(FieldError::invalid(
                    format!("spec.ipFamilies[{i}]"),
                    f,
                    "not configured on this cluster",
                ));
            }
        }
        match spec.get("ipFamilyPolicy").and_then(Value::as_str) {
            None | Some("SingleStack") | Some("PreferDualStack") => {}
            Some("RequireDualStack") => errs.push(FieldError::invalid(
                "spec.ipFamilyPolicy",
                "RequireDualStack",
                "this cluster is not configured for dual-stack services",
            )),
            Some(other) => errs.push(FieldError::not_supported(
                "spec.ipFamilyPolicy",
                other,
                &["PreferDualStack", "RequireDualStack", "SingleStack"],
            )),
        }
    }

    /// Node ports per service port. Ports with the same `port` number (DNS over UDP and TCP)
    /// share one node port, as in Kubernetes; a node port is used once per protocol.
    #[allow(clippy::too_many_arguments)]
    fn allocate_node_ports(
        &self,
        spec: &mut Map<String, Value>,
        taken: &Taken,
        owner: &str,
        wants_ports: bool,
        mine: &mut HashSet<u16>,
        rng: &mut impl Rng,
        errs: &mut Vec<FieldError>,
    ) -> Result<(), AllocError> {
        let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) else {
            return Ok(());
        };
        let mut by_port: HashMap<i64, u16> = HashMap::new();
        let mut used: HashSet<(u16, String)> = HashSet::new();
        for (i, p) in ports.iter_mut().enumerate() {
            let asked = node_port_at(p);
            if asked == 0 && !wants_ports {
                continue;
            }
            let number = p.get("port").and_then(Value::as_i64).unwrap_or(0);
            let proto = p
                .get("protocol")
                .and_then(Value::as_str)
                .unwrap_or("TCP")
                .to_owned();
            let port = if asked == 0 {
                match by_port.get(&number) {
                    Some(&np) => np,
                    None => self.pick_port(taken, mine, rng)?,
                }
            } else {
                match self.check_port(asked, taken, owner, &HashSet::new()) {
                    Ok(np) => np,
                    Err(why) => {
                        errs.push(invalid_raw(format!("spec.ports[{i}].nodePort"), asked, why));
                        continue;
                    }
                }
            };
            if !used.insert((port, proto)) {
                errs.push(FieldError {
                    field: format!("spec.ports[{i}].nodePort"),
                    reason: "FieldValueDuplicate",
                    message: format!("Duplicate value: {port}"),
                });
                continue;
            }
            by_port.entry(number).or_insert(port);
            mine.insert(port);
            if let Value::Object(m) = p {
                m.insert("nodePort".into(), json!(port));
            }
        }
        Ok(())
    }

    fn check_port(
        &self,
        asked: u64,
        taken: &Taken,
        owner: &str,
        mine: &HashSet<u16>,
    ) -> Result<u16, &'static str> {
        let (lo, hi) = NODE_PORTS;
        let Some(port) = u16::try_from(asked).ok().filter(|p| (lo..=hi).contains(p)) else {
            return Err(
                "provided port is not in the valid range. The range of valid ports is 30000-32767",
            );
        };
        if taken.port_taken_by_other(port, owner) || mine.contains(&port) {
            return Err("provided port is already allocated");
        }
        Ok(port)
    }

    fn pick_port(
        &self,
        taken: &Taken,
        mine: &HashSet<u16>,
        rng: &mut impl Rng,
    ) -> Result<u16, AllocError> {
        let (lo, hi) = NODE_PORTS;
        let size = u32::from(hi - lo) + 1;
        pick(size, rng, |i| {
            let p = lo + i as u16;
            !taken.port_used(p) && !mine.contains(&p)
        })
        .map(|i| lo + i as u16)
        .ok_or_else(|| AllocError::Full("failed to allocate a nodePort: range is full".to_owned()))
    }
}

/// A full update that leaves out server-assigned values keeps them (Kubernetes'
/// patchAllocatedValues): `kubectl replace` of a manifest without clusterIP or nodePorts.
fn patch_allocated_values(old: &Value, new: &mut Value) {
    if needs_cluster_ip(old) && needs_cluster_ip(new) {
        let ip = old.pointer("/spec/clusterIP").cloned();
        let ips = old.pointer("/spec/clusterIPs").cloned();
        if let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) {
            if spec
                .get("clusterIP")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty()
                && let Some(ip) = ip
            {
                spec.insert("clusterIP".into(), ip);
            }
            if spec
                .get("clusterIPs")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty)
                && let Some(ips) = ips
            {
                spec.insert("clusterIPs".into(), ips);
            }
        }
    }
    if needs_node_ports(old) && needs_node_ports(new) {
        let in_new = node_ports_of(new);
        let by_name: HashMap<String, u64> = ports_of(old)
            .iter()
            .map(|p| (str_at(p, "/name").to_owned(), node_port_at(p)))
            .collect();
        let in_both: HashSet<u64> = node_ports_of(old)
            .intersection(&in_new)
            .map(|p| u64::from(*p))
            .collect();
        if let Some(ports) = new.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
            for p in ports {
                if node_port_at(p) != 0 {
                    continue;
                }
                if let Some(&np) = by_name.get(str_at(p, "/name"))
                    && np != 0
                    && !in_both.contains(&np)
                    && let Value::Object(m) = p
                {
                    m.insert("nodePort".into(), json!(np));
                }
            }
        }
    }
    if needs_health_check_port(old)
        && needs_health_check_port(new)
        && new
            .pointer("/spec/healthCheckNodePort")
            .and_then(Value::as_u64)
            .unwrap_or(0)
            == 0
        && let Some(hc) = old.pointer("/spec/healthCheckNodePort").cloned()
        && let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut)
    {
        spec.insert("healthCheckNodePort".into(), hc);
    }
}

/// Values the new type no longer uses are wiped when the client left them as they were
/// (Kubernetes' dropTypeDependentFields): switching NodePort -> ClusterIP frees the node ports.
fn drop_type_dependent_fields(old: &Value, new: &mut Value) {
    let same = |p: &str, new: &Value| old.pointer(p) == new.pointer(p);
    let wipe_ip = needs_cluster_ip(old)
        && !needs_cluster_ip(new)
        && same("/spec/clusterIP", new)
        && same("/spec/clusterIPs", new);
    let wipe_ports = needs_node_ports(old)
        && !needs_node_ports(new)
        && node_ports_of(old).is_superset(&node_ports_without_hc(new));
    let wipe_hc = needs_health_check_port(old)
        && !needs_health_check_port(new)
        && same("/spec/healthCheckNodePort", new);
    let external = matches!(svc_type(new), "NodePort" | "LoadBalancer");
    let wipe_etp = !external && same("/spec/externalTrafficPolicy", new);
    let wipe_alloc =
        svc_type(new) != "LoadBalancer" && same("/spec/allocateLoadBalancerNodePorts", new);
    let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    if wipe_ip {
        for f in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
            spec.remove(f);
        }
    }
    if wipe_ports && let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports {
            if let Value::Object(m) = p {
                m.remove("nodePort");
            }
        }
    }
    if wipe_hc {
        spec.remove("healthCheckNodePort");
    }
    if wipe_etp {
        spec.remove("externalTrafficPolicy");
    }
    if wipe_alloc {
        spec.remove("allocateLoadBalancerNodePorts");
    }
}

fn node_ports_without_hc(svc: &Value) -> BTreeSet<u16> {
    ports_of(svc)
        .iter()
        .filter_map(|p| u16::try_from(node_port_at(p)).ok())
        .filter(|p| *p != 0)
        .collect()
}

/// Creates the Services every cluster has: `kubernetes` in `default` (the API, on the range's
/// first address) and `kube-dns` in `kube-system` (on the cluster DNS address, which no other
/// Service may take), plus the `kubernetes` Service's Endpoints and EndpointSlice pointing at
/// this controlplane. Runs at every start: the API port may have changed.
/// kube-system ConfigMap holding the cluster's network settings for node agents.
pub const CLUSTER_CONFIGMAP: &str = "skiff-cluster";

pub async fn bootstrap_services(api: &Api, settings: &Settings) -> ApiResult<()> {
    let (host, port) = api
        .advertise
        .rsplit_once(':')
        .map(|(h, p)| (h.to_owned(), p.parse::<u16>().unwrap_or(443)))
        .unwrap_or_else(|| (api.advertise.clone(), 443));
    let kubernetes_ip = nth_addr(&settings.service_cidr, 1).to_string();
    let kubernetes = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"clusterIP": kubernetes_ip, "type": "ClusterIP", "sessionAffinity": "None",
                 "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]},
    });
    upsert(api, "services", "default", kubernetes, &["/spec/ports"]).await?;
    let dns = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system",
                     "labels": {"k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true",
                                "kubernetes.io/name": "CoreDNS"}},
        // No selector: no pods back it, every node agent answers on this address itself.
        "spec": {"clusterIP": settings.cluster_dns.to_string(),
                 "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                           {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]},
    });
    upsert(api, "services", "kube-system", dns, &[]).await?;
    // What every node agent needs to know about the cluster's networks (kubeadm keeps the
    // same facts in kube-system/kubeadm-config).
    let cluster = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": CLUSTER_CONFIGMAP, "namespace": "kube-system"},
        "data": {"clusterCIDR": settings.cluster_cidr.to_string(),
                 "serviceCIDR": settings.service_cidr.to_string(),
                 "clusterDNS": settings.cluster_dns.to_string(),
                 "clusterDomain": settings.cluster_domain},
    });
    upsert(api, "configmaps", "kube-system", cluster, &["/data"]).await?;
    if host.parse::<Ipv4Addr>().is_ok() {
        let endpoints = json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": "kubernetes", "namespace": "default",
                         "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
            "subsets": [{"addresses": [{"ip": host}],
                         "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}],
        });
        upsert(api, "endpoints", "default", endpoints, &["/subsets"]).await?;
        let slice = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "kubernetes", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "kubernetes"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [host], "conditions": {"ready": true}}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        });
        upsert(
            api,
            "endpointslices",
            "default",
            slice,
            &["/endpoints", "/ports"],
        )
        .await?;
    }
    Ok(())
}

/// Creates `obj`, or, when it exists, brings the fields at `refresh` (JSON pointers to
/// top-level or `spec` fields) up to date and leaves everything else as it is.
async fn upsert(api: &Api, plural: &str, ns: &str, obj: Value, refresh: &[&str]) -> ApiResult<()> {
    let group = if plural == "endpointslices" {
        "discovery.k8s.io"
    } else {
        ""
    };
    let res = resources::find(group, "v1", plural)
        .ok_or_else(|| ApiError::internal(format!("resource {plural} is not registered")))?;
    let name = str_at(&obj, "/metadata/name").to_owned();
    let (obj, _) = decode_object(res, obj, FieldValidation::Strict)?;
    match api.get_object(res, Some(ns), &name).await {
        Err(e) if e.reason == "NotFound" => {
            match api.create_object(res, Some(ns), obj, false).await {
                Ok(_) => Ok(()),
                Err(e) if e.reason == "AlreadyExists" => Ok(()),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
        Ok(current) => {
            let stale = refresh.iter().any(|p| current.pointer(p) != obj.pointer(p));
            if !stale {
                return Ok(());
            }
            api.update_object(res, Some(ns), &name, None, false, |mut cur| {
                for p in refresh {
                    if let Some(v) = obj.pointer(p).cloned() {
                        let (parent, field) = p.rsplit_once('/').unwrap_or(("", p));
                        if let Some(Value::Object(m)) = cur.pointer_mut(parent) {
                            m.insert(field.to_owned(), v);
                        }
                    }
                }
                Ok(cur)
            })
            .await
            .map(|_| ())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn allocator() -> ServiceAllocator {
        ServiceAllocator::new(
            "10.96.0.0/24".parse().unwrap(),
            "10.96.0.10".parse().unwrap(),
        )
    }

    fn svc(spec: Value) -> Value {
        json!({"metadata": {"name": "web", "namespace": "default"}, "spec": spec})
    }

    fn alloc(
        a: &ServiceAllocator,
        taken: &Taken,
        old: Option<&Value>,
        obj: &mut Value,
    ) -> Result<Claims, AllocError> {
        a.allocate(
            taken,
            "default/web",
            old,
            obj,
            &mut StdRng::seed_from_u64(7),
        )
    }

    fn errors(r: Result<Claims, AllocError>) -> Vec<String> {
        match r {
            Err(AllocError::Invalid(errs)) => errs
                .into_iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect(),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn automatic_ips_come_from_the_dynamic_band_and_fill_the_ip_fields() {
        let a = allocator();
        let mut obj = svc(json!({"type": "ClusterIP", "ports": [{"port": 80}]}));
        let claims = alloc(&a, &Taken::default(), None, &mut obj).unwrap();
        let ip: Ipv4Addr = str_at(&obj, "/spec/clusterIP").parse().unwrap();
        // A /24 has 254 usable addresses; the first 16 are kept for requested ones.
        assert!(
            u32::from(ip) >= u32::from(Ipv4Addr::new(10, 96, 0, 17)),
            "{ip}"
        );
        assert_eq!(claims.ips, [ip]);
        assert_eq!(obj["spec"]["clusterIPs"], json!([ip.to_string()]));
        assert_eq!(obj["spec"]["ipFamilies"], json!(["IPv4"]));
        assert_eq!(obj["spec"]["ipFamilyPolicy"], "SingleStack");
    }

    #[test]
    fn a_full_range_falls_back_to_the_static_band_then_reports_full() {
        let a = allocator();
        let mut taken = Taken::default();
        for i in 17..=254u8 {
            taken.ips.insert(Ipv4Addr::new(10, 96, 0, i), "x/y".into());
        }
        let mut obj = svc(json!({"ports": [{"port": 80}]}));
        alloc(&a, &taken, None, &mut obj).unwrap();
        let ip: Ipv4Addr = str_at(&obj, "/spec/clusterIP").parse().unwrap();
        assert!(ip.octets()[3] < 17, "{ip}");
        // .1 and .10 are reserved for the kubernetes and kube-dns Services.
        assert!(![1, 10].contains(&ip.octets()[3]), "{ip}");
        for i in 1..17u8 {
            taken.ips.insert(Ipv4Addr::new(10, 96, 0, i), "x/y".into());
        }
        let mut obj = svc(json!({"ports": [{"port": 80}]}));
        assert!(matches!(
            alloc(&a, &taken, None, &mut obj),
            Err(AllocError::Full(_))
        ));
    }

    #[test]
    fn requested_ips_are_checked_against_the_range_and_other_services() {
        let a = allocator();
        let mut taken = Taken::default();
        taken
            .ips
            .insert(Ipv4Addr::new(10, 96, 0, 50), "default/other".into());
        let mut obj = svc(json!({"clusterIP": "10.96.0.50", "ports": [{"port": 80}]}));
        assert_eq!(
            errors(alloc(&a, &taken, None, &mut obj)),
            [
                "spec.clusterIPs: Invalid value: []string{\"10.96.0.50\"}: failed to allocate IP 10.96.0.50: provided IP is already allocated"
            ]
        );
        let mut obj = svc(json!({"clusterIP": "10.97.0.5", "ports": [{"port": 80}]}));
        let errs = errors(alloc(&a, &taken, None, &mut obj));
        assert!(
            errs[0].contains("the provided IP (10.97.0.5) is not in the valid range. The range of valid IPs is 10.96.0.0/24"),
            "{errs:?}"
        );
        // The network and broadcast addresses are not usable.
        let mut obj = svc(json!({"clusterIP": "10.96.0.255", "ports": [{"port": 80}]}));
        assert!(alloc(&a, &taken, None, &mut obj).is_err());
        let mut obj = svc(json!({"clusterIP": "10.96.0.51", "ports": [{"port": 80}]}));
        let claims = alloc(&a, &taken, None, &mut obj).unwrap();
        assert_eq!(claims.ips, [Ipv4Addr::new(10, 96, 0, 51)]);
    }

    #[test]
    fn the_dns_address_is_only_for_kube_dns() {
        let a = allocator();
        let mut obj = svc(json!({"clusterIP": "10.96.0.10", "ports": [{"port": 53}]}));
        let errs = errors(alloc(&a, &Taken::default(), None, &mut obj));
        assert!(
            errs[0].contains("provided IP is already allocated"),
            "{errs:?}"
        );
        let mut dns = json!({"metadata": {"name": "kube-dns", "namespace": "kube-system"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 53}]}});
        let claims = a
            .allocate(
                &Taken::default(),
                "kube-system/kube-dns",
                None,
                &mut dns,
                &mut StdRng::seed_from_u64(1),
            )
            .unwrap();
        assert_eq!(claims.ips, [Ipv4Addr::new(10, 96, 0, 10)]);
    }

    #[test]
    fn headless_and_external_name_services_get_no_address() {
        let a = allocator();
        let mut obj = svc(json!({"clusterIP": "None", "selector": {"a": "b"}}));
        let claims = alloc(&a, &Taken::default(), None, &mut obj).unwrap();
        assert!(claims.ips.is_empty());
        assert_eq!(obj["spec"]["clusterIPs"], json!(["None"]));
        let mut obj = svc(json!({"type": "ExternalName", "externalName": "example.com"}));
        alloc(&a, &Taken::default(), None, &mut obj).unwrap();
        assert!(obj["spec"].get("clusterIP").is_none());
        let mut obj = svc(
            json!({"type": "ExternalName", "externalName": "example.com", "clusterIP": "10.96.0.3"}),
        );
        let errs = errors(alloc(&a, &Taken::default(), None, &mut obj));
        assert_eq!(
            errs,
            ["spec.clusterIPs: Forbidden: may not be set for ExternalName services"]
        );
    }

    #[test]
    fn node_ports_are_allocated_shared_across_protocols_and_checked() {
        let a = allocator();
        let mut taken = Taken::default();
        taken.ports.insert(30080, "default/other".into());
        let mut obj = svc(json!({"type": "NodePort", "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
            {"name": "http", "port": 80, "protocol": "TCP"}]}));
        let claims = alloc(&a, &taken, None, &mut obj).unwrap();
        let np = |i: usize| obj["spec"]["ports"][i]["nodePort"].as_u64().unwrap();
        assert_eq!(np(0), np(1), "same port number, different protocols");
        assert_ne!(np(0), np(2));
        assert!((30000..=32767).contains(&np(2)));
        assert_eq!(claims.ports.len(), 2);

        let mut obj = svc(json!({"type": "NodePort", "ports": [
            {"name": "a", "port": 80, "nodePort": 30080},
            {"name": "b", "port": 81, "nodePort": 80},
            {"name": "c", "port": 82, "nodePort": 30500},
            {"name": "d", "port": 83, "nodePort": 30500}]}));
        assert_eq!(
            errors(alloc(&a, &taken, None, &mut obj)),
            [
                "spec.ports[0].nodePort: Invalid value: 30080: provided port is already allocated",
                "spec.ports[1].nodePort: Invalid value: 80: provided port is not in the valid range. The range of valid ports is 30000-32767",
                "spec.ports[3].nodePort: Duplicate value: 30500",
            ]
        );
    }

    #[test]
    fn local_load_balancers_get_a_health_check_port() {
        let a = allocator();
        let mut obj = svc(
            json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local",
            "ports": [{"port": 80}]}),
        );
        let claims = alloc(&a, &Taken::default(), None, &mut obj).unwrap();
        let hc = obj["spec"]["healthCheckNodePort"].as_u64().unwrap();
        let np = obj["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
        assert_ne!(hc, np);
        assert_eq!(claims.ports.len(), 2);
        assert_eq!(obj["spec"]["allocateLoadBalancerNodePorts"], true);
        let mut obj = svc(json!({"type": "NodePort", "healthCheckNodePort": 31000,
            "ports": [{"port": 80}]}));
        assert!(
            errors(alloc(&a, &Taken::default(), None, &mut obj))[0]
                .starts_with("spec.healthCheckNodePort: Invalid value: 31000: may only be set")
        );
    }

    #[test]
    fn updates_keep_what_the_service_holds_and_only_new_asks_need_the_lock() {
        let a = allocator();
        let old = svc(json!({"type": "NodePort", "clusterIP": "10.96.0.77",
            "clusterIPs": ["10.96.0.77"], "ports": [{"name": "http", "port": 80, "nodePort": 30111}]}));
        // `kubectl replace` of the original manifest: no clusterIP, no nodePort.
        let mut new = svc(json!({"type": "NodePort", "ports": [{"name": "http", "port": 80}]}));
        patch_allocated_values(&old, &mut new);
        drop_type_dependent_fields(&old, &mut new);
        assert!(!a.wants_new(Some(&old), &new));
        let mut taken = Taken::default();
        taken
            .ips
            .insert(Ipv4Addr::new(10, 96, 0, 77), "default/web".into());
        taken.ports.insert(30111, "default/web".into());
        alloc(&a, &taken, Some(&old), &mut new).unwrap();
        assert_eq!(new["spec"]["clusterIP"], "10.96.0.77");
        assert_eq!(new["spec"]["ports"][0]["nodePort"], 30111);

        // Adding a port asks for a new node port.
        let mut more = old.clone();
        more["spec"]["ports"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "https", "port": 443}));
        assert!(a.wants_new(Some(&old), &more));
    }

    #[test]
    fn switching_to_cluster_ip_or_external_name_drops_what_the_type_no_longer_uses() {
        let old = svc(json!({"type": "LoadBalancer", "clusterIP": "10.96.0.77",
            "clusterIPs": ["10.96.0.77"], "externalTrafficPolicy": "Local",
            "healthCheckNodePort": 31000, "allocateLoadBalancerNodePorts": true,
            "ports": [{"name": "http", "port": 80, "nodePort": 30111}]}));
        let mut new = old.clone();
        new["spec"]["type"] = json!("ClusterIP");
        drop_type_dependent_fields(&old, &mut new);
        assert!(new["spec"]["ports"][0].get("nodePort").is_none());
        for f in [
            "healthCheckNodePort",
            "externalTrafficPolicy",
            "allocateLoadBalancerNodePorts",
        ] {
            assert!(new["spec"].get(f).is_none(), "{f}");
        }
        assert_eq!(new["spec"]["clusterIP"], "10.96.0.77");
        let mut new = old.clone();
        new["spec"]["type"] = json!("ExternalName");
        drop_type_dependent_fields(&old, &mut new);
        assert!(new["spec"].get("clusterIP").is_none());
    }

    #[test]
    fn held_claims_are_visible_until_dropped() {
        let a = allocator();
        let hold = a.hold(Claims {
            owner: "default/a".into(),
            ips: vec![Ipv4Addr::new(10, 96, 0, 20)],
            ports: vec![],
        });
        assert_eq!(a.pending().len(), 1);
        drop(hold);
        assert!(a.pending().is_empty());
    }

    #[test]
    fn picking_scans_the_whole_band_from_a_random_start() {
        let mut rng = StdRng::seed_from_u64(3);
        // Only index 20 is free: it must be found whatever the start.
        for _ in 0..20 {
            assert_eq!(pick(300, &mut rng, |i| i == 20), Some(20));
        }
        assert_eq!(pick(300, &mut rng, |_| false), None);
        assert_eq!(static_band(254), 16);
        assert_eq!(static_band(1 << 20), 256);
        assert_eq!(static_band(2768), 173);
    }

    async fn api() -> Arc<Api> {
        let store = Arc::new(crate::store::sqlite::SqliteStore::in_memory().unwrap());
        let settings = Settings {
            service_cidr: "10.96.0.0/26".parse().unwrap(),
            ..Default::default()
        };
        let api = Api::with_settings(
            store,
            Default::default(),
            "127.0.0.1:6443".into(),
            &settings,
        )
        .await
        .unwrap();
        let ns = resources::find("", "v1", "namespaces").unwrap();
        api.create_object(ns, None, json!({"metadata": {"name": "default"}}), false)
            .await
            .unwrap();
        api
    }

    async fn create(api: &Api, name: &str, spec: Value) -> ApiResult<Value> {
        let res = resources::find("", "v1", "services").unwrap();
        let obj = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"}, "spec": spec});
        let (obj, _) = decode_object(res, obj, FieldValidation::Strict)?;
        api.create_object(res, Some("default"), obj, false).await
    }

    #[tokio::test]
    async fn concurrent_creates_never_share_an_address_and_deletes_free_them() {
        let api = api().await;
        // 62 usable addresses, two reserved: 60 Services fill the range exactly.
        let tasks: Vec<_> = (0..60)
            .map(|i| {
                let api = Arc::clone(&api);
                tokio::spawn(async move {
                    create(
                        &api,
                        &format!("s{i}"),
                        json!({"type": "NodePort", "ports": [{"port": 80}]}),
                    )
                    .await
                    .unwrap()
                })
            })
            .collect();
        let mut ips = HashSet::new();
        let mut ports = HashSet::new();
        for t in tasks {
            let svc = t.await.unwrap();
            assert!(ips.insert(svc["spec"]["clusterIP"].as_str().unwrap().to_owned()));
            assert!(ports.insert(svc["spec"]["ports"][0]["nodePort"].as_u64().unwrap()));
        }
        assert!(!ips.contains("10.96.0.1") && !ips.contains("10.96.0.10"));
        let full = create(&api, "extra", json!({"ports": [{"port": 80}]})).await;
        assert_eq!(full.unwrap_err().code, 500);

        let res = resources::find("", "v1", "services").unwrap();
        let gone = api
            .delete_object(res, Some("default"), "s7", &Default::default())
            .await
            .unwrap();
        let freed = gone["spec"]["clusterIP"].as_str().unwrap().to_owned();
        let again = create(
            &api,
            "again",
            json!({"clusterIP": freed, "ports": [{"port": 80}]}),
        )
        .await
        .unwrap();
        assert_eq!(again["spec"]["clusterIP"], json!(freed));
    }

    #[tokio::test]
    async fn a_full_update_without_the_address_keeps_it() {
        let api = api().await;
        let created = create(
            &api,
            "web",
            json!({"type": "NodePort", "ports": [{"name": "http", "port": 80}]}),
        )
        .await
        .unwrap();
        let res = resources::find("", "v1", "services").unwrap();
        let updated = api
            .update_object(res, Some("default"), "web", None, false, |_| {
                Ok(json!({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": "web", "namespace": "default"},
                    "spec": {"type": "NodePort", "ports": [{"name": "http", "port": 80, "targetPort": 80, "protocol": "TCP"}]}}))
            })
            .await
            .unwrap();
        assert_eq!(updated["spec"]["clusterIP"], created["spec"]["clusterIP"]);
        assert_eq!(
            updated["spec"]["ports"][0]["nodePort"],
            created["spec"]["ports"][0]["nodePort"]
        );
        let cluster_ip = api
            .update_object(res, Some("default"), "web", None, false, |mut cur| {
                cur["spec"]["type"] = json!("ClusterIP");
                Ok(cur)
            })
            .await
            .unwrap();
        assert!(cluster_ip["spec"]["ports"][0].get("nodePort").is_none());
    }
}
