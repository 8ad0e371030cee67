//! `braid shm-bench`: packet rate and one-way latency between two NF
//! processes over each virtual-port backend, side by side in one run.
//!
//! Rows (each with every frame size):
//! * `shm`: two processes over a shared-memory port, busy polling;
//! * `shm-wake`: the same, the receiver sleeping on the eventfd when idle;
//! * `udp`: two processes in two network namespaces joined by a veth pair,
//!   plain UDP sockets (the inter-container seed's 310 kpps set-up);
//! * `afxdp`: the same veth pair with AF_XDP sockets at both ends;
//! * `channel`: two threads of one process (in-process hand-over);
//! * `fwd`, `l2switch`: generator -> NF process -> sink, shared memory on
//!   both sides, with the blind forwarder or the learning switch in the
//!   middle (the seed's testpmd rows); `fwd-wake`, `l2switch-wake`: the
//!   same with the NF process and the sink sleeping on eventfds when idle.
//!
//! Each row has two phases. Throughput: the sender sends as fast as the
//! backend accepts for `--seconds`, the receiver counts what arrives in
//! order; the rate is packets received over the time between the first
//! and the last. Latency: `--latency-samples` packets sent one at a time,
//! `--latency-gap-us` apart, each carrying its `CLOCK_MONOTONIC` send time;
//! the receiver records `now - sent` in a histogram. Every payload starts
//! with a sequence number so loss and reordering are counted.
//!
//! The processes are the `braid` binary ([`ShmBenchConfig::exe`]) started
//! again as `braid shm-bench --role ...` ([`run_role`]); the NF in the
//! middle of the `fwd` and `l2switch` rows is a `braid nf-proc`, which runs
//! the shared Worker ([`crate::procs`]). The generator and the sink are
//! not NFs: they drive and read one port directly, stamping and checking
//! every packet.
//!
//! Interrupted (SIGINT/SIGTERM set [`ShmBenchConfig::stop`]), the run stops
//! sending, kills its children (which also die with it if it is killed:
//! `PR_SET_PDEATHSIG`), deletes the namespaces, the veth pair and the
//! socket files, and returns [`ShmBenchError::Interrupted`]. Children write
//! their lines with errors handled: a parent gone makes a child exit with
//! an error, never a panic.

use std::io::{BufRead, BufReader, Write};
use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use braid_io::channel::{channel_pair, ChannelPort};
use braid_io::shm::{ShmConfig, ShmPort};
use braid_io::{netns, Port, PortError};
use braid_packet::clock::monotonic_ns;
use braid_packet::wire::build::FrameSpec;
use braid_packet::{Batch, Packet};
use hdrhistogram::Histogram;

use crate::supervisor::die_with_this_process;

/// A row of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Row {
    Shm,
    ShmWake,
    Udp,
    Afxdp,
    Channel,
    Fwd,
    L2switch,
    FwdWake,
    L2switchWake,
}

impl Row {
    /// Every row, in table order, with its command-line name.
    pub const ALL: [(Row, &'static str); 9] = [
        (Row::Shm, "shm"),
        (Row::ShmWake, "shm-wake"),
        (Row::Udp, "udp"),
        (Row::Afxdp, "afxdp"),
        (Row::Channel, "channel"),
        (Row::Fwd, "fwd"),
        (Row::L2switch, "l2switch"),
        (Row::FwdWake, "fwd-wake"),
        (Row::L2switchWake, "l2switch-wake"),
    ];

    /// The row's label in the table.
    pub fn label(self) -> &'static str {
        match self {
            Row::Shm => "shm (2 processes)",
            Row::ShmWake => "shm, rx sleeps on eventfd",
            Row::Udp => "veth + UDP sockets",
            Row::Afxdp => "veth + AF_XDP",
            Row::Channel => "in-process channel",
            Row::Fwd => "shm + fwd process",
            Row::L2switch => "shm + l2switch process",
            Row::FwdWake => "shm + fwd process, sleeping",
            Row::L2switchWake => "shm + l2switch process, sleeping",
        }
    }

    /// The NF process in the middle, its parameters, whether the sink
    /// first sends a frame for a learning switch to learn, and whether the
    /// NF and the sink sleep when idle.
    fn nf(self) -> Option<(&'static str, Option<&'static str>, bool, bool)> {
        match self {
            Row::Fwd => Some(("fwd", None, false, false)),
            Row::FwdWake => Some(("fwd", None, false, true)),
            Row::L2switch => Some(("l2switch", Some("{ports: 2}"), true, false)),
            Row::L2switchWake => Some(("l2switch", Some("{ports: 2}"), true, true)),
            _ => None,
        }
    }
}

