//! The four AF_XDP rings: single-producer single-consumer queues shared
//! with the kernel through mmap.
//!
//! Each ring is a power-of-two array of descriptors plus a producer and a
//! consumer index (free-running u32) and a flags word. Following
//! `Documentation/networking/af_xdp.rst` (and libxdp's `xsk.h`): the side
//! that produces writes descriptors, then publishes the new producer index
//! with a Release store; the consuming side reads the producer index with
//! an Acquire load before reading descriptors, and hands slots back with a
//! Release store of its consumer index. Each side caches the other's index
//! and only reloads it when the cache says the ring is full (or empty).

use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::PortError;

/// An mmap'ed ring. `T` is `u64` (fill, completion: frame addresses) or
/// `libc::xdp_desc` (rx, tx).
pub(crate) struct Ring<T: Copy> {
    map: NonNull<u8>,
    map_len: usize,
    producer: *const AtomicU32,
    consumer: *const AtomicU32,
    flags: *const AtomicU32,
    descs: *mut T,
    size: u32,
    mask: u32,
    /// Our copy of our own index (producer for fill/tx, consumer for
    /// rx/completion) and the cached copy of the kernel's.
    cached_prod: u32,
    cached_cons: u32,
}

// SAFETY: the ring memory is a private mapping owned by this value; the
// pointers are only dereferenced through `&mut self` methods, so moving the
// ring to another thread moves exclusive access with it.
unsafe impl<T: Copy> Send for Ring<T> {}

