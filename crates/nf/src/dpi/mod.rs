//! `dpi`: deep packet inspection. Multi-pattern payload matching with
//! Snort/Suricata-style `content` (literal) and `pcre` (regex) rules, per
//! TCP stream across segment boundaries and per UDP datagram; actions alert,
//! drop and mark.
//!
//! Stream semantics (TCP, each direction its own stream, keyed by its
//! 5-tuple):
//! * The stream starts after the SYN's sequence number, or at the first
//!   data segment seen when the SYN was missed (mid-stream pickup); rule
//!   offsets count from there.
//! * In-order data is scanned as it arrives; the matcher carries a few
//!   bytes and a DFA state between segments, so a match may span any
//!   number of segments.
//! * Retransmitted bytes (already scanned) are not scanned again: the first
//!   copy of a byte is what is inspected. A segment overlapping the scanned
//!   part has only its new bytes scanned.
//! * Segments ahead of the next expected byte are copied into a bounded
//!   per-flow queue (the packet itself passes on) and scanned when the gap
//!   before them fills; the packet that fills it gets the verdict. When the
//!   queue would exceed its bounds, the gap is given up: scanning resumes
//!   at the first queued byte, no match spans the gap (counted).
//! * Each rule fires at most once per stream. A `drop` blocks the stream:
//!   the completing packet and all later ones are dropped (`denied`). A
//!   `mark` sets `meta.mark` on the completing packet and all later ones;
//!   the first mark to fire wins (lowest rule index within one packet).
//!
//! UDP: each datagram is its own stream (no state); rules fire per datagram.
//! IPv4 only; fragments and other protocols pass uninspected (counted).

mod matcher;
pub mod rules;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, VecDeque};

use braid_packet::envelope::{self, Class, L4};
use braid_packet::wire::{self, ip_proto, tcp_flags, TcpPacket};
use braid_packet::{Batch, Packet};

pub use matcher::{Hit, Matcher, StreamState};
pub use rules::{Action, Rule, RuleConfig};

// One direction of a TCP connection, or a UDP flow (host-order addresses).
pub use crate::conntrack::FlowKey;
use crate::conntrack::{secs_to_ns, StateClock};
use crate::params::{self, ConfigError, ParamDoc, Params};
use crate::{
    Context, DropReason, NetworkFunction, NfClass, NfSpec, NfState, Placement, StateError,
};

pub static SPEC: NfSpec = NfSpec {
    name: "dpi",
    class: NfClass::Advanced,
    placements: &[Placement::User],
    state: crate::StateKind::PerFlow(crate::FlowPartition::SymmetricFiveTuple),
    kernel: None,
    summary: "deep packet inspection: content/pcre rules per TCP stream (across segments) and UDP datagram; alert, drop or mark",
    params: &[
        ParamDoc {
            name: "rules",
            kind: "list of {sid, msg, content | pcre, nocase, offset, depth, proto, src_port, dst_port, action, mark}",
            default: None,
            help: "content: literal, `|41 42|` for hex bytes, up to 255 B; pcre: regex over bytes (ASCII classes; only `^` as assertion, \
                   meaning stream start); offset/depth (content only): the literal starts at or after `offset` and ends within \
                   `depth` bytes of it; proto: tcp|udp|any; ports: 80 or \"lo-hi\"; action: alert (default) | drop | mark (with mark: 0..=255)",
        },
        ParamDoc {
            name: "max_flows",
            kind: "usize, >= 1",
            default: Some("65536"),
            help: "TCP streams tracked at once; the least recently seen is evicted for a new one",
        },
        ParamDoc {
            name: "idle_timeout",
            kind: "seconds, >= 1",
            default: Some("120"),
            help: "a stream idle this long is forgotten (checked in tick)",
        },
        ParamDoc {
            name: "max_ooo_bytes",
            kind: "usize",
            default: Some("16384"),
            help: "out-of-order bytes queued per stream before its gap is given up",
        },
        ParamDoc {
            name: "ooo_budget_bytes",
            kind: "usize",
            default: Some("67108864"),
            help: "out-of-order bytes queued over all streams",
        },
        ParamDoc {
            name: "alert_log",
            kind: "usize",
            default: Some("1024"),
            help: "alerts kept in memory (the oldest go first)",
        },
        ParamDoc {
            name: "log_per_sec",
            kind: "u32",
            default: Some("10"),
            help: "alert lines printed to stderr per second at most (0: none); the rest are counted as suppressed",
        },
    ],
    build: |p| Ok(Box::new(Dpi::from_params(p)?)),
};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    rules: Vec<RuleConfig>,
    #[serde(default = "default_max_flows")]
    max_flows: usize,
    #[serde(default = "default_idle_timeout")]
    idle_timeout: u64,
    #[serde(default = "default_max_ooo_bytes")]
    max_ooo_bytes: usize,
    #[serde(default = "default_ooo_budget")]
    ooo_budget_bytes: usize,
    #[serde(default = "default_alert_log")]
    alert_log: usize,
    #[serde(default = "default_log_per_sec")]
    log_per_sec: u32,
}

