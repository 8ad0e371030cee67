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
