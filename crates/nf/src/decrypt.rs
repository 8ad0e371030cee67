//! `decrypt`: the inverse of `encrypt`. Reads the header at the start of
//! the UDP payload, decrypts (GCM: verifies the tag first), removes the
//! header and tag and fixes the IPv4 and UDP lengths and checksums.
//!
//! Drops: `auth_failed` when a GCM tag does not verify; `replayed` when a
//! GCM packet's sequence number was already accepted from its sender, or
//! is too far behind to tell (`replay_window`, default 1024 packets, like
//! IPsec's anti-replay window; 0 turns it off); `unsupported` when the
//! header names another mode or key id; `malformed` when the payload is
//! too short for the header (and tag) or has another version, or the
//! IPv4/UDP lengths do not hold. Frames that are not IPv4/UDP pass
//! unchanged. Each packet carries its own nonce, so loss and reordering
//! within the window do not matter.
//!
//! CTR packets are not authenticated, so a replay window would not stop
//! anyone who can rewrite the sequence number: it is refused for CTR.

use crate::aes_header::{
    AesHeader, Cipher, CtrBatch, KeyConfig, Mode, HEADER_LEN, KEY_PARAMS, TAG_LEN,
};
use crate::replay::{ReplayGuard, ReplaySnapshot, MAX_WINDOW, MIN_WINDOW};
use crate::udp_payload::{self, Located, UdpLoc};
use crate::{
    Context, DropReason, Encoding, FlowScope, NetworkFunction, NfClass, NfSpec, NfState, ParamDoc,
    Placement, StateError,
};
use braid_packet::{Batch, Packet};

static PARAMS: [ParamDoc; 5] = [
    KEY_PARAMS[0],
    KEY_PARAMS[1],
    KEY_PARAMS[2],
    KEY_PARAMS[3],
    ParamDoc {
        name: "replay_window",
        kind: "0, or a multiple of 64 in 64..=65536",
        default: Some("1024 (gcm)"),
        help: "anti-replay window in packets per sender (GCM only); 0 turns it off",
    },
];

/// Window size when the descriptor does not give one (GCM).
pub const DEFAULT_REPLAY_WINDOW: u64 = 1024;
/// Senders (encrypting instances, told apart by salt) tracked at once.
pub const MAX_SENDERS: usize = 1024;
const STATE_VERSION: u32 = 1;

pub static SPEC: NfSpec = NfSpec {
    name: "decrypt",
    class: NfClass::Advanced,
    placements: &[Placement::User],
    state: crate::StateKind::Whole,
    kernel: None,
    summary: "AES-CTR / AES-GCM decryption of what `encrypt` produced; GCM tag failures dropped and counted",
    params: &PARAMS,
    build: |p| Ok(Box::new(Decrypt::from_config(&crate::params::parse::<KeyConfig>(p)?)?)),
};

/// The decrypting NF.
#[derive(Debug)]
pub struct Decrypt {
    cipher: Cipher,
    key_id: u16,
    /// GCM with a non-zero window only.
    replay: Option<ReplayGuard>,
    /// CTR: the batch's key streams, computed together.
    ctr: CtrBatch,
}

impl Decrypt {
    pub fn from_config(cfg: &KeyConfig) -> Result<Decrypt, crate::ConfigError> {
        if cfg.udp_checksum.is_some() {
            return Err(crate::ConfigError::new(
                "udp_checksum",
                "only `encrypt` takes udp_checksum; `decrypt` keeps what arrives (0 stays 0)",
            ));
        }
        if cfg.salt.is_some() {
            return Err(crate::ConfigError::new(
                "salt",
                "only `encrypt` takes a salt; `decrypt` reads it from each packet",
            ));
        }
        if cfg.unencrypted.is_some() {
            return Err(crate::ConfigError::new(
                "unencrypted",
                "only `encrypt` takes it; `decrypt` passes what is not its own format",
            ));
        }
        let cipher = cfg.cipher()?;
        let window = match (cipher.mode(), cfg.replay_window) {
            (Mode::Ctr, None | Some(0)) => 0,
            (Mode::Ctr, Some(_)) => {
                return Err(crate::ConfigError::new(
                    "replay_window",
                    "CTR packets are not authenticated, so a replay window protects nothing; use mode: gcm",
                ))
            }
            (Mode::Gcm, w) => w.unwrap_or(DEFAULT_REPLAY_WINDOW),
        };
        if window != 0
            && (!window.is_multiple_of(64) || !(MIN_WINDOW..=MAX_WINDOW).contains(&window))
        {
            return Err(crate::ConfigError::new(
                "replay_window",
                format!(
                    "{window}: give 0 (off) or a multiple of 64 from {MIN_WINDOW} to {MAX_WINDOW}"
                ),
            ));
        }
        let replay = (window != 0).then(|| ReplayGuard::new(window, MAX_SENDERS));
        Ok(Decrypt { cipher, key_id: cfg.key_id, replay, ctr: CtrBatch::default() })
    }

