//! Backpressure between workers, the layout of `run --mapping threads`
//! and `--mapping processes`: an edge worker feeds an NF worker through a
//! small channel and takes back what the NF sends. With the edge's input
//! gated (and the NF worker applying backpressure) a source far faster
//! than the NF loses nothing; with the input not gated, the same run loses
//! packets at the full channel, which is what `braid profile --mapping
//! threads` once showed (a third of 2,000,000 packets gone, no drop
//! counted by any NF).

use std::time::{Duration, Instant};

use braid_dataplane::{Endpoint, Graph, Idle, Worker, WorkerConfig};
use braid_io::channel::channel_pair;
use braid_io::memory::MemoryPort;
use braid_io::Port;
use braid_nf::{Context, NetworkFunction, NfClass, NfSpec, Placement};
use braid_packet::Batch;

static SLOW: NfSpec = NfSpec {
    name: "test-slow",
    class: NfClass::Basic,
    placements: &[Placement::User],
    state: braid_nf::StateKind::None,
    kernel: None,
    summary: "passes every packet, 300 us per batch",
    params: &[],
    build: |_| Ok(Box::new(Slow)),
};

/// Passes everything, slowly.
struct Slow;

impl NetworkFunction for Slow {
    fn spec(&self) -> &'static NfSpec {
        &SLOW
    }
    fn process(&mut self, _batch: &mut Batch, _cx: &mut Context<'_>) {
        std::thread::sleep(Duration::from_micros(300));
    }
}

const PACKETS: usize = 4000;

/// Run the source through the slow NF and back; the packets that reached
/// the sink, and the drops counted at every port.
fn run(gate_input: bool) -> (usize, u64) {
    let frames: Vec<Vec<u8>> = (0..PACKETS).map(|i| vec![(i % 251) as u8; 64]).collect();
    let (edge_to_nf, nf_in) = channel_pair("to-nf", 64);
    let (nf_out, edge_from_nf) = channel_pair("from-nf", 64);
    let (edge_out, mut sink) = channel_pair("sink", 1 << 16);

    let mut nf_cfg = WorkerConfig::new("nf");
    nf_cfg.idle = Idle::Poll;
    nf_cfg.backpressure = true;
    let graph =
        Graph::chain(vec![("slow".into(), Box::new(Slow) as Box<dyn NetworkFunction>)], 2, 0, 1)
            .unwrap();
    let entries = [graph.entry(0, 1), graph.entry(1, 0)];
    let (mut nf, nf_h) = Worker::new(nf_cfg, graph).unwrap();
    nf.add_port(Box::new(nf_in), Some(entries[0])).unwrap();
    nf.add_port(Box::new(nf_out), Some(entries[1])).unwrap();

    let mut edge_cfg = WorkerConfig::new("edge");
    edge_cfg.idle = Idle::Poll;
    let (mut edge, edge_h) = Worker::new(edge_cfg, Graph::new(Vec::new(), 4)).unwrap();
    let out = edge.add_port(Box::new(edge_out), None).unwrap();
    let to_nf = edge.add_port(Box::new(edge_to_nf), Some(Endpoint::Port(out))).unwrap();
    edge.add_port(Box::new(edge_from_nf), Some(Endpoint::Port(out))).unwrap();
    let input = edge
        .add_port(Box::new(MemoryPort::new("in", frames)), Some(Endpoint::Port(to_nf)))
        .unwrap();
    edge.set_backpressure(input, gate_input);

    let nf_t = nf.spawn().unwrap();
    let edge_t = edge.spawn().unwrap();
    let mut got = 0;
    let mut b = Batch::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut quiet_since = Instant::now();
    // Until everything arrived, or nothing arrived for half a second after
    // the input ended (what was lost will not come).
    while got < PACKETS && Instant::now() < deadline {
        let n = sink.recv(&mut b, 256).unwrap();
        b.clear();
        got += n;
        if n > 0 {
            quiet_since = Instant::now();
        } else {
            let ended = edge_h.snapshot().ports.get(input).is_some_and(|p| p.rx_ended);
            if ended && quiet_since.elapsed() > Duration::from_millis(500) {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    edge_h.stop().unwrap();
    nf_h.stop().unwrap();
    let edge_r = edge_t.join().unwrap();
    let nf_r = nf_t.join().unwrap();
    let drops: u64 =
        edge_r.ports.iter().chain(nf_r.ports.iter()).map(|p| p.rx_dropped + p.tx_dropped).sum();
    (got, drops)
}

#[test]
fn a_gated_input_loses_nothing_to_a_slow_nf_and_an_ungated_one_does() {
    let (got, drops) = run(true);
    assert_eq!((got, drops), (PACKETS, 0), "gated input");
    let (got, drops) = run(false);
    assert!(
        got < PACKETS && drops > 0,
        "ungated input: {got} of {PACKETS} arrived, {drops} dropped"
    );
}

/// An edge worker between two pairs of ports that feed each other (braidd's
/// `mapping: processes` edge): each port's receive target is set once the
/// other exists, and a target that does not exist is refused by name.
#[test]
fn ports_added_before_their_peer_are_linked_afterwards() {
    let (mut left, a) = channel_pair("left", 64);
    let (b, mut right) = channel_pair("right", 64);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut cfg = WorkerConfig::new("edge");
    cfg.idle = Idle::Poll;
    cfg.stop_flag = Some(stop.clone());
    let (mut w, _h) = Worker::new(cfg, Graph::new(Vec::new(), 0)).unwrap();
    w.add_port(Box::new(a), None).unwrap();
    w.add_port(Box::new(b), Some(Endpoint::Port(0))).unwrap();
    let e = w.set_rx_to(0, Some(Endpoint::Port(2))).unwrap_err().to_string();
    assert!(e.contains("edge") && e.contains("no port number 2 (the worker has 2)"), "{e}");
    let e = w.set_rx_to(5, None).unwrap_err().to_string();
    assert!(e.contains("no port number 5"), "{e}");
    w.set_rx_to(0, Some(Endpoint::Port(1))).unwrap();
    let t = std::thread::spawn(move || w.run());
    // Both ways across the edge.
    let mut batch: Batch = (0..10u8).map(|i| braid_packet::Packet::from_bytes(&[i; 60])).collect();
    left.send(&mut batch).unwrap();
    let mut batch: Batch = (0..7u8).map(|i| braid_packet::Packet::from_bytes(&[i; 60])).collect();
    right.send(&mut batch).unwrap();
    let (mut at_right, mut at_left) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while (at_right < 10 || at_left < 7) && Instant::now() < deadline {
        at_right += right.recv(&mut batch, 64).unwrap();
        batch.clear();
        at_left += left.recv(&mut batch, 64).unwrap();
        batch.clear();
        std::thread::sleep(Duration::from_millis(1));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    t.join().unwrap();
    assert_eq!((at_right, at_left), (10, 7));
}
