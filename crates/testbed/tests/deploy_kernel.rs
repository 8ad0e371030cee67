//! Kernel NFs with parameters deployed on the testbed, with Linux
//! forwarding off on the NF hosts so traffic only passes through the XDP
//! programs: XDP xor (its key from the descriptor params), XDP firewall
//! (rules translated from the user-space firewall's), several kernel NFs
//! on one host as one XDP chain program (compact mapping), and a rule XDP
//! cannot express refused before anything is attached. Needs root; skips
//! otherwise.

mod common;

use braid_io::netns;
use braid_testbed::deploy::{deploy, NfOnHost, UserIo};
use braid_testbed::{netns_name, status, Options, TestbedError};
use common::{assert_nothing_left, bed, forwarding_off, has_xdp, probe_round_trips, skip};
use std::net::UdpSocket;
use std::time::Duration;

const SERVER: &str = "10.71.3.2";
const KEY: [u8; 4] = [0x5a, 0x01, 0xff, 0x80];

fn params(yaml: &str) -> braid_nf::Params {
    serde_yaml_ng::from_str(yaml).unwrap()
}

fn xor(name: &str, host: &str) -> NfOnHost {
    NfOnHost::kernel_with(name, "xor", host, params("key: \"0x5a01ff80\""))
}

/// Drops UDP to the server's port 7001, passes everything else.
fn firewall(name: &str, host: &str) -> NfOnHost {
    NfOnHost::kernel_with(
        name,
        "firewall",
        host,
        params(&format!(
            "{{conntrack: false, default: allow, rules: [{{action: drop, dst: {SERVER}, proto: udp, dst_ports: 7001}}]}}"
        )),
    )
}

/// Send `payload` from the client to the server's `port`; what the server
/// received, if anything within half a second.
fn deliver(opts: &Options, port: u16, payload: &[u8]) -> Option<Vec<u8>> {
    let ns = |h: &str| netns_name(opts, h);
    let server =
        netns::in_netns(&ns("server"), || UdpSocket::bind(("0.0.0.0", port))).unwrap().unwrap();
    server.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let client = netns::in_netns(&ns("client"), || UdpSocket::bind("0.0.0.0:0")).unwrap().unwrap();
    client.send_to(payload, (SERVER, port)).unwrap();
    let mut buf = [0u8; 2048];
    server.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
}

fn xored(payload: &[u8]) -> Vec<u8> {
    payload.iter().enumerate().map(|(i, b)| b ^ KEY[i % KEY.len()]).collect()
}

#[test]
fn xdp_xor_with_descriptor_key_scrambles_once_and_restores_twice() {
    if skip("xdp_xor_with_descriptor_key_scrambles_once_and_restores_twice") {
        return;
    }
    let bed = bed("kx");
    let opts = &bed.0;
    forwarding_off(opts);
    let payload: Vec<u8> = (0..101u8).collect();

    // One xor: the server's stack accepts the datagram (checksum updated)
    // and sees the payload XORed with the descriptor's key.
    let d = deploy(opts, &[xor("x1", "nf1"), NfOnHost::kernel("f2", "fwd", "nf2")]).unwrap();
    assert_eq!(deliver(opts, 7010, &payload), Some(xored(&payload)));
    drop(d);

    // Two xors with the same key undo each other: probe payloads come back
    // intact, and the server sees the original bytes.
    let mut d = deploy(opts, &[xor("x1", "nf1"), xor("x2", "nf2")]).unwrap();
    assert_eq!(deliver(opts, 7011, &payload), Some(payload.clone()));
    probe_round_trips(opts);
    let stats = d.stats().unwrap();
    assert_eq!(stats.len(), 2);
    for s in &stats {
        assert_eq!((s.kind.as_str(), s.placement), ("xor", "kernel (XDP)"), "{s:?}");
        assert!(s.redirected >= 2 * 200, "{s:?}");
        assert_eq!(s.dropped, 0, "{s:?}");
    }
    assert_nothing_left(d, bed);
}

