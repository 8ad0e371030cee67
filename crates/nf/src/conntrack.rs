//! Connection tracking shared by `firewall` and `nat`. Header views, checksums
//! and the flow hash come from `braid_packet` (`wire`, `wire::checksum`,
//! `flow`); what is here is specific to these NFs.
//!
//! * Frames are parsed by `braid_packet::envelope` (offsets, the fields a
//!   stateful NF keys on, the policy class); every later access in the NFs
//!   stays within the lengths checked there, so malformed frames cannot
//!   panic them. [`flow_key`] turns its headers into a [`FlowKey`].
//! * [`FlowKey`]: an exact-match 5-tuple key (the state record form of
//!   `FiveTuple`), hashed with `FiveTuple::keyed_hash` under a random key
//!   per table ([`flow_hash`]). [`FlowKey6`]: the IPv6 form (`firewall`;
//!   `FiveTuple6::keyed_hash`), [`flow_key6`] and [`icmp6_error_quote`]
//!   its constructors. Both are [`ConnKey`]s: the table, its snapshots and
//!   statelets are one generic code for either family.
//! * [`ConnTable`]: a slab of connections, each reachable by its original
//!   and its reply key (like Linux conntrack's two tuple hashes) through an
//!   open-addressing index, with idle timeouts checked lazily on lookup and
//!   swept incrementally, export/import (whole, by flow, merging) as plain
//!   records ([`ConnSnapshot`]), and a batched lookup API (touch, probe, hinted
//!   lookup; [`ConnTable::prefetch_batch`]) so the cache misses of a batch
//!   overlap (see [`Prefetch`]).
//! * [`StateClock`]: NF-local time that continues across an export/import,
//!   so idle ages survive migration between hosts whose monotonic clocks
//!   differ.

pub use braid_packet::envelope::{Ipv4Headers, Ipv6Headers, L4};
use braid_packet::flow::{FiveTuple, FiveTuple6, FlowHashKey};
use braid_packet::wire::icmpv4::msg_type;
use std::net::Ipv6Addr;

use braid_packet::{Batch, Packet};

use crate::statelet::Statelet;
use crate::{Context, DropReason, Encoding, FlowScope, NfState, PartitionKey, StateError};

// The protocol numbers, TCP flags and ICMP types the stateful NFs test,
// under the names they use (re-exported from `braid_packet::wire`).
pub use braid_packet::wire::ip_proto::{ICMP as PROTO_ICMP, TCP as PROTO_TCP, UDP as PROTO_UDP};
pub use braid_packet::wire::tcp_flags::{
    ACK as TCP_ACK, FIN as TCP_FIN, RST as TCP_RST, SYN as TCP_SYN,
};
pub use msg_type::{ECHO_REPLY as ICMP_ECHO_REPLY, ECHO_REQUEST as ICMP_ECHO_REQUEST};
/// ICMPv6's protocol number (next header 58).
pub const PROTO_ICMPV6: u8 = 58;
/// ICMPv6 echo request (RFC 4443).
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
/// ICMPv6 echo reply.
pub const ICMPV6_ECHO_REPLY: u8 = 129;

/// A key the connection table files connections under: [`FlowKey`]
/// (IPv4) or [`FlowKey6`] (IPv6). Both directions of a connection have
/// one each; the table, its snapshots and statelets are the same code for
/// both.
pub trait ConnKey:
    Copy + Eq + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned
{
    /// A key that fills empty index entries (never looked up).
    const BLANK: Self;
    /// The key of the reply direction.
    fn reversed(&self) -> Self;
    /// The hash of this key under a table's random key.
    fn keyed_hash(&self, key: &FlowHashKey) -> u64;
    /// The IP protocol (IPv6: the upper-layer protocol).
    fn proto(&self) -> u8;
    /// True for ICMP echo (IPv4) or ICMPv6 echo (IPv6) keys.
    fn is_icmp(&self) -> bool;
    /// The flow this key belongs to (either direction gives the same).
    fn partition_key(&self) -> PartitionKey;
    /// The two keys (both directions) of the flow `key`, if it is a flow of
    /// this address family.
    fn of_partition(key: &PartitionKey) -> Option<[Self; 2]>;
}

impl ConnKey for FlowKey {
    const BLANK: FlowKey = FlowKey { src: 0, dst: 0, src_port: 0, dst_port: 0, proto: 0 };
    #[inline]
    fn reversed(&self) -> FlowKey {
        FlowKey::reversed(self)
    }
    #[inline]
    fn keyed_hash(&self, key: &FlowHashKey) -> u64 {
        FiveTuple::from(*self).keyed_hash(key)
    }
    #[inline]
    fn proto(&self) -> u8 {
        self.proto
    }
    #[inline]
    fn is_icmp(&self) -> bool {
        self.proto == PROTO_ICMP
    }
    #[inline]
    fn partition_key(&self) -> PartitionKey {
        PartitionKey::five_tuple((*self).into())
    }
    fn of_partition(key: &PartitionKey) -> Option<[FlowKey; 2]> {
        let (lo, hi, proto) = key.flow_endpoints()?;
        let k = FlowKey { src: lo.0, dst: hi.0, src_port: lo.1, dst_port: hi.1, proto };
        Some([k, k.reversed()])
    }
}

/// The 5-tuple key of an IPv6 packet, if its protocol has one the firewall
/// tracks (TCP, UDP, ICMPv6 echo with its identifier as both ports).
#[inline]
pub fn flow_key6(ip: &Ipv6Headers) -> Option<FlowKey6> {
    let (src_port, dst_port) = match ip.l4 {
        L4::Tcp { src_port, dst_port, .. } | L4::Udp { src_port, dst_port, .. } => {
            (src_port, dst_port)
        }
        L4::IcmpEcho { ident, .. } => (ident, ident),
        _ => return None,
    };
    Some(FlowKey6 {
        src: Ipv6Addr::from(ip.src),
        dst: Ipv6Addr::from(ip.dst),
        src_port,
        dst_port,
        proto: ip.proto,
    })
}

/// An exact-match IPv6 5-tuple (the upper-layer protocol after the
/// extension headers). In JSON snapshots the addresses are written as
/// text (`"2001:db8::1"`), in binary as 16 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct FlowKey6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
}

impl From<FlowKey6> for FiveTuple6 {
    #[inline]
    fn from(k: FlowKey6) -> FiveTuple6 {
        FiveTuple6 {
            src: k.src,
            dst: k.dst,
            proto: k.proto,
            src_port: k.src_port,
            dst_port: k.dst_port,
        }
    }
}

impl ConnKey for FlowKey6 {
    const BLANK: FlowKey6 = FlowKey6 {
        src: Ipv6Addr::UNSPECIFIED,
        dst: Ipv6Addr::UNSPECIFIED,
        src_port: 0,
        dst_port: 0,
        proto: 0,
    };
    #[inline]
    fn reversed(&self) -> FlowKey6 {
        FlowKey6 {
            src: self.dst,
            dst: self.src,
            src_port: self.dst_port,
            dst_port: self.src_port,
            proto: self.proto,
        }
    }
    #[inline]
    fn keyed_hash(&self, key: &FlowHashKey) -> u64 {
        FiveTuple6::from(*self).keyed_hash(key)
    }
    #[inline]
    fn proto(&self) -> u8 {
        self.proto
    }
    #[inline]
    fn is_icmp(&self) -> bool {
        self.proto == PROTO_ICMPV6
    }
    #[inline]
    fn partition_key(&self) -> PartitionKey {
        PartitionKey::five_tuple6((*self).into())
    }
    fn of_partition(key: &PartitionKey) -> Option<[FlowKey6; 2]> {
        let (lo, hi, proto) = key.flow6_endpoints()?;
        let k = FlowKey6 { src: lo.0, dst: hi.0, src_port: lo.1, dst_port: hi.1, proto };
        Some([k, k.reversed()])
    }
}

/// The 5-tuple key of a packet, if its protocol has one the stateful NFs
/// track (TCP, UDP, ICMP echo). ICMP echo uses the identifier as both
/// ports so the reply's key is the reverse of the request's.
#[inline]
pub fn flow_key(ip: &Ipv4Headers) -> Option<FlowKey> {
    let (src_port, dst_port) = match ip.l4 {
        L4::Tcp { src_port, dst_port, .. } | L4::Udp { src_port, dst_port, .. } => {
            (src_port, dst_port)
        }
        L4::IcmpEcho { ident, .. } => (ident, ident),
        _ => return None,
    };
    Some(FlowKey { src: ip.src, dst: ip.dst, src_port, dst_port, proto: ip.proto })
}

