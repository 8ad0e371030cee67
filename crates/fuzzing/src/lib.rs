//! braid's fuzz targets, as plain functions of the input bytes.
//!
//! Each target feeds untrusted bytes to one of braid's parsers or to a
//! running NF and must return without panicking, however wrong the bytes
//! are. They run two ways:
//!
//! - coverage-guided, by cargo-fuzz (libFuzzer): `fuzz/fuzz_targets/*.rs`
//!   are one-line wrappers (`docs/reliability.md` says how to run them);
//! - as regression tests in `cargo test` (so in CI): every file of the
//!   committed corpus (`crates/fuzzing/corpus/TARGET/`) plus a few hundred
//!   pseudo-random inputs per target (tests below).
//!
//! Targets: [`descriptor`] (YAML chain descriptors through the validator),
//! [`capture`] (pcap / pcapng reader), [`nf_frames`] (any frame sequence
//! through any NF, both gates, with ticks), [`state_import`] (every
//! stateful NF's state import, both encodings), [`headers`] (the coding and
//! crypto headers and the wire views), [`shm`] (a hostile peer's
//! descriptors on a shared-memory channel, the handshake's hello).

use braid_nf::state::Encoding;
use braid_nf::{
    CompactStatelet, Context, Counters, NetworkFunction, NfState, Params, PartitionKey,
};
use braid_packet::{Batch, Packet};

/// Every NF kind with parameters it builds with (the router without a
/// default route: a /0 fills all 16 M entries of its DIR-24-8 table at
/// every build, and the NF is built anew for every input): the NF half of the
/// [`nf_frames`] and [`state_import`] inputs picks one of these. A test
/// checks that the registry has no NF missing here.
pub const NF_CASES: &[(&str, &str)] = &[
    ("fwd", "null"),
    ("ats", "{}"),
    ("xor", "{ key_text: braid }"),
    ("l2switch", "{ ports: 3, max_entries: 64 }"),
    (
        "loadbalancer",
        "{ vip: 10.0.0.100, port: 80, backends: [{ ip: 10.0.1.1 }, { ip: 10.0.1.2 }], max_connections: 64 }",
    ),
    ("meter", "{ cir: 1000, cbs: 100, ebs: 100 }"),
    (
        "router",
        "{ mac: 02:00:00:00:00:fe, ip: 10.0.0.254, routes: [{ prefix: 10.1.0.0/16, next_hop_mac: 02:00:00:00:01:01, port: 1 }, { prefix: 10.0.0.0/8, next_hop_mac: 02:00:00:00:00:01, port: 0 }] }",
    ),
    (
        "firewall",
        "{ default: drop, max_flows: 64, rules: [{ action: allow, proto: udp, dst: 10.1.0.0/16 }, { action: allow, proto: tcp, dst_ports: 80 }, { action: allow, proto: icmp }] }",
    ),
    ("nat", "{ external_ip: 192.0.2.1, internal: [10.0.0.0/8], ports: '20000-20063' }"),
    ("encrypt", "{ key: 00112233445566778899aabbccddeeff }"),
    ("decrypt", "{ key: 00112233445566778899aabbccddeeff }"),
    ("nc-encode", "{ generation_size: 4 }"),
    ("nc-recode", "{}"),
    ("nc-decode", "{}"),
    ("loss", "{ rate: 0.5, seed: 7 }"),
    ("delay", "{ delay: 1ms, jitter: 500us, rate: 10mbit, limit: 16 }"),
    ("steer", "{ instances: 3, buckets: 4, table: [0, 1, 2, 1], unhashable: 2 }"),
    (
        "dpi",
        "{ max_flows: 64, rules: [{ sid: 1, content: 'GET /admin', nocase: true, proto: tcp }, { sid: 2, pcre: '^HELO [a-z]+', action: drop }, { sid: 3, content: '|90 90 90|', action: mark, mark: 7 }] }",
    ),
    // An IPv6 VIP (its own state format, version 2).
    (
        "loadbalancer",
        "{ vip: '2001:db8::100', port: 80, backends: [{ ip: '2001:db8:1::1' }, { ip: '2001:db8:1::2' }], max_connections: 64 }",
    ),
    // Link MTUs: IPv4 fragmentation, fragmentation needed, Packet Too Big.
    (
        "router",
        "{ mac: 02:00:00:00:00:fe, ip: 10.0.0.254, ip6: '2001:db8::fe', routes: [{ prefix: 10.1.0.0/16, next_hop_mac: 02:00:00:00:01:01, port: 1 }, { prefix: 10.0.0.0/8, next_hop_mac: 02:00:00:00:00:01, port: 0 }, { prefix: '2001:db8::/32', next_hop_mac: 02:00:00:00:00:02, port: 2 }], ports: [{ port: 1, mtu: 68 }, { port: 0, mtu: 576 }, { port: 2, mtu: 1280 }] }",
    ),
    // CTR runs a batch at a time (three passes, one key-stream call).
    ("encrypt", "{ mode: ctr, key: 00112233445566778899aabbccddeeff }"),
    ("decrypt", "{ mode: ctr, key: 00112233445566778899aabbccddeeff }"),
    ("encrypt", "{ mode: ctr, key: 00112233445566778899aabbccddeeff, udp_checksum: zero }"),
];

