//! AES for the `encrypt` / `decrypt` NFs: keys, the per-packet header, and
//! the two modes. The format is documented in `docs/crypto.md`.
//!
//! The 16-byte header sits at the start of the UDP payload:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | version (1) |
//! | 1 | 1 | mode: 1 = AES-CTR, 2 = AES-GCM |
//! | 2 | 2 | key id (big-endian) |
//! | 4 | 4 | salt: random per encrypting NF instance |
//! | 8 | 8 | sequence number (big-endian), one per packet |
//!
//! The 96-bit nonce is salt || sequence. CTR: the initial counter block is
//! nonce || 00000000 (32-bit big-endian block counter). GCM: the nonce is
//! the GCM IV, the header is the associated data, and the 16-byte tag
//! follows the ciphertext at the end of the UDP payload.

use aes::cipher::{BlockCipherEncrypt, KeyInit};
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM};
use aws_lc_rs::cipher::{EncryptingKey, EncryptionContext, UnboundCipherKey, AES_128, AES_256};
use braid_packet::wire::checksum;
use zeroize::{Zeroize, Zeroizing};

use crate::params::{ConfigError, Params};
use crate::udp_payload::UdpLoc;
use crate::{Context, DropReason};
use braid_packet::{Batch, Packet};

/// Length of the header.
pub const HEADER_LEN: usize = 16;
/// Header format version.
pub const VERSION: u8 = 1;
/// Length of the GCM tag appended to the payload.
pub const TAG_LEN: usize = 16;

/// Cipher mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// AES in counter mode: confidentiality only, no length change but the
    /// header.
    Ctr,
    /// AES-GCM: confidentiality and integrity; adds a 16-byte tag.
    Gcm,
}

impl Mode {
    /// The mode byte of the header.
    pub fn code(self) -> u8 {
        match self {
            Mode::Ctr => 1,
            Mode::Gcm => 2,
        }
    }

    /// Bytes the mode adds to a payload.
    pub fn overhead(self) -> usize {
        HEADER_LEN + if self == Mode::Gcm { TAG_LEN } else { 0 }
    }
}

/// The parsed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AesHeader {
    pub mode_code: u8,
    pub key_id: u16,
    pub salt: [u8; 4],
    pub seq: u64,
}

impl AesHeader {
    /// Parse a header; `None` if too short or of another version.
    pub fn parse(b: &[u8]) -> Option<AesHeader> {
        let b: &[u8; HEADER_LEN] = b.get(..HEADER_LEN)?.try_into().ok()?;
        if b[0] != VERSION {
            return None;
        }
        Some(AesHeader {
            mode_code: b[1],
            key_id: u16::from_be_bytes([b[2], b[3]]),
            salt: [b[4], b[5], b[6], b[7]],
            seq: u64::from_be_bytes(b[8..16].try_into().ok()?),
        })
    }

    pub fn emit(&self, b: &mut [u8]) {
        b[0] = VERSION;
        b[1] = self.mode_code;
        b[2..4].copy_from_slice(&self.key_id.to_be_bytes());
        b[4..8].copy_from_slice(&self.salt);
        b[8..16].copy_from_slice(&self.seq.to_be_bytes());
    }

    /// The 96-bit nonce: salt || sequence.
    #[inline]
    pub fn nonce(&self) -> [u8; 12] {
        let mut n = [0u8; 12];
        n[..4].copy_from_slice(&self.salt);
        n[4..].copy_from_slice(&self.seq.to_be_bytes());
        n
    }
}

/// An expanded key, ready for one mode, held by AWS-LC (aws-lc-rs), which
/// never exposes it and wipes it on drop; the raw key bytes are wiped by
/// [`Zeroizing`] right after expansion. A CTR key is also expanded for
/// RustCrypto's `aes` block cipher (wiped on drop too), which computes
/// the key streams of a whole batch in one call ([`CtrKeystreams`]).
pub struct Cipher {
    kind: Kind,
    name: &'static str,
}

enum Kind {
    Ctr { one: Box<EncryptingKey>, blocks: Box<BlockKey> },
    Gcm(Box<LessSafeKey>),
}

/// The AES block cipher of a CTR key, for key streams of many payloads
/// at a time. Why a second library: AWS-LC (like OpenSSL 3.0) runs CTR
/// with AES-NI eight blocks at a time and pays its set-up per call, i.e.
/// per packet; RustCrypto's `aes` (0.9.3 and later) picks at run time the
/// widest AES instructions the CPU has (VAES on 512- or 256-bit vectors,
/// AES-NI, or constant-time software), and a batch's counter blocks are
/// enough to fill those vectors. For one payload at a time it is slower
/// (it encrypts fewer than 64 blocks one by one), so [`Cipher::ctr`]
/// stays with AWS-LC.
enum BlockKey {
    Aes128(aes::Aes128Enc),
    Aes256(aes::Aes256Enc),
}

impl BlockKey {
    fn encrypt_blocks(&self, blocks: &mut [aes::Block]) {
        match self {
            BlockKey::Aes128(k) => k.encrypt_blocks(blocks),
            BlockKey::Aes256(k) => k.encrypt_blocks(blocks),
        }
    }
}

