//! `meter`: single-rate three-color marker (srTCM, RFC 2697).
//!
//! Two token buckets share one rate: the committed bucket `Tc` (size CBS)
//! and the excess bucket `Te` (size EBS), both full at start. Tokens (bytes)
//! arrive at CIR bytes per second; they fill `Tc` first and spill into `Te`
//! when `Tc` is full. A packet of `B` bytes is green if `Tc >= B` (and takes
//! `B` from `Tc`), else yellow if `Te >= B` (takes from `Te`), else red.
//! In color-aware mode a packet pre-colored yellow can only be yellow or
//! red, and a pre-colored red one stays red.
//!
//! Token arithmetic is exact integer arithmetic on nanoseconds: elapsed
//! time times CIR, with the sub-byte remainder carried to the next update,
//! so the meter neither gains nor loses tokens to rounding.
//!
//! The packet size `B` is the frame length (Ethernet header to end of
//! payload, without FCS), which is what a port sees. Every frame is
//! metered, whatever it contains; only valid IPv4 packets get their DSCP
//! rewritten.

use crate::{ConfigError, ParamDoc, StateError};
use crate::{
    Context, DropReason, Encoding, FlowScope, NetworkFunction, NfClass, NfSpec, NfState, Placement,
};
use braid_packet::envelope::{self, Class, Layer};
use braid_packet::wire::checksum;
use braid_packet::{Batch, Packet};

pub static SPEC: NfSpec = NfSpec {
    name: "meter",
    class: NfClass::Basic,
    placements: &[Placement::User],
    state: crate::StateKind::Whole,
    kernel: None,
    summary: "single-rate three-color marker (RFC 2697): mark DSCP or drop red",
    params: &[
        ParamDoc {
            name: "cir",
            kind: "u64 bytes/s, >= 1",
            default: None,
            help: "committed information rate",
        },
        ParamDoc {
            name: "cbs",
            kind: "u64 bytes",
            default: None,
            help: "committed burst size (should be >= the largest frame)",
        },
        ParamDoc {
            name: "ebs",
            kind: "u64 bytes",
            default: Some("0"),
            help: "excess burst size; cbs + ebs must be > 0",
        },
        ParamDoc {
            name: "mode",
            kind: "blind | aware",
            default: Some("blind"),
            help: "aware: take the pre-color from meta.mark (1 green, 2 yellow, 3 red)",
        },
        ParamDoc {
            name: "action",
            kind: "mark | drop",
            default: Some("mark"),
            help: "mark: pass red packets marked; drop: drop red packets (rate_exceeded)",
        },
        ParamDoc {
            name: "rewrite_dscp",
            kind: "bool",
            default: Some("true"),
            help: "write the color's DSCP into IPv4 packets (header checksum updated)",
        },
        ParamDoc {
            name: "dscp_green",
            kind: "u8, 0..=63",
            default: Some("10 (AF11)"),
            help: "DSCP for green",
        },
        ParamDoc {
            name: "dscp_yellow",
            kind: "u8, 0..=63",
            default: Some("12 (AF12)"),
            help: "DSCP for yellow",
        },
        ParamDoc {
            name: "dscp_red",
            kind: "u8, 0..=63",
            default: Some("14 (AF13)"),
            help: "DSCP for red",
        },
    ],
    build: |p| Ok(Box::new(Meter::new(crate::params::parse(p)?)?)),
};

/// Whether the meter looks at a packet's pre-color.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColorMode {
    Blind,
    Aware,
}

/// What happens to red packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedAction {
    Mark,
    Drop,
}

fn default_ebs() -> u64 {
    0
}
fn default_mode() -> ColorMode {
    ColorMode::Blind
}
fn default_action() -> RedAction {
    RedAction::Mark
}
fn default_true() -> bool {
    true
}
fn default_green() -> u8 {
    10
}
fn default_yellow() -> u8 {
    12
}
fn default_red() -> u8 {
    14
}

