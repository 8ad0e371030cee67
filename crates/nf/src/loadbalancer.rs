//! `loadbalancer`: spread the flows sent to a virtual IP (VIP) over
//! backends with Maglev consistent hashing, rewriting the destination
//! address (a stateful layer-4 DNAT).
//!
//! * A packet to `vip` (and to `port`, if set) is a *forward* packet. Its
//!   5-tuple is looked up in the connection table; a new flow gets the
//!   backend that the Maglev table ([`crate::maglev`]) assigns to its
//!   5-tuple hash and is recorded, so a flow keeps its backend while the
//!   backend set changes (flow affinity). The destination address is
//!   rewritten to the backend's, with the IPv4 and TCP/UDP checksums
//!   updated incrementally (the address is in the L4 pseudo-header).
//! * A packet from a backend that answers a recorded connection is a
//!   *reply*: its source address is rewritten back to the VIP, so the
//!   client sees the address it talked to (disable with `reverse: false`
//!   when replies return by another path).
//! * Everything else passes unchanged.
//!
//! Adding a backend changes the table for new flows only (Maglev moves
//! about `1/(N+1)` of the hash space to it); removing one forgets its
//! connections, and its flows move to the backends the new table gives
//! them while every other flow stays where it was. Connections idle for
//! `idle_timeout_ms` are forgotten on `tick`. The table holds at most
//! `max_connections`; when full, idle ones are swept, and if none is idle a
//! new flow is still balanced by the Maglev table but not recorded
//! (`conn_overflow` counts these): it keeps its backend unless the backend
//! set changes.
//!
//! One instance serves one address family, the VIP's: an IPv6 `vip` (with
//! IPv6 backends) balances IPv6 by the same rules (the 5-tuple after the
//! extension headers, the TCP, UDP or ICMPv6 checksum updated) and passes
//! IPv4. [`LoadBalancer<A>`] is written once over the family's address
//! type `A` ([`LbAddr`], in `loadbalancer/family.rs`: parsing, address
//! rewrite, hash keys); [`build`] picks `Ipv4Addr` or `Ipv6Addr`. Each
//! family exports, imports and streams its connections in its own format
//! version ([`LbAddr::STATE_VERSION`]: 1 for IPv4, 2 for IPv6) and refuses
//! the other's, naming both VIP families.

mod family;

pub use family::{Flow, Inspected, KeyEndpoints, LbAddr, Rewrite, Seen};

use crate::maglev::{MaglevError, MaglevTable, SeededMix};
use crate::statelet::MapStream;
use crate::{ConfigError, Context, DropReason, NetworkFunction, NfClass, NfSpec, NfState};
use crate::{Encoding, FlowScope, ParamDoc, PartitionKey, Placement, StateError};
use crate::{FlowStream, Statelet};
use braid_packet::wire::ip_proto;
use braid_packet::Batch;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub static SPEC: NfSpec = NfSpec {
    name: "loadbalancer",
    class: NfClass::Basic,
    placements: &[Placement::User],
    state: crate::StateKind::PerFlow(crate::FlowPartition::SymmetricFiveTuple),
    kernel: None,
    summary:
        "Maglev load balancer: flows to a VIP go to backends (destination rewrite), with affinity",
    params: &[
        ParamDoc {
            name: "vip",
            kind: "IPv4 or IPv6 address",
            default: None,
            help: "the virtual IP (IPv6: backends IPv6 too)",
        },
        ParamDoc {
            name: "port",
            kind: "u16",
            default: Some("none (every TCP/UDP port)"),
            help: "balance only TCP/UDP to this VIP port (ICMP echo is always balanced)",
        },
        ParamDoc {
            name: "backends",
            kind: "list of {ip: IPv4 or IPv6 (the VIP's family), weight: u32 >= 1 (default 1)}",
            default: None,
            help: "the real servers; an empty list drops VIP traffic (no_backend)",
        },
        ParamDoc {
            name: "table_size",
            kind: "prime, > number of backends, <= 4000037",
            default: Some("65537"),
            help: "Maglev lookup table size M (about 100 x backends or more)",
        },
        ParamDoc {
            name: "idle_timeout_ms",
            kind: "u64 ms, >= 1",
            default: Some("300000"),
            help: "a connection without packets for this long is forgotten",
        },
        ParamDoc {
            name: "max_connections",
            kind: "usize, >= 1",
            default: Some("262144"),
            help: "connection table size",
        },
        ParamDoc {
            name: "reverse",
            kind: "bool",
            default: Some("true"),
            help: "rewrite the source of backend replies back to the VIP",
        },
    ],
    build: |p| build(crate::params::parse(p)?),
};

/// The `loadbalancer` of `cfg`'s VIP family.
pub fn build(cfg: Config) -> Result<Box<dyn NetworkFunction>, ConfigError> {
    Ok(match cfg.vip {
        IpAddr::V4(_) => Box::new(LoadBalancer::<Ipv4Addr>::new(cfg)?),
        IpAddr::V6(_) => Box::new(LoadBalancer::<Ipv6Addr>::new(cfg)?),
    })
}

fn default_table_size() -> usize {
    65537
}
fn default_idle_ms() -> u64 {
    300_000
}
fn default_max_conns() -> usize {
    262_144
}
fn default_weight() -> u32 {
    1
}
fn default_true() -> bool {
    true
}

/// One backend; `A` is its address: the family's in the balancer and its
/// state, `IpAddr` in the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend<A> {
    pub ip: A,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

/// `loadbalancer` configuration.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub vip: IpAddr,
    #[serde(default)]
    pub port: Option<u16>,
    pub backends: Vec<Backend<IpAddr>>,
    #[serde(default = "default_table_size")]
    pub table_size: usize,
    #[serde(default = "default_idle_ms")]
    pub idle_timeout_ms: u64,
    #[serde(default = "default_max_conns")]
    pub max_connections: usize,
    #[serde(default = "default_true")]
    pub reverse: bool,
}

/// A recorded connection: the backend of a forward flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Conn<A> {
    backend: A,
    last_seen_ns: u64,
}

/// One recorded connection, as exported.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConnEntry<A> {
    pub client: A,
    pub client_port: u16,
    pub vip_port: u16,
    pub proto: u8,
    pub backend: A,
    pub last_seen_ns: u64,
}

impl<A: LbAddr> ConnEntry<A> {
    /// The table key of this connection's forward flow (client to `vip`).
    fn key(&self, vip: A) -> A::Key {
        let flow = Flow {
            src: self.client,
            dst: vip,
            proto: self.proto,
            src_port: self.client_port,
            dst_port: self.vip_port,
        };
        flow.into()
    }

