//! The Deployment controller: one ReplicaSet per pod template (named and labelled by the
//! template's hash), rolled from old to new by the RollingUpdate or Recreate strategy, with
//! revisions, history cleanup, proportional scaling and the Progressing/Available conditions
//! `kubectl rollout status` reads.
//!
//! Like the ReplicaSet controller, each pass re-lists replica sets with a consistent read,
//! so it always sees its own earlier writes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use serde_json::json;
use skiff_common::hash::fnv32a;

use super::events::ObjectRef as EventRef;
use super::podutil::{self, controller_of, parse_selector};
use super::runtime::Context;

const COMPONENT: &str = "deployment-controller";
const RESYNC: Duration = Duration::from_secs(300);

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
pub const HASH_LABEL: &str = "pod-template-hash";
/// Deployment annotations that are not copied to its replica sets.
const NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} failed: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("deployment has no namespace")]
    NoNamespace,
    #[error("invalid {field}: {value:?} is neither an integer nor a percentage")]
    IntOrPercent { field: &'static str, value: String },
    #[error("replica set {0} exists with another template (hash collision); retrying")]
    Collision(String),
}

fn api_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Api { what, source }
}

pub async fn run(ctx: Context) {
    let deployments: kube::Api<Deployment> = kube::Api::all(ctx.client.clone());
    let sets: kube::Api<ReplicaSet> = kube::Api::all(ctx.client.clone());
    Controller::new(deployments, watcher::Config::default())
        .owns(sets, watcher::Config::default())
        .run(reconcile, error_policy, Arc::new(ctx))
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!("deployment reconcile: {e}");
            }
        })
        .await;
}

fn error_policy(_d: Arc<Deployment>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!("deployment controller: {err}");
    Action::requeue(Duration::from_secs(2))
}

// ---------------------------------------------------------------------------------------
// Pure helpers (the arithmetic of Kubernetes' deployment utilities).

/// Kubernetes' rand.SafeEncodeString: digits mapped to consonants and digits that cannot
/// spell words.
fn safe_encode(s: &str) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    s.bytes()
        .map(|b| char::from(ALPHANUMS[usize::from(b) % ALPHANUMS.len()]))
        .collect()
}

/// The pod-template-hash of a template: stable across restarts (the canonical JSON of the
/// typed template), different after a hash collision bumps `collision_count`.
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut bytes = serde_json::to_vec(template).unwrap_or_default();
    if let Some(c) = collision_count {
        bytes.extend_from_slice(&c.to_le_bytes());
    }
    safe_encode(&fnv32a(&bytes).to_string())
}

/// Two templates are the same rollout when they differ at most in the hash label.
pub fn equal_ignoring_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    fn strip(t: &PodTemplateSpec) -> PodTemplateSpec {
        let mut t = t.clone();
        let meta = t.metadata.get_or_insert_with(Default::default);
        if let Some(labels) = meta.labels.as_mut() {
            labels.remove(HASH_LABEL);
            if labels.is_empty() {
                meta.labels = None;
            }
        }
        if meta == &ObjectMeta::default() {
            t.metadata = None;
        }
        t
    }
    strip(a) == strip(b)
}

/// An int-or-percent of `total`, percentages rounded up or down.
pub fn scaled_value(
    v: &IntOrString,
    total: i32,
    round_up: bool,
    field: &'static str,
) -> Result<i32, Error> {
    match v {
        IntOrString::Int(i) => Ok(*i),
        IntOrString::String(s) => {
            let bad = || Error::IntOrPercent {
                field,
                value: s.clone(),
            };
            let pct: i64 = s
                .strip_suffix('%')
                .ok_or_else(bad)?
                .parse()
                .map_err(|_| bad())?;
            let prod = pct * i64::from(total);
            let v = if round_up {
                (prod + 99).div_euclid(100)
            } else {
                prod.div_euclid(100)
            };
            i32::try_from(v).map_err(|_| bad())
        }
    }
}

/// (maxSurge, maxUnavailable) as pod counts; both zero would deadlock, so unavailable is 1.
pub fn fenceposts(d: &Deployment) -> Result<(i32, i32), Error> {
    let spec = d.spec.clone().unwrap_or_default();
    if !is_rolling(d) {
        return Ok((0, 0));
    }
    let replicas = spec.replicas.unwrap_or(1);
    let ru = spec
        .strategy
        .and_then(|s| s.rolling_update)
        .unwrap_or_default();
    let quarter = IntOrString::String("25%".into());
    let surge = scaled_value(
        ru.max_surge.as_ref().unwrap_or(&quarter),
        replicas,
        true,
        "maxSurge",
    )?;
    let unavailable = scaled_value(
        ru.max_unavailable.as_ref().unwrap_or(&quarter),
        replicas,
        false,
        "maxUnavailable",
    )?;
    if surge == 0 && unavailable == 0 {
        return Ok((0, 1));
    }
    Ok((surge.max(0), unavailable.max(0)))
}

fn is_rolling(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("RollingUpdate")
        != "Recreate"
}

