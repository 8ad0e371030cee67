//! `router`: IPv4 forwarding with longest-prefix match.
//!
//! Per packet: parse Ethernet (up to two VLAN tags, kept as they are) and
//! IPv4, verify the header checksum, look the destination up in a DIR-24-8
//! table ([`crate::lpm`]), decrement the TTL with an incremental checksum
//! update (RFC 1624), rewrite the MACs (destination: the route's next hop,
//! source: the router's own) and set `meta.out_port` to the route's port.
//!
//! In Linux's order (ip_route_input, then ip_forward): martian addresses
//! are dropped (`martian`, RFC 1812 §5.3.7 and §5.3.5.1: a source in
//! 0.0.0.0/8, 127.0.0.0/8, 224.0.0.0/4 or 255.255.255.255; a destination
//! that is the limited broadcast, in 0.0.0.0/8, 127.0.0.0/8 or multicast,
//! none of which a router forwards whatever its routes); then the route
//! lookup, where no route is dropped (`no_route`) and answered with an
//! ICMP destination unreachable (type 3, code 0, RFC 1812 §5.2.7.1); then
//! the TTL, where a packet whose TTL would reach zero is dropped
//! (`ttl_exceeded`) and answered with an ICMP time exceeded (type 11,
//! code 0). The ICMP errors quote as much of the original as fits in a
//! 576-byte datagram (RFC 1812 §4.3.2.3; 548 bytes, like Linux), go back
//! by the route to the source and are appended to the batch
//! (`packets_created`). No ICMP error is sent about an ICMP error or a
//! non-first fragment (RFC 1812 §4.3.2.7). Generated errors are limited
//! by a token bucket (`icmp_rate` per second, `icmp_burst`; Linux's
//! `icmp_msgs_per_sec` and `icmp_msgs_burst`); those it holds back are
//! counted ([`Router::icmp_rate_limited`]).
//!
//! IPv6 (routes with IPv6 prefixes in the same `routes` list; the
//! envelope's `parse_dual`, extension headers walked): the same steps in
//! Linux's order (`ip6_rcv_core`, `ip6_route_input`, `ip6_forward`):
//! addresses no router forwards are dropped as `martian` (RFC 4291: a
//! multicast, loopback or unspecified destination, a link-local one, a
//! multicast or loopback source); then the lookup in an [`Lpm6`], where
//! no route is answered with an ICMPv6 destination unreachable (type 1,
//! code 0); then the hop limit, where a packet whose hop limit would reach
//! zero is answered with an ICMPv6 time exceeded (type 3, code 0); then
//! the source: unspecified is dropped, link-local is dropped and answered
//! with a destination unreachable "beyond scope of source address" (type
//! 1, code 2), as Linux's `ip6_forward` does. The hop limit is decremented
//! (IPv6 has no header checksum). ICMPv6 errors come from the `ip6`
//! parameter, quote as much of the packet as fits in 1280 bytes (RFC 4443
//! §2.4(c)), are not sent about ICMPv6 errors (§2.4(e)) and share the
//! IPv4 errors' rate limit (as Linux's global ICMP limit does).
//!
//! Link MTUs (`ports: [{port, mtu}]`; none by default): after those
//! checks, as Linux's `ip_forward` / `ip6_forward`, a packet longer than
//! its egress port's MTU is, for IPv6, dropped (`too_big`) and answered
//! with ICMPv6 Packet Too Big carrying the MTU (RFC 4443 §3.1); for IPv4
//! with DF, dropped (`too_big`) and answered with "fragmentation needed"
//! carrying the next-hop MTU (RFC 1191); for IPv4 without DF, forwarded as
//! fragments cut as Linux cuts them ([`fragment_ipv4`]), inserted in the
//! batch right after the first one.
//!
//! The router drops what it cannot route: other frames (ARP and neighbour
//! discovery included: next-hop MACs are static) count as `unsupported`,
//! bad headers as `malformed`.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use braid_packet::{Batch, Packet};

use braid_packet::wire::checksum::{checksum, update16};
use braid_packet::wire::{ethernet, icmpv4, icmpv6, ip_proto, ipv4, ipv6};
use braid_packet::wire::{EthernetFrame, EthernetRepr, Icmpv4Packet, Icmpv4Repr};
use braid_packet::wire::{Icmpv6Packet, Icmpv6Repr, Ipv6Packet, Ipv6Repr};
use braid_packet::wire::{Ipv4Packet, Ipv4Repr, MacAddr};

use crate::conntrack::{parse_cidr, Ipv4Headers, Prefetch, L4};
use crate::lpm::{prefix_mask6, Dir24_8, Lpm6};
use crate::params::{ConfigError, ParamDoc};
use crate::{Context, DropReason, NetworkFunction, NfClass, NfSpec, Placement};
use braid_packet::envelope::{self, Class};

pub static SPEC: NfSpec = NfSpec {
    name: "router",
    class: NfClass::Basic,
    placements: &[Placement::User],
    state: crate::StateKind::None,
    kernel: None,
    summary:
        "IPv4/IPv6 router: longest-prefix match, TTL/hop limit, ICMP/ICMPv6 errors, MAC rewrite",
    params: &[
        ParamDoc {
            name: "routes",
            kind: "list of {prefix: IPv4 or IPv6 CIDR, next_hop_mac: MAC, port: u16 (default 0)}",
            default: None,
            help: "routing table; the longest matching prefix wins; port goes to meta.out_port",
        },
        ParamDoc {
            name: "mac",
            kind: "MAC aa:bb:cc:dd:ee:ff",
            default: None,
            help: "the router's own MAC, source of every forwarded frame",
        },
        ParamDoc {
            name: "ip",
            kind: "IPv4 address",
            default: None,
            help: "source address of the ICMP errors the router sends (required with IPv4 routes)",
        },
        ParamDoc {
            name: "ip6",
            kind: "IPv6 address",
            default: None,
            help: "source address of the ICMPv6 errors (required with IPv6 routes)",
        },
        ParamDoc {
            name: "ports",
            kind: "list of {port: u16, mtu: 68..=65535 (IP bytes, L2 header not counted)}",
            default: Some("none (no MTU limit on any port)"),
            help: "link MTU per egress port: IPv6 and IPv4 DF over it get Packet Too Big / frag needed, other IPv4 is fragmented",
        },
        ParamDoc {
            name: "icmp_rate",
            kind: "u32, per second",
            default: Some("1000"),
            help: "ICMP errors sent per second at most (token bucket; 0: none)",
        },
        ParamDoc {
            name: "icmp_burst",
            kind: "u32, >= 1",
            default: Some("50"),
            help: "ICMP errors that may be sent back to back",
        },
    ],
    build: |p| Ok(Box::new(Router::from_config(&crate::params::parse::<Config>(p)?)?)),
};

/// Router parameters.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub routes: Vec<RouteConfig>,
    pub mac: String,
    /// Required when a route is IPv4.
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    /// Required when a route is IPv6.
    #[serde(default)]
    pub ip6: Option<Ipv6Addr>,
    #[serde(default = "default_icmp_rate")]
    pub icmp_rate: u32,
    #[serde(default = "default_icmp_burst")]
    pub icmp_burst: u32,
    /// Link MTUs of egress ports (a port not listed has no limit).
    #[serde(default)]
    pub ports: Vec<PortConfig>,
}

/// One egress port's link settings.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortConfig {
    pub port: u16,
    /// The link MTU: the largest IP packet (IPv4 total length, IPv6 40 +
    /// payload length) sent out of this port; Ethernet and VLAN headers
    /// are not counted, as in `ip link set dev X mtu N`.
    pub mtu: u32,
}

/// The smallest MTU an IPv4 link may have (RFC 791: 68).
pub const MIN_MTU: u32 = 68;

/// The smallest MTU an IPv6 link may have (RFC 8200 §5: 1280).
pub const MIN_MTU6: u32 = 1280;

fn default_icmp_rate() -> u32 {
    1000
}

fn default_icmp_burst() -> u32 {
    50
}

/// Bytes of the original packet an ICMP error quotes at most: what fits
/// in a 576-byte datagram after the IPv4 and ICMP headers (RFC 1812
/// §4.3.2.3; Linux's `icmp_send` quotes the same).
pub const ICMP_QUOTE_MAX: usize = 576 - 20 - 8;

/// A token bucket for generated ICMP errors: `rate` tokens per second up
/// to `burst`, one per error.
#[derive(Clone, Copy, Debug)]
struct IcmpBucket {
    rate: u64,
    burst: u64,
    /// Tokens in nano-units (1e9 per token), so refills stay exact.
    tokens: u64,
    last_ns: u64,
    limited: u64,
}

impl IcmpBucket {
    fn new(rate: u32, burst: u32) -> IcmpBucket {
        let burst = u64::from(burst);
        IcmpBucket {
            rate: u64::from(rate),
            burst,
            tokens: burst * 1_000_000_000,
            last_ns: 0,
            limited: 0,
        }
    }

    /// Take a token at `now_ns` if there is one; count a refusal.
    fn take(&mut self, now_ns: u64) -> bool {
        let elapsed = now_ns.saturating_sub(self.last_ns);
        self.last_ns = self.last_ns.max(now_ns);
        let cap = self.burst * 1_000_000_000;
        self.tokens = self.tokens.saturating_add(elapsed.saturating_mul(self.rate)).min(cap);
        if self.rate > 0 && self.tokens >= 1_000_000_000 {
            self.tokens -= 1_000_000_000;
            true
        } else {
            self.limited += 1;
            false
        }
    }
}

