//! User-space NFs on the testbed: an NF between two ports on its host's two
//! interfaces, either AF_XDP ([`braid_io::af_xdp`], one socket per
//! interface with its steering program, both directions in one thread that
//! waits on both sockets) or AF_PACKET (one port per interface and
//! direction, one thread per direction).
//!
//! Each direction has its own NF instance, so only stateless NF kinds are
//! accepted (a stateful NF would need both directions in one instance).
//! Frames leave with the Ethernet addresses rewritten for the next hop,
//! like the XDP NFs. Linux forwarding is switched off on the host while the
//! NF runs (AF_PACKET only copies frames; the kernel would forward them a
//! second time; with AF_XDP the steering program takes every frame of the
//! queue, so this only matters for frames it does not see) and restored
//! afterwards.

use braid_io::af_packet::{AfPacketConfig, AfPacketPort};
use braid_io::af_xdp::{AfXdpConfig, AfXdpPort};
use braid_io::{netns, Port};
use braid_nf::{Context, Counters, NetworkFunction, Params};
use braid_packet::Batch;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
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

/// Frames one AF_XDP `recv` moves at most (takes only what is there, so it
/// adds no latency; AF_PACKET keeps the batch size it is given).
pub const AF_XDP_BATCH: usize = 32;
/// AF_XDP ring entries and UMEM frames per socket (4 MiB of UMEM).
const AF_XDP_RING: u32 = 1024;
const AF_XDP_FRAMES: u32 = 2048;

/// Counters of one user-space NF, both directions together.
#[derive(Debug, Default)]
pub struct UserCounters {
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub forwarded: AtomicU64,
    pub dropped: AtomicU64,
    pub tx_dropped: AtomicU64,
}

/// One direction: frames from `rx` go through the NF and out of `tx`.
pub(crate) struct Direction {
    pub ns: String,
    pub rx_dev: String,
    pub tx_dev: String,
    /// New destination and source MAC for frames leaving `tx_dev`.
    pub dst: [u8; 6],
    pub src: [u8; 6],
}

/// A running user-space NF; stops and joins its threads on drop.
pub(crate) struct UserNf {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<(), String>>>,
    pub counters: Arc<UserCounters>,
    ns: String,
    forwarding_was: String,
}

