//! AF_XDP port: braid's own small AF_XDP layer on `libc`.
//!
//! One socket bound to one queue of one interface, with its own UMEM (an
//! anonymous mapping cut into [`FRAME_SIZE`] frames) and the four rings
//! (fill, completion, rx, tx; see `ring.rs`). By default the port also loads
//! braid's `steer` XDP program on the interface and registers itself in its
//! `xsks` map, so every frame arriving on that queue comes to the socket.
//!
//! Choices, all in [`AfXdpConfig`]:
//! * bind mode: zero-copy (driver support needed; veth has none), copy, or
//!   auto (zero-copy, falling back to copy);
//! * wait: `block` sleeps in `poll(2)`; `busy` never sleeps (the caller
//!   spins on `recv`) and asks for socket busy polling;
//! * rx buffers: frames are copied into pooled heap packets and the UMEM
//!   frame goes straight back to the fill ring (default), or, with
//!   `rx_zero_copy`, packets point into the UMEM ([`Packet::from_external`])
//!   and the frame returns to the fill ring when the packet is dropped. A
//!   zero-copy packet sent out of the port it came from is transmitted
//!   from the same frame without copying.
//!
//! Every wakeup uses `XDP_USE_NEED_WAKEUP`: the port only makes a system
//! call when the kernel asks for one (and in copy mode, transmit always
//! needs one).

mod ring;
mod umem;

use std::mem::{size_of, zeroed};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use braid_packet::{Batch, BufferOwner, ExternalBuf, Packet};

use crate::xdp::{AttachMode, XdpNf, XdpProgram};
use crate::{Port, PortError, PortStats};
use ring::Ring;
use umem::Umem;

/// Size of one UMEM frame by default (a page half; the kernel puts 256 B
/// of XDP headroom in front of received frames).
pub const FRAME_SIZE: u32 = 2048;

/// The largest UMEM frame (chunk) the kernel accepts in aligned mode: one
/// page. A frame longer than one chunk needs multi-buffer AF_XDP
/// (`XDP_USE_SG`, Linux 6.6), which braid does not implement.
pub const MAX_FRAME_SIZE: u32 = 4096;

/// XDP headroom the kernel keeps in front of a received frame in a chunk.
pub const XDP_HEADROOM: u32 = 256;

/// The largest MTU an AF_XDP port carries: a 4096-byte chunk less the XDP
/// headroom and the Ethernet overhead (3818 bytes).
pub const MAX_MTU: usize =
    (MAX_FRAME_SIZE - XDP_HEADROOM) as usize - braid_packet::buffer::L2_OVERHEAD;

/// Largest batch one call moves.
pub const MAX_BATCH: usize = 256;

/// How long `open` keeps retrying a bind that fails with EBUSY (the queue's
/// previous socket is still being released by the kernel).
pub const BIND_BUSY_WAIT: Duration = Duration::from_secs(1);

// Socket options from asm-generic/socket.h that libc does not export for
// every target.
const SO_BUSY_POLL: libc::c_int = 46;
const SO_PREFER_BUSY_POLL: libc::c_int = 69;
const SO_BUSY_POLL_BUDGET: libc::c_int = 70;

/// How the socket is bound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BindMode {
    /// `XDP_COPY`: works on every device (veth included).
    Copy,
    /// `XDP_ZEROCOPY`: the NIC DMAs into the UMEM; needs driver support.
    ZeroCopy,
    /// Zero-copy if the driver supports it, else copy.
    #[default]
    Auto,
}

/// How [`Port::wait`] waits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WaitMode {
    /// Never sleep: `wait` only kicks the kernel if it asked for it, and
    /// the socket prefers busy polling.
    Busy,
    /// Sleep in `poll(2)` until frames arrive or the timeout passes.
    #[default]
    Block,
}

