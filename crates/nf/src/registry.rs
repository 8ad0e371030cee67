//! The NF registry: every NF kind by name.

use crate::kernel::{KernelConfig, KernelError};
use crate::params::{ConfigError, ParamDoc, Params};
use crate::{NetworkFunction, NfClass, Placement, StateKind};

/// Translation of an NF's parameters into its kernel configuration.
pub type KernelHook = fn(&Params) -> Result<KernelConfig, KernelError>;

/// Static description of one NF kind, and how to build it.
pub struct NfSpec {
    /// The name used in descriptors (`type: router`).
    pub name: &'static str,
    pub class: NfClass,
    /// Where implementations exist, preferred first.
    pub placements: &'static [Placement],
    /// What state the NF keeps: none, whole, or per flow with the key that
    /// partitions it (what migration and splitting by flow rely on).
    pub state: StateKind,
    /// Its kernel (XDP) form for given parameters, if it has one (exactly
    /// when `placements` has `Kernel`): what `validate`, `plan` and the
    /// testbed's XDP loader use, so all three refuse the same parameters
    /// with the same error.
    pub kernel: Option<KernelHook>,
    /// One line: what it does.
    pub summary: &'static str,
    pub params: &'static [ParamDoc],
    /// Build an instance from descriptor parameters.
    pub build: fn(&Params) -> Result<Box<dyn NetworkFunction>, ConfigError>,
}

impl std::fmt::Debug for NfSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NfSpec").field("name", &self.name).field("class", &self.class).finish()
    }
}

/// Every NF kind, in the order `braid nfs` lists them.
pub static REGISTRY: &[&NfSpec] = &[
    &crate::fwd::SPEC,
    &crate::ats::SPEC,
    &crate::xor::SPEC,
    &crate::l2switch::SPEC,
    &crate::loadbalancer::SPEC,
    &crate::meter::SPEC,
    &crate::router::SPEC,
    &crate::firewall::SPEC,
    &crate::nat::SPEC,
    &crate::encrypt::SPEC,
    &crate::decrypt::SPEC,
    &crate::nc_encode::SPEC,
    &crate::nc_recode::SPEC,
    &crate::nc_decode::SPEC,
    &crate::loss::SPEC,
    &crate::delay::SPEC,
    &crate::dpi::SPEC,
    &crate::steer::SPEC,
];

/// Look up an NF kind by name.
pub fn find(name: &str) -> Option<&'static NfSpec> {
    REGISTRY.iter().copied().find(|s| s.name == name)
}

/// Error from [`build`].
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("unknown NF type `{name}`; known types: {known}")]
    UnknownKind { name: String, known: String },
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Build an NF of kind `name` from its parameters.
pub fn build(name: &str, params: &Params) -> Result<Box<dyn NetworkFunction>, BuildError> {
    let spec = find(name).ok_or_else(|| BuildError::UnknownKind {
        name: name.to_string(),
        known: REGISTRY.iter().map(|s| s.name).collect::<Vec<_>>().join(", "),
    })?;
    Ok((spec.build)(params)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_buildable_with_defaults_or_clear_errors() {
        let mut names: Vec<_> = REGISTRY.iter().map(|s| s.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), REGISTRY.len());
        for spec in REGISTRY {
            // Either defaults suffice or the error names a field.
            if let Err(e) = (spec.build)(&Params::Null) {
                assert!(!e.message.is_empty(), "{}", spec.name);
            }
        }
    }

    /// Parameters for the NFs that cannot be built from defaults alone.
    /// Every NF must be buildable from its defaults or from an entry here,
    /// so the no-panic property below covers each NF, including new ones.
    const MINIMAL_PARAMS: &[(&str, &str)] = &[
        ("router", "mac: 02:00:00:00:00:fe\nip: 10.0.0.254\nroutes: [{prefix: 10.0.0.0/8, next_hop_mac: 02:00:00:00:00:01}]"),
        ("nat", "external_ip: 192.0.2.1\ninternal: [10.0.0.0/8]"),
        ("loadbalancer", "vip: 10.1.0.1\nbackends: [{ip: 10.2.0.1}, {ip: 10.2.0.2}]"),
        ("l2switch", "ports: 4"),
        ("steer", "instances: 2"),
        ("meter", "cir: 1000000\ncbs: 3000"),
        ("xor", "key_text: braid"),
        ("encrypt", "mode: gcm\nkey: 000102030405060708090a0b0c0d0e0f"),
        ("decrypt", "mode: gcm\nkey: 000102030405060708090a0b0c0d0e0f"),
        ("dpi", "rules: [{sid: 1, content: attack}, {sid: 2, pcre: 'user=[a-z]+', action: drop}]\nlog_per_sec: 0"),
    ];

    fn build_minimal(spec: &NfSpec) -> Box<dyn NetworkFunction> {
        match MINIMAL_PARAMS.iter().find(|(name, _)| *name == spec.name) {
            Some((_, yaml)) => (spec.build)(&serde_yaml_ng::from_str(yaml).unwrap())
                .unwrap_or_else(|e| panic!("{}: minimal params rejected: {e}", spec.name)),
            None => (spec.build)(&Params::Null).unwrap_or_else(|e| {
                panic!("{} needs parameters: add it to MINIMAL_PARAMS ({e})", spec.name)
            }),
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Every registered NF takes any bytes (valid, mutated, truncated,
        /// garbage frames) without panicking, in `process` and `tick`, and
        /// never multiplies one packet into more than a handful.
        #[test]
        fn every_nf_survives_any_frame(
            frames in proptest::collection::vec(braid_packet::strategy::any_frame(), 1..8)
        ) {
            for spec in REGISTRY {
                let mut nf = build_minimal(spec);
                let mut counters = crate::Counters::default();
                let mut batch: braid_packet::Batch =
                    frames.iter().map(|f| braid_packet::Packet::from_bytes(f)).collect();
                nf.process(&mut batch, &mut crate::Context::new(1, &mut counters));
                // l2switch floods to every other port (3 copies with 4
                // ports); the coding NFs may add a coded packet.
                proptest::prop_assert!(batch.len() <= 3 * frames.len() + 1, "{}: {} out", spec.name, batch.len());
                let mut out = braid_packet::Batch::new();
                nf.tick(&mut out, &mut crate::Context::new(u64::MAX / 2, &mut counters));
            }
        }
    }

    #[test]
    fn unknown_kind_lists_known_ones() {
        let e = build("rooter", &Params::Null).err().unwrap();
        assert!(e.to_string().contains("fwd"), "{e}");
    }
}
