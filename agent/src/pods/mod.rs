//! Pods of this node on Docker: a sandbox per pod plus its app containers, kept in line with
//! the API by a level-triggered sync (every second and on every change of the node's pods):
//! create what is missing, restart what exited (restartPolicy, Kubernetes back-off), tear down
//! pods being deleted and then release them, remove containers of pods that no longer exist,
//! and report status. Probes run on tasks of their own (`probes`) and wake the sync when what
//! it reports changes.

pub mod docker;
pub mod probes;
pub mod volumes;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::{Value, json};

use crate::network::PodNetwork;
use skiff_common::quantity::{int_quantity, milli_cpu, parse_quantity};

use docker::{
    DockerError, LABEL_CONTAINER, LABEL_LAST_STATE, LABEL_POD_UID, LABEL_RESTARTS, Managed, PodRef,
    Runtime, SANDBOX, Spec,
};

/// Why a pod could not be brought up; logged, and retried on the next sync.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    Network(#[from] crate::network::NetworkError),
}

/// Waiting containers report this until their pod's volumes can be set up.
const VOLUMES_PENDING: &str = "ContainerCreating";

/// A running pod's sandbox, address and the network files its containers mount.
struct PodNet {
    sandbox: String,
    ip: Ipv4Addr,
    resolv: std::path::PathBuf,
    hosts: std::path::PathBuf,
    /// Each container's volume bind mounts.
    mounts: HashMap<String, Vec<volumes::Bind>>,
}

/// Pods worked on at once.
const POD_WORKERS: usize = 16;
const SYNC_EVERY: Duration = Duration::from_secs(1);
/// Kubernetes' container restart back-off: 10 s doubling up to 5 min.
const BACKOFF_START: i64 = 10;
const BACKOFF_MAX: i64 = 300;

pub struct PodManager {
    client: kube::Client,
    runtime: Runtime,
    net: Arc<PodNetwork>,
    node: String,
    host_ip: String,
    /// Pods a task is working on now.
    inflight: std::sync::Mutex<std::collections::HashSet<String>>,
    workers: tokio::sync::Semaphore,
    probes: probes::Probes,
    volumes: volumes::Volumes,
    /// Rung by probes when a container's readiness or health changed, so the sync reports it
    /// now rather than at its next tick.
    wake: Arc<tokio::sync::Notify>,
    /// What the status needs of each running container (its image and start time), from its
    /// first inspection: neither changes while it runs, and a sync, which every watch event
    /// starts, would otherwise inspect every container on the node (what Docker spent on that
    /// held up the starts of new pods). A container that stops is seen in the next sync's
    /// list of containers.
    running: std::sync::Mutex<HashMap<String, Running>>,
}

#[derive(Clone)]
struct Running {
    image_id: String,
    started_at: Option<String>,
}

fn pod_ref(p: &Pod) -> PodRef {
    PodRef {
        uid: p.metadata.uid.clone().unwrap_or_default(),
        namespace: p.metadata.namespace.clone().unwrap_or_default(),
        name: p.metadata.name.clone().unwrap_or_default(),
    }
}

