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
    /// The EEVDF slice (µs, [`SLICE_US_MIN`]..=[`SLICE_US_MAX`]) for the
    /// `other` and `batch` policies: how long the thread may run before
    /// the fair scheduler considers another (Linux 6.12+, given as
    /// `sched_runtime` to `sched_setattr`). None: the kernel's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slice_us: Option<u64>,
}

/// Shortest EEVDF slice the kernel takes (0.1 ms; it clamps below).
pub const SLICE_US_MIN: u64 = 100;
/// Longest EEVDF slice the kernel takes (100 ms; it clamps above).
pub const SLICE_US_MAX: u64 = 100_000;

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
    #[error("slice {0} µs is out of range {SLICE_US_MIN}..={SLICE_US_MAX} (0.1 ms to 100 ms, as the kernel bounds it)")]
    SliceOutOfRange(u64),
    #[error("slice_us applies to the EEVDF policies other and batch, not to {0}")]
    SliceWithPolicy(SchedPolicy),
    #[error("the kernel ({kernel}) does not support custom EEVDF slices (Linux 6.12 or later): asked for {wanted_us} µs, sched_getattr reads back {read_ns} ns")]
    SliceUnsupported { kernel: String, wanted_us: u64, read_ns: u64 },
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
        if let Some(us) = self.slice_us {
            if !(SLICE_US_MIN..=SLICE_US_MAX).contains(&us) {
                return Err(SchedError::SliceOutOfRange(us));
            }
            if !matches!(self.policy, SchedPolicy::Other | SchedPolicy::Batch) {
                return Err(SchedError::SliceWithPolicy(self.policy));
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
        if let Some(us) = self.slice_us {
            set_slice(policy, us * 1000)?;
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
        match self.slice_us {
            Some(us) => set_slice(policy, us * 1000)?,
            // Back to the kernel's default slice (a runtime of 0 clears a
            // custom one); only the fair policies have one.
            None if matches!(self.policy, SchedPolicy::Other | SchedPolicy::Batch) => {
                clear_slice(policy)?
            }
            None => {}
        }
        Ok(())
    }
}

/// `struct sched_attr` of `sched_setattr(2)`, its first version
/// (`SCHED_ATTR_SIZE_VER0`, 48 bytes): what every kernel since 3.14 takes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedAttr {
    pub size: u32,
    pub sched_policy: u32,
    pub sched_flags: u64,
    pub sched_nice: i32,
    pub sched_priority: u32,
    /// For the fair policies since Linux 6.12: the EEVDF slice (ns).
    pub sched_runtime: u64,
    pub sched_deadline: u64,
    pub sched_period: u64,
}

/// `sched_getattr(2)` of thread `tid` (0: the calling thread).
#[allow(unsafe_code)]
pub fn get_attr(tid: u32) -> std::io::Result<SchedAttr> {
    let mut attr = SchedAttr::default();
    let size = std::mem::size_of::<SchedAttr>() as libc::c_uint;
    // SAFETY: sched_getattr writes at most `size` bytes into `attr`, a
    // live repr(C) struct of exactly that size; flags must be 0.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            tid as libc::pid_t,
            &mut attr as *mut SchedAttr,
            size,
            0 as libc::c_uint,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(attr)
}

#[allow(unsafe_code)]
fn set_attr(attr: &SchedAttr) -> std::io::Result<()> {
    // SAFETY: pid 0 is the calling thread; sched_setattr reads `attr`, a
    // live repr(C) struct whose `size` field says how much to read.
    let rc = unsafe {
        libc::syscall(libc::SYS_sched_setattr, 0 as libc::pid_t, attr as *const SchedAttr, 0u32)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| format!("Linux {}", s.trim()))
        .unwrap_or_else(|_| "this kernel".to_string())
}

