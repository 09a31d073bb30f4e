//! The EndpointSlice controller, and the core/v1 Endpoints mirror (Kubernetes' endpoints
//! controller): for every Service with a selector, the IPs of its pods, whether each can take
//! traffic, and the port each serves on.
//!
//! One kube-runtime controller over Services: it owns the slices and the Endpoints object (both
//! carry the Service as controller owner, so the garbage collector removes them with it) and
//! watches pods, mapped to the Services whose selector matches them, or that listed them last
//! time (a pod relabelled out of a selector must still leave the Services it was in).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
    ServicePort,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointPort as SlicePort, EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;

use super::runtime::Context;

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// Tells an EndpointSlice mirroring controller that this Endpoints object has slices already.
const SKIP_MIRROR_LABEL: &str = "endpointslice.kubernetes.io/skip-mirror";
/// Kubernetes' default `--max-endpoints-per-slice`.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;
/// A full pass now and then repairs anything a missed event left behind.
const RESYNC: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Service {0} has no namespace")]
    NoNamespace(String),
    #[error("listing the pods of Service {service}: {source}")]
    ListPods {
        service: String,
        source: kube::Error,
    },
    #[error("listing the EndpointSlices of Service {service}: {source}")]
    ListSlices {
        service: String,
        source: kube::Error,
    },
    #[error("{verb} EndpointSlice {slice} of Service {service}: {source}")]
    WriteSlice {
        verb: &'static str,
        slice: String,
        service: String,
        source: kube::Error,
    },
    #[error("writing the Endpoints of Service {service}: {source}")]
    WriteEndpoints {
        service: String,
        source: kube::Error,
    },
}

struct State {
    ctx: Context,
    /// Pod (`namespace/name`) -> names of the Services that listed it last.
    members: Mutex<HashMap<String, BTreeSet<String>>>,
    /// Service (`namespace/name`) -> names of the pods it listed last.
    listed: Mutex<HashMap<String, BTreeSet<String>>>,
}

impl State {
    fn remember(&self, ns: &str, service: &str, pods: BTreeSet<String>) {
        let mut members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        let mut listed = self.listed.lock().unwrap_or_else(|p| p.into_inner());
        let before = listed
            .insert(format!("{ns}/{service}"), pods.clone())
            .unwrap_or_default();
        for gone in before.difference(&pods) {
            let key = format!("{ns}/{gone}");
            if let Some(set) = members.get_mut(&key) {
                set.remove(service);
                if set.is_empty() {
                    members.remove(&key);
                }
            }
        }
        for pod in pods {
            members
                .entry(format!("{ns}/{pod}"))
                .or_default()
                .insert(service.to_owned());
        }
    }

    fn last_listed_in(&self, ns: &str, pod: &str) -> BTreeSet<String> {
        let members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        members
            .get(&format!("{ns}/{pod}"))
            .cloned()
            .unwrap_or_default()
    }
}

pub async fn run(ctx: Context) {
    let client = ctx.client.clone();
    let controller = Controller::new(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    );
    let services = controller.store();
    let state = Arc::new(State {
        ctx,
        members: Mutex::default(),
        listed: Mutex::default(),
    });
    let for_pods = Arc::clone(&state);
    controller
        .owns(
            Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}")),
        )
        .owns(
            Api::<Endpoints>::all(client.clone()),
            watcher::Config::default(),
        )
        // Only names and labels matter for the mapping: skip decoding pod specs and statuses.
        .watches(
            Api::<PartialObjectMeta<Pod>>::all(client),
            watcher::Config::default(),
            move |pod| services_of(&services, &for_pods, &pod),
        )
        .run(reconcile, error_policy, state)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!("endpointslice controller: {e}");
            }
        })
        .await;
}