    /// The exported form of connection `c` of forward flow `key`.
    fn of(key: &A::Key, c: &Conn<A>) -> ConnEntry<A> {
        let t: Flow<A> = (*key).into();
        ConnEntry {
            client: t.src,
            client_port: t.src_port,
            vip_port: t.dst_port,
            proto: t.proto,
            backend: c.backend,
            last_seen_ns: c.last_seen_ns,
        }
    }

    /// The client end, for messages (`[addr]:port` for IPv6).
    fn client_end(&self) -> SocketAddr {
        SocketAddr::new(self.client.into(), self.client_port)
    }
}

/// The exported state (whole or scoped) and the content of a statelet
/// (then without backends); format version [`LbAddr::STATE_VERSION`].
#[derive(serde::Serialize, serde::Deserialize)]
struct LbState<A> {
    vip: A,
    backends: Vec<Backend<A>>,
    conns: Vec<ConnEntry<A>>,
    conn_overflow: u64,
}

/// The flows of the connections in `state` (a statelet's), in order,
/// whichever family its format is.
pub(crate) fn entry_keys(state: &NfState) -> Result<Vec<PartitionKey>, StateError> {
    fn of<A: LbAddr>(state: &NfState) -> Result<Vec<PartitionKey>, StateError> {
        let s: LbState<A> = state.decode(SPEC.name, A::STATE_VERSION)?;
        Ok(s.conns.iter().map(|c| A::partition_key(c.key(s.vip))).collect())
    }
    if state.version == Ipv6Addr::STATE_VERSION {
        of::<Ipv6Addr>(state)
    } else {
        of::<Ipv4Addr>(state)
    }
}

/// The family whose state format is `version` (kind `loadbalancer`).
fn family_of_format(version: u32) -> Option<&'static str> {
    [(Ipv4Addr::STATE_VERSION, Ipv4Addr::FAMILY), (Ipv6Addr::STATE_VERSION, Ipv6Addr::FAMILY)]
        .into_iter()
        .find(|(v, _)| *v == version)
        .map(|(_, family)| family)
}

/// Why the backend set could not be changed (`index`: the position in the
/// new set). Nothing changes on error.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("backend {ip} is already configured")]
    Duplicate { index: usize, ip: IpAddr },
    #[error("backend {ip} is the VIP itself")]
    IsVip { index: usize, ip: IpAddr },
    #[error(transparent)]
    Table(#[from] MaglevError),
}

/// The configuration a balancer keeps (copied into the instance an import
/// builds).
#[derive(Clone, Copy, Debug)]
struct Settings<A> {
    vip: A,
    port: Option<u16>,
    reverse: bool,
    table_size: usize,
    idle_ns: u64,
    max_conns: usize,
}

/// The `loadbalancer` NF for the VIP family of address type `A`
/// (`Ipv4Addr` or `Ipv6Addr`).
#[derive(Debug)]
pub struct LoadBalancer<A: LbAddr> {
    settings: Settings<A>,
    backends: Vec<Backend<A>>,
    /// Backend addresses, sorted, to recognize replies.
    backend_ips: Vec<A>,
    table: MaglevTable,
    /// Forward-direction flow (client -> VIP) -> backend, keyed by the
    /// family's own 5-tuple type (hashed as every flow table of that family).
    conns: HashMap<A::Key, Conn<A>, SeededMix>,
    conn_overflow: u64,
    last_sweep_ns: u64,
    /// Live migration: connections whose entry changed, and the walk.
    stream: MapStream<A::Key>,
}

/// What to do with one packet.
enum Action<A> {
    Pass,
    Drop(DropReason),
    /// Rewrite the destination (forward) or source (reply) address.
    Rewrite(Rewrite<A>),
}

impl<A: LbAddr> LoadBalancer<A> {
    /// The balancer of `cfg`, whose VIP must be of family `A` ([`build`]
    /// picks the family).
    pub fn new(cfg: Config) -> Result<LoadBalancer<A>, ConfigError> {
        let Some(vip) = A::from_ip(cfg.vip) else {
            return Err(ConfigError::new(
                "vip",
                format!("{} is not an {} address", cfg.vip, A::FAMILY),
            ));
        };
        if cfg.idle_timeout_ms == 0 {
            return Err(ConfigError::new("idle_timeout_ms", "must be at least 1 ms"));
        }
        if cfg.max_connections == 0 {
            return Err(ConfigError::new("max_connections", "must be at least 1"));
        }
        let mut backends = Vec::with_capacity(cfg.backends.len());
        for (i, b) in cfg.backends.iter().enumerate() {
            let Some(ip) = A::from_ip(b.ip) else {
                let other = if b.ip.is_ipv6() { Ipv6Addr::FAMILY } else { Ipv4Addr::FAMILY };
                return Err(ConfigError::new(
                    format!("backends[{i}].ip"),
                    format!(
                        "{} is {other}, the VIP is {}: backends must be of the VIP's family",
                        b.ip,
                        A::FAMILY
                    ),
                ));
            };
            backends.push(Backend { ip, weight: b.weight });
        }
        let settings = Settings {
            vip,
            port: cfg.port,
            reverse: cfg.reverse,
            table_size: cfg.table_size,
            idle_ns: cfg.idle_timeout_ms.saturating_mul(1_000_000),
            max_conns: cfg.max_connections,
        };
        let mut lb = LoadBalancer::empty(settings, SeededMix::random());
        lb.set_backends(backends).map_err(|e| {
            let field = |index: usize, what: &str| format!("backends[{index}].{what}");
            match e {
                BackendError::IsVip { index, .. } => {
                    ConfigError::new(field(index, "ip"), "is the VIP itself")
                }
                BackendError::Duplicate { index, .. } => {
                    ConfigError::new(field(index, "ip"), "duplicate backend")
                }
                BackendError::Table(MaglevError::ZeroWeight { index }) => {
                    ConfigError::new(field(index, "weight"), "must be >= 1")
                }
                BackendError::Table(
                    e @ (MaglevError::NotPrime(_) | MaglevError::SizeOutOfRange { .. }),
                ) => ConfigError::new("table_size", e.to_string()),
                BackendError::Table(e) => ConfigError::new("backends", e.to_string()),
            }
        })?;
        Ok(lb)
    }

    /// A balancer of `settings` without backends or connections, its
    /// connection table hashed by `hasher`.
    fn empty(settings: Settings<A>, hasher: SeededMix) -> LoadBalancer<A> {
        LoadBalancer {
            settings,
            backends: Vec::new(),
            backend_ips: Vec::new(),
            table: MaglevTable::default(),
            conns: HashMap::with_hasher(hasher),
            conn_overflow: 0,
            last_sweep_ns: 0,
            stream: MapStream::default(),
        }
    }

