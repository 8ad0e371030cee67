//! Kernel NFs' parameters: a chain descriptor's `params` of an NF placed in
//! the kernel, translated into the configuration of braid's XDP programs.
//!
//! The XDP programs do a subset of what the user-space NFs do; a
//! translation either keeps the user-space verdicts and bytes exactly (on
//! well-formed frames; see below) or fails with an error that names the
//! parameter (`rules[2].dst_ports`) and suggests `placement: user`.
//!
//! - `fwd`: no parameters.
//! - `xor`: `key` or `key_text` as for the user-space NF; the XDP program
//!   gets the key repeated from payload byte 0, as the user-space NF applies
//!   it, so both write the same bytes. `checksum: recompute` is user-space
//!   only (XDP updates incrementally, like the default).
//! - `firewall`: rules become exact 5-tuple rules (`src` and `dst` single
//!   addresses, `proto` tcp/udp with one source and one destination port,
//!   or icmp), any-source rules (`dst` one address, `proto` tcp/udp with
//!   one destination port, or icmp) or source-prefix rules (only `src`,
//!   everything else any). XDP looks them up in that order (longest prefix
//!   first among prefixes) while the user-space firewall takes the first
//!   matching rule: a rule entirely behind an earlier one is dead and left
//!   out, and two overlapping rules with opposite actions that XDP would
//!   take in the other order are refused. `conntrack: true` (the default)
//!   is refused unless no rule and no default drops anything: the XDP
//!   firewall is stateless, so the replies of allowed flows need their own
//!   rules (`conntrack: false`).
//!
//! Weak: the XDP programs check fewer header fields than the user-space NFs
//! (e.g. an IPv4 total length beyond the frame), so verdicts agree on
//! well-formed frames, not on every malformed one.

use std::net::Ipv4Addr;

use braid_io::xdp::{FwAction, FwRule, XdpChain, XdpError, XdpNf, XdpProgram};
use braid_nf::classifier::RuleMatch;
use braid_nf::conntrack::parse_cidr;
use braid_nf::firewall::{compile_rules, Action, Config as FwConfig, PortSpec, Proto, RuleConfig};
use braid_nf::xor::{ChecksumMode, Config as XorConfig};
use braid_nf::Params;

/// A kernel NF with its XDP configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelNf {
    Fwd,
    /// The XOR key as given.
    Xor {
        key: Vec<u8>,
    },
    Firewall(XdpFirewall),
}

/// A user-space firewall configuration as XDP firewall maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdpFirewall {
    /// Exact 5-tuple and any-source rules (`src` 0.0.0.0, `src_port` 0).
    pub tuples: Vec<(FwRule, FwAction)>,
    /// Source-prefix rules as (network, length, action).
    pub prefixes: Vec<(Ipv4Addr, u8, FwAction)>,
    pub default: FwAction,
    /// Indices of rules left out because an earlier rule covers them.
    pub dead_rules: Vec<usize>,
}

impl KernelNf {
    /// Translate the params of a `kind` NF; errors name the parameter.
    pub fn translate(kind: &str, params: &Params) -> Result<KernelNf, String> {
        match kind {
            "fwd" => Ok(KernelNf::Fwd),
            "xor" => xor(params),
            "firewall" => firewall(params).map(KernelNf::Firewall),
            other => Err(format!(
                "kind {other:?} has no XDP version braid can deploy (fwd, firewall, xor); \
                 use `placement: user`"
            )),
        }
    }

    /// The XDP program of this NF.
    pub fn xdp(&self) -> XdpNf {
        match self {
            KernelNf::Fwd => XdpNf::Fwd,
            KernelNf::Xor { .. } => XdpNf::Xor,
            KernelNf::Firewall(_) => XdpNf::Firewall,
        }
    }

    /// Fill the maps of a single-NF program loaded for [`KernelNf::xdp`].
    pub fn configure_program(&self, p: &mut XdpProgram) -> Result<(), XdpError> {
        match self {
            KernelNf::Fwd => Ok(()),
            KernelNf::Xor { key } => p.set_xor_key(key),
            KernelNf::Firewall(fw) => {
                for (rule, action) in &fw.tuples {
                    p.add_fw_rule(rule, *action)?;
                }
                for (net, len, action) in &fw.prefixes {
                    p.add_fw_src_prefix(*net, *len, *action)?;
                }
                p.set_fw_default(fw.default)
            }
        }
    }

