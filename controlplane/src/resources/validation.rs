//! Validation rules shared by several resources (names, labels, pod specs).

use std::collections::HashSet;

use serde_json::Value;

use super::string_map;
use crate::api::errors::FieldError;

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn is_dns1035_label(s: &str) -> bool {
    is_dns_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

/// How a resource's names are checked.
#[derive(Clone, Copy)]
pub enum NameRule {
    Subdomain,
    Label,
    Dns1035,
    /// Events, leases: anything path-safe.
    PathSegment,
}

fn check_name(rule: NameRule, name: &str) -> Result<(), &'static str> {
    let ok = match rule {
        NameRule::Subdomain => is_dns_subdomain(name),
        NameRule::Label => is_dns_label(name),
        NameRule::Dns1035 => is_dns1035_label(name),
        NameRule::PathSegment => {
            !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '%'])
        }
    };
    if ok {
        return Ok(());
    }
    Err(match rule {
        NameRule::Subdomain => {
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
        }
        NameRule::Label => {
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
        }
        NameRule::Dns1035 => {
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
        }
        NameRule::PathSegment => "may not be '.' or '..' and may not contain '/' or '%'",
    })
}

fn is_qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix
        && !is_dns_subdomain(p)
    {
        return false;
    }
    !name.is_empty() && name.len() <= 63 && is_label_value(name)
}

fn is_label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric())
}

