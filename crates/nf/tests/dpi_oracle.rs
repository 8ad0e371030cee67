//! The `dpi` NF against an independent implementation of the same rules:
//! `dpi_oracle.py` (Python's `re` on TCP streams reassembled whole from the
//! capture, and on UDP datagrams). A generated capture of many flows, with
//! patterns planted across segment boundaries, reordered segments and
//! retransmissions, goes through the NF in batches of 32; every packet's
//! verdict (dropped, or passed with its mark) and every alert must agree.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

use braid_coding::header::splitmix64;
use braid_io::pcap::PcapWriter;
use braid_nf::dpi::Dpi;
use braid_nf::{Context, Counters, NetworkFunction};
use braid_packet::wire::build::{FrameSpec, L4Spec};
use braid_packet::wire::tcp_flags::{ACK, FIN, SYN};
use braid_packet::{Batch, Packet};

const RULES: &str = r#"[
  {"sid": 101, "content": "GET /admin", "nocase": true, "proto": "tcp", "dst_port": 80, "msg": "admin page"},
  {"sid": 102, "content": "|de ad be ef|", "action": "drop"},
  {"sid": 103, "content": "password", "offset": 10, "depth": 300},
  {"sid": 104, "content": "root", "proto": "udp"},
  {"sid": 105, "pcre": "user=[a-z]{3,8};"},
  {"sid": 106, "pcre": "^HELO [a-z]+", "nocase": true, "proto": "tcp", "dst_port": "25-26", "action": "mark", "mark": 7},
  {"sid": 107, "pcre": "(cmd|exec)\\.(exe|sh)", "action": "drop"},
  {"sid": 108, "pcre": "x[0-9]{2,}y", "action": "mark", "mark": 3},
  {"sid": 109, "content": "sElEcT", "nocase": true, "action": "mark", "mark": 9},
  {"sid": 110, "content": "attack"},
  {"sid": 111, "content": "Attack"},
  {"sid": 112, "pcre": "a(b|c)+d", "src_port": "40000-40099"},
  {"sid": 113, "content": "zq", "depth": 40},
  {"sid": 114, "pcre": "q[^q]{20}q"},
  {"sid": 115, "content": "|00 00 00|"}
]"#;

/// Bits of payload the generator plants: matches, near misses, pieces.
const PLANTS: &[&[u8]] = &[
    b"GET /ADMIN",
    b"get /admin",
    b"\xde\xad\xbe\xef",
    b"\xde\xad\xbe",
    b"password",
    b"passw0rd",
    b"root",
    b"user=alice;",
    b"user=ab;",
    b"HELO mail",
    b"helo x",
    b"cmd.exe",
    b"exec.sh",
    b"cmd.ex",
    b"x123y",
    b"x1y",
    b"SELECT",
    b"attack",
    b"Attack",
    b"abcbd",
    b"zq",
    b"q01234567890123456789q",
    b"\x00\x00\x00",
];

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        (splitmix64(&mut self.0) % n as u64) as usize
    }
}

fn payload(rng: &mut Rng, len: usize) -> Vec<u8> {
    // A small alphabet so the regexes also match by accident.
    const FILL: &[u8] = b"abcdqxyz019 =;.\x00";
    let mut out: Vec<u8> = (0..len).map(|_| FILL[rng.below(FILL.len())]).collect();
    for _ in 0..rng.below(4) {
        let plant = PLANTS[rng.below(PLANTS.len())];
        if plant.len() < len {
            let at = rng.below(len - plant.len());
            out[at..at + plant.len()].copy_from_slice(plant);
        }
    }
    // Sometimes start with a protocol verb, for the `^` rule.
    if rng.below(4) == 0 && len > 12 {
        out[..9].copy_from_slice(b"HELO mail");
    }
    out
}

fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8, seq: u32, data: &[u8]) -> Vec<u8> {
    let mut s = FrameSpec::tcp(src, dst, flags);
    s.l4 = L4Spec::Tcp { src_port: src.1, dst_port: dst.1, flags, seq, ack: 1, window: 65535 };
    s.payload = data.to_vec();
    s.build()
}

/// One TCP stream: SYN, data cut at random points (some segments
/// reordered, some retransmitted), FIN.
fn tcp_flow(rng: &mut Rng, i: usize) -> Vec<Vec<u8>> {
    let src =
        (Ipv4Addr::new(10, 0, (i / 200) as u8, (i % 200) as u8 + 1), 40000 + (i % 150) as u16);
    let dst = (Ipv4Addr::new(10, 9, 0, 1), [80, 25, 443, 8080][rng.below(4)]);
    let isn = splitmix64(&mut rng.0) as u32;
    let len = 20 + rng.below(3000);
    let data = payload(rng, len);
    let mut segments = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let max = if rng.below(3) == 0 { 8 } else { 1400 };
        let len = 1 + rng.below(max);
        let end = (at + len).min(data.len());
        segments.push(tcp(src, dst, ACK, isn.wrapping_add(1 + at as u32), &data[at..end]));
        at = end;
    }
    match rng.below(4) {
        // Reorder: swap neighbours here and there.
        0 => {
            for k in 1..segments.len() {
                if rng.below(3) == 0 {
                    segments.swap(k - 1, k);
                }
            }
        }
        // Reorder: one segment comes last.
        1 if segments.len() > 2 => {
            let k = rng.below(segments.len() - 1);
            let s = segments.remove(k);
            segments.push(s);
        }
        // Retransmit: a copy of an earlier segment later on.
        2 => {
            let k = rng.below(segments.len());
            let copy = segments[k].clone();
            let to = k + 1 + rng.below(segments.len() - k);
            segments.insert(to, copy);
        }
        _ => {}
    }
    let fin = tcp(src, dst, FIN | ACK, isn.wrapping_add(1 + data.len() as u32), b"");
    [vec![tcp(src, dst, SYN, isn, b"")], segments, vec![fin]].concat()
}

fn udp_datagram(rng: &mut Rng, i: usize) -> Vec<u8> {
    let src = (Ipv4Addr::new(10, 1, 0, (i % 250) as u8 + 1), 40000 + (i % 120) as u16);
    let dst = (Ipv4Addr::new(10, 9, 0, 2), [53, 25, 514][rng.below(3)]);
    let len = rng.below(1400);
    let data = payload(rng, len);
    let mut s = FrameSpec::udp(src, dst, data.len());
    s.payload = data;
    if i.is_multiple_of(9) {
        s.vlan = Some(7);
    }
    s.build()
}

/// Flows interleaved at random, each in its own order.
fn capture(seed: u64) -> Vec<Vec<u8>> {
    let mut rng = Rng(seed);
    let mut flows: Vec<std::collections::VecDeque<Vec<u8>>> = Vec::new();
    for i in 0..300 {
        flows.push(tcp_flow(&mut rng, i).into());
    }
    for i in 0..300 {
        flows.push(vec![udp_datagram(&mut rng, i)].into());
    }
    let mut frames = Vec::new();
    while !flows.is_empty() {
        let k = rng.below(flows.len());
        frames.push(flows[k].pop_front().expect("non-empty flows only"));
        if flows[k].is_empty() {
            flows.swap_remove(k);
        }
    }
    frames
}

