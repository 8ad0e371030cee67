//! `encrypt`: AES-CTR or AES-GCM over the UDP payload of IPv4/UDP frames.
//!
//! Inserts the 16-byte header of [`crate::aes_header`] at the start of the
//! UDP payload (GCM also appends the 16-byte tag), encrypts the original
//! payload, and fixes the IPv4 and UDP lengths and checksums. Whole IPv4
//! datagrams of other protocols and ARP pass unchanged (its scope is UDP
//! over IPv4). What it cannot encrypt and is not in that scope — IPv6,
//! IPv4 fragments of any protocol, other ethertypes — is dropped as
//! `unsupported` unless `unencrypted: pass` says to pass it in plaintext
//! (UDP fragments stay dropped: part of a datagram can be neither
//! encrypted nor passed). IPv4/UDP frames whose lengths do not hold
//! are dropped as `malformed`; a frame without room for the header is
//! dropped as `no_room`.

use crate::aes_header::{
    AesHeader, Cipher, CtrBatch, KeyConfig, Mode, UdpChecksum, Unencrypted, HEADER_LEN, KEY_PARAMS,
    TAG_LEN,
};
use crate::udp_payload::{self, Located, UdpLoc};
use crate::{Context, DropReason, NetworkFunction, NfClass, NfSpec, ParamDoc, Placement};
use crate::{Encoding, FlowScope, NfState, StateError};
use braid_packet::envelope::{self, Class, Unsupported};
use braid_packet::{Batch, Packet};

static PARAMS: [ParamDoc; 7] = [
    KEY_PARAMS[0],
    KEY_PARAMS[1],
    KEY_PARAMS[2],
    KEY_PARAMS[3],
    ParamDoc {
        name: "salt",
        kind: "hex string, 8 digits",
        default: Some("random"),
        help: "nonce salt; fixed only for reproducible tests (a fixed salt reused with the same key reuses nonces)",
    },
    ParamDoc {
        name: "unencrypted",
        kind: "drop|pass",
        default: Some("drop"),
        help: "IPv6, non-UDP IPv4 fragments and other ethertypes: dropped (unsupported), or passed in plaintext",
    },
    ParamDoc {
        name: "udp_checksum",
        kind: "compute | zero",
        default: Some("compute"),
        help: "zero: send encrypted IPv4/UDP with checksum 0 (no checksum, valid over IPv4) instead of summing the ciphertext",
    },
];

pub static SPEC: NfSpec = NfSpec {
    name: "encrypt",
    class: NfClass::Advanced,
    placements: &[Placement::User],
    state: crate::StateKind::Whole,
    kernel: None,
    summary: "AES-CTR / AES-GCM encryption of UDP payloads with a per-packet nonce header",
    params: &PARAMS,
    build: |p| Ok(Box::new(Encrypt::from_config(&crate::params::parse::<KeyConfig>(p)?)?)),
};

/// The encrypting NF.
#[derive(Debug)]
pub struct Encrypt {
    cipher: Cipher,
    key_id: u16,
    salt: [u8; 4],
    /// Sequence number of the next packet; with the salt it makes the
    /// nonce, so it never repeats within an instance.
    next_seq: u64,
    /// What happens to frames it cannot encrypt.
    unencrypted: Unencrypted,
    /// `udp_checksum: zero`: write 0 instead of summing the ciphertext.
    zero_checksum: bool,
    /// CTR: the batch's key streams, computed together.
    ctr: CtrBatch,
}

/// A frame with its header in place, its payload not yet encrypted.
struct Prepared {
    loc: UdpLoc,
    header: AesHeader,
    body_len: usize,
}

impl Encrypt {
    pub fn from_config(cfg: &KeyConfig) -> Result<Encrypt, crate::ConfigError> {
        if cfg.replay_window.is_some() {
            return Err(crate::ConfigError::new(
                "replay_window",
                "only `decrypt` keeps a replay window; `encrypt` numbers its packets",
            ));
        }
        Ok(Encrypt {
            cipher: cfg.cipher()?,
            key_id: cfg.key_id,
            salt: cfg.salt()?,
            next_seq: 0,
            unencrypted: cfg.unencrypted.unwrap_or_default(),
            zero_checksum: cfg.udp_checksum == Some(UdpChecksum::Zero),
            ctr: CtrBatch::default(),
        })
    }

