//! Running a chain between two ports until the input ends.

use std::time::{Duration, Instant};

use braid_io::capture::{same_file, CaptureFormat, CaptureInPort, CaptureOutPort};
use braid_io::memory::{GeneratorConfig, GeneratorPort, MemoryPort};
use braid_io::{Port, PortError, PortStats};

use braid_dataplane::{Endpoint, Graph, Idle, Worker, WorkerConfig, WorkerError, WorkerHandle};
use braid_io::channel::channel_pair;

use crate::chain::{Chain, ChainSnapshot};
use crate::descriptor::{CaptureFileFormat, ChainDescriptor, PortDecl};
use crate::plan::{DeploymentSpec, Mapping, PlanError};

/// How often a running chain gets its `tick`.
pub const TICK_INTERVAL: Duration = Duration::from_millis(10);

/// What a run did.
#[derive(Debug)]
pub struct RunReport {
    /// The chain's counters at the end.
    pub chain: ChainSnapshot,
    pub input: PortStats,
    pub output: PortStats,
    pub elapsed: Duration,
    /// The error that ended the run early, if any. Everything processed
    /// before it was sent to the output and flushed.
    pub error: Option<WorkerError>,
}

/// Open a descriptor port as a packet source. Capture files may be pcap
/// or pcapng, of any link type [`braid_io::linktype`] turns into Ethernet.
pub fn open_input(decl: &PortDecl) -> Result<Box<dyn Port>, PortError> {
    Ok(match decl {
        PortDecl::Pcap(p) => Box::new(CaptureInPort::open(&p.path)?),
        PortDecl::Memory(m) => Box::new(GeneratorPort::new(&GeneratorConfig {
            frame_size: m.frame_size,
            flows: m.flows,
            packets: Some(m.packets),
            ..GeneratorConfig::default()
        })?),
        // Live kinds are opened by the commands that run live chains.
        #[allow(unreachable_patterns)]
        other => return Err(unsupported(other)),
    })
}

fn unsupported(decl: &PortDecl) -> PortError {
    PortError::Config(format!(
        "`{}` ports cannot be used for offline runs; use pcap or memory",
        decl.kind_name()
    ))
}

/// Open a descriptor port as a packet sink. A capture file appears (or
/// replaces an older one) only when [`Port::finish`] succeeds.
pub fn open_output(decl: &PortDecl) -> Result<Box<dyn Port>, PortError> {
    Ok(match decl {
        PortDecl::Pcap(p) => Box::new(CaptureOutPort::create(
            &p.path,
            p.format.map(|f| match f {
                CaptureFileFormat::Pcap => CaptureFormat::Pcap,
                CaptureFileFormat::Pcapng => CaptureFormat::Pcapng,
            }),
        )?),
        PortDecl::Memory(_) => Box::new(MemoryPort::sink("out")),
        #[allow(unreachable_patterns)]
        other => return Err(unsupported(other)),
    })
}

/// Refuse an output that is the input file (also through a symbolic or
/// hard link, or standard output redirected to it): writing it would
/// destroy the capture being read.
pub fn check_distinct(input: &PortDecl, output: &PortDecl) -> Result<(), PortError> {
    if let (PortDecl::Pcap(i), PortDecl::Pcap(o)) = (input, output) {
        if same_file(&i.path, &o.path) {
            return Err(PortError::Config(format!(
                "input {} and output {} are the same file: refusing to overwrite the input",
                i.path.display(),
                o.path.display()
            )));
        }
    }
    Ok(())
}

/// A worker's configuration for a run of this module: `batch_size`
/// packets per receive, NF ticks every [`TICK_INTERVAL`].
fn worker_config(name: String, batch_size: usize) -> WorkerConfig {
    let mut c = WorkerConfig::new(name);
    c.batch_size = batch_size;
    c.tick_interval = TICK_INTERVAL;
    c
}

/// The descriptor's batch size, within what a worker takes.
fn batch_size(d: &ChainDescriptor) -> usize {
    d.batch_size.clamp(1, crate::descriptor::MAX_BATCH_SIZE)
}

