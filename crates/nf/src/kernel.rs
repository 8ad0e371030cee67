//! The kernel (XDP) form of an NF, as plain data.
//!
//! braid's XDP programs do a subset of what the user-space NFs do. An NF
//! with an XDP version has a `kernel` hook in its [`crate::NfSpec`] that
//! turns descriptor parameters into a [`KernelConfig`], or says precisely
//! which parameter the XDP version cannot express ([`KernelError`]). The
//! hook lives beside the NF (`fwd.rs`, `xor.rs`, `firewall_kernel.rs`), so
//! `braid validate` and `braid plan` refuse or avoid an impossible kernel
//! placement with the same error `braid deploy` gives; the testbed maps
//! the plain data onto the XDP maps (crates/runtime/src/xdp_nf.rs). This
//! crate does not depend on the XDP loader.

use std::net::Ipv4Addr;

use crate::params::{ConfigError, Params};
use crate::REGISTRY;

/// What an XDP program of braid needs to do what an NF's parameters say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelConfig {
    /// `fwd`: no configuration.
    Fwd,
    /// `xor`: the key, repeated from payload byte 0.
    Xor { key: Vec<u8> },
    /// `firewall`: stateless rules in the lookup forms of the XDP firewall.
    Firewall(KernelFirewall),
}

/// A verdict of the XDP firewall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelAction {
    Pass,
    Drop,
}

/// An exact 5-tuple rule of the XDP firewall; `src` 0.0.0.0 with
/// `src_port` 0 is an any-source rule. ICMP rules have ports 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelRule {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
}

/// A firewall configuration as XDP firewall maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelFirewall {
    /// Exact 5-tuple and any-source rules.
    pub tuples: Vec<(KernelRule, KernelAction)>,
    /// Source-prefix rules as (network, length, action).
    pub prefixes: Vec<(Ipv4Addr, u8, KernelAction)>,
    pub default: KernelAction,
    /// Indices of rules left out because an earlier rule covers them.
    pub dead_rules: Vec<usize>,
}

const USE_USER: &str = "use `placement: user` for this NF";

/// Why an NF cannot run in the kernel with its parameters.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    /// The parameters are wrong wherever the NF runs (the user-space NF's
    /// own check, with its field).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The NF kind has no XDP version.
    #[error("kind `{kind}` has no XDP version braid can deploy ({known}); {USE_USER}")]
    NoXdpVersion { kind: String, known: String },
    /// A parameter whose meaning the XDP version cannot express.
    #[error("{field}: {reason}; {USE_USER}")]
    Inexpressible {
        /// Field path below `params` (`rules[2].dst_ports`, `conntrack`).
        field: String,
        /// The firewall rule it belongs to, if any.
        rule: Option<usize>,
        reason: String,
    },
    /// Two firewall rules that XDP would consult in the other order.
    #[error(
        "rules[{rule}] overlaps the earlier rules[{earlier}] with the opposite action; \
         rules[{earlier}] wins in user space but XDP looks rules[{rule}] up first (exact \
         5-tuples, then any-source, then longest source prefix); reorder or narrow the rules, \
         or {USE_USER}"
    )]
    RuleOrder { rule: usize, earlier: usize },
}

impl KernelError {
    /// The field path below the NF's `params` that the error is about
    /// (empty for the parameters as a whole or the NF kind).
    pub fn field(&self) -> String {
        match self {
            KernelError::Config(e) => e.field.clone(),
            KernelError::NoXdpVersion { .. } => String::new(),
            KernelError::Inexpressible { field, .. } => field.clone(),
            KernelError::RuleOrder { rule, .. } => format!("rules[{rule}]"),
        }
    }

    pub(crate) fn inexpressible(field: &str, reason: impl Into<String>) -> KernelError {
        KernelError::Inexpressible { field: field.to_string(), rule: None, reason: reason.into() }
    }
}

/// The kernel configuration of an NF of kind `kind` with `params`.
pub fn translate(kind: &str, params: &Params) -> Result<KernelConfig, KernelError> {
    match crate::find(kind).and_then(|s| s.kernel) {
        Some(hook) => hook(params),
        None => Err(KernelError::NoXdpVersion {
            kind: kind.to_string(),
            known: REGISTRY
                .iter()
                .filter(|s| s.kernel.is_some())
                .map(|s| s.name)
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Placement;

    #[test]
    fn a_kernel_hook_exactly_where_a_kernel_placement_is_declared() {
        for s in REGISTRY {
            assert_eq!(s.kernel.is_some(), s.placements.contains(&Placement::Kernel), "{}", s.name);
        }
    }

    #[test]
    fn other_kinds_name_the_deployable_ones() {
        let e = translate("nat", &Params::Null).unwrap_err();
        for k in ["fwd", "firewall", "xor"] {
            assert!(e.to_string().contains(k), "{e}");
        }
        assert!(e.to_string().ends_with("use `placement: user` for this NF"), "{e}");
        assert_eq!(translate("fwd", &Params::Null), Ok(KernelConfig::Fwd));
    }
}
