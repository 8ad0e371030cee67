//! What a live migration costs the running dataplane, per mode, side by
//! side in one run: a NAT and a firewall (connection tracking) with
//! 100,000 flows each, every packet touching one, migrated over TCP
//! loopback to a fresh worker, modes interleaved round by round. Reported:
//! the source worker's packet rate in 100 ms windows before and while the
//! state streams (snapshot walk, statelets or duplicated packets), the
//! time to the switch, the outage (arrivals held at the destination from
//! the switch to Done), bytes sent, statelets, chunks, duplicated packets.
//!
//! `cargo bench -p braid-migrate --bench freeze` (results in
//! docs/migration.md). `BRAID_BENCH_KINDS=nat` runs only the NAT (or
//! `firewall`); `BRAID_BENCH_BUDGETS=0.1,0.05` rotates the source's CPU
//! budget for the export round by round (interleaved with the modes), to
//! compare budgets side by side; `BRAID_BENCH_ROUNDS` (default 5) rounds
//! per mode and budget. `BRAID_BENCH_SEAL=both` runs every mode with and
//! without sealed frames (AES-256-GCM, `SourceOptions::stream_key`),
//! interleaved (`on`: sealed only; default `off`). `BRAID_BENCH_PIN=1`
//! puts the source worker alone on CPU 0 and everything else (the
//! destination worker, the migration's threads, this sampling thread) on
//! CPU 1: the source's rate then shows what the migration costs the
//! dataplane's own core, as on a host where the stream's threads have a
//! core of their own (on the 2 vCPUs without pinning, they take the
//! worker's). The traffic comes from a generator inside the
//! source worker, so "moving the traffic" at the switch is pausing the
//! source's receive and injecting the drain marker; each round then
//! resumes the source for the next one (its state is intact: the source
//! is never thawed of anything it needs).

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use braid_dataplane::migration::marker_frame;
use braid_dataplane::{Graph, Sched, Worker, WorkerConfig, WorkerHandle};
use braid_io::memory::{GeneratorConfig, GeneratorPort, MemoryPort};
use braid_migrate::wire::StreamKey;
use braid_migrate::{
    migrate_in, migrate_out, DestinationOptions, Mode, SourceOptions, SourceReport, Switch,
    SwitchError,
};

const FLOWS: u32 = 100_000;
const NAT: &str =
    "external_ip: 203.0.113.1\ninternal: [10.0.0.0/8]\nmax_flows: 200000\nports: 1024-65535";
const FIREWALL: &str = "default: allow\nmax_flows: 200000";

/// With `BRAID_BENCH_PIN=1`, the CPU the source worker has to itself and
/// the one for everything else.
const SOURCE_CPU: usize = 0;
const OTHER_CPU: usize = 1;

fn pinned() -> bool {
    std::env::var("BRAID_BENCH_PIN").is_ok_and(|v| v == "1")
}

/// Pin the calling thread (and the threads it spawns later) to `cpu`
/// when pinning is on.
fn pin_here(cpu: usize) {
    if pinned() {
        Sched { cpus: vec![cpu], ..Sched::default() }
            .apply_to_current_thread()
            .expect("pinning a bench thread");
    }
}

fn nf_worker(kind: &str, name: &str, with_traffic: bool) -> WorkerHandle {
    let yaml = if kind == "nat" { NAT } else { FIREWALL };
    let nf = braid_nf::build(kind, &serde_yaml_ng::from_str(yaml).unwrap()).unwrap();
    let graph = Graph::chain(vec![("nf".to_string(), nf)], 2, 0, 1).unwrap();
    let entries = [graph.entry(0, 1), graph.entry(1, 0)];
    let mut cfg = WorkerConfig::new(name);
    if pinned() {
        // The source (the one with traffic) alone on its CPU.
        cfg.sched.cpus = vec![if with_traffic { SOURCE_CPU } else { OTHER_CPU }];
    }
    let (mut w, handle) = Worker::new(cfg, graph).unwrap();
    if with_traffic {
        let gen = GeneratorConfig {
            flows: FLOWS,
            dst: (Ipv4Addr::new(198, 51, 100, 1), 5000),
            ..GeneratorConfig::default()
        };
        w.add_port(Box::new(GeneratorPort::new(&gen).unwrap()), Some(entries[0])).unwrap();
    } else {
        w.add_port(Box::new(MemoryPort::sink("in")), Some(entries[0])).unwrap();
    }
    w.add_port(Box::new(MemoryPort::sink("out")), Some(entries[1])).unwrap();
    w.spawn().unwrap();
    handle
}

