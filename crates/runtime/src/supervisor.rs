//! Process-per-NF supervision.
//!
//! Each NF (or group of NFs) of a multi-process deployment is a child
//! process. The supervisor starts them, notices when one exits, reports it,
//! and restarts it by policy: `never`, or `on-failure` with a maximum number
//! of restarts and an exponential back-off. A clean exit (status 0) is not a
//! failure. Neighbours are separate processes, so they keep running and
//! keep their state while one NF is down; their shared-memory ports report
//! the disconnection and take the restarted peer back (see
//! `braid_io::shm`).
//!
//! A process can also hang: alive, but its packet loop stuck (a deadlock,
//! an endless loop, SIGSTOP). With a watchdog ([`ProcSpec::watchdog`]) the
//! child gets the write end of a pipe, its number in the environment
//! variable [`HEARTBEAT_FD_ENV`], and writes a byte to it every time its
//! loop comes round (at least every [`HEARTBEAT_INTERVAL`]). The watchdog
//! arms at the first byte (so a slow start, such as waiting for a
//! neighbour, is not a hang); once armed, a child silent for longer than
//! the watchdog period is killed (SIGKILL) and reported as hung, and the
//! restart policy treats it like any other failure.
//!
//! Children die with the supervisor: each is started with
//! `PR_SET_PDEATHSIG` = SIGKILL, so a supervisor killed without the chance
//! to stop them (SIGKILL, a crash) leaves no NF process behind, busy
//! polling a core. A process that failed and will not be restarted (given
//! up after its maximum restarts, or failed under `never`) is reported by
//! [`Supervisor::given_up`], so the caller can stop the chain instead of
//! running on without it.

use std::io::{ErrorKind, Read};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Environment variable naming the heartbeat pipe's descriptor in a child.
pub const HEARTBEAT_FD_ENV: &str = "BRAID_HEARTBEAT_FD";
/// How often a supervised child should write its heartbeat byte.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);

/// When to restart a process that exited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Report the exit, never restart.
    Never,
    /// Restart after a non-zero exit or a signal, at most `max_restarts`
    /// times, waiting `backoff`, then twice as long each time (capped at
    /// `max_backoff`).
    OnFailure { max_restarts: u32, backoff: Duration, max_backoff: Duration },
}

impl RestartPolicy {
    /// `on-failure` with `max_restarts`, starting at 100 ms, capped at 5 s.
    pub fn on_failure(max_restarts: u32) -> RestartPolicy {
        RestartPolicy::OnFailure {
            max_restarts,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// One supervised process.
#[derive(Clone, Debug)]
pub struct ProcSpec {
    /// Name in reports (the NF instance name).
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Run inside this network namespace (`ip netns exec`).
    pub netns: Option<String>,
    pub policy: RestartPolicy,
    /// Kill the process when its heartbeat stops for this long (see the
    /// module documentation); `None`: no watchdog.
    pub watchdog: Option<Duration>,
}

/// What happened, for the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Started {
        name: String,
        pid: u32,
        restarts: u32,
    },
    /// The process exited; `restart_in` is set when it will be restarted.
    Exited {
        name: String,
        status: String,
        failed: bool,
        restart_in: Option<Duration>,
    },
    /// Failed again after `restarts` restarts: left down.
    GaveUp {
        name: String,
        restarts: u32,
    },
    /// Starting the program failed (e.g. not found).
    SpawnFailed {
        name: String,
        error: String,
    },
    /// The heartbeat stopped for `silent`: the process was killed (its exit
    /// follows as [`Event::Exited`]).
    Hung {
        name: String,
        pid: u32,
        silent: Duration,
    },
}

/// `name` as one file-name component: only ASCII letters, digits, `.`, `_`
/// and `-` kept, anything else (a `/`, a control character) becomes `_`,
/// so a chain named `x/../../somewhere` cannot place files outside the
/// folder it is joined to; `.` and `..` alone become `_`.
pub fn file_name_part(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' })
        .collect();
    match safe.as_str() {
        "" | "." | ".." => "_".to_string(),
        _ => safe,
    }
}

/// `name` with control characters escaped (`\n`, `\u{1b}`), so a name from
/// a descriptor cannot rewrite the terminal or forge log lines.
pub fn printable(name: &str) -> std::borrow::Cow<'_, str> {
    if !name.chars().any(char::is_control) {
        return name.into();
    }
    name.chars()
        .map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() })
        .collect::<String>()
        .into()
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Event::Started { name, .. }
            | Event::Exited { name, .. }
            | Event::GaveUp { name, .. }
            | Event::SpawnFailed { name, .. }
            | Event::Hung { name, .. } => printable(name),
        };
        match self {
            Event::Started { pid, restarts: 0, .. } => write!(f, "{name}: started, pid {pid}"),
            Event::Started { pid, restarts, .. } => {
                write!(f, "{name}: restarted (#{restarts}), pid {pid}")
            }
            Event::Exited { status, restart_in: Some(d), .. } => {
                write!(f, "{name}: exited ({status}); restarting in {} ms", d.as_millis())
            }
            Event::Exited { status, .. } => write!(f, "{name}: exited ({status})"),
            Event::GaveUp { restarts, .. } => {
                write!(f, "{name}: failed after {restarts} restarts; left down")
            }
            Event::SpawnFailed { error, .. } => write!(f, "{name}: could not start: {error}"),
            Event::Hung { pid, silent, .. } => write!(
                f,
                "{name}: hung (no heartbeat for {} ms); killing pid {pid}",
                silent.as_millis()
            ),
        }
    }
}