    /// Replace the backend set: rebuild the Maglev table and forget the
    /// connections of backends that are gone.
    pub fn set_backends(&mut self, backends: Vec<Backend<A>>) -> Result<(), BackendError> {
        for (index, b) in backends.iter().enumerate() {
            if b.ip == self.settings.vip {
                return Err(BackendError::IsVip { index, ip: b.ip.into() });
            }
            if backends[..index].iter().any(|o| o.ip == b.ip) {
                return Err(BackendError::Duplicate { index, ip: b.ip.into() });
            }
        }
        let keys: Vec<(u64, u32)> =
            backends.iter().map(|b| (b.ip.maglev_key(), b.weight)).collect();
        let table = MaglevTable::build(&keys, self.settings.table_size)?;
        let mut ips: Vec<A> = backends.iter().map(|b| b.ip).collect();
        ips.sort_unstable();
        let stream = &mut self.stream;
        self.conns.retain(|t, c| {
            let keep = ips.binary_search(&c.backend).is_ok();
            if !keep {
                stream.note(*t);
            }
            keep
        });
        self.table = table;
        self.backends = backends;
        self.backend_ips = ips;
        Ok(())
    }

    /// Add one backend.
    pub fn add_backend(&mut self, b: Backend<A>) -> Result<(), BackendError> {
        let mut v = self.backends.clone();
        v.push(b);
        self.set_backends(v)
    }

    /// Remove a backend; its connections move. Returns false if unknown.
    pub fn remove_backend(&mut self, ip: A) -> Result<bool, BackendError> {
        let v: Vec<Backend<A>> = self.backends.iter().copied().filter(|b| b.ip != ip).collect();
        if v.len() == self.backends.len() {
            return Ok(false);
        }
        self.set_backends(v)?;
        Ok(true)
    }

    pub fn backends(&self) -> &[Backend<A>] {
        &self.backends
    }

    /// Recorded connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// New flows that could not be recorded because the table was full.
    pub fn conn_overflow(&self) -> u64 {
        self.conn_overflow
    }

    /// Forget connections idle for longer than the timeout.
    pub fn sweep(&mut self, now_ns: u64) {
        let idle = self.settings.idle_ns;
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

    /// The backend for a forward flow, recording it. Always inlined, as
    /// [`Self::decide`] into the packet loop: measured (callgrind,
    /// docs/benchmarks.md, "loadbalancer: one state code"), left to the
    /// compiler the generic code kept the table lookup or this function out
    /// of line and cost up to 17 (IPv4) and 21 (IPv6) instructions per
    /// packet more than the separate per-family code did; inlined, IPv4
    /// costs 31 fewer and IPv6 the same.
    #[inline(always)]
    fn backend_for(&mut self, key: A::Key, now: u64) -> Option<A> {
        self.stream.note(key);
        if let Some(c) = self.conns.get_mut(&key) {
            if now.saturating_sub(c.last_seen_ns) < self.settings.idle_ns {
                c.last_seen_ns = now;
                return Some(c.backend);
            }
        }
        let backend = self.backends[self.table.lookup(A::flow_hash(&key))?].ip;
        if self.conns.len() >= self.settings.max_conns && !self.conns.contains_key(&key) {
            if now.saturating_sub(self.last_sweep_ns) >= 1_000_000 {
                self.sweep(now);
            }
            if self.conns.len() >= self.settings.max_conns {
                self.conn_overflow += 1;
                return Some(backend);
            }
        }
        self.conns.insert(key, Conn { backend, last_seen_ns: now });
        Some(backend)
    }

    /// What to do with one packet (always inlined: see [`Self::backend_for`]).
    #[inline(always)]
    fn decide(&mut self, frame: &[u8], now: u64) -> Action<A> {
        // The envelope policy of `loadbalancer` (docs/nfs.md): packets of
        // the VIP's family to the VIP are balanced (fragments dropped,
        // below); other frames pass; broken headers are dropped.
        let Seen { flow: t, key, l3, l4, fragment, echo } = match A::inspect(frame) {
            Inspected::Packet(seen) => seen,
            Inspected::Pass => return Action::Pass,
            Inspected::Drop(reason) => return Action::Drop(reason),
        };
        let vip = self.settings.vip;
        let balanced_proto = matches!(t.proto, ip_proto::TCP | ip_proto::UDP);
        if t.dst == vip {
            if balanced_proto && self.settings.port.is_some_and(|p| p != t.dst_port) {
                return Action::Pass;
            }
            if fragment {
                // Only the first fragment has ports; the others could not
                // follow it to the same backend.
                return Action::Drop(DropReason::Unsupported);
            }
            // ICMP echo carries its identifier in both ports; other ICMP
            // messages (and other protocols) have none to balance on.
            if !balanced_proto && !echo {
                return Action::Drop(DropReason::Unsupported);
            }
            let Some(backend) = self.backend_for(key, now) else {
                return Action::Drop(DropReason::NoBackend);
            };
            return Action::Rewrite(Rewrite {
                l3,
                l4,
                proto: t.proto,
                src: false,
                old: vip,
                new: backend,
            });
        }
        if self.settings.reverse && !fragment && self.backend_ips.binary_search(&t.src).is_ok() {
            let key = A::Key::from(t.reply_to(vip));
            if let Some(c) = self.conns.get_mut(&key) {
                if c.backend == t.src {
                    c.last_seen_ns = now;
                    self.stream.note(key);
                    return Action::Rewrite(Rewrite {
                        l3,
                        l4,
                        proto: t.proto,
                        src: true,
                        old: t.src,
                        new: vip,
                    });
                }
            }
        }
        Action::Pass
    }
}

impl<A: LbAddr> NetworkFunction for LoadBalancer<A> {
    fn spec(&self) -> &'static NfSpec {
        &SPEC
    }

    fn keeps_lengths(&self) -> bool {
        true
    }

    fn process(&mut self, batch: &mut Batch, cx: &mut Context<'_>) {
        let now = cx.now_ns;
        batch.retain_mut(|p| match self.decide(p.data(), now) {
            Action::Pass => true,
            Action::Drop(r) => {
                cx.drop_packet(r);
                false
            }
            Action::Rewrite(r) => {
                A::rewrite(p.data_mut(), &r);
                true
            }
        });
    }

    fn tick(&mut self, _out: &mut Batch, cx: &mut Context<'_>) {
        self.sweep(cx.now_ns);
    }

    fn wants_tick(&self) -> bool {
        !self.conns.is_empty()
    }

