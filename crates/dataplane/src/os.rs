//! What the operating system counts for one thread: CPU time (user,
//! system, on-CPU), time waiting on a run queue, context switches,
//! migrations and page faults. Read from `/proc` (and `getrusage` for the
//! calling thread's user/system split, which `/proc` gives only in clock
//! ticks). A [`crate::Worker`] samples itself when its loop starts and
//! when it ends (see [`crate::telemetry::WorkerTelemetry::os`]); a
//! profiler can sample a live worker by its thread id.

use std::path::{Path, PathBuf};

/// One sample of a thread's OS counters. Times in nanoseconds since the
/// thread started; counts since the thread started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ThreadOs {
    /// Kernel thread id.
    pub tid: u32,
    /// CPU time in user mode.
    pub user_ns: u64,
    /// CPU time in the kernel.
    pub system_ns: u64,
    /// Time on a CPU (`schedstat` field 1, nanosecond resolution).
    pub run_ns: u64,
    /// Time runnable but waiting on a run queue (`schedstat` field 2).
    pub wait_ns: u64,
    /// Times it was given a CPU (`schedstat` field 3).
    pub timeslices: u64,
    /// Context switches because it blocked (slept, waited for I/O).
    pub voluntary_switches: u64,
    /// Context switches because the scheduler took the CPU away.
    pub involuntary_switches: u64,
    /// Moves between CPUs (`se.nr_migrations` of `/proc/.../sched`); None
    /// when the kernel does not expose it (no `CONFIG_SCHED_DEBUG`).
    pub migrations: Option<u64>,
    /// Page faults served without I/O.
    pub minor_faults: u64,
    /// Page faults that needed I/O.
    pub major_faults: u64,
    /// The CPU it last ran on.
    pub cpu: u32,
}

/// A sample that could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum OsStatsError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: unexpected contents ({what})")]
    Parse { path: PathBuf, what: &'static str },
}

/// Linux reports `/proc/.../stat` times in USER_HZ ticks, 100 per second
/// on every architecture braid runs on (the kernel ABI fixes it).
const NS_PER_TICK: u64 = 10_000_000;

fn read(path: &Path) -> Result<String, OsStatsError> {
    std::fs::read_to_string(path)
        .map_err(|source| OsStatsError::Read { path: path.to_path_buf(), source })
}

/// The calling thread's kernel id (from `/proc/thread-self`, a link to
/// `PID/task/TID`).
pub fn current_tid() -> Result<u32, OsStatsError> {
    let path = Path::new("/proc/thread-self");
    let link = std::fs::read_link(path)
        .map_err(|source| OsStatsError::Read { path: path.to_path_buf(), source })?;
    link.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok())
        .ok_or(OsStatsError::Parse { path: path.to_path_buf(), what: "no thread id in the link" })
}

impl ThreadOs {
    /// Sample thread `tid` of process `pid`.
    pub fn of(pid: u32, tid: u32) -> Result<ThreadOs, OsStatsError> {
        let dir = PathBuf::from(format!("/proc/{pid}/task/{tid}"));
        let mut s = ThreadOs::read_dir(&dir)?;
        s.tid = tid;
        Ok(s)
    }

    /// Sample the calling thread; user and system time come from
    /// `getrusage(RUSAGE_THREAD)` (microsecond resolution).
    pub fn current() -> Result<ThreadOs, OsStatsError> {
        let mut s = ThreadOs::read_dir(Path::new("/proc/thread-self"))?;
        s.tid = current_tid()?;
        if let Some((user, system)) = rusage_thread() {
            s.user_ns = user;
            s.system_ns = system;
        }
        Ok(s)
    }