/// How an AF_XDP port is set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AfXdpConfig {
    /// Interface name, in the namespace of the thread that opens the port.
    pub iface: String,
    /// Receive queue to bind to.
    pub queue: u32,
    /// Frames per `recv` call, 1..=[`MAX_BATCH`].
    pub batch_size: usize,
    pub mode: BindMode,
    pub wait: WaitMode,
    /// Entries in each ring (power of two).
    pub ring_size: u32,
    /// UMEM frames; at least `2 * ring_size` so the fill ring and transmit
    /// can both be kept busy.
    pub frame_count: u32,
    /// Largest IP packet carried (default 1500): sets the UMEM frame size,
    /// see [`AfXdpConfig::frame_size`]; at most [`MAX_MTU`].
    pub mtu: usize,
    /// Wrap UMEM frames as packets instead of copying them out.
    pub rx_zero_copy: bool,
    /// Load braid's `steer` XDP program on `iface` and register this
    /// socket in it. Turn off when another program (a chain that starts in
    /// the kernel) does the redirect; register the socket there with
    /// [`AfXdpPort::as_fd`].
    pub steer: bool,
}

impl AfXdpConfig {
    pub fn new(iface: &str) -> AfXdpConfig {
        AfXdpConfig {
            iface: iface.to_string(),
            queue: 0,
            batch_size: 32,
            mode: BindMode::Auto,
            wait: WaitMode::Block,
            ring_size: 2048,
            frame_count: 4096,
            mtu: braid_packet::DEFAULT_MTU,
            rx_zero_copy: false,
            steer: true,
        }
    }

    /// The UMEM frame size for IP packets of up to `mtu` bytes: 2048 up to
    /// MTU 1770, 4096 up to [`MAX_MTU`] (3818). Beyond, the kernel path
    /// limits it: one frame must hold the packet and 256 bytes of XDP
    /// headroom, and frames spanning several chunks need multi-buffer
    /// AF_XDP (`XDP_USE_SG`), which braid does not implement. (Native XDP
    /// on veth also refuses a program without multi-buffer support above
    /// about 3500 bytes of MTU.) Use AF_PACKET for jumbo frames.
    pub fn frame_size(&self) -> Result<u32, PortError> {
        let mtu = self.mtu;
        if mtu < 68 {
            return Err(PortError::Config(format!(
                "af_xdp {}: mtu {mtu} is below 68 (IPv4's minimum)",
                self.iface
            )));
        }
        let frame = braid_packet::frame_len_for_mtu(mtu) as u64 + XDP_HEADROOM as u64;
        match frame {
            f if f <= FRAME_SIZE as u64 => Ok(FRAME_SIZE),
            f if f <= MAX_FRAME_SIZE as u64 => Ok(MAX_FRAME_SIZE),
            _ => Err(PortError::Config(format!(
                "af_xdp {}: mtu {mtu} needs {frame}-byte UMEM frames, but AF_XDP without multi-buffer (XDP_USE_SG, not implemented by braid) holds a frame in one chunk of at most {MAX_FRAME_SIZE} bytes: mtu {MAX_MTU} at most; use af_packet for jumbo frames",
                self.iface
            ))),
        }
    }

    fn check(&self) -> Result<(), PortError> {
        let bad = |msg: String| Err(PortError::Config(format!("af_xdp {}: {msg}", self.iface)));
        if self.batch_size == 0 || self.batch_size > MAX_BATCH {
            return bad(format!("batch_size {} is out of range 1..={MAX_BATCH}", self.batch_size));
        }
        if !self.ring_size.is_power_of_two() || !(64..=16384).contains(&self.ring_size) {
            return bad(format!(
                "ring_size {} must be a power of two in 64..=16384",
                self.ring_size
            ));
        }
        self.frame_size()?;
        if self.frame_count < 2 * self.ring_size || self.frame_count > 1 << 20 {
            return bad(format!(
                "frame_count {} must be in 2*ring_size ({})..=1048576",
                self.frame_count,
                2 * self.ring_size
            ));
        }
        Ok(())
    }
}

/// Kernel counters of an AF_XDP socket (`XDP_STATISTICS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct XskStats {
    /// Frames dropped for reasons other than invalid descriptors (no
    /// room in the UMEM, the socket's receive path).
    pub rx_dropped: u64,
    /// Invalid descriptors the kernel found in the fill ring.
    pub rx_invalid_descs: u64,
    /// Invalid descriptors the kernel found in the transmit ring.
    pub tx_invalid_descs: u64,
    /// Frames dropped because the receive ring was full.
    pub rx_ring_full: u64,
    /// Times the kernel found the fill ring empty when a frame came.
    pub rx_fill_ring_empty_descs: u64,
    /// Times the kernel found the transmit ring empty when woken to send.
    pub tx_ring_empty_descs: u64,
}

