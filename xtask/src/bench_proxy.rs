//! `cargo xtask bench proxy`: the service proxy at 100 to 30,000 services of 10 endpoints each,
//! on a local cluster with one node per proxy mode (iptables and eBPF side by side, sharing the
//! same API objects and machine noise): full sync time (from each agent's log), the time from
//! one EndpointSlice write in the API to the service carrying traffic, connection latency and
//! single-stream throughput through a ClusterIP against the pod IP, all from a pod on the node.

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

use crate::bench::{client, container_pid, out_dir, percentile, pinned_pod, svg_bars};
use crate::cluster::ProxyMode;

const ENDPOINTS: usize = 10;
/// Full syncs are timed as the agent runs them periodically.
const SYNC_PERIOD: &str = "6s";
/// How long a node may take to make 3 full syncs of every service of a scale.
const FULL_SYNC_WAIT: Duration = Duration::from_secs(300);

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

/// A thread living in the network namespace at `netns` (a path under /proc).
fn ns_worker(netns: &str) -> Result<(mpsc::Sender<Job>, mpsc::Receiver<Answer>)> {
    let ns = std::fs::File::open(netns).with_context(|| format!("network namespace {netns}"))?;
    let (jobs_tx, jobs) = mpsc::channel::<Job>();
    let (answers, answers_rx) = mpsc::channel();
    std::thread::spawn(move || {
        // This thread alone moves into the node; the rest of xtask stays on the host.
        if let Err(e) = nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET) {
            eprintln!("bench proxy: cannot enter the client pod's namespace: {e}");
            return;
        }
        for job in jobs {
            let answer = match job {
                Job::UntilOpen(addr, limit) => {
                    let t0 = Instant::now();
                    let mut got = Err(anyhow!("{addr} not reachable within {limit:?}"));
                    // A SYN that nothing answers (iptables mode's ICMP rejects are
                    // rate-limited) is given up after 3 ms, so that a change is seen within
                    // about 3.5 ms of going live.
                    while t0.elapsed() < limit {
                        if TcpStream::connect_timeout(&addr, Duration::from_millis(3)).is_ok() {
                            got = Ok(Instant::now());
                            break;
                        }
                        std::thread::sleep(Duration::from_micros(500));
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

/// How much each scale measures.
#[derive(Clone, Copy)]
pub struct Rounds {
    pub changes: usize,
    pub requests: usize,
    pub seconds: u64,
}

pub fn run(modes: &[ProxyMode], backend: &str, scales: &[usize], rounds: Rounds) -> Result<()> {
    if modes.is_empty() {
        bail!("--mode needs at least one of iptables, ebpf");
    }
    let c = crate::cluster::fresh_modes(
        "bproxy",
        modes,
        &[
            "--proxy-sync-period",
            SYNC_PERIOD,
            "--iptables-backend",
            backend,
            // 30,000 services of 10 endpoints fill 300,000 backend slots.
            "--bpf-backends-max",
            "524288",
        ],
    )?;
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(measure(&c, modes, scales, rounds));
    // The agents' logs outlive the cluster, to explain what the numbers show.
    for k in 1..=modes.len() {
        let role = format!("node{k}");
        let _ = std::fs::copy(c.log(&role), out_dir()?.join(format!("proxy-{role}.log")));
    }
    let results = match result {
        Ok(r) => r,
        Err(e) => bail!("{e:#}\n{}", c.logs()),
    };
    let names: Vec<&str> = modes.iter().map(|m| m.as_str()).collect();
    let out = json!({"modes": names, "iptables_backend": backend,
                     "endpoints_per_service": ENDPOINTS, "scales": results});
    let dir = out_dir()?;
    std::fs::write(dir.join("proxy.json"), serde_json::to_string_pretty(&out)?)?;
    let mut bars: Vec<(String, f64, f64)> = Vec::new();
    println!(
        "services | mode | full sync ms (median) | change live ms p50 / p99 | after the API's answer p50 / p99 | connect+GET ms p50 / p99 ClusterIP | pod IP | Gbit/s ClusterIP | pod IP"
    );
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    for r in &results {
        let n = r["services"].as_u64().unwrap_or(0);
        for m in &names {
            let x = &r[*m];
            let ebpf = *m == "ebpf";
            let (target_full, target_change) = match (ebpf, n) {
                (true, _) => (2000.0, 5.0),
                (false, n) if n >= 10_000 => (2000.0, 100.0),
                _ => (0.0, 0.0),
            };
            bars.push((
                format!("{n} {m}: full sync ms"),
                f(&x["full_sync_ms"]["median"]),
                target_full,
            ));
            bars.push((
                format!("{n} {m}: change p99 ms"),
                f(&x["change_ms"]["p99"]),
                target_change,
            ));
            println!(
                "{n} | {m} | {:.0} | {:.1} / {:.1} | {:.1} / {:.1} | {:.3} / {:.3} | {:.3} / {:.3} | {:.2} | {:.2}",
                f(&x["full_sync_ms"]["median"]),
                f(&x["change_ms"]["p50"]),
                f(&x["change_ms"]["p99"]),
                f(&x["change_ms"]["after_ack"]["p50"]),
                f(&x["change_ms"]["after_ack"]["p99"]),
                f(&x["connect_ms"]["cluster_ip"]["p50"]),
                f(&x["connect_ms"]["cluster_ip"]["p99"]),
                f(&x["connect_ms"]["pod_ip"]["p50"]),
                f(&x["connect_ms"]["pod_ip"]["p99"]),
                f(&x["throughput_gbps"]["cluster_ip"]),
                f(&x["throughput_gbps"]["pod_ip"]),
            );
        }
    }
    let bars_ref: Vec<(&str, f64, f64)> =
        bars.iter().map(|(l, v, t)| (l.as_str(), *v, *t)).collect();
    std::fs::write(
        dir.join("proxy.svg"),
        svg_bars(
            &format!(
                "service proxy, {} side by side ({backend} iptables), 10 endpoints per service",
                names.join(" vs ")
            ),
            &bars_ref,
        ),
    )?;
    println!("bench proxy: wrote {}", dir.join("proxy.json").display());
    Ok(())
}

/// The latency service: HTTP to netexec and iperf3's port, both through the ClusterIP.
fn lat_service(name: &str) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080},
                           {"name": "iperf", "port": 5201, "targetPort": 5201}]}
    }))
    .unwrap_or_default()
}