/// Meter configuration (the `params` of a `meter` NF).
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub cir: u64,
    pub cbs: u64,
    #[serde(default = "default_ebs")]
    pub ebs: u64,
    #[serde(default = "default_mode")]
    pub mode: ColorMode,
    #[serde(default = "default_action")]
    pub action: RedAction,
    #[serde(default = "default_true")]
    pub rewrite_dscp: bool,
    #[serde(default = "default_green")]
    pub dscp_green: u8,
    #[serde(default = "default_yellow")]
    pub dscp_yellow: u8,
    #[serde(default = "default_red")]
    pub dscp_red: u8,
}

/// A packet's color. The discriminant is the value written to `meta.mark`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Color {
    Green = 1,
    Yellow = 2,
    Red = 3,
}

impl Color {
    /// The pre-color carried in `meta.mark` (color-aware mode). An unmarked
    /// packet (0) or an unknown value counts as green, as RFC 2697 treats
    /// traffic that no upstream meter has colored.
    pub fn from_mark(mark: u8) -> Color {
        match mark {
            2 => Color::Yellow,
            3 => Color::Red,
            _ => Color::Green,
        }
    }
}

const NS_PER_S: u128 = 1_000_000_000;

/// The two token buckets and their clock: the meter's whole state.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Buckets {
    /// Committed bucket, bytes (0..=CBS).
    pub tc: u64,
    /// Excess bucket, bytes (0..=EBS).
    pub te: u64,
    /// Time of the last refill; `None` before the first packet.
    pub last_ns: Option<u64>,
    /// Remainder of `elapsed_ns * CIR` not yet worth a whole byte, in
    /// byte-nanoseconds (0..1e9).
    pub frac: u64,
}

/// The srTCM proper: configuration-independent of packets, so it is tested
/// with exact arithmetic.
#[derive(Clone, Debug)]
pub struct SrTcm {
    cir: u64,
    cbs: u64,
    ebs: u64,
    b: Buckets,
}

impl SrTcm {
    /// Both buckets start full (RFC 2697, section 3).
    pub fn new(cir: u64, cbs: u64, ebs: u64) -> SrTcm {
        SrTcm { cir, cbs, ebs, b: Buckets { tc: cbs, te: ebs, last_ns: None, frac: 0 } }
    }

    /// Add the tokens earned since the last update. A clock that did not
    /// move (or moved back) adds nothing.
    pub fn refill(&mut self, now_ns: u64) {
        let last = match self.b.last_ns {
            None => {
                self.b.last_ns = Some(now_ns);
                return;
            }
            Some(l) => l,
        };
        if now_ns <= last {
            return;
        }
        let earned = (now_ns - last) as u128 * self.cir as u128 + self.b.frac as u128;
        self.b.frac = (earned % NS_PER_S) as u64;
        self.b.last_ns = Some(now_ns);
        let mut tokens = earned / NS_PER_S;
        let room_c = (self.cbs - self.b.tc) as u128;
        let to_c = tokens.min(room_c);
        self.b.tc += to_c as u64;
        tokens -= to_c;
        let room_e = (self.ebs - self.b.te) as u128;
        self.b.te += tokens.min(room_e) as u64;
        if self.b.tc == self.cbs && self.b.te == self.ebs {
            // Both full: tokens beyond are discarded, fractions too.
            self.b.frac = 0;
        }
    }

    /// Color a packet of `bytes` with pre-color `pre` (green in
    /// color-blind mode), taking its tokens.
    pub fn color(&mut self, bytes: u64, pre: Color) -> Color {
        if pre == Color::Green && self.b.tc >= bytes {
            self.b.tc -= bytes;
            Color::Green
        } else if pre != Color::Red && self.b.te >= bytes {
            self.b.te -= bytes;
            Color::Yellow
        } else {
            Color::Red
        }
    }

    pub fn buckets(&self) -> &Buckets {
        &self.b
    }
}

