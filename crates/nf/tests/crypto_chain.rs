//! End to end: a pcap of mixed traffic through a `encrypt -> decrypt`
//! chain (braid-runtime `Chain`) comes back byte for byte, for AES-CTR and
//! AES-GCM with 128- and 256-bit keys; in between, every UDP payload is
//! encrypted and the frames are valid IPv4/UDP with correct checksums.

use braid_io::pcap::{PcapReader, PcapWriter};
use braid_nf::{NetworkFunction, Params};
use braid_packet::wire::build::FrameSpec;
use braid_packet::wire::ipv4::Ipv4Packet;
use braid_packet::wire::udp::UdpPacket;
use braid_packet::{Batch, Packet};
use braid_runtime::chain::Chain;
use std::net::Ipv4Addr;

fn nf(name: &str, yaml: &str) -> Box<dyn NetworkFunction> {
    braid_nf::build(name, &serde_yaml_ng::from_str::<Params>(yaml).unwrap()).unwrap()
}

/// A capture of mixed traffic: UDP of many sizes (0 to 1472 B payload),
/// VLAN-tagged UDP, UDP with IP options, UDP without checksum, TCP, ICMP.
fn capture() -> Vec<u8> {
    let a = (Ipv4Addr::new(192, 168, 1, 10), 40000);
    let b = (Ipv4Addr::new(192, 168, 2, 20), 4789);
    let mut frames = Vec::new();
    let mut st = 77u64;
    for i in 0..300usize {
        let len = match i % 6 {
            0 => 0,
            1 => 1472,
            _ => (braid_coding::header::splitmix64(&mut st) % 1473) as usize,
        };
        let mut s = FrameSpec::udp(a, b, len);
        s.payload = (0..len).map(|_| braid_coding::header::splitmix64(&mut st) as u8).collect();
        s.ip_ident = i as u16;
        if i % 7 == 0 {
            s.vlan = Some(42);
        }
        if i % 11 == 0 {
            s.ip_options = vec![1, 1, 1, 0];
        }
        let mut f = s.build();
        if i % 13 == 0 {
            // No UDP checksum (legal over IPv4): must stay without one.
            let checksum = f.len() - len - 2;
            f[checksum..checksum + 2].copy_from_slice(&[0, 0]);
        }
        frames.push(f);
        if i % 10 == 0 {
            frames.push(FrameSpec::tcp(a, b, braid_packet::wire::tcp_flags::ACK).build());
            frames.push(FrameSpec::icmp_echo(a.0, b.0, 7, i as u16).build());
        }
    }
    let mut w = PcapWriter::new(Vec::new()).unwrap();
    for (i, f) in frames.iter().enumerate() {
        w.write(1_700_000_000_000_000_000 + i as u64 * 1000, f).unwrap();
    }
    w.into_inner()
}

fn read_all(pcap: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let mut r = PcapReader::new(pcap).unwrap();
    let mut out = Vec::new();
    let mut data = Vec::new();
    while let Some(h) = r.next_record(&mut data).unwrap() {
        out.push((h.ts_ns, data.clone()));
    }
    out
}

/// Run `records` through `chain` in batches of 32, keeping timestamps in
/// the packet metadata; returns the output as a pcap file.
fn through(chain: &mut Chain, records: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut w = PcapWriter::new(Vec::new()).unwrap();
    for chunk in records.chunks(32) {
        let mut b: Batch = chunk
            .iter()
            .map(|(ts, f)| {
                let mut p = Packet::from_bytes(f);
                p.meta.rx_ns = *ts;
                p
            })
            .collect();
        chain.process_at(&mut b, 0);
        for p in b.iter() {
            w.write(p.meta.rx_ns, p.data()).unwrap();
        }
    }
    w.into_inner()
}

#[test]
fn encrypt_decrypt_chain_returns_the_pcap_byte_for_byte() {
    let input = capture();
    let records = read_all(&input);
    let keys = [
        "2b7e151628aed2a6abf7158809cf4f3c",
        "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4",
    ];
    for mode in ["ctr", "gcm"] {
        for key in keys {
            let p = format!("mode: {mode}\nkey: {key}\nkey_id: 3");
            let mut chain = Chain::new(
                "crypto",
                vec![("enc".into(), nf("encrypt", &p)), ("dec".into(), nf("decrypt", &p))],
            );
            let output = through(&mut chain, &records);
            assert!(output == input, "{mode} AES-{}: output pcap differs", key.len() * 4);
            for s in chain.stages() {
                assert_eq!(s.counters().dropped_total(), 0, "{}", s.name());
                assert_eq!(s.counters().packets_in, records.len() as u64);
            }

            // The middle of the chain: encrypted, valid frames.
            let mut enc_only = Chain::new("enc", vec![("enc".into(), nf("encrypt", &p))]);
            let mid = read_all(&through(&mut enc_only, &records));
            let overhead = if mode == "gcm" { 32 } else { 16 };
            for ((_, before), (_, after)) in records.iter().zip(&mid) {
                let Ok(l3) = braid_packet::wire::l3(before) else { continue };
                let Ok(ip) = Ipv4Packet::new_checked(&before[l3.offset..]) else { continue };
                if ip.protocol() != braid_packet::wire::ip_proto::UDP {
                    assert_eq!(before, after, "non-UDP passes unchanged");
                    continue;
                }
                assert_eq!(after.len(), before.len() + overhead);
                let ip2 = Ipv4Packet::new_checked(&after[l3.offset..]).unwrap();
                assert!(ip2.verify_checksum());
                let udp_off = l3.offset + ip2.header_len();
                let udp2 = UdpPacket::new_checked(&after[udp_off..]).unwrap();
                let udp1 = UdpPacket::new_checked(&before[udp_off..]).unwrap();
                if udp1.checksum() == 0 {
                    assert_eq!(udp2.checksum(), 0);
                } else {
                    assert!(udp2.verify_checksum_v4(ip2.src_addr(), ip2.dst_addr()));
                }
                let plain = udp1.payload();
                let body = &udp2.payload()[16..16 + plain.len()];
                if plain.len() >= 16 {
                    assert_ne!(body, plain, "payload is encrypted");
                }
            }
        }
    }
}

#[test]
fn wrong_key_fails_gcm_authentication_for_every_udp_packet() {
    let records = read_all(&capture());
    let enc_p = "mode: gcm\nkey: 2b7e151628aed2a6abf7158809cf4f3c";
    let dec_p = "mode: gcm\nkey: 2b7e151628aed2a6abf7158809cf4f3d";
    let mut chain = Chain::new(
        "bad",
        vec![("enc".into(), nf("encrypt", enc_p)), ("dec".into(), nf("decrypt", dec_p))],
    );
    let out = read_all(&through(&mut chain, &records));
    let udp = records
        .iter()
        .filter(|(_, f)| {
            let l3 = braid_packet::wire::l3(f).unwrap();
            Ipv4Packet::new_checked(&f[l3.offset..]).unwrap().protocol()
                == braid_packet::wire::ip_proto::UDP
        })
        .count();
    let dec = &chain.stages()[1];
    assert_eq!(dec.counters().dropped(braid_nf::DropReason::AuthFailed) as usize, udp);
    assert_eq!(out.len(), records.len() - udp);
}