    fn read_dir(dir: &Path) -> Result<ThreadOs, OsStatsError> {
        let mut s = ThreadOs::default();
        let p = dir.join("stat");
        let stat = read(&p)?;
        // Fields after the command name (which may hold spaces and
        // parentheses): field 3 (state) is index 0 here.
        let rest = stat
            .rfind(')')
            .map(|i| &stat[i + 1..])
            .ok_or(OsStatsError::Parse { path: p.clone(), what: "no `)` after the name" })?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |field: usize| -> Result<u64, OsStatsError> {
            f.get(field - 3)
                .and_then(|v| v.parse().ok())
                .ok_or(OsStatsError::Parse { path: p.clone(), what: "a stat field is missing" })
        };
        s.minor_faults = num(10)?;
        s.major_faults = num(12)?;
        s.user_ns = num(14)? * NS_PER_TICK;
        s.system_ns = num(15)? * NS_PER_TICK;
        s.cpu = num(39)? as u32;

        [s.run_ns, s.wait_ns, s.timeslices] = schedstat(dir)?;

        let p = dir.join("status");
        let status = read(&p)?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let (Some(vol), Some(invol)) =
            (field("voluntary_ctxt_switches:"), field("nonvoluntary_ctxt_switches:"))
        else {
            return Err(OsStatsError::Parse { path: p, what: "no ctxt_switches lines" });
        };
        (s.voluntary_switches, s.involuntary_switches) = (vol, invol);

        // Only with CONFIG_SCHED_DEBUG; its absence is not an error.
        s.migrations = std::fs::read_to_string(dir.join("sched")).ok().and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("se.nr_migrations"))
                .and_then(|l| l.rsplit(':').next())
                .and_then(|v| v.trim().parse().ok())
        });
        Ok(s)
    }

    /// What happened between `earlier` and `self` (counters of the same
    /// thread; a counter that went back counts as zero).
    pub fn since(&self, earlier: &ThreadOs) -> ThreadOs {
        let d = |a: u64, b: u64| a.saturating_sub(b);
        ThreadOs {
            tid: self.tid,
            user_ns: d(self.user_ns, earlier.user_ns),
            system_ns: d(self.system_ns, earlier.system_ns),
            run_ns: d(self.run_ns, earlier.run_ns),
            wait_ns: d(self.wait_ns, earlier.wait_ns),
            timeslices: d(self.timeslices, earlier.timeslices),
            voluntary_switches: d(self.voluntary_switches, earlier.voluntary_switches),
            involuntary_switches: d(self.involuntary_switches, earlier.involuntary_switches),
            migrations: match (self.migrations, earlier.migrations) {
                (Some(a), Some(b)) => Some(d(a, b)),
                _ => None,
            },
            minor_faults: d(self.minor_faults, earlier.minor_faults),
            major_faults: d(self.major_faults, earlier.major_faults),
            cpu: self.cpu,
        }
    }
}

/// On-CPU time (ns) of thread `tid` of the calling process, from its
/// per-thread CPU clock: one `clock_gettime`, no `/proc` file to open and
/// parse. The same count as `schedstat`'s first field ([`ThreadOs::run_ns`]).
/// None when `tid` is not a live thread of this process (the kernel only
/// serves a thread clock to the thread's own process).
pub fn thread_cpu_ns(tid: u32) -> Option<u64> {
    let tid = libc::clockid_t::try_from(tid).ok()?;
    // The kernel's clock id for a thread's CPU time (MAKE_THREAD_CPUCLOCK
    // in include/linux/posix-timers.h, what glibc's pthread_getcpuclockid
    // returns): the complemented tid shifted by 3, then
    // CPUCLOCK_PERTHREAD_MASK (4) | CPUCLOCK_SCHED (2).
    let clock = ((!tid) << 3) | 4 | 2;
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into `ts`, a live local; a
    // clock id naming no thread of ours is refused with EINVAL.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// On-CPU time (ns) of the calling thread (`CLOCK_THREAD_CPUTIME_ID`):
/// one `clock_gettime`, for a worker measuring its own busy share.
pub fn current_thread_cpu_ns() -> Option<u64> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into `ts`, a live local.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// A thread's `schedstat` in `dir` (`/proc/PID/task/TID`): time on a CPU,
/// time runnable but waiting on a run queue (both ns), times given a CPU.
fn schedstat(dir: &Path) -> Result<[u64; 3], OsStatsError> {
    let p = dir.join("schedstat");
    let v: Vec<u64> = read(&p)?.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    v.try_into().map_err(|_| OsStatsError::Parse { path: p, what: "schedstat has not 3 numbers" })
}

/// Time (ns) the calling thread has spent runnable but waiting for a CPU
/// ([`ThreadOs::wait_ns`] without the other files): one small read, for a
/// worker's adaptive mode once a period. None where the kernel has no
/// schedstat.
pub fn current_thread_wait_ns() -> Option<u64> {
    schedstat(Path::new("/proc/thread-self")).ok().map(|[_, wait, _]| wait)
}

/// The calling thread's on-CPU and run-queue time (ns; None: not known),
/// what a worker's adaptive mode reads of itself at each period's ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadTimes {
    pub cpu_ns: Option<u64>,
    pub wait_ns: Option<u64>,
}

impl ThreadTimes {
    pub fn now() -> ThreadTimes {
        ThreadTimes { cpu_ns: current_thread_cpu_ns(), wait_ns: current_thread_wait_ns() }
    }

