//! Live migration between two running Workers over a real TCP state link,
//! checked with the oracle of the field (CHC's chain output equivalence):
//! the same deterministic trace through an NF with and without a migration
//! in the middle gives the same output packets, in the same per-flow
//! order, and the same final per-flow state. And failures roll back:
//! traffic stays with the source, its state intact.
//!
//! The "hosts" are two workers in this process; the traffic source is a
//! driver thread that feeds both ends of the NF through in-process
//! channel ports and moves the traffic (and injects the drain markers)
//! when the migration asks, the way an upstream switch would.

mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use braid_dataplane::migration::marker_frame;
use braid_io::channel::ChannelPort;
use braid_io::Port;
use braid_migrate::{
    migrate_in, migrate_out, DestinationOptions, MigrateError, Mode, SourceOptions, Switch,
    SwitchError,
};
use braid_nf::conntrack::{ConnSnapshot, SNAPSHOT_VERSION};
use braid_nf::{FlowScope, HashRange, PartitionKey};
use braid_packet::envelope;
use braid_packet::wire::build::FrameSpec;
use braid_packet::{Batch, Packet};
use common::{host, Host};

const FIREWALL: &str =
    "default: drop\nrules: [{ src: 10.0.0.0/8, action: allow }]\nmax_flows: 100000";
const NAT: &str = "external_ip: 203.0.113.1\ninternal: [10.0.0.0/8]\nmax_flows: 100000";
const LB: &str = "vip: 198.51.100.1\nmax_connections: 100000\nbackends: [{ip: 10.9.0.1}, {ip: 10.9.0.2}, {ip: 10.9.0.3}, {ip: 10.9.0.4}]";

/// One packet of the trace: which side it enters on, and its bytes.
/// Every UDP payload starts with (flow id, sequence number).
type Trace = Vec<(u8, Vec<u8>)>;

/// `flows` UDP flows from inside hosts to servers, `per_flow` packets
/// each, interleaved; with `replies`, every outbound packet after a
/// flow's first is followed by a reply from the server (what only
/// connection tracking lets through).
fn trace(flows: u32, per_flow: u32, replies: bool) -> Trace {
    let mut t = Vec::new();
    for seq in 0..per_flow {
        for f in 0..flows {
            let inside = (Ipv4Addr::from(0x0a00_0000 + 1 + f / 50), 1024 + (f % 50) as u16);
            let server = (Ipv4Addr::new(198, 51, 100, 1 + (f % 7) as u8), 5000);
            let mut spec = FrameSpec::udp(inside, server, 0);
            spec.payload = [f.to_be_bytes(), seq.to_be_bytes()].concat();
            t.push((0, spec.build()));
            if replies && seq > 0 {
                let mut spec = FrameSpec::udp(server, inside, 0);
                spec.payload = [(f | 0x8000_0000).to_be_bytes(), seq.to_be_bytes()].concat();
                t.push((1, spec.build()));
            }
        }
    }
    t
}

/// The stable flow hash an upstream switch steers a split by (the same
/// for both directions of a flow).
fn flow_hash(frame: &[u8]) -> u64 {
    let t = envelope::parse(frame).ipv4().unwrap().tuple();
    PartitionKey::five_tuple(t).stable_hash()
}

/// (flow id with direction bit, sequence number) of an output frame.
fn tag(frame: &[u8]) -> (u32, u32) {
    let n = frame.len();
    let id = u32::from_be_bytes(frame[n - 8..n - 4].try_into().unwrap());
    let seq = u32::from_be_bytes(frame[n - 4..].try_into().unwrap());
    (id, seq)
}

/// What the driver asks of the host it feeds.
enum SwitchCmd {
    /// Move the flows in `range` (None: all) to host B.
    Redirect {
        id: u64,
        markers: bool,
        range: Option<HashRange>,
    },
    Restore,
    /// Merge: everything back to host A, markers on B's old paths.
    Back {
        id: u64,
    },
}

/// The migration's [`Switch`]: asks the driver, waits for it.
struct DriverSwitch {
    cmd: Sender<SwitchCmd>,
    ack: Receiver<()>,
    send_markers: bool,
    fail: bool,
    range: Option<HashRange>,
    /// This migration goes from B back to A (a merge).
    back: bool,
    /// How long `redirect` takes before it asks the driver.
    delay: Duration,
}

impl Switch for DriverSwitch {
    fn redirect(&mut self, id: u64) -> Result<(), SwitchError> {
        if self.fail {
            return Err(SwitchError::Refused("the upstream switch refused the new route".into()));
        }
        std::thread::sleep(self.delay);
        let cmd = match self.back {
            true => SwitchCmd::Back { id },
            false => SwitchCmd::Redirect { id, markers: self.send_markers, range: self.range },
        };
        self.cmd.send(cmd).unwrap();
        self.ack
            .recv_timeout(Duration::from_secs(5))
            .map_err(|e| SwitchError::failed("waiting for the driver", e))
    }
    fn restore(&mut self) -> Result<(), SwitchError> {
        self.cmd.send(SwitchCmd::Restore).unwrap();
        self.ack
            .recv_timeout(Duration::from_secs(5))
            .map_err(|e| SwitchError::failed("waiting for the driver", e))
    }
}