fn replicas_of(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

/// How many pods may be unavailable during an update (0 for Recreate).
fn max_unavailable(d: &Deployment) -> Result<i32, Error> {
    let replicas = replicas_of(d);
    if !is_rolling(d) || replicas == 0 {
        return Ok(0);
    }
    Ok(fenceposts(d)?.1.min(replicas))
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn status_of(rs: &ReplicaSet) -> k8s_openapi::api::apps::v1::ReplicaSetStatus {
    rs.status.clone().unwrap_or_default()
}

/// Available pods of a replica set. Capped by spec so a replica set that was just scaled down
/// (whose status still counts pods it is about to delete) never looks more available than it
/// will be.
fn available_of(rs: &ReplicaSet) -> i32 {
    status_of(rs)
        .available_replicas
        .unwrap_or(0)
        .min(spec_replicas(rs))
}

fn revision_of(rs: &ReplicaSet) -> i64 {
    annotation(&rs.metadata, REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

fn created(rs: &ReplicaSet) -> (i64, String) {
    (
        rs.metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second())
            .unwrap_or(0),
        rs.metadata.name.clone().unwrap_or_default(),
    )
}

/// Pods a replica set may still have: its size, or more while it has not yet deleted the
/// pods of a scale-down. Kubernetes counts only sizes here, which lets live pods briefly
/// exceed replicas + maxSurge; counting both keeps the bound at every moment.
fn pods_of(rs: &ReplicaSet) -> i32 {
    spec_replicas(rs).max(status_of(rs).replicas)
}

/// Replicas the new replica set should have now (Kubernetes' NewRSNewReplicas, counting
/// pods not yet deleted).
pub fn new_rs_replicas(
    d: &Deployment,
    all: &[&ReplicaSet],
    new: &ReplicaSet,
) -> Result<i32, Error> {
    let replicas = replicas_of(d);
    if !is_rolling(d) {
        return Ok(replicas);
    }
    let (surge, _) = fenceposts(d)?;
    let current: i32 = all.iter().map(|rs| pods_of(rs)).sum();
    let max_total = replicas + surge;
    let new_spec = spec_replicas(new);
    if current >= max_total {
        return Ok(new_spec);
    }
    let up = (max_total - current).min(replicas - new_spec).max(0);
    Ok(new_spec + up)
}

/// A deployment is complete when every replica is updated and available and the controller
/// has seen its latest spec.
fn is_complete(d: &Deployment, s: &DeploymentStatus) -> bool {
    let r = replicas_of(d);
    s.updated_replicas.unwrap_or(0) == r
        && s.replicas.unwrap_or(0) == r
        && s.available_replicas.unwrap_or(0) == r
        && s.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
}

fn is_progressing(old: &DeploymentStatus, new: &DeploymentStatus) -> bool {
    let old_old = old.replicas.unwrap_or(0) - old.updated_replicas.unwrap_or(0);
    let new_old = new.replicas.unwrap_or(0) - new.updated_replicas.unwrap_or(0);
    new.updated_replicas.unwrap_or(0) > old.updated_replicas.unwrap_or(0)
        || old_old > new_old
        || new.ready_replicas.unwrap_or(0) > old.ready_replicas.unwrap_or(0)
        || new.available_replicas.unwrap_or(0) > old.available_replicas.unwrap_or(0)
}

fn deadline(d: &Deployment) -> Option<i64> {
    d.spec
        .as_ref()
        .and_then(|s| s.progress_deadline_seconds)
        .filter(|s| *s != i32::MAX)
        .map(i64::from)
}

fn condition<'a>(s: &'a DeploymentStatus, ty: &str) -> Option<&'a DeploymentCondition> {
    s.conditions.as_ref()?.iter().find(|c| c.type_ == ty)
}

fn seconds(now: Timestamp) -> Timestamp {
    Timestamp::from_second(now.as_second()).unwrap_or(now)
}

fn cond(
    ty: &str,
    status: &str,
    reason: &str,
    message: String,
    now: Timestamp,
) -> DeploymentCondition {
    let t = Time(seconds(now));
    DeploymentCondition {
        type_: ty.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_transition_time: Some(t.clone()),
        last_update_time: Some(t),
    }
}

/// Kubernetes' SetDeploymentCondition: same status and reason changes nothing; same status
/// keeps the transition time.
fn set_condition(s: &mut DeploymentStatus, mut c: DeploymentCondition) {
    let conds = s.conditions.get_or_insert_with(Vec::new);
    if let Some(cur) = conds.iter().find(|x| x.type_ == c.type_) {
        if cur.status == c.status && cur.reason == c.reason {
            return;
        }
        if cur.status == c.status {
            c.last_transition_time = cur.last_transition_time.clone();
        }
    }
    conds.retain(|x| x.type_ != c.type_);
    conds.push(c);
}

fn remove_condition(s: &mut DeploymentStatus, ty: &str) {
    if let Some(c) = s.conditions.as_mut() {
        c.retain(|x| x.type_ != ty);
    }
}

/// Status from the replica sets (Kubernetes' calculateStatus), conditions other than
/// Available carried over.
fn calculate_status(
    d: &Deployment,
    all: &[&ReplicaSet],
    new: Option<&ReplicaSet>,
    now: Timestamp,
) -> Result<DeploymentStatus, Error> {
    let old = d.status.clone().unwrap_or_default();
    let available: i32 = all.iter().map(|rs| available_of(rs)).sum();
    let total: i32 = all.iter().map(|rs| spec_replicas(rs)).sum();
    let mut s = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(all.iter().map(|rs| status_of(rs).replicas).sum()),
        updated_replicas: Some(new.map(|rs| status_of(rs).replicas).unwrap_or(0)),
        ready_replicas: Some(
            all.iter()
                .map(|rs| status_of(rs).ready_replicas.unwrap_or(0))
                .sum(),
        ),
        available_replicas: Some(available),
        unavailable_replicas: Some((total - available).max(0)),
        collision_count: old.collision_count,
        conditions: old.conditions.clone(),
        ..Default::default()
    };
    if available >= replicas_of(d) - max_unavailable(d)? {
        set_condition(
            &mut s,
            cond(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
                now,
            ),
        );
    } else {
        set_condition(
            &mut s,
            cond(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
                now,
            ),
        );
    }
    Ok(s)
}

/// The whole status as JSON with zeros spelled out: what is patched and compared.
fn status_json(s: &DeploymentStatus) -> serde_json::Value {
    json!({
        "observedGeneration": s.observed_generation.unwrap_or(0),
        "replicas": s.replicas.unwrap_or(0),
        "updatedReplicas": s.updated_replicas.unwrap_or(0),
        "readyReplicas": s.ready_replicas.unwrap_or(0),
        "availableReplicas": s.available_replicas.unwrap_or(0),
        "unavailableReplicas": s.unavailable_replicas.unwrap_or(0),
        "collisionCount": s.collision_count,
        "conditions": s.conditions.clone().unwrap_or_default(),
    })
}

