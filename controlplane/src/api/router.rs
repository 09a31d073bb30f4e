//! HTTP surface: authentication, path parsing, content negotiation, and dispatch of each verb
//! to the generic handler.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use serde_json::{Value, json};

use super::Api;
use super::cache::CachedObject;
use super::errors::{ApiError, ApiResult};
use super::handler::{DeleteOptions, FieldValidation, decode_object, scale_of, target};
use super::patch::{self, PatchType};
use super::selector::{FieldSelector, LabelSelector};
use super::{discovery, openapi, watch};
use crate::resources::{self, Resource, Sub};

/// Bodies above this are refused with 413, as kube-apiserver does.
pub const MAX_BODY: usize = 3 * 1024 * 1024;

pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .fallback(dispatch)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&api),
            authenticate,
        ))
        .layer(DefaultBodyLimit::disable())
        .with_state(api)
}

const PUBLIC: &[&str] = &["/healthz", "/livez", "/readyz", "/version"];

async fn authenticate(State(api): State<Arc<Api>>, req: Request, next: Next) -> Response {
    if PUBLIC.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim);
    match token {
        Some(t) if api.tokens.contains(t) => next.run(req).await,
        _ => ApiError::unauthorized().into_response(),
    }
}

/// Query parameters, last value wins.
#[derive(Clone)]
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(q: Option<&str>) -> ApiResult<Self> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(q.unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("malformed query string: {e}")))?;
        Ok(Self(pairs))
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }

    pub fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1"))
    }
}

/// What the client wants back.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Json,
    Table,
    /// PartialObjectMetadata(List): metadata only, for metadata informers.
    Metadata,
}

fn negotiate(headers: &HeaderMap) -> ApiResult<Output> {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .unwrap_or("");
    if accept.is_empty() {
        return Ok(Output::Json);
    }
    // Preference order as sent; protobuf is skipped (JSON only here).
    for part in accept.split(',') {
        let p = part.trim();
        if p.contains("as=Table") {
            return Ok(Output::Table);
        }
        if p.contains("as=PartialObjectMetadata") {
            return Ok(Output::Metadata);
        }
        if p.contains("as=") {
            continue;
        }
        if p.starts_with("application/json")
            || p.starts_with("*/*")
            || p.starts_with("application/*")
            || p.contains("yaml")
        {
            return Ok(Output::Json);
        }
    }
    Err(ApiError::not_acceptable(accept))
}

pub fn json_response(code: StatusCode, v: &Value, warnings: &[String]) -> Response {
    let mut resp = (code, serde_json::to_vec(v).unwrap_or_default()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('"', "\\\""));
        if let Ok(h) = HeaderValue::from_str(&text) {
            resp.headers_mut().append(header::WARNING, h);
        }
    }
    resp
}

async fn dispatch(State(api): State<Arc<Api>>, req: Request) -> Response {
    match route(&api, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn read_body(body: Body) -> ApiResult<Bytes> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::too_large())
        }
        Err(e) => Err(ApiError::bad_request(format!(
            "failed to read the request body: {e}"
        ))),
    }
}

/// A request aimed at a resource.
pub struct ResourceRequest {
    pub res: &'static Resource,
    pub ns: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
}

fn segments(path: &str) -> Vec<&str> {
    path.split('/').filter(|s| !s.is_empty()).collect()
}

fn parse_resource_path(group: &str, version: &str, rest: &[&str]) -> ApiResult<ResourceRequest> {
    let missing = || ApiError::not_found_path(&format!("{group}/{version}/{}", rest.join("/")));
    // /namespaces/{ns}/{plural}[/{name}[/{sub}]] for namespaced kinds; the namespace object
    // itself and its subresources are /namespaces/{name}[/{sub}].
    let (ns, rest) = match rest {
        ["namespaces", ns, plural, tail @ ..] if !matches!(*plural, "status" | "finalize") => {
            (Some((*ns).to_owned()), [&[*plural][..], tail].concat())
        }
        _ => (None, rest.to_vec()),
    };
    let plural = rest.first().ok_or_else(missing)?;
    let res = resources::find(group, version, plural).ok_or_else(missing)?;
    if ns.is_some() && !res.namespaced {
        return Err(missing());
    }
    if rest.len() > 3 {
        return Err(missing());
    }
    Ok(ResourceRequest {
        res,
        ns,
        name: rest.get(1).map(|s| (*s).to_owned()),
        sub: rest.get(2).map(|s| (*s).to_owned()),
    })
}