impl<T: Copy> Ring<T> {
    /// Map ring `pgoff` of socket `fd` with `size` entries laid out as
    /// `off` says.
    pub(crate) fn map(
        fd: RawFd,
        off: &libc::xdp_ring_offset,
        size: u32,
        pgoff: u64,
        what: &str,
    ) -> Result<Ring<T>, PortError> {
        let map_len = off.desc as usize + size as usize * std::mem::size_of::<T>();
        // SAFETY: mapping a ring the kernel created for `fd` (its size was
        // set by setsockopt before); the result is checked against
        // MAP_FAILED and unmapped in Drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                pgoff as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(PortError::last_os(format!("mmap of the AF_XDP {what} ring")));
        }
        let base = p as *mut u8;
        // SAFETY: the kernel's offsets lie inside the mapping it made, and
        // the index and flags words are u32-aligned as the ABI promises.
        let ring = unsafe {
            Ring {
                map: NonNull::new_unchecked(base),
                map_len,
                producer: base.add(off.producer as usize) as *const AtomicU32,
                consumer: base.add(off.consumer as usize) as *const AtomicU32,
                flags: base.add(off.flags as usize) as *const AtomicU32,
                descs: base.add(off.desc as usize) as *mut T,
                size,
                mask: size - 1,
                cached_prod: 0,
                cached_cons: 0,
            }
        };
        Ok(ring)
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: points into our live mapping (see `map`).
        unsafe { &*self.producer }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: points into our live mapping (see `map`).
        unsafe { &*self.consumer }
    }

    /// True if the kernel asks to be woken up (`XDP_RING_NEED_WAKEUP`).
    pub(crate) fn needs_wakeup(&self) -> bool {
        // SAFETY: points into our live mapping (see `map`).
        let flags = unsafe { &*self.flags };
        flags.load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    pub(crate) fn size(&self) -> u32 {
        self.size
    }

    // ----- producer side (fill, tx) -----

    /// Free slots we may write, reloading the kernel's consumer index when
    /// the cached one says fewer than `want` are free. Never more than are
    /// truly free; at least `want` when that many are.
    pub(crate) fn free(&mut self, want: u32) -> u32 {
        let free = self.size - self.cached_prod.wrapping_sub(self.cached_cons);
        if free >= want {
            return free;
        }
        self.cached_cons = self.consumer().load(Ordering::Acquire);
        self.size - self.cached_prod.wrapping_sub(self.cached_cons)
    }

    /// Write `value` in the `i`-th slot after the published ones (i <
    /// `free()`); publish with [`Ring::submit`].
    pub(crate) fn write(&mut self, i: u32, value: T) {
        let idx = self.cached_prod.wrapping_add(i) & self.mask;
        // SAFETY: `idx` is masked into the ring, and the slot is ours until
        // submitted: the caller checked `free()`.
        unsafe { self.descs.add(idx as usize).write(value) };
    }

    /// Publish `n` written slots to the kernel.
    pub(crate) fn submit(&mut self, n: u32) {
        self.cached_prod = self.cached_prod.wrapping_add(n);
        self.producer().store(self.cached_prod, Ordering::Release);
    }

    /// Slots published and not yet consumed by the kernel (as last seen).
    pub(crate) fn outstanding(&mut self) -> u32 {
        self.cached_cons = self.consumer().load(Ordering::Acquire);
        self.cached_prod.wrapping_sub(self.cached_cons)
    }

    // ----- consumer side (rx, completion) -----

    /// Entries ready to read (at most `max`), reloading the kernel's
    /// producer index when the cache is empty.
    pub(crate) fn available(&mut self, max: u32) -> u32 {
        let mut n = self.cached_prod.wrapping_sub(self.cached_cons);
        if n == 0 {
            self.cached_prod = self.producer().load(Ordering::Acquire);
            n = self.cached_prod.wrapping_sub(self.cached_cons);
        }
        n.min(max)
    }

    /// Read the `i`-th available entry (i < `available()`).
    pub(crate) fn read(&self, i: u32) -> T {
        let idx = self.cached_cons.wrapping_add(i) & self.mask;
        // SAFETY: masked into the ring; the kernel published this slot
        // (Acquire in `available`) and will not touch it until `release`.
        unsafe { self.descs.add(idx as usize).read() }
    }

    /// Hand `n` read entries back to the kernel.
    pub(crate) fn release(&mut self, n: u32) {
        self.cached_cons = self.cached_cons.wrapping_add(n);
        self.consumer().store(self.cached_cons, Ordering::Release);
    }

    /// After mapping a producer ring, our cache must start where the
    /// kernel's indices are (zero for a fresh socket, but be exact).
    pub(crate) fn sync_producer(&mut self) {
        self.cached_prod = self.producer().load(Ordering::Relaxed);
        self.cached_cons = self.consumer().load(Ordering::Acquire);
    }

    /// Same for a consumer ring.
    pub(crate) fn sync_consumer(&mut self) {
        self.cached_cons = self.consumer().load(Ordering::Relaxed);
        self.cached_prod = self.producer().load(Ordering::Acquire);
    }
}

