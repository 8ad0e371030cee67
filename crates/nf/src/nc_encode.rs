//! `nc-encode`: random linear network coding of UDP payloads (block or
//! sliding-window code over GF(2^8), see `docs/network-coding.md`).
//!
//! Each IPv4/UDP source goes out at once with the 12-byte coding header
//! inserted at the start of its UDP payload; coded packets are new frames
//! that copy the headers of the latest source (lengths and checksums
//! fixed). Block code: the coded packets of a generation follow its last
//! source; `tick` flushes a partial generation once its first source is
//! `timeout_ms` old. Sliding code: coded packets are interleaved at the
//! configured rate. Frames that are not IPv4/UDP pass unchanged;
//! IPv4/UDP frames whose lengths do not hold are dropped as `malformed`;
//! sources that would not fit a buffer with the header, `no_room`.
//!
//! State (exported whole): the encoder's pending generation or window, its
//! seed generator and credit, when the pending generation started and the
//! headers of the latest source. A snapshot from another code or other
//! parameters is refused.

use crate::udp_payload::{self, Located, Template};
use crate::{
    Context, DropReason, Encoding, FlowScope, NetworkFunction, NfClass, NfSpec, NfState, ParamDoc,
    Placement, StateError,
};
use braid_coding::block::{BlockConfig, BlockEncoder, BlockEncoderSnapshot};
use braid_coding::header::{Header, HEADER_LEN};
use braid_coding::sliding::{SlidingConfig, SlidingEncoder, SlidingEncoderSnapshot};
use braid_packet::{Batch, Packet};

pub static SPEC: NfSpec = NfSpec {
    name: "nc-encode",
    class: NfClass::Advanced,
    placements: &[Placement::User],
    state: crate::StateKind::Whole,
    kernel: None,
    summary: "RLNC encoder over GF(2^8): systematic block or sliding-window code on UDP payloads",
    params: &[
        ParamDoc {
            name: "code",
            kind: "block | sliding",
            default: Some("block"),
            help: "systematic block code or sliding-window code",
        },
        ParamDoc {
            name: "generation_size",
            kind: "u32, 1..=255",
            default: Some("32"),
            help: "block: sources per generation",
        },
        ParamDoc {
            name: "window",
            kind: "u32, 1..=255",
            default: Some("8"),
            help: "sliding: sources combined by each coded packet",
        },
        ParamDoc {
            name: "redundancy",
            kind: "f64, 0..=8",
            default: Some("0.25"),
            help: "coded packets per source (block: per generation, rounded up)",
        },
        ParamDoc {
            name: "seed",
            kind: "u64",
            default: Some("1"),
            help: "seed of the coefficient seeds (runs repeat exactly)",
        },
        ParamDoc {
            name: "timeout_ms",
            kind: "u64",
            default: Some("10"),
            help: "block: flush a partial generation this long after its first source",
        },
    ],
    build: |p| Ok(Box::new(NcEncode::new(&crate::params::parse::<Config>(p)?)?)),
};

/// Which code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Code {
    Block,
    Sliding,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_code")]
    pub code: Code,
    #[serde(default = "default_gen")]
    pub generation_size: u32,
    #[serde(default = "default_window")]
    pub window: u32,
    #[serde(default = "default_redundancy")]
    pub redundancy: f64,
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
}

fn default_code() -> Code {
    Code::Block
}
fn default_gen() -> u32 {
    32
}
fn default_window() -> u32 {
    8
}
fn default_redundancy() -> f64 {
    0.25
}
fn default_seed() -> u64 {
    1
}
fn default_timeout() -> u64 {
    10
}

#[derive(Debug)]
enum Encoder {
    Block(BlockEncoder),
    Sliding(SlidingEncoder),
}

/// Format version of the exported state.
const STATE_VERSION: u32 = 1;

/// The encoder's part of the exported state.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum EncoderState {
    Block(BlockEncoderSnapshot),
    Sliding(SlidingEncoderSnapshot),
}

/// The exported state.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct EncodeState {
    /// The configured flush timeout, checked on import.
    timeout_ns: u64,
    encoder: EncoderState,
    /// When the first source of the pending block generation arrived.
    pending_since: Option<u64>,
    /// Headers of the latest source, as a frame with an empty UDP payload.
    template: Option<Vec<u8>>,
}

