//! The verbs, generic over every registered resource: the only place objects are written.
//! HTTP handlers, the garbage collector and the namespace controller all come through here.

use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use serde_json::{Map, Value, json};

use super::Api;
use super::errors::{ApiError, ApiResult, FieldError, Target};
use crate::resources::{Resource, Sub, now_rfc3339};
use crate::store::StoreError;

/// How unknown or duplicate fields in a request body are treated (`fieldValidation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

impl FieldValidation {
    pub fn parse(s: Option<&str>) -> ApiResult<Self> {
        match s {
            None | Some("") | Some("Warn") => Ok(Self::Warn),
            Some("Ignore") => Ok(Self::Ignore),
            Some("Strict") => Ok(Self::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation: unsupported value \"{other}\": supported values: \"Ignore\", \"Strict\", \"Warn\""
            ))),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    Background,
    Foreground,
    Orphan,
}

#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    pub grace_period: Option<i64>,
    pub propagation: Option<Propagation>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
    pub dry_run: bool,
}

impl DeleteOptions {
    /// Merges a DeleteOptions body (if any) with query parameters (query wins, as in Kubernetes
    /// both are accepted; kubectl sends the body).
    pub fn from_request(body: &Value, query: &dyn Fn(&str) -> Option<String>) -> ApiResult<Self> {
        let mut o = DeleteOptions {
            grace_period: body.get("gracePeriodSeconds").and_then(Value::as_i64),
            precondition_uid: body
                .pointer("/preconditions/uid")
                .and_then(Value::as_str)
                .map(str::to_owned),
            precondition_rv: body
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_owned),
            dry_run: body
                .get("dryRun")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty()),
            ..Default::default()
        };
        let mut policy = body
            .get("propagationPolicy")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let mut orphan = body.get("orphanDependents").and_then(Value::as_bool);
        if let Some(g) = query("gracePeriodSeconds") {
            o.grace_period = Some(g.parse().map_err(|_| {
                ApiError::bad_request(format!(
                    "gracePeriodSeconds: invalid value \"{g}\": must be an integer"
                ))
            })?);
        }
        if let Some(p) = query("propagationPolicy") {
            policy = Some(p);
        }
        if let Some(v) = query("orphanDependents") {
            orphan = Some(v == "true");
        }
        if query("dryRun").is_some() {
            o.dry_run = true;
        }
        o.propagation = match (policy.as_deref(), orphan) {
            (Some("Background"), _) => Some(Propagation::Background),
            (Some("Foreground"), _) => Some(Propagation::Foreground),
            (Some("Orphan"), _) => Some(Propagation::Orphan),
            (Some(other), _) => {
                return Err(ApiError::invalid(
                    Target {
                        group: "meta.k8s.io",
                        plural: "deleteoptions",
                        kind: "DeleteOptions",
                        name: "",
                    },
                    &[FieldError::not_supported(
                        "propagationPolicy",
                        other,
                        &["Background", "Foreground", "Orphan"],
                    )],
                ));
            }
            (None, Some(true)) => Some(Propagation::Orphan),
            (None, _) => None,
        };
        if let Some(g) = o.grace_period
            && g < 0
        {
            o.grace_period = Some(0);
        }
        Ok(o)
    }
}

pub fn target<'a>(res: &'a Resource, name: &'a str) -> Target<'a> {
    Target {
        group: res.group,
        plural: res.plural,
        kind: res.kind,
        name,
    }
}

/// Parses stored bytes and fills in `metadata.resourceVersion`.
pub fn with_rv(bytes: &[u8], rev: i64) -> ApiResult<Value> {
    let mut v: Value = serde_json::from_slice(bytes).map_err(ApiError::internal)?;
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("resourceVersion".into(), json!(rev.to_string()));
    }
    Ok(v)
}

fn to_stored(v: &Value) -> ApiResult<Bytes> {
    let mut v = v.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    serde_json::to_vec(&v)
        .map(Bytes::from)
        .map_err(ApiError::internal)
}

