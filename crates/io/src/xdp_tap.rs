//! The XDP tap: `braid capture` on an NF placed in the kernel.
//!
//! Every braid XDP program carries a tap (see `bpf/braid_xdp.h`): the tap
//! words, one `u32` per NF slot saying which points are tapped (bit
//! `1 << point`, 0 when nobody captures: the program's cost is then one
//! load and a branch not taken), held as global data (the object's `.bss`,
//! an array map of one element whose value is the words of every slot),
//! and `tap_ring`, a BPF ring
//! buffer of samples: the frame (up to [`TAP_SNAP`] bytes) at the NF's input,
//! output or drop, with the slot, the point, the drop reason, the ingress
//! interface and a `CLOCK_MONOTONIC` timestamp. A sample the ring has no room
//! for is lost and counted in the slot's `TapLost` counter.
//!
//! [`XdpTapReader`] is one capture on one slot: it opens the maps again on
//! duplicates of the loader's descriptors (so it does not borrow the
//! program, which its owner keeps, and needs no `CAP_SYS_ADMIN`, as
//! opening them by kernel id would), turns the tap on, hands out decoded
//! [`TapSample`]s, and on drop turns the tap off (or back to what the other captures of the slot
//! ask for). Several captures may run on one program at once: the
//! captures of a ring in one process share its reader, which hands each
//! sample to the queue of every capture whose slot and points it matches;
//! the last one to go empties the ring.

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use aya::maps::{Array, Map, MapData, PerCpuArray, RingBuf};

use crate::xdp::{kernel, XdpError};

/// Bytes of a frame a sample holds (`BRAID_TAP_SNAP`); longer frames are
/// cut, their original length kept.
pub const TAP_SNAP: usize = 1536;

/// The sample layout version (`BRAID_TAP_VERSION`).
pub const TAP_VERSION: u8 = 1;

/// Bytes before the frame in a sample (`struct braid_tap_sample`).
pub const TAP_HEADER: usize = 24;

/// `BRAID_TAP_LOST` in `enum braid_counter`.
pub(crate) const TAP_LOST_COUNTER: u32 = 7;

/// `BRAID_DROP` and `BRAID_MALFORMED` in `enum braid_counter`: the drop
/// reasons a sample carries.
const REASON_DROP: u8 = 3;
const REASON_MALFORMED: u8 = 6;

/// Where in an NF a frame was tapped (`enum braid_tap_point`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TapPoint {
    /// Entering the NF.
    In = 0,
    /// Leaving it (before the forwarding MAC rewrite).
    Out = 1,
    /// Dropped by it, as it entered.
    Drop = 2,
}

impl TapPoint {
    fn from_code(c: u8) -> Option<TapPoint> {
        match c {
            0 => Some(TapPoint::In),
            1 => Some(TapPoint::Out),
            2 => Some(TapPoint::Drop),
            _ => None,
        }
    }
}

/// Why a kernel NF dropped a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TapDropReason {
    /// A rule or the default action (`BRAID_DROP`).
    Denied,
    /// Headers too short or inconsistent (`BRAID_MALFORMED`).
    Malformed,
}

/// The tap word for `points`.
pub fn points_word(points: &[TapPoint]) -> u32 {
    points.iter().fold(0, |w, p| w | 1 << *p as u32)
}

/// One decoded sample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TapSample {
    /// `CLOCK_MONOTONIC` ns (`bpf_ktime_get_ns`).
    pub mono_ns: u64,
    /// The interface the frame arrived on.
    pub ifindex: u32,
    /// The frame's whole length (`frame` may be shorter: [`TAP_SNAP`]).
    pub orig_len: u32,
    pub slot: u8,
    pub point: TapPoint,
    /// Drops only.
    pub reason: Option<TapDropReason>,
    pub frame: Vec<u8>,
}

