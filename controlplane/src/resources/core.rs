//! Strategies of the core/v1 resources.

use serde_json::{Value, json};

use super::Strategy;
use super::meta::{default_field, each_mut, get_mut, set_path, str_at};
use super::table::{Column, age, col, int, int_at, or_none, selector_string, wide};
use super::validation::{
    NameRule, check_non_negative, check_port_field, check_protocol, validate_object_meta,
    validate_pod_spec,
};
use crate::api::errors::FieldError;

/// `imagePullPolicy` Kubernetes picks when none is given: Always for `:latest` or no tag.
fn default_pull_policy(image: &str) -> &'static str {
    let last = image.rsplit('/').next().unwrap_or(image);
    let no_digest = !image.contains('@');
    match last.split_once(':') {
        Some((_, "latest")) => "Always",
        None if no_digest => "Always",
        _ => "IfNotPresent",
    }
}

fn default_probe(probe: &mut Value) {
    default_field(probe, "timeoutSeconds", json!(1));
    default_field(probe, "periodSeconds", json!(10));
    default_field(probe, "successThreshold", json!(1));
    default_field(probe, "failureThreshold", json!(3));
    if let Some(h) = probe.get_mut("httpGet") {
        default_field(h, "path", json!("/"));
        default_field(h, "scheme", json!("HTTP"));
    }
}

fn default_container(c: &mut Value) {
    let image = c
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    default_field(c, "imagePullPolicy", json!(default_pull_policy(&image)));
    default_field(c, "terminationMessagePath", json!("/dev/termination-log"));
    default_field(c, "terminationMessagePolicy", json!("File"));
    default_field(c, "resources", json!({}));
    each_mut(c, &["ports"], |p| {
        default_field(p, "protocol", json!("TCP"))
    });
    each_mut(c, &["env"], |e| {
        if let Some(f) = get_mut(e, &["valueFrom", "fieldRef"]) {
            default_field(f, "apiVersion", json!("v1"));
        }
    });
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get_mut(probe) {
            default_probe(p);
        }
    }
}

/// SetDefaults_PodSpec and friends, for pods and pod templates alike.
pub fn default_pod_spec(spec: &mut Value) {
    default_field(spec, "restartPolicy", json!("Always"));
    default_field(spec, "terminationGracePeriodSeconds", json!(30));
    default_field(spec, "dnsPolicy", json!("ClusterFirst"));
    default_field(spec, "securityContext", json!({}));
    default_field(spec, "schedulerName", json!("default-scheduler"));
    for list in ["containers", "initContainers"] {
        each_mut(spec, &[list], default_container);
    }
    each_mut(spec, &["volumes"], |v| {
        for (kind, field) in [("configMap", "defaultMode"), ("secret", "defaultMode")] {
            if let Some(src) = v.get_mut(kind) {
                default_field(src, field, json!(0o644));
            }
        }
    });
}

pub struct NamespaceStrategy;
impl Strategy for NamespaceStrategy {
    fn default(&self, obj: &mut Value) {
        let name = str_at(obj, "/metadata/name").to_owned();
        if !name.is_empty() {
            set_path(
                obj,
                &["metadata", "labels", "kubernetes.io/metadata.name"],
                json!(name),
            );
        }
        if obj.pointer("/spec/finalizers").is_none() {
            set_path(obj, &["spec", "finalizers"], json!(["kubernetes"]));
        }
    }
    fn validate(&self, obj: &Value, _old: Option<&Value>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        validate_object_meta(obj, NameRule::Label, &mut errs);
        errs
    }
    fn initial_status(&self, _obj: &Value) -> Option<Value> {
        Some(json!({"phase": "Active"}))
    }
    fn columns(&self) -> &'static [Column] {
        const C: &[Column] = &[col("Status", "The status of the namespace")];
        C
    }
    fn cells(&self, obj: &Value) -> Vec<Value> {
        vec![json!(str_at(obj, "/status/phase"))]
    }
}

