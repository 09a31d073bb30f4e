//! The node's pod bridge `skiff0` and one veth pair per pod: the host end on the bridge with
//! hairpin on (a pod reaching itself through a Service), the other end moved into the pod's
//! network namespace as `eth0` with the pod's address and a default route via the bridge.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use rtnetlink::{LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::{NetworkError, link_index};

pub const BRIDGE: &str = "skiff0";

/// The MAC of an address on the pod network, fixed by the address (kubenet's `0a:58` scheme).
/// Left to itself a bridge takes the lowest MAC of its ports and changes it as pods come and
/// go, and pods whose ARP cache still holds the old one send into the void until they ask
/// again. A pod's `eth0` gets one too: a pod that takes over a deleted pod's address takes
/// its MAC with it, so the node's neighbour entry for the address stays right (the eBPF
/// datapath forwards by that entry without refreshing it, as the stack would).
pub fn mac_of(addr: Ipv4Addr) -> [u8; 6] {
    let o = addr.octets();
    [0x0a, 0x58, o[0], o[1], o[2], o[3]]
}

/// Creates the bridge when missing and gives it the gateway address and its fixed MAC;
/// idempotent.
pub async fn ensure_bridge(
    handle: &rtnetlink::Handle,
    gateway: Ipv4Addr,
    prefix: u8,
    mtu: u32,
) -> Result<u32, NetworkError> {
    let index = match link_index(handle, BRIDGE).await? {
        Some(i) => i,
        None => {
            handle
                .link()
                .add(LinkBridge::new(BRIDGE).mtu(mtu).build())
                .execute()
                .await?;
            link_index(handle, BRIDGE)
                .await?
                .ok_or_else(|| NetworkError::NoSuchLink(BRIDGE.into()))?
        }
    };
    if !super::ipv4_addrs(handle, index).await?.contains(&gateway) {
        handle
            .address()
            .add(index, gateway.into(), prefix)
            .replace()
            .execute()
            .await?;
    }
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(index)
                .mtu(mtu)
                .address(mac_of(gateway).to_vec())
                .up()
                .build(),
        )
        .execute()
        .await?;
    Ok(index)
}

/// The host end's name for a pod: stable per pod uid, within the 15-character limit.
pub fn host_veth(uid: &str) -> String {
    format!("veth{:08x}", fnv(uid))
}

fn fnv(s: &str) -> u32 {
    skiff_common::hash::fnv32a(s.as_bytes())
}

/// What one pod's interface gets.
pub struct PodLink {
    pub uid: String,
    /// PID of a process in the pod's network namespace (the sandbox).
    pub pid: u32,
    pub ip: Ipv4Addr,
    pub cidr: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
}

/// Wires a pod into the bridge; returns the cookie of the pod's network namespace, read while
/// inside it. A stale host end of the same pod is replaced.
pub async fn wire(
    handle: &rtnetlink::Handle,
    bridge: u32,
    pod: &PodLink,
) -> Result<u64, NetworkError> {
    let host = host_veth(&pod.uid);
    let peer = format!("tmp{:08x}", fnv(&pod.uid));
    for stale in [&host, &peer] {
        if let Some(i) = link_index(handle, stale).await? {
            handle.link().del(i).execute().await?;
        }
    }
    handle
        .link()
        .add(LinkVeth::new(&host, &peer).mtu(pod.mtu).build())
        .execute()
        .await?;
    let result = async {
        let host_index = link_index(handle, &host)
            .await?
            .ok_or_else(|| NetworkError::NoSuchLink(host.clone()))?;
        let peer_index = link_index(handle, &peer)
            .await?
            .ok_or_else(|| NetworkError::NoSuchLink(peer.clone()))?;
        handle
            .link()
            .set(
                LinkUnspec::new_with_index(host_index)
                    .controller(bridge)
                    .up()
                    .build(),
            )
            .execute()
            .await?;
        handle
            .link()
            .set_port(LinkBridgePort::new(host_index).hairpin(true).build())
            .execute()
            .await?;
        spread_receive(&host);
        handle
            .link()
            .set(
                LinkUnspec::new_with_index(peer_index)
                    .address(mac_of(pod.ip).to_vec())
                    .setns_by_pid(pod.pid)
                    .build(),
            )
            .execute()
            .await?;
        configure_inside(
            pod.pid,
            peer.clone(),
            pod.ip,
            pod.cidr.prefix_len(),
            pod.gateway,
            pod.mtu,
        )
        .await
    }
    .await;
    if result.is_err()
        && let Ok(Some(i)) = link_index(handle, &host).await
    {
        // Deleting one end removes both, wherever the other went.
        let _ = handle.link().del(i).execute().await;
    }
    result
}

