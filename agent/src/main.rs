use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, ValueEnum};
use skiff_agent::iptables::{Backend, Iptables};
use skiff_agent::node::{Facts, NodeAgent};
use skiff_agent::pods::PodManager;
use skiff_agent::pods::docker::Runtime;
use skiff_agent::{client, dns, kubelet, network, proxy};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LbAlgorithm {
    Random,
    Maglev,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ProxyMode {
    Iptables,
    Ebpf,
}

/// skiff-agent: registers this machine as a node of a skiff cluster and runs its pods.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Controlplane URL, e.g. https://10.0.0.1:6443.
    #[arg(long, value_name = "URL")]
    server: String,
    /// File holding the node join token (the controlplane's DATA_DIR/node-token).
    #[arg(long, value_name = "FILE")]
    token_file: PathBuf,
    /// CA certificate of the controlplane (its DATA_DIR/pki/ca.crt).
    #[arg(long, value_name = "FILE")]
    ca_file: PathBuf,
    /// Name of this node.
    #[arg(long, value_name = "NAME")]
    node_name: String,
    /// Service proxy implementation.
    #[arg(long, value_enum, default_value = "iptables")]
    proxy_mode: ProxyMode,
    /// Interface other nodes reach this one on (default: the IPv4 default route's).
    #[arg(long, value_name = "IF")]
    iface: Option<String>,
    /// iptables flavour for pod-network and service rules (auto: legacy when installed, it loads
    /// large rule sets about ten times faster than nf_tables).
    #[arg(long, value_enum, default_value = "auto")]
    iptables_backend: Backend,
    /// Minimum time between two service proxy syncs (changes in between are batched).
    #[arg(long, value_name = "DURATION", default_value = "50ms", value_parser = duration)]
    proxy_min_sync_period: std::time::Duration,
    /// The service proxy rewrites all of its rules at least this often.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = duration)]
    proxy_sync_period: std::time::Duration,
    /// Upstream resolvers for names outside the cluster, in resolv.conf format ("" for none:
    /// such names then fail at once with SERVFAIL).
    #[arg(long, value_name = "FILE", default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// TTL of cluster DNS answers, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    dns_ttl: u32,
    /// How long one upstream resolver may take to answer before the next is asked.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = duration)]
    dns_upstream_timeout: std::time::Duration,
    /// Port of the node's kubelet endpoint, which the controlplane calls for `kubectl logs` and
    /// `kubectl exec` (HTTPS, controlplane client certificate only).
    #[arg(long, value_name = "PORT", default_value_t = 10250)]
    kubelet_port: u16,
    /// Where the eBPF datapath pins its maps and links (a bpf filesystem; default
    /// /sys/fs/bpf/skiff/<node>, mounting bpffs there when missing).
    #[arg(long, value_name = "DIR")]
    bpf_dir: Option<PathBuf>,
    /// eBPF mode: most service frontends (ClusterIP, external IP, node address per port).
    #[arg(long, value_name = "N", default_value_t = 65_536)]
    bpf_services_max: u32,
    /// eBPF mode: most backend slots, over all services.
    #[arg(long, value_name = "N", default_value_t = 262_144)]
    bpf_backends_max: u32,
    /// eBPF mode: most tracked connection directions (least recently used go first).
    #[arg(long, value_name = "N", default_value_t = 524_288)]
    bpf_conntrack_max: u32,
    /// eBPF mode: how a new connection picks its backend (maglev: the same backend for the
    /// same connection on every node, few connections moved by a backend change).
    #[arg(long, value_enum, default_value = "random")]
    bpf_lb_algorithm: LbAlgorithm,
    /// Address of the Prometheus metrics endpoint (/metrics, plain HTTP; "" for none).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:10249")]
    metrics_bind_address: String,
    /// State directory (IPAM, overlay MAC, kubelet endpoint certificate).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/skiff-agent")]
    data_dir: PathBuf,
}

/// Durations like `50ms`, `2s` or `5m`.
fn duration(s: &str) -> Result<std::time::Duration, String> {
    let d: jiff::SignedDuration = s
        .parse()
        .map_err(|e| format!("{s:?} is not a duration like 50ms, 2s or 5m: {e}"))?;
    std::time::Duration::try_from(d).map_err(|_| format!("{s:?} must not be negative"))
}

