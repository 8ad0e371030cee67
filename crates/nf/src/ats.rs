//! `ats`: append receive and transmit time stamps to the UDP payload
//! (CALVIN's ATS NF).
//!
//! Two big-endian u64 nanosecond values are appended to the UDP datagram:
//! the receive time (`meta.rx_ns`, or the batch time if the port did not
//! stamp it) and the transmit time (the batch time `cx.now_ns`, the closest
//! this NF gets to the moment the packet leaves). The IPv4 total length,
//! the IPv4 header checksum, the UDP length and the UDP checksum are
//! updated incrementally (RFC 1624), so the cost does not grow with the
//! payload. A zero UDP checksum ("none") stays zero.
//!
//! Ethernet padding after the IPv4 packet (short frames) is removed first:
//! the stamps go right after the datagram, where a receiver looks for them.

use crate::udp_payload::{self, Located};
use crate::Placement;
use crate::{ConfigError, Context, DropReason, NetworkFunction, NfClass, NfSpec, ParamDoc};
use braid_packet::envelope;
use braid_packet::wire::checksum;
use braid_packet::wire::checksum::fold64;
use braid_packet::{Batch, Packet};

/// Bytes appended to each stamped packet.
pub const STAMP_LEN: usize = 16;

pub static SPEC: NfSpec = NfSpec {
    name: "ats",
    class: NfClass::Basic,
    placements: &[Placement::User],
    state: crate::StateKind::None,
    kernel: None,
    summary: "append rx and tx time stamps (2 x u64 ns) to the UDP payload",
    params: &[ParamDoc {
        name: "udp_port",
        kind: "u16, 1..=65535",
        default: Some("none (stamp every UDP packet)"),
        help: "stamp only UDP packets whose source or destination port is this",
    }],
    build: |p| Ok(Box::new(Ats::new(crate::params::parse(p)?)?)),
};

/// `ats` configuration.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub udp_port: Option<u16>,
}

/// The `ats` NF.
#[derive(Debug)]
pub struct Ats {
    udp_port: Option<u16>,
}

/// What happened to one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Stamped,
    Passed,
    Drop(DropReason),
}

impl Ats {
    pub fn new(cfg: Config) -> Result<Ats, ConfigError> {
        if cfg.udp_port == Some(0) {
            return Err(ConfigError::new("udp_port", "port 0 cannot be matched; use 1..=65535"));
        }
        Ok(Ats { udp_port: cfg.udp_port })
    }

    fn stamp(&self, p: &mut Packet, rx_ns: u64, tx_ns: u64) -> Outcome {
        let parsed = envelope::parse(p.data());
        let loc = match udp_payload::policy(&parsed) {
            Located::Pass => return Outcome::Passed,
            Located::Drop(reason) => return Outcome::Drop(reason),
            Located::Udp(loc) => loc,
        };
        let (l3, ip_total, l4, udp_len) = (loc.ip, parsed.ip.total_len, loc.udp, loc.end - loc.udp);
        let frame = p.data();
        if let Some(port) = self.udp_port {
            let src = u16::from_be_bytes([frame[l4], frame[l4 + 1]]);
            let dst = u16::from_be_bytes([frame[l4 + 2], frame[l4 + 3]]);
            if src != port && dst != port {
                return Outcome::Passed;
            }
        }
        // The stamps go right after the UDP datagram, which must then end
        // where the IPv4 packet ends.
        if l4 + udp_len != l3 + ip_total {
            return Outcome::Drop(DropReason::Malformed);
        }
        let end = l3 + ip_total;
        if ip_total + STAMP_LEN > u16::MAX as usize || end + STAMP_LEN > p.len() + p.tailroom() {
            return Outcome::Drop(DropReason::NoRoom);
        }
        let old_udp_ck = u16::from_be_bytes([frame[l4 + 6], frame[l4 + 7]]);
        p.truncate(end);
        let mut stamps = [0u8; STAMP_LEN];
        stamps[..8].copy_from_slice(&rx_ns.to_be_bytes());
        stamps[8..].copy_from_slice(&tx_ns.to_be_bytes());
        if p.extend_from_slice(&stamps).is_err() {
            // Room was checked above; keep the promise not to panic anyway.
            return Outcome::Drop(DropReason::NoRoom);
        }
        let frame = p.data_mut();

        let (old_total, new_total) = (ip_total as u16, (ip_total + STAMP_LEN) as u16);
        frame[l3 + 2..l3 + 4].copy_from_slice(&new_total.to_be_bytes());
        let ip_ck = u16::from_be_bytes([frame[l3 + 10], frame[l3 + 11]]);
        let ip_ck = checksum::update16(ip_ck, old_total, new_total);
        frame[l3 + 10..l3 + 12].copy_from_slice(&ip_ck.to_be_bytes());

        let (old_len, new_len) = (udp_len as u16, (udp_len + STAMP_LEN) as u16);
        frame[l4 + 4..l4 + 6].copy_from_slice(&new_len.to_be_bytes());
        if old_udp_ck != 0 {
            // The length counts twice (header and pseudo-header), and the
            // new bytes are summed at their alignment in the datagram: after
            // an odd-length payload they start in the low byte of a word.
            // The 16 bytes are two big-endian u64: their word sum is the
            // sum of the 32-bit halves, byte-swapped after folding when it
            // starts in the low byte of a word (RFC 1071, section 2(B)).
            let halves =
                (rx_ns >> 32) + (rx_ns & 0xffff_ffff) + (tx_ns >> 32) + (tx_ns & 0xffff_ffff);
            let added = if udp_len % 2 == 1 {
                fold64(halves).swap_bytes() as u64
            } else {
                fold64(halves) as u64
            };
            let acc = !old_udp_ck as u64 + 2 * (!old_len as u64) + 2 * (new_len as u64) + added;
            let ck = !fold64(acc);
            let ck = if ck == 0 { 0xffff } else { ck };
            frame[l4 + 6..l4 + 8].copy_from_slice(&ck.to_be_bytes());
        }
        Outcome::Stamped
    }
}

