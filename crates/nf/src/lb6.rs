//! The IPv6 side of `loadbalancer`: a VIP that is an IPv6 address, IPv6
//! backends, Maglev over the IPv6 5-tuple (after the extension headers),
//! the destination (forward) or source (reply) rewritten with the TCP, UDP
//! or ICMPv6 checksum updated incrementally (IPv6 has no header checksum;
//! the pseudo-header covers the addresses).
//!
//! The policy mirrors the IPv4 one (docs/nfs.md, loadbalancer): TCP, UDP
//! and ICMPv6 echo to the VIP are balanced (by `port` if set), fragments
//! and other protocols to the VIP are dropped `unsupported`, broken headers
//! `malformed`, everything else (IPv4 included) passes.

use crate::maglev::{MaglevTable, SeededMix};
use crate::DropReason;
use braid_packet::envelope::{self, Class, L3Kind, L4};
use braid_packet::flow::FiveTuple6;
use braid_packet::wire::{checksum, ip_proto};
use std::collections::HashMap;
use std::net::Ipv6Addr;

/// One IPv6 backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend6 {
    pub ip: Ipv6Addr,
    pub weight: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Conn6 {
    backend: Ipv6Addr,
    last_seen_ns: u64,
}

/// The IPv6 engine of a `loadbalancer` whose VIP is IPv6.
#[derive(Debug)]
pub(crate) struct Lb6 {
    pub(crate) vip: Ipv6Addr,
    port: Option<u16>,
    reverse: bool,
    idle_ns: u64,
    max_conns: usize,
    pub(crate) backends: Vec<Backend6>,
    backend_ips: Vec<Ipv6Addr>,
    table: MaglevTable,
    conns: HashMap<FiveTuple6, Conn6, SeededMix>,
    pub(crate) conn_overflow: u64,
    last_sweep_ns: u64,
}

/// What to do with one packet.
pub(crate) enum Action6 {
    Pass,
    Drop(DropReason),
    Rewrite { l3: usize, l4: usize, proto: u8, src: bool, old: Ipv6Addr, new: Ipv6Addr },
}

impl Lb6 {
    pub(crate) fn new(
        vip: Ipv6Addr,
        port: Option<u16>,
        reverse: bool,
        idle_ns: u64,
        max_conns: usize,
    ) -> Lb6 {
        Lb6 {
            vip,
            port,
            reverse,
            idle_ns,
            max_conns,
            backends: Vec::new(),
            backend_ips: Vec::new(),
            table: MaglevTable::default(),
            conns: HashMap::with_hasher(SeededMix::random()),
            conn_overflow: 0,
            last_sweep_ns: 0,
        }
    }

    /// Replace the backends (the caller checked duplicates and the VIP):
    /// rebuild the Maglev table, forget connections to removed backends.
    pub(crate) fn set_backends(
        &mut self,
        backends: Vec<Backend6>,
        table_size: usize,
    ) -> Result<(), crate::maglev::MaglevError> {
        // Maglev keys: the address folded to 64 bits (both halves count).
        let keys: Vec<(u64, u32)> = backends
            .iter()
            .map(|b| {
                let a = u128::from(b.ip);
                ((a >> 64) as u64 ^ (a as u64).rotate_left(32), b.weight)
            })
            .collect();
        let table = MaglevTable::build(&keys, table_size)?;
        let mut ips: Vec<Ipv6Addr> = backends.iter().map(|b| b.ip).collect();
        ips.sort_unstable();
        self.conns.retain(|_, c| ips.binary_search(&c.backend).is_ok());
        self.table = table;
        self.backends = backends;
        self.backend_ips = ips;
        Ok(())
    }

