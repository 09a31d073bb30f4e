//! Containers of pods on Docker (bollard). Every container carries labels naming its node, pod
//! and role, so a restarted agent finds and adopts what it made, and cleanup never touches
//! containers it did not create.

use std::collections::HashMap;

use bollard::Docker;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, HostConfig, Mount, MountType,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, ListContainersOptions, RemoveContainerOptions,
    StopContainerOptions,
};
use futures::{StreamExt, TryStreamExt};

pub const LABEL_NODE: &str = "skiff.io/node";
pub const LABEL_POD_UID: &str = "skiff.io/pod-uid";
pub const LABEL_POD_NAMESPACE: &str = "skiff.io/pod-namespace";
pub const LABEL_POD_NAME: &str = "skiff.io/pod-name";
pub const LABEL_CONTAINER: &str = "skiff.io/container";
pub const LABEL_RESTARTS: &str = "skiff.io/restart-count";
/// How the previous attempt of a container ended (its `terminated` state as JSON): the old
/// container is removed on restart, and `lastState` must outlive it and an agent restart.
pub const LABEL_LAST_STATE: &str = "skiff.io/last-state";
/// The `skiff.io/container` value of a pod's sandbox.
pub const SANDBOX: &str = "POD_SANDBOX";
pub const PAUSE_IMAGE: &str = "skiff.local/pause:latest";

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error(
        "cannot reach the Docker daemon: {0}; is dockerd running (cargo xtask setup starts it)?"
    )]
    Connect(bollard::errors::Error),
    #[error("docker {op} failed: {source}")]
    Op {
        op: String,
        source: bollard::errors::Error,
    },
    #[error("image {0} is not present and the pod's imagePullPolicy is Never")]
    ImageMissing(String),
    #[error("exec in {0}: the command's output ended but Docker reports no exit code")]
    ExecNoExitCode(String),
}

/// Output kept from a command run in a container (the kubelet keeps 10 KiB of a probe's).
pub const EXEC_OUTPUT_MAX: usize = 10 * 1024;

/// A finished command run in a container.
#[derive(Debug)]
pub struct Exec {
    pub exit_code: i64,
    pub output: String,
}

