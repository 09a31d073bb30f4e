//! Maglev lookup tables (Eisenbud et al., NSDI 2016) for backend sets: every entry names a
//! backend slot, each backend owns about the same share of entries, and removing one backend
//! moves few entries of the others, so connections hash to the same backend on every node and
//! mostly keep it across changes.

use std::net::Ipv4Addr;

use skiff_common::hash::fnv64a;
use skiff_ebpf_common::MAGLEV_M;

/// The table for `backends` (slot i is `backends[i]`); empty when there are none.
pub fn table(backends: &[(Ipv4Addr, u16)]) -> Vec<u16> {
    let n = backends.len().min(usize::from(u16::MAX));
    if n == 0 {
        return Vec::new();
    }
    let m = MAGLEV_M as u64;
    // Each backend's permutation of the table, from its own name (not its slot), so a backend
    // keeps its preferences when others come and go.
    let perms: Vec<(u64, u64)> = backends[..n]
        .iter()
        .map(|(ip, port)| {
            let h = fnv64a(format!("{ip}:{port}").as_bytes());
            let offset = (h >> 32) % m;
            let skip = (h & 0xffff_ffff) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; n];
    let mut entry: Vec<Option<u16>> = vec![None; MAGLEV_M];
    let mut filled = 0;
    'fill: loop {
        for (i, (offset, skip)) in perms.iter().enumerate() {
            let mut c = (offset + next[i] * skip) % m;
            while entry[c as usize].is_some() {
                next[i] += 1;
                c = (offset + next[i] * skip) % m;
            }
            entry[c as usize] = Some(i as u16);
            next[i] += 1;
            filled += 1;
            if filled == MAGLEV_M {
                break 'fill;
            }
        }
    }
    entry.into_iter().map(|e| e.unwrap_or(0)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(n: u8) -> Vec<(Ipv4Addr, u16)> {
        (0..n)
            .map(|i| (Ipv4Addr::new(10, 244, 1, i + 2), 8080))
            .collect()
    }

    #[test]
    fn every_backend_gets_a_fair_share() {
        let t = table(&backends(10));
        assert_eq!(t.len(), MAGLEV_M);
        let mut counts = [0usize; 10];
        for s in &t {
            counts[usize::from(*s)] += 1;
        }
        let fair = MAGLEV_M / 10;
        for c in counts {
            assert!(c >= fair - 1 && c <= fair + 1, "{counts:?}");
        }
    }

    #[test]
    fn removing_a_backend_moves_few_entries_of_the_others() {
        let all = backends(10);
        let before = table(&all);
        let mut fewer = all.clone();
        fewer.remove(3);
        let after = table(&fewer);
        let name = |set: &[(Ipv4Addr, u16)], s: u16| set[usize::from(s)];
        let moved = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| name(&all, **b) != all[3] && name(&all, **b) != name(&fewer, **a))
            .count();
        // Only the removed backend's tenth must move; Maglev moves little more than that.
        assert!(
            moved < MAGLEV_M / 10,
            "{moved} entries of kept backends moved"
        );
    }

    #[test]
    fn no_backends_no_table() {
        assert!(table(&[]).is_empty());
        assert!(table(&backends(1)).iter().all(|s| *s == 0));
    }
}
