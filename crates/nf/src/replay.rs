//! Anti-replay windows for `decrypt` (the sliding window of RFC 4303
//! section 3.4.3, as a bitmap like RFC 6479): per sender, the highest
//! sequence number accepted so far and which of the `size` numbers below
//! it were seen. A number above the top is new; one inside the window is
//! new unless its bit is set; one below the window is too old to tell and
//! refused, like a replay.
//!
//! Senders are told apart by the header's salt (random per encrypting NF
//! instance, so a restarted sender starts a fresh window). The number of
//! senders tracked is bounded; when the table is full the sender that
//! advanced least recently is forgotten. Windows are only updated after a
//! packet authenticated (the caller checks first, decrypts, then
//! [`ReplayGuard::accept`]s), so forged packets cannot move them.

use std::collections::HashMap;

/// Window of one sender.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Window {
    /// Highest sequence number accepted.
    top: u64,
    /// Bit `s % size` is set when `s` (within `top - size < s <= top`) was
    /// accepted.
    bits: Vec<u64>,
    /// Value of the guard's clock when `top` last moved (for eviction).
    touched: u64,
}

impl Window {
    fn new(size: u64, seq: u64, now: u64) -> Window {
        let mut w = Window { top: seq, bits: vec![0; (size / 64) as usize], touched: now };
        w.set(seq);
        w
    }

    fn size(&self) -> u64 {
        self.bits.len() as u64 * 64
    }

    fn bit(&self, seq: u64) -> bool {
        let i = seq % self.size();
        self.bits[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    fn set(&mut self, seq: u64) {
        let i = seq % self.size();
        self.bits[(i / 64) as usize] |= 1 << (i % 64);
    }

    fn clear(&mut self, seq: u64) {
        let i = seq % self.size();
        self.bits[(i / 64) as usize] &= !(1 << (i % 64));
    }

    /// Whether `seq` would be accepted.
    fn fresh(&self, seq: u64) -> bool {
        if seq > self.top {
            return true;
        }
        self.top - seq < self.size() && !self.bit(seq)
    }

    /// Record `seq` (known to be fresh).
    fn accept(&mut self, seq: u64, now: u64) {
        if seq > self.top {
            let ahead = seq - self.top;
            if ahead >= self.size() {
                self.bits.iter_mut().for_each(|w| *w = 0);
            } else {
                // The numbers the window slides over lose their old bits.
                for s in self.top + 1..=seq {
                    self.clear(s);
                }
            }
            self.top = seq;
            self.touched = now;
        }
        self.set(seq);
    }
}

/// The windows of every sender a `decrypt` NF has heard from.
#[derive(Clone, Debug)]
pub struct ReplayGuard {
    size: u64,
    max_senders: usize,
    windows: HashMap<[u8; 4], Window>,
    /// Counts accepted packets; orders windows for eviction.
    clock: u64,
}

/// Allowed window sizes: multiples of 64 in this range.
pub const MIN_WINDOW: u64 = 64;
pub const MAX_WINDOW: u64 = 1 << 16;

/// The guard's state as `export_state` writes it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ReplaySnapshot {
    pub size: u64,
    pub clock: u64,
    pub windows: Vec<([u8; 4], Window)>,
}

impl ReplayGuard {
    /// `size`: a multiple of 64 in `MIN_WINDOW..=MAX_WINDOW`.
    pub fn new(size: u64, max_senders: usize) -> ReplayGuard {
        debug_assert!(size.is_multiple_of(64) && (MIN_WINDOW..=MAX_WINDOW).contains(&size));
        ReplayGuard { size, max_senders: max_senders.max(1), windows: HashMap::new(), clock: 0 }
    }

    /// Whether the packet `seq` of sender `salt` may be new (check before
    /// the expensive authentication).
    pub fn fresh(&self, salt: [u8; 4], seq: u64) -> bool {
        self.windows.get(&salt).is_none_or(|w| w.fresh(seq))
    }

    /// Record an authenticated packet; false if it is a replay after all
    /// (two copies in one batch).
    pub fn accept(&mut self, salt: [u8; 4], seq: u64) -> bool {
        self.clock += 1;
        let now = self.clock;
        if let Some(w) = self.windows.get_mut(&salt) {
            if !w.fresh(seq) {
                return false;
            }
            w.accept(seq, now);
            return true;
        }
        if self.windows.len() >= self.max_senders {
            let oldest = self.windows.iter().min_by_key(|(_, w)| w.touched).map(|(s, _)| *s);
            if let Some(s) = oldest {
                self.windows.remove(&s);
            }
        }
        self.windows.insert(salt, Window::new(self.size, seq, now));
        true
    }