/// The UMEM as seen by packets: owner of their frames, plus which frames
/// the port sent zero-copy (those come back through the completion ring,
/// not through `release`).
struct Frames {
    umem: Umem,
    in_tx: Vec<AtomicBool>,
}

impl BufferOwner for Frames {
    fn release(&self, slot: u32) {
        if let Some(flag) = self.in_tx.get(slot as usize) {
            if flag.load(Ordering::Relaxed) {
                return;
            }
        }
        self.umem.release(slot);
    }
}

/// A live port on one queue of one interface through an AF_XDP socket.
pub struct AfXdpPort {
    // Drop order matters: the program (which references the socket in its
    // map) first, then the rings, then the socket, then the UMEM (which
    // outlives the socket as long as zero-copy packets hold it).
    steer: Option<XdpProgram>,
    rx: Ring<libc::xdp_desc>,
    tx: Ring<libc::xdp_desc>,
    fill: Ring<u64>,
    comp: Ring<u64>,
    fd: OwnedFd,
    frames: Arc<Frames>,
    owner: Arc<dyn BufferOwner>,
    /// Frame indices owned by the port and unused.
    free: Vec<u32>,
    /// Frames kept back from the fill ring for transmit.
    tx_reserve: usize,
    /// The UMEM is shared with another port: surplus free frames go to the
    /// UMEM's shared list so the other port can use them.
    shared: bool,
    iface: String,
    queue: u32,
    batch_size: usize,
    wait: WaitMode,
    rx_zero_copy: bool,
    zero_copy_bound: bool,
    /// Frames sent straight from the UMEM frame they arrived in.
    tx_in_place: u64,
    stats: PortStats,
}

fn sockopt<T>(fd: RawFd, name: libc::c_int, value: &T, what: &str) -> Result<(), PortError> {
    // SAFETY: `value` points to a live T and its exact size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_XDP,
            name,
            value as *const T as *const libc::c_void,
            size_of::<T>() as u32,
        )
    };
    if rc != 0 {
        return Err(PortError::last_os(what.to_string()));
    }
    Ok(())
}

fn getsockopt<T>(fd: RawFd, name: libc::c_int, what: &str) -> Result<(T, usize), PortError> {
    // SAFETY: the XDP option structs are plain integers, valid when zeroed.
    let mut v: T = unsafe { zeroed() };
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: `v` has room for `len` bytes; the kernel writes at most that.
    let rc = unsafe {
        libc::getsockopt(fd, libc::SOL_XDP, name, &mut v as *mut T as *mut libc::c_void, &mut len)
    };
    if rc != 0 {
        return Err(PortError::last_os(what.to_string()));
    }
    Ok((v, len as usize))
}

impl AfXdpPort {
    /// Open a port as `cfg` says (in the calling thread's namespace).
    pub fn open(cfg: &AfXdpConfig) -> Result<AfXdpPort, PortError> {
        cfg.check()?;
        match cfg.mode {
            BindMode::Copy => Self::open_with(cfg, libc::XDP_COPY, None),
            BindMode::ZeroCopy => Self::open_with(cfg, libc::XDP_ZEROCOPY, None),
            BindMode::Auto => Self::open_with(cfg, libc::XDP_ZEROCOPY, None).or_else(|zc| {
                Self::open_with(cfg, libc::XDP_COPY, None).map_err(|copy| {
                    PortError::Config(format!(
                        "af_xdp {}: zero-copy bind failed ({zc}); copy bind failed ({copy})",
                        cfg.iface
                    ))
                })
            }),
        }
    }

    /// Open a port that shares `with`'s UMEM (`XDP_SHARED_UMEM`), on
    /// another interface or queue. A zero-copy rx packet received on one of
    /// the two ports and sent out of the other then leaves from the frame
    /// it arrived in: a user-space forwarder between two interfaces copies
    /// nothing. The bind mode is inherited from `with` (`cfg.mode` and
    /// `cfg.frame_count` are ignored); `with` hands over half of its free
    /// frames, and the two ports pass surplus frames to each other through
    /// the UMEM's shared list. Both must live in one process.
    pub fn open_shared(cfg: &AfXdpConfig, with: &mut AfXdpPort) -> Result<AfXdpPort, PortError> {
        cfg.check()?;
        let total = with.frames.umem.frame_count();
        let needed = 2 * (cfg.ring_size + with.fill.size());
        if total < needed {
            return Err(PortError::Config(format!(
                "af_xdp {}: sharing the UMEM of {} needs at least {needed} frames (2 x both ring sizes), it has {total}",
                cfg.iface, with.iface
            )));
        }
        let mut port = Self::open_with(cfg, libc::XDP_SHARED_UMEM, Some(with))?;
        port.shared = true;
        Ok(port)
    }

