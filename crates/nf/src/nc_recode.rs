//! `nc-recode`: an intermediate coding node. Forwards every packet and adds
//! `redundancy` fresh combinations per received block-code packet, mixed
//! from the packets it holds for that generation, without decoding them
//! (recoded packets carry their coefficients explicitly). Sliding-window
//! packets and frames that are not IPv4/UDP pass unchanged; a coding header
//! that does not parse is `malformed`.
//!
//! State (exported whole): the generations held (their equations, credit
//! and count of recoded packets) and the seed generator. A snapshot from
//! other parameters is refused.

use crate::udp_payload::{self, Located, Template};
use crate::{
    Context, DropReason, Encoding, FlowScope, NetworkFunction, NfClass, NfSpec, NfState, ParamDoc,
    Placement, StateError,
};
use braid_coding::header::{Header, HEADER_LEN};
use braid_coding::recoder::{Recoder, RecoderSnapshot};
use braid_packet::Batch;

pub static SPEC: NfSpec = NfSpec {
    name: "nc-recode",
    class: NfClass::Advanced,
    placements: &[Placement::User],
    state: crate::StateKind::Whole,
    kernel: None,
    summary: "RLNC recoder: forwards and adds recombinations of received packets without decoding",
    params: &[
        ParamDoc {
            name: "redundancy",
            kind: "f64, 0..=8",
            default: Some("0.25"),
            help: "recoded packets added per received packet",
        },
        ParamDoc {
            name: "max_generations",
            kind: "u32, >= 1",
            default: Some("8"),
            help: "generations held; one more evicts the oldest",
        },
        ParamDoc {
            name: "seed",
            kind: "u64",
            default: Some("1"),
            help: "seed of the recombination weights",
        },
    ],
    build: |p| {
        let cfg = crate::params::parse::<Config>(p)?;
        if !(0.0..=8.0).contains(&cfg.redundancy) {
            return Err(crate::ConfigError::new(
                "redundancy",
                format!("{} is outside 0..=8", cfg.redundancy),
            ));
        }
        if cfg.max_generations == 0 {
            return Err(crate::ConfigError::new("max_generations", "must be at least 1"));
        }
        Ok(Box::new(NcRecode {
            recoder: Recoder::new(cfg.max_generations as usize, cfg.redundancy, cfg.seed),
            recoded: Vec::new(),
        }))
    },
};

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_redundancy")]
    redundancy: f64,
    #[serde(default = "default_max_generations")]
    max_generations: u32,
    #[serde(default = "default_seed")]
    seed: u64,
}

fn default_redundancy() -> f64 {
    0.25
}
fn default_max_generations() -> u32 {
    8
}
fn default_seed() -> u64 {
    1
}

/// Format version of the exported state (a [`RecoderSnapshot`]).
const STATE_VERSION: u32 = 1;

/// The recoding NF.
#[derive(Debug)]
pub struct NcRecode {
    recoder: Recoder,
    /// Recoded packets due after the current one: header (with its
    /// coefficients) and symbol.
    recoded: Vec<(Vec<u8>, Vec<u8>)>,
}

