//! The OpenAPI documents kubectl reads before it writes.
//!
//! kubectl (`--validate=strict`, its default) asks the server to validate when the OpenAPI v3
//! document of the object's group-version shows a PATCH operation for that kind with a
//! `fieldValidation` parameter; then it sends `fieldValidation=Strict` and the server rejects
//! unknown fields (see `handler::decode_object`). So each group-version document lists every
//! resource's operations with their `x-kubernetes-group-version-kind` and parameters.
//! kubectl 1.27/1.28 also fetch /openapi/v2 (protobuf) up front; an empty document is a valid
//! protobuf message that makes them defer to the server as well.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::errors::{ApiError, ApiResult};
use super::router::json_response;
use crate::resources::{RESOURCES, Resource, Sub};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn gvk(r: &Resource) -> Value {
    json!({"group": r.group, "version": r.version, "kind": r.kind})
}

fn op(r: &Resource, verb: &str, action: &str, params: &[&str]) -> Value {
    let parameters: Vec<Value> = params
        .iter()
        .map(|p| json!({"name": p, "in": "query", "schema": {"type": "string"}, "uniqueItems": true}))
        .collect();
    json!({
        "operationId": format!("{verb}{}", r.kind),
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk(r),
        "parameters": parameters,
        "responses": {"200": {"description": "OK"}},
    })
}

const WRITE: &[&str] = &["dryRun", "fieldManager", "fieldValidation", "pretty"];
const PATCH: &[&str] = &[
    "dryRun",
    "fieldManager",
    "fieldValidation",
    "force",
    "pretty",
];
const LIST: &[&str] = &[
    "allowWatchBookmarks",
    "continue",
    "fieldSelector",
    "labelSelector",
    "limit",
    "resourceVersion",
    "resourceVersionMatch",
    "sendInitialEvents",
    "timeoutSeconds",
    "watch",
];

/// The OpenAPI v3 document of one group-version.
fn group_version_doc(group: &str, version: &str) -> Value {
    let mut paths = Map::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let base = format!("/{}", gv_path(group, version));
        let coll = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", r.plural)
        } else {
            format!("{base}/{}", r.plural)
        };
        paths.insert(
            coll.clone(),
            json!({"get": op(r, "list", "list", LIST), "post": op(r, "create", "post", WRITE), "delete": op(r, "deletecollection", "deletecollection", &[])}),
        );
        paths.insert(
            format!("{coll}/{{name}}"),
            json!({"get": op(r, "read", "get", &[]), "put": op(r, "replace", "put", WRITE),
                   "patch": op(r, "patch", "patch", PATCH), "delete": op(r, "delete", "delete", &["dryRun", "gracePeriodSeconds", "propagationPolicy"])}),
        );
        if r.has(Sub::Status) {
            paths.insert(
                format!("{coll}/{{name}}/status"),
                json!({"get": op(r, "readStatus", "get", &[]), "put": op(r, "replaceStatus", "put", WRITE),
                       "patch": op(r, "patchStatus", "patch", PATCH)}),
            );
        }
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "skiff", "version": VERSION},
        "paths": paths,
        "components": {"schemas": {}},
    })
}

fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

/// Serves /openapi/v2, /openapi/v3 and /openapi/v3/<group-version>.
pub fn serve(rest: &[&str], path: &str) -> ApiResult<Response> {
    match rest {
        ["v2"] => {
            let mut resp = (StatusCode::OK, Vec::<u8>::new()).into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
                ),
            );
            Ok(resp)
        }
        ["v3"] => {
            let paths: Map<String, Value> = group_versions()
                .into_iter()
                .map(|(g, v)| {
                    let p = gv_path(g, v);
                    (
                        p.clone(),
                        json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={VERSION}")}),
                    )
                })
                .collect();
            Ok(json_response(StatusCode::OK, &json!({"paths": paths}), &[]))
        }
        ["v3", "api", v] => Ok(json_response(
            StatusCode::OK,
            &group_version_doc("", v),
            &[],
        )),
        ["v3", "apis", g, v] if group_versions().iter().any(|(a, b)| a == g && b == v) => {
            Ok(json_response(StatusCode::OK, &group_version_doc(g, v), &[]))
        }
        _ => Err(ApiError::not_found_path(path)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_patch_operation_accepting_field_validation() {
        let doc = group_version_doc("apps", "v1");
        let paths = doc["paths"].as_object().expect("paths");
        for kind in ["Deployment", "ReplicaSet", "DaemonSet"] {
            let found = paths.values().filter_map(|p| p.get("patch")).any(|op| {
                op["x-kubernetes-group-version-kind"]["kind"] == kind
                    && op["parameters"]
                        .as_array()
                        .is_some_and(|ps| ps.iter().any(|p| p["name"] == "fieldValidation"))
            });
            assert!(found, "{kind}");
        }
    }
}