pub struct NodeStrategy;
impl Strategy for NodeStrategy {
    fn validate(&self, obj: &Value, _old: Option<&Value>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        validate_object_meta(obj, NameRule::Subdomain, &mut errs);
        errs
    }
    fn columns(&self) -> &'static [Column] {
        const C: &[Column] = &[
            col("Status", "The status of the node"),
            col("Roles", "The roles of the node"),
            col("Age", "CreationTimestamp"),
            col("Version", "Kubelet Version reported by the node."),
            wide("Internal-IP", "List of internal IPs."),
            wide("External-IP", "List of external IPs."),
            wide("OS-Image", "OS Image reported by the node."),
            wide("Kernel-Version", "Kernel Version reported by the node."),
            wide(
                "Container-Runtime",
                "Container Runtime Version reported by the node.",
            ),
        ];
        C
    }
    fn own_age(&self) -> bool {
        true
    }
    fn cells(&self, obj: &Value) -> Vec<Value> {
        let ready = obj
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
            .and_then(|c| c.get("status").and_then(Value::as_str));
        let mut status = match ready {
            Some("True") => "Ready".to_owned(),
            Some("False") => "NotReady".to_owned(),
            // kubectl prints Unknown (a silent node) as NotReady too.
            _ => "NotReady".to_owned(),
        };
        if obj.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
            status.push_str(",SchedulingDisabled");
        }
        let mut roles: Vec<String> = super::labels(obj)
            .keys()
            .filter_map(|k| {
                k.strip_prefix("node-role.kubernetes.io/")
                    .map(str::to_owned)
            })
            .collect();
        roles.sort();
        let addr = |kind: &str| {
            let v: Vec<&str> = obj
                .pointer("/status/addresses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|a| a.get("type").and_then(Value::as_str) == Some(kind))
                .filter_map(|a| a.get("address")?.as_str())
                .collect();
            or_none(v.join(","))
        };
        vec![
            json!(status),
            or_none(roles.join(",")),
            age(obj.pointer("/metadata/creationTimestamp")),
            json!(str_at(obj, "/status/nodeInfo/kubeletVersion")),
            addr("InternalIP"),
            addr("ExternalIP"),
            json!(str_at(obj, "/status/nodeInfo/osImage")),
            json!(str_at(obj, "/status/nodeInfo/kernelVersion")),
            json!(str_at(obj, "/status/nodeInfo/containerRuntimeVersion")),
        ]
    }
}

