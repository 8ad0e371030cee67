//! Slot ownership: who may touch which packet slot right now.
//!
//! The slots are split in two halves; side 0 is the *home* of the first half,
//! side 1 of the second. A slot is owned by exactly one side at a time:
//!
//! * the home side starts with it in its free list;
//! * sending it in a data descriptor gives it to the peer;
//! * the side that holds it may send it on again (a reflector returns a
//!   packet without copying), or drop the packet: a dropped slot goes to the
//!   free list if this side is its home, else back home over the return ring.
//!
//! Each side keeps this book privately. Everything the peer claims (a data
//! descriptor naming a slot, a slot on the return ring) is checked against
//! it, so a peer cannot make this side hand out a slot twice, or accept a
//! slot this side is still using.

/// What to do with a slot whose packet was dropped on this side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Released {
    /// Home slot: it went back to the free list.
    Free,
    /// The peer's slot: push it on the return ring.
    Return,
    /// This side does not own the slot (it was sent on before the handle was
    /// dropped, or the channel was reset): nothing to do.
    NotOwned,
}

/// Why a slot claim from the peer was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    OutOfRange,
    AlreadyOwned,
    NotHome,
}

/// One side's view of slot ownership.
#[derive(Debug)]
pub struct SlotBook {
    side: u8,
    slots: u32,
    owned: Vec<bool>,
    free: Vec<u32>,
}

impl SlotBook {
    /// The book of `side` (0 or 1) for `slots` slots (even, >= 2).
    pub fn new(side: u8, slots: u32) -> SlotBook {
        let mut b = SlotBook { side, slots, owned: vec![false; slots as usize], free: Vec::new() };
        let half = slots / 2;
        let home = if side == 0 { 0..half } else { half..slots };
        for s in home.rev() {
            b.owned[s as usize] = true;
            b.free.push(s);
        }
        b
    }

    /// The side a slot belongs to.
    #[inline]
    pub fn home(&self, slot: u32) -> u8 {
        (slot >= self.slots / 2) as u8
    }

    /// Take a free home slot (stays owned by this side).
    #[inline]
    pub fn take_free(&mut self) -> Option<u32> {
        self.free.pop()
    }

    /// Free slots left.
    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    /// Slots this side owns (free or in use).
    pub fn owned_count(&self) -> usize {
        self.owned.iter().filter(|o| **o).count()
    }

    /// The peer sent `slot` in a data descriptor.
    #[inline]
    pub fn accept_data(&mut self, slot: u32) -> Result<(), Refused> {
        match self.owned.get_mut(slot as usize) {
            None => Err(Refused::OutOfRange),
            Some(true) => Err(Refused::AlreadyOwned),
            Some(o) => {
                *o = true;
                Ok(())
            }
        }
    }

    /// The peer returned `slot` on the return ring.
    pub fn accept_return(&mut self, slot: u32) -> Result<(), Refused> {
        if slot >= self.slots {
            return Err(Refused::OutOfRange);
        }
        if self.home(slot) != self.side {
            return Err(Refused::NotHome);
        }
        self.accept_data(slot)?;
        self.free.push(slot);
        Ok(())
    }

    /// This side sends `slot` to the peer. False if it does not own it.
    #[inline]
    pub fn give(&mut self, slot: u32) -> bool {
        match self.owned.get_mut(slot as usize) {
            Some(o) if *o => {
                *o = false;
                true
            }
            _ => false,
        }
    }

    /// The packet holding `slot` was dropped on this side.
    #[inline]
    pub fn release(&mut self, slot: u32) -> Released {
        match self.owned.get(slot as usize) {
            Some(true) if self.home(slot) == self.side => {
                self.free.push(slot);
                Released::Free
            }
            Some(true) => {
                self.owned[slot as usize] = false;
                Released::Return
            }
            _ => Released::NotOwned,
        }
    }