async fn route(api: &Arc<Api>, req: Request) -> ApiResult<Response> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let segs = segments(&path);
    let query = Query::parse(parts.uri.query())?;
    match segs.as_slice() {
        ["healthz" | "livez" | "readyz"] => return Ok((StatusCode::OK, "ok").into_response()),
        ["version"] => return Ok(json_response(StatusCode::OK, &discovery::version(), &[])),
        ["api"] => {
            return Ok(json_response(
                StatusCode::OK,
                &discovery::api_versions(&api.advertise),
                &[],
            ));
        }
        ["apis"] => return Ok(json_response(StatusCode::OK, &discovery::group_list(), &[])),
        ["api", "v1"] => {
            return Ok(json_response(
                StatusCode::OK,
                &discovery::resource_list("", "v1"),
                &[],
            ));
        }
        ["apis", g] => {
            return discovery::group(g)
                .map(|v| json_response(StatusCode::OK, &v, &[]))
                .ok_or_else(|| ApiError::not_found_path(&path));
        }
        ["apis", g, v]
            if resources::RESOURCES
                .iter()
                .any(|r| r.group == *g && r.version == *v) =>
        {
            return Ok(json_response(
                StatusCode::OK,
                &discovery::resource_list(g, v),
                &[],
            ));
        }
        ["openapi", ..] => return openapi::serve(&segs[1..], &path),
        _ => {}
    }
    let rr = match segs.as_slice() {
        ["api", "v1", rest @ ..] if !rest.is_empty() => parse_resource_path("", "v1", rest)?,
        ["apis", g, v, rest @ ..] if !rest.is_empty() => parse_resource_path(g, v, rest)?,
        _ => return Err(ApiError::not_found_path(&path)),
    };
    // Streams served by the pod's node: nothing of the generic path applies.
    if rr.res.group.is_empty()
        && rr.res.plural == "pods"
        && let (Some(ns), Some(name), Some(sub)) = (&rr.ns, &rr.name, rr.sub.as_deref())
    {
        let stream = match sub {
            "log" => Some(super::kubelet::Stream::Log),
            "exec" => Some(super::kubelet::Stream::Exec),
            "attach" => Some(super::kubelet::Stream::Attach),
            _ => None,
        };
        if let Some(stream) = stream {
            let allowed = match stream {
                super::kubelet::Stream::Log => parts.method == Method::GET,
                _ => matches!(parts.method, Method::GET | Method::POST),
            };
            if !allowed {
                return Err(ApiError::method_not_allowed(parts.method.as_str()));
            }
            return super::kubelet::proxy(api, ns, name, stream, parts).await;
        }
    }
    let output = negotiate(&parts.headers)?;
    let body = read_body(body).await?;
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|c| c.to_str().ok())
        .unwrap_or("application/json")
        .to_owned();
    let ns = rr.ns.as_deref();
    let res = rr.res;
    if res.namespaced && rr.name.is_some() && ns.is_none() {
        return Err(ApiError::not_found_path(&path));
    }
    let sub = match rr.sub.as_deref() {
        None => None,
        Some("status") if res.has(Sub::Status) => Some(Sub::Status),
        Some("scale") if res.has(Sub::Scale) => Some(Sub::Scale),
        Some("binding") if res.has(Sub::Binding) => Some(Sub::Binding),
        Some(_) => return Err(ApiError::not_found_path(&path)),
    };
    let dry_run = query.get("dryRun").is_some();
    match (&parts.method, rr.name.as_deref()) {
        (&Method::GET, None) => {
            if query.flag("watch") {
                watch::serve(api, res, ns, &query, output).await
            } else {
                list(api, res, ns, &query, output).await
            }
        }
        (&Method::GET, Some(name)) => {
            let obj = api.get_object(res, ns, name).await?;
            match (sub, output) {
                (Some(Sub::Scale), _) => {
                    Ok(json_response(StatusCode::OK, &scale_of(res, &obj), &[]))
                }
                (_, Output::Table) => {
                    let (raw, rev) = (
                        Bytes::from(serde_json::to_vec(&obj).map_err(ApiError::internal)?),
                        0,
                    );
                    let cached = CachedObject::parse(res, String::new(), raw, rev)
                        .ok_or_else(|| ApiError::internal("bad object"))?;
                    Ok(json_response(
                        StatusCode::OK,
                        &table(res, &[Arc::new(cached)], &query, None, None),
                        &[],
                    ))
                }
                (_, Output::Metadata) => Ok(json_response(StatusCode::OK, &partial(&obj), &[])),
                _ => Ok(json_response(StatusCode::OK, &obj, &[])),
            }
        }
        (&Method::POST, None) => {
            let validation = FieldValidation::parse(query.get("fieldValidation"))?;
            let obj = parse_object_body(&content_type, &body)?;
            let (obj, warnings) = decode_object(res, obj, validation)?;
            let created = api.create_object(res, ns, obj, dry_run).await?;
            Ok(json_response(StatusCode::CREATED, &created, &warnings))
        }
        (&Method::POST, Some(name)) if sub == Some(Sub::Binding) => {
            let binding = parse_object_body(&content_type, &body)?;
            bind(api, res, ns, name, &binding, dry_run).await
        }
        (&Method::PUT, Some(name)) => {
            put(
                api,
                res,
                ns,
                name,
                sub,
                &query,
                &content_type,
                &body,
                dry_run,
            )
            .await
        }
        (&Method::PATCH, Some(name)) => {
            patch_object(
                api,
                res,
                ns,
                name,
                sub,
                &query,
                &content_type,
                &body,
                dry_run,
            )
            .await
        }
        (&Method::DELETE, Some(name)) if sub.is_none() => {
            let opts_body: Value = if body.is_empty() {
                json!({})
            } else {
                serde_json::from_slice(&body)
                    .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
            };
            let opts =
                DeleteOptions::from_request(&opts_body, &|k| query.get(k).map(str::to_owned))?;
            let deleted = api.delete_object(res, ns, name, &opts).await?;
            let gone = deleted.pointer("/metadata/deletionTimestamp").is_none();
            Ok(json_response(
                if gone {
                    StatusCode::OK
                } else {
                    StatusCode::ACCEPTED
                },
                &deleted,
                &[],
            ))
        }
        (&Method::DELETE, None) => delete_collection(api, res, ns, &query, &body).await,
        (m, _) => Err(ApiError::method_not_allowed(m.as_str())),
    }
}

