//! A network test server in the spirit of Kubernetes' agnhost netexec:
//! HTTP (default 8080): /hostname, /clientip, /echo?msg=, /healthz;
//! UDP (default 8081): "hostname" -> hostname, "clientip" -> ip:port, "echo X" -> X.
//!
//! `netexec dial-udp HOST:PORT MSG [LOCAL_PORT]` is the image's UDP client (busybox's nc has no
//! UDP mode): one datagram out, the reply printed. A fixed local port lets a test reuse one
//! conntrack entry, as long-lived UDP clients do.

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
    /// Keep serving this many seconds after SIGTERM (as agnhost's --delay-shutdown), so that
    /// endpoints are withdrawn before the server goes away.
    #[arg(long, default_value_t = 0)]
    delay_shutdown: u64,
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

/// `netexec dial-udp HOST:PORT MESSAGE [LOCAL_PORT]`: one datagram, the reply on stdout (3 s to
/// answer).
fn dial_udp(args: &[String]) -> i32 {
    let (addr, msg, local) = match args {
        [addr, msg] => (addr, msg, Some(0)),
        [addr, msg, local] => (addr, msg, local.parse::<u16>().ok()),
        _ => (&String::new(), &String::new(), None),
    };
    let Some(local) = local.filter(|_| !addr.is_empty()) else {
        eprintln!("usage: netexec dial-udp HOST:PORT MESSAGE [LOCAL_PORT]");
        return 2;
    };
    let run = || -> std::io::Result<String> {
        let sock = std::net::UdpSocket::bind(("0.0.0.0", local))?;
        sock.set_read_timeout(Some(std::time::Duration::from_secs(3)))?;
        sock.send_to(msg.as_bytes(), addr.as_str())?;
        let mut buf = [0u8; 65_536];
        let (n, _) = sock.recv_from(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    match run() {
        Ok(reply) => {
            println!("{reply}");
            0
        }
        Err(e) => {
            eprintln!("netexec dial-udp {addr}: {e}");
            1
        }
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("dial-udp") {
        std::process::exit(dial_udp(&argv[2..]));
    }
    serve();
}

#[tokio::main]
async fn serve() {
    let args = Args::parse();
    let delay = std::time::Duration::from_secs(args.delay_shutdown);
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
    // As PID 1 of its container it must handle SIGTERM itself, or pod deletion waits out the
    // whole grace period.
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            term.recv().await;
            tokio::time::sleep(delay).await;
        } else {
            std::future::pending::<()>().await;
        }
    });
    if let Err(e) = server.await {
        eprintln!("netexec: {e}");
        std::process::exit(1);
    }
}
