//! User-space NFs on the testbed: a *group* of NFs (one or more, in chain
//! order) between two ports on its host's two interfaces, either AF_XDP
//! ([`braid_io::af_xdp`], one socket per interface with its steering
//! program) or AF_PACKET (one socket per interface).
//!
//! A group is one [`Worker`] (braid's one packet loop, `braid-dataplane`)
//! on its own thread, running `Graph::chain(nfs, 2, 0, 1)`: port 0 is the
//! host's client-side interface, port 1 the server side. Every NF of the
//! group is ONE instance serving both directions: frames from port 0 enter
//! the first NF on gate 0 and cross the NFs in chain order; frames from
//! port 1 enter the last NF on gate 1 and cross them in reverse order, as
//! they would across hosts. So stateful NFs (nat, firewall with conntrack,
//! loadbalancer, ...) see both directions of a flow in one state, and
//! `router`/`l2switch` choose their side by gate (`meta.out_port`) exactly
//! as offline. Packets an NF emits from `tick` leave by its gate 1.
//!
//! Frames leave with the Ethernet addresses rewritten for the next hop,
//! like the XDP NFs: that is the job of the [`HostPort`] each interface is
//! wrapped in, so it applies to every frame that leaves, whichever NF sent
//! it. Linux forwarding is switched off on the host while the group runs
//! (AF_PACKET only copies frames; the kernel would forward them a second
//! time; with AF_XDP the steering program takes every frame of the queue,
//! so this only matters for frames it does not see) and restored
//! afterwards.

use braid_dataplane::{
    Graph, Idle, Sched, SchedPolicy, Worker, WorkerConfig, WorkerHandle, WorkerReport,
};
use braid_io::af_packet::{AfPacketConfig, AfPacketPort};
use braid_io::af_xdp::{AfXdpConfig, AfXdpPort, WaitMode, XskStats};
use braid_io::{netns, Port, PortError, PortStats, WaitReadiness};
use braid_nf::{NetworkFunction, Params};
use braid_packet::Batch;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

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

impl UserWait {
    /// The worker's idle policy for this setting.
    pub fn idle(self) -> Idle {
        match self {
            UserWait::Poll => Idle::Poll,
            UserWait::Busy => Idle::Busy,
        }
    }
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
    /// A non-real-time policy for the NF threads (other, batch, idle);
    /// `rt_prio` sets SCHED_FIFO instead (not both).
    pub policy: SchedPolicy,
    /// Nice value (-20..=19) of the NF threads (not with `rt_prio`).
    pub nice: Option<i32>,
    /// EEVDF slice in µs (100..=100000) of the NF threads, for the other
    /// and batch policies (Linux 6.12+; not with `rt_prio`).
    pub slice_us: Option<u64>,
    /// Adaptive mode: the worker sets its batch size (up to its batch
    /// size) and idle policy from what it measures, and prints each
    /// change and why.
    pub adapt: bool,
    /// Largest IP packet on the NF's ports (default 1500; up to 9000 on
    /// AF_PACKET, 3818 on AF_XDP, see `braid_io::af_xdp::MAX_MTU`).
    pub mtu: usize,
}

