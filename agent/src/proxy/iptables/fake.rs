//! A fake iptables for unit tests: it applies restore input the way the kernel does (declared
//! chains are flushed, `-X` needs an empty unreferenced chain, a transaction is all or nothing)
//! and traces a packet through the nat and filter hooks, so tests ask where a packet lands and
//! whether it is masqueraded rather than diffing rule text.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

const BUILTIN: &[(&str, &[&str])] = &[
    ("nat", &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"]),
    ("filter", &["INPUT", "FORWARD", "OUTPUT"]),
];

#[derive(Clone, Default)]
pub struct Fake {
    tables: BTreeMap<String, BTreeMap<String, Vec<Vec<String>>>>,
    /// `-m recent` lists: name -> source addresses.
    recent: BTreeMap<String, BTreeSet<Ipv4Addr>>,
}

/// Where a packet comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Forwarded by the node: from a pod on the bridge or from another host.
    Routed,
    /// Sent by the node itself.
    Local,
}

#[derive(Clone, Copy, Debug)]
pub struct Packet {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: &'static str,
    pub dport: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Reject,
    Drop,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub dnat: Option<(Ipv4Addr, u16)>,
    pub masquerade: bool,
    pub verdict: Verdict,
}

fn tokens(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for ch in line.chars() {
        match ch {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn net_match(spec: &str, ip: Ipv4Addr) -> bool {
    let (addr, mask) = spec.split_once('/').unwrap_or((spec, "32"));
    let addr: Ipv4Addr = addr.parse().expect("address in rule");
    let mask: u32 = match mask.parse::<u8>() {
        Ok(len) => u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0),
        Err(_) => u32::from(mask.parse::<Ipv4Addr>().expect("mask in rule")),
    };
    u32::from(ip) & mask == u32::from(addr) & mask
}

impl Fake {
    pub fn new() -> Self {
        let mut f = Self::default();
        for (t, chains) in BUILTIN {
            let table = f.tables.entry((*t).to_owned()).or_default();
            for c in *chains {
                table.insert((*c).to_owned(), Vec::new());
            }
        }
        f
    }

    pub fn chains(&self, table: &str) -> BTreeSet<String> {
        self.tables[table].keys().cloned().collect()
    }

    pub fn rules(&self, table: &str, chain: &str) -> usize {
        self.tables[table].get(chain).map_or(0, Vec::len)
    }

    /// What iptables-save would list (chain contents, in order), to compare two states.
    pub fn dump(&self) -> BTreeMap<String, BTreeMap<String, Vec<Vec<String>>>> {
        self.tables.clone()
    }

    pub fn forget_recent(&mut self) {
        self.recent.clear();
    }

    /// Applies restore input (`--noflush`) atomically.
    pub fn restore(&mut self, input: &str) -> Result<(), String> {
        let mut next = self.tables.clone();
        let mut table = String::new();
        for line in input.lines() {
            let builtin =
                |t: &str, c: &str| BUILTIN.iter().any(|(bt, cs)| *bt == t && cs.contains(&c));
            if let Some(t) = line.strip_prefix('*') {
                table = t.to_owned();
                continue;
            }
            if line == "COMMIT" || line.is_empty() {
                continue;
            }
            let chains = next
                .get_mut(&table)
                .ok_or_else(|| format!("no table {table}"))?;
            if let Some(rest) = line.strip_prefix(':') {
                let name = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                if !builtin(&table, &name) {
                    chains.insert(name, Vec::new());
                }
                continue;
            }
            let t = tokens(line);
            match t.first().map(String::as_str) {
                Some("-A") => {
                    let c = chains
                        .get_mut(&t[1])
                        .ok_or_else(|| format!("-A to missing chain {}", t[1]))?;
                    c.push(t[2..].to_vec());
                }
                Some("-I") => {
                    let pos: usize = t[2].parse().map_err(|_| "bad -I position")?;
                    let c = chains
                        .get_mut(&t[1])
                        .ok_or_else(|| format!("-I to missing chain {}", t[1]))?;
                    c.insert(pos - 1, t[3..].to_vec());
                }
                Some("-X") => {
                    let name = &t[1];
                    if chains.get(name).is_none_or(|r| !r.is_empty()) {
                        return Err(format!("-X {name}: missing or not empty"));
                    }
                    let used = chains
                        .values()
                        .flatten()
                        .any(|r| r.windows(2).any(|w| w[0] == "-j" && w[1] == *name));
                    if used {
                        return Err(format!("-X {name}: still referenced"));
                    }
                    chains.remove(name);
                }
                _ => return Err(format!("unsupported line: {line}")),
            }
        }
        // Every jump must land on a chain or a target.
        for (t, chains) in &next {
            for rule in chains.values().flatten() {
                if let Some(i) = rule.iter().position(|x| x == "-j") {
                    let target = &rule[i + 1];
                    let known = [
                        "DNAT",
                        "MARK",
                        "MASQUERADE",
                        "RETURN",
                        "REJECT",
                        "DROP",
                        "ACCEPT",
                    ];
                    if !known.contains(&target.as_str()) && !chains.contains_key(target) {
                        return Err(format!("{t}: jump to missing chain {target}"));
                    }
                }
            }
        }
        self.tables = next;
        Ok(())
    }

    /// Sends a new connection's first packet through the node. `local` are the node's addresses;
    /// `pick` chooses which `-m statistic` rule fires (the n-th one met, counting from 0).
    pub fn trace(
        &mut self,
        origin: Origin,
        pkt: Packet,
        local: &[Ipv4Addr],
        pick: usize,
    ) -> Outcome {
        let mut st = State {
            pkt,
            local: local.to_vec(),
            pick,
            seen: 0,
            mark: 0,
            dnat: None,
            masq: false,
        };
        let pre = if origin == Origin::Local {
            "OUTPUT"
        } else {
            "PREROUTING"
        };
        self.walk("nat", pre, &mut st);
        if let Some((ip, port)) = st.dnat {
            st.pkt.dst = ip;
            st.pkt.dport = port;
        }
        let filter = match origin {
            Origin::Local => "OUTPUT",
            Origin::Routed if st.local.contains(&st.pkt.dst) => "INPUT",
            Origin::Routed => "FORWARD",
        };
        let verdict = match self.walk("filter", filter, &mut st) {
            Step::Reject => Verdict::Reject,
            Step::Drop => Verdict::Drop,
            _ => Verdict::Accept,
        };
        if verdict == Verdict::Accept {
            self.walk("nat", "POSTROUTING", &mut st);
        }
        Outcome {
            dnat: st.dnat,
            masquerade: st.masq,
            verdict,
        }
    }

    fn walk(&mut self, table: &str, chain: &str, st: &mut State) -> Step {
        let rules = self.tables[table].get(chain).cloned().unwrap_or_default();
        for rule in rules {
            if !self.matches(&rule, st) {
                continue;
            }
            let Some(i) = rule.iter().position(|x| x == "-j") else {
                continue;
            };
            let arg = |name: &str| {
                rule.iter()
                    .position(|x| x == name)
                    .map(|j| rule[j + 1].clone())
            };
            let step = match rule[i + 1].as_str() {
                "RETURN" => return Step::Continue,
                "ACCEPT" => Step::Accept,
                "DROP" => Step::Drop,
                "REJECT" => Step::Reject,
                "MASQUERADE" => {
                    st.masq = true;
                    Step::Accept
                }
                "DNAT" => {
                    let to = arg("--to-destination").expect("DNAT destination");
                    let (ip, port) = to.split_once(':').expect("ip:port");
                    st.dnat = Some((ip.parse().expect("ip"), port.parse().expect("port")));
                    Step::Accept
                }
                "MARK" => {
                    if let Some(v) = arg("--or-mark") {
                        st.mark |= parse_hex(&v);
                    }
                    if let Some(v) = arg("--xor-mark") {
                        st.mark ^= parse_hex(&v);
                    }
                    Step::Continue
                }
                target => {
                    let target = target.to_owned();
                    self.walk(table, &target, st)
                }
            };
            if step != Step::Continue {
                return step;
            }
        }
        Step::Continue
    }

    fn matches(&mut self, rule: &[String], st: &mut State) -> bool {
        let mut i = 0;
        let mut negate = false;
        let mut recent_name = String::new();
        while i < rule.len() {
            let opt = rule[i].as_str();
            let val = rule.get(i + 1).map(String::as_str).unwrap_or_default();
            let ok = match opt {
                "!" => {
                    negate = true;
                    i += 1;
                    continue;
                }
                "-j" => return true,
                "-s" => net_match(val, st.pkt.src),
                "-d" => net_match(val, st.pkt.dst),
                "-p" => val == st.pkt.proto,
                "--dport" => match val.split_once(':') {
                    Some((a, b)) => {
                        (a.parse().unwrap_or(0)..=b.parse().unwrap_or(0)).contains(&st.pkt.dport)
                    }
                    None => val.parse() == Ok(st.pkt.dport),
                },
                "--src-type" => (val == "LOCAL") == st.local.contains(&st.pkt.src),
                "--dst-type" => (val == "LOCAL") == st.local.contains(&st.pkt.dst),
                "--mark" => {
                    let (v, m) = val.split_once('/').unwrap_or((val, "0xffffffff"));
                    st.mark & parse_hex(m) == parse_hex(v)
                }
                "--ctstate" => val.contains("NEW"),
                "--probability" => {
                    let hit = st.seen == st.pick;
                    st.seen += 1;
                    hit
                }
                "--name" => {
                    recent_name = val.to_owned();
                    true
                }
                "--update" | "--rcheck" => {
                    i += 1;
                    let hit = self
                        .recent
                        .get(&recent_name)
                        .is_some_and(|s| s.contains(&st.pkt.src));
                    if negate != hit {
                        negate = false;
                        continue;
                    }
                    return false;
                }
                "--set" => {
                    i += 1;
                    self.recent
                        .entry(recent_name.clone())
                        .or_default()
                        .insert(st.pkt.src);
                    continue;
                }
                // Options that only qualify others, or always hold for a first packet.
                "-m" | "--comment" | "--mode" | "--seconds" => true,
                "--reap" => {
                    i += 1;
                    continue;
                }
                other => panic!("fake iptables does not know {other}"),
            };
            if ok == negate {
                return false;
            }
            negate = false;
            i += 2;
        }
        true
    }
}

fn parse_hex(v: &str) -> u32 {
    u32::from_str_radix(v.trim_start_matches("0x"), 16).expect("hex mark")
}

struct State {
    pkt: Packet,
    local: Vec<Ipv4Addr>,
    pick: usize,
    seen: usize,
    mark: u32,
    dnat: Option<(Ipv4Addr, u16)>,
    masq: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Continue,
    Accept,
    Drop,
    Reject,
}