impl NetworkFunction for Ats {
    fn spec(&self) -> &'static NfSpec {
        &SPEC
    }

    fn process(&mut self, batch: &mut Batch, cx: &mut Context<'_>) {
        let now = cx.now_ns;
        batch.retain_mut(|p| {
            let rx = if p.meta.rx_ns != 0 { p.meta.rx_ns } else { now };
            match self.stamp(p, rx, now) {
                Outcome::Stamped | Outcome::Passed => true,
                Outcome::Drop(r) => {
                    cx.drop_packet(r);
                    false
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Counters, Params};
    use braid_packet::wire::build::FrameSpec;
    use braid_packet::wire::{self, Ipv4Packet, UdpPacket};
    use braid_packet::{BUF_SIZE, HEADROOM};
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    fn ats(yaml: &str) -> Box<dyn NetworkFunction> {
        let p: Params = serde_yaml_ng::from_str(yaml).unwrap();
        (SPEC.build)(&p).unwrap()
    }

    fn frame(payload: usize, sport: u16, dport: u16) -> Vec<u8> {
        FrameSpec::udp(
            (Ipv4Addr::new(10, 1, 0, 1), sport),
            (Ipv4Addr::new(10, 1, 0, 2), dport),
            payload,
        )
        .build()
    }

    fn run(nf: &mut dyn NetworkFunction, pkts: Vec<Packet>, now: u64) -> (Vec<Vec<u8>>, Counters) {
        let mut b: Batch = pkts.into_iter().collect();
        let mut c = Counters::default();
        nf.process(&mut b, &mut Context::new(now, &mut c));
        (b.iter().map(|p| p.data().to_vec()).collect(), c)
    }

    /// The UDP payload of a valid frame, with both checksums verified.
    fn payload(f: &[u8]) -> Vec<u8> {
        let l3 = wire::l3(f).unwrap();
        let ip = Ipv4Packet::new_checked(&f[l3.offset..]).unwrap();
        assert!(ip.verify_checksum(), "IPv4 checksum");
        assert_eq!(ip.total_len() as usize, f.len() - l3.offset);
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!(udp.len() as usize, ip.payload().len());
        if udp.checksum() != 0 {
            assert!(udp.verify_checksum_v4(ip.src_addr(), ip.dst_addr()), "UDP checksum");
        }
        udp.payload().to_vec()
    }

    #[test]
    fn appends_rx_then_tx_and_fixes_lengths_and_checksums() {
        let mut nf = ats("{}");
        for n in [0usize, 1, 2, 255, 256, 1400, 1401] {
            let f = frame(n, 1, 2);
            let mut p = Packet::from_bytes(&f);
            p.meta.rx_ns = 0x0102_0304_0506_0708;
            let mut q = Packet::from_bytes(&f);
            q.meta.rx_ns = 0;
            let (out, c) = run(nf.as_mut(), vec![p, q], 42);
            assert_eq!(c.dropped_total(), 0);
            let a = payload(&out[0]);
            assert_eq!(a.len(), n + STAMP_LEN);
            assert_eq!(&a[..n], &payload(&f)[..]);
            assert_eq!(&a[n..n + 8], &0x0102_0304_0506_0708u64.to_be_bytes());
            assert_eq!(&a[n + 8..], &42u64.to_be_bytes());
            let b = payload(&out[1]);
            assert_eq!(&b[n..n + 8], &42u64.to_be_bytes(), "rx falls back to now");
        }
    }

    #[test]
    fn padding_is_replaced_and_zero_checksum_kept() {
        let mut f = FrameSpec::udp_frame_len(
            (Ipv4Addr::new(1, 2, 3, 4), 7),
            (Ipv4Addr::new(5, 6, 7, 8), 9),
            64,
        )
        .build();
        // Shrink the datagram by 10 bytes, leaving Ethernet padding, and
        // send it without a UDP checksum.
        let (l3, l4) = (14, 34);
        let total = u16::from_be_bytes([f[l3 + 2], f[l3 + 3]]) - 10;
        f[l3 + 2..l3 + 4].copy_from_slice(&total.to_be_bytes());
        f[l3 + 10] = 0;
        f[l3 + 11] = 0;
        let ck = checksum::checksum(&f[l3..l3 + 20]);
        f[l3 + 10..l3 + 12].copy_from_slice(&ck.to_be_bytes());
        let udp_len = total - 20;
        f[l4 + 4..l4 + 6].copy_from_slice(&udp_len.to_be_bytes());
        f[l4 + 6] = 0;
        f[l4 + 7] = 0;
        let mut nf = ats("{}");
        let (out, _) = run(nf.as_mut(), vec![Packet::from_bytes(&f)], 9);
        assert_eq!(out[0].len(), l3 + total as usize + STAMP_LEN);
        assert_eq!(&out[0][l4 + 6..l4 + 8], &[0, 0]);
        let p = payload(&out[0]);
        assert_eq!(&p[p.len() - 8..], &9u64.to_be_bytes());
    }

    #[test]
    fn port_filter_and_other_traffic_pass_unchanged() {
        let mut nf = ats("udp_port: 7000");
        let hit_dst = frame(10, 1, 7000);
        let hit_src = frame(10, 7000, 1);
        let miss = frame(10, 1, 2);
        let icmp = FrameSpec::icmp_echo(Ipv4Addr::new(1, 1, 1, 1), Ipv4Addr::new(2, 2, 2, 2), 1, 1)
            .build();
        let junk = vec![0xab; 50];
        let pk = |f: &Vec<u8>| Packet::from_bytes(f);
        let (out, c) =
            run(nf.as_mut(), vec![pk(&hit_dst), pk(&hit_src), pk(&miss), pk(&icmp), pk(&junk)], 5);
        assert_eq!(out[0].len(), hit_dst.len() + STAMP_LEN);
        assert_eq!(out[1].len(), hit_src.len() + STAMP_LEN);
        assert_eq!(&out[2..], &[miss, icmp, junk]);
        assert_eq!(c.dropped_total(), 0);
        assert!(
            (SPEC.build)(&serde_yaml_ng::from_str("udp_port: 0").unwrap()).err().unwrap().field
                == "udp_port"
        );
    }

    #[test]
    fn no_tailroom_drops_no_room_and_bad_udp_is_malformed() {
        // A datagram that ends exactly at the end of the buffer.
        let big = FrameSpec::udp_frame_len(
            (Ipv4Addr::new(10, 1, 0, 1), 1),
            (Ipv4Addr::new(10, 1, 0, 2), 2),
            BUF_SIZE - HEADROOM,
        )
        .build();
        let tight = Packet::from_bytes(&big);
        assert_eq!(tight.tailroom(), 0);
        // The same datagram 16 bytes shorter, padded to the buffer end:
        // the padding makes the room.
        let mut padded = FrameSpec::udp_frame_len(
            (Ipv4Addr::new(10, 1, 0, 1), 1),
            (Ipv4Addr::new(10, 1, 0, 2), 2),
            BUF_SIZE - HEADROOM - STAMP_LEN,
        )
        .build();
        padded.extend_from_slice(&[0u8; STAMP_LEN]);
        let mut bad = frame(100, 1, 2);
        bad[34 + 4..34 + 6].copy_from_slice(&20u16.to_be_bytes()); // UDP shorter than IP payload
        let mut nf = ats("{}");
        let pkts = vec![tight, Packet::from_bytes(&padded), Packet::from_bytes(&bad)];
        let (out, c) = run(nf.as_mut(), pkts, 1);
        assert_eq!(out.len(), 1, "only the padded one is stamped");
        assert_eq!(out[0].len(), padded.len());
        payload(&out[0]);
        assert_eq!(c.dropped(DropReason::NoRoom), 1);
        assert_eq!(c.dropped(DropReason::Malformed), 1);
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in prop_oneof![proptest::collection::vec(any::<u8>(), 0..1600), braid_packet::strategy::any_frame()]) {
            let mut nf = ats("{}");
            let (out, c) = run(nf.as_mut(), vec![Packet::from_bytes(&bytes)], 3);
            prop_assert_eq!(out.len() as u64 + c.dropped_total(), 1);
        }

        #[test]
        fn stamped_frames_stay_valid(n in 0usize..1470, rx in any::<u64>(), now in any::<u64>()) {
            let f = frame(n, 10, 20);
            let mut p = Packet::from_bytes(&f);
            p.meta.rx_ns = rx;
            let mut nf = ats("{}");
            let (out, _) = run(nf.as_mut(), vec![p], now);
            let pl = payload(&out[0]);
            prop_assert_eq!(pl.len(), n + STAMP_LEN);
        }
    }
}