fn parse_object_body(content_type: &str, body: &[u8]) -> ApiResult<Value> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "the request body is empty; send a JSON or YAML object",
        ));
    }
    let base = content_type.split(';').next().unwrap_or("").trim();
    let v: Value = match base {
        "application/json" | "" | "*/*" => serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!("the request body is not valid JSON: {e}"))
        })?,
        "application/yaml" => serde_yaml::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!("the request body is not valid YAML: {e}"))
        })?,
        // kubectl >= 1.32 sends typed create requests as Kubernetes protobuf.
        "application/vnd.kubernetes.protobuf" => super::protobuf::decode(body).map_err(|e| {
            ApiError::bad_request(format!(
                "the request body is not valid Kubernetes protobuf: {e}"
            ))
        })?,
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    Ok(v)
}

#[allow(clippy::too_many_arguments)]
async fn put(
    api: &Arc<Api>,
    res: &'static Resource,
    ns: Option<&str>,
    name: &str,
    sub: Option<Sub>,
    query: &Query,
    content_type: &str,
    body: &[u8],
    dry_run: bool,
) -> ApiResult<Response> {
    let validation = FieldValidation::parse(query.get("fieldValidation"))?;
    let obj = parse_object_body(content_type, body)?;
    if sub == Some(Sub::Scale) {
        let replicas = scale_replicas(&obj)?;
        let want_rv = obj
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let updated = api
            .update_object(res, ns, name, None, dry_run, |mut cur| {
                if let Some(rv) = &want_rv {
                    crate::resources::set_path(
                        &mut cur,
                        &["metadata", "resourceVersion"],
                        json!(rv),
                    );
                }
                crate::resources::set_path(&mut cur, &["spec", "replicas"], json!(replicas));
                Ok(cur)
            })
            .await?;
        return Ok(json_response(StatusCode::OK, &scale_of(res, &updated), &[]));
    }
    let (obj, warnings) = decode_object(res, obj, validation)?;
    let result = api
        .update_object(res, ns, name, sub, dry_run, |_| Ok(obj.clone()))
        .await;
    match result {
        Err(e) if e.code == StatusCode::NOT_FOUND && res.create_on_update && sub.is_none() => {
            let created = api.create_object(res, ns, obj, dry_run).await?;
            Ok(json_response(StatusCode::CREATED, &created, &warnings))
        }
        other => Ok(json_response(StatusCode::OK, &other?, &warnings)),
    }
}

