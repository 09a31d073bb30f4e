//! Node IPAM: every Node gets `spec.podCIDR` (and `spec.podCIDRs`), the next free block of
//! `--node-cidr-mask-size` bits carved from `--cluster-cidr`, as kube-controller-manager's
//! range allocator does.
//!
//! The used set is derived from the nodes themselves (their podCIDR is the record), so a
//! restart never hands out a block twice: no allocation happens before the node cache holds
//! every node. Blocks of deleted nodes are free again; like Kubernetes' cidrset the cursor
//! rotates, so a freed block is reused once the cursor comes back around (or the range is
//! otherwise full).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use serde_json::json;

use super::runtime::Context;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no free /{size} pod CIDR left in the cluster CIDR {net} for node {node}")]
    Exhausted {
        net: Ipv4Net,
        size: u8,
        node: String,
    },
    #[error("writing spec.podCIDR of node {node} failed: {source}")]
    Patch { node: String, source: kube::Error },
    #[error("the node cache stopped before it was filled")]
    CacheGone,
}

/// Which blocks of the cluster CIDR are taken, and by which node.
#[derive(Debug)]
pub struct Allocator {
    net: Ipv4Net,
    size: u8,
    count: u64,
    next: u64,
    used: HashMap<u64, String>,
    by_node: HashMap<String, u64>,
}

impl Allocator {
    pub fn new(net: Ipv4Net, size: u8) -> Self {
        let bits = u32::from(size.saturating_sub(net.prefix_len()));
        let count = if size < net.prefix_len() || size > 32 {
            0
        } else {
            1u64 << bits.min(32)
        };
        Self {
            net: net.trunc(),
            size,
            count,
            next: 0,
            used: HashMap::new(),
            by_node: HashMap::new(),
        }
    }

    fn block(&self, idx: u64) -> Option<Ipv4Net> {
        let step = 1u64 << (32 - u32::from(self.size));
        let base = u64::from(u32::from(self.net.network())) + idx * step;
        let addr = Ipv4Addr::from(u32::try_from(base).ok()?);
        Ipv4Net::new(addr, self.size).ok()
    }

    fn index_of(&self, cidr: &str) -> Option<u64> {
        let net: Ipv4Net = cidr.parse().ok()?;
        if net.prefix_len() != self.size || !self.net.contains(&net) {
            return None;
        }
        let step = 1u64 << (32 - u32::from(self.size));
        Some(
            (u64::from(u32::from(net.network())) - u64::from(u32::from(self.net.network()))) / step,
        )
    }

    /// Records that `node` holds `cidr` (a CIDR outside the range is not ours to track).
    pub fn occupy(&mut self, node: &str, cidr: &str) {
        if let Some(idx) = self.index_of(cidr) {
            self.used.insert(idx, node.to_owned());
            self.by_node.insert(node.to_owned(), idx);
        }
    }

    pub fn release(&mut self, node: &str) {
        if let Some(idx) = self.by_node.remove(node)
            && self.used.get(&idx).is_some_and(|n| n == node)
        {
            self.used.remove(&idx);
        }
    }

    /// The block for `node`: the one it already holds, or the next free one.
    pub fn allocate(&mut self, node: &str) -> Option<Ipv4Net> {
        if let Some(&idx) = self.by_node.get(node) {
            return self.block(idx);
        }
        for k in 0..self.count {
            let idx = (self.next + k) % self.count;
            if !self.used.contains_key(&idx) {
                self.next = (idx + 1) % self.count;
                self.used.insert(idx, node.to_owned());
                self.by_node.insert(node.to_owned(), idx);
                return self.block(idx);
            }
        }
        None
    }

    /// Rebuilds the used set from the nodes that exist: their recorded CIDRs, plus blocks
    /// handed out to existing nodes whose write is still in flight.
    pub fn resync<'a>(&mut self, nodes: impl Iterator<Item = (&'a str, Option<&'a str>)>) {
        let in_flight = std::mem::take(&mut self.by_node);
        self.used.clear();
        for (name, cidr) in nodes {
            match cidr {
                Some(c) => self.occupy(name, c),
                None => {
                    if let Some(&idx) = in_flight.get(name) {
                        self.used.insert(idx, name.to_owned());
                        self.by_node.insert(name.to_owned(), idx);
                    }
                }
            }
        }
    }
}

struct Ipam {
    ctx: Context,
    nodes: Store<Node>,
    /// The allocator, and whether it has been filled from the node cache yet.
    alloc: Mutex<(Allocator, bool)>,
}

