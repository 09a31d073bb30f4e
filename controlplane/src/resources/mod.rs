//! The resource registry: one entry per served resource, carrying everything the generic API
//! handler needs to know about it (names, scope, subresources, strategy). Adding a resource is
//! adding an entry here, never a new handler.

mod apps;
mod core;
mod meta;
mod misc;
pub mod table;
mod validation;

use std::collections::BTreeMap;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::api::errors::FieldError;
pub use meta::{now_rfc3339, set_path};
pub use table::Column;
pub use validation::{validate_object_meta, validate_pod_spec};

/// How an object must look to be stored; per-resource behaviour of create/update.
pub trait Strategy: Sync {
    /// Fills in the defaults Kubernetes' SetDefaults_* would.
    fn default(&self, _obj: &mut Value) {}
    /// Validation beyond the schema; `old` is set on updates.
    fn validate(&self, _obj: &Value, _old: Option<&Value>) -> Vec<FieldError> {
        Vec::new()
    }
    /// What a fresh object's status is (servers own status; clients' values are dropped).
    fn initial_status(&self, _obj: &Value) -> Option<Value> {
        None
    }
    /// Extra table columns after NAME (AGE is added last unless `own_age`).
    fn columns(&self) -> &'static [Column] {
        &[]
    }
    fn cells(&self, _obj: &Value) -> Vec<Value> {
        Vec::new()
    }
    /// Whether `columns` already hold the age column (events print LAST SEEN first).
    fn own_age(&self) -> bool {
        false
    }
}

pub struct NoStrategy;
impl Strategy for NoStrategy {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sub {
    Status,
    Scale,
    Binding,
    /// pods/log, pods/exec, pods/attach: served by the pod's node, proxied by `api::kubelet`.
    Log,
    Exec,
    Attach,
}

/// Round-trips an object through its k8s-openapi type: type errors come back with the field
/// path; fields the type does not know are dropped (the caller compares to find them).
pub type Decode = fn(&Value) -> Result<Value, String>;

fn decode<K: DeserializeOwned + Serialize>(v: &Value) -> Result<Value, String> {
    let typed: K = serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        }
    })?;
    serde_json::to_value(typed).map_err(|e| e.to_string())
}

pub struct Resource {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub list_kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub subresources: &'static [Sub],
    /// Whether `metadata.generation` tracks spec changes.
    pub generation: bool,
    /// Whether PUT may create a missing object (Kubernetes' AllowCreateOnUpdate).
    pub create_on_update: bool,
    /// Fields besides metadata.name/namespace usable in fieldSelector.
    pub field_selectors: &'static [&'static str],
    pub decode: Decode,
    pub strategy: &'static dyn Strategy,
    /// For /scale: the JSON path of the selector in spec (`spec.selector`).
    pub scale_selector: bool,
}

impl std::fmt::Debug for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.plural)?;
        if !self.group.is_empty() {
            write!(f, ".{}", self.group)?;
        }
        Ok(())
    }
}

impl Resource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn has(&self, sub: Sub) -> bool {
        self.subresources.contains(&sub)
    }

    /// Storage key prefix for this resource (and namespace, if given).
    pub fn key_prefix(&self, namespace: Option<&str>) -> String {
        let group = if self.group.is_empty() {
            "core"
        } else {
            self.group
        };
        match namespace {
            Some(ns) if self.namespaced => format!("/registry/{group}/{}/{ns}/", self.plural),
            _ => format!("/registry/{group}/{}/", self.plural),
        }
    }

    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}{name}", self.key_prefix(namespace))
    }

    /// All selectable field names of this resource.
    pub fn selectable(&self, field: &str) -> bool {
        matches!(field, "metadata.name" | "metadata.namespace")
            || self.field_selectors.contains(&field)
    }
}

macro_rules! resource {
    ($ty:ty, $group:expr, $kind:expr, $plural:expr, $singular:expr, namespaced: $ns:expr,
     short: $short:expr, cat: $cat:expr, subs: $subs:expr, generation: $gen:expr,
     create_on_update: $cou:expr, fields: $fields:expr, strategy: $strategy:expr, scale: $scale:expr) => {
        Resource {
            group: $group,
            version: "v1",
            kind: $kind,
            list_kind: concat!($kind, "List"),
            plural: $plural,
            singular: $singular,
            namespaced: $ns,
            short_names: $short,
            categories: $cat,
            subresources: $subs,
            generation: $gen,
            create_on_update: $cou,
            field_selectors: $fields,
            decode: decode::<$ty>,
            strategy: $strategy,
            scale_selector: $scale,
        }
    };
}

use k8s_openapi::api::discovery::v1 as discovery_v1;
use k8s_openapi::api::{apps::v1 as apps_v1, coordination::v1 as coord_v1, core::v1 as core_v1};

const ALL: &[&str] = &["all"];
const NONE: &[&str] = &[];