/// Build NF `index` of [`NF_CASES`] (modulo its length).
pub fn build_case(index: usize) -> Box<dyn NetworkFunction> {
    let (kind, params) = NF_CASES[index % NF_CASES.len()];
    let params: Params = serde_yaml_ng::from_str(params).expect("the cases' YAML parses");
    braid_nf::build(kind, &params).unwrap_or_else(|e| panic!("case {kind} does not build: {e}"))
}

/// A chain descriptor, as text, through the validator.
pub fn descriptor(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = braid_runtime::validate::validate_str("fuzz.yaml", text);
    }
}

/// A capture file through the pcap / pcapng reader, to its end or first
/// error (at most 10,000 records).
pub fn capture(data: &[u8]) {
    let Ok(mut reader) = braid_io::capture::CaptureReader::new(data) else {
        return;
    };
    let mut buf = Vec::new();
    for _ in 0..10_000 {
        match reader.next_record(&mut buf) {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return,
        }
    }
}

/// Any frame sequence through any NF. Layout: one byte picks the NF of
/// [`NF_CASES`]; then records of `ctrl, len_hi, len_lo, frame bytes`
/// (frames up to 2000 bytes; a short last record takes what is left).
/// `ctrl` bit 0 is the gate the frame enters on, bit 1 ends the batch
/// after it, bit 2 ticks the NF after the batch, bits 3–7 advance the
/// clock by that many milliseconds. Checked besides "no panic": every
/// frame that leaves fits a packet buffer, the NF's drop counters
/// never exceed what entered, an NF that claims
/// [`NetworkFunction::keeps_lengths`] keeps them, and an NF whose
/// [`NetworkFunction::wants_tick`] is false does nothing when ticked.
pub fn nf_frames(data: &[u8]) {
    let Some((&which, mut rest)) = data.split_first() else {
        return;
    };
    let mut nf = build_case(which as usize);
    let mut counters = Counters::default();
    let mut now_ns: u64 = 1_000_000_000;
    let mut batch = Batch::new();
    let mut entered: u64 = 0;
    while rest.len() >= 3 {
        let ctrl = rest[0];
        let len = (usize::from(rest[1]) << 8 | usize::from(rest[2])) % 2001;
        rest = &rest[3..];
        let take = len.min(rest.len());
        let mut p = Packet::from_bytes(&rest[..take]);
        rest = &rest[take..];
        p.meta.in_port = u16::from(ctrl & 1);
        p.meta.rx_ns = now_ns;
        batch.push(p);
        entered += 1;
        now_ns += u64::from(ctrl >> 3) * 1_000_000;
        if ctrl & 2 != 0 || rest.len() < 3 {
            let (n_in, bytes_in, created) = (batch.len(), batch.bytes(), counters.packets_created);
            nf.process(&mut batch, &mut Context::new(now_ns, &mut counters));
            check_out(&batch);
            if nf.keeps_lengths() && batch.len() == n_in && counters.packets_created == created {
                assert_eq!(batch.bytes(), bytes_in, "{} claims keeps_lengths", nf.spec().name);
            }
            batch.clear();
            if ctrl & 4 != 0 {
                // An NF that says it has nothing to tick for is ticked only
                // about once a second by an idle worker: ticking it anyway
                // must do nothing (no packet out, no counter moved, no
                // entry aged out), or it forgot to override `wants_tick`.
                let idle = !nf.wants_tick();
                let before = (counters.clone(), held_entries(&mut *nf));
                let mut out = Batch::new();
                nf.tick(&mut out, &mut Context::new(now_ns, &mut counters));
                check_out(&out);
                if idle {
                    let name = nf.spec().name;
                    assert!(out.is_empty(), "{name}: wants_tick false, tick emitted {}", out.len());
                    assert_eq!(counters, before.0, "{name}: wants_tick false, tick counted");
                    assert_eq!(
                        held_entries(&mut *nf),
                        before.1,
                        "{name}: wants_tick false, tick aged"
                    );
                }
            }
        }
    }
    assert!(
        counters.dropped_total() <= entered,
        "{} drops of {entered} frames",
        counters.dropped_total()
    );
}

