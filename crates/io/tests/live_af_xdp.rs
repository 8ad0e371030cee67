//! AF_XDP port pair forwarding between two veths (copy mode, as veth
//! offers): ping and a UDP flow pass through a user-space bridge, with
//! frames copied out or kept in the UMEM (zero-copy rx), waiting by
//! poll or by spinning. Plus a chain that starts in the kernel: XDP fwd on
//! one hop, then XDP steer into AF_XDP sockets and a user-space bridge.

mod common;

use braid_io::af_xdp::{AfXdpConfig, AfXdpPort, BindMode, WaitMode};
use braid_io::netns::{self, LinkGuard, NetnsGuard};
use braid_io::xdp::{AttachMode, XdpNf, XdpProgram};
use braid_io::Port;
use common::{all_gone, expected_payload, xdp_usable, Bridge, Topology};

/// Root and the XDP objects, or skip (a failure under `BRAID_REQUIRE_ROOT=1`).
fn skip(test: &str) -> bool {
    !xdp_usable(test)
}

fn open_pair(
    ns: &NetnsGuard,
    a: &str,
    b: &str,
    zero_copy_rx: bool,
    wait: WaitMode,
) -> (AfXdpPort, AfXdpPort) {
    let (a, b) = (a.to_string(), b.to_string());
    ns.enter(move || {
        let cfg = |iface: &str| {
            let mut c = AfXdpConfig::new(iface);
            c.rx_zero_copy = zero_copy_rx;
            c.wait = wait;
            c.ring_size = 512;
            c.frame_count = 1024;
            c
        };
        let pa = AfXdpPort::open(&cfg(&a)).unwrap();
        let pb = AfXdpPort::open(&cfg(&b)).unwrap();
        assert!(!pa.is_zero_copy(), "veth has no zero-copy AF_XDP");
        (pa, pb)
    })
    .unwrap()
}

fn check_traffic(topo: &Topology) {
    assert!(topo.ping(3), "ping through the AF_XDP bridge");
    for size in [18, 256, 1400, 1472] {
        let got = topo.udp_echo(50, size);
        assert_eq!(got.len(), 50, "all UDP echoes of {size} B come back");
        for (i, p) in got.iter().enumerate() {
            assert_eq!(p, &expected_payload(i, size), "echo {i} of {size} B is intact");
        }
    }
}

fn forward_through_af_xdp(tag: &str, zero_copy_rx: bool, wait: WaitMode) {
    let topo = Topology::new(tag);
    let created = topo.created();
    let (a, b) = open_pair(&topo.fwd, topo.fl(), topo.fr(), zero_copy_rx, wait);
    assert_eq!(a.name(), format!("af_xdp:{}/q0", topo.fl()));
    let bridge = Bridge::start(a, b);
    check_traffic(&topo);
    let (mut a, b) = bridge.stop();
    let (sa, sb) = (a.stats(), b.stats());
    assert!(sa.rx_packets >= 200 + 3, "left port received {sa:?}");
    assert_eq!(sa.tx_packets, sb.rx_packets, "right rx went out left");
    assert_eq!(sb.tx_packets, sa.rx_packets, "left rx went out right");
    assert_eq!(sa.tx_dropped + sb.tx_dropped + sa.rx_dropped + sb.rx_dropped, 0, "{sa:?} {sb:?}");
    let steer = a.steer_program().unwrap().counters().unwrap();
    assert_eq!(steer.redirect, sa.rx_packets, "every frame was steered to the socket");
    drop((a, b));
    drop(topo);
    assert!(all_gone(&created), "namespaces and links are removed");
}

#[test]
fn af_xdp_copy_out_block() {
    if skip("af_xdp_copy_out_block") {
        return;
    }
    forward_through_af_xdp("xk", false, WaitMode::Block);
}

#[test]
fn af_xdp_zero_copy_rx_busy() {
    if skip("af_xdp_zero_copy_rx_busy") {
        return;
    }
    forward_through_af_xdp("xz", true, WaitMode::Busy);
}

#[test]
fn af_xdp_forced_zero_copy_on_veth_fails_clearly() {
    if skip("af_xdp_forced_zero_copy_on_veth_fails_clearly") {
        return;
    }
    let ns = NetnsGuard::create(&netns::unique_name("xzc")).unwrap();
    let (a, b) = (netns::unique_ifname("za"), netns::unique_ifname("zb"));
    let _veth = LinkGuard::veth_between(&a, Some(ns.name()), &b, Some(ns.name())).unwrap();
    netns::set_up(Some(ns.name()), &a).unwrap();
    netns::set_up(Some(ns.name()), &b).unwrap();
    let a2 = a.clone();
    let err = ns
        .enter(move || {
            let mut c = AfXdpConfig::new(&a2);
            c.mode = BindMode::ZeroCopy;
            AfXdpPort::open(&c).err().expect("veth cannot bind zero-copy")
        })
        .unwrap()
        .to_string();
    assert!(err.contains("zero-copy") && err.contains(&a), "{err}");
}