/// A sample that does not have the layout the programs write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TapDecodeError {
    #[error("{0} bytes, shorter than the {TAP_HEADER}-byte sample header")]
    Short(usize),
    #[error("version {0}, expected {TAP_VERSION}")]
    Version(u8),
    #[error("point code {0} (0 in, 1 out, 2 drop)")]
    Point(u8),
    #[error("drop reason code {reason} on a sample at point {point:?}")]
    Reason { point: TapPoint, reason: u8 },
    #[error("captured length {cap} is over the snap length {TAP_SNAP} or the frame length {orig}")]
    CapLen { cap: usize, orig: u32 },
    #[error("captured length {cap} but only {have} bytes follow the header")]
    Truncated { cap: usize, have: usize },
}

impl TapSample {
    /// Decode one ring-buffer record (`struct braid_tap_sample`, native
    /// byte order).
    pub fn decode(b: &[u8]) -> Result<TapSample, TapDecodeError> {
        if b.len() < TAP_HEADER {
            return Err(TapDecodeError::Short(b.len()));
        }
        let u64_at = |i: usize| u64::from_ne_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_ne_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let cap = u16::from_ne_bytes([b[16], b[17]]) as usize;
        let (slot, point, reason, version) = (b[18], b[19], b[20], b[21]);
        if version != TAP_VERSION {
            return Err(TapDecodeError::Version(version));
        }
        let point = TapPoint::from_code(point).ok_or(TapDecodeError::Point(point))?;
        let reason = match (point, reason) {
            (TapPoint::Drop, REASON_DROP) => Some(TapDropReason::Denied),
            (TapPoint::Drop, REASON_MALFORMED) => Some(TapDropReason::Malformed),
            (TapPoint::In | TapPoint::Out, 0) => None,
            (point, reason) => return Err(TapDecodeError::Reason { point, reason }),
        };
        let orig_len = u32_at(12);
        if cap > TAP_SNAP || cap as u64 > u64::from(orig_len) {
            return Err(TapDecodeError::CapLen { cap, orig: orig_len });
        }
        let have = b.len() - TAP_HEADER;
        if cap > have {
            return Err(TapDecodeError::Truncated { cap, have });
        }
        Ok(TapSample {
            mono_ns: u64_at(0),
            ifindex: u32_at(8),
            orig_len,
            slot,
            point,
            reason,
            frame: b[TAP_HEADER..TAP_HEADER + cap].to_vec(),
        })
    }
}

/// A loaded program's tap maps, to open them again
/// ([`XdpTapReader::start`]); `slots` is how many NF slots it has.
/// Equal when they are the same maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdpTapMaps {
    pub(crate) words: TapMap,
    pub(crate) ring: TapMap,
    pub(crate) counters: TapMap,
    pub(crate) slots: u32,
}

/// One map: its kernel id (what identifies it) and a descriptor of its
/// own, a duplicate of the loader's. A capture opens the map from a
/// duplicate of that descriptor: opening it by id
/// (`BPF_MAP_GET_FD_BY_ID`) would need `CAP_SYS_ADMIN`, which braidd does
/// not otherwise need (docs/daemon.md, "Least privilege").
#[derive(Clone, Debug)]
pub(crate) struct TapMap {
    id: u32,
    fd: Arc<OwnedFd>,
}

impl PartialEq for TapMap {
    fn eq(&self, other: &TapMap) -> bool {
        self.id == other.id
    }
}

impl Eq for TapMap {}

/// The global-data map holding `braid_tap_words`.
pub(crate) const WORDS_MAP: &str = ".bss";