/// Entries in a per-flow NF's table (None for the others).
fn held_entries(nf: &mut dyn NetworkFunction) -> Option<usize> {
    nf.flow_stream().map(|f| f.len())
}

fn check_out(batch: &Batch) {
    for p in batch.iter() {
        assert!(p.data().len() <= braid_packet::BUF_SIZE, "a frame of {} bytes", p.data().len());
    }
}

/// Bytes offered as a stateful NF's saved state. Layout: one byte picks
/// the NF of [`NF_CASES`], one the encoding (even: JSON, odd: binary), the
/// rest is the state data; the version is the NF's own, so the import gets
/// past the version check into the decoder. An import must fail cleanly or
/// succeed; after either, the NF still processes a frame.
pub fn state_import(data: &[u8]) {
    let [which, encoding, rest @ ..] = data else {
        return;
    };
    let mut nf = build_case(*which as usize);
    let Some(mut state) = nf.export_state() else {
        return;
    };
    state.encoding = if encoding & 1 == 0 {
        braid_nf::state::Encoding::Json
    } else {
        braid_nf::state::Encoding::Binary
    };
    state.data = rest.to_vec();
    let _ = nf.import_state(&state);
    let mut b: Batch = std::iter::once(Packet::from_bytes(&[0u8; 60])).collect();
    let mut counters = Counters::default();
    nf.process(&mut b, &mut Context::new(2_000_000_000, &mut counters));
}

/// A migration's statelet stream as the destination reads it, into a
/// fresh per-flow NF. Layout: one byte picks the NF of [`NF_CASES`] (those
/// without a [`braid_nf::FlowStream`] return at once); then records of
/// `len_hi, len_lo`, that many bytes of the NF's own binary state format
/// (the target appends the CRC-32, so the bytes reach the decoder), and
/// a postcard list of the flows the statelet clears. Each record goes
/// through [`braid_nf::CompactStatelet::expand`] and
/// [`braid_nf::FlowStream::install`] as the migration's destination does;
/// then [`braid_nf::FlowStream::finish_install`] and a frame through the
/// NF. Checked besides "no panic": a refused statelet changes nothing
/// (the flows held before and after are the same).
pub fn statelets(data: &[u8]) {
    install_statelets(data);
}

/// [`statelets`], returning how many statelets were installed (`None`:
/// the NF has no per-flow state).
fn install_statelets(data: &[u8]) -> Option<usize> {
    let (&which, mut rest) = data.split_first()?;
    let mut nf = build_case(which as usize);
    let template = nf.export_state()?;
    let fs = nf.flow_stream()?;
    let mut installed = 0;
    while rest.len() >= 2 {
        let len = (usize::from(rest[0]) << 8 | usize::from(rest[1])).min(rest.len() - 2);
        let mut body = rest[2..2 + len].to_vec();
        rest = &rest[2 + len..];
        let Ok((cleared, after)) = postcard::take_from_bytes::<Vec<PartitionKey>>(rest) else {
            break;
        };
        rest = after;
        let crc = crc32fast::hash(&body);
        body.extend_from_slice(&crc.to_le_bytes());
        let state = NfState {
            kind: template.kind.clone(),
            version: template.version,
            encoding: Encoding::Binary,
            data: body,
        };
        let Ok(statelet) = (CompactStatelet { state, cleared }).expand() else {
            continue;
        };
        let before = held_keys(fs);
        match fs.install(&statelet) {
            Ok(()) => installed += 1,
            Err(e) => assert_eq!(
                held_keys(fs),
                before,
                "{}: a refused statelet ({e}) changed the table",
                template.kind
            ),
        }
    }
    let _ = fs.finish_install();
    let mut b: Batch = std::iter::once(Packet::from_bytes(&[0u8; 60])).collect();
    let mut counters = Counters::default();
    nf.process(&mut b, &mut Context::new(2_000_000_000, &mut counters));
    check_out(&b);
    Some(installed)
}

