//! In-process hand-over between threads: a pair of connected ports.
//!
//! Whole [`Batch`]es move through a standard channel (one message per batch,
//! so the synchronisation cost is paid once per batch, not per packet), and
//! the packets themselves never move: a batch is a vector of buffer handles.
//! A credit counter per direction bounds the packets in flight, like the
//! slots of a shared-memory ring, so a fast producer cannot queue without
//! limit; what does not fit is dropped and counted in `tx_dropped`.
//!
//! A worker that serves channel ports can sleep: each end has an `eventfd`
//! its peer writes when it sent a batch *and* this end said it is about to
//! sleep ([`Port::prepare_wait`] raised its `sleeping` flag). The flag and
//! the credit counter are a Dekker pair, every access sequentially
//! consistent: the sender adds to the counter, then reads the flag; the
//! sleeper raises the flag, then reads the counter. Whichever comes second
//! sees the other, so either the sender writes the eventfd or the sleeper
//! finds the packets and does not sleep: no wake-up is lost. On the busy
//! path that costs the sender one plain load of a flag that stays 0 (on
//! x86 a sequentially consistent load is an ordinary `mov`, and the
//! counter's `fetch_add` was already a locked instruction); the system
//! call is paid only when the peer sleeps.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::time::Duration;

use braid_packet::Batch;

use crate::{Port, PortError, PortStats};

/// How one end is woken: its `sleeping` flag and the eventfd its peer
/// writes. None when the eventfd could not be made (out of descriptors):
/// that end cannot sleep and is looked at again instead, as before
/// channels had wake-ups.
struct Wake {
    sleeping: AtomicBool,
    fd: OwnedFd,
}

impl Wake {
    fn new() -> Option<Arc<Wake>> {
        let fd = crate::shm::control::eventfd().ok()?;
        Some(Arc::new(Wake { sleeping: AtomicBool::new(false), fd }))
    }
}

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
    /// Wakes this end (written by the peer).
    wake_self: Option<Arc<Wake>>,
    /// Wakes the peer (written by this end).
    wake_peer: Option<Arc<Wake>>,
    /// Eventfd writes this end made to wake its peer.
    wakeups_sent: u64,
}

/// Two connected ports; each direction holds at most `capacity` packets in
/// flight (at least 1).
pub fn channel_pair(name: &str, capacity: usize) -> (ChannelPort, ChannelPort) {
    let capacity = capacity.max(1);
    let (tx_ab, rx_ab) = mpsc::channel();
    let (tx_ba, rx_ba) = mpsc::channel();
    let ab = Arc::new(AtomicUsize::new(0));
    let ba = Arc::new(AtomicUsize::new(0));
    let (w0, w1) = (Wake::new(), Wake::new());
    let end = |side: u8, tx, rx, out_flight, in_flight, wake_self, wake_peer| ChannelPort {
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
        wake_self,
        wake_peer,
        wakeups_sent: 0,
    };
    (
        end(0, tx_ab, rx_ba, ab.clone(), ba.clone(), w0.clone(), w1.clone()),
        end(1, tx_ba, rx_ab, ba, ab, w1, w0),
    )
}

impl ChannelPort {
    /// Packets this end may still send before the peer takes some.
    pub fn tx_room(&self) -> usize {
        self.capacity.saturating_sub(self.out_flight.load(Ordering::Acquire))
    }

    /// Whether this end can sleep on a descriptor (its eventfd exists).
    pub fn can_sleep(&self) -> bool {
        self.wake_self.is_some()
    }

    /// Times this end wrote its peer's eventfd because the peer was (about
    /// to be) asleep when a batch went to it.
    pub fn wakeups_sent(&self) -> u64 {
        self.wakeups_sent
    }

    /// Wake the peer if it said it sleeps. Called after the packets are in
    /// the channel and counted in flight (see the module documentation).
    fn wake_peer_if_asleep(&mut self) {
        if let Some(w) = &self.wake_peer {
            if w.sleeping.load(Ordering::SeqCst) {
                crate::shm::control::notify(&w.fd);
                self.wakeups_sent += 1;
                self.stats.count_syscall();
            }
        }
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
        self.in_flight.fetch_sub(n, Ordering::SeqCst);
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
        // SeqCst: one half of the Dekker pair with `prepare_wait` (module
        // documentation); the flag is read after the batch is in the channel.
        self.out_flight.fetch_add(n, Ordering::SeqCst);
        if self.tx.send(out).is_err() {
            self.out_flight.fetch_sub(n, Ordering::SeqCst);
            self.stats.tx_dropped += n as u64;
            return Err(PortError::Disconnected(format!(
                "{}: the other end was dropped",
                self.name
            )));
        }
        self.stats.tx_packets += n as u64;
        self.stats.tx_bytes += bytes;
        self.wake_peer_if_asleep();
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

    fn prepare_wait(&mut self, fds: &mut Vec<RawFd>) -> crate::WaitReadiness {
        if !self.pending.is_empty() || self.ended {
            return crate::WaitReadiness::Ready;
        }
        let Some(w) = &self.wake_self else {
            return if self.in_flight.load(Ordering::Acquire) > 0 {
                crate::WaitReadiness::Ready
            } else {
                crate::WaitReadiness::NoDescriptor
            };
        };
        // The other half of the Dekker pair: raise the flag, then look at
        // the counter. A sender that added to it before our store sees
        // nothing here but we see its packets; one that adds after sees
        // the flag and writes the eventfd.
        w.sleeping.store(true, Ordering::SeqCst);
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            w.sleeping.store(false, Ordering::Relaxed);
            return crate::WaitReadiness::Ready;
        }
        fds.push(w.fd.as_raw_fd());
        crate::WaitReadiness::Descriptors
    }

