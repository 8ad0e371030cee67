//! `nc-encode`: random linear network coding of UDP payloads (block or
//! sliding-window code over GF(2^8), see `docs/network-coding.md`).
//!
//! Each IPv4/UDP source goes out at once with the 12-byte coding header
//! inserted at the start of its UDP payload; coded packets are new frames
//! that copy the headers of the latest source (lengths and checksums
//! fixed). Block code: the coded packets of a generation follow its last
//! source; `tick` flushes a partial generation once its first source is
//! `timeout_ms` old. Sliding code: coded packets are interleaved at the
//! configured rate. Frames that are not IPv4/UDP pass unchanged;
//! IPv4/UDP frames whose lengths do not hold are dropped as `malformed`;
//! sources that would not fit a buffer with the header, `no_room`.

use crate::udp_payload::{self, Located, Template};
use crate::{Context, DropReason, NetworkFunction, NfClass, NfSpec, ParamDoc, Placement};
use braid_coding::block::{BlockConfig, BlockEncoder};
use braid_coding::header::{Header, HEADER_LEN};
use braid_coding::sliding::{SlidingConfig, SlidingEncoder};
use braid_packet::{Batch, Packet};

pub static SPEC: NfSpec = NfSpec {
    name: "nc-encode",
    class: NfClass::Advanced,
    placements: &[Placement::User],
    stateful: false,
    summary: "RLNC encoder over GF(2^8): systematic block or sliding-window code on UDP payloads",
    params: &[
        ParamDoc {
            name: "code",
            kind: "block | sliding",
            default: Some("block"),
            help: "systematic block code or sliding-window code",
        },
        ParamDoc {
            name: "generation_size",
            kind: "u32, 1..=255",
            default: Some("32"),
            help: "block: sources per generation",
        },
        ParamDoc {
            name: "window",
            kind: "u32, 1..=255",
            default: Some("8"),
            help: "sliding: sources combined by each coded packet",
        },
        ParamDoc {
            name: "redundancy",
            kind: "f64, 0..=8",
            default: Some("0.25"),
            help: "coded packets per source (block: per generation, rounded up)",
        },
        ParamDoc {
            name: "seed",
            kind: "u64",
            default: Some("1"),
            help: "seed of the coefficient seeds (runs repeat exactly)",
        },
        ParamDoc {
            name: "timeout_ms",
            kind: "u64",
            default: Some("10"),
            help: "block: flush a partial generation this long after its first source",
        },
    ],
    build: |p| Ok(Box::new(NcEncode::new(&crate::params::parse::<Config>(p)?)?)),
};

/// Which code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Code {
    Block,
    Sliding,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_code")]
    pub code: Code,
    #[serde(default = "default_gen")]
    pub generation_size: u32,
    #[serde(default = "default_window")]
    pub window: u32,
    #[serde(default = "default_redundancy")]
    pub redundancy: f64,
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
}

fn default_code() -> Code {
    Code::Block
}
fn default_gen() -> u32 {
    32
}
fn default_window() -> u32 {
    8
}
fn default_redundancy() -> f64 {
    0.25
}
fn default_seed() -> u64 {
    1
}
fn default_timeout() -> u64 {
    10
}

#[derive(Debug)]
enum Encoder {
    Block(BlockEncoder),
    Sliding(SlidingEncoder),
}

/// The encoding NF.
#[derive(Debug)]
pub struct NcEncode {
    encoder: Encoder,
    timeout_ns: u64,
    /// When the first source of the pending generation arrived.
    pending_since: Option<u64>,
    /// Headers of the latest source, for coded frames.
    template: Option<Template>,
    coded: Vec<(Header, Vec<u8>)>,
}

fn map_err(e: braid_coding::block::EncodeError) -> crate::ConfigError {
    use braid_coding::block::EncodeError as E;
    let field = match e {
        E::GenerationSize(_) => "generation_size",
        E::Window(_) => "window",
        E::Redundancy(_) => "redundancy",
        E::TooLong(_) => "",
    };
    crate::ConfigError::new(field, e.to_string())
}