/// The flows a per-flow NF holds, sorted.
fn held_keys(fs: &mut dyn braid_nf::FlowStream) -> Vec<PartitionKey> {
    let mut keys = Vec::new();
    fs.held_keys(&mut keys);
    keys.sort_unstable();
    keys
}

/// Inputs for [`statelets`] made from real streams: for each per-flow NF
/// of [`NF_CASES`], traffic of a few flows, then the snapshot chunks and
/// a statelet of changed flows (one of them cleared) as that target
/// reads them. The committed corpus of `statelets` was written from
/// these (`BRAID_WRITE_CORPUS=1 cargo test -p braid-fuzzing`).
pub fn statelet_seeds() -> Vec<Vec<u8>> {
    use braid_packet::wire::build::FrameSpec;
    use std::net::Ipv4Addr;
    let mut seeds = Vec::new();
    for (index, _) in NF_CASES.iter().enumerate() {
        let mut nf = build_case(index);
        if nf.flow_stream().is_none() {
            continue;
        }
        let mut counters = Counters::default();
        // To the load balancer's VIP, to what the firewall allows, and
        // outside the NAT.
        let servers = [[10, 0, 0, 100], [10, 1, 0, 100], [198, 51, 100, 1]];
        let mut b: Batch = (0..9u8)
            .map(|i| {
                let inside = (Ipv4Addr::new(10, 0, 0, 1 + i), 1000 + u16::from(i));
                let server = Ipv4Addr::from(servers[usize::from(i % 3)]);
                let mut spec = FrameSpec::udp(inside, (server, 80), 8);
                spec.src_mac = braid_packet::wire::MacAddr([2, 0, 0, 0, 1, i]);
                Packet::from_bytes(&spec.build())
            })
            .collect();
        nf.process(&mut b, &mut Context::new(1_000_000_000, &mut counters));
        let fs = nf.flow_stream().expect("checked");
        // As a migration does: freeze (the hash-map NFs walk the keys
        // held at the freeze), then walk.
        fs.record_changes(true);
        let mut seed = vec![index as u8];
        let mut cursor = 0;
        let mut statelets = Vec::new();
        while let Some(s) = fs.export_from(&mut cursor, 4) {
            statelets.push(s);
        }
        let mut keys = Vec::new();
        fs.held_keys(&mut keys);
        if let [kept, gone, ..] = keys[..] {
            // A change of one flow, and the tombstone of another.
            statelets.push(fs.export_flows(&[kept]));
            statelets
                .push(braid_nf::Statelet { keys: vec![gone], state: fs.export_flows(&[]).state });
        }
        for s in statelets {
            let Ok(c) = s.compact() else { continue };
            let body = &c.state.data[..c.state.data.len() - 4];
            seed.extend_from_slice(&(body.len() as u16).to_be_bytes());
            seed.extend_from_slice(body);
            seed.extend(postcard::to_allocvec(&c.cleared).expect("keys serialize"));
        }
        seeds.push(seed);
    }
    seeds
}

/// The coding header, the crypto header and the wire views over the same
/// bytes.
pub fn headers(data: &[u8]) {
    let _ = braid_coding::header::Header::parse(data);
    let _ = braid_nf::aes_header::AesHeader::parse(data);
    use braid_packet::wire::*;
    // Each typed view over the same bytes, and its Repr where it has one.
    if let Ok(f) = EthernetFrame::new_checked(data) {
        let _ = EthernetRepr::parse(&f);
    }
    if let Ok(p) = ArpPacket::new_checked(data) {
        let _ = ArpRepr::parse(&p);
    }
    if let Ok(t) = VlanTag::new_checked(data) {
        let _ = VlanRepr::parse(&t);
    }
    if let Ok(p) = Ipv4Packet::new_checked(data) {
        let _ = (p.header_len(), p.total_len(), p.verify_checksum(), Ipv4Repr::parse(&p));
    }
    if let Ok(p) = Ipv6Packet::new_checked(data) {
        let _ = Ipv6Repr::parse(&p);
    }
    if let Ok(p) = Icmpv4Packet::new_checked(data) {
        let _ = Icmpv4Repr::parse(&p);
    }
    if let Ok(p) = Icmpv6Packet::new_checked(data) {
        let _ = Icmpv6Repr::parse(&p);
    }
    if let Ok(p) = UdpPacket::new_checked(data) {
        let _ = UdpRepr::parse(&p);
    }
    if let Ok(p) = TcpPacket::new_checked(data) {
        let _ = TcpRepr::parse(&p);
    }
}

