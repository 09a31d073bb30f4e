//! `cargo xtask bench <which>`: measurements with JSON + SVG output under target/bench/.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};

use crate::{cargo, root, sh};

#[derive(clap::Subcommand, Clone)]
pub enum Which {
    /// API server: create throughput, list latency, watch fan-out, memory.
    Api {
        /// Number of pods to create.
        #[arg(long, default_value_t = 10_000)]
        pods: usize,
        /// Number of concurrent watchers for the fan-out test.
        #[arg(long, default_value_t = 100)]
        watchers: usize,
    },
    /// Pod network: iperf3 pod to pod on one node, across nodes (VXLAN) and node to node on a
    /// local two-node cluster, in one run; pod startup latency on one node.
    Overlay {
        /// Pods started at once for the startup latency.
        #[arg(long, default_value_t = 50)]
        pods: usize,
        /// Seconds per iperf3 run.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// Service proxy: full sync time, one change to live, connection latency and single-stream
    /// throughput through a ClusterIP against the pod IP, at each service count (10 endpoints
    /// each), for each mode side by side in one run (one node per mode, same cluster).
    Proxy {
        /// Proxy modes to compare, comma separated.
        #[arg(
            long,
            value_enum,
            default_value = "iptables,ebpf",
            value_delimiter = ','
        )]
        mode: Vec<crate::cluster::ProxyMode>,
        /// iptables flavour the agent drives (auto, legacy, nft).
        #[arg(long, default_value = "auto")]
        iptables_backend: String,
        /// Service counts to measure, comma separated.
        #[arg(long, default_value = "100,1000,10000,30000", value_delimiter = ',')]
        services: Vec<usize>,
        /// Seconds per iperf3 run (0: no throughput runs).
        #[arg(long, default_value_t = 4)]
        seconds: u64,
        /// Changes timed per service count.
        #[arg(long, default_value_t = 100)]
        changes: usize,
        /// Requests per target for connection latency.
        #[arg(long, default_value_t = 3000)]
        requests: usize,
    },
    /// Cluster DNS: dnsperf against one node's responder (most queries/s, and latency at
    /// 50,000 queries/s offered), with dnsmasq on the same node as the reference.
    Dns {
        /// Services in the cluster (each name is queried).
        #[arg(long, default_value_t = 1000)]
        services: usize,
        /// Seconds per dnsperf run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Scheduler: pods/s bound with 1,000 and 5,000 fake nodes.
    Scheduler {
        /// Number of pods to schedule per node count.
        #[arg(long, default_value_t = 10_000)]
        pods: usize,
        /// Node counts to measure, comma separated.
        #[arg(long, default_value = "1000,5000", value_delimiter = ',')]
        nodes: Vec<usize>,
    },
}

pub fn run(which: Which) -> Result<()> {
    match which {
        Which::Overlay { pods, seconds } => overlay(pods, seconds),
        Which::Api { pods, watchers } => api(pods, watchers),
        Which::Scheduler { pods, nodes } => scheduler(pods, &nodes),
        Which::Dns { services, seconds } => crate::bench_dns::run(services, seconds),
        Which::Proxy {
            mode,
            iptables_backend,
            services,
            seconds,
            changes,
            requests,
        } => crate::bench_proxy::run(
            &mode,
            &iptables_backend,
            &services,
            crate::bench_proxy::Rounds {
                changes,
                requests,
                seconds,
            },
        ),
    }
}

