//! `cargo xtask bench dns`: the cluster DNS responder of one node of a local cluster holding N
//! Services, driven by dnsperf from inside the node: the most queries per second it answers, and
//! latency percentiles at a fixed offered rate; dnsmasq answering the same names from memory on
//! the same node is measured alternately in the same run as the reference. Also the time from a
//! Service's creation in the API to its name resolving.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use skiff_e2e::cluster::{Cluster, Reaped};

use crate::bench::{client, out_dir, percentile, svg_bars};
use crate::bench_proxy::{cluster_ip, create_all, service};
use crate::cluster::ProxyMode;

/// The reference server listens here inside the node.
const REFERENCE: &str = "127.0.0.1:5399";
/// Offered rate for the latency runs: the target throughput.
const TARGET_QPS: u64 = 50_000;
const ROUNDS: usize = 2;

struct Perf {
    qps: f64,
    lost: u64,
    /// Per-query latencies in ms (verbose runs only).
    latencies: Vec<f64>,
}

/// Runs dnsperf inside the node's namespace.
fn dnsperf(
    c: &Cluster,
    server: SocketAddr,
    queries: &std::path::Path,
    secs: u64,
    rate: Option<u64>,
) -> Result<Perf> {
    let mut cmd = c.in_node(1, "dnsperf");
    cmd.args([
        "-s",
        &server.ip().to_string(),
        "-p",
        &server.port().to_string(),
    ])
    .arg("-d")
    .arg(queries)
    .args(["-l", &secs.to_string(), "-c", "4", "-q", "256"]);
    if let Some(r) = rate {
        cmd.args(["-Q", &r.to_string(), "-v"]);
    }
    let out = cmd
        .output()
        .context("running dnsperf (cargo xtask setup installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "dnsperf failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let field = |label: &str| -> Option<f64> {
        let line = text.lines().find(|l| l.trim_start().starts_with(label))?;
        line.split(':')
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let latencies = text
        .lines()
        .filter(|l| l.starts_with("> "))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|s| s * 1e3)
        .collect();
    Ok(Perf {
        qps: field("Queries per second").context("no qps in dnsperf's output")?,
        lost: field("Queries lost").unwrap_or(0.0) as u64,
        latencies,
    })
}

/// dnsmasq inside the node answering every `*.svc.cluster.local` name from memory.
fn reference(c: &Cluster) -> Result<Reaped> {
    let (ip, port) = REFERENCE.split_once(':').unwrap_or(("127.0.0.1", "5399"));
    c.in_node(1, "dnsmasq")
        .args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--address=/svc.cluster.local/10.96.0.1",
            "--pid-file=",
        ])
        .arg(format!("--listen-address={ip}"))
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Reaped)
        .context("starting dnsmasq (cargo xtask setup installs it)")
}

/// One A query for `name`; whether the answer holds `want`.
fn resolves(sock: &UdpSocket, server: SocketAddr, name: &Name, want: Ipv4Addr) -> bool {
    let mut m = Message::new(rand_id(), MessageType::Query, OpCode::Query);
    m.add_query(Query::query(name.clone(), RecordType::A));
    let Ok(bytes) = m.to_vec() else { return false };
    if sock.send_to(&bytes, server).is_err() {
        return false;
    }
    let mut buf = [0u8; 1500];
    let Ok(n) = sock.recv(&mut buf) else {
        return false;
    };
    Message::from_vec(&buf[..n]).is_ok_and(|r| {
        r.answers
            .iter()
            .any(|a| matches!(&a.data, hickory_proto::rr::RData::A(ip) if ip.0 == want))
    })
}