/// A hostile peer on a shared-memory channel. The first 32 bytes are also
/// offered as a creator's hello (`Hello::decode`, then the layout it asks
/// for). Then the bytes are 8-byte records of what the peer does to the
/// honest side's rings: `op, slot (4 bytes), off, len (as two bytes scaled)`
/// where `op % 5` is 0–1: a data descriptor, 2: a slot put on the return
/// ring, 3: a forced producer index (`slot` as the index), 4: nothing; after
/// each record the honest side receives everything. Checked besides "no
/// panic": every packet it hands out lies inside the shared region and
/// fits a slot, an error ending the channel names a corrupt ring, and the
/// honest side can still allocate afterwards unless the channel ended.
pub fn shm(data: &[u8]) {
    use braid_io::shm::{control, layout, region::Region, ring};
    use braid_io::{Port, PortError};

    if let Some(hello) = data.get(..control::HELLO_LEN) {
        if let Ok(h) = control::Hello::decode(hello) {
            let _ = layout::Layout::new(h.slots, h.slot_size);
        }
    }
    const CFG: braid_io::shm::ShmConfig =
        braid_io::shm::ShmConfig { slots: 64, slot_size: 256, hugepages: false };
    let path = std::env::temp_dir().join(format!("braid-fuzz-shm-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let Ok(mut port) = braid_io::shm::ShmPort::listen(&path, CFG) else {
        return;
    };
    let mut attach = || -> Option<_> {
        let ctrl = std::os::unix::net::UnixStream::connect(&path).ok()?;
        port.accept(std::time::Duration::from_secs(2)).ok()?.then_some(())?;
        let (hello, mut fds) =
            control::recv_hello(&ctrl, std::time::Duration::from_secs(2)).ok()?;
        let lay = layout::Layout::new(hello.slots, hello.slot_size).ok()?;
        let region = std::sync::Arc::new(Region::open(fds.remove(0), lay.total).ok()?);
        let data_tx = ring::Producer::new(&region, &lay, layout::data_ring(1)).ok()?;
        let ret_tx = ring::Producer::new(&region, &lay, layout::return_ring(0)).ok()?;
        Some((ctrl, region, data_tx, ret_tx))
    };
    let attached = attach();
    let _ = std::fs::remove_file(&path);
    let Some((_ctrl, _region, mut data_tx, mut ret_tx)) = attached else {
        return;
    };
    let mut kept = Batch::new();
    let mut ended = false;
    'ops: for rec in data.chunks_exact(8) {
        let slot = u32::from_le_bytes([rec[1], rec[2], rec[3], rec[4]]);
        // Small values most of the time (slots that exist), any value else.
        let slot = if rec[0] & 0x80 == 0 { slot % 80 } else { slot };
        let off = u16::from(rec[5]) * if rec[7] & 1 == 0 { 1 } else { 257 };
        let len = u16::from(rec[6]) * if rec[7] & 2 == 0 { 1 } else { 257 };
        match rec[0] % 5 {
            0 | 1 => {
                let _ = data_tx.push(ring::Desc { slot, off, len, rx_ns: 0 });
                data_tx.publish();
            }
            2 => {
                let _ = ret_tx.push(ring::Desc { slot, ..ring::Desc::default() });
                ret_tx.publish();
            }
            3 => data_tx.force_index(slot),
            _ => {}
        }
        let mut b = Batch::new();
        loop {
            match port.recv(&mut b, 32) {
                Ok(n) => {
                    for p in b.drain() {
                        assert!(p.len() <= CFG.slot_size as usize, "a packet of {} bytes", p.len());
                        assert!(
                            port.region_contains(p.data().as_ptr(), p.len()),
                            "packet bytes outside the shared region"
                        );
                        // Keep a few alive: later claims of their slots must be refused.
                        if kept.len() < 8 {
                            kept.push(p);
                        }
                    }
                    if n == 0 {
                        break;
                    }
                }
                Err(e) => {
                    assert!(
                        matches!(e, PortError::Disconnected(_))
                            && e.to_string().contains("corrupt"),
                        "the channel ended with: {e}"
                    );
                    ended = true;
                    break 'ops;
                }
            }
        }
    }
    let mut b = Batch::new();
    let got = port.alloc(&mut b, 4).unwrap_or(0);
    assert!(
        ended || got > 0 || kept.len() + port.free_slots() <= CFG.slots as usize,
        "the honest side cannot allocate: {} kept, {} free",
        kept.len(),
        port.free_slots()
    );
}

