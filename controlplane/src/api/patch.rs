//! PATCH bodies of the four kinds Kubernetes accepts, applied to JSON objects.

use serde_json::Value;

use super::errors::{ApiError, ApiResult};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> ApiResult<Self> {
        let base = ct.split(';').next().unwrap_or("").trim();
        match base {
            "application/json-patch+json" => Ok(Self::Json),
            "application/merge-patch+json" => Ok(Self::Merge),
            "application/strategic-merge-patch+json" => Ok(Self::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Ok(Self::Apply),
            other => Err(ApiError::unsupported_media_type(other)),
        }
    }
}

/// Parses a patch body (JSON, or YAML for server-side apply).
pub fn parse_body(ty: PatchType, body: &[u8]) -> ApiResult<Value> {
    let parsed: Result<Value, String> = match ty {
        PatchType::Apply => serde_yaml::from_slice(body).map_err(|e| e.to_string()),
        _ => serde_json::from_slice(body).map_err(|e| e.to_string()),
    };
    parsed.map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))
}

/// Applies `patch` to `original`. `kind` selects the strategic-merge keys.
pub fn apply(ty: PatchType, original: &Value, patch: &Value, kind: &str) -> ApiResult<Value> {
    match ty {
        PatchType::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch.clone()).map_err(|e| {
                ApiError::bad_request(format!("the server rejected our request due to an error in our request: invalid JSON patch: {e}"))
            })?;
            let mut doc = original.clone();
            json_patch::patch(&mut doc, &ops).map_err(|e| {
                ApiError::new(
                    http::StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    format!("the server rejected our request due to an error in our request: {e}"),
                )
            })?;
            Ok(doc)
        }
        PatchType::Merge => {
            if !patch.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            let mut doc = original.clone();
            json_patch::merge(&mut doc, patch);
            Ok(doc)
        }
        // Server-side apply without field ownership: the applied configuration is merged with
        // strategic-merge semantics, so fields the client sends win and others are kept.
        PatchType::Strategic | PatchType::Apply => {
            if !patch.is_object() {
                return Err(ApiError::bad_request(
                    "a strategic merge patch must be a JSON object",
                ));
            }
            super::smp::strategic_merge(original, patch, kind)
                .map_err(|e| ApiError::bad_request(e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_patch_test_op_failure_is_a_422() {
        let err = apply(
            PatchType::Json,
            &json!({"a": 1}),
            &json!([{"op": "test", "path": "/a", "value": 2}]),
            "Pod",
        )
        .expect_err("test op fails");
        assert_eq!(err.code, 422);
    }

    #[test]
    fn merge_patch_null_removes_a_label() {
        let out = apply(
            PatchType::Merge,
            &json!({"metadata": {"labels": {"a": "1", "b": "2"}}}),
            &json!({"metadata": {"labels": {"a": null}}}),
            "Pod",
        )
        .expect("merge");
        assert_eq!(out, json!({"metadata": {"labels": {"b": "2"}}}));
    }
}
