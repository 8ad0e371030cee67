//! The control mailbox under steady traffic: a NAT moves from one worker
//! to another (pause → export → import → add a port → reroute → resume)
//! while a generator keeps sending, and the sink sees every packet once,
//! in order, each flow keeping its translation; the moved state is the
//! state that was exported.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use braid_dataplane::{Endpoint, Graph, Idle, Output, Worker, WorkerConfig};
use braid_io::channel::{channel_pair, ChannelPort};
use braid_io::Port;
use braid_nf::{NfState, Params};
use braid_packet::wire::build::FrameSpec;
use braid_packet::Batch;

const PACKETS: u16 = 30_000;
const FLOWS: u16 = 64;

fn nat() -> Graph {
    let params: Params = serde_yaml_ng::from_str(
        "{ external_ip: 192.0.2.1, internal: [10.0.0.0/8], ports: \"20000-29999\" }",
    )
    .unwrap();
    let nf = braid_nf::build("nat", &params).unwrap();
    Graph::new(vec![("nat".into(), nf)], 0)
}

fn config(name: &str) -> WorkerConfig {
    let mut c = WorkerConfig::new(name);
    c.idle = Idle::Poll;
    c.tick_interval = Duration::from_millis(5);
    c
}

/// The i-th frame: flow i % FLOWS, sequence number i in the IP ident.
fn frame(i: u16) -> braid_packet::Packet {
    let flow = i % FLOWS;
    let mut s = FrameSpec::udp(
        (Ipv4Addr::new(10, 0, 0, 1 + (flow % 200) as u8), 4000 + flow),
        (Ipv4Addr::new(198, 51, 100, 9), 53),
        18,
    );
    s.ip_ident = i;
    s.packet()
}

/// (sequence, flow, translated source port) of an output frame.
fn read(f: &[u8]) -> (u16, u16, u16) {
    let ident = u16::from_be_bytes([f[18], f[19]]);
    assert_eq!(&f[26..30], &[192, 0, 2, 1], "source translated");
    (ident, ident % FLOWS, u16::from_be_bytes([f[34], f[35]]))
}

/// The connections of a NAT state, order-independent.
fn conns(s: &NfState) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(&s.data).unwrap();
    let mut c: Vec<String> = v["conns"].as_array().unwrap().iter().map(|c| c.to_string()).collect();
    c.sort();
    c
}

