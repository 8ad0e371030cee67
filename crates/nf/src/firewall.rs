//! `firewall`: ordered allow/drop rules on the IPv4 and IPv6 5-tuple with
//! connection tracking.
//!
//! Rules match CIDR prefixes, a protocol and port ranges; the first matching
//! rule decides, else the `default` action. A rule is IPv4 or IPv6 by its
//! prefixes (`10.0.0.0/8`, `2001:db8::/32`) or its protocol (`icmp`,
//! `icmpv6`), and both when neither says; IPv4 and IPv6 rules share one
//! list and one order. Each family's rules are compiled into a bit-vector
//! classifier ([`crate::classifier`], over `u32` or `u128` addresses), so
//! 1,000 rules cost a few table lookups and 16 word ANDs, not a scan.
//!
//! IPv6 packets are parsed by the envelope's `parse_dual` (extension
//! headers walked: the rules and the connection table see the upper-layer
//! protocol and ports behind them) and tracked in their own table with the
//! same Linux state machine, pickup rules and timeouts (ICMPv6 echo 128/129
//! like ICMP echo; ICMPv6 errors 1 to 4 quoting a tracked flow pass as
//! RELATED). IPv6 fragments follow their first fragment by (source,
//! destination, 32-bit identification). Neighbour discovery (ICMPv6 133 to
//! 137 with hop limit 255) passes like ARP; an extension-header chain
//! longer than the envelope walks is dropped (`unsupported`).
//!
//! With `conntrack: true` (the default), every allowed TCP, UDP or ICMP echo
//! packet that starts a flow creates a connection keyed by its 5-tuple and
//! by the reversed 5-tuple. Later packets of the flow in either direction
//! hit that entry in one hash lookup and pass without classification, so
//! replies of allowed flows pass even where the rules would drop them.
//! Connections idle out per protocol (`timeouts`); TCP connections use the
//! long `tcp_established` timeout only in ESTABLISHED after a reply was
//! seen, the short `tcp_transitory` one otherwise.
//!
//! TCP follows Linux conntrack's state machine
//! ([`crate::conntrack::tcp_transition`]): a connection starts only from a
//! SYN or, picked up mid-stream as with `nf_conntrack_tcp_loose=1`, from an
//! ACK-type segment; an allowed SYN-ACK, FIN, RST, SYN+FIN or flagless
//! segment passes by the rules but tracks nothing. A segment invalid for
//! its connection's state (a SYN against an established connection) is
//! decided by the rules alone, like `ct state invalid`. ICMP: only an echo
//! request starts a connection, and only an echo reply matches its reply
//! side. A packet of a tracked connection skips the rules when it is a
//! reply, the connection has seen one, or these rules created it; else
//! (NEW in Linux terms) the rules decide.
//!
//! Edge cases: ARP always passes (IPv4 needs it); frames neither IPv4 nor
//! IPv6 follow the default action (dropped as `denied`). Malformed IPv4 is
//! dropped (`malformed`). ICMP errors quoting a packet of a tracked flow
//! pass (like Linux's RELATED). Other ICMP messages are classified by the
//! rules on every packet with ports 0 and are not tracked. With conntrack,
//! a later IPv4 fragment passes if its datagram's first fragment passed
//! ([`crate::fragments`]), else it is dropped (`fragment`); without
//! (stateless, like the XDP firewall) the rules see it with ports 0. A full
//! connection table drops new flows (`overflow`).

use braid_packet::envelope::{self, Class, L3Kind, Unsupported};
use braid_packet::Batch;

use crate::classifier::{Classifier, Fields, RuleMatch};
use crate::conntrack::{
    apply_steps, flow_key, flow_key6, icmp6_error_quote, icmp_error_quote, parse_cidr,
    parse_port_range, prefix_mask, secs_to_ns, tcp_transition, BatchLookup, Conn, ConnKey,
    ConnSnapshot, ConnTable, FlowKey, FlowKey6, InsertError, Lookup, StateClock, TcpState, TcpStep,
    TimeoutsNs, ADMITTED, ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST, ICMP_ECHO_REPLY,
    ICMP_ECHO_REQUEST, L4, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, SWEEP_BUDGET,
};
use crate::fragments::{FragKey6, FragTable, Fragment, DEFAULT_MAX_FRAGMENTS, FRAGMENT_TIMEOUT_NS};
use crate::params::{ConfigError, ParamDoc};
use crate::{
    Context, DropReason, Encoding, FlowScope, FlowStream, NetworkFunction, NfClass, NfSpec,
    NfState, PartitionKey, Placement, StateError, Statelet,
};

pub static SPEC: NfSpec = NfSpec {
    name: "firewall",
    class: NfClass::Basic,
    placements: &[Placement::Kernel, Placement::User],
    state: crate::StateKind::PerFlow(crate::FlowPartition::SymmetricFiveTuple),
    kernel: Some(crate::firewall_kernel::translate),
    summary: "ordered IPv4/IPv6 5-tuple allow/drop rules (bit-vector classifier) with connection tracking",
    params: &[
        ParamDoc {
            name: "rules",
            kind: "list of {action: allow|drop, src: CIDR|any, dst: CIDR|any, proto: tcp|udp|icmp|icmpv6|any, src_ports: P|\"lo-hi\", dst_ports: P|\"lo-hi\"}",
            default: Some("[]"),
            help: "first match wins; CIDRs IPv4 or IPv6 (a rule is of one family by its prefixes, or icmp/icmpv6); ports need proto tcp or udp",
        },
        ParamDoc {
            name: "default",
            kind: "allow|drop",
            default: Some("drop"),
            help: "action when no rule matches",
        },
        ParamDoc {
            name: "conntrack",
            kind: "bool",
            default: Some("true"),
            help: "track allowed flows so their replies pass and later packets skip the rules",
        },
        ParamDoc {
            name: "timeouts",
            kind: "{tcp_established, tcp_transitory, udp, icmp, other}: seconds",
            default: Some("{7440, 120, 300, 60, 600}"),
            help: "idle timeouts of tracked connections",
        },
        ParamDoc {
            name: "max_flows",
            kind: "usize, >= 1",
            default: Some("1048576"),
            help: "connection table size (IPv4 and IPv6 each); new flows beyond it are dropped (overflow)",
        },
        ParamDoc {
            name: "max_fragments",
            kind: "usize",
            default: Some("4096"),
            help: "fragmented datagrams followed at once (30 s each at most); beyond it first fragments are dropped (fragment)",
        },
    ],
    build: |p| Ok(Box::new(Firewall::from_config(&crate::params::parse::<Config>(p)?)?)),
};

/// Allow or drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Drop,
}

/// Protocol of a rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
    #[default]
    Any,
}

/// A port or port range: `80` or `"1000-2000"`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(untagged)]
pub enum PortSpec {
    One(u16),
    Range(String),
}

/// One rule.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub action: Action,
    #[serde(default)]
    pub src: Option<String>,
    #[serde(default)]
    pub dst: Option<String>,
    #[serde(default)]
    pub proto: Proto,
    #[serde(default)]
    pub src_ports: Option<PortSpec>,
    #[serde(default)]
    pub dst_ports: Option<PortSpec>,
}

/// Idle timeouts in seconds.
#[derive(Clone, Copy, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsConfig {
    pub tcp_established: u64,
    pub tcp_transitory: u64,
    pub udp: u64,
    pub icmp: u64,
    pub other: u64,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        TimeoutsConfig {
            tcp_established: 7440,
            tcp_transitory: 120,
            udp: 300,
            icmp: 60,
            other: 600,
        }
    }
}

impl TimeoutsConfig {
    fn to_ns(self) -> Result<TimeoutsNs, ConfigError> {
        for (name, v) in [
            ("tcp_established", self.tcp_established),
            ("tcp_transitory", self.tcp_transitory),
            ("udp", self.udp),
            ("icmp", self.icmp),
            ("other", self.other),
        ] {
            if v == 0 {
                return Err(ConfigError::new(
                    format!("timeouts.{name}"),
                    "must be at least 1 second",
                ));
            }
        }
        Ok(TimeoutsNs {
            tcp_established: secs_to_ns(self.tcp_established),
            tcp_transitory: secs_to_ns(self.tcp_transitory),
            udp: secs_to_ns(self.udp),
            icmp: secs_to_ns(self.icmp),
            other: secs_to_ns(self.other),
        })
    }
}

fn default_true() -> bool {
    true
}

fn default_max_flows() -> usize {
    1 << 20
}

fn default_action() -> Action {
    Action::Drop
}

/// Firewall parameters.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    #[serde(default = "default_action")]
    pub default: Action,
    #[serde(default = "default_true")]
    pub conntrack: bool,
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    #[serde(default = "default_max_flows")]
    pub max_flows: usize,
    #[serde(default = "default_max_fragments")]
    pub max_fragments: usize,
}

fn default_max_fragments() -> usize {
    DEFAULT_MAX_FRAGMENTS
}

/// A rule's address field: any, an IPv4 prefix or an IPv6 prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AddrSpec {
    Any,
    V4(u32, u32),
    V6(u128, u128),
}

fn addr_spec(s: &Option<String>, field: String) -> Result<AddrSpec, ConfigError> {
    match s.as_deref() {
        None | Some("any") => Ok(AddrSpec::Any),
        Some(c) if c.contains(':') => {
            let (net, len) =
                crate::router::parse_cidr6(c).map_err(|e| ConfigError::new(field, e))?;
            Ok(AddrSpec::V6(net, net | !crate::lpm::prefix_mask6(len)))
        }
        Some(c) => {
            let (net, len) = parse_cidr(c).map_err(|e| ConfigError::new(field, e))?;
            Ok(AddrSpec::V4(net, net | !prefix_mask(len)))
        }
    }
}