fn default_max_flows() -> usize {
    65536
}
fn default_idle_timeout() -> u64 {
    120
}
fn default_max_ooo_bytes() -> usize {
    16384
}
fn default_ooo_budget() -> usize {
    64 << 20
}
fn default_alert_log() -> usize {
    1024
}
fn default_log_per_sec() -> u32 {
    10
}

/// One alert: a rule fired on a stream (TCP) or datagram (UDP).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alert {
    pub sid: u32,
    /// Index of the rule in the rule list.
    pub rule: u32,
    pub flow: FlowKey,
    /// Stream (or datagram) offset just past the match.
    pub end: u64,
    /// Runtime time of the packet that completed the match.
    pub now_ns: u64,
}

/// DPI counters beyond the per-reason drops.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DpiStats {
    /// TCP streams forgotten because they idled out.
    pub flows_expired: u64,
    /// TCP streams evicted to make room for a new one.
    pub flows_evicted: u64,
    /// Segments queued because they arrived ahead of a gap.
    pub segments_queued: u64,
    /// Segments whose bytes had all been scanned already.
    pub retransmissions: u64,
    /// Gaps given up because the out-of-order queue was full.
    pub gaps_skipped: u64,
    /// IPv4 fragments passed uninspected.
    pub fragments_uninspected: u64,
    /// Alert lines not printed because of `log_per_sec`.
    pub log_suppressed: u64,
}

/// One direction of a TCP connection.
#[derive(Clone, Debug)]
struct Flow {
    stream: StreamState,
    /// TCP sequence number of stream offset `stream.pos`.
    next_seq: u32,
    last_seen: u64,
    /// Indices of the rules that fired on this stream, in firing order.
    fired: Vec<u32>,
    /// Regex rules that fired (the regex pass stops when all applicable did).
    regex_fired: usize,
    mark: Option<u8>,
    blocked: bool,
    /// Out-of-order data by stream offset.
    ooo: BTreeMap<u64, Vec<u8>>,
    ooo_bytes: usize,
}

/// The `dpi` NF.
pub struct Dpi {
    rules: Vec<Rule>,
    matcher: Matcher,
    /// Rules whose pattern is a regex.
    regex_rule_count: usize,
    fingerprint: u64,
    flows: HashMap<FlowKey, Flow>,
    /// Flow keys with the `last_seen` they had when queued, oldest first:
    /// an approximate LRU order (a flow seen since is re-queued when it
    /// reaches the front instead of being evicted).
    lru: VecDeque<(FlowKey, u64)>,
    max_flows: usize,
    idle_ns: u64,
    max_ooo_bytes: usize,
    ooo_budget: usize,
    ooo_total: usize,
    clock: StateClock,
    /// Times each rule fired.
    rule_hits: Vec<u64>,
    alerts: VecDeque<Alert>,
    alert_log: usize,
    log_per_sec: u32,
    /// Start of the current one-second logging window and lines printed in it.
    log_window: (u64, u32),
    stats: DpiStats,
    /// Per-packet scratch.
    hits: Vec<Hit>,
}

/// The part of a frame the DPI looks at.
struct Segment {
    key: FlowKey,
    /// TCP: sequence number of the first payload byte, and the flags.
    tcp: Option<(u32, u8)>,
    /// Payload range in the frame.
    payload: std::ops::Range<usize>,
}