    fn export_scoped(&self, scope: &FlowScope, encoding: Encoding) -> Result<NfState, StateError> {
        let mut conns: Vec<ConnEntry<A>> = self
            .conns
            .iter()
            .filter(|(t, _)| scope.contains(&A::partition_key(**t)))
            .map(|(t, c)| ConnEntry::of(t, c))
            .collect();
        conns.sort_by_key(|c| (c.client, c.client_port, c.vip_port, c.proto));
        let s = LbState {
            vip: self.settings.vip,
            backends: self.backends.clone(),
            conns,
            // A statistic of this instance, not flow state: only the whole
            // export carries it.
            conn_overflow: if *scope == FlowScope::All { self.conn_overflow } else { 0 },
        };
        Ok(NfState::encode_as(encoding, SPEC.name, A::STATE_VERSION, &s))
    }

    fn import_state(&mut self, state: &NfState) -> Result<(), StateError> {
        let s = self.decode_for_this_vip(state)?;
        if s.conns.len() > self.settings.max_conns {
            return Err(StateError::Corrupt(format!(
                "{} connections exceed max_connections {}",
                s.conns.len(),
                self.settings.max_conns
            )));
        }
        // Build everything aside first so that an error changes nothing.
        let mut next = LoadBalancer::empty(self.settings, self.conns.hasher().clone());
        next.conn_overflow = s.conn_overflow;
        next.last_sweep_ns = self.last_sweep_ns;
        next.set_backends(s.backends).map_err(|e| StateError::Corrupt(e.to_string()))?;
        next.check_backends(&s.conns).map_err(StateError::Corrupt)?;
        next.insert_entries(&s.conns);
        *self = next;
        Ok(())
    }

    /// Adds the snapshot's connections to those held, keeping this
    /// instance's backends (every imported connection must use one of
    /// them) and its `conn_overflow` count.
    fn import_merge(&mut self, state: &NfState) -> Result<(), StateError> {
        let s = self.decode_for_this_vip(state)?;
        self.check_backends(&s.conns).map_err(StateError::Conflict)?;
        let added = s.conns.iter().filter(|c| !self.conns.contains_key(&self.key_of(c))).count();
        let total = self.conns.len() + added;
        if total > self.settings.max_conns {
            return Err(StateError::Capacity { total, max: self.settings.max_conns });
        }
        self.insert_entries(&s.conns);
        Ok(())
    }

    fn flow_stream(&mut self) -> Option<&mut dyn FlowStream> {
        Some(self)
    }
}

/// Streaming the connections during a live migration (see
/// [`crate::statelet`]). The backend set is configuration, not flow
/// state: both instances must have the same one (every installed
/// connection must use one of this instance's backends).
impl<A: LbAddr> FlowStream for LoadBalancer<A> {
    fn record_changes(&mut self, on: bool) {
        self.stream.set(on.then(|| self.conns.keys().copied().collect()));
    }

    fn take_changes(&mut self, out: &mut Vec<PartitionKey>) {
        self.stream.take(out, A::partition_key);
    }

    fn changes_waiting(&self) -> usize {
        self.stream.waiting()
    }

    fn export_from(&self, cursor: &mut usize, max: usize) -> Option<Statelet> {
        let keys = self.stream.walk(cursor, max)?;
        let keys: Vec<PartitionKey> = keys.iter().map(|t| A::partition_key(*t)).collect();
        Some(self.export_flows(&keys))
    }

    fn export_flows(&self, keys: &[PartitionKey]) -> Statelet {
        let conns = keys
            .iter()
            .filter_map(|k| self.forward_key(k))
            .filter_map(|t| Some(ConnEntry::of(&t, self.conns.get(&t)?)))
            .collect();
        let s = LbState { vip: self.settings.vip, backends: Vec::new(), conns, conn_overflow: 0 };
        let state = NfState::encode_as(Encoding::Binary, SPEC.name, A::STATE_VERSION, &s);
        Statelet { keys: keys.to_vec(), state }
    }

    fn install(&mut self, statelet: &Statelet) -> Result<(), StateError> {
        let s = self.decode_for_this_vip(&statelet.state)?;
        self.check_backends(&s.conns).map_err(StateError::Corrupt)?;
        let key_set = statelet.key_set();
        let named = |c: &ConnEntry<A>| key_set.contains(&A::partition_key(self.key_of(c)));
        if let Some(c) = s.conns.iter().find(|c| !named(c)) {
            return Err(StateError::Corrupt(format!(
                "statelet connection from {} is not one of the flows it names",
                c.client_end()
            )));
        }
        let cleared: Vec<A::Key> = statelet
            .keys
            .iter()
            .filter_map(|k| self.forward_key(k))
            .filter(|t| self.conns.contains_key(t))
            .collect();
        let total = self.conns.len() - cleared.len() + s.conns.len();
        if total > self.settings.max_conns {
            return Err(StateError::Capacity { total, max: self.settings.max_conns });
        }
        for t in &cleared {
            self.conns.remove(t);
        }
        self.insert_entries(&s.conns);
        Ok(())
    }

    fn held_keys(&self, out: &mut Vec<PartitionKey>) {
        out.extend(self.conns.keys().map(|t| A::partition_key(*t)));
    }

    fn len(&self) -> usize {
        self.conns.len()
    }
}

impl<A: LbAddr> LoadBalancer<A> {
    /// The table key of the forward flow (client to VIP) of partition key
    /// `key`, if one end of it is the VIP.
    fn forward_key(&self, key: &PartitionKey) -> Option<A::Key> {
        let (lo, hi, proto) = A::key_endpoints(key)?;
        let vip = self.settings.vip;
        let (client, vip_end) = if hi.0 == vip {
            (lo, hi)
        } else if lo.0 == vip {
            (hi, lo)
        } else {
            return None;
        };
        let flow = Flow { src: client.0, dst: vip, proto, src_port: client.1, dst_port: vip_end.1 };
        Some(flow.into())
    }

    /// A state of this NF kind and family, refused if it is of the other
    /// family or for another VIP.
    fn decode_for_this_vip(&self, state: &NfState) -> Result<LbState<A>, StateError> {
        let vip = self.settings.vip;
        if state.kind == SPEC.name {
            if let Some(family) = family_of_format(state.version).filter(|f| *f != A::FAMILY) {
                return Err(StateError::Corrupt(format!(
                    "state is of an {family} VIP (format {}); this load balancer serves the {} VIP {vip}",
                    state.version,
                    A::FAMILY,
                )));
            }
        }
        let s: LbState<A> = state.decode(SPEC.name, A::STATE_VERSION)?;
        if s.vip != vip {
            return Err(StateError::Corrupt(format!(
                "state is for VIP {}, this load balancer serves {vip}",
                s.vip
            )));
        }
        Ok(s)
    }

