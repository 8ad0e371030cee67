//! User-space NFs on the testbed: a *group* of NFs (one or more, in chain
//! order) between two ports on its host's two interfaces, either AF_XDP
//! ([`braid_io::af_xdp`], one socket per interface with its steering
//! program) or AF_PACKET (one socket per interface).
//!
//! Every NF of the group is ONE instance serving both directions, and one
//! thread runs the whole group to completion: frames from the client side
//! (side 0) cross NFs 0..n and leave by the server side (side 1); frames
//! from the server side cross them in reverse order, n..0, as they would
//! across hosts. So stateful NFs (nat, firewall with conntrack,
//! loadbalancer, ...) see both directions of a flow in one state. Packets
//! an NF emits from `tick` (flushes of coding NFs) go on in the client →
//! server direction through the NFs after it.
//!
//! Frames leave with the Ethernet addresses rewritten for the next hop,
//! like the XDP NFs. Linux forwarding is switched off on the host while the
//! group runs (AF_PACKET only copies frames; the kernel would forward them
//! a second time; with AF_XDP the steering program takes every frame of the
//! queue, so this only matters for frames it does not see) and restored
//! afterwards.

use braid_io::af_packet::{AfPacketConfig, AfPacketPort};
use braid_io::af_xdp::{AfXdpConfig, AfXdpPort, WaitMode, XskStats};
use braid_io::{netns, Port};
use braid_nf::{Context, Counters, DropReason, NetworkFunction, Params};
use braid_packet::Batch;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::TestbedError;

/// Which sockets a user-space NF uses for its two interfaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserIo {
    /// AF_XDP sockets (copy mode on veth), each interface's frames steered
    /// to its socket by braid's `steer` XDP program.
    AfXdp,
    /// AF_PACKET sockets.
    AfPacket,
}

impl UserIo {
    pub fn name(self) -> &'static str {
        match self {
            UserIo::AfXdp => "af_xdp",
            UserIo::AfPacket => "af_packet",
        }
    }
}

/// How an idle NF thread waits for frames.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UserWait {
    /// Sleep in `poll(2)` on both sockets until one has frames.
    #[default]
    Poll,
    /// Never sleep: spin on both sockets (a core at 100 %, no wakeup
    /// latency). AF_XDP still makes the system calls the kernel asks for
    /// through its need-wakeup flags (transmit kicks, fill-ring wakeups).
    Busy,
}

/// How user-space NF threads run (`braid deploy --wait/--rt-prio/--cpus/--batch`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserOptions {
    pub wait: UserWait,
    /// SCHED_FIFO priority (1..=99) for the NF threads; None: normal.
    pub rt_prio: Option<i32>,
    /// CPUs the NF threads may run on; empty: any.
    pub cpus: Vec<usize>,
    /// AF_PACKET frames per system call (1 = CALVIN's run-to-completion
    /// setting for lowest latency). AF_XDP always takes up to
    /// [`AF_XDP_BATCH`], only what is there.
    pub batch: usize,
}

impl Default for UserOptions {
    fn default() -> Self {
        UserOptions { wait: UserWait::Poll, rt_prio: None, cpus: Vec::new(), batch: 1 }
    }
}

/// Frames one AF_XDP `recv` moves at most (takes only what is there, so it
/// adds no latency; AF_PACKET keeps the batch size it is given).
pub const AF_XDP_BATCH: usize = 32;
/// AF_XDP ring entries per socket. The fill ring is what the kernel takes
/// frames from while the NF thread is not running (preempted, asleep): a
/// burst longer than it is lost (`rx_fill_ring_empty_descs`).
pub const AF_XDP_RING: u32 = 4096;
/// UMEM frames per socket: enough for a full fill ring, the frames
/// between the kernel's rx ring and our copy (a batch), and a full tx ring
/// plus completions in flight: 2 rings' worth (16 MiB of UMEM).
pub const AF_XDP_FRAMES: u32 = 2 * AF_XDP_RING;