    /// Locate the UDP payload, insert the header (and GCM's room for the
    /// tag) and write the header, numbering the packet. `None`: the frame
    /// passes unencrypted. Inlined: returned through memory, its result
    /// was read back with wider loads than it was written with, a
    /// store-forwarding stall per packet (a tenth of the NF at 256 B).
    #[inline(always)]
    fn prepare(&mut self, pkt: &mut Packet) -> Result<Option<Prepared>, DropReason> {
        let parsed = envelope::parse(pkt.data());
        let loc = match udp_payload::policy(&parsed) {
            Located::Udp(loc) => loc,
            // Whole IPv4 of another protocol (its scope is UDP) and ARP
            // pass; IPv6, IPv4 fragments and other ethertypes only when
            // configured to, never silently in plaintext.
            Located::Pass
                if self.unencrypted == Unencrypted::Pass
                    || matches!(
                        parsed.class,
                        Class::Ok | Class::Unsupported { what: Unsupported::Arp }
                    ) =>
            {
                return Ok(None)
            }
            Located::Pass => return Err(DropReason::Unsupported),
            Located::Drop(reason) => return Err(reason),
        };
        let mode = self.cipher.mode();
        let body_len = loc.end - loc.payload;
        let mut loc = udp_payload::insert(pkt, loc, 0, HEADER_LEN).ok_or(DropReason::NoRoom)?;
        if mode == Mode::Gcm {
            loc = udp_payload::insert(pkt, loc, HEADER_LEN + body_len, TAG_LEN)
                .ok_or(DropReason::NoRoom)?;
        }
        let header = AesHeader {
            mode_code: mode.code(),
            key_id: self.key_id,
            salt: self.salt,
            seq: self.next_seq,
        };
        self.next_seq += 1;
        header.emit(&mut pkt.data_mut()[loc.payload..loc.payload + HEADER_LEN]);
        Ok(Some(Prepared { loc, header, body_len }))
    }

    /// The IPv4 and UDP lengths and checksums of an encrypted frame.
    fn finish(&self, frame: &mut [u8], loc: UdpLoc) {
        if self.zero_checksum {
            udp_payload::fix_lengths_zero_udp_checksum(frame, loc);
        } else {
            udp_payload::fix_lengths_and_checksums(frame, loc);
        }
    }

    /// GCM, one packet at a time (AWS-LC's GCM is fastest per call).
    fn encrypt_gcm(&mut self, pkt: &mut Packet) -> Result<(), DropReason> {
        let Some(Prepared { loc, header, body_len }) = self.prepare(pkt)? else { return Ok(()) };
        let frame = pkt.data_mut();
        let (hdr, rest) = frame[loc.payload..loc.end].split_at_mut(HEADER_LEN);
        let (body, tag) = rest.split_at_mut(body_len);
        let sealed = self.cipher.seal(&header.nonce(), hdr, body).map_err(|_| DropReason::Other)?;
        tag.copy_from_slice(&sealed);
        self.finish(frame, loc);
        Ok(())
    }

    /// CTR, a batch at a time: every packet's header first, then the key
    /// streams of all of them in one block-cipher call, then each payload
    /// XORed and its checksums fixed.
    fn encrypt_ctr(&mut self, batch: &mut Batch, cx: &mut Context<'_>) {
        self.ctr.clear();
        cx.retain(batch, |pkt| {
            let job = self.prepare(pkt)?;
            self.ctr.queue(job.map(|p| (p.loc, p.header.nonce(), p.body_len)));
            Ok(())
        });
        self.ctr.compute(&self.cipher);
        let zero_checksum = self.zero_checksum;
        self.ctr.finish(batch, cx, |pkt, loc, stream| {
            let frame = pkt.data_mut();
            let body = loc.payload + HEADER_LEN;
            if zero_checksum {
                stream.apply(&mut frame[body..loc.end])?;
                udp_payload::fix_lengths_zero_udp_checksum(frame, loc);
            } else {
                // The ciphertext summed as it is written: no second pass.
                let sum = stream.apply_and_sum(&mut frame[body..loc.end])?;
                udp_payload::fix_lengths_and_checksums_summed(frame, loc, body, sum);
            }
            Ok(())
        });
    }
}

/// The exported state: the nonce sequence (salt and next sequence
/// number) and the key id it belongs to. The key itself never leaves the
/// NF: the importer has it from its own configuration.
#[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct SequenceState {
    key_id: u16,
    salt: [u8; 4],
    next_seq: u64,
}

const STATE_VERSION: u32 = 1;