/// A martian address pair (RFC 1812 §5.3.7, §5.3.5.1; Linux's
/// `ip_route_input_slow`): never forwarded, whatever the routes.
#[inline]
pub fn martian(src: u32, dst: u32) -> bool {
    let zeronet = |a: u32| a >> 24 == 0;
    let loopback = |a: u32| a >> 24 == 127;
    let multicast = |a: u32| a >> 28 == 0xe;
    let lbcast = |a: u32| a == u32::MAX;
    multicast(src)
        || lbcast(src)
        || zeronet(src)
        || loopback(src)
        || lbcast(dst)
        || zeronet(dst)
        || loopback(dst)
        || multicast(dst)
}

/// Bytes of the original packet an ICMPv6 error quotes at most: what
/// fits in the IPv6 minimum MTU after the IPv6 and ICMPv6 headers (RFC
/// 4443 §2.4(c)).
pub const ICMP6_QUOTE_MAX: usize = 1280 - 40 - 8;

/// What RFC 4291 and Linux never forward, by destination (multicast,
/// loopback, unspecified, link-local) or source (multicast, loopback).
/// An unspecified or link-local source is checked after the hop limit
/// ([`Router`]'s IPv6 steps), as Linux's `ip6_forward` does.
#[inline]
pub fn martian6(src: u128, dst: u128) -> bool {
    let multicast = |a: u128| a >> 120 == 0xff;
    let loopback = |a: u128| a == 1;
    let link_local = |a: u128| a >> 118 == 0x3fa; // fe80::/10
    dst == 0
        || multicast(dst)
        || loopback(dst)
        || link_local(dst)
        || multicast(src)
        || loopback(src)
}

/// Parse an IPv6 CIDR `2001:db8::/32` (a bare address is a /128); host
/// bits set is an error naming the network.
pub fn parse_cidr6(s: &str) -> Result<(u128, u8), String> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => {
            let len: u8 = l
                .trim()
                .parse()
                .ok()
                .filter(|l| *l <= 128)
                .ok_or_else(|| format!("`{s}`: prefix length must be 0..=128"))?;
            (a, len)
        }
        None => (s, 128),
    };
    let ip: Ipv6Addr =
        addr.trim().parse().map_err(|_| format!("`{s}`: not an IPv6 address or CIDR"))?;
    let ip = u128::from(ip);
    let mask = prefix_mask6(len);
    if ip & !mask != 0 {
        return Err(format!(
            "`{s}` has host bits set; the network is {}/{len}",
            Ipv6Addr::from(ip & mask)
        ));
    }
    Ok((ip, len))
}

/// One route.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub prefix: String,
    pub next_hop_mac: String,
    #[serde(default)]
    pub port: u16,
}

/// Parse a MAC address `aa:bb:cc:dd:ee:ff` (the packet core's
/// [`MacAddr`] syntax) into its bytes; the error names the text.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    s.parse::<MacAddr>().map(|m| m.0).map_err(|e| e.to_string())
}

/// Where a route sends packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct NextHop {
    mac: [u8; 6],
    port: u16,
    /// The port's MTU (`u32::MAX`: none), so the check is one compare.
    mtu: u32,
}

/// The IPv6 fields the router needs (from the envelope's `Ipv6Headers`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct V6 {
    src: u128,
    dst: u128,
    l3: u32,
    /// End of the IPv6 packet in the frame.
    end: u32,
    hop_limit: u8,
    /// An ICMPv6 error message (never answered with another).
    icmp_error: bool,
}

/// What step 1 found in a packet.
#[derive(Clone, Copy, Debug)]
enum Checked {
    V4(Ipv4Headers),
    V6(V6),
}

/// The router.
pub struct Router {
    lpm: Dir24_8,
    lpm6: Lpm6,
    hops: Vec<NextHop>,
    mac: [u8; 6],
    /// Source of ICMP errors; none without IPv4 routes (no errors then).
    ip: Option<u32>,
    /// Source of ICMPv6 errors; none without IPv6 routes (no errors then).
    ip6: Option<Ipv6Addr>,
    /// ICMP errors built during one batch, appended after it (kept to reuse
    /// the allocation).
    created: Vec<Packet>,
    /// Per-batch scratch of step 1.
    checked: Vec<Result<Checked, DropReason>>,
    /// Rate limit of generated ICMP errors.
    icmp: IcmpBucket,
    /// True if some port has an MTU (then IPv4 may be fragmented, and
    /// packet lengths change).
    any_mtu: bool,
    /// Fragments made during one batch, in batch order: (the first
    /// fragment's `buffer_id`, the others), inserted after it at the end
    /// (found by identity, so the forwarding loop tracks nothing).
    frags: Vec<(usize, Vec<Packet>)>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").field("next_hops", &self.hops.len()).finish()
    }
}

impl Router {
    /// Build a router, validating every route (errors name `routes[i].field`).
    pub fn from_config(cfg: &Config) -> Result<Router, ConfigError> {
        let mac = parse_mac(&cfg.mac).map_err(|e| ConfigError::new("mac", e))?;
        let mut mtus: HashMap<u16, u32> = HashMap::new();
        for (i, pc) in cfg.ports.iter().enumerate() {
            if !(MIN_MTU..=65535).contains(&pc.mtu) {
                return Err(ConfigError::new(
                    format!("ports[{i}].mtu"),
                    format!("{} is outside {MIN_MTU}..=65535", pc.mtu),
                ));
            }
            if mtus.insert(pc.port, pc.mtu).is_some() {
                return Err(ConfigError::new(
                    format!("ports[{i}].port"),
                    format!("port {} is listed twice", pc.port),
                ));
            }
        }
        let mut hops: Vec<NextHop> = Vec::new();
        let mut hop_index: HashMap<NextHop, usize> = HashMap::new();
        let mut seen: HashMap<(u128, u8, bool), usize> = HashMap::new();
        let mut table = Vec::with_capacity(cfg.routes.len());
        let mut table6 = Vec::new();
        // Indices into `cfg.routes` of the IPv4 and IPv6 routes.
        let (mut at4, mut at6) = (Vec::new(), Vec::new());
        for (i, r) in cfg.routes.iter().enumerate() {
            let v6 = r.prefix.contains(':');
            let (net, len) = if v6 {
                parse_cidr6(&r.prefix)
            } else {
                parse_cidr(&r.prefix).map(|(n, l)| (u128::from(n), l))
            }
            .map_err(|e| ConfigError::new(format!("routes[{i}].prefix"), e))?;
            if let Some(j) = seen.insert((net, len, v6), i) {
                return Err(ConfigError::new(
                    format!("routes[{i}].prefix"),
                    format!("`{}` is already routed by routes[{j}]", r.prefix),
                ));
            }
            let mtu = mtus.get(&r.port).copied().unwrap_or(u32::MAX);
            if v6 && mtu < MIN_MTU6 {
                return Err(ConfigError::new(
                    format!("routes[{i}].port"),
                    format!(
                        "port {} has MTU {mtu}, below IPv6's minimum {MIN_MTU6} (RFC 8200 §5)",
                        r.port
                    ),
                ));
            }
            let hop = NextHop {
                mac: parse_mac(&r.next_hop_mac)
                    .map_err(|e| ConfigError::new(format!("routes[{i}].next_hop_mac"), e))?,
                port: r.port,
                mtu,
            };
            let idx = *hop_index.entry(hop).or_insert_with(|| {
                hops.push(hop);
                hops.len() - 1
            });
            if v6 {
                table6.push((net, len, idx));
                at6.push(i);
            } else {
                table.push((net as u32, len, idx));
                at4.push(i);
            }
        }
        let lpm = Dir24_8::build(&table).map_err(|e| {
            let index = match &e {
                crate::lpm::LpmError::BadLength { index, .. }
                | crate::lpm::LpmError::TooManyNextHops { index, .. }
                | crate::lpm::LpmError::TooManyLongPrefixes { index } => *index,
            };
            ConfigError::new(format!("routes[{}]", at4[index]), e.to_string())
        })?;
        let lpm6 = Lpm6::build(&table6).map_err(|e| {
            let field = match &e {
                crate::lpm::Lpm6Error::BadLength { index, .. }
                | crate::lpm::Lpm6Error::TooManyNextHops { index, .. } => {
                    format!("routes[{}]", at6[*index])
                }
                crate::lpm::Lpm6Error::TooManyRoutes { .. } => "routes".to_string(),
            };
            ConfigError::new(field, e.to_string())
        })?;
        if cfg.icmp_burst == 0 {
            return Err(ConfigError::new("icmp_burst", "must be at least 1"));
        }
        let ip = match (cfg.ip, at4.first()) {
            (Some(ip), _) => Some(u32::from(ip)),
            (None, Some(i)) => {
                return Err(ConfigError::new(
                    "ip",
                    format!("required: routes[{i}] is IPv4 (the ICMP errors' source)"),
                ))
            }
            (None, None) => None,
        };
        let ip6 = match (cfg.ip6, at6.first()) {
            (Some(ip6), _) => Some(ip6),
            (None, Some(i)) => {
                return Err(ConfigError::new(
                    "ip6",
                    format!("required: routes[{i}] is IPv6 (the ICMPv6 errors' source)"),
                ))
            }
            (None, None) => None,
        };
        Ok(Router {
            lpm,
            lpm6,
            hops,
            mac,
            ip,
            ip6,
            created: Vec::new(),
            checked: Vec::new(),
            icmp: IcmpBucket::new(cfg.icmp_rate, cfg.icmp_burst),
            any_mtu: !mtus.is_empty(),
            frags: Vec::new(),
        })
    }

    /// ICMP errors held back by the rate limit so far.
    pub fn icmp_rate_limited(&self) -> u64 {
        self.icmp.limited
    }