/// The Services a pod change may matter to.
fn services_of(
    services: &Store<Service>,
    state: &State,
    pod: &PartialObjectMeta<Pod>,
) -> Vec<ObjectRef<Service>> {
    let ns = pod.namespace().unwrap_or_default();
    let labels = pod.labels();
    let mut names: BTreeSet<String> = services
        .state()
        .iter()
        .filter(|s| s.namespace().as_deref() == Some(ns.as_str()))
        .filter(|s| {
            selector(s).is_some_and(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
        })
        .map(|s| s.name_any())
        .collect();
    names.extend(state.last_listed_in(&ns, &pod.name_any()));
    names
        .into_iter()
        .map(|n| ObjectRef::new(&n).within(&ns))
        .collect()
}

/// A Service's selector; Services without one are left to whoever manages their endpoints.
fn selector(svc: &Service) -> Option<&BTreeMap<String, String>> {
    svc.spec
        .as_ref()?
        .selector
        .as_ref()
        .filter(|s| !s.is_empty())
}

fn error_policy(svc: Arc<Service>, err: &Error, _state: Arc<State>) -> Action {
    // Conflicts with a concurrent writer are routine; the retry reads fresh state.
    tracing::debug!(service = svc.name_any(), "endpointslice sync failed: {err}");
    Action::requeue(Duration::from_secs(1))
}

async fn reconcile(svc: Arc<Service>, state: Arc<State>) -> Result<Action, Error> {
    let name = svc.name_any();
    let ns = svc
        .namespace()
        .ok_or_else(|| Error::NoNamespace(name.clone()))?;
    let Some(sel) = selector(&svc) else {
        return Ok(Action::await_change());
    };
    if svc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let client = state.ctx.client.clone();
    let service = format!("{ns}/{name}");
    let labels: Vec<String> = sel.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut pods = Api::<Pod>::namespaced(client.clone(), &ns)
        .list(&ListParams::default().labels(&labels.join(",")))
        .await
        .map_err(|source| Error::ListPods {
            service: service.clone(),
            source,
        })?
        .items;
    pods.sort_by_key(|p| p.name_any());
    state.remember(&ns, &name, pods.iter().map(|p| p.name_any()).collect());

    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    let existing = slices
        .list(&ListParams::default().labels(&format!(
            "{SERVICE_NAME_LABEL}={name},{MANAGED_BY_LABEL}={MANAGED_BY}"
        )))
        .await
        .map_err(|source| Error::ListSlices {
            service: service.clone(),
            source,
        })?
        .items;
    let plan = plan_slices(&svc, desired_groups(&svc, &pods), existing);
    let write_err = |verb, slice: &str| {
        let service = service.clone();
        let slice = slice.to_owned();
        move |source| Error::WriteSlice {
            verb,
            slice,
            service,
            source,
        }
    };
    // Creates and updates before deletes: an endpoint moving between slices is never absent.
    for s in &plan.create {
        slices
            .create(&PostParams::default(), s)
            .await
            .map_err(write_err("creating", &name))?;
    }
    for s in &plan.update {
        let n = s.name_any();
        slices
            .replace(&n, &PostParams::default(), s)
            .await
            .map_err(write_err("updating", &n))?;
    }
    for n in &plan.delete {
        match slices.delete(n, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(write_err("deleting", n)(e)),
        }
    }
    sync_endpoints(&client, &svc, &ns, &pods)
        .await
        .map_err(|source| Error::WriteEndpoints { service, source })?;
    Ok(Action::requeue(RESYNC))
}

async fn sync_endpoints(
    client: &kube::Client,
    svc: &Service,
    ns: &str,
    pods: &[Pod],
) -> Result<(), kube::Error> {
    let api: Api<Endpoints> = Api::namespaced(client.clone(), ns);
    let name = svc.name_any();
    let subsets = desired_subsets(svc, pods);
    let mut labels = svc.labels().clone();
    labels.insert(SKIP_MIRROR_LABEL.into(), "true".into());
    if is_headless(svc) {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    }
    let subsets = (!subsets.is_empty()).then_some(subsets);
    match api.get_opt(&name).await? {
        None => {
            let ep = Endpoints {
                metadata: ObjectMeta {
                    name: Some(name),
                    namespace: Some(ns.to_owned()),
                    labels: Some(labels),
                    owner_references: Some(vec![owner_ref(svc)]),
                    ..Default::default()
                },
                subsets,
            };
            api.create(&PostParams::default(), &ep).await?;
        }
        Some(current) => {
            let mut next = current.clone();
            next.subsets = subsets;
            next.metadata.labels = Some(labels);
            next.metadata.owner_references = Some(vec![owner_ref(svc)]);
            let normalise = |e: &Endpoints| {
                (
                    e.subsets.clone().filter(|s| !s.is_empty()),
                    e.metadata.labels.clone().unwrap_or_default(),
                    e.metadata.owner_references.clone().unwrap_or_default(),
                )
            };
            if normalise(&next) != normalise(&current) {
                api.replace(&name, &PostParams::default(), &next).await?;
            }
        }
    }
    Ok(())
}

fn is_headless(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

fn publish_not_ready(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false)
}

fn service_ports(svc: &Service) -> &[ServicePort] {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or(&[])
}

fn owner_ref(svc: &Service) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "Service".into(),
        name: svc.name_any(),
        uid: svc.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The pod's IPv4 address, if it should be published at all: it has one and has not finished.
fn pod_ip(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let ip = status.pod_ip.as_deref().filter(|ip| !ip.is_empty())?;
    ip.parse::<Ipv4Addr>().ok()?;
    Some(ip.to_owned())
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// The port a service port reaches on this pod: a number, or a container port looked up by
/// name (and protocol) in this pod's spec, so pods of different versions may differ.
fn target_port(sp: &ServicePort, pod: &Pod) -> Option<i32> {
    let protocol = sp.protocol.as_deref().unwrap_or("TCP");
    match &sp.target_port {
        None => Some(sp.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| {
                p.name.as_deref() == Some(name.as_str())
                    && p.protocol.as_deref().unwrap_or("TCP") == protocol
            })
            .map(|p| p.container_port),
    }
}

/// Hostname record for pods that asked for one under this Service (`hostname` + `subdomain`).
fn hostname(svc: &Service, pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let host = spec.hostname.as_ref().filter(|h| !h.is_empty())?;
    (spec.subdomain.as_deref() == Some(svc.name_any().as_str())).then(|| host.clone())
}

fn pod_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        namespace: pod.namespace(),
        name: Some(pod.name_any()),
        uid: pod.uid(),
        ..Default::default()
    }
}

