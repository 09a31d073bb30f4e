//! Receive flow steering (RFS) of a receive queue, as sysfs takes it: the agent steers pod
//! veths with it, the local cluster its underlay's ports.

/// Flows whose CPU a steered queue remembers.
pub const FLOWS_PER_QUEUE: u32 = 4096;

/// The files under a queue's sysfs directory (`queues/rx-0`) and what to write to them to
/// steer each flow to the CPU of the socket consuming it (by flow hash over every CPU until
/// that socket is known), on a machine of `cpus` CPUs; nothing when there is only one.
pub fn queue_settings(cpus: usize) -> Option<[(&'static str, String); 2]> {
    (cpus > 1).then(|| {
        [
            ("rps_cpus", cpu_mask(cpus)),
            ("rps_flow_cnt", FLOWS_PER_QUEUE.to_string()),
        ]
    })
}

/// The sysfs mask of CPUs 0..n: hex in 32-bit groups, most significant first.
fn cpu_mask(n: usize) -> String {
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