/// The `meter` NF.
#[derive(Debug)]
pub struct Meter {
    cfg: Config,
    tcm: SrTcm,
}

const STATE_VERSION: u32 = 1;

impl Meter {
    pub fn new(cfg: Config) -> Result<Meter, ConfigError> {
        if cfg.cir == 0 {
            return Err(ConfigError::new("cir", "must be at least 1 byte per second"));
        }
        if cfg.cbs == 0 && cfg.ebs == 0 {
            return Err(ConfigError::new("cbs", "cbs and ebs cannot both be 0 (RFC 2697)"));
        }
        for (field, v) in [
            ("dscp_green", cfg.dscp_green),
            ("dscp_yellow", cfg.dscp_yellow),
            ("dscp_red", cfg.dscp_red),
        ] {
            if v > 63 {
                return Err(ConfigError::new(field, format!("DSCP {v} is outside 0..=63")));
            }
        }
        let tcm = SrTcm::new(cfg.cir, cfg.cbs, cfg.ebs);
        Ok(Meter { cfg, tcm })
    }

    fn dscp(&self, c: Color) -> u8 {
        match c {
            Color::Green => self.cfg.dscp_green,
            Color::Yellow => self.cfg.dscp_yellow,
            Color::Red => self.cfg.dscp_red,
        }
    }

    /// The meter's buckets (for tests and inspection).
    pub fn buckets(&self) -> &Buckets {
        self.tcm.buckets()
    }
}

/// Rewrite the DSCP of an IPv4 packet inside an Ethernet frame, keeping the
/// ECN bits and updating the header checksum incrementally. The meter's
/// envelope policy (docs/nfs.md): every frame is metered and passed; the
/// DSCP is written where the IPv4 header is valid (whatever follows it);
/// other frames are left alone.
fn set_dscp(p: &mut Packet, dscp: u8) {
    let frame = p.data_mut();
    let parsed = envelope::parse(frame);
    match parsed.class {
        Class::Ok
        | Class::Fragment { .. }
        | Class::Truncated { layer: Layer::L4 }
        | Class::Malformed { layer: Layer::L4, .. } => {}
        Class::Truncated { .. } | Class::Malformed { .. } | Class::Unsupported { .. } => return,
    }
    // Validated by the envelope: a full IPv4 header follows `l3`.
    let hdr = &mut frame[parsed.ip.l3..];
    let tos = (dscp << 2) | (hdr[1] & 0x03);
    if tos == hdr[1] {
        return;
    }
    let old_word = u16::from_be_bytes([hdr[0], hdr[1]]);
    hdr[1] = tos;
    let new_word = u16::from_be_bytes([hdr[0], hdr[1]]);
    let ck = u16::from_be_bytes([hdr[10], hdr[11]]);
    hdr[10..12].copy_from_slice(&checksum::update16(ck, old_word, new_word).to_be_bytes());
}

