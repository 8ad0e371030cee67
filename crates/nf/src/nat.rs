//! `nat`: source NAT (masquerade) for TCP, UDP and ICMP echo.
//!
//! The NF sees one stream of packets and decides the direction per packet:
//! * source inside (`internal` CIDRs) and destination outside: **outbound**.
//!   The flow's mapping is looked up (or created, taking a free port from
//!   `ports` for that protocol); the source address becomes `external_ip`
//!   and the source port (ICMP: the echo identifier) the mapped port.
//!   With the default `mapping: endpoint-independent` an inside
//!   address:port keeps its external port for every remote host while it
//!   has a flow (RFC 4787 REQ-1, RFC 5382 REQ-1, like Linux masquerade);
//!   `mapping: endpoint-dependent` takes a new port per flow.
//! * destination `external_ip`: **inbound**. The packet must be the reply
//!   of a mapped flow (its 5-tuple is the flow's reply key); the destination
//!   address and port become the internal host's. Anything else is dropped
//!   (`no_mapping`): there is no port forwarding.
//! * anything else (inside to inside, outside to outside): passed unchanged,
//!   as are ARP and non-IPv4 frames.
//!
//! Inbound ICMP errors (unreachable, time exceeded, ...) that quote a
//! translated packet are translated back (RFC 5508): outer destination and
//! quoted source become the inside host's again.
//!
//! Checksums are updated incrementally (RFC 1624): the IPv4 header, the
//! TCP/UDP checksum over the pseudo-header and port (a zero UDP checksum
//! stays zero), the ICMP checksum over the identifier.
//!
//! Mappings idle out per protocol; TCP uses `tcp_transitory` until a reply
//! was seen and after FIN/RST. Expired mappings are removed when a packet
//! looks them up and by an incremental sweep in `tick`; their ports go back
//! to the pool when no flow uses them any more. Each protocol has its own
//! pool, and an external port belongs to one inside endpoint at a time
//! (the port alone identifies the inside host on the way back); filtering
//! stays address- and port-dependent (an inbound packet must be the reply
//! of a flow). No free port: `ports_exhausted`; `max_flows`
//! mappings: `overflow`. Outbound packets that cannot be keyed (ICMP other
//! than echo and errors, other protocols) are `unsupported`. A later IPv4
//! fragment gets the address its datagram's first fragment got
//! ([`crate::fragments`]); without one it is dropped (`fragment`).

use std::net::Ipv4Addr;

use braid_packet::envelope::{self, Class};
use braid_packet::{Batch, Packet};

use braid_packet::wire::checksum::{udp_on_wire, update16, update32};

use crate::conntrack::{
    apply_steps, flow_key, icmp_error_quote, parse_cidr, parse_port_range, prefix_mask, secs_to_ns,
    BatchLookup, Conn, ConnSnapshot, ConnTable, FlowKey, InsertError, Ipv4Headers, Lookup,
    QuotedPacket, StateClock, TcpState, TcpStep, TimeoutsNs, L4, PROTO_ICMP, PROTO_TCP, PROTO_UDP,
    SWEEP_BUDGET,
};
use crate::fragments::{FragTable, Fragment, DEFAULT_MAX_FRAGMENTS, FRAGMENT_TIMEOUT_NS};
use crate::params::{ConfigError, ParamDoc};
use crate::{
    Context, DropReason, Encoding, FlowScope, FlowStream, NetworkFunction, NfClass, NfSpec,
    NfState, PartitionKey, Placement, StateError, Statelet,
};

pub static SPEC: NfSpec = NfSpec {
    name: "nat",
    class: NfClass::Basic,
    placements: &[Placement::User],
    state: crate::StateKind::PerFlow(crate::FlowPartition::SymmetricFiveTuple),
    kernel: None,
    summary: "source NAT / masquerade for TCP, UDP and ICMP echo with per-protocol port pools",
    params: &[
        ParamDoc {
            name: "external_ip",
            kind: "IPv4 address",
            default: None,
            help: "the address inside hosts are translated to",
        },
        ParamDoc {
            name: "internal",
            kind: "list of CIDR",
            default: None,
            help: "the inside networks; their packets to elsewhere are translated",
        },
        ParamDoc {
            name: "ports",
            kind: "\"lo-hi\"",
            default: Some("\"1024-65535\""),
            help: "external ports handed out, one pool per protocol",
        },
        ParamDoc {
            name: "timeouts",
            kind: "{tcp_established, tcp_transitory, udp, icmp}: seconds",
            default: Some("{7440, 240, 300, 60}"),
            help: "idle timeouts of mappings",
        },
        ParamDoc {
            name: "max_flows",
            kind: "usize, >= 1",
            default: Some("262144"),
            help: "mapping table size; new flows beyond it are dropped (overflow)",
        },
        ParamDoc {
            name: "max_fragments",
            kind: "usize",
            default: Some("4096"),
            help: "fragmented datagrams followed at once (30 s each at most); beyond it first fragments are dropped (fragment)",
        },
        ParamDoc {
            name: "mapping",
            kind: "endpoint-independent|endpoint-dependent",
            default: Some("endpoint-independent"),
            help: "one external port per inside address:port whatever the remote (RFC 4787/5382 REQ-1), or one per flow",
        },
        ParamDoc {
            name: "port_secret",
            kind: "32 hexadecimal digits",
            default: Some("random"),
            help: "key of the hash that picks external ports (RFC 6056 §3.3.3); the same on every instance that may replay this one's packets (duplication-mode migration); keep it secret",
        },
    ],
    build: |p| Ok(Box::new(Nat::from_config(&crate::params::parse::<Config>(p)?)?)),
};

/// Idle timeouts in seconds.
#[derive(Clone, Copy, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsConfig {
    pub tcp_established: u64,
    pub tcp_transitory: u64,
    pub udp: u64,
    pub icmp: u64,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        // RFC 5382 (TCP established >= 2 h 4 min, transitory >= 4 min),
        // RFC 4787 (UDP >= 2 min; 5 min recommended).
        TimeoutsConfig { tcp_established: 7440, tcp_transitory: 240, udp: 300, icmp: 60 }
    }
}

fn default_ports() -> String {
    "1024-65535".into()
}

fn default_max_flows() -> usize {
    1 << 18
}

/// How external ports are chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mapping {
    /// One external port per inside address, port and protocol, reused
    /// for every remote host (RFC 4787 REQ-1, RFC 5382 REQ-1; what Linux
    /// masquerade does). STUN/ICE rely on it.
    #[default]
    EndpointIndependent,
    /// A new external port for every flow (5-tuple).
    EndpointDependent,
}

/// NAT parameters.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub external_ip: Ipv4Addr,
    pub internal: Vec<String>,
    #[serde(default = "default_ports")]
    pub ports: String,
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    #[serde(default = "default_max_flows")]
    pub max_flows: usize,
    #[serde(default)]
    pub mapping: Mapping,
    #[serde(default = "default_max_fragments")]
    pub max_fragments: usize,
    /// 32 hexadecimal digits; random when absent.
    #[serde(default)]
    pub port_secret: Option<String>,
}

fn default_max_fragments() -> usize {
    DEFAULT_MAX_FRAGMENTS
}

/// An inside endpoint: protocol, address, port (ICMP: echo identifier).
type Endpoint = (u8, u32, u16);

/// The external ports in use: one free pool per protocol, the number of
/// flows using each taken port (it returns to its pool with the last one)
/// and, with endpoint-independent mapping, the port of each inside
/// endpoint.
#[derive(Clone, Debug)]
struct Ports {
    pools: [PortPool; 3],
    mapping: Mapping,
    /// The key of the port choice ([`PortPool`]).
    secret: [u64; 2],
    users: std::collections::HashMap<(usize, u16), u32>,
    endpoints: std::collections::HashMap<Endpoint, u16>,
}

impl Ports {
    /// Pools over `lo..=hi` without the ports of `conns` (checked by
    /// `Nat::validate`: a port is shared only by flows of one endpoint).
    fn new(lo: u16, hi: u16, mapping: Mapping, secret: [u64; 2], conns: &[Conn]) -> Ports {
        let mut used: [Vec<u16>; 3] = Default::default();
        let mut users = std::collections::HashMap::new();
        let mut endpoints = std::collections::HashMap::new();
        for c in conns {
            if let Some(i) = pool_index(c.orig.proto) {
                let port = c.reply.dst_port;
                let n = users.entry((i, port)).or_insert(0);
                if *n == 0 {
                    used[i].push(port);
                }
                *n += 1;
                if mapping == Mapping::EndpointIndependent {
                    endpoints.entry(endpoint(&c.orig)).or_insert(port);
                }
            }
        }
        Ports { pools: used.map(|u| PortPool::new(lo, hi, &u)), mapping, secret, users, endpoints }
    }

