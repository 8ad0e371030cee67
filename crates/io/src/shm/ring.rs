//! Single-producer single-consumer descriptor rings in shared memory.
//!
//! Each ring is a power-of-two array of 16-byte entries with a producer and
//! a consumer index on separate cache lines. The producer writes entries and
//! then publishes its index with `Release`; the consumer reads the index with
//! `Acquire`, reads the entries, and publishes its own index with `Release`.
//! Indices run freely and wrap at 2^32; the entry is `index & (cap - 1)`.
//!
//! Each side keeps its own index privately and only *writes* it to shared
//! memory, and it checks the peer's index before using it: a peer that writes
//! an impossible index (more entries than the ring holds) is reported as
//! [`RingCorrupt`] instead of making this side read stale or foreign
//! entries. Entry positions are always masked, so no index can point outside
//! the ring.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::layout::{Layout, RingHeader, ENTRY_BYTES, RING_HEADER_BYTES};
use super::region::Region;
use crate::PortError;

/// A descriptor: which slot, where the frame starts in it and how long it
/// is, plus the receive timestamp the packet carried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Desc {
    pub slot: u32,
    pub off: u16,
    pub len: u16,
    pub rx_ns: u64,
}

impl Desc {
    fn pack(self) -> (u64, u64) {
        (self.slot as u64 | (self.off as u64) << 32 | (self.len as u64) << 48, self.rx_ns)
    }

    fn unpack(w0: u64, w1: u64) -> Desc {
        Desc { slot: w0 as u32, off: (w0 >> 32) as u16, len: (w0 >> 48) as u16, rx_ns: w1 }
    }
}

/// The peer wrote an index that no honest producer or consumer could have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("shared ring corrupted by the peer: producer index {prod}, consumer index {cons}, capacity {cap}")]
pub struct RingCorrupt {
    pub prod: u32,
    pub cons: u32,
    pub cap: u32,
}

/// Raw view of one ring inside a region. Holding the `Arc<Region>` keeps the
/// mapping alive as long as the view.
struct RingView {
    region: Arc<Region>,
    hdr: *const RingHeader,
    entries: *const AtomicU64,
    cap: u32,
}

// SAFETY: the pointers point into the region kept alive by `region`, and all
// accesses through them are atomic.
unsafe impl Send for RingView {}

impl RingView {
    fn new(region: &Arc<Region>, layout: &Layout, ring: usize) -> Result<RingView, PortError> {
        if ring >= 4 || layout.total > region.len() {
            return Err(PortError::Format(format!(
                "ring {ring} of a {} byte layout does not fit a {} byte region",
                layout.total,
                region.len()
            )));
        }
        let off = layout.ring_off(ring);
        // SAFETY: `off + ring_bytes <= layout.total <= region.len()` (checked
        // above and by Layout::new), offsets are 64-byte aligned, and the
        // region is page aligned, so both pointers are in bounds and aligned
        // for RingHeader / AtomicU64.
        let (hdr, entries) = unsafe {
            let base = region.base().add(off);
            (base as *const RingHeader, base.add(RING_HEADER_BYTES) as *const AtomicU64)
        };
        debug_assert_eq!(ENTRY_BYTES, 2 * std::mem::size_of::<AtomicU64>());
        Ok(RingView { region: region.clone(), hdr, entries, cap: layout.ring_cap })
    }

    #[inline]
    fn header(&self) -> &RingHeader {
        // SAFETY: `hdr` is in bounds and aligned (see `new`), and the region
        // lives as long as `self`.
        unsafe { &*self.hdr }
    }

    #[inline]
    fn entry(&self, index: u32) -> (&AtomicU64, &AtomicU64) {
        let i = (index & (self.cap - 1)) as usize * 2;
        // SAFETY: `i + 1 < 2 * cap`, the entry array has `cap` 16-byte
        // entries inside the region (see `new`).
        unsafe { (&*self.entries.add(i), &*self.entries.add(i + 1)) }
    }
}

/// The writing end of a ring.
pub struct Producer {
    view: RingView,
    prod: u32,
    cached_cons: u32,
}

/// The reading end of a ring.
pub struct Consumer {
    view: RingView,
    cons: u32,
    cached_prod: u32,
}

impl Producer {
    /// The producer end of ring `ring` of a fresh (all-zero) region.
    pub fn new(region: &Arc<Region>, layout: &Layout, ring: usize) -> Result<Producer, PortError> {
        Ok(Producer { view: RingView::new(region, layout, ring)?, prod: 0, cached_cons: 0 })
    }

    /// Free entries, re-reading the consumer index.
    pub fn room(&mut self) -> Result<u32, RingCorrupt> {
        let cons = self.view.header().cons.0.load(Ordering::Acquire);
        let used = self.prod.wrapping_sub(cons);
        if used > self.view.cap {
            return Err(RingCorrupt { prod: self.prod, cons, cap: self.view.cap });
        }
        self.cached_cons = cons;
        Ok(self.view.cap - used)
    }