fn meta_mut(obj: &mut Value) -> ApiResult<&mut Map<String, Value>> {
    let Value::Object(root) = obj else {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    };
    let meta = root.entry("metadata").or_insert_with(|| json!({}));
    if meta.is_null() {
        *meta = json!({});
    }
    meta.as_object_mut()
        .ok_or_else(|| ApiError::bad_request("metadata: must be an object"))
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Object content that `metadata.generation` follows: everything but metadata and status.
fn spec_part(v: &Value) -> Value {
    let mut v = v.clone();
    if let Value::Object(m) = &mut v {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

fn finalizers(v: &Value) -> Vec<String> {
    v.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str().map(str::to_owned))
        .collect()
}

fn random_suffix() -> String {
    // Kubernetes' alphabet for generated names: no vowels, no look-alike characters.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Collects the paths of fields in `input` that the typed round-trip dropped.
fn unknown_fields(input: &Value, typed: &Value, path: &str, out: &mut Vec<String>) {
    match (input, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get(k) {
                    Some(t) => unknown_fields(v, t, &p, out),
                    None if v.is_null() => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                unknown_fields(x, y, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Checks a request object against its type: apiVersion/kind, types of every field, unknown
/// fields per `fieldValidation`. Returns the normalised object and warnings.
pub fn decode_object(
    res: &Resource,
    mut obj: Value,
    validation: FieldValidation,
) -> ApiResult<(Value, Vec<String>)> {
    let Value::Object(map) = &mut obj else {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    };
    let api_version = res.api_version();
    match map.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => {}
        Some(v) if v == api_version => {}
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({api_version})"
            )));
        }
    }
    match map.get("kind").and_then(Value::as_str) {
        None | Some("") => {}
        Some(k) if k == res.kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                res.kind
            )));
        }
    }
    map.insert("apiVersion".into(), json!(api_version));
    map.insert("kind".into(), json!(res.kind));
    let typed = (res.decode)(&obj).map_err(|e| {
        ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: {e}",
            res.kind, res.version, res.kind
        ))
    })?;
    let mut unknown = Vec::new();
    if validation != FieldValidation::Ignore {
        unknown_fields(&obj, &typed, "", &mut unknown);
    }
    let msgs: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect();
    if validation == FieldValidation::Strict && !msgs.is_empty() {
        return Err(ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
            res.kind,
            res.version,
            res.kind,
            msgs.join(", ")
        )));
    }
    Ok((typed, msgs))
}

impl Api {
    /// Reads one object from the store (consistent read).
    pub async fn get_object(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
    ) -> ApiResult<Value> {
        let key = res.key(ns, name);
        self.read(res, &key, name).await.map(|(_, v)| v)
    }

    /// The stored object under `key` with its mod revision (for compare-and-swap), 404 if absent.
    async fn read(&self, res: &Resource, key: &str, name: &str) -> ApiResult<(i64, Value)> {
        let kv = self
            .store
            .get(key)
            .await
            .map_err(|e| ApiError::from_store(e, target(res, name)))?
            .ok_or_else(|| ApiError::not_found(target(res, name)))?;
        Ok((kv.mod_revision, with_rv(&kv.value, kv.mod_revision)?))
    }

    async fn ensure_namespace_accepts(&self, res: &Resource, ns: Option<&str>) -> ApiResult<()> {
        let Some(ns) = ns.filter(|_| res.namespaced) else {
            return Ok(());
        };
        let key = format!("/registry/core/namespaces/{ns}");
        match self.cache.get(&key) {
            Some(n) if n.deleting => Err(ApiError::forbidden(format!(
                "{} \"{}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                res.plural, ""
            ))),
            Some(_) => Ok(()),
            None => {
                // The cache may trail a namespace created a moment ago; ask the store.
                match self.store.get(&key).await {
                    Ok(Some(_)) => Ok(()),
                    _ => Err(ApiError::not_found(Target {
                        group: "",
                        plural: "namespaces",
                        kind: "Namespace",
                        name: ns,
                    })),
                }
            }
        }
    }

