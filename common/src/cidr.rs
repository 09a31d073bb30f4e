//! CIDR arithmetic both halves need (Service IPs, pod CIDRs, pod addresses).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// The `n`-th address of a network (0 = the network address).
pub fn nth_addr(net: &Ipv4Net, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()).saturating_add(n))
}
