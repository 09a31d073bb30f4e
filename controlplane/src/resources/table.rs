//! Server-side printing: the columns `kubectl get` shows for each resource.

use serde_json::{Value, json};

#[derive(Clone, Copy, Debug)]
pub struct Column {
    pub name: &'static str,
    pub ty: &'static str,
    /// 0 = always shown; 1 = only with `-o wide`.
    pub priority: u8,
    pub description: &'static str,
}

pub const fn col(name: &'static str, description: &'static str) -> Column {
    Column {
        name,
        ty: "string",
        priority: 0,
        description,
    }
}

pub const fn int(name: &'static str, description: &'static str) -> Column {
    Column {
        name,
        ty: "integer",
        priority: 0,
        description,
    }
}

pub const fn wide(name: &'static str, description: &'static str) -> Column {
    Column {
        name,
        ty: "string",
        priority: 1,
        description,
    }
}

pub fn definition(c: &Column) -> Value {
    json!({
        "name": c.name,
        "type": c.ty,
        "format": if c.name == "Name" { "name" } else { "" },
        "description": c.description,
        "priority": c.priority,
    })
}

/// Kubernetes' `duration.HumanDuration`, as in the AGE column.
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let s = secs.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    let y = d / 365;
    let with = |big: i64, bu: &str, small: i64, su: &str| {
        if small == 0 {
            format!("{big}{bu}")
        } else {
            format!("{big}{bu}{small}{su}")
        }
    };
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        with(m, "m", s % 60, "s")
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        with(h, "h", m % 60, "m")
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        with(d, "d", h % 24, "h")
    } else if h < 24 * 365 * 2 {
        format!("{d}d")
    } else if h < 24 * 365 * 8 {
        with(y, "y", d % 365, "d")
    } else {
        format!("{y}y")
    }
}

/// Age of a timestamp field as printed by kubectl, `<unknown>` when absent.
pub fn age(ts: Option<&Value>) -> Value {
    let Some(t) = ts
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<jiff::Timestamp>().ok())
    else {
        return json!("<unknown>");
    };
    let secs = jiff::Timestamp::now().as_second() - t.as_second();
    json!(human_duration(secs))
}

pub fn or_none(s: String) -> Value {
    if s.is_empty() {
        json!("<none>")
    } else {
        json!(s)
    }
}

/// Comma-joined names/images of the containers of a pod template.
pub fn containers_and_images(spec: Option<&Value>) -> (Value, Value) {
    let cs = spec
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let names: Vec<&str> = cs.iter().filter_map(|c| c.get("name")?.as_str()).collect();
    let images: Vec<&str> = cs.iter().filter_map(|c| c.get("image")?.as_str()).collect();
    (or_none(names.join(",")), or_none(images.join(",")))
}

/// A label selector printed as `a=b,c in (d)`.
pub fn selector_string(sel: Option<&Value>) -> Value {
    let Some(sel) = sel else {
        return json!("<none>");
    };
    let mut parts: Vec<String> = super::string_map(sel.get("matchLabels"))
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in sel
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = e.get("key").and_then(Value::as_str).unwrap_or("");
        let values: Vec<&str> = e
            .get("values")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        parts.push(
            match e.get("operator").and_then(Value::as_str).unwrap_or("") {
                "In" => format!("{key} in ({})", values.join(",")),
                "NotIn" => format!("{key} notin ({})", values.join(",")),
                "Exists" => key.to_owned(),
                _ => format!("!{key}"),
            },
        );
    }
    or_none(parts.join(","))
}

pub fn int_at(obj: &Value, pointer: &str) -> i64 {
    obj.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::human_duration;

    #[test]
    fn ages_print_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 60), "3h1m");
        assert_eq!(human_duration(30 * 3600), "30h");
        assert_eq!(human_duration(3 * 86400), "3d");
        assert_eq!(human_duration(400 * 86400), "400d");
    }
}