/// Live counters of one NF of a group.
#[derive(Debug, Default)]
pub struct NfCounters {
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Frames the NF passed on (to the next NF or to a socket).
    pub forwarded: AtomicU64,
    /// Frames the NF dropped, by reason (`braid_nf::DropReason`).
    pub drops: [AtomicU64; DropReason::COUNT],
    /// Frames the NF passed on that the outgoing socket had no room for
    /// (only on the last NF of each direction).
    pub tx_dropped: AtomicU64,
}

impl NfCounters {
    /// Every drop: by the NF and at transmit.
    pub fn dropped(&self) -> u64 {
        self.drops.iter().map(|d| d.load(Ordering::Relaxed)).sum::<u64>()
            + self.tx_dropped.load(Ordering::Relaxed)
    }

    /// Non-zero drop counts by reason name (`tx_full` for transmit).
    pub fn drop_breakdown(&self) -> Vec<(&'static str, u64)> {
        let mut out: Vec<(&'static str, u64)> = DropReason::ALL
            .iter()
            .map(|r| (r.name(), self.drops[*r as usize].load(Ordering::Relaxed)))
            .filter(|(_, n)| *n != 0)
            .collect();
        let tx = self.tx_dropped.load(Ordering::Relaxed);
        if tx != 0 {
            out.push(("tx_full", tx));
        }
        out
    }
}

/// Kernel counters of a group's two AF_XDP sockets, summed, as last
/// sampled by the NF thread (every [`SAMPLE_INTERVAL`]).
#[derive(Debug, Default)]
pub struct SocketCounters {
    /// Frames the kernel dropped for the sockets (`rx_dropped`).
    pub rx_dropped: AtomicU64,
    /// Frames lost because the fill ring was empty
    /// (`rx_fill_ring_empty_descs`): the NF thread did not hand frames
    /// back fast enough.
    pub fill_ring_empty: AtomicU64,
    /// Frames lost because the rx ring was full (`rx_ring_full`).
    pub rx_ring_full: AtomicU64,
}

/// How often the NF thread reads its sockets' kernel counters and runs the
/// NFs' `tick`.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(10);

/// One side of the NF host: its interface and the Ethernet addresses of
/// frames leaving by it.
pub(crate) struct HostSide {
    pub dev: String,
    /// The interface's own MAC (new source).
    pub src: [u8; 6],
    /// The neighbour's MAC on that side (new destination).
    pub dst: [u8; 6],
}

/// A running user-space NF group; stops and joins its thread on drop.
pub(crate) struct UserNf {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), String>>>,
    /// One per NF of the group, in chain order.
    pub counters: Vec<Arc<NfCounters>>,
    /// AF_XDP only.
    pub sockets: Option<Arc<SocketCounters>>,
    ns: String,
    forwarding_was: String,
}

fn sysctl_forwarding(ns: &str, value: Option<&str>) -> Result<String, TestbedError> {
    let mut c = netns::command_in(Some(ns), "sysctl");
    match value {
        Some(v) => c.args(["-qw", &format!("net.ipv4.ip_forward={v}")]),
        None => c.args(["-n", "net.ipv4.ip_forward"]),
    };
    let out = netns::run(&mut c)
        .map_err(|source| TestbedError::Setup { what: format!("forwarding in {ns}"), source })?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// What the group thread needs from a port beyond [`Port`].
trait GroupPort: Port + Send + 'static {
    fn raw_fd(&self) -> RawFd;
    fn socket_stats(&self) -> Option<XskStats> {
        None
    }
}

impl GroupPort for AfXdpPort {
    fn raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
    fn socket_stats(&self) -> Option<XskStats> {
        self.xsk_stats().ok()
    }
}

