//! Serves a cluster zone of N synthetic Services on a loopback address, for profiling the DNS
//! responder by hand: `cargo run --release -p skiff-agent --example dns_serve -- 127.0.0.1:5300 1000`
//! then `dnsperf -s 127.0.0.1 -p 5300 -d queries.txt`.

use std::sync::Arc;
use std::time::Duration;

use skiff_agent::dns::{Forwarder, Responder, Zone, ZoneConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr: std::net::SocketAddr = args.next().unwrap_or("127.0.0.1:5300".into()).parse()?;
    let n: u32 = args.next().unwrap_or("1000".into()).parse()?;
    let zone = Zone::new(ZoneConfig {
        domain: "cluster.local".into(),
        ttl: 5,
        service_cidr: "10.96.0.0/12".parse()?,
        cluster_cidr: "10.244.0.0/16".parse()?,
    })?;
    for i in 0..n {
        let ip = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 96, 1, 0)) + i);
        let svc = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("svc-{i}"), "namespace": "default"},
            "spec": {"clusterIP": ip.to_string(), "ports": [{"name": "http", "port": 80}]}}))?;
        zone.upsert_service(&svc);
    }
    let responder = Arc::new(Responder::new(
        Arc::new(zone),
        Forwarder::new(vec![], Duration::from_secs(1)),
    ));
    let (_tx, rx) = tokio::sync::watch::channel(false);
    skiff_agent::dns::serve(responder, addr, rx).await?;
    Ok(())
}
