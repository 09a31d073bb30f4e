//! The node's network, through netlink (no `ip` shell-outs): the uplink, the pod bridge and
//! veths with IPAM, the VXLAN overlay to the other nodes, and the masquerade rules.

pub mod bridge;
pub mod ipam;
pub mod masq;
pub mod overlay;

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::route::{RouteAddress, RouteAttribute};
use rtnetlink::RouteMessageBuilder;

use crate::iptables::Iptables;
use ipam::Ipam;
use overlay::Overlay;

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
    #[error(transparent)]
    Ipam(#[from] ipam::IpamError),
    #[error("{0}")]
    Iptables(String),
    #[error(transparent)]
    IptablesRun(#[from] crate::iptables::IptablesError),
    #[error("pod network: {0}")]
    Pod(String),
    #[error("API: {0}")]
    Api(#[from] kube::Error),
    #[error(
        "the cluster's network settings (ConfigMap kube-system/{CLUSTER_CONFIGMAP}) are missing or invalid: {0}"
    )]
    ClusterConfig(String),
}

/// ConfigMap in kube-system where the controlplane publishes the cluster's networks.
pub const CLUSTER_CONFIGMAP: &str = "skiff-cluster";
/// How often the overlay, bridge and rules are checked against the kernel even when no Node
/// changed (someone may have deleted a device or flushed a chain).
const RECONCILE_EVERY: Duration = Duration::from_secs(10);

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

/// The index of the link called `name`, if there is one.
pub(crate) async fn link_index(
    handle: &rtnetlink::Handle,
    name: &str,
) -> Result<Option<u32>, NetworkError> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(l) => Ok(l.map(|l| l.header.index)),
        Err(rtnetlink::Error::NetlinkError(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
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
    match ipv4_addrs(&handle, index).await?.first() {
        Some(&address) => Ok(Uplink {
            name,
            index,
            address,
            mtu,
        }),
        None => Err(NetworkError::NoAddress(name)),
    }
}

/// The IPv4 addresses of a link, in the kernel's order.
pub async fn ipv4_addrs(
    handle: &rtnetlink::Handle,
    index: u32,
) -> Result<Vec<Ipv4Addr>, NetworkError> {
    let mut addrs = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    let mut out = Vec::new();
    while let Some(a) = addrs.try_next().await? {
        out.extend(a.attributes.iter().filter_map(|attr| match attr {
            AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
            _ => None,
        }));
    }
    Ok(out)
}

/// The cluster's networks, as the controlplane publishes them.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub cluster_cidr: Ipv4Net,
    pub service_cidr: Ipv4Net,
    pub cluster_dns: Ipv4Addr,
    pub cluster_domain: String,
}

impl ClusterConfig {
    pub fn from_data(data: &BTreeMap<String, String>) -> Result<Self, NetworkError> {
        fn field<T: std::str::FromStr>(
            data: &BTreeMap<String, String>,
            key: &str,
        ) -> Result<T, NetworkError> {
            data.get(key).and_then(|v| v.parse().ok()).ok_or_else(|| {
                NetworkError::ClusterConfig(format!("data.{key} is missing or invalid"))
            })
        }
        Ok(Self {
            cluster_cidr: field(data, "clusterCIDR")?,
            service_cidr: field(data, "serviceCIDR")?,
            cluster_dns: field(data, "clusterDNS")?,
            cluster_domain: data
                .get("clusterDomain")
                .cloned()
                .unwrap_or_else(|| "cluster.local".into()),
        })
    }

    pub async fn fetch(client: &kube::Client) -> Result<Self, NetworkError> {
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
        let cm = cms
            .get_opt(CLUSTER_CONFIGMAP)
            .await?
            .ok_or_else(|| NetworkError::ClusterConfig("not found".into()))?;
        Self::from_data(&cm.data.unwrap_or_default())
    }
}

