//! The Node object and its heartbeat: register (or re-adopt) the Node, report capacity,
//! addresses and node info, renew the Lease in kube-node-lease every 10 s (what the
//! controlplane's node lifecycle controller watches), and refresh the Ready condition.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::network::Uplink;

/// Lease renewal period, as the kubelet's default.
pub const LEASE_RENEW: Duration = Duration::from_secs(10);
/// How often the Ready condition's heartbeat time is refreshed even when nothing changed.
const STATUS_REFRESH: Duration = Duration::from_secs(60);
const LEASE_NAMESPACE: &str = "kube-node-lease";
const MANAGER: &str = "skiff-agent";

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("the API refused node {node}: {source}")]
    Api { node: String, source: kube::Error },
}

/// What the agent reports about its machine.
#[derive(Clone, Debug)]
pub struct Facts {
    pub name: String,
    pub uplink: Uplink,
    pub cpus: usize,
    pub memory_kib: u64,
    pub kernel: String,
    pub os_image: String,
    /// Port of the kubelet endpoint (logs, exec) and the SHA-256 of its certificate.
    pub kubelet_port: u16,
    pub kubelet_cert_sha256: String,
}

impl Facts {
    pub fn gather(
        name: &str,
        uplink: Uplink,
        kubelet_port: u16,
        kubelet_cert_sha256: &str,
    ) -> Self {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
        let os_image = os_release
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_owned())
            .unwrap_or_else(|| "Linux".into());
        Self {
            name: name.to_owned(),
            uplink,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_kib,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            os_image,
            kubelet_port,
            kubelet_cert_sha256: kubelet_cert_sha256.to_owned(),
        }
    }
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn now_micro() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S.%6fZ")
        .to_string()
}

/// The status the agent owns; `ready` false carries `why`.
fn status(f: &Facts, ready: bool, why: &str) -> Value {
    let capacity =
        json!({"cpu": f.cpus.to_string(), "memory": format!("{}Ki", f.memory_kib), "pods": "110"});
    let t = now();
    let cond = |ty: &str, status: &str, reason: &str, message: &str| json!({"type": ty, "status": status, "reason": reason, "message": message, "lastHeartbeatTime": t, "lastTransitionTime": t});
    json!({
        "capacity": capacity,
        "allocatable": capacity,
        "addresses": [
            {"type": "InternalIP", "address": f.uplink.address.to_string()},
            {"type": "Hostname", "address": f.name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": f.kubelet_port}},
        "nodeInfo": {
            "kernelVersion": f.kernel,
            "osImage": f.os_image,
            "operatingSystem": "linux",
            "architecture": if cfg!(target_arch = "x86_64") { "amd64" } else { std::env::consts::ARCH },
            "kubeletVersion": format!("v1.33.0-skiff.{}", env!("CARGO_PKG_VERSION")),
            "kubeProxyVersion": "",
            "containerRuntimeVersion": "docker://",
            "machineID": "", "systemUUID": "", "bootID": "",
        },
        "conditions": [
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            if ready {
                cond("Ready", "True", "KubeletReady", "skiff-agent is posting ready status")
            } else {
                cond("Ready", "False", "KubeletNotReady", why)
            },
        ],
    })
}

pub struct NodeAgent {
    client: kube::Client,
    facts: Facts,
}

impl NodeAgent {
    pub fn new(client: kube::Client, facts: Facts) -> Self {
        Self { client, facts }
    }

    fn err(&self) -> impl Fn(kube::Error) -> NodeError + '_ {
        move |source| NodeError::Api {
            node: self.facts.name.clone(),
            source,
        }
    }

    /// Creates the Node if it does not exist (a restarted agent adopts its Node) and reports status.
    pub async fn register(&self) -> Result<(), NodeError> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let name = &self.facts.name;
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": if cfg!(target_arch = "x86_64") { "amd64" } else { std::env::consts::ARCH },
            }},
        }))
        .unwrap_or_default();
        match nodes.create(&PostParams::default(), &node).await {
            Ok(_) => tracing::info!(node = name, "registered node"),
            Err(kube::Error::Api(e)) if e.code == 409 => {
                tracing::info!(node = name, "node already registered; adopting it")
            }
            Err(e) => return Err(self.err()(e)),
        }
        // The controlplane pins the kubelet endpoint's certificate by this fingerprint.
        let meta = json!({"metadata": {"annotations": {
            crate::kubelet::CERT_ANNOTATION: self.facts.kubelet_cert_sha256,
        }}});
        nodes
            .patch(name, &PatchParams::default(), &Patch::Merge(&meta))
            .await
            .map_err(self.err())?;
        self.post_status(true, "").await
    }

    pub async fn post_status(&self, ready: bool, why: &str) -> Result<(), NodeError> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let patch = json!({"status": status(&self.facts, ready, why)});
        nodes
            .patch_status(
                &self.facts.name,
                &PatchParams::apply(MANAGER),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(self.err())?;
        Ok(())
    }

    /// Renews (creating if needed) the node's Lease.
    pub async fn renew_lease(&self) -> Result<(), NodeError> {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), LEASE_NAMESPACE);
        let name = &self.facts.name;
        let spec =
            json!({"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now_micro()});
        match leases
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": spec})),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => {
                let lease: Lease = serde_json::from_value(json!({
                    "metadata": {"name": name, "namespace": LEASE_NAMESPACE},
                    "spec": spec,
                }))
                .unwrap_or_default();
                leases
                    .create(&PostParams::default(), &lease)
                    .await
                    .map_err(self.err())?;
                Ok(())
            }
            Err(e) => Err(self.err()(e)),
        }
    }

    /// Heartbeats until `stop` resolves; failures are logged and retried on the next tick.
    pub async fn heartbeat(&self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut lease = tokio::time::interval(LEASE_RENEW);
        let mut status = tokio::time::interval(STATUS_REFRESH);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = lease.tick() => if let Err(e) = self.renew_lease().await {
                    tracing::warn!("lease renewal failed: {e}");
                },
                _ = status.tick() => if let Err(e) = self.post_status(true, "").await {
                    tracing::warn!("node status update failed: {e}");
                },
            }
        }
    }
}
