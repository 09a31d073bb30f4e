//! What every control loop needs: a `kube::Client` that reaches the API in-process (the axum
//! router as a tower service: same handler, validation and watch cache as HTTPS clients, no
//! socket), and the cluster-wide settings the controllers act on.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{AUTHORIZATION, HeaderValue};
use ipnet::Ipv4Net;

use crate::api::Api;

/// Cluster settings from the controlplane's flags.
#[derive(Clone, Debug)]
pub struct Settings {
    pub service_cidr: Ipv4Net,
    pub cluster_cidr: Ipv4Net,
    pub node_cidr_mask_size: u8,
    /// The cluster DNS service IP (reserved in the service CIDR).
    pub cluster_dns: Ipv4Addr,
    /// The cluster's DNS domain (`cluster.local`), published for node agents.
    pub cluster_domain: String,
    /// A node whose Lease is older than this is marked Ready=Unknown.
    pub node_monitor_grace: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        let service_cidr: Ipv4Net = "10.96.0.0/12".parse().unwrap_or_default();
        Self {
            cluster_dns: nth_addr(&service_cidr, 10),
            service_cidr,
            cluster_cidr: "10.244.0.0/16".parse().unwrap_or_default(),
            node_cidr_mask_size: 24,
            cluster_domain: "cluster.local".into(),
            node_monitor_grace: Duration::from_secs(40),
        }
    }
}

pub use skiff_common::cidr::nth_addr;

/// Shared by all controllers.
#[derive(Clone)]
pub struct Context {
    pub client: kube::Client,
    pub api: Arc<Api>,
    pub settings: Arc<Settings>,
    /// The process's event queue; each loop takes a handle with `events.named(component)`.
    pub events: crate::controllers::events::Recorder,
}

/// A kube client whose requests go straight into the API router.
pub fn in_process_client(api: &Arc<Api>) -> kube::Client {
    let router = crate::api::router::router(Arc::clone(api));
    let auth = HeaderValue::from_str(&format!("Bearer {}", api.internal_token))
        .unwrap_or_else(|_| HeaderValue::from_static(""));
    let service = tower::ServiceBuilder::new()
        .map_request(move |mut req: http::Request<kube::client::Body>| {
            req.headers_mut().insert(AUTHORIZATION, auth.clone());
            req.map(axum::body::Body::new)
        })
        .service(router);
    kube::Client::new(service, "default")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::sqlite::SqliteStore;
    use k8s_openapi::api::core::v1::Namespace;

    #[tokio::test]
    async fn the_in_process_client_speaks_to_the_router_without_a_socket() {
        let store = Arc::new(SqliteStore::in_memory().unwrap());
        let api = Api::new(store, Default::default(), "127.0.0.1:0".into())
            .await
            .unwrap();
        let client = in_process_client(&api);
        let namespaces: kube::Api<Namespace> = kube::Api::all(client);
        let ns =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "inproc"}})).unwrap();
        namespaces.create(&Default::default(), &ns).await.unwrap();
        let list = namespaces.list(&Default::default()).await.unwrap();
        assert_eq!(list.items.len(), 1);
        assert_eq!(
            list.items[0].status.as_ref().unwrap().phase.as_deref(),
            Some("Active")
        );
    }
}