pub fn out_dir() -> Result<PathBuf> {
    let dir = root().join("target/bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// A controlplane process started for a benchmark; killed (by its pid) on drop.
pub struct Controlplane {
    child: Child,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Controlplane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Controlplane {
    fn start(bin: &Path) -> Result<Self> {
        Self::start_with(bin, &[])
    }

    /// Starts with extra controlplane flags.
    pub fn start_with(bin: &Path, flags: &[&str]) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut child = Command::new(bin)
            .args(["--data-dir"])
            .arg(dir.path())
            .args(["--listen", "127.0.0.1:0"])
            .args(flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        if !line.contains("ready") {
            bail!("controlplane did not report ready: {line:?}");
        }
        Ok(Self {
            child,
            kubeconfig: dir.path().join("admin.kubeconfig"),
            _dir: dir,
        })
    }

    pub fn rss_kib(&self) -> Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok((field("VmRSS:"), field("VmHWM:")))
    }

    pub async fn client(&self) -> Result<kube::Client> {
        client(&self.kubeconfig).await
    }
}

/// An API client from a kubeconfig file.
pub async fn client(kubeconfig: &Path) -> Result<kube::Client> {
    let kc = Kubeconfig::read_from(kubeconfig)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(cfg)?)
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn pod(name: &str) -> Pod {
    pod_for(name, "bench-none")
}

fn pod_for(name: &str, scheduler: &str) -> Pod {
    // A scheduler of its own: the API benchmark has no nodes, and the built-in scheduler would
    // otherwise add a status write and an event per pod (that path is `bench scheduler`'s).
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "bench", "shard": format!("s{}", name.len() % 7)}},
        "spec": {"schedulerName": scheduler, "containers": [{"name": "app", "image": "skiff.local/netexec:latest",
            "ports": [{"containerPort": 8080}],
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}
    }))
    .unwrap_or_default()
}

fn api(pods: usize, watchers: usize) -> Result<()> {
    sh(cargo().args(["build", "--release", "-p", "skiff-controlplane"]))?;
    let bin = root().join("target/release/skiff-controlplane");
    let cp = Controlplane::start(&bin)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(api_inner(&cp, pods, watchers))?;
    let dir = out_dir()?;
    std::fs::write(dir.join("api.json"), serde_json::to_string_pretty(&result)?)?;
    let bars = [
        (
            "creates/s",
            result["create_per_s"].as_f64().unwrap_or(0.0),
            2000.0,
        ),
        (
            "list p99 ms",
            result["list_ms"]["p99"].as_f64().unwrap_or(0.0),
            300.0,
        ),
        (
            "watch events/s (k)",
            result["watch_events_per_s"].as_f64().unwrap_or(0.0) / 1000.0,
            0.0,
        ),
        ("RSS MiB", result["rss_mib"].as_f64().unwrap_or(0.0), 128.0),
    ];
    std::fs::write(dir.join("api.svg"), svg_bars("skiff API server", &bars))?;
    println!("| metric | value | target |");
    println!("|---|---|---|");
    println!(
        "| create throughput ({pods} pods) | {:.0} objects/s | >= 2000 |",
        bars[0].1
    );
    println!(
        "| list {pods} pods p50 / p99 | {:.1} / {:.1} ms | < 300 ms |",
        result["list_ms"]["p50"].as_f64().unwrap_or(0.0),
        bars[1].1
    );
    println!(
        "| watch fan-out ({watchers} watchers) | {:.0} events/s | |",
        result["watch_events_per_s"].as_f64().unwrap_or(0.0)
    );
    println!(
        "| controlplane RSS at {pods} pods | {:.1} MiB (peak {:.1}) | < 128 MiB |",
        bars[3].1,
        result["rss_peak_mib"].as_f64().unwrap_or(0.0)
    );
    println!("results: {}", dir.join("api.json").display());
    Ok(())
}

