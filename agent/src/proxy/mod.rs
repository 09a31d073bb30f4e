//! The Service proxy. Watches of Services and EndpointSlices only record objects in the model;
//! one loop drains the model's changes into the dataplane, at most once per minimum sync
//! period, with a full sync periodically and after any failure. Nothing is flushed on start: the
//! first sync reconciles what a previous agent left, so established connections survive.

pub mod conntrack;
pub mod ebpf;
pub mod health;
pub mod iptables;
pub mod model;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};

use crate::dns::Zone;
use crate::iptables::Iptables;
use model::{Model, ServiceKey};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(
        "bridged traffic bypasses iptables ({0}); load the br_netfilter module (modprobe br_netfilter)"
    )]
    BridgeNetfilter(std::io::Error),
    #[error("reading the eBPF datapath's maps: {0}")]
    Ebpf(ebpf::EbpfError),
}

/// Which dataplane renders the model.
pub enum Mode {
    Iptables(Iptables),
    /// The eBPF datapath (loaded and attached by the caller), the node's addresses, where
    /// NodePorts are served, and how backends are picked.
    Ebpf(
        ebpf::proxier::Shared,
        Vec<Ipv4Addr>,
        ebpf::proxier::Algorithm,
    ),
}

/// The model's renderer for the chosen mode.
enum Dataplane {
    Iptables(iptables::Proxier),
    Ebpf(ebpf::proxier::Proxier),
}

/// What one sync did, whatever the mode.
struct Summary {
    /// A full sync ended.
    full: bool,
    services: usize,
    written: usize,
    removed: usize,
}

impl From<iptables::SyncStats> for Summary {
    fn from(s: iptables::SyncStats) -> Self {
        Self {
            full: s.full,
            services: s.services,
            written: s.chains_written,
            removed: s.chains_deleted,
        }
    }
}

impl From<ebpf::proxier::SyncStats> for Summary {
    fn from(s: ebpf::proxier::SyncStats) -> Self {
        Self {
            full: s.full,
            services: s.services,
            written: s.frontends_written,
            removed: s.frontends_removed,
        }
    }
}

impl Dataplane {
    fn sync(&mut self, changes: model::Changes) -> Result<(Summary, iptables::Previous), String> {
        match self {
            Self::Iptables(p) => p
                .sync(changes)
                .map(|(s, prev)| (s.into(), prev))
                .map_err(|e| e.to_string()),
            Self::Ebpf(p) => p
                .sync(changes)
                .map(|(s, prev)| (s.into(), prev))
                .map_err(|e| e.to_string()),
        }
    }

    /// How many services each slice of a full sync holds, if it comes in slices: all at once,
    /// it would hold up every change behind it. A change waits for the slice under way only.
    fn slice(&self) -> Option<usize> {
        match self {
            // About 2 ms with 10 endpoints each (100 measured 4 ms at 30,000 services).
            Self::Ebpf(_) => Some(50),
            // One restore each. Every nf_tables commit that adds a jump or a NAT rule walks
            // the whole table to validate it (about 60 ms at 10,000 services), so slices are
            // large: 500 services of 10 endpoints are about 0.2 s.
            Self::Iptables(p) => p.sliced().then_some(500),
        }
    }

    fn ports(&self, key: &ServiceKey) -> &[model::ServicePort] {
        match self {
            Self::Iptables(p) => p.ports(key),
            Self::Ebpf(p) => p.ports(key),
        }
    }
}

pub struct Config {
    pub node: String,
    pub cluster_cidr: Ipv4Net,
    pub mode: Mode,
    /// Syncs are at least this far apart (changes in between are batched).
    pub min_sync: Duration,
    /// A full sync runs at least this often.
    pub full_sync: Duration,
    /// The cluster DNS zone, kept from the same watches; its address is served by the node
    /// itself and never proxied.
    pub dns: Option<(Arc<Zone>, Ipv4Addr)>,
    pub metrics: Arc<crate::metrics::ProxyMetrics>,
}

/// A full sync under way in slices.
struct Pass {
    /// The last Service given; the next slice starts after it.
    after: Option<ServiceKey>,
    began: Instant,
    /// Services given so far.
    services: usize,
    /// Changes went alone last time: a slice is next.
    owed: bool,
}

/// A sync this long lets watch events pile up (an iptables restore at 10,000 services takes
/// 0.1-0.5 s; an eBPF sync or slice a few ms).
const SLOW_SYNC: Duration = Duration::from_millis(5);

/// After a slow sync, the next waits until the watches were quiet this long, but no longer
/// than the second bound after the sync's end.
const CATCH_UP: (Duration, Duration) = (Duration::from_millis(1), Duration::from_secs(1));

const BRIDGE_NF: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";

/// Replies from a backend on this node to a client on this node are bridged, not routed: they
/// must still see conntrack to be translated back.
fn ensure_bridge_netfilter() -> Result<(), ProxyError> {
    if !std::path::Path::new(BRIDGE_NF).exists() {
        let _ = std::process::Command::new("modprobe")
            .arg("br_netfilter")
            .status();
    }
    std::fs::write(BRIDGE_NF, "1").map_err(ProxyError::BridgeNetfilter)
}

