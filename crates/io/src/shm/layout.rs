//! Where everything lives inside a region.
//!
//! ```text
//! 0                 header: magic, version, slot count and size, ring
//!                   capacity; one "consumer sleeps" flag per side, each on
//!                   its own cache line
//! HEADER_BYTES      4 rings: data 0->1, data 1->0, return to 0, return to 1.
//!                   Each ring: producer index (own cache line), consumer
//!                   index (own cache line), then `ring_cap` 16-byte entries
//! slots_off (page)  `slots` packet slots of `slot_size` bytes each
//! ```
//!
//! Both sides compute the layout from the slot count and size alone (never
//! from offsets read out of the shared memory), so a hostile peer cannot
//! move a ring or the slot array.

use std::sync::atomic::{AtomicU32, AtomicU64};

use crate::PortError;

/// "braidshm", little-endian.
pub const MAGIC: u64 = u64::from_le_bytes(*b"braidshm");
/// Layout version; bumped on any incompatible change.
pub const VERSION: u32 = 1;
/// Bytes reserved for the header.
pub const HEADER_BYTES: usize = 256;
/// Bytes of one ring entry (descriptor).
pub const ENTRY_BYTES: usize = 16;
/// Bytes of a ring's two index cache lines.
pub const RING_HEADER_BYTES: usize = 128;
/// Largest slot count a layout accepts.
pub const MAX_SLOTS: u32 = 1 << 20;
/// Largest slot size (descriptor offsets and lengths are 16-bit).
pub const MAX_SLOT_SIZE: u32 = 65_535;
/// Smallest slot size (room for headroom and a minimal frame).
pub const MIN_SLOT_SIZE: u32 = 256;

/// Ring carrying data descriptors from side `from` to the other side.
pub fn data_ring(from: u8) -> usize {
    from as usize
}

/// Ring carrying slots back to their home side `to`.
pub fn return_ring(to: u8) -> usize {
    2 + to as usize
}

/// One 32-bit atomic alone on a cache line, so producer and consumer
/// indices never share a line (no false sharing between the two cores).
#[repr(C, align(64))]
pub struct CacheLine(pub AtomicU32);

/// The header at offset 0.
#[repr(C)]
pub struct Header {
    pub magic: AtomicU64,
    pub version: AtomicU32,
    pub slots: AtomicU32,
    pub slot_size: AtomicU32,
    pub ring_cap: AtomicU32,
    /// `sleeping[s]` is non-zero while side `s` blocks on its eventfd and
    /// wants a wake-up after the next publish.
    pub sleeping: [CacheLine; 2],
}

/// The two indices at the start of each ring.
#[repr(C)]
pub struct RingHeader {
    pub prod: CacheLine,
    pub cons: CacheLine,
}

const _: () = assert!(std::mem::size_of::<Header>() <= HEADER_BYTES);
const _: () = assert!(std::mem::size_of::<RingHeader>() == RING_HEADER_BYTES);

/// Offsets of the parts of a region, computed from slot count and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub slots: u32,
    pub slot_size: u32,
    /// Entries per ring: equal to the slot count, so a ring can hold every
    /// slot at once and an honest producer never finds it full.
    pub ring_cap: u32,
    pub rings_off: usize,
    pub ring_bytes: usize,
    pub slots_off: usize,
    pub total: usize,
}

impl Layout {
    /// The layout for `slots` slots of `slot_size` bytes. `slots` must be a
    /// power of two >= 2 (half belong to each side), `slot_size` a multiple
    /// of 64 between [`MIN_SLOT_SIZE`] and [`MAX_SLOT_SIZE`].
    pub fn new(slots: u32, slot_size: u32) -> Result<Layout, PortError> {
        if !(2..=MAX_SLOTS).contains(&slots) || !slots.is_power_of_two() {
            return Err(PortError::Config(format!(
                "shm slots = {slots}: must be a power of two between 2 and {MAX_SLOTS}"
            )));
        }
        if !(MIN_SLOT_SIZE..=MAX_SLOT_SIZE).contains(&slot_size) || !slot_size.is_multiple_of(64) {
            return Err(PortError::Config(format!(
                "shm slot size = {slot_size}: must be a multiple of 64 between {MIN_SLOT_SIZE} and {MAX_SLOT_SIZE}"
            )));
        }
        let ring_cap = slots;
        let ring_bytes = RING_HEADER_BYTES + ring_cap as usize * ENTRY_BYTES;
        let rings_off = HEADER_BYTES;
        let slots_off = (rings_off + 4 * ring_bytes).div_ceil(4096) * 4096;
        let total = slots_off + slots as usize * slot_size as usize;
        Ok(Layout { slots, slot_size, ring_cap, rings_off, ring_bytes, slots_off, total })
    }

    /// Byte offset of ring `i` (0..4).
    pub fn ring_off(&self, i: usize) -> usize {
        self.rings_off + i * self.ring_bytes
    }

    /// Byte offset of slot `s`.
    pub fn slot_off(&self, s: u32) -> usize {
        self.slots_off + s as usize * self.slot_size as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_do_not_overlap_and_are_aligned() {
        let l = Layout::new(4096, 2048).unwrap();
        assert_eq!(l.rings_off % 64, 0);
        assert_eq!(l.ring_bytes % 64, 0);
        assert!(l.ring_off(3) + l.ring_bytes <= l.slots_off);
        assert_eq!(l.slots_off % 4096, 0);
        assert_eq!(l.slot_off(4095) + 2048, l.total);
    }

    #[test]
    fn bad_sizes_are_named() {
        let e = Layout::new(3, 2048).unwrap_err().to_string();
        assert!(e.contains("slots = 3"), "{e}");
        let e = Layout::new(8, 100).unwrap_err().to_string();
        assert!(e.contains("slot size = 100"), "{e}");
        assert!(Layout::new(8, 65_536).is_err());
        assert!(Layout::new(MAX_SLOTS * 2, 2048).is_err());
    }
}
