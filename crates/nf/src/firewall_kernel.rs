//! The kernel (XDP) form of `firewall`: its `kernel` hook
//! ([`crate::kernel`]).
//!
//! Rules become exact 5-tuple rules (`src` and `dst` single addresses,
//! `proto` tcp/udp with one source and one destination port, or icmp),
//! any-source rules (`dst` one address, `proto` tcp/udp with one destination
//! port, or icmp) or source-prefix rules (only `src`, everything else any).
//! XDP looks them up in that order (longest prefix first among prefixes)
//! while the user-space firewall takes the first matching rule: a rule
//! entirely behind an earlier one is dead and left out, and two overlapping
//! rules with opposite actions that XDP would take in the other order are
//! refused. `conntrack: true` (the default) is refused unless no rule and
//! no default drops anything: the XDP firewall is stateless, so the replies
//! of allowed flows need their own rules (`conntrack: false`).
//!
//! Weak: the XDP program checks fewer header fields than the user-space NF
//! (e.g. an IPv4 total length beyond the frame), so verdicts agree on
//! well-formed frames, not on every malformed one (the testbed's
//! BPF_PROG_TEST_RUN property test compares them).

use std::net::Ipv4Addr;

use crate::classifier::RuleMatch;
use crate::conntrack::{parse_cidr, parse_port_range};
use crate::firewall::{compile_rules, Action, Config, Firewall, PortSpec, Proto, RuleConfig};
use crate::kernel::{KernelAction, KernelConfig, KernelError, KernelFirewall, KernelRule};
use crate::params::Params;

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
            let (lo, hi) = parse_port_range(s)?;
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

fn action(a: Action) -> KernelAction {
    match a {
        Action::Allow => KernelAction::Pass,
        Action::Drop => KernelAction::Drop,
    }
}

/// One rule in XDP form, or what it needs that XDP does not have.
enum Xlated {
    Tuple(KernelRule),
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
        Proto::Icmpv6 => return Err(("proto", IPV4_ONLY.into())),
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
            Ok(Xlated::Tuple(KernelRule {
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
            Ok(Xlated::Tuple(KernelRule { src: a, dst, src_port: sport, dst_port: dport, proto }))
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

/// Why an IPv6 rule has no XDP form.
const IPV4_ONLY: &str = "an IPv6 rule; the XDP firewall filters IPv4 only (IPv6 frames get its \
                         default action): place this firewall in user space";

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

/// The `kernel` hook of `firewall` ([`crate::firewall::SPEC`]).
pub fn translate(params: &Params) -> Result<KernelConfig, KernelError> {
    let cfg: Config = crate::params::parse(params)?;
    // The user-space checks first: a rule that is wrong anywhere is
    // reported the same way whatever the placement.
    let compiled = compile_rules(&cfg.rules)?;
    Firewall::from_config(&cfg)?;
    if cfg.conntrack
        && (cfg.default == Action::Drop || cfg.rules.iter().any(|r| r.action == Action::Drop))
    {
        return Err(KernelError::inexpressible(
            "conntrack",
            "true (the default) lets the replies of allowed flows pass whatever the rules say; \
             the XDP firewall is stateless: set `conntrack: false` and allow the replies with \
             rules",
        ));
    }
    let mut fw = KernelFirewall {
        tuples: Vec::new(),
        prefixes: Vec::new(),
        default: action(cfg.default),
        dead_rules: Vec::new(),
    };
    // (index, match, form, action) of the rules kept so far.
    let mut kept: Vec<(usize, RuleMatch, Form, Action)> = Vec::new();
    for (i, (r, c)) in cfg.rules.iter().zip(&compiled).enumerate() {
        let (Some(m), act) = (&c.v4, &c.action) else {
            let v6 = |a: &Option<String>| a.as_deref().is_some_and(|a| a.contains(':'));
            let field = match (v6(&r.src), v6(&r.dst)) {
                (true, _) => "src",
                (false, true) => "dst",
                (false, false) => "proto",
            };
            return Err(KernelError::Inexpressible {
                field: format!("rules[{i}].{field}"),
                rule: Some(i),
                reason: IPV4_ONLY.into(),
            });
        };
        if kept.iter().any(|(_, k, _, _)| covers(k, m)) {
            fw.dead_rules.push(i);
            continue;
        }
        let x = rule(r).map_err(|(field, reason)| KernelError::Inexpressible {
            field: format!("rules[{i}].{field}"),
            rule: Some(i),
            reason,
        })?;
        let form = match &x {
            Xlated::Tuple(t) if t.src.is_unspecified() && t.src_port == 0 => Form::AnySource,
            Xlated::Tuple(_) => Form::Exact,
            Xlated::Prefix(_, len) => Form::Prefix(*len),
        };
        if let Some((j, ..)) =
            kept.iter().find(|(_, k, f, a)| *a != *act && overlap(k, m) && form.before(*f))
        {
            return Err(KernelError::RuleOrder { rule: i, earlier: *j });
        }
        match x {
            Xlated::Tuple(t) => fw.tuples.push((t, action(*act))),
            Xlated::Prefix(net, len) => fw.prefixes.push((net, len, action(*act))),
        }
        kept.push((i, *m, form, *act));
    }
    Ok(KernelConfig::Firewall(fw))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(yaml: &str) -> Params {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn fw(yaml: &str) -> Result<KernelFirewall, String> {
        match translate(&params(yaml)).map_err(|e| e.to_string())? {
            KernelConfig::Firewall(f) => Ok(f),
            other => panic!("{other:?}"),
        }
    }

    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

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
                    KernelRule {
                        src: Ipv4Addr::new(10, 0, 0, 1),
                        dst: SERVER,
                        src_port: 4000,
                        dst_port: 53,
                        proto: 17
                    },
                    KernelAction::Pass
                ),
                (
                    KernelRule {
                        src: Ipv4Addr::UNSPECIFIED,
                        dst: SERVER,
                        src_port: 0,
                        dst_port: 7001,
                        proto: 17
                    },
                    KernelAction::Drop
                ),
                (
                    KernelRule {
                        src: Ipv4Addr::UNSPECIFIED,
                        dst: SERVER,
                        src_port: 0,
                        dst_port: 0,
                        proto: 1
                    },
                    KernelAction::Pass
                ),
            ]
        );
        assert_eq!(
            f.prefixes,
            vec![
                (Ipv4Addr::new(10, 0, 0, 0), 24, KernelAction::Pass),
                (Ipv4Addr::UNSPECIFIED, 0, KernelAction::Pass)
            ]
        );
        assert_eq!(f.default, KernelAction::Drop);
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
}
