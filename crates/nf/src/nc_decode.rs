//! `nc-decode`: decodes what `nc-encode` (and `nc-recode`) produce, block
//! and sliding-window packets alike (told apart by the header kind).
//!
//! Sources come out in order (within their generation for the block code,
//! by sequence number for the sliding code) as soon as they are decodable,
//! with the coding header removed and IPv4/UDP lengths and checksums fixed.
//! Recovered sources get the headers of the packet that completed their
//! decoding. Coded and redundant packets are absorbed (not counted as
//! drops). Bounded memory: `max_generations` incomplete block generations
//! and `span` pending sliding sequence numbers; what falls out, and what is
//! still incomplete `timeout_ms` after its last packet (checked on `tick`),
//! is counted as dropped `undecodable`, one per lost source. Frames that
//! are not IPv4/UDP pass unchanged; a coding header that does not parse, or
//! a decoded symbol whose length field does not fit, is `malformed`.
//!
//! State (exported whole): both decoders (incomplete generations with their
//! equations, recently finished generation ids, the sliding range, history
//! and counts), the headers of the latest packet and how many losses are
//! already counted as drops. A snapshot from other parameters is refused.

use crate::nc_encode::{template_frame, template_of_frame};
use crate::udp_payload::{self, Located, Template, UdpLoc};
use crate::{
    Context, DropReason, Encoding, FlowScope, NetworkFunction, NfClass, NfSpec, NfState, ParamDoc,
    Placement, StateError,
};
use braid_coding::decoder::{
    BlockDecoder, BlockDecoderSnapshot, DecoderStats, Delivered, SlidingDecoder,
    SlidingDecoderSnapshot,
};
use braid_coding::header::{Header, Kind};
use braid_packet::{Batch, Packet};

pub static SPEC: NfSpec = NfSpec {
    name: "nc-decode",
    class: NfClass::Advanced,
    placements: &[Placement::User],
    state: crate::StateKind::Whole,
    kernel: None,
    summary: "RLNC decoder: progressive Gaussian elimination, in-order delivery, bounded memory",
    params: &[
        ParamDoc {
            name: "max_generations",
            kind: "u32, >= 1",
            default: Some("8"),
            help: "block: incomplete generations held; one more evicts the oldest",
        },
        ParamDoc {
            name: "span",
            kind: "u32, 1..=4096",
            default: Some("64"),
            help: "sliding: pending sequence numbers held (at least the encoder's window)",
        },
        ParamDoc {
            name: "timeout_ms",
            kind: "u64",
            default: Some("50"),
            help: "give up incomplete data this long after its last packet (on tick)",
        },
    ],
    build: |p| Ok(Box::new(NcDecode::new(&crate::params::parse::<Config>(p)?)?)),
};

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_max_generations")]
    pub max_generations: u32,
    #[serde(default = "default_span")]
    pub span: u32,
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
}

fn default_max_generations() -> u32 {
    8
}
fn default_span() -> u32 {
    64
}
fn default_timeout() -> u64 {
    50
}

/// Format version of the exported state.
const STATE_VERSION: u32 = 1;

/// The exported state.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct DecodeState {
    /// The configured give-up timeout, checked on import.
    timeout_ns: u64,
    block: BlockDecoderSnapshot,
    sliding: SlidingDecoderSnapshot,
    /// Headers of the latest packet, as a frame with an empty UDP payload.
    template: Option<Vec<u8>>,
    /// Undecodable and malformed counts already turned into drops.
    reported: (u64, u64),
}

/// The decoding NF.
#[derive(Debug)]
pub struct NcDecode {
    block: BlockDecoder,
    sliding: SlidingDecoder,
    timeout_ns: u64,
    template: Option<Template>,
    /// Undecodable and malformed counts already turned into drops.
    reported: (u64, u64),
}

impl NcDecode {
    pub fn new(cfg: &Config) -> Result<NcDecode, crate::ConfigError> {
        if cfg.max_generations == 0 {
            return Err(crate::ConfigError::new("max_generations", "must be at least 1"));
        }
        if !(1..=4096).contains(&cfg.span) {
            return Err(crate::ConfigError::new(
                "span",
                format!("{} is outside 1..=4096", cfg.span),
            ));
        }
        Ok(NcDecode {
            block: BlockDecoder::new(cfg.max_generations as usize),
            sliding: SlidingDecoder::new(cfg.span as usize),
            timeout_ns: cfg.timeout_ms.saturating_mul(1_000_000),
            template: None,
            reported: (0, 0),
        })
    }

