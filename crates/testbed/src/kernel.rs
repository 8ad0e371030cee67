//! Kernel NFs on the testbed: the plain-data kernel configuration that each
//! NF's `kernel` hook gives (`braid_nf::kernel`, beside the NF: `fwd.rs`,
//! `xor.rs`, `firewall_kernel.rs`) mapped onto braid's XDP programs and
//! their maps.
//!
//! The translation itself (which parameters XDP can express, with errors
//! that name the parameter and suggest `placement: user`) lives in
//! braid-nf so that `braid validate` and `braid plan` give the same answer
//! as `deploy`; this file only loads what it produced.

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

fn fw_action(a: KernelAction) -> FwAction {
    match a {
        KernelAction::Pass => FwAction::Pass,
        KernelAction::Drop => FwAction::Drop,
    }
}

fn fw_rule(r: &KernelRule) -> FwRule {
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

    /// Root and the XDP objects, or why a test cannot run.
    /// (A failure instead of a skip under `BRAID_REQUIRE_ROOT=1`.)
    fn usable(test: &str) -> bool {
        let skip = braid_testkit::skip_unless;
        !skip(braid_io::netns::is_root(), test, "loading BPF programs needs root")
            && !skip(braid_io::xdp::xdp_built(), test, &XdpError::NotBuilt.to_string())
    }

    fn user_passes(nf: &mut dyn braid_nf::NetworkFunction, frame: &[u8]) -> Vec<Vec<u8>> {
        let mut b: braid_packet::Batch =
            std::iter::once(braid_packet::Packet::from_bytes(frame)).collect();
        let mut c = braid_nf::Counters::default();
        nf.process(&mut b, &mut braid_nf::Context::new(1, &mut c));
        b.iter().map(|p| p.data().to_vec()).collect()
    }

    use braid_io::xdp::XdpAction;
    use braid_packet::wire::build::FrameSpec;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    const ADDRS: [&str; 4] = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.1.1"];
    const PORTS: [u16; 2] = [7, 53];

    /// A rule of one of the three translatable forms over a small address
    /// and port space, so that frames hit the rules often.
    fn rule_yaml() -> impl Strategy<Value = String> {
        let act = prop_oneof![Just("allow"), Just("drop")];
        (act, 0..3u8, 0..4usize, 0..4usize, 0..3u8, 0..2usize, 0..2usize, 0..4usize).prop_map(
            |(act, form, a, b, proto, p, q, len)| {
                let (a, b) = (ADDRS[a], ADDRS[b]);
                let (p, q) = (PORTS[p], PORTS[q]);
                let proto = ["udp", "tcp", "icmp"][proto as usize];
                let ports = |src: bool| match (proto, src) {
                    ("icmp", _) => String::new(),
                    (_, true) => format!(", src_ports: {p}, dst_ports: {q}"),
                    (_, false) => format!(", dst_ports: {q}"),
                };
                match form {
                    0 => format!(
                        "{{action: {act}, src: {a}, dst: {b}, proto: {proto}{}}}",
                        ports(true)
                    ),
                    1 => format!("{{action: {act}, dst: {b}, proto: {proto}{}}}", ports(false)),
                    _ => {
                        // Host bits must be zero.
                        let len = [0u8, 24, 31, 32][len];
                        let ip = u32::from(a.parse::<Ipv4Addr>().unwrap());
                        let net = ip & braid_nf::conntrack::prefix_mask(len);
                        format!("{{action: {act}, src: {}/{len}}}", Ipv4Addr::from(net))
                    }
                }
            },
        )
    }

    /// Every UDP, TCP and ICMP echo frame over the address and port space,
    /// plus an ARP frame (always passes, in both firewalls) and a frame
    /// with the IPv6 ethertype (see `xdp_firewall_verdicts_equal_the_user_space_ones`).
    fn all_frames() -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        for ethertype in [[0x08, 0x06], [0x86, 0xdd]] {
            let mut f = FrameSpec::udp((Ipv4Addr::new(10, 0, 0, 1), 7), (SERVER, 7), 28).build();
            f[12..14].copy_from_slice(&ethertype);
            frames.push(f);
        }
        for a in ADDRS {
            for b in ADDRS {
                let (a, b): (Ipv4Addr, Ipv4Addr) = (a.parse().unwrap(), b.parse().unwrap());
                for p in PORTS {
                    frames.push(FrameSpec::icmp_echo(a, b, p, 1).build());
                    for q in PORTS {
                        frames.push(FrameSpec::udp((a, p), (b, q), 8).build());
                        frames.push(FrameSpec::tcp((a, p), (b, q), 0x02).build());
                    }
                }
            }
        }
        frames
    }

    /// For rule sets that translate, the XDP firewall (BPF_PROG_TEST_RUN)
    /// passes and drops exactly the frames the user-space firewall does.
    #[test]
    fn xdp_firewall_verdicts_equal_the_user_space_ones() {
        if !usable("xdp_firewall_verdicts_equal_the_user_space_ones") {
            return;
        }
        let mut runner = TestRunner::new(Config { cases: 48, ..Config::default() });
        let input = (proptest::collection::vec(rule_yaml(), 0..6), any::<bool>());
        let frames = all_frames();
        let translated = std::cell::Cell::new(0);
        runner
            .run(&input, |(rules, default_drop)| {
                let yaml = format!(
                    "{{conntrack: false, default: {}, rules: [{}]}}",
                    if default_drop { "drop" } else { "allow" },
                    rules.join(", ")
                );
                let p = params(&yaml);
                let Ok(k) = KernelNf::translate("firewall", &p) else { return Ok(()) };
                translated.set(translated.get() + 1);
                let mut user = braid_nf::build("firewall", &p).unwrap();
                let mut xdp = XdpProgram::load(XdpNf::Firewall).unwrap();
                k.configure_program(&mut xdp).unwrap();
                for f in &frames {
                    let user_pass = !user_passes(user.as_mut(), f).is_empty();
                    let r = xdp.test_run(f, 1).unwrap();
                    let xdp_pass = match r.action {
                        XdpAction::Pass => true,
                        XdpAction::Drop => false,
                        other => panic!("unexpected XDP action {other:?}"),
                    };
                    if f[12..14] == [0x86, 0xdd] {
                        // The XDP firewall is IPv4-only: every IPv6 frame
                        // gets the default action there, while the
                        // user-space firewall parses IPv6 (and drops this
                        // one, an IPv4 packet under the IPv6 ethertype, as
                        // malformed). The documented difference, docs/nfs.md.
                        prop_assert_eq!(xdp_pass, !default_drop, "IPv6 frame, rules {}", yaml);
                        continue;
                    }
                    prop_assert_eq!(xdp_pass, user_pass, "rules {} frame {:02x?}", yaml, f);
                }
                Ok(())
            })
            .unwrap();
        let n = translated.get();
        assert!(n >= 12, "only {n} of 48 rule sets translated");
    }

    /// The XDP xor and the user-space xor with the same key write the same
    /// bytes, so one undoes the other.
    #[test]
    fn xdp_xor_writes_what_the_user_space_xor_writes() {
        if !usable("xdp_xor_writes_what_the_user_space_xor_writes") {
            return;
        }
        let xdp = std::cell::RefCell::new(XdpProgram::load(XdpNf::Xor).unwrap());
        let mut runner = TestRunner::new(Config { cases: 64, ..Config::default() });
        let input = (
            proptest::collection::vec(any::<u8>(), 1..=40),
            proptest::collection::vec(any::<u8>(), 0..1400),
        );
        runner
            .run(&input, |(key, payload)| {
                let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
                let p = params(&format!("key: \"0x{hex}\""));
                let k = KernelNf::translate("xor", &p).unwrap();
                let mut xdp = xdp.borrow_mut();
                k.configure_program(&mut xdp).unwrap();
                let mut spec = FrameSpec::udp(
                    (Ipv4Addr::new(10, 0, 0, 1), 4000),
                    (SERVER, 5000),
                    payload.len(),
                );
                spec.payload = payload;
                let frame = spec.build();
                let mut user = braid_nf::build("xor", &p).unwrap();
                let by_user = user_passes(user.as_mut(), &frame);
                let by_xdp = xdp.test_run(&frame, 1).unwrap();
                prop_assert_eq!(by_xdp.action, XdpAction::Pass);
                prop_assert_eq!(&by_user, &vec![by_xdp.frame.clone()]);
                // And one undoes the other.
                prop_assert_eq!(user_passes(user.as_mut(), &by_xdp.frame), vec![frame]);
                Ok(())
            })
            .unwrap();
    }
}
