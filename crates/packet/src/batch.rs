//! Batches: the unit of work between NFs, threads and processes.

use crate::Packet;

/// Default number of packets per batch.
pub const DEFAULT_BATCH_SIZE: usize = 32;

/// An ordered group of packets. Order is preserved by every operation here,
/// because NFs must not reorder a flow.
#[derive(Debug, Default)]
pub struct Batch {
    pkts: Vec<Packet>,
}

impl Batch {
    /// An empty batch with room for `n` packets without reallocating.
    pub fn with_capacity(n: usize) -> Batch {
        Batch { pkts: Vec::with_capacity(n) }
    }

    /// An empty batch with room for [`DEFAULT_BATCH_SIZE`] packets.
    pub fn new() -> Batch {
        Batch::with_capacity(DEFAULT_BATCH_SIZE)
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.pkts.len()
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.pkts.is_empty()
    }

    /// Append a packet at the end.
    #[inline]
    pub fn push(&mut self, p: Packet) {
        self.pkts.push(p);
    }

    /// Remove and return the last packet.
    pub fn pop(&mut self) -> Option<Packet> {
        self.pkts.pop()
    }

    /// Drop every packet (their buffers go back to the pool).
    pub fn clear(&mut self) {
        self.pkts.clear();
    }

    #[inline]
    pub fn iter(&self) -> std::slice::Iter<'_, Packet> {
        self.pkts.iter()
    }

    #[inline]
    pub fn iter_mut(&mut self) -> std::slice::IterMut<'_, Packet> {
        self.pkts.iter_mut()
    }

    /// The packets as a slice.
    pub fn as_slice(&self) -> &[Packet] {
        &self.pkts
    }

    /// The packets as a mutable slice.
    pub fn as_mut_slice(&mut self) -> &mut [Packet] {
        &mut self.pkts
    }

    /// Keep the packets for which `keep` returns true, in order; the others
    /// are dropped and their buffers recycled. This is how an NF drops.
    #[inline]
    pub fn retain_mut(&mut self, keep: impl FnMut(&mut Packet) -> bool) {
        self.pkts.retain_mut(keep);
    }

    /// Remove all packets, in order.
    pub fn drain(&mut self) -> std::vec::Drain<'_, Packet> {
        self.pkts.drain(..)
    }

    /// Move all packets of `other` to the end of this batch.
    pub fn append(&mut self, other: &mut Batch) {
        self.pkts.append(&mut other.pkts);
    }

    /// Take the packets out, leaving an empty batch of the same capacity.
    pub fn take(&mut self) -> Batch {
        std::mem::replace(self, Batch::with_capacity(self.pkts.capacity()))
    }

    /// Total bytes of all frames.
    pub fn bytes(&self) -> usize {
        self.pkts.iter().map(Packet::len).sum()
    }
}

impl Extend<Packet> for Batch {
    fn extend<I: IntoIterator<Item = Packet>>(&mut self, iter: I) {
        self.pkts.extend(iter);
    }
}

impl FromIterator<Packet> for Batch {
    fn from_iter<I: IntoIterator<Item = Packet>>(iter: I) -> Self {
        Batch { pkts: iter.into_iter().collect() }
    }
}

impl IntoIterator for Batch {
    type Item = Packet;
    type IntoIter = std::vec::IntoIter<Packet>;
    fn into_iter(self) -> Self::IntoIter {
        self.pkts.into_iter()
    }
}

impl<'a> IntoIterator for &'a mut Batch {
    type Item = &'a mut Packet;
    type IntoIter = std::slice::IterMut<'a, Packet>;
    fn into_iter(self) -> Self::IntoIter {
        self.pkts.iter_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retain_keeps_order() {
        let mut b: Batch = (0u8..10).map(|i| Packet::from_bytes(&[i])).collect();
        b.retain_mut(|p| p.data()[0] % 3 != 0);
        let got: Vec<u8> = b.iter().map(|p| p.data()[0]).collect();
        assert_eq!(got, vec![1, 2, 4, 5, 7, 8]);
    }

    #[test]
    fn batches_cross_threads() {
        let b: Batch = (0u8..4).map(|i| Packet::from_bytes(&[i; 60])).collect();
        let back = std::thread::spawn(move || b).join().unwrap();
        assert_eq!(back.len(), 4);
        assert_eq!(back.bytes(), 240);
    }
}
