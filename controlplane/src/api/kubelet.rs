//! pods/log, pods/exec and pods/attach: checked here against the pod (as kube-apiserver does),
//! then proxied to the kubelet endpoint of the pod's node. The node's InternalIP and
//! `status.daemonEndpoints.kubeletEndpoint.Port` say where; its certificate is pinned by the
//! SHA-256 the agent publishes on the Node; the controlplane authenticates with a client
//! certificate signed by the cluster CA. Upgraded connections (exec's WebSocket) are spliced
//! byte for byte, so the stream protocol is the agent's business.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header, request::Parts};
use axum::response::Response;
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::Value;

use super::Api;
use super::errors::{ApiError, ApiResult};
use crate::resources;

/// Node annotation with the hex SHA-256 of the agent's serving certificate.
pub const CERT_ANNOTATION: &str = "skiff.io/kubelet-cert-sha256";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Request headers the agent needs to see (upgrade negotiation, content types).
const FORWARDED: &[&str] = &[
    "upgrade",
    "connection",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "x-stream-protocol-version",
    "accept",
    "content-type",
];

/// The controlplane's client certificate and key (PEM).
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Which subresource is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Log,
    Exec,
    Attach,
}

/// The container a request is for: the one named, or the only one. Kubernetes' wording.
pub fn pick_container(pod: &Value, name: &str, requested: Option<&str>) -> ApiResult<String> {
    let names = |field: &str| -> Vec<String> {
        pod.pointer(&format!("/spec/{field}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_owned))
            .collect()
    };
    let (apps, inits) = (names("containers"), names("initContainers"));
    match requested.filter(|c| !c.is_empty()) {
        Some(c) if apps.iter().chain(&inits).any(|n| n == c) => Ok(c.to_owned()),
        Some(c) => Err(ApiError::bad_request(format!(
            "container {c} is not valid for pod {name}"
        ))),
        None if apps.len() == 1 => Ok(apps[0].clone()),
        None => {
            let mut msg = format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                apps.join(" ")
            );
            if !inits.is_empty() {
                msg.push_str(&format!(
                    " or one of the init containers: [{}]",
                    inits.join(" ")
                ));
            }
            Err(ApiError::bad_request(msg))
        }
    }
}

/// Where a node's kubelet endpoint is and the certificate fingerprint it must present.
pub fn endpoint_of(node: &Value) -> Option<(SocketAddr, String)> {
    let ip: IpAddr = node
        .pointer("/status/addresses")?
        .as_array()?
        .iter()
        .find(|a| a["type"] == "InternalIP")?["address"]
        .as_str()?
        .parse()
        .ok()?;
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")?
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)?;
    let sha = node
        .pointer("/metadata/annotations")?
        .get(CERT_ANNOTATION)?
        .as_str()?
        .to_ascii_lowercase();
    Some((SocketAddr::new(ip, port), sha))
}

/// Accepts exactly the certificate whose SHA-256 the node published.
#[derive(Debug)]
struct Pinned {
    sha256: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = ring::digest::digest(&ring::digest::SHA256, end_entity.as_ref());
        let hex: String = got.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        if hex == self.sha256 {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn client_config(identity: &Identity, sha256: String) -> ApiResult<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(ApiError::internal)?;
    let key =
        PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).map_err(ApiError::internal)?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(ApiError::internal)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned { sha256, provider }))
        .with_client_auth_cert(chain, key)
        .map_err(ApiError::internal)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

fn unavailable(node: &str, why: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "ServiceUnavailable",
        format!("cannot reach the agent of node {node}: {why}; is its skiff-agent running?"),
    )
}

