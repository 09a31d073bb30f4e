//! Kubernetes strategic merge patch (`application/strategic-merge-patch+json`)
//! applied to `serde_json::Value` documents.
//!
//! The semantics follow `k8s.io/apimachinery/pkg/util/strategicpatch` as the
//! API server uses it (`MergeParallelList` and `IgnoreUnmatchedNulls` on).
//! The per-kind list strategies (the `patchStrategy`/`patchMergeKey` struct
//! tags of the Kubernetes API types) live in a small hand-written schema at
//! the bottom of this file.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{Map, Value};
use thiserror::Error;

/// A patch that cannot be applied. The message is meant for the API client
/// (a 422/400 response body), and names the field path where possible.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct PatchError(String);

impl PatchError {
    /// The message shown to the user.
    pub fn message(&self) -> &str {
        &self.0
    }
}

/// How a list field is patched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    /// Atomic list: the patch value replaces the whole list.
    Replace,
    /// List of objects merged element-wise by the named key field.
    MergeByKey(&'static str),
    /// List of scalars merged as an ordered set (e.g. `metadata.finalizers`).
    MergeScalars,
}

const PATCH_DIRECTIVE: &str = "$patch";
const RETAIN_KEYS_DIRECTIVE: &str = "$retainKeys";
const SET_ORDER_PREFIX: &str = "$setElementOrder/";
const DELETE_PRIMITIVE_PREFIX: &str = "$deleteFromPrimitiveList/";

/// Nesting limit for the recursion. serde_json refuses to parse documents
/// deeper than 128 levels, so real requests never reach it; it only guards
/// against hand-built values blowing the stack.
const MAX_DEPTH: usize = 128;

/// Applies `patch` (a strategic merge patch) to `original`, a JSON object of
/// Kubernetes kind `kind`. Kinds not known here still get the `metadata`
/// rules; every other list of theirs is treated as atomic.
pub fn strategic_merge(original: &Value, patch: &Value, kind: &str) -> Result<Value, PatchError> {
    let Value::Object(patch) = patch else {
        return Err(PatchError(format!(
            "strategic merge patch must be a JSON object, got {}",
            type_name(patch)
        )));
    };
    let Value::Object(original) = original else {
        return Err(PatchError(format!(
            "object to patch must be a JSON object, got {}",
            type_name(original)
        )));
    };
    let root = Loc::root();
    // A top-level `$patch: delete` leaves nothing, i.e. an empty object.
    let merged = merge_map(Some(original.clone()), patch, Ty::root(kind), &root)?;
    Ok(Value::Object(merged.unwrap_or_default()))
}

/// The strategy of the list at `path` (object field names from the root;
/// list elements add no segment) in objects of kind `kind`.
///
/// `merge_key("Deployment", &["spec", "template", "spec", "containers"])`
/// is `MergeByKey("name")`. Paths that are not known merge lists, including
/// paths that are not lists at all, give `Replace`.
pub fn merge_key(kind: &str, path: &[&str]) -> ListStrategy {
    let Some((last, parents)) = path.split_last() else {
        return ListStrategy::Replace;
    };
    let ty = parents
        .iter()
        .fold(Ty::root(kind), |ty, field| ty.child(field));
    ty.list_strategy(last)
}

/// Whether `kind` has a built-in schema here. The API server should refuse
/// strategic merge patches for other kinds (Kubernetes answers 415 for
/// custom resources), since their lists would all be treated as atomic.
pub fn is_known_kind(kind: &str) -> bool {
    RootKind::from_kind(kind).is_some()
}

// ---------------------------------------------------------------------------
// Location tracking: cheap on the happy path, rendered only for errors.

#[derive(Clone, Copy)]
enum Seg<'a> {
    Root,
    Field(&'a str),
    Index(usize),
}

struct Loc<'a> {
    parent: Option<&'a Loc<'a>>,
    seg: Seg<'a>,
    depth: usize,
}

impl<'a> Loc<'a> {
    fn root() -> Loc<'static> {
        Loc {
            parent: None,
            seg: Seg::Root,
            depth: 0,
        }
    }

    fn push(&'a self, seg: Seg<'a>) -> Result<Loc<'a>, PatchError> {
        let next = Loc {
            parent: Some(self),
            seg,
            depth: self.depth + 1,
        };
        if next.depth > MAX_DEPTH {
            return Err(next.error(format!("nesting deeper than {MAX_DEPTH} levels")));
        }
        Ok(next)
    }

    fn field(&'a self, name: &'a str) -> Result<Loc<'a>, PatchError> {
        self.push(Seg::Field(name))
    }

    fn index(&'a self, i: usize) -> Result<Loc<'a>, PatchError> {
        self.push(Seg::Index(i))
    }

    fn render(&self) -> String {
        let mut segs = Vec::new();
        let mut cur = Some(self);
        while let Some(loc) = cur {
            segs.push(loc.seg);
            cur = loc.parent;
        }
        let mut out = String::new();
        for seg in segs.iter().rev() {
            match seg {
                Seg::Root => {}
                Seg::Field(name) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(name);
                }
                Seg::Index(i) => {
                    out.push('[');
                    out.push_str(&i.to_string());
                    out.push(']');
                }
            }
        }
        out
    }

    fn error(&self, msg: impl std::fmt::Display) -> PatchError {
        let path = self.render();
        if path.is_empty() {
            PatchError(msg.to_string())
        } else {
            PatchError(format!("{path}: {msg}"))
        }
    }
}

/// A short rendering of a client value for error messages (never the
/// whole, possibly huge, value).
fn describe(v: &Value) -> String {
    match v {
        Value::String(s) if s.chars().count() <= 64 => format!("{s:?}"),
        Value::String(_) => "a long string".to_string(),
        Value::Bool(_) | Value::Number(_) | Value::Null => v.to_string(),
        _ => type_name(v).to_string(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

// ---------------------------------------------------------------------------
// Scalar identity. Go decodes every JSON number as float64, so `80` and
// `80.0` are the same merge key there; this key type reproduces that and
// lets lists be indexed by hash instead of scanned pairwise (large lists
// from clients must not cost quadratic time).

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Null,
    Bool(bool),
    Int(i128),
    Float(u64),
    Str(String),
}

fn scalar_key(v: &Value) -> Option<Key> {
    match v {
        Value::Null => Some(Key::Null),
        Value::Bool(b) => Some(Key::Bool(*b)),
        Value::String(s) => Some(Key::Str(s.clone())),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Some(Key::Int(i128::from(i)))
            } else if let Some(u) = n.as_u64() {
                Some(Key::Int(i128::from(u)))
            } else {
                let f = n.as_f64()?;
                // Integral floats compare as integers (80.0 == 80); below
                // 1e30 the conversion to i128 is exact.
                if f.fract() == 0.0 && f.abs() < 1e30 {
                    Some(Key::Int(f as i128))
                } else {
                    Some(Key::Float(f.to_bits()))
                }
            }
        }
        Value::Array(_) | Value::Object(_) => None,
    }
}

// ---------------------------------------------------------------------------
// Maps.

