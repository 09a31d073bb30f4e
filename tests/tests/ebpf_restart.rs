//! The eBPF datapath outlives its agent: long-lived TCP connections and a loop of new
//! connections through a ClusterIP keep working while the client node's agent is killed,
//! backends are scaled while it is away, it comes back, and backends are scaled again. Not
//! one request fails on a connection whose backend stays.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{eventually, pods, prerequisites};

const MANIFESTS: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 4
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 15
      containers:
      - name: netexec
        image: skiff.local/netexec:latest
        imagePullPolicy: Never
        command: ["/netexec", "--delay-shutdown", "5"]
        ports: [{name: http, containerPort: 8080}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: client}
spec:
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client}}
    spec:
      containers:
      - name: netexec
        image: skiff.local/netexec:latest
        imagePullPolicy: Never
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
"#;

/// One HTTP/1.1 keep-alive connection.
struct Conn {
    stream: BufReader<TcpStream>,
}

impl Conn {
    fn get(&mut self, path: &str) -> Result<String, String> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: web\r\n\r\n");
        self.stream
            .get_mut()
            .write_all(req.as_bytes())
            .map_err(|e| e.to_string())?;
        let mut len = 0;
        let mut line = String::new();
        loop {
            line.clear();
            if self
                .stream
                .read_line(&mut line)
                .map_err(|e| e.to_string())?
                == 0
            {
                return Err("closed".into());
            }
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().map_err(|_| format!("bad length {v}"))?;
            }
        }
        let mut body = vec![0; len];
        self.stream
            .read_exact(&mut body)
            .map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }
}

/// Opens a connection from inside the network namespace of process `pid` (a pod's).
fn connect_from(pid: u32, to: SocketAddr) -> Result<Conn, String> {
    std::thread::spawn(move || {
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).map_err(|e| e.to_string())?;
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())?;
        let s =
            TcpStream::connect_timeout(&to, Duration::from_secs(3)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(|e| e.to_string())?;
        Ok(Conn {
            stream: BufReader::new(s),
        })
    })
    .join()
    .unwrap()
}

#[test]
fn connections_survive_an_agent_restart_and_scaling() {
    if !prerequisites() {
        return;
    }
    let c = common::cluster_with_mode(2, "ebpf", &[]);
    c.kubectl_in(&["apply", "-f", "-"], Some(MANIFESTS))
        .unwrap();
    eventually(&c, "4 web pods and 2 clients ready", 120, || {
        let w = pods(&c, "app=web");
        let k = pods(&c, "app=client");
        w.len() == 4 && w.iter().all(|p| p.ready) && k.len() == 2 && k.iter().all(|p| p.ready)
    });
    let node1 = c.node_name(1);
    let client = pods(&c, "app=client")
        .into_iter()
        .find(|p| p.node == node1)
        .unwrap();
    let pid: u32 = std::process::Command::new("docker")
        .args(["inspect", "-f", "{{.State.Pid}}", &client.container])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().parse().unwrap())
        .unwrap();
    let vip: std::net::Ipv4Addr = c
        .kubectl(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"])
        .unwrap()
        .parse()
        .unwrap();
    let to = SocketAddr::from((vip, 80));
    // Every backend reachable from the client first: a pod is ready before the other node's
    // overlay routes may be in place, and this test is about restarts, not about that.
    let web: Vec<String> = pods(&c, "app=web").into_iter().map(|p| p.ip).collect();
    eventually(&c, "the client reaches every web pod", 60, || {
        web.iter().all(|ip| {
            let addr = SocketAddr::from((ip.parse::<std::net::Ipv4Addr>().unwrap(), 8080));
            connect_from(pid, addr).is_ok_and(|mut c| c.get("/hostname").is_ok())
        })
    });

    // Long-lived connections, each answering from one backend, and a loop of new ones.
    let stop = Arc::new(AtomicBool::new(false));
    let mut long = Vec::new();
    for i in 0..8 {
        let mut conn = connect_from(pid, to).unwrap_or_else(|e| panic!("connection {i}: {e}"));
        let backend = conn.get("/hostname").unwrap();
        let stop = Arc::clone(&stop);
        long.push(std::thread::spawn(move || {
            let mut failures = Vec::new();
            let mut requests = 0;
            while !stop.load(Ordering::Relaxed) {
                requests += 1;
                match conn.get("/hostname") {
                    Ok(h) if h == backend => {}
                    Ok(h) => failures.push(format!("answered by {h}")),
                    Err(e) => {
                        failures.push(e);
                        break;
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (backend, requests, failures)
        }));
    }
    let looping = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let (mut requests, mut failures) = (0, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                requests += 1;
                if let Err(e) = connect_from(pid, to).and_then(|mut c| c.get("/hostname")) {
                    failures.push(e);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (requests, failures)
        })
    };

    std::thread::sleep(Duration::from_secs(2));
    c.kill_agent(1).unwrap();
    // Backends change while the agent is away: nothing is programmed until it is back.
    c.kubectl(&["scale", "deployment", "web", "--replicas", "6"])
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    c.start_agent(1).unwrap();
    c.wait_agent_ready(1).unwrap();
    eventually(&c, "6 web pods ready", 90, || {
        let w = pods(&c, "app=web");
        w.len() == 6 && w.iter().all(|p| p.ready)
    });
    std::thread::sleep(Duration::from_secs(3));
    c.kubectl(&["scale", "deployment", "web", "--replicas", "3"])
        .unwrap();
    eventually(&c, "3 web pods left", 90, || pods(&c, "app=web").len() == 3);
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);

    let kept: Vec<String> = pods(&c, "app=web").into_iter().map(|p| p.name).collect();
    let mut checked = 0;
    for t in long {
        let (backend, requests, failures) = t.join().unwrap();
        eprintln!("long-lived connection to {backend}: {requests} requests, failures {failures:?}");
        if kept.contains(&backend) {
            checked += 1;
            assert!(
                failures.is_empty(),
                "connection to {backend} (which stayed) failed after {requests} requests: {failures:?}\n{}",
                c.logs()
            );
            assert!(
                requests > 50,
                "connection to {backend}: only {requests} requests"
            );
        }
    }
    assert!(
        checked > 0,
        "no long-lived connection landed on a backend that stayed"
    );
    let (requests, failures) = looping.join().unwrap();
    eprintln!("new connections: {requests}, failed {}", failures.len());
    assert!(
        failures.is_empty(),
        "{} of {requests} new connections failed: {failures:?}\n{}",
        failures.len(),
        c.logs()
    );
}