async fn api_inner(cp: &Controlplane, pods: usize, watchers: usize) -> Result<Value> {
    let client = cp.client().await?;
    let ns_api: Api<Namespace> = Api::all(client.clone());
    ns_api
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "bench"}}))?,
        )
        .await?;
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), "bench");

    // Create throughput: many requests in flight, as controllers and kubectl apply -f do.
    let started = Instant::now();
    futures::stream::iter(0..pods)
        .map(|i| {
            let api = pod_api.clone();
            async move {
                api.create(&PostParams::default(), &pod(&format!("p-{i:06}")))
                    .await
            }
        })
        .buffer_unordered(64)
        .try_for_each(|_| async { Ok(()) })
        .await?;
    let create_s = started.elapsed().as_secs_f64();

    // List latency of the whole collection, bytes received in full.
    let mut list_ms = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let req = http::Request::get("/api/v1/namespaces/bench/pods").body(Vec::new())?;
        let body = client.request_text(req).await?;
        list_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        if !body.contains(&format!("p-{:06}", pods - 1)) {
            bail!("list did not return every pod");
        }
    }
    list_ms.sort_by(f64::total_cmp);
    let (rss, hwm) = cp.rss_kib()?;

    // Watch fan-out: every watcher sees every new event.
    let received = Arc::new(AtomicU64::new(0));
    let rv = pod_api
        .list_metadata(&kube::api::ListParams::default().limit(1))
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let mut tasks = Vec::new();
    for _ in 0..watchers {
        let client = client.clone();
        let received = Arc::clone(&received);
        let rv = rv.clone();
        tasks.push(tokio::spawn(async move {
            let req = http::Request::get(format!(
                "/api/v1/namespaces/bench/configmaps?watch=1&resourceVersion={rv}&timeoutSeconds=120"
            ))
            .body(Vec::new())?;
            let mut lines = std::pin::pin!(client.request_events::<Value>(req).await?);
            while let Some(ev) = lines.next().await {
                ev?;
                received.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = 1000usize;
    let cm_api: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), "bench");
    let started = Instant::now();
    futures::stream::iter(0..events)
        .map(|i| {
            let api = cm_api.clone();
            async move {
                let cm = serde_json::from_value(
                    json!({"metadata": {"name": format!("c-{i:05}")}, "data": {"k": "v"}}),
                )
                .unwrap_or_default();
                api.create(&PostParams::default(), &cm).await
            }
        })
        .buffer_unordered(32)
        .try_for_each(|_| async { Ok(()) })
        .await?;
    let want = (events * watchers) as u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while received.load(Ordering::Relaxed) < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let fanout_s = started.elapsed().as_secs_f64();
    let got = received.load(Ordering::Relaxed);
    for t in tasks {
        t.abort();
    }
    if got < want {
        bail!("watchers received {got} of {want} events within 120 s");
    }
    Ok(json!({
        "pods": pods,
        "create_seconds": create_s,
        "create_per_s": pods as f64 / create_s,
        "list_ms": {"p50": percentile(&list_ms, 0.5), "p99": percentile(&list_ms, 0.99), "samples": list_ms},
        "watchers": watchers,
        "watch_events": got,
        "watch_seconds": fanout_s,
        "watch_events_per_s": got as f64 / fanout_s,
        "rss_mib": rss as f64 / 1024.0,
        "rss_peak_mib": hwm as f64 / 1024.0,
    }))
}

/// A minimal horizontal bar chart; each bar is labelled with its value and target.
pub fn svg_bars(title: &str, bars: &[(&str, f64, f64)]) -> String {
    let (w, row) = (640.0, 40.0);
    let h = 50.0 + row * bars.len() as f64;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"13\">\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/><text x=\"10\" y=\"22\" font-size=\"16\">{title}</text>"
    );
    for (i, (label, value, target)) in bars.iter().enumerate() {
        let y = 40.0 + row * i as f64;
        let scale = value.max(*target).max(1e-9);
        let len = 300.0 * value / scale;
        s.push_str(&format!(
            "<text x=\"10\" y=\"{:.0}\">{label}</text><rect x=\"170\" y=\"{:.0}\" width=\"{len:.1}\" height=\"20\" fill=\"#3b7dd8\"/>",
            y + 15.0,
            y
        ));
        if *target > 0.0 {
            let tx = 170.0 + 300.0 * target / scale;
            s.push_str(&format!(
                "<line x1=\"{tx:.1}\" x2=\"{tx:.1}\" y1=\"{:.0}\" y2=\"{:.0}\" stroke=\"#d83b3b\" stroke-width=\"2\"/>",
                y - 3.0,
                y + 23.0
            ));
        }
        let note = if *target > 0.0 {
            format!("{value:.1} (target {target:.1})")
        } else {
            format!("{value:.1}")
        };
        s.push_str(&format!(
            "<text x=\"480\" y=\"{:.0}\">{note}</text>",
            y + 15.0
        ));
    }
    s.push_str("</svg>\n");
    s
}

/// A Ready fake node with room for the benchmark's pods.
fn fake_node(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name,
            "topology.kubernetes.io/zone": format!("zone-{}", name.len() % 3)}},
        "status": {
            "capacity": {"cpu": "32", "memory": "128Gi", "pods": "110"},
            "allocatable": {"cpu": "32", "memory": "128Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
        },
    })
}

