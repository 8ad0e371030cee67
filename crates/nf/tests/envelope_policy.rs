//! The envelope policy of every NF that reads headers: the same odd frames
//! (truncated Ethernet, truncated IPv4, bad IHL, first and later IPv4
//! fragments, IPv6, ARP, one and three VLAN tags) through each NF, and the
//! outcome `docs/nfs.md` documents for each (pass, or drop with a reason).

use braid_nf::{Context, Counters, DropReason, NetworkFunction, Params};
use braid_packet::wire::build::{Frame6Spec, FrameSpec};
use braid_packet::wire::checksum::checksum;
use braid_packet::wire::{ethertype, ArpPacket, ArpRepr, EthernetFrame, EthernetRepr, MacAddr};
use braid_packet::{Batch, Packet};
use std::net::Ipv4Addr;

const SRC: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const DST: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

/// The frames, in the column order of the table.
const COLUMNS: [&str; 10] = [
    "udp",
    "vlan udp",
    "truncated L2",
    "truncated IPv4",
    "bad IHL",
    "first fragment",
    "later fragment",
    "IPv6",
    "ARP",
    "3 VLAN tags",
];

fn frames() -> Vec<Vec<u8>> {
    let spec = FrameSpec::udp((SRC, 1000), (DST, 5000), 40);
    let udp = spec.build();
    let mut tagged = spec.clone();
    tagged.vlan = Some(7);
    let refresh = |mut f: Vec<u8>| {
        f[24..26].fill(0);
        let ck = checksum(&f[14..34]);
        f[24..26].copy_from_slice(&ck.to_be_bytes());
        f
    };
    let mut bad_ihl = udp.clone();
    bad_ihl[14] = 0x44;
    let mut first = udp.clone();
    first[20] = 0x20; // more fragments
    let mut later = udp.clone();
    later[21] = 3; // offset 24 bytes
    let ipv6 = Frame6Spec::udp(
        ("2001:db8::1".parse().unwrap(), 1000),
        ("2001:db8:1::1".parse().unwrap(), 5000),
        40,
    )
    .build();
    let mut arp = vec![0u8; 14 + 28];
    let mac = MacAddr([2, 0, 0, 0, 0, 1]);
    EthernetRepr { src_addr: mac, dst_addr: MacAddr([0xff; 6]), ethertype: ethertype::ARP }
        .emit(&mut EthernetFrame::new_unchecked(&mut arp[..]));
    ArpRepr {
        operation: 1,
        sender_mac: mac,
        sender_ip: SRC,
        target_mac: MacAddr([0; 6]),
        target_ip: DST,
    }
    .emit(&mut ArpPacket::new_unchecked(&mut arp[14..]));
    let mut vlan3 = vec![0u8; 14 + 12 + 46];
    for at in [12, 16, 20] {
        vlan3[at..at + 2].copy_from_slice(&ethertype::VLAN.to_be_bytes());
    }
    vec![
        udp.clone(),
        tagged.build(),
        udp[..13].to_vec(),
        udp[..30].to_vec(),
        bad_ihl,
        refresh(first),
        refresh(later),
        ipv6,
        arp,
        vlan3,
    ]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Pass,
    Drop(DropReason),
    /// A whole datagram that goes on to the NF's own payload checks
    /// (decrypt, network decoding), tested in the NF's own tests.
    Payload,
}

use Outcome::{Drop, Pass, Payload};
const MALFORMED: Outcome = Drop(DropReason::Malformed);
const UNSUPPORTED: Outcome = Drop(DropReason::Unsupported);
const FRAGMENT: Outcome = Drop(DropReason::Fragment);

/// The policy of the NFs that transform UDP payloads.
const UDP_NF: [Outcome; 10] =
    [Pass, Pass, MALFORMED, MALFORMED, MALFORMED, UNSUPPORTED, UNSUPPORTED, Pass, Pass, Pass];

/// `encrypt`: never plaintext it could not encrypt (ARP aside).
const ENCRYPT: [Outcome; 10] = [
    Pass,
    Pass,
    MALFORMED,
    MALFORMED,
    MALFORMED,
    UNSUPPORTED,
    UNSUPPORTED,
    UNSUPPORTED,
    Pass,
    UNSUPPORTED,
];

/// The policy of the NFs that consume their own UDP payload format.
const UDP_DECODER: [Outcome; 10] =
    [Payload, Payload, MALFORMED, MALFORMED, MALFORMED, UNSUPPORTED, UNSUPPORTED, Pass, Pass, Pass];