    /// Every connection uses one of this instance's backends.
    fn check_backends(&self, conns: &[ConnEntry<A>]) -> Result<(), String> {
        match conns.iter().find(|c| self.backend_ips.binary_search(&c.backend).is_err()) {
            Some(c) => Err(format!(
                "connection from {} uses unknown backend {}",
                c.client_end(),
                c.backend
            )),
            None => Ok(()),
        }
    }

    /// The table key of the forward flow (client to VIP) of an exported
    /// connection.
    fn key_of(&self, c: &ConnEntry<A>) -> A::Key {
        c.key(self.settings.vip)
    }

    /// Record exported connections (checked by the caller), replacing what
    /// is held for their flows.
    fn insert_entries(&mut self, conns: &[ConnEntry<A>]) {
        for c in conns {
            let conn = Conn { backend: c.backend, last_seen_ns: c.last_seen_ns };
            self.conns.insert(self.key_of(c), conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Counters, Params};
    use braid_packet::envelope;
    use braid_packet::wire::build::FrameSpec;
    use braid_packet::wire::{self, tcp_flags, Ipv4Packet, TcpPacket, UdpPacket};
    use braid_packet::Packet;
    use proptest::prelude::*;
    use std::collections::HashMap;

    const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);

    fn backend(i: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 1, i)
    }

    fn lb_with(n: u8, extra: &str) -> LoadBalancer<Ipv4Addr> {
        let backends: Vec<String> = (1..=n).map(|i| format!("{{ip: {}}}", backend(i))).collect();
        let y = format!("{{vip: {VIP}, backends: [{}] {extra}}}", backends.join(", "));
        let p: Params = serde_yaml_ng::from_str(&y).unwrap();
        LoadBalancer::new(crate::params::parse(&p).unwrap()).unwrap()
    }

    fn client(i: u32) -> (Ipv4Addr, u16) {
        (Ipv4Addr::from(0xc0a8_0000 + (i >> 8)), 1024 + (i & 0xff) as u16 * 7)
    }

    fn udp_to_vip(i: u32) -> Vec<u8> {
        FrameSpec::udp(client(i), (VIP, 53), 20).build()
    }

    fn run<A: LbAddr>(
        nf: &mut LoadBalancer<A>,
        frames: &[Vec<u8>],
        now: u64,
    ) -> (Vec<Vec<u8>>, Counters) {
        let mut b: Batch = frames.iter().map(|f| Packet::from_bytes(f)).collect();
        let mut c = Counters::default();
        nf.process(&mut b, &mut Context::new(now, &mut c));
        (b.iter().map(|p| p.data().to_vec()).collect(), c)
    }

    /// (src, dst) of a frame, checking every checksum on the way.
    fn addrs(f: &[u8]) -> (Ipv4Addr, Ipv4Addr) {
        let l3 = wire::l3(f).unwrap();
        let ip = Ipv4Packet::new_checked(&f[l3.offset..]).unwrap();
        assert!(ip.verify_checksum(), "IPv4 checksum");
        match ip.protocol() {
            ip_proto::UDP => {
                let u = UdpPacket::new_checked(ip.payload()).unwrap();
                assert!(u.checksum() == 0 || u.verify_checksum_v4(ip.src_addr(), ip.dst_addr()));
            }
            ip_proto::TCP => {
                let t = TcpPacket::new_checked(ip.payload()).unwrap();
                assert!(t.verify_checksum_v4(ip.src_addr(), ip.dst_addr()), "TCP checksum");
            }
            _ => {}
        }
        (ip.src_addr(), ip.dst_addr())
    }

    /// Backend chosen for each of `flows` client flows.
    fn assign(lb: &mut LoadBalancer<Ipv4Addr>, flows: u32, now: u64) -> Vec<Ipv4Addr> {
        let frames: Vec<Vec<u8>> = (0..flows).map(udp_to_vip).collect();
        let (out, c) = run(lb, &frames, now);
        assert_eq!(c.dropped_total(), 0);
        out.iter().map(|f| addrs(f).1).collect()
    }

    #[test]
    fn rewrites_destination_and_replies_with_valid_checksums() {
        let mut lb = lb_with(3, ", table_size: 1021");
        let tcp = FrameSpec::tcp((Ipv4Addr::new(192, 168, 9, 9), 5555), (VIP, 80), tcp_flags::SYN)
            .build();
        let mut udp0 = udp_to_vip(7);
        udp0[14 + 20 + 6] = 0; // UDP without checksum
        udp0[14 + 20 + 7] = 0;
        let icmp = FrameSpec::icmp_echo(Ipv4Addr::new(192, 168, 9, 9), VIP, 77, 1).build();
        let (out, c) = run(&mut lb, &[tcp.clone(), udp_to_vip(7), udp0, icmp], 1);
        assert_eq!(c.dropped_total(), 0);
        let dsts: Vec<Ipv4Addr> = out.iter().map(|f| addrs(f).1).collect();
        assert!(dsts.iter().all(|d| lb.backend_ips.contains(d)), "{dsts:?}");
        assert_eq!(dsts[1], dsts[2], "same 5-tuple, same backend");
        assert_eq!(&out[2][14 + 20 + 6..14 + 20 + 8], &[0, 0], "no checksum stays none");

        // The backend's reply gets the VIP back as its source.
        let b = dsts[0];
        let reply =
            FrameSpec::tcp((b, 80), (Ipv4Addr::new(192, 168, 9, 9), 5555), tcp_flags::ACK).build();
        let stranger = FrameSpec::tcp((b, 80), (Ipv4Addr::new(192, 168, 9, 8), 5555), 0).build();
        let (out, _) = run(&mut lb, &[reply, stranger.clone()], 2);
        assert_eq!(addrs(&out[0]).0, VIP);
        assert_eq!(out[1], stranger, "no connection, no rewrite");
    }

    const VIP6: &str = "2001:db8::100";

    fn lb6_with(n: u8, extra: &str) -> LoadBalancer<Ipv6Addr> {
        let backends: Vec<String> =
            (1..=n).map(|i| format!("{{ip: '2001:db8:1::{i:x}'}}")).collect();
        let y = format!("{{vip: '{VIP6}', backends: [{}] {extra}}}", backends.join(", "));
        let p: Params = serde_yaml_ng::from_str(&y).unwrap();
        LoadBalancer::new(crate::params::parse(&p).unwrap()).unwrap()
    }

    fn v6(s: &str) -> std::net::Ipv6Addr {
        s.parse().unwrap()
    }

    fn client6(i: u32) -> (std::net::Ipv6Addr, u16) {
        (
            std::net::Ipv6Addr::from(0x2001_0db8_00ff_u128 << 80 | u128::from(i >> 8)),
            1024 + (i & 0xff) as u16 * 7,
        )
    }

