//! Container probes as the kubelet runs them: startup, liveness and readiness, each an httpGet,
//! tcpSocket or exec check on its own period, turned into a result by consecutive-success and
//! consecutive-failure thresholds.
//!
//! One task per probed container (keyed by Docker id, so a restarted container starts from
//! scratch, as does a restarted agent). The startup probe gates the other two; a failed startup
//! or liveness probe stops the container (SIGTERM, grace, SIGKILL) and leaves the restart to the
//! pod sync, which applies restartPolicy and back-off. A task only writes the shared status and
//! wakes the sync, which reports it: probing never blocks a sync, and a sync never waits for a
//! probe.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::docker::{DockerError, Runtime};

/// The kubelet's User-Agent for HTTP probes, so servers that special-case it keep working.
const USER_AGENT: &str = "kube-probe/1.33";
/// Bytes read looking for an HTTP status line before the response is declared malformed.
const STATUS_LINE_MAX: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Startup => "startup",
            Kind::Liveness => "liveness",
            Kind::Readiness => "readiness",
        })
    }
}

/// A probe that cannot work as written; every attempt fails with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("port {0:?} is neither a number nor the name of one of the container's ports")]
    UnknownPort(String),
    #[error("port {0} is out of range 1-65535")]
    PortRange(i64),
    #[error("no handler: one of exec, httpGet or tcpSocket is required")]
    NoHandler,
    #[error("more than one handler: only one of exec, httpGet, tcpSocket or grpc is allowed")]
    ManyHandlers,
    #[error("{0} is not supported by skiff-agent")]
    Unsupported(String),
    #[error("exec probe without a command")]
    NoCommand,
    #[error("{0} contains a line break or another control character")]
    ControlCharacter(&'static str),
}

/// Why one probe attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("HTTP request to {addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("HTTP request to {addr}: the answer is not an HTTP response")]
    NotHttp { addr: String },
    #[error("HTTP probe failed with statuscode: {0}")]
    Status(u16),
    #[error("command {command:?} exited with {code}: {output}")]
    Exit {
        command: Vec<String>,
        code: i64,
        output: String,
    },
    #[error(transparent)]
    Docker(#[from] DockerError),
}

/// What a probe checks, resolved against its container and pod address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Http {
        host: String,
        port: u16,
        path: String,
        headers: Vec<(String, String)>,
    },
    Tcp {
        host: String,
        port: u16,
    },
    Exec {
        command: Vec<String>,
    },
}

/// One probe with Kubernetes' defaults applied and nonsense clamped (the API server validates,
/// but the agent must not trust that: a zero period would spin).
#[derive(Clone, Debug)]
pub struct Config {
    pub kind: Kind,
    pub action: Result<Action, ConfigError>,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
    /// Grace period when this probe kills the container: the probe's own, else the pod's.
    pub grace: i64,
}

fn positive(v: Option<i32>, default: u32) -> u32 {
    v.and_then(|v| u32::try_from(v).ok())
        .filter(|v| *v > 0)
        .unwrap_or(default)
}

impl Config {
    pub fn new(kind: Kind, p: &Probe, c: &Container, ip: Ipv4Addr, pod_grace: i64) -> Self {
        // Liveness and startup results only ever count one success (API validation requires 1).
        let success_threshold = match kind {
            Kind::Readiness => positive(p.success_threshold, 1),
            Kind::Liveness | Kind::Startup => 1,
        };
        let grace = match kind {
            Kind::Readiness => pod_grace,
            Kind::Liveness | Kind::Startup => p
                .termination_grace_period_seconds
                .filter(|g| *g > 0)
                .unwrap_or(pod_grace),
        };
        Self {
            kind,
            action: action(p, c, ip),
            initial_delay: Duration::from_secs(
                p.initial_delay_seconds
                    .and_then(|d| u64::try_from(d).ok())
                    .unwrap_or(0),
            ),
            period: Duration::from_secs(positive(p.period_seconds, 10).into()),
            timeout: Duration::from_secs(positive(p.timeout_seconds, 1).into()),
            success_threshold,
            failure_threshold: positive(p.failure_threshold, 3),
            grace,
        }
    }
}

