//! Prints the service datapath's maps from their pins: `ebpf_dump /sys/fs/bpf/skiff/<node>`.
use std::net::Ipv4Addr;

use aya::maps::{HashMap, Map, MapData};
use skiff_ebpf_common::{Backend, BackendKey, CtKey, CtValue, LocalPod, ServiceKey, ServiceValue};

fn ip(a: u32) -> Ipv4Addr {
    Ipv4Addr::from(a.to_ne_bytes())
}

type Error = Box<dyn std::error::Error>;

fn open(dir: &std::path::Path, name: &str) -> Result<MapData, Error> {
    MapData::from_pin(dir.join(name)).map_err(|e| format!("{name}: {e}").into())
}

fn main() -> Result<(), Error> {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).ok_or("usage: ebpf_dump DIR")?);
    let svcs: HashMap<_, ServiceKey, ServiceValue> =
        HashMap::try_from(Map::HashMap(open(&dir, "SERVICES")?))?;
    for (k, v) in svcs.iter().filter_map(Result::ok) {
        println!(
            "svc {}:{}/{} scope {} -> {v:?}",
            ip(k.addr),
            u16::from_be(k.port),
            k.proto,
            k.scope
        );
    }
    let backends: HashMap<_, BackendKey, Backend> =
        HashMap::try_from(Map::HashMap(open(&dir, "BACKENDS")?))?;
    let mut b: Vec<_> = backends.iter().filter_map(Result::ok).collect();
    b.sort_by_key(|(k, _)| (k.id, k.slot));
    for (k, v) in b {
        println!(
            "backend {}/{} -> {}:{}",
            k.id,
            k.slot,
            ip(v.addr),
            u16::from_be(v.port)
        );
    }
    let ct: HashMap<_, CtKey, CtValue> = HashMap::try_from(Map::LruHashMap(open(&dir, "CT")?))?;
    for (k, v) in ct.iter().filter_map(Result::ok).take(4000) {
        println!(
            "ct {}:{} -> {}:{} /{} => flags {:#x} {}:{} -> {}:{} created {}",
            ip(k.saddr),
            u16::from_be(k.sport),
            ip(k.daddr),
            u16::from_be(k.dport),
            k.proto,
            v.flags,
            ip(v.saddr),
            u16::from_be(v.sport),
            ip(v.daddr),
            u16::from_be(v.dport),
            v.created / 1_000_000_000
        );
    }
    let pods: HashMap<_, u32, LocalPod> =
        HashMap::try_from(Map::HashMap(open(&dir, "LOCAL_PODS")?))?;
    for (addr, pod) in pods.iter().filter_map(Result::ok) {
        println!("pod {} -> ifindex {}", ip(addr), pod.ifindex);
    }
    Ok(())
}