fn port_range(p: &Option<PortSpec>, field: String) -> Result<(u16, u16), ConfigError> {
    match p {
        None => Ok((0, 65535)),
        Some(PortSpec::One(p)) => Ok((*p, *p)),
        Some(PortSpec::Range(s)) => parse_port_range(s).map_err(|e| ConfigError::new(field, e)),
    }
}

/// One rule compiled: its match for IPv4 packets and for IPv6 packets
/// (`None` where the rule is of the other family: a rule is IPv4 or IPv6
/// by its prefixes and protocol, and both when neither says).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompiledRule {
    pub v4: Option<RuleMatch<u32>>,
    pub v6: Option<RuleMatch<u128>>,
    pub action: Action,
}

/// Compile the rule list, validating it (errors name `rules[i].field`).
pub fn compile_rules(rules: &[RuleConfig]) -> Result<Vec<CompiledRule>, ConfigError> {
    rules.iter().enumerate().map(|(i, r)| compile_rule(i, r)).collect()
}

fn compile_rule(i: usize, r: &RuleConfig) -> Result<CompiledRule, ConfigError> {
    let src = addr_spec(&r.src, format!("rules[{i}].src"))?;
    let dst = addr_spec(&r.dst, format!("rules[{i}].dst"))?;
    let src_ports = port_range(&r.src_ports, format!("rules[{i}].src_ports"))?;
    let dst_ports = port_range(&r.dst_ports, format!("rules[{i}].dst_ports"))?;
    if !matches!(r.proto, Proto::Tcp | Proto::Udp) {
        for (name, range) in [("src_ports", src_ports), ("dst_ports", dst_ports)] {
            if range != (0, 65535) {
                return Err(ConfigError::new(
                    format!("rules[{i}].{name}"),
                    "ports need `proto: tcp` or `proto: udp`",
                ));
            }
        }
    }
    // The family: what the prefixes say, else what the protocol says.
    let family = |s: AddrSpec| match s {
        AddrSpec::Any => None,
        AddrSpec::V4(..) => Some(4),
        AddrSpec::V6(..) => Some(6),
    };
    let by_addr = match (family(src), family(dst)) {
        (Some(a), Some(b)) if a != b => {
            return Err(ConfigError::new(
                format!("rules[{i}].dst"),
                format!(
                    "`{}` is IPv{b} but `src` is IPv{a}: a rule is IPv4 or IPv6 by its prefixes",
                    r.dst.as_deref().unwrap_or_default()
                ),
            ))
        }
        (a, b) => a.or(b),
    };
    let by_proto = match r.proto {
        Proto::Icmp => Some(4),
        Proto::Icmpv6 => Some(6),
        _ => None,
    };
    if let (Some(a), Some(p)) = (by_addr, by_proto) {
        if a != p {
            let (name, use_) = if p == 4 { ("icmp", "icmpv6") } else { ("icmpv6", "icmp") };
            return Err(ConfigError::new(
                format!("rules[{i}].proto"),
                format!(
                    "`{name}` is ICMP for IPv{p} but the rule's prefixes are IPv{a}: use `{use_}`"
                ),
            ));
        }
    }
    let family = by_addr.or(by_proto);
    let proto = match r.proto {
        Proto::Tcp => (PROTO_TCP, PROTO_TCP),
        Proto::Udp => (PROTO_UDP, PROTO_UDP),
        Proto::Icmp => (PROTO_ICMP, PROTO_ICMP),
        Proto::Icmpv6 => (PROTO_ICMPV6, PROTO_ICMPV6),
        Proto::Any => (0, 255),
    };
    let v4 = |s: AddrSpec| match s {
        AddrSpec::V4(lo, hi) => (lo, hi),
        _ => (0, u32::MAX),
    };
    let v6 = |s: AddrSpec| match s {
        AddrSpec::V6(lo, hi) => (lo, hi),
        _ => (0, u128::MAX),
    };
    Ok(CompiledRule {
        v4: (family != Some(6)).then(|| RuleMatch {
            src: v4(src),
            dst: v4(dst),
            proto,
            src_ports,
            dst_ports,
        }),
        v6: (family != Some(4)).then(|| RuleMatch {
            src: v6(src),
            dst: v6(dst),
            proto,
            src_ports,
            dst_ports,
        }),
        action: r.action,
    })
}

/// The rules of one address family, compiled: the classifier and the
/// action of each of its rules.
struct RuleSet<A> {
    classifier: Classifier<A>,
    actions: Vec<Action>,
}

impl<A: crate::classifier::Addr> RuleSet<A> {
    fn new(rules: impl Iterator<Item = (RuleMatch<A>, Action)>) -> Result<RuleSet<A>, ConfigError> {
        let (matches, actions): (Vec<_>, Vec<_>) = rules.unzip();
        let classifier =
            Classifier::new(&matches).map_err(|e| ConfigError::new("rules", e.to_string()))?;
        Ok(RuleSet { classifier, actions })
    }

    /// The first matching rule's action, else `default`.
    #[inline]
    fn decide(&self, f: &Fields<A>, default: Action) -> Action {
        match self.classifier.classify(f) {
            Some(i) => self.actions[i],
            None => default,
        }
    }
}

/// The firewall.
pub struct Firewall {
    rules: RuleSet<u32>,
    rules6: RuleSet<u128>,
    default: Action,
    conntrack: Option<ConnTable>,
    /// IPv6 connections (with conntrack on): their own table, with the
    /// same size limit.
    conntrack6: Option<ConnTable<FlowKey6>>,
    timeouts: TimeoutsNs,
    max_flows: usize,
    clock: StateClock,
    /// Datagrams whose first fragment passed: their later fragments pass.
    fragments: FragTable<()>,
    fragments6: FragTable<(), FragKey6>,
    /// Per-batch scratch of step 1 (kept to reuse the allocation).
    steps: Vec<Step>,
    /// The IPv6 packets' steps ([`Step::V6`] points into it).
    steps6: Vec<Step6>,
}

impl std::fmt::Debug for Firewall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Firewall")
            .field("rules", &self.rules.actions.len())
            .field("rules6", &self.rules6.actions.len())
            .field("connections", &self.conntrack.as_ref().map(ConnTable::len))
            .field("connections6", &self.conntrack6.as_ref().map(ConnTable::len))
            .finish()
    }
}

/// Room for this many IPv6 connections is allocated up front (the table
/// grows to `max_flows` as needed): IPv4-only deployments pay little.
const PREALLOC6: usize = 1024;

/// ICMP echo message types of one address family.
#[derive(Clone, Copy)]
struct Echo {
    request: u8,
    reply: u8,
}

const ECHO4: Echo = Echo { request: ICMP_ECHO_REQUEST, reply: ICMP_ECHO_REPLY };
const ECHO6: Echo = Echo { request: ICMPV6_ECHO_REQUEST, reply: ICMPV6_ECHO_REPLY };

/// The first of the [`FlowStream`] positions of IPv6 connections: below
/// it a cursor walks the IPv4 table, from it the IPv6 table.
const V6_CURSOR: usize = usize::MAX / 2 + 1;

impl Firewall {
    pub fn from_config(cfg: &Config) -> Result<Firewall, ConfigError> {
        let compiled = compile_rules(&cfg.rules)?;
        let timeouts = cfg.timeouts.to_ns()?;
        if cfg.max_flows == 0 {
            return Err(ConfigError::new("max_flows", "must be at least 1"));
        }
        Ok(Firewall {
            rules: RuleSet::new(compiled.iter().filter_map(|r| Some((r.v4?, r.action))))?,
            rules6: RuleSet::new(compiled.iter().filter_map(|r| Some((r.v6?, r.action))))?,
            default: cfg.default,
            conntrack: cfg.conntrack.then(|| ConnTable::new(cfg.max_flows)),
            conntrack6: cfg.conntrack.then(|| ConnTable::with_prealloc(cfg.max_flows, PREALLOC6)),
            timeouts,
            max_flows: cfg.max_flows,
            clock: StateClock::default(),
            fragments: FragTable::new(cfg.max_fragments, FRAGMENT_TIMEOUT_NS),
            fragments6: FragTable::new(cfg.max_fragments, FRAGMENT_TIMEOUT_NS),
            steps: Vec::new(),
            steps6: Vec::new(),
        })
    }

    /// Number of tracked connections (IPv4 and IPv6).
    pub fn connections(&self) -> usize {
        self.conntrack.as_ref().map_or(0, ConnTable::len)
            + self.conntrack6.as_ref().map_or(0, ConnTable::len)
    }

    /// The default action as a step.
    fn by_default(&self) -> Step {
        match self.default {
            Action::Allow => Step::Pass,
            Action::Drop => Step::Drop(DropReason::Denied),
        }
    }

    /// Batch step 1: parse a packet and decide what it needs (IPv6
    /// packets get their step in `steps6`).
    #[inline]
    fn classify(&self, frame: &[u8], steps6: &mut Vec<Step6>) -> Step {
        // The envelope policy of `firewall` (docs/nfs.md): IPv4 and IPv6,
        // whole or fragment, are filtered; ARP passes; other protocols get
        // the default action; broken headers are dropped.
        // IPv4 through the IPv4-only parse: `parse_dual`'s result carries
        // the 80-byte IPv6 headers too, and building and moving them cost
        // every IPv4 packet ~40 instructions (callgrind). Frames it calls
        // IPv6 are parsed again, as IPv6, in `classify_ipv6`.
        let parsed = envelope::parse(frame);
        match parsed.class {
            Class::Ok | Class::Fragment { .. } => {}
            Class::Unsupported { what: Unsupported::Ipv6 } => {
                return self.classify_ipv6(frame, steps6)
            }
            other => return self.unfiltered(other),
        }
        // Stateful (conntrack on): later fragments follow their first.
        // Stateless, like the XDP firewall: the rules see them with ports 0.
        let frag = match self.conntrack {
            Some(_) => Fragment::of(frame, parsed.class, &parsed.ip),
            None => None,
        };
        if let (Class::Fragment { first: false, .. }, Some(f)) = (parsed.class, frag) {
            return Step::LaterFragment(f);
        }
        let info = &parsed.ip;
        let key = flow_key(info);
        let hash = match (&self.conntrack, &key) {
            (Some(ct), Some(k)) => ct.hash(k),
            _ => 0,
        };
        let related = match (&self.conntrack, key) {
            (Some(_), None) => icmp_error_quote(frame, info).map(|q| q.key),
            _ => None,
        };
        let addrs = Addrs4 { src: info.src, dst: info.dst, proto: info.proto };
        Step::Check { addrs, probe: Probe { l4: info.l4, key, hash, hint: None, related }, frag }
    }