/// A probe port: a number, or the name of one of the container's ports (a number written as a
/// string is accepted too, as the kubelet does).
pub fn resolve_port(port: &IntOrString, c: &Container) -> Result<u16, ConfigError> {
    let n = match port {
        IntOrString::Int(n) => i64::from(*n),
        IntOrString::String(name) => {
            let named = c
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| i64::from(p.container_port));
            match named.or_else(|| name.parse().ok()) {
                Some(n) => n,
                None => return Err(ConfigError::UnknownPort(name.clone())),
            }
        }
    };
    u16::try_from(n)
        .ok()
        .filter(|p| *p > 0)
        .ok_or(ConfigError::PortRange(n))
}

fn no_control(s: &str, what: &'static str) -> Result<(), ConfigError> {
    // Path and headers go verbatim into the request: a CR/LF would forge another header.
    if s.chars().any(char::is_control) {
        Err(ConfigError::ControlCharacter(what))
    } else {
        Ok(())
    }
}

fn action(p: &Probe, c: &Container, ip: Ipv4Addr) -> Result<Action, ConfigError> {
    let handlers = [
        p.exec.is_some(),
        p.http_get.is_some(),
        p.tcp_socket.is_some(),
        p.grpc.is_some(),
    ]
    .into_iter()
    .filter(|h| *h)
    .count();
    match handlers {
        0 => return Err(ConfigError::NoHandler),
        1 => {}
        _ => return Err(ConfigError::ManyHandlers),
    }
    let host = |h: &Option<String>| {
        h.clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| ip.to_string())
    };
    if let Some(h) = &p.http_get {
        let scheme = h.scheme.as_deref().unwrap_or("HTTP");
        if !scheme.eq_ignore_ascii_case("HTTP") {
            return Err(ConfigError::Unsupported(format!("httpGet scheme {scheme}")));
        }
        let mut path = h.path.clone().unwrap_or_default();
        if !path.starts_with('/') {
            path.insert(0, '/');
        }
        no_control(&path, "httpGet.path")?;
        let headers: Vec<(String, String)> = h
            .http_headers
            .iter()
            .flatten()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect();
        for (name, value) in &headers {
            no_control(name, "httpGet.httpHeaders name")?;
            no_control(value, "httpGet.httpHeaders value")?;
            if name.is_empty() || name.contains(':') {
                return Err(ConfigError::ControlCharacter("httpGet.httpHeaders name"));
            }
        }
        let host = host(&h.host);
        no_control(&host, "httpGet.host")?;
        return Ok(Action::Http {
            host,
            port: resolve_port(&h.port, c)?,
            path,
            headers,
        });
    }
    if let Some(t) = &p.tcp_socket {
        return Ok(Action::Tcp {
            host: host(&t.host),
            port: resolve_port(&t.port, c)?,
        });
    }
    if let Some(e) = &p.exec {
        let command = e.command.clone().unwrap_or_default();
        if command.is_empty() {
            return Err(ConfigError::NoCommand);
        }
        return Ok(Action::Exec { command });
    }
    Err(ConfigError::Unsupported("grpc".into()))
}

/// Consecutive outcomes turned into a result, as the kubelet's probe worker counts them: the
/// result changes after `success` successes or `failure` failures in a row.
#[derive(Clone, Debug)]
pub struct Threshold {
    success: u32,
    failure: u32,
    oks: u32,
    fails: u32,
    result: Option<bool>,
}

impl Threshold {
    pub fn new(cfg: &Config) -> Self {
        Self {
            success: cfg.success_threshold.max(1),
            failure: cfg.failure_threshold.max(1),
            oks: 0,
            fails: 0,
            // Liveness starts healthy, readiness unready, startup undecided.
            result: match cfg.kind {
                Kind::Liveness => Some(true),
                Kind::Readiness => Some(false),
                Kind::Startup => None,
            },
        }
    }

    /// Records one outcome; returns the new result when it changed.
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        if ok {
            self.oks = self.oks.saturating_add(1);
            self.fails = 0;
        } else {
            self.fails = self.fails.saturating_add(1);
            self.oks = 0;
        }
        let next = if ok {
            (self.oks >= self.success).then_some(true)
        } else {
            (self.fails >= self.failure).then_some(false)
        };
        match next {
            Some(v) if self.result != Some(v) => {
                self.result = Some(v);
                Some(v)
            }
            _ => None,
        }
    }
}