fn scale_replicas(scale: &Value) -> ApiResult<i64> {
    match scale.pointer("/spec/replicas") {
        None | Some(Value::Null) => Ok(0),
        Some(v) => match v.as_i64() {
            Some(n) if (0..=i64::from(i32::MAX)).contains(&n) => Ok(n),
            _ => Err(ApiError::invalid(
                crate::api::errors::Target {
                    group: "autoscaling",
                    plural: "scale",
                    kind: "Scale",
                    name: "",
                },
                &[crate::api::errors::FieldError::invalid(
                    "spec.replicas",
                    v,
                    "must be greater than or equal to 0",
                )],
            )),
        },
    }
}

#[allow(clippy::too_many_arguments)]
async fn patch_object(
    api: &Arc<Api>,
    res: &'static Resource,
    ns: Option<&str>,
    name: &str,
    sub: Option<Sub>,
    query: &Query,
    content_type: &str,
    body: &[u8],
    dry_run: bool,
) -> ApiResult<Response> {
    let ty = PatchType::from_content_type(content_type)?;
    let validation = FieldValidation::parse(query.get("fieldValidation"))?;
    let patch_body = patch::parse_body(ty, body)?;
    if ty == PatchType::Apply && query.get("fieldManager").is_none_or(str::is_empty) {
        return Err(ApiError::bad_request(
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
        ));
    }
    if sub == Some(Sub::Scale) {
        let updated = api
            .update_object(res, ns, name, None, dry_run, |mut cur| {
                let scale = scale_of(res, &cur);
                let patched = patch::apply(ty, &scale, &patch_body, "Scale")?;
                let replicas = scale_replicas(&patched)?;
                crate::resources::set_path(&mut cur, &["spec", "replicas"], json!(replicas));
                Ok(cur)
            })
            .await?;
        return Ok(json_response(StatusCode::OK, &scale_of(res, &updated), &[]));
    }
    let mut warnings = Vec::new();
    let result = api
        .update_object(res, ns, name, sub, dry_run, |cur| {
            let patched = patch::apply(ty, &cur, &patch_body, res.kind)?;
            let (obj, w) = decode_object(res, patched, validation)?;
            warnings = w;
            Ok(obj)
        })
        .await;
    match result {
        // Server-side apply creates what does not exist yet.
        Err(e) if e.code == StatusCode::NOT_FOUND && ty == PatchType::Apply && sub.is_none() => {
            let (obj, w) = decode_object(res, patch_body, validation)?;
            let created = api.create_object(res, ns, obj, dry_run).await?;
            Ok(json_response(StatusCode::CREATED, &created, &w))
        }
        other => Ok(json_response(StatusCode::OK, &other?, &warnings)),
    }
}

async fn bind(
    api: &Arc<Api>,
    res: &'static Resource,
    ns: Option<&str>,
    name: &str,
    binding: &Value,
    dry_run: bool,
) -> ApiResult<Response> {
    let node = binding
        .pointer("/target/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    if node.is_empty() {
        return Err(ApiError::invalid(
            target(res, name),
            &[crate::api::errors::FieldError::required("target.name")],
        ));
    }
    api.update_object(res, ns, name, None, dry_run, |mut cur| {
        let existing = cur
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !existing.is_empty() {
            return Err(ApiError::conflict(
                target(res, name),
                &format!("pod {name} is already assigned to node \"{existing}\""),
            ));
        }
        if cur.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(ApiError::conflict(
                target(res, name),
                "pod is being deleted, cannot be assigned to a host",
            ));
        }
        crate::resources::set_path(&mut cur, &["spec", "nodeName"], json!(node));
        Ok(cur)
    })
    .await?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        &[],
    ))
}