    /// Locate the UDP payload and read the header of this NF's format.
    /// `None`: not IPv4/UDP, passed unchanged.
    #[inline(always)]
    fn locate(&self, pkt: &Packet) -> Result<Option<(UdpLoc, AesHeader)>, DropReason> {
        let loc = match udp_payload::verdict(pkt.data()) {
            Located::Udp(loc) => loc,
            Located::Pass => return Ok(None),
            Located::Drop(reason) => return Err(reason),
        };
        let mode = self.cipher.mode();
        if loc.end - loc.payload < mode.overhead() {
            return Err(DropReason::Malformed);
        }
        let header =
            AesHeader::parse(&pkt.data()[loc.payload..loc.end]).ok_or(DropReason::Malformed)?;
        if header.mode_code != mode.code() || header.key_id != self.key_id {
            return Err(DropReason::Unsupported);
        }
        Ok(Some((loc, header)))
    }

    /// GCM, one packet at a time: the tag is checked before anything is
    /// decrypted or the replay window moves.
    fn decrypt_gcm(&mut self, pkt: &mut Packet) -> Result<(), DropReason> {
        let Some((loc, header)) = self.locate(pkt)? else { return Ok(()) };
        if let Some(g) = &self.replay {
            if !g.fresh(header.salt, header.seq) {
                return Err(DropReason::Replayed);
            }
        }
        let body_len = loc.end - loc.payload - Mode::Gcm.overhead();
        let frame = pkt.data_mut();
        let (hdr, rest) = frame[loc.payload..loc.end].split_at_mut(HEADER_LEN);
        let (body, tag) = rest.split_at_mut(body_len);
        let tag: &[u8; TAG_LEN] = (&*tag).try_into().map_err(|_| DropReason::Malformed)?;
        self.cipher.open(&header.nonce(), hdr, body, tag).map_err(|_| DropReason::AuthFailed)?;
        // Only an authenticated packet moves the window.
        if let Some(g) = &mut self.replay {
            if !g.accept(header.salt, header.seq) {
                return Err(DropReason::Replayed);
            }
        }
        let loc = udp_payload::remove(pkt, loc, HEADER_LEN + body_len, TAG_LEN)
            .ok_or(DropReason::Malformed)?;
        let loc = udp_payload::remove(pkt, loc, 0, HEADER_LEN).ok_or(DropReason::Malformed)?;
        udp_payload::fix_lengths_and_checksums(pkt.data_mut(), loc);
        Ok(())
    }

    /// CTR, a batch at a time as `encrypt` does it: every packet's header
    /// read first, the key streams of all of them in one block-cipher
    /// call, then each payload XORed (its plaintext summed for the UDP
    /// checksum in the same pass) and the header removed.
    fn decrypt_ctr(&mut self, batch: &mut Batch, cx: &mut Context<'_>) {
        self.ctr.clear();
        cx.retain(batch, |pkt| {
            let job = self.locate(pkt)?;
            self.ctr
                .queue(job.map(|(loc, h)| (loc, h.nonce(), loc.end - loc.payload - HEADER_LEN)));
            Ok(())
        });
        self.ctr.compute(&self.cipher);
        self.ctr.finish(batch, cx, |pkt, loc, stream| {
            let body = loc.payload + HEADER_LEN;
            let sum = stream.apply_and_sum(&mut pkt.data_mut()[body..loc.end])?;
            let loc = udp_payload::remove(pkt, loc, 0, HEADER_LEN).ok_or(DropReason::Malformed)?;
            // The plaintext, wherever `remove` left it, is the datagram's
            // payload: its sum is the one just taken.
            udp_payload::fix_lengths_and_checksums_summed(pkt.data_mut(), loc, loc.payload, sum);
            Ok(())
        });
    }
}