    pub(crate) fn connections(&self) -> usize {
        self.conns.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    pub(crate) fn sweep(&mut self, now_ns: u64) {
        let idle = self.idle_ns;
        self.conns.retain(|_, c| now_ns.saturating_sub(c.last_seen_ns) < idle);
        self.last_sweep_ns = now_ns;
    }

    fn backend_for(&mut self, t: &FiveTuple6, now: u64) -> Option<Ipv6Addr> {
        if let Some(c) = self.conns.get_mut(t) {
            if now.saturating_sub(c.last_seen_ns) < self.idle_ns {
                c.last_seen_ns = now;
                return Some(c.backend);
            }
        }
        let backend = self.backends[self.table.lookup(t.hash())?].ip;
        if self.conns.len() >= self.max_conns && !self.conns.contains_key(t) {
            if now.saturating_sub(self.last_sweep_ns) >= 1_000_000 {
                self.sweep(now);
            }
            if self.conns.len() >= self.max_conns {
                self.conn_overflow += 1;
                return Some(backend);
            }
        }
        self.conns.insert(*t, Conn6 { backend, last_seen_ns: now });
        Some(backend)
    }

    pub(crate) fn decide(&mut self, frame: &[u8], now: u64) -> Action6 {
        let parsed = envelope::parse_dual(frame);
        let fragment = match parsed.class {
            Class::Ok => false,
            Class::Fragment { .. } => true,
            Class::Unsupported { .. } => return Action6::Pass,
            Class::Truncated { .. } | Class::Malformed { .. } => {
                return Action6::Drop(DropReason::Malformed)
            }
        };
        if parsed.l3 != L3Kind::Ipv6 {
            return Action6::Pass;
        }
        let ip = parsed.ip6;
        let t = ip.tuple();
        let balanced_proto = matches!(t.proto, ip_proto::TCP | ip_proto::UDP);
        if t.dst == self.vip {
            if balanced_proto && self.port.is_some_and(|p| p != t.dst_port) {
                return Action6::Pass;
            }
            if fragment {
                return Action6::Drop(DropReason::Unsupported);
            }
            let echo = t.proto == ip_proto::ICMPV6 && matches!(ip.l4, L4::IcmpEcho { .. });
            if !balanced_proto && !echo {
                return Action6::Drop(DropReason::Unsupported);
            }
            let Some(backend) = self.backend_for(&t, now) else {
                return Action6::Drop(DropReason::NoBackend);
            };
            return Action6::Rewrite {
                l3: ip.l3,
                l4: ip.l4_offset(),
                proto: t.proto,
                src: false,
                old: self.vip,
                new: backend,
            };
        }
        if self.reverse && !fragment && self.backend_ips.binary_search(&t.src).is_ok() {
            let mut key = t.reversed();
            key.dst = self.vip;
            if let Some(c) = self.conns.get_mut(&key) {
                if c.backend == t.src {
                    c.last_seen_ns = now;
                    return Action6::Rewrite {
                        l3: ip.l3,
                        l4: ip.l4_offset(),
                        proto: t.proto,
                        src: true,
                        old: t.src,
                        new: self.vip,
                    };
                }
            }
        }
        Action6::Pass
    }
}

/// Replace one IPv6 address of a packet and update the TCP, UDP or ICMPv6
/// checksum (their pseudo-header covers it). Offsets come from the
/// envelope, which validated the headers.
pub(crate) fn rewrite_addr6(
    frame: &mut [u8],
    l3: usize,
    l4: usize,
    proto: u8,
    src: bool,
    old: Ipv6Addr,
    new: Ipv6Addr,
) {
    let at = l3 + if src { 8 } else { 24 };
    frame[at..at + 16].copy_from_slice(&new.octets());
    let (ck_at, udp) = match proto {
        ip_proto::TCP => (l4 + 16, false),
        ip_proto::UDP => (l4 + 6, true),
        ip_proto::ICMPV6 => (l4 + 2, false),
        _ => return,
    };
    let ck = u16::from_be_bytes([frame[ck_at], frame[ck_at + 1]]);
    let mut ck = checksum::update128(ck, old, new);
    if udp {
        // Mandatory over IPv6: a computed 0 goes out as 0xFFFF.
        ck = checksum::udp_on_wire(ck);
    }
    frame[ck_at..ck_at + 2].copy_from_slice(&ck.to_be_bytes());
}