/// Push everything `input` delivers through `chain` into `output` on a
/// dataplane [`Worker`] on the calling thread, until the input ends or a
/// port fails. NFs tick every [`TICK_INTERVAL`] and once at the end; the
/// output is flushed.
pub fn run_to_end(chain: &mut Chain, input: &mut dyn Port, output: &mut dyn Port) -> RunReport {
    let mut cfg = worker_config(chain.name().to_string(), chain.batch_size());
    cfg.stop_when_inputs_end = true;
    let entry = chain.entry();
    let run = |chain: &mut Chain,
               input: &mut dyn Port,
               output: &mut dyn Port|
     -> Result<braid_dataplane::WorkerReport, WorkerError> {
        let (mut w, _handle) = Worker::new(cfg, chain.graph_mut())?;
        // Both ends of the chain lead to port 0.
        w.add_port(Box::new(output), None)?;
        w.add_port(Box::new(input), Some(entry))?;
        Ok(w.run())
    };
    let report = match run(chain, input, output) {
        Ok(r) => r,
        Err(e) => return failed_before_start(chain, input, output, e),
    };
    RunReport {
        chain: chain.snapshot(),
        input: report.ports[1],
        output: report.ports[0],
        elapsed: report.elapsed,
        error: report.error,
    }
}

fn failed_before_start(
    chain: &Chain,
    input: &dyn Port,
    output: &dyn Port,
    e: WorkerError,
) -> RunReport {
    RunReport {
        chain: chain.snapshot(),
        input: input.stats(),
        output: output.stats(),
        elapsed: Duration::ZERO,
        error: Some(e),
    }
}

