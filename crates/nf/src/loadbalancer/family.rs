//! What differs between an IPv4 and an IPv6 `loadbalancer`: how a frame
//! is parsed into the flow it belongs to, how an address is rewritten in
//! it, how an address keys the Maglev table and how a flow keys the
//! partition of live migration and scale-out. [`LbAddr`] is that
//! difference; everything else (connection table, backend choice, expiry,
//! state export, import and streaming) is written once, over `A: LbAddr`,
//! in [`super`].

use crate::{DropReason, PartitionKey};
use braid_packet::envelope::{self, Class, L3Kind, L4};
use braid_packet::flow::{FiveTuple, FiveTuple6};
use braid_packet::wire::{checksum, ip_proto};
use std::fmt::{Debug, Display};
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The 5-tuple of a flow of either family, in the balancer's logic (the
/// connection table keys it by the family's [`LbAddr::Key`]). ICMP echo carries its identifier in both ports, as the envelope's
/// tuples do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow<A> {
    pub src: A,
    pub dst: A,
    pub proto: u8,
    pub src_port: u16,
    pub dst_port: u16,
}

impl<A: LbAddr> Flow<A> {
    /// The flow of the other direction with `dst` as its destination: the
    /// forward flow (client to `dst`) a reply from a backend answers.
    #[inline]
    pub fn reply_to(&self, dst: A) -> Flow<A> {
        Flow {
            src: self.dst,
            dst,
            proto: self.proto,
            src_port: self.dst_port,
            dst_port: self.src_port,
        }
    }
}

/// `Flow` to and from the envelope's 5-tuple of family `$addr` (the same
/// fields).
macro_rules! tuple_conversions {
    ($tuple:ident, $addr:ty) => {
        impl From<$tuple> for Flow<$addr> {
            #[inline]
            fn from(t: $tuple) -> Self {
                let $tuple { src, dst, proto, src_port, dst_port } = t;
                Flow { src, dst, proto, src_port, dst_port }
            }
        }

        impl From<Flow<$addr>> for $tuple {
            #[inline]
            fn from(f: Flow<$addr>) -> Self {
                let Flow { src, dst, proto, src_port, dst_port } = f;
                $tuple { src, dst, proto, src_port, dst_port }
            }
        }
    };
}

tuple_conversions!(FiveTuple, Ipv4Addr);
tuple_conversions!(FiveTuple6, Ipv6Addr);

/// What the envelope says a frame is, as far as the balancer cares.
pub enum Inspected<A: LbAddr> {
    /// Not of this family (or not parsed past layer 2): passes.
    Pass,
    /// Dropped whatever it is addressed to (broken headers).
    Drop(DropReason),
    /// A packet of this family (`fragment`: a fragment of one).
    Packet(Seen<A>),
}

/// A packet of the balancer's family: its flow and where its headers are.
pub struct Seen<A: LbAddr> {
    pub flow: Flow<A>,
    /// The same flow as the connection table's key (both come from the one
    /// envelope tuple: no conversion on the fast path).
    pub key: A::Key,
    /// Offset of the IP header.
    pub l3: usize,
    /// Offset of the transport header.
    pub l4: usize,
    pub fragment: bool,
    /// An ICMP (ICMPv6) echo request or reply, balanced by its identifier.
    pub echo: bool,
}

/// The two `(address, port)` ends of a flow key (lower first) and its
/// protocol.
pub type KeyEndpoints<A> = ((A, u16), (A, u16), u8);