/// Everything that left the NF on either host: (side it left by, frame).
type Outputs = Vec<(u8, Vec<u8>)>;

/// What the driver saw: the outputs, and how much of the trace had been
/// sent when the traffic moved (None: it never did).
struct Driven {
    out: Outputs,
    switched_at: Option<usize>,
}

fn send_all(port: &mut ChannelPort, frames: Vec<Vec<u8>>) {
    let mut b: Batch = frames.iter().map(|f| Packet::from_bytes(f)).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while port.tx_room() < b.len() {
        assert!(Instant::now() < deadline, "the worker stopped taking packets");
        std::thread::sleep(Duration::from_micros(50));
    }
    port.send(&mut b).unwrap();
    port.flush().unwrap();
}

fn collect(hosts: &mut [&mut Host], out: &mut Outputs) -> usize {
    let mut n = 0;
    for h in hosts.iter_mut() {
        for (side, port) in [(0u8, &mut h.client), (1u8, &mut h.server)] {
            let mut b = Batch::new();
            while port.recv(&mut b, 256).unwrap_or(0) > 0 {
                n += b.len();
                out.extend(b.iter().map(|p| (side, p.data().to_vec())));
                b.clear();
            }
        }
    }
    n
}

/// Where the migration thread is: it has called `migrate_out`; it has
/// finished (the driver stops once nothing more comes out).
struct RunFlags {
    started: AtomicBool,
    done: AtomicBool,
}