#[test]
fn nat_moves_between_workers_under_traffic_without_loss_duplication_or_reordering() {
    // Generator -> A (nat) -> sink.
    let (mut gen, a_in) = channel_pair("gen", 1 << 17);
    let (a_out, mut sink) = channel_pair("sink", 1 << 17);
    let (mut a, ha) = Worker::new(config("A"), nat()).unwrap();
    a.add_port(Box::new(a_in), Some(Endpoint::Stage { stage: 0, gate: 0 })).unwrap();
    a.add_port(Box::new(a_out), None).unwrap();
    a.graph_mut().link(0, 1, Endpoint::Port(1)).unwrap();
    // B: a NAT of its own, reached from A over a channel, answering back to A.
    let (a_to_b, b_port) = channel_pair("a-b", 1 << 17);
    let (mut b, hb) = Worker::new(config("B"), nat()).unwrap();
    b.add_port(Box::new(b_port), Some(Endpoint::Stage { stage: 0, gate: 0 })).unwrap();
    b.graph_mut().link(0, 1, Endpoint::Port(0)).unwrap();
    let (ta, tb) = (a.spawn().unwrap(), b.spawn().unwrap());

    let sender = std::thread::spawn(move || {
        let mut i = 0u16;
        while i < PACKETS {
            let n = 16.min(PACKETS - i);
            let mut batch: Batch = (i..i + n).map(frame).collect();
            i += n;
            assert_eq!(gen.send(&mut batch).unwrap(), n as usize, "the channel has room");
            std::thread::sleep(Duration::from_micros(200));
        }
        gen
    });

    // Let a third of the traffic through A, then move the NAT.
    let t = Instant::now();
    while ha.snapshot().stages[0].counters.packets_in < u64::from(PACKETS / 3) {
        assert!(t.elapsed() < Duration::from_secs(20), "A never got traffic");
        std::thread::sleep(Duration::from_millis(1));
    }
    ha.pause().unwrap();
    let before = ha.counters().unwrap().stages[0].counters.packets_in;
    let state = ha.export_state("nat").unwrap().expect("nat has state");
    // A refused command changes nothing.
    let wrong = NfState { kind: "firewall".into(), ..state.clone() };
    assert!(hb.import_state("nat", wrong).unwrap_err().to_string().contains("firewall"));
    assert!(hb.import_state("nope", state.clone()).unwrap_err().to_string().contains("nope"));
    hb.import_state("nat", state.clone()).unwrap();
    assert_eq!(conns(&hb.export_state("nat").unwrap().unwrap()), conns(&state), "same state");
    let to_b = ha.add_port(Box::new(a_to_b), Some(Endpoint::Port(1))).unwrap();
    assert!(ha.reroute("", Output::PortRx(9), Endpoint::Port(to_b)).is_err());
    ha.reroute("", Output::PortRx(0), Endpoint::Port(to_b)).unwrap();
    ha.resume().unwrap();

    // Collect everything the sink gets.
    let mut got: Vec<(u16, u16, u16)> = Vec::new();
    let mut b = Batch::new();
    let t = Instant::now();
    while got.len() < PACKETS as usize && t.elapsed() < Duration::from_secs(30) {
        if sink.recv(&mut b, 256).unwrap() == 0 {
            sink.wait(Duration::from_millis(5)).unwrap();
        }
        got.extend(b.drain().map(|p| read(p.data())));
    }
    let _gen: ChannelPort = sender.join().unwrap();
    ha.stop().unwrap();
    hb.stop().unwrap();
    let (ra, rb) = (ta.join().unwrap(), tb.join().unwrap());
    assert!(ra.error.is_none() && rb.error.is_none(), "{:?} {:?}", ra.error, rb.error);

    let seqs: Vec<u16> = got.iter().map(|g| g.0).collect();
    assert_eq!(seqs, (0..PACKETS).collect::<Vec<_>>(), "every packet once, in order");
    let mut port_of = std::collections::HashMap::new();
    for &(_, flow, port) in &got {
        assert_eq!(*port_of.entry(flow).or_insert(port), port, "flow {flow} kept its mapping");
    }
    let (na, nb) =
        (ra.snapshot.stages[0].counters.packets_in, rb.snapshot.stages[0].counters.packets_in);
    assert_eq!(na, before, "A's NAT saw nothing after the move");
    assert_eq!(na + nb, u64::from(PACKETS));
    assert!(nb > 0);
}

#[test]
fn a_worker_runs_offline_until_its_input_ends_and_counts_every_stage() {
    let frames: Vec<Vec<u8>> = (0..100u16).map(|i| frame(i).data().to_vec()).collect();
    let mut input = braid_io::memory::MemoryPort::new("in", frames);
    let mut output = braid_io::memory::MemoryPort::new("out", Vec::new());
    let mut graph = nat();
    let mut cfg = config("offline");
    cfg.stop_when_inputs_end = true;
    {
        let (mut w, _h) = Worker::new(cfg, &mut graph).unwrap();
        w.add_port(Box::new(&mut input), Some(Endpoint::Stage { stage: 0, gate: 0 })).unwrap();
        w.add_port(Box::new(&mut output), None).unwrap();
        w.graph_mut().link(0, 1, Endpoint::Port(1)).unwrap();
        let r = w.run();
        assert!(r.error.is_none());
        assert_eq!(r.ports[1].tx_packets, 100);
        assert_eq!(r.snapshot.stages[0].counters.packets_in, 100);
    }
    assert_eq!(output.take_sent().len(), 100);
    assert_eq!(graph.stages()[0].counters().packets_out, 100);
}

#[test]
fn bad_configurations_are_refused_before_running() {
    let mut c = config("x");
    c.batch_size = 0;
    assert!(Worker::new(c, nat()).err().unwrap().to_string().contains("batch size 0"));
    let mut c = config("x");
    c.sched.cpus = vec![1 << 20];
    assert!(Worker::new(c, nat()).err().unwrap().to_string().contains("CPU"));
    let (mut w, _h) = Worker::new(config("x"), nat()).unwrap();
    let e = w.add_port(
        Box::new(braid_io::memory::MemoryPort::sink("s")),
        Some(Endpoint::Stage { stage: 3, gate: 0 }),
    );
    assert!(e.unwrap_err().to_string().contains("no stage number 3"));
}