/// The first line of an HTTP response: its status code.
pub fn status_code(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    let code = parts.next()?;
    (code.len() == 3).then(|| code.parse().ok()).flatten()
}

fn host_port(host: &str, port: u16) -> String {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(_)) => format!("[{host}]:{port}"),
        _ => format!("{host}:{port}"),
    }
}

async fn connect(host: &str, port: u16) -> Result<TcpStream, ProbeError> {
    // A bracketed IPv6 host is what users write in URLs; connect wants it bare.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    TcpStream::connect((bare, port))
        .await
        .map_err(|source| ProbeError::Connect {
            addr: host_port(bare, port),
            source,
        })
}

/// One HTTP GET; 200-399 is success. Only the status line is read: the body is not the
/// probe's business, and a server streaming forever must not hold the probe.
pub async fn http_get(
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
) -> Result<(), ProbeError> {
    let mut stream = connect(host, port).await?;
    let addr = host_port(host, port);
    let given = |n: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
    let mut req = format!("GET {path} HTTP/1.1\r\n");
    if !given("host") {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    if !given("user-agent") {
        req.push_str(&format!("User-Agent: {USER_AGENT}\r\n"));
    }
    if !given("accept") {
        req.push_str("Accept: */*\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !given("connection") {
        req.push_str("Connection: close\r\n");
    }
    req.push_str("\r\n");
    let io = |source| ProbeError::Io {
        addr: addr.clone(),
        source,
    };
    stream.write_all(req.as_bytes()).await.map_err(io)?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.contains(&b'\n') && head.len() < STATUS_LINE_MAX {
        let n = stream.read(&mut buf).await.map_err(io)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    match status_code(&head) {
        Some(code) if (200..400).contains(&code) => Ok(()),
        Some(code) => Err(ProbeError::Status(code)),
        None => Err(ProbeError::NotHttp { addr }),
    }
}

/// One attempt of a probe, bounded by its timeout.
async fn attempt(runtime: &Runtime, id: &str, cfg: &Config) -> Result<(), ProbeError> {
    let action = cfg.action.as_ref().map_err(|e| e.clone())?;
    let run = async {
        match action {
            Action::Http {
                host,
                port,
                path,
                headers,
            } => http_get(host, *port, path, headers).await,
            Action::Tcp { host, port } => connect(host, *port).await.map(drop),
            Action::Exec { command } => {
                let done = runtime.exec(id, command).await?;
                if done.exit_code == 0 {
                    Ok(())
                } else {
                    Err(ProbeError::Exit {
                        command: command.clone(),
                        code: done.exit_code,
                        output: done.output.trim().to_owned(),
                    })
                }
            }
        }
    };
    tokio::time::timeout(cfg.timeout, run)
        .await
        .unwrap_or(Err(ProbeError::Timeout(cfg.timeout)))
}

/// What the pod sync reports for a running container.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub started: bool,
    pub ready: bool,
}

struct Entry {
    status: Status,
    /// Stopped by a failed liveness or startup probe.
    killed: bool,
    task: Option<tokio::task::AbortHandle>,
}

struct Inner {
    runtime: Runtime,
    wake: Arc<Notify>,
    containers: Mutex<HashMap<String, Entry>>,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.containers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes a container's entry, and wakes the sync when a reader would see a difference.
    fn update(&self, id: &str, f: impl FnOnce(&mut Entry)) {
        let changed = self.lock().get_mut(id).is_some_and(|e| {
            let before = (e.status, e.killed);
            f(e);
            before != (e.status, e.killed)
        });
        if changed {
            self.wake.notify_one();
        }
    }
}

/// A running container to probe.
pub struct Target<'a> {
    pub pod: &'a Pod,
    pub container: &'a Container,
    pub id: &'a str,
    pub ip: Ipv4Addr,
    /// When Docker started it: initial delays count from here, so an adopted container is not
    /// delayed again.
    pub started_at: Option<jiff::Timestamp>,
}

/// The probe workers of this node's containers.
pub struct Probes {
    inner: Arc<Inner>,
}

fn has_probes(c: &Container) -> bool {
    c.startup_probe.is_some() || c.liveness_probe.is_some() || c.readiness_probe.is_some()
}

impl Probes {
    /// `wake` is notified whenever a probe changes what the pod sync would report.
    pub fn new(runtime: Runtime, wake: Arc<Notify>) -> Self {
        Self {
            inner: Arc::new(Inner {
                runtime,
                wake,
                containers: Mutex::default(),
            }),
        }
    }

    /// Started and ready for a running container, starting its probe worker on first sight.
    pub fn status(&self, t: &Target<'_>) -> Status {
        if !has_probes(t.container) {
            return Status {
                started: true,
                ready: true,
            };
        }
        let mut containers = self.inner.lock();
        if let Some(e) = containers.get(t.id) {
            return e.status;
        }
        let plan = Plan::new(t);
        let status = Status {
            started: plan.startup.is_none(),
            ready: plan.startup.is_none() && plan.readiness.is_none(),
        };
        let task = tokio::spawn(work(Arc::clone(&self.inner), t.id.to_owned(), plan));
        containers.insert(
            t.id.to_owned(),
            Entry {
                status,
                killed: false,
                task: Some(task.abort_handle()),
            },
        );
        status
    }

    /// Whether a probe stopped this container (restarted then even when it exited 0).
    pub fn killed(&self, id: &str) -> bool {
        self.inner.lock().get(id).is_some_and(|e| e.killed)
    }

    /// Stops the workers of containers that are not running, and forgets containers that
    /// no longer exist.
    pub fn retain(&self, present: &HashSet<String>, running: &HashSet<String>) {
        self.inner.lock().retain(|id, e| {
            if !running.contains(id)
                && let Some(t) = e.task.take()
            {
                t.abort();
            }
            present.contains(id)
        });
    }

    /// Stops probing a container now (its pod is being torn down).
    pub fn stop(&self, id: &str) {
        if let Some(e) = self.inner.lock().remove(id)
            && let Some(t) = e.task
        {
            t.abort();
        }
    }
}

/// The probes of one container.
struct Plan {
    who: String,
    started_at: Option<jiff::Timestamp>,
    startup: Option<Config>,
    liveness: Option<Config>,
    readiness: Option<Config>,
}

impl Plan {
    fn new(t: &Target<'_>) -> Self {
        let pod_grace = t
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30);
        let c = t.container;
        let cfg =
            |kind, p: &Option<Probe>| p.as_ref().map(|p| Config::new(kind, p, c, t.ip, pod_grace));
        Self {
            who: format!(
                "{}/{}/{}",
                t.pod.metadata.namespace.as_deref().unwrap_or_default(),
                t.pod.metadata.name.as_deref().unwrap_or_default(),
                c.name
            ),
            started_at: t.started_at,
            startup: cfg(Kind::Startup, &c.startup_probe),
            liveness: cfg(Kind::Liveness, &c.liveness_probe),
            readiness: cfg(Kind::Readiness, &c.readiness_probe),
        }
    }
}