fn rx(h: &WorkerHandle) -> u64 {
    h.snapshot().ports.first().map_or(0, |p| p.stats.rx_packets)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// "Moves the traffic": stops the source receiving from its generator and
/// puts the drain marker behind what it received; notes when.
struct PauseAndMark {
    src: WorkerHandle,
    at: Arc<Mutex<Option<Instant>>>,
}

impl Switch for PauseAndMark {
    fn redirect(&mut self, id: u64) -> Result<(), SwitchError> {
        *self.at.lock().unwrap() = Some(Instant::now());
        self.src.pause().map_err(|e| SwitchError::failed("pause", e))?;
        self.src.inject(vec![(0, marker_frame(id))]).map_err(|e| SwitchError::failed("inject", e))
    }
    fn restore(&mut self) -> Result<(), SwitchError> {
        self.src.resume().map_err(|e| SwitchError::failed("resume", e))
    }
}

/// One migration of the source's NAT to a fresh destination in `mode`,
/// with the source's rate in 100 ms windows while the state streams
/// (windows that end after the switch are left out). Returns (report,
/// rates during, ms from start to the switch).
fn migrate_once(
    kind: &'static str,
    src: &WorkerHandle,
    round: u64,
    mode: Mode,
    budget: f64,
    sealed: bool,
) -> (SourceReport, Vec<f64>, f64) {
    let key = sealed.then(|| Arc::new(StreamKey::new(&[round as u8; 32])));
    let dst = nf_worker(kind, &format!("bench-dst{round}"), false);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let dst_h = dst.clone();
    let dst_key = key.clone();
    let dest = std::thread::spawn(move || {
        pin_here(OTHER_CPU);
        let (conn, _) = listener.accept().unwrap();
        let opts = DestinationOptions { stream_key: dst_key, ..DestinationOptions::default() };
        migrate_in(&dst_h, "nf", kind, conn, &opts)
    });
    let at = Arc::new(Mutex::new(None));
    let mut switch = PauseAndMark { src: src.clone(), at: at.clone() };
    let src_h = src.clone();
    let started = Instant::now();
    let mig = std::thread::spawn(move || {
        // The stream's own threads (spawned in migrate_out) inherit it.
        pin_here(OTHER_CPU);
        let conn = TcpStream::connect(addr).unwrap();
        let opts = SourceOptions {
            id: round,
            mode,
            markers: vec![0],
            budget,
            stream_key: key,
            ..SourceOptions::default()
        };
        migrate_out(&src_h, "nf", kind, conn, &opts, &mut switch)
    });
    let mut during = Vec::new();
    while !mig.is_finished() {
        let (a, t) = (rx(src), Instant::now());
        std::thread::sleep(Duration::from_millis(100));
        let r = (rx(src) - a) as f64 / t.elapsed().as_secs_f64();
        if at.lock().unwrap().is_none() {
            during.push(r);
        }
    }
    let report = mig.join().unwrap().expect("the migration succeeds");
    dest.join().unwrap().expect("the destination finishes");
    let switch_ms = at.lock().unwrap().map_or(0.0, |t| (t - started).as_secs_f64() * 1e3);
    assert_eq!(dst.snapshot().stages.len(), 1);
    dst.stop().unwrap();
    src.resume().unwrap();
    (report, during, switch_ms)
}

fn main() {
    pin_here(OTHER_CPU);
    let kinds = std::env::var("BRAID_BENCH_KINDS").unwrap_or_else(|_| "nat,firewall".into());
    let budgets: Vec<f64> = match std::env::var("BRAID_BENCH_BUDGETS") {
        Ok(b) => b
            .split(',')
            .map(|x| x.trim().parse().expect("BRAID_BENCH_BUDGETS: comma-separated numbers"))
            .collect(),
        Err(_) => vec![SourceOptions::default().budget],
    };
    let seals: Vec<bool> = match std::env::var("BRAID_BENCH_SEAL").as_deref() {
        Ok("both") => vec![false, true],
        Ok("on") => vec![true],
        Ok("off") | Err(_) => vec![false],
        Ok(other) => panic!("BRAID_BENCH_SEAL: off, on or both, not `{other}`"),
    };
    let rounds = std::env::var("BRAID_BENCH_ROUNDS")
        .map(|r| r.parse().expect("BRAID_BENCH_ROUNDS: a number"))
        .unwrap_or(5u64);
    for (kind, modes) in [
        ("nat", &[Mode::Statelet, Mode::StopCopy][..]),
        ("firewall", &[Mode::Statelet, Mode::Duplicate, Mode::StopCopy][..]),
    ] {
        if kinds.split(',').any(|k| k == kind) {
            run(kind, modes, &budgets, &seals, rounds);
        }
    }
}

fn run(kind: &'static str, modes: &[Mode], budgets: &[f64], seals: &[bool], rounds: u64) {
    let src = nf_worker(kind, &format!("bench-src-{kind}"), true);
    let learned = || src.snapshot().stages[0].counters.packets_in;
    let t = Instant::now();
    while learned() < 3 * u64::from(FLOWS) {
        assert!(t.elapsed() < Duration::from_secs(120), "the source does not run");
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "\n{kind}: {FLOWS} flows; source rate in 100 ms windows; modes interleaved{}",
        if pinned() { "; source worker alone on CPU 0, the rest on CPU 1" } else { "" }
    );
    println!(
        "round  mode       sealed  budget  before Mpps  during Mpps  ratio  to switch ms  outage ms  total ms  sent MB  statelets  chunks  duplicated"
    );
    let mut ratios: Vec<((Mode, f64, bool), f64)> = Vec::new();
    let combos: Vec<(Mode, f64, bool)> = modes
        .iter()
        .flat_map(|m| budgets.iter().flat_map(move |b| seals.iter().map(move |s| (*m, *b, *s))))
        .collect();
    for round in 0..(rounds * combos.len() as u64) {
        let (mode, budget, sealed) = combos[round as usize % combos.len()];
        let mut before: Vec<f64> = (0..8)
            .map(|_| {
                let (a, t) = (rx(&src), Instant::now());
                std::thread::sleep(Duration::from_millis(100));
                (rx(&src) - a) as f64 / t.elapsed().as_secs_f64()
            })
            .collect();
        let (r, mut during, switch_ms) = migrate_once(kind, &src, round, mode, budget, sealed);
        let b = median(&mut before);
        let d = if during.is_empty() { f64::NAN } else { median(&mut during) };
        if d.is_finite() {
            ratios.push(((mode, budget, sealed), d / b));
        }
        // The outage: from the switch (arrivals held at the destination)
        // to Done (held packets processed).
        let outage_ms = r.total.as_secs_f64() * 1e3 - switch_ms;
        println!(
            "{round:>5}  {:<9}  {sealed:<6}  {budget:>6.3}  {:>11.3}  {:>11.3}  {:>5.3}  {:>12.1}  {:>9.1}  {:>8.1}  {:>7.2}  {:>9}  {:>6}  {:>10}",
            mode.to_string(),
            b / 1e6,
            d / 1e6,
            d / b,
            switch_ms,
            outage_ms,
            r.total.as_secs_f64() * 1e3,
            r.bytes as f64 / 1e6,
            r.statelets,
            r.chunks,
            r.duplicated,
        );
    }
    for c in &combos {
        let mut v: Vec<f64> = ratios.iter().filter(|(x, _)| x == c).map(|(_, r)| *r).collect();
        let (m, budget, sealed) = c;
        if !v.is_empty() {
            println!(
                "{kind} {m} sealed {sealed} budget {budget}: median rate during streaming / before = {:.3} (of {})",
                median(&mut v),
                v.len()
            );
        }
    }
    src.stop().unwrap();
}
