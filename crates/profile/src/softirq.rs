//! Softirq time and network softirqs per CPU over a run: `/proc/stat`
//! (the `softirq` column, in clock ticks: 10 ms resolution with
//! `USER_HZ` = 100) and `/proc/softirqs` (how many `NET_RX` and `NET_TX`
//! softirqs each CPU ran). The kernel's packet work for AF_PACKET and
//! veth (and the XDP programs of a veth) runs there, not in the worker's
//! thread, so the worker's own CPU time does not show it.

/// What one CPU did in softirq context during the run.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CpuSoftirq {
    pub cpu: usize,
    /// Time in softirq context, ms (clock-tick resolution).
    pub softirq_ms: u64,
    pub net_rx: u64,
    pub net_tx: u64,
}

/// A reading of both files.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SoftirqSample {
    /// Per CPU: softirq ticks, NET_RX count, NET_TX count.
    cpus: Vec<(usize, u64, u64, u64)>,
}

/// Clock ticks per second of `/proc/stat` (USER_HZ).
fn ticks_per_second() -> u64 {
    // USER_HZ is 100 on every Linux architecture braid runs on; sysconf
    // would say the same but needs unsafe code here.
    100
}

/// Parse `/proc/stat` and `/proc/softirqs` texts.
pub fn parse(stat: &str, softirqs: &str) -> SoftirqSample {
    let mut cpus: Vec<(usize, u64, u64, u64)> = Vec::new();
    for line in stat.lines() {
        let mut f = line.split_whitespace();
        let Some(name) = f.next() else { continue };
        let Some(n) = name.strip_prefix("cpu").and_then(|n| n.parse::<usize>().ok()) else {
            continue;
        };
        // user nice system idle iowait irq softirq
        if let Some(si) = f.nth(6).and_then(|v| v.parse().ok()) {
            cpus.push((n, si, 0, 0));
        }
    }
    let mut lines = softirqs.lines();
    let header: Vec<usize> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| c.strip_prefix("CPU").and_then(|n| n.parse().ok()))
        .collect();
    for line in lines {
        let mut f = line.split_whitespace();
        let which = match f.next() {
            Some("NET_RX:") => 2,
            Some("NET_TX:") => 3,
            _ => continue,
        };
        for (cpu, v) in header.iter().zip(f) {
            let v: u64 = v.parse().unwrap_or(0);
            if let Some(c) = cpus.iter_mut().find(|c| c.0 == *cpu) {
                if which == 2 {
                    c.2 = v;
                } else {
                    c.3 = v;
                }
            }
        }
    }
    SoftirqSample { cpus }
}

impl SoftirqSample {
    /// Read both files now; None if `/proc/stat` cannot be read.
    pub fn take() -> Option<SoftirqSample> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let softirqs = std::fs::read_to_string("/proc/softirqs").unwrap_or_default();
        Some(parse(&stat, &softirqs))
    }

    /// What happened between `self` (before) and `after`, per CPU.
    pub fn until(&self, after: &SoftirqSample) -> Vec<CpuSoftirq> {
        let hz = ticks_per_second();
        after
            .cpus
            .iter()
            .filter_map(|&(cpu, si, rx, tx)| {
                let b = self.cpus.iter().find(|c| c.0 == cpu)?;
                Some(CpuSoftirq {
                    cpu,
                    softirq_ms: si.saturating_sub(b.1) * 1000 / hz,
                    net_rx: rx.saturating_sub(b.2),
                    net_tx: tx.saturating_sub(b.3),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT0: &str =
        "cpu  10 0 0 0 0 0 9 0 0 0\ncpu0 5 0 0 0 0 0 4 0 0 0\ncpu1 5 0 0 0 0 0 5 0 0 0\nintr 1\n";
    const STAT1: &str =
        "cpu  10 0 0 0 0 0 19 0 0 0\ncpu0 5 0 0 0 0 0 4 0 0 0\ncpu1 5 0 0 0 0 0 15 0 0 0\n";
    const SI0: &str = "                    CPU0       CPU1\n          HI:          0          0\n      NET_TX:          1          2\n      NET_RX:         10         20\n";
    const SI1: &str = "                    CPU0       CPU1\n      NET_TX:          1          7\n      NET_RX:         10        520\n";

    #[test]
    fn per_cpu_differences() {
        let d = parse(STAT0, SI0).until(&parse(STAT1, SI1));
        assert_eq!(
            d,
            vec![
                CpuSoftirq { cpu: 0, softirq_ms: 0, net_rx: 0, net_tx: 0 },
                CpuSoftirq { cpu: 1, softirq_ms: 100, net_rx: 500, net_tx: 5 },
            ]
        );
    }

    #[test]
    fn this_machine_has_both_files() {
        let s = SoftirqSample::take().expect("/proc/stat");
        assert!(!s.cpus.is_empty());
        assert!(s.until(&s).iter().all(|c| c.softirq_ms == 0 && c.net_rx == 0));
    }
}