    /// Creates an object (already decoded). Returns it as stored.
    pub async fn create_object(
        &self,
        res: &'static Resource,
        ns: Option<&str>,
        mut obj: Value,
        dry_run: bool,
    ) -> ApiResult<Value> {
        let meta = meta_mut(&mut obj)?;
        let mut name = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let generate = meta
            .get("generateName")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        if name.is_empty() && !generate.is_empty() {
            name = format!("{generate}{}", random_suffix());
            meta.insert("name".into(), json!(name));
        }
        if res.namespaced {
            let body_ns = meta.get("namespace").and_then(Value::as_str).unwrap_or("");
            let ns = ns.unwrap_or("");
            if !body_ns.is_empty() && body_ns != ns {
                return Err(ApiError::bad_request(format!(
                    "the namespace of the provided object ({body_ns}) does not match the namespace sent on the request ({ns})"
                )));
            }
            meta.insert("namespace".into(), json!(ns));
        } else {
            meta.remove("namespace");
        }
        for f in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
            "managedFields",
        ] {
            meta.remove(f);
        }
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        if res.generation {
            meta.insert("generation".into(), json!(1));
        } else {
            meta.remove("generation");
        }
        res.strategy.default(&mut obj);
        if res.has(Sub::Status)
            && let Some(status) = res.strategy.initial_status(&obj)
            && let Value::Object(m) = &mut obj
        {
            m.insert("status".into(), status);
        }
        let errs = res.strategy.validate(&obj, None);
        if !errs.is_empty() {
            return Err(ApiError::invalid(target(res, &name), &errs));
        }
        self.ensure_namespace_accepts(res, ns).await?;
        // Held until the store write is done, so concurrent writers see the claims.
        let _claims = self.admission.admit(self, res, None, &mut obj).await?;
        if dry_run {
            return Ok(obj);
        }
        let key = res.key(ns, &name);
        let rev = self
            .store
            .create(&key, to_stored(&obj)?)
            .await
            .map_err(|e| ApiError::from_store(e, target(res, &name)))?;
        if let Ok(m) = meta_mut(&mut obj) {
            m.insert("resourceVersion".into(), json!(rev.to_string()));
        }
        Ok(obj)
    }

    /// Turns `new` into a valid successor of `old`: server-owned metadata kept, status or spec
    /// kept depending on the subresource, defaults, validation, generation.
    fn finish_update(
        res: &Resource,
        old: &Value,
        mut new: Value,
        sub: Option<Sub>,
    ) -> ApiResult<Value> {
        let name = meta_str(old, "name").to_owned();
        let new_name = meta_str(&new, "name");
        if !new_name.is_empty() && new_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({new_name}) does not match the name on the URL ({name})"
            )));
        }
        let new_ns = meta_str(&new, "namespace");
        let old_ns = meta_str(old, "namespace");
        if res.namespaced && !new_ns.is_empty() && new_ns != old_ns {
            return Err(ApiError::bad_request(format!(
                "the namespace of the provided object ({new_ns}) does not match the namespace sent on the request ({old_ns})"
            )));
        }
        if sub == Some(Sub::Status) {
            // A status write changes status and nothing else.
            let status = new.get("status").cloned();
            new = old.clone();
            if let Value::Object(m) = &mut new {
                match status {
                    Some(s) => m.insert("status".into(), s),
                    None => m.remove("status"),
                };
            }
        } else if res.has(Sub::Status)
            && let Value::Object(m) = &mut new
        {
            match old.get("status") {
                Some(s) => m.insert("status".into(), s.clone()),
                None => m.remove("status"),
            };
        }
        let old_meta = old.get("metadata").cloned().unwrap_or_else(|| json!({}));
        let meta = meta_mut(&mut new)?;
        for f in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ] {
            match old_meta.get(f) {
                Some(v) => meta.insert(f.into(), v.clone()),
                None => meta.remove(f),
            };
        }
        meta.remove("resourceVersion");
        meta.remove("managedFields");
        meta.remove("selfLink");
        // Go's omitempty: emptied metadata lists disappear instead of staying as `[]`.
        for f in ["finalizers", "ownerReferences"] {
            if meta
                .get(f)
                .and_then(Value::as_array)
                .is_some_and(Vec::is_empty)
            {
                meta.remove(f);
            }
        }
        res.strategy.default(&mut new);
        let mut errs = res.strategy.validate(&new, Some(old));
        if old_meta.get("deletionTimestamp").is_some() {
            let before = finalizers(old);
            if finalizers(&new).iter().any(|f| !before.contains(f)) {
                errs.push(FieldError::forbidden(
                    "metadata.finalizers",
                    "no new finalizers can be added if the object is being deleted",
                ));
            }
        }
        if !errs.is_empty() {
            return Err(ApiError::invalid(target(res, &name), &errs));
        }
        if res.generation && spec_part(&new) != spec_part(old) {
            let g = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                + 1;
            meta_mut(&mut new)?.insert("generation".into(), json!(g));
        }
        Ok(new)
    }

    /// Read-modify-write with compare-and-swap. `precondition` is a resourceVersion the client
    /// insisted on (409 when stale); without one, lost races are retried transparently.
    /// `mutate` gets the current object (with resourceVersion) and returns the desired one.
    pub async fn update_object(
        &self,
        res: &'static Resource,
        ns: Option<&str>,
        name: &str,
        sub: Option<Sub>,
        dry_run: bool,
        mut mutate: impl FnMut(Value) -> ApiResult<Value>,
    ) -> ApiResult<Value> {
        let key = res.key(ns, name);
        for _ in 0..32 {
            let (rev, current) = self.read(res, &key, name).await?;
            let desired = self
                .admission
                .prepare_update(res, &current, mutate(current.clone())?);
            let wanted_rv = meta_str(&desired, "resourceVersion");
            if !wanted_rv.is_empty() && wanted_rv != rev.to_string() {
                return Err(ApiError::modified(target(res, name)));
            }
            let mut new = Self::finish_update(res, &current, desired, sub)?;
            let _claims = self
                .admission
                .admit(self, res, Some(&current), &mut new)
                .await?;
            let mut unchanged = current.clone();
            if let Some(m) = unchanged.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
            }
            if new == unchanged {
                return Ok(current);
            }
            if dry_run {
                return Ok(new);
            }
            let deleting = new.pointer("/metadata/deletionTimestamp").is_some();
            let grace = new
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            let ns_held = new
                .pointer("/spec/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty())
                && res.plural == "namespaces";
            let result = if deleting && finalizers(&new).is_empty() && grace == 0 && !ns_held {
                // The last finalizer is gone: the deletion that was waiting for it completes.
                self.store.delete(&key, Some(rev)).await.map(|(rev, _)| rev)
            } else {
                self.store.update(&key, to_stored(&new)?, rev).await
            };
            match result {
                Ok(rev) => {
                    meta_mut(&mut new)?.insert("resourceVersion".into(), json!(rev.to_string()));
                    return Ok(new);
                }
                // Read again: a stale resourceVersion the client sent fails the check above,
                // one a patch inherited from the object it was applied to is fresh again.
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(ApiError::from_store(e, target(res, name))),
            }
        }
        Err(ApiError::modified(target(res, name)))
    }

    /// Deletes an object as Kubernetes does: immediately, or by marking it (deletionTimestamp)
    /// when finalizers, graceful pod termination or foreground/orphan propagation must run first.
    pub async fn delete_object(
        &self,
        res: &'static Resource,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> ApiResult<Value> {
        let key = res.key(ns, name);
        for _ in 0..32 {
            let (rev, current) = self.read(res, &key, name).await?;
            if let Some(uid) = &opts.precondition_uid
                && uid != meta_str(&current, "uid")
            {
                return Err(ApiError::conflict(
                    target(res, name),
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        meta_str(&current, "uid")
                    ),
                ));
            }
            if let Some(rv) = &opts.precondition_rv
                && *rv != rev.to_string()
            {
                return Err(ApiError::conflict(
                    target(res, name),
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                        rev
                    ),
                ));
            }
            let mut marked = current.clone();
            let mut fins = finalizers(&current);
            match opts.propagation {
                Some(Propagation::Foreground)
                    if !fins.iter().any(|f| f == "foregroundDeletion") =>
                {
                    fins.push("foregroundDeletion".into())
                }
                Some(Propagation::Orphan) if !fins.iter().any(|f| f == "orphan") => {
                    fins.push("orphan".into())
                }
                _ => {}
            }
            let already = current.pointer("/metadata/deletionTimestamp").is_some();
            let mut grace = 0;
            if res.plural == "pods" {
                let bound = !meta_str_at(&current, "/spec/nodeName").is_empty();
                let done = matches!(
                    meta_str_at(&current, "/status/phase"),
                    "Succeeded" | "Failed"
                );
                grace = opts
                    .grace_period
                    .or_else(|| {
                        current
                            .pointer("/spec/terminationGracePeriodSeconds")
                            .and_then(Value::as_i64)
                    })
                    .unwrap_or(30);
                if !bound || done {
                    grace = 0;
                }
                if already {
                    let old = current
                        .pointer("/metadata/deletionGracePeriodSeconds")
                        .and_then(Value::as_i64)
                        .unwrap_or(0);
                    grace = grace.min(old);
                }
            }
            let namespace_held = res.plural == "namespaces";
            if fins.is_empty() && grace == 0 && !namespace_held {
                if opts.dry_run {
                    return Ok(current);
                }
                match self.store.delete(&key, Some(rev)).await {
                    Ok((rev, _)) => {
                        let mut gone = current;
                        meta_mut(&mut gone)?
                            .insert("resourceVersion".into(), json!(rev.to_string()));
                        return Ok(gone);
                    }
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(StoreError::NotFound(_)) => {
                        return Err(ApiError::not_found(target(res, name)));
                    }
                    Err(e) => return Err(ApiError::from_store(e, target(res, name))),
                }
            }
            // Mark for deletion; whoever owns the remaining work (agent, GC, namespace
            // controller) finishes it.
            let meta = meta_mut(&mut marked)?;
            meta.insert("finalizers".into(), json!(fins));
            let when = jiff::Timestamp::now() + Duration::from_secs(grace.max(0) as u64);
            if !already || res.plural == "pods" {
                meta.insert(
                    "deletionTimestamp".into(),
                    json!(when.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
                );
            }
            meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
            meta.remove("resourceVersion");
            if namespace_held && let Value::Object(m) = &mut marked {
                m.insert("status".into(), json!({"phase": "Terminating"}));
            }
            if marked == strip_rv(&current) {
                return Ok(current);
            }
            if opts.dry_run {
                return Ok(marked);
            }
            match self.store.update(&key, to_stored(&marked)?, rev).await {
                Ok(rev) => {
                    meta_mut(&mut marked)?.insert("resourceVersion".into(), json!(rev.to_string()));
                    return Ok(marked);
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(ApiError::from_store(e, target(res, name))),
            }
        }
        Err(ApiError::modified(target(res, name)))
    }
}

