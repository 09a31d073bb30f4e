//! Bringing a local cluster up and down (see the crate docs for the layout).

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

const CLAIMS: &str = "/run/skiff/underlays";
/// A bpf filesystem for the agents' eBPF pins, mounted here in the host's mount namespace:
/// `ip netns exec` replaces /sys for the agents, and pins must outlive an agent.
const BPF_ROOT: &str = "/run/skiff/bpf";
const API_PORT: u16 = 6443;

/// What to bring up.
#[derive(Clone, Debug)]
pub struct Spec {
    /// 1-8 characters of [a-z0-9]; names namespaces, links and nodes.
    pub name: String,
    pub nodes: usize,
    /// `iptables` or `ebpf`; a comma-separated list gives node i the i-th (the last one for
    /// the nodes after it), so both modes can be measured side by side in one cluster.
    pub proxy_mode: String,
    /// Where skiff-controlplane and skiff-agent are.
    pub bin_dir: PathBuf,
    /// Kubeconfig, logs, data directories and the record `down` reads.
    pub state_dir: PathBuf,
    /// Extra controlplane flags (tests shorten node-failure timers).
    pub controlplane_flags: Vec<String>,
    /// Extra agent flags (benchmarks tune the proxy's sync periods).
    pub agent_flags: Vec<String>,
}

/// A running cluster. Dropping it brings it down unless it was detached.
pub struct Cluster {
    pub spec: Spec,
    /// Third octet of the underlay 10.213.k.0/24.
    k: u8,
    pub kubeconfig: PathBuf,
    detached: bool,
}

fn validate_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 8
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    {
        bail!("cluster name {name:?}: use 1 to 8 characters of a-z and 0-9");
    }
    Ok(())
}

/// A child process that is killed (by its pid) and reaped when dropped, however its user ends.
pub struct Reaped(pub std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs a command, failing with its stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args))
}

/// Does 10.213.k.0/24 overlap an address or route of the host?
fn collides(k: u8) -> bool {
    let net = u32::from(Ipv4Addr::new(10, 213, k, 0));
    let routes = ip(&["-4", "route", "show", "table", "all"]).unwrap_or_default();
    let addrs = ip(&["-4", "-o", "addr", "show"]).unwrap_or_default();
    routes
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .chain(addrs.lines().filter_map(|l| l.split_whitespace().nth(3)))
        .filter_map(|w| {
            let (a, len) = w.split_once('/').unwrap_or((w, "32"));
            Some((a.parse::<Ipv4Addr>().ok()?, len.parse::<u32>().ok()?))
        })
        .any(|(a, len)| {
            // Default routes (0/0) are the uplink's, not a claim on this /24.
            if len == 0 {
                return false;
            }
            let common = len.min(24);
            let mask = u32::MAX << (32 - common);
            (u32::from(a) & mask) == (net & mask)
        })
}

/// The kernel's receive flow table, global and shown only in the host's namespace.
const FLOW_TABLE: &str = "/proc/sys/net/core/rps_sock_flow_entries";

/// The size an agent gives the table on its own host (`bridge::FLOW_TABLE_ENTRIES`).
const FLOW_TABLE_ENTRIES: u64 = 32768;

/// Where the flow table's size before the first local cluster is kept, for the last one's down.
fn flow_table_before() -> PathBuf {
    Path::new(CLAIMS).join("flow-table-before")
}

/// Sizes the host's receive flow table as an agent on a host of its own would (agents of a
/// local cluster run in node namespaces, which do not show it); restored by the last `down`.
fn size_flow_table() -> Result<()> {
    let now: u64 = std::fs::read_to_string(FLOW_TABLE)
        .with_context(|| format!("reading {FLOW_TABLE}"))?
        .trim()
        .parse()
        .with_context(|| format!("parsing {FLOW_TABLE}"))?;
    if now < FLOW_TABLE_ENTRIES {
        let before = flow_table_before();
        if !before.exists() {
            std::fs::write(&before, now.to_string())?;
        }
        std::fs::write(FLOW_TABLE, FLOW_TABLE_ENTRIES.to_string())
            .with_context(|| format!("writing {FLOW_TABLE}"))?;
    }
    Ok(())
}