fn bpf_dir(args: &Args) -> PathBuf {
    args.bpf_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/sys/fs/bpf/skiff").join(&args.node_name))
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Serves cluster DNS; a failure to bind is retried (the address may still be coming up, or
/// another server may be going away) without taking the node's pods down with it.
async fn serve_dns(
    responder: Arc<dns::Responder>,
    addr: std::net::SocketAddr,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut wait = std::time::Duration::from_millis(500);
    loop {
        match dns::serve(Arc::clone(&responder), addr, stop.clone()).await {
            Ok(()) => return,
            Err(e) => tracing::error!("cluster DNS: {e}; retrying in {wait:?}"),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(std::time::Duration::from_secs(30));
        if *stop.borrow() {
            return;
        }
    }
}

/// The kubelet endpoint, bound and ready to serve.
struct KubeletEndpoint {
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    runtime: Runtime,
    sha256: String,
}

async fn kubelet_endpoint(args: &Args, host_ip: &str) -> Result<KubeletEndpoint, String> {
    let cert = kubelet::load_or_create_cert(
        &args.data_dir,
        &[host_ip.to_owned(), args.node_name.clone()],
    )
    .map_err(|e| e.to_string())?;
    let tls = kubelet::tls_config(&cert, &args.ca_file).map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", args.kubelet_port))
        .await
        .map_err(|source| {
            kubelet::KubeletError::Listen {
                port: args.kubelet_port,
                source,
            }
            .to_string()
        })?;
    let runtime = Runtime::connect(&args.node_name)
        .await
        .map_err(|e| e.to_string())?;
    Ok(KubeletEndpoint {
        listener,
        tls,
        runtime,
        sha256: cert.sha256,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Logs usually go to files: colour only on a terminal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let metrics_addr = match args.metrics_bind_address.as_str() {
        "" => None,
        a => match a.parse::<std::net::SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(e) => {
                eprintln!("error: --metrics-bind-address {a:?} is not ADDR:PORT: {e}");
                return ExitCode::from(2);
            }
        },
    };
    tracing::debug!(mode = ?args.proxy_mode, dir = %args.data_dir.display(), "starting");
    let ipt = match Iptables::select(args.iptables_backend) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let client = match client::build(&args.server, &args.token_file, &args.ca_file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let uplink = match network::uplink(args.iface.as_deref()).await {
        Ok(u) => u,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let host_ip = uplink.address.to_string();
    let uplink_addr = uplink.address;
    let sizes = proxy::ebpf::Sizes {
        services: args.bpf_services_max,
        backends: args.bpf_backends_max,
        conntrack: args.bpf_conntrack_max,
        ..proxy::ebpf::Sizes::default()
    };
    // The eBPF datapath comes up before any pod is wired, so every pod veth gets it at birth.
    let datapath = match args.proxy_mode {
        ProxyMode::Iptables => {
            if let Err(e) = proxy::ebpf::remove_pins(&bpf_dir(&args)) {
                tracing::warn!("removing the eBPF datapath of an earlier run: {e}");
            }
            None
        }
        ProxyMode::Ebpf => match proxy::ebpf::start(&bpf_dir(&args), sizes, &uplink) {
            Ok(dp) => {
                if let Err(e) = proxy::iptables::remove_all(&ipt) {
                    tracing::warn!("removing the iptables service rules of an earlier run: {e}");
                }
                Some(Arc::new(std::sync::Mutex::new(dp)))
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let kubelet = match kubelet_endpoint(&args, &host_ip).await {
        Ok(k) => k,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let agent = Arc::new(NodeAgent::new(
        client.clone(),
        Facts::gather(
            &args.node_name,
            uplink.clone(),
            args.kubelet_port,
            &kubelet.sha256,
        ),
    ));
    // The controlplane may still be starting: retry registration for a while.
    let mut attempt = 0;
    while let Err(e) = agent.register().await {
        attempt += 1;
        if attempt >= 30 {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
        tracing::warn!("registration failed (attempt {attempt}): {e}");
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(kubelet::serve(
        kubelet.listener,
        kubelet.tls,
        kubelet.runtime,
        stop_rx.clone(),
    ));
    let heartbeat = tokio::spawn({
        let agent = Arc::clone(&agent);
        let mut stop = stop_rx.clone();
        async move {
            agent
                .heartbeat(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        }
    });
    // The network-ready gate: pods start only once the node has its podCIDR and overlay.
    let net = tokio::select! {
        n = network::start(client.clone(), &args.node_name, uplink, &args.data_dir, ipt, stop_rx.clone()) => n,
        () = shutdown_signal() => {
            let _ = stop_tx.send(true);
            let _ = heartbeat.await;
            return ExitCode::SUCCESS;
        }
    };
    let net = match net {
        Ok(n) => {
            let mut setup = n
                .reject_services(n.cluster.service_cidr, datapath.is_some())
                .await;
            if let (Ok(()), Some(dp)) = (&setup, &datapath) {
                setup = n
                    .set_veth_hook(proxy::ebpf::veth_hook(Arc::clone(dp)))
                    .await;
                if setup.is_ok() {
                    setup = n
                        .set_overlay_hook(proxy::ebpf::overlay_hook(Arc::clone(dp)))
                        .await;
                }
            }
            if let Err(e) = setup {
                eprintln!("error: {e}");
                let _ = stop_tx.send(true);
                let _ = heartbeat.await;
                return ExitCode::FAILURE;
            }
            n
        }
        Err(e) => {
            eprintln!("error: {e}");
            let _ = stop_tx.send(true);
            let _ = heartbeat.await;
            return ExitCode::FAILURE;
        }
    };
    let zone = match dns::Zone::new(dns::ZoneConfig {
        domain: net.cluster.cluster_domain.clone(),
        ttl: args.dns_ttl,
        service_cidr: net.cluster.service_cidr,
        cluster_cidr: net.cluster.cluster_cidr,
    }) {
        Ok(z) => Arc::new(z),
        Err(e) => {
            eprintln!(
                "error: the cluster domain {:?} is not a DNS name: {e}",
                net.cluster.cluster_domain
            );
            let _ = stop_tx.send(true);
            let _ = heartbeat.await;
            return ExitCode::FAILURE;
        }
    };
    let cluster_dns = net.cluster.cluster_dns;
    let upstreams = if args.resolv_conf.as_os_str().is_empty() {
        Vec::new()
    } else {
        match std::fs::read_to_string(&args.resolv_conf) {
            Ok(text) => dns::forward::upstreams_from_resolv_conf(&text, cluster_dns.into()),
            Err(e) => {
                tracing::warn!(
                    "cannot read {}: {e}; names outside the cluster will fail",
                    args.resolv_conf.display()
                );
                Vec::new()
            }
        }
    };
    let responder = Arc::new(dns::Responder::new(
        Arc::clone(&zone),
        dns::Forwarder::new(upstreams, args.dns_upstream_timeout),
    ));
    tokio::spawn(serve_dns(
        responder,
        (cluster_dns, 53).into(),
        stop_rx.clone(),
    ));
    let proxy_metrics = Arc::new(skiff_agent::metrics::ProxyMetrics::default());
    if let Some(addr) = metrics_addr {
        let sources = skiff_agent::metrics::Sources {
            proxy: Arc::clone(&proxy_metrics),
            datapath: datapath
                .as_ref()
                .map(|_| (proxy::ebpf::Pinned::new(&bpf_dir(&args)), sizes)),
        };
        let stop = stop_rx.clone();
        tokio::spawn(async move {
            if let Err(e) = skiff_agent::metrics::serve(addr, sources, stop).await {
                tracing::error!("metrics endpoint on {addr}: {e}");
            }
        });
    }
    let proxy_task = tokio::spawn(proxy::run(
        client.clone(),
        proxy::Config {
            node: args.node_name.clone(),
            cluster_cidr: net.cluster.cluster_cidr,
            mode: match &datapath {
                Some(dp) => proxy::Mode::Ebpf(
                    Arc::clone(dp),
                    vec![uplink_addr],
                    match args.bpf_lb_algorithm {
                        LbAlgorithm::Random => proxy::ebpf::proxier::Algorithm::Random,
                        LbAlgorithm::Maglev => proxy::ebpf::proxier::Algorithm::Maglev,
                    },
                ),
                None => proxy::Mode::Iptables(ipt),
            },
            min_sync: args.proxy_min_sync_period,
            full_sync: args.proxy_sync_period,
            dns: Some((zone, cluster_dns)),
            metrics: proxy_metrics,
        },
        stop_rx.clone(),
    ));
    let pods = match PodManager::new(
        client.clone(),
        &args.node_name,
        &host_ip,
        net,
        &args.data_dir,
    )
    .await
    {
        Ok(p) => Arc::new(p),
        Err(e) => {
            eprintln!("error: {e}");
            let _ = stop_tx.send(true);
            let _ = heartbeat.await;
            return ExitCode::FAILURE;
        }
    };
    println!("skiff-agent ready: node {}", args.node_name);
    let pod_loop = tokio::spawn(pods.run({
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }));
    tokio::select! {
        () = shutdown_signal() => {}
        r = proxy_task => {
            let msg = match r {
                Ok(Ok(())) => "the service proxy stopped".to_owned(),
                Ok(Err(e)) => e.to_string(),
                Err(e) => format!("the service proxy failed: {e}"),
            };
            eprintln!("error: {msg}");
            let _ = stop_tx.send(true);
            let _ = heartbeat.await;
            return ExitCode::FAILURE;
        }
    }
    // Pods keep running across agent restarts: stop syncing, leave containers alone.
    let _ = stop_tx.send(true);
    let _ = heartbeat.await;
    // A sync stuck on an unreachable API must not keep the agent from exiting.
    if tokio::time::timeout(std::time::Duration::from_secs(5), pod_loop)
        .await
        .is_err()
    {
        tracing::warn!("pod sync did not stop within 5 s; exiting anyway");
    }
    if let Err(e) = agent
        .post_status(false, "skiff-agent is shutting down")
        .await
    {
        tracing::warn!("could not report shutdown: {e}");
    }
    ExitCode::SUCCESS
}