    /// What passed between `earlier` and `self`.
    pub fn since(&self, earlier: &ThreadTimes) -> ThreadTimes {
        let d = |a: Option<u64>, b: Option<u64>| a.zip(b).map(|(a, b)| a.saturating_sub(b));
        ThreadTimes {
            cpu_ns: d(self.cpu_ns, earlier.cpu_ns),
            wait_ns: d(self.wait_ns, earlier.wait_ns),
        }
    }
}

/// User and system time of the calling thread, in nanoseconds.
#[allow(unsafe_code)]
fn rusage_thread() -> Option<(u64, u64)> {
    // SAFETY: rusage is plain integers, valid when zeroed.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_THREAD fills `ru`, a live rusage, for the calling
    // thread only.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    if rc != 0 {
        return None;
    }
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    Some((ns(ru.ru_utime), ns(ru.ru_stime)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_threads_spinning_on_one_cpu_wait_for_it() {
        let cpu = 0; // CPU 0 cannot be taken offline on x86.
        let spin = move || {
            crate::Sched { cpus: vec![cpu], ..crate::Sched::default() }
                .apply_to_current_thread()
                .unwrap();
            let before = current_thread_wait_ns().expect("schedstat");
            let t = std::time::Instant::now();
            while t.elapsed() < std::time::Duration::from_millis(80) {
                std::hint::spin_loop();
            }
            let after = current_thread_wait_ns().unwrap();
            assert!(after >= before);
            after - before
        };
        let (a, b) = (std::thread::spawn(spin), std::thread::spawn(spin));
        let waited = a.join().unwrap() + b.join().unwrap();
        // Each ran about half of the other's 80 ms: well over 10 ms waited.
        assert!(waited > 10_000_000, "waited {waited} ns");
    }

    #[test]
    fn a_thread_cpu_clock_counts_what_schedstat_counts() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let h = std::thread::spawn(move || {
            let me = current_tid().unwrap();
            // Spin until 20 ms on a CPU (bounded, on a loaded machine).
            let t = std::time::Instant::now();
            while thread_cpu_ns(me).unwrap() < 20_000_000 && t.elapsed().as_secs() < 5 {
                std::hint::spin_loop();
            }
            tx.send(me).unwrap();
            let _ = stop_rx.recv();
        });
        let tid = rx.recv().unwrap();
        // The thread now waits (no CPU): the two reads see the same time.
        let clock = thread_cpu_ns(tid).unwrap();
        let sched = ThreadOs::of(std::process::id(), tid).unwrap().run_ns;
        assert!(clock >= 20_000_000, "spun 20 ms, clock says {clock} ns");
        assert!(clock.abs_diff(sched) < 2_000_000, "clock {clock} ns, schedstat {sched} ns");
        stop_tx.send(()).unwrap();
        h.join().unwrap();
        // The join returns once the kernel has cleared the thread's tid,
        // which can be a moment before the task is released (CI once read
        // its clock right after the join): wait for it, bounded.
        let gone = (0..2000).any(|_| {
            let gone = thread_cpu_ns(tid).is_none();
            if !gone {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            gone
        });
        assert!(gone, "a thread that is gone has no clock (still read after 2 s)");
        assert_eq!(thread_cpu_ns(1), None, "init is not a thread of ours");
    }

    #[test]
    fn a_sleeping_thread_switches_voluntarily_and_a_spinning_one_runs() {
        let before = ThreadOs::current().unwrap();
        assert_eq!(before.tid, current_tid().unwrap());
        for _ in 0..5 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // Spin until the kernel has counted 5 ms on a CPU (bounded: a
        // loaded machine may give this thread little of it).
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while ThreadOs::current().unwrap().since(&before).run_ns < 5_000_000
            && t.elapsed() < std::time::Duration::from_secs(10)
        {
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        let d = ThreadOs::current().unwrap().since(&before);
        assert!(d.voluntary_switches >= 5, "{d:?}");
        assert!(d.run_ns >= 5_000_000, "{d:?}");
        assert!(d.user_ns + d.system_ns > 0, "{d:?}");
    }

    #[test]
    fn another_thread_is_read_by_id_and_a_gone_one_is_an_error() {
        let pid = std::process::id();
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let h = std::thread::spawn(move || {
            tx.send(current_tid().unwrap()).unwrap();
            done_rx.recv().unwrap();
        });
        let tid = rx.recv().unwrap();
        let s = ThreadOs::of(pid, tid).unwrap();
        assert_eq!(s.tid, tid);
        done_tx.send(()).unwrap();
        h.join().unwrap();
        let e = ThreadOs::of(pid, tid).unwrap_err().to_string();
        assert!(e.contains(&format!("/proc/{pid}/task/{tid}/stat")), "{e}");
    }
}
