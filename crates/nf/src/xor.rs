//! `xor`: XOR the UDP payload of IPv4 packets with a static key (CALVIN's
//! XOR NF), repeating the key over the payload, and fix the UDP checksum.
//!
//! The payload is processed 32 bytes at a time (four u64 lanes) against a
//! key stream precomputed at build time, and the same pass sums the old and
//! new payload words so the checksum update costs no second pass. The default
//! update is incremental (RFC 1624), which keeps a packet that arrived with
//! a wrong checksum detectably wrong; `checksum: recompute` computes it
//! from scratch instead (see `docs/benchmarks.md` for the cost of each).

use crate::kernel::{KernelConfig, KernelError};
use crate::udp_payload::{self, Located, UdpLoc};
use crate::Placement;
use crate::{ConfigError, Context, NetworkFunction, NfClass, NfSpec, ParamDoc};
use braid_packet::wire::checksum::fold64;
use braid_packet::wire::{checksum, ip_proto};
use braid_packet::{Batch, BUF_SIZE};
use std::net::Ipv4Addr;

pub static SPEC: NfSpec = NfSpec {
    name: "xor",
    class: NfClass::Basic,
    placements: &[Placement::Kernel, Placement::User],
    state: crate::StateKind::None,
    kernel: Some(kernel_config),
    summary: "XOR the UDP payload with a key; fix the UDP checksum",
    params: &[
        ParamDoc {
            name: "key",
            kind: "quoted hex string \"0x...\", >= 1 byte",
            default: None,
            help: "the key as bytes (exactly one of key, key_text)",
        },
        ParamDoc {
            name: "key_text",
            kind: "string, >= 1 byte",
            default: None,
            help: "the key as the UTF-8 bytes of a text",
        },
        ParamDoc {
            name: "checksum",
            kind: "incremental | recompute",
            default: Some("incremental"),
            help: "how the UDP checksum is updated (a zero checksum stays zero)",
        },
    ],
    build: |p| Ok(Box::new(Xor::new(crate::params::parse(p)?)?)),
};

/// How the UDP checksum is brought up to date after the payload changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChecksumMode {
    /// RFC 1624 update from the old and new payload sums.
    Incremental,
    /// Full recomputation over pseudo-header, header and payload.
    Recompute,
}

fn default_checksum() -> ChecksumMode {
    ChecksumMode::Incremental
}

/// `xor` configuration.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub key: Option<HexKey>,
    #[serde(default)]
    pub key_text: Option<String>,
    #[serde(default = "default_checksum")]
    pub checksum: ChecksumMode,
}

/// Key bytes written as a quoted `0x...` hex string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HexKey(pub Vec<u8>);

impl std::str::FromStr for HexKey {
    type Err = String;
    fn from_str(s: &str) -> Result<HexKey, String> {
        let digits = s
            .strip_prefix("0x")
            .or_else(|| s.strip_prefix("0X"))
            .ok_or_else(|| format!("`{s}` does not start with 0x"))?;
        if digits.is_empty() || digits.len() % 2 != 0 {
            return Err(format!(
                "`{s}` needs an even, non-zero number of hex digits after 0x (got {})",
                digits.len()
            ));
        }
        let bytes: Result<Vec<u8>, String> = (0..digits.len())
            .step_by(2)
            .map(|i| {
                u8::from_str_radix(&digits[i..i + 2], 16)
                    .map_err(|_| format!("`{}` in `{s}` is not a hex byte", &digits[i..i + 2]))
            })
            .collect();
        Ok(HexKey(bytes?))
    }
}

impl<'de> serde::Deserialize<'de> for HexKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<HexKey, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = HexKey;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a quoted hex string such as \"0x5a17\"")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<HexKey, E> {
                s.parse().map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<HexKey, E> {
                Err(E::custom(
                    "write the key as a quoted string, e.g. key: \"0x0a0b\" (unquoted hex \
                     is read as a number and loses its leading zero bytes)",
                ))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<HexKey, E> {
                self.visit_u64(v as u64)
            }
        }
        d.deserialize_any(V)
    }
}