fn scheduler(pods: usize, node_counts: &[usize]) -> Result<()> {
    sh(cargo().args(["build", "--release", "-p", "skiff-controlplane"]))?;
    let bin = root().join("target/release/skiff-controlplane");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut runs = Vec::new();
    for &nodes in node_counts {
        // A fresh controlplane per node count; a /10 cluster CIDR has a /24 for every node.
        let cp = Controlplane::start_with(&bin, &["--cluster-cidr", "100.64.0.0/10"])?;
        eprintln!("scheduler bench: {nodes} nodes, {pods} pods");
        runs.push(rt.block_on(scheduler_inner(&cp, nodes, pods))?);
    }
    let result = json!({"pods": pods, "runs": runs});
    let dir = out_dir()?;
    std::fs::write(
        dir.join("scheduler.json"),
        serde_json::to_string_pretty(&result)?,
    )?;
    let labels: Vec<String> = runs
        .iter()
        .map(|r| format!("{} nodes (pods/s)", r["nodes"]))
        .collect();
    let bars: Vec<(&str, f64, f64)> = runs
        .iter()
        .zip(&labels)
        .map(|(r, l)| (l.as_str(), r["bound_per_s"].as_f64().unwrap_or(0.0), 2000.0))
        .collect();
    std::fs::write(
        dir.join("scheduler.svg"),
        svg_bars(&format!("skiff scheduler: {pods} pods bound"), &bars),
    )?;
    println!(
        "| nodes | pods | bound in | pods/s bound | pods created/s | backlog drained after the last create | target |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in &runs {
        println!(
            "| {} | {} | {:.2} s | {:.0} | {:.0} | {} pods in {:.2} s ({:.0}/s) | >= 2000 |",
            r["nodes"],
            r["pods"],
            r["seconds"].as_f64().unwrap_or(0.0),
            r["bound_per_s"].as_f64().unwrap_or(0.0),
            r["create_per_s"].as_f64().unwrap_or(0.0),
            r["backlog_at_last_create"],
            r["lag_after_last_create_seconds"].as_f64().unwrap_or(0.0),
            r["drain_per_s"].as_f64().unwrap_or(0.0),
        );
    }
    println!("results: {}", dir.join("scheduler.json").display());
    Ok(())
}