/// Parsed label and field selectors of a list or watch.
pub struct Filter {
    label: LabelSelector,
    field: FieldSelector,
}

impl Filter {
    pub fn from_query(res: &Resource, q: &Query) -> ApiResult<Self> {
        let label = LabelSelector::parse(q.get("labelSelector").unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
        let field = FieldSelector::parse(q.get("fieldSelector").unwrap_or(""))
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        for (f, _, _) in field.requirements() {
            if !res.selectable(f) {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {f}"
                )));
            }
        }
        Ok(Self { label, field })
    }

    pub fn matches(&self, o: &CachedObject) -> bool {
        self.label.matches(&o.labels) && self.field.matches(|f| Some(o.field(f)))
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Continue {
    rv: i64,
    start: String,
}

async fn list(
    api: &Arc<Api>,
    res: &'static Resource,
    ns: Option<&str>,
    q: &Query,
    output: Output,
) -> ApiResult<Response> {
    let filter = Filter::from_query(res, q)?;
    let limit: usize = match q.get("limit") {
        None | Some("") => 0,
        Some(l) => l
            .parse()
            .map_err(|_| ApiError::bad_request(format!("limit: invalid value \"{l}\"")))?,
    };
    let token: Option<Continue> = match q.get("continue").filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => Some(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(c)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .ok_or_else(|| {
                    ApiError::bad_request("continue key is not valid: illegal base64 data")
                })?,
        ),
    };
    let prefix = res.key_prefix(ns);
    let rv_param = q.get("resourceVersion").filter(|v| !v.is_empty());
    let exact = q.get("resourceVersionMatch") == Some("Exact");
    let (items, rev) = match (&token, rv_param) {
        (Some(t), _) if t.rv != api.cache.revision() => {
            list_from_store(api, res, &prefix, Some(&t.start), t.rv).await?
        }
        (Some(t), _) => api.cache.list(&prefix, Some(&t.start)),
        (None, Some(v)) if exact => {
            let rv = v.parse().map_err(|_| {
                ApiError::bad_request(format!("resourceVersion: invalid value \"{v}\""))
            })?;
            list_from_store(api, res, &prefix, None, rv).await?
        }
        (None, Some("0")) => api.cache.list(&prefix, None),
        (None, Some(v)) => {
            let rv = v.parse().map_err(|_| {
                ApiError::bad_request(format!("resourceVersion: invalid value \"{v}\""))
            })?;
            if !api.cache.wait_for(rv).await {
                return Err(ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "Timeout",
                    format!(
                        "Too large resource version: {rv}, current: {}",
                        api.cache.revision()
                    ),
                ));
            }
            api.cache.list(&prefix, None)
        }
        (None, None) => {
            // A plain list is a consistent read: it reflects every write acknowledged so far.
            let now = api
                .store
                .current_revision()
                .await
                .map_err(ApiError::internal)?;
            api.cache.wait_for(now).await;
            api.cache.list(&prefix, None)
        }
    };
    let mut selected: Vec<Arc<CachedObject>> = Vec::new();
    let mut more = None;
    for o in items {
        if !filter.matches(&o) {
            continue;
        }
        if limit > 0 && selected.len() == limit {
            more = selected.last().map(|l| l.key.clone());
            break;
        }
        selected.push(o);
    }
    let cont = more.map(|start| {
        let t = serde_json::to_vec(&Continue { rv: rev, start }).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(t)
    });
    if output == Output::Table {
        return Ok(json_response(
            StatusCode::OK,
            &table(res, &selected, q, Some(rev), cont),
            &[],
        ));
    }
    let mut meta = json!({"resourceVersion": rev.to_string()});
    if let Some(c) = &cont {
        meta["continue"] = json!(c);
    }
    // Items are spliced in as the cache holds them: no object is parsed or re-encoded.
    let (kind, api_version) = match output {
        Output::Metadata => ("PartialObjectMetadataList", "meta.k8s.io/v1".to_owned()),
        _ => (res.list_kind, res.api_version()),
    };
    fn item(o: &CachedObject, output: Output) -> &[u8] {
        match output {
            Output::Metadata => o.partial_json(),
            _ => &o.raw,
        }
    }
    let mut out = Vec::with_capacity(
        selected
            .iter()
            .map(|o| item(o, output).len() + 1)
            .sum::<usize>()
            + 256,
    );
    out.extend_from_slice(
        format!(
            "{{\"kind\":\"{kind}\",\"apiVersion\":\"{api_version}\",\"metadata\":{meta},\"items\":["
        )
        .as_bytes(),
    );
    for (i, o) in selected.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item(o, output));
    }
    out.extend_from_slice(b"]}");
    let mut resp = (StatusCode::OK, out).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// Lists at a past revision straight from the store (continuations of older lists).