/// A template as a frame with an empty UDP payload (so it can be checked
/// and located again on import).
pub(crate) fn template_frame(t: &Template) -> Option<Vec<u8>> {
    // Headers taken from a packet fit a packet: `build` cannot fail here.
    t.build(&[]).map(|p| p.data().to_vec())
}

/// The template of a frame exported by [`template_frame`].
pub(crate) fn template_of_frame(frame: &[u8]) -> Result<Template, StateError> {
    match udp_payload::verdict(frame) {
        Located::Udp(loc) if loc.end == frame.len() && loc.payload == loc.end => {
            Ok(Template::of(frame, loc))
        }
        _ => Err(StateError::Corrupt(format!(
            "template: {} bytes are not IPv4/UDP headers with an empty payload",
            frame.len()
        ))),
    }
}

/// The encoding NF.
#[derive(Debug)]
pub struct NcEncode {
    encoder: Encoder,
    timeout_ns: u64,
    /// When the first source of the pending generation arrived.
    pending_since: Option<u64>,
    /// Headers of the latest source, for coded frames.
    template: Option<Template>,
    coded: Vec<(Header, Vec<u8>)>,
}

fn map_err(e: braid_coding::block::EncodeError) -> crate::ConfigError {
    use braid_coding::block::EncodeError as E;
    let field = match e {
        E::GenerationSize(_) => "generation_size",
        E::Window(_) => "window",
        E::Redundancy(_) => "redundancy",
        E::TooLong(_) => "",
    };
    crate::ConfigError::new(field, e.to_string())
}

impl NcEncode {
    pub fn new(cfg: &Config) -> Result<NcEncode, crate::ConfigError> {
        let encoder = match cfg.code {
            Code::Block => Encoder::Block(
                BlockEncoder::new(BlockConfig {
                    generation_size: cfg.generation_size as usize,
                    redundancy: cfg.redundancy,
                    seed: cfg.seed,
                })
                .map_err(map_err)?,
            ),
            Code::Sliding => Encoder::Sliding(
                SlidingEncoder::new(SlidingConfig {
                    window: cfg.window as usize,
                    redundancy: cfg.redundancy,
                    seed: cfg.seed,
                })
                .map_err(map_err)?,
            ),
        };
        Ok(NcEncode {
            encoder,
            timeout_ns: cfg.timeout_ms.saturating_mul(1_000_000),
            pending_since: None,
            template: None,
            coded: Vec::new(),
        })
    }

    /// Encode one packet in place; coded packets due after it go to
    /// `self.coded`.
    fn encode(&mut self, pkt: &mut Packet, now_ns: u64) -> Result<(), DropReason> {
        let loc = match udp_payload::verdict(pkt.data()) {
            Located::Udp(loc) => loc,
            Located::Pass => return Ok(()),
            Located::Drop(reason) => return Err(reason),
        };
        let loc = udp_payload::insert(pkt, loc, 0, HEADER_LEN).ok_or(DropReason::NoRoom)?;
        let frame = pkt.data_mut();
        let (hdr, payload) = frame[loc.payload..loc.end].split_at_mut(HEADER_LEN);
        let coded = &mut self.coded;
        let header = match &mut self.encoder {
            Encoder::Block(enc) => {
                let h = enc.push_source(payload).map_err(|_| DropReason::NoRoom)?;
                if self.pending_since.is_none() {
                    self.pending_since = Some(now_ns);
                }
                h
            }
            Encoder::Sliding(enc) => enc
                .push_source(payload, |h, s| coded.push((*h, s.to_vec())))
                .map_err(|_| DropReason::NoRoom)?,
        };
        header.emit(hdr);
        udp_payload::fix_lengths_and_checksums(frame, loc);
        match &mut self.template {
            Some(t) => t.set(pkt.data(), loc),
            None => self.template = Some(Template::of(pkt.data(), loc)),
        }
        if let Encoder::Block(enc) = &mut self.encoder {
            if enc.is_full() {
                enc.finish(|h, s| coded.push((*h, s.to_vec())));
                self.pending_since = None;
            }
        }
        Ok(())
    }

