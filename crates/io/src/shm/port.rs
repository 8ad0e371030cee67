//! [`ShmPort`]: a [`Port`] over a shared-memory channel to another process.
//!
//! One side listens on a Unix socket path and creates a fresh region for
//! every peer that connects ([`ShmPort::listen`]); the other connects
//! ([`ShmPort::connect`]). Received packets are [`Packet`]s over the slots
//! of the region (no copy); dropping one gives its slot back (see
//! [`super::pool`]). Sending a packet that already lives in this channel's
//! region passes only its descriptor; other packets are copied once into a
//! free slot. [`ShmPort::alloc`] hands out empty packets in free slots, so a
//! generator can build frames in place.
//!
//! When the peer process dies its control socket reaches EOF: the next call
//! that notices returns [`PortError::Disconnected`] (naming the peer's pid
//! and how many slots it held), the channel is dropped (the region is
//! unmapped once the packets this side still holds are gone) and the port
//! keeps working: a listening port accepts the next peer, a connecting port
//! reports [`Port::at_end`].

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use braid_packet::{Batch, BufferOwner, ExternalBuf, Packet, HEADROOM};

use super::control::{self, Hello};
use super::layout::{self, Header, Layout};
use super::pool::{Released, SlotBook};
use super::region::Region;
use super::ring::{Consumer, Desc, Producer, RingCorrupt};
use crate::{Port, PortError, PortStats};

/// Channel parameters chosen by the listening side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShmConfig {
    /// Packet slots in the region (power of two; half per side).
    pub slots: u32,
    /// Bytes per slot (multiple of 64).
    pub slot_size: u32,
    /// Back the region with huge pages if the kernel has them.
    pub hugepages: bool,
}

impl Default for ShmConfig {
    fn default() -> Self {
        ShmConfig { slots: 4096, slot_size: braid_packet::BUF_SIZE as u32, hugepages: false }
    }
}

impl ShmConfig {
    /// The default configuration with slots large enough for IP packets of
    /// up to `mtu` bytes: ordinary 2048-byte slots up to 1500, jumbo ones
    /// ([`braid_packet::JUMBO_BUF_SIZE`], 9472 bytes) above.
    pub fn for_mtu(mtu: usize) -> ShmConfig {
        let slot_size = if mtu <= braid_packet::DEFAULT_MTU {
            braid_packet::BUF_SIZE
        } else {
            braid_packet::JUMBO_BUF_SIZE
        };
        ShmConfig { slot_size: slot_size as u32, ..ShmConfig::default() }
    }
}

/// Empty polls between two checks of the control socket.
const PEER_CHECK_EVERY: u32 = 256;

/// State shared between the port and the packets it handed out.
struct Shared {
    region: Arc<Region>,
    layout: Layout,
    side: u8,
    state: Mutex<SharedState>,
    /// Set for a slot whose handle is dropped right after its descriptor
    /// was sent: its release is then a no-op that needs no lock (the
    /// common case on every send, so worth a flag per slot).
    sent: Vec<AtomicBool>,
}

struct SharedState {
    book: SlotBook,
    ret_tx: Producer,
    /// False once the peer is gone: slots are then no longer returned.
    live: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, SharedState> {
        // A panic while holding the lock leaves the book consistent (every
        // update is a single step), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn header(&self) -> &Header {
        // SAFETY: offset 0 of a region at least `layout.total` bytes long,
        // page aligned; Header is all atomics.
        unsafe { &*(self.region.base() as *const Header) }
    }

    fn sleeping(&self, side: u8) -> &AtomicU32 {
        &self.header().sleeping[side as usize & 1].0
    }

    /// Address of slot `slot`; the caller has checked `slot < slots`.
    #[inline]
    fn slot_ptr(&self, slot: u32) -> NonNull<u8> {
        debug_assert!(slot < self.layout.slots);
        // SAFETY: slot < slots, so the slot lies inside the region (layout
        // checked against the region size when the channel was built).
        let p = unsafe { self.region.base().add(self.layout.slot_off(slot)) };
        NonNull::new(p).unwrap_or(NonNull::dangling())
    }
}