/// Reconfigure swaps a firewall's rules while it runs: its connection
/// table moves to the new instance, so a flow allowed before keeps
/// passing (its answers too) while a new flow the new rules deny is
/// dropped; bad parameters are refused and change nothing.
#[test]
fn reconfigure_keeps_connections_and_refuses_bad_parameters() {
    let params = |yaml: &str| -> Params { serde_yaml_ng::from_str(yaml).unwrap() };
    let fw = braid_nf::build(
        "firewall",
        &params("{ default: drop, rules: [{ action: allow, proto: udp, src: 10.0.0.0/8 }] }"),
    )
    .unwrap();
    let graph = Graph::chain(vec![("fw".into(), fw)], 2, 0, 1).unwrap();
    let (mut gen_c, w_c) = channel_pair("c", 1024);
    let (mut gen_s, w_s) = channel_pair("s", 1024);
    let (mut w, h) = Worker::new(config("fw"), graph).unwrap();
    w.add_port(Box::new(w_c), Some(Endpoint::Stage { stage: 0, gate: 0 })).unwrap();
    w.add_port(Box::new(w_s), Some(Endpoint::Stage { stage: 0, gate: 1 })).unwrap();
    let t = w.spawn().unwrap();
    let udp = |src: [u8; 4], sport, dst: [u8; 4], dport| {
        FrameSpec::udp((Ipv4Addr::from(src), sport), (Ipv4Addr::from(dst), dport), 8).packet()
    };
    // Send one frame in at `from`, return how many came out at `to`.
    let through = |from: &mut ChannelPort, to: &mut ChannelPort, p| {
        let mut b: Batch = std::iter::once(p).collect();
        from.send(&mut b).unwrap();
        let t = Instant::now();
        let mut got = Batch::new();
        while got.is_empty() && t.elapsed() < Duration::from_millis(300) {
            to.wait(Duration::from_millis(10)).unwrap();
            to.recv(&mut got, 8).unwrap();
        }
        got.len()
    };
    assert_eq!(through(&mut gen_c, &mut gen_s, udp([10, 0, 0, 1], 5000, [192, 0, 2, 9], 53)), 1);
    // New rules: nothing from 10/8 is allowed any more.
    let e = h.reconfigure("fw", params("{ default: drop, rules: [{ action: nope }] }"));
    assert!(e.unwrap_err().to_string().contains("fw"), "bad parameters refused");
    h.reconfigure("fw", params("{ default: drop, rules: [{ action: allow, proto: tcp }] }"))
        .unwrap();
    // The tracked flow goes on both ways; a new one is denied.
    assert_eq!(through(&mut gen_c, &mut gen_s, udp([10, 0, 0, 1], 5000, [192, 0, 2, 9], 53)), 1);
    assert_eq!(through(&mut gen_s, &mut gen_c, udp([192, 0, 2, 9], 53, [10, 0, 0, 1], 5000)), 1);
    assert_eq!(through(&mut gen_c, &mut gen_s, udp([10, 0, 0, 2], 5001, [192, 0, 2, 9], 53)), 0);
    let c = h.counters().unwrap();
    assert_eq!(c.stages[0].counters.dropped(braid_nf::DropReason::Denied), 1);
    h.stop().unwrap();
    assert!(t.join().unwrap().error.is_none());
}

