//! `cargo xtask bench proxy`: the service proxy at 100, 1,000 and 10,000 services of 10
//! endpoints each on a one-node local cluster: full sync time (from the agent's log), the time
//! from one EndpointSlice write in the API to the rule carrying traffic, and connection latency
//! through a ClusterIP against the pod IP directly, measured side by side in one run.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use skiff_e2e::cluster::Cluster;

use crate::bench::{client, out_dir, percentile, pinned_pod, svg_bars};
use crate::cluster::ProxyMode;

const ENDPOINTS: usize = 10;
/// Full syncs are timed as the agent runs them periodically.
const SYNC_PERIOD: &str = "6s";

/// Jobs for a thread living in the node's network namespace.
enum Job {
    /// Connect until it succeeds; answer when it did.
    UntilOpen(SocketAddr, Duration),
    /// Connect + HTTP GET + read to the end, `n` times alternating over the targets; answer the
    /// latencies (ms) per target.
    Requests(Vec<SocketAddr>, usize),
}

enum Answer {
    Open(Result<Instant>),
    Latencies(Vec<Vec<f64>>),
}

fn node_worker(netns: &str) -> Result<(mpsc::Sender<Job>, mpsc::Receiver<Answer>)> {
    let ns = std::fs::File::open(format!("/var/run/netns/{netns}"))
        .with_context(|| format!("network namespace {netns}"))?;
    let (jobs_tx, jobs) = mpsc::channel::<Job>();
    let (answers, answers_rx) = mpsc::channel();
    std::thread::spawn(move || {
        // This thread alone moves into the node; the rest of xtask stays on the host.
        if let Err(e) = nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET) {
            eprintln!("bench proxy: cannot enter the node's namespace: {e}");
            return;
        }
        for job in jobs {
            let answer = match job {
                Job::UntilOpen(addr, limit) => {
                    let t0 = Instant::now();
                    let mut got = Err(anyhow!("{addr} not reachable within {limit:?}"));
                    while t0.elapsed() < limit {
                        if TcpStream::connect_timeout(&addr, Duration::from_millis(20)).is_ok() {
                            got = Ok(Instant::now());
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Answer::Open(got)
                }
                Job::Requests(targets, n) => {
                    let mut out = vec![Vec::with_capacity(n); targets.len()];
                    for i in 0..n * targets.len() {
                        let which = i % targets.len();
                        let t0 = Instant::now();
                        if request(targets[which]).is_ok() {
                            out[which].push(t0.elapsed().as_secs_f64() * 1e3);
                        }
                    }
                    Answer::Latencies(out)
                }
            };
            if answers.send(answer).is_err() {
                return;
            }
        }
    });
    Ok((jobs_tx, answers_rx))
}

fn request(addr: SocketAddr) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET /hostname HTTP/1.0\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    if buf.starts_with(b"HTTP/1.") {
        Ok(())
    } else {
        Err(std::io::Error::other("no HTTP answer"))
    }
}

pub(crate) fn service(name: &str) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    }))
    .unwrap_or_default()
}

fn slice(service: &str, ips: &[Ipv4Addr]) -> EndpointSlice {
    let eps: Vec<Value> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip.to_string()], "conditions": {"ready": true}}))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-bench"),
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": eps,
    }))
    .unwrap_or_default()
}

/// Ten addresses no pod has, distinct per service.
fn fake_endpoints(i: usize) -> Vec<Ipv4Addr> {
    (0..ENDPOINTS)
        .map(|j| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + (i * 16 + j) as u32))
        .collect()
}

/// `took_ms` of the agent's full syncs logged so far, with their service counts.
fn full_syncs(log: &str) -> Vec<(usize, f64)> {
    let field = |line: &str, key: &str| -> Option<f64> {
        let rest = &line[line.find(key)? + key.len()..];
        rest.split(|c: char| !c.is_ascii_digit() && c != '.')
            .next()?
            .parse()
            .ok()
    };
    log.lines()
        .filter(|l| l.contains("proxy full sync"))
        .filter_map(|l| Some((field(l, "services=")? as usize, field(l, "took_ms=")?)))
        .collect()
}