/// Runs the proxy until `stop` turns true.
pub async fn run(
    client: kube::Client,
    cfg: Config,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), ProxyError> {
    let dataplane = match cfg.mode {
        Mode::Iptables(ipt) => {
            ensure_bridge_netfilter()?;
            Dataplane::Iptables(iptables::Proxier::new(ipt, cfg.cluster_cidr))
        }
        Mode::Ebpf(dp, addrs, algorithm) => Dataplane::Ebpf(
            ebpf::proxier::Proxier::new(dp, addrs, cfg.cluster_cidr)
                .map_err(ProxyError::Ebpf)?
                .with_algorithm(algorithm),
        ),
    };
    let services = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff();
    let slices = watcher(
        Api::<EndpointSlice>::all(client),
        watcher::Config::default(),
    )
    .default_backoff();
    let mut services = std::pin::pin!(services);
    let mut slices = std::pin::pin!(slices);
    let mut model = Model::new(&cfg.node);
    let zone = cfg.dns.as_ref().map(|(z, _)| Arc::clone(z));
    if let Some((_, ip)) = &cfg.dns {
        model.serve_locally(*ip);
    }
    let mut listed_services: Option<Vec<Service>> = None;
    let mut listed_slices: Option<Vec<EndpointSlice>> = None;
    // Nothing is written before both kinds were listed once: a partial view would delete rules.
    let (mut have_services, mut have_slices) = (false, false);
    let mut proxier = Some(dataplane);
    let mut health = health::HealthServers::default();
    let mut checks: BTreeMap<u16, (ServiceKey, usize)> = BTreeMap::new();
    let mut last_sync: Option<Instant> = None;
    let mut last_full = Instant::now();
    let mut pass: Option<Pass> = None;
    let mut failures: u32 = 0;
    let mut last_event = Instant::now();
    // The end of the last sync, if it was slow (see CATCH_UP).
    let mut slow_end: Option<Instant> = None;
    loop {
        let more = pass.is_some();
        let ready = have_services && have_slices && (more || model.has_changes());
        let earliest = match last_sync {
            // The next slice of a full sync goes at once: watch events get in between.
            _ if more => Instant::now(),
            Some(t) => {
                let backoff = cfg
                    .min_sync
                    .max(Duration::from_millis(250 * u64::from(failures.min(20))));
                t + backoff
            }
            None => Instant::now(),
        };
        // After a slow sync the watches catch up first: their HTTP streams hand over about one
        // waiting event per poll, so a sync due at once would otherwise follow every event.
        let earliest = match slow_end {
            Some(end) => earliest.max((last_event + CATCH_UP.0).min(end + CATCH_UP.1)),
            None => earliest,
        };
        let full_due = last_full + cfg.full_sync;
        // Timers tick in whole milliseconds: a deadline already due must not wait for the next
        // tick (up to 1 ms per slice of a full sync, and per change).
        let wake = async move {
            if earliest > Instant::now() {
                tokio::time::sleep_until(earliest.into()).await;
            }
        };
        tokio::select! {
            // In order: watch events that are waiting go into the model before the next sync,
            // or a change would wait behind slices picked at random before it.
            biased;
            () = async { let _ = stop.wait_for(|s| *s).await; } => break,
            ev = services.next() => match ev {
                Some(Ok(ev)) => {
                    last_event = Instant::now();
                    if let Some(z) = &zone {
                        mirror(&ev, |s| z.upsert_service(s), |s| z.delete_service(s));
                    }
                    if let Some(all) = record(ev, &mut listed_services, &mut model, Model::upsert_service, |m, s| m.delete_service(&s)) {
                        if let Some(z) = &zone {
                            z.replace_services(&all);
                        }
                        model.replace_services(all);
                        have_services = true;
                    }
                }
                Some(Err(e)) => tracing::warn!("watching services: {e}"),
                None => break,
            },
            ev = slices.next() => match ev {
                Some(Ok(ev)) => {
                    last_event = Instant::now();
                    if let Some(z) = &zone {
                        mirror(&ev, |s| z.upsert_slice(s), |s| z.delete_slice(s));
                    }
                    if let Some(all) = record(ev, &mut listed_slices, &mut model, Model::upsert_slice, |m, s| m.delete_slice(&s)) {
                        if let Some(z) = &zone {
                            z.replace_slices(&all);
                        }
                        model.replace_slices(all);
                        have_slices = true;
                    }
                }
                Some(Err(e)) => tracing::warn!("watching endpointslices: {e}"),
                None => break,
            },
            () = tokio::time::sleep_until(full_due.into()), if !model.full_pending() && !more => {
                model.force_full();
            }
            () = wake, if ready => {
                let Some(mut p) = proxier.take() else { break };
                let started = Instant::now();
                let slice = p.slice();
                if slice.is_some() && model.take_full() {
                    pass = Some(Pass { after: None, began: started, services: 0, owed: false });
                }
                let mut changes = model.take_changes();
                if let Some(ps) = &mut pass {
                    if !changes.services.is_empty() && !ps.owed {
                        // Changes go alone, ahead of the next slice: they wait for the slice
                        // under way only. The slice goes next, whatever arrives meanwhile.
                        ps.owed = true;
                    } else {
                        ps.owed = false;
                        let n = slice.unwrap_or(usize::MAX);
                        let keys = model.keys_after(ps.after.as_ref(), n);
                        changes.full = keys.len() < n;
                        ps.services += keys.len();
                        if let Some(last) = keys.last() {
                            ps.after = Some(last.clone());
                        }
                        // Resolved now, so a slice never carries an older view than the model's.
                        for k in keys {
                            let ports = model.ports(&k);
                            changes.services.entry(k).or_insert(ports);
                        }
                    }
                }
                // The minimum period batches bursts of changes; a full sync (or a slice of one)
                // leaves nothing to batch, so the first change after one goes at once.
                if pass.is_none() && !changes.full && !changes.services.is_empty() {
                    last_sync = Some(started);
                }
                let (p, result) = match tokio::task::spawn_blocking(move || {
                    let r = p.sync(changes);
                    (p, r)
                })
                .await
                {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::error!("proxy sync panicked: {e}");
                        break;
                    }
                };
                slow_end = (started.elapsed() >= SLOW_SYNC).then(Instant::now);
                let m = &cfg.metrics;
                m.syncs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                m.last_sync_us.store(started.elapsed().as_micros() as u64, std::sync::atomic::Ordering::Relaxed);
                match result {
                    Ok((stats, previous)) => {
                        failures = 0;
                        if stats.full {
                            m.full_syncs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        let mut services = stats.services;
                        let mut began = started;
                        if stats.full && let Some(ps) = pass.take() {
                            (began, services) = (ps.began, ps.services);
                        }
                        let took_ms = began.elapsed().as_millis() as u64;
                        if stats.full {
                            last_full = began;
                            tracing::info!(services, written = stats.written,
                                removed = stats.removed, took_ms, "proxy full sync");
                        } else {
                            tracing::debug!(services, written = stats.written,
                                removed = stats.removed, took_ms, "proxy synced");
                        }
                        after_sync(&p, stats.full, previous, &mut checks, &mut health).await;
                    }
                    Err(e) => {
                        m.failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        failures += 1;
                        pass = None;
                        // Failures back off from here, whatever the sync was.
                        last_sync = Some(started);
                        tracing::warn!("proxy sync failed (a full sync follows): {e}");
                        model.force_full();
                    }
                }
                proxier = Some(p);
            }
        }
    }
    Ok(())
}

