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
//!
//! State: the connections are exported, imported and streamed for live
//! migration like the IPv4 VIP's, in a format of their own (format
//! version [`STATE_VERSION6`] of kind `loadbalancer`: the VIP, the
//! backends, the connections by client address and ports), JSON or binary
//! with a CRC-32 like every NF state; flows are keyed by
//! [`PartitionKey::five_tuple6`]. An IPv4 load balancer refuses it, and
//! this one refuses the IPv4 format, each naming the other's VIP family.

use crate::maglev::{MaglevTable, SeededMix};
use crate::statelet::MapStream;
use crate::{DropReason, Encoding, FlowScope, FlowStream, NfState, PartitionKey, StateError};
use crate::{NfSpec, Statelet};
use braid_packet::envelope::{self, Class, L3Kind, L4};
use braid_packet::flow::FiveTuple6;
use braid_packet::wire::{checksum, ip_proto};
use std::collections::HashMap;
use std::net::Ipv6Addr;

/// One IPv6 backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend6 {
    pub ip: Ipv6Addr,
    pub weight: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Conn6 {
    backend: Ipv6Addr,
    last_seen_ns: u64,
}

/// Format version of an IPv6 VIP's state (kind `loadbalancer`; version 1
/// is the IPv4 VIP's).
pub const STATE_VERSION6: u32 = 2;

/// One recorded IPv6 connection, as exported.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Conn6Entry {
    pub client: Ipv6Addr,
    pub client_port: u16,
    pub vip_port: u16,
    pub proto: u8,
    pub backend: Ipv6Addr,
    pub last_seen_ns: u64,
}

impl Conn6Entry {
    fn of(t: &FiveTuple6, c: &Conn6) -> Conn6Entry {
        Conn6Entry {
            client: t.src,
            client_port: t.src_port,
            vip_port: t.dst_port,
            proto: t.proto,
            backend: c.backend,
            last_seen_ns: c.last_seen_ns,
        }
    }
}