const KEY: &str = "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4";

fn table() -> Vec<(&'static str, String, [Outcome; 10])> {
    let denied = Drop(DropReason::Denied);
    vec![
        (
            "router",
            "{mac: '02:00:00:00:00:fe', ip: 10.0.0.254, ip6: '2001:db8::fe', routes: [{prefix: 0.0.0.0/0, next_hop_mac: '02:00:00:00:01:01', port: 1}, {prefix: '::/0', next_hop_mac: '02:00:00:00:01:02', port: 1}]}".into(),
            [Pass, Pass, MALFORMED, MALFORMED, MALFORMED, Pass, Pass, Pass, UNSUPPORTED, UNSUPPORTED],
        ),
        (
            "nat",
            "{external_ip: 192.0.2.1, internal: [10.0.0.0/8]}".into(),
            // A later fragment whose first was not seen.
            [Pass, Pass, MALFORMED, MALFORMED, MALFORMED, Pass, FRAGMENT, Pass, Pass, Pass],
        ),
        (
            "firewall",
            "{default: drop, rules: [{action: allow, proto: udp, dst: 198.51.100.0/24}]}".into(),
            [Pass, Pass, MALFORMED, MALFORMED, MALFORMED, Pass, FRAGMENT, denied, Pass, denied],
        ),
        (
            "loadbalancer",
            "{vip: 198.51.100.1, backends: [{ip: 10.9.0.1}, {ip: 10.9.0.2}]}".into(),
            [Pass, Pass, MALFORMED, MALFORMED, MALFORMED, UNSUPPORTED, UNSUPPORTED, Pass, Pass, Pass],
        ),
        ("dpi", "{rules: [], log_per_sec: 0}".into(),
            // Fragments pass uninspected (counted).
            [Pass, Pass, MALFORMED, MALFORMED, MALFORMED, Pass, Pass, Pass, Pass, Pass]),
        ("meter", "{cir: 1000000000, cbs: 100000, ebs: 100000}".into(), [Pass; 10]),
        // Steers every frame (unhashable ones to instance `unhashable`).
        ("steer", "{instances: 2}".into(), [Pass; 10]),
        ("xor", "{key: '0x01'}".into(), UDP_NF),
        ("ats", "{}".into(), UDP_NF),
        // IPv6 and other ethertypes are not left in plaintext.
        ("encrypt", format!("{{mode: gcm, key: {KEY}, key_id: 7}}"), ENCRYPT),
        (
            "encrypt",
            format!("{{mode: gcm, key: {KEY}, key_id: 7, unencrypted: pass}}"),
            UDP_NF,
        ),
        ("decrypt", format!("{{mode: gcm, key: {KEY}, key_id: 7}}"), UDP_DECODER),
        ("nc-encode", "{}".into(), UDP_NF),
        ("nc-recode", "{}".into(), UDP_DECODER),
        ("nc-decode", "{}".into(), UDP_DECODER),
    ]
}

/// What `nf` does with `frame` alone in a batch.
fn outcome(nf: &mut dyn NetworkFunction, frame: &[u8]) -> Outcome {
    let mut c = Counters::default();
    let mut b: Batch = std::iter::once(Packet::from_bytes(frame)).collect();
    nf.process(&mut b, &mut Context::new(1_000_000, &mut c));
    let reasons: Vec<DropReason> =
        DropReason::ALL.iter().copied().filter(|r| c.dropped(*r) > 0).collect();
    match (b.len(), reasons.as_slice()) {
        (1, []) => Pass,
        (0, [r]) => Drop(*r),
        (n, r) => panic!("{n} packets out, drops {r:?}"),
    }
}

#[test]
fn every_nf_treats_odd_frames_as_documented() {
    let frames = frames();
    let mut wrong = Vec::new();
    for (name, yaml, want) in table() {
        let params: Params = serde_yaml_ng::from_str(&yaml).unwrap();
        for (i, frame) in frames.iter().enumerate() {
            // A fresh instance per frame: no state carried between cells.
            let mut nf = braid_nf::build(name, &params).unwrap();
            let got = outcome(nf.as_mut(), frame);
            if want[i] == Payload {
                // Beyond the envelope; only check it is not an envelope drop.
                assert_ne!(got, UNSUPPORTED, "{name} / {}", COLUMNS[i]);
                continue;
            }
            if got != want[i] {
                wrong.push(format!(
                    "{name} / {}: got {got:?}, documented {:?}",
                    COLUMNS[i], want[i]
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
