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
//! The processes are this binary started again with a hidden `--role`.

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use braid_io::channel::{channel_pair, ChannelPort};
use braid_io::shm::{ShmConfig, ShmPort};
use braid_io::{netns, Port, PortError};
use braid_packet::clock::monotonic_ns;
use braid_packet::wire::build::FrameSpec;
use braid_packet::{Batch, Packet};
use hdrhistogram::Histogram;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    ShmRx,
    UdpRx,
    UdpTx,
    AfxdpRx,
    AfxdpTx,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Seconds of the throughput phase of each row and size.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Frame sizes in bytes (without FCS), at least 64.
    #[arg(long, value_delimiter = ',', default_value = "64,1400")]
    sizes: Vec<usize>,
    /// Packets of the latency phase, sent one at a time.
    #[arg(long, default_value_t = 20_000)]
    latency_samples: u64,
    /// Gap between two latency packets, in microseconds.
    #[arg(long, default_value_t = 20)]
    latency_gap_us: u64,
    /// Rows to run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "shm,shm-wake,udp,afxdp,channel,fwd,l2switch,fwd-wake,l2switch-wake"
    )]
    rows: Vec<Row>,
    /// Internal: what a child process does.
    #[arg(long, value_enum, hide = true)]
    role: Option<Role>,
    #[arg(long, hide = true)]
    socket: Option<PathBuf>,
    #[arg(long, hide = true)]
    addr: Option<String>,
    #[arg(long, hide = true)]
    iface: Option<String>,
    #[arg(long, hide = true, default_value_t = 64)]
    size: usize,
    /// Internal: the receiver first sends one frame so a switch learns it.
    #[arg(long, hide = true)]
    learn: bool,
    /// Internal: the receiver sleeps on the eventfd when idle.
    #[arg(long, hide = true)]
    wake: bool,
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
struct Measured {
    pps: f64,
    received: u64,
    lost: u64,
    reordered: u64,
    lat_n: u64,
    p50_ns: u64,
    p99_ns: u64,
}