/// Feed `trace` to `a` (switching to `b` when asked), 32 packets at a time
/// with a short pause, until the trace is sent, `run.done` is set and nothing
/// more comes out. Returns the outputs.
fn drive(
    trace: &Trace,
    a: &mut Host,
    mut b: Option<&mut Host>,
    cmds: Receiver<SwitchCmd>,
    ack: Sender<()>,
    run: Arc<RunFlags>,
    hold_tail: bool,
) -> Driven {
    let tail = if hold_tail { trace.len() * 4 / 5 } else { trace.len() };
    let mut tail_wait = None;
    // With `hold_tail`, the second two fifths also wait for the migration
    // to start, so traffic always flows while its state does (a migration
    // started late on a loaded machine met a driver already waiting at the
    // tail: no flow changed during the walk and no statelet was sent).
    let middle = trace.len() * 2 / 5;
    let mut start_wait = None;
    let mut out = Vec::new();
    let mut switched_at = None;
    // None: everything to A; Some(None): everything to B; Some(Some(r)):
    // the flows whose stable hash is in r to B, the others to A.
    let mut moved: Option<Option<HashRange>> = None;
    let mut quiet_since = Instant::now();
    let mut next = 0;
    let mut acks = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "the driver ran out of time");
        while let Ok(cmd) = cmds.try_recv() {
            match cmd {
                SwitchCmd::Redirect { id, markers, range } => {
                    if markers {
                        send_all(&mut a.client, vec![marker_frame(id)]);
                        send_all(&mut a.server, vec![marker_frame(id)]);
                    }
                    moved = Some(range);
                    switched_at = Some(next);
                }
                SwitchCmd::Restore => moved = None,
                SwitchCmd::Back { id } => {
                    if let Some(b) = &mut b {
                        send_all(&mut b.client, vec![marker_frame(id)]);
                        send_all(&mut b.server, vec![marker_frame(id)]);
                    }
                    moved = None;
                }
            }
            acks += 1;
        }
        let before_start = hold_tail
            && !run.started.load(Ordering::Acquire)
            && (next < middle || {
                let since = *start_wait.get_or_insert_with(Instant::now);
                since.elapsed() < Duration::from_secs(20)
            });
        let waiting = (before_start && next >= middle)
            || next >= tail && switched_at.is_none() && {
                let since = *tail_wait.get_or_insert_with(Instant::now);
                since.elapsed() < Duration::from_secs(20)
            };
        if next < trace.len() && !waiting {
            let limit = if before_start {
                middle
            } else if switched_at.is_none() && tail_wait.is_none() {
                tail
            } else {
                trace.len()
            };
            let end = (next + 32).min(limit).max(next + 1).min(trace.len());
            // Per host (A, B) and side, the frames of this step.
            let mut to: [[Vec<Vec<u8>>; 2]; 2] = Default::default();
            for (side, f) in &trace[next..end] {
                let host_b = match moved {
                    None => false,
                    Some(None) => true,
                    Some(Some(r)) => r.contains(flow_hash(f)),
                };
                to[usize::from(host_b)][usize::from(*side)].push(f.clone());
            }
            next = end;
            let [for_a, for_b] = to;
            let [a_client, a_server] = for_a;
            send_all(&mut a.client, a_client);
            send_all(&mut a.server, a_server);
            let [b_client, b_server] = for_b;
            if let Some(b) = &mut b {
                send_all(&mut b.client, b_client);
                send_all(&mut b.server, b_server);
            }
            std::thread::sleep(Duration::from_micros(150));
        }
        // A switch is acknowledged after the first step on the new path:
        // those packets are on their way before the migration goes on, as
        // behind a real route change (so the destination has something to
        // hold however the threads are scheduled).
        for _ in 0..std::mem::take(&mut acks) {
            ack.send(()).unwrap();
        }
        let got = match &mut b {
            Some(b) => collect(&mut [&mut *a, &mut **b], &mut out),
            None => collect(&mut [&mut *a], &mut out),
        };
        if got > 0 || next < trace.len() || !run.done.load(Ordering::Acquire) {
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() > Duration::from_millis(200) {
            return Driven { out, switched_at };
        }
        if next >= trace.len() || waiting {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Check two runs' outputs are the same packets in the same per-flow
/// order; on a difference, say where (never the whole map).
fn assert_same_flows(got: &Outputs, want: &Outputs) {
    let (g, w) = (per_flow(got), per_flow(want));
    let mut diffs = Vec::new();
    for (k, wv) in &w {
        match g.get(k) {
            Some(gv) if gv == wv => {}
            Some(gv) => diffs.push(format!("flow {k:?}: got {gv:?}, want {wv:?}")),
            None => diffs.push(format!("flow {k:?}: missing (want {} packets)", wv.len())),
        }
    }
    diffs
        .extend(g.keys().filter(|k| !w.contains_key(k)).map(|k| format!("flow {k:?}: unexpected")));
    assert!(
        diffs.is_empty(),
        "{} of {} flows differ ({} packets vs {} expected); first: {:?}",
        diffs.len(),
        w.len(),
        got.len(),
        want.len(),
        &diffs[..diffs.len().min(4)]
    );
}

/// Per flow and direction, the sequence numbers in output order.
fn per_flow(out: &Outputs) -> BTreeMap<(u8, u32), Vec<u32>> {
    let mut m: BTreeMap<(u8, u32), Vec<u32>> = BTreeMap::new();
    for (side, f) in out {
        let (id, seq) = tag(f);
        m.entry((*side, id)).or_default().push(seq);
    }
    m
}

/// The connections of a conntrack NF's state, without their times (which
/// depend on when each run's batches ran).
fn conns_without_times(state: braid_nf::NfState) -> Vec<String> {
    let snap: ConnSnapshot = state.decode(&state.kind, SNAPSHOT_VERSION).unwrap();
    let mut v: Vec<String> = snap
        .conns
        .into_iter()
        .map(|mut c| {
            c.last_seen = 0;
            format!("{c:?}")
        })
        .collect();
    v.sort();
    v
}

/// The reference: the whole trace through one host.
fn reference(kind: &str, yaml: &str, trace: &Trace) -> (Outputs, braid_nf::NfState) {
    let mut a = host("ref", kind, yaml);
    let (_tx, cmds) = mpsc::channel();
    let (ack, _ack_rx) = mpsc::channel();
    let run = RunFlags { started: AtomicBool::new(true), done: AtomicBool::new(true) };
    let out = drive(trace, &mut a, None, cmds, ack, Arc::new(run), false).out;
    let state = a.handle.export_state("nf").unwrap().unwrap();
    a.stop();
    (out, state)
}

type Merge = (
    Result<braid_migrate::SourceReport, MigrateError>,
    Result<braid_migrate::DestinationReport, MigrateError>,
);

struct Migrated {
    merge: Option<Merge>,
    dest_state_raw: braid_nf::NfState,
    source_state_raw: braid_nf::NfState,
    out: Outputs,
    switched_at: Option<usize>,
    source_state: braid_nf::NfState,
    dest_state: braid_nf::NfState,
    result: Result<braid_migrate::SourceReport, MigrateError>,
    dest_result: Result<braid_migrate::DestinationReport, MigrateError>,
}

/// How a migration goes wrong (or not).
#[derive(Clone, Copy)]
struct Scenario {
    mode: Mode,
    /// When the migration starts, after the traffic.
    start_after: Duration,
    /// The switch puts drain markers on the old paths.
    send_markers: bool,
    /// The switch refuses to move the traffic.
    fail_switch: bool,
    /// The state link is cut this long after the migration starts.
    cut_after: Option<Duration>,
    /// The traffic is expected to move: the driver keeps the last fifth
    /// of the trace until it has (so the switch is mid-trace however
    /// slow the machine).
    switch_expected: bool,
    /// How long the source waits for the markers after the switch.
    marker_timeout: Duration,
    /// Split: only these flows move.
    range: Option<HashRange>,
    /// After the migration, merge B back into A.
    merge_back: bool,
    /// The merge's switch refuses to move the traffic.
    fail_merge: bool,
    /// The switch takes this long, and both sides' I/O timeout is a third
    /// of it (a route change on a loaded host).
    slow_switch: Option<Duration>,
}

impl Scenario {
    fn ok(mode: Mode, start_after_ms: u64) -> Scenario {
        Scenario {
            mode,
            start_after: Duration::from_millis(start_after_ms),
            send_markers: true,
            fail_switch: false,
            cut_after: None,
            switch_expected: true,
            marker_timeout: Duration::from_secs(10),
            range: None,
            merge_back: false,
            fail_merge: false,
            slow_switch: None,
        }
    }
}

/// The trace through host A with a migration to host B as `sc` says.
fn with_migration(kind: &str, yaml: &str, trace: &Trace, sc: Scenario) -> Migrated {
    let mut a = host("src", kind, yaml);
    let mut b = host("dst", kind, yaml);
    let (cmd_tx, cmds) = mpsc::channel();
    let (ack, ack_rx) = mpsc::channel();
    let run = Arc::new(RunFlags { started: AtomicBool::new(false), done: AtomicBool::new(false) });
    let (ah, bh) = (a.handle.clone(), b.handle.clone());
    let bh2 = b.handle.clone();
    let kind_s = kind.to_string();
    let run_m = run.clone();
    let migration = std::thread::spawn(move || {
        std::thread::sleep(sc.start_after);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let k = kind_s.clone();
        let io_timeout = sc.slow_switch.map_or(Duration::from_secs(5), |d| d / 3);
        let dest = std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let opts = DestinationOptions { io_timeout, ..DestinationOptions::default() };
            migrate_in(&bh, "nf", &k, conn, &opts)
        });
        let conn = TcpStream::connect(addr).unwrap();
        if let Some(after) = sc.cut_after {
            let c = conn.try_clone().unwrap();
            std::thread::spawn(move || {
                std::thread::sleep(after);
                let _ = c.shutdown(std::net::Shutdown::Both);
            });
        }
        let opts = SourceOptions {
            id: 42,
            mode: sc.mode,
            chunk: 64,
            markers: vec![0, 1],
            marker_timeout: sc.marker_timeout,
            scope: sc.range.map_or(FlowScope::All, FlowScope::HashRange),
            io_timeout,
            ..SourceOptions::default()
        };
        let mut switch = DriverSwitch {
            cmd: cmd_tx,
            ack: ack_rx,
            send_markers: sc.send_markers,
            fail: sc.fail_switch,
            range: sc.range,
            back: false,
            delay: sc.slow_switch.unwrap_or_default(),
        };
        run_m.started.store(true, Ordering::Release);
        let r = migrate_out(&ah, "nf", &kind_s, conn, &opts, &mut switch);
        let d = dest.join().unwrap();
        if std::env::var_os("MIGRATE_DEBUG").is_some() {
            let c = ah.counters().unwrap();
            eprintln!("after the first migration, A drops {:?}", c.stages[0].counters.drops);
        }
        let merge = (sc.merge_back && r.is_ok()).then(|| {
            // B's flows go back into A, which keeps serving its own.
            std::thread::sleep(Duration::from_millis(50));
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let (ah2, k) = (ah.clone(), kind_s.clone());
            let dest = std::thread::spawn(move || {
                let (conn, _) = listener.accept().unwrap();
                migrate_in(&ah2, "nf", &k, conn, &DestinationOptions::default())
            });
            let conn = TcpStream::connect(addr).unwrap();
            let opts = SourceOptions { id: 43, scope: FlowScope::All, ..opts.clone() };
            let mut back = DriverSwitch { back: true, range: None, fail: sc.fail_merge, ..switch };
            let r = migrate_out(&bh2, "nf", &kind_s, conn, &opts, &mut back);
            (r, dest.join().unwrap())
        });
        run_m.done.store(true, Ordering::Release);
        (r, d, merge)
    });
    let Driven { out, switched_at } =
        drive(trace, &mut a, Some(&mut b), cmds, ack, run, sc.switch_expected);
    let (result, dest_result, merge) = migration.join().unwrap();
    if std::env::var_os("MIGRATE_DEBUG").is_some() {
        std::thread::sleep(Duration::from_millis(500));
        let mut late = Vec::new();
        collect(&mut [&mut a, &mut b], &mut late);
        eprintln!("late outputs: {}", late.len());
        let ha = a.handle.counters().unwrap();
        eprintln!("A looped {:?}", ha.looped);
        for h in [&a, &b] {
            let s = h.handle.counters().unwrap();
            eprintln!(
                "{}: {:?} ports {:?}",
                s.worker,
                s.stages[0].counters,
                s.ports.iter().map(|p| p.stats).collect::<Vec<_>>()
            );
        }
        eprintln!("{result:?}\n{dest_result:?}\n{merge:?}");
        for h in [&a, &b] {
            let st = h.handle.export_state("nf").unwrap().unwrap();
            eprintln!("{} holds {} connections", h.handle.name(), conns_without_times(st).len());
        }
    }
    let source_state = a.handle.export_state("nf").unwrap().unwrap();
    let dest_state = b.handle.export_state("nf").unwrap().unwrap();
    a.stop();
    b.stop();
    Migrated {
        merge,
        dest_state_raw: dest_state.clone(),
        source_state_raw: source_state.clone(),
        out,
        switched_at,
        source_state,
        dest_state,
        result,
        dest_result,
    }
}

