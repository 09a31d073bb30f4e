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
    fn uppercase_names_and_bad_label_values_are_rejected() {
        let mut errs = Vec::new();
        let obj = json!({"metadata": {"name": "Web", "labels": {"app": "-x"}}});
        validate_object_meta(&obj, NameRule::Subdomain, &mut errs);
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert_eq!(errs[0].field, "metadata.name");
    }
}