pub(crate) async fn create_all(client: &kube::Client, from: usize, to: usize) -> Result<()> {
    let svcs: Api<Service> = Api::default_namespaced(client.clone());
    let slices: Api<EndpointSlice> = Api::default_namespaced(client.clone());
    let results: Vec<Result<()>> = futures::stream::iter(from..to)
        .map(|i| {
            let (svcs, slices) = (svcs.clone(), slices.clone());
            async move {
                let name = format!("svc-{i}");
                svcs.create(&PostParams::default(), &service(&name)).await?;
                slices
                    .create(&PostParams::default(), &slice(&name, &fake_endpoints(i)))
                    .await?;
                Ok(())
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    results.into_iter().collect()
}

pub(crate) async fn cluster_ip(client: &kube::Client, name: &str) -> Result<Ipv4Addr> {
    let svcs: Api<Service> = Api::default_namespaced(client.clone());
    let ip = svcs
        .get(name)
        .await?
        .spec
        .and_then(|s| s.cluster_ip)
        .ok_or_else(|| anyhow!("service {name} has no clusterIP"))?;
    Ok(ip.parse()?)
}

pub fn run(
    mode: ProxyMode,
    backend: &str,
    scales: &[usize],
    changes: usize,
    requests: usize,
) -> Result<()> {
    let c = crate::cluster::fresh(
        "bproxy",
        1,
        mode,
        &[
            "--proxy-sync-period",
            SYNC_PERIOD,
            "--iptables-backend",
            backend,
        ],
    )?;
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(measure(&c, scales, changes, requests));
    let results = match result {
        Ok(r) => r,
        Err(e) => bail!("{e:#}\n{}", c.logs()),
    };
    let out = json!({"mode": format!("{mode:?}").to_lowercase(), "iptables_backend": backend,
                     "endpoints_per_service": ENDPOINTS, "scales": results});
    let dir = out_dir()?;
    std::fs::write(dir.join("proxy.json"), serde_json::to_string_pretty(&out)?)?;
    let mut bars: Vec<(String, f64, f64)> = Vec::new();
    println!(
        "services | full sync ms (median) | change live ms p50 / p99 | connect+GET ms p50 / p99 ClusterIP | pod IP"
    );
    for r in &results {
        let n = r["services"].as_u64().unwrap_or(0);
        let target_full = if n >= 10_000 { 2000.0 } else { 0.0 };
        let target_change = if n >= 10_000 { 100.0 } else { 0.0 };
        bars.push((
            format!("{n} svc: full sync ms"),
            r["full_sync_ms"]["median"].as_f64().unwrap_or(0.0),
            target_full,
        ));
        bars.push((
            format!("{n} svc: change p99 ms"),
            r["change_ms"]["p99"].as_f64().unwrap_or(0.0),
            target_change,
        ));
        println!(
            "{n} | {:.0} | {:.1} / {:.1} | {:.2} / {:.2} | {:.2} / {:.2}",
            r["full_sync_ms"]["median"].as_f64().unwrap_or(0.0),
            r["change_ms"]["p50"].as_f64().unwrap_or(0.0),
            r["change_ms"]["p99"].as_f64().unwrap_or(0.0),
            r["connect_ms"]["cluster_ip"]["p50"].as_f64().unwrap_or(0.0),
            r["connect_ms"]["cluster_ip"]["p99"].as_f64().unwrap_or(0.0),
            r["connect_ms"]["pod_ip"]["p50"].as_f64().unwrap_or(0.0),
            r["connect_ms"]["pod_ip"]["p99"].as_f64().unwrap_or(0.0),
        );
    }
    let bars_ref: Vec<(&str, f64, f64)> =
        bars.iter().map(|(l, v, t)| (l.as_str(), *v, *t)).collect();
    std::fs::write(
        dir.join("proxy.svg"),
        svg_bars(
            &format!("service proxy ({backend} iptables), 10 endpoints per service"),
            &bars_ref,
        ),
    )?;
    println!("bench proxy: wrote {}", dir.join("proxy.json").display());
    Ok(())
}

async fn measure(
    c: &Cluster,
    scales: &[usize],
    changes: usize,
    requests: usize,
) -> Result<Vec<Value>> {
    let client = client(&c.kubeconfig).await?;
    let node = c.node_name(1);
    let server = pinned_pod("server", &node, "proxy");
    c.kubectl_in(&["apply", "-f", "-"], Some(&server.to_string()))?;
    let mut pod_ip = String::new();
    let t0 = Instant::now();
    while pod_ip.is_empty() {
        if t0.elapsed() > Duration::from_secs(120) {
            bail!("the server pod got no IP within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        pod_ip = c.kubectl(&["get", "pod", "server", "-o", "jsonpath={.status.podIP}"])?;
    }
    let pod_ip: Ipv4Addr = pod_ip.parse()?;
    let svcs: Api<Service> = Api::default_namespaced(client.clone());
    let slices: Api<EndpointSlice> = Api::default_namespaced(client.clone());
    svcs.create(&PostParams::default(), &service("lat")).await?;
    slices
        .create(&PostParams::default(), &slice("lat", &[pod_ip]))
        .await?;
    let lat = SocketAddr::from((cluster_ip(&client, "lat").await?, 80));
    let direct = SocketAddr::from((pod_ip, 8080));
    let (jobs, answers) = node_worker(&c.node_ns(1))?;
    let ask = |job: Job| -> Result<Answer> {
        jobs.send(job)
            .map_err(|_| anyhow!("the node worker stopped"))?;
        answers
            .recv()
            .map_err(|_| anyhow!("the node worker stopped"))
    };
    let Answer::Open(first) = ask(Job::UntilOpen(lat, Duration::from_secs(60)))? else {
        bail!("unexpected answer");
    };
    first.context("the latency service never carried traffic")?;
    let log_path = c.log("node1");
    let mut made = 0;
    let mut results = Vec::new();
    for &scale in scales {
        eprintln!("bench proxy: {scale} services");
        let t = Instant::now();
        create_all(&client, made, scale).await?;
        made = made.max(scale);
        eprintln!("bench proxy: created in {:.1} s", t.elapsed().as_secs_f64());
        // Changes: services without endpoints first, then one EndpointSlice write at a time.
        let probes: Vec<String> = (0..changes).map(|k| format!("chg-{scale}-{k}")).collect();
        for p in &probes {
            svcs.create(&PostParams::default(), &service(p)).await?;
        }
        // Full syncs that cover every service of this scale.
        let wanted = scale + changes + 1;
        let t = Instant::now();
        let mut full = Vec::new();
        let seen_before = full_syncs(&std::fs::read_to_string(&log_path)?).len();
        while full.len() < 3 {
            if t.elapsed() > Duration::from_secs(180) {
                bail!("fewer than 3 full syncs of {wanted} services within 180 s");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            full = full_syncs(&std::fs::read_to_string(&log_path)?)
                .into_iter()
                .skip(seen_before)
                .filter(|(n, _)| *n >= wanted)
                .map(|(_, ms)| ms)
                .collect();
        }
        let mut change_ms = Vec::new();
        for p in &probes {
            let vip = SocketAddr::from((cluster_ip(&client, p).await?, 80));
            tokio::time::sleep(Duration::from_millis(200)).await;
            let t0 = Instant::now();
            slices
                .create(&PostParams::default(), &slice(p, &[pod_ip]))
                .await?;
            let Answer::Open(at) = ask(Job::UntilOpen(vip, Duration::from_secs(30)))? else {
                bail!("unexpected answer");
            };
            change_ms.push(at?.duration_since(t0).as_secs_f64() * 1e3);
        }
        let Answer::Latencies(lats) = ask(Job::Requests(vec![lat, direct], requests))? else {
            bail!("unexpected answer");
        };
        let stats = |v: &[f64]| {
            let mut s = v.to_vec();
            s.sort_by(f64::total_cmp);
            json!({"p50": percentile(&s, 0.5), "p99": percentile(&s, 0.99), "n": s.len()})
        };
        let change = stats(&change_ms);
        let mut sorted_full = full.clone();
        sorted_full.sort_by(f64::total_cmp);
        results.push(json!({
            "services": scale,
            "full_sync_ms": {"median": percentile(&sorted_full, 0.5), "max": sorted_full.last(), "samples": full},
            "change_ms": {"p50": change["p50"], "p99": change["p99"], "samples": change_ms},
            "connect_ms": {"cluster_ip": stats(&lats[0]), "pod_ip": stats(&lats[1])},
        }));
    }
    Ok(results)
}