/// The CTR key streams of the payloads of one batch: every payload's
/// counter blocks ([`CtrKeystreams::push`]), encrypted together in one
/// block-cipher call ([`Cipher::ctr_keystreams`]), then XORed into each
/// payload ([`CtrKeystreams::apply`]). The result is byte for byte what
/// [`Cipher::ctr`] gives each payload alone (the NF's counter blocks are
/// nonce || be32(i), i from 0). Kept by the NF and reused batch after
/// batch; wiped when dropped.
#[derive(Default)]
pub struct CtrKeystreams {
    blocks: Vec<aes::Block>,
    /// Per queued payload: its first block and its length in bytes.
    spans: Vec<(usize, usize)>,
    /// Blocks already encrypted (the front of `blocks`).
    ready: usize,
}

impl CtrKeystreams {
    /// Forget every queued payload (the memory is kept).
    pub fn clear(&mut self) {
        self.blocks.clear();
        self.spans.clear();
        self.ready = 0;
    }

    /// Queue the counter blocks of a payload of `len` bytes under `nonce`;
    /// the index to [`apply`](Self::apply) its key stream with. Inlined:
    /// the nonce was just written in parts, and reading it back from
    /// memory in wider words stalled.
    #[inline]
    pub fn push(&mut self, nonce: &[u8; 12], len: usize) -> usize {
        let start = self.blocks.len();
        let n = len.div_ceil(16) as u32;
        if start + n as usize > self.blocks.capacity() {
            self.grow(start + n as usize);
        }
        // Block i is nonce || be32(i), built as two native words and
        // stored whole (a byte-wise build costs ~13 instructions a block).
        let first = u64::from_ne_bytes(nonce[..8].try_into().expect("8 bytes"));
        let nonce_tail = u32::from_ne_bytes(nonce[8..].try_into().expect("4 bytes")) as u64;
        self.blocks.extend((0..n).map(|i| {
            let counter = u32::from_ne_bytes(i.to_be_bytes()) as u64;
            let second = if cfg!(target_endian = "little") {
                nonce_tail | counter << 32
            } else {
                nonce_tail << 32 | counter
            };
            let mut block = [0u8; 16];
            block[..8].copy_from_slice(&first.to_ne_bytes());
            block[8..].copy_from_slice(&second.to_ne_bytes());
            aes::Block::from(block)
        }));
        self.spans.push((start, len));
        self.spans.len() - 1
    }

    /// Room for `needed` blocks, moving the blocks to a new allocation
    /// and wiping the old one whole: a plain reallocation would free key
    /// streams of earlier batches (beyond the current length) unwiped.
    /// Rare: only a batch with more blocks than any before grows it.
    #[cold]
    fn grow(&mut self, needed: usize) {
        let mut blocks = Vec::with_capacity(needed.max(2 * self.blocks.capacity()));
        blocks.extend_from_slice(&self.blocks);
        let mut old = std::mem::replace(&mut self.blocks, blocks);
        wipe(&mut old);
    }

    /// XOR the key stream of queued payload `index` into `buf` (encrypts
    /// and decrypts). Refused, with `buf` unchanged, if `buf` is not the
    /// length queued or the key stream was not computed yet.
    pub fn apply(&self, index: usize, buf: &mut [u8]) -> Result<(), AuthError> {
        self.xor::<false>(index, buf).map(|_| ())
    }

    /// [`apply`](Self::apply), and the Internet checksum's partial sum
    /// of the result (what `checksum::sum(buf)` would give afterwards),
    /// taken in the same pass while the bytes are in registers: the UDP
    /// checksum of a ciphertext without a second pass over it.
    pub fn apply_and_sum(&self, index: usize, buf: &mut [u8]) -> Result<u32, AuthError> {
        self.xor::<true>(index, buf)
    }

    fn xor<const SUM: bool>(&self, index: usize, buf: &mut [u8]) -> Result<u32, AuthError> {
        let &(start, len) = self.spans.get(index).ok_or(AuthError)?;
        let end = start + len.div_ceil(16);
        if buf.len() != len || end > self.ready {
            return Err(AuthError);
        }
        let stream = &self.blocks[start..end];
        let mut chunks = buf.chunks_exact_mut(16);
        // The sum as `checksum::sum` takes it (`checksum::fold_lanes`):
        // 32-bit native-order lanes in four u64 accumulators; independent
        // chains, faster here than two 64-bit end-around ones.
        let mut acc = [0u64; 4];
        // Without the sum, 16 bytes at a time as one u128 (a vector
        // register); with it, as two u64 words whose 32-bit halves feed the
        // accumulators (measured faster than taking the halves out of a
        // u128, and than a second pass over the written bytes).
        for (chunk, key) in (&mut chunks).zip(stream) {
            if SUM {
                let word = |b: &[u8], i: usize| {
                    u64::from_ne_bytes(b[i..i + 8].try_into().expect("8 bytes"))
                };
                let lo = word(chunk, 0) ^ word(key, 0);
                let hi = word(chunk, 8) ^ word(key, 8);
                chunk[..8].copy_from_slice(&lo.to_ne_bytes());
                chunk[8..].copy_from_slice(&hi.to_ne_bytes());
                acc[0] += lo & 0xFFFF_FFFF;
                acc[1] += lo >> 32;
                acc[2] += hi & 0xFFFF_FFFF;
                acc[3] += hi >> 32;
            } else {
                let x = u128::from_ne_bytes((&*chunk).try_into().expect("16-byte chunk"))
                    ^ u128::from_ne_bytes((*key).into());
                chunk.copy_from_slice(&x.to_ne_bytes());
            }
        }
        let tail = chunks.into_remainder();
        if let Some(last) = stream.last().filter(|_| !tail.is_empty()) {
            for (b, k) in tail.iter_mut().zip(last.iter()) {
                *b ^= *k;
            }
        }
        if !SUM {
            return Ok(0);
        }
        // The tail starts at a multiple of 16 bytes: an even offset, so
        // its sum adds on.
        Ok(checksum::add(checksum::fold_lanes(acc), checksum::sum(tail)))
    }
}