impl BufferOwner for Shared {
    fn release(&self, slot: u32) {
        if self.sent.get(slot as usize).is_some_and(|f| f.swap(false, Ordering::Relaxed)) {
            return;
        }
        let mut st = self.lock();
        if st.book.release(slot) == Released::Return && st.live {
            // The return ring holds every slot, so an honest consumer never
            // leaves it full; if a hostile one did, the slot stays with us.
            if st.ret_tx.push(Desc { slot, ..Desc::default() }) == Ok(true) {
                st.ret_tx.publish();
            }
        }
    }
}

/// One connected channel.
struct Channel {
    shared: Arc<Shared>,
    owner: Arc<dyn BufferOwner>,
    data_tx: Producer,
    data_rx: Consumer,
    ret_rx: Consumer,
    ctrl: UnixStream,
    wake_self: OwnedFd,
    wake_peer: OwnedFd,
    peer_pid: Option<i32>,
}

impl Channel {
    fn build(
        region: Region,
        layout: Layout,
        side: u8,
        ctrl: UnixStream,
        wake: [OwnedFd; 2],
    ) -> Result<Channel, PortError> {
        let region = Arc::new(region);
        let peer = 1 - side;
        let [w0, w1] = wake;
        let (wake_self, wake_peer) = if side == 0 { (w0, w1) } else { (w1, w0) };
        let shared = Arc::new(Shared {
            sent: (0..layout.slots).map(|_| AtomicBool::new(false)).collect(),
            layout,
            side,
            state: Mutex::new(SharedState {
                book: SlotBook::new(side, layout.slots),
                ret_tx: Producer::new(&region, &layout, layout::return_ring(peer))?,
                live: true,
            }),
            region: region.clone(),
        });
        let owner: Arc<dyn BufferOwner> = shared.clone();
        Ok(Channel {
            data_tx: Producer::new(&region, &layout, layout::data_ring(side))?,
            data_rx: Consumer::new(&region, &layout, layout::data_ring(peer))?,
            ret_rx: Consumer::new(&region, &layout, layout::return_ring(side))?,
            peer_pid: control::peer_pid(&ctrl),
            shared,
            owner,
            ctrl,
            wake_self,
            wake_peer,
        })
    }

    /// Creator side: make the region, send it to the peer.
    fn serve(ctrl: UnixStream, cfg: &ShmConfig) -> Result<Channel, PortError> {
        let layout = Layout::new(cfg.slots, cfg.slot_size)?;
        let region = Region::create("braid-shm", layout.total, cfg.hugepages)?;
        // SAFETY: the fresh region is at least HEADER_BYTES long and no one
        // else has it yet; Header is all atomics.
        let hdr = unsafe { &*(region.base() as *const Header) };
        hdr.version.store(layout::VERSION, Ordering::Relaxed);
        hdr.slots.store(layout.slots, Ordering::Relaxed);
        hdr.slot_size.store(layout.slot_size, Ordering::Relaxed);
        hdr.ring_cap.store(layout.ring_cap, Ordering::Relaxed);
        hdr.magic.store(layout::MAGIC, Ordering::Release);
        let wake = [control::eventfd()?, control::eventfd()?];
        let hello = Hello {
            slots: layout.slots,
            slot_size: layout.slot_size,
            region_len: region.len() as u64,
        };
        ctrl.set_nonblocking(false).map_err(|e| PortError::Os {
            what: "make the shm control socket blocking".into(),
            source: e,
        })?;
        control::send_hello(
            &ctrl,
            &hello,
            &[region.fd().as_raw_fd(), wake[0].as_raw_fd(), wake[1].as_raw_fd()],
        )?;
        Channel::build(region, layout, 0, ctrl, wake)
    }

    /// Joining side: receive the region and check it.
    fn join(ctrl: UnixStream, timeout: Duration) -> Result<Channel, PortError> {
        let (hello, fds) = control::recv_hello(&ctrl, timeout)?;
        let layout = Layout::new(hello.slots, hello.slot_size)?;
        let mut fds = fds.into_iter();
        let (Some(memfd), Some(w0), Some(w1)) = (fds.next(), fds.next(), fds.next()) else {
            return Err(PortError::Format("shm hello without its descriptors".into()));
        };
        let region = Region::open(memfd, layout.total)?;
        // SAFETY: Region::open checked the mapping holds `layout.total >=
        // HEADER_BYTES` bytes; Header is all atomics.
        let hdr = unsafe { &*(region.base() as *const Header) };
        let seen = (
            hdr.magic.load(Ordering::Acquire),
            hdr.slots.load(Ordering::Relaxed),
            hdr.slot_size.load(Ordering::Relaxed),
        );
        if seen != (layout::MAGIC, layout.slots, layout.slot_size) {
            return Err(PortError::Format(format!(
                "shm region header {seen:?} disagrees with the hello ({} slots of {} B)",
                layout.slots, layout.slot_size
            )));
        }
        Channel::build(region, layout, 1, ctrl, [w0, w1])
    }