/// The exported state of an IPv6 VIP.
#[derive(serde::Serialize, serde::Deserialize)]
struct Lb6State {
    vip: Ipv6Addr,
    backends: Vec<Backend6>,
    conns: Vec<Conn6Entry>,
    conn_overflow: u64,
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
    /// The Maglev table size (kept to rebuild the table on import).
    table_size: usize,
    /// Live migration: connections whose entry changed, and the walk.
    stream: MapStream<FiveTuple6>,
    /// The NF kind's static description (for state errors and encoding).
    spec: &'static NfSpec,
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
        spec: &'static NfSpec,
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
            table_size: 0,
            stream: MapStream::default(),
            spec,
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
        let stream = &mut self.stream;
        self.conns.retain(|t, c| {
            let keep = ips.binary_search(&c.backend).is_ok();
            if !keep {
                stream.note(*t);
            }
            keep
        });
        self.table_size = table_size;
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
        let stream = &mut self.stream;
        self.conns.retain(|t, c| {
            let keep = now_ns.saturating_sub(c.last_seen_ns) < idle;
            if !keep {
                stream.note(*t);
            }
            keep
        });
        self.last_sweep_ns = now_ns;
    }

    fn backend_for(&mut self, t: &FiveTuple6, now: u64) -> Option<Ipv6Addr> {
        self.stream.note(*t);
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
                    self.stream.note(key);
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

/// State export and import of an IPv6 VIP (the `loadbalancer` NF's
/// `export_scoped`, `import_state`, `import_merge` delegate here).
impl Lb6 {
    pub(crate) fn export_scoped(&self, scope: &FlowScope, encoding: Encoding) -> NfState {
        let mut conns: Vec<Conn6Entry> = self
            .conns
            .iter()
            .filter(|(t, _)| scope.contains(&PartitionKey::five_tuple6(**t)))
            .map(|(t, c)| Conn6Entry::of(t, c))
            .collect();
        conns.sort_by_key(|c| (c.client, c.client_port, c.vip_port, c.proto));
        let s = Lb6State {
            vip: self.vip,
            backends: self.backends.clone(),
            conns,
            // A statistic of this instance: only the whole export has it.
            conn_overflow: if *scope == FlowScope::All { self.conn_overflow } else { 0 },
        };
        NfState::encode_as(encoding, self.spec.name, STATE_VERSION6, &s)
    }

    /// Replace the connections and backends with a snapshot's; on error
    /// nothing changes.
    pub(crate) fn import_state(&mut self, state: &NfState) -> Result<(), StateError> {
        let s = self.decode_for_this_vip(state)?;
        if s.conns.len() > self.max_conns {
            return Err(StateError::Corrupt(format!(
                "{} connections exceed max_connections {}",
                s.conns.len(),
                self.max_conns
            )));
        }
        for (i, b) in s.backends.iter().enumerate() {
            let why = if b.ip == self.vip {
                "is the VIP itself"
            } else if s.backends[..i].iter().any(|o| o.ip == b.ip) {
                "is listed twice"
            } else if b.weight == 0 {
                "has weight 0"
            } else {
                continue;
            };
            return Err(StateError::Corrupt(format!("backend {} {why}", b.ip)));
        }
        // Built aside first so that an error changes nothing.
        let mut next =
            Lb6::new(self.vip, self.port, self.reverse, self.idle_ns, self.max_conns, self.spec);
        next.conns = HashMap::with_hasher(self.conns.hasher().clone());
        next.last_sweep_ns = self.last_sweep_ns;
        next.conn_overflow = s.conn_overflow;
        next.set_backends(s.backends, self.table_size)
            .map_err(|e| StateError::Corrupt(e.to_string()))?;
        next.check_backends(&s.conns).map_err(StateError::Corrupt)?;
        for c in &s.conns {
            next.conns.insert(
                next.tuple_of(c),
                Conn6 { backend: c.backend, last_seen_ns: c.last_seen_ns },
            );
        }
        *self = next;
        Ok(())
    }

    /// Add a snapshot's connections to those held, keeping this instance's
    /// backends (every imported connection must use one) and counters.
    pub(crate) fn import_merge(&mut self, state: &NfState) -> Result<(), StateError> {
        let s = self.decode_for_this_vip(state)?;
        self.check_backends(&s.conns).map_err(StateError::Conflict)?;
        let added = s.conns.iter().filter(|c| !self.conns.contains_key(&self.tuple_of(c))).count();
        let total = self.conns.len() + added;
        if total > self.max_conns {
            return Err(StateError::Capacity { total, max: self.max_conns });
        }
        for c in &s.conns {
            self.conns.insert(
                self.tuple_of(c),
                Conn6 { backend: c.backend, last_seen_ns: c.last_seen_ns },
            );
        }
        Ok(())
    }

    /// The forward 5-tuple (client to VIP) of flow `key`, if one end of it
    /// is the VIP.
    fn forward_tuple(&self, key: &PartitionKey) -> Option<FiveTuple6> {
        let (lo, hi, proto) = key.flow6_endpoints()?;
        let (client, vip_end) = if hi.0 == self.vip {
            (lo, hi)
        } else if lo.0 == self.vip {
            (hi, lo)
        } else {
            return None;
        };
        Some(FiveTuple6 {
            src: client.0,
            dst: self.vip,
            proto,
            src_port: client.1,
            dst_port: vip_end.1,
        })
    }

    /// A state of this NF kind for this VIP, or a clear refusal.
    fn decode_for_this_vip(&self, state: &NfState) -> Result<Lb6State, StateError> {
        if state.kind == self.spec.name && state.version == 1 {
            return Err(StateError::Corrupt(format!(
                "state is of an IPv4 VIP (format 1); this load balancer serves the IPv6 VIP {}",
                self.vip
            )));
        }
        let s: Lb6State = state.decode(self.spec.name, STATE_VERSION6)?;
        if s.vip != self.vip {
            return Err(StateError::Corrupt(format!(
                "state is for VIP {}, this load balancer serves {}",
                s.vip, self.vip
            )));
        }
        Ok(s)
    }

    /// Every connection uses one of this instance's backends.
    fn check_backends(&self, conns: &[Conn6Entry]) -> Result<(), String> {
        match conns.iter().find(|c| self.backend_ips.binary_search(&c.backend).is_err()) {
            Some(c) => Err(format!(
                "connection from [{}]:{} uses unknown backend {}",
                c.client, c.client_port, c.backend
            )),
            None => Ok(()),
        }
    }

    /// The forward 5-tuple (client to VIP) of an exported connection.
    fn tuple_of(&self, c: &Conn6Entry) -> FiveTuple6 {
        FiveTuple6 {
            src: c.client,
            dst: self.vip,
            proto: c.proto,
            src_port: c.client_port,
            dst_port: c.vip_port,
        }
    }
}

/// Streaming an IPv6 VIP's connections during a live migration, as the
/// IPv4 VIP's ([`crate::statelet`]): the backend set is configuration,
/// the same on both instances.
impl FlowStream for Lb6 {
    fn record_changes(&mut self, on: bool) {
        self.stream.set(on.then(|| self.conns.keys().copied().collect()));
    }

    fn take_changes(&mut self, out: &mut Vec<PartitionKey>) {
        self.stream.take(out, PartitionKey::five_tuple6);
    }

    fn changes_waiting(&self) -> usize {
        self.stream.waiting()
    }

    fn export_from(&self, cursor: &mut usize, max: usize) -> Option<Statelet> {
        let keys = self.stream.walk(cursor, max)?;
        let keys: Vec<PartitionKey> = keys.iter().map(|t| PartitionKey::five_tuple6(*t)).collect();
        Some(self.export_flows(&keys))
    }

    fn export_flows(&self, keys: &[PartitionKey]) -> Statelet {
        let conns = keys
            .iter()
            .filter_map(|k| self.forward_tuple(k))
            .filter_map(|t| Some(Conn6Entry::of(&t, self.conns.get(&t)?)))
            .collect();
        let s = Lb6State { vip: self.vip, backends: Vec::new(), conns, conn_overflow: 0 };
        let state = NfState::encode_as(Encoding::Binary, self.spec.name, STATE_VERSION6, &s);
        Statelet { keys: keys.to_vec(), state }
    }

    fn install(&mut self, statelet: &Statelet) -> Result<(), StateError> {
        let s = self.decode_for_this_vip(&statelet.state)?;
        self.check_backends(&s.conns).map_err(StateError::Corrupt)?;
        let key_set = statelet.key_set();
        let named = |c: &Conn6Entry| key_set.contains(&PartitionKey::five_tuple6(self.tuple_of(c)));
        if let Some(c) = s.conns.iter().find(|c| !named(c)) {
            return Err(StateError::Corrupt(format!(
                "statelet connection from [{}]:{} is not one of the flows it names",
                c.client, c.client_port
            )));
        }
        let cleared: Vec<FiveTuple6> = statelet
            .keys
            .iter()
            .filter_map(|k| self.forward_tuple(k))
            .filter(|t| self.conns.contains_key(t))
            .collect();
        let total = self.conns.len() - cleared.len() + s.conns.len();
        if total > self.max_conns {
            return Err(StateError::Capacity { total, max: self.max_conns });
        }
        for t in &cleared {
            self.conns.remove(t);
        }
        for c in &s.conns {
            self.conns.insert(
                self.tuple_of(c),
                Conn6 { backend: c.backend, last_seen_ns: c.last_seen_ns },
            );
        }
        Ok(())
    }

    fn held_keys(&self, out: &mut Vec<PartitionKey>) {
        out.extend(self.conns.keys().map(|t| PartitionKey::five_tuple6(*t)));
    }

    fn len(&self) -> usize {
        self.conns.len()
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