    /// (src, dst) of an IPv6 frame, checking the transport checksum.
    fn addrs6(f: &[u8]) -> (std::net::Ipv6Addr, std::net::Ipv6Addr) {
        let p = envelope::parse_dual(f);
        let ip = p.ipv6().expect("IPv6");
        let (s, d) = (ip.src_addr(), ip.dst_addr());
        let t = &f[ip.l4_offset()..ip.end()];
        let ok = match ip.proto {
            ip_proto::UDP => UdpPacket::new_checked(t).unwrap().verify_checksum_v6(s, d),
            ip_proto::TCP => TcpPacket::new_checked(t).unwrap().verify_checksum_v6(s, d),
            ip_proto::ICMPV6 => wire::Icmpv6Packet::new_checked(t).unwrap().verify_checksum(s, d),
            _ => true,
        };
        assert!(ok, "checksum of {s} -> {d}");
        (s, d)
    }

    #[test]
    fn ipv6_vip_rewrites_with_valid_checksums_and_replies() {
        use braid_packet::wire::build::{Ext6Spec, Frame6Spec};
        let mut lb = lb6_with(3, ", table_size: 1021");
        let c = v6("2001:db8:ff::9");
        let mut tcp = Frame6Spec::tcp((c, 5555), (v6(VIP6), 80), tcp_flags::SYN);
        tcp.ext = vec![Ext6Spec::Plain { kind: 0, len: 8 }, Ext6Spec::Plain { kind: 60, len: 16 }];
        let tcp = tcp.build();
        let udp = Frame6Spec::udp((c, 7), (v6(VIP6), 53), 30).build();
        let icmp = Frame6Spec::icmp_echo(c, v6(VIP6), 77, 1).build();
        let v4 = FrameSpec::udp(client(1), (VIP, 53), 20).build();
        let (out, cn) = run(&mut lb, &[tcp, udp.clone(), udp, icmp, v4.clone()], 1);
        assert_eq!(cn.dropped_total(), 0);
        let backends: Vec<_> = lb.backends().iter().map(|b| b.ip).collect();
        let dsts: Vec<_> = out[..4].iter().map(|f| addrs6(f).1).collect();
        assert!(dsts.iter().all(|d| backends.contains(d)), "{dsts:?}");
        assert_eq!(dsts[1], dsts[2], "same 5-tuple, same backend");
        assert_eq!(out[4], v4, "IPv4 passes an IPv6 VIP");
        assert_eq!(lb.connections(), 3);
        // The backend's reply gets the VIP back as its source.
        let reply = Frame6Spec::tcp((dsts[0], 80), (c, 5555), tcp_flags::ACK).build();
        let stranger = Frame6Spec::tcp((dsts[0], 80), (v6("2001:db8:ff::8"), 5555), 0).build();
        let (out, _) = run(&mut lb, &[reply, stranger.clone()], 2);
        assert_eq!(addrs6(&out[0]).0, v6(VIP6));
        assert_eq!(out[1], stranger, "no connection, no rewrite");
    }

    #[test]
    fn ipv6_flows_are_balanced_and_keep_their_backend() {
        use braid_packet::wire::build::Frame6Spec;
        let mut lb = lb6_with(4, "");
        let frames: Vec<Vec<u8>> =
            (0..4000).map(|i| Frame6Spec::udp(client6(i), (v6(VIP6), 53), 0).build()).collect();
        let (out, c) = run(&mut lb, &frames, 1);
        assert_eq!(c.dropped_total(), 0);
        let first: Vec<_> = out.iter().map(|f| addrs6(f).1).collect();
        let mut per: HashMap<std::net::Ipv6Addr, usize> = HashMap::new();
        for d in &first {
            *per.entry(*d).or_default() += 1;
        }
        assert_eq!(per.len(), 4);
        assert!(per.values().all(|n| (800..1200).contains(n)), "{per:?}");
        // Affinity: the same flows again go where they went.
        let (out, _) = run(&mut lb, &frames, 2);
        assert!(out.iter().map(|f| addrs6(f).1).eq(first.iter().copied()));
    }

    #[test]
    fn ipv6_vip_policy_config_and_state() {
        use braid_packet::wire::build::{Ext6Spec, Frame6Spec};
        let mut lb = lb6_with(2, ", port: 53");
        let c = v6("2001:db8:ff::9");
        let other_port = Frame6Spec::udp((c, 7), (v6(VIP6), 54), 0).build();
        let mut frag = Frame6Spec::udp((c, 7), (v6(VIP6), 53), 0);
        frag.ext = vec![Ext6Spec::Fragment { offset: 0, more: true, ident: 1 }];
        let mut esp = Frame6Spec::udp((c, 7), (v6(VIP6), 53), 8).build();
        esp[20] = ip_proto::ESP;
        let mut cut = Frame6Spec::udp((c, 7), (v6(VIP6), 53), 8).build();
        cut.truncate(60);
        let (out, n) = run(&mut lb, &[other_port.clone(), frag.build(), esp, cut], 1);
        assert_eq!(out, vec![other_port], "other ports pass");
        assert_eq!(n.dropped(DropReason::Unsupported), 2, "fragment and ESP to the VIP");
        assert_eq!(n.dropped(DropReason::Malformed), 1);
        // No backends: dropped no_backend.
        let mut none = lb6_with(0, "");
        let (_, n) = run(&mut none, &[Frame6Spec::udp((c, 7), (v6(VIP6), 53), 0).build()], 1);
        assert_eq!(n.dropped(DropReason::NoBackend), 1);
        // Families must agree; the error names the backend.
        for y in [
            "{vip: '2001:db8::1', backends: [{ip: 10.0.0.1}]}",
            "{vip: 10.0.0.100, backends: [{ip: '2001:db8::2'}]}",
            "{vip: '2001:db8::1', backends: [{ip: '2001:db8::1'}]}",
        ] {
            let p: Params = serde_yaml_ng::from_str(y).unwrap();
            let e = (SPEC.build)(&p).err().unwrap();
            assert_eq!(e.field, "backends[0].ip", "{y}: {e}");
        }
        // The families' state formats are told apart, naming the VIPs.
        let v4 = lb_with(2, "").export_scoped(&FlowScope::All, Encoding::Binary).unwrap();
        let e = lb.import_state(&v4).unwrap_err();
        assert!(e.to_string().contains("IPv4 VIP"), "{e}");
        let v6s = lb.export_scoped(&FlowScope::All, Encoding::Binary).unwrap();
        let e = lb_with(2, "").import_state(&v6s).unwrap_err();
        assert!(e.to_string().contains("IPv6 VIP"), "{e}");
        assert!(lb.flow_stream().is_some());
    }