/// The three passes of AES-CTR over a batch, shared by `encrypt` and
/// `decrypt`: the NF's first pass [`queue`](Self::queue)s every packet it
/// keeps (its datagram, nonce and CTR body length, or `None` to pass it
/// unchanged); [`compute`](Self::compute) computes all their key streams
/// in one block-cipher call; [`finish`](Self::finish) hands each queued
/// packet with its key stream to the NF's last step. A packet whose key
/// stream cannot be applied is dropped, never sent half-done.
#[derive(Debug, Default)]
pub(crate) struct CtrBatch {
    streams: CtrKeystreams,
    /// Per packet kept by the first pass: its datagram and its key stream
    /// (`None`: passed unchanged).
    pending: Vec<Option<(UdpLoc, usize)>>,
}

impl CtrBatch {
    /// Start a batch (the memory is kept).
    pub fn clear(&mut self) {
        self.streams.clear();
        self.pending.clear();
    }

    /// The next packet kept by the first pass: its datagram, nonce and CTR
    /// body length, or `None` if it passes unchanged.
    #[inline]
    pub fn queue(&mut self, job: Option<(UdpLoc, [u8; 12], usize)>) {
        let job = job.map(|(loc, nonce, len)| (loc, self.streams.push(&nonce, len)));
        self.pending.push(job);
    }

    /// Every queued key stream in one block-cipher call.
    pub fn compute(&mut self, cipher: &Cipher) {
        // With a key that is not a CTR key (never: an NF's mode is its
        // key's) nothing is computed, and `finish` drops every queued
        // packet rather than send it unencrypted.
        let _ = cipher.ctr_keystreams(&mut self.streams);
    }

    /// `last(packet, datagram, key stream)` for every queued packet of
    /// `batch` (the packets the first pass kept, in order), dropping it
    /// under the reason `last` returns.
    #[inline]
    pub fn finish(
        &self,
        batch: &mut Batch,
        cx: &mut Context<'_>,
        mut last: impl FnMut(&mut Packet, UdpLoc, KeyStream<'_>) -> Result<(), DropReason>,
    ) {
        debug_assert_eq!(self.pending.len(), batch.len(), "one queue entry per kept packet");
        let mut jobs = self.pending.iter();
        cx.retain_again(batch, |pkt| match jobs.next() {
            Some(&Some((loc, index))) => {
                last(pkt, loc, KeyStream { streams: &self.streams, index })
            }
            // Passed unchanged by the first pass.
            Some(None) => Ok(()),
            // Not seen by the first pass (a bug): dropped rather than sent
            // as it is, perhaps with a header that says it is encrypted.
            None => Err(DropReason::Other),
        });
    }
}

/// One payload's key stream in a [`CtrBatch`].
pub(crate) struct KeyStream<'a> {
    streams: &'a CtrKeystreams,
    index: usize,
}

impl KeyStream<'_> {
    /// XOR it into `buf` ([`CtrKeystreams::apply`]).
    #[inline]
    pub fn apply(&self, buf: &mut [u8]) -> Result<(), DropReason> {
        self.streams.apply(self.index, buf).map_err(|_| DropReason::Other)
    }

    /// XOR it into `buf` and sum the result ([`CtrKeystreams::apply_and_sum`]).
    #[inline]
    pub fn apply_and_sum(&self, buf: &mut [u8]) -> Result<u32, DropReason> {
        self.streams.apply_and_sum(self.index, buf).map_err(|_| DropReason::Other)
    }
}

impl std::fmt::Debug for CtrKeystreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CtrKeystreams ({} payloads queued)", self.spans.len())
    }
}

impl Drop for CtrKeystreams {
    /// The key streams of sent packets would give their plaintext back
    /// with the ciphertext: wiped, not left in freed memory.
    fn drop(&mut self) {
        wipe(&mut self.blocks);
    }
}

/// Zero the whole allocation of `blocks`, not only its length: a larger
/// earlier batch left key streams beyond it.
fn wipe(blocks: &mut Vec<aes::Block>) {
    blocks.resize(blocks.capacity(), aes::Block::default());
    for block in blocks.iter_mut() {
        block.as_mut_slice().zeroize();
    }
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (key redacted)", self.name)
    }
}

/// GCM tag verification failed (or the cipher refused the input).
#[derive(Debug, PartialEq, Eq)]
pub struct AuthError;