/// An address family the load balancer serves, implemented by its address
/// type.
pub trait LbAddr:
    Copy
    + Ord
    + Hash
    + Debug
    + Display
    + Into<IpAddr>
    + serde::Serialize
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// `IPv4` or `IPv6`, for messages.
    const FAMILY: &'static str;
    /// The format version of this family's exported state (kind
    /// `loadbalancer`).
    const STATE_VERSION: u32;

    /// The connection table's key: the envelope's 5-tuple of this family
    /// ([`FiveTuple`], [`FiveTuple6`]), so the table hashes and compares
    /// keys exactly as every other flow table of the family does (the
    /// IPv4 fast path measured slower with [`Flow`] itself as the key;
    /// docs/benchmarks.md).
    type Key: Copy + Eq + Hash + Debug + Send + From<Flow<Self>> + Into<Flow<Self>>;

    /// This family's address, if `ip` is one.
    fn from_ip(ip: IpAddr) -> Option<Self>;

    /// Parse `frame` with the envelope this family's policy reads.
    fn inspect(frame: &[u8]) -> Inspected<Self>;

    /// Replace one address of a packet (`src`: the source, else the
    /// destination), `old` by `new`, updating every checksum that covers
    /// it. Offsets come from [`LbAddr::inspect`], which validated them.
    fn rewrite(frame: &mut [u8], r: &Rewrite<Self>);

    /// The backend's key in the Maglev table.
    fn maglev_key(self) -> u64;

    /// The unkeyed hash of a flow's 5-tuple, for the Maglev lookup (every
    /// balancer picks the same backend for a flow).
    fn flow_hash(key: &Self::Key) -> u64;

    /// The partition key of the connection `key` belongs to.
    fn partition_key(key: Self::Key) -> PartitionKey;

    /// The endpoints (lower first) and protocol of a partition key of
    /// this family; `None` for any other key.
    fn key_endpoints(key: &PartitionKey) -> Option<KeyEndpoints<Self>>;
}

/// An address rewrite decided for one packet.
#[derive(Clone, Copy, Debug)]
pub struct Rewrite<A> {
    pub l3: usize,
    pub l4: usize,
    pub proto: u8,
    /// The source address (a reply), else the destination (forward).
    pub src: bool,
    pub old: A,
    pub new: A,
}

/// The offset and kind of the transport checksum that covers the IP
/// addresses (pseudo-header), if the protocol has one: `(offset, is UDP)`.
#[inline]
fn transport_checksum(proto: u8, l4: usize) -> Option<(usize, bool)> {
    match proto {
        ip_proto::TCP => Some((l4 + 16, false)),
        ip_proto::UDP => Some((l4 + 6, true)),
        _ => None,
    }
}

#[inline]
fn read_u16(frame: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([frame[at], frame[at + 1]])
}

/// The envelope's class split as the balancer's policy needs it: a
/// packet (with whether it is a fragment), or what happens to it.
#[inline]
fn class_policy<A: LbAddr>(class: Class) -> Result<bool, Inspected<A>> {
    match class {
        Class::Ok => Ok(false),
        Class::Fragment { .. } => Ok(true),
        Class::Unsupported { .. } => Err(Inspected::Pass),
        Class::Truncated { .. } | Class::Malformed { .. } => {
            Err(Inspected::Drop(DropReason::Malformed))
        }
    }
}

impl LbAddr for Ipv4Addr {
    const FAMILY: &'static str = "IPv4";
    const STATE_VERSION: u32 = 1;
    type Key = FiveTuple;

    fn from_ip(ip: IpAddr) -> Option<Ipv4Addr> {
        match ip {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        }
    }

    #[inline]
    fn inspect(frame: &[u8]) -> Inspected<Ipv4Addr> {
        // IPv4 only: what is not IPv4 is `Unsupported` and passes.
        let parsed = envelope::parse(frame);
        let fragment = match class_policy(parsed.class) {
            Ok(fragment) => fragment,
            Err(other) => return other,
        };
        let ip = parsed.ip;
        let t = ip.tuple();
        Inspected::Packet(Seen {
            flow: t.into(),
            key: t,
            l3: ip.l3,
            l4: ip.l4_offset(),
            fragment,
            // The echo identifier is in both ports; an echo with
            // identifier 0 has nothing to balance on.
            echo: t.proto == ip_proto::ICMP && t.src_port != 0,
        })
    }

