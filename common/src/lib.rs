//! skiff-common: logic the controlplane and the agent share, kept tiny and free of I/O.

pub mod quantity;

pub mod cidr;
pub mod hash;
pub mod steering;