    /// What becomes of a frame whose class is neither `Ok` nor
    /// `Fragment`: ARP passes, IPv6 with too long an extension header chain
    /// is dropped, other protocols get the default action, broken headers
    /// are dropped.
    #[inline]
    fn unfiltered(&self, class: Class) -> Step {
        match class {
            Class::Unsupported { what: Unsupported::Arp } => Step::Pass,
            Class::Unsupported { what: Unsupported::Ipv6ExtChain } => {
                Step::Drop(DropReason::Unsupported)
            }
            Class::Unsupported { .. } => self.by_default(),
            Class::Truncated { .. } | Class::Malformed { .. } => Step::Drop(DropReason::Malformed),
            // Filtered: not asked here.
            Class::Ok | Class::Fragment { .. } => Step::Drop(DropReason::Malformed),
        }
    }

    /// [`Firewall::classify`] of a frame the IPv4 parse called IPv6.
    fn classify_ipv6(&self, frame: &[u8], steps6: &mut Vec<Step6>) -> Step {
        let parsed = envelope::parse_dual(frame);
        match parsed.class {
            Class::Ok | Class::Fragment { .. } if parsed.l3 == L3Kind::Ipv6 => {}
            other => return self.unfiltered(other),
        }
        match self.classify6(frame, &parsed) {
            Some(s) => {
                steps6.push(s);
                Step::V6((steps6.len() - 1) as u32)
            }
            None => Step::Pass,
        }
    }

    /// [`Firewall::classify`] of an IPv6 packet (class `Ok` or
    /// `Fragment`); `None`: it passes (neighbour discovery).
    #[inline]
    fn classify6(&self, frame: &[u8], parsed: &envelope::Parsed) -> Option<Step6> {
        let info = &parsed.ip6;
        // Neighbour discovery (router and neighbour solicitation and
        // advertisement, redirect) passes like ARP: IPv6 needs it across
        // the firewall, and RFC 4861 makes hosts ignore it unless its hop
        // limit is 255 (never forwarded).
        if let L4::IcmpOther { msg_type: 133..=137 } = info.l4 {
            if info.hop_limit == 255 && info.proto == PROTO_ICMPV6 {
                return None;
            }
        }
        let frag = match self.conntrack6 {
            Some(_) => Fragment::of6(frame, parsed.class, info),
            None => None,
        };
        if let (Class::Fragment { first: false, .. }, Some(f)) = (parsed.class, frag) {
            return Some(Step6::LaterFragment(f));
        }
        let key = flow_key6(info);
        let hash = match (&self.conntrack6, &key) {
            (Some(ct), Some(k)) => ct.hash(k),
            _ => 0,
        };
        let related = match (&self.conntrack6, key) {
            (Some(_), None) => icmp6_error_quote(frame, info),
            _ => None,
        };
        Some(Step6::Check {
            addrs: Addrs6 { src: info.src, dst: info.dst, proto: info.proto },
            probe: Probe { l4: info.l4, key, hash, hint: None, related },
            frag,
        })
    }

    /// Batch step 3: pass (`Ok`) or drop one IPv4 packet. A later
    /// fragment passes if its datagram's first fragment passed
    /// (`fragments`); a first fragment that passes is recorded for them.
    #[inline]
    fn filter(&mut self, step: &Step, now: u64) -> Result<(), DropReason> {
        match step {
            Step::Pass => Ok(()),
            Step::Drop(r) => Err(*r),
            Step::LaterFragment(f) => self.fragments.later(f, now).ok_or(DropReason::Fragment),
            Step::Check { addrs, probe, frag } => {
                let (rules, default) = (&self.rules, self.default);
                let decide = || rules.decide(&fields4(addrs, probe.l4, probe.key), default);
                check(self.conntrack.as_mut(), &self.timeouts, probe, ECHO4, now, decide)?;
                match frag {
                    Some(f) => self.fragments.first(f, (), now).map_err(|_| DropReason::Fragment),
                    None => Ok(()),
                }
            }
            // Handled by the caller (`process`), which holds `steps6`.
            Step::V6(_) => Err(DropReason::Malformed),
        }
    }

    /// [`Firewall::filter`] of an IPv6 packet.
    #[inline]
    fn filter6(&mut self, step: &Step6, now: u64) -> Result<(), DropReason> {
        match step {
            Step6::LaterFragment(f) => self.fragments6.later(f, now).ok_or(DropReason::Fragment),
            Step6::Check { addrs, probe, frag } => {
                let (rules, default) = (&self.rules6, self.default);
                let decide = || rules.decide(&fields6(addrs, probe.l4, probe.key), default);
                check(self.conntrack6.as_mut(), &self.timeouts, probe, ECHO6, now, decide)?;
                match frag {
                    Some(f) => self.fragments6.first(f, (), now).map_err(|_| DropReason::Fragment),
                    None => Ok(()),
                }
            }
        }
    }
}

/// The rule fields of an IPv4 packet: its 5-tuple, or ports 0 for packets
/// without ports (ICMP echo included).
#[inline]
fn fields4(info: &Addrs4, l4: L4, key: Option<FlowKey>) -> Fields {
    match key {
        Some(k) if !matches!(l4, L4::IcmpEcho { .. }) => Fields {
            src: k.src,
            dst: k.dst,
            proto: k.proto,
            src_port: k.src_port,
            dst_port: k.dst_port,
        },
        _ => Fields { src: info.src, dst: info.dst, proto: info.proto, src_port: 0, dst_port: 0 },
    }
}

/// [`fields4`] of an IPv6 packet (the protocol after the extension
/// headers).
#[inline]
fn fields6(info: &Addrs6, l4: L4, key: Option<FlowKey6>) -> Fields<u128> {
    let (src_port, dst_port) = match key {
        Some(k) if !matches!(l4, L4::IcmpEcho { .. }) => (k.src_port, k.dst_port),
        _ => (0, 0),
    };
    Fields { src: info.src, dst: info.dst, proto: info.proto, src_port, dst_port }
}

/// What the connection check needs of one packet of either family.
#[derive(Clone, Copy, Debug)]
struct Probe<K> {
    l4: L4,
    key: Option<K>,
    hash: u64,
    hint: Option<u32>,
    /// The flow an ICMP error quotes.
    related: Option<K>,
}

/// Pass or drop a packet with a transport header, for either family:
/// with a connection table (conntrack on) the table first, then the rules
/// (`decide`); without, the rules alone.
///
/// Like `ct state established,related accept` ahead of the rules: an ICMP
/// error quoting a tracked flow passes (RELATED; it does not refresh the
/// flow); a packet of a tracked connection passes if it is valid for the
/// connection and the connection is established (a packet in the reply
/// direction, or after one was seen, or the rules created it). A valid
/// packet in the original direction before any reply is NEW: it passes if
/// the rules admit it. An invalid one (`ct state invalid`) is left to the
/// rules and tracks nothing.
#[inline]
fn check<K: ConnKey>(
    table: Option<&mut ConnTable<K>>,
    timeouts: &TimeoutsNs,
    p: &Probe<K>,
    echo: Echo,
    now: u64,
    decide: impl Fn() -> Action,
) -> Result<(), DropReason> {
    let Some(table) = table else {
        return admit_new(None, p.l4, p.key, now, echo, decide);
    };
    if let Some(quoted) = p.related {
        if let Lookup::Hit { .. } = table.lookup(&quoted, now, timeouts) {
            return Ok(());
        }
    }
    let tcp_flags = tcp_flags_of(p.l4);
    let mut tracked = false;
    if let Some(key) = p.key {
        if let Lookup::Hit { slot, reply } =
            table.lookup_hinted(&key, p.hash, p.hint, now, timeouts)
        {
            if let Some(c) = table.get_mut(slot) {
                let valid = match p.l4 {
                    L4::Tcp { .. } => match c.track_tcp(now, reply, tcp_flags) {
                        TcpStep::To(_) | TcpStep::Ignore => true,
                        TcpStep::Invalid => false,
                        TcpStep::Reopen => {
                            table.remove_slot(slot);
                            return admit_new(Some(table), p.l4, Some(key), now, echo, decide);
                        }
                    },
                    // An echo request on the reply key (or a reply on
                    // the original key) is another ICMP tuple in
                    // Linux: not part of this connection.
                    L4::IcmpEcho { msg_type, .. } => {
                        let ok = (msg_type == echo.reply) == reply;
                        if ok {
                            c.touch(now, reply, 0);
                        }
                        ok
                    }
                    _ => {
                        c.touch(now, reply, 0);
                        true
                    }
                };
                if valid && (reply || c.seen_reply() || c.flags & ADMITTED != 0) {
                    return Ok(());
                }
                tracked = true;
            }
        }
    }
    if tracked {
        return match decide() {
            Action::Allow => Ok(()),
            Action::Drop => Err(DropReason::Denied),
        };
    }
    admit_new(Some(table), p.l4, p.key, now, echo, decide)
}

#[inline]
fn tcp_flags_of(l4: L4) -> u8 {
    match l4 {
        L4::Tcp { flags, .. } => flags,
        _ => 0,
    }
}

