//! Packet buffers.
//!
//! A [`Packet`] owns one buffer of [`BUF_SIZE`] bytes and a window
//! `head..head+len` into it that holds the frame. Growing or shrinking the
//! frame at either end moves the window; payload bytes never move.
//!
//! Heap buffers are recycled through a two-level pool (Bonwick's magazines
//! and depot): each thread keeps a free list of its own, with no lock and no
//! atomic on the per-packet path; when it grows past two magazines of
//! [`MAGAZINE`] buffers, one full magazine moves to a global depot, and a
//! thread whose list runs empty takes a full magazine from there before it
//! allocates. This matters for pipelines: a producer thread allocates and a
//! consumer thread drops, so without the depot every buffer would pile up in
//! the consumer's list while the producer allocated (and zeroed) a new one
//! per packet. The depot's lock is taken once per [`MAGAZINE`] packets.
//!
//! External buffers ([`ExternalBuf`]) live in a memory region owned by an I/O
//! backend (a shared-memory channel, an AF_XDP UMEM). The backend hands out
//! exclusive slots and gets them back through [`BufferOwner::release`] when
//! the packet is dropped.

use std::cell::RefCell;
use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Size of every packet buffer: a full 1500 B MTU frame plus VLAN tags,
/// headroom for encapsulation and tailroom for trailers such as timestamps.
pub const BUF_SIZE: usize = 2048;

/// Bytes kept free in front of a new packet so headers can be prepended.
pub const HEADROOM: usize = 128;

/// The largest MTU braid carries (jumbo frames): IP packets up to 9000
/// bytes.
pub const MAX_MTU: usize = 9000;

/// The standard Ethernet MTU, the default everywhere.
pub const DEFAULT_MTU: usize = 1500;

/// Bytes an Ethernet frame needs beyond its MTU: the header (14) and two
/// VLAN tags (8).
pub const L2_OVERHEAD: usize = 22;

/// The longest frame a buffer may hold: [`MAX_MTU`] plus [`L2_OVERHEAD`],
/// rounded up (a 9216-byte "jumbo" frame, what switches usually accept).
pub const MAX_FRAME: usize = 9216;

/// Size of a jumbo buffer: [`HEADROOM`], [`MAX_FRAME`], and tailroom as in
/// an ordinary buffer (128 bytes). Taken only for frames that do not fit an
/// ordinary [`BUF_SIZE`] buffer, from a pool of their own.
pub const JUMBO_BUF_SIZE: usize = HEADROOM + MAX_FRAME + 128;

/// The longest frame of an interface with MTU `mtu`: `mtu` plus
/// [`L2_OVERHEAD`].
pub const fn frame_len_for_mtu(mtu: usize) -> usize {
    mtu + L2_OVERHEAD
}

/// Free jumbo buffers a thread keeps (about 600 KB).
const JUMBO_POOL: usize = 64;

/// Buffers moved between a thread's free list and the depot at a time.
pub const MAGAZINE: usize = 256;

/// Full magazines the depot keeps (32 MiB of buffers); beyond this, spilled
/// buffers go back to the allocator.
const DEPOT_LIMIT: usize = 64;

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
    static JUMBO: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// Full magazines shared by all threads.
static DEPOT: Mutex<Vec<Vec<Box<[u8]>>>> = Mutex::new(Vec::new());

fn depot() -> std::sync::MutexGuard<'static, Vec<Vec<Box<[u8]>>>> {
    // A thread that panicked while holding the lock left a valid Vec behind.
    DEPOT.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Buffers taken from the allocator so far, by all threads (slow path only).
static ALLOCATED: AtomicU64 = AtomicU64::new(0);

fn new_buffer() -> Box<[u8]> {
    ALLOCATED.fetch_add(1, Ordering::Relaxed);
    vec![0u8; BUF_SIZE].into_boxed_slice()
}

/// Buffers taken from the allocator since the process started: a pool that
/// works keeps this flat while packets flow.
pub fn buffers_allocated() -> u64 {
    ALLOCATED.load(Ordering::Relaxed)
}

fn pool_take() -> Box<[u8]> {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.is_empty() {
            if let Some(full) = depot().pop() {
                *p = full;
            }
        }
        p.pop()
    })
    .unwrap_or_else(new_buffer)
}

fn jumbo_take() -> Box<[u8]> {
    JUMBO.with(|p| p.borrow_mut().pop()).unwrap_or_else(|| {
        ALLOCATED.fetch_add(1, Ordering::Relaxed);
        vec![0u8; JUMBO_BUF_SIZE].into_boxed_slice()
    })
}

