//! `delay`: a user-space delay line, for emulating a WAN link where the
//! kernel has no `netem`. Every packet is held until its due time and then
//! released in due-time order, from `tick` (and from `process`, before and
//! after the new batch is queued, for those already due).
//!
//! Due time of a packet arriving at `t` (the batch's `now_ns`):
//! - with `rate`, it is first serialized like on a link:
//!   `departure = max(t, previous departure) + len * 8 / rate`, else
//!   `departure = t`;
//! - then `due = departure + delay + j`, `j` uniform in `[-jitter, +jitter]`
//!   from a seeded SplitMix64 stream (never before `departure`);
//! - unless `reorder: true`, `due` is raised to the previous packet's due
//!   time, so packets never overtake each other (as `netem` with `rate`).
//!
//! The two directions are independent lines (a full-duplex link): a packet
//! that came in by gate 0 leaves by gate 1 and the other way round, each
//! direction with its own serializer and at most `limit` held packets; a
//! packet arriving to a full line is dropped and counted as `overflow`.
//!
//! The resolution is the caller's: a packet leaves at the first `tick` or
//! `process` at or after its due time, so the worker's tick interval bounds
//! the extra delay (docs/nfs.md, "delay").

use std::collections::VecDeque;

use crate::{Context, DropReason, NetworkFunction, NfClass, NfSpec, ParamDoc, Placement};
use braid_packet::{Batch, Packet};

pub static SPEC: NfSpec = NfSpec {
    name: "delay",
    class: NfClass::Basic,
    placements: &[Placement::User],
    // Held packets are packets in flight (as on a wire), not state: a
    // drain marker goes through the line behind them.
    state: crate::StateKind::None,
    kernel: None,
    summary:
        "hold every packet for a fixed delay (+ jitter, link rate): WAN emulation without netem",
    params: &[
        ParamDoc {
            name: "delay",
            kind: "duration (`5ms`, `250us`, `1s`)",
            default: Some("0ms"),
            help: "one-way delay added to every packet",
        },
        ParamDoc {
            name: "jitter",
            kind: "duration",
            default: Some("0ms"),
            help: "uniform random variation of the delay in [-jitter, +jitter]",
        },
        ParamDoc {
            name: "seed",
            kind: "u64",
            default: Some("1"),
            help: "jitter's random seed; the same seed gives the same delays",
        },
        ParamDoc {
            name: "reorder",
            kind: "bool",
            default: Some("false"),
            help: "let jitter reorder packets (false: a packet never leaves before the one ahead)",
        },
        ParamDoc {
            name: "rate",
            kind: "bit/s: a number or `100mbit`, `1gbit`, `500kbit`",
            default: None,
            help: "serialize packets like a link of this rate (none: unlimited)",
        },
        ParamDoc {
            name: "limit",
            kind: "packets, >= 1",
            default: Some("1000"),
            help: "packets held per direction at most; more are dropped (overflow)",
        },
    ],
    build: |p| {
        let cfg = crate::params::parse::<Config>(p)?;
        Ok(Box::new(Delay::from_config(&cfg)?))
    },
};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    delay: Option<String>,
    #[serde(default)]
    jitter: Option<String>,
    #[serde(default = "default_seed")]
    seed: u64,
    #[serde(default)]
    reorder: bool,
    #[serde(default)]
    rate: Option<Rate>,
    #[serde(default = "default_limit")]
    limit: usize,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Rate {
    Number(f64),
    Text(String),
}

fn default_seed() -> u64 {
    1
}

fn default_limit() -> usize {
    1000
}

/// `5ms`, `250us`, `1.5s`, `100ns` -> nanoseconds (at most 60 s).
pub fn parse_duration_ns(s: &str) -> Option<u64> {
    let s = s.trim();
    let at = s.find(|c: char| c.is_ascii_alphabetic())?;
    let num: f64 = s[..at].trim().parse().ok().filter(|v: &f64| v.is_finite() && *v >= 0.0)?;
    let mult = match &s[at..] {
        "ns" => 1.0,
        "us" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        _ => return None,
    };
    let v = num * mult;
    (v <= 60e9).then_some(v.round() as u64)
}

