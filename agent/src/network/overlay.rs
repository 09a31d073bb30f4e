//! The VXLAN overlay, in flannel's scheme: one device `skiff.vxlan` (VNI 1, UDP 8472, no
//! learning, local = node IP) holding the podCIDR's network address as a /32; per remote node a
//! permanent neighbour entry (its overlay address -> its VTEP MAC), an FDB entry (that MAC ->
//! its public IP) and an onlink route to its podCIDR via its overlay address. The kernel then
//! needs no ARP or flooding across the underlay at all.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use rtnetlink::{LinkUnspec, LinkVxlan, RouteMessageBuilder};

use super::{NetworkError, Uplink, link_index};

pub const DEVICE: &str = "skiff.vxlan";
pub const VNI: u32 = 1;
pub const PORT: u16 = 8472;
/// VXLAN over IPv4 adds 50 bytes (outer IP 20 + UDP 8 + VXLAN 8 + inner Ethernet 14).
pub const OVERHEAD: u32 = 50;
pub const ANNOTATION_MAC: &str = "skiff.io/vtep-mac";
pub const ANNOTATION_IP: &str = "skiff.io/public-ip";

/// Another node as the overlay sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub cidr: Ipv4Net,
    pub mac: [u8; 6],
    pub public_ip: Ipv4Addr,
}

impl Peer {
    /// The peer's address on its overlay device: its podCIDR's network address.
    pub fn vtep_ip(&self) -> Ipv4Addr {
        self.cidr.network()
    }
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).ok())
        .collect::<Option<_>>()?;
    parts.try_into().ok()
}

/// The peers among `nodes`: every other node that has a podCIDR and has published its VTEP.
pub fn peers(nodes: &[k8s_openapi::api::core::v1::Node], me: &str) -> Vec<Peer> {
    nodes
        .iter()
        .filter(|n| n.metadata.name.as_deref() != Some(me))
        .filter_map(|n| {
            let ann = n.metadata.annotations.as_ref()?;
            Some(Peer {
                cidr: n.spec.as_ref()?.pod_cidr.as_deref()?.parse().ok()?,
                mac: parse_mac(ann.get(ANNOTATION_MAC)?)?,
                public_ip: ann.get(ANNOTATION_IP)?.parse().ok()?,
            })
        })
        .collect()
}

/// The node's VTEP MAC: random on first start, then kept in the data directory so peers'
/// entries stay valid across restarts.
pub fn stable_mac(data_dir: &Path) -> Result<[u8; 6], NetworkError> {
    let path = data_dir.join("vtep-mac");
    if let Some(mac) = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| parse_mac(s.trim()))
    {
        return Ok(mac);
    }
    let mut mac: [u8; 6] = rand::random();
    // Locally administered, unicast.
    mac[0] = (mac[0] & 0xfe) | 0x02;
    std::fs::create_dir_all(data_dir)?;
    std::fs::write(&path, format_mac(&mac))?;
    Ok(mac)
}

pub struct Overlay {
    handle: rtnetlink::Handle,
    uplink: Uplink,
    mac: [u8; 6],
    pod_cidr: Ipv4Net,
}