    /// Turn the coded symbols into frames at the end of `out`.
    fn emit_coded(&mut self, out: &mut Batch, cx: &mut Context<'_>) {
        let Some(t) = &self.template else {
            self.coded.clear();
            return;
        };
        for (h, sym) in self.coded.drain(..) {
            let mut hb = [0u8; HEADER_LEN];
            h.emit(&mut hb);
            match t.build(&[&hb, &sym]) {
                Some(p) => {
                    cx.counters.packets_created += 1;
                    out.push(p);
                }
                None => cx.drop_packet(DropReason::NoRoom),
            }
        }
    }
}

impl NetworkFunction for NcEncode {
    fn spec(&self) -> &'static NfSpec {
        &SPEC
    }

    fn process(&mut self, batch: &mut Batch, cx: &mut Context<'_>) {
        let input = batch.take();
        for mut pkt in input {
            match self.encode(&mut pkt, cx.now_ns) {
                Ok(()) => {
                    batch.push(pkt);
                    if !self.coded.is_empty() {
                        self.emit_coded(batch, cx);
                    }
                }
                Err(reason) => cx.drop_packet(reason),
            }
        }
    }

    fn tick(&mut self, out: &mut Batch, cx: &mut Context<'_>) {
        let Encoder::Block(enc) = &mut self.encoder else { return };
        let Some(since) = self.pending_since else { return };
        if cx.now_ns.saturating_sub(since) >= self.timeout_ns {
            let coded = &mut self.coded;
            enc.finish(|h, s| coded.push((*h, s.to_vec())));
            self.pending_since = None;
            self.emit_coded(out, cx);
        }
    }

    fn wants_tick(&self) -> bool {
        self.pending_since.is_some()
    }

    fn export_scoped(&self, scope: &FlowScope, encoding: Encoding) -> Result<NfState, StateError> {
        scope.require_all(SPEC.name)?;
        let encoder = match &self.encoder {
            Encoder::Block(e) => EncoderState::Block(e.snapshot()),
            Encoder::Sliding(e) => EncoderState::Sliding(e.snapshot()),
        };
        let state = EncodeState {
            timeout_ns: self.timeout_ns,
            encoder,
            pending_since: self.pending_since,
            template: self.template.as_ref().and_then(template_frame),
        };
        Ok(NfState::encode_as(encoding, SPEC.name, STATE_VERSION, &state))
    }

    fn import_state(&mut self, state: &NfState) -> Result<(), StateError> {
        let s: EncodeState = state.decode(SPEC.name, STATE_VERSION)?;
        let corrupt = StateError::Corrupt;
        // Build the new encoder aside: nothing changes unless all of it fits.
        let (encoder, pending) = match (&self.encoder, &s.encoder) {
            (Encoder::Block(e), EncoderState::Block(snap)) => (
                Encoder::Block(e.restored(snap).map_err(|e| corrupt(e.to_string()))?),
                !snap.sources.is_empty(),
            ),
            (Encoder::Sliding(e), EncoderState::Sliding(snap)) => {
                (Encoder::Sliding(e.restored(snap).map_err(|e| corrupt(e.to_string()))?), false)
            }
            (Encoder::Block(_), EncoderState::Sliding(_)) => {
                return Err(corrupt("snapshot has code sliding, this nc-encode block".into()))
            }
            (Encoder::Sliding(_), EncoderState::Block(_)) => {
                return Err(corrupt("snapshot has code block, this nc-encode sliding".into()))
            }
        };
        if s.timeout_ns != self.timeout_ns {
            return Err(StateError::Corrupt(format!(
                "snapshot has timeout_ms {}, this nc-encode {}",
                s.timeout_ns / 1_000_000,
                self.timeout_ns / 1_000_000
            )));
        }
        let template = s.template.as_deref().map(template_of_frame).transpose()?;
        // The flush clock runs exactly while a block generation is pending.
        if s.pending_since.is_some() != pending {
            return Err(corrupt(format!(
                "pending_since {:?} does not match {} pending sources",
                s.pending_since,
                if pending { "some" } else { "no" }
            )));
        }
        self.encoder = encoder;
        self.pending_since = s.pending_since;
        self.template = template;
        self.coded.clear();
        Ok(())
    }
}