#[test]
fn dpi_verdicts_equal_pythons_re_on_reassembled_streams() {
    let frames = capture(2026);
    let dir = std::env::temp_dir().join(format!("braid-dpi-oracle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pcap = dir.join("flows.pcap");
    let rules = dir.join("rules.json");
    let mut w = PcapWriter::new(Vec::new()).unwrap();
    for (i, f) in frames.iter().enumerate() {
        w.write(i as u64 * 1000, f).unwrap();
    }
    std::fs::write(&pcap, w.into_inner()).unwrap();
    std::fs::write(&rules, RULES).unwrap();

    // The NF, in batches of 32; the packet index rides in `rx_ns`.
    let rules_value: serde_json::Value = serde_json::from_str(RULES).unwrap();
    let params = serde_yaml_ng::to_value(serde_json::json!({
        "rules": rules_value, "alert_log": 100000, "log_per_sec": 0
    }))
    .unwrap();
    let mut nf = Dpi::from_params(&params).unwrap();
    let mut counters = Counters::default();
    let mut verdicts = vec![serde_json::json!("drop"); frames.len()];
    for (c, chunk) in frames.chunks(32).enumerate() {
        let mut batch: Batch = chunk
            .iter()
            .enumerate()
            .map(|(k, f)| {
                let mut p = Packet::from_bytes(f);
                p.meta.rx_ns = (c * 32 + k) as u64;
                p
            })
            .collect();
        nf.process(&mut batch, &mut Context::new(1 + c as u64, &mut counters));
        for p in batch.iter() {
            verdicts[p.meta.rx_ns as usize] = p.meta.mark.into();
        }
    }
    let mut alerts: Vec<Vec<u64>> = nf
        .alerts()
        .map(|a| {
            let f = a.flow;
            vec![
                f.src.into(),
                f.dst.into(),
                f.src_port.into(),
                f.dst_port.into(),
                f.proto.into(),
                a.sid.into(),
                a.end,
            ]
        })
        .collect();

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/dpi_oracle.py");
    let out =
        Command::new("python3").arg(&script).arg(&rules).arg(&pcap).output().expect("python3 runs");
    assert!(out.status.success(), "oracle failed: {}", String::from_utf8_lossy(&out.stderr));
    let oracle: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut oracle_alerts: Vec<Vec<u64>> =
        serde_json::from_value(oracle["alerts"].clone()).unwrap();
    let oracle_verdicts = oracle["packets"].as_array().unwrap();

    let differing: Vec<usize> =
        (0..frames.len()).filter(|&i| verdicts[i] != oracle_verdicts[i]).collect();
    assert!(
        differing.is_empty(),
        "{} of {} packet verdicts differ, first: packet {} nf {} python {}",
        differing.len(),
        frames.len(),
        differing[0],
        verdicts[differing[0]],
        oracle_verdicts[differing[0]]
    );
    alerts.sort();
    oracle_alerts.sort();
    // [src, dst, sport, dport, proto, sid, end]; the first few differences.
    let only_nf: Vec<_> = alerts.iter().filter(|a| !oracle_alerts.contains(a)).take(10).collect();
    let only_py: Vec<_> = oracle_alerts.iter().filter(|a| !alerts.contains(a)).take(10).collect();
    assert!(
        only_nf.is_empty() && only_py.is_empty(),
        "alerts only in the NF: {only_nf:?}\nonly in Python: {only_py:?}"
    );
    assert_eq!(alerts, oracle_alerts);

    // The comparison means something: every rule fired, every verdict kind
    // occurred, segments were queued and retransmissions seen.
    assert!(nf.rule_hits().iter().all(|&n| n > 0), "rules that never fired: {:?}", nf.rule_hits());
    let drops = verdicts.iter().filter(|v| *v == "drop").count();
    let marked = verdicts.iter().filter(|v| v.as_u64().is_some_and(|m| m > 0)).count();
    assert!(drops > 50 && marked > 50, "{drops} dropped, {marked} marked");
    assert!(nf.stats().segments_queued > 50 && nf.stats().retransmissions > 20, "{:?}", nf.stats());
    assert_eq!(nf.stats().gaps_skipped, 0);
    eprintln!(
        "{} packets, {} alerts, {drops} dropped, {marked} marked, {:?}: 0 differences",
        frames.len(),
        alerts.len(),
        nf.stats()
    );
    std::fs::remove_dir_all(&dir).ok();
}