#[test]
fn firewall_migrates_mid_trace_with_the_same_output_order_and_state() {
    let t = trace(2000, 12, true);
    let (ref_out, ref_state) = reference("firewall", FIREWALL, &t);
    let m = with_migration("firewall", FIREWALL, &t, Scenario::ok(Mode::Statelet, 120));
    let report = m.result.expect("the migration succeeds");
    let dest = m.dest_result.expect("the destination finishes");
    eprintln!("{report:?}\n{dest:?}");
    assert!(report.chunks > 0 && report.statelets > 0, "{report:?}");
    let at = m.switched_at.expect("the traffic moved");
    assert!(at > 0 && at < t.len(), "the switch came mid-trace (at {at} of {})", t.len());
    assert!(dest.peak_held > 0, "traffic was held at the switch: {dest:?}");
    assert_eq!(dest.dropped_held, 0);
    assert_eq!(m.out.len(), ref_out.len(), "no packet lost or duplicated");
    assert_same_flows(&m.out, &ref_out);
    assert_eq!(conns_without_times(m.dest_state), conns_without_times(ref_state));
    // No stale copy stays at the source: it dropped everything after Done.
    assert!(conns_without_times(m.source_state).is_empty(), "the source kept a stale copy");
    assert!(report.forgotten > 0 && report.forget_error.is_none(), "{report:?}");
}