/// Merges `patch` into `original`. `None` as a result means the map was
/// deleted with `$patch: delete`.
fn merge_map(
    original: Option<Map<String, Value>>,
    patch: &Map<String, Value>,
    ty: Ty,
    loc: &Loc<'_>,
) -> Result<Option<Map<String, Value>>, PatchError> {
    if let Some(directive) = patch.get(PATCH_DIRECTIVE) {
        return match directive.as_str() {
            // The patch minus the directive becomes the whole map; merging it
            // into nothing strips nested directives and nulls.
            Some("replace") => merge_fields(Map::new(), patch, ty, loc).map(Some),
            Some("delete") => Ok(None),
            _ => Err(loc.error(format!(
                "invalid value {} for \"$patch\" in an object: expected \"replace\" or \"delete\"",
                describe(directive)
            ))),
        };
    }
    merge_fields(original.unwrap_or_default(), patch, ty, loc).map(Some)
}

/// Patch entries that touch one field: its value and the list directives
/// addressed to it.
#[derive(Default)]
struct FieldOps<'p> {
    value: Option<&'p Value>,
    order: Option<&'p Value>,
    deletes: Option<&'p Value>,
}

fn merge_fields(
    mut out: Map<String, Value>,
    patch: &Map<String, Value>,
    ty: Ty,
    loc: &Loc<'_>,
) -> Result<Map<String, Value>, PatchError> {
    if let Some(retain) = patch.get(RETAIN_KEYS_DIRECTIVE) {
        apply_retain_keys(&mut out, patch, retain, loc)?;
    }

    // Group directives with the field they address so each field is handled
    // once, whatever order the patch keys come in.
    let mut fields: BTreeMap<&str, FieldOps<'_>> = BTreeMap::new();
    for (key, value) in patch {
        if key == PATCH_DIRECTIVE || key == RETAIN_KEYS_DIRECTIVE {
            continue;
        }
        if let Some(target) = key.strip_prefix(SET_ORDER_PREFIX) {
            fields
                .entry(nonempty_target(target, key, loc)?)
                .or_default()
                .order = Some(value);
        } else if let Some(target) = key.strip_prefix(DELETE_PRIMITIVE_PREFIX) {
            fields
                .entry(nonempty_target(target, key, loc)?)
                .or_default()
                .deletes = Some(value);
        } else if key.starts_with('$') {
            return Err(loc.error(format!("unknown patch directive {key:?}")));
        } else {
            fields.entry(key).or_default().value = Some(value);
        }
    }

    for (field, ops) in fields {
        let floc = loc.field(field)?;
        let current = out.remove(field);
        let merged = match ops.value {
            // null deletes; a null for an absent field is simply dropped.
            Some(Value::Null) => None,
            Some(value) => {
                if (ops.order.is_some() || ops.deletes.is_some()) && !value.is_array() {
                    return Err(floc.error(format!(
                        "list directives given, but the patch value is {}, not a list",
                        type_name(value)
                    )));
                }
                merge_value(current, value, ty, field, ops.order, ops.deletes, &floc)?
            }
            // Only directives: they act on the list already there, if any.
            None => match current {
                Some(Value::Array(items)) => {
                    let strategy = ty.list_strategy(field);
                    if strategy == ListStrategy::Replace {
                        reject_delete_list(ops.deletes, &floc)?;
                        Some(Value::Array(items))
                    } else {
                        Some(Value::Array(merge_list(
                            Some(items),
                            &[],
                            ty.child(field),
                            strategy,
                            ops.order,
                            ops.deletes,
                            &floc,
                        )?))
                    }
                }
                other => other,
            },
        };
        if let Some(v) = merged {
            out.insert(field.to_string(), v);
        }
    }
    Ok(out)
}

fn nonempty_target<'k>(target: &'k str, key: &str, loc: &Loc<'_>) -> Result<&'k str, PatchError> {
    if target.is_empty() {
        Err(loc.error(format!("patch directive {key:?} does not name a field")))
    } else {
        Ok(target)
    }
}

fn apply_retain_keys(
    out: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    retain: &Value,
    loc: &Loc<'_>,
) -> Result<(), PatchError> {
    let bad = || loc.error("\"$retainKeys\" must be a list of field names");
    let Value::Array(items) = retain else {
        return Err(bad());
    };
    // A set, so that huge directive lists cannot make this quadratic.
    let mut keep = HashSet::with_capacity(items.len());
    for item in items {
        keep.insert(item.as_str().ok_or_else(bad)?);
    }
    // Like apimachinery: a field set by the patch must also be retained,
    // otherwise the patch contradicts itself.
    for (key, value) in patch {
        if value.is_null() || key.starts_with('$') {
            continue;
        }
        if !keep.contains(key.as_str()) {
            return Err(loc.error(format!(
                "field {key:?} is set by the patch but not listed in \"$retainKeys\""
            )));
        }
    }
    out.retain(|key, _| keep.contains(key.as_str()));
    Ok(())
}

fn reject_delete_list(deletes: Option<&Value>, loc: &Loc<'_>) -> Result<(), PatchError> {
    match deletes {
        Some(_) => Err(loc.error(
            "\"$deleteFromPrimitiveList\" only applies to lists that merge primitive values",
        )),
        None => Ok(()),
    }
}

/// Merges one field's patch value into its current value. `None` means the
/// field ends up absent.
fn merge_value(
    current: Option<Value>,
    patch: &Value,
    parent: Ty,
    field: &str,
    order: Option<&Value>,
    deletes: Option<&Value>,
    loc: &Loc<'_>,
) -> Result<Option<Value>, PatchError> {
    match patch {
        Value::Null => Ok(None),
        Value::Object(pm) => {
            let om = match current {
                Some(Value::Object(m)) => Some(m),
                // A type change replaces the old value.
                _ => None,
            };
            Ok(merge_map(om, pm, parent.child(field), loc)?.map(Value::Object))
        }
        Value::Array(pl) => {
            let ol = match current {
                Some(Value::Array(l)) => Some(l),
                _ => None,
            };
            let strategy = parent.list_strategy(field);
            merge_list(ol, pl, parent.child(field), strategy, order, deletes, loc)
                .map(|l| Some(Value::Array(l)))
        }
        scalar => Ok(Some(scalar.clone())),
    }
}

// ---------------------------------------------------------------------------
// Lists.

/// One element of a list being merged, with what the ordering step needs:
/// its position in the original list (if it came from there) and its rank
/// in the patch's requested order (if the patch names it).
struct Entry {
    value: Value,
    orig_idx: Option<usize>,
    rank: Option<usize>,
}

impl Entry {
    fn old(value: Value, orig_idx: usize) -> Self {
        Entry {
            value,
            orig_idx: Some(orig_idx),
            rank: None,
        }
    }

    fn new(value: Value) -> Self {
        Entry {
            value,
            orig_idx: None,
            rank: None,
        }
    }
}

fn merge_list(
    original: Option<Vec<Value>>,
    patch: &[Value],
    elem_ty: Ty,
    strategy: ListStrategy,
    order: Option<&Value>,
    deletes: Option<&Value>,
    loc: &Loc<'_>,
) -> Result<Vec<Value>, PatchError> {
    match strategy {
        ListStrategy::Replace => {
            reject_delete_list(deletes, loc)?;
            // `$setElementOrder` is meaningless for an atomic list: the patch
            // list already is the order.
            patch
                .iter()
                .enumerate()
                .map(|(i, v)| clean(v, &loc.index(i)?))
                .collect()
        }
        ListStrategy::MergeScalars => {
            merge_scalar_list(original.unwrap_or_default(), patch, order, deletes, loc)
        }
        ListStrategy::MergeByKey(key) => {
            reject_delete_list(deletes, loc)?;
            merge_keyed_list(
                original.unwrap_or_default(),
                patch,
                key,
                elem_ty,
                order,
                loc,
            )
        }
    }
}

