//! healthCheckNodePort servers for Services with externalTrafficPolicy Local: load balancers
//! probe every node and send traffic only where the answer is 200 (a local endpoint exists),
//! with kube-proxy's JSON body.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::http::StatusCode;
use axum::response::IntoResponse;

use super::model::ServiceKey;

struct Server {
    service: ServiceKey,
    local: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
pub struct HealthServers {
    servers: BTreeMap<u16, Server>,
}

/// The answer for one service: 200 with local endpoints, 503 without.
pub fn answer(service: &ServiceKey, local: usize) -> (StatusCode, String) {
    let body = serde_json::json!({
        "service": {"namespace": service.namespace, "name": service.name},
        "localEndpoints": local,
    })
    .to_string();
    let code = if local > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body)
}

impl HealthServers {
    /// Makes the running servers match `want` (port -> service and its local endpoint count).
    pub async fn update(&mut self, want: &BTreeMap<u16, (ServiceKey, usize)>) {
        let gone: Vec<u16> = self
            .servers
            .iter()
            .filter(|(port, s)| want.get(port).is_none_or(|(k, _)| *k != s.service))
            .map(|(p, _)| *p)
            .collect();
        for port in gone {
            if let Some(s) = self.servers.remove(&port) {
                s.task.abort();
                // Wait until its listener is closed: the port may be bound again below.
                let _ = s.task.await;
            }
        }
        for (port, (key, local)) in want {
            if let Some(s) = self.servers.get(port) {
                s.local.store(*local, Ordering::Relaxed);
                continue;
            }
            let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, *port));
            let listener = match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(service = %key, "cannot serve healthCheckNodePort {port}: {e}");
                    continue;
                }
            };
            let count = Arc::new(AtomicUsize::new(*local));
            let (k, c) = (key.clone(), Arc::clone(&count));
            let app = axum::Router::new().fallback(move || {
                let (k, c) = (k.clone(), Arc::clone(&c));
                async move {
                    let (code, body) = answer(&k, c.load(Ordering::Relaxed));
                    (code, [("content-type", "application/json")], body).into_response()
                }
            });
            let task = tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            self.servers.insert(
                *port,
                Server {
                    service: key.clone(),
                    local: count,
                    task,
                },
            );
        }
    }
}

impl Drop for HealthServers {
    fn drop(&mut self) {
        for s in self.servers.values() {
            s.task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn get(port: u16) -> String {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn answers_follow_the_local_endpoint_count() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let key = ServiceKey {
            namespace: "default".into(),
            name: "web".into(),
        };
        let mut hs = HealthServers::default();
        hs.update(&BTreeMap::from([(port, (key.clone(), 2))])).await;
        let r = get(port).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r.contains("\"localEndpoints\":2"), "{r}");
        hs.update(&BTreeMap::from([(port, (key, 0))])).await;
        assert!(get(port).await.starts_with("HTTP/1.1 503"));
        hs.update(&BTreeMap::new()).await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
        );
    }
}
