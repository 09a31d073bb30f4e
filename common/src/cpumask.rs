//! CPU masks as sysfs writes them (a queue's `rps_cpus`).

/// The sysfs mask of CPUs 0..n: hex in 32-bit groups, most significant first.
pub fn cpu_mask(n: usize) -> String {
    let mut groups = Vec::new();
    let mut left = n;
    while left > 0 {
        let bits = left.min(32);
        groups.push(u32::MAX >> (32 - bits));
        left -= bits;
    }
    let hex: Vec<String> = groups.iter().rev().map(|g| format!("{g:x}")).collect();
    hex.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_masks_are_sysfs_bitmaps() {
        assert_eq!(cpu_mask(2), "3");
        assert_eq!(cpu_mask(32), "ffffffff");
        assert_eq!(cpu_mask(40), "ff,ffffffff");
        assert_eq!(cpu_mask(64), "ffffffff,ffffffff");
    }
}