impl Overlay {
    pub fn new(handle: rtnetlink::Handle, uplink: Uplink, mac: [u8; 6], pod_cidr: Ipv4Net) -> Self {
        Self {
            handle,
            uplink,
            mac,
            pod_cidr,
        }
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    pub fn mtu(&self) -> u32 {
        self.uplink.mtu.saturating_sub(OVERHEAD)
    }

    /// The device, created (or recreated when someone deleted or altered it) as needed, with
    /// GRO off.
    pub async fn ensure_device(&self) -> Result<u32, NetworkError> {
        let h = &self.handle;
        let mut existing = None;
        let mut links = h.link().get().match_name(DEVICE.to_owned()).execute();
        match links.try_next().await {
            Ok(Some(l)) => existing = Some(l),
            Ok(None) | Err(rtnetlink::Error::NetlinkError(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let index = match existing {
            Some(link) if self.matches(&link.attributes) => link.header.index,
            other => {
                if let Some(link) = other {
                    tracing::info!("{DEVICE} has other settings than ours; recreating it");
                    h.link().del(link.header.index).execute().await?;
                }
                let msg = LinkVxlan::new(DEVICE, VNI)
                    .port(PORT)
                    .local(self.uplink.address)
                    .dev(self.uplink.index)
                    .learning(false)
                    .mtu(self.mtu())
                    .address(self.mac.to_vec())
                    .up()
                    .build();
                h.link().add(msg).execute().await?;
                link_index(h, DEVICE)
                    .await?
                    .ok_or_else(|| NetworkError::NoSuchLink(DEVICE.into()))?
            }
        };
        if let Err(e) = gro_off(DEVICE) {
            tracing::warn!("cannot turn off GRO on {DEVICE} (flows may arrive reordered): {e}");
        }
        self.ensure_address(index).await?;
        Ok(index)
    }

    fn matches(&self, attrs: &[LinkAttribute]) -> bool {
        let mut mac_ok = false;
        let mut vx: Vec<InfoVxlan> = Vec::new();
        for a in attrs {
            match a {
                LinkAttribute::Address(m) => mac_ok = m.as_slice() == self.mac,
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let LinkInfo::Data(InfoData::Vxlan(v)) = i {
                            vx.clone_from(v);
                        }
                    }
                }
                _ => {}
            }
        }
        mac_ok
            && vx.contains(&InfoVxlan::Id(VNI))
            && vx.contains(&InfoVxlan::Local(self.uplink.address))
            && vx.contains(&InfoVxlan::Port(PORT))
            && vx.contains(&InfoVxlan::Link(self.uplink.index))
    }

    async fn ensure_address(&self, index: u32) -> Result<(), NetworkError> {
        let h = &self.handle;
        let want = self.pod_cidr.network();
        let mut addrs = h.address().get().set_link_index_filter(index).execute();
        let mut has = false;
        while let Some(a) = addrs.try_next().await? {
            for attr in &a.attributes {
                if let AddressAttribute::Address(IpAddr::V4(ip)) = attr
                    && *ip == want
                    && a.header.prefix_len == 32
                {
                    has = true;
                }
            }
        }
        if !has {
            h.address()
                .add(index, want.into(), 32)
                .replace()
                .execute()
                .await?;
        }
        h.link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await?;
        Ok(())
    }

    /// Brings the kernel's per-peer entries in line with `peers`: adds and fixes what differs,
    /// removes entries of nodes that are gone. Returns the device's index and how many peers
    /// are programmed.
    pub async fn sync(&self, peers: &[Peer]) -> Result<(u32, usize), NetworkError> {
        let index = self.ensure_device().await?;
        let state = self.read_state(index).await?;
        let mut programmed = 0;
        for p in peers {
            let vtep = p.vtep_ip();
            let current = state.routes.get(&p.cidr) == Some(&vtep)
                && state.neighbours.get(&vtep) == Some(&p.mac)
                && state.fdb.get(&p.mac) == Some(&p.public_ip);
            if current {
                programmed += 1;
                continue;
            }
            match self.add_peer(index, p).await {
                Ok(()) => programmed += 1,
                Err(e) => tracing::warn!(peer = %p.public_ip, "programming overlay peer: {e}"),
            }
        }
        // What no peer wants any more: route first, so nothing is sent to half-removed state.
        for (cidr, _) in state
            .routes
            .iter()
            .filter(|(c, _)| !peers.iter().any(|p| p.cidr == **c))
        {
            let _ = self
                .handle
                .route()
                .del(self.route(index, *cidr))
                .execute()
                .await;
        }
        for (mac, ip) in &state.fdb {
            if !peers.iter().any(|p| p.mac == *mac && p.public_ip == *ip) {
                let _ = self
                    .handle
                    .neighbours()
                    .del(fdb_msg(index, mac, *ip))
                    .execute()
                    .await;
            }
        }
        for (ip, mac) in &state.neighbours {
            if !peers.iter().any(|p| p.vtep_ip() == *ip && p.mac == *mac) {
                let _ = self
                    .handle
                    .neighbours()
                    .del(neigh_msg(index, *ip, mac))
                    .execute()
                    .await;
            }
        }
        Ok((index, programmed))
    }

    fn route(&self, index: u32, cidr: Ipv4Net) -> RouteMessage {
        RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(cidr.network(), cidr.prefix_len())
            .gateway(cidr.network())
            .output_interface(index)
            .onlink()
            .build()
    }

    /// Neighbour, FDB entry, then the route (the route makes the peer reachable, so it comes
    /// last); a failure removes what this call added.
    async fn add_peer(&self, index: u32, p: &Peer) -> Result<(), NetworkError> {
        let h = &self.handle;
        h.neighbours()
            .add(index, IpAddr::V4(p.vtep_ip()))
            .link_layer_address(&p.mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await?;
        let fdb = h
            .neighbours()
            .add_bridge(index, &p.mac)
            .destination(IpAddr::V4(p.public_ip))
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await;
        if let Err(e) = fdb {
            let _ = h
                .neighbours()
                .del(neigh_msg(index, p.vtep_ip(), &p.mac))
                .execute()
                .await;
            return Err(e.into());
        }
        if let Err(e) = h
            .route()
            .add(self.route(index, p.cidr))
            .replace()
            .execute()
            .await
        {
            let _ = h
                .neighbours()
                .del(fdb_msg(index, &p.mac, p.public_ip))
                .execute()
                .await;
            let _ = h
                .neighbours()
                .del(neigh_msg(index, p.vtep_ip(), &p.mac))
                .execute()
                .await;
            return Err(e.into());
        }
        Ok(())
    }

    async fn read_state(&self, index: u32) -> Result<KernelState, NetworkError> {
        let h = &self.handle;
        let mut state = KernelState::default();
        let mut routes = h
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Some(r) = routes.try_next().await? {
            let mut oif = None;
            let mut dst = None;
            let mut gw = None;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = Some(*d),
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(*g),
                    _ => {}
                }
            }
            if oif == Some(index)
                && let (Some(d), Some(g)) = (dst, gw)
                && let Ok(net) = Ipv4Net::new(d, r.header.destination_prefix_length)
            {
                state.routes.insert(net, g);
            }
        }
        let mut neigh = h
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Inet)
            .execute();
        while let Some(n) = neigh.try_next().await? {
            if n.header.ifindex != index || n.header.state != NeighbourState::Permanent {
                continue;
            }
            if let (Some(IpAddr::V4(ip)), Some(mac)) = (dest(&n), lladdr(&n)) {
                state.neighbours.insert(ip, mac);
            }
        }
        let mut fdb = h
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute();
        while let Some(n) = fdb.try_next().await? {
            if n.header.ifindex != index {
                continue;
            }
            if let (Some(IpAddr::V4(ip)), Some(mac)) = (dest(&n), lladdr(&n)) {
                state.fdb.insert(mac, ip);
            }
        }
        Ok(state)
    }
}