impl std::str::FromStr for Row {
    type Err = String;
    fn from_str(s: &str) -> Result<Row, String> {
        Row::ALL.iter().find(|(_, n)| *n == s).map(|(r, _)| *r).ok_or_else(|| {
            let names: Vec<&str> = Row::ALL.iter().map(|(_, n)| *n).collect();
            format!("row `{s}`: expected one of {}", names.join(", "))
        })
    }
}

/// What a child process of the bench does (`braid shm-bench --role`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    ShmRx,
    UdpRx,
    UdpTx,
    AfxdpRx,
    AfxdpTx,
}

impl Role {
    const ALL: [(Role, &'static str); 5] = [
        (Role::ShmRx, "shm-rx"),
        (Role::UdpRx, "udp-rx"),
        (Role::UdpTx, "udp-tx"),
        (Role::AfxdpRx, "afxdp-rx"),
        (Role::AfxdpTx, "afxdp-tx"),
    ];

    fn name(self) -> &'static str {
        Role::ALL.iter().find(|(r, _)| *r == self).map_or("?", |(_, n)| n)
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .iter()
            .find(|(_, n)| *n == s)
            .map(|(r, _)| *r)
            .ok_or_else(|| format!("role `{s}`: unknown"))
    }
}

/// How long each phase runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timing {
    /// Seconds of the throughput phase of each row and size.
    pub seconds: f64,
    /// Packets of the latency phase, sent one at a time.
    pub latency_samples: u64,
    /// Gap between two latency packets, in microseconds.
    pub latency_gap_us: u64,
}

/// What [`run_shm_bench`] measures.
#[derive(Clone, Debug)]
pub struct ShmBenchConfig {
    pub timing: Timing,
    /// Frame sizes in bytes (without FCS), 64..=1500.
    pub sizes: Vec<usize>,
    pub rows: Vec<Row>,
    /// The `braid` binary, started again for the child processes.
    pub exe: PathBuf,
    /// Stop early when set (signal handlers).
    pub stop: Option<Arc<AtomicBool>>,
}

/// A child's job and its parameters (`braid shm-bench --role`).
#[derive(Clone, Debug)]
pub struct RoleConfig {
    pub role: Role,
    pub timing: Timing,
    pub size: usize,
    pub socket: Option<PathBuf>,
    pub addr: Option<String>,
    pub iface: Option<String>,
    /// The receiver first sends one frame so a switch learns it.
    pub learn: bool,
    /// The receiver sleeps on the eventfd when idle.
    pub wake: bool,
}

/// Why the bench could not run (a failed row is reported in its row).
#[derive(Debug, thiserror::Error)]
pub enum ShmBenchError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Port(#[from] PortError),
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {msg}")]
    Child { what: String, msg: String },
    #[error("interrupted")]
    Interrupted,
}

type Result<T, E = ShmBenchError> = std::result::Result<T, E>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ShmBenchError {
    let what = what.into();
    move |source| ShmBenchError::Io { what, source }
}

fn stopped(stop: Option<&AtomicBool>) -> bool {
    stop.is_some_and(|s| s.load(Ordering::Relaxed))
}
/// Offset of the UDP payload in the frames built here (no VLAN).
const L4_PAYLOAD: usize = 42;
const PHASE_TPUT: u64 = 0;
const PHASE_LAT: u64 = 1;
const PHASE_END: u64 = 2;
const SRC: (std::net::Ipv4Addr, u16) = (std::net::Ipv4Addr::new(10, 77, 0, 1), 9000);
const DST: (std::net::Ipv4Addr, u16) = (std::net::Ipv4Addr::new(10, 77, 0, 2), 9000);

fn frame(size: usize) -> Vec<u8> {
    FrameSpec::udp_frame_len(SRC, DST, size).build()
}

fn stamp(payload: &mut [u8], phase: u64, seq: u64, ts: u64) {
    payload[0..8].copy_from_slice(&(seq | phase << 56).to_le_bytes());
    payload[8..16].copy_from_slice(&ts.to_le_bytes());
}

