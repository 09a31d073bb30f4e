//! The node's kubelet-style endpoint (`--kubelet-port`, 10250 by default): container logs and
//! exec, for the controlplane only. Callers prove who they are with a client certificate
//! signed by the cluster CA (only the controlplane holds the CA key); a request without one gets
//! 401. The serving certificate is self-signed, kept in the data dir, and its SHA-256 is
//! published on the Node (`CERT_ANNOTATION`) so the controlplane can pin it.
//!
//! Exec speaks Kubernetes' WebSocket stream protocols `v5.channel.k8s.io` and
//! `v4.channel.k8s.io`: every binary message starts with a channel byte (0 stdin, 1 stdout,
//! 2 stderr, 3 status, 4 resize; in v5, 255 closes the channel named by the next byte).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path as UrlPath, Query, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::query_parameters::{LogsOptions, ResizeExecOptions};
use futures::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::pods::docker::{Managed, Runtime};

/// Node annotation holding the hex SHA-256 of the serving certificate (DER).
pub const CERT_ANNOTATION: &str = "skiff.io/kubelet-cert-sha256";
/// Largest message a client may send on an exec stream (stdin chunks, resize events).
const MAX_MESSAGE: usize = 1 << 20;
/// A TLS handshake that takes longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("cannot read or write {path}: {source}; check that the data directory is writable")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot generate the kubelet serving certificate: {0}")]
    Cert(#[from] rcgen::Error),
    #[error(
        "the kubelet certificate in {0} is unreadable; remove kubelet.crt and kubelet.key to make new ones"
    )]
    BadCert(PathBuf),
    #[error("the CA file {0} holds no usable certificate for client authentication: {1}")]
    ClientCa(PathBuf, String),
    #[error("TLS setup of the kubelet endpoint failed: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot listen on port {port}: {source}; is another agent or kubelet using it?")]
    Listen { port: u16, source: std::io::Error },
}

/// The serving certificate and its fingerprint.
pub struct ServingCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub sha256: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex SHA-256 of the first certificate in `pem`.
pub fn fingerprint(pem: &str) -> Option<String> {
    let der = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()?
        .ok()?;
    Some(hex(ring::digest::digest(
        &ring::digest::SHA256,
        der.as_ref(),
    )
    .as_ref()))
}

/// Loads `dir/kubelet.{crt,key}`, creating a self-signed pair for `names` on first start. It is
/// kept across restarts so the fingerprint on the Node stays valid while the agent restarts.
pub fn load_or_create_cert(dir: &Path, names: &[String]) -> Result<ServingCert, KubeletError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| KubeletError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let (crt, key) = (dir.join("kubelet.crt"), dir.join("kubelet.key"));
    if let (Ok(cert_pem), Ok(key_pem)) =
        (std::fs::read_to_string(&crt), std::fs::read_to_string(&key))
    {
        let sha256 = fingerprint(&cert_pem).ok_or_else(|| KubeletError::BadCert(crt.clone()))?;
        return Ok(ServingCert {
            cert_pem,
            key_pem,
            sha256,
        });
    }
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "skiff-agent");
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    for n in names {
        params.subject_alt_names.push(match n.parse() {
            Ok(ip) => rcgen::SanType::IpAddress(ip),
            Err(_) => rcgen::SanType::DnsName(n.clone().try_into()?),
        });
    }
    let pair = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&pair)?;
    let (cert_pem, key_pem) = (cert.pem(), pair.serialize_pem());
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&key)
            .map_err(io(&key))?;
        f.write_all(key_pem.as_bytes()).map_err(io(&key))?;
    }
    std::fs::write(&crt, &cert_pem).map_err(io(&crt))?;
    let sha256 = fingerprint(&cert_pem).ok_or_else(|| KubeletError::BadCert(crt.clone()))?;
    Ok(ServingCert {
        cert_pem,
        key_pem,
        sha256,
    })
}

