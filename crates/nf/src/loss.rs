//! `loss`: drops a random fraction of packets, for testing what is
//! downstream (network coding, retransmission). Seeded, so a run repeats
//! exactly: the n-th packet's fate depends only on the seed and n.

use crate::{Context, DropReason, NetworkFunction, NfClass, NfSpec, ParamDoc, Placement};
use crate::{Encoding, FlowScope, NfState, StateError};
use braid_packet::Batch;

pub static SPEC: NfSpec = NfSpec {
    name: "loss",
    class: NfClass::Basic,
    placements: &[Placement::User],
    state: crate::StateKind::Whole,
    kernel: None,
    summary: "drop a seeded random fraction of packets (loss emulation)",
    params: &[
        ParamDoc {
            name: "rate",
            kind: "f64, 0..=1",
            default: Some("0.0"),
            help: "probability that a packet is dropped",
        },
        ParamDoc {
            name: "seed",
            kind: "u64",
            default: Some("1"),
            help: "random seed; the same seed drops the same packets",
        },
    ],
    build: |p| {
        let cfg = crate::params::parse::<Config>(p)?;
        Ok(Box::new(Loss::new(cfg.rate, cfg.seed)?))
    },
};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    rate: f64,
    #[serde(default = "default_seed")]
    seed: u64,
}

fn default_seed() -> u64 {
    1
}

/// The loss emulator.
#[derive(Debug)]
pub struct Loss {
    /// Drop when the next 64-bit random number is below this.
    threshold: u64,
    drop_all: bool,
    state: u64,
}

impl Loss {
    pub fn new(rate: f64, seed: u64) -> Result<Loss, crate::ConfigError> {
        if !(0.0..=1.0).contains(&rate) {
            return Err(crate::ConfigError::new(
                "rate",
                format!("{rate} is not a probability in 0..=1"),
            ));
        }
        Ok(Loss { threshold: (rate * u64::MAX as f64) as u64, drop_all: rate >= 1.0, state: seed })
    }

    /// Whether the next packet is lost.
    pub fn next_lost(&mut self) -> bool {
        let r = braid_coding::header::splitmix64(&mut self.state);
        self.drop_all || r < self.threshold
    }
}

impl NetworkFunction for Loss {
    fn spec(&self) -> &'static NfSpec {
        &SPEC
    }

    fn keeps_lengths(&self) -> bool {
        true
    }

    fn process(&mut self, batch: &mut Batch, cx: &mut Context<'_>) {
        batch.retain_mut(|_| {
            if self.next_lost() {
                cx.drop_packet(DropReason::Loss);
                false
            } else {
                true
            }
        });
    }

    /// The random generator's position: an instance that imports it loses
    /// the packets the exporter would have lost next.
    fn export_scoped(&self, scope: &FlowScope, encoding: Encoding) -> Result<NfState, StateError> {
        scope.require_all(SPEC.name)?;
        Ok(NfState::encode_as(encoding, SPEC.name, STATE_VERSION, &self.state))
    }

    fn import_state(&mut self, state: &NfState) -> Result<(), StateError> {
        self.state = state.decode(SPEC.name, STATE_VERSION)?;
        Ok(())
    }
}

const STATE_VERSION: u32 = 1;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Counters, Params};
    use braid_packet::Packet;

    fn run(rate: f64, seed: u64, n: usize) -> (Vec<u16>, Counters) {
        let p: Params = serde_yaml_ng::from_str(&format!("rate: {rate}\nseed: {seed}")).unwrap();
        let mut nf = (SPEC.build)(&p).unwrap();
        let mut c = Counters::default();
        let mut out = Vec::new();
        for chunk in (0..n).collect::<Vec<_>>().chunks(32) {
            let mut b: Batch =
                chunk.iter().map(|&i| Packet::from_bytes(&(i as u16).to_be_bytes())).collect();
            nf.process(&mut b, &mut Context::new(0, &mut c));
            out.extend(b.iter().map(|p| u16::from_be_bytes([p.data()[0], p.data()[1]])));
        }
        (out, c)
    }

    #[test]
    fn drops_about_the_rate_repeatably_and_keeps_order() {
        let (a, c) = run(0.2, 7, 10_000);
        let dropped = c.dropped(DropReason::Loss);
        assert_eq!(a.len() as u64 + dropped, 10_000);
        // 10 000 Bernoulli(0.2) trials: mean 2000, sd 40.
        assert!((1800..2200).contains(&dropped), "{dropped}");
        assert_eq!(run(0.2, 7, 10_000).0, a, "same seed, same losses");
        assert_ne!(run(0.2, 8, 10_000).0, a);
        assert!(a.windows(2).all(|w| w[0] < w[1]), "survivors keep their order");
        assert_eq!(run(0.0, 1, 1000).0.len(), 1000);
        assert_eq!(run(1.0, 1, 1000).0.len(), 0);
    }

    #[test]
    fn rejects_bad_rate() {
        let p: Params = serde_yaml_ng::from_str("rate: 1.5").unwrap();
        assert_eq!((SPEC.build)(&p).err().unwrap().field, "rate");
        let p: Params = serde_yaml_ng::from_str("rat: 0.5").unwrap();
        assert!((SPEC.build)(&p).err().unwrap().message.contains("rat"));
    }
}