impl Default for UserOptions {
    fn default() -> Self {
        UserOptions {
            wait: UserWait::Poll,
            rt_prio: None,
            cpus: Vec::new(),
            batch: 1,
            policy: SchedPolicy::Other,
            nice: None,
            slice_us: None,
            adapt: false,
            mtu: braid_packet::DEFAULT_MTU,
        }
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

/// How often the worker runs the NFs' `tick` and publishes its ports'
/// counters (which samples the AF_XDP sockets' kernel counters).
pub const TICK_INTERVAL: Duration = Duration::from_millis(10);

/// Kernel counters of one AF_XDP socket, as last sampled (when the worker
/// published its port counters: every [`TICK_INTERVAL`] and at the end).
#[derive(Debug, Default)]
pub struct SocketCounters {
    /// Frames the kernel dropped for the socket (`rx_dropped`).
    pub rx_dropped: AtomicU64,
    /// Frames lost because the fill ring was empty
    /// (`rx_fill_ring_empty_descs`): the NF thread did not hand frames
    /// back fast enough.
    pub fill_ring_empty: AtomicU64,
    /// Frames lost because the rx ring was full (`rx_ring_full`).
    pub rx_ring_full: AtomicU64,
}

impl SocketCounters {
    fn store(&self, k: &XskStats) {
        self.rx_dropped.store(k.rx_dropped, Ordering::Relaxed);
        self.fill_ring_empty.store(k.rx_fill_ring_empty_descs, Ordering::Relaxed);
        self.rx_ring_full.store(k.rx_ring_full, Ordering::Relaxed);
    }
}

/// One side of the NF host: its interface and the Ethernet addresses of
/// frames leaving by it.
pub(crate) struct HostSide {
    pub dev: String,
    /// The interface's own MAC (new source).
    pub src: [u8; 6],
    /// The neighbour's MAC on that side (new destination).
    pub dst: [u8; 6],
}

/// What a [`HostPort`] needs from the socket it wraps beyond [`Port`].
pub(crate) trait SocketPort: Port + 'static {
    /// The kernel's counters of the socket, where it keeps any.
    fn socket_stats(&self) -> Option<XskStats> {
        None
    }
}

impl SocketPort for AfXdpPort {
    fn socket_stats(&self) -> Option<XskStats> {
        self.xsk_stats().ok()
    }
}

impl SocketPort for AfPacketPort {}

/// A port on one interface of an NF host, as the group's worker sees it:
/// every frame it sends leaves with the Ethernet addresses of the next hop
/// on that side (source: the interface, destination: the neighbour), like
/// the XDP NFs rewrite them; `router` and `l2switch` frames too, whatever
/// addresses the NF wrote. Its counters sample the socket's kernel
/// counters (AF_XDP) into [`SocketCounters`].
pub(crate) struct HostPort<P> {
    inner: P,
    src: [u8; 6],
    dst: [u8; 6],
    sockets: Option<Arc<SocketCounters>>,
}

impl<P: SocketPort> HostPort<P> {
    pub(crate) fn new(inner: P, side: &HostSide, sockets: Option<Arc<SocketCounters>>) -> Self {
        HostPort { inner, src: side.src, dst: side.dst, sockets }
    }
}

impl<P: SocketPort> Port for HostPort<P> {
    fn name(&self) -> String {
        self.inner.name()
    }

    fn recv(&mut self, batch: &mut Batch, max: usize) -> Result<usize, PortError> {
        let n = self.inner.recv(batch, max)?;
        if n == 0 {
            // Nothing came: push out what an earlier send left in the
            // transmit ring (copy-mode AF_XDP sends a bounded number of
            // frames per kick). No system call when nothing waits.
            self.inner.flush()?;
        }
        Ok(n)
    }

    fn send(&mut self, batch: &mut Batch) -> Result<usize, PortError> {
        for p in batch.iter_mut() {
            let f = p.data_mut();
            if f.len() >= 12 {
                f[..6].copy_from_slice(&self.dst);
                f[6..12].copy_from_slice(&self.src);
            }
        }
        self.inner.send(batch)
    }

    fn flush(&mut self) -> Result<(), PortError> {
        self.inner.flush()
    }

    fn wait(&mut self, timeout: Duration) -> Result<(), PortError> {
        self.inner.wait(timeout)
    }

    fn tx_room(&mut self) -> usize {
        self.inner.tx_room()
    }

    fn prepare_wait(&mut self, fds: &mut Vec<RawFd>) -> WaitReadiness {
        self.inner.prepare_wait(fds)
    }

    fn finish_wait(&mut self) {
        self.inner.finish_wait()
    }