    fn open_with(
        cfg: &AfXdpConfig,
        bind_flag: u16,
        share: Option<&mut AfXdpPort>,
    ) -> Result<AfXdpPort, PortError> {
        let name = &cfg.iface;
        let ifindex =
            crate::netns::ifindex(name).map_err(|e| PortError::Config(format!("af_xdp: {e}")))?;
        // SAFETY: plain socket(2) call; the result is checked.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(PortError::last_os(format!("af_xdp {name}: socket(AF_XDP)")));
        }
        // SAFETY: `raw` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let s = fd.as_raw_fd();

        // Either a UMEM of our own, registered on this socket, or the one of
        // the port we share with (registered on its socket).
        let (frames, owner, free, shared_fd) = match share {
            None => {
                let umem = Umem::new(cfg.frame_size()?, cfg.frame_count)?;
                let reg = libc::xdp_umem_reg {
                    addr: umem.base().as_ptr() as u64,
                    len: umem.len() as u64,
                    chunk_size: umem.frame_size(),
                    headroom: 0,
                    flags: 0,
                    tx_metadata_len: 0,
                };
                sockopt(s, libc::XDP_UMEM_REG, &reg, &format!("af_xdp {name}: UMEM registration"))?;
                let frame_count = umem.frame_count();
                let frames = Arc::new(Frames {
                    umem,
                    in_tx: (0..frame_count).map(|_| AtomicBool::new(false)).collect(),
                });
                let owner: Arc<dyn BufferOwner> = frames.clone();
                (frames, owner, (0..frame_count).rev().collect::<Vec<u32>>(), None)
            }
            Some(with) => {
                with.reclaim();
                let half = with.free.len() / 2;
                let free = with.free.split_off(with.free.len() - half);
                with.shared = true;
                with.tx_reserve = (with.fill.size() / 2) as usize;
                (with.frames.clone(), with.owner.clone(), free, Some(with.fd.as_raw_fd() as u32))
            }
        };
        let rs = cfg.ring_size as libc::c_int;
        sockopt(s, libc::XDP_UMEM_FILL_RING, &rs, &format!("af_xdp {name}: fill ring size"))?;
        sockopt(
            s,
            libc::XDP_UMEM_COMPLETION_RING,
            &rs,
            &format!("af_xdp {name}: completion ring size"),
        )?;
        sockopt(s, libc::XDP_RX_RING, &rs, &format!("af_xdp {name}: rx ring size"))?;
        sockopt(s, libc::XDP_TX_RING, &rs, &format!("af_xdp {name}: tx ring size"))?;
        let (off, len): (libc::xdp_mmap_offsets, usize) =
            getsockopt(s, libc::XDP_MMAP_OFFSETS, &format!("af_xdp {name}: XDP_MMAP_OFFSETS"))?;
        if len != size_of::<libc::xdp_mmap_offsets>() {
            return Err(PortError::Config(format!(
                "af_xdp {name}: kernel too old (no ring flags in XDP_MMAP_OFFSETS; need Linux >= 5.4)"
            )));
        }
        let size = cfg.ring_size;
        let mut rx = Ring::map(s, &off.rx, size, libc::XDP_PGOFF_RX_RING as u64, "rx")?;
        let mut tx = Ring::map(s, &off.tx, size, libc::XDP_PGOFF_TX_RING as u64, "tx")?;
        let mut fill = Ring::map(s, &off.fr, size, libc::XDP_UMEM_PGOFF_FILL_RING, "fill")?;
        let mut comp =
            Ring::map(s, &off.cr, size, libc::XDP_UMEM_PGOFF_COMPLETION_RING, "completion")?;
        rx.sync_consumer();
        comp.sync_consumer();
        tx.sync_producer();
        fill.sync_producer();

