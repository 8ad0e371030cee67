//! What an NF's state is, and how it leaves one instance and enters another.
//!
//! * [`StateKind`] (in every [`crate::NfSpec`]): an NF keeps no state, one
//!   state for the whole stream, or state per flow with the
//!   [`FlowPartition`] that says what a flow is for it. Only per-flow state
//!   can be split across instances by flow.
//! * [`FlowScope`]: which flows a scoped export takes: all, a set of
//!   [`PartitionKey`]s, or a [`HashRange`] of the stable flow hash
//!   ([`PartitionKey::stable_hash`]). The hash has fixed constants (it is
//!   not the random per-table key of the NFs' hash tables), so every
//!   instance on every host puts a flow in the same range.
//! * [`NfState`]: one exported state, in JSON (for people and tests) or
//!   in the compact binary [`Encoding::Binary`] (postcard plus a CRC-32),
//!   and [`NfState::to_bytes`] / [`NfState::from_bytes`], its
//!   self-describing wire form with a small header (magic, kind, format
//!   version, encoding).
//! * [`StateError`]: why an export or import was refused; a refused
//!   import changes nothing.
//!
//! The NF side is four methods of [`crate::NetworkFunction`]:
//! `export_state` / `import_state` (whole state, replace) and
//! `export_scoped` / `import_merge` (some flows, merged into what the
//! instance holds). A migration of some flows from instance A to B is
//! `B.import_merge(&A.export_scoped(&scope, Encoding::Binary)?)`.

use std::collections::HashSet;

use std::net::Ipv6Addr;

use braid_packet::flow::{FiveTuple, FiveTuple6};

/// What state an NF keeps beyond one packet, as the runtime must know it to
/// snapshot, migrate or split a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StateKind {
    /// Nothing beyond its configuration: instances are interchangeable and
    /// a stream can be spread over any number of them.
    None,
    /// One state for the whole stream (a sequence counter, token buckets,
    /// a coding generation, a random generator): the NF moves as a whole
    /// and cannot be split by flow without changing what it does.
    Whole,
    /// State per flow, partitioned by the given key: the flows can be
    /// spread over instances as long as every packet of a flow (both
    /// directions where the key is symmetric) reaches the instance that
    /// holds it.
    PerFlow(FlowPartition),
}

impl StateKind {
    /// True unless the NF keeps no state.
    pub fn is_stateful(self) -> bool {
        self != StateKind::None
    }

    /// One word for tables: `none`, `whole` or `per-flow`.
    pub fn short(self) -> &'static str {
        match self {
            StateKind::None => "none",
            StateKind::Whole => "whole",
            StateKind::PerFlow(_) => "per-flow",
        }
    }
}

impl std::fmt::Display for StateKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateKind::None => f.write_str("none"),
            StateKind::Whole => f.write_str("whole"),
            StateKind::PerFlow(p) => write!(f, "per flow by {p}"),
        }
    }
}

/// What identifies a flow of per-flow state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlowPartition {
    /// The IPv4 or IPv6 5-tuple, the same for both directions of a connection
    /// (`nat`: the tuple of the inside host's side; `loadbalancer`: the
    /// client's tuple to the VIP).
    SymmetricFiveTuple,
    /// The VLAN and MAC address of a learned station (`l2switch`).
    VlanMac,
}

impl std::fmt::Display for FlowPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FlowPartition::SymmetricFiveTuple => "symmetric 5-tuple",
            FlowPartition::VlanMac => "(vlan, MAC)",
        })
    }
}

/// An IPv4 address and port, as numbers.
pub type Endpoint = (u32, u16);

/// An IPv6 address and port.
pub type Endpoint6 = (Ipv6Addr, u16);

/// The key of one flow of per-flow state, in a canonical form: a 5-tuple
/// and its reverse give the same key.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct PartitionKey(KeyRepr);

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
enum KeyRepr {
    /// The two endpoints, lower `(address, port)` first.
    Flow {
        lo: (u32, u16),
        hi: (u32, u16),
        proto: u8,
    },
    Station {
        vlan: u16,
        mac: [u8; 6],
    },
    /// An IPv6 flow: the two endpoints, lower `(address, port)` first.
    /// (Last, so the binary encoding of the older variants is unchanged.)
    Flow6 {
        lo: (Ipv6Addr, u16),
        hi: (Ipv6Addr, u16),
        proto: u8,
    },
}

impl PartitionKey {
    /// The key of the connection `t` belongs to (either direction).
    pub fn five_tuple(t: FiveTuple) -> PartitionKey {
        let a = (u32::from(t.src), t.src_port);
        let b = (u32::from(t.dst), t.dst_port);
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        PartitionKey(KeyRepr::Flow { lo, hi, proto: t.proto })
    }

