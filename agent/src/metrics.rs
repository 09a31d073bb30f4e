//! The agent's Prometheus endpoint (`--metrics-bind-address`, /metrics in the text format):
//! the service proxy's syncs and, in eBPF mode, the datapath's counters and map pressure.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::proxy::ebpf::{Pinned, Sizes};

/// Counters the proxy's sync loop keeps.
#[derive(Debug, Default)]
pub struct ProxyMetrics {
    pub syncs: AtomicU64,
    pub full_syncs: AtomicU64,
    pub failures: AtomicU64,
    /// Duration of the last sync, in microseconds.
    pub last_sync_us: AtomicU64,
}

/// What /metrics reports.
pub struct Sources {
    pub proxy: Arc<ProxyMetrics>,
    /// The datapath's pinned maps, read without the proxy's lock: a walk of a full
    /// conntrack map takes a while, and syncs must not wait for a scrape.
    pub datapath: Option<(Pinned, Sizes)>,
}

fn line(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

/// The exposition text.
pub fn render(s: &Sources) -> String {
    let mut out = String::new();
    let p = &s.proxy;
    line(
        &mut out,
        "skiff_proxy_syncs_total",
        "counter",
        "Service proxy syncs.",
        p.syncs.load(Ordering::Relaxed),
    );
    line(
        &mut out,
        "skiff_proxy_full_syncs_total",
        "counter",
        "Service proxy full syncs.",
        p.full_syncs.load(Ordering::Relaxed),
    );
    line(
        &mut out,
        "skiff_proxy_sync_failures_total",
        "counter",
        "Failed service proxy syncs.",
        p.failures.load(Ordering::Relaxed),
    );
    line(
        &mut out,
        "skiff_proxy_last_sync_seconds",
        "gauge",
        "Duration of the last sync.",
        p.last_sync_us.load(Ordering::Relaxed) as f64 / 1e6,
    );
    let Some((dp, sizes)) = &s.datapath else {
        return out;
    };
    if let Ok(st) = dp.stats() {
        for (name, help, v) in [
            (
                "skiff_ebpf_translated_packets_total",
                "Packets of client connections translated.",
                st.translated,
            ),
            (
                "skiff_ebpf_reply_packets_total",
                "Reply packets translated back.",
                st.replies,
            ),
            (
                "skiff_ebpf_socket_connects_translated_total",
                "Connects of the node's own sockets sent to a backend.",
                st.sock_translated,
            ),
            (
                "skiff_ebpf_no_endpoint_packets_total",
                "Packets to a service without endpoints (rejected).",
                st.no_endpoints,
            ),
            (
                "skiff_ebpf_dropped_no_backend_total",
                "External packets dropped: no (local) backend.",
                st.dropped_no_backend,
            ),
            (
                "skiff_ebpf_dropped_error_total",
                "Packets dropped because they could not be rewritten.",
                st.dropped_error,
            ),
            (
                "skiff_ebpf_stale_replies_total",
                "Stale reply entries dropped (a direct connection on a tuple a service connection used).",
                st.stale,
            ),
            (
                "skiff_ebpf_fib_miss_total",
                "Packets the FIB could not forward (left to the stack).",
                st.fib_miss,
            ),
            (
                "skiff_ebpf_into_pod_total",
                "Packets from other nodes delivered straight into a local pod.",
                st.into_pod,
            ),
        ] {
            line(&mut out, name, "counter", help, v);
        }
    }
    if let Ok(n) = dp.conntrack_entries() {
        line(
            &mut out,
            "skiff_ebpf_conntrack_entries",
            "gauge",
            "Tracked connection directions.",
            n,
        );
        line(
            &mut out,
            "skiff_ebpf_conntrack_pressure",
            "gauge",
            "Conntrack map fill (0-1).",
            n as f64 / f64::from(sizes.conntrack.max(1)),
        );
    }
    if let Ok(n) = dp.frontends() {
        line(
            &mut out,
            "skiff_ebpf_frontends",
            "gauge",
            "Service frontends in the map.",
            n,
        );
        line(
            &mut out,
            "skiff_ebpf_services_pressure",
            "gauge",
            "Service map fill (0-1).",
            n as f64 / f64::from(sizes.services.max(1)),
        );
    }
    out
}

/// Serves /metrics on `addr` until `stop` turns true.
pub async fn serve(
    addr: std::net::SocketAddr,
    sources: Sources,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let sources = Arc::new(sources);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let s = Arc::clone(&sources);
            async move {
                let body = tokio::task::spawn_blocking(move || render(&s))
                    .await
                    .unwrap_or_default();
                ([("content-type", "text/plain; version=0.0.4")], body)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
}