impl XdpTapMaps {
    /// The tap words, `tap_ring` and `counters` of `ebpf`.
    pub(crate) fn of(ebpf: &aya::Ebpf, slots: u32) -> Result<XdpTapMaps, XdpError> {
        let map = |name: &str| -> Result<TapMap, XdpError> {
            let data = match ebpf.map(name) {
                Some(Map::Array(d) | Map::RingBuf(d) | Map::PerCpuArray(d)) => d,
                Some(_) => return Err(XdpError::Config(format!("map {name} has the wrong type"))),
                None => return Err(XdpError::Config(format!("the XDP object has no map {name}"))),
            };
            let id = data.info().map_err(kernel(format!("id of map {name}")))?.id();
            let fd = data
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(kernel(format!("duplicating the fd of map {name}")))?;
            Ok(TapMap { id, fd: Arc::new(fd) })
        };
        Ok(XdpTapMaps {
            words: map(WORDS_MAP)?,
            ring: map("tap_ring")?,
            counters: map("counters")?,
            slots,
        })
    }
}

/// The tap words of a single-NF program (one slot) or of the chain
/// program (`BRAID_SLOTS` = [`crate::xdp::CHAIN_MAX_STAGES`]).
enum TapWords {
    One(Array<MapData, [u32; 1]>),
    Chain(Array<MapData, [u32; crate::xdp::CHAIN_MAX_STAGES]>),
}

impl TapWords {
    fn open(map: &TapMap) -> Result<Self, XdpError> {
        let data = open(map, "the tap words (.bss)")?;
        let size = data.info().map_err(kernel("the tap words' map info"))?.value_size();
        let map = Map::Array(data);
        Ok(match size as usize {
            4 => TapWords::One(Array::try_from(map).map_err(kernel("the tap words"))?),
            _ => TapWords::Chain(Array::try_from(map).map_err(kernel("the tap words"))?),
        })
    }

    /// Set the word of `slot` (the map's single value is read, changed
    /// and written back; only the hub, under its lock, writes it).
    fn set(&mut self, slot: u32, word: u32) -> Result<(), XdpError> {
        match self {
            TapWords::One(a) => set_word(a, slot, word),
            TapWords::Chain(a) => set_word(a, slot, word),
        }
    }
}

/// Set `slot`'s word in the single value of a tap-words array of `N` slots.
fn set_word<const N: usize>(
    a: &mut Array<MapData, [u32; N]>,
    slot: u32,
    word: u32,
) -> Result<(), XdpError> {
    let what = || format!("tap word {slot} = {word:#x}");
    let mut v = a.get(&0, 0).map_err(kernel(what()))?;
    *v.get_mut(slot as usize).ok_or_else(|| XdpError::Config(what()))? = word;
    a.set(0, v, 0).map_err(kernel(what()))
}

/// The tap word of `slot` in a program's `.bss` map.
pub(crate) fn read_word(map: &Map, slot: u32) -> Result<u32, XdpError> {
    let what = || format!("tap word {slot}");
    let words = match Array::<&MapData, [u32; 1]>::try_from(map) {
        Ok(a) => a.get(&0, 0).map_err(kernel(what()))?.to_vec(),
        Err(_) => Array::<&MapData, [u32; crate::xdp::CHAIN_MAX_STAGES]>::try_from(map)
            .map_err(kernel(what()))?
            .get(&0, 0)
            .map_err(kernel(what()))?
            .to_vec(),
    };
    words.get(slot as usize).copied().ok_or_else(|| XdpError::Config(what()))
}

/// Samples one capture may have waiting before it loses the next ones
/// (as the user-space tap's channel).
pub const TAP_QUEUE: usize = 8192;

/// One capture's share of a ring: its slot, its points, what it has not
/// read yet.
struct Sub {
    id: u64,
    slot: u32,
    word: u32,
    queue: VecDeque<TapSample>,
    /// Samples for it that did not fit in `queue`.
    overflow: u64,
}

struct HubInner {
    words: TapWords,
    ring: RingBuf<MapData>,
    subs: Vec<Sub>,
}

impl HubInner {
    /// Set the slot's tap word to what its captures ask for together.
    fn set_word(&mut self, slot: u32) -> Result<(), XdpError> {
        let word = self.subs.iter().filter(|s| s.slot == slot).fold(0, |w, s| w | s.word);
        self.words.set(slot, word)
    }