/// Called with the host-side name of every pod veth once it is wired and once it is gone (the
/// eBPF datapath attaches to the veth there and learns the pod, before the pod's containers
/// start, and forgets it with its veth).
pub type VethHook = Arc<dyn Fn(&str, VethEvent<'_>) + Send + Sync>;

/// What became of a pod's veth.
#[derive(Clone, Copy, Debug)]
pub enum VethEvent<'a> {
    /// Wired, or found wired at start, with what is known of its pod.
    Wired(Option<&'a WiredPod>),
    /// Removed with its pod.
    Gone,
}

/// A wired pod as the veth hook learns it.
#[derive(Clone, Copy, Debug)]
pub struct WiredPod {
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    /// The cookie of the pod's network namespace, read from inside it: known when the wiring
    /// is new.
    pub netns: Option<u64>,
}

/// Called with the overlay device's name and index, and the node's podCIDR, once the hook is
/// set and whenever the device is re-created (the eBPF datapath routes pod traffic through it).
pub type OverlayHook = Arc<dyn Fn(&str, u32, Ipv4Net) + Send + Sync>;

/// This thread's network namespace, as the kernel's socket programs name it.
pub fn netns_cookie() -> std::io::Result<u64> {
    let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as nix::libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`, which outlives the call.
    let rc = unsafe {
        nix::libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            nix::libc::SOL_SOCKET,
            nix::libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Pods' side of the node's network: the bridge, addresses and per-pod files.
pub struct PodNetwork {
    veth_hook: std::sync::OnceLock<VethHook>,
    overlay_hook: std::sync::OnceLock<OverlayHook>,
    /// The overlay device's index as last seen (0: not yet).
    overlay_index: std::sync::atomic::AtomicU32,
    handle: rtnetlink::Handle,
    bridge: u32,
    ipam: Ipam,
    mtu: u32,
    pub cluster: ClusterConfig,
    pods_dir: PathBuf,
}

impl PodNetwork {
    pub fn pod_cidr(&self) -> Ipv4Net {
        self.ipam.cidr()
    }

    /// Host-end names of every pod veth present now (one netlink dump).
    pub async fn wired(&self) -> Result<HashSet<String>, NetworkError> {
        let mut names = HashSet::new();
        let mut links = self.handle.link().get().execute();
        while let Some(l) = links.try_next().await? {
            if l.attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::Controller(i) if *i == self.bridge))
            {
                for a in l.attributes {
                    if let LinkAttribute::IfName(n) = a {
                        names.insert(n);
                    }
                }
            }
        }
        Ok(names)
    }

    pub fn is_wired(wired: &HashSet<String>, uid: &str) -> bool {
        wired.contains(&bridge::host_veth(uid))
    }

    pub fn address(&self, uid: &str) -> Option<Ipv4Addr> {
        self.ipam.lookup(uid)
    }

    /// Gives the pod whose sandbox runs as `pid` its address (kept across re-wiring) and its
    /// interface.
    pub async fn attach(&self, uid: &str, pid: u32) -> Result<Ipv4Addr, NetworkError> {
        let ip = self.ipam.allocate(uid)?;
        let link = bridge::PodLink {
            uid: uid.to_owned(),
            pid,
            ip,
            cidr: self.ipam.cidr(),
            gateway: self.ipam.gateway(),
            mtu: self.mtu,
        };
        let netns = bridge::wire(&self.handle, self.bridge, &link).await?;
        if let Some(hook) = self.veth_hook.get() {
            let pod = self.wired_pod(ip, Some(netns));
            hook(&bridge::host_veth(uid), VethEvent::Wired(Some(&pod)));
        }
        Ok(ip)
    }

    fn wired_pod(&self, ip: Ipv4Addr, netns: Option<u64>) -> WiredPod {
        WiredPod {
            ip,
            gateway: self.ipam.gateway(),
            netns,
        }
    }

    /// Sets the hook for veths wired from now on, and runs it for those wired already.
    pub async fn set_veth_hook(&self, hook: VethHook) -> Result<(), NetworkError> {
        // Set first: a veth wired meanwhile is then hooked twice, which is harmless.
        let _ = self.veth_hook.set(Arc::clone(&hook));
        // Their pods' namespaces were learnt when they were wired (the map is pinned); their
        // addresses are learnt again, for a datapath that lost them.
        let mut wired = self.wired().await?;
        for (ip, uid) in self.ipam.held() {
            let name = bridge::host_veth(&uid);
            if wired.remove(&name) {
                hook(&name, VethEvent::Wired(Some(&self.wired_pod(ip, None))));
            }
        }
        for name in wired {
            hook(&name, VethEvent::Wired(None));
        }
        Ok(())
    }

    /// Sets the hook for the overlay device and runs it for the device there now.
    pub async fn set_overlay_hook(&self, hook: OverlayHook) -> Result<(), NetworkError> {
        let _ = self.overlay_hook.set(Arc::clone(&hook));
        let index = link_index(&self.handle, overlay::DEVICE)
            .await?
            .ok_or_else(|| NetworkError::Pod(format!("no device {}", overlay::DEVICE)))?;
        self.overlay_index
            .store(index, std::sync::atomic::Ordering::Relaxed);
        hook(overlay::DEVICE, index, self.pod_cidr());
        Ok(())
    }

    /// Records the overlay device's index after a sync; a new one (the device was re-created)
    /// runs the hook.
    fn overlay_seen(&self, index: u32) {
        let before = self
            .overlay_index
            .swap(index, std::sync::atomic::Ordering::Relaxed);
        if before != index
            && let Some(hook) = self.overlay_hook.get()
        {
            hook(overlay::DEVICE, index, self.pod_cidr());
        }
    }

    /// With `on`, packets to the service range that no dataplane translated (a service
    /// without endpoints in eBPF mode) meet an unreachable route, so clients are refused at
    /// once instead of waiting; without, the route goes.
    pub async fn reject_services(&self, range: Ipv4Net, on: bool) -> Result<(), NetworkError> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(range.network(), range.prefix_len())
            .kind(netlink_packet_route::route::RouteType::Unreachable)
            .build();
        if on {
            self.handle.route().add(msg).replace().execute().await?;
        } else if let Err(e) = self.handle.route().del(msg).execute().await {
            // Absent already is the goal.
            if !matches!(e, rtnetlink::Error::NetlinkError(_)) {
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// Undoes `attach` and removes the pod's files.
    pub async fn detach(&self, uid: &str) {
        if let Err(e) = bridge::unwire(&self.handle, uid).await {
            tracing::warn!(uid, "removing the pod's veth: {e}");
        } else if let Some(hook) = self.veth_hook.get() {
            hook(&bridge::host_veth(uid), VethEvent::Gone);
        }
        self.ipam.release(uid);
        let _ = std::fs::remove_dir_all(self.pods_dir.join(uid));
    }

    /// Pod uids holding an address.
    pub fn holders(&self) -> Vec<String> {
        self.ipam.held().into_iter().map(|(_, uid)| uid).collect()
    }

    /// Paths of the pod's /etc/resolv.conf and /etc/hosts.
    pub fn pod_files(&self, uid: &str) -> (PathBuf, PathBuf) {
        let dir = self.pods_dir.join(uid);
        (dir.join("resolv.conf"), dir.join("hosts"))
    }

    /// Writes the pod's /etc/resolv.conf and /etc/hosts (when it is wired).
    pub fn write_pod_files(&self, pod: &Pod, ip: Ipv4Addr) -> Result<(), NetworkError> {
        let (resolv, hosts) = self.pod_files(pod.metadata.uid.as_deref().unwrap_or_default());
        if let Some(dir) = resolv.parent() {
            std::fs::create_dir_all(dir)?;
        }
        write_if_changed(&resolv, &resolv_conf(pod, &self.cluster))?;
        let hostname = pod.metadata.name.as_deref().unwrap_or_default();
        write_if_changed(
            &hosts,
            &format!(
                "# Kubernetes-managed hosts file (skiff).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{ip}\t{hostname}\n"
            ),
        )?;
        Ok(())
    }
}

fn write_if_changed(path: &Path, content: &str) -> std::io::Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|c| c == content) {
        return Ok(());
    }
    std::fs::write(path, content)
}

/// A pod's resolv.conf by its dnsPolicy, as the kubelet writes it.
pub fn resolv_conf(pod: &Pod, cluster: &ClusterConfig) -> String {
    let spec = pod.spec.as_ref();
    let policy = spec
        .and_then(|s| s.dns_policy.as_deref())
        .unwrap_or("ClusterFirst");
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let d = &cluster.cluster_domain;
    let cluster_first = match policy {
        "ClusterFirstWithHostNet" => true,
        "ClusterFirst" => !host_network,
        _ => false,
    };
    let (mut servers, mut search, mut options): (Vec<String>, Vec<String>, Vec<String>) =
        if cluster_first {
            (
                vec![cluster.cluster_dns.to_string()],
                vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.clone()],
                vec!["ndots:5".into()],
            )
        } else if policy == "None" {
            (vec![], vec![], vec![])
        } else {
            // Default (and ClusterFirst with host networking): the node's own resolver.
            host_resolv()
        };
    if let Some(cfg) = spec.and_then(|s| s.dns_config.as_ref()) {
        servers.extend(cfg.nameservers.iter().flatten().cloned());
        search.extend(cfg.searches.iter().flatten().cloned());
        for o in cfg.options.iter().flatten() {
            let opt = match &o.value {
                Some(v) => format!("{}:{v}", o.name.as_deref().unwrap_or_default()),
                None => o.name.clone().unwrap_or_default(),
            };
            options.retain(|x| x.split(':').next() != opt.split(':').next());
            options.push(opt);
        }
    }
    let mut out = String::new();
    for s in servers.iter().take(3) {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    out
}

fn host_resolv() -> (Vec<String>, Vec<String>, Vec<String>) {
    parse_resolv_conf(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default())
}

/// The `nameserver`, `search` and `options` words of a resolv.conf text, in order.
pub fn parse_resolv_conf(text: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
    let (mut servers, mut search, mut options) = (vec![], vec![], vec![]);
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => servers.extend(words.map(str::to_owned)),
            Some("search") => search.extend(words.map(str::to_owned)),
            Some("options") => options.extend(words.map(str::to_owned)),
            _ => {}
        }
    }
    (servers, search, options)
}

/// The cluster DNS address sits on the node's loopback, so the node's own DNS responder
/// receives what pods and the node send there (an address on `lo` is local to the whole node,
/// and needs no dummy-link support in the kernel).
pub async fn ensure_dns_address(
    handle: &rtnetlink::Handle,
    ip: Ipv4Addr,
) -> Result<(), NetworkError> {
    let index = link_index(handle, "lo")
        .await?
        .ok_or_else(|| NetworkError::NoSuchLink("lo".into()))?;
    if !ipv4_addrs(handle, index).await?.contains(&ip) {
        handle
            .address()
            .add(index, ip.into(), 32)
            .replace()
            .execute()
            .await?;
    }
    Ok(())
}

/// Brings up the node's network and keeps it in line with the cluster: waits for the node's
/// podCIDR (the network-ready gate: nothing returns before it and the overlay exist), creates the
/// bridge, overlay and rules, publishes the VTEP on the Node, then keeps reconciling peers
/// on every Node change and periodically until `stop` resolves.
pub async fn start(
    client: kube::Client,
    node: &str,
    uplink: Uplink,
    data_dir: &Path,
    ipt: Iptables,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Arc<PodNetwork>, NetworkError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let pod_cidr: Ipv4Net = loop {
        let cidr = nodes
            .get_opt(node)
            .await
            .ok()
            .flatten()
            .and_then(|n| n.spec?.pod_cidr)
            .and_then(|c| c.parse().ok());
        if let Some(c) = cidr {
            break c;
        }
        tracing::info!("waiting for the controlplane to give node {node} a podCIDR");
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return Err(NetworkError::Pod("stopped before the network was ready".into())),
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    };
    let cluster = ClusterConfig::fetch(&client).await?;
    let handle = connect()?;
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")?;
    let mac = overlay::stable_mac(data_dir)?;
    let overlay = Overlay::new(handle.clone(), uplink.clone(), mac, pod_cidr);
    overlay.ensure_device().await?;
    masq::apply(ipt, cluster.cluster_cidr, pod_cidr, cluster.cluster_dns).await?;
    let ipam = Ipam::open(data_dir, pod_cidr)?;
    let mtu = overlay.mtu();
    let bridge = bridge::ensure_bridge(&handle, ipam.gateway(), pod_cidr.prefix_len(), mtu).await?;
    ensure_dns_address(&handle, cluster.cluster_dns).await?;
    let patch = serde_json::json!({"metadata": {"annotations": {
        overlay::ANNOTATION_MAC: overlay::format_mac(&mac),
        overlay::ANNOTATION_IP: uplink.address.to_string(),
    }}});
    nodes
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    tracing::info!(%pod_cidr, vtep = %overlay::format_mac(&mac), "pod network ready");
    let net = Arc::new(PodNetwork {
        veth_hook: std::sync::OnceLock::new(),
        overlay_hook: std::sync::OnceLock::new(),
        overlay_index: std::sync::atomic::AtomicU32::new(0),
        handle,
        bridge,
        ipam,
        mtu,
        cluster: cluster.clone(),
        pods_dir: data_dir.join("pods"),
    });
    bridge::size_flow_table();
    // Veths of pods that outlived an agent (or an older one) get this agent's steering too.
    match net.wired().await {
        Ok(wired) => wired.iter().for_each(|n| bridge::spread_receive(n)),
        Err(e) => tracing::warn!("listing pod interfaces to steer their receive work: {e}"),
    }
    let me = node.to_owned();
    let keep = Arc::clone(&net);
    tokio::spawn(async move {
        let (reader, writer) = reflector::store();
        // Raw events (not just touched objects), so the end of the initial list wakes us too.
        let changes =
            reflector(writer, watcher(nodes, watcher::Config::default())).default_backoff();
        let mut changes = std::pin::pin!(changes);
        let mut tick = tokio::time::interval(RECONCILE_EVERY);
        let mut last = None;
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                _ = tick.tick() => { last = None; }
                ev = changes.next() => match ev {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => { tracing::warn!("watching nodes: {e}"); continue; }
                    None => break,
                },
            }
            // The store fills as this loop polls the watch: never wait for it here.
            match futures::FutureExt::now_or_never(reader.wait_until_ready()) {
                None => continue,
                Some(Err(_)) => break,
                Some(Ok(())) => {}
            }
            let all: Vec<Node> = reader.state().iter().map(|n| (**n).clone()).collect();
            let peers = overlay::peers(&all, &me);
            // Node status churn (heartbeats) must not cost a netlink dump each time.
            if last.as_ref() == Some(&peers) {
                continue;
            }
            match overlay.sync(&peers).await {
                Ok((index, n)) => {
                    keep.overlay_seen(index);
                    tracing::debug!("overlay: {n} of {} peers programmed", peers.len());
                }
                Err(e) => {
                    // Soon, not at the next tick: until then no pod reaches the other nodes.
                    tracing::warn!("overlay sync (retried in 250 ms): {e}");
                    tick.reset_after(Duration::from_millis(250));
                    continue;
                }
            }
            if let Err(e) = bridge::ensure_bridge(
                &keep.handle,
                keep.ipam.gateway(),
                pod_cidr.prefix_len(),
                mtu,
            )
            .await
            {
                tracing::warn!("pod bridge: {e}");
            }
            if let Err(e) = ensure_dns_address(&keep.handle, cluster.cluster_dns).await {
                tracing::warn!("cluster DNS address: {e}");
            }
            if let Err(e) =
                masq::apply(ipt, cluster.cluster_cidr, pod_cidr, cluster.cluster_dns).await
            {
                tracing::warn!("pod network rules: {e}");
            }
            last = Some(peers);
        }
    });
    Ok(net)
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