pub struct PodStrategy;
impl Strategy for PodStrategy {
    fn default(&self, obj: &mut Value) {
        if let Some(spec) = obj.get_mut("spec") {
            default_pod_spec(spec);
            default_field(spec, "priority", json!(0));
            default_field(spec, "enableServiceLinks", json!(true));
            // DefaultTolerationSeconds admission: pods ride out short node outages for 300 s.
            let tolerations = spec
                .as_object_mut()
                .map(|m| m.entry("tolerations").or_insert_with(|| json!([])));
            if let Some(Value::Array(ts)) = tolerations {
                for key in [
                    "node.kubernetes.io/not-ready",
                    "node.kubernetes.io/unreachable",
                ] {
                    let present = ts.iter().any(|t| {
                        t.get("key").and_then(Value::as_str) == Some(key)
                            || (t.get("key").is_none()
                                && t.get("operator").and_then(Value::as_str) == Some("Exists"))
                    });
                    if !present {
                        ts.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
                    }
                }
            }
        }
    }
    fn validate(&self, obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        validate_object_meta(obj, NameRule::Subdomain, &mut errs);
        validate_pod_spec(obj.get("spec"), "spec", &mut errs);
        if let Some(old) = old {
            // Only images (and a few scheduling fields) of a pod may change after creation.
            let strip = |v: &Value| {
                let mut s = v.get("spec").cloned().unwrap_or(Value::Null);
                for list in ["containers", "initContainers"] {
                    each_mut(&mut s, &[list], |c| {
                        if let Value::Object(m) = c {
                            m.remove("image");
                        }
                    });
                }
                if let Value::Object(m) = &mut s {
                    for f in ["activeDeadlineSeconds", "tolerations", "nodeName"] {
                        m.remove(f);
                    }
                }
                s
            };
            if strip(obj) != strip(old) {
                errs.push(FieldError::forbidden("spec", "pod updates may not change fields other than `spec.containers[*].image`, `spec.initContainers[*].image`, `spec.activeDeadlineSeconds` or `spec.tolerations` (only additions to existing tolerations)"));
            }
            let (new_node, old_node) =
                (str_at(obj, "/spec/nodeName"), str_at(old, "/spec/nodeName"));
            if !old_node.is_empty() && new_node != old_node {
                errs.push(FieldError::forbidden(
                    "spec.nodeName",
                    "may not be changed once set",
                ));
            }
        }
        errs
    }
    fn initial_status(&self, obj: &Value) -> Option<Value> {
        let containers = obj.pointer("/spec/containers").and_then(Value::as_array);
        let (mut any, mut guaranteed) = (false, true);
        for c in containers.into_iter().flatten() {
            let req = c.pointer("/resources/requests").and_then(Value::as_object);
            let lim = c.pointer("/resources/limits").and_then(Value::as_object);
            any |= req.is_some_and(|r| !r.is_empty()) || lim.is_some_and(|l| !l.is_empty());
            for r in ["cpu", "memory"] {
                let l = lim.and_then(|l| l.get(r));
                let q = req.and_then(|q| q.get(r)).or(l);
                guaranteed &= l.is_some() && q == l;
            }
        }
        let qos = if !any {
            "BestEffort"
        } else if guaranteed {
            "Guaranteed"
        } else {
            "Burstable"
        };
        Some(json!({"phase": "Pending", "qosClass": qos}))
    }
    fn columns(&self) -> &'static [Column] {
        const C: &[Column] = &[
            col(
                "Ready",
                "The aggregate readiness state of this pod for accepting traffic.",
            ),
            col(
                "Status",
                "The aggregate status of the containers in this pod.",
            ),
            col(
                "Restarts",
                "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
            ),
            col("Age", "CreationTimestamp"),
            wide("IP", "IP address allocated to the pod."),
            wide("Node", "Name of the node this pod is assigned to."),
            wide(
                "Nominated Node",
                "Name of the node where the pod is nominated to run.",
            ),
            wide("Readiness Gates", "The readiness gates of this pod."),
        ];
        C
    }
    fn own_age(&self) -> bool {
        true
    }
    fn cells(&self, obj: &Value) -> Vec<Value> {
        let total = obj
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        let statuses: Vec<&Value> = obj
            .pointer("/status/containerStatuses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .collect();
        let ready = statuses
            .iter()
            .filter(|s| s.get("ready").and_then(Value::as_bool) == Some(true))
            .count();
        let restarts: i64 = statuses.iter().map(|s| int_at(s, "/restartCount")).sum();
        let mut reason = obj
            .pointer("/status/reason")
            .and_then(Value::as_str)
            .or_else(|| obj.pointer("/status/phase").and_then(Value::as_str))
            .unwrap_or("Pending")
            .to_owned();
        for s in statuses.iter().rev() {
            if let Some(r) = s.pointer("/state/waiting/reason").and_then(Value::as_str) {
                reason = r.to_owned();
            } else if let Some(r) = s
                .pointer("/state/terminated/reason")
                .and_then(Value::as_str)
            {
                reason = r.to_owned();
            }
        }
        if obj.pointer("/metadata/deletionTimestamp").is_some() {
            reason = if str_at(obj, "/status/reason") == "NodeLost" {
                "Unknown".into()
            } else {
                "Terminating".into()
            };
        }
        vec![
            json!(format!("{ready}/{total}")),
            json!(reason),
            json!(restarts.to_string()),
            age(obj.pointer("/metadata/creationTimestamp")),
            or_none(str_at(obj, "/status/podIP").to_owned()),
            or_none(str_at(obj, "/spec/nodeName").to_owned()),
            or_none(str_at(obj, "/status/nominatedNodeName").to_owned()),
            json!("<none>"),
        ]
    }
}