    /// The external port for a new flow `key`: its endpoint's port if it
    /// has one (endpoint-independent), else a free one.
    fn take(&mut self, key: &FlowKey) -> Result<u16, DropReason> {
        let pool = pool_index(key.proto).ok_or(DropReason::Unsupported)?;
        let ep = endpoint(key);
        if self.mapping == Mapping::EndpointIndependent {
            if let Some(&port) = self.endpoints.get(&ep) {
                *self.users.entry((pool, port)).or_insert(0) += 1;
                return Ok(port);
            }
        }
        // Endpoint-independent: the inside endpoint alone picks the port;
        // endpoint-dependent: the whole flow.
        let (a, b) = match self.mapping {
            Mapping::EndpointIndependent => {
                (u64::from(key.src), u64::from(key.proto) << 16 | u64::from(key.src_port))
            }
            Mapping::EndpointDependent => (
                u64::from(key.src) << 32 | u64::from(key.dst),
                u64::from(key.proto) << 32
                    | u64::from(key.src_port) << 16
                    | u64::from(key.dst_port),
            ),
        };
        let hash = port_hash(self.secret, a, b);
        let port = self.pools[pool].take(hash).ok_or(DropReason::PortsExhausted)?;
        self.users.insert((pool, port), 1);
        if self.mapping == Mapping::EndpointIndependent {
            self.endpoints.insert(ep, port);
        }
        Ok(port)
    }

    /// A flow with key `orig` and external port `port` is gone.
    fn release(&mut self, orig: &FlowKey, port: u16) {
        let Some(pool) = pool_index(orig.proto) else { return };
        match self.users.get_mut(&(pool, port)) {
            Some(n) if *n > 1 => {
                *n -= 1;
                return;
            }
            Some(_) => {
                self.users.remove(&(pool, port));
            }
            None => return,
        }
        let ep = endpoint(orig);
        if self.endpoints.get(&ep) == Some(&port) {
            self.endpoints.remove(&ep);
        }
        self.pools[pool].give_back(port);
    }
}

/// The inside endpoint of an outbound flow key.
#[inline]
fn endpoint(k: &FlowKey) -> Endpoint {
    (k.proto, k.src, k.src_port)
}

/// Free external ports of one protocol, chosen by a keyed hash (RFC 6056
/// §3.3.3, "simple hash-based"): a new flow gets the first free port at
/// or after `lo + F(secret, flow) mod n`, wrapping. Without the secret an
/// observer of one mapping cannot predict the next port, nor can an
/// off-path attacker guess a flow's port. With it the choice is a function
/// of the flow and the ports in use: two instances with the same secret
/// and the same mappings pick the same port for the same new flow (what
/// the duplication baseline of live migration replays; `port_secret`).
#[derive(Clone, Debug)]
struct PortPool {
    lo: u16,
    /// Ports in the pool (`lo..=hi`).
    n: u32,
    /// Bit `i` set: port `lo + i` is in use (and the bits past `n` in the
    /// last word, so a scan never stops there).
    taken: Vec<u64>,
    free: u32,
}

impl PortPool {
    /// All of `lo..=hi` free, except `used`.
    fn new(lo: u16, hi: u16, used: &[u16]) -> PortPool {
        let n = u32::from(hi) - u32::from(lo) + 1;
        let words = n.div_ceil(64) as usize;
        let mut pool = PortPool { lo, n, taken: vec![0; words], free: n };
        if n % 64 != 0 {
            pool.taken[words - 1] = !0u64 << (n % 64);
        }
        for &p in used {
            if (lo..=hi).contains(&p) && !pool.is_taken(p) {
                pool.flip(p);
                pool.free -= 1;
            }
        }
        pool
    }

    fn is_taken(&self, port: u16) -> bool {
        let i = u32::from(port - self.lo);
        self.taken[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    fn flip(&mut self, port: u16) {
        let i = u32::from(port - self.lo);
        self.taken[(i / 64) as usize] ^= 1 << (i % 64);
    }

    /// The first free port at or after the flow's hash position.
    fn take(&mut self, hash: u64) -> Option<u16> {
        if self.free == 0 {
            return None;
        }
        let start = (hash % u64::from(self.n)) as usize;
        let words = self.taken.len();
        let (w0, b0) = (start / 64, start % 64);
        // The start word from the start bit, every other word, then the
        // start word's bits below the start bit (a wrap-around).
        for k in 0..=words {
            let w = (w0 + k) % words;
            let mut open = !self.taken[w];
            if k == 0 {
                open &= !0u64 << b0;
            } else if k == words {
                open &= (1u64 << b0).wrapping_sub(1);
            }
            if open != 0 {
                let port = self.lo + (w * 64 + open.trailing_zeros() as usize) as u16;
                self.flip(port);
                self.free -= 1;
                return Some(port);
            }
        }
        None
    }

    fn give_back(&mut self, port: u16) {
        if (self.lo..).contains(&port) && u32::from(port - self.lo) < self.n && self.is_taken(port)
        {
            self.flip(port);
            self.free += 1;
        }
    }
}

/// The secret of the port choice: 128 bits, from `port_secret` (32
/// hexadecimal digits) or from the OS random source.
fn port_secret(configured: Option<&str>) -> Result<[u64; 2], ConfigError> {
    let Some(hex) = configured else {
        use std::hash::BuildHasher;
        // RandomState is keyed from the OS random source (a secret without
        // another dependency); two of them are independent.
        let r = || std::collections::hash_map::RandomState::new().hash_one(0x006e_6174_u64);
        return Ok([r(), r()]);
    };
    let bad = || ConfigError::new("port_secret", "must be 32 hexadecimal digits (128 bits)");
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let word = |s: &str| u64::from_str_radix(s, 16).map_err(|_| bad());
    Ok([word(&hex[..16])?, word(&hex[16..])?])
}

/// `F(secret, flow)` of the port choice: two rounds of a 64-bit mixer
/// (splitmix64's finaliser) keyed by the secret. Not a cryptographic MAC:
/// what it protects is the guessability of ports, as RFC 6056 asks.
fn port_hash(secret: [u64; 2], a: u64, b: u64) -> u64 {
    fn mix(mut z: u64) -> u64 {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    mix(mix(secret[0] ^ a) ^ secret[1] ^ b)
}

/// What batch step 1 decided for one packet.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// Not NAT's business: passes unchanged.
    Pass,
    Drop(DropReason),
    /// Look the flow up (or create it, if outbound) and rewrite.
    Translate {
        info: Ipv4Headers,
        key: FlowKey,
        hash: u64,
        outbound: bool,
        hint: Option<u32>,
        /// A first fragment: recorded for the later ones.
        frag: Option<Fragment>,
    },
    /// A later fragment: the address its first fragment got.
    LaterFragment {
        info: Ipv4Headers,
        frag: Fragment,
        outbound: bool,
    },
    /// An ICMP error about a mapped flow. Inbound: rewrite the outer
    /// destination and the quoted packet's source; outbound: the outer
    /// source and the quoted packet's destination.
    IcmpError {
        info: Ipv4Headers,
        quote: QuotedPacket,
        outbound: bool,
    },
}

/// The NAT.
pub struct Nat {
    external_ip: u32,
    /// Inside networks as (network, mask).
    internal: Vec<(u32, u32)>,
    ports: (u16, u16),
    timeouts: TimeoutsNs,
    max_flows: usize,
    table: ConnTable,
    /// External ports: free pools for TCP, UDP, ICMP and the mapped
    /// endpoints.
    pools: Ports,
    /// `port_secret` was configured: another instance with it replays
    /// this one's port choices ([`FlowStream::replays_deterministically`]).
    replays: bool,
    clock: StateClock,
    /// Datagrams whose first fragment was translated: the address their
    /// later fragments get.
    fragments: FragTable<u32>,
    /// Per-batch scratch of step 1 (kept to reuse the allocation).
    steps: Vec<Step>,
}

impl std::fmt::Debug for Nat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nat")
            .field("external_ip", &Ipv4Addr::from(self.external_ip))
            .field("mappings", &self.table.len())
            .finish()
    }
}

#[inline]
fn pool_index(proto: u8) -> Option<usize> {
    match proto {
        PROTO_TCP => Some(0),
        PROTO_UDP => Some(1),
        PROTO_ICMP => Some(2),
        _ => None,
    }
}