/// TLS for the endpoint: our certificate; client certificates verified against the cluster CA
/// when presented (a request without one is answered 401, not a handshake failure).
pub fn tls_config(
    cert: &ServingCert,
    ca_file: &Path,
) -> Result<Arc<rustls::ServerConfig>, KubeletError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ca_pem = std::fs::read_to_string(ca_file).map_err(|source| KubeletError::Io {
        path: ca_file.to_owned(),
        source,
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()).flatten() {
        roots
            .add(c)
            .map_err(|e| KubeletError::ClientCa(ca_file.to_owned(), e.to_string()))?;
    }
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| KubeletError::ClientCa(ca_file.to_owned(), e.to_string()))?;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| KubeletError::Tls(rustls::Error::General(e.to_string())))?;
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())
        .map_err(|e| KubeletError::Tls(rustls::Error::General(e.to_string())))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    // Upgraded streams (exec) need HTTP/1.1.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Whether the connection presented a client certificate the CA signed.
#[derive(Clone, Copy)]
struct Caller {
    authenticated: bool,
}

fn status(code: StatusCode, reason: &str, message: impl Into<String>) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message.into(), "reason": reason, "code": code.as_u16()});
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn bad_request(message: impl Into<String>) -> Response {
    status(StatusCode::BAD_REQUEST, "BadRequest", message)
}

async fn authenticate(req: Request, next: Next) -> Response {
    match req.extensions().get::<Caller>() {
        Some(c) if c.authenticated => next.run(req).await,
        _ => status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized"),
    }
}

pub fn router(runtime: Runtime) -> Router {
    Router::new()
        .route("/containerLogs/{ns}/{pod}/{uid}/{container}", get(logs))
        .route("/exec/{ns}/{pod}/{uid}/{container}", get(exec).post(exec))
        .route(
            "/attach/{ns}/{pod}/{uid}/{container}",
            get(attach).post(attach),
        )
        .route("/healthz", get(|| async { "ok" }))
        .layer(middleware::from_fn(authenticate))
        .with_state(runtime)
}

/// Serves the endpoint on `listener` until `stop` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    runtime: Runtime,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let app = router(runtime);
    loop {
        let (tcp, _) = tokio::select! {
            () = async { let _ = stop.wait_for(|s| *s).await; } => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("kubelet endpoint: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    tracing::debug!("kubelet endpoint: TLS handshake failed: {e}");
                    return;
                }
                Err(_) => return,
            };
            let authenticated = tls
                .get_ref()
                .1
                .peer_certificates()
                .is_some_and(|c| !c.is_empty());
            let svc = hyper_util::service::TowerToHyperService::new(
                app.layer(axum::Extension(Caller { authenticated })),
            );
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tls), svc)
                .await
            {
                tracing::debug!("kubelet endpoint: connection ended: {e}");
            }
        });
    }
}

/// The attempts of one container of a pod, newest first.
async fn attempts(rt: &Runtime, uid: &str, container: &str) -> Result<Vec<Managed>, Box<Response>> {
    let mut found = rt.attempts(uid, container).await.map_err(|e| {
        Box::new(status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            e.to_string(),
        ))
    })?;
    found.sort_by_key(|c| std::cmp::Reverse(c.created));
    Ok(found)
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct LogQuery {
    #[serde(default)]
    follow: bool,
    #[serde(default)]
    previous: bool,
    #[serde(default)]
    timestamps: bool,
    tail_lines: Option<i64>,
    since_seconds: Option<i64>,
    since_time: Option<String>,
    limit_bytes: Option<u64>,
}

