//! Exporting and importing the state of a 100,000-flow `nat`.
//!
//! The NAT learns its 100,000 mappings (50,000 TCP, 50,000 UDP) from real
//! outbound frames, as in the `stateful` bench. Rows:
//!
//! * `export_binary_all` / `export_json_all`: `export_scoped(All, ..)`,
//!   the whole table in the compact binary encoding and in JSON;
//! * `export_binary_half`: the flows of one half of the stable hash space
//!   (`HashRange::share(0, 2)`), what a scale-out to two instances moves;
//! * `import_merge_binary_all`: merging the binary export into a fresh NAT
//!   (rebuilds the table and the port pools).
//!
//! Before the runs it prints the sizes: bytes of each encoding, bytes per
//! mapping, and the raw size of one mapping (two 13-byte 5-tuple keys, an
//! 8-byte time stamp and a flags byte: 35 bytes).
//!
//! Time is the benchmark thread's CPU time (`braid_benchkit::ThreadCpuTime`),
//! as in the `stateful` bench: this VM's 2 cores are shared with other
//! builds, and time spent descheduled is not the export's cost. (The export
//! runs single-threaded between batches, so on an idle core its wall time
//! is this CPU time.)
//!
//! Run: `cargo bench -p braid-nf --bench state_export`.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::Duration;

use braid_benchkit::ThreadCpuTime;
use braid_nf::nat::{self, Nat};
use braid_nf::{Context, Counters, Encoding, FlowScope, HashRange, NetworkFunction};
use braid_packet::wire::build::FrameSpec;
use braid_packet::{Batch, Packet};
use criterion::{criterion_group, criterion_main, Criterion};

const FLOWS: u32 = 100_000;
/// Packed size of one mapping's fields (see the module comment).
const RAW_ENTRY_BYTES: usize = 2 * 13 + 8 + 1;

fn nat_config() -> nat::Config {
    nat::Config {
        external_ip: Ipv4Addr::new(203, 0, 113, 1),
        internal: vec!["10.0.0.0/8".into()],
        ports: "1024-65535".into(),
        timeouts: Default::default(),
        max_flows: 1 << 18,
        mapping: Default::default(),
        max_fragments: 4096,
        port_secret: None,
    }
}

/// A NAT holding `FLOWS` mappings created by outbound traffic.
fn warm_nat() -> Nat {
    let mut nf = Nat::from_config(&nat_config()).expect("nat config");
    let mut counters = Counters::default();
    let frames: Vec<Packet> = (0..FLOWS)
        .map(|i| {
            let src = (Ipv4Addr::from(0x0a00_0001 + i), 10_000 + (i % 50_000) as u16);
            let dst = (Ipv4Addr::from(0xc633_6400 + i % 200), 443);
            let f = if i % 2 == 0 {
                FrameSpec::tcp(src, dst, 0x02).build()
            } else {
                FrameSpec::udp(src, dst, 18).build()
            };
            Packet::from_bytes(&f)
        })
        .collect();
    for chunk in frames.chunks(32) {
        let mut batch: Batch = chunk.iter().cloned().collect();
        nf.process(&mut batch, &mut Context::new(1_000_000, &mut counters));
        assert_eq!(batch.len(), chunk.len(), "every outbound frame is translated");
    }
    assert_eq!(nf.mappings(), FLOWS as usize);
    nf
}

fn state_export(c: &mut Criterion<ThreadCpuTime>) {
    let nf = warm_nat();
    let binary = nf.export_scoped(&FlowScope::All, Encoding::Binary).unwrap();
    let json = nf.export_scoped(&FlowScope::All, Encoding::Json).unwrap();
    let raw = RAW_ENTRY_BYTES * FLOWS as usize;
    for (name, s) in [("binary", &binary), ("json", &json)] {
        let n = s.to_bytes().len();
        eprintln!(
            "nat {FLOWS} mappings, {name}: {n} bytes, {:.1} bytes/mapping, {:.2}x the raw {raw} bytes ({RAW_ENTRY_BYTES}/mapping)",
            n as f64 / f64::from(FLOWS),
            n as f64 / raw as f64
        );
    }

    let mut g = c.benchmark_group("nat_100k_state");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    g.bench_function("export_binary_all", |b| {
        b.iter(|| black_box(nf.export_scoped(&FlowScope::All, Encoding::Binary).unwrap()))
    });
    g.bench_function("export_json_all", |b| {
        b.iter(|| black_box(nf.export_scoped(&FlowScope::All, Encoding::Json).unwrap()))
    });
    let half = FlowScope::HashRange(HashRange::share(0, 2));
    g.bench_function("export_binary_half", |b| {
        b.iter(|| black_box(nf.export_scoped(&half, Encoding::Binary).unwrap()))
    });
    g.bench_function("import_merge_binary_all", |b| {
        b.iter_batched(
            || Nat::from_config(&nat_config()).unwrap(),
            |mut fresh| {
                fresh.import_merge(&binary).unwrap();
                fresh
            },
            criterion::BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadCpuTime);
    targets = state_export
}
criterion_main!(benches);