/// The status after a rollout step with its Progressing condition (Kubernetes'
/// syncRolloutStatus), and when to look again for the progress deadline.
fn rollout_status(
    d: &Deployment,
    all: &[&ReplicaSet],
    new: Option<&ReplicaSet>,
    now: Timestamp,
) -> Result<(DeploymentStatus, Option<Duration>), Error> {
    let mut s = calculate_status(d, all, new, now)?;
    let Some(deadline) = deadline(d) else {
        remove_condition(&mut s, "Progressing");
        return Ok((s, None));
    };
    let old = d.status.clone().unwrap_or_default();
    let current = condition(&old, "Progressing").cloned();
    let done = s.replicas == s.updated_replicas
        && current.as_ref().and_then(|c| c.reason.as_deref()) == Some("NewReplicaSetAvailable");
    let name = new.and_then(|rs| rs.metadata.name.clone());
    let what = |suffix: &str| match &name {
        Some(n) => format!("ReplicaSet \"{n}\" {suffix}"),
        None => format!("Deployment {suffix}"),
    };
    let paused = d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
    if !done && !paused {
        if is_complete(d, &s) {
            set_condition(
                &mut s,
                cond(
                    "Progressing",
                    "True",
                    "NewReplicaSetAvailable",
                    what("has successfully progressed."),
                    now,
                ),
            );
        } else if is_progressing(&old, &s) {
            // Progress refreshes lastUpdateTime, which the deadline counts from.
            let mut c = cond(
                "Progressing",
                "True",
                "ReplicaSetUpdated",
                what("is progressing."),
                now,
            );
            if let Some(cur) = &current
                && cur.status == "True"
            {
                c.last_transition_time = cur.last_transition_time.clone();
            }
            remove_condition(&mut s, "Progressing");
            s.conditions.get_or_insert_with(Vec::new).push(c);
        } else if timed_out(current.as_ref(), deadline, now) {
            set_condition(
                &mut s,
                cond(
                    "Progressing",
                    "False",
                    "ProgressDeadlineExceeded",
                    what("has timed out progressing."),
                    now,
                ),
            );
        }
    }
    // Requeue for the deadline of a rollout that is still under way.
    let after = match condition(&s, "Progressing") {
        Some(c)
            if !is_complete(d, &s)
                && !paused
                && !matches!(
                    c.reason.as_deref(),
                    Some("NewReplicaSetAvailable" | "ProgressDeadlineExceeded")
                ) =>
        {
            let from = c
                .last_update_time
                .as_ref()
                .map(|t| t.0.as_second())
                .unwrap_or(now.as_second());
            let left = from + deadline - now.as_second();
            Some(Duration::from_secs(left.max(1).unsigned_abs()))
        }
        _ => None,
    };
    Ok((s, after))
}

fn timed_out(c: Option<&DeploymentCondition>, deadline: i64, now: Timestamp) -> bool {
    let Some(c) = c else {
        return false;
    };
    match c.reason.as_deref() {
        Some("NewReplicaSetAvailable") => false,
        Some("ProgressDeadlineExceeded") => true,
        _ => c
            .last_update_time
            .as_ref()
            .is_some_and(|t| t.0.as_second() + deadline < now.as_second()),
    }
}

/// Annotations a new (or newly current) replica set carries: the deployment's own, its
/// revision, and on creation the replica counts. Returns whether anything changed.
fn set_new_rs_annotations(
    d: &Deployment,
    rs_ann: &mut BTreeMap<String, String>,
    revision: i64,
    exists: bool,
    max_surge: i32,
) -> bool {
    let mut changed = false;
    for (k, v) in d.metadata.annotations.iter().flatten() {
        if NOT_COPIED.contains(&k.as_str()) || rs_ann.get(k) == Some(v) {
            continue;
        }
        rs_ann.insert(k.clone(), v.clone());
        changed = true;
    }
    let old: i64 = rs_ann
        .get(REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    if old < revision {
        if exists && old > 0 {
            let history = match rs_ann.get(REVISION_HISTORY) {
                Some(h) if !h.is_empty() => format!("{h},{old}"),
                _ => old.to_string(),
            };
            rs_ann.insert(REVISION_HISTORY.into(), history);
        }
        rs_ann.insert(REVISION.into(), revision.to_string());
        changed = true;
    }
    if !exists {
        changed |= set_replicas_annotations(d, rs_ann, max_surge);
    }
    changed
}

fn set_replicas_annotations(
    d: &Deployment,
    ann: &mut BTreeMap<String, String>,
    max_surge: i32,
) -> bool {
    let desired = replicas_of(d).to_string();
    let max = (replicas_of(d) + max_surge).to_string();
    let changed =
        ann.get(DESIRED_REPLICAS) != Some(&desired) || ann.get(MAX_REPLICAS) != Some(&max);
    ann.insert(DESIRED_REPLICAS.into(), desired);
    ann.insert(MAX_REPLICAS.into(), max);
    changed
}

/// A scaling event: some active replica set was sized for another replica count.
fn is_scaling_event(d: &Deployment, all: &[&ReplicaSet]) -> bool {
    let want = replicas_of(d).to_string();
    all.iter()
        .filter(|rs| spec_replicas(rs) > 0)
        .any(|rs| annotation(&rs.metadata, DESIRED_REPLICAS).is_some_and(|v| v != want))
}

/// New sizes for proportional scaling of a rolling deployment whose replica count changed
/// mid-rollout (Kubernetes' scale): the change is spread over the active replica sets by
/// their share of the previous size, the remainder going to the largest.
pub fn proportional_sizes(d: &Deployment, all: &[&ReplicaSet], surge: i32) -> Vec<(String, i32)> {
    let replicas = replicas_of(d);
    let mut active: Vec<&ReplicaSet> = all
        .iter()
        .copied()
        .filter(|rs| spec_replicas(rs) > 0)
        .collect();
    let current: i32 = active.iter().map(|rs| spec_replicas(rs)).sum();
    let allowed = if replicas > 0 { replicas + surge } else { 0 };
    let to_add = allowed - current;
    // Larger first; ties go to the newer when growing and the older when shrinking.
    active.sort_by(|a, b| {
        spec_replicas(b).cmp(&spec_replicas(a)).then_with(|| {
            if to_add > 0 {
                created(b).cmp(&created(a))
            } else {
                created(a).cmp(&created(b))
            }
        })
    });
    let status_replicas = d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let mut added = 0;
    let mut sizes: Vec<(String, i32)> = Vec::new();
    for rs in &active {
        let size = spec_replicas(rs);
        let mut proportion = 0;
        if to_add != 0 {
            let fraction = if replicas == 0 {
                -size
            } else {
                let annotated = annotation(&rs.metadata, MAX_REPLICAS)
                    .and_then(|v| v.parse::<i32>().ok())
                    .unwrap_or(status_replicas);
                if annotated > 0 {
                    let target =
                        (f64::from(size) * f64::from(allowed) / f64::from(annotated)).round();
                    // Bounded by allowed * size / annotated, both i32.
                    #[allow(clippy::cast_possible_truncation)]
                    let target = target as i32;
                    target - size
                } else {
                    0
                }
            };
            let left = to_add - added;
            proportion = if to_add > 0 {
                fraction.min(left)
            } else {
                fraction.max(left)
            };
        }
        added += proportion;
        sizes.push((
            rs.metadata.name.clone().unwrap_or_default(),
            size + proportion,
        ));
    }
    if let Some(first) = sizes.first_mut() {
        first.1 = (first.1 + to_add - added).max(0);
    }
    sizes
}

// ---------------------------------------------------------------------------------------
// Reconciliation.

struct Pass<'a> {
    ctx: &'a Context,
    d: Deployment,
    ns: String,
    sets: kube::Api<ReplicaSet>,
    /// Replica sets this deployment controls, refreshed after every write.
    owned: Vec<ReplicaSet>,
    now: Timestamp,
}