/// A switch that takes three times the I/O timeout (route changes on a
/// loaded host): the source tells the destination it is alive meanwhile,
/// and the migration completes as with a fast one.
#[test]
fn a_switch_slower_than_the_io_timeout_completes_the_migration() {
    let t = trace(500, 12, true);
    let (ref_out, ref_state) = reference("firewall", FIREWALL, &t);
    let sc =
        Scenario { slow_switch: Some(Duration::from_secs(3)), ..Scenario::ok(Mode::Statelet, 120) };
    let m = with_migration("firewall", FIREWALL, &t, sc);
    let report = m.result.expect("the migration succeeds");
    let dest = m.dest_result.expect("the destination finishes");
    assert!(report.until_switch + Duration::from_secs(3) <= report.total, "{report:?}");
    assert_eq!(m.out.len(), ref_out.len(), "no packet lost or duplicated");
    assert_same_flows(&m.out, &ref_out);
    assert_eq!(conns_without_times(m.dest_state), conns_without_times(ref_state));
    assert_eq!(dest.dropped_held, 0);
}

#[test]
fn nat_migrates_mid_trace_keeping_every_mapping() {
    let t = trace(3000, 16, false);
    let (ref_out, _) = reference("nat", NAT, &t);
    let m = with_migration("nat", NAT, &t, Scenario::ok(Mode::Statelet, 100));
    let report = m.result.expect("the migration succeeds");
    m.dest_result.expect("the destination finishes");
    assert!(report.statelets > 0, "{report:?}");
    let at = m.switched_at.expect("the traffic moved");
    assert!(at > 0 && at < t.len(), "the switch came mid-trace (at {at} of {})", t.len());
    assert_eq!(m.out.len(), ref_out.len(), "no packet lost or duplicated");
    assert_same_flows(&m.out, &ref_out);
    // Every flow keeps one external port across the move (a mapping that
    // did not arrive would get a new one), and no two flows share one.
    let mut port_of: BTreeMap<u32, u16> = BTreeMap::new();
    for (_, f) in &m.out {
        let p = envelope::parse(f);
        let t = p.ipv4().unwrap().tuple();
        assert_eq!(t.src, Ipv4Addr::new(203, 0, 113, 1));
        let prev = port_of.insert(tag(f).0, t.src_port);
        assert!(prev.is_none() || prev == Some(t.src_port), "flow {} changed port", tag(f).0);
    }
    let distinct: std::collections::BTreeSet<u16> = port_of.values().copied().collect();
    assert_eq!(distinct.len(), port_of.len());
    let mappings = |s: braid_nf::NfState| conns_without_times(s).len();
    assert_eq!(mappings(m.dest_state), 3000);
}

#[test]
fn stop_and_copy_is_correct_too() {
    let t = trace(1000, 10, true);
    let (ref_out, ref_state) = reference("firewall", FIREWALL, &t);
    let m = with_migration("firewall", FIREWALL, &t, Scenario::ok(Mode::StopCopy, 80));
    m.result.expect("the migration succeeds");
    m.dest_result.expect("the destination finishes");
    assert_same_flows(&m.out, &ref_out);
    assert_eq!(conns_without_times(m.dest_state), conns_without_times(ref_state));
}