#[inline]
fn pool_give(buf: Box<[u8]>) {
    if buf.len() != BUF_SIZE {
        return give_other(buf);
    }
    // `try_with`: during thread teardown the pool may already be gone.
    let _ = POOL.try_with(|p| {
        let mut p = p.borrow_mut();
        p.push(buf);
        if p.len() >= 2 * MAGAZINE {
            let at = p.len() - MAGAZINE;
            let full = p.split_off(at);
            let mut d = depot();
            if d.len() < DEPOT_LIMIT {
                d.push(full);
            }
        }
    });
}

/// A buffer that is not an ordinary one: a jumbo buffer goes to its own
/// small pool, anything else (an empty box) to the allocator. Out of line
/// and cold so that the ordinary path of every packet's drop stays as
/// short as it was before jumbo buffers existed (callgrind: 6 instructions
/// per packet more when this was inline).
#[cold]
#[inline(never)]
fn give_other(buf: Box<[u8]>) {
    if buf.len() == JUMBO_BUF_SIZE {
        let _ = JUMBO.try_with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < JUMBO_POOL {
                p.push(buf);
            }
        });
    }
}

/// Number of free buffers in this thread's own list (for tests and stats).
pub fn pool_free_count() -> usize {
    POOL.with(|p| p.borrow().len())
}

/// Number of full magazines in the shared depot (for tests and stats).
pub fn depot_magazines() -> usize {
    depot().len()
}

/// Fill this thread's list with up to `n` buffers (at most two magazines'
/// worth) ahead of time so the first packets do not pay for allocation.
pub fn pool_prefill(n: usize) {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        while p.len() < n.min(2 * MAGAZINE - 1) {
            p.push(new_buffer());
        }
    });
}

/// Per-packet metadata that travels with the frame through a chain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// Receive time in nanoseconds (monotonic clock of the receiving host),
    /// 0 when unknown.
    pub rx_ns: u64,
    /// Index of the port the packet arrived on.
    pub in_port: u16,
    /// Free-form mark an NF may set for a later one (e.g. the meter's color).
    pub mark: u8,
    /// Index of the port the packet should leave on, chosen by a switching
    /// NF (`l2switch`); 0 unless an NF sets it. A switch floods by cloning
    /// the packet once per egress port, so this is always one port.
    pub out_port: u16,
}

/// The owner of an external buffer region.
pub trait BufferOwner: Send + Sync {
    /// Called exactly once per slot when the packet holding it is dropped.
    fn release(&self, slot: u32);
}

/// A slot in a region owned by an I/O backend.
pub struct ExternalBuf {
    ptr: NonNull<u8>,
    cap: u32,
    slot: u32,
    owner: Arc<dyn BufferOwner>,
}

impl ExternalBuf {
    /// Wrap a slot of an external region.
    ///
    /// # Safety
    ///
    /// `ptr..ptr+cap` must be valid for reads and writes for as long as this
    /// value (or the packet that holds it) lives, and nothing else may access
    /// those bytes until `owner.release(slot)` is called.
    pub unsafe fn new(ptr: NonNull<u8>, cap: u32, slot: u32, owner: Arc<dyn BufferOwner>) -> Self {
        ExternalBuf { ptr, cap, slot, owner }
    }

    /// The slot index inside the owner's region.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// The owner of the region this slot lives in.
    pub fn owner(&self) -> &Arc<dyn BufferOwner> {
        &self.owner
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `new`'s contract: the slot is valid and exclusively ours.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.cap as usize) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and `&mut self` makes this the only borrow.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.cap as usize) }
    }
}

impl Drop for ExternalBuf {
    fn drop(&mut self) {
        self.owner.release(self.slot);
    }
}

// SAFETY: an ExternalBuf is the exclusive handle to its slot (see `new`), so
// moving it to another thread moves that exclusivity with it; the owner is
// `Send + Sync`.
unsafe impl Send for ExternalBuf {}

enum Storage {
    Heap(Box<[u8]>),
    External(ExternalBuf),
}

impl Storage {
    #[inline]
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Heap(b) => b,
            Storage::External(e) => e.bytes(),
        }
    }
    #[inline]
    fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Storage::Heap(b) => b,
            Storage::External(e) => e.bytes_mut(),
        }
    }
}

/// Not enough head- or tailroom for the requested change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("packet buffer has no room: wanted {wanted} more bytes, {available} available")]
pub struct NoRoom {
    pub wanted: usize,
    pub available: usize,
}

/// One frame in a packet buffer.
pub struct Packet {
    storage: Storage,
    head: u32,
    len: u32,
    /// Metadata carried with the frame.
    pub meta: Meta,
}