impl GroupPort for AfPacketPort {
    fn raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

fn open_af_xdp(ns: &str, devs: [&str; 2], wait: UserWait) -> Result<[AfXdpPort; 2], TestbedError> {
    let open = |dev: &str| {
        let mut cfg = AfXdpConfig::new(dev);
        cfg.batch_size = AF_XDP_BATCH;
        cfg.ring_size = AF_XDP_RING;
        cfg.frame_count = AF_XDP_FRAMES;
        cfg.wait = match wait {
            UserWait::Poll => WaitMode::Block,
            UserWait::Busy => WaitMode::Busy,
        };
        AfXdpPort::open(&cfg)
            .map_err(|e| TestbedError::Deploy(format!("AF_XDP port on {ns}:{dev}: {e}")))
    };
    netns::in_netns(ns, || -> Result<[AfXdpPort; 2], TestbedError> {
        Ok([open(devs[0])?, open(devs[1])?])
    })
    .map_err(|source| TestbedError::Setup {
        what: format!("AF_XDP ports on {ns}:{}/{}", devs[0], devs[1]),
        source,
    })?
}

fn open_af_packet(
    ns: &str,
    devs: [&str; 2],
    batch: usize,
) -> Result<[AfPacketPort; 2], TestbedError> {
    let open = |dev: &str| {
        let mut cfg = AfPacketConfig::new(dev);
        cfg.batch_size = batch;
        AfPacketPort::open(&cfg)
            .map_err(|e| TestbedError::Deploy(format!("AF_PACKET port on {ns}:{dev}: {e}")))
    };
    netns::in_netns(ns, || -> Result<[AfPacketPort; 2], TestbedError> {
        Ok([open(devs[0])?, open(devs[1])?])
    })
    .map_err(|source| TestbedError::Setup {
        what: format!("AF_PACKET ports on {ns}:{}/{}", devs[0], devs[1]),
        source,
    })?
}

/// One NF of the group with its thread-local counters.
struct Stage {
    nf: Box<dyn NetworkFunction>,
    local: Counters,
    shared: Arc<NfCounters>,
}

/// The group's NFs and where frames go when they leave.
struct Pipeline {
    stages: Vec<Stage>,
    sides: [HostSide; 2],
}

impl Pipeline {
    /// Run `b`, which arrived from side `from`, through the stages it
    /// crosses: 0..n from the client side, n..0 from the server side. Stops
    /// early once the batch is empty.
    fn run(&mut self, from: usize, b: &mut Batch, now: u64) {
        let n = self.stages.len();
        if from == 0 {
            self.run_stages(0..n, b, now)
        } else {
            self.run_stages((0..n).rev(), b, now)
        }
    }

    /// Run `b` through the stages `order` names, in that order.
    fn run_stages(&mut self, order: impl Iterator<Item = usize>, b: &mut Batch, now: u64) {
        for i in order {
            if b.is_empty() {
                return;
            }
            let s = &mut self.stages[i];
            s.shared.rx_packets.fetch_add(b.len() as u64, Ordering::Relaxed);
            s.shared.rx_bytes.fetch_add(b.bytes() as u64, Ordering::Relaxed);
            let before = s.local.drops;
            s.nf.process(b, &mut Context::new(now, &mut s.local));
            for (r, (a, was)) in s.local.drops.iter().zip(before).enumerate() {
                if *a != was {
                    s.shared.drops[r].fetch_add(a - was, Ordering::Relaxed);
                }
            }
            s.shared.forwarded.fetch_add(b.len() as u64, Ordering::Relaxed);
        }
    }