impl NetworkFunction for NcRecode {
    fn spec(&self) -> &'static NfSpec {
        &SPEC
    }

    fn process(&mut self, batch: &mut Batch, cx: &mut Context<'_>) {
        let input = batch.take();
        for pkt in input {
            let loc = match udp_payload::verdict(pkt.data()) {
                Located::Pass => {
                    batch.push(pkt);
                    continue;
                }
                Located::Drop(reason) => {
                    cx.drop_packet(reason);
                    continue;
                }
                Located::Udp(loc) => loc,
            };
            let frame = pkt.data();
            let Ok(parsed) = Header::parse(&frame[loc.payload..loc.end]) else {
                cx.drop_packet(DropReason::Malformed);
                continue;
            };
            let recoded = &mut self.recoded;
            self.recoder.receive(&parsed, |h, coefs, sym| {
                let mut hb = vec![0u8; HEADER_LEN];
                h.emit(&mut hb);
                hb.extend_from_slice(coefs);
                recoded.push((hb, sym.to_vec()));
            });
            let template = (!self.recoded.is_empty()).then(|| Template::of(frame, loc));
            batch.push(pkt);
            if let Some(t) = template {
                for (hb, sym) in self.recoded.drain(..) {
                    match t.build(&[&hb, &sym]) {
                        Some(p) => {
                            cx.counters.packets_created += 1;
                            batch.push(p);
                        }
                        None => cx.drop_packet(DropReason::NoRoom),
                    }
                }
            }
        }
    }

    fn export_scoped(&self, scope: &FlowScope, encoding: Encoding) -> Result<NfState, StateError> {
        scope.require_all(SPEC.name)?;
        Ok(NfState::encode_as(encoding, SPEC.name, STATE_VERSION, &self.recoder.snapshot()))
    }

    fn import_state(&mut self, state: &NfState) -> Result<(), StateError> {
        let snap: RecoderSnapshot = state.decode(SPEC.name, STATE_VERSION)?;
        self.recoder.restore(&snap).map_err(|e| StateError::Corrupt(e.to_string()))?;
        self.recoded.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Counters, Params};
    use braid_coding::header::Kind;
    use braid_packet::wire::build::FrameSpec;
    use braid_packet::Packet;
    use std::net::Ipv4Addr;

    fn build(name: &str, yaml: &str) -> Box<dyn NetworkFunction> {
        crate::build(name, &serde_yaml_ng::from_str::<Params>(yaml).unwrap()).unwrap()
    }

    #[test]
    fn recoded_packets_replace_lost_ones_downstream() {
        let input: Vec<Vec<u8>> = (0..16)
            .map(|i| {
                let mut s = FrameSpec::udp(
                    (Ipv4Addr::new(10, 0, 0, 1), 7),
                    (Ipv4Addr::new(10, 0, 0, 2), 8),
                    40 + i,
                );
                s.payload = (0..40 + i).map(|j| (i * 5 + j) as u8).collect();
                s.build()
            })
            .collect();
        let mut enc = build("nc-encode", "generation_size: 16\nredundancy: 0.25");
        let mut rec = build("nc-recode", "redundancy: 0.5");
        let mut dec = build("nc-decode", "{}");
        let mut c = Counters::default();
        let mut b: Batch = input.iter().map(|f| Packet::from_bytes(f)).collect();
        enc.process(&mut b, &mut Context::new(0, &mut c));
        assert_eq!(b.len(), 20);
        rec.process(&mut b, &mut Context::new(0, &mut c));
        assert_eq!(b.len(), 30);
        // Keep only the recoded packets: 10 of them, plus 6 sources.
        let mut kept = Batch::new();
        for (i, p) in b.drain().enumerate() {
            let Located::Udp(loc) = udp_payload::verdict(p.data()) else { panic!() };
            let kind = Header::parse(&p.data()[loc.payload..loc.end]).unwrap().header.kind;
            if kind == Kind::BlockRecoded || (kind == Kind::BlockSource && i % 3 == 0) {
                kept.push(p);
            }
        }
        dec.process(&mut kept, &mut Context::new(0, &mut c));
        let out: Vec<Vec<u8>> = kept.iter().map(|p| p.data().to_vec()).collect();
        assert_eq!(out, input);
    }

    #[test]
    fn rejects_bad_params() {
        let p: Params = serde_yaml_ng::from_str("redundancy: -1").unwrap();
        assert_eq!((SPEC.build)(&p).err().unwrap().field, "redundancy");
    }

    mod state {
        use crate::nc_encode::state_test::*;
        use crate::Counters;
        use proptest::prelude::*;

        const RECODE: &str = "redundancy: 0.6\nmax_generations: 3\nseed: 9";

        /// What a block encoder makes of `n` frames, after `loss_pct`% loss,
        /// plus a few sliding-code packets (which pass).
        fn coded(k: u32, n: usize, seed: u64, loss_pct: u64) -> Vec<Vec<u8>> {
            let mut out = Vec::new();
            for cfg in [
                format!("generation_size: {k}\nredundancy: 0.5\nseed: 3\ntimeout_ms: 4"),
                "code: sliding\nwindow: 2".to_string(),
            ] {
                let mut enc = build("nc-encode", &cfg);
                let n = if out.is_empty() { n } else { 3 };
                let steps = steps(frames(n, seed), seed, 3);
                out.extend(run(enc.as_mut(), &steps, &mut Counters::default()));
            }
            lossy(out, loss_pct, seed ^ 0x1055)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(32))]
            #[test]
            fn split_stream_equals_whole_stream(
                n in 0usize..40, k in 1u32..9, seed: u64, loss in 0u64..40, split in 0usize..50,
            ) {
                let steps = steps(coded(k, n, seed, loss), seed ^ 7, 2);
                check_split("nc-recode", RECODE, &steps, split)?;
            }

            #[test]
            fn damaged_state_is_refused_or_harmless(
                seed: u64, which: usize, value in edge_value(), truncate: Option<usize>,
            ) {
                let steps = steps(coded(5, 20, seed, 20), seed, 1);
                check_damaged("nc-recode", RECODE, &steps, which, value, truncate)?;
            }
        }

        #[test]
        fn state_of_another_config_kind_or_version_is_refused() {
            let steps = steps(coded(6, 9, 1, 30), 1, 1);
            let e = refusal(
                "nc-recode",
                RECODE,
                "redundancy: 0.5\nmax_generations: 3\nseed: 9",
                &steps,
            );
            assert!(e.contains("redundancy 0.6"), "{e}");
            let e = refusal(
                "nc-recode",
                RECODE,
                "redundancy: 0.6\nmax_generations: 2\nseed: 9",
                &steps,
            );
            assert!(e.contains("max_generations 3"), "{e}");
            check_foreign("nc-recode", RECODE, "nc-encode");
        }
    }
}