        let tx_reserve = match shared_fd {
            Some(_) => (size / 2) as usize,
            None => (frames.umem.frame_count() - size) as usize,
        };
        let mut port = AfXdpPort {
            steer: None,
            rx,
            tx,
            fill,
            comp,
            fd,
            frames,
            owner,
            tx_reserve,
            free,
            shared: false,
            iface: name.clone(),
            queue: cfg.queue,
            batch_size: cfg.batch_size,
            wait: cfg.wait,
            rx_zero_copy: cfg.rx_zero_copy,
            zero_copy_bound: false,
            tx_in_place: 0,
            stats: PortStats { syscalls: Some(0), ..PortStats::default() },
        };
        port.refill();

        // SAFETY: all-zero sockaddr_xdp is valid; fields are set below.
        let mut sxdp: libc::sockaddr_xdp = unsafe { zeroed() };
        sxdp.sxdp_family = libc::AF_XDP as u16;
        match shared_fd {
            // A sharing socket may not name a mode or need-wakeup: it
            // inherits them from the socket that registered the UMEM.
            Some(fd) => {
                sxdp.sxdp_flags = libc::XDP_SHARED_UMEM;
                sxdp.sxdp_shared_umem_fd = fd;
            }
            None => sxdp.sxdp_flags = bind_flag | libc::XDP_USE_NEED_WAKEUP,
        }
        sxdp.sxdp_ifindex = ifindex;
        sxdp.sxdp_queue_id = cfg.queue;
        // After a socket on this queue closes, the kernel releases the
        // queue in deferred work, so a bind right after can see EBUSY for
        // a moment: retry that for a bounded time.
        let deadline = std::time::Instant::now() + BIND_BUSY_WAIT;
        loop {
            // SAFETY: `sxdp` is a valid sockaddr_xdp and its exact size is passed.
            let rc = unsafe {
                libc::bind(
                    s,
                    &sxdp as *const libc::sockaddr_xdp as *const libc::sockaddr,
                    size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
                )
            };
            if rc == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EBUSY) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            let mode = match bind_flag {
                libc::XDP_ZEROCOPY => "zero-copy",
                libc::XDP_SHARED_UMEM => "shared-UMEM",
                _ => "copy",
            };
            return Err(PortError::Os {
                what: format!("af_xdp {name}: bind to queue {} in {mode} mode", cfg.queue),
                source: err,
            });
        }
        let (opts, _): (libc::xdp_options, usize) =
            getsockopt(s, libc::XDP_OPTIONS, "XDP_OPTIONS")?;
        port.zero_copy_bound = opts.flags & libc::XDP_OPTIONS_ZEROCOPY != 0;

        if cfg.wait == WaitMode::Busy {
            // Best effort: devices without NAPI busy polling (veth) refuse
            // or ignore these, and the port spins either way.
            for (opt, v) in [
                (SO_PREFER_BUSY_POLL, 1),
                (SO_BUSY_POLL, 20),
                (SO_BUSY_POLL_BUDGET, cfg.batch_size as i32),
            ] {
                // SAFETY: `v` is a live i32 and its size is passed.
                unsafe {
                    libc::setsockopt(
                        s,
                        libc::SOL_SOCKET,
                        opt,
                        &v as *const i32 as *const libc::c_void,
                        4,
                    );
                }
            }
        }

        if cfg.steer {
            let mut prog = XdpProgram::load(XdpNf::Steer)
                .map_err(|e| PortError::Config(format!("af_xdp {name}: steering program: {e}")))?;
            prog.set_xsk(cfg.queue, port.fd.as_fd())
                .map_err(|e| PortError::Config(format!("af_xdp {name}: steering program: {e}")))?;
            prog.attach(name, AttachMode::Auto)
                .map_err(|e| PortError::Config(format!("af_xdp {name}: steering program: {e}")))?;
            port.steer = Some(prog);
        }
        Ok(port)
    }

    /// The socket, to register in another XDP program's xskmap.
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// True if the kernel bound the socket in zero-copy mode.
    pub fn is_zero_copy(&self) -> bool {
        self.zero_copy_bound
    }

    /// Frames transmitted from the UMEM frame they were received in
    /// (zero-copy rx packets sent back out of this port), without a copy.
    pub fn tx_in_place(&self) -> u64 {
        self.tx_in_place
    }

    /// The steering program this port attached, if any (for its counters).
    pub fn steer_program(&mut self) -> Option<&mut XdpProgram> {
        self.steer.as_mut()
    }

    /// The kernel's counters for this socket.
    pub fn xsk_stats(&self) -> Result<XskStats, PortError> {
        let (st, _): (libc::xdp_statistics, usize) = getsockopt(
            self.fd.as_raw_fd(),
            libc::XDP_STATISTICS,
            &format!("af_xdp {}: XDP_STATISTICS", self.iface),
        )?;
        Ok(XskStats {
            rx_dropped: st.rx_dropped,
            rx_invalid_descs: st.rx_invalid_descs,
            tx_invalid_descs: st.tx_invalid_descs,
            rx_ring_full: st.rx_ring_full,
            rx_fill_ring_empty_descs: st.rx_fill_ring_empty_descs,
            tx_ring_empty_descs: st.tx_ring_empty_descs,
        })
    }

    /// Give returned and spare frames to the kernel through the fill ring.
    fn refill(&mut self) {
        self.frames.umem.take_returned(&mut self.free);
        let spare = self.free.len().saturating_sub(self.tx_reserve) as u32;
        if spare == 0 {
            return;
        }
        let n = self.fill.free(spare).min(spare);
        let fs = self.frames.umem.frame_size() as u64;
        for i in 0..n {
            let idx = self.free.pop().expect("n <= spare <= free.len()");
            self.fill.write(i, idx as u64 * fs);
        }
        if n > 0 {
            self.fill.submit(n);
        }
    }

    /// Take back frames the kernel finished transmitting.
    fn reclaim(&mut self) {
        let n = self.comp.available(self.comp.size());
        let fs = self.frames.umem.frame_size() as u64;
        for i in 0..n {
            let idx = (self.comp.read(i) / fs) as u32;
            if let Some(flag) = self.frames.in_tx.get(idx as usize) {
                flag.store(false, Ordering::Relaxed);
                self.free.push(idx);
            }
        }
        if n > 0 {
            self.comp.release(n);
        }
        if self.shared {
            // Frames flow from the receiving port to the transmitting one;
            // hand the surplus back so the receiver's fill ring never runs
            // dry.
            let keep = self.tx_reserve + self.fill.size() as usize / 2;
            if self.free.len() > keep {
                let mut surplus = self.free.split_off(keep);
                self.frames.umem.release_all(&mut surplus);
            }
        }
    }

    /// Ask the kernel to transmit (copy mode needs this for every batch;
    /// zero-copy only when the ring says so).
    fn kick_tx(&mut self) -> Result<(), PortError> {
        // Copy mode sends a bounded number of frames per call; a few calls
        // drain a full batch.
        for _ in 0..8 {
            if self.tx.outstanding() == 0 || (self.zero_copy_bound && !self.tx.needs_wakeup()) {
                return Ok(());
            }
            self.stats.count_syscall();
            // SAFETY: a zero-length sendto on our socket; no buffers.
            let rc = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    std::ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null(),
                    0,
                )
            };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) | Some(libc::EBUSY) | Some(libc::ENOBUFS)
                    | Some(libc::EINTR) => {}
                    _ => {
                        return Err(PortError::Os {
                            what: format!("af_xdp {}: transmit wakeup", self.iface),
                            source: e,
                        })
                    }
                }
            }
        }
        Ok(())
    }

    /// Wake the kernel up to process the fill ring, if it asked.
    fn kick_fill(&mut self) {
        if self.fill.needs_wakeup() {
            self.stats.count_syscall();
            // SAFETY: a zero-length non-blocking recvfrom; no buffers.
            unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    std::ptr::null_mut(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            };
        }
    }

    fn poll(&self, events: i16, timeout: Duration) -> Result<(), PortError> {
        let mut pfd = [libc::pollfd { fd: self.fd.as_raw_fd(), events, revents: 0 }];
        let rc = crate::sleep::ppoll(&mut pfd, timeout);
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(PortError::Os {
                    what: format!("af_xdp {}: poll", self.iface),
                    source: e,
                });
            }
        }
        Ok(())
    }
}