/// What follows a successful sync: stale UDP conntrack entries go, and the health check
/// servers follow the changed services' local endpoint counts.
async fn after_sync(
    p: &Dataplane,
    full: bool,
    previous: iptables::Previous,
    checks: &mut BTreeMap<u16, (ServiceKey, usize)>,
    health: &mut health::HealthServers,
) {
    let mut stale = Vec::new();
    if full {
        // What a full sync did not see any more (a relist dropped it) stops being checked.
        checks.retain(|_, (k, _)| {
            p.ports(k)
                .iter()
                .any(|sp| sp.health_check_node_port.is_some())
        });
    }
    for (k, before) in &previous {
        let now = p.ports(k);
        // The eBPF datapath forgets its own stale flows as it syncs.
        if matches!(p, Dataplane::Iptables(_)) {
            stale.extend(conntrack::stale_entries(before, now));
        }
        checks.retain(|_, (key, _)| key != k);
        if let Some((port, sp)) = now
            .iter()
            .find_map(|sp| Some((sp.health_check_node_port?, sp)))
        {
            checks.insert(port, (k.clone(), sp.local_endpoints().len()));
        }
    }
    if !stale.is_empty() {
        let _ = tokio::task::spawn_blocking(move || conntrack::clear(&stale)).await;
    }
    // Every time, so that a port that could not be bound is tried again.
    health.update(checks).await;
}

/// Applies one watch event to the DNS zone at once. A relist's objects reach it once, whole,
/// at the relist's end (`replace_*`), so meanwhile it answers from what it had.
fn mirror<K>(ev: &watcher::Event<K>, upsert: impl Fn(&K), delete: impl Fn(&K)) {
    match ev {
        watcher::Event::Apply(o) => upsert(o),
        watcher::Event::Delete(o) => delete(o),
        watcher::Event::Init | watcher::Event::InitApply(_) | watcher::Event::InitDone => {}
    }
}

/// Folds one watch event into the model; returns the complete list at the end of a (re)list.
fn record<K>(
    ev: watcher::Event<K>,
    listing: &mut Option<Vec<K>>,
    model: &mut Model,
    upsert: impl Fn(&mut Model, K),
    delete: impl Fn(&mut Model, K),
) -> Option<Vec<K>> {
    match ev {
        watcher::Event::Apply(o) => upsert(model, o),
        watcher::Event::Delete(o) => delete(model, o),
        watcher::Event::Init => *listing = Some(Vec::new()),
        watcher::Event::InitApply(o) => listing.get_or_insert_with(Vec::new).push(o),
        watcher::Event::InitDone => return Some(listing.take().unwrap_or_default()),
    }
    None
}