    /// Fill the maps of stage `slot` of a chain program.
    pub fn configure_stage(&self, c: &mut XdpChain, slot: usize) -> Result<(), XdpError> {
        match self {
            KernelNf::Fwd => Ok(()),
            KernelNf::Xor { key } => c.set_xor_key(slot, key),
            KernelNf::Firewall(fw) => {
                for (rule, action) in &fw.tuples {
                    c.add_fw_rule(slot, rule, *action)?;
                }
                for (net, len, action) in &fw.prefixes {
                    c.add_fw_src_prefix(slot, *net, *len, *action)?;
                }
                c.set_fw_default(slot, fw.default)
            }
        }
    }
}

const USE_USER: &str = "use `placement: user` for this NF";

fn xor(params: &Params) -> Result<KernelNf, String> {
    let cfg: XorConfig = braid_nf::params::parse(params).map_err(|e| e.to_string())?;
    // Build the user-space NF too: its checks (key present, not both) are
    // the ones that apply, with the same messages.
    braid_nf::xor::Xor::new(cfg.clone()).map_err(|e| e.to_string())?;
    let key = match (cfg.key, cfg.key_text) {
        (Some(k), _) => k.0,
        (None, Some(t)) => t.into_bytes(),
        (None, None) => return Err("key: missing: give key or key_text".into()),
    };
    if cfg.checksum == ChecksumMode::Recompute {
        return Err(format!(
            "checksum: recompute; the XDP xor updates the checksum incrementally only; {USE_USER}"
        ));
    }
    Ok(KernelNf::Xor { key })
}

/// How XDP looks a rule up: exact tuples first, then any-source tuples,
/// then source prefixes (longest first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    Exact,
    AnySource,
    Prefix(u8),
}

impl Form {
    /// True if XDP consults a rule of form `self` before one of `other`.
    fn before(self, other: Form) -> bool {
        match (self, other) {
            (Form::Prefix(a), Form::Prefix(b)) => a > b,
            (a, b) => a.rank() < b.rank(),
        }
    }

    fn rank(self) -> u8 {
        match self {
            Form::Exact => 0,
            Form::AnySource => 1,
            Form::Prefix(_) => 2,
        }
    }
}

fn single_port(p: &Option<PortSpec>) -> Result<Option<u16>, String> {
    match p {
        None => Ok(None),
        Some(PortSpec::One(p)) => Ok(Some(*p)),
        Some(PortSpec::Range(s)) => {
            let (lo, hi) = braid_nf::conntrack::parse_port_range(s)?;
            if (lo, hi) == (0, 65535) {
                Ok(None)
            } else if lo == hi {
                Ok(Some(lo))
            } else {
                Err(format!("{s:?} is a port range; XDP rules match one port"))
            }
        }
    }
}

fn cidr(s: &Option<String>) -> Result<Option<(Ipv4Addr, u8)>, String> {
    match s.as_deref() {
        None | Some("any") => Ok(None),
        Some(c) => parse_cidr(c).map(|(net, len)| Some((Ipv4Addr::from(net), len))),
    }
}

fn action(a: Action) -> FwAction {
    match a {
        Action::Allow => FwAction::Pass,
        Action::Drop => FwAction::Drop,
    }
}

/// One rule in XDP form, or what it needs that XDP does not have.
enum Xlated {
    Tuple(FwRule),
    Prefix(Ipv4Addr, u8),
}