/// Give the calling thread (policy `policy`, other or batch, already
/// set) the EEVDF slice `ns`, keeping its nice; read back and compare, so
/// a kernel without custom slices is named instead of silently ignoring
/// it. On any failure the previous attributes are put back.
fn set_slice(policy: libc::c_int, ns: u64) -> Result<(), SchedError> {
    let os = |what: String| move |source| SchedError::Os { what, source };
    let before = get_attr(0).map_err(os("sched_getattr".into()))?;
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        sched_policy: policy as u32,
        sched_nice: before.sched_nice,
        sched_runtime: ns,
        ..SchedAttr::default()
    };
    set_attr(&attr).map_err(os(format!("slice {} µs: sched_setattr", ns / 1000)))?;
    let after = get_attr(0).map_err(os("sched_getattr".into()))?;
    if after.sched_runtime != ns {
        let _ = set_attr(&SchedAttr { size: attr.size, ..before });
        return Err(SchedError::SliceUnsupported {
            kernel: kernel_release(),
            wanted_us: ns / 1000,
            read_ns: after.sched_runtime,
        });
    }
    Ok(())
}

/// Drop a custom slice of the calling thread (policy `policy`, other or
/// batch), keeping its nice.
fn clear_slice(policy: libc::c_int) -> Result<(), SchedError> {
    let os = |what: &str| {
        let what = what.to_string();
        move |source| SchedError::Os { what, source }
    };
    let before = get_attr(0).map_err(os("sched_getattr"))?;
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        sched_policy: policy as u32,
        sched_nice: before.sched_nice,
        ..SchedAttr::default()
    };
    set_attr(&attr).map_err(os("default slice: sched_setattr"))
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

    #[test]
    fn an_eevdf_slice_is_applied_read_back_and_refused_out_of_range() {
        std::thread::spawn(|| {
            let default_slice = get_attr(0).unwrap().sched_runtime;
            // Out of range on either side, or with a policy that has no
            // slice: refused before anything is touched.
            for (s, what) in [
                (Sched { slice_us: Some(99), ..Sched::default() }, "out of range 100..=100000"),
                (Sched { slice_us: Some(100_001), ..Sched::default() }, "out of range"),
                (
                    Sched { slice_us: Some(500), policy: SchedPolicy::Idle, ..Sched::default() },
                    "not to idle",
                ),
            ] {
                let e = s.apply_to_current_thread().unwrap_err().to_string();
                assert!(e.contains(what), "{e}");
                assert_eq!(get_attr(0).unwrap().sched_runtime, default_slice);
            }
            let s = Sched { slice_us: Some(3_000), nice: Some(2), ..Sched::default() };
            match s.apply_to_current_thread() {
                Ok(()) => {
                    let a = get_attr(0).unwrap();
                    assert_eq!((a.sched_policy, a.sched_nice, a.sched_runtime), (0, 2, 3_000_000));
                    // A live change back to the defaults clears it.
                    Sched { nice: Some(2), ..Sched::default() }
                        .reapply_to_current_thread()
                        .unwrap();
                    let a = get_attr(0).unwrap();
                    assert_eq!(a.sched_runtime, default_slice);
                    assert_eq!(a.sched_nice, 2);
                    // Batch keeps the slice too.
                    let b = Sched {
                        policy: SchedPolicy::Batch,
                        slice_us: Some(100_000),
                        nice: Some(2),
                        ..Sched::default()
                    };
                    b.reapply_to_current_thread().unwrap();
                    let a = get_attr(0).unwrap();
                    assert_eq!((a.sched_policy, a.sched_runtime), (3, 100_000_000));
                }
                // Before Linux 6.12 the kernel ignores the runtime of a
                // fair task: the error names the kernel, and the thread
                // keeps its slice.
                Err(e @ SchedError::SliceUnsupported { .. }) => {
                    assert!(e.to_string().contains("Linux"), "{e}");
                    assert_eq!(get_attr(0).unwrap().sched_runtime, default_slice);
                }
                Err(e) => panic!("{e}"),
            }
        })
        .join()
        .unwrap();
    }
}
