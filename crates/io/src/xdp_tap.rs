//! The XDP tap: `braid capture` on an NF placed in the kernel.
//!
//! Every braid XDP program carries two tap maps (see `bpf/braid_xdp.h`):
//! `tap_cfg`, one `u32` per NF slot saying which points are tapped (bit
//! `1 << point`, 0 when nobody captures: the program's cost is then one
//! inlined array lookup and a branch not taken), and `tap_ring`, a BPF ring
//! buffer of samples: the frame (up to [`TAP_SNAP`] bytes) at the NF's input,
//! output or drop, with the slot, the point, the drop reason, the ingress
//! interface and a `CLOCK_MONOTONIC` timestamp. A sample the ring has no room
//! for is lost and counted in the slot's `TapLost` counter.
//!
//! [`XdpTapReader`] is one capture on one slot: it opens the maps again by
//! their kernel ids (so it does not borrow the program, which its owner
//! keeps), turns the tap on, hands out decoded [`TapSample`]s, and on drop
//! turns the tap off and empties the ring. One capture at a time per
//! loaded program (they share one ring): a second one is refused.

use std::os::fd::{AsFd, AsRawFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aya::maps::{Array, Map, MapData, PerCpuArray, RingBuf};

use crate::xdp::XdpError;

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

/// The `tap_cfg` word for `points`.
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

/// The kernel ids of a loaded program's tap maps, to open them again
/// ([`XdpTapReader::start`]); `slots` is how many NF slots it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpTapMaps {
    pub(crate) cfg: u32,
    pub(crate) ring: u32,
    pub(crate) counters: u32,
    pub(crate) slots: u32,
}

impl XdpTapMaps {
    /// The ids of `tap_cfg`, `tap_ring` and `counters` in `ebpf`.
    pub(crate) fn of(ebpf: &aya::Ebpf, slots: u32) -> Result<XdpTapMaps, XdpError> {
        let id = |name: &str| -> Result<u32, XdpError> {
            let data = match ebpf.map(name) {
                Some(Map::Array(d) | Map::RingBuf(d) | Map::PerCpuArray(d)) => d,
                Some(_) => return Err(XdpError::Config(format!("map {name} has the wrong type"))),
                None => return Err(XdpError::Config(format!("the XDP object has no map {name}"))),
            };
            Ok(data.info().map_err(kernel(format!("id of map {name}")))?.id())
        };
        Ok(XdpTapMaps {
            cfg: id("tap_cfg")?,
            ring: id("tap_ring")?,
            counters: id("counters")?,
            slots,
        })
    }
}

fn kernel<E: std::error::Error + Send + Sync + 'static>(
    what: impl Into<String>,
) -> impl FnOnce(E) -> XdpError {
    let what = what.into();
    move |e| XdpError::Kernel { what, source: Box::new(e) }
}

/// Rings (by map id) with a capture reading them, in this process.
static ACTIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// One capture on one NF slot of a loaded XDP program (see the module
/// documentation). Dropping it turns the tap off and empties the ring.
pub struct XdpTapReader {
    slot: u32,
    ring_id: u32,
    cfg: Array<MapData, u32>,
    ring: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
    lost_base: u64,
    /// Wall clock minus `CLOCK_MONOTONIC`, ns, read at the start.
    mono_to_real: i128,
}

impl std::fmt::Debug for XdpTapReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpTapReader")
            .field("slot", &self.slot)
            .field("ring", &self.ring_id)
            .finish()
    }
}

impl XdpTapReader {
    /// Tap `points` of `slot` of the program whose maps are `maps`. Refused
    /// when a capture already reads that program's ring.
    pub fn start(
        maps: XdpTapMaps,
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
        {
            let mut active = ACTIVE.lock().unwrap_or_else(|e| e.into_inner());
            if active.contains(&maps.ring) {
                return Err(XdpError::Config(
                    "a capture already runs on this XDP program (one at a time per kernel NF group)"
                        .into(),
                ));
            }
            active.push(maps.ring);
        }
        let release = || {
            ACTIVE.lock().unwrap_or_else(|e| e.into_inner()).retain(|r| *r != maps.ring);
        };
        let r = Self::open(maps, slot, word);
        if r.is_err() {
            release();
        }
        r
    }

    fn open(maps: XdpTapMaps, slot: u32, word: u32) -> Result<XdpTapReader, XdpError> {
        let open = |id: u32, what: &str| {
            MapData::from_id(id).map_err(kernel(format!("opening map {what} (id {id})")))
        };
        let cfg = Array::try_from(Map::Array(open(maps.cfg, "tap_cfg")?))
            .map_err(kernel("map tap_cfg"))?;
        let ring = RingBuf::try_from(Map::RingBuf(open(maps.ring, "tap_ring")?))
            .map_err(kernel("map tap_ring"))?;
        let counters = PerCpuArray::try_from(Map::PerCpuArray(open(maps.counters, "counters")?))
            .map_err(kernel("map counters"))?;
        let mut r = XdpTapReader {
            slot,
            ring_id: maps.ring,
            cfg,
            ring,
            counters,
            lost_base: 0,
            mono_to_real: mono_to_real(),
        };
        // Nothing from an earlier capture is read as this one's.
        r.drain();
        r.lost_base = r.lost_total()?;
        r.cfg.set(slot, word, 0).map_err(kernel(format!("tap_cfg[{slot}] = {word:#x}")))?;
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

    /// The next sample, waiting up to `timeout`; `Ok(None)` if none came.
    /// A sample with the wrong layout is an error (it is consumed).
    pub fn next(&mut self, timeout: Duration) -> Result<Option<TapSample>, XdpError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(item) = self.ring.next() {
                return TapSample::decode(&item).map(Some).map_err(XdpError::Sample);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.wait(left)?;
        }
    }

    /// Wait until the ring has data or `timeout` passes.
    fn wait(&self, timeout: Duration) -> Result<(), XdpError> {
        let mut pfd =
            libc::pollfd { fd: self.ring.as_fd().as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd on the stack for the duration of the
        // call; the ring's descriptor stays open (self is borrowed).
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
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

    /// Samples of this slot the ring had no room for since the start
    /// (before any filter).
    pub fn lost(&self) -> Result<u64, XdpError> {
        Ok(self.lost_total()?.saturating_sub(self.lost_base))
    }

    fn lost_total(&self) -> Result<u64, XdpError> {
        let at = self.slot * crate::xdp::COUNTERS_PER_SLOT + TAP_LOST_COUNTER;
        let v = self.counters.get(&at, 0).map_err(kernel(format!("counters[{at}]")))?;
        Ok(v.iter().sum())
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

impl Drop for XdpTapReader {
    fn drop(&mut self) {
        let _ = self.cfg.set(self.slot, 0, 0);
        self.drain();
        ACTIVE.lock().unwrap_or_else(|e| e.into_inner()).retain(|r| *r != self.ring_id);
    }
}

/// `CLOCK_REALTIME - CLOCK_MONOTONIC` in ns.
fn mono_to_real() -> i128 {
    let read = |clock| {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes one timespec we own; both clocks
        // exist on every Linux.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
    };
    let m0 = read(libc::CLOCK_MONOTONIC);
    let r = read(libc::CLOCK_REALTIME);
    let m1 = read(libc::CLOCK_MONOTONIC);
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