    /// The key of the IPv6 connection `t` belongs to (either direction).
    pub fn five_tuple6(t: FiveTuple6) -> PartitionKey {
        let a = (t.src, t.src_port);
        let b = (t.dst, t.dst_port);
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        PartitionKey(KeyRepr::Flow6 { lo, hi, proto: t.proto })
    }

    /// The two endpoints (lower first) and protocol of an IPv6 5-tuple
    /// key; `None` for any other key.
    pub fn flow6_endpoints(&self) -> Option<(Endpoint6, Endpoint6, u8)> {
        match self.0 {
            KeyRepr::Flow6 { lo, hi, proto } => Some((lo, hi, proto)),
            _ => None,
        }
    }

    /// The key of a station learned on `vlan` with address `mac`.
    pub fn station(vlan: u16, mac: [u8; 6]) -> PartitionKey {
        PartitionKey(KeyRepr::Station { vlan, mac })
    }

    /// The two endpoints (lower `(address, port)` first) and protocol of a
    /// 5-tuple key; `None` for a station key.
    pub fn flow_endpoints(&self) -> Option<(Endpoint, Endpoint, u8)> {
        match self.0 {
            KeyRepr::Flow { lo, hi, proto } => Some((lo, hi, proto)),
            KeyRepr::Station { .. } | KeyRepr::Flow6 { .. } => None,
        }
    }

    /// The VLAN and MAC address of a station key; `None` for a 5-tuple.
    pub fn station_parts(&self) -> Option<(u16, [u8; 6])> {
        match self.0 {
            KeyRepr::Station { vlan, mac } => Some((vlan, mac)),
            KeyRepr::Flow { .. } | KeyRepr::Flow6 { .. } => None,
        }
    }

    /// Which kind of partition this key belongs to.
    pub fn partition(&self) -> FlowPartition {
        match self.0 {
            KeyRepr::Flow { .. } | KeyRepr::Flow6 { .. } => FlowPartition::SymmetricFiveTuple,
            KeyRepr::Station { .. } => FlowPartition::VlanMac,
        }
    }

    /// A 64-bit hash that is the same on every instance, host and run (fixed
    /// constants, no per-table random key), for splitting flows into
    /// [`HashRange`]s. For 5-tuples it is
    /// [`FiveTuple::symmetric_hash`], the hash a flow-steering layer uses.
    pub fn stable_hash(&self) -> u64 {
        match self.0 {
            KeyRepr::Flow { lo, hi, proto } => FiveTuple {
                src: lo.0.into(),
                dst: hi.0.into(),
                proto,
                src_port: lo.1,
                dst_port: hi.1,
            }
            .symmetric_hash(),
            KeyRepr::Flow6 { lo, hi, proto } => {
                FiveTuple6 { src: lo.0, dst: hi.0, proto, src_port: lo.1, dst_port: hi.1 }
                    .symmetric_hash()
            }
            KeyRepr::Station { vlan, mac } => {
                let mut v = u64::from(vlan) << 48;
                for (i, b) in mac.iter().enumerate() {
                    v |= u64::from(*b) << (40 - 8 * i);
                }
                splitmix64(v)
            }
        }
    }
}

/// SplitMix64's output function: a fixed bijection with full avalanche.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// An inclusive range `first..=last` of [`PartitionKey::stable_hash`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct HashRange {
    pub first: u64,
    pub last: u64,
}

impl HashRange {
    /// Every hash.
    pub const ALL: HashRange = HashRange { first: 0, last: u64::MAX };

    /// Share `index` of `count` equal shares of the hash space (`count`
    /// at least 1, `index < count`; out-of-range values are clamped), so
    /// `count` instances can each take one share.
    pub fn share(index: u64, count: u64) -> HashRange {
        let count = u128::from(count.max(1));
        let index = u128::from(index).min(count - 1);
        let bound = |i: u128| ((i << 64) / count) as u64;
        let last = if index + 1 == count { u64::MAX } else { bound(index + 1) - 1 };
        HashRange { first: bound(index), last }
    }

    pub fn contains(&self, hash: u64) -> bool {
        (self.first..=self.last).contains(&hash)
    }
}

/// Which flows a scoped export takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlowScope {
    /// Every flow (and, for whole-state NFs, the whole state).
    All,
    /// The flows with these keys.
    Keys(HashSet<PartitionKey>),
    /// The flows whose [`PartitionKey::stable_hash`] is in the range.
    HashRange(HashRange),
}