    fn finish_wait(&mut self) {
        if let Some(w) = &self.wake_self {
            if w.sleeping.swap(false, Ordering::SeqCst) {
                // A wake-up written while we slept (or after): reset the
                // counter so the next sleep is not cut short by it. One
                // written after this read makes the next sleep return at
                // once, which is harmless.
                crate::shm::control::drain(&w.fd);
                self.stats.count_syscall();
            }
        }
    }

    fn stats(&self) -> PortStats {
        self.stats
    }
}

impl Drop for ChannelPort {
    /// The peer learns that this end is gone at its next receive; if it
    /// sleeps, it is woken for that.
    fn drop(&mut self) {
        // Hang up first, so that the woken peer finds the channel closed.
        drop(std::mem::replace(&mut self.tx, mpsc::channel().0));
        if let Some(w) = &self.wake_peer {
            crate::shm::control::notify(&w.fd);
        }
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

    /// Busy path: while the receiver never gets ready to sleep, the sender
    /// writes no eventfd (no system call per batch).
    #[test]
    fn a_busy_receiver_costs_the_sender_no_wake_up() {
        let (mut a, mut b) = channel_pair("t", 1024);
        let mut got = Batch::new();
        for i in 0..1000u32 {
            a.send(&mut batch_of(i * 4..i * 4 + 4)).unwrap();
            assert_eq!(b.recv(&mut got, 64).unwrap(), 4);
            got.clear();
        }
        assert_eq!(a.wakeups_sent(), 0);
        assert_eq!(a.stats().syscalls, Some(0));
        assert!(b.can_sleep());
    }

    /// An idle end sleeps in `wait_any` (not a zero-timeout look), a send
    /// wakes it long before the timeout, and dropping the peer wakes it
    /// too and ends the port.
    #[test]
    fn an_idle_end_sleeps_until_a_send_or_the_peer_goes() {
        let (mut a, mut b) = channel_pair("t", 64);
        let t0 = std::time::Instant::now();
        let w = crate::wait_any(&mut [&mut b as &mut dyn Port], &[], Duration::from_millis(30))
            .unwrap();
        assert_eq!(w, crate::wait::Waited::Polled);
        assert!(t0.elapsed() >= Duration::from_millis(25), "{:?}", t0.elapsed());
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            a.send(&mut batch_of(0..1)).unwrap();
            a
        });
        let t0 = std::time::Instant::now();
        crate::wait_any(&mut [&mut b as &mut dyn Port], &[], Duration::from_secs(20)).unwrap();
        assert!(t0.elapsed() < Duration::from_secs(10), "slept {:?} past a send", t0.elapsed());
        let mut got = Batch::new();
        assert_eq!(b.recv(&mut got, 8).unwrap(), 1);
        let a = sender.join().unwrap();
        assert_eq!(a.wakeups_sent(), 1);
        let dropper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(a);
        });
        let t0 = std::time::Instant::now();
        crate::wait_any(&mut [&mut b as &mut dyn Port], &[], Duration::from_secs(20)).unwrap();
        assert!(t0.elapsed() < Duration::from_secs(10), "slept {:?} past the drop", t0.elapsed());
        b.recv(&mut got, 8).unwrap();
        assert!(b.at_end());
        dropper.join().unwrap();
    }

    /// Hammer the sleep/wake race: two threads bounce one packet back and
    /// forth, each sleeping in `wait_any` (timeout 3 s) whenever it has
    /// nothing, so every send lands close to the peer's `prepare_wait`. A
    /// lost wake-up shows as a sleep that lasted its whole timeout (the
    /// peer waits for the answer, so nothing else would end it); there
    /// must be none.
    #[test]
    fn no_wake_up_is_lost_in_a_ping_pong_of_sleepers() {
        const ROUNDS: u32 = 5_000;
        const TIMEOUT: Duration = Duration::from_secs(3);
        fn side(mut p: ChannelPort, first: bool) -> (u32, u32, u64) {
            let mut got = Batch::new();
            let (mut seen, mut timeouts) = (0u32, 0u32);
            if first {
                p.send(&mut batch_of(0..1)).unwrap();
            }
            while seen < ROUNDS {
                if p.recv(&mut got, 8).unwrap() > 0 {
                    let s = seqs(&got)[0];
                    got.clear();
                    seen += 1;
                    if p.send(&mut batch_of(s + 1..s + 2)).is_err() {
                        break; // the peer finished its rounds
                    }
                    continue;
                }
                if p.at_end() {
                    break;
                }
                let t = std::time::Instant::now();
                crate::wait_any(&mut [&mut p as &mut dyn Port], &[], TIMEOUT).unwrap();
                if t.elapsed() >= TIMEOUT {
                    // Lost (the peer waits for us): stop, which ends the
                    // peer too, so a failure takes seconds, not rounds × 3 s.
                    timeouts += 1;
                    break;
                }
            }
            (seen, timeouts, p.wakeups_sent())
        }
        let (a, b) = channel_pair("pp", 16);
        let ta = std::thread::spawn(move || side(a, true));
        let (b_seen, b_timeouts, b_wakes) = side(b, false);
        let (a_seen, a_timeouts, a_wakes) = ta.join().unwrap();
        assert_eq!((a_timeouts, b_timeouts), (0, 0), "lost wake-ups");
        assert!(a_seen >= ROUNDS - 1 && b_seen >= ROUNDS - 1, "{a_seen} {b_seen}");
        // The race was exercised: most hand-overs found the peer asleep.
        eprintln!("wake-ups written: {a_wakes} + {b_wakes} for {} hand-overs", a_seen + b_seen);
        assert!(a_wakes + b_wakes > 0);
    }
}