/// What a receiver saw.
struct Recorder {
    expected: [u64; 2],
    tput: u64,
    first_ns: u64,
    last_ns: u64,
    lost: u64,
    reordered: u64,
    malformed: u64,
    lat: Histogram<u64>,
    done: bool,
}

impl Recorder {
    fn new() -> Recorder {
        Recorder {
            expected: [0; 2],
            tput: 0,
            first_ns: 0,
            last_ns: 0,
            lost: 0,
            reordered: 0,
            malformed: 0,
            lat: Histogram::new_with_bounds(1, 60_000_000_000, 3)
                .expect("static histogram bounds are valid"),
            done: false,
        }
    }

    #[inline]
    fn record(&mut self, payload: &[u8], now: u64) {
        if payload.len() < 16 {
            self.malformed += 1;
            return;
        }
        let w0 = u64::from_le_bytes(payload[0..8].try_into().unwrap_or_default());
        let ts = u64::from_le_bytes(payload[8..16].try_into().unwrap_or_default());
        let (phase, seq) = (w0 >> 56, w0 & ((1 << 56) - 1));
        match phase {
            PHASE_TPUT | PHASE_LAT => {
                let e = &mut self.expected[phase as usize];
                if seq < *e {
                    self.reordered += 1;
                } else {
                    self.lost += seq - *e;
                    *e = seq + 1;
                }
                if phase == PHASE_TPUT {
                    self.tput += 1;
                    if self.first_ns == 0 {
                        self.first_ns = now;
                    }
                    self.last_ns = now;
                } else {
                    let _ = self.lat.record(now.saturating_sub(ts).max(1));
                }
            }
            _ => self.done = true,
        }
    }

    fn line(&self) -> String {
        let span = self.last_ns.saturating_sub(self.first_ns).max(1);
        let pps = if self.tput > 1 { (self.tput - 1) as f64 * 1e9 / span as f64 } else { 0.0 };
        format!(
            "RESULT pps={pps:.0} received={} lost={} reordered={} malformed={} lat_n={} p50_ns={} p99_ns={}",
            self.tput,
            self.lost,
            self.reordered,
            self.malformed,
            self.lat.len(),
            self.lat.value_at_quantile(0.5),
            self.lat.value_at_quantile(0.99)
        )
    }
}

/// One measured row.
#[derive(Debug, Default, Clone)]
pub struct Measured {
    pub pps: f64,
    pub received: u64,
    pub lost: u64,
    pub reordered: u64,
    pub lat_n: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
}

fn parse_result(line: &str) -> Result<Measured> {
    let mut m = Measured::default();
    let bad = |why: String| ShmBenchError::Child { what: "result line".into(), msg: why };
    let body = line.strip_prefix("RESULT ").ok_or_else(|| bad(format!("not one: {line}")))?;
    for kv in body.split_whitespace() {
        let field = || bad(format!("bad field {kv:?} in {line}"));
        let (k, v) = kv.split_once('=').ok_or_else(field)?;
        let n = || v.parse::<u64>().map_err(|_| field());
        match k {
            "pps" => m.pps = v.parse().map_err(|_| field())?,
            "received" => m.received = n()?,
            "lost" => m.lost = n()?,
            "reordered" => m.reordered = n()?,
            "lat_n" => m.lat_n = n()?,
            "p50_ns" => m.p50_ns = n()?,
            "p99_ns" => m.p99_ns = n()?,
            _ => {}
        }
    }
    Ok(m)
}

/// The sending side of one backend: send up to `n` frames, each stamped by
/// `fill` (which gets the UDP payload); returns how many left.
trait BenchTx {
    fn burst(&mut self, n: usize, fill: &mut dyn FnMut(&mut [u8])) -> Result<usize>;
}

struct ShmTx {
    port: ShmPort,
    frame: Vec<u8>,
    batch: Batch,
}

impl BenchTx for ShmTx {
    fn burst(&mut self, n: usize, fill: &mut dyn FnMut(&mut [u8])) -> Result<usize> {
        let got = self.port.alloc(&mut self.batch, n)?;
        for p in self.batch.iter_mut() {
            p.extend_from_slice(&self.frame)
                .map_err(|e| ShmBenchError::Config(format!("frame does not fit a slot: {e}")))?;
            fill(&mut p.data_mut()[L4_PAYLOAD..]);
        }
        let sent = self.port.send(&mut self.batch)?;
        debug_assert_eq!(got, sent);
        Ok(sent)
    }
}