/// Endpoints sharing one port mapping; a slice holds endpoints of one group only.
#[derive(Clone, Debug, Default, PartialEq)]
struct Group {
    ports: Vec<SlicePort>,
    endpoints: Vec<Endpoint>,
}

fn port_key(ports: &[SlicePort]) -> String {
    serde_json::to_string(ports).unwrap_or_default()
}

fn desired_groups(svc: &Service, pods: &[Pod]) -> BTreeMap<String, Group> {
    let publish = publish_not_ready(svc);
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    for pod in pods {
        let Some(ip) = pod_ip(pod) else { continue };
        let ports: Vec<SlicePort> = service_ports(svc)
            .iter()
            .filter_map(|sp| {
                Some(SlicePort {
                    name: Some(sp.name.clone().unwrap_or_default()),
                    port: Some(target_port(sp, pod)?),
                    protocol: Some(sp.protocol.clone().unwrap_or_else(|| "TCP".into())),
                    app_protocol: sp.app_protocol.clone(),
                })
            })
            .collect();
        let ready = pod_ready(pod);
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let endpoint = Endpoint {
            addresses: vec![ip],
            conditions: Some(EndpointConditions {
                // Never ready while terminating, unless the Service publishes everything.
                ready: Some(publish || (ready && !terminating)),
                serving: Some(publish || ready),
                terminating: Some(terminating),
            }),
            hostname: hostname(svc, pod),
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(pod_ref(pod)),
            ..Default::default()
        };
        groups
            .entry(port_key(&ports))
            .or_insert_with(|| Group {
                ports,
                endpoints: Vec::new(),
            })
            .endpoints
            .push(endpoint);
    }
    groups
}