async fn scheduler_inner(cp: &Controlplane, nodes: usize, pods: usize) -> Result<Value> {
    let client = cp.client().await?;
    let node_api: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    futures::stream::iter(0..nodes)
        .map(|i| {
            let api = node_api.clone();
            async move {
                let node = serde_json::from_value(fake_node(&format!("node-{i:05}")))?;
                api.create(&PostParams::default(), &node).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(64)
        .try_for_each(|_| async { Ok(()) })
        .await?;
    // Let node IPAM finish so that only scheduling is measured.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let list = node_api.list(&Default::default()).await?;
        let with_cidr = list
            .items
            .iter()
            .filter(|n| n.spec.as_ref().and_then(|s| s.pod_cidr.as_ref()).is_some())
            .count();
        if with_cidr == nodes {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {with_cidr} of {nodes} nodes got a pod CIDR within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ns_api: Api<Namespace> = Api::all(client.clone());
    ns_api
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "bench"}}))?,
        )
        .await?;
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), "bench");
    let rv = pod_api
        .list_metadata(&kube::api::ListParams::default().limit(1))
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();

    // Count bindings from a watch: a pod is bound when it first shows a nodeName.
    let bound = Arc::new(AtomicU64::new(0));
    let watch = {
        let client = client.clone();
        let bound = Arc::clone(&bound);
        tokio::spawn(async move {
            let req = http::Request::get(format!(
                "/api/v1/namespaces/bench/pods?watch=1&resourceVersion={rv}&timeoutSeconds=600"
            ))
            .body(Vec::new())?;
            let mut seen = std::collections::HashSet::new();
            let mut lines = std::pin::pin!(client.request_events::<Value>(req).await?);
            while let Some(ev) = lines.next().await {
                let obj = match ev? {
                    kube::api::WatchEvent::Added(o) | kube::api::WatchEvent::Modified(o) => o,
                    _ => continue,
                };
                let node = obj.pointer("/spec/nodeName").and_then(Value::as_str);
                if node.is_some_and(|n| !n.is_empty()) {
                    let name = obj
                        .pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned();
                    if seen.insert(name) {
                        bound.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            anyhow::Ok(())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    futures::stream::iter(0..pods)
        .map(|i| {
            let api = pod_api.clone();
            async move {
                api.create(
                    &PostParams::default(),
                    &pod_for(&format!("p-{i:06}"), "default-scheduler"),
                )
                .await
            }
        })
        .buffer_unordered(64)
        .try_for_each(|_| async { Ok(()) })
        .await?;
    let create_s = started.elapsed().as_secs_f64();
    let bound_at_create_end = bound.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(300);
    while bound.load(Ordering::Relaxed) < pods as u64 {
        if Instant::now() > deadline || watch.is_finished() {
            bail!(
                "only {} of {pods} pods were bound within 300 s",
                bound.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    watch.abort();
    let (rss, _) = cp.rss_kib()?;
    Ok(json!({
        "nodes": nodes,
        "pods": pods,
        "seconds": secs,
        "bound_per_s": pods as f64 / secs,
        "create_seconds": create_s,
        "create_per_s": pods as f64 / create_s,
        // How far binding trailed creation: the scheduler's backlog when creation ended.
        "lag_after_last_create_seconds": secs - create_s,
        // Once creation stops, the scheduler drains its backlog with the store to itself.
        "backlog_at_last_create": pods as u64 - bound_at_create_end,
        "drain_per_s": (pods as u64 - bound_at_create_end) as f64 / (secs - create_s).max(1e-9),
        "rss_mib": rss as f64 / 1024.0,
    }))
}

/// Bits per second an iperf3 client measured (its JSON report), or the reason it failed.
fn iperf3_client(mut cmd: Command) -> Result<f64> {
    let out = cmd
        .output()
        .context("cannot run iperf3 (cargo xtask setup installs it)")?;
    let report: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "iperf3 printed no report: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if let Some(e) = report["error"].as_str() {
        bail!("iperf3: {e}");
    }
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 report without end.sum_received")
}

/// CPU time the whole machine has spent busy since boot (user, system, interrupts; not idle,
/// I/O wait or steal), in seconds, from /proc/stat's ticks of 1/100 s (USER_HZ).
fn cpu_busy_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .context("empty /proc/stat")?
        .split_whitespace()
        .skip(1)
        .map(|t| t.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq
    let busy: u64 = [0, 1, 2, 5, 6].iter().filter_map(|&i| ticks.get(i)).sum();
    Ok(busy as f64 / 100.0)
}

/// One single-stream TCP run: a one-shot server started by `server`, a client by `client`.
pub(crate) fn iperf3_pair(mut server: Command, client: Command) -> Result<f64> {
    let mut srv = server
        .args(["-s", "-1", "-p", "5201"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start the iperf3 server")?;
    std::thread::sleep(Duration::from_millis(500));
    let result = iperf3_client(client);
    let _ = srv.kill();
    let _ = srv.wait();
    result
}

/// A command run inside the network namespace of the process `pid` (a pod's container).
pub(crate) fn in_netns_of(pid: &str, program: &str) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.args(["-t", pid, "-n", program]);
    cmd
}

pub(crate) fn container_pid(c: &skiff_e2e::cluster::Cluster, pod: &str) -> Result<String> {
    let id = c.kubectl(&[
        "get",
        "pod",
        pod,
        "-o",
        "jsonpath={.status.containerStatuses[0].containerID}",
    ])?;
    let id = id.trim_start_matches("docker://").to_owned();
    Ok(skiff_e2e::cluster::run(Command::new("docker").args([
        "inspect",
        "-f",
        "{{.State.Pid}}",
        &id,
    ]))?
    .trim()
    .to_owned())
}

/// A netexec pod on `node`, labelled `bench=<bench>`.
pub fn pinned_pod(name: &str, node: &str, bench: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"bench": bench}},
           "spec": {"nodeSelector": {"kubernetes.io/hostname": node},
                    "containers": [{"name": "netexec", "image": "skiff.local/netexec:latest", "imagePullPolicy": "Never"}]}})
}

/// Waits until every pod matching `selector` runs and is Ready; returns when each was first
/// seen so (seconds since `t0`), by name.
fn wait_ready(
    c: &skiff_e2e::cluster::Cluster,
    selector: &str,
    count: usize,
    t0: Instant,
    limit: Duration,
) -> Result<std::collections::BTreeMap<String, f64>> {
    let mut seen = std::collections::BTreeMap::new();
    while seen.len() < count {
        if t0.elapsed() > limit {
            bail!("{} of {count} pods ready after {limit:?}", seen.len());
        }
        let list: Value =
            serde_json::from_str(&c.kubectl(&["get", "pods", "-l", selector, "-o", "json"])?)?;
        let now = t0.elapsed().as_secs_f64();
        for p in list["items"].as_array().into_iter().flatten() {
            let ready = p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            if ready {
                let name = p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                seen.entry(name).or_insert(now);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(seen)
}

/// Startup latency of `pods` pods on `node`, sorted: each pod timed from its own create call
/// to the watch event that first shows it Ready. One client in process creates (at `rate` per
/// second, or all at once) and watches, so the load generator costs the node little CPU.
async fn startup_latencies(
    api: &Api<Pod>,
    node: &str,
    label: &str,
    pods: usize,
    rate: Option<f64>,
) -> Result<Vec<f64>> {
    let selector = format!("bench={label}");
    let rv = api
        .list_metadata(&kube::api::ListParams::default().labels(&selector))
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let t0 = Instant::now();
    let watch = {
        let api = api.clone();
        let wp = kube::api::WatchParams::default()
            .labels(&selector)
            .timeout(290);
        tokio::spawn(async move {
            let mut ready = std::collections::HashMap::new();
            let mut events = std::pin::pin!(api.watch(&wp, &rv).await?);
            while ready.len() < pods {
                let Some(ev) = events.next().await else {
                    bail!("the watch ended with {} of {pods} pods ready", ready.len());
                };
                let pod = match ev? {
                    kube::api::WatchEvent::Added(p) | kube::api::WatchEvent::Modified(p) => p,
                    _ => continue,
                };
                let is_ready = pod
                    .status
                    .and_then(|s| s.conditions)
                    .into_iter()
                    .flatten()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                if is_ready && let Some(name) = pod.metadata.name {
                    ready
                        .entry(name)
                        .or_insert_with(|| t0.elapsed().as_secs_f64());
                }
            }
            anyhow::Ok(ready)
        })
    };
    let pod = |i: usize| -> Result<Pod> {
        Ok(serde_json::from_value(pinned_pod(
            &format!("{label}-{i}"),
            node,
            label,
        ))?)
    };
    let mut created = std::collections::HashMap::new();
    match rate {
        Some(r) => {
            for i in 0..pods {
                let due = Duration::from_secs_f64(i as f64 / r);
                if let Some(wait) = due.checked_sub(t0.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
                created.insert(format!("{label}-{i}"), t0.elapsed().as_secs_f64());
                api.create(&PostParams::default(), &pod(i)?).await?;
            }
        }
        None => {
            let all = (0..pods).map(pod).collect::<Result<Vec<_>>>()?;
            futures::stream::iter(all)
                .map(|p| async move { api.create(&PostParams::default(), &p).await })
                .buffer_unordered(pods.max(1))
                .try_for_each(|_| async { Ok(()) })
                .await?;
        }
    }
    let ready = tokio::time::timeout(Duration::from_secs(300), watch)
        .await
        .context("pods not ready within 300 s")???;
    let mut lat: Vec<f64> = ready
        .iter()
        .map(|(n, t)| t - created.get(n).copied().unwrap_or(0.0))
        .collect();
    lat.sort_by(f64::total_cmp);
    Ok(lat)
}

/// Interleaved iperf3 rounds of the overlay benchmark (the median is reported).
const OVERLAY_ROUNDS: usize = 5;

/// The senders' congestion control, named so that every machine runs the same workload: the
/// machine's default may differ (BBR paces by its own model, and measured a third of CUBIC's
/// underlay throughput here).
const CONGESTION: &str = "cubic";

/// Pods per second created in the paced startup measurement.
const STARTUP_RATE: f64 = 5.0;

fn overlay(startup_pods: usize, seconds: u64) -> Result<()> {
    // Nodes 1 and 2 route pod traffic by the kernel's stack (iptables mode, as flannel does),
    // nodes 3 and 4 by the eBPF datapath (host routing): both overlays measured in one run.
    use crate::cluster::ProxyMode::{Ebpf, Iptables};
    let c = crate::cluster::fresh_modes("bench", &[Iptables, Iptables, Ebpf, Ebpf], &[])?;
    let (n1, n2, n3, n4) = (
        c.node_name(1),
        c.node_name(2),
        c.node_name(3),
        c.node_name(4),
    );
    let pods = json!({"apiVersion": "v1", "kind": "List", "items": [
        pinned_pod("server", &n1, "overlay"), pinned_pod("client-same-node", &n1, "overlay"),
        pinned_pod("client-other-node", &n2, "overlay"),
        pinned_pod("server-ebpf", &n3, "overlay"), pinned_pod("client-ebpf", &n4, "overlay")]});
    c.kubectl_in(&["apply", "-f", "-"], Some(&pods.to_string()))?;
    wait_ready(
        &c,
        "bench=overlay",
        5,
        Instant::now(),
        Duration::from_secs(120),
    )?;
    let ip_of = |pod: &str| c.kubectl(&["get", "pod", pod, "-o", "jsonpath={.status.podIP}"]);
    let (server_ip, server_ebpf_ip) = (ip_of("server")?, ip_of("server-ebpf")?);
    let (srv, same, other, srv_ebpf, other_ebpf) = (
        container_pid(&c, "server")?,
        container_pid(&c, "client-same-node")?,
        container_pid(&c, "client-other-node")?,
        container_pid(&c, "server-ebpf")?,
        container_pid(&c, "client-ebpf")?,
    );
    let secs = seconds.to_string();
    let client = |mut cmd: Command, target: &str| {
        cmd.args([
            "-c", target, "-p", "5201", "-t", &secs, "-C", CONGESTION, "-J",
        ]);
        cmd
    };
    // Interleaved rounds, so that the machine's noise hits every path alike. Each run also
    // records the machine's CPU time per GB carried: with every CPU busy on every path,
    // throughput is what that cost allows, and the cost is steadier than the throughput.
    let node1_ip = c.node_ip(1).to_string();
    // Each path: its name, the server's and client's pod containers (none: nodes 1 and 2
    // themselves), the server's address.
    let paths = [
        ("underlay", None, &node1_ip),
        ("underlay_unsteered", None, &node1_ip),
        ("same_node", Some((&srv, &same)), &server_ip),
        ("cross_node", Some((&srv, &other)), &server_ip),
        (
            "cross_node_ebpf",
            Some((&srv_ebpf, &other_ebpf)),
            &server_ebpf_ip,
        ),
    ];
    let mut runs: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
    let mut costs: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
    for round in 0..OVERLAY_ROUNDS {
        eprintln!("bench overlay: round {}", round + 1);
        for (path, pods, target) in paths {
            let (server, client_cmd) = match pods {
                None => (c.in_node(1, "iperf3"), c.in_node(2, "iperf3")),
                Some((server, client)) => {
                    (in_netns_of(server, "iperf3"), in_netns_of(client, "iperf3"))
                }
            };
            // The underlay as a bare veth bridge, for reference: it reorders a flow whose
            // sender sends from two CPUs, which a NIC does not (`Cluster::steer_underlay`).
            let unsteered = path == "underlay_unsteered";
            if unsteered {
                c.steer_underlay(false)?;
            }
            let before = cpu_busy_seconds()?;
            let bps = iperf3_pair(server, client(client_cmd, target));
            let after = cpu_busy_seconds();
            if unsteered {
                c.steer_underlay(true)?;
            }
            let (bps, cpu) = (bps?, after? - before);
            runs.entry(path).or_default().push(bps / 1e9);
            let gb = bps / 8.0 * seconds as f64 / 1e9;
            costs.entry(path).or_default().push(cpu / gb);
        }
    }
    let median = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        percentile(&s, 0.5)
    };
    let cost: std::collections::BTreeMap<&str, f64> =
        costs.iter().map(|(k, v)| (*k, median(v))).collect();
    let (u, uu, s, x, xe) = (
        median(&runs["underlay"]),
        median(&runs["underlay_unsteered"]),
        median(&runs["same_node"]),
        median(&runs["cross_node"]),
        median(&runs["cross_node_ebpf"]),
    );

    // Pod startup on one node: first `startup_pods` pods created at a steady rate (how
    // Kubernetes' density tests measure the SLO), then as many again at once (the worst case).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let api: Api<Pod> = Api::default_namespaced(rt.block_on(self::client(&c.kubeconfig))?);
    let startup = |label: &str, rate: Option<f64>| -> Result<Vec<f64>> {
        let lat = rt.block_on(startup_latencies(&api, &n1, label, startup_pods, rate))?;
        c.kubectl(&[
            "delete",
            "pods",
            "-l",
            &format!("bench={label}"),
            "--wait=true",
            "--timeout=120s",
        ])?;
        Ok(lat)
    };
    let paced = startup("paced", Some(STARTUP_RATE))?;
    let burst = startup("burst", None)?;
    let (p50, p99) = (percentile(&paced, 0.5), percentile(&paced, 0.99));
    let (b50, b99) = (percentile(&burst, 0.5), percentile(&burst, 0.99));

    let result = json!({
        "iperf3_seconds_per_run": seconds, "rounds": OVERLAY_ROUNDS, "congestion_control": CONGESTION,
        "gbit_per_s": runs,
        "median_gbit_per_s": {"underlay": u, "underlay_unsteered": uu, "same_node": s, "cross_node": x, "cross_node_ebpf": xe},
        "cpu_seconds_per_gb": costs, "median_cpu_seconds_per_gb": cost,
        "cross_node_vs_underlay": x / u,
        "cross_node_ebpf_vs_underlay": xe / u,
        "same_node_vs_underlay": s / u,
        "cross_node_vs_underlay_unsteered": x / uu,
        "cross_node_ebpf_vs_underlay_unsteered": xe / uu,
        "startup_paced": {"pods": startup_pods, "pods_per_s": STARTUP_RATE, "p50_s": p50, "p99_s": p99, "samples_s": paced},
        "startup_burst": {"pods": startup_pods, "p50_s": b50, "p99_s": b99, "samples_s": burst},
    });
    let dir = out_dir()?;
    std::fs::write(
        dir.join("overlay.json"),
        serde_json::to_string_pretty(&result)?,
    )?;
    let bars = [
        ("underlay Gbit/s", u, 0.0),
        ("underlay unsteered Gbit/s", uu, 0.0),
        ("same node Gbit/s", s, 0.0),
        ("cross node Gbit/s", x, 0.90 * u),
        ("cross node, eBPF Gbit/s", xe, 0.90 * u),
        ("startup p50 s", p50, 0.0),
        ("startup p99 s", p99, 2.0),
        ("burst startup p99 s", b99, 0.0),
    ];
    std::fs::write(
        dir.join("overlay.svg"),
        svg_bars("skiff pod network (iperf3, one TCP stream)", &bars),
    )?;
    println!("| path | Gbit/s (median of {OVERLAY_ROUNDS}) | vs underlay | CPU-seconds per GB |");
    println!("|---|---|---|---|");
    let c_of = |k: &str| cost.get(k).copied().unwrap_or(f64::NAN);
    println!(
        "| node to node (underlay) | {u:.2} | 1.00 | {:.2} |",
        c_of("underlay")
    );
    println!(
        "| node to node, underlay unsteered (reference) | {uu:.2} | {:.2} | {:.2} |",
        uu / u,
        c_of("underlay_unsteered")
    );
    println!(
        "| pod to pod, same node | {s:.2} | {:.2} | {:.2} |",
        s / u,
        c_of("same_node")
    );
    println!(
        "| pod to pod, across nodes (VXLAN), iptables mode | {x:.2} | {:.2} (target >= 0.90) | {:.2} |",
        x / u,
        c_of("cross_node")
    );
    println!(
        "| pod to pod, across nodes (VXLAN), eBPF host routing | {xe:.2} | {:.2} (target >= 0.90) | {:.2} |",
        xe / u,
        c_of("cross_node_ebpf")
    );
    println!(
        "| pod startup, {startup_pods} pods at {STARTUP_RATE}/s on one node | p50 {p50:.2} s / p99 {p99:.2} s | target p99 < 2 s |"
    );
    println!(
        "| pod startup, {startup_pods} pods at once on one node | p50 {b50:.2} s / p99 {b99:.2} s | |"
    );
    drop(c);
    Ok(())
}