#[inline]
fn put_be16(d: &mut [u8], at: usize, v: u16) {
    d[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

#[inline]
fn get_be16(d: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([d[at], d[at + 1]])
}

#[inline]
fn get_be32(d: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]])
}

/// Write a 16-bit word covered by the ICMP checksum at `icmp_ck`.
fn set16_in_icmp(d: &mut [u8], at: usize, new: u16, icmp_ck: usize) {
    let old = get_be16(d, at);
    put_be16(d, at, new);
    put_be16(d, icmp_ck, update16(get_be16(d, icmp_ck), old, new));
}

/// Write a 32-bit word covered by the ICMP checksum at `icmp_ck`. Quoted
/// headers start at an even offset from the ICMP header, so words align.
fn set32_in_icmp(d: &mut [u8], at: usize, new: u32, icmp_ck: usize) {
    let old = get_be32(d, at);
    d[at..at + 4].copy_from_slice(&new.to_be_bytes());
    put_be16(d, icmp_ck, update32(get_be16(d, icmp_ck), old, new));
}

/// Which end of the packet to rewrite.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Src,
    Dst,
}

/// Rewrite the address and port (ICMP: identifier) of one end of an IPv4
/// packet, updating the checksums incrementally. `info` comes from
/// the envelope of the same bytes, so every offset is in bounds.
#[inline]
fn rewrite(d: &mut [u8], info: &Ipv4Headers, end: End, ip: u32, port: u16) {
    let l3 = info.l3;
    let l4 = info.l4_offset();
    let ip_at = l3 + if end == End::Src { 12 } else { 16 };
    let old_ip = u32::from_be_bytes([d[ip_at], d[ip_at + 1], d[ip_at + 2], d[ip_at + 3]]);
    d[ip_at..ip_at + 4].copy_from_slice(&ip.to_be_bytes());
    put_be16(d, l3 + 10, update32(get_be16(d, l3 + 10), old_ip, ip));
    let port_at = l4 + if end == End::Src { 0 } else { 2 };
    match info.l4 {
        L4::Tcp { .. } => {
            let old_port = get_be16(d, port_at);
            put_be16(d, port_at, port);
            let ck = update32(get_be16(d, l4 + 16), old_ip, ip);
            put_be16(d, l4 + 16, update16(ck, old_port, port));
        }
        L4::Udp { .. } => {
            let old_port = get_be16(d, port_at);
            put_be16(d, port_at, port);
            let ck = get_be16(d, l4 + 6);
            // Zero means "no checksum" and stays so; a computed zero is
            // sent as 0xffff (RFC 768).
            if ck != 0 {
                let ck = update16(update32(ck, old_ip, ip), old_port, port);
                put_be16(d, l4 + 6, udp_on_wire(ck));
            }
        }
        L4::IcmpEcho { .. } => {
            // The ICMP checksum has no pseudo-header: only the identifier.
            let old = get_be16(d, l4 + 4);
            put_be16(d, l4 + 4, port);
            put_be16(d, l4 + 2, update16(get_be16(d, l4 + 2), old, port));
        }
        L4::IcmpOther { .. } | L4::Fragment | L4::Other => {}
    }
}

impl BatchLookup for Step {
    #[inline]
    fn lookup_parts(&mut self) -> Option<(&FlowKey, u64, &mut Option<u32>)> {
        match self {
            Step::Translate { key, hash, hint, .. } => Some((key, *hash, hint)),
            _ => None,
        }
    }
}

impl Nat {
    pub fn from_config(cfg: &Config) -> Result<Nat, ConfigError> {
        let external_ip = u32::from(cfg.external_ip);
        if cfg.internal.is_empty() {
            return Err(ConfigError::new("internal", "list at least one inside network"));
        }
        let mut internal = Vec::new();
        for (i, c) in cfg.internal.iter().enumerate() {
            let (net, len) =
                parse_cidr(c).map_err(|e| ConfigError::new(format!("internal[{i}]"), e))?;
            let mask = prefix_mask(len);
            if external_ip & mask == net {
                return Err(ConfigError::new(
                    format!("internal[{i}]"),
                    format!("`{c}` contains external_ip {}", cfg.external_ip),
                ));
            }
            internal.push((net, mask));
        }
        let ports = parse_port_range(&cfg.ports).map_err(|e| ConfigError::new("ports", e))?;
        let secret = port_secret(cfg.port_secret.as_deref())?;
        if ports.0 == 0 {
            return Err(ConfigError::new("ports", "port 0 cannot be handed out; start at 1"));
        }
        let t = cfg.timeouts;
        for (name, v) in [
            ("tcp_established", t.tcp_established),
            ("tcp_transitory", t.tcp_transitory),
            ("udp", t.udp),
            ("icmp", t.icmp),
        ] {
            if v == 0 {
                return Err(ConfigError::new(
                    format!("timeouts.{name}"),
                    "must be at least 1 second",
                ));
            }
        }
        if cfg.max_flows == 0 {
            return Err(ConfigError::new("max_flows", "must be at least 1"));
        }
        let timeouts = TimeoutsNs {
            tcp_established: secs_to_ns(t.tcp_established),
            tcp_transitory: secs_to_ns(t.tcp_transitory),
            udp: secs_to_ns(t.udp),
            icmp: secs_to_ns(t.icmp),
            // Only TCP, UDP and ICMP are ever mapped.
            other: secs_to_ns(t.udp),
        };
        Ok(Nat {
            external_ip,
            internal,
            ports,
            timeouts,
            max_flows: cfg.max_flows,
            table: ConnTable::new(cfg.max_flows),
            pools: Ports::new(ports.0, ports.1, cfg.mapping, secret, &[]),
            replays: cfg.port_secret.is_some(),
            clock: StateClock::default(),
            fragments: FragTable::new(cfg.max_fragments, FRAGMENT_TIMEOUT_NS),
            steps: Vec::new(),
        })
    }

    /// Number of live mappings.
    pub fn mappings(&self) -> usize {
        self.table.len()
    }

    #[inline]
    fn is_internal(&self, a: u32) -> bool {
        self.internal.iter().any(|&(net, mask)| a & mask == net)
    }

    /// Give an expired mapping's port back.
    fn release(pools: &mut Ports, c: &Conn) {
        pools.release(&c.orig, c.reply.dst_port);
    }

    /// Batch step 1: parse a packet and decide what it needs.
    #[inline]
    fn classify(&self, frame: &[u8]) -> Step {
        // The envelope policy of `nat` (docs/nfs.md): IPv4, whole or
        // fragment, is translated; what is not IPv4 passes untouched;
        // broken headers are dropped.
        let parsed = envelope::parse(frame);
        let info = match parsed.class {
            Class::Ok | Class::Fragment { .. } => parsed.ip,
            Class::Unsupported { .. } => return Step::Pass,
            Class::Truncated { .. } | Class::Malformed { .. } => {
                return Step::Drop(DropReason::Malformed)
            }
        };
        let outbound = self.is_internal(info.src) && !self.is_internal(info.dst);
        if !outbound && info.dst != self.external_ip {
            return Step::Pass;
        }
        let frag = Fragment::of(frame, parsed.class, &parsed.ip);
        if let Some(frag) = frag.filter(|f| !f.first) {
            return Step::LaterFragment { info, frag, outbound };
        }
        if let Some(quote) = icmp_error_quote(frame, &info) {
            return Step::IcmpError { info, quote, outbound };
        }
        match flow_key(&info) {
            Some(key) => {
                let hash = self.table.hash(&key);
                Step::Translate { info, key, hash, outbound, hint: None, frag }
            }
            None => {
                Step::Drop(if outbound { DropReason::Unsupported } else { DropReason::NoMapping })
            }
        }
    }

