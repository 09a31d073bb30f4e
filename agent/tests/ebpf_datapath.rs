//! The eBPF service datapath in the real kernel: a client namespace and a backend namespace
//! joined by a router namespace whose two veth ends carry the programs, as a node's pod veths
//! do. Connections to a service frontend reach the backend with the client's own address, and
//! the replies come back from the frontend; a restarted loader keeps established connections.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::time::Duration;

use skiff_agent::proxy::ebpf::{Datapath, Sizes, wire_addr, wire_port};
use skiff_ebpf_common::{PROTO_TCP, PROTO_UDP, ServiceKey};

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The test's namespaces, removed (with their veths) on drop; the pins too.
struct Net {
    tag: String,
    pins: std::path::PathBuf,
}

impl Net {
    fn ns(&self, role: &str) -> String {
        format!("skebpf-{}-{role}", self.tag)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for role in ["c", "h", "b"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(role)])
                .output();
        }
        // Straight under the bpffs root: a shared parent removed by one test would pull the
        // ground from under another's pins.
        let _ = std::fs::remove_dir_all(&self.pins);
    }
}

/// Runs `f` on a thread inside namespace `ns`.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

fn privileged() -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    if !root {
        assert!(
            std::env::var_os("SKIFF_E2E_REQUIRED").is_none(),
            "the eBPF datapath test needs root"
        );
        eprintln!("SKIPPED: the eBPF datapath test needs root");
    }
    root
}

/// Client, router and backend namespaces; the backend answers TCP on 8080 and UDP on 8081 with
/// the address it saw. Returns the namespaces (removed on drop), the client and backend IPs.
fn topology(n: u32) -> (Net, String, Ipv4Addr) {
    let k = (std::process::id() + n * 7) % 200 + 20;
    let net = Net {
        tag: format!("{}{n}", std::process::id()),
        pins: format!("/sys/fs/bpf/skiff-test-{}-{n}", std::process::id()).into(),
    };
    let (c, h, b) = (net.ns("c"), net.ns("h"), net.ns("b"));
    for ns in [&c, &h, &b] {
        ip(&["netns", "add", ns]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
    }
    let client = format!("10.251.{k}.2");
    let backend = format!("10.252.{k}.2");
    ip(&[
        "-n", &h, "link", "add", "h0", "type", "veth", "peer", "name", "c0", "netns", &c,
    ]);
    ip(&[
        "-n", &h, "link", "add", "hb0", "type", "veth", "peer", "name", "b0", "netns", &b,
    ]);
    for (ns, dev, addr) in [
        (&c, "c0", format!("{client}/24")),
        (&h, "h0", format!("10.251.{k}.1/24")),
        (&h, "hb0", format!("10.252.{k}.1/24")),
        (&b, "b0", format!("{backend}/24")),
    ] {
        ip(&["-n", ns, "addr", "add", &addr, "dev", dev]);
        ip(&["-n", ns, "link", "set", dev, "up"]);
    }
    ip(&[
        "-n",
        &c,
        "route",
        "add",
        "default",
        "via",
        &format!("10.251.{k}.1"),
    ]);
    ip(&[
        "-n",
        &b,
        "route",
        "add",
        "default",
        "via",
        &format!("10.252.{k}.1"),
    ]);
    in_ns(&h, || {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").unwrap()
    });

    // The backend answers each TCP connection and UDP datagram with the address it saw.
    let backend_ip: Ipv4Addr = backend.parse().unwrap();
    let (tcp, udp) = in_ns(&b, move || {
        (
            TcpListener::bind((backend_ip, 8080)).unwrap(),
            UdpSocket::bind((backend_ip, 8081)).unwrap(),
        )
    });
    std::thread::spawn(move || {
        for s in tcp.incoming() {
            let Ok(mut s) = s else { continue };
            let peer = s.peer_addr().unwrap().ip().to_string();
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(peer.as_bytes()).is_err() {
                        break;
                    }
                }
            });
        }
    });
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((_, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(from.ip().to_string().as_bytes(), from);
        }
    });

    (net, client, backend_ip)
}

