//! Locating and resizing the UDP payload of an IPv4/UDP frame, shared by
//! the NFs that transform UDP payloads (encrypt/decrypt, network coding).
//!
//! Every resize keeps the Ethernet/VLAN/IPv4/UDP headers and fixes the IPv4
//! total length and header checksum, the UDP length and (unless the sender
//! sent none, i.e. 0) the UDP checksum.

use braid_packet::envelope::{self, Class, Ipv4Headers, Parsed};
use braid_packet::wire;
use braid_packet::wire::checksum;
use braid_packet::wire::ipv4::Ipv4Packet;
use braid_packet::wire::udp::UdpPacket;
use braid_packet::Packet;

use crate::DropReason;

/// Where the parts of an IPv4/UDP frame are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct UdpLoc {
    /// Offset of the IPv4 header.
    pub ip: usize,
    /// Offset of the UDP header.
    pub udp: usize,
    /// Offset of the UDP payload.
    pub payload: usize,
    /// End of the UDP datagram (bytes after it are link padding).
    pub end: usize,
}

/// What a UDP-payload NF does with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Located {
    /// A whole IPv4/UDP datagram: transform it.
    Udp(UdpLoc),
    /// Not UDP over IPv4 (or not IPv4): not ours, passed on unchanged.
    Pass,
    /// Dropped for this reason.
    Drop(DropReason),
}

/// The envelope policy of every NF that transforms UDP payloads (`xor`,
/// `ats`, `encrypt`, `decrypt`, `nc_encode`, `nc_recode`, `nc_decode`;
/// the table in `docs/nfs.md`): a whole IPv4/UDP datagram is located;
/// other IPv4 traffic and non-IPv4 frames pass; a UDP fragment is dropped
/// as unsupported (part of a datagram can be neither transformed nor
/// passed on untransformed); truncated or malformed headers are dropped.
#[inline]
pub(crate) fn policy(p: &Parsed) -> Located {
    match p.class {
        Class::Ok => match UdpLoc::of(&p.ip) {
            Some(loc) => Located::Udp(loc),
            None => Located::Pass,
        },
        Class::Fragment { .. } if p.is_udp() => Located::Drop(DropReason::Unsupported),
        Class::Fragment { .. } | Class::Unsupported { .. } => Located::Pass,
        Class::Truncated { .. } | Class::Malformed { .. } => Located::Drop(DropReason::Malformed),
    }
}

/// [`policy`] of the frame's envelope.
#[inline]
pub(crate) fn verdict(frame: &[u8]) -> Located {
    policy(&envelope::parse(frame))
}

impl UdpLoc {
    /// The UDP datagram of IPv4 headers parsed by the envelope (`None`
    /// if they are not UDP). The envelope checked `end` lies within the
    /// IPv4 packet for a whole datagram.
    #[inline]
    pub fn of(ip: &Ipv4Headers) -> Option<UdpLoc> {
        let (udp, end) = ip.udp_span()?;
        Some(UdpLoc { ip: ip.l3, udp, payload: udp + wire::udp::HEADER_LEN, end })
    }
}

/// Datagrams longer than this cannot be described by the 16-bit lengths.
const MAX_IP_LEN: usize = u16::MAX as usize;

/// Resize the UDP payload: insert `n` bytes (content unspecified) at
/// payload offset `at` (relative to the payload start), dropping any link
/// padding after the datagram. Returns the new location, or `None` if the
/// buffer has no room or the lengths would overflow (packet unchanged).
///
/// Inlined: its result returned through memory was read back with wider
/// loads than it was written with (a store-forwarding stall per packet).
#[inline(always)]
pub(crate) fn insert(pkt: &mut Packet, loc: UdpLoc, at: usize, n: usize) -> Option<UdpLoc> {
    let ip_len = loc.end - loc.ip + n;
    if ip_len > MAX_IP_LEN || loc.payload + at > loc.end {
        return None;
    }
    pkt.truncate(loc.end);
    let split = loc.payload + at;
    // Move whichever side of the insertion point is shorter.
    if split <= loc.end - split && pkt.headroom() >= n {
        pkt.push_front(n).ok()?;
        pkt.data_mut().copy_within(n..n + split, 0);
    } else {
        pkt.push_back(n).ok()?;
        pkt.data_mut().copy_within(split..loc.end, split + n);
    }
    Some(UdpLoc { end: loc.end + n, ..loc })
}

