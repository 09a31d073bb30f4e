//! The node's view of its network, through netlink (no `ip` shell-outs).

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::route::{RouteAddress, RouteAttribute};
use rtnetlink::RouteMessageBuilder;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[from] std::io::Error),
    #[error("interface {0} does not exist; pass an existing interface with --iface")]
    NoSuchLink(String),
    #[error("interface {0} has no IPv4 address; give it one or pass another --iface")]
    NoAddress(String),
    #[error("no IPv4 default route to pick the node's interface from; pass --iface")]
    NoDefaultRoute,
}

/// The interface the node talks to other nodes on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uplink {
    pub name: String,
    pub index: u32,
    pub address: Ipv4Addr,
    pub mtu: u32,
}

fn connect() -> Result<rtnetlink::Handle, NetworkError> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(conn);
    Ok(handle)
}

/// Finds `iface` (or, when `None`, the interface of the IPv4 default route) and its address.
pub async fn uplink(iface: Option<&str>) -> Result<Uplink, NetworkError> {
    let handle = connect()?;
    let index = match iface {
        Some(name) => {
            let mut links = handle.link().get().match_name(name.to_owned()).execute();
            match links.try_next().await {
                Ok(Some(l)) => l.header.index,
                Ok(None) | Err(rtnetlink::Error::NetlinkError(_)) => {
                    return Err(NetworkError::NoSuchLink(name.to_owned()));
                }
                Err(e) => return Err(e.into()),
            }
        }
        None => {
            let mut routes = handle
                .route()
                .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
                .execute();
            let mut found = None;
            while let Some(r) = routes.try_next().await? {
                let is_default = r.header.destination_prefix_length == 0
                    && !r.attributes.iter().any(|a| matches!(a, RouteAttribute::Destination(RouteAddress::Inet(d)) if !d.is_unspecified()));
                if is_default
                    && let Some(oif) = r.attributes.iter().find_map(|a| match a {
                        RouteAttribute::Oif(i) => Some(*i),
                        _ => None,
                    })
                {
                    found = Some(oif);
                    break;
                }
            }
            found.ok_or(NetworkError::NoDefaultRoute)?
        }
    };
    let mut links = handle.link().get().match_index(index).execute();
    let link = links
        .try_next()
        .await?
        .ok_or_else(|| NetworkError::NoSuchLink(format!("#{index}")))?;
    let name = link
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap_or_default();
    let mtu = link
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })
        .unwrap_or(1500);
    let mut addrs = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    while let Some(a) = addrs.try_next().await? {
        let v4 = a.attributes.iter().find_map(|attr| match attr {
            AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
            _ => None,
        });
        if let Some(address) = v4 {
            return Ok(Uplink {
                name,
                index,
                address,
                mtu,
            });
        }
    }
    Err(NetworkError::NoAddress(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn loopback_is_found_with_its_address() {
        let up = uplink(Some("lo"))
            .await
            .expect("lo exists in every network namespace");
        assert_eq!(up.address, Ipv4Addr::LOCALHOST);
        assert_eq!(up.name, "lo");
    }

    #[tokio::test]
    async fn a_missing_interface_is_a_clear_error() {
        let err = uplink(Some("skiff-nope0")).await.expect_err("no such link");
        assert!(
            err.to_string().contains("skiff-nope0 does not exist"),
            "{err}"
        );
    }
}