#[test]
fn a_refused_switch_rolls_back_and_the_source_keeps_everything() {
    let t = trace(1000, 10, true);
    let (ref_out, ref_state) = reference("firewall", FIREWALL, &t);
    let m = with_migration(
        "firewall",
        FIREWALL,
        &t,
        Scenario { fail_switch: true, switch_expected: false, ..Scenario::ok(Mode::Statelet, 50) },
    );
    let e = m.result.unwrap_err();
    assert!(e.to_string().contains("upstream switch refused"), "{e}");
    assert!(m.dest_result.is_err(), "the destination abandons too");
    assert_same_flows(&m.out, &ref_out);
    assert_eq!(conns_without_times(m.source_state), conns_without_times(ref_state));
    assert!(
        conns_without_times(m.dest_state).is_empty(),
        "the destination's partial state is discarded"
    );
}

/// The source's state equals the reference's, the destination's is
/// empty, and every packet came out once, in order.
fn assert_rolled_back(m: &Migrated, ref_out: &Outputs, ref_state: &braid_nf::NfState) {
    assert_eq!(m.out.len(), ref_out.len(), "no packet lost or duplicated");
    assert_same_flows(&m.out, ref_out);
    assert_eq!(conns_without_times(m.source_state.clone()), conns_without_times(ref_state.clone()));
    assert!(
        conns_without_times(m.dest_state.clone()).is_empty(),
        "the destination's partial state is discarded"
    );
}

#[test]
fn a_lost_drain_marker_rolls_back_after_the_switch_without_losing_a_packet() {
    let t = trace(1000, 14, true);
    let (ref_out, ref_state) = reference("firewall", FIREWALL, &t);
    let sc = Scenario {
        send_markers: false,
        marker_timeout: Duration::from_millis(500),
        ..Scenario::ok(Mode::Statelet, 60)
    };
    let m = with_migration("firewall", FIREWALL, &t, sc);
    let e = m.result.as_ref().unwrap_err();
    assert!(m.switched_at.is_some(), "the traffic had moved");
    match e {
        MigrateError::RolledBack { cause, returned, lost } => {
            assert!(matches!(**cause, MigrateError::Timeout { .. }), "{cause}");
            assert!(*returned > 0, "the destination held traffic and gave it back: {e}");
            assert!(!lost);
        }
        other => panic!("expected a rollback after the switch, got {other}"),
    }
    assert!(m.dest_result.is_err());
    assert_rolled_back(&m, &ref_out, &ref_state);
}

#[test]
fn a_cut_state_link_rolls_back_and_the_source_keeps_serving() {
    // 20,000 flows make a snapshot long enough to cut the link in it.
    let t = trace(20_000, 3, true);
    let (ref_out, ref_state) = reference("firewall", FIREWALL, &t);
    let sc = Scenario {
        cut_after: Some(Duration::from_millis(5)),
        switch_expected: false,
        ..Scenario::ok(Mode::Statelet, 150)
    };
    let m = with_migration("firewall", FIREWALL, &t, sc);
    let e = m.result.as_ref().unwrap_err();
    assert!(m.switched_at.is_none(), "cut before the switch: {e}");
    assert!(!matches!(e, MigrateError::RolledBack { .. }), "{e}");
    assert!(m.dest_result.is_err());
    assert_rolled_back(&m, &ref_out, &ref_state);
}

#[test]
fn loadbalancer_migrates_mid_trace_and_every_flow_keeps_its_backend() {
    // Flows to 198.51.100.1..7; the VIP is .1: a seventh of them are
    // balanced, the rest pass.
    let t = trace(3000, 12, false);
    let (ref_out, ref_state) = reference("loadbalancer", LB, &t);
    let m = with_migration("loadbalancer", LB, &t, Scenario::ok(Mode::Statelet, 100));
    let report = m.result.expect("the migration succeeds");
    m.dest_result.expect("the destination finishes");
    assert!(report.statelets > 0, "{report:?}");
    assert!(m.switched_at.is_some_and(|at| at < t.len()));
    assert_same_flows(&m.out, &ref_out);
    // Maglev is deterministic, so backends match the reference exactly;
    // the state too (times aside).
    let backends = |out: &Outputs| -> BTreeMap<u32, Ipv4Addr> {
        out.iter()
            .map(|(_, f)| (tag(f).0, envelope::parse(f).ipv4().unwrap().tuple().dst))
            .collect()
    };
    assert_eq!(backends(&m.out), backends(&ref_out));
    let conns = |s: braid_nf::NfState| -> usize {
        let v: serde_json::Value = serde_json::from_slice(&s.data).unwrap();
        v["conns"].as_array().unwrap().len()
    };
    assert_eq!(conns(m.dest_state), conns(ref_state));
}

