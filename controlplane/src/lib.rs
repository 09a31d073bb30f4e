//! skiff-controlplane: a Kubernetes-compatible API server over an embedded store, with the
//! controllers that run next to it. See docs/ARCHITECTURE.md.

pub mod api;
pub mod controllers;
pub mod pki;
pub mod resources;
pub mod scheduler;
pub mod server;
pub mod store;
