//! One braidd per testbed host that asks for one (`daemon: true` in the
//! topology; `braid testbed up --daemons` sets it on every NF host).
//!
//! Everything lives under the testbed's run directory, the state file's
//! path without its extension (`/run/braid/testbed.json` →
//! `/run/braid/testbed/`):
//!
//! ```text
//! migrate.key            32 random bytes as 64 hex digits, mode 0600, shared by every daemon
//! <host>/braidd.sock     the daemon's API socket
//! <host>/state/          its state directory (store, audit log)
//! <host>/braidd.log      its standard error
//! ```
//!
//! Each daemon has a directory of its own because braidd keeps the sockets
//! of its NF processes beside its API socket (`braidd-procs/`).
//!
//! A daemon runs in its host's namespace (`ip netns exec`, which execs it:
//! the pid is braidd's) in a session of its own, standard input and output
//! on `/dev/null`, with `--migrate-listen` on the host's first address,
//! port [`MIGRATE_PORT`], and the shared key. The state file records its
//! pid and start time (field 22 of `/proc/PID/stat`); a process is only
//! signalled through a pidfd opened *before* both were checked, so a pid
//! reused by another process is never signalled.
//!
//! Readiness and `status` ask `GET /v1/status` on the socket with a plain
//! HTTP/1.0 request: the testbed may not depend on braid-daemon (same
//! layer, docs/architecture.md), and this is all it needs of the API.

use crate::state::State;
use crate::topology::Topology;
use crate::{Options, TestbedError};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The TCP port of every daemon's `migrate_listen` (on its host's first
/// address; each host is its own namespace, so they never clash).
pub const MIGRATE_PORT: u16 = 9480;
/// How long `up` waits for each daemon's first answer.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `down` gives a daemon to drain after SIGTERM before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// After SIGKILL: only an uninterruptible sleep can delay the exit.
const KILL_TIMEOUT: Duration = Duration::from_secs(2);
/// Lines of a failed daemon's log quoted in the error.
const LOG_TAIL_LINES: usize = 12;
/// Name of the migration key file in the run directory.
const KEY_FILE: &str = "migrate.key";

/// A daemon `up` started, as the state file records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonRecord {
    pub host: String,
    pub pid: u32,
    /// Start time of the process (clock ticks after boot, `/proc/PID/stat`
    /// field 22): with the pid, what identifies it.
    pub start_time: u64,
    /// Its directory: socket, state directory, log.
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub migrate_listen: SocketAddrV4,
}

impl DaemonRecord {
    /// The recorded process is still running (a zombie is not).
    pub fn is_running(&self) -> bool {
        Process::open(self.pid, self.start_time).is_some()
    }

    /// Ask `GET /v1/status` on its socket; the pid braidd reports.
    pub fn status_pid(&self, timeout: Duration) -> Result<u32, String> {
        status_pid(&self.socket, timeout)
    }
}

/// The run directory of the testbed whose state file is `state_path`.
pub fn run_dir(state_path: &Path) -> PathBuf {
    if state_path.extension().is_some() {
        state_path.with_extension("")
    } else {
        // Never the state file itself.
        state_path.with_extension("d")
    }
}

/// The hosts of `topo` that get a daemon.
fn daemon_hosts(topo: &Topology) -> impl Iterator<Item = &str> {
    topo.hosts.iter().filter(|h| h.daemon).map(|h| h.name.as_str())
}

/// Before anything is created: the braidd binary is an executable file,
/// and no daemon directory or key of an earlier testbed is in the way (a
/// stale store would start its old chains again).
pub(crate) fn check_before_up(
    topo: &Topology,
    opts: &Options,
    braidd: Option<&Path>,
) -> Result<(), TestbedError> {
    let hosts: Vec<&str> = daemon_hosts(topo).collect();
    if hosts.is_empty() {
        return Ok(());
    }
    let Some(braidd) = braidd else {
        return Err(TestbedError::State(format!(
            "topology {:?} asks for braidd on {} but no braidd binary was given",
            topo.name,
            hosts.join(", ")
        )));
    };
    let bad = |why: String| TestbedError::Braidd { path: braidd.display().to_string(), why };
    let meta = std::fs::metadata(braidd).map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() {
        return Err(bad("not a file".into()));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(bad("not executable".into()));
    }
    let run = run_dir(&opts.state_path);
    let in_the_way = hosts.iter().map(|h| run.join(h)).chain([run.join(KEY_FILE)]);
    for p in in_the_way {
        if p.exists() {
            return Err(TestbedError::State(format!(
                "{} already exists (left by an earlier testbed?); remove it, or choose another --state",
                p.display()
            )));
        }
    }
    Ok(())
}