/// client -> [hop1: XDP fwd] -> [hop2: XDP steer -> AF_XDP bridge] -> server.
/// Four namespaces: the chain starts in the kernel and goes on in user
/// space on the next host, as CALVIN's mixed chains do.
#[test]
fn xdp_fwd_then_af_xdp_fwd_chain() {
    if skip("xdp_fwd_then_af_xdp_fwd_chain") {
        return;
    }
    let topo = Topology::new("xc");
    // Add a second hop: the right link's forwarder end (fr) moves into a
    // new namespace, hop 2, and a new veth h1-h2 joins the two hops.
    let hop2 = NetnsGuard::create(&netns::unique_name("xch2")).unwrap();
    let fr = topo.fr().to_string();
    topo.right.move_end_to(&fr, &hop2).unwrap();
    netns::set_up(Some(hop2.name()), &fr).unwrap();
    let (h1, h2) = (netns::unique_ifname("h1"), netns::unique_ifname("h2"));
    let mid = LinkGuard::veth_between(&h1, Some(topo.fwd.name()), &h2, Some(hop2.name())).unwrap();
    netns::set_up(Some(topo.fwd.name()), &h1).unwrap();
    netns::set_up(Some(hop2.name()), &h2).unwrap();

    // Hop 1: XDP fwd fl <-> h1. Redirected frames reach the peers (client
    // end c, hop-2 end h2) only if those run XDP: c gets pass, h2 gets the
    // steering program of its AF_XDP port.
    let client_pass = {
        let c = topo.c().to_string();
        topo.client
            .enter(move || {
                let mut p = XdpProgram::load(XdpNf::Pass).unwrap();
                p.attach(&c, AttachMode::Auto).unwrap();
                p
            })
            .unwrap()
    };
    let fl = topo.fl().to_string();
    let h1c = h1.clone();
    let mut hop1 = topo
        .fwd
        .enter(move || {
            let mut p = XdpProgram::load(XdpNf::Fwd).unwrap();
            p.set_forward_by_name(&fl, &h1c).unwrap();
            p.set_forward_by_name(&h1c, &fl).unwrap();
            p.attach(&fl, AttachMode::Auto).unwrap();
            p.attach(&h1c, AttachMode::Auto).unwrap();
            p
        })
        .unwrap();
    // Hop 2: AF_XDP bridge h2 <-> fr. The frames AF_XDP transmits on h2
    // go to hop 1's h1 through the normal veth path: checksum offload off
    // so they carry finished checksums.
    netns::tx_checksum_off(Some(hop2.name()), &h2).unwrap();
    netns::tx_checksum_off(Some(hop2.name()), &fr).unwrap();
    let (a, b) = open_pair(&hop2, &h2, &fr, false, WaitMode::Block);
    let bridge = Bridge::start(a, b);
    check_traffic(&topo);
    let (a, b) = bridge.stop();
    let c = hop1.counters().unwrap();
    assert!(c.redirect >= 2 * (3 + 200), "hop 1 redirected both directions: {c:?}");
    assert!(a.stats().rx_packets >= 203 && b.stats().rx_packets >= 203);
    drop((a, b, hop1, client_pass, mid, hop2));
    let created = topo.created();
    drop(topo);
    assert!(all_gone(&created));
}

