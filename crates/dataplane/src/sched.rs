//! CPU affinity, scheduling policy and priority of a worker thread: the
//! knobs SCC's coordinator turns. System calls only; the checks that make
//! a setting refusable come first so nothing is half applied.

use std::fmt;

/// The kernel scheduling policy of a worker thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedPolicy {
    /// SCHED_OTHER (CFS/EEVDF), the default.
    #[default]
    Other,
    /// SCHED_BATCH: CPU-bound, never preempts on wake-up.
    Batch,
    /// SCHED_IDLE: only when nothing else wants the CPU.
    Idle,
    /// SCHED_FIFO with a real-time priority 1..=99.
    Fifo(i32),
    /// SCHED_RR with a real-time priority 1..=99.
    Rr(i32),
}

impl SchedPolicy {
    /// The kernel's policy number and real-time priority (0 if none).
    fn to_libc(self) -> (libc::c_int, i32) {
        match self {
            SchedPolicy::Other => (libc::SCHED_OTHER, 0),
            SchedPolicy::Batch => (libc::SCHED_BATCH, 0),
            SchedPolicy::Idle => (libc::SCHED_IDLE, 0),
            SchedPolicy::Fifo(p) => (libc::SCHED_FIFO, p),
            SchedPolicy::Rr(p) => (libc::SCHED_RR, p),
        }
    }
}

impl fmt::Display for SchedPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SchedPolicy::Other => f.write_str("other"),
            SchedPolicy::Batch => f.write_str("batch"),
            SchedPolicy::Idle => f.write_str("idle"),
            SchedPolicy::Fifo(p) => write!(f, "fifo:{p}"),
            SchedPolicy::Rr(p) => write!(f, "rr:{p}"),
        }
    }
}

/// Where and how a worker thread runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sched {
    /// CPUs the thread may run on; empty: any.
    pub cpus: Vec<usize>,
    pub policy: SchedPolicy,
    /// Nice value -20..=19 for the non-real-time policies.
    pub nice: Option<i32>,
}

/// A scheduling setting that was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum SchedError {
    #[error("CPU {cpu} is beyond the kernel's CPU set size ({max})")]
    CpuOutOfRange { cpu: usize, max: usize },
    #[error("real-time priority {0} is out of range 1..=99")]
    PriorityOutOfRange(i32),
    #[error("nice {0} is out of range -20..=19")]
    NiceOutOfRange(i32),
    #[error("nice applies to other/batch/idle, not to the real-time policy {0}")]
    NiceWithRealTime(SchedPolicy),
    #[error("{what}: {source}")]
    Os {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl Sched {
    /// Refuse a setting that cannot be applied, before touching anything.
    pub fn check(&self) -> Result<(), SchedError> {
        let max = libc::CPU_SETSIZE as usize;
        if let Some(&cpu) = self.cpus.iter().find(|&&c| c >= max) {
            return Err(SchedError::CpuOutOfRange { cpu, max });
        }
        if let SchedPolicy::Fifo(p) | SchedPolicy::Rr(p) = self.policy {
            if !(1..=99).contains(&p) {
                return Err(SchedError::PriorityOutOfRange(p));
            }
            if self.nice.is_some() {
                return Err(SchedError::NiceWithRealTime(self.policy));
            }
        }
        if let Some(n) = self.nice {
            if !(-20..=19).contains(&n) {
                return Err(SchedError::NiceOutOfRange(n));
            }
        }
        Ok(())
    }

    /// Apply to the calling thread.
    pub fn apply_to_current_thread(&self) -> Result<(), SchedError> {
        self.check()?;
        if !self.cpus.is_empty() {
            set_affinity(&self.cpus)?;
        }
        let (policy, prio) = self.policy.to_libc();
        if self.policy != SchedPolicy::Other {
            set_policy(policy, prio).map_err(|source| SchedError::Os {
                what: format!("scheduling policy {}", self.policy),
                source,
            })?;
        }
        if let Some(n) = self.nice {
            set_nice(n).map_err(|source| SchedError::Os { what: format!("nice {n}"), source })?;
        }
        Ok(())
    }
}

impl Sched {
    /// Apply to the calling thread *all* of this setting, also where it
    /// is the default (a live change: a thread that ran at `fifo:50` on CPU
    /// 1 goes back to `other`, every CPU and nice 0). Checked first.
    pub fn reapply_to_current_thread(&self) -> Result<(), SchedError> {
        self.check()?;
        let cpus = if self.cpus.is_empty() { configured_cpus() } else { self.cpus.clone() };
        set_affinity(&cpus)?;
        let (policy, prio) = self.policy.to_libc();
        set_policy(policy, prio).map_err(|source| SchedError::Os {
            what: format!("scheduling policy {}", self.policy),
            source,
        })?;
        if !matches!(self.policy, SchedPolicy::Fifo(_) | SchedPolicy::Rr(_)) {
            let n = self.nice.unwrap_or(0);
            set_nice(n).map_err(|source| SchedError::Os { what: format!("nice {n}"), source })?;
        }
        Ok(())
    }
}

/// Every CPU the kernel was configured with (online or not), within the
/// CPU set size.
#[allow(unsafe_code)]
fn configured_cpus() -> Vec<usize> {
    // SAFETY: sysconf has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
    let n = usize::try_from(n).unwrap_or(1).clamp(1, libc::CPU_SETSIZE as usize);
    (0..n).collect()
}

#[allow(unsafe_code)]
fn set_affinity(cpus: &[usize]) -> Result<(), SchedError> {
    // SAFETY: cpu_set_t is a plain bit array, valid when zeroed.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        // SAFETY: `c` was checked below CPU_SETSIZE, inside `set`.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: pid 0 is the calling thread; `set` is a live cpu_set_t and
    // its exact size is passed.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if rc != 0 {
        return Err(SchedError::Os {
            what: format!("CPUs {cpus:?}: sched_setaffinity"),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[allow(unsafe_code)]
fn set_policy(policy: libc::c_int, prio: i32) -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: prio };
    // SAFETY: pthread_self() is the calling thread; `param` is live.
    let rc = unsafe { libc::pthread_setschedparam(libc::pthread_self(), policy, &param) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

#[allow(unsafe_code)]
fn set_nice(nice: i32) -> std::io::Result<()> {
    // SAFETY: gettid has no arguments and cannot fail.
    let tid = unsafe { libc::gettid() };
    // SAFETY: setpriority on this thread's id (Linux: per-thread nice).
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_before_applying() {
        let bad = |s: Sched| s.check().unwrap_err().to_string();
        assert!(bad(Sched { cpus: vec![100_000], ..Sched::default() }).contains("CPU 100000"));
        assert!(bad(Sched { policy: SchedPolicy::Fifo(0), ..Sched::default() }).contains("1..=99"));
        assert!(bad(Sched { nice: Some(30), ..Sched::default() }).contains("-20..=19"));
        assert!(bad(Sched { policy: SchedPolicy::Rr(5), nice: Some(1), ..Sched::default() })
            .contains("real-time"));
        Sched { cpus: vec![0], ..Sched::default() }.check().unwrap();
    }

    #[test]
    fn nice_applies_to_this_thread_only() {
        std::thread::spawn(|| {
            Sched { nice: Some(5), ..Sched::default() }.apply_to_current_thread().unwrap();
            // SAFETY-free check through /proc: field 19 of stat is nice.
            let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
            let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
            let nice: i32 = after_comm.split(' ').nth(16).unwrap().parse().unwrap();
            assert_eq!(nice, 5);
        })
        .join()
        .unwrap();
    }
}