/// A packet of no tracked connection: the rules decide; an allowed packet
/// that may start a connection in Linux conntrack (any UDP, an ICMP echo
/// request, a TCP SYN or, picked up, an ACK-type segment) is tracked.
#[inline]
fn admit_new<K: ConnKey>(
    table: Option<&mut ConnTable<K>>,
    l4: L4,
    key: Option<K>,
    now: u64,
    echo: Echo,
    decide: impl Fn() -> Action,
) -> Result<(), DropReason> {
    if decide() == Action::Drop {
        return Err(DropReason::Denied);
    }
    let tcp_flags = tcp_flags_of(l4);
    let start = match l4 {
        L4::Tcp { .. } => match tcp_transition(TcpState::None, false, tcp_flags) {
            TcpStep::To(s) => Some(Some(s)),
            _ => None,
        },
        L4::IcmpEcho { msg_type, .. } => (msg_type == echo.request).then_some(None),
        _ => Some(None),
    };
    let (Some(table), Some(key), Some(tcp_state)) = (table, key, start) else {
        return Ok(());
    };
    match table.insert(key, key.reversed(), now) {
        Ok(slot) => {
            if let Some(c) = table.get_mut(slot) {
                c.touch(now, false, tcp_flags);
                c.flags |= ADMITTED;
                if let Some(s) = tcp_state {
                    c.set_tcp_state(s);
                }
            }
        }
        Err(InsertError::Full) => return Err(DropReason::Overflow),
        // A flow whose reply key is itself (same address and port on
        // both ends), or an ICMP echo whose identifier is the reply
        // key of another connection: allowed by the rules, not
        // tracked.
        Err(InsertError::KeyInUse) => {}
    }
    Ok(())
}

/// What batch step 1 decided for one packet.
#[derive(Clone, Copy, Debug)]
enum Step {
    Pass,
    Drop(DropReason),
    /// IPv4: conntrack (if on and the packet has a flow key, or is an ICMP
    /// error quoting one: `probe.related`), then rules. `frag`: a first
    /// fragment.
    Check {
        addrs: Addrs4,
        probe: Probe<FlowKey>,
        frag: Option<Fragment>,
    },
    /// A later fragment: follows its first fragment.
    LaterFragment(Fragment),
    /// An IPv6 packet: its step is `steps6[i]` (kept apart so IPv4 steps
    /// stay small).
    V6(u32),
}

/// What the rules need of an IPv4 header beyond the probe (a step is
/// written and read once per packet: kept small, not the whole
/// [`Ipv4Headers`]).
#[derive(Clone, Copy, Debug)]
struct Addrs4 {
    src: u32,
    dst: u32,
    proto: u8,
}

/// [`Addrs4`] of an IPv6 packet (`proto`: after the extension headers).
#[derive(Clone, Copy, Debug)]
struct Addrs6 {
    src: u128,
    dst: u128,
    proto: u8,
}

/// [`Step`] of an IPv6 packet that is filtered.
#[derive(Clone, Copy, Debug)]
enum Step6 {
    Check { addrs: Addrs6, probe: Probe<FlowKey6>, frag: Option<Fragment<FragKey6>> },
    LaterFragment(Fragment<FragKey6>),
}

impl BatchLookup for Step {
    #[inline]
    fn lookup_parts(&mut self) -> Option<(&FlowKey, u64, &mut Option<u32>)> {
        match self {
            Step::Check { probe: Probe { key: Some(key), hash, hint, .. }, .. } => {
                Some((key, *hash, hint))
            }
            _ => None,
        }
    }
}

impl BatchLookup<FlowKey6> for Step6 {
    #[inline]
    fn lookup_parts(&mut self) -> Option<(&FlowKey6, u64, &mut Option<u32>)> {
        match self {
            Step6::Check { probe: Probe { key: Some(key), hash, hint, .. }, .. } => {
                Some((key, *hash, hint))
            }
            _ => None,
        }
    }
}

impl NetworkFunction for Firewall {
    fn spec(&self) -> &'static NfSpec {
        &SPEC
    }

    fn keeps_lengths(&self) -> bool {
        true
    }

    fn process(&mut self, batch: &mut Batch, cx: &mut Context<'_>) {
        let now = self.clock.now(cx.now_ns);
        // Passes so the connection table's cache misses overlap across the
        // batch (see `Prefetch`): parse; touch the index buckets; probe;
        // touch the connections; then decide.
        let mut steps = std::mem::take(&mut self.steps);
        let mut steps6 = std::mem::take(&mut self.steps6);
        steps.clear();
        steps6.clear();
        steps.extend(batch.iter().map(|p| self.classify(p.data(), &mut steps6)));
        if let Some(t) = &self.conntrack {
            t.prefetch_batch(&mut steps);
        }
        if let (Some(t), false) = (&self.conntrack6, steps6.is_empty()) {
            t.prefetch_batch(&mut steps6);
        }
        apply_steps(batch, &steps, &Step::Pass, cx, |_, step| match step {
            Step::V6(i) => match steps6.get(*i as usize) {
                Some(s) => self.filter6(s, now),
                None => Err(DropReason::Malformed),
            },
            s => self.filter(s, now),
        });
        self.steps = steps;
        self.steps6 = steps6;
    }

    fn tick(&mut self, _out: &mut Batch, cx: &mut Context<'_>) {
        let now = self.clock.now(cx.now_ns);
        self.fragments.expire(now);
        self.fragments6.expire(now);
        if let Some(t) = self.conntrack.as_mut() {
            t.sweep(now, &self.timeouts, SWEEP_BUDGET, |_| {});
        }
        if let Some(t) = self.conntrack6.as_mut() {
            t.sweep(now, &self.timeouts, SWEEP_BUDGET, |_| {});
        }
    }

    fn wants_tick(&self) -> bool {
        self.conntrack.as_ref().is_some_and(|t| !t.is_empty())
            || self.conntrack6.as_ref().is_some_and(|t| !t.is_empty())
            || !self.fragments.is_empty()
            || !self.fragments6.is_empty()
    }

    fn export_scoped(&self, scope: &FlowScope, encoding: Encoding) -> Result<NfState, StateError> {
        let (t4, t6) = (self.conntrack.as_ref(), self.conntrack6.as_ref());
        Ok(ConnSnapshot::export(SPEC.name, &self.clock, t4, t6, scope, encoding))
    }

    fn import_state(&mut self, state: &NfState) -> Result<(), StateError> {
        let s = ConnSnapshot::decode(state, SPEC.name)?;
        if self.refuses_connections(&s)? {
            return Ok(());
        }
        let table = ConnTable::from_conns(&s.conns, self.max_flows).map_err(StateError::Corrupt)?;
        let table6 =
            ConnTable::from_conns(&s.conns6, self.max_flows).map_err(StateError::Corrupt)?;
        self.conntrack = Some(table);
        self.conntrack6 = Some(table6);
        self.clock.resume_from(s.clock);
        Ok(())
    }

    fn import_merge(&mut self, state: &NfState) -> Result<(), StateError> {
        let s = ConnSnapshot::decode(state, SPEC.name)?;
        if self.refuses_connections(&s)? {
            return Ok(());
        }
        let (t4, t6) = (self.conntrack.as_ref(), self.conntrack6.as_ref());
        let merged = s.merge_into(t4, t6, &self.clock);
        for total in [merged.conns.len(), merged.conns6.len()] {
            if total > self.max_flows {
                return Err(StateError::Capacity { total, max: self.max_flows });
            }
        }
        let table =
            ConnTable::from_conns(&merged.conns, self.max_flows).map_err(StateError::Conflict)?;
        let table6 =
            ConnTable::from_conns(&merged.conns6, self.max_flows).map_err(StateError::Conflict)?;
        self.conntrack = Some(table);
        self.conntrack6 = Some(table6);
        if let Some(clock) = merged.adopt_clock {
            self.clock.resume_from(clock);
        }
        Ok(())
    }

    fn flow_stream(&mut self) -> Option<&mut dyn FlowStream> {
        match self.conntrack {
            Some(_) => Some(self),
            None => None,
        }
    }
}

/// Streaming the tracked connections during a live migration (see
/// [`crate::statelet`]); only with conntrack on (off, the firewall keeps
/// no state and [`NetworkFunction::flow_stream`] is `None`). The snapshot
/// walk goes over the IPv4 table, then the IPv6 one (positions from
/// [`V6_CURSOR`] on).
impl FlowStream for Firewall {
    fn record_changes(&mut self, on: bool) {
        if let Some(t) = self.conntrack.as_mut() {
            t.record_changes(on);
        }
        if let Some(t) = self.conntrack6.as_mut() {
            t.record_changes(on);
        }
    }

    fn take_changes(&mut self, out: &mut Vec<PartitionKey>) {
        if let Some(t) = self.conntrack.as_mut() {
            t.take_changes(out);
        }
        if let Some(t) = self.conntrack6.as_mut() {
            t.take_changes(out);
        }
    }

    fn changes_waiting(&self) -> usize {
        self.conntrack.as_ref().map_or(0, ConnTable::changes_waiting)
            + self.conntrack6.as_ref().map_or(0, ConnTable::changes_waiting)
    }

    fn export_from(&self, cursor: &mut usize, max: usize) -> Option<Statelet> {
        let t4 = self.conntrack.as_ref()?;
        if *cursor < V6_CURSOR {
            if let Some(conns) = t4.export_from(cursor, max) {
                let keys = conns.iter().map(Conn::partition_key).collect();
                return Some(ConnSnapshot::statelet(SPEC.name, &self.clock, keys, conns, vec![]));
            }
            *cursor = V6_CURSOR;
        }
        let mut at = *cursor - V6_CURSOR;
        let conns6 = self.conntrack6.as_ref()?.export_from(&mut at, max)?;
        *cursor = V6_CURSOR + at;
        let keys = conns6.iter().map(Conn::partition_key).collect();
        Some(ConnSnapshot::statelet(SPEC.name, &self.clock, keys, vec![], conns6))
    }