    /// Put the fragments made in this batch right after their first
    /// fragment, so a flow's packets stay in order.
    #[cold]
    #[inline(never)]
    fn insert_fragments(&mut self, batch: &mut Batch, cx: &mut Context<'_>) {
        let old = batch.take();
        let mut runs = self.frags.drain(..).peekable();
        let mut push_run = |batch: &mut Batch, rest: Vec<Packet>| {
            cx.counters.packets_created += rest.len() as u64;
            for f in rest {
                batch.push(f);
            }
        };
        for p in old {
            let id = p.buffer_id();
            batch.push(p);
            while let Some((_, rest)) = runs.next_if(|(first, _)| *first == id) {
                push_run(batch, rest);
            }
        }
        // (Every first fragment stays in the batch; should one not be found,
        // its fragments still go out, last, rather than vanish.)
        for (_, rest) in runs {
            push_run(batch, rest);
        }
    }

    /// Batch step 1: parse and check the headers.
    #[inline]
    fn check(&self, p: &Packet) -> Result<Checked, DropReason> {
        // The envelope policy of `router` (docs/nfs.md): IPv4 and IPv6 are
        // routed, fragments too; anything else is dropped.
        let parsed = envelope::parse_dual(p.data());
        match parsed.class {
            Class::Ok | Class::Fragment { .. } => {}
            Class::Unsupported { .. } => return Err(DropReason::Unsupported),
            Class::Truncated { .. } | Class::Malformed { .. } => return Err(DropReason::Malformed),
        }
        if parsed.l3 == envelope::L3Kind::Ipv6 {
            let h = &parsed.ip6;
            let icmp_error = h.proto == ip_proto::ICMPV6
                && matches!(h.l4, L4::IcmpOther { msg_type } if msg_type < 128);
            return Ok(Checked::V6(V6 {
                src: h.src,
                dst: h.dst,
                l3: h.l3 as u32,
                end: h.end() as u32,
                hop_limit: h.hop_limit,
                icmp_error,
            }));
        }
        let info = parsed.ip;
        if checksum(&p.data()[info.l3..info.l3 + info.ihl]) != 0 {
            return Err(DropReason::Malformed);
        }
        Ok(Checked::V4(info))
    }

    /// Batch step 2 for IPv6 (see the module documentation for the order).
    #[inline]
    fn forward6(&mut self, p: &mut Packet, h: V6, now: u64) -> Result<(), DropReason> {
        if martian6(h.src, h.dst) {
            return Err(DropReason::Martian);
        }
        let Some(hop) = self.lpm6.lookup(h.dst) else {
            self.send_error6(p, &h, icmpv6::msg_type::DEST_UNREACHABLE, 0, 0, now);
            return Err(DropReason::NoRoute);
        };
        if h.hop_limit <= 1 {
            self.send_error6(p, &h, icmpv6::msg_type::TIME_EXCEEDED, 0, 0, now);
            return Err(DropReason::TtlExceeded);
        }
        if h.src == 0 {
            return Err(DropReason::Martian);
        }
        if h.src >> 118 == 0x3fa {
            // Link-local source: beyond scope (Linux's ip6_forward).
            self.send_error6(p, &h, icmpv6::msg_type::DEST_UNREACHABLE, 2, 0, now);
            return Err(DropReason::Martian);
        }
        let hop = self.hops[hop];
        if h.end - h.l3 > hop.mtu {
            // Routers never fragment IPv6 (RFC 8200 §5): Packet Too Big
            // with the link MTU (RFC 4443 §3.1), as Linux's ip6_forward.
            self.send_error6(p, &h, icmpv6::msg_type::PACKET_TOO_BIG, 0, hop.mtu, now);
            return Err(DropReason::TooBig);
        }
        let l3 = h.l3 as usize;
        let d = p.data_mut();
        d[0..6].copy_from_slice(&hop.mac);
        d[6..12].copy_from_slice(&self.mac);
        d[l3 + 7] = h.hop_limit - 1;
        p.meta.out_port = hop.port;
        Ok(())
    }

    /// Queue the ICMPv6 error `msg_type`/`code` answering `orig`, if one is
    /// due (RFC 4443 §2.4(e): not about an ICMPv6 error, nor to a source
    /// that names no single node) and the rate limit lets it go.
    fn send_error6(&mut self, orig: &Packet, h: &V6, msg_type: u8, code: u8, rest: u32, now: u64) {
        let bad_source = h.src == 0 || h.src >> 120 == 0xff || h.src == 1;
        let Some(from) = self.ip6 else { return };
        if h.icmp_error || bad_source || !self.icmp.take(now) {
            return;
        }
        if let Some(icmp) = self.icmp_error6(orig, h, from, (msg_type, code, rest)) {
            self.created.push(icmp);
        }
    }

    /// The ICMPv6 error answering `orig`, built with the wire `Repr`s.
    fn icmp_error6(
        &self,
        orig: &Packet,
        h: &V6,
        from: Ipv6Addr,
        (msg_type, code, rest): (u8, u8, u32),
    ) -> Option<Packet> {
        let o = orig.data();
        let l3 = h.l3 as usize;
        let quoted = (h.end as usize - l3).min(ICMP6_QUOTE_MAX);
        let icmp_len = icmpv6::HEADER_LEN + quoted;
        let mut p = Packet::new();
        let f = p.push_back(l3 + ipv6::HEADER_LEN + icmp_len).ok()?;
        let (dst_mac, port) = match self.lpm6.lookup(h.src) {
            Some(i) => (self.hops[i].mac, self.hops[i].port),
            None => (o[6..12].try_into().ok()?, orig.meta.in_port),
        };
        let eth = EthernetRepr {
            src_addr: MacAddr(self.mac),
            dst_addr: MacAddr(dst_mac),
            ethertype: u16::from_be_bytes([o[12], o[13]]),
        };
        eth.emit(&mut EthernetFrame::new_unchecked(&mut f[..]));
        f[ethernet::HEADER_LEN..l3].copy_from_slice(&o[ethernet::HEADER_LEN..l3]);
        let (head, icmp) = f[l3..].split_at_mut(ipv6::HEADER_LEN);
        let dst = Ipv6Addr::from(h.src);
        let ip = Ipv6Repr {
            src_addr: from,
            dst_addr: dst,
            next_header: ip_proto::ICMPV6,
            payload_len: icmp_len,
            hop_limit: 64,
        };
        let mut view = Ipv6Packet::new_unchecked(head);
        ip.emit(&mut view);
        view.set_traffic_class(0xc0); // CS6: network control
        icmp[icmpv6::HEADER_LEN..].copy_from_slice(&o[l3..l3 + quoted]);
        let msg = Icmpv6Repr::Other { msg_type, msg_code: code, rest_of_header: rest };
        msg.emit(&mut Icmpv6Packet::new_unchecked(icmp), from, dst);
        p.meta.out_port = port;
        p.meta.rx_ns = orig.meta.rx_ns;
        Some(p)
    }

    /// Batch step 2: forward one packet in place, or say why it is dropped
    /// (after queueing an ICMP error if one is due).
    #[inline]
    fn forward(&mut self, p: &mut Packet, info: Ipv4Headers, now: u64) -> Result<(), DropReason> {
        let l3 = info.l3;
        if martian(info.src, info.dst) {
            return Err(DropReason::Martian);
        }
        let Some(hop) = self.lpm.lookup(info.dst) else {
            self.send_error(p, &info, (icmpv4::msg_type::DEST_UNREACHABLE, 0, 0), now);
            return Err(DropReason::NoRoute);
        };
        if info.ttl <= 1 {
            self.send_error(p, &info, (icmpv4::msg_type::TIME_EXCEEDED, 0, 0), now);
            return Err(DropReason::TtlExceeded);
        }
        let hop = self.hops[hop];
        if info.total_len > hop.mtu as usize {
            return self.too_big(p, &info, hop, now);
        }
        let d = p.data_mut();
        d[0..6].copy_from_slice(&hop.mac);
        d[6..12].copy_from_slice(&self.mac);
        let old = u16::from_be_bytes([d[l3 + 8], d[l3 + 9]]);
        let new = old - 0x0100;
        d[l3 + 8] -= 1;
        let ck = u16::from_be_bytes([d[l3 + 10], d[l3 + 11]]);
        d[l3 + 10..l3 + 12].copy_from_slice(&update16(ck, old, new).to_be_bytes());
        p.meta.out_port = hop.port;
        Ok(())
    }

    /// An IPv4 packet longer than its egress port's MTU (after the route
    /// and TTL checks, as Linux's `ip_forward`): with DF set it is dropped
    /// and answered with "fragmentation needed" carrying the MTU (RFC
    /// 1191); without DF it is forwarded as fragments (RFC 791, as Linux's
    /// `ip_do_fragment`): this packet becomes the first, the others wait in
    /// `self.frags` to follow it.
    #[cold]
    #[inline(never)]
    fn too_big(
        &mut self,
        p: &mut Packet,
        info: &Ipv4Headers,
        hop: NextHop,
        now: u64,
    ) -> Result<(), DropReason> {
        let l3 = info.l3;
        let frag_word = u16::from_be_bytes([p.data()[l3 + 6], p.data()[l3 + 7]]);
        if frag_word & 0x4000 != 0 {
            let msg = (icmpv4::msg_type::DEST_UNREACHABLE, 4, hop.mtu);
            self.send_error(p, info, msg, now);
            return Err(DropReason::TooBig);
        }
        let d = p.data_mut();
        d[0..6].copy_from_slice(&hop.mac);
        d[6..12].copy_from_slice(&self.mac);
        d[l3 + 8] -= 1; // checksums are redone per fragment
        p.meta.out_port = hop.port;
        let mut rest = Vec::new();
        fragment_ipv4(p, l3, info.ihl, info.total_len, hop.mtu as usize, &mut rest)?;
        self.frags.push((p.buffer_id(), rest));
        Ok(())
    }