fn rule(r: &RuleConfig) -> Result<Xlated, (&'static str, String)> {
    let src = cidr(&r.src).map_err(|e| ("src", e))?;
    let dst = cidr(&r.dst).map_err(|e| ("dst", e))?;
    let sport = single_port(&r.src_ports).map_err(|e| ("src_ports", e))?;
    let dport = single_port(&r.dst_ports).map_err(|e| ("dst_ports", e))?;
    if dst.is_none() && r.proto == Proto::Any && sport.is_none() && dport.is_none() {
        let (net, len) = src.unwrap_or((Ipv4Addr::UNSPECIFIED, 0));
        return Ok(Xlated::Prefix(net, len));
    }
    let proto = match r.proto {
        Proto::Tcp => 6,
        Proto::Udp => 17,
        Proto::Icmp => 1,
        Proto::Any => {
            return Err((
                "proto",
                "`any` together with a destination or ports; XDP rules with a destination \
                 need one protocol (tcp, udp or icmp)"
                    .into(),
            ))
        }
    };
    let dst = match dst {
        Some((a, 32)) => a,
        Some((a, len)) => {
            return Err((
                "dst",
                format!("the prefix {a}/{len}; XDP rules match a destination as one address (/32)"),
            ))
        }
        None => {
            return Err((
                "dst",
                "`any` together with a protocol or ports; XDP rules with a protocol need one \
                 destination address"
                    .into(),
            ))
        }
    };
    let has_ports = proto != 1;
    let dport = match (has_ports, dport) {
        (true, Some(p)) => p,
        (true, None) => {
            return Err((
                "dst_ports",
                "any port; XDP tcp/udp rules need one destination port".into(),
            ))
        }
        (false, _) => 0,
    };
    match src {
        None => {
            if sport.is_some() {
                return Err((
                    "src_ports",
                    "a source port with any source; XDP any-source rules match every source port"
                        .into(),
                ));
            }
            Ok(Xlated::Tuple(FwRule {
                src: Ipv4Addr::UNSPECIFIED,
                dst,
                src_port: 0,
                dst_port: dport,
                proto,
            }))
        }
        Some((a, 32)) => {
            let sport =
                match (has_ports, sport) {
                    (true, Some(p)) => p,
                    (true, None) => return Err((
                        "src_ports",
                        "any port with one source address; XDP exact rules need one source port"
                            .into(),
                    )),
                    (false, _) => 0,
                };
            if a.is_unspecified() && sport == 0 {
                return Err((
                    "src",
                    "0.0.0.0/32 with source port 0 is how XDP writes any-source rules".into(),
                ));
            }
            Ok(Xlated::Tuple(FwRule { src: a, dst, src_port: sport, dst_port: dport, proto }))
        }
        Some((a, len)) => Err((
            "src",
            format!(
                "the prefix {a}/{len} together with a destination, protocol or ports; XDP \
                 source-prefix rules match the source only"
            ),
        )),
    }
}

fn overlap(a: &RuleMatch, b: &RuleMatch) -> bool {
    fn meet<T: Ord>(x: &(T, T), y: &(T, T)) -> bool {
        x.0 <= y.1 && y.0 <= x.1
    }
    meet(&a.src, &b.src)
        && meet(&a.dst, &b.dst)
        && meet(&a.proto, &b.proto)
        && meet(&a.src_ports, &b.src_ports)
        && meet(&a.dst_ports, &b.dst_ports)
}

/// True if every header `b` matches, `a` matches too.
fn covers(a: &RuleMatch, b: &RuleMatch) -> bool {
    fn within<T: Ord>(outer: &(T, T), inner: &(T, T)) -> bool {
        outer.0 <= inner.0 && inner.1 <= outer.1
    }
    within(&a.src, &b.src)
        && within(&a.dst, &b.dst)
        && within(&a.proto, &b.proto)
        && within(&a.src_ports, &b.src_ports)
        && within(&a.dst_ports, &b.dst_ports)
}