/// Serves `stream` for pod `ns/name` by proxying it to the pod's node.
pub async fn proxy(
    api: &Arc<Api>,
    ns: &str,
    name: &str,
    stream: Stream,
    mut parts: Parts,
) -> ApiResult<Response> {
    let pods = resources::find("", "v1", "pods").ok_or_else(|| ApiError::internal("no pods"))?;
    let pod = api.get_object(pods, Some(ns), name).await?;
    let query = super::router::Query::parse(parts.uri.query())?;
    let container = pick_container(&pod, name, query.get("container"))?;
    let node = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or("");
    if node.is_empty() {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    let phase = pod
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("");
    if stream != Stream::Log && matches!(phase, "Succeeded" | "Failed") {
        let verb = if stream == Stream::Exec {
            "exec into"
        } else {
            "attach to"
        };
        return Err(ApiError::bad_request(format!(
            "cannot {verb} a container in a completed pod; current phase is {phase}"
        )));
    }
    let uid = pod
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("");
    let nodes = resources::find("", "v1", "nodes").ok_or_else(|| ApiError::internal("no nodes"))?;
    let node_obj = api
        .cache
        .get(&nodes.key(None, node))
        .map(|o| o.value())
        .ok_or_else(|| unavailable(node, "the Node object is gone"))?;
    let (addr, sha256) = endpoint_of(&node_obj)
        .ok_or_else(|| unavailable(node, "the Node reports no kubelet endpoint"))?;
    let identity = api
        .kubelet_identity
        .get()
        .ok_or_else(|| ApiError::internal("the controlplane has no kubelet client certificate"))?;
    let tls = client_config(identity, sha256)?;

    let upgrading = parts.headers.contains_key(header::UPGRADE);
    let client_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    if upgrading && client_upgrade.is_none() {
        return Err(ApiError::bad_request(
            "this stream needs an HTTP/1.1 connection upgrade (WebSocket)",
        ));
    }
    let kind = match stream {
        Stream::Log => "containerLogs",
        Stream::Exec => "exec",
        Stream::Attach => "attach",
    };
    let mut target = format!("/{kind}/{ns}/{name}/{uid}/{container}");
    if let Some(q) = parts.uri.query() {
        target.push('?');
        target.push_str(q);
    }
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| unavailable(node, format!("connecting to {addr} timed out")))?
        .map_err(|e| unavailable(node, format!("{addr}: {e}")))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let tls = tokio::time::timeout(
        CONNECT_TIMEOUT,
        connector.connect(ServerName::IpAddress(addr.ip().into()), tcp),
    )
    .await
    .map_err(|_| unavailable(node, "the TLS handshake timed out"))?
    .map_err(|e| unavailable(node, format!("TLS with {addr}: {e}")))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| unavailable(node, e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("kubelet connection: {e}");
        }
    });
    let mut req = http::Request::builder()
        .method(parts.method.clone())
        .uri(target)
        .header(header::HOST, addr.to_string());
    for h in FORWARDED {
        for v in parts.headers.get_all(*h) {
            req = req.header(*h, v);
        }
    }
    let req = req
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(ApiError::internal)?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| unavailable(node, e))?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (mut p, body) = resp.into_parts();
        // Hop-by-hop headers of the agent's connection mean nothing to ours (or break HTTP/2).
        for h in [
            header::CONNECTION,
            header::TRANSFER_ENCODING,
            header::UPGRADE,
            header::HeaderName::from_static("keep-alive"),
        ] {
            p.headers.remove(h);
        }
        return Ok(Response::from_parts(p, Body::new(body)));
    }
    let Some(client_upgrade) = client_upgrade else {
        return Err(ApiError::bad_request(
            "this stream needs an HTTP/1.1 connection upgrade (WebSocket)",
        ));
    };
    let mut out = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    for (k, v) in resp.headers() {
        out = out.header(k, v);
    }
    let agent_upgrade = hyper::upgrade::on(resp);
    tokio::spawn(async move {
        let (agent, client) = match (agent_upgrade.await, client_upgrade.await) {
            (Ok(a), Ok(c)) => (a, c),
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!("stream upgrade failed: {e}");
                return;
            }
        };
        // Either side closing (or failing) ends both: the agent then closes the command's streams.
        let (mut a, mut c) = (TokioIo::new(agent), TokioIo::new(client));
        if let Err(e) = tokio::io::copy_bidirectional(&mut a, &mut c).await {
            tracing::debug!("stream ended: {e}");
        }
    });
    out.header(header::CONTENT_LENGTH, HeaderValue::from_static("0"))
        .body(Body::empty())
        .map_err(ApiError::internal)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn the_container_is_the_named_or_the_only_one() {
        let one = json!({"spec": {"containers": [{"name": "web"}]}});
        assert_eq!(pick_container(&one, "p", None).unwrap(), "web");
        assert_eq!(pick_container(&one, "p", Some("")).unwrap(), "web");
        let e = pick_container(&one, "p", Some("db")).unwrap_err();
        assert_eq!(e.message, "container db is not valid for pod p");
        let two = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}], "initContainers": [{"name": "i"}]}});
        let e = pick_container(&two, "p", None).unwrap_err();
        assert_eq!(e.code, StatusCode::BAD_REQUEST);
        assert_eq!(
            e.message,
            "a container name must be specified for pod p, choose one of: [a b] or one of the init containers: [i]"
        );
        assert_eq!(pick_container(&two, "p", Some("i")).unwrap(), "i");
    }

    #[test]
    fn the_endpoint_needs_address_port_and_fingerprint() {
        let node = json!({"metadata": {"annotations": {CERT_ANNOTATION: "AB"}},
            "status": {"addresses": [{"type": "Hostname", "address": "n"}, {"type": "InternalIP", "address": "10.0.0.5"}],
                       "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}}}});
        let (addr, sha) = endpoint_of(&node).unwrap();
        assert_eq!(addr.to_string(), "10.0.0.5:10250");
        assert_eq!(sha, "ab");
        let mut no_port = node.clone();
        no_port["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] = json!(0);
        assert!(endpoint_of(&no_port).is_none());
        let mut no_pin = node;
        no_pin["metadata"]["annotations"] = json!({});
        assert!(endpoint_of(&no_pin).is_none());
    }
}