/// A daemon just spawned, still our child until `up` returns.
struct Spawned {
    record: DaemonRecord,
    child: Child,
}

/// Start a daemon on every host of `topo` that asks for one, recording
/// each in `st` (and saving it) as soon as it exists, then wait until all
/// answer. On error what was started is in `st`, for the caller's
/// rollback.
pub(crate) fn start_all(
    topo: &Topology,
    opts: &Options,
    braidd: &Path,
    st: &mut State,
    save: &dyn Fn(&State) -> Result<(), TestbedError>,
) -> Result<(), TestbedError> {
    let hosts: Vec<&str> = daemon_hosts(topo).collect();
    if hosts.is_empty() {
        return Ok(());
    }
    let run = run_dir(&opts.state_path);
    // Recorded before they are made: a `down` after an `up` killed here
    // removes them (what does not exist yet is skipped).
    st.run_dir = Some(run.clone());
    st.migrate_key = Some(run.join(KEY_FILE));
    save(st)?;
    make_private_dir(&run)?;
    let key = run.join(KEY_FILE);
    write_key(&key)?;
    let mut spawned = Vec::new();
    for host in hosts {
        let addr = topo.first_addr(host).ok_or_else(|| {
            TestbedError::State(format!("host {host:?} has no address for migrate_listen"))
        })?;
        let ns = crate::netns_name(opts, host);
        let sp = spawn(braidd, &ns, host, &run, &key, SocketAddrV4::new(addr, MIGRATE_PORT))?;
        st.daemons.push(sp.record.clone());
        spawned.push(sp);
        save(st)?;
    }
    let deadline = Instant::now() + READY_TIMEOUT;
    for sp in &mut spawned {
        wait_ready(sp, deadline)?;
    }
    Ok(())
}

fn io_error(what: String) -> impl FnOnce(std::io::Error) -> TestbedError {
    move |source| TestbedError::Io { what, source }
}

fn make_private_dir(dir: &Path) -> Result<(), TestbedError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_error(format!("creating {}", dir.display())))
}

/// 32 bytes from the kernel's random generator, as 64 hex digits (braidd
/// trims white space around a key, which raw bytes could contain), in a
/// new file of mode 0600.
fn write_key(path: &Path) -> Result<(), TestbedError> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(io_error("reading /dev/urandom".into()))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error(format!("creating {}", path.display())))?;
    f.write_all(format!("{hex}\n").as_bytes())
        .map_err(io_error(format!("writing {}", path.display())))
}

fn spawn(
    braidd: &Path,
    netns: &str,
    host: &str,
    run: &Path,
    key: &Path,
    migrate_listen: SocketAddrV4,
) -> Result<Spawned, TestbedError> {
    let dir = run.join(host);
    make_private_dir(&dir)?;
    let (socket, log) = (dir.join("braidd.sock"), dir.join("braidd.log"));
    let log_file =
        std::fs::File::create(&log).map_err(io_error(format!("creating {}", log.display())))?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns])
        .arg(braidd)
        .arg("--socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--migrate-key-file")
        .arg(key)
        .arg("--migrate-listen")
        .arg(migrate_listen.to_string())
        .args(["--log-level", "info"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file);
    // SAFETY: runs in the forked child before exec; setsid(2) is
    // async-signal-safe and touches no memory of the parent. Its own
    // session: the terminal's hang-up or Ctrl-C never reaches the daemon.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(io_error(format!("starting braidd in {netns}")))?;
    let pid = child.id();
    // Our child is not reaped yet, so its stat is there even if it exited.
    let start_time = proc_stat(pid).map(|s| s.start_time).ok_or_else(|| {
        TestbedError::State(format!("braidd on host {host:?} (pid {pid}): no /proc/{pid}/stat"))
    })?;
    Ok(Spawned {
        record: DaemonRecord {
            host: host.into(),
            pid,
            start_time,
            dir,
            socket,
            log,
            migrate_listen,
        },
        child,
    })
}

