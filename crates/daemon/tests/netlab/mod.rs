//! The namespace-and-veth helpers of the migration and scale tests (two
//! braidd hosts between a client and a server, echoed UDP flows checked
//! packet by packet).

#![allow(dead_code)]

use braid_io::netns::{self, LinkGuard, NetnsGuard};

/// `sysctl -w KEY=VALUE` in `ns`, which must succeed.
pub fn sysctl(ns: &NetnsGuard, kv: &str) {
    let st = ns.command("sysctl").args(["-q", "-w", kv]).status().unwrap();
    assert!(st.success(), "sysctl {kv}");
}

/// A veth pair from `a` (in namespace `na`) to `b` (in `nb`), up, with
/// transmit checksum offload off (frames cross AF_PACKET forwarders).
pub fn link(na: &NetnsGuard, nb: &NetnsGuard, tag: &str) -> (LinkGuard, String, String) {
    let (a, b) =
        (netns::unique_ifname(&format!("{tag}a")), netns::unique_ifname(&format!("{tag}b")));
    let l = LinkGuard::veth(&a, &b).unwrap();
    l.move_end_to(&a, na).unwrap();
    l.move_end_to(&b, nb).unwrap();
    for (ns, dev) in [(na, &a), (nb, &b)] {
        netns::set_up(Some(ns.name()), dev).unwrap();
        netns::tx_checksum_off(Some(ns.name()), dev).unwrap();
    }
    (l, a, b)
}

/// Address `ip`/24 on `dev` in `ns`.
pub fn addr(ns: &NetnsGuard, dev: &str, ip: &str) {
    netns::add_addr(Some(ns.name()), dev, &format!("{ip}/24")).unwrap();
}

/// `ip` in `ns`, which must succeed; its standard output.
pub fn ip(ns: &NetnsGuard, args: &[&str]) -> String {
    let out = ns.ip(args).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A permanent neighbour entry in `ns` for `to`, with the MAC address of
/// `peer_dev` in `peer_ns`.
pub fn neigh(ns: &NetnsGuard, dev: &str, to: &str, peer_ns: &NetnsGuard, peer_dev: &str) {
    let mac = netns::mac_addr(Some(peer_ns.name()), peer_dev).unwrap();
    netns::add_neigh(Some(ns.name()), dev, to, &mac).unwrap();
}

/// A test datagram: flow number and sequence number, big-endian.
pub fn payload(flow: u32, seq: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&flow.to_be_bytes());
    b[4..].copy_from_slice(&seq.to_be_bytes());
    b
}

/// Every flow echoed exactly: all sequence numbers sent, once each, in
/// order (`sent[i]` datagrams of flow i, `got[i]` the echoed ones).
pub fn check_exact(sent: &[u32], got: &[Vec<u32>]) {
    for (i, (s, g)) in sent.iter().zip(got).enumerate() {
        assert!(*s > 100, "flow {i}: only {s} packets sent");
        let want: Vec<u32> = (0..*s).collect();
        if *g != want {
            let missing: Vec<u32> = want.iter().filter(|x| !g.contains(x)).copied().collect();
            let reordered = g.windows(2).filter(|w| w[1] <= w[0]).count();
            panic!(
                "flow {i}: sent {s}, echoed {} ({} missing, first {:?}; {reordered} out of order or duplicated)",
                g.len(),
                missing.len(),
                &missing[..missing.len().min(10)]
            );
        }
    }
}