/// Copies a value from an atomic part of the patch, dropping null fields and
/// any `$` directive keys so that nothing of the patch language is stored.
fn clean(v: &Value, loc: &Loc<'_>) -> Result<Value, PatchError> {
    Ok(match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                if v.is_null() || k.starts_with('$') {
                    continue;
                }
                out.insert(k.clone(), clean(v, &loc.field(k)?)?);
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| clean(v, &loc.index(i)?))
                .collect::<Result<_, _>>()?,
        ),
        scalar => scalar.clone(),
    })
}

fn merge_keyed_list(
    original: Vec<Value>,
    patch: &[Value],
    key: &'static str,
    elem_ty: Ty,
    order: Option<&Value>,
    loc: &Loc<'_>,
) -> Result<Vec<Value>, PatchError> {
    let mut replace = false;
    let mut deleted: HashSet<Key> = HashSet::new();
    // (index in the patch list, element, its merge key)
    let mut updates: Vec<(usize, &Map<String, Value>, Key)> = Vec::new();
    for (i, elem) in patch.iter().enumerate() {
        let eloc = loc.index(i)?;
        let Value::Object(m) = elem else {
            return Err(eloc.error(format!(
                "list merges by key {key:?}, so its elements must be objects, got {}",
                type_name(elem)
            )));
        };
        match m.get(PATCH_DIRECTIVE) {
            None => updates.push((i, m, element_key(m, key, &eloc)?)),
            Some(d) => match d.as_str() {
                Some("delete") => {
                    deleted.insert(element_key(m, key, &eloc)?);
                }
                Some("replace") => replace = true,
                Some("merge") => {
                    return Err(eloc.error("\"$patch\": \"merge\" is not supported in lists"));
                }
                _ => {
                    return Err(eloc.error(format!(
                        "invalid value {} for \"$patch\" in a list: expected \"replace\" or \"delete\"",
                        describe(d)
                    )));
                }
            },
        }
    }

    let order_ranks = match order {
        Some(o) => Some(keyed_order(o, key, &updates, loc)?),
        None => None,
    };

    let mut entries: Vec<Entry> = Vec::new();
    if replace {
        // `$patch: replace` makes the other patch elements the whole list,
        // in the order given; they then play the part of the original.
        for (n, (i, m, _)) in updates.drain(..).enumerate() {
            let eloc = loc.index(i)?;
            if let Some(v) = merge_map(None, m, elem_ty, &eloc)? {
                entries.push(Entry::old(Value::Object(v), n));
            }
        }
    } else {
        for (i, v) in original.into_iter().enumerate() {
            let gone = v
                .get(key)
                .and_then(scalar_key)
                .is_some_and(|k| deleted.contains(&k));
            if !gone {
                entries.push(Entry::old(v, i));
            }
        }
    }

    // Surviving elements by key; the first one wins, as in apimachinery.
    let mut index: HashMap<Key, usize> = HashMap::new();
    for (pos, e) in entries.iter().enumerate() {
        if let Some(k) = e.value.get(key).and_then(scalar_key) {
            index.entry(k).or_insert(pos);
        }
    }

    let mut patch_rank: HashMap<Key, usize> = HashMap::new();
    for (n, (i, m, k)) in updates.iter().enumerate() {
        let eloc = loc.index(*i)?;
        patch_rank.entry(k.clone()).or_insert(n);
        // Elements without `$patch` never come back deleted, hence the
        // unwrap_or_default.
        // `index` only points into `entries`, which never shrinks here.
        match index.get(k).and_then(|&pos| entries.get_mut(pos)) {
            Some(entry) => {
                let old = match std::mem::take(&mut entry.value) {
                    Value::Object(o) => Some(o),
                    _ => None,
                };
                let merged = merge_map(old, m, elem_ty, &eloc)?.unwrap_or_default();
                entry.value = Value::Object(merged);
            }
            None => {
                let merged = merge_map(None, m, elem_ty, &eloc)?.unwrap_or_default();
                index.insert(k.clone(), entries.len());
                entries.push(Entry::new(Value::Object(merged)));
            }
        }
    }

    let ranks = order_ranks.as_ref().unwrap_or(&patch_rank);
    for e in &mut entries {
        e.rank = e
            .value
            .get(key)
            .and_then(scalar_key)
            .and_then(|k| ranks.get(&k).copied());
    }
    Ok(arrange(entries))
}

/// The merge key of a patch element; it must be present and a scalar.
fn element_key(m: &Map<String, Value>, key: &str, loc: &Loc<'_>) -> Result<Key, PatchError> {
    match m.get(key) {
        None | Some(Value::Null) => Err(loc.error(format!(
            "list element does not contain the merge key {key:?}"
        ))),
        Some(v) => scalar_key(v).ok_or_else(|| {
            loc.error(format!(
                "merge key {key:?} must be a string, number or boolean, got {}",
                type_name(v)
            ))
        }),
    }
}

/// Parses `$setElementOrder` for a keyed list into key -> rank, and checks
/// that the patch elements appear in it in the same relative order.
fn keyed_order(
    order: &Value,
    key: &str,
    updates: &[(usize, &Map<String, Value>, Key)],
    loc: &Loc<'_>,
) -> Result<HashMap<Key, usize>, PatchError> {
    let Value::Array(items) = order else {
        return Err(loc.error("\"$setElementOrder\" must be a list"));
    };
    let mut keys = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let iloc = loc.index(i)?;
        let Value::Object(m) = item else {
            return Err(iloc.error(format!(
                "\"$setElementOrder\" entries must be objects holding the merge key {key:?}"
            )));
        };
        keys.push(element_key(m, key, &iloc)?);
    }
    let patch_keys: Vec<&Key> = updates.iter().map(|(_, _, k)| k).collect();
    check_subsequence(&patch_keys, &keys, loc)?;
    Ok(first_positions(keys))
}

fn merge_scalar_list(
    original: Vec<Value>,
    patch: &[Value],
    order: Option<&Value>,
    deletes: Option<&Value>,
    loc: &Loc<'_>,
) -> Result<Vec<Value>, PatchError> {
    let mut patch_keys = Vec::with_capacity(patch.len());
    for (i, v) in patch.iter().enumerate() {
        match scalar_key(v) {
            Some(k) => patch_keys.push(k),
            None => {
                return Err(loc.index(i)?.error(format!(
                    "list merges primitive values, got {}",
                    type_name(v)
                )));
            }
        }
    }

    let removed: HashSet<Key> = match deletes {
        None => HashSet::new(),
        Some(Value::Array(items)) => items.iter().filter_map(scalar_key).collect(),
        Some(_) => return Err(loc.error("\"$deleteFromPrimitiveList\" must be a list")),
    };

    // Ordered union without duplicates. Non-scalar junk already stored in
    // the original is kept as is rather than failing every later patch.
    let mut seen: HashSet<Key> = HashSet::new();
    let mut entries = Vec::with_capacity(original.len() + patch.len());
    for (i, v) in original.into_iter().enumerate() {
        if let Some(k) = scalar_key(&v)
            && (removed.contains(&k) || !seen.insert(k))
        {
            continue;
        }
        entries.push(Entry::old(v, i));
    }
    for (v, k) in patch.iter().zip(&patch_keys) {
        if seen.insert(k.clone()) {
            entries.push(Entry::new(v.clone()));
        }
    }

    let ranks = match order {
        None => first_positions(patch_keys),
        Some(Value::Array(items)) => {
            let mut keys = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match scalar_key(item) {
                    Some(k) => keys.push(k),
                    None => {
                        return Err(loc
                            .index(i)?
                            .error("\"$setElementOrder\" entries must be primitive values"));
                    }
                }
            }
            let patch_refs: Vec<&Key> = patch_keys.iter().collect();
            check_subsequence(&patch_refs, &keys, loc)?;
            first_positions(keys)
        }
        Some(_) => return Err(loc.error("\"$setElementOrder\" must be a list")),
    };
    for e in &mut entries {
        e.rank = scalar_key(&e.value).and_then(|k| ranks.get(&k).copied());
    }
    Ok(arrange(entries))
}