pub struct ServiceStrategy;
impl Strategy for ServiceStrategy {
    fn default(&self, obj: &mut Value) {
        let Some(spec) = obj.get_mut("spec") else {
            return;
        };
        default_field(spec, "type", json!("ClusterIP"));
        default_field(spec, "sessionAffinity", json!("None"));
        default_field(spec, "internalTrafficPolicy", json!("Cluster"));
        let ty = spec
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        if matches!(ty.as_str(), "NodePort" | "LoadBalancer") {
            default_field(spec, "externalTrafficPolicy", json!("Cluster"));
        }
        if spec.get("sessionAffinity").and_then(Value::as_str) == Some("ClientIP") {
            let cfg = spec.as_object_mut().map(|m| {
                m.entry("sessionAffinityConfig")
                    .or_insert_with(|| json!({}))
            });
            if let Some(cfg) = cfg {
                set_path_default(cfg, &["clientIP", "timeoutSeconds"], json!(10800));
            }
        }
        each_mut(spec, &["ports"], |p| {
            default_field(p, "protocol", json!("TCP"));
            if let Some(port) = p.get("port").cloned() {
                default_field(p, "targetPort", port);
            }
        });
    }
    fn validate(&self, obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        validate_object_meta(obj, NameRule::Dns1035, &mut errs);
        let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
        let ty = spec
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP");
        if !matches!(
            ty,
            "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
        ) {
            errs.push(FieldError::not_supported(
                "spec.type",
                ty,
                &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
            ));
        }
        let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
        let ports = spec
            .get("ports")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if ports.is_empty() && !headless && ty != "ExternalName" {
            errs.push(FieldError::required("spec.ports"));
        }
        let mut names = std::collections::HashSet::new();
        for (i, p) in ports.iter().enumerate() {
            let at = format!("spec.ports[{i}]");
            check_port_field(p.get("port"), format!("{at}.port"), true, &mut errs);
            check_protocol(p.get("protocol"), format!("{at}.protocol"), &mut errs);
            let name = p.get("name").and_then(Value::as_str).unwrap_or("");
            if ports.len() > 1 && name.is_empty() {
                errs.push(FieldError::required(format!("{at}.name")));
            } else if !names.insert(name.to_owned()) {
                errs.push(FieldError::duplicate(format!("{at}.name"), name));
            }
            if let Some(np) = p.get("nodePort").and_then(Value::as_i64)
                && np != 0
                && ty == "ClusterIP"
            {
                errs.push(FieldError::forbidden(
                    format!("{at}.nodePort"),
                    "may not be used when `type` is 'ClusterIP'",
                ));
            }
            match p.get("targetPort") {
                Some(Value::Number(n)) if !(1..=65535).contains(&n.as_i64().unwrap_or(0)) => {
                    errs.push(FieldError::invalid(
                        format!("{at}.targetPort"),
                        n,
                        "must be between 1 and 65535, inclusive",
                    ));
                }
                _ => {}
            }
        }
        let affinity = spec
            .get("sessionAffinity")
            .and_then(Value::as_str)
            .unwrap_or("None");
        if !matches!(affinity, "None" | "ClientIP") {
            errs.push(FieldError::not_supported(
                "spec.sessionAffinity",
                affinity,
                &["ClientIP", "None"],
            ));
        }
        for (field, allowed) in [
            ("externalTrafficPolicy", ["Cluster", "Local"]),
            ("internalTrafficPolicy", ["Cluster", "Local"]),
        ] {
            if let Some(v) = spec.get(field).and_then(Value::as_str)
                && !allowed.contains(&v)
            {
                errs.push(FieldError::not_supported(
                    format!("spec.{field}"),
                    v,
                    &allowed,
                ));
            }
        }
        if let Some(old) = old {
            let old_ip = str_at(old, "/spec/clusterIP");
            let new_ip = str_at(obj, "/spec/clusterIP");
            if !old_ip.is_empty() && old_ip != new_ip && ty != "ExternalName" {
                errs.push(FieldError::invalid(
                    "spec.clusterIP",
                    new_ip,
                    "field is immutable",
                ));
            }
        }
        errs
    }
    fn initial_status(&self, _obj: &Value) -> Option<Value> {
        Some(json!({"loadBalancer": {}}))
    }
    fn columns(&self) -> &'static [Column] {
        const C: &[Column] = &[
            col("Type", "The type of the service"),
            col("Cluster-IP", "The cluster IP of the service"),
            col("External-IP", "The external IPs of the service"),
            col("Port(s)", "The ports of the service"),
            col("Age", "CreationTimestamp"),
            wide("Selector", "The selector of the service"),
        ];
        C
    }
    fn own_age(&self) -> bool {
        true
    }
    fn cells(&self, obj: &Value) -> Vec<Value> {
        let ty = str_at(obj, "/spec/type");
        let mut external: Vec<String> = obj
            .pointer("/status/loadBalancer/ingress")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|i| {
                i.get("ip")
                    .or(i.get("hostname"))?
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        external.extend(
            obj.pointer("/spec/externalIPs")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned)),
        );
        let ext = match ty {
            "ExternalName" => str_at(obj, "/spec/externalName").to_owned(),
            "LoadBalancer" if external.is_empty() => "<pending>".to_owned(),
            _ if external.is_empty() => "<none>".to_owned(),
            _ => external.join(","),
        };
        let ports: Vec<String> = obj
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|p| {
                let port = int_at(p, "/port");
                let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                match p.get("nodePort").and_then(Value::as_i64) {
                    Some(np) if np != 0 => format!("{port}:{np}/{proto}"),
                    _ => format!("{port}/{proto}"),
                }
            })
            .collect();
        let cluster_ip = str_at(obj, "/spec/clusterIP");
        let selector = super::string_map(obj.pointer("/spec/selector"))
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        vec![
            json!(ty),
            json!(if cluster_ip.is_empty() {
                "<none>"
            } else {
                cluster_ip
            }),
            json!(ext),
            or_none(ports.join(",")),
            age(obj.pointer("/metadata/creationTimestamp")),
            or_none(selector),
        ]
    }
}