fn op(op: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> DockerError {
    let op = op.into();
    move |source| DockerError::Op { op, source }
}

/// A container of ours, as listed.
#[derive(Clone, Debug)]
pub struct Managed {
    pub id: String,
    pub labels: HashMap<String, String>,
    pub created: i64,
    /// From the listing, so a healthy sandbox costs no inspect per sync.
    pub running: bool,
}

impl Managed {
    pub fn label(&self, k: &str) -> &str {
        self.labels.get(k).map(String::as_str).unwrap_or("")
    }
}

#[derive(Clone)]
pub struct Runtime {
    docker: Docker,
    node: String,
}

/// What to run for one container of a pod.
pub struct Spec {
    pub name: String,
    pub image: String,
    pub pull_policy: String,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub nano_cpus: Option<i64>,
    pub memory: Option<i64>,
    pub restarts: u32,
    /// The previous attempt's end, for `LABEL_LAST_STATE`.
    pub last_state: Option<String>,
    /// Bind mounts, `host:container[:options]`.
    pub binds: Vec<String>,
    /// The pod's volumes this container mounts.
    pub mounts: Vec<super::volumes::Bind>,
}

impl Runtime {
    pub async fn connect(node: &str) -> Result<Self, DockerError> {
        let docker = Docker::connect_with_local_defaults().map_err(DockerError::Connect)?;
        // Speak the daemon's API version (Debian's docker.io is older than bollard's default).
        let docker = docker
            .negotiate_version()
            .await
            .map_err(DockerError::Connect)?;
        Ok(Self {
            docker,
            node: node.to_owned(),
        })
    }

    /// Every container this node's agent created.
    pub async fn list(&self) -> Result<Vec<Managed>, DockerError> {
        let filters = HashMap::from([(
            "label".to_owned(),
            vec![format!("{LABEL_NODE}={}", self.node)],
        )]);
        let list = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(op("list containers"))?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let running = matches!(
                    c.state,
                    Some(bollard::models::ContainerSummaryStateEnum::RUNNING)
                );
                Some(Managed {
                    id: c.id?,
                    labels: c.labels.unwrap_or_default(),
                    created: c.created.unwrap_or(0),
                    running,
                })
            })
            .collect())
    }

    /// The Docker client, for streams the agent's kubelet endpoint serves (logs, exec).
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// Every attempt (current and kept previous ones) of container `name` of pod `uid`.
    pub async fn attempts(&self, uid: &str, name: &str) -> Result<Vec<Managed>, DockerError> {
        Ok(self
            .list()
            .await?
            .into_iter()
            .filter(|c| c.label(LABEL_POD_UID) == uid && c.label(LABEL_CONTAINER) == name)
            .collect())
    }

    /// PID of the container's first process (0 when it is not running).
    pub async fn pid(&self, id: &str) -> Result<u32, DockerError> {
        let info = self.inspect(id).await?;
        Ok(info
            .state
            .and_then(|s| s.pid)
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or(0))
    }

    pub async fn inspect(&self, id: &str) -> Result<ContainerInspectResponse, DockerError> {
        self.docker
            .inspect_container(id, None)
            .await
            .map_err(op(format!("inspect {id}")))
    }

    /// Makes `image` available according to the pull policy. Local images (no registry is
    /// reachable here) are used when a pull fails but the image is present.
    pub async fn ensure_image(&self, image: &str, policy: &str) -> Result<(), DockerError> {
        let present = self.docker.inspect_image(image).await.is_ok();
        match policy {
            "Never" if !present => Err(DockerError::ImageMissing(image.to_owned())),
            "Never" => Ok(()),
            "IfNotPresent" if present => Ok(()),
            _ => {
                let opts = CreateImageOptions {
                    from_image: Some(image.to_owned()),
                    ..Default::default()
                };
                let pulled = self
                    .docker
                    .create_image(Some(opts), None, None)
                    .try_collect::<Vec<_>>()
                    .await;
                match pulled {
                    Ok(_) => Ok(()),
                    Err(e) if present => {
                        tracing::debug!(image, "pull failed ({e}); using the local image");
                        Ok(())
                    }
                    Err(e) => Err(op(format!("pull {image}"))(e)),
                }
            }
        }
    }

    fn labels(&self, pod: &PodRef, container: &str, restarts: u32) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_NODE.to_owned(), self.node.clone()),
            (LABEL_POD_UID.to_owned(), pod.uid.clone()),
            (LABEL_POD_NAMESPACE.to_owned(), pod.namespace.clone()),
            (LABEL_POD_NAME.to_owned(), pod.name.clone()),
            (LABEL_CONTAINER.to_owned(), container.to_owned()),
            (LABEL_RESTARTS.to_owned(), restarts.to_string()),
        ])
    }

    /// Creates and starts the sandbox: a pause container with no network of Docker's, whose
    /// network namespace the pod network is wired into and every app container joins.
    pub async fn start_sandbox(&self, pod: &PodRef) -> Result<String, DockerError> {
        self.ensure_image(PAUSE_IMAGE, "IfNotPresent").await?;
        let body = ContainerCreateBody {
            image: Some(PAUSE_IMAGE.to_owned()),
            hostname: Some(pod.name.chars().take(63).collect()),
            labels: Some(self.labels(pod, SANDBOX, 0)),
            // Docker has no network part in a pod: with networking disabled it skips the
            // libnetwork prestart hook, a re-exec of dockerd per start that was about half
            // of the CPU of starting a sandbox. runc still brings up the namespace's loopback.
            network_disabled: Some(true),
            // App containers join its network and IPC namespaces.
            host_config: Some(HostConfig {
                network_mode: Some("none".into()),
                ipc_mode: Some("shareable".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.create_and_start(
            &format!(
                "skiff_{}_{}_{}_sandbox",
                pod.namespace,
                pod.name,
                short(&pod.uid)
            ),
            body,
        )
        .await
    }

    /// Creates and starts an app container inside the sandbox's namespaces.
    pub async fn start_container(
        &self,
        pod: &PodRef,
        sandbox: &str,
        spec: &Spec,
    ) -> Result<String, DockerError> {
        self.ensure_image(&spec.image, &spec.pull_policy).await?;
        let ns = format!("container:{sandbox}");
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            entrypoint: spec.entrypoint.clone(),
            cmd: spec.cmd.clone(),
            env: Some(spec.env.clone()),
            working_dir: spec.working_dir.clone(),
            labels: Some({
                let mut l = self.labels(pod, &spec.name, spec.restarts);
                if let Some(last) = &spec.last_state {
                    l.insert(LABEL_LAST_STATE.to_owned(), last.clone());
                }
                l
            }),
            host_config: Some(HostConfig {
                network_mode: Some(ns.clone()),
                ipc_mode: Some(ns),
                nano_cpus: spec.nano_cpus,
                memory: spec.memory,
                binds: Some(spec.binds.clone()),
                mounts: Some(
                    spec.mounts
                        .iter()
                        .map(|m| Mount {
                            target: Some(m.target.clone()),
                            source: Some(m.source.display().to_string()),
                            typ: Some(MountType::BIND),
                            read_only: Some(m.read_only),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        };
        let name = format!(
            "skiff_{}_{}_{}_{}_{}",
            pod.namespace,
            pod.name,
            short(&pod.uid),
            spec.name,
            spec.restarts
        );
        self.create_and_start(&name, body).await
    }

    async fn create_and_start(
        &self,
        name: &str,
        body: ContainerCreateBody,
    ) -> Result<String, DockerError> {
        let opts = CreateContainerOptions {
            name: Some(name.to_owned()),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(Some(opts), body)
            .await
            .map_err(op(format!("create {name}")))?;
        if let Err(e) = self.docker.start_container(&created.id, None).await {
            // A container that never ran is not an attempt to restart later: drop it.
            let _ = self.remove(&created.id).await;
            return Err(op(format!("start {name}"))(e));
        }
        Ok(created.id)
    }

    /// Stops (SIGTERM, then SIGKILL after `grace` seconds) and removes a container.
    pub async fn stop_and_remove(&self, id: &str, grace: i64) -> Result<(), DockerError> {
        // Already stopped or gone is fine: removal below is what matters.
        let _ = self.stop(id, grace).await;
        self.remove(id).await
    }

    pub async fn remove(&self, id: &str) -> Result<(), DockerError> {
        match self
            .docker
            .remove_container(
                id,
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                }),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(op(format!("remove {id}"))(e)),
        }
    }

    /// Stops a container (SIGTERM, then SIGKILL after `grace` seconds) and keeps it, so the
    /// sync sees it exited and restarts it under the pod's restartPolicy and back-off.
    pub async fn stop(&self, id: &str, grace: i64) -> Result<(), DockerError> {
        let t = i32::try_from(grace.clamp(0, 3600)).unwrap_or(30);
        match self
            .docker
            .stop_container(
                id,
                Some(StopContainerOptions {
                    t: Some(t),
                    ..Default::default()
                }),
            )
            .await
        {
            // 304: already stopped.
            Ok(())
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(op(format!("stop {id}"))(e)),
        }
    }

    /// Runs `cmd` in a running container and waits for it: its exit code and (at most
    /// `EXEC_OUTPUT_MAX` bytes of) its combined output. The caller bounds the wait.
    pub async fn exec(&self, id: &str, cmd: &[String]) -> Result<Exec, DockerError> {
        let created = self
            .docker
            .create_exec(
                id,
                CreateExecOptions {
                    cmd: Some(cmd.to_vec()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(op(format!("exec in {id}")))?;
        let mut output = Vec::new();
        if let StartExecResults::Attached {
            output: mut out, ..
        } = self
            .docker
            .start_exec(&created.id, None::<StartExecOptions>)
            .await
            .map_err(op(format!("exec in {id}")))?
        {
            // The stream ends when the command exits.
            while let Some(chunk) = out.next().await {
                let chunk = chunk.map_err(op(format!("exec in {id}")))?;
                let room = EXEC_OUTPUT_MAX.saturating_sub(output.len());
                output.extend(chunk.into_bytes().iter().take(room));
            }
        }
        // The exit code can lag the end of the output by a moment.
        for _ in 0..20 {
            let info = self
                .docker
                .inspect_exec(&created.id)
                .await
                .map_err(op(format!("inspect exec in {id}")))?;
            if info.running != Some(true)
                && let Some(code) = info.exit_code
            {
                return Ok(Exec {
                    exit_code: code,
                    output: String::from_utf8_lossy(&output).into_owned(),
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        Err(DockerError::ExecNoExitCode(id.to_owned()))
    }

    pub async fn start_existing(&self, id: &str) -> Result<(), DockerError> {
        self.docker
            .start_container(id, None)
            .await
            .map_err(op(format!("start {id}")))
    }
}

/// The identity of a pod, as carried in labels.
#[derive(Clone, Debug)]
pub struct PodRef {
    pub uid: String,
    pub namespace: String,
    pub name: String,
}

fn short(uid: &str) -> &str {
    uid.get(..8).unwrap_or(uid)
}