impl Cipher {
    /// Expand `key` (16 or 32 bytes) for `mode`.
    pub fn new(mode: Mode, key: &[u8]) -> Result<Cipher, String> {
        let bits = match key.len() {
            16 => 128,
            32 => 256,
            n => return Err(format!("key is {n} bytes; AES needs 16 (AES-128) or 32 (AES-256)")),
        };
        let refused = |_| format!("AES-{bits} refused the key");
        let (kind, name) = match mode {
            Mode::Ctr => {
                let alg = if bits == 128 { &AES_128 } else { &AES_256 };
                let one = EncryptingKey::ctr(UnboundCipherKey::new(alg, key).map_err(refused)?)
                    .map_err(refused)?;
                let blocks = if bits == 128 {
                    aes::Aes128Enc::new_from_slice(key).map(BlockKey::Aes128)
                } else {
                    aes::Aes256Enc::new_from_slice(key).map(BlockKey::Aes256)
                }
                .map_err(|_| format!("AES-{bits} refused the key"))?;
                let kind = Kind::Ctr { one: Box::new(one), blocks: Box::new(blocks) };
                (kind, if bits == 128 { "AES-128-CTR" } else { "AES-256-CTR" })
            }
            Mode::Gcm => {
                let alg = if bits == 128 { &AES_128_GCM } else { &AES_256_GCM };
                let key = LessSafeKey::new(UnboundKey::new(alg, key).map_err(refused)?);
                (Kind::Gcm(Box::new(key)), if bits == 128 { "AES-128-GCM" } else { "AES-256-GCM" })
            }
        };
        Ok(Cipher { kind, name })
    }

    pub fn mode(&self) -> Mode {
        match self.kind {
            Kind::Ctr { .. } => Mode::Ctr,
            Kind::Gcm(_) => Mode::Gcm,
        }
    }

    /// CTR with the full 16-byte initial counter block `iv` (the counter
    /// is its last 32 bits; payloads are far below 2^32 blocks).
    fn ctr_block(&self, iv: [u8; 16], buf: &mut [u8]) -> Result<(), AuthError> {
        let Kind::Ctr { one: key, .. } = &self.kind else { return Err(AuthError) };
        if buf.is_empty() {
            return Ok(());
        }
        key.less_safe_encrypt(buf, EncryptionContext::Iv128(iv.into()))
            .map(|_| ())
            .map_err(|_| AuthError)
    }

    /// CTR: XOR the key stream for `nonce` into `buf` (encrypts and
    /// decrypts). The initial counter block is nonce || 00000000.
    pub fn ctr(&self, nonce: &[u8; 12], buf: &mut [u8]) -> Result<(), AuthError> {
        let mut iv = [0u8; 16];
        iv[..12].copy_from_slice(nonce);
        self.ctr_block(iv, buf)
    }

    /// CTR: compute every key stream queued in `streams` since the last
    /// call, in one call to the block cipher.
    pub fn ctr_keystreams(&self, streams: &mut CtrKeystreams) -> Result<(), AuthError> {
        let Kind::Ctr { blocks: key, .. } = &self.kind else { return Err(AuthError) };
        key.encrypt_blocks(&mut streams.blocks[streams.ready..]);
        streams.ready = streams.blocks.len();
        Ok(())
    }

    /// GCM: encrypt `buf` in place, authenticate it with `aad`; the tag.
    pub fn seal(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN], AuthError> {
        let Kind::Gcm(key) = &self.kind else { return Err(AuthError) };
        let tag = key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), buf)
            .map_err(|_| AuthError)?;
        tag.as_ref().try_into().map_err(|_| AuthError)
    }

    /// GCM: check `tag` over `aad` and `buf` and decrypt `buf` in place. On
    /// failure the content of `buf` is unspecified (the NF drops it).
    pub fn open(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AuthError> {
        let Kind::Gcm(key) = &self.kind else { return Err(AuthError) };
        key.open_in_place_separate_tag(
            Nonce::assume_unique_for_key(*nonce),
            Aad::from(aad),
            tag,
            buf,
        )
        .map(|_| ())
        .map_err(|_| AuthError)
    }
}

/// Decode hex (whitespace ignored) into zeroizing bytes. Errors never
/// contain the input.
fn hex_decode(s: &str) -> Result<Zeroizing<Vec<u8>>, String> {
    let digits: Zeroizing<Vec<u8>> =
        Zeroizing::new(s.bytes().filter(|b| !b.is_ascii_whitespace()).collect());
    if !digits.len().is_multiple_of(2) {
        return Err(format!("an odd number ({}) of hex digits", digits.len()));
    }
    let mut out = Zeroizing::new(Vec::with_capacity(digits.len() / 2));
    for (i, pair) in digits.chunks(2).enumerate() {
        let val = |c: u8| (c as char).to_digit(16);
        match (val(pair[0]), val(pair[1])) {
            (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
            _ => return Err(format!("a character that is not a hex digit at byte pair {i}")),
        }
    }
    Ok(out)
}

/// The key configuration shared by `encrypt` and `decrypt`: exactly one of
/// `key` (hex in the descriptor) or `key_file` (a file holding the key as
/// hex, or as 16 or 32 raw bytes).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    #[serde(default)]
    pub mode: Option<Mode>,
    /// Taken as a raw YAML value so that a mistyped key never ends up in a
    /// serde error message.
    #[serde(default)]
    pub key: Option<Params>,
    #[serde(default)]
    pub key_file: Option<String>,
    #[serde(default)]
    pub key_id: u16,
    /// Encrypt only: fixed salt (8 hex digits) instead of a random one, for
    /// reproducible output. Reusing a salt with the same key across runs
    /// reuses nonces: tests only.
    #[serde(default)]
    pub salt: Option<String>,
    /// Decrypt only: anti-replay window in packets (see `replay.rs`).
    #[serde(default)]
    pub replay_window: Option<u64>,
    /// Encrypt only: what happens to frames it cannot encrypt (anything
    /// but a whole IPv4/UDP datagram or ARP). Default: dropped.
    #[serde(default)]
    pub unencrypted: Option<Unencrypted>,
    /// Encrypt only: the UDP checksum of encrypted datagrams.
    #[serde(default)]
    pub udp_checksum: Option<UdpChecksum>,
}