impl Port for AfXdpPort {
    fn name(&self) -> String {
        format!("af_xdp:{}/q{}", self.iface, self.queue)
    }

    fn recv(&mut self, batch: &mut Batch, max: usize) -> Result<usize, PortError> {
        let want = max.min(self.batch_size) as u32;
        if want == 0 {
            return Ok(0);
        }
        let n = self.rx.available(want);
        if n == 0 {
            self.refill();
            self.kick_fill();
            return Ok(0);
        }
        let now = braid_packet::clock::monotonic_ns();
        let fs = self.frames.umem.frame_size() as u64;
        let mut delivered = 0;
        for i in 0..n {
            let d = self.rx.read(i);
            let idx = (d.addr / fs) as u32;
            let head = (d.addr % fs) as u32;
            if idx >= self.frames.umem.frame_count() || head as u64 + d.len as u64 > fs {
                // A descriptor outside our UMEM: the frame is not ours to
                // recycle; count it and skip.
                self.stats.rx_dropped += 1;
                continue;
            }
            let pkt = if self.rx_zero_copy {
                // SAFETY: the frame came off the rx ring, so it is ours
                // until released; the Arc in the ExternalBuf keeps the
                // UMEM mapped while the packet lives.
                let buf = unsafe {
                    ExternalBuf::new(
                        self.frames.umem.frame_ptr(idx),
                        fs as u32,
                        idx,
                        self.owner.clone(),
                    )
                };
                match Packet::from_external(buf, head, d.len) {
                    Ok(p) => p,
                    Err(_buf) => {
                        // Dropping `_buf` returns the frame.
                        self.stats.rx_dropped += 1;
                        continue;
                    }
                }
            } else {
                let p = self.frames.umem.range(d.addr, d.len as usize).and_then(|ptr| {
                    // SAFETY: in bounds (checked by `range`); the frame came
                    // off the rx ring and is ours until it goes back on the
                    // fill ring below.
                    let bytes = unsafe { std::slice::from_raw_parts(ptr, d.len as usize) };
                    Packet::try_from_bytes(bytes).ok()
                });
                self.free.push(idx);
                match p {
                    Some(p) => p,
                    None => {
                        self.stats.rx_dropped += 1;
                        continue;
                    }
                }
            };
            let mut pkt = pkt;
            pkt.meta.rx_ns = now;
            self.stats.rx_packets += 1;
            self.stats.rx_bytes += d.len as u64;
            batch.push(pkt);
            delivered += 1;
        }
        self.rx.release(n);
        self.refill();
        Ok(delivered)
    }