/// Puts the flow table back as it was when no local cluster is left.
fn restore_flow_table() {
    let others = std::fs::read_dir(CLAIMS).is_ok_and(|d| {
        d.flatten()
            .any(|e| e.file_name().to_string_lossy().parse::<u8>().is_ok())
    });
    let before = flow_table_before();
    if !others && let Ok(v) = std::fs::read_to_string(&before) {
        let _ = std::fs::write(FLOW_TABLE, v.trim());
        let _ = std::fs::remove_file(before);
    }
}

fn claim_underlay(name: &str) -> Result<u8> {
    std::fs::create_dir_all(CLAIMS)?;
    for k in 0..=255u8 {
        if collides(k) {
            continue;
        }
        let path = Path::new(CLAIMS).join(k.to_string());
        match std::fs::create_dir(&path) {
            Ok(()) => {
                std::fs::write(path.join("cluster"), name)?;
                return Ok(k);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e.into()),
        }
    }
    bail!("no free 10.213.x.0/24 underlay left; bring other clusters down")
}

impl Cluster {
    pub fn underlay_ns(&self) -> String {
        format!("skiff-{}-ul", self.spec.name)
    }
    pub fn node_ns(&self, i: usize) -> String {
        format!("skiff-{}-node{i}", self.spec.name)
    }
    pub fn node_name(&self, i: usize) -> String {
        format!("{}-node{i}", self.spec.name)
    }
    pub fn node_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.k, 10 + i as u8)
    }
    /// A host outside the cluster on the underlay (for NodePort and external IP traffic).
    pub fn external_ns(&self) -> String {
        format!("skiff-{}-ext", self.spec.name)
    }
    pub fn external_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.k, 250)
    }
    /// An address of the underlay no host holds, for a Service's externalIPs: the external
    /// host routes it to node 1.
    pub fn external_service_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.k, 77)
    }
    fn service_cidr(&self) -> String {
        let f = &self.spec.controlplane_flags;
        f.iter()
            .position(|a| a == "--service-cidr")
            .and_then(|i| f.get(i + 1).cloned())
            .unwrap_or_else(|| "10.96.0.0/12".to_owned())
    }
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.k, 1)
    }
    pub fn server(&self) -> String {
        format!("https://{}:{API_PORT}", self.host_ip())
    }
    fn host_link(&self) -> String {
        format!("sk-{}", self.spec.name)
    }
    fn record(&self) -> PathBuf {
        self.spec.state_dir.join("cluster.json")
    }

    /// Brings a cluster up: underlay, controlplane, one agent per node; returns once every
    /// agent reports its network ready.
    pub fn up(spec: Spec) -> Result<Self> {
        validate_name(&spec.name)?;
        if spec.nodes == 0 || spec.nodes > 50 {
            bail!("--nodes must be between 1 and 50");
        }
        std::fs::create_dir_all(&spec.state_dir)?;
        let record = spec.state_dir.join("cluster.json");
        if record.exists() {
            bail!(
                "cluster {} already exists (state in {}); bring it down first",
                spec.name,
                spec.state_dir.display()
            );
        }
        let k = claim_underlay(&spec.name)?;
        let cluster = Self {
            kubeconfig: spec.state_dir.join("controlplane/admin.kubeconfig"),
            spec,
            k,
            detached: false,
        };
        cluster.save(&[])?;
        // From here on, Drop cleans up whatever a failure leaves behind.
        cluster.wire()?;
        cluster.start_controlplane()?;
        size_flow_table()?;
        for i in 1..=cluster.spec.nodes {
            cluster.start_agent(i)?;
        }
        for i in 1..=cluster.spec.nodes {
            cluster.wait_agent_ready(i)?;
        }
        Ok(cluster)
    }

    fn wire(&self) -> Result<()> {
        let ul = self.underlay_ns();
        ip(&["netns", "add", &ul])?;
        ip(&["-n", &ul, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &ul, "link", "set", "br0", "up"])?;
        ip(&["-n", &ul, "link", "set", "lo", "up"])?;
        let host = self.host_link();
        ip(&[
            "link", "add", &host, "type", "veth", "peer", "name", "cp", "netns", &ul,
        ])?;
        ip(&["-n", &ul, "link", "set", "cp", "master", "br0", "up"])?;
        self.steer_port("cp", true)?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", self.host_ip()),
            "dev",
            &host,
        ])?;
        ip(&["link", "set", &host, "up"])?;
        for i in 1..=self.spec.nodes {
            let ns = self.node_ns(i);
            self.attach_host(&ns, &format!("n{i}"), self.node_ip(i))?;
            // Real nodes reach ClusterIPs through their default route; these have none, and
            // without any route a node's own connection fails before the proxy's DNAT.
            ip(&[
                "-n",
                &ns,
                "route",
                "add",
                &self.service_cidr(),
                "dev",
                "eth0",
            ])?;
        }
        let ext = self.external_ns();
        self.attach_host(&ext, "x", self.external_ip())?;
        let via = self.node_ip(1).to_string();
        let eip = format!("{}/32", self.external_service_ip());
        ip(&["-n", &ext, "route", "add", &eip, "via", &via])?;
        Ok(())
    }

    /// A new namespace `ns` whose eth0 sits on the underlay bridge (as port `port`) with `addr`.
    fn attach_host(&self, ns: &str, port: &str, addr: Ipv4Addr) -> Result<()> {
        let ul = self.underlay_ns();
        ip(&["netns", "add", ns])?;
        ip(&[
            "-n", &ul, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ])?;
        ip(&["-n", &ul, "link", "set", port, "master", "br0", "up"])?;
        self.steer_port(port, true)?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// Steers (or, `on` false, stops steering) each flow arriving on the underlay's `port` to
    /// the CPU of the socket that consumes it (RFS), as a NIC keeps a flow in order on one CPU.
    /// A veth hands a packet to the backlog of the CPU that sent it, and a TCP sender sends
    /// from two CPUs (its own, and the one that took the ACKs): unsteered, the underlay itself
    /// reorders nodes' flows (500-900 retransmits per 4 s iperf3 run between two nodes whose
    /// ends ran on different CPUs, none steered).
    fn steer_port(&self, port: &str, on: bool) -> Result<()> {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        let Some(mut settings) = skiff_common::steering::queue_settings(cpus) else {
            return Ok(());
        };
        if !on {
            settings.iter_mut().for_each(|(_, v)| *v = "0".to_owned());
        }
        let queue = format!("/sys/class/net/{port}/queues/rx-0");
        let script: Vec<String> = settings
            .iter()
            .map(|(file, value)| format!("echo {value} > {queue}/{file}"))
            .collect();
        run(in_ns(&self.underlay_ns(), "sh").args(["-c", &script.join(" && ")]))?;
        Ok(())
    }

    /// Steers the flows nodes send into the underlay (`steer_port`), or stops.
    pub fn steer_underlay(&self, on: bool) -> Result<()> {
        for i in 1..=self.spec.nodes {
            self.steer_port(&format!("n{i}"), on)?;
        }
        Ok(())
    }

    fn save(&self, procs: &[(String, u32)]) -> Result<()> {
        let rec = json!({
            "name": self.spec.name, "nodes": self.spec.nodes, "underlay": self.k,
            "proxyMode": self.spec.proxy_mode, "binDir": self.spec.bin_dir,
            "kubeconfig": self.kubeconfig,
            "procs": procs.iter().map(|(r, p)| json!({"role": r, "pid": p})).collect::<Vec<_>>(),
        });
        std::fs::write(self.record(), serde_json::to_vec_pretty(&rec)?)?;
        Ok(())
    }

    fn procs(&self) -> Vec<(String, u32)> {
        read_record(&self.record())
            .map(|r| procs_of(&r))
            .unwrap_or_default()
    }

    fn set_proc(&self, role: &str, pid: Option<u32>) -> Result<()> {
        let mut procs: Vec<_> = self
            .procs()
            .into_iter()
            .filter(|(r, _)| r != role)
            .collect();
        if let Some(p) = pid {
            procs.push((role.to_owned(), p));
        }
        self.save(&procs)
    }

    /// Starts a long-running process detached from us (its own process group, output to
    /// `<role>.log`) so that it outlives `cargo xtask cluster up`.
    fn spawn(&self, role: &str, cmd: &mut Command) -> Result<u32> {
        use std::os::unix::process::CommandExt;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(role))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {cmd:?}"))?;
        self.set_proc(role, Some(child.id()))?;
        Ok(child.id())
    }

    pub fn log(&self, role: &str) -> PathBuf {
        self.spec.state_dir.join(format!("{role}.log"))
    }

    fn wait_log(&self, role: &str, needle: &str, secs: u64) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let pid = self
            .procs()
            .into_iter()
            .find(|(r, _)| r == role)
            .map(|(_, p)| p);
        while Instant::now() < deadline {
            let text = std::fs::read_to_string(self.log(role)).unwrap_or_default();
            if text.contains(needle) {
                return Ok(());
            }
            if let Some(p) = pid
                && !Path::new(&format!("/proc/{p}")).exists()
            {
                bail!("{role} exited; its log:\n{}", tail(&text, 30));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let text = std::fs::read_to_string(self.log(role)).unwrap_or_default();
        bail!(
            "{role} not ready after {secs} s; its log:\n{}",
            tail(&text, 30)
        )
    }

    fn start_controlplane(&self) -> Result<()> {
        let dir = self.spec.state_dir.join("controlplane");
        let mut cmd = Command::new(self.spec.bin_dir.join("skiff-controlplane"));
        cmd.arg("--data-dir")
            .arg(&dir)
            .args(["--listen", &format!("{}:{API_PORT}", self.host_ip())])
            .args(&self.spec.controlplane_flags);
        self.spawn("controlplane", &mut cmd)?;
        self.wait_log("controlplane", "ready on", 30)
    }

    /// The proxy mode of node `i` (1-based).
    pub fn node_proxy_mode(&self, i: usize) -> &str {
        let modes: Vec<&str> = self.spec.proxy_mode.split(',').collect();
        modes
            .get(i.saturating_sub(1))
            .or(modes.last())
            .copied()
            .unwrap_or("iptables")
    }

    /// Starts node `i`'s agent inside its namespace (again, after `stop_agent`).
    pub fn start_agent(&self, i: usize) -> Result<()> {
        let cp = self.spec.state_dir.join("controlplane");
        let role = format!("node{i}");
        let _ = std::fs::write(self.log(&role), "");
        // The nodes' upstream resolver is the external test host (nothing else is reachable).
        let resolv = self.spec.state_dir.join("upstream-resolv.conf");
        std::fs::write(&resolv, format!("nameserver {}\n", self.external_ip()))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.node_ns(i)])
            .arg(self.spec.bin_dir.join("skiff-agent"))
            .args([
                "--server",
                &self.server(),
                "--node-name",
                &self.node_name(i),
            ])
            .args(["--iface", "eth0", "--proxy-mode", self.node_proxy_mode(i)])
            .arg("--token-file")
            .arg(cp.join("node-token"))
            .arg("--ca-file")
            .arg(cp.join("pki/ca.crt"))
            .arg("--data-dir")
            .arg(self.spec.state_dir.join(&role))
            .arg("--resolv-conf")
            .arg(&resolv)
            .arg("--bpf-dir")
            .arg(bpf_dir(&self.spec.name).join(&role))
            .args(&self.spec.agent_flags);
        // Each node takes the xtables lock of its own, as separate machines would: with one
        // lock, one node's long iptables-restore (or a frozen one) holds up every other node.
        let data = self.spec.state_dir.join(&role);
        std::fs::create_dir_all(&data)?;
        cmd.env("XTABLES_LOCKFILE", data.join("xtables.lock"));
        ensure_bpffs()?;
        self.spawn(&role, &mut cmd)?;
        Ok(())
    }

    pub fn wait_agent_ready(&self, i: usize) -> Result<()> {
        self.wait_log(&format!("node{i}"), "skiff-agent ready", 60)
    }

    /// Stops node `i`'s agent (SIGTERM, by its pid); its pods keep running.
    pub fn stop_agent(&self, i: usize) -> Result<()> {
        let role = format!("node{i}");
        if let Some((_, pid)) = self.procs().into_iter().find(|(r, _)| *r == role) {
            stop_pid(pid, "skiff-agent");
        }
        self.set_proc(&role, None)
    }

    /// Kills node `i`'s agent (SIGKILL, by its pid) as a crash would; its pods and network stay.
    pub fn kill_agent(&self, i: usize) -> Result<()> {
        let role = format!("node{i}");
        if let Some((_, pid)) = self.procs().into_iter().find(|(r, _)| *r == role) {
            kill_pid(pid, "skiff-agent", true);
            let deadline = Instant::now() + Duration::from_secs(10);
            while is_ours(pid, "skiff-agent") && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.set_proc(&role, None)
    }

    /// Freezes node `i`'s agent and what it runs (an `iptables-restore` under way) with
    /// SIGSTOP, or lets them go on (SIGCONT): benchmarks keep one node's work off the cores
    /// while they time another's. The agent stops first and resumes last, so no child is
    /// started or missed in between.
    pub fn pause_agent(&self, i: usize, paused: bool) {
        let role = format!("node{i}");
        let Some((_, pid)) = self.procs().into_iter().find(|(r, _)| *r == role) else {
            return;
        };
        if !is_ours(pid, "skiff-agent") {
            return;
        }
        let signal = if paused { "-STOP" } else { "-CONT" };
        if paused {
            let _ = Command::new("kill")
                .args([signal, &pid.to_string()])
                .status();
        }
        for child in descendants(pid) {
            let _ = Command::new("kill")
                .args([signal, &child.to_string()])
                .status();
        }
        if !paused {
            let _ = Command::new("kill")
                .args([signal, &pid.to_string()])
                .status();
        }
    }

    /// Takes node `i` off the cluster as a crash would: its agent is killed, its pods'
    /// containers removed and its namespace deleted.
    pub fn destroy_node(&self, i: usize) -> Result<()> {
        let role = format!("node{i}");
        if let Some((_, pid)) = self.procs().into_iter().find(|(r, _)| *r == role) {
            kill_pid(pid, "skiff-agent", true);
        }
        self.set_proc(&role, None)?;
        remove_containers(&self.node_name(i));
        let _ = ip(&["netns", "del", &self.node_ns(i)]);
        Ok(())
    }

    /// A command run on the external host.
    pub fn in_external(&self, program: &str) -> Command {
        in_ns(&self.external_ns(), program)
    }

    /// A command run inside node `i`'s network namespace.
    pub fn in_node(&self, i: usize, program: &str) -> Command {
        in_ns(&self.node_ns(i), program)
    }

    /// The cluster DNS address, as the controlplane gave it to `kube-system/kube-dns`.
    pub fn cluster_dns(&self) -> Result<Ipv4Addr> {
        self.kubectl(&[
            "-n",
            "kube-system",
            "get",
            "svc",
            "kube-dns",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])?
        .parse()
        .context("the kube-dns Service has no ClusterIP")
    }

    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.kubectl_in(args, None)
    }

    pub fn kubectl_in(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let mut child = Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run kubectl")?;
        if let Some(s) = stdin
            && let Some(mut i) = child.stdin.take()
        {
            i.write_all(s.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The last lines of every process log, for failure reports.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for role in std::iter::once("controlplane".to_owned())
            .chain((1..=self.spec.nodes).map(|i| format!("node{i}")))
        {
            let text = std::fs::read_to_string(self.log(&role)).unwrap_or_default();
            out.push_str(&format!("--- {role}\n{}\n", tail(&text, 40)));
        }
        out
    }

    /// Leaves the cluster running after this value is gone (`cargo xtask cluster up`).
    pub fn detach(mut self) {
        self.detached = true;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // For a developer looking into a failed test: keep it, say where it is.
        if std::thread::panicking() && std::env::var_os("SKIFF_E2E_KEEP").is_some() {
            eprintln!(
                "SKIFF_E2E_KEEP: cluster {} left running; KUBECONFIG={}; remove it with: cargo xtask cluster down --state {}",
                self.spec.name,
                self.kubeconfig.display(),
                self.spec.state_dir.display()
            );
            return;
        }
        if !self.detached
            && let Err(e) = down(&self.spec.state_dir)
        {
            eprintln!("bringing cluster {} down: {e:#}", self.spec.name);
        }
    }
}

fn in_ns(ns: &str, program: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, program]);
    cmd
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The (role, pid) pairs a cluster record holds.
fn procs_of(rec: &Value) -> Vec<(String, u32)> {
    rec["procs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p["role"].as_str()?.to_owned(),
                u32::try_from(p["pid"].as_u64()?).ok()?,
            ))
        })
        .collect()
}