#[test]
fn a_split_moves_one_hash_range_and_the_source_keeps_the_rest() {
    let t = trace(2000, 12, true);
    let (ref_out, ref_state) = reference("firewall", FIREWALL, &t);
    let range = HashRange::share(1, 3);
    let sc = Scenario { range: Some(range), ..Scenario::ok(Mode::Statelet, 100) };
    let m = with_migration("firewall", FIREWALL, &t, sc);
    let report = m.result.expect("the split succeeds");
    m.dest_result.expect("the destination finishes");
    assert!(m.switched_at.is_some_and(|at| at < t.len()), "{report:?}");
    assert_same_flows(&m.out, &ref_out);
    // Together the two instances hold exactly the reference's
    // connections; the destination exactly those in the range.
    let (src, dst) = (conns_without_times(m.source_state), conns_without_times(m.dest_state));
    let mut both: Vec<String> = src.iter().chain(&dst).cloned().collect();
    both.sort();
    assert_eq!(both, conns_without_times(ref_state));
    assert!(!dst.is_empty() && !src.is_empty());
    let snap: ConnSnapshot = {
        let s = m.dest_state_raw;
        s.decode("firewall", SNAPSHOT_VERSION).unwrap()
    };
    assert!(snap.conns.iter().all(|c| range.contains(c.partition_key().stable_hash())));
}

#[test]
fn the_duplication_baseline_is_correct_for_a_deterministic_nf_and_refuses_a_random_nat() {
    let t = trace(2000, 12, true);
    let (ref_out, ref_state) = reference("firewall", FIREWALL, &t);
    let m = with_migration("firewall", FIREWALL, &t, Scenario::ok(Mode::Duplicate, 100));
    let report = m.result.expect("the migration succeeds");
    let dest = m.dest_result.expect("the destination finishes");
    assert!(report.duplicated > 0 && dest.replayed == report.duplicated, "{report:?} {dest:?}");
    assert_eq!(report.statelets, 0, "duplication sends packets, not statelets");
    assert_same_flows(&m.out, &ref_out);
    assert_eq!(conns_without_times(m.dest_state), conns_without_times(ref_state));

    let t = trace(100, 4, false);
    let sc = Scenario { switch_expected: false, ..Scenario::ok(Mode::Duplicate, 10) };
    let m = with_migration("nat", NAT, &t, sc);
    let e = m.result.unwrap_err();
    assert!(e.to_string().contains("port_secret"), "{e}");
}

/// A NAT whose instances share `port_secret` picks the same external port
/// for the same new flow from the same mappings: re-processing the
/// duplicated packets at the destination gives the source's mappings, and
/// the flows that start during the migration keep their ports across it.
#[test]
fn the_duplication_baseline_moves_a_nat_that_shares_its_port_secret() {
    let nat = format!("{NAT}\nport_secret: 0f1e2d3c4b5a69788796a5b4c3d2e1f0");
    let t = trace(2000, 12, true);
    let (ref_out, ref_state) = reference("nat", &nat, &t);
    let m = with_migration("nat", &nat, &t, Scenario::ok(Mode::Duplicate, 100));
    let report = m.result.expect("the migration succeeds");
    let dest = m.dest_result.expect("the destination finishes");
    assert!(report.duplicated > 0 && dest.replayed == report.duplicated, "{report:?} {dest:?}");
    assert_eq!(m.out.len(), ref_out.len(), "no packet lost or duplicated");
    // Same flows, same order, and the same external port for every flow
    // as without a migration.
    assert_same_flows(&m.out, &ref_out);
    let ports = |out: &Outputs| -> BTreeMap<u32, u16> {
        out.iter()
            .filter(|(side, _)| *side == 1)
            .map(|(_, f)| (tag(f).0, envelope::parse(f).ipv4().unwrap().tuple().src_port))
            .collect()
    };
    assert_eq!(ports(&m.out), ports(&ref_out));
    assert_eq!(conns_without_times(m.dest_state), conns_without_times(ref_state));
}

/// A merge into an instance that keeps serving its own flows. (An earlier
/// version of the stream lost a few replies here in about 1 run in 10
/// under load, never explained; with the current stream it passed 56 runs
/// in a row, 5 to 8 at a time: see docs/migration.md.)
#[test]
fn a_split_then_a_merge_back_gives_one_instance_with_everything() {
    let t = trace(2000, 16, true);
    let (ref_out, ref_state) = reference("firewall", FIREWALL, &t);
    let sc = Scenario {
        range: Some(HashRange::share(0, 2)),
        merge_back: true,
        ..Scenario::ok(Mode::Statelet, 80)
    };
    let m = with_migration("firewall", FIREWALL, &t, sc);
    m.result.expect("the split succeeds");
    let (merge, merge_dest) = m.merge.expect("the merge ran");
    let report = merge.expect("the merge succeeds");
    merge_dest.expect("the merge's destination finishes");
    assert!(report.chunks > 0, "{report:?}");
    assert_same_flows(&m.out, &ref_out);
    // A holds every connection again; B, whose flows all moved, dropped
    // them after A's Done (no stale copy).
    assert_eq!(conns_without_times(m.source_state), conns_without_times(ref_state));
    assert!(conns_without_times(m.dest_state).is_empty(), "B kept a stale copy");
}