#[test]
fn xdp_firewall_from_descriptor_rules_drops_one_port_passes_another() {
    if skip("xdp_firewall_from_descriptor_rules_drops_one_port_passes_another") {
        return;
    }
    let bed = bed("kf");
    let opts = &bed.0;
    forwarding_off(opts);
    let mut d =
        deploy(opts, &[firewall("fw", "nf1"), NfOnHost::kernel("f2", "fwd", "nf2")]).unwrap();
    assert_eq!(deliver(opts, 7001, b"blocked"), None, "port 7001 is dropped");
    assert_eq!(deliver(opts, 7002, b"allowed"), Some(b"allowed".to_vec()));
    let fw = d.stats().unwrap().into_iter().find(|s| s.name == "fw").unwrap();
    assert_eq!(fw.dropped, 1, "{fw:?}");
    assert_nothing_left(d, bed);
}

#[test]
fn compact_mapping_kernel_firewall_and_xor_as_one_chain_then_user_fwd() {
    if skip("compact_mapping_kernel_firewall_and_xor_as_one_chain_then_user_fwd") {
        return;
    }
    let bed = bed("kc");
    let opts = &bed.0;
    forwarding_off(opts);
    let user_fwd = NfOnHost::user_on("u", "fwd", "nf2", braid_nf::Params::Null, UserIo::AfPacket);
    let mut d = deploy(opts, &[firewall("fw", "nf1"), xor("x", "nf1"), user_fwd]).unwrap();
    let ns = |h: &str| netns_name(opts, h);
    assert!(has_xdp(&ns("nf1"), "to-client") && has_xdp(&ns("nf1"), "to-nf2"));
    // Requests cross firewall then xor; replies xor then firewall: the
    // echo's replies come back restored.
    probe_round_trips(opts);
    let payload = b"compact mapping".to_vec();
    assert_eq!(deliver(opts, 7002, &payload), Some(xored(&payload)), "the xor stage ran");
    assert_eq!(deliver(opts, 7001, &payload), None, "the firewall stage ran");
    let stats = d.stats().unwrap();
    let row = |n: &str| stats.iter().find(|s| s.name == n).unwrap().clone();
    let (fw, x, u) = (row("fw"), row("x"), row("u"));
    assert_eq!((fw.host.as_str(), x.host.as_str(), u.host.as_str()), ("nf1", "nf1", "nf2"));
    assert_eq!(fw.placement, "kernel (XDP chain)");
    assert_eq!(fw.dropped, 1, "{fw:?}");
    // Both probe directions cross both stages; the dropped datagram never
    // reaches the xor.
    assert!(x.rx_packets >= 400 && x.rx_packets < fw.rx_packets, "{fw:?} {x:?}");
    assert!(u.rx_packets >= 400, "{u:?}");
    assert_nothing_left(d, bed);
}

#[test]
fn untranslatable_firewall_rule_is_refused_and_nothing_is_attached() {
    if skip("untranslatable_firewall_rule_is_refused_and_nothing_is_attached") {
        return;
    }
    let bed = bed("ke");
    let opts = &bed.0;
    let ranged = NfOnHost::kernel_with(
        "fw",
        "firewall",
        "nf1",
        params("{conntrack: false, rules: [{action: drop, dst: 10.71.3.2, proto: udp, dst_ports: \"7000-7100\"}]}"),
    );
    // Second in a compact group behind a valid xor: still nothing attached.
    let e = deploy(opts, &[xor("x", "nf1"), ranged]).err().unwrap();
    let msg = e.to_string();
    assert!(matches!(e, TestbedError::Deploy(_)), "{msg}");
    assert!(msg.contains("NF \"fw\" (firewall) in the kernel"), "{msg}");
    assert!(msg.contains("rules[0].dst_ports") && msg.contains("port range"), "{msg}");
    assert!(msg.contains("placement: user"), "{msg}");
    let ns = |h: &str| netns_name(opts, h);
    for (host, dev) in [("nf1", "to-client"), ("nf1", "to-nf2"), ("client", "to-nf1")] {
        assert!(!has_xdp(&ns(host), dev), "XDP on {host}:{dev}");
    }
    assert!(status(opts).unwrap().unwrap().xdp.is_empty());
}