/// Shared by the state tests of the coding NFs: run a stream whole, and
/// split with a migration (export, JSON, import into a fresh instance) in
/// between, and compare.
#[cfg(test)]
pub(crate) mod state_test {
    use crate::{Context, Counters, NetworkFunction, NfState, Params, StateError};
    use braid_packet::wire::build::FrameSpec;
    use braid_packet::{Batch, Packet};
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    pub fn build(name: &str, yaml: &str) -> Box<dyn NetworkFunction> {
        crate::build(name, &serde_yaml_ng::from_str::<Params>(yaml).unwrap()).unwrap()
    }

    /// A batch processed at `now_ns`, then a tick at the same time.
    #[derive(Clone, Debug)]
    pub struct Step {
        pub now_ns: u64,
        pub frames: Vec<Vec<u8>>,
    }

    fn next(st: &mut u64) -> u64 {
        braid_coding::header::splitmix64(st)
    }

    /// `n` frames: UDP with payloads of 0..200 bytes, every ninth TCP
    /// (which every coding NF passes unchanged).
    pub fn frames(n: usize, seed: u64) -> Vec<Vec<u8>> {
        let mut st = seed;
        (0..n)
            .map(|i| {
                let (a, b) = ((Ipv4Addr::new(10, 0, 0, 1), 7), (Ipv4Addr::new(10, 0, 0, 2), 8));
                if i % 9 == 8 {
                    return FrameSpec::tcp(a, b, 10).build();
                }
                let len = (next(&mut st) % 200) as usize;
                let mut s = FrameSpec::udp(a, b, len);
                s.payload = (0..len).map(|j| (i * 13 + j) as u8).collect();
                s.build()
            })
            .collect()
    }

    /// Group `frames` into steps of 0..=3 frames, the clock advancing by
    /// 0..=`max_gap_ms` ms per step.
    pub fn steps(frames: Vec<Vec<u8>>, seed: u64, max_gap_ms: u64) -> Vec<Step> {
        let mut st = seed;
        let mut now_ns = 1_000_000_000;
        let mut out = Vec::new();
        let mut it = frames.into_iter().peekable();
        while it.peek().is_some() {
            let take = (next(&mut st) % 4) as usize;
            now_ns += (next(&mut st) % (max_gap_ms + 1)) * 1_000_000;
            out.push(Step { now_ns, frames: it.by_ref().take(take).collect() });
        }
        // A last step well after the rest: every timeout fires.
        out.push(Step { now_ns: now_ns + 1_000_000_000, frames: Vec::new() });
        out
    }

    /// Keep each frame with probability 1 - `loss_pct`%.
    pub fn lossy(frames: Vec<Vec<u8>>, loss_pct: u64, seed: u64) -> Vec<Vec<u8>> {
        let mut st = seed;
        frames.into_iter().filter(|_| next(&mut st) % 100 >= loss_pct).collect()
    }