    /// `assign` for an IPv6 VIP: the backend of each of `flows` flows.
    fn assign6(lb: &mut LoadBalancer<Ipv6Addr>, flows: u32, now: u64) -> Vec<std::net::Ipv6Addr> {
        use braid_packet::wire::build::Frame6Spec;
        let frames: Vec<Vec<u8>> =
            (0..flows).map(|i| Frame6Spec::udp(client6(i), (v6(VIP6), 53), 0).build()).collect();
        run(lb, &frames, now).0.iter().map(|f| addrs6(f).1).collect()
    }

    #[test]
    fn ipv6_state_round_trips_both_encodings_and_keeps_affinity() {
        use braid_packet::flow::FiveTuple6;
        let mut a = lb6_with(5, "");
        let before = assign6(&mut a, 2_000, 1);
        for encoding in [Encoding::Json, Encoding::Binary] {
            let s = a.export_scoped(&FlowScope::All, encoding).unwrap();
            assert_eq!((s.kind.as_str(), s.version), ("loadbalancer", Ipv6Addr::STATE_VERSION));
            // Another backend set on the importer: the state brings its own.
            let mut b = lb6_with(2, "");
            b.import_state(&s).unwrap();
            assert_eq!(b.backends(), a.backends());
            assert_eq!(b.connections(), 2_000);
            assert_eq!(b.export_scoped(&FlowScope::All, encoding).unwrap(), s);
            // Remove backends on both: the recorded flows keep theirs
            // unless theirs is gone (affinity survives the move).
            let gone = a.backends()[0].ip;
            let keep: Vec<_> = b.backends().iter().copied().filter(|x| x.ip != gone).collect();
            b.set_backends(keep).unwrap();
            let after = assign6(&mut b, 2_000, 2);
            for (x, y) in before.iter().zip(&after) {
                assert!(x == y || *x == gone, "{x} -> {y}");
            }
        }
        // A corrupt binary state is refused by its checksum, nothing changes.
        let mut s = a.export_scoped(&FlowScope::All, Encoding::Binary).unwrap();
        let n = s.data.len();
        s.data[n / 2] ^= 0x40;
        let mut c = lb6_with(2, "");
        assert!(matches!(c.import_state(&s), Err(StateError::Checksum { .. })));
        assert_eq!((c.connections(), c.backends().len()), (0, 2));
        // Another VIP's state, a state over max_connections: refused.
        let p: Params = serde_yaml_ng::from_str("{vip: '2001:db8::200', backends: []}").unwrap();
        let mut other = LoadBalancer::<Ipv6Addr>::new(crate::params::parse(&p).unwrap()).unwrap();
        let s = a.export_state().unwrap();
        assert!(matches!(other.import_state(&s), Err(StateError::Corrupt(_))));
        let mut small = lb6_with(5, ", max_connections: 100");
        assert!(matches!(small.import_state(&s), Err(StateError::Corrupt(_))));
        // Scoped export and merge: two halves merge into the whole.
        let key = |c: &(std::net::Ipv6Addr, u16)| {
            PartitionKey::five_tuple6(FiveTuple6 {
                src: c.0,
                dst: v6(VIP6),
                proto: 17,
                src_port: c.1,
                dst_port: 53,
            })
        };
        let scope = FlowScope::HashRange(crate::HashRange::share(0, 2));
        let half = a.export_scoped(&scope, Encoding::Binary).unwrap();
        let rest = a
            .export_scoped(&FlowScope::HashRange(crate::HashRange::share(1, 2)), Encoding::Json)
            .unwrap();
        let mut m = lb6_with(5, "");
        m.import_merge(&half).unwrap();
        let in_half = (0..2_000).filter(|i| scope.contains(&key(&client6(*i)))).count();
        assert!(in_half > 800 && in_half < 1200, "{in_half}");
        assert_eq!(m.connections(), in_half);
        m.import_merge(&rest).unwrap();
        assert_eq!(assign6(&mut m, 2_000, 3), before);
    }

    /// `lb`'s JSON state with `edit` applied to its backend list, imported
    /// into `lb`: the error, and that nothing changed.
    fn import_edited<A: LbAddr>(
        lb: &mut LoadBalancer<A>,
        edit: impl Fn(&mut serde_json::Value),
    ) -> String {
        let mut s = lb.export_scoped(&FlowScope::All, Encoding::Json).unwrap();
        let mut v: serde_json::Value = serde_json::from_slice(&s.data).unwrap();
        edit(&mut v["backends"]);
        s.data = serde_json::to_vec(&v).unwrap();
        let backends = lb.backends().to_vec();
        let e = lb.import_state(&s).unwrap_err();
        assert!(matches!(e, StateError::Corrupt(_)), "{e}");
        assert_eq!(lb.backends(), backends, "a refused import changes nothing");
        e.to_string()
    }