/// A user-space UDP reflector on one AF_XDP port: every datagram is sent
/// back out of the port it came in on with addresses and ports swapped.
/// With zero-copy rx the reply leaves from the very UMEM frame it arrived
/// in (the same-UMEM transmit path); 3000 datagrams through a 1024-frame
/// UMEM show that frames come back through the completion ring.
fn reflect(tag: &str, zero_copy_rx: bool) {
    let client = NetnsGuard::create(&netns::unique_name(&format!("{tag}c"))).unwrap();
    let refl = NetnsGuard::create(&netns::unique_name(&format!("{tag}r"))).unwrap();
    let (c, r) = (netns::unique_ifname("c"), netns::unique_ifname("r"));
    let _link = LinkGuard::veth_between(&c, Some(client.name()), &r, Some(refl.name())).unwrap();
    netns::add_addr(Some(client.name()), &c, "10.77.0.1/24").unwrap();
    netns::set_up(Some(client.name()), &c).unwrap();
    netns::set_up(Some(refl.name()), &r).unwrap();
    netns::tx_checksum_off(Some(client.name()), &c).unwrap();
    let r_mac = netns::mac_addr(Some(refl.name()), &r).unwrap();
    netns::add_neigh(Some(client.name()), &c, "10.77.0.2", &r_mac).unwrap();

    let r2 = r.clone();
    let mut port = refl
        .enter(move || {
            let mut cfg = AfXdpConfig::new(&r2);
            cfg.rx_zero_copy = zero_copy_rx;
            cfg.ring_size = 512;
            cfg.frame_count = 1024;
            AfXdpPort::open(&cfg).unwrap()
        })
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let reflector = std::thread::spawn(move || {
        let mut batch = braid_packet::Batch::with_capacity(64);
        let mut external = 0u64;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !stop2.load(std::sync::atomic::Ordering::Relaxed)
            && std::time::Instant::now() < deadline
        {
            if port.recv(&mut batch, 64).unwrap() == 0 {
                port.wait(std::time::Duration::from_millis(1)).unwrap();
                port.flush().unwrap();
                continue;
            }
            for p in batch.iter_mut() {
                external += p.is_external() as u64;
                let d = p.data_mut();
                if d.len() < 42 || d[12..14] != [0x08, 0x00] || d[23] != 17 {
                    continue;
                }
                // Swapping addresses and ports leaves the UDP checksum valid.
                let (mut dst, mut src) = ([0u8; 6], [0u8; 6]);
                dst.copy_from_slice(&d[0..6]);
                src.copy_from_slice(&d[6..12]);
                d[0..6].copy_from_slice(&src);
                d[6..12].copy_from_slice(&dst);
                let ihl = (d[14] & 0x0f) as usize * 4;
                for k in 0..4 {
                    d.swap(26 + k, 30 + k);
                }
                for k in 0..2 {
                    d.swap(14 + ihl + k, 14 + ihl + 2 + k);
                }
            }
            port.send(&mut batch).unwrap();
        }
        (port, external)
    });

    let sock = client.enter(|| std::net::UdpSocket::bind("10.77.0.1:0").unwrap()).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_millis(500))).unwrap();
    let mut got = 0;
    let mut buf = [0u8; 2048];
    for i in 0..3000usize {
        let payload = expected_payload(i, 64 + i % 700);
        sock.send_to(&payload, "10.77.0.2:7").unwrap();
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            assert_eq!(from.to_string(), "10.77.0.2:7");
            assert_eq!(&buf[..n], &payload[..], "reflected datagram {i} is intact");
            got += 1;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (port, external) = reflector.join().unwrap();
    assert_eq!(got, 3000, "every datagram came back");
    let s = port.stats();
    assert!(s.tx_packets >= 3000 && s.tx_dropped == 0, "{s:?}");
    if zero_copy_rx {
        assert!(external >= 3000, "packets were UMEM frames: {external}");
        assert!(
            port.tx_in_place() >= 3000,
            "replies left from their rx frames: {}",
            port.tx_in_place()
        );
    } else {
        assert_eq!((external, port.tx_in_place()), (0, 0));
    }
}

#[test]
fn af_xdp_reflector_same_umem_zero_copy_tx() {
    if skip("af_xdp_reflector_same_umem_zero_copy_tx") {
        return;
    }
    reflect("xr", true);
}

#[test]
fn af_xdp_reflector_copy_out() {
    if skip("af_xdp_reflector_copy_out") {
        return;
    }
    reflect("xq", false);
}

/// Two ports sharing one UMEM (`XDP_SHARED_UMEM`) with zero-copy rx: the
/// bridge forwards every frame from the frame it arrived in, copying
/// nothing; 2000 extra echoes cycle every frame of the 2048-frame UMEM
/// through both ports several times.
#[test]
fn af_xdp_shared_umem_forwards_without_copies() {
    if skip("af_xdp_shared_umem_forwards_without_copies") {
        return;
    }
    let topo = Topology::new("xs");
    let created = topo.created();
    let (fl, fr) = (topo.fl().to_string(), topo.fr().to_string());
    let (a, b) = topo
        .fwd
        .enter(move || {
            let cfg = |iface: &str| {
                let mut c = AfXdpConfig::new(iface);
                c.rx_zero_copy = true;
                c.ring_size = 256;
                c.frame_count = 2048;
                c
            };
            let mut a = AfXdpPort::open(&cfg(&fl)).unwrap();
            let b = AfXdpPort::open_shared(&cfg(&fr), &mut a).unwrap();
            (a, b)
        })
        .unwrap();
    let bridge = Bridge::start(a, b);
    check_traffic(&topo);
    let got = topo.udp_echo(2000, 64);
    assert_eq!(got.len(), 2000, "bulk echoes all return");
    let (a, b) = bridge.stop();
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!(sa.tx_packets, sb.rx_packets);
    assert_eq!(sb.tx_packets, sa.rx_packets);
    assert_eq!(sa.tx_dropped + sb.tx_dropped + sa.rx_dropped + sb.rx_dropped, 0, "{sa:?} {sb:?}");
    assert_eq!(a.tx_in_place(), sa.tx_packets, "left sent only from rx frames");
    assert_eq!(b.tx_in_place(), sb.tx_packets, "right sent only from rx frames");
    drop((a, b));
    drop(topo);
    assert!(all_gone(&created));
}