    fn recv_into(
        &mut self,
        batch: &mut Batch,
        max: usize,
        stats: &mut PortStats,
        refused: &mut u64,
    ) -> Result<usize, RingCorrupt> {
        let shared = &*self.shared;
        let slot_size = shared.layout.slot_size;
        let mut st = shared.lock();
        *refused += drain_returns(&mut self.ret_rx, &mut st)?;
        let mut n = 0;
        let mut bytes = 0u64;
        while n < max {
            let Some(d) = self.data_rx.pop()? else { break };
            if st.book.accept_data(d.slot).is_err() {
                stats.rx_dropped += 1;
                *refused += 1;
                continue;
            }
            if d.off as u32 + d.len as u32 > slot_size {
                // The slot is ours now; give it straight back.
                stats.rx_dropped += 1;
                *refused += 1;
                if st.book.release(d.slot) == Released::Return
                    && st.ret_tx.push(Desc { slot: d.slot, ..Desc::default() }) == Ok(true)
                {
                    st.ret_tx.publish();
                }
                continue;
            }
            // SAFETY: the book just gave this side exclusive ownership of the
            // slot (the peer no longer owns it), the slot is `slot_size`
            // bytes inside the region, and `self.owner` keeps the region
            // mapped while the packet lives; the slot is released exactly
            // once, by ExternalBuf's Drop.
            let ext = unsafe {
                ExternalBuf::new(shared.slot_ptr(d.slot), slot_size, d.slot, self.owner.clone())
            };
            match Packet::from_external(ext, d.off as u32, d.len as u32) {
                Ok(mut p) => {
                    p.meta.rx_ns = d.rx_ns;
                    bytes += d.len as u64;
                    batch.push(p);
                    n += 1;
                }
                Err(ext) => {
                    // Checked above; unreachable in practice. Release after
                    // unlocking (release takes the lock).
                    drop(st);
                    drop(ext);
                    st = shared.lock();
                }
            }
        }
        self.data_rx.release();
        drop(st);
        stats.rx_packets += n as u64;
        stats.rx_bytes += bytes;
        Ok(n)
    }

