//! iptables rules of the pod network, in chains of our own written with one
//! `iptables-restore --noflush` (which replaces only the chains it names): pod traffic leaving
//! the cluster is masqueraded (`--random-fully`), traffic between pods never is, and pod traffic
//! is accepted for forwarding even where the FORWARD policy is DROP (Docker sets it so).
//! Queries to the node's own cluster DNS address skip conntrack (as NodeLocal DNSCache does):
//! a lookup costs no conntrack entry, and a query storm cannot fill the table.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::NetworkError;
use crate::iptables::Iptables;

pub const NAT_CHAIN: &str = "SKIFF-POD-MASQ";
pub const FORWARD_CHAIN: &str = "SKIFF-POD-FORWARD";
pub const DNS_CHAIN: &str = "SKIFF-DNS-NOTRACK";

/// Whether a chain belongs to the pod network (not to the service proxy).
pub fn is_network_chain(chain: &str) -> bool {
    [NAT_CHAIN, FORWARD_CHAIN, DNS_CHAIN].contains(&chain)
}

/// The restore input for a node with `pod_cidr` in a cluster of `cluster_cidr`, answering
/// cluster DNS on `dns` itself.
pub fn rules(cluster_cidr: Ipv4Net, pod_cidr: Ipv4Net, dns: Ipv4Addr) -> String {
    let c = cluster_cidr;
    format!(
        "*raw\n\
         :{DNS_CHAIN} - [0:0]\n\
         -A {DNS_CHAIN} -d {dns}/32 -p udp --dport 53 -j NOTRACK\n\
         -A {DNS_CHAIN} -d {dns}/32 -p tcp --dport 53 -j NOTRACK\n\
         -A {DNS_CHAIN} -s {dns}/32 -p udp --sport 53 -j NOTRACK\n\
         -A {DNS_CHAIN} -s {dns}/32 -p tcp --sport 53 -j NOTRACK\n\
         COMMIT\n\
         *nat\n\
         :{NAT_CHAIN} - [0:0]\n\
         -A {NAT_CHAIN} -s {c} -d {c} -m comment --comment \"pod to pod: keep the source\" -j RETURN\n\
         -A {NAT_CHAIN} -s {c} ! -d 224.0.0.0/4 -m comment --comment \"pod leaving the cluster\" -j MASQUERADE --random-fully\n\
         -A {NAT_CHAIN} ! -s {c} -d {pod_cidr} -j RETURN\n\
         -A {NAT_CHAIN} ! -s {c} -d {c} -m comment --comment \"node to remote pods, via the overlay\" -j MASQUERADE --random-fully\n\
         COMMIT\n\
         *filter\n\
         :{FORWARD_CHAIN} - [0:0]\n\
         -A {FORWARD_CHAIN} -s {c} -j ACCEPT\n\
         -A {FORWARD_CHAIN} -d {c} -j ACCEPT\n\
         COMMIT\n"
    )
}

/// Writes the chains and makes sure POSTROUTING and FORWARD jump to them; idempotent.
/// iptables waits up to 5 s for the xtables lock, so it runs on the blocking pool: on a
/// runtime thread it would stall every task queued behind it (the service proxy's too).
pub async fn apply(
    ipt: Iptables,
    cluster_cidr: Ipv4Net,
    pod_cidr: Ipv4Net,
    dns: Ipv4Addr,
) -> Result<(), NetworkError> {
    tokio::task::spawn_blocking(move || apply_now(&ipt, cluster_cidr, pod_cidr, dns))
        .await
        .map_err(|e| {
            NetworkError::Iptables(format!("writing the pod network rules stopped: {e}"))
        })?
}

fn apply_now(
    ipt: &Iptables,
    cluster_cidr: Ipv4Net,
    pod_cidr: Ipv4Net,
    dns: Ipv4Addr,
) -> Result<(), NetworkError> {
    ipt.restore(&rules(cluster_cidr, pod_cidr, dns))?;
    for (table, hook, chain) in [
        ("raw", "PREROUTING", DNS_CHAIN),
        ("raw", "OUTPUT", DNS_CHAIN),
        ("nat", "POSTROUTING", NAT_CHAIN),
        ("filter", "FORWARD", FORWARD_CHAIN),
    ] {
        if !ipt.run(&["-t", table, "-C", hook, "-j", chain])?
            && !ipt.run(&["-t", table, "-A", hook, "-j", chain])?
        {
            return Err(NetworkError::Iptables(format!(
                "cannot add the jump from {table}/{hook} to {chain}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn pod_to_pod_is_returned_before_any_masquerade() {
        let r = rules(
            "10.244.0.0/16".parse().unwrap(),
            "10.244.3.0/24".parse().unwrap(),
            "10.96.0.10".parse().unwrap(),
        );
        let nat: Vec<&str> = r
            .lines()
            .filter(|l| l.starts_with("-A SKIFF-POD-MASQ"))
            .collect();
        assert_eq!(nat.len(), 4);
        assert!(nat[0].contains("-s 10.244.0.0/16 -d 10.244.0.0/16") && nat[0].ends_with("RETURN"));
        assert!(nat[1].ends_with("MASQUERADE --random-fully"));
        assert!(nat[2].contains("-d 10.244.3.0/24"));
        assert_eq!(r.matches("COMMIT").count(), 3);
        assert_eq!(r.matches("-j NOTRACK").count(), 4);
    }
}