/// Drain processes what waits, then the worker stays paused: nothing
/// more is taken until it resumes, and nothing is lost.
#[test]
fn drain_then_pause_holds_packets_until_resume() {
    let (mut gen, w_in) = channel_pair("in", 4096);
    let (w_out, mut sink) = channel_pair("out", 4096);
    let graph =
        Graph::chain(vec![("f".into(), braid_nf::build("fwd", &Params::Null).unwrap())], 2, 0, 1)
            .unwrap();
    let (mut w, h) = Worker::new(config("d"), graph).unwrap();
    w.add_port(Box::new(w_in), Some(Endpoint::Stage { stage: 0, gate: 0 })).unwrap();
    w.add_port(Box::new(w_out), None).unwrap();
    let t = w.spawn().unwrap();
    h.pause().unwrap();
    let mut b: Batch = (0..100).map(frame).collect();
    gen.send(&mut b).unwrap();
    assert_eq!(h.drain().unwrap(), 100, "drain takes what waits");
    let mut b: Batch = (100..150).map(frame).collect();
    gen.send(&mut b).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(h.counters().unwrap().stages[0].counters.packets_in, 100, "paused after drain");
    h.resume().unwrap();
    let mut got = Vec::new();
    let t0 = Instant::now();
    while got.len() < 150 && t0.elapsed() < Duration::from_secs(5) {
        let mut b = Batch::new();
        sink.wait(Duration::from_millis(10)).unwrap();
        sink.recv(&mut b, 256).unwrap();
        got.extend(b.iter().map(|p| u16::from_be_bytes([p.data()[18], p.data()[19]])));
    }
    assert_eq!(got, (0..150).collect::<Vec<u16>>());
    h.stop().unwrap();
    t.join().unwrap();
}

/// Frames a rolled-back source takes back from the destination came by the
/// destination's path, addressed to its next hop: injected readdressed,
/// they leave with the Ethernet addresses of the last unicast frame that
/// arrived on their port (a broadcast, such as ARP, does not count), so
/// this path's next hop accepts them; a plain inject leaves them as they
/// are.
#[test]
fn injected_frames_can_take_the_ethernet_addresses_of_their_ports_arrivals() {
    let (mut gen, a_in) = channel_pair("gen", 64);
    let (a_out, mut sink) = channel_pair("sink", 64);
    let g = Graph::new(vec![("f".into(), braid_nf::build("fwd", &Params::default()).unwrap())], 0);
    let (mut a, h) = Worker::new(config("A"), g).unwrap();
    a.add_port(Box::new(a_in), Some(Endpoint::Stage { stage: 0, gate: 0 })).unwrap();
    a.add_port(Box::new(a_out), None).unwrap();
    a.graph_mut().link(0, 1, Endpoint::Port(1)).unwrap();
    let t = a.spawn().unwrap();
    let with_l2 = |dst: [u8; 6], src: [u8; 6], i: u16| {
        let mut f = frame(i).data().to_vec();
        f[..6].copy_from_slice(&dst);
        f[6..12].copy_from_slice(&src);
        f
    };
    let here = ([2, 0, 0, 0, 0, 0xaa], [2, 0, 0, 0, 0, 0xbb]);
    let there = ([2, 0, 0, 0, 0, 0xcc], [2, 0, 0, 0, 0, 0xdd]);
    let broadcast = [0xff; 6];
    let recv = |sink: &mut ChannelPort, n: usize| {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while got.len() < n && Instant::now() < deadline {
            let mut b = Batch::new();
            if sink.recv(&mut b, 64).unwrap() == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            got.extend(b.iter().map(|p| p.data().to_vec()));
        }
        got
    };
    // Before anything arrived there is nothing to take: frames stay as
    // they are.
    h.inject_readdressed(vec![(0, with_l2(there.0, there.1, 1))]).unwrap();
    assert_eq!(recv(&mut sink, 1)[0][..6], there.0);
    // A unicast arrival on port 0, then a broadcast one.
    let mut b: Batch = [with_l2(here.0, here.1, 2), with_l2(broadcast, there.1, 3)]
        .iter()
        .map(|f| braid_packet::Packet::from_bytes(f))
        .collect();
    gen.send(&mut b).unwrap();
    assert_eq!(recv(&mut sink, 2).len(), 2);
    h.inject_readdressed(vec![
        (0, with_l2(there.0, there.1, 4)),
        (0, with_l2(there.0, there.1, 5)),
    ])
    .unwrap();
    h.inject(vec![(0, with_l2(there.0, there.1, 6))]).unwrap();
    let got = recv(&mut sink, 3);
    let l2: Vec<(&[u8], &[u8])> = got.iter().map(|f| (&f[..6], &f[6..12])).collect();
    assert_eq!(
        l2,
        [(&here.0[..], &here.1[..]), (&here.0[..], &here.1[..]), (&there.0[..], &there.1[..])]
    );
    // The rest of each frame is untouched.
    assert_eq!(got[0][12..], with_l2(there.0, there.1, 4)[12..]);
    h.stop().unwrap();
    t.join().unwrap();
}
