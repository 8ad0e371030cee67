//! BPF program statistics of the XDP programs loaded on this machine (the
//! kernel NFs of a `braid deploy`): runs and time per run over an
//! interval. The kernel counts them only while statistics are enabled;
//! this holds a `BPF_ENABLE_STATS` descriptor for the interval (nothing
//! to restore afterwards: counting stops when it is closed), and reads
//! every program's `run_cnt` and `run_time_ns` before and after.

use std::time::Duration;

/// One XDP program over the interval.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct XdpProgramStats {
    pub id: u32,
    pub name: String,
    pub runs: u64,
    pub run_ns: u64,
    /// None when it did not run.
    pub ns_per_run: Option<f64>,
}

/// Why the statistics could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BpfStatsError {
    #[error("enable BPF run-time statistics (BPF_ENABLE_STATS, needs CAP_SYS_ADMIN and Linux >= 5.8): {0}")]
    Enable(String),
    #[error("list the loaded BPF programs: {0}")]
    List(String),
}

fn xdp_programs() -> Result<Vec<(u32, String, u64, u64)>, BpfStatsError> {
    let mut out = Vec::new();
    for p in aya::programs::loaded_programs() {
        let p = p.map_err(|e| BpfStatsError::List(e.to_string()))?;
        // aya gives the kernel's bpf_prog_type; its name is BPF_PROG_TYPE_XDP.
        if format!("{:?}", p.program_type()) != "BPF_PROG_TYPE_XDP" {
            continue;
        }
        let name = p.name_as_str().unwrap_or("?").to_string();
        out.push((p.id(), name, p.run_count(), p.run_time().as_nanos() as u64));
    }
    Ok(out)
}

/// Runs and time per run of every XDP program over `interval` (programs
/// loaded or unloaded meanwhile are left out).
pub fn sample_xdp(interval: Duration) -> Result<Vec<XdpProgramStats>, BpfStatsError> {
    let _on = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map_err(|e| BpfStatsError::Enable(e.to_string()))?;
    let before = xdp_programs()?;
    std::thread::sleep(interval);
    let after = xdp_programs()?;
    Ok(after
        .into_iter()
        .filter_map(|(id, name, runs, ns)| {
            let (_, _, r0, n0) = before.iter().find(|b| b.0 == id)?;
            let runs = runs.saturating_sub(*r0);
            let run_ns = ns.saturating_sub(*n0);
            Some(XdpProgramStats {
                id,
                name,
                runs,
                run_ns,
                ns_per_run: (runs > 0).then(|| run_ns as f64 / runs as f64),
            })
        })
        .collect())
}
