//! `fwd`: forward every packet unchanged (CALVIN's elementary NF).

use crate::{Context, NetworkFunction, NfClass, NfSpec, Placement};
use braid_packet::Batch;

pub static SPEC: NfSpec = NfSpec {
    name: "fwd",
    class: NfClass::Elementary,
    placements: &[Placement::Kernel, Placement::User],
    state: crate::StateKind::None,
    kernel: Some(|p| {
        crate::params::parse::<Config>(p)?;
        Ok(crate::kernel::KernelConfig::Fwd)
    }),
    summary: "forward every packet unchanged",
    params: &[],
    build: |p| {
        crate::params::parse::<Config>(p)?;
        Ok(Box::new(Fwd))
    },
};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {}

/// The forwarder. Stateless and free: it does not touch the packets.
#[derive(Debug, Default)]
pub struct Fwd;

impl NetworkFunction for Fwd {
    fn spec(&self) -> &'static NfSpec {
        &SPEC
    }

    fn keeps_lengths(&self) -> bool {
        true
    }

    #[inline]
    fn process(&mut self, _batch: &mut Batch, _cx: &mut Context<'_>) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Counters, Params};
    use braid_packet::Packet;

    #[test]
    fn forwards_unchanged_including_garbage() {
        let mut nf = (SPEC.build)(&Params::Null).unwrap();
        let frames: Vec<Vec<u8>> = vec![vec![], vec![1, 2, 3], vec![0xff; 1514]];
        let mut b: Batch = frames.iter().map(|f| Packet::from_bytes(f)).collect();
        let mut c = Counters::default();
        nf.process(&mut b, &mut Context::new(1, &mut c));
        let out: Vec<Vec<u8>> = b.iter().map(|p| p.data().to_vec()).collect();
        assert_eq!(out, frames);
        assert_eq!(c.dropped_total(), 0);
    }

    #[test]
    fn rejects_unknown_params() {
        let p: Params = serde_yaml_ng::from_str("bogus: 1").unwrap();
        let e = (SPEC.build)(&p).err().unwrap();
        assert!(e.message.contains("bogus"), "{e}");
    }
}