#[test]
fn service_traffic_is_translated_both_ways_and_survives_a_reload() {
    if !privileged() {
        return;
    }
    let (net, client, backend_ip) = topology(0);
    let h = net.ns("h");
    let c = net.ns("c");
    let vip: Ipv4Addr = "10.96.77.7".parse().unwrap();
    let pins = net.pins.clone();
    let load = move |pins: std::path::PathBuf| {
        move || {
            let mut dp = Datapath::load(&pins, Sizes::default()).unwrap();
            dp.attach("h0").unwrap();
            dp.attach("hb0").unwrap();
            for (port, target, proto) in [(80, 8080, PROTO_TCP), (81, 8081, PROTO_UDP)] {
                let frontend = ServiceKey {
                    addr: wire_addr(vip),
                    port: wire_port(port),
                    proto,
                    scope: 0,
                };
                dp.set_service(frontend, u32::from(port), &[(backend_ip, target)])
                    .unwrap();
            }
            dp
        }
    };
    let dp = in_ns(&h, load(pins.clone()));

    // TCP through the frontend: the backend sees the client; the client talks to the VIP.
    let (first, conn) = in_ns(&c, move || exchange(SocketAddr::from((vip, 80))));
    assert_eq!(first, client, "the backend sees the client's own address");
    assert_eq!(conn.peer_addr().unwrap(), SocketAddr::from((vip, 80)));

    // UDP: the reply comes from the frontend the client sent to.
    let (seen, from) = in_ns(&c, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.send_to(b"hi", (vip, 81)).unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = s.recv_from(&mut buf).unwrap();
        (String::from_utf8_lossy(&buf[..n]).into_owned(), from)
    });
    assert_eq!(seen, client);
    assert_eq!(from, SocketAddr::from((vip, 81)));
    let stats = dp.stats().unwrap();
    assert!(stats.translated >= 2 && stats.replies >= 2, "{stats:?}");

    // A client that reached the backend through the frontend from one port, and later reaches
    // it directly from the same port, talks to the backend itself: the old connection's reply
    // entry does not turn the direct connection's replies into the frontend's.
    let direct = SocketAddr::from((backend_ip, 8080));
    let port = 40_000 + (std::process::id() % 20_000) as u16;
    let via = in_ns(&c, move || from_port(port, SocketAddr::from((vip, 80))));
    assert_eq!(via.unwrap().0, SocketAddr::from((vip, 80)));
    // Past the window in which a SYN on a tracked tuple counts as a retransmission.
    std::thread::sleep(Duration::from_millis(3_500));
    let (peer, seen) = in_ns(&c, move || from_port(port, direct))
        .expect("a direct connection from the port a service connection used");
    assert_eq!((peer, seen.as_str()), (direct, client.as_str()));

    // A pod's TCP connects are translated by the socket programs once its namespace is known:
    // the connection is the backend's from the start (its peer name still the frontend), so
    // nothing of it goes through the veth programs.
    let mut dp = dp;
    let (dp, before) = in_ns(&h, move || {
        dp.set_config(Ipv4Addr::new(10, 0, 0, 1)).unwrap();
        dp.attach_sockets().unwrap();
        let before = dp.stats().unwrap();
        (dp, before)
    });
    let client_ip: Ipv4Addr = client.parse().unwrap();
    let mut dp = dp;
    let cookie = in_ns(&c, || skiff_agent::network::netns_cookie().unwrap());
    dp.add_pod(cookie, client_ip).unwrap();
    let (seen, conn2) = in_ns(&c, move || exchange(SocketAddr::from((vip, 80))));
    assert_eq!(seen, client);
    assert_eq!(conn2.peer_addr().unwrap(), SocketAddr::from((vip, 80)));
    let after = dp.stats().unwrap();
    assert_eq!(
        after.sock_translated,
        before.sock_translated + 1,
        "{after:?}"
    );
    assert_eq!(
        after.translated, before.translated,
        "the veth programs translated it"
    );
    drop(conn2);

    // The router's own sockets (a node's) are pointed at the backend by the socket programs:
    // TCP connects, and unconnected UDP both ways, each showing the frontend as the peer.
    let (tcp_peer, tcp_seen, udp_from, udp_seen) = in_ns(&h, move || {
        let (seen, s) = exchange(SocketAddr::from((vip, 80)));
        let tcp = (s.peer_addr().unwrap(), seen);
        let mut buf = [0u8; 64];
        let u = UdpSocket::bind("0.0.0.0:0").unwrap();
        u.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        u.send_to(b"hi", (vip, 81)).unwrap();
        let (n, from) = u.recv_from(&mut buf).unwrap();
        (
            tcp.0,
            tcp.1,
            from,
            String::from_utf8_lossy(&buf[..n]).into_owned(),
        )
    });
    let router_ip = backend_ip.octets();
    let router_ip = format!("{}.{}.{}.1", router_ip[0], router_ip[1], router_ip[2]);
    assert_eq!(tcp_peer, SocketAddr::from((vip, 80)));
    assert_eq!(tcp_seen, router_ip);
    assert_eq!(udp_from, SocketAddr::from((vip, 81)));
    assert_eq!(udp_seen, router_ip);
    assert!(dp.stats().unwrap().sock_translated >= 2);

    // A new loader (an agent restart) takes over the pinned maps and links: the established
    // connection keeps working.
    drop(dp);
    let _dp = in_ns(&h, load(pins));
    let mut conn = conn;
    conn.write_all(b"again").unwrap();
    let mut buf = [0u8; 64];
    let n = conn.read(&mut buf).unwrap();
    assert_eq!(String::from_utf8_lossy(&buf[..n]), client);
}

