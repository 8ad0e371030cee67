//! Checksum throughput against a naive byte-at-a-time sum, and the cost of
//! parsing a UDP/IPv4 frame, measured side by side.
//!
//! `cargo bench -p braid-packet --bench checksum`

use braid_packet::envelope;
use braid_packet::wire::build::{Ext6Spec, Frame6Spec, FrameSpec};
use braid_packet::wire::{checksum, Ipv4Packet, UdpPacket};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::net::Ipv4Addr;

/// The textbook RFC 1071 loop: one byte at a time into a u32, the
/// baseline the word-parallel `checksum::sum` is compared to.
fn naive_checksum(data: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for (i, b) in data.iter().enumerate() {
        s += if i % 2 == 0 { (*b as u32) << 8 } else { *b as u32 };
    }
    while s > 0xFFFF {
        s = (s & 0xFFFF) + (s >> 16);
    }
    !(s as u16)
}

fn bench_checksum(c: &mut Criterion) {
    let data: Vec<u8> = (0..1400u32).map(|i| (i * 31 + 7) as u8).collect();
    assert_eq!(naive_checksum(&data), checksum::checksum(&data));
    let mut g = c.benchmark_group("checksum");
    for len in [20usize, 64, 1400] {
        let buf = &data[..len];
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_with_input(BenchmarkId::new("braid", len), buf, |b, buf| {
            b.iter(|| checksum::checksum(black_box(buf)))
        });
        g.bench_with_input(BenchmarkId::new("naive_bytewise", len), buf, |b, buf| {
            b.iter(|| naive_checksum(black_box(buf)))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("checksum_update");
    let hdr = FrameSpec::udp((Ipv4Addr::new(10, 0, 0, 1), 1), (Ipv4Addr::new(10, 0, 0, 2), 2), 0)
        .build()[14..34]
        .to_vec();
    g.bench_function("ipv4_src_rewrite_full", |b| {
        let mut h = hdr.clone();
        let mut n = 0u32;
        b.iter(|| {
            n = n.wrapping_add(1);
            let mut p = Ipv4Packet::new_unchecked(&mut h[..]);
            p.set_src_addr(Ipv4Addr::from(n));
            p.fill_checksum();
            black_box(p.checksum())
        })
    });
    g.bench_function("ipv4_src_rewrite_rfc1624", |b| {
        let mut h = hdr.clone();
        let mut n = 0u32;
        b.iter(|| {
            n = n.wrapping_add(1);
            let mut p = Ipv4Packet::new_unchecked(&mut h[..]);
            let old = u32::from(p.src_addr());
            p.set_src_addr(Ipv4Addr::from(n));
            let ck = checksum::update32(p.checksum(), old, n);
            p.set_checksum(ck);
            black_box(p.checksum())
        })
    });
    g.finish();
}

fn bench_parse(c: &mut Criterion) {
    let (a, b) = (Ipv4Addr::new(192, 168, 1, 10), Ipv4Addr::new(10, 9, 8, 7));
    let frame = FrameSpec::udp_frame_len((a, 4000), (b, 53), 64).build();
    let mut tagged = FrameSpec::udp_frame_len((a, 4000), (b, 53), 64);
    tagged.vlan = Some(10);
    let tagged = tagged.build();
    let mut g = c.benchmark_group("parse");
    g.bench_function("envelope_udp64", |bch| {
        bch.iter(|| envelope::parse(black_box(&frame)).flow())
    });
    g.bench_function("envelope_udp64_vlan", |bch| {
        bch.iter(|| envelope::parse(black_box(&tagged)).flow())
    });
    // parse_dual on the same IPv4 frame, and on a 64-byte UDP/IPv6 frame
    // (with and without two extension headers).
    g.bench_function("envelope_dual_udp64", |bch| {
        bch.iter(|| envelope::parse_dual(black_box(&frame)).flow())
    });
    let (a6, b6) = ("2001:db8::a".parse().unwrap(), "2001:db8:1::7".parse().unwrap());
    let frame6 = Frame6Spec::udp_frame_len((a6, 4000), (b6, 53), 64).build();
    g.bench_function("envelope_dual_udp6_64", |bch| {
        bch.iter(|| envelope::parse_dual(black_box(&frame6)).flow6())
    });
    let mut ext = Frame6Spec::udp_frame_len((a6, 4000), (b6, 53), 64);
    ext.ext = vec![Ext6Spec::Plain { kind: 0, len: 8 }, Ext6Spec::Plain { kind: 60, len: 8 }];
    let ext = ext.build();
    g.bench_function("envelope_dual_udp6_2ext", |bch| {
        bch.iter(|| envelope::parse_dual(black_box(&ext)).flow6())
    });
    g.bench_function("views_verify_ip_udp_checksums_udp64", |bch| {
        bch.iter(|| {
            let ip = Ipv4Packet::new_checked(&black_box(&frame)[14..]).ok()?;
            let udp = UdpPacket::new_checked(ip.payload()).ok()?;
            Some(ip.verify_checksum() && udp.verify_checksum_v4(ip.src_addr(), ip.dst_addr()))
        })
    });
    let tuple = envelope::parse(&frame).flow().unwrap();
    g.bench_function("five_tuple_hash", |bch| bch.iter(|| black_box(tuple).hash()));
    g.finish();
}

criterion_group!(benches, bench_checksum, bench_parse);
criterion_main!(benches);
