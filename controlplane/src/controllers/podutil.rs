//! Helpers the workload controllers share: pod readiness and availability, controller
//! ownerReferences, label selectors over typed objects, and core/v1 Events.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};

use crate::api::selector;

/// Whether the pod's Ready condition is True.
pub fn is_ready(pod: &Pod) -> bool {
    ready_condition(pod).is_some_and(|c| c.status == "True")
}

fn ready_condition(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// When the pod became ready (the Ready condition's lastTransitionTime), if it is ready.
pub fn ready_since(pod: &Pod) -> Option<Timestamp> {
    let c = ready_condition(pod)?;
    if c.status != "True" {
        return None;
    }
    c.last_transition_time.as_ref().map(|t| t.0)
}

/// How long until a ready pod counts as available; `Some(0)` when it already is, `None` when
/// it is not ready. A ready pod without a transition time counts as ready since forever, as
/// Kubernetes does.
pub fn until_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> Option<i64> {
    if !is_ready(pod) {
        return None;
    }
    if min_ready_seconds <= 0 {
        return Some(0);
    }
    let Some(since) = ready_since(pod) else {
        return Some(0);
    };
    let elapsed = now.duration_since(since).as_secs();
    Some((i64::from(min_ready_seconds) - elapsed).max(0))
}

pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    until_available(pod, min_ready_seconds, now) == Some(0)
}

/// Pods that still count: not being deleted, not finished.
pub fn is_active(pod: &Pod) -> bool {
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("");
    pod.metadata.deletion_timestamp.is_none() && phase != "Succeeded" && phase != "Failed"
}

/// The ownerReference with `controller: true`, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

/// A controller reference to `owner`, blocking its foreground deletion as Kubernetes' does.
pub fn controller_ref(meta: &ObjectMeta, api_version: &str, kind: &str) -> OwnerReference {
    OwnerReference {
        api_version: api_version.to_owned(),
        kind: kind.to_owned(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A parsed label selector; `None` when it selects nothing (missing or malformed), as an
/// invalid selector must never adopt anything.
pub fn parse_selector(sel: Option<&LabelSelector>) -> Option<selector::LabelSelector> {
    let json = serde_json::to_value(sel?).ok()?;
    let parsed = selector::LabelSelector::from_label_selector_json(&json).ok()?;
    (!parsed.is_empty()).then_some(parsed)
}

pub fn labels_of(meta: &ObjectMeta) -> BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

pub fn now() -> Timestamp {
    Timestamp::now()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn pod(ready: &str, since: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "status": {"conditions": [{"type": "Ready", "status": ready, "lastTransitionTime": since}]}
        }))
        .unwrap()
    }

    #[test]
    fn a_pod_is_available_only_after_min_ready_seconds_of_readiness() {
        let now: Timestamp = "2024-01-01T00:00:10Z".parse().unwrap();
        let p = pod("True", "2024-01-01T00:00:05Z");
        assert!(is_available(&p, 0, now));
        assert!(is_available(&p, 5, now));
        assert!(!is_available(&p, 8, now));
        assert_eq!(until_available(&p, 8, now), Some(3));
        assert_eq!(
            until_available(&pod("False", "2024-01-01T00:00:05Z"), 0, now),
            None
        );
    }

    #[test]
    fn missing_or_empty_selectors_select_nothing() {
        assert!(parse_selector(None).is_none());
        assert!(parse_selector(Some(&LabelSelector::default())).is_none());
        let sel: LabelSelector =
            serde_json::from_value(json!({"matchLabels": {"a": "b"}})).unwrap();
        let s = parse_selector(Some(&sel)).unwrap();
        assert!(s.matches(&BTreeMap::from([("a".into(), "b".into())])));
    }
}