/// Wait until `sp` answers `GET /v1/status` with its own pid.
fn wait_ready(sp: &mut Spawned, deadline: Instant) -> Result<(), TestbedError> {
    let r = &sp.record;
    let failed = |why: String| TestbedError::DaemonStart {
        host: r.host.clone(),
        why,
        log: r.log.display().to_string(),
        tail: log_tail(&r.log),
    };
    loop {
        match status_pid(&r.socket, Duration::from_secs(1)) {
            Ok(pid) if pid == r.pid => return Ok(()),
            Ok(pid) => {
                return Err(failed(format!(
                    "(pid {}): its socket {} is answered by pid {pid}",
                    r.pid,
                    r.socket.display()
                )))
            }
            Err(_) => {}
        }
        if let Ok(Some(status)) = sp.child.try_wait() {
            return Err(failed(format!("(pid {}) exited ({status}) before answering", r.pid)));
        }
        if Instant::now() > deadline {
            return Err(failed(format!(
                "(pid {}) did not answer GET /v1/status on {} within {} s",
                r.pid,
                r.socket.display(),
                READY_TIMEOUT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last lines of a log file, or why it cannot be read.
fn log_tail(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
            if tail.is_empty() {
                "(empty)".into()
            } else {
                tail
            }
        }
        Err(e) => format!("(cannot read it: {e})"),
    }
}

/// `GET /v1/status` on braidd's unix socket: the pid in its answer.
pub fn status_pid(socket: &Path, timeout: Duration) -> Result<u32, String> {
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
    let io = |e: std::io::Error| format!("{}: {e}", socket.display());
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    // HTTP/1.0: the answer ends with the connection, never chunked.
    s.write_all(b"GET /v1/status HTTP/1.0\r\nHost: localhost\r\n\r\n").map_err(io)?;
    let mut answer = Vec::new();
    s.take(1 << 20).read_to_end(&mut answer).map_err(io)?;
    parse_status_answer(&answer).map_err(|e| format!("{}: {e}", socket.display()))
}

/// The pid in braidd's answer to `GET /v1/status`.
fn parse_status_answer(answer: &[u8]) -> Result<u32, String> {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no complete HTTP answer")?;
    let status_line = head.lines().next().unwrap_or_default();
    if status_line.split_whitespace().nth(1) != Some("200") {
        return Err(format!("answered {status_line:?}"));
    }
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("answer is not JSON: {e}"))?;
    if v["daemon"] != "braidd" {
        return Err("the answer is not braidd's status".into());
    }
    v["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .ok_or_else(|| "braidd's status has no pid".into())
}

/// What `down` did to one daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Exited after SIGTERM (braidd drained and removed what it created).
    Terminated,
    /// Still running [`STOP_TIMEOUT`] after SIGTERM: killed (its log
    /// says why it did not drain).
    Killed,
    /// Had already exited (crashed or killed); nothing to signal.
    AlreadyGone,
}

/// Stop the daemon `rec` names: SIGTERM, wait up to `drain` (`down`:
/// [`STOP_TIMEOUT`]), then SIGKILL. A process that is not the recorded
/// one (other start time) is never signalled.
pub(crate) fn stop(rec: &DaemonRecord, drain: Duration) -> Result<Stopped, String> {
    let Some(p) = Process::open(rec.pid, rec.start_time) else {
        return Ok(Stopped::AlreadyGone);
    };
    let who = format!("braidd on host {} (pid {})", rec.host, rec.pid);
    p.signal(libc::SIGTERM).map_err(|e| format!("{who}: SIGTERM: {e}"))?;
    if p.wait_exit(drain) {
        return Ok(Stopped::Terminated);
    }
    p.signal(libc::SIGKILL).map_err(|e| format!("{who}: SIGKILL: {e}"))?;
    if p.wait_exit(KILL_TIMEOUT) {
        Ok(Stopped::Killed)
    } else {
        Err(format!("{who} is still there {} s after SIGKILL", KILL_TIMEOUT.as_secs()))
    }
}

/// Remove what `up` made for the daemons of `st`: their directories
/// (socket, state, log), the key, the run directory if empty. What does
/// not exist is skipped; errors are pushed to `errors`.
pub(crate) fn remove_files(st: &State, errors: &mut Vec<String>) {
    let Some(run) = &st.run_dir else {
        return;
    };
    let removed = |r: std::io::Result<()>, what: &Path| match r {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(format!("removing {}: {e}", what.display()))
        }
        _ => Ok(()),
    };
    for d in &st.daemons {
        // Only a directory of the run directory: a state file edited by
        // hand must not make `down` delete anything else.
        let r = if d.dir.parent() == Some(run.as_path()) {
            removed(std::fs::remove_dir_all(&d.dir), &d.dir)
        } else {
            Err(format!("not removing {}: outside {}", d.dir.display(), run.display()))
        };
        errors.extend(r.err());
    }
    if let Some(key) = &st.migrate_key {
        errors.extend(removed(std::fs::remove_file(key), key).err());
    }
    // Left in place if something else is in it.
    let _ = std::fs::remove_dir(run);
}

/// The fields of `/proc/PID/stat` this module needs.
struct ProcStat {
    state: char,
    start_time: u64,
}

fn proc_stat(pid: u32) -> Option<ProcStat> {
    parse_proc_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `PID (COMM) STATE PPID ...`: COMM may hold spaces and parentheses, so
/// the fields are counted after its last `)`; start time is field 22.
fn parse_proc_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// A pidfd of a recorded daemon, checked to be that very process.
struct Process {
    fd: OwnedFd,
}

impl Process {
    /// The process with `pid` and `start_time`, if it is running. A zombie
    /// of ours is reaped and counts as gone.
    fn open(pid: u32, start_time: u64) -> Option<Process> {
        let pid = libc::pid_t::try_from(pid).ok()?;
        // SAFETY: pidfd_open(2) takes a pid and flags and returns a new
        // descriptor or -1; no memory is passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
        // SAFETY: `fd` was just returned by the kernel and is owned by
        // nothing else.
        let p = Process { fd: unsafe { OwnedFd::from_raw_fd(fd) } };
        // Checked after the descriptor is open: it names this process for
        // as long as it lives, so a pid reused after the check cannot be
        // signalled through it.
        let stat = proc_stat(pid as u32)?;
        if stat.start_time != start_time {
            return None;
        }
        if stat.state == 'Z' {
            p.reap();
            return None;
        }
        Some(p)
    }

    fn signal(&self, sig: libc::c_int) -> std::io::Result<()> {
        // SAFETY: pidfd_send_signal(2) with our descriptor, a signal
        // number, no siginfo (null) and no flags.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            // Exited meanwhile: the wait that follows sees it.
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Wait until the process has exited (at most `timeout`); reaps it if
    /// it is our child.
    fn wait_exit(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pfd =
                libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // Rounded up: a timeout cut to whole milliseconds below would
            // end the wait before the deadline.
            let ms =
                libc::c_int::try_from(left.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX);
            // SAFETY: one valid pollfd for the duration of the call. A
            // pidfd becomes readable when its process exits.
            let r = unsafe { libc::poll(&mut pfd, 1, ms) };
            if r > 0 {
                self.reap();
                return true;
            }
            let interrupted =
                r < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted;
            let timed_out = r == 0 && Instant::now() >= deadline;
            if !(interrupted || r == 0) || timed_out || left.is_zero() {
                return false;
            }
        }
    }

    /// Collect the exit status if the process is our child (a daemon
    /// started by this process, e.g. a library user's `up` and `down`);
    /// otherwise its parent (init, once `braid testbed up` exited) does.
    fn reap(&self) {
        // SAFETY: waitid(2) on our pidfd with a zeroed siginfo it may fill;
        // WNOHANG: never blocks. ECHILD (not our child) is expected.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(
                libc::P_PIDFD,
                self.fd.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_dir_is_the_state_path_without_extension_never_the_file() {
        assert_eq!(run_dir(Path::new("/run/braid/testbed.json")), Path::new("/run/braid/testbed"));
        assert_eq!(run_dir(Path::new("/tmp/x/tb")), Path::new("/tmp/x/tb.d"));
    }

    #[test]
    fn proc_stat_fields_are_counted_after_the_command_name() {
        let line = "4242 (braid d) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 987654 1000 10";
        let s = parse_proc_stat(line).unwrap();
        assert_eq!((s.state, s.start_time), ('S', 987654));
        assert!(parse_proc_stat("4242 (short) S 1").is_none());
        // Our own process: running, and the same start time twice.
        let me = proc_stat(std::process::id()).unwrap();
        assert_eq!(me.start_time, proc_stat(std::process::id()).unwrap().start_time);
        assert!(Process::open(std::process::id(), me.start_time).is_some());
        assert!(Process::open(std::process::id(), me.start_time + 1).is_none());
    }

    #[test]
    fn status_answers_are_checked() {
        let ok = b"HTTP/1.0 200 OK\r\ncontent-type: application/json\r\n\r\n{\"daemon\":\"braidd\",\"pid\":77}";
        assert_eq!(parse_status_answer(ok), Ok(77));
        let e = parse_status_answer(b"HTTP/1.0 404 Not Found\r\n\r\n{}").unwrap_err();
        assert!(e.contains("404"), "{e}");
        let e = parse_status_answer(b"HTTP/1.0 200 OK\r\n\r\n{\"pid\":1}").unwrap_err();
        assert!(e.contains("not braidd"), "{e}");
        assert!(parse_status_answer(b"HTTP/1.0 200 OK\r\n").is_err());
    }

    fn record(pid: u32, start_time: u64) -> DaemonRecord {
        DaemonRecord {
            host: "h".into(),
            pid,
            start_time,
            dir: "/nonexistent".into(),
            socket: "/nonexistent/s".into(),
            log: "/nonexistent/l".into(),
            migrate_listen: SocketAddrV4::new([127, 0, 0, 1].into(), MIGRATE_PORT),
        }
    }

    #[test]
    fn a_process_that_is_not_the_recorded_one_is_left_alone() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let start_time = proc_stat(pid).unwrap().start_time;
        let drain = Duration::from_secs(5);
        // Another start time: the pid was reused, do not touch it.
        assert_eq!(stop(&record(pid, start_time + 1), drain), Ok(Stopped::AlreadyGone));
        assert!(child.try_wait().unwrap().is_none(), "signalled a process not ours");
        // The recorded one: SIGTERM ends sleep, and it is reaped.
        let rec = record(pid, start_time);
        assert!(rec.is_running());
        assert_eq!(stop(&rec, drain), Ok(Stopped::Terminated));
        assert!(!rec.is_running());
        assert_eq!(stop(&rec, drain), Ok(Stopped::AlreadyGone));
    }

    #[test]
    fn a_process_ignoring_sigterm_is_killed_after_the_drain_time() {
        // The ignored disposition survives exec: sleep ignores SIGTERM.
        let mut child =
            Command::new("sh").args(["-c", "trap '' TERM; exec sleep 30"]).spawn().unwrap();
        let pid = child.id();
        // Until sh has run `trap`, SIGTERM would still end it.
        std::thread::sleep(Duration::from_millis(300));
        let rec = record(pid, proc_stat(pid).unwrap().start_time);
        let t = Instant::now();
        assert_eq!(stop(&rec, Duration::from_millis(300)), Ok(Stopped::Killed));
        assert!(t.elapsed() >= Duration::from_millis(300));
        assert!(!rec.is_running());
        // Reaped by `stop`: nothing left for the Child handle.
        assert!(child.try_wait().is_err() || child.try_wait().unwrap().is_some());
    }
}