async fn reconcile(d: Arc<Deployment>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = d.metadata.namespace.clone().ok_or(Error::NoNamespace)?;
    let name = d.metadata.name.clone().unwrap_or_default();
    let deployments: kube::Api<Deployment> = kube::Api::namespaced(ctx.client.clone(), &ns);
    let Some(d) = deployments
        .get_opt(&name)
        .await
        .map_err(api_err(format!("reading deployment {ns}/{name}")))?
    else {
        return Ok(Action::await_change());
    };
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let sets: kube::Api<ReplicaSet> = kube::Api::namespaced(ctx.client.clone(), &ns);
    let mut pass = Pass {
        ctx: &ctx,
        d,
        ns,
        sets,
        owned: Vec::new(),
        now: podutil::now(),
    };
    let Some(selector) = parse_selector(pass.d.spec.as_ref().map(|s| &s.selector)) else {
        // An empty selector would select every pod in the namespace: refuse, as Kubernetes does.
        pass.event(
            "Warning",
            "SelectingAll",
            "This deployment is selecting all pods. A non-empty selector is required.".into(),
        );
        return Ok(Action::await_change());
    };
    pass.claim(&selector).await?;
    let after = pass.sync().await?;
    Ok(Action::requeue(after.unwrap_or(RESYNC)))
}

