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

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

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
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Started { name, pid, restarts: 0 } => write!(f, "{name}: started, pid {pid}"),
            Event::Started { name, pid, restarts } => {
                write!(f, "{name}: restarted (#{restarts}), pid {pid}")
            }
            Event::Exited { name, status, restart_in: Some(d), .. } => {
                write!(f, "{name}: exited ({status}); restarting in {} ms", d.as_millis())
            }
            Event::Exited { name, status, .. } => write!(f, "{name}: exited ({status})"),
            Event::GaveUp { name, restarts } => {
                write!(f, "{name}: failed after {restarts} restarts; left down")
            }
            Event::SpawnFailed { name, error } => write!(f, "{name}: could not start: {error}"),
        }
    }
}

struct Supervised {
    spec: ProcSpec,
    child: Option<Child>,
    restarts: u32,
    restart_at: Option<Instant>,
    done: bool,
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
        if quiet {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
        match cmd.spawn() {
            Ok(c) => {
                let pid = c.id();
                p.child = Some(c);
                p.restart_at = None;
                Event::Started { name: p.spec.name.clone(), pid, restarts: p.restarts }
            }
            Err(e) => {
                p.done = true;
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
                    Ok(None) => continue,
                    Err(e) => {
                        events.push(Event::Exited {
                            name: p.spec.name.clone(),
                            status: format!("wait failed: {e}"),
                            failed: true,
                            restart_in: None,
                        });
                        p.child = None;
                        p.done = true;
                        continue;
                    }
                };
                p.child = None;
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

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop(Duration::from_millis(500));
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
}