    #[inline]
    fn rewrite(frame: &mut [u8], r: &Rewrite<Ipv4Addr>) {
        let (old, new) = (u32::from(r.old), u32::from(r.new));
        let at = r.l3 + if r.src { 12 } else { 16 };
        frame[at..at + 4].copy_from_slice(&new.to_be_bytes());
        let ck = read_u16(frame, r.l3 + 10);
        frame[r.l3 + 10..r.l3 + 12]
            .copy_from_slice(&checksum::update32(ck, old, new).to_be_bytes());
        let Some((ck_at, udp)) = transport_checksum(r.proto, r.l4) else {
            return;
        };
        let ck = read_u16(frame, ck_at);
        // A UDP checksum of 0 (none) stays 0.
        let ck = if udp {
            checksum::update32_udp(ck, old, new)
        } else {
            checksum::update32(ck, old, new)
        };
        frame[ck_at..ck_at + 2].copy_from_slice(&ck.to_be_bytes());
    }

    fn maglev_key(self) -> u64 {
        u64::from(u32::from(self))
    }

    #[inline]
    fn flow_hash(key: &FiveTuple) -> u64 {
        key.hash()
    }

    fn partition_key(key: FiveTuple) -> PartitionKey {
        PartitionKey::five_tuple(key)
    }

    fn key_endpoints(key: &PartitionKey) -> Option<KeyEndpoints<Ipv4Addr>> {
        let (lo, hi, proto) = key.flow_endpoints()?;
        Some(((lo.0.into(), lo.1), (hi.0.into(), hi.1), proto))
    }
}

impl LbAddr for Ipv6Addr {
    const FAMILY: &'static str = "IPv6";
    const STATE_VERSION: u32 = 2;
    type Key = FiveTuple6;

    fn from_ip(ip: IpAddr) -> Option<Ipv6Addr> {
        match ip {
            IpAddr::V6(a) => Some(a),
            IpAddr::V4(_) => None,
        }
    }

    #[inline]
    fn inspect(frame: &[u8]) -> Inspected<Ipv6Addr> {
        // Both families parsed: broken IPv4 headers are dropped as broken
        // IPv6 ones are (the policy table of docs/nfs.md), whole IPv4
        // passes.
        let parsed = envelope::parse_dual(frame);
        let fragment = match class_policy(parsed.class) {
            Ok(fragment) => fragment,
            Err(other) => return other,
        };
        if parsed.l3 != L3Kind::Ipv6 {
            return Inspected::Pass;
        }
        let ip = parsed.ip6;
        let t = ip.tuple();
        Inspected::Packet(Seen {
            flow: t.into(),
            key: t,
            l3: ip.l3,
            l4: ip.l4_offset(),
            fragment,
            echo: t.proto == ip_proto::ICMPV6 && matches!(ip.l4, L4::IcmpEcho { .. }),
        })
    }

    #[inline]
    fn rewrite(frame: &mut [u8], r: &Rewrite<Ipv6Addr>) {
        // No header checksum in IPv6; the TCP, UDP and ICMPv6 checksums
        // cover the addresses (pseudo-header).
        let at = r.l3 + if r.src { 8 } else { 24 };
        frame[at..at + 16].copy_from_slice(&r.new.octets());
        let (ck_at, udp) = match (r.proto, transport_checksum(r.proto, r.l4)) {
            (_, Some(found)) => found,
            (ip_proto::ICMPV6, None) => (r.l4 + 2, false),
            _ => return,
        };
        let mut ck = checksum::update128(read_u16(frame, ck_at), r.old, r.new);
        if udp {
            // Mandatory over IPv6: a computed 0 goes out as 0xFFFF.
            ck = checksum::udp_on_wire(ck);
        }
        frame[ck_at..ck_at + 2].copy_from_slice(&ck.to_be_bytes());
    }

    fn maglev_key(self) -> u64 {
        // The address folded to 64 bits (both halves count).
        let a = u128::from(self);
        (a >> 64) as u64 ^ (a as u64).rotate_left(32)
    }

    #[inline]
    fn flow_hash(key: &FiveTuple6) -> u64 {
        key.hash()
    }

    fn partition_key(key: FiveTuple6) -> PartitionKey {
        PartitionKey::five_tuple6(key)
    }

    fn key_endpoints(key: &PartitionKey) -> Option<KeyEndpoints<Ipv6Addr>> {
        key.flow6_endpoints()
    }
}