    /// Batch step 3: translate one packet in place, or say why it is
    /// dropped.
    #[inline]
    fn apply(&mut self, p: &mut Packet, step: Step, now: u64) -> Result<(), DropReason> {
        let (info, key, hash, outbound, hint, frag) = match step {
            Step::Pass => return Ok(()),
            Step::Drop(r) => return Err(r),
            Step::Translate { info, key, hash, outbound, hint, frag } => {
                (info, key, hash, outbound, hint, frag)
            }
            Step::LaterFragment { info, frag, outbound } => {
                let ip = self.fragments.later(&frag, now).ok_or(DropReason::Fragment)?;
                let end = if outbound { End::Src } else { End::Dst };
                rewrite(p.data_mut(), &info, end, ip, 0);
                return Ok(());
            }
            Step::IcmpError { info, quote, outbound } => {
                return self.apply_icmp_error(p, info, quote, outbound, now)
            }
        };
        let tcp_flags = info.tcp_flags();
        let (slot, reply) = match self.table.lookup_hinted(&key, hash, hint, now, &self.timeouts) {
            Lookup::Hit { slot, reply } => (slot, reply),
            miss => {
                if let Lookup::Expired(c) = &miss {
                    Self::release(&mut self.pools, c);
                }
                if !outbound {
                    return Err(DropReason::NoMapping);
                }
                (self.map_new(key, now)?, false)
            }
        };
        let Some(conn) = self.table.get_mut(slot) else { return Err(DropReason::NoMapping) };
        if key.proto == PROTO_TCP {
            // Linux's TCP states give the timeouts; a segment they call
            // invalid is translated all the same (docs/nfs.md).
            match conn.track_tcp(now, reply, tcp_flags) {
                TcpStep::To(_) | TcpStep::Ignore => {}
                TcpStep::Reopen => {
                    conn.touch(now, reply, tcp_flags);
                    conn.set_tcp_state(TcpState::SynSent);
                }
                TcpStep::Invalid => {
                    conn.touch(now, reply, tcp_flags);
                    if conn.tcp_state() == TcpState::None {
                        conn.set_tcp_state(TcpState::SynSent);
                    }
                }
            }
        } else {
            conn.touch(now, reply, tcp_flags);
        }
        let (end, ip, port) = if reply {
            (End::Dst, conn.orig.src, conn.orig.src_port)
        } else {
            (End::Src, conn.reply.dst, conn.reply.dst_port)
        };
        rewrite(p.data_mut(), &info, end, ip, port);
        if let Some(f) = frag {
            self.fragments.first(&f, ip, now).map_err(|_| DropReason::Fragment)?;
        }
        Ok(())
    }

    /// Translate an ICMP error about a mapped flow (RFC 5508 REQ-5, as
    /// Linux does). Inbound, the quote is one of our translated packets:
    /// its source `external_ip`:port becomes the inside host's address
    /// and port again, and so does the outer destination. Outbound (an
    /// inside host or router answering a translated inbound packet), the
    /// quote's destination and the outer source become `external_ip` and
    /// the external port. The ICMP checksum follows every quoted byte
    /// changed; the quote's IPv4 checksum and its transport checksum (UDP
    /// unless zero, TCP when the quote reaches it, ICMP echo) are updated
    /// so the quote reads as the packet the other side sent or saw.
    fn apply_icmp_error(
        &mut self,
        p: &mut Packet,
        info: Ipv4Headers,
        quote: QuotedPacket,
        outbound: bool,
        now: u64,
    ) -> Result<(), DropReason> {
        let (slot, reply) = match self.table.lookup(&quote.key.reversed(), now, &self.timeouts) {
            Lookup::Hit { slot, reply } => (slot, reply),
            Lookup::Expired(c) => {
                Self::release(&mut self.pools, &c);
                return Err(DropReason::NoMapping);
            }
            Lookup::Miss => return Err(DropReason::NoMapping),
        };
        let Some(conn) = self.table.get_mut(slot) else { return Err(DropReason::NoMapping) };
        // Inbound the quote is an outbound packet (its reverse is the
        // reply key); outbound it is an inbound one (its reverse is the
        // original key).
        if reply == outbound {
            return Err(DropReason::NoMapping);
        }
        let (ip, port) = if outbound {
            (conn.reply.dst, conn.reply.dst_port)
        } else {
            (conn.orig.src, conn.orig.src_port)
        };
        let d = p.data_mut();
        let l3 = info.l3;
        let end = l3 + info.total_len;
        let icmp_ck = info.l4_offset() + 2;
        // Outer address: the ICMP checksum does not cover it.
        let outer_at = l3 + if outbound { 12 } else { 16 };
        let outer = get_be32(d, outer_at);
        d[outer_at..outer_at + 4].copy_from_slice(&ip.to_be_bytes());
        put_be16(d, l3 + 10, update32(get_be16(d, l3 + 10), outer, ip));
        // Quoted address, and the quoted header's checksum.
        let q = quote.l3;
        let q_ip_at = q + if outbound { 16 } else { 12 };
        let old_ip = get_be32(d, q_ip_at);
        set32_in_icmp(d, q_ip_at, ip, icmp_ck);
        let qck = update32(get_be16(d, q + 10), old_ip, ip);
        set16_in_icmp(d, q + 10, qck, icmp_ck);
        let l4 = q + quote.ihl;
        match quote.key.proto {
            PROTO_ICMP => {
                let old = get_be16(d, l4 + 4);
                set16_in_icmp(d, l4 + 4, port, icmp_ck);
                let ck = update16(get_be16(d, l4 + 2), old, port);
                set16_in_icmp(d, l4 + 2, ck, icmp_ck);
            }
            proto => {
                let port_at = l4 + if outbound { 2 } else { 0 };
                let old = get_be16(d, port_at);
                set16_in_icmp(d, port_at, port, icmp_ck);
                // The transport checksum covers the pseudo-header address
                // and the port; a quote may end before it.
                let ck_at = match proto {
                    PROTO_UDP if get_be16(d, l4 + 6) != 0 => Some(l4 + 6),
                    PROTO_TCP if l4 + 18 <= end => Some(l4 + 16),
                    _ => None,
                };
                if let Some(at) = ck_at {
                    let mut ck = update16(update32(get_be16(d, at), old_ip, ip), old, port);
                    if proto == PROTO_UDP {
                        ck = udp_on_wire(ck);
                    }
                    set16_in_icmp(d, at, ck, icmp_ck);
                }
            }
        }
        Ok(())
    }

    /// Create the mapping of a new outbound flow.
    fn map_new(&mut self, key: FlowKey, now: u64) -> Result<u32, DropReason> {
        let port = self.pools.take(&key)?;
        let (src_port, dst_port) =
            if key.proto == PROTO_ICMP { (port, port) } else { (key.dst_port, port) };
        let reply =
            FlowKey { src: key.dst, dst: self.external_ip, src_port, dst_port, proto: key.proto };
        match self.table.insert(key, reply, now) {
            Ok(slot) => {
                if let (PROTO_TCP, Some(c)) = (key.proto, self.table.get_mut(slot)) {
                    c.set_tcp_state(TcpState::None);
                }
                Ok(slot)
            }
            Err(e) => {
                self.pools.release(&key, port);
                Err(match e {
                    InsertError::Full => DropReason::Overflow,
                    InsertError::KeyInUse => DropReason::Other,
                })
            }
        }
    }

    /// Check one mapping against this NAT's configuration.
    fn fits(&self, c: &Conn) -> Result<(), String> {
        if pool_index(c.orig.proto).is_none()
            || !self.is_internal(c.orig.src)
            || c.reply.dst != self.external_ip
            || c.reply.proto != c.orig.proto
            || !(self.ports.0..=self.ports.1).contains(&c.reply.dst_port)
        {
            return Err(format!(
                "({:?}) does not fit this NAT's external_ip, internal networks or port range",
                c.orig
            ));
        }
        Ok(())
    }

    /// Check a snapshot's mappings against this NAT's configuration.
    fn validate(&self, conns: &[Conn]) -> Result<(), String> {
        let mut owner = std::collections::HashMap::new();
        for (i, c) in conns.iter().enumerate() {
            let pool = pool_index(c.orig.proto)
                .ok_or_else(|| format!("mapping {i}: protocol {} is not NATed", c.orig.proto))?;
            let port = c.reply.dst_port;
            self.fits(c).map_err(|e| format!("mapping {i} {e}"))?;
            // A port is shared only by flows of one inside endpoint
            // (endpoint-independent mapping).
            let ep = endpoint(&c.orig);
            match owner.entry((pool, port)) {
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(ep);
                }
                std::collections::hash_map::Entry::Occupied(e) if *e.get() != ep => {
                    return Err(format!(
                        "mapping {i}: external port {port} is mapped to two inside endpoints"
                    ));
                }
                std::collections::hash_map::Entry::Occupied(_) => {}
            }
        }
        Ok(())
    }
}