    fn send_from(
        &mut self,
        batch: &mut Batch,
        stats: &mut PortStats,
        refused: &mut u64,
        sent_on: &mut Vec<ExternalBuf>,
    ) -> Result<usize, RingCorrupt> {
        let shared = self.shared.clone();
        let slot_size = shared.layout.slot_size as usize;
        let mut room = self.data_tx.room()? as usize;
        let mut st = shared.lock();
        if st.book.free_count() < batch.len() {
            *refused += drain_returns(&mut self.ret_rx, &mut st)?;
        }
        let mut sent = 0;
        let mut dropped: Vec<Packet> = Vec::new();
        for p in batch.drain() {
            if room == 0 {
                dropped.push(p);
                continue;
            }
            let rx_ns = p.meta.rx_ns;
            // A packet in one of this channel's slots is passed on by
            // descriptor; any other packet is copied into a free slot.
            let p = match p.into_external() {
                Ok((ext, head, len))
                    if std::ptr::addr_eq(Arc::as_ptr(ext.owner()), Arc::as_ptr(&self.owner)) =>
                {
                    let slot = ext.slot();
                    let given = st.book.give(slot);
                    // Dropped after unlocking; release() then sees the flag
                    // (or finds the slot no longer ours) and does nothing.
                    if given {
                        shared.sent[slot as usize].store(true, Ordering::Relaxed);
                    }
                    sent_on.push(ext);
                    if given {
                        self.data_tx.push(Desc {
                            slot,
                            off: head as u16,
                            len: len as u16,
                            rx_ns,
                        })?;
                        room -= 1;
                        sent += 1;
                        stats.tx_packets += 1;
                        stats.tx_bytes += len as u64;
                    } else {
                        // Not ours any more (cannot happen with one port
                        // thread); never send a slot we do not own.
                        stats.tx_dropped += 1;
                    }
                    continue;
                }
                Ok((ext, head, len)) => match Packet::from_external(ext, head, len) {
                    Ok(p) => p,
                    Err(ext) => {
                        sent_on.push(ext);
                        continue;
                    }
                },
                Err(p) => p,
            };
            let len = p.len();
            let off = if len + HEADROOM <= slot_size { HEADROOM } else { 0 };
            let slot = match (len <= slot_size).then(|| st.book.take_free()).flatten() {
                Some(s) => s,
                None => {
                    dropped.push(p);
                    continue;
                }
            };
            // SAFETY: the slot came from this side's free list, so no one
            // else reads or writes it; off + len <= slot_size keeps the copy
            // inside the slot; the source is a distinct buffer.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    p.data().as_ptr(),
                    shared.slot_ptr(slot).as_ptr().add(off),
                    len,
                );
            }
            st.book.give(slot);
            let d = Desc { slot, off: off as u16, len: len as u16, rx_ns };
            // Room was checked, so this push succeeds.
            self.data_tx.push(d)?;
            room -= 1;
            sent += 1;
            stats.tx_packets += 1;
            stats.tx_bytes += d.len as u64;
        }
        self.data_tx.publish();
        drop(st);
        sent_on.clear();
        stats.tx_dropped += dropped.len() as u64;
        drop(dropped);
        // Wake the peer if it sleeps. The SeqCst fence pairs with the one in
        // `wait`: either the peer sees our publish, or we see its flag.
        fence(Ordering::SeqCst);
        if sent > 0 && shared.sleeping(1 - shared.side).load(Ordering::Relaxed) != 0 {
            control::notify(&self.wake_peer);
            stats.count_syscall();
        }
        Ok(sent)
    }

    fn alloc(
        &mut self,
        batch: &mut Batch,
        n: usize,
        refused: &mut u64,
    ) -> Result<usize, RingCorrupt> {
        let shared = &*self.shared;
        let mut st = shared.lock();
        if st.book.free_count() < n {
            *refused += drain_returns(&mut self.ret_rx, &mut st)?;
        }
        let mut got = 0;
        while got < n {
            let Some(slot) = st.book.take_free() else { break };
            // SAFETY: a free home slot is exclusively ours until released;
            // see recv_into for the rest of the contract.
            let ext = unsafe {
                ExternalBuf::new(
                    shared.slot_ptr(slot),
                    shared.layout.slot_size,
                    slot,
                    self.owner.clone(),
                )
            };
            match Packet::from_external(ext, HEADROOM as u32, 0) {
                Ok(p) => batch.push(p),
                Err(ext) => {
                    drop(st);
                    drop(ext);
                    return Ok(got);
                }
            }
            got += 1;
        }
        Ok(got)
    }
}

/// Take back the slots the peer returned; returns how many claims were
/// refused.
fn drain_returns(ret_rx: &mut Consumer, st: &mut SharedState) -> Result<u64, RingCorrupt> {
    let mut refused = 0;
    while let Some(d) = ret_rx.pop()? {
        if st.book.accept_return(d.slot).is_err() {
            refused += 1;
        }
    }
    ret_rx.release();
    Ok(refused)
}

/// A shared-memory port. See the module documentation.
pub struct ShmPort {
    name: String,
    listener: Option<(UnixListener, ShmConfig, PathBuf)>,
    chan: Option<Channel>,
    stats: PortStats,
    refused: u64,
    reclaimed: u64,
    disconnects: u64,
    ended: bool,
    idle_polls: u32,
    sent_on: Vec<ExternalBuf>,
}

impl ShmPort {
    fn new(
        name: String,
        listener: Option<(UnixListener, ShmConfig, PathBuf)>,
        chan: Option<Channel>,
    ) -> ShmPort {
        ShmPort {
            name,
            listener,
            chan,
            // Counted: eventfd writes and reads, peer checks, accepts.
            stats: PortStats { syscalls: Some(0), ..PortStats::default() },
            refused: 0,
            reclaimed: 0,
            disconnects: 0,
            ended: false,
            idle_polls: 0,
            sent_on: Vec::new(),
        }
    }