async fn list_from_store(
    api: &Arc<Api>,
    res: &'static Resource,
    prefix: &str,
    start_after: Option<&str>,
    rev: i64,
) -> ApiResult<(Vec<Arc<CachedObject>>, i64)> {
    let (kvs, at) = api.store.range(prefix, start_after, Some(rev), 0).await.map_err(|e| match e {
        crate::store::StoreError::Compacted { .. } => ApiError::gone(
            "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
        ),
        other => ApiError::internal(other),
    })?;
    let items = kvs
        .into_iter()
        .filter_map(|kv| {
            CachedObject::parse_stored(res, kv.key, &kv.value, kv.mod_revision).map(Arc::new)
        })
        .collect();
    Ok((items, at))
}

/// The PartialObjectMetadata view of an object.
pub fn partial(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

/// A meta.k8s.io/v1 Table of `items`.
pub fn table(
    res: &Resource,
    items: &[Arc<CachedObject>],
    q: &Query,
    rev: Option<i64>,
    cont: Option<String>,
) -> Value {
    let strategy = res.strategy;
    let mut cols = vec![resources::table::definition(&resources::table::col(
        "Name",
        "Name must be unique within a namespace.",
    ))];
    cols.extend(strategy.columns().iter().map(resources::table::definition));
    if !strategy.own_age() {
        cols.push(resources::table::definition(&resources::table::col(
            "Age",
            "CreationTimestamp",
        )));
    }
    let include = q.get("includeObject").unwrap_or("Metadata");
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let obj = o.value();
            let mut cells = vec![json!(o.name)];
            cells.extend(strategy.cells(&obj));
            if !strategy.own_age() {
                cells.push(resources::table::age(
                    obj.pointer("/metadata/creationTimestamp"),
                ));
            }
            let mut row = json!({"cells": cells});
            match include {
                "None" => {}
                "Object" => row["object"] = obj,
                _ => row["object"] = partial(&obj),
            }
            row
        })
        .collect();
    let mut meta = json!({});
    if let Some(r) = rev {
        meta["resourceVersion"] = json!(r.to_string());
    }
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": cols,
        "rows": rows,
    })
}

async fn delete_collection(
    api: &Arc<Api>,
    res: &'static Resource,
    ns: Option<&str>,
    q: &Query,
    body: &[u8],
) -> ApiResult<Response> {
    let filter = Filter::from_query(res, q)?;
    let opts_body: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
    };
    let opts = DeleteOptions::from_request(&opts_body, &|k| q.get(k).map(str::to_owned))?;
    let (items, _) = api.cache.list(&res.key_prefix(ns), None);
    let mut deleted = Vec::new();
    for o in items.iter().filter(|o| filter.matches(o)) {
        let ns = (!o.namespace.is_empty()).then_some(o.namespace.as_str());
        match api.delete_object(res, ns, &o.name, &opts).await {
            Ok(v) => deleted.push(v),
            Err(e) if e.code == StatusCode::NOT_FOUND => {}
            Err(e) => return Err(e),
        }
    }
    let list = json!({
        "kind": res.list_kind,
        "apiVersion": res.api_version(),
        "metadata": {"resourceVersion": api.cache.revision().to_string()},
        "items": deleted,
    });
    Ok(json_response(StatusCode::OK, &list, &[]))
}