    /// Every frame out, from `process` and `tick`, in order.
    pub fn run(nf: &mut dyn NetworkFunction, steps: &[Step], c: &mut Counters) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for step in steps {
            let mut b: Batch = step.frames.iter().map(|f| Packet::from_bytes(f)).collect();
            nf.process(&mut b, &mut Context::new(step.now_ns, c));
            out.extend(b.iter().map(|p| p.data().to_vec()));
            let mut t = Batch::new();
            nf.tick(&mut t, &mut Context::new(step.now_ns, c));
            out.extend(t.iter().map(|p| p.data().to_vec()));
        }
        out
    }

    /// A snapshot after a trip through JSON, as it travels between hosts.
    pub fn travel(s: &NfState) -> NfState {
        serde_json::from_slice(&serde_json::to_vec(s).unwrap()).unwrap()
    }

    /// The key property: run A over every step; run B over the steps
    /// before `split`, export its state into a fresh C built from the same
    /// parameters and run C over the rest. B's output then C's is A's, byte
    /// for byte, the drops add up, and C ends in A's state.
    pub fn check_split(
        name: &str,
        yaml: &str,
        steps: &[Step],
        split: usize,
    ) -> Result<(), TestCaseError> {
        let split = split.min(steps.len());
        let (mut a, mut ca) = (build(name, yaml), Counters::default());
        let want = run(a.as_mut(), steps, &mut ca);
        let (mut b, mut cb) = (build(name, yaml), Counters::default());
        let mut got = run(b.as_mut(), &steps[..split], &mut cb);
        let state = travel(&b.export_state().expect("stateful"));
        let (mut c, mut cc) = (build(name, yaml), Counters::default());
        c.import_state(&state).map_err(|e| TestCaseError::fail(format!("import: {e}")))?;
        got.extend(run(c.as_mut(), &steps[split..], &mut cc));
        prop_assert_eq!(got.len(), want.len(), "{} frames out", name);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            prop_assert!(g == w, "{}: frame {} of {} differs", name, i, want.len());
        }
        let drops: Vec<u64> = cb.drops.iter().zip(&cc.drops).map(|(x, y)| x + y).collect();
        prop_assert_eq!(drops, ca.drops.to_vec(), "{}: drops", name);
        prop_assert_eq!(cb.packets_created + cc.packets_created, ca.packets_created);
        prop_assert!(c.export_state() == a.export_state(), "{}: final states differ", name);
        Ok(())
    }

    /// JSON pointers to the numbers of `v`; with `scalars_only`, not the
    /// elements of number arrays (symbols, coefficients), so damage lands
    /// on counters, sizes, ids and configuration.
    fn number_paths(
        v: &serde_json::Value,
        path: String,
        scalars_only: bool,
        out: &mut Vec<String>,
    ) {
        use serde_json::Value;
        match v {
            Value::Number(_) => out.push(path),
            Value::Array(xs) => {
                let bytes = xs.len() > 2 && xs.iter().all(Value::is_number);
                if !(scalars_only && bytes) {
                    for (i, x) in xs.iter().enumerate() {
                        number_paths(x, format!("{path}/{i}"), scalars_only, out);
                    }
                }
            }
            Value::Object(m) => {
                for (k, x) in m {
                    number_paths(x, format!("{path}/{k}"), scalars_only, out);
                }
            }
            _ => {}
        }
    }

    /// A state damaged in one number (set to a value from the edges of the
    /// usual ranges) or truncated: the import never panics, and if it is
    /// refused the NF is unchanged; if it is taken, the NF still runs.
    pub fn check_damaged(
        name: &str,
        yaml: &str,
        steps: &[Step],
        which: usize,
        value: u64,
        truncate: Option<usize>,
    ) -> Result<(), TestCaseError> {
        let mut src = build(name, yaml);
        let mut c = Counters::default();
        run(src.as_mut(), &steps[..steps.len() / 2], &mut c);
        let mut state = src.export_state().unwrap();
        match truncate {
            Some(n) => state.data.truncate(n % (state.data.len() + 1)),
            None => {
                let mut v: serde_json::Value = serde_json::from_slice(&state.data).unwrap();
                let mut paths = Vec::new();
                number_paths(&v, String::new(), which.is_multiple_of(2), &mut paths);
                if let Some(path) = paths.get((which / 2) % paths.len().max(1)) {
                    *v.pointer_mut(path).unwrap() = serde_json::Value::from(value);
                }
                state.data = serde_json::to_vec(&v).unwrap();
            }
        }
        let mut dst = build(name, yaml);
        run(dst.as_mut(), &steps[..1], &mut c);
        let before = dst.export_state();
        match dst.import_state(&state) {
            Err(StateError::Corrupt(_)) => {
                prop_assert!(dst.export_state() == before, "{}: a refused import changed it", name)
            }
            Err(e) => return Err(TestCaseError::fail(format!("{name}: unexpected {e}"))),
            Ok(()) => {
                run(dst.as_mut(), &steps[steps.len() / 2..], &mut c);
            }
        }
        Ok(())
    }

    /// Edge values for [`check_damaged`].
    pub fn edge_value() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0u64),
            Just(1),
            Just(2),
            Just(255),
            Just(256),
            Just(4096),
            Just(65537),
            Just(u32::MAX as u64),
            Just(u32::MAX as u64 + 1),
            Just(1 << 62),
            Just(u64::MAX),
            any::<u64>(),
        ]
    }

    /// A snapshot of another kind, of another version, or not JSON at all
    /// is refused with the matching error, and changes nothing.
    pub fn check_foreign(name: &str, yaml: &str, other: &str) {
        let mut nf = build(name, yaml);
        let before = nf.export_state().unwrap();
        let foreign = build(other, "{}").export_state().unwrap();
        assert!(matches!(nf.import_state(&foreign), Err(StateError::WrongKind { .. })));
        let newer = NfState { version: before.version + 1, ..before.clone() };
        assert!(matches!(nf.import_state(&newer), Err(StateError::WrongVersion { .. })));
        let garbage = NfState { data: b"{\"not\": 1".to_vec(), ..before.clone() };
        assert!(matches!(nf.import_state(&garbage), Err(StateError::Corrupt(_))));
        assert_eq!(nf.export_state().unwrap(), before);
    }

    /// The message refusing the state of `from` for an NF built with `to`.
    pub fn refusal(name: &str, from: &str, to: &str, steps: &[Step]) -> String {
        let mut src = build(name, from);
        run(src.as_mut(), steps, &mut Counters::default());
        let mut dst = build(name, to);
        let before = dst.export_state();
        let e = dst.import_state(&src.export_state().unwrap()).unwrap_err();
        assert_eq!(dst.export_state(), before, "a refused import changed it");
        e.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Counters, Params};
    use braid_coding::header::Kind;
    use braid_packet::wire::build::FrameSpec;
    use std::net::Ipv4Addr;

    fn nf(yaml: &str) -> Box<dyn NetworkFunction> {
        (SPEC.build)(&serde_yaml_ng::from_str::<Params>(yaml).unwrap()).unwrap()
    }

    fn frame(i: usize, len: usize) -> Vec<u8> {
        let mut s =
            FrameSpec::udp((Ipv4Addr::new(10, 0, 0, 1), 7), (Ipv4Addr::new(10, 0, 0, 2), 8), len);
        s.payload = (0..len).map(|j| (i + j) as u8).collect();
        s.build()
    }

    fn kinds(b: &Batch) -> Vec<Kind> {
        b.iter()
            .map(|p| {
                let Located::Udp(loc) = udp_payload::verdict(p.data()) else { panic!("not udp") };
                Header::parse(&p.data()[loc.payload..loc.end]).unwrap().header.kind
            })
            .collect()
    }

    #[test]
    fn block_sends_sources_then_coded_and_flushes_on_tick() {
        let mut e = nf("generation_size: 4\nredundancy: 0.5\ntimeout_ms: 1");
        let mut c = Counters::default();
        let mut b: Batch = (0..6).map(|i| Packet::from_bytes(&frame(i, 20 + i))).collect();
        e.process(&mut b, &mut Context::new(0, &mut c));
        use Kind::*;
        assert_eq!(
            kinds(&b),
            vec![
                BlockSource,
                BlockSource,
                BlockSource,
                BlockSource,
                BlockCoded,
                BlockCoded,
                BlockSource,
                BlockSource
            ]
        );
        assert_eq!(c.packets_created, 2);
        let mut out = Batch::new();
        e.tick(&mut out, &mut Context::new(500_000, &mut c));
        assert!(out.is_empty(), "not yet timed out");
        e.tick(&mut out, &mut Context::new(1_000_000, &mut c));
        assert_eq!(kinds(&out), vec![BlockCoded]);
        // Every output frame is valid IPv4/UDP with correct checksums.
        for p in b.iter().chain(out.iter()) {
            let Located::Udp(loc) = udp_payload::verdict(p.data()) else { panic!() };
            let ip =
                braid_packet::wire::ipv4::Ipv4Packet::new_checked(&p.data()[loc.ip..]).unwrap();
            assert!(ip.verify_checksum());
            let udp = braid_packet::wire::udp::UdpPacket::new_checked(&p.data()[loc.udp..loc.end])
                .unwrap();
            assert!(udp.verify_checksum_v4(ip.src_addr(), ip.dst_addr()));
        }
    }

    #[test]
    fn sliding_interleaves_and_others_pass() {
        let mut e = nf("code: sliding\nwindow: 4\nredundancy: 0.5");
        let mut c = Counters::default();
        let tcp = FrameSpec::tcp((Ipv4Addr::LOCALHOST, 1), (Ipv4Addr::LOCALHOST, 2), 0).build();
        let mut b: Batch = [frame(0, 10), tcp.clone(), frame(1, 10), frame(2, 3), vec![1, 2, 3]]
            .iter()
            .map(|f| Packet::from_bytes(f))
            .collect();
        e.process(&mut b, &mut Context::new(0, &mut c));
        assert_eq!(b.len(), 5);
        assert_eq!(b.as_slice()[1].data(), &tcp[..]);
        assert_eq!(c.dropped(DropReason::Malformed), 1);
        let k: Vec<Kind> = [0usize, 2, 3, 4]
            .iter()
            .map(|&i| {
                let p = &b.as_slice()[i];
                let Located::Udp(loc) = udp_payload::verdict(p.data()) else { panic!() };
                Header::parse(&p.data()[loc.payload..loc.end]).unwrap().header.kind
            })
            .collect();
        assert_eq!(
            k,
            vec![Kind::SlidingSource, Kind::SlidingSource, Kind::SlidingCoded, Kind::SlidingSource]
        );
    }

    #[test]
    fn rejects_bad_params() {
        let p: Params = serde_yaml_ng::from_str("generation_size: 300").unwrap();
        assert_eq!((SPEC.build)(&p).err().unwrap().field, "generation_size");
        let p: Params = serde_yaml_ng::from_str("code: fountain").unwrap();
        assert!((SPEC.build)(&p).is_err());
        let p: Params = serde_yaml_ng::from_str("code: sliding\nwindow: 0").unwrap();
        assert_eq!((SPEC.build)(&p).err().unwrap().field, "window");
    }

    mod state {
        use super::super::state_test::*;
        use proptest::prelude::*;

        const BLOCK: &str = "generation_size: 5\nredundancy: 0.5\nseed: 7\ntimeout_ms: 4";
        const SLIDING: &str = "code: sliding\nwindow: 4\nredundancy: 0.4\nseed: 7";

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(32))]
            #[test]
            fn split_stream_equals_whole_stream(
                n in 0usize..40, k in 1u32..9, w in 1u32..9, seed: u64, split in 0usize..50
            ) {
                let steps = steps(frames(n, seed), seed, 6);
                let block = format!("generation_size: {k}\nredundancy: 0.5\nseed: 3\ntimeout_ms: 4");
                check_split("nc-encode", &block, &steps, split)?;
                let sliding = format!("code: sliding\nwindow: {w}\nredundancy: 0.35\nseed: 3");
                check_split("nc-encode", &sliding, &steps, split)?;
            }

            #[test]
            fn damaged_state_is_refused_or_harmless(
                seed: u64, which: usize, value in edge_value(), truncate: Option<usize>
            ) {
                let steps = steps(frames(20, seed), seed, 2);
                check_damaged("nc-encode", BLOCK, &steps, which, value, truncate)?;
                check_damaged("nc-encode", SLIDING, &steps, which, value, truncate)?;
            }
        }

        #[test]
        fn state_of_another_config_kind_or_version_is_refused() {
            let steps = steps(frames(7, 1), 1, 1);
            let e = refusal("nc-encode", BLOCK, SLIDING, &steps);
            assert!(e.contains("code block"), "{e}");
            let e = refusal("nc-encode", SLIDING, BLOCK, &steps);
            assert!(e.contains("code sliding"), "{e}");
            let e = refusal(
                "nc-encode",
                BLOCK,
                "generation_size: 6\nredundancy: 0.5\nseed: 7\ntimeout_ms: 4",
                &steps,
            );
            assert!(e.contains("generation_size 5"), "{e}");
            let e = refusal(
                "nc-encode",
                BLOCK,
                "generation_size: 5\nredundancy: 0.5\nseed: 8\ntimeout_ms: 4",
                &steps,
            );
            assert!(e.contains("seed 7"), "{e}");
            let e =
                refusal("nc-encode", BLOCK, "generation_size: 5\nredundancy: 0.5\nseed: 7", &steps);
            assert!(e.contains("timeout_ms 4"), "{e}");
            let e = refusal(
                "nc-encode",
                SLIDING,
                "code: sliding\nwindow: 5\nredundancy: 0.4\nseed: 7",
                &steps,
            );
            assert!(e.contains("window 4"), "{e}");
            check_foreign("nc-encode", BLOCK, "nc-decode");
        }
    }
}