    /// Rewrite the Ethernet addresses of `b` for leaving by side `to`, send
    /// it, and charge transmit drops to the last NF before that side.
    fn send<P: Port>(&self, port: &mut P, to: usize, b: &mut Batch) -> Result<(), String> {
        let side = &self.sides[to];
        for p in b.iter_mut() {
            let f = p.data_mut();
            if f.len() >= 12 {
                f[..6].copy_from_slice(&side.dst);
                f[6..12].copy_from_slice(&side.src);
            }
        }
        let want = b.len() as u64;
        let sent = port.send(b).map_err(|e| e.to_string())? as u64;
        port.flush().map_err(|e| e.to_string())?;
        if sent < want {
            let last = if to == 1 { self.stages.len() - 1 } else { 0 };
            self.stages[last].shared.tx_dropped.fetch_add(want - sent, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Receive one batch on side `from`, run it through the group and send it
/// out of the other side. Returns the number of frames received.
fn step<P: Port>(
    ports: &mut [P; 2],
    from: usize,
    pipe: &mut Pipeline,
    b: &mut Batch,
    max: usize,
) -> Result<usize, String> {
    let n = ports[from].recv(b, max).map_err(|e| e.to_string())?;
    if n == 0 {
        return Ok(0);
    }
    pipe.run(from, b, braid_nf::monotonic_ns());
    if !b.is_empty() {
        pipe.send(&mut ports[1 - from], 1 - from, b)?;
    }
    Ok(n)
}

/// Sleep until one of the sockets has frames or `timeout` passes.
fn wait_either(fds: [RawFd; 2], timeout: Duration) -> Result<(), String> {
    let mut pfds = fds.map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 });
    // SAFETY: `pfds` is a live array of two pollfd structs whose descriptors
    // stay open (the ports live in the calling thread) for the call.
    let rc = unsafe { libc::poll(pfds.as_mut_ptr(), 2, timeout.as_millis() as libc::c_int) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(format!("poll on the NF's sockets: {e}"));
        }
    }
    Ok(())
}

/// Apply `--cpus` and `--rt-prio` to the calling thread.
fn apply_sched(opts: &UserOptions) -> Result<(), String> {
    if !opts.cpus.is_empty() {
        // SAFETY: cpu_set_t is a plain bit array, valid when zeroed.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for &c in &opts.cpus {
            if c >= libc::CPU_SETSIZE as usize {
                return Err(format!("--cpus: CPU {c} is beyond the kernel's CPU set size"));
            }
            // SAFETY: `c` is below CPU_SETSIZE, inside `set`.
            unsafe { libc::CPU_SET(c, &mut set) };
        }
        // SAFETY: pid 0 is the calling thread; `set` is a live cpu_set_t
        // and its exact size is passed.
        let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
        if rc != 0 {
            return Err(format!(
                "--cpus {:?}: sched_setaffinity: {}",
                opts.cpus,
                std::io::Error::last_os_error()
            ));
        }
    }
    if let Some(prio) = opts.rt_prio {
        let param = libc::sched_param { sched_priority: prio };
        // SAFETY: pthread_self() is the calling thread; `param` is live.
        let rc =
            unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) };
        if rc != 0 {
            return Err(format!(
                "--rt-prio {prio}: SCHED_FIFO: {}",
                std::io::Error::from_raw_os_error(rc)
            ));
        }
    }
    Ok(())
}

/// The group thread: both directions in turn, then the NFs' `tick`, then
/// wait if nothing came.
fn run_group<P: GroupPort>(
    mut ports: [P; 2],
    mut pipe: Pipeline,
    batch: usize,
    opts: UserOptions,
    sockets: Option<Arc<SocketCounters>>,
    stop: Arc<AtomicBool>,
    started: mpsc::Sender<Result<(), String>>,
) -> Result<(), String> {
    if let Err(e) = apply_sched(&opts) {
        // Reported by `start`, which then fails the deployment.
        let _ = started.send(Err(e));
        return Ok(());
    }
    let _ = started.send(Ok(()));
    let mut b = Batch::with_capacity(batch);
    let mut tick_out = Batch::with_capacity(batch);
    let mut next_sample = Instant::now() + SAMPLE_INTERVAL;
    let fds = [ports[0].raw_fd(), ports[1].raw_fd()];
    while !stop.load(Ordering::Relaxed) {
        let n0 = step(&mut ports, 0, &mut pipe, &mut b, batch)?;
        let n1 = step(&mut ports, 1, &mut pipe, &mut b, batch)?;
        let idle = n0 == 0 && n1 == 0;
        let now = Instant::now();
        if now >= next_sample {
            next_sample = now + SAMPLE_INTERVAL;
            tick(&mut ports, &mut pipe, &mut tick_out)?;
            if let Some(s) = &sockets {
                sample_sockets(&ports, s);
            }
        }
        if idle {
            // An AF_XDP `recv` that finds no frame has already refilled the
            // fill ring and made the fill wakeup call the kernel asked for
            // (need-wakeup); `flush` kicks transmit again if frames are
            // still waiting in a tx ring (no system call when none are).
            ports[0].flush().map_err(|e| e.to_string())?;
            ports[1].flush().map_err(|e| e.to_string())?;
            match opts.wait {
                UserWait::Poll => wait_either(fds, Duration::from_millis(50))?,
                UserWait::Busy => std::hint::spin_loop(),
            }
        }
    }
    if let Some(s) = &sockets {
        sample_sockets(&ports, s);
    }
    Ok(())
}