/// Connects to `to`, says hi and returns the answer with the open connection.
fn exchange(to: SocketAddr) -> (String, TcpStream) {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(b"hi").unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap();
    (String::from_utf8_lossy(&buf[..n]).into_owned(), s)
}

/// One exchange over TCP from local port `port`: the peer and what it answered.
fn from_port(port: u16, to: SocketAddr) -> Result<(SocketAddr, String), String> {
    use socket2::{Domain, Socket, Type};
    let e = |e: std::io::Error| e.to_string();
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(e)?;
    s.set_reuse_address(true).map_err(e)?;
    s.bind(&SocketAddr::from(([0, 0, 0, 0], port)).into())
        .map_err(e)?;
    s.connect_timeout(&to.into(), Duration::from_millis(800))
        .map_err(e)?;
    let mut s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(e)?;
    s.write_all(b"hi").map_err(e)?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).map_err(e)?;
    Ok((
        s.peer_addr().map_err(e)?,
        String::from_utf8_lossy(&buf[..n]).into_owned(),
    ))
}

fn connects(ns: &str, to: SocketAddr) -> Result<String, String> {
    in_ns(ns, move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_millis(800))
            .map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        s.write_all(b"hi").map_err(|e| e.to_string())?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
}

#[test]
fn the_service_model_programs_the_maps() {
    use skiff_agent::proxy::ebpf::proxier::Proxier;
    use skiff_agent::proxy::model::Model;
    if !privileged() {
        return;
    }
    let (net, client, backend_ip) = topology(1);
    let (c, h) = (net.ns("c"), net.ns("h"));
    let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": "10.96.77.8", "ports": [
            {"name": "http", "port": 80, "targetPort": "http"},
            {"name": "udp", "port": 81, "protocol": "UDP", "targetPort": 8081}]}}))
    .unwrap();
    let slice = |ready: bool| -> k8s_openapi::api::discovery::v1::EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [backend_ip.to_string()], "conditions": {"ready": ready}}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                      {"name": "udp", "port": 8081, "protocol": "UDP"}]}))
        .unwrap()
    };
    // The router's own forwarding refuses what the backend did not send: the client's packets
    // get through only because the datapath routes them to the pod network itself.
    for rule in [
        &["-P", "FORWARD", "DROP"][..],
        &["-A", "FORWARD", "-i", "hb0", "-j", "ACCEPT"],
    ] {
        let out = Command::new("ip")
            .args(["netns", "exec", &h, "iptables"])
            .args(rule)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let pins = net.pins.clone();
    let mut model = Model::new("n1");
    model.upsert_service(svc.clone());
    model.upsert_slice(slice(true));
    let changes = model.take_changes();
    let mut proxier = in_ns(&h, move || {
        let mut dp = Datapath::load(&pins, Sizes::default()).unwrap();
        dp.attach("h0").unwrap();
        dp.attach("hb0").unwrap();
        // Maglev here; the other test covers random selection.
        let pod_network = "10.252.0.0/16".parse().unwrap();
        let mut p = Proxier::new(
            std::sync::Arc::new(std::sync::Mutex::new(dp)),
            Vec::new(),
            pod_network,
        )
        .unwrap()
        .with_algorithm(skiff_agent::proxy::ebpf::proxier::Algorithm::Maglev);
        let (stats, _) = p.sync(changes).unwrap();
        assert_eq!(stats.frontends_written, 2);
        p
    });
    let vip = SocketAddr::from(([10, 96, 77, 8], 80));
    assert_eq!(connects(&c, vip).unwrap(), client);

    // The endpoint turns unready: new connections find no backend and are refused, every one
    // of them at once (a RST from the datapath; ICMP errors would be rate-limited).
    model.upsert_slice(slice(false));
    proxier.sync(model.take_changes()).unwrap();
    for _ in 0..20 {
        let e = connects(&c, vip).unwrap_err();
        assert!(e.contains("refused"), "{e}");
    }
    model.upsert_slice(slice(true));
    proxier.sync(model.take_changes()).unwrap();
    assert_eq!(connects(&c, vip).unwrap(), client);

    // The Service goes: its frontends leave the map.
    model.delete_service(&svc);
    let (stats, _) = proxier.sync(model.take_changes()).unwrap();
    assert_eq!(stats.frontends_removed, 2);
    assert!(connects(&c, vip).is_err());

    // A restarted agent adopts what the map holds, here one frontend that nobody wants any
    // more: it stays until a full sync has been given whole.
    let shared = std::sync::Arc::clone(proxier.datapath());
    let stray = ServiceKey {
        addr: wire_addr(Ipv4Addr::new(10, 96, 99, 9)),
        port: wire_port(80),
        proto: PROTO_TCP,
        scope: skiff_ebpf_common::SCOPE_INTERNAL,
    };
    shared
        .lock()
        .unwrap()
        .set_service(stray, 4242, &[(backend_ip, 8080)])
        .unwrap();
    let mut proxier = Proxier::new(shared, Vec::new(), "10.252.0.0/16".parse().unwrap()).unwrap();

    // A full sync given in slices (as the sync loop does), walking the model as it goes: a
    // slice programs its services and sweeps nothing; the last one, marked full, sweeps what
    // nobody wants.
    model.upsert_service(svc.clone());
    model.upsert_slice(slice(true));
    for i in 0..1500u32 {
        let name = format!("bulk-{i}");
        let ip = format!("10.96.{}.{}", 100 + i / 250, 1 + i % 250);
        model.upsert_service(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"clusterIP": ip, "ports": [{"port": 80, "targetPort": 8080}]}}))
            .unwrap(),
        );
    }
    model.force_full();
    assert!(model.take_full());
    model.take_changes();
    let (mut after, mut given, mut removed) = (None, 0, 0);
    loop {
        let keys = model.keys_after(after.as_ref(), 100);
        let full = keys.len() < 100;
        given += keys.len();
        after = keys.last().cloned().or(after);
        let services = keys.into_iter().map(|k| {
            let ports = model.ports(&k);
            (k, ports)
        });
        let (stats, _) = proxier
            .sync(skiff_agent::proxy::model::Changes {
                full,
                services: services.collect(),
            })
            .unwrap();
        assert_eq!(stats.full, full);
        removed += stats.frontends_removed;
        if full {
            break;
        }
        assert_eq!(removed, 0, "nothing is swept before the pass ends");
    }
    assert_eq!(given, 1501);
    assert_eq!(removed, 1, "the stray frontend, and nothing wanted");
    assert_eq!(connects(&c, vip).unwrap(), client);
    let stray_left = proxier
        .datapath()
        .lock()
        .unwrap()
        .frontends()
        .unwrap()
        .iter()
        .any(|(f, _)| *f == stray);
    assert!(!stray_left);

    model.delete_service(&svc);
    for i in 0..1500u32 {
        model.delete_service(
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("bulk-{i}"), "namespace": "default"}}))
            .unwrap(),
        );
    }
    proxier.sync(model.take_changes()).unwrap();
    let left = in_ns(&h, move || {
        let p = proxier;
        p.datapath().lock().unwrap().frontends().unwrap().len()
    });
    assert_eq!(left, 0);
}