impl Packet {
    /// An empty packet with [`HEADROOM`] bytes of headroom, from the pool.
    pub fn new() -> Packet {
        Packet {
            storage: Storage::Heap(pool_take()),
            head: HEADROOM as u32,
            len: 0,
            meta: Meta::default(),
        }
    }

    /// An empty packet in a jumbo buffer ([`JUMBO_BUF_SIZE`] bytes, room
    /// for a [`MAX_FRAME`]-byte frame after [`HEADROOM`]).
    #[cold]
    #[inline(never)]
    pub fn new_jumbo() -> Packet {
        Packet {
            storage: Storage::Heap(jumbo_take()),
            head: HEADROOM as u32,
            len: 0,
            meta: Meta::default(),
        }
    }

    /// An empty packet with room for a frame of `len` bytes after
    /// [`HEADROOM`]: an ordinary buffer when it fits one, else a jumbo one.
    pub fn with_room(len: usize) -> Packet {
        if len <= BUF_SIZE - HEADROOM {
            Packet::new()
        } else {
            Packet::new_jumbo()
        }
    }

    /// A packet holding a copy of `frame` (in a jumbo buffer if it does
    /// not fit an ordinary one). Frames longer than [`MAX_FRAME`] are
    /// truncated; use [`Packet::try_from_bytes`] to be told instead.
    #[inline]
    pub fn from_bytes(frame: &[u8]) -> Packet {
        let n = frame.len();
        if n > BUF_SIZE - HEADROOM {
            return Packet::from_bytes_jumbo(frame);
        }
        let mut p = Packet::new();
        p.storage.bytes_mut()[HEADROOM..HEADROOM + n].copy_from_slice(frame);
        p.len = n as u32;
        p
    }

    /// [`Packet::from_bytes`] of a frame that needs a jumbo buffer: out of
    /// line so the ordinary path is one compare (every generated packet
    /// takes it).
    #[cold]
    #[inline(never)]
    fn from_bytes_jumbo(frame: &[u8]) -> Packet {
        let n = frame.len().min(MAX_FRAME);
        let mut p = Packet::with_room(n);
        p.storage.bytes_mut()[HEADROOM..HEADROOM + n].copy_from_slice(&frame[..n]);
        p.len = n as u32;
        p
    }

    /// A packet holding a copy of `frame`, or an error if it is longer
    /// than [`MAX_FRAME`].
    pub fn try_from_bytes(frame: &[u8]) -> Result<Packet, NoRoom> {
        if frame.len() > MAX_FRAME {
            return Err(NoRoom { wanted: frame.len(), available: MAX_FRAME });
        }
        Ok(Packet::from_bytes(frame))
    }

    /// A packet over an external buffer whose frame is `head..head+len`.
    ///
    /// Returns the buffer back (so the caller can release it) if the window
    /// does not fit in the buffer.
    pub fn from_external(buf: ExternalBuf, head: u32, len: u32) -> Result<Packet, ExternalBuf> {
        if head as u64 + len as u64 > buf.cap as u64 {
            return Err(buf);
        }
        Ok(Packet { storage: Storage::External(buf), head, len, meta: Meta::default() })
    }

    /// The external buffer behind this packet, with the frame window, if it
    /// has one; a heap packet is returned unchanged.
    pub fn into_external(self) -> Result<(ExternalBuf, u32, u32), Packet> {
        let this = std::mem::ManuallyDrop::new(self);
        if !matches!(this.storage, Storage::External(_)) {
            return Err(std::mem::ManuallyDrop::into_inner(this));
        }
        let (head, len) = (this.head, this.len);
        // SAFETY: `this` is ManuallyDrop and never used again after the
        // storage is moved out, so the storage is dropped exactly once (by
        // the caller, through the returned value). This is plain Rust
        // ownership juggling, no kernel boundary: it avoids a placeholder
        // storage variant.
        let storage = unsafe { std::ptr::read(&this.storage) };
        match storage {
            Storage::External(e) => Ok((e, head, len)),
            Storage::Heap(_) => unreachable!("checked above"),
        }
    }

    /// An identity of the buffer behind this packet (its address), stable
    /// while the packet lives and unique among live packets: how a capture
    /// of drops tells which packets of a batch an NF removed. A buffer freed
    /// and taken again by a new packet gets the same identity.
    pub fn buffer_id(&self) -> usize {
        self.storage.bytes().as_ptr() as usize
    }

    /// True if the bytes live in an external region.
    pub fn is_external(&self) -> bool {
        matches!(self.storage, Storage::External(_))
    }