    fn send(&mut self, batch: &mut Batch) -> Result<usize, PortError> {
        if batch.is_empty() {
            return Ok(0);
        }
        self.reclaim();
        let mut room = self.tx.free(batch.len() as u32) as usize;
        if room < batch.len() {
            self.kick_tx()?;
            self.reclaim();
            room = self.tx.free(batch.len() as u32) as usize;
        }
        let fs = self.frames.umem.frame_size() as u64;
        let mut written = 0u32;
        let mut bytes = 0u64;
        for p in batch.drain() {
            if written as usize >= room {
                self.stats.tx_dropped += 1;
                continue;
            }
            let len = p.len();
            let desc = if p.is_external() {
                match p.into_external() {
                    Ok((buf, head, plen)) if Arc::ptr_eq(buf.owner(), &self.owner) => {
                        // Same UMEM: transmit from the frame itself. Mark it
                        // so dropping the handle does not recycle it; the
                        // completion ring gives it back.
                        let idx = buf.slot();
                        self.frames.in_tx[idx as usize].store(true, Ordering::Relaxed);
                        drop(buf);
                        self.tx_in_place += 1;
                        libc::xdp_desc {
                            addr: idx as u64 * fs + head as u64,
                            len: plen,
                            options: 0,
                        }
                    }
                    Ok((buf, head, plen)) => {
                        // Another region: copy, then let the packet go.
                        let p = Packet::from_external(buf, head, plen).map_err(|_| {
                            PortError::Format(format!(
                                "af_xdp {}: invalid external packet window",
                                self.iface
                            ))
                        })?;
                        match self.copy_to_frame(&p) {
                            Some(d) => d,
                            None => {
                                self.stats.tx_dropped += 1;
                                continue;
                            }
                        }
                    }
                    Err(p) => match self.copy_to_frame(&p) {
                        Some(d) => d,
                        None => {
                            self.stats.tx_dropped += 1;
                            continue;
                        }
                    },
                }
            } else {
                match self.copy_to_frame(&p) {
                    Some(d) => d,
                    None => {
                        self.stats.tx_dropped += 1;
                        continue;
                    }
                }
            };
            self.tx.write(written, desc);
            written += 1;
            bytes += len as u64;
        }
        if written > 0 {
            self.tx.submit(written);
            self.stats.tx_packets += written as u64;
            self.stats.tx_bytes += bytes;
            self.kick_tx()?;
        }
        Ok(written as usize)
    }