    /// Move every sample in the ring to the queues of the captures that
    /// asked for it.
    fn pump(&mut self) -> Result<(), XdpError> {
        while let Some(item) = self.ring.next() {
            let s = TapSample::decode(&item)?;
            drop(item);
            let bit = 1 << s.point as u32;
            for sub in &mut self.subs {
                if sub.slot == u32::from(s.slot) && sub.word & bit != 0 {
                    if sub.queue.len() < TAP_QUEUE {
                        sub.queue.push_back(s.clone());
                    } else {
                        sub.overflow += 1;
                    }
                }
            }
        }
        Ok(())
    }

    fn drain(&mut self) {
        // Bounded: the ring holds at most 2 MiB of samples.
        for _ in 0..1 << 16 {
            if self.ring.next().is_none() {
                break;
            }
        }
    }
}

/// The reading side of one program's ring, shared by its captures.
struct Hub {
    ring_id: u32,
    inner: Mutex<HubInner>,
    /// The ring's descriptor, to wait on without holding `inner`.
    poll_fd: OwnedFd,
}

/// Rings (by map id) read in this process.
static HUBS: Mutex<Vec<(u32, Weak<Hub>)>> = Mutex::new(Vec::new());
static NEXT_SUB: AtomicU64 = AtomicU64::new(1);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hub {
    /// The hub of the ring `maps.ring`, opened if nobody reads it yet.
    fn of(maps: &XdpTapMaps) -> Result<Arc<Hub>, XdpError> {
        let mut hubs = lock(&HUBS);
        hubs.retain(|(_, w)| w.strong_count() > 0);
        let ring_id = maps.ring.id;
        if let Some(h) = hubs.iter().find(|(id, _)| *id == ring_id).and_then(|(_, w)| w.upgrade()) {
            return Ok(h);
        }
        let words = TapWords::open(&maps.words)?;
        let ring = RingBuf::try_from(Map::RingBuf(open(&maps.ring, "tap_ring")?))
            .map_err(kernel("map tap_ring"))?;
        let poll_fd =
            ring.as_fd().try_clone_to_owned().map_err(kernel("duplicating the tap_ring fd"))?;
        let mut inner = HubInner { words, ring, subs: Vec::new() };
        // Nothing from an earlier capture is read as this one's.
        inner.drain();
        let hub = Arc::new(Hub { ring_id, inner: Mutex::new(inner), poll_fd });
        hubs.push((ring_id, Arc::downgrade(&hub)));
        Ok(hub)
    }

    /// Wait until the ring has data or `timeout` passes.
    fn wait(&self, timeout: Duration) -> Result<(), XdpError> {
        let mut pfd =
            [libc::pollfd { fd: self.poll_fd.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
        if crate::sleep::ppoll(&mut pfd, timeout) < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(XdpError::Kernel {
                    what: "poll on tap_ring".into(),
                    source: Box::new(e),
                });
            }
        }
        Ok(())
    }
}

/// `map` opened on a descriptor of its own.
fn open(map: &TapMap, what: &str) -> Result<MapData, XdpError> {
    let id = map.id;
    let fd = map.fd.try_clone().map_err(kernel(format!("duplicating the fd of map {what}")))?;
    MapData::from_fd(fd).map_err(kernel(format!("opening map {what} (id {id})")))
}

/// One capture on one NF slot of a loaded XDP program (see the module
/// documentation). Dropping it takes its points out of the slot's tap
/// word (0 when it was the last capture there); the last capture of a
/// program empties its ring.
pub struct XdpTapReader {
    hub: Arc<Hub>,
    id: u64,
    slot: u32,
    counters: PerCpuArray<MapData, u64>,
    lost_base: u64,
    /// Wall clock minus `CLOCK_MONOTONIC`, ns, read at the start.
    mono_to_real: i128,
}

impl std::fmt::Debug for XdpTapReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpTapReader")
            .field("slot", &self.slot)
            .field("ring", &self.hub.ring_id)
            .field("id", &self.id)
            .finish()
    }
}