impl FlowScope {
    /// True if the flow with `key` is in this scope.
    #[inline]
    pub fn contains(&self, key: &PartitionKey) -> bool {
        match self {
            FlowScope::All => true,
            FlowScope::Keys(keys) => keys.contains(key),
            FlowScope::HashRange(r) => r.contains(key.stable_hash()),
        }
    }

    /// For whole-state NFs: `Ok` for [`FlowScope::All`], else the error
    /// that says the state of NF `kind` cannot be split.
    pub fn require_all(&self, kind: &str) -> Result<(), StateError> {
        match self {
            FlowScope::All => Ok(()),
            _ => Err(StateError::NotPerFlow { kind: kind.to_string() }),
        }
    }
}

/// How [`NfState::data`] is encoded.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// JSON: readable, for people, files and tests.
    #[default]
    Json,
    /// postcard (varint integers, no field names) followed by the CRC-32
    /// (IEEE, little endian) of those bytes: compact and checked, for
    /// migration.
    Binary,
}

impl Encoding {
    fn code(self) -> u8 {
        match self {
            Encoding::Json => 1,
            Encoding::Binary => 2,
        }
    }

    fn from_code(code: u8) -> Option<Encoding> {
        match code {
            1 => Some(Encoding::Json),
            2 => Some(Encoding::Binary),
            _ => None,
        }
    }
}

/// An exported state of an NF: whole, or the flows of a scope.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NfState {
    /// The NF kind that produced it (`nat`, `firewall`, ...).
    pub kind: String,
    /// Format version of the NF's state type, so an importer can refuse
    /// what it does not understand.
    pub version: u32,
    /// How `data` is encoded.
    #[serde(default)]
    pub encoding: Encoding,
    /// The encoded state.
    pub data: Vec<u8>,
}

/// Why a state export or import was refused. On error the NF's state is
/// unchanged.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("this NF keeps no state")]
    Stateless,
    #[error("state belongs to a `{found}` NF, not `{expected}`")]
    WrongKind { expected: String, found: String },
    #[error("state format version {found} is not supported (expected {expected})")]
    WrongVersion { expected: u32, found: u32 },
    #[error("state does not decode: {0}")]
    Corrupt(String),
    #[error("state checksum mismatch: data says {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("`{kind}` keeps one state for the whole stream: it exports FlowScope::All only")]
    NotPerFlow { kind: String },
    #[error("`{kind}` keeps one state for the whole stream: it can be replaced, not merged")]
    MergeUnsupported { kind: String },
    #[error("merge refused, nothing changed: {0}")]
    Conflict(String),
    #[error("merge refused, nothing changed: {total} entries would exceed the limit of {max}")]
    Capacity { total: usize, max: usize },
    /// This instance's configuration has no exportable state format (no
    /// NF of the registry refuses this way today; the `loadbalancer` with
    /// an IPv6 VIP did until it got its own format).
    #[error("cannot export or import state: {0}")]
    Unsupported(String),
}

/// Magic of [`NfState::to_bytes`].
const MAGIC: &[u8; 4] = b"BRST";
/// Version of the [`NfState::to_bytes`] header layout.
const HEADER_VERSION: u8 = 1;

impl NfState {
    /// Encode `value` as the state of a `kind` NF (JSON, versioned).
    pub fn encode<T: serde::Serialize>(kind: &str, version: u32, value: &T) -> NfState {
        NfState::encode_as(Encoding::Json, kind, version, value)
    }

    /// Encode `value` as the state of a `kind` NF in `encoding`.
    pub fn encode_as<T: serde::Serialize>(
        encoding: Encoding,
        kind: &str,
        version: u32,
        value: &T,
    ) -> NfState {
        let data = match encoding {
            Encoding::Json => {
                serde_json::to_vec(value).expect("NF state types serialize infallibly")
            }
            Encoding::Binary => {
                let mut data =
                    postcard::to_allocvec(value).expect("NF state types serialize infallibly");
                let crc = crc32fast::hash(&data);
                data.extend_from_slice(&crc.to_le_bytes());
                data
            }
        };
        NfState { kind: kind.to_string(), version, encoding, data }
    }