    /// The frame bytes.
    #[inline]
    pub fn data(&self) -> &[u8] {
        let (h, l) = (self.head as usize, self.len as usize);
        &self.storage.bytes()[h..h + l]
    }

    /// The frame bytes, writable.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        let (h, l) = (self.head as usize, self.len as usize);
        &mut self.storage.bytes_mut()[h..h + l]
    }

    /// Frame length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// True for a zero-length frame.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Total buffer size.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.storage.bytes().len()
    }

    /// Free bytes in front of the frame.
    #[inline]
    pub fn headroom(&self) -> usize {
        self.head as usize
    }

    /// Free bytes after the frame.
    #[inline]
    pub fn tailroom(&self) -> usize {
        self.capacity() - self.head as usize - self.len as usize
    }

    /// Grow the frame by `n` bytes at the front and return the new bytes
    /// (their content is unspecified).
    pub fn push_front(&mut self, n: usize) -> Result<&mut [u8], NoRoom> {
        if n > self.headroom() {
            return Err(NoRoom { wanted: n, available: self.headroom() });
        }
        self.head -= n as u32;
        self.len += n as u32;
        Ok(&mut self.data_mut()[..n])
    }

    /// Remove `n` bytes from the front (e.g. strip a header). Removing more
    /// than the frame holds is an error and changes nothing.
    pub fn pull_front(&mut self, n: usize) -> Result<(), NoRoom> {
        if n > self.len() {
            return Err(NoRoom { wanted: n, available: self.len() });
        }
        self.head += n as u32;
        self.len -= n as u32;
        Ok(())
    }

    /// Grow the frame by `n` bytes at the end and return the new bytes
    /// (their content is unspecified).
    pub fn push_back(&mut self, n: usize) -> Result<&mut [u8], NoRoom> {
        if n > self.tailroom() {
            return Err(NoRoom { wanted: n, available: self.tailroom() });
        }
        let old = self.len();
        self.len += n as u32;
        Ok(&mut self.data_mut()[old..])
    }

    /// Append a copy of `bytes` at the end.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) -> Result<(), NoRoom> {
        self.push_back(bytes.len())?.copy_from_slice(bytes);
        Ok(())
    }

    /// Shorten the frame to `len` bytes (no effect if it is shorter).
    pub fn truncate(&mut self, len: usize) {
        if len < self.len() {
            self.len = len as u32;
        }
    }

    /// Set the frame length, growing into the tailroom or shrinking.
    pub fn set_len(&mut self, len: usize) -> Result<(), NoRoom> {
        if len > self.capacity() - self.head as usize {
            return Err(NoRoom { wanted: len, available: self.capacity() - self.head as usize });
        }
        self.len = len as u32;
        Ok(())
    }

    /// Replace the frame with a copy of `frame`, keeping the buffer and
    /// resetting the headroom. Used by benchmarks and generators to refill a
    /// packet without allocating.
    pub fn reset_from(&mut self, frame: &[u8]) -> Result<(), NoRoom> {
        let head = HEADROOM.min(self.capacity().saturating_sub(frame.len()));
        if head + frame.len() > self.capacity() {
            return Err(NoRoom { wanted: frame.len(), available: self.capacity() - head });
        }
        self.storage.bytes_mut()[head..head + frame.len()].copy_from_slice(frame);
        self.head = head as u32;
        self.len = frame.len() as u32;
        Ok(())
    }
}

impl Default for Packet {
    fn default() -> Self {
        Packet::new()
    }
}

impl Clone for Packet {
    /// A deep copy into a fresh heap buffer (also for external packets).
    fn clone(&self) -> Packet {
        let mut p = Packet::with_room(self.len());
        let head = self.head.min(HEADROOM as u32) as usize;
        let _ = p.set_len(0);
        p.head = head as u32;
        p.storage.bytes_mut()[head..head + self.len()].copy_from_slice(self.data());
        p.len = self.len;
        p.meta = self.meta;
        p
    }
}

impl Drop for Packet {
    fn drop(&mut self) {
        if let Storage::Heap(b) = &mut self.storage {
            pool_give(std::mem::take(b));
        }
        // External storage releases its slot in ExternalBuf's Drop.
    }
}

impl fmt::Debug for Packet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Packet")
            .field("len", &self.len)
            .field("headroom", &self.head)
            .field("external", &self.is_external())
            .field("meta", &self.meta)
            .finish()
    }
}