/// The binary a role runs, to tell our process from a reused pid.
fn program_of(role: &str) -> &'static str {
    if role == "controlplane" {
        "skiff-controlplane"
    } else {
        "skiff-agent"
    }
}

fn read_record(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("no cluster recorded at {}", path.display()))?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// Is `pid` still the process we started (not a reused pid)?
fn is_ours(pid: u32, program: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(program))
        .unwrap_or(false)
}

fn kill_pid(pid: u32, program: &str, hard: bool) {
    signal_pid(pid, program, if hard { "-KILL" } else { "-TERM" });
}

/// The processes under `pid`, from the kernel's per-thread lists of children.
fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            for k in kids.split_whitespace().filter_map(|k| k.parse().ok()) {
                out.push(k);
                todo.push(k);
            }
        }
    }
    out
}

fn signal_pid(pid: u32, program: &str, signal: &str) {
    if is_ours(pid, program) {
        let _ = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status();
    }
}

/// SIGTERM, then SIGKILL if the process is still there after 10 s.
fn stop_pid(pid: u32, program: &str) {
    kill_pid(pid, program, false);
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_ours(pid, program) && Instant::now() < deadline {
        // Reap it if it is our child; otherwise just wait for it to go.
        std::thread::sleep(Duration::from_millis(50));
        if std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z ")) {
            break;
        }
    }
    kill_pid(pid, program, true);
}