    /// Decode the state of a `kind` NF of format `version`, whatever its
    /// encoding.
    pub fn decode<T: serde::de::DeserializeOwned>(
        &self,
        kind: &str,
        version: u32,
    ) -> Result<T, StateError> {
        if self.kind != kind {
            return Err(StateError::WrongKind { expected: kind.into(), found: self.kind.clone() });
        }
        if self.version != version {
            return Err(StateError::WrongVersion { expected: version, found: self.version });
        }
        match self.encoding {
            Encoding::Json => {
                serde_json::from_slice(&self.data).map_err(|e| StateError::Corrupt(e.to_string()))
            }
            Encoding::Binary => {
                let Some(body_len) = self.data.len().checked_sub(4) else {
                    return Err(StateError::Corrupt(format!(
                        "binary state of {} bytes is shorter than its 4-byte checksum",
                        self.data.len()
                    )));
                };
                let (body, crc) = self.data.split_at(body_len);
                let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
                let computed = crc32fast::hash(body);
                if stored != computed {
                    return Err(StateError::Checksum { stored, computed });
                }
                let (value, rest) = postcard::take_from_bytes(body)
                    .map_err(|e| StateError::Corrupt(format!("binary state: {e}")))?;
                if !rest.is_empty() {
                    return Err(StateError::Corrupt(format!(
                        "binary state: {} bytes after the end of the state",
                        rest.len()
                    )));
                }
                Ok(value)
            }
        }
    }

    /// The self-describing wire form: magic `BRST`, header version (1
    /// byte), encoding (1 byte: 1 JSON, 2 binary), kind length (1 byte),
    /// kind (UTF-8), format version (u32 LE), data length (u32 LE), data.
    pub fn to_bytes(&self) -> Vec<u8> {
        let kind = &self.kind.as_bytes()[..self.kind.len().min(255)];
        let mut out = Vec::with_capacity(4 + 3 + kind.len() + 8 + self.data.len());
        out.extend_from_slice(MAGIC);
        out.push(HEADER_VERSION);
        out.push(self.encoding.code());
        out.push(kind.len() as u8);
        out.extend_from_slice(kind);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.data.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.data);
        out
    }

    /// Read [`NfState::to_bytes`]'s form back. Refuses a wrong magic or
    /// header version, an unknown encoding, a truncated buffer and bytes
    /// after the data. (The data itself is checked when an NF decodes it:
    /// binary data carries a CRC-32.)
    pub fn from_bytes(bytes: &[u8]) -> Result<NfState, StateError> {
        let mut r = Reader { bytes, at: 0 };
        if r.take(4, "magic")? != MAGIC {
            return Err(StateError::Corrupt("not an NF state (magic is not `BRST`)".into()));
        }
        let header = r.take(1, "header version")?[0];
        if header != HEADER_VERSION {
            return Err(StateError::Corrupt(format!(
                "state header version {header} is not supported (expected {HEADER_VERSION})"
            )));
        }
        let code = r.take(1, "encoding")?[0];
        let encoding = Encoding::from_code(code)
            .ok_or_else(|| StateError::Corrupt(format!("unknown state encoding {code}")))?;
        let kind_len = r.take(1, "kind length")?[0] as usize;
        let kind = std::str::from_utf8(r.take(kind_len, "kind")?)
            .map_err(|_| StateError::Corrupt("state kind is not UTF-8".into()))?
            .to_string();
        let version = u32::from_le_bytes(r.array("format version")?);
        let len = u32::from_le_bytes(r.array("data length")?) as usize;
        let data = r.take(len, "data")?.to_vec();
        if r.at != bytes.len() {
            return Err(StateError::Corrupt(format!(
                "{} bytes after the end of the state",
                bytes.len() - r.at
            )));
        }
        Ok(NfState { kind, version, encoding, data })
    }
}

