//! Local multi-node skiff clusters on one Linux machine, as `cargo xtask cluster` and the
//! end-to-end tests use them.
//!
//! Layout of a cluster called N (all names derive from N, so `down` finds everything):
//! - namespace `skiff-N-ul` holds the underlay bridge `br0`; nodes and the host attach to it.
//!   The bridge lives in its own namespace because dockerd sets the host's FORWARD policy to
//!   DROP, which would silently eat bridged traffic in the root namespace.
//! - namespace `skiff-N-nodeI` is node `N-nodeI`: its `eth0` is on the underlay at U.(10+I) and
//!   its `skiff-agent` runs inside it. Pods are Docker containers wired into it by that agent.
//! - the host gets U.1 on veth `sk-N`; the controlplane listens there, kubectl reaches it, and
//!   nothing else is routed: the only route added to the host is U's own /24.
//! - U is a 10.213.k.0/24 that no address or route of the machine overlaps, claimed
//!   atomically under /run/skiff/underlays so concurrent clusters never share one.

pub mod cluster;