/// Remove `n` bytes of the UDP payload at payload offset `at`. Returns the
/// new location, or `None` if the payload is shorter (packet unchanged).
/// Inlined, as [`insert`].
#[inline(always)]
pub(crate) fn remove(pkt: &mut Packet, loc: UdpLoc, at: usize, n: usize) -> Option<UdpLoc> {
    let split = loc.payload + at;
    if split + n > loc.end {
        return None;
    }
    pkt.truncate(loc.end);
    if split <= loc.end - split - n {
        pkt.data_mut().copy_within(0..split, n);
        pkt.pull_front(n).ok()?;
    } else {
        pkt.data_mut().copy_within(split + n..loc.end, split);
        pkt.truncate(loc.end - n);
    }
    Some(UdpLoc { end: loc.end - n, ..loc })
}

/// Write the IPv4 total length of the datagram at `loc` and patch the
/// header checksum for it (RFC 1624) instead of summing the header again:
/// a header that arrived with a wrong checksum keeps it wrong, as a router
/// forwarding it would, rather than being given a valid one. The source
/// and destination addresses, for the UDP pseudo header.
fn set_ip_total_len(frame: &mut [u8], loc: UdpLoc) -> (std::net::Ipv4Addr, std::net::Ipv4Addr) {
    let mut ip = Ipv4Packet::new_unchecked(&mut frame[loc.ip..loc.end]);
    let (old, new) = (ip.total_len(), (loc.end - loc.ip) as u16);
    ip.set_total_len(new);
    ip.set_checksum(checksum::update16(ip.checksum(), old, new));
    (ip.src_addr(), ip.dst_addr())
}

/// Write the IPv4 total length and checksum and the UDP length and
/// checksum for the datagram at `loc` (after its payload changed). A UDP
/// checksum of 0 on entry (none sent) stays 0.
pub(crate) fn fix_lengths_and_checksums(frame: &mut [u8], loc: UdpLoc) {
    fix_lengths_and_checksums_summed(frame, loc, loc.end, 0)
}

/// [`fix_lengths_and_checksums`] for a datagram whose bytes from `tail`
/// to its end were just written by a pass that also summed them:
/// `tail_sum` is `checksum::sum(&frame[tail..loc.end])`, so only the
/// bytes before `tail` are read again. `tail` must lie at an even offset
/// from the UDP header (otherwise the whole datagram is summed).
pub(crate) fn fix_lengths_and_checksums_summed(
    frame: &mut [u8],
    loc: UdpLoc,
    tail: usize,
    tail_sum: u32,
) {
    let given = (loc.udp + wire::udp::HEADER_LEN..=loc.end).contains(&tail)
        && (tail - loc.udp).is_multiple_of(2);
    let (tail, tail_sum) = if given { (tail, tail_sum) } else { (loc.end, 0) };
    let udp_len = loc.end - loc.udp;
    let had_checksum = UdpPacket::new_unchecked(&frame[loc.udp..loc.end]).checksum() != 0;
    // Summed before the length and checksum fields are written, and those
    // two added by value: reading freshly written 2-byte fields back in
    // 4-byte words stalls (store forwarding), a quarter of this function.
    let head = had_checksum.then(|| {
        checksum::sum(&frame[loc.udp..loc.udp + 4]) as u64
            + checksum::sum(&frame[loc.udp + wire::udp::HEADER_LEN..tail]) as u64
    });
    let (src, dst) = set_ip_total_len(frame, loc);
    let mut udp = UdpPacket::new_unchecked(&mut frame[loc.udp..loc.end]);
    udp.set_len(udp_len as u16);
    let Some(head) = head else { return };
    let pseudo = checksum::pseudo_header_v4(src, dst, wire::ip_proto::UDP, udp_len);
    let sum = pseudo as u64 + udp_len as u64 + head + tail_sum as u64;
    udp.set_checksum(checksum::udp_on_wire(!checksum::fold64(sum)));
}

/// Like [`fix_lengths_and_checksums`], but the UDP checksum is set to 0
/// ("no checksum", valid over IPv4): no pass over the payload.
pub(crate) fn fix_lengths_zero_udp_checksum(frame: &mut [u8], loc: UdpLoc) {
    set_ip_total_len(frame, loc);
    let mut udp = UdpPacket::new_unchecked(&mut frame[loc.udp..loc.end]);
    udp.set_len((loc.end - loc.udp) as u16);
    udp.set_checksum(0);
}