/// What to ask Docker for, from a pod log query.
fn logs_options(q: &LogQuery, now: i64) -> LogsOptions {
    let since = match (q.since_seconds, q.since_time.as_deref()) {
        (Some(s), _) if s > 0 => now.saturating_sub(s),
        (_, Some(t)) => t
            .parse::<jiff::Timestamp>()
            .map(|t| t.as_second())
            .unwrap_or(0),
        _ => 0,
    };
    LogsOptions {
        follow: q.follow,
        stdout: true,
        stderr: true,
        since: i32::try_from(since.max(0)).unwrap_or(0),
        until: 0,
        timestamps: q.timestamps,
        tail: match q.tail_lines {
            Some(n) if n >= 0 => n.to_string(),
            _ => "all".to_owned(),
        },
    }
}

async fn logs(
    State(rt): State<Runtime>,
    UrlPath((_ns, pod, uid, container)): UrlPath<(String, String, String, String)>,
    q: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return bad_request(
            "invalid log options: check follow, previous, tailLines, sinceSeconds, timestamps and limitBytes",
        );
    };
    let found = match attempts(&rt, &uid, &container).await {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let target = if q.previous {
        match found.get(1) {
            Some(c) => c,
            None => {
                return bad_request(format!(
                    "previous terminated container \"{container}\" in pod \"{pod}\" not found"
                ));
            }
        }
    } else {
        match found.first() {
            Some(c) => c,
            None => {
                return bad_request(format!(
                    "container \"{container}\" in pod \"{pod}\" is waiting to start: ContainerCreating"
                ));
            }
        }
    };
    let opts = logs_options(&q, jiff::Timestamp::now().as_second());
    let mut left = q.limit_bytes.filter(|l| *l > 0).unwrap_or(u64::MAX);
    let stream = rt
        .docker()
        .logs(&target.id, Some(opts))
        .map(|chunk| chunk.map(LogOutput::into_bytes))
        // limitBytes: stop once that much was sent (the last chunk cut to fit).
        .scan((), move |(), chunk| {
            let out = match chunk {
                Ok(_) if left == 0 => None,
                Ok(mut b) => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(b.len());
                    left -= n as u64;
                    b.truncate(n);
                    Some(Ok(b))
                }
                Err(e) => Some(Err(std::io::Error::other(e.to_string()))),
            };
            futures::future::ready(out)
        });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain")],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn attach() -> Response {
    bad_request("kubectl attach is not supported by skiff; use kubectl logs -f or kubectl exec")
}

/// An exec request's options (`command` repeats).
#[derive(Debug, Default, PartialEq)]
struct ExecOptions {
    command: Vec<String>,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

fn exec_options(query: &str) -> Result<ExecOptions, String> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query).map_err(|e| format!("malformed query string: {e}"))?;
    let mut o = ExecOptions::default();
    let flag = |v: &str| matches!(v, "true" | "1");
    for (k, v) in pairs {
        match k.as_str() {
            "command" => o.command.push(v),
            "stdin" | "input" => o.stdin = flag(&v),
            "stdout" | "output" => o.stdout = flag(&v),
            "stderr" | "error" => o.stderr = flag(&v),
            "tty" => o.tty = flag(&v),
            _ => {}
        }
    }
    if o.command.is_empty() {
        return Err("you must specify at least one command for the container".into());
    }
    if !(o.stdin || o.stdout || o.stderr) {
        return Err("you must specify at least one of stdin, stdout, stderr".into());
    }
    // A terminal has one output stream.
    if o.tty {
        o.stderr = false;
    }
    Ok(o)
}