impl PartialEq for Packet {
    fn eq(&self, other: &Packet) -> bool {
        self.data() == other.data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn push_pull_keep_payload_in_place() {
        let mut p = Packet::from_bytes(b"payload");
        p.push_front(2).unwrap().copy_from_slice(b"hd");
        assert_eq!(p.data(), b"hdpayload");
        p.pull_front(2).unwrap();
        assert_eq!(p.data(), b"payload");
        p.extend_from_slice(b"!!").unwrap();
        assert_eq!(p.data(), b"payload!!");
        p.truncate(3);
        assert_eq!(p.data(), b"pay");
    }

    #[test]
    fn room_errors_change_nothing() {
        let mut p = Packet::from_bytes(b"abc");
        assert!(p.push_front(HEADROOM + 1).is_err());
        assert!(p.pull_front(4).is_err());
        assert!(p.push_back(BUF_SIZE).is_err());
        assert_eq!(p.data(), b"abc");
        assert!(Packet::try_from_bytes(&[0u8; MAX_FRAME + 1]).is_err());
    }

    #[test]
    fn jumbo_frames_get_jumbo_buffers_and_keep_every_byte() {
        let frame: Vec<u8> = (0..9022u32).map(|i| (i % 251) as u8).collect();
        let p = Packet::from_bytes(&frame);
        assert_eq!(p.data(), &frame[..]);
        assert_eq!(p.capacity(), JUMBO_BUF_SIZE);
        assert_eq!(p.headroom(), HEADROOM);
        let c = p.clone();
        assert_eq!(c.data(), &frame[..]);
        assert_eq!(Packet::from_bytes(&frame[..1500]).capacity(), BUF_SIZE);
        // At most MAX_FRAME: longer is cut by from_bytes, refused by try_.
        let long = vec![7u8; MAX_FRAME + 10];
        assert_eq!(Packet::from_bytes(&long).len(), MAX_FRAME);
        assert_eq!(
            Packet::try_from_bytes(&long).unwrap_err(),
            NoRoom { wanted: MAX_FRAME + 10, available: MAX_FRAME }
        );
        assert!(frame_len_for_mtu(MAX_MTU) <= MAX_FRAME);
        // A dropped jumbo buffer is reused (this thread's jumbo pool).
        let id = c.buffer_id();
        drop((p, c));
        assert_eq!(Packet::new_jumbo().buffer_id(), id);
    }

    #[test]
    fn buffers_are_recycled() {
        let p = Packet::from_bytes(b"x");
        let before = pool_free_count();
        drop(p);
        assert_eq!(pool_free_count(), before + 1);
        let _q = Packet::new();
        assert_eq!(pool_free_count(), before);
    }

    #[test]
    fn a_producer_thread_is_fed_by_what_a_consumer_thread_drops() {
        // Producer here, consumer on another thread: the consumer's spills
        // reach the producer through the depot instead of the allocator.
        let (tx, rx) = std::sync::mpsc::channel::<Vec<Packet>>();
        let consumer = std::thread::spawn(move || {
            for batch in rx {
                drop(batch);
            }
        });
        let before = buffers_allocated();
        for _ in 0..40 {
            let batch: Vec<Packet> = (0..MAGAZINE / 4).map(|_| Packet::new()).collect();
            tx.send(batch).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        drop(tx);
        consumer.join().unwrap();
        // 40 * 64 = 2560 packets. Without the depot every one would be a
        // new allocation; with it, the consumer spills a magazine once it
        // holds 512 and the producer takes it back. (Other tests running in
        // parallel allocate too, hence the slack.)
        let allocated = buffers_allocated() - before;
        assert!(allocated < 2000, "{allocated} buffers allocated for 2560 packets");
    }

    struct Region {
        mem: Vec<u8>,
        released: AtomicU32,
    }
    impl BufferOwner for Region {
        fn release(&self, _slot: u32) {
            self.released.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn external_buffers_are_released_once() {
        let mut region = Arc::new(Region { mem: vec![0u8; 256], released: AtomicU32::new(0) });
        let ptr = NonNull::new(Arc::get_mut(&mut region).unwrap().mem.as_mut_ptr()).unwrap();
        let owner: Arc<dyn BufferOwner> = region.clone();
        // SAFETY: the region outlives the packet and nothing else touches it.
        let ext = unsafe { ExternalBuf::new(ptr, 256, 7, owner) };
        let mut p = Packet::from_external(ext, 16, 4).ok().unwrap();
        p.data_mut().copy_from_slice(b"abcd");
        let copy = p.clone();
        assert!(!copy.is_external());
        let (ext, head, len) = p.into_external().ok().unwrap();
        assert_eq!((ext.slot(), head, len), (7, 16, 4));
        assert_eq!(region.released.load(Ordering::Relaxed), 0);
        drop(ext);
        assert_eq!(region.released.load(Ordering::Relaxed), 1);
        assert_eq!(copy.data(), b"abcd");
    }
}