/// Run every NF's `tick`; what one emits goes on towards the server side
/// through the NFs after it.
fn tick<P: Port>(ports: &mut [P; 2], pipe: &mut Pipeline, out: &mut Batch) -> Result<(), String> {
    let now = braid_nf::monotonic_ns();
    for i in 0..pipe.stages.len() {
        let s = &mut pipe.stages[i];
        s.nf.tick(out, &mut Context::new(now, &mut s.local));
        if !out.is_empty() {
            let n = pipe.stages.len();
            pipe.run_stages(i + 1..n, out, now);
            if !out.is_empty() {
                pipe.send(&mut ports[1], 1, out)?;
            }
        }
    }
    Ok(())
}

fn sample_sockets<P: GroupPort>(ports: &[P; 2], into: &SocketCounters) {
    let (mut rx_dropped, mut fill_empty, mut ring_full) = (0, 0, 0);
    for p in ports {
        if let Some(k) = p.socket_stats() {
            rx_dropped += k.rx_dropped;
            fill_empty += k.rx_fill_ring_empty_descs;
            ring_full += k.rx_ring_full;
        }
    }
    into.rx_dropped.store(rx_dropped, Ordering::Relaxed);
    into.fill_ring_empty.store(fill_empty, Ordering::Relaxed);
    into.rx_ring_full.store(ring_full, Ordering::Relaxed);
}

