//! AF_PACKET port pair forwarding between two veths: ping and a UDP flow
//! pass through a user-space bridge, at batch size 32 and 1.

mod common;

use braid_io::af_packet::{AfPacketConfig, AfPacketPort};
use braid_io::Port;
use common::{all_gone, expected_payload, skip_unless_root, Bridge, Topology};

fn forward_through_af_packet(batch_size: usize) {
    let topo = Topology::new("ap");
    let created = topo.created();
    let (fl, fr) = (topo.fl().to_string(), topo.fr().to_string());
    let (a, b) = topo
        .fwd
        .enter(move || {
            let mut ca = AfPacketConfig::new(&fl);
            ca.batch_size = batch_size;
            let mut cb = AfPacketConfig::new(&fr);
            cb.batch_size = batch_size;
            (AfPacketPort::open(&ca).unwrap(), AfPacketPort::open(&cb).unwrap())
        })
        .unwrap();
    assert_eq!(a.name(), format!("af_packet:{}", topo.fl()));
    let bridge = Bridge::start(a, b);
    assert!(topo.ping(3), "ping through the AF_PACKET bridge");
    for size in [18, 256, 1400] {
        let got = topo.udp_echo(50, size);
        assert_eq!(got.len(), 50, "all UDP echoes of {size} B come back");
        for (i, p) in got.iter().enumerate() {
            assert_eq!(p, &expected_payload(i, size), "echo {i} of {size} B is intact");
        }
    }
    let (a, b) = bridge.stop();
    let (sa, sb) = (a.stats(), b.stats());
    assert!(sa.rx_packets >= 150 + 3, "left port received {sa:?}");
    assert!(sb.rx_packets >= 150 + 3, "right port received {sb:?}");
    assert_eq!(sa.tx_packets, sb.rx_packets, "everything received on the right went out left");
    assert_eq!(sb.tx_packets, sa.rx_packets, "everything received on the left went out right");
    assert_eq!(sa.tx_dropped + sb.tx_dropped, 0);
    drop((a, b));
    drop(topo);
    assert!(all_gone(&created), "namespaces and links are removed");
}

#[test]
fn af_packet_forwards_ping_and_udp_batched() {
    if skip_unless_root("af_packet_forwards_ping_and_udp_batched") {
        return;
    }
    forward_through_af_packet(32);
}

#[test]
fn af_packet_forwards_ping_and_udp_one_at_a_time() {
    if skip_unless_root("af_packet_forwards_ping_and_udp_one_at_a_time") {
        return;
    }
    forward_through_af_packet(1);
}

/// A `FrameSender` opened in a namespace puts the exact frame on the wire:
/// the veth's peer receives it byte for byte, and a short frame is refused.
#[test]
fn frame_sender_sends_one_frame_as_given() {
    if skip_unless_root("frame_sender_sends_one_frame_as_given") {
        return;
    }
    use braid_io::af_packet::FrameSender;
    use braid_io::netns::{self, NetnsGuard};
    let ns = NetnsGuard::create(&netns::unique_name("fs")).unwrap();
    let n = Some(ns.name());
    netns::ip(n, &["link", "add", "s0", "type", "veth", "peer", "name", "s1"]).unwrap();
    netns::set_up(n, "s0").unwrap();
    netns::set_up(n, "s1").unwrap();
    let (sender, mut rx) = netns::in_netns(ns.name(), || {
        (FrameSender::open("s0").unwrap(), AfPacketPort::open(&AfPacketConfig::new("s1")).unwrap())
    })
    .unwrap();
    // A frame of a private EtherType, so nothing else the kernel sends
    // (router solicitations, ...) is taken for it.
    let mut frame = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02, 0x88, 0xb5];
    frame.extend((0..100u8).map(|i| i.wrapping_mul(7)));
    sender.send(&frame).unwrap();
    let mut got = None;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while got.is_none() && std::time::Instant::now() < deadline {
        let mut b = braid_packet::Batch::with_capacity(8);
        rx.recv(&mut b, 8).unwrap();
        got = b
            .iter()
            .find(|p| p.data().get(12..14) == Some(&[0x88, 0xb5][..]))
            .map(|p| p.data().to_vec());
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(got.as_deref(), Some(&frame[..]), "the peer received the frame as sent");
    let e = sender.send(&frame[..10]).unwrap_err().to_string();
    assert!(e.contains("no Ethernet header"), "{e}");
}