pub static RESOURCES: &[Resource] = &[
    resource!(core_v1::Namespace, "", "Namespace", "namespaces", "namespace", namespaced: false,
        short: &["ns"], cat: NONE, subs: &[Sub::Status], generation: false, create_on_update: false,
        fields: &["status.phase"], strategy: &core::NamespaceStrategy, scale: false),
    resource!(core_v1::Node, "", "Node", "nodes", "node", namespaced: false,
        short: &["no"], cat: NONE, subs: &[Sub::Status], generation: false, create_on_update: false,
        fields: &["spec.unschedulable"], strategy: &core::NodeStrategy, scale: false),
    resource!(core_v1::Pod, "", "Pod", "pods", "pod", namespaced: true,
        short: &["po"], cat: ALL, subs: &[Sub::Status, Sub::Binding, Sub::Log, Sub::Exec, Sub::Attach], generation: false, create_on_update: false,
        fields: &["spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
                  "status.phase", "status.podIP", "status.nominatedNodeName"],
        strategy: &core::PodStrategy, scale: false),
    resource!(core_v1::Service, "", "Service", "services", "service", namespaced: true,
        short: &["svc"], cat: ALL, subs: &[Sub::Status], generation: false, create_on_update: false,
        fields: &["spec.clusterIP", "spec.type"], strategy: &core::ServiceStrategy, scale: false),
    resource!(core_v1::Endpoints, "", "Endpoints", "endpoints", "endpoints", namespaced: true,
        short: &["ep"], cat: NONE, subs: &[], generation: false, create_on_update: true,
        fields: &[], strategy: &core::EndpointsStrategy, scale: false),
    resource!(core_v1::Event, "", "Event", "events", "event", namespaced: true,
        short: &["ev"], cat: NONE, subs: &[], generation: false, create_on_update: true,
        fields: &["involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
                  "involvedObject.uid", "involvedObject.apiVersion", "involvedObject.resourceVersion",
                  "involvedObject.fieldPath", "reason", "reportingComponent", "source", "type"],
        strategy: &core::EventStrategy, scale: false),
    resource!(core_v1::ConfigMap, "", "ConfigMap", "configmaps", "configmap", namespaced: true,
        short: &["cm"], cat: NONE, subs: &[], generation: false, create_on_update: false,
        fields: &[], strategy: &core::ConfigMapStrategy, scale: false),
    resource!(core_v1::Secret, "", "Secret", "secrets", "secret", namespaced: true,
        short: NONE, cat: NONE, subs: &[], generation: false, create_on_update: false,
        fields: &["type"], strategy: &core::SecretStrategy, scale: false),
    resource!(apps_v1::Deployment, "apps", "Deployment", "deployments", "deployment", namespaced: true,
        short: &["deploy"], cat: ALL, subs: &[Sub::Status, Sub::Scale], generation: true, create_on_update: false,
        fields: &[], strategy: &apps::DeploymentStrategy, scale: true),
    resource!(apps_v1::ReplicaSet, "apps", "ReplicaSet", "replicasets", "replicaset", namespaced: true,
        short: &["rs"], cat: ALL, subs: &[Sub::Status, Sub::Scale], generation: true, create_on_update: false,
        fields: &["status.replicas"], strategy: &apps::ReplicaSetStrategy, scale: true),
    resource!(apps_v1::DaemonSet, "apps", "DaemonSet", "daemonsets", "daemonset", namespaced: true,
        short: &["ds"], cat: ALL, subs: &[Sub::Status], generation: true, create_on_update: false,
        fields: &[], strategy: &apps::DaemonSetStrategy, scale: false),
    resource!(discovery_v1::EndpointSlice, "discovery.k8s.io", "EndpointSlice", "endpointslices", "endpointslice",
        namespaced: true, short: NONE, cat: NONE, subs: &[], generation: true, create_on_update: false,
        fields: &[], strategy: &misc::EndpointSliceStrategy, scale: false),
    resource!(coord_v1::Lease, "coordination.k8s.io", "Lease", "leases", "lease", namespaced: true,
        short: NONE, cat: NONE, subs: &[], generation: false, create_on_update: true,
        fields: &[], strategy: &misc::LeaseStrategy, scale: false),
];

/// Looks a resource up by group and plural name.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The resource stored under `key` (keys are `/registry/<group>/<plural>/...`).
pub fn for_key(key: &str) -> Option<&'static Resource> {
    let mut parts = key.strip_prefix("/registry/")?.splitn(3, '/');
    let group = parts.next()?;
    let plural = parts.next()?;
    let group = if group == "core" { "" } else { group };
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.plural == plural)
}

/// The API groups served, in discovery order, with their versions.
pub fn groups() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for r in RESOURCES {
        if !r.group.is_empty() && !out.contains(&r.group) {
            out.push(r.group);
        }
    }
    out
}

/// Reads a dotted field path (`spec.nodeName`) as the string a field selector compares with.
pub fn field_value(obj: &Value, path: &str) -> String {
    let mut cur = obj;
    for part in path.split('.') {
        match cur.get(part) {
            Some(v) => cur = v,
            None => return String::new(),
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Object(m) if path == "source" => m
            .get("component")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        other => other.to_string(),
    }
}

/// `metadata.labels` as a map (empty when absent or malformed).
pub fn labels(obj: &Value) -> BTreeMap<String, String> {
    string_map(obj.pointer("/metadata/labels"))
}

pub fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_resource_is_found_by_its_storage_key() {
        for r in RESOURCES {
            let key = r.key(Some("default"), "x");
            assert!(
                std::ptr::eq(for_key(&key).expect("resource for key"), r),
                "{key}"
            );
        }
    }
}