fn strip_rv(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    v
}

fn meta_str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// The autoscaling/v1 Scale view of a deployment or replica set.
pub fn scale_of(res: &Resource, obj: &Value) -> Value {
    let selector = crate::resources::table::selector_string(obj.pointer("/spec/selector"));
    let selector = selector
        .as_str()
        .filter(|s| *s != "<none>")
        .unwrap_or("")
        .replace(' ', "");
    let _ = res;
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": obj.pointer("/metadata/name"),
            "namespace": obj.pointer("/metadata/namespace"),
            "uid": obj.pointer("/metadata/uid"),
            "resourceVersion": obj.pointer("/metadata/resourceVersion"),
            "creationTimestamp": obj.pointer("/metadata/creationTimestamp"),
        },
        "spec": {"replicas": obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0)},
        "status": {
            "replicas": obj.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0),
            "selector": selector,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_reported_with_their_paths() {
        let res = crate::resources::find("apps", "v1", "deployments").expect("deployments");
        let body = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x", "creationTimestamp": null},
            "spec": {"replicaz": 3, "selector": {"matchLabels": {"a": "b"}},
              "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i", "imagez": 1}]}}}});
        let (_, warnings) =
            decode_object(res, body.clone(), FieldValidation::Warn).expect("warn mode accepts");
        assert_eq!(
            warnings,
            [
                "unknown field \"spec.replicaz\"",
                "unknown field \"spec.template.spec.containers[0].imagez\""
            ]
        );
        let err =
            decode_object(res, body, FieldValidation::Strict).expect_err("strict mode rejects");
        assert_eq!(err.code, 400);
        assert!(
            err.message.starts_with(
                "Deployment in version \"v1\" cannot be handled as a Deployment: strict decoding error: unknown field \"spec.replicaz\""
            ),
            "{}",
            err.message
        );
    }

    #[test]
    fn wrong_field_types_name_the_field() {
        let res = crate::resources::find("apps", "v1", "deployments").expect("deployments");
        let err = decode_object(
            res,
            json!({"metadata": {"name": "x"}, "spec": {"replicas": "three"}}),
            FieldValidation::Strict,
        )
        .expect_err("type error");
        assert!(err.message.contains("spec.replicas"), "{}", err.message);
    }
}