/// Checks `metadata` (name, labels, annotations) of any object.
pub fn validate_object_meta(obj: &Value, rule: NameRule, errs: &mut Vec<FieldError>) {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if name.is_empty() {
        errs.push(FieldError::required("metadata.name"));
    } else if let Err(why) = check_name(rule, name) {
        errs.push(FieldError::invalid("metadata.name", name, why));
    }
    for (k, v) in string_map(obj.pointer("/metadata/labels")) {
        if !is_qualified_name(&k) {
            errs.push(FieldError::invalid("metadata.labels", &k, "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
        }
        if !is_label_value(&v) {
            errs.push(FieldError::invalid("metadata.labels", &v, "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
        }
    }
    let annotations = string_map(obj.pointer("/metadata/annotations"));
    let size: usize = annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > 256 * 1024 {
        errs.push(FieldError {
            field: "metadata.annotations".into(),
            reason: "FieldValueTooLong",
            message: "Too long: must have at most 262144 bytes".into(),
        });
    }
    for k in annotations.keys() {
        if !is_qualified_name(k) {
            errs.push(FieldError::invalid("metadata.annotations", k, "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
        }
    }
}

fn check_port(v: Option<&Value>, field: String, required: bool, errs: &mut Vec<FieldError>) {
    match v.and_then(Value::as_i64) {
        None if required => errs.push(FieldError::required(field)),
        None => {}
        Some(p) if !(1..=65535).contains(&p) => errs.push(FieldError::invalid(
            field,
            p,
            "must be between 1 and 65535, inclusive",
        )),
        Some(_) => {}
    }
}

pub fn check_protocol(v: Option<&Value>, field: String, errs: &mut Vec<FieldError>) {
    if let Some(p) = v.and_then(Value::as_str)
        && !matches!(p, "TCP" | "UDP" | "SCTP")
    {
        errs.push(FieldError::not_supported(field, p, &["SCTP", "TCP", "UDP"]));
    }
}

pub fn check_non_negative(v: Option<&Value>, field: &str, errs: &mut Vec<FieldError>) {
    if let Some(n) = v.and_then(Value::as_i64)
        && n < 0
    {
        errs.push(FieldError::invalid(
            field,
            n,
            "must be greater than or equal to 0",
        ));
    }
}

/// Checks a PodSpec at `path` (e.g. `spec.template.spec`).
pub fn validate_pod_spec(spec: Option<&Value>, path: &str, errs: &mut Vec<FieldError>) {
    let Some(spec) = spec else {
        errs.push(FieldError::required(path.to_owned()));
        return;
    };
    let mut names = HashSet::new();
    for list in ["initContainers", "containers"] {
        let containers = spec.get(list).and_then(Value::as_array);
        if list == "containers" && containers.is_none_or(|c| c.is_empty()) {
            errs.push(FieldError::required(format!("{path}.containers")));
        }
        for (i, c) in containers.into_iter().flatten().enumerate() {
            let at = format!("{path}.{list}[{i}]");
            let name = c.get("name").and_then(Value::as_str).unwrap_or("");
            if name.is_empty() {
                errs.push(FieldError::required(format!("{at}.name")));
            } else if !is_dns_label(name) {
                errs.push(FieldError::invalid(format!("{at}.name"), name, "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"));
            } else if !names.insert(name.to_owned()) {
                errs.push(FieldError::duplicate(format!("{at}.name"), name));
            }
            if c.get("image")
                .and_then(Value::as_str)
                .is_none_or(|s| s.trim().is_empty())
            {
                errs.push(FieldError::required(format!("{at}.image")));
            }
            if let Some(p) = c.get("imagePullPolicy").and_then(Value::as_str)
                && !matches!(p, "Always" | "IfNotPresent" | "Never")
            {
                errs.push(FieldError::not_supported(
                    format!("{at}.imagePullPolicy"),
                    p,
                    &["Always", "IfNotPresent", "Never"],
                ));
            }
            for (j, port) in c
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                check_port(
                    port.get("containerPort"),
                    format!("{at}.ports[{j}].containerPort"),
                    true,
                    errs,
                );
                check_port(
                    port.get("hostPort"),
                    format!("{at}.ports[{j}].hostPort"),
                    false,
                    errs,
                );
                check_protocol(
                    port.get("protocol"),
                    format!("{at}.ports[{j}].protocol"),
                    errs,
                );
            }
            if list == "containers" {
                validate_probes(c, &at, errs);
            }
            for (j, env) in c
                .get("env")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                if env
                    .get("name")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    errs.push(FieldError::required(format!("{at}.env[{j}].name")));
                }
            }
        }
    }
    if let Some(p) = spec.get("restartPolicy").and_then(Value::as_str)
        && !matches!(p, "Always" | "OnFailure" | "Never")
    {
        errs.push(FieldError::not_supported(
            format!("{path}.restartPolicy"),
            p,
            &["Always", "OnFailure", "Never"],
        ));
    }
    if let Some(p) = spec.get("dnsPolicy").and_then(Value::as_str)
        && !matches!(
            p,
            "ClusterFirst" | "ClusterFirstWithHostNet" | "Default" | "None"
        )
    {
        errs.push(FieldError::not_supported(
            format!("{path}.dnsPolicy"),
            p,
            &["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"],
        ));
    }
    check_non_negative(
        spec.get("terminationGracePeriodSeconds"),
        &format!("{path}.terminationGracePeriodSeconds"),
        errs,
    );
    let mut volumes = HashSet::new();
    for (i, v) in spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let name = v.get("name").and_then(Value::as_str).unwrap_or("");
        if name.is_empty() {
            errs.push(FieldError::required(format!("{path}.volumes[{i}].name")));
        } else if !volumes.insert(name.to_owned()) {
            errs.push(FieldError::duplicate(
                format!("{path}.volumes[{i}].name"),
                name,
            ));
        }
    }
}

/// IsValidPortName: an IANA service name.
fn port_name_errors(name: &str) -> Vec<&'static str> {
    let mut out = Vec::new();
    if name.is_empty() || name.len() > 15 {
        out.push("must be no more than 15 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        out.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)");
    }
    if !name.bytes().any(|b| b.is_ascii_lowercase()) {
        out.push("must contain at least one letter (a-z)");
    }
    if name.contains("--") {
        out.push("must not contain consecutive hyphens");
    }
    if name.starts_with('-') || name.ends_with('-') {
        out.push("must not begin or end with a hyphen");
    }
    out
}

/// ValidatePortNumOrName.
fn check_port_num_or_name(v: Option<&Value>, field: String, errs: &mut Vec<FieldError>) {
    match v {
        None => errs.push(FieldError::required(field)),
        Some(Value::String(name)) => {
            for why in port_name_errors(name) {
                errs.push(FieldError::invalid(field.clone(), name, why));
            }
        }
        Some(_) => check_port(v, field, true, errs),
    }
}

/// Kubernetes' validateProbe and the container-level probe rules.
fn validate_probes(c: &Value, at: &str, errs: &mut Vec<FieldError>) {
    for kind in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let Some(probe) = c.get(kind).filter(|p| !p.is_null()) else {
            continue;
        };
        let path = format!("{at}.{kind}");
        let mut handlers = 0;
        for handler in ["exec", "httpGet", "tcpSocket", "grpc"] {
            let Some(h) = probe.get(handler).filter(|h| !h.is_null()) else {
                continue;
            };
            if handlers > 0 {
                errs.push(FieldError::forbidden(
                    format!("{path}.{handler}"),
                    "may not specify more than 1 handler type",
                ));
                continue;
            }
            handlers += 1;
            let hpath = format!("{path}.{handler}");
            match handler {
                "exec" => {
                    if h.get("command")
                        .and_then(Value::as_array)
                        .is_none_or(|c| c.is_empty())
                    {
                        errs.push(FieldError::required(format!("{hpath}.command")));
                    }
                }
                "httpGet" => {
                    if h.get("path")
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
                    {
                        errs.push(FieldError::required(format!("{hpath}.path")));
                    }
                    check_port_num_or_name(h.get("port"), format!("{hpath}.port"), errs);
                    if let Some(scheme) = h.get("scheme").and_then(Value::as_str)
                        && !matches!(scheme, "HTTP" | "HTTPS")
                    {
                        errs.push(FieldError::not_supported(
                            format!("{hpath}.scheme"),
                            scheme,
                            &["HTTP", "HTTPS"],
                        ));
                    }
                    for (k, header) in h
                        .get("httpHeaders")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .enumerate()
                    {
                        let name = header.get("name").and_then(Value::as_str).unwrap_or("");
                        // An HTTP token: what may stand before the colon of a header line.
                        let token = !name.is_empty()
                            && name.bytes().all(|b| {
                                b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
                            });
                        if !token {
                            errs.push(FieldError::invalid(
                                format!("{hpath}.httpHeaders[{k}].name"),
                                name,
                                "a valid HTTP header must consist of alphanumeric characters or '-' (e.g. 'X-Header-Name', regex used for validation is '[-A-Za-z0-9]+')",
                            ));
                        }
                    }
                }
                "tcpSocket" => {
                    check_port_num_or_name(h.get("port"), format!("{hpath}.port"), errs);
                }
                _ => check_port(h.get("port"), format!("{hpath}.port"), true, errs),
            }
        }
        if handlers == 0 {
            errs.push(FieldError {
                message: "Required value: must specify a handler type".into(),
                ..FieldError::required(path.clone())
            });
        }
        for field in [
            "initialDelaySeconds",
            "timeoutSeconds",
            "periodSeconds",
            "successThreshold",
            "failureThreshold",
        ] {
            check_non_negative(probe.get(field), &format!("{path}.{field}"), errs);
        }
        let grace = probe.get("terminationGracePeriodSeconds");
        if let Some(g) = grace.and_then(Value::as_i64) {
            if kind == "readinessProbe" {
                errs.push(FieldError::invalid(
                    format!("{path}.terminationGracePeriodSeconds"),
                    g,
                    "must not be set for readinessProbes",
                ));
            } else if g <= 0 {
                errs.push(FieldError::invalid(
                    format!("{path}.terminationGracePeriodSeconds"),
                    g,
                    "must be greater than 0",
                ));
            }
        }
        if kind != "readinessProbe"
            && let Some(n) = probe.get("successThreshold").and_then(Value::as_i64)
            && n != 1
        {
            errs.push(FieldError::invalid(
                format!("{path}.successThreshold"),
                n,
                "must be 1",
            ));
        }
    }
}