impl NetworkFunction for Nat {
    fn spec(&self) -> &'static NfSpec {
        &SPEC
    }

    fn keeps_lengths(&self) -> bool {
        true
    }

    fn process(&mut self, batch: &mut Batch, cx: &mut Context<'_>) {
        let now = self.clock.now(cx.now_ns);
        // Passes so the table's cache misses overlap across the batch (see
        // `Prefetch`): parse; touch the index buckets; probe; touch the
        // mappings; then translate.
        let mut steps = std::mem::take(&mut self.steps);
        steps.clear();
        steps.extend(batch.iter().map(|p| self.classify(p.data())));
        self.table.prefetch_batch(&mut steps);
        apply_steps(batch, &steps, &Step::Pass, cx, |p, step| self.apply(p, *step, now));
        self.steps = steps;
    }

    fn tick(&mut self, _out: &mut Batch, cx: &mut Context<'_>) {
        let now = self.clock.now(cx.now_ns);
        self.fragments.expire(now);
        let pools = &mut self.pools;
        self.table.sweep(now, &self.timeouts, SWEEP_BUDGET, |c| Self::release(pools, &c));
    }

    fn wants_tick(&self) -> bool {
        !self.table.is_empty() || !self.fragments.is_empty()
    }

    fn export_scoped(&self, scope: &FlowScope, encoding: Encoding) -> Result<NfState, StateError> {
        Ok(ConnSnapshot::export(SPEC.name, &self.clock, Some(&self.table), None, scope, encoding))
    }

    fn import_state(&mut self, state: &NfState) -> Result<(), StateError> {
        let s = ConnSnapshot::decode(state, SPEC.name)?;
        ipv4_only(&s)?;
        self.validate(&s.conns).map_err(StateError::Corrupt)?;
        self.install(&s.conns).map_err(StateError::Corrupt)?;
        self.clock.resume_from(s.clock);
        Ok(())
    }

    fn import_merge(&mut self, state: &NfState) -> Result<(), StateError> {
        let s = ConnSnapshot::decode(state, SPEC.name)?;
        ipv4_only(&s)?;
        // The snapshot must fit this NAT on its own (addresses, ports) ...
        self.validate(&s.conns).map_err(StateError::Corrupt)?;
        let merged = s.merge_into(Some(&self.table), None, &self.clock);
        if merged.conns.len() > self.max_flows {
            return Err(StateError::Capacity { total: merged.conns.len(), max: self.max_flows });
        }
        // ... and together with what is held (an external port or a key
        // held by another mapping is a conflict).
        self.validate(&merged.conns).map_err(StateError::Conflict)?;
        self.install(&merged.conns).map_err(StateError::Conflict)?;
        if let Some(clock) = merged.adopt_clock {
            self.clock.resume_from(clock);
        }
        Ok(())
    }

    fn flow_stream(&mut self) -> Option<&mut dyn FlowStream> {
        Some(self)
    }
}

/// Streaming the mappings during a live migration (see
/// [`crate::statelet`]). The port pools are not kept up to date while
/// statelets are installed (a destination processes nothing before the
/// last one); [`FlowStream::finish_install`] rebuilds them from the
/// mappings and checks no external port is mapped twice.
impl FlowStream for Nat {
    fn record_changes(&mut self, on: bool) {
        self.table.record_changes(on);
    }

    fn take_changes(&mut self, out: &mut Vec<PartitionKey>) {
        self.table.take_changes(out);
    }

    fn changes_waiting(&self) -> usize {
        self.table.changes_waiting()
    }

    fn export_from(&self, cursor: &mut usize, max: usize) -> Option<Statelet> {
        let conns = self.table.export_from(cursor, max)?;
        let keys = conns.iter().map(Conn::partition_key).collect();
        Some(ConnSnapshot::statelet(SPEC.name, &self.clock, keys, conns, Vec::new()))
    }

    fn export_flows(&self, keys: &[PartitionKey]) -> Statelet {
        let conns = self.table.conns_of(keys);
        ConnSnapshot::statelet(SPEC.name, &self.clock, keys.to_vec(), conns, Vec::new())
    }

    fn install(&mut self, statelet: &Statelet) -> Result<(), StateError> {
        let mut table = std::mem::replace(&mut self.table, ConnTable::new(0));
        let mut clock = self.clock;
        let fits = |c: &Conn| self.fits(c);
        let r = ConnSnapshot::install_statelet(
            SPEC.name,
            &mut table,
            None,
            &mut clock,
            statelet,
            fits,
            |_| Err("NAT translates IPv4 only".into()),
        );
        self.table = table;
        self.clock = clock;
        r.map(|_| ())
    }

    fn finish_install(&mut self) -> Result<(), StateError> {
        self.clock.end_stream();
        let conns: Vec<Conn> = self.table.iter().copied().collect();
        self.validate(&conns).map_err(StateError::Conflict)?;
        let (lo, hi) = self.ports;
        self.pools = Ports::new(lo, hi, self.pools.mapping, self.pools.secret, &conns);
        Ok(())
    }

    fn held_keys(&self, out: &mut Vec<PartitionKey>) {
        out.extend(self.table.iter().map(Conn::partition_key));
    }

    fn replays_deterministically(&self) -> bool {
        self.replays
    }

    fn len(&self) -> usize {
        self.table.len()
    }
}

/// NAT is IPv4 only: a snapshot with IPv6 connections (a firewall's,
/// relabelled) is refused.
fn ipv4_only(s: &ConnSnapshot) -> Result<(), StateError> {
    match s.conns6.len() {
        0 => Ok(()),
        n => Err(StateError::Corrupt(format!("{n} IPv6 connections; NAT translates IPv4 only"))),
    }
}

