//! In-process hand-over between threads: a pair of connected ports.
//!
//! Whole [`Batch`]es move through a standard channel (one message per batch,
//! so the synchronisation cost is paid once per batch, not per packet), and
//! the packets themselves never move: a batch is a vector of buffer handles.
//! A credit counter per direction bounds the packets in flight, like the
//! slots of a shared-memory ring, so a fast producer cannot queue without
//! limit; what does not fit is dropped and counted in `tx_dropped`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::time::Duration;

use braid_packet::Batch;

use crate::{Port, PortError, PortStats};

/// One end of an in-process channel. See the module documentation.
pub struct ChannelPort {
    name: String,
    tx: Sender<Batch>,
    rx: Receiver<Batch>,
    /// Received batch not yet fully handed out by `recv`.
    pending: Batch,
    /// Packets sent by this end and not yet taken by the peer.
    out_flight: Arc<AtomicUsize>,
    /// Packets sent by the peer and not yet taken by this end.
    in_flight: Arc<AtomicUsize>,
    capacity: usize,
    stats: PortStats,
    ended: bool,
}

/// Two connected ports; each direction holds at most `capacity` packets in
/// flight (at least 1).
pub fn channel_pair(name: &str, capacity: usize) -> (ChannelPort, ChannelPort) {
    let capacity = capacity.max(1);
    let (tx_ab, rx_ab) = mpsc::channel();
    let (tx_ba, rx_ba) = mpsc::channel();
    let ab = Arc::new(AtomicUsize::new(0));
    let ba = Arc::new(AtomicUsize::new(0));
    let end = |side: u8, tx, rx, out_flight, in_flight| ChannelPort {
        name: format!("channel:{name}#{side}"),
        tx,
        rx,
        pending: Batch::new(),
        out_flight,
        in_flight,
        capacity,
        // No system call of its own on the packet path (std mpsc); a
        // `wait` that blocks is counted as one (a futex wait).
        stats: PortStats { syscalls: Some(0), ..PortStats::default() },
        ended: false,
    };
    (end(0, tx_ab, rx_ba, ab.clone(), ba.clone()), end(1, tx_ba, rx_ab, ba, ab))
}

impl ChannelPort {
    /// Packets this end may still send before the peer takes some.
    pub fn tx_room(&self) -> usize {
        self.capacity.saturating_sub(self.out_flight.load(Ordering::Acquire))
    }

    fn hand_out(&mut self, batch: &mut Batch, max: usize) -> usize {
        let n = self.pending.len().min(max);
        if n == self.pending.len() && batch.is_empty() {
            // The common case: hand over the whole received batch as is.
            std::mem::swap(batch, &mut self.pending);
        } else {
            let rest_at = n;
            let mut rest: Batch = Batch::with_capacity(self.pending.len() - n);
            for (i, p) in self.pending.drain().enumerate() {
                if i < rest_at {
                    batch.push(p);
                } else {
                    rest.push(p);
                }
            }
            self.pending = rest;
        }
        self.in_flight.fetch_sub(n, Ordering::AcqRel);
        self.stats.rx_packets += n as u64;
        n
    }
}

impl Port for ChannelPort {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn recv(&mut self, batch: &mut Batch, max: usize) -> Result<usize, PortError> {
        let before = batch.len();
        let mut got = 0;
        while got < max {
            if self.pending.is_empty() {
                match self.rx.try_recv() {
                    Ok(b) => self.pending = b,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.ended = true;
                        break;
                    }
                }
            }
            got += self.hand_out(batch, max - got);
        }
        self.stats.rx_bytes +=
            batch.as_slice()[before..].iter().map(|p| p.len() as u64).sum::<u64>();
        Ok(got)
    }

    fn send(&mut self, batch: &mut Batch) -> Result<usize, PortError> {
        let room = self.tx_room();
        let mut out = batch.take();
        while out.len() > room {
            out.pop();
            self.stats.tx_dropped += 1;
        }
        let n = out.len();
        if n == 0 {
            return Ok(0);
        }
        let bytes = out.bytes() as u64;
        self.out_flight.fetch_add(n, Ordering::AcqRel);
        if self.tx.send(out).is_err() {
            self.out_flight.fetch_sub(n, Ordering::AcqRel);
            self.stats.tx_dropped += n as u64;
            return Err(PortError::Disconnected(format!(
                "{}: the other end was dropped",
                self.name
            )));
        }
        self.stats.tx_packets += n as u64;
        self.stats.tx_bytes += bytes;
        Ok(n)
    }

    fn wait(&mut self, timeout: Duration) -> Result<(), PortError> {
        if !self.pending.is_empty() {
            return Ok(());
        }
        self.stats.count_syscall();
        match self.rx.recv_timeout(timeout) {
            Ok(b) => self.pending = b,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => self.ended = true,
        }
        Ok(())
    }

    fn at_end(&self) -> bool {
        self.ended && self.pending.is_empty()
    }

    fn tx_room(&mut self) -> usize {
        ChannelPort::tx_room(self)
    }

    fn prepare_wait(&mut self, _fds: &mut Vec<std::os::fd::RawFd>) -> crate::WaitReadiness {
        if !self.pending.is_empty() || self.in_flight.load(Ordering::Acquire) > 0 {
            crate::WaitReadiness::Ready
        } else {
            crate::WaitReadiness::NoDescriptor
        }
    }

    fn stats(&self) -> PortStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use braid_packet::Packet;

    fn batch_of(range: std::ops::Range<u32>) -> Batch {
        let mut b = Batch::new();
        for i in range {
            b.push(Packet::from_bytes(&i.to_le_bytes()));
        }
        b
    }

    fn seqs(b: &Batch) -> Vec<u32> {
        b.iter().map(|p| u32::from_le_bytes(p.data().try_into().unwrap())).collect()
    }

    #[test]
    fn order_max_and_credit() {
        let (mut a, mut b) = channel_pair("t", 10);
        assert_eq!(a.send(&mut batch_of(0..6)).unwrap(), 6);
        assert_eq!(a.send(&mut batch_of(6..12)).unwrap(), 4, "only 10 in flight");
        assert_eq!(a.stats().tx_dropped, 2);
        assert_eq!(a.tx_room(), 0);
        let mut got = Batch::new();
        assert_eq!(b.recv(&mut got, 3).unwrap(), 3);
        assert_eq!(b.recv(&mut got, 100).unwrap(), 7);
        assert_eq!(seqs(&got), (0..10).collect::<Vec<_>>());
        assert_eq!(a.tx_room(), 10);
        assert_eq!(b.stats().rx_packets, 10);
        assert_eq!(b.stats().rx_bytes, 40);
    }

    #[test]
    fn threads_and_end() {
        let (mut a, mut b) = channel_pair("t", 256);
        let t = std::thread::spawn(move || {
            let mut next = 0u32;
            while next < 100_000 {
                let n = (a.tx_room() as u32).min(32).min(100_000 - next);
                if n > 0 {
                    assert_eq!(a.send(&mut batch_of(next..next + n)).unwrap(), n as usize);
                    next += n;
                }
            }
        });
        let mut next = 0u32;
        let mut got = Batch::new();
        while !b.at_end() {
            b.wait(Duration::from_millis(10)).unwrap();
            b.recv(&mut got, 64).unwrap();
            for s in seqs(&got) {
                assert_eq!(s, next);
                next += 1;
            }
            got.clear();
        }
        t.join().unwrap();
        assert_eq!(next, 100_000);
        assert!(b.send(&mut batch_of(0..1)).is_err(), "peer gone");
    }
}