impl XdpTapReader {
    /// Tap `points` of `slot` of the program whose maps are `maps`.
    /// Several captures may run on one program (and one slot) at once:
    /// each gets the samples of its own slot and points.
    pub fn start(
        maps: &XdpTapMaps,
        slot: u32,
        points: &[TapPoint],
    ) -> Result<XdpTapReader, XdpError> {
        if slot >= maps.slots {
            return Err(XdpError::Config(format!(
                "the XDP program has {} NF slots, no slot {slot}",
                maps.slots
            )));
        }
        let word = points_word(points);
        if word == 0 {
            return Err(XdpError::Config("a capture taps at least one point".into()));
        }
        let counters = PerCpuArray::try_from(Map::PerCpuArray(open(&maps.counters, "counters")?))
            .map_err(kernel("map counters"))?;
        let hub = Hub::of(maps)?;
        let id = NEXT_SUB.fetch_add(1, Ordering::Relaxed);
        let mut r =
            XdpTapReader { hub, id, slot, counters, lost_base: 0, mono_to_real: mono_to_real() };
        r.lost_base = r.ring_lost()?;
        let mut inner = lock(&r.hub.inner);
        inner.subs.push(Sub { id, slot, word, queue: VecDeque::new(), overflow: 0 });
        if let Err(e) = inner.set_word(slot) {
            inner.subs.retain(|s| s.id != id);
            let _ = inner.set_word(slot);
            return Err(e);
        }
        drop(inner);
        Ok(r)
    }

    /// The slot this capture taps.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// Wall-clock ns since the Unix epoch of a sample's monotonic time.
    pub fn wall_ns(&self, mono_ns: u64) -> u64 {
        (i128::from(mono_ns) + self.mono_to_real).clamp(0, i128::from(u64::MAX)) as u64
    }

    /// The next sample of this capture, waiting up to `timeout`;
    /// `Ok(None)` if none came. A sample with the wrong layout is an error
    /// (it is consumed).
    pub fn next(&mut self, timeout: Duration) -> Result<Option<TapSample>, XdpError> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let mut inner = lock(&self.hub.inner);
                let mine = |inner: &mut HubInner| {
                    let sub = inner.subs.iter_mut().find(|s| s.id == self.id);
                    sub.and_then(|s| s.queue.pop_front())
                };
                if let Some(s) = mine(&mut inner) {
                    return Ok(Some(s));
                }
                inner.pump()?;
                if let Some(s) = mine(&mut inner) {
                    return Ok(Some(s));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.hub.wait(left)?;
        }
    }

    /// Samples for this capture that were lost since it started: those of
    /// its slot the ring had no room for (counted before any filter, so
    /// shared by the captures of the slot) and its own that did not fit
    /// its queue of [`TAP_QUEUE`].
    pub fn lost(&self) -> Result<u64, XdpError> {
        let overflow =
            lock(&self.hub.inner).subs.iter().find(|s| s.id == self.id).map_or(0, |s| s.overflow);
        Ok(self.ring_lost()?.saturating_sub(self.lost_base) + overflow)
    }

    fn ring_lost(&self) -> Result<u64, XdpError> {
        let at = self.slot * crate::xdp::COUNTERS_PER_SLOT + TAP_LOST_COUNTER;
        let v = self.counters.get(&at, 0).map_err(kernel(format!("counters[{at}]")))?;
        Ok(v.iter().sum())
    }
}

impl Drop for XdpTapReader {
    fn drop(&mut self) {
        let mut inner = lock(&self.hub.inner);
        inner.subs.retain(|s| s.id != self.id);
        let _ = inner.set_word(self.slot);
        if inner.subs.is_empty() {
            inner.drain();
        }
    }
}