/// What the DPI makes of a frame.
enum Seen {
    Segment(Segment),
    /// An IPv4 fragment of TCP or UDP: passes uninspected.
    Fragment,
    /// Not IPv4 TCP/UDP: passes uninspected.
    Other,
}

/// The DPI's envelope policy (docs/nfs.md): whole IPv4 TCP/UDP is
/// inspected; TCP/UDP fragments pass uninspected (counted); everything
/// else that is not broken passes; truncated or malformed headers are
/// dropped. The payload is bounded by the IPv4 total length (Ethernet
/// padding is not payload; the UDP length field is the envelope's check).
fn segment(frame: &[u8]) -> Result<Seen, DropReason> {
    let parsed = envelope::parse(frame);
    let tcp_or_udp = matches!(parsed.ip.proto, ip_proto::TCP | ip_proto::UDP);
    let ip = match parsed.class {
        Class::Ok if tcp_or_udp => parsed.ip,
        Class::Fragment { .. } if tcp_or_udp => return Ok(Seen::Fragment),
        Class::Ok | Class::Fragment { .. } | Class::Unsupported { .. } => return Ok(Seen::Other),
        Class::Truncated { .. } | Class::Malformed { .. } => return Err(DropReason::Malformed),
    };
    let l4 = ip.l4_offset();
    let (src_port, dst_port, tcp, header_len) = match ip.l4 {
        L4::Tcp { src_port, dst_port, flags } => {
            // The envelope checked the whole TCP header is in the frame.
            let t = TcpPacket::new_unchecked(&frame[l4..ip.end()]);
            // A SYN occupies one sequence number before the data.
            let syn = u32::from(flags & tcp_flags::SYN != 0);
            let seq = t.seq_number().wrapping_add(syn);
            (src_port, dst_port, Some((seq, flags)), t.header_len())
        }
        L4::Udp { src_port, dst_port, .. } => (src_port, dst_port, None, wire::udp::HEADER_LEN),
        _ => return Ok(Seen::Other),
    };
    let key = FlowKey { src: ip.src, dst: ip.dst, src_port, dst_port, proto: ip.proto };
    Ok(Seen::Segment(Segment { key, tcp, payload: l4 + header_len..ip.end() }))
}

impl Dpi {
    pub fn from_params(p: &Params) -> Result<Dpi, ConfigError> {
        let c: Config = params::parse(p)?;
        if c.max_flows == 0 {
            return Err(ConfigError::new("max_flows", "must be at least 1"));
        }
        if c.idle_timeout == 0 {
            return Err(ConfigError::new("idle_timeout", "must be at least 1 second"));
        }
        let rules = rules::compile(&c.rules)?;
        let matcher = Matcher::new(&rules).map_err(|e| match &e {
            matcher::BuildError::Regexes(Some(i), ..) => {
                ConfigError::new(format!("rules[{i}].pcre"), e.to_string())
            }
            _ => ConfigError::new("rules", e.to_string()),
        })?;
        Ok(Dpi {
            regex_rule_count: rules
                .iter()
                .filter(|r| matches!(r.pattern, rules::Pattern::Regex(_)))
                .count(),
            fingerprint: rules::fingerprint(&c.rules),
            rule_hits: vec![0; rules.len()],
            rules,
            matcher,
            flows: HashMap::new(),
            lru: VecDeque::new(),
            max_flows: c.max_flows,
            idle_ns: secs_to_ns(c.idle_timeout),
            max_ooo_bytes: c.max_ooo_bytes,
            ooo_budget: c.ooo_budget_bytes,
            ooo_total: 0,
            clock: StateClock::default(),
            alerts: VecDeque::new(),
            alert_log: c.alert_log,
            log_per_sec: c.log_per_sec,
            log_window: (0, 0),
            stats: DpiStats::default(),
            hits: Vec::new(),
        })
    }

    /// The compiled rules, in descriptor order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// How many times each rule fired (by rule index).
    pub fn rule_hits(&self) -> &[u64] {
        &self.rule_hits
    }

    /// The latest alerts, oldest first (at most `alert_log`).
    pub fn alerts(&self) -> impl Iterator<Item = &Alert> {
        self.alerts.iter()
    }