/// Docker's timestamps carry nanoseconds; Kubernetes' have seconds.
fn k8s_time(docker_ts: Option<&str>) -> Option<String> {
    let t: jiff::Timestamp = docker_ts?.parse().ok()?;
    (t.as_second() > 0).then(|| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
}

/// A CPU quantity as Docker nano-CPUs ("500m" -> 5e8, "2" -> 2e9).
fn nano_cpus(q: &str) -> Option<i64> {
    parse_quantity(q).map(|_| milli_cpu(q) * 1_000_000)
}

/// A memory quantity in bytes ("64Mi", "1G", "1000").
fn bytes(q: &str) -> Option<i64> {
    parse_quantity(q).map(|_| int_quantity(q))
}

impl PodManager {
    /// Pods only run once the node's network is up: holding a `PodNetwork` is the gate.
    pub async fn new(
        client: kube::Client,
        node: &str,
        host_ip: &str,
        net: Arc<PodNetwork>,
        data_dir: &std::path::Path,
    ) -> Result<Self, DockerError> {
        let runtime = Runtime::connect(node).await?;
        let wake = Arc::new(tokio::sync::Notify::new());
        Ok(Self {
            volumes: volumes::Volumes::new(client.clone(), data_dir),
            client,
            probes: probes::Probes::new(runtime.clone(), Arc::clone(&wake)),
            wake,
            runtime,
            net,
            inflight: Default::default(),
            workers: tokio::sync::Semaphore::new(POD_WORKERS),
            node: node.to_owned(),
            host_ip: host_ip.to_owned(),
            running: Default::default(),
        })
    }

    /// Runs until `stop` resolves.
    pub async fn run(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let (reader, writer) = reflector::store();
        let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", self.node));
        let changes = reflector(writer, watcher(pods, cfg))
            .default_backoff()
            .touched_objects();
        // The watch is driven on its own task; the sync loop only hears that something changed.
        let changed = Arc::new(tokio::sync::Notify::new());
        let notify = Arc::clone(&changed);
        let driver = tokio::spawn(async move {
            let mut changes = std::pin::pin!(changes);
            while let Some(ev) = changes.next().await {
                if let Err(e) = ev {
                    tracing::warn!("watching pods: {e}");
                }
                notify.notify_one();
            }
        });
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(SYNC_EVERY);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = tick.tick() => {}
                _ = changed.notified() => {}
                _ = self.wake.notified() => {}
            }
            // Until the first list completes there is nothing to sync; an API that cannot be
            // reached must not block shutdown while we wait for it.
            let ready = tokio::select! {
                _ = &mut stop => break,
                r = reader.wait_until_ready() => r,
            };
            if ready.is_err() {
                break;
            }
            if let Err(e) = self.sync(reader.state()).await {
                tracing::warn!("pod sync failed: {e}");
            }
        }
        driver.abort();
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_inflight(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn sync(self: &Arc<Self>, pods: Vec<Arc<Pod>>) -> Result<(), DockerError> {
        let mut by_pod: HashMap<String, Vec<Managed>> = HashMap::new();
        let listed = self.runtime.list().await?;
        let present = listed.iter().map(|c| c.id.clone()).collect();
        let running = listed
            .iter()
            .filter(|c| c.running)
            .map(|c| c.id.clone())
            .collect();
        self.probes.retain(&present, &running);
        self.lock_running().retain(|id, _| running.contains(id));
        for c in listed {
            by_pod
                .entry(c.label(LABEL_POD_UID).to_owned())
                .or_default()
                .push(c);
        }
        // A dump can meet another on the shared netlink socket (EBUSY). Without the list every
        // running pod would look unwired and be wired again, cutting its connections: this
        // round waits for the next one instead.
        let wired = match self.net.wired().await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!("listing pod interfaces (the next sync tries again): {e}");
                return Ok(());
            }
        };
        let known: std::collections::HashSet<String> =
            pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
        let work: Vec<(Arc<Pod>, Vec<Managed>)> = pods
            .iter()
            .map(|p| {
                let uid = p.metadata.uid.as_deref().unwrap_or_default();
                (Arc::clone(p), by_pod.remove(uid).unwrap_or_default())
            })
            .collect();
        // Pods are independent: each is worked on by a task of its own, at most one per pod,
        // so a slow pod (a long grace period, a big pull) never holds up a new one; the
        // semaphore bounds how much Docker is asked at once.
        let wired = Arc::new(wired);
        for (pod, mine) in work {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            if !self.lock_inflight().insert(uid.clone()) {
                continue;
            }
            let me = Arc::clone(self);
            let wired = Arc::clone(&wired);
            tokio::spawn(async move {
                let result = match me.workers.acquire().await {
                    Ok(_permit) if pod.metadata.deletion_timestamp.is_some() => {
                        me.teardown(&pod, &mine).await.map_err(PodError::from)
                    }
                    Ok(_permit) => me.ensure(&pod, mine, &wired).await,
                    Err(_) => Ok(()),
                };
                if let Err(e) = result {
                    tracing::warn!(pod = ?pod.metadata.name, "{e}");
                }
                me.lock_inflight().remove(&uid);
            });
        }
        // Containers and addresses of pods that are gone from the API.
        for (uid, orphans) in by_pod {
            for c in orphans {
                self.runtime.stop_and_remove(&c.id, 2).await?;
            }
            self.net.detach(&uid).await;
            self.volumes.remove(&uid);
        }
        for uid in self.volumes.held() {
            if !known.contains(&uid) {
                self.volumes.remove(&uid);
            }
        }
        for uid in self.net.holders() {
            if !known.contains(&uid) {
                self.net.detach(&uid).await;
            }
        }
        Ok(())
    }

    async fn teardown(&self, pod: &Pod, mine: &[Managed]) -> Result<(), DockerError> {
        let grace = pod.metadata.deletion_grace_period_seconds.unwrap_or(30);
        let (sandboxes, apps): (Vec<&Managed>, Vec<&Managed>) = mine
            .iter()
            .partition(|c| c.label(LABEL_CONTAINER) == SANDBOX);
        // A terminating container is not probed: a liveness kill would race the graceful stop.
        for c in &apps {
            self.probes.stop(&c.id);
        }
        let stops = apps
            .iter()
            .map(|c| self.runtime.stop_and_remove(&c.id, grace));
        for r in futures::future::join_all(stops).await {
            r?;
        }
        for s in sandboxes {
            self.runtime.stop_and_remove(&s.id, 0).await?;
        }
        self.net
            .detach(pod.metadata.uid.as_deref().unwrap_or_default())
            .await;
        // emptyDirs go with the pod.
        self.volumes
            .remove(pod.metadata.uid.as_deref().unwrap_or_default());
        // Everything is stopped: let the API server remove the pod now.
        let pods: Api<Pod> = Api::namespaced(
            self.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        if let Err(e) = pods
            .delete(pod.metadata.name.as_deref().unwrap_or(""), &dp)
            .await
        {
            tracing::debug!("releasing deleted pod: {e}");
        }
        Ok(())
    }

    fn spec(&self, pod: &Pod, c: &Container, restarts: u32, net: &PodNet) -> Spec {
        let field = |path: &str| match path {
            "metadata.name" => pod.metadata.name.clone().unwrap_or_default(),
            "metadata.namespace" => pod.metadata.namespace.clone().unwrap_or_default(),
            "metadata.uid" => pod.metadata.uid.clone().unwrap_or_default(),
            "spec.nodeName" => self.node.clone(),
            "status.hostIP" => self.host_ip.clone(),
            "status.podIP" | "status.podIPs" => net.ip.to_string(),
            _ => String::new(),
        };
        let mut env: Vec<String> = vec![format!(
            "POD_NAME={}",
            pod.metadata.name.clone().unwrap_or_default()
        )];
        for e in c.env.iter().flatten() {
            let value = match (
                &e.value,
                e.value_from.as_ref().and_then(|v| v.field_ref.as_ref()),
            ) {
                (Some(v), _) => v.clone(),
                (None, Some(f)) => field(&f.field_path),
                _ => String::new(),
            };
            env.push(format!("{}={value}", e.name));
        }
        let limits = c
            .resources
            .as_ref()
            .and_then(|r| r.limits.clone())
            .unwrap_or_default();
        Spec {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            pull_policy: c
                .image_pull_policy
                .clone()
                .unwrap_or_else(|| "IfNotPresent".into()),
            entrypoint: c.command.clone(),
            cmd: c.args.clone(),
            env,
            working_dir: c.working_dir.clone(),
            nano_cpus: limits.get("cpu").and_then(|q| nano_cpus(&q.0)),
            memory: limits.get("memory").and_then(|q| bytes(&q.0)),
            restarts,
            last_state: None,
            binds: vec![
                format!("{}:/etc/resolv.conf", net.resolv.display()),
                format!("{}:/etc/hosts", net.hosts.display()),
            ],
            mounts: net.mounts.get(&c.name).cloned().unwrap_or_default(),
        }
    }

    async fn ensure(
        &self,
        pod: &Pod,
        mine: Vec<Managed>,
        wired: &std::collections::HashSet<String>,
    ) -> Result<(), PodError> {
        let pr = pod_ref(pod);
        let Some(spec) = pod.spec.as_ref() else {
            return Ok(());
        };
        let policy = spec.restart_policy.as_deref().unwrap_or("Always");
        // Newest container per name; the attempt before it is kept while it is stopped (for
        // `kubectl logs --previous`), anything older is removed.
        let mut by_name: HashMap<String, Vec<Managed>> = HashMap::new();
        for c in mine {
            by_name
                .entry(c.label(LABEL_CONTAINER).to_owned())
                .or_default()
                .push(c);
        }
        let mut newest: HashMap<String, Managed> = HashMap::new();
        for (name, mut attempts) in by_name {
            attempts.sort_by_key(|c| std::cmp::Reverse(c.created));
            let mut it = attempts.into_iter();
            let Some(first) = it.next() else { continue };
            for (i, old) in it.enumerate() {
                if i > 0 || old.running || name == SANDBOX {
                    self.runtime.remove(&old.id).await?;
                }
            }
            newest.insert(name, first);
        }
        // Volumes come first, as with the kubelet: a pod whose configMap or secret is missing
        // waits (and is retried every sync) with the reason in its container statuses.
        let starting = spec
            .containers
            .iter()
            .any(|c| !newest.contains_key(&c.name));
        let mounts = match self.volumes.prepare(pod, starting).await.and_then(|vols| {
            spec.containers
                .iter()
                .map(|c| Ok((c.name.clone(), volumes::binds(c, &vols)?)))
                .collect::<Result<HashMap<_, _>, volumes::VolumeError>>()
        }) {
            Ok(m) => m,
            Err(e) if starting => {
                self.report_waiting(pod, &e.to_string()).await;
                return Ok(());
            }
            Err(e) => {
                // Running containers keep what they have; the next refresh retries.
                tracing::warn!(pod = ?pod.metadata.name, "{e}");
                HashMap::new()
            }
        };
        let sandbox = match newest.get(SANDBOX) {
            Some(s) if s.running => s.id.clone(),
            Some(_) => {
                // The sandbox died and took the pod's network namespace with it: containers
                // joined to it are cut off, so the pod starts over (as the kubelet does).
                for c in newest.values() {
                    self.runtime.stop_and_remove(&c.id, 0).await?;
                }
                newest.clear();
                self.runtime.start_sandbox(&pr).await?
            }
            None => self.runtime.start_sandbox(&pr).await?,
        };
        // A wired pod already has its address and files: a running pod costs no file I/O.
        let ip = match self.net.address(&pr.uid) {
            Some(ip) if PodNetwork::is_wired(wired, &pr.uid) => ip,
            _ => {
                let pid = self.runtime.pid(&sandbox).await?;
                let ip = self.net.attach(&pr.uid, pid).await?;
                self.net.write_pod_files(pod, ip)?;
                ip
            }
        };
        let (resolv, hosts) = self.net.pod_files(&pr.uid);
        let net = PodNet {
            sandbox: sandbox.clone(),
            ip,
            resolv,
            hosts,
            mounts,
        };
        let mut statuses = Vec::new();
        for c in &spec.containers {
            let status = match newest.get(&c.name) {
                None => match self
                    .runtime
                    .start_container(&pr, &sandbox, &self.spec(pod, c, 0, &net))
                    .await
                {
                    Ok(id) => {
                        // What was just started is reported as it is (running, and ready when
                        // nothing probes it) instead of a placeholder only the next sync of
                        // the pod would correct: a pod is Ready one sync round sooner.
                        let started = Managed {
                            id,
                            labels: HashMap::from([(LABEL_RESTARTS.to_owned(), "0".to_owned())]),
                            created: 0,
                            running: true,
                        };
                        match self.observe(pod, c, &started, policy, &pr, &net).await {
                            Ok(s) => s,
                            Err(_) => {
                                json!({"name": c.name, "image": c.image, "imageID": "", "ready": false, "restartCount": 0, "started": false,
                                    "state": {"waiting": {"reason": "ContainerCreating"}}})
                            }
                        }
                    }
                    Err(e) => {
                        json!({"name": c.name, "image": c.image, "imageID": "", "ready": false, "restartCount": 0, "started": false,
                                     "state": {"waiting": {"reason": if matches!(e, DockerError::ImageMissing(_)) { "ErrImageNeverPull" } else { "CreateContainerError" }, "message": e.to_string()}}})
                    }
                },
                Some(m) => self.observe(pod, c, m, policy, &pr, &net).await?,
            };
            statuses.push(status);
        }
        self.report(pod, statuses, policy, ip).await;
        Ok(())
    }

    /// Status of one container, restarting it when its policy and back-off say so.
    async fn observe(
        &self,
        pod: &Pod,
        c: &Container,
        m: &Managed,
        policy: &str,
        pr: &PodRef,
        net: &PodNet,
    ) -> Result<Value, DockerError> {
        let restarts: u32 = m.label(LABEL_RESTARTS).parse().unwrap_or(0);
        let known = m
            .running
            .then(|| self.lock_running().get(&m.id).cloned())
            .flatten();
        let (state, image_id) = match known {
            Some(r) => (
                bollard::models::ContainerState {
                    running: Some(true),
                    started_at: r.started_at,
                    ..Default::default()
                },
                r.image_id,
            ),
            None => {
                let info = self.runtime.inspect(&m.id).await?;
                let state = info.state.unwrap_or_default();
                let image_id = info.image.unwrap_or_default();
                if state.running == Some(true) {
                    self.lock_running().insert(
                        m.id.clone(),
                        Running {
                            image_id: image_id.clone(),
                            started_at: state.started_at.clone(),
                        },
                    );
                }
                (state, image_id)
            }
        };
        let last_state = serde_json::from_str::<Value>(m.label(LABEL_LAST_STATE)).ok();
        let base = |state: Value, ready: bool, started: bool| {
            let mut s = json!({"name": c.name, "image": c.image, "imageID": image_id, "containerID": format!("docker://{}", m.id),
                   "ready": ready, "started": started, "restartCount": restarts, "state": state});
            if let Some(last) = &last_state {
                s["lastState"] = last.clone();
            }
            s
        };
        if state.running.unwrap_or(false) {
            let probed = self.probes.status(&probes::Target {
                pod,
                container: c,
                id: &m.id,
                ip: net.ip,
                started_at: state
                    .started_at
                    .as_deref()
                    .and_then(|t| t.parse::<jiff::Timestamp>().ok()),
            });
            let started_at = k8s_time(state.started_at.as_deref());
            return Ok(base(
                json!({"running": {"startedAt": started_at}}),
                probed.ready,
                probed.started,
            ));
        }
        let exit = state.exit_code.unwrap_or(0);
        let finished = k8s_time(state.finished_at.as_deref());
        let terminated = json!({"terminated": {"exitCode": exit, "reason": if exit == 0 { "Completed" } else { "Error" },
            "startedAt": k8s_time(state.started_at.as_deref()), "finishedAt": finished}});
        // A container a probe stopped is restarted whatever its exit code (the kubelet's
        // rule), unless the policy is Never.
        let restart = match policy {
            "Always" => true,
            "OnFailure" => exit != 0 || self.probes.killed(&m.id),
            _ => false,
        };
        if !restart {
            return Ok(base(terminated, false, false));
        }
        let backoff = (BACKOFF_START << restarts.min(5)).min(BACKOFF_MAX);
        let since = state
            .finished_at
            .as_deref()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map_or(i64::MAX, |t| {
                jiff::Timestamp::now().as_second() - t.as_second()
            });
        if since < backoff && restarts > 0 {
            let mut s = base(
                json!({"waiting": {"reason": "CrashLoopBackOff",
                "message": format!("back-off {backoff}s restarting failed container={} pod={}", c.name, pr.name)}}),
                false,
                false,
            );
            s["lastState"] = terminated;
            return Ok(s);
        }
        let mut next = self.spec(pod, c, restarts + 1, net);
        next.last_state = Some(terminated.to_string());
        self.runtime
            .start_container(pr, &net.sandbox, &next)
            .await?;
        // The exited attempt stays as the previous one (its logs); the next sync removes the
        // one before it.
        let mut s = base(
            json!({"waiting": {"reason": "ContainerCreating"}}),
            false,
            false,
        );
        s["restartCount"] = json!(restarts + 1);
        s["lastState"] = terminated;
        Ok(s)
    }

    /// Status of a pod that cannot start yet (its volumes): Pending, every container waiting
    /// with `why`.
    async fn report_waiting(&self, pod: &Pod, why: &str) {
        let Some(spec) = pod.spec.as_ref() else {
            return;
        };
        let statuses: Vec<Value> = spec
            .containers
            .iter()
            .map(|c| json!({"name": c.name, "image": c.image, "imageID": "", "ready": false, "restartCount": 0, "started": false,
                "state": {"waiting": {"reason": VOLUMES_PENDING, "message": why}}}))
            .collect();
        let old = serde_json::to_value(pod.status.as_ref()).unwrap_or(Value::Null);
        if old.get("containerStatuses") == Some(&json!(statuses)) {
            return;
        }
        tracing::info!(pod = ?pod.metadata.name, "waiting for volumes: {why}");
        let status = json!({"phase": "Pending", "hostIP": self.host_ip, "hostIPs": [{"ip": self.host_ip}],
            "containerStatuses": statuses});
        let pods: Api<Pod> = Api::namespaced(
            self.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        if let Err(e) = pods
            .patch_status(
                pod.metadata.name.as_deref().unwrap_or(""),
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": status})),
            )
            .await
        {
            tracing::debug!("status update: {e}");
        }
    }

    async fn report(&self, pod: &Pod, statuses: Vec<Value>, policy: &str, ip: Ipv4Addr) {
        let all_running = statuses
            .iter()
            .all(|s| s.pointer("/state/running").is_some());
        let all_done = statuses
            .iter()
            .all(|s| s.pointer("/state/terminated").is_some());
        let any_failed = statuses.iter().any(|s| {
            s.pointer("/state/terminated/exitCode")
                .and_then(Value::as_i64)
                .is_some_and(|c| c != 0)
        });
        let phase = if all_running {
            "Running"
        } else if all_done && policy != "Always" {
            if any_failed { "Failed" } else { "Succeeded" }
        } else if statuses.iter().any(|s| {
            s.pointer("/state/running").is_some()
                || s.get("restartCount").and_then(Value::as_i64).unwrap_or(0) > 0
        }) {
            "Running"
        } else {
            "Pending"
        };
        // Ready follows the containers' readiness (their probes, or running when they have none).
        let unready: Vec<&str> = statuses
            .iter()
            .filter(|s| s.get("ready").and_then(Value::as_bool) != Some(true))
            .filter_map(|s| s.get("name").and_then(Value::as_str))
            .collect();
        let ready = unready.is_empty();
        let old = pod.status.as_ref();
        let t = jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let old_cond = |ty: &str| {
            old.and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == ty))
                .map(|c| {
                    (
                        c.status.clone(),
                        c.last_transition_time
                            .as_ref()
                            .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
                    )
                })
        };
        let cond = |ty: &str, ok: bool| {
            let status = if ok { "True" } else { "False" };
            let since = match old_cond(ty) {
                Some((s, Some(when))) if s == status => when,
                _ => t.clone(),
            };
            let mut c = json!({"type": ty, "status": status, "lastProbeTime": null, "lastTransitionTime": since});
            if !ok && matches!(ty, "Ready" | "ContainersReady") {
                c["reason"] = json!("ContainersNotReady");
                c["message"] = json!(format!(
                    "containers with unready status: [{}]",
                    unready.join(" ")
                ));
            }
            c
        };
        let status = json!({
            "phase": phase,
            "hostIP": self.host_ip,
            "hostIPs": [{"ip": self.host_ip}],
            "podIP": ip.to_string(),
            "podIPs": [{"ip": ip.to_string()}],
            "startTime": old.and_then(|s| s.start_time.as_ref()).map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()).unwrap_or_else(|| t.clone()),
            "conditions": [cond("Initialized", true), cond("Ready", ready), cond("ContainersReady", ready), cond("PodScheduled", true)],
            "containerStatuses": statuses,
        });
        // Only write when something a reader would see changed.
        let current = serde_json::to_value(old).unwrap_or(Value::Null);
        let changed = ["phase", "hostIP", "podIP", "containerStatuses"]
            .iter()
            .any(|k| current.get(*k) != status.get(*k))
            || current.get("conditions").map(|c| c.to_string())
                != status.get("conditions").map(|c| c.to_string());
        if !changed {
            return;
        }
        let pods: Api<Pod> = Api::namespaced(
            self.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let name = pod.metadata.name.as_deref().unwrap_or("");
        if let Err(e) = pods
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": status})),
            )
            .await
        {
            tracing::debug!(pod = name, "status update: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_become_docker_limits() {
        assert_eq!(nano_cpus("500m"), Some(500_000_000));
        assert_eq!(nano_cpus("2"), Some(2_000_000_000));
        assert_eq!(bytes("64Mi"), Some(64 << 20));
        assert_eq!(bytes("1G"), Some(1_000_000_000));
        assert_eq!(bytes("1000"), Some(1000));
    }

    #[test]
    fn docker_timestamps_are_truncated_to_seconds_and_zero_is_none() {
        assert_eq!(
            k8s_time(Some("2026-11-23T15:50:01.123456789Z")).as_deref(),
            Some("2026-11-23T15:50:01Z")
        );
        assert_eq!(k8s_time(Some("0001-01-01T00:00:00Z")), None);
    }
}
