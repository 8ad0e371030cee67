//! Packet buffers.
//!
//! A [`Packet`] owns one buffer of [`BUF_SIZE`] bytes and a window
//! `head..head+len` into it that holds the frame. Growing or shrinking the
//! frame at either end moves the window; payload bytes never move.
//!
//! Heap buffers are recycled through a per-thread free list: dropping a packet
//! returns its buffer to the pool of the thread that drops it, and
//! [`Packet::new`] takes from that pool first. No lock, no atomic, and a batch
//! can still be handed to another thread (the buffer simply ends up in that
//! thread's pool).
//!
//! External buffers ([`ExternalBuf`]) live in a memory region owned by an I/O
//! backend (a shared-memory channel, an AF_XDP UMEM). The backend hands out
//! exclusive slots and gets them back through [`BufferOwner::release`] when
//! the packet is dropped.

use std::cell::RefCell;
use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

/// Size of every packet buffer: a full 1500 B MTU frame plus VLAN tags,
/// headroom for encapsulation and tailroom for trailers such as timestamps.
pub const BUF_SIZE: usize = 2048;

/// Bytes kept free in front of a new packet so headers can be prepended.
pub const HEADROOM: usize = 128;

/// Buffers kept per thread; beyond this, dropped buffers go back to the
/// allocator.
const POOL_LIMIT: usize = 8192;

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

fn pool_take() -> Box<[u8]> {
    POOL.with(|p| p.borrow_mut().pop()).unwrap_or_else(|| vec![0u8; BUF_SIZE].into_boxed_slice())
}

fn pool_give(buf: Box<[u8]>) {
    // `try_with`: during thread teardown the pool may already be gone.
    let _ = POOL.try_with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < POOL_LIMIT {
            p.push(buf);
        }
    });
}

/// Number of free buffers in this thread's pool (for tests and stats).
pub fn pool_free_count() -> usize {
    POOL.with(|p| p.borrow().len())
}

/// Fill this thread's pool with `n` buffers ahead of time so the first
/// packets do not pay for allocation.
pub fn pool_prefill(n: usize) {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        while p.len() < n.min(POOL_LIMIT) {
            p.push(vec![0u8; BUF_SIZE].into_boxed_slice());
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

    /// A packet holding a copy of `frame`. Frames longer than the buffer's
    /// room after the headroom are truncated; use [`Packet::try_from_bytes`]
    /// to be told instead.
    pub fn from_bytes(frame: &[u8]) -> Packet {
        let n = frame.len().min(BUF_SIZE - HEADROOM);
        let mut p = Packet::new();
        p.storage.bytes_mut()[HEADROOM..HEADROOM + n].copy_from_slice(&frame[..n]);
        p.len = n as u32;
        p
    }

    /// A packet holding a copy of `frame`, or an error if it does not fit.
    pub fn try_from_bytes(frame: &[u8]) -> Result<Packet, NoRoom> {
        if frame.len() > BUF_SIZE - HEADROOM {
            return Err(NoRoom { wanted: frame.len(), available: BUF_SIZE - HEADROOM });
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
        let mut p = Packet::new();
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
        assert!(Packet::try_from_bytes(&[0u8; BUF_SIZE]).is_err());
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
