//! Strategies of the apps/v1 workload resources.

use serde_json::{Value, json};

use super::core::{check_replicas, default_pod_spec, selector_cell};
use super::meta::{default_field, get_mut, str_at};
use super::table::{Column, age, col, containers_and_images, int, int_at, or_none, wide};
use super::validation::{NameRule, validate_object_meta, validate_pod_spec};
use super::{Strategy, string_map};
use crate::api::errors::FieldError;

fn default_template(obj: &mut Value) {
    if let Some(spec) = get_mut(obj, &["spec", "template", "spec"]) {
        default_pod_spec(spec);
    }
}

/// Selector present, matching the template's labels, and (apps/v1) immutable.
fn validate_workload(obj: &Value, old: Option<&Value>, errs: &mut Vec<FieldError>) {
    validate_object_meta(obj, NameRule::Subdomain, errs);
    let selector = obj.pointer("/spec/selector");
    match selector {
        None | Some(Value::Null) => errs.push(FieldError::required("spec.selector")),
        Some(sel) => match crate::api::selector::LabelSelector::from_label_selector_json(sel) {
            Err(e) => errs.push(FieldError::invalid("spec.selector", sel, &e.to_string())),
            Ok(s) if s.is_empty() => errs.push(FieldError::invalid(
                "spec.selector",
                sel,
                "empty selector is invalid for deployment",
            )),
            Ok(s) => {
                let tl = string_map(obj.pointer("/spec/template/metadata/labels"));
                if !s.matches(&tl) {
                    let shown: Vec<String> = tl.iter().map(|(k, v)| format!("{k}:{v}")).collect();
                    errs.push(FieldError::invalid(
                        "spec.template.metadata.labels",
                        format!("map[{}]", shown.join(" ")),
                        "`selector` does not match template `labels`",
                    ));
                }
            }
        },
    }
    if let Some(old) = old
        && old.pointer("/spec/selector") != selector
    {
        errs.push(FieldError::invalid(
            "spec.selector",
            selector.cloned().unwrap_or(Value::Null),
            "field is immutable",
        ));
    }
    check_replicas(obj, errs);
    validate_pod_spec(
        obj.pointer("/spec/template/spec"),
        "spec.template.spec",
        errs,
    );
    if let Some(p) = obj
        .pointer("/spec/template/spec/restartPolicy")
        .and_then(Value::as_str)
        && p != "Always"
    {
        errs.push(FieldError::not_supported(
            "spec.template.spec.restartPolicy",
            p,
            &["Always"],
        ));
    }
}

fn wide_cells(obj: &Value) -> [Value; 3] {
    let (c, i) = containers_and_images(obj.pointer("/spec/template/spec"));
    [c, i, selector_cell(obj)]
}

const WIDE: [Column; 3] = [
    wide("Containers", "Names of each container in the template."),
    wide(
        "Images",
        "Images referenced by each container in the template.",
    ),
    wide("Selector", "Label selector for pods."),
];