impl NetworkFunction for Decrypt {
    fn spec(&self) -> &'static NfSpec {
        &SPEC
    }

    fn process(&mut self, batch: &mut Batch, cx: &mut Context<'_>) {
        match self.cipher.mode() {
            Mode::Ctr => self.decrypt_ctr(batch, cx),
            Mode::Gcm => cx.retain(batch, |pkt| self.decrypt_gcm(pkt)),
        }
    }

    fn export_scoped(&self, scope: &FlowScope, encoding: Encoding) -> Result<NfState, StateError> {
        scope.require_all(SPEC.name)?;
        let guard = self.replay.as_ref().ok_or(StateError::Stateless)?;
        Ok(NfState::encode_as(encoding, SPEC.name, STATE_VERSION, &guard.snapshot()))
    }

    fn import_state(&mut self, state: &NfState) -> Result<(), StateError> {
        let snap: ReplaySnapshot = state.decode(SPEC.name, STATE_VERSION)?;
        match &mut self.replay {
            Some(g) => g.restore(snap).map_err(StateError::Corrupt),
            None => Err(StateError::Corrupt(
                "replay windows, but this decrypt keeps none (CTR or replay_window: 0)".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Counters, Params};
    use braid_packet::wire::build::FrameSpec;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    fn params(mode: &str, key_id: u16) -> Params {
        serde_yaml_ng::from_str(&format!(
            "mode: {mode}\nkey: 603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4\nkey_id: {key_id}"
        ))
        .unwrap()
    }

    fn enc_params(mode: &str) -> Params {
        serde_yaml_ng::from_str(&format!(
            "mode: {mode}\nkey: 603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4\nkey_id: 7"
        ))
        .unwrap()
    }

    fn run(nf: &mut dyn NetworkFunction, frames: &[Vec<u8>], c: &mut Counters) -> Vec<Vec<u8>> {
        let mut b: Batch = frames.iter().map(|f| Packet::from_bytes(f)).collect();
        nf.process(&mut b, &mut Context::new(0, c));
        b.iter().map(|p| p.data().to_vec()).collect()
    }

    fn frames() -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = [0usize, 1, 15, 16, 17, 100, 1400]
            .iter()
            .map(|&n| {
                let mut s = FrameSpec::udp(
                    (Ipv4Addr::new(1, 2, 3, 4), 9),
                    (Ipv4Addr::new(5, 6, 7, 8), 10),
                    n,
                );
                s.payload = (0..n).map(|i| (i * 13) as u8).collect();
                s.build()
            })
            .collect();
        let mut tagged =
            FrameSpec::udp((Ipv4Addr::new(1, 2, 3, 4), 9), (Ipv4Addr::new(5, 6, 7, 8), 10), 50);
        tagged.vlan = Some(100);
        v.push(tagged.build());
        v.push(FrameSpec::icmp_echo(Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST, 1, 2).build());
        v
    }

    /// The CTR format did not change with the batch path: frames whose
    /// payloads were encrypted one by one with AWS-LC's CTR (the cipher
    /// braid's CTR ran on before) decrypt, and `encrypt`'s ciphertext is
    /// AWS-LC's, byte for byte.
    #[test]
    fn ctr_batches_speak_the_per_packet_format() {
        let key: KeyConfig = crate::params::parse(&enc_params("ctr")).unwrap();
        let cipher = key.cipher().unwrap();
        let input = frames();
        let by_hand: Vec<Vec<u8>> = input
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let mut p = Packet::from_bytes(f);
                let Located::Udp(loc) = udp_payload::verdict(p.data()) else { return f.clone() };
                let body = loc.end - loc.payload;
                let loc = udp_payload::insert(&mut p, loc, 0, HEADER_LEN).unwrap();
                let h = AesHeader {
                    mode_code: Mode::Ctr.code(),
                    key_id: 7,
                    salt: [1, 2, 3, 4],
                    seq: i as u64,
                };
                let d = p.data_mut();
                h.emit(&mut d[loc.payload..]);
                cipher
                    .ctr(
                        &h.nonce(),
                        &mut d[loc.payload + HEADER_LEN..loc.payload + HEADER_LEN + body],
                    )
                    .unwrap();
                udp_payload::fix_lengths_and_checksums(d, loc);
                p.data().to_vec()
            })
            .collect();
        let mut c = Counters::default();
        let mut dec = crate::build("decrypt", &params("ctr", 7)).unwrap();
        assert_eq!(run(dec.as_mut(), &by_hand, &mut c), input);
        let mut p = enc_params("ctr");
        p.as_mapping_mut().unwrap().insert("salt".into(), "01020304".into());
        let mut enc = crate::build("encrypt", &p).unwrap();
        assert_eq!(run(enc.as_mut(), &input, &mut c), by_hand);
        assert_eq!(c.dropped_total(), 0);
    }

    #[test]
    fn roundtrip_both_modes_out_of_order() {
        for mode in ["ctr", "gcm"] {
            let mut enc = crate::build("encrypt", &enc_params(mode)).unwrap();
            let mut dec = crate::build("decrypt", &params(mode, 7)).unwrap();
            let input = frames();
            let mut c = Counters::default();
            let mut mid = run(enc.as_mut(), &input, &mut c);
            // Each packet carries its own nonce: reversed order decrypts.
            mid.reverse();
            let mut out = run(dec.as_mut(), &mid, &mut c);
            out.reverse();
            assert_eq!(out, input, "{mode}");
            assert_eq!(c.dropped_total(), 0);
        }
    }

    #[test]
    fn gcm_drops_tampered_packets_and_counts_them() {
        let mut enc = crate::build("encrypt", &enc_params("gcm")).unwrap();
        let mut dec = crate::build("decrypt", &params("gcm", 7)).unwrap();
        let input = frames();
        let mut c = Counters::default();
        let mid = run(enc.as_mut(), &input[..7], &mut c);
        // Flip one bit in: the header (AAD), the ciphertext, the tag.
        let mut bad = Vec::new();
        for (i, at) in [(5usize, 42 + 3), (5, 42 + 16 + 10), (6, 42 + 16 + 1400 + 2)] {
            let mut f = mid[i].clone();
            f[at] ^= 0x10;
            bad.push(f);
        }
        // Changing the key id in the header is unsupported, not an auth failure.
        let mut c = Counters::default();
        let out = run(dec.as_mut(), &bad, &mut c);
        assert!(out.is_empty());
        assert_eq!(c.dropped(DropReason::AuthFailed) + c.dropped(DropReason::Unsupported), 3);
        assert_eq!(c.dropped(DropReason::Unsupported), 1);
    }

    #[test]
    fn wrong_key_id_or_mode_is_unsupported_and_short_is_malformed() {
        let mut enc = crate::build("encrypt", &enc_params("ctr")).unwrap();
        let mid = run(enc.as_mut(), &frames()[..2], &mut Counters::default());
        let mut c = Counters::default();
        let mut dec = crate::build("decrypt", &params("ctr", 8)).unwrap();
        assert!(run(dec.as_mut(), &mid, &mut c).is_empty());
        assert_eq!(c.dropped(DropReason::Unsupported), 2);
        let mut dec = crate::build("decrypt", &params("gcm", 7)).unwrap();
        let mut c = Counters::default();
        // 16 and 17 B payloads are too short for a GCM header and tag:
        // malformed. A 116 B CTR packet has room but the wrong mode.
        assert!(run(dec.as_mut(), &mid, &mut c).is_empty());
        assert_eq!((c.dropped(DropReason::Malformed), c.dropped(DropReason::Unsupported)), (2, 0));
        let long = run(enc.as_mut(), &frames()[5..6], &mut Counters::default());
        assert!(run(dec.as_mut(), &long, &mut c).is_empty());
        assert_eq!(c.dropped(DropReason::Unsupported), 1);
        let plain = &frames()[1];
        let mut c = Counters::default();
        assert!(run(dec.as_mut(), std::slice::from_ref(plain), &mut c).is_empty());
        assert_eq!(c.dropped(DropReason::Malformed), 1);
    }

    #[test]
    fn gcm_replays_are_dropped_and_the_window_survives_export() {
        let mut enc = crate::build("encrypt", &enc_params("gcm")).unwrap();
        let mut dec = crate::build("decrypt", &params("gcm", 7)).unwrap();
        // The UDP frames (the ICMP one passes both NFs untouched).
        let input = frames()[..8].to_vec();
        let mid = run(enc.as_mut(), &input, &mut Counters::default());
        let mut c = Counters::default();
        assert_eq!(run(dec.as_mut(), &mid, &mut c), input);
        // The same packets again, and a duplicate inside one batch.
        let again = run(dec.as_mut(), &mid, &mut c);
        assert!(again.is_empty());
        assert_eq!(c.dropped(DropReason::Replayed), mid.len() as u64);
        let fresh = run(enc.as_mut(), &input[..1], &mut Counters::default());
        let mut c = Counters::default();
        let out = run(dec.as_mut(), &[fresh[0].clone(), fresh[0].clone()], &mut c);
        assert_eq!((out.len(), c.dropped(DropReason::Replayed)), (1, 1));
        // A second decrypt that imports the state refuses the replays too.
        let mut other = crate::build("decrypt", &params("gcm", 7)).unwrap();
        other.import_state(&dec.export_state().unwrap()).unwrap();
        let mut c = Counters::default();
        assert!(run(other.as_mut(), &mid, &mut c).is_empty());
        assert_eq!(c.dropped(DropReason::Replayed), mid.len() as u64);
        // A forged copy (bad tag) of a new sequence number does not move
        // the window: the genuine packet still gets through afterwards.
        let next = run(enc.as_mut(), &input[..1], &mut Counters::default());
        let mut forged = next[0].clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        let mut c = Counters::default();
        assert!(run(other.as_mut(), &[forged], &mut c).is_empty());
        assert_eq!(run(other.as_mut(), &next, &mut c).len(), 1);
        assert_eq!(c.dropped(DropReason::AuthFailed), 1);
    }

    #[test]
    fn replay_window_parameter_is_checked() {
        let with = |mode: &str, w: &str| {
            let mut p = params(mode, 0);
            let v: Params = serde_yaml_ng::from_str(w).unwrap();
            p.as_mapping_mut().unwrap().insert("replay_window".into(), v);
            (SPEC.build)(&p)
        };
        assert!(with("gcm", "0").is_ok());
        assert!(with("gcm", "4096").is_ok());
        assert!(with("ctr", "0").is_ok());
        for (mode, w) in [("gcm", "100"), ("gcm", "32"), ("gcm", "131072"), ("ctr", "64")] {
            assert_eq!(with(mode, w).err().unwrap().field, "replay_window", "{mode} {w}");
        }
        let mut p = enc_params("gcm");
        p.as_mapping_mut().unwrap().insert("replay_window".into(), 64.into());
        assert_eq!((crate::encrypt::SPEC.build)(&p).err().unwrap().field, "replay_window");
        // Without a window (CTR) there is no state to export.
        assert!(crate::build("decrypt", &params("ctr", 0)).unwrap().export_state().is_none());
    }

    #[test]
    fn decrypt_rejects_salt() {
        let mut p = params("gcm", 0);
        p.as_mapping_mut().unwrap().insert("salt".into(), "01020304".into());
        assert_eq!((SPEC.build)(&p).err().unwrap().field, "salt");
    }

    proptest! {
        #[test]
        fn garbage_never_panics(frame in braid_packet::strategy::any_frame()) {
            for mode in ["ctr", "gcm"] {
                let mut dec = crate::build("decrypt", &params(mode, 7)).unwrap();
                let mut enc = crate::build("encrypt", &enc_params(mode)).unwrap();
                let mut c = Counters::default();
                let out = run(dec.as_mut(), std::slice::from_ref(&frame), &mut c);
                prop_assert_eq!(out.len() as u64 + c.dropped_total(), 1);
                let mut c = Counters::default();
                let out = run(enc.as_mut(), std::slice::from_ref(&frame), &mut c);
                prop_assert_eq!(out.len() as u64 + c.dropped_total(), 1);
            }
        }
    }
}
