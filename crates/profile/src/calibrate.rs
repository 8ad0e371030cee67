//! Unit costs measured on this machine, for the modelled part of a
//! profile and for SCC's Table 2 (cost of a context switch and of a
//! system call under each scheduling policy).
//!
//! - **system call**: `getpid(2)` in a loop (glibc does not cache it);
//! - **socket write + read**: one byte through a Unix socket pair, both
//!   ends on the same thread (two system calls, no switch);
//! - **context switch**: two threads pinned to one CPU under the policy
//!   pass one byte back and forth over a Unix socket pair; a round trip is
//!   two switches plus two writes and two reads, so one switch costs
//!   `(round trip − 2 × (write + read)) / 2`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use braid_dataplane::{Sched, SchedError, SchedPolicy};

/// Unit costs under one policy, in nanoseconds.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UnitCosts {
    /// The policy both ping-pong threads ran under (`other`, `fifo:50`).
    pub policy: String,
    /// The CPU both threads were pinned to.
    pub cpu: usize,
    pub syscall_ns: f64,
    /// One byte written and read back through a socket pair.
    pub socket_write_read_ns: f64,
    /// One context switch between two threads of this process.
    pub context_switch_ns: f64,
    /// Ping-pong round trips measured.
    pub round_trips: u32,
}

/// A calibration that could not run.
#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    #[error("calibration: {what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("calibration under policy {policy}: {source}")]
    Sched {
        policy: String,
        #[source]
        source: SchedError,
    },
    #[error("calibration: the ping-pong thread panicked")]
    Panicked,
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> CalibrationError {
    move |source| CalibrationError::Io { what, source }
}

/// Measure the unit costs with both ping-pong threads pinned to `cpu`
/// under `policy`, `round_trips` times (a few thousand take a few tens of
/// milliseconds).
pub fn calibrate(
    policy: SchedPolicy,
    cpu: usize,
    round_trips: u32,
) -> Result<UnitCosts, CalibrationError> {
    let sched = Sched { cpus: vec![cpu], policy, nice: None, slice_us: None };
    let name = policy.to_string();
    let sched_err = |source| CalibrationError::Sched { policy: name.clone(), source };
    let n = round_trips.max(100);
    // Run the measuring side on its own thread, so the caller's scheduling
    // is left as it was.
    let sched2 = sched.clone();
    let measure = std::thread::spawn(move || -> Result<(f64, f64, f64), CalibrationError> {
        sched2.apply_to_current_thread().map_err(|e| CalibrationError::Sched {
            policy: sched2.policy.to_string(),
            source: e,
        })?;
        // System call.
        let t = Instant::now();
        let mut acc = 0u64;
        for _ in 0..n * 4 {
            acc = acc.wrapping_add(u64::from(std::process::id()));
        }
        std::hint::black_box(acc);
        let syscall = t.elapsed().as_nanos() as f64 / f64::from(n * 4);
        // Write + read, no switch.
        let (mut a, mut b) = UnixStream::pair().map_err(io("socketpair"))?;
        let mut byte = [0u8; 1];
        let t = Instant::now();
        for _ in 0..n {
            a.write_all(&[1]).map_err(io("write"))?;
            b.read_exact(&mut byte).map_err(io("read"))?;
        }
        let write_read = t.elapsed().as_nanos() as f64 / f64::from(n);
        // Ping-pong with a peer on the same CPU.
        let (mut a, mut b) = UnixStream::pair().map_err(io("socketpair"))?;
        let peer_sched = sched2.clone();
        let peer = std::thread::spawn(move || -> Result<(), CalibrationError> {
            peer_sched.apply_to_current_thread().map_err(|e| CalibrationError::Sched {
                policy: peer_sched.policy.to_string(),
                source: e,
            })?;
            let mut byte = [0u8; 1];
            b.write_all(&[0]).map_err(io("write"))?; // ready
            for _ in 0..n {
                b.read_exact(&mut byte).map_err(io("read"))?;
                b.write_all(&byte).map_err(io("write"))?;
            }
            Ok(())
        });
        a.read_exact(&mut byte).map_err(io("read"))?;
        let t = Instant::now();
        for _ in 0..n {
            a.write_all(&[1]).map_err(io("write"))?;
            a.read_exact(&mut byte).map_err(io("read"))?;
        }
        let rt = t.elapsed().as_nanos() as f64 / f64::from(n);
        peer.join().map_err(|_| CalibrationError::Panicked)??;
        Ok((syscall, write_read, rt))
    });
    let (syscall, write_read, rt) =
        measure.join().map_err(|_| CalibrationError::Panicked)?.map_err(|e| match e {
            CalibrationError::Sched { source, .. } => sched_err(source),
            other => other,
        })?;
    Ok(UnitCosts {
        policy: name,
        cpu,
        syscall_ns: syscall,
        socket_write_read_ns: write_read,
        context_switch_ns: ((rt - 2.0 * write_read) / 2.0).max(0.0),
        round_trips: n,
    })
}

/// SCC Table 2 on this machine: [`calibrate`] under every policy, in
/// `rounds` interleaved passes (each pass measures every policy once, so
/// a neighbour's burst of load hits all of them alike); each policy's
/// median over the passes.
pub fn cost_table(
    cpu: usize,
    round_trips: u32,
    rounds: usize,
) -> Result<Vec<UnitCosts>, CalibrationError> {
    let policies = [
        SchedPolicy::Other,
        SchedPolicy::Batch,
        SchedPolicy::Idle,
        SchedPolicy::Fifo(50),
        SchedPolicy::Rr(50),
    ];
    let mut runs: Vec<Vec<UnitCosts>> = vec![Vec::new(); policies.len()];
    for _ in 0..rounds.max(1) {
        for (k, p) in policies.iter().enumerate() {
            runs[k].push(calibrate(*p, cpu, round_trips)?);
        }
    }
    Ok(runs
        .into_iter()
        .map(|mut v| {
            let median = |v: &mut Vec<UnitCosts>, f: fn(&UnitCosts) -> f64| {
                let mut x: Vec<f64> = v.iter().map(f).collect();
                x.sort_by(f64::total_cmp);
                x[x.len() / 2]
            };
            let syscall_ns = median(&mut v, |u| u.syscall_ns);
            let socket_write_read_ns = median(&mut v, |u| u.socket_write_read_ns);
            let context_switch_ns = median(&mut v, |u| u.context_switch_ns);
            UnitCosts { syscall_ns, socket_write_read_ns, context_switch_ns, ..v.swap_remove(0) }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_costs_are_positive_and_ordered() {
        let cpu = braid_runtime::coordinator::online_cpus().last().copied().unwrap_or(0);
        let u = calibrate(SchedPolicy::Other, cpu, 500).unwrap();
        assert_eq!((u.policy.as_str(), u.cpu, u.round_trips), ("other", cpu, 500));
        assert!(u.syscall_ns > 0.0 && u.syscall_ns < 1e6, "{u:?}");
        // A socket write and read is more than one trivial system call.
        assert!(u.socket_write_read_ns > u.syscall_ns, "{u:?}");
        assert!(u.context_switch_ns.is_finite(), "{u:?}");
    }

    #[test]
    fn an_offline_cpu_is_an_error_not_a_number() {
        let e = calibrate(SchedPolicy::Other, 1000, 100).unwrap_err().to_string();
        assert!(e.contains("policy other") && e.contains("CPUs [1000]"), "{e}");
    }
}