    fn export_flows(&self, keys: &[PartitionKey]) -> Statelet {
        let conns = self.conntrack.as_ref().map(|t| t.conns_of(keys)).unwrap_or_default();
        let conns6 = self.conntrack6.as_ref().map(|t| t.conns_of(keys)).unwrap_or_default();
        ConnSnapshot::statelet(SPEC.name, &self.clock, keys.to_vec(), conns, conns6)
    }

    fn install(&mut self, statelet: &Statelet) -> Result<(), StateError> {
        let Some(table) = self.conntrack.as_mut() else {
            return Err(StateError::Corrupt("this firewall has conntrack off".into()));
        };
        // A firewall connection's reply key is its original key reversed.
        fn fits<K: ConnKey>(c: &Conn<K>) -> Result<(), String> {
            match c.reply == c.orig.reversed() {
                true => Ok(()),
                false => Err(format!("({:?}) is not a firewall connection", c.orig)),
            }
        }
        let table6 = self.conntrack6.as_mut();
        ConnSnapshot::install_statelet(
            SPEC.name,
            table,
            table6,
            &mut self.clock,
            statelet,
            fits,
            fits,
        )
        .map(|_| ())
    }

    fn finish_install(&mut self) -> Result<(), StateError> {
        self.clock.end_stream();
        Ok(())
    }

    fn held_keys(&self, out: &mut Vec<PartitionKey>) {
        if let Some(t) = &self.conntrack {
            out.extend(t.iter().map(Conn::partition_key));
        }
        if let Some(t) = &self.conntrack6 {
            out.extend(t.iter().map(Conn::partition_key));
        }
    }

    fn len(&self) -> usize {
        self.connections()
    }
}