/// The packet quoted in an ICMP error (destination unreachable, source
/// quench, redirect, time exceeded, parameter problem): where its IPv4
/// header is and its 5-tuple as it appears there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotedPacket {
    /// Offset of the quoted IPv4 header in the frame.
    pub l3: usize,
    /// Its header length.
    pub ihl: usize,
    /// Its 5-tuple (ICMP echo: identifier as both ports).
    pub key: FlowKey,
}

/// If `info` is an ICMP error quoting a first fragment of TCP, UDP or ICMP
/// echo with at least 8 bytes of its transport header (RFC 792), the
/// quoted packet (see [`braid_packet::flow::parse_icmp_error_quote`]).
/// Bounds are checked against the outer IPv4 total length.
pub fn icmp_error_quote(frame: &[u8], info: &Ipv4Headers) -> Option<QuotedPacket> {
    let L4::IcmpOther { .. } = info.l4 else { return None };
    let icmp = &frame[info.l4_offset()..info.l3 + info.total_len];
    let q = braid_packet::flow::parse_icmp_error_quote(icmp)?;
    Some(QuotedPacket {
        l3: info.l4_offset() + q.l3_offset,
        ihl: q.header_len,
        key: FlowKey::from(q.tuple),
    })
}

/// If `info` is an ICMPv6 error (destination unreachable, packet too big,
/// time exceeded, parameter problem: types 1 to 4, RFC 4443) quoting a
/// packet with a TCP or UDP header (its ports) or an ICMPv6 echo, the
/// 5-tuple of the quoted packet as it appears there. The quoted packet's
/// extension headers are walked like the envelope walks them; a quoted
/// non-first fragment, or a quote too short for the ports, gives `None`.
pub fn icmp6_error_quote(frame: &[u8], info: &Ipv6Headers) -> Option<FlowKey6> {
    let L4::IcmpOther { msg_type: 1..=4 } = info.l4 else { return None };
    if info.proto != PROTO_ICMPV6 {
        return None;
    }
    // The invoking packet follows the 8-byte ICMPv6 header.
    let q = frame.get(info.l4_offset() + 8..info.end())?;
    if q.len() < 40 || q[0] >> 4 != 6 {
        return None;
    }
    let addr = |at: usize| -> Option<Ipv6Addr> {
        let b: [u8; 16] = q.get(at..at + 16)?.try_into().ok()?;
        Some(Ipv6Addr::from(b))
    };
    let (src, dst) = (addr(8)?, addr(24)?);
    // The quote is cut short of the quoted payload length: walk what is
    // there.
    let walk = braid_packet::wire::ipv6ext::walk(q[6], &q[40..]).ok()?;
    if walk.later_fragment() {
        return None;
    }
    let l4 = q.get(40 + walk.ext_len..)?;
    let be16 =
        |at: usize| -> Option<u16> { Some(u16::from_be_bytes([*l4.get(at)?, *l4.get(at + 1)?])) };
    let (src_port, dst_port) = match walk.proto {
        PROTO_TCP | PROTO_UDP => (be16(0)?, be16(2)?),
        PROTO_ICMPV6 if matches!(l4.first(), Some(&(ICMPV6_ECHO_REQUEST | ICMPV6_ECHO_REPLY))) => {
            let ident = be16(4)?;
            (ident, ident)
        }
        _ => return None,
    };
    Some(FlowKey6 { src, dst, src_port, dst_port, proto: walk.proto })
}

/// An exact-match IPv4 5-tuple. Addresses are host-order `u32`.
///
/// The same key as [`FiveTuple`] (convertible both ways, hashed by
/// [`FiveTuple::keyed_hash`]), kept as its own type because it is the record
/// format of exported connection state (serde, addresses as numbers) and
/// the NAT and firewall compute on `u32` addresses (masks, ranges).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct FlowKey {
    pub src: u32,
    pub dst: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
}

impl FlowKey {
    /// The key of the reply direction.
    #[inline]
    pub fn reversed(&self) -> FlowKey {
        FlowKey {
            src: self.dst,
            dst: self.src,
            src_port: self.dst_port,
            dst_port: self.src_port,
            proto: self.proto,
        }
    }
}

impl From<FiveTuple> for FlowKey {
    #[inline]
    fn from(t: FiveTuple) -> FlowKey {
        FlowKey {
            src: u32::from(t.src),
            dst: u32::from(t.dst),
            src_port: t.src_port,
            dst_port: t.dst_port,
            proto: t.proto,
        }
    }
}

impl From<FlowKey> for FiveTuple {
    #[inline]
    fn from(k: FlowKey) -> FiveTuple {
        FiveTuple {
            src: k.src.into(),
            dst: k.dst.into(),
            proto: k.proto,
            src_port: k.src_port,
            dst_port: k.dst_port,
        }
    }
}

/// Idle timeouts in nanoseconds, per kind of connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeoutsNs {
    /// TCP after both directions were seen and before FIN/RST.
    pub tcp_established: u64,
    /// TCP before the reply direction was seen, or after FIN/RST.
    pub tcp_transitory: u64,
    pub udp: u64,
    pub icmp: u64,
    /// Any other protocol (firewall only).
    pub other: u64,
}

/// Seconds to nanoseconds, saturating.
pub fn secs_to_ns(s: u64) -> u64 {
    s.saturating_mul(1_000_000_000)
}

/// Connection flags.
const SEEN_REPLY: u8 = 1;
const CLOSING: u8 = 2;
/// Bits 4..7 hold a [`TcpState`] (set for TCP connections tracked since
/// the state machine exists; a snapshot without it is taken as
/// established, see [`Conn::tcp_state`]).
const TCP_STATE_SET: u8 = 4;
/// Set by the firewall when its rules admitted the packet that created
/// the connection (kept across export/import, so a reconfigured
/// firewall's new rules apply to new connections only).
pub const ADMITTED: u8 = 8;
const TCP_STATE_SHIFT: u8 = 4;

/// The TCP states of Linux conntrack (`enum tcp_conntrack`, same order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpState {
    None,
    SynSent,
    SynRecv,
    Established,
    FinWait,
    CloseWait,
    LastAck,
    TimeWait,
    Close,
    SynSent2,
}

impl TcpState {
    const ALL: [TcpState; 10] = [
        TcpState::None,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::Established,
        TcpState::FinWait,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::SynSent2,
    ];
}

/// What one TCP segment does to a connection (Linux's transition table
/// gives a new state, `sIV` or `sIG`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpStep {
    /// A valid segment: the connection moves to this state.
    To(TcpState),
    /// Accepted as part of the connection but changes nothing (`sIG`:
    /// e.g. a retransmitted SYN-ACK).
    Ignore,
    /// Not valid for the connection in this state (`sIV`): the segment
    /// is not part of it (nftables `ct state invalid`).
    Invalid,
    /// A SYN reopening a connection in TIME_WAIT or CLOSE: Linux removes
    /// the old entry and tracks the segment as a new connection.
    Reopen,
}

/// The TCP flag combinations Linux conntrack accepts at all
/// (`tcp_valid_flags`; PSH, ECE and CWR are ignored). Anything else (SYN
/// with FIN, FIN without ACK, no flag, ...) is invalid and never tracked.
#[inline]
pub fn tcp_flags_valid(flags: u8) -> bool {
    use braid_packet::wire::tcp_flags::{CWR, ECE, PSH, URG};
    const SA: u8 = TCP_SYN | TCP_ACK;
    const RA: u8 = TCP_RST | TCP_ACK;
    const FA: u8 = TCP_FIN | TCP_ACK;
    const SU: u8 = TCP_SYN | URG;
    const FAU: u8 = TCP_FIN | TCP_ACK | URG;
    const AU: u8 = TCP_ACK | URG;
    matches!(flags & !(PSH | ECE | CWR), TCP_SYN | SU | SA | TCP_RST | RA | FA | FAU | TCP_ACK | AU)
}