    /// Listen on `path` (a stale socket file there is replaced). No peer is
    /// connected yet: `recv` returns 0 until one connects (see
    /// [`ShmPort::accept`] to wait for it).
    pub fn listen(path: impl AsRef<Path>, cfg: ShmConfig) -> Result<ShmPort, PortError> {
        let path = path.as_ref().to_path_buf();
        Layout::new(cfg.slots, cfg.slot_size)?;
        // Replace a stale socket left by a process that was killed, but
        // never a live one and never a file that is not a socket.
        use std::os::unix::fs::FileTypeExt;
        let is_socket = std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_socket());
        if is_socket && UnixStream::connect(&path).is_err() {
            let _ = std::fs::remove_file(&path);
        }
        let l = UnixListener::bind(&path).map_err(|e| PortError::Os {
            what: format!("bind shm socket {}", path.display()),
            source: e,
        })?;
        l.set_nonblocking(true).map_err(|e| PortError::Os {
            what: format!("set {} non-blocking", path.display()),
            source: e,
        })?;
        Ok(ShmPort::new(format!("shm:{}", path.display()), Some((l, cfg, path)), None))
    }

    /// Connect to a listening port at `path`, retrying until `timeout` (the
    /// listener may not be up yet).
    pub fn connect(path: impl AsRef<Path>, timeout: Duration) -> Result<ShmPort, PortError> {
        let path = path.as_ref();
        let deadline = Instant::now() + timeout;
        let ctrl = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(PortError::Os {
                        what: format!("connect to shm socket {}", path.display()),
                        source: e,
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        let chan = Channel::join(ctrl, deadline.saturating_duration_since(Instant::now()))?;
        Ok(ShmPort::new(format!("shm:{}#1", path.display()), None, Some(chan)))
    }

    /// Two connected ports in this process (over a socket pair): the same
    /// data path as between processes, for threads and tests.
    pub fn pair(cfg: ShmConfig) -> Result<(ShmPort, ShmPort), PortError> {
        let (a, b) = UnixStream::pair()
            .map_err(|e| PortError::Os { what: "socketpair for shm".into(), source: e })?;
        let ca = Channel::serve(a, &cfg)?;
        let cb = Channel::join(b, Duration::from_secs(1))?;
        Ok((
            ShmPort::new("shm:pair#0".into(), None, Some(ca)),
            ShmPort::new("shm:pair#1".into(), None, Some(cb)),
        ))
    }

    /// Wait up to `timeout` for a peer to connect (listening ports only).
    /// Returns whether a peer is connected.
    pub fn accept(&mut self, timeout: Duration) -> Result<bool, PortError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.chan.is_some() {
                return Ok(true);
            }
            self.try_accept()?;
            if self.chan.is_some() || Instant::now() >= deadline {
                return Ok(self.chan.is_some());
            }
            if let Some((l, _, _)) = &self.listener {
                control::poll_readable(
                    &[l.as_raw_fd()],
                    deadline.saturating_duration_since(Instant::now()),
                )?;
            } else {
                return Ok(false);
            }
        }
    }

    fn try_accept(&mut self) -> Result<(), PortError> {
        let Some((l, cfg, path)) = &self.listener else { return Ok(()) };
        match l.accept() {
            Ok((s, _)) => {
                self.chan = Some(Channel::serve(s, cfg)?);
                self.ended = false;
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(PortError::Os {
                what: format!("accept on shm socket {}", path.display()),
                source: e,
            }),
        }
    }

    /// True while a peer is connected.
    pub fn is_connected(&self) -> bool {
        self.chan.is_some()
    }

    /// The pid of the connected peer process.
    pub fn peer_pid(&self) -> Option<i32> {
        self.chan.as_ref().and_then(|c| c.peer_pid)
    }

    /// Append up to `n` empty packets in free slots of the region (headroom
    /// [`HEADROOM`], length 0); returns how many. Sending them passes only
    /// descriptors.
    /// With no free slot left, this also checks (now and then) that the peer
    /// is still alive, and reports it if not.
    pub fn alloc(&mut self, batch: &mut Batch, n: usize) -> Result<usize, PortError> {
        let Some(c) = self.chan.as_mut() else {
            self.check_peer()?;
            return Ok(0);
        };
        match c.alloc(batch, n, &mut self.refused) {
            Ok(0) if n > 0 => {
                self.check_peer()?;
                Ok(0)
            }
            Ok(got) => Ok(got),
            Err(e) => Err(self.disconnect(&format!("broke the protocol ({e})"))),
        }
    }

    /// Free slots this side can still fill.
    pub fn free_slots(&self) -> usize {
        self.chan.as_ref().map_or(0, |c| c.shared.lock().book.free_count())
    }

    /// Packets `send` can take right now without dropping any: free slots
    /// after taking back what the peer returned. A forwarder receives from
    /// its input only while its output has room, so a slow consumer slows
    /// the producer down instead of losing packets. With no peer connected
    /// there is nothing to wait for: `usize::MAX`.
    pub fn tx_room(&mut self) -> usize {
        let Some(c) = self.chan.as_mut() else { return usize::MAX };
        let mut st = c.shared.lock();
        if let Ok(r) = drain_returns(&mut c.ret_rx, &mut st) {
            self.refused += r;
        }
        st.book.free_count()
    }

    /// Descriptors and returned slots from the peer that failed validation.
    pub fn refused_descriptors(&self) -> u64 {
        self.refused
    }

    /// Slots the peers that disconnected were holding (reclaimed with their
    /// region).
    pub fn reclaimed_slots(&self) -> u64 {
        self.reclaimed
    }

    /// Peers that went away so far.
    pub fn disconnects(&self) -> u64 {
        self.disconnects
    }

    /// True if `ptr..ptr+len` lies inside the current channel's region.
    pub fn region_contains(&self, ptr: *const u8, len: usize) -> bool {
        self.chan.as_ref().is_some_and(|c| c.shared.region.contains(ptr, len))
    }

    /// The current region's size and whether it sits on huge pages.
    pub fn region_info(&self) -> Option<(usize, bool)> {
        self.chan.as_ref().map(|c| (c.shared.region.len(), c.shared.region.is_hugepage()))
    }

    fn check_peer(&mut self) -> Result<(), PortError> {
        self.idle_polls = self.idle_polls.wrapping_add(1);
        if !self.idle_polls.is_multiple_of(PEER_CHECK_EVERY) {
            return Ok(());
        }
        self.stats.count_syscall();
        match &self.chan {
            Some(c) if control::peer_closed(&c.ctrl) => {
                Err(self.disconnect("closed its control socket"))
            }
            Some(_) => Ok(()),
            None => self.try_accept(),
        }
    }

    fn disconnect(&mut self, why: &str) -> PortError {
        let Some(c) = self.chan.take() else {
            return PortError::Disconnected(format!("{}: no peer", self.name));
        };
        let held = {
            let mut st = c.shared.lock();
            st.live = false;
            st.book.held_by_peer()
        };
        self.reclaimed += held as u64;
        self.disconnects += 1;
        if self.listener.is_none() {
            self.ended = true;
        }
        control::shutdown(&c.ctrl);
        let pid = c.peer_pid.map_or("?".to_string(), |p| p.to_string());
        PortError::Disconnected(format!(
            "{}: peer pid {pid} {why}; reclaimed the {held} slots it held",
            self.name
        ))
    }
}

