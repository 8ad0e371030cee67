//! Link types a capture may use, and the Ethernet framing NFs need.
//!
//! braid's NFs parse Ethernet frames. Captures of `tcpdump -i any` use
//! Linux "cooked" headers (SLL, SLL2) and tunnels or `-i tun0` give raw IP;
//! [`to_ethernet`] rewrites those into Ethernet frames:
//!
//! - the EtherType is the SLL/SLL2 protocol field, or for raw IP the
//!   version nibble (4: IPv4, 6: IPv6);
//! - the source MAC is the SLL/SLL2 link-layer address when it is a 6-byte
//!   Ethernet address, else [`PLACEHOLDER_SRC_MAC`];
//! - the destination MAC is the broadcast address for SLL "broadcast"
//!   packets and for IPv4 255.255.255.255, the RFC 1112 / RFC 2464 group
//!   address for IPv4 / IPv6 multicast, else [`PLACEHOLDER_DST_MAC`]
//!   (a cooked capture does not record the destination).
//!
//! Frames with no Ethernet equivalent (netlink, 802.2 LLC, a raw packet
//! that is not IP) are reported as [`NotEthernet`] and the caller counts
//! them as dropped.

/// `LINKTYPE_ETHERNET`.
pub const ETHERNET: u32 = 1;
/// `LINKTYPE_RAW`: raw IPv4 or IPv6, told apart by the version nibble.
pub const RAW: u32 = 101;
/// `LINKTYPE_LINUX_SLL`: Linux cooked capture v1 (`tcpdump -i any`).
pub const LINUX_SLL: u32 = 113;
/// `LINKTYPE_IPV4`.
pub const IPV4: u32 = 228;
/// `LINKTYPE_IPV6`.
pub const IPV6: u32 = 229;
/// `LINKTYPE_LINUX_SLL2`: Linux cooked capture v2 (`tcpdump -i any -y LINUX_SLL2`).
pub const LINUX_SLL2: u32 = 276;

/// Source MAC of a rebuilt frame whose capture has none (locally
/// administered, unicast).
pub const PLACEHOLDER_SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// Destination MAC of a rebuilt unicast frame (locally administered).
pub const PLACEHOLDER_DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ARPHRD_ETHER: u16 = 1;
const ARPHRD_NETLINK: u16 = 824;
/// SLL packet type "sent to everyone".
const PACKET_BROADCAST: u16 = 1;
const SLL_LEN: usize = 16;
const SLL2_LEN: usize = 20;

/// How a link type's frames become Ethernet frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// Already Ethernet: used as they are.
    Ethernet,
    /// Linux cooked v1 header replaced by an Ethernet header.
    LinuxSll,
    /// Linux cooked v2 header replaced by an Ethernet header.
    LinuxSll2,
    /// Raw IP (either version) behind a new Ethernet header.
    RawIp,
    /// Raw IPv4 behind a new Ethernet header.
    Ipv4,
    /// Raw IPv6 behind a new Ethernet header.
    Ipv6,
}

impl Framing {
    /// The framing for a `LINKTYPE_*`, `None` if braid cannot use it.
    pub fn for_linktype(linktype: u32) -> Option<Framing> {
        Some(match linktype {
            ETHERNET => Framing::Ethernet,
            LINUX_SLL => Framing::LinuxSll,
            LINUX_SLL2 => Framing::LinuxSll2,
            RAW => Framing::RawIp,
            IPV4 => Framing::Ipv4,
            IPV6 => Framing::Ipv6,
            _ => return None,
        })
    }

    /// The link types braid reads, for error messages.
    pub const SUPPORTED: &'static str =
        "1 (Ethernet), 113 (Linux SLL), 276 (Linux SLL2), 101 (raw IP), 228 (IPv4), 229 (IPv6)";
}

/// Why a captured frame has no Ethernet form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotEthernet(pub &'static str);