/// Linux's `tcp_conntracks[dir][index][state]` (net/netfilter/
/// nf_conntrack_proto_tcp.c), with `nf_conntrack_tcp_loose = 1`: from no
/// connection only a SYN (to SYN_SENT) or an ACK-type segment (picked up
/// as ESTABLISHED) is valid; a SYN-ACK, FIN, RST or flagless segment is
/// not. Indexes: RST, else SYN (SYN-ACK with ACK), else FIN, else ACK,
/// else none.
pub fn tcp_transition(state: TcpState, reply: bool, flags: u8) -> TcpStep {
    use TcpState::*;
    const IV: u8 = 10;
    const IG: u8 = 11;
    // Columns: NO SS SR ES FW CW LA TW CL S2 (TcpState order).
    #[rustfmt::skip]
    const T: [[[u8; 10]; 6]; 2] = [
        [ // original direction
            /* syn    */ [1, 1, IG, IG, IG, IG, IG, 1, 1, 9],
            /* synack */ [IV, IV, 2, IV, IV, IV, IV, IV, IV, 2],
            /* fin    */ [IV, IV, 4, 4, 6, 6, 6, 7, 8, IV],
            /* ack    */ [3, IV, 3, 3, 5, 5, 7, 7, 8, IV],
            /* rst    */ [IV, 8, 8, 8, 8, 8, 8, 8, 8, 8],
            /* none   */ [IV; 10],
        ],
        [ // reply direction
            /* syn    */ [IV, 9, IV, IV, IV, IV, IV, 1, IV, 9],
            /* synack */ [IV, 2, IG, IG, IG, IG, IG, IG, IG, 2],
            /* fin    */ [IV, IV, 4, 4, 6, 6, 6, 7, 8, IV],
            /* ack    */ [IV, IG, 2, 3, 5, 5, 7, 7, 8, IG],
            /* rst    */ [IV, 8, 8, 8, 8, 8, 8, 8, 8, 8],
            /* none   */ [IV; 10],
        ],
    ];
    if !tcp_flags_valid(flags) {
        return TcpStep::Invalid;
    }
    let index = if flags & TCP_RST != 0 {
        4
    } else if flags & TCP_SYN != 0 {
        usize::from(flags & TCP_ACK != 0)
    } else if flags & TCP_FIN != 0 {
        2
    } else if flags & TCP_ACK != 0 {
        3
    } else {
        5
    };
    match T[usize::from(reply)][index][state as usize] {
        IV => TcpStep::Invalid,
        IG => TcpStep::Ignore,
        1 if matches!(state, TimeWait | Close) => TcpStep::Reopen,
        n => TcpStep::To(TcpState::ALL[n as usize]),
    }
}

/// One tracked connection: its original-direction key, its reply-direction
/// key, when it was last seen and a little TCP state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(bound = "K: ConnKey")]
pub struct Conn<K = FlowKey> {
    /// Key of packets in the direction that created the connection.
    pub orig: K,
    /// Key of packets in the reply direction (for NAT: as they arrive from
    /// outside, i.e. addressed to the translated source).
    pub reply: K,
    /// NF-local time ([`StateClock`]) of the last packet, either direction.
    pub last_seen: u64,
    /// `SEEN_REPLY` and `CLOSING` bits.
    pub flags: u8,
}

impl<K: ConnKey> Conn<K> {
    /// The idle timeout that applies to this connection now.
    #[inline]
    pub fn timeout(&self, t: &TimeoutsNs) -> u64 {
        match self.orig.proto() {
            PROTO_TCP => {
                if self.flags & (CLOSING | SEEN_REPLY) == SEEN_REPLY
                    && self.tcp_state() == TcpState::Established
                {
                    t.tcp_established
                } else {
                    t.tcp_transitory
                }
            }
            PROTO_UDP => t.udp,
            _ if self.orig.is_icmp() => t.icmp,
            _ => t.other,
        }
    }

    #[inline]
    fn expired(&self, now: u64, t: &TimeoutsNs) -> bool {
        now.wrapping_sub(self.last_seen) > self.timeout(t)
    }

    /// Record a packet in direction `reply` (false: original) with TCP
    /// `tcp_flags` (0 for other protocols).
    #[inline]
    pub fn touch(&mut self, now: u64, reply: bool, tcp_flags: u8) {
        self.last_seen = now;
        if reply {
            self.flags |= SEEN_REPLY;
        }
        if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
            self.flags |= CLOSING;
        }
    }

    /// True once a packet was seen in the reply direction.
    pub fn seen_reply(&self) -> bool {
        self.flags & SEEN_REPLY != 0
    }

    /// The TCP state (meaningful for TCP connections only). A connection
    /// from a snapshot of a version that kept no state counts as
    /// ESTABLISHED.
    #[inline]
    pub fn tcp_state(&self) -> TcpState {
        if self.flags & TCP_STATE_SET == 0 {
            return TcpState::Established;
        }
        TcpState::ALL
            .get(usize::from(self.flags >> TCP_STATE_SHIFT))
            .copied()
            .unwrap_or(TcpState::Established)
    }

    /// Set the TCP state.
    #[inline]
    pub fn set_tcp_state(&mut self, s: TcpState) {
        self.flags = (self.flags & (SEEN_REPLY | CLOSING | ADMITTED))
            | TCP_STATE_SET
            | ((s as u8) << TCP_STATE_SHIFT);
    }

    /// Run a TCP segment in direction `reply` through the state machine
    /// ([`tcp_transition`]) and, if it is valid or ignored, record it
    /// ([`Conn::touch`]) and move to the new state. `Invalid` and
    /// `Reopen` change nothing.
    #[inline]
    pub fn track_tcp(&mut self, now: u64, reply: bool, tcp_flags: u8) -> TcpStep {
        let step = tcp_transition(self.tcp_state(), reply, tcp_flags);
        match step {
            TcpStep::To(s) => {
                self.touch(now, reply, tcp_flags);
                self.set_tcp_state(s);
            }
            TcpStep::Ignore => self.touch(now, reply, 0),
            TcpStep::Invalid | TcpStep::Reopen => {}
        }
        step
    }
}

/// Result of [`ConnTable::lookup`].
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<K = FlowKey> {
    /// A live connection: its slot and whether the key was its reply key.
    Hit {
        slot: u32,
        reply: bool,
    },
    /// The key belonged to a connection that had idled out; it was removed
    /// and is returned so the caller can release what it held (a NAT port).
    Expired(Conn<K>),
    Miss,
}

/// Why [`ConnTable::insert`] refused a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum InsertError {
    /// The table holds `max` connections.
    Full,
    /// One of the two keys already belongs to another connection.
    KeyInUse,
}

/// The hash of a flow key under `key`: the packet core's
/// [`FiveTuple::keyed_hash`] (the bucket index is its low bits, which
/// depend on every key bit). Every [`ConnTable`] has its own random key
/// ([`ConnTable::hash`]), so a sender choosing its addresses and ports
/// cannot aim its flows at one bucket and turn lookups into long probes.
#[inline]
pub fn flow_hash(key: &FlowKey, hash_key: &FlowHashKey) -> u64 {
    FiveTuple::from(*key).keyed_hash(hash_key)
}

/// Value of an empty [`FlowIndex`] entry.
const EMPTY: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
struct IndexEntry<K> {
    key: K,
    /// `slot << 1 | is_reply`, or [`EMPTY`].
    val: u32,
}

/// Open-addressing hash index from flow keys to connection slots: linear
/// probing, load factor at most 1/2, backward-shift deletion (no
/// tombstones). Its own type rather than `std::collections::HashMap` so that
/// a batch can touch every packet's bucket before probing any of them (the
/// cache misses of a batch then overlap instead of queueing), which a
/// `HashMap` cannot do without unsafe code.
#[derive(Debug)]
struct FlowIndex<K> {
    entries: Vec<IndexEntry<K>>,
    mask: usize,
    len: usize,
    hash_key: FlowHashKey,
}

impl<K: ConnKey> FlowIndex<K> {
    fn with_capacity(keys: usize, hash_key: FlowHashKey) -> FlowIndex<K> {
        let n = (keys * 2).next_power_of_two().max(16);
        let empty = IndexEntry { key: K::BLANK, val: EMPTY };
        FlowIndex { entries: vec![empty; n], mask: n - 1, len: 0, hash_key }
    }

    /// Load the bucket of `hash` so a later probe finds it in cache. The
    /// value is returned so the load is not optimized away.
    #[inline]
    fn touch(&self, hash: u64) -> u32 {
        self.entries[hash as usize & self.mask].val
    }