    fn stats(&self) -> PortStats {
        if let (Some(into), Some(k)) = (&self.sockets, self.inner.socket_stats()) {
            into.store(&k);
        }
        self.inner.stats()
    }
}

/// A running user-space NF group; stops and joins its worker on drop.
pub(crate) struct UserNf {
    stop: Arc<AtomicBool>,
    /// None once joined; the thread returns None if it never ran the
    /// worker (its scheduling was refused).
    thread: Option<JoinHandle<Option<WorkerReport>>>,
    /// The group's worker: its counters, read without locks.
    pub handle: WorkerHandle,
    /// AF_XDP only: the kernel counters of the sockets on side 0 and 1.
    pub sockets: Option<[Arc<SocketCounters>; 2]>,
    ns: String,
    /// The topology's forwarding setting, put back when the NF stops.
    forwarding: bool,
}

/// Open one port per side inside `ns` with `open` (which names the port
/// kind and the interface in its error).
fn open_pair<P: Send>(
    ns: &str,
    kind: &str,
    sides: &[HostSide; 2],
    open: impl Fn(&str) -> Result<P, PortError> + Sync,
) -> Result<[P; 2], TestbedError> {
    let open = |dev: &str| {
        open(dev).map_err(|e| TestbedError::Deploy(format!("{kind} port on {ns}:{dev}: {e}")))
    };
    netns::in_netns(ns, || -> Result<[P; 2], TestbedError> {
        Ok([open(&sides[0].dev)?, open(&sides[1].dev)?])
    })
    .map_err(|source| TestbedError::Setup {
        what: format!("{kind} ports on {ns}:{}/{}", sides[0].dev, sides[1].dev),
        source,
    })?
}

/// The worker's two ports: side 0 (client) first.
type HostPorts = [Box<dyn Port>; 2];

fn open_af_xdp(
    ns: &str,
    sides: &[HostSide; 2],
    wait: UserWait,
    mtu: usize,
) -> Result<(HostPorts, [Arc<SocketCounters>; 2]), TestbedError> {
    let [a, b] = open_pair(ns, "AF_XDP", sides, |dev| {
        let mut cfg = AfXdpConfig::new(dev);
        cfg.mtu = mtu;
        cfg.batch_size = AF_XDP_BATCH;
        cfg.ring_size = AF_XDP_RING;
        cfg.frame_count = AF_XDP_FRAMES;
        cfg.wait = match wait {
            UserWait::Poll => WaitMode::Block,
            UserWait::Busy => WaitMode::Busy,
        };
        AfXdpPort::open(&cfg)
    })?;
    let sockets = [Arc::new(SocketCounters::default()), Arc::new(SocketCounters::default())];
    let ports: HostPorts = [
        Box::new(HostPort::new(a, &sides[0], Some(sockets[0].clone()))),
        Box::new(HostPort::new(b, &sides[1], Some(sockets[1].clone()))),
    ];
    Ok((ports, sockets))
}

fn open_af_packet(
    ns: &str,
    sides: &[HostSide; 2],
    batch: usize,
    mtu: usize,
) -> Result<HostPorts, TestbedError> {
    let [a, b] = open_pair(ns, "AF_PACKET", sides, |dev| {
        let mut cfg = AfPacketConfig::new(dev);
        cfg.mtu = mtu;
        cfg.batch_size = batch;
        AfPacketPort::open(&cfg)
    })?;
    Ok([Box::new(HostPort::new(a, &sides[0], None)), Box::new(HostPort::new(b, &sides[1], None))])
}

/// The group's NFs (name, kind, parameters) as a chain between port 0
/// (client side) and port 1 (server side). Every NF is built first: a bad
/// parameter fails before any port opens.
pub(crate) fn group_graph(nfs: &[(&str, &str, &Params)]) -> Result<Graph, TestbedError> {
    let mut built: Vec<(String, Box<dyn NetworkFunction>)> = Vec::new();
    for (name, kind, params) in nfs {
        let nf = braid_nf::build(kind, params)
            .map_err(|e| TestbedError::Deploy(format!("NF {name:?} ({kind}): {e}")))?;
        built.push((name.to_string(), nf));
    }
    Graph::chain(built, 2, 0, 1).map_err(|e| TestbedError::Deploy(format!("NF group: {e}")))
}

/// Apply `--cpus` and `--rt-prio` to the calling thread, each separately
/// so that the error names the option the kernel refused.
fn apply_sched(opts: &UserOptions) -> Result<(), String> {
    if !opts.cpus.is_empty() {
        Sched { cpus: opts.cpus.clone(), ..Sched::default() }
            .apply_to_current_thread()
            .map_err(|e| format!("--cpus {:?}: {e}", opts.cpus))?;
    }
    if let Some(prio) = opts.rt_prio {
        Sched { policy: SchedPolicy::Fifo(prio), ..Sched::default() }
            .apply_to_current_thread()
            .map_err(|e| format!("--rt-prio {prio}: SCHED_FIFO: {e}"))?;
    }
    if opts.policy != SchedPolicy::Other || opts.nice.is_some() || opts.slice_us.is_some() {
        Sched { policy: opts.policy, nice: opts.nice, slice_us: opts.slice_us, ..Sched::default() }
            .apply_to_current_thread()
            .map_err(|e| {
                format!(
                    "--policy {} / --nice {:?} / --slice-us {:?}: {e}",
                    opts.policy, opts.nice, opts.slice_us
                )
            })?;
    }
    Ok(())
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
        forwarding: bool,
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
            if opts.policy != SchedPolicy::Other || opts.nice.is_some() || opts.slice_us.is_some() {
                return Err(TestbedError::Deploy(format!(
                    "--rt-prio {p} sets SCHED_FIFO: it does not combine with --policy {}, --nice or --slice-us",
                    opts.policy
                )));
            }
        }
        if matches!(opts.policy, SchedPolicy::Fifo(_) | SchedPolicy::Rr(_)) {
            return Err(TestbedError::Deploy(
                "--policy takes other, batch or idle; real time is --rt-prio".into(),
            ));
        }
        Sched { policy: opts.policy, nice: opts.nice, slice_us: opts.slice_us, ..Sched::default() }
            .check()
            .map_err(|e| TestbedError::Deploy(format!("--nice / --slice-us: {e}")))?;
        let graph = group_graph(nfs)?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut cfg = WorkerConfig::new(format!("nf-group@{ns}"));
        cfg.idle = opts.wait.idle();
        cfg.tick_interval = TICK_INTERVAL;
        cfg.stop_flag = Some(stop.clone());
        // Scheduling is applied by the thread itself before the worker
        // runs (see below), so a refusal fails the deployment at once.
        cfg.sched = Sched::default();
        let (ports, sockets) = match io {
            UserIo::AfXdp => {
                cfg.batch_size = AF_XDP_BATCH;
                let (ports, sockets) = open_af_xdp(ns, &sides, opts.wait, opts.mtu)?;
                (ports, Some(sockets))
            }
            UserIo::AfPacket => {
                cfg.batch_size = opts.batch;
                (open_af_packet(ns, &sides, opts.batch, opts.mtu)?, None)
            }
        };
        let deploy_err = |e: braid_dataplane::WorkerError| TestbedError::Deploy(e.to_string());
        if opts.adapt {
            cfg.adapt = Some(braid_dataplane::AdaptConfig {
                max_batch: cfg.batch_size,
                // Sleeping between packets, it may run woken at real time.
                rt_priority: (opts.wait == UserWait::Poll && opts.rt_prio.is_none()).then_some(10),
                log: true,
                ..braid_dataplane::AdaptConfig::default()
            });
        }
        let (mut worker, handle) = Worker::new(cfg, graph).map_err(deploy_err)?;
        let [client, server] = ports;
        let (to_server, to_client) = {
            let g = worker.graph_mut();
            (g.entry(0, 1), g.entry(1, 0))
        };
        worker.add_port(client, Some(to_server)).map_err(deploy_err)?;
        worker.add_port(server, Some(to_client)).map_err(deploy_err)?;
        // The deployment recorded this in the state file before (so a
        // killed deploy is repaired by the next one); put back is the
        // topology's value, not whatever was there (a killed deploy's 0).
        crate::set_forwarding(ns, false)?;
        let mut me = UserNf { stop, thread: None, handle, sockets, ns: ns.to_string(), forwarding };
        let (tx, rx) = mpsc::channel();
        let o = opts.clone();
        let spawned = std::thread::Builder::new().name(format!("braid-nf-{ns}")).spawn(move || {
            if let Err(e) = apply_sched(&o) {
                // Reported by `start`, which then fails the deployment.
                let _ = tx.send(Err(e));
                return None;
            }
            let _ = tx.send(Ok(()));
            Some(worker.run())
        });
        let thread = spawned
            .map_err(|e| TestbedError::Deploy(format!("NF thread in {ns} did not start: {e}")))?;
        me.thread = Some(thread);
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
            if let Ok(Some(WorkerReport { error: Some(e), .. })) = t.join() {
                eprintln!("braid deploy: NF thread in {} ended with an error: {e}", self.ns);
            }
        }
        let _ = crate::set_forwarding(&self.ns, self.forwarding);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use braid_dataplane::Endpoint;
    use braid_nf::DropReason;
    use braid_packet::wire::build::FrameSpec;
    use std::net::Ipv4Addr;

    /// A group of (kind, YAML parameters) as its worker's graph, without
    /// ports.
    fn group(nfs: &[(&str, &str)]) -> Graph {
        let params: Vec<Params> =
            nfs.iter().map(|(_, yaml)| serde_yaml_ng::from_str(yaml).unwrap()).collect();
        let specs: Vec<(&str, &str, &Params)> =
            nfs.iter().zip(&params).map(|((kind, _), p)| (*kind, *kind, p)).collect();
        group_graph(&specs).unwrap()
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

    /// Push `b` into the group from side `from`; what leaves, per side.
    fn run(g: &mut Graph, from: u16, mut b: Batch, now: u64) -> [Batch; 2] {
        let mut out = [Batch::new(), Batch::new()];
        let to = g.entry(from, 1 - from as usize);
        g.push(to, &mut b, now, &mut out);
        out
    }

    #[test]
    fn answers_cross_the_group_in_reverse_order() {
        let mut g = group(&[
            ("firewall", "{ rules: [{ action: allow, src: 10.1.0.0/16 }], default: drop }"),
            ("nat", "{ external_ip: 192.0.2.1, internal: [10.1.0.0/16] }"),
        ]);
        let now = braid_nf::monotonic_ns();
        // Request from the client side: firewall (allowed, tracked), then NAT.
        let [back, req] = run(&mut g, 0, udp([10, 1, 0, 5], 4000, [198, 51, 100, 7], 53), now);
        assert!(back.is_empty());
        let (src, dst) = ends(&req);
        assert_eq!(src.0, Ipv4Addr::new(192, 0, 2, 1), "translated source");
        assert_eq!(dst, (Ipv4Addr::new(198, 51, 100, 7), 53));
        // The answer from the server side: NAT first (back to the inside
        // address), then the firewall, whose connection lets it in.
        let [ans, onward] = run(&mut g, 1, udp([198, 51, 100, 7], 53, [192, 0, 2, 1], src.1), now);
        assert!(onward.is_empty());
        assert_eq!(ends(&ans).1, (Ipv4Addr::new(10, 1, 0, 5), 4000));
        // A flow the server side starts (another port): the NAT passes it
        // on, the firewall drops it, counted with its reason on its row.
        let [unasked, onward] =
            run(&mut g, 1, udp([198, 51, 100, 7], 53, [10, 1, 0, 5], 5000), now);
        assert!(unasked.is_empty() && onward.is_empty());
        let (fw, nat) = (g.stages()[0].counters(), g.stages()[1].counters());
        assert_eq!(fw.drop_breakdown(), [("denied", 1)]);
        assert_eq!(fw.dropped_total(), 1);
        assert_eq!(fw.dropped(DropReason::Denied), 1);
        assert_eq!((fw.packets_in, fw.packets_out), (3, 2));
        assert_eq!((nat.packets_in, nat.packets_out, nat.dropped_total()), (3, 3, 0));
        assert_eq!(g.entry(0, 1), Endpoint::Stage { stage: 0, gate: 0 });
    }

    /// A port that keeps what it is sent.
    struct Sink(Vec<Vec<u8>>);
    impl Port for Sink {
        fn name(&self) -> String {
            "sink".into()
        }
        fn recv(&mut self, _: &mut Batch, _: usize) -> Result<usize, PortError> {
            Ok(0)
        }
        fn send(&mut self, b: &mut Batch) -> Result<usize, PortError> {
            let n = b.len();
            self.0.extend(b.drain().map(|p| p.data().to_vec()));
            Ok(n)
        }
        fn stats(&self) -> PortStats {
            PortStats::default()
        }
    }
    impl SocketPort for Sink {}

    #[test]
    fn host_port_rewrites_the_ethernet_addresses_of_what_leaves() {
        let side = HostSide { dev: "x".into(), src: [2; 6], dst: [4; 6] };
        let mut p = HostPort::new(Sink(Vec::new()), &side, None);
        let mut b = udp([10, 1, 0, 5], 4000, [198, 51, 100, 7], 53);
        let body = b.iter().next().unwrap().data()[12..].to_vec();
        // A runt shorter than two addresses is sent as it is.
        b.push(braid_packet::Packet::from_bytes(&[9; 8]));
        assert_eq!(p.send(&mut b).unwrap(), 2);
        let sent = &p.inner.0;
        assert_eq!((&sent[0][..6], &sent[0][6..12]), (&[4u8; 6][..], &[2u8; 6][..]));
        assert_eq!(sent[0][12..], body[..], "only the addresses change");
        assert_eq!(sent[1], [9; 8]);
    }
}
