//! skiff-agent: the per-node half of skiff. Today it registers the Node, keeps its Lease and
//! Ready condition fresh, and reports the node's addresses and capacity; pods, the pod network,
//! the overlay and the service proxy build on it.

pub mod client;
pub mod dns;
pub mod iptables;
pub mod kubelet;
pub mod metrics;
pub mod network;
pub mod node;
pub mod pods;
pub mod proxy;