struct Worker {
    inner: Arc<Inner>,
    id: String,
    who: String,
    started_at: Option<jiff::Timestamp>,
}

impl Worker {
    /// Probes every period from the container's start plus the initial delay, calling
    /// `on_change` with each new thresholded result. With `decisive`, the first change ends
    /// it and is returned (startup passes or fails, liveness fails); otherwise it never ends.
    async fn probe(&self, cfg: &Config, decisive: bool, mut on_change: impl FnMut(bool)) -> bool {
        let since = self.started_at.map_or(Duration::ZERO, |t| {
            let ms = jiff::Timestamp::now().as_millisecond() - t.as_millisecond();
            Duration::from_millis(u64::try_from(ms).unwrap_or(0))
        });
        tokio::time::sleep(cfg.initial_delay.saturating_sub(since)).await;
        let mut threshold = Threshold::new(cfg);
        let mut tick = tokio::time::interval(cfg.period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tick.tick().await;
            let outcome = attempt(&self.inner.runtime, &self.id, cfg).await;
            // The first failure of a run is worth a line; its repeats are not.
            match &outcome {
                Err(e) if !failing => {
                    tracing::info!(container = self.who, "{} probe failed: {e}", cfg.kind);
                    failing = true;
                }
                Err(e) => tracing::debug!(container = self.who, "{} probe failed: {e}", cfg.kind),
                Ok(()) if failing => {
                    tracing::info!(container = self.who, "{} probe succeeded", cfg.kind);
                    failing = false;
                }
                Ok(()) => {}
            }
            if let Some(result) = threshold.record(outcome.is_ok()) {
                on_change(result);
                if decisive {
                    return result;
                }
            }
        }
    }