/// Heap packets through any port (channel, AF_XDP).
struct PortTx<P: Port> {
    port: P,
    frame: Vec<u8>,
    batch: Batch,
    room: fn(&P) -> usize,
}

impl<P: Port> BenchTx for PortTx<P> {
    fn burst(&mut self, n: usize, fill: &mut dyn FnMut(&mut [u8])) -> Result<usize> {
        let n = n.min((self.room)(&self.port));
        for _ in 0..n {
            let mut p = Packet::from_bytes(&self.frame);
            fill(&mut p.data_mut()[L4_PAYLOAD..]);
            self.batch.push(p);
        }
        let sent = self.port.send(&mut self.batch)?;
        self.port.flush()?;
        Ok(sent)
    }
}

struct UdpTx {
    sock: UdpSocket,
    buf: Vec<u8>,
}

impl BenchTx for UdpTx {
    fn burst(&mut self, n: usize, fill: &mut dyn FnMut(&mut [u8])) -> Result<usize> {
        let mut sent = 0;
        for _ in 0..n {
            fill(&mut self.buf);
            if self.sock.send(&self.buf).is_ok() {
                sent += 1;
            }
        }
        Ok(sent)
    }
}

/// Run both phases and the end marker through `tx`; stop early (with
/// [`ShmBenchError::Interrupted`]) when `stop` is set.
fn drive(tx: &mut dyn BenchTx, t: &Timing, stop: Option<&AtomicBool>) -> Result<()> {
    let mut seq = 0u64;
    let end = Instant::now() + Duration::from_secs_f64(t.seconds);
    while Instant::now() < end {
        for _ in 0..64 {
            let ts = monotonic_ns();
            tx.burst(32, &mut |pl| {
                stamp(pl, PHASE_TPUT, seq, ts);
                seq += 1;
            })?;
        }
        if stopped(stop) {
            return Err(ShmBenchError::Interrupted);
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    let gap = Duration::from_micros(t.latency_gap_us);
    for i in 0..t.latency_samples {
        let t0 = Instant::now();
        let mut sent = 0;
        while sent == 0 {
            sent = tx.burst(1, &mut |pl| stamp(pl, PHASE_LAT, i, monotonic_ns()))?;
        }
        while t0.elapsed() < gap {
            std::hint::spin_loop();
        }
        if i % 256 == 0 && stopped(stop) {
            return Err(ShmBenchError::Interrupted);
        }
    }
    std::thread::sleep(Duration::from_millis(50));
    // The receiver stops at the first end marker and may be gone by the
    // next one: errors here are expected.
    for _ in 0..10 {
        let _ = tx.burst(1, &mut |pl| stamp(pl, PHASE_END, 0, 0));
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Receive with a port until the end marker or `limit`. With `sleep`, an
/// idle receiver blocks in `Port::wait` (eventfd wake-up) instead of
/// polling.
fn receive_port(port: &mut dyn Port, limit: Duration, sleep: bool) -> Result<Recorder> {
    let mut rec = Recorder::new();
    let mut batch = Batch::with_capacity(64);
    let deadline = Instant::now() + limit;
    let mut polls = 0u32;
    while !rec.done {
        match port.recv(&mut batch, 64) {
            Ok(_) => {}
            Err(PortError::Disconnected(_)) => break,
            Err(e) => return Err(e.into()),
        }
        if batch.is_empty() && sleep {
            port.wait(Duration::from_millis(50))?;
        }
        if !batch.is_empty() {
            let now = monotonic_ns();
            for p in batch.drain() {
                rec.record(p.data().get(L4_PAYLOAD..).unwrap_or(&[]), now);
            }
        }
        polls = polls.wrapping_add(1);
        if polls.is_multiple_of(4096) && Instant::now() >= deadline {
            break;
        }
    }
    Ok(rec)
}

/// A child process, killed and reaped on drop; it also dies with this
/// process (`PR_SET_PDEATHSIG`).
struct ChildGuard(Child);

/// Removes socket files on drop: a child killed with SIGKILL cannot.
struct FileGuard(Vec<PathBuf>);

impl Drop for FileGuard {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl ChildGuard {
    fn start(cmd: &mut Command, what: &str) -> Result<ChildGuard> {
        die_with_this_process(cmd);
        Ok(ChildGuard(cmd.spawn().map_err(io(format!("start {what}")))?))
    }

    fn spawn(mut cmd: Command, what: &str) -> Result<(ChildGuard, BufReader<ChildStdout>)> {
        let mut child = ChildGuard::start(cmd.stdout(Stdio::piped()), what)?;
        let out = child
            .0
            .stdout
            .take()
            .ok_or_else(|| ShmBenchError::Child { what: what.into(), msg: "no stdout".into() })?;
        Ok((child, BufReader::new(out)))
    }
}

/// Read lines until one starts with `prefix`.
fn expect_line(out: &mut BufReader<ChildStdout>, prefix: &str, what: &str) -> Result<String> {
    let mut line = String::new();
    loop {
        line.clear();
        if out.read_line(&mut line).map_err(io(format!("read from {what}")))? == 0 {
            return Err(ShmBenchError::Child {
                what: what.into(),
                msg: format!("exited before printing {prefix}"),
            });
        }
        if line.starts_with(prefix) {
            return Ok(line.trim_end().to_string());
        }
    }
}

fn child_cmd(
    a: &ShmBenchConfig,
    ns: Option<&str>,
    role: Role,
    size: usize,
    extra: &[&str],
) -> Command {
    let mut c = netns::command_in(ns, &a.exe.to_string_lossy());
    c.args(["shm-bench", "--role", role.name(), "--size", &size.to_string()]).args(extra);
    c
}

fn limit(t: &Timing) -> Duration {
    Duration::from_secs_f64(
        t.seconds + 30.0 + t.latency_samples as f64 * t.latency_gap_us as f64 * 4e-6,
    )
}

fn sock_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("braid-shm-bench-{}-{tag}.sock", std::process::id()))
}

fn row_shm(a: &ShmBenchConfig, size: usize, wake: bool) -> Result<Measured> {
    let path = sock_path("shm");
    let _files = FileGuard(vec![path.clone()]);
    let mut port = ShmPort::listen(&path, ShmConfig::default())?;
    let path_s = path.to_string_lossy().into_owned();
    let mut extra = vec!["--socket", path_s.as_str()];
    if wake {
        extra.push("--wake");
    }
    let (_rx, mut out) =
        ChildGuard::spawn(child_cmd(a, None, Role::ShmRx, size, &extra), "shm receiver")?;
    if !port.accept(Duration::from_secs(10))? {
        return Err(ShmBenchError::Child {
            what: "shm receiver".into(),
            msg: "did not connect within 10 s".into(),
        });
    }
    let mut tx = ShmTx { port, frame: frame(size), batch: Batch::with_capacity(32) };
    drive(&mut tx, &a.timing, a.stop.as_deref())?;
    parse_result(&expect_line(&mut out, "RESULT", "shm receiver")?)
}

fn row_channel(a: &ShmBenchConfig, size: usize) -> Result<Measured> {
    let (txp, mut rxp) = channel_pair("bench", 4096);
    let lim = limit(&a.timing);
    let rx = std::thread::spawn(move || receive_port(&mut rxp, lim, false).map(|r| r.line()));
    let mut tx = PortTx {
        port: txp,
        frame: frame(size),
        batch: Batch::with_capacity(32),
        room: ChannelPort::tx_room,
    };
    let driven = drive(&mut tx, &a.timing, a.stop.as_deref());
    // Dropping the sender ends the receiver, interrupted or not.
    drop(tx);
    let line = rx.join().map_err(|_| ShmBenchError::Child {
        what: "channel receiver thread".into(),
        msg: "panicked".into(),
    })?;
    driven?;
    parse_result(&line?)
}

/// Generator -> `braid nf-proc` (the row's NF, on the shared Worker) ->
/// sink process, shared memory on both sides.
fn row_nf(a: &ShmBenchConfig, size: usize, row: Row) -> Result<Measured> {
    let Some((nf, params, learn, wake)) = row.nf() else {
        return Err(ShmBenchError::Config(format!("row {row:?} has no NF")));
    };
    let (p_in, p_out) = (sock_path(&format!("{nf}-in")), sock_path(&format!("{nf}-out")));
    let _files = FileGuard(vec![p_in.clone(), p_out.clone()]);
    let mut cmd = Command::new(&a.exe);
    cmd.args(["nf-proc", "--nf", nf]);
    cmd.args([
        "--port",
        &format!("listen:{}", p_in.display()),
        "--port",
        &format!("listen:{}", p_out.display()),
    ]);
    if let Some(p) = params {
        cmd.args(["--params", p]);
    }
    if wake {
        cmd.args(["--idle", "sleep"]);
    }
    let _worker = ChildGuard::start(cmd.stdout(Stdio::null()), "the NF process")?;
    let mut extra = vec!["--socket".to_string(), p_out.to_string_lossy().into_owned()];
    if learn {
        extra.push("--learn".into());
    }
    if wake {
        extra.push("--wake".into());
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let (_rx, mut out) = ChildGuard::spawn(child_cmd(a, None, Role::ShmRx, size, &extra), "sink")?;
    expect_line(&mut out, "READY", "sink")?;
    let port = ShmPort::connect(&p_in, Duration::from_secs(10))?;
    let mut tx = ShmTx { port, frame: frame(size), batch: Batch::with_capacity(32) };
    drive(&mut tx, &a.timing, a.stop.as_deref())?;
    parse_result(&expect_line(&mut out, "RESULT", "sink")?)
}

/// Two namespaces joined by a veth pair, for the udp and afxdp rows;
/// deleted on drop.
struct VethPair {
    ns_a: netns::NetnsGuard,
    ns_b: netns::NetnsGuard,
    _link: netns::LinkGuard,
    if_a: String,
    if_b: String,
}

fn veth_pair() -> Result<VethPair> {
    let ns_a = netns::NetnsGuard::create(&netns::unique_name("sba"))?;
    let ns_b = netns::NetnsGuard::create(&netns::unique_name("sbb"))?;
    let (if_a, if_b) = (netns::unique_ifname("sba"), netns::unique_ifname("sbb"));
    let link = netns::LinkGuard::veth_between(&if_a, Some(ns_a.name()), &if_b, Some(ns_b.name()))?;
    netns::add_addr(Some(ns_a.name()), &if_a, "10.77.0.1/24")?;
    netns::add_addr(Some(ns_b.name()), &if_b, "10.77.0.2/24")?;
    for (ns, dev) in [(ns_a.name(), if_a.as_str()), (ns_b.name(), if_b.as_str())] {
        netns::set_up(Some(ns), dev)?;
        netns::set_up(Some(ns), "lo")?;
    }
    // Static neighbours: no ARP in the measurement.
    let mac_b = netns::mac_addr(Some(ns_b.name()), &if_b)?;
    let mac_a = netns::mac_addr(Some(ns_a.name()), &if_a)?;
    netns::add_neigh(Some(ns_a.name()), &if_a, "10.77.0.2", &mac_b)?;
    netns::add_neigh(Some(ns_b.name()), &if_b, "10.77.0.1", &mac_a)?;
    Ok(VethPair { ns_a, ns_b, _link: link, if_a, if_b })
}

fn row_veth(a: &ShmBenchConfig, size: usize, v: &VethPair, afxdp: bool) -> Result<Measured> {
    let dst = format!("{}:{}", DST.0, DST.1);
    let (rx_role, tx_role) =
        if afxdp { (Role::AfxdpRx, Role::AfxdpTx) } else { (Role::UdpRx, Role::UdpTx) };
    let (rx_extra, tx_extra) = if afxdp {
        (vec!["--iface", v.if_b.as_str()], vec!["--iface", v.if_a.as_str()])
    } else {
        (vec!["--addr", dst.as_str()], vec!["--addr", dst.as_str()])
    };
    let (_rx, mut rx_out) = ChildGuard::spawn(
        child_cmd(a, Some(v.ns_b.name()), rx_role, size, &rx_extra),
        rx_role.name(),
    )?;
    expect_line(&mut rx_out, "READY", rx_role.name())?;
    let t = &a.timing;
    let timing = [
        "--seconds".to_string(),
        t.seconds.to_string(),
        "--latency-samples".into(),
        t.latency_samples.to_string(),
        "--latency-gap-us".into(),
        t.latency_gap_us.to_string(),
    ];
    let mut tx_cmd = child_cmd(a, Some(v.ns_a.name()), tx_role, size, &tx_extra);
    tx_cmd.args(timing);
    let (mut tx, mut tx_out) = ChildGuard::spawn(tx_cmd, tx_role.name())?;
    // The sender runs in its own process: watch the stop flag meanwhile
    // (its SENT line arrives when it is done).
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let what = tx_role.name();
    std::thread::spawn(move || {
        let _ = done_tx.send(expect_line(&mut tx_out, "SENT", what));
    });
    loop {
        match done_rx.recv_timeout(Duration::from_millis(50)) {
            Ok(r) => {
                r?;
                break;
            }
            Err(_) if stopped(a.stop.as_deref()) => return Err(ShmBenchError::Interrupted),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = tx.0.wait();
    parse_result(&expect_line(&mut rx_out, "RESULT", rx_role.name())?)
}

fn open_afxdp(iface: &str) -> Result<braid_io::af_xdp::AfXdpPort> {
    let mut cfg = braid_io::af_xdp::AfXdpConfig::new(iface);
    cfg.wait = braid_io::af_xdp::WaitMode::Busy;
    cfg.mode = braid_io::af_xdp::BindMode::Copy;
    Ok(braid_io::af_xdp::AfXdpPort::open(&cfg)?)
}

/// Print a line for the parent; a parent gone is an error, not a panic.
fn say(line: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|()| out.flush()).map_err(io("write to the parent"))
}

fn required<'a, T: ?Sized>(v: Option<&'a T>, flag: &str) -> Result<&'a T> {
    v.ok_or_else(|| ShmBenchError::Config(format!("{flag} is required")))
}

/// A child process's job (`braid shm-bench --role ...`).
pub fn run_role(a: &RoleConfig) -> Result<()> {
    let lim = limit(&a.timing);
    match a.role {
        Role::ShmRx => {
            let path = required(a.socket.as_deref(), "--socket")?;
            let mut port = ShmPort::connect(path, Duration::from_secs(30))?;
            if a.learn {
                // One frame with the generator's destination as source, so
                // a learning switch knows where that MAC lives.
                let mut f = frame(a.size);
                let (dst, src) = f.split_at_mut(6);
                dst.swap_with_slice(&mut src[..6]);
                stamp(&mut f[L4_PAYLOAD..], PHASE_END, 0, 0);
                let mut b = Batch::new();
                b.push(Packet::from_bytes(&f));
                port.send(&mut b)?;
            }
            say("READY")?;
            say(&receive_port(&mut port, lim, a.wake)?.line())?;
        }
        Role::UdpRx => {
            let addr = required(a.addr.as_deref(), "--addr")?;
            let sock = UdpSocket::bind(addr).map_err(io(format!("bind {addr}")))?;
            sock.set_read_timeout(Some(Duration::from_millis(200)))
                .map_err(io("set the receive timeout"))?;
            say("READY")?;
            let mut rec = Recorder::new();
            let mut buf = vec![0u8; 2048];
            let deadline = Instant::now() + lim;
            while !rec.done && Instant::now() < deadline {
                if let Ok(n) = sock.recv(&mut buf) {
                    rec.record(&buf[..n], monotonic_ns());
                }
            }
            say(&rec.line())?;
        }
        Role::UdpTx => {
            let addr = required(a.addr.as_deref(), "--addr")?;
            let sock = UdpSocket::bind("0.0.0.0:0").map_err(io("bind a UDP socket"))?;
            sock.connect(addr).map_err(io(format!("connect UDP to {addr}")))?;
            let mut tx = UdpTx { sock, buf: vec![0u8; a.size.saturating_sub(L4_PAYLOAD).max(16)] };
            drive(&mut tx, &a.timing, None)?;
            say("SENT")?;
        }
        Role::AfxdpRx => {
            let iface = required(a.iface.as_deref(), "--iface")?;
            let mut port = open_afxdp(iface)?;
            say("READY")?;
            say(&receive_port(&mut port, lim, false)?.line())?;
        }
        Role::AfxdpTx => {
            let iface = required(a.iface.as_deref(), "--iface")?;
            let port = open_afxdp(iface)?;
            let mut tx = PortTx {
                port,
                frame: frame(a.size),
                batch: Batch::with_capacity(32),
                room: |_| 32,
            };
            drive(&mut tx, &a.timing, None)?;
            say("SENT")?;
        }
    }
    Ok(())
}

fn us(ns: u64) -> String {
    format!("{:.2}", ns as f64 / 1000.0)
}

/// One row of the table: a backend at a frame size, measured or failed.
#[derive(Debug)]
pub struct RowResult {
    pub row: Row,
    pub size: usize,
    pub result: Result<Measured, String>,
}

/// The table's header lines.
pub const TABLE_HEADER: &str =
    "| backend | frame B | rate Mpps | vs udp | one-way p50 us | p99 us | lost | reordered |\n|---|---:|---:|---:|---:|---:|---:|---:|";

/// The table lines of one frame size's rows (the rate is compared with
/// the udp row of the same size).
pub fn table_lines(rows: &[RowResult]) -> Vec<String> {
    let udp_pps = |size: usize| {
        rows.iter()
            .find(|r| r.row == Row::Udp && r.size == size)
            .and_then(|r| r.result.as_ref().ok())
            .map(|m| m.pps)
    };
    rows.iter()
        .map(|r| {
            let (name, size) = (r.row.label(), r.size);
            match &r.result {
                Ok(m) => {
                    let ratio = udp_pps(size)
                        .filter(|u| *u > 0.0)
                        .map_or("-".to_string(), |u| format!("{:.1}x", m.pps / u));
                    format!(
                        "| {name} | {size} | {:.3} | {ratio} | {} | {} | {} | {} |",
                        m.pps / 1e6,
                        us(m.p50_ns),
                        us(m.p99_ns),
                        m.lost,
                        m.reordered
                    )
                }
                Err(e) => format!("| {name} | {size} | failed: {e} | | | | | |"),
            }
        })
        .collect()
}

/// Measure every row at every size; `on_size` gets each size's rows as
/// soon as they are measured (to print them). Rows that need namespaces
/// (udp, afxdp) are skipped, with a note on stderr, when not root.
pub fn run_shm_bench(
    a: &ShmBenchConfig,
    on_size: &mut dyn FnMut(&[RowResult]),
) -> Result<Vec<RowResult>> {
    if let Some(bad) = a.sizes.iter().find(|s| !(64..=1500).contains(*s)) {
        return Err(ShmBenchError::Config(format!(
            "--sizes: frame size {bad} is outside 64..=1500"
        )));
    }
    let t = &a.timing;
    if !(t.seconds > 0.0 && t.seconds <= 600.0) {
        return Err(ShmBenchError::Config(format!("--seconds {}: must be in (0, 600]", t.seconds)));
    }
    let needs_root = a.rows.iter().any(|r| matches!(r, Row::Udp | Row::Afxdp));
    let veth = if needs_root && netns::is_root() {
        Some(veth_pair()?)
    } else {
        if needs_root {
            eprintln!(
                "braid shm-bench: not root, skipping the udp and afxdp rows (they need namespaces)"
            );
        }
        None
    };
    let mut all = Vec::new();
    for &size in &a.sizes {
        let mut results = Vec::new();
        for &row in &a.rows {
            let r = match (row, &veth) {
                (Row::Shm, _) => row_shm(a, size, false),
                (Row::ShmWake, _) => row_shm(a, size, true),
                (Row::Channel, _) => row_channel(a, size),
                (Row::Fwd | Row::L2switch | Row::FwdWake | Row::L2switchWake, _) => {
                    row_nf(a, size, row)
                }
                (Row::Udp, Some(v)) => row_veth(a, size, v, false),
                (Row::Afxdp, Some(v)) => row_veth(a, size, v, true),
                (Row::Udp | Row::Afxdp, None) => continue,
            };
            // Interrupted: whatever the row reported, stop here (the guards
            // remove children, sockets, namespaces and the veth pair).
            if stopped(a.stop.as_deref()) {
                return Err(ShmBenchError::Interrupted);
            }
            results.push(RowResult { row, size, result: r.map_err(|e| e.to_string()) });
        }
        on_size(&results);
        all.extend(results);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorder_counts_loss_reorder_and_latency() {
        let mut r = Recorder::new();
        let mut p = [0u8; 22];
        for (seq, now) in [(0u64, 100u64), (1, 200), (3, 300), (2, 400)] {
            stamp(&mut p, PHASE_TPUT, seq, 0);
            r.record(&p, now);
        }
        stamp(&mut p, PHASE_LAT, 0, 1000);
        r.record(&p, 1500);
        r.record(&p[..10], 1600);
        assert!(!r.done);
        stamp(&mut p, PHASE_END, 0, 0);
        r.record(&p, 2000);
        assert!(r.done);
        let m = parse_result(&r.line()).unwrap();
        assert_eq!((m.received, m.lost, m.reordered, m.lat_n), (4, 1, 1, 1));
        assert_eq!(m.pps as u64, 10_000_000, "3 packets after the first in 300 ns");
        assert!((499..=501).contains(&m.p50_ns), "{}", m.p50_ns);
        assert!(r.line().contains("malformed=1"));
    }
}
