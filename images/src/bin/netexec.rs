//! A network test server in the spirit of Kubernetes' agnhost netexec:
//! HTTP (default 8080): /hostname, /clientip, /echo?msg=, /healthz;
//! UDP (default 8081): "hostname" -> hostname, "clientip" -> ip:port, "echo X" -> X.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{ConnectInfo, Query};
use axum::routing::get;
use clap::Parser;

#[derive(Parser)]
#[command(about = "skiff network test server")]
struct Args {
    #[arg(long, default_value_t = 8080)]
    http_port: u16,
    #[arg(long, default_value_t = 8081)]
    udp_port: u16,
}

fn hostname() -> String {
    std::env::var("POD_NAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_default()
}

async fn echo(Query(q): Query<std::collections::HashMap<String, String>>) -> String {
    q.get("msg").cloned().unwrap_or_default()
}

async fn udp(port: u16) -> std::io::Result<()> {
    let sock = tokio::net::UdpSocket::bind(("0.0.0.0", port)).await?;
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, peer) = sock.recv_from(&mut buf).await?;
        let req = String::from_utf8_lossy(&buf[..n]).trim().to_owned();
        let reply = match req.as_str() {
            "hostname" => hostname(),
            "clientip" => peer.to_string(),
            r => r.strip_prefix("echo ").unwrap_or(r).to_owned(),
        };
        // A lost reply is the client's to retry, as with any UDP service.
        let _ = sock.send_to(reply.as_bytes(), peer).await;
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let app = Router::new()
        .route("/hostname", get(|| async { hostname() }))
        .route(
            "/clientip",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
        )
        .route("/echo", get(echo))
        .route("/healthz", get(|| async { "ok" }));
    let listener = match tokio::net::TcpListener::bind(("0.0.0.0", args.http_port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("netexec: cannot listen on TCP {}: {e}", args.http_port);
            std::process::exit(1);
        }
    };
    tokio::spawn(async move {
        if let Err(e) = udp(args.udp_port).await {
            eprintln!("netexec: UDP {} failed: {e}", args.udp_port);
            std::process::exit(1);
        }
    });
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    );
    if let Err(e) = server.await {
        eprintln!("netexec: {e}");
        std::process::exit(1);
    }
}