#[derive(Debug, Default)]
struct Plan {
    create: Vec<EndpointSlice>,
    update: Vec<EndpointSlice>,
    delete: Vec<String>,
}

fn slice_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels = svc.labels().clone();
    labels.insert(SERVICE_NAME_LABEL.into(), svc.name_any());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    if is_headless(svc) {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    } else {
        labels.remove(HEADLESS_LABEL);
    }
    labels
}

fn new_slice(
    svc: &Service,
    ports: Option<Vec<SlicePort>>,
    endpoints: Vec<Endpoint>,
) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", svc.name_any())),
            namespace: svc.namespace(),
            labels: Some(slice_labels(svc)),
            owner_references: Some(vec![owner_ref(svc)]),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints,
        ports,
    }
}

fn endpoint_pod(e: &Endpoint) -> Option<&str> {
    e.target_ref.as_ref()?.name.as_deref()
}

/// Whether a slice belongs to this very Service (not to a deleted one of the same name).
fn owned_by(slice: &EndpointSlice, svc: &Service) -> bool {
    let uid = svc.uid().unwrap_or_default();
    slice
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.uid == uid)
}

/// Turns the existing slices into the desired ones, moving as little as possible: endpoints
/// stay in the slice they are in, new ones fill slices with room before new slices are made,
/// and slices left empty go away (one empty placeholder stays when there are no endpoints).
fn plan_slices(
    svc: &Service,
    groups: BTreeMap<String, Group>,
    mut existing: Vec<EndpointSlice>,
) -> Plan {
    let mut plan = Plan::default();
    existing.sort_by_key(|s| s.name_any());
    let (mine, stale): (Vec<_>, Vec<_>) = existing.into_iter().partition(|s| owned_by(s, svc));
    plan.delete.extend(stale.iter().map(|s| s.name_any()));
    let labels = slice_labels(svc);
    let finish = |mut s: EndpointSlice, ports: Option<Vec<SlicePort>>, eps: Vec<Endpoint>| {
        s.ports = ports;
        s.endpoints = eps;
        s.metadata.labels = Some(labels.clone());
        s.metadata.owner_references = Some(vec![owner_ref(svc)]);
        s.address_type = "IPv4".into();
        s
    };

    if groups.values().all(|g| g.endpoints.is_empty()) {
        let mut rest = mine.into_iter();
        match rest.next() {
            Some(first) => {
                let want = finish(first.clone(), None, Vec::new());
                if want != first {
                    plan.update.push(want);
                }
            }
            None => plan.create.push(new_slice(svc, None, Vec::new())),
        }
        plan.delete.extend(rest.map(|s| s.name_any()));
        return plan;
    }

    // Desired endpoints per group, by pod name, taken out as they find a slice.
    let mut remaining: BTreeMap<String, (Vec<SlicePort>, BTreeMap<String, Endpoint>)> = groups
        .into_iter()
        .map(|(k, g)| {
            let eps = g
                .endpoints
                .into_iter()
                .filter_map(|e| Some((endpoint_pod(&e)?.to_owned(), e)))
                .collect();
            (k, (g.ports, eps))
        })
        .collect();
    let mut kept: Vec<(EndpointSlice, String, Vec<Endpoint>)> = Vec::new();
    for slice in mine {
        let key = port_key(slice.ports.as_deref().unwrap_or(&[]));
        let Some((_, wanted)) = remaining.get_mut(&key) else {
            plan.delete.push(slice.name_any());
            continue;
        };
        let eps: Vec<Endpoint> = slice
            .endpoints
            .iter()
            .filter_map(|e| wanted.remove(endpoint_pod(e)?))
            .take(MAX_ENDPOINTS_PER_SLICE)
            .collect();
        kept.push((slice, key, eps));
    }
    for (_, key, eps) in &mut kept {
        if let Some((_, wanted)) = remaining.get_mut(key.as_str()) {
            while eps.len() < MAX_ENDPOINTS_PER_SLICE {
                let Some((_, e)) = wanted.pop_first() else {
                    break;
                };
                eps.push(e);
            }
        }
    }
    for (slice, key, eps) in kept {
        if eps.is_empty() {
            plan.delete.push(slice.name_any());
            continue;
        }
        let ports = remaining.get(&key).map(|(p, _)| p.clone());
        let want = finish(slice.clone(), ports, eps);
        if want != slice {
            plan.update.push(want);
        }
    }
    for (_, (ports, wanted)) in remaining {
        let eps: Vec<Endpoint> = wanted.into_values().collect();
        for chunk in eps.chunks(MAX_ENDPOINTS_PER_SLICE) {
            plan.create
                .push(new_slice(svc, Some(ports.clone()), chunk.to_vec()));
        }
    }
    plan
}