impl Firewall {
    /// With conntrack off: `Ok(true)` (nothing to import) for a snapshot
    /// without connections, an error for one with connections. With
    /// conntrack on: `Ok(false)`.
    fn refuses_connections(&self, s: &ConnSnapshot) -> Result<bool, StateError> {
        match (&self.conntrack, s.conns.is_empty() && s.conns6.is_empty()) {
            (Some(_), _) => Ok(false),
            (None, true) => Ok(true),
            (None, false) => Err(StateError::Corrupt(
                "snapshot has connections but this firewall has conntrack off".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::{TCP_ACK, TCP_FIN, TCP_SYN};
    use crate::{Counters, Params};
    use braid_packet::wire::checksum::checksum;
    use braid_packet::Packet;
    use proptest::prelude::*;

    fn fw(yaml: &str) -> Firewall {
        let p: Params = serde_yaml_ng::from_str(yaml).unwrap();
        Firewall::from_config(&crate::params::parse(&p).unwrap()).unwrap()
    }

    /// An IPv4 frame with an 8- or 20-byte L4 header.
    fn frame(
        src: [u8; 4],
        dst: [u8; 4],
        proto: u8,
        sport: u16,
        dport: u16,
        tcp_flags: u8,
    ) -> Vec<u8> {
        let l4 = if proto == PROTO_TCP { 20 } else { 8 };
        let mut f = vec![0u8; 14 + 20 + l4];
        f[12..14].copy_from_slice(&[8, 0]);
        let ip = &mut f[14..];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((20 + l4) as u16).to_be_bytes());
        ip[8] = 64;
        ip[9] = proto;
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        let ck = checksum(&ip[..20]);
        ip[10..12].copy_from_slice(&ck.to_be_bytes());
        if proto == PROTO_ICMP {
            ip[20] = 8;
            ip[24..26].copy_from_slice(&sport.to_be_bytes());
        } else {
            ip[20..22].copy_from_slice(&sport.to_be_bytes());
            ip[22..24].copy_from_slice(&dport.to_be_bytes());
        }
        if proto == PROTO_TCP {
            ip[32] = 5 << 4;
            ip[33] = tcp_flags;
        }
        if proto == PROTO_UDP {
            ip[24..26].copy_from_slice(&8u16.to_be_bytes());
        }
        f
    }

    fn run(nf: &mut Firewall, now: u64, frames: &[Vec<u8>]) -> (usize, Counters) {
        let mut b: Batch = frames.iter().map(|f| Packet::from_bytes(f)).collect();
        let mut c = Counters::default();
        nf.process(&mut b, &mut Context::new(now, &mut c));
        (b.len(), c)
    }

    const WEB: &str = "rules:\n\
        - {action: drop, src: 10.0.0.66/32}\n\
        - {action: allow, src: 10.0.0.0/8, proto: tcp, dst_ports: 80}\n\
        - {action: allow, src: 10.0.0.0/8, proto: udp, dst_ports: '5000-5010'}\n\
        - {action: allow, src: 10.0.0.0/8, proto: icmp}\n";

    #[test]
    fn rules_first_match_and_default() {
        let mut f = fw(&format!("{WEB}conntrack: false\n"));
        let (n, c) = run(
            &mut f,
            1,
            &[
                frame([10, 0, 0, 1], [8, 8, 8, 8], PROTO_TCP, 1234, 80, TCP_SYN),
                frame([10, 0, 0, 66], [8, 8, 8, 8], PROTO_TCP, 1234, 80, TCP_SYN),
                frame([10, 0, 0, 1], [8, 8, 8, 8], PROTO_TCP, 1234, 81, TCP_SYN),
                frame([10, 0, 0, 1], [8, 8, 8, 8], PROTO_UDP, 1, 5010, 0),
                frame([10, 0, 0, 1], [8, 8, 8, 8], PROTO_UDP, 1, 5011, 0),
                frame([10, 0, 0, 1], [8, 8, 8, 8], PROTO_ICMP, 7, 7, 0),
                frame([11, 0, 0, 1], [8, 8, 8, 8], PROTO_ICMP, 7, 7, 0),
            ],
        );
        assert_eq!((n, c.dropped(DropReason::Denied)), (3, 4));
        let mut open = fw("default: allow\nconntrack: false\n");
        assert_eq!(run(&mut open, 1, &[frame([1, 1, 1, 1], [2, 2, 2, 2], 47, 0, 0, 0)]).0, 1);
    }

    #[test]
    fn replies_of_allowed_flows_pass_until_idle() {
        let mut f = fw(&format!("{WEB}timeouts: {{tcp_transitory: 10, tcp_established: 100}}\n"));
        let s = 1_000_000_000u64;
        let out = frame([10, 0, 0, 1], [8, 8, 8, 8], PROTO_TCP, 1234, 80, TCP_SYN);
        let back = frame([8, 8, 8, 8], [10, 0, 0, 1], PROTO_TCP, 80, 1234, TCP_SYN | TCP_ACK);
        // The reply alone is denied.
        assert_eq!(run(&mut f, s, std::slice::from_ref(&back)).0, 0);
        let ack = frame([10, 0, 0, 1], [8, 8, 8, 8], PROTO_TCP, 1234, 80, TCP_ACK);
        assert_eq!(run(&mut f, s, &[out.clone(), back.clone(), ack]).0, 3);
        assert_eq!(f.connections(), 1);
        // Established: the long timeout applies.
        assert_eq!(run(&mut f, 90 * s, std::slice::from_ref(&back)).0, 1);
        // FIN: transitory again; after 11 s idle the flow is gone.
        let fin = frame([10, 0, 0, 1], [8, 8, 8, 8], PROTO_TCP, 1234, 80, TCP_FIN | TCP_ACK);
        assert_eq!(run(&mut f, 91 * s, &[fin]).0, 1);
        assert_eq!(run(&mut f, 103 * s, std::slice::from_ref(&back)).0, 0);
        assert_eq!(f.connections(), 0);
        // ICMP echo replies match the request's flow.
        let req = frame([10, 0, 0, 1], [8, 8, 8, 8], PROTO_ICMP, 9, 9, 0);
        let mut rep = frame([8, 8, 8, 8], [10, 0, 0, 1], PROTO_ICMP, 9, 9, 0);
        rep[34] = 0;
        assert_eq!(run(&mut f, 200 * s, &[req, rep]).0, 2);
    }

    /// Issue 13 item 1: an allowed outbound RST, FIN, SYN+FIN, SYN-ACK or
    /// echo reply must not create a connection that admits the reversed
    /// SYN or echo request (nftables `ct state established,related`
    /// drops them); an ACK is picked up, but a SYN against it is invalid.
    #[test]
    fn pickup_only_from_segments_linux_tracks() {
        use braid_packet::wire::tcp_flags::{PSH, RST};
        let inside = "rules: [{action: allow, src: 10.0.0.0/8}]\n";
        let a = [10, 0, 0, 1];
        let b = [8, 8, 8, 8];
        for flags in
            [RST, RST | TCP_ACK, TCP_FIN | TCP_ACK, TCP_SYN | TCP_FIN, TCP_SYN | TCP_ACK, 0]
        {
            let mut f = fw(inside);
            let out = frame(a, b, PROTO_TCP, 80, 1234, flags);
            assert_eq!(run(&mut f, 1, &[out]).0, 1, "the rules allow {flags:#04x}");
            assert_eq!(f.connections(), 0, "{flags:#04x} tracked");
            let syn = frame(b, a, PROTO_TCP, 1234, 80, TCP_SYN);
            assert_eq!(run(&mut f, 2, &[syn]).0, 0, "SYN admitted after {flags:#04x}");
        }
        // An outbound echo reply creates nothing: the echo request back is
        // denied.
        let mut f = fw(inside);
        let mut rep = frame(a, b, PROTO_ICMP, 9, 9, 0);
        rep[34] = ICMP_ECHO_REPLY;
        assert_eq!(run(&mut f, 1, &[rep]).0, 1);
        assert_eq!(f.connections(), 0);
        assert_eq!(run(&mut f, 2, &[frame(b, a, PROTO_ICMP, 9, 9, 0)]).0, 0);
        // An echo request tracked: its reply passes, a request back on the
        // same identifier does not.
        assert_eq!(run(&mut f, 3, &[frame(a, b, PROTO_ICMP, 9, 9, 0)]).0, 1);
        assert_eq!(run(&mut f, 4, &[frame(b, a, PROTO_ICMP, 9, 9, 0)]).0, 0);
        let mut rep = frame(b, a, PROTO_ICMP, 9, 9, 0);
        rep[34] = ICMP_ECHO_REPLY;
        assert_eq!(run(&mut f, 5, &[rep]).0, 1);
        // A mid-stream ACK is picked up (nf_conntrack_tcp_loose): the
        // peer's ACKs pass, a SYN on the reversed tuple is invalid.
        let mut f = fw(inside);
        assert_eq!(run(&mut f, 1, &[frame(a, b, PROTO_TCP, 80, 1234, TCP_ACK | PSH)]).0, 1);
        assert_eq!(f.connections(), 1);
        assert_eq!(run(&mut f, 2, &[frame(b, a, PROTO_TCP, 1234, 80, TCP_SYN)]).0, 0);
        assert_eq!(run(&mut f, 3, &[frame(b, a, PROTO_TCP, 1234, 80, TCP_ACK)]).0, 1);
        // The reply RST closes it (CLOSE); after the transitory timeout
        // the connection is gone and an ACK from outside is denied.
        assert_eq!(run(&mut f, 4, &[frame(b, a, PROTO_TCP, 1234, 80, RST)]).0, 1);
        let s = 1_000_000_000u64;
        assert_eq!(run(&mut f, 200 * s, &[frame(b, a, PROTO_TCP, 1234, 80, TCP_ACK)]).0, 0);
    }

    /// `f` made a fragment of datagram `id`: payload offset `offset`
    /// bytes, more fragments or not; header checksum refreshed.
    fn fragment(mut f: Vec<u8>, id: u16, offset: u16, more: bool) -> Vec<u8> {
        f[18..20].copy_from_slice(&id.to_be_bytes());
        let word = (offset / 8) | if more { 0x2000 } else { 0 };
        f[20..22].copy_from_slice(&word.to_be_bytes());
        f[24..26].fill(0);
        let ck = checksum(&f[14..34]);
        f[24..26].copy_from_slice(&ck.to_be_bytes());
        f
    }

    /// Issue 13 item 4: later fragments follow their first fragment's
    /// verdict (the rules see ports only there); one without a first
    /// fragment seen, or beyond `max_fragments`, is dropped (`fragment`).
    #[test]
    fn later_fragments_follow_the_first() {
        let mut f = fw(&format!("{WEB}max_fragments: 1\n"));
        let first = |id, port| {
            fragment(frame([10, 0, 0, 1], [8, 8, 8, 8], PROTO_UDP, 1, port, 0), id, 0, true)
        };
        let later =
            |id| fragment(frame([10, 0, 0, 1], [8, 8, 8, 8], PROTO_UDP, 0, 0, 0), id, 8, false);
        // A later fragment whose first was not seen.
        let (n, c) = run(&mut f, 1, &[later(7)]);
        assert_eq!((n, c.dropped(DropReason::Fragment)), (0, 1));
        // Allowed first fragment: its later fragment passes (the rules
        // alone, with ports 0, would deny it).
        assert_eq!(run(&mut f, 2, &[first(7, 5000), later(7)]).0, 2);
        // Denied first fragment: the later one does not pass.
        let (n, c) = run(&mut f, 3, &[first(8, 6000), later(8)]);
        assert_eq!((n, c.dropped(DropReason::Denied), c.dropped(DropReason::Fragment)), (0, 1, 1));
        // The table holds one datagram: a second in flight is refused.
        assert_eq!(run(&mut f, 4, &[first(9, 5000)]).0, 1);
        let (n, c) = run(&mut f, 5, &[first(10, 5000)]);
        assert_eq!((n, c.dropped(DropReason::Fragment)), (0, 1));
        // 30 s later the entry has expired: room again, the old one gone.
        let s = 1_000_000_000u64;
        let (n, c) = run(&mut f, 40 * s, &[later(9), first(10, 5000), later(10)]);
        assert_eq!((n, c.dropped(DropReason::Fragment)), (2, 1));
        // Stateless: the rules decide every fragment, ports 0 for later ones.
        let mut f = fw(&format!("{WEB}conntrack: false\n"));
        let (n, c) = run(&mut f, 1, &[later(11), first(11, 5000)]);
        assert_eq!((n, c.dropped(DropReason::Denied)), (1, 1));
        let mut open = fw("default: allow\nconntrack: false\n");
        assert_eq!(run(&mut open, 1, &[later(12)]).0, 1);
    }

    #[test]
    fn icmp_errors_about_tracked_flows_pass() {
        let mut f = fw(WEB);
        let out = frame([10, 0, 0, 1], [8, 8, 8, 8], PROTO_UDP, 1, 5000, 0);
        let error = |quoted: &[u8]| {
            let mut e = frame([9, 9, 9, 9], [10, 0, 0, 1], PROTO_ICMP, 0, 0, 0);
            e[34] = 3;
            e.extend_from_slice(&quoted[14..14 + 28]);
            let len = (e.len() - 14) as u16;
            e[16..18].copy_from_slice(&len.to_be_bytes());
            e[24..26].copy_from_slice(&[0, 0]);
            let ck = checksum(&e[14..34]);
            e[24..26].copy_from_slice(&ck.to_be_bytes());
            e
        };
        // Denied by the rules while the flow is unknown...
        assert_eq!(run(&mut f, 1, &[error(&out)]).0, 0);
        // ...passes once it is tracked; an error about another flow does not.
        assert_eq!(run(&mut f, 2, &[out.clone(), error(&out)]).0, 2);
        let other = frame([10, 0, 0, 1], [8, 8, 8, 8], PROTO_UDP, 2, 5000, 0);
        assert_eq!(run(&mut f, 3, &[error(&other)]).0, 0);
    }

    #[test]
    fn tick_sweeps_and_full_table_overflows() {
        let mut f = fw(&format!("{WEB}max_flows: 2\ntimeouts: {{udp: 5}}\n"));
        let s = 1_000_000_000u64;
        let u = |p| frame([10, 0, 0, 1], [8, 8, 8, 8], PROTO_UDP, p, 5000, 0);
        let (n, c) = run(&mut f, s, &[u(1), u(2), u(3)]);
        assert_eq!((n, c.dropped(DropReason::Overflow)), (2, 1));
        let mut c = Counters::default();
        f.tick(&mut Batch::new(), &mut Context::new(7 * s, &mut c));
        assert_eq!(f.connections(), 0);
        assert_eq!(run(&mut f, 8 * s, &[u(3)]).0, 1);
    }

    #[test]
    fn state_moves_to_a_new_instance() {
        let s = 1_000_000_000u64;
        let mut a = fw(WEB);
        let out = frame([10, 0, 0, 1], [8, 8, 8, 8], PROTO_UDP, 1, 5000, 0);
        let back = frame([8, 8, 8, 8], [10, 0, 0, 1], PROTO_UDP, 5000, 1, 0);
        run(&mut a, 1000 * s, &[out]);
        let tick = |nf: &mut Firewall, now: u64| {
            let mut c = Counters::default();
            nf.tick(&mut Batch::new(), &mut Context::new(now, &mut c));
            nf.connections()
        };
        // 200 s idle on the old host before the snapshot.
        assert_eq!(tick(&mut a, 1200 * s), 1);
        let snap = a.export_state().unwrap();
        let mut b = fw(WEB);
        assert_eq!(run(&mut b, 5 * s, std::slice::from_ref(&back)).0, 0);
        b.import_state(&snap).unwrap();
        assert_eq!(b.connections(), 1);
        // The new host's clock is unrelated, but the idle age carries over:
        // 299 s after the last packet the flow is alive, at 301 s it is gone.
        assert_eq!(tick(&mut b, 7 * s), 1);
        assert_eq!(tick(&mut b, 106 * s), 1);
        assert_eq!(tick(&mut b, 108 * s), 0);
        assert_eq!(run(&mut b, 109 * s, std::slice::from_ref(&back)).0, 0);
        // Imported again, the reply passes.
        b.import_state(&snap).unwrap();
        assert_eq!(run(&mut b, 110 * s, std::slice::from_ref(&back)).0, 1);
        assert_eq!(b.export_state().unwrap().kind, "firewall");
        let wrong = NfState { kind: "nat".into(), ..snap.clone() };
        assert!(b.import_state(&wrong).is_err());
        let corrupt = NfState { data: b"{".to_vec(), ..snap };
        assert!(b.import_state(&corrupt).is_err());
    }

    #[test]
    fn config_errors_name_the_field() {
        for (yaml, field) in [
            ("rules: [{action: allow, src: 10.0.0.1/8}]", "rules[0].src"),
            (
                "rules: [{action: allow}, {action: allow, proto: icmp, dst_ports: 80}]",
                "rules[1].dst_ports",
            ),
            ("rules: [{action: allow, proto: tcp, src_ports: '9-1'}]", "rules[0].src_ports"),
            ("rules: [{action: maybe}]", "rules[0].action"),
            ("timeouts: {udp: 0}", "timeouts.udp"),
            ("timeouts: {tcp: 5}", "timeouts"),
            ("max_flows: 0", "max_flows"),
        ] {
            let p: Params = serde_yaml_ng::from_str(yaml).unwrap();
            let e = (SPEC.build)(&p).err().unwrap();
            assert!(e.field.starts_with(field), "{yaml}: {e}");
        }
    }

    // ---- IPv6 ----------------------------------------------------------

    use braid_packet::wire::build::{Ext6Spec, Frame6Spec, L4Spec};
    use std::net::Ipv6Addr;

    const IN6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xa, 0, 0, 0, 0, 1);
    const OUT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 1);

    fn tcp6(src: Ipv6Addr, sp: u16, dst: Ipv6Addr, dp: u16, flags: u8) -> Vec<u8> {
        Frame6Spec::tcp((src, sp), (dst, dp), flags).build()
    }

    fn udp6(src: Ipv6Addr, sp: u16, dst: Ipv6Addr, dp: u16) -> Vec<u8> {
        Frame6Spec::udp((src, sp), (dst, dp), 16).build()
    }

    fn echo6(src: Ipv6Addr, dst: Ipv6Addr, ident: u16, reply: bool) -> Vec<u8> {
        let mut s = Frame6Spec::icmp_echo(src, dst, ident, 1);
        s.l4 = L4Spec::IcmpEcho { ident, seq_no: 1, reply };
        s.build()
    }

    const WEB6: &str = "rules:\n\
        - {action: drop, src: '2001:db8:a::66'}\n\
        - {action: allow, src: '2001:db8:a::/48', proto: tcp, dst_ports: 80}\n\
        - {action: allow, src: '2001:db8:a::/48', proto: udp, dst_ports: '5000-5010'}\n\
        - {action: allow, src: '2001:db8:a::/48', proto: icmpv6}\n\
        - {action: allow, src: 10.0.0.0/8}\n";

    /// IPv6 rules in the same list as IPv4 ones: each family sees only its
    /// own rules (and rules that name no family), first match wins.
    #[test]
    fn ipv6_rules_first_match_by_family() {
        let mut f = fw(&format!("{WEB6}conntrack: false\n"));
        let spammer = Ipv6Addr::new(0x2001, 0xdb8, 0xa, 0, 0, 0, 0, 0x66);
        let other = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 1);
        let cases = [
            (tcp6(IN6, 1234, OUT6, 80, TCP_SYN), true),
            (tcp6(spammer, 1234, OUT6, 80, TCP_SYN), false),
            (tcp6(IN6, 1234, OUT6, 81, TCP_SYN), false),
            (udp6(IN6, 1, OUT6, 5010), true),
            (udp6(IN6, 1, OUT6, 5011), false),
            (echo6(IN6, OUT6, 7, false), true),
            (echo6(other, OUT6, 7, false), false),
            // The IPv4 rule `src: 10.0.0.0/8` is not an IPv6 rule.
            (udp6(other, 1, OUT6, 53), false),
        ];
        for (i, (frame, pass)) in cases.iter().enumerate() {
            assert_eq!(run(&mut f, 1, std::slice::from_ref(frame)).0 == 1, *pass, "case {i}");
        }
        // IPv4 still sees only its rules.
        assert_eq!(run(&mut f, 1, &[frame([10, 0, 0, 1], [8, 8, 8, 8], PROTO_UDP, 1, 9, 0)]).0, 1);
        assert_eq!(run(&mut f, 1, &[frame([11, 0, 0, 1], [8, 8, 8, 8], PROTO_UDP, 1, 9, 0)]).0, 0);
        // A rule without prefixes or an ICMP protocol is both IPv4 and IPv6.
        let mut both =
            fw("rules: [{action: allow, proto: udp, dst_ports: 53}]\nconntrack: false\n");
        assert_eq!(run(&mut both, 1, &[udp6(other, 1, OUT6, 53)]).0, 1);
        assert_eq!(
            run(&mut both, 1, &[frame([1, 1, 1, 1], [2, 2, 2, 2], PROTO_UDP, 1, 53, 0)]).0,
            1
        );
        assert_eq!(run(&mut both, 1, &[udp6(other, 1, OUT6, 54)]).0, 0);
        // `proto: icmp` is IPv4's, `icmpv6` IPv6's.
        let mut icmp = fw("rules: [{action: allow, proto: icmp}]\nconntrack: false\n");
        assert_eq!(run(&mut icmp, 1, &[echo6(IN6, OUT6, 1, false)]).0, 0);
        let mut icmp6 = fw("rules: [{action: allow, proto: icmpv6}]\nconntrack: false\n");
        assert_eq!(run(&mut icmp6, 1, &[echo6(IN6, OUT6, 1, false)]).0, 1);
        assert_eq!(
            run(&mut icmp6, 1, &[frame([1, 1, 1, 1], [2, 2, 2, 2], PROTO_ICMP, 1, 1, 0)]).0,
            0
        );
    }