#[derive(Default)]
struct KernelState {
    routes: HashMap<Ipv4Net, Ipv4Addr>,
    neighbours: HashMap<Ipv4Addr, [u8; 6]>,
    fdb: HashMap<[u8; 6], Ipv4Addr>,
}

/// The ethtool command that sets generic receive offload (linux/ethtool.h).
const ETHTOOL_SGRO: u32 = 0x2c;

/// Turns generic receive offload off on `dev`, through the ethtool ioctl (rtnetlink carries no
/// offload settings).
///
/// Why: what reaches the overlay device is aggregated already (the uplink's GRO runs VXLAN's
/// own GRO on encapsulated flows, and a local sender's super-packets arrive whole), so GRO on
/// the device only adds a second queue. With it on, the device queues packets in its GRO cells,
/// except those whose data is still shared with the sender (TCP's clones, when the sending pod
/// is on this machine and host routing skipped the stack's copy), which go to the CPU's
/// backlog: one flow in two queues arrives reordered (measured: about 1,500 segments out of
/// order and a few hundred retransmits per 4 s run, and a third of the throughput).
fn gro_off(dev: &str) -> std::io::Result<()> {
    use nix::libc;
    use std::os::fd::AsRawFd;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    let mut value = EthtoolValue {
        cmd: ETHTOOL_SGRO,
        data: 0,
    };
    // SAFETY: ifreq is plain data, for which all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if dev.len() >= req.ifr_name.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("interface name {dev} too long"),
        ));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(dev.bytes()) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&raw mut value).cast();
    let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
    // SAFETY: SIOCETHTOOL reads the ifreq and the ethtool_value it points to, and may copy
    // the ifreq back; both are ours, writable and outlive the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &raw mut req) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn dest(n: &NeighbourMessage) -> Option<IpAddr> {
    n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
        _ => None,
    })
}

