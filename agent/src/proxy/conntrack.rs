//! Stale UDP conntrack entries. A UDP "connection" keeps its NAT binding as long as packets
//! flow, so when a backend goes away its clients would keep sending into the void; and packets
//! sent to a Service while it had no endpoint leave an un-NATed entry that would outlive the
//! first endpoint. Both are deleted with the `conntrack` tool, with kube-proxy's filters.

use std::process::{Command, Stdio};

use super::model::{Protocol, ServicePort};

/// Where clients reach a port: its ClusterIP and external IPs, and its NodePort.
fn frontends(p: &ServicePort) -> (Vec<String>, Option<u16>) {
    let ips = p
        .cluster_ip
        .into_iter()
        .chain(p.external_ips.iter().copied())
        .map(|ip| ip.to_string())
        .collect();
    (ips, p.node_port)
}

/// `conntrack` argument lists that clear what `old -> new` left stale.
pub fn stale_entries(old: &[ServicePort], new: &[ServicePort]) -> Vec<Vec<String>> {
    let udp = |p: &&ServicePort| p.protocol == Protocol::Udp;
    let mut names: Vec<&str> = old
        .iter()
        .chain(new)
        .filter(udp)
        .map(|p| p.name.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    let mut out = Vec::new();
    for name in names {
        let this = |p: &&ServicePort| p.name == name && p.protocol == Protocol::Udp;
        let (o, n) = (old.iter().find(this), new.iter().find(this));
        let before = o.map(ServicePort::cluster_endpoints).unwrap_or_default();
        let after = n.map(ServicePort::cluster_endpoints).unwrap_or_default();
        if let Some(n) = n
            && before.is_empty()
            && !after.is_empty()
        {
            // Entries made while the service rejected everything: never translated, so their
            // reply comes from the frontend itself (translated ones are left alone).
            let (ips, node_port) = frontends(n);
            for d in &ips {
                out.push(args(&["--orig-dst", d, "--reply-src", d]));
            }
            if let Some(np) = node_port {
                let np = np.to_string();
                out.push(args(&["--dport", &np, "--reply-port-src", &np]));
            }
        }
        let Some(o) = o else { continue };
        let (ips, node_port) = frontends(o);
        for gone in before
            .iter()
            .filter(|e| !after.iter().any(|a| a.ip == e.ip))
        {
            let ep = gone.ip.to_string();
            for d in &ips {
                out.push(args(&["--orig-dst", d, "--dst-nat", &ep]));
            }
            if let Some(np) = node_port {
                out.push(args(&["--dport", &np.to_string(), "--dst-nat", &ep]));
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
                args(&["--orig-dst", "10.96.0.10", "--reply-src", "10.96.0.10"]),
                args(&["--dport", "30053", "--reply-port-src", "30053"])
            ]
        );
        assert!(stale_entries(&[udp(&[1])], &[udp(&[1])]).is_empty());
    }

    #[test]
    fn a_deleted_service_loses_entries_of_every_frontend() {
        let got = stale_entries(&[udp(&[1])], &[]);
        assert_eq!(
            got,
            vec![
                args(&["--orig-dst", "10.96.0.10", "--dst-nat", "10.244.1.1"]),
                args(&["--dport", "30053", "--dst-nat", "10.244.1.1"]),
            ]
        );
    }

    #[test]
    fn tcp_services_need_nothing() {
        let mut p = udp(&[1]);
        p.protocol = Protocol::Tcp;
        assert!(stale_entries(std::slice::from_ref(&p), &[]).is_empty());
    }
}