/// The status-channel message for an exit code, as the kubelet writes it.
fn exit_status(code: i64) -> Value {
    if code == 0 {
        json!({"metadata": {}, "status": "Success"})
    } else {
        json!({"metadata": {}, "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit status {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}})
    }
}

async fn exec(
    State(rt): State<Runtime>,
    UrlPath((_ns, pod, uid, container)): UrlPath<(String, String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if upgrade.to_ascii_lowercase().starts_with("spdy") {
        return bad_request(
            "skiff streams exec over WebSocket only, and this client asked for SPDY: use kubectl 1.30 or newer",
        );
    }
    let opts = match exec_options(query.as_deref().unwrap_or("")) {
        Ok(o) => o,
        Err(e) => return bad_request(e),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            return bad_request(format!(
                "exec needs a WebSocket upgrade (subprotocol v5.channel.k8s.io or v4.channel.k8s.io): {e}"
            ));
        }
    };
    let ws = ws.protocols(PROTOCOLS).max_message_size(MAX_MESSAGE);
    if ws.selected_protocol().is_none() {
        return bad_request(
            "none of the offered WebSocket subprotocols is supported; use v5.channel.k8s.io or v4.channel.k8s.io (kubectl 1.30 or newer)",
        );
    }
    let found = match attempts(&rt, &uid, &container).await {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let Some(target) = found.first().filter(|c| c.running) else {
        return bad_request(format!(
            "container \"{container}\" in pod \"{pod}\" is not running"
        ));
    };
    let id = target.id.clone();
    ws.on_upgrade(move |socket| async move {
        if let Err(e) = run_exec(socket, rt.docker().clone(), &id, opts).await {
            tracing::debug!(container = id, "exec: {e}");
        }
    })
}

/// Pumps one exec: stdin and resize events from the client into Docker on a task of its own
/// (so a blocked stdin never stalls output), output back, then the exit status. The client
/// going away ends it: dropping the Docker streams closes the command's stdin and output.
async fn run_exec(
    socket: WebSocket,
    docker: Docker,
    id: &str,
    opts: ExecOptions,
) -> Result<(), bollard::errors::Error> {
    let (mut sink, mut from_client) = socket.split();
    let created = docker
        .create_exec(
            id,
            CreateExecOptions {
                cmd: Some(opts.command.clone()),
                attach_stdin: Some(opts.stdin),
                attach_stdout: Some(opts.stdout),
                attach_stderr: Some(opts.stderr),
                tty: Some(opts.tty),
                ..Default::default()
            },
        )
        .await;
    let started = match created {
        Ok(c) => docker
            .start_exec(
                &c.id,
                Some(StartExecOptions {
                    tty: opts.tty,
                    ..Default::default()
                }),
            )
            .await
            .map(|s| (c.id, s)),
        Err(e) => Err(e),
    };
    let (exec_id, output, input) = match started {
        Ok((exec_id, StartExecResults::Attached { output, input })) => (exec_id, output, input),
        Ok((_, StartExecResults::Detached)) => return Ok(()),
        Err(e) => {
            let msg = json!({"metadata": {}, "status": "Failure", "reason": "InternalError",
                "message": format!("cannot run the command in the container: {e}")});
            let _ = send(&mut sink, 3, msg.to_string().as_bytes()).await;
            let _ = sink.send(normal_close()).await;
            return Err(e);
        }
    };
    let resize_docker = docker.clone();
    let resize_id = exec_id.clone();
    let stdin = opts.stdin;
    let mut client = tokio::spawn(async move {
        let mut input = stdin.then_some(input);
        while let Some(Ok(msg)) = from_client.next().await {
            let data = match msg {
                Message::Binary(b) => b,
                Message::Close(_) => break,
                _ => continue,
            };
            match (data.first(), data.get(1..)) {
                (Some(0), Some(rest)) => {
                    if let Some(i) = input.as_mut()
                        && i.write_all(rest).await.is_err()
                    {
                        input = None;
                    }
                }
                (Some(4), Some(rest)) => {
                    if let Some((w, h)) = terminal_size(rest) {
                        let _ = resize_docker
                            .resize_exec(&resize_id, ResizeExecOptions { h, w })
                            .await;
                    }
                }
                // v5: the client closed its stdin.
                (Some(255), Some([0, ..])) => {
                    if let Some(mut i) = input.take() {
                        let _ = i.shutdown().await;
                    }
                }
                _ => {}
            }
        }
    });
    let mut output = output;
    let mut client_gone = false;
    loop {
        tokio::select! {
            chunk = output.next() => match chunk {
                Some(Ok(LogOutput::StdErr { message })) => {
                    if send(&mut sink, 2, &message).await.is_err() { client_gone = true; break; }
                }
                Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message })) => {
                    if send(&mut sink, 1, &message).await.is_err() { client_gone = true; break; }
                }
                Some(Ok(LogOutput::StdIn { .. })) => {}
                Some(Err(_)) | None => break,
            },
            _ = &mut client => { client_gone = true; break; }
        }
    }
    drop(output);
    client.abort();
    if client_gone {
        return Ok(());
    }
    // The exit code can lag the end of the output by a moment.
    let mut code = None;
    for _ in 0..40 {
        let info = docker.inspect_exec(&exec_id).await?;
        if info.running != Some(true) {
            code = info.exit_code;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let msg = match code {
        Some(c) => exit_status(c),
        None => json!({"metadata": {}, "status": "Failure", "reason": "InternalError",
            "message": "the command's output ended but Docker reports no exit code"}),
    };
    let _ = send(&mut sink, 3, msg.to_string().as_bytes()).await;
    let _ = sink.send(normal_close()).await;
    Ok(())
}

/// Clients read a close without a status code as an error: end with 1000 (normal closure).
fn normal_close() -> Message {
    Message::Close(Some(axum::extract::ws::CloseFrame {
        code: axum::extract::ws::close_code::NORMAL,
        reason: "".into(),
    }))
}

async fn send(
    sink: &mut futures::stream::SplitSink<WebSocket, Message>,
    channel: u8,
    data: &[u8],
) -> Result<(), axum::Error> {
    let mut frame = Vec::with_capacity(data.len() + 1);
    frame.push(channel);
    frame.extend_from_slice(data);
    sink.send(Message::Binary(frame.into())).await
}

/// A resize event: `{"Width": 80, "Height": 24}`.
fn terminal_size(data: &[u8]) -> Option<(i32, i32)> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Size {
        width: u16,
        height: u16,
    }
    let s: Size = serde_json::from_slice(data).ok()?;
    Some((i32::from(s.width), i32::from(s.height)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn exec_options_follow_the_kubelet() {
        let o =
            exec_options("command=sh&command=-c&command=exit%203&stdin=true&stdout=true&tty=true")
                .unwrap();
        assert_eq!(o.command, ["sh", "-c", "exit 3"]);
        assert!(o.stdin && o.stdout && o.tty && !o.stderr);
        assert!(exec_options("stdout=true").is_err());
        assert!(exec_options("command=ls").is_err());
    }

    #[test]
    fn exit_codes_become_status_messages_kubectl_understands() {
        assert_eq!(exit_status(0)["status"], "Success");
        let s = exit_status(3);
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0]["message"], "3");
    }

    #[test]
    fn log_queries_map_to_docker_options() {
        let q = LogQuery {
            tail_lines: Some(2),
            since_seconds: Some(10),
            ..Default::default()
        };
        let o = logs_options(&q, 1000);
        assert_eq!((o.tail.as_str(), o.since), ("2", 990));
        let o = logs_options(&LogQuery::default(), 1000);
        assert_eq!((o.tail.as_str(), o.since, o.follow), ("all", 0, false));
    }

    #[test]
    fn resize_events_parse_and_garbage_is_ignored() {
        assert_eq!(
            terminal_size(br#"{"Width":80,"Height":24}"#),
            Some((80, 24))
        );
        assert_eq!(terminal_size(b"\xff\x00"), None);
        assert_eq!(terminal_size(br#"{"Width":-1,"Height":24}"#), None);
    }

    #[test]
    fn the_serving_certificate_is_kept_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_cert(dir.path(), &["10.0.0.1".into(), "node1".into()]).unwrap();
        let b = load_or_create_cert(dir.path(), &[]).unwrap();
        assert_eq!(a.sha256, b.sha256);
        assert_eq!(a.sha256.len(), 64);
    }
}
