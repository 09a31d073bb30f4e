//! The cluster DNS responder. Every agent answers cluster names on its own node, on the cluster
//! DNS address (on the node's loopback, put there by the pod network), from the zone the Service proxy's
//! watches keep current: a lookup never leaves the node and keeps working while the controlplane
//! is away. Other names go to the node's upstream resolvers.
//!
//! UDP is served by blocking threads on one socket (no task wake-up per query: the fast path
//! is parse, look up, encode, send); TCP and upstream queries run on the async runtime.

pub mod forward;
pub mod zone;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::DNSClass;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use forward::Forwarder;
pub use zone::{Lookup, Zone, ZoneConfig};

/// Largest UDP answer we send to an EDNS client (the DNS flag day 2020 value).
const MAX_UDP_PAYLOAD: u16 = 1232;
/// Without EDNS, a UDP answer is at most 512 bytes (RFC 1035).
const CLASSIC_UDP_PAYLOAD: usize = 512;
const MAX_TCP_CONNECTIONS: usize = 256;
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Upstream queries in flight, and as many again waiting; beyond that, clients get SERVFAIL
/// at once.
const MAX_FORWARDS: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error(
        "cannot listen for DNS on {addr}: {source}; is another DNS server bound there, or is the address missing?"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What to do with one datagram or TCP message.
#[derive(Debug)]
pub enum Reply {
    /// Send these bytes back.
    Answer(Vec<u8>),
    /// Not a cluster name: ask upstream (the parsed request).
    Forward(Box<Message>),
    /// Malformed or not a query: say nothing.
    Drop,
}

pub struct Responder {
    zone: Arc<Zone>,
    forwarder: Forwarder,
}

/// How large a UDP answer the client takes.
fn udp_limit(req: &Message) -> usize {
    match &req.edns {
        Some(e) => usize::from(e.max_payload().clamp(512, MAX_UDP_PAYLOAD)),
        None => CLASSIC_UDP_PAYLOAD,
    }
}

/// Encodes an answer; one that does not fit the client's UDP limit goes out as an empty
/// answer with TC set, so the client retries over TCP.
fn encode(resp: &Message, limit: Option<usize>) -> Option<Vec<u8>> {
    let bytes = resp.to_vec().ok()?;
    match limit {
        Some(l) if bytes.len() > l => resp.truncate().to_vec().ok(),
        _ => Some(bytes),
    }
}

/// The answer skeleton for `req`: its id, question and flags, EDNS when it used EDNS.
pub(crate) fn response_to(req: &Message) -> Message {
    let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.queries = req.queries.clone();
    if req.edns.is_some() {
        let mut e = Edns::new();
        e.set_max_payload(MAX_UDP_PAYLOAD);
        resp.set_edns(e);
    }
    resp
}

impl Responder {
    pub fn new(zone: Arc<Zone>, forwarder: Forwarder) -> Self {
        Self { zone, forwarder }
    }

    /// Answers one message; `udp` says the answer must fit the client's UDP limit.
    pub fn handle(&self, packet: &[u8], udp: bool) -> Reply {
        let Ok(req) = Message::from_vec(packet) else {
            return Reply::Drop;
        };
        if req.metadata.message_type != MessageType::Query {
            return Reply::Drop;
        }
        let limit = udp.then(|| udp_limit(&req));
        let mut resp = response_to(&req);
        if req.metadata.op_code != OpCode::Query {
            resp.metadata.response_code = ResponseCode::NotImp;
        } else if req.queries.len() != 1 {
            resp.metadata.response_code = ResponseCode::FormErr;
        } else {
            let q = &req.queries[0];
            if !matches!(q.query_class(), DNSClass::IN | DNSClass::ANY) {
                resp.metadata.response_code = ResponseCode::Refused;
            } else {
                match self.zone.lookup(q.name(), q.query_type()) {
                    Lookup::External => return Reply::Forward(Box::new(req)),
                    Lookup::Answer {
                        answers,
                        additionals,
                    } => {
                        resp.metadata.authoritative = true;
                        resp.answers = answers;
                        resp.additionals = additionals;
                    }
                    Lookup::NoData => {
                        resp.metadata.authoritative = true;
                        resp.authorities.push(self.zone.soa());
                    }
                    Lookup::NxDomain => {
                        resp.metadata.authoritative = true;
                        resp.metadata.response_code = ResponseCode::NXDomain;
                        resp.authorities.push(self.zone.soa());
                    }
                }
            }
        }
        match encode(&resp, limit) {
            Some(b) => Reply::Answer(b),
            None => Reply::Drop,
        }
    }

    /// The upstream answer to a forwarded request, encoded for the client's transport.
    pub async fn forward(&self, req: &Message, udp: bool) -> Option<Vec<u8>> {
        let resp = self.forwarder.resolve(req, !udp).await;
        encode(&resp, udp.then(|| udp_limit(req)))
    }
}

/// Serves DNS on `addr` (UDP and TCP) until `stop` turns true.
pub async fn serve(
    responder: Arc<Responder>,
    addr: SocketAddr,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), DnsError> {
    let bind_err = |source| DnsError::Bind { addr, source };
    let udp = UdpSocket::bind(addr).map_err(bind_err)?;
    let tcp = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(bind_err)?;
    // A short read timeout lets the threads notice the stop.
    udp.set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(bind_err)?;
    let (fwd_tx, fwd_rx) = tokio::sync::mpsc::channel::<(Box<Message>, SocketAddr)>(MAX_FORWARDS);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4);
    let mut handles = Vec::new();
    for i in 0..threads {
        let sock = udp.try_clone().map_err(bind_err)?;
        let responder = Arc::clone(&responder);
        let stop = stop.clone();
        let fwd_tx = fwd_tx.clone();
        let h = std::thread::Builder::new()
            .name(format!("dns-udp-{i}"))
            .spawn(move || udp_loop(&sock, &responder, &stop, &fwd_tx))
            .map_err(bind_err)?;
        handles.push(h);
    }
    drop(fwd_tx);
    let udp = Arc::new(udp);
    tokio::spawn(forward_udp(Arc::clone(&responder), udp, fwd_rx));
    tracing::info!(%addr, upstreams = ?responder.forwarder.upstreams(), "cluster DNS serving");
    let conns = Arc::new(tokio::sync::Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            acc = tcp.accept() => {
                let Ok((stream, _)) = acc else { continue };
                // Over the limit: close at once rather than queue (the client retries).
                let Ok(permit) = Arc::clone(&conns).try_acquire_owned() else { continue };
                let responder = Arc::clone(&responder);
                tokio::spawn(async move {
                    let _permit = permit;
                    let _ = tcp_conn(stream, &responder).await;
                });
            }
        }
    }
    for h in handles {
        let _ = tokio::task::spawn_blocking(move || h.join()).await;
    }
    Ok(())
}

