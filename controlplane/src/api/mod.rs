//! The Kubernetes API: one generic handler over the resource registry.
//!
//! Request flow: authentication middleware -> `router::dispatch` parses the path into a
//! (resource, namespace, name, subresource) target -> `handler` runs the verb against the
//! store (writes) or the watch cache (lists, watches) -> objects or `Status` errors go back
//! as JSON, or as a `Table` when kubectl asks for one.

pub mod allocator;
pub mod cache;
pub mod discovery;
pub mod errors;
mod fuzz;
pub mod handler;
pub mod kubelet;
pub mod openapi;
pub mod patch;
pub mod protobuf;
pub mod router;
pub mod selector;
pub mod smp;
pub mod watch;

use std::collections::HashSet;
use std::sync::Arc;

use crate::store::Store;
use cache::Cache;

/// Shared state of the API server.
pub struct Api {
    pub store: Arc<dyn Store>,
    pub cache: Arc<Cache>,
    /// Bearer tokens that may use the API.
    pub tokens: HashSet<String>,
    /// Address clients should use, for /api's serverAddressByClientCIDRs.
    pub advertise: String,
    /// Token of the in-process clients (controllers, scheduler); never leaves the process.
    pub internal_token: String,
    /// Writes that need cluster-wide state (Service IPs and node ports).
    pub admission: allocator::Admission,
    /// The client certificate for node agents' kubelet endpoints (pods/log, pods/exec); set
    /// once at start by the server.
    pub kubelet_identity: std::sync::OnceLock<kubelet::Identity>,
}

impl Api {
    pub async fn new(
        store: Arc<dyn Store>,
        tokens: HashSet<String>,
        advertise: String,
    ) -> Result<Arc<Self>, crate::store::StoreError> {
        Self::with_settings(store, tokens, advertise, &Default::default()).await
    }

    /// Like `new`, for a cluster with the given settings (the service range).
    pub async fn with_settings(
        store: Arc<dyn Store>,
        mut tokens: HashSet<String>,
        advertise: String,
        settings: &crate::controllers::runtime::Settings,
    ) -> Result<Arc<Self>, crate::store::StoreError> {
        let cache = Cache::start(Arc::clone(&store)).await?;
        let internal_token = uuid::Uuid::new_v4().simple().to_string();
        tokens.insert(internal_token.clone());
        Ok(Arc::new(Self {
            store,
            cache,
            tokens,
            advertise,
            internal_token,
            admission: allocator::Admission::new(settings),
            kubelet_identity: std::sync::OnceLock::new(),
        }))
    }
}