/// A cursor over [`NfState::from_bytes`]'s input.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], StateError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or_else(|| {
            StateError::Corrupt(format!(
                "state truncated in its {what}: needs {n} bytes at offset {}, has {}",
                self.at,
                self.bytes.len().saturating_sub(self.at)
            ))
        })?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn array(&mut self, what: &str) -> Result<[u8; 4], StateError> {
        let s = self.take(4, what)?;
        Ok([s[0], s[1], s[2], s[3]])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    fn t(a: u32, pa: u16, b: u32, pb: u16, proto: u8) -> FiveTuple {
        FiveTuple {
            src: Ipv4Addr::from(a),
            dst: Ipv4Addr::from(b),
            proto,
            src_port: pa,
            dst_port: pb,
        }
    }

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Sample {
        a: u64,
        b: Vec<(u32, String)>,
        c: Option<[u8; 6]>,
    }

    fn sample() -> Sample {
        Sample { a: 1 << 40, b: vec![(7, "x".into()), (u32::MAX, String::new())], c: Some([1; 6]) }
    }

    #[test]
    fn hash_shares_tile_the_space() {
        for count in [1u64, 2, 3, 7, 1000] {
            let shares: Vec<_> = (0..count).map(|i| HashRange::share(i, count)).collect();
            assert_eq!(shares[0].first, 0);
            assert_eq!(shares.last().unwrap().last, u64::MAX);
            for w in shares.windows(2) {
                assert_eq!(w[0].last.wrapping_add(1), w[1].first, "{count}: {w:?}");
            }
        }
        assert_eq!(HashRange::share(0, 1), HashRange::ALL);
    }

    #[test]
    fn the_stable_hash_is_fixed() {
        // Pinned values: these must never change, or instances of two braid
        // versions would disagree on which flows a range holds.
        let k = PartitionKey::five_tuple(t(0x0a00_0001, 1234, 0xc000_0201, 80, 6));
        assert_eq!(k.stable_hash(), t(0x0a00_0001, 1234, 0xc000_0201, 80, 6).symmetric_hash());
        let s = PartitionKey::station(5, [2, 0, 0, 0, 0, 1]);
        assert_eq!(s.stable_hash(), splitmix64(0x0005_0200_0000_0001));
        assert_eq!(splitmix64(0), 0xe220_a839_7b1d_cdaf);
    }

    #[test]
    fn binary_is_smaller_and_both_decode() {
        let j = NfState::encode("x", 3, &sample());
        let b = NfState::encode_as(Encoding::Binary, "x", 3, &sample());
        assert!(b.data.len() < j.data.len());
        assert_eq!(j.decode::<Sample>("x", 3).unwrap(), sample());
        assert_eq!(b.decode::<Sample>("x", 3).unwrap(), sample());
        assert!(matches!(b.decode::<Sample>("y", 3), Err(StateError::WrongKind { .. })));
        assert!(matches!(b.decode::<Sample>("x", 4), Err(StateError::WrongVersion { .. })));
        let short = NfState { data: vec![1, 2], ..b.clone() };
        assert!(matches!(short.decode::<Sample>("x", 3), Err(StateError::Corrupt(_))));
    }

    #[test]
    fn wire_form_refuses_bad_headers() {
        let s = NfState::encode_as(Encoding::Binary, "nat", 1, &sample());
        let bytes = s.to_bytes();
        assert_eq!(NfState::from_bytes(&bytes).unwrap(), s);
        let mut bad = bytes.clone();
        bad[0] = b'X';
        assert!(NfState::from_bytes(&bad).unwrap_err().to_string().contains("magic"));
        let mut bad = bytes.clone();
        bad[5] = 9;
        assert!(NfState::from_bytes(&bad).unwrap_err().to_string().contains("encoding 9"));
        let mut long = bytes.clone();
        long.push(0);
        assert!(NfState::from_bytes(&long).unwrap_err().to_string().contains("1 bytes after"));
        let e = NfState::from_bytes(&bytes[..9]).unwrap_err().to_string();
        assert!(e.contains("truncated in its kind"), "{e}");
    }

    proptest! {
        /// A 5-tuple and its reverse are one key; different flows differ.
        #[test]
        fn keys_are_symmetric(a: u32, pa: u16, b: u32, pb: u16, proto: u8) {
            let k = PartitionKey::five_tuple(t(a, pa, b, pb, proto));
            prop_assert_eq!(k, PartitionKey::five_tuple(t(b, pb, a, pa, proto)));
            prop_assert_eq!(k.stable_hash(), PartitionKey::five_tuple(t(b, pb, a, pa, proto)).stable_hash());
            prop_assert_ne!(k, PartitionKey::five_tuple(t(a, pa, b, pb, proto.wrapping_add(1))));
            prop_assert_eq!(k.partition(), FlowPartition::SymmetricFiveTuple);
        }

        /// Any change to a binary state, and any truncation, is refused
        /// with an error, never decoded into something else.
        #[test]
        fn damaged_binary_is_refused(at in any::<prop::sample::Index>(), flip in 1u8..=255, cut in any::<prop::sample::Index>()) {
            let s = NfState::encode_as(Encoding::Binary, "x", 1, &sample());
            let mut bad = s.clone();
            let i = at.index(bad.data.len());
            bad.data[i] ^= flip;
            prop_assert!(bad.decode::<Sample>("x", 1).is_err());
            let bytes = s.to_bytes();
            let n = cut.index(bytes.len());
            prop_assert!(NfState::from_bytes(&bytes[..n]).is_err());
            let mut bad = bytes.clone();
            let i = at.index(bytes.len());
            bad[i] ^= flip;
            let refused = match NfState::from_bytes(&bad) {
                Err(_) => true,
                Ok(st) => st.decode::<Sample>("x", 1).is_err(),
            };
            prop_assert!(refused, "flip at {}", i);
        }
    }
}
