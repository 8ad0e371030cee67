//! Profile an offline run of a chain (`braid profile`): calibrate the
//! unit costs, start the hardware counters, run the chain under the
//! chosen mapping through the dataplane's workers, and build the
//! [`Profile`] from the workers' telemetry and OS samples.

use braid_dataplane::WorkerWatch;
use braid_io::Port;
use braid_runtime::plan::Mapping;
use braid_runtime::runner::{run_threads, run_to_end, RunError, RunReport};
use braid_runtime::{Chain, ChainBuildError, ChainDescriptor};

use crate::calibrate::{calibrate, CalibrationError};
use crate::hw::HardwareCounters;
use crate::profile::{build, Profile, RunFacts};

/// What a profile measures besides the always-on counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProfileOptions {
    /// Calibrate the unit costs (a few tens of milliseconds before the
    /// run) so context switches can be modelled.
    pub calibrate: bool,
    /// Ask for hardware counters.
    pub hardware: bool,
}

impl Default for ProfileOptions {
    fn default() -> Self {
        ProfileOptions { calibrate: true, hardware: true }
    }
}

/// Why a profile could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error(transparent)]
    Build(#[from] ChainBuildError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Calibration(#[from] CalibrationError),
    #[error(transparent)]
    Coordinator(#[from] braid_runtime::coordinator::CoordError),
    #[error("--mapping {0}: `braid profile` runs the thread and threads mappings")]
    Mapping(&'static str),
    #[error("interval_ms {0} is out of range 10..=60000")]
    Interval(u64),
    /// A worker in another process did not give its telemetry.
    #[error("worker `{worker}`: {why}")]
    Worker { worker: String, why: String },
}

/// Run `d` from `input` to `output` under `mapping` (`thread`: one worker
/// on the calling thread; `threads`: a worker per NF and an edge worker)
/// and profile it. The run's own report comes back too; a run that
/// stopped on a port error is still profiled (its error is in the report).
pub fn profile_offline(
    d: &ChainDescriptor,
    mapping: Mapping,
    mut input: Box<dyn Port>,
    mut output: Box<dyn Port>,
    opts: ProfileOptions,
) -> Result<(RunReport, Profile), ProfileError> {
    if !matches!(mapping, Mapping::Thread | Mapping::Threads) {
        return Err(ProfileError::Mapping(mapping.name()));
    }
    let unit_costs = if opts.calibrate {
        let cpu = braid_runtime::coordinator::online_cpus().last().copied().unwrap_or(0);
        Some(calibrate(braid_dataplane::SchedPolicy::Other, cpu, 2000)?)
    } else {
        None
    };
    let watch = WorkerWatch::new();
    let hw = opts.hardware.then(HardwareCounters::start);
    let softirq_before = crate::softirq::SoftirqSample::take();
    let report = match mapping {
        Mapping::Thread => {
            braid_runtime::coordinator::refuse_unapplied(d, "--mapping thread")?;
            let mut chain = Chain::from_descriptor(d)?;
            run_to_end(&mut chain, input.as_mut(), output.as_mut())
        }
        _ => run_threads(d, mapping, input, output)?,
    };
    let hardware = match hw {
        Some(h) => h.finish(),
        None => crate::hw::HardwareCounts::NotAvailable {
            event: "all".into(),
            reason: "not asked for (--no-hardware)".into(),
        },
    };
    let facts = RunFacts {
        chain: d.name.clone(),
        mapping: mapping.name().to_string(),
        elapsed: report.elapsed,
        input_packets: report.input.rx_packets,
        output_packets: report.output.tx_packets,
    };
    let mut profile = build(facts, &watch.workers(), hardware, unit_costs);
    if let (Some(b), Some(a)) = (softirq_before, crate::softirq::SoftirqSample::take()) {
        profile.softirq = b.until(&a);
    }
    Ok((report, profile))
}