impl Ipam {
    fn lock(&self) -> std::sync::MutexGuard<'_, (Allocator, bool)> {
        self.alloc.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn resync(&self, a: &mut Allocator) {
        let nodes = self.nodes.state();
        a.resync(nodes.iter().map(|n| {
            (
                n.metadata.name.as_deref().unwrap_or(""),
                n.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()),
            )
        }));
    }
}

pub async fn run(ctx: Context) {
    let api: Api<Node> = Api::all(ctx.client.clone());
    let controller = Controller::new(api, watcher::Config::default());
    let settings = Arc::clone(&ctx.settings);
    let state = Arc::new(Ipam {
        nodes: controller.store(),
        alloc: Mutex::new((
            Allocator::new(settings.cluster_cidr, settings.node_cidr_mask_size),
            false,
        )),
        ctx,
    });
    controller
        .run(reconcile, error_policy, state)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!("node IPAM: {e}");
            }
        })
        .await;
}

async fn reconcile(node: Arc<Node>, ipam: Arc<Ipam>) -> Result<Action, Error> {
    // Every existing allocation must be known before handing out a new one.
    ipam.nodes
        .wait_until_ready()
        .await
        .map_err(|_| Error::CacheGone)?;
    let name = node.metadata.name.clone().unwrap_or_default();
    let cidr = {
        let mut guard = ipam.lock();
        let (alloc, synced) = &mut *guard;
        if !*synced {
            ipam.resync(alloc);
            *synced = true;
        }
        if let Some(cidr) = node.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()) {
            alloc.occupy(&name, cidr);
            return Ok(Action::await_change());
        }
        let mut cidr = alloc.allocate(&name);
        if cidr.is_none() {
            // The range looks full: blocks of deleted nodes may be free again.
            ipam.resync(alloc);
            cidr = alloc.allocate(&name);
        }
        cidr
    };
    let settings = &ipam.ctx.settings;
    let Some(cidr) = cidr else {
        return Err(Error::Exhausted {
            net: settings.cluster_cidr,
            size: settings.node_cidr_mask_size,
            node: name,
        });
    };
    let api: Api<Node> = Api::all(ipam.ctx.client.clone());
    let patch = json!({"spec": {"podCIDR": cidr.to_string(), "podCIDRs": [cidr.to_string()]}});
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => {
            tracing::debug!(node = name, %cidr, "allocated pod CIDR");
            Ok(Action::await_change())
        }
        Err(source) => {
            ipam.lock().0.release(&name);
            Err(Error::Patch { node: name, source })
        }
    }
}

fn error_policy(_node: Arc<Node>, err: &Error, _ipam: Arc<Ipam>) -> Action {
    tracing::warn!("{err}");
    // A full range only frees up when nodes go: look again now and then, not in a hot loop.
    let after = if matches!(err, Error::Exhausted { .. }) {
        10
    } else {
        5
    };
    Action::requeue(Duration::from_secs(after))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn blocks_are_handed_out_in_order_and_never_twice() {
        let mut a = Allocator::new("10.244.0.0/16".parse().unwrap(), 24);
        assert_eq!(a.allocate("n1").unwrap().to_string(), "10.244.0.0/24");
        assert_eq!(a.allocate("n2").unwrap().to_string(), "10.244.1.0/24");
        // Asking again for the same node gives the same block.
        assert_eq!(a.allocate("n1").unwrap().to_string(), "10.244.0.0/24");
    }

    #[test]
    fn a_full_range_is_exhausted_until_a_node_goes_away() {
        let mut a = Allocator::new("10.200.0.0/23".parse().unwrap(), 24);
        assert!(a.allocate("a").is_some());
        assert!(a.allocate("b").is_some());
        assert!(a.allocate("c").is_none());
        a.resync([("b", Some("10.200.1.0/24")), ("c", None)].into_iter());
        assert_eq!(a.allocate("c").unwrap().to_string(), "10.200.0.0/24");
    }

    #[test]
    fn after_a_restart_existing_allocations_are_skipped() {
        let mut a = Allocator::new("10.244.0.0/16".parse().unwrap(), 24);
        a.resync(
            [
                ("n1", Some("10.244.0.0/24")),
                ("n2", Some("10.244.1.0/24")),
                ("x", Some("192.168.0.0/24")),
            ]
            .into_iter(),
        );
        assert_eq!(a.allocate("n3").unwrap().to_string(), "10.244.2.0/24");
    }

    #[test]
    fn resync_keeps_blocks_whose_write_is_in_flight() {
        let mut a = Allocator::new("10.244.0.0/16".parse().unwrap(), 24);
        let n1 = a.allocate("n1").unwrap();
        a.resync([("n1", None)].into_iter());
        assert_eq!(a.allocate("n1").unwrap(), n1);
        assert_ne!(a.allocate("n2").unwrap(), n1);
    }
}