    pub fn stats(&self) -> &DpiStats {
        &self.stats
    }

    /// TCP streams tracked now.
    pub fn flows(&self) -> usize {
        self.flows.len()
    }

    fn process_packet(
        &mut self,
        p: &mut Packet,
        runtime_ns: u64,
        now: u64,
    ) -> Result<(), DropReason> {
        let seg = match segment(p.data())? {
            Seen::Segment(s) => s,
            Seen::Fragment => {
                self.stats.fragments_uninspected += 1;
                return Ok(());
            }
            Seen::Other => return Ok(()),
        };
        let verdict = match seg.tcp {
            None => self.inspect_datagram(&p.data()[seg.payload.clone()], seg.key, runtime_ns),
            Some((seq, flags)) => {
                // Copy out of the frame only what may be queued: the scan
                // itself reads the frame in place.
                let frame = p.data();
                self.inspect_segment(
                    seg.key,
                    seq,
                    flags,
                    &frame[seg.payload.clone()],
                    runtime_ns,
                    now,
                )
            }
        };
        match verdict {
            Verdict::Pass => Ok(()),
            Verdict::Mark(m) => {
                p.meta.mark = m;
                Ok(())
            }
            Verdict::Drop => Err(DropReason::Denied),
        }
    }

    fn inspect_datagram(&mut self, payload: &[u8], key: FlowKey, runtime_ns: u64) -> Verdict {
        let mut st = self.matcher.start();
        let mut hits = std::mem::take(&mut self.hits);
        hits.clear();
        self.matcher.scan(&mut st, payload, true, &mut hits);
        let mut fired = Vec::new();
        let mut mark = None;
        let mut drop = false;
        hits.sort_by_key(|h| (h.end, h.rule));
        for h in &hits {
            let rule = &self.rules[h.rule as usize];
            if fired.contains(&h.rule) || !rule.applies(false, key.src_port, key.dst_port) {
                continue;
            }
            fired.push(h.rule);
            match rule.action {
                Action::Alert => {}
                Action::Drop => drop = true,
                Action::Mark(m) => {
                    mark = Some(mark.map_or((h.rule, m), |old: (u32, u8)| old.min((h.rule, m))))
                }
            }
            self.record_alert(h.rule, key, h.end, runtime_ns);
        }
        self.hits = hits;
        if drop {
            Verdict::Drop
        } else if let Some((_, m)) = mark {
            Verdict::Mark(m)
        } else {
            Verdict::Pass
        }
    }