fn lat_slice(service: &str, ip: Ipv4Addr) -> EndpointSlice {
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-bench"),
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                  {"name": "iperf", "port": 5201, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip.to_string()], "conditions": {"ready": true}}],
    }))
    .unwrap_or_default()
}

/// What one node (one mode) measures with: its server pod, the latency service to it, and a
/// worker in its client pod.
struct Side {
    node: usize,
    server_ip: Ipv4Addr,
    server_pid: String,
    client_pid: String,
    lat: Ipv4Addr,
    jobs: mpsc::Sender<Job>,
    answers: mpsc::Receiver<Answer>,
}

impl Side {
    fn send(&self, job: Job) -> Result<()> {
        self.jobs
            .send(job)
            .map_err(|_| anyhow!("the worker of node{} stopped", self.node))
    }
    fn recv(&self) -> Result<Answer> {
        self.answers
            .recv()
            .map_err(|_| anyhow!("the worker of node{} stopped", self.node))
    }
}

async fn pod_ip(c: &Cluster, pod: &str) -> Result<Ipv4Addr> {
    let t0 = Instant::now();
    loop {
        let ip = c.kubectl(&["get", "pod", pod, "-o", "jsonpath={.status.podIP}"])?;
        let ready = c.kubectl(&[
            "get",
            "pod",
            pod,
            "-o",
            "jsonpath={.status.containerStatuses[0].ready}",
        ])?;
        if !ip.is_empty() && ready == "true" {
            return Ok(ip.parse()?);
        }
        if t0.elapsed() > Duration::from_secs(120) {
            bail!("pod {pod} not ready within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Freezes (or thaws) the agents of every node but `k`'s.
fn freeze_others(c: &Cluster, sides: &[Side], k: usize, frozen: bool) {
    for (j, other) in sides.iter().enumerate() {
        if j != k {
            c.pause_agent(other.node, frozen);
        }
    }
}

/// Gives each probe service its EndpointSlice, one at a time; returns the time (ms) from each
/// create call until `side` connects to the service, and how long each create call took.
async fn time_changes(
    client: &kube::Client,
    side: &Side,
    probes: &[String],
    backends: &[Ipv4Addr],
) -> Result<(Vec<f64>, Vec<f64>)> {
    let slices: Api<EndpointSlice> = Api::default_namespaced(client.clone());
    let (mut out, mut calls) = (Vec::new(), Vec::new());
    for p in probes {
        let vip = SocketAddr::from((cluster_ip(client, p).await?, 80));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut slice = slice(p, backends);
        if let Some(ports) = slice.ports.as_mut() {
            ports.truncate(1);
        }
        let t0 = Instant::now();
        slices.create(&PostParams::default(), &slice).await?;
        calls.push(t0.elapsed().as_secs_f64() * 1e3);
        side.send(Job::UntilOpen(vip, Duration::from_secs(30)))?;
        let Answer::Open(at) = side.recv()? else {
            bail!("unexpected answer");
        };
        out.push(at?.duration_since(t0).as_secs_f64() * 1e3);
    }
    Ok((out, calls))
}

fn stats(v: &[f64]) -> Value {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    json!({"p50": percentile(&s, 0.5), "p99": percentile(&s, 0.99), "n": s.len()})
}

async fn measure(
    c: &Cluster,
    modes: &[ProxyMode],
    scales: &[usize],
    rounds: Rounds,
) -> Result<Vec<Value>> {
    let client = client(&c.kubeconfig).await?;
    let svcs: Api<Service> = Api::default_namespaced(client.clone());
    let slices: Api<EndpointSlice> = Api::default_namespaced(client.clone());
    let mut sides = Vec::new();
    for (k, _) in modes.iter().enumerate() {
        let i = k + 1;
        let node = c.node_name(i);
        for role in ["server", "client"] {
            let pod = pinned_pod(&format!("{role}-{i}"), &node, "proxy");
            c.kubectl_in(&["apply", "-f", "-"], Some(&pod.to_string()))?;
        }
    }
    for (k, _) in modes.iter().enumerate() {
        let i = k + 1;
        let server_ip = pod_ip(c, &format!("server-{i}")).await?;
        pod_ip(c, &format!("client-{i}")).await?;
        let name = format!("lat-{i}");
        svcs.create(&PostParams::default(), &lat_service(&name))
            .await?;
        slices
            .create(&PostParams::default(), &lat_slice(&name, server_ip))
            .await?;
        let client_pid = container_pid(c, &format!("client-{i}"))?;
        let (jobs, answers) = ns_worker(&format!("/proc/{client_pid}/ns/net"))?;
        sides.push(Side {
            node: i,
            server_ip,
            server_pid: container_pid(c, &format!("server-{i}"))?,
            client_pid,
            lat: cluster_ip(&client, &name).await?,
            jobs,
            answers,
        });
    }
    for s in &sides {
        s.send(Job::UntilOpen(
            SocketAddr::from((s.lat, 80)),
            Duration::from_secs(60),
        ))?;
        let Answer::Open(first) = s.recv()? else {
            bail!("unexpected answer");
        };
        first.with_context(|| {
            format!(
                "the latency service of node{} never carried traffic",
                s.node
            )
        })?;
    }
    let probe_backends: Vec<Ipv4Addr> = sides.iter().map(|s| s.server_ip).collect();
    let mut made = 0;
    let mut results = Vec::new();
    for &scale in scales {
        eprintln!("bench proxy: {scale} services");
        let t = Instant::now();
        create_all(&client, made, scale).await?;
        made = made.max(scale);
        eprintln!("bench proxy: created in {:.1} s", t.elapsed().as_secs_f64());
        // Changes: services without endpoints first (a set per node), then one EndpointSlice
        // write at a time.
        let probes: Vec<Vec<String>> = sides
            .iter()
            .map(|s| {
                (0..rounds.changes)
                    .map(|k| format!("chg-{scale}-{}-{k}", s.node))
                    .collect()
            })
            .collect();
        for p in probes.iter().flatten() {
            svcs.create(&PostParams::default(), &service(p)).await?;
        }
        // Full syncs that cover every service of this scale, on every node. A node that does
        // not get there in time is recorded as such (iptables at 30,000 services here) and
        // left out of the change timing.
        let wanted = scale + rounds.changes * sides.len() + sides.len();
        let mut full: Vec<Option<Vec<f64>>> = Vec::new();
        for s in &sides {
            let log_path = c.log(&format!("node{}", s.node));
            let seen_before = full_syncs(&std::fs::read_to_string(&log_path)?).len();
            let t = Instant::now();
            let mut got = Vec::new();
            while got.len() < 3 && t.elapsed() < FULL_SYNC_WAIT {
                tokio::time::sleep(Duration::from_millis(500)).await;
                got = full_syncs(&std::fs::read_to_string(&log_path)?)
                    .into_iter()
                    .skip(seen_before)
                    .filter(|(n, _)| *n >= wanted)
                    .map(|(_, ms)| ms)
                    .collect();
            }
            if got.len() < 3 {
                eprintln!(
                    "bench proxy: node{} made {} full syncs of {wanted} services in {FULL_SYNC_WAIT:?}",
                    s.node,
                    got.len()
                );
                full.push(None);
            } else {
                full.push(Some(got));
            }
        }
        // Each node's changes are timed while the other nodes' agents are frozen, so that one
        // mode's work (iptables restores at 30,000 services never stop) does not take the
        // cores from the other's, as on a real node that runs one proxy.
        let mut change_ms = vec![Vec::new(); sides.len()];
        let mut create_ms = vec![Vec::new(); sides.len()];
        let mut last_change: Option<&String> = None;
        for (k, s) in sides.iter().enumerate() {
            if full[k].is_none() {
                continue;
            }
            // The node first catches up with what changed while it was frozen.
            if let Some(p) = last_change {
                let vip = SocketAddr::from((cluster_ip(&client, p).await?, 80));
                s.send(Job::UntilOpen(vip, Duration::from_secs(120)))?;
                let Answer::Open(at) = s.recv()? else {
                    bail!("unexpected answer");
                };
                at?;
            }
            freeze_others(c, &sides, k, true);
            let timed = time_changes(&client, s, &probes[k], &probe_backends).await;
            freeze_others(c, &sides, k, false);
            (change_ms[k], create_ms[k]) = timed?;
            last_change = probes[k].last();
        }
        // Latency in interleaved rounds, so the machine's noise hits every mode alike.
        let mut lat = vec![[Vec::new(), Vec::new()]; sides.len()];
        let per_round = rounds.requests.div_ceil(5);
        for _ in 0..5 {
            for (k, s) in sides.iter().enumerate() {
                freeze_others(c, &sides, k, true);
                let sent = s.send(Job::Requests(
                    vec![
                        SocketAddr::from((s.lat, 80)),
                        SocketAddr::from((s.server_ip, 8080)),
                    ],
                    per_round,
                ));
                let answer = sent.and_then(|()| s.recv());
                freeze_others(c, &sides, k, false);
                let Answer::Latencies(l) = answer? else {
                    bail!("unexpected answer");
                };
                for (which, v) in l.into_iter().enumerate().take(2) {
                    lat[k][which].extend(v);
                }
            }
        }
        // Throughput, interleaved likewise: median of 3 per path.
        let mut tput = vec![[Vec::new(), Vec::new()]; sides.len()];
        if rounds.seconds > 0 {
            let secs = rounds.seconds.to_string();
            for round in 0..3 {
                for (k, s) in sides.iter().enumerate() {
                    freeze_others(c, &sides, k, true);
                    // Which path goes first alternates, so neither always gets the warmer run.
                    let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
                    let mut got = Ok(());
                    for which in order {
                        let target = [s.lat, s.server_ip][which].to_string();
                        let mut cl = crate::bench::in_netns_of(&s.client_pid, "iperf3");
                        cl.args(["-c", &target, "-p", "5201", "-t", &secs, "-J"]);
                        match crate::bench::iperf3_pair(
                            crate::bench::in_netns_of(&s.server_pid, "iperf3"),
                            cl,
                        ) {
                            Ok(bps) => tput[k][which].push(bps / 1e9),
                            Err(e) => got = Err(e),
                        }
                    }
                    freeze_others(c, &sides, k, false);
                    got?;
                }
            }
        }
        let median = |v: &[f64]| {
            let mut s = v.to_vec();
            s.sort_by(f64::total_cmp);
            percentile(&s, 0.5)
        };
        // The dataplane's part of a change: from the API's answer to the write (it is
        // committed then) until traffic flows; 0 when it flowed before the answer arrived.
        let after_ack: Vec<Vec<f64>> = change_ms
            .iter()
            .zip(&create_ms)
            .map(|(live, calls)| {
                live.iter()
                    .zip(calls)
                    .map(|(l, c)| (l - c).max(0.0))
                    .collect()
            })
            .collect();
        let mut row = json!({"services": scale});
        for (k, m) in modes.iter().enumerate() {
            row[m.as_str()] = json!({
                "converged": full[k].is_some(),
                "full_sync_ms": {"median": full[k].as_deref().map(median), "samples": full[k]},
                "change_ms": {"p50": stats(&change_ms[k])["p50"], "p99": stats(&change_ms[k])["p99"],
                              "samples": change_ms[k],
                              "create_call": {"p50": stats(&create_ms[k])["p50"],
                                              "p99": stats(&create_ms[k])["p99"],
                                              "samples": create_ms[k]},
                              "after_ack": {"p50": stats(&after_ack[k])["p50"],
                                            "p99": stats(&after_ack[k])["p99"]}},
                "connect_ms": {"cluster_ip": stats(&lat[k][0]), "pod_ip": stats(&lat[k][1]),
                               "failed": {"cluster_ip": per_round * 5 - lat[k][0].len(),
                                          "pod_ip": per_round * 5 - lat[k][1].len()}},
                "throughput_gbps": {"cluster_ip": median(&tput[k][0]), "pod_ip": median(&tput[k][1]),
                                    "samples": {"cluster_ip": tput[k][0], "pod_ip": tput[k][1]}},
            });
        }
        results.push(row);
        // Kept as it goes: a later, larger scale may not finish.
        std::fs::write(
            out_dir()?.join("proxy.partial.json"),
            serde_json::to_string_pretty(&results)?,
        )?;
    }
    Ok(results)
}