    /// Slots the peer holds now: what a dead peer leaves behind.
    pub fn held_by_peer(&self) -> usize {
        self.slots as usize - self.owned_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn halves_and_round_trip() {
        let mut a = SlotBook::new(0, 8);
        let mut b = SlotBook::new(1, 8);
        assert_eq!((a.free_count(), b.free_count()), (4, 4));
        let s = a.take_free().unwrap();
        assert!(a.give(s));
        b.accept_data(s).unwrap();
        assert_eq!(b.accept_data(s), Err(Refused::AlreadyOwned));
        assert_eq!(b.release(s), Released::Return);
        assert_eq!(b.release(s), Released::NotOwned, "released once only");
        a.accept_return(s).unwrap();
        assert_eq!(a.accept_return(s), Err(Refused::AlreadyOwned));
        assert_eq!(a.free_count(), 4);
        assert_eq!(a.accept_return(6), Err(Refused::NotHome));
        assert_eq!(a.accept_data(99), Err(Refused::OutOfRange));
    }

    #[derive(Clone, Debug)]
    enum Op {
        Send { from: bool, pick: usize },
        Drop { side: bool, pick: usize },
        Forged { to: bool, slot: u32, ret: bool },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (any::<bool>(), any::<usize>()).prop_map(|(from, pick)| Op::Send { from, pick }),
            (any::<bool>(), any::<usize>()).prop_map(|(side, pick)| Op::Drop { side, pick }),
            (any::<bool>(), 0u32..20, any::<bool>()).prop_map(|(to, slot, ret)| Op::Forged {
                to,
                slot,
                ret
            }),
        ]
    }

    proptest! {
        /// Honest traffic plus forged claims: a slot is never owned by both
        /// sides, and forged claims never succeed for a slot the victim owns.
        #[test]
        fn a_slot_has_one_owner(ops in proptest::collection::vec(op(), 0..300)) {
            const N: u32 = 16;
            let mut books = [SlotBook::new(0, N), SlotBook::new(1, N)];
            // slots in use by packets on each side (owned, not free)
            let mut in_use: [Vec<u32>; 2] = [vec![], vec![]];
            for op in ops {
                match op {
                    Op::Send { from, pick } => {
                        let f = from as usize;
                        let slot = if in_use[f].is_empty() || pick % 2 == 0 {
                            match books[f].take_free() { Some(s) => s, None => continue }
                        } else {
                            in_use[f].remove(pick % in_use[f].len())
                        };
                        prop_assert!(books[f].give(slot));
                        prop_assert!(books[1 - f].accept_data(slot).is_ok());
                        in_use[1 - f].push(slot);
                    }
                    Op::Drop { side, pick } => {
                        let s = side as usize;
                        if in_use[s].is_empty() { continue }
                        let slot = in_use[s].remove(pick % in_use[s].len());
                        match books[s].release(slot) {
                            Released::Free => {}
                            Released::Return => prop_assert!(books[1 - s].accept_return(slot).is_ok()),
                            Released::NotOwned => prop_assert!(false, "owned slot reported not owned"),
                        }
                    }
                    Op::Forged { to, slot, ret } => {
                        let t = to as usize;
                        let owned_before = books[t].owned.get(slot as usize).copied();
                        let r = if ret { books[t].accept_return(slot) } else { books[t].accept_data(slot) };
                        if owned_before == Some(true) || slot >= N { prop_assert!(r.is_err()); }
                        if r.is_ok() {
                            // the forged slot is now this side's; keep the model in step
                            if ret { in_use[t].retain(|s| *s != slot); } else { in_use[t].push(slot); }
                            // the peer may still think it owns it: that is the
                            // forger's problem, but our own book stays sane
                            books[1 - t].owned[slot as usize] = false;
                            for v in in_use[1 - t].iter_mut() { if *v == slot { *v = u32::MAX; } }
                            in_use[1 - t].retain(|s| *s != u32::MAX);
                            books[1 - t].free.retain(|s| *s != slot);
                        }
                    }
                }
                for s in 0..N as usize {
                    prop_assert!(!(books[0].owned[s] && books[1].owned[s]), "slot {s} owned twice");
                }
                for b in &books {
                    let mut f = b.free.clone();
                    f.sort_unstable();
                    f.dedup();
                    prop_assert_eq!(f.len(), b.free.len(), "free list has duplicates");
                    prop_assert!(b.free.iter().all(|s| b.owned[*s as usize]));
                }
            }
        }
    }
}