fn rand_id() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Times Service creation to first answer, polling from a thread inside the node.
async fn new_service_latency(c: &Cluster, dns: Ipv4Addr, samples: usize) -> Result<Vec<f64>> {
    let client = client(&c.kubeconfig).await?;
    let svcs: Api<Service> = Api::default_namespaced(client.clone());
    let ns = std::fs::File::open(format!("/var/run/netns/{}", c.node_ns(1)))?;
    let (tx, rx) = std::sync::mpsc::channel::<(Name, Ipv4Addr, Instant)>();
    let (done_tx, done) = std::sync::mpsc::channel::<Option<f64>>();
    std::thread::spawn(move || {
        if nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
            return;
        }
        let Ok(sock) = UdpSocket::bind("0.0.0.0:0") else {
            return;
        };
        let _ = sock.set_read_timeout(Some(Duration::from_millis(100)));
        let server = SocketAddr::from((dns, 53));
        for (name, ip, created) in rx {
            let mut got = None;
            while created.elapsed() < Duration::from_secs(10) {
                if resolves(&sock, server, &name, ip) {
                    got = Some(created.elapsed().as_secs_f64() * 1e3);
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            if done_tx.send(got).is_err() {
                return;
            }
        }
    });
    let mut out = Vec::new();
    for k in 0..samples {
        let name = format!("fresh-{k}");
        let t0 = Instant::now();
        svcs.create(&PostParams::default(), &service(&name)).await?;
        // The ClusterIP is known once the create returns; the clock started before it.
        let ip = cluster_ip(&client, &name).await?;
        let fqdn = Name::from_ascii(format!("{name}.default.svc.cluster.local."))?;
        tx.send((fqdn, ip, t0))?;
        match done.recv()? {
            Some(ms) => out.push(ms),
            None => bail!("{name} did not resolve within 10 s"),
        }
    }
    Ok(out)
}

fn stats(v: &[f64]) -> Value {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    json!({"p50": percentile(&s, 0.5), "p99": percentile(&s, 0.99), "max": s.last(), "n": s.len()})
}

pub fn run(services: usize, seconds: u64) -> Result<()> {
    let c = crate::cluster::fresh("bdns", 1, ProxyMode::Iptables, &[])?;
    let result = tokio::runtime::Runtime::new()?.block_on(measure(&c, services, seconds));
    let out = match result {
        Ok(v) => v,
        Err(e) => bail!("{e:#}\n{}", c.logs()),
    };
    let dir = out_dir()?;
    std::fs::write(dir.join("dns.json"), serde_json::to_string_pretty(&out)?)?;
    let f = |p: &str| out.pointer(p).and_then(Value::as_f64).unwrap_or(0.0);
    println!("server | max qps | qps at {TARGET_QPS} offered | p50 ms | p99 ms");
    for who in ["skiff", "dnsmasq"] {
        println!(
            "{who} | {:.0} | {:.0} | {:.3} | {:.3}",
            f(&format!("/{who}/max_qps")),
            f(&format!("/{who}/paced_qps")),
            f(&format!("/{who}/latency_ms/p50")),
            f(&format!("/{who}/latency_ms/p99")),
        );
    }
    println!(
        "skiff / dnsmasq max qps: {:.2}; new Service resolvable p50 {:.0} ms, p99 {:.0} ms",
        f("/skiff/max_qps") / f("/dnsmasq/max_qps").max(1.0),
        f("/new_service_ms/p50"),
        f("/new_service_ms/p99"),
    );
    std::fs::write(
        dir.join("dns.svg"),
        svg_bars(
            &format!("cluster DNS, {services} services: thousand queries/s"),
            &[
                (
                    "skiff max",
                    f("/skiff/max_qps") / 1e3,
                    TARGET_QPS as f64 / 1e3,
                ),
                ("dnsmasq max", f("/dnsmasq/max_qps") / 1e3, 0.0),
                (
                    "skiff p99 us at 50k",
                    f("/skiff/latency_ms/p99") * 1e3 / 10.0,
                    100.0,
                ),
                (
                    "dnsmasq p99 us at 50k",
                    f("/dnsmasq/latency_ms/p99") * 1e3 / 10.0,
                    0.0,
                ),
            ],
        ),
    )?;
    println!("bench dns: wrote {}", dir.join("dns.json").display());
    Ok(())
}

async fn measure(c: &Cluster, services: usize, seconds: u64) -> Result<Value> {
    let client = client(&c.kubeconfig).await?;
    let t = Instant::now();
    create_all(&client, 0, services).await?;
    eprintln!(
        "bench dns: {services} services created in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let dns = c.cluster_dns()?;
    let last = format!("svc-{}", services.saturating_sub(1));
    let last_ip = cluster_ip(&client, &last).await?;
    let names: String = (0..services)
        .map(|i| format!("svc-{i}.default.svc.cluster.local A\n"))
        .collect();
    let queries = c.spec.state_dir.join("dns-queries.txt");
    std::fs::write(&queries, names)?;
    // Wait until the zone holds every Service.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = c
            .in_node(1, "dig")
            .args([
                &format!("@{dns}"),
                "+short",
                &format!("{last}.default.svc.cluster.local"),
            ])
            .output()?;
        if String::from_utf8_lossy(&got.stdout).trim() == last_ip.to_string() {
            break;
        }
        if Instant::now() > deadline {
            bail!("{last} did not resolve within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let dnsmasq = reference(c)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ours = SocketAddr::from((dns, 53));
    let theirs: SocketAddr = REFERENCE.parse()?;
    let mut runs: Vec<(&str, Perf, Perf)> = Vec::new();
    for round in 0..ROUNDS {
        for (who, addr) in [("skiff", ours), ("dnsmasq", theirs)] {
            eprintln!("bench dns: round {} of {ROUNDS}, {who}", round + 1);
            let max = dnsperf(c, addr, &queries, seconds, None)?;
            let paced = dnsperf(c, addr, &queries, seconds.min(5), Some(TARGET_QPS))?;
            runs.push((who, max, paced));
        }
    }
    drop(dnsmasq);
    let mut out = json!({"services": services, "seconds": seconds, "offered_qps": TARGET_QPS,
                         "machine_cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)});
    for who in ["skiff", "dnsmasq"] {
        let mine: Vec<&(&str, Perf, Perf)> = runs.iter().filter(|r| r.0 == who).collect();
        let mut max: Vec<f64> = mine.iter().map(|r| r.1.qps).collect();
        max.sort_by(f64::total_cmp);
        let paced: Vec<f64> = mine.iter().map(|r| r.2.qps).collect();
        let lat: Vec<f64> = mine
            .iter()
            .flat_map(|r| r.2.latencies.iter().copied())
            .collect();
        let lost: u64 = mine.iter().map(|r| r.1.lost + r.2.lost).sum();
        out[who] = json!({
            "max_qps": percentile(&max, 0.5), "max_qps_samples": max,
            "paced_qps": paced.iter().sum::<f64>() / paced.len().max(1) as f64,
            "latency_ms": stats(&lat), "lost": lost,
        });
    }
    out["new_service_ms"] = stats(&new_service_latency(c, dns, 20).await?);
    Ok(out)
}