    /// Neighbour discovery passes like ARP (hop limit 255 only); other
    /// ICMPv6 informational messages are left to the rules.
    #[test]
    fn neighbour_discovery_passes() {
        let mut f = fw("default: drop\n");
        let nd = |msg_type: u8, hop_limit: u8| {
            let mut s = Frame6Spec::icmp_echo(IN6, OUT6, 1, 1);
            s.hop_limit = hop_limit;
            let mut b = s.build();
            b[54] = msg_type;
            b
        };
        assert_eq!(run(&mut f, 1, &[nd(135, 255), nd(136, 255), nd(134, 255)]).0, 3);
        let (n, c) = run(&mut f, 1, &[nd(135, 64), nd(130, 1)]);
        assert_eq!((n, c.dropped(DropReason::Denied)), (0, 2));
    }

    /// The IPv6 form of `pickup_only_from_segments_linux_tracks`: the
    /// same Linux TCP state machine and ICMPv6 echo rules.
    #[test]
    fn ipv6_pickup_only_from_segments_linux_tracks() {
        use braid_packet::wire::tcp_flags::{PSH, RST};
        let inside = "rules: [{action: allow, src: '2001:db8:a::/48'}]\n";
        for flags in
            [RST, RST | TCP_ACK, TCP_FIN | TCP_ACK, TCP_SYN | TCP_FIN, TCP_SYN | TCP_ACK, 0]
        {
            let mut f = fw(inside);
            assert_eq!(run(&mut f, 1, &[tcp6(IN6, 80, OUT6, 1234, flags)]).0, 1);
            assert_eq!(f.connections(), 0, "{flags:#04x} tracked");
            let syn = tcp6(OUT6, 1234, IN6, 80, TCP_SYN);
            assert_eq!(run(&mut f, 2, &[syn]).0, 0, "SYN admitted after {flags:#04x}");
        }
        let mut f = fw(inside);
        // An outbound echo reply creates nothing.
        assert_eq!(run(&mut f, 1, &[echo6(IN6, OUT6, 9, true)]).0, 1);
        assert_eq!(f.connections(), 0);
        assert_eq!(run(&mut f, 2, &[echo6(OUT6, IN6, 9, false)]).0, 0);
        // An echo request is tracked: its reply passes, a request back on
        // the same identifier does not.
        assert_eq!(run(&mut f, 3, &[echo6(IN6, OUT6, 9, false)]).0, 1);
        assert_eq!(f.connections(), 1);
        assert_eq!(run(&mut f, 4, &[echo6(OUT6, IN6, 9, false)]).0, 0);
        assert_eq!(run(&mut f, 5, &[echo6(OUT6, IN6, 9, true)]).0, 1);
        // Handshake, then the peer's segments pass; a mid-stream ACK is
        // picked up and a SYN against it is invalid.
        let mut f = fw(inside);
        let steps = [
            (tcp6(IN6, 3000, OUT6, 443, TCP_SYN), 1),
            (tcp6(OUT6, 443, IN6, 3000, TCP_SYN | TCP_ACK), 1),
            (tcp6(IN6, 3000, OUT6, 443, TCP_ACK), 1),
            (tcp6(OUT6, 443, IN6, 3000, TCP_ACK | PSH), 1),
            (tcp6(IN6, 3001, OUT6, 443, TCP_ACK), 1),
            (tcp6(OUT6, 443, IN6, 3001, TCP_SYN), 0),
            (tcp6(OUT6, 443, IN6, 3001, TCP_ACK), 1),
        ];
        for (i, (frame, n)) in steps.iter().enumerate() {
            assert_eq!(run(&mut f, 10 + i as u64, std::slice::from_ref(frame)).0, *n, "step {i}");
        }
        assert_eq!(f.connections(), 2);
    }

    /// Extension headers are walked: the 5-tuple behind hop-by-hop and
    /// destination options headers is what the rules and the connection
    /// table see.
    #[test]
    fn ipv6_extension_headers_are_walked() {
        let mut f =
            fw("rules: [{action: allow, src: '2001:db8:a::/48', proto: udp, dst_ports: 53}]\n");
        let with_ext = |mut s: Frame6Spec| {
            s.ext =
                vec![Ext6Spec::Plain { kind: 0, len: 8 }, Ext6Spec::Plain { kind: 60, len: 16 }];
            s.build()
        };
        let out = with_ext(Frame6Spec::udp((IN6, 4000), (OUT6, 53), 20));
        let back = with_ext(Frame6Spec::udp((OUT6, 53), (IN6, 4000), 20));
        let wrong = with_ext(Frame6Spec::udp((IN6, 4000), (OUT6, 54), 20));
        assert_eq!(run(&mut f, 1, std::slice::from_ref(&back)).0, 0);
        assert_eq!(run(&mut f, 2, &[out, back.clone(), wrong]).0, 2);
        // A chain longer than the walk accepts is dropped as unsupported.
        let mut long = Frame6Spec::udp((IN6, 4000), (OUT6, 53), 8);
        long.ext = vec![Ext6Spec::Plain { kind: 60, len: 8 }; 9];
        let (n, c) = run(&mut f, 3, &[long.build()]);
        assert_eq!((n, c.dropped(DropReason::Unsupported)), (0, 1));
    }