fn firewall(params: &Params) -> Result<XdpFirewall, String> {
    let cfg: FwConfig = braid_nf::params::parse(params).map_err(|e| e.to_string())?;
    // The user-space checks first: a rule that is wrong anywhere is
    // reported the same way whatever the placement.
    let compiled = compile_rules(&cfg.rules).map_err(|e| e.to_string())?;
    braid_nf::firewall::Firewall::from_config(&cfg).map_err(|e| e.to_string())?;
    if cfg.conntrack
        && (cfg.default == Action::Drop || cfg.rules.iter().any(|r| r.action == Action::Drop))
    {
        return Err(format!(
            "conntrack: true (the default) lets the replies of allowed flows pass whatever the \
             rules say; the XDP firewall is stateless: set `conntrack: false` and allow the \
             replies with rules, or {USE_USER}"
        ));
    }
    let mut fw = XdpFirewall {
        tuples: Vec::new(),
        prefixes: Vec::new(),
        default: action(cfg.default),
        dead_rules: Vec::new(),
    };
    // (index, match, form, action) of the rules kept so far.
    let mut kept: Vec<(usize, RuleMatch, Form, Action)> = Vec::new();
    for (i, (r, (m, act))) in cfg.rules.iter().zip(&compiled).enumerate() {
        if kept.iter().any(|(_, k, _, _)| covers(k, m)) {
            fw.dead_rules.push(i);
            continue;
        }
        let x = rule(r).map_err(|(field, why)| format!("rules[{i}].{field}: {why}; {USE_USER}"))?;
        let form = match &x {
            Xlated::Tuple(t) if t.src.is_unspecified() && t.src_port == 0 => Form::AnySource,
            Xlated::Tuple(_) => Form::Exact,
            Xlated::Prefix(_, len) => Form::Prefix(*len),
        };
        if let Some((j, ..)) =
            kept.iter().find(|(_, k, f, a)| *a != *act && overlap(k, m) && form.before(*f))
        {
            return Err(format!(
                "rules[{i}] overlaps the earlier rules[{j}] with the opposite action; rules[{j}] \
                 wins in user space but XDP looks rules[{i}] up first (exact 5-tuples, then \
                 any-source, then longest source prefix); reorder or narrow the rules, or \
                 {USE_USER}"
            ));
        }
        match x {
            Xlated::Tuple(t) => fw.tuples.push((t, action(*act))),
            Xlated::Prefix(net, len) => fw.prefixes.push((net, len, action(*act))),
        }
        kept.push((i, *m, form, *act));
    }
    Ok(fw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(yaml: &str) -> Params {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn fw(yaml: &str) -> Result<XdpFirewall, String> {
        match KernelNf::translate("firewall", &params(yaml))? {
            KernelNf::Firewall(f) => Ok(f),
            other => panic!("{other:?}"),
        }
    }

    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    #[test]
    fn xor_keys_translate() {
        for (yaml, key) in [
            ("key: \"0x5a\"", vec![0x5a]),
            ("key: \"0x010203\"", vec![1, 2, 3]),
            ("key_text: seventeen-bytes!!", b"seventeen-bytes!!".to_vec()),
        ] {
            assert_eq!(KernelNf::translate("xor", &params(yaml)).unwrap(), KernelNf::Xor { key });
        }
        let e = KernelNf::translate("xor", &params("{key: \"0x01\", key_text: a}")).unwrap_err();
        assert!(e.contains("not both"), "{e}");
        let e = KernelNf::translate("xor", &params("{key: \"0x01\", checksum: recompute}"))
            .unwrap_err();
        assert!(e.starts_with("checksum: recompute"), "{e}");
        assert!(KernelNf::translate("xor", &Params::Null).unwrap_err().contains("key"));
    }

    #[test]
    fn other_kinds_name_the_deployable_ones() {
        let e = KernelNf::translate("nat", &Params::Null).unwrap_err();
        assert!(e.contains("fwd, firewall, xor") && e.contains("placement: user"), "{e}");
        assert_eq!(KernelNf::translate("fwd", &Params::Null).unwrap().xdp(), XdpNf::Fwd);
    }

    #[test]
    fn firewall_rules_of_each_form_translate() {
        let f = fw("
conntrack: false
default: drop
rules:
  - { action: allow, src: 10.0.0.1/32, dst: 10.0.0.2, proto: udp, src_ports: 4000, dst_ports: 53 }
  - { action: drop, dst: 10.0.0.2, proto: udp, dst_ports: 7001 }
  - { action: allow, dst: 10.0.0.2/32, proto: icmp }
  - { action: allow, src: 10.0.0.0/24 }
  - { action: allow, src: any, dst: any, proto: any, dst_ports: \"0-65535\" }
")
        .unwrap();
        assert_eq!(
            f.tuples,
            vec![
                (
                    FwRule {
                        src: Ipv4Addr::new(10, 0, 0, 1),
                        dst: SERVER,
                        src_port: 4000,
                        dst_port: 53,
                        proto: 17
                    },
                    FwAction::Pass
                ),
                (
                    FwRule {
                        src: Ipv4Addr::UNSPECIFIED,
                        dst: SERVER,
                        src_port: 0,
                        dst_port: 7001,
                        proto: 17
                    },
                    FwAction::Drop
                ),
                (
                    FwRule {
                        src: Ipv4Addr::UNSPECIFIED,
                        dst: SERVER,
                        src_port: 0,
                        dst_port: 0,
                        proto: 1
                    },
                    FwAction::Pass
                ),
            ]
        );
        assert_eq!(
            f.prefixes,
            vec![
                (Ipv4Addr::new(10, 0, 0, 0), 24, FwAction::Pass),
                (Ipv4Addr::UNSPECIFIED, 0, FwAction::Pass)
            ]
        );
        assert_eq!(f.default, FwAction::Drop);
        assert!(f.dead_rules.is_empty());
    }

    #[test]
    fn untranslatable_rules_name_index_and_field() {
        for (rule, want) in [
            (
                "{ action: drop, dst: 10.0.0.2, proto: udp, dst_ports: \"1000-2000\" }",
                "rules[1].dst_ports: \"1000-2000\" is a port range",
            ),
            (
                "{ action: drop, dst: 10.0.0.0/24, proto: udp, dst_ports: 9 }",
                "rules[1].dst: the prefix 10.0.0.0/24",
            ),
            ("{ action: drop, dst: 10.0.0.2 }", "rules[1].proto: `any`"),
            ("{ action: drop, proto: udp, dst_ports: 9 }", "rules[1].dst: `any`"),
            ("{ action: drop, dst: 10.0.0.2, proto: tcp }", "rules[1].dst_ports: any port"),
            (
                "{ action: drop, src: 10.0.0.0/8, dst: 10.0.0.2, proto: icmp }",
                "rules[1].src: the prefix 10.0.0.0/8",
            ),
            (
                "{ action: drop, dst: 10.0.0.2, proto: udp, src_ports: 5, dst_ports: 9 }",
                "rules[1].src_ports: a source port with any source",
            ),
            (
                "{ action: drop, src: 10.0.0.1, dst: 10.0.0.2, proto: udp, dst_ports: 9 }",
                "rules[1].src_ports: any port",
            ),
        ] {
            let yaml = format!(
                "{{conntrack: false, rules: [{{ action: allow, src: 10.9.0.0/16 }}, {rule}]}}"
            );
            let e = fw(&yaml).unwrap_err();
            assert!(e.starts_with(want), "{rule}: {e}");
            assert!(e.ends_with("use `placement: user` for this NF"), "{e}");
        }
    }

    #[test]
    fn conntrack_is_refused_when_it_can_change_a_verdict() {
        let e = fw("rules: [{ action: allow, src: 10.0.0.0/8 }]").unwrap_err();
        assert!(e.starts_with("conntrack: true"), "{e}");
        // Nothing is ever dropped: tracking changes nothing.
        assert!(fw("{default: allow, rules: [{ action: allow, src: 10.0.0.0/8 }]}").is_ok());
        // User-space errors come first, with their own field names.
        let e = fw("{conntrack: false, rules: [{ action: allow, src: 10.0.0.300 }]}").unwrap_err();
        assert!(e.contains("rules[0].src"), "{e}");
    }

    #[test]
    fn rule_order_that_xdp_would_invert_is_refused_and_dead_rules_are_dropped() {
        // An exact rule behind a prefix rule of the other action: user
        // space never reaches it, XDP would look it up first.
        let e = fw("
conntrack: false
rules:
  - { action: drop, src: 10.0.0.0/24 }
  - { action: allow, src: 10.0.0.1, dst: 10.0.0.2, proto: udp, src_ports: 1, dst_ports: 2 }
")
        .map(|f| f.dead_rules);
        // Covered entirely by rule 0: dead, left out, no conflict.
        assert_eq!(e, Ok(vec![1]));
        let e = fw("
conntrack: false
rules:
  - { action: drop, src: 10.0.0.0/24 }
  - { action: allow, dst: 10.0.0.2, proto: udp, dst_ports: 2 }
")
        .unwrap_err();
        assert!(e.starts_with("rules[1] overlaps the earlier rules[0]"), "{e}");
        // A longer prefix after a shorter one of the other action.
        let e = fw("
conntrack: false
rules:
  - { action: drop, src: 10.0.0.0/8 }
  - { action: allow, src: 10.1.0.0/16 }
")
        .map(|f| f.dead_rules);
        assert_eq!(e, Ok(vec![1]));
        // The other way round XDP agrees (longest prefix first).
        let f = fw("
conntrack: false
rules:
  - { action: allow, src: 10.1.0.0/16 }
  - { action: drop, src: 10.0.0.0/8 }
  - { action: drop, dst: 10.0.0.2, proto: udp, dst_ports: 9 }
")
        .unwrap_err();
        assert!(f.starts_with("rules[2] overlaps the earlier rules[0]"), "{f}");
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
    /// plus an ARP and an IPv6 frame (ARP always passes, IPv6 gets the
    /// default action, in both firewalls).
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
