//! Frames captured from the Linux 6.x kernel stack (veth between two
//! network namespaces, tx checksum offload off, read with tshark, which
//! reported every IP/UDP/TCP/ICMP checksum "Good"), and a cross-check of
//! built frames against tshark's own checksum validation.

use braid_packet::envelope;
use braid_packet::wire::build::FrameSpec;
use braid_packet::wire::*;
use std::net::Ipv4Addr;

const A: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
const B: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);

/// UDP 192.168.77.1:40000 -> 192.168.77.2:5353, payload "braid wire test".
const UDP_FRAME: [u8; 57] = [
    0x4e, 0x07, 0x62, 0x39, 0x37, 0x59, 0x7a, 0x57, 0x64, 0x40, 0x5f, 0x80, 0x08, 0x00, 0x45, 0x00,
    0x00, 0x2b, 0xbd, 0x6f, 0x40, 0x00, 0x40, 0x11, 0x61, 0xfe, 0xc0, 0xa8, 0x4d, 0x01, 0xc0, 0xa8,
    0x4d, 0x02, 0x9c, 0x40, 0x14, 0xe9, 0x00, 0x17, 0x27, 0x8f, 0x62, 0x72, 0x61, 0x69, 0x64, 0x20,
    0x77, 0x69, 0x72, 0x65, 0x20, 0x74, 0x65, 0x73, 0x74,
];

/// The ICMP port unreachable the kernel sent back, quoting the datagram.
const ICMP_UNREACH_FRAME: [u8; 85] = [
    0x7a, 0x57, 0x64, 0x40, 0x5f, 0x80, 0x4e, 0x07, 0x62, 0x39, 0x37, 0x59, 0x08, 0x00, 0x45, 0xc0,
    0x00, 0x47, 0x6e, 0x18, 0x00, 0x00, 0x40, 0x01, 0xf0, 0x89, 0xc0, 0xa8, 0x4d, 0x02, 0xc0, 0xa8,
    0x4d, 0x01, 0x03, 0x03, 0x18, 0x7a, 0x00, 0x00, 0x00, 0x00, 0x45, 0x00, 0x00, 0x2b, 0xbd, 0x6f,
    0x40, 0x00, 0x40, 0x11, 0x61, 0xfe, 0xc0, 0xa8, 0x4d, 0x01, 0xc0, 0xa8, 0x4d, 0x02, 0x9c, 0x40,
    0x14, 0xe9, 0x00, 0x17, 0x27, 0x8f, 0x62, 0x72, 0x61, 0x69, 0x64, 0x20, 0x77, 0x69, 0x72, 0x65,
    0x20, 0x74, 0x65, 0x73, 0x74,
];

/// A Linux TCP SYN 192.168.77.1:46500 -> 192.168.77.2:8080 with MSS,
/// SACK-permitted, timestamps and window scale options.
const TCP_SYN_FRAME: [u8; 74] = [
    0x4e, 0x07, 0x62, 0x39, 0x37, 0x59, 0x7a, 0x57, 0x64, 0x40, 0x5f, 0x80, 0x08, 0x00, 0x45, 0x00,
    0x00, 0x3c, 0x9d, 0xd0, 0x40, 0x00, 0x40, 0x06, 0x81, 0x97, 0xc0, 0xa8, 0x4d, 0x01, 0xc0, 0xa8,
    0x4d, 0x02, 0xb5, 0xa4, 0x1f, 0x90, 0xc9, 0x94, 0x16, 0x26, 0x00, 0x00, 0x00, 0x00, 0xa0, 0x02,
    0xfa, 0xf0, 0x52, 0x58, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4, 0x04, 0x02, 0x08, 0x0a, 0xe8, 0x7c,
    0x41, 0xf3, 0x00, 0x00, 0x00, 0x00, 0x01, 0x03, 0x03, 0x0a,
];

#[test]
fn captured_udp() {
    let eth = EthernetFrame::new_checked(&UDP_FRAME[..]).unwrap();
    assert_eq!(eth.dst_addr().to_string(), "4e:07:62:39:37:59");
    assert_eq!(eth.ethertype(), ethertype::IPV4);
    let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
    assert_eq!((ip.total_len(), ip.ident(), ip.dont_frag(), ip.ttl()), (43, 0xbd6f, true, 64));
    assert_eq!((ip.src_addr(), ip.dst_addr(), ip.checksum()), (A, B, 0x61fe));
    assert!(ip.verify_checksum());
    let udp = UdpPacket::new_checked(ip.payload()).unwrap();
    assert_eq!(
        (udp.src_port(), udp.dst_port(), udp.len(), udp.checksum()),
        (40000, 5353, 23, 0x278f)
    );
    assert!(udp.verify_checksum_v4(A, B));
    assert_eq!(udp.payload(), b"braid wire test");

    // Our fill computes the kernel's value; FrameSpec builds the same bytes.
    let mut copy = UDP_FRAME;
    let mut ip = Ipv4Packet::new_checked(&mut copy[14..]).unwrap();
    ip.fill_checksum();
    let mut udp = UdpPacket::new_checked(ip.payload_mut()).unwrap();
    udp.fill_checksum_v4(A, B);
    assert_eq!(copy, UDP_FRAME);
    let mut spec = FrameSpec::udp((A, 40000), (B, 5353), 0);
    spec.payload = b"braid wire test".to_vec();
    spec.src_mac = eth.src_addr();
    spec.dst_mac = eth.dst_addr();
    spec.ip_ident = 0xbd6f;
    spec.dont_frag = true;
    assert_eq!(spec.build(), UDP_FRAME);

    let t = envelope::parse(&UDP_FRAME).flow().unwrap();
    assert_eq!((t.src_port, t.dst_port, t.proto), (40000, 5353, 17));
}