/// Block until any of `ports` may have packets (or a peer connects or
/// leaves), or `timeout` passes: the multi-port form of [`Port::wait`], for a
/// process that serves several shared-memory ports from one thread.
pub fn wait_any(ports: &mut [ShmPort], timeout: Duration) -> Result<(), PortError> {
    let mut fds: Vec<RawFd> = Vec::new();
    let mut ready = false;
    for p in ports.iter_mut() {
        match p.chan.as_mut() {
            Some(c) => {
                c.shared.sleeping(c.shared.side).store(1, Ordering::Relaxed);
                fds.push(c.wake_self.as_raw_fd());
                fds.push(c.ctrl.as_raw_fd());
            }
            None => {
                if let Some((l, _, _)) = &p.listener {
                    fds.push(l.as_raw_fd());
                }
            }
        }
    }
    // Pairs with the fence in `send_from`: either the sender sees our flag
    // and writes the eventfd, or we see its packets here.
    fence(Ordering::SeqCst);
    for p in ports.iter_mut() {
        if let Some(c) = p.chan.as_mut() {
            ready |= c.data_rx.available().map(|n| n > 0).unwrap_or(true);
        }
    }
    if !ready {
        control::poll_readable(&fds, timeout)?;
    }
    for p in ports.iter_mut() {
        if let Some(c) = p.chan.as_mut() {
            control::drain(&c.wake_self);
            c.shared.sleeping(c.shared.side).store(0, Ordering::Relaxed);
        }
        // Let the next recv look at the control socket at once.
        p.idle_polls = PEER_CHECK_EVERY - 1;
    }
    Ok(())
}

