//! Wiring of the controlplane process: store, API, TLS listener, background loops.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;

use crate::api::Api;
use crate::api::handler::decode_object;
use crate::controllers;
use crate::pki::{Pki, PkiError};
use crate::resources;
use crate::store::sqlite::SqliteStore;
use crate::store::{Store, StoreError};

#[derive(Clone, Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Extra names/IPs for the serving certificate.
    pub tls_sans: Vec<String>,
    /// How often history older than the previous tick is compacted away.
    pub compaction_interval: Duration,
    /// What the controllers need to know about the cluster (CIDRs, timeouts).
    pub settings: controllers::runtime::Settings,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}; is another process using the port?")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("the server stopped: {0}")]
    Serve(std::io::Error),
}

/// The namespaces every cluster has from the first start.
const SYSTEM_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

async fn bootstrap(api: &Api) -> Result<(), ServerError> {
    let Some(ns) = resources::find("", "v1", "namespaces") else {
        return Ok(());
    };
    for name in SYSTEM_NAMESPACES {
        if api.cache.get(&ns.key(None, name)).is_some() {
            continue;
        }
        let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        let decoded = decode_object(ns, obj, crate::api::handler::FieldValidation::Strict)
            .map_err(|e| ServerError::Tls(e.to_string()))?
            .0;
        match api.create_object(ns, None, decoded, false).await {
            Ok(_) => {}
            Err(e) if e.reason == "AlreadyExists" => {}
            Err(e) => tracing::error!("creating namespace {name}: {e}"),
        }
    }
    Ok(())
}

/// A running controlplane (for tests and the binary).
pub struct Running {
    pub addr: SocketAddr,
    pub kubeconfig: PathBuf,
    pub api: Arc<Api>,
    pub handle: axum_server::Handle<SocketAddr>,
    pub task: tokio::task::JoinHandle<Result<(), ServerError>>,
}

pub async fn start(cfg: Config) -> Result<Running, ServerError> {
    std::fs::create_dir_all(&cfg.data_dir).map_err(|source| ServerError::DataDir {
        path: cfg.data_dir.clone(),
        source,
    })?;
    let listener =
        std::net::TcpListener::bind(cfg.listen).map_err(|source| ServerError::Listen {
            addr: cfg.listen,
            source,
        })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| ServerError::Listen {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ServerError::Listen {
            addr: cfg.listen,
            source,
        })?;

    let mut sans = cfg.tls_sans.clone();
    if !addr.ip().is_unspecified() {
        sans.push(addr.ip().to_string());
    }
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        sans.push(h.trim().to_owned());
    }
    let pki = Pki::load_or_create(&cfg.data_dir, &sans)?;
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        addr.ip().to_string()
    };
    let server_url = match addr {
        SocketAddr::V4(_) => format!("https://{host}:{}", addr.port()),
        SocketAddr::V6(_) => format!("https://[{host}]:{}", addr.port()),
    };
    let kubeconfig = pki.write_kubeconfig(&cfg.data_dir, &server_url)?;

    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&cfg.data_dir.join("state.db"))?);
    let tokens: HashSet<String> = [pki.admin_token.clone(), pki.node_token.clone()].into();
    let api = Api::with_settings(
        Arc::clone(&store),
        tokens,
        format!("{host}:{}", addr.port()),
        &cfg.settings,
    )
    .await?;
    let _ = api.kubelet_identity.set(crate::api::kubelet::Identity {
        cert_pem: pki.client_cert_pem.clone(),
        key_pem: pki.client_key_pem.clone(),
    });
    bootstrap(&api).await?;
    if let Err(e) = crate::api::allocator::bootstrap_services(&api, &cfg.settings).await {
        tracing::error!("creating the kubernetes and kube-dns Services: {e}");
    }
    let identity = controlplane_identity(&cfg.data_dir)?;
    controllers::spawn_builtin(Arc::clone(&api), cfg.settings.clone(), identity);
    tokio::spawn(compact_periodically(
        Arc::clone(&store),
        cfg.compaction_interval,
    ));

    let tls = tls_config(&pki)?;
    let handle = axum_server::Handle::new();
    let app = crate::api::router::router(Arc::clone(&api));
    let server = axum_server::from_tcp_rustls(
        listener,
        axum_server::tls_rustls::RustlsConfig::from_config(tls),
    )
    .map_err(|source| ServerError::Listen {
        addr: cfg.listen,
        source,
    })?
    .handle(handle.clone());
    let task = tokio::spawn(async move {
        server
            .serve(app.into_make_service())
            .await
            .map_err(ServerError::Serve)
    });
    Ok(Running {
        addr,
        kubeconfig,
        api,
        handle,
        task,
    })
}

/// This controlplane's name in leader election: the host name plus an id kept in the data dir.
fn controlplane_identity(dir: &std::path::Path) -> Result<String, ServerError> {
    let path = dir.join("controlplane-id");
    let id = match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => s.trim().to_owned(),
        _ => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            let id = format!("{}_{}", host.trim(), uuid::Uuid::new_v4().simple());
            std::fs::write(&path, &id).map_err(|source| ServerError::DataDir {
                path: path.clone(),
                source,
            })?;
            id
        }
    };
    Ok(id)
}

fn tls_config(pki: &Pki) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pki.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| ServerError::Tls(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes())
        .map_err(|e| ServerError::Tls(e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ServerError::Tls(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| ServerError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Like kube-apiserver's etcd compaction: every interval, drop history older than what the
/// previous tick saw, so watchers get at least one interval to catch up.
async fn compact_periodically(store: Arc<dyn Store>, every: Duration) {
    let mut previous = 0;
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        if previous > 0
            && let Err(e) = store.compact(previous).await
        {
            tracing::warn!("compaction to revision {previous} failed: {e}");
        }
        match store.current_revision().await {
            Ok(r) => previous = r,
            Err(e) => tracing::warn!("reading the store revision failed: {e}"),
        }
    }
}