    /// Queue the ICMP error `msg` (type, code, rest of header) answering
    /// `orig`, if one is due and the rate limit lets it go.
    fn send_error(&mut self, orig: &Packet, info: &Ipv4Headers, msg: (u8, u8, u32), now: u64) {
        let is_icmp_error = matches!(info.l4, L4::IcmpOther { msg_type } if matches!(msg_type, 3 | 4 | 5 | 11 | 12));
        let bad_source = info.src == 0 || info.src >= 0xe000_0000;
        let Some(from) = self.ip else { return };
        if info.l4 == L4::Fragment || is_icmp_error || bad_source || !self.icmp.take(now) {
            return;
        }
        if let Some(icmp) = self.icmp_error(orig, info, from, msg) {
            self.created.push(icmp);
        }
    }

    /// The ICMP error `msg` (type, code, rest of header) answering `orig`.
    fn icmp_error(
        &self,
        orig: &Packet,
        info: &Ipv4Headers,
        from: u32,
        (msg_type, msg_code, rest_of_header): (u8, u8, u32),
    ) -> Option<Packet> {
        let o = orig.data();
        let (dst_mac, port, mtu) = match self.lpm.lookup(info.src) {
            Some(h) => (self.hops[h].mac, self.hops[h].port, self.hops[h].mtu),
            // No route back: the neighbour that sent it is the best guess.
            None => (o[6..12].try_into().expect("6 bytes"), orig.meta.in_port, u32::MAX),
        };
        // As much as fits in 576 bytes, or in the way back's MTU if that
        // is smaller (Linux's icmp_send).
        let room = (mtu as usize).min(576) - ipv4::HEADER_LEN - icmpv4::HEADER_LEN;
        let quoted = info.total_len.min(room);
        let l3 = info.l3;
        let icmp_len = icmpv4::HEADER_LEN + quoted;
        let mut p = Packet::new();
        let f = p.push_back(l3 + ipv4::HEADER_LEN + icmp_len).ok()?;
        // L2: back towards the source, with the VLAN tags it came with.
        let eth = EthernetRepr {
            src_addr: MacAddr(self.mac),
            dst_addr: MacAddr(dst_mac),
            ethertype: u16::from_be_bytes([o[12], o[13]]),
        };
        eth.emit(&mut EthernetFrame::new_unchecked(&mut f[..]));
        f[ethernet::HEADER_LEN..l3].copy_from_slice(&o[ethernet::HEADER_LEN..l3]);
        let (head, icmp) = f[l3..].split_at_mut(ipv4::HEADER_LEN);
        let ip = Ipv4Repr {
            src_addr: Ipv4Addr::from(from),
            dst_addr: Ipv4Addr::from(info.src),
            protocol: ip_proto::ICMP,
            payload_len: icmp_len,
            ttl: 64,
        };
        let mut view = Ipv4Packet::new_unchecked(head);
        ip.emit(&mut view);
        view.set_tos(0xc0); // DSCP CS6: network control
        view.fill_checksum();
        // The quote first: the ICMP checksum covers it.
        icmp[icmpv4::HEADER_LEN..].copy_from_slice(&o[l3..l3 + quoted]);
        let msg = Icmpv4Repr::Other { msg_type, msg_code, rest_of_header };
        msg.emit(&mut Icmpv4Packet::new_unchecked(icmp));
        p.meta.out_port = port;
        p.meta.rx_ns = orig.meta.rx_ns;
        Some(p)
    }
}

/// Split the IPv4 packet at `l3` of `p` (`ihl` header bytes, `total_len`
/// in all) into fragments of at most `mtu` bytes of IP, as Linux's
/// `ip_do_fragment` does (RFC 791): every fragment but the last carries
/// `(mtu - ihl) & !7` bytes of payload; offsets continue the packet's own
/// (a fragment is fragmented again) and the last keeps its MF flag; the
/// L2 header (VLAN tags too) and the IP header are copied into each, the
/// later fragments with the options that must not be copied (copy flag
/// clear) overwritten by NOOPs, as Linux's `ip_options_fragment`; total
/// length, flags and header checksum are set in each. `p` becomes the
/// first fragment (cut in place); the others are appended to `out`, in
/// order, with `p`'s metadata. The caller decided the packet may be
/// fragmented (DF clear) and is longer than `mtu`.
pub fn fragment_ipv4(
    p: &mut Packet,
    l3: usize,
    ihl: usize,
    total_len: usize,
    mtu: usize,
    out: &mut Vec<Packet>,
) -> Result<(), DropReason> {
    if mtu < ihl + 8 || p.len() < l3 + total_len || total_len <= ihl {
        return Err(DropReason::Malformed);
    }
    let chunk = (mtu - ihl) & !7;
    let payload = total_len - ihl;
    let d = p.data();
    let word = u16::from_be_bytes([d[l3 + 6], d[l3 + 7]]);
    let (base, last_mf) = (usize::from(word & 0x1fff) * 8, word & 0x2000);
    if base + payload > 0xffff {
        return Err(DropReason::Malformed);
    }
    // The later fragments' header: options without the copy flag become
    // NOOPs (an option's length is trusted only if it stays inside).
    let mut head = [0u8; 60];
    head[..ihl].copy_from_slice(&d[l3..l3 + ihl]);
    let mut at = ipv4::HEADER_LEN;
    while at < ihl {
        match head[at] {
            0 => break,
            1 => at += 1,
            kind => {
                let len = usize::from(*head.get(at + 1).unwrap_or(&0));
                if len < 2 || at + len > ihl {
                    break;
                }
                if kind & 0x80 == 0 {
                    head[at..at + len].fill(1);
                }
                at += len;
            }
        }
    }
    let set = |h: &mut [u8], len: usize, off: usize, more: bool| {
        h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        let w = (off / 8) as u16 | if more { 0x2000 } else { 0 };
        h[6..8].copy_from_slice(&w.to_be_bytes());
        h[10..12].fill(0);
        let ck = checksum(&h[..ihl]);
        h[10..12].copy_from_slice(&ck.to_be_bytes());
    };
    let mut off = chunk;
    while off < payload {
        let n = chunk.min(payload - off);
        let more = off + n < payload || last_mf != 0;
        let mut q = Packet::with_room(l3 + ihl + n);
        let d = p.data();
        let f = q.push_back(l3 + ihl + n).map_err(|_| DropReason::NoRoom)?;
        f[..l3].copy_from_slice(&d[..l3]);
        f[l3..l3 + ihl].copy_from_slice(&head[..ihl]);
        set(&mut f[l3..], ihl + n, base + off, more);
        f[l3 + ihl..].copy_from_slice(&d[l3 + ihl + off..l3 + ihl + off + n]);
        q.meta = p.meta;
        out.push(q);
        off += n;
    }
    let d = p.data_mut();
    set(&mut d[l3..], ihl + chunk, base, true);
    p.truncate(l3 + ihl + chunk);
    Ok(())
}