impl NetworkFunction for Encrypt {
    fn spec(&self) -> &'static NfSpec {
        &SPEC
    }

    fn process(&mut self, batch: &mut Batch, cx: &mut Context<'_>) {
        match self.cipher.mode() {
            Mode::Ctr => self.encrypt_ctr(batch, cx),
            Mode::Gcm => cx.retain(batch, |pkt| self.encrypt_gcm(pkt)),
        }
    }

    fn export_scoped(&self, scope: &FlowScope, encoding: Encoding) -> Result<NfState, StateError> {
        scope.require_all(SPEC.name)?;
        let s = SequenceState { key_id: self.key_id, salt: self.salt, next_seq: self.next_seq };
        Ok(NfState::encode_as(encoding, SPEC.name, STATE_VERSION, &s))
    }

    /// Continue the exporter's nonce sequence (its salt and next sequence
    /// number), so the receiver's replay window sees one sender going on.
    /// The exporter must encrypt nothing more afterwards (a migration
    /// stops it): two instances with one key, salt and sequence would
    /// reuse nonces.
    fn import_state(&mut self, state: &NfState) -> Result<(), StateError> {
        let s: SequenceState = state.decode(SPEC.name, STATE_VERSION)?;
        if s.key_id != self.key_id {
            return Err(StateError::Corrupt(format!(
                "state is for key_id {}, this encrypt uses key_id {}",
                s.key_id, self.key_id
            )));
        }
        self.salt = s.salt;
        self.next_seq = s.next_seq;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Counters, Params};
    use braid_packet::wire::build::FrameSpec;
    use std::net::Ipv4Addr;

    pub(crate) fn params(mode: &str) -> Params {
        serde_yaml_ng::from_str(&format!(
            "mode: {mode}\nkey: 603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4\nkey_id: 7\nsalt: 0a0b0c0d"
        ))
        .unwrap()
    }

    #[test]
    fn encrypts_udp_payload_and_fixes_headers() {
        for (mode, extra) in [("ctr", 16), ("gcm", 32)] {
            let mut nf = (SPEC.build)(&params(mode)).unwrap();
            let spec = FrameSpec::udp(
                (Ipv4Addr::new(10, 0, 0, 1), 5),
                (Ipv4Addr::new(10, 0, 0, 2), 6),
                100,
            );
            let frame = spec.build();
            let tcp = FrameSpec::tcp((Ipv4Addr::LOCALHOST, 1), (Ipv4Addr::LOCALHOST, 2), 0).build();
            let mut b: Batch = [&frame[..], &tcp[..], &frame[..20]]
                .iter()
                .map(|f| Packet::from_bytes(f))
                .collect();
            let mut c = Counters::default();
            nf.process(&mut b, &mut Context::new(0, &mut c));
            assert_eq!(b.len(), 2);
            assert_eq!(c.dropped(DropReason::Malformed), 1);
            let out = b.as_slice()[0].data();
            assert_eq!(out.len(), frame.len() + extra);
            let Located::Udp(loc) = udp_payload::verdict(out) else { panic!() };
            let ip = braid_packet::wire::ipv4::Ipv4Packet::new_checked(&out[loc.ip..]).unwrap();
            assert!(ip.verify_checksum());
            let udp =
                braid_packet::wire::udp::UdpPacket::new_checked(&out[loc.udp..loc.end]).unwrap();
            assert!(udp.verify_checksum_v4(ip.src_addr(), ip.dst_addr()));
            let h = AesHeader::parse(&out[loc.payload..]).unwrap();
            assert_eq!((h.key_id, h.salt, h.seq), (7, [10, 11, 12, 13], 0));
            assert_ne!(&out[loc.payload + 16..loc.payload + 116], &frame[frame.len() - 100..]);
            assert_eq!(b.as_slice()[1].data(), &tcp[..], "TCP passes unchanged");
        }
    }

    /// Issue 13 item 6: IPv6 and IPv4 fragments (of any protocol) never
    /// leave in plaintext unless `unencrypted: pass` says so; ARP and
    /// whole non-UDP IPv4 pass.
    #[test]
    fn ipv6_and_fragments_are_dropped_unless_configured() {
        use braid_packet::wire::ethertype;
        let tcp = FrameSpec::tcp((Ipv4Addr::LOCALHOST, 1), (Ipv4Addr::LOCALHOST, 2), 40).build();
        let mut tcp_frag = tcp.clone();
        tcp_frag[20] = 0x20; // more fragments: a first fragment
        let mut tcp_later = tcp.clone();
        tcp_later[21] = 3;
        for f in [&mut tcp_frag, &mut tcp_later] {
            f[24..26].fill(0);
            let ck = braid_packet::wire::checksum::checksum(&f[14..34]);
            f[24..26].copy_from_slice(&ck.to_be_bytes());
        }
        let mut ipv6 = tcp.clone();
        ipv6[12..14].copy_from_slice(&ethertype::IPV6.to_be_bytes());
        ipv6[14] = 0x60;
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&ethertype::ARP.to_be_bytes());
        arp[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        let mut other = tcp.clone();
        other[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
        let frames = [tcp_frag, tcp_later, ipv6, other, arp.clone(), tcp.clone()];
        let run = |extra: &str| {
            let mut p = params("gcm");
            if !extra.is_empty() {
                p.as_mapping_mut().unwrap().insert("unencrypted".into(), extra.into());
            }
            let mut nf = (SPEC.build)(&p).unwrap();
            let mut b: Batch = frames.iter().map(|f| Packet::from_bytes(f)).collect();
            let mut c = Counters::default();
            nf.process(&mut b, &mut Context::new(0, &mut c));
            (b.iter().map(|p| p.data().to_vec()).collect::<Vec<_>>(), c)
        };
        let (out, c) = run("");
        assert_eq!(c.dropped(DropReason::Unsupported), 4);
        assert_eq!(out, vec![arp, tcp]);
        let (out, c) = run("drop");
        assert_eq!((out.len(), c.dropped_total()), (2, 4));
        let (out, c) = run("pass");
        assert_eq!((out.len(), c.dropped_total()), (6, 0));
        assert_eq!(out, frames.to_vec());
        let mut p = params("gcm");
        p.as_mapping_mut().unwrap().insert("unencrypted".into(), "maybe".into());
        assert_eq!((SPEC.build)(&p).err().unwrap().field, "unencrypted");
        p.as_mapping_mut().unwrap().insert("unencrypted".into(), "pass".into());
        p.as_mapping_mut().unwrap().remove("salt");
        assert_eq!(
            (crate::decrypt::SPEC.build)(&p).err().unwrap().field,
            "unencrypted",
            "decrypt refuses it"
        );
    }

    #[test]
    fn zero_udp_checksum_skips_the_pass_and_decrypt_gets_the_plaintext_back() {
        for mode in ["ctr", "gcm"] {
            let mut p = params(mode);
            if let Params::Mapping(m) = &mut p {
                m.insert("udp_checksum".into(), "zero".into());
            }
            let mut nf = (SPEC.build)(&p).unwrap();
            let frame = FrameSpec::udp(
                (Ipv4Addr::new(10, 0, 0, 1), 5),
                (Ipv4Addr::new(10, 0, 0, 2), 6),
                1400,
            )
            .build();
            let mut b: Batch = [Packet::from_bytes(&frame)].into_iter().collect();
            let mut c = Counters::default();
            nf.process(&mut b, &mut Context::new(0, &mut c));
            let out = b.as_slice()[0].data().to_vec();
            let Located::Udp(loc) = udp_payload::verdict(&out) else { panic!() };
            let ip = braid_packet::wire::ipv4::Ipv4Packet::new_checked(&out[loc.ip..]).unwrap();
            assert!(ip.verify_checksum());
            assert_eq!(usize::from(ip.total_len()), loc.end - loc.ip);
            let udp =
                braid_packet::wire::udp::UdpPacket::new_checked(&out[loc.udp..loc.end]).unwrap();
            assert_eq!(udp.checksum(), 0, "no checksum");
            assert_eq!(usize::from(udp.len()), loc.end - loc.udp);
            // decrypt restores the payload; the 0 stays 0.
            let mut dp = params(mode);
            if let Params::Mapping(m) = &mut dp {
                m.remove("salt");
            }
            let mut dec = crate::build("decrypt", &dp).unwrap();
            dec.process(&mut b, &mut Context::new(0, &mut c));
            let back = b.as_slice()[0].data();
            assert_eq!(back[42..], frame[42..]);
            assert_eq!(back[40..42], [0, 0]);
            assert_eq!(c.dropped_total(), 0);
        }
        let mut p = params("gcm");
        if let Params::Mapping(m) = &mut p {
            m.insert("udp_checksum".into(), "zero".into());
            m.remove("salt");
        }
        let e = crate::build("decrypt", &p).err().unwrap();
        assert!(e.to_string().contains("only `encrypt` takes udp_checksum"), "{e}");
        let mut p = params("gcm");
        if let Params::Mapping(m) = &mut p {
            m.insert("udp_checksum".into(), "maybe".into());
        }
        assert!((SPEC.build)(&p).is_err());
    }

    #[test]
    fn rejects_bad_params() {
        let e = (SPEC.build)(&Params::Null).err().unwrap();
        assert_eq!(e.field, "key");
        let p: Params =
            serde_yaml_ng::from_str("key: 00112233445566778899aabbccddeeff\nmode: cbc").unwrap();
        assert!((SPEC.build)(&p).is_err());
        let p: Params =
            serde_yaml_ng::from_str("key: 00112233445566778899aabbccddeeff\nsalt: 0102").unwrap();
        assert_eq!((SPEC.build)(&p).err().unwrap().field, "salt");
    }

    #[test]
    fn sequence_numbers_advance_and_random_salts_differ() {
        let p: Params = serde_yaml_ng::from_str("key: 00112233445566778899aabbccddeeff").unwrap();
        let frame = FrameSpec::udp((Ipv4Addr::LOCALHOST, 1), (Ipv4Addr::LOCALHOST, 2), 10).build();
        let mut salts = Vec::new();
        for _ in 0..2 {
            let mut nf = (SPEC.build)(&p).unwrap();
            let mut b: Batch = (0..3).map(|_| Packet::from_bytes(&frame)).collect();
            nf.process(&mut b, &mut Context::new(0, &mut Counters::default()));
            let hs: Vec<AesHeader> =
                b.iter().map(|p| AesHeader::parse(&p.data()[42..]).unwrap()).collect();
            assert_eq!(hs.iter().map(|h| h.seq).collect::<Vec<_>>(), vec![0, 1, 2]);
            salts.push(hs[0].salt);
        }
        // Two random 32-bit salts collide with probability 2^-32.
        assert_ne!(salts[0], salts[1]);
    }

    fn through(nf: &mut dyn NetworkFunction, frames: &[Vec<u8>], c: &mut Counters) -> Vec<Vec<u8>> {
        let mut b: Batch = frames.iter().map(|f| Packet::from_bytes(f)).collect();
        nf.process(&mut b, &mut Context::new(0, c));
        b.iter().map(|p| p.data().to_vec()).collect()
    }

    proptest::proptest! {
        /// CTR works a batch at a time (one key-stream call for all its
        /// packets): a batch of any frames, valid or not, gives after
        /// `decrypt` what each frame gives in a batch of its own, every
        /// frame is kept or counted as dropped, and the encrypted ones
        /// are numbered in order.
        #[test]
        fn a_ctr_batch_gives_what_its_frames_give_one_by_one(
            frames in proptest::collection::vec(
                proptest::prop_oneof![
                    braid_packet::strategy::valid_frame(),
                    braid_packet::strategy::any_frame()
                ],
                0..40,
            )
        ) {
            let enc_params = params("ctr");
            let mut dec_params = enc_params.clone();
            dec_params.as_mapping_mut().unwrap().remove("salt");
            let build = |name: &str| {
                crate::build(name, if name == "encrypt" { &enc_params } else { &dec_params }).unwrap()
            };
            let mut expected = Vec::new();
            for f in &frames {
                let (mut enc, mut dec) = (build("encrypt"), build("decrypt"));
                let mut c = Counters::default();
                let once = through(enc.as_mut(), std::slice::from_ref(f), &mut c);
                expected.extend(through(dec.as_mut(), &once, &mut c));
            }
            let (mut enc, mut dec) = (build("encrypt"), build("decrypt"));
            let mut c = Counters::default();
            let encrypted = through(enc.as_mut(), &frames, &mut c);
            proptest::prop_assert_eq!(encrypted.len() as u64 + c.dropped_total(), frames.len() as u64);
            let seqs: Vec<u64> = encrypted
                .iter()
                .filter_map(|f| match udp_payload::verdict(f) {
                    Located::Udp(loc) => AesHeader::parse(&f[loc.payload..]).map(|h| h.seq),
                    _ => None,
                })
                .collect();
            proptest::prop_assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
            for f in &encrypted {
                // Checksums summed in the XOR pass are the right ones.
                if let Located::Udp(loc) = udp_payload::verdict(f) {
                    let ip = braid_packet::wire::ipv4::Ipv4Packet::new_checked(&f[loc.ip..]).unwrap();
                    let udp = braid_packet::wire::udp::UdpPacket::new_checked(&f[loc.udp..loc.end]).unwrap();
                    proptest::prop_assert!(
                        udp.checksum() == 0 || udp.verify_checksum_v4(ip.src_addr(), ip.dst_addr())
                    );
                }
            }
            let back = through(dec.as_mut(), &encrypted, &mut Counters::default());
            proptest::prop_assert_eq!(back, expected);
        }
    }
}
