//! In-memory ports: a queue of given frames, a counting sink, and a
//! generator of synthetic UDP flows (IPv4 or IPv6) for benchmarks and demos.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, Ipv6Addr};

use braid_packet::wire::build::{Frame6Spec, FrameSpec};
use braid_packet::{Batch, Packet};

use crate::{Port, PortError, PortStats};

/// A port fed from a list of frames; what is sent to it is kept (or only
/// counted, for a [`MemoryPort::sink`]).
pub struct MemoryPort {
    name: String,
    input: VecDeque<Vec<u8>>,
    sent: Vec<Vec<u8>>,
    keep_sent: bool,
    stats: PortStats,
}

impl MemoryPort {
    /// A port that delivers `frames` in order, then reports end of input.
    /// Frames sent to it are kept; see [`MemoryPort::take_sent`].
    pub fn new(name: impl Into<String>, frames: Vec<Vec<u8>>) -> MemoryPort {
        MemoryPort {
            name: name.into(),
            input: frames.into(),
            sent: Vec::new(),
            keep_sent: true,
            stats: PortStats::default(),
        }
    }

    /// A port with no input that counts what is sent to it and keeps
    /// nothing (unbounded runs use no memory).
    pub fn sink(name: impl Into<String>) -> MemoryPort {
        let mut p = MemoryPort::new(name, Vec::new());
        p.keep_sent = false;
        p
    }

    /// The frames sent so far, in order, emptying the list.
    pub fn take_sent(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.sent)
    }
}

impl Port for MemoryPort {
    fn name(&self) -> String {
        format!("memory:{}", self.name)
    }

    fn recv(&mut self, batch: &mut Batch, max: usize) -> Result<usize, PortError> {
        let mut n = 0;
        while n < max {
            let Some(frame) = self.input.pop_front() else { break };
            match Packet::try_from_bytes(&frame) {
                Ok(p) => {
                    self.stats.rx_packets += 1;
                    self.stats.rx_bytes += frame.len() as u64;
                    batch.push(p);
                    n += 1;
                }
                Err(_) => self.stats.rx_dropped += 1,
            }
        }
        Ok(n)
    }

    fn send(&mut self, batch: &mut Batch) -> Result<usize, PortError> {
        let n = batch.len();
        for p in batch.drain() {
            self.stats.tx_packets += 1;
            self.stats.tx_bytes += p.len() as u64;
            if self.keep_sent {
                self.sent.push(p.data().to_vec());
            }
        }
        Ok(n)
    }

    fn at_end(&self) -> bool {
        self.input.is_empty()
    }

    fn stats(&self) -> PortStats {
        self.stats
    }
}

/// What a [`GeneratorPort`] produces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeneratorConfig {
    /// Frame length in bytes without FCS, 60..=1514.
    pub frame_size: usize,
    /// Distinct UDP 5-tuples, cycled round robin; at least 1.
    pub flows: u32,
    /// Stop after this many packets; `None` for no end.
    pub packets: Option<u64>,
    /// Destination address and port of every flow.
    pub dst: (Ipv4Addr, u16),
    /// First source address: flow `i` uses this address plus `i % 65536`
    /// and source port `1024 + i / 65536`.
    pub src_base: Ipv4Addr,
    /// UDP over IPv6 instead: flow `i` from [`GEN6_SRC_BASE`] plus
    /// `i % 65536` (port as above) to [`GEN6_DST`], port `dst.1`.
    pub ipv6: bool,
}

/// First source address of the generator's IPv6 flows.
pub const GEN6_SRC_BASE: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
/// Destination of the generator's IPv6 flows.
pub const GEN6_DST: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            frame_size: 64,
            flows: 1,
            packets: None,
            dst: (Ipv4Addr::new(10, 1, 0, 1), 5000),
            src_base: Ipv4Addr::new(10, 0, 0, 1),
            ipv6: false,
        }
    }
}

/// Largest frame the generator makes: a full Ethernet frame without FCS.
pub const MAX_FRAME_SIZE: usize = 1514;
/// Smallest: 64 B on the wire minus the FCS.
pub const MIN_FRAME_SIZE: usize = 60;

/// A source of synthetic UDP/IPv4 frames: `flows` distinct 5-tuples of
/// `frame_size` bytes with correct checksums, built once as templates and
/// copied into pooled packets on every `recv`.
pub struct GeneratorPort {
    templates: Vec<Vec<u8>>,
    next: usize,
    remaining: Option<u64>,
    stats: PortStats,
}

impl GeneratorPort {
    pub fn new(cfg: &GeneratorConfig) -> Result<GeneratorPort, PortError> {
        if !(MIN_FRAME_SIZE..=MAX_FRAME_SIZE).contains(&cfg.frame_size) {
            return Err(PortError::Config(format!(
                "generator frame size {} is out of range {MIN_FRAME_SIZE}..={MAX_FRAME_SIZE}",
                cfg.frame_size
            )));
        }
        if cfg.flows == 0 {
            return Err(PortError::Config("generator needs at least one flow".into()));
        }
        if cfg.ipv6 && cfg.frame_size < 62 {
            return Err(PortError::Config(format!(
                "generator frame size {} is below 62, the smallest UDP/IPv6 frame",
                cfg.frame_size
            )));
        }
        let base = u32::from(cfg.src_base);
        let base6 = u128::from(GEN6_SRC_BASE);
        let templates = (0..cfg.flows)
            .map(|i| {
                let src_port = 1024u16.wrapping_add((i / 65536) as u16);
                if cfg.ipv6 {
                    let src = Ipv6Addr::from(base6.wrapping_add(u128::from(i % 65536)));
                    let dst = (GEN6_DST, cfg.dst.1);
                    return Frame6Spec::udp_frame_len((src, src_port), dst, cfg.frame_size).build();
                }
                let src_ip = Ipv4Addr::from(base.wrapping_add(i % 65536));
                FrameSpec::udp_frame_len((src_ip, src_port), cfg.dst, cfg.frame_size).build()
            })
            .collect();
        Ok(GeneratorPort {
            templates,
            next: 0,
            remaining: cfg.packets,
            stats: PortStats::default(),
        })
    }