    #[test]
    fn imported_backend_sets_are_checked_in_both_families() {
        fn check<A: LbAddr>(mut lb: LoadBalancer<A>) {
            let vip = serde_json::to_value(lb.settings.vip).unwrap();
            let e = import_edited(&mut lb, |b| b[1]["ip"] = b[0]["ip"].clone());
            assert!(e.contains("is already configured"), "{e}");
            let e = import_edited(&mut lb, |b| b[0]["ip"] = vip.clone());
            assert!(e.contains("is the VIP itself"), "{e}");
            let e = import_edited(&mut lb, |b| b[1]["weight"] = 0.into());
            assert!(e.contains("backend 1 has weight 0"), "{e}");
        }
        check(lb_with(3, ""));
        check(lb6_with(3, ""));
        // A balancer of one family refuses a VIP of the other.
        let p: Params = serde_yaml_ng::from_str("{vip: 10.0.0.1, backends: []}").unwrap();
        let e = LoadBalancer::<Ipv6Addr>::new(crate::params::parse(&p).unwrap()).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.message.as_str()),
            ("vip", "10.0.0.1 is not an IPv6 address")
        );
    }

    #[test]
    fn flows_are_balanced() {
        let mut lb = lb_with(4, "");
        let got = assign(&mut lb, 20_000, 1);
        let mut per: HashMap<Ipv4Addr, usize> = HashMap::new();
        for b in got {
            *per.entry(b).or_default() += 1;
        }
        assert_eq!(per.len(), 4);
        for (b, n) in per {
            assert!((4_000..6_000).contains(&n), "{b}: {n} of 20000 flows");
        }
    }

    #[test]
    fn affinity_survives_backend_changes_and_removal_moves_only_its_flows() {
        let mut lb = lb_with(5, "");
        let before = assign(&mut lb, 5_000, 1);
        lb.add_backend(Backend { ip: backend(6), weight: 1 }).unwrap();
        assert_eq!(assign(&mut lb, 5_000, 2), before, "existing flows keep their backend");
        let fresh = assign(&mut lb, 20_000, 3)[5_000..].to_vec();
        assert!(fresh.contains(&backend(6)), "new flows reach the new backend");

        assert!(lb.remove_backend(backend(3)).unwrap());
        let after = assign(&mut lb, 5_000, 4);
        for (b, a) in before.iter().zip(&after) {
            if *b == backend(3) {
                assert_ne!(a, b);
            } else {
                assert_eq!(a, b, "flows of other backends stay");
            }
        }
        assert!(!lb.remove_backend(backend(3)).unwrap());
    }

    #[test]
    fn without_connection_state_maglev_moves_few_flows() {
        // Two independent balancers (no shared connections) over 10 and 9
        // backends: flows that change are mostly the removed backend's.
        let flows = 20_000;
        let a = assign(&mut lb_with(10, ""), flows, 1);
        let b = assign(&mut lb_with(9, ""), flows, 1);
        let victim = a.iter().filter(|x| **x == backend(10)).count();
        let moved = a.iter().zip(&b).filter(|(x, y)| x != y).count();
        assert!(moved >= victim);
        assert!(moved - victim < flows as usize / 50, "moved {moved}, victim had {victim}");
    }

    #[test]
    fn idle_connections_expire_and_full_table_still_balances() {
        let mut lb = lb_with(2, ", idle_timeout_ms: 5, max_connections: 10");
        assign(&mut lb, 30, 1);
        assert_eq!(lb.connections(), 10);
        assert_eq!(lb.conn_overflow(), 20);
        let mut c = Counters::default();
        lb.tick(&mut Batch::new(), &mut Context::new(10_000_000, &mut c));
        assert_eq!(lb.connections(), 0);
    }

    #[test]
    fn drops_and_passes_with_reasons() {
        let mut lb = lb_with(2, ", port: 53");
        let other_port = FrameSpec::udp(client(1), (VIP, 54), 10).build();
        let not_vip = FrameSpec::udp(client(1), (Ipv4Addr::new(8, 8, 8, 8), 53), 10).build();
        let mut frag = udp_to_vip(1);
        frag[14 + 6] = 0x20; // more fragments
        let mut cut = udp_to_vip(1);
        cut.truncate(14 + 20 + 4);
        cut[14 + 2..14 + 4].copy_from_slice(&24u16.to_be_bytes());
        let arp_like = {
            let mut f = udp_to_vip(1);
            f[12] = 0x08;
            f[13] = 0x06;
            f
        };
        let frames = vec![other_port.clone(), not_vip.clone(), frag, cut, arp_like.clone()];
        let (out, c) = run(&mut lb, &frames, 1);
        assert_eq!(out, vec![other_port, not_vip, arp_like]);
        assert_eq!(c.dropped(DropReason::Unsupported), 1);
        assert_eq!(c.dropped(DropReason::Malformed), 1);

        let mut empty = lb_with(0, "");
        let (out, c) = run(&mut empty, &[udp_to_vip(1)], 1);
        assert!(out.is_empty());
        assert_eq!(c.dropped(DropReason::NoBackend), 1);
    }

    #[test]
    fn config_errors_name_the_field() {
        let e = |y: &str| {
            let p: Params = serde_yaml_ng::from_str(y).unwrap();
            (SPEC.build)(&p).err().unwrap()
        };
        let b = "backends: [{ip: 10.0.1.1}, {ip: 10.0.1.2}]";
        assert_eq!(e(&format!("{{vip: 10.0.0.1, {b}, table_size: 1000}}")).field, "table_size");
        assert_eq!(
            e("{vip: 10.0.0.1, backends: [{ip: 10.0.1.1}, {ip: 10.0.1.1}]}").field,
            "backends[1].ip"
        );
        assert_eq!(
            e("{vip: 10.0.0.1, backends: [{ip: 10.0.1.1, weight: 0}]}").field,
            "backends[0].weight"
        );
        assert_eq!(e("{vip: 10.0.0.1, backends: [{ip: 10.0.0.1}]}").field, "backends[0].ip");
        assert_eq!(e("{vip: 10.0.0.300, backends: []}").field, "vip");
        assert_eq!(e("{vip: 10.0.0.1, backends: [], idle_timeout_ms: 0}").field, "idle_timeout_ms");
        assert!(e("{vip: 10.0.0.1}").message.contains("backends"));
    }

    #[test]
    fn state_round_trips_and_keeps_affinity() {
        let mut a = lb_with(5, "");
        a.add_backend(Backend { ip: backend(9), weight: 3 }).unwrap();
        let before = assign(&mut a, 2_000, 1);
        let s = a.export_state().unwrap();
        // The importer starts with another backend set: the state brings
        // the set and the connections along.
        let mut b = lb_with(2, "");
        b.import_state(&s).unwrap();
        assert_eq!(b.backends(), a.backends());
        assert_eq!(b.export_state().unwrap(), s);
        assert_eq!(assign(&mut b, 2_000, 2), before);

        let mut other_vip = {
            let p: Params = serde_yaml_ng::from_str("{vip: 1.2.3.4, backends: []}").unwrap();
            LoadBalancer::<Ipv4Addr>::new(crate::params::parse(&p).unwrap()).unwrap()
        };
        assert!(matches!(other_vip.import_state(&s), Err(StateError::Corrupt(_))));
        assert!(other_vip.backends().is_empty());
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(f in prop_oneof![proptest::collection::vec(any::<u8>(), 0..1600), braid_packet::strategy::any_frame(), braid_packet::strategy::any_frame6()]) {
            let mut lb = lb_with(3, ", table_size: 1021");
            let (out, c) = run(&mut lb, std::slice::from_ref(&f), 1);
            prop_assert_eq!(out.len() as u64 + c.dropped_total(), 1);
            let mut lb = lb6_with(3, ", table_size: 1021");
            let (out, c) = run(&mut lb, &[f], 1);
            prop_assert_eq!(out.len() as u64 + c.dropped_total(), 1);
        }

        #[test]
        fn rewritten_packets_stay_valid(i in any::<u32>(), tcp in any::<bool>(), len in 0usize..1400) {
            let mut lb = lb_with(7, ", table_size: 1021");
            let f = if tcp {
                FrameSpec::tcp(client(i), (VIP, 443), tcp_flags::ACK).with_payload_len(len).build()
            } else {
                FrameSpec::udp(client(i), (VIP, 53), len).build()
            };
            let (out, _) = run(&mut lb, &[f], 1);
            let (_, dst) = addrs(&out[0]);
            prop_assert!(lb.backend_ips.contains(&dst));
        }
    }
}