fn open_af_xdp(ns: &str, devs: [&str; 2]) -> Result<[AfXdpPort; 2], TestbedError> {
    let open = |dev: &str| {
        let mut cfg = AfXdpConfig::new(dev);
        cfg.batch_size = AF_XDP_BATCH;
        cfg.ring_size = AF_XDP_RING;
        cfg.frame_count = AF_XDP_FRAMES;
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

fn open(ns: &str, dev: &str, batch: usize) -> Result<AfPacketPort, TestbedError> {
    let mut cfg = AfPacketConfig::new(dev);
    cfg.batch_size = batch;
    netns::in_netns(ns, || AfPacketPort::open(&cfg))
        .map_err(|source| TestbedError::Setup {
            what: format!("AF_PACKET port on {ns}:{dev}"),
            source,
        })?
        .map_err(|e| TestbedError::Deploy(format!("AF_PACKET port on {ns}:{dev}: {e}")))
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

/// One direction's NF instance, with where its frames go next.
struct Lane {
    nf: Box<dyn NetworkFunction>,
    dir: Direction,
    counters: Counters,
}

/// Receive one batch on `rx`, run it through `nf`, rewrite the Ethernet
/// addresses for the next hop and send it out of `tx`. Returns the number
/// of frames received.
fn forward<R: Port, T: Port>(
    rx: &mut R,
    tx: &mut T,
    lane: &mut Lane,
    b: &mut Batch,
    max: usize,
    counters: &UserCounters,
) -> Result<usize, String> {
    let Lane { nf, dir: d, counters: c } = lane;
    let n = rx.recv(b, max).map_err(|e| e.to_string())?;
    if n == 0 {
        return Ok(0);
    }
    counters.rx_packets.fetch_add(n as u64, Ordering::Relaxed);
    counters.rx_bytes.fetch_add(b.bytes() as u64, Ordering::Relaxed);
    let before = c.dropped_total();
    nf.process(b, &mut Context::new(braid_nf::monotonic_ns(), &mut *c));
    counters.dropped.fetch_add(c.dropped_total() - before, Ordering::Relaxed);
    for p in b.iter_mut() {
        let f = p.data_mut();
        if f.len() >= 12 {
            f[..6].copy_from_slice(&d.dst);
            f[6..12].copy_from_slice(&d.src);
        }
    }
    let want = b.len() as u64;
    let sent = tx.send(b).map_err(|e| e.to_string())? as u64;
    tx.flush().map_err(|e| e.to_string())?;
    counters.forwarded.fetch_add(sent, Ordering::Relaxed);
    counters.tx_dropped.fetch_add(want - sent, Ordering::Relaxed);
    Ok(n)
}

/// Sleep until one of the sockets has frames or `timeout` passes.
fn wait_either(a: &AfXdpPort, b: &AfXdpPort, timeout: Duration) -> Result<(), String> {
    let mut fds = [a.as_fd().as_raw_fd(), b.as_fd().as_raw_fd()].map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    // SAFETY: `fds` is a live array of two pollfd structs whose descriptors
    // stay open (the ports are borrowed) for the duration of the call.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout.as_millis() as libc::c_int) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(format!("poll on the AF_XDP sockets: {e}"));
        }
    }
    Ok(())
}

impl UserNf {
    /// Start `kind` (with `params`) on the two directions.
    pub(crate) fn start(
        kind: &str,
        params: &Params,
        dirs: [Direction; 2],
        io: UserIo,
        batch: usize,
    ) -> Result<UserNf, TestbedError> {
        let spec = braid_nf::find(kind)
            .ok_or_else(|| TestbedError::Deploy(format!("unknown NF kind {kind:?}")))?;
        if spec.stateful {
            return Err(TestbedError::Deploy(format!(
                "{kind} is stateful; user-space deployment runs one instance per direction and supports stateless NFs only so far"
            )));
        }
        // Build both instances first: a bad parameter fails before any port opens.
        let build = || {
            braid_nf::build(kind, params).map_err(|e| TestbedError::Deploy(format!("{kind}: {e}")))
        };
        let built = [build()?, build()?];
        let ns = dirs[0].ns.clone();
        let forwarding_was = sysctl_forwarding(&ns, None)?;
        sysctl_forwarding(&ns, Some("0"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(UserCounters::default());
        let mut me = UserNf {
            stop: stop.clone(),
            threads: Vec::new(),
            counters: counters.clone(),
            ns,
            forwarding_was,
        };
        match io {
            UserIo::AfXdp => {
                // dirs[0] receives on the interface dirs[1] sends out of.
                let [mut pa, mut pb] = open_af_xdp(&me.ns, [&dirs[0].rx_dev, &dirs[1].rx_dev])?;
                let ([nf_ab, nf_ba], [d_ab, d_ba]) = (built, dirs);
                let mut ab = Lane { nf: nf_ab, dir: d_ab, counters: Counters::default() };
                let mut ba = Lane { nf: nf_ba, dir: d_ba, counters: Counters::default() };
                let (stop, counters) = (stop.clone(), counters.clone());
                me.threads.push(std::thread::spawn(move || -> Result<(), String> {
                    let mut b = Batch::with_capacity(AF_XDP_BATCH);
                    let max = AF_XDP_BATCH;
                    while !stop.load(Ordering::Relaxed) {
                        let n1 = forward(&mut pa, &mut pb, &mut ab, &mut b, max, &counters)?;
                        let n2 = forward(&mut pb, &mut pa, &mut ba, &mut b, max, &counters)?;
                        if n1 == 0 && n2 == 0 {
                            // Hand spare frames to the kernel before sleeping.
                            pa.wait(Duration::ZERO).map_err(|e| e.to_string())?;
                            pb.wait(Duration::ZERO).map_err(|e| e.to_string())?;
                            wait_either(&pa, &pb, Duration::from_millis(50))?;
                        }
                    }
                    Ok(())
                }));
            }
            UserIo::AfPacket => {
                for (dir, nf) in dirs.into_iter().zip(built) {
                    let mut rx = open(&dir.ns, &dir.rx_dev, batch)?;
                    let mut tx = open(&dir.ns, &dir.tx_dev, batch)?;
                    let (stop, counters) = (stop.clone(), counters.clone());
                    let mut lane = Lane { nf, dir, counters: Counters::default() };
                    me.threads.push(std::thread::spawn(move || -> Result<(), String> {
                        let mut b = Batch::with_capacity(batch);
                        while !stop.load(Ordering::Relaxed) {
                            let n = forward(&mut rx, &mut tx, &mut lane, &mut b, batch, &counters)?;
                            if n == 0 {
                                rx.wait(Duration::from_millis(50)).map_err(|e| e.to_string())?;
                            }
                        }
                        Ok(())
                    }));
                }
            }
        }
        Ok(me)
    }
}

impl Drop for UserNf {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            if let Ok(Err(e)) = t.join() {
                eprintln!("braid deploy: NF thread in {} ended with an error: {e}", self.ns);
            }
        }
        let _ = sysctl_forwarding(&self.ns, Some(&self.forwarding_was));
    }
}
