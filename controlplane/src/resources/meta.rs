//! Small helpers over JSON objects shared by the strategies.

use serde_json::{Map, Value};

/// Now, as Kubernetes writes timestamps (RFC 3339, seconds, UTC).
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Sets `obj[path...] = value`, creating intermediate objects; replaces non-objects on the way.
pub fn set_path(obj: &mut Value, path: &[&str], value: Value) {
    let mut cur = obj;
    for (i, part) in path.iter().enumerate() {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let Value::Object(map) = cur else { return };
        if i + 1 == path.len() {
            map.insert((*part).to_owned(), value);
            return;
        }
        cur = map
            .entry((*part).to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

/// Sets `obj[key] = value` only when the key is absent or null.
pub fn default_field(obj: &mut Value, key: &str, value: Value) {
    if let Value::Object(map) = obj {
        let slot = map.entry(key.to_owned()).or_insert(Value::Null);
        if slot.is_null() {
            *slot = value;
        }
    }
}

/// Mutable access to `obj[path...]` when every step exists.
pub fn get_mut<'a>(obj: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    let mut cur = obj;
    for part in path {
        cur = cur.get_mut(*part)?;
    }
    Some(cur)
}

/// Calls `f` on each element of the array at `obj[path...]`, if any.
pub fn each_mut(obj: &mut Value, path: &[&str], mut f: impl FnMut(&mut Value)) {
    if let Some(Value::Array(items)) = get_mut(obj, path) {
        items.iter_mut().for_each(&mut f);
    }
}

pub fn str_at<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    obj.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}