/// Packets a host interface has sent (its counters, read in namespace `ns`).
fn tx_packets(ns: &str, dev: &str) -> u64 {
    let out = Command::new("ip")
        .args(["-n", ns, "-j", "-s", "link", "show", dev])
        .output()
        .unwrap();
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    links[0]["stats64"]["tx"]["packets"].as_u64().unwrap()
}

/// The local pods the overlay's program delivers to, from their pin.
fn local_pods(pins: &std::path::Path) -> Vec<(u32, skiff_ebpf_common::LocalPod)> {
    let map = aya::maps::MapData::from_pin(pins.join("LOCAL_PODS")).unwrap();
    let pods: aya::maps::HashMap<_, u32, skiff_ebpf_common::LocalPod> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(map)).unwrap();
    pods.iter().map(Result::unwrap).collect()
}

#[test]
fn overlay_traffic_goes_straight_into_a_registered_pod() {
    if !privileged() {
        return;
    }
    // The router's `h0` stands in for the overlay device and the backend for a local pod.
    let (net, client, backend_ip) = topology(2);
    let (c, h) = (net.ns("c"), net.ns("h"));
    let [a, b, k, _] = backend_ip.octets();
    let pod_cidr: ipnet::Ipv4Net = format!("{a}.{b}.{k}.0/24").parse().unwrap();
    let gateway = Ipv4Addr::new(a, b, k, 1);
    // As the agent wires pods: the pod's MAC follows from its address.
    let mac = skiff_agent::network::bridge::mac_of(backend_ip);
    let mac = mac.map(|o| format!("{o:02x}")).join(":");
    ip(&["-n", &net.ns("b"), "link", "set", "b0", "address", &mac]);
    let pins = net.pins.clone();
    let dp = in_ns(&h, move || {
        let mut dp = Datapath::load(&pins, Sizes::default()).unwrap();
        dp.set_config(Ipv4Addr::new(10, 0, 0, 1)).unwrap();
        dp.set_cluster("10.248.0.0/13".parse().unwrap()).unwrap();
        dp.attach("hb0").unwrap();
        let index = nix::net::if_::if_nametoindex("h0").unwrap();
        dp.attach_overlay("h0", index, pod_cidr).unwrap();
        dp
    });
    let to = SocketAddr::from((backend_ip, 8080));

    // Not registered yet: the packets are routed to the pod's veth as the bridge would.
    let (seen, conn) = in_ns(&c, move || exchange(to));
    assert_eq!(seen, client);
    drop(conn);
    assert_eq!(dp.stats().unwrap().into_pod, 0);

    // Registered: they enter the pod's namespace past its veth's host end, which sends nothing.
    let dp = in_ns(&h, move || {
        let mut dp = dp;
        dp.add_local_pod("hb0", backend_ip, gateway).unwrap();
        dp
    });
    let (before, sent_before) = (dp.stats().unwrap(), tx_packets(&h, "hb0"));
    let (seen, mut conn) = in_ns(&c, move || exchange(to));
    assert_eq!(seen, client, "the pod sees the sender's own address");
    for _ in 0..5 {
        conn.write_all(b"again").unwrap();
        let mut buf = [0u8; 64];
        let n = conn.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], client.as_bytes());
    }
    drop(conn);
    let delivered = dp.stats().unwrap().into_pod - before.into_pod;
    let sent = tx_packets(&h, "hb0") - sent_before;
    assert!(delivered >= 7, "SYN, ACK and six requests: {delivered}");
    // Neighbour upkeep may still go out of it.
    assert!(sent <= 2, "{sent} packets went out of the pod's veth");

    // The pod goes: its veth with it, and the datapath forgets it.
    assert_eq!(local_pods(&net.pins).len(), 1);
    ip(&["-n", &h, "link", "del", "hb0"]);
    in_ns(&h, move || {
        let mut dp = dp;
        dp.forget_gone_links().unwrap();
    });
    assert!(local_pods(&net.pins).is_empty());
}

#[test]
fn pinned_maps_of_another_size_are_replaced() {
    if !privileged() {
        return;
    }
    let net = Net {
        tag: format!("{}sz", std::process::id()),
        pins: format!("/sys/fs/bpf/skiff-test-{}-sizes", std::process::id()).into(),
    };
    let ct_size = |pins: &std::path::Path| {
        aya::maps::MapInfo::from_pin(pins.join("CT"))
            .unwrap()
            .max_entries()
    };
    drop(Datapath::load(&net.pins, Sizes::default()).unwrap());
    assert_eq!(ct_size(&net.pins), Sizes::default().conntrack);
    let smaller = Sizes {
        conntrack: 4096,
        ..Sizes::default()
    };
    drop(Datapath::load(&net.pins, smaller).unwrap());
    assert_eq!(ct_size(&net.pins), 4096, "the flag's size was not applied");
}