fn first_positions(keys: Vec<Key>) -> HashMap<Key, usize> {
    let mut out = HashMap::with_capacity(keys.len());
    for (i, k) in keys.into_iter().enumerate() {
        out.entry(k).or_insert(i);
    }
    out
}

/// The patch list must be a subsequence of the `$setElementOrder` list,
/// otherwise the two disagree about the order (apimachinery rejects this).
fn check_subsequence(patch: &[&Key], order: &[Key], loc: &Loc<'_>) -> Result<(), PatchError> {
    let mut it = order.iter();
    for k in patch {
        if !it.any(|o| o == *k) {
            return Err(loc.error(
                "the order of the patch list does not match its \"$setElementOrder\" list",
            ));
        }
    }
    Ok(())
}

/// Final ordering, as apimachinery's `normalizeElementOrder`: elements the
/// patch names are sorted by their requested rank, the others keep their
/// original order, and the two sequences are interleaved so that an
/// unnamed element goes before a named one only when both come from the
/// original list and it was in front there. New elements therefore end up
/// before unnamed old ones (Kubernetes "prepends" without
/// `$setElementOrder`).
fn arrange(entries: Vec<Entry>) -> Vec<Value> {
    let (mut named, server): (Vec<Entry>, Vec<Entry>) =
        entries.into_iter().partition(|e| e.rank.is_some());
    named.sort_by_key(|e| e.rank);
    let mut out = Vec::with_capacity(named.len() + server.len());
    let mut named = named.into_iter().peekable();
    let mut server = server.into_iter().peekable();
    loop {
        let take_server = match (server.peek(), named.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(s), Some(n)) => matches!((s.orig_idx, n.orig_idx), (Some(a), Some(b)) if a < b),
        };
        let next = if take_server {
            server.next()
        } else {
            named.next()
        };
        if let Some(e) = next {
            out.push(e.value);
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Schema: where the built-in kinds have merge lists. Derived from the
// `patchStrategy`/`patchMergeKey` tags in k8s.io/api; anything not listed
// is atomic, exactly as a field without tags is in Kubernetes.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RootKind {
    Pod,
    /// Kinds whose `spec.template` is a PodTemplateSpec and whose
    /// `status.conditions` merge by type.
    Workload,
    CronJob,
    PodTemplate,
    Service,
    Node,
    Namespace,
    /// Kinds with no merge lists beyond `metadata`.
    Plain,
}

impl RootKind {
    fn from_kind(kind: &str) -> Option<Self> {
        Some(match kind {
            "Pod" => RootKind::Pod,
            "Deployment"
            | "ReplicaSet"
            | "DaemonSet"
            | "StatefulSet"
            | "Job"
            | "ReplicationController" => RootKind::Workload,
            "CronJob" => RootKind::CronJob,
            "PodTemplate" => RootKind::PodTemplate,
            "Service" => RootKind::Service,
            "Node" => RootKind::Node,
            "Namespace" => RootKind::Namespace,
            "Endpoints" | "ConfigMap" | "Secret" | "Event" | "EndpointSlice" | "Lease"
            | "Scale" => RootKind::Plain,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Root(RootKind),
    ObjectMeta,
    WorkloadSpec,
    CronJobSpec,
    JobTemplateSpec,
    PodTemplateSpec,
    PodSpec,
    Container,
    PodStatus,
    /// A status whose only merge list is `conditions` (by type).
    ConditionsStatus,
    ServiceSpec,
    NodeSpec,
    NodeStatus,
    /// Anything without merge lists inside.
    Other,
}

impl Ty {
    fn root(kind: &str) -> Ty {
        Ty::Root(RootKind::from_kind(kind).unwrap_or(RootKind::Plain))
    }

    /// Type of field `field` of an object of this type (for lists: the type
    /// of their elements).
    fn child(self, field: &str) -> Ty {
        match (self, field) {
            (Ty::Root(_), "metadata") => Ty::ObjectMeta,
            (Ty::Root(RootKind::Pod), "spec") => Ty::PodSpec,
            (Ty::Root(RootKind::Pod), "status") => Ty::PodStatus,
            (Ty::Root(RootKind::Workload), "spec") => Ty::WorkloadSpec,
            (Ty::Root(RootKind::Workload | RootKind::Namespace | RootKind::Service), "status") => {
                Ty::ConditionsStatus
            }
            (Ty::Root(RootKind::CronJob), "spec") => Ty::CronJobSpec,
            (Ty::Root(RootKind::PodTemplate), "template") => Ty::PodTemplateSpec,
            (Ty::Root(RootKind::Service), "spec") => Ty::ServiceSpec,
            (Ty::Root(RootKind::Node), "spec") => Ty::NodeSpec,
            (Ty::Root(RootKind::Node), "status") => Ty::NodeStatus,
            (Ty::WorkloadSpec, "template") => Ty::PodTemplateSpec,
            (Ty::CronJobSpec, "jobTemplate") => Ty::JobTemplateSpec,
            (Ty::JobTemplateSpec, "metadata") => Ty::ObjectMeta,
            (Ty::JobTemplateSpec, "spec") => Ty::WorkloadSpec,
            (Ty::PodTemplateSpec, "metadata") => Ty::ObjectMeta,
            (Ty::PodTemplateSpec, "spec") => Ty::PodSpec,
            (Ty::PodSpec, "containers" | "initContainers" | "ephemeralContainers") => Ty::Container,
            _ => Ty::Other,
        }
    }

    fn list_strategy(self, field: &str) -> ListStrategy {
        use ListStrategy::{MergeByKey, MergeScalars, Replace};
        match (self, field) {
            (Ty::ObjectMeta, "finalizers") => MergeScalars,
            (Ty::ObjectMeta, "ownerReferences") => MergeByKey("uid"),
            (
                Ty::PodSpec,
                "containers"
                | "initContainers"
                | "ephemeralContainers"
                | "volumes"
                | "imagePullSecrets"
                | "schedulingGates"
                | "resourceClaims",
            ) => MergeByKey("name"),
            (Ty::PodSpec, "hostAliases") => MergeByKey("ip"),
            (Ty::PodSpec, "topologySpreadConstraints") => MergeByKey("topologyKey"),
            (Ty::Container, "ports") => MergeByKey("containerPort"),
            (Ty::Container, "env") => MergeByKey("name"),
            (Ty::Container, "volumeMounts") => MergeByKey("mountPath"),
            (Ty::Container, "volumeDevices") => MergeByKey("devicePath"),
            (Ty::PodStatus | Ty::ConditionsStatus | Ty::NodeStatus, "conditions") => {
                MergeByKey("type")
            }
            (Ty::PodStatus, "podIPs" | "hostIPs") => MergeByKey("ip"),
            (Ty::PodStatus, "resourceClaimStatuses") => MergeByKey("name"),
            (Ty::ServiceSpec, "ports") => MergeByKey("port"),
            (Ty::NodeSpec, "podCIDRs") => MergeScalars,
            (Ty::NodeStatus, "addresses") => MergeByKey("type"),
            _ => Replace,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn apply(original: &Value, patch: Value, kind: &str) -> Value {
        match strategic_merge(original, &patch, kind) {
            Ok(v) => v,
            Err(e) => panic!("patch failed: {e}"),
        }
    }

    fn apply_err(original: &Value, patch: Value, kind: &str) -> String {
        match strategic_merge(original, &patch, kind) {
            Ok(v) => panic!("patch unexpectedly succeeded: {v}"),
            Err(e) => e.to_string(),
        }
    }

    fn has_directive(v: &Value) -> bool {
        match v {
            Value::Object(m) => m
                .iter()
                .any(|(k, v)| k.starts_with('$') || has_directive(v)),
            Value::Array(items) => items.iter().any(has_directive),
            _ => false,
        }
    }

    fn names(list: &Value) -> Vec<String> {
        list.as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|i| i["name"].as_str().unwrap_or("?").to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "web",
                "namespace": "default",
                "labels": {"app": "web", "tier": "frontend"},
                "finalizers": ["example.com/a"]
            },
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}
                },
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "containers": [
                            {
                                "name": "app",
                                "image": "web:1",
                                "env": [
                                    {"name": "A", "value": "1"},
                                    {"name": "B", "value": "2"},
                                    {"name": "C", "value": "3"}
                                ],
                                "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                                "volumeMounts": [{"name": "data", "mountPath": "/data"}]
                            },
                            {"name": "sidecar", "image": "proxy:1"}
                        ],
                        "volumes": [{"name": "data", "emptyDir": {}}],
                        "tolerations": [{"key": "a", "operator": "Exists"}]
                    }
                }
            }
        })
    }

    fn containers_patch(containers: Value) -> Value {
        json!({"spec": {"template": {"spec": {"containers": containers}}}})
    }

    fn pod_spec(v: &Value) -> &Value {
        &v["spec"]["template"]["spec"]
    }

    #[test]
    fn patching_a_container_image_keeps_other_containers() {
        let out = apply(
            &deployment(),
            containers_patch(json!([{"name": "app", "image": "web:2"}])),
            "Deployment",
        );
        let containers = &pod_spec(&out)["containers"];
        assert_eq!(names(containers), ["app", "sidecar"]);
        assert_eq!(containers[0]["image"], "web:2");
        assert_eq!(names(&containers[0]["env"]), ["A", "B", "C"]);
        assert_eq!(
            containers[1],
            json!({"name": "sidecar", "image": "proxy:1"})
        );
    }

    #[test]
    fn patching_the_second_container_keeps_list_order() {
        let out = apply(
            &deployment(),
            containers_patch(json!([{"name": "sidecar", "image": "proxy:2"}])),
            "Deployment",
        );
        let containers = &pod_spec(&out)["containers"];
        assert_eq!(names(containers), ["app", "sidecar"]);
        assert_eq!(containers[1]["image"], "proxy:2");
    }

    #[test]
    fn new_container_without_set_element_order_goes_first_like_kubernetes() {
        let out = apply(
            &deployment(),
            containers_patch(json!([{"name": "debug", "image": "busybox"}])),
            "Deployment",
        );
        assert_eq!(
            names(&pod_spec(&out)["containers"]),
            ["debug", "app", "sidecar"]
        );
    }

    #[test]
    fn set_element_order_reorders_containers() {
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "sidecar"}, {"name": "app"}]
        }}}});
        let out = apply(&deployment(), patch, "Deployment");
        assert_eq!(names(&pod_spec(&out)["containers"]), ["sidecar", "app"]);
        assert!(!has_directive(&out));
    }

    #[test]
    fn set_element_order_appends_a_new_container_where_asked() {
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "app"}, {"name": "sidecar"}, {"name": "debug"}],
            "containers": [{"name": "debug", "image": "busybox"}]
        }}}});
        let out = apply(&deployment(), patch, "Deployment");
        assert_eq!(
            names(&pod_spec(&out)["containers"]),
            ["app", "sidecar", "debug"]
        );
        assert!(!has_directive(&out));
    }

    #[test]
    fn set_element_order_interleaves_unnamed_elements_like_apimachinery() {
        // B is not named; it goes before C because it preceded C originally.
        let patch = json!({"spec": {"template": {"spec": {"containers": [{
            "name": "app",
            "$setElementOrder/env": [{"name": "C"}, {"name": "A"}]
        }]}}}});
        let out = apply(&deployment(), patch, "Deployment");
        assert_eq!(
            names(&pod_spec(&out)["containers"][0]["env"]),
            ["B", "C", "A"]
        );
    }

    #[test]
    fn set_element_order_inconsistent_with_patch_list_is_rejected() {
        let swapped = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "app"}, {"name": "sidecar"}],
            "containers": [{"name": "sidecar", "image": "a"}, {"name": "app", "image": "b"}]
        }}}});
        let msg = apply_err(&deployment(), swapped, "Deployment");
        assert!(msg.contains("$setElementOrder"), "{msg}");

        let unnamed = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "app"}],
            "containers": [{"name": "debug", "image": "busybox"}]
        }}}});
        apply_err(&deployment(), unnamed, "Deployment");
    }

    #[test]
    fn env_entry_deleted_with_patch_delete_directive() {
        let patch = containers_patch(json!([{
            "name": "app",
            "env": [{"$patch": "delete", "name": "B"}]
        }]));
        let out = apply(&deployment(), patch, "Deployment");
        assert_eq!(
            pod_spec(&out)["containers"][0]["env"],
            json!([{"name": "A", "value": "1"}, {"name": "C", "value": "3"}])
        );
    }

    #[test]
    fn env_entries_are_updated_in_place_and_new_ones_added() {
        let patch = containers_patch(json!([{
            "name": "app",
            "env": [{"name": "B", "value": "20"}, {"name": "D", "value": "4"}]
        }]));
        let out = apply(&deployment(), patch, "Deployment");
        assert_eq!(
            pod_spec(&out)["containers"][0]["env"],
            json!([
                {"name": "A", "value": "1"},
                {"name": "B", "value": "20"},
                {"name": "D", "value": "4"},
                {"name": "C", "value": "3"}
            ])
        );
    }

    #[test]
    fn patch_replace_directive_in_list_replaces_the_whole_list() {
        let patch = containers_patch(json!([{
            "name": "app",
            "env": [{"$patch": "replace"}, {"name": "Z", "value": "9"}]
        }]));
        let out = apply(&deployment(), patch, "Deployment");
        assert_eq!(
            pod_spec(&out)["containers"][0]["env"],
            json!([{"name": "Z", "value": "9"}])
        );
    }

    #[test]
    fn list_element_missing_merge_key_is_rejected_with_its_path() {
        let msg = apply_err(
            &deployment(),
            containers_patch(json!([{"image": "web:2"}])),
            "Deployment",
        );
        assert_eq!(
            msg,
            "spec.template.spec.containers[0]: list element does not contain the merge key \"name\""
        );
    }

    #[test]
    fn delete_directive_without_merge_key_is_rejected() {
        let patch = containers_patch(json!([{"$patch": "delete", "image": "web:1"}]));
        let msg = apply_err(&deployment(), patch, "Deployment");
        assert!(msg.contains("merge key \"name\""), "{msg}");
    }

    #[test]
    fn keyed_list_elements_must_be_objects() {
        let msg = apply_err(
            &deployment(),
            containers_patch(json!(["app"])),
            "Deployment",
        );
        assert!(msg.contains("must be objects"), "{msg}");
    }

    #[test]
    fn tolerations_are_replaced_not_merged() {
        let patch = json!({"spec": {"template": {"spec": {
            "tolerations": [{"key": "b", "operator": "Exists"}]
        }}}});
        let out = apply(&deployment(), patch, "Deployment");
        assert_eq!(
            pod_spec(&out)["tolerations"],
            json!([{"key": "b", "operator": "Exists"}])
        );
    }

    #[test]
    fn null_deletes_a_label_and_unmatched_nulls_are_dropped() {
        let patch = json!({"metadata": {"labels": {"tier": null, "absent": null, "new": "x"}}});
        let out = apply(&deployment(), patch, "Deployment");
        assert_eq!(out["metadata"]["labels"], json!({"app": "web", "new": "x"}));
    }

    #[test]
    fn null_for_a_merge_list_removes_it() {
        let patch = json!({"spec": {"template": {"spec": {"volumes": null}}}});
        let out = apply(&deployment(), patch, "Deployment");
        assert!(pod_spec(&out).get("volumes").is_none());
    }

    #[test]
    fn empty_patch_list_leaves_a_merge_list_untouched() {
        let out = apply(&deployment(), containers_patch(json!([])), "Deployment");
        assert_eq!(out, deployment());
    }

    #[test]
    fn volume_mounts_merge_by_mount_path() {
        let patch = containers_patch(json!([{
            "name": "app",
            "volumeMounts": [{"mountPath": "/data", "readOnly": true}]
        }]));
        let out = apply(&deployment(), patch, "Deployment");
        assert_eq!(
            pod_spec(&out)["containers"][0]["volumeMounts"],
            json!([{"name": "data", "mountPath": "/data", "readOnly": true}])
        );
    }

    #[test]
    fn numeric_merge_keys_match_across_integer_and_float_forms() {
        let patch = containers_patch(json!([{
            "name": "app",
            "ports": [{"containerPort": 8080.0, "name": "http"}]
        }]));
        let out = apply(&deployment(), patch, "Deployment");
        let ports = &pod_spec(&out)["containers"][0]["ports"];
        assert_eq!(ports.as_array().map(Vec::len), Some(1));
        assert_eq!(ports[0]["name"], "http");
        assert_eq!(ports[0]["protocol"], "TCP");
    }

    #[test]
    fn finalizers_merge_as_a_set_without_duplicates() {
        let patch = json!({"metadata": {"finalizers": ["example.com/a", "example.com/b"]}});
        let out = apply(&deployment(), patch, "Deployment");
        assert_eq!(
            out["metadata"]["finalizers"],
            json!(["example.com/a", "example.com/b"])
        );
    }

    #[test]
    fn new_finalizer_goes_first_unless_set_element_order_says_otherwise() {
        let plain = json!({"metadata": {"finalizers": ["example.com/c"]}});
        let out = apply(&deployment(), plain, "Deployment");
        assert_eq!(
            out["metadata"]["finalizers"],
            json!(["example.com/c", "example.com/a"])
        );

        let ordered = json!({"metadata": {
            "$setElementOrder/finalizers": ["example.com/a", "example.com/c"],
            "finalizers": ["example.com/c"]
        }});
        let out = apply(&deployment(), ordered, "Deployment");
        assert_eq!(
            out["metadata"]["finalizers"],
            json!(["example.com/a", "example.com/c"])
        );
        assert!(!has_directive(&out));
    }

    #[test]
    fn delete_from_primitive_list_removes_finalizers() {
        let mut original = deployment();
        original["metadata"]["finalizers"] = json!(["x/a", "x/b", "x/c"]);
        let patch = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["x/b", "x/zzz"]}});
        let out = apply(&original, patch, "Deployment");
        assert_eq!(out["metadata"]["finalizers"], json!(["x/a", "x/c"]));
        assert!(!has_directive(&out));
    }

    #[test]
    fn delete_from_primitive_list_combines_with_additions() {
        let mut original = deployment();
        original["metadata"]["finalizers"] = json!(["x/a", "x/b"]);
        let patch = json!({"metadata": {
            "$deleteFromPrimitiveList/finalizers": ["x/a"],
            "finalizers": ["x/b", "x/c"]
        }});
        let out = apply(&original, patch, "Deployment");
        assert_eq!(out["metadata"]["finalizers"], json!(["x/b", "x/c"]));
    }

    #[test]
    fn delete_from_primitive_list_is_rejected_for_keyed_lists() {
        let patch = json!({"spec": {"template": {"spec": {
            "$deleteFromPrimitiveList/containers": ["app"]
        }}}});
        let msg = apply_err(&deployment(), patch, "Deployment");
        assert!(msg.contains("$deleteFromPrimitiveList"), "{msg}");
    }

    #[test]
    fn retain_keys_clears_fields_not_listed() {
        let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}});
        let out = apply(&deployment(), patch, "Deployment");
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
    }

    #[test]
    fn retain_keys_rejects_a_patched_field_it_does_not_list() {
        let patch = json!({"spec": {"strategy": {
            "$retainKeys": ["type"],
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 2}
        }}});
        let msg = apply_err(&deployment(), patch, "Deployment");
        assert!(msg.starts_with("spec.strategy: "), "{msg}");
        assert!(msg.contains("rollingUpdate"), "{msg}");
    }

    #[test]
    fn retain_keys_on_a_volume_switches_its_source() {
        let patch = json!({"spec": {"template": {"spec": {"volumes": [{
            "name": "data",
            "$retainKeys": ["name", "configMap"],
            "configMap": {"name": "settings"}
        }]}}}});
        let out = apply(&deployment(), patch, "Deployment");
        assert_eq!(
            pod_spec(&out)["volumes"],
            json!([{"name": "data", "configMap": {"name": "settings"}}])
        );
    }

    #[test]
    fn patch_replace_in_a_map_replaces_the_map() {
        let patch = json!({"metadata": {"labels": {"$patch": "replace", "app": "other"}}});
        let out = apply(&deployment(), patch, "Deployment");
        assert_eq!(out["metadata"]["labels"], json!({"app": "other"}));
    }

    #[test]
    fn patch_delete_in_a_map_removes_the_map() {
        let patch = json!({"spec": {"strategy": {"$patch": "delete"}}});
        let out = apply(&deployment(), patch, "Deployment");
        assert!(out["spec"].get("strategy").is_none());
        assert_eq!(out["spec"]["replicas"], 2);
    }

    #[test]
    fn top_level_patch_delete_leaves_an_empty_object() {
        let out = apply(&deployment(), json!({"$patch": "delete"}), "Deployment");
        assert_eq!(out, json!({}));
    }

    #[test]
    fn directives_never_leak_into_fields_absent_from_the_original() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
        let patch = json!({
            "metadata": {"annotations": {"$patch": "replace", "a": "b"}},
            "spec": {
                "$setElementOrder/initContainers": [{"name": "init"}],
                "initContainers": [{
                    "name": "init",
                    "image": "busybox",
                    "env": [
                        {"$patch": "delete", "name": "X"},
                        {"name": "Y", "value": "y"}
                    ],
                    "resources": {"$patch": "delete"}
                }],
                "tolerations": [{"key": "k", "$patch": "replace", "value": null}]
            }
        });
        let out = apply(&pod, patch, "Pod");
        assert!(!has_directive(&out), "{out}");
        assert_eq!(out["metadata"]["annotations"], json!({"a": "b"}));
        assert_eq!(
            out["spec"]["initContainers"],
            json!([{"name": "init", "image": "busybox", "env": [{"name": "Y", "value": "y"}]}])
        );
        assert_eq!(out["spec"]["tolerations"], json!([{"key": "k"}]));
    }

    #[test]
    fn unknown_directive_is_rejected() {
        let msg = apply_err(
            &deployment(),
            json!({"metadata": {"$frobnicate": 1}}),
            "Deployment",
        );
        assert_eq!(msg, "metadata: unknown patch directive \"$frobnicate\"");
    }

    #[test]
    fn invalid_patch_directive_values_are_rejected() {
        apply_err(
            &deployment(),
            json!({"metadata": {"$patch": "explode"}}),
            "Deployment",
        );
        apply_err(
            &deployment(),
            containers_patch(json!([{"$patch": "merge", "name": "app"}])),
            "Deployment",
        );
        apply_err(
            &deployment(),
            json!({"metadata": {"$patch": 7}}),
            "Deployment",
        );
        apply_err(
            &deployment(),
            json!({"spec": {"strategy": {"$retainKeys": "type"}}}),
            "Deployment",
        );
    }

    #[test]
    fn non_object_documents_are_rejected() {
        assert!(strategic_merge(&deployment(), &json!([1, 2]), "Deployment").is_err());
        assert!(strategic_merge(&json!("x"), &json!({}), "Deployment").is_err());
    }

    #[test]
    fn a_type_change_replaces_the_old_value() {
        let out = apply(
            &deployment(),
            json!({"metadata": {"labels": "oops"}}),
            "Deployment",
        );
        assert_eq!(out["metadata"]["labels"], "oops");
        let out = apply(
            &deployment(),
            json!({"spec": {"replicas": {"a": null, "b": 1}}}),
            "Deployment",
        );
        assert_eq!(out["spec"]["replicas"], json!({"b": 1}));
    }

    #[test]
    fn deeply_nested_patch_is_rejected_without_overflowing_the_stack() {
        let mut patch = json!(1);
        for _ in 0..1000 {
            patch = json!({ "a": patch });
        }
        let msg = apply_err(&json!({}), patch, "ConfigMap");
        assert!(
            msg.contains("nesting deeper than"),
            "{}",
            &msg[msg.len() - 60..]
        );
    }

    #[test]
    fn documents_at_the_json_parser_nesting_limit_are_merged() {
        // serde_json accepts at most 128 nested containers; such documents
        // must merge fine (and within a test thread's stack).
        let nested = |open: &str, leaf: &str, close: &str| {
            let text = format!("{}{leaf}{}", open.repeat(127), close.repeat(127));
            let inner: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            json!({ "data": inner })
        };
        let objects = nested("{\"a\":", "1", "}");
        let lists = nested("[", "1", "]");
        assert_ne!(objects["data"], Value::Null);
        assert_ne!(lists["data"], Value::Null);
        assert_eq!(apply(&objects, objects.clone(), "ConfigMap"), objects);
        assert_eq!(apply(&json!({}), lists.clone(), "ConfigMap"), lists);
    }

    #[test]
    fn service_ports_merge_by_port_and_load_balancer_ingress_is_atomic() {
        let svc = json!({
            "metadata": {"name": "web"},
            "spec": {
                "selector": {"app": "web"},
                "ports": [
                    {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
                    {"name": "https", "port": 443, "targetPort": 8443, "protocol": "TCP"}
                ]
            },
            "status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}}
        });
        let patch = json!({
            "spec": {"ports": [{"port": 80, "targetPort": 9090}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.2"}]}}
        });
        let out = apply(&svc, patch, "Service");
        assert_eq!(
            out["spec"]["ports"],
            json!([
                {"name": "http", "port": 80, "targetPort": 9090, "protocol": "TCP"},
                {"name": "https", "port": 443, "targetPort": 8443, "protocol": "TCP"}
            ])
        );
        assert_eq!(
            out["status"]["loadBalancer"]["ingress"],
            json!([{"ip": "10.0.0.2"}])
        );
    }

    #[test]
    fn pod_status_conditions_merge_by_type_and_container_statuses_are_atomic() {
        let pod = json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "i"}]},
            "status": {
                "phase": "Pending",
                "conditions": [
                    {"type": "PodScheduled", "status": "True"},
                    {"type": "Ready", "status": "False"}
                ],
                "containerStatuses": [{"name": "c", "ready": false, "restartCount": 0}]
            }
        });
        let patch = json!({"status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "c", "ready": true}]
        }});
        let out = apply(&pod, patch, "Pod");
        assert_eq!(
            out["status"]["conditions"],
            json!([
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": "True"}
            ])
        );
        assert_eq!(
            out["status"]["containerStatuses"],
            json!([{"name": "c", "ready": true}])
        );
    }

    #[test]
    fn node_addresses_and_conditions_merge_by_type_while_taints_are_atomic() {
        let node = json!({
            "metadata": {"name": "n1"},
            "spec": {"taints": [{"key": "a", "effect": "NoSchedule"}], "podCIDRs": ["10.0.0.0/24"]},
            "status": {
                "addresses": [{"type": "InternalIP", "address": "10.1.1.1"}, {"type": "Hostname", "address": "n1"}],
                "conditions": [{"type": "Ready", "status": "False"}],
                "images": [{"names": ["a"], "sizeBytes": 1}]
            }
        });
        let patch = json!({
            "spec": {"taints": [{"key": "b", "effect": "NoExecute"}], "podCIDRs": ["fd00::/64"]},
            "status": {
                "addresses": [{"type": "InternalIP", "address": "10.1.1.2"}],
                "conditions": [{"type": "Ready", "status": "True"}, {"type": "DiskPressure", "status": "False"}],
                "images": [{"names": ["b"], "sizeBytes": 2}]
            }
        });
        let out = apply(&node, patch, "Node");
        assert_eq!(
            out["spec"]["taints"],
            json!([{"key": "b", "effect": "NoExecute"}])
        );
        assert_eq!(out["spec"]["podCIDRs"], json!(["fd00::/64", "10.0.0.0/24"]));
        assert_eq!(
            out["status"]["addresses"],
            json!([{"type": "InternalIP", "address": "10.1.1.2"}, {"type": "Hostname", "address": "n1"}])
        );
        assert_eq!(
            out["status"]["conditions"],
            json!([{"type": "Ready", "status": "True"}, {"type": "DiskPressure", "status": "False"}])
        );
        assert_eq!(
            out["status"]["images"],
            json!([{"names": ["b"], "sizeBytes": 2}])
        );
    }

    #[test]
    fn owner_references_merge_by_uid() {
        let rs = json!({"metadata": {"name": "rs", "ownerReferences": [
            {"uid": "u1", "kind": "Deployment", "name": "web", "controller": true}
        ]}});
        let patch = json!({"metadata": {"ownerReferences": [
            {"uid": "u1", "blockOwnerDeletion": true},
            {"uid": "u2", "kind": "Thing", "name": "t"}
        ]}});
        let out = apply(&rs, patch, "ReplicaSet");
        assert_eq!(
            out["metadata"]["ownerReferences"],
            json!([
                {"uid": "u1", "kind": "Deployment", "name": "web", "controller": true, "blockOwnerDeletion": true},
                {"uid": "u2", "kind": "Thing", "name": "t"}
            ])
        );
    }

    #[test]
    fn unknown_kinds_merge_metadata_but_replace_their_own_lists() {
        let obj = json!({"metadata": {"finalizers": ["a"]}, "spec": {"containers": [{"name": "x", "v": 1}]}});
        let patch = json!({"metadata": {"finalizers": ["a", "b"]}, "spec": {"containers": [{"name": "y"}]}});
        let out = apply(&obj, patch, "Widget");
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b"]));
        assert_eq!(out["spec"]["containers"], json!([{"name": "y"}]));
        assert!(!is_known_kind("Widget"));
        assert!(is_known_kind("Lease"));
    }

    #[test]
    fn merge_key_reports_strategies_for_known_paths() {
        use ListStrategy::*;
        let cases: &[(&str, &[&str], ListStrategy)] = &[
            (
                "Deployment",
                &["spec", "template", "spec", "containers"],
                MergeByKey("name"),
            ),
            (
                "DaemonSet",
                &["spec", "template", "spec", "initContainers", "env"],
                MergeByKey("name"),
            ),
            (
                "Pod",
                &["spec", "containers", "ports"],
                MergeByKey("containerPort"),
            ),
            (
                "Pod",
                &["spec", "containers", "volumeMounts"],
                MergeByKey("mountPath"),
            ),
            (
                "Pod",
                &["spec", "ephemeralContainers", "volumeDevices"],
                MergeByKey("devicePath"),
            ),
            ("Pod", &["spec", "containers", "envFrom"], Replace),
            ("Pod", &["spec", "containers", "resizePolicy"], Replace),
            ("Pod", &["spec", "hostAliases"], MergeByKey("ip")),
            ("Pod", &["spec", "tolerations"], Replace),
            ("Pod", &["status", "containerStatuses"], Replace),
            ("Pod", &["metadata", "finalizers"], MergeScalars),
            (
                "ReplicaSet",
                &["spec", "template", "metadata", "ownerReferences"],
                MergeByKey("uid"),
            ),
            ("ReplicaSet", &["status", "conditions"], MergeByKey("type")),
            ("Service", &["spec", "ports"], MergeByKey("port")),
            ("Service", &["status", "loadBalancer", "ingress"], Replace),
            ("Node", &["spec", "taints"], Replace),
            ("Node", &["status", "images"], Replace),
            ("Node", &["status", "addresses"], MergeByKey("type")),
            ("Endpoints", &["subsets"], Replace),
            ("Pod", &[], Replace),
        ];
        for (kind, path, want) in cases {
            assert_eq!(merge_key(kind, path), *want, "{kind} {path:?}");
        }
    }

    // ---- property tests --------------------------------------------------

    const KEYS: &[&str] = &[
        "metadata",
        "spec",
        "status",
        "template",
        "containers",
        "env",
        "name",
        "finalizers",
        "labels",
        "conditions",
        "type",
        "ports",
        "port",
        "image",
        "a",
        "b",
        "$patch",
        "$retainKeys",
        "$setElementOrder/containers",
        "$setElementOrder/finalizers",
        "$setElementOrder/env",
        "$deleteFromPrimitiveList/finalizers",
        "$bogus",
    ];

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
                .map(Value::Number)),
            prop::sample::select(vec!["replace", "delete", "merge", "a", "b", "name"])
                .prop_map(Value::from),
            ".{0,4}".prop_map(Value::from),
        ]
    }

    fn json(keys: Vec<&'static str>, arrays: bool) -> impl Strategy<Value = Value> {
        leaf().prop_recursive(5, 64, 6, move |inner| {
            let key = prop_oneof![
                4 => prop::sample::select(keys.clone()).prop_map(str::to_string),
                1 => "[a-z]{1,3}",
            ];
            let object = prop::collection::btree_map(key, inner.clone(), 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect()));
            if arrays {
                prop_oneof![
                    object,
                    prop::collection::vec(inner, 0..6).prop_map(Value::Array)
                ]
                .boxed()
            } else {
                object.boxed()
            }
        })
    }

    fn object(keys: Vec<&'static str>, arrays: bool) -> impl Strategy<Value = Value> {
        prop::collection::btree_map(prop::sample::select(keys.clone()), json(keys, arrays), 0..6)
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
    }

    fn plain_keys() -> Vec<&'static str> {
        KEYS.iter()
            .copied()
            .filter(|k| !k.starts_with('$'))
            .collect()
    }

    fn kind() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "Pod",
            "Deployment",
            "ReplicaSet",
            "DaemonSet",
            "Service",
            "Endpoints",
            "ConfigMap",
            "Secret",
            "Namespace",
            "Node",
            "Event",
            "EndpointSlice",
            "Lease",
            "Scale",
            "Widget",
        ])
    }

    /// RFC 7386 JSON merge patch, the reference for list-free documents.
    fn json_merge_patch(target: &Value, patch: &Value) -> Value {
        let Value::Object(p) = patch else {
            return patch.clone();
        };
        let mut out = match target {
            Value::Object(t) => t.clone(),
            _ => Map::new(),
        };
        for (k, v) in p {
            if v.is_null() {
                out.remove(k);
            } else {
                let cur = out.get(k).cloned().unwrap_or(Value::Null);
                out.insert(k.clone(), json_merge_patch(&cur, v));
            }
        }
        Value::Object(out)
    }

    proptest! {
        #[test]
        fn strategic_merge_never_panics(
            original in json(KEYS.to_vec(), true),
            patch in json(KEYS.to_vec(), true),
            kind in kind(),
        ) {
            let _ = strategic_merge(&original, &patch, kind);
        }

        #[test]
        fn strategic_merge_never_panics_on_object_documents(
            original in object(KEYS.to_vec(), true),
            patch in object(KEYS.to_vec(), true),
            kind in kind(),
        ) {
            let _ = strategic_merge(&original, &patch, kind);
        }

        #[test]
        fn empty_patch_is_the_identity(original in object(KEYS.to_vec(), true), kind in kind()) {
            prop_assert_eq!(strategic_merge(&original, &json!({}), kind), Ok(original));
        }

        #[test]
        fn agrees_with_json_merge_patch_on_maps_without_lists(
            original in object(plain_keys(), false),
            patch in object(plain_keys(), false),
            kind in kind(),
        ) {
            let expected = json_merge_patch(&original, &patch);
            prop_assert_eq!(strategic_merge(&original, &patch, kind), Ok(expected));
        }

        #[test]
        fn successful_results_contain_no_directives(
            original in object(plain_keys(), true),
            patch in object(KEYS.to_vec(), true),
            kind in kind(),
        ) {
            if let Ok(out) = strategic_merge(&original, &patch, kind) {
                prop_assert!(!has_directive(&out), "{}", out);
            }
        }
    }
}