    fn inspect_segment(
        &mut self,
        key: FlowKey,
        seq: u32,
        flags: u8,
        payload: &[u8],
        runtime_ns: u64,
        now: u64,
    ) -> Verdict {
        if !self.flows.contains_key(&key) {
            if payload.is_empty() && flags & tcp_flags::SYN == 0 {
                // A bare ACK/FIN/RST of an untracked stream: nothing to scan.
                return Verdict::Pass;
            }
            self.make_room(now);
            let flow = Flow {
                stream: self.matcher.start(),
                next_seq: seq,
                last_seen: now,
                fired: Vec::new(),
                regex_fired: 0,
                mark: None,
                blocked: false,
                ooo: BTreeMap::new(),
                ooo_bytes: 0,
            };
            self.flows.insert(key, flow);
            self.lru.push_back((key, now));
        }
        let mut hits = std::mem::take(&mut self.hits);
        hits.clear();
        let flow = self.flows.get_mut(&key).expect("inserted above");
        flow.last_seen = now;
        if flow.blocked {
            self.hits = hits;
            return Verdict::Drop;
        }
        let want_regex = flow.regex_fired < self.regex_rule_count;
        // Where this segment starts relative to the next expected byte.
        let ahead = seq.wrapping_sub(flow.next_seq) as i32;
        if payload.is_empty() {
            // Nothing to scan.
        } else if ahead <= 0 {
            let already = ahead.unsigned_abs() as usize;
            if already >= payload.len() {
                self.stats.retransmissions += 1;
            } else {
                let new = &payload[already..];
                self.matcher.scan(&mut flow.stream, new, want_regex, &mut hits);
                flow.next_seq = flow.next_seq.wrapping_add(new.len() as u32);
                self.ooo_total -= drain_queue(&self.matcher, flow, want_regex, &mut hits);
            }
        } else {
            let at = flow.stream.pos + ahead as u64;
            let queued_here = flow.ooo.get(&at).map_or(0, Vec::len);
            let grow = payload.len().saturating_sub(queued_here);
            if flow.ooo_bytes + grow > self.max_ooo_bytes || self.ooo_total + grow > self.ooo_budget
            {
                // Give up the gap: resume at the first queued byte (or at
                // this segment if it comes first) and scan what follows.
                self.stats.gaps_skipped += 1;
                if queued_here < payload.len() {
                    self.ooo_total -= flow.ooo.remove(&at).map_or(0, |v| v.len());
                    flow.ooo_bytes -= queued_here;
                    flow.ooo.insert(at, payload.to_vec());
                    flow.ooo_bytes += payload.len();
                    self.ooo_total += payload.len();
                }
                let first = *flow.ooo.keys().next().expect("queue holds this segment at least");
                let skipped = first - flow.stream.pos;
                self.matcher.restart_at(&mut flow.stream, first);
                flow.next_seq = flow.next_seq.wrapping_add(skipped as u32);
                self.ooo_total -= drain_queue(&self.matcher, flow, want_regex, &mut hits);
            } else if grow > 0 {
                self.stats.segments_queued += 1;
                flow.ooo.insert(at, payload.to_vec());
                flow.ooo_bytes += grow;
                self.ooo_total += grow;
            } else {
                self.stats.retransmissions += 1;
            }
        }
        self.apply_hits(key, &mut hits, runtime_ns)
    }

    /// Fire the rules `hits` found for TCP stream `key`; the packet's verdict.
    fn apply_hits(&mut self, key: FlowKey, hits: &mut Vec<Hit>, runtime_ns: u64) -> Verdict {
        hits.sort_by_key(|h| (h.end, h.rule));
        let mut newly_marked: Option<(u32, u8)> = None;
        for h in hits.iter() {
            let flow = self.flows.get_mut(&key).expect("flow of this segment");
            let rule = &self.rules[h.rule as usize];
            if flow.fired.contains(&h.rule) || !rule.applies(true, key.src_port, key.dst_port) {
                continue;
            }
            flow.fired.push(h.rule);
            if matches!(rule.pattern, rules::Pattern::Regex(_)) {
                flow.regex_fired += 1;
            }
            match rule.action {
                Action::Alert => {}
                Action::Drop => flow.blocked = true,
                Action::Mark(m) if flow.mark.is_none() => {
                    newly_marked =
                        Some(newly_marked.map_or((h.rule, m), |old| old.min((h.rule, m))));
                }
                Action::Mark(_) => {}
            }
            self.record_alert(h.rule, key, h.end, runtime_ns);
        }
        let flow = self.flows.get_mut(&key).expect("flow of this segment");
        if let (None, Some((_, m))) = (flow.mark, newly_marked) {
            flow.mark = Some(m);
        }
        let verdict = if flow.blocked {
            Verdict::Drop
        } else {
            flow.mark.map_or(Verdict::Pass, Verdict::Mark)
        };
        self.hits = std::mem::take(hits);
        verdict
    }

    fn record_alert(&mut self, rule: u32, flow: FlowKey, end: u64, now_ns: u64) {
        self.rule_hits[rule as usize] += 1;
        let sid = self.rules[rule as usize].sid;
        if self.alert_log > 0 {
            if self.alerts.len() == self.alert_log {
                self.alerts.pop_front();
            }
            self.alerts.push_back(Alert { sid, rule, flow, end, now_ns });
        }
        if self.log_per_sec == 0 {
            return;
        }
        if now_ns.wrapping_sub(self.log_window.0) >= 1_000_000_000 {
            if self.stats.log_suppressed > 0 && self.log_window.1 >= self.log_per_sec {
                eprintln!(
                    "dpi: {} alert lines suppressed so far (log_per_sec)",
                    self.stats.log_suppressed
                );
            }
            self.log_window = (now_ns, 0);
        }
        if self.log_window.1 < self.log_per_sec {
            self.log_window.1 += 1;
            let r = &self.rules[rule as usize];
            eprintln!(
                "dpi alert sid {sid} ({:?}) \"{}\" {}:{} -> {}:{} proto {} at stream byte {end}",
                r.action,
                r.msg,
                std::net::Ipv4Addr::from(flow.src),
                flow.src_port,
                std::net::Ipv4Addr::from(flow.dst),
                flow.dst_port,
                flow.proto
            );
        } else {
            self.stats.log_suppressed += 1;
        }
    }