/// `1gbit`, `100mbit`, `500kbit`, `9600bit` -> bit/s (1 ..= 10^12).
pub fn parse_rate_bps(s: &str) -> Option<f64> {
    let s = s.trim();
    let at = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let num: f64 = s[..at].trim().parse().ok().filter(|v: &f64| v.is_finite())?;
    let mult = match &s[at..] {
        "" | "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        _ => return None,
    };
    let v = num * mult;
    (1.0..=1e12).contains(&v).then_some(v)
}

/// One direction of the line: its serializer and its held packets.
#[derive(Debug, Default)]
struct Line {
    /// When the previous packet finished serializing (with `rate`).
    last_departure_ns: u64,
    /// The latest due time handed out (without `reorder`, the next one is
    /// never earlier).
    last_due_ns: u64,
    /// Held packets, sorted by due time (ties in arrival order).
    held: VecDeque<(u64, Packet)>,
}

/// The delay line: one [`Line`] per direction (a full-duplex link), so a
/// packet leaves by the gate opposite to the one it came in by, whenever
/// it is released.
#[derive(Debug)]
pub struct Delay {
    delay_ns: u64,
    jitter_ns: u64,
    reorder: bool,
    /// Nanoseconds per byte on the emulated link (None: unlimited).
    ns_per_byte: Option<f64>,
    /// Packets held per direction at most.
    limit: usize,
    rng: u64,
    lines: [Line; 2],
}

impl Delay {
    fn from_config(cfg: &Config) -> Result<Delay, crate::ConfigError> {
        let duration = |field: &str, v: &Option<String>| -> Result<u64, crate::ConfigError> {
            match v {
                None => Ok(0),
                Some(s) => parse_duration_ns(s).ok_or_else(|| {
                    crate::ConfigError::new(
                        field,
                        format!("`{s}` is not a duration up to 60 s like `5ms`, `250us`, `1s`"),
                    )
                }),
            }
        };
        let delay_ns = duration("delay", &cfg.delay)?;
        let jitter_ns = duration("jitter", &cfg.jitter)?;
        let rate = match &cfg.rate {
            None => None,
            Some(Rate::Number(v)) if (1.0..=1e12).contains(v) => Some(*v),
            Some(Rate::Number(v)) => {
                return Err(crate::ConfigError::new(
                    "rate",
                    format!("{v} bit/s is outside 1 ..= 10^12"),
                ))
            }
            Some(Rate::Text(s)) => Some(parse_rate_bps(s).ok_or_else(|| {
                crate::ConfigError::new(
                    "rate",
                    format!("`{s}` is not a rate in bit/s like `1gbit`, `100mbit`, `500kbit`"),
                )
            })?),
        };
        if cfg.limit == 0 {
            return Err(crate::ConfigError::new(
                "limit",
                "0 packets: a delay line must hold at least 1",
            ));
        }
        Ok(Delay::new(delay_ns, jitter_ns, cfg.seed, cfg.reorder, rate, cfg.limit))
    }

    /// A delay line: `delay_ns` (+ uniform `jitter_ns`), serialized at
    /// `rate_bps` if given, holding at most `limit` packets per direction.
    pub fn new(
        delay_ns: u64,
        jitter_ns: u64,
        seed: u64,
        reorder: bool,
        rate_bps: Option<f64>,
        limit: usize,
    ) -> Delay {
        Delay {
            delay_ns,
            jitter_ns,
            reorder,
            ns_per_byte: rate_bps.map(|r| 8e9 / r),
            limit: limit.max(1),
            rng: seed,
            lines: [Line::default(), Line::default()],
        }
    }

    /// Packets held now (both directions).
    pub fn held(&self) -> usize {
        self.lines.iter().map(|l| l.held.len()).sum()
    }

    /// The due time of the earliest held packet.
    pub fn next_due(&self) -> Option<u64> {
        self.lines.iter().filter_map(|l| l.held.front().map(|(d, _)| *d)).min()
    }

    fn due_time(&mut self, dir: usize, now: u64, len: usize) -> u64 {
        let line = &mut self.lines[dir];
        let departure = match self.ns_per_byte {
            Some(nspb) => {
                let start = now.max(line.last_departure_ns);
                // Rounded up: the link never carries more than its rate.
                let d = start.saturating_add((len as f64 * nspb).ceil() as u64);
                line.last_departure_ns = d;
                d
            }
            None => now,
        };
        let mut due = departure.saturating_add(self.delay_ns);
        if self.jitter_ns > 0 {
            let r = braid_coding::header::splitmix64(&mut self.rng);
            let offset = r % (2 * self.jitter_ns + 1);
            // due + offset - jitter, never before the departure.
            due = due.saturating_add(offset).saturating_sub(self.jitter_ns).max(departure);
        }
        if !self.reorder {
            due = due.max(line.last_due_ns);
        }
        line.last_due_ns = line.last_due_ns.max(due);
        due
    }