/// XOR `data` with `stream` and return the ones' complement sums of the
/// big-endian 16-bit words of `data` before and after, folded to 16 bits.
/// `data` must start at an even offset of the checksummed region.
///
/// Works 32 bytes at a time as four independent u64 lanes in native byte
/// order (no byte swap per word): the ones' complement sum does not depend
/// on byte order except for a final swap of the folded result (RFC 1071,
/// section 2(B)).
///
/// # Panics
///
/// If `stream` is shorter than `data` (the NF always passes a long enough
/// stream).
#[inline]
pub fn xor_and_sum(data: &mut [u8], stream: &[u8]) -> (u64, u64) {
    let stream = &stream[..data.len()];
    let (mut old, mut new) = ([0u64; 4], [0u64; 4]);
    let mut chunks = data.chunks_exact_mut(32);
    let mut keys = stream.chunks_exact(32);
    for (d, k) in (&mut chunks).zip(&mut keys) {
        for lane in 0..4 {
            let at = lane * 8;
            let x = u64::from_ne_bytes(d[at..at + 8].try_into().expect("8 bytes"));
            let y = x ^ u64::from_ne_bytes(k[at..at + 8].try_into().expect("8 bytes"));
            d[at..at + 8].copy_from_slice(&y.to_ne_bytes());
            // Adding 32-bit halves is the same ones' complement sum as
            // adding 16-bit words, because 2^16 = 1 modulo 2^16 - 1.
            old[lane] += (x >> 32) + (x & 0xffff_ffff);
            new[lane] += (y >> 32) + (y & 0xffff_ffff);
        }
    }
    let (mut old, mut new) = (old.iter().sum::<u64>(), new.iter().sum::<u64>());
    // Short payloads (a 64 B frame has 22 bytes) are mostly this: 8 bytes
    // at a time, then 16-bit words.
    let mut chunks = chunks.into_remainder().chunks_exact_mut(8);
    let mut keys = keys.remainder().chunks_exact(8);
    for (d, k) in (&mut chunks).zip(&mut keys) {
        let x = u64::from_ne_bytes((&*d).try_into().expect("8 bytes"));
        let y = x ^ u64::from_ne_bytes(k.try_into().expect("8 bytes"));
        d.copy_from_slice(&y.to_ne_bytes());
        old += (x >> 32) + (x & 0xffff_ffff);
        new += (y >> 32) + (y & 0xffff_ffff);
    }
    let rest = chunks.into_remainder();
    let rest_keys = keys.remainder();
    let mut i = 0;
    while i < rest.len() {
        let hi = rest[i];
        let lo = rest.get(i + 1).copied().unwrap_or(0);
        let khi = rest_keys[i];
        let klo = rest_keys.get(i + 1).copied().unwrap_or(0);
        rest[i] = hi ^ khi;
        if i + 1 < rest.len() {
            rest[i + 1] = lo ^ klo;
        }
        // An odd last byte is the high byte of a word padded with zero.
        old += u16::from_ne_bytes([hi, lo]) as u64;
        new += u16::from_ne_bytes([hi ^ khi, if i + 1 < rest.len() { lo ^ klo } else { 0 }]) as u64;
        i += 2;
    }
    let (old, new) = (fold64(old), fold64(new));
    if cfg!(target_endian = "little") {
        (old.swap_bytes() as u64, new.swap_bytes() as u64)
    } else {
        (old as u64, new as u64)
    }
}

/// XOR and checksum sums one byte at a time: the plain loop that
/// [`xor_and_sum`] replaces, kept for the benchmark's comparison and as
/// the test oracle.
pub fn xor_and_sum_bytewise(data: &mut [u8], stream: &[u8]) -> (u64, u64) {
    let old = checksum::sum(data);
    for (d, k) in data.iter_mut().zip(stream) {
        *d ^= k;
    }
    (fold64(old as u64) as u64, fold64(checksum::sum(data) as u64) as u64)
}