pub struct DeploymentStrategy;
impl Strategy for DeploymentStrategy {
    fn default(&self, obj: &mut Value) {
        let Some(spec) = obj.get_mut("spec") else {
            return;
        };
        default_field(spec, "replicas", json!(1));
        default_field(spec, "revisionHistoryLimit", json!(10));
        default_field(spec, "progressDeadlineSeconds", json!(600));
        default_field(spec, "strategy", json!({"type": "RollingUpdate"}));
        if let Some(strategy) = spec.get_mut("strategy") {
            default_field(strategy, "type", json!("RollingUpdate"));
            if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                default_field(strategy, "rollingUpdate", json!({}));
                if let Some(ru) = strategy.get_mut("rollingUpdate") {
                    default_field(ru, "maxUnavailable", json!("25%"));
                    default_field(ru, "maxSurge", json!("25%"));
                }
            }
        }
        default_template(obj);
    }
    fn validate(&self, obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        validate_workload(obj, old, &mut errs);
        let ty = str_at(obj, "/spec/strategy/type");
        if !ty.is_empty() && !matches!(ty, "RollingUpdate" | "Recreate") {
            errs.push(FieldError::not_supported(
                "spec.strategy.type",
                ty,
                &["Recreate", "RollingUpdate"],
            ));
        }
        if ty != "Recreate" {
            validate_rolling_update(obj, &mut errs);
        }
        if ty == "Recreate"
            && obj
                .pointer("/spec/strategy/rollingUpdate")
                .is_some_and(|v| !v.is_null())
        {
            errs.push(FieldError::forbidden(
                "spec.strategy.rollingUpdate",
                "may not be specified when strategy `type` is 'Recreate'",
            ));
        }
        errs
    }
    fn initial_status(&self, _obj: &Value) -> Option<Value> {
        Some(json!({}))
    }
    fn columns(&self) -> &'static [Column] {
        const C: &[Column] = &[
            col("Ready", "Number of the pod with ready state"),
            int(
                "Up-to-date",
                "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
            ),
            int(
                "Available",
                "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
            ),
            col("Age", "CreationTimestamp"),
            WIDE[0],
            WIDE[1],
            WIDE[2],
        ];
        C
    }
    fn own_age(&self) -> bool {
        true
    }
    fn cells(&self, obj: &Value) -> Vec<Value> {
        let [c, i, s] = wide_cells(obj);
        vec![
            json!(format!(
                "{}/{}",
                int_at(obj, "/status/readyReplicas"),
                int_at(obj, "/spec/replicas")
            )),
            json!(int_at(obj, "/status/updatedReplicas")),
            json!(int_at(obj, "/status/availableReplicas")),
            age(obj.pointer("/metadata/creationTimestamp")),
            c,
            i,
            s,
        ]
    }
}

/// maxSurge / maxUnavailable: non-negative ints or percentages, unavailable at most 100%,
/// not both zero (the rollout could never make progress).
fn validate_rolling_update(obj: &Value, errs: &mut Vec<FieldError>) {
    const BASE: &str = "spec.strategy.rollingUpdate";
    let check = |name: &str, errs: &mut Vec<FieldError>| -> Option<(bool, i64)> {
        let v = obj.pointer(&format!("/spec/strategy/rollingUpdate/{name}"))?;
        let field = format!("{BASE}.{name}");
        let (pct, n) = match v {
            Value::Number(n) => (false, n.as_i64()?),
            Value::String(s) => match s.strip_suffix('%').and_then(|d| d.parse::<i64>().ok()) {
                Some(n) if !s.starts_with('-') && !s.starts_with('+') => (true, n),
                _ => {
                    errs.push(FieldError::invalid(
                        field,
                        s,
                        "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')",
                    ));
                    return None;
                }
            },
            _ => return None,
        };
        if n < 0 {
            errs.push(FieldError::invalid(
                field,
                n,
                "must be greater than or equal to 0",
            ));
            return None;
        }
        Some((pct, n))
    };
    let surge = check("maxSurge", errs);
    let unavailable = check("maxUnavailable", errs);
    if let Some((true, n)) = unavailable
        && n > 100
    {
        errs.push(FieldError::invalid(
            format!("{BASE}.maxUnavailable"),
            format!("{n}%"),
            "must not be greater than 100%",
        ));
    }
    if let (Some((_, 0)), Some((_, 0))) = (surge, unavailable) {
        errs.push(FieldError::invalid(
            format!("{BASE}.maxUnavailable"),
            0,
            "may not be 0 when `maxSurge` is 0",
        ));
    }
}