/// Write the Ethernet form of `frame` (of framing `framing`) into `out`,
/// replacing its contents. For [`Framing::Ethernet`] this is a copy;
/// callers that can use the bytes directly should.
pub fn to_ethernet(framing: Framing, frame: &[u8], out: &mut Vec<u8>) -> Result<(), NotEthernet> {
    let (ethertype, src, broadcast, payload) = match framing {
        Framing::Ethernet => {
            out.clear();
            out.extend_from_slice(frame);
            return Ok(());
        }
        Framing::LinuxSll => {
            if frame.len() < SLL_LEN {
                return Err(NotEthernet("shorter than its 16-byte SLL header"));
            }
            let be = |i: usize| u16::from_be_bytes([frame[i], frame[i + 1]]);
            let (pkttype, hatype, addrlen) = (be(0), be(2), be(4));
            check_hatype(hatype)?;
            let src = ethernet_address(hatype, addrlen as usize, &frame[6..14]);
            (be(14), src, pkttype == PACKET_BROADCAST, &frame[SLL_LEN..])
        }
        Framing::LinuxSll2 => {
            if frame.len() < SLL2_LEN {
                return Err(NotEthernet("shorter than its 20-byte SLL2 header"));
            }
            let be = |i: usize| u16::from_be_bytes([frame[i], frame[i + 1]]);
            let (hatype, pkttype, addrlen) = (be(8), frame[10] as u16, frame[11]);
            check_hatype(hatype)?;
            let src = ethernet_address(hatype, addrlen as usize, &frame[12..20]);
            (be(0), src, pkttype == PACKET_BROADCAST, &frame[SLL2_LEN..])
        }
        Framing::RawIp => {
            let ethertype = match frame.first().map(|b| b >> 4) {
                Some(4) => ETH_P_IPV4,
                Some(6) => ETH_P_IPV6,
                Some(_) => return Err(NotEthernet("raw packet is neither IPv4 nor IPv6")),
                None => return Err(NotEthernet("empty raw IP packet")),
            };
            (ethertype, PLACEHOLDER_SRC_MAC, false, frame)
        }
        Framing::Ipv4 => (ETH_P_IPV4, PLACEHOLDER_SRC_MAC, false, frame),
        Framing::Ipv6 => (ETH_P_IPV6, PLACEHOLDER_SRC_MAC, false, frame),
    };
    if ethertype < 0x0600 {
        // 802.3 length / LLC / Novell: no EtherType to put in a header.
        return Err(NotEthernet("cooked packet carries 802.2 LLC or 802.3, not an EtherType"));
    }
    let dst = if broadcast {
        [0xff; 6]
    } else {
        group_address(ethertype, payload).unwrap_or(PLACEHOLDER_DST_MAC)
    };
    out.clear();
    out.reserve(14 + payload.len());
    out.extend_from_slice(&dst);
    out.extend_from_slice(&src);
    out.extend_from_slice(&ethertype.to_be_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

fn check_hatype(hatype: u16) -> Result<(), NotEthernet> {
    if hatype == ARPHRD_NETLINK {
        return Err(NotEthernet("netlink message, not a network packet"));
    }
    Ok(())
}

fn ethernet_address(hatype: u16, len: usize, addr: &[u8]) -> [u8; 6] {
    if hatype == ARPHRD_ETHER && len == 6 {
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&addr[..6]);
        mac
    } else {
        PLACEHOLDER_SRC_MAC
    }
}

/// The Ethernet destination of an IP broadcast or multicast packet.
fn group_address(ethertype: u16, ip: &[u8]) -> Option<[u8; 6]> {
    match ethertype {
        ETH_P_IPV4 if ip.len() >= 20 => {
            let d = &ip[16..20];
            if d == [255, 255, 255, 255] {
                Some([0xff; 6])
            } else if d[0] & 0xf0 == 0xe0 {
                Some([0x01, 0x00, 0x5e, d[1] & 0x7f, d[2], d[3]])
            } else {
                None
            }
        }
        ETH_P_IPV6 if ip.len() >= 40 && ip[24] == 0xff => {
            Some([0x33, 0x33, ip[36], ip[37], ip[38], ip[39]])
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ipv4(dst: [u8; 4]) -> Vec<u8> {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[16..20].copy_from_slice(&dst);
        p
    }

    fn sll(pkttype: u16, hatype: u16, addr: &[u8], proto: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&pkttype.to_be_bytes());
        f.extend_from_slice(&hatype.to_be_bytes());
        f.extend_from_slice(&(addr.len() as u16).to_be_bytes());
        let mut a = [0u8; 8];
        a[..addr.len()].copy_from_slice(addr);
        f.extend_from_slice(&a);
        f.extend_from_slice(&proto.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn sll2(pkttype: u8, hatype: u16, addr: &[u8], proto: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&proto.to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&7u32.to_be_bytes());
        f.extend_from_slice(&hatype.to_be_bytes());
        f.push(pkttype);
        f.push(addr.len() as u8);
        let mut a = [0u8; 8];
        a[..addr.len()].copy_from_slice(addr);
        f.extend_from_slice(&a);
        f.extend_from_slice(payload);
        f
    }

    fn eth(framing: Framing, frame: &[u8]) -> Result<Vec<u8>, NotEthernet> {
        let mut out = Vec::new();
        to_ethernet(framing, frame, &mut out).map(|()| out)
    }

    #[test]
    fn cooked_headers_become_ethernet_with_the_sender_mac() {
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let ip = ipv4([10, 0, 0, 2]);
        for frame in [sll(0, 1, &mac, 0x0800, &ip), sll2(0, 1, &mac, 0x0800, &ip)] {
            let framing =
                if frame.len() == 16 + ip.len() { Framing::LinuxSll } else { Framing::LinuxSll2 };
            let e = eth(framing, &frame).unwrap();
            assert_eq!(&e[0..6], &PLACEHOLDER_DST_MAC);
            assert_eq!(&e[6..12], &mac);
            assert_eq!(&e[12..14], &[0x08, 0x00]);
            assert_eq!(&e[14..], &ip[..]);
        }
        // Broadcast packet type; loopback (no address); multicast.
        let e = eth(Framing::LinuxSll, &sll(1, 1, &mac, 0x0806, &[0; 28])).unwrap();
        assert_eq!(&e[0..6], &[0xff; 6]);
        let e = eth(Framing::LinuxSll2, &sll2(0, 772, &[], 0x0800, &ip)).unwrap();
        assert_eq!(&e[6..12], &PLACEHOLDER_SRC_MAC);
        let e = eth(Framing::LinuxSll, &sll(2, 1, &mac, 0x0800, &ipv4([224, 129, 2, 3]))).unwrap();
        assert_eq!(&e[0..6], &[0x01, 0x00, 0x5e, 0x01, 0x02, 0x03]);
        // What has no Ethernet form.
        assert_eq!(
            eth(Framing::LinuxSll, &sll(0, 824, &[], 0x0010, &[0; 20])).unwrap_err().0,
            "netlink message, not a network packet"
        );
        assert!(eth(Framing::LinuxSll, &sll(0, 1, &mac, 0x0004, &[0; 20])).is_err());
        assert!(eth(Framing::LinuxSll, &[0; 15]).unwrap_err().0.contains("16-byte SLL"));
        assert!(eth(Framing::LinuxSll2, &[0; 19]).unwrap_err().0.contains("20-byte SLL2"));
    }

    #[test]
    fn raw_ip_gets_an_ethertype_by_version() {
        let v4 = ipv4([255, 255, 255, 255]);
        let e = eth(Framing::RawIp, &v4).unwrap();
        assert_eq!(
            (&e[0..6], &e[6..12], &e[12..14]),
            (&[0xff; 6][..], &PLACEHOLDER_SRC_MAC[..], &[8, 0][..])
        );
        let mut v6 = vec![0u8; 40];
        v6[0] = 0x60;
        v6[24] = 0xff;
        v6[36..40].copy_from_slice(&[0, 0, 0, 1]);
        let e = eth(Framing::RawIp, &v6).unwrap();
        assert_eq!((&e[0..6], &e[12..14]), (&[0x33, 0x33, 0, 0, 0, 1][..], &[0x86, 0xdd][..]));
        assert_eq!(&eth(Framing::Ipv6, &v6).unwrap()[12..14], &[0x86, 0xdd]);
        assert_eq!(&eth(Framing::Ipv4, &ipv4([10, 0, 0, 1])).unwrap()[0..6], &PLACEHOLDER_DST_MAC);
        assert!(eth(Framing::RawIp, &[0x10]).is_err());
        assert!(eth(Framing::RawIp, &[]).is_err());
        assert_eq!(Framing::for_linktype(113), Some(Framing::LinuxSll));
        assert_eq!(Framing::for_linktype(105), None);
    }

    proptest! {
        /// Any bytes in any framing: an Ethernet frame or a reason, no panic;
        /// a frame always ends with the payload it was given.
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80), which in 0usize..6) {
            let framing = [Framing::Ethernet, Framing::LinuxSll, Framing::LinuxSll2,
                Framing::RawIp, Framing::Ipv4, Framing::Ipv6][which];
            let mut out = Vec::new();
            if to_ethernet(framing, &bytes, &mut out).is_ok() {
                let header = match framing { Framing::LinuxSll => 16, Framing::LinuxSll2 => 20, _ => 0 };
                prop_assert!(out.ends_with(&bytes[header..]));
            }
        }
    }
}