    /// An ICMPv6 error quoting a packet of a tracked flow passes (RELATED),
    /// also when the quoted packet has extension headers; one about
    /// another flow does not.
    #[test]
    fn ipv6_icmp_errors_about_tracked_flows_pass() {
        let mut f = fw(WEB6);
        let mut out_spec = Frame6Spec::udp((IN6, 1), (OUT6, 5000), 30);
        out_spec.ext = vec![Ext6Spec::Plain { kind: 60, len: 8 }];
        let out = out_spec.build();
        let error = |quoted: &[u8], msg_type: u8| {
            // A time exceeded (3) or unreachable (1) from a router,
            // quoting the packet from its IPv6 header on.
            let mut e =
                Frame6Spec::icmp_echo(Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, 1), IN6, 0, 0);
            e.payload = quoted[14..].to_vec();
            let mut b = e.build();
            b[54] = msg_type;
            b[55] = 0;
            b
        };
        assert_eq!(run(&mut f, 1, &[error(&out, 3)]).0, 0);
        assert_eq!(run(&mut f, 2, &[out.clone(), error(&out, 3), error(&out, 1)]).0, 3);
        let other = udp6(IN6, 2, OUT6, 5000);
        assert_eq!(run(&mut f, 3, &[error(&other, 3)]).0, 0);
    }

    /// IPv6 fragments follow their first fragment, keyed by the 32-bit
    /// identification.
    #[test]
    fn ipv6_later_fragments_follow_the_first() {
        let mut f = fw(&format!("{WEB6}max_fragments: 4\n"));
        let first = |id: u32, port: u16| {
            let mut s = Frame6Spec::udp((IN6, 1), (OUT6, port), 40);
            s.ext = vec![Ext6Spec::Fragment { offset: 0, more: true, ident: id }];
            s.build()
        };
        let later = |id: u32, src: Ipv6Addr| {
            let mut s = Frame6Spec::udp((src, 0), (OUT6, 0), 0);
            s.ext = vec![Ext6Spec::Fragment { offset: 48, more: false, ident: id }];
            s.build()
        };
        let (n, c) = run(&mut f, 1, &[later(0x1234_5678, IN6)]);
        assert_eq!((n, c.dropped(DropReason::Fragment)), (0, 1));
        assert_eq!(run(&mut f, 2, &[first(0x1234_5678, 5000), later(0x1234_5678, IN6)]).0, 2);
        // Only the low 16 bits equal: another datagram.
        assert_eq!(run(&mut f, 2, &[first(0x0001_0001, 5000), later(0x0002_0001, IN6)]).0, 1);
        // Denied first fragment: its later fragment does not pass.
        let (n, c) = run(&mut f, 3, &[first(9, 6000), later(9, IN6)]);
        assert_eq!((n, c.dropped(DropReason::Denied), c.dropped(DropReason::Fragment)), (0, 1, 1));
        // Stateless: the rules decide, ports 0 for later fragments.
        let mut open6 = fw("rules: [{action: allow, proto: udp}]\nconntrack: false\n");
        assert_eq!(run(&mut open6, 1, &[later(10, IN6), first(10, 1)]).0, 2);
    }

    /// IPv6 connections are exported with IPv4 ones and come back in a
    /// new instance (JSON and binary); a version 1 snapshot (IPv4 only)
    /// still imports.
    #[test]
    fn ipv6_state_moves_to_a_new_instance() {
        let mut a = fw(WEB6);
        let out4 = frame([10, 0, 0, 1], [8, 8, 8, 8], PROTO_UDP, 1, 5000, 0);
        let back4 = frame([8, 8, 8, 8], [10, 0, 0, 1], PROTO_UDP, 5000, 1, 0);
        let back6 = udp6(OUT6, 5000, IN6, 1);
        run(&mut a, 1, &[out4, udp6(IN6, 1, OUT6, 5000)]);
        assert_eq!(a.connections(), 2);
        for encoding in [Encoding::Json, Encoding::Binary] {
            let snap = a.export_scoped(&FlowScope::All, encoding).unwrap();
            assert_eq!(snap.version, crate::conntrack::SNAPSHOT_VERSION);
            let mut b = fw(WEB6);
            assert_eq!(run(&mut b, 2, std::slice::from_ref(&back6)).0, 0);
            b.import_state(&snap).unwrap();
            assert_eq!(b.connections(), 2);
            assert_eq!(run(&mut b, 3, &[back4.clone(), back6.clone()]).0, 2);
            // Merged into an instance holding other flows.
            let mut c = fw(WEB6);
            run(&mut c, 1, &[udp6(IN6, 2, OUT6, 5000)]);
            c.import_merge(&snap).unwrap();
            assert_eq!(c.connections(), 3);
        }
        let json = String::from_utf8(a.export_state().unwrap().data).unwrap();
        assert!(json.contains("\"2001:db8:a::1\""), "{json}");
        // Version 1: {clock, conns}.
        let v1 = NfState {
            kind: "firewall".into(),
            version: 1,
            encoding: Encoding::Json,
            data: br#"{"clock":5,"conns":[{"orig":{"src":167772161,"dst":134744072,"src_port":1,"dst_port":5000,"proto":17},"reply":{"src":134744072,"dst":167772161,"src_port":5000,"dst_port":1,"proto":17},"last_seen":5,"flags":8}]}"#.to_vec(),
        };
        let mut d = fw(WEB6);
        d.import_state(&v1).unwrap();
        assert_eq!(run(&mut d, 6, std::slice::from_ref(&back4)).0, 1);
        let v3 = NfState { version: 3, ..v1 };
        let e = d.import_state(&v3).unwrap_err().to_string();
        assert!(e.contains("version 3 is not supported"), "{e}");
    }

    /// IPv6 connections stream as statelets like IPv4 ones: the walk
    /// covers both tables, changes of both are recorded, installing them
    /// gives the same table.
    #[test]
    fn ipv6_statelets_stream_both_tables() {
        let mut a = fw(WEB6);
        run(&mut a, 1, &[frame([10, 0, 0, 1], [8, 8, 8, 8], PROTO_UDP, 1, 5000, 0)]);
        run(&mut a, 1, &[udp6(IN6, 1, OUT6, 5000), udp6(IN6, 2, OUT6, 5000)]);
        a.record_changes(true);
        let mut b = fw(WEB6);
        let mut cursor = 0;
        while let Some(s) = a.export_from(&mut cursor, 1) {
            b.install(&s).unwrap();
        }
        assert_eq!(b.connections(), 3);
        run(&mut a, 2, &[udp6(IN6, 3, OUT6, 5000)]);
        let mut keys = Vec::new();
        a.take_changes(&mut keys);
        assert_eq!(keys.len(), 1);
        b.install(&a.export_flows(&keys)).unwrap();
        assert_eq!(b.connections(), 4);
        let mut held = (Vec::new(), Vec::new());
        a.held_keys(&mut held.0);
        b.held_keys(&mut held.1);
        held.0.sort();
        held.1.sort();
        assert_eq!(held.0, held.1);
        assert_eq!(run(&mut b, 3, &[udp6(OUT6, 5000, IN6, 3)]).0, 1);
    }

    #[test]
    fn ipv6_config_errors_name_the_field() {
        for (yaml, field, says) in [
            ("rules: [{action: allow, src: '2001:db8::1/32'}]", "rules[0].src", "host bits"),
            ("rules: [{action: allow, dst: '2001:db8::/129'}]", "rules[0].dst", "0..=128"),
            (
                "rules: [{action: allow, src: '2001:db8::/32', dst: 10.0.0.0/8}]",
                "rules[0].dst",
                "IPv4",
            ),
            (
                "rules: [{action: allow, src: '2001:db8::/32', proto: icmp}]",
                "rules[0].proto",
                "icmpv6",
            ),
            ("rules: [{action: allow, dst: 10.0.0.0/8, proto: icmpv6}]", "rules[0].proto", "icmp"),
            ("rules: [{action: allow, src: '2001:db8::zz'}]", "rules[0].src", "not an IPv6"),
            (
                "rules: [{action: allow, proto: icmpv6, dst_ports: 1}]",
                "rules[0].dst_ports",
                "ports",
            ),
        ] {
            let p: Params = serde_yaml_ng::from_str(yaml).unwrap();
            let e = (SPEC.build)(&p).err().unwrap();
            assert!(e.field.starts_with(field), "{yaml}: {e}");
            assert!(e.to_string().contains(says), "{yaml}: {e}");
        }
    }

    /// The XDP firewall filters IPv4 only: IPv6 rules are refused for a
    /// kernel placement, naming the rule and field.
    #[test]
    fn kernel_placement_refuses_ipv6_rules() {
        for (yaml, field) in [
            ("rules: [{action: drop, src: '2001:db8::/32'}]\nconntrack: false", "rules[0].src"),
            (
                "rules: [{action: drop, src: 10.0.0.0/8}, {action: drop, dst: '2001:db8::1'}]\nconntrack: false",
                "rules[1].dst",
            ),
            ("rules: [{action: drop, proto: icmpv6}]\nconntrack: false", "rules[0].proto"),
        ] {
            let p: Params = serde_yaml_ng::from_str(yaml).unwrap();
            let e = crate::firewall_kernel::translate(&p).unwrap_err().to_string();
            assert!(e.contains(field) && e.contains("IPv4 only"), "{yaml}: {e}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn never_panics_on_garbage(frames in proptest::collection::vec(
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..90),
                braid_packet::strategy::any_frame(),
                braid_packet::strategy::any_frame6(),
            ], 1..8),
            flip in any::<(usize, u8)>())
        {
            let mut frames = frames;
            let mut g = frame([10, 0, 0, 1], [8, 8, 8, 8], PROTO_TCP, 1, 80, TCP_SYN);
            let at = flip.0 % g.len();
            g[at] ^= flip.1;
            frames.push(g);
            let mut f = fw(WEB);
            let (n, c) = run(&mut f, 1, &frames);
            prop_assert_eq!(n as u64 + c.dropped_total(), frames.len() as u64);
        }
    }
}