    /// Queue one packet that arrived at `now` on gate `meta.in_port` (0 or
    /// 1; anything else counts as 0); it will leave by the other gate.
    /// Gives it back if its direction is full.
    pub fn enqueue(&mut self, mut p: Packet, now: u64) -> Result<(), Packet> {
        let dir = usize::from(p.meta.in_port == 1);
        if self.lines[dir].held.len() >= self.limit {
            return Err(p);
        }
        p.meta.out_port = 1 - dir as u16;
        let due = self.due_time(dir, now, p.len());
        let held = &mut self.lines[dir].held;
        // Sorted by due time, ties in arrival order; without reordering
        // this is always the back.
        let at = held.partition_point(|(d, _)| *d <= due);
        held.insert(at, (due, p));
        Ok(())
    }

    /// Move every packet due at `now` into `out`, in order per direction.
    pub fn release(&mut self, now: u64, out: &mut Batch) {
        for line in &mut self.lines {
            while line.held.front().is_some_and(|(due, _)| *due <= now) {
                if let Some((_, p)) = line.held.pop_front() {
                    out.push(p);
                }
            }
        }
    }
}

impl NetworkFunction for Delay {
    fn spec(&self) -> &'static NfSpec {
        &SPEC
    }

    /// Two gates, but packets leave from `tick` in both directions, so the
    /// NF names each packet's gate (the other one than it came in by).
    fn gates(&self) -> crate::Gates {
        crate::Gates::Switch(2)
    }

    fn process(&mut self, batch: &mut Batch, cx: &mut Context<'_>) {
        let now = cx.now_ns;
        let incoming = batch.take();
        // Those already due leave first (and make room).
        self.release(now, batch);
        for p in incoming {
            if self.enqueue(p, now).is_err() {
                cx.drop_packet(DropReason::Overflow);
            }
        }
        self.release(now, batch);
    }

    fn tick(&mut self, out: &mut Batch, cx: &mut Context<'_>) {
        self.release(cx.now_ns, out);
    }

    fn wants_tick(&self) -> bool {
        self.lines.iter().any(|l| !l.held.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Counters, Params};

    fn build(yaml: &str) -> Result<Box<dyn NetworkFunction>, crate::ConfigError> {
        let p: Params = serde_yaml_ng::from_str(yaml).unwrap();
        (SPEC.build)(&p)
    }

    fn pkt(id: u32, len: usize) -> Packet {
        let mut v = vec![0u8; len.max(4)];
        v[..4].copy_from_slice(&id.to_be_bytes());
        Packet::from_bytes(&v)
    }

    fn id(p: &Packet) -> u32 {
        u32::from_be_bytes(p.data()[..4].try_into().unwrap())
    }

    /// Offer `(arrival_ns, id, len)` in order, ticking every `tick_ns`;
    /// returns `(id, leave_ns)` and the counters.
    fn run(
        nf: &mut dyn NetworkFunction,
        arrivals: &[(u64, u32, usize)],
        tick_ns: u64,
        until: u64,
    ) -> (Vec<(u32, u64)>, Counters) {
        let mut c = Counters::default();
        let mut out = Vec::new();
        let mut i = 0;
        let mut t = 0;
        while t <= until {
            let mut b = Batch::new();
            while i < arrivals.len() && arrivals[i].0 <= t {
                b.push(pkt(arrivals[i].1, arrivals[i].2));
                i += 1;
            }
            if !b.is_empty() {
                nf.process(&mut b, &mut Context::new(t, &mut c));
                out.extend(b.iter().map(|p| (id(p), t)));
            }
            let mut o = Batch::new();
            nf.tick(&mut o, &mut Context::new(t, &mut c));
            out.extend(o.iter().map(|p| (id(p), t)));
            t += tick_ns;
        }
        (out, c)
    }

    #[test]
    fn holds_each_packet_for_the_delay() {
        let mut nf = build("delay: 5ms").unwrap();
        let arr: Vec<_> = (0..10).map(|i| (i as u64 * 1_000_000, i, 100)).collect();
        let (out, _) = run(&mut *nf, &arr, 100_000, 30_000_000);
        assert_eq!(out.len(), 10);
        for (k, (id, leave)) in out.iter().enumerate() {
            assert_eq!(*id, k as u32);
            assert_eq!(*leave, k as u64 * 1_000_000 + 5_000_000, "packet {k}");
        }
    }

    #[test]
    fn zero_delay_passes_straight_through_process() {
        let mut nf = build("{}").unwrap();
        let mut c = Counters::default();
        let mut b: Batch = (0..5).map(|i| pkt(i, 60)).collect();
        nf.process(&mut b, &mut Context::new(42, &mut c));
        assert_eq!(b.iter().map(id).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn due_packets_leave_at_the_start_of_process() {
        let mut nf = build("delay: 1ms").unwrap();
        let mut c = Counters::default();
        let mut b: Batch = vec![pkt(1, 60)].into_iter().collect();
        nf.process(&mut b, &mut Context::new(0, &mut c));
        assert!(b.is_empty());
        let mut b: Batch = vec![pkt(2, 60)].into_iter().collect();
        nf.process(&mut b, &mut Context::new(1_000_000, &mut c));
        assert_eq!(b.iter().map(id).collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn rate_serializes_like_a_link() {
        // 8 Mbit/s: 1000 B take 1 ms. Ten back to back at t=0 leave 1 ms apart.
        let mut nf = build("delay: 2ms\nrate: 8mbit").unwrap();
        let arr: Vec<_> = (0..10).map(|i| (0, i, 1000)).collect();
        let (out, _) = run(&mut *nf, &arr, 50_000, 20_000_000);
        let leaves: Vec<u64> = out.iter().map(|o| o.1).collect();
        let want: Vec<u64> = (1..=10).map(|k| k * 1_000_000 + 2_000_000).collect();
        assert_eq!(leaves, want);
        // A number is bit/s too.
        assert!(build("rate: 8000000").is_ok());
    }

    #[test]
    fn the_two_directions_are_independent_lines() {
        // 8 Mbit/s, 1000 B = 1 ms each: 3 packets each way at t=0 leave
        // at 1, 2, 3 ms in both directions (full duplex), each by the gate
        // it did not come in by, from tick.
        let mut nf = build("rate: 8mbit\nlimit: 3").unwrap();
        let mut c = Counters::default();
        let mut b: Batch = (0..8)
            .map(|i| {
                let mut p = pkt(i, 1000);
                p.meta.in_port = (i % 2) as u16;
                p
            })
            .collect();
        nf.process(&mut b, &mut Context::new(0, &mut c));
        assert!(b.is_empty());
        assert_eq!(c.dropped(DropReason::Overflow), 2, "the limit is per direction");
        let mut seen = Vec::new();
        for ms in 1..=4 {
            let mut out = Batch::new();
            nf.tick(&mut out, &mut Context::new(ms * 1_000_000, &mut c));
            seen.extend(out.iter().map(|p| (ms, id(p), p.meta.out_port)));
        }
        assert_eq!(seen, vec![(1, 0, 1), (1, 1, 0), (2, 2, 1), (2, 3, 0), (3, 4, 1), (3, 5, 0)]);
    }

    #[test]
    fn limit_drops_are_counted_as_overflow() {
        let mut nf = build("delay: 10ms\nlimit: 3").unwrap();
        let arr: Vec<_> = (0..5).map(|i| (0, i, 60)).collect();
        let (out, c) = run(&mut *nf, &arr, 1_000_000, 20_000_000);
        assert_eq!(out.iter().map(|o| o.0).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(c.dropped(DropReason::Overflow), 2);
    }

    #[test]
    fn jitter_is_seeded_bounded_and_keeps_order_unless_reorder() {
        let arr: Vec<_> = (0..200).map(|i| (i as u64 * 100_000, i, 60)).collect();
        let go = |yaml: &str| {
            let mut nf = build(yaml).unwrap();
            run(&mut *nf, &arr, 10_000, 60_000_000).0
        };
        let a = go("delay: 5ms\njitter: 2ms\nseed: 3");
        assert_eq!(a, go("delay: 5ms\njitter: 2ms\nseed: 3"), "same seed, same delays");
        assert_ne!(a, go("delay: 5ms\njitter: 2ms\nseed: 4"));
        assert!(a.windows(2).all(|w| w[0].0 < w[1].0), "no reordering by default");
        for (id, leave) in &a {
            let arrival = *id as u64 * 100_000;
            assert!(*leave >= arrival + 3_000_000, "{id}: left before delay - jitter");
        }
        let r = go("delay: 5ms\njitter: 2ms\nseed: 3\nreorder: true");
        assert_eq!(r.len(), 200);
        assert!(r.windows(2).any(|w| w[0].0 > w[1].0), "reorder: true lets jitter reorder");
        for (id, leave) in &r {
            let arrival = *id as u64 * 100_000;
            assert!((arrival + 3_000_000..=arrival + 7_010_000).contains(leave), "{id}: {leave}");
        }
    }

    #[test]
    fn bad_params_name_the_field() {
        for (yaml, field) in [
            ("delay: 5 parsecs", "delay"),
            ("delay: 5", "delay"),
            ("delay: 2min", "delay"),
            ("jitter: -1ms", "jitter"),
            ("rate: 0", "rate"),
            ("rate: fast", "rate"),
            ("rate: 10gbyte", "rate"),
            ("limit: 0", "limit"),
            ("limit: -3", "limit"),
        ] {
            let e = build(yaml).err().unwrap_or_else(|| panic!("`{yaml}` accepted"));
            assert_eq!(e.field, field, "`{yaml}`: {e}");
        }
        assert!(build("dealy: 5ms").err().unwrap().message.contains("dealy"));
        assert_eq!(parse_duration_ns("250us"), Some(250_000));
        assert_eq!(parse_rate_bps("1gbit"), Some(1e9));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]
        /// Whatever the arrivals and parameters: order kept (without
        /// `reorder`), nobody leaves before arrival + delay - jitter nor
        /// before its serialization allows, the rate is never exceeded,
        /// and every packet either leaves or is counted as overflow.
        #[test]
        fn order_due_time_rate_and_limit(
            gaps in proptest::collection::vec((0u64..400_000, 1usize..4, 60usize..1500), 1..120),
            delay_us in 0u64..3000,
            jitter_us in 0u64..1000,
            rate_mbit in proptest::option::of(1u64..100),
            limit in 1usize..50,
            tick_ns in 10_000u64..200_000,
        ) {
            let mut nf = Delay::new(
                delay_us * 1000, jitter_us * 1000, 9, false,
                rate_mbit.map(|r| r as f64 * 1e6), limit,
            );
            let mut arrivals = Vec::new();
            let mut t = 0;
            let mut next_id = 0u32;
            for (gap, n, len) in &gaps {
                t += gap;
                for _ in 0..*n {
                    arrivals.push((t, next_id, *len));
                    next_id += 1;
                }
            }
            // Long enough for the fullest line at the slowest rate to
            // drain (50 packets of 1500 B at 1 Mbit/s: 600 ms).
            let (out, c) = run(&mut nf, &arrivals, tick_ns, t + 700_000_000);
            let dropped = c.dropped(DropReason::Overflow);
            proptest::prop_assert_eq!(out.len() as u64 + dropped, arrivals.len() as u64);
            proptest::prop_assert!(out.windows(2).all(|w| w[0].0 < w[1].0), "order");
            proptest::prop_assert!(dropped == 0 || arrivals.len() > limit);
            let lo = (delay_us.saturating_sub(jitter_us)) * 1000;
            for (id, leave) in &out {
                let (arr, _, _) = arrivals[*id as usize];
                proptest::prop_assert!(*leave >= arr + lo, "{} left at {} < {} + {}", id, leave, arr, lo);
            }
            if let Some(r) = rate_mbit {
                // Over any run of consecutive survivors, the link cannot
                // have carried more than rate * (last leave - first arrival) + 1 packet.
                let bps = r as f64 * 1e6;
                for i in 0..out.len() {
                    let (first, _, _) = arrivals[out[i].0 as usize];
                    let mut bits = 0.0;
                    for o in &out[i..] {
                        bits += arrivals[o.0 as usize].2 as f64 * 8.0;
                        let span_ns = (o.1 - first) as f64;
                        proptest::prop_assert!(
                            bits <= bps * span_ns / 1e9 + 1.0,
                            "{} bits out in {} ns at {} bit/s", bits, span_ns, bps
                        );
                    }
                }
            }
        }
    }
}