impl Nat {
    /// Hold exactly `conns` (checked by [`Nat::validate`]): a new table and
    /// port pools without their ports. Nothing changes on error.
    fn install(&mut self, conns: &[Conn]) -> Result<(), String> {
        let table = ConnTable::from_conns(conns, self.max_flows)?;
        let (lo, hi) = self.ports;
        self.pools = Ports::new(lo, hi, self.pools.mapping, self.pools.secret, conns);
        self.table = table;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::{ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, TCP_ACK, TCP_SYN};
    use crate::{Counters, Params};
    use braid_packet::wire::checksum::checksum;
    use proptest::prelude::*;

    fn nat(extra: &str) -> Nat {
        let y =
            format!("external_ip: 203.0.113.1\ninternal: [10.0.0.0/8, 192.168.0.0/16]\n{extra}");
        let p: Params = serde_yaml_ng::from_str(&y).unwrap();
        Nat::from_config(&crate::params::parse(&p).unwrap()).unwrap()
    }

    /// An IPv4 frame with correct IP and L4 checksums.
    fn frame(src: u32, dst: u32, proto: u8, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let l4_len = if proto == PROTO_TCP { 20 } else { 8 } + payload.len();
        let mut f = vec![0u8; 14 + 20 + l4_len];
        f[12..14].copy_from_slice(&[8, 0]);
        let ip = &mut f[14..];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((20 + l4_len) as u16).to_be_bytes());
        ip[8] = 64;
        ip[9] = proto;
        ip[12..16].copy_from_slice(&src.to_be_bytes());
        ip[16..20].copy_from_slice(&dst.to_be_bytes());
        let ck = checksum(&ip[..20]);
        ip[10..12].copy_from_slice(&ck.to_be_bytes());
        let l4 = &mut ip[20..];
        let hl = l4_len - payload.len();
        l4[hl..].copy_from_slice(payload);
        match proto {
            PROTO_ICMP => {
                l4[0] = ICMP_ECHO_REQUEST;
                l4[4..6].copy_from_slice(&sport.to_be_bytes());
                l4[6..8].copy_from_slice(&dport.to_be_bytes());
            }
            _ => {
                l4[0..2].copy_from_slice(&sport.to_be_bytes());
                l4[2..4].copy_from_slice(&dport.to_be_bytes());
                if proto == PROTO_TCP {
                    l4[12] = 5 << 4;
                    l4[13] = TCP_SYN;
                } else {
                    l4[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
                }
            }
        }
        fill_l4_checksum(&mut f);
        f
    }

    fn l4_sum(f: &[u8]) -> u16 {
        let ip = &f[14..];
        let l4 = &ip[20..];
        if ip[9] == PROTO_ICMP {
            return checksum(l4);
        }
        let mut pseudo = Vec::from(&ip[12..20]);
        pseudo.extend_from_slice(&[0, ip[9]]);
        pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        pseudo.extend_from_slice(l4);
        checksum(&pseudo)
    }

    fn ck_at(f: &[u8]) -> usize {
        14 + 20
            + match f[14 + 9] {
                PROTO_TCP => 16,
                PROTO_UDP => 6,
                _ => 2,
            }
    }

    fn fill_l4_checksum(f: &mut [u8]) {
        let at = ck_at(f);
        f[at..at + 2].copy_from_slice(&[0, 0]);
        let mut ck = l4_sum(f);
        if f[14 + 9] == PROTO_UDP {
            // A computed 0 goes out as 0xffff: a UDP 0 means "none", which
            // the NAT leaves alone and `checksums_ok` would reject.
            ck = udp_on_wire(ck);
        }
        f[at..at + 2].copy_from_slice(&ck.to_be_bytes());
    }

    fn checksums_ok(f: &[u8]) -> bool {
        checksum(&f[14..34]) == 0 && l4_sum(f) == 0
    }

    /// (src, dst, sport, dport) of an IPv4 frame; ICMP: ident as both ports.
    fn tuple(f: &[u8]) -> (u32, u32, u16, u16) {
        let p = envelope::parse(f);
        let k = flow_key(p.ipv4().expect("IPv4")).unwrap();
        (k.src, k.dst, k.src_port, k.dst_port)
    }

    /// The reply to `f` as the remote end would send it.
    fn reply_to(f: &[u8]) -> Vec<u8> {
        let (s, d, sp, dp) = tuple(f);
        let proto = f[14 + 9];
        let mut r = frame(d, s, proto, dp, sp, b"pong");
        if proto == PROTO_ICMP {
            r[34] = ICMP_ECHO_REPLY;
            fill_l4_checksum(&mut r);
        } else if proto == PROTO_TCP {
            r[14 + 20 + 13] = TCP_SYN | TCP_ACK;
            fill_l4_checksum(&mut r);
        }
        r
    }

    fn run(nf: &mut Nat, now: u64, frames: &[Vec<u8>]) -> (Vec<Vec<u8>>, Counters) {
        let mut b: Batch = frames.iter().map(|f| Packet::from_bytes(f)).collect();
        let mut c = Counters::default();
        nf.process(&mut b, &mut Context::new(now, &mut c));
        (b.iter().map(|p| p.data().to_vec()).collect(), c)
    }

    const EXT: u32 = 0xcb00_7101;
    const H1: u32 = 0x0a00_0001;
    const REMOTE: u32 = 0x0808_0808;

    #[test]
    fn masquerades_and_reverses_each_protocol() {
        let mut n = nat("ports: '2000-2010'\n");
        for (i, proto) in [PROTO_TCP, PROTO_UDP, PROTO_ICMP].into_iter().enumerate() {
            let out = frame(H1, REMOTE, proto, 40000, 53, b"hello");
            let (o, c) = run(&mut n, 1, std::slice::from_ref(&out));
            assert_eq!(c.dropped_total(), 0);
            let (s, d, sp, dp) = tuple(&o[0]);
            assert_eq!((s, d), (EXT, REMOTE), "proto {proto}");
            assert!((2000..=2010).contains(&sp), "port {sp} outside the pool");
            assert_eq!(dp, if proto == PROTO_ICMP { sp } else { 53 });
            assert!(checksums_ok(&o[0]), "proto {proto}");
            let (back, c) = run(&mut n, 2, &[reply_to(&o[0])]);
            assert_eq!(c.dropped_total(), 0);
            let (s, d, sp, dp) = tuple(&back[0]);
            assert_eq!((s, d, dp), (REMOTE, H1, 40000));
            assert_eq!(sp, if proto == PROTO_ICMP { 40000 } else { 53 });
            assert!(checksums_ok(&back[0]));
            assert_eq!(n.mappings(), i + 1);
        }
        // A zero UDP checksum stays zero.
        let mut out = frame(0x0a00_0002, REMOTE, PROTO_UDP, 1, 2, b"x");
        out[40..42].copy_from_slice(&[0, 0]);
        let (o, _) = run(&mut n, 3, &[out]);
        assert_eq!(&o[0][40..42], &[0, 0]);
    }

    /// Ports come out of the pool in an order an observer cannot predict
    /// (RFC 6056): distinct, not ascending, and different per instance.
    #[test]
    fn ports_are_handed_out_in_random_order() {
        let ports = |n: &mut Nat| -> Vec<u16> {
            (0..64u16)
                .map(|i| {
                    let (o, c) = run(n, 1, &[frame(H1, REMOTE, PROTO_UDP, 10_000 + i, 53, b"")]);
                    assert_eq!(c.dropped_total(), 0);
                    tuple(&o[0]).2
                })
                .collect()
        };
        let (a, b) = (ports(&mut nat("")), ports(&mut nat("")));
        let distinct: std::collections::HashSet<_> = a.iter().collect();
        assert_eq!(distinct.len(), a.len());
        assert!(a.iter().all(|p| *p >= 1024));
        assert!(a.windows(2).any(|w| w[0] > w[1]), "ports ascend: {a:?}");
        // Two instances agreeing on 64 ports out of 64512 by chance: ~never.
        assert_ne!(a, b);
    }

    /// The pool hands out every port once, wraps around from its hash
    /// position, reuses what is given back, and ignores ports not its own.
    #[test]
    fn the_port_pool_finds_every_free_port_from_any_position() {
        // 70 ports: two words, the second only partly in the pool.
        let mut pool = PortPool::new(1000, 1069, &[1000, 1069, 2000]);
        assert_eq!(pool.free, 68);
        let mut got = std::collections::BTreeSet::new();
        for k in 0..68u64 {
            // Every position, including the last ones (a wrap-around).
            let p = pool.take(k * 37 + 69).unwrap();
            assert!((1001..=1068).contains(&p), "{p}");
            assert!(got.insert(p), "port {p} twice");
        }
        assert_eq!(pool.take(5), None, "an empty pool");
        pool.give_back(1030);
        pool.give_back(1030);
        pool.give_back(999);
        pool.give_back(4000);
        assert_eq!(pool.free, 1);
        assert_eq!(pool.take(0), Some(1030), "the one free port, found from position 0");
        // From a position, the first free port at or after it.
        let mut pool = PortPool::new(1024, 65535, &[]);
        assert_eq!(pool.take(7), Some(1031));
        assert_eq!(pool.take(7), Some(1032));
        assert_eq!(pool.take(64511), Some(65535));
        assert_eq!(pool.take(64511), Some(1024), "wrapped to the start");
    }

    /// Same secret, same traffic: same ports (what a duplicating
    /// migration replays); another secret: other ports. A bad secret is a
    /// configuration error naming the field.
    #[test]
    fn a_configured_port_secret_makes_port_choices_repeatable() {
        const SECRET: &str = "port_secret: 00112233445566778899aabbccddeeff";
        let ports = |n: &mut Nat| -> Vec<u16> {
            (0..200u16)
                .map(|i| {
                    let src = H1 + u32::from(i % 7);
                    let (o, _) = run(n, 1, &[frame(src, REMOTE, PROTO_UDP, 20_000 + i, 53, b"")]);
                    tuple(&o[0]).2
                })
                .collect()
        };
        let (mut a, mut b) = (nat(SECRET), nat(SECRET));
        assert!(a.replays_deterministically() && !nat("").replays_deterministically());
        let pa = ports(&mut a);
        assert_eq!(pa, ports(&mut b));
        assert_ne!(pa, ports(&mut nat("port_secret: 0123456789abcdef0123456789abcdef")));
        for bad in [
            "\"abc\"",
            "\"00112233445566778899aabbccddeefg\"",
            "\"00112233445566778899aabbccddeeff0\"",
        ] {
            let y = format!("external_ip: 203.0.113.1\ninternal: [10.0.0.0/8]\nport_secret: {bad}");
            let p: Params = serde_yaml_ng::from_str(&y).unwrap();
            let e = Nat::from_config(&crate::params::parse(&p).unwrap()).unwrap_err();
            assert!(e.to_string().contains("port_secret"), "{bad}: {e}");
        }
    }

    /// An ICMP error (type 3 code 3) from `src` to `dst` quoting `quoted`.
    fn icmp_error(src: u32, dst: u32, quoted: &[u8]) -> Vec<u8> {
        let mut f = frame(src, dst, PROTO_ICMP, 0, 0, quoted);
        f[34] = 3;
        f[35] = 3;
        f[38..42].copy_from_slice(&[0, 0, 0, 0]);
        fill_l4_checksum(&mut f);
        f
    }

    #[test]
    fn icmp_errors_about_mapped_flows_are_translated_back() {
        let mut n = nat("ports: '2000-2010'\n");
        for proto in [PROTO_UDP, PROTO_TCP, PROTO_ICMP] {
            let out = frame(H1, REMOTE, proto, 40000, 53, b"payload!");
            let (o, _) = run(&mut n, 1, std::slice::from_ref(&out));
            // A router on the way quotes the translated header + 8 bytes.
            let err = icmp_error(0x0909_0909, EXT, &o[0][14..14 + 28]);
            let (back, c) = run(&mut n, 2, &[err]);
            assert_eq!(c.dropped_total(), 0, "proto {proto}");
            let b = &back[0];
            assert_eq!(&b[30..34], &H1.to_be_bytes(), "outer destination");
            assert!(checksums_ok(b), "outer IPv4 and ICMP checksums, proto {proto}");
            let quoted = &b[42..42 + 28];
            assert_eq!(checksum(&quoted[..20]), 0, "quoted IPv4 checksum");
            // The quote is the packet as the inside host sent it.
            assert_eq!(&quoted[12..20], &out[26..34]);
            assert_eq!(&quoted[20..24], &out[34..38], "quoted ports / type+ident");
            if proto != PROTO_TCP {
                assert_eq!(
                    &quoted[24..28],
                    &out[38..42],
                    "quoted UDP length+checksum / ICMP ident"
                );
            }
        }
        // Quoting a packet of no mapping: dropped.
        let stray = frame(EXT, REMOTE, PROTO_UDP, 2999, 53, b"");
        let (back, c) = run(&mut n, 3, &[icmp_error(REMOTE, EXT, &stray[14..42])]);
        assert!(back.is_empty());
        assert_eq!(c.dropped(DropReason::NoMapping), 1);
    }

    /// Issue 13 item 2: one inside address:port keeps one external port
    /// whatever the remote (RFC 4787 REQ-1, RFC 5382 REQ-1); the port goes
    /// back to the pool with the endpoint's last flow; snapshots with
    /// shared ports move; `mapping: endpoint-dependent` is the old way.
    #[test]
    fn endpoint_independent_mapping_by_default() {
        const REMOTE2: u32 = 0x0909_0909;
        let s = 1_000_000_000u64;
        for proto in [PROTO_UDP, PROTO_TCP, PROTO_ICMP] {
            let mut n =
                nat("ports: '2000-2000'\ntimeouts: {udp: 10, tcp_transitory: 10, icmp: 10}\n");
            let a = frame(H1, REMOTE, proto, 40000, 53, b"");
            let b = frame(H1, REMOTE2, proto, 40000, 3478, b"");
            let (o, c) = run(&mut n, s, &[a, b]);
            assert_eq!(c.dropped_total(), 0, "proto {proto}");
            assert_eq!((tuple(&o[0]).2, tuple(&o[1]).2), (2000, 2000));
            assert_eq!(n.mappings(), 2);
            // Both remotes' replies come back to the inside endpoint.
            let (back, c) = run(&mut n, 2 * s, &[reply_to(&o[0]), reply_to(&o[1])]);
            assert_eq!(c.dropped_total(), 0);
            assert!(back.iter().all(|f| tuple(f).1 == H1 && tuple(f).3 == 40000));
            // Another inside endpoint cannot have the port meanwhile.
            let other = frame(H1 + 1, REMOTE, proto, 40000, 53, b"");
            let (_, c) = run(&mut n, 3 * s, std::slice::from_ref(&other));
            assert_eq!(c.dropped(DropReason::PortsExhausted), 1);
            // The state moves with the shared port.
            let mut m = nat("ports: '2000-2000'\n");
            m.import_state(&n.export_state().unwrap()).unwrap();
            let (back, c) = run(&mut m, 4 * s, &[reply_to(&o[1])]);
            assert_eq!((back.len(), c.dropped_total()), (1, 0));
            // One flow idles out: the port stays with the endpoint...
            let (o2, _) = run(&mut n, 8 * s, &[frame(H1, REMOTE2, proto, 40000, 3478, b"")]);
            assert_eq!(tuple(&o2[0]).2, 2000);
            let tick = |n: &mut Nat, now: u64| {
                let mut c = Counters::default();
                n.tick(&mut Batch::new(), &mut Context::new(now, &mut c));
                n.mappings()
            };
            assert_eq!(tick(&mut n, 13 * s), 1, "proto {proto}");
            let (_, c) = run(&mut n, 13 * s, std::slice::from_ref(&other));
            assert_eq!(c.dropped(DropReason::PortsExhausted), 1, "proto {proto}");
            // ...until its last flow idles out.
            assert_eq!(tick(&mut n, 30 * s), 0);
            let (o3, c) = run(&mut n, 30 * s, std::slice::from_ref(&other));
            assert_eq!((c.dropped_total(), tuple(&o3[0]).2), (0, 2000), "proto {proto}");
        }
        let mut n = nat("ports: '2000-2001'\nmapping: endpoint-dependent\n");
        let a = frame(H1, REMOTE, PROTO_UDP, 40000, 53, b"");
        let b = frame(H1, REMOTE2, PROTO_UDP, 40000, 53, b"");
        let (o, _) = run(&mut n, 1, &[a, b]);
        assert_ne!(tuple(&o[0]).2, tuple(&o[1]).2);
        // An endpoint-dependent snapshot imports into the default NAT.
        let mut m = nat("ports: '2000-2001'\n");
        m.import_state(&n.export_state().unwrap()).unwrap();
        assert_eq!(m.mappings(), 2);
    }

    /// Issue 13 item 3: an inside host's ICMP error about a translated
    /// inbound packet goes out translated (RFC 5508 REQ-5): outer source,
    /// quoted destination address and port, and every checksum, so the
    /// quote is exactly the packet the remote sent (TCP's checksum too,
    /// when quoted). Inbound, the quoted TCP checksum is restored too.
    #[test]
    fn icmp_errors_are_translated_both_ways_with_quoted_checksums() {
        let mut n = nat("");
        for proto in [PROTO_UDP, PROTO_TCP, PROTO_ICMP] {
            let out = frame(H1, REMOTE, proto, 40000, 53, b"payload!");
            let (o, _) = run(&mut n, 1, std::slice::from_ref(&out));
            let sent = reply_to(&o[0]);
            let (inside, c) = run(&mut n, 2, std::slice::from_ref(&sent));
            assert_eq!(c.dropped_total(), 0);
            // The inside host answers with an error quoting the header
            // and the whole transport header (TCP: 20 bytes).
            let quoted_len = 20 + if proto == PROTO_TCP { 20 } else { 8 };
            let err = icmp_error(H1, REMOTE, &inside[0][14..14 + quoted_len]);
            let (back, c) = run(&mut n, 3, &[err]);
            assert_eq!(c.dropped_total(), 0, "proto {proto}");
            let b = &back[0];
            assert_eq!(&b[26..30], &EXT.to_be_bytes(), "outer source");
            assert!(checksums_ok(b), "outer checksums, proto {proto}");
            assert_eq!(&b[42..42 + quoted_len], &sent[14..14 + quoted_len], "proto {proto}");
            // Inbound, a router quoting our whole TCP header: the quote
            // becomes what the inside host sent, checksum included.
            let err = icmp_error(0x0909_0909, EXT, &o[0][14..14 + quoted_len]);
            let (back, c) = run(&mut n, 4, &[err]);
            assert_eq!(c.dropped_total(), 0, "proto {proto}");
            assert!(checksums_ok(&back[0]));
            assert_eq!(&back[0][42..42 + quoted_len], &out[14..14 + quoted_len], "proto {proto}");
        }
        // An outbound error about no mapping is not let out untranslated.
        let stray = frame(REMOTE, H1, PROTO_UDP, 53, 999, b"");
        let (back, c) = run(&mut n, 5, &[icmp_error(H1, REMOTE, &stray[14..42])]);
        assert!(back.is_empty());
        assert_eq!(c.dropped(DropReason::NoMapping), 1);
    }

    /// Issue 13 item 4 (RFC 4787 REQ-14): later fragments get the
    /// address their first fragment got, both ways; one whose first was
    /// not seen is dropped (`fragment`).
    #[test]
    fn fragments_follow_the_first_both_ways() {
        let frag = |mut f: Vec<u8>, id: u16, offset: u16, more: bool| {
            let len = (f.len() - 14) as u16;
            f[16..18].copy_from_slice(&len.to_be_bytes());
            f[18..20].copy_from_slice(&id.to_be_bytes());
            let word = (offset / 8) | if more { 0x2000 } else { 0 };
            f[20..22].copy_from_slice(&word.to_be_bytes());
            f[24..26].fill(0);
            let ck = checksum(&f[14..34]);
            f[24..26].copy_from_slice(&ck.to_be_bytes());
            f
        };
        let mut n = nat("");
        let whole = frame(H1, REMOTE, PROTO_UDP, 40000, 53, &[7; 24]);
        let first = frag(whole[..14 + 20 + 16].to_vec(), 5, 0, true);
        let later = frag(
            frame(H1, REMOTE, PROTO_UDP, 0, 0, &[7; 8])[..14 + 20 + 16].to_vec(),
            5,
            16,
            false,
        );
        let (o, c) = run(&mut n, 1, std::slice::from_ref(&later));
        assert_eq!((o.len(), c.dropped(DropReason::Fragment)), (0, 1));
        let (o, c) = run(&mut n, 2, &[first, later.clone()]);
        assert_eq!(c.dropped_total(), 0);
        for f in &o {
            assert_eq!(&f[26..30], &EXT.to_be_bytes());
            assert_eq!(checksum(&f[14..34]), 0);
        }
        assert_eq!(&o[1][34..], &later[34..], "payload untouched");
        let port = get_be16(&o[0], 34);
        // The reply, fragmented, comes back to the inside host.
        let reply = frame(REMOTE, EXT, PROTO_UDP, 53, port, &[9; 24]);
        let r_first = frag(reply[..14 + 20 + 16].to_vec(), 9, 0, true);
        let r_later = frag(
            frame(REMOTE, EXT, PROTO_UDP, 0, 0, &[9; 8])[..14 + 20 + 16].to_vec(),
            9,
            16,
            false,
        );
        let (o, c) = run(&mut n, 3, &[r_first, r_later]);
        assert_eq!(c.dropped_total(), 0);
        for f in &o {
            assert_eq!(&f[30..34], &H1.to_be_bytes());
            assert_eq!(checksum(&f[14..34]), 0);
        }
        assert_eq!(get_be16(&o[0], 36), 40000);
    }

    #[test]
    fn unmapped_inbound_exhausted_ports_and_passthrough() {
        let mut n = nat("ports: '2000-2001'\n");
        let u = |h: u32| frame(h, REMOTE, PROTO_UDP, 5, 53, b"");
        let (o, c) = run(&mut n, 1, &[u(H1), u(H1 + 1), u(H1 + 2), u(H1)]);
        assert_eq!(o.len(), 3);
        assert_eq!(c.dropped(DropReason::PortsExhausted), 1);
        let stray = frame(REMOTE, EXT, PROTO_UDP, 53, 2005, b"");
        let inside = frame(H1, 0xc0a8_0001, PROTO_UDP, 1, 2, b"");
        let outside = frame(REMOTE, 0x0101_0101, PROTO_UDP, 1, 2, b"");
        let mut gre = frame(H1, REMOTE, PROTO_UDP, 1, 2, b"");
        gre[14 + 9] = 47;
        let (o, c) = run(&mut n, 1, &[stray, inside.clone(), outside.clone(), gre]);
        assert_eq!(o, vec![inside, outside]);
        assert_eq!((c.dropped(DropReason::NoMapping), c.dropped(DropReason::Unsupported)), (1, 1));
    }

    #[test]
    fn idle_mappings_free_their_ports() {
        let mut n = nat("ports: '2000-2000'\ntimeouts: {udp: 10}\n");
        let s = 1_000_000_000u64;
        let (o, _) = run(&mut n, s, &[frame(H1, REMOTE, PROTO_UDP, 5, 53, b"")]);
        let (_, c) = run(&mut n, 2 * s, &[frame(H1 + 1, REMOTE, PROTO_UDP, 5, 53, b"")]);
        assert_eq!(c.dropped(DropReason::PortsExhausted), 1);
        // Lazily on lookup: the old reply finds nothing after 10 s.
        let (back, c) = run(&mut n, 12 * s, &[reply_to(&o[0])]);
        assert!(back.is_empty() && c.dropped(DropReason::NoMapping) == 1);
        assert_eq!(n.mappings(), 0);
        let (o, _) = run(&mut n, 13 * s, &[frame(H1 + 1, REMOTE, PROTO_UDP, 5, 53, b"")]);
        assert_eq!(tuple(&o[0]).2, 2000);
        // By the sweep in tick.
        let mut c = Counters::default();
        n.tick(&mut Batch::new(), &mut Context::new(30 * s, &mut c));
        assert_eq!(n.mappings(), 0);
        let (o, _) = run(&mut n, 31 * s, &[frame(H1 + 2, REMOTE, PROTO_UDP, 5, 53, b"")]);
        assert_eq!(tuple(&o[0]).2, 2000);
    }

    #[test]
    fn config_errors_name_the_field() {
        for (yaml, field) in [
            ("external_ip: 1.2.3.4\ninternal: []", "internal"),
            ("external_ip: 1.2.3.4\ninternal: [10.0.0.1/8]", "internal[0]"),
            ("external_ip: 10.1.1.1\ninternal: [10.0.0.0/8]", "internal[0]"),
            ("external_ip: 1.2.3.4\ninternal: [10.0.0.0/8]\nports: '0-10'", "ports"),
            ("external_ip: 1.2.3.4\ninternal: [10.0.0.0/8]\nports: 'x'", "ports"),
            ("external_ip: 1.2.3.4\ninternal: [10.0.0.0/8]\ntimeouts: {icmp: 0}", "timeouts.icmp"),
            ("external_ip: 1.2.3\ninternal: [10.0.0.0/8]", "external_ip"),
        ] {
            let p: Params = serde_yaml_ng::from_str(yaml).unwrap();
            let e = (SPEC.build)(&p).err().unwrap();
            assert_eq!(e.field, field, "{yaml}: {e}");
        }
    }

    #[test]
    fn snapshot_checks_fit_the_config() {
        // The mapping's port is random within 2000-2999: never in 3000-4000.
        let mut a = nat("ports: '2000-2999'\n");
        run(&mut a, 1, &[frame(H1, REMOTE, PROTO_UDP, 5, 53, b"")]);
        let snap = a.export_state().unwrap();
        let mut other = nat("ports: '3000-4000'\n");
        assert!(matches!(other.import_state(&snap), Err(StateError::Corrupt(_))));
        assert_eq!(other.mappings(), 0);
    }

    fn arb_flow() -> impl Strategy<Value = (u32, u32, u8, u16, u16)> {
        (
            0u32..0x00ff_ffff,
            any::<u32>()
                .prop_filter("outside", |a| a >> 24 != 10 && a >> 16 != 0xc0a8 && *a != EXT),
            prop_oneof![Just(PROTO_TCP), Just(PROTO_UDP), Just(PROTO_ICMP)],
            any::<u16>(),
            any::<u16>(),
        )
            .prop_map(|(h, r, p, sp, dp)| (0x0a00_0000 | h, r, p, sp, dp))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn out_then_reply_gives_the_original_tuple_back_and_survives_migration(
            flows in proptest::collection::vec(arb_flow(), 1..40),
            payload in proptest::collection::vec(any::<u8>(), 0..30),
        ) {
            let mut n = nat("");
            let outs: Vec<Vec<u8>> = flows.iter()
                .map(|&(h, r, p, sp, dp)| frame(h, r, p, sp, dp, &payload)).collect();
            let (translated, c) = run(&mut n, 1, &outs);
            prop_assert_eq!(c.dropped_total(), 0);
            let replies: Vec<Vec<u8>> = translated.iter().map(|f| reply_to(f)).collect();
            for (o, t) in outs.iter().zip(&translated) {
                prop_assert!(checksums_ok(t));
                prop_assert_eq!(tuple(t).0, EXT);
                prop_assert_eq!(tuple(t).1, tuple(o).1);
            }
            // Migrate before the replies come back.
            let mut m = nat("");
            m.import_state(&n.export_state().unwrap()).unwrap();
            let (back, c) = run(&mut n, 2, &replies);
            let (back_m, _) = run(&mut m, 9, &replies);
            prop_assert_eq!(c.dropped_total(), 0);
            prop_assert_eq!(&back, &back_m);
            for (o, b) in outs.iter().zip(&back) {
                prop_assert!(checksums_ok(b));
                let (os, od, osp, odp) = tuple(o);
                let (bs, bd, bsp, bdp) = tuple(b);
                prop_assert_eq!((bs, bd, bdp), (od, os, osp));
                if o[14 + 9] != PROTO_ICMP {
                    prop_assert_eq!(bsp, odp);
                }
            }
        }

        #[test]
        fn never_panics_on_garbage(frames in proptest::collection::vec(
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..90),
                braid_packet::strategy::any_frame(),
            ], 1..8),
            flip in any::<(usize, u8)>())
        {
            let mut frames = frames;
            let mut g = frame(H1, REMOTE, PROTO_TCP, 1, 80, b"abc");
            let at = flip.0 % g.len();
            g[at] ^= flip.1;
            frames.push(g);
            let mut n = nat("");
            let (o, c) = run(&mut n, 1, &frames);
            prop_assert_eq!(o.len() as u64 + c.dropped_total(), frames.len() as u64);
        }
    }
}