fn set_path_default(obj: &mut Value, path: &[&str], value: Value) {
    let mut probe = obj.clone();
    let exists = path
        .iter()
        .try_fold(&mut probe, |cur, p| cur.get_mut(*p))
        .is_some_and(|v| !v.is_null());
    if !exists {
        set_path(obj, path, value);
    }
}

pub struct EndpointsStrategy;
impl Strategy for EndpointsStrategy {
    fn validate(&self, obj: &Value, _old: Option<&Value>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        validate_object_meta(obj, NameRule::Subdomain, &mut errs);
        errs
    }
    fn default(&self, obj: &mut Value) {
        each_mut(obj, &["subsets"], |s| {
            each_mut(s, &["ports"], |p| {
                default_field(p, "protocol", json!("TCP"))
            })
        });
    }
    fn columns(&self) -> &'static [Column] {
        const C: &[Column] = &[col("Endpoints", "Endpoints of the service")];
        C
    }
    fn cells(&self, obj: &Value) -> Vec<Value> {
        let mut eps = Vec::new();
        for s in obj
            .get("subsets")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let ports: Vec<i64> = s
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|p| int_at(p, "/port"))
                .collect();
            for a in s
                .get("addresses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let ip = a.get("ip").and_then(Value::as_str).unwrap_or("");
                if ports.is_empty() {
                    eps.push(ip.to_owned());
                }
                for p in &ports {
                    eps.push(format!("{ip}:{p}"));
                }
            }
        }
        let shown = if eps.len() > 3 {
            format!("{} + {} more...", eps[..3].join(","), eps.len() - 3)
        } else {
            eps.join(",")
        };
        vec![or_none(shown)]
    }
}

pub struct EventStrategy;
impl Strategy for EventStrategy {
    fn validate(&self, obj: &Value, _old: Option<&Value>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        validate_object_meta(obj, NameRule::PathSegment, &mut errs);
        errs
    }
    fn columns(&self) -> &'static [Column] {
        const C: &[Column] = &[
            col("Last Seen", "Time when last event was seen"),
            col("Type", "Type of this event"),
            col("Reason", "Reason why this event was generated"),
            col("Object", "The object that this event is about"),
            col(
                "Message",
                "A human-readable description of the status of this operation.",
            ),
        ];
        C
    }
    fn own_age(&self) -> bool {
        true
    }
    fn cells(&self, obj: &Value) -> Vec<Value> {
        let last = obj
            .get("lastTimestamp")
            .filter(|v| !v.is_null())
            .or_else(|| obj.get("eventTime"))
            .or_else(|| obj.pointer("/metadata/creationTimestamp"));
        vec![
            age(last),
            json!(str_at(obj, "/type")),
            json!(str_at(obj, "/reason")),
            json!(format!(
                "{}/{}",
                str_at(obj, "/involvedObject/kind").to_lowercase(),
                str_at(obj, "/involvedObject/name")
            )),
            json!(str_at(obj, "/message")),
        ]
    }
}

