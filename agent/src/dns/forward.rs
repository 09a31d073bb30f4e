//! Names outside the cluster go to the node's upstream resolvers (its resolv.conf), one at a
//! time in order, each within the per-query timeout; answers are cached for their TTL.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest time an upstream answer is reused (CoreDNS's cache default).
const MAX_CACHE_TTL: u32 = 30;
/// Negative answers without an SOA are kept this long.
const NEGATIVE_TTL: u32 = 5;
const MAX_CACHE_ENTRIES: usize = 10_000;

type Key = (Name, RecordType, DNSClass);

struct Cached {
    message: Message,
    stored: Instant,
    ttl: u32,
}

pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    timeout: Duration,
    cache: Mutex<HashMap<Key, Cached>>,
}

#[derive(Debug, thiserror::Error)]
enum UpstreamError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("no answer within the timeout")]
    Timeout,
    #[error("unparsable answer: {0}")]
    Decode(String),
}

fn key(req: &Message) -> Option<Key> {
    let q = req.queries.first()?;
    Some((q.name().to_lowercase(), q.query_type(), q.query_class()))
}

/// How long an answer may be reused: its smallest TTL, or the SOA minimum of a negative one.
fn cache_ttl(m: &Message) -> Option<u32> {
    match m.metadata.response_code {
        ResponseCode::NoError | ResponseCode::NXDomain => {}
        _ => return None,
    }
    let ttl = if m.answers.is_empty() {
        m.authorities
            .iter()
            .find_map(|r| match &r.data {
                hickory_proto::rr::RData::SOA(soa) => Some(soa.minimum.min(r.ttl)),
                _ => None,
            })
            .unwrap_or(NEGATIVE_TTL)
    } else {
        m.answers.iter().map(|r| r.ttl).min().unwrap_or(0)
    };
    (ttl > 0).then_some(ttl.min(MAX_CACHE_TTL))
}

impl Forwarder {
    pub fn new(upstreams: Vec<SocketAddr>, timeout: Duration) -> Self {
        Self {
            upstreams,
            timeout,
            cache: Mutex::default(),
        }
    }

    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    fn cached(&self, k: &Key, id: u16) -> Option<Message> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let c = cache.get(k)?;
        let age = c.stored.elapsed().as_secs() as u32;
        if age >= c.ttl {
            cache.remove(k);
            return None;
        }
        let mut m = c.message.clone();
        m.metadata.id = id;
        for r in m.answers.iter_mut().chain(m.authorities.iter_mut()) {
            r.decrement_ttl(age);
        }
        Some(m)
    }

    fn store(&self, k: Key, m: &Message) {
        let Some(ttl) = cache_ttl(m) else { return };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHE_ENTRIES {
            cache.retain(|_, c| c.stored.elapsed().as_secs() < u64::from(c.ttl));
            if cache.len() >= MAX_CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(
            k,
            Cached {
                message: m.clone(),
                stored: Instant::now(),
                ttl,
            },
        );
    }

    /// The answer to a query for a name outside the cluster: from the cache, else from the
    /// first upstream that answers in time; SERVFAIL when none does (at once when there are none).
    pub async fn resolve(&self, req: &Message, tcp: bool) -> Message {
        let id = req.metadata.id;
        let Some(k) = key(req) else {
            return Message::error_msg(id, req.metadata.op_code, ResponseCode::FormErr);
        };
        if let Some(m) = self.cached(&k, id) {
            return m;
        }
        let mut outgoing = req.clone();
        outgoing.metadata.id = rand::random();
        let Ok(bytes) = outgoing.to_vec() else {
            return Message::error_msg(id, req.metadata.op_code, ResponseCode::FormErr);
        };
        for up in &self.upstreams {
            let answer = tokio::time::timeout(self.timeout, self.ask(*up, &bytes, &outgoing, tcp))
                .await
                .unwrap_or(Err(UpstreamError::Timeout));
            match answer {
                Ok(mut m) => {
                    m.metadata.id = id;
                    if !m.metadata.truncation {
                        self.store(k, &m);
                    }
                    return m;
                }
                Err(e) => tracing::debug!(upstream = %up, "upstream DNS query failed: {e}"),
            }
        }
        let mut m = super::response_to(req);
        m.metadata.response_code = ResponseCode::ServFail;
        m
    }

    async fn ask(
        &self,
        up: SocketAddr,
        bytes: &[u8],
        sent: &Message,
        tcp: bool,
    ) -> Result<Message, UpstreamError> {
        if !tcp {
            let m = ask_udp(up, bytes, sent).await?;
            if !m.metadata.truncation {
                return Ok(m);
            }
        }
        ask_tcp(up, bytes, sent).await
    }
}

fn answers(sent: &Message, m: &Message) -> bool {
    m.metadata.id == sent.metadata.id && m.queries == sent.queries
}