    #[inline]
    fn get(&self, key: &K, hash: u64) -> Option<u32> {
        let mut i = hash as usize & self.mask;
        loop {
            let e = &self.entries[i];
            if e.val == EMPTY {
                return None;
            }
            if e.key == *key {
                return Some(e.val);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Insert a key known to be absent.
    fn insert(&mut self, key: K, val: u32) {
        if (self.len + 1) * 2 > self.entries.len() {
            self.grow();
        }
        let mut i = key.keyed_hash(&self.hash_key) as usize & self.mask;
        while self.entries[i].val != EMPTY {
            i = (i + 1) & self.mask;
        }
        self.entries[i] = IndexEntry { key, val };
        self.len += 1;
    }

    fn grow(&mut self) {
        let old =
            std::mem::replace(self, FlowIndex::with_capacity(self.entries.len(), self.hash_key));
        for e in old.entries.into_iter().filter(|e| e.val != EMPTY) {
            self.insert(e.key, e.val);
        }
    }

    fn remove(&mut self, key: &K) {
        let mut i = key.keyed_hash(&self.hash_key) as usize & self.mask;
        loop {
            let e = &self.entries[i];
            if e.val == EMPTY {
                return;
            }
            if e.key == *key {
                break;
            }
            i = (i + 1) & self.mask;
        }
        // Backward shift: move later entries of the probe run into the hole
        // when their home bucket is not between the hole and them.
        let mut j = i;
        loop {
            j = (j + 1) & self.mask;
            let e = self.entries[j];
            if e.val == EMPTY {
                break;
            }
            let home = e.key.keyed_hash(&self.hash_key) as usize & self.mask;
            let between = if i <= j { i < home && home <= j } else { i < home || home <= j };
            if !between {
                self.entries[i] = e;
                i = j;
            }
        }
        self.entries[i].val = EMPTY;
        self.len -= 1;
    }
}

/// A table of connections: a slab indexed by slot, and one hash index from
/// both keys of every connection to `slot << 1 | is_reply`.
#[derive(Debug)]
pub struct ConnTable<K = FlowKey> {
    slots: Vec<Option<Conn<K>>>,
    free: Vec<u32>,
    index: FlowIndex<K>,
    live: usize,
    max: usize,
    sweep_cursor: usize,
    /// While a migration streams this table: the flows whose connection
    /// was created, touched or removed since the last
    /// [`ConnTable::take_changes`] (SliM's announce), each once. Off, the
    /// cost is one branch per insert, hit and removal.
    changes: ChangeLog,
}

/// The change record of a [`ConnTable`]: a dirty bit per slot, so a flow
/// changed many times is recorded once until it is taken (no hashing on
/// the packet path), and the (slot, flow) pairs recorded.
#[derive(Debug, Default)]
struct ChangeLog {
    on: bool,
    dirty: Vec<u64>,
    log: Vec<(u32, PartitionKey)>,
}

impl ChangeLog {
    #[inline]
    fn is_dirty(&self, slot: u32) -> bool {
        self.dirty.get(slot as usize / 64).is_some_and(|w| w & (1 << (slot % 64)) != 0)
    }

    #[inline]
    fn set_dirty(&mut self, slot: u32, on: bool) {
        let w = slot as usize / 64;
        if w >= self.dirty.len() {
            self.dirty.resize(w + 1, 0);
        }
        match on {
            true => self.dirty[w] |= 1 << (slot % 64),
            false => self.dirty[w] &= !(1 << (slot % 64)),
        }
    }

    /// The connection in `slot` (flow `key`) changed.
    #[inline]
    fn note(&mut self, slot: u32, key: impl FnOnce() -> PartitionKey) {
        if !self.is_dirty(slot) {
            self.set_dirty(slot, true);
            self.log.push((slot, key()));
        }
    }

    /// The connection in `slot` (flow `key`) was removed: recorded (once),
    /// and the slot is clean for whatever flow takes it next.
    fn removed(&mut self, slot: u32, key: PartitionKey) {
        if !self.is_dirty(slot) {
            self.log.push((slot, key));
        }
        self.set_dirty(slot, false);
    }
}

impl<K: ConnKey> ConnTable<K> {
    /// An empty table for at most `max` connections.
    pub fn new(max: usize) -> ConnTable<K> {
        ConnTable::with_prealloc(max, 1 << 16)
    }

    /// An empty table for at most `max` connections with room for
    /// `prealloc` of them before it grows.
    pub fn with_prealloc(max: usize, prealloc: usize) -> ConnTable<K> {
        let prealloc = max.min(prealloc);
        ConnTable {
            slots: Vec::with_capacity(prealloc),
            free: Vec::new(),
            index: FlowIndex::with_capacity(2 * prealloc, FlowHashKey::random()),
            live: 0,
            max,
            sweep_cursor: 0,
            changes: ChangeLog::default(),
        }
    }

    /// The hash this table files `key` under (keyed per table, see
    /// [`flow_hash`]); batch lookups compute it in their first step.
    #[inline]
    pub fn hash(&self, key: &K) -> u64 {
        key.keyed_hash(&self.index.hash_key)
    }

    /// Number of live (not yet removed) connections.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Capacity limit.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Find the connection `key` belongs to, removing it if it idled out.
    #[inline]
    pub fn lookup(&mut self, key: &K, now: u64, t: &TimeoutsNs) -> Lookup<K> {
        self.lookup_hinted(key, self.hash(key), None, now, t)
    }

    /// Batch step 1: load the index bucket of `hash` (see `FlowIndex`).
    /// Returns the loaded word; callers fold it into [`Prefetch`].
    #[inline]
    pub fn touch_index(&self, hash: u64) -> u32 {
        self.index.touch(hash)
    }

    /// Batch step 2: probe the index (no expiry check, no change). The
    /// result is a hint for [`ConnTable::lookup_hinted`].
    #[inline]
    pub fn probe(&self, key: &K, hash: u64) -> Option<u32> {
        self.index.get(key, hash)
    }

    /// Batch step 2b: load the connection a probe result points at.
    #[inline]
    pub fn touch_conn(&self, hint: u32) -> u32 {
        match self.slots.get((hint >> 1) as usize) {
            Some(Some(c)) => c.last_seen as u32,
            _ => 0,
        }
    }

    /// Batch step 3: [`ConnTable::lookup`] that trusts `hint` (from
    /// [`ConnTable::probe`] earlier in the batch) if the slot still holds a
    /// connection with this key; packets processed in between may have
    /// removed or replaced it, in which case the index is probed again.
    #[inline]
    pub fn lookup_hinted(
        &mut self,
        key: &K,
        hash: u64,
        hint: Option<u32>,
        now: u64,
        t: &TimeoutsNs,
    ) -> Lookup<K> {
        let valid = |slots: &[Option<Conn<K>>], v: u32| match slots.get((v >> 1) as usize) {
            Some(Some(c)) => (if v & 1 == 1 { &c.reply } else { &c.orig }) == key,
            _ => false,
        };
        let v = match hint {
            Some(v) if valid(&self.slots, v) => v,
            _ => match self.index.get(key, hash) {
                Some(v) if valid(&self.slots, v) => v,
                _ => return Lookup::Miss,
            },
        };
        let slot = v >> 1;
        match &self.slots[slot as usize] {
            Some(c) if c.expired(now, t) => Lookup::Expired(self.remove(slot)),
            Some(c) => {
                // A hit is followed by a touch: the connection changes.
                if self.changes.on {
                    self.changes.note(slot, || c.partition_key());
                }
                Lookup::Hit { slot, reply: v & 1 == 1 }
            }
            None => Lookup::Miss,
        }
    }

    /// The connection in `slot` (from a [`Lookup::Hit`]).
    #[inline]
    pub fn get_mut(&mut self, slot: u32) -> Option<&mut Conn<K>> {
        self.slots.get_mut(slot as usize).and_then(Option::as_mut)
    }

    /// Track a new connection with keys `orig` and `reply`, seen at `now`.
    pub fn insert(&mut self, orig: K, reply: K, now: u64) -> Result<u32, InsertError> {
        if self.live >= self.max {
            return Err(InsertError::Full);
        }
        if orig == reply
            || self.index.get(&orig, self.hash(&orig)).is_some()
            || self.index.get(&reply, self.hash(&reply)).is_some()
        {
            return Err(InsertError::KeyInUse);
        }
        let conn = Conn { orig, reply, last_seen: now, flags: 0 };
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(conn);
                s
            }
            None => {
                self.slots.push(Some(conn));
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(orig, slot << 1);
        self.index.insert(reply, (slot << 1) | 1);
        self.live += 1;
        if self.changes.on {
            self.changes.note(slot, || orig.partition_key());
        }
        Ok(slot)
    }

    /// Remove the connection in `slot` (from a [`Lookup::Hit`]), if any.
    pub fn remove_slot(&mut self, slot: u32) -> Option<Conn<K>> {
        match self.slots.get(slot as usize) {
            Some(Some(_)) => Some(self.remove(slot)),
            _ => None,
        }
    }

    /// Remove the connection in `slot` and return it.
    fn remove(&mut self, slot: u32) -> Conn<K> {
        let conn = self.slots[slot as usize].take().expect("remove is only called on live slots");
        self.index.remove(&conn.orig);
        self.index.remove(&conn.reply);
        self.free.push(slot);
        self.live -= 1;
        if self.changes.on {
            self.changes.removed(slot, conn.partition_key());
        }
        conn
    }

    /// Check up to `budget` slots for idle connections, continuing where the
    /// previous sweep stopped; each removed connection goes to `on_expired`.
    /// Returns how many were removed.
    pub fn sweep(
        &mut self,
        now: u64,
        t: &TimeoutsNs,
        budget: usize,
        mut on_expired: impl FnMut(Conn<K>),
    ) -> usize {
        let n = self.slots.len();
        if n == 0 {
            return 0;
        }
        let mut removed = 0;
        for _ in 0..budget.min(n) {
            if self.sweep_cursor >= n {
                self.sweep_cursor = 0;
            }
            let slot = self.sweep_cursor as u32;
            self.sweep_cursor += 1;
            if matches!(&self.slots[slot as usize], Some(c) if c.expired(now, t)) {
                on_expired(self.remove(slot));
                removed += 1;
            }
        }
        removed
    }

    /// All live connections, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = &Conn<K>> {
        self.slots.iter().flatten()
    }

    /// A table holding exactly `conns`, or an error naming the first
    /// inconsistent one (duplicate key, more than `max`).
    pub fn from_conns(conns: &[Conn<K>], max: usize) -> Result<ConnTable<K>, String> {
        let mut t = ConnTable::new(max);
        for (i, c) in conns.iter().enumerate() {
            t.insert_conn(c).map_err(|e| format!("connection {i} ({:?}): {e:?}", c.orig))?;
        }
        Ok(t)
    }
}

/// Streaming a live table (see [`crate::statelet`]): a change log, a
/// cursor over slots and replacement by flow key, each O(1) per entry.
impl<K: ConnKey> ConnTable<K> {
    /// Start recording changed flows (`true`) or stop and forget them.
    pub fn record_changes(&mut self, on: bool) {
        self.changes = ChangeLog { on, ..ChangeLog::default() };
    }

    /// Move the flows changed since the last call into `out`, each once.
    pub fn take_changes(&mut self, out: &mut Vec<PartitionKey>) {
        let log = std::mem::take(&mut self.changes.log);
        for (slot, key) in log {
            self.changes.set_dirty(slot, false);
            out.push(key);
        }
    }

    /// Number of flows recorded as changed and not yet taken.
    pub fn changes_waiting(&self) -> usize {
        self.changes.log.len()
    }

    /// The slot of the connection that is the state of flow `key`.
    pub fn slot_of(&self, key: &PartitionKey) -> Option<u32> {
        for k in K::of_partition(key)? {
            if let Some(v) = self.index.get(&k, self.hash(&k)) {
                if v & 1 == 0 && matches!(&self.slots[(v >> 1) as usize], Some(c) if c.orig == k) {
                    return Some(v >> 1);
                }
            }
        }
        None
    }

    /// Up to `max` connections from slot `*cursor` on, advancing the
    /// cursor past them; `None` once the cursor is past the last slot.
    /// Slots do not move, so a cursor stays valid while the table changes
    /// (what changes behind it is in the change log).
    pub fn export_from(&self, cursor: &mut usize, max: usize) -> Option<Vec<Conn<K>>> {
        if *cursor >= self.slots.len() {
            return None;
        }
        let mut out = Vec::with_capacity(max.min(self.live));
        while *cursor < self.slots.len() && out.len() < max {
            if let Some(c) = &self.slots[*cursor] {
                out.push(*c);
            }
            *cursor += 1;
        }
        Some(out)
    }

    /// The connections of the flows `keys` that are held.
    pub fn conns_of(&self, keys: &[PartitionKey]) -> Vec<Conn<K>> {
        keys.iter().filter_map(|k| self.slot_of(k)).filter_map(|s| self.slots[s as usize]).collect()
    }

    /// Remove the connection of flow `key`, if held, and return it.
    pub fn remove_flow(&mut self, key: &PartitionKey) -> Option<Conn<K>> {
        self.slot_of(key).map(|s| self.remove(s))
    }

    /// Hold `conn` exactly as given (times and flags).
    pub fn insert_conn(&mut self, conn: &Conn<K>) -> Result<u32, InsertError> {
        let slot = self.insert(conn.orig, conn.reply, conn.last_seen)?;
        if let Some(x) = self.get_mut(slot) {
            x.flags = conn.flags;
        }
        Ok(slot)
    }
}

/// One packet's pending table lookup in a batch, as the NF's per-packet
/// step records it: the key, its hash and where the probe's hint goes.
pub trait BatchLookup<K = FlowKey> {
    /// `None` if this packet needs no lookup.
    fn lookup_parts(&mut self) -> Option<(&K, u64, &mut Option<u32>)>;
}

impl<K: ConnKey> ConnTable<K> {
    /// Batch steps 1 to 2b for every packet of a batch (see [`Prefetch`]):
    /// touch every index bucket, then probe every key (storing the hint
    /// for [`ConnTable::lookup_hinted`]), then touch every connection
    /// found. Three separate loops on purpose: each keeps only loads in
    /// flight, so the misses of the whole batch overlap.
    #[inline]
    pub fn prefetch_batch<S: BatchLookup<K>>(&self, steps: &mut [S]) {
        let mut sink = Prefetch::default();
        for step in steps.iter_mut() {
            if let Some((_, hash, _)) = step.lookup_parts() {
                sink.add(self.touch_index(hash));
            }
        }
        for step in steps.iter_mut() {
            if let Some((key, hash, hint)) = step.lookup_parts() {
                *hint = self.probe(key, hash);
            }
        }
        for step in steps.iter_mut() {
            if let Some((_, _, Some(h))) = step.lookup_parts() {
                sink.add(self.touch_conn(*h));
            }
        }
        sink.finish();
    }
}

/// Batch step 3 of the stateful NFs: run `apply` on every packet with the
/// step decided for it (`steps[i]` for packet `i`; `missing` if there are
/// fewer steps than packets), keep the packets it passes and count the
/// others dropped with its reason.
#[inline]
pub fn apply_steps<S>(
    batch: &mut Batch,
    steps: &[S],
    missing: &S,
    cx: &mut Context<'_>,
    mut apply: impl FnMut(&mut Packet, &S) -> Result<(), DropReason>,
) {
    // By reference: a step is 100+ bytes, and copying it per packet cost
    // the firewall ~60 instructions per packet in `memcpy` (callgrind).
    let mut next = steps.iter();
    cx.retain(batch, |p| apply(p, next.next().unwrap_or(missing)));
}

/// The exported state of a conntrack-based NF (firewall, NAT): its clock
/// and its connections (all, or those of a [`FlowScope`]): IPv4 in
/// `conns`, IPv6 in `conns6` (the firewall's; NAT has none).
#[derive(serde::Serialize, serde::Deserialize)]
pub struct ConnSnapshot {
    /// NF-local time at export ([`StateClock::last`]).
    pub clock: u64,
    pub conns: Vec<Conn>,
    pub conns6: Vec<Conn<FlowKey6>>,
}

/// Version of the [`ConnSnapshot`] format. Version 2 added `conns6`;
/// version 1 (IPv4 only) is still read ([`ConnSnapshot::decode`]).
pub const SNAPSHOT_VERSION: u32 = 2;

/// The version 1 format: IPv4 connections only.
#[derive(serde::Deserialize)]
struct ConnSnapshotV1 {
    clock: u64,
    conns: Vec<Conn>,
}

/// What merging a snapshot into a table gives (see
/// [`ConnSnapshot::merge_into`]).
pub struct MergedConns {
    /// Every IPv4 connection the table should hold after the merge.
    pub conns: Vec<Conn>,
    /// Every IPv6 connection.
    pub conns6: Vec<Conn<FlowKey6>>,
    /// The exporter's clock, to continue from when the importer held no
    /// connection (then no age needs translating).
    pub adopt_clock: Option<u64>,
}

impl<K: ConnKey> Conn<K> {
    /// The flow this connection is the state of: the symmetric 5-tuple of
    /// its original direction (for NAT, the inside host's side).
    #[inline]
    pub fn partition_key(&self) -> PartitionKey {
        self.orig.partition_key()
    }
}

/// The connections of `table` in `scope` (none without a table).
fn conns_in<K: ConnKey>(table: Option<&ConnTable<K>>, scope: &FlowScope) -> Vec<Conn<K>> {
    match table {
        Some(t) if *scope == FlowScope::All => t.iter().copied().collect(),
        Some(t) => t.iter().filter(|c| scope.contains(&c.partition_key())).copied().collect(),
        None => Vec::new(),
    }
}

/// The held connections of `held` except those of the flows `incoming`
/// brings, then `incoming` with their ages moved from the exporter's
/// clock `then` to the importer's `now`.
fn merge_family<K: ConnKey>(
    held: Option<&ConnTable<K>>,
    incoming: Vec<Conn<K>>,
    then: u64,
    now: u64,
) -> Vec<Conn<K>> {
    let keys: std::collections::HashSet<PartitionKey> =
        incoming.iter().map(Conn::partition_key).collect();
    let mut conns: Vec<Conn<K>> = held
        .map(|t| t.iter().filter(|c| !keys.contains(&c.partition_key())).copied().collect())
        .unwrap_or_default();
    conns.extend(incoming.into_iter().map(|mut c| {
        c.last_seen = now.wrapping_sub(then.wrapping_sub(c.last_seen));
        c
    }));
    conns
}

impl ConnSnapshot {
    /// The connections of `table` (IPv4) and `table6` (IPv6) in `scope`,
    /// at NF-local time `clock.last()`, as the state of NF `kind` in
    /// `encoding` (no table: no connections).
    pub fn export(
        kind: &str,
        clock: &StateClock,
        table: Option<&ConnTable>,
        table6: Option<&ConnTable<FlowKey6>>,
        scope: &FlowScope,
        encoding: Encoding,
    ) -> NfState {
        let snap = ConnSnapshot {
            clock: clock.last(),
            conns: conns_in(table, scope),
            conns6: conns_in(table6, scope),
        };
        NfState::encode_as(encoding, kind, SNAPSHOT_VERSION, &snap)
    }

    /// A snapshot exported by NF `kind` with [`ConnSnapshot::export`], in
    /// this format or in version 1 (no IPv6 connections).
    pub fn decode(state: &NfState, kind: &str) -> Result<ConnSnapshot, StateError> {
        if state.version == 1 && state.kind == kind {
            let v1: ConnSnapshotV1 = state.decode(kind, 1)?;
            return Ok(ConnSnapshot { clock: v1.clock, conns: v1.conns, conns6: Vec::new() });
        }
        state.decode(kind, SNAPSHOT_VERSION)
    }

    /// The flows of the connections in `state` (NF `kind`'s snapshot or
    /// statelet), IPv4 then IPv6, in order.
    pub fn entry_keys(state: &NfState, kind: &str) -> Result<Vec<PartitionKey>, StateError> {
        let snap = ConnSnapshot::decode(state, kind)?;
        let v4 = snap.conns.iter().map(Conn::partition_key);
        Ok(v4.chain(snap.conns6.iter().map(Conn::partition_key)).collect())
    }

    /// The connections after merging this snapshot into `table` and
    /// `table6` (whose NF-local time is `clock`): the held connections
    /// except those whose flow the snapshot brings again, then the
    /// snapshot's. Ages carry over: an imported connection idle for `d`
    /// at export is idle for `d` on the importer's clock (when the
    /// importer holds no connection it adopts the exporter's clock
    /// instead, like a replacing import). The caller checks the result
    /// (keys, ports, size) before installing it.
    pub fn merge_into(
        self,
        table: Option<&ConnTable>,
        table6: Option<&ConnTable<FlowKey6>>,
        clock: &StateClock,
    ) -> MergedConns {
        let held = table.filter(|t| !t.is_empty());
        let held6 = table6.filter(|t| !t.is_empty());
        if held.is_none() && held6.is_none() {
            return MergedConns {
                conns: self.conns,
                conns6: self.conns6,
                adopt_clock: Some(self.clock),
            };
        }
        let now = clock.last();
        MergedConns {
            conns: merge_family(held, self.conns, self.clock, now),
            conns6: merge_family(held6, self.conns6, self.clock, now),
            adopt_clock: None,
        }
    }
}

impl ConnSnapshot {
    /// A [`Statelet`] of NF `kind` setting flows `keys` to `conns` and
    /// `conns6`, at NF-local time `clock.last()`.
    pub fn statelet(
        kind: &str,
        clock: &StateClock,
        keys: Vec<PartitionKey>,
        conns: Vec<Conn>,
        conns6: Vec<Conn<FlowKey6>>,
    ) -> Statelet {
        let state = NfState::encode_as(
            Encoding::Binary,
            kind,
            SNAPSHOT_VERSION,
            &ConnSnapshot { clock: clock.last(), conns, conns6 },
        );
        Statelet { keys, state }
    }

    /// Install statelet `s` of NF `kind` into `table` (IPv4) and `table6`
    /// (IPv6; `None` for an NF that tracks IPv4 only, which then refuses
    /// IPv6 connections): every connection is first checked with `fits`
    /// (`fits6`), then the flows of `s.keys` are removed and its
    /// connections inserted with their times and flags as exported, and
    /// the NF clock continues from the statelet's. Returns the IPv4
    /// connections removed (so the NF can give their resources back) and
    /// those added. On error nothing changes.
    #[allow(clippy::too_many_arguments)]
    pub fn install_statelet(
        kind: &str,
        table: &mut ConnTable,
        mut table6: Option<&mut ConnTable<FlowKey6>>,
        clock: &mut StateClock,
        s: &Statelet,
        fits: impl Fn(&Conn) -> Result<(), String>,
        fits6: impl Fn(&Conn<FlowKey6>) -> Result<(), String>,
    ) -> Result<(Vec<Conn>, Vec<Conn>), StateError> {
        let mut snap = ConnSnapshot::decode(&s.state, kind)?;
        let holds_nothing = table.is_empty() && table6.as_deref().is_none_or(|t| t.is_empty());
        let adopt = clock.stream_adopts(holds_nothing);
        if !adopt {
            // A merge: the entries' ages carry over onto this NF's clock.
            let (then, now) = (snap.clock, clock.last());
            for c in &mut snap.conns {
                c.last_seen = now.wrapping_sub(then.wrapping_sub(c.last_seen));
            }
            for c in &mut snap.conns6 {
                c.last_seen = now.wrapping_sub(then.wrapping_sub(c.last_seen));
            }
        }
        let named = s.key_set();
        if !snap.conns6.is_empty() && table6.is_none() {
            return Err(StateError::Corrupt(format!(
                "statelet has {} IPv6 connections; `{kind}` tracks IPv4 only",
                snap.conns6.len()
            )));
        }
        check_entries(&snap.conns, &named, 0, &fits)?;
        check_entries(&snap.conns6, &named, snap.conns.len(), &fits6)?;
        let removed: Vec<Conn> = s.keys.iter().filter_map(|k| table.remove_flow(k)).collect();
        let removed6: Vec<Conn<FlowKey6>> = match table6.as_deref_mut() {
            Some(t6) => s.keys.iter().filter_map(|k| t6.remove_flow(k)).collect(),
            None => Vec::new(),
        };
        let restore = |table: &mut ConnTable,
                       table6: Option<&mut ConnTable<FlowKey6>>,
                       added: &[Conn],
                       added6: &[Conn<FlowKey6>]| {
            undo(table, added, &removed);
            if let Some(t6) = table6 {
                undo(t6, added6, &removed6);
            }
        };
        let full4 = (table.len() + snap.conns.len(), table.max());
        let full6 = table6.as_deref().map_or((0, 0), |t| (t.len() + snap.conns6.len(), t.max()));
        if let Some((total, max)) = [full4, full6].into_iter().find(|(n, max)| n > max) {
            restore(table, table6, &[], &[]);
            return Err(StateError::Capacity { total, max });
        }
        let mut added = Vec::with_capacity(snap.conns.len());
        for c in &snap.conns {
            if let Err(e) = table.insert_conn(c) {
                restore(table, table6, &added, &[]);
                return Err(conflict(c, e));
            }
            added.push(*c);
        }
        if let Some(t6) = table6 {
            let mut added6 = Vec::with_capacity(snap.conns6.len());
            for c in &snap.conns6 {
                if let Err(e) = t6.insert_conn(c) {
                    restore(table, Some(t6), &added, &added6);
                    return Err(conflict(c, e));
                }
                added6.push(*c);
            }
        }
        if adopt {
            clock.resume_from(snap.clock);
        }
        Ok((removed, added))
    }
}

/// Check statelet entries (numbered from `first`): each fits the NF and
/// belongs to one of the flows the statelet names.
fn check_entries<K: ConnKey>(
    conns: &[Conn<K>],
    named: &std::collections::HashSet<PartitionKey>,
    first: usize,
    fits: impl Fn(&Conn<K>) -> Result<(), String>,
) -> Result<(), StateError> {
    for (i, c) in conns.iter().enumerate() {
        let i = first + i;
        fits(c).map_err(|e| StateError::Corrupt(format!("statelet entry {i}: {e}")))?;
        if !named.contains(&c.partition_key()) {
            return Err(StateError::Corrupt(format!(
                "statelet entry {i} ({:?}) is not one of the flows it names",
                c.orig
            )));
        }
    }
    Ok(())
}

fn conflict<K: ConnKey>(c: &Conn<K>, e: InsertError) -> StateError {
    StateError::Conflict(format!(
        "statelet connection {:?}: {e:?} (another held connection has its key)",
        c.orig
    ))
}

/// Take `added` out of `table` again and put `removed` back.
fn undo<K: ConnKey>(table: &mut ConnTable<K>, added: &[Conn<K>], removed: &[Conn<K>]) {
    for c in added {
        table.remove_flow(&c.partition_key());
    }
    for c in removed {
        // They were held together a moment ago: they fit again.
        let _ = table.insert_conn(c);
    }
}

/// Connections checked for expiry per `tick` ([`ConnTable::sweep`]'s
/// budget).
pub const SWEEP_BUDGET: usize = 4096;

/// NF-local monotonic time. It is the runtime's clock plus an offset that
/// is fixed when a state snapshot is imported, so that the importing NF's
/// clock continues from the exporter's and idle ages carry over.
#[derive(Clone, Copy, Debug, Default)]
pub struct StateClock {
    offset: u64,
    /// Exporter's time to continue from, applied at the next `now`.
    pending: Option<u64>,
    last: u64,
    /// While statelets are installed: `Some(true)` when this NF adopted
    /// the source's clock (it held nothing of its own at the first
    /// statelet), `Some(false)` when it merges into connections of its
    /// own and moves the statelets' times onto its clock instead.
    stream: Option<bool>,
}

impl StateClock {
    /// NF-local time for runtime time `runtime_ns`.
    #[inline]
    pub fn now(&mut self, runtime_ns: u64) -> u64 {
        if let Some(t) = self.pending.take() {
            self.offset = t.wrapping_sub(runtime_ns);
        }
        let n = runtime_ns.wrapping_add(self.offset);
        // Never step backwards, whatever the runtime clock does.
        if n.wrapping_sub(self.last) as i64 >= 0 {
            self.last = n;
        }
        self.last
    }

    /// The latest NF-local time, to put in a snapshot.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// Continue from `exported` (a snapshot's time) at the next `now`.
    pub fn resume_from(&mut self, exported: u64) {
        self.pending = Some(exported);
        self.last = exported;
    }

    /// For a statelet about to be installed: true if this NF follows the
    /// source's clock for this stream (decided at its first statelet:
    /// when it holds no connection of its own, `holds_nothing`), false if
    /// it keeps its own clock (a merge: jumping to the source's clock
    /// would age its own connections by the difference, or wrap them
    /// into expiry when the source's clock is behind).
    pub fn stream_adopts(&mut self, holds_nothing: bool) -> bool {
        *self.stream.get_or_insert(holds_nothing)
    }

    /// The stream's last statelet is in: the next stream decides afresh.
    pub fn end_stream(&mut self) {
        self.stream = None;
    }
}

/// Accumulates the words loaded by the touch passes of a batch so the
/// loads are kept; [`Prefetch::finish`] hands the sum to `black_box`.
///
/// Why touch passes: a table lookup per packet is a cache (and TLB) miss.
/// Plain loads in a tight loop over the whole batch, with no other work in
/// between, fit in the CPU's reorder window together, so the misses of a
/// batch overlap instead of being paid one after the other. (A prefetch
/// instruction would do the same without blocking retirement, but needs
/// `unsafe`, which this crate keeps for kernel boundaries.)
#[derive(Default)]
pub struct Prefetch(u32);

impl Prefetch {
    #[inline]
    pub fn add(&mut self, w: u32) {
        self.0 = self.0.wrapping_add(w);
    }

    #[inline]
    pub fn finish(self) {
        std::hint::black_box(self.0);
    }
}

/// Parse an IPv4 CIDR `a.b.c.d/len` (a bare address is a /32) into
/// (network, prefix length). Host bits must be zero.
pub fn parse_cidr(s: &str) -> Result<(u32, u8), String> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => {
            let len: u8 = l
                .trim()
                .parse()
                .ok()
                .filter(|l| *l <= 32)
                .ok_or_else(|| format!("`{s}`: prefix length must be 0..=32"))?;
            (a, len)
        }
        None => (s, 32),
    };
    let ip: std::net::Ipv4Addr =
        addr.trim().parse().map_err(|_| format!("`{s}`: not an IPv4 address or CIDR"))?;
    let ip = u32::from(ip);
    let mask = prefix_mask(len);
    if ip & !mask != 0 {
        return Err(format!(
            "`{s}` has host bits set; the network is {}/{len}",
            std::net::Ipv4Addr::from(ip & mask)
        ));
    }
    Ok((ip, len))
}