impl<T: Copy> Drop for Ring<T> {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the region `map` created; no reference
        // into it outlives the ring.
        unsafe { libc::munmap(self.map.as_ptr() as *mut libc::c_void, self.map_len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A ring over plain anonymous memory laid out like the kernel's
    /// (producer, consumer, flags, descriptors), with the indices starting
    /// at `start` so tests cross the u32 wrap-around.
    fn anonymous<T: Copy>(size: u32, start: u32) -> Ring<T> {
        let off = libc::xdp_ring_offset { producer: 0, consumer: 64, flags: 128, desc: 192 };
        let map_len = off.desc as usize + size as usize * std::mem::size_of::<T>();
        // SAFETY: anonymous private mapping, checked, unmapped by Ring::drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let base = p as *mut u8;
        // SAFETY: offsets inside the mapping, u32-aligned.
        let mut r = unsafe {
            Ring {
                map: NonNull::new_unchecked(base),
                map_len,
                producer: base.add(off.producer as usize) as *const AtomicU32,
                consumer: base.add(off.consumer as usize) as *const AtomicU32,
                flags: base.add(off.flags as usize) as *const AtomicU32,
                descs: base.add(off.desc as usize) as *mut T,
                size,
                mask: size - 1,
                cached_prod: 0,
                cached_cons: 0,
            }
        };
        r.producer().store(start, Ordering::Relaxed);
        r.consumer().store(start, Ordering::Relaxed);
        r.sync_producer();
        r
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// We produce up to n entries (fill/tx side).
        Produce(u32),
        /// The "kernel" consumes up to n entries.
        KernelConsume(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![(0u32..40).prop_map(Op::Produce), (0u32..40).prop_map(Op::KernelConsume)]
    }

    proptest! {
        /// Producer side against a simulated kernel consumer: never more
        /// than `size` in flight, entries come out in order and intact,
        /// across the u32 wrap-around of the indices.
        #[test]
        fn producer_ring_is_a_bounded_fifo(
            ops in proptest::collection::vec(op(), 1..200),
            start in prop_oneof![Just(0u32), Just(u32::MAX - 50), any::<u32>()],
        ) {
            let size = 32;
            let mut ring: Ring<u64> = anonymous(size, start);
            let mut model = std::collections::VecDeque::new();
            let mut next = 0u64;
            for op in ops {
                match op {
                    Op::Produce(n) => {
                        // `free` is lazy: never more than truly free, and at
                        // least what was asked for when that much is free.
                        let free = ring.free(n);
                        let truly = size - model.len() as u32;
                        prop_assert!(free <= truly, "free {} > truly free {}", free, truly);
                        prop_assert!(free >= n.min(truly), "free {} < asked {} (truly {})", free, n, truly);
                        let k = n.min(free);
                        for i in 0..k {
                            ring.write(i, next);
                            model.push_back(next);
                            next += 1;
                        }
                        ring.submit(k);
                    }
                    Op::KernelConsume(n) => {
                        // What the kernel does: Acquire the producer index,
                        // read, then Release the consumer index.
                        let prod = ring.producer().load(Ordering::Acquire);
                        let cons = ring.consumer().load(Ordering::Relaxed);
                        let avail = prod.wrapping_sub(cons);
                        prop_assert_eq!(avail as usize, model.len());
                        let k = n.min(avail);
                        for i in 0..k {
                            let idx = cons.wrapping_add(i) & ring.mask;
                            // SAFETY: idx is masked into the ring.
                            let v = unsafe { ring.descs.add(idx as usize).read() };
                            prop_assert_eq!(Some(v), model.pop_front());
                        }
                        ring.consumer().store(cons.wrapping_add(k), Ordering::Release);
                    }
                }
            }
        }

        /// Consumer side against a simulated kernel producer.
        #[test]
        fn consumer_ring_is_a_bounded_fifo(
            ops in proptest::collection::vec(op(), 1..200),
            start in prop_oneof![Just(0u32), Just(u32::MAX - 50), any::<u32>()],
        ) {
            let size = 32;
            let mut ring: Ring<u64> = anonymous(size, start);
            ring.sync_consumer();
            let mut model = std::collections::VecDeque::new();
            let mut next = 0u64;
            for op in ops {
                match op {
                    // Here "Produce" is the kernel producing.
                    Op::Produce(n) => {
                        let prod = ring.producer().load(Ordering::Relaxed);
                        let cons = ring.consumer().load(Ordering::Acquire);
                        let free = size - prod.wrapping_sub(cons);
                        let k = n.min(free);
                        for i in 0..k {
                            let idx = prod.wrapping_add(i) & ring.mask;
                            // SAFETY: idx is masked into the ring.
                            unsafe { ring.descs.add(idx as usize).write(next) };
                            model.push_back(next);
                            next += 1;
                        }
                        ring.producer().store(prod.wrapping_add(k), Ordering::Release);
                    }
                    Op::KernelConsume(n) => {
                        // We consume.
                        let k = ring.available(n);
                        prop_assert!(k as usize <= model.len());
                        for i in 0..k {
                            prop_assert_eq!(Some(ring.read(i)), model.pop_front());
                        }
                        ring.release(k);
                        if n > 0 && k == 0 {
                            prop_assert!(model.is_empty(), "nothing missed when the ring reports empty");
                        }
                    }
                }
            }
        }
    }
}