    async fn kill(&self, cfg: &Config) {
        tracing::info!(
            container = self.who,
            "container failed its {} probe {} times in a row and will be restarted",
            cfg.kind,
            cfg.failure_threshold
        );
        self.inner.update(&self.id, |e| {
            e.killed = true;
            e.status.ready = false;
        });
        if let Err(e) = self.inner.runtime.stop(&self.id, cfg.grace).await {
            tracing::warn!(container = self.who, "stopping unhealthy container: {e}");
        }
        // Stopped: the sync can restart it now rather than at its next tick.
        self.inner.wake.notify_one();
    }
}

async fn work(inner: Arc<Inner>, id: String, plan: Plan) {
    let w = Worker {
        inner,
        id,
        who: plan.who,
        started_at: plan.started_at,
    };
    if let Some(cfg) = &plan.startup {
        if !w.probe(cfg, true, |_| {}).await {
            return w.kill(cfg).await;
        }
        let ready = plan.readiness.is_none();
        w.inner.update(&w.id, |e| {
            e.status.started = true;
            e.status.ready = ready;
        });
    }
    let liveness = async {
        match &plan.liveness {
            Some(cfg) => {
                w.probe(cfg, true, |_| {}).await;
                cfg
            }
            None => std::future::pending().await,
        }
    };
    let readiness = async {
        match &plan.readiness {
            Some(cfg) => {
                w.probe(cfg, false, |ok| {
                    w.inner.update(&w.id, |e| e.status.ready = ok && !e.killed)
                })
                .await;
            }
            None => std::future::pending().await,
        }
    };
    if plan.liveness.is_none() && plan.readiness.is_none() {
        return;
    }
    tokio::select! {
        cfg = liveness => w.kill(cfg).await,
        () = readiness => {}
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerPort, ExecAction, GRPCAction, HTTPGetAction, HTTPHeader, TCPSocketAction,
    };

    const IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 7);

    fn container() -> Container {
        Container {
            name: "web".into(),
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    fn tcp(port: IntOrString) -> Probe {
        Probe {
            tcp_socket: Some(TCPSocketAction { host: None, port }),
            ..Default::default()
        }
    }

    fn http(port: IntOrString) -> HTTPGetAction {
        HTTPGetAction {
            port,
            ..Default::default()
        }
    }

    #[test]
    fn defaults_are_kubernetes_and_nonsense_is_clamped() {
        let c = container();
        let cfg = Config::new(Kind::Readiness, &tcp(IntOrString::Int(80)), &c, IP, 30);
        assert_eq!(cfg.period, Duration::from_secs(10));
        assert_eq!(cfg.timeout, Duration::from_secs(1));
        assert_eq!(cfg.initial_delay, Duration::ZERO);
        assert_eq!((cfg.success_threshold, cfg.failure_threshold), (1, 3));
        assert_eq!(cfg.grace, 30);
        assert_eq!(
            cfg.action,
            Ok(Action::Tcp {
                host: IP.to_string(),
                port: 80
            })
        );

        let odd = Probe {
            period_seconds: Some(0),
            timeout_seconds: Some(-4),
            initial_delay_seconds: Some(-1),
            success_threshold: Some(5),
            failure_threshold: Some(0),
            termination_grace_period_seconds: Some(3),
            ..tcp(IntOrString::Int(80))
        };
        let live = Config::new(Kind::Liveness, &odd, &c, IP, 30);
        assert_eq!(live.period, Duration::from_secs(10));
        assert_eq!(live.timeout, Duration::from_secs(1));
        assert_eq!(live.initial_delay, Duration::ZERO);
        assert_eq!(
            (live.success_threshold, live.failure_threshold),
            (1, 3),
            "liveness counts one success whatever the spec says"
        );
        assert_eq!(live.grace, 3, "the probe's own grace period wins");
        let ready = Config::new(Kind::Readiness, &odd, &c, IP, 30);
        assert_eq!(ready.success_threshold, 5);
        assert_eq!(ready.grace, 30, "readiness never kills: the pod's grace");
    }

    #[test]
    fn ports_resolve_by_number_by_name_and_by_numeric_string() {
        let c = container();
        assert_eq!(resolve_port(&IntOrString::Int(9376), &c), Ok(9376));
        assert_eq!(
            resolve_port(&IntOrString::String("http".into()), &c),
            Ok(8080)
        );
        assert_eq!(resolve_port(&IntOrString::String("81".into()), &c), Ok(81));
        assert_eq!(
            resolve_port(&IntOrString::String("nope".into()), &c),
            Err(ConfigError::UnknownPort("nope".into()))
        );
        assert_eq!(
            resolve_port(&IntOrString::Int(0), &c),
            Err(ConfigError::PortRange(0))
        );
        assert_eq!(
            resolve_port(&IntOrString::Int(70000), &c),
            Err(ConfigError::PortRange(70000))
        );
        assert_eq!(
            resolve_port(&IntOrString::String("-1".into()), &c),
            Err(ConfigError::PortRange(-1))
        );
    }

    #[test]
    fn handlers_are_resolved_and_bad_ones_are_config_errors() {
        let c = container();
        let a = |p: Probe| action(&p, &c, IP);
        assert_eq!(a(Probe::default()), Err(ConfigError::NoHandler));
        assert_eq!(
            a(Probe {
                exec: Some(ExecAction {
                    command: Some(vec!["true".into()])
                }),
                ..tcp(IntOrString::Int(1))
            }),
            Err(ConfigError::ManyHandlers)
        );
        assert_eq!(
            a(Probe {
                exec: Some(ExecAction { command: None }),
                ..Default::default()
            }),
            Err(ConfigError::NoCommand)
        );
        assert!(matches!(
            a(Probe {
                grpc: Some(GRPCAction {
                    port: 9000,
                    service: None
                }),
                ..Default::default()
            }),
            Err(ConfigError::Unsupported(_))
        ));
        let get = |h: HTTPGetAction| {
            a(Probe {
                http_get: Some(h),
                ..Default::default()
            })
        };
        assert!(matches!(
            get(HTTPGetAction {
                scheme: Some("HTTPS".into()),
                ..http(IntOrString::Int(443))
            }),
            Err(ConfigError::Unsupported(_))
        ));
        assert_eq!(
            get(HTTPGetAction {
                path: Some("healthz?x=1".into()),
                http_headers: Some(vec![HTTPHeader {
                    name: "X-Probe".into(),
                    value: "yes".into()
                }]),
                ..http(IntOrString::String("http".into()))
            }),
            Ok(Action::Http {
                host: IP.to_string(),
                port: 8080,
                path: "/healthz?x=1".into(),
                headers: vec![("X-Probe".into(), "yes".into())],
            })
        );
        assert_eq!(
            get(HTTPGetAction {
                host: Some("127.0.0.1".into()),
                ..http(IntOrString::Int(80))
            }),
            Ok(Action::Http {
                host: "127.0.0.1".into(),
                port: 80,
                path: "/".into(),
                headers: vec![],
            })
        );
        assert_eq!(
            get(HTTPGetAction {
                http_headers: Some(vec![HTTPHeader {
                    name: "X".into(),
                    value: "a\r\nHost: evil".into()
                }]),
                ..http(IntOrString::Int(80))
            }),
            Err(ConfigError::ControlCharacter("httpGet.httpHeaders value"))
        );
        assert_eq!(
            get(http(IntOrString::String("metrics".into()))),
            Err(ConfigError::UnknownPort("metrics".into()))
        );
    }

    fn cfg(kind: Kind, success: i32, failure: i32) -> Config {
        let p = Probe {
            success_threshold: Some(success),
            failure_threshold: Some(failure),
            ..tcp(IntOrString::Int(80))
        };
        Config::new(kind, &p, &container(), IP, 30)
    }

    #[test]
    fn readiness_starts_unready_and_flips_after_consecutive_runs() {
        let mut t = Threshold::new(&cfg(Kind::Readiness, 2, 3));
        assert_eq!(t.record(false), None, "already unready");
        assert_eq!(t.record(true), None, "one success of two");
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), None, "the run restarted");
        assert_eq!(t.record(true), Some(true));
        assert_eq!(t.record(true), None, "no change, nothing to report");
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), None, "a success breaks the failure run");
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some(false));
    }

    #[test]
    fn liveness_fails_only_after_failure_threshold_in_a_row() {
        let mut t = Threshold::new(&cfg(Kind::Liveness, 1, 2));
        assert_eq!(t.record(true), None, "healthy from the start");
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some(false));
    }

    #[test]
    fn startup_decides_on_first_success_or_after_failure_threshold() {
        let mut t = Threshold::new(&cfg(Kind::Startup, 1, 3));
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), Some(true));
        let mut t = Threshold::new(&cfg(Kind::Startup, 1, 3));
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some(false));
    }

    #[test]
    fn status_lines_are_parsed_and_garbage_is_not() {
        assert_eq!(status_code(b"HTTP/1.1 200 OK\r\nA: b\r\n"), Some(200));
        assert_eq!(status_code(b"HTTP/1.0 404 Not Found\r\n"), Some(404));
        assert_eq!(status_code(b"HTTP/1.1 302\r\n"), Some(302));
        assert_eq!(status_code(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_code(b"HTTP/1.1 20 OK\r\n"), None);
        assert_eq!(status_code(b""), None);
        assert_eq!(status_code(&[0xff, 0xfe, b'\n']), None);
    }

    /// A loopback server answering one request with `reply`; yields the request it got.
    async fn serve_once(reply: &'static str) -> (u16, tokio::task::JoinHandle<String>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
            }
            s.write_all(reply.as_bytes()).await.unwrap();
            String::from_utf8(req).unwrap()
        });
        (port, task)
    }

    #[tokio::test]
    async fn http_get_sends_the_kubelets_request_and_judges_the_status() {
        let (port, req) = serve_once("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
        let headers = vec![("X-Probe".to_owned(), "yes".to_owned())];
        http_get("127.0.0.1", port, "/healthz", &headers)
            .await
            .unwrap();
        let req = req.await.unwrap();
        assert!(req.starts_with("GET /healthz HTTP/1.1\r\n"), "{req}");
        for line in [
            format!("Host: 127.0.0.1:{port}"),
            "User-Agent: kube-probe/1.33".into(),
            "X-Probe: yes".into(),
        ] {
            assert!(req.contains(&format!("{line}\r\n")), "{line} in {req}");
        }

        let (port, req) = serve_once("HTTP/1.1 200 OK\r\n\r\n").await;
        let headers = vec![("Host".to_owned(), "example.test".to_owned())];
        http_get("127.0.0.1", port, "/", &headers).await.unwrap();
        let req = req.await.unwrap();
        assert_eq!(req.matches("Host:").count(), 1, "{req}");
        assert!(req.contains("Host: example.test\r\n"), "{req}");

        let (port, _) = serve_once("HTTP/1.1 302 Found\r\nLocation: /x\r\n\r\n").await;
        http_get("127.0.0.1", port, "/", &[]).await.unwrap();

        let (port, _) = serve_once("HTTP/1.1 500 Internal Server Error\r\n\r\n").await;
        let e = http_get("127.0.0.1", port, "/", &[]).await.unwrap_err();
        assert!(matches!(e, ProbeError::Status(500)), "{e}");
        assert_eq!(e.to_string(), "HTTP probe failed with statuscode: 500");

        let (port, _) = serve_once("hello\n").await;
        let e = http_get("127.0.0.1", port, "/", &[]).await.unwrap_err();
        assert!(matches!(e, ProbeError::NotHttp { .. }), "{e}");
    }

    #[tokio::test]
    async fn tcp_connects_or_fails_with_the_address() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        connect("127.0.0.1", port).await.unwrap();
        drop(l);
        let e = connect("127.0.0.1", port).await.unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("cannot connect to 127.0.0.1:{port}")),
            "{e}"
        );
    }
}