/// Netmask of a prefix length (0..=32).
#[inline]
pub fn prefix_mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - len.min(32))
    }
}

/// Parse a port range `lo-hi` or a single port `p` (also accepted as a YAML
/// integer by the callers) into an inclusive range.
pub fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let parse = |x: &str| -> Result<u16, String> {
        x.trim().parse::<u16>().map_err(|_| format!("`{s}`: ports are 0..=65535"))
    };
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (parse(a)?, parse(b)?),
        None => {
            let p = parse(s)?;
            (p, p)
        }
    };
    if lo > hi {
        return Err(format!("`{s}`: range start is above its end"));
    }
    Ok((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(n: u32) -> FlowKey {
        FlowKey { src: n, dst: 0x0a00_0001, src_port: n as u16, dst_port: 80, proto: PROTO_UDP }
    }

    const T: TimeoutsNs =
        TimeoutsNs { tcp_established: 100, tcp_transitory: 10, udp: 30, icmp: 20, other: 40 };

    #[test]
    fn both_keys_find_the_connection_until_it_idles_out() {
        let mut t = ConnTable::new(10);
        let k = key(1);
        let s = t.insert(k, k.reversed(), 0).unwrap();
        assert_eq!(t.lookup(&k, 5, &T), Lookup::Hit { slot: s, reply: false });
        assert_eq!(t.lookup(&k.reversed(), 30, &T), Lookup::Hit { slot: s, reply: true });
        assert!(matches!(t.lookup(&k, 31, &T), Lookup::Expired(c) if c.orig == k));
        assert_eq!(t.lookup(&k.reversed(), 31, &T), Lookup::Miss);
        assert!(t.is_empty());
    }

    #[test]
    fn full_table_and_duplicate_keys_are_refused() {
        let mut t = ConnTable::new(2);
        t.insert(key(1), key(1).reversed(), 0).unwrap();
        assert_eq!(t.insert(key(1).reversed(), key(9), 0), Err(InsertError::KeyInUse));
        t.insert(key(2), key(2).reversed(), 0).unwrap();
        assert_eq!(t.insert(key(3), key(3).reversed(), 0), Err(InsertError::Full));
    }

    #[test]
    fn tcp_timeouts_follow_the_handshake_and_close() {
        let k = FlowKey { proto: PROTO_TCP, ..key(1) };
        let mut c = Conn { orig: k, reply: k.reversed(), last_seen: 0, flags: 0 };
        c.set_tcp_state(TcpState::SynSent);
        assert_eq!(c.timeout(&T), 10);
        assert_eq!(c.track_tcp(1, true, TCP_SYN | TCP_ACK), TcpStep::To(TcpState::SynRecv));
        assert_eq!(c.timeout(&T), 10, "SYN_RECV is not established");
        assert_eq!(c.track_tcp(2, false, TCP_ACK), TcpStep::To(TcpState::Established));
        assert_eq!(c.timeout(&T), 100);
        assert_eq!(c.track_tcp(3, false, TCP_FIN | TCP_ACK), TcpStep::To(TcpState::FinWait));
        assert_eq!(c.timeout(&T), 10);
        // A snapshot without a TCP state (older format) is established.
        let old = Conn { orig: k, reply: k.reversed(), last_seen: 0, flags: SEEN_REPLY };
        assert_eq!((old.tcp_state(), old.timeout(&T)), (TcpState::Established, 100));
    }

    /// The pickup rules of Linux conntrack with `nf_conntrack_tcp_loose=1`:
    /// only a SYN or an ACK-type segment starts a connection; SYN-ACK,
    /// FIN, RST, SYN+FIN and flagless segments do not.
    #[test]
    fn tcp_pickup_like_linux() {
        use braid_packet::wire::tcp_flags::{PSH, URG};
        let new = |f| tcp_transition(TcpState::None, false, f);
        assert_eq!(new(TCP_SYN), TcpStep::To(TcpState::SynSent));
        assert_eq!(new(TCP_ACK), TcpStep::To(TcpState::Established));
        assert_eq!(new(TCP_ACK | PSH), TcpStep::To(TcpState::Established));
        for f in [
            TCP_SYN | TCP_ACK,
            TCP_RST,
            TCP_RST | TCP_ACK,
            TCP_FIN | TCP_ACK,
            TCP_FIN,
            TCP_SYN | TCP_FIN,
            TCP_SYN | TCP_RST,
            0,
            PSH,
            URG,
        ] {
            assert_eq!(new(f), TcpStep::Invalid, "flags {f:#04x}");
        }
        // A SYN in the reply direction of a picked-up (or any open)
        // connection is invalid; a SYN reopens TIME_WAIT.
        assert_eq!(tcp_transition(TcpState::Established, true, TCP_SYN), TcpStep::Invalid);
        assert_eq!(tcp_transition(TcpState::TimeWait, false, TCP_SYN), TcpStep::Reopen);
        assert_eq!(
            tcp_transition(TcpState::SynSent, true, TCP_SYN),
            TcpStep::To(TcpState::SynSent2)
        );
        assert_eq!(tcp_transition(TcpState::Established, true, TCP_SYN | TCP_ACK), TcpStep::Ignore);
    }

    #[test]
    fn sweep_removes_idle_connections_incrementally() {
        let mut t = ConnTable::new(100);
        for i in 0..50 {
            t.insert(key(i), key(i).reversed(), if i % 2 == 0 { 0 } else { 100 }).unwrap();
        }
        let mut gone = Vec::new();
        assert_eq!(t.sweep(110, &T, 20, |c| gone.push(c.orig.src)), 10);
        assert_eq!(t.sweep(110, &T, 100, |c| gone.push(c.orig.src)), 15);
        assert_eq!(t.len(), 25);
        gone.sort();
        assert_eq!(gone, (0..50).step_by(2).collect::<Vec<_>>());
        // Freed slots are reused.
        t.insert(key(1000), key(1000).reversed(), 110).unwrap();
        assert_eq!(t.iter().count(), 26);
        assert!(t.slots.len() == 50);
    }

    #[test]
    fn clock_continues_from_an_import() {
        let mut c = StateClock::default();
        assert_eq!(c.now(1_000), 1_000);
        let mut d = StateClock::default();
        d.resume_from(c.last());
        assert_eq!(d.now(7), 1_000);
        assert_eq!(d.now(17), 1_010);
        // A runtime clock going backwards does not move NF time back.
        assert_eq!(d.now(8), 1_010);
    }

    #[test]
    fn cidrs_and_port_ranges() {
        assert_eq!(parse_cidr("10.0.0.0/8"), Ok((0x0a00_0000, 8)));
        assert_eq!(parse_cidr("1.2.3.4"), Ok((0x0102_0304, 32)));
        assert_eq!(parse_cidr("0.0.0.0/0"), Ok((0, 0)));
        assert!(parse_cidr("10.0.0.1/8").unwrap_err().contains("host bits"));
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("10.0.0/8").is_err());
        assert_eq!(parse_port_range("1000-2000"), Ok((1000, 2000)));
        assert_eq!(parse_port_range("80"), Ok((80, 80)));
        assert!(parse_port_range("2-1").is_err());
        assert!(parse_port_range("70000").is_err());
    }

    #[test]
    fn parses_vlan_tagged_udp() {
        let mut f = vec![0u8; 14 + 4 + 20 + 8];
        f[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
        f[16..18].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip = 18;
        f[ip] = 0x45;
        f[ip + 2..ip + 4].copy_from_slice(&28u16.to_be_bytes());
        f[ip + 8] = 64;
        f[ip + 9] = PROTO_UDP;
        f[ip + 12..ip + 16].copy_from_slice(&[10, 0, 0, 1]);
        f[ip + 16..ip + 20].copy_from_slice(&[10, 0, 0, 2]);
        f[ip + 20..ip + 22].copy_from_slice(&1234u16.to_be_bytes());
        f[ip + 22..ip + 24].copy_from_slice(&80u16.to_be_bytes());
        f[ip + 24..ip + 26].copy_from_slice(&8u16.to_be_bytes());
        let p = braid_packet::envelope::parse(&f);
        let info = p.ipv4().expect("parsed");
        assert_eq!(info.l3, 18);
        assert_eq!(info.l4, L4::Udp { src_port: 1234, dst_port: 80, len: 8 });
        assert_eq!(flow_key(info).unwrap().reversed().src, 0x0a00_0002);
        // Truncating anywhere inside the headers is truncated, not a panic.
        for n in 0..f.len() {
            let class = braid_packet::envelope::parse(&f[..n]).class;
            assert!(matches!(class, braid_packet::envelope::Class::Truncated { .. }), "len {n}");
        }
    }

    /// The quoted packet of ICMPv6 errors: found behind extension headers,
    /// `None` for a quote too short, a non-first fragment, or another
    /// message; never a panic on any bytes after the error header.
    #[test]
    fn icmp6_error_quotes() {
        use braid_packet::wire::build::{Ext6Spec, Frame6Spec};
        let a: std::net::Ipv6Addr = "2001:db8::1".parse().unwrap();
        let b: std::net::Ipv6Addr = "2001:db8::2".parse().unwrap();
        let error = |quoted: &[u8], msg_type: u8| {
            let mut e = Frame6Spec::icmp_echo(b, a, 0, 0);
            e.payload = quoted.to_vec();
            let mut f = e.build();
            f[54] = msg_type;
            f
        };
        let key6 = |f: &[u8]| {
            let p = braid_packet::envelope::parse_dual(f);
            icmp6_error_quote(f, p.ipv6().unwrap())
        };
        let mut udp = Frame6Spec::udp((a, 1000), (b, 53), 20);
        udp.ext = vec![Ext6Spec::Plain { kind: 0, len: 8 }, Ext6Spec::Plain { kind: 60, len: 16 }];
        let q = udp.build();
        let want = FlowKey6 { src: a, dst: b, src_port: 1000, dst_port: 53, proto: PROTO_UDP };
        assert_eq!(key6(&error(&q[14..], 1)), Some(want));
        assert_eq!(key6(&error(&q[14..], 3)), Some(want));
        // Not an error type; cut inside the extension headers or ports.
        assert_eq!(key6(&error(&q[14..], 135)), None);
        assert_eq!(key6(&error(&q[14..14 + 50], 1)), None);
        assert_eq!(key6(&error(&q[14..14 + 40 + 24 + 3], 1)), None);
        let echo = Frame6Spec::icmp_echo(a, b, 77, 1).build();
        let k = key6(&error(&echo[14..], 3)).unwrap();
        assert_eq!((k.src_port, k.dst_port, k.proto), (77, 77, PROTO_ICMPV6));
        let mut later = Frame6Spec::udp((a, 1), (b, 2), 8);
        later.ext = vec![Ext6Spec::Fragment { offset: 8, more: false, ident: 1 }];
        assert_eq!(key6(&error(&later.build()[14..], 1)), None);
        for n in 0..q.len() - 14 {
            let mut cut = q[14..14 + n].to_vec();
            if let Some(x) = cut.get_mut(n / 2) {
                *x ^= 0xa5;
            }
            let _ = key6(&error(&cut, 1));
        }
    }

    proptest! {
        #[test]
        fn flow_index_behaves_like_a_map(
            ops in proptest::collection::vec((any::<bool>(), 0u32..64, any::<u32>()), 1..400),
        ) {
            // Few distinct keys so inserts, removes and probe runs collide.
            let mut idx = FlowIndex::with_capacity(4, FlowHashKey::random());
            let mut model = std::collections::HashMap::new();
            for (insert, k, v) in ops {
                let key = key(k);
                let v = v >> 1;
                if insert && !model.contains_key(&k) {
                    idx.insert(key, v);
                    model.insert(k, v);
                } else if !insert {
                    idx.remove(&key);
                    model.remove(&k);
                }
                prop_assert_eq!(idx.len, model.len());
                for probe in 0u32..64 {
                    let pk = self::key(probe);
                    prop_assert_eq!(idx.get(&pk, flow_hash(&pk, &idx.hash_key)), model.get(&probe).copied());
                }
            }
        }
    }
}
