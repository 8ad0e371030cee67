//! Kernel NFs: the plain-data kernel configuration that each NF's `kernel`
//! hook gives (`braid_nf::kernel`, beside the NF: `fwd.rs`, `xor.rs`,
//! `firewall_kernel.rs`) mapped onto braid's XDP programs and their maps.
//! Used by `braid deploy` on the testbed (`braid_testbed::deploy`) and by
//! braidd's kernel chains.
//!
//! The translation itself (which parameters XDP can express, with errors
//! that name the parameter and suggest `placement: user`) lives in
//! braid-nf so that `braid validate` and `braid plan` give the same answer
//! as a deployment; this file only loads what it produced.

use braid_io::xdp::{FwAction, FwRule, XdpChain, XdpError, XdpNf, XdpProgram};
use braid_nf::kernel::{KernelAction, KernelConfig, KernelError, KernelRule};
use braid_nf::Params;

/// A kernel NF with its XDP configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelNf(pub KernelConfig);

impl KernelNf {
    /// Translate the params of a `kind` NF; errors name the parameter.
    pub fn translate(kind: &str, params: &Params) -> Result<KernelNf, KernelError> {
        braid_nf::kernel::translate(kind, params).map(KernelNf)
    }

    /// The XDP program of this NF.
    pub fn xdp(&self) -> XdpNf {
        match &self.0 {
            KernelConfig::Fwd => XdpNf::Fwd,
            KernelConfig::Xor { .. } => XdpNf::Xor,
            KernelConfig::Firewall(_) => XdpNf::Firewall,
        }
    }

    /// Fill the maps of a single-NF program loaded for [`KernelNf::xdp`].
    pub fn configure_program(&self, p: &mut XdpProgram) -> Result<(), XdpError> {
        match &self.0 {
            KernelConfig::Fwd => Ok(()),
            KernelConfig::Xor { key } => p.set_xor_key(key),
            KernelConfig::Firewall(fw) => {
                for (rule, action) in &fw.tuples {
                    p.add_fw_rule(&fw_rule(rule), fw_action(*action))?;
                }
                for (net, len, action) in &fw.prefixes {
                    p.add_fw_src_prefix(*net, *len, fw_action(*action))?;
                }
                p.set_fw_default(fw_action(fw.default))
            }
        }
    }

    /// Fill the maps of stage `slot` of a chain program.
    pub fn configure_stage(&self, c: &mut XdpChain, slot: usize) -> Result<(), XdpError> {
        match &self.0 {
            KernelConfig::Fwd => Ok(()),
            KernelConfig::Xor { key } => c.set_xor_key(slot, key),
            KernelConfig::Firewall(fw) => {
                for (rule, action) in &fw.tuples {
                    c.add_fw_rule(slot, &fw_rule(rule), fw_action(*action))?;
                }
                for (net, len, action) in &fw.prefixes {
                    c.add_fw_src_prefix(slot, *net, *len, fw_action(*action))?;
                }
                c.set_fw_default(slot, fw_action(fw.default))
            }
        }
    }
}

/// The XDP firewall's action for a kernel verdict.
pub fn fw_action(a: KernelAction) -> FwAction {
    match a {
        KernelAction::Pass => FwAction::Pass,
        KernelAction::Drop => FwAction::Drop,
    }
}

/// The XDP firewall's rule for a kernel rule.
pub fn fw_rule(r: &KernelRule) -> FwRule {
    FwRule { src: r.src, dst: r.dst, src_port: r.src_port, dst_port: r.dst_port, proto: r.proto }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn params(yaml: &str) -> Params {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    #[test]
    fn kernel_configs_map_to_their_xdp_programs() {
        assert_eq!(KernelNf::translate("fwd", &Params::Null).unwrap().xdp(), XdpNf::Fwd);
        assert_eq!(KernelNf::translate("xor", &params("key: \"0x5a\"")).unwrap().xdp(), XdpNf::Xor);
        let fw = KernelNf::translate("firewall", &params("{conntrack: false}")).unwrap();
        assert_eq!(fw.xdp(), XdpNf::Firewall);
        let r = KernelRule { src: SERVER, dst: SERVER, src_port: 1, dst_port: 2, proto: 17 };
        assert_eq!(
            fw_rule(&r),
            FwRule { src: SERVER, dst: SERVER, src_port: 1, dst_port: 2, proto: 17 }
        );
        assert_eq!(fw_action(KernelAction::Drop), FwAction::Drop);
        let e = KernelNf::translate("nat", &Params::Null).unwrap_err();
        assert!(matches!(e, KernelError::NoXdpVersion { .. }), "{e}");
    }
}