    /// Write one entry (not yet visible to the consumer: see
    /// [`Producer::publish`]). Returns false if the ring is full.
    #[inline]
    pub fn push(&mut self, d: Desc) -> Result<bool, RingCorrupt> {
        if self.prod.wrapping_sub(self.cached_cons) >= self.view.cap && self.room()? == 0 {
            return Ok(false);
        }
        let (w0, w1) = d.pack();
        let (e0, e1) = self.view.entry(self.prod);
        e0.store(w0, Ordering::Relaxed);
        e1.store(w1, Ordering::Relaxed);
        self.prod = self.prod.wrapping_add(1);
        Ok(true)
    }

    /// Make every pushed entry visible to the consumer.
    #[inline]
    pub fn publish(&self) {
        self.view.header().prod.0.store(self.prod, Ordering::Release);
    }

    /// The region this ring lives in.
    pub fn region(&self) -> &Arc<Region> {
        &self.view.region
    }

    /// Overwrite the shared producer index with any value. Only for tests
    /// that play a hostile peer.
    #[doc(hidden)]
    pub fn force_index(&mut self, prod: u32) {
        self.prod = prod;
        self.publish();
    }
}

impl Consumer {
    /// The consumer end of ring `ring` of a fresh (all-zero) region.
    pub fn new(region: &Arc<Region>, layout: &Layout, ring: usize) -> Result<Consumer, PortError> {
        Ok(Consumer { view: RingView::new(region, layout, ring)?, cons: 0, cached_prod: 0 })
    }

    /// Entries ready to read, re-reading the producer index.
    pub fn available(&mut self) -> Result<u32, RingCorrupt> {
        let prod = self.view.header().prod.0.load(Ordering::Acquire);
        let n = prod.wrapping_sub(self.cons);
        if n > self.view.cap {
            return Err(RingCorrupt { prod, cons: self.cons, cap: self.view.cap });
        }
        self.cached_prod = prod;
        Ok(n)
    }

    /// Read the next entry, if any. The entry is consumed locally; the
    /// producer learns of it at the next [`Consumer::release`].
    #[inline]
    pub fn pop(&mut self) -> Result<Option<Desc>, RingCorrupt> {
        if self.cons == self.cached_prod && self.available()? == 0 {
            return Ok(None);
        }
        let (e0, e1) = self.view.entry(self.cons);
        let d = Desc::unpack(e0.load(Ordering::Relaxed), e1.load(Ordering::Relaxed));
        self.cons = self.cons.wrapping_add(1);
        Ok(Some(d))
    }

    /// Tell the producer that every popped entry may be reused.
    #[inline]
    pub fn release(&self) {
        self.view.header().cons.0.store(self.cons, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ring_pair(slots: u32) -> (Producer, Consumer) {
        let layout = Layout::new(slots, 256).unwrap();
        let region = Arc::new(Region::create("ring-test", layout.total, false).unwrap());
        (Producer::new(&region, &layout, 0).unwrap(), Consumer::new(&region, &layout, 0).unwrap())
    }

    #[test]
    fn fifo_and_full() {
        let (mut p, mut c) = ring_pair(4);
        for i in 0..4 {
            assert!(p.push(Desc { slot: i, off: 1, len: 2, rx_ns: 7 }).unwrap());
        }
        assert!(!p.push(Desc::default()).unwrap(), "ring of 4 takes 4");
        assert_eq!(c.pop().unwrap(), None, "nothing published yet");
        p.publish();
        for i in 0..4 {
            assert_eq!(c.pop().unwrap(), Some(Desc { slot: i, off: 1, len: 2, rx_ns: 7 }));
        }
        assert_eq!(c.pop().unwrap(), None);
        assert!(!p.push(Desc::default()).unwrap(), "consumer has not released");
        c.release();
        assert!(p.push(Desc::default()).unwrap());
    }

    #[test]
    fn impossible_producer_index_is_corruption() {
        let (mut p, mut c) = ring_pair(8);
        p.force_index(9);
        assert_eq!(c.pop(), Err(RingCorrupt { prod: 9, cons: 0, cap: 8 }));
        p.force_index(u32::MAX);
        assert!(c.pop().is_err());
    }

    #[test]
    fn threads_pass_a_million_in_order() {
        let (mut p, mut c) = ring_pair(256);
        let n = 1_000_000u32;
        let t = std::thread::spawn(move || {
            let mut i = 0;
            while i < n {
                while i < n
                    && p.push(Desc { slot: i, off: 0, len: 0, rx_ns: i as u64 * 3 }).unwrap()
                {
                    i += 1;
                }
                p.publish();
            }
        });
        let mut next = 0;
        while next < n {
            while let Some(d) = c.pop().unwrap() {
                assert_eq!((d.slot, d.rx_ns), (next, next as u64 * 3));
                next += 1;
            }
            c.release();
        }
        t.join().unwrap();
    }

    proptest! {
        #[test]
        fn desc_roundtrip(slot: u32, off: u16, len: u16, rx_ns: u64) {
            let d = Desc { slot, off, len, rx_ns };
            let (a, b) = d.pack();
            prop_assert_eq!(Desc::unpack(a, b), d);
        }
    }
}