fn udp_loop(
    sock: &UdpSocket,
    responder: &Responder,
    stop: &tokio::sync::watch::Receiver<bool>,
    fwd: &tokio::sync::mpsc::Sender<(Box<Message>, SocketAddr)>,
) {
    let mut buf = [0u8; 4096];
    while !*stop.borrow() {
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(v) => v,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => {
                tracing::warn!("DNS receive failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        match responder.handle(&buf[..n], true) {
            Reply::Answer(b) => {
                let _ = sock.send_to(&b, from);
            }
            Reply::Forward(req) => {
                if let Err(tokio::sync::mpsc::error::TrySendError::Full((req, from))) =
                    fwd.try_send((req, from))
                {
                    // Too many upstream queries pending: fail this one fast.
                    let mut m = response_to(&req);
                    m.metadata.response_code = ResponseCode::ServFail;
                    if let Ok(b) = m.to_vec() {
                        let _ = sock.send_to(&b, from);
                    }
                }
            }
            Reply::Drop => {}
        }
    }
}

async fn forward_udp(
    responder: Arc<Responder>,
    sock: Arc<UdpSocket>,
    mut rx: tokio::sync::mpsc::Receiver<(Box<Message>, SocketAddr)>,
) {
    // In flight at once: while all are taken the queue fills, and then the UDP threads answer
    // SERVFAIL themselves.
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_FORWARDS));
    while let Some((req, from)) = rx.recv().await {
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            return;
        };
        let responder = Arc::clone(&responder);
        let sock = Arc::clone(&sock);
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(b) = responder.forward(&req, true).await {
                // A UDP send does not block for long: no need for the async socket here.
                let _ = sock.send_to(&b, from);
            }
        });
    }
}