fn lcm(a: usize, b: usize) -> usize {
    fn gcd(a: usize, b: usize) -> usize {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    a / gcd(a, b) * b
}

/// The `xor` NF.
#[derive(Debug)]
pub struct Xor {
    key_len: usize,
    /// The key repeated to a length that is a multiple of both the key
    /// length and 8 and at least a heap buffer's size: the hot loop never
    /// wraps around the key, and a longer payload (external buffers can be
    /// larger) is done in segments of this length that each start at key
    /// phase 0 and at an even, 8-aligned offset.
    stream: Vec<u8>,
    mode: ChecksumMode,
}

impl Xor {
    pub fn new(cfg: Config) -> Result<Xor, ConfigError> {
        let key = match (cfg.key, cfg.key_text) {
            (Some(k), None) => k.0,
            (None, Some(t)) => t.into_bytes(),
            (None, None) => return Err(ConfigError::new("key", "missing: give key or key_text")),
            (Some(_), Some(_)) => {
                return Err(ConfigError::new("key_text", "give either key or key_text, not both"))
            }
        };
        if key.is_empty() {
            return Err(ConfigError::new("key_text", "the key must have at least one byte"));
        }
        let period = lcm(key.len(), 8);
        let len = BUF_SIZE.div_ceil(period) * period;
        let stream = key.iter().copied().cycle().take(len).collect();
        Ok(Xor { key_len: key.len(), stream, mode: cfg.checksum })
    }

    /// Key length in bytes.
    pub fn key_len(&self) -> usize {
        self.key_len
    }

    fn apply(&self, frame: &mut [u8], loc: UdpLoc) {
        let (l3, l4, udp_len) = (loc.ip, loc.udp, loc.end - loc.udp);
        let udp = &mut frame[l4..l4 + udp_len];
        let (head, payload) = udp.split_at_mut(8);
        let (mut old, mut new) = (0u64, 0u64);
        for segment in payload.chunks_mut(self.stream.len()) {
            let (o, n) = xor_and_sum(segment, &self.stream);
            // Fold per segment so the sums cannot overflow whatever the
            // payload length.
            old += fold64(o) as u64;
            new += fold64(n) as u64;
        }
        let ck = u16::from_be_bytes([head[6], head[7]]);
        if ck == 0 {
            // No checksum was sent; none is added.
            return;
        }
        let ck = match self.mode {
            ChecksumMode::Incremental => {
                // RFC 1624 eq. 3: HC' = ~(~HC + ~m + m') over the sums.
                !fold64(!ck as u64 + !fold64(old) as u64 + fold64(new) as u64)
            }
            ChecksumMode::Recompute => {
                let ip = &frame[l3..];
                let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
                let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
                let head = &frame[l4..l4 + 8];
                let pseudo = checksum::pseudo_header_v4(src, dst, ip_proto::UDP, udp_len);
                let hdr = u16::from_be_bytes([head[0], head[1]]) as u64
                    + u16::from_be_bytes([head[2], head[3]]) as u64
                    + u16::from_be_bytes([head[4], head[5]]) as u64;
                !fold64(pseudo as u64 + hdr + new)
            }
        };
        // 0 means "no checksum" in UDP; its ones' complement twin is sent.
        let ck = if ck == 0 { 0xffff } else { ck };
        frame[l4 + 6..l4 + 8].copy_from_slice(&ck.to_be_bytes());
    }
}

impl NetworkFunction for Xor {
    fn spec(&self) -> &'static NfSpec {
        &SPEC
    }

    fn keeps_lengths(&self) -> bool {
        true
    }

    fn process(&mut self, batch: &mut Batch, cx: &mut Context<'_>) {
        batch.retain_mut(|p| {
            let frame = p.data_mut();
            match udp_payload::verdict(frame) {
                Located::Pass => true,
                Located::Drop(reason) => {
                    cx.drop_packet(reason);
                    false
                }
                Located::Udp(loc) => {
                    self.apply(frame, loc);
                    true
                }
            }
        });
    }
}