impl NetworkFunction for Router {
    fn spec(&self) -> &'static NfSpec {
        &SPEC
    }

    fn keeps_lengths(&self) -> bool {
        // Fragmenting cuts packets; without MTUs nothing changes lengths.
        !self.any_mtu
    }

    fn gates(&self) -> crate::Gates {
        // Gates 0 and 1 always exist (upstream, downstream); routes may name more.
        let top = self.hops.iter().map(|h| h.port).max().unwrap_or(0);
        crate::Gates::Switch(top.max(1).saturating_add(1))
    }

    fn process(&mut self, batch: &mut Batch, cx: &mut Context<'_>) {
        // Passes so the route table's cache misses overlap across the batch
        // (see `conntrack::Prefetch`): parse; touch every destination's
        // entry; then forward.
        let mut checked = std::mem::take(&mut self.checked);
        checked.clear();
        checked.extend(batch.iter().map(|p| self.check(p)));
        let mut sink = Prefetch::default();
        let mut any6 = false;
        for c in checked.iter().flatten() {
            sink.add(match c {
                Checked::V4(info) => self.lpm.touch(info.dst) as u32,
                Checked::V6(h) => {
                    any6 = true;
                    self.lpm6.touch(h.dst)
                }
            });
        }
        // IPv6 has a second level; its first-level entries are loaded now.
        // (An IPv4-only batch skips the pass.)
        if any6 {
            for c in checked.iter().flatten() {
                if let Checked::V6(h) = c {
                    sink.add(self.lpm6.touch_intervals(h.dst));
                }
            }
        }
        sink.finish();
        let mut next = checked.iter();
        let now = cx.now_ns;
        cx.retain(batch, |p| {
            // By reference: a step is ~50 bytes, copied per packet otherwise.
            match next.next() {
                Some(Ok(Checked::V4(info))) => self.forward(p, *info, now),
                Some(Ok(Checked::V6(h))) => self.forward6(p, *h, now),
                Some(Err(r)) => Err(*r),
                None => Err(DropReason::Other),
            }
        });
        self.checked = checked;
        if !self.frags.is_empty() {
            self.insert_fragments(batch, cx);
        }
        for p in self.created.drain(..) {
            cx.counters.packets_created += 1;
            batch.push(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Counters, Params};
    use proptest::prelude::*;

    const ROUTER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xfe];

    fn router() -> Router {
        let p: Params = serde_yaml_ng::from_str(
            "mac: 02:00:00:00:00:fe\nip: 192.0.2.1\nroutes:\n\
             - {prefix: 10.0.0.0/8, next_hop_mac: '02:00:00:00:00:01', port: 1}\n\
             - {prefix: 10.1.2.0/24, next_hop_mac: '02:00:00:00:00:02', port: 2}\n\
             - {prefix: 10.1.2.128/25, next_hop_mac: '02:00:00:00:00:03', port: 3}\n\
             - {prefix: 172.16.0.0/12, next_hop_mac: '02:00:00:00:00:04'}\n",
        )
        .unwrap();
        Router::from_config(&crate::params::parse(&p).unwrap()).unwrap()
    }

    /// A UDP frame 172.16.0.9:1000 -> dst:53 with `ttl`, checksums correct.
    fn udp(dst: [u8; 4], ttl: u8, payload: usize) -> Vec<u8> {
        let ip_len = 20 + 8 + payload;
        let mut f = vec![0u8; 14 + ip_len];
        f[0..6].copy_from_slice(&ROUTER_MAC);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 0x99]);
        f[12..14].copy_from_slice(&[8, 0]);
        let ip = &mut f[14..];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
        ip[8] = ttl;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&[172, 16, 0, 9]);
        ip[16..20].copy_from_slice(&dst);
        let ck = checksum(&ip[..20]);
        ip[10..12].copy_from_slice(&ck.to_be_bytes());
        ip[20..22].copy_from_slice(&1000u16.to_be_bytes());
        ip[22..24].copy_from_slice(&53u16.to_be_bytes());
        ip[24..26].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
        for (i, b) in ip[28..].iter_mut().enumerate() {
            *b = i as u8;
        }
        f
    }

    fn run(nf: &mut Router, frames: &[Vec<u8>]) -> (Vec<Packet>, Counters) {
        let mut b: Batch = frames.iter().map(|f| Packet::from_bytes(f)).collect();
        let mut c = Counters::default();
        nf.process(&mut b, &mut Context::new(1, &mut c));
        (b.into_iter().collect(), c)
    }

    #[test]
    fn forwards_by_longest_prefix_with_ttl_and_checksum() {
        let mut r = router();
        for (dst, hop, port) in [
            ([10, 9, 9, 9], 1u8, 1u16),
            ([10, 1, 2, 3], 2, 2),
            ([10, 1, 2, 200], 3, 3),
            ([172, 31, 255, 255], 4, 0),
        ] {
            let (out, c) = run(&mut r, &[udp(dst, 64, 10)]);
            assert_eq!(out.len(), 1, "{dst:?}");
            assert_eq!(c.dropped_total(), 0);
            let f = out[0].data();
            assert_eq!(&f[0..6], &[2, 0, 0, 0, 0, hop]);
            assert_eq!(&f[6..12], &ROUTER_MAC);
            assert_eq!(f[14 + 8], 63);
            assert_eq!(checksum(&f[14..34]), 0, "IP checksum after TTL decrement");
            assert_eq!(out[0].meta.out_port, port);
            // Everything after the TTL/checksum is untouched.
            assert_eq!(&f[34..], &udp(dst, 64, 10)[34..]);
        }
    }

    #[test]
    fn ttl_one_is_answered_with_time_exceeded() {
        let mut r = router();
        let orig = udp([10, 1, 2, 3], 1, 40);
        let (out, c) = run(&mut r, std::slice::from_ref(&orig));
        assert_eq!(c.dropped(DropReason::TtlExceeded), 1);
        assert_eq!(c.packets_created, 1);
        assert_eq!(out.len(), 1);
        let f = out[0].data();
        // Back to the source's next hop (172.16/12 route), from the router.
        assert_eq!(&f[0..6], &[2, 0, 0, 0, 0, 4]);
        assert_eq!(&f[6..12], &ROUTER_MAC);
        let ip = &f[14..];
        assert_eq!(f.len(), 14 + 20 + 8 + orig.len() - 14, "the whole original is quoted");
        assert_eq!(checksum(&ip[..20]), 0);
        assert_eq!(ip[9], 1);
        assert_eq!((ip[0], ip[1], ip[8]), (0x45, 0xc0, 64), "version/IHL, DSCP CS6, TTL");
        assert_eq!(&ip[12..16], &[192, 0, 2, 1]);
        assert_eq!(&ip[16..20], &[172, 16, 0, 9]);
        assert_eq!(checksum(&ip[20..]), 0, "ICMP checksum");
        assert_eq!((ip[20], ip[21]), (11, 0));
        assert_eq!(&ip[28..], &orig[14..], "original header and payload");
        // TTL 0 too; but not about an ICMP error.
        let (out, _) = run(&mut r, &[udp([10, 1, 2, 3], 0, 0)]);
        assert_eq!(out.len(), 1);
        let mut err = f.to_vec();
        err[14 + 8] = 1;
        err[24..26].copy_from_slice(&[0, 0]);
        let ck = checksum(&err[14..34]);
        err[24..26].copy_from_slice(&ck.to_be_bytes());
        let (out, c) = run(&mut r, &[err]);
        assert!(out.is_empty());
        assert_eq!((c.dropped(DropReason::TtlExceeded), c.packets_created), (1, 0));
    }

    #[test]
    fn drops_what_it_cannot_route() {
        let mut r = router();
        let mut arp = udp([10, 1, 2, 3], 64, 0);
        arp[12..14].copy_from_slice(&[8, 6]);
        let mut bad_ck = udp([10, 1, 2, 3], 64, 0);
        bad_ck[24] ^= 1;
        let (out, c) = run(
            &mut r,
            &[udp([192, 168, 0, 1], 64, 0), arp, bad_ck, vec![1, 2, 3], udp([10, 0, 0, 1], 64, 0)],
        );
        // The forwarded packet and the unreachable for the unrouted one.
        assert_eq!(out.len(), 2);
        assert_eq!((c.dropped(DropReason::NoRoute), c.packets_created), (1, 1));
        assert_eq!(c.dropped(DropReason::Unsupported), 1);
        assert_eq!(c.dropped(DropReason::Malformed), 2);
    }

    /// Issue 13 item 5 (RFC 1812): martian addresses are dropped even
    /// under a default route; no route is answered with a destination
    /// unreachable, checked before the TTL (as Linux); errors quote up to
    /// 548 bytes; generated errors are rate-limited and counted.
    #[test]
    fn rfc1812_martians_unreachable_quote_and_rate_limit() {
        let with = |extra: &str| {
            let p: Params = serde_yaml_ng::from_str(&format!(
                "mac: 02:00:00:00:00:fe\nip: 192.0.2.1\n{extra}routes:\n\
                 - {{prefix: 0.0.0.0/0, next_hop_mac: '02:00:00:00:00:01', port: 1}}\n"
            ))
            .unwrap();
            Router::from_config(&crate::params::parse(&p).unwrap()).unwrap()
        };
        let mut r = with("");
        let from = |src: [u8; 4], dst: [u8; 4]| {
            let mut f = udp(dst, 64, 0);
            f[26..30].copy_from_slice(&src);
            f[24..26].fill(0);
            let ck = checksum(&f[14..34]);
            f[24..26].copy_from_slice(&ck.to_be_bytes());
            f
        };
        let martians = [
            from([172, 16, 0, 9], [255, 255, 255, 255]),
            from([172, 16, 0, 9], [127, 0, 0, 1]),
            from([172, 16, 0, 9], [0, 1, 2, 3]),
            from([172, 16, 0, 9], [224, 0, 0, 5]),
            from([172, 16, 0, 9], [239, 1, 1, 1]),
            from([0, 0, 0, 0], [8, 8, 8, 8]),
            from([127, 0, 0, 1], [8, 8, 8, 8]),
            from([224, 1, 1, 1], [8, 8, 8, 8]),
            from([255, 255, 255, 255], [8, 8, 8, 8]),
        ];
        let (out, c) = run(&mut r, &martians);
        assert!(out.is_empty());
        assert_eq!((c.dropped(DropReason::Martian), c.packets_created), (9, 0));
        assert_eq!(run(&mut r, &[from([172, 16, 0, 9], [240, 0, 0, 1])]).0.len(), 1);
        // No route, TTL 1: destination unreachable (the route is looked up
        // first), quoting 548 bytes of a 1,028-byte packet.
        let mut r = router();
        let big = udp([192, 168, 0, 1], 1, 1000);
        let (out, c) = run(&mut r, std::slice::from_ref(&big));
        assert_eq!((c.dropped(DropReason::NoRoute), c.dropped(DropReason::TtlExceeded)), (1, 0));
        let f = out[0].data();
        assert_eq!(f.len(), 14 + 576);
        let ip = &f[14..];
        assert_eq!((ip[20], ip[21]), (3, 0), "net unreachable");
        assert_eq!(u16::from_be_bytes([ip[2], ip[3]]), 576);
        assert_eq!(checksum(&ip[..20]), 0);
        assert_eq!(checksum(&ip[20..]), 0);
        assert_eq!(&ip[28..], &big[14..14 + ICMP_QUOTE_MAX]);
        assert_eq!(out[0].meta.out_port, 0, "back by the route to 172.16/12");
        // Rate limit: 2 back to back, then 1 per second.
        let p: Params = serde_yaml_ng::from_str(
            "mac: 02:00:00:00:00:fe\nip: 192.0.2.1\nicmp_rate: 1\nicmp_burst: 2\nroutes:\n\
             - {prefix: 172.16.0.0/12, next_hop_mac: '02:00:00:00:00:04'}\n",
        )
        .unwrap();
        let mut r = Router::from_config(&crate::params::parse(&p).unwrap()).unwrap();
        let lost: Vec<Vec<u8>> = (0..5).map(|_| udp([192, 168, 0, 1], 64, 0)).collect();
        let at = |r: &mut Router, now: u64, frames: &[Vec<u8>]| {
            let mut b: Batch = frames.iter().map(|f| Packet::from_bytes(f)).collect();
            let mut c = Counters::default();
            r.process(&mut b, &mut Context::new(now, &mut c));
            (b.len(), c.dropped(DropReason::NoRoute))
        };
        assert_eq!(at(&mut r, 1, &lost), (2, 5));
        assert_eq!(r.icmp_rate_limited(), 3);
        assert_eq!(at(&mut r, 1_000_000_001, &lost), (1, 5));
        assert_eq!(r.icmp_rate_limited(), 7);
        let p: Params = serde_yaml_ng::from_str(
            "mac: 02:00:00:00:00:fe\nip: 192.0.2.1\nicmp_burst: 0\nroutes: []",
        )
        .unwrap();
        assert_eq!((SPEC.build)(&p).err().unwrap().field, "icmp_burst");
    }

    #[test]
    fn config_errors_name_the_route() {
        let bad = [
            ("routes[1].prefix", "- {prefix: 10.0.0.0/8, next_hop_mac: '02:00:00:00:00:01'}\n- {prefix: 10.0.0.1/8, next_hop_mac: '02:00:00:00:00:01'}"),
            ("routes[1].prefix", "- {prefix: 10.0.0.0/8, next_hop_mac: '02:00:00:00:00:01'}\n- {prefix: 10.0.0.0/8, next_hop_mac: '02:00:00:00:00:02'}"),
            ("routes[0].next_hop_mac", "- {prefix: 10.0.0.0/8, next_hop_mac: '02:00:00:00:01'}"),
            ("routes[0].prefix", "- {prefix: 10.0.0.0/40, next_hop_mac: '02:00:00:00:00:01'}"),
        ];
        for (field, routes) in bad {
            let y = format!("mac: 02:00:00:00:00:fe\nip: 192.0.2.1\nroutes:\n{routes}\n");
            let p: Params = serde_yaml_ng::from_str(&y).unwrap();
            let e = (SPEC.build)(&p).err().unwrap();
            assert_eq!(e.field, field, "{e}");
        }
        let p: Params =
            serde_yaml_ng::from_str("mac: 02:00:00:00:00:fe\nip: x\nroutes: []").unwrap();
        assert_eq!((SPEC.build)(&p).err().unwrap().field, "ip");
    }

    fn router6() -> Router {
        let p: Params = serde_yaml_ng::from_str(
            "mac: 02:00:00:00:00:fe\nip: 192.0.2.1\nip6: 2001:db8:ff::1\nroutes:\n\
             - {prefix: 10.0.0.0/8, next_hop_mac: '02:00:00:00:00:01', port: 1}\n\
             - {prefix: '2001:db8::/32', next_hop_mac: '02:00:00:00:00:06', port: 1}\n\
             - {prefix: '2001:db8:1::/48', next_hop_mac: '02:00:00:00:00:07', port: 2}\n\
             - {prefix: '2001:db8:1:2::/64', next_hop_mac: '02:00:00:00:00:08', port: 3}\n\
             - {prefix: '2001:db8:1:2::80/121', next_hop_mac: '02:00:00:00:00:09', port: 3}\n\
             - {prefix: '2001:db8:aa::/48', next_hop_mac: '02:00:00:00:00:0a'}\n",
        )
        .unwrap();
        Router::from_config(&crate::params::parse(&p).unwrap()).unwrap()
    }

    fn a6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    /// A UDP/IPv6 frame from 2001:db8:aa::9 to `dst` with `hop_limit`.
    fn udp6(dst: &str, hop_limit: u8, payload: usize) -> Vec<u8> {
        use braid_packet::wire::build::Frame6Spec;
        let mut s = Frame6Spec::udp((a6("2001:db8:aa::9"), 1000), (a6(dst), 53), payload);
        s.hop_limit = hop_limit;
        s.dst_mac = MacAddr(ROUTER_MAC);
        s.build()
    }

    #[test]
    fn ipv6_forwards_by_longest_prefix_with_hop_limit() {
        let mut r = router6();
        for (dst, hop, port) in [
            ("2001:db8:9::1", 6u8, 1u16),
            ("2001:db8:1:9::1", 7, 2),
            ("2001:db8:1:2::1", 8, 3),
            ("2001:db8:1:2::ff", 9, 3),
        ] {
            let orig = udp6(dst, 64, 10);
            let (out, c) = run(&mut r, std::slice::from_ref(&orig));
            assert_eq!((out.len(), c.dropped_total()), (1, 0), "{dst}");
            let f = out[0].data();
            assert_eq!((&f[0..6], &f[6..12]), (&[2, 0, 0, 0, 0, hop][..], &ROUTER_MAC[..]));
            assert_eq!(f[14 + 7], 63, "hop limit");
            assert_eq!(out[0].meta.out_port, port);
            assert_eq!(&f[12..21], &orig[12..21]);
            assert_eq!(&f[22..], &orig[22..], "nothing else changes");
        }
        // With extension headers and VLAN tags too; IPv4 still routed.
        use braid_packet::wire::build::{Ext6Spec, Frame6Spec};
        let mut s = Frame6Spec::tcp((a6("2001:db8:aa::9"), 1), (a6("2001:db8:1::5"), 80), 2);
        s.vlan = Some(5);
        s.ext = vec![Ext6Spec::Plain { kind: 0, len: 8 }, Ext6Spec::Plain { kind: 60, len: 16 }];
        let (out, c) = run(&mut r, &[s.build(), udp([10, 0, 0, 1], 64, 0)]);
        assert_eq!((out.len(), c.dropped_total()), (2, 0));
        assert_eq!((out[0].data()[18 + 7], out[0].meta.out_port), (63, 2));
    }

    #[test]
    fn ipv6_errors_are_icmpv6_built_and_quoted() {
        let mut r = router6();
        // Hop limit 1: time exceeded, back by the route to 2001:db8:aa::/48.
        let orig = udp6("2001:db8:1::5", 1, 40);
        let (out, c) = run(&mut r, std::slice::from_ref(&orig));
        assert_eq!((c.dropped(DropReason::TtlExceeded), c.packets_created), (1, 1));
        let f = out[0].data();
        assert_eq!(&f[0..6], &[2, 0, 0, 0, 0, 0x0a]);
        assert_eq!(f.len(), 14 + 40 + 8 + orig.len() - 14, "the whole packet quoted");
        let ip = Ipv6Packet::new_checked(&f[14..]).unwrap();
        assert_eq!((ip.src_addr(), ip.dst_addr()), (a6("2001:db8:ff::1"), a6("2001:db8:aa::9")));
        assert_eq!((ip.next_header(), ip.hop_limit()), (58, 64));
        let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum(ip.src_addr(), ip.dst_addr()));
        assert_eq!((icmp.msg_type(), icmp.msg_code()), (3, 0));
        assert_eq!(icmp.payload(), &orig[14..]);
        // No route: destination unreachable code 0, checked before the hop
        // limit; a big packet is quoted up to 1280 bytes in all.
        let big = udp6("2001:db9::1", 1, 1400);
        let (out, c) = run(&mut r, std::slice::from_ref(&big));
        assert_eq!((c.dropped(DropReason::NoRoute), c.dropped(DropReason::TtlExceeded)), (1, 0));
        let f = out[0].data();
        assert_eq!(f.len(), 14 + 1280);
        let ip = Ipv6Packet::new_checked(&f[14..]).unwrap();
        let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum(ip.src_addr(), ip.dst_addr()));
        assert_eq!((icmp.msg_type(), icmp.msg_code()), (1, 0));
        assert_eq!(icmp.payload(), &big[14..14 + ICMP6_QUOTE_MAX]);
        // Not about an ICMPv6 error (this one sent to an unrouted address).
        let mut err = f.to_vec();
        err[0..6].copy_from_slice(&ROUTER_MAC);
        err[14 + 24..14 + 40].copy_from_slice(&a6("2001:db9::2").octets());
        let (out, c) = run(&mut r, &[err]);
        assert!(out.is_empty());
        assert_eq!((c.dropped(DropReason::NoRoute), c.packets_created), (1, 0));
    }

    #[test]
    fn ipv6_special_addresses_like_linux() {
        use braid_packet::wire::build::Frame6Spec;
        let mut r = router6();
        let from = |src: &str, dst: &str| {
            let mut s = Frame6Spec::udp((a6(src), 1), (a6(dst), 2), 0);
            s.dst_mac = MacAddr(ROUTER_MAC);
            s.build()
        };
        let ok = "2001:db8:aa::9";
        let silent = [
            from(ok, "::"),
            from(ok, "::1"),
            from(ok, "ff02::1"),
            from(ok, "ff0e::1"),
            from(ok, "fe80::1"),
            from("ff02::1", "2001:db8:1::1"),
            from("::1", "2001:db8:1::1"),
            from("::", "2001:db8:1::1"),
        ];
        let (out, c) = run(&mut r, &silent);
        assert!(out.is_empty());
        assert_eq!((c.dropped(DropReason::Martian), c.packets_created), (8, 0));
        // Link-local source: dropped and answered "beyond scope" (code 2).
        let (out, c) = run(&mut r, &[from("fe80::9", "2001:db8:1::1")]);
        assert_eq!((c.dropped(DropReason::Martian), out.len()), (1, 1));
        let ip = Ipv6Packet::new_checked(&out[0].data()[14..]).unwrap();
        let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
        assert_eq!((icmp.msg_type(), icmp.msg_code(), ip.dst_addr()), (1, 2, a6("fe80::9")));
        assert_eq!(out[0].meta.out_port, 0, "no route back: the port it came in on");
        // Not link-local: fec0:: and fe00:: route (by the default of none here: no route).
        let (_, c) = run(&mut r, &[from(ok, "fec0::1")]);
        assert_eq!(c.dropped(DropReason::NoRoute), 1);
    }

    #[test]
    fn ipv6_config_errors() {
        let bad = [
            ("ip6", "- {prefix: '2001:db8::/32', next_hop_mac: '02:00:00:00:00:01'}", "ip: 192.0.2.1"),
            ("ip", "- {prefix: 10.0.0.0/8, next_hop_mac: '02:00:00:00:00:01'}", "ip6: '2001:db8::1'"),
            ("routes[0].prefix", "- {prefix: '2001:db8::1/32', next_hop_mac: '02:00:00:00:00:01'}", "ip6: '::1'"),
            ("routes[0].prefix", "- {prefix: '2001:db8::/129', next_hop_mac: '02:00:00:00:00:01'}", "ip6: '::1'"),
            ("routes[1].prefix", "- {prefix: '2001:db8::/32', next_hop_mac: '02:00:00:00:00:01'}\n- {prefix: '2001:db8::/32', next_hop_mac: '02:00:00:00:00:02'}", "ip6: '::1'"),
        ];
        for (field, routes, addr) in bad {
            let y = format!("mac: 02:00:00:00:00:fe\n{addr}\nroutes:\n{routes}\n");
            let p: Params = serde_yaml_ng::from_str(&y).unwrap();
            let e = (SPEC.build)(&p).err().unwrap();
            assert_eq!(e.field, field, "{e}");
        }
        // A router without IPv4 routes sends no ICMP error from 0.0.0.0
        // (none configured), and likewise for IPv6.
        let p: Params = serde_yaml_ng::from_str(
            "mac: 02:00:00:00:00:fe\nip6: '::1'\nroutes: [{prefix: '2001:db8::/32', next_hop_mac: '02:00:00:00:00:01'}]",
        )
        .unwrap();
        let mut r = Router::from_config(&crate::params::parse(&p).unwrap()).unwrap();
        let (out, c) = run(&mut r, &[udp([10, 1, 2, 3], 64, 0)]);
        assert_eq!((out.len(), c.dropped(DropReason::NoRoute)), (0, 1));
        let mut r = router();
        let (out, c) = run(&mut r, &[udp6("2001:db8::1", 64, 0)]);
        assert_eq!((out.len(), c.dropped(DropReason::NoRoute)), (0, 1));
        // ::/0 and 0.0.0.0/0 are different routes.
        let y = "mac: 02:00:00:00:00:fe\nip: 192.0.2.1\nip6: '::1'\nroutes:\n\
                 - {prefix: 0.0.0.0/0, next_hop_mac: '02:00:00:00:00:01'}\n\
                 - {prefix: '::/0', next_hop_mac: '02:00:00:00:00:02'}\n";
        let p: Params = serde_yaml_ng::from_str(y).unwrap();
        assert!((SPEC.build)(&p).is_ok());
    }

    /// The test router with `ports:` MTUs (`(port, mtu)`).
    fn router_mtu(mtus: &[(u16, u32)]) -> Router {
        let ports: String =
            mtus.iter().map(|(p, m)| format!("- {{port: {p}, mtu: {m}}}\n")).collect();
        let p: Params = serde_yaml_ng::from_str(&format!(
            "mac: 02:00:00:00:00:fe\nip: 192.0.2.1\nip6: 2001:db8:ff::1\nroutes:\n\
             - {{prefix: 10.0.0.0/8, next_hop_mac: '02:00:00:00:00:01', port: 1}}\n\
             - {{prefix: 172.16.0.0/12, next_hop_mac: '02:00:00:00:00:04'}}\n\
             - {{prefix: '2001:db8:1::/48', next_hop_mac: '02:00:00:00:00:07', port: 2}}\n\
             - {{prefix: '2001:db8:aa::/48', next_hop_mac: '02:00:00:00:00:0a'}}\n\
             ports:\n{ports}"
        ))
        .unwrap();
        Router::from_config(&crate::params::parse(&p).unwrap()).unwrap()
    }

    /// `f` (from `udp`) with the IPv4 fragment word set to `word`.
    fn with_frag_word(mut f: Vec<u8>, word: u16) -> Vec<u8> {
        f[14 + 6..14 + 8].copy_from_slice(&word.to_be_bytes());
        f[24..26].fill(0);
        let ck = checksum(&f[14..34]);
        f[24..26].copy_from_slice(&ck.to_be_bytes());
        f
    }

    /// Reassemble IPv4 fragments (frames): the payload, and whether the
    /// last one seen ends the datagram (MF clear). Panics on a gap.
    fn reassemble(frags: &[&[u8]]) -> (Vec<u8>, bool) {
        let mut parts: Vec<(usize, Vec<u8>, bool)> = frags
            .iter()
            .map(|f| {
                let ip = &f[14..];
                let ihl = usize::from(ip[0] & 0xf) * 4;
                let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
                let w = u16::from_be_bytes([ip[6], ip[7]]);
                (usize::from(w & 0x1fff) * 8, ip[ihl..total].to_vec(), w & 0x2000 != 0)
            })
            .collect();
        parts.sort_by_key(|p| p.0);
        let mut out = Vec::new();
        let mut more = true;
        let base = parts[0].0;
        for (off, bytes, mf) in parts {
            assert_eq!(off - base, out.len(), "fragments are contiguous");
            out.extend_from_slice(&bytes);
            more = mf;
        }
        (out, more)
    }

    #[test]
    fn ipv4_with_df_over_the_mtu_gets_fragmentation_needed() {
        let mut r = router_mtu(&[(1, 1000)]);
        // Exactly the MTU passes; one byte more is answered (RFC 1191).
        let fits = with_frag_word(udp([10, 1, 2, 3], 64, 1000 - 28), 0x4000);
        let (out, c) = run(&mut r, std::slice::from_ref(&fits));
        assert_eq!((out.len(), c.dropped_total()), (1, 0));
        assert_eq!(out[0].data().len(), fits.len());
        let big = with_frag_word(udp([10, 1, 2, 3], 64, 1000 - 27), 0x4000);
        let (out, c) = run(&mut r, std::slice::from_ref(&big));
        assert_eq!((c.dropped(DropReason::TooBig), c.packets_created, out.len()), (1, 1, 1));
        let f = out[0].data();
        assert_eq!(out[0].meta.out_port, 0, "back by the route to 172.16/12");
        let ip = &f[14..];
        assert_eq!(checksum(&ip[..20]), 0);
        assert_eq!(checksum(&ip[20..]), 0);
        assert_eq!((ip[20], ip[21]), (3, 4), "fragmentation needed");
        assert_eq!(&ip[24..28], &[0, 0, 0x03, 0xe8], "next-hop MTU 1000");
        assert_eq!(&ip[28..], &big[14..14 + ICMP_QUOTE_MAX], "the TTL as it came");
        // The route and the TTL are checked first (Linux's order).
        let (_, c) = run(&mut r, &[with_frag_word(udp([10, 1, 2, 3], 1, 2000), 0x4000)]);
        assert_eq!((c.dropped(DropReason::TtlExceeded), c.dropped(DropReason::TooBig)), (1, 0));
        // Not about an ICMP error: dropped silently.
        let mut err = big.clone();
        err[14 + 9] = 1;
        err[34] = 3; // destination unreachable
        let err = with_frag_word(err, 0x4000);
        let (out, c) = run(&mut r, &[err]);
        assert_eq!((out.len(), c.dropped(DropReason::TooBig), c.packets_created), (0, 1, 0));
        // A port without an MTU has no limit; no `ports`: lengths kept.
        let (out, c) = run(&mut r, &[with_frag_word(udp([172, 16, 1, 1], 64, 1400), 0x4000)]);
        assert_eq!((out.len(), c.dropped_total()), (1, 0));
        assert!(!r.keeps_lengths() && router().keeps_lengths());
    }

    #[test]
    fn ipv4_without_df_is_fragmented_like_linux() {
        let mut r = router_mtu(&[(1, 500)]);
        let small = udp([10, 1, 2, 3], 64, 10);
        let big = udp([10, 1, 2, 3], 64, 1000); // 1028 bytes of IP
        let (out, c) = run(&mut r, &[small.clone(), big.clone(), small.clone()]);
        // In place of the packet, in order: 480 + 480 + 48 bytes of payload.
        assert_eq!((out.len(), c.packets_created, c.dropped_total()), (5, 2, 0));
        assert_eq!(out[0].data().len(), small.len());
        assert_eq!(out[4].data().len(), small.len());
        let frags: Vec<&[u8]> = out[1..4].iter().map(|p| p.data()).collect();
        let want = [(500, 0u16, true), (500, 60, true), (68, 120, false)];
        for (f, (len, off, mf)) in frags.iter().zip(want) {
            let ip = &f[14..];
            assert_eq!(f.len(), 14 + len);
            assert_eq!(u16::from_be_bytes([ip[2], ip[3]]) as usize, len);
            let w = u16::from_be_bytes([ip[6], ip[7]]);
            assert_eq!((w & 0x1fff, w & 0x2000 != 0, w & 0x4000), (off, mf, 0));
            assert_eq!(checksum(&ip[..20]), 0);
            assert_eq!((ip[8], &ip[4..6], &ip[12..20]), (63, &big[18..20], &big[26..34]));
            assert_eq!((&f[0..6], &f[6..12]), (&[2, 0, 0, 0, 0, 1][..], &ROUTER_MAC[..]));
        }
        assert!(out[1..4].iter().all(|p| p.meta.out_port == 1));
        assert_eq!(reassemble(&frags), (big[34..].to_vec(), false));
        // A fragment is fragmented again: offsets continue, MF stays.
        let part = with_frag_word(udp([10, 1, 2, 3], 64, 1000), 0x2000 | 100);
        let (out, _) = run(&mut r, std::slice::from_ref(&part));
        assert_eq!(out.len(), 3);
        let frags: Vec<&[u8]> = out.iter().map(|p| p.data()).collect();
        let words: Vec<u16> = frags.iter().map(|f| u16::from_be_bytes([f[20], f[21]])).collect();
        assert_eq!(words, [0x2000 | 100, 0x2000 | 160, 0x2000 | 220]);
        assert_eq!(reassemble(&frags), (part[34..].to_vec(), true));
    }

    #[test]
    fn fragments_copy_only_the_options_with_the_copy_flag() {
        let mut r = router_mtu(&[(1, 300)]);
        // IHL 7: a non-copied option (30) then a copied one (158).
        let plain = udp([10, 1, 2, 3], 64, 600);
        let mut f = plain[..34].to_vec();
        f.extend_from_slice(&[30, 4, 0xaa, 0xbb, 158, 4, 0xcc, 0xdd]);
        f.extend_from_slice(&plain[34..]);
        f[14] = 0x47;
        let total = (f.len() - 14) as u16;
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f[24..26].fill(0);
        let ck = checksum(&f[14..42]);
        f[24..26].copy_from_slice(&ck.to_be_bytes());
        let (out, c) = run(&mut r, std::slice::from_ref(&f));
        assert_eq!((out.len(), c.dropped_total()), (3, 0));
        for (i, p) in out.iter().enumerate() {
            let ip = &p.data()[14..];
            assert!(ip.len() <= 300);
            assert_eq!(ip[0], 0x47, "the header keeps its length");
            assert_eq!(checksum(&ip[..28]), 0);
            let first = if i == 0 { [30, 4, 0xaa, 0xbb] } else { [1, 1, 1, 1] };
            assert_eq!(&ip[20..24], &first);
            assert_eq!(&ip[24..28], &[158, 4, 0xcc, 0xdd]);
        }
        let frags: Vec<&[u8]> = out.iter().map(|p| p.data()).collect();
        assert_eq!(reassemble(&frags), (f[42..].to_vec(), false));
        // (300 - 28) & !7 = 272 bytes a fragment.
        assert_eq!(out[0].data().len(), 14 + 28 + 272);
    }

    #[test]
    fn ipv6_over_the_mtu_gets_packet_too_big() {
        let mut r = router_mtu(&[(2, 1280)]);
        let fits = udp6("2001:db8:1::5", 64, 1280 - 48);
        let (out, c) = run(&mut r, std::slice::from_ref(&fits));
        assert_eq!((out.len(), c.dropped_total(), out[0].data().len()), (1, 0, fits.len()));
        for payload in [1280 - 47, 1400] {
            let big = udp6("2001:db8:1::5", 64, payload);
            let (out, c) = run(&mut r, std::slice::from_ref(&big));
            assert_eq!((c.dropped(DropReason::TooBig), c.packets_created), (1, 1));
            let f = out[0].data();
            assert_eq!(&f[0..6], &[2, 0, 0, 0, 0, 0x0a], "back to the source");
            let ip = Ipv6Packet::new_checked(&f[14..]).unwrap();
            assert_eq!(ip.dst_addr(), a6("2001:db8:aa::9"));
            let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
            assert!(icmp.verify_checksum(ip.src_addr(), ip.dst_addr()));
            assert_eq!((icmp.msg_type(), icmp.msg_code()), (2, 0));
            assert_eq!(&ip.payload()[4..8], &1280u32.to_be_bytes(), "the MTU");
            let quoted = (big.len() - 14).min(ICMP6_QUOTE_MAX);
            assert_eq!(icmp.payload(), &big[14..14 + quoted]);
            assert!(f.len() - 14 <= 1280);
        }
        // Hop limit first; no Packet Too Big about an ICMPv6 error.
        let (_, c) = run(&mut r, &[udp6("2001:db8:1::5", 1, 1400)]);
        assert_eq!((c.dropped(DropReason::TtlExceeded), c.dropped(DropReason::TooBig)), (1, 0));
        let mut err = udp6("2001:db8:1::5", 64, 1400);
        err[14 + 6] = 58;
        err[54] = 1; // destination unreachable
        let (out, c) = run(&mut r, &[err]);
        assert_eq!((out.len(), c.dropped(DropReason::TooBig)), (0, 1));
    }

    #[test]
    fn mtu_config_errors() {
        let base = "mac: 02:00:00:00:00:fe\nip: 192.0.2.1\nip6: '::1'\nroutes:\n\
                    - {prefix: 10.0.0.0/8, next_hop_mac: '02:00:00:00:00:01', port: 1}\n\
                    - {prefix: '2001:db8::/32', next_hop_mac: '02:00:00:00:00:01', port: 2}\n";
        for (field, ports) in [
            ("ports[0].mtu", "[{port: 1, mtu: 67}]"),
            ("ports[0].mtu", "[{port: 1, mtu: 65536}]"),
            ("ports[1].port", "[{port: 1, mtu: 1500}, {port: 1, mtu: 9000}]"),
            ("routes[1].port", "[{port: 2, mtu: 1279}]"),
        ] {
            let p: Params = serde_yaml_ng::from_str(&format!("{base}ports: {ports}")).unwrap();
            let e = (SPEC.build)(&p).err().unwrap();
            assert_eq!(e.field, field, "{e}");
        }
        let p: Params =
            serde_yaml_ng::from_str(&format!("{base}ports: [{{port: 1, mtu: 68}}]")).unwrap();
        assert!((SPEC.build)(&p).is_ok());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Any size over any MTU: every fragment fits, checksums hold, the
        /// payload reassembles to the original's, 8-byte-aligned offsets.
        #[test]
        fn fragments_fit_and_reassemble(payload in 0usize..3000, mtu in 68u32..1600,
                                       ihl_words in 5u8..16, vlan in any::<bool>()) {
            let mut r = router_mtu(&[(1, mtu)]);
            let plain = udp([10, 1, 2, 3], 64, payload);
            let opts = usize::from(ihl_words - 5) * 4;
            let mut f = plain[..34].to_vec();
            f.extend((0..opts).map(|i| if i % 4 == 0 { 0x9e } else { 1 }));
            f.extend_from_slice(&plain[34..]);
            f[14] = 0x40 | ihl_words;
            let total = f.len() - 14;
            f[16..18].copy_from_slice(&(total as u16).to_be_bytes());
            f[24..26].fill(0);
            let ck = checksum(&f[14..34 + opts]);
            f[24..26].copy_from_slice(&ck.to_be_bytes());
            let l3 = if vlan { 18 } else { 14 };
            if vlan {
                f.splice(12..12, [0x81, 0x00, 0x00, 0x05]);
            }
            let (out, c) = run(&mut r, std::slice::from_ref(&f));
            prop_assert_eq!(c.dropped_total(), 0);
            let hlen = 20 + opts;
            if total <= mtu as usize {
                prop_assert_eq!(out.len(), 1);
                prop_assert_eq!(out[0].data().len(), f.len());
                return Ok(());
            }
            let per = (mtu as usize - hlen) & !7;
            prop_assert_eq!(out.len(), (total - hlen).div_ceil(per));
            prop_assert_eq!(c.packets_created as usize, out.len() - 1);
            let mut frags = Vec::new();
            for p in &out {
                let d = p.data();
                prop_assert_eq!(&d[12..l3], &f[12..l3], "VLAN tags kept");
                let ip = &d[l3..];
                prop_assert!(ip.len() <= mtu as usize);
                prop_assert_eq!(usize::from(u16::from_be_bytes([ip[2], ip[3]])), ip.len());
                prop_assert_eq!(checksum(&ip[..hlen]), 0);
                prop_assert_eq!(ip[8], 63);
                // As `reassemble` expects: the IP header after 14 bytes.
                let mut flat = d[..12].to_vec();
                flat.extend_from_slice(&[8, 0]);
                flat.extend_from_slice(ip);
                frags.push(flat);
            }
            for p in &out[..out.len() - 1] {
                prop_assert_eq!(p.data().len() - l3 - hlen, per);
            }
            let views: Vec<&[u8]> = frags.iter().map(|f| f.as_slice()).collect();
            prop_assert_eq!(reassemble(&views), (f[l3 + hlen..].to_vec(), false));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn never_panics_on_ipv6_garbage(frames in proptest::collection::vec(
            braid_packet::strategy::any_frame6(), 1..8))
        {
            let mut r = router6();
            let (out, c) = run(&mut r, &frames);
            prop_assert!(out.len() as u64 + c.dropped_total() >= frames.len() as u64);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn never_panics_on_garbage(frames in proptest::collection::vec(
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..100),
                braid_packet::strategy::any_frame(),
            ], 1..8),
            flip in any::<(usize, u8)>())
        {
            // Also valid frames with one byte changed.
            let mut frames = frames;
            let mut f = udp([10, 1, 2, 3], (flip.1 % 3) + 1, 20);
            let at = flip.0 % f.len();
            f[at] ^= flip.1;
            frames.push(f);
            let mut r = router();
            let (out, c) = run(&mut r, &frames);
            prop_assert!(out.len() as u64 + c.dropped_total() >= frames.len() as u64);
        }
    }
}