impl NcEncode {
    pub fn new(cfg: &Config) -> Result<NcEncode, crate::ConfigError> {
        let encoder = match cfg.code {
            Code::Block => Encoder::Block(
                BlockEncoder::new(BlockConfig {
                    generation_size: cfg.generation_size as usize,
                    redundancy: cfg.redundancy,
                    seed: cfg.seed,
                })
                .map_err(map_err)?,
            ),
            Code::Sliding => Encoder::Sliding(
                SlidingEncoder::new(SlidingConfig {
                    window: cfg.window as usize,
                    redundancy: cfg.redundancy,
                    seed: cfg.seed,
                })
                .map_err(map_err)?,
            ),
        };
        Ok(NcEncode {
            encoder,
            timeout_ns: cfg.timeout_ms.saturating_mul(1_000_000),
            pending_since: None,
            template: None,
            coded: Vec::new(),
        })
    }

    /// Encode one packet in place; coded packets due after it go to
    /// `self.coded`.
    fn encode(&mut self, pkt: &mut Packet, now_ns: u64) -> Result<(), DropReason> {
        let loc = match udp_payload::locate(pkt.data()) {
            Located::Udp(loc) => loc,
            Located::Other => return Ok(()),
            Located::Malformed => return Err(DropReason::Malformed),
        };
        let loc = udp_payload::insert(pkt, loc, 0, HEADER_LEN).ok_or(DropReason::NoRoom)?;
        let frame = pkt.data_mut();
        let (hdr, payload) = frame[loc.payload..loc.end].split_at_mut(HEADER_LEN);
        let coded = &mut self.coded;
        let header = match &mut self.encoder {
            Encoder::Block(enc) => {
                let h = enc.push_source(payload).map_err(|_| DropReason::NoRoom)?;
                if self.pending_since.is_none() {
                    self.pending_since = Some(now_ns);
                }
                h
            }
            Encoder::Sliding(enc) => enc
                .push_source(payload, |h, s| coded.push((*h, s.to_vec())))
                .map_err(|_| DropReason::NoRoom)?,
        };
        header.emit(hdr);
        udp_payload::fix_lengths_and_checksums(frame, loc);
        match &mut self.template {
            Some(t) => t.set(pkt.data(), loc),
            None => self.template = Some(Template::of(pkt.data(), loc)),
        }
        if let Encoder::Block(enc) = &mut self.encoder {
            if enc.is_full() {
                enc.finish(|h, s| coded.push((*h, s.to_vec())));
                self.pending_since = None;
            }
        }
        Ok(())
    }

    /// Turn the coded symbols into frames at the end of `out`.
    fn emit_coded(&mut self, out: &mut Batch, cx: &mut Context<'_>) {
        let Some(t) = &self.template else {
            self.coded.clear();
            return;
        };
        for (h, sym) in self.coded.drain(..) {
            let mut hb = [0u8; HEADER_LEN];
            h.emit(&mut hb);
            match t.build(&[&hb, &sym]) {
                Some(p) => {
                    cx.counters.packets_created += 1;
                    out.push(p);
                }
                None => cx.drop_packet(DropReason::NoRoom),
            }
        }
    }
}

