//! Jumbo frames (MTU 9000) end to end (issue 14, item 5): through capture
//! files and memory, between processes' shared memory, over AF_PACKET on
//! veths with MTU 9000; and the limits said clearly where a path has one
//! (AF_XDP without multi-buffer, an AF_PACKET or shared-memory port sized
//! for 1500).

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use braid_io::af_packet::{AfPacketConfig, AfPacketPort};
use braid_io::af_xdp::AfXdpConfig;
use braid_io::capture::{CaptureFormat, CaptureInPort, CaptureOutPort};
use braid_io::netns;
use braid_io::shm::{ShmConfig, ShmPort};
use braid_io::Port;
use braid_packet::{Batch, Packet, MAX_FRAME};
use common::{all_gone, skip_unless_root, Bridge, Topology};

/// A 9014-byte Ethernet frame (9000-byte IPv4 packet), bytes varying.
fn jumbo(i: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..9014u32).map(|k| (k as u8) ^ i).collect();
    f[12..14].copy_from_slice(&[0x88, 0xb5]); // local experimental ethertype
    f
}

#[test]
fn jumbo_frames_cross_capture_files_whole() {
    let dir = std::env::temp_dir().join(format!("braid-jumbo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = Cleanup(dir.clone());
    let frames: Vec<Vec<u8>> = (0..5).map(jumbo).collect();
    for (ext, format) in [("pcap", CaptureFormat::Pcap), ("pcapng", CaptureFormat::Pcapng)] {
        let path = dir.join(format!("j.{ext}"));
        let mut out = CaptureOutPort::create(&path, Some(format)).unwrap();
        let mut b: Batch = frames.iter().map(|f| Packet::try_from_bytes(f).unwrap()).collect();
        out.send(&mut b).unwrap();
        out.finish().unwrap();
        let mut inp = CaptureInPort::open(&path).unwrap();
        let mut got = Batch::new();
        while inp.recv(&mut got, 64).unwrap() > 0 {}
        let got: Vec<Vec<u8>> = got.iter().map(|p| p.data().to_vec()).collect();
        assert_eq!(got, frames, "{ext}: every jumbo frame whole");
    }
}

struct Cleanup(std::path::PathBuf);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn jumbo_frames_cross_shared_memory_with_jumbo_slots() {
    let (mut a, mut b) =
        ShmPort::pair(ShmConfig { slots: 64, ..ShmConfig::for_mtu(9000) }).unwrap();
    let frames: Vec<Vec<u8>> = (0..8).map(jumbo).collect();
    let mut batch: Batch = frames.iter().map(|f| Packet::from_bytes(f)).collect();
    a.send(&mut batch).unwrap();
    a.flush().unwrap();
    let mut got = Batch::new();
    for _ in 0..100 {
        b.recv(&mut got, 64).unwrap();
        if got.len() == frames.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(got.iter().map(|p| p.data().to_vec()).collect::<Vec<_>>(), frames);
    // Ordinary slots refuse a jumbo frame (counted), never cut it.
    let (mut a, _b) = ShmPort::pair(ShmConfig { slots: 64, ..ShmConfig::default() }).unwrap();
    let mut batch: Batch = [Packet::from_bytes(&jumbo(1))].into_iter().collect();
    a.send(&mut batch).unwrap();
    assert_eq!(a.stats().tx_dropped, 1);
}

#[test]
fn af_xdp_says_where_the_kernel_path_limits_the_mtu() {
    let mut c = AfXdpConfig::new("veth0");
    assert_eq!(c.frame_size().unwrap(), 2048);
    c.mtu = 3000;
    assert_eq!(c.frame_size().unwrap(), 4096);
    c.mtu = braid_io::af_xdp::MAX_MTU;
    assert_eq!(c.frame_size().unwrap(), 4096);
    c.mtu = 9000;
    let e = c.frame_size().unwrap_err().to_string();
    assert!(e.contains("multi-buffer") && e.contains("mtu 3818 at most"), "{e}");
    assert!(MAX_FRAME >= braid_packet::frame_len_for_mtu(9000));
}

fn set_mtu(ns: &str, dev: &str, mtu: usize) {
    let out = netns::ip(Some(ns), &["link", "set", "dev", dev, "mtu", &mtu.to_string()]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// UDP datagrams of `size` bytes from client to server through an
/// AF_PACKET bridge whose ports have MTU `port_mtu`; what the server got.
fn through_bridge(port_mtu: usize, size: usize, count: usize) -> (Vec<Vec<u8>>, u64) {
    let topo = Topology::new("jb");
    let created = topo.created();
    for (ns, dev) in [
        (topo.client.name(), topo.c()),
        (topo.fwd.name(), topo.fl()),
        (topo.fwd.name(), topo.fr()),
        (topo.server.name(), topo.s()),
    ] {
        set_mtu(ns, dev, 9000);
    }
    let (fl, fr) = (topo.fl().to_string(), topo.fr().to_string());
    let (a, b) = topo
        .fwd
        .enter(move || {
            let mut ca = AfPacketConfig::new(&fl);
            ca.mtu = port_mtu;
            let mut cb = AfPacketConfig::new(&fr);
            cb.mtu = port_mtu;
            (AfPacketPort::open(&ca).unwrap(), AfPacketPort::open(&cb).unwrap())
        })
        .unwrap();
    let bridge = Bridge::start(a, b);
    let server_ip = topo.server_ip.clone();
    let rx = topo.server.enter(move || UdpSocket::bind(format!("{server_ip}:9009"))).unwrap();
    let rx = rx.unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let client_ip = topo.client_ip.clone();
    let tx = topo.client.enter(move || UdpSocket::bind(format!("{client_ip}:0"))).unwrap();
    let tx = tx.unwrap();
    // Static neighbours: the bridge forwards frames, not ARP answers of
    // its own, and ARP must not race the first datagram.
    let (cmac, smac) = (
        netns::mac_addr(Some(topo.client.name()), topo.c()).unwrap(),
        netns::mac_addr(Some(topo.server.name()), topo.s()).unwrap(),
    );
    netns::add_neigh(Some(topo.client.name()), topo.c(), &topo.server_ip, &smac).unwrap();
    netns::add_neigh(Some(topo.server.name()), topo.s(), &topo.client_ip, &cmac).unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 10_000];
    for i in 0..count {
        let payload: Vec<u8> = (0..size).map(|k| (k as u8) ^ (i as u8)).collect();
        tx.send_to(&payload, format!("{}:9009", topo.server_ip)).unwrap();
        if let Ok(n) = rx.recv(&mut buf) {
            got.push(buf[..n].to_vec());
        }
    }
    let (a, _b) = bridge.stop();
    let dropped = a.stats().rx_dropped;
    drop(topo);
    assert!(all_gone(&created), "namespaces and links are removed");
    (got, dropped)
}

#[test]
fn af_packet_carries_9000_byte_packets_on_veths_with_mtu_9000() {
    if skip_unless_root("af_packet_carries_9000_byte_packets_on_veths_with_mtu_9000") {
        return;
    }
    // 8972 bytes of UDP payload: a 9000-byte IP packet, one 9014-byte frame.
    let (got, dropped) = through_bridge(9000, 8972, 20);
    assert_eq!(got.len(), 20, "every jumbo datagram crossed the bridge");
    for (i, p) in got.iter().enumerate() {
        assert_eq!(p.len(), 8972);
        assert!(p.iter().enumerate().all(|(k, b)| *b == (k as u8) ^ (i as u8)), "datagram {i}");
    }
    assert_eq!(dropped, 0);
    // Ports sized for 1500: the jumbo frames are counted as dropped, none
    // is cut and passed on.
    let (got, dropped) = through_bridge(1500, 8972, 5);
    assert!(got.is_empty());
    assert_eq!(dropped, 5);
}