#[test]
fn af_xdp_shared_umem_too_small_is_refused() {
    if skip("af_xdp_shared_umem_too_small_is_refused") {
        return;
    }
    let topo = Topology::new("xt");
    let (fl, fr) = (topo.fl().to_string(), topo.fr().to_string());
    let err = topo
        .fwd
        .enter(move || {
            let mut c = AfXdpConfig::new(&fl);
            c.ring_size = 512;
            c.frame_count = 1024;
            let mut a = AfXdpPort::open(&c).unwrap();
            c.iface = fr;
            AfXdpPort::open_shared(&c, &mut a).err().expect("1024 frames cannot feed two 512 rings")
        })
        .unwrap()
        .to_string();
    assert!(err.contains("needs at least 2048 frames"), "{err}");
}

/// Closing a port frees its queue at once: the next port on the same
/// queue binds without EBUSY (the steering map's reference to the socket is
/// dropped before the socket closes).
#[test]
fn af_xdp_reopen_same_queue_right_away() {
    if skip("af_xdp_reopen_same_queue_right_away") {
        return;
    }
    let topo = Topology::new("xo");
    let fl = topo.fl().to_string();
    topo.fwd
        .enter(move || {
            for round in 0..5 {
                let mut c = AfXdpConfig::new(&fl);
                c.rx_zero_copy = round % 2 == 1;
                let port = AfXdpPort::open(&c).unwrap_or_else(|e| panic!("round {round}: {e}"));
                drop(port);
            }
        })
        .unwrap();
}

/// An idle AF_XDP port waited on the way the worker waits (sleep until the
/// next tick, so the last sleep before it is shorter than a millisecond)
/// sleeps: a timeout rounded down to 0 ms made `poll(2)` return at once,
/// and the worker called it ~100 times per forwarded frame at 400 frames/s
/// (docs/profiling.md, "braid's own live path"). Then one frame still
/// wakes it and goes through.
#[test]
fn an_idle_af_xdp_port_sleeps_through_sub_millisecond_waits() {
    if skip("an_idle_af_xdp_port_sleeps_through_sub_millisecond_waits") {
        return;
    }
    let topo = Topology::new("xi");
    let created = topo.created();
    let (mut a, mut b) = open_pair(&topo.fwd, topo.fl(), topo.fr(), false, WaitMode::Block);
    // Ten "ticks" of 2.5 ms each, waited on with wait_any until each
    // deadline, as the worker does (timeout = time left to the tick).
    let mut calls = 0u32;
    // Frames the kernel itself sends on the links (IPv6 router
    // solicitations and the like) wake a wait; take them off the ring.
    let mut stray = 0u32;
    let mut batch = braid_packet::Batch::with_capacity(64);
    for _ in 0..10 {
        let tick = std::time::Instant::now() + std::time::Duration::from_micros(2500);
        loop {
            let left = tick.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            let mut ports: [&mut dyn Port; 2] = [&mut a, &mut b];
            braid_io::wait_any(&mut ports, &[], left).unwrap();
            calls += 1;
            stray += (a.recv(&mut batch, 64).unwrap() + b.recv(&mut batch, 64).unwrap()) as u32;
            batch.clear();
            assert!(calls < 1000, "wait_any returns at once: {calls} calls in under 25 ms");
        }
    }
    // Each tick: one sleep of ~2.5 ms, perhaps a second one for what the
    // kernel's timer slack left over; never hundreds.
    assert!(
        calls <= 30 + stray,
        "{calls} wait_any calls for 10 idle ticks of 2.5 ms ({stray} stray frames)"
    );
    // The port's own wait too: five 400 µs waits take at least 2 ms.
    let t0 = std::time::Instant::now();
    for _ in 0..5 {
        a.wait(std::time::Duration::from_micros(400)).unwrap();
    }
    assert!(t0.elapsed() >= std::time::Duration::from_micros(2000), "{:?}", t0.elapsed());
    // And the sleeping pair still forwards.
    let bridge = Bridge::start(a, b);
    assert!(topo.ping(3), "ping through the AF_XDP bridge after idle waits");
    let (a, b) = bridge.stop();
    drop((a, b));
    drop(topo);
    assert!(all_gone(&created), "namespaces and links are removed");
}
