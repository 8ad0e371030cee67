//! IPv4 and IPv6 fragments through the stateful NFs (`firewall`, `nat`
//! IPv4 only): later
//! fragments carry no transport header, so they follow what was decided
//! for the first fragment of their datagram, found by (source,
//! destination, protocol, identification) like Linux's reassembly queue
//! key.
//!
//! A [`FragTable`] holds, per datagram whose first fragment passed, the
//! value the NF needs for the others (the firewall: nothing, it passed;
//! the NAT: the translated address). It is bounded (`max` datagrams) and
//! an entry lives at most `timeout` (30 s, Linux's `ipfrag_time`) from its
//! first fragment, or until fragments covering the whole datagram were
//! seen. A first fragment that finds the table full (after expired entries
//! are dropped) is refused, so the NF drops it (`fragment`): passing it
//! would strand its other fragments. A later fragment whose first was not
//! seen (out of order, refused, expired, or never sent) is dropped by the
//! NF as `fragment` too. No reassembly: a later fragment arriving before
//! its first one is lost, where Linux would hold it until the datagram is
//! complete (docs/nfs.md).
//!
//! IPv6 fragments ([`FragKey6`], `firewall` only) are keyed by (source,
//! destination, 32-bit identification), like Linux's IPv6 reassembly
//! queue; the fragment header is found by the envelope's extension-header
//! walk.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

use braid_packet::envelope::{Class, Ipv4Headers, Ipv6Headers};

/// Linux's `net.ipv4.ipfrag_time`: 30 s.
pub const FRAGMENT_TIMEOUT_NS: u64 = 30_000_000_000;

/// Default `max_fragments` of the NFs: datagrams in flight at once.
pub const DEFAULT_MAX_FRAGMENTS: usize = 4096;

/// The datagram a fragment belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src: u32,
    pub dst: u32,
    pub proto: u8,
    pub id: u16,
}

/// The IPv6 datagram a fragment belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragKey6 {
    pub src: u128,
    pub dst: u128,
    pub id: u32,
}

/// One fragment: its datagram, where its payload lies in the datagram,
/// and whether more follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fragment<K = FragKey> {
    pub key: K,
    /// True for the fragment at offset 0 (with the transport header).
    pub first: bool,
    /// Payload offset in the datagram, in bytes.
    pub offset: u32,
    /// Payload bytes in this fragment.
    pub len: u32,
    /// The more-fragments flag.
    pub more: bool,
}

impl Fragment {
    /// The fragment `frame` is, if its envelope says it is one (`class`,
    /// `ip` from `braid_packet::envelope::parse` of the same bytes, so the
    /// header offsets are in bounds).
    #[inline]
    pub fn of(frame: &[u8], class: Class, ip: &Ipv4Headers) -> Option<Fragment> {
        let Class::Fragment { first, offset } = class else { return None };
        let l3 = ip.l3;
        Some(Fragment {
            key: FragKey {
                src: ip.src,
                dst: ip.dst,
                proto: ip.proto,
                id: u16::from_be_bytes([frame[l3 + 4], frame[l3 + 5]]),
            },
            first,
            offset: u32::from(offset),
            len: (ip.total_len - ip.ihl) as u32,
            more: frame[l3 + 6] & 0x20 != 0,
        })
    }
}

impl Fragment<FragKey6> {
    /// The IPv6 fragment `frame` is, if its envelope says it is one
    /// (`class`, `ip` from `braid_packet::envelope::parse_dual` of the same
    /// bytes). A later fragment's fragment header is the last extension
    /// header before [`Ipv6Headers::l4_offset`]; a first fragment's payload
    /// length is counted from its upper-layer header (extension headers
    /// after the fragment header are not counted, so its entry is never
    /// removed early).
    #[inline]
    pub fn of6(frame: &[u8], class: Class, ip: &Ipv6Headers) -> Option<Fragment<FragKey6>> {
        let Class::Fragment { first, offset } = class else { return None };
        let id = ip.frag_ident?;
        let l4 = ip.l4_offset();
        let more = first || (l4 >= 8 && frame.get(l4 - 5).is_some_and(|b| b & 1 != 0));
        Some(Fragment {
            key: FragKey6 { src: ip.src, dst: ip.dst, id },
            first,
            offset: u32::from(offset),
            len: ip.end().saturating_sub(l4) as u32,
            more,
        })
    }
}

/// Why a first fragment could not be recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragTableFull;

#[derive(Clone, Copy, Debug)]
struct Entry<V> {
    value: V,
    expires: u64,
    /// Payload bytes seen so far.
    seen: u32,
    /// Datagram payload length, once the last fragment was seen.
    total: Option<u32>,
}

/// Datagrams whose first fragment passed, with what their other
/// fragments need (see the module comment).
#[derive(Debug)]
pub struct FragTable<V, K = FragKey> {
    entries: HashMap<K, Entry<V>>,
    /// Keys in the order they expire (insertion order: the timeout is
    /// fixed from the first fragment).
    expiry: VecDeque<(K, u64)>,
    max: usize,
    timeout_ns: u64,
}