impl Pass<'_> {
    fn name(&self) -> String {
        self.d.metadata.name.clone().unwrap_or_default()
    }

    fn event(&self, ty: &str, reason: &str, message: String) {
        let about = EventRef::of(&self.d.metadata, "apps/v1", "Deployment");
        self.ctx
            .events
            .named(COMPONENT)
            .emit(about, ty, reason, &message);
    }

    /// Collects the replica sets this deployment controls: adopts orphans its selector
    /// matches and releases owned ones it no longer matches.
    async fn claim(&mut self, selector: &crate::api::selector::LabelSelector) -> Result<(), Error> {
        let uid = self.d.metadata.uid.clone().unwrap_or_default();
        let list = self
            .sets
            .list(&ListParams::default())
            .await
            .map_err(api_err(format!("listing replica sets in {}", self.ns)))?
            .items;
        self.owned.clear();
        for rs in list {
            let matches = selector.matches(&podutil::labels_of(&rs.metadata));
            let rs_name = rs.metadata.name.clone().unwrap_or_default();
            match controller_of(&rs.metadata).map(|r| r.uid.clone()) {
                Some(u) if u == uid => {
                    if matches {
                        self.owned.push(rs);
                    } else {
                        let refs: Vec<_> = rs
                            .metadata
                            .owner_references
                            .clone()
                            .unwrap_or_default()
                            .into_iter()
                            .filter(|r| r.uid != uid)
                            .collect();
                        self.patch_meta(&rs, json!({"ownerReferences": refs}), &rs_name)
                            .await?;
                    }
                }
                Some(_) => {}
                None if matches && rs.metadata.deletion_timestamp.is_none() => {
                    let mut refs = rs.metadata.owner_references.clone().unwrap_or_default();
                    refs.push(podutil::controller_ref(
                        &self.d.metadata,
                        "apps/v1",
                        "Deployment",
                    ));
                    if let Some(adopted) = self
                        .patch_meta(&rs, json!({"ownerReferences": refs}), &rs_name)
                        .await?
                    {
                        self.owned.push(adopted);
                    }
                }
                None => {}
            }
        }
        Ok(())
    }

    /// A metadata merge patch guarded by uid and resourceVersion; `None` when the object
    /// changed or vanished meanwhile (the next pass sees the new state).
    async fn patch_meta(
        &self,
        rs: &ReplicaSet,
        mut meta: serde_json::Value,
        name: &str,
    ) -> Result<Option<ReplicaSet>, Error> {
        meta["uid"] = json!(rs.metadata.uid);
        meta["resourceVersion"] = json!(rs.metadata.resource_version);
        match self
            .sets
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"metadata": meta})),
            )
            .await
        {
            Ok(rs) => Ok(Some(rs)),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(None),
            Err(e) => Err(api_err(format!("updating owner of replica set {name}"))(e)),
        }
    }

    fn template(&self) -> PodTemplateSpec {
        self.d
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default()
    }

    /// The oldest owned replica set with the deployment's template, and the others.
    fn split(&self) -> (Option<usize>, Vec<usize>) {
        let template = self.template();
        let mut idx: Vec<usize> = (0..self.owned.len()).collect();
        idx.sort_by_key(|i| created(&self.owned[*i]));
        let new = idx.iter().copied().find(|i| {
            self.owned[*i]
                .spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .is_some_and(|t| equal_ignoring_hash(t, &template))
        });
        let old = idx.into_iter().filter(|i| Some(*i) != new).collect();
        (new, old)
    }

    fn all(&self) -> Vec<&ReplicaSet> {
        self.owned.iter().collect()
    }

    /// One pass: the strategy's next step, then the status.
    async fn sync(&mut self) -> Result<Option<Duration>, Error> {
        let paused = self.d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
        if paused || is_scaling_event(&self.d, &self.all()) {
            return self.scale_only(paused).await;
        }
        if is_rolling(&self.d) {
            self.rolling().await
        } else {
            self.recreate().await
        }
    }

    /// Finds the new replica set, bumping its revision past every old one (a rollback re-uses
    /// the old replica set and makes it the newest revision), or creates it.
    async fn new_rs(&mut self, create: bool) -> Result<Option<usize>, Error> {
        let (new, old) = self.split();
        let max_old = old
            .iter()
            .map(|i| revision_of(&self.owned[*i]))
            .max()
            .unwrap_or(0);
        let revision = max_old + 1;
        let (surge, _) = fenceposts(&self.d)?;
        let new = match new {
            Some(i) => {
                let rs = &self.owned[i];
                let mut ann = rs.metadata.annotations.clone().unwrap_or_default();
                let annotations_changed =
                    set_new_rs_annotations(&self.d, &mut ann, revision, true, surge);
                let min_ready = self.d.spec.as_ref().and_then(|s| s.min_ready_seconds);
                let min_ready_changed =
                    rs.spec.as_ref().and_then(|s| s.min_ready_seconds) != min_ready;
                if annotations_changed || min_ready_changed {
                    let name = rs.metadata.name.clone().unwrap_or_default();
                    let patch = json!({
                        "metadata": {"annotations": ann},
                        "spec": {"minReadySeconds": min_ready.unwrap_or(0)},
                    });
                    let updated = self
                        .sets
                        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .map_err(api_err(format!("updating replica set {name}")))?;
                    self.owned[i] = updated;
                }
                let status = self.d.status.clone().unwrap_or_default();
                if deadline(&self.d).is_some() && condition(&status, "Progressing").is_none() {
                    let name = self.owned[i].metadata.name.clone().unwrap_or_default();
                    let mut s = status;
                    set_condition(
                        &mut s,
                        cond(
                            "Progressing",
                            "True",
                            "FoundNewReplicaSet",
                            format!("Found new replica set \"{name}\""),
                            self.now,
                        ),
                    );
                    self.write_status(s).await?;
                }
                Some(i)
            }
            None if create => Some(self.create_new_rs(revision, surge).await?),
            None => None,
        };
        if let Some(i) = new {
            let rev = revision_of(&self.owned[i]).to_string();
            if annotation(&self.d.metadata, REVISION) != Some(rev.as_str()) {
                let name = self.name();
                let deployments: kube::Api<Deployment> =
                    kube::Api::namespaced(self.ctx.client.clone(), &self.ns);
                let patch = json!({"metadata": {"annotations": {REVISION: rev}}});
                self.d = deployments
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(api_err(format!(
                        "setting the revision of deployment {name}"
                    )))?;
            }
        }
        Ok(new)
    }

    async fn create_new_rs(&mut self, revision: i64, surge: i32) -> Result<usize, Error> {
        let mut template = self.template();
        let collision = self.d.status.as_ref().and_then(|s| s.collision_count);
        let hash = template_hash(&template, collision);
        let name = format!("{}-{hash}", self.name());
        template
            .metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(HASH_LABEL.into(), hash.clone());
        let mut selector: LabelSelector = self
            .d
            .spec
            .as_ref()
            .map(|s| s.selector.clone())
            .unwrap_or_default();
        selector
            .match_labels
            .get_or_insert_with(BTreeMap::new)
            .insert(HASH_LABEL.into(), hash.clone());
        let mut labels = template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        labels.insert(HASH_LABEL.into(), hash);
        let mut ann = BTreeMap::new();
        set_new_rs_annotations(&self.d, &mut ann, revision, false, surge);
        let mut rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(self.ns.clone()),
                labels: Some(labels),
                annotations: Some(ann),
                owner_references: Some(vec![podutil::controller_ref(
                    &self.d.metadata,
                    "apps/v1",
                    "Deployment",
                )]),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(0),
                min_ready_seconds: self.d.spec.as_ref().and_then(|s| s.min_ready_seconds),
                selector,
                template: Some(template),
            }),
            status: None,
        };
        let replicas = new_rs_replicas(&self.d, &self.all(), &rs)?;
        if let Some(spec) = rs.spec.as_mut() {
            spec.replicas = Some(replicas);
        }
        let created = match self.sets.create(&PostParams::default(), &rs).await {
            Ok(rs) => rs,
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // Ours already (a pass that died after creating it)? Otherwise a hash
                // collision: bump collisionCount so the next pass picks another name.
                let existing = self
                    .sets
                    .get_opt(&name)
                    .await
                    .map_err(api_err(format!("reading replica set {name}")))?;
                let ours = existing.as_ref().is_some_and(|e| {
                    controller_of(&e.metadata).map(|r| r.uid.as_str())
                        == self.d.metadata.uid.as_deref()
                        && e.spec
                            .as_ref()
                            .and_then(|s| s.template.as_ref())
                            .is_some_and(|t| equal_ignoring_hash(t, &self.template()))
                });
                if let (true, Some(e)) = (ours, existing) {
                    self.owned.push(e);
                    return Ok(self.owned.len() - 1);
                }
                let mut s = self.d.status.clone().unwrap_or_default();
                s.collision_count = Some(collision.unwrap_or(0).saturating_add(1));
                self.write_status(s).await?;
                return Err(Error::Collision(name));
            }
            Err(e) => return Err(api_err(format!("creating replica set {name}"))(e)),
        };
        if replicas > 0 {
            self.event(
                "Normal",
                "ScalingReplicaSet",
                format!("Scaled up replica set {name} from 0 to {replicas}"),
            );
        }
        if deadline(&self.d).is_some() {
            let mut s = self.d.status.clone().unwrap_or_default();
            set_condition(
                &mut s,
                cond(
                    "Progressing",
                    "True",
                    "NewReplicaSetCreated",
                    format!("Created new replica set \"{name}\""),
                    self.now,
                ),
            );
            self.write_status(s).await?;
        }
        self.owned.push(created);
        Ok(self.owned.len() - 1)
    }

    async fn write_status(&mut self, s: DeploymentStatus) -> Result<(), Error> {
        let current = self.d.status.clone().unwrap_or_default();
        if status_json(&current) == status_json(&s) {
            return Ok(());
        }
        let name = self.name();
        let deployments: kube::Api<Deployment> =
            kube::Api::namespaced(self.ctx.client.clone(), &self.ns);
        self.d = deployments
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": status_json(&s)})),
            )
            .await
            .map_err(api_err(format!("updating status of deployment {name}")))?;
        Ok(())
    }

    /// Sets a replica set's size (and the replica annotations). Returns whether it changed.
    async fn scale(&mut self, i: usize, replicas: i32) -> Result<bool, Error> {
        let (surge, _) = fenceposts(&self.d)?;
        let rs = &self.owned[i];
        let name = rs.metadata.name.clone().unwrap_or_default();
        let before = spec_replicas(rs);
        let mut ann = rs.metadata.annotations.clone().unwrap_or_default();
        let ann_changed = set_replicas_annotations(&self.d, &mut ann, surge);
        if before == replicas && !ann_changed {
            return Ok(false);
        }
        let patch = json!({
            "metadata": {"annotations": ann},
            "spec": {"replicas": replicas},
        });
        self.owned[i] = self
            .sets
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(api_err(format!("scaling replica set {name}")))?;
        if before != replicas {
            let dir = if replicas > before { "up" } else { "down" };
            self.event(
                "Normal",
                "ScalingReplicaSet",
                format!("Scaled {dir} replica set {name} from {before} to {replicas}"),
            );
        }
        Ok(before != replicas)
    }

    /// Finishes a pass: Progressing/Available conditions and counts.
    async fn finish(&mut self, new: Option<usize>) -> Result<Option<Duration>, Error> {
        let all = self.all();
        let new_rs = new.map(|i| &self.owned[i]);
        let (s, after) = rollout_status(&self.d, &all, new_rs, self.now)?;
        self.write_status(s).await?;
        Ok(after)
    }

    async fn cleanup_if_complete(&mut self) -> Result<(), Error> {
        let status = self.d.status.clone().unwrap_or_default();
        if !is_complete(&self.d, &status) {
            return Ok(());
        }
        let Some(limit) = self.d.spec.as_ref().and_then(|s| s.revision_history_limit) else {
            return Ok(());
        };
        let (_, old) = self.split();
        let mut candidates: Vec<&ReplicaSet> = old
            .iter()
            .map(|i| &self.owned[*i])
            .filter(|rs| rs.metadata.deletion_timestamp.is_none())
            .collect();
        let excess = candidates
            .len()
            .saturating_sub(usize::try_from(limit.max(0)).unwrap_or(0));
        candidates.sort_by_key(|rs| (revision_of(rs), created(rs)));
        let mut doomed = Vec::new();
        for rs in candidates.into_iter().take(excess) {
            let st = status_of(rs);
            let settled =
                st.observed_generation.unwrap_or(0) >= rs.metadata.generation.unwrap_or(0);
            if st.replicas != 0 || spec_replicas(rs) != 0 || !settled {
                continue;
            }
            doomed.push((
                rs.metadata.name.clone().unwrap_or_default(),
                rs.metadata.uid.clone(),
            ));
        }
        for (name, uid) in doomed {
            let dp = DeleteParams {
                preconditions: Some(kube::api::Preconditions {
                    uid,
                    resource_version: None,
                }),
                ..Default::default()
            };
            match self.sets.delete(&name, &dp).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => return Err(api_err(format!("deleting old replica set {name}"))(e)),
            }
            self.owned
                .retain(|rs| rs.metadata.name.as_deref() != Some(name.as_str()));
        }
        Ok(())
    }

    /// Paused deployments and replica count changes: resize without rolling.
    async fn scale_only(&mut self, paused: bool) -> Result<Option<Duration>, Error> {
        let new = self.new_rs(false).await?;
        self.proportional_scale(new).await?;
        if !paused {
            self.cleanup_if_complete().await?;
        }
        let new = self.split().0;
        let all = self.all();
        let new_rs = new.map(|i| &self.owned[i]);
        let mut s = calculate_status(&self.d, &all, new_rs, self.now)?;
        // Pausing and resuming show in Progressing (unless the deadline already passed).
        if deadline(&self.d).is_some() {
            let cur = condition(&s, "Progressing").and_then(|c| c.reason.clone());
            let cur = cur.as_deref();
            if cur != Some("ProgressDeadlineExceeded") {
                if paused && cur != Some("DeploymentPaused") {
                    set_condition(
                        &mut s,
                        cond(
                            "Progressing",
                            "Unknown",
                            "DeploymentPaused",
                            "Deployment is paused".into(),
                            self.now,
                        ),
                    );
                } else if !paused && cur == Some("DeploymentPaused") {
                    set_condition(
                        &mut s,
                        cond(
                            "Progressing",
                            "Unknown",
                            "DeploymentResumed",
                            "Deployment is resumed".into(),
                            self.now,
                        ),
                    );
                }
            }
        }
        self.write_status(s).await?;
        Ok(None)
    }

    async fn proportional_scale(&mut self, new: Option<usize>) -> Result<(), Error> {
        let (_, old) = self.split();
        let replicas = replicas_of(&self.d);
        let active: Vec<usize> = self
            .split()
            .1
            .into_iter()
            .chain(new)
            .filter(|i| spec_replicas(&self.owned[*i]) > 0)
            .collect();
        // One active replica set (or none): it simply takes the new size.
        let single = match active.len() {
            0 => new.or_else(|| old.iter().copied().max_by_key(|i| created(&self.owned[*i]))),
            1 => Some(active[0]),
            _ => None,
        };
        if let Some(i) = single {
            self.scale(i, replicas).await?;
            return Ok(());
        }
        // The new replica set is saturated: the old ones go.
        if let Some(n) = new {
            let rs = &self.owned[n];
            if spec_replicas(rs) == replicas
                && annotation(&rs.metadata, DESIRED_REPLICAS) == Some(replicas.to_string().as_str())
                && status_of(rs).available_replicas.unwrap_or(0) == replicas
            {
                for i in old {
                    if spec_replicas(&self.owned[i]) > 0 {
                        self.scale(i, 0).await?;
                    }
                }
                return Ok(());
            }
        }
        if is_rolling(&self.d) {
            let (surge, _) = fenceposts(&self.d)?;
            let sizes = proportional_sizes(&self.d, &self.all(), surge);
            for (name, size) in sizes {
                if let Some(i) = self
                    .owned
                    .iter()
                    .position(|rs| rs.metadata.name.as_deref() == Some(name.as_str()))
                {
                    self.scale(i, size).await?;
                }
            }
        }
        Ok(())
    }

    async fn rolling(&mut self) -> Result<Option<Duration>, Error> {
        let Some(new) = self.new_rs(true).await? else {
            return self.finish(None).await;
        };
        // Scale up the new replica set within maxSurge.
        let target = {
            let replicas = replicas_of(&self.d);
            let cur = spec_replicas(&self.owned[new]);
            if cur > replicas {
                replicas
            } else {
                new_rs_replicas(&self.d, &self.all(), &self.owned[new])?
            }
        };
        if self.scale(new, target).await? {
            return self.finish(Some(new)).await;
        }
        if self.scale_down_old(new).await? {
            return self.finish(Some(new)).await;
        }
        self.finish(Some(new)).await?;
        self.cleanup_if_complete().await?;
        let new = self.split().0;
        self.finish(new).await
    }

    /// Scales old replica sets down within maxUnavailable (Kubernetes'
    /// reconcileOldReplicaSets): first their unhealthy pods, then healthy ones while enough
    /// pods stay available.
    async fn scale_down_old(&mut self, new: usize) -> Result<bool, Error> {
        let (_, mut old) = self.split();
        old.sort_by_key(|i| created(&self.owned[*i]));
        let old_count: i32 = old.iter().map(|i| spec_replicas(&self.owned[*i])).sum();
        if old_count == 0 {
            return Ok(false);
        }
        let all_count: i32 = self.owned.iter().map(spec_replicas).sum();
        let min_available = replicas_of(&self.d) - max_unavailable(&self.d)?;
        let new_rs = &self.owned[new];
        let new_unavailable = spec_replicas(new_rs) - available_of(new_rs);
        let max_scaled_down = all_count - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return Ok(false);
        }
        // Unhealthy pods of old replica sets first: removing them costs no availability.
        let mut cleaned = 0;
        for &i in &old {
            if cleaned >= max_scaled_down {
                break;
            }
            let rs = &self.owned[i];
            let size = spec_replicas(rs);
            let unhealthy = size - available_of(rs);
            if size == 0 || unhealthy <= 0 {
                continue;
            }
            let down = unhealthy.min(max_scaled_down - cleaned);
            self.scale(i, size - down).await?;
            cleaned += down;
        }
        // Then healthy pods, keeping minAvailable.
        let available: i32 = self.owned.iter().map(available_of).sum();
        let mut scaled = 0;
        if available > min_available {
            let total = available - min_available;
            for &i in &old {
                if scaled >= total {
                    break;
                }
                let size = spec_replicas(&self.owned[i]);
                if size == 0 {
                    continue;
                }
                let down = size.min(total - scaled);
                self.scale(i, size - down).await?;
                scaled += down;
            }
        }
        Ok(cleaned + scaled > 0)
    }

    async fn recreate(&mut self) -> Result<Option<Duration>, Error> {
        let mut new = self.new_rs(false).await?;
        let (_, old) = self.split();
        let mut scaled = false;
        for i in old.iter().copied() {
            if spec_replicas(&self.owned[i]) != 0 {
                scaled |= self.scale(i, 0).await?;
            }
        }
        if scaled {
            return self.finish(new).await;
        }
        if self.old_pods_running(new).await? {
            // Pods going away do not change any replica set: look again soon.
            self.finish(new).await?;
            return Ok(Some(Duration::from_secs(1)));
        }
        if new.is_none() {
            new = self.new_rs(true).await?;
        }
        if let Some(n) = new {
            self.scale(n, replicas_of(&self.d)).await?;
        }
        self.finish(new).await?;
        self.cleanup_if_complete().await?;
        let new = self.split().0;
        self.finish(new).await
    }

    /// Whether any pod of an old replica set still runs (or terminates).
    async fn old_pods_running(&self, new: Option<usize>) -> Result<bool, Error> {
        let new_uid = new.and_then(|i| self.owned[i].metadata.uid.clone());
        let old_uids: Vec<String> = self
            .owned
            .iter()
            .filter_map(|rs| rs.metadata.uid.clone())
            .filter(|u| Some(u) != new_uid.as_ref())
            .collect();
        if self
            .owned
            .iter()
            .filter(|rs| rs.metadata.uid != new_uid)
            .any(|rs| status_of(rs).replicas > 0)
        {
            return Ok(true);
        }
        let pods: kube::Api<Pod> = kube::Api::namespaced(self.ctx.client.clone(), &self.ns);
        let list = pods
            .list(&ListParams::default())
            .await
            .map_err(api_err(format!("listing pods in {}", self.ns)))?;
        Ok(list.items.iter().any(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            controller_of(&p.metadata).is_some_and(|r| old_uids.contains(&r.uid))
                && !matches!(phase, Some("Succeeded" | "Failed"))
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn deploy(
        replicas: i32,
        surge: serde_json::Value,
        unavailable: serde_json::Value,
    ) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "d1", "generation": 1},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}
            }
        }))
        .unwrap()
    }

    fn rs(name: &str, spec: i32, available: i32, created: &str) -> ReplicaSet {
        serde_json::from_value(json!({
            "metadata": {"name": name, "creationTimestamp": created},
            "spec": {"replicas": spec, "selector": {"matchLabels": {"app": "web"}}},
            "status": {"replicas": spec, "availableReplicas": available, "readyReplicas": available}
        }))
        .unwrap()
    }

    #[test]
    fn surge_rounds_up_and_unavailable_rounds_down() {
        let d = deploy(10, json!("25%"), json!("25%"));
        assert_eq!(fenceposts(&d).unwrap(), (3, 2));
        let d = deploy(3, json!(1), json!(0));
        assert_eq!(fenceposts(&d).unwrap(), (1, 0));
        let d = deploy(3, json!("0%"), json!(0));
        assert_eq!(
            fenceposts(&d).unwrap(),
            (0, 1),
            "both zero would never progress"
        );
        let d = deploy(3, json!("x"), json!(0));
        assert!(fenceposts(&d).is_err());
    }

    #[test]
    fn the_new_replica_set_grows_only_within_max_surge() {
        let d = deploy(4, json!(1), json!(0));
        let old = rs("old", 4, 4, "2024-01-01T00:00:00Z");
        let new = rs("new", 0, 0, "2024-01-01T00:01:00Z");
        assert_eq!(new_rs_replicas(&d, &[&old, &new], &new).unwrap(), 1);
        let new = rs("new", 1, 0, "2024-01-01T00:01:00Z");
        assert_eq!(new_rs_replicas(&d, &[&old, &new], &new).unwrap(), 1);
        let old = rs("old", 3, 3, "2024-01-01T00:00:00Z");
        assert_eq!(new_rs_replicas(&d, &[&old, &new], &new).unwrap(), 2);
        // Scaled down but its pod not yet deleted: no room yet.
        let mut old = rs("old", 3, 3, "2024-01-01T00:00:00Z");
        old.status.as_mut().unwrap().replicas = 4;
        assert_eq!(new_rs_replicas(&d, &[&old, &new], &new).unwrap(), 1);
    }

    #[test]
    fn pod_template_hash_is_stable_safe_and_ignores_its_own_label() {
        let d = deploy(1, json!(1), json!(0));
        let t = d.spec.unwrap().template;
        let h = template_hash(&t, None);
        assert_eq!(h, template_hash(&t, None));
        assert_ne!(h, template_hash(&t, Some(1)));
        assert!(
            h.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)),
            "{h}"
        );
        let mut labelled = t.clone();
        labelled
            .metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert(HASH_LABEL.into(), h);
        assert!(equal_ignoring_hash(&t, &labelled));
        let mut other = t.clone();
        other.spec.as_mut().unwrap().containers[0].image = Some("j".into());
        assert!(!equal_ignoring_hash(&t, &other));
    }

    #[test]
    fn safe_encoding_matches_kubernetes() {
        // rand.SafeEncodeString("123") in Kubernetes.
        assert_eq!(safe_encode("123"), "567");
    }

    #[test]
    fn a_rollback_bumps_the_revision_and_keeps_history() {
        let d = deploy(1, json!(1), json!(0));
        let mut ann = BTreeMap::from([(REVISION.to_owned(), "1".to_owned())]);
        assert!(set_new_rs_annotations(&d, &mut ann, 3, true, 1));
        assert_eq!(ann[REVISION], "3");
        assert_eq!(ann[REVISION_HISTORY], "1");
        assert!(!set_new_rs_annotations(&d, &mut ann, 3, true, 1));
    }

    #[test]
    fn status_sums_replica_sets_and_reports_minimum_availability() {
        let d = deploy(4, json!(1), json!(1));
        let old = rs("old", 2, 2, "2024-01-01T00:00:00Z");
        let new = rs("new", 3, 1, "2024-01-01T00:01:00Z");
        let now = Timestamp::now();
        let s = calculate_status(&d, &[&old, &new], Some(&new), now).unwrap();
        assert_eq!(
            (
                s.replicas,
                s.updated_replicas,
                s.available_replicas,
                s.unavailable_replicas
            ),
            (Some(5), Some(3), Some(3), Some(2))
        );
        let available = condition(&s, "Available").unwrap();
        assert_eq!(available.status, "True");
        let old = rs("old", 2, 1, "2024-01-01T00:00:00Z");
        let s = calculate_status(&d, &[&old, &new], Some(&new), now).unwrap();
        assert_eq!(
            condition(&s, "Available").unwrap().reason.as_deref(),
            Some("MinimumReplicasUnavailable")
        );
    }

    #[test]
    fn a_stuck_rollout_exceeds_its_progress_deadline() {
        let mut d = deploy(2, json!(1), json!(0));
        d.spec.as_mut().unwrap().progress_deadline_seconds = Some(10);
        let t0: Timestamp = "2024-01-01T00:00:00Z".parse().unwrap();
        let mut status = DeploymentStatus::default();
        set_condition(
            &mut status,
            cond("Progressing", "True", "ReplicaSetUpdated", "x".into(), t0),
        );
        status.observed_generation = Some(1);
        status.replicas = Some(1);
        status.updated_replicas = Some(1);
        d.status = Some(status);
        let new = rs("new", 1, 0, "2024-01-01T00:00:00Z");
        let (_, after) = rollout_status(&d, &[&new], Some(&new), t0).unwrap();
        assert_eq!(after, Some(Duration::from_secs(10)));
        let later: Timestamp = "2024-01-01T00:00:11Z".parse().unwrap();
        let (s, _) = rollout_status(&d, &[&new], Some(&new), later).unwrap();
        let c = condition(&s, "Progressing").unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_deref()),
            ("False", Some("ProgressDeadlineExceeded"))
        );
    }

    #[test]
    fn proportional_scaling_spreads_the_change_by_size() {
        // 10 -> 15 replicas mid-rollout, maxSurge 3: 13 pods become 18.
        let mut d = deploy(15, json!(3), json!(2));
        d.status = Some(DeploymentStatus {
            replicas: Some(13),
            ..Default::default()
        });
        let mut old = rs("old", 8, 8, "2024-01-01T00:00:00Z");
        let mut new = rs("new", 5, 0, "2024-01-01T00:01:00Z");
        for r in [&mut old, &mut new] {
            r.metadata.annotations =
                Some(BTreeMap::from([(MAX_REPLICAS.to_owned(), "13".to_owned())]));
        }
        let sizes = proportional_sizes(&d, &[&old, &new], 3);
        let total: i32 = sizes.iter().map(|s| s.1).sum();
        assert_eq!(total, 18);
        assert_eq!(sizes, [("old".to_owned(), 11), ("new".to_owned(), 7)]);
    }
}