    /// The frame templates, one per flow.
    pub fn templates(&self) -> &[Vec<u8>] {
        &self.templates
    }
}

impl Port for GeneratorPort {
    fn name(&self) -> String {
        format!("generator:{}x{}B", self.templates.len(), self.templates[0].len())
    }

    #[inline]
    fn recv(&mut self, batch: &mut Batch, max: usize) -> Result<usize, PortError> {
        let n = match self.remaining {
            Some(r) => (max as u64).min(r) as usize,
            None => max,
        };
        for _ in 0..n {
            let t = &self.templates[self.next];
            self.next += 1;
            if self.next == self.templates.len() {
                self.next = 0;
            }
            batch.push(Packet::from_bytes(t));
            self.stats.rx_bytes += t.len() as u64;
        }
        self.stats.rx_packets += n as u64;
        if let Some(r) = &mut self.remaining {
            *r -= n as u64;
        }
        Ok(n)
    }

    fn send(&mut self, batch: &mut Batch) -> Result<usize, PortError> {
        self.stats.tx_dropped += batch.len() as u64;
        batch.clear();
        Err(PortError::Config("a generator port cannot send".into()))
    }

    fn at_end(&self) -> bool {
        self.remaining == Some(0)
    }

    fn stats(&self) -> PortStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use braid_packet::envelope;

    #[test]
    fn memory_port_delivers_in_order_and_keeps_sent() {
        let mut p = MemoryPort::new("m", vec![vec![1; 60], vec![2; 60], vec![3; 60]]);
        let mut b = Batch::new();
        assert_eq!(p.recv(&mut b, 2).unwrap(), 2);
        assert!(!p.at_end());
        assert_eq!(p.recv(&mut b, 2).unwrap(), 1);
        assert!(p.at_end());
        assert_eq!(p.send(&mut b).unwrap(), 3);
        assert!(b.is_empty());
        let sent = p.take_sent();
        assert_eq!(sent.iter().map(|f| f[0]).collect::<Vec<_>>(), vec![1, 2, 3]);
        let s = p.stats();
        assert_eq!((s.rx_packets, s.tx_packets, s.tx_bytes), (3, 3, 180));
    }

    #[test]
    fn sink_counts_without_keeping() {
        let mut p = MemoryPort::sink("s");
        let mut b: Batch = (0..5).map(|_| Packet::from_bytes(&[0; 64])).collect();
        p.send(&mut b).unwrap();
        assert!(p.take_sent().is_empty());
        assert_eq!(p.stats().tx_bytes, 320);
    }

    #[test]
    fn generator_makes_distinct_flows_of_the_given_size() {
        let cfg = GeneratorConfig {
            frame_size: 64,
            flows: 70_000,
            packets: Some(100),
            ..Default::default()
        };
        let mut g = GeneratorPort::new(&cfg).unwrap();
        let mut tuples: Vec<_> =
            g.templates().iter().map(|t| envelope::parse(t).flow().unwrap()).collect();
        assert!(g.templates().iter().all(|t| t.len() == 64));
        tuples.sort_by_key(|t| (u32::from(t.src), t.src_port));
        tuples.dedup();
        assert_eq!(tuples.len(), 70_000);
        let mut b = Batch::new();
        let mut total = 0;
        while !g.at_end() {
            total += g.recv(&mut b, 32).unwrap();
            b.clear();
        }
        assert_eq!(total, 100);
        assert_eq!(g.recv(&mut b, 32).unwrap(), 0);
    }

    #[test]
    fn generator_rejects_bad_config() {
        let bad = GeneratorConfig { frame_size: 59, ..Default::default() };
        assert!(GeneratorPort::new(&bad).err().unwrap().to_string().contains("60..=1514"));
        let bad = GeneratorConfig { flows: 0, ..Default::default() };
        assert!(GeneratorPort::new(&bad).is_err());
        let bad = GeneratorConfig { frame_size: 60, ipv6: true, ..Default::default() };
        assert!(matches!(GeneratorPort::new(&bad), Err(PortError::Config(_))));
        let v6 = GeneratorConfig { frame_size: 64, flows: 3, ipv6: true, ..Default::default() };
        let g = GeneratorPort::new(&v6).unwrap();
        let t: Vec<_> =
            g.templates().iter().map(|t| envelope::parse_dual(t).flow6().unwrap()).collect();
        assert!(g.templates().iter().all(|t| t.len() == 64));
        assert_eq!(
            (t[2].src, t[2].dst, t[2].dst_port),
            ("2001:db8::3".parse().unwrap(), GEN6_DST, 5000)
        );
        let big = GeneratorConfig { frame_size: 1514, ..Default::default() };
        assert_eq!(GeneratorPort::new(&big).unwrap().templates()[0].len(), 1514);
    }
}