#[test]
fn captured_icmp_port_unreachable() {
    let ip = Ipv4Packet::new_checked(&ICMP_UNREACH_FRAME[14..]).unwrap();
    assert_eq!((ip.tos(), ip.protocol(), ip.checksum()), (0xc0, ip_proto::ICMP, 0xf089));
    assert!(ip.verify_checksum());
    let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
    assert_eq!((icmp.msg_type(), icmp.msg_code(), icmp.checksum()), (3, 3, 0x187a));
    assert!(icmp.verify_checksum());
    assert!(!icmp.is_echo());
    // The quoted datagram is the UDP packet above.
    assert_eq!(icmp.data(), &UDP_FRAME[14..]);
    let t = envelope::parse(&ICMP_UNREACH_FRAME).flow().unwrap();
    assert_eq!((t.src, t.src_port, t.dst_port), (B, 0, 0));
}

#[test]
fn captured_tcp_syn() {
    let ip = Ipv4Packet::new_checked(&TCP_SYN_FRAME[14..]).unwrap();
    assert!(ip.verify_checksum());
    let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
    assert_eq!((tcp.src_port(), tcp.dst_port(), tcp.seq_number()), (46500, 8080, 0xc9941626));
    assert_eq!((tcp.flags(), tcp.header_len(), tcp.window_len()), (tcp_flags::SYN, 40, 64240));
    assert_eq!(tcp.checksum(), 0x5258);
    assert!(tcp.verify_checksum_v4(A, B));
    assert_eq!(&tcp.options()[..4], &[0x02, 0x04, 0x05, 0xb4]); // MSS 1460
    let mut seg = ip.payload().to_vec();
    TcpPacket::new_checked(&mut seg[..]).unwrap().fill_checksum_v4(A, B);
    assert_eq!(seg, ip.payload());
}

/// Minimal classic pcap writer (Ethernet link type).
fn write_pcap(path: &std::path::Path, frames: &[Vec<u8>]) -> std::io::Result<()> {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&65535u32.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    for (i, f) in frames.iter().enumerate() {
        out.extend_from_slice(&(i as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(f);
    }
    std::fs::write(path, out)
}

/// Built frames of every kind pass tshark's checksum validation (an
/// independent implementation).
#[test]
fn built_frames_pass_tshark_validation() {
    if braid_testkit::skip_unless_tool("tshark", "built_frames_pass_tshark_validation") {
        return;
    }
    let mut frames = Vec::new();
    for len in [42, 60, 64, 65, 128, 1514] {
        frames.push(FrameSpec::udp_frame_len((A, 1234), (B, 53), len).build());
    }
    let mut s =
        FrameSpec::tcp((A, 1), (B, 80), tcp_flags::SYN | tcp_flags::ACK).with_payload_len(33);
    s.vlan = Some(100);
    frames.push(s.build());
    let mut s = FrameSpec::icmp_echo(A, B, 0x4242, 7);
    s.ip_options = vec![1, 1, 1, 0];
    frames.push(s.build());
    let dir = std::env::temp_dir().join(format!("braid-wire-tshark-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("built.pcap");
    write_pcap(&path, &frames).unwrap();
    let out = std::process::Command::new("tshark")
        .args(["-r", path.to_str().unwrap()])
        .args(["-o", "ip.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE"])
        .args(["-o", "tcp.check_checksum:TRUE", "-T", "fields", "-E", "separator=;"])
        .args(["-e", "ip.checksum.status", "-e", "udp.checksum.status"])
        .args(["-e", "tcp.checksum.status", "-e", "icmp.checksum.status"])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "tshark failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), frames.len(), "tshark output:\n{text}");
    for (i, line) in lines.iter().enumerate() {
        let statuses: Vec<&str> = line.split(';').filter(|s| !s.is_empty()).collect();
        // IP plus one layer-4 checksum, each 1 ("Good").
        assert_eq!(statuses, ["1", "1"], "frame {i}: {line}");
    }
}