/// The headers of an IPv4/UDP frame (everything before the UDP payload),
/// kept to build new frames of the same flow: coded packets, recovered
/// packets.
#[derive(Clone, Debug)]
pub(crate) struct Template {
    headers: Vec<u8>,
    loc: UdpLoc,
}

impl Template {
    /// The headers of `frame`, located at `loc`.
    pub fn of(frame: &[u8], loc: UdpLoc) -> Template {
        Template { headers: frame[..loc.payload].to_vec(), loc: UdpLoc { end: loc.payload, ..loc } }
    }

    /// Replace with the headers of `frame` (reusing the allocation).
    pub fn set(&mut self, frame: &[u8], loc: UdpLoc) {
        self.headers.clear();
        self.headers.extend_from_slice(&frame[..loc.payload]);
        self.loc = UdpLoc { end: loc.payload, ..loc };
    }

    /// A new frame: these headers, then `parts` as the UDP payload, with
    /// lengths and checksums fixed. `None` if it does not fit a buffer or
    /// the 16-bit lengths.
    pub fn build(&self, parts: &[&[u8]]) -> Option<Packet> {
        let payload: usize = parts.iter().map(|p| p.len()).sum();
        if self.loc.payload - self.loc.ip + payload > MAX_IP_LEN {
            return None;
        }
        let mut p = Packet::new();
        p.extend_from_slice(&self.headers).ok()?;
        for part in parts {
            p.extend_from_slice(part).ok()?;
        }
        let loc = UdpLoc { end: p.len(), ..self.loc };
        fix_lengths_and_checksums(p.data_mut(), loc);
        Some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use braid_packet::wire::build::FrameSpec;
    use std::net::Ipv4Addr;

    fn spec(len: usize) -> FrameSpec {
        FrameSpec::udp((Ipv4Addr::new(10, 0, 0, 1), 1000), (Ipv4Addr::new(10, 0, 0, 2), 2000), len)
    }

    fn check_valid(frame: &[u8]) -> UdpLoc {
        let Located::Udp(loc) = verdict(frame) else { panic!("not udp") };
        let ip = Ipv4Packet::new_checked(&frame[loc.ip..]).unwrap();
        assert!(ip.verify_checksum());
        let udp = UdpPacket::new_checked(&frame[loc.udp..loc.end]).unwrap();
        assert!(udp.verify_checksum_v4(ip.src_addr(), ip.dst_addr()));
        assert_eq!(loc.end, frame.len());
        loc
    }

    #[test]
    fn insert_then_remove_restores_the_frame() {
        for vlan in [None, Some(7)] {
            for (len, at) in [(0, 0), (10, 0), (10, 10), (1400, 0), (1400, 1400), (1400, 3)] {
                let mut s = spec(len);
                s.vlan = vlan;
                let frame = s.build();
                let mut p = Packet::from_bytes(&frame);
                let loc = check_valid(p.data());
                let loc2 = insert(&mut p, loc, at, 16).unwrap();
                fix_lengths_and_checksums(p.data_mut(), loc2);
                check_valid(p.data());
                assert_eq!(&p.data()[..loc.ip], &frame[..loc.ip]);
                let before = loc.payload..loc.payload + at;
                assert_eq!(&p.data()[before.clone()], &frame[before]);
                assert_eq!(&p.data()[loc2.payload + at + 16..], &frame[loc.payload + at..]);
                let loc3 = remove(&mut p, loc2, at, 16).unwrap();
                fix_lengths_and_checksums(p.data_mut(), loc3);
                assert_eq!(p.data(), &frame[..], "len {len} at {at} vlan {vlan:?}");
            }
        }
    }

    /// With the sum of the bytes after `tail` given, the lengths and
    /// checksums are the ones a full pass writes, whatever the payload,
    /// the frame's VLAN tag, a UDP checksum of 0 on entry, or `tail`
    /// (odd offsets fall back to the full pass).
    #[test]
    fn a_given_tail_sum_writes_what_the_full_pass_writes() {
        use proptest::prelude::*;
        proptest!(|(payload in prop::collection::vec(any::<u8>(), 0..1500),
                    grow in 0usize..40, vlan in any::<bool>(), no_checksum in any::<bool>(),
                    tail_at in 0usize..1600)| {
            let mut s = spec(payload.len());
            s.payload = payload;
            s.vlan = vlan.then_some(5);
            let mut frame = s.build();
            let Located::Udp(loc) = verdict(&frame) else { panic!() };
            if no_checksum {
                frame[loc.udp + 6..loc.udp + 8].fill(0);
            }
            let mut p = Packet::from_bytes(&frame);
            let loc = insert(&mut p, loc, 0, grow).unwrap();
            let tail = loc.payload + tail_at.min(loc.end - loc.payload);
            // The full pass, written out with the wire module's own
            // checksum code (the frame's IPv4 checksum is valid, so a full
            // recompute equals the patch).
            let mut full = p.data().to_vec();
            let (src, dst) = {
                let mut ip = Ipv4Packet::new_unchecked(&mut full[loc.ip..loc.end]);
                ip.set_total_len((loc.end - loc.ip) as u16);
                ip.fill_checksum();
                (ip.src_addr(), ip.dst_addr())
            };
            let mut udp = UdpPacket::new_unchecked(&mut full[loc.udp..loc.end]);
            let had_checksum = udp.checksum() != 0;
            udp.set_len((loc.end - loc.udp) as u16);
            if had_checksum {
                udp.fill_checksum_v4(src, dst);
            }
            let mut through_the_default = p.data().to_vec();
            fix_lengths_and_checksums(&mut through_the_default, loc);
            prop_assert_eq!(&through_the_default, &full);
            let mut summed = p.data().to_vec();
            let tail_sum = checksum::sum(&summed[tail..loc.end]);
            fix_lengths_and_checksums_summed(&mut summed, loc, tail, tail_sum);
            prop_assert_eq!(summed, full);
        });
    }

    /// The IPv4 checksum is patched for the new length, not recomputed: a
    /// valid one stays valid, a wrong one stays wrong (never laundered).
    #[test]
    fn the_ip_checksum_is_patched_not_recomputed() {
        for corrupt in [false, true] {
            let mut frame = spec(30).build();
            if corrupt {
                frame[24] ^= 0x5a;
            }
            let mut p = Packet::from_bytes(&frame);
            let Located::Udp(loc) = verdict(p.data()) else { panic!() };
            let loc = insert(&mut p, loc, 0, 16).unwrap();
            fix_lengths_and_checksums(p.data_mut(), loc);
            let ip = Ipv4Packet::new_checked(&p.data()[loc.ip..]).unwrap();
            assert_eq!(ip.total_len() as usize, loc.end - loc.ip);
            assert_eq!(ip.verify_checksum(), !corrupt, "corrupt {corrupt}");
        }
    }

    #[test]
    fn template_rebuilds_the_frame() {
        let mut s = spec(30);
        s.vlan = Some(3);
        s.payload = (0..30).collect();
        let frame = s.build();
        let Located::Udp(loc) = verdict(&frame) else { panic!() };
        let t = Template::of(&frame, loc);
        let p =
            t.build(&[&frame[loc.payload..loc.payload + 10], &frame[loc.payload + 10..]]).unwrap();
        assert_eq!(p.data(), &frame[..]);
        let shorter = t.build(&[b"abc"]).unwrap();
        check_valid(shorter.data());
        assert!(t.build(&[&[0u8; 70000]]).is_none());
    }

    #[test]
    fn classifies_frames() {
        assert_eq!(verdict(&[0u8; 5]), Located::Drop(DropReason::Malformed));
        let tcp = FrameSpec::tcp((Ipv4Addr::LOCALHOST, 1), (Ipv4Addr::LOCALHOST, 2), 0).build();
        assert_eq!(verdict(&tcp), Located::Pass);
        let mut bad = spec(20).build();
        bad.truncate(40);
        assert_eq!(verdict(&bad), Located::Drop(DropReason::Malformed));
        let mut frag = spec(20).build();
        frag[20] = 0x20;
        assert_eq!(verdict(&frag), Located::Drop(DropReason::Unsupported));
        assert!(matches!(verdict(&spec(20).build()), Located::Udp(_)));
    }

    #[test]
    fn remove_more_than_the_payload_fails_cleanly() {
        let frame = spec(4).build();
        let mut p = Packet::from_bytes(&frame);
        let Located::Udp(loc) = verdict(p.data()) else { panic!() };
        assert!(remove(&mut p, loc, 0, 5).is_none());
        assert_eq!(p.data(), &frame[..]);
    }
}
