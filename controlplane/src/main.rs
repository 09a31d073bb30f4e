use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use std::net::Ipv4Addr;

use clap::Parser;
use ipnet::Ipv4Net;
use skiff_controlplane::controllers::runtime::{Settings, nth_addr};
use skiff_controlplane::server::{Config, start};

// The API path allocates and frees many small JSON trees from many threads, where glibc
// malloc spent about 30% of the controlplane's CPU (docs/benchmarks.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// skiff-controlplane: Kubernetes-compatible API server, scheduler and controllers.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Directory for the store, certificates, admin.kubeconfig and node-token.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// Address to serve HTTPS on.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Range Service ClusterIPs are allocated from.
    #[arg(long, value_name = "CIDR", default_value = "10.96.0.0/12", value_parser = parse_cidr)]
    service_cidr: Ipv4Net,
    /// Range node pod CIDRs are carved from.
    #[arg(long, value_name = "CIDR", default_value = "10.244.0.0/16", value_parser = parse_cidr)]
    cluster_cidr: Ipv4Net,
    /// Cluster DNS service IP (default: the 10th address of the service CIDR).
    #[arg(long, value_name = "IP")]
    cluster_dns: Option<Ipv4Addr>,
    /// DNS domain of the cluster: Services are `<name>.<namespace>.svc.<domain>`.
    #[arg(long, value_name = "DOMAIN", default_value = "cluster.local", value_parser = parse_domain)]
    cluster_domain: String,
    /// Seconds without a node Lease renewal before the node is marked NotReady (Unknown).
    #[arg(long, value_name = "SECONDS", default_value_t = 40)]
    node_monitor_grace_period: u64,
    /// Prefix length of each node's pod CIDR.
    #[arg(long, value_name = "BITS", default_value_t = 24, value_parser = clap::value_parser!(u8).range(8..=30))]
    node_cidr_mask_size: u8,
    /// Extra DNS names or IPs for the serving certificate (repeatable).
    #[arg(long = "tls-san", value_name = "NAME")]
    tls_sans: Vec<String>,
    /// Seconds between store compactions.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    compaction_interval: u64,
}

fn parse_cidr(v: &str) -> Result<Ipv4Net, String> {
    let net: Ipv4Net = v
        .parse()
        .map_err(|_| format!("expected an IPv4 CIDR such as 10.96.0.0/12, got {v:?}"))?;
    Ok(net.trunc())
}

/// A DNS domain: dot-separated labels of letters, digits and hyphens (RFC 1123).
fn parse_domain(v: &str) -> Result<String, String> {
    let d = v.trim_end_matches('.').to_ascii_lowercase();
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if d.is_empty() || d.len() > 253 || !d.split('.').all(label_ok) {
        return Err(format!(
            "expected a DNS domain such as cluster.local, got {v:?}"
        ));
    }
    Ok(d)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
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
    if args.node_cidr_mask_size < args.cluster_cidr.prefix_len() {
        eprintln!(
            "error: --node-cidr-mask-size {} is shorter than the --cluster-cidr {} prefix",
            args.node_cidr_mask_size, args.cluster_cidr
        );
        return std::process::ExitCode::from(2);
    }
    let cluster_dns = args
        .cluster_dns
        .unwrap_or_else(|| nth_addr(&args.service_cidr, 10));
    if !args.service_cidr.contains(&cluster_dns) {
        eprintln!(
            "error: --cluster-dns {cluster_dns} is outside --service-cidr {}",
            args.service_cidr
        );
        return std::process::ExitCode::from(2);
    }
    let cfg = Config {
        data_dir: args.data_dir,
        listen: args.listen,
        tls_sans: args.tls_sans,
        compaction_interval: Duration::from_secs(args.compaction_interval.max(1)),
        settings: Settings {
            service_cidr: args.service_cidr,
            cluster_cidr: args.cluster_cidr,
            node_cidr_mask_size: args.node_cidr_mask_size,
            cluster_dns,
            cluster_domain: args.cluster_domain,
            node_monitor_grace: Duration::from_secs(args.node_monitor_grace_period.max(1)),
        },
    };
    let running = match start(cfg).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    println!(
        "skiff-controlplane ready on https://{} (kubeconfig: {})",
        running.addr,
        running.kubeconfig.display()
    );
    let handle = running.handle.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        handle.graceful_shutdown(Some(Duration::from_secs(5)));
    });
    match running.task.await {
        Ok(Ok(())) => std::process::ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: server task failed: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