    pub fn senders(&self) -> usize {
        self.windows.len()
    }

    pub fn snapshot(&self) -> ReplaySnapshot {
        let mut windows: Vec<_> = self.windows.iter().map(|(s, w)| (*s, w.clone())).collect();
        windows.sort_by_key(|(s, _)| *s);
        ReplaySnapshot { size: self.size, clock: self.clock, windows }
    }

    /// Take over `snap`; refused (and nothing changed) if it was made with
    /// another window size or holds more senders than this guard keeps.
    pub fn restore(&mut self, snap: ReplaySnapshot) -> Result<(), String> {
        if snap.size != self.size {
            return Err(format!(
                "replay window of {} packets, this decrypt keeps {}",
                snap.size, self.size
            ));
        }
        if snap.windows.len() > self.max_senders {
            return Err(format!(
                "{} senders, this decrypt keeps at most {}",
                snap.windows.len(),
                self.max_senders
            ));
        }
        let words = (self.size / 64) as usize;
        if let Some((s, _)) = snap.windows.iter().find(|(_, w)| w.bits.len() != words) {
            return Err(format!("window of sender {s:02x?} has the wrong size"));
        }
        self.windows = snap.windows.into_iter().collect();
        self.clock = snap.clock;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    const A: [u8; 4] = [1, 2, 3, 4];
    const B: [u8; 4] = [5, 6, 7, 8];

    fn take(g: &mut ReplayGuard, salt: [u8; 4], seq: u64) -> bool {
        g.fresh(salt, seq) && g.accept(salt, seq)
    }

    #[test]
    fn replays_and_too_old_packets_are_refused() {
        let mut g = ReplayGuard::new(64, 8);
        assert!(take(&mut g, A, 100));
        assert!(!take(&mut g, A, 100), "replay");
        assert!(take(&mut g, A, 90), "late but inside the window");
        assert!(!take(&mut g, A, 90));
        assert!(take(&mut g, A, 164));
        assert!(!take(&mut g, A, 100), "fell out of the window");
        assert!(take(&mut g, A, 101), "inside again: 164 - 101 < 64");
        // Another sender has its own window.
        assert!(take(&mut g, B, 100));
        // A jump past the whole window clears it.
        assert!(take(&mut g, A, 10_000));
        assert!(take(&mut g, A, 9_999));
    }

    #[test]
    fn the_least_recently_advanced_sender_is_forgotten() {
        let mut g = ReplayGuard::new(64, 2);
        assert!(take(&mut g, A, 1));
        assert!(take(&mut g, B, 1));
        assert!(take(&mut g, A, 2));
        assert!(take(&mut g, [9; 4], 1));
        assert_eq!(g.senders(), 2);
        assert!(!g.fresh(A, 2), "A advanced last and is kept");
        assert!(g.fresh(B, 1), "B was forgotten");
    }

    #[test]
    fn snapshot_restores_and_checks_sizes() {
        let mut g = ReplayGuard::new(128, 8);
        for s in [5, 7, 200, 150] {
            assert!(take(&mut g, A, s));
        }
        let mut h = ReplayGuard::new(128, 8);
        h.restore(g.snapshot()).unwrap();
        for s in [5, 7, 200, 150] {
            assert!(!h.fresh(A, s));
        }
        assert!(h.fresh(A, 151));
        assert!(ReplayGuard::new(64, 8).restore(g.snapshot()).is_err());
        assert!(ReplayGuard::new(128, 0).restore(g.snapshot()).is_ok());
        let mut two = ReplayGuard::new(128, 8);
        take(&mut two, A, 1);
        take(&mut two, B, 1);
        assert!(ReplayGuard::new(128, 1).restore(two.snapshot()).is_err());
    }

    proptest! {
        /// Against a model that remembers every accepted number: a packet
        /// is accepted iff it was never accepted and is not `size` or more
        /// below the highest accepted.
        #[test]
        fn window_matches_the_model(
            size in prop_oneof![Just(64u64), Just(128), Just(1024)],
            seqs in proptest::collection::vec(0u64..3000, 1..600),
        ) {
            let mut g = ReplayGuard::new(size, 4);
            let mut seen = HashSet::new();
            let mut top: Option<u64> = None;
            for s in seqs {
                let expect = !seen.contains(&s) && top.is_none_or(|t| s > t || t - s < size);
                prop_assert_eq!(take(&mut g, A, s), expect, "seq {}", s);
                if expect {
                    seen.insert(s);
                    top = Some(top.map_or(s, |t| t.max(s)));
                }
            }
        }
    }
}