pub struct ReplicaSetStrategy;
impl Strategy for ReplicaSetStrategy {
    fn default(&self, obj: &mut Value) {
        if let Some(spec) = obj.get_mut("spec") {
            default_field(spec, "replicas", json!(1));
        }
        default_template(obj);
    }
    fn validate(&self, obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        validate_workload(obj, old, &mut errs);
        errs
    }
    fn initial_status(&self, _obj: &Value) -> Option<Value> {
        Some(json!({"replicas": 0}))
    }
    fn columns(&self) -> &'static [Column] {
        const C: &[Column] = &[
            int("Desired", "Number of desired pods."),
            int("Current", "Number of actual pods."),
            int("Ready", "Number of ready pods."),
            col("Age", "CreationTimestamp"),
            WIDE[0],
            WIDE[1],
            WIDE[2],
        ];
        C
    }
    fn own_age(&self) -> bool {
        true
    }
    fn cells(&self, obj: &Value) -> Vec<Value> {
        let [c, i, s] = wide_cells(obj);
        vec![
            json!(int_at(obj, "/spec/replicas")),
            json!(int_at(obj, "/status/replicas")),
            json!(int_at(obj, "/status/readyReplicas")),
            age(obj.pointer("/metadata/creationTimestamp")),
            c,
            i,
            s,
        ]
    }
}

pub struct DaemonSetStrategy;
impl Strategy for DaemonSetStrategy {
    fn default(&self, obj: &mut Value) {
        let Some(spec) = obj.get_mut("spec") else {
            return;
        };
        default_field(spec, "revisionHistoryLimit", json!(10));
        default_field(spec, "updateStrategy", json!({"type": "RollingUpdate"}));
        if let Some(us) = spec.get_mut("updateStrategy") {
            default_field(us, "type", json!("RollingUpdate"));
            if us.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                default_field(us, "rollingUpdate", json!({}));
                if let Some(ru) = us.get_mut("rollingUpdate") {
                    default_field(ru, "maxUnavailable", json!(1));
                    default_field(ru, "maxSurge", json!(0));
                }
            }
        }
        default_template(obj);
    }
    fn validate(&self, obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        validate_workload(obj, old, &mut errs);
        errs
    }
    fn initial_status(&self, _obj: &Value) -> Option<Value> {
        Some(
            json!({"currentNumberScheduled": 0, "numberMisscheduled": 0, "desiredNumberScheduled": 0, "numberReady": 0}),
        )
    }
    fn columns(&self) -> &'static [Column] {
        const C: &[Column] = &[
            int(
                "Desired",
                "The total number of nodes that should be running the daemon pod.",
            ),
            int(
                "Current",
                "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod.",
            ),
            int(
                "Ready",
                "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready.",
            ),
            int(
                "Up-to-date",
                "The total number of nodes that are running updated daemon pod",
            ),
            int(
                "Available",
                "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available.",
            ),
            col(
                "Node Selector",
                "NodeSelector is a selector which must be true for the pod to fit on a node.",
            ),
            col("Age", "CreationTimestamp"),
            WIDE[0],
            WIDE[1],
            WIDE[2],
        ];
        C
    }
    fn own_age(&self) -> bool {
        true
    }
    fn cells(&self, obj: &Value) -> Vec<Value> {
        let [c, i, s] = wide_cells(obj);
        let ns: Vec<String> = string_map(obj.pointer("/spec/template/spec/nodeSelector"))
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        vec![
            json!(int_at(obj, "/status/desiredNumberScheduled")),
            json!(int_at(obj, "/status/currentNumberScheduled")),
            json!(int_at(obj, "/status/numberReady")),
            json!(int_at(obj, "/status/updatedNumberScheduled")),
            json!(int_at(obj, "/status/numberAvailable")),
            or_none(ns.join(",")),
            age(obj.pointer("/metadata/creationTimestamp")),
            c,
            i,
            s,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(surge: Value, unavailable: Value) -> Vec<String> {
        let obj = json!({"spec": {"strategy": {"type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}}}});
        let mut errs = Vec::new();
        validate_rolling_update(&obj, &mut errs);
        errs.iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect()
    }

    #[test]
    fn rolling_update_bounds_must_be_counts_or_percentages_and_not_both_zero() {
        assert!(errors(json!("25%"), json!(1)).is_empty());
        assert!(errors(json!(0), json!("0%"))[0].contains("may not be 0 when `maxSurge` is 0"));
        assert!(errors(json!("x"), json!(1))[0].contains("a valid percent string"));
        assert!(errors(json!(-1), json!(1))[0].contains("greater than or equal to 0"));
        assert!(errors(json!(1), json!("150%"))[0].contains("not be greater than 100%"));
    }
}