pub struct ConfigMapStrategy;
impl Strategy for ConfigMapStrategy {
    fn validate(&self, obj: &Value, _old: Option<&Value>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        validate_object_meta(obj, NameRule::Subdomain, &mut errs);
        validate_data_keys(obj, &mut errs);
        errs
    }
    fn columns(&self) -> &'static [Column] {
        const C: &[Column] = &[int("Data", "Number of data entries")];
        C
    }
    fn cells(&self, obj: &Value) -> Vec<Value> {
        let n = obj
            .get("data")
            .and_then(Value::as_object)
            .map_or(0, |m| m.len())
            + obj
                .get("binaryData")
                .and_then(Value::as_object)
                .map_or(0, |m| m.len());
        vec![json!(n)]
    }
}

fn validate_data_keys(obj: &Value, errs: &mut Vec<FieldError>) {
    for field in ["data", "binaryData", "stringData"] {
        for k in obj
            .get(field)
            .and_then(Value::as_object)
            .into_iter()
            .flat_map(|m| m.keys())
        {
            let ok = !k.is_empty()
                && k.len() <= 253
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !ok {
                errs.push(FieldError::invalid(format!("{field}[{k}]"), k, "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"));
            }
        }
    }
}

pub struct SecretStrategy;
impl Strategy for SecretStrategy {
    fn default(&self, obj: &mut Value) {
        default_field(obj, "type", json!("Opaque"));
        // stringData is write-only sugar: fold it into data (base64) as the API server does.
        if let Some(Value::Object(sd)) = obj.as_object_mut().and_then(|m| m.remove("stringData")) {
            use base64::Engine;
            for (k, v) in sd {
                let raw = v.as_str().unwrap_or_default();
                set_path(
                    obj,
                    &["data", &k],
                    json!(base64::engine::general_purpose::STANDARD.encode(raw)),
                );
            }
        }
    }
    fn validate(&self, obj: &Value, _old: Option<&Value>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        validate_object_meta(obj, NameRule::Subdomain, &mut errs);
        validate_data_keys(obj, &mut errs);
        errs
    }
    fn columns(&self) -> &'static [Column] {
        const C: &[Column] = &[
            col("Type", "The type of the secret"),
            int("Data", "Number of data entries"),
        ];
        C
    }
    fn cells(&self, obj: &Value) -> Vec<Value> {
        let n = obj
            .get("data")
            .and_then(Value::as_object)
            .map_or(0, |m| m.len());
        vec![json!(str_at(obj, "/type")), json!(n)]
    }
}

pub fn selector_cell(obj: &Value) -> Value {
    selector_string(obj.pointer("/spec/selector"))
}

pub fn check_replicas(obj: &Value, errs: &mut Vec<FieldError>) {
    check_non_negative(obj.pointer("/spec/replicas"), "spec.replicas", errs);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policy_defaults_follow_the_tag() {
        assert_eq!(default_pull_policy("nginx"), "Always");
        assert_eq!(default_pull_policy("nginx:latest"), "Always");
        assert_eq!(default_pull_policy("nginx:1.27"), "IfNotPresent");
        assert_eq!(default_pull_policy("localhost:5000/app"), "Always");
        assert_eq!(default_pull_policy("app@sha256:abc"), "IfNotPresent");
    }

    #[test]
    fn service_ports_default_target_port_and_protocol() {
        let mut svc = json!({"spec": {"ports": [{"port": 80}]}});
        ServiceStrategy.default(&mut svc);
        assert_eq!(
            svc["spec"]["ports"][0],
            json!({"port": 80, "targetPort": 80, "protocol": "TCP"})
        );
        assert_eq!(svc["spec"]["type"], "ClusterIP");
    }
}