fn parse_result(line: &str) -> Result<Measured> {
    let mut m = Measured::default();
    let body = line.strip_prefix("RESULT ").ok_or_else(|| anyhow!("not a result line: {line}"))?;
    for kv in body.split_whitespace() {
        let (k, v) = kv.split_once('=').ok_or_else(|| anyhow!("bad field {kv:?} in {line}"))?;
        match k {
            "pps" => m.pps = v.parse()?,
            "received" => m.received = v.parse()?,
            "lost" => m.lost = v.parse()?,
            "reordered" => m.reordered = v.parse()?,
            "lat_n" => m.lat_n = v.parse()?,
            "p50_ns" => m.p50_ns = v.parse()?,
            "p99_ns" => m.p99_ns = v.parse()?,
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
                .map_err(|e| anyhow!("frame does not fit a slot: {e}"))?;
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

/// Run both phases and the end marker through `tx`.
fn drive(tx: &mut dyn BenchTx, seconds: f64, samples: u64, gap_us: u64) -> Result<()> {
    let mut seq = 0u64;
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < end {
        for _ in 0..64 {
            let ts = monotonic_ns();
            tx.burst(32, &mut |pl| {
                stamp(pl, PHASE_TPUT, seq, ts);
                seq += 1;
            })?;
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    let gap = Duration::from_micros(gap_us);
    for i in 0..samples {
        let t0 = Instant::now();
        let mut sent = 0;
        while sent == 0 {
            sent = tx.burst(1, &mut |pl| stamp(pl, PHASE_LAT, i, monotonic_ns()))?;
        }
        while t0.elapsed() < gap {
            std::hint::spin_loop();
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

fn exe() -> Result<PathBuf> {
    std::env::current_exe().context("find this executable to start child processes")
}

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
    fn spawn(mut cmd: Command, what: &str) -> Result<(ChildGuard, BufReader<ChildStdout>)> {
        let mut child =
            cmd.stdout(Stdio::piped()).spawn().with_context(|| format!("start {what}"))?;
        let out = child.stdout.take().ok_or_else(|| anyhow!("{what}: no stdout"))?;
        Ok((ChildGuard(child), BufReader::new(out)))
    }
}

/// Read lines until one starts with `prefix`.
fn expect_line(out: &mut BufReader<ChildStdout>, prefix: &str, what: &str) -> Result<String> {
    let mut line = String::new();
    loop {
        line.clear();
        if out.read_line(&mut line)? == 0 {
            bail!("{what} exited before printing {prefix}");
        }
        if line.starts_with(prefix) {
            return Ok(line.trim_end().to_string());
        }
    }
}

fn child_cmd(ns: Option<&str>, role: &str, size: usize, extra: &[&str]) -> Result<Command> {
    let exe = exe()?;
    let mut c = netns::command_in(ns, &exe.to_string_lossy());
    c.args(["shm-bench", "--role", role, "--size", &size.to_string()]).args(extra);
    Ok(c)
}

fn limit(a: &Args) -> Duration {
    Duration::from_secs_f64(
        a.seconds + 30.0 + a.latency_samples as f64 * a.latency_gap_us as f64 * 4e-6,
    )
}

fn sock_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("braid-shm-bench-{}-{tag}.sock", std::process::id()))
}

fn row_shm(a: &Args, size: usize, wake: bool) -> Result<Measured> {
    let path = sock_path("shm");
    let mut port = ShmPort::listen(&path, ShmConfig::default())?;
    let path_s = path.to_string_lossy().into_owned();
    let mut extra = vec!["--socket", path_s.as_str()];
    if wake {
        extra.push("--wake");
    }
    let (_rx, mut out) =
        ChildGuard::spawn(child_cmd(None, "shm-rx", size, &extra)?, "shm receiver")?;
    if !port.accept(Duration::from_secs(10))? {
        bail!("shm receiver did not connect within 10 s");
    }
    let mut tx = ShmTx { port, frame: frame(size), batch: Batch::with_capacity(32) };
    drive(&mut tx, a.seconds, a.latency_samples, a.latency_gap_us)?;
    parse_result(&expect_line(&mut out, "RESULT", "shm receiver")?)
}

fn row_channel(a: &Args, size: usize) -> Result<Measured> {
    let (txp, mut rxp) = channel_pair("bench", 4096);
    let lim = limit(a);
    let rx = std::thread::spawn(move || receive_port(&mut rxp, lim, false).map(|r| r.line()));
    let mut tx = PortTx {
        port: txp,
        frame: frame(size),
        batch: Batch::with_capacity(32),
        room: ChannelPort::tx_room,
    };
    drive(&mut tx, a.seconds, a.latency_samples, a.latency_gap_us)?;
    drop(tx);
    let line = rx.join().map_err(|_| anyhow!("channel receiver thread panicked"))??;
    parse_result(&line)
}

fn row_nf(a: &Args, size: usize, nf: &str, wake: bool) -> Result<Measured> {
    let (p_in, p_out) = (sock_path(&format!("{nf}-in")), sock_path(&format!("{nf}-out")));
    let _files = FileGuard(vec![p_in.clone(), p_out.clone()]);
    let exe = exe()?;
    let mut cmd = Command::new(exe);
    cmd.args(["nf-proc", "--nf", nf]);
    cmd.args([
        "--port",
        &format!("listen:{}", p_in.display()),
        "--port",
        &format!("listen:{}", p_out.display()),
    ]);
    if nf == "l2switch" {
        cmd.args(["--params", "{ports: 2}"]);
    }
    if wake {
        cmd.args(["--idle", "sleep"]);
    }
    let _worker = ChildGuard(cmd.stdout(Stdio::null()).spawn().context("start the NF process")?);
    let mut extra = vec!["--socket".to_string(), p_out.to_string_lossy().into_owned()];
    if nf == "l2switch" {
        extra.push("--learn".into());
    }
    if wake {
        extra.push("--wake".into());
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let (_rx, mut out) = ChildGuard::spawn(child_cmd(None, "shm-rx", size, &extra)?, "sink")?;
    expect_line(&mut out, "READY", "sink")?;
    let port = ShmPort::connect(&p_in, Duration::from_secs(10))?;
    let mut tx = ShmTx { port, frame: frame(size), batch: Batch::with_capacity(32) };
    drive(&mut tx, a.seconds, a.latency_samples, a.latency_gap_us)?;
    parse_result(&expect_line(&mut out, "RESULT", "sink")?)
}

/// Two namespaces joined by a veth pair, for the udp and afxdp rows.
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

fn row_veth(a: &Args, size: usize, v: &VethPair, afxdp: bool) -> Result<Measured> {
    let dst = format!("{}:{}", DST.0, DST.1);
    let (rx_role, tx_role) = if afxdp { ("afxdp-rx", "afxdp-tx") } else { ("udp-rx", "udp-tx") };
    let (rx_extra, tx_extra) = if afxdp {
        (vec!["--iface", v.if_b.as_str()], vec!["--iface", v.if_a.as_str()])
    } else {
        (vec!["--addr", dst.as_str()], vec!["--addr", dst.as_str()])
    };
    let (_rx, mut rx_out) =
        ChildGuard::spawn(child_cmd(Some(v.ns_b.name()), rx_role, size, &rx_extra)?, rx_role)?;
    expect_line(&mut rx_out, "READY", rx_role)?;
    let timing = [
        "--seconds".to_string(),
        a.seconds.to_string(),
        "--latency-samples".into(),
        a.latency_samples.to_string(),
        "--latency-gap-us".into(),
        a.latency_gap_us.to_string(),
    ];
    let mut tx_cmd = child_cmd(Some(v.ns_a.name()), tx_role, size, &tx_extra)?;
    tx_cmd.args(timing);
    let (mut tx, mut tx_out) = ChildGuard::spawn(tx_cmd, tx_role)?;
    expect_line(&mut tx_out, "SENT", tx_role)?;
    let _ = tx.0.wait();
    parse_result(&expect_line(&mut rx_out, "RESULT", rx_role)?)
}

fn open_afxdp(iface: &str) -> Result<braid_io::af_xdp::AfXdpPort> {
    let mut cfg = braid_io::af_xdp::AfXdpConfig::new(iface);
    cfg.wait = braid_io::af_xdp::WaitMode::Busy;
    cfg.mode = braid_io::af_xdp::BindMode::Copy;
    Ok(braid_io::af_xdp::AfXdpPort::open(&cfg)?)
}

/// A child process's job.
fn run_role(a: &Args, role: Role) -> Result<()> {
    let lim = limit(a);
    match role {
        Role::ShmRx => {
            let path = a.socket.as_deref().ok_or_else(|| anyhow!("--socket is required"))?;
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
            println!("READY");
            println!("{}", receive_port(&mut port, lim, a.wake)?.line());
        }
        Role::UdpRx => {
            let addr = a.addr.as_deref().ok_or_else(|| anyhow!("--addr is required"))?;
            let sock = UdpSocket::bind(addr).with_context(|| format!("bind {addr}"))?;
            sock.set_read_timeout(Some(Duration::from_millis(200)))?;
            println!("READY");
            let mut rec = Recorder::new();
            let mut buf = vec![0u8; 2048];
            let deadline = Instant::now() + lim;
            while !rec.done && Instant::now() < deadline {
                if let Ok(n) = sock.recv(&mut buf) {
                    rec.record(&buf[..n], monotonic_ns());
                }
            }
            println!("{}", rec.line());
        }
        Role::UdpTx => {
            let addr = a.addr.as_deref().ok_or_else(|| anyhow!("--addr is required"))?;
            let sock = UdpSocket::bind("0.0.0.0:0")?;
            sock.connect(addr).with_context(|| format!("connect UDP to {addr}"))?;
            let mut tx = UdpTx { sock, buf: vec![0u8; a.size.saturating_sub(L4_PAYLOAD).max(16)] };
            drive(&mut tx, a.seconds, a.latency_samples, a.latency_gap_us)?;
            println!("SENT");
        }
        Role::AfxdpRx => {
            let iface = a.iface.as_deref().ok_or_else(|| anyhow!("--iface is required"))?;
            let mut port = open_afxdp(iface)?;
            println!("READY");
            println!("{}", receive_port(&mut port, lim, false)?.line());
        }
        Role::AfxdpTx => {
            let iface = a.iface.as_deref().ok_or_else(|| anyhow!("--iface is required"))?;
            let port = open_afxdp(iface)?;
            let mut tx = PortTx {
                port,
                frame: frame(a.size),
                batch: Batch::with_capacity(32),
                room: |_| 32,
            };
            drive(&mut tx, a.seconds, a.latency_samples, a.latency_gap_us)?;
            println!("SENT");
        }
    }
    Ok(())
}

fn us(ns: u64) -> String {
    format!("{:.2}", ns as f64 / 1000.0)
}

pub fn run(a: Args) -> Result<()> {
    if let Some(role) = a.role {
        return run_role(&a, role);
    }
    if let Some(bad) = a.sizes.iter().find(|s| !(64..=1500).contains(*s)) {
        bail!("--sizes: frame size {bad} is outside 64..=1500");
    }
    if !(a.seconds > 0.0 && a.seconds <= 600.0) {
        bail!("--seconds {}: must be in (0, 600]", a.seconds);
    }
    let needs_root = a.rows.iter().any(|r| matches!(r, Row::Udp | Row::Afxdp));
    let veth = if needs_root && netns::is_root() {
        Some(veth_pair().context("set up the veth pair between two namespaces")?)
    } else {
        if needs_root {
            eprintln!(
                "braid shm-bench: not root, skipping the udp and afxdp rows (they need namespaces)"
            );
        }
        None
    };
    println!(
        "| backend | frame B | rate Mpps | vs udp | one-way p50 us | p99 us | lost | reordered |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for &size in &a.sizes {
        let mut results: Vec<(Row, Result<Measured>)> = Vec::new();
        for &row in &a.rows {
            let r = match (row, &veth) {
                (Row::Shm, _) => row_shm(&a, size, false),
                (Row::ShmWake, _) => row_shm(&a, size, true),
                (Row::Channel, _) => row_channel(&a, size),
                (Row::Fwd, _) => row_nf(&a, size, "fwd", false),
                (Row::L2switch, _) => row_nf(&a, size, "l2switch", false),
                (Row::FwdWake, _) => row_nf(&a, size, "fwd", true),
                (Row::L2switchWake, _) => row_nf(&a, size, "l2switch", true),
                (Row::Udp, Some(v)) => row_veth(&a, size, v, false),
                (Row::Afxdp, Some(v)) => row_veth(&a, size, v, true),
                (Row::Udp | Row::Afxdp, None) => continue,
            };
            results.push((row, r));
        }
        let udp_pps = results
            .iter()
            .find_map(|(r, m)| (*r == Row::Udp).then(|| m.as_ref().ok()).flatten())
            .map(|m| m.pps);
        for (row, m) in &results {
            let name = match row {
                Row::Shm => "shm (2 processes)",
                Row::ShmWake => "shm, rx sleeps on eventfd",
                Row::Udp => "veth + UDP sockets",
                Row::Afxdp => "veth + AF_XDP",
                Row::Channel => "in-process channel",
                Row::Fwd => "shm + fwd process",
                Row::L2switch => "shm + l2switch process",
                Row::FwdWake => "shm + fwd process, sleeping",
                Row::L2switchWake => "shm + l2switch process, sleeping",
            };
            match m {
                Ok(m) => {
                    let ratio = udp_pps
                        .filter(|u| *u > 0.0)
                        .map_or("-".to_string(), |u| format!("{:.1}x", m.pps / u));
                    println!(
                        "| {name} | {size} | {:.3} | {ratio} | {} | {} | {} | {} |",
                        m.pps / 1e6,
                        us(m.p50_ns),
                        us(m.p99_ns),
                        m.lost,
                        m.reordered
                    );
                }
                Err(e) => println!("| {name} | {size} | failed: {e:#} | | | | | |"),
            }
        }
    }
    Ok(())
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
