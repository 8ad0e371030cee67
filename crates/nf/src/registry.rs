//! The NF registry: every NF kind by name.

use crate::params::{ConfigError, ParamDoc, Params};
use crate::{NetworkFunction, NfClass, Placement};

/// Static description of one NF kind, and how to build it.
pub struct NfSpec {
    /// The name used in descriptors (`type: router`).
    pub name: &'static str,
    pub class: NfClass,
    /// Where implementations exist, preferred first.
    pub placements: &'static [Placement],
    /// True if the NF keeps per-flow or learned state (exportable).
    pub stateful: bool,
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

    #[test]
    fn unknown_kind_lists_known_ones() {
        let e = build("rooter", &Params::Null).err().unwrap();
        assert!(e.to_string().contains("fwd"), "{e}");
    }
}