/// The core/v1 Endpoints subsets: addresses grouped by the ports they serve, ready ones in
/// `addresses`, the others in `notReadyAddresses`; terminating pods are left out unless the
/// Service publishes not-ready addresses.
fn desired_subsets(svc: &Service, pods: &[Pod]) -> Vec<EndpointSubset> {
    let publish = publish_not_ready(svc);
    let svc_ports = service_ports(svc);
    type Subset = (
        Vec<EndpointPort>,
        Vec<EndpointAddress>,
        Vec<EndpointAddress>,
    );
    let mut groups: BTreeMap<String, Subset> = BTreeMap::new();
    for pod in pods {
        let Some(ip) = pod_ip(pod) else { continue };
        if pod.metadata.deletion_timestamp.is_some() && !publish {
            continue;
        }
        let ports: Vec<EndpointPort> = svc_ports
            .iter()
            .filter_map(|sp| {
                Some(EndpointPort {
                    name: sp.name.clone().filter(|n| !n.is_empty()),
                    port: target_port(sp, pod)?,
                    protocol: Some(sp.protocol.clone().unwrap_or_else(|| "TCP".into())),
                    app_protocol: sp.app_protocol.clone(),
                })
            })
            .collect();
        // A pod serving none of the Service's ports is no endpoint of it (headless Services
        // without ports list every pod).
        if ports.is_empty() && !(svc_ports.is_empty() && is_headless(svc)) {
            continue;
        }
        let address = EndpointAddress {
            ip,
            hostname: hostname(svc, pod),
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(pod_ref(pod)),
        };
        let key = serde_json::to_string(&ports).unwrap_or_default();
        let entry = groups
            .entry(key)
            .or_insert_with(|| (ports, Vec::new(), Vec::new()));
        if publish || pod_ready(pod) {
            entry.1.push(address);
        } else {
            entry.2.push(address);
        }
    }
    groups
        .into_values()
        .map(|(ports, mut ready, mut not_ready)| {
            ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            not_ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            EndpointSubset {
                addresses: (!ready.is_empty()).then_some(ready),
                not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                ports: (!ports.is_empty()).then_some(ports),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn service(spec: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "svc-uid", "labels": {"app": "web"}},
            "spec": spec,
        }))
        .unwrap()
    }

    fn pod(name: &str, ip: &str, ready: bool, ports: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"), "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i", "ports": ports}]},
            "status": {"phase": "Running", "podIP": ip,
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        }))
        .unwrap()
    }

    fn web() -> Service {
        service(
            json!({"selector": {"app": "web"}, "clusterIP": "10.96.0.20",
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]}),
        )
    }

    fn pods(n: usize) -> Vec<Pod> {
        (0..n)
            .map(|i| {
                pod(
                    &format!("p{i:03}"),
                    &format!("10.244.{}.{}", i / 250, i % 250 + 2),
                    true,
                    json!([{"name": "http", "containerPort": 8080}]),
                )
            })
            .collect()
    }

    /// Gives planned creations names and turns them into existing slices.
    fn apply(plan: Plan, existing: Vec<EndpointSlice>) -> Vec<EndpointSlice> {
        let mut out: BTreeMap<String, EndpointSlice> =
            existing.into_iter().map(|s| (s.name_any(), s)).collect();
        for n in &plan.delete {
            out.remove(n);
        }
        for s in plan.update {
            out.insert(s.name_any(), s);
        }
        for (i, mut s) in plan.create.into_iter().enumerate() {
            let name = format!("web-new{}-{i}", out.len());
            s.metadata.name = Some(name.clone());
            out.insert(name, s);
        }
        out.into_values().collect()
    }

    #[test]
    fn conditions_follow_readiness_and_termination() {
        let svc = web();
        let mut terminating = pod(
            "t",
            "10.244.0.9",
            true,
            json!([{"name": "http", "containerPort": 8080}]),
        );
        terminating.metadata.deletion_timestamp =
            Some(serde_json::from_value(json!("2026-01-01T00:00:00Z")).unwrap());
        let all = vec![
            pod(
                "a",
                "10.244.0.2",
                true,
                json!([{"name": "http", "containerPort": 8080}]),
            ),
            pod(
                "b",
                "10.244.0.3",
                false,
                json!([{"name": "http", "containerPort": 8080}]),
            ),
            pod("no-ip", "", true, json!([])),
            terminating,
        ];
        let groups = desired_groups(&svc, &all);
        assert_eq!(groups.len(), 1);
        let g = groups.values().next().unwrap();
        let cond = |i: usize| {
            let c = g.endpoints[i].conditions.clone().unwrap();
            (c.ready.unwrap(), c.serving.unwrap(), c.terminating.unwrap())
        };
        assert_eq!(g.endpoints.len(), 3);
        assert_eq!(cond(0), (true, true, false));
        assert_eq!(cond(1), (false, false, false));
        assert_eq!(
            cond(2),
            (false, true, true),
            "terminating: serving but not ready"
        );
        assert_eq!(g.endpoints[0].node_name.as_deref(), Some("n1"));
        assert_eq!(
            g.endpoints[0].target_ref.as_ref().unwrap().uid.as_deref(),
            Some("uid-a")
        );

        // The Endpoints mirror: ready and not-ready apart, terminating left out.
        let subsets = desired_subsets(&svc, &all);
        assert_eq!(subsets.len(), 1);
        let ips = |a: &Option<Vec<EndpointAddress>>| {
            a.iter().flatten().map(|a| a.ip.clone()).collect::<Vec<_>>()
        };
        assert_eq!(ips(&subsets[0].addresses), ["10.244.0.2"]);
        assert_eq!(ips(&subsets[0].not_ready_addresses), ["10.244.0.3"]);
        assert_eq!(subsets[0].ports.as_ref().unwrap()[0].port, 8080);
    }

    #[test]
    fn named_target_ports_resolve_per_pod() {
        let svc = web();
        let all = vec![
            pod(
                "old",
                "10.244.0.2",
                true,
                json!([{"name": "http", "containerPort": 8080}]),
            ),
            pod(
                "new",
                "10.244.0.3",
                true,
                json!([{"name": "http", "containerPort": 9090}]),
            ),
            pod(
                "udp",
                "10.244.0.4",
                true,
                json!([{"name": "http", "containerPort": 53, "protocol": "UDP"}]),
            ),
        ];
        let groups = desired_groups(&svc, &all);
        let ports: BTreeSet<Option<i32>> = groups
            .values()
            .map(|g| g.ports.first().and_then(|p| p.port))
            .collect();
        // 8080 and 9090 in slices of their own; the UDP-only pod serves no TCP port.
        assert_eq!(ports, [None, Some(8080), Some(9090)].into());
        let plan = plan_slices(&svc, groups, Vec::new());
        assert_eq!(plan.create.len(), 3);
        let subsets = desired_subsets(&svc, &all);
        assert_eq!(
            subsets.len(),
            2,
            "the pod without the port is not in Endpoints"
        );
    }

    #[test]
    fn slices_hold_at_most_a_hundred_and_are_updated_in_place() {
        let svc = web();
        let plan = plan_slices(&svc, desired_groups(&svc, &pods(250)), Vec::new());
        assert_eq!(plan.create.len(), 3);
        assert!(plan.create.iter().all(|s| s.endpoints.len() <= 100));
        let slice = &plan.create[0];
        let labels = slice.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[SERVICE_NAME_LABEL], "web");
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY);
        assert_eq!(labels["app"], "web");
        assert_eq!(
            slice.metadata.owner_references.as_ref().unwrap()[0].uid,
            "svc-uid"
        );
        let slices = apply(plan, Vec::new());

        // Nothing changed: nothing to write.
        let again = plan_slices(&svc, desired_groups(&svc, &pods(250)), slices.clone());
        assert!(again.create.is_empty() && again.update.is_empty() && again.delete.is_empty());

        // One pod turns unready: only its slice is rewritten, in place.
        let mut changed = pods(250);
        changed[120] = pod(
            "p120",
            "10.244.0.122",
            false,
            json!([{"name": "http", "containerPort": 8080}]),
        );
        let plan = plan_slices(&svc, desired_groups(&svc, &changed), slices.clone());
        assert!(plan.create.is_empty() && plan.delete.is_empty());
        assert_eq!(plan.update.len(), 1);

        // Scale down to 30: the endpoints stay where they were, emptied slices go.
        let plan = plan_slices(&svc, desired_groups(&svc, &pods(30)), slices.clone());
        assert!(plan.create.is_empty());
        assert_eq!(plan.delete.len(), 2);
        let after = apply(plan, slices);
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].endpoints.len(), 30);
    }

    #[test]
    fn no_endpoints_leave_one_placeholder_and_stale_slices_go() {
        let svc = web();
        let plan = plan_slices(&svc, desired_groups(&svc, &[]), Vec::new());
        assert_eq!(plan.create.len(), 1);
        assert!(plan.create[0].endpoints.is_empty());
        let slices = apply(plan, Vec::new());
        let again = plan_slices(&svc, BTreeMap::new(), slices.clone());
        assert!(again.create.is_empty() && again.update.is_empty() && again.delete.is_empty());

        // A slice of an earlier Service of the same name is replaced.
        let mut recreated = web();
        recreated.metadata.uid = Some("other-uid".into());
        let plan = plan_slices(&recreated, desired_groups(&recreated, &pods(1)), slices);
        assert_eq!(plan.delete.len(), 1);
        assert_eq!(plan.create.len(), 1);
    }

    #[test]
    fn hostnames_are_published_for_pods_in_the_services_subdomain() {
        let svc = service(json!({"selector": {"app": "web"}, "clusterIP": "None"}));
        let mut p = pod("db-0", "10.244.0.5", true, json!([]));
        let spec = p.spec.as_mut().unwrap();
        spec.hostname = Some("db-0".into());
        spec.subdomain = Some("web".into());
        let groups = desired_groups(&svc, &[p.clone()]);
        let g = groups.values().next().unwrap();
        assert_eq!(g.endpoints[0].hostname.as_deref(), Some("db-0"));
        let subsets = desired_subsets(&svc, &[p]);
        assert_eq!(
            subsets[0].addresses.as_ref().unwrap()[0]
                .hostname
                .as_deref(),
            Some("db-0")
        );
        assert!(slice_labels(&svc).contains_key(HEADLESS_LABEL));
    }
}
