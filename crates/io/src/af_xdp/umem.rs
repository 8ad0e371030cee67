//! The UMEM: one anonymous mapping split into equal frames that the kernel
//! and the port pass back and forth by address.
//!
//! The mapping is owned by an `Arc<Umem>` that is also the
//! [`BufferOwner`] of packets received in zero-copy mode: a packet that
//! still points into the UMEM keeps it mapped even after the port closed,
//! and dropping such a packet puts its frame on the `returned` list, from
//! which the port refills the fill ring.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use braid_packet::BufferOwner;

use crate::PortError;

pub(crate) struct Umem {
    base: NonNull<u8>,
    len: usize,
    frame_size: u32,
    frame_count: u32,
    /// Frames released by dropped zero-copy packets, by frame index.
    returned: Mutex<Vec<u32>>,
    /// Length of `returned`, readable without the lock: the port polls it
    /// on every spin and only locks when there is something to take.
    returned_len: AtomicU32,
}

// SAFETY: the mapping is plain memory; which frames may be touched by whom
// is decided by frame ownership (kernel rings, packets, the port's free
// list), never by thread identity. `returned` is behind a mutex.
unsafe impl Send for Umem {}
// SAFETY: as above; shared access only reads `base`/sizes or locks `returned`.
unsafe impl Sync for Umem {}

impl Umem {
    pub(crate) fn new(frame_size: u32, frame_count: u32) -> Result<Umem, PortError> {
        let len = frame_size as usize * frame_count as usize;
        // SAFETY: an anonymous private mapping; checked against MAP_FAILED
        // and unmapped in Drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(PortError::last_os(format!("mmap of a {len} B AF_XDP UMEM")));
        }
        Ok(Umem {
            // SAFETY: mmap succeeded, so `p` is not null.
            base: unsafe { NonNull::new_unchecked(p as *mut u8) },
            len,
            frame_size,
            frame_count,
            returned: Mutex::new(Vec::with_capacity(frame_count as usize)),
            returned_len: AtomicU32::new(0),
        })
    }

    pub(crate) fn base(&self) -> NonNull<u8> {
        self.base
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn frame_size(&self) -> u32 {
        self.frame_size
    }

    pub(crate) fn frame_count(&self) -> u32 {
        self.frame_count
    }

    /// Pointer to frame `index` (its first byte).
    pub(crate) fn frame_ptr(&self, index: u32) -> NonNull<u8> {
        debug_assert!(index < self.frame_count);
        // SAFETY: `index < frame_count`, so the offset stays inside the mapping.
        unsafe {
            NonNull::new_unchecked(
                self.base.as_ptr().add(index as usize * self.frame_size as usize),
            )
        }
    }

    /// Pointer to `len` bytes at UMEM address `addr`, or None if that
    /// range is not inside the UMEM. Whoever dereferences it must own the
    /// frame (it came off the rx ring or the free list and was not handed
    /// back).
    pub(crate) fn range(&self, addr: u64, len: usize) -> Option<*mut u8> {
        let end = addr.checked_add(len as u64)?;
        if end > self.len as u64 {
            return None;
        }
        // SAFETY: bounds checked above, so the offset stays in the mapping.
        Some(unsafe { self.base.as_ptr().add(addr as usize) })
    }

    /// Take the frames returned by dropped packets, appending them to `out`.
    pub(crate) fn take_returned(&self, out: &mut Vec<u32>) {
        if self.returned_len.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut r = self.returned.lock().unwrap_or_else(|e| e.into_inner());
        self.returned_len.fetch_sub(r.len() as u32, Ordering::Release);
        out.append(&mut r);
    }
}

impl Umem {
    /// Put every frame of `frames` on the shared list (one lock), leaving
    /// `frames` empty.
    pub(crate) fn release_all(&self, frames: &mut Vec<u32>) {
        if frames.is_empty() {
            return;
        }
        let mut r = self.returned.lock().unwrap_or_else(|e| e.into_inner());
        self.returned_len.fetch_add(frames.len() as u32, Ordering::Release);
        r.append(frames);
    }
}

impl BufferOwner for Umem {
    fn release(&self, slot: u32) {
        let mut r = self.returned.lock().unwrap_or_else(|e| e.into_inner());
        r.push(slot);
        // Under the lock, so the count never runs behind a taker's view.
        self.returned_len.fetch_add(1, Ordering::Release);
    }
}

impl Drop for Umem {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly our mapping; the last Arc is gone, so
        // no packet and no socket refers to it any more (the socket holds
        // an Arc until it is closed).
        unsafe { libc::munmap(self.base.as_ptr() as *mut libc::c_void, self.len) };
    }
}