/// Removes the containers the agent of `node` made, by their label.
pub fn remove_containers(node: &str) {
    let ids = run(Command::new("docker").args([
        "ps",
        "-aq",
        "--filter",
        &format!("label=skiff.io/node={node}"),
    ]))
    .unwrap_or_default();
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if !ids.is_empty() {
        let _ = run(Command::new("docker").args(["rm", "-f"]).args(&ids));
    }
}

fn bpf_dir(cluster: &str) -> PathBuf {
    Path::new(BPF_ROOT).join(cluster)
}

/// Mounts the bpf filesystem at BPF_ROOT unless one is there. Serialised: two clusters
/// coming up at once (tests run in parallel) must not stack two mounts, which would hide the
/// first one's pins.
fn ensure_bpffs() -> Result<()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _held = LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    if mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        f.nth(1) == Some(BPF_ROOT) && f.next() == Some("bpf")
    }) {
        return Ok(());
    }
    std::fs::create_dir_all(BPF_ROOT)?;
    run(Command::new("mount").args(["-t", "bpf", "bpf", BPF_ROOT]))?;
    Ok(())
}

/// Brings down the cluster recorded in `state_dir`: processes (by pid), pod containers (by
/// label), namespaces and the host link (by name), the underlay claim, then the state itself.
pub fn down(state_dir: &Path) -> Result<()> {
    let rec = read_record(&state_dir.join("cluster.json"))?;
    let name = rec["name"].as_str().unwrap_or_default().to_owned();
    validate_name(&name)?;
    let nodes = rec["nodes"].as_u64().unwrap_or(0) as usize;
    let k = rec["underlay"].as_u64().unwrap_or(256);
    // Agents first (pods must not be recreated while we remove them), then the controlplane.
    let mut ordered = procs_of(&rec);
    ordered.sort_by_key(|(r, _)| r == "controlplane");
    for (role, pid) in ordered {
        stop_pid(pid, program_of(&role));
    }
    for i in 1..=nodes {
        remove_containers(&format!("{name}-node{i}"));
        let _ = ip(&["netns", "del", &format!("skiff-{name}-node{i}")]);
    }
    let _ = ip(&["netns", "del", &format!("skiff-{name}-ext")]);
    // Unpinning detaches the datapath (its socket program is on the host's cgroup).
    let _ = std::fs::remove_dir_all(bpf_dir(&name));
    let _ = ip(&["link", "del", &format!("sk-{name}")]);
    let _ = ip(&["netns", "del", &format!("skiff-{name}-ul")]);
    if k < 256 {
        let claim = Path::new(CLAIMS).join(k.to_string());
        if std::fs::read_to_string(claim.join("cluster")).is_ok_and(|c| c == name) {
            let _ = std::fs::remove_dir_all(claim);
        }
    }
    restore_flow_table();
    std::fs::remove_dir_all(state_dir)
        .with_context(|| format!("removing {}", state_dir.display()))?;
    Ok(())
}

/// One line per process and node of the cluster recorded in `state_dir`.
pub fn status(state_dir: &Path) -> Result<String> {
    let rec = read_record(&state_dir.join("cluster.json"))?;
    let mut out = format!(
        "cluster {} (underlay 10.213.{}.0/24)\nKUBECONFIG={}\n",
        rec["name"].as_str().unwrap_or_default(),
        rec["underlay"],
        rec["kubeconfig"].as_str().unwrap_or_default()
    );
    for (role, pid) in procs_of(&rec) {
        let alive = is_ours(pid, program_of(&role));
        out.push_str(&format!(
            "{role:<14} pid {pid:<8} {}\n",
            if alive { "running" } else { "not running" }
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_and_plain() {
        assert!(validate_name("skiff").is_ok());
        assert!(validate_name("a1").is_ok());
        for bad in ["", "toolongname", "Up", "a-b", "a b"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }
}