    /// Remove the flow at `key` and release its queue.
    fn forget(&mut self, key: &FlowKey) {
        if let Some(f) = self.flows.remove(key) {
            self.ooo_total -= f.ooo_bytes;
        }
    }

    /// Walk the LRU queue from the front: flows seen since they were queued
    /// go to the back; the first that is not is returned (and unqueued) if
    /// `pick` accepts it. `None` when the front flow is not to be picked.
    fn pop_oldest(&mut self, pick: impl Fn(&Flow) -> bool) -> Option<FlowKey> {
        // Each flow is re-queued at most once per call.
        for _ in 0..=self.lru.len() {
            let &(key, stamp) = self.lru.front()?;
            let Some(f) = self.flows.get(&key) else {
                self.lru.pop_front();
                continue;
            };
            if f.last_seen != stamp {
                self.lru.pop_front();
                self.lru.push_back((key, f.last_seen));
                continue;
            }
            if !pick(f) {
                return None;
            }
            self.lru.pop_front();
            return Some(key);
        }
        None
    }

    /// Before adding a flow: expire idle ones, then evict if still full.
    fn make_room(&mut self, now: u64) {
        if self.flows.len() < self.max_flows {
            return;
        }
        self.expire(now);
        while self.flows.len() >= self.max_flows {
            match self.pop_oldest(|_| true) {
                Some(key) => {
                    self.forget(&key);
                    self.stats.flows_evicted += 1;
                }
                None => break,
            }
        }
    }

    fn expire(&mut self, now: u64) {
        let idle = self.idle_ns;
        while let Some(key) = self.pop_oldest(|f| now.wrapping_sub(f.last_seen) > idle) {
            self.forget(&key);
            self.stats.flows_expired += 1;
        }
    }
}

/// Scan the queued segments of `flow` that have become contiguous; the
/// queued bytes released.
fn drain_queue(matcher: &Matcher, flow: &mut Flow, want_regex: bool, hits: &mut Vec<Hit>) -> usize {
    let mut released = 0;
    while let Some(entry) = flow.ooo.first_entry() {
        let at = *entry.key();
        if at > flow.stream.pos {
            break;
        }
        let data = entry.remove();
        released += data.len();
        let skip = (flow.stream.pos - at) as usize;
        if skip < data.len() {
            let new = &data[skip..];
            matcher.scan(&mut flow.stream, new, want_regex, hits);
            flow.next_seq = flow.next_seq.wrapping_add(new.len() as u32);
        }
    }
    flow.ooo_bytes -= released;
    released
}

enum Verdict {
    Pass,
    Mark(u8),
    Drop,
}