    /// Decoder statistics of both codes, summed.
    pub fn stats(&self) -> DecoderStats {
        let (a, b) = (self.block.stats(), self.sliding.stats());
        DecoderStats {
            delivered: a.delivered + b.delivered,
            undecodable: a.undecodable + b.undecodable,
            redundant: a.redundant + b.redundant,
            malformed: a.malformed + b.malformed,
        }
    }

    /// Count new undecodable sources and corrupt symbols as drops.
    fn report(&mut self, cx: &mut Context<'_>) {
        let s = self.stats();
        for _ in self.reported.0..s.undecodable {
            cx.drop_packet(DropReason::Undecodable);
        }
        for _ in self.reported.1..s.malformed {
            cx.drop_packet(DropReason::Malformed);
        }
        self.reported = (s.undecodable, s.malformed);
    }

    fn decode(
        &mut self,
        pkt: &Packet,
        loc: UdpLoc,
        out: &mut Batch,
        cx: &mut Context<'_>,
    ) -> Result<(), DropReason> {
        let frame = pkt.data();
        let parsed =
            Header::parse(&frame[loc.payload..loc.end]).map_err(|_| DropReason::Malformed)?;
        let template: &Template = match &mut self.template {
            Some(t) => {
                t.set(frame, loc);
                t
            }
            None => self.template.insert(Template::of(frame, loc)),
        };
        let mut no_room = 0;
        let mut deliver = |d: Delivered<'_>| match template.build(&[d.payload]) {
            Some(p) => out.push(p),
            None => no_room += 1,
        };
        match parsed.header.kind {
            Kind::BlockSource | Kind::BlockCoded | Kind::BlockRecoded => {
                self.block.receive(&parsed, cx.now_ns, &mut deliver)
            }
            Kind::SlidingSource | Kind::SlidingCoded => {
                self.sliding.receive(&parsed, cx.now_ns, &mut deliver)
            }
        }
        for _ in 0..no_room {
            cx.drop_packet(DropReason::NoRoom);
        }
        Ok(())
    }
}

impl NetworkFunction for NcDecode {
    fn spec(&self) -> &'static NfSpec {
        &SPEC
    }

    fn process(&mut self, batch: &mut Batch, cx: &mut Context<'_>) {
        let input = batch.take();
        for pkt in input {
            match udp_payload::verdict(pkt.data()) {
                Located::Pass => batch.push(pkt),
                Located::Drop(reason) => cx.drop_packet(reason),
                Located::Udp(loc) => {
                    if let Err(reason) = self.decode(&pkt, loc, batch, cx) {
                        cx.drop_packet(reason);
                    }
                }
            }
        }
        self.report(cx);
    }

    fn tick(&mut self, out: &mut Batch, cx: &mut Context<'_>) {
        let Some(template) = &self.template else { return };
        let mut no_room = 0;
        let mut deliver = |d: Delivered<'_>| match template.build(&[d.payload]) {
            Some(p) => out.push(p),
            None => no_room += 1,
        };
        self.block.expire(cx.now_ns, self.timeout_ns, &mut deliver);
        self.sliding.expire(cx.now_ns, self.timeout_ns, &mut deliver);
        for _ in 0..no_room {
            cx.drop_packet(DropReason::NoRoom);
        }
        self.report(cx);
    }

    fn wants_tick(&self) -> bool {
        // Generations waiting for their timeout (and the loss report that
        // goes with them): not tracked apart, so always.
        self.template.is_some()
    }

    fn export_scoped(&self, scope: &FlowScope, encoding: Encoding) -> Result<NfState, StateError> {
        scope.require_all(SPEC.name)?;
        let state = DecodeState {
            timeout_ns: self.timeout_ns,
            block: self.block.snapshot(),
            sliding: self.sliding.snapshot(),
            template: self.template.as_ref().and_then(template_frame),
            reported: self.reported,
        };
        Ok(NfState::encode_as(encoding, SPEC.name, STATE_VERSION, &state))
    }

    fn import_state(&mut self, state: &NfState) -> Result<(), StateError> {
        let s: DecodeState = state.decode(SPEC.name, STATE_VERSION)?;
        if s.timeout_ns != self.timeout_ns {
            return Err(StateError::Corrupt(format!(
                "snapshot has timeout_ms {}, this nc-decode {}",
                s.timeout_ns / 1_000_000,
                self.timeout_ns / 1_000_000
            )));
        }
        let template = s.template.as_deref().map(template_of_frame).transpose()?;
        // Build both decoders aside: nothing changes unless all of it fits.
        let block = self.block.restored(&s.block).map_err(|e| corrupt("block", e.to_string()))?;
        let sliding =
            self.sliding.restored(&s.sliding).map_err(|e| corrupt("sliding", e.to_string()))?;
        // Losses become drops at the end of every `process` and `tick`, so
        // between them every count is reported. (The decoders refuse
        // counts above 2^62: the sums do not overflow.)
        let (b, l) = (s.block.stats, s.sliding.stats);
        let counts = (b.undecodable + l.undecodable, b.malformed + l.malformed);
        if s.reported != counts {
            return Err(StateError::Corrupt(format!(
                "reported drops {:?} differ from the decoders' counts {counts:?}",
                s.reported
            )));
        }
        self.block = block;
        self.sliding = sliding;
        self.template = template;
        self.reported = s.reported;
        Ok(())
    }
}