/// One TCP client: length-prefixed messages until it closes or idles.
async fn tcp_conn(mut s: tokio::net::TcpStream, responder: &Responder) -> std::io::Result<()> {
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, s.read_u16()).await {
            Ok(Ok(n)) => usize::from(n),
            _ => return Ok(()),
        };
        let mut buf = vec![0u8; len];
        tokio::time::timeout(TCP_IDLE, s.read_exact(&mut buf))
            .await
            .map_err(|_| std::io::ErrorKind::TimedOut)??;
        let bytes = match responder.handle(&buf, false) {
            Reply::Answer(b) => b,
            Reply::Forward(req) => match responder.forward(&req, false).await {
                Some(b) => b,
                None => continue,
            },
            // A malformed message on a stream: the rest cannot be trusted either.
            Reply::Drop => return Ok(()),
        };
        let Ok(n) = u16::try_from(bytes.len()) else {
            continue;
        };
        s.write_all(&n.to_be_bytes()).await?;
        s.write_all(&bytes).await?;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::{Name, RecordType};
    use serde_json::json;

    fn responder() -> Arc<Responder> {
        let zone = zone::tests::populated();
        // A headless Service with 100 ready endpoints: too large for a 512-byte answer.
        let endpoints: Vec<_> = (1..=100)
            .map(|i| json!({"addresses": [format!("10.244.9.{i}")], "conditions": {"ready": true}}))
            .collect();
        zone.upsert_service(
            &serde_json::from_value(json!({"metadata": {"name": "big", "namespace": "default"},
                "spec": {"clusterIP": "None"}}))
            .unwrap(),
        );
        zone.upsert_slice(
            &serde_json::from_value(json!({"metadata": {"name": "big-1", "namespace": "default",
                "labels": {"kubernetes.io/service-name": "big"}},
                "addressType": "IPv4", "endpoints": endpoints}))
            .unwrap(),
        );
        Arc::new(Responder::new(
            Arc::new(zone),
            Forwarder::new(vec![], Duration::from_secs(1)),
        ))
    }

    fn query(name: &str, t: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::new(7, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        if let Some(p) = edns {
            let mut e = Edns::new();
            e.set_max_payload(p);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    fn answer(r: Reply) -> Message {
        match r {
            Reply::Answer(b) => Message::from_vec(&b).unwrap(),
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    #[test]
    fn answers_are_authoritative_and_negative_ones_carry_the_soa() {
        let r = responder();
        let m = answer(r.handle(
            &query("web.default.svc.cluster.local.", RecordType::A, None),
            true,
        ));
        assert_eq!(m.metadata.id, 7);
        assert!(m.metadata.authoritative && m.metadata.recursion_available);
        assert_eq!(m.answers.len(), 1);
        let nx = answer(r.handle(
            &query("nope.default.svc.cluster.local.", RecordType::A, None),
            true,
        ));
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(nx.authorities[0].record_type(), RecordType::SOA);
        let nodata = answer(r.handle(
            &query("web.default.svc.cluster.local.", RecordType::AAAA, None),
            true,
        ));
        assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
        assert!(nodata.answers.is_empty());
        assert_eq!(nodata.authorities.len(), 1);
    }

    #[test]
    fn malformed_packets_and_responses_are_dropped() {
        let r = responder();
        for junk in [&b""[..], &[0u8; 3], &[0xff; 40], b"GET / HTTP/1.1\r\n\r\n"] {
            assert!(matches!(r.handle(junk, true), Reply::Drop), "{junk:?}");
        }
        let mut resp = Message::response(1, OpCode::Query);
        resp.add_query(Query::query(
            Name::from_ascii("web.default.svc.cluster.local.").unwrap(),
            RecordType::A,
        ));
        assert!(matches!(
            r.handle(&resp.to_vec().unwrap(), true),
            Reply::Drop
        ));
        // The responder still answers afterwards.
        let m = answer(r.handle(
            &query("web.default.svc.cluster.local.", RecordType::A, None),
            true,
        ));
        assert_eq!(m.answers.len(), 1);
    }

    #[test]
    fn an_answer_too_large_for_udp_is_truncated_but_whole_over_tcp() {
        let r = responder();
        let q = query("big.default.svc.cluster.local.", RecordType::A, None);
        let udp = answer(r.handle(&q, true));
        assert!(udp.metadata.truncation);
        assert!(udp.answers.is_empty());
        let tcp = answer(r.handle(&q, false));
        assert!(!tcp.metadata.truncation);
        assert_eq!(tcp.answers.len(), 100);
        // With EDNS the client takes up to 1232 bytes: 100 A records (~1.6 kB) still do not fit,
        // 50 would; here it must be truncated and carry an OPT record back.
        let edns = answer(r.handle(
            &query("big.default.svc.cluster.local.", RecordType::A, Some(4096)),
            true,
        ));
        assert!(edns.metadata.truncation);
        assert!(edns.edns.is_some());
    }

    #[test]
    fn names_outside_the_cluster_are_forwarded() {
        let r = responder();
        assert!(matches!(
            r.handle(&query("example.org.", RecordType::A, None), true),
            Reply::Forward(_)
        ));
    }

    #[tokio::test]
    async fn serves_udp_and_tcp_on_a_real_socket() {
        let r = responder();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(serve(Arc::clone(&r), addr, stop_rx));
        tokio::time::sleep(Duration::from_millis(100)).await;

        let c = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // Junk first: it must not stop the next query from being answered.
        c.send_to(&[1, 2, 3], addr).await.unwrap();
        c.send_to(
            &query("web.default.svc.cluster.local.", RecordType::A, None),
            addr,
        )
        .await
        .unwrap();
        let mut buf = [0u8; 1500];
        let n = tokio::time::timeout(Duration::from_secs(2), c.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(Message::from_vec(&buf[..n]).unwrap().answers.len(), 1);
        // No upstream: a name outside the cluster fails fast with SERVFAIL.
        c.send_to(&query("example.org.", RecordType::A, None), addr)
            .await
            .unwrap();
        let n = tokio::time::timeout(Duration::from_secs(2), c.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            Message::from_vec(&buf[..n]).unwrap().metadata.response_code,
            ResponseCode::ServFail
        );

        let mut t = tokio::net::TcpStream::connect(addr).await.unwrap();
        let q = query("big.default.svc.cluster.local.", RecordType::A, None);
        t.write_all(&(q.len() as u16).to_be_bytes()).await.unwrap();
        t.write_all(&q).await.unwrap();
        let n = t.read_u16().await.unwrap();
        let mut body = vec![0u8; usize::from(n)];
        t.read_exact(&mut body).await.unwrap();
        assert_eq!(Message::from_vec(&body).unwrap().answers.len(), 100);

        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(3), server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}