    fn flush(&mut self) -> Result<(), PortError> {
        self.kick_tx()?;
        self.reclaim();
        Ok(())
    }

    fn wait(&mut self, timeout: Duration) -> Result<(), PortError> {
        self.refill();
        match self.wait {
            WaitMode::Busy => {
                self.kick_fill();
                Ok(())
            }
            WaitMode::Block => {
                if self.rx.available(1) > 0 {
                    return Ok(());
                }
                self.poll(libc::POLLIN, timeout)
            }
        }
    }

    fn prepare_wait(&mut self, fds: &mut Vec<RawFd>) -> crate::WaitReadiness {
        self.refill();
        if self.rx.available(1) > 0 {
            return crate::WaitReadiness::Ready;
        }
        if self.wait == WaitMode::Busy {
            // A busy port keeps the kernel's fill ring fed and never sleeps.
            self.kick_fill();
            return crate::WaitReadiness::Ready;
        }
        fds.push(self.as_fd().as_raw_fd());
        crate::WaitReadiness::Descriptors
    }

    fn stats(&self) -> PortStats {
        let mut s = self.stats;
        if let Ok(k) = self.xsk_stats() {
            s.rx_dropped += k.rx_dropped + k.rx_ring_full;
            s.xsk = Some(k);
        }
        s
    }
}

impl Drop for AfXdpPort {
    fn drop(&mut self) {
        // Take the socket out of the steering map first: the map's
        // reference would otherwise keep the socket bound to the queue
        // until the kernel frees the map in deferred work, and a new port
        // on the same queue would get EBUSY. The fields drop afterwards in
        // declaration order (program, rings, socket, UMEM).
        if let Some(prog) = self.steer.as_mut() {
            let _ = prog.unset_xsk(self.queue);
        }
    }
}

impl AfXdpPort {
    /// Copy `p` into a free frame; None if no frame is free or it does
    /// not fit.
    fn copy_to_frame(&mut self, p: &Packet) -> Option<libc::xdp_desc> {
        let data = p.data();
        if data.len() > self.frames.umem.frame_size() as usize {
            return None;
        }
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.reclaim();
                self.frames.umem.take_returned(&mut self.free);
                self.free.pop()?
            }
        };
        let fs = self.frames.umem.frame_size() as u64;
        let addr = idx as u64 * fs;
        let Some(dst) = self.frames.umem.range(addr, data.len()) else {
            self.free.push(idx);
            return None;
        };
        // SAFETY: in bounds (checked by `range`); `idx` came off our free
        // list, so nobody else (kernel or packet) uses that frame, and it
        // cannot overlap `data`, which lives in another frame or the heap.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
        self.frames.in_tx[idx as usize].store(true, Ordering::Relaxed);
        Some(libc::xdp_desc { addr, len: data.len() as u32, options: 0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_checked() {
        let mut c = AfXdpConfig::new("lo");
        c.batch_size = 0;
        assert!(AfXdpPort::open(&c).err().unwrap().to_string().contains("batch_size 0"));
        let mut c = AfXdpConfig::new("lo");
        c.ring_size = 1000;
        assert!(AfXdpPort::open(&c).err().unwrap().to_string().contains("power of two"));
        let mut c = AfXdpConfig::new("lo");
        c.frame_count = 100;
        assert!(AfXdpPort::open(&c).err().unwrap().to_string().contains("frame_count"));
        let c = AfXdpConfig::new("braidnosuch0");
        assert!(AfXdpPort::open(&c).err().unwrap().to_string().contains("braidnosuch0"));
    }
}