fn corrupt(decoder: &str, e: String) -> StateError {
    StateError::Corrupt(format!("{decoder} decoder: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Counters, Params};
    use braid_packet::wire::build::FrameSpec;
    use std::net::Ipv4Addr;

    fn build(name: &str, yaml: &str) -> Box<dyn NetworkFunction> {
        crate::build(name, &serde_yaml_ng::from_str::<Params>(yaml).unwrap()).unwrap()
    }

    fn frames(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                let len = 1 + (i * 37) % 300;
                let mut s = FrameSpec::udp(
                    (Ipv4Addr::new(10, 0, 0, 1), 7),
                    (Ipv4Addr::new(10, 0, 0, 2), 8),
                    len,
                );
                s.payload = (0..len).map(|j| (i * 3 + j) as u8).collect();
                s.build()
            })
            .collect()
    }

    fn run(nf: &mut dyn NetworkFunction, input: Vec<Packet>, c: &mut Counters) -> Vec<Packet> {
        let mut b: Batch = input.into_iter().collect();
        nf.process(&mut b, &mut Context::new(0, c));
        b.into_iter().collect()
    }

    #[test]
    fn lost_sources_are_recovered_in_order_byte_for_byte() {
        let input = frames(8);
        let mut enc = build("nc-encode", "generation_size: 8\nredundancy: 0.25");
        let mut dec = build("nc-decode", "{}");
        let mut c = Counters::default();
        let mut coded =
            run(enc.as_mut(), input.iter().map(|f| Packet::from_bytes(f)).collect(), &mut c);
        assert_eq!(coded.len(), 10);
        coded.remove(5);
        coded.remove(2);
        let out = run(dec.as_mut(), coded, &mut c);
        let out: Vec<Vec<u8>> = out.iter().map(|p| p.data().to_vec()).collect();
        assert_eq!(out, input);
        assert_eq!(c.dropped_total(), 0);
    }

    #[test]
    fn too_many_losses_are_counted_undecodable_on_timeout() {
        let input = frames(8);
        let mut enc = build("nc-encode", "generation_size: 8\nredundancy: 0.25");
        let mut dec = build("nc-decode", "timeout_ms: 5");
        let mut c = Counters::default();
        let mut coded =
            run(enc.as_mut(), input.iter().map(|f| Packet::from_bytes(f)).collect(), &mut c);
        for i in [6, 4, 3, 0] {
            coded.remove(i);
        }
        let mut dc = Counters::default();
        let out = run(dec.as_mut(), coded, &mut dc);
        // Sources 0, 3, 4, 6 are lost and 2 coded packets cannot recover
        // 4 sources: nothing can be delivered in order yet.
        assert!(out.is_empty());
        let mut late = Batch::new();
        dec.tick(&mut late, &mut Context::new(4_000_000, &mut dc));
        assert!(late.is_empty());
        dec.tick(&mut late, &mut Context::new(5_000_000, &mut dc));
        // The arrived sources come out; the lost ones are counted.
        let got: Vec<Vec<u8>> = late.iter().map(|p| p.data().to_vec()).collect();
        let want: Vec<Vec<u8>> = [1, 2, 5, 7].iter().map(|&i| input[i].clone()).collect();
        assert!(got == want, "delivered {} frames, want sources 1, 2, 5, 7", got.len());
        assert_eq!(dc.dropped(DropReason::Undecodable), 4);
    }

    #[test]
    fn garbage_coding_headers_are_malformed_and_others_pass() {
        let mut dec = build("nc-decode", "{}");
        let mut c = Counters::default();
        let plain = frames(1).pop().unwrap();
        let tcp = FrameSpec::tcp((Ipv4Addr::LOCALHOST, 1), (Ipv4Addr::LOCALHOST, 2), 0).build();
        let out =
            run(dec.as_mut(), vec![Packet::from_bytes(&plain), Packet::from_bytes(&tcp)], &mut c);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].data(), &tcp[..]);
        assert_eq!(c.dropped(DropReason::Malformed), 1);
    }

    #[test]
    fn rejects_bad_params() {
        let p: Params = serde_yaml_ng::from_str("max_generations: 0").unwrap();
        assert_eq!((SPEC.build)(&p).err().unwrap().field, "max_generations");
        let p: Params = serde_yaml_ng::from_str("span: 0").unwrap();
        assert_eq!((SPEC.build)(&p).err().unwrap().field, "span");
    }

    proptest::proptest! {
        #[test]
        fn any_frame_never_panics(frame in braid_packet::strategy::any_frame()) {
            for name in ["nc-decode", "nc-encode", "nc-recode", "loss"] {
                let mut nf = build(name, "{}");
                let mut c = Counters::default();
                let out = run(nf.as_mut(), vec![Packet::from_bytes(&frame)], &mut c);
                // One packet never turns into more than two on the way out.
                proptest::prop_assert!(out.len() <= 2, "{name}: {} out", out.len());
                // A decoder counts the sources a packet shows to be lost
                // (`undecodable`), not only the packet itself: one packet
                // can write off at most a whole span of sequence numbers.
                let bound = 1 + default_span() as u64;
                proptest::prop_assert!(c.dropped_total() <= bound, "{name}: {:?}", c.drop_breakdown());
            }
        }
    }

    mod state {
        use crate::nc_encode::state_test::*;
        use crate::Counters;
        use proptest::prelude::*;

        const DECODE: &str = "max_generations: 3\nspan: 16\ntimeout_ms: 5";

        /// What `encoder` makes of `n` frames, after `loss_pct`% loss.
        fn coded(encoder: &str, n: usize, seed: u64, loss_pct: u64) -> Vec<Vec<u8>> {
            let mut enc = build("nc-encode", encoder);
            let out = run(enc.as_mut(), &steps(frames(n, seed), seed, 3), &mut Counters::default());
            lossy(out, loss_pct, seed ^ 0x1055)
        }

        /// Swap neighbours where `seed`'s bits say so (local reordering).
        fn reordered(mut frames: Vec<Vec<u8>>, seed: u64) -> Vec<Vec<u8>> {
            for i in (1..frames.len()).step_by(2) {
                if seed >> (i % 64) & 1 == 1 {
                    frames.swap(i - 1, i);
                }
            }
            frames
        }

        fn block(k: u32) -> String {
            format!("generation_size: {k}\nredundancy: 0.5\nseed: 3\ntimeout_ms: 4")
        }

        fn sliding(w: u32) -> String {
            format!("code: sliding\nwindow: {w}\nredundancy: 0.5\nseed: 3")
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(32))]
            #[test]
            fn split_stream_equals_whole_stream(
                n in 0usize..40, k in 1u32..9, w in 1u32..9, seed: u64,
                loss in 0u64..40, reorder: u64, split in 0usize..50,
            ) {
                for input in [coded(&block(k), n, seed, loss), coded(&sliding(w), n, seed, loss)] {
                    let steps = steps(reordered(input, reorder), seed ^ 7, 7);
                    check_split("nc-decode", DECODE, &steps, split)?;
                }
            }

            #[test]
            fn damaged_state_is_refused_or_harmless(
                seed: u64, which: usize, value in edge_value(), truncate: Option<usize>,
            ) {
                for input in [coded(&block(6), 20, seed, 20), coded(&sliding(4), 20, seed, 20)] {
                    let steps = steps(input, seed, 1);
                    check_damaged("nc-decode", DECODE, &steps, which, value, truncate)?;
                }
            }
        }

        #[test]
        fn state_of_another_config_kind_or_version_is_refused() {
            let steps = steps(coded(&block(6), 9, 1, 30), 1, 1);
            let e =
                refusal("nc-decode", DECODE, "max_generations: 4\nspan: 16\ntimeout_ms: 5", &steps);
            assert!(e.contains("block decoder: snapshot has max_generations 3"), "{e}");
            let e =
                refusal("nc-decode", DECODE, "max_generations: 3\nspan: 17\ntimeout_ms: 5", &steps);
            assert!(e.contains("sliding decoder: snapshot has span 16"), "{e}");
            let e = refusal("nc-decode", DECODE, "max_generations: 3\nspan: 16", &steps);
            assert!(e.contains("timeout_ms 5"), "{e}");
            check_foreign("nc-decode", DECODE, "nc-recode");
        }
    }
}