/// The `kernel` hook of `xor`: the XDP xor gets the key repeated from
/// payload byte 0, as the user-space NF applies it, so both write the same
/// bytes. `checksum: recompute` is user-space only (XDP updates the
/// checksum incrementally, like the default).
fn kernel_config(params: &crate::Params) -> Result<KernelConfig, KernelError> {
    let cfg: Config = crate::params::parse(params)?;
    // Build the user-space NF too: its checks (key present, not both) are
    // the ones that apply, with the same messages.
    Xor::new(cfg.clone())?;
    let key = match (cfg.key, cfg.key_text) {
        (Some(k), _) => k.0,
        (None, Some(t)) => t.into_bytes(),
        (None, None) => return Err(ConfigError::new("key", "missing: give key or key_text").into()),
    };
    if cfg.checksum == ChecksumMode::Recompute {
        return Err(KernelError::inexpressible(
            "checksum",
            "recompute; the XDP xor updates the checksum incrementally only",
        ));
    }
    Ok(KernelConfig::Xor { key })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Counters, DropReason, Params};
    use braid_packet::wire;
    use braid_packet::wire::build::FrameSpec;
    use braid_packet::wire::{Ipv4Packet, UdpPacket};
    use braid_packet::Packet;
    use proptest::prelude::*;

    fn build(yaml: &str) -> Result<Box<dyn NetworkFunction>, ConfigError> {
        let p: Params = serde_yaml_ng::from_str(yaml).unwrap();
        (SPEC.build)(&p)
    }

    fn run(nf: &mut dyn NetworkFunction, frames: &[Vec<u8>]) -> (Vec<Vec<u8>>, Counters) {
        let mut b: Batch = frames.iter().map(|f| Packet::from_bytes(f)).collect();
        let mut c = Counters::default();
        nf.process(&mut b, &mut Context::new(1, &mut c));
        (b.iter().map(|p| p.data().to_vec()).collect(), c)
    }

    fn udp_frame(payload: Vec<u8>) -> Vec<u8> {
        let mut s = FrameSpec::udp(
            (Ipv4Addr::new(192, 168, 1, 2), 4000),
            (Ipv4Addr::new(192, 168, 1, 3), 5000),
            payload.len(),
        );
        s.payload = payload;
        s.build()
    }

    fn udp_ok(frame: &[u8]) -> Vec<u8> {
        let l3 = wire::l3(frame).unwrap();
        let ip = Ipv4Packet::new_checked(&frame[l3.offset..]).unwrap();
        assert!(ip.verify_checksum());
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        assert!(udp.verify_checksum_v4(ip.src_addr(), ip.dst_addr()), "UDP checksum");
        udp.payload().to_vec()
    }

    #[test]
    fn xors_payload_with_repeated_key_and_keeps_checksum_valid() {
        let payload: Vec<u8> = (0..=255u8).cycle().take(1400).collect();
        for mode in ["incremental", "recompute"] {
            for key in ["\"0x5a\"", "\"0x0102030405\"", "\"0x00112233445566778899aabbccddeeff\""] {
                let mut nf = build(&format!("{{key: {key}, checksum: {mode}}}")).unwrap();
                let key_bytes: HexKey = key.trim_matches('"').parse().unwrap();
                let (out, c) = run(nf.as_mut(), &[udp_frame(payload.clone())]);
                let got = udp_ok(&out[0]);
                let want: Vec<u8> =
                    payload.iter().zip(key_bytes.0.iter().cycle()).map(|(p, k)| p ^ k).collect();
                assert_eq!(got, want, "{mode} {key}");
                assert_eq!(c.dropped_total(), 0);
                // XOR twice is the identity.
                let (back, _) = run(nf.as_mut(), &out);
                assert_eq!(back[0], udp_frame(payload.clone()));
            }
        }
    }

    #[test]
    fn key_text_and_odd_lengths() {
        let mut nf = build("key_text: abc").unwrap();
        for n in [0usize, 1, 7, 8, 9, 15, 17, 1471] {
            let payload = vec![0u8; n];
            let (out, _) = run(nf.as_mut(), &[udp_frame(payload)]);
            let got = udp_ok(&out[0]);
            let want: Vec<u8> = b"abc".iter().copied().cycle().take(n).collect();
            assert_eq!(got, want, "payload {n}");
        }
    }

    #[test]
    fn payloads_longer_than_the_key_stream_are_done_in_segments() {
        // A 9000 B jumbo datagram (as an AF_XDP UMEM frame could hold), key
        // of odd length so segments must restart at key phase 0.
        let payload: Vec<u8> = (0..9000u32).map(|i| (i * 7) as u8).collect();
        let f = udp_frame(payload.clone());
        for mode in [ChecksumMode::Incremental, ChecksumMode::Recompute] {
            let cfg = Config { key: None, key_text: Some("odd".into()), checksum: mode };
            let nf = Xor::new(cfg).unwrap();
            assert!(nf.stream.len() < payload.len());
            let mut g = f.clone();
            let Located::Udp(s) = udp_payload::verdict(&g) else { panic!("not UDP") };
            nf.apply(&mut g, s);
            let want: Vec<u8> =
                payload.iter().zip(b"odd".iter().cycle()).map(|(p, k)| p ^ k).collect();
            assert_eq!(udp_ok(&g), want, "{mode:?}");
        }
    }

    #[test]
    fn zero_checksum_stays_zero_and_padding_is_untouched() {
        let mut f = FrameSpec::udp_frame_len(
            (Ipv4Addr::new(1, 1, 1, 1), 1),
            (Ipv4Addr::new(2, 2, 2, 2), 2),
            64,
        )
        .build();
        // 4 payload bytes of a 64 B frame: zero the UDP checksum, shrink the
        // datagram to leave Ethernet padding after it.
        let l4 = 14 + 20;
        f[l4 + 6] = 0;
        f[l4 + 7] = 0;
        let mut nf = build("key: \"0xff\"").unwrap();
        let (out, _) = run(nf.as_mut(), std::slice::from_ref(&f));
        assert_eq!(&out[0][l4 + 6..l4 + 8], &[0, 0]);
        assert_eq!(out[0].len(), f.len());
        let udp_len = u16::from_be_bytes([f[l4 + 4], f[l4 + 5]]) as usize;
        for i in l4 + 8..l4 + udp_len {
            assert_eq!(out[0][i], !f[i]);
        }
        assert_eq!(&out[0][l4 + udp_len..], &f[l4 + udp_len..]);
    }

    #[test]
    fn non_udp_passes_broken_frames_are_dropped() {
        let mut nf = build("key: \"0x01\"").unwrap();
        let tcp = FrameSpec::tcp(
            (Ipv4Addr::new(1, 1, 1, 1), 1),
            (Ipv4Addr::new(2, 2, 2, 2), 2),
            wire::tcp_flags::SYN,
        )
        .build();
        let mut bad_len = udp_frame(vec![1; 20]);
        bad_len[14 + 20 + 5] = 200; // UDP length beyond the IPv4 payload
        let mut frag = udp_frame(vec![1; 20]);
        frag[14 + 6] = 0x20; // more fragments
                             // Truncated Ethernet headers are dropped (the envelope policy, as
                             // in every NF); an unknown ethertype passes.
        let mut frames = vec![vec![], vec![0u8; 13], vec![0xff; 60]];
        frames.push(tcp.clone());
        frames.push(bad_len);
        frames.push(frag);
        let (out, c) = run(nf.as_mut(), &frames);
        assert_eq!(out, vec![vec![0xff; 60], tcp]);
        assert_eq!(c.dropped(DropReason::Malformed), 3);
        assert_eq!(c.dropped(DropReason::Unsupported), 1);
    }

    #[test]
    fn config_errors() {
        let field = |y: &str| build(y).err().unwrap();
        assert_eq!(field("{}").field, "key");
        assert_eq!(field("{key: \"0x01\", key_text: a}").field, "key_text");
        assert_eq!(field("key_text: \"\"").field, "key_text");
        let e = field("key: 0x0a");
        assert_eq!(e.field, "key");
        assert!(e.message.contains("quoted"), "{e}");
        assert!(field("key: \"0x123\"").message.contains("even"));
        assert!(field("key: \"0xzz\"").message.contains("zz"));
        assert!(field("key: \"12\"").message.contains("0x"));
        assert_eq!(field("{key: \"0x01\", checksum: lazy}").field, "checksum");
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(frame in prop_oneof![proptest::collection::vec(any::<u8>(), 0..1600), braid_packet::strategy::any_frame()]) {
            let mut nf = build("key: \"0xa5a5\"").unwrap();
            let (out, c) = run(nf.as_mut(), &[frame]);
            prop_assert_eq!(out.len() as u64 + c.dropped_total(), 1);
        }

        #[test]
        fn fast_kernel_matches_bytewise(data in proptest::collection::vec(any::<u8>(), 0..300),
                                        stream in proptest::collection::vec(any::<u8>(), 300)) {
            let (mut a, mut b) = (data.clone(), data);
            let fast = xor_and_sum(&mut a, &stream);
            let slow = xor_and_sum_bytewise(&mut b, &stream);
            prop_assert_eq!(a, b);
            prop_assert_eq!(fast, slow);
        }

        #[test]
        fn checksum_stays_valid(payload in proptest::collection::vec(any::<u8>(), 0..1472),
                                key in proptest::collection::vec(any::<u8>(), 1..40),
                                recompute in any::<bool>()) {
            let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
            let mode = if recompute { "recompute" } else { "incremental" };
            let mut nf = build(&format!("{{key: \"0x{hex}\", checksum: {mode}}}")).unwrap();
            let (out, _) = run(nf.as_mut(), &[udp_frame(payload.clone())]);
            let got = udp_ok(&out[0]);
            let want: Vec<u8> = payload.iter().zip(key.iter().cycle()).map(|(p, k)| p ^ k).collect();
            prop_assert_eq!(got, want);
        }
    }

    fn params(yaml: &str) -> Params {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn xor_keys_translate() {
        for (yaml, key) in [
            ("key: \"0x5a\"", vec![0x5a]),
            ("key: \"0x010203\"", vec![1, 2, 3]),
            ("key_text: seventeen-bytes!!", b"seventeen-bytes!!".to_vec()),
        ] {
            assert_eq!(kernel_config(&params(yaml)).unwrap(), KernelConfig::Xor { key });
        }
        let e = kernel_config(&params("{key: \"0x01\", key_text: a}")).unwrap_err().to_string();
        assert!(e.contains("not both"), "{e}");
        let e =
            kernel_config(&params("{key: \"0x01\", checksum: recompute}")).unwrap_err().to_string();
        assert!(e.starts_with("checksum: recompute"), "{e}");
        assert!(kernel_config(&Params::Null).unwrap_err().to_string().contains("key"));
        assert!(e.ends_with("use `placement: user` for this NF"), "{e}");
    }
}