/// `CLOCK_REALTIME - CLOCK_MONOTONIC` in ns (the ring's timestamps are
/// `bpf_ktime_get_ns`, braid's monotonic clock).
fn mono_to_real() -> i128 {
    let real = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128)
    };
    let m0 = i128::from(braid_packet::clock::monotonic_ns());
    let r = real();
    let m1 = i128::from(braid_packet::clock::monotonic_ns());
    r - (m0 + m1) / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(cap: u16, slot: u8, point: u8, reason: u8, version: u8, data: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&123_456_789u64.to_ne_bytes());
        b.extend_from_slice(&7u32.to_ne_bytes());
        b.extend_from_slice(&(data.len() as u32).to_ne_bytes());
        b.extend_from_slice(&cap.to_ne_bytes());
        b.extend_from_slice(&[slot, point, reason, version, 0, 0]);
        b.extend_from_slice(data);
        b
    }

    #[test]
    fn samples_decode() {
        let frame: Vec<u8> = (0..60).collect();
        let s = TapSample::decode(&sample(60, 2, 1, 0, 1, &frame)).unwrap();
        assert_eq!(
            s,
            TapSample {
                mono_ns: 123_456_789,
                ifindex: 7,
                orig_len: 60,
                slot: 2,
                point: TapPoint::Out,
                reason: None,
                frame: frame.clone()
            }
        );
        let d = TapSample::decode(&sample(60, 0, 2, 3, 1, &frame)).unwrap();
        assert_eq!((d.point, d.reason), (TapPoint::Drop, Some(TapDropReason::Denied)));
        let m = TapSample::decode(&sample(60, 0, 2, 6, 1, &frame)).unwrap();
        assert_eq!(m.reason, Some(TapDropReason::Malformed));
        // A ring record is padded past the captured bytes: the rest is
        // not part of the frame.
        let mut padded = sample(10, 0, 0, 0, 1, &frame);
        padded.truncate(TAP_HEADER + 16);
        let short = TapSample::decode(&padded);
        // orig_len 60, cap 10: a cut frame.
        assert_eq!(short.unwrap().frame, &frame[..10]);
    }

    #[test]
    fn malformed_samples_are_refused() {
        let f = [0u8; 40];
        let e = |b: &[u8]| TapSample::decode(b).unwrap_err();
        assert_eq!(e(&[0; 23]), TapDecodeError::Short(23));
        assert_eq!(e(&sample(40, 0, 0, 0, 2, &f)), TapDecodeError::Version(2));
        assert_eq!(e(&sample(40, 0, 3, 0, 1, &f)), TapDecodeError::Point(3));
        assert_eq!(
            e(&sample(40, 0, 0, 3, 1, &f)),
            TapDecodeError::Reason { point: TapPoint::In, reason: 3 }
        );
        assert_eq!(
            e(&sample(40, 0, 2, 5, 1, &f)),
            TapDecodeError::Reason { point: TapPoint::Drop, reason: 5 }
        );
        assert_eq!(e(&sample(41, 0, 0, 0, 1, &f)), TapDecodeError::CapLen { cap: 41, orig: 40 });
        let mut cut = sample(40, 0, 0, 0, 1, &f);
        cut.truncate(TAP_HEADER + 39);
        assert_eq!(e(&cut), TapDecodeError::Truncated { cap: 40, have: 39 });
        let mut huge = sample(1537, 0, 0, 0, 1, &f);
        huge[12..16].copy_from_slice(&9000u32.to_ne_bytes());
        assert_eq!(e(&huge), TapDecodeError::CapLen { cap: 1537, orig: 9000 });
        assert!(e(&[0; 23]).to_string().contains("shorter than the 24-byte"));
    }

    #[test]
    fn points_make_the_config_word() {
        assert_eq!(points_word(&[]), 0);
        assert_eq!(points_word(&[TapPoint::In]), 1);
        assert_eq!(points_word(&[TapPoint::Out, TapPoint::Drop]), 6);
        assert_eq!(points_word(&[TapPoint::In, TapPoint::Out, TapPoint::Drop]), 7);
    }
}