impl UserNf {
    /// Start the NFs `nfs` (name, kind, parameters; in chain order) as one
    /// group in namespace `ns` between `sides` (0: client side, 1: server
    /// side).
    pub(crate) fn start(
        ns: &str,
        nfs: &[(&str, &str, &Params)],
        sides: [HostSide; 2],
        io: UserIo,
        opts: &UserOptions,
    ) -> Result<UserNf, TestbedError> {
        if nfs.is_empty() {
            return Err(TestbedError::Deploy(format!("no NF to run in {ns}")));
        }
        if opts.batch == 0 || opts.batch > braid_io::af_packet::MAX_BATCH {
            return Err(TestbedError::Deploy(format!(
                "--batch {} is out of range 1..={}",
                opts.batch,
                braid_io::af_packet::MAX_BATCH
            )));
        }
        if let Some(p) = opts.rt_prio {
            if !(1..=99).contains(&p) {
                return Err(TestbedError::Deploy(format!(
                    "--rt-prio {p} is out of range 1..=99 (SCHED_FIFO priorities)"
                )));
            }
        }
        // Build every NF first: a bad parameter fails before any port opens.
        let mut stages = Vec::new();
        for (name, kind, params) in nfs {
            let nf = braid_nf::build(kind, params)
                .map_err(|e| TestbedError::Deploy(format!("NF {name:?} ({kind}): {e}")))?;
            stages.push(Stage {
                nf,
                local: Counters::default(),
                shared: Arc::new(NfCounters::default()),
            });
        }
        let counters: Vec<Arc<NfCounters>> = stages.iter().map(|s| s.shared.clone()).collect();
        let devs = [sides[0].dev.clone(), sides[1].dev.clone()];
        let devs = [devs[0].as_str(), devs[1].as_str()];
        let pipe = Pipeline { stages, sides };
        let forwarding_was = sysctl_forwarding(ns, None)?;
        sysctl_forwarding(ns, Some("0"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut me = UserNf {
            stop: stop.clone(),
            thread: None,
            counters,
            sockets: None,
            ns: ns.to_string(),
            forwarding_was,
        };
        let (tx, rx) = mpsc::channel();
        let o = opts.clone();
        me.thread = Some(match io {
            UserIo::AfXdp => {
                let ports = open_af_xdp(ns, devs, opts.wait)?;
                let sockets = Arc::new(SocketCounters::default());
                me.sockets = Some(sockets.clone());
                std::thread::spawn(move || {
                    run_group(ports, pipe, AF_XDP_BATCH, o, Some(sockets), stop, tx)
                })
            }
            UserIo::AfPacket => {
                let ports = open_af_packet(ns, devs, opts.batch)?;
                std::thread::spawn(move || {
                    run_group(ports, pipe, o.batch, o.clone(), None, stop, tx)
                })
            }
        });
        match rx.recv() {
            Ok(Ok(())) => Ok(me),
            Ok(Err(e)) => Err(TestbedError::Deploy(format!("NF thread in {ns}: {e}"))),
            Err(_) => Err(TestbedError::Deploy(format!("NF thread in {ns} ended before starting"))),
        }
    }
}

impl Drop for UserNf {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            if let Ok(Err(e)) = t.join() {
                eprintln!("braid deploy: NF thread in {} ended with an error: {e}", self.ns);
            }
        }
        let _ = sysctl_forwarding(&self.ns, Some(&self.forwarding_was));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use braid_packet::wire::build::FrameSpec;
    use std::net::Ipv4Addr;

    /// A group of (kind, YAML parameters), without ports.
    fn pipeline(nfs: &[(&str, &str)]) -> Pipeline {
        let stages = nfs
            .iter()
            .map(|(kind, yaml)| Stage {
                nf: braid_nf::build(kind, &serde_yaml_ng::from_str(yaml).unwrap()).unwrap(),
                local: Counters::default(),
                shared: Arc::new(NfCounters::default()),
            })
            .collect();
        let side = |dev: &str| HostSide { dev: dev.into(), src: [2; 6], dst: [4; 6] };
        Pipeline { stages, sides: [side("a"), side("b")] }
    }

    fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Batch {
        let mut b = Batch::with_capacity(1);
        b.push(
            FrameSpec::udp((Ipv4Addr::from(src), sport), (Ipv4Addr::from(dst), dport), 8).packet(),
        );
        b
    }

    /// (source, destination) address and port of the only frame in `b`.
    fn ends(b: &Batch) -> ((Ipv4Addr, u16), (Ipv4Addr, u16)) {
        let f = b.iter().next().expect("one frame").data();
        let ip = |o: usize| Ipv4Addr::new(f[o], f[o + 1], f[o + 2], f[o + 3]);
        let port = |o: usize| u16::from_be_bytes([f[o], f[o + 1]]);
        ((ip(26), port(34)), (ip(30), port(36)))
    }

    #[test]
    fn answers_cross_the_group_in_reverse_order() {
        let mut p = pipeline(&[
            ("firewall", "{ rules: [{ action: allow, src: 10.1.0.0/16 }], default: drop }"),
            ("nat", "{ external_ip: 192.0.2.1, internal: [10.1.0.0/16] }"),
        ]);
        let now = braid_nf::monotonic_ns();
        // Request from the client side: firewall (allowed, tracked), then NAT.
        let mut req = udp([10, 1, 0, 5], 4000, [198, 51, 100, 7], 53);
        p.run(0, &mut req, now);
        let (src, dst) = ends(&req);
        assert_eq!(src.0, Ipv4Addr::new(192, 0, 2, 1), "translated source");
        assert_eq!(dst, (Ipv4Addr::new(198, 51, 100, 7), 53));
        // The answer from the server side: NAT first (back to the inside
        // address), then the firewall, whose connection lets it in.
        let mut ans = udp([198, 51, 100, 7], 53, [192, 0, 2, 1], src.1);
        p.run(1, &mut ans, now);
        assert_eq!(ends(&ans).1, (Ipv4Addr::new(10, 1, 0, 5), 4000));
        // A flow the server side starts (another port): the NAT passes it
        // on, the firewall drops it, counted with its reason on its row.
        let mut unasked = udp([198, 51, 100, 7], 53, [10, 1, 0, 5], 5000);
        p.run(1, &mut unasked, now);
        assert!(unasked.is_empty());
        let (fw, nat) = (&p.stages[0].shared, &p.stages[1].shared);
        assert_eq!(fw.drop_breakdown(), [("denied", 1)]);
        assert_eq!(fw.dropped(), 1);
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        assert_eq!((get(&fw.rx_packets), get(&fw.forwarded)), (3, 2));
        assert_eq!((get(&nat.rx_packets), get(&nat.forwarded), nat.dropped()), (3, 3, 0));
    }
}
