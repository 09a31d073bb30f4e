//! Stale UDP conntrack entries. A UDP "connection" keeps its NAT binding as long as packets
//! flow, so when a backend goes away its clients would keep sending into the void; and packets
//! sent to a Service while it had no endpoint leave an un-NATed entry that would outlive the
//! first endpoint. Both are deleted with the `conntrack` tool, with kube-proxy's filters.

use std::process::{Command, Stdio};

use super::model::{Protocol, ServicePort};

/// `conntrack` argument lists that clear what `old -> new` left stale.
pub fn stale_entries(old: &[ServicePort], new: &[ServicePort]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for n in new.iter().filter(|p| p.protocol == Protocol::Udp) {
        let Some(vip) = n.cluster_ip else { continue };
        let o = old
            .iter()
            .find(|o| o.name == n.name && o.protocol == n.protocol);
        let before: Vec<_> = o.map(|o| o.cluster_endpoints()).unwrap_or_default();
        let after = n.cluster_endpoints();
        let dests: Vec<String> = std::iter::once(vip)
            .chain(n.external_ips.iter().copied())
            .map(|ip| ip.to_string())
            .collect();
        if before.is_empty() && !after.is_empty() {
            // Entries made while the service rejected everything.
            for d in &dests {
                out.push(args(&["--orig-dst", d]));
            }
            if let Some(np) = n.node_port {
                out.push(args(&["--dport", &np.to_string()]));
            }
        }
        for gone in before
            .iter()
            .filter(|e| !after.iter().any(|a| a.ip == e.ip))
        {
            let ep = gone.ip.to_string();
            for d in &dests {
                out.push(args(&["--orig-dst", d, "--dst-nat", &ep]));
            }
            if let Some(np) = n.node_port {
                out.push(args(&["--dport", &np.to_string(), "--dst-nat", &ep]));
            }
        }
    }
    // A UDP service that disappeared: its endpoints are stale too.
    for o in old.iter().filter(|p| p.protocol == Protocol::Udp) {
        if new
            .iter()
            .any(|n| n.name == o.name && n.protocol == o.protocol)
        {
            continue;
        }
        if let Some(vip) = o.cluster_ip {
            for e in o.cluster_endpoints() {
                out.push(args(&[
                    "--orig-dst",
                    &vip.to_string(),
                    "--dst-nat",
                    &e.ip.to_string(),
                ]));
            }
        }
    }
    out
}

fn args(filter: &[&str]) -> Vec<String> {
    ["-D", "-p", "udp"]
        .iter()
        .chain(filter)
        .map(|s| (*s).to_owned())
        .collect()
}

/// Runs the deletions; "no entries" is not an error. Returns how many commands failed to run.
pub fn clear(lists: &[Vec<String>]) -> usize {
    let mut failed = 0;
    for a in lists {
        match Command::new("conntrack")
            .args(a)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
        {
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(
                    "cannot run conntrack ({e}); stale UDP entries stay until they time out. Install conntrack (cargo xtask setup does)"
                );
                failed += 1;
            }
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::net::Ipv4Addr;

    use super::*;
    use crate::proxy::model::{Endpoint, ServiceKey};

    fn udp(eps: &[u8]) -> ServicePort {
        ServicePort {
            service: ServiceKey {
                namespace: "default".into(),
                name: "dns".into(),
            },
            name: "dns".into(),
            protocol: Protocol::Udp,
            cluster_ip: Some(Ipv4Addr::new(10, 96, 0, 10)),
            port: 53,
            node_port: Some(30053),
            external_ips: vec![],
            affinity_timeout: None,
            external_local: false,
            internal_local: false,
            health_check_node_port: None,
            endpoints: eps
                .iter()
                .map(|i| Endpoint {
                    ip: Ipv4Addr::new(10, 244, 1, *i),
                    port: 53,
                    ready: true,
                    serving: true,
                    terminating: false,
                    local: false,
                })
                .collect(),
        }
    }

    #[test]
    fn a_removed_backend_loses_its_entries() {
        let got = stale_entries(&[udp(&[1, 2])], &[udp(&[2, 3])]);
        assert_eq!(
            got,
            vec![
                args(&["--orig-dst", "10.96.0.10", "--dst-nat", "10.244.1.1"]),
                args(&["--dport", "30053", "--dst-nat", "10.244.1.1"]),
            ]
        );
    }

    #[test]
    fn a_first_backend_clears_entries_made_while_rejecting() {
        let got = stale_entries(&[udp(&[])], &[udp(&[1])]);
        assert_eq!(
            got,
            vec![
                args(&["--orig-dst", "10.96.0.10"]),
                args(&["--dport", "30053"])
            ]
        );
        assert!(stale_entries(&[udp(&[1])], &[udp(&[1])]).is_empty());
    }

    #[test]
    fn tcp_services_need_nothing() {
        let mut p = udp(&[1]);
        p.protocol = Protocol::Tcp;
        assert!(stale_entries(std::slice::from_ref(&p), &[]).is_empty());
    }
}