impl NetworkFunction for NcEncode {
    fn spec(&self) -> &'static NfSpec {
        &SPEC
    }

    fn process(&mut self, batch: &mut Batch, cx: &mut Context<'_>) {
        let input = batch.take();
        for mut pkt in input {
            match self.encode(&mut pkt, cx.now_ns) {
                Ok(()) => {
                    batch.push(pkt);
                    if !self.coded.is_empty() {
                        self.emit_coded(batch, cx);
                    }
                }
                Err(reason) => cx.drop_packet(reason),
            }
        }
    }

    fn tick(&mut self, out: &mut Batch, cx: &mut Context<'_>) {
        let Encoder::Block(enc) = &mut self.encoder else { return };
        let Some(since) = self.pending_since else { return };
        if cx.now_ns.saturating_sub(since) >= self.timeout_ns {
            let coded = &mut self.coded;
            enc.finish(|h, s| coded.push((*h, s.to_vec())));
            self.pending_since = None;
            self.emit_coded(out, cx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Counters, Params};
    use braid_coding::header::Kind;
    use braid_packet::wire::build::FrameSpec;
    use std::net::Ipv4Addr;

    fn nf(yaml: &str) -> Box<dyn NetworkFunction> {
        (SPEC.build)(&serde_yaml_ng::from_str::<Params>(yaml).unwrap()).unwrap()
    }

    fn frame(i: usize, len: usize) -> Vec<u8> {
        let mut s =
            FrameSpec::udp((Ipv4Addr::new(10, 0, 0, 1), 7), (Ipv4Addr::new(10, 0, 0, 2), 8), len);
        s.payload = (0..len).map(|j| (i + j) as u8).collect();
        s.build()
    }

    fn kinds(b: &Batch) -> Vec<Kind> {
        b.iter()
            .map(|p| {
                let Located::Udp(loc) = udp_payload::locate(p.data()) else { panic!("not udp") };
                Header::parse(&p.data()[loc.payload..loc.end]).unwrap().header.kind
            })
            .collect()
    }

    #[test]
    fn block_sends_sources_then_coded_and_flushes_on_tick() {
        let mut e = nf("generation_size: 4\nredundancy: 0.5\ntimeout_ms: 1");
        let mut c = Counters::default();
        let mut b: Batch = (0..6).map(|i| Packet::from_bytes(&frame(i, 20 + i))).collect();
        e.process(&mut b, &mut Context::new(0, &mut c));
        use Kind::*;
        assert_eq!(
            kinds(&b),
            vec![
                BlockSource,
                BlockSource,
                BlockSource,
                BlockSource,
                BlockCoded,
                BlockCoded,
                BlockSource,
                BlockSource
            ]
        );
        assert_eq!(c.packets_created, 2);
        let mut out = Batch::new();
        e.tick(&mut out, &mut Context::new(500_000, &mut c));
        assert!(out.is_empty(), "not yet timed out");
        e.tick(&mut out, &mut Context::new(1_000_000, &mut c));
        assert_eq!(kinds(&out), vec![BlockCoded]);
        // Every output frame is valid IPv4/UDP with correct checksums.
        for p in b.iter().chain(out.iter()) {
            let Located::Udp(loc) = udp_payload::locate(p.data()) else { panic!() };
            let ip =
                braid_packet::wire::ipv4::Ipv4Packet::new_checked(&p.data()[loc.ip..]).unwrap();
            assert!(ip.verify_checksum());
            let udp = braid_packet::wire::udp::UdpPacket::new_checked(&p.data()[loc.udp..loc.end])
                .unwrap();
            assert!(udp.verify_checksum_v4(ip.src_addr(), ip.dst_addr()));
        }
    }

    #[test]
    fn sliding_interleaves_and_others_pass() {
        let mut e = nf("code: sliding\nwindow: 4\nredundancy: 0.5");
        let mut c = Counters::default();
        let tcp = FrameSpec::tcp((Ipv4Addr::LOCALHOST, 1), (Ipv4Addr::LOCALHOST, 2), 0).build();
        let mut b: Batch = [frame(0, 10), tcp.clone(), frame(1, 10), frame(2, 3), vec![1, 2, 3]]
            .iter()
            .map(|f| Packet::from_bytes(f))
            .collect();
        e.process(&mut b, &mut Context::new(0, &mut c));
        assert_eq!(b.len(), 5);
        assert_eq!(b.as_slice()[1].data(), &tcp[..]);
        assert_eq!(c.dropped(DropReason::Malformed), 1);
        let k: Vec<Kind> = [0usize, 2, 3, 4]
            .iter()
            .map(|&i| {
                let p = &b.as_slice()[i];
                let Located::Udp(loc) = udp_payload::locate(p.data()) else { panic!() };
                Header::parse(&p.data()[loc.payload..loc.end]).unwrap().header.kind
            })
            .collect();
        assert_eq!(
            k,
            vec![Kind::SlidingSource, Kind::SlidingSource, Kind::SlidingCoded, Kind::SlidingSource]
        );
    }

    #[test]
    fn rejects_bad_params() {
        let p: Params = serde_yaml_ng::from_str("generation_size: 300").unwrap();
        assert_eq!((SPEC.build)(&p).err().unwrap().field, "generation_size");
        let p: Params = serde_yaml_ng::from_str("code: fountain").unwrap();
        assert!((SPEC.build)(&p).is_err());
        let p: Params = serde_yaml_ng::from_str("code: sliding\nwindow: 0").unwrap();
        assert_eq!((SPEC.build)(&p).err().unwrap().field, "window");
    }
}