impl NetworkFunction for Meter {
    fn spec(&self) -> &'static NfSpec {
        &SPEC
    }

    fn keeps_lengths(&self) -> bool {
        true
    }

    fn process(&mut self, batch: &mut Batch, cx: &mut Context<'_>) {
        self.tcm.refill(cx.now_ns);
        batch.retain_mut(|p| {
            let pre = match self.cfg.mode {
                ColorMode::Blind => Color::Green,
                ColorMode::Aware => Color::from_mark(p.meta.mark),
            };
            let color = self.tcm.color(p.len() as u64, pre);
            if color == Color::Red && self.cfg.action == RedAction::Drop {
                cx.drop_packet(DropReason::RateExceeded);
                return false;
            }
            p.meta.mark = color as u8;
            if self.cfg.rewrite_dscp {
                set_dscp(p, self.dscp(color));
            }
            true
        });
    }

    fn export_scoped(&self, scope: &FlowScope, encoding: Encoding) -> Result<NfState, StateError> {
        scope.require_all(SPEC.name)?;
        Ok(NfState::encode_as(encoding, SPEC.name, STATE_VERSION, self.tcm.buckets()))
    }

    fn import_state(&mut self, state: &NfState) -> Result<(), StateError> {
        let b: Buckets = state.decode(SPEC.name, STATE_VERSION)?;
        if b.tc > self.cfg.cbs || b.te > self.cfg.ebs || b.frac as u128 >= NS_PER_S {
            return Err(StateError::Corrupt(format!(
                "buckets tc={} te={} frac={} do not fit this meter (cbs={}, ebs={})",
                b.tc, b.te, b.frac, self.cfg.cbs, self.cfg.ebs
            )));
        }
        self.tcm.b = b;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Counters, Params};
    use braid_packet::wire::build::FrameSpec;
    use braid_packet::wire::{self, Ipv4Packet};
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    fn cfg(yaml: &str) -> Config {
        let p: Params = serde_yaml_ng::from_str(yaml).unwrap();
        crate::params::parse(&p).unwrap()
    }

    #[test]
    fn scripted_arrivals_exact_tokens() {
        // CIR 1000 B/s = one byte per ms. CBS 300, EBS 200.
        let mut m = SrTcm::new(1000, 300, 200);
        m.refill(0);
        assert_eq!(m.color(200, Color::Green), Color::Green); // tc 100
        assert_eq!(m.color(200, Color::Green), Color::Yellow); // te 0
        assert_eq!(m.color(150, Color::Green), Color::Red);
        assert_eq!((m.buckets().tc, m.buckets().te), (100, 0));
        // 150.5 ms later: 150 bytes earned, 0.5 byte carried.
        m.refill(150_500_000);
        assert_eq!((m.buckets().tc, m.buckets().te, m.buckets().frac), (250, 0, 500_000_000));
        // Another 0.5 ms completes one byte.
        m.refill(151_000_000);
        assert_eq!((m.buckets().tc, m.buckets().frac), (251, 0));
        assert_eq!(m.color(251, Color::Green), Color::Green);
        // 400 ms: 300 fill tc to CBS, 100 spill into te.
        m.refill(551_000_000);
        assert_eq!((m.buckets().tc, m.buckets().te), (300, 100));
        // Color-aware: yellow pre-color never takes green tokens.
        assert_eq!(m.color(50, Color::Yellow), Color::Yellow);
        assert_eq!(m.color(60, Color::Yellow), Color::Red);
        assert_eq!(m.color(10, Color::Red), Color::Red);
        assert_eq!((m.buckets().tc, m.buckets().te), (300, 50));
        // Time going backwards adds nothing.
        m.refill(1);
        assert_eq!((m.buckets().tc, m.buckets().te), (300, 50));
        // A long idle period fills both, discards the rest.
        m.refill(u64::MAX);
        assert_eq!((m.buckets().tc, m.buckets().te, m.buckets().frac), (300, 200, 0));
    }

    #[test]
    fn fractional_rates_lose_nothing() {
        // 3 B/s polled every 100 ms for 10 s earns exactly 30 bytes.
        let mut m = SrTcm::new(3, 1000, 0);
        m.refill(0);
        assert_eq!(m.color(1000, Color::Green), Color::Green);
        for i in 1..=100u64 {
            m.refill(i * 100_000_000);
        }
        assert_eq!(m.buckets().tc, 30);
    }

    fn udp(len: usize) -> Vec<u8> {
        FrameSpec::udp_frame_len(
            (Ipv4Addr::new(10, 0, 0, 1), 1000),
            (Ipv4Addr::new(10, 0, 0, 2), 2000),
            len,
        )
        .build()
    }

    fn run(nf: &mut dyn NetworkFunction, frames: &[Vec<u8>], now: u64) -> (Batch, Counters) {
        let mut b: Batch = frames.iter().map(|f| Packet::from_bytes(f)).collect();
        let mut c = Counters::default();
        nf.process(&mut b, &mut Context::new(now, &mut c));
        (b, c)
    }

    fn dscp_of(p: &Packet) -> u8 {
        let l3 = wire::l3(p.data()).unwrap();
        let ip = Ipv4Packet::new_checked(&p.data()[l3.offset..]).unwrap();
        assert!(ip.verify_checksum(), "IPv4 header checksum after marking");
        p.data()[l3.offset + 1] >> 2
    }

    #[test]
    fn marks_dscp_and_meta_then_drops_red() {
        let mut nf =
            (SPEC.build)(&serde_yaml_ng::from_str("{cir: 1000, cbs: 100, ebs: 100}").unwrap())
                .unwrap();
        let frames = vec![udp(100), udp(100), udp(100)];
        let (b, c) = run(nf.as_mut(), &frames, 1);
        let marks: Vec<u8> = b.iter().map(|p| p.meta.mark).collect();
        assert_eq!(marks, vec![1, 2, 3]);
        let dscps: Vec<u8> = b.iter().map(dscp_of).collect();
        assert_eq!(dscps, vec![10, 12, 14]);
        assert_eq!(c.dropped_total(), 0);

        let mut nf = (SPEC.build)(
            &serde_yaml_ng::from_str("{cir: 1000, cbs: 100, ebs: 0, action: drop}").unwrap(),
        )
        .unwrap();
        let (b, c) = run(nf.as_mut(), &frames, 1);
        assert_eq!(b.len(), 1);
        assert_eq!(c.dropped(DropReason::RateExceeded), 2);
        // 100 ms later 100 bytes are back: one more green.
        let (b, c) = run(nf.as_mut(), &frames, 100_000_001);
        assert_eq!((b.len(), c.dropped(DropReason::RateExceeded)), (1, 2));
    }

    #[test]
    fn keeps_ecn_and_can_leave_dscp_alone() {
        let mut f = udp(80);
        let off = 14;
        f[off + 1] = 0x03; // ECN CE, DSCP 0
        let ck = checksum::checksum(&{
            let mut h = f[off..off + 20].to_vec();
            h[10] = 0;
            h[11] = 0;
            h
        });
        f[off + 10..off + 12].copy_from_slice(&ck.to_be_bytes());
        let mut nf = Meter::new(cfg("{cir: 1, cbs: 1000}")).unwrap();
        let (b, _) = run(&mut nf, std::slice::from_ref(&f), 5);
        assert_eq!(dscp_of(&b.as_slice()[0]), 10);
        assert_eq!(b.as_slice()[0].data()[off + 1] & 3, 3);

        let mut nf = Meter::new(cfg("{cir: 1, cbs: 1000, rewrite_dscp: false}")).unwrap();
        let (b, _) = run(&mut nf, std::slice::from_ref(&f), 5);
        assert_eq!(b.as_slice()[0].data(), &f[..]);
        assert_eq!(b.as_slice()[0].meta.mark, 1);
    }

    #[test]
    fn color_aware_uses_meta_mark() {
        let mut nf = Meter::new(cfg("{cir: 1, cbs: 1000, ebs: 1000, mode: aware}")).unwrap();
        let mut b: Batch = (1..=3u8)
            .map(|m| {
                let mut p = Packet::from_bytes(&udp(64));
                p.meta.mark = m;
                p
            })
            .collect();
        let mut c = Counters::default();
        nf.process(&mut b, &mut Context::new(1, &mut c));
        let marks: Vec<u8> = b.iter().map(|p| p.meta.mark).collect();
        assert_eq!(marks, vec![1, 2, 3]);
    }

    #[test]
    fn garbage_is_metered_by_length_and_passes_unchanged() {
        let mut nf = Meter::new(cfg("{cir: 1, cbs: 10}")).unwrap();
        let frames = vec![vec![], vec![0xffu8; 5], vec![0x45; 30]];
        let (b, c) = run(&mut nf, &frames, 1);
        let out: Vec<Vec<u8>> = b.iter().map(|p| p.data().to_vec()).collect();
        assert_eq!(out, frames);
        let marks: Vec<u8> = b.iter().map(|p| p.meta.mark).collect();
        assert_eq!(marks, vec![1, 1, 3]);
        assert_eq!(c.dropped_total(), 0);
    }

    #[test]
    fn config_errors_name_the_field() {
        let e = |y: &str| (SPEC.build)(&serde_yaml_ng::from_str(y).unwrap()).err().unwrap();
        assert_eq!(e("{cir: 0, cbs: 10}").field, "cir");
        assert_eq!(e("{cir: 5, cbs: 0}").field, "cbs");
        assert_eq!(e("{cir: 5, cbs: 10, dscp_red: 64}").field, "dscp_red");
        assert_eq!(e("{cir: 5, cbs: 10, action: shape}").field, "action");
        assert!(e("{cbs: 10}").message.contains("cir"));
    }

    #[test]
    fn state_round_trips_and_bad_state_changes_nothing() {
        let mut a = Meter::new(cfg("{cir: 1000, cbs: 300, ebs: 200}")).unwrap();
        let (_, _) = run(&mut a, &[udp(250)], 7);
        let s = a.export_state().unwrap();
        let mut b = Meter::new(cfg("{cir: 1000, cbs: 300, ebs: 200}")).unwrap();
        b.import_state(&s).unwrap();
        assert_eq!(a.buckets(), b.buckets());
        assert_eq!(b.buckets().tc, 50);

        let mut small = Meter::new(cfg("{cir: 1000, cbs: 10}")).unwrap();
        let before = small.buckets().clone();
        assert!(matches!(small.import_state(&s), Err(StateError::Corrupt(_))));
        assert_eq!(small.buckets(), &before);
        let wrong =
            NfState { kind: "nat".into(), version: 1, encoding: Encoding::Json, data: vec![] };
        assert!(matches!(b.import_state(&wrong), Err(StateError::WrongKind { .. })));
    }

    proptest! {
        #[test]
        fn any_frames_never_panic(
            frames in proptest::collection::vec(
                prop_oneof![proptest::collection::vec(any::<u8>(), 0..1600),
                            braid_packet::strategy::any_frame()], 1..8),
            now in any::<u64>(),
            drop in any::<bool>(),
        ) {
            let action = if drop { "drop" } else { "mark" };
            let mut nf = Meter::new(cfg(&format!("{{cir: 1000, cbs: 500, ebs: 500, action: {action}}}")))
                .unwrap();
            let n = frames.len() as u64;
            let (b, c) = run(&mut nf, &frames, now);
            prop_assert_eq!(b.len() as u64 + c.dropped_total(), n);
            prop_assert!(b.iter().all(|p| (1..=3).contains(&p.meta.mark)));
        }

        /// Token conservation: over any arrival sequence, the bytes passed
        /// green and yellow never exceed the initial buckets plus what CIR
        /// earned, and the buckets never exceed their sizes.
        #[test]
        fn tokens_are_conserved(
            arrivals in proptest::collection::vec((0u64..5_000_000, 1u64..1600), 1..200),
            cir in 1u64..10_000_000, cbs in 0u64..5000, ebs in 0u64..5000,
        ) {
            let mut m = SrTcm::new(cir, cbs, ebs);
            let mut now = 0u64;
            m.refill(now);
            let mut passed: u128 = 0;
            for (gap, bytes) in arrivals {
                now += gap;
                m.refill(now);
                if m.color(bytes, Color::Green) != Color::Red {
                    passed += bytes as u128;
                }
                prop_assert!(m.buckets().tc <= cbs && m.buckets().te <= ebs);
            }
            let budget = (cbs + ebs) as u128 + now as u128 * cir as u128 / 1_000_000_000;
            prop_assert!(passed <= budget, "passed {} > budget {}", passed, budget);
        }
    }
}