struct Supervised {
    spec: ProcSpec,
    child: Option<Child>,
    restarts: u32,
    restart_at: Option<Instant>,
    done: bool,
    /// Failed and left down (not stopped by the supervisor).
    failed_for_good: bool,
    /// Read end of the running child's heartbeat pipe (non-blocking).
    beat: Option<std::io::PipeReader>,
    /// When the last heartbeat byte came; `None` until the first (armed).
    last_beat: Option<Instant>,
}

/// A heartbeat pipe: the read end non-blocking, the write end inheritable
/// by a child (no close-on-exec).
fn heartbeat_pipe() -> std::io::Result<(std::io::PipeReader, std::io::PipeWriter)> {
    let (r, w) = std::io::pipe()?;
    // SAFETY: fcntl(2) on descriptors this function owns; F_GETFL/F_SETFL
    // and F_GETFD/F_SETFD only change flags of those descriptors.
    unsafe {
        let fl = libc::fcntl(r.as_raw_fd(), libc::F_GETFL);
        if fl < 0 || libc::fcntl(r.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = libc::fcntl(w.as_raw_fd(), libc::F_GETFD);
        if fd < 0 || libc::fcntl(w.as_raw_fd(), libc::F_SETFD, fd & !libc::FD_CLOEXEC) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((r, w))
}

/// The supervisor. Dropping it stops every child.
pub struct Supervisor {
    procs: Vec<Supervised>,
    quiet: bool,
}

fn describe(st: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "unknown status".into(),
    }
}

impl Supervisor {
    /// A supervisor for `specs`; nothing runs until [`Supervisor::start`].
    pub fn new(specs: Vec<ProcSpec>) -> Supervisor {
        let procs = specs
            .into_iter()
            .map(|spec| Supervised {
                spec,
                child: None,
                restarts: 0,
                restart_at: None,
                done: false,
                failed_for_good: false,
                beat: None,
                last_beat: None,
            })
            .collect();
        Supervisor { procs, quiet: false }
    }

    /// Send the children's stdout and stderr to /dev/null (tests).
    pub fn quiet(mut self) -> Supervisor {
        self.quiet = true;
        self
    }

    fn spawn(&mut self, i: usize) -> Event {
        let quiet = self.quiet;
        let p = &mut self.procs[i];
        let mut cmd = match &p.spec.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&p.spec.program);
                c
            }
            None => Command::new(&p.spec.program),
        };
        cmd.args(&p.spec.args).stdin(Stdio::null());
        die_with_this_process(&mut cmd);
        if quiet {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
        // The write end stays open in this process only until the child has
        // it (dropped at the end of this function).
        let mut writer = None;
        if p.spec.watchdog.is_some() {
            match heartbeat_pipe() {
                Ok((r, w)) => {
                    cmd.env(HEARTBEAT_FD_ENV, w.as_raw_fd().to_string());
                    p.beat = Some(r);
                    writer = Some(w);
                }
                Err(e) => {
                    p.done = true;
                    return Event::SpawnFailed {
                        name: p.spec.name.clone(),
                        error: format!("heartbeat pipe: {e}"),
                    };
                }
            }
        }
        p.last_beat = None;
        let spawned = cmd.spawn();
        drop(writer);
        match spawned {
            Ok(c) => {
                let pid = c.id();
                p.child = Some(c);
                p.restart_at = None;
                Event::Started { name: p.spec.name.clone(), pid, restarts: p.restarts }
            }
            Err(e) => {
                p.done = true;
                p.failed_for_good = true;
                p.beat = None;
                Event::SpawnFailed {
                    name: p.spec.name.clone(),
                    error: format!("{}: {e}", p.spec.program.display()),
                }
            }
        }
    }

    /// Start every process.
    pub fn start(&mut self) -> Vec<Event> {
        (0..self.procs.len()).map(|i| self.spawn(i)).collect()
    }

    /// Check every process once: report exits, restart those whose back-off
    /// has passed. Never blocks.
    pub fn poll(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        for i in 0..self.procs.len() {
            let p = &mut self.procs[i];
            if let Some(child) = &mut p.child {
                let status = match child.try_wait() {
                    Ok(Some(st)) => st,
                    Ok(None) => {
                        if let Some(e) = check_heartbeat(p) {
                            events.push(e);
                        }
                        continue;
                    }
                    Err(e) => {
                        events.push(Event::Exited {
                            name: p.spec.name.clone(),
                            status: format!("wait failed: {e}"),
                            failed: true,
                            restart_in: None,
                        });
                        p.child = None;
                        p.done = true;
                        p.failed_for_good = true;
                        continue;
                    }
                };
                p.child = None;
                p.beat = None;
                let failed = !status.success();
                let restart_in = match p.spec.policy {
                    RestartPolicy::OnFailure { max_restarts, backoff, max_backoff }
                        if failed && p.restarts < max_restarts =>
                    {
                        let d = backoff.saturating_mul(1u32 << p.restarts.min(16)).min(max_backoff);
                        Some(d)
                    }
                    _ => None,
                };
                events.push(Event::Exited {
                    name: p.spec.name.clone(),
                    status: describe(status),
                    failed,
                    restart_in,
                });
                match restart_in {
                    Some(d) => p.restart_at = Some(Instant::now() + d),
                    None => {
                        p.done = true;
                        p.failed_for_good = failed;
                        if failed && matches!(p.spec.policy, RestartPolicy::OnFailure { .. }) {
                            events.push(Event::GaveUp {
                                name: p.spec.name.clone(),
                                restarts: p.restarts,
                            });
                        }
                    }
                }
            } else if p.restart_at.is_some_and(|t| Instant::now() >= t) {
                p.restarts += 1;
                events.push(self.spawn(i));
            }
        }
        events
    }

    /// The first process that failed and will not run again (given up
    /// after its restarts, failed under `never`, or could not start).
    pub fn given_up(&self) -> Option<&str> {
        self.procs.iter().find(|p| p.failed_for_good).map(|p| p.spec.name.as_str())
    }

    /// Whether process `name` has sent a heartbeat since it (re)started.
    pub fn heartbeat_seen(&self, name: &str) -> bool {
        self.procs.iter().any(|p| p.spec.name == name && p.last_beat.is_some())
    }

    /// Processes running now.
    pub fn running(&self) -> usize {
        self.procs.iter().filter(|p| p.child.is_some()).count()
    }

    /// True when no process runs and none will be restarted.
    pub fn finished(&self) -> bool {
        self.procs.iter().all(|p| p.child.is_none() && (p.done || p.restart_at.is_none()))
    }

    /// Restarts so far of process `name`.
    pub fn restarts(&self, name: &str) -> Option<u32> {
        self.procs.iter().find(|p| p.spec.name == name).map(|p| p.restarts)
    }

    /// The pid of process `name`, if it runs.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.procs
            .iter()
            .find(|p| p.spec.name == name)
            .and_then(|p| p.child.as_ref())
            .map(Child::id)
    }

    /// Stop every process: SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        for p in &mut self.procs {
            p.done = true;
            p.restart_at = None;
            if let Some(c) = &p.child {
                // SAFETY: kill(2) on the pid of our own child, which has not
                // been reaped yet (so the pid cannot have been reused).
                unsafe {
                    libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
                }
            }
        }
        let deadline = Instant::now() + grace;
        for p in &mut self.procs {
            if let Some(mut c) = p.child.take() {
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = c.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Make the child started by `cmd` receive SIGKILL when this process
/// (more exactly: the thread that starts it) dies.
pub fn die_with_this_process(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the child between fork and exec and only
    // makes async-signal-safe system calls (prctl, getppid); it allocates
    // nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before the prctl: then nobody would
            // send the signal.
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Read the heartbeat bytes of `p`'s running child; kill it if it has been
/// silent for longer than its watchdog period since it armed.
fn check_heartbeat(p: &mut Supervised) -> Option<Event> {
    let (period, reader) = (p.spec.watchdog?, p.beat.as_mut()?);
    let mut buf = [0u8; 64];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break, // the child closed it: silence from now on
            Ok(_) => p.last_beat = Some(Instant::now()),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break, // WouldBlock: nothing more now
        }
    }
    let silent = p.last_beat?.elapsed();
    if silent <= period {
        return None;
    }
    let child = p.child.as_mut()?;
    let pid = child.id();
    // Child::kill is SIGKILL, which also ends a stopped process.
    let _ = child.kill();
    p.last_beat = None;
    Some(Event::Hung { name: p.spec.name.clone(), pid, silent })
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod name_tests {
    use super::*;

    #[test]
    fn names_become_one_safe_path_component() {
        assert_eq!(file_name_part("x/../../somewhere"), "x_.._.._somewhere");
        assert_eq!(file_name_part(".."), "_");
        assert_eq!(file_name_part(""), "_");
        assert_eq!(file_name_part("fw-1.a_b"), "fw-1.a_b");
        assert_eq!(file_name_part("a\nb\u{1b}c é"), "a_b_c__");
        let dir = std::path::Path::new("/run/braid");
        let joined = dir.join(file_name_part("../../etc/x"));
        assert_eq!(joined.parent(), Some(dir));
    }

    #[test]
    fn control_characters_are_escaped_when_printed() {
        assert_eq!(printable("fw"), "fw");
        assert_eq!(printable("a\nb\u{1b}[2J"), "a\\nb\\u{1b}[2J");
        let e = Event::GaveUp { name: "x\ry".into(), restarts: 3 };
        assert_eq!(e.to_string(), "x\\ry: failed after 3 restarts; left down");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(name: &str, script: &str, policy: RestartPolicy) -> ProcSpec {
        ProcSpec {
            name: name.into(),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            netns: None,
            policy,
            watchdog: None,
        }
    }

    fn fast(max: u32) -> RestartPolicy {
        RestartPolicy::OnFailure {
            max_restarts: max,
            backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
        }
    }

    /// Poll until `done` or 10 s, collecting events.
    fn run_until(s: &mut Supervisor, done: impl Fn(&Supervisor, &[Event]) -> bool) -> Vec<Event> {
        let mut all = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done(s, &all) {
            assert!(Instant::now() < deadline, "timed out; events so far: {all:?}");
            all.extend(s.poll());
            std::thread::sleep(Duration::from_millis(5));
        }
        all
    }

    #[test]
    fn failing_process_is_restarted_then_given_up_while_neighbour_runs() {
        let mut s = Supervisor::new(vec![
            sh("crasher", "exit 3", fast(2)),
            sh("neighbour", "sleep 30", RestartPolicy::Never),
        ])
        .quiet();
        let started = s.start();
        assert_eq!(started.len(), 2);
        let neighbour_pid = s.pid("neighbour").unwrap();
        let ev = run_until(&mut s, |_, ev| ev.iter().any(|e| matches!(e, Event::GaveUp { .. })));
        let exits = ev.iter().filter(|e| matches!(e, Event::Exited { failed: true, .. })).count();
        assert_eq!(exits, 3, "first run + 2 restarts: {ev:?}");
        assert_eq!(s.restarts("crasher"), Some(2));
        assert!(ev
            .iter()
            .any(|e| e.to_string() == "crasher: exited (status 3); restarting in 10 ms"));
        assert!(
            ev.iter().any(|e| e.to_string().contains("restarting in 20 ms")),
            "back-off doubles"
        );
        assert_eq!(
            s.pid("neighbour"),
            Some(neighbour_pid),
            "the neighbour kept running, same process"
        );
        assert_eq!(s.running(), 1);
        assert!(!s.finished());
        assert_eq!(s.given_up(), Some("crasher"));
        s.stop(Duration::from_millis(200));
        assert_eq!(s.running(), 0);
    }

    #[test]
    fn killed_process_is_restarted_clean_exit_is_not() {
        let mut s =
            Supervisor::new(vec![sh("nf", "sleep 30", fast(5)), sh("ok", "exit 0", fast(5))])
                .quiet();
        s.start();
        let pid = s.pid("nf").unwrap();
        // SAFETY: SIGKILL to our own unreaped child.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        let ev = run_until(&mut s, |s, _| s.restarts("nf") == Some(1) && s.pid("nf").is_some());
        assert!(
            ev.iter().any(|e| e.to_string().starts_with("nf: exited (killed by signal 9)")),
            "{ev:?}"
        );
        assert!(ev.iter().any(|e| matches!(e, Event::Exited { name, failed: false, restart_in: None, .. } if name == "ok")));
        assert_ne!(s.pid("nf"), Some(pid));
        assert_eq!(s.restarts("ok"), Some(0));
        assert_eq!(s.given_up(), None, "restarted and clean exits are not given up");
    }

    #[test]
    fn never_policy_and_missing_program() {
        let mut s = Supervisor::new(vec![
            sh("once", "exit 1", RestartPolicy::Never),
            ProcSpec {
                name: "ghost".into(),
                program: "/nonexistent/braid-nf".into(),
                args: vec![],
                netns: None,
                policy: RestartPolicy::on_failure(3),
                watchdog: None,
            },
        ])
        .quiet();
        let ev = s.start();
        assert!(
            ev[1].to_string().starts_with("ghost: could not start: /nonexistent/braid-nf"),
            "{}",
            ev[1]
        );
        let ev = run_until(&mut s, |s, _| s.finished());
        assert!(
            matches!(&ev[..], [Event::Exited { failed: true, restart_in: None, .. }]),
            "{ev:?}"
        );
    }

    #[test]
    fn children_die_with_the_thread_that_started_them() {
        // A supervisor whose thread ends without stopping it (as when the
        // supervising process is killed): the kernel kills the child.
        let pid = std::thread::spawn(|| {
            let mut s =
                Supervisor::new(vec![sh("orphan", "exec sleep 30", RestartPolicy::Never)]).quiet();
            s.start();
            let pid = s.pid("orphan").unwrap();
            std::mem::forget(s);
            pid
        })
        .join()
        .unwrap();
        let mut status = 0;
        // SAFETY: waitpid(2) on our own child (never reaped: its Child was
        // forgotten), blocking until it ends.
        let rc = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
        assert_eq!(rc, pid as libc::pid_t);
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL,
            "{status:#x}"
        );
    }

    /// One heartbeat from a shell (dash cannot redirect to descriptors
    /// above 9, so through /proc).
    const BEAT: &str = "printf x > /proc/self/fd/$BRAID_HEARTBEAT_FD";

    #[test]
    fn hung_process_is_killed_and_restarted_beating_one_is_left_alone() {
        let watched = |name: &str, script: &str| ProcSpec {
            watchdog: Some(Duration::from_millis(300)),
            ..sh(name, script, fast(3))
        };
        let mut s = Supervisor::new(vec![
            // Beats twice, then hangs (sleeps without beating).
            watched("hangs", &format!("{BEAT}; {BEAT}; exec sleep 30")),
            // Beats every 50 ms for as long as it runs.
            watched("beats", &format!("while :; do {BEAT}; sleep 0.05; done")),
            // Never beats: the watchdog never arms (a slow start is no hang).
            watched("silent", "exec sleep 30"),
        ])
        .quiet();
        s.start();
        let (beats, silent) = (s.pid("beats").unwrap(), s.pid("silent").unwrap());
        let ev =
            run_until(&mut s, |s, _| s.restarts("hangs") == Some(1) && s.pid("hangs").is_some());
        let hung: Vec<_> = ev.iter().filter(|e| matches!(e, Event::Hung { .. })).collect();
        assert_eq!(hung.len(), 1, "{ev:?}");
        assert!(hung[0].to_string().starts_with("hangs: hung (no heartbeat for"), "{}", hung[0]);
        assert!(
            ev.iter().any(|e| e.to_string().starts_with("hangs: exited (killed by signal 9)")),
            "{ev:?}"
        );
        // Watch a little longer: the others are neither killed nor restarted.
        let until = Instant::now() + Duration::from_millis(700);
        while Instant::now() < until {
            let ev = s.poll();
            assert!(ev.iter().all(|e| !e.to_string().starts_with("beats")), "{ev:?}");
            assert!(ev.iter().all(|e| !e.to_string().starts_with("silent")), "{ev:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!((s.pid("beats"), s.pid("silent")), (Some(beats), Some(silent)));
        assert!(s.heartbeat_seen("beats") && !s.heartbeat_seen("silent"));
    }
}