pub fn check_port_field(
    v: Option<&Value>,
    field: String,
    required: bool,
    errs: &mut Vec<FieldError>,
) {
    check_port(v, field, required, errs);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_pod_without_containers_is_rejected_naming_the_field() {
        let mut errs = Vec::new();
        validate_pod_spec(Some(&json!({})), "spec", &mut errs);
        assert_eq!(errs, [FieldError::required("spec.containers")]);
    }

    #[test]
    fn probes_are_validated_as_kubernetes_does() {
        let pod = |probes: Value| {
            let mut c = json!({"name": "web", "image": "x"});
            for (k, v) in probes.as_object().into_iter().flatten() {
                c[k] = v.clone();
            }
            let mut errs = Vec::new();
            validate_pod_spec(Some(&json!({"containers": [c]})), "spec", &mut errs);
            errs.into_iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect::<Vec<_>>()
        };
        let at = "spec.containers[0]";
        assert_eq!(
            pod(json!({
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http", "httpHeaders": [{"name": "X-A", "value": "1"}]}, "successThreshold": 1},
                "readinessProbe": {"exec": {"command": ["true"]}, "successThreshold": 3},
                "startupProbe": {"tcpSocket": {"port": 8080}, "failureThreshold": 30, "terminationGracePeriodSeconds": 5},
            })),
            Vec::<String>::new()
        );
        let errs = pod(json!({
            "livenessProbe": {"tcpSocket": {"port": 8080}, "successThreshold": 2},
            "readinessProbe": {"terminationGracePeriodSeconds": 3},
            "startupProbe": {"exec": {"command": []}, "tcpSocket": {"port": "Bad--Name"}, "periodSeconds": -1},
        }));
        for want in [
            format!("{at}.livenessProbe.successThreshold: Invalid value: \"2\": must be 1"),
            format!("{at}.readinessProbe: Required value: must specify a handler type"),
            format!(
                "{at}.readinessProbe.terminationGracePeriodSeconds: Invalid value: \"3\": must not be set for readinessProbes"
            ),
            format!("{at}.startupProbe.exec.command: Required value"),
            format!(
                "{at}.startupProbe.tcpSocket: Forbidden: may not specify more than 1 handler type"
            ),
            format!(
                "{at}.startupProbe.periodSeconds: Invalid value: \"-1\": must be greater than or equal to 0"
            ),
        ] {
            assert!(errs.contains(&want), "{want} in {errs:#?}");
        }
        assert_eq!(errs.len(), 6, "{errs:#?}");
        let errs = pod(json!({
            "livenessProbe": {"httpGet": {"path": "", "port": 0, "scheme": "FTP", "httpHeaders": [{"name": "a b", "value": ""}]}},
            "readinessProbe": {"tcpSocket": {"port": "1234"}},
        }));
        assert_eq!(errs.len(), 5, "{errs:#?}");
        assert!(
            errs.iter()
                .any(|e| e.contains("livenessProbe.httpGet.port")
                    && e.contains("between 1 and 65535")),
            "{errs:#?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.contains("readinessProbe.tcpSocket.port")
                    && e.contains("at least one letter")),
            "{errs:#?}"
        );
    }

    #[test]
    fn uppercase_names_and_bad_label_values_are_rejected() {
        let mut errs = Vec::new();
        let obj = json!({"metadata": {"name": "Web", "labels": {"app": "-x"}}});
        validate_object_meta(&obj, NameRule::Subdomain, &mut errs);
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert_eq!(errs[0].field, "metadata.name");
    }
}