/// A merge that fails (its switch refused) into an instance that keeps
/// serving its own flows: the merging instance drops what it installed
/// and keeps its own flows as they are now (not as they were when the
/// merge began); the other instance keeps serving the flows it had.
#[test]
fn a_failed_merge_drops_what_it_installed_and_keeps_the_merging_instances_own_flows() {
    let t = trace(2000, 16, true);
    let (ref_out, ref_state) = reference("firewall", FIREWALL, &t);
    let stays = HashRange::share(1, 2);
    let sc = Scenario {
        range: Some(HashRange::share(0, 2)),
        merge_back: true,
        fail_merge: true,
        ..Scenario::ok(Mode::Statelet, 80)
    };
    let m = with_migration("firewall", FIREWALL, &t, sc);
    m.result.expect("the split succeeds");
    let (merge, _) = m.merge.expect("the merge ran");
    let e = merge.expect_err("the merge's switch refuses");
    assert!(e.to_string().contains("switch"), "{e}");
    if std::env::var_os("MIGRATE_DEBUG").is_some() {
        let (g, w) = (per_flow(&m.out), per_flow(&ref_out));
        for (side, f) in &ref_out {
            let k = (*side, tag(f).0);
            if g.get(&k) != w.get(&k) {
                eprintln!("lost flow {k:?}: in the staying half {}", stays.contains(flow_hash(f)));
                break;
            }
        }
    }
    assert_same_flows(&m.out, &ref_out);
    // Together the two still hold exactly the reference's connections:
    // A only its own half (what the merge installed is gone again), B the
    // half it kept serving.
    let (a, b) = (conns_without_times(m.source_state), conns_without_times(m.dest_state));
    let mut both: Vec<String> = a.iter().chain(&b).cloned().collect();
    both.sort();
    assert_eq!(both, conns_without_times(ref_state));
    let snap: ConnSnapshot = m.source_state_raw.decode("firewall", SNAPSHOT_VERSION).unwrap();
    assert!(!snap.conns.is_empty());
    assert!(snap.conns.iter().all(|c| stays.contains(c.partition_key().stable_hash())));
}

/// A statelet on the wire names only the flows it clears; the destination
/// derives its entries' keys. A forged stream whose statelet clears a flow
/// it also holds an entry for is refused as it is read, naming the frame,
/// and the destination keeps exactly the state it had.
#[test]
fn a_statelet_that_clears_a_flow_it_holds_is_refused_naming_the_frame() {
    use braid_migrate::wire::{read_message, read_preamble, write_message, write_preamble, Counts};
    use braid_migrate::{migrate_in, DestinationOptions, Message, MigrateError, Mode};

    // A real statelet of a NAT that holds one flow.
    let mut src = host("forge-src", "nat", NAT);
    let first = trace(1, 1, false).remove(0).1;
    send_all(&mut src.client, vec![first]);
    let mut out = Outputs::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while out.is_empty() && Instant::now() < deadline {
        collect(&mut [&mut src], &mut out);
    }
    assert_eq!(out.len(), 1, "the NAT forwarded the flow's first packet");
    let state = src.handle.export_state("nf").unwrap().unwrap();
    let held = ConnSnapshot::decode(&state, "nat").unwrap();
    assert_eq!(held.conns.len(), 1);
    let flow = held.conns[0].partition_key();
    src.stop();

    let mut dst = host("forge-dst", "nat", NAT);
    let before = dst.handle.export_state("nf").unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let dh = dst.handle.clone();
    let dest = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        migrate_in(&dh, "nf", "nat", conn, &DestinationOptions::default())
    });
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut c = Counts::default();
    write_preamble(&mut conn).unwrap();
    let hello =
        Message::Hello { id: 9, stage: "nf".into(), kind: "nat".into(), mode: Mode::Statelet };
    write_message(&mut conn, &hello, &mut c).unwrap();
    read_preamble(&mut conn).unwrap();
    assert_eq!(read_message(&mut conn, &mut Counts::default()).unwrap(), Message::Accept);
    let forged = braid_nf::CompactStatelet { state, cleared: vec![flow] };
    write_message(&mut conn, &Message::Statelet(forged), &mut c).unwrap();
    let err = dest.join().unwrap().unwrap_err();
    assert!(
        matches!(err, MigrateError::Wire(braid_migrate::WireError::Statelet { frame: 1, .. })),
        "{err}"
    );
    assert!(err.to_string().contains("frame 1: statelet refused"), "{err}");
    assert!(err.to_string().contains("also holds an entry"), "{err}");
    assert_eq!(dst.handle.export_state("nf").unwrap(), before, "nothing of it installed");
    dst.stop();
}