impl NetworkFunction for Dpi {
    fn spec(&self) -> &'static NfSpec {
        &SPEC
    }

    fn keeps_lengths(&self) -> bool {
        true
    }

    fn process(&mut self, batch: &mut Batch, cx: &mut Context<'_>) {
        let now = self.clock.now(cx.now_ns);
        let runtime_ns = cx.now_ns;
        cx.retain(batch, |p| self.process_packet(p, runtime_ns, now));
    }

    fn tick(&mut self, _out: &mut Batch, cx: &mut Context<'_>) {
        let now = self.clock.now(cx.now_ns);
        self.expire(now);
    }

    fn wants_tick(&self) -> bool {
        !self.flows.is_empty()
    }

    fn export_state(&self) -> Option<NfState> {
        let mut flows: Vec<FlowRecord> = self
            .flows
            .iter()
            .map(|(key, f)| FlowRecord {
                key: *key,
                pos: f.stream.pos,
                tail: f.stream.tail.clone(),
                regex_state: f.stream.regex_state,
                next_seq: f.next_seq,
                last_seen: f.last_seen,
                fired: f.fired.iter().map(|&r| self.rules[r as usize].sid).collect(),
                mark: f.mark,
                blocked: f.blocked,
                ooo: f.ooo.iter().map(|(k, v)| (*k, v.clone())).collect(),
            })
            .collect();
        flows.sort_by_key(|f| f.last_seen);
        let snap = Snapshot { now: self.clock.last(), rules_fingerprint: self.fingerprint, flows };
        Some(NfState::encode(SPEC.name, STATE_VERSION, &snap))
    }

    fn import_state(&mut self, state: &NfState) -> Result<(), StateError> {
        let s: Snapshot = state.decode(SPEC.name, STATE_VERSION)?;
        if s.rules_fingerprint != self.fingerprint {
            return Err(StateError::Corrupt(
                "the state was exported by a dpi NF with other rules".into(),
            ));
        }
        if s.flows.len() > self.max_flows {
            return Err(StateError::Corrupt(format!(
                "{} flows, more than max_flows {}",
                s.flows.len(),
                self.max_flows
            )));
        }
        let mut flows = HashMap::with_capacity(s.flows.len());
        let mut ooo_total = 0;
        for (i, r) in s.flows.into_iter().enumerate() {
            let bad = |what: &str| StateError::Corrupt(format!("flows[{i}]: {what}"));
            let stream = StreamState { pos: r.pos, tail: r.tail, regex_state: r.regex_state };
            if !self.matcher.is_valid(&stream) {
                return Err(bad("stream state does not belong to these rules"));
            }
            let mut fired = Vec::with_capacity(r.fired.len());
            for sid in &r.fired {
                let idx = self
                    .rules
                    .iter()
                    .position(|x| x.sid == *sid)
                    .ok_or_else(|| bad("unknown sid"))?;
                if fired.contains(&(idx as u32)) {
                    return Err(bad("sid fired twice"));
                }
                fired.push(idx as u32);
            }
            let regex_fired = fired
                .iter()
                .filter(|&&k| matches!(self.rules[k as usize].pattern, rules::Pattern::Regex(_)))
                .count();
            let mut ooo = BTreeMap::new();
            let mut ooo_bytes = 0;
            for (at, data) in r.ooo {
                if at <= stream.pos || data.is_empty() {
                    return Err(bad("queued segment not ahead of the stream"));
                }
                ooo_bytes += data.len();
                ooo.insert(at, data);
            }
            if ooo_bytes > self.max_ooo_bytes {
                return Err(bad("queued bytes above max_ooo_bytes"));
            }
            ooo_total += ooo_bytes;
            let flow = Flow {
                stream,
                next_seq: r.next_seq,
                last_seen: r.last_seen,
                fired,
                regex_fired,
                mark: r.mark,
                blocked: r.blocked,
                ooo,
                ooo_bytes,
            };
            if flows.insert(r.key, flow).is_some() {
                return Err(bad("duplicate flow key"));
            }
        }
        if ooo_total > self.ooo_budget {
            return Err(StateError::Corrupt("queued bytes above ooo_budget_bytes".into()));
        }
        let mut order: Vec<(FlowKey, u64)> = flows.iter().map(|(k, f)| (*k, f.last_seen)).collect();
        order.sort_by_key(|&(_, t)| t);
        self.flows = flows;
        self.lru = order.into();
        self.ooo_total = ooo_total;
        self.clock.resume_from(s.now);
        Ok(())
    }
}

const STATE_VERSION: u32 = 1;

#[derive(serde::Serialize, serde::Deserialize)]
struct Snapshot {
    /// NF-local time of the export.
    now: u64,
    rules_fingerprint: u64,
    flows: Vec<FlowRecord>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct FlowRecord {
    key: FlowKey,
    pos: u64,
    tail: Vec<u8>,
    regex_state: u32,
    next_seq: u32,
    last_seen: u64,
    /// sids of the rules that fired, in firing order.
    fired: Vec<u32>,
    mark: Option<u8>,
    blocked: bool,
    /// Queued out-of-order data by stream offset.
    ooo: Vec<(u64, Vec<u8>)>,
}