impl<V: Copy, K: Copy + Eq + Hash> FragTable<V, K> {
    /// A table for at most `max` datagrams (0: fragments never pass).
    pub fn new(max: usize, timeout_ns: u64) -> FragTable<V, K> {
        FragTable { entries: HashMap::new(), expiry: VecDeque::new(), max, timeout_ns }
    }

    /// Datagrams held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drop the entries expired at `now`.
    pub fn expire(&mut self, now: u64) {
        while let Some(&(key, expires)) = self.expiry.front() {
            if expires > now {
                break;
            }
            self.expiry.pop_front();
            if self.entries.get(&key).is_some_and(|e| e.expires == expires) {
                self.entries.remove(&key);
            }
        }
        // Entries removed on completion leave their expiry record behind;
        // keep the queue from growing past the table by much.
        if self.expiry.len() > 2 * self.max.max(16) {
            let entries = &self.entries;
            self.expiry.retain(|(k, t)| entries.get(k).is_some_and(|e| e.expires == *t));
        }
    }

    /// A first fragment passed with `value` for its datagram's others.
    pub fn first(&mut self, f: &Fragment<K>, value: V, now: u64) -> Result<(), FragTableFull> {
        if let Some(e) = self.entries.get_mut(&f.key) {
            e.value = value;
            e.seen = e.seen.saturating_add(f.len);
            return Ok(());
        }
        if self.entries.len() >= self.max {
            self.expire(now);
            if self.entries.len() >= self.max {
                return Err(FragTableFull);
            }
        }
        let expires = now.saturating_add(self.timeout_ns);
        self.entries.insert(f.key, Entry { value, expires, seen: f.len, total: None });
        self.expiry.push_back((f.key, expires));
        Ok(())
    }

    /// The value recorded for a later fragment's datagram, if its first
    /// fragment passed less than the timeout ago. The entry is removed
    /// once fragments covering the whole datagram were seen.
    pub fn later(&mut self, f: &Fragment<K>, now: u64) -> Option<V> {
        let e = self.entries.get_mut(&f.key)?;
        if e.expires <= now {
            self.entries.remove(&f.key);
            return None;
        }
        let value = e.value;
        e.seen = e.seen.saturating_add(f.len);
        if !f.more {
            e.total = Some(f.offset.saturating_add(f.len));
        }
        if e.total.is_some_and(|t| e.seen >= t) {
            self.entries.remove(&f.key);
        }
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frag(id: u16, offset: u32, len: u32, more: bool) -> Fragment {
        Fragment {
            key: FragKey { src: 1, dst: 2, proto: 17, id },
            first: offset == 0,
            offset,
            len,
            more,
        }
    }

    #[test]
    fn later_fragments_follow_the_first_until_complete_or_expired() {
        let mut t = FragTable::new(2, 30);
        assert_eq!(t.later(&frag(1, 8, 8, true), 0), None, "first not seen");
        t.first(&frag(1, 0, 8, true), 'a', 0).unwrap();
        assert_eq!(t.later(&frag(1, 16, 8, false), 1), Some('a'));
        assert_eq!(t.later(&frag(1, 8, 8, true), 2), Some('a'));
        assert!(t.is_empty(), "complete: removed");
        t.first(&frag(2, 0, 8, true), 'b', 10).unwrap();
        t.first(&frag(3, 0, 8, true), 'c', 10).unwrap();
        assert_eq!(t.first(&frag(4, 0, 8, true), 'd', 20), Err(FragTableFull));
        assert_eq!(t.later(&frag(2, 8, 8, true), 39), Some('b'));
        assert_eq!(t.later(&frag(2, 16, 8, true), 40), None, "expired");
        // Expired entries make room.
        t.first(&frag(4, 0, 8, true), 'd', 41).unwrap();
        t.expire(41);
        assert_eq!(t.len(), 1);
        let mut none: FragTable<()> = FragTable::new(0, 30);
        assert_eq!(none.first(&frag(1, 0, 8, true), (), 0), Err(FragTableFull));
    }

    #[test]
    fn parses_fragment_fields() {
        let mut f = braid_packet::wire::build::FrameSpec::udp(
            (std::net::Ipv4Addr::new(10, 0, 0, 1), 1),
            (std::net::Ipv4Addr::new(10, 0, 0, 2), 2),
            40,
        )
        .build();
        f[18..20].copy_from_slice(&0x1234u16.to_be_bytes());
        f[20] = 0x00;
        f[21] = 3; // offset 24, last
        let p = braid_packet::envelope::parse(&f);
        let fr = Fragment::of(&f, p.class, &p.ip).unwrap();
        assert_eq!(
            (fr.key.id, fr.first, fr.offset, fr.len, fr.more),
            (0x1234, false, 24, 48, false)
        );
        let whole = braid_packet::envelope::parse(&f[..0]);
        assert_eq!(Fragment::of(&f, whole.class, &whole.ip), None);
    }
}