async fn ask_udp(up: SocketAddr, bytes: &[u8], sent: &Message) -> Result<Message, UpstreamError> {
    let bind: SocketAddr = if up.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let sock = tokio::net::UdpSocket::bind(bind).await?;
    sock.connect(up).await?;
    sock.send(bytes).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = sock.recv(&mut buf).await?;
        // Anything that is not the answer to this query (spoofed, late) is ignored.
        if let Ok(m) = Message::from_vec(&buf[..n])
            && answers(sent, &m)
        {
            return Ok(m);
        }
    }
}

async fn ask_tcp(up: SocketAddr, bytes: &[u8], sent: &Message) -> Result<Message, UpstreamError> {
    let mut s = tokio::net::TcpStream::connect(up).await?;
    let len =
        u16::try_from(bytes.len()).map_err(|_| UpstreamError::Decode("query too large".into()))?;
    s.write_all(&len.to_be_bytes()).await?;
    s.write_all(bytes).await?;
    let n = s.read_u16().await? as usize;
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).await?;
    let m = Message::from_vec(&buf).map_err(|e| UpstreamError::Decode(e.to_string()))?;
    if !answers(sent, &m) {
        return Err(UpstreamError::Decode("answer to another query".into()));
    }
    Ok(m)
}

/// The upstream resolvers in a resolv.conf text, without the cluster DNS address itself (a
/// node whose resolver is the cluster DNS would loop).
pub fn upstreams_from_resolv_conf(text: &str, exclude: std::net::IpAddr) -> Vec<SocketAddr> {
    let (servers, _, _) = crate::network::parse_resolv_conf(text);
    servers
        .iter()
        .filter_map(|s| s.split('%').next()?.parse::<std::net::IpAddr>().ok())
        .filter(|ip| *ip != exclude)
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use hickory_proto::op::{MessageType, OpCode, Query};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{RData, Record};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn query(name: &str) -> Message {
        let mut m = Message::new(4242, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        m
    }

    /// A real upstream on loopback that answers every A query with 192.0.2.10 (TTL 60) and
    /// counts the queries it got.
    async fn upstream() -> (SocketAddr, Arc<AtomicUsize>) {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&count);
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                c.fetch_add(1, Ordering::SeqCst);
                let req = Message::from_vec(&buf[..n]).unwrap();
                let mut resp = Message::response(req.metadata.id, OpCode::Query);
                resp.queries = req.queries.clone();
                let name = req.queries[0].name().clone();
                resp.add_answer(Record::from_rdata(
                    name,
                    60,
                    RData::A(A([192, 0, 2, 10].into())),
                ));
                let _ = sock.send_to(&resp.to_vec().unwrap(), from).await;
            }
        });
        (addr, count)
    }

    #[tokio::test]
    async fn an_upstream_answer_is_relayed_with_the_clients_id_then_cached() {
        let (addr, count) = upstream().await;
        let f = Forwarder::new(vec![addr], Duration::from_secs(2));
        let m = f.resolve(&query("example.org."), false).await;
        assert_eq!(m.metadata.id, 4242);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(&m.answers[0].data, &RData::A(A([192, 0, 2, 10].into())));
        let again = f.resolve(&query("EXAMPLE.org."), false).await;
        assert_eq!(again.answers.len(), 1);
        assert_eq!(
            count.load(Ordering::SeqCst),
            1,
            "the second query is a cache hit"
        );
    }

    #[tokio::test]
    async fn no_upstream_means_servfail_at_once() {
        let f = Forwarder::new(vec![], Duration::from_secs(2));
        let started = Instant::now();
        let m = f.resolve(&query("example.org."), false).await;
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        assert!(started.elapsed() < Duration::from_millis(100));
    }

    #[tokio::test]
    async fn a_silent_upstream_gives_servfail_after_the_timeout_and_the_next_one_is_tried() {
        // Bound but never read: queries to it go unanswered.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let f = Forwarder::new(
            vec![silent.local_addr().unwrap()],
            Duration::from_millis(200),
        );
        let started = Instant::now();
        let m = f.resolve(&query("example.org."), false).await;
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        assert!(started.elapsed() < Duration::from_secs(1));

        let (good, _) = upstream().await;
        let f = Forwarder::new(
            vec![silent.local_addr().unwrap(), good],
            Duration::from_millis(200),
        );
        let m = f.resolve(&query("example.org."), false).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    }

    #[test]
    fn upstreams_come_from_nameserver_lines_without_the_cluster_dns() {
        let text = "# generated\nsearch example.org\nnameserver 192.0.2.53\nnameserver 10.96.0.10\nnameserver fe80::1%eth0\noptions ndots:1\n";
        let ups = upstreams_from_resolv_conf(text, "10.96.0.10".parse().unwrap());
        assert_eq!(
            ups,
            vec![
                "192.0.2.53:53".parse::<SocketAddr>().unwrap(),
                "[fe80::1]:53".parse().unwrap()
            ]
        );
    }
}