/// Removes a pod's host end (and with it the pod's end) if it is still there.
pub async fn unwire(handle: &rtnetlink::Handle, uid: &str) -> Result<(), NetworkError> {
    if let Some(i) = link_index(handle, &host_veth(uid)).await? {
        handle.link().del(i).execute().await?;
    }
    Ok(())
}

/// Configures the pod's end from inside its namespace. Netlink sockets belong to the namespace
/// they were opened in, so a dedicated thread enters the pod's namespace, opens one there and
/// ends with its work: no thread of the agent's runtime ever changes namespace. Returns the
/// namespace's cookie.
async fn configure_inside(
    pid: u32,
    tmp_name: String,
    ip: Ipv4Addr,
    prefix: u8,
    gateway: Ipv4Addr,
    mtu: u32,
) -> Result<u64, NetworkError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let result = (|| {
            let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let (conn, handle, _) = rtnetlink::new_connection()?;
                tokio::spawn(conn);
                let index = link_index(&handle, &tmp_name)
                    .await?
                    .ok_or_else(|| NetworkError::NoSuchLink(tmp_name.clone()))?;
                handle
                    .link()
                    .set(
                        LinkUnspec::new_with_index(index)
                            .name("eth0")
                            .mtu(mtu)
                            .up()
                            .build(),
                    )
                    .execute()
                    .await?;
                handle
                    .address()
                    .add(index, ip.into(), prefix)
                    .replace()
                    .execute()
                    .await?;
                if let Some(lo) = link_index(&handle, "lo").await? {
                    handle
                        .link()
                        .set(LinkUnspec::new_with_index(lo).up().build())
                        .execute()
                        .await?;
                }
                handle
                    .route()
                    .add(
                        RouteMessageBuilder::<Ipv4Addr>::new()
                            .gateway(gateway)
                            .output_interface(index)
                            .build(),
                    )
                    .replace()
                    .execute()
                    .await?;
                Ok::<u64, NetworkError>(super::netns_cookie()?)
            })
        })();
        let _ = tx.send(result);
    });
    rx.await
        .unwrap_or_else(|_| Err(NetworkError::Pod("the pod network thread died".into())))
}

/// Steers what a pod sends to the CPU of the socket that consumes it (RFS on its veth's host
/// end; by flow hash over every CPU, RPS, until that socket is known). Left alone, a flow's
/// packets are carried on by whichever CPU sent them: a TCP sender transmits from its own CPU
/// and, as ACKs come in, from the CPU that took them, so one flow runs on two CPUs at once and
/// arrives reordered (spurious retransmissions), and which CPU carries the datapath's work is
/// chance. Steered, the sender's CPU copies and sends while the receiver's carries the packet
/// across the node; cross-node pod throughput rose 0.42 -> 0.77 of the underlay's
/// (docs/benchmarks.md). Best effort: without it packets still flow.
pub fn spread_receive(host: &str) {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let Some(settings) = skiff_common::steering::queue_settings(cpus) else {
        return;
    };
    let queue = format!("/sys/class/net/{host}/queues/rx-0");
    for (file, value) in settings {
        if let Err(e) = std::fs::write(format!("{queue}/{file}"), value) {
            tracing::debug!("cannot steer {host}'s receive work ({queue}/{file}): {e}");
        }
    }
}

/// The kernel's table of sockets' flows for receive flow steering. It is global and only the
/// host's network namespace shows it.
const FLOW_TABLE: &str = "/proc/sys/net/core/rps_sock_flow_entries";

/// Entries the flow table gets when it has fewer (the kernel's documentation suggests 32768
/// for a moderately loaded server); a larger table set by the host is kept.
const FLOW_TABLE_ENTRIES: u64 = 32768;

/// Sizes the flow table for `spread_receive`. An agent in its own network namespace cannot
/// (a node of a local cluster): the host sizes it, or pods' flows are spread by hash alone.
pub fn size_flow_table() {
    let now = match std::fs::read_to_string(FLOW_TABLE) {
        Ok(v) => v.trim().parse::<u64>().unwrap_or(0),
        Err(e) => {
            tracing::info!(
                "receive flow steering is the host's to enable ({FLOW_TABLE}: {e}); pods' flows are spread by hash"
            );
            return;
        }
    };
    if now < FLOW_TABLE_ENTRIES
        && let Err(e) = std::fs::write(FLOW_TABLE, FLOW_TABLE_ENTRIES.to_string())
    {
        tracing::warn!("cannot size the receive flow table ({FLOW_TABLE}): {e}");
    }
}