/// Errors that stop [`run_threads`] before packets flow.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Build(#[from] crate::chain::ChainBuildError),
    #[error(transparent)]
    Worker(#[from] WorkerError),
    #[error("starting a worker thread: {0}")]
    Thread(std::io::Error),
    #[error(transparent)]
    Control(#[from] braid_dataplane::ControlError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Coordinator(#[from] crate::coordinator::CoordError),
}

/// Packets in flight per channel between two NF threads.
pub const CHANNEL_CAPACITY: usize = 1 << 16;

/// The executable plan of an offline run under `mapping`: every NF in
/// user space (an offline run has no kernel path), grouped into units.
pub fn offline_spec(d: &ChainDescriptor, mapping: Mapping) -> Result<DeploymentSpec, PlanError> {
    let mut entries = crate::plan::plan(d)?;
    for e in &mut entries {
        e.placement = braid_nf::Placement::User;
    }
    Ok(crate::plan::deployment(&d.name, &entries, mapping, false))
}

/// Run the chain `d` offline as the plan for `mapping` says, one
/// [`Worker`] thread per unit (`--mapping threads`: a unit per NF;
/// `thread`: one unit), in-process channels between neighbouring units,
/// and an edge worker on its own thread that owns `input` and `output`.
/// Everything that leaves the chain (downstream, or back upstream from the
/// first NF) goes to `output`, as with [`run_to_end`]; packets of one
/// direction keep their order, the two directions may interleave
/// differently.
///
/// When the input has ended, every worker is drained in chain order until
/// a whole pass moves nothing; then the unit workers are stopped in chain
/// order (each flushes and ticks a last time into its downstream
/// neighbour, which is still running) and the edge last. Packets an NF
/// sends *upstream* from that very last tick are lost (none of braid's NFs
/// does).
pub fn run_threads(
    d: &ChainDescriptor,
    mapping: Mapping,
    input: Box<dyn Port>,
    output: Box<dyn Port>,
) -> Result<RunReport, RunError> {
    let start = Instant::now();
    let spec = offline_spec(d, mapping)?;
    // The descriptor's `sched` per worker; refused before anything starts
    // if it would starve the machine or cannot be applied.
    let edge_set = crate::coordinator::edge_settings(d, &format!("{}-edge", d.name), Idle::Poll)?;
    let unit_sets = crate::coordinator::unit_settings(d, &spec, Idle::Poll)?;
    let mut all = vec![edge_set.clone()];
    all.extend(unit_sets.iter().cloned());
    crate::coordinator::prepare(&all)?;
    let mut nfs = crate::chain::build_nfs(d)?.into_iter();
    let config = |s: &crate::coordinator::WorkerSettings| {
        let mut c = worker_config(s.name.clone(), s.batch_size);
        c.idle = s.idle;
        c.sched = s.sched.clone();
        c.adapt = s.adapt_config();
        // Offline: nothing may be lost to a full channel. NF workers take
        // from one side only while the other side has room; the edge gates
        // only the input (below) and always drains what comes back.
        c.backpressure = true;
        c
    };
    let mut edge_graph = Graph::new(Vec::new(), 0);
    edge_graph.set_ports(4);
    let mut edge_config = config(&edge_set);
    edge_config.backpressure = false;
    let (mut edge, edge_h) = Worker::new(edge_config, edge_graph)?;
    // Edge ports: 0 output, then (with NFs) 1 to/from the first unit, then
    // the input, then the one from the last unit.
    edge.add_port(output, None)?;
    let mut handles = Vec::new();
    let mut threads = Vec::new();
    let input_port = if spec.units.is_empty() {
        edge.add_port(input, Some(Endpoint::Port(0)))?
    } else {
        let n = spec.units.len();
        let (to_first, mut upstream) = channel_pair(&format!("{}-in", d.name), CHANNEL_CAPACITY);
        let first = edge.add_port(Box::new(to_first), Some(Endpoint::Port(0)))?;
        let input_port = edge.add_port(input, Some(Endpoint::Port(first)))?;
        edge.set_backpressure(input_port, true);
        for (k, unit) in spec.units.iter().enumerate() {
            let (down, next_up) = channel_pair(&format!("{}-{k}", d.name), CHANNEL_CAPACITY);
            let unit_nfs: Vec<_> = nfs.by_ref().take(unit.nfs.len()).collect();
            let graph = Graph::chain(unit_nfs, 2, 0, 1).expect("a unit's links fit");
            let entries = [graph.entry(0, 1), graph.entry(1, 0)];
            let (mut w, h) = Worker::new(config(&unit_sets[k]), graph)?;
            w.add_port(Box::new(upstream), Some(entries[0]))?;
            w.add_port(Box::new(down), Some(entries[1]))?;
            handles.push(h);
            threads.push(w.spawn().map_err(RunError::Thread)?);
            upstream = next_up;
            if k == n - 1 {
                let last = std::mem::replace(&mut upstream, channel_pair("unused", 1).0);
                edge.add_port(Box::new(last), Some(Endpoint::Port(0)))?;
            }
        }
        input_port
    };
    let edge_thread = edge.spawn().map_err(RunError::Thread)?;
    let outcome = finish_threads(&edge_h, input_port, &handles, threads);
    edge_h.stop()?;
    let edge_report = edge_thread.join().expect("the edge worker does not panic");
    let workers = outcome?;
    let mut stages = Vec::new();
    let mut error = edge_report.error;
    for r in workers {
        stages.extend(r.snapshot.stages);
        if error.is_none() {
            error = r.error;
        }
    }
    Ok(RunReport {
        chain: ChainSnapshot { chain: d.name.clone(), taken_ns: braid_nf::monotonic_ns(), stages },
        input: edge_report.ports[input_port],
        output: edge_report.ports[0],
        elapsed: start.elapsed(),
        error,
    })
}

/// Wait for the edge's input to end, drain everything, stop the NF
/// workers in chain order and collect their reports.
fn finish_threads(
    edge: &WorkerHandle,
    input_port: usize,
    workers: &[WorkerHandle],
    threads: Vec<std::thread::JoinHandle<braid_dataplane::WorkerReport>>,
) -> Result<Vec<braid_dataplane::WorkerReport>, RunError> {
    loop {
        let s = edge.snapshot();
        if s.ports.get(input_port).is_none_or(|p| p.rx_ended) {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    loop {
        let mut moved = edge.drain()?;
        for w in workers {
            moved += w.drain()?;
        }
        moved += edge.drain()?;
        if moved == 0 {
            break;
        }
    }
    let mut reports = Vec::new();
    for (h, t) in workers.iter().zip(threads) {
        h.stop()?;
        reports.push(t.join().expect("an NF worker does not panic"));
    }
    Ok(reports)
}

/// Open a live descriptor port (`af_packet`, `af_xdp`) on this host's
/// interface; `None` for the offline kinds.
pub fn open_live(decl: &PortDecl) -> Option<Result<Box<dyn Port>, PortError>> {
    match decl {
        PortDecl::AfPacket(p) => Some(
            braid_io::af_packet::AfPacketPort::open(&p.config())
                .map(|p| Box::new(p) as Box<dyn Port>),
        ),
        PortDecl::AfXdp(p) => Some(
            braid_io::af_xdp::AfXdpPort::open(&p.config()).map(|p| Box::new(p) as Box<dyn Port>),
        ),
        _ => None,
    }
}

/// How a live run ends and runs.
#[derive(Debug, Default)]
pub struct LiveOptions {
    /// Stop when this flag is set (SIGINT/SIGTERM).
    pub stop_signal: Option<&'static std::sync::atomic::AtomicBool>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    pub idle: Idle,
    pub sched: braid_dataplane::Sched,
    /// Sent the worker's control handle before it starts (for a capture
    /// server: taps go through the control channel).
    pub handle: Option<std::sync::mpsc::Sender<braid_dataplane::WorkerHandle>>,
    /// How often the NFs' `tick` runs (None: [`TICK_INTERVAL`]). NFs that
    /// release held packets from `tick` (`delay`) are only as precise as
    /// this; the `poll` idle policy wakes at least this often.
    pub tick_interval: Option<Duration>,
}

/// Tick intervals a live run accepts: finer wastes the core on wake-ups,
/// coarser than the default has no use.
pub const TICK_INTERVAL_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_micros(20)..=TICK_INTERVAL;

/// Run the chain `d` between two live ports until stopped: what `client`
/// receives enters the chain upstream and leaves by `server`, what
/// `server` receives crosses the chain in reverse and leaves by `client`
/// (a bump in the wire between two interfaces). Every NF runs in user
/// space on one worker on the calling thread.
pub fn run_live(
    d: &ChainDescriptor,
    client: Box<dyn Port>,
    server: Box<dyn Port>,
    opts: LiveOptions,
) -> Result<RunReport, RunError> {
    let graph = Graph::chain(crate::chain::build_nfs(d)?, 2, 0, 1).expect("a chain's links fit");
    let entries = [graph.entry(0, 1), graph.entry(1, 0)];
    let mut cfg = worker_config(d.name.clone(), batch_size(d));
    cfg.idle = opts.idle;
    cfg.sched = opts.sched;
    cfg.stop_signal = opts.stop_signal;
    cfg.deadline = opts.duration.map(|t| Instant::now() + t);
    if let Some(t) = opts.tick_interval {
        cfg.tick_interval = t.clamp(*TICK_INTERVAL_RANGE.start(), *TICK_INTERVAL_RANGE.end());
    }
    let (mut w, h) = Worker::new(cfg, graph)?;
    w.add_port(client, Some(entries[0]))?;
    w.add_port(server, Some(entries[1]))?;
    if let Some(tx) = opts.handle {
        // Nobody listening any more is not the run's problem.
        let _ = tx.send(h);
    }
    let r = w.run();
    Ok(RunReport {
        chain: ChainSnapshot {
            chain: d.name.clone(),
            taken_ns: r.snapshot.taken_ns,
            stages: r.snapshot.stages,
        },
        input: r.ports[0],
        output: r.ports[1],
        elapsed: r.elapsed,
        error: r.error,
    })
}

/// A per-NF statistics table, for people.
pub fn format_stats(s: &ChainSnapshot) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<12} {:<12} {:>10} {:>10} {:>10} {:>10} {:>9}  drops",
        "nf", "type", "in", "out", "dropped", "created", "ns/pkt"
    );
    for st in &s.stages {
        let c = &st.counters;
        let ns = if c.packets_in > 0 { c.busy_ns as f64 / c.packets_in as f64 } else { 0.0 };
        let drops: Vec<String> =
            c.drop_breakdown().iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(
            out,
            "{:<12} {:<12} {:>10} {:>10} {:>10} {:>10} {:>9.1}  {}",
            st.name,
            st.kind,
            c.packets_in,
            c.packets_out,
            c.dropped_total(),
            c.packets_created,
            ns,
            if drops.is_empty() { "-".to_string() } else { drops.join(" ") }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use braid_io::pcap::{PcapReader, PcapWriter};

    fn fwd_chain() -> Chain {
        Chain::new(
            "t",
            vec![("f".into(), braid_nf::build("fwd", &braid_nf::Params::Null).unwrap())],
        )
    }

    #[test]
    fn memory_to_memory_keeps_order() {
        let frames: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i; 60]).collect();
        let mut input = MemoryPort::new("in", frames.clone());
        let mut output = MemoryPort::new("out", Vec::new());
        let mut chain = fwd_chain();
        let r = run_to_end(&mut chain, &mut input, &mut output);
        assert!(r.error.is_none());
        assert_eq!(output.take_sent(), frames);
        assert_eq!(r.chain.stages[0].counters.packets_in, 100);
        assert_eq!((r.input.rx_packets, r.output.tx_packets), (100, 100));
        assert!(format_stats(&r.chain).contains("fwd"));
    }

    #[test]
    fn truncated_pcap_writes_what_came_before_and_reports() {
        let dir = std::env::temp_dir().join(format!("braid-runner-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = PcapWriter::new(Vec::new()).unwrap();
        for i in 0..50u64 {
            w.write(1_700_000_000_000_000_000 + i, &[i as u8; 60]).unwrap();
        }
        let bytes = w.into_inner();
        let inp = dir.join("in.pcap");
        std::fs::write(&inp, &bytes[..bytes.len() - 3]).unwrap();
        let outp = dir.join("out.pcap");
        let mut input = open_input(&PortDecl::Pcap(crate::PcapPortDecl::new(&inp))).unwrap();
        let mut output = open_output(&PortDecl::Pcap(crate::PcapPortDecl::new(&outp))).unwrap();
        let r = run_to_end(&mut fwd_chain(), input.as_mut(), output.as_mut());
        let e = r.error.expect("truncation is an error").to_string();
        assert!(e.contains("record 50"), "{e}");
        // The input's error is not the output's: what came before is kept.
        output.finish().unwrap();
        drop(output);
        let data = std::fs::read(&outp).unwrap();
        let mut rd = PcapReader::new(&data[..]).unwrap();
        let mut n = 0;
        let mut buf = Vec::new();
        while let Some(h) = rd.next_record(&mut buf).unwrap() {
            assert_eq!(h.ts_ns, 1_700_000_000_000_000_000 + n);
            n += 1;
        }
        assert_eq!(n, 49);

        // The output may not be the input, by any name.
        let pcap = |p: &std::path::Path| PortDecl::Pcap(crate::PcapPortDecl::new(p));
        std::os::unix::fs::symlink(&inp, dir.join("link.pcap")).unwrap();
        for same in [inp.clone(), dir.join("link.pcap"), dir.join(".").join("in.pcap")] {
            let e = check_distinct(&pcap(&inp), &pcap(&same)).unwrap_err().to_string();
            assert!(e.contains("are the same file: refusing to overwrite the input"), "{e}");
        }
        check_distinct(&pcap(&inp), &pcap(&outp)).unwrap();
        check_distinct(&pcap(&inp), &pcap(&dir.join("new.pcap"))).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