/// What `encrypt` does with a frame it cannot encrypt (IPv6, IPv4 other
/// than UDP, IPv4 fragments of other protocols, other ethertypes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unencrypted {
    /// Dropped and counted (`unsupported`): nothing leaves in plaintext.
    #[default]
    Drop,
    /// Passed on unchanged, in plaintext (an explicit choice).
    Pass,
}

/// What `encrypt` writes in the UDP checksum of the datagrams it encrypts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UdpChecksum {
    /// The full checksum over the encrypted datagram (a second pass over
    /// the payload), or 0 if the sender sent none.
    #[default]
    Compute,
    /// 0: "no checksum", valid for UDP over IPv4 (RFC 768), not over
    /// IPv6. Saves the pass over the ciphertext; GCM's tag authenticates
    /// the payload anyway, CTR leaves it to the layer below (Ethernet FCS).
    Zero,
}

impl std::fmt::Debug for KeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyConfig")
            .field("mode", &self.mode)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("key_file", &self.key_file)
            .field("key_id", &self.key_id)
            .field("salt", &self.salt)
            .field("replay_window", &self.replay_window)
            .field("unencrypted", &self.unencrypted)
            .field("udp_checksum", &self.udp_checksum)
            .finish()
    }
}

impl KeyConfig {
    /// Read the key and expand it. Default mode: GCM.
    pub fn cipher(&self) -> Result<Cipher, ConfigError> {
        let mode = self.mode.unwrap_or(Mode::Gcm);
        let key: Zeroizing<Vec<u8>> = match (&self.key, &self.key_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "key_file",
                    "give either `key` or `key_file`, not both",
                ))
            }
            (None, None) => {
                return Err(ConfigError::new("key", "missing: give `key` (hex) or `key_file`"))
            }
            (Some(Params::String(s)), None) => hex_decode(s).map_err(|e| {
                ConfigError::new("key", format!("must be hex; found {e} (value not shown)"))
            })?,
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "key",
                    "must be a string of hex digits (value not shown)",
                ))
            }
            (None, Some(path)) => {
                let raw = read_key_file(path)?;
                if raw.len() == 16 || raw.len() == 32 {
                    Zeroizing::new(raw.to_vec())
                } else {
                    let text = std::str::from_utf8(&raw).map_err(|_| {
                        ConfigError::new(
                            "key_file",
                            format!("`{path}` holds {} bytes: neither a raw 16/32-byte key nor hex text", raw.len()),
                        )
                    })?;
                    hex_decode(text).map_err(|e| {
                        ConfigError::new("key_file", format!("`{path}` must hold hex; found {e}"))
                    })?
                }
            }
        };
        let field = if self.key.is_some() { "key" } else { "key_file" };
        Cipher::new(mode, &key).map_err(|e| ConfigError::new(field, e))
    }
}

impl KeyConfig {
    /// The configured salt, or four random bytes.
    pub fn salt(&self) -> Result<[u8; 4], ConfigError> {
        match &self.salt {
            None => random_salt(),
            Some(s) => {
                let b = hex_decode(s)
                    .map_err(|e| ConfigError::new("salt", format!("must be hex; found {e}")))?;
                b[..].try_into().map_err(|_| {
                    ConfigError::new(
                        "salt",
                        format!("must be 4 bytes (8 hex digits), not {}", b.len()),
                    )
                })
            }
        }
    }
}

/// Parameter documentation shared by `encrypt` and `decrypt`.
pub const KEY_PARAMS: [crate::ParamDoc; 4] = [
    crate::ParamDoc {
        name: "mode",
        kind: "ctr | gcm",
        default: Some("gcm"),
        help: "AES-CTR (confidentiality) or AES-GCM (authenticated, 16-byte tag)",
    },
    crate::ParamDoc {
        name: "key",
        kind: "hex string, 32 or 64 digits",
        default: None,
        help: "AES-128 or AES-256 key; never logged. Give this or key_file",
    },
    crate::ParamDoc {
        name: "key_file",
        kind: "path",
        default: None,
        help: "file with the key as hex text or 16/32 raw bytes",
    },
    crate::ParamDoc {
        name: "key_id",
        kind: "u16",
        default: Some("0"),
        help: "key id written to (encrypt) or required in (decrypt) the header",
    },
];

/// Four bytes from the OS random source, for the per-instance salt.
pub fn random_salt() -> Result<[u8; 4], ConfigError> {
    use std::io::Read;
    let mut b = [0u8; 4];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).map_err(|e| {
        ConfigError::new("salt", format!("cannot read /dev/urandom for a random salt: {e}"))
    })?;
    Ok(b)
}

/// Most bytes read from a `key_file`: a 32-byte key is 64 hex digits, so
/// this leaves room for whitespace and comments' worth of slack while
/// `key_file: /dev/zero` stops at once instead of filling memory.
pub const MAX_KEY_FILE_BYTES: u64 = 4096;