/// A fuzz target: takes any bytes, must not panic.
pub type Target = fn(&[u8]);

/// The targets by name, for the corpus replay and the fuzz wrappers.
pub const TARGETS: &[(&str, Target)] = &[
    ("descriptor", descriptor),
    ("capture", capture),
    ("nf_frames", nf_frames),
    ("state_import", state_import),
    ("headers", headers),
    ("shm", shm),
    ("statelets", statelets),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_registered_nf_has_a_case() {
        for spec in braid_nf::registry::REGISTRY {
            assert!(
                NF_CASES.iter().any(|(kind, _)| *kind == spec.name),
                "NF {} has no fuzz case in NF_CASES",
                spec.name
            );
        }
        for i in 0..NF_CASES.len() {
            build_case(i);
        }
    }

    /// Every file of the committed corpus of every target.
    #[test]
    fn corpus_replays_without_panics() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
        let mut replayed = 0;
        for (name, target) in TARGETS {
            let dir = root.join(name);
            let entries = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("corpus of {name} ({}): {e}", dir.display()));
            for entry in entries {
                let path = entry.unwrap().path();
                target(&std::fs::read(&path).unwrap());
                replayed += 1;
            }
        }
        assert!(replayed >= TARGETS.len(), "{replayed} corpus files");
    }

    /// The seeds of `statelets` are real streams: every per-flow NF of
    /// the cases installs its chunks, a change and a tombstone. With
    /// `BRAID_WRITE_CORPUS=1` they are (re)written to the corpus.
    #[test]
    fn statelet_seeds_install_real_streams() {
        let seeds = statelet_seeds();
        let mut kinds = Vec::new();
        for seed in &seeds {
            let (kind, _) = NF_CASES[seed[0] as usize];
            let n = install_statelets(seed).expect("a per-flow NF");
            if n > 0 {
                kinds.push(kind);
            }
            assert!(
                n == 0 || n >= 3,
                "{kind}: {n} statelets of the seed installed ({} bytes)",
                seed.len()
            );
        }
        for kind in ["nat", "firewall", "loadbalancer", "l2switch"] {
            assert!(kinds.contains(&kind), "no {kind} seed installs: {kinds:?}");
        }
        if std::env::var_os("BRAID_WRITE_CORPUS").is_some() {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/statelets");
            std::fs::create_dir_all(&dir).unwrap();
            for (i, seed) in seeds.iter().enumerate() {
                std::fs::write(dir.join(format!("seed-{i}")), seed).unwrap();
            }
        }
    }

    /// A few hundred pseudo-random inputs per target (xorshift, fixed
    /// seed), some of them mutations of the corpus: a quick check that runs
    /// in every `cargo test`, where libFuzzer is not available.
    #[test]
    fn random_inputs_do_not_panic() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for (name, target) in TARGETS {
            let seeds: Vec<Vec<u8>> = std::fs::read_dir(root.join(name))
                .map(|d| d.filter_map(|e| std::fs::read(e.ok()?.path()).ok()).collect())
                .unwrap_or_default();
            for i in 0..300 {
                let mut input = match seeds.get(i % (seeds.len() + 1)) {
                    Some(seed) => seed.clone(),
                    None => (0..next() % 300).map(|_| next() as u8).collect(),
                };
                for _ in 0..(next() % 8) {
                    if input.is_empty() {
                        break;
                    }
                    let at = next() as usize % input.len();
                    input[at] ^= next() as u8;
                }
                target(&input);
            }
        }
    }
}