fn lladdr(n: &NeighbourMessage) -> Option<[u8; 6]> {
    n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(m) => m.as_slice().try_into().ok(),
        _ => None,
    })
}

/// A permanent entry of the overlay device, as the kernel lists it: a neighbour (`Inet`:
/// overlay address -> MAC) or an FDB entry (`Bridge`: MAC -> public IP, on the device itself).
fn entry_msg(family: AddressFamily, index: u32, ip: Ipv4Addr, mac: &[u8; 6]) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = family;
    m.header.ifindex = index;
    m.header.state = NeighbourState::Permanent;
    if family == AddressFamily::Bridge {
        m.header.flags = NeighbourFlags::Own;
    }
    m.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    m
}

fn neigh_msg(index: u32, ip: Ipv4Addr, mac: &[u8; 6]) -> NeighbourMessage {
    entry_msg(AddressFamily::Inet, index, ip, mac)
}

fn fdb_msg(index: u32, mac: &[u8; 6], ip: Ipv4Addr) -> NeighbourMessage {
    entry_msg(AddressFamily::Bridge, index, ip, mac)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use k8s_openapi::api::core::v1::{Node, NodeSpec};
    use kube::api::ObjectMeta;

    fn node(name: &str, cidr: Option<&str>, mac: Option<&str>, ip: &str) -> Node {
        let mut ann = std::collections::BTreeMap::new();
        if let Some(m) = mac {
            ann.insert(ANNOTATION_MAC.to_owned(), m.to_owned());
        }
        ann.insert(ANNOTATION_IP.to_owned(), ip.to_owned());
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: Some(ann),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: cidr.map(str::to_owned),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn peers_are_the_other_nodes_with_a_cidr_and_a_vtep() {
        let nodes = vec![
            node(
                "me",
                Some("10.244.0.0/24"),
                Some("02:00:00:00:00:01"),
                "10.0.0.1",
            ),
            node(
                "b",
                Some("10.244.1.0/24"),
                Some("02:00:00:00:00:02"),
                "10.0.0.2",
            ),
            node("no-cidr", None, Some("02:00:00:00:00:03"), "10.0.0.3"),
            node("no-mac", Some("10.244.3.0/24"), None, "10.0.0.4"),
            node("bad-mac", Some("10.244.4.0/24"), Some("zz"), "10.0.0.5"),
        ];
        let p = peers(&nodes, "me");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].public_ip, "10.0.0.2".parse::<Ipv4Addr>().unwrap());
        assert_eq!(p[0].vtep_ip(), "10.244.1.0".parse::<Ipv4Addr>().unwrap());
        assert_eq!(format_mac(&p[0].mac), "02:00:00:00:00:02");
    }

    #[test]
    fn the_vtep_mac_is_locally_administered_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let a = stable_mac(dir.path()).unwrap();
        assert_eq!(a[0] & 0x03, 0x02, "unicast, locally administered");
        assert_eq!(stable_mac(dir.path()).unwrap(), a);
        assert_eq!(parse_mac(&format_mac(&a)), Some(a));
        assert_eq!(parse_mac("02:00:00:00:00"), None);
    }
}