/// The contents of `key_file` `path`, at most [`MAX_KEY_FILE_BYTES`].
fn read_key_file(path: &str) -> Result<Zeroizing<Vec<u8>>, ConfigError> {
    use std::io::Read;
    let cannot =
        |e: std::io::Error| ConfigError::new("key_file", format!("cannot read `{path}`: {e}"));
    let mut raw = Zeroizing::new(Vec::new());
    std::fs::File::open(path)
        .map_err(cannot)?
        .take(MAX_KEY_FILE_BYTES + 1)
        .read_to_end(&mut raw)
        .map_err(cannot)?;
    if raw.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(ConfigError::new(
            "key_file",
            format!("`{path}` is longer than {MAX_KEY_FILE_BYTES} bytes: not a key"),
        ));
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        hex_decode(s).unwrap().to_vec()
    }

    const PLAIN_38A: &str = "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51\
                             30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710";

    /// NIST SP 800-38A F.5.1 / F.5.5 (CTR-AES128/256.Encrypt), initial
    /// counter block f0..ff (its last 32 bits, fcfdfeff, do not carry over
    /// these four blocks).
    #[test]
    fn sp800_38a_ctr_vectors() {
        let cases = [
            (
                "2b7e151628aed2a6abf7158809cf4f3c",
                "874d6191b620e3261bef6864990db6ce9806f66b7970fdff8617187bb9fffdff\
                 5ae4df3edbd5d35e5b4f09020db03eab1e031dda2fbe03d1792170a0f3009cee",
            ),
            (
                "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4",
                "601ec313775789a5b7a7f504bbf3d228f443e3ca4d62b59aca84e990cacaf5c5\
                 2b0930daa23de94ce87017ba2d84988ddfc9c58db67aada613c2dd08457941a6",
            ),
        ];
        for (key, ct) in cases {
            let c = Cipher::new(Mode::Ctr, &hex(key)).unwrap();
            let iv: [u8; 16] = hex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff").try_into().unwrap();
            let mut buf = hex(PLAIN_38A);
            c.ctr_block(iv, &mut buf).unwrap();
            assert_eq!(buf, hex(ct), "key {}", key.len() * 4);
            // Decryption is the same operation.
            c.ctr_block(iv, &mut buf).unwrap();
            assert_eq!(buf, hex(PLAIN_38A));
            // Any split point of the input at block granularity gives the
            // same stream when the counter block is advanced accordingly.
            let mut tail = hex(PLAIN_38A)[32..].to_vec();
            let mut iv2 = iv;
            let ctr = u32::from_be_bytes(iv[12..].try_into().unwrap()) + 2;
            iv2[12..].copy_from_slice(&ctr.to_be_bytes());
            c.ctr_block(iv2, &mut tail).unwrap();
            assert_eq!(tail, hex(ct)[32..]);
        }
    }

    /// The NF's counter blocks are nonce || be32(i): compare with the
    /// 38A construction, block by block, as independent single-block calls.
    #[test]
    fn ctr_nf_path_uses_nonce_and_zero_block_counter() {
        let key = hex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4");
        let c = Cipher::new(Mode::Ctr, &key).unwrap();
        let nonce: [u8; 12] = hex("f0f1f2f3f4f5f6f7f8f9fafb").try_into().unwrap();
        let mut a = vec![0u8; 100];
        c.ctr(&nonce, &mut a).unwrap();
        for (i, chunk) in a.chunks(16).enumerate() {
            let mut block = [0u8; 16];
            block[..12].copy_from_slice(&nonce);
            block[12..].copy_from_slice(&(i as u32).to_be_bytes());
            let mut ks = vec![0u8; chunk.len()];
            c.ctr_block(block, &mut ks).unwrap();
            assert_eq!(chunk, &ks[..]);
        }
        let mut back = a.clone();
        c.ctr(&nonce, &mut back).unwrap();
        assert_eq!(back, vec![0u8; 100]);
        let mut empty = [];
        c.ctr(&nonce, &mut empty).unwrap();
    }

    /// The batch path (RustCrypto's block cipher over queued counter
    /// blocks) gives every payload what AWS-LC's CTR gives it alone, for
    /// both key sizes, any nonces and lengths (empty, partial blocks,
    /// more than one vector's worth of blocks).
    #[test]
    fn ctr_keystreams_match_the_single_payload_path() {
        use proptest::prelude::*;
        let strategy = (
            prop::sample::select(vec![16usize, 32]),
            prop::collection::vec(any::<u8>(), 32),
            prop::collection::vec((any::<[u8; 12]>(), 0usize..2100, any::<u8>()), 0..40),
        );
        proptest!(|((key_len, key, payloads) in strategy)| {
            let c = Cipher::new(Mode::Ctr, &key[..key_len]).unwrap();
            let mut streams = CtrKeystreams::default();
            // Twice: the second batch reuses the cleared scratch.
            for _ in 0..2 {
                streams.clear();
                let mut bufs: Vec<Vec<u8>> =
                    payloads.iter().map(|&(_, len, fill)| vec![fill; len]).collect();
                let ids: Vec<usize> =
                    payloads.iter().map(|(nonce, len, _)| streams.push(nonce, *len)).collect();
                c.ctr_keystreams(&mut streams).unwrap();
                for ((buf, id), (nonce, len, fill)) in bufs.iter_mut().zip(&ids).zip(&payloads) {
                    streams.apply(*id, buf).unwrap();
                    let mut alone = vec![*fill; *len];
                    c.ctr(nonce, &mut alone).unwrap();
                    prop_assert_eq!(&buf[..], &alone[..]);
                }
            }
        });
    }

    /// The sum taken in the XOR pass is the Internet checksum's sum of
    /// the ciphertext, for every length (odd tails included).
    #[test]
    fn apply_and_sum_sums_what_it_wrote() {
        use proptest::prelude::*;
        let key = hex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4");
        let c = Cipher::new(Mode::Ctr, &key).unwrap();
        proptest!(|(payloads in prop::collection::vec(
            (any::<[u8; 12]>(), prop::collection::vec(any::<u8>(), 0..1600)), 1..8))| {
            let mut streams = CtrKeystreams::default();
            let ids: Vec<usize> =
                payloads.iter().map(|(nonce, p)| streams.push(nonce, p.len())).collect();
            c.ctr_keystreams(&mut streams).unwrap();
            for ((nonce, plain), id) in payloads.iter().zip(ids) {
                let mut buf = plain.clone();
                let sum = streams.apply_and_sum(id, &mut buf).unwrap();
                let mut alone = plain.clone();
                c.ctr(nonce, &mut alone).unwrap();
                prop_assert_eq!(&buf, &alone);
                prop_assert_eq!(sum, checksum::sum(&buf));
            }
        });
    }

    /// Packets whose key stream was not computed (a key that is not a
    /// CTR key) are dropped by `finish`, never handed on as they are;
    /// packets queued without a job pass.
    #[test]
    fn a_ctr_batch_without_key_streams_drops_its_packets() {
        use crate::Counters;
        use braid_packet::wire::build::FrameSpec;
        let key = hex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4");
        let frame = FrameSpec::udp(
            (std::net::Ipv4Addr::new(10, 0, 0, 1), 1),
            (std::net::Ipv4Addr::new(10, 0, 0, 2), 2),
            40,
        )
        .build();
        let loc = UdpLoc { ip: 14, udp: 34, payload: 42, end: frame.len() };
        for (mode, kept) in [(Mode::Gcm, 1), (Mode::Ctr, 2)] {
            let cipher = Cipher::new(mode, &key).unwrap();
            let mut ctr = CtrBatch::default();
            ctr.clear();
            ctr.queue(Some((loc, [1; 12], 40 - HEADER_LEN)));
            ctr.queue(None);
            ctr.compute(&cipher);
            let mut batch: Batch = [&frame, &frame].iter().map(|f| Packet::from_bytes(f)).collect();
            let mut counters = Counters::default();
            let mut cx = Context::new(0, &mut counters);
            ctr.finish(&mut batch, &mut cx, |pkt, loc, stream| {
                stream.apply(&mut pkt.data_mut()[loc.payload + HEADER_LEN..loc.end])
            });
            assert_eq!(batch.len(), kept, "{mode:?}");
            assert_eq!(counters.dropped(DropReason::Other), 2 - kept as u64, "{mode:?}");
        }
    }

    /// A key stream is applied only to a payload of the length it was
    /// queued for, once computed; otherwise the payload stays unchanged.
    #[test]
    fn ctr_keystreams_refuse_what_was_not_queued_or_computed() {
        let key = hex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4");
        let c = Cipher::new(Mode::Ctr, &key).unwrap();
        let mut streams = CtrKeystreams::default();
        let id = streams.push(&[1; 12], 40);
        let mut buf = vec![9u8; 40];
        assert_eq!(streams.apply(id, &mut buf), Err(AuthError), "not computed yet");
        c.ctr_keystreams(&mut streams).unwrap();
        let late = streams.push(&[2; 12], 8);
        assert_eq!(streams.apply(late, &mut buf[..8]), Err(AuthError), "queued after computing");
        assert_eq!(streams.apply(id, &mut buf[..39]), Err(AuthError), "shorter");
        assert_eq!(streams.apply(id + 5, &mut buf), Err(AuthError), "no such payload");
        assert_eq!(buf, vec![9u8; 40]);
        let gcm = Cipher::new(Mode::Gcm, &key).unwrap();
        assert_eq!(gcm.ctr_keystreams(&mut streams), Err(AuthError), "a GCM key has no CTR");
        streams.apply(id, &mut buf).unwrap();
        assert_ne!(buf, vec![9u8; 40]);
    }

    /// NIST SP 800-38D / GCM specification test cases 3, 4 (AES-128) and
    /// 15, 16 (AES-256).
    #[test]
    fn sp800_38d_gcm_vectors() {
        let p64 = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
                   1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255";
        let aad = "feedfacedeadbeeffeedfacedeadbeefabaddad2";
        let k128 = "feffe9928665731c6d6a8f9467308308";
        let k256 = "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308";
        let ct128 = "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e\
                     21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091473f5985";
        let ct256 = "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
                     8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad";
        let cases = [
            (k128, "", 64, ct128, "4d5c2af327cd64a62cf35abd2ba6fab4"),
            (k128, aad, 60, ct128, "5bc94fbc3221a5db94fae95ae7121a47"),
            (k256, "", 64, ct256, "b094dac5d93471bdec1a502270e3cc6c"),
            (k256, aad, 60, ct256, "76fc6ece0f4e1768cddf8853bb2d551b"),
        ];
        let nonce: [u8; 12] = hex("cafebabefacedbaddecaf888").try_into().unwrap();
        for (key, aad, len, ct, tag) in cases {
            let c = Cipher::new(Mode::Gcm, &hex(key)).unwrap();
            let aad = hex(aad);
            let mut buf = hex(p64)[..len].to_vec();
            let t = c.seal(&nonce, &aad, &mut buf).unwrap();
            assert_eq!(buf, hex(ct)[..len], "ciphertext, key {} aad {}", key.len() * 4, aad.len());
            assert_eq!(t.to_vec(), hex(tag));
            c.open(&nonce, &aad, &mut buf, &t).unwrap();
            assert_eq!(buf, hex(p64)[..len]);
            // One flipped bit in the ciphertext, the AAD or the tag fails.
            let mut enc = hex(ct)[..len].to_vec();
            enc[len / 2] ^= 1;
            assert_eq!(c.open(&nonce, &aad, &mut enc, &t), Err(AuthError));
            if !aad.is_empty() {
                let mut bad_aad = aad.clone();
                bad_aad[0] ^= 4;
                let mut enc = hex(ct)[..len].to_vec();
                assert_eq!(c.open(&nonce, &bad_aad, &mut enc, &t), Err(AuthError));
            }
            let mut bad_tag = t;
            bad_tag[0] ^= 0x80;
            let mut enc = hex(ct)[..len].to_vec();
            assert_eq!(c.open(&nonce, &aad, &mut enc, &bad_tag), Err(AuthError));
        }
    }

    #[test]
    fn header_roundtrip_and_nonce() {
        let h =
            AesHeader { mode_code: 2, key_id: 0x1234, salt: [1, 2, 3, 4], seq: 0x0102030405060708 };
        let mut b = [0u8; 16];
        h.emit(&mut b);
        assert_eq!(AesHeader::parse(&b), Some(h));
        assert_eq!(h.nonce(), [1, 2, 3, 4, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(AesHeader::parse(&b[..15]), None);
        b[0] = 2;
        assert_eq!(AesHeader::parse(&b), None);
    }

    #[test]
    fn key_errors_never_show_the_key() {
        let secret = "00112233445566778899aabbccddeeff0011223344556677889900aabbccddeZ";
        let cfg: KeyConfig =
            crate::params::parse(&serde_yaml_ng::from_str(&format!("key: {secret}")).unwrap())
                .unwrap();
        let e = cfg.cipher().unwrap_err();
        assert_eq!(e.field, "key");
        assert!(!e.message.contains("0011"), "{e}");
        let cfg: KeyConfig =
            crate::params::parse(&serde_yaml_ng::from_str("key: 123456").unwrap()).unwrap();
        let e = cfg.cipher().unwrap_err();
        assert!(!e.to_string().contains("123456"), "{e}");
        let cfg: KeyConfig =
            crate::params::parse(&serde_yaml_ng::from_str("key: '00112233'").unwrap()).unwrap();
        assert!(cfg.cipher().unwrap_err().message.contains("4 bytes"));
        let dbg = format!("{:?}", cfg);
        assert!(!dbg.contains("00112233"), "{dbg}");
        let good: KeyConfig = crate::params::parse(
            &serde_yaml_ng::from_str("key: 00112233445566778899aabbccddeeff").unwrap(),
        )
        .unwrap();
        let c = good.cipher().unwrap();
        assert_eq!(format!("{c:?}"), "AES-128-GCM (key redacted)");
    }

    #[test]
    fn endless_key_file_is_refused_at_the_limit() {
        let cfg: KeyConfig =
            crate::params::parse(&serde_yaml_ng::from_str("key_file: /dev/zero").unwrap()).unwrap();
        let e = cfg.cipher().unwrap_err();
        assert_eq!(e.field, "key_file");
        assert!(e.message.contains("/dev/zero") && e.message.contains("4096"), "{}", e.message);
    }

    #[test]
    fn key_file_hex_or_raw() {
        let dir = std::env::temp_dir();
        let hexfile = dir.join(format!("braid-key-hex-{}", std::process::id()));
        let rawfile = dir.join(format!("braid-key-raw-{}", std::process::id()));
        std::fs::write(
            &hexfile,
            "603deb1015ca71be2b73aef0857d7781\n1f352c073b6108d72d9810a30914dff4\n",
        )
        .unwrap();
        std::fs::write(&rawfile, [7u8; 32]).unwrap();
        for (f, want) in
            [(&hexfile, "AES-256-CTR (key redacted)"), (&rawfile, "AES-256-CTR (key redacted)")]
        {
            let y = format!("mode: ctr\nkey_file: {}", f.display());
            let cfg: KeyConfig =
                crate::params::parse(&serde_yaml_ng::from_str(&y).unwrap()).unwrap();
            assert_eq!(format!("{:?}", cfg.cipher().unwrap()), want);
        }
        let missing: KeyConfig =
            crate::params::parse(&serde_yaml_ng::from_str("key_file: /nonexistent/k").unwrap())
                .unwrap();
        assert!(missing.cipher().unwrap_err().message.contains("/nonexistent/k"));
        let _ = std::fs::remove_file(hexfile);
        let _ = std::fs::remove_file(rawfile);
    }
}