impl Port for ShmPort {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn recv(&mut self, batch: &mut Batch, max: usize) -> Result<usize, PortError> {
        let Some(c) = self.chan.as_mut() else {
            self.check_peer()?;
            return Ok(0);
        };
        match c.recv_into(batch, max, &mut self.stats, &mut self.refused) {
            Ok(0) => {
                self.check_peer()?;
                Ok(0)
            }
            Ok(n) => Ok(n),
            Err(e) => Err(self.disconnect(&format!("broke the protocol ({e})"))),
        }
    }

    fn send(&mut self, batch: &mut Batch) -> Result<usize, PortError> {
        let Some(c) = self.chan.as_mut() else {
            self.stats.tx_dropped += batch.len() as u64;
            batch.clear();
            self.check_peer()?;
            return Ok(0);
        };
        let want = batch.len();
        match c.send_from(batch, &mut self.stats, &mut self.refused, &mut self.sent_on) {
            Ok(n) => {
                if n < want {
                    self.check_peer()?;
                }
                Ok(n)
            }
            Err(e) => {
                self.sent_on.clear();
                Err(self.disconnect(&format!("broke the protocol ({e})")))
            }
        }
    }

    fn wait(&mut self, timeout: Duration) -> Result<(), PortError> {
        let Some(c) = self.chan.as_mut() else {
            if let Some((l, _, _)) = &self.listener {
                control::poll_readable(&[l.as_raw_fd()], timeout)?;
            }
            return Ok(());
        };
        let flag = c.shared.sleeping(c.shared.side);
        flag.store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let ready = c.data_rx.available().map(|n| n > 0).unwrap_or(true);
        if !ready {
            let fds: [RawFd; 2] = [c.wake_self.as_raw_fd(), c.ctrl.as_raw_fd()];
            control::poll_readable(&fds, timeout)?;
            control::drain(&c.wake_self);
            // poll, the eventfd read.
            self.stats.count_syscall();
            self.stats.count_syscall();
        }
        flag.store(0, Ordering::Relaxed);
        self.stats.count_syscall();
        // A wake-up by the control socket means the peer left or wrote.
        if control::peer_closed(&c.ctrl) {
            return Err(self.disconnect("closed its control socket"));
        }
        Ok(())
    }

    fn at_end(&self) -> bool {
        self.ended
    }

    fn tx_room(&mut self) -> usize {
        ShmPort::tx_room(self)
    }

    fn prepare_wait(&mut self, fds: &mut Vec<RawFd>) -> crate::WaitReadiness {
        match self.chan.as_mut() {
            Some(c) => {
                c.shared.sleeping(c.shared.side).store(1, Ordering::Relaxed);
                // Pairs with the fence in `send_from`: either the sender sees
                // our flag and writes the eventfd, or we see its packets here.
                fence(Ordering::SeqCst);
                if c.data_rx.available().map(|n| n > 0).unwrap_or(true) {
                    return crate::WaitReadiness::Ready;
                }
                fds.push(c.wake_self.as_raw_fd());
                fds.push(c.ctrl.as_raw_fd());
            }
            None => {
                if let Some((l, _, _)) = &self.listener {
                    fds.push(l.as_raw_fd());
                }
            }
        }
        crate::WaitReadiness::Descriptors
    }

    fn finish_wait(&mut self) {
        if let Some(c) = self.chan.as_mut() {
            control::drain(&c.wake_self);
            self.stats.count_syscall();
            c.shared.sleeping(c.shared.side).store(0, Ordering::Relaxed);
        }
    }

    fn stats(&self) -> PortStats {
        self.stats
    }
}

impl Drop for ShmPort {
    fn drop(&mut self) {
        if let Some((_, _, path)) = &self.listener {
            let _ = std::fs::remove_file(path);
        }
    }
}
